//! Links: the log rings one node writes at every other node, and how records get into them.
//!
//! A node has one ring at each receiver (the receiver's memory, the sender's writes). A commit
//! first reserves room at every participant for every record it may write
//! (docs/protocol.md#reserve), then appends records inside that reservation; each append
//! returns once the record is durable in the receiver's log. Truncations waiting to be sent
//! ride on whatever record goes to their node next ([`crate::truncation`]).

use crate::POISONED;
use crate::config::CurrentConfiguration;
use crate::directory::Directory;
use crate::error::{TxnError, channel_error};
use crate::record::{self, Body, TxnId, TxnRecord};
use crate::truncation::{PIGGYBACK_MAX, TruncationQueue};
use acre_engine::addr::NodeId;
use acre_engine::channel::{ChannelError, Outbox, ring_area_id};
use acre_engine::fabric::Fabric;
use acre_engine::hash::FastMap;
use acre_engine::interleave;
use acre_nvm_log::{LogError, Reservation};
use std::collections::BTreeSet;
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;

/// Times a reservation is retried while a log is full (with backoff) before giving up.
pub const RESERVE_ATTEMPTS_MAX: u32 = 50;

/// The ring this node writes at one receiver, and the truncations waiting to ride on it.
struct Link {
    outbox: Outbox,
    truncations: TruncationQueue,
}

/// Every link of one node, attached on first use.
pub struct Links {
    node: NodeId,
    config: Arc<CurrentConfiguration>,
    fabric: Arc<Fabric>,
    directory: Arc<Directory>,
    links: RwLock<FastMap<NodeId, Arc<Mutex<Link>>>>,
    /// Nodes a configuration removed: never attached again, and what is left for them
    /// (reservations, truncations) is dropped, since nothing more goes to them.
    removed: RwLock<BTreeSet<NodeId>>,
}

impl Links {
    pub(crate) fn new(
        config: Arc<CurrentConfiguration>,
        fabric: Arc<Fabric>,
        directory: Arc<Directory>,
    ) -> Links {
        Links {
            node: fabric.node_id(),
            config,
            fabric,
            directory,
            links: RwLock::new(FastMap::default()),
            removed: RwLock::new(BTreeSet::new()),
        }
    }

    /// The id that records not belonging to a transaction (TRUNCATE) carry.
    fn system_txn(&self) -> TxnId {
        TxnId {
            config: self.config.id(),
            node: self.node,
            thread: u16::MAX,
            seq: 0,
        }
    }

    /// The link to `target`, attaching its ring (found through the directory) on first use.
    fn link(&self, target: NodeId) -> Result<Arc<Mutex<Link>>, TxnError> {
        if let Some(link) = self.links.read().expect(POISONED).get(&target) {
            return Ok(link.clone());
        }
        let removed = || TxnError::Unavailable {
            node: target,
            reason: "it was removed from the configuration".into(),
        };
        if self.is_removed(target) {
            return Err(removed());
        }
        let (key, bytes) = self
            .directory
            .lookup(&self.fabric, target, ring_area_id(self.node))?;
        let outbox = Outbox::attach(&self.fabric, target, key, bytes)
            .map_err(|e| channel_error(target, e))?;
        let mut links = self.links.write().expect(POISONED);
        // `remove` marks a node under this lock: checked again, no link to a removed node
        // can be attached after it returned.
        if self.is_removed(target) {
            return Err(removed());
        }
        Ok(links
            .entry(target)
            .or_insert_with(|| {
                Arc::new(Mutex::new(Link {
                    outbox,
                    truncations: TruncationQueue::default(),
                }))
            })
            .clone())
    }

    /// Every link attached so far, in node order.
    fn all(&self) -> Vec<(NodeId, Arc<Mutex<Link>>)> {
        let mut all: Vec<(NodeId, Arc<Mutex<Link>>)> = self
            .links
            .read()
            .expect(POISONED)
            .iter()
            .map(|(node, link)| (*node, link.clone()))
            .collect();
        all.sort_by_key(|(node, _)| *node);
        all
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
        let mut backoff = crate::backoff::Backoff::poll().with_clock(self.fabric.clock());
        for _ in 0..RESERVE_ATTEMPTS_MAX {
            let outcome = {
                let mut link = locked(&link);
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
                    // A failed wake-up shows again as the next attempt's full log.
                    let _ = locked(&link).outbox.wake(&self.fabric);
                    backoff.wait();
                }
                Err(e) => return Err(channel_error(target, e)),
            }
        }
        Err(TxnError::LogFull { node: target })
    }

    /// Gives back what is left of a reservation at `target`.
    pub fn release(&self, target: NodeId, reservation: Reservation) {
        let link = self.links.read().expect(POISONED).get(&target).cloned();
        match link {
            Some(link) => locked(&link).outbox.release(reservation),
            // The link went with the node, and the room with it.
            None if self.is_removed(target) => {}
            None => panic!("released a reservation at {target} without a link"),
        }
    }

    /// Appends `record` at `target` inside `reservation`, with pending truncations riding on
    /// it; returns once the record is durable in the target's log. For a COMMIT-BACKUP or a
    /// LOCK it returns the target's fence, read back after the record landed: the
    /// configuration for which the target last drained its rings (docs/failures.md#drain),
    /// which refuses a COMMIT-BACKUP whose transaction began before that and needs recovery,
    /// and after which a one-sided coordinator must not lock there in an older one; 0 for
    /// other records.
    pub fn send(
        &self,
        target: NodeId,
        reservation: &mut Reservation,
        mut record: TxnRecord,
    ) -> Result<u64, TxnError> {
        let link = self.link(target)?;
        let mut link = locked(&link);
        record.truncated = link.truncations.piggyback();
        let carried = record.truncated.len();
        assert!(carried <= PIGGYBACK_MAX, "carried={carried}");
        let payload = record.encode();
        // A backup's CPU is not on the commit path: its COMMIT-BACKUP waits for the next wake-up.
        let backup = matches!(record.body, Body::CommitBackup { .. });
        let fenced = backup || matches!(record.body, Body::Lock { .. } | Body::CommitPrimary);
        let fence = link
            .outbox
            .append_reserved(
                &self.fabric,
                reservation,
                &[(record.kind(), &payload)],
                !backup,
                fenced,
            )
            .map_err(|e| channel_error(target, e))?;
        link.truncations.sent(carried);
        Ok(fence)
    }

    /// Sends `record` inside `reservation` when what is left of it holds the record with a full
    /// piggyback of truncations, else with a reservation of its own.
    pub fn send_within(
        &self,
        target: NodeId,
        reservation: Option<&mut Reservation>,
        record: TxnRecord,
    ) -> Result<u64, TxnError> {
        let needed = acre_nvm_log::record::record_bytes(record::encoded_bytes(
            PIGGYBACK_MAX,
            &record.body,
        ) as u64);
        match reservation {
            Some(reservation) if reservation.bytes() >= needed => {
                self.send(target, reservation, record)
            }
            _ => {
                let mut reservation = self.reserve(target, &[&record.body])?;
                let outcome = self.send(target, &mut reservation, record);
                self.release(target, reservation);
                outcome
            }
        }
    }

    /// Sends one record with a reservation of its own.
    pub fn send_one(&self, target: NodeId, record: TxnRecord) -> Result<(), TxnError> {
        self.send_within(target, None, record).map(|_| ())
    }
}

/// Locks one link. A poisoned link is a thread that panicked half-way through an append: the
/// process stops rather than append after a half-written record.
/// A task of `interleave::run` may hold a link across a fabric wait, and another task of its
/// thread may want it meanwhile: taken with `interleave::lock`.
fn locked(link: &Mutex<Link>) -> interleave::Guard<'_, Link> {
    interleave::lock(link)
}

/// Lazy truncation over the links ([`crate::truncation`]).
impl Links {
    /// Queues the truncation of `txn` at each of `nodes`; it rides on the next record sent
    /// there, or goes on its own after [`crate::truncation::TRUNCATE_FLUSH_AFTER`].
    pub fn queue_truncation(&self, txn: TxnId, nodes: impl IntoIterator<Item = NodeId>) {
        let mut first = false;
        let now = self.fabric.clock().now();
        for node in nodes {
            // Every participant's link was attached when the commit reserved room there,
            // unless the node was removed since, also between a look at `removed` and the
            // lookup (found by CI: a rejoin's removal during `acre bank`): nothing more goes
            // to it.
            let link = match self.link(node) {
                Ok(link) => link,
                Err(_) if self.is_removed(node) => continue,
                Err(e) => panic!("{txn} committed at {node} without a link: {e}"),
            };
            first |= locked(&link).truncations.push(txn, now);
        }
        if first {
            // Wake this node's worker so it arms its flush timer.
            self.fabric.memory().doorbell().ring();
        }
    }

    /// Drops the link to `node`, removed from the configuration: nothing is sent to it any
    /// more, its queued truncations included (recovery settles what it held).
    pub(crate) fn remove(&self, node: NodeId) {
        let mut links = self.links.write().expect(POISONED);
        self.removed.write().expect(POISONED).insert(node);
        links.remove(&node);
    }

    /// Whether a configuration removed `node`.
    pub(crate) fn is_removed(&self, node: NodeId) -> bool {
        self.removed.read().expect(POISONED).contains(&node)
    }

    /// Whether any truncation waits to be sent.
    pub fn has_pending_truncations(&self) -> bool {
        self.all()
            .iter()
            .any(|(_, link)| !locked(link).truncations.is_empty())
    }

    /// Sends TRUNCATE records for truncations that have waited at least `older_than` of the
    /// node's clock, on every link: one that fails keeps its truncations for the next flush and does not hold
    /// back the others. The first failure is returned.
    pub fn flush_truncations(&self, older_than: Duration) -> Result<(), TxnError> {
        let now = self.fabric.clock().now();
        let mut first_failure = None;
        for (node, link) in self.all() {
            let due = locked(&link).truncations.is_due(now, older_than);
            if due && let Err(e) = self.flush_link(node, &link) {
                first_failure.get_or_insert(e);
            }
        }
        first_failure.map_or(Ok(()), Err)
    }

    /// Sends every pending truncation of one link.
    fn flush_link(&self, node: NodeId, link: &Mutex<Link>) -> Result<(), TxnError> {
        let mut link = locked(link);
        let Link {
            outbox,
            truncations,
        } = &mut *link;
        truncations
            .flush(outbox, &self.fabric, self.system_txn())
            .map_err(|e| channel_error(node, e))
    }
}
