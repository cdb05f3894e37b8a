//! Replacing a CM replica whose node left the cluster (docs/failures.md#configuration-manager):
//! the pure rule that tells the CM's leader the next change of its Raft group's membership.
//!
//! A memory node that hosted a replica and was removed (its lease expired, or `remove-node`)
//! leaves `nodes` but stays a voter of the group: Raft's membership changes only through Raft.
//! Left so, a group of 2f+1 runs one replica short, and f more such losses leave it without a
//! majority. [`next_step`] has the leader replace it with a memory node that hosts no replica
//! (the node that just joined, or one that was there all along), one simple conf change at a
//! time, each applied before the next is decided:
//!
//! 1. **Add the new node as a learner.** It receives the log (a snapshot first: it starts
//!    empty) but neither votes nor counts for a quorum, so a joiner that is slow, or dies, costs
//!    the group nothing.
//! 2. **Once it caught up** (it holds every committed entry, as the leader's progress says),
//!    **remove the dead voter**: a group of 2f with f-1 dead needs as many live replicas as one of
//!    2f+1 with f dead, so this costs no availability, and it is never done before a
//!    replacement is ready (a group is never shrunk for nothing).
//! 3. **Promote the learner** to voter. It holds the log already, so it counts at once without
//!    holding a commit back. Adding a voter before removing the dead one (4 voters, 1 dead: a
//!    majority of 3 among 3 live) would make every replica needed until the removal.
//! 4. **Name the voters in the configuration** (`cm_replicas`, [`crate::remap::name_cm_replicas`]),
//!    where processes find which nodes run a replica and where the lease thread of a new leader
//!    is looked for.
//!
//! One change at a time (no joint consensus): adding or removing one voter changes the quorum
//! by one, and any two majorities of successive memberships overlap. A learner whose node left
//! before its promotion is removed first. Every step is decided again from what Raft applied,
//! so a new leader takes over a replacement half done.
//!
//! Standalone replicas (`acre cm`, ids that are neither nodes nor clients) are never removed or
//! replaced: their processes come back with `acre cluster up`, and the cluster file names them.

use acre_engine::addr::NodeId;
use acre_txn::config::Configuration;
use std::collections::BTreeMap;

/// The next change of the group's membership.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Step {
    /// Add `0` as a learner (it starts its replica when the leader's first message arrives).
    AddLearner(NodeId),
    /// Make the caught-up learner `0` a voter.
    Promote(NodeId),
    /// Remove `0` (a voter whose node left, or a learner whose node left before its promotion).
    Remove(NodeId),
    /// Install a configuration whose `cm_replicas` are these: the voters, in the order the
    /// configuration named those it keeps, the new ones after.
    Name(Vec<NodeId>),
}

/// The group as its leader sees it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct GroupView {
    /// This replica: never removed by itself.
    pub me: NodeId,
    pub voters: Vec<NodeId>,
    pub learners: Vec<NodeId>,
    /// Learners that hold every committed entry.
    pub caught_up: Vec<NodeId>,
    /// A conf change is proposed and not yet applied: wait for it.
    pub conf_change_pending: bool,
}

/// The next step (module docs) for a group that should have `size` voters (2f+1, what the
/// cluster started with), in `config` (the configuration Raft applied), whose standalone replicas
/// are `standalone`; `None` when there is nothing to do or something to wait for.
pub fn next_step(
    config: &Configuration,
    standalone: &[NodeId],
    size: usize,
    group: &GroupView,
) -> Option<Step> {
    if group.conf_change_pending {
        return None;
    }
    let is_node = |n: &NodeId| config.nodes.contains(n);
    if let Some(&gone) = group.learners.iter().find(|l| !is_node(l)) {
        return Some(Step::Remove(gone));
    }
    let dead: Vec<NodeId> = (group.voters.iter().copied())
        .filter(|v| *v != group.me && !is_node(v) && !standalone.contains(v))
        .collect();
    if let Some(&learner) = group.learners.first() {
        if !group.caught_up.contains(&learner) {
            return None;
        }
        return Some(match dead.first() {
            Some(&gone) => Step::Remove(gone),
            None => Step::Promote(learner),
        });
    }
    if (!dead.is_empty() || group.voters.len() < size)
        && let Some(candidate) = candidate(config, group)
    {
        return Some(Step::AddLearner(candidate));
    }
    let mut named: Vec<NodeId> = (config.cm_replicas.iter().copied())
        .filter(|r| group.voters.contains(r))
        .collect();
    let mut new: Vec<NodeId> = (group.voters.iter().copied())
        .filter(|v| !config.cm_replicas.contains(v))
        .collect();
    new.sort_unstable();
    named.extend(new);
    (named != config.cm_replicas && !named.is_empty()).then_some(Step::Name(named))
}

/// The memory node to add: one that hosts no replica, in the failure domain with the fewest
/// voters (a domain that fails takes as few replicas as it can), the lowest id of equals.
fn candidate(config: &Configuration, group: &GroupView) -> Option<NodeId> {
    let mut voters_per_domain: BTreeMap<String, usize> = BTreeMap::new();
    for &voter in &group.voters {
        *voters_per_domain
            .entry(config.domain_of(voter))
            .or_default() += 1;
    }
    (config.nodes.iter().copied())
        .filter(|n| !group.voters.contains(n) && !group.learners.contains(n))
        .filter(|n| n.0 != 0 && *n != NodeId::OBSERVER)
        .min_by_key(|&n| {
            let domain = config.domain_of(n);
            (voters_per_domain.get(&domain).copied().unwrap_or(0), n)
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ids(ids: &[u16]) -> Vec<NodeId> {
        ids.iter().copied().map(NodeId).collect()
    }

    /// Nodes `nodes` (memory nodes), CM replicas `replicas`.
    fn config(nodes: &[u16], replicas: &[u16]) -> Configuration {
        let mut config = Configuration::place(5, ids(nodes), vec![], 1, 1, 1 << 20, 4096).unwrap();
        config.cm_replicas = ids(replicas);
        config
    }

    fn group(voters: &[u16], learners: &[u16], caught_up: &[u16]) -> GroupView {
        GroupView {
            me: NodeId(1),
            voters: ids(voters),
            learners: ids(learners),
            caught_up: ids(caught_up),
            conf_change_pending: false,
        }
    }

    /// Follows the steps as Raft would apply them, from n2's removal to the end.
    #[test]
    fn a_removed_nodes_replica_is_replaced_one_change_at_a_time() {
        // n2 was removed; n4 hosts no replica.
        let mut config = config(&[1, 3, 4], &[1, 2, 3]);
        let mut view = group(&[1, 2, 3], &[], &[]);
        assert_eq!(
            next_step(&config, &[], 3, &view),
            Some(Step::AddLearner(NodeId(4)))
        );
        view.learners = ids(&[4]);
        assert_eq!(next_step(&config, &[], 3, &view), None, "not caught up");
        view.conf_change_pending = true;
        view.caught_up = ids(&[4]);
        assert_eq!(next_step(&config, &[], 3, &view), None, "one at a time");
        view.conf_change_pending = false;
        assert_eq!(
            next_step(&config, &[], 3, &view),
            Some(Step::Remove(NodeId(2)))
        );
        view.voters = ids(&[1, 3]);
        assert_eq!(
            next_step(&config, &[], 3, &view),
            Some(Step::Promote(NodeId(4)))
        );
        view = group(&[1, 3, 4], &[], &[]);
        assert_eq!(
            next_step(&config, &[], 3, &view),
            Some(Step::Name(ids(&[1, 3, 4])))
        );
        config.cm_replicas = ids(&[1, 3, 4]);
        assert_eq!(next_step(&config, &[], 3, &view), None, "done");
    }

    #[test]
    fn nothing_is_removed_without_a_replacement_and_standalone_replicas_stay() {
        // Every memory node hosts a replica already: n2's stays a voter.
        let config2 = config(&[1, 3], &[1, 2, 3]);
        assert_eq!(
            next_step(&config2, &[], 3, &group(&[1, 2, 3], &[], &[])),
            None
        );
        // n102 is a standalone replica (no node): it is never taken for a removed node.
        let standalone = config(&[1, 2, 3, 4], &[101, 102, 103]);
        let view = group(&[101, 102, 103], &[], &[]);
        assert_eq!(
            next_step(&standalone, &ids(&[101, 102, 103]), 3, &view),
            None
        );
        // The leader never removes itself, even when its node is no longer listed.
        let mut view = group(&[1, 2, 3], &[], &[]);
        view.me = NodeId(2);
        let config3 = config(&[1, 3], &[1, 2, 3]);
        assert_eq!(next_step(&config3, &[], 3, &view), None);
    }

    #[test]
    fn a_learner_whose_node_left_is_removed_and_another_is_added() {
        let config = config(&[1, 3, 5], &[1, 2, 3]);
        let view = group(&[1, 2, 3], &[4], &[4]);
        assert_eq!(
            next_step(&config, &[], 3, &view),
            Some(Step::Remove(NodeId(4)))
        );
        let view = group(&[1, 2, 3], &[], &[]);
        assert_eq!(
            next_step(&config, &[], 3, &view),
            Some(Step::AddLearner(NodeId(5)))
        );
        // A group left short (its dead voter removed, its learner lost) is filled again.
        let view = group(&[1, 3], &[], &[]);
        assert_eq!(
            next_step(&config, &[], 3, &view),
            Some(Step::AddLearner(NodeId(5)))
        );
    }

    #[test]
    fn the_new_replica_goes_to_the_domain_with_the_fewest_voters() {
        let mut config = config(&[1, 3, 4, 5], &[1, 2, 3]);
        config.domains = [(1, "a"), (3, "b"), (4, "a"), (5, "c")]
            .into_iter()
            .map(|(n, d)| acre_txn::config::FailureDomain {
                node: NodeId(n),
                domain: d.into(),
            })
            .collect();
        let view = group(&[1, 2, 3], &[], &[]);
        assert_eq!(
            next_step(&config, &[], 3, &view),
            Some(Step::AddLearner(NodeId(5)))
        );
    }
}
