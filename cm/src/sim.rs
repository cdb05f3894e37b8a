//! The deterministic in-process network and driver of a group of [`CmReplica`]s, for seeded
//! simulations: one thread ticks the replicas, handles their readies and carries their
//! messages itself, so that a seed fixes every delay, loss and election and a failing run
//! replays. The cm crate's simulation under loss, partitions and crashes
//! (`cm/tests/it/sim.rs`) and the CM group of acre-replication's transaction simulation
//! (`replication/tests/it/sim_cm.rs`) drive their groups through it.
//!
//! The network delays every message by 0 to [`SimOptions::delay_ticks_max`] ticks, loses it
//! with the probability the caller sets ([`SimGroup::set_loss_per_mille`]), between the sides
//! of a partition ([`SimGroup::partition`]), and when its receiver is down as it arrives. Like
//! a transport that notices, it reports a lost snapshot to its sender as
//! [`SnapshotStatus::Failure`] (or the leader waits for it forever) and a delivered one as
//! [`SnapshotStatus::Finish`], as [`crate::group`] does. A crash ([`SimGroup::crash`], or a
//! sync that [`CmStorage::crash_at_next_sync`](crate::CmStorage::crash_at_next_sync) armed)
//! drops a replica and its volatile state; a restart reopens it from its directory.
//!
//! raft draws election timeouts from a thread-local generator: [`replica_configs`] gives each
//! replica a range of width 1, spaced further apart than a message's delay there and back and
//! shuffled by the seed, which keeps the run deterministic and lets one candidate go first.
//! Clocks that skip ticks ([`SimOptions::tick_skip_one_in`]) do the rest of raft's
//! randomisation.
//!
//! Checked as it runs, with a panic (a simulation's failed check, as a test's assertion):
//! - a replica's configuration id never goes back, across its crashes;
//! - never two different configurations with one id, whoever applied or reported them;
//! - replicas that applied the same index agree on the configuration id it left;
//! - at most one leader per term (after every [`SimGroup::handle_readies`]);
//! - a replica steps every message of the group, and reopens from its directory after a crash.
//!
//! What a simulation checks of the outcomes of its own proposals, it checks itself
//! ([`SimGroup::take_outcomes`]).

use crate::replica::{CmReplica, ProposalId, ProposalOutcome, ReplicaConfig, ReplicaError};
use crate::state::Rejection;
use crate::storage::{Durability, StorageError, StorageOptions};
use acre_nvm_log::random::SplitMix;
use acre_txn::config::Configuration;
use raft::SnapshotStatus;
use raft::eraftpb::{Message, MessageType};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

/// Ticks of a replica's election timeout before [`replica_configs`] spaces them.
pub const ELECTION_TICKS: usize = 10;
pub const HEARTBEAT_TICKS: usize = 2;
/// Rounds of `handle_ready` per replica per tick (a replica with more work continues next tick).
pub const READY_ROUNDS_MAX: usize = 4;
/// The unit of [`SimGroup::set_loss_per_mille`].
const LOSS_SCALE: u64 = 1000;

/// How a simulated group's network and clocks behave.
#[derive(Clone, Debug)]
pub struct SimOptions {
    /// Messages arrive 0 to this many ticks after they are sent.
    pub delay_ticks_max: u64,
    /// A replica's clock skips a tick once in this many (clocks drift); `None`: never.
    pub tick_skip_one_in: Option<u64>,
    /// Every replica's `compact_entry_count` as [`replica_configs`] sets it.
    pub compact_entry_count: u64,
    /// Print every delivered message to stderr, to follow a pinned seed.
    pub trace: bool,
}

/// The configurations of a group of `voters` (raft ids): their election timeouts spaced by
/// more than a message's delay there and back, in an order shuffled by `rng`, their storage
/// synced to the OS cache only (the simulation models crashes itself). The caller may adjust
/// them before [`SimGroup::open`].
pub fn replica_configs(
    voters: &[u64],
    options: &SimOptions,
    rng: &mut SplitMix,
) -> Vec<ReplicaConfig> {
    let spacing_ticks = 2 * options.delay_ticks_max as usize + 1;
    let mut order: Vec<usize> = (0..voters.len()).collect();
    shuffle(rng, &mut order);
    voters
        .iter()
        .zip(&order)
        .map(|(&id, &rank)| {
            let min = ELECTION_TICKS + rank * spacing_ticks;
            ReplicaConfig {
                election_tick: ELECTION_TICKS,
                heartbeat_tick: HEARTBEAT_TICKS,
                min_election_tick: min,
                max_election_tick: min + 1,
                storage: StorageOptions {
                    durability: Durability::OsCache,
                    compact_entry_count: options.compact_entry_count,
                },
                ..ReplicaConfig::new(id, voters.to_vec())
            }
        })
        .collect()
}

/// Where a simulation had best create its replicas' directories: `/dev/shm` (memory) where
/// there is one, else the system's temporary directory. The simulation models crashes itself
/// and does not fsync, but on ext4 a rename over a file still flushes its data
/// (`auto_da_alloc`), which made runs wait on the disk most of their time.
pub fn scratch_dir() -> PathBuf {
    let shm = Path::new("/dev/shm");
    if shm.is_dir() {
        shm.to_path_buf()
    } else {
        std::env::temp_dir()
    }
}

/// Shuffles `items` in place (Fisher-Yates), drawing from `rng`.
pub fn shuffle(rng: &mut SplitMix, items: &mut [usize]) {
    for k in (1..items.len()).rev() {
        let j = rng.below(k as u64 + 1) as usize;
        items.swap(k, j);
    }
}

/// An outcome a replica reported for one of its proposals.
#[derive(Clone, Debug)]
pub struct Reported {
    /// The raft id of the replica that proposed.
    pub replica_id: u64,
    pub proposal: ProposalId,
    pub outcome: ProposalOutcome,
}

/// A group of replicas, their network and their clock (module docs). Replicas are named by
/// their index in the configurations given to [`SimGroup::open`].
pub struct SimGroup {
    options: SimOptions,
    /// Draws every clock skip, loss and delay; the caller draws its own choices from it too,
    /// so that one seed fixes the whole run.
    rng: SplitMix,
    dirs: Vec<PathBuf>,
    configs: Vec<ReplicaConfig>,
    /// `None` while crashed.
    replicas: Vec<Option<CmReplica>>,
    /// When each crashed replica restarts by itself, if it does.
    restart_at: Vec<Option<u64>>,
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
    /// Outcomes reported and not yet taken, in the order they came.
    outcomes: Vec<Reported>,
    commit_index_max: u64,
    crash_count: u64,
}

impl SimGroup {
    /// Opens a replica per configuration (from [`replica_configs`]), each in its own
    /// directory under `root` (`cm-<raft id>`, kept across its crashes; the caller creates
    /// and removes `root`, under [`scratch_dir`] say), with `rng` for the network's draws.
    pub fn open(
        root: &Path,
        configs: Vec<ReplicaConfig>,
        options: SimOptions,
        rng: SplitMix,
    ) -> Result<SimGroup, ReplicaError> {
        let dirs: Vec<PathBuf> = configs
            .iter()
            .map(|config| root.join(format!("cm-{}", config.id)))
            .collect();
        let mut replicas = Vec::with_capacity(configs.len());
        for (dir, config) in dirs.iter().zip(&configs) {
            replicas.push(Some(CmReplica::open(dir, config.clone())?));
        }
        let count = configs.len();
        Ok(SimGroup {
            options,
            rng,
            dirs,
            configs,
            replicas,
            restart_at: vec![None; count],
            network: Vec::new(),
            side: None,
            loss_per_mille: 0,
            now: 0,
            installed: BTreeMap::new(),
            applied: BTreeMap::new(),
            last_id: vec![0; count],
            outcomes: Vec::new(),
            commit_index_max: 0,
            crash_count: 0,
        })
    }

    /// The generator of the group's draws, for the caller's own.
    pub fn rng(&mut self) -> &mut SplitMix {
        &mut self.rng
    }

    /// Ticks so far.
    pub fn now(&self) -> u64 {
        self.now
    }

    pub fn replica_count(&self) -> usize {
        self.replicas.len()
    }

    /// Replica `index`, `None` while it is down.
    pub fn replica(&self, index: usize) -> Option<&CmReplica> {
        self.replicas[index].as_ref()
    }

    pub fn replica_mut(&mut self, index: usize) -> Option<&mut CmReplica> {
        self.replicas[index].as_mut()
    }

    pub fn is_up(&self, index: usize) -> bool {
        self.replicas[index].is_some()
    }

    /// The index of the replica with raft id `raft_id`; panics if none has it.
    pub fn index_of(&self, raft_id: u64) -> usize {
        self.configs
            .iter()
            .position(|config| config.id == raft_id)
            .unwrap_or_else(|| panic!("raft id {raft_id} is no replica of the group"))
    }

    /// Messages sent from now on are lost with this probability, in thousandths.
    pub fn set_loss_per_mille(&mut self, loss_per_mille: u64) {
        assert!(
            loss_per_mille <= LOSS_SCALE,
            "loss_per_mille={loss_per_mille}"
        );
        self.loss_per_mille = loss_per_mille;
    }

    pub fn loss_per_mille(&self) -> u64 {
        self.loss_per_mille
    }

    /// Cuts the replicas at the indexes `side` off from the others until [`SimGroup::heal`]:
    /// what one side sends the other is lost, as sent or as it arrives.
    pub fn partition(&mut self, side: &[usize]) {
        let mut sides = vec![false; self.replicas.len()];
        for &index in side {
            sides[index] = true;
        }
        self.side = Some(sides);
    }

    pub fn heal(&mut self) {
        self.side = None;
    }

    fn connected(&self, a: usize, b: usize) -> bool {
        self.side.as_ref().is_none_or(|side| side[a] == side[b])
    }

    /// Crashes replica `index` (its files stay, as synced); it stays down until
    /// [`SimGroup::restart`] or [`SimGroup::restart_at`]. Returns whether it was up.
    pub fn crash(&mut self, index: usize) -> bool {
        self.restart_at[index] = None;
        let was_up = self.replicas[index].take().is_some();
        if was_up {
            self.crash_count += 1;
        }
        was_up
    }

    /// Reopens replica `index` from its directory if it is down, and checks what it applied.
    pub fn restart(&mut self, index: usize) {
        self.restart_at[index] = None;
        if self.replicas[index].is_none() {
            let replica = CmReplica::open(&self.dirs[index], self.configs[index].clone())
                .unwrap_or_else(|e| {
                    panic!(
                        "replica {} does not restart from its directory: {e}",
                        self.configs[index].id
                    )
                });
            self.replicas[index] = Some(replica);
            self.observe(index);
        }
    }

    /// Sets when crashed replica `index` restarts by itself: at the start of tick `tick`, or,
    /// with `None`, when the caller says.
    pub fn restart_at(&mut self, index: usize, tick: Option<u64>) {
        assert!(!self.is_up(index), "replica index {index} is up");
        self.restart_at[index] = tick;
    }

    /// One tick: [`SimGroup::advance`], then [`SimGroup::handle_readies`].
    pub fn tick(&mut self) {
        self.advance();
        self.handle_readies();
    }

    /// The first part of a tick: the replicas due restart, every clock ticks (or skips), and
    /// the messages due arrive. A client that proposes does so next, before
    /// [`SimGroup::handle_readies`] ends the tick.
    pub fn advance(&mut self) {
        self.now += 1;
        for index in 0..self.replicas.len() {
            if self.restart_at[index].is_some_and(|at| at <= self.now) {
                self.restart(index);
            }
        }
        for replica in self.replicas.iter_mut().flatten() {
            let skip = self
                .options
                .tick_skip_one_in
                .is_some_and(|one_in| self.rng.below(one_in) == 0);
            if !skip {
                replica.tick();
            }
        }
        let (due, later): (Vec<_>, Vec<_>) = std::mem::take(&mut self.network)
            .into_iter()
            .partition(|(at, _)| *at <= self.now);
        self.network = later;
        for (_, message) in due {
            self.deliver(message);
        }
    }

    fn deliver(&mut self, message: Message) {
        let (from, to) = (self.index_of(message.from), self.index_of(message.to));
        let snapshot = message.get_msg_type() == MessageType::MsgSnapshot;
        let connected = self.connected(from, to);
        if self.options.trace {
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
                // A message raft does not take is from a bad peer; there is none here.
                replica.step(message).unwrap_or_else(|e| {
                    panic!("replica {} refused a message: {e}", self.configs[to].id)
                });
                if snapshot && let Some(sender) = self.replicas[from].as_mut() {
                    sender.report_snapshot(self.configs[to].id, SnapshotStatus::Finish);
                }
            }
            _ => self.lost(&message),
        }
    }

    fn send(&mut self, message: Message) {
        let (from, to) = (self.index_of(message.from), self.index_of(message.to));
        // The loss is drawn for every message, lost or not otherwise, so that the draws do not
        // depend on who is connected.
        if self.rng.below(LOSS_SCALE) < self.loss_per_mille || !self.connected(from, to) {
            self.lost(&message);
            return;
        }
        let at = self.now + self.rng.range(0, self.options.delay_ticks_max);
        self.network.push((at, message));
    }

    /// What a transport that notices a lost message tells the sender.
    fn lost(&mut self, message: &Message) {
        if message.get_msg_type() == MessageType::MsgSnapshot {
            let from = self.index_of(message.from);
            if let Some(sender) = self.replicas[from].as_mut() {
                sender.report_snapshot(message.to, SnapshotStatus::Failure);
            }
        }
    }

    /// The end of a tick: every replica's readies, then the check of leaders.
    pub fn handle_readies(&mut self) {
        for index in 0..self.replicas.len() {
            self.handle_ready(index);
        }
        self.check_leaders();
    }

    /// Handles replica `index`'s readies (up to [`READY_ROUNDS_MAX`]) and sends what it hands
    /// out; a crash armed at a sync point drops it there.
    pub fn handle_ready(&mut self, index: usize) {
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
                Err(e) => panic!("replica {} failed: {e}", self.configs[index].id),
            }
        }
        for message in outbox {
            self.send(message);
        }
        if self.replicas[index].is_some() {
            self.observe(index);
        }
    }

    /// Checks replica `index`'s applied state and outcomes against everything seen so far.
    fn observe(&mut self, index: usize) {
        let replica = self.replicas[index].as_mut().expect("observed while up");
        let replica_id = replica.id();
        let state = replica.state().clone();
        let outcomes = replica.take_outcomes();
        self.commit_index_max = self.commit_index_max.max(replica.commit_index());
        let id = state.configuration_id();
        assert!(
            id >= self.last_id[index],
            "replica {replica_id}: configuration id went back from {} to {id}",
            self.last_id[index]
        );
        self.last_id[index] = id;
        if let Some(config) = &state.configuration {
            record(&mut self.installed, config);
        }
        let agreed = *self.applied.entry(state.applied_index).or_insert(id);
        assert_eq!(
            agreed, id,
            "replica {replica_id}: after index {} applied configuration {id}, another replica {agreed}",
            state.applied_index
        );
        for (proposal, outcome) in outcomes {
            match &outcome {
                ProposalOutcome::Installed(config) => record(&mut self.installed, config),
                ProposalOutcome::Rejected(Rejection::Stale {
                    current: Some(current),
                    ..
                }) => record(&mut self.installed, current),
                ProposalOutcome::Rejected(_) | ProposalOutcome::Lost => {}
            }
            self.outcomes.push(Reported {
                replica_id,
                proposal,
                outcome,
            });
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
                assert_ne!(a.term(), b.term(), "two leaders in one term");
            }
        }
    }

    /// The outcomes reported since the last call, in the order they came.
    pub fn take_outcomes(&mut self) -> Vec<Reported> {
        std::mem::take(&mut self.outcomes)
    }

    /// The outcome replica `replica_id` reported for `proposal`, if it has (and it was not
    /// taken).
    pub fn take_outcome(
        &mut self,
        replica_id: u64,
        proposal: ProposalId,
    ) -> Option<ProposalOutcome> {
        let k = self
            .outcomes
            .iter()
            .position(|r| r.replica_id == replica_id && r.proposal == proposal)?;
        Some(self.outcomes.remove(k).outcome)
    }

    /// Every configuration any replica applied or reported (installed, or current when it
    /// rejected a stale proposal), by id: what the group committed.
    pub fn configurations(&self) -> &BTreeMap<u64, Configuration> {
        &self.installed
    }

    /// The highest commit index any replica had when it was observed.
    pub fn commit_index_max(&self) -> u64 {
        self.commit_index_max
    }

    /// Replicas crashed so far (by [`SimGroup::crash`] or at a sync).
    pub fn crash_count(&self) -> u64 {
        self.crash_count
    }

    /// Every replica's view, one line each, for logs and failure messages.
    pub fn describe(&self) -> String {
        let mut text = String::new();
        for (config, replica) in self.configs.iter().zip(&self.replicas) {
            let line = match replica {
                None => format!("replica {}: down\n", config.id),
                Some(r) => format!(
                    "replica {}: term {} leader {:?} commit {} applied {} configuration {} \
                     snapshot {} last {}\n",
                    config.id,
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
}

fn record(installed: &mut BTreeMap<u64, Configuration>, config: &Configuration) {
    let known = installed.entry(config.id).or_insert_with(|| config.clone());
    assert_eq!(
        known, config,
        "two different configurations with id {}",
        config.id
    );
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Ticks a group may take to elect a leader: a few election rounds.
    const ELECTION_WAIT_TICKS_MAX: u64 = 500;

    /// (tick, raft id, term) of every leader a group of three elects from `seed`, as its first
    /// leader crashes and restarts, under 10% loss.
    fn leaders(seed: u64) -> Vec<(u64, u64, u64)> {
        let root = tempfile::tempdir().unwrap();
        let options = SimOptions {
            delay_ticks_max: 3,
            tick_skip_one_in: Some(8),
            compact_entry_count: 4,
            trace: false,
        };
        let mut rng = SplitMix::new(seed);
        let configs = replica_configs(&[1, 2, 3], &options, &mut rng);
        let mut group = SimGroup::open(root.path(), configs, options, rng).unwrap();
        group.set_loss_per_mille(100);
        let mut seen = Vec::new();
        for round in 0..2 {
            let leader = (0..ELECTION_WAIT_TICKS_MAX).find_map(|_| {
                group.tick();
                (0..group.replica_count())
                    .find(|&i| group.replica(i).is_some_and(|r| r.is_leader()))
            });
            let index = leader.unwrap_or_else(|| panic!("no leader:\n{}", group.describe()));
            let replica = group.replica(index).unwrap();
            seen.push((group.now(), replica.id(), replica.term()));
            if round == 0 {
                assert!(group.crash(index));
                group.restart_at(index, Some(group.now() + 50));
            }
        }
        assert_eq!(group.crash_count(), 1);
        seen
    }

    #[test]
    fn a_seed_replays_its_elections_and_a_crashed_leader_is_succeeded() {
        for seed in [1, 2, 3] {
            let first = leaders(seed);
            assert_eq!(first, leaders(seed), "seed {seed}");
            assert_ne!(first[0].1, first[1].1, "seed {seed}: {first:?}");
            assert!(first[1].2 > first[0].2, "seed {seed}: {first:?}");
        }
    }
}
