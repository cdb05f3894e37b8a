//! A deterministic, seeded, single-threaded simulation of a CM group of 3 or 5 replicas, each
//! with its own directory: a network that loses, delays and reorders messages, partitions into
//! a majority and a minority side, and crashes with restarts from the files on disk (a crash
//! lands at a sync point and keeps only what was synced there, plus a torn part of the rest).
//! A random client proposes configuration installs from what the leader it asks has applied.
//!
//! Checked after every tick (or every `handle_ready`):
//! - never two different configurations with one id, whoever applied or reported them;
//! - a replica's configuration id never goes back, across its crashes;
//! - replicas that applied the same index agree on the configuration id it left;
//! - at most one leader per term;
//! - an install reported is the configuration proposed; a stale rejection names another id;
//! - a majority side (or a healthy group) installs a new configuration within
//!   [`LIVENESS_TICKS_MAX`] ticks;
//! - a minority side commits nothing past the majority side's durable logs at the split;
//! - at the end, healed and restarted, the replicas converge on one configuration.
//!
//! A failure prints its seed; `ACRE_TEST_SEED` replays it exactly, and `ACRE_CM_SIM_TRACE=1`
//! prints every delivered message and proposal of the replay.

use acre_cm::{
    CmReplica, Durability, ProposalId, ProposalOutcome, Rejection, ReplicaConfig, ReplicaError,
    StorageError, StorageOptions,
};
use acre_engine::addr::NodeId;
use acre_nvm_log::random::{SEED_ENV, SplitMix, pinned_seed};
use acre_txn::config::Configuration;
use raft::SnapshotStatus;
use raft::eraftpb::{Message, MessageType};
use std::collections::{BTreeMap, HashMap};
use std::hash::{BuildHasher, RandomState};
use std::path::PathBuf;

/// Set to print every delivered message (to follow a pinned seed).
const TRACE_ENV: &str = "ACRE_CM_SIM_TRACE";
/// Ticks of one phase of network conditions (healthy, partitioned, crashing).
const PHASE_TICKS: u64 = 150;
/// A side with a majority installs a new configuration within this many ticks: a few election
/// rounds (only the replicas with the longest logs can win, each round may lose a vote to the
/// network) and a commit. In a few hundred seeds the slowest took about 110 ticks; one with
/// many lost votes took over 150.
const LIVENESS_TICKS_MAX: u64 = 600;
/// Ticks the group gets at the end, all replicas up and connected, to agree.
const CONVERGE_TICKS_MAX: u64 = 300;
const ELECTION_TICKS: usize = 10;
const HEARTBEAT_TICKS: usize = 2;
/// How much later than the one before it each replica's election timeout falls.
const ELECTION_SPACING_TICKS: usize = 2 * DELAY_TICKS_MAX as usize + 1;
/// A replica's clock skips a tick once in this many (clocks drift).
const TICK_SKIP_ONE_IN: u64 = 8;
/// Messages arrive 0 to this many ticks after they are sent.
const DELAY_TICKS_MAX: u64 = 3;
/// The client proposes on one tick in this many.
const PROPOSE_ONE_IN: u64 = 4;
/// Phases of one seed's run.
const PHASE_COUNT: usize = 10;
/// Rounds of `handle_ready` per replica per tick (a replica with more work continues next tick).
const READY_ROUNDS_MAX: usize = 4;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Phase {
    Healthy,
    /// The first `majority` replicas of a shuffled order against the others.
    Partition,
    /// Up to f replicas crash and come back within the phase.
    Crashes,
}

struct Sim {
    rng: SplitMix,
    n: usize,
    _root: tempfile::TempDir,
    dirs: Vec<PathBuf>,
    configs: Vec<ReplicaConfig>,
    /// `None` while crashed.
    replicas: Vec<Option<CmReplica>>,
    /// Messages in flight: (deliver at tick, message).
    network: Vec<(u64, Message)>,
    /// The side of every replica while partitioned.
    side: Option<Vec<bool>>,
    loss_per_mille: u64,
    now: u64,
    /// Every configuration ever applied or reported anywhere, by id.
    installed: BTreeMap<u64, Configuration>,
    /// The configuration id after applying each index, as any replica applied it.
    applied: BTreeMap<u64, u64>,
    /// The last configuration id each replica applied (across its crashes).
    last_id: Vec<u64>,
    /// Proposals awaiting outcomes: what each proposed.
    proposed: HashMap<(u64, ProposalId), (u64, Configuration)>,
    max_commit: u64,
    installs_reported: u64,
    losses_reported: u64,
    crashes: u64,
    /// The most ticks a healthy group or a majority side took to install a configuration.
    slowest_progress_ticks: u64,
}

impl Sim {
    fn new(seed: u64, n: usize) -> Sim {
        let mut rng = SplitMix::new(seed);
        let root = sim_root();
        let voters: Vec<u64> = (1..=n as u64).collect();
        let dirs: Vec<PathBuf> = voters
            .iter()
            .map(|id| root.path().join(format!("cm-{id}")))
            .collect();
        // raft draws election timeouts from a thread-local generator: a range of width 1 per
        // replica, spaced further apart than a message's delay there and back and shuffled by
        // the seed, keeps the run deterministic and lets one candidate go first. Clocks that
        // skip ticks (below) do the rest of raft's randomisation.
        let mut order: Vec<usize> = (0..n).collect();
        shuffle(&mut rng, &mut order);
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
                        durability: Durability::OsCache,
                        compact_entry_count: 1 + rng.below(8),
                    },
                    ..ReplicaConfig::new(id, voters.clone())
                }
            })
            .collect();
        let replicas = (0..n)
            .map(|i| Some(CmReplica::open(&dirs[i], configs[i].clone()).unwrap()))
            .collect();
        Sim {
            rng,
            n,
            _root: root,
            dirs,
            configs,
            replicas,
            network: Vec::new(),
            side: None,
            loss_per_mille: 0,
            now: 0,
            installed: BTreeMap::new(),
            applied: BTreeMap::new(),
            last_id: vec![0; n],
            proposed: HashMap::new(),
            max_commit: 0,
            installs_reported: 0,
            losses_reported: 0,
            crashes: 0,
            slowest_progress_ticks: 0,
        }
    }

    fn f(&self) -> usize {
        (self.n - 1) / 2
    }

    fn connected(&self, a: usize, b: usize) -> bool {
        self.side.as_ref().is_none_or(|side| side[a] == side[b])
    }

    fn send(&mut self, message: Message) {
        let (from, to) = (message.from as usize - 1, message.to as usize - 1);
        if self.rng.below(1000) < self.loss_per_mille || !self.connected(from, to) {
            self.lost(&message);
            return;
        }
        let at = self.now + self.rng.range(0, DELAY_TICKS_MAX);
        self.network.push((at, message));
    }

    /// What a transport that notices a lost message tells the sender: a lost snapshot must be
    /// reported, or the leader waits for it forever.
    fn lost(&mut self, message: &Message) {
        if message.get_msg_type() == MessageType::MsgSnapshot
            && let Some(sender) = self.replicas[message.from as usize - 1].as_mut()
        {
            sender.report_snapshot(message.to, SnapshotStatus::Failure);
        }
    }

    fn crash(&mut self, i: usize) {
        if self.replicas[i].take().is_some() {
            self.crashes += 1;
        }
    }

    fn restart(&mut self, i: usize) {
        if self.replicas[i].is_none() {
            let replica = CmReplica::open(&self.dirs[i], self.configs[i].clone())
                .unwrap_or_else(|e| panic!("replica {} does not restart: {e}", i + 1));
            self.replicas[i] = Some(replica);
            self.observe(i);
        }
    }

    /// One tick: clocks, deliveries, maybe a proposal, readies, checks.
    fn tick(&mut self) {
        self.now += 1;
        for replica in self.replicas.iter_mut().flatten() {
            if self.rng.below(TICK_SKIP_ONE_IN) != 0 {
                replica.tick();
            }
        }
        let (due, later): (Vec<_>, Vec<_>) = std::mem::take(&mut self.network)
            .into_iter()
            .partition(|(at, _)| *at <= self.now);
        self.network = later;
        for (_, message) in due {
            let (from, to) = (message.from as usize - 1, message.to as usize - 1);
            let snapshot = message.get_msg_type() == MessageType::MsgSnapshot;
            let connected = self.connected(from, to);
            if std::env::var_os(TRACE_ENV).is_some() {
                eprintln!(
                    "t{} {:?} {}->{} term {} idx {} logterm {} commit {} reject {} up {} conn {connected}",
                    self.now,
                    message.get_msg_type(),
                    message.from,
                    message.to,
                    message.term,
                    message.index,
                    message.log_term,
                    message.commit,
                    message.reject,
                    self.replicas[to].is_some()
                );
            }
            match self.replicas[to].as_mut() {
                Some(replica) if connected => {
                    replica.step(message).expect("a message of the group steps");
                    if snapshot && let Some(sender) = self.replicas[from].as_mut() {
                        sender.report_snapshot(to as u64 + 1, SnapshotStatus::Finish);
                    }
                }
                _ => self.lost(&message),
            }
        }
        if self.rng.below(PROPOSE_ONE_IN) == 0 {
            self.propose();
        }
        for i in 0..self.n {
            self.ready(i);
        }
        self.check();
    }

    /// A client of the CM: asks a replica that believes it leads (there may be two, of two
    /// terms) to install the successor of what that replica has applied, or now and then of
    /// an older one (rejected as stale).
    fn propose(&mut self) {
        let leaders: Vec<usize> = (0..self.n)
            .filter(|&i| self.replicas[i].as_ref().is_some_and(|r| r.is_leader()))
            .collect();
        if leaders.is_empty() {
            return;
        }
        let i = leaders[self.rng.below(leaders.len() as u64) as usize];
        let stale = self.rng.below(8) == 0;
        let replica = self.replicas[i].as_mut().expect("a leader is up");
        let current = replica.state().configuration_id();
        let expected = if stale {
            current.saturating_sub(1)
        } else {
            current
        };
        let config = configuration(expected + 1, i as u64 + 1, self.n);
        let result = replica.propose_install(expected, &config);
        if std::env::var_os(TRACE_ENV).is_some() {
            eprintln!(
                "t{} replica {} proposes {expected}: {result:?}",
                self.now,
                i + 1
            );
        }
        if let Ok(proposal) = result {
            self.proposed
                .insert((i as u64 + 1, proposal), (expected, config));
        }
    }

    fn ready(&mut self, i: usize) {
        let mut outbox = Vec::new();
        for _ in 0..READY_ROUNDS_MAX {
            let Some(replica) = self.replicas[i].as_mut() else {
                break;
            };
            if !replica.has_ready() {
                break;
            }
            match replica.handle_ready(&mut |m| outbox.push(m)) {
                Ok(()) => {}
                Err(ReplicaError::Storage(StorageError::Crashed { .. })) => {
                    self.crash(i);
                    break;
                }
                Err(e) => panic!("replica {} failed: {e}", i + 1),
            }
        }
        for message in outbox {
            self.send(message);
        }
        if self.replicas[i].is_some() {
            self.observe(i);
        }
    }

    /// Checks replica `i`'s applied state and outcomes against everything seen so far.
    fn observe(&mut self, i: usize) {
        let replica = self.replicas[i].as_mut().expect("observed while up");
        let proposer = replica.id();
        let state = replica.state().clone();
        let outcomes = replica.take_outcomes();
        self.max_commit = self.max_commit.max(replica.commit_index());
        let id = state.configuration_id();
        assert!(
            id >= self.last_id[i],
            "replica {proposer}: configuration id went back from {} to {id}",
            self.last_id[i]
        );
        self.last_id[i] = id;
        if let Some(config) = &state.configuration {
            record(&mut self.installed, config);
        }
        let agreed = *self.applied.entry(state.applied_index).or_insert(id);
        assert_eq!(
            agreed, id,
            "replica {proposer}: after index {} applied configuration {id}, another replica {agreed}",
            state.applied_index
        );
        for (proposal, outcome) in outcomes {
            let (expected, config) = self
                .proposed
                .remove(&(proposer, proposal))
                .unwrap_or_else(|| panic!("replica {proposer}: outcome of unknown {proposal:?}"));
            match outcome {
                ProposalOutcome::Installed(applied) => {
                    assert_eq!(applied, config, "replica {proposer}: {proposal:?}");
                    record(&mut self.installed, &applied);
                    self.installs_reported += 1;
                }
                ProposalOutcome::Rejected(Rejection::Stale {
                    expected_id,
                    current,
                }) => {
                    assert_eq!(expected_id, expected);
                    let current_id = current.as_ref().map_or(0, |c| c.id);
                    assert_ne!(current_id, expected, "rejected as stale while current");
                    if let Some(current) = current {
                        record(&mut self.installed, &current);
                    }
                }
                ProposalOutcome::Rejected(other) => {
                    panic!("replica {proposer}: {proposal:?} rejected for {other}")
                }
                ProposalOutcome::Lost => self.losses_reported += 1,
            }
        }
    }

    fn check(&mut self) {
        for (i, replica) in self.replicas.iter().enumerate() {
            let Some(replica) = replica else { continue };
            // Election safety: at most one leader per term.
            if replica.is_leader() {
                for (j, other) in self.replicas.iter().enumerate() {
                    if let Some(other) = other
                        && j != i
                        && other.is_leader()
                    {
                        assert_ne!(replica.term(), other.term(), "two leaders in one term");
                    }
                }
            }
        }
    }

    /// The highest configuration id applied by the live replicas on `members`.
    fn progress(&self, members: &[usize]) -> u64 {
        members
            .iter()
            .filter_map(|&i| self.replicas[i].as_ref())
            .map(|r| r.state().configuration_id())
            .max()
            .unwrap_or(0)
    }

    /// Runs ticks until the replicas on `members` apply a configuration newer than the one
    /// they had, or `ticks` pass; returns the ticks it took.
    fn run_until_progress(&mut self, members: &[usize], ticks: u64) -> Option<u64> {
        let from = self.progress(members);
        for k in 1..=ticks {
            self.tick();
            if self.progress(members) > from {
                return Some(k);
            }
        }
        None
    }

    fn phase(&mut self, phase: Phase) {
        let all: Vec<usize> = (0..self.n).collect();
        match phase {
            Phase::Healthy => {
                self.loss_per_mille = self.rng.below(100);
                let took = self.run_until_progress(&all, LIVENESS_TICKS_MAX);
                assert!(
                    took.is_some(),
                    "healthy group made no progress in {LIVENESS_TICKS_MAX} ticks (loss {}‰):\n{}",
                    self.loss_per_mille,
                    self.describe()
                );
                self.slowest_progress_ticks = self.slowest_progress_ticks.max(took.unwrap());
                self.run(PHASE_TICKS.saturating_sub(took.unwrap()));
            }
            Phase::Partition => {
                self.loss_per_mille = self.rng.below(50);
                let mut order = all.clone();
                shuffle(&mut self.rng, &mut order);
                let majority = self.n / 2 + 1;
                let mut side = vec![false; self.n];
                for &i in &order[..majority] {
                    side[i] = true;
                }
                let minority: Vec<usize> = order[majority..].to_vec();
                // The minority side may still commit an entry that a replica on the majority
                // side holds (its old leader may count an acknowledgement that arrived before
                // the split: the f + 1 copies are there); nothing after the majority side's logs.
                let commit_at_start = self
                    .max_commit
                    .max(self.last_durable_index(&order[..majority]));
                if std::env::var_os(TRACE_ENV).is_some() {
                    eprintln!(
                        "t{} partition {:?} | {minority:?}, commit {commit_at_start}\n{}",
                        self.now,
                        &order[..majority],
                        self.describe()
                    );
                }
                self.side = Some(side);
                let start = self.now;
                let took = self.run_until_progress(&order[..majority], LIVENESS_TICKS_MAX);
                assert!(
                    took.is_some(),
                    "the majority side {:?} made no progress in {LIVENESS_TICKS_MAX} ticks:\n{}",
                    &order[..majority],
                    self.describe()
                );
                self.slowest_progress_ticks = self.slowest_progress_ticks.max(took.unwrap());
                while self.now < start + PHASE_TICKS {
                    self.tick();
                    for &i in &minority {
                        let commit = self.commit_index(i);
                        assert!(
                            commit <= commit_at_start,
                            "minority replica {} committed {commit} past {commit_at_start}",
                            i + 1
                        );
                    }
                }
                self.side = None;
            }
            Phase::Crashes => {
                self.loss_per_mille = self.rng.below(50);
                let mut order = all.clone();
                shuffle(&mut self.rng, &mut order);
                let victims: Vec<usize> =
                    order[..1 + self.rng.below(self.f() as u64) as usize].to_vec();
                let mut crash_at: Vec<u64> = victims
                    .iter()
                    .map(|_| self.rng.below(PHASE_TICKS / 2))
                    .collect();
                let restart_at: Vec<u64> = victims
                    .iter()
                    .map(|_| PHASE_TICKS / 2 + self.rng.below(PHASE_TICKS / 2))
                    .collect();
                for k in 0..PHASE_TICKS {
                    for (v, &i) in victims.iter().enumerate() {
                        if crash_at[v] == k {
                            crash_at[v] = u64::MAX;
                            match self.replicas[i].as_mut() {
                                // Half the crashes land inside the next sync.
                                Some(replica) if self.rng.below(2) == 0 => {
                                    replica.storage_mut().crash_at_next_sync();
                                }
                                _ => self.crash(i),
                            }
                        }
                        if restart_at[v] == k {
                            self.crash(i);
                            self.restart(i);
                        }
                    }
                    self.tick();
                }
            }
        }
    }

    fn run(&mut self, ticks: u64) {
        for _ in 0..ticks {
            self.tick();
        }
    }

    /// The last index in the durable logs of the replicas on `members`.
    fn last_durable_index(&self, members: &[usize]) -> u64 {
        members
            .iter()
            .filter_map(|&i| self.replicas[i].as_ref())
            .map(|r| r.storage().last_index())
            .max()
            .unwrap_or(0)
    }

    /// Every replica's view, one line each, for failure messages.
    fn describe(&self) -> String {
        let mut text = String::new();
        for (i, replica) in self.replicas.iter().enumerate() {
            let line = match replica {
                None => format!("replica {}: down\n", i + 1),
                Some(r) => format!(
                    "replica {}: term {} leader {:?} commit {} applied {} id {} snapshot {} \
                     last {}\n",
                    i + 1,
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

    fn commit_index(&self, i: usize) -> u64 {
        self.replicas[i].as_ref().map_or(0, |r| r.commit_index())
    }

    /// All replicas up and connected: they elect a leader, install one more configuration,
    /// and end up with the same applied state.
    fn converge(&mut self) {
        self.side = None;
        self.loss_per_mille = 0;
        for i in 0..self.n {
            self.restart(i);
        }
        let all: Vec<usize> = (0..self.n).collect();
        assert!(
            self.run_until_progress(&all, CONVERGE_TICKS_MAX).is_some(),
            "the healed group installs nothing in {CONVERGE_TICKS_MAX} ticks:\n{}",
            self.describe()
        );
        for _ in 0..CONVERGE_TICKS_MAX {
            self.tick();
            let states: Vec<_> = self
                .replicas
                .iter()
                .map(|r| r.as_ref().expect("all up").state().configuration_id())
                .collect();
            // The driver keeps proposing: the replicas agree between two installs.
            if states.iter().all(|&id| id == states[0]) {
                return;
            }
        }
        panic!("replicas do not converge:\n{}", self.describe());
    }
}

/// The replicas' directories: in memory (`/dev/shm`) where there is one. The simulation models
/// crashes itself and does not fsync, but on ext4 a rename over a file still flushes its data
/// (`auto_da_alloc`), which made the run wait on the disk most of its time.
fn sim_root() -> tempfile::TempDir {
    let shm = std::path::Path::new("/dev/shm");
    if shm.is_dir()
        && let Ok(root) = tempfile::Builder::new()
            .prefix("acre-cm-sim")
            .tempdir_in(shm)
    {
        return root;
    }
    tempfile::tempdir().unwrap()
}

fn record(installed: &mut BTreeMap<u64, Configuration>, config: &Configuration) {
    let known = installed.entry(config.id).or_insert_with(|| config.clone());
    assert_eq!(
        known, config,
        "two different configurations with id {}",
        config.id
    );
}

fn shuffle(rng: &mut SplitMix, items: &mut [usize]) {
    for k in (1..items.len()).rev() {
        let j = rng.below(k as u64 + 1) as usize;
        items.swap(k, j);
    }
}

/// A configuration `id` as `proposer` would build it: proposers differ in what they build, so
/// two installs of one id by two leaders would be told apart.
fn configuration(id: u64, proposer: u64, replicas: usize) -> Configuration {
    let node_count = 3 + ((id + proposer) % 3) as u16;
    let nodes = (1..=node_count).map(NodeId).collect();
    let mut config = Configuration::place(id, nodes, vec![], 1, 1, 1 << 20, 4096).unwrap();
    config.cm_replicas = (1..=replicas as u16).map(NodeId).collect();
    config.cm_leader = Some(NodeId(proposer as u16));
    config
}

/// Runs `run` for `count` fresh seeds, or the one `ACRE_TEST_SEED` pins, naming a failing one.
fn for_seeds(test: &str, count: usize, mut run: impl FnMut(u64)) {
    let seeds: Vec<u64> = match pinned_seed() {
        Some(seed) => vec![seed],
        None => {
            let mut rng = SplitMix::new(RandomState::new().hash_one(test));
            (0..count).map(|_| rng.next_u64()).collect()
        }
    };
    for seed in seeds {
        let outcome = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| run(seed)));
        if let Err(panic) = outcome {
            eprintln!(
                "{test}: failing seed {seed}: pin it with {SEED_ENV}={seed}, which replays the \
                 same operations in the same order"
            );
            std::panic::resume_unwind(panic);
        }
    }
}

fn simulate(seed: u64, n: usize, phase_count: usize) -> Sim {
    let mut sim = Sim::new(seed, n);
    for _ in 0..phase_count {
        let phase = match sim.rng.below(3) {
            0 => Phase::Healthy,
            1 => Phase::Partition,
            _ => Phase::Crashes,
        };
        sim.phase(phase);
    }
    sim.converge();
    sim
}

fn simulate_seeds(test: &str, seed_count: usize, n: usize) {
    let (mut crashes, mut installs, mut losses, mut slowest) = (0, 0, 0, 0);
    for_seeds(test, seed_count, |seed| {
        let sim = simulate(seed, n, PHASE_COUNT);
        assert!(
            sim.installs_reported > 0,
            "seed {seed}: no install reported"
        );
        crashes += sim.crashes;
        installs += sim.installs_reported;
        losses += sim.losses_reported;
        slowest = slowest.max(sim.slowest_progress_ticks);
    });
    eprintln!(
        "{test}: {crashes} crashes, {installs} installs and {losses} losses reported, progress \
         within {slowest} ticks"
    );
}

// Raft (Ongaro and Ousterhout, ATC'14) §5.2–5.4, with the thesis' pre-vote and check-quorum:
// one configuration per id, a majority side commits, a minority side never does.
#[test]
fn three_replicas_agree_under_loss_partitions_and_crashes() {
    simulate_seeds("three_replicas_agree", 16, 3);
}

#[test]
fn five_replicas_agree_under_loss_partitions_and_crashes() {
    simulate_seeds("five_replicas_agree", 8, 5);
}
