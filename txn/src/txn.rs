//! A transaction: execution (one-sided reads with their versions recorded; writes, allocations
//! and frees buffered) and the commit protocol of DESIGN.md §5, run by the coordinator.
//!
//! Commit of a transaction that writes:
//! 1. reserve log space at every participant for every record the commit may write;
//! 2. LOCK at every primary of a written object, and wait for all votes;
//! 3. VALIDATE the objects read but not written: one-sided header re-reads, or one VALIDATE
//!    message to a primary that holds more than [`T_R`] of them;
//! 4. COMMIT-BACKUP to every backup of every written region, waiting only for the fabric's
//!    acknowledgement that the record is durable in the backup's log (no backup CPU involved);
//! 5. COMMIT-PRIMARY to every primary; the transaction is committed once one primary has
//!    acknowledged;
//! 6. TRUNCATE, lazily: the transaction id rides on later records to every participant.
//!
//! The coordinator does the primary's part itself for objects whose primary is its own node
//! (after the record is in the log, as the worker would); the worker then only keeps the
//! record. A read-only transaction only validates (step 3 for all its reads); one that read a single
//! object does not even do that. Any failure before step 4 sends ABORT to the primaries that
//! got LOCK, which releases every lock taken.

use crate::error::TxnError;
use crate::node::{REPLY_TIMEOUT, TxnNode};
use crate::record::{Body, Entry, EntryKind, ReplyTo, TxnId, TxnRecord};
use crate::reply::{Code, REPLIES_PER_TXN_MAX, SlotLease, alloc_failure};
use crate::value;
use acre_engine::addr::{Addr, NodeId, RegionId};
use acre_engine::slab::AllocError;
use acre_nvm_log::Reservation;
use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;

/// A primary holding more than this many of the objects to validate is sent one VALIDATE
/// message instead of that many one-sided reads (FaRM's `t_r`).
pub const T_R: usize = 4;

/// What the transaction knows of an object it read.
#[derive(Clone, Debug)]
struct ReadInfo {
    version: u64,
    payload_bytes: usize,
    /// The value, or `None` if no object was allocated there.
    value: Option<Vec<u8>>,
}

/// A change the transaction will make at commit.
#[derive(Clone, Debug)]
struct Change {
    kind: EntryKind,
    version: u64,
    payload_bytes: usize,
    value: Vec<u8>,
}

/// One transaction. Reads are only trustworthy once `commit` succeeds: a transaction that will
/// abort may have seen objects from different moments (never a torn object).
pub struct Txn {
    node: Arc<TxnNode>,
    lease: Option<SlotLease>,
    id: TxnId,
    reads: BTreeMap<Addr, ReadInfo>,
    changes: BTreeMap<Addr, Change>,
    next_reply_index: usize,
    /// Replies consumed so far; fewer than `next_reply_index` means some may still arrive.
    replies_received: usize,
    finished: bool,
}

impl Txn {
    pub(crate) fn begin(node: Arc<TxnNode>) -> Result<Txn, TxnError> {
        let lease = node.replies().acquire().ok_or(TxnError::Busy {
            node: node.node_id(),
            slots: crate::reply::SLOTS_MAX,
        })?;
        let id = TxnId {
            config: node.config().id,
            node: node.node_id(),
            thread: lease.slot,
            seq: lease.seq,
        };
        Ok(Txn {
            node,
            lease: Some(lease),
            id,
            reads: BTreeMap::new(),
            changes: BTreeMap::new(),
            next_reply_index: 0,
            replies_received: 0,
            finished: false,
        })
    }

    pub fn id(&self) -> TxnId {
        self.id
    }

    fn slot(&self) -> u16 {
        self.lease
            .as_ref()
            .expect("a live transaction has a slot")
            .slot
    }

    fn next_reply(&mut self) -> Result<(usize, ReplyTo), TxnError> {
        let index = self.next_reply_index;
        if index >= REPLIES_PER_TXN_MAX {
            return Err(TxnError::TxnTooLarge {
                reason: format!(
                    "more than {REPLIES_PER_TXN_MAX} requests to other nodes in one transaction"
                ),
            });
        }
        self.next_reply_index += 1;
        Ok((index, self.node.replies().reply_to(self.slot(), index)))
    }

    /// Reads the object at `addr` (this transaction's own write if it made one).
    pub fn read(&mut self, addr: Addr) -> Result<Vec<u8>, TxnError> {
        if let Some(change) = self.changes.get(&addr) {
            return match change.kind {
                EntryKind::Free => Err(TxnError::NotFound { addr }),
                EntryKind::Write | EntryKind::Alloc => Ok(change.value.clone()),
            };
        }
        self.read_info(addr)?
            .value
            .clone()
            .ok_or(TxnError::NotFound { addr })
    }

    /// The recorded read of `addr`, reading it now if this transaction has not.
    fn read_info(&mut self, addr: Addr) -> Result<&ReadInfo, TxnError> {
        if !self.reads.contains_key(&addr) {
            let slot = self.node.read_slot(addr)?;
            let value = if slot.header.is_allocated() {
                let value = value::decode(&slot.payload).map_err(|reason| TxnError::Protocol {
                    node: self.node.node_id(),
                    reason: format!("object at {addr}: {reason}"),
                })?;
                Some(value.to_vec())
            } else {
                None
            };
            self.reads.insert(
                addr,
                ReadInfo {
                    version: slot.header.version(),
                    payload_bytes: slot.payload.len(),
                    value,
                },
            );
        }
        Ok(&self.reads[&addr])
    }

    /// Replaces the value of the object at `addr` (at commit).
    pub fn write(&mut self, addr: Addr, bytes: &[u8]) -> Result<(), TxnError> {
        if let Some(change) = self.changes.get_mut(&addr) {
            if change.kind == EntryKind::Free {
                return Err(TxnError::NotFound { addr });
            }
            check_fits(addr, bytes.len(), change.payload_bytes)?;
            change.value = bytes.to_vec();
            return Ok(());
        }
        let read = self.read_info(addr)?;
        if read.value.is_none() {
            return Err(TxnError::NotFound { addr });
        }
        check_fits(addr, bytes.len(), read.payload_bytes)?;
        let change = Change {
            kind: EntryKind::Write,
            version: read.version,
            payload_bytes: read.payload_bytes,
            value: bytes.to_vec(),
        };
        self.changes.insert(addr, change);
        Ok(())
    }

    /// Allocates an object holding `len` zero bytes, in a region whose primary is this node
    /// when there is one. It exists for others once the transaction commits.
    pub fn alloc(&mut self, len: usize) -> Result<Addr, TxnError> {
        let local = self.node.local_primary_regions();
        let regions: Vec<RegionId> = if local.is_empty() {
            self.node
                .config()
                .regions
                .iter()
                .map(|p| p.region)
                .collect()
        } else {
            local
        };
        let start = (self.id.seq as usize + self.changes.len()) % regions.len();
        let mut last = None;
        for k in 0..regions.len() {
            match self.alloc_in(regions[(start + k) % regions.len()], len, None) {
                Err(TxnError::OutOfMemory { len, reason }) => {
                    last = Some(TxnError::OutOfMemory { len, reason })
                }
                other => return other,
            }
        }
        Err(last.expect("at least one region"))
    }

    /// Allocates an object holding `len` zero bytes in the region of `near`, in the same block
    /// when it has room (objects used together share pages).
    pub fn alloc_near(&mut self, len: usize, near: Addr) -> Result<Addr, TxnError> {
        self.alloc_in(near.region(), len, Some(near))
    }

    fn alloc_in(
        &mut self,
        region: RegionId,
        len: usize,
        near: Option<Addr>,
    ) -> Result<Addr, TxnError> {
        let placement = self
            .node
            .config()
            .placement(region)
            .ok_or(TxnError::NoSuchRegion {
                addr: near.unwrap_or(Addr::new(region, 0)),
                region,
            })?;
        let primary = placement.primary;
        let payload_len = value::LEN_BYTES + len;
        let (addr, version, payload_bytes) = if primary == self.node.node_id() {
            let reserved = self
                .node
                .reserve_here(region, payload_len, near)
                .map_err(|e| out_of_memory(len, e))?;
            (reserved.addr, reserved.version, reserved.payload_bytes)
        } else {
            let (index, reply) = self.next_reply()?;
            let record = TxnRecord {
                txn: self.id,
                reply,
                truncated: Vec::new(),
                body: Body::Alloc {
                    region,
                    len: u32::try_from(payload_len).map_err(|_| TxnError::OutOfMemory {
                        len,
                        reason: "larger than 4 GiB".into(),
                    })?,
                    near,
                },
            };
            let reply = self.node.request(primary, record, self.slot(), index)?;
            self.replies_received += 1;
            match reply.code {
                Code::Allocated => (
                    Addr::from_u64(reply.values[0]),
                    reply.values[1],
                    reply.values[2] as usize,
                ),
                Code::AllocFailed => {
                    let reason = match reply.values[0] {
                        alloc_failure::REGION_FULL => format!("{region} is full"),
                        alloc_failure::TOO_LARGE => {
                            format!("the largest object is {} bytes", reply.values[1])
                        }
                        _ => format!("{primary} refused the allocation"),
                    };
                    return Err(TxnError::OutOfMemory { len, reason });
                }
                other => {
                    return Err(TxnError::Protocol {
                        node: primary,
                        reason: format!("ALLOC answered with {other:?}"),
                    });
                }
            }
        };
        let previous = self.changes.insert(
            addr,
            Change {
                kind: EntryKind::Alloc,
                version,
                payload_bytes,
                value: vec![0; len],
            },
        );
        assert!(previous.is_none(), "{addr} was reserved twice");
        Ok(addr)
    }

    /// Frees the object at `addr` (at commit).
    pub fn free(&mut self, addr: Addr) -> Result<(), TxnError> {
        if let Some(change) = self.changes.get(&addr) {
            match change.kind {
                EntryKind::Free => return Err(TxnError::NotFound { addr }),
                EntryKind::Alloc => {
                    // Allocated and freed by this transaction: nobody ever sees it.
                    self.changes.remove(&addr);
                    self.release_reservations(&[addr]);
                    return Ok(());
                }
                EntryKind::Write => {}
            }
        }
        let read = self.read_info(addr)?;
        if read.value.is_none() {
            return Err(TxnError::NotFound { addr });
        }
        let change = Change {
            kind: EntryKind::Free,
            version: read.version,
            payload_bytes: read.payload_bytes,
            value: Vec::new(),
        };
        self.changes.insert(addr, change);
        Ok(())
    }

    /// Whether everything this transaction read is still current (unlocked, same version).
    /// `Db::run` uses it to tell a conflict from a real error when the closure fails.
    pub fn still_valid(&mut self) -> Result<bool, TxnError> {
        let reads: Vec<(Addr, u64)> = self.reads.iter().map(|(a, r)| (*a, r.version)).collect();
        match self.validate(&reads) {
            Ok(()) => Ok(true),
            Err(TxnError::Conflict { .. }) => Ok(false),
            Err(e) => Err(e),
        }
    }

    /// Commits the transaction: `Ok` means it is durable on every replica's log and will not
    /// be lost; `Conflict` means nothing happened and the transaction may be run again.
    pub fn commit(mut self) -> Result<(), TxnError> {
        self.finished = true;
        if self.changes.is_empty() {
            if self.reads.len() <= 1 {
                // A single consistent, unlocked read serializes at that read.
                return Ok(());
            }
            let reads: Vec<(Addr, u64)> = self.reads.iter().map(|(a, r)| (*a, r.version)).collect();
            return self.validate(&reads);
        }
        self.commit_writes()
    }

    /// Gives up the transaction: nothing it did becomes visible.
    pub fn abort(mut self) {
        self.abort_unsent();
    }

    fn abort_unsent(&mut self) {
        if self.finished {
            return;
        }
        self.finished = true;
        self.release_all_reservations();
    }

    /// Hands back every slot this transaction reserved (it will not install them).
    fn release_all_reservations(&self) {
        let reserved: Vec<Addr> = self
            .changes
            .iter()
            .filter(|(_, c)| c.kind == EntryKind::Alloc)
            .map(|(a, _)| *a)
            .collect();
        self.release_reservations(&reserved);
    }

    /// Hands reserved slots back to their primaries (locally, or by a RELEASE record).
    fn release_reservations(&self, addrs: &[Addr]) {
        let mut by_primary: BTreeMap<NodeId, Vec<Addr>> = BTreeMap::new();
        for &addr in addrs {
            if let Some(p) = self.node.config().placement(addr.region()) {
                by_primary.entry(p.primary).or_default().push(addr);
            }
        }
        for (primary, addrs) in by_primary {
            if primary == self.node.node_id() {
                self.node.primary().release(&addrs);
                continue;
            }
            let record = TxnRecord {
                txn: self.id,
                reply: ReplyTo::NONE,
                truncated: Vec::new(),
                body: Body::Release { addrs },
            };
            if let Err(e) = self.node.send_one(primary, record) {
                eprintln!(
                    "acre {}: could not release reservations at {primary}: {e}",
                    self.node.node_id()
                );
            }
        }
    }

    /// Step 3: validates `(addr, version)` pairs (objects read but not written).
    fn validate(&mut self, reads: &[(Addr, u64)]) -> Result<(), TxnError> {
        let mut by_primary: BTreeMap<NodeId, Vec<(Addr, u64)>> = BTreeMap::new();
        for &(addr, version) in reads {
            let (primary, _) = self.node.primary_of(addr)?;
            by_primary.entry(primary).or_default().push((addr, version));
        }
        let mut messages = Vec::new();
        // The first conflict found; VALIDATE messages already sent are still waited for, so
        // no reply arrives after this transaction has given its slot back.
        let mut failure = None;
        for (primary, reads) in by_primary {
            if failure.is_some() {
                break;
            }
            if primary == self.node.node_id() {
                // This node's own primary: validate in place, no message needed.
                if !self.node.primary().validate(&reads) {
                    failure = Some(TxnError::Conflict {
                        addr: reads[0].0,
                        why: "an object read was changed or is locked",
                    });
                }
                continue;
            }
            if reads.len() > T_R {
                let (index, reply) = match self.next_reply() {
                    Ok(next) => next,
                    Err(e) => {
                        failure = Some(e);
                        break;
                    }
                };
                let first = reads[0].0;
                let record = TxnRecord {
                    txn: self.id,
                    reply,
                    truncated: Vec::new(),
                    body: Body::Validate { reads },
                };
                match self.node.send_one(primary, record) {
                    Ok(()) => messages.push((primary, index, first)),
                    Err(e) => failure = Some(e),
                }
                continue;
            }
            let addrs: Vec<Addr> = reads.iter().map(|(a, _)| *a).collect();
            let headers = match self.node.read_headers(primary, &addrs) {
                Ok(headers) => headers,
                Err(e) => {
                    failure = Some(e);
                    break;
                }
            };
            for ((addr, version), header) in reads.iter().zip(headers) {
                if header.is_locked() {
                    failure = Some(TxnError::Conflict {
                        addr: *addr,
                        why: "an object read is locked by a committing transaction",
                    });
                    break;
                }
                if header.version() != *version {
                    failure = Some(TxnError::Conflict {
                        addr: *addr,
                        why: "an object read was changed",
                    });
                    break;
                }
            }
        }
        if messages.is_empty() {
            return failure.map_or(Ok(()), Err);
        }
        let indexes: Vec<usize> = messages.iter().map(|(_, index, _)| *index).collect();
        let seq = self.id.seq;
        let replies = self
            .node
            .replies()
            .wait(self.slot(), seq, &indexes, REPLY_TIMEOUT)
            .map_err(|missing| TxnError::Unavailable {
                node: messages[missing].0,
                reason: format!("no VALIDATE reply within {REPLY_TIMEOUT:?}"),
            })?;
        self.replies_received += replies.len();
        if let Some(failure) = failure {
            return Err(failure);
        }
        for ((primary, _, addr), reply) in messages.iter().zip(replies) {
            match reply.code {
                Code::Valid => {}
                Code::Invalid => {
                    return Err(TxnError::Conflict {
                        addr: *addr,
                        why: "an object read was changed or is locked",
                    });
                }
                other => {
                    return Err(TxnError::Protocol {
                        node: *primary,
                        reason: format!("VALIDATE answered with {other:?}"),
                    });
                }
            }
        }
        Ok(())
    }

    fn commit_writes(&mut self) -> Result<(), TxnError> {
        let config = self.node.config().clone();
        let mut lock_entries: BTreeMap<NodeId, Vec<Entry>> = BTreeMap::new();
        let mut backup_entries: BTreeMap<NodeId, Vec<Entry>> = BTreeMap::new();
        let mut regions = BTreeSet::new();
        for (addr, change) in &self.changes {
            let placement = config
                .placement(addr.region())
                .ok_or(TxnError::NoSuchRegion {
                    addr: *addr,
                    region: addr.region(),
                })?;
            let entry = Entry {
                addr: *addr,
                version: change.version,
                kind: change.kind,
                payload: match change.kind {
                    EntryKind::Free => Vec::new(),
                    EntryKind::Write | EntryKind::Alloc => value::encode(&change.value),
                },
            };
            regions.insert(addr.region());
            for &backup in &placement.backups {
                backup_entries
                    .entry(backup)
                    .or_default()
                    .push(entry.clone());
            }
            lock_entries
                .entry(placement.primary)
                .or_default()
                .push(entry);
        }
        let regions: Vec<RegionId> = regions.into_iter().collect();
        let lock_bodies: BTreeMap<NodeId, Body> = lock_entries
            .into_iter()
            .map(|(node, entries)| {
                (
                    node,
                    Body::Lock {
                        regions: regions.clone(),
                        entries,
                    },
                )
            })
            .collect();
        let backup_bodies: BTreeMap<NodeId, Body> = backup_entries
            .into_iter()
            .map(|(node, entries)| {
                (
                    node,
                    Body::CommitBackup {
                        regions: regions.clone(),
                        entries,
                    },
                )
            })
            .collect();

        // 1. Reserve log space at every participant for every record this commit may write.
        let participants: BTreeSet<NodeId> = lock_bodies
            .keys()
            .chain(backup_bodies.keys())
            .copied()
            .collect();
        let mut reservations: BTreeMap<NodeId, Reservation> = BTreeMap::new();
        for &node in &participants {
            let mut bodies: Vec<&Body> = Vec::new();
            if let Some(lock) = lock_bodies.get(&node) {
                bodies.push(lock);
                bodies.push(&Body::CommitPrimary); // or ABORT: the same size
            }
            if let Some(backup) = backup_bodies.get(&node) {
                bodies.push(backup);
            }
            match self.node.reserve(node, &bodies) {
                Ok(reservation) => {
                    reservations.insert(node, reservation);
                }
                Err(e) => {
                    // Nothing was sent: the transaction's reserved slots go back as they are.
                    self.give_back(reservations);
                    self.release_all_reservations();
                    return Err(e);
                }
            }
        }
        let outcome = self.lock_validate_commit(&lock_bodies, &backup_bodies, &mut reservations);
        if outcome.is_ok() {
            self.node.queue_truncation(self.id, participants);
        }
        self.give_back(reservations);
        outcome
    }

    fn give_back(&self, reservations: BTreeMap<NodeId, Reservation>) {
        for (node, reservation) in reservations {
            self.node.release(node, reservation);
        }
    }

    fn lock_validate_commit(
        &mut self,
        lock_bodies: &BTreeMap<NodeId, Body>,
        backup_bodies: &BTreeMap<NodeId, Body>,
        reservations: &mut BTreeMap<NodeId, Reservation>,
    ) -> Result<(), TxnError> {
        // 2. LOCK at every primary, then collect the votes.
        let mut locks_sent: Vec<(NodeId, usize)> = Vec::new();
        let mut inline_vote = None;
        let mut failure = None;
        for (&primary, body) in lock_bodies {
            let local = primary == self.node.node_id();
            let (index, reply) = if local {
                (usize::MAX, ReplyTo::NONE) // voted inline below
            } else {
                match self.next_reply() {
                    Ok(next) => next,
                    Err(e) => {
                        failure = Some(e);
                        break;
                    }
                }
            };
            let record = TxnRecord {
                txn: self.id,
                reply,
                truncated: Vec::new(),
                body: body.clone(),
            };
            let reservation = reservations.get_mut(&primary).expect("reserved");
            if let Err(e) = self.node.send(primary, reservation, record) {
                failure = Some(e);
                break;
            }
            locks_sent.push((primary, index));
            if local {
                // This node's own primary: the coordinator locks right here, once the LOCK
                // record is in the log (the worker only keeps the record).
                let Body::Lock { entries, .. } = body else {
                    unreachable!("lock bodies are LOCKs")
                };
                inline_vote = Some(self.node.primary().lock(self.id, entries.clone()));
            }
        }
        if failure.is_none() {
            failure = self
                .collect_votes(&locks_sent, lock_bodies, inline_vote)
                .err();
        }
        // 3. VALIDATE what was read but not written.
        if failure.is_none() {
            let reads: Vec<(Addr, u64)> = self
                .reads
                .iter()
                .filter(|(addr, _)| !self.changes.contains_key(addr))
                .map(|(addr, read)| (*addr, read.version))
                .collect();
            failure = self.validate(&reads).err();
        }
        if let Some(error) = failure {
            self.abort_after_lock(&locks_sent, lock_bodies, reservations);
            return Err(error);
        }
        // 4. COMMIT-BACKUP: durable in every backup's log.
        for (backups_done, (&backup, body)) in backup_bodies.iter().enumerate() {
            let record = TxnRecord {
                txn: self.id,
                reply: ReplyTo::NONE,
                truncated: Vec::new(),
                body: body.clone(),
            };
            let reservation = reservations.get_mut(&backup).expect("reserved");
            if let Err(e) = self.node.send(backup, reservation, record) {
                if backups_done == 0 {
                    // No backup holds the transaction yet: it can still abort cleanly.
                    self.abort_after_lock(&locks_sent, lock_bodies, reservations);
                    return Err(e);
                }
                // Some backups hold COMMIT-BACKUP: only recovery may decide now.
                return Err(TxnError::Unavailable {
                    node: backup,
                    reason: format!("{e}; the outcome of {} is left to recovery", self.id),
                });
            }
        }
        // 5. COMMIT-PRIMARY: committed once one primary has acknowledged.
        let mut acknowledged = 0;
        let mut last_error = None;
        for &primary in lock_bodies.keys() {
            let record = TxnRecord {
                txn: self.id,
                reply: ReplyTo::NONE,
                truncated: Vec::new(),
                body: Body::CommitPrimary,
            };
            let reservation = reservations.get_mut(&primary).expect("reserved");
            match self.node.send(primary, reservation, record) {
                Ok(()) => {
                    acknowledged += 1;
                    if primary == self.node.node_id() {
                        self.node
                            .primary()
                            .commit(self.id)
                            .expect("this coordinator's own LOCK succeeded");
                    }
                }
                Err(e) => last_error = Some((primary, e)),
            }
        }
        match last_error {
            None => Ok(()),
            Some((primary, e)) if acknowledged > 0 => {
                // Committed; the primary that missed COMMIT-PRIMARY is recovery's business
                // (its LOCK and the backups' COMMIT-BACKUP decide the transaction).
                eprintln!(
                    "acre {}: COMMIT-PRIMARY of committed {} did not reach {primary}: {e}",
                    self.node.node_id(),
                    self.id
                );
                Err(TxnError::Unavailable {
                    node: primary,
                    reason: format!(
                        "{} committed but {primary} holds its locks until recovery",
                        self.id
                    ),
                })
            }
            Some((primary, e)) => Err(TxnError::Unavailable {
                node: primary,
                reason: format!("{e}; the outcome of {} is left to recovery", self.id),
            }),
        }
    }

    /// Waits for the LOCK votes of the remote primaries; `inline_vote` is this node's own.
    fn collect_votes(
        &mut self,
        locks_sent: &[(NodeId, usize)],
        lock_bodies: &BTreeMap<NodeId, Body>,
        inline_vote: Option<bool>,
    ) -> Result<(), TxnError> {
        let me = self.node.node_id();
        let remote: Vec<(NodeId, usize)> = locks_sent
            .iter()
            .copied()
            .filter(|(primary, _)| *primary != me)
            .collect();
        let indexes: Vec<usize> = remote.iter().map(|(_, index)| *index).collect();
        let mut votes: Vec<(NodeId, Code)> = self
            .node
            .replies()
            .wait(self.slot(), self.id.seq, &indexes, REPLY_TIMEOUT)
            .map_err(|missing| TxnError::Unavailable {
                node: remote[missing].0,
                reason: format!("no LOCK vote within {REPLY_TIMEOUT:?}"),
            })?
            .into_iter()
            .zip(&remote)
            .map(|(vote, (primary, _))| (*primary, vote.code))
            .collect();
        self.replies_received += remote.len();
        if let Some(locked) = inline_vote {
            votes.push((me, if locked { Code::Locked } else { Code::Conflict }));
        }
        for (primary, code) in votes {
            match code {
                Code::Locked => {}
                Code::Conflict => {
                    let addr = match &lock_bodies[&primary] {
                        Body::Lock { entries, .. } => entries[0].addr,
                        _ => unreachable!("lock bodies are LOCKs"),
                    };
                    return Err(TxnError::Conflict {
                        addr,
                        why: "an object to write changed or is locked",
                    });
                }
                other => {
                    return Err(TxnError::Protocol {
                        node: primary,
                        reason: format!("LOCK answered with {other:?}"),
                    });
                }
            }
        }
        Ok(())
    }

    /// Sends ABORT to every primary that got LOCK (it unlocks and releases the reservations
    /// listed there) and releases the reservations at primaries that did not.
    fn abort_after_lock(
        &mut self,
        locks_sent: &[(NodeId, usize)],
        lock_bodies: &BTreeMap<NodeId, Body>,
        reservations: &mut BTreeMap<NodeId, Reservation>,
    ) {
        let sent: BTreeSet<NodeId> = locks_sent.iter().map(|(node, _)| *node).collect();
        // A LOCK sent but not voted on yet (a later send failed) still gets its ABORT: the
        // same ring delivers it after the LOCK. Its vote may arrive late; the slot is then
        // quarantined when the transaction ends (see Drop).
        for &primary in &sent {
            let record = TxnRecord {
                txn: self.id,
                reply: ReplyTo::NONE,
                truncated: Vec::new(),
                body: Body::Abort,
            };
            let reservation = reservations.get_mut(&primary).expect("reserved");
            if let Err(e) = self.node.send(primary, reservation, record) {
                eprintln!(
                    "acre {}: ABORT of {} did not reach {primary}: {e}; its locks wait for \
                     recovery",
                    self.node.node_id(),
                    self.id
                );
            }
            if primary == self.node.node_id() {
                self.node.primary().abort(self.id);
            }
        }
        let unsent: Vec<Addr> = lock_bodies
            .iter()
            .filter(|(node, _)| !sent.contains(node))
            .flat_map(|(_, body)| match body {
                Body::Lock { entries, .. } => entries
                    .iter()
                    .filter(|e| e.kind == EntryKind::Alloc)
                    .map(|e| e.addr)
                    .collect::<Vec<_>>(),
                _ => Vec::new(),
            })
            .collect();
        self.release_reservations(&unsent);
    }
}

impl Drop for Txn {
    fn drop(&mut self) {
        self.abort_unsent();
        if let Some(lease) = self.lease.take() {
            let outstanding = self.replies_received < self.next_reply_index;
            self.node.replies().release(lease, outstanding);
        }
    }
}

fn check_fits(addr: Addr, len: usize, payload_bytes: usize) -> Result<(), TxnError> {
    let capacity = value::capacity(payload_bytes);
    if len > capacity {
        return Err(TxnError::TooLarge {
            addr,
            len,
            capacity,
        });
    }
    Ok(())
}

fn out_of_memory(len: usize, error: AllocError) -> TxnError {
    TxnError::OutOfMemory {
        len,
        reason: error.to_string(),
    }
}
