//! The transactional side of one node: its configuration, fabric, the links (log rings) it
//! writes at every other node, its reply area, and the primary state of the regions it holds.
//! Coordinators ([`crate::Txn`]) run on application threads against a `TxnNode`; the node's
//! worker (acre-replication) serves the records that arrive in its own rings.

use crate::config::Configuration;
use crate::directory::Directory;
use crate::error::TxnError;
use crate::primary::Primary;
use crate::record::{self, Body, ReplyTo, TxnId, TxnRecord};
use crate::reply::{Code, ReplyArea, reply_ops};
use crate::txn::Txn;
use acre_engine::addr::{Addr, NodeId, RegionId};
use acre_engine::channel::{ChannelError, Outbox, ring_area_id};
use acre_engine::fabric::{Completion, Fabric, Op, OpError};
use acre_engine::object::{self, Header};
use acre_engine::slab::{self, AllocError, BLOCK_HEADER_BYTES, Reserved};
use acre_nvm_log::{LogError, Reservation};
use std::collections::HashMap;
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant};

/// Truncations one record carries at most.
pub const PIGGYBACK_MAX: usize = 32;
/// Pending truncations are sent on their own once the oldest has waited this long.
pub const TRUNCATE_FLUSH_AFTER: Duration = Duration::from_millis(2);
/// How long a coordinator waits for a participant's reply.
pub const REPLY_TIMEOUT: Duration = Duration::from_secs(5);
/// Times a reservation is retried while a log is full (with backoff) before giving up.
pub const RESERVE_ATTEMPTS_MAX: u32 = 50;
/// One-sided reads of an object that is locked or torn before the read reports a conflict.
pub const READ_ATTEMPTS_MAX: u32 = 200;

/// The ring this node writes at one receiver, and the truncations waiting to ride on it.
pub struct Link {
    outbox: Outbox,
    truncate_pending: Vec<TxnId>,
    pending_since: Option<Instant>,
}

/// A consistent read of an object's slot.
#[derive(Clone, Debug)]
pub struct SlotRead {
    pub header: Header,
    /// The whole payload of the slot.
    pub payload: Vec<u8>,
}

/// One node's transactional state.
pub struct TxnNode {
    node: NodeId,
    config: Arc<Configuration>,
    fabric: Arc<Fabric>,
    directory: Directory,
    links: RwLock<HashMap<NodeId, Arc<Mutex<Link>>>>,
    replies: ReplyArea,
    primary: Primary,
    /// Slot size of each claimed block seen so far: `(region, block index) -> slot bytes`.
    /// A block keeps its class for the life of the region, so entries never go stale.
    slot_bytes: RwLock<HashMap<(RegionId, u32), u64>>,
}

fn unavailable(node: NodeId, error: impl std::fmt::Display) -> TxnError {
    TxnError::Unavailable {
        node,
        reason: error.to_string(),
    }
}

fn op_error(node: NodeId, error: OpError) -> TxnError {
    match error {
        OpError::Access(access) => TxnError::Protocol {
            node,
            reason: access.to_string(),
        },
        other => unavailable(node, other),
    }
}

fn channel_error(node: NodeId, error: ChannelError) -> TxnError {
    match error {
        ChannelError::Log(LogError::Full { .. }) => TxnError::LogFull { node },
        ChannelError::Log(LogError::TooLarge { len, max }) => TxnError::TxnTooLarge {
            reason: format!(
                "its record for {node} would be {len} bytes, and a log record holds at most \
                 {max}: split the transaction or use larger rings"
            ),
        },
        ChannelError::Op(op) => op_error(node, op),
        other => unavailable(node, other),
    }
}

impl TxnNode {
    pub fn new(
        config: Arc<Configuration>,
        fabric: Arc<Fabric>,
        directory: Directory,
        replies: ReplyArea,
        primary: Primary,
    ) -> TxnNode {
        TxnNode {
            node: fabric.node_id(),
            config,
            fabric,
            directory,
            links: RwLock::new(HashMap::new()),
            replies,
            primary,
            slot_bytes: RwLock::new(HashMap::new()),
        }
    }

    pub fn node_id(&self) -> NodeId {
        self.node
    }

    pub fn config(&self) -> &Arc<Configuration> {
        &self.config
    }

    pub fn fabric(&self) -> &Arc<Fabric> {
        &self.fabric
    }

    pub fn directory(&self) -> &Directory {
        &self.directory
    }

    pub fn replies(&self) -> &ReplyArea {
        &self.replies
    }

    pub fn primary(&self) -> &Primary {
        &self.primary
    }

    /// Starts a transaction coordinated by this node.
    pub fn begin(self: &Arc<Self>) -> Result<Txn, TxnError> {
        Txn::begin(self.clone())
    }

    fn link(&self, target: NodeId) -> Result<Arc<Mutex<Link>>, TxnError> {
        if let Some(link) = self
            .links
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .get(&target)
        {
            return Ok(link.clone());
        }
        let (key, bytes) = self
            .directory
            .lookup(&self.fabric, target, ring_area_id(self.node))?;
        let outbox = Outbox::attach(&self.fabric, target, key, bytes)
            .map_err(|e| channel_error(target, e))?;
        let mut links = self.links.write().unwrap_or_else(|p| p.into_inner());
        Ok(links
            .entry(target)
            .or_insert_with(|| {
                Arc::new(Mutex::new(Link {
                    outbox,
                    truncate_pending: Vec::new(),
                    pending_since: None,
                }))
            })
            .clone())
    }

    /// Reserves room at `target` for records with these bodies, each with a full piggyback of
    /// truncations, keeping room for one TRUNCATE record so truncation can always proceed.
    /// Retries with backoff while the log is full.
    pub fn reserve(&self, target: NodeId, bodies: &[&Body]) -> Result<Reservation, TxnError> {
        let lens: Vec<usize> = bodies
            .iter()
            .map(|body| record::encoded_bytes(PIGGYBACK_MAX, body))
            .collect();
        let mut with_margin = lens.clone();
        with_margin.push(record::encoded_bytes(PIGGYBACK_MAX, &Body::Truncate));
        let link = self.link(target)?;
        for attempt in 0..RESERVE_ATTEMPTS_MAX {
            let outcome = {
                let mut link = link.lock().unwrap_or_else(|p| p.into_inner());
                // Reserving with the margin proves the room; the margin itself stays free.
                match link.outbox.reserve(&self.fabric, &with_margin) {
                    Ok(probe) => {
                        link.outbox.release(probe);
                        link.outbox.reserve(&self.fabric, &lens)
                    }
                    Err(e) => Err(e),
                }
            };
            match outcome {
                Ok(reservation) => return Ok(reservation),
                Err(ChannelError::Log(LogError::Full { .. })) => {
                    // Our own pending truncations may be what keeps the log full, or the
                    // receiver has not been woken for records that did not ask for it.
                    self.flush_link(target, &link)?;
                    let _ = link
                        .lock()
                        .unwrap_or_else(|p| p.into_inner())
                        .outbox
                        .wake(&self.fabric);
                    backoff(attempt);
                }
                Err(e) => return Err(channel_error(target, e)),
            }
        }
        Err(TxnError::LogFull { node: target })
    }

    /// Gives back what is left of a reservation at `target`.
    pub fn release(&self, target: NodeId, reservation: Reservation) {
        match self.link(target) {
            Ok(link) => link
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .outbox
                .release(reservation),
            Err(_) => panic!("released a reservation at {target} without a link"),
        }
    }

    /// Appends `record` at `target` inside `reservation`, with pending truncations riding on
    /// it; returns once the record is durable in the target's log.
    pub fn send(
        &self,
        target: NodeId,
        reservation: &mut Reservation,
        mut record: TxnRecord,
    ) -> Result<(), TxnError> {
        let link = self.link(target)?;
        let mut link = link.lock().unwrap_or_else(|p| p.into_inner());
        let take = link.truncate_pending.len().min(PIGGYBACK_MAX);
        record.truncated = link.truncate_pending[..take].to_vec();
        let payload = record.encode();
        // A backup's CPU is not on the commit path: its COMMIT-BACKUP waits for the next wake-up.
        let wake = !matches!(record.body, Body::CommitBackup { .. });
        link.outbox
            .append_reserved(
                &self.fabric,
                reservation,
                &[(record.kind(), &payload)],
                wake,
            )
            .map_err(|e| channel_error(target, e))?;
        link.truncate_pending.drain(..take);
        if link.truncate_pending.is_empty() {
            link.pending_since = None;
        }
        Ok(())
    }

    /// Sends one record with a reservation of its own.
    pub fn send_one(&self, target: NodeId, record: TxnRecord) -> Result<(), TxnError> {
        let mut reservation = self.reserve(target, &[&record.body])?;
        let outcome = self.send(target, &mut reservation, record);
        self.release(target, reservation);
        outcome
    }

    /// Answers a coordinator on `to_node` (fire and forget: a lost reply becomes the
    /// coordinator's timeout).
    pub fn reply(&self, to_node: NodeId, to: ReplyTo, seq: u64, code: Code, values: [u64; 3]) {
        let deliver = || {
            self.fabric
                .execute(to_node, reply_ops(to, seq, code, values))
                .into_iter()
                .find_map(Result::err)
        };
        let Some(first) = deliver() else { return };
        // The coordinator's node may have restarted (a client process): look it up afresh.
        self.fabric.forget_peer(to_node);
        self.directory.forget(to_node);
        let _ = self
            .directory
            .lookup(&self.fabric, to_node, crate::reply::REPLY_AREA_ID);
        if let Some(e) = deliver() {
            eprintln!(
                "acre {}: reply to {to_node} lost: {first}; then {e}",
                self.node
            );
        }
    }

    /// Queues the truncation of `txn` at each of `nodes`; it rides on the next record sent
    /// there, or goes on its own after [`TRUNCATE_FLUSH_AFTER`].
    pub fn queue_truncation(&self, txn: TxnId, nodes: impl IntoIterator<Item = NodeId>) {
        let mut first = false;
        for node in nodes {
            let Ok(link) = self.link(node) else { continue };
            let mut link = link.lock().unwrap_or_else(|p| p.into_inner());
            if link.truncate_pending.is_empty() {
                link.pending_since = Some(Instant::now());
                first = true;
            }
            link.truncate_pending.push(txn);
        }
        if first {
            // Wake this node's worker so it arms its flush timer.
            self.fabric.memory().doorbell().ring();
        }
    }

    /// Whether any truncation waits to be sent.
    pub fn has_pending_truncations(&self) -> bool {
        self.links
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .values()
            .any(|link| {
                !link
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .truncate_pending
                    .is_empty()
            })
    }

    /// Sends TRUNCATE records for truncations that have waited at least `older_than`.
    pub fn flush_truncations(&self, older_than: Duration) -> Result<(), TxnError> {
        let links: Vec<(NodeId, Arc<Mutex<Link>>)> = self
            .links
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .iter()
            .map(|(node, link)| (*node, link.clone()))
            .collect();
        let now = Instant::now();
        for (node, link) in links {
            let due = link
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .pending_since
                .is_some_and(|since| now.duration_since(since) >= older_than);
            if due {
                self.flush_link(node, &link)?;
            }
        }
        Ok(())
    }

    /// Sends every pending truncation of one link in TRUNCATE records (without the reserve
    /// margin, which exists for exactly this).
    fn flush_link(&self, node: NodeId, link: &Mutex<Link>) -> Result<(), TxnError> {
        let mut link = link.lock().unwrap_or_else(|p| p.into_inner());
        while !link.truncate_pending.is_empty() {
            let take = link.truncate_pending.len().min(PIGGYBACK_MAX);
            let record = TxnRecord {
                txn: self.system_txn(),
                reply: ReplyTo::NONE,
                truncated: link.truncate_pending[..take].to_vec(),
                body: Body::Truncate,
            };
            let payload = record.encode();
            match link
                .outbox
                .send_batch(&self.fabric, &[(record.kind(), &payload)])
            {
                Ok(()) => {
                    link.truncate_pending.drain(..take);
                }
                // Full even for a TRUNCATE: the receiver has yet to catch up; try later.
                Err(ChannelError::Log(LogError::Full { .. })) => return Ok(()),
                Err(e) => return Err(channel_error(node, e)),
            }
        }
        link.pending_since = None;
        Ok(())
    }

    /// The id that records not belonging to a transaction carry.
    fn system_txn(&self) -> TxnId {
        TxnId {
            config: self.config.id,
            node: self.node,
            thread: u16::MAX,
            seq: 0,
        }
    }

    /// The primary of the region `addr` is in, and the access key of its copy there.
    pub fn primary_of(
        &self,
        addr: Addr,
    ) -> Result<(NodeId, acre_engine::region::AccessKey), TxnError> {
        let region = addr.region();
        let placement = self
            .config
            .placement(region)
            .ok_or(TxnError::NoSuchRegion { addr, region })?;
        let (key, _) = self
            .directory
            .lookup(&self.fabric, placement.primary, region)?;
        Ok((placement.primary, key))
    }

    /// The slot size of the object at `addr` (from its block header, read once per block), or
    /// `NotFound` when `addr` is not the start of a slot.
    fn slot_bytes_at(
        &self,
        primary: NodeId,
        key: acre_engine::region::AccessKey,
        addr: Addr,
    ) -> Result<u64, TxnError> {
        let block_bytes = self.config.block_bytes;
        let block_index = (addr.offset() as u64 / block_bytes) as u32;
        let cached = self
            .slot_bytes
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .get(&(addr.region(), block_index))
            .copied();
        let slot_bytes = match cached {
            Some(slot_bytes) => slot_bytes,
            None => {
                let block = Addr::new(addr.region(), (block_index as u64 * block_bytes) as u32);
                if block.offset() as u64 + block_bytes > self.config.region_bytes {
                    return Err(TxnError::NotFound { addr });
                }
                let header = self
                    .fabric
                    .read(primary, block, key, BLOCK_HEADER_BYTES as u32)
                    .map_err(|e| op_error(primary, e))?;
                let slot_bytes = slab::block_slot_bytes(&header, block_bytes)
                    .ok_or(TxnError::NotFound { addr })?;
                self.slot_bytes
                    .write()
                    .unwrap_or_else(|p| p.into_inner())
                    .insert((addr.region(), block_index), slot_bytes);
                slot_bytes
            }
        };
        let in_block = addr.offset() as u64 % block_bytes;
        let fits = in_block >= BLOCK_HEADER_BYTES
            && (in_block - BLOCK_HEADER_BYTES).is_multiple_of(slot_bytes)
            && in_block + slot_bytes <= block_bytes;
        if !fits {
            return Err(TxnError::NotFound { addr });
        }
        Ok(slot_bytes)
    }

    /// A consistent, unlocked read of the slot at `addr` on its primary: one one-sided READ,
    /// retried (with backoff) while the object is torn or locked by a committing transaction.
    pub fn read_slot(&self, addr: Addr) -> Result<SlotRead, TxnError> {
        let (primary, key) = self.primary_of(addr)?;
        let slot_bytes = self.slot_bytes_at(primary, key, addr)?;
        for attempt in 0..READ_ATTEMPTS_MAX {
            let bytes = self
                .fabric
                .read(primary, addr, key, slot_bytes as u32)
                .map_err(|e| op_error(primary, e))?;
            match object::decode(&bytes) {
                Ok(read) if !read.header.is_locked() => {
                    return Ok(SlotRead {
                        header: read.header,
                        payload: read.payload.to_vec(),
                    });
                }
                Ok(_) | Err(object::DecodeError::Torn(_)) => backoff(attempt),
                Err(e) => {
                    return Err(TxnError::Protocol {
                        node: primary,
                        reason: format!("read of {addr}: {e}"),
                    });
                }
            }
        }
        Err(TxnError::Conflict {
            addr,
            why: "the object stayed locked",
        })
    }

    /// Re-reads the header words of objects on one node (VALIDATE by one-sided reads).
    pub fn read_headers(&self, node: NodeId, addrs: &[Addr]) -> Result<Vec<Header>, TxnError> {
        let mut ops = Vec::with_capacity(addrs.len());
        for &addr in addrs {
            let (_, key) = self.primary_of(addr)?;
            ops.push(Op::Read { addr, key, len: 8 });
        }
        self.fabric
            .execute(node, ops)
            .into_iter()
            .map(|result| match result.map_err(|e| op_error(node, e))? {
                Completion::Read(bytes) if bytes.len() == 8 => Ok(Header::from_u64(
                    u64::from_le_bytes(bytes.try_into().expect("8 bytes")),
                )),
                other => Err(TxnError::Protocol {
                    node,
                    reason: format!("header read completed as {other:?}"),
                }),
            })
            .collect()
    }

    /// Reserves a slot in one of this node's primary regions (`region`, near `near` if given)
    /// and, when that claimed a new block, copies the block header to the region's backups
    /// before returning, so backups can apply the object later.
    pub fn reserve_here(
        &self,
        region: RegionId,
        len: usize,
        near: Option<Addr>,
    ) -> Result<Reserved, AllocError> {
        let reserved = self.primary.reserve(region, len, near)?;
        if let Some((offset, header)) = &reserved.claimed_block {
            let placement = self
                .config
                .placement(region)
                .expect("a primary region is in the configuration");
            for &backup in &placement.backups {
                let outcome = self
                    .directory
                    .lookup(&self.fabric, backup, region)
                    .map_err(|e| e.to_string())
                    .and_then(|(key, _)| {
                        let addr = Addr::new(region, *offset);
                        let results = self.fabric.execute(
                            backup,
                            vec![
                                Op::Write {
                                    addr,
                                    key,
                                    data: header.clone(),
                                },
                                Op::Persist {
                                    addr,
                                    key,
                                    len: BLOCK_HEADER_BYTES as u32,
                                },
                            ],
                        );
                        results
                            .into_iter()
                            .try_for_each(|r| r.map(|_| ()))
                            .map_err(|e| e.to_string())
                    });
                if let Err(reason) = outcome {
                    // The slot stays usable on the primary; the backup cannot apply objects
                    // in this block until recovery re-replicates the region.
                    eprintln!(
                        "acre {}: block header of {region}+{offset:#x} did not reach backup \
                         {backup}: {reason}",
                        self.node
                    );
                }
            }
        }
        Ok(reserved)
    }

    /// Regions this node is primary of, for allocations without a locality hint.
    pub fn local_primary_regions(&self) -> Vec<RegionId> {
        self.primary.region_ids()
    }

    /// Sends a record that needs no reservation bookkeeping by the caller and waits for the
    /// reply at `index` of the transaction's slot.
    pub fn request(
        &self,
        target: NodeId,
        record: TxnRecord,
        slot: u16,
        index: usize,
    ) -> Result<crate::reply::Reply, TxnError> {
        let seq = record.txn.seq;
        self.send_one(target, record)?;
        self.replies
            .wait(slot, seq, &[index], REPLY_TIMEOUT)
            .map(|mut replies| replies.remove(0))
            .map_err(|_| TxnError::Unavailable {
                node: target,
                reason: format!("no reply within {REPLY_TIMEOUT:?}"),
            })
    }
}

/// Backoff between retries: spin, then yield, then sleep up to a millisecond. On two cores a
/// waiter must give the CPU to whoever it waits for.
pub fn backoff(attempt: u32) {
    match attempt {
        0..4 => std::hint::spin_loop(),
        4..8 => std::thread::yield_now(),
        _ => std::thread::sleep(Duration::from_micros(
            (1u64 << (attempt - 8).min(10)).min(1000),
        )),
    }
}
