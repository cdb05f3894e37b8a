//! Transactional indexes: a hash table ([`HashTable`]) for point lookups and a B-tree
//! ([`BTree`]) for ordered scans, both kept in ordinary objects and changed by ordinary
//! transactions, so one transaction updates an index and the rows it points to atomically.
//!
//! Keys are byte strings of 1 to [`KEY_BYTES_MAX`] bytes; values are `u64`, typically the
//! [`Addr::to_u64`] of a row.
//!
//! Both indexes store their entries the same way, in an index *node* object (a hash bucket, a
//! B-tree leaf or inner node): a 16-byte node header, then entries packed back to back, each a
//! key length byte, the key and an 8-byte value (`docs/formats.md`, "Indexes"). A node is
//! written with exactly its encoded bytes (the value length word says how many), so a node
//! decodes only if every byte is accounted for.
//!
//! Nodes are read during execution and validated at commit (OCC), so a transaction may follow
//! pointers from nodes that have changed since. Two rules make that safe. Index objects are
//! never freed, so a stale pointer still leads to an index object, never to a reused slot. And
//! every decoder checks what it reads (`Reader`: bounds, counts, key lengths, magics) and
//! every walk is bounded by a named constant, so nonsense ends in [`IndexError::Malformed`],
//! which [`crate::retry::run`] retries when the transaction's reads turn out stale.

pub mod btree;
pub mod hash;

pub use btree::BTree;
pub use hash::HashTable;

use crate::error::IndexError;
use acre_engine::addr::Addr;
use acre_engine::cursor::{Cursor, Short};

/// The longest key an index takes.
pub const KEY_BYTES_MAX: usize = 128;

/// Bytes of an entry besides its key: the key length byte and the value.
pub const ENTRY_OVERHEAD_BYTES: usize = 1 + 8;

/// Bytes of the largest entry.
pub const ENTRY_BYTES_MAX: usize = ENTRY_OVERHEAD_BYTES + KEY_BYTES_MAX;

/// Bytes of a node's header: magic, entry count, level, a zero byte and the link word.
pub const NODE_HEADER_BYTES: usize = 16;

// The key length is stored in one byte.
const _: () = assert!(KEY_BYTES_MAX <= u8::MAX as usize);
// Index handles are shared by the threads of an application.
const _: fn() = || {
    fn shared<T: Clone + Send + Sync>() {}
    shared::<HashTable>();
    shared::<BTree>();
};

/// Checks that `key` can be stored in an index: 1 to [`KEY_BYTES_MAX`] bytes.
pub(crate) fn check_key(key: &[u8]) -> Result<(), IndexError> {
    if key.is_empty() || key.len() > KEY_BYTES_MAX {
        return Err(IndexError::KeyLength {
            len: key.len(),
            max: KEY_BYTES_MAX,
        });
    }
    Ok(())
}

/// Bytes the entry for `key` takes in a node.
pub(crate) fn entry_bytes(key: &[u8]) -> usize {
    ENTRY_OVERHEAD_BYTES + key.len()
}

/// The hash of a key, the same in every process, build and version: FNV-1a (64-bit) of the key
/// bytes, then the 64-bit finalizer of MurmurHash3 (`fmix64`), which spreads FNV's weak low
/// bits over the whole word.
pub fn key_hash(key: &[u8]) -> u64 {
    const FNV_OFFSET_BASIS: u64 = 0xcbf2_9ce4_8422_2325;
    const FNV_PRIME: u64 = 0x0000_0100_0000_01b3;
    let mut hash = FNV_OFFSET_BASIS;
    for &byte in key {
        hash ^= u64::from(byte);
        hash = hash.wrapping_mul(FNV_PRIME);
    }
    hash ^= hash >> 33;
    hash = hash.wrapping_mul(0xff51_afd7_ed55_8ccd);
    hash ^= hash >> 33;
    hash = hash.wrapping_mul(0xc4ce_b9fe_1a85_ec53);
    hash ^= hash >> 33;
    hash
}

/// The error for bytes at `addr` that are not what an index expects.
pub(crate) fn malformed(addr: Addr, reason: impl Into<String>) -> IndexError {
    IndexError::Malformed {
        addr,
        reason: reason.into(),
    }
}

/// One key and its value.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct Entry {
    pub key: Vec<u8>,
    pub value: u64,
}

/// An index node as stored: a hash bucket, a B-tree leaf or a B-tree inner node. The meaning of
/// `level` and `link` depends on the kind (the magic); the decoder checks only the shape shared
/// by all of them, the kind's own rules are checked by `hash` and `btree`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct Node {
    pub magic: u32,
    pub level: u8,
    pub link: u64,
    pub entries: Vec<Entry>,
}

impl Node {
    /// Bytes of the node's encoding.
    pub fn encoded_bytes(&self) -> usize {
        NODE_HEADER_BYTES
            + self
                .entries
                .iter()
                .map(|e| entry_bytes(&e.key))
                .sum::<usize>()
    }

    /// The node's bytes, at most `capacity` of them.
    pub fn encode(&self, capacity: usize) -> Vec<u8> {
        let len = self.encoded_bytes();
        assert!(len <= capacity, "len={len} capacity={capacity}");
        let count = u16::try_from(self.entries.len()).expect("a node holds few entries");
        let mut out = Vec::with_capacity(len);
        out.extend_from_slice(&self.magic.to_le_bytes());
        out.extend_from_slice(&count.to_le_bytes());
        out.push(self.level);
        out.push(0);
        out.extend_from_slice(&self.link.to_le_bytes());
        for entry in &self.entries {
            let key_len = entry.key.len();
            assert!((1..=KEY_BYTES_MAX).contains(&key_len), "key_len={key_len}");
            out.push(key_len as u8);
            out.extend_from_slice(&entry.key);
            out.extend_from_slice(&entry.value.to_le_bytes());
        }
        assert_eq!(out.len(), len, "encoded bytes");
        out
    }

    /// Decodes the node read at `addr`; `capacity` is the most bytes a node of its kind has.
    pub fn decode(addr: Addr, bytes: &[u8], capacity: usize) -> Result<Node, IndexError> {
        if bytes.len() > capacity {
            return Err(malformed(
                addr,
                format!("{} bytes, more than the {capacity} of a node", bytes.len()),
            ));
        }
        let mut reader = Reader::new(addr, bytes);
        let magic = reader.u32("magic")?;
        let count = reader.u16("entry count")?;
        let level = reader.u8("level")?;
        let zero = reader.u8("reserved byte")?;
        if zero != 0 {
            return Err(reader.error(format!("reserved byte is {zero}, not 0")));
        }
        let link = reader.u64("link")?;
        // The count is checked against the bytes left before anything is allocated for it.
        let count = usize::from(count);
        if count * (ENTRY_OVERHEAD_BYTES + 1) > reader.remaining() {
            return Err(reader.error(format!(
                "{count} entries cannot fit in the {} bytes left",
                reader.remaining()
            )));
        }
        let mut entries = Vec::with_capacity(count);
        for _ in 0..count {
            entries.push(reader.entry()?);
        }
        reader.finish()?;
        Ok(Node {
            magic,
            level,
            link,
            entries,
        })
    }
}

/// A bounds-checked little-endian reader over bytes read from memory: every read that would
/// pass the end, and every byte left over, is a [`IndexError::Malformed`] naming the object and
/// the offset.
pub(crate) struct Reader<'a> {
    addr: Addr,
    cursor: Cursor<'a>,
}

impl<'a> Reader<'a> {
    pub fn new(addr: Addr, bytes: &'a [u8]) -> Reader<'a> {
        Reader {
            addr,
            cursor: Cursor::new(bytes),
        }
    }

    /// Bytes not read yet.
    pub fn remaining(&self) -> usize {
        self.cursor.remaining()
    }

    /// A malformed-node error at the current offset.
    pub fn error(&self, reason: impl std::fmt::Display) -> IndexError {
        malformed(
            self.addr,
            format!("{reason} (at byte {})", self.cursor.at()),
        )
    }

    fn short(&self, what: &str, short: Short) -> IndexError {
        self.error(format!("{what} {short}"))
    }

    /// The next `len` bytes; `what` names them in the error.
    pub fn bytes(&mut self, len: usize, what: &str) -> Result<&'a [u8], IndexError> {
        self.cursor.take(len).map_err(|s| self.short(what, s))
    }

    pub fn u8(&mut self, what: &str) -> Result<u8, IndexError> {
        self.cursor.u8().map_err(|s| self.short(what, s))
    }

    pub fn u16(&mut self, what: &str) -> Result<u16, IndexError> {
        self.cursor.u16().map_err(|s| self.short(what, s))
    }

    pub fn u32(&mut self, what: &str) -> Result<u32, IndexError> {
        self.cursor.u32().map_err(|s| self.short(what, s))
    }

    pub fn u64(&mut self, what: &str) -> Result<u64, IndexError> {
        self.cursor.u64().map_err(|s| self.short(what, s))
    }

    /// An entry: key length (1 to [`KEY_BYTES_MAX`]), key, value.
    pub fn entry(&mut self) -> Result<Entry, IndexError> {
        let key_len = usize::from(self.u8("key length")?);
        if !(1..=KEY_BYTES_MAX).contains(&key_len) {
            return Err(self.error(format!(
                "key length {key_len} is not in 1..={KEY_BYTES_MAX}"
            )));
        }
        let key = self.bytes(key_len, "key")?.to_vec();
        let value = self.u64("value")?;
        Ok(Entry { key, value })
    }

    /// Checks that every byte was read.
    pub fn finish(&self) -> Result<(), IndexError> {
        if self.remaining() != 0 {
            return Err(self.error(format!("{} bytes left over", self.remaining())));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use acre_engine::addr::RegionId;

    const ADDR: Addr = Addr::new(RegionId(1), 64);

    #[test]
    fn key_hash_is_pinned() {
        // These values are part of the hash table's format: a change here moves every key.
        assert_eq!(key_hash(b""), 0xefd0_1f60_ba99_2926);
        assert_eq!(key_hash(b"a"), 0x82a2_a958_a9be_ce5b);
        assert_eq!(key_hash(b"user1234"), 0xdb65_1e2f_6a3e_236a);
        assert_ne!(key_hash(b"ab"), key_hash(b"ba"));
    }

    #[test]
    fn nodes_round_trip() {
        let node = Node {
            magic: 0x1234_5678,
            level: 3,
            link: 0xdead_beef,
            entries: vec![
                Entry {
                    key: b"k".to_vec(),
                    value: 1,
                },
                Entry {
                    key: vec![0xff; KEY_BYTES_MAX],
                    value: u64::MAX,
                },
            ],
        };
        let bytes = node.encode(1016);
        assert_eq!(bytes.len(), node.encoded_bytes());
        assert_eq!(
            bytes.len(),
            NODE_HEADER_BYTES + 2 * ENTRY_OVERHEAD_BYTES + 1 + KEY_BYTES_MAX
        );
        assert_eq!(Node::decode(ADDR, &bytes, 1016).unwrap(), node);
        // Every proper prefix is cut short; every extension has bytes left over.
        for len in 0..bytes.len() {
            assert!(
                Node::decode(ADDR, &bytes[..len], 1016).is_err(),
                "len={len}"
            );
        }
        let mut longer = bytes.clone();
        longer.push(0);
        assert!(Node::decode(ADDR, &longer, 1016).is_err());
        // A node longer than its kind's capacity is refused before it is read.
        assert!(Node::decode(ADDR, &bytes, bytes.len() - 1).is_err());
    }

    #[test]
    fn bad_key_lengths_counts_and_reserved_bytes_are_malformed() {
        let node = Node {
            magic: 7,
            level: 0,
            link: 0,
            entries: vec![Entry {
                key: b"abc".to_vec(),
                value: 9,
            }],
        };
        let bytes = node.encode(1016);
        let is_malformed = |bytes: &[u8]| {
            matches!(
                Node::decode(ADDR, bytes, 1016),
                Err(IndexError::Malformed { addr, .. }) if addr == ADDR
            )
        };
        let mut zero_key = bytes.clone();
        zero_key[NODE_HEADER_BYTES] = 0;
        assert!(is_malformed(&zero_key));
        let mut long_key = bytes.clone();
        long_key[NODE_HEADER_BYTES] = KEY_BYTES_MAX as u8 + 1;
        assert!(is_malformed(&long_key));
        let mut many = bytes.clone();
        many[4..6].copy_from_slice(&u16::MAX.to_le_bytes());
        assert!(is_malformed(&many));
        let mut none = bytes.clone();
        none[4..6].copy_from_slice(&0u16.to_le_bytes());
        assert!(is_malformed(&none), "the entry's bytes are left over");
        let mut reserved = bytes.clone();
        reserved[7] = 1;
        assert!(is_malformed(&reserved));
    }

    #[test]
    fn random_bytes_never_panic() {
        let mut random = acre_nvm_log::random::SplitMix::new(0x9e37_79b9_7f4a_7c15u64);
        let mut next = move || random.next_u64();
        for _ in 0..20_000 {
            let len = (next() % 300) as usize;
            let mut bytes: Vec<u8> = (0..len).map(|_| next() as u8).collect();
            // Plausible headers reach the entry decoder more often.
            if bytes.len() >= NODE_HEADER_BYTES {
                bytes[4..6].copy_from_slice(&((next() % 8) as u16).to_le_bytes());
                bytes[7] = 0;
            }
            let _ = Node::decode(ADDR, &bytes, 1016);
        }
    }

    #[test]
    fn an_empty_key_is_refused() {
        assert_eq!(
            check_key(b""),
            Err(IndexError::KeyLength {
                len: 0,
                max: KEY_BYTES_MAX
            })
        );
    }

    #[test]
    fn long_keys_are_refused() {
        assert!(check_key(&[1; KEY_BYTES_MAX]).is_ok());
        assert_eq!(
            check_key(&[1; KEY_BYTES_MAX + 1]),
            Err(IndexError::KeyLength {
                len: KEY_BYTES_MAX + 1,
                max: KEY_BYTES_MAX
            })
        );
    }
}
