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
