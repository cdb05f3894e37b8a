//! A transaction's execution (docs/protocol.md#execution): one-sided reads with their versions
//! recorded; writes, allocations and frees buffered until [`Txn::commit`] (defined with the
//! commit protocol, in `commit/`, which depends on this module and not the other way round).

use crate::alloc::ReserveError;
use crate::config::{Configuration, Placement};
use crate::error::TxnError;
use crate::read::Found;
use crate::record::{Body, EntryKind, ReplyTo, TxnId, TxnRecord};
use crate::reply::{Code, REPLIES_PER_TXN_MAX, SlotLease, alloc_failure};
use crate::txn_node::{REPLY_TIMEOUT, TxnNode};
use crate::value;
use acre_engine::addr::{Addr, NodeId, RegionId};
use acre_engine::slab::AllocError;
use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;

/// What the transaction knows of an object it read.
#[derive(Clone, Debug)]
pub(crate) struct ReadInfo {
    pub(crate) version: u64,
    payload_bytes: usize,
    /// The value, or `None` if no object was allocated there.
    value: Option<Vec<u8>>,
}

/// A change the transaction will make at commit.
#[derive(Clone, Debug)]
pub(crate) struct Change {
    pub(crate) kind: EntryKind,
    pub(crate) version: u64,
    pub(crate) payload_bytes: usize,
    pub(crate) value: Vec<u8>,
}

/// One transaction. Reads are only trustworthy once `commit` succeeds: a transaction that will
/// abort may have seen objects from different moments (never a torn object).
pub struct Txn {
    pub(crate) node: Arc<TxnNode>,
    /// The configuration the transaction began in; it commits only if the node is still in it
    /// at the commit's decision.
    pub(crate) config: Arc<Configuration>,
    lease: Option<SlotLease>,
    pub(crate) id: TxnId,
    pub(crate) reads: BTreeMap<Addr, ReadInfo>,
    pub(crate) changes: BTreeMap<Addr, Change>,
    /// Blocks found unclaimed by reads (of addresses that held no slot yet).
    pub(crate) unclaimed_blocks: BTreeSet<Addr>,
    /// Primaries whose reply to an ALLOC never came: each may hold a slot for this transaction
    /// that it must be told to hand back when the transaction ends.
    alloc_uncertain: BTreeSet<NodeId>,
    next_reply_index: usize,
    /// Replies consumed so far; fewer than `next_reply_index` means some may still arrive.
    replies_received: usize,
    /// Committed or aborted: nothing more may happen to it.
    pub(crate) finished: bool,
}

impl Txn {
    pub(crate) fn begin(node: Arc<TxnNode>) -> Result<Txn, TxnError> {
        let lease = node.replies().acquire().ok_or(TxnError::Busy {
            node: node.node_id(),
            slots: crate::reply::SLOTS_MAX,
        })?;
        let config = node.config();
        let id = TxnId {
            config: config.id,
            node: node.node_id(),
            thread: lease.slot,
            seq: lease.seq,
        };
        Ok(Txn {
            node,
            config,
            lease: Some(lease),
            id,
            reads: BTreeMap::new(),
            changes: BTreeMap::new(),
            unclaimed_blocks: BTreeSet::new(),
            alloc_uncertain: BTreeSet::new(),
            next_reply_index: 0,
            replies_received: 0,
            finished: false,
        })
    }

    pub fn id(&self) -> TxnId {
        self.id
    }

    /// This transaction's slot in its node's reply area.
    pub(crate) fn slot(&self) -> u16 {
        self.lease
            .as_ref()
            .expect("a live transaction has a slot")
            .slot
    }

    /// Where the next reply to this transaction goes, and its index in the slot.
    pub(crate) fn next_reply(&mut self) -> Result<(usize, ReplyTo), TxnError> {
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

    /// Sends a request whose answer comes to this transaction's reply slot, and returns where:
    /// the log space at `target` is reserved first, so a request that never left (no room, too
    /// large) takes no reply index and cannot make the slot wait for a late answer.
    pub(crate) fn send_request(&mut self, target: NodeId, body: Body) -> Result<usize, TxnError> {
        let node = self.node.clone();
        let links = node.links();
        let mut reservation = links.reserve(target, &[&body])?;
        let sent = self.next_reply().and_then(|(index, reply)| {
            let record = TxnRecord {
                txn: self.id,
                reply,
                truncated: Vec::new(),
                body,
            };
            links.send(target, &mut reservation, record).map(|_| index)
        });
        links.release(target, reservation);
        sent
    }

    /// `count` more replies were read: they can no longer arrive late.
    pub(crate) fn replies_consumed(&mut self, count: usize) {
        self.replies_received += count;
        assert!(
            self.replies_received <= self.next_reply_index,
            "replies_received={} next_reply_index={}",
            self.replies_received,
            self.next_reply_index
        );
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

    /// Reads the objects at `addrs`, in that order, with one batch of READs per primary all in
    /// flight together: for a transaction that reads many objects (an audit, a scan), one
    /// round trip instead of one per object. The same as calling [`Txn::read`] on each (the
    /// first error is returned, and what was read before it stays recorded).
    pub fn read_many(&mut self, addrs: &[Addr]) -> Result<Vec<Vec<u8>>, TxnError> {
        let unread: Vec<Addr> = addrs
            .iter()
            .filter(|addr| !self.changes.contains_key(addr) && !self.reads.contains_key(addr))
            .copied()
            .collect::<BTreeSet<Addr>>()
            .into_iter()
            .collect();
        let found = self.node.reader().read_many(&self.config, &unread);
        let mut first_error = None;
        for (addr, found) in unread.into_iter().zip(found) {
            if let Err(e) = found
                .map_err(|e| self.newer_region(e))
                .and_then(|found| self.record_read(addr, found))
            {
                first_error.get_or_insert(e);
            }
        }
        if let Some(e) = first_error {
            return Err(e);
        }
        addrs.iter().map(|&addr| self.read(addr)).collect()
    }

    /// `error`, unless it is an address in a region this transaction's configuration does not
    /// know while the node has a newer configuration: another transaction of this client
    /// created the region's first objects in it (the CM added the region) and this one, begun
    /// before, found their address. That is a configuration change to run again in, not a bad
    /// address.
    fn newer_region(&self, error: TxnError) -> TxnError {
        let current = self.node.config_id();
        match error {
            TxnError::NoSuchRegion { .. } if current > self.config.id => {
                TxnError::ConfigurationChanged {
                    began: self.config.id,
                    current,
                }
            }
            other => other,
        }
    }

    /// The recorded read of `addr`, reading it now if this transaction has not.
    fn read_info(&mut self, addr: Addr) -> Result<&ReadInfo, TxnError> {
        if !self.reads.contains_key(&addr) {
            let found = self
                .node
                .reader()
                .read(&self.config, addr)
                .map_err(|e| self.newer_region(e))?;
            self.record_read(addr, found)?;
        }
        Ok(&self.reads[&addr])
    }

    /// Records what a read found at `addr` in the read set (validated at commit); `NotFound`
    /// where there is no slot.
    fn record_read(&mut self, addr: Addr, found: Found) -> Result<(), TxnError> {
        let slot = match found {
            Found::Slot(slot) => slot,
            Found::NeverSlot => return Err(TxnError::NotFound { addr }),
            Found::UnclaimedBlock { block } => {
                // A later allocation may put an object here: validated at commit.
                self.unclaimed_blocks.insert(block);
                return Err(TxnError::NotFound { addr });
            }
        };
        let value = if slot.header.is_allocated() {
            let value = value::decode(&slot.payload).map_err(|reason| TxnError::Protocol {
                node: self.node.node_id(),
                reason: format!("object at {addr}: {reason}"),
            })?;
            Some(value.to_vec())
        } else {
            None
        };
        let previous = self.reads.insert(
            addr,
            ReadInfo {
                version: slot.header.version(),
                payload_bytes: slot.payload.len(),
                value,
            },
        );
        assert!(previous.is_none(), "{}: {addr} read twice", self.id);
        Ok(())
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
    /// when there is one. It exists for others once the transaction commits. When every
    /// region is full and the node has a [`Grower`](crate::txn_node::Grower) (a client of a
    /// cluster with a configuration manager), it asks for a new region and fails with
    /// [`TxnError::Reconfiguring`]: `Db::run` runs the transaction again once the configuration
    /// with the new region is adopted.
    pub fn alloc(&mut self, len: usize) -> Result<Addr, TxnError> {
        let me = self.node.node_id();
        let serving: Vec<&Placement> = self
            .config
            .regions
            .iter()
            .filter(|p| p.state.is_active())
            .collect();
        let local: Vec<RegionId> = serving
            .iter()
            .filter(|p| p.primary == me)
            .map(|p| p.region)
            .collect();
        let regions: Vec<RegionId> = if local.is_empty() {
            serving.iter().map(|p| p.region).collect()
        } else {
            local
        };
        if regions.is_empty() {
            return Err(TxnError::OutOfMemory {
                len,
                reason: format!("no region serves in configuration {}", self.config.id),
            });
        }
        let start = (self.id.seq as usize + self.changes.len()) % regions.len();
        let mut recovering = None;
        for k in 0..regions.len() {
            match self.alloc_in(regions[(start + k) % regions.len()], len, None) {
                Err(TxnError::RegionFull { .. }) => {}
                Err(e @ TxnError::AllocatorRecovering { .. }) => recovering = Some(e),
                other => return other,
            }
        }
        // Room may appear there within milliseconds: no new region for it.
        if let Some(e) = recovering {
            return Err(e);
        }
        // Every region tried is full.
        let full = format!(
            "every region that serves in configuration {} is full ({} regions of {} bytes)",
            self.config.id,
            regions.len(),
            self.config.region_bytes
        );
        match self.node.grower() {
            None => Err(TxnError::OutOfMemory { len, reason: full }),
            // Retried (Db::run does) once the configuration with the new region is adopted.
            Some(grow) => match grow(&self.config) {
                Ok(()) => Err(TxnError::Reconfiguring {
                    config: self.config.id,
                }),
                Err(reason) => Err(TxnError::OutOfMemory {
                    len,
                    reason: format!("{full}, and no region was added: {reason}"),
                }),
            },
        }
    }

    /// Allocates an object holding `len` zero bytes in the region of `near`, in the same block
    /// when it has room (objects used together share pages). Fails with
    /// [`TxnError::RegionFull`] when that region has no room.
    pub fn alloc_near(&mut self, len: usize, near: Addr) -> Result<Addr, TxnError> {
        self.alloc_in(near.region(), len, Some(near))
    }

    /// As [`Txn::alloc_near`] when the region of `near` has room, else as [`Txn::alloc`]
    /// (another region, or a new one): for objects that are best near `near` but must exist
    /// anyway (an index's nodes, a table's rows).
    pub fn alloc_preferably_near(&mut self, len: usize, near: Addr) -> Result<Addr, TxnError> {
        match self.alloc_near(len, near) {
            Err(TxnError::RegionFull { .. } | TxnError::AllocatorRecovering { .. }) => {
                self.alloc(len)
            }
            other => other,
        }
    }

    fn alloc_in(
        &mut self,
        region: RegionId,
        len: usize,
        near: Option<Addr>,
    ) -> Result<Addr, TxnError> {
        let placement = self
            .config
            .serving(near.unwrap_or(Addr::new(region, 0)))
            .map_err(|e| self.newer_region(e))?;
        let primary = placement.primary;
        let payload_len = value::LEN_BYTES + len;
        let (addr, version, payload_bytes) = if primary == self.node.node_id() {
            let reserved = self
                .node
                .reserve_here(region, payload_len, near)
                .map_err(|e| reserve_failed(len, e))?;
            (reserved.addr, reserved.version, reserved.payload_bytes)
        } else {
            self.alloc_remote(primary, region, len, near)?
        };
        // A slot this transaction saw free (it freed its own allocation there and read it
        // again, say) is no conflict: nothing it saw there is gone, and the slot is reserved
        // for it until it commits, so no other transaction puts an object there meanwhile.
        let saw_object = self
            .reads
            .get(&addr)
            .is_some_and(|read| read.value.is_some());
        if self.changes.contains_key(&addr) || saw_object {
            // The primary handed out the slot of an object this transaction read or wrote:
            // another transaction freed it meanwhile, so what this one saw there is gone and
            // it cannot commit. Give the slot back and say so (its commit would be refused).
            self.release_reservations(&[addr]);
            return Err(TxnError::Conflict {
                addr,
                why: "the slot allocated is an object this transaction used, freed meanwhile",
            });
        }
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

    /// Reserves a slot at `primary` by an ALLOC request its worker answers: the slot's
    /// address, its version while free, and its payload bytes.
    fn alloc_remote(
        &mut self,
        primary: NodeId,
        region: RegionId,
        len: usize,
        near: Option<Addr>,
    ) -> Result<(Addr, u64, usize), TxnError> {
        let payload_len =
            u32::try_from(value::LEN_BYTES + len).map_err(|_| TxnError::OutOfMemory {
                len,
                reason: "larger than 4 GiB".into(),
            })?;
        let body = Body::Alloc {
            region,
            len: payload_len,
            near,
        };
        let index = self.send_request(primary, body).inspect_err(|_| {
            // An append that failed may still have arrived, and the primary reserved a slot.
            self.alloc_uncertain.insert(primary);
        })?;
        let reply = self
            .node
            .replies()
            .wait(self.slot(), self.id.seq, &[index], REPLY_TIMEOUT)
            .map(|mut replies| replies.remove(0))
            .map_err(|_| {
                // The primary may have reserved a slot this transaction never learns of.
                self.alloc_uncertain.insert(primary);
                TxnError::Unavailable {
                    node: primary,
                    reason: format!("no ALLOC reply within {REPLY_TIMEOUT:?}"),
                }
            })?;
        self.replies_consumed(1);
        match reply.code {
            Code::Allocated => Ok((
                Addr::from_u64(reply.values[0]),
                reply.values[1],
                reply.values[2] as usize,
            )),
            Code::AllocFailed => {
                let reason = match reply.values[0] {
                    alloc_failure::REGION_FULL => return Err(TxnError::RegionFull { region, len }),
                    alloc_failure::RECOVERING => {
                        return Err(TxnError::AllocatorRecovering { region });
                    }
                    alloc_failure::TOO_LARGE => {
                        format!("the largest object is {} bytes", reply.values[1])
                    }
                    // The primary holds no such region (yet): it has not adopted the
                    // configuration this one did (a client adopts one while it is being
                    // distributed), or it adopted a newer one. Run again.
                    alloc_failure::NOT_PRIMARY => {
                        return Err(TxnError::Reconfiguring {
                            config: reply.values[1],
                        });
                    }
                    alloc_failure::RECONFIGURING => {
                        return Err(TxnError::Reconfiguring {
                            config: reply.values[1],
                        });
                    }
                    alloc_failure::UNREPLICATED => {
                        return Err(TxnError::Unavailable {
                            node: NodeId(reply.values[1] as u16),
                            reason: format!(
                                "{primary} could not copy a new block's header to this backup"
                            ),
                        });
                    }
                    _ => format!("{primary} refused the allocation"),
                };
                Err(TxnError::OutOfMemory { len, reason })
            }
            other => Err(TxnError::Protocol {
                node: primary,
                reason: format!("ALLOC answered with {other:?}"),
            }),
        }
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
        self.release_uncertain_allocations(&BTreeSet::new());
    }

    /// Sends ABORT to every primary whose ALLOC reply never came, except those in `locked`
    /// (a LOCK there handed back what the transaction did not use): the primary hands back
    /// whatever it reserved for this transaction.
    pub(crate) fn release_uncertain_allocations(&self, locked: &BTreeSet<NodeId>) {
        for &primary in self.alloc_uncertain.difference(locked) {
            let record = TxnRecord {
                txn: self.id,
                reply: ReplyTo::NONE,
                truncated: Vec::new(),
                body: Body::Abort,
            };
            if let Err(e) = self.node.links().send_one(primary, record) {
                // The slot stays reserved (unusable, never visible) until recovery.
                tracing::warn!(txn = %self.id, %primary, "could not release an ALLOC: {e}");
            }
        }
    }

    /// Hands back every slot this transaction reserved (it will not install them).
    pub(crate) fn release_all_reservations(&self) {
        let reserved: Vec<Addr> = self
            .changes
            .iter()
            .filter(|(_, c)| c.kind == EntryKind::Alloc)
            .map(|(a, _)| *a)
            .collect();
        self.release_reservations(&reserved);
    }

    /// Hands reserved slots back to their primaries (locally, or by a RELEASE record).
    pub(crate) fn release_reservations(&self, addrs: &[Addr]) {
        let mut by_primary: BTreeMap<NodeId, Vec<Addr>> = BTreeMap::new();
        for &addr in addrs {
            if let Some(p) = self.config.placement(addr.region()) {
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
            if let Err(e) = self.node.links().send_one(primary, record) {
                // The slots stay reserved (unusable, never visible) until recovery.
                tracing::warn!(txn = %self.id, %primary, "could not release reservations: {e}");
            }
        }
    }
}

/// Transactions start from their node; defined here so that `txn_node` knows nothing of them.
impl TxnNode {
    /// Starts a transaction coordinated by this node.
    pub fn begin(self: &Arc<Self>) -> Result<Txn, TxnError> {
        Txn::begin(self.clone())
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

fn reserve_failed(len: usize, error: ReserveError) -> TxnError {
    match error {
        ReserveError::Alloc(AllocError::RegionFull { region, .. }) => {
            TxnError::RegionFull { region, len }
        }
        ReserveError::Alloc(AllocError::Recovering { region }) => {
            TxnError::AllocatorRecovering { region }
        }
        ReserveError::Alloc(error) => TxnError::OutOfMemory {
            len,
            reason: error.to_string(),
        },
        ReserveError::Unreplicated { backup, .. } => TxnError::Unavailable {
            node: backup,
            reason: error.to_string(),
        },
        ReserveError::Reconfiguring { config, .. } => TxnError::Reconfiguring { config },
    }
}
