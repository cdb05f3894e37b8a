//! Faults injected into the fabric: the in-process simulation's way to make a peer fail, stall
//! or half-execute a batch, chosen per (sender, receiver) and per batch, so that tests can put a
//! failure exactly between two steps of a protocol.
//!
//! A [`FaultPlan`] is shared by the fabrics of a cluster ([`super::Fabric::with_faults`]). Every
//! batch a node posts to another node is offered to the plan's rules in the order they were
//! added; the first rule that matches acts on it:
//!
//! - [`Action::Fail`]: nothing of the batch executes; every operation fails `Unreachable`, as
//!   for a peer that is down.
//! - [`Action::Partial`]: the first `n` operations execute, the rest fail `Unreachable`, as
//!   for a connection that broke half-way through a batch (the sender cannot tell which).
//! - [`Action::Delay`]: the batch executes after a sleep, as for a slow or paused peer.
//!
//! A node can also be cut off for good ([`FaultPlan::isolate`]), as one whose process died:
//! every batch it posts fails, and healing the plan does not bring it back.
//!
//! A plan with no rules costs one atomic load per batch. Batches a node posts to itself never
//! meet the plan (they are not on the network).

use super::{Op, OpError, OpResult};
use crate::addr::NodeId;
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

/// What a matching rule does to a batch.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Action {
    Fail,
    Partial(usize),
    Delay(Duration),
}

/// Which batches a rule matches, beyond sender and receiver.
pub type BatchFilter = Box<dyn Fn(&[Op]) -> bool + Send + Sync>;

/// One rule: batches from `from` (any sender if `None`) to `to` that pass `filter` are matched;
/// the first `skip` matches pass untouched, the next `times` (all, if `None`) get `action`.
pub struct Rule {
    pub from: Option<NodeId>,
    pub to: NodeId,
    pub filter: Option<BatchFilter>,
    pub skip: usize,
    pub times: Option<usize>,
    pub action: Action,
}

impl Rule {
    /// `action` on every batch from any node to `to`.
    pub fn to(to: NodeId, action: Action) -> Rule {
        Rule {
            from: None,
            to,
            filter: None,
            skip: 0,
            times: None,
            action,
        }
    }

    /// Only batches from `from`.
    pub fn from(mut self, from: NodeId) -> Rule {
        self.from = Some(from);
        self
    }

    /// Only batches `filter` accepts.
    pub fn when(mut self, filter: impl Fn(&[Op]) -> bool + Send + Sync + 'static) -> Rule {
        self.filter = Some(Box::new(filter));
        self
    }

    /// Lets the first `skip` matching batches through.
    pub fn after(mut self, skip: usize) -> Rule {
        self.skip = skip;
        self
    }

    /// Acts on at most `times` batches, then matches no more.
    pub fn times(mut self, times: usize) -> Rule {
        self.times = Some(times);
        self
    }
}

struct Entry {
    rule: Rule,
    /// Batches matched so far (skipped ones included).
    matched: usize,
}

/// A handle on a rule of a plan, to count its hits or remove it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RuleId(usize);

/// The faults of a cluster (see the module docs).
#[derive(Default)]
pub struct FaultPlan {
    /// Whether any rule is installed: the fast path of every batch.
    armed: AtomicBool,
    entries: Mutex<Vec<Option<Entry>>>,
    /// Nodes cut off for good ([`FaultPlan::isolate`]).
    isolated: Mutex<Vec<NodeId>>,
}

impl FaultPlan {
    pub fn new() -> FaultPlan {
        FaultPlan::default()
    }

    /// Installs `rule` after the existing ones.
    pub fn add(&self, rule: Rule) -> RuleId {
        let mut entries = self.entries.lock().expect(crate::POISONED);
        entries.push(Some(Entry { rule, matched: 0 }));
        self.armed.store(true, Ordering::Release);
        RuleId(entries.len() - 1)
    }

    /// Removes one rule; the others keep their places.
    pub fn remove(&self, id: RuleId) {
        let mut entries = self.entries.lock().expect(crate::POISONED);
        entries[id.0] = None;
        let isolated = !self.isolated.lock().expect(crate::POISONED).is_empty();
        self.armed.store(
            isolated || entries.iter().any(Option::is_some),
            Ordering::Release,
        );
    }

    /// Removes every rule: the fabric is healthy again (but for isolated nodes).
    pub fn heal(&self) {
        let mut entries = self.entries.lock().expect(crate::POISONED);
        entries.clear();
        let isolated = !self.isolated.lock().expect(crate::POISONED).is_empty();
        self.armed.store(isolated, Ordering::Release);
    }

    /// Cuts `node` off for good, as a node whose process died: every batch it posts from now
    /// on fails `Unreachable`, whatever the rules, and [`FaultPlan::heal`] does not undo it. A
    /// batch already past the plan (one a rule delays) still lands, as the last appends of a
    /// process that dies may.
    pub fn isolate(&self, node: NodeId) {
        // Under the entries' lock, so that `heal` and `remove` see it when they re-arm.
        let _entries = self.entries.lock().expect(crate::POISONED);
        self.isolated.lock().expect(crate::POISONED).push(node);
        self.armed.store(true, Ordering::Release);
    }

    /// Batches the rule acted on so far (not counting the ones it let through).
    pub fn hits(&self, id: RuleId) -> usize {
        let entries = self.entries.lock().expect(crate::POISONED);
        entries[id.0].as_ref().map_or(0, |entry| {
            let acted = entry.matched.saturating_sub(entry.rule.skip);
            entry.rule.times.map_or(acted, |times| acted.min(times))
        })
    }

    /// What to do with a batch from `from` to `to`, if any rule says.
    pub(crate) fn decide(&self, from: NodeId, to: NodeId, ops: &[Op]) -> Option<Action> {
        if !self.armed.load(Ordering::Acquire) {
            return None;
        }
        let mut entries = self.entries.lock().expect(crate::POISONED);
        if self.isolated.lock().expect(crate::POISONED).contains(&from) {
            return Some(Action::Fail);
        }
        for entry in entries.iter_mut().flatten() {
            let rule = &entry.rule;
            let applies = rule.to == to
                && rule.from.is_none_or(|f| f == from)
                && rule.filter.as_ref().is_none_or(|filter| filter(ops));
            if !applies {
                continue;
            }
            let index = entry.matched;
            entry.matched += 1;
            if index < rule.skip {
                return None;
            }
            if rule.times.is_some_and(|times| index - rule.skip >= times) {
                continue; // spent: later rules may still match
            }
            return Some(rule.action);
        }
        None
    }
}

/// The result of an operation the fault stopped.
pub(crate) fn injected(to: NodeId) -> OpResult {
    Err(OpError::Unreachable {
        node: to,
        reason: "fault injected".into(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn notify() -> Vec<Op> {
        vec![Op::Notify]
    }

    #[test]
    fn rules_match_by_sender_receiver_and_filter_then_skip_and_count() {
        let plan = FaultPlan::new();
        assert_eq!(plan.decide(NodeId(1), NodeId(2), &notify()), None);
        let fail = plan.add(
            Rule::to(NodeId(2), Action::Fail)
                .from(NodeId(1))
                .after(1)
                .times(2),
        );
        let delay = plan.add(
            Rule::to(NodeId(2), Action::Delay(Duration::from_millis(1)))
                .when(|ops| matches!(ops, [Op::Notify])),
        );
        // The first matching batch passes, the next two fail, then the rule is spent.
        assert_eq!(plan.decide(NodeId(1), NodeId(2), &notify()), None);
        assert_eq!(
            plan.decide(NodeId(1), NodeId(2), &notify()),
            Some(Action::Fail)
        );
        assert_eq!(
            plan.decide(NodeId(1), NodeId(2), &notify()),
            Some(Action::Fail)
        );
        assert_eq!(
            plan.decide(NodeId(1), NodeId(2), &notify()),
            Some(Action::Delay(Duration::from_millis(1)))
        );
        // Other senders and receivers are untouched by the first rule.
        assert_eq!(
            plan.decide(NodeId(3), NodeId(2), &notify()),
            Some(Action::Delay(Duration::from_millis(1)))
        );
        assert_eq!(plan.decide(NodeId(1), NodeId(3), &notify()), None);
        assert_eq!(plan.hits(fail), 2);
        plan.remove(delay);
        assert_eq!(plan.decide(NodeId(3), NodeId(2), &notify()), None);
        plan.heal();
        assert_eq!(plan.decide(NodeId(1), NodeId(2), &notify()), None);
    }

    #[test]
    fn an_isolated_node_stays_cut_off_whatever_the_rules() {
        let plan = FaultPlan::new();
        plan.isolate(NodeId(100));
        assert_eq!(
            plan.decide(NodeId(100), NodeId(1), &notify()),
            Some(Action::Fail)
        );
        assert_eq!(plan.decide(NodeId(1), NodeId(100), &notify()), None);
        let rule = plan.add(Rule::to(NodeId(2), Action::Fail).from(NodeId(1)));
        plan.remove(rule);
        plan.heal();
        assert_eq!(
            plan.decide(NodeId(100), NodeId(2), &notify()),
            Some(Action::Fail)
        );
        assert_eq!(plan.decide(NodeId(1), NodeId(2), &notify()), None);
    }
}
