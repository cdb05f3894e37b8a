//! The CM's Raft group changing its membership (docs/failures.md#configuration-manager): a
//! replica lost for good is replaced by a new one through Raft's own conf changes, one at a
//! time (the new one added as a learner, caught up by a snapshot, the dead one removed, the
//! learner promoted), so that the group keeps a majority through a second loss. Replicas are
//! driven by hand over an in-memory network that delivers everything, in order: what is tested
//! is the membership, not the network (the simulation in `sim.rs` does that).

use acre_cm::{CmReplica, Durability, Membership, ProposalOutcome, ReplicaConfig, StorageOptions};
use acre_engine::addr::NodeId;
use acre_txn::config::Configuration;
use raft::SnapshotStatus;
use raft::eraftpb::{ConfChangeType, Message, MessageType};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

/// Rounds (a tick and a delivery) any one step below may take: an election takes about
/// `ELECTION_TICKS` rounds, a commit a few.
const ROUNDS_MAX: usize = 200;
const ELECTION_TICKS: usize = 10;

/// A group of replicas by raft id, `None` while down, and the messages in flight.
struct Group {
    root: tempfile::TempDir,
    replicas: BTreeMap<u64, Option<CmReplica>>,
    network: Vec<Message>,
}

fn config(id: u64, replica: u64, voters: Vec<u64>) -> ReplicaConfig {
    // Election timeouts spaced apart so that the lowest id stands first.
    let min = ELECTION_TICKS + 3 * replica as usize;
    ReplicaConfig {
        election_tick: ELECTION_TICKS,
        heartbeat_tick: 2,
        min_election_tick: min,
        max_election_tick: min + 1,
        storage: StorageOptions {
            durability: Durability::OsCache,
            // Far more than the test writes: a snapshot comes only from a membership change.
            compact_entry_count: 1024,
        },
        ..ReplicaConfig::new(id, voters)
    }
}

fn configuration(id: u64) -> Configuration {
    let nodes = (1..=3).map(NodeId).collect();
    Configuration::place(id, nodes, vec![], 1, 1, 1 << 20, 4096).unwrap()
}

impl Group {
    fn new(voters: &[u64]) -> Group {
        let root = tempfile::tempdir().unwrap();
        let mut group = Group {
            root,
            replicas: BTreeMap::new(),
            network: Vec::new(),
        };
        for &id in voters {
            group.open(id, voters.to_vec());
        }
        group
    }

    fn dir(&self, id: u64) -> PathBuf {
        self.root.path().join(format!("cm-{id}"))
    }

    fn open(&mut self, id: u64, voters: Vec<u64>) {
        let replica = CmReplica::open(&self.dir(id), config(id, id, voters)).unwrap();
        self.replicas.insert(id, Some(replica));
    }

    fn crash(&mut self, id: u64) {
        self.replicas.insert(id, None);
    }

    fn replica(&mut self, id: u64) -> &mut CmReplica {
        self.replicas.get_mut(&id).unwrap().as_mut().unwrap()
    }

    fn leader(&self) -> Option<u64> {
        self.replicas
            .values()
            .flatten()
            .find(|r| r.is_leader())
            .map(CmReplica::id)
    }

    /// One round: every live replica ticks and hands out its ready, then every message in
    /// flight is delivered (dropped if its receiver is down, which a snapshot's sender hears).
    fn round(&mut self) {
        for replica in self.replicas.values_mut().flatten() {
            replica.tick();
            let network = &mut self.network;
            replica.handle_ready(&mut |m| network.push(m)).unwrap();
        }
        for message in std::mem::take(&mut self.network) {
            let (from, to) = (message.from, message.to);
            let snapshot = message.get_msg_type() == MessageType::MsgSnapshot;
            let delivered = match self.replicas.get_mut(&to) {
                Some(Some(receiver)) => receiver.step(message).is_ok(),
                _ => false,
            };
            if let Some(Some(sender)) = self.replicas.get_mut(&from) {
                if snapshot {
                    let status = if delivered {
                        SnapshotStatus::Finish
                    } else {
                        SnapshotStatus::Failure
                    };
                    sender.report_snapshot(to, status);
                }
                if !delivered {
                    sender.report_unreachable(to);
                }
            }
        }
    }

    fn run_until(&mut self, what: &str, mut done: impl FnMut(&mut Group) -> bool) {
        for _ in 0..ROUNDS_MAX {
            self.round();
            if done(self) {
                return;
            }
        }
        panic!("not done in {ROUNDS_MAX} rounds: {what}");
    }

    fn elect(&mut self) -> u64 {
        self.run_until("a leader", |g| g.leader().is_some());
        self.leader().unwrap()
    }

    /// Installs the successor of the leader's configuration; panics unless it is installed.
    fn install_next(&mut self) -> u64 {
        let leader = self.elect();
        let current = self.replica(leader).configuration().map_or(0, |c| c.id);
        let proposal = self
            .replica(leader)
            .propose_install(current, &configuration(current + 1))
            .unwrap();
        let mut outcome = None;
        self.run_until("the install's outcome", |g| {
            let Some(Some(replica)) = g.replicas.get_mut(&leader) else {
                return false;
            };
            outcome = replica
                .take_outcomes()
                .into_iter()
                .find(|(id, _)| *id == proposal)
                .map(|(_, o)| o);
            outcome.is_some()
        });
        assert_eq!(
            outcome,
            Some(ProposalOutcome::Installed(configuration(current + 1)))
        );
        current + 1
    }

    fn membership(&mut self, id: u64) -> Membership {
        self.replica(id).membership()
    }

    /// Proposes one conf change at the leader and runs until the leader applied it.
    fn change(&mut self, change: ConfChangeType, id: u64, applied: impl Fn(&Membership) -> bool) {
        let leader = self.elect();
        self.replica(leader)
            .propose_conf_change(change, id)
            .unwrap();
        self.run_until("the conf change applied", |g| {
            let membership = g.membership(leader);
            !membership.conf_change_pending && applied(&membership)
        });
    }
}

fn snapshot_index(dir: &Path) -> u64 {
    let storage = acre_cm::CmStorage::open(dir, &[], StorageOptions::default()).unwrap();
    storage.snapshot_index()
}

#[test]
fn a_lost_replica_is_replaced_and_the_group_keeps_a_majority_after_a_second_loss() {
    let mut group = Group::new(&[1, 2, 3]);
    for _ in 0..3 {
        group.install_next();
    }
    // Replica 2 is lost for good (its node removed); a new replica 4 starts empty, knowing
    // no voters, and waits to be told by the leader.
    group.crash(2);
    group.open(4, Vec::new());
    assert_eq!(group.membership(4), Membership::default());
    group.run_until("a few quiet rounds", |_| true);
    assert!(
        !group.replica(4).is_leader() && group.replica(4).configuration().is_none(),
        "a replica outside the group neither stands nor learns anything"
    );

    // A learner first: it gets the state by a snapshot (the log was never compacted for its
    // length), and counts for nothing until it has caught up.
    group.change(ConfChangeType::AddLearnerNode, 4, |m| m.learners == [4]);
    let leader = group.leader().unwrap();
    group.run_until("the learner caught up", |g| {
        g.membership(leader).caught_up == [4]
    });
    let installed = group.install_next();
    group.run_until("the learner applied the install", |g| {
        g.replica(4).configuration().map(|c| c.id) == Some(installed)
    });
    assert_eq!(group.membership(4).voters, [1, 2, 3], "from the snapshot");
    assert!(
        snapshot_index(&group.dir(leader)) > 0,
        "the leader compacted once the membership changed, so the learner got a snapshot"
    );

    // The dead voter out, then the learner in: one change at a time.
    group.change(ConfChangeType::RemoveNode, 2, |m| m.voters == [1, 3]);
    group.change(ConfChangeType::AddNode, 4, |m| m.voters == [1, 3, 4]);
    group.run_until("every replica applied the promotion", |g| {
        [1, 3, 4]
            .iter()
            .all(|&id| g.membership(id).voters == [1, 3, 4])
    });

    // The membership is durable: replica 4 restarted from its files (its config names no
    // voters, which only a new storage reads) is still a voter.
    group.crash(4);
    group.open(4, Vec::new());
    assert_eq!(group.membership(4).voters, [1, 3, 4]);
    assert!(group.membership(4).learners.is_empty());

    // A second loss, the leader's: 3 and 4 are a majority of {1, 3, 4} (of the old {1, 2, 3}
    // they would be one replica and a stranger).
    let leader = group.elect();
    group.crash(leader);
    let installed = group.install_next();
    let new_leader = group.leader().unwrap();
    assert_ne!(new_leader, leader);
    for id in [1, 3, 4].into_iter().filter(|&id| id != leader) {
        group.run_until("both survivors applied the install", |g| {
            g.replica(id).configuration().map(|c| c.id) == Some(installed)
        });
    }
}

#[test]
fn a_learner_whose_node_is_gone_is_removed_without_touching_the_voters() {
    let mut group = Group::new(&[1, 2, 3]);
    group.install_next();
    group.open(4, Vec::new());
    group.change(ConfChangeType::AddLearnerNode, 4, |m| m.learners == [4]);
    group.crash(4);
    group.change(ConfChangeType::RemoveNode, 4, |m| m.learners.is_empty());
    assert_eq!(group.membership(group.leader().unwrap()).voters, [1, 2, 3]);
    group.install_next();
}

/// Rounds the seeded run below may take to finish the replacement under loss and crashes, and
/// then to install after the second loss. A replacement is four decisions of the leader, each
/// a commit; an election after a crash takes up to about 20 rounds.
const SEEDED_ROUNDS_MAX: usize = 3_000;
/// Messages lost, per mille.
const LOSS_PER_MILLE: u64 = 100;
/// A live replica crashes in a round with this chance, per mille (and comes back after a few).
const CRASH_PER_MILLE: u64 = 120;

/// The replacement as [`acre_cm::replacement::next_step`] decides it, taken by whichever replica
/// leads, under message loss and crashes with restarts from the files, one replica down at a
/// time besides the lost one; checked after every round: at most one leader a term, and one
/// configuration per id wherever it was applied. At the end the group is {1, 3, 4} everywhere,
/// the configuration names it, and the group installs again after its leader is lost for good.
#[test]
fn the_replacement_rule_finishes_under_loss_and_crashes() {
    use acre_cm::replacement::{GroupView, Step, next_step};
    use acre_nvm_log::random::{Replay, SplitMix, for_each_seed};

    for_each_seed(64, Replay::Exact, |seed| {
        let mut rng = SplitMix::new(seed);
        let mut group = Group::new(&[1, 2, 3]);
        group.install_next();
        // n2's node is removed (its lease expired) and n4 is a memory node with no replica.
        group.crash(2);
        let leader = group.elect();
        let current = group.replica(leader).configuration().unwrap().id;
        let mut removed = configuration(current + 1);
        removed.nodes = vec![NodeId(1), NodeId(3), NodeId(4)];
        removed.cm_replicas = vec![NodeId(1), NodeId(2), NodeId(3)];
        removed.regions.iter_mut().for_each(|p| {
            p.backups.retain(|&b| b != NodeId(2));
            if p.primary == NodeId(2) {
                p.primary = NodeId(1);
            }
            p.backups.retain(|&b| b != p.primary);
        });
        removed.validate().unwrap();
        group
            .replica(leader)
            .propose_install(current, &removed)
            .unwrap();
        group.run_until("the removal applied", |g| {
            g.leader()
                .is_some_and(|l| g.replicas[&l].as_ref().unwrap().configuration() == Some(&removed))
        });
        group.open(4, Vec::new());

        let mut leaders: BTreeMap<u64, u64> = BTreeMap::new();
        let mut applied: BTreeMap<u64, Configuration> = BTreeMap::new();
        let mut down: Option<(u64, usize)> = None;
        let mut done = false;
        for round in 0..SEEDED_ROUNDS_MAX {
            // The leader decides and proposes (each step is idempotent until applied).
            if let Some(leader) = group.leader() {
                let replica = group.replica(leader);
                let membership = replica.membership();
                let config = replica.configuration().unwrap().clone();
                let ids = |ids: &[u64]| -> Vec<NodeId> {
                    ids.iter().map(|&id| NodeId(id as u16)).collect()
                };
                let view = GroupView {
                    me: NodeId(leader as u16),
                    voters: ids(&membership.voters),
                    learners: ids(&membership.learners),
                    caught_up: ids(&membership.caught_up),
                    conf_change_pending: membership.conf_change_pending,
                };
                match next_step(&config, &[], 3, &view) {
                    Some(Step::AddLearner(n)) => {
                        let _ =
                            replica.propose_conf_change(ConfChangeType::AddLearnerNode, n.0.into());
                    }
                    Some(Step::Promote(n)) => {
                        let _ = replica.propose_conf_change(ConfChangeType::AddNode, n.0.into());
                    }
                    Some(Step::Remove(n)) => {
                        let _ = replica.propose_conf_change(ConfChangeType::RemoveNode, n.0.into());
                    }
                    Some(Step::Name(replicas)) => {
                        let mut next = config.clone();
                        next.id += 1;
                        next.cm_replicas = replicas;
                        // At most one in flight: a second is rejected as stale, harmlessly.
                        if round % 8 == 0 {
                            let _ = replica.propose_install(config.id, &next);
                        }
                    }
                    None => {
                        let settled = config.cm_replicas == [NodeId(1), NodeId(3), NodeId(4)]
                            && membership.voters == [1, 3, 4]
                            && membership.learners.is_empty();
                        if settled && down.is_none() {
                            done = true;
                            break;
                        }
                    }
                }
            }
            // Crashes, one at a time, and restarts from the files.
            match down {
                Some((id, back_at)) if round >= back_at => {
                    group.open(id, Vec::new());
                    down = None;
                }
                None if rng.below(1000) < CRASH_PER_MILLE => {
                    let live: Vec<u64> = [1, 3, 4]
                        .into_iter()
                        .filter(|id| group.replicas.get(id).is_some_and(Option::is_some))
                        .collect();
                    let id = live[rng.below(live.len() as u64) as usize];
                    group.crash(id);
                    down = Some((id, round + 5 + rng.below(30) as usize));
                }
                _ => {}
            }
            group.lossy_round(&mut rng);
            for replica in group.replicas.values().flatten() {
                if replica.is_leader() {
                    let previous = leaders.insert(replica.term(), replica.id());
                    assert!(
                        previous.is_none_or(|p| p == replica.id()),
                        "two leaders in term {}: {previous:?} and {}",
                        replica.term(),
                        replica.id()
                    );
                }
                if let Some(config) = replica.configuration() {
                    let first = applied.entry(config.id).or_insert_with(|| config.clone());
                    assert_eq!(first, config, "two configurations with id {}", config.id);
                }
            }
        }
        assert!(
            done,
            "the replacement did not finish in {SEEDED_ROUNDS_MAX} rounds"
        );
        group.run_until("every replica has the new group", |g| {
            [1, 3, 4].iter().all(|&id| {
                g.membership(id).voters == [1, 3, 4]
                    && g.replica(id).configuration().unwrap().cm_replicas
                        == [NodeId(1), NodeId(3), NodeId(4)]
            })
        });
        let leader = group.elect();
        group.crash(leader);
        group.install_next();
    });
}

impl Group {
    /// [`Group::round`] over a network that loses [`LOSS_PER_MILLE`] of the messages and
    /// delivers the rest in a shuffled order.
    fn lossy_round(&mut self, rng: &mut acre_nvm_log::random::SplitMix) {
        for replica in self.replicas.values_mut().flatten() {
            replica.tick();
            let network = &mut self.network;
            replica.handle_ready(&mut |m| network.push(m)).unwrap();
        }
        let mut messages = std::mem::take(&mut self.network);
        for k in (1..messages.len()).rev() {
            let other = rng.below(k as u64 + 1) as usize;
            messages.swap(k, other);
        }
        for message in messages {
            let (from, to) = (message.from, message.to);
            let snapshot = message.get_msg_type() == MessageType::MsgSnapshot;
            let lost = rng.below(1000) < LOSS_PER_MILLE;
            let delivered = match self.replicas.get_mut(&to) {
                Some(Some(receiver)) if !lost => receiver.step(message).is_ok(),
                _ => false,
            };
            if snapshot && let Some(Some(sender)) = self.replicas.get_mut(&from) {
                let status = if delivered {
                    SnapshotStatus::Finish
                } else {
                    SnapshotStatus::Failure
                };
                sender.report_snapshot(to, status);
            }
        }
    }
}
