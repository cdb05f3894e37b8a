//! [`CmGroup`]: this process's seat in the CM's Raft group. It runs one [`CmReplica`] over the
//! [CM links](crate::net), ticks it on the process's [`Clock`], and lets other threads install
//! configurations by compare-and-set, ask who leads, hand the leadership to another replica
//! (the manager's stand-down), and wait for the applied configuration or the leadership to
//! change (docs/failures.md#configuration-manager).
//!
//! # Who owns what
//!
//! The process owns its [`Links`] (one per process, whether or not it hosts a CM replica) and
//! shares them as an `Arc`: the group sends Raft messages on them, the member side sends its
//! NEW-CONFIG acknowledgements and probe replies on them. A process has one [`Inbox`], and the
//! group takes it: its thread is the only reader, steps the Raft envelopes and hands every
//! other envelope (NEW-CONFIG, probes and their answers) to the receiver [`CmGroup::start`]
//! returns, where the owner consumes them. [`CmGroup::shutdown`] gives the inbox back, so the
//! owner can go on reading it, or start the group again on the same links.
//!
//! # Raft ids
//!
//! A replica's raft id is its node id (`u64::from(node.0)`): raft wants ids above 0, which is
//! why node 0 cannot host a CM replica, and using the node id itself means a raft message's
//! `from` can be checked against the node its link proved without a table.
//!
//! # Membership
//!
//! The group's voters are what Raft applied ([`CmStatus::voters`], [`CmStatus::learners`]),
//! changed one conf change at a time by the leader ([`CmGroup::propose_conf_change`], decided by
//! [`crate::replacement`]); [`GroupOptions::voters`] only seeds a new group's storage. Raft
//! messages are taken from the group's voters and learners only, and a replica that joins
//! ([`CmGroup::join`]: the leader added its node, and the process starts it when the leader's
//! first message arrives) takes them from any node its links authenticated until the leader's
//! snapshot tells it the membership.
//!
//! # Threads
//!
//! One thread per group, named `cm-group-<node>`. It blocks in [`Inbox::recv_timeout`] until
//! a message arrives or the next tick is due (read on the clock, so a clock run faster or
//! slower by the harness ticks Raft faster or slower), never spinning; it then takes the
//! replica's lock, steps the messages it took (at most [`STEP_BATCH_MAX`]), ticks, runs
//! [`CmReplica::handle_ready`] and sends what it hands out.
//!
//! A thread that proposes ([`CmGroup::propose_install`]) does not wait for the group thread to
//! wake: it takes the same lock, proposes, and runs `handle_ready` itself, so its entry goes to
//! the followers at once rather than at the next tick. (The inbox has no way to wake its
//! reader for something that is not a message, and a second thread feeding one channel would
//! copy every message once more.) Whoever runs `handle_ready` hands the proposals' outcomes to
//! their waiters. The lock is held for steps, ticks and readies only, which include the fsyncs
//! Raft needs; readers of [`CmGroup::status`] never take it: the group publishes a
//! [`CmStatus`] behind a lock of its own after every ready.
//!
//! # Sending
//!
//! A message the links refuse at once (the peer's queue is full, or the peer is unknown) is
//! reported with [`CmReplica::report_unreachable`], so the leader probes that follower instead
//! of streaming appends into the void, and a refused snapshot also with
//! [`raft::SnapshotStatus::Failure`]. A snapshot the links took is reported
//! [`raft::SnapshotStatus::Finish`] at once: the links never say whether it arrived, and raft
//! sends a follower in the snapshot state nothing more until it hears one or the other. Saying
//! `Finish` is safe: the leader then probes the follower just past the snapshot, and a follower
//! that lost it rejects the probe, which makes the leader send the snapshot again. (The probe
//! goes on the same connection after the snapshot, so a snapshot that arrives is applied
//! first; across a reconnection the probe may overtake it, and is rejected like a loss.)
//!
//! # Failures
//!
//! A storage error stops the replica (it must not vote or acknowledge what it cannot keep):
//! proposals waiting fail with [`InstallError::Stopped`], [`CmStatus::stopped`] is set, the
//! error is logged, and the thread goes on routing the other envelopes to the owner, who
//! decides to restart the group from its directory or stop the process. Undecodable bytes and
//! raft messages that claim another sender than the link proved are logged and dropped; the
//! peer's other messages are still taken.

use crate::net::{Inbox, Links, RecvError};
use crate::replica::{
    CmReplica, Membership, ProposalId, ProposalOutcome, ProposeError, ReplicaConfig, ReplicaError,
};
use crate::state::Rejection;
use crate::storage::StorageOptions;
use crate::wire::{Envelope, envelope};
use acre_engine::NodeId;
use acre_engine::clock::{Clock, Time};
use acre_txn::config::Configuration;
use protobuf::Message as _;
pub use raft::eraftpb::ConfChangeType;
use raft::eraftpb::{Message, MessageType};
use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::mpsc;
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::thread::JoinHandle;
use std::time::Duration;

/// The default length of a Raft tick: 200 ms. The group thread wakes at every tick even when
/// idle and the leader sends a heartbeat every tick, so the tick is as long as the timeouts
/// below allow: the budget is an idle 5-node cluster under 2% of a core, leases included (at
/// 10 ms ticks and 50 ms heartbeats, five idle replicas cost about 1% of a core alone).
pub const TICK_DEFAULT: Duration = Duration::from_millis(200);
/// The default election timeout, in ticks: 1 s, drawn by raft in `[1, 2)` s. Long enough that
/// a leader whose fsync or scheduling stalls on a shared 2-core machine is not deposed by
/// `check_quorum`; a dead CM is replaced within about two seconds.
pub const ELECTION_TICKS_DEFAULT: usize = 5;
/// The default heartbeat interval, in ticks: 200 ms, five heartbeats per election timeout.
pub const HEARTBEAT_TICKS_DEFAULT: usize = 1;
/// Messages the group thread takes from the inbox before it handles a ready: bounds how long
/// a flood of messages keeps the replica's lock and a tick waiting.
pub const STEP_BATCH_MAX: usize = 256;
/// Ticks the group thread catches up at once after it fell behind the clock (a long fsync, a
/// descheduled process, a clock jumped forward). Beyond that the missed time is not ticked:
/// counting it all at once would fire every election timeout together.
pub const TICK_CATCH_UP_MAX: u32 = 5;
/// Non-Raft envelopes waiting for the owner to take them; more are dropped (and counted), as
/// the links drop what a full inbox cannot take: the senders retry.
pub const ROUTED_MESSAGES_MAX: usize = 1024;
/// Rounds of `handle_ready` per turn: a ready can leave another (a light ready's entries).
const READY_ROUNDS_MAX: usize = 4;

const POISONED: &str = "a thread panicked while holding the CM group's lock";

fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex.lock().expect(POISONED)
}

/// The raft id of the replica on `node` (module docs).
pub fn raft_id(node: NodeId) -> u64 {
    u64::from(node.0)
}

/// The node of raft id `id`, if it names one.
pub fn node_of(id: u64) -> Option<NodeId> {
    u16::try_from(id).ok().filter(|&n| n != 0).map(NodeId)
}

/// Where the replica of `node` keeps its files in the cluster directory: `<dir>/cm-n<id>/`.
pub fn replica_dir(cluster_dir: &Path, node: NodeId) -> PathBuf {
    cluster_dir.join(format!("cm-n{}", node.0))
}

/// `[n1, n2]`.
fn list(nodes: &[NodeId]) -> String {
    let names: Vec<String> = nodes.iter().map(|n| n.to_string()).collect();
    format!("[{}]", names.join(", "))
}

/// How a [`CmGroup`] runs.
#[derive(Clone, Debug)]
pub struct GroupOptions {
    /// This process's node: its replica's raft id is the node id.
    pub node: NodeId,
    /// Every replica of the group (this one too) and its CM links address, the same list on
    /// every replica. The group makes the others peers of the links; this node's own address
    /// is not used. Only a new replica's storage reads the list: from then on the group's
    /// membership is what Raft applied (docs/failures.md#configuration-manager). Empty for a
    /// replica that joins a running group ([`CmGroup::join`]).
    pub voters: Vec<(NodeId, SocketAddr)>,
    /// The replica's directory ([`replica_dir`]).
    pub dir: PathBuf,
    /// The length of one Raft tick, on [`GroupOptions::clock`].
    pub tick: Duration,
    /// Ticks without a leader before a follower stands (raft draws it in `[n, 2n)`).
    pub election_ticks: usize,
    /// Ticks between a leader's heartbeats; fewer than `election_ticks`.
    pub heartbeat_ticks: usize,
    pub storage: StorageOptions,
    /// The clock the ticks and the proposals' timeouts read.
    pub clock: Clock,
}

impl GroupOptions {
    /// The options of `node`'s replica with its files under `cluster_dir` ([`replica_dir`]),
    /// the default timings, fsync and the system clock.
    pub fn new(
        node: NodeId,
        voters: Vec<(NodeId, SocketAddr)>,
        cluster_dir: &Path,
    ) -> GroupOptions {
        GroupOptions {
            node,
            voters,
            dir: replica_dir(cluster_dir, node),
            tick: TICK_DEFAULT,
            election_ticks: ELECTION_TICKS_DEFAULT,
            heartbeat_ticks: HEARTBEAT_TICKS_DEFAULT,
            storage: StorageOptions::default(),
            clock: Clock::system(),
        }
    }

    fn check(&self) -> Result<(), String> {
        let mut nodes: Vec<NodeId> = self.voters.iter().map(|(node, _)| *node).collect();
        nodes.sort();
        if nodes.windows(2).any(|pair| pair[0] == pair[1]) {
            return Err(format!("a CM replica is listed twice in {}", list(&nodes)));
        }
        if let Some(bad) = nodes
            .iter()
            .find(|&&n| node_of(raft_id(n)).is_none() || n == NodeId::OBSERVER)
        {
            return Err(format!(
                "{bad} cannot host a CM replica (raft ids are node ids, above 0; the observer \
                 id is no node)"
            ));
        }
        if !nodes.is_empty() && !nodes.contains(&self.node) {
            return Err(format!(
                "{} is not one of the CM replicas {}",
                self.node,
                list(&nodes)
            ));
        }
        if self.tick.is_zero() {
            return Err("the tick is zero".into());
        }
        Ok(())
    }
}

/// A non-Raft envelope that arrived on the links, for the owner ([`CmGroup::start`]).
#[derive(Clone, Debug, PartialEq)]
pub struct LinkMessage {
    /// The node its link proved.
    pub from: NodeId,
    pub body: envelope::Body,
}

/// What the group knows now, published after every ready (module docs).
#[derive(Clone, Debug, Default)]
pub struct CmStatus {
    /// Grows by one at every change of anything below.
    pub epoch: u64,
    pub term: u64,
    /// The leader this replica knows of (itself when it leads).
    pub leader: Option<NodeId>,
    pub is_leader: bool,
    /// The applied configuration: durable at this replica, and its id only grows.
    pub configuration: Option<Arc<Configuration>>,
    /// The group's voters and learners as this replica applied them, in id order; both empty
    /// in a replica that joins and has not heard from the leader yet.
    pub voters: Vec<NodeId>,
    pub learners: Vec<NodeId>,
    /// The replica stopped on a storage error (logged): restart the group from its directory
    /// once the cause is fixed.
    pub stopped: bool,
}

impl CmStatus {
    /// The applied configuration's id: 0 before the first.
    pub fn configuration_id(&self) -> u64 {
        self.configuration.as_ref().map_or(0, |c| c.id)
    }
}

/// Counters of what the group thread did with what arrived.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct GroupStats {
    /// Raft messages stepped.
    pub raft_stepped_count: u64,
    /// Envelopes dropped: undecodable, a raft message from a node that is no CM replica or
    /// that claims another sender than its link proved, or one raft refused.
    pub refused_count: u64,
    /// Non-Raft envelopes handed to the owner.
    pub routed_count: u64,
    /// Non-Raft envelopes dropped because the owner's receiver was full or gone.
    pub routed_dropped_count: u64,
    /// Raft messages the links refused at once.
    pub send_refused_count: u64,
    /// Snapshots the links took (a follower too far behind the leader's log).
    pub snapshot_sent_count: u64,
}

#[derive(Default)]
struct Counters {
    raft_stepped: AtomicU64,
    refused: AtomicU64,
    routed: AtomicU64,
    routed_dropped: AtomicU64,
    send_refused: AtomicU64,
    snapshot_sent: AtomicU64,
}

fn count(counter: &AtomicU64) {
    counter.fetch_add(1, Ordering::Relaxed);
}

/// Why [`CmGroup::start`] failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum StartError {
    #[error("CM group options: {reason}; fix the list of CM replicas")]
    Options { reason: String },
    #[error("the CM replica of {node} cannot open: {source}")]
    Replica {
        node: NodeId,
        #[source]
        source: ReplicaError,
    },
    #[error("cannot start the CM group thread: {0}; the process is out of resources")]
    Thread(std::io::Error),
}

/// Why [`CmGroup::propose_install`] installed nothing, and what to do.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum InstallError {
    #[error(
        "the expected configuration is not current (current: {}); plan again from the current one",
        current.as_ref().map_or(0, |c| c.id)
    )]
    Stale { current: Option<Box<Configuration>> },
    #[error("this CM replica is not the leader (leader: {leader:?}); propose there")]
    NotLeader { leader: Option<NodeId> },
    #[error(
        "the proposal's fate is unknown (leadership changed); retry the compare-and-set: if it \
         was applied, the retry is stale with it as current"
    )]
    Lost,
    #[error(
        "not decided in time (no majority reachable?); its fate is unknown: retry the \
         compare-and-set"
    )]
    Timeout,
    #[error("the leader is busy (too many proposals, or a leadership transfer); retry shortly")]
    Busy,
    #[error("{0}")]
    Rejected(Rejection),
    #[error(
        "this process's CM replica stopped on a storage error (logged); restart it from its \
         directory or propose at another replica"
    )]
    Stopped,
}

// The owner shares the group among its threads (the manager, admin requests) behind an `Arc`.
const _: () = {
    const fn send_and_sync<T: Send + Sync>() {}
    send_and_sync::<CmGroup>();
};

/// Why [`CmGroup::transfer_leadership`] did nothing.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum TransferError {
    #[error("this CM replica is not the leader (leader: {leader:?}); ask there")]
    NotLeader { leader: Option<NodeId> },
    #[error("{node} is not another replica of this CM group; name one of the others")]
    NotAPeer { node: NodeId },
    #[error("this process's CM replica stopped on a storage error (logged)")]
    Stopped,
}

impl InstallError {
    /// What the manager makes of an install's result ([`crate::manager::Action::ProposeInstall`]):
    /// everything whose fate is unknown or that may succeed when proposed again (lost, timed
    /// out, not or no longer the leader, busy, stopped) is `Lost`, which the manager proposes
    /// again a bounded number of times before it stands down.
    pub fn outcome(result: Result<Configuration, InstallError>) -> crate::manager::InstallOutcome {
        use crate::manager::InstallOutcome;
        match result {
            Ok(installed) => InstallOutcome::Installed(installed),
            Err(InstallError::Stale {
                current: Some(current),
            }) => InstallOutcome::Stale(*current),
            // Nothing is installed, yet the proposal expected something: the proposer's bug.
            Err(e @ (InstallError::Stale { current: None } | InstallError::Rejected(_))) => {
                InstallOutcome::Rejected(e.to_string())
            }
            Err(
                InstallError::NotLeader { .. }
                | InstallError::Lost
                | InstallError::Timeout
                | InstallError::Busy
                | InstallError::Stopped,
            ) => InstallOutcome::Lost,
        }
    }
}

/// This process's handle on the CM's Raft group (module docs). Dropping it stops its thread.
pub struct CmGroup {
    shared: Arc<Shared>,
    thread: Option<JoinHandle<Inbox>>,
}

struct Shared {
    me: NodeId,
    links: Arc<Links>,
    clock: Clock,
    tick: Duration,
    stopping: AtomicBool,
    counters: Counters,
    driver: Mutex<Driver>,
    /// Signalled when an outcome is handed to `Driver::waiting`.
    decided: Condvar,
    status: Mutex<CmStatus>,
    status_changed: Condvar,
}

/// What the replica's lock guards.
struct Driver {
    /// `None` once stopped on a storage error.
    replica: Option<CmReplica>,
    /// Proposals whose proposer waits, and their outcome once decided.
    waiting: HashMap<ProposalId, Option<ProposalOutcome>>,
}

impl CmGroup {
    /// Opens the replica in `options.dir` and starts its thread, which takes `inbox` (the
    /// inbox of `links`) and hands every non-Raft envelope to the returned receiver. See the
    /// module docs for who owns what. On an error the inbox is dropped: a process whose
    /// replica cannot start binds its links again once the cause is fixed (the error says
    /// what it is), or runs without a replica.
    pub fn start(
        options: GroupOptions,
        links: Arc<Links>,
        inbox: Inbox,
    ) -> Result<(CmGroup, mpsc::Receiver<LinkMessage>), StartError> {
        CmGroup::start_with(options, links, inbox).map_err(|(e, _inbox)| e)
    }

    /// Starts the replica of a node that the group's leader is adding (its first Raft message
    /// arrived): `options.voters` is empty, and the replica learns the group's membership and
    /// state from the leader's snapshot. Its directory may hold the files of an earlier start
    /// as a learner, which it opens as any replica does. On an error the inbox is handed back,
    /// so the owner goes on reading it as a process without a replica.
    pub fn join(
        options: GroupOptions,
        links: Arc<Links>,
        inbox: Inbox,
    ) -> Result<(CmGroup, mpsc::Receiver<LinkMessage>), (StartError, Inbox)> {
        assert!(
            options.voters.is_empty(),
            "a joining replica knows no voters: {:?}",
            options.voters
        );
        CmGroup::start_with(options, links, inbox)
    }

    fn start_with(
        options: GroupOptions,
        links: Arc<Links>,
        inbox: Inbox,
    ) -> Result<(CmGroup, mpsc::Receiver<LinkMessage>), (StartError, Inbox)> {
        if let Err(reason) = options.check() {
            return Err((StartError::Options { reason }, inbox));
        }
        if links.me() != options.node {
            let reason = format!(
                "the links are {}'s, the replica {}'s",
                links.me(),
                options.node
            );
            return Err((StartError::Options { reason }, inbox));
        }
        let voters: Vec<NodeId> = options.voters.iter().map(|(node, _)| *node).collect();
        let config = ReplicaConfig {
            election_tick: options.election_ticks,
            heartbeat_tick: options.heartbeat_ticks,
            storage: options.storage.clone(),
            ..ReplicaConfig::new(
                raft_id(options.node),
                voters.iter().map(|&n| raft_id(n)).collect(),
            )
        };
        let replica = match CmReplica::open(&options.dir, config) {
            Ok(replica) => replica,
            Err(source) => {
                let node = options.node;
                return Err((StartError::Replica { node, source }, inbox));
            }
        };
        for &(node, addr) in &options.voters {
            if node != options.node {
                links.add_peer(node, addr);
            }
        }
        let shared = Arc::new(Shared {
            me: options.node,
            links,
            clock: options.clock,
            tick: options.tick,
            stopping: AtomicBool::new(false),
            counters: Counters::default(),
            driver: Mutex::new(Driver {
                replica: Some(replica),
                waiting: HashMap::new(),
            }),
            decided: Condvar::new(),
            status: Mutex::new(CmStatus::default()),
            status_changed: Condvar::new(),
        });
        publish(&shared, &lock(&shared.driver));
        let (routed, receiver) = mpsc::sync_channel(ROUTED_MESSAGES_MAX);
        // The inbox goes to the thread only once it runs: a spawn that fails hands it back.
        let (handover, handed) = mpsc::sync_channel::<Inbox>(1);
        let thread = {
            let shared = shared.clone();
            std::thread::Builder::new()
                .name(format!("cm-group-{}", options.node.0))
                .spawn(move || match handed.recv() {
                    Ok(inbox) => run(&shared, inbox, &routed),
                    Err(_) => unreachable!("the inbox is handed over once the thread runs"),
                })
        };
        let thread = match thread {
            Ok(thread) => thread,
            Err(e) => return Err((StartError::Thread(e), inbox)),
        };
        handover
            .send(inbox)
            .expect("the group thread waits for its inbox");
        Ok((
            CmGroup {
                shared,
                thread: Some(thread),
            },
            receiver,
        ))
    }

    pub fn node(&self) -> NodeId {
        self.shared.me
    }

    /// Installs `configuration` if `expected_id` is the current configuration's id (0 before
    /// the first); `configuration.id` must be `expected_id + 1`. Blocks until the outcome is
    /// known and durable here, or `timeout` on the group's clock has passed. Only the leader
    /// takes proposals: elsewhere this returns [`InstallError::NotLeader`] at once.
    pub fn propose_install(
        &self,
        expected_id: u64,
        configuration: &Configuration,
        timeout: Duration,
    ) -> Result<Configuration, InstallError> {
        let shared = &*self.shared;
        let deadline = shared.clock.now().saturating_add(timeout);
        let mut driver = lock(&shared.driver);
        let Some(replica) = driver.replica.as_mut() else {
            return Err(InstallError::Stopped);
        };
        let proposal = match replica.propose_install(expected_id, configuration) {
            Ok(proposal) => proposal,
            Err(ProposeError::NotLeader { leader_id }) => {
                return Err(InstallError::NotLeader {
                    leader: leader_id.and_then(node_of),
                });
            }
            Err(_) => return Err(InstallError::Busy),
        };
        driver.waiting.insert(proposal, None);
        drive(shared, &mut driver);
        loop {
            match driver.waiting.get_mut(&proposal) {
                Some(slot) => {
                    if let Some(outcome) = slot.take() {
                        driver.waiting.remove(&proposal);
                        return match outcome {
                            ProposalOutcome::Installed(installed) => Ok(installed),
                            ProposalOutcome::Rejected(Rejection::Stale { current, .. }) => {
                                Err(InstallError::Stale { current })
                            }
                            ProposalOutcome::Rejected(rejection) => {
                                Err(InstallError::Rejected(rejection))
                            }
                            ProposalOutcome::Lost => Err(InstallError::Lost),
                        };
                    }
                }
                // Removed when the replica stopped.
                None => return Err(InstallError::Stopped),
            }
            let wait = shared.clock.real_duration_until(deadline);
            if wait.is_zero() {
                driver.waiting.remove(&proposal);
                return Err(InstallError::Timeout);
            }
            driver = shared.decided.wait_timeout(driver, wait).expect(POISONED).0;
        }
    }

    /// Asks raft to hand this leader's role to `to` (the manager's stand-down), and returns
    /// at once: watch [`CmGroup::status`] for the outcome. The leader brings `to` up to date,
    /// then tells it to stand for election at once (without a pre-vote, and the others vote
    /// for it even though they hear from a leader). Meanwhile proposals are refused as
    /// [`InstallError::Busy`]; if `to` is not caught up within an election timeout, raft
    /// abandons the transfer and this replica leads on.
    pub fn transfer_leadership(&self, to: NodeId) -> Result<(), TransferError> {
        let shared = &*self.shared;
        if to == shared.me || !lock(&shared.status).voters.contains(&to) {
            return Err(TransferError::NotAPeer { node: to });
        }
        let mut driver = lock(&shared.driver);
        let Some(replica) = driver.replica.as_mut() else {
            return Err(TransferError::Stopped);
        };
        if !replica.is_leader() {
            return Err(TransferError::NotLeader {
                leader: replica.leader_id().and_then(node_of),
            });
        }
        // What `RawNode::transfer_leader` steps: the request as if `to` had sent it.
        let mut request = Message::default();
        request.set_msg_type(MessageType::MsgTransferLeader);
        request.from = raft_id(to);
        request.to = raft_id(shared.me);
        if let Err(e) = replica.step(request) {
            panic!("raft refused a leader transfer to a voter: {e}");
        }
        drive(shared, &mut driver);
        Ok(())
    }

    /// The group's membership as this replica sees it now, in raft ids (the leader's view
    /// tells which learners caught up), or `None` once the replica stopped.
    pub fn membership(&self) -> Option<Membership> {
        lock(&self.shared.driver)
            .replica
            .as_ref()
            .map(CmReplica::membership)
    }

    /// Proposes one change of the group's membership at this replica, which must lead
    /// ([`CmReplica::propose_conf_change`]), and returns without waiting: it takes effect when
    /// applied; watch [`CmGroup::status`]'s voters and learners.
    pub fn propose_conf_change(
        &self,
        change: ConfChangeType,
        node: NodeId,
    ) -> Result<(), InstallError> {
        let shared = &*self.shared;
        let mut driver = lock(&shared.driver);
        let Some(replica) = driver.replica.as_mut() else {
            return Err(InstallError::Stopped);
        };
        match replica.propose_conf_change(change, raft_id(node)) {
            Ok(()) => {}
            Err(ProposeError::NotLeader { leader_id }) => {
                return Err(InstallError::NotLeader {
                    leader: leader_id.and_then(node_of),
                });
            }
            Err(_) => return Err(InstallError::Busy),
        }
        drive(shared, &mut driver);
        Ok(())
    }

    /// What the group knows now.
    pub fn status(&self) -> CmStatus {
        lock(&self.shared.status).clone()
    }

    /// Waits until the status changes past `epoch` (a [`CmStatus::epoch`] seen before), or
    /// `timeout` on the group's clock has passed, and returns the status then. The manager
    /// watches the applied configuration and the leadership with it:
    /// `loop { status = group.wait_status(status.epoch, t); ... }`.
    pub fn wait_status(&self, epoch: u64, timeout: Duration) -> CmStatus {
        let shared = &*self.shared;
        let deadline = shared.clock.now().saturating_add(timeout);
        let mut status = lock(&shared.status);
        loop {
            if status.epoch > epoch {
                return status.clone();
            }
            let wait = shared.clock.real_duration_until(deadline);
            if wait.is_zero() {
                return status.clone();
            }
            status = shared
                .status_changed
                .wait_timeout(status, wait)
                .expect(POISONED)
                .0;
        }
    }

    /// The leader this replica knows of.
    pub fn leader(&self) -> Option<NodeId> {
        lock(&self.shared.status).leader
    }

    pub fn is_leader(&self) -> bool {
        lock(&self.shared.status).is_leader
    }

    pub fn term(&self) -> u64 {
        lock(&self.shared.status).term
    }

    /// The applied configuration.
    pub fn configuration(&self) -> Option<Arc<Configuration>> {
        lock(&self.shared.status).configuration.clone()
    }

    /// The links the group sends on (shared with the owner).
    pub fn links(&self) -> &Arc<Links> {
        &self.shared.links
    }

    pub fn stats(&self) -> GroupStats {
        let load = |counter: &AtomicU64| counter.load(Ordering::Relaxed);
        let counters = &self.shared.counters;
        GroupStats {
            raft_stepped_count: load(&counters.raft_stepped),
            refused_count: load(&counters.refused),
            routed_count: load(&counters.routed),
            routed_dropped_count: load(&counters.routed_dropped),
            send_refused_count: load(&counters.send_refused),
            snapshot_sent_count: load(&counters.snapshot_sent),
        }
    }

    /// Stops the thread (within one tick) and joins it, closes the replica's files and gives
    /// the inbox back to the owner.
    pub fn shutdown(mut self) -> Inbox {
        self.stop().expect("stopped once")
    }

    fn stop(&mut self) -> Option<Inbox> {
        let thread = self.thread.take()?;
        self.shared.stopping.store(true, Ordering::SeqCst);
        let inbox = match thread.join() {
            Ok(inbox) => inbox,
            // The panic was printed; the thread broke an invariant.
            Err(_) => panic!("the CM group thread of node {} panicked", self.shared.me),
        };
        // Close the files now, not when the last handle on `shared` goes.
        lock(&self.shared.driver).replica = None;
        Some(inbox)
    }
}

impl Drop for CmGroup {
    fn drop(&mut self) {
        self.stop();
    }
}

impl std::fmt::Debug for CmGroup {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CmGroup")
            .field("node", &self.shared.me)
            .field("status", &self.status())
            .finish_non_exhaustive()
    }
}

/// The group thread (module docs).
fn run(shared: &Shared, inbox: Inbox, routed: &mpsc::SyncSender<LinkMessage>) -> Inbox {
    let mut next_tick = shared.clock.now().saturating_add(shared.tick);
    let mut batch: Vec<Message> = Vec::with_capacity(STEP_BATCH_MAX);
    while !shared.stopping.load(Ordering::SeqCst) {
        let wait = shared.clock.real_duration_until(next_tick);
        let mut received = inbox.recv_timeout(wait);
        let mut taken = 0;
        loop {
            match received {
                Ok(incoming) => {
                    if let Some(message) = accept(shared, incoming.from, &incoming.payload, routed)
                    {
                        batch.push(message);
                    }
                }
                Err(RecvError::Timeout) => break,
                Err(RecvError::Closed) => {
                    // Only when the links are gone, which the group's handle on them prevents.
                    tracing::error!(node = %shared.me, "CM links closed under the group");
                    return inbox;
                }
            }
            taken += 1;
            if taken == STEP_BATCH_MAX {
                break;
            }
            received = inbox.try_recv();
        }
        let mut driver = lock(&shared.driver);
        if let Some(replica) = driver.replica.as_mut() {
            for message in batch.drain(..) {
                let from = message.from;
                match replica.step(message) {
                    Ok(()) => count(&shared.counters.raft_stepped),
                    Err(e) => {
                        count(&shared.counters.refused);
                        tracing::warn!(node = %shared.me, from, "raft refused a message: {e}");
                    }
                }
            }
            next_tick = tick(shared, replica, next_tick);
        } else {
            // Stopped: the thread only routes, and wakes once a tick to see whether to stop.
            batch.clear();
            next_tick = shared.clock.now().saturating_add(shared.tick);
        }
        drive(shared, &mut driver);
    }
    inbox
}

/// Ticks `replica` for the ticks due by now; returns when the next one is due.
fn tick(shared: &Shared, replica: &mut CmReplica, mut next_tick: Time) -> Time {
    let now = shared.clock.now();
    if next_tick.saturating_duration_since(now) > shared.tick {
        // The clock was jumped back: tick from now rather than wait for it to come back.
        return now.saturating_add(shared.tick);
    }
    let mut ticks = 0;
    while now >= next_tick {
        if ticks == TICK_CATCH_UP_MAX {
            tracing::debug!(node = %shared.me, "CM group fell behind its clock; ticks skipped");
            return now.saturating_add(shared.tick);
        }
        replica.tick();
        ticks += 1;
        next_tick = next_tick.saturating_add(shared.tick);
    }
    next_tick
}

/// Decodes what `from` sent: a raft message to step, or a message for the owner, routed here.
fn accept(
    shared: &Shared,
    from: NodeId,
    payload: &[u8],
    routed: &mpsc::SyncSender<LinkMessage>,
) -> Option<Message> {
    let body = match Envelope::decode_from(payload) {
        Ok(body) => body,
        Err(e) => {
            count(&shared.counters.refused);
            tracing::warn!(node = %shared.me, %from, "dropped a CM link message: {e}");
            return None;
        }
    };
    let bytes = match body {
        envelope::Body::Raft(bytes) => bytes,
        body => {
            match routed.try_send(LinkMessage { from, body }) {
                Ok(()) => count(&shared.counters.routed),
                Err(mpsc::TrySendError::Full(message)) => {
                    count(&shared.counters.routed_dropped);
                    tracing::debug!(node = %shared.me, ?message, "the owner's queue is full");
                }
                // The owner takes no messages: they are dropped as the links drop theirs.
                Err(mpsc::TrySendError::Disconnected(_)) => {
                    count(&shared.counters.routed_dropped);
                }
            }
            return None;
        }
    };
    // From the group's replicas only, learners included; a replica that joins knows none
    // until the leader's snapshot names them, and takes what the links proved came from a
    // node of the cluster (ids are never reused, so only a leader that added it writes to it).
    let known = {
        let status = lock(&shared.status);
        (status.voters.is_empty() && status.learners.is_empty())
            || status.voters.contains(&from)
            || status.learners.contains(&from)
    };
    if !known {
        count(&shared.counters.refused);
        tracing::warn!(node = %shared.me, %from, "dropped a raft message from a node that is no CM replica");
        return None;
    }
    let message = match Message::parse_from_bytes(&bytes) {
        Ok(message) => message,
        Err(e) => {
            count(&shared.counters.refused);
            tracing::warn!(node = %shared.me, %from, "dropped an undecodable raft message: {e}");
            return None;
        }
    };
    if message.from != raft_id(from) || message.to != raft_id(shared.me) {
        count(&shared.counters.refused);
        tracing::warn!(
            node = %shared.me,
            %from,
            claimed_from = message.from,
            to = message.to,
            "dropped a raft message whose ends are not its link's"
        );
        return None;
    }
    Some(message)
}

/// Runs the replica's readies, sends their messages, hands out the outcomes and publishes the
/// status; stops the replica on a storage error.
fn drive(shared: &Shared, driver: &mut Driver) {
    let Driver {
        replica: slot,
        waiting,
    } = driver;
    let Some(replica) = slot.as_mut() else {
        return;
    };
    let mut failure = None;
    for _ in 0..READY_ROUNDS_MAX {
        if !replica.has_ready() {
            break;
        }
        // (to, snapshot, sent): what to tell raft once the ready is done with.
        let mut reports: Vec<(u64, bool, bool)> = Vec::new();
        let result = replica.handle_ready(&mut |message| {
            let to = message.to;
            let snapshot = message.get_msg_type() == MessageType::MsgSnapshot;
            let sent = send(shared, message);
            if snapshot || !sent {
                reports.push((to, snapshot, sent));
            }
        });
        for (to, snapshot, sent) in reports {
            if !sent {
                replica.report_unreachable(to);
            }
            if snapshot {
                // Module docs: a snapshot the links took is as good as delivered to raft.
                let status = if sent {
                    count(&shared.counters.snapshot_sent);
                    raft::SnapshotStatus::Finish
                } else {
                    raft::SnapshotStatus::Failure
                };
                replica.report_snapshot(to, status);
            }
        }
        if let Err(e) = result {
            failure = Some(e);
            break;
        }
    }
    if let Some(e) = failure {
        tracing::error!(
            node = %shared.me,
            "CM replica stopped: {e}; the others carry on, restart this one once fixed"
        );
        *slot = None;
        waiting.clear();
        shared.decided.notify_all();
        publish(shared, driver);
        return;
    }
    let mut decided = false;
    for (proposal, outcome) in replica.take_outcomes() {
        if let Some(waiter) = waiting.get_mut(&proposal) {
            *waiter = Some(outcome);
            decided = true;
        }
    }
    if decided {
        shared.decided.notify_all();
    }
    publish(shared, driver);
}

/// Sends a raft message on the links; false if they refused it.
fn send(shared: &Shared, message: Message) -> bool {
    let to = message.to;
    let Some(node) = node_of(to) else {
        panic!("raft addressed a message to id {to}, which is no node");
    };
    let bytes = message
        .write_to_bytes()
        .expect("raft's own messages encode");
    match shared
        .links
        .send(node, Envelope::new(envelope::Body::Raft(bytes)).encode())
    {
        Ok(()) => true,
        Err(e) => {
            count(&shared.counters.send_refused);
            tracing::debug!(node = %shared.me, "raft message not sent: {e}");
            false
        }
    }
}

/// Publishes the replica's status if it changed.
fn publish(shared: &Shared, driver: &Driver) {
    let mut status = lock(&shared.status);
    let mut next = status.clone();
    match &driver.replica {
        Some(replica) => {
            next.term = replica.term();
            next.leader = replica.leader_id().and_then(node_of);
            next.is_leader = replica.is_leader();
            let membership = replica.membership();
            let nodes =
                |ids: &[u64]| -> Vec<NodeId> { ids.iter().filter_map(|&id| node_of(id)).collect() };
            next.voters = nodes(&membership.voters);
            next.learners = nodes(&membership.learners);
            let id = replica.configuration().map_or(0, |c| c.id);
            let current = status.configuration_id();
            assert!(
                id >= current,
                "the applied configuration went back: id={id} current={current}"
            );
            if id != current {
                next.configuration = replica.configuration().cloned().map(Arc::new);
            }
        }
        None => {
            next.leader = None;
            next.is_leader = false;
            next.stopped = true;
        }
    }
    let changed = next.term != status.term
        || next.leader != status.leader
        || next.is_leader != status.is_leader
        || next.configuration_id() != status.configuration_id()
        || next.stopped != status.stopped
        || next.voters != status.voters
        || next.learners != status.learners;
    if changed {
        next.epoch = status.epoch + 1;
        *status = next;
        shared.status_changed.notify_all();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn options(node: u16, voters: &[u16]) -> GroupOptions {
        let addr: SocketAddr = "127.0.0.1:1".parse().unwrap();
        let voters = voters.iter().map(|&n| (NodeId(n), addr)).collect();
        GroupOptions::new(NodeId(node), voters, Path::new("/cluster"))
    }

    #[test]
    fn raft_ids_are_node_ids_above_zero() {
        assert_eq!(raft_id(NodeId(7)), 7);
        assert_eq!(node_of(7), Some(NodeId(7)));
        assert_eq!(node_of(0), None);
        assert_eq!(node_of(1 << 16), None);
        assert_eq!(options(2, &[1, 2, 3]).dir, PathBuf::from("/cluster/cm-n2"));
    }

    #[test]
    fn install_results_map_to_what_the_manager_expects() {
        use crate::manager::InstallOutcome;
        let nodes = (1..=3).map(NodeId).collect();
        let config = Configuration::place(4, nodes, vec![], 1, 1, 1 << 20, 4096).unwrap();
        assert_eq!(
            InstallError::outcome(Ok(config.clone())),
            InstallOutcome::Installed(config.clone())
        );
        let stale = InstallError::Stale {
            current: Some(Box::new(config.clone())),
        };
        assert_eq!(
            InstallError::outcome(Err(stale)),
            InstallOutcome::Stale(config)
        );
        for unknown in [
            InstallError::Lost,
            InstallError::Timeout,
            InstallError::Busy,
            InstallError::Stopped,
            InstallError::NotLeader { leader: None },
        ] {
            assert_eq!(InstallError::outcome(Err(unknown)), InstallOutcome::Lost);
        }
        let invalid = InstallError::Rejected(Rejection::Invalid {
            reason: "no nodes".into(),
        });
        assert!(matches!(
            InstallError::outcome(Err(invalid)),
            InstallOutcome::Rejected(reason) if reason.contains("no nodes")
        ));
        assert!(matches!(
            InstallError::outcome(Err(InstallError::Stale { current: None })),
            InstallOutcome::Rejected(_)
        ));
    }

    #[test]
    fn options_that_cannot_run_say_why() {
        assert_eq!(options(2, &[1, 2, 3]).check(), Ok(()));
        let error = options(2, &[1, 3]).check().unwrap_err();
        assert!(
            error.contains("n2 is not one of the CM replicas [n1, n3]"),
            "{error}"
        );
        let error = options(2, &[2, 2, 3]).check().unwrap_err();
        assert!(error.contains("listed twice"), "{error}");
        let error = options(2, &[0, 2, 3]).check().unwrap_err();
        assert!(error.contains("cannot host a CM replica"), "{error}");
        let error = options(2, &[2, u16::MAX]).check().unwrap_err();
        assert!(error.contains("cannot host a CM replica"), "{error}");
        let mut zero_tick = options(2, &[2]);
        zero_tick.tick = Duration::ZERO;
        assert!(zero_tick.check().is_err());
    }
}
