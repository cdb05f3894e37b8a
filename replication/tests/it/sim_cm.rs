//! The CM of the transaction simulation ([`crate::sim_txn`]): a Raft group of three in-process
//! [`CmReplica`]s, each over its own directory, driven by the test thread that plays the CM's
//! reconfiguration driver. The group, its network and its clock are [`acre_cm::sim`]'s, as
//! in the cm crate's own simulation (`cm/tests/it/sim.rs`); this file adds what is the
//! transaction simulation's: every configuration it installs on the nodes is committed here
//! first, by compare-and-set on the configuration id, and the leader crashes where the
//! schedule says ([`CrashPoint`]).
//!
//! The network delays messages by 0 to [`DELAY_TICKS_MAX`] ticks and loses only what arrives
//! at a replica that is down (a lost snapshot is reported to its sender, as a transport that
//! notices must). Every tick also costs [`TICK`] of real time, so that an election after
//! a crashed leader is time in which the cluster waits for its CM, as it would.
//!
//! A crash of the leader ([`CrashPoint`]) drops the replica and its volatile state, at the
//! point of a proposal the schedule names, or inside the sync that makes the proposal durable
//! (what was written before the crash stays, torn). The crashed replica restarts from its
//! directory after a number of ticks, or stays down until the caller brings it back
//! ([`CmGroupSim::restart_down`]); the other two elect a new leader meanwhile.
//!
//! Checked as it runs ([`acre_cm::sim`]): a replica's configuration id never goes back (across
//! its crashes), two configurations never share an id, replicas that applied the same index
//! agree on its configuration, at most one leader per term; here, one replica down at a time,
//! and [`CmGroupSim::assert_committed`] tells the caller whether a configuration it is about to
//! install on the nodes is one the group committed.

use acre_cm::sim::{SimGroup, SimOptions, replica_configs};
use acre_cm::{CmReplica, ProposalOutcome, Rejection};
use acre_engine::addr::NodeId;
use acre_nvm_log::random::SplitMix;
use acre_txn::Configuration;
use std::fmt;
use std::time::Duration;

/// Replicas of the group: one crash at a time leaves a majority.
pub const REPLICA_COUNT: usize = 3;
/// The node id of the first replica: the replicas are standalone `acre cm` processes (neither
/// memory nodes nor clients, so a node's crash is not a replica's), and a replica's raft id is
/// its node id, as in [`acre_cm::group`].
const FIRST_REPLICA_NODE: u16 = 201;
/// Real time one tick takes: an election (10 to 25 ticks) takes a few tens of milliseconds.
pub const TICK: Duration = Duration::from_millis(2);
/// Messages arrive 0 to this many ticks after they are sent.
const DELAY_TICKS_MAX: u64 = 2;
/// Bound on the ticks a leader takes to be elected and ready, or a proposal to be decided:
/// several election rounds, far more than a group that loses nothing but one replica needs.
const TICKS_MAX: u64 = 1000;
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

/// The group and its network (module docs).
pub struct CmGroupSim {
    group: SimGroup,
    _root: tempfile::TempDir,
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
        let options = SimOptions {
            delay_ticks_max: DELAY_TICKS_MAX,
            tick_skip_one_in: None,
            compact_entry_count: COMPACT_ENTRY_COUNT,
            trace: false,
        };
        let configs = replica_configs(&voters, &options, &mut rng);
        let group = SimGroup::open(root.path(), configs, options, rng)
            .unwrap_or_else(|e| panic!("open the CM replicas: {e}"));
        CmGroupSim { group, _root: root }
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
                self.assert_none_down();
                self.replica_mut(index).storage_mut().crash_at_next_sync();
                self.group.handle_ready(index);
                // The sync of this ready is where the crash lands.
                assert!(
                    !self.group.is_up(index),
                    "replica {proposer} did not crash at its sync"
                );
                return Install::LeaderCrashed;
            }
            Some(CrashPoint::BeforeCommit) => {
                self.group.handle_ready(index);
                self.crash(index);
                return Install::LeaderCrashed;
            }
            Some(CrashPoint::BeforeProposal | CrashPoint::AfterCommit) | None => {}
        }
        self.group.handle_ready(index);
        for _ in 0..TICKS_MAX {
            if let Some(outcome) = self.group.take_outcome(proposer, proposal) {
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
        if let Some(index) = self.down() {
            self.group.restart(index);
        }
    }

    /// Sets when the replica that crashed last comes back: `ticks` from now, or, with `None`,
    /// when the caller says ([`CmGroupSim::restart_down`]).
    pub fn restart_after(&mut self, ticks: Option<u64>) {
        if let Some(index) = self.down() {
            let at = ticks.map(|ticks| self.group.now() + ticks);
            self.group.restart_at(index, at);
        }
    }

    /// Panics unless `config` is the configuration the group committed with its id: the only
    /// kind the CM may install on the nodes.
    pub fn assert_committed(&self, config: &Configuration) {
        match self.group.configurations().get(&config.id) {
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
        self.group
            .describe()
            .lines()
            .map(|line| format!("  CM {line}\n"))
            .collect()
    }

    fn replica(&self, index: usize) -> &CmReplica {
        self.group.replica(index).expect("a replica that is up")
    }

    fn replica_mut(&mut self, index: usize) -> &mut CmReplica {
        self.group.replica_mut(index).expect("a replica that is up")
    }

    /// The replica that is down, if one is.
    fn down(&self) -> Option<usize> {
        (0..REPLICA_COUNT).find(|&index| !self.group.is_up(index))
    }

    /// One crash at a time: the group keeps a majority.
    fn assert_none_down(&self) {
        assert!(
            self.down().is_none(),
            "one CM replica down at a time:\n{}",
            self.describe()
        );
    }

    /// Ticks until a replica leads and has committed and applied its whole log (an entry of
    /// its term among it); returns its index.
    fn ready_leader(&mut self) -> usize {
        for _ in 0..TICKS_MAX {
            let ready = (0..REPLICA_COUNT).position(|index| {
                self.group.replica(index).is_some_and(|r| {
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
        self.assert_none_down();
        self.group.crash(index);
    }

    /// One tick of the group, which costs [`TICK`] of real time.
    fn tick(&mut self) {
        std::thread::sleep(TICK);
        self.group.tick();
    }
}

fn node_of(raft_id: u64) -> NodeId {
    NodeId(u16::try_from(raft_id).expect("a replica's raft id is its node id"))
}

/// The replicas' directories, where [`acre_cm::sim::scratch_dir`] says (in memory where it
/// can: the crashes are modelled, not real).
fn replica_root() -> tempfile::TempDir {
    tempfile::Builder::new()
        .prefix("acre-sim-txn-cm")
        .tempdir_in(acre_cm::sim::scratch_dir())
        .or_else(|_| tempfile::tempdir())
        .expect("a temporary directory for the CM replicas")
}
