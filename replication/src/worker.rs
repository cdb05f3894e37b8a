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
//! status area's heartbeat, which is how an observer tells a serving worker from a stopped one,
//! and publishes there what it settled ([`WorkerStats::settled`]: transactions recovered, regions
//! recovered, dead coordinators' transactions), which `acre cluster status` and `acre bench
//! failover` read.
//!
//! A damaged ring concerns its sender only (docs/failures.md#a-damaged-ring): the inbox stops
//! reading it and says so once, the worker logs it with the sender and the offset and serves the
//! other rings on, and the ring's records the worker keeps stay where they are, through the
//! reset its sender asks for.
//!
//! **The lease** (docs/failures.md#leases). A node whose own lease from the CM has lapsed acts
//! for nobody: the CM may be waiting that lease out to hand the node's regions to others, and
//! only a node that stops on its own makes that wait sound. The worker checks the node's lease
//! gate ([`acre_engine::fabric::NodeMemory::lease_is_open`]: one atomic load and a clock read; a
//! node without a CM is never refused) before the steps that act as a primary, and answers
//! them with [`Code::LeaseExpired`], which the coordinator treats as a reconfiguration in
//! progress (`Db::run` retries):
//!
//! - **LOCK** (message mode) is refused: locking is the primary's vote that the transaction may
//!   commit, and a primary the CM is replacing must not give it (the new primary would not hold
//!   the lock). The record stays kept until its ABORT, as every LOCK does.
//! - **VALIDATE** is refused: a primary that may already have been replaced cannot vouch that
//!   a version is still current.
//! - **COMMIT-PRIMARY is not refused.** It comes after the commit point: every backup holds the
//!   transaction, and it installs values that are already decided and releases locks this
//!   primary took while its lease held (LOCK is gated). Refusing it would leave those locks
//!   held and the decided values missing here should the lease be renewed, and would undo
//!   nothing should the node be removed (recovery installs from the backups' logs). What a
//!   lapsed primary installs is seen by nobody: over tcp its NIC thread refuses every member's
//!   operation while the lease is lapsed, and over shm the CM kills it before it commits a
//!   configuration without it.
//! - **COMMIT-BACKUP is not refused here either**, because a backup's acknowledgement is not the
//!   worker's: it is the completion of the coordinator's WRITE into the ring. Over tcp the NIC
//!   thread refuses that WRITE while the lease is lapsed (an ack from a backup the next
//!   configuration excludes would count a replica recovery does not read); over shm nothing can
//!   refuse a store, and the kill before the commit is the fence. A record that did arrive is
//!   kept: dropping it would only lose a copy.
//! - **ABORT, TRUNCATE, ALLOC, RELEASE and REQUEST-VOTE** are not gated: they release what a
//!   transaction holds, apply what was decided, or answer recovery, and none of them lets a
//!   transaction commit on this node's word. (An ALLOC only reserves a slot, and the
//!   transaction that uses it still needs LOCK here to commit.)
//! - One-sided mode's LOCK and COMMIT-PRIMARY records are only noted: the coordinator's CAS and
//!   WRITEs do the primary's part, and over tcp the NIC thread refuses them.
//!
//! A coordinator on this node checks the same gate before it sends anything and again at its
//! decision (acre-txn's commit), which also covers the part of its LOCK it does itself.
//!
//! Every [`ORPHAN_CHECK_INTERVAL`] it also looks for the transactions it keeps records of whose
//! client coordinator is gone, and hands them to the node's [`Resolver`], which asks the other
//! participants for their votes; the worker answers such questions itself (REQUEST-VOTE) and
//! applies the verdicts (docs/failures.md#a-client-that-dies, [`crate::orphan`]).

use crate::allocations::{AllocRequest, Allocations};
use crate::backup::Backup;
use crate::liveness::Liveness;
use crate::orphan::{
    ORPHAN_CHECK_INTERVAL, ORPHAN_RETRY_AFTER, Orphan, Outcome, QueryAnswer, Resolver, Verdict,
    Voted,
};
use crate::recovery::{RECOVERY_RETRY_AFTER, Recovery, RegionStep};
use crate::status::{RingRetention, SettledCounts, StatusArea};
use acre_engine::addr::{NodeId, RegionId};
use acre_engine::channel::{ChannelError, Inbox, Message, NewRing};
use acre_engine::clock::Time;
use acre_engine::hash::{FastMap, FastSet};
use acre_engine::slab::SlabAllocator;
use acre_nvm_log::LogError;
use acre_txn::TxnNode;
use acre_txn::config::{CommitMode, Configuration};
use acre_txn::record::{Body, TxnId, TxnRecord};
use acre_txn::reply::{Code, INCARNATION_SHIFT, INCARNATIONS, vote};
use acre_txn::truncation::TRUNCATE_FLUSH_AFTER;
use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::Duration;

/// How long an idle worker sleeps before re-checking its stop flag (and advancing its
/// heartbeat: an observer waits several of these for it to move).
pub const IDLE_SLEEP_MAX: Duration = Duration::from_millis(200);
/// Records handled between two looks at the truncation timer.
const BATCH_MAX: usize = 64;
/// Rounds of votes in a row some participant did not answer before a gone client's transaction
/// is reported as waiting.
const UNANSWERED_ROUNDS_REPORTED: u32 = 3;
/// The most records read from one gone client's ring before answering about it: more than a
/// ring holds (records are at least 64 bytes), so reaching it means the ring is not what it
/// should be, and the question is refused.
const DRAIN_RECORDS_MAX: usize = 1 << 20;
/// Rounds of votes in a row on a transaction needing recovery that some participant did not
/// answer before it is reported (rounds come every few milliseconds: about a second).
const RECOVERY_UNANSWERED_REPORTED: u32 = 200;

/// How often a worker whose node took a region over reads blocks of the region's allocator
/// (docs/failures.md#allocator-recovery), and for about how long each time (checked between
/// rounds): about a quarter of the worker's time, the rest for the records of the transactions
/// the region serves.
const ALLOCATOR_SCAN_EVERY: Duration = Duration::from_millis(4);
const ALLOCATOR_SCAN_BUDGET: Duration = Duration::from_millis(1);

/// An allocator reading its blocks' slots while its region serves.
struct AllocatorRecovery {
    began: std::time::Instant,
    /// Claimed blocks to read when it began.
    blocks: usize,
    /// Time spent reading (a share of each turn's, when several recover at once).
    scanning: Duration,
}

/// Regions whose transaction recovery a node finished, with the configuration it was done in
/// (what [`crate::ReplicaNode::recovered_regions`] reports).
pub type RecoveredRegions = Arc<Mutex<Vec<(RegionId, u64)>>>;

/// Rings a node made for senders that joined the cluster after it started
/// ([`crate::ReplicaNode::adopt`]), waiting for its worker to read them.
#[derive(Clone, Default)]
pub struct JoinedRings(Arc<(AtomicBool, Mutex<Vec<NewRing>>)>);

impl JoinedRings {
    pub fn push(&self, ring: NewRing) {
        let (waiting, rings) = &*self.0;
        rings.lock().expect(crate::POISONED).push(ring);
        waiting.store(true, Ordering::Release);
    }

    /// The rings pushed since the last call; one atomic load when there are none.
    fn take(&self) -> Vec<NewRing> {
        let (waiting, rings) = &*self.0;
        if !waiting.swap(false, Ordering::Acquire) {
            return Vec::new();
        }
        std::mem::take(&mut *rings.lock().expect(crate::POISONED))
    }
}

/// What a node does when it finds records it had acknowledged lost (a damaged record in a
/// sender's ring, or a reset that dropped records before the tail): called with the sender,
/// from the worker. Set by [`crate::ReplicaNode::on_acknowledged_loss`].
pub type LossHandler = Arc<std::sync::OnceLock<Box<dyn Fn(NodeId) + Send + Sync>>>;

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
    /// LOCK and VALIDATE records answered with `LeaseExpired`: this node's lease had lapsed.
    pub lease_refused: AtomicU64,
    /// Transactions of gone clients this node aborted (no COMMIT-BACKUP anywhere).
    pub orphans_aborted: AtomicU64,
    /// Transactions of gone clients this primary installed from their LOCK (another primary
    /// held COMMIT-PRIMARY).
    pub orphans_installed: AtomicU64,
    /// Transactions of gone clients this node truncated (every primary held COMMIT-PRIMARY).
    pub orphans_truncated: AtomicU64,
    /// Transactions of gone clients left to recovery (votes that make no sense).
    pub orphans_left: AtomicU64,
    /// Rounds of votes on a gone client's transaction that some participant did not answer.
    pub orphans_unanswered: AtomicU64,
    /// Transactions needing recovery after a reconfiguration that this node committed
    /// (installed or applied) or aborted.
    pub recovered_committed: AtomicU64,
    pub recovered_aborted: AtomicU64,
    /// Regions this node recovered as their new primary.
    pub regions_recovered: AtomicU64,
    /// LOCK, COMMIT-BACKUP and COMMIT-PRIMARY records refused because this node had voted on
    /// their transaction (appends of a dead client that arrived late).
    pub late_refused: AtomicU64,
    /// Losses of records this node had acknowledged: damaged records, and resets that dropped
    /// records before the tail.
    pub acknowledged_lost: AtomicU64,
}

impl WorkerStats {
    /// The counters of what this worker settled, as the status area shows them.
    pub fn settled(&self) -> SettledCounts {
        let load = |counter: &AtomicU64| counter.load(Ordering::Acquire);
        SettledCounts {
            recovered_committed: load(&self.recovered_committed),
            recovered_aborted: load(&self.recovered_aborted),
            regions_recovered: load(&self.regions_recovered),
            orphans_aborted: load(&self.orphans_aborted),
            orphans_installed: load(&self.orphans_installed),
            orphans_truncated: load(&self.orphans_truncated),
            orphans_left: load(&self.orphans_left),
        }
    }
}

/// What a node keeps of one transaction.
#[derive(Debug, Default)]
struct Kept {
    /// Its records: `(sender, position)`.
    records: Vec<(NodeId, u64)>,
    /// Every region it writes, as its LOCK or COMMIT-BACKUP lists them.
    regions: Vec<RegionId>,
    /// Which of its records this node holds (or what it did in their stead), as [`vote`] bits.
    holds: u64,
}

/// Where the resolution of a transaction of a gone client stands.
#[derive(Clone, Copy, Debug)]
enum Asked {
    /// With the resolver.
    Pending,
    /// Ask again from then on (on the node's clock).
    Again(Time),
    /// Left to recovery (reported once), or kept after a failed apply: not asked again.
    Settled,
}

struct Serving {
    node: Arc<TxnNode>,
    /// The cluster commits in one-sided mode: coordinators lock and install themselves.
    one_sided: bool,
    backup: Arc<Backup>,
    inbox: Inbox,
    rings: FastMap<NodeId, Retention>,
    kept: FastMap<TxnId, Kept>,
    stats: Arc<WorkerStats>,
    status: StatusArea,
    /// Whether what the rings keep changed since it was last published.
    retention_changed: bool,
    /// Other nodes' ALLOC requests, served on a thread of their own.
    allocations: Allocations,
    /// Which client coordinators are gone.
    clients: Arc<dyn Liveness>,
    /// Transactions this node voted on (see [`Voted`]).
    voted: Voted,
    /// Transactions of gone clients being resolved.
    asked: FastMap<TxnId, Asked>,
    /// Transactions of gone clients whose last rounds of votes did not all come: how many in
    /// a row.
    unanswered: FastMap<TxnId, u32>,
    resolver: Resolver,
    /// When to look for transactions of gone clients next, on the node's clock.
    next_orphan_check: Time,
    /// When to read blocks of recovering allocators next, on the node's clock.
    next_allocator_scan: Time,
    /// Regions whose allocator is recovering, since when and how much of the scan took.
    allocators_recovering: FastMap<RegionId, AllocatorRecovery>,
    /// Transaction recovery after reconfigurations ([`crate::recovery`]).
    recovery: Recovery,
    /// Transactions needing recovery this node is settling.
    recovering: FastSet<TxnId>,
    /// When to look at recovery next.
    next_recovery_look: Time,
    recovered: RecoveredRegions,
    /// For a node restarted from its files: its primary regions not recovered yet. While any
    /// is, it locks, validates and allocates nothing (docs/failures.md#whole-cluster-restart).
    unrecovered: FastSet<RegionId>,
    /// Whether the records being handled are the earlier run's, read again at a restart.
    replaying: bool,
    on_loss: LossHandler,
    joined: JoinedRings,
    /// See [`WorkerShared::cluster_dir`].
    cluster_dir: Option<std::path::PathBuf>,
}

/// What a worker shares with its node besides the rings and the status area.
pub struct WorkerShared {
    /// Where it reports the regions whose recovery it finished.
    pub recovered: RecoveredRegions,
    /// What it calls when records it had acknowledged are lost.
    pub on_loss: LossHandler,
    /// The node restarted from its files: the rings hold the earlier run's records.
    pub restarted: bool,
    /// Where rings of senders that joined later arrive.
    pub joined: JoinedRings,
    /// The cluster directory, for a node whose areas are files: where each node's count of
    /// starts lies (`n<id>.incarnation`), which tells a member coordinator restarted since a
    /// transaction began ([`Serving::installs_itself`]).
    pub cluster_dir: Option<std::path::PathBuf>,
}

/// A running worker; stops when dropped.
pub struct Worker {
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
    node: Arc<TxnNode>,
    stats: Arc<WorkerStats>,
}

impl Worker {
    /// Starts the worker of `node`, serving `inbox` and publishing in `status`; `clients`
    /// tells which client coordinators are gone (whose transactions it then settles).
    ///
    /// `shared.restarted`: the node restarted from its files, and `inbox` holds what its rings
    /// kept from the earlier run. The worker reads all of it before it returns ([`Serving::replay`]),
    /// so call it before anyone can append.
    pub fn spawn(
        node: Arc<TxnNode>,
        backup: Arc<Backup>,
        inbox: Inbox,
        status: StatusArea,
        clients: Arc<dyn Liveness>,
        shared: WorkerShared,
    ) -> std::io::Result<Worker> {
        let WorkerShared {
            recovered,
            on_loss,
            restarted,
            joined,
            cluster_dir,
        } = shared;
        let stop = Arc::new(AtomicBool::new(false));
        let stats = Arc::new(WorkerStats::default());
        let mut serving = Serving {
            recovery: if restarted {
                Recovery::restarted(node.config())
            } else {
                Recovery::new(node.config())
            },
            recovering: FastSet::default(),
            next_recovery_look: node.clock().now(),
            recovered,
            one_sided: node.config().commit == CommitMode::OneSided,
            node: node.clone(),
            backup: backup.clone(),
            inbox,
            rings: FastMap::default(),
            kept: FastMap::default(),
            stats: stats.clone(),
            status,
            retention_changed: false,
            allocations: Allocations::spawn(node.clone())?,
            clients,
            voted: Voted::default(),
            asked: FastMap::default(),
            unanswered: FastMap::default(),
            resolver: Resolver::spawn(node.clone(), backup.clone())?,
            next_orphan_check: node.clock().now() + ORPHAN_CHECK_INTERVAL,
            next_allocator_scan: node.clock().now(),
            allocators_recovering: FastMap::default(),
            unrecovered: if restarted {
                node.primary().region_ids().into_iter().collect()
            } else {
                FastSet::default()
            },
            replaying: false,
            on_loss,
            joined,
            cluster_dir,
        };
        if restarted {
            serving.replay();
        }
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

    /// The worker's counters, shared (the copier's pace watches them).
    pub fn stats_handle(&self) -> Arc<WorkerStats> {
        self.stats.clone()
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
            self.add_joined_rings();
            let mut timeout = if self.is_recovering() {
                RECOVERY_RETRY_AFTER
            } else if self.node.links().has_pending_truncations() {
                TRUNCATE_FLUSH_AFTER
            } else {
                IDLE_SLEEP_MAX
            };
            if !self.allocators_recovering.is_empty() {
                timeout = timeout.min(ALLOCATOR_SCAN_EVERY);
            }
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
            for verdict in self.resolver.verdicts() {
                self.settle(verdict);
            }
            for answer in self.resolver.answers() {
                self.answered(answer);
            }
            self.recover();
            if self.node.clock().now() >= self.next_orphan_check {
                self.find_orphans();
                self.next_orphan_check = self.node.clock().now() + ORPHAN_CHECK_INTERVAL;
            }
            self.node.primary().observe_installs();
            self.scan_allocators();
            self.truncate_rings();
            self.publish_retention();
            self.status.publish_settled(&self.stats.settled());
            if let Err(e) = self.node.links().flush_truncations(TRUNCATE_FLUSH_AFTER) {
                tracing::warn!(node = %me, "sending truncations failed: {e}");
            }
        }
        self.resolver.stop();
    }

    /// A ring's trouble, from [`Inbox::poll`]: it concerns that ring's sender only, whose ring
    /// is no longer read until it has it reset; every other ring is served on.
    ///
    /// A damaged record in a live ring is one this node acknowledged: a record is read only
    /// under its commit word or below the tail, which its writer wrote once the record was
    /// durable. So is every record a reset drops before the tail it had, or before a tail it
    /// could not read. What the node holds no longer covers what it promised (a LOCK whose
    /// lock its coordinator took, a COMMIT-BACKUP whose commit it counted, a COMMIT-PRIMARY
    /// never installed), and the loss handler is told at once, at the damage: its sender may
    /// never append again to have the ring reset (docs/failures.md#a-damaged-ring).
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
                self.acknowledged_loss(
                    *sender,
                    &format!("a damaged record at offset {offset} of {sender}'s ring"),
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
                // An unreadable tail hides how far the acknowledged records went.
                let lost = reset.tail_before.is_none_or(|tail| tail > reset.resumed_at);
                if lost {
                    self.acknowledged_loss(
                        *sender,
                        &format!(
                            "the reset of {sender}'s ring from position {} (the tail was at {:?})",
                            reset.resumed_at, reset.tail_before
                        ),
                    );
                }
            }
            other => tracing::error!(node = %me, "a log ring failed: {other}"),
        }
    }

    /// Records this node had acknowledged are lost (`what`): counted, and the loss handler
    /// called (a node process fails), or logged where none is set.
    fn acknowledged_loss(&self, sender: NodeId, what: &str) {
        self.stats.acknowledged_lost.fetch_add(1, Ordering::Release);
        match self.on_loss.get() {
            Some(handler) => handler(sender),
            None => tracing::error!(
                node = %self.node.node_id(),
                "records {sender} appended here and this node acknowledged are lost ({what}); \
                 without a CM to recover them, what they committed may be missing from this \
                 node's copies"
            ),
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
            if self.replaying && self.node.primary().noted(truncated) {
                // Truncated: every COMMIT-PRIMARY was acknowledged. What the earlier run did
                // not install of it here (a one-sided install cut short) it installs now.
                self.node.primary().install_orphan(truncated);
            }
            self.truncate(truncated);
        }
        let txn = record.txn;
        if self.refuses_late(sender, &record) {
            self.ring(sender).read(pos, end, None);
            return;
        }
        // Which record this is, for a later vote, and the regions it lists.
        let (holds, regions) = match &record.body {
            Body::Lock { regions, .. } => (vote::LOCK, regions.clone()),
            Body::CommitBackup { regions, .. } | Body::Copy { regions, .. } => {
                (vote::COMMIT_BACKUP, regions.clone())
            }
            Body::CommitPrimary => (vote::COMMIT_PRIMARY, Vec::new()),
            _ => (0, Vec::new()),
        };
        let (keep, holds) = self.serve(sender, record, holds, &regions);
        self.ring(sender).read(pos, end, keep.then_some(txn));
        if keep {
            let kept = self.kept.entry(txn).or_default();
            kept.records.push((sender, pos));
            kept.holds |= holds;
            if kept.regions.is_empty() {
                kept.regions = regions;
            }
            self.retention_changed = true;
            // A record of a transaction that needs recovery (a copy of its entries sent by a
            // participant, or one read at the drain): settled here too.
            if self.recovery.needs(txn, &self.kept[&txn].regions) {
                self.recovering.insert(txn);
            }
        }
    }

    /// Whether `record` is a late append of a dead client coordinator on whose transaction this
    /// node has voted: refused (and counted) so it cannot contradict the vote.
    fn refuses_late(&mut self, sender: NodeId, record: &TxnRecord) -> bool {
        let txn = record.txn;
        let coordinated = matches!(
            record.body,
            Body::Lock { .. } | Body::CommitBackup { .. } | Body::CommitPrimary
        ) && sender == txn.node;
        if !coordinated {
            return false;
        }
        let regions = match &record.body {
            Body::Lock { regions, .. } | Body::CommitBackup { regions, .. } => regions.as_slice(),
            _ => self.kept.get(&txn).map_or(&[][..], |kept| &kept.regions),
        };
        let needs = self.recovery.needs(txn, regions);
        if (needs || self.voted.has_voted(txn))
            && matches!(record.body, Body::CommitPrimary)
            && self.node.primary().is_installing(txn)
        {
            // A second copy (its finisher's, after an unanswered fence question) of a
            // COMMIT-PRIMARY this node took before it voted and whose install it waits for:
            // dropped, but not refused, since the first one counts; its one-sided coordinator,
            // told so, installs ([`Serving::installs_itself`]). Not for a transaction recovery
            // installed itself (the vote bit COMMIT_PRIMARY says that too): a first
            // COMMIT-PRIMARY arriving after that is refused, or its install would land over
            // later commits.
            return true;
        }
        if needs {
            // Begun before the configuration this node drained for, and it needs recovery: its
            // votes are being (or were) cast without it (docs/failures.md#drain).
            tracing::warn!(
                node = %self.node.node_id(),
                "refusing a record of kind {} of {txn}: it needs recovery after configuration {}",
                record.kind().0,
                self.recovery.drained_for()
            );
            self.stats.late_refused.fetch_add(1, Ordering::Release);
            // Final, and said in this node's answers: the coordinator asks whether its record
            // counted (acre_txn::commit::commit_backup::fenced) and sends nothing more.
            self.voted.decided(txn, vote::REFUSED);
            return true;
        }
        let voted = self.voted.has_voted(txn);
        if voted {
            // Its client coordinator is gone and this node has voted on it: an append of the
            // dead client still on its way, which the client never saw acknowledged.
            tracing::warn!(
                node = %self.node.node_id(),
                "refusing a record of kind {} of {txn}: its client coordinator is gone and this \
                 node has voted on it",
                record.kind().0
            );
            self.stats.late_refused.fetch_add(1, Ordering::Release);
            self.voted.decided(txn, vote::REFUSED);
        }
        voted
    }

    /// Does what `record` asks of this node as primary or backup; returns whether its ring
    /// keeps the record, and what it holds of the transaction for a later vote.
    fn serve(
        &mut self,
        sender: NodeId,
        record: TxnRecord,
        mut holds: u64,
        regions: &[RegionId],
    ) -> (bool, u64) {
        let txn = record.txn;
        let seq = txn.seq;
        if self.replaying {
            return self.replayed(record, holds, regions);
        }
        // A coordinator on this node did the primary's part of its own LOCK, COMMIT-PRIMARY and
        // ABORT itself (acre_txn::txn): the worker only keeps or drops those records.
        let local = txn.node == self.node.node_id();
        let keep = match record.body {
            Body::Lock { .. } | Body::CommitPrimary if local => true,
            Body::Abort if local => {
                self.forget(txn);
                false
            }
            Body::Lock { entries, .. } if self.one_sided => {
                // Its coordinator locks by compare-and-swap once this record is durable
                // (docs/protocol.md#one-sided-commit-mode): noted, not answered.
                self.node.primary().note_lock(txn, entries);
                true
            }
            Body::Lock { .. } if !self.lease_is_open() => {
                // This node's lease lapsed: the CM may be waiting it out to give its regions to
                // others, so it locks nothing (module docs, "The lease"). Kept, as every LOCK
                // is, until its ABORT.
                self.stats.lease_refused.fetch_add(1, Ordering::Relaxed);
                self.node
                    .reply(sender, record.reply, seq, Code::LeaseExpired, [0; 3]);
                true
            }
            Body::Lock { .. } if txn.config < self.node.config_id() => {
                // Begun in an older configuration: it must not lock in this one
                // (docs/failures.md#reconfiguration). Kept, as every LOCK is, until its ABORT.
                let current = self.node.config_id();
                self.node
                    .reply(sender, record.reply, seq, Code::Stale, [current, 0, 0]);
                true
            }
            Body::Lock { entries, .. } => {
                let locked = self.node.primary().lock(txn, entries);
                let code = if locked { Code::Locked } else { Code::Conflict };
                self.node.reply(sender, record.reply, seq, code, [0; 3]);
                true
            }
            Body::CommitPrimary if self.holds(txn, vote::COMMIT_PRIMARY) => {
                // A second copy from a coordinator finishing its commit
                // (docs/protocol.md#unfinished-commits): installed at the first.
                true
            }
            Body::CommitPrimary if self.one_sided => {
                // Its coordinator installs once this record is durable: noted for the slots
                // its frees give back.
                self.node.primary().note_commit(txn);
                true
            }
            Body::CommitPrimary => {
                if let Err(e) = self.node.primary().commit(txn) {
                    tracing::error!(node = %self.node.node_id(), "COMMIT-PRIMARY of {txn}: {e}");
                }
                true
            }
            Body::Abort if self.one_sided => {
                // Its coordinator unlocked what it saw lock; what still names it (a
                // compare-and-swap whose completion it lost) is unlocked here.
                self.node.primary().abort_orphan(txn);
                self.forget(txn);
                false
            }
            Body::Abort => {
                self.node.primary().abort(txn);
                self.forget(txn);
                false
            }
            Body::Copy { entries, .. } => {
                // A participant's copy of its part, the votes having decided to commit
                // (crate::orphan): this replica holds the transaction once it has every part.
                let kept = self.backup.hold_part(txn, entries);
                if !self.backup.covers(txn, regions) {
                    holds = 0;
                }
                kept
            }
            Body::CommitBackup { entries, .. } => {
                self.backup.hold(txn, entries);
                true
            }
            Body::Truncate => false,
            Body::Validate { .. } if !self.lease_is_open() => {
                self.stats.lease_refused.fetch_add(1, Ordering::Relaxed);
                self.node
                    .reply(sender, record.reply, seq, Code::LeaseExpired, [0; 3]);
                false
            }
            Body::Validate { .. } if txn.config < self.node.config_id() => {
                let current = self.node.config_id();
                self.node
                    .reply(sender, record.reply, seq, Code::Stale, [current, 0, 0]);
                false
            }
            Body::Validate { reads } => {
                let code = if self.node.primary().validate(&reads) {
                    Code::Valid
                } else {
                    Code::Invalid
                };
                self.node.reply(sender, record.reply, seq, code, [0; 3]);
                false
            }
            Body::Alloc { .. } if self.restarting() => {
                let current = self.node.config_id();
                let values = [acre_txn::reply::alloc_failure::RECONFIGURING, current, 0];
                self.node
                    .reply(sender, record.reply, seq, Code::AllocFailed, values);
                false
            }
            Body::Alloc { region, len, near } => {
                let reply = record.reply;
                let request = AllocRequest {
                    sender,
                    reply,
                    txn,
                    region,
                    len,
                    near,
                };
                self.allocations.serve(request);
                false
            }
            Body::Release { addrs } => {
                self.node.primary().release_for(txn, &addrs);
                false
            }
            Body::RequestVote {
                txn: asked,
                regions,
            } => {
                let holds = self.vote(asked, txn.config, &regions);
                crate::orphan::answer(&self.node, sender, record.reply, seq, holds);
                false
            }
            Body::RecoveryQuery { region } => {
                let undecided = self.undecided_writing(region, txn.config);
                crate::orphan::answer(&self.node, sender, record.reply, seq, undecided);
                false
            }
            Body::CopyQuery { region, older_than } => {
                let locked = self.locked_before(region, older_than);
                crate::orphan::answer(&self.node, sender, record.reply, seq, locked);
                false
            }
            Body::OutcomeQuery { txn: asked } => {
                // NEW_PRIMARY says nothing here: no region list.
                let known = self.my_vote(asked, &[]);
                crate::orphan::answer(&self.node, sender, record.reply, seq, Some(known));
                false
            }
        };
        (keep, holds)
    }

    /// Whether this node's lease from the CM holds (or no CM runs): one atomic load and, with a
    /// CM, a clock read. A node restarted from its files counts its lease shut until it adopts
    /// a configuration newer than the one it started in.
    fn lease_is_open(&self) -> bool {
        self.node.fabric().memory().lease_is_open() && !self.restarting()
    }

    /// Whether this node restarted from its files and has not recovered all its primary
    /// regions yet: it then locks, validates and allocates nothing. Its locks and allocators
    /// are those the earlier run left, with that run's transactions not recovered; the CM's
    /// restart configuration blocks its regions until they are, but a configuration may come
    /// first that shows them active (a new CM leader distributes the one it found)
    /// (docs/failures.md#whole-cluster-restart).
    fn restarting(&self) -> bool {
        !self.unrecovered.is_empty()
    }

    /// Reads every record the rings kept from the earlier run of a node restarted from its
    /// files, before anyone can append (docs/failures.md#whole-cluster-restart). Every
    /// coordinator of those records is gone, so nothing is answered and nothing is locked: the
    /// node keeps what it holds of each transaction for the votes of its recovery, as it would
    /// have kept it had it never stopped.
    fn replay(&mut self) {
        self.replaying = true;
        self.drain_rings();
        self.replaying = false;
        self.retention_changed = true;
        let kept = self.kept.len();
        let noted = self
            .kept
            .keys()
            .filter(|txn| self.node.primary().noted(**txn))
            .count();
        tracing::info!(
            node = %self.node.node_id(),
            "read what the rings kept from the earlier run: {} records, {kept} transactions not \
             truncated ({noted} with their LOCK here); they are recovered once the CM's restart \
             configuration is committed",
            self.stats.records.load(Ordering::Relaxed)
        );
    }

    /// [`Serving::serve`] of a record of the earlier run, read again by [`Serving::replay`]:
    /// what the node keeps of it. A LOCK is noted, not taken again: the copy's lock words say
    /// whether the earlier run locked (or a one-sided coordinator did), and recovery installs
    /// or unlocks by them ([`acre_txn::primary::Primary::install_orphan`], `abort_orphan`).
    fn replayed(&mut self, record: TxnRecord, mut holds: u64, regions: &[RegionId]) -> (bool, u64) {
        let txn = record.txn;
        let keep = match record.body {
            Body::Lock { entries, .. } => {
                self.node.primary().note_replayed_lock(txn, entries);
                true
            }
            Body::CommitPrimary => {
                // Its one-sided coordinator may still be installing (a member that runs on,
                // stalled): recovery waits for that install as when the record is first read.
                if self.one_sided {
                    self.node.primary().note_replayed_commit(txn);
                }
                true
            }
            Body::CommitBackup { entries, .. } => {
                self.backup.hold(txn, entries);
                true
            }
            Body::Copy { entries, .. } => {
                let kept = self.backup.hold_part(txn, entries);
                if !self.backup.covers(txn, regions) {
                    holds = 0;
                }
                kept
            }
            Body::Abort => {
                self.node.primary().abort_orphan(txn);
                self.forget(txn);
                false
            }
            // Asked by coordinators that are gone: nobody waits for an answer.
            _ => false,
        };
        (keep, holds)
    }

    /// Whether this node keeps a record of `txn` of the kind `bit` ([`vote`] bits).
    fn holds(&self, txn: TxnId, bit: u64) -> bool {
        self.kept
            .get(&txn)
            .is_some_and(|kept| kept.holds & bit != 0)
    }

    /// REQUEST-VOTE on `txn`: what this node holds of it, once it has read everything its
    /// client coordinator wrote here; `None` (refused) while the coordinator is not gone here
    /// too, or its ring cannot be read. A vote is final: the node refuses the transaction's
    /// records from then on.
    ///
    /// After a reconfiguration it also votes on a transaction begun before the configuration
    /// it drained for, when the asker (in configuration `asker_config`) recovers it
    /// ([`crate::recovery`]); refused until this node has drained for the asker's.
    fn vote(&mut self, txn: TxnId, asker_config: u64, regions: &[RegionId]) -> Option<u64> {
        // Never before this node drained for the asker's configuration: its vote would miss
        // what the configuration changed (a promoted primary's role, records still unread).
        if self.recovery.drained_for() < asker_config {
            return None;
        }
        let client = txn.node;
        let orphan = self.node.config().clients.contains(&client) && self.clients.is_gone(client);
        if orphan {
            if !self.drain(client) {
                return None;
            }
        } else if !self.recovery.may_vote(txn, asker_config) {
            return None;
        }
        self.voted.vote(txn);
        Some(self.my_vote(txn, regions))
    }

    /// What this node holds of `txn` (or did in its stead), as [`vote`] bits; the regions it
    /// was promoted to the primary of are named by their place in `regions` (those `txn`
    /// writes, as the asker lists them).
    fn my_vote(&self, txn: TxnId, regions: &[RegionId]) -> u64 {
        let held = self.kept.get(&txn).map(|kept| kept.holds);
        let decided = self.voted.outcome(txn);
        let mut bits = held.unwrap_or(0) | decided | self.recovery.new_primary_bit(txn, regions);
        if held.is_none() && decided & !vote::REFUSED == 0 {
            bits |= self.recovery.truncations.vote(txn);
        }
        bits
    }

    /// COPY-QUERY of a new backup of `region`: how many transactions begun before configuration
    /// `older_than` hold its LOCK here (they may still install in `region` and send their
    /// COMMIT-BACKUP to the older backups only); `None` (refused) until this node has drained
    /// for `older_than`, after which no such transaction locks here any more (a one-sided
    /// coordinator reads the fence with its LOCK, a message-mode LOCK is refused as stale).
    fn locked_before(&self, region: RegionId, older_than: u64) -> Option<u64> {
        if self.recovery.drained_for() < older_than {
            return None;
        }
        let count = self
            .kept
            .iter()
            .filter(|(txn, kept)| {
                txn.config < older_than
                    && kept.holds & vote::LOCK != 0
                    && kept.regions.contains(&region)
            })
            .count();
        Some(count as u64)
    }

    /// RECOVERY-QUERY of the new primary of `region`: how many transactions needing recovery
    /// that write it this node holds undecided; `None` (refused) until it has drained for the
    /// asker's configuration `asker_config`.
    fn undecided_writing(&self, region: RegionId, asker_config: u64) -> Option<u64> {
        if self.recovery.drained_for() < asker_config {
            return None;
        }
        let count = self
            .kept
            .iter()
            .filter(|(txn, kept)| {
                kept.regions.contains(&region)
                    && (self.recovering.contains(txn) || self.recovery.needs(**txn, &kept.regions))
                    && !self.recovery.decided.contains(txn)
            })
            .count();
        Some(count as u64)
    }

    /// Handles every record already in `client`'s ring (it is gone, so nothing new comes);
    /// returns whether the ring was read to its end.
    fn drain(&mut self, client: NodeId) -> bool {
        for _ in 0..DRAIN_RECORDS_MAX {
            match self.inbox.poll_from(client) {
                Ok(Some(message)) => self.handle(message),
                // A damaged ring hides what lies past the damage: nothing can be said of it (the
                // damage itself is reported where the worker's poll finds it).
                Ok(None) if self.inbox.is_damaged(client) => {
                    tracing::debug!(
                        node = %self.node.node_id(),
                        "the ring of {client}, which is gone, is damaged: its transactions \
                         cannot be settled"
                    );
                    return false;
                }
                Ok(None) => return true,
                Err(e) => {
                    tracing::error!(
                        node = %self.node.node_id(),
                        "reading the ring of {client}, which is gone, failed: {e}"
                    );
                    return false;
                }
            }
        }
        tracing::error!(
            node = %self.node.node_id(),
            "the ring of {client}, which is gone, held more than {DRAIN_RECORDS_MAX} records"
        );
        false
    }

    /// Hands the resolver the transactions this node keeps records of whose client coordinator
    /// is gone (and that are not being resolved already), once their rings are read to the end;
    /// hands back the slots such clients reserved for transactions that sent no LOCK here.
    fn find_orphans(&mut self) {
        let now = self.node.clock().now();
        let config = self.node.config().clone();
        // The clients this node keeps records of, or holds slots for.
        let holding = |client: &NodeId| {
            self.kept.keys().any(|txn| txn.node == *client)
                || !self.node.primary().allocating(*client).is_empty()
        };
        let clients: Vec<NodeId> = config.clients.iter().copied().filter(holding).collect();
        for client in clients {
            if !self.clients.is_gone(client) || !self.drain(client) {
                continue;
            }
            // Slots its ALLOC requests reserved for transactions that never sent LOCK here
            // (the ring is read to its end: none will): nothing will install them.
            for txn in self.node.primary().allocating(client) {
                if !self.kept.contains_key(&txn) {
                    self.voted.vote(txn);
                    self.node.primary().abort(txn);
                    tracing::info!(
                        node = %self.node.node_id(),
                        "handed back the slots {txn} reserved: its client coordinator is gone"
                    );
                }
            }
            let mut orphans = Vec::new();
            for (&txn, kept) in &self.kept {
                if txn.node != client {
                    continue;
                }
                let due = match self.asked.get(&txn) {
                    None => true,
                    Some(Asked::Again(at)) => now >= *at,
                    Some(Asked::Pending | Asked::Settled) => false,
                };
                if due {
                    orphans.push(Orphan {
                        txn,
                        regions: kept.regions.clone(),
                        holds: self.my_vote(txn, &kept.regions),
                        copying_must_hold: self.copying_must_hold(txn, &kept.regions),
                    });
                }
            }
            for orphan in &orphans {
                // What this node holds is part of the vote: refuse whatever comes later.
                self.voted.vote(orphan.txn);
                self.asked.insert(orphan.txn, Asked::Pending);
            }
            self.resolver.submit(orphans);
        }
    }

    /// Applies the resolver's verdict on a transaction of a gone client.
    fn settle(&mut self, verdict: Verdict) {
        let me = self.node.node_id();
        let txn = verdict.txn;
        let Some(holds) = self.kept.get(&txn).map(|kept| kept.holds) else {
            // Dropped meanwhile (an ABORT or a truncation read while the votes were out).
            self.asked.remove(&txn);
            return;
        };
        let recovering = self.recovering.contains(&txn);
        let retry = if recovering {
            RECOVERY_RETRY_AFTER
        } else {
            ORPHAN_RETRY_AFTER
        };
        let again = Asked::Again(self.node.clock().now() + retry);
        if !matches!(verdict.outcome, Outcome::Unanswered { .. }) {
            self.unanswered.remove(&txn);
        }
        // A Copy is not decided yet for a new primary's RECOVERY-QUERY: the replicas lacking
        // the values (the new primary among them) may not have them yet.
        if matches!(verdict.outcome, Outcome::Install | Outcome::Truncate) {
            self.recovery.decided.insert(txn);
        }
        match verdict.outcome {
            Outcome::Abort => {
                if holds & vote::COMMIT_PRIMARY != 0 {
                    // Installed here already: a contradiction (a bug), never acted on.
                    tracing::error!(
                        node = %me,
                        "{txn}: the votes say abort though this node installed it; its records \
                         stay"
                    );
                    self.asked.insert(txn, Asked::Settled);
                    return;
                }
                // A COMMIT-BACKUP held here is dropped unapplied: a region lost the values
                // (docs/failures.md#decision).
                self.backup.discard(txn);
                if recovering {
                    self.stats.recovered_aborted.fetch_add(1, Ordering::Release);
                }
                // Locked here (message mode): unlocked. Noted from its LOCK record (one-sided
                // mode, or read again at a restart): its compare-and-swaps may have taken, and
                // the locks that name it are undone.
                self.node.primary().abort_orphan(txn);
                self.forget(txn);
                self.voted.decided(txn, vote::ABORTED);
                self.stats.orphans_aborted.fetch_add(1, Ordering::Release);
                tracing::info!(
                    node = %me,
                    "aborted {txn}: its client coordinator is gone and no participant holds \
                     its COMMIT-BACKUP or COMMIT-PRIMARY; its locks and records are released"
                );
            }
            Outcome::Install => {
                if holds & vote::COMMIT_PRIMARY == 0 {
                    self.install(txn, holds, recovering);
                }
                // Truncated once every primary has installed it.
                self.asked.insert(txn, again);
            }
            Outcome::Truncate => {
                if self.installs_itself(txn) {
                    // Its install here is its coordinator's, which may be on its way: ours
                    // would unlock the objects, and that install could then land over a later
                    // commit. Asked again until it has landed (or its coordinator is gone).
                    // A region this node was promoted to the primary of gets its values now:
                    // it serves only once they are in, and no coordinator installs there.
                    self.install_promoted(txn, holds);
                    tracing::debug!(
                        node = %me,
                        "{txn} committed; its coordinator installs it here, waiting for that"
                    );
                    self.asked.insert(txn, again);
                    return;
                }
                if self.node.primary().noted(txn) && self.node.primary().install_orphan(txn) {
                    // Its coordinator died between COMMIT-PRIMARY and its install.
                    self.stats.orphans_installed.fetch_add(1, Ordering::Release);
                }
                self.stats.orphans_truncated.fetch_add(1, Ordering::Release);
                if self.truncate(txn) {
                    self.voted.decided(txn, vote::TRUNCATED);
                } else {
                    self.asked.insert(txn, Asked::Settled);
                }
            }
            Outcome::Recovery { reason } => {
                self.stats.orphans_left.fetch_add(1, Ordering::Release);
                tracing::error!(
                    node = %me,
                    "{txn} is left to recovery: its client coordinator is gone and {reason}; \
                     the objects it locked stay locked and its records stay in the log"
                );
                self.asked.insert(txn, Asked::Settled);
            }
            Outcome::Copy { lacking } => {
                tracing::info!(
                    node = %me,
                    "{txn}: its client coordinator is gone after some backups took its \
                     COMMIT-BACKUP; its entries are copied to {lacking:?}, then it commits"
                );
                self.asked.insert(txn, again);
            }
            Outcome::Unanswered { node, reason } => {
                // Its locks stay until the vote comes. A refusal or two is expected (a client
                // connecting holds the dead one's lock file while it looks at its rings): a
                // vote that keeps not coming is reported, once.
                self.stats
                    .orphans_unanswered
                    .fetch_add(1, Ordering::Release);
                let rounds = self.unanswered.entry(txn).or_default();
                *rounds += 1;
                let reported = if recovering {
                    RECOVERY_UNANSWERED_REPORTED
                } else {
                    UNANSWERED_ROUNDS_REPORTED
                };
                if *rounds == reported {
                    tracing::warn!(
                        node = %me,
                        "{txn}, whose client coordinator is gone, keeps its locks: {node} did \
                         not vote ({reason}); asking again every {ORPHAN_RETRY_AFTER:?}"
                    );
                }
                self.asked.insert(txn, again);
            }
        }
    }

    /// The Install verdict here: what `txn`'s COMMIT-PRIMARY and install would have done
    /// (docs/protocol.md CP.5), where its coordinator did not: a primary installs from its LOCK
    /// (in one-sided mode, the objects still locked by the transaction), and a primary promoted
    /// after the transaction began installs from its COMMIT-BACKUP (docs/failures.md#decision).
    /// The node then votes COMMIT-PRIMARY.
    fn install(&mut self, txn: TxnId, holds: u64, recovering: bool) {
        let me = self.node.node_id();
        let mut installed = false;
        let mut primary = self.one_sided;
        if self.node.primary().noted(txn) {
            // Noted from its LOCK record (one-sided mode, or read again at a restart): installed
            // by what the lock words say.
            primary = true;
            installed |= self.node.primary().install_orphan(txn);
        } else if self.one_sided && !self.node.primary().locked_here(txn) {
            installed |= self.node.primary().install_orphan(txn);
        } else if holds & vote::LOCK != 0 {
            primary = true;
            match self.node.primary().commit(txn) {
                Ok(()) => installed = true,
                Err(e) => tracing::error!(node = %me, "installing {txn}: {e}"),
            }
        }
        match self.install_promoted(txn, holds) {
            Some(true) => (primary, installed) = (true, true),
            Some(false) => {}
            None => return,
        }
        if installed {
            self.stats.orphans_installed.fetch_add(1, Ordering::Release);
            if recovering {
                self.stats
                    .recovered_committed
                    .fetch_add(1, Ordering::Release);
            }
            tracing::info!(
                node = %me,
                "installed {txn}: the votes of its participants say it committed"
            );
        }
        if primary && let Some(kept) = self.kept.get_mut(&txn) {
            kept.holds |= vote::COMMIT_PRIMARY;
        }
    }

    /// Installs `txn` from its COMMIT-BACKUP held here if this node was promoted to the primary
    /// of a region it writes after it began: `Some(whether it did)`, `None` if that failed
    /// (logged; the caller asks again).
    fn install_promoted(&mut self, txn: TxnId, holds: u64) -> Option<bool> {
        if holds & vote::COMMIT_BACKUP == 0 || !self.is_new_primary_for(txn) {
            return Some(false);
        }
        match self.backup.apply(txn) {
            Ok(_) => Some(true),
            Err(e) => {
                tracing::error!(
                    node = %self.node.node_id(),
                    "installing {txn} from its COMMIT-BACKUP failed: {e}; asked again"
                );
                None
            }
        }
    }

    /// Whether `txn`'s one-sided coordinator still installs it here itself: this primary took
    /// its COMMIT-PRIMARY (so the coordinator installs, docs/protocol.md#one-sided-commit-mode),
    /// the install has not landed, and the coordinator can still write here (a member neither
    /// removed nor restarted since, or a client not gone). Recovery then leaves the install to it: nothing checks a
    /// one-sided WRITE where it executes, so an install of recovery's, unlocking the objects,
    /// could be followed by a later commit and then by the coordinator's stalled install over
    /// it (docs/failures.md#decision).
    fn installs_itself(&self, txn: TxnId) -> bool {
        if !self.node.primary().is_installing(txn) {
            return false;
        }
        let coordinator = txn.node;
        if self.recovery.removed().contains(&coordinator) {
            return false;
        }
        let config = self.recovery.config();
        if config.clients.contains(&coordinator) {
            return !self.clients.is_gone(coordinator);
        }
        config.nodes.contains(&coordinator) && !self.restarted_since(txn)
    }

    /// Whether `txn`'s coordinator node has started again since `txn` began (restarted in
    /// place from its files): the process that would install it is gone, and the new one does
    /// not know of it. Told by the node's count of starts in the cluster directory; a node
    /// without one (areas in memory) cannot restart.
    fn restarted_since(&self, txn: TxnId) -> bool {
        let Some(dir) = &self.cluster_dir else {
            return false;
        };
        match crate::process::current_incarnation(dir, txn.node) {
            Some(current) => {
                current % INCARNATIONS != (txn.seq >> INCARNATION_SHIFT) % INCARNATIONS
            }
            None => false,
        }
    }

    /// Whether this node was promoted to the primary of a region `txn` writes after `txn`
    /// began.
    fn is_new_primary_for(&self, txn: TxnId) -> bool {
        self.kept.get(&txn).is_some_and(|kept| {
            kept.regions
                .iter()
                .any(|&region| self.recovery.is_new_primary_of(region, txn))
        })
    }

    /// Whether transaction recovery has work here: transactions to settle or regions to
    /// recover (the worker then looks every [`RECOVERY_RETRY_AFTER`]).
    fn is_recovering(&self) -> bool {
        !self.recovering.is_empty() || !self.recovery.regions.is_empty()
    }

    /// Transaction recovery's turn of the loop ([`crate::recovery`]): drains once a newer
    /// configuration is committed, then settles what needs recovery and serves the regions
    /// recovered.
    fn recover(&mut self) {
        let (id, committed) = self.node.config_state();
        let drained_for = self.recovery.drained_for();
        if committed && id > drained_for {
            // For every configuration committed since the last drain, in turn: one that came
            // and went while this worker was not scheduled may be the one that blocked a
            // region a transaction held here writes (the next one, making it active again,
            // would say that transaction needs no recovery, and its locks would stay).
            match self.node.committed_after(drained_for) {
                Some(configs) => {
                    for config in configs {
                        self.drain_for(config);
                    }
                }
                None => {
                    tracing::warn!(
                        node = %self.node.node_id(),
                        "more than {} configurations were committed since this node drained \
                         for configuration {drained_for}: it drains for the newest only",
                        acre_txn::config::COMMITTED_REMEMBERED
                    );
                    let config = self.node.config();
                    if config.id == id {
                        self.drain_for(config);
                    }
                }
            }
        }
        if !self.is_recovering() {
            return;
        }
        let now = self.node.clock().now();
        if now < self.next_recovery_look {
            return;
        }
        self.next_recovery_look = now + RECOVERY_RETRY_AFTER;
        self.find_recovering(now);
        self.advance_regions(now);
    }

    /// Drain (docs/failures.md#drain): raises the rings' fence to `config`, then handles every
    /// record already in the rings, after which records of transactions that need recovery in
    /// `config` are refused. A coordinator whose COMMIT-BACKUP lands after the fence went up
    /// reads it back and leaves its transaction to recovery rather than count the record.
    fn drain_for(&mut self, config: Arc<Configuration>) {
        let me = self.node.node_id();
        self.inbox.raise_fence(config.id);
        self.drain_rings();
        let id = config.id;
        self.resolver.drained(config.clone());
        let (mine, already) = self.recovery.drained(me, config);
        self.release_reservations_of_removed();
        let now = self.node.clock().now();
        for region in mine {
            self.recovery.regions.insert(region, RegionStep::AskAt(now));
        }
        if !already.is_empty() {
            // Reported again at once, for this configuration.
            let mut recovered = self.recovered.lock().expect(crate::POISONED);
            recovered.extend(already.iter().map(|&region| (region, id)));
        }
        // Every node settles what it holds of the transactions needing recovery, not only a
        // region's new primary; at once, also those a dead client's settlement was waiting to
        // ask about again (the new configuration may decide them).
        for (txn, asked) in self.asked.iter_mut() {
            if matches!(asked, Asked::Again(_))
                && self
                    .kept
                    .get(txn)
                    .is_some_and(|kept| self.recovery.needs(*txn, &kept.regions))
            {
                *asked = Asked::Again(now);
            }
        }
        self.find_recovering(now);
        let needing = self
            .kept
            .iter()
            .filter(|(txn, kept)| self.recovery.needs(**txn, &kept.regions))
            .count();
        if needing > 0 || !self.recovery.regions.is_empty() {
            tracing::info!(
                node = %me,
                "drained for configuration {id}: {needing} transactions here need recovery; \
                 recovering regions {:?}",
                self.recovery.regions.keys().collect::<Vec<_>>()
            );
        }
        self.next_recovery_look = now;
    }

    /// Hands back the slots removed members' coordinators reserved here for transactions that
    /// sent no LOCK here: none will now (a removed coordinator's records are refused), and
    /// nothing else would (recovery looks only at the transactions a node keeps records of;
    /// [`Serving::find_orphans`] does the same for dead clients).
    fn release_reservations_of_removed(&mut self) {
        let removed: Vec<NodeId> = self.recovery.removed().iter().copied().collect();
        for gone in removed {
            for txn in self.node.primary().allocating(gone) {
                if !self.kept.contains_key(&txn) {
                    self.voted.vote(txn);
                    self.node.primary().abort(txn);
                    tracing::info!(
                        node = %self.node.node_id(),
                        "handed back the slots {txn} reserved: its coordinator {gone} was removed"
                    );
                }
            }
        }
    }

    /// Handles every record in the rings; returns whether it reached their end (not if more
    /// than [`DRAIN_RECORDS_MAX`] came meanwhile).
    fn drain_rings(&mut self) -> bool {
        for _ in 0..DRAIN_RECORDS_MAX {
            match self.inbox.poll() {
                Ok(Some(message)) => self.handle(message),
                Ok(None) => return true,
                Err(e) => self.report_ring(&e),
            }
        }
        false
    }

    /// Starts reading the rings of senders that joined (a configuration added them).
    fn add_joined_rings(&mut self) {
        for ring in self.joined.take() {
            let me = self.node.node_id();
            tracing::info!(node = %me, "reading the ring of {}, which joined", ring.sender());
            self.inbox.add(ring);
        }
    }

    /// Whether the backups copying a region `txn` writes must hold its values before it is
    /// installed ([`crate::orphan::decide`]): when it began in the configuration this node
    /// drained for and needs no recovery there. Then its coordinator sent them its
    /// COMMIT-BACKUP (they were in its plan) and nothing starts their copies again, which may
    /// have read its objects before it locked them. A transaction begun earlier is one their
    /// copy's COPY-QUERY waited for, or was begun before they were backups at all, when nobody
    /// sent them its records (some of which may be truncated already, so they could never
    /// hold them all); one that needs recovery starts every copy again.
    fn copying_must_hold(&self, txn: TxnId, regions: &[RegionId]) -> bool {
        txn.config >= self.recovery.drained_for() && !self.recovery.needs(txn, regions)
    }

    /// Hands the resolver the transactions needing recovery that are due to be asked about.
    fn find_recovering(&mut self, now: Time) {
        let mut due = Vec::new();
        for (&txn, kept) in &self.kept {
            if !self.recovering.contains(&txn) && !self.recovery.needs(txn, &kept.regions) {
                continue;
            }
            let is_due = match self.asked.get(&txn) {
                None => true,
                Some(Asked::Again(at)) => now >= *at,
                Some(Asked::Pending | Asked::Settled) => false,
            };
            if is_due {
                due.push(Orphan {
                    txn,
                    regions: kept.regions.clone(),
                    holds: self.my_vote(txn, &kept.regions),
                    copying_must_hold: self.copying_must_hold(txn, &kept.regions),
                });
            }
        }
        for orphan in &due {
            self.voted.vote(orphan.txn);
            self.asked.insert(orphan.txn, Asked::Pending);
            self.recovering.insert(orphan.txn);
        }
        self.resolver.submit(due);
    }

    /// The answer to a RECOVERY-QUERY about a region this node recovers.
    fn answered(&mut self, answer: QueryAnswer) {
        if answer.config != self.recovery.drained_for() {
            return; // asked in an older configuration: asked again
        }
        if let Some(step) = self.recovery.regions.get_mut(&answer.region) {
            *step = if answer.quiet {
                RegionStep::Quiet
            } else {
                RegionStep::AskAt(self.node.clock().now() + RECOVERY_RETRY_AFTER)
            };
        }
    }

    /// Asks the other replicas of the regions being recovered, and serves those whose
    /// transactions are all decided (and installed here).
    fn advance_regions(&mut self, now: Time) {
        let me = self.node.node_id();
        let config = self.recovery.config().clone();
        let steps: Vec<(RegionId, RegionStep)> = self
            .recovery
            .regions
            .iter()
            .map(|(&region, &step)| (region, step))
            .collect();
        let mut quiet = Vec::new();
        for (region, step) in steps {
            match step {
                RegionStep::AskAt(at) if now >= at => {
                    let others: Vec<NodeId> = config
                        .placement(region)
                        .map(|p| p.replicas().filter(|&n| n != me).collect())
                        .unwrap_or_default();
                    self.recovery.regions.insert(region, RegionStep::Asking);
                    self.resolver.query(region, others);
                }
                RegionStep::Quiet => quiet.push(region),
                _ => {}
            }
        }
        if quiet.is_empty() {
            return;
        }
        // Whatever the other replicas copied here before they answered is in the rings.
        self.drain_rings();
        for region in quiet {
            // Undecided, or decided and not installed in this copy yet (a COMMIT-BACKUP of it
            // still held, unapplied; or its one-sided coordinator's install still to land here,
            // whose frees the allocator rebuilt now would never get back).
            let undecided = self.kept.iter().any(|(txn, kept)| {
                kept.regions.contains(&region)
                    && (self.recovering.contains(txn) || self.recovery.needs(*txn, &kept.regions))
                    && (kept.holds & vote::COMMIT_PRIMARY == 0
                        || self.backup.holds_in(*txn, region)
                        || self.node.primary().is_installing_in(*txn, region))
            });
            if undecided {
                self.recovery
                    .regions
                    .insert(region, RegionStep::AskAt(now + RECOVERY_RETRY_AFTER));
            } else {
                self.serve_region(region);
            }
        }
    }

    /// Makes this node the primary of `region`, whose transactions are recovered: its copy
    /// leaves the backup copies, its allocator recovers from the block headers (its blocks'
    /// slots are read while it serves, [`Serving::scan_allocators`]), and the node reports it
    /// recovered (the CM then installs a configuration where it is active).
    fn serve_region(&mut self, region: RegionId) {
        let me = self.node.node_id();
        let config_id = self.recovery.drained_for();
        // How long reading the allocator's block headers took (inside the blocked window).
        let recover_began = std::time::Instant::now();
        let mut rebuilt = false;
        if self.node.primary().region(region).is_none() {
            let Some(copy) = self.backup.remove(region) else {
                tracing::error!(
                    node = %me,
                    "{region}: this node is its new primary but holds no copy of it"
                );
                self.recovery.regions.remove(&region);
                return;
            };
            let block_bytes = self.recovery.config().block_bytes;
            match SlabAllocator::recover(&copy, block_bytes) {
                Ok(slab) => {
                    self.node.primary().add_region(copy, slab);
                    rebuilt = true;
                }
                Err(e) => {
                    tracing::error!(
                        node = %me,
                        "{region}: rebuilding its allocator failed: {e}; it stays blocked"
                    );
                    self.backup.add(copy, false);
                    self.recovery.regions.remove(&region);
                    return;
                }
            }
        } else if self.unrecovered.contains(&region)
            && let Some(copy) = self.node.primary().region(region)
        {
            // Its primary already, restarted from its files: the allocator it started with
            // came from the copy as the earlier run left it, with that run's allocations
            // undecided; recovered again now that they are settled. (A primary that did not
            // restart keeps its allocator: it holds reservations a rebuild would forget.)
            let block_bytes = self.recovery.config().block_bytes;
            match SlabAllocator::recover(&copy, block_bytes) {
                Ok(slab) => {
                    self.node.primary().replace_slab(region, slab);
                    rebuilt = true;
                }
                Err(e) => {
                    tracing::error!(
                        node = %me,
                        "{region}: rebuilding its allocator failed: {e}; it stays blocked"
                    );
                    self.recovery.regions.remove(&region);
                    return;
                }
            }
        }
        self.recovery.regions.remove(&region);
        self.recovery.note_recovered(region);
        self.unrecovered.remove(&region);
        self.stats.regions_recovered.fetch_add(1, Ordering::Release);
        self.recovered
            .lock()
            .expect(crate::POISONED)
            .push((region, config_id));
        let rebuild = if rebuilt {
            let blocks = self.node.primary().unscanned_blocks(region);
            self.allocators_recovering.insert(
                region,
                AllocatorRecovery {
                    began: std::time::Instant::now(),
                    blocks,
                    scanning: Duration::ZERO,
                },
            );
            format!(
                " (its allocator read the block headers in {:.1} ms and found {blocks} claimed \
                 blocks, whose slots it reads while it serves)",
                recover_began.elapsed().as_secs_f64() * 1e3
            )
        } else {
            String::new()
        };
        tracing::info!(
            node = %me,
            "{region} is recovered in configuration {config_id}{rebuild}: this node serves it \
             as primary once the CM makes it active"
        );
    }

    /// Allocator recovery, paced: every [`ALLOCATOR_SCAN_EVERY`], reads the next block of each
    /// recovering allocator, handles the records already in the rings (so that every free
    /// whose install a read saw is known to the primary, or its slot back), and finishes the
    /// reads; again until [`ALLOCATOR_SCAN_BUDGET`] is spent.
    fn scan_allocators(&mut self) {
        let now = self.node.clock().now();
        if now < self.next_allocator_scan {
            return;
        }
        if !self.node.primary().recovering_allocators() {
            self.allocators_recovering.clear();
            return;
        }
        self.next_allocator_scan = now + ALLOCATOR_SCAN_EVERY;
        let began = std::time::Instant::now();
        let mut recovered = Vec::new();
        while began.elapsed() < ALLOCATOR_SCAN_BUDGET {
            let reads = self.node.primary().read_unscanned_blocks();
            if reads.is_empty() {
                break;
            }
            acre_engine::pause::point("allocator.block_read");
            // Every ring, a new sender's too: its one-sided free needs no thread here.
            self.add_joined_rings();
            if !self.drain_rings() {
                break; // the reads are dropped, and read again next time
            }
            recovered.extend(self.node.primary().finish_block_reads(reads));
        }
        let spent = began.elapsed();
        let scanning = self.allocators_recovering.len().max(1) as u32;
        for recovery in self.allocators_recovering.values_mut() {
            recovery.scanning += spent / scanning;
        }
        let me = self.node.node_id();
        for region in recovered {
            if let Some(recovery) = self.allocators_recovering.remove(&region) {
                tracing::info!(
                    node = %me,
                    "{region}'s allocator is recovered: the slots of its {} claimed blocks \
                     read in {:.1} ms from the region's recovery on, {:.1} ms of them reading",
                    recovery.blocks,
                    recovery.began.elapsed().as_secs_f64() * 1e3,
                    recovery.scanning.as_secs_f64() * 1e3
                );
            }
        }
    }

    fn ring(&mut self, sender: NodeId) -> &mut Retention {
        self.rings.entry(sender).or_default()
    }

    /// TRUNCATE of `txn`: a backup applies it; every node drops its records. Returns whether
    /// it did (a backup that cannot apply keeps both).
    fn truncate(&mut self, txn: TxnId) -> bool {
        self.stats.truncated.fetch_add(1, Ordering::Release);
        match self.backup.apply(txn) {
            Ok(applied) => {
                self.stats
                    .applied
                    .fetch_add(applied.installed as u64, Ordering::Relaxed);
                self.forget(txn);
                self.recovery.truncations.record(txn);
                true
            }
            Err(e) => {
                // The copy lacks a committed update. The transaction stays held and its
                // records stay in the ring (pinning it) for repair or recovery: never lose it.
                self.stats.apply_failures.fetch_add(1, Ordering::Release);
                tracing::error!(
                    node = %self.node.node_id(),
                    "applying {txn} to the backup copies failed, keeping it and its records: {e}"
                );
                false
            }
        }
    }

    fn forget(&mut self, txn: TxnId) {
        self.asked.remove(&txn);
        self.unanswered.remove(&txn);
        self.recovering.remove(&txn);
        self.recovery.decided.remove(&txn);
        let kept = self.kept.remove(&txn).unwrap_or_default();
        for (sender, pos) in kept.records {
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
