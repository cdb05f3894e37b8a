//! Precise membership at the fabric: which configuration a node is in, and whose one-sided
//! operations it therefore serves (docs/failures.md#fencing).
//!
//! A one-sided operation is invisible to the target's application threads, so only a transport
//! that sees every operation can refuse one from a node that is no longer a member. The tcp
//! transport's NIC thread does: it holds a [`Membership`] and admits a connection only when
//! [`Membership::admits`] says so, at the handshake and again whenever its owner replaces the
//! membership. The ofi and verbs transports close what a removed node's one-sided operations
//! need at the target (its registrations, its queue pairs) when their NIC is given a new
//! [`ServedMembership`]. The shm and local transports see nothing; they are fenced by other
//! means (the process of a removed node is ended before the configuration that removes it
//! commits).

use crate::addr::NodeId;
use std::collections::BTreeSet;
use std::sync::RwLock;

/// The membership a NIC serves, replaced at run time: `None` until it is given one (every node
/// is served until then).
#[derive(Debug, Default)]
pub struct ServedMembership(pub RwLock<Option<Membership>>);

impl std::ops::Deref for ServedMembership {
    type Target = RwLock<Option<Membership>>;

    fn deref(&self) -> &Self::Target {
        &self.0
    }
}

impl ServedMembership {
    pub fn new(membership: Option<Membership>) -> ServedMembership {
        ServedMembership(RwLock::new(membership))
    }

    /// Whether `node` is served: a member of the configuration, or any node while there is
    /// none.
    pub fn admits(&self, node: NodeId) -> bool {
        self.0
            .read()
            .expect(crate::POISONED)
            .as_ref()
            .is_none_or(|m| m.contains(node))
    }
}

/// The configuration a node is in: its id and the nodes (memory nodes and clients) that may
/// operate on the node's memory. Configuration ids only grow.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Membership {
    config: u64,
    members: BTreeSet<NodeId>,
}

/// What a node may do on a target whose membership is known.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Admission {
    /// A member bound to this configuration or a newer one: every operation.
    Member,
    /// [`NodeId::OBSERVER`] (a status probe): READs only, whatever configuration it names.
    Observer,
    /// Not a member of this configuration, or bound to an older one: nothing.
    Refused,
}

impl Membership {
    /// Configuration `config` with `members`. [`NodeId::OBSERVER`] is never a member.
    pub fn new(config: u64, members: impl IntoIterator<Item = NodeId>) -> Membership {
        let members: BTreeSet<NodeId> = members.into_iter().collect();
        assert!(
            !members.contains(&NodeId::OBSERVER),
            "config={config}: the observer id is never a member"
        );
        Membership { config, members }
    }

    /// The configuration's id.
    pub fn config(&self) -> u64 {
        self.config
    }

    pub fn contains(&self, node: NodeId) -> bool {
        self.members.contains(&node)
    }

    pub fn members(&self) -> impl Iterator<Item = NodeId> + '_ {
        self.members.iter().copied()
    }

    /// Whether `node`, which says it is in configuration `bound_config`, may operate here.
    ///
    /// A sender bound to an older configuration is refused even if it is still a member: it
    /// has not learned of this configuration, so it may act on what the older one said (a
    /// primary that moved, a ring that was replaced). A sender bound to a newer one is
    /// admitted if it is a member here: this node has not adopted that configuration yet and
    /// re-checks the sender when it does.
    pub fn admits(&self, node: NodeId, bound_config: u64) -> Admission {
        if node == NodeId::OBSERVER {
            Admission::Observer
        } else if self.contains(node) && bound_config >= self.config {
            Admission::Member
        } else {
            Admission::Refused
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn members_of_this_or_a_newer_configuration_are_admitted_observers_read() {
        let membership = Membership::new(5, [NodeId(1), NodeId(2)]);
        assert_eq!(membership.admits(NodeId(1), 5), Admission::Member);
        assert_eq!(membership.admits(NodeId(2), 6), Admission::Member);
        assert_eq!(membership.admits(NodeId(2), 4), Admission::Refused);
        assert_eq!(membership.admits(NodeId(3), 5), Admission::Refused);
        assert_eq!(membership.admits(NodeId::OBSERVER, 0), Admission::Observer);
        assert_eq!(
            membership.members().collect::<Vec<_>>(),
            vec![NodeId(1), NodeId(2)]
        );
    }

    #[test]
    #[should_panic(expected = "the observer id is never a member")]
    fn the_observer_is_never_a_member() {
        Membership::new(1, [NodeId(1), NodeId::OBSERVER]);
    }
}
