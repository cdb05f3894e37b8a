//! A transactional B+-tree: the ordered index behind range scans, changed in the same
//! transaction as the rows it points to.
//!
//! **Shape.** Every node is one object of [`NODE_VALUE_BYTES`] (the 1 KiB size class): leaves
//! hold sorted `(key, value)` entries and the address of the next leaf; inner nodes hold
//! sorted separator keys and child addresses. A small header object at the tree's root address
//! holds the root node's address and the height, so a root split is one more write (the header),
//! and the root address that applications keep never changes. Levels are counted from the
//! leaves (level 0); a node keeps its level for life, because nodes only ever split.
//!
//! **Splits by bytes.** Keys vary in length, so a node is full when its encoding would pass
//! [`NODE_VALUE_BYTES`], not at a fixed count. An insert that overflows a leaf splits it in two
//! halves of about equal bytes and adds the right half's first key to the parent as a
//! separator, splitting inner nodes up the path as needed; a root split makes a new root and
//! rewrites the header. With 24-byte keys a leaf holds 30 entries and an inner node 31 children.
//!
//! **No merges, no frees.** A removal takes the entry out of its leaf and nothing else: an empty
//! leaf stays linked, in its parent and in the leaf chain, and later inserts in its key range
//! fill it again. Nodes are never freed. That is what keeps optimistic execution safe: a
//! transaction reads nodes one by one and validates them only at commit, so it may follow a
//! child or next-leaf pointer from a node that has changed since; because nodes are never freed
//! or merged, such a pointer still leads to a node of the same level whose key range is inside
//! the one the stale parent promised, and the leaf chain is always in key order (no cycles). The
//! transaction then fails validation and is retried. A workload that deletes most of a key range
//! for good leaves its empty leaves behind: scans pass over them (bounded, see
//! [`LEAVES_SKIPPED_MAX`]).
//!
//! **Bounds.** Every descent is at most [`HEIGHT_MAX`] nodes and checks each node's level and
//! key range against its parent; every leaf walk stops after `limit` entries and at most
//! [`LEAVES_SKIPPED_MAX`] leaves that contribute none; every node is decoded with bounds
//! checks. Nonsense read from memory ends in [`IndexError::Malformed`], never in a panic or a
//! loop.

use super::{Entry, Node, Reader, check_key, entry_bytes, malformed};
use crate::error::{IndexError, TxnError};
use crate::txn::Txn;
use crate::value;
use acre_engine::addr::Addr;
use std::ops::Bound;

/// Bytes of a node's value: a node fills the 1 KiB size class exactly.
pub const NODE_VALUE_BYTES: usize = 1024 - value::LEN_BYTES;
/// The most levels a tree may have. With at least four children per inner node (keys of
/// [`super::KEY_BYTES_MAX`] bytes, half-full nodes) that is over 10^9 leaves, far beyond the
/// memory of a cluster, so only damaged or stale data reaches it in a descent.
pub const HEIGHT_MAX: usize = 16;
/// Leaves a range may pass without taking an entry from them (empty leaves left by removals)
/// before it gives up with [`TxnError::TxnTooLarge`]: some 15,000 to 30,000 removed 24-byte keys
/// in a row (a reader of 1024 leaves also holds 1 MiB of them in its read set).
pub const LEAVES_SKIPPED_MAX: usize = 1024;

/// Magic of a leaf: `"BTLF"` as a little-endian `u32`.
pub const LEAF_MAGIC: u32 = u32::from_le_bytes(*b"BTLF");
/// Magic of an inner node: `"BTIN"`.
pub const INNER_MAGIC: u32 = u32::from_le_bytes(*b"BTIN");
/// Magic of the tree's header: `"ACREBTRE"`.
pub const HEADER_MAGIC: u64 = u64::from_le_bytes(*b"ACREBTRE");
/// Version of the layout.
pub const FORMAT_VERSION: u32 = 1;
/// Bytes of the header: magic, version, height, root node address.
pub const HEADER_BYTES: usize = 24;

// A split leaves both halves within a node: the entries of a full node plus one more are at most
// NODE_VALUE_BYTES - 16 + ENTRY_BYTES_MAX, and each half gets at most half of that plus one entry.
const _: () = assert!(
    super::NODE_HEADER_BYTES
        + (NODE_VALUE_BYTES - super::NODE_HEADER_BYTES + super::ENTRY_BYTES_MAX) / 2
        + super::ENTRY_BYTES_MAX
        <= NODE_VALUE_BYTES
);
const _: () = assert!(HEIGHT_MAX <= u8::MAX as usize);
// The header fills the 32-byte size class exactly.
const _: () = assert!(HEADER_BYTES + value::LEN_BYTES == 32);

/// An ordered index from byte-string keys to `u64` values, kept in objects of the cluster and
/// used inside transactions. It is only the address of its header: copy it freely.
///
/// `get`, `insert` and `remove` take keys of 1 to [`KEY_BYTES_MAX`](super::KEY_BYTES_MAX) bytes:
/// any other key is [`IndexError::KeyLength`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct BTree {
    root: Addr,
}

/// The tree's header as stored at its root address.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Header {
    /// Levels: 1 when the root is a leaf.
    height: u32,
    root: Addr,
}

/// An inner node on the path of a descent, and which of its children the descent took.
struct Step {
    addr: Addr,
    node: Node,
    child_index: usize,
}

/// Where a descent ended: the header it started from, the inner nodes it passed (root first),
/// and the leaf.
struct Descent {
    header: Header,
    path: Vec<Step>,
    leaf_addr: Addr,
    leaf: Node,
}

impl BTree {
    /// Creates an empty tree (its header and an empty root leaf) in `txn`; it exists for others
    /// once `txn` commits.
    pub fn create(txn: &mut Txn) -> Result<BTree, IndexError> {
        let leaf = txn.alloc(NODE_VALUE_BYTES)?;
        write_node(txn, leaf, &new_leaf(Vec::new(), 0))?;
        let root = txn.alloc_preferably_near(HEADER_BYTES, leaf)?;
        let header = Header {
            height: 1,
            root: leaf,
        };
        txn.write(root, &header.encode())?;
        Ok(BTree { root })
    }

    /// The tree whose header is at `root`. Nothing is read: a wrong address shows up as
    /// `Malformed` from the first operation.
    pub fn open(root: Addr) -> BTree {
        BTree { root }
    }

    /// The address of the tree's header: what [`BTree::open`] takes.
    pub fn root(&self) -> Addr {
        self.root
    }

    /// The value of `key`, if it is in the tree.
    pub fn get(&self, txn: &mut Txn, key: &[u8]) -> Result<Option<u64>, IndexError> {
        check_key(key)?;
        let descent = self.descend(txn, Some(key))?;
        Ok(search(&descent.leaf, key)
            .ok()
            .map(|index| descent.leaf.entries[index].value))
    }

    /// Sets `key` to `value`; returns the previous value. Splits the nodes that overflow.
    pub fn insert(&self, txn: &mut Txn, key: &[u8], value: u64) -> Result<Option<u64>, IndexError> {
        check_key(key)?;
        let Descent {
            mut header,
            path,
            leaf_addr,
            mut leaf,
        } = self.descend(txn, Some(key))?;
        match search(&leaf, key) {
            Ok(index) => {
                let previous = std::mem::replace(&mut leaf.entries[index].value, value);
                write_node(txn, leaf_addr, &leaf)?;
                return Ok(Some(previous));
            }
            Err(index) => leaf.entries.insert(
                index,
                Entry {
                    key: key.to_vec(),
                    value,
                },
            ),
        }
        if leaf.encoded_bytes() <= NODE_VALUE_BYTES {
            write_node(txn, leaf_addr, &leaf)?;
            return Ok(None);
        }
        // Refuse, before changing anything, a split that might grow a tree of HEIGHT_MAX levels.
        let might_split =
            |step: &Step| step.node.encoded_bytes() + super::ENTRY_BYTES_MAX > NODE_VALUE_BYTES;
        if header.height as usize >= HEIGHT_MAX && path.iter().all(might_split) {
            return Err(IndexError::IndexFull {
                root: self.root,
                reason: format!("a split would grow the tree past {HEIGHT_MAX} levels"),
            });
        }

        let (separator, new_child) = split_leaf(txn, leaf_addr, leaf)?;
        let Some((separator, new_child)) = add_to_parents(txn, path, separator, new_child)? else {
            return Ok(None);
        };
        self.grow_root(txn, &mut header, separator, new_child)?;
        Ok(None)
    }

    /// The root split: a new root above the old one, with `separator` and `new_child`.
    fn grow_root(
        &self,
        txn: &mut Txn,
        header: &mut Header,
        separator: Vec<u8>,
        new_child: Addr,
    ) -> Result<(), IndexError> {
        assert!(
            (header.height as usize) < HEIGHT_MAX,
            "height={} was checked before the split",
            header.height
        );
        let root_addr = txn.alloc_preferably_near(NODE_VALUE_BYTES, header.root)?;
        let root = Node {
            magic: INNER_MAGIC,
            level: header.height as u8,
            link: header.root.to_u64(),
            entries: vec![Entry {
                key: separator,
                value: new_child.to_u64(),
            }],
        };
        write_node(txn, root_addr, &root)?;
        header.height += 1;
        header.root = root_addr;
        Ok(txn.write(self.root, &header.encode())?)
    }

    /// Removes `key`; returns its value if it was in the tree. The leaf stays, even if empty.
    pub fn remove(&self, txn: &mut Txn, key: &[u8]) -> Result<Option<u64>, IndexError> {
        check_key(key)?;
        let Descent {
            leaf_addr,
            mut leaf,
            ..
        } = self.descend(txn, Some(key))?;
        let Ok(index) = search(&leaf, key) else {
            return Ok(None);
        };
        let removed = leaf.entries.remove(index);
        write_node(txn, leaf_addr, &leaf)?;
        Ok(Some(removed.value))
    }

    /// The entries with keys between `lower` and `upper`, in key order, at most `limit` of them.
    /// Bounds may be any byte strings (empty, or longer than a key); a range whose lower bound is
    /// above its upper one is empty. Reads one leaf per non-empty leaf's worth of entries, plus
    /// the empty leaves on the way (at most [`LEAVES_SKIPPED_MAX`], else `TxnTooLarge`).
    pub fn range(
        &self,
        txn: &mut Txn,
        lower: Bound<&[u8]>,
        upper: Bound<&[u8]>,
        limit: usize,
    ) -> Result<Vec<(Vec<u8>, u64)>, IndexError> {
        let mut out = Vec::new();
        if limit == 0 {
            return Ok(out);
        }
        let start = match lower {
            Bound::Included(key) | Bound::Excluded(key) => Some(key),
            Bound::Unbounded => None,
        };
        let Descent {
            mut leaf_addr,
            mut leaf,
            ..
        } = self.descend(txn, start)?;
        let mut previous_last: Option<Vec<u8>> = None;
        let mut skipped = 0;
        // Each pass takes at least one entry (at most `limit` passes), ends the walk, or counts
        // a skipped leaf (at most LEAVES_SKIPPED_MAX).
        loop {
            if let (Some(previous), Some(first)) = (&previous_last, leaf.entries.first())
                && first.key <= *previous
            {
                return Err(malformed(
                    leaf_addr,
                    "the leaf's first key is not above the previous leaf's last",
                ));
            }
            let Some(taken) = take_in_range(&leaf, lower, upper, limit, &mut out) else {
                return Ok(out);
            };
            if leaf.link == 0 {
                return Ok(out);
            }
            if !taken {
                skipped += 1;
                if skipped > LEAVES_SKIPPED_MAX {
                    return Err(IndexError::Txn(TxnError::TxnTooLarge {
                        reason: format!(
                            "a range over the B-tree at {} passed more than \
                             {LEAVES_SKIPPED_MAX} leaves without entries",
                            self.root
                        ),
                    }));
                }
            }
            if let Some(last) = leaf.entries.last() {
                previous_last = Some(last.key.clone());
            }
            leaf_addr = Addr::from_u64(leaf.link);
            leaf = read_node(txn, leaf_addr)?;
            if leaf.level != 0 {
                return Err(malformed(leaf_addr, "the next leaf is an inner node"));
            }
        }
    }

    /// The entries with keys `>= start`, in key order, at most `limit` of them.
    pub fn scan(
        &self,
        txn: &mut Txn,
        start: &[u8],
        limit: usize,
    ) -> Result<Vec<(Vec<u8>, u64)>, IndexError> {
        self.range(txn, Bound::Included(start), Bound::Unbounded, limit)
    }

    fn read_header(&self, txn: &mut Txn) -> Result<Header, IndexError> {
        Header::decode(self.root, &txn.read(self.root)?)
    }

    /// Reads the path from the root to the leaf whose key range holds `key` (the leftmost leaf
    /// for `None`), checking each node's level and keys against what its parent promised.
    fn descend(&self, txn: &mut Txn, key: Option<&[u8]>) -> Result<Descent, IndexError> {
        let header = self.read_header(txn)?;
        let mut path = Vec::with_capacity(header.height as usize);
        let mut addr = header.root;
        // Keys in the current node are in [lower, upper); None is unbounded.
        let mut lower: Option<Vec<u8>> = None;
        let mut upper: Option<Vec<u8>> = None;
        for level in (0..header.height).rev() {
            let node = read_node(txn, addr)?;
            if u32::from(node.level) != level {
                return Err(malformed(
                    addr,
                    format!("a node of level {} where level {level} belongs", node.level),
                ));
            }
            check_range(addr, &node, lower.as_deref(), upper.as_deref())?;
            if level == 0 {
                return Ok(Descent {
                    header,
                    path,
                    leaf_addr: addr,
                    leaf: node,
                });
            }
            let child_index = match key {
                Some(key) => node.entries.partition_point(|e| e.key.as_slice() <= key),
                None => 0,
            };
            let child = match child_index {
                0 => node.link,
                index => node.entries[index - 1].value,
            };
            if child_index > 0 {
                lower = Some(node.entries[child_index - 1].key.clone());
            }
            if let Some(next) = node.entries.get(child_index) {
                upper = Some(next.key.clone());
            }
            path.push(Step {
                addr,
                node,
                child_index,
            });
            addr = Addr::from_u64(child);
        }
        unreachable!("the loop returns at level 0 and Header::decode checked height >= 1")
    }
}

/// Where `key` is in a node's sorted entries (`Ok`), or where it would go (`Err`).
fn search(node: &Node, key: &[u8]) -> Result<usize, usize> {
    node.entries.binary_search_by(|e| e.key.as_slice().cmp(key))
}

/// The index at which to split `entries` (too many bytes for one node) so that both halves
/// have about the same bytes: the first index where the entries before it reach half.
fn split_index(entries: &[Entry]) -> usize {
    assert!(entries.len() >= 2, "entries={}", entries.len());
    let total: usize = entries.iter().map(|e| entry_bytes(&e.key)).sum();
    let mut before = 0;
    for (index, entry) in entries.iter().enumerate() {
        if before >= total / 2 {
            return index.clamp(1, entries.len() - 1);
        }
        before += entry_bytes(&entry.key);
    }
    entries.len() - 1
}

fn new_leaf(entries: Vec<Entry>, next: u64) -> Node {
    Node {
        magic: LEAF_MAGIC,
        level: 0,
        link: next,
        entries,
    }
}

/// Checks that a node's keys lie in `[lower, upper)`, the range its parent gives it.
fn check_range(
    addr: Addr,
    node: &Node,
    lower: Option<&[u8]>,
    upper: Option<&[u8]>,
) -> Result<(), IndexError> {
    if let (Some(lower), Some(first)) = (lower, node.entries.first())
        && first.key.as_slice() < lower
    {
        return Err(malformed(addr, "a key below the node's range"));
    }
    if let (Some(upper), Some(last)) = (upper, node.entries.last())
        && last.key.as_slice() >= upper
    {
        return Err(malformed(addr, "a key above the node's range"));
    }
    Ok(())
}

fn read_node(txn: &mut Txn, addr: Addr) -> Result<Node, IndexError> {
    decode_node(addr, &txn.read(addr)?)
}

fn write_node(txn: &mut Txn, addr: Addr, node: &Node) -> Result<(), IndexError> {
    let bytes = node.encode(NODE_VALUE_BYTES);
    debug_assert!(decode_node(addr, &bytes).is_ok(), "{node:?}");
    Ok(txn.write(addr, &bytes)?)
}

/// A node's bytes decoded and checked: a leaf (level 0) or an inner node (level >= 1, at least
/// one separator, no zero child), with strictly increasing keys.
fn decode_node(addr: Addr, bytes: &[u8]) -> Result<Node, IndexError> {
    let node = Node::decode(addr, bytes, NODE_VALUE_BYTES)?;
    match node.magic {
        LEAF_MAGIC if node.level != 0 => {
            return Err(malformed(addr, format!("a leaf at level {}", node.level)));
        }
        LEAF_MAGIC => {}
        INNER_MAGIC if node.level == 0 || node.level as usize >= HEIGHT_MAX => {
            return Err(malformed(
                addr,
                format!("an inner node at level {}", node.level),
            ));
        }
        INNER_MAGIC if node.entries.is_empty() => {
            return Err(malformed(addr, "an inner node without separators"));
        }
        INNER_MAGIC if node.link == 0 || node.entries.iter().any(|e| e.value == 0) => {
            return Err(malformed(addr, "an inner node with a zero child"));
        }
        INNER_MAGIC => {}
        magic => {
            return Err(malformed(
                addr,
                format!("magic {magic:#010x} is not a B-tree node's"),
            ));
        }
    }
    if let Some(index) = node.entries.windows(2).position(|w| w[0].key >= w[1].key) {
        return Err(malformed(
            addr,
            format!("keys {index} and {} are out of order", index + 1),
        ));
    }
    Ok(node)
}

impl Header {
    fn encode(&self) -> Vec<u8> {
        assert!(
            (1..=HEIGHT_MAX as u32).contains(&self.height),
            "height={}",
            self.height
        );
        let mut out = Vec::with_capacity(HEADER_BYTES);
        out.extend_from_slice(&HEADER_MAGIC.to_le_bytes());
        out.extend_from_slice(&FORMAT_VERSION.to_le_bytes());
        out.extend_from_slice(&self.height.to_le_bytes());
        out.extend_from_slice(&self.root.to_u64().to_le_bytes());
        assert_eq!(out.len(), HEADER_BYTES);
        out
    }

    fn decode(addr: Addr, bytes: &[u8]) -> Result<Header, IndexError> {
        let mut reader = Reader::new(addr, bytes);
        let magic = reader.u64("magic")?;
        if magic != HEADER_MAGIC {
            return Err(reader.error(format!("magic {magic:#018x} is not a B-tree header's")));
        }
        let version = reader.u32("version")?;
        if version != FORMAT_VERSION {
            return Err(reader.error(format!("version {version} is not {FORMAT_VERSION}")));
        }
        let height = reader.u32("height")?;
        if !(1..=HEIGHT_MAX as u32).contains(&height) {
            return Err(reader.error(format!("height {height} is not in 1..={HEIGHT_MAX}")));
        }
        let root = reader.u64("root")?;
        if root == 0 {
            return Err(reader.error("root node address is 0"));
        }
        reader.finish()?;
        Ok(Header {
            height,
            root: Addr::from_u64(root),
        })
    }
}

/// Appends the entries of `leaf` between `lower` and `upper` to `out`, up to `limit` in all.
/// `None` when the range ends in this leaf (above `upper`, or `limit` reached); else whether
/// any entry was taken.
fn take_in_range(
    leaf: &Node,
    lower: Bound<&[u8]>,
    upper: Bound<&[u8]>,
    limit: usize,
    out: &mut Vec<(Vec<u8>, u64)>,
) -> Option<bool> {
    let above_lower = |key: &[u8]| match lower {
        Bound::Included(bound) => key >= bound,
        Bound::Excluded(bound) => key > bound,
        Bound::Unbounded => true,
    };
    let below_upper = |key: &[u8]| match upper {
        Bound::Included(bound) => key <= bound,
        Bound::Excluded(bound) => key < bound,
        Bound::Unbounded => true,
    };
    let mut taken = false;
    for entry in leaf.entries.iter().filter(|entry| above_lower(&entry.key)) {
        if !below_upper(&entry.key) {
            return None;
        }
        out.push((entry.key.clone(), entry.value));
        taken = true;
        if out.len() == limit {
            return None;
        }
    }
    Some(taken)
}

/// Splits an overflowing leaf: the right half moves to a new leaf linked after it. Returns the
/// separator (the right leaf's first key) and the right leaf's address, for the parent.
fn split_leaf(
    txn: &mut Txn,
    leaf_addr: Addr,
    mut leaf: Node,
) -> Result<(Vec<u8>, Addr), IndexError> {
    let right_entries = leaf.entries.split_off(split_index(&leaf.entries));
    let separator = right_entries[0].key.clone();
    let right_addr = txn.alloc_preferably_near(NODE_VALUE_BYTES, leaf_addr)?;
    let right = new_leaf(right_entries, leaf.link);
    leaf.link = right_addr.to_u64();
    write_node(txn, right_addr, &right)?;
    write_node(txn, leaf_addr, &leaf)?;
    Ok((separator, right_addr))
}

/// Adds `separator` and `new_child` to the parents on `path`, bottom up, splitting those that
/// overflow. Returns what the root must take when the root itself split.
fn add_to_parents(
    txn: &mut Txn,
    path: Vec<Step>,
    mut separator: Vec<u8>,
    mut new_child: Addr,
) -> Result<Option<(Vec<u8>, Addr)>, IndexError> {
    for Step {
        addr,
        mut node,
        child_index,
    } in path.into_iter().rev()
    {
        node.entries.insert(
            child_index,
            Entry {
                key: separator,
                value: new_child.to_u64(),
            },
        );
        if node.encoded_bytes() <= NODE_VALUE_BYTES {
            write_node(txn, addr, &node)?;
            return Ok(None);
        }
        // The middle entry moves up: its key is the separator, its child the right node's
        // first child.
        let middle = split_index(&node.entries).clamp(1, node.entries.len() - 2);
        let right_entries = node.entries.split_off(middle + 1);
        let promoted = node.entries.pop().expect("middle >= 1");
        let right_addr = txn.alloc_preferably_near(NODE_VALUE_BYTES, addr)?;
        let right = Node {
            magic: INNER_MAGIC,
            level: node.level,
            link: promoted.value,
            entries: right_entries,
        };
        write_node(txn, right_addr, &right)?;
        write_node(txn, addr, &node)?;
        separator = promoted.key;
        new_child = right_addr;
    }
    Ok(Some((separator, new_child)))
}

#[cfg(test)]
mod tests {
    use super::*;
    use acre_engine::addr::RegionId;

    const ADDR: Addr = Addr::new(RegionId(3), 8192);

    fn is_malformed<T: std::fmt::Debug>(result: Result<T, IndexError>) -> bool {
        matches!(result, Err(IndexError::Malformed { addr, .. }) if addr == ADDR)
    }

    fn entries(keys: &[&[u8]]) -> Vec<Entry> {
        keys.iter()
            .enumerate()
            .map(|(i, key)| Entry {
                key: key.to_vec(),
                value: i as u64 + 1,
            })
            .collect()
    }

    #[test]
    fn headers_round_trip_and_damage_is_malformed() {
        let header = Header {
            height: 3,
            root: Addr::new(RegionId(2), 1040),
        };
        let bytes = header.encode();
        assert_eq!(Header::decode(ADDR, &bytes).unwrap(), header);
        for len in 0..bytes.len() {
            assert!(
                is_malformed(Header::decode(ADDR, &bytes[..len])),
                "len={len}"
            );
        }
        let mut longer = bytes.clone();
        longer.push(0);
        assert!(is_malformed(Header::decode(ADDR, &longer)));
        for (at, byte) in [(0, b'x'), (8, 2), (12, 0), (12, HEIGHT_MAX as u8 + 1)] {
            let mut bad = bytes.clone();
            bad[at] = byte;
            assert!(
                is_malformed(Header::decode(ADDR, &bad)),
                "at={at} byte={byte}"
            );
        }
        let mut zero_root = bytes.clone();
        zero_root[16..24].fill(0);
        assert!(is_malformed(Header::decode(ADDR, &zero_root)));
    }

    #[test]
    fn nodes_round_trip_and_broken_rules_are_malformed() {
        let leaf = new_leaf(entries(&[b"a", b"b", b"c"]), 77);
        let bytes = leaf.encode(NODE_VALUE_BYTES);
        assert_eq!(decode_node(ADDR, &bytes).unwrap(), leaf);
        let inner = Node {
            magic: INNER_MAGIC,
            level: 2,
            link: 5,
            entries: entries(&[b"m", b"t"]),
        };
        assert_eq!(
            decode_node(ADDR, &inner.encode(NODE_VALUE_BYTES)).unwrap(),
            inner
        );
        let broken = [
            new_leaf(entries(&[b"b", b"a"]), 0),
            new_leaf(entries(&[b"a", b"a"]), 0),
            Node {
                level: 1,
                ..leaf.clone()
            },
            Node {
                level: 0,
                ..inner.clone()
            },
            Node {
                level: HEIGHT_MAX as u8,
                ..inner.clone()
            },
            Node {
                entries: Vec::new(),
                ..inner.clone()
            },
            Node {
                link: 0,
                ..inner.clone()
            },
            Node {
                entries: vec![Entry {
                    key: b"m".to_vec(),
                    value: 0,
                }],
                ..inner.clone()
            },
            Node {
                magic: super::super::hash::BUCKET_MAGIC,
                ..leaf.clone()
            },
        ];
        for node in broken {
            let bytes = node.encode(NODE_VALUE_BYTES);
            assert!(is_malformed(decode_node(ADDR, &bytes)), "{node:?}");
        }
        for len in 0..bytes.len() {
            assert!(is_malformed(decode_node(ADDR, &bytes[..len])), "len={len}");
        }
        assert!(is_malformed(decode_node(ADDR, &[0; NODE_VALUE_BYTES])));
    }

    #[test]
    fn random_bytes_never_panic() {
        let mut random = acre_nvm_log::random::SplitMix::new(0x1234_5678_9abc_def1u64);
        let mut next = move || random.next_u64();
        let leaf = new_leaf(entries(&[b"alpha", b"beta", b"gamma"]), 9).encode(NODE_VALUE_BYTES);
        let header = Header {
            height: 2,
            root: ADDR,
        }
        .encode();
        for round in 0..20_000 {
            let mut bytes = match round % 3 {
                0 => leaf.clone(),
                1 => header.clone(),
                _ => (0..next() % 80).map(|_| next() as u8).collect(),
            };
            for _ in 0..1 + next() % 3 {
                if !bytes.is_empty() {
                    let at = (next() % bytes.len() as u64) as usize;
                    bytes[at] = next() as u8;
                }
            }
            let _ = decode_node(ADDR, &bytes);
            let _ = Header::decode(ADDR, &bytes);
        }
    }

    /// Splits keep both halves within a node, for every mix of key lengths around a full node.
    #[test]
    fn split_halves_fit_a_node() {
        let mut random = acre_nvm_log::random::SplitMix::new(0x0bad_5eed_u64);
        let mut next = move || random.next_u64();
        for _ in 0..2000 {
            // Fill a node with keys of random lengths, then add one that overflows it.
            let mut node = new_leaf(Vec::new(), 0);
            let mut counter = 0u32;
            loop {
                let len = 1 + (next() % super::super::KEY_BYTES_MAX as u64) as usize;
                let mut key = counter.to_be_bytes().to_vec();
                key.resize(len.max(4), b'k');
                counter += 1;
                node.entries.push(Entry { key, value: 1 });
                if node.encoded_bytes() > NODE_VALUE_BYTES {
                    break;
                }
            }
            let index = split_index(&node.entries);
            assert!((1..node.entries.len()).contains(&index));
            let right = new_leaf(node.entries.split_off(index), 0);
            assert!(
                node.encoded_bytes() <= NODE_VALUE_BYTES,
                "{}",
                node.encoded_bytes()
            );
            assert!(
                right.encoded_bytes() <= NODE_VALUE_BYTES,
                "{}",
                right.encoded_bytes()
            );
        }
        // 30 entries of 24-byte keys fit a node, 31 do not (the module doc's numbers).
        let full = new_leaf(
            (0..30u8)
                .map(|i| Entry {
                    key: vec![i; 24],
                    value: 1,
                })
                .collect(),
            0,
        );
        assert!(full.encoded_bytes() <= NODE_VALUE_BYTES);
        assert!(full.encoded_bytes() + entry_bytes(&[0; 24]) > NODE_VALUE_BYTES);
    }

    #[test]
    fn ranges_are_checked_against_the_parent() {
        let node = new_leaf(entries(&[b"d", b"f"]), 0);
        assert!(check_range(ADDR, &node, Some(b"d"), Some(b"g")).is_ok());
        assert!(check_range(ADDR, &node, None, None).is_ok());
        assert!(is_malformed(check_range(ADDR, &node, Some(b"e"), None)));
        assert!(is_malformed(check_range(ADDR, &node, None, Some(b"f"))));
    }
}
