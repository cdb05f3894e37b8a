//! A transactional hash table with associative buckets, after FaRM's key-value store (NSDI'14):
//! the index behind point lookups, changed in the same transaction as the rows it points to.
//!
//! **One round trip per lookup.** A bucket is one object of [`BUCKET_VALUE_BYTES`] that holds
//! many entries (keys inline, not behind pointers), so a lookup whose key is in its bucket costs
//! exactly one one-sided read: the bucket. For that the bucket's address must be known without
//! reading anything: the table's bucket count is fixed when it is created, and [`HashTable::open`]
//! reads the header and the directory objects listing the bucket addresses once and keeps them
//! in memory. Nothing ever changes them afterwards, so the cached copy never goes stale and
//! needs no validation.
//!
//! **Why a fixed bucket count.** Growing the table would move keys between buckets and change
//! the addresses every client caches; with a fixed count a transaction touches only the buckets
//! of its keys, and two transactions on different keys conflict only when their keys share a
//! bucket. The price is choosing the size up front: [`HashTable::create`] takes a capacity in
//! keys and makes `capacity / BUCKET_KEYS_PLANNED` buckets (rounded up).
//!
//! **Overflow.** A bucket that is full links to an overflow bucket allocated next to it
//! (`alloc_near`), at most [`OVERFLOW_BUCKETS_MAX`] of them per chain; an insert that finds the
//! whole chain full fails with [`IndexError::IndexFull`] and changes nothing. Overflow buckets are
//! never freed: a removal leaves its bucket in the chain for later inserts. That keeps the chain
//! walk bounded and safe under optimistic execution: a transaction that followed an overflow
//! pointer from a bucket that has changed since still reads a bucket (it fails validation at
//! commit), never a slot reused for something else.
//!
//! **Capacity.** With 24-byte keys a bucket holds 30 entries, so a table at its capacity has
//! its first buckets about two thirds full on average and almost never overflows; the chains
//! give each bucket five times a bucket's room for unlucky hashing. Longer keys fill buckets
//! sooner (7 entries of [`super::KEY_BYTES_MAX`] bytes): lookups then take more reads, and a table of
//! only such keys has room for at most `1.75 × capacity` of them (five buckets of 7 entries
//! per 20 keys planned), and fills its fullest chain before that.
//!
//! Layout (`docs/formats.md`, "Indexes"): a header object (magic, bucket count, directory
//! addresses), directory objects of up to [`BUCKETS_PER_DIRECTORY`] bucket addresses, and
//! buckets, each an index node (`index::Node`) whose link is the overflow bucket. The bucket
//! of a key is `key_hash(key) % bucket_count` ([`super::key_hash`]).

use super::{Entry, Node, Reader, check_key, entry_bytes, key_hash, malformed};
use crate::error::{Error, IndexError, TxnError};
use crate::retry::Transact;
use crate::txn::Txn;
use crate::value;
use acre_engine::addr::Addr;
use std::sync::Arc;

/// Bytes of a bucket's value: a bucket fills the 1 KiB size class exactly.
pub const BUCKET_VALUE_BYTES: usize = 1024 - value::LEN_BYTES;
/// Keys planned per bucket when sizing a table: about two thirds of the 30 entries of 24-byte
/// keys a bucket holds.
pub const BUCKET_KEYS_PLANNED: usize = 20;
/// Overflow buckets a chain may have after its first bucket.
pub const OVERFLOW_BUCKETS_MAX: usize = 4;
/// Buckets allocated per transaction while creating a table.
pub const BUCKETS_PER_CREATE_TXN: usize = 64;
/// Directories read per transaction while opening a table.
pub const DIRECTORIES_PER_OPEN_TXN: usize = 64;

/// Magic of a bucket: `"HBKT"` as a little-endian `u32`.
pub const BUCKET_MAGIC: u32 = u32::from_le_bytes(*b"HBKT");
/// Magic of the table's header: `"ACREHASH"`.
pub const HEADER_MAGIC: u64 = u64::from_le_bytes(*b"ACREHASH");
/// Magic of a directory: `"ACREHDIR"`.
pub const DIRECTORY_MAGIC: u64 = u64::from_le_bytes(*b"ACREHDIR");
/// Version of the layout.
pub const FORMAT_VERSION: u32 = 1;

/// Bytes of the header before the directory addresses.
pub const HEADER_FIXED_BYTES: usize = 32;
/// Largest header value: the 64 KiB size class.
pub const HEADER_VALUE_BYTES_MAX: usize = (64 << 10) - value::LEN_BYTES;
/// Directories a table can have.
pub const DIRECTORIES_MAX: usize = (HEADER_VALUE_BYTES_MAX - HEADER_FIXED_BYTES) / 8;
/// Bytes of a directory before its bucket addresses.
pub const DIRECTORY_FIXED_BYTES: usize = 16;
/// Largest directory value: the 4 KiB size class, so a directory fits a 64 KiB slab block.
pub const DIRECTORY_VALUE_BYTES_MAX: usize = (4 << 10) - value::LEN_BYTES;
/// Bucket addresses per directory (the last one may hold fewer).
pub const BUCKETS_PER_DIRECTORY: usize = (DIRECTORY_VALUE_BYTES_MAX - DIRECTORY_FIXED_BYTES) / 8;
/// The most buckets a table can have.
pub const BUCKETS_MAX: usize = DIRECTORIES_MAX * BUCKETS_PER_DIRECTORY;

const _: () = assert!(BUCKETS_PER_DIRECTORY == 509);
const _: () = assert!(DIRECTORIES_MAX == 8187);
const _: () =
    assert!(DIRECTORY_FIXED_BYTES + BUCKETS_PER_DIRECTORY * 8 <= DIRECTORY_VALUE_BYTES_MAX);
// A bucket holds at least one entry of the longest key, so an empty overflow bucket takes any key.
const _: () = assert!(super::NODE_HEADER_BYTES + super::ENTRY_BYTES_MAX <= BUCKET_VALUE_BYTES);

/// A hash table from byte-string keys to `u64` values, kept in objects of the cluster and used
/// inside transactions. Cheap to clone: the cached bucket addresses are shared.
///
/// It holds about `capacity` keys (see the module doc): an insert whose bucket chain is full
/// fails with [`IndexError::IndexFull`]. Every operation takes keys of 1 to
/// [`KEY_BYTES_MAX`](super::KEY_BYTES_MAX) bytes: any other key is
/// [`IndexError::KeyLength`].
#[derive(Clone, Debug)]
pub struct HashTable {
    table: Arc<Table>,
}

#[derive(Debug)]
struct Table {
    root: Addr,
    capacity: usize,
    buckets: Vec<Addr>,
}

/// The table's header as stored at its root.
#[derive(Clone, Debug, PartialEq, Eq)]
struct Header {
    capacity: u64,
    bucket_count: usize,
    directories: Vec<Addr>,
}

/// One directory: the addresses of buckets `first..first + buckets.len()`.
#[derive(Clone, Debug, PartialEq, Eq)]
struct Directory {
    first: u32,
    buckets: Vec<Addr>,
}

/// The buckets of a key's chain read so far, and where the key is, if it was found.
struct Chain {
    buckets: Vec<(Addr, Node)>,
    /// `(bucket index in the chain, entry index in the bucket)`.
    found: Option<(usize, usize)>,
}

impl HashTable {
    /// Creates a table sized for `capacity` keys and returns it open. Runs several
    /// transactions: the buckets in batches of [`BUCKETS_PER_CREATE_TXN`], then each directory,
    /// then the header, so a table whose creation fails half-way is never reachable (its
    /// objects are left allocated).
    pub fn create(db: &impl Transact, capacity: usize) -> Result<HashTable, Error> {
        let bucket_count = capacity.div_ceil(BUCKET_KEYS_PLANNED).max(1);
        if bucket_count > BUCKETS_MAX {
            return Err(Error::Txn(TxnError::OutOfMemory {
                len: HEADER_VALUE_BYTES_MAX,
                reason: format!(
                    "a hash table is sized for at most {} keys, not {capacity}",
                    BUCKETS_MAX * BUCKET_KEYS_PLANNED
                ),
            }));
        }
        let empty = empty_bucket().encode(BUCKET_VALUE_BYTES);
        let mut buckets = Vec::with_capacity(bucket_count);
        while buckets.len() < bucket_count {
            let batch = BUCKETS_PER_CREATE_TXN.min(bucket_count - buckets.len());
            let created = db.transact(|txn| {
                (0..batch)
                    .map(|_| {
                        let addr = txn.alloc(BUCKET_VALUE_BYTES)?;
                        txn.write(addr, &empty)?;
                        Ok(addr)
                    })
                    .collect::<Result<Vec<Addr>, Error>>()
            })?;
            buckets.extend(created);
        }
        let mut directories = Vec::with_capacity(bucket_count.div_ceil(BUCKETS_PER_DIRECTORY));
        for (index, chunk) in buckets.chunks(BUCKETS_PER_DIRECTORY).enumerate() {
            let directory = Directory {
                first: u32::try_from(index * BUCKETS_PER_DIRECTORY)
                    .expect("BUCKETS_MAX fits in u32"),
                buckets: chunk.to_vec(),
            };
            let bytes = directory.encode();
            let addr = db.transact(|txn| {
                let addr = txn.alloc_preferably_near(bytes.len(), chunk[0])?;
                txn.write(addr, &bytes)?;
                Ok(addr)
            })?;
            directories.push(addr);
        }
        let header = Header {
            capacity: capacity as u64,
            bucket_count,
            directories,
        };
        let bytes = header.encode();
        let root = db.transact(|txn| {
            let addr = txn.alloc(bytes.len())?;
            txn.write(addr, &bytes)?;
            Ok(addr)
        })?;
        Ok(HashTable {
            table: Arc::new(Table {
                root,
                capacity,
                buckets,
            }),
        })
    }

    /// Opens the table whose header is at `root`: reads the header and the directories (in
    /// transactions of [`DIRECTORIES_PER_OPEN_TXN`]) and keeps the bucket addresses.
    /// `Malformed` if `root` is not a hash table's header.
    pub fn open(db: &impl Transact, root: Addr) -> Result<HashTable, Error> {
        let header = db.transact(|txn| Ok(Header::decode(root, &txn.read(root)?)?))?;
        let bucket_count = header.bucket_count;
        let mut buckets = Vec::with_capacity(bucket_count);
        for chunk in header.directories.chunks(DIRECTORIES_PER_OPEN_TXN) {
            let directories = db.transact(|txn| {
                chunk
                    .iter()
                    .map(|&addr| Ok(Directory::decode(addr, &txn.read(addr)?)?))
                    .collect::<Result<Vec<Directory>, Error>>()
            })?;
            for (directory, &addr) in directories.into_iter().zip(chunk) {
                let expected = BUCKETS_PER_DIRECTORY.min(bucket_count - buckets.len());
                if directory.first as usize != buckets.len() || directory.buckets.len() != expected
                {
                    return Err(Error::Index(malformed(
                        addr,
                        format!(
                            "directory lists buckets {}..{}, expected {}..{}",
                            directory.first,
                            directory.first as usize + directory.buckets.len(),
                            buckets.len(),
                            buckets.len() + expected
                        ),
                    )));
                }
                buckets.extend(directory.buckets);
            }
        }
        assert_eq!(
            buckets.len(),
            bucket_count,
            "decode checked the directory count"
        );
        Ok(HashTable {
            table: Arc::new(Table {
                root,
                capacity: usize::try_from(header.capacity).unwrap_or(usize::MAX),
                buckets,
            }),
        })
    }

    /// The address of the table's header: what [`HashTable::open`] takes.
    pub fn root(&self) -> Addr {
        self.table.root
    }

    /// The capacity in keys the table was created for.
    pub fn capacity(&self) -> usize {
        self.table.capacity
    }

    /// The number of buckets (first buckets of chains; overflow buckets not counted).
    pub fn bucket_count(&self) -> usize {
        self.table.buckets.len()
    }

    /// The value of `key`, if it is in the table. One read when the key is in its first bucket
    /// (or the bucket has no overflow).
    pub fn get(&self, txn: &mut Txn, key: &[u8]) -> Result<Option<u64>, IndexError> {
        check_key(key)?;
        let chain = self.find(txn, key)?;
        Ok(chain
            .found
            .map(|(bucket, entry)| chain.buckets[bucket].1.entries[entry].value))
    }

    /// Sets `key` to `value`; returns the previous value. [`IndexError::IndexFull`] (with nothing
    /// changed) when the key is new and its chain has no room.
    pub fn insert(&self, txn: &mut Txn, key: &[u8], value: u64) -> Result<Option<u64>, IndexError> {
        check_key(key)?;
        let mut chain = self.find(txn, key)?;
        if let Some((bucket, entry)) = chain.found {
            let (addr, node) = &mut chain.buckets[bucket];
            let previous = std::mem::replace(&mut node.entries[entry].value, value);
            write_bucket(txn, *addr, node)?;
            return Ok(Some(previous));
        }
        let entry = Entry {
            key: key.to_vec(),
            value,
        };
        let needed = entry_bytes(key);
        if let Some((addr, node)) = chain
            .buckets
            .iter_mut()
            .find(|(_, node)| node.encoded_bytes() + needed <= BUCKET_VALUE_BYTES)
        {
            node.entries.push(entry);
            write_bucket(txn, *addr, node)?;
            return Ok(None);
        }
        if chain.buckets.len() > OVERFLOW_BUCKETS_MAX {
            return Err(IndexError::IndexFull {
                root: self.root(),
                reason: format!(
                    "the hash table is sized for about {} keys: create a larger one and copy \
                     the keys into it",
                    self.capacity()
                ),
            });
        }
        let first = chain.buckets[0].0;
        let overflow = txn.alloc_preferably_near(BUCKET_VALUE_BYTES, first)?;
        let mut bucket = empty_bucket();
        bucket.entries.push(entry);
        write_bucket(txn, overflow, &bucket)?;
        let (last_addr, last) = chain
            .buckets
            .last_mut()
            .expect("a chain has a first bucket");
        assert_eq!(last.link, 0, "the chain ends at its last bucket");
        last.link = overflow.to_u64();
        write_bucket(txn, *last_addr, last)?;
        Ok(None)
    }

    /// Removes `key`; returns its value if it was in the table. The bucket stays in its chain.
    pub fn remove(&self, txn: &mut Txn, key: &[u8]) -> Result<Option<u64>, IndexError> {
        check_key(key)?;
        let mut chain = self.find(txn, key)?;
        let Some((bucket, entry)) = chain.found else {
            return Ok(None);
        };
        let (addr, node) = &mut chain.buckets[bucket];
        let removed = node.entries.remove(entry);
        write_bucket(txn, *addr, node)?;
        Ok(Some(removed.value))
    }

    /// The first bucket of `key`'s chain.
    fn bucket_of(&self, key: &[u8]) -> Addr {
        let buckets = &self.table.buckets;
        buckets[(key_hash(key) % buckets.len() as u64) as usize]
    }

    /// Reads `key`'s chain up to the bucket holding `key`, or to its end.
    fn find(&self, txn: &mut Txn, key: &[u8]) -> Result<Chain, IndexError> {
        let mut addr = self.bucket_of(key);
        let mut buckets = Vec::with_capacity(1 + OVERFLOW_BUCKETS_MAX);
        for _ in 0..=OVERFLOW_BUCKETS_MAX {
            let node = read_bucket(txn, addr)?;
            let next = node.link;
            let found = node.entries.iter().position(|e| e.key == key);
            buckets.push((addr, node));
            if let Some(entry) = found {
                return Ok(Chain {
                    found: Some((buckets.len() - 1, entry)),
                    buckets,
                });
            }
            if next == 0 {
                return Ok(Chain {
                    buckets,
                    found: None,
                });
            }
            addr = Addr::from_u64(next);
        }
        Err(malformed(
            addr,
            format!(
                "an overflow chain goes on past {} buckets",
                1 + OVERFLOW_BUCKETS_MAX
            ),
        ))
    }
}

fn empty_bucket() -> Node {
    Node {
        magic: BUCKET_MAGIC,
        level: 0,
        link: 0,
        entries: Vec::new(),
    }
}

fn read_bucket(txn: &mut Txn, addr: Addr) -> Result<Node, IndexError> {
    decode_bucket(addr, &txn.read(addr)?)
}

fn write_bucket(txn: &mut Txn, addr: Addr, bucket: &Node) -> Result<(), IndexError> {
    Ok(txn.write(addr, &bucket.encode(BUCKET_VALUE_BYTES))?)
}

/// A bucket's bytes decoded and checked: an index node with the bucket magic and level 0.
fn decode_bucket(addr: Addr, bytes: &[u8]) -> Result<Node, IndexError> {
    let node = Node::decode(addr, bytes, BUCKET_VALUE_BYTES)?;
    if node.magic != BUCKET_MAGIC {
        return Err(malformed(
            addr,
            format!("magic {:#010x} is not a hash bucket's", node.magic),
        ));
    }
    if node.level != 0 {
        return Err(malformed(
            addr,
            format!("a hash bucket has level {}, not 0", node.level),
        ));
    }
    Ok(node)
}

impl Header {
    fn encode(&self) -> Vec<u8> {
        let count = u32::try_from(self.directories.len()).expect("at most DIRECTORIES_MAX");
        assert!(
            self.directories.len() <= DIRECTORIES_MAX,
            "directories={}",
            self.directories.len()
        );
        let mut out = Vec::with_capacity(HEADER_FIXED_BYTES + 8 * self.directories.len());
        out.extend_from_slice(&HEADER_MAGIC.to_le_bytes());
        out.extend_from_slice(&FORMAT_VERSION.to_le_bytes());
        out.extend_from_slice(&count.to_le_bytes());
        out.extend_from_slice(&self.capacity.to_le_bytes());
        out.extend_from_slice(&(self.bucket_count as u64).to_le_bytes());
        for addr in &self.directories {
            out.extend_from_slice(&addr.to_u64().to_le_bytes());
        }
        out
    }

    fn decode(addr: Addr, bytes: &[u8]) -> Result<Header, IndexError> {
        let mut reader = Reader::new(addr, bytes);
        let magic = reader.u64("magic")?;
        if magic != HEADER_MAGIC {
            return Err(reader.error(format!("magic {magic:#018x} is not a hash table header's")));
        }
        let version = reader.u32("version")?;
        if version != FORMAT_VERSION {
            return Err(reader.error(format!("version {version} is not {FORMAT_VERSION}")));
        }
        let directory_count = reader.u32("directory count")? as usize;
        let capacity = reader.u64("capacity")?;
        let bucket_count = reader.u64("bucket count")?;
        if directory_count.saturating_mul(8) != reader.remaining() {
            return Err(reader.error(format!(
                "{directory_count} directories in {} bytes",
                reader.remaining()
            )));
        }
        // The directories are counted in bytes that exist, so the bound below is real.
        let most = directory_count * BUCKETS_PER_DIRECTORY;
        let least = directory_count.saturating_sub(1) * BUCKETS_PER_DIRECTORY + 1;
        let bucket_count = match usize::try_from(bucket_count) {
            Ok(count) if directory_count > 0 && (least..=most).contains(&count) => count,
            _ => {
                return Err(reader.error(format!(
                    "{bucket_count} buckets do not fill {directory_count} directories"
                )));
            }
        };
        let mut directories = Vec::with_capacity(directory_count);
        for _ in 0..directory_count {
            directories.push(nonzero_addr(&mut reader, "directory address")?);
        }
        reader.finish()?;
        Ok(Header {
            capacity,
            bucket_count,
            directories,
        })
    }
}

impl Directory {
    fn encode(&self) -> Vec<u8> {
        let count = self.buckets.len();
        assert!(
            (1..=BUCKETS_PER_DIRECTORY).contains(&count),
            "buckets={count}"
        );
        let mut out = Vec::with_capacity(DIRECTORY_FIXED_BYTES + 8 * count);
        out.extend_from_slice(&DIRECTORY_MAGIC.to_le_bytes());
        out.extend_from_slice(&self.first.to_le_bytes());
        out.extend_from_slice(&(count as u32).to_le_bytes());
        for addr in &self.buckets {
            out.extend_from_slice(&addr.to_u64().to_le_bytes());
        }
        out
    }

    fn decode(addr: Addr, bytes: &[u8]) -> Result<Directory, IndexError> {
        let mut reader = Reader::new(addr, bytes);
        let magic = reader.u64("magic")?;
        if magic != DIRECTORY_MAGIC {
            return Err(reader.error(format!(
                "magic {magic:#018x} is not a hash table directory's"
            )));
        }
        let first = reader.u32("first bucket")?;
        let count = reader.u32("bucket count")? as usize;
        if !(1..=BUCKETS_PER_DIRECTORY).contains(&count) || count * 8 != reader.remaining() {
            return Err(reader.error(format!("{count} buckets in {} bytes", reader.remaining())));
        }
        let mut buckets = Vec::with_capacity(count);
        for _ in 0..count {
            buckets.push(nonzero_addr(&mut reader, "bucket address")?);
        }
        reader.finish()?;
        Ok(Directory { first, buckets })
    }
}

fn nonzero_addr(reader: &mut Reader<'_>, what: &str) -> Result<Addr, IndexError> {
    match reader.u64(what)? {
        0 => Err(reader.error(format!("{what} is 0"))),
        packed => Ok(Addr::from_u64(packed)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use acre_engine::addr::RegionId;

    const ADDR: Addr = Addr::new(RegionId(2), 4096);

    fn addr(n: u32) -> Addr {
        Addr::new(RegionId(1 + n % 3), 32 + n * 1040)
    }

    fn is_malformed<T: std::fmt::Debug>(result: Result<T, IndexError>) -> bool {
        matches!(result, Err(IndexError::Malformed { addr, .. }) if addr == ADDR)
    }

    #[test]
    fn headers_round_trip_and_damage_is_malformed() {
        let header = Header {
            capacity: 25_000,
            bucket_count: 1250,
            directories: vec![addr(1), addr(2), addr(3)],
        };
        let bytes = header.encode();
        assert_eq!(bytes.len(), HEADER_FIXED_BYTES + 3 * 8);
        assert_eq!(Header::decode(ADDR, &bytes).unwrap(), header);
        for len in 0..bytes.len() {
            assert!(
                is_malformed(Header::decode(ADDR, &bytes[..len])),
                "len={len}"
            );
        }
        let mut magic = bytes.clone();
        magic[0] ^= 1;
        assert!(is_malformed(Header::decode(ADDR, &magic)));
        let mut version = bytes.clone();
        version[8] = 2;
        assert!(is_malformed(Header::decode(ADDR, &version)));
        // A directory count that the bytes do not back (huge, or one short).
        for count in [u32::MAX, 2, 4] {
            let mut directories = bytes.clone();
            directories[12..16].copy_from_slice(&count.to_le_bytes());
            assert!(is_malformed(Header::decode(ADDR, &directories)), "{count}");
        }
        // Bucket counts the directories cannot hold, or would leave a directory empty.
        for buckets in [0u64, 1018, 1528, u64::MAX] {
            let mut count = bytes.clone();
            count[24..32].copy_from_slice(&buckets.to_le_bytes());
            assert!(is_malformed(Header::decode(ADDR, &count)), "{buckets}");
        }
        let mut zero = bytes.clone();
        zero[40..48].fill(0);
        assert!(is_malformed(Header::decode(ADDR, &zero)));
    }

    #[test]
    fn directories_round_trip_and_damage_is_malformed() {
        let full = Directory {
            first: 509,
            buckets: (0..BUCKETS_PER_DIRECTORY as u32).map(addr).collect(),
        };
        let bytes = full.encode();
        assert!(bytes.len() <= DIRECTORY_VALUE_BYTES_MAX);
        assert_eq!(Directory::decode(ADDR, &bytes).unwrap(), full);
        let short = Directory {
            first: 0,
            buckets: vec![addr(7)],
        };
        let bytes = short.encode();
        assert_eq!(Directory::decode(ADDR, &bytes).unwrap(), short);
        for len in 0..bytes.len() {
            assert!(is_malformed(Directory::decode(ADDR, &bytes[..len])));
        }
        for count in [0u32, 2, u32::MAX] {
            let mut bad = bytes.clone();
            bad[12..16].copy_from_slice(&count.to_le_bytes());
            assert!(is_malformed(Directory::decode(ADDR, &bad)), "{count}");
        }
        let mut magic = bytes.clone();
        magic[7] = 0;
        assert!(is_malformed(Directory::decode(ADDR, &magic)));
    }

    #[test]
    fn buckets_round_trip_and_other_nodes_are_malformed() {
        let mut bucket = empty_bucket();
        for i in 0..30u8 {
            bucket.entries.push(Entry {
                key: vec![i; 24],
                value: u64::from(i) << 40,
            });
        }
        let bytes = bucket.encode(BUCKET_VALUE_BYTES);
        assert_eq!(decode_bucket(ADDR, &bytes).unwrap(), bucket);
        // 30 entries of 24-byte keys fit a bucket, a 31st does not (the module doc's numbers).
        assert!(bucket.encoded_bytes() + entry_bytes(&[0; 24]) > BUCKET_VALUE_BYTES);
        // The zeroes of a fresh allocation, a B-tree leaf, a level, a truncation: all malformed.
        assert!(is_malformed(decode_bucket(ADDR, &[0; BUCKET_VALUE_BYTES])));
        let mut leaf = bucket.clone();
        leaf.magic = super::super::btree::LEAF_MAGIC;
        assert!(is_malformed(decode_bucket(
            ADDR,
            &leaf.encode(BUCKET_VALUE_BYTES)
        )));
        let mut level = bytes.clone();
        level[6] = 1;
        assert!(is_malformed(decode_bucket(ADDR, &level)));
        assert!(is_malformed(decode_bucket(ADDR, &bytes[..bytes.len() - 1])));
        let mut too_long = bytes.clone();
        too_long.resize(BUCKET_VALUE_BYTES + 1, 0);
        assert!(is_malformed(decode_bucket(ADDR, &too_long)));
    }

    #[test]
    fn random_bytes_never_panic() {
        let mut random = acre_nvm_log::random::SplitMix::new(0x2545_f491_4f6c_dd1du64);
        let mut next = move || random.next_u64();
        let header = Header {
            capacity: 100,
            bucket_count: 5,
            directories: vec![addr(1)],
        }
        .encode();
        for round in 0..20_000 {
            // Random bytes, and valid encodings with random bytes overwritten.
            let mut bytes = if round % 2 == 0 {
                header.clone()
            } else {
                (0..next() % 64).map(|_| next() as u8).collect()
            };
            if !bytes.is_empty() {
                let at = (next() % bytes.len() as u64) as usize;
                bytes[at] = next() as u8;
            }
            let _ = Header::decode(ADDR, &bytes);
            let _ = Directory::decode(ADDR, &bytes);
            let _ = decode_bucket(ADDR, &bytes);
        }
    }
}
