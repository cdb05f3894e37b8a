//! The CM of the transaction simulation ([`crate::sim_txn`]): a Raft group of three in-process
//! [`CmReplica`]s, each over its own directory, driven by the test thread that plays the CM's
//! reconfiguration driver. It ticks the replicas, handles their readies and carries their
//! messages itself, as the cm crate's own simulation does (`cm/tests/it/sim.rs`, which its
//! crate's tests keep to themselves); every configuration the simulation installs on the
//! nodes is committed here first, by compare-and-set on the configuration id.
//!
//! The network delays messages by 0 to [`DELAY_TICKS_MAX`] ticks and loses only what goes to
//! or comes from a crashed replica (a lost snapshot is reported to its sender, as a transport
//! that notices must). Every tick also costs [`TICK`] of real time, so that an election after
//! a crashed leader is time in which the cluster waits for its CM, as it would.
//!
//! A crash of the leader ([`CrashPoint`]) drops the replica and its volatile state, at the
//! point of a proposal the schedule names, or inside the sync that makes the proposal durable
//! (what was written before the crash stays, torn). The crashed replica restarts from its
//! directory after a number of ticks, or stays down until the caller brings it back
//! ([`CmGroupSim::restart_down`]); the other two elect a new leader meanwhile.
//!
//! Checked as it runs: a replica's configuration id never goes back (across its crashes), two
//! configurations never share an id, at most one leader per term, and
//! [`CmGroupSim::assert_committed`] tells the caller whether a configuration it is about to
//! install on the nodes is one the group committed.

use acre_cm::{
    CmReplica, Durability, ProposalId, ProposalOutcome, RaftMessage, RaftMessageType, Rejection,
    ReplicaConfig, ReplicaError, SnapshotStatus, StorageError, StorageOptions,
};
use acre_engine::addr::NodeId;
use acre_nvm_log::random::SplitMix;
use acre_txn::Configuration;
use std::collections::{BTreeMap, HashMap};
use std::fmt;
use std::path::PathBuf;
use std::time::Duration;

/// Replicas of the group: one crash at a time leaves a majority.
pub const REPLICA_COUNT: usize = 3;
/// The node id of the first replica: the replicas are standalone `acre cm` processes (neither
/// memory nodes nor clients, so a node's crash is not a replica's), and a replica's raft id is
/// its node id, as in [`acre_cm::group`].
const FIRST_REPLICA_NODE: u16 = 201;
/// Real time one tick takes: an election (10 to 25 ticks) takes a few tens of milliseconds.
pub const TICK: Duration = Duration::from_millis(2);
const ELECTION_TICKS: usize = 10;
const HEARTBEAT_TICKS: usize = 2;
/// Messages arrive 0 to this many ticks after they are sent.
const DELAY_TICKS_MAX: u64 = 2;
/// How much later than the one before it each replica's election timeout falls (a range of
/// width 1 per replica keeps raft's draw deterministic, as in the cm crate's simulation).
const ELECTION_SPACING_TICKS: usize = 2 * DELAY_TICKS_MAX as usize + 1;
/// Bound on the ticks a leader takes to be elected and ready, or a proposal to be decided:
/// several election rounds, far more than a group that loses nothing but one replica needs.
const TICKS_MAX: u64 = 1000;
/// Rounds of `handle_ready` per replica per tick (a replica with more work continues next tick).
const READY_ROUNDS_MAX: usize = 4;
/// Entries between two compactions: small, so that restarts meet snapshots too.
const COMPACT_ENTRY_COUNT: u64 = 4;

/// Where, around one proposal, the leader crashes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CrashPoint {
    /// As it is about to propose: nothing of the proposal exists.
    BeforeProposal,
    /// Proposed, the entry in the leader's memory only: it is lost.
    BeforeSend,
    /// Inside the sync that makes the entry durable at the leader: its appends are sent (a
    /// leader sends them before it persists), its own copy may be torn.
    AtSync,
    /// The entry durable at the leader and sent, not yet committed: the next leader, which
    /// holds it, commits it.
    BeforeCommit,
    /// Committed and applied, its outcome reported to the CM, not yet installed on any node.
    AfterCommit,
}

impl CrashPoint {
    pub const ALL: [CrashPoint; 5] = [
        CrashPoint::BeforeProposal,
        CrashPoint::BeforeSend,
        CrashPoint::AtSync,
        CrashPoint::BeforeCommit,
        CrashPoint::AfterCommit,
    ];
}

impl fmt::Display for CrashPoint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            CrashPoint::BeforeProposal => "before its proposal",
            CrashPoint::BeforeSend => "after its proposal, before sending it",
            CrashPoint::AtSync => "inside the sync of its proposal",
            CrashPoint::BeforeCommit => "after its proposal is sent, before it commits",
            CrashPoint::AfterCommit => "after its proposal commits, before the nodes have it",
        })
    }
}

/// What became of [`CmGroupSim::install`].
#[derive(Clone, Debug)]
pub enum Install {
    /// Committed by the group: install it on the nodes.
    Installed(Configuration),
    /// Rejected (stale), or lost with a change of leader: plan again from
    /// [`CmGroupSim::committed`].
    NotInstalled(String),
    /// The leader crashed as asked, and with it the CM that ran there: whatever it knew and had
    /// not committed is gone. The next leader starts from [`CmGroupSim::committed`].
    LeaderCrashed,
}

/// A crashed replica: when it comes back, in ticks of the group (`None`: when the caller
/// says, [`CmGroupSim::restart_down`]).
#[derive(Clone, Copy, Debug)]
struct Down {
    index: usize,
    restart_at: Option<u64>,
}

/// The group and its network (module docs).
pub struct CmGroupSim {
    rng: SplitMix,
    _root: tempfile::TempDir,
    dirs: Vec<PathBuf>,
    configs: Vec<ReplicaConfig>,
    /// `None` while crashed.
    replicas: Vec<Option<CmReplica>>,
    /// Messages in flight: (deliver at tick, message).
    network: Vec<(u64, RaftMessage)>,
    down: Option<Down>,
    now: u64,
    /// Every configuration any replica applied, by id: what the group committed.
    applied: BTreeMap<u64, Configuration>,
    /// The last configuration id each replica applied (across its crashes).
    last_id: Vec<u64>,
    /// Outcomes reported, by the raft id of the replica that proposed and the proposal.
    outcomes: HashMap<(u64, ProposalId), ProposalOutcome>,
    /// Leader crashes so far.
    pub crash_count: u64,
}

impl CmGroupSim {
    /// Three fresh replicas (in `/dev/shm` where there is one), their election timeouts
    /// ordered by `seed`, which also draws every message's delay: the same calls give the
    /// same group.
    pub fn new(seed: u64) -> CmGroupSim {
        let mut rng = SplitMix::new(seed ^ 0xC3C3_5A5A_0F0F_9696);
        let root = replica_root();
        let voters: Vec<u64> = (0..REPLICA_COUNT as u64)
            .map(|index| u64::from(FIRST_REPLICA_NODE) + index)
            .collect();
        let dirs: Vec<PathBuf> = voters
            .iter()
            .map(|id| root.path().join(format!("cm-n{id}")))
            .collect();
        let mut order: Vec<usize> = (0..REPLICA_COUNT).collect();
        for k in (1..order.len()).rev() {
            let j = rng.below(k as u64 + 1) as usize;
            order.swap(k, j);
        }
        let configs: Vec<ReplicaConfig> = voters
            .iter()
            .zip(&order)
            .map(|(&id, &rank)| {
                let min = ELECTION_TICKS + rank * ELECTION_SPACING_TICKS;
                ReplicaConfig {
                    election_tick: ELECTION_TICKS,
                    heartbeat_tick: HEARTBEAT_TICKS,
                    min_election_tick: min,
                    max_election_tick: min + 1,
                    storage: StorageOptions {
                        // The crashes are modelled here (`crash_at_next_sync`), not by the OS.
                        durability: Durability::OsCache,
                        compact_entry_count: COMPACT_ENTRY_COUNT,
                    },
                    ..ReplicaConfig::new(id, voters.clone())
                }
            })
            .collect();
        let replicas = (0..REPLICA_COUNT)
            .map(|i| {
                Some(
                    CmReplica::open(&dirs[i], configs[i].clone())
                        .unwrap_or_else(|e| panic!("open CM replica {}: {e}", voters[i])),
                )
            })
            .collect();
        CmGroupSim {
            rng,
            _root: root,
            dirs,
            configs,
            replicas,
            network: Vec::new(),
            down: None,
            now: 0,
            applied: BTreeMap::new(),
            last_id: vec![0; REPLICA_COUNT],
            outcomes: HashMap::new(),
            crash_count: 0,
        }
    }

    /// The CM replicas' node ids, for a configuration's `cm_replicas`.
    pub fn replica_nodes() -> Vec<NodeId> {
        (0..REPLICA_COUNT as u16)
            .map(|index| NodeId(FIRST_REPLICA_NODE + index))
            .collect()
    }

    /// The node of the leader, once one is elected and has applied everything committed
    /// before its term ([`CmGroupSim::committed`]).
    pub fn leader_node(&mut self) -> NodeId {
        let index = self.ready_leader();
        node_of(self.replica(index).id())
    }

    /// The configuration the group committed last, as its leader applied it. The leader is
    /// waited for until it has committed an entry of its own term, the no-op raft appends
    /// when it is elected: then it has applied every entry committed before it (Raft §5.4.2),
    /// and a configuration a crashed leader committed is here.
    pub fn committed(&mut self) -> Configuration {
        let index = self.ready_leader();
        self.replica(index)
            .configuration()
            .cloned()
            .expect("the group was started with a configuration")
    }

    /// Compare-and-set: installs `next` if configuration `next.id - 1` is the one the group
    /// holds, through the leader; crashes the leader at `crash` if given.
    pub fn install(&mut self, next: &Configuration, crash: Option<CrashPoint>) -> Install {
        let index = self.ready_leader();
        if crash == Some(CrashPoint::BeforeProposal) {
            self.crash(index);
            return Install::LeaderCrashed;
        }
        let proposer = self.replica(index).id();
        let expected_id = next
            .id
            .checked_sub(1)
            .expect("configuration ids start at 1");
        let proposal = match self.replica_mut(index).propose_install(expected_id, next) {
            Ok(proposal) => proposal,
            Err(e) => return Install::NotInstalled(format!("not proposed: {e}")),
        };
        match crash {
            Some(CrashPoint::BeforeSend) => {
                self.crash(index);
                return Install::LeaderCrashed;
            }
            Some(CrashPoint::AtSync) => {
                self.replica_mut(index).storage_mut().crash_at_next_sync();
                self.ready(index);
                // The sync of this ready is where the crash lands.
                assert!(
                    self.replicas[index].is_none(),
                    "replica {proposer} did not crash at its sync"
                );
                return Install::LeaderCrashed;
            }
            Some(CrashPoint::BeforeCommit) => {
                self.ready(index);
                self.crash(index);
                return Install::LeaderCrashed;
            }
            Some(CrashPoint::BeforeProposal | CrashPoint::AfterCommit) | None => {}
        }
        self.ready(index);
        for _ in 0..TICKS_MAX {
            if let Some(outcome) = self.outcomes.remove(&(proposer, proposal)) {
                return match outcome {
                    ProposalOutcome::Installed(config)
                        if crash == Some(CrashPoint::AfterCommit) =>
                    {
                        assert_eq!(&config, next, "replica {proposer} installed another");
                        self.crash(index);
                        Install::LeaderCrashed
                    }
                    ProposalOutcome::Installed(config) => {
                        assert_eq!(&config, next, "replica {proposer} installed another");
                        Install::Installed(config)
                    }
                    ProposalOutcome::Rejected(Rejection::Stale { current, .. }) => {
                        Install::NotInstalled(format!(
                            "stale: configuration {} is current",
                            current.map_or(0, |c| c.id)
                        ))
                    }
                    ProposalOutcome::Rejected(other) => {
                        panic!(
                            "replica {proposer} rejected configuration {}: {other}",
                            next.id
                        )
                    }
                    ProposalOutcome::Lost => Install::NotInstalled("lost".into()),
                };
            }
            self.tick();
        }
        panic!(
            "the outcome of configuration {}'s proposal did not come in {TICKS_MAX} ticks:\n{}",
            next.id,
            self.describe()
        );
    }

    /// Brings back the replica that crashed and stays down, if any: it restarts from its
    /// directory.
    pub fn restart_down(&mut self) {
        if let Some(down) = self.down.take() {
            self.restart(down.index);
        }
    }

    /// Sets when the replica that crashed last comes back: `ticks` from now, or, with `None`,
    /// when the caller says ([`CmGroupSim::restart_down`]).
    pub fn restart_after(&mut self, ticks: Option<u64>) {
        if let Some(down) = self.down.as_mut() {
            down.restart_at = ticks.map(|ticks| self.now + ticks);
        }
    }

    /// Panics unless `config` is the configuration the group committed with its id: the only
    /// kind the CM may install on the nodes.
    pub fn assert_committed(&self, config: &Configuration) {
        match self.applied.get(&config.id) {
            Some(committed) => assert_eq!(
                committed, config,
                "configuration {} is about to be installed on the nodes, but the CM group \
                 committed another with that id",
                config.id
            ),
            None => panic!(
                "configuration {} is about to be installed on the nodes, but the CM group never \
                 committed it:\n{}",
                config.id,
                self.describe()
            ),
        }
    }

    /// One line per replica, for logs and failure messages.
    pub fn describe(&self) -> String {
        let mut text = String::new();
        for (i, replica) in self.replicas.iter().enumerate() {
            let id = self.configs[i].id;
            let line = match replica {
                None => format!("  CM replica {id}: down\n"),
                Some(r) => format!(
                    "  CM replica {id}: term {} leader {:?} commit {} applied {} configuration {} \
                     snapshot {} last {}\n",
                    r.term(),
                    r.leader_id(),
                    r.commit_index(),
                    r.state().applied_index,
                    r.state().configuration_id(),
                    r.storage().snapshot_index(),
                    r.storage().last_index(),
                ),
            };
            text.push_str(&line);
        }
        text
    }

    fn replica(&self, index: usize) -> &CmReplica {
        self.replicas[index].as_ref().expect("a replica that is up")
    }

    fn replica_mut(&mut self, index: usize) -> &mut CmReplica {
        self.replicas[index].as_mut().expect("a replica that is up")
    }

    /// Ticks until a replica leads and has committed and applied its whole log (an entry of
    /// its term among it); returns its index.
    fn ready_leader(&mut self) -> usize {
        for _ in 0..TICKS_MAX {
            let ready = self.replicas.iter().position(|r| {
                r.as_ref().is_some_and(|r| {
                    r.is_leader()
                        && !r.has_ready()
                        && r.commit_index() == r.storage().last_index()
                        && r.state().applied_index == r.commit_index()
                })
            });
            if let Some(index) = ready {
                return index;
            }
            self.tick();
        }
        panic!(
            "no CM leader ready in {TICKS_MAX} ticks:\n{}",
            self.describe()
        );
    }

    fn crash(&mut self, index: usize) {
        assert!(
            self.down.is_none(),
            "one CM replica down at a time: {:?} is",
            self.down
        );
        if self.replicas[index].take().is_some() {
            self.crash_count += 1;
        }
        self.down = Some(Down {
            index,
            restart_at: None,
        });
    }

    fn restart(&mut self, index: usize) {
        if self.replicas[index].is_none() {
            let replica = CmReplica::open(&self.dirs[index], self.configs[index].clone())
                .unwrap_or_else(|e| {
                    panic!(
                        "CM replica {} does not restart from its directory: {e}",
                        self.configs[index].id
                    )
                });
            self.replicas[index] = Some(replica);
            self.observe(index);
        }
    }

    /// One tick: clocks, restarts, deliveries, readies, checks.
    fn tick(&mut self) {
        std::thread::sleep(TICK);
        self.now += 1;
        if let Some(down) = self.down
            && down.restart_at.is_some_and(|at| at <= self.now)
        {
            self.down = None;
            self.restart(down.index);
        }
        for replica in self.replicas.iter_mut().flatten() {
            replica.tick();
        }
        let (due, later): (Vec<_>, Vec<_>) = std::mem::take(&mut self.network)
            .into_iter()
            .partition(|(at, _)| *at <= self.now);
        self.network = later;
        for (_, message) in due {
            let to = index_of(message.to);
            match self.replicas[to].as_mut() {
                // A message raft does not take is from a bad peer; there is none here.
                Some(replica) => replica
                    .step(message)
                    .unwrap_or_else(|e| panic!("CM replica {} refused a message: {e}", to + 1)),
                None => self.lost(&message),
            }
        }
        for index in 0..REPLICA_COUNT {
            self.ready(index);
        }
        self.check_leaders();
    }

    /// Handles replica `index`'s readies and sends what it hands out; a crash at a sync point
    /// drops it.
    fn ready(&mut self, index: usize) {
        let mut outbox = Vec::new();
        for _ in 0..READY_ROUNDS_MAX {
            let Some(replica) = self.replicas[index].as_mut() else {
                break;
            };
            if !replica.has_ready() {
                break;
            }
            match replica.handle_ready(&mut |m| outbox.push(m)) {
                Ok(()) => {}
                Err(ReplicaError::Storage(StorageError::Crashed { .. })) => {
                    self.crash(index);
                    break;
                }
                Err(e) => panic!("CM replica {} failed: {e}", self.configs[index].id),
            }
        }
        for message in outbox {
            self.send(message);
        }
        if self.replicas[index].is_some() {
            self.observe(index);
        }
    }

    fn send(&mut self, message: RaftMessage) {
        if self.replicas[index_of(message.to)].is_none() {
            self.lost(&message);
            return;
        }
        let at = self.now + self.rng.range(0, DELAY_TICKS_MAX + 1);
        self.network.push((at, message));
    }

    /// What a transport that notices a lost message tells its sender: a lost snapshot must
    /// be reported, or the leader waits for it forever.
    fn lost(&mut self, message: &RaftMessage) {
        if message.get_msg_type() == RaftMessageType::MsgSnapshot
            && let Some(sender) = self.replicas[index_of(message.from)].as_mut()
        {
            sender.report_snapshot(message.to, SnapshotStatus::Failure);
        }
    }

    /// Records replica `index`'s applied configuration and outcomes, and checks them.
    fn observe(&mut self, index: usize) {
        let replica = self.replicas[index].as_mut().expect("observed while up");
        let proposer = replica.id();
        let id = replica.state().configuration_id();
        assert!(
            id >= self.last_id[index],
            "CM replica {proposer}: configuration id went back from {} to {id}",
            self.last_id[index]
        );
        self.last_id[index] = id;
        let applied = replica.configuration().cloned();
        let outcomes = replica.take_outcomes();
        if let Some(config) = applied {
            record(&mut self.applied, &config);
        }
        for (proposal, outcome) in outcomes {
            if let ProposalOutcome::Installed(config) = &outcome {
                record(&mut self.applied, config);
            }
            self.outcomes.insert((proposer, proposal), outcome);
        }
    }

    /// Election safety: at most one leader per term.
    fn check_leaders(&self) {
        let leaders: Vec<&CmReplica> = self
            .replicas
            .iter()
            .flatten()
            .filter(|r| r.is_leader())
            .collect();
        for (k, a) in leaders.iter().enumerate() {
            for b in &leaders[k + 1..] {
                assert_ne!(a.term(), b.term(), "two CM leaders in one term");
            }
        }
    }
}

fn index_of(raft_id: u64) -> usize {
    let index = raft_id
        .checked_sub(u64::from(FIRST_REPLICA_NODE))
        .unwrap_or_else(|| panic!("raft id {raft_id} is no replica of the group"));
    assert!(
        index < REPLICA_COUNT as u64,
        "raft id {raft_id} is no replica of the group"
    );
    index as usize
}

fn node_of(raft_id: u64) -> NodeId {
    NodeId(u16::try_from(raft_id).expect("a replica's raft id is its node id"))
}

fn record(applied: &mut BTreeMap<u64, Configuration>, config: &Configuration) {
    let known = applied.entry(config.id).or_insert_with(|| config.clone());
    assert_eq!(
        known, config,
        "the CM group applied two different configurations with id {}",
        config.id
    );
}

/// The replicas' directories: in memory (`/dev/shm`) where there is one, so that the syncs
/// cost nothing (the crashes are modelled, not real).
fn replica_root() -> tempfile::TempDir {
    let shm = std::path::Path::new("/dev/shm");
    if shm.is_dir()
        && let Ok(root) = tempfile::Builder::new()
            .prefix("acre-sim-txn-cm")
            .tempdir_in(shm)
    {
        return root;
    }
    tempfile::tempdir().expect("a temporary directory for the CM replicas")
}
