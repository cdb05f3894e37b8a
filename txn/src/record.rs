//! The transaction protocol's log records: LOCK, COMMIT-BACKUP, COMMIT-PRIMARY, ABORT and
//! TRUNCATE (docs/protocol.md#commit), plus the requests a coordinator sends through the same rings
//! (VALIDATE by message, ALLOC, RELEASE) and the question a participant asks the others about a
//! transaction whose client coordinator died (REQUEST-VOTE,
//! docs/failures.md#a-client-that-dies). Each is one record of an nvm-log ring at the receiver;
//! the record kind says which, and the payload is drawn in `docs/formats.md`:
//!
//! ```text
//! 0   txn id       config u64 | node u16 | thread u16 | zero u32 | seq u64
//! 24  reply to     area u32 | offset u32 | key u64        (zero when no reply is wanted)
//! 40  counts       truncated u32 | items u32
//! 48  truncated    txn ids, 24 bytes each (lazy TRUNCATE piggybacked on this record)
//! ..  body         by kind, below
//! ```
//!
//! Bodies: LOCK and COMMIT-BACKUP: `region count u32 | zero u32 | region ids u32 (padded to 8)`
//! then `items` entries `addr u64 | version u64 | kind u8 | zero [u8; 3] | len u32 | payload
//! (padded to 8)`. VALIDATE: `items` pairs `addr u64 | version u64`. ALLOC: `len u32 | near? u32 |
//! addr u64` (the region to allocate in, at `near` when the flag is set). RELEASE: `items`
//! addresses. REQUEST-VOTE: the id of the transaction asked about (the record's own id is the
//! asker's, for the reply). COMMIT-PRIMARY, ABORT and TRUNCATE have no body.
//!
//! Everything is little-endian; decoding checks every length and names what was wrong.

use acre_engine::addr::{Addr, NodeId, RegionId};
use acre_engine::cursor::Cursor;
use acre_engine::object::Owner;
use acre_engine::region::AccessKey;
use acre_nvm_log::RecordKind;
use std::fmt;

pub const LOCK: RecordKind = RecordKind(16);
pub const COMMIT_BACKUP: RecordKind = RecordKind(17);
pub const COMMIT_PRIMARY: RecordKind = RecordKind(18);
pub const ABORT: RecordKind = RecordKind(19);
pub const TRUNCATE: RecordKind = RecordKind(20);
pub const VALIDATE: RecordKind = RecordKind(21);
pub const ALLOC: RecordKind = RecordKind(22);
pub const RELEASE: RecordKind = RecordKind(23);
pub const REQUEST_VOTE: RecordKind = RecordKind(24);
pub const RECOVERY_QUERY: RecordKind = RecordKind(25);
pub const OUTCOME_QUERY: RecordKind = RecordKind(26);
pub const COPY_QUERY: RecordKind = RecordKind(27);
pub const COPY: RecordKind = RecordKind(28);

/// Bytes of an encoded [`TxnId`].
pub const TXN_ID_BYTES: usize = 24;
/// Bytes before the piggybacked truncations.
pub const FIXED_BYTES: usize = 48;
/// Bytes of an entry before its payload.
pub const ENTRY_HEADER_BYTES: usize = 24;

const _: () = assert!(FIXED_BYTES == TXN_ID_BYTES + 16 + 8);

/// A transaction's identity: `(configuration, node, thread, local sequence)` (docs/protocol.md#transaction-ids).
/// The configuration id lets recovery tell transactions of an old configuration apart.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct TxnId {
    pub config: u64,
    /// The coordinator's node.
    pub node: NodeId,
    /// The coordinator's slot on its node (one per concurrent transaction).
    pub thread: u16,
    /// Per slot, grows by one per transaction.
    pub seq: u64,
}

impl TxnId {
    /// The tag its locks carry ([`Owner`]): its node (16 bits), slot (10 bits) and the low 36
    /// bits of its sequence number. Two transactions that hold locks at once never share one:
    /// a slot runs one transaction at a time, and 2^36 transactions of one slot pass before a
    /// tag comes again. No transaction has the allocator's tag (its node would be the
    /// observers', `u16::MAX`).
    pub fn owner(&self) -> Owner {
        assert!(self.thread < 1 << 10, "{self}: slot beyond 10 bits");
        let node = u64::from(self.node.0);
        Owner::new(node << 46 | u64::from(self.thread) << 36 | (self.seq & ((1 << 36) - 1)))
    }
}

impl fmt::Display for TxnId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "txn c{}.{}.t{}.{}",
            self.config, self.node, self.thread, self.seq
        )
    }
}

impl fmt::Debug for TxnId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(self, f)
    }
}

/// Where the receiver writes its reply: words in the coordinator's reply area.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ReplyTo {
    pub area: RegionId,
    pub offset: u32,
    pub key: AccessKey,
}

impl ReplyTo {
    pub const NONE: ReplyTo = ReplyTo {
        area: RegionId(0),
        offset: 0,
        key: AccessKey(0),
    };
}

/// What an entry of a LOCK or COMMIT-BACKUP record does to its object.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum EntryKind {
    /// New payload for an allocated object.
    Write = 1,
    /// A slot reserved for this transaction becomes an allocated object with this payload.
    Alloc = 2,
    /// The object is freed.
    Free = 3,
}

impl EntryKind {
    fn from_u8(byte: u8) -> Option<EntryKind> {
        match byte {
            1 => Some(EntryKind::Write),
            2 => Some(EntryKind::Alloc),
            3 => Some(EntryKind::Free),
            _ => None,
        }
    }
}

/// One object a committing transaction changes.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Entry {
    pub addr: Addr,
    /// The version the transaction read (for an allocation: the free slot's version). The
    /// primary locks at it; the new version is one more.
    pub version: u64,
    pub kind: EntryKind,
    /// The whole new payload of the object (empty for a free).
    pub payload: Vec<u8>,
}

impl Entry {
    pub fn encoded_bytes(&self) -> usize {
        ENTRY_HEADER_BYTES + self.payload.len().next_multiple_of(8)
    }
}

/// What a record asks of its receiver.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Body {
    Lock {
        regions: Vec<RegionId>,
        entries: Vec<Entry>,
    },
    CommitBackup {
        regions: Vec<RegionId>,
        entries: Vec<Entry>,
    },
    CommitPrimary,
    Abort,
    Truncate,
    Validate {
        reads: Vec<(Addr, u64)>,
    },
    Alloc {
        region: RegionId,
        len: u32,
        near: Option<Addr>,
    },
    Release {
        addrs: Vec<Addr>,
    },
    /// What does the receiver hold of `txn`, whose client coordinator died? Answered with a
    /// vote (`reply::Code::Vote`).
    RequestVote {
        txn: TxnId,
        /// Every region the transaction writes, as the asker's records list them: the vote's
        /// [`crate::reply::vote::NEW_PRIMARY_OF`] bits name regions by their place in it.
        regions: Vec<RegionId>,
    },
    /// Transaction recovery (docs/failures.md#transaction-recovery): how many transactions
    /// writing `region` that need recovery does the receiver hold undecided? Asked by the
    /// region's new primary before it serves the region; answered with a vote whose value is
    /// the count (`reply::Code::Vote`), or refused until the receiver has drained its logs.
    RecoveryQuery {
        region: RegionId,
    },
    /// What does the receiver hold or know of `txn`? Asked by a coordinator that reported it
    /// `Indeterminate` (`Db::outcome`); answered with a vote (`reply::Code::Vote`), which,
    /// unlike REQUEST-VOTE's, binds the receiver to nothing.
    OutcomeQuery {
        txn: TxnId,
    },
    /// The entries of a transaction's LOCK or COMMIT-BACKUP, copied by a participant to a
    /// replica that lacks them once the votes decided to commit it (docs/failures.md#replicate-
    /// the-records): the receiver holds them as it would the COMMIT-BACKUP. Never refused as a
    /// late record of the coordinator, whatever node sends it.
    Copy {
        regions: Vec<RegionId>,
        entries: Vec<Entry>,
    },
    /// Data recovery (docs/failures.md#data-recovery): how many transactions begun before
    /// configuration `older_than` hold locks in `region` at the receiver, its primary? Asked by
    /// a new backup before it copies the region; answered with a vote whose value 0 is the
    /// count, or refused until the receiver has drained its logs for `older_than`.
    CopyQuery {
        region: RegionId,
        older_than: u64,
    },
}

impl Body {
    pub fn kind(&self) -> RecordKind {
        match self {
            Body::Lock { .. } => LOCK,
            Body::CommitBackup { .. } => COMMIT_BACKUP,
            Body::CommitPrimary => COMMIT_PRIMARY,
            Body::Abort => ABORT,
            Body::Truncate => TRUNCATE,
            Body::Validate { .. } => VALIDATE,
            Body::Alloc { .. } => ALLOC,
            Body::Release { .. } => RELEASE,
            Body::RequestVote { .. } => REQUEST_VOTE,
            Body::RecoveryQuery { .. } => RECOVERY_QUERY,
            Body::OutcomeQuery { .. } => OUTCOME_QUERY,
            Body::CopyQuery { .. } => COPY_QUERY,
            Body::Copy { .. } => COPY,
        }
    }

    /// Bytes of the encoded body.
    pub fn encoded_bytes(&self) -> usize {
        match self {
            Body::Lock { regions, entries }
            | Body::CommitBackup { regions, entries }
            | Body::Copy { regions, entries } => {
                8 + (regions.len() * 4).next_multiple_of(8)
                    + entries.iter().map(Entry::encoded_bytes).sum::<usize>()
            }
            Body::CommitPrimary | Body::Abort | Body::Truncate => 0,
            Body::Validate { reads } => reads.len() * 16,
            Body::Alloc { .. } => 16,
            Body::Release { addrs } => addrs.len() * 8,
            Body::RequestVote { regions, .. } => {
                TXN_ID_BYTES + 8 + (regions.len() * 4).next_multiple_of(8)
            }
            Body::RecoveryQuery { .. } => 8,
            Body::OutcomeQuery { .. } => TXN_ID_BYTES,
            Body::CopyQuery { .. } => 16,
        }
    }
}

/// One record of the transaction protocol.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TxnRecord {
    pub txn: TxnId,
    pub reply: ReplyTo,
    /// Transactions whose records the receiver may drop (and, as a backup, apply).
    pub truncated: Vec<TxnId>,
    pub body: Body,
}

/// Bytes of a record with `truncated_count` piggybacked truncations and `body`.
pub fn encoded_bytes(truncated_count: usize, body: &Body) -> usize {
    FIXED_BYTES + truncated_count * TXN_ID_BYTES + body.encoded_bytes()
}

/// Why a record could not be decoded.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("malformed transaction record of kind {kind} at payload byte {offset}: {reason}")]
pub struct RecordError {
    pub kind: u16,
    pub offset: usize,
    pub reason: String,
}

struct Writer(Vec<u8>);

impl Writer {
    fn u8(&mut self, v: u8) {
        self.0.push(v);
    }
    fn u16(&mut self, v: u16) {
        self.0.extend_from_slice(&v.to_le_bytes());
    }
    fn u32(&mut self, v: u32) {
        self.0.extend_from_slice(&v.to_le_bytes());
    }
    fn u64(&mut self, v: u64) {
        self.0.extend_from_slice(&v.to_le_bytes());
    }
    fn pad8(&mut self) {
        while !self.0.len().is_multiple_of(8) {
            self.0.push(0);
        }
    }
    fn txn(&mut self, id: TxnId) {
        self.u64(id.config);
        self.u16(id.node.0);
        self.u16(id.thread);
        self.u32(0);
        self.u64(id.seq);
    }
    /// `count u32 | zero u32 | ids u32`, zero-padded to 8.
    fn regions(&mut self, regions: &[RegionId]) {
        self.u32(u32::try_from(regions.len()).expect("a transaction writes few regions"));
        self.u32(0);
        for region in regions {
            self.u32(region.0);
        }
        self.pad8();
    }
}

struct Reader<'a> {
    cursor: Cursor<'a>,
    kind: RecordKind,
}

impl<'a> Reader<'a> {
    fn fail(&self, reason: impl std::fmt::Display) -> RecordError {
        RecordError {
            kind: self.kind.0,
            offset: self.cursor.at(),
            reason: reason.to_string(),
        }
    }
    fn take(&mut self, n: usize) -> Result<&'a [u8], RecordError> {
        self.cursor.take(n).map_err(|short| self.fail(short))
    }
    fn u8(&mut self) -> Result<u8, RecordError> {
        self.cursor.u8().map_err(|short| self.fail(short))
    }
    fn u16(&mut self) -> Result<u16, RecordError> {
        self.cursor.u16().map_err(|short| self.fail(short))
    }
    fn u32(&mut self) -> Result<u32, RecordError> {
        self.cursor.u32().map_err(|short| self.fail(short))
    }
    fn u64(&mut self) -> Result<u64, RecordError> {
        self.cursor.u64().map_err(|short| self.fail(short))
    }
    fn pad8(&mut self) -> Result<(), RecordError> {
        let at = self.cursor.at();
        self.take(at.next_multiple_of(8) - at).map(|_| ())
    }
    fn txn(&mut self) -> Result<TxnId, RecordError> {
        let config = self.u64()?;
        let node = NodeId(self.u16()?);
        let thread = self.u16()?;
        self.u32()?;
        let seq = self.u64()?;
        Ok(TxnId {
            config,
            node,
            thread,
            seq,
        })
    }
    /// The body of a record of this reader's kind, with `items` entries, reads or addresses.
    fn body(&mut self, items: u32) -> Result<Body, RecordError> {
        let kind = self.kind;
        Ok(match kind {
            LOCK => {
                let (regions, entries) = self.regions_and_entries(items)?;
                Body::Lock { regions, entries }
            }
            COMMIT_BACKUP => {
                let (regions, entries) = self.regions_and_entries(items)?;
                Body::CommitBackup { regions, entries }
            }
            COPY => {
                let (regions, entries) = self.regions_and_entries(items)?;
                Body::Copy { regions, entries }
            }
            COMMIT_PRIMARY => Body::CommitPrimary,
            ABORT => Body::Abort,
            TRUNCATE => Body::Truncate,
            VALIDATE => {
                let items = self.count(items, 16)?;
                let reads = (0..items)
                    .map(|_| Ok((Addr::from_u64(self.u64()?), self.u64()?)))
                    .collect::<Result<Vec<_>, RecordError>>()?;
                Body::Validate { reads }
            }
            ALLOC => {
                let len = self.u32()?;
                let has_near = self.u32()?;
                let addr = Addr::from_u64(self.u64()?);
                let near = match has_near {
                    0 => None,
                    1 => Some(addr),
                    other => return Err(self.fail(format!("near flag {other}"))),
                };
                Body::Alloc {
                    region: addr.region(),
                    len,
                    near,
                }
            }
            RELEASE => {
                let items = self.count(items, 8)?;
                let addrs = (0..items)
                    .map(|_| self.u64().map(Addr::from_u64))
                    .collect::<Result<Vec<_>, _>>()?;
                Body::Release { addrs }
            }
            REQUEST_VOTE => Body::RequestVote {
                txn: self.txn()?,
                regions: self.regions()?,
            },
            OUTCOME_QUERY => Body::OutcomeQuery { txn: self.txn()? },
            COPY_QUERY => {
                let region = RegionId(self.u32()?);
                self.u32()?;
                let older_than = self.u64()?;
                Body::CopyQuery { region, older_than }
            }
            RECOVERY_QUERY => {
                let region = RegionId(self.u32()?);
                self.u32()?;
                Body::RecoveryQuery { region }
            }
            other => {
                return Err(self.fail(format!("kind {} is not a transaction record", other.0)));
            }
        })
    }

    /// A list of regions: `count u32 | zero u32 | ids u32`, zero-padded to 8.
    fn regions(&mut self) -> Result<Vec<RegionId>, RecordError> {
        let region_count = self.u32()?;
        self.u32()?;
        let region_count = self.count(region_count, 4)?;
        let regions = (0..region_count)
            .map(|_| self.u32().map(RegionId))
            .collect::<Result<Vec<_>, _>>()?;
        self.pad8()?;
        Ok(regions)
    }

    /// The regions and entries of a LOCK or COMMIT-BACKUP body holding `items` entries.
    fn regions_and_entries(
        &mut self,
        items: u32,
    ) -> Result<(Vec<RegionId>, Vec<Entry>), RecordError> {
        let regions = self.regions()?;
        let items = self.count(items, ENTRY_HEADER_BYTES)?;
        let mut entries = Vec::with_capacity(items);
        for _ in 0..items {
            let addr = Addr::from_u64(self.u64()?);
            let version = self.u64()?;
            let kind_byte = self.u8()?;
            let kind = EntryKind::from_u8(kind_byte)
                .ok_or_else(|| self.fail(format!("unknown entry kind {kind_byte}")))?;
            self.take(3)?;
            let len = self.u32()? as usize;
            let payload = self.take(len)?.to_vec();
            self.pad8()?;
            entries.push(Entry {
                addr,
                version,
                kind,
                payload,
            });
        }
        Ok((regions, entries))
    }

    /// A count of items of at least `item_bytes` each, checked against the bytes left so a
    /// corrupt count cannot make the decoder allocate without bound.
    fn count(&self, count: u32, item_bytes: usize) -> Result<usize, RecordError> {
        let count = count as usize;
        if count.saturating_mul(item_bytes) > self.cursor.remaining() {
            return Err(self.fail(format!(
                "count {count} of {item_bytes}-byte items exceeds the {} bytes left",
                self.cursor.remaining()
            )));
        }
        Ok(count)
    }
}

impl TxnRecord {
    pub fn kind(&self) -> RecordKind {
        self.body.kind()
    }

    pub fn encode(&self) -> Vec<u8> {
        let mut w = Writer(Vec::with_capacity(encoded_bytes(
            self.truncated.len(),
            &self.body,
        )));
        w.txn(self.txn);
        w.u32(self.reply.area.0);
        w.u32(self.reply.offset);
        w.u64(self.reply.key.0);
        let items = match &self.body {
            Body::Lock { entries, .. }
            | Body::CommitBackup { entries, .. }
            | Body::Copy { entries, .. } => entries.len(),
            Body::Validate { reads } => reads.len(),
            Body::Release { addrs } => addrs.len(),
            Body::CommitPrimary
            | Body::Abort
            | Body::Truncate
            | Body::Alloc { .. }
            | Body::RequestVote { .. }
            | Body::RecoveryQuery { .. }
            | Body::OutcomeQuery { .. }
            | Body::CopyQuery { .. } => 0,
        };
        w.u32(u32::try_from(self.truncated.len()).expect("bounded piggyback"));
        w.u32(u32::try_from(items).expect("a record holds fewer than 2^32 items"));
        for &id in &self.truncated {
            w.txn(id);
        }
        match &self.body {
            Body::Lock { regions, entries }
            | Body::CommitBackup { regions, entries }
            | Body::Copy { regions, entries } => {
                w.regions(regions);
                for entry in entries {
                    w.u64(entry.addr.to_u64());
                    w.u64(entry.version);
                    w.u8(entry.kind as u8);
                    w.0.extend_from_slice(&[0; 3]);
                    w.u32(u32::try_from(entry.payload.len()).expect("payloads are small"));
                    w.0.extend_from_slice(&entry.payload);
                    w.pad8();
                }
            }
            Body::CommitPrimary | Body::Abort | Body::Truncate => {}
            Body::Validate { reads } => {
                for (addr, version) in reads {
                    w.u64(addr.to_u64());
                    w.u64(*version);
                }
            }
            Body::Alloc { region, len, near } => {
                w.u32(*len);
                w.u32(near.is_some() as u32);
                w.u64(near.unwrap_or(Addr::new(*region, 0)).to_u64());
            }
            Body::Release { addrs } => {
                for addr in addrs {
                    w.u64(addr.to_u64());
                }
            }
            Body::RequestVote { txn, regions } => {
                w.txn(*txn);
                w.regions(regions);
            }
            Body::RecoveryQuery { region } => {
                w.u32(region.0);
                w.u32(0);
            }
            Body::OutcomeQuery { txn } => w.txn(*txn),
            Body::CopyQuery { region, older_than } => {
                w.u32(region.0);
                w.u32(0);
                w.u64(*older_than);
            }
        }
        assert_eq!(
            w.0.len(),
            encoded_bytes(self.truncated.len(), &self.body),
            "encoded {} of kind {}",
            self.txn,
            self.kind().0
        );
        w.0
    }

    pub fn decode(kind: RecordKind, payload: &[u8]) -> Result<TxnRecord, RecordError> {
        let mut r = Reader {
            cursor: Cursor::new(payload),
            kind,
        };
        let txn = r.txn()?;
        let reply = ReplyTo {
            area: RegionId(r.u32()?),
            offset: r.u32()?,
            key: AccessKey(r.u64()?),
        };
        let truncated_count = r.u32()?;
        let items = r.u32()?;
        let truncated_count = r.count(truncated_count, TXN_ID_BYTES)?;
        let truncated = (0..truncated_count)
            .map(|_| r.txn())
            .collect::<Result<Vec<_>, _>>()?;
        let body = r.body(items)?;
        if r.cursor.remaining() != 0 {
            return Err(r.fail(format!("{} trailing bytes", r.cursor.remaining())));
        }
        let record = TxnRecord {
            txn,
            reply,
            truncated,
            body,
        };
        // The pair of the assert in `encode`: what decoded is exactly what its layout says.
        assert_eq!(
            payload.len(),
            encoded_bytes(record.truncated.len(), &record.body),
            "decoded {} of kind {}",
            record.txn,
            kind.0
        );
        Ok(record)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn id(seq: u64) -> TxnId {
        TxnId {
            config: 7,
            node: NodeId(3),
            thread: 2,
            seq,
        }
    }

    fn samples() -> Vec<TxnRecord> {
        let addr = Addr::new(RegionId(2), 0x40);
        let entries = vec![
            Entry {
                addr,
                version: 9,
                kind: EntryKind::Write,
                payload: b"hello world".to_vec(),
            },
            Entry {
                addr: Addr::new(RegionId(5), 0x80),
                version: 0,
                kind: EntryKind::Free,
                payload: Vec::new(),
            },
        ];
        let reply = ReplyTo {
            area: RegionId(0x7000_0001),
            offset: 96,
            key: AccessKey(0xdead_beef),
        };
        let bodies = vec![
            Body::Lock {
                regions: vec![RegionId(2), RegionId(5), RegionId(6)],
                entries: entries.clone(),
            },
            Body::CommitBackup {
                regions: vec![RegionId(2)],
                entries: entries.clone(),
            },
            Body::Copy {
                regions: vec![RegionId(2), RegionId(5)],
                entries,
            },
            Body::CommitPrimary,
            Body::Abort,
            Body::Truncate,
            Body::Validate {
                reads: vec![(addr, 4), (addr, 5)],
            },
            Body::Alloc {
                region: RegionId(2),
                len: 100,
                near: None,
            },
            Body::Alloc {
                region: RegionId(2),
                len: 100,
                near: Some(addr),
            },
            Body::Release { addrs: vec![addr] },
            Body::RequestVote {
                txn: TxnId {
                    config: 7,
                    node: NodeId(100),
                    thread: 63,
                    seq: 5 << 40,
                },
                regions: vec![RegionId(1), RegionId(4), RegionId(7)],
            },
            Body::RecoveryQuery {
                region: RegionId(3),
            },
            Body::OutcomeQuery {
                txn: TxnId {
                    config: 2,
                    node: NodeId(100),
                    thread: 1,
                    seq: 9,
                },
            },
            Body::CopyQuery {
                region: RegionId(4),
                older_than: 7,
            },
        ];
        bodies
            .into_iter()
            .enumerate()
            .map(|(i, body)| TxnRecord {
                txn: id(i as u64),
                reply,
                truncated: (0..i as u64).map(id).collect(),
                body,
            })
            .collect()
    }

    #[test]
    fn every_record_round_trips_at_its_computed_size() {
        for record in samples() {
            let bytes = record.encode();
            assert_eq!(
                bytes.len(),
                encoded_bytes(record.truncated.len(), &record.body)
            );
            assert_eq!(
                TxnRecord::decode(record.kind(), &bytes).unwrap(),
                record,
                "{record:?}"
            );
        }
    }

    #[test]
    fn truncated_records_are_errors() {
        for record in samples() {
            let bytes = record.encode();
            for len in 0..bytes.len() {
                assert!(
                    TxnRecord::decode(record.kind(), &bytes[..len]).is_err(),
                    "{:?} cut to {len}",
                    record.kind()
                );
            }
        }
        assert!(TxnRecord::decode(RecordKind(3), &samples()[2].encode()).is_err());
    }

    proptest! {
        #[test]
        fn arbitrary_bytes_never_panic(kind in 16u16..25, bytes in proptest::collection::vec(any::<u8>(), 0..512)) {
            let _ = TxnRecord::decode(RecordKind(kind), &bytes);
        }

        #[test]
        fn bit_flips_decode_or_fail_cleanly(index in 0usize..4096, bit in 0u8..8) {
            for record in samples() {
                let mut bytes = record.encode();
                let at = index % bytes.len();
                bytes[at] ^= 1 << bit;
                let _ = TxnRecord::decode(record.kind(), &bytes);
            }
        }
    }
}
