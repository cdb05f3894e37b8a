//! The node worker: the thread that serves the records arriving in a node's log rings
//! (LOCK, COMMIT-PRIMARY, ABORT, COMMIT-BACKUP, TRUNCATE and the VALIDATE / ALLOC / RELEASE
//! requests), keeps each record in its ring until it may be dropped, and sends the node's own
//! pending truncations when no other traffic has carried them.
//!
//! Ring space: LOCK, COMMIT-PRIMARY and COMMIT-BACKUP records stay in the ring until their
//! transaction is truncated (or, for LOCK, aborted), because recovery reads them there. A ring's
//! head can only move past a prefix of records that are no longer needed, so `Retention`
//! tracks which records of each ring are still live, and for which transaction; the worker
//! publishes how many it keeps of each ring and the oldest one in the node's status area
//! ([`crate::status`]), where `acre cluster status` finds the transaction that pins a ring.
//!
//! The worker sleeps on the node's doorbell when idle; it wakes for new records, or after
//! [`TRUNCATE_FLUSH_AFTER`] when truncations are pending. Every turn of its loop advances the
//! status area's heartbeat, which is how an observer tells a serving worker from a stopped one.
//!
//! A damaged ring concerns its sender only (docs/failures.md#a-damaged-ring): the inbox stops
//! reading it and says so once, the worker logs it with the sender and the offset and serves the
//! other rings on, and the ring's records the worker keeps stay where they are, through the
//! reset its sender asks for.

use crate::allocations::{AllocRequest, Allocations};
use crate::backup::Backup;
use crate::status::{RingRetention, StatusArea};
use acre_engine::addr::NodeId;
use acre_engine::channel::{ChannelError, Inbox, Message};
use acre_nvm_log::LogError;
use acre_txn::TxnNode;
use acre_txn::record::{Body, TxnId, TxnRecord};
use acre_txn::reply::Code;
use acre_txn::truncation::TRUNCATE_FLUSH_AFTER;
use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::thread::JoinHandle;
use std::time::Duration;

/// How long an idle worker sleeps before re-checking its stop flag (and advancing its
/// heartbeat: an observer waits several of these for it to move).
pub const IDLE_SLEEP_MAX: Duration = Duration::from_millis(200);
/// Records handled between two looks at the truncation timer.
const BATCH_MAX: usize = 64;

/// The live records of one ring.
#[derive(Debug, Default)]
struct Retention {
    /// Records still needed: position -> transaction.
    live: BTreeMap<u64, TxnId>,
    /// End of the last record read.
    read_end: u64,
    /// Where the ring was last truncated.
    truncated_to: u64,
}

impl Retention {
    /// The record at `pos` ending at `end` was read; `keep` is its transaction if the record
    /// stays until that transaction is truncated (or aborted).
    fn read(&mut self, pos: u64, end: u64, keep: Option<TxnId>) {
        assert!(
            pos >= self.read_end,
            "records go forward: pos={pos} read_end={}",
            self.read_end
        );
        self.read_end = end;
        if let Some(txn) = keep {
            self.live.insert(pos, txn);
        }
    }

    /// Where the ring may be truncated to now.
    fn head(&self) -> u64 {
        self.live
            .first_key_value()
            .map_or(self.read_end, |(&pos, _)| pos)
    }

    /// What the status area shows of this ring.
    fn published(&self, sender: NodeId) -> RingRetention {
        RingRetention {
            sender,
            kept_count: self.live.len() as u64,
            oldest: self.live.first_key_value().map(|(&pos, &txn)| (pos, txn)),
        }
    }
}

/// Counters a worker keeps, for tests and status.
#[derive(Debug, Default)]
pub struct WorkerStats {
    pub records: AtomicU64,
    pub malformed: AtomicU64,
    pub applied: AtomicU64,
    /// Transactions truncated here (whether or not this node backs up what they changed).
    pub truncated: AtomicU64,
    /// Truncated transactions this backup could not apply, kept with their records.
    pub apply_failures: AtomicU64,
}

struct Serving {
    node: Arc<TxnNode>,
    backup: Arc<Backup>,
    inbox: Inbox,
    rings: HashMap<NodeId, Retention>,
    /// Records kept for each transaction: `(sender, position)`.
    kept: HashMap<TxnId, Vec<(NodeId, u64)>>,
    stats: Arc<WorkerStats>,
    status: StatusArea,
    /// Whether what the rings keep changed since it was last published.
    retention_changed: bool,
    /// Other nodes' ALLOC requests, served on a thread of their own.
    allocations: Allocations,
}

/// A running worker; stops when dropped.
pub struct Worker {
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
    node: Arc<TxnNode>,
    stats: Arc<WorkerStats>,
}

impl Worker {
    /// Starts the worker of `node`, serving `inbox` and publishing in `status`.
    pub fn spawn(
        node: Arc<TxnNode>,
        backup: Arc<Backup>,
        inbox: Inbox,
        status: StatusArea,
    ) -> std::io::Result<Worker> {
        let stop = Arc::new(AtomicBool::new(false));
        let stats = Arc::new(WorkerStats::default());
        let mut serving = Serving {
            node: node.clone(),
            backup,
            inbox,
            rings: HashMap::new(),
            kept: HashMap::new(),
            stats: stats.clone(),
            status,
            retention_changed: false,
            allocations: Allocations::spawn(node.clone())?,
        };
        let thread = {
            let stop = stop.clone();
            std::thread::Builder::new()
                .name(format!("acre-worker-{}", node.node_id()))
                .spawn(move || serving.run(&stop))?
        };
        Ok(Worker {
            stop,
            thread: Some(thread),
            node,
            stats,
        })
    }

    pub fn stats(&self) -> &WorkerStats {
        &self.stats
    }

    pub fn stop(mut self) {
        self.stop_inner();
    }

    fn stop_inner(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        self.node.fabric().memory().doorbell().ring();
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

impl Drop for Worker {
    fn drop(&mut self) {
        self.stop_inner();
    }
}

impl Serving {
    fn run(&mut self, stop: &AtomicBool) {
        let me = self.node.node_id();
        while !stop.load(Ordering::SeqCst) {
            self.status.beat();
            let timeout = if self.node.links().has_pending_truncations() {
                TRUNCATE_FLUSH_AFTER
            } else {
                IDLE_SLEEP_MAX
            };
            let mut next = self.inbox.wait(timeout);
            let mut handled = 0;
            loop {
                match next {
                    Ok(Some(message)) => self.handle(message),
                    Ok(None) => break,
                    Err(e) => self.report_ring(&e),
                }
                handled += 1;
                if handled == BATCH_MAX {
                    break;
                }
                next = self.inbox.poll();
            }
            self.truncate_rings();
            self.publish_retention();
            if let Err(e) = self.node.links().flush_truncations(TRUNCATE_FLUSH_AFTER) {
                tracing::warn!(node = %me, "sending truncations failed: {e}");
            }
        }
    }

    /// A ring's trouble, from [`Inbox::poll`]: it concerns that ring's sender only, whose ring
    /// is no longer read until it has it reset; every other ring is served on.
    fn report_ring(&self, error: &ChannelError) {
        let me = self.node.node_id();
        match error {
            ChannelError::Damaged { sender, source } => {
                // The offset is in the ring file (or area) of `sender` at this node.
                let offset = match source {
                    LogError::Corrupt { offset, .. } => *offset,
                    _ => 0,
                };
                tracing::error!(
                    node = %me,
                    %sender,
                    offset,
                    "{error}; the records of {sender} from offset {offset} on are not read, and \
                     {sender} fails here until it has the ring reset; the other rings are served"
                );
            }
            ChannelError::Reset { sender, reset } => {
                tracing::error!(
                    node = %me,
                    %sender,
                    resumed_at = reset.resumed_at,
                    tail_before = ?reset.tail_before,
                    "{error}"
                );
            }
            other => tracing::error!(node = %me, "a log ring failed: {other}"),
        }
    }

    fn handle(&mut self, message: Message) {
        self.stats.records.fetch_add(1, Ordering::Relaxed);
        let sender = message.sender;
        let (pos, end) = (message.record.pos, message.record.end());
        let record = match TxnRecord::decode(message.record.kind, &message.record.payload) {
            Ok(record) => record,
            Err(e) => {
                self.stats.malformed.fetch_add(1, Ordering::Relaxed);
                tracing::warn!(
                    node = %self.node.node_id(),
                    "dropping a record from {sender}: {e}"
                );
                self.ring(sender).read(pos, end, None);
                return;
            }
        };
        for &truncated in &record.truncated {
            self.truncate(truncated);
        }
        let txn = record.txn;
        let seq = txn.seq;
        // A coordinator on this node did the primary's part of its own LOCK, COMMIT-PRIMARY and
        // ABORT itself (acre_txn::txn): the worker only keeps or drops those records.
        let local = txn.node == self.node.node_id();
        let keep = match record.body {
            Body::Lock { .. } | Body::CommitPrimary if local => true,
            Body::Abort if local => {
                self.forget(txn);
                false
            }
            Body::Lock { entries, .. } => {
                let locked = self.node.primary().lock(txn, entries);
                let code = if locked { Code::Locked } else { Code::Conflict };
                self.node.reply(sender, record.reply, seq, code, [0; 3]);
                true
            }
            Body::CommitPrimary => {
                if let Err(e) = self.node.primary().commit(txn) {
                    tracing::error!(node = %self.node.node_id(), "COMMIT-PRIMARY of {txn}: {e}");
                }
                true
            }
            Body::Abort => {
                self.node.primary().abort(txn);
                self.forget(txn);
                false
            }
            Body::CommitBackup { entries, .. } => {
                self.backup.hold(txn, entries);
                true
            }
            Body::Truncate => false,
            Body::Validate { reads } => {
                let code = if self.node.primary().validate(&reads) {
                    Code::Valid
                } else {
                    Code::Invalid
                };
                self.node.reply(sender, record.reply, seq, code, [0; 3]);
                false
            }
            Body::Alloc { region, len, near } => {
                self.allocations.serve(AllocRequest {
                    sender,
                    reply: record.reply,
                    txn,
                    region,
                    len,
                    near,
                });
                false
            }
            Body::Release { addrs } => {
                self.node.primary().release_for(txn, &addrs);
                false
            }
        };
        self.ring(sender).read(pos, end, keep.then_some(txn));
        if keep {
            self.kept.entry(txn).or_default().push((sender, pos));
            self.retention_changed = true;
        }
    }

    fn ring(&mut self, sender: NodeId) -> &mut Retention {
        self.rings.entry(sender).or_default()
    }

    /// TRUNCATE of `txn`: a backup applies it; every node drops its records.
    fn truncate(&mut self, txn: TxnId) {
        self.stats.truncated.fetch_add(1, Ordering::Release);
        match self.backup.apply(txn) {
            Ok(applied) => {
                self.stats
                    .applied
                    .fetch_add(applied.installed as u64, Ordering::Relaxed);
                self.forget(txn);
            }
            Err(e) => {
                // The copy lacks a committed update. The transaction stays held and its
                // records stay in the ring (pinning it) for repair or recovery: never lose it.
                self.stats.apply_failures.fetch_add(1, Ordering::Release);
                tracing::error!(
                    node = %self.node.node_id(),
                    "applying {txn} to the backup copies failed, keeping it and its records: {e}"
                );
            }
        }
    }

    fn forget(&mut self, txn: TxnId) {
        for (sender, pos) in self.kept.remove(&txn).unwrap_or_default() {
            self.ring(sender).live.remove(&pos);
            self.retention_changed = true;
        }
    }

    /// Shows in the status area what each ring keeps, if that changed.
    fn publish_retention(&mut self) {
        if !self.retention_changed {
            return;
        }
        let empty = Retention::default();
        let rings = &self.rings;
        self.status.publish(
            self.status
                .senders()
                .iter()
                .map(|&sender| rings.get(&sender).unwrap_or(&empty).published(sender)),
        );
        self.retention_changed = false;
    }

    /// Moves every ring's head up to its first live record.
    fn truncate_rings(&mut self) {
        for (&sender, ring) in &mut self.rings {
            let head = ring.head();
            if head > ring.truncated_to {
                if let Err(e) = self.inbox.truncate(sender, head) {
                    tracing::warn!(
                        node = %self.node.node_id(),
                        "truncating the ring of {sender} failed: {e}"
                    );
                    continue;
                }
                ring.truncated_to = head;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn txn(seq: u64) -> TxnId {
        TxnId {
            config: 1,
            node: NodeId(100),
            thread: 0,
            seq,
        }
    }

    #[test]
    fn the_head_stops_at_the_first_live_record() {
        let mut ring = Retention::default();
        ring.read(0, 64, Some(txn(1)));
        ring.read(64, 128, None);
        ring.read(128, 192, Some(txn(2)));
        assert_eq!(ring.head(), 0);
        assert_eq!(ring.published(NodeId(100)).oldest, Some((0, txn(1))));
        ring.live.remove(&0);
        assert_eq!(ring.head(), 128);
        let published = ring.published(NodeId(100));
        assert_eq!(
            (published.kept_count, published.oldest),
            (1, Some((128, txn(2))))
        );
        ring.live.remove(&128);
        assert_eq!(ring.head(), 192);
        assert_eq!(ring.published(NodeId(100)).oldest, None);
    }
}
