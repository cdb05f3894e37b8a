//! [`CmReplica`]: one replica of the CM's Raft group, the driver around `raft::RawNode` that
//! persists, applies and hands out messages in the order raft-rs 0.7 asks for.
//!
//! [`CmReplica::handle_ready`] follows that order: a leader's messages may go out before its
//! own log is durable (Raft thesis §10.2.1: the leader counts itself only once it has
//! persisted); a received snapshot is installed; the new entries and the hard state are written;
//! the committed entries are applied; one batch of fsyncs makes it all durable, and only then
//! go the messages that depend on it (votes, append responses). Then `advance`: the
//! `LightReady`'s commit index, messages and committed entries, `advance_apply`, and a second
//! sync of the applied state before any proposal's outcome is reported, so that a replica never
//! reports a configuration it could forget in a crash.
//!
//! **Membership.** The group's voters change through Raft's own conf changes, one replica at
//! a time ([`CmReplica::propose_conf_change`]: a learner added, promoted, or a replica
//! removed; never joint consensus). A committed change is applied in the same pass as the
//! entries around it, and the membership after it is stored with the applied index in the
//! state file, made durable before the next `Ready` is handled. A replica that joins starts
//! with no voters and takes the membership from the snapshot the leader sends it (the storage
//! compacts after every applied change so that it always gets one,
//! [`CmStorage::maybe_compact`]).
//!
//! No networking here: the caller carries the messages (the simulation of the integration
//! tests, a transport later).

use crate::logger::raft_logger;
use crate::state::{CmState, Rejection, install_command};
use crate::storage::{CmStorage, StorageError, StorageOptions};
use crate::wire::WireError;
use acre_txn::config::Configuration;
use protobuf::Message as _;
use raft::eraftpb::{
    ConfChange, ConfChangeSingle, ConfChangeType, ConfChangeV2, EntryType, Message,
};
use raft::{RawNode, StateRole};
use std::collections::BTreeMap;
use std::path::Path;

/// The most proposals of one leader awaiting their outcome: a caller that keeps proposing
/// without waiting is told to wait.
pub const PENDING_PROPOSALS_MAX: usize = 64;
/// The largest append message raft sends.
const MESSAGE_BYTES_MAX: u64 = 1 << 20;
/// Append messages in flight to one follower.
const INFLIGHT_MESSAGES_MAX: usize = 64;

/// How a replica runs.
#[derive(Clone, Debug)]
pub struct ReplicaConfig {
    /// Raft id of this replica: positive, distinct in the group.
    pub id: u64,
    /// Raft ids of every replica of a new group (this one included), the same on all of them;
    /// empty for a replica that joins a running group (it learns the membership from the
    /// leader's snapshot). Read only when the replica's storage is created: from then on the
    /// membership is the storage's, changed through Raft ([`CmReplica::propose_conf_change`]).
    pub voters: Vec<u64>,
    /// Ticks without a leader before a follower stands; more than `heartbeat_tick`.
    pub election_tick: usize,
    pub heartbeat_tick: usize,
    /// Raft draws the election timeout in `[min_election_tick, max_election_tick)` from a
    /// thread-local generator; a deterministic simulation gives every replica its own range of
    /// width 1 instead. 0: raft's defaults (`election_tick`, twice `election_tick`).
    pub min_election_tick: usize,
    pub max_election_tick: usize,
    pub storage: StorageOptions,
}

impl ReplicaConfig {
    /// A replica with raft's customary ticks: a heartbeat every tick, an election after 10.
    pub fn new(id: u64, voters: Vec<u64>) -> ReplicaConfig {
        ReplicaConfig {
            id,
            voters,
            election_tick: 10,
            heartbeat_tick: 1,
            min_election_tick: 0,
            max_election_tick: 0,
            storage: StorageOptions::default(),
        }
    }
}

/// The group's membership as one replica sees it ([`CmReplica::membership`]), in raft ids.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Membership {
    /// In id order, as the other lists.
    pub voters: Vec<u64>,
    /// Replicas that receive the log but do not vote or count for a quorum.
    pub learners: Vec<u64>,
    /// A conf change is proposed and not yet applied here (raft takes one at a time).
    pub conf_change_pending: bool,
    /// At the leader, the learners that hold every committed entry; empty elsewhere.
    pub caught_up: Vec<u64>,
}

/// A proposal, named by where its entry went in the leader's log: the index and the term are
/// unique to one entry (Raft's log matching), so an applied entry with both is this proposal.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct ProposalId {
    pub term: u64,
    pub index: u64,
}

/// What became of a proposal.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ProposalOutcome {
    /// Applied: this is now the configuration.
    Installed(Configuration),
    /// Committed but not applied (stale id, not the successor, invalid): the rejection carries
    /// the current configuration when the id was stale.
    Rejected(Rejection),
    /// Its fate is unknown to this replica: it stopped being leader, or another entry took its
    /// place. Retry the compare-and-set from the current configuration on the leader; if the
    /// lost proposal was applied after all, the retry is rejected as stale with it as current.
    Lost,
}

/// Why a proposal was not made.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ProposeError {
    #[error("this CM replica is not the leader (leader: {leader_id:?}); propose there")]
    NotLeader { leader_id: Option<u64> },
    #[error("{PENDING_PROPOSALS_MAX} proposals await their outcome; wait for one")]
    Busy,
    #[error("raft dropped the proposal (a leader transfer is under way); retry shortly")]
    Dropped,
}

/// Why a replica cannot go on: stop it (its storage says why); the others carry on.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ReplicaError {
    #[error(transparent)]
    Storage(#[from] StorageError),
    #[error(
        "the CM state machine in the storage is undecodable: {0}; the replica's directory is damaged"
    )]
    State(#[from] WireError),
    #[error("raft: {0}")]
    Raft(#[from] raft::Error),
}

/// A proposal awaiting its outcome: its entry's term.
#[derive(Clone, Copy, Debug)]
struct Pending {
    term: u64,
}

/// One replica of the CM's Raft group (module docs).
pub struct CmReplica {
    raw: RawNode<CmStorage>,
    state: CmState,
    /// By entry index.
    pending: BTreeMap<u64, Pending>,
    /// Outcomes decided but not yet durable.
    staged: Vec<(ProposalId, ProposalOutcome)>,
    /// Outcomes durable, for [`CmReplica::take_outcomes`].
    outcomes: Vec<(ProposalId, ProposalOutcome)>,
}

impl CmReplica {
    /// Opens (or creates) the replica whose files are in `dir`; it replays only the entries
    /// after the applied index its storage kept.
    pub fn open(dir: &Path, config: ReplicaConfig) -> Result<CmReplica, ReplicaError> {
        assert!(
            config.voters.is_empty() || config.voters.contains(&config.id),
            "id={} voters={:?}",
            config.id,
            config.voters
        );
        let storage = CmStorage::open(dir, &config.voters, config.storage.clone())?;
        let state = CmState::decode(storage.applied_index(), storage.machine())?;
        let raft_config = raft::Config {
            id: config.id,
            election_tick: config.election_tick,
            heartbeat_tick: config.heartbeat_tick,
            min_election_tick: config.min_election_tick,
            max_election_tick: config.max_election_tick,
            applied: storage.applied_index(),
            check_quorum: true,
            pre_vote: true,
            max_size_per_msg: MESSAGE_BYTES_MAX,
            max_inflight_msgs: INFLIGHT_MESSAGES_MAX,
            ..raft::Config::default()
        };
        raft_config.validate()?;
        let raw = RawNode::new(&raft_config, storage, &raft_logger(config.id))?;
        Ok(CmReplica {
            raw,
            state,
            pending: BTreeMap::new(),
            staged: Vec::new(),
            outcomes: Vec::new(),
        })
    }

    pub fn id(&self) -> u64 {
        self.raw.raft.id
    }

    /// Whether [`CmReplica::handle_ready`] has work.
    pub fn has_ready(&self) -> bool {
        self.raw.has_ready()
    }

    /// Advances raft's clock by one tick (heartbeats, election timeouts).
    pub fn tick(&mut self) {
        self.raw.tick();
    }

    /// Hands a message from another replica to raft. An error means the message was not for
    /// this group (a bad peer): drop it.
    pub fn step(&mut self, message: Message) -> Result<(), ReplicaError> {
        Ok(self.raw.step(message)?)
    }

    /// Tells raft whether a snapshot this replica sent to `to` arrived: the transport's part.
    /// Until it hears either, the leader sends `to` nothing else, so a transport that loses a
    /// snapshot must report [`raft::SnapshotStatus::Failure`].
    pub fn report_snapshot(&mut self, to: u64, status: raft::SnapshotStatus) {
        self.raw.report_snapshot(to, status);
    }

    /// Tells raft that a message to `to` could not be sent: it probes `to` again instead of
    /// streaming appends into the void.
    pub fn report_unreachable(&mut self, to: u64) {
        self.raw.report_unreachable(to);
    }

    pub fn is_leader(&self) -> bool {
        self.raw.raft.state == StateRole::Leader
    }

    /// The leader this replica knows of, if any.
    pub fn leader_id(&self) -> Option<u64> {
        Some(self.raw.raft.leader_id).filter(|&id| id != raft::INVALID_ID)
    }

    pub fn term(&self) -> u64 {
        self.raw.raft.term
    }

    /// The applied configuration (durable: it survives a crash of this replica).
    pub fn configuration(&self) -> Option<&Configuration> {
        self.state.configuration.as_ref()
    }

    pub fn state(&self) -> &CmState {
        &self.state
    }

    pub fn storage(&self) -> &CmStorage {
        self.raw.store()
    }

    /// For fault injection ([`CmStorage::crash_at_next_sync`]).
    pub fn storage_mut(&mut self) -> &mut CmStorage {
        self.raw.mut_store()
    }

    /// The commit index raft knows.
    pub fn commit_index(&self) -> u64 {
        self.raw.raft.raft_log.committed
    }

    /// The group's membership as this replica applied it (durable: the storage keeps it with
    /// the applied index), whether a conf change is proposed and not yet applied, and, at the
    /// leader, which learners hold every committed entry (caught up: promoting one makes a
    /// voter that does not hold the quorum back).
    pub fn membership(&self) -> Membership {
        let mut conf = self.raw.raft.prs().conf().to_conf_state();
        // Raft keeps them in hash sets.
        conf.voters.sort_unstable();
        conf.learners.sort_unstable();
        let committed = self.commit_index();
        let caught_up = if self.is_leader() {
            conf.learners
                .iter()
                .copied()
                .filter(|&id| {
                    self.raw.raft.prs().get(id).is_some_and(|progress| {
                        progress.state == raft::ProgressState::Replicate
                            && progress.matched >= committed
                    })
                })
                .collect()
        } else {
            Vec::new()
        };
        Membership {
            voters: conf.voters,
            learners: conf.learners,
            conf_change_pending: self.raw.raft.has_pending_conf(),
            caught_up,
        }
    }

    /// Proposes one change of the group's membership (a simple conf change: one replica added
    /// as a learner, promoted to voter, or removed). It takes effect at every replica when it
    /// is applied ([`CmReplica::handle_ready`]); watch [`CmReplica::membership`] for it. Raft
    /// takes one at a time: a change proposed while another is not yet applied is turned into
    /// an empty entry, and nothing changes (propose again once the first is applied).
    pub fn propose_conf_change(
        &mut self,
        change: ConfChangeType,
        id: u64,
    ) -> Result<(), ProposeError> {
        if !self.is_leader() {
            return Err(ProposeError::NotLeader {
                leader_id: self.leader_id(),
            });
        }
        let mut single = ConfChangeSingle::default();
        single.set_change_type(change);
        single.node_id = id;
        let mut request = ConfChangeV2::default();
        request.set_changes(vec![single].into());
        match self.raw.propose_conf_change(Vec::new(), request) {
            Ok(()) => Ok(()),
            Err(raft::Error::ProposalDropped) => Err(ProposeError::Dropped),
            Err(e) => panic!("raft refused a conf change for another reason than a drop: {e}"),
        }
    }

    /// Proposes to install `configuration` if `expected_id` is the current id (it must have id
    /// `expected_id + 1`). The outcome comes out of [`CmReplica::take_outcomes`] once decided.
    pub fn propose_install(
        &mut self,
        expected_id: u64,
        configuration: &Configuration,
    ) -> Result<ProposalId, ProposeError> {
        if !self.is_leader() {
            return Err(ProposeError::NotLeader {
                leader_id: self.leader_id(),
            });
        }
        if self.pending.len() >= PENDING_PROPOSALS_MAX {
            return Err(ProposeError::Busy);
        }
        let data = install_command(expected_id, configuration).encode();
        let before = self.raw.raft.raft_log.last_index();
        match self.raw.propose(Vec::new(), data) {
            Ok(()) => {}
            Err(raft::Error::ProposalDropped) => return Err(ProposeError::Dropped),
            Err(e) => panic!("raft refused a proposal for another reason than a drop: {e}"),
        }
        let index = self.raw.raft.raft_log.last_index();
        assert!(index == before + 1, "index={index} before={before}");
        let term = self.raw.raft.term;
        // A proposal of an earlier term at this index was cut from the log (this replica lost
        // and won the lead again between two readies): it will never apply.
        if let Some(previous) = self.pending.insert(index, Pending { term }) {
            assert!(
                previous.term < term,
                "two proposals at index {index} in term {term}"
            );
            self.staged.push((
                ProposalId {
                    term: previous.term,
                    index,
                },
                ProposalOutcome::Lost,
            ));
        }
        Ok(ProposalId { term, index })
    }

    /// The outcomes decided and made durable since the last call.
    pub fn take_outcomes(&mut self) -> Vec<(ProposalId, ProposalOutcome)> {
        std::mem::take(&mut self.outcomes)
    }

    /// Does what raft's `Ready` asks, in raft-rs 0.7's order (module docs), handing every
    /// message to `outbox`. An error stops the replica: drop it and reopen its directory.
    pub fn handle_ready(&mut self, outbox: &mut impl FnMut(Message)) -> Result<(), ReplicaError> {
        if !self.raw.has_ready() {
            return Ok(());
        }
        let mut ready = self.raw.ready();
        if let Some(soft) = ready.ss()
            && soft.raft_state != StateRole::Leader
        {
            self.lose_pending(u64::MAX);
        }
        // A leader's appends and heartbeats do not depend on its own persistence.
        for message in ready.take_messages() {
            outbox(message);
        }
        if !ready.snapshot().is_empty() {
            let snapshot = ready.snapshot().clone();
            let index = snapshot.get_metadata().index;
            let state = CmState::decode(index, &snapshot.data)?;
            assert!(
                state.configuration_id() >= self.state.configuration_id(),
                "a snapshot takes the configuration back from {} to {}",
                self.state.configuration_id(),
                state.configuration_id()
            );
            self.raw.mut_store().apply_snapshot(snapshot)?;
            self.state = state;
            self.lose_pending(index);
        }
        // The entries first: a follower's new commit index may cover them, and the storage
        // checks that an append never cuts committed entries.
        self.raw.mut_store().append(ready.entries())?;
        if let Some(hard_state) = ready.hs() {
            self.raw.mut_store().set_hard_state(hard_state.clone());
        }
        let committed = ready.take_committed_entries();
        self.apply(committed);
        self.raw.mut_store().sync()?;
        // Votes and append responses promise what is now durable.
        for message in ready.take_persisted_messages() {
            outbox(message);
        }
        let mut light = self.raw.advance(ready);
        if let Some(commit) = light.commit_index() {
            self.raw.mut_store().set_commit(commit);
        }
        for message in light.take_messages() {
            outbox(message);
        }
        self.apply(light.take_committed_entries());
        self.raw.advance_apply();
        // The applied state is durable before any outcome is reported.
        self.raw.mut_store().sync()?;
        self.raw.mut_store().maybe_compact()?;
        self.outcomes.append(&mut self.staged);
        Ok(())
    }

    fn apply(&mut self, entries: Vec<raft::eraftpb::Entry>) {
        let Some(last) = entries.last().map(|e| e.index) else {
            return;
        };
        for entry in entries {
            let outcome = match entry.get_entry_type() {
                EntryType::EntryNormal => self.state.apply(entry.index, &entry.data),
                kind @ (EntryType::EntryConfChange | EntryType::EntryConfChangeV2) => {
                    self.apply_conf_change(kind, &entry);
                    self.state.apply(entry.index, &[])
                }
            };
            let Some(pending) = self.pending.remove(&entry.index) else {
                continue;
            };
            let id = ProposalId {
                term: pending.term,
                index: entry.index,
            };
            let outcome = match outcome {
                _ if pending.term != entry.term => ProposalOutcome::Lost,
                Some(Ok(configuration)) => ProposalOutcome::Installed(configuration),
                Some(Err(rejection)) => ProposalOutcome::Rejected(rejection),
                None => ProposalOutcome::Lost,
            };
            self.staged.push((id, outcome));
        }
        let machine = self.state.encode();
        self.raw.mut_store().set_applied(last, machine);
    }

    /// Applies a committed conf change: raft's membership, then the storage's, so the state
    /// file that records this entry applied records the membership after it (raft-rs: the
    /// conf state is stored before the next `Ready`; the sync at the end of this one does it).
    /// A change raft refuses (it cannot leave a group without voters, for one) is refused alike
    /// by every replica, which apply the same entries to the same membership.
    fn apply_conf_change(&mut self, kind: EntryType, entry: &raft::eraftpb::Entry) {
        // Raft checked the bytes when the leader took the proposal; a committed entry that
        // does not decode is damage no replica could agree past.
        let undecodable = |e: protobuf::ProtobufError| -> ! {
            panic!(
                "committed conf change at {} does not decode: {e}",
                entry.index
            )
        };
        // This replica proposes only V2 changes; a V1 one is applied as raft reads it.
        let (applied, change) = if kind == EntryType::EntryConfChange {
            let change =
                ConfChange::parse_from_bytes(&entry.data).unwrap_or_else(|e| undecodable(e));
            (self.raw.apply_conf_change(&change), format!("{change:?}"))
        } else {
            let change =
                ConfChangeV2::parse_from_bytes(&entry.data).unwrap_or_else(|e| undecodable(e));
            (self.raw.apply_conf_change(&change), format!("{change:?}"))
        };
        match applied {
            Ok(conf_state) => {
                let sorted = |ids: &[u64]| {
                    let mut ids = ids.to_vec();
                    ids.sort_unstable();
                    ids
                };
                tracing::info!(
                    index = entry.index,
                    voters = ?sorted(&conf_state.voters),
                    learners = ?sorted(&conf_state.learners),
                    "CM group membership changed"
                );
                self.raw.mut_store().set_conf_state(conf_state);
            }
            Err(e) => {
                tracing::warn!(index = entry.index, %change, "raft refused a conf change: {e}");
            }
        }
    }

    /// Reports every pending proposal up to `index` lost.
    fn lose_pending(&mut self, index: u64) {
        let kept = self.pending.split_off(&index.saturating_add(1));
        for (lost_index, pending) in std::mem::replace(&mut self.pending, kept) {
            self.staged.push((
                ProposalId {
                    term: pending.term,
                    index: lost_index,
                },
                ProposalOutcome::Lost,
            ));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use acre_engine::addr::NodeId;

    fn config(id: u64) -> Configuration {
        let nodes = (1..=3).map(NodeId).collect();
        Configuration::place(id, nodes, vec![], 1, 1, 1 << 20, 4096).unwrap()
    }

    fn replica_config() -> ReplicaConfig {
        ReplicaConfig {
            storage: StorageOptions {
                compact_entry_count: 2,
                ..StorageOptions::default()
            },
            ..ReplicaConfig::new(1, vec![1])
        }
    }

    /// Ticks and handles readies until `done` or a bound.
    fn run_until(replica: &mut CmReplica, mut done: impl FnMut(&mut CmReplica) -> bool) {
        const TICKS_MAX: usize = 100;
        for _ in 0..TICKS_MAX {
            replica.tick();
            replica
                .handle_ready(&mut |m| panic!("a group of one sends nothing: {m:?}"))
                .unwrap();
            if done(replica) {
                return;
            }
        }
        panic!("not done in {TICKS_MAX} ticks");
    }

    fn outcome(replica: &mut CmReplica, proposal: ProposalId) -> ProposalOutcome {
        let mut found = None;
        run_until(replica, |r| {
            found = r
                .take_outcomes()
                .into_iter()
                .find(|(id, _)| *id == proposal)
                .map(|(_, outcome)| outcome);
            found.is_some()
        });
        found.unwrap()
    }

    #[test]
    fn installs_are_compare_and_set_and_survive_a_restart() {
        let dir = tempfile::tempdir().unwrap();
        let mut replica = CmReplica::open(dir.path(), replica_config()).unwrap();
        assert!(matches!(
            replica.propose_install(0, &config(1)),
            Err(ProposeError::NotLeader { leader_id: None })
        ));
        run_until(&mut replica, |r| r.is_leader());
        assert_eq!(replica.leader_id(), Some(1));
        let first = replica.propose_install(0, &config(1)).unwrap();
        assert_eq!(
            outcome(&mut replica, first),
            ProposalOutcome::Installed(config(1))
        );
        let stale = replica.propose_install(0, &config(1)).unwrap();
        match outcome(&mut replica, stale) {
            ProposalOutcome::Rejected(Rejection::Stale { current, .. }) => {
                assert_eq!(current.as_deref(), Some(&config(1)));
            }
            other => panic!("{other:?}"),
        }
        for id in 2..=5 {
            let proposal = replica.propose_install(id - 1, &config(id)).unwrap();
            assert_eq!(
                outcome(&mut replica, proposal),
                ProposalOutcome::Installed(config(id))
            );
        }
        let applied = replica.state().applied_index;
        assert!(
            replica.storage().snapshot_index() > 0,
            "compacted every 2 entries"
        );
        drop(replica);

        // The applied state comes back from the files; nothing is applied twice.
        let mut replica = CmReplica::open(dir.path(), replica_config()).unwrap();
        assert_eq!(replica.configuration(), Some(&config(5)));
        assert_eq!(replica.state().applied_index, applied);
        run_until(&mut replica, |r| r.is_leader());
        let next = replica.propose_install(5, &config(6)).unwrap();
        assert_eq!(
            outcome(&mut replica, next),
            ProposalOutcome::Installed(config(6))
        );
    }
}
