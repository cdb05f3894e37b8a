//! A member's side of reconfiguration (docs/failures.md#reconfiguration, FaRM SOSP'15 §5.2): the
//! small sans-I/O state machine a node runs on the NEW-CONFIG and NEW-CONFIG-COMMIT envelopes
//! from the CM, over an [`Adopter`] that does the work (`ReplicaNode::adopt` and
//! `commit_config` on a memory node).
//!
//! - **NEW-CONFIG** of a higher id than the node's is adopted and acknowledged; an id equal to
//!   the one the node holds is acknowledged again without adopting anything (the CM resends
//!   until it hears an acknowledgement, and a new CM leader distributes the current
//!   configuration again); a lower id is refused as [`Refusal::Stale`], and a configuration
//!   that does not list the node as [`Refusal::Removed`] (the node must stop: its lease will
//!   not be renewed).
//! - **NEW-CONFIG-COMMIT** is applied only for the configuration the node adopted; any other id
//!   is ignored (a late commit of an older configuration, or one the node never heard of).
//! - **Lost commits.** Between adopting a configuration and its commit, the node repeats its
//!   acknowledgement every [`ACK_RESEND_PERIOD`] ([`Member::tick`]); the CM answers an
//!   acknowledgement of the configuration it committed with the commit again. No commit is
//!   ever lost for good, and nothing needs a timer on the CM's side once it is done.
//! - **Who may send them.** A configuration installed through Raft names the CM that installed
//!   it (`cm_leader`), so the node checks a NEW-CONFIG against the configuration it carries:
//!   it is taken only from the CM that configuration names, and a NEW-CONFIG-COMMIT only from
//!   the CM of the configuration adopted. Checking against the CM of the node's *current*
//!   configuration would shut out a new CM after the old one failed. A configuration that names
//!   no CM (a static cluster, built from a file) is taken from any sender: the links already
//!   admit only nodes that know the cluster secret. Envelopes from anyone else are ignored,
//!   not answered: a reply would tell a confused sender nothing it can act on.
//! - **Recovered regions.** Once a configuration in which a region is blocked with this node
//!   as its primary is committed, the node runs transaction recovery for it
//!   (docs/failures.md#transaction-recovery) and the CM must then make it active again. The
//!   member looks at [`Adopter::recovered`] every [`RECOVERY_POLL`] while such a region exists
//!   ([`Member::recovery_report`]) and, when the list is not empty, sends it to the CM of the
//!   configuration (`RegionsRecovered`), again every [`RECOVERY_REPORT_PERIOD`] until a newer
//!   configuration is adopted (the CM's, with the regions active, or any other: the report
//!   names the configuration it holds for, so a late one does nothing at the CM). Nothing is
//!   sent between NEW-CONFIG and its commit: recovery runs in a committed configuration.
//!   Completed copies go the same way in the same report: while the committed configuration
//!   lists this node as copying in a region, the member also looks at [`Adopter::copied`] and
//!   reports those of its regions still copying in that configuration, until a configuration
//!   that no longer lists it as copying there is adopted (docs/failures.md#data-recovery).
//! - **Damaged copies.** A node that found copies damaged at its restart holds them back; a
//!   committed configuration that still counts one complete (its primary's, or a backup's
//!   not copying) was made without knowing. After [`DAMAGED_REPORT_DELAY`] (the launcher's
//!   restart request, which names every damaged copy, usually comes first) the member names
//!   them in the same report (`RegionsRecovered.damaged`, [`Adopter::damaged_complete`]),
//!   until a configuration no longer counts them complete (docs/failures.md#whole-cluster-restart).

use crate::wire::{NewConfigAck, RegionsRecovered, envelope::Body};
use acre_engine::addr::{NodeId, RegionId};
use acre_engine::clock::Time;
use acre_txn::config::{Configuration, RegionState};
use std::sync::Arc;
use std::time::Duration;

/// How often a node that adopted a configuration repeats its acknowledgement until the commit
/// comes.
pub const ACK_RESEND_PERIOD: Duration = Duration::from_millis(20);
/// How often the member asks its adopter for recovered regions while a region is blocked with
/// this node as primary in its committed configuration: bounds how long a recovered region
/// waits before its report leaves (a few atomics and a lock per look, not a spin).
pub const RECOVERY_POLL: Duration = Duration::from_millis(5);
/// How often a recovery report goes to the CM again while the regions are still recovered and
/// blocked (the CM is busy with another reconfiguration, or the report was lost).
pub const RECOVERY_REPORT_PERIOD: Duration = Duration::from_millis(20);
/// How long a node holds damaged copies its configuration counts complete before it reports
/// them ([`Adopter::damaged_complete`]). In a whole-cluster restart the launcher's restart
/// request names every damaged copy of every node and comes within this time; a node's report
/// names only its own, and the CM acting on it may promote a backup whose copy is damaged too
/// and not reported yet (which refuses, and is removed). The report is for when that request
/// never comes; the copies are held back (unreadable) meanwhile.
pub const DAMAGED_REPORT_DELAY: Duration = Duration::from_secs(5);

/// What a node does at NEW-CONFIG and NEW-CONFIG-COMMIT.
///
/// A memory node's is `acre_replication::ReplicaNode` (`adopt`, `commit_config`), with one
/// more duty no implementation here takes on yet: `ReplicaNode::adopt` creates the areas of the
/// regions the node becomes a new backup of, and the other members must learn their keys before
/// the configuration commits (`EmbeddedCluster::reconfigure` does it in one process). `adopt`
/// returns only once that is done, so that the acknowledgement the CM counts means it.
pub trait Adopter {
    /// NEW-CONFIG: make ready what `config` asks of the node, then adopt it. Called only with
    /// an id higher than [`Adopter::current_id`] and a configuration that lists the node.
    fn adopt(&self, config: Arc<Configuration>) -> Result<(), String>;
    /// NEW-CONFIG-COMMIT of the configuration adopted, `id`.
    fn commit(&self, id: u64) -> Result<(), String>;
    /// The id of the configuration the node holds.
    fn current_id(&self) -> u64;
    /// The regions blocked in the node's configuration whose transactions it recovered (as
    /// their primary), for the CM to make active; empty once the configuration shows them
    /// active. A node without regions, or without recovery, has none.
    fn recovered(&self) -> Vec<RegionId> {
        Vec::new()
    }
    /// The regions whose copy the node completed (data recovery, as a backup its
    /// configuration lists as copying), for the CM to count complete; empty once the
    /// configuration no longer lists it as copying. A node without regions, or without data
    /// recovery, has none.
    fn copied(&self) -> Vec<RegionId> {
        Vec::new()
    }
    /// The regions whose copy at this node the configuration counts complete (its primary's,
    /// or a backup's not copying) although the node found it damaged at its restart and holds
    /// it back (docs/failures.md#whole-cluster-restart), for the CM to move or copy again;
    /// empty once no configuration does. A node that never restarted, or without regions, has
    /// none.
    fn damaged_complete(&self) -> Vec<RegionId> {
        Vec::new()
    }
}

/// Why a member refused NEW-CONFIG, as the ack's `refused` text starts.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Refusal {
    /// The node holds a higher id already.
    Stale,
    /// The configuration does not list the node.
    Removed,
    /// The node could not make ready what the configuration asks of it.
    Failed,
}

impl Refusal {
    pub fn name(self) -> &'static str {
        match self {
            Refusal::Stale => "stale",
            Refusal::Removed => "removed",
            Refusal::Failed => "failed",
        }
    }

    /// The refusal an ack's `refused` text names (`name` or `name: detail`); `None` for an
    /// empty text (not refused) or an unknown name.
    pub fn parse(refused: &str) -> Option<Refusal> {
        let name = refused.split(':').next().unwrap_or("").trim();
        [Refusal::Stale, Refusal::Removed, Refusal::Failed]
            .into_iter()
            .find(|r| r.name() == name)
    }
}

/// A member's side of reconfiguration (module docs).
#[derive(Debug)]
pub struct Member<A> {
    me: NodeId,
    adopter: A,
    /// The configuration adopted through NEW-CONFIG and not committed yet, and when the ack
    /// goes out again.
    pending: Option<(Arc<Configuration>, Time)>,
    /// The configuration adopted through NEW-CONFIG and committed last, and when the member
    /// looks at the recovered regions next: only while a region is blocked with this node as
    /// primary in it, and it names a CM to tell (module docs, "Recovered regions").
    recovering: Option<(Arc<Configuration>, Time)>,
    /// When the member first saw damaged copies its configuration keeps it primary of (module
    /// docs, [`DAMAGED_REPORT_DELAY`]); `None` while there are none.
    damaged_since: Option<Time>,
}

/// A message for one node.
pub type Reply = (NodeId, Body);

impl<A: Adopter> Member<A> {
    pub fn new(me: NodeId, adopter: A) -> Member<A> {
        Member {
            me,
            adopter,
            pending: None,
            recovering: None,
            damaged_since: None,
        }
    }

    pub fn adopter(&self) -> &A {
        &self.adopter
    }

    /// The configuration adopted and waiting for its commit, if any.
    pub fn pending_id(&self) -> Option<u64> {
        self.pending.as_ref().map(|(config, _)| config.id)
    }

    /// Takes an envelope's body from `from`; returns the answer, if any. Bodies other than
    /// NEW-CONFIG and NEW-CONFIG-COMMIT are not this machine's and are ignored.
    pub fn receive(&mut self, from: NodeId, body: &Body, now: Time) -> Option<Reply> {
        match body {
            Body::NewConfig(message) => {
                let config = match Configuration::try_from(message) {
                    Ok(config) => config,
                    Err(e) => {
                        tracing::warn!(%from, "malformed NEW-CONFIG ignored: {e}");
                        return None;
                    }
                };
                self.new_config(from, Arc::new(config), now)
                    .map(|ack| (from, Body::NewConfigAck(ack)))
            }
            Body::NewConfigCommit(id) => {
                self.commit(from, *id);
                None
            }
            _ => None,
        }
    }

    /// NEW-CONFIG of `config` from `from`: the acknowledgement to send back, if any.
    pub fn new_config(
        &mut self,
        from: NodeId,
        config: Arc<Configuration>,
        now: Time,
    ) -> Option<NewConfigAck> {
        if !sent_by_its_cm(&config, from) {
            tracing::warn!(%from, id = config.id, cm = ?config.cm_leader, "NEW-CONFIG from a node that is not its CM ignored");
            return None;
        }
        let current = self.adopter.current_id();
        let refuse = |refusal: Refusal, detail: String| {
            Some(NewConfigAck {
                id: config.id,
                refused: format!("{}: {detail}", refusal.name()),
            })
        };
        if config.id < current {
            return refuse(
                Refusal::Stale,
                format!("{} holds configuration {current}", self.me),
            );
        }
        if !config.members().any(|m| m == self.me) {
            return refuse(
                Refusal::Removed,
                format!("configuration {} does not list {}", config.id, self.me),
            );
        }
        if config.id > current {
            if let Err(reason) = self.adopter.adopt(config.clone()) {
                tracing::warn!(id = config.id, %reason, "could not adopt NEW-CONFIG");
                return refuse(Refusal::Failed, reason);
            }
            let adopted = self.adopter.current_id();
            assert_eq!(
                adopted, config.id,
                "adopted={adopted} offered={}",
                config.id
            );
            self.pending = Some((config.clone(), now + ACK_RESEND_PERIOD));
            // Recovery runs in a committed configuration: reports wait for this one's commit.
            self.recovering = None;
        }
        // Equal ids: adopted already (or the node's first configuration): acknowledge again.
        // A node that holds it committed and has not heard from its CM (restarted in it: a new
        // CM leader that led before distributes it again, with the same id) reports what it
        // recovers in it from now on.
        if config.id == current && self.pending.is_none() && self.recovering.is_none() {
            self.recovering = self.recovers_in(&config).then_some((config.clone(), now));
        }
        Some(NewConfigAck {
            id: config.id,
            refused: String::new(),
        })
    }

    /// NEW-CONFIG-COMMIT of configuration `id` from `from`: applied only for the configuration
    /// adopted and from its CM. Returns whether it was applied.
    pub fn commit(&mut self, from: NodeId, id: u64) -> bool {
        let Some((config, _)) = &self.pending else {
            return false;
        };
        if config.id != id {
            tracing::debug!(
                id,
                adopted = config.id,
                "NEW-CONFIG-COMMIT of another configuration ignored"
            );
            return false;
        }
        if !sent_by_its_cm(config, from) {
            tracing::warn!(%from, id, "NEW-CONFIG-COMMIT from a node that is not the CM ignored");
            return false;
        }
        match self.adopter.commit(id) {
            Ok(()) => {
                let (config, _) = self.pending.take().expect("checked above");
                let recovers = self.recovers_in(&config);
                // The first look at the next tick: recovery starts now, and usually takes longer.
                self.recovering = recovers.then_some((config, Time::ZERO));
                true
            }
            Err(reason) => {
                // Adopted and not committed: only a newer adoption behind our back does that.
                tracing::warn!(id, %reason, "NEW-CONFIG-COMMIT not applied");
                false
            }
        }
    }

    /// Time passed: the acknowledgement of the configuration adopted goes again to its CM, if
    /// its period is up (module docs, "Lost commits").
    pub fn tick(&mut self, now: Time) -> Option<Reply> {
        let (config, resend_at) = self.pending.as_mut()?;
        if now < *resend_at {
            return None;
        }
        *resend_at = now + ACK_RESEND_PERIOD;
        let cm = config.cm_leader?;
        Some((
            cm,
            Body::NewConfigAck(NewConfigAck {
                id: config.id,
                refused: String::new(),
            }),
        ))
    }

    /// Whether this node has something to report in `config`: a blocked region it is the
    /// primary of, or a region it copies.
    fn recovers_in(&self, config: &Configuration) -> bool {
        config.cm_leader.is_some()
            && (config.regions.iter().any(|p| {
                (p.state == RegionState::Blocked && p.primary == self.me)
                    || p.copying.contains(&self.me)
            }) || !self.adopter.damaged_complete().is_empty())
    }

    /// Time passed: the regions whose transactions the node recovered, if any, go to the CM of
    /// its committed configuration, at most every [`RECOVERY_REPORT_PERIOD`] (module docs,
    /// "Recovered regions").
    pub fn recovery_report(&mut self, now: Time) -> Option<Reply> {
        let (config, look_at) = self.recovering.as_mut()?;
        if now < *look_at {
            return None;
        }
        if self.adopter.current_id() != config.id {
            // The node moved on without this member (it never does through NEW-CONFIG): its
            // configuration is not the one to report for.
            self.recovering = None;
            return None;
        }
        let regions = self.adopter.recovered();
        // Only copies this configuration still counts as copying: the CM ignores a report of
        // any other, and a complete one needs no report.
        let copying_here = |region: &RegionId| {
            config
                .placement(*region)
                .is_some_and(|p| p.copying.contains(&self.me))
        };
        let copied: Vec<RegionId> = self
            .adopter
            .copied()
            .into_iter()
            .filter(copying_here)
            .collect();
        // Only copies this configuration counts complete: the CM ignores the rest.
        let complete_here = |region: &RegionId| {
            config.placement(*region).is_some_and(|p| {
                p.state != RegionState::Lost && p.complete_replicas().any(|r| r == self.me)
            })
        };
        let mut damaged: Vec<RegionId> = self
            .adopter
            .damaged_complete()
            .into_iter()
            .filter(complete_here)
            .collect();
        if damaged.is_empty() {
            self.damaged_since = None;
        } else if now < *self.damaged_since.get_or_insert(now) + DAMAGED_REPORT_DELAY {
            damaged.clear();
        }
        if regions.is_empty() && copied.is_empty() && damaged.is_empty() {
            *look_at = now + RECOVERY_POLL;
            return None;
        }
        *look_at = now + RECOVERY_REPORT_PERIOD;
        let cm = config.cm_leader?;
        Some((
            cm,
            Body::RegionsRecovered(RegionsRecovered {
                config: config.id,
                regions: regions.iter().map(|region| region.0).collect(),
                copied: copied.iter().map(|region| region.0).collect(),
                damaged: damaged.iter().map(|region| region.0).collect(),
            }),
        ))
    }

    /// When [`Member::tick`] or [`Member::recovery_report`] has something to do next.
    pub fn next_deadline(&self) -> Option<Time> {
        let pending = self.pending.as_ref().map(|(_, at)| *at);
        let recovering = self.recovering.as_ref().map(|(_, at)| *at);
        pending.into_iter().chain(recovering).min()
    }
}

/// Whether `from` may send NEW-CONFIG (or its commit) of `config` (module docs, "Who may send
/// them").
fn sent_by_its_cm(config: &Configuration, from: NodeId) -> bool {
    config.cm_leader.is_none_or(|cm| cm == from)
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::wire::ConfigurationMessage;
    use std::cell::RefCell;

    /// An adopter that keeps the id and whether it is committed, and checks the rules a real
    /// node enforces: ids only grow, and only the adopted id is committed.
    #[derive(Debug, Default)]
    pub(crate) struct FakeNode {
        pub(crate) state: RefCell<FakeState>,
    }

    #[derive(Debug, Default)]
    pub(crate) struct FakeState {
        pub(crate) id: u64,
        pub(crate) committed: bool,
        pub(crate) adopt_count: usize,
        pub(crate) fail_next: bool,
        pub(crate) recovered: Vec<RegionId>,
        pub(crate) copied: Vec<RegionId>,
        pub(crate) damaged: Vec<RegionId>,
        /// The configuration adopted last.
        pub(crate) config: Option<Arc<Configuration>>,
    }

    impl FakeNode {
        pub(crate) fn at(id: u64) -> FakeNode {
            let node = FakeNode::default();
            node.state.borrow_mut().id = id;
            node.state.borrow_mut().committed = true;
            node
        }
    }

    impl Adopter for FakeNode {
        fn adopt(&self, config: Arc<Configuration>) -> Result<(), String> {
            let mut state = self.state.borrow_mut();
            assert!(
                config.id > state.id,
                "offered={} current={}",
                config.id,
                state.id
            );
            if std::mem::take(&mut state.fail_next) {
                return Err("no memory for the copy".into());
            }
            state.id = config.id;
            state.config = Some(config.clone());
            state.committed = false;
            state.adopt_count += 1;
            Ok(())
        }

        fn commit(&self, id: u64) -> Result<(), String> {
            let mut state = self.state.borrow_mut();
            assert_eq!(id, state.id, "commit of {id} in {}", state.id);
            state.committed = true;
            Ok(())
        }

        fn current_id(&self) -> u64 {
            self.state.borrow().id
        }

        fn recovered(&self) -> Vec<RegionId> {
            self.state.borrow().recovered.clone()
        }

        fn damaged_complete(&self) -> Vec<RegionId> {
            self.state.borrow().damaged.clone()
        }

        fn copied(&self) -> Vec<RegionId> {
            self.state.borrow().copied.clone()
        }
    }

    const CM: NodeId = NodeId(1);
    const ME: NodeId = NodeId(3);

    fn ms(ms: u64) -> Time {
        Time::from_nanos(ms * 1_000_000)
    }

    fn config(id: u64, nodes: &[u16]) -> Arc<Configuration> {
        let nodes = nodes.iter().copied().map(NodeId).collect();
        let mut config = Configuration::place(id, nodes, vec![], 1, 1, 1 << 20, 4096).unwrap();
        config.cm_leader = Some(CM);
        Arc::new(config)
    }

    fn acked(ack: Option<NewConfigAck>, id: u64) {
        assert_eq!(
            ack,
            Some(NewConfigAck {
                id,
                refused: String::new()
            })
        );
    }

    fn refused(ack: Option<NewConfigAck>) -> Refusal {
        let ack = ack.expect("an answer");
        Refusal::parse(&ack.refused).unwrap_or_else(|| panic!("{ack:?}"))
    }

    #[test]
    fn higher_ids_are_adopted_equal_ones_acked_again_lower_ones_refused() {
        let mut member = Member::new(ME, FakeNode::at(5));
        acked(member.new_config(CM, config(6, &[1, 2, 3]), ms(0)), 6);
        assert_eq!(member.pending_id(), Some(6));
        // The CM resends: acknowledged again, adopted once.
        acked(member.new_config(CM, config(6, &[1, 2, 3]), ms(1)), 6);
        assert_eq!(member.adopter().state.borrow().adopt_count, 1);
        assert_eq!(
            refused(member.new_config(CM, config(4, &[1, 2, 3]), ms(2))),
            Refusal::Stale
        );
        assert_eq!(member.adopter().current_id(), 6);
        // A node's first configuration, committed, is acknowledged too (a new CM resends it).
        let mut member = Member::new(ME, FakeNode::at(5));
        acked(member.new_config(CM, config(5, &[1, 2, 3]), ms(0)), 5);
        assert_eq!(member.pending_id(), None);
    }

    #[test]
    fn a_configuration_without_the_node_is_refused_as_removed_and_not_adopted() {
        let mut member = Member::new(ME, FakeNode::at(5));
        assert_eq!(
            refused(member.new_config(CM, config(6, &[1, 2, 4]), ms(0))),
            Refusal::Removed
        );
        assert_eq!(member.adopter().current_id(), 5);
        assert_eq!(member.pending_id(), None);
        member.adopter().state.borrow_mut().fail_next = true;
        assert_eq!(
            refused(member.new_config(CM, config(6, &[1, 2, 3]), ms(0))),
            Refusal::Failed
        );
        assert_eq!(member.pending_id(), None);
    }

    #[test]
    fn commit_applies_only_to_the_adopted_id_from_its_cm() {
        let mut member = Member::new(ME, FakeNode::at(5));
        assert!(!member.commit(CM, 5), "nothing adopted");
        acked(member.new_config(CM, config(6, &[1, 2, 3]), ms(0)), 6);
        assert!(!member.commit(CM, 7), "not adopted");
        assert!(!member.commit(CM, 5), "an older one");
        assert!(!member.commit(NodeId(2), 6), "n2 is not the CM of 6");
        assert!(!member.adopter().state.borrow().committed);
        assert!(member.commit(CM, 6));
        assert!(member.adopter().state.borrow().committed);
        assert_eq!(member.pending_id(), None);
        assert!(!member.commit(CM, 6), "taken once");
    }

    #[test]
    fn new_config_from_another_node_than_its_cm_is_ignored() {
        let mut member = Member::new(ME, FakeNode::at(5));
        assert_eq!(
            member.new_config(NodeId(2), config(6, &[1, 2, 3]), ms(0)),
            None
        );
        assert_eq!(member.adopter().current_id(), 5);
        // A configuration that names no CM (a static cluster) is taken from anyone.
        let mut plain = (*config(6, &[1, 2, 3])).clone();
        plain.cm_leader = None;
        acked(member.new_config(NodeId(2), Arc::new(plain), ms(0)), 6);
        assert!(member.commit(NodeId(2), 6));
    }

    #[test]
    fn the_ack_is_repeated_until_the_commit_comes() {
        let mut member = Member::new(ME, FakeNode::at(5));
        assert_eq!(member.tick(ms(100)), None, "nothing pending");
        let body = Body::NewConfig(ConfigurationMessage::from(&*config(6, &[1, 2, 3])));
        let (to, reply) = member.receive(CM, &body, ms(0)).unwrap();
        assert_eq!(to, CM);
        assert!(
            matches!(reply, Body::NewConfigAck(ref ack) if ack.id == 6 && ack.refused.is_empty())
        );
        assert_eq!(member.tick(ms(19)), None);
        assert_eq!(member.tick(ms(20)), Some((CM, reply.clone())));
        assert_eq!(member.tick(ms(21)), None);
        assert_eq!(member.next_deadline(), Some(ms(40)));
        assert_eq!(member.receive(CM, &Body::NewConfigCommit(6), ms(22)), None);
        assert_eq!(member.tick(ms(100)), None, "committed");
        assert_eq!(
            member.receive(CM, &Body::Probe(3), ms(22)),
            None,
            "not this machine's"
        );
    }

    /// `config(id, [1, 2, 3])` with `blocked` regions blocked (region k has its primary on
    /// node k).
    fn with_blocked(id: u64, blocked: &[u32]) -> Arc<Configuration> {
        let mut config = (*config(id, &[1, 2, 3])).clone();
        for placement in &mut config.regions {
            if blocked.contains(&placement.region.0) {
                placement.state = RegionState::Blocked;
            }
        }
        Arc::new(config)
    }

    fn report(config: u64, regions: &[u32]) -> Option<Reply> {
        report_with_copies(config, regions, &[])
    }

    fn report_with_copies(config: u64, regions: &[u32], copied: &[u32]) -> Option<Reply> {
        Some((
            CM,
            Body::RegionsRecovered(RegionsRecovered {
                config,
                regions: regions.to_vec(),
                copied: copied.to_vec(),
                damaged: Vec::new(),
            }),
        ))
    }

    /// `with_blocked(id, blocked)` with this node (n3, r2's backup) copying r2 when `copying`.
    fn with_copying(id: u64, blocked: &[u32], copying: bool) -> Arc<Configuration> {
        let mut config = (*with_blocked(id, blocked)).clone();
        let r2 = config.regions.iter_mut().find(|p| p.region == RegionId(2));
        let r2 = r2.unwrap();
        assert_eq!(r2.backups, [ME], "{r2:?}");
        if copying {
            r2.copying = vec![ME];
        }
        Arc::new(config)
    }

    // docs/failures.md#data-recovery: a new backup reports its completed copies to the CM of
    // its committed configuration, in the report recovered regions go in, until a
    // configuration no longer lists it as copying.
    #[test]
    fn completed_copies_are_reported_until_a_configuration_counts_them() {
        let mut member = Member::new(ME, FakeNode::at(5));
        acked(member.new_config(CM, with_copying(6, &[], true), ms(0)), 6);
        // r1's copy is none of this node's in configuration 6: never reported.
        member.adopter().state.borrow_mut().copied = vec![RegionId(1), RegionId(2)];
        assert_eq!(member.recovery_report(ms(1)), None, "not committed yet");
        assert!(member.commit(CM, 6));
        assert_eq!(member.next_deadline(), Some(Time::ZERO), "look at once");
        assert_eq!(
            member.recovery_report(ms(2)),
            report_with_copies(6, &[], &[2])
        );
        assert_eq!(member.recovery_report(ms(21)), None, "paced");
        assert_eq!(
            member.recovery_report(ms(22)),
            report_with_copies(6, &[], &[2])
        );
        // Recovered regions and copies in one report.
        member.adopter().state.borrow_mut().recovered = vec![RegionId(3)];
        assert_eq!(
            member.recovery_report(ms(42)),
            report_with_copies(6, &[3], &[2])
        );
        // Neither: looked at again after the poll.
        member.adopter().state.borrow_mut().recovered.clear();
        member.adopter().state.borrow_mut().copied.clear();
        assert_eq!(member.recovery_report(ms(62)), None);
        assert_eq!(member.next_deadline(), Some(ms(62) + RECOVERY_POLL));

        // The CM's next configuration counts the copy complete: no more looks.
        member.adopter().state.borrow_mut().copied = vec![RegionId(2)];
        acked(
            member.new_config(CM, with_copying(7, &[], false), ms(70)),
            7,
        );
        assert!(member.commit(CM, 7));
        assert_eq!(member.next_deadline(), None);
        assert_eq!(member.recovery_report(ms(100)), None);
    }

    // docs/failures.md#whole-cluster-restart: a node restarted in a configuration that blocks
    // its region (the cluster was killed during its restart) hears it again, same id, from a
    // new CM that led before: it reports what it recovers there.
    #[test]
    fn a_node_started_in_a_blocking_configuration_reports_once_its_cm_sends_it() {
        let mut member = Member::new(ME, FakeNode::at(6));
        member.adopter().state.borrow_mut().recovered = vec![RegionId(3)];
        assert_eq!(member.recovery_report(ms(0)), None, "no CM heard from yet");
        acked(member.new_config(CM, with_blocked(6, &[3]), ms(1)), 6);
        assert_eq!(member.pending_id(), None, "nothing to adopt");
        assert_eq!(member.recovery_report(ms(2)), report(6, &[3]));
        // A configuration blocking nothing of this node's starts nothing.
        let mut member = Member::new(ME, FakeNode::at(6));
        acked(member.new_config(CM, with_blocked(6, &[]), ms(1)), 6);
        assert_eq!(member.next_deadline(), None);
    }

    // docs/failures.md#transaction-recovery: a new primary reports its recovered regions to
    // the CM of its committed configuration until a configuration shows them active.
    #[test]
    fn recovered_regions_are_reported_to_the_cm_until_a_new_configuration_comes() {
        let mut member = Member::new(ME, FakeNode::at(5));
        assert_eq!(
            member.recovery_report(ms(0)),
            None,
            "nothing committed here"
        );
        acked(member.new_config(CM, with_blocked(6, &[3]), ms(0)), 6);
        member.adopter().state.borrow_mut().recovered = vec![RegionId(3)];
        assert_eq!(member.recovery_report(ms(1)), None, "not committed yet");
        assert!(member.commit(CM, 6));
        assert_eq!(member.next_deadline(), Some(Time::ZERO), "look at once");
        assert_eq!(member.recovery_report(ms(2)), report(6, &[3]));
        // Again after the report period, not before.
        assert_eq!(member.recovery_report(ms(21)), None);
        assert_eq!(member.next_deadline(), Some(ms(22)));
        assert_eq!(member.recovery_report(ms(22)), report(6, &[3]));
        // Nothing recovered: looked at again after the poll, not reported.
        member.adopter().state.borrow_mut().recovered.clear();
        assert_eq!(member.recovery_report(ms(42)), None);
        assert_eq!(member.next_deadline(), Some(ms(42) + RECOVERY_POLL));

        // The CM's next configuration, r3 active: adopted, then committed, and no more
        // reports or looks.
        member.adopter().state.borrow_mut().recovered = vec![RegionId(3)];
        acked(member.new_config(CM, with_blocked(7, &[]), ms(50)), 7);
        assert_eq!(member.recovery_report(ms(60)), None, "7 is not committed");
        assert_eq!(
            member.next_deadline(),
            Some(ms(70)),
            "the ack's resend only"
        );
        assert!(member.commit(CM, 7));
        assert_eq!(member.next_deadline(), None);
        assert_eq!(member.recovery_report(ms(100)), None);

        // A region blocked at another node is none of this member's.
        acked(member.new_config(CM, with_blocked(8, &[1]), ms(110)), 8);
        assert!(member.commit(CM, 8));
        assert_eq!(member.next_deadline(), None);
        assert_eq!(member.recovery_report(ms(120)), None);
    }

    // docs/failures.md#whole-cluster-restart: a node whose copies were found damaged at its
    // restart, in a configuration made without knowing (nothing blocked) that counts them
    // complete, reports them to the CM until a configuration no longer does.
    #[test]
    fn damaged_copies_counted_complete_are_reported_until_no_configuration_counts_them() {
        let mut member = Member::new(ME, FakeNode::at(5));
        // r3's primary is this node (n3) and r2's backup; r1 is none of its.
        member.adopter().state.borrow_mut().damaged = vec![RegionId(1), RegionId(2), RegionId(3)];
        acked(member.new_config(CM, with_blocked(6, &[]), ms(0)), 6);
        assert_eq!(member.recovery_report(ms(1)), None, "not committed yet");
        assert!(member.commit(CM, 6));
        // Held back first: the launcher's restart request, which names every damaged copy,
        // may still come.
        assert_eq!(member.recovery_report(ms(2)), None);
        assert_eq!(
            member.recovery_report(ms(2) + DAMAGED_REPORT_DELAY / 2),
            None
        );
        let late = ms(2) + DAMAGED_REPORT_DELAY;
        let damaged = |config: u64, regions: &[u32]| {
            Some((
                CM,
                Body::RegionsRecovered(RegionsRecovered {
                    config,
                    regions: Vec::new(),
                    copied: Vec::new(),
                    damaged: regions.to_vec(),
                }),
            ))
        };
        assert_eq!(member.recovery_report(late), damaged(6, &[2, 3]));
        assert_eq!(
            member.recovery_report(late + Duration::from_millis(19)),
            None,
            "paced"
        );
        assert_eq!(
            member.recovery_report(late + Duration::from_millis(20)),
            damaged(6, &[2, 3])
        );

        // The CM's answer: r3 has another primary and this node copies r2 again; nothing more
        // to report.
        let mut moved = (*with_blocked(7, &[3])).clone();
        let r3 = moved.regions.iter_mut().find(|p| p.region == RegionId(3));
        let r3 = r3.expect("r3");
        let backup = r3.backups[0];
        r3.backups = vec![ME];
        r3.copying = vec![ME];
        r3.primary = backup;
        let r2 = moved.regions.iter_mut().find(|p| p.region == RegionId(2));
        r2.expect("r2").copying = vec![ME];
        acked(
            member.new_config(CM, Arc::new(moved), late + Duration::from_millis(30)),
            7,
        );
        assert!(member.commit(CM, 7));
        assert_eq!(
            member.recovery_report(late + Duration::from_millis(40)),
            None
        );
        assert_eq!(
            member.recovery_report(late + Duration::from_millis(80)),
            None
        );
    }

    #[test]
    fn a_malformed_new_config_is_ignored() {
        let mut member = Member::new(ME, FakeNode::at(5));
        let mut message = ConfigurationMessage::from(&*config(6, &[1, 2, 3]));
        message.nodes[0] = 70_000;
        assert_eq!(member.receive(CM, &Body::NewConfig(message), ms(0)), None);
        assert_eq!(member.adopter().current_id(), 5);
    }

    #[test]
    fn refusal_names_round_trip() {
        for refusal in [Refusal::Stale, Refusal::Removed, Refusal::Failed] {
            assert_eq!(Refusal::parse(refusal.name()), Some(refusal));
            assert_eq!(
                Refusal::parse(&format!("{}: why", refusal.name())),
                Some(refusal)
            );
        }
        assert_eq!(Refusal::parse(""), None);
        assert_eq!(Refusal::parse("tired"), None);
    }
}
