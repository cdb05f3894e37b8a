//! The CM leader's reconfiguration driver (docs/failures.md#reconfiguration, FaRM SOSP'15
//! §5.2), as a sans-I/O state machine: events and the time come in as arguments, what to do
//! goes out as [`Action`]s, so the group thread can drive it and a test can run it step by step.
//!
//! # The protocol
//!
//! 1. **Suspect.** The lease table reports a member whose lease expired ([`Manager::suspect`]).
//! 2. **Probe.** The CM probes every other member of configuration `c` and waits up to
//!    [`ManagerTiming::probe_timeout`] (less when all answer). It needs a majority of `c`'s
//!    members (itself included when it is one, suspects counted in the total) to answer, or it
//!    stands down ([`Action::StandDown`]): a CM that reaches only a minority is more likely the
//!    one cut off, and must not evict the majority.
//! 3. **Plan.** The nodes that failed are the suspects plus the members that did not answer a
//!    probe in time, as in FaRM: a member silent to the CM now will see its lease run out soon,
//!    and removing it with the suspects saves a second reconfiguration a lease later. The plan
//!    is [`remap::after_failure`], with this CM named as the new configuration's CM
//!    (`cm_leader`), since members check NEW-CONFIG against the CM its configuration names.
//! 4. **Install** `c + 1` through Raft by compare-and-set on the id ([`Action::ProposeInstall`],
//!    expected id `c`); the caller reports the outcome ([`Manager::install_outcome`]). A `Lost`
//!    proposal is proposed again; a `Stale` one means another CM installed a configuration: the
//!    manager takes it as `c` and plans again from it (the failed nodes it still lists), or, if
//!    nothing is left to remove and it already names this CM, distributes it as its own. Both
//!    are bounded by [`INSTALL_ATTEMPTS_MAX`], after which the CM stands down.
//! 5. **NEW-CONFIG** to every member of `c + 1`, sent again every
//!    [`ManagerTiming::resend_period`] to those that have not acknowledged it (the links drop
//!    messages). Before that, [`Action::UpdateLeaseMembers`] tells the caller to move the lease
//!    table to `c + 1`; the caller answers with [`Manager::leases_updated`], until when leases
//!    granted to nodes `c + 1` removed may still run.
//! 6. **Wait** until every member acknowledged `c + 1` *and* every removed node's lease has
//!    expired, so that the removed nodes have stopped on their own (precise membership: they
//!    cannot be told, and a one-sided operation of theirs cannot be refused).
//! 7. **NEW-CONFIG-COMMIT** to every member. A member that missed it keeps repeating its
//!    acknowledgement ([`crate::member`]); an acknowledgement of the configuration this CM
//!    committed is answered with the commit again, so a lost commit costs a resend period.
//!
//! Suspicions that arrive during a reconfiguration wait for the next one, which starts as soon
//! as the current one commits.
//!
//! # Decisions
//!
//! - **A member that never acknowledges.** After [`ManagerTiming::ack_timeout`] the members
//!   that did not acknowledge are suspected, and the next reconfiguration (which probes, so a
//!   cut-off CM still stands down) starts at once from `c + 1` without committing it: a commit
//!   says every member adopted the configuration, which is not true, and the next
//!   configuration supersedes it (members adopt any higher id). The same happens at once to a
//!   member that refuses NEW-CONFIG for any reason but a stale id.
//! - **A member that refuses as stale** holds a higher id than the one offered: another CM
//!   installed a newer configuration, so this one stands down.
//! - **The removed leases** are a running maximum over every report: a reconfiguration that
//!   supersedes an uncommitted one also waits out the leases of the nodes that one removed.
//! - **A new leader** ([`Manager::became_leader`]) first installs `c + 1` that is `c` naming it
//!   as CM (members accept NEW-CONFIG only from the CM the configuration names, and the lease
//!   handshake names the CM too), unless `c` names it already, in which case it distributes
//!   and commits `c` again (members acknowledge an id they hold again). Its caller reports the
//!   removed leases as one lease from now: it cannot know when the previous CM last granted.
//! - **Recovered regions** ([`Change::Activate`]): a region blocked by a new primary becomes
//!   active only by a configuration the CM installs when that primary reports its transactions
//!   recovered ([`remap::activate`]), run as any other change. A report of another
//!   configuration than the current one, of regions that are no longer blocked, or that comes
//!   while a reconfiguration runs is nothing to do, not an error: its node reports again until
//!   its configuration shows the regions active ([`crate::member`], "Recovered regions").
//!   Completed copies take the same path: a new backup whose copy data recovery filled
//!   reports it in the same change, and the CM installs a configuration in which it is no
//!   longer copying ([`remap::copy_complete`], both at once: [`remap::after_recovery`]);
//!   a report of regions it no longer copies is nothing to do.
//! - **Damaged copies** ([`Change::DamagedCopies`]): a node reports copies it found damaged
//!   at its restart that the configuration counts complete (one made before the restart
//!   request that names the damage, or without one); a primary's region goes to an intact
//!   backup, blocked, or is lost, and a backup's copy is copied again
//!   ([`remap::damaged_copies`]). A report of another configuration, or of copies it no longer
//!   counts complete, is nothing to do.
//! - **Restarted nodes** ([`Change::Restart`]): node processes restarted from their files
//!   (a whole-cluster restart) stay members; their regions block and their backups copy
//!   again ([`remap::restart`]). Nobody is removed, so no lease is waited out: the restarted
//!   nodes ask for fresh leases as any member renews, under the new configuration. A lost or
//!   stale proposal is planned again from the configuration then known, and a restart that
//!   plan finds in it already (a lost proposal that was applied) is distributed as it is.
//!
//!
//! # Driving it
//!
//! The caller (the CM group's thread) feeds it the lease table's suspects, the replies and
//! acknowledgements from the CM links, Raft's outcomes and leadership changes, and calls
//! [`Manager::tick`] at [`Manager::next_deadline`]. For [`Manager::leases_updated`] it reads
//! [`crate::lease::CmLeases::node_lease_until`] of every node the new configuration drops
//! *before* [`crate::lease::CmLeases::set_configuration`] (after it, the table keeps only their
//! maximum with the members' leases, which members renew forever). The CM's own member, when
//! it is one, gets its NEW-CONFIG like any other, looped back locally. Probe nonces start at 1
//! in every process: a reply to a probe of an earlier run only makes a live node look live.
//!
//! Each reconfiguration leaves a [`Reconfiguration`] record with its timings, for `acre cluster
//! status` and the measurements of issue 13.

use crate::remap;
use crate::wire::NewConfigAck;
use acre_engine::addr::{NodeId, RegionId};
use acre_engine::clock::Time;
use acre_txn::config::{Configuration, RegionState};
use std::collections::{BTreeSet, VecDeque};
use std::fmt;
use std::sync::Arc;
use std::time::Duration;

/// Proposals of one reconfiguration (lost or stale) before the CM gives up and stands down:
/// a leader whose proposals keep failing is not the leader any longer, or not for long.
pub const INSTALL_ATTEMPTS_MAX: u32 = 8;
/// Reconfiguration records kept for `acre cluster status`.
pub const RECORDS_KEPT: usize = 32;
/// The most members a configuration has (the lease table's bound): bounds the suspects queued.
pub const MEMBERS_MAX: usize = crate::lease::MEMBERS_MAX;

/// How long the probe waits for answers by default: a member that answers nothing in this
/// time on a loaded two-core machine is as good as gone.
pub const PROBE_TIMEOUT_DEFAULT: Duration = Duration::from_millis(100);
/// How often NEW-CONFIG is sent again to a member that has not acknowledged it, by default.
pub const RESEND_PERIOD_DEFAULT: Duration = Duration::from_millis(20);
/// How long the CM waits for a member's acknowledgement before it suspects it, by default:
/// many resends, and several leases of the default length.
pub const ACK_TIMEOUT_DEFAULT: Duration = Duration::from_secs(1);

/// The manager's timeouts.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ManagerTiming {
    pub probe_timeout: Duration,
    pub resend_period: Duration,
    pub ack_timeout: Duration,
}

impl Default for ManagerTiming {
    fn default() -> ManagerTiming {
        ManagerTiming {
            probe_timeout: PROBE_TIMEOUT_DEFAULT,
            resend_period: RESEND_PERIOD_DEFAULT,
            ack_timeout: ACK_TIMEOUT_DEFAULT,
        }
    }
}

/// What the caller does for the manager.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Action {
    /// Send `Probe(nonce)` to `to`; its `ProbeReply` goes to [`Manager::probe_reply`].
    SendProbe { to: NodeId, nonce: u64 },
    /// Propose `Install { expected_id, configuration }` through Raft and report the outcome to
    /// [`Manager::install_outcome`]: every proposal's, a timeout as [`InstallOutcome::Lost`]
    /// (the manager waits for it and for nothing else meanwhile).
    ProposeInstall {
        expected_id: u64,
        configuration: Arc<Configuration>,
    },
    /// Move the lease table to `configuration`, then report until when the leases granted to
    /// the nodes it no longer lists may run ([`Manager::leases_updated`]).
    UpdateLeaseMembers { configuration: Arc<Configuration> },
    /// Send NEW-CONFIG of `configuration` to `to`; its ack goes to [`Manager::ack`].
    SendNewConfig {
        to: NodeId,
        configuration: Arc<Configuration>,
    },
    /// Send NEW-CONFIG-COMMIT of configuration `id` to `to`.
    SendNewConfigCommit { to: NodeId, id: u64 },
    /// Stop acting as CM (give up Raft leadership); the manager is a follower from now on.
    StandDown { reason: String },
}

/// The outcome of an [`Action::ProposeInstall`], as the Raft replica reports it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum InstallOutcome {
    /// Applied: this is the configuration now.
    Installed(Configuration),
    /// The expected id was not current: this one is.
    Stale(Configuration),
    /// Its fate is unknown (leadership changed, or another entry took its place).
    Lost,
    /// Applied as rejected for another reason (invalid, not the successor, malformed): a bug
    /// in the plan or the replica.
    Rejected(String),
}

/// Why a reconfiguration started.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Cause {
    /// These members' leases expired (or they did not acknowledge a configuration in time).
    Failure { suspects: Vec<NodeId> },
    /// This CM became leader and names itself in the configuration.
    NewLeader,
    /// An operator asked for the node's removal ([`Manager::change`]).
    Removal { node: NodeId },
    /// An operator added the node ([`Manager::change`]).
    Addition { node: NodeId },
    /// A client found every region full; the CM created `region` ([`Manager::change`]).
    Growth { region: RegionId },
    /// The new primaries of these blocked regions recovered their transactions, and `node`
    /// completed its copies of `copied`; the CM made the regions active and counts the copies
    /// complete ([`Change::Activate`]).
    Recovery {
        regions: Vec<RegionId>,
        node: Option<NodeId>,
        copied: Vec<RegionId>,
    },
    /// The CM's Raft group changed its membership to these voters ([`Change::CmReplicas`]).
    CmReplicas { replicas: Vec<NodeId> },
    /// The processes of these members restarted from their files ([`Change::Restart`]).
    Restart {
        nodes: Vec<NodeId>,
        /// The copies the restarted nodes found damaged, which they do not serve.
        damaged: Vec<(NodeId, RegionId)>,
    },
    /// `node` reported damaged copies of these regions that the configuration counted
    /// complete ([`Change::DamagedCopies`]).
    DamagedCopies {
        node: NodeId,
        regions: Vec<RegionId>,
    },
}

/// `n1, n2, n3`.
fn write_nodes(f: &mut fmt::Formatter<'_>, nodes: &[NodeId]) -> fmt::Result {
    for (k, node) in nodes.iter().enumerate() {
        let sep = if k == 0 { "" } else { ", " };
        write!(f, "{sep}{node}")?;
    }
    Ok(())
}

impl fmt::Display for Cause {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Cause::Failure { suspects } => {
                write!(f, "failure of ")?;
                write_nodes(f, suspects)
            }
            Cause::Restart { nodes, damaged } => {
                write!(f, "restart of ")?;
                write_nodes(f, nodes)?;
                for (k, (node, region)) in damaged.iter().enumerate() {
                    let sep = if k == 0 { ", damaged copies: " } else { ", " };
                    write!(f, "{sep}{node}'s {region}")?;
                }
                Ok(())
            }
            Cause::NewLeader => write!(f, "new CM leader"),
            Cause::CmReplicas { replicas } => {
                write!(f, "CM replicas ")?;
                write_nodes(f, replicas)
            }
            Cause::DamagedCopies { node, regions } => {
                write!(f, "damaged copies: ")?;
                for (k, region) in regions.iter().enumerate() {
                    let sep = if k == 0 { "" } else { ", " };
                    write!(f, "{sep}{node}'s {region}")?;
                }
                Ok(())
            }
            Cause::Removal { node } => write!(f, "removal of {node}"),
            Cause::Addition { node } => write!(f, "addition of {node}"),
            Cause::Growth { region } => write!(f, "new region {region}"),
            Cause::Recovery {
                regions,
                node,
                copied,
            } => {
                let names = |regions: &[RegionId]| {
                    let names: Vec<String> = regions.iter().map(RegionId::to_string).collect();
                    names.join(", ")
                };
                if !regions.is_empty() {
                    write!(f, "recovery of {}", names(regions))?;
                }
                if !copied.is_empty() {
                    let sep = if regions.is_empty() { "" } else { "; " };
                    write!(f, "{sep}copy of {}", names(copied))?;
                    if let Some(node) = node {
                        write!(f, " by {node}")?;
                    }
                    write!(f, " complete")?;
                }
                Ok(())
            }
        }
    }
}

/// What [`Manager::change`] answers, in its refusal, while another reconfiguration runs: the
/// asker may ask again once it ends.
pub const BUSY: &str = "a reconfiguration is under way";

/// A change asked of the CM ([`Manager::change`]).
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(tag = "change", rename_all = "kebab-case")]
pub enum Change {
    /// Remove a member gracefully: `acre cluster remove-node`.
    Remove { node: NodeId },
    /// Add a memory node (whose process runs already and published its CM addresses), in
    /// failure domain `domain` or one of its own: `acre cluster add-node`.
    AddNode {
        node: NodeId,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        domain: Option<String>,
    },
    /// Add a region, unless the configuration holds more than `known_regions` regions already
    /// (another request grew it since the asker looked).
    AddRegion { known_regions: usize },
    /// Make `regions` active again: their new primary finished transaction recovery in
    /// configuration `config` (docs/failures.md#transaction-recovery); and count `node`'s
    /// copies of `copied` complete: data recovery filled them (docs/failures.md#data-recovery).
    /// Nothing to do unless `config` is the current configuration and one of `regions` is
    /// still blocked in it or `node` still copying one of `copied`. `node` (the reporting
    /// node) and `copied` are absent from requests written before copies were reported.
    Activate {
        config: u64,
        regions: Vec<RegionId>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        node: Option<NodeId>,
        #[serde(default, skip_serializing_if = "Vec::is_empty")]
        copied: Vec<RegionId>,
    },
    /// The CM's Raft group changed its membership: name its voters, `replicas`, in the
    /// configuration's `cm_replicas` ([`remap::name_cm_replicas`]; the leader's
    /// [`crate::replacement`] asks for it once the group's change is applied).
    CmReplicas { replicas: Vec<NodeId> },
    /// The processes of the memory nodes `nodes` restarted from their region files and logs
    /// (`acre cluster up` on a stopped cluster's directory, once they all run): they stay
    /// members, the regions they are primary of block until recovered, and they copy the
    /// regions they are backup of again ([`remap::restart`]).
    Restart {
        nodes: Vec<NodeId>,
        /// The region copies the restarted nodes found damaged
        /// (docs/failures.md#whole-cluster-restart): a damaged primary's region gets an intact
        /// backup as primary, or is lost.
        #[serde(default, skip_serializing_if = "Vec::is_empty")]
        damaged: Vec<(NodeId, RegionId)>,
    },
    /// `node` holds damaged (held-back) copies of `regions`, found so at its restart, that
    /// configuration `config` counts complete: it was made without knowing of the damage. A
    /// region whose primary's copy it is gets an intact backup as primary, or is lost; a
    /// backup's copy is copied again ([`remap::damaged_copies`]). Nothing to do unless
    /// `config` is the current configuration and counts one of them complete; the node reports
    /// again while one does. Sent by nodes only: a request file asking for it is refused.
    DamagedCopies {
        config: u64,
        node: NodeId,
        regions: Vec<RegionId>,
    },
}

/// How a reconfiguration ended.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Outcome {
    InProgress,
    /// NEW-CONFIG-COMMIT went out.
    Committed,
    /// Installed, but a member did not acknowledge it: the next reconfiguration replaces it.
    Superseded,
    /// Nothing to do after all (the suspects are no longer members).
    NothingToDo,
    /// The CM stood down or lost leadership.
    StoodDown {
        reason: String,
    },
    /// No configuration can follow (the remap refused, or Raft rejected the plan).
    Failed {
        reason: String,
    },
}

/// One reconfiguration's record, with the times of its steps (the caller's clock).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Reconfiguration {
    pub cause: Cause,
    /// The configuration it started from.
    pub from_id: u64,
    /// The configuration installed, once installed.
    pub to_id: Option<u64>,
    /// The nodes it removes: the suspects and the members that did not answer the probe.
    pub failed: Vec<NodeId>,
    /// When the first of its suspects was reported (or leadership began).
    pub suspected_at: Time,
    pub probed_at: Option<Time>,
    pub installed_at: Option<Time>,
    /// When the last member acknowledged NEW-CONFIG.
    pub acked_at: Option<Time>,
    pub committed_at: Option<Time>,
    pub outcome: Outcome,
}

impl fmt::Display for Reconfiguration {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let since = |t: Option<Time>| {
            t.map_or_else(
                || "-".to_string(),
                |t| format!("{:?}", t.saturating_duration_since(self.suspected_at)),
            )
        };
        write!(f, "{}: {} -> ", self.cause, self.from_id)?;
        match self.to_id {
            Some(id) => write!(f, "{id}")?,
            None => write!(f, "-")?,
        }
        write!(
            f,
            ", removed {:?}, probed +{}, installed +{}, acked +{}, committed +{}, {:?}",
            self.failed,
            since(self.probed_at),
            since(self.installed_at),
            since(self.acked_at),
            since(self.committed_at),
            self.outcome
        )
    }
}

#[derive(Debug)]
enum Phase {
    /// Not the leader: every event but [`Manager::became_leader`] is ignored.
    Follower,
    Idle,
    Probing {
        nonce: u64,
        suspects: BTreeSet<NodeId>,
        probed: BTreeSet<NodeId>,
        answered: BTreeSet<NodeId>,
        deadline: Time,
    },
    Installing {
        failed: BTreeSet<NodeId>,
        proposed: Arc<Configuration>,
        attempt_count: u32,
    },
    Distributing {
        config: Arc<Configuration>,
        acked: BTreeSet<NodeId>,
        /// The caller reported the removed leases for this configuration.
        leases_known: bool,
        resend_at: Time,
        ack_deadline: Time,
    },
}

/// The reconfiguration driver of the CM leader (module docs).
#[derive(Debug)]
pub struct Manager {
    me: NodeId,
    timing: ManagerTiming,
    /// The latest configuration installed, as far as this manager knows.
    config: Option<Arc<Configuration>>,
    phase: Phase,
    /// Suspects waiting for the next reconfiguration, and when the first was reported.
    queued: BTreeSet<NodeId>,
    queued_since: Option<Time>,
    nonce_next: u64,
    /// Until when leases granted to removed nodes may run: the maximum of every report.
    removed_until: Option<Time>,
    /// The last configuration this manager committed: its acks are answered with the commit.
    committed_id: Option<u64>,
    /// The configuration this manager last committed (kept across leaderships: a committed
    /// configuration stays committed).
    last_committed: Option<Arc<Configuration>>,
    record: Option<Reconfiguration>,
    history: VecDeque<Reconfiguration>,
}

impl Manager {
    /// The manager of CM replica `me`, a follower until [`Manager::became_leader`].
    pub fn new(me: NodeId, timing: ManagerTiming) -> Manager {
        Manager {
            me,
            timing,
            config: None,
            phase: Phase::Follower,
            queued: BTreeSet::new(),
            queued_since: None,
            nonce_next: 1,
            removed_until: None,
            committed_id: None,
            last_committed: None,
            record: None,
            history: VecDeque::with_capacity(RECORDS_KEPT),
        }
    }

    /// Whether this manager acts as CM.
    pub fn is_leader(&self) -> bool {
        !matches!(self.phase, Phase::Follower)
    }

    /// Whether no reconfiguration is under way (and none queued).
    pub fn is_idle(&self) -> bool {
        matches!(self.phase, Phase::Idle) && self.queued.is_empty()
    }

    /// The configuration this manager last committed (NEW-CONFIG-COMMIT sent), if any.
    pub fn last_committed(&self) -> Option<&Arc<Configuration>> {
        self.last_committed.as_ref()
    }

    /// The latest configuration installed, as far as this manager knows.
    pub fn configuration(&self) -> Option<&Arc<Configuration>> {
        self.config.as_ref()
    }

    /// The reconfiguration under way, if any.
    pub fn in_progress(&self) -> Option<&Reconfiguration> {
        self.record.as_ref()
    }

    /// The last [`RECORDS_KEPT`] finished reconfigurations, oldest first.
    pub fn history(&self) -> impl Iterator<Item = &Reconfiguration> + '_ {
        self.history.iter()
    }

    /// When the caller should call [`Manager::tick`] next, if anything waits on time.
    pub fn next_deadline(&self) -> Option<Time> {
        match &self.phase {
            Phase::Probing { deadline, .. } => Some(*deadline),
            Phase::Distributing {
                config,
                acked,
                leases_known,
                resend_at,
                ack_deadline,
            } => {
                let mut next = (*resend_at).min(*ack_deadline);
                // Once every member acknowledged and the leases are reported, the commit waits
                // for the removed leases alone (still ahead: `maybe_commit` ran at the last
                // event). Before that their end is no deadline, or a driver would spin on it.
                let all_acked = config.leased().all(|m| acked.contains(&m));
                if *leases_known
                    && all_acked
                    && let Some(until) = self.removed_until
                {
                    next = next.min(until);
                }
                Some(next)
            }
            _ => None,
        }
    }

    /// This replica became the Raft leader with `config` applied: it acts as CM from now on
    /// (module docs, "A new leader").
    pub fn became_leader(&mut self, config: Configuration, now: Time) -> Vec<Action> {
        let mut out = Vec::new();
        if self.is_leader() {
            self.lost_leadership();
        }
        let config = Arc::new(config);
        self.config = Some(config.clone());
        self.record = Some(Reconfiguration {
            cause: Cause::NewLeader,
            from_id: config.id,
            to_id: None,
            failed: Vec::new(),
            suspected_at: now,
            probed_at: None,
            installed_at: None,
            acked_at: None,
            committed_at: None,
            outcome: Outcome::InProgress,
        });
        if config.cm_leader == Some(self.me) {
            if let Some(record) = &mut self.record {
                record.to_id = Some(config.id);
            }
            self.distribute(config, now, &mut out);
        } else {
            self.propose(BTreeSet::new(), 1, &mut out);
        }
        out
    }

    /// This replica is no longer the Raft leader: whatever was under way stops here (the next
    /// leader starts again from the configuration Raft holds).
    pub fn lost_leadership(&mut self) {
        self.finish(Outcome::StoodDown {
            reason: "lost leadership".into(),
        });
        self.phase = Phase::Follower;
        self.queued.clear();
        self.queued_since = None;
        self.committed_id = None;
    }

    /// The lease table reports that `node`'s lease expired at `now`.
    pub fn suspect(&mut self, node: NodeId, now: Time) -> Vec<Action> {
        let mut out = Vec::new();
        if !self.is_leader() {
            return out;
        }
        if node == self.me {
            tracing::warn!(%node, "the CM was reported as its own suspect; ignored");
            return out;
        }
        assert!(
            self.queued.len() < MEMBERS_MAX,
            "queued={}",
            self.queued.len()
        );
        // A member that has not acknowledged the configuration being distributed and whose
        // lease expired will not acknowledge it: the configuration is superseded now rather
        // than at the acknowledgement timeout (a new leader's first configuration still lists
        // the old leader, which is usually why there is a new leader).
        if let Phase::Distributing { config, acked, .. } = &self.phase
            && config.leased().any(|m| m == node)
            && !acked.contains(&node)
        {
            tracing::warn!(%node, id = config.id, "a member that did not acknowledge NEW-CONFIG lost its lease; superseding it");
            self.supersede(&[node], now, &mut out);
            return out;
        }
        if self.queued.insert(node) && self.queued_since.is_none() {
            self.queued_since = Some(now);
        }
        self.start_next(now, &mut out);
        out
    }

    /// An operator (or a client out of memory) asks for a change of membership or of the
    /// regions ([`Change`]), planned with [`remap`] and installed through Raft and distributed
    /// as any reconfiguration. A removed node's lease is waited out and it is fenced before the
    /// commit; an added node must acknowledge NEW-CONFIG as every member does. Returns no action
    /// when there is nothing to do now: a [`Change::AddRegion`] that another request satisfied
    /// already, or that comes while a reconfiguration runs (its asker asks again if its regions
    /// are still full once it ends), and a [`Change::Activate`] of another configuration than
    /// the current one, of regions none of which is still blocked (or copying at its node), or
    /// that comes while a
    /// reconfiguration runs (its node reports again until its regions are active). Refused, with
    /// the reason, when this CM does not lead, when a reconfiguration is under way (ask again
    /// once it ends), or when the plan is refused.
    pub fn change(&mut self, change: Change, now: Time) -> Result<Vec<Action>, String> {
        if !self.is_leader() {
            return Err("this replica does not act as CM".into());
        }
        if !self.is_idle() || !self.queued.is_empty() {
            // A client that found its regions full asks again if they still are once this
            // reconfiguration ends (often another client's new region), and a node whose
            // regions are recovered reports again: no error for them.
            if matches!(
                change,
                Change::AddRegion { .. } | Change::Activate { .. } | Change::DamagedCopies { .. }
            ) {
                return Ok(Vec::new());
            }
            return Err(format!("{BUSY}: ask again once it ends"));
        }
        let config = self
            .config
            .clone()
            .expect("a leader knows its configuration");
        let (plan, cause, failed) = match change {
            Change::Remove { node } => {
                // The plan's refusal first: it holds whoever acts as CM.
                let plan = remap::remove_node(&config, node).map_err(|e| e.to_string())?;
                if node == self.me {
                    return Err(format!(
                        "{node} runs the acting CM: stop it instead (a new CM takes over and \
                         removes it)"
                    ));
                }
                (plan, Cause::Removal { node }, BTreeSet::from([node]))
            }
            Change::AddNode { node, domain } => {
                let plan = remap::add_node(&config, node, domain).map_err(|e| e.to_string())?;
                (plan, Cause::Addition { node }, BTreeSet::new())
            }
            Change::AddRegion { known_regions } => {
                if config.regions.len() > known_regions {
                    return Ok(Vec::new());
                }
                let plan = remap::add_region(&config).map_err(|e| e.to_string())?;
                let region = plan.created().next().expect("add_region creates a region");
                (plan, Cause::Growth { region }, BTreeSet::new())
            }
            Change::Activate {
                config: id,
                regions,
                node,
                copied,
            } => {
                if node.is_none() && !copied.is_empty() {
                    return Err(format!(
                        "copies of {copied:?} reported complete without the node that holds \
                         them: name it"
                    ));
                }
                // A report of an older configuration (the node adopts the current one and
                // reports again if its regions are still blocked or copying there), or one that
                // crossed the configuration that did it: nothing to do.
                let blocked = |region: &RegionId| {
                    config
                        .placement(*region)
                        .is_some_and(|p| p.state == RegionState::Blocked)
                };
                let copying = |region: &RegionId| {
                    config
                        .placement(*region)
                        .is_some_and(|p| node.is_some_and(|node| p.copying.contains(&node)))
                };
                if id != config.id || !(regions.iter().any(blocked) || copied.iter().any(copying)) {
                    return Ok(Vec::new());
                }
                let report = node.map(|node| remap::Copied {
                    node,
                    regions: &copied,
                });
                let plan =
                    remap::after_recovery(&config, &regions, report).map_err(|e| e.to_string())?;
                let cause = Cause::Recovery {
                    regions: regions.iter().copied().filter(blocked).collect(),
                    node,
                    copied: copied.iter().copied().filter(copying).collect(),
                };
                (plan, cause, BTreeSet::new())
            }
            Change::CmReplicas { replicas } => {
                let plan =
                    remap::name_cm_replicas(&config, &replicas).map_err(|e| e.to_string())?;
                // Nobody leaves the configuration: no lease to wait out, no node to fence.
                (plan, Cause::CmReplicas { replicas }, BTreeSet::new())
            }
            Change::DamagedCopies {
                config: id,
                node,
                regions,
            } => {
                // A report of an older configuration, or one that crossed the configuration
                // that did it: nothing to do (the node reports again while one counts a
                // damaged copy complete).
                let complete_here = |region: &RegionId| {
                    config.placement(*region).is_some_and(|p| {
                        p.state != RegionState::Lost && p.complete_replicas().any(|r| r == node)
                    })
                };
                if id != config.id || !regions.iter().any(complete_here) {
                    return Ok(Vec::new());
                }
                let plan =
                    remap::damaged_copies(&config, node, &regions).map_err(|e| e.to_string())?;
                let regions = regions.iter().copied().filter(complete_here).collect();
                // Nobody leaves: no lease to wait out, no node to fence.
                (
                    plan,
                    Cause::DamagedCopies { node, regions },
                    BTreeSet::new(),
                )
            }
            Change::Restart { nodes, damaged } => {
                let plan = remap::restart(&config, &nodes, &damaged).map_err(|e| e.to_string())?;
                // In id order, each once: the history names each node once.
                let nodes: BTreeSet<NodeId> = nodes.into_iter().collect();
                let damaged: BTreeSet<(NodeId, RegionId)> = damaged.into_iter().collect();
                let cause = Cause::Restart {
                    nodes: nodes.into_iter().collect(),
                    damaged: damaged.into_iter().collect(),
                };
                // Nobody leaves: no lease to wait out, no node to fence.
                (plan, cause, BTreeSet::new())
            }
        };
        self.record = Some(Reconfiguration {
            cause,
            from_id: config.id,
            to_id: None,
            failed: failed.iter().copied().collect(),
            suspected_at: now,
            probed_at: None,
            installed_at: None,
            acked_at: None,
            committed_at: None,
            outcome: Outcome::InProgress,
        });
        let mut next = plan.config;
        next.cm_leader = Some(self.me);
        let next = Arc::new(next);
        let mut out = vec![Action::ProposeInstall {
            expected_id: config.id,
            configuration: next.clone(),
        }];
        self.phase = Phase::Installing {
            failed,
            proposed: next,
            attempt_count: 1,
        };
        out.shrink_to_fit();
        Ok(out)
    }

    /// `from` answered the probe `nonce`.
    pub fn probe_reply(&mut self, from: NodeId, nonce: u64, now: Time) -> Vec<Action> {
        let mut out = Vec::new();
        if let Phase::Probing {
            nonce: current,
            probed,
            answered,
            ..
        } = &mut self.phase
            && *current == nonce
            && probed.contains(&from)
        {
            answered.insert(from);
            if answered.len() == probed.len() {
                self.finish_probing(now, &mut out);
            }
        }
        out
    }

    /// The outcome of the latest [`Action::ProposeInstall`].
    pub fn install_outcome(&mut self, outcome: InstallOutcome, now: Time) -> Vec<Action> {
        let mut out = Vec::new();
        let Phase::Installing {
            failed,
            proposed,
            attempt_count,
        } = &mut self.phase
        else {
            return out;
        };
        let failed = std::mem::take(failed);
        let proposed = proposed.clone();
        let attempt_count = *attempt_count;
        match outcome {
            InstallOutcome::Installed(config) => {
                let current = self.config.as_ref().map_or(0, |c| c.id);
                assert_eq!(
                    config.id,
                    current + 1,
                    "installed {} over {current}",
                    config.id
                );
                assert_eq!(
                    *proposed, config,
                    "Raft installed another plan than proposed"
                );
                let config = Arc::new(config);
                self.config = Some(config.clone());
                if let Some(record) = &mut self.record {
                    record.to_id = Some(config.id);
                    record.installed_at = Some(now);
                }
                self.distribute(config, now, &mut out);
            }
            InstallOutcome::Stale(current) => {
                let known = self.config.as_ref().map_or(0, |c| c.id);
                if current.id <= known {
                    tracing::warn!(
                        current = current.id,
                        known,
                        "install reported stale with a configuration not newer; retrying"
                    );
                } else {
                    self.config = Some(Arc::new(current));
                }
                self.retry(failed, attempt_count, now, &mut out);
            }
            InstallOutcome::Lost => self.retry(failed, attempt_count, now, &mut out),
            InstallOutcome::Rejected(reason) => {
                tracing::error!(%reason, "Raft rejected the planned configuration");
                self.finish(Outcome::Failed { reason });
                self.phase = Phase::Idle;
                self.start_next(now, &mut out);
            }
        }
        out
    }

    /// The caller moved the lease table to configuration `id`: leases granted to the nodes it
    /// removed run until `removed_until` at the latest (`now` if it removed none, or their
    /// leases already expired).
    pub fn leases_updated(&mut self, id: u64, removed_until: Time, now: Time) -> Vec<Action> {
        let mut out = Vec::new();
        if !self.is_leader() {
            return out;
        }
        self.removed_until = Some(
            self.removed_until
                .map_or(removed_until, |u| u.max(removed_until)),
        );
        if let Phase::Distributing {
            config,
            leases_known,
            ..
        } = &mut self.phase
            && config.id == id
        {
            *leases_known = true;
        }
        self.maybe_commit(now, &mut out);
        out
    }

    /// `from` answered NEW-CONFIG.
    pub fn ack(&mut self, from: NodeId, ack: &NewConfigAck, now: Time) -> Vec<Action> {
        let mut out = Vec::new();
        if !self.is_leader() {
            return out;
        }
        if let Phase::Distributing { config, acked, .. } = &mut self.phase
            && ack.id == config.id
            && config.leased().any(|m| m == from)
        {
            if ack.refused.is_empty() {
                acked.insert(from);
                self.maybe_commit(now, &mut out);
                return out;
            }
            let refusal = crate::member::Refusal::parse(&ack.refused);
            if refusal == Some(crate::member::Refusal::Stale) {
                let reason = format!(
                    "{from} refused configuration {} as stale: another CM installed a newer one",
                    ack.id
                );
                self.stand_down(reason, &mut out);
                return out;
            }
            if from == self.me {
                // This CM's own node refused (say, a configuration promoting a copy it found
                // damaged): it cannot suspect itself, and every plan from here would promote
                // it again. Another replica leads, and removes it.
                let reason = format!(
                    "this CM's own node refused configuration {}: {}",
                    ack.id, ack.refused
                );
                self.stand_down(reason, &mut out);
                return out;
            }
            tracing::warn!(%from, id = ack.id, refused = %ack.refused, "member refused NEW-CONFIG; suspecting it");
            self.supersede(&[from], now, &mut out);
            return out;
        }
        // A member that missed NEW-CONFIG-COMMIT repeats its ack: commit again.
        if ack.refused.is_empty() && self.committed_id == Some(ack.id) {
            out.push(Action::SendNewConfigCommit {
                to: from,
                id: ack.id,
            });
        }
        out
    }

    /// Time passed: probe timeouts, NEW-CONFIG resends, the ack bound and the lease wait.
    pub fn tick(&mut self, now: Time) -> Vec<Action> {
        let mut out = Vec::new();
        match &mut self.phase {
            Phase::Probing { deadline, .. } if now >= *deadline => {
                self.finish_probing(now, &mut out);
            }
            Phase::Distributing {
                config,
                acked,
                resend_at,
                ack_deadline,
                ..
            } => {
                if now >= *ack_deadline {
                    let silent: Vec<NodeId> =
                        config.leased().filter(|m| !acked.contains(m)).collect();
                    if !silent.is_empty() {
                        tracing::warn!(
                            ?silent,
                            id = config.id,
                            "members did not acknowledge NEW-CONFIG in time; suspecting them"
                        );
                        self.supersede(&silent, now, &mut out);
                        return out;
                    }
                }
                if now >= *resend_at {
                    *resend_at = now + self.timing.resend_period;
                    for to in config.leased().filter(|m| !acked.contains(m)) {
                        out.push(Action::SendNewConfig {
                            to,
                            configuration: config.clone(),
                        });
                    }
                }
                self.maybe_commit(now, &mut out);
            }
            _ => {}
        }
        out
    }

    /// Starts the next reconfiguration if none is under way and suspects wait.
    fn start_next(&mut self, now: Time, out: &mut Vec<Action>) {
        if !matches!(self.phase, Phase::Idle) || self.queued.is_empty() {
            return;
        }
        let config = self
            .config
            .clone()
            .expect("a leader knows its configuration");
        let suspects: BTreeSet<NodeId> = std::mem::take(&mut self.queued)
            .into_iter()
            .filter(|&node| config.leased().any(|m| m == node))
            .collect();
        let suspected_at = self.queued_since.take().unwrap_or(now);
        if suspects.is_empty() {
            return;
        }
        self.record = Some(Reconfiguration {
            cause: Cause::Failure {
                suspects: suspects.iter().copied().collect(),
            },
            from_id: config.id,
            to_id: None,
            failed: Vec::new(),
            suspected_at,
            probed_at: None,
            installed_at: None,
            acked_at: None,
            committed_at: None,
            outcome: Outcome::InProgress,
        });
        let probed: BTreeSet<NodeId> = config
            .leased()
            .filter(|m| *m != self.me && !suspects.contains(m))
            .collect();
        let nonce = self.nonce_next;
        self.nonce_next += 1;
        for &to in &probed {
            out.push(Action::SendProbe { to, nonce });
        }
        let nobody = probed.is_empty();
        self.phase = Phase::Probing {
            nonce,
            suspects,
            probed,
            answered: BTreeSet::new(),
            deadline: now + self.timing.probe_timeout,
        };
        if nobody {
            self.finish_probing(now, out);
        }
    }

    fn finish_probing(&mut self, now: Time, out: &mut Vec<Action>) {
        let Phase::Probing {
            suspects,
            probed,
            answered,
            ..
        } = std::mem::replace(&mut self.phase, Phase::Idle)
        else {
            unreachable!("finish_probing outside probing");
        };
        let config = self
            .config
            .clone()
            .expect("a leader knows its configuration");
        let member_count = config.leased().count();
        let me_counted = usize::from(config.leased().any(|m| m == self.me));
        let reached = answered.len() + me_counted;
        if let Some(record) = &mut self.record {
            record.probed_at = Some(now);
        }
        if reached * 2 <= member_count {
            let reason = format!(
                "only {reached} of the {member_count} members of configuration {} answered the \
                 probe: this CM is likely the one cut off",
                config.id
            );
            self.stand_down(reason, out);
            return;
        }
        let mut failed = suspects;
        failed.extend(probed.difference(&answered).copied());
        self.propose(failed, 1, out);
        if matches!(self.phase, Phase::Idle) {
            self.start_next(now, out);
        }
    }

    /// Plans from the current configuration and proposes it (attempt `attempt_count`).
    fn propose(&mut self, mut failed: BTreeSet<NodeId>, attempt_count: u32, out: &mut Vec<Action>) {
        let config = self
            .config
            .clone()
            .expect("a leader knows its configuration");
        failed.retain(|&node| config.leased().any(|m| m == node));
        if let Some(record) = &mut self.record {
            record.failed = failed.iter().copied().collect();
        }
        let next = if failed.is_empty() {
            if matches!(
                self.record.as_ref().map(|r| &r.cause),
                Some(Cause::Failure { .. })
            ) {
                self.finish(Outcome::NothingToDo);
                self.phase = Phase::Idle;
                return;
            }
            let restart = match self.record.as_ref().map(|r| &r.cause) {
                Some(Cause::Restart { nodes, damaged, .. }) => {
                    Some(remap::restart(&config, nodes, damaged))
                }
                _ => None,
            };
            match restart {
                Some(Ok(plan)) => plan.config,
                // Nothing left to change: the restart is in `config` already (a proposal of
                // it reported lost was applied); only the CM it names may need changing.
                Some(Err(remap::RemapError::NothingToRestart { .. })) | None => {
                    let mut next = (*config).clone();
                    next.id = config.id + 1;
                    next
                }
                Some(Err(e)) => {
                    tracing::error!("no configuration can follow {}: {e}", config.id);
                    self.finish(Outcome::Failed {
                        reason: e.to_string(),
                    });
                    self.phase = Phase::Idle;
                    return;
                }
            }
        } else {
            let planned = match self.record.as_ref().map(|r| &r.cause) {
                Some(Cause::Removal { node }) if failed.len() == 1 && failed.contains(node) => {
                    remap::remove_node(&config, *node)
                }
                _ => remap::after_failure(&config, &failed),
            };
            match planned {
                Ok(plan) => plan.config,
                Err(e) => {
                    tracing::error!(?failed, "no configuration can follow {}: {e}", config.id);
                    self.finish(Outcome::Failed {
                        reason: e.to_string(),
                    });
                    self.phase = Phase::Idle;
                    return;
                }
            }
        };
        let mut next = next;
        next.cm_leader = Some(self.me);
        let next = Arc::new(next);
        out.push(Action::ProposeInstall {
            expected_id: config.id,
            configuration: next.clone(),
        });
        self.phase = Phase::Installing {
            failed,
            proposed: next,
            attempt_count,
        };
    }

    /// After a lost or stale proposal: propose again from the configuration now known, or,
    /// when it already is what was wanted (it names this CM and lists none of the failed),
    /// distribute it.
    fn retry(
        &mut self,
        mut failed: BTreeSet<NodeId>,
        attempt_count: u32,
        now: Time,
        out: &mut Vec<Action>,
    ) {
        if attempt_count >= INSTALL_ATTEMPTS_MAX {
            let reason = format!("{attempt_count} proposals of a configuration failed");
            self.stand_down(reason, out);
            return;
        }
        let config = self
            .config
            .clone()
            .expect("a leader knows its configuration");
        failed.retain(|&node| config.leased().any(|m| m == node));
        // A restart that the configuration now known does not hold yet is planned again from
        // it: distributing that configuration as it is would let restarted primaries serve
        // without recovering their transactions.
        let restart_pending = match self.record.as_ref().map(|r| &r.cause) {
            Some(Cause::Restart { nodes, damaged, .. }) => {
                remap::restart(&config, nodes, damaged).is_ok()
            }
            _ => false,
        };
        if failed.is_empty() && config.cm_leader == Some(self.me) && !restart_pending {
            if let Some(record) = &mut self.record {
                record.to_id = Some(config.id);
                record.installed_at = Some(now);
            }
            self.distribute(config, now, out);
            return;
        }
        if failed.is_empty()
            && matches!(
                self.record.as_ref().map(|r| &r.cause),
                Some(Cause::Failure { .. })
            )
        {
            // The failed nodes are gone already, but the configuration names another CM: make
            // it name this one, as a new leader does.
            if let Some(record) = &mut self.record {
                record.cause = Cause::NewLeader;
            }
        }
        self.propose(failed, attempt_count + 1, out);
        if matches!(self.phase, Phase::Idle) {
            self.start_next(now, out);
        }
    }

    fn distribute(&mut self, config: Arc<Configuration>, now: Time, out: &mut Vec<Action>) {
        out.push(Action::UpdateLeaseMembers {
            configuration: config.clone(),
        });
        for to in config.leased() {
            out.push(Action::SendNewConfig {
                to,
                configuration: config.clone(),
            });
        }
        self.phase = Phase::Distributing {
            config,
            acked: BTreeSet::new(),
            leases_known: false,
            resend_at: now + self.timing.resend_period,
            ack_deadline: now + self.timing.ack_timeout,
        };
    }

    fn maybe_commit(&mut self, now: Time, out: &mut Vec<Action>) {
        let Phase::Distributing {
            config,
            acked,
            leases_known,
            ..
        } = &self.phase
        else {
            return;
        };
        let all_acked = config.leased().all(|m| acked.contains(&m));
        if all_acked
            && let Some(record) = &mut self.record
            && record.acked_at.is_none()
        {
            record.acked_at = Some(now);
        }
        let leases_out = *leases_known && self.removed_until.is_some_and(|until| now >= until);
        if !all_acked || !leases_out {
            return;
        }
        let config = config.clone();
        for to in config.leased() {
            out.push(Action::SendNewConfigCommit { to, id: config.id });
        }
        self.committed_id = Some(config.id);
        self.last_committed = Some(config.clone());
        if let Some(record) = &mut self.record {
            record.committed_at = Some(now);
        }
        self.finish(Outcome::Committed);
        self.phase = Phase::Idle;
        self.start_next(now, out);
    }

    /// Gives up committing the configuration being distributed: `silent` is suspected and the
    /// next reconfiguration starts from it now.
    fn supersede(&mut self, silent: &[NodeId], now: Time, out: &mut Vec<Action>) {
        self.finish(Outcome::Superseded);
        self.phase = Phase::Idle;
        for &node in silent {
            if node != self.me {
                self.queued.insert(node);
            }
        }
        if !self.queued.is_empty() {
            self.queued_since = Some(self.queued_since.map_or(now, |t| t.min(now)));
        }
        self.start_next(now, out);
    }

    fn stand_down(&mut self, reason: String, out: &mut Vec<Action>) {
        tracing::warn!(%reason, "CM stands down");
        self.finish(Outcome::StoodDown {
            reason: reason.clone(),
        });
        self.phase = Phase::Follower;
        self.queued.clear();
        self.queued_since = None;
        self.committed_id = None;
        out.push(Action::StandDown { reason });
    }

    /// Moves the reconfiguration under way, if any, to the history with `outcome`.
    fn finish(&mut self, outcome: Outcome) {
        if let Some(mut record) = self.record.take() {
            record.outcome = outcome;
            tracing::info!("reconfiguration: {record}");
            if self.history.len() == RECORDS_KEPT {
                self.history.pop_front();
            }
            self.history.push_back(record);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use acre_engine::addr::RegionId;
    use acre_txn::config::RegionState;

    const ME: NodeId = NodeId(1);

    fn ms(ms: u64) -> Time {
        Time::from_nanos(ms * 1_000_000)
    }

    /// Five nodes, f = 1; region k has its primary on node k and its backup on node k + 1, and
    /// n5 holds only the backup of r4. The CM is n1.
    fn cluster() -> Configuration {
        let nodes = (1..=5).map(NodeId).collect();
        let mut config = Configuration::place(1, nodes, vec![], 1, 1, 1 << 20, 4096).unwrap();
        config.regions.pop();
        config.cm_replicas = vec![NodeId(1), NodeId(2), NodeId(3)];
        config.cm_leader = Some(ME);
        config.validate().unwrap();
        config
    }

    fn probes(actions: &[Action]) -> Vec<(NodeId, u64)> {
        actions
            .iter()
            .filter_map(|a| match a {
                Action::SendProbe { to, nonce } => Some((*to, *nonce)),
                _ => None,
            })
            .collect()
    }

    fn proposal(actions: &[Action]) -> Option<(u64, Configuration)> {
        actions.iter().find_map(|a| match a {
            Action::ProposeInstall {
                expected_id,
                configuration,
            } => Some((*expected_id, (**configuration).clone())),
            _ => None,
        })
    }

    fn new_configs(actions: &[Action]) -> Vec<(NodeId, u64)> {
        actions
            .iter()
            .filter_map(|a| match a {
                Action::SendNewConfig { to, configuration } => Some((*to, configuration.id)),
                _ => None,
            })
            .collect()
    }

    fn commits(actions: &[Action]) -> Vec<(NodeId, u64)> {
        actions
            .iter()
            .filter_map(|a| match a {
                Action::SendNewConfigCommit { to, id } => Some((*to, *id)),
                _ => None,
            })
            .collect()
    }

    fn stood_down(actions: &[Action]) -> bool {
        actions
            .iter()
            .any(|a| matches!(a, Action::StandDown { .. }))
    }

    fn ok(id: u64) -> NewConfigAck {
        NewConfigAck {
            id,
            refused: String::new(),
        }
    }

    /// A manager that led configuration 1 through its first distribution and committed it.
    fn lead() -> Manager {
        let config = cluster();
        let mut manager = Manager::new(ME, ManagerTiming::default());
        let actions = manager.became_leader(config.clone(), ms(0));
        assert!(matches!(actions[0], Action::UpdateLeaseMembers { .. }));
        assert_eq!(new_configs(&actions).len(), 5, "{actions:?}");
        assert!(manager.leases_updated(1, ms(0), ms(0)).is_empty());
        let mut last = Vec::new();
        for node in config.members() {
            last = manager.ack(node, &ok(1), ms(1));
        }
        assert_eq!(commits(&last).len(), 5, "{last:?}");
        assert!(manager.is_idle());
        manager
    }

    /// Suspects `node` at `at`, answers every probe, returns the proposal.
    fn suspect_and_probe(manager: &mut Manager, node: NodeId, at: Time) -> (u64, Configuration) {
        let actions = manager.suspect(node, at);
        let sent = probes(&actions);
        assert!(
            !sent.iter().any(|(to, _)| *to == node || *to == ME),
            "{sent:?}"
        );
        let mut last = Vec::new();
        for (to, nonce) in sent {
            last = manager.probe_reply(to, nonce, at + Duration::from_millis(1));
        }
        proposal(&last).expect("every probe answered: a proposal")
    }

    /// A standalone CM replica (`acre cm`, an id that is no member) leads: it sends its own
    /// process no NEW-CONFIG, probes and waits for the members alone, and counts no vote of its
    /// own in the probe's majority.
    #[test]
    fn a_cm_that_is_no_member_distributes_and_probes_the_members_alone() {
        const STANDALONE: NodeId = NodeId(9);
        let mut config = cluster();
        config.cm_replicas = vec![NodeId(8), STANDALONE, NodeId(10)];
        config.cm_leader = None;
        config.validate().unwrap();
        let mut manager = Manager::new(STANDALONE, ManagerTiming::default());
        let actions = manager.became_leader(config.clone(), ms(0));
        let (expected_id, named) = proposal(&actions).expect("it names itself first");
        assert_eq!((expected_id, named.cm_leader), (1, Some(STANDALONE)));
        let actions = manager.install_outcome(InstallOutcome::Installed(named.clone()), ms(1));
        let sent: Vec<NodeId> = new_configs(&actions).iter().map(|(to, _)| *to).collect();
        assert_eq!(sent, config.nodes, "the members alone: {actions:?}");
        assert!(manager.leases_updated(2, ms(1), ms(1)).is_empty());
        let mut last = Vec::new();
        for node in config.members() {
            last = manager.ack(node, &ok(2), ms(2));
        }
        assert_eq!(
            commits(&last).len(),
            5,
            "committed without its own ack: {last:?}"
        );

        // n5 suspected: the four others are probed; two answers of five members are no
        // majority (the CM's own vote is not counted), three are.
        let actions = manager.suspect(NodeId(5), ms(10));
        let sent = probes(&actions);
        assert_eq!(sent.len(), 4, "{sent:?}");
        let mut last = Vec::new();
        for &(to, nonce) in &sent[..3] {
            last = manager.probe_reply(to, nonce, ms(11));
        }
        assert!(
            proposal(&last).is_none(),
            "waits for the probe's deadline or the last answer"
        );
        let last = manager.tick(ms(10) + PROBE_TIMEOUT_DEFAULT);
        assert!(!stood_down(&last), "{last:?}");
        let (_, next) = proposal(&last).expect("three of five answered: a proposal");
        assert_eq!(next.cm_leader, Some(STANDALONE));
        assert_eq!(
            next.cm_replicas, config.cm_replicas,
            "the Raft group is left alone"
        );
        assert!(!next.nodes.contains(&NodeId(5)) && !next.nodes.contains(&sent[3].0));

        let mut manager = Manager::new(STANDALONE, ManagerTiming::default());
        let mut named = config.clone();
        named.cm_leader = Some(STANDALONE);
        manager.became_leader(named, ms(0));
        manager.leases_updated(1, ms(0), ms(0));
        for node in config.members() {
            manager.ack(node, &ok(1), ms(1));
        }
        assert!(manager.is_idle());
        let actions = manager.suspect(NodeId(5), ms(10));
        let sent = probes(&actions);
        for &(to, nonce) in &sent[..2] {
            manager.probe_reply(to, nonce, ms(11));
        }
        let last = manager.tick(ms(10) + PROBE_TIMEOUT_DEFAULT);
        assert!(stood_down(&last), "two of five is no majority: {last:?}");
    }

    // FaRM SOSP'15 §5.2: suspect, probe, install, NEW-CONFIG, wait out the leases, commit.
    #[test]
    fn a_backup_only_node_fails_and_commit_waits_for_its_lease() {
        let mut manager = lead();
        let (expected_id, next) = suspect_and_probe(&mut manager, NodeId(5), ms(10));
        assert_eq!(expected_id, 1);
        assert_eq!(next.id, 2);
        assert!(!next.nodes.contains(&NodeId(5)));
        assert_eq!(next.cm_leader, Some(ME));
        // n5 held only r4's backup: r4 gets a new one; no primary moved, nothing blocked.
        let r4 = next.placement(RegionId(4)).unwrap();
        assert_eq!(r4.primary, NodeId(4));
        assert_eq!(r4.backups.len(), 1);
        assert!(next.regions.iter().all(|p| p.state == RegionState::Active));

        let actions = manager.install_outcome(InstallOutcome::Installed(next.clone()), ms(12));
        assert!(
            matches!(&actions[0], Action::UpdateLeaseMembers { configuration } if configuration.id == 2)
        );
        let sent: Vec<NodeId> = new_configs(&actions).iter().map(|(to, _)| *to).collect();
        assert_eq!(sent, [1, 2, 3, 4].map(NodeId));
        for node in 1..=4 {
            let actions = manager.ack(NodeId(node), &ok(2), ms(13));
            assert!(commits(&actions).is_empty(), "lease wait not reported yet");
        }
        // n5's lease, granted before it failed, runs until 200 ms.
        assert!(commits(&manager.leases_updated(2, ms(200), ms(14))).is_empty());
        assert!(
            commits(&manager.tick(ms(199))).is_empty(),
            "n5 may still act"
        );
        assert_eq!(
            manager.next_deadline(),
            Some(ms(200)),
            "the lease wait is a deadline"
        );
        let actions = manager.tick(ms(200));
        assert_eq!(commits(&actions), [1, 2, 3, 4].map(|n| (NodeId(n), 2)));
        assert!(manager.is_idle());

        let record = manager.history().last().unwrap();
        assert_eq!(record.outcome, Outcome::Committed);
        assert_eq!((record.from_id, record.to_id), (1, Some(2)));
        assert_eq!(record.failed, [NodeId(5)]);
        assert_eq!(record.suspected_at, ms(10));
        assert_eq!(record.probed_at, Some(ms(11)));
        assert_eq!(record.installed_at, Some(ms(12)));
        assert_eq!(record.acked_at, Some(ms(13)));
        assert_eq!(record.committed_at, Some(ms(200)));
        let line = record.to_string();
        assert!(line.contains(": 1 -> 2, removed [NodeId(5)]"), "{line}");
        assert!(
            line.contains("installed +2ms") && line.contains("committed +190ms"),
            "{line}"
        );
    }

    #[test]
    fn a_primary_fails_and_its_region_is_blocked() {
        let mut manager = lead();
        let (_, next) = suspect_and_probe(&mut manager, NodeId(2), ms(10));
        let r2 = next.placement(RegionId(2)).unwrap();
        assert_eq!(r2.primary, NodeId(3), "its backup promoted");
        assert_eq!(r2.state, RegionState::Blocked);
        let r1 = next.placement(RegionId(1)).unwrap();
        assert_eq!((r1.primary, r1.state), (NodeId(1), RegionState::Active));
    }

    #[test]
    fn a_minority_of_probes_answered_stands_down_and_installs_nothing() {
        let mut manager = lead();
        let actions = manager.suspect(NodeId(5), ms(10));
        let sent = probes(&actions);
        assert_eq!(sent.len(), 3);
        // n2 answers: n1 and n2 are 2 of 5 members.
        let (to, nonce) = sent[0];
        assert!(manager.probe_reply(to, nonce, ms(11)).is_empty());
        // A reply to an older probe counts for nothing.
        assert!(manager.probe_reply(sent[1].0, nonce + 7, ms(11)).is_empty());
        assert!(
            manager
                .tick(ms(10) + PROBE_TIMEOUT_DEFAULT - Duration::from_nanos(1))
                .is_empty()
        );
        let actions = manager.tick(ms(10) + PROBE_TIMEOUT_DEFAULT);
        assert!(stood_down(&actions), "{actions:?}");
        assert!(proposal(&actions).is_none());
        assert!(!manager.is_leader());
        assert!(
            manager.suspect(NodeId(4), ms(200)).is_empty(),
            "a follower does nothing"
        );
        assert!(matches!(
            manager.history().last().unwrap().outcome,
            Outcome::StoodDown { .. }
        ));
    }

    #[test]
    fn members_that_do_not_answer_the_probe_are_removed_too() {
        let mut manager = lead();
        let sent = probes(&manager.suspect(NodeId(5), ms(10)));
        for &(to, nonce) in &sent[..2] {
            assert!(manager.probe_reply(to, nonce, ms(11)).is_empty());
        }
        let (_, next) = proposal(&manager.tick(ms(10) + PROBE_TIMEOUT_DEFAULT)).unwrap();
        let silent = sent[2].0;
        assert!(!next.nodes.contains(&silent) && !next.nodes.contains(&NodeId(5)));
        assert_eq!(manager.in_progress().unwrap().failed, [silent, NodeId(5)]);
    }

    #[test]
    fn a_stale_outcome_plans_again_from_the_current_configuration() {
        let mut manager = lead();
        let (_, ours) = suspect_and_probe(&mut manager, NodeId(5), ms(10));
        // Another CM installed 2 meanwhile: it names n2 and still lists n5.
        let mut theirs = cluster();
        theirs.id = 2;
        theirs.cm_leader = Some(NodeId(2));
        let actions = manager.install_outcome(InstallOutcome::Stale(theirs), ms(12));
        let (expected_id, next) = proposal(&actions).expect("a new plan");
        assert_eq!((expected_id, next.id), (2, 3));
        assert!(!next.nodes.contains(&NodeId(5)));
        assert_eq!(next.cm_leader, Some(ME));
        // And a stale outcome whose current configuration is our own plan, applied after all
        // (a lost proposal that was not lost): nothing left to plan, it is distributed.
        let mut next_ours = ours.clone();
        next_ours.id = 3;
        let actions = manager.install_outcome(InstallOutcome::Stale(next_ours), ms(13));
        assert!(proposal(&actions).is_none());
        assert_eq!(new_configs(&actions).len(), 4, "{actions:?}");
    }

    #[test]
    fn a_lost_proposal_is_proposed_again_a_bounded_number_of_times() {
        let mut manager = lead();
        let (_, first) = suspect_and_probe(&mut manager, NodeId(5), ms(10));
        for attempt in 2..=INSTALL_ATTEMPTS_MAX {
            let actions = manager.install_outcome(InstallOutcome::Lost, ms(11));
            let (expected_id, again) =
                proposal(&actions).unwrap_or_else(|| panic!("attempt {attempt}"));
            assert_eq!((expected_id, &again), (1, &first));
        }
        let actions = manager.install_outcome(InstallOutcome::Lost, ms(12));
        assert!(stood_down(&actions), "{actions:?}");
    }

    #[test]
    fn suspects_during_a_reconfiguration_go_into_the_next_one() {
        let mut manager = lead();
        let (_, next) = suspect_and_probe(&mut manager, NodeId(5), ms(10));
        let actions = manager.install_outcome(InstallOutcome::Installed(next), ms(12));
        assert!(!new_configs(&actions).is_empty());
        // Every member acknowledged 2, whose commit waits for the lease update; n4 (after its
        // acknowledgement) and n5 (again) are suspected meanwhile: nothing starts now. (A
        // member suspected before it acknowledged supersedes 2 at once: the test above.)
        for node in 1..=4 {
            assert!(commits(&manager.ack(NodeId(node), &ok(2), ms(13))).is_empty());
        }
        assert!(manager.suspect(NodeId(4), ms(14)).is_empty());
        assert!(manager.suspect(NodeId(5), ms(14)).is_empty());
        let actions = manager.leases_updated(2, ms(15), ms(16));
        assert_eq!(commits(&actions).len(), 4);
        // The commit starts the next one: n5 is no member of 2, so only n4 is suspected.
        let sent = probes(&actions);
        assert_eq!(
            sent.iter().map(|p| p.0).collect::<Vec<_>>(),
            [NodeId(2), NodeId(3)]
        );
        let record = manager.in_progress().unwrap();
        assert_eq!(
            record.cause,
            Cause::Failure {
                suspects: vec![NodeId(4)]
            }
        );
        assert_eq!(record.suspected_at, ms(14));
        let mut last = Vec::new();
        for (to, nonce) in sent {
            last = manager.probe_reply(to, nonce, ms(17));
        }
        let (expected_id, next) = proposal(&last).unwrap();
        assert_eq!((expected_id, next.id), (2, 3));
        assert_eq!(next.nodes, [1, 2, 3].map(NodeId));
    }

    #[test]
    fn new_config_is_sent_again_until_acked_and_a_silent_member_is_suspected() {
        let mut manager = lead();
        let (_, next) = suspect_and_probe(&mut manager, NodeId(5), ms(10));
        manager.install_outcome(InstallOutcome::Installed(next), ms(12));
        manager.leases_updated(2, ms(12), ms(12));
        for node in 1..=3 {
            assert!(commits(&manager.ack(NodeId(node), &ok(2), ms(13))).is_empty());
        }
        let mut now = ms(12);
        let mut resends = 0;
        let bound = ms(12) + ACK_TIMEOUT_DEFAULT;
        while now + RESEND_PERIOD_DEFAULT < bound {
            now += RESEND_PERIOD_DEFAULT;
            let actions = manager.tick(now);
            assert_eq!(new_configs(&actions), [(NodeId(4), 2)], "at {now}");
            resends += 1;
        }
        assert!(resends >= 40, "resends={resends}");
        // n4 never acknowledged: suspected, and 2 is superseded without a commit.
        let actions = manager.tick(bound);
        assert!(commits(&actions).is_empty());
        let sent = probes(&actions);
        assert_eq!(
            sent.iter().map(|p| p.0).collect::<Vec<_>>(),
            [NodeId(2), NodeId(3)]
        );
        assert_eq!(
            manager.history().last().unwrap().outcome,
            Outcome::Superseded
        );
        let mut last = Vec::new();
        for (to, nonce) in sent {
            last = manager.probe_reply(to, nonce, bound);
        }
        let (expected_id, next) = proposal(&last).unwrap();
        assert_eq!((expected_id, next.id), (2, 3));
        assert!(!next.nodes.contains(&NodeId(4)));
    }

    /// An operator's removal is planned with `remove_node`, installed and distributed to the
    /// remaining members; refused while a reconfiguration is under way and for the acting CM.
    #[test]
    fn a_removal_is_installed_and_distributed_without_the_node() {
        let mut manager = lead();
        assert!(
            manager.change(Change::Remove { node: ME }, ms(5)).is_err(),
            "the acting CM"
        );
        let actions = manager
            .change(Change::Remove { node: NodeId(5) }, ms(5))
            .expect("removal accepted");
        let (expected_id, next) = proposal(&actions).expect("a proposal");
        assert_eq!((expected_id, next.id), (1, 2));
        assert!(!next.nodes.contains(&NodeId(5)));
        assert!(
            manager
                .change(Change::Remove { node: NodeId(4) }, ms(6))
                .is_err(),
            "busy with the first removal"
        );
        let actions = manager.install_outcome(InstallOutcome::Installed(next), ms(7));
        assert_eq!(new_configs(&actions).len(), 4, "{actions:?}");
        assert_eq!(
            manager.in_progress().unwrap().cause,
            Cause::Removal { node: NodeId(5) }
        );
    }

    /// An added node is in the proposal and gets NEW-CONFIG with the members (it must
    /// acknowledge too); an id in use is refused.
    #[test]
    fn an_addition_is_installed_and_distributed_to_the_new_node_too() {
        let mut manager = lead();
        let refused = manager.change(
            Change::AddNode {
                node: NodeId(3),
                domain: None,
            },
            ms(5),
        );
        assert!(
            refused.is_err_and(|reason| reason.contains("n3")),
            "a member"
        );
        let actions = manager
            .change(
                Change::AddNode {
                    node: NodeId(6),
                    domain: Some("rack-b".into()),
                },
                ms(5),
            )
            .expect("addition accepted");
        let (expected_id, next) = proposal(&actions).expect("a proposal");
        assert_eq!((expected_id, next.id), (1, 2));
        assert!(next.nodes.contains(&NodeId(6)));
        assert_eq!(next.domain_of(NodeId(6)), "rack-b");
        let actions = manager.install_outcome(InstallOutcome::Installed(next), ms(7));
        let sent: Vec<NodeId> = new_configs(&actions).iter().map(|m| m.0).collect();
        assert_eq!(sent.len(), 6, "{actions:?}");
        assert!(sent.contains(&NodeId(6)), "{sent:?}");
        assert_eq!(
            manager.in_progress().unwrap().cause,
            Cause::Addition { node: NodeId(6) }
        );
    }

    /// Nodes restarted from their files stay members: their regions block, their backups copy
    /// again, nobody's lease is waited out, and the history names the restart.
    #[test]
    fn a_restart_is_installed_and_committed_without_removing_anyone() {
        let mut manager = lead();
        let config = (**manager.configuration().unwrap()).clone();
        let refused = manager.change(
            Change::Restart {
                nodes: Vec::new(),
                damaged: Vec::new(),
            },
            ms(5),
        );
        assert!(refused.is_err_and(|reason| reason.contains("no restarted node")));
        let refused = manager.change(
            Change::Restart {
                nodes: vec![NodeId(9)],
                damaged: Vec::new(),
            },
            ms(5),
        );
        assert!(refused.is_err_and(|reason| reason.contains("n9")));

        // r1: n1 [n2]; r2: n2 [n3]; r3: n3 [n4]; r4: n4 [n5]. n2 and n3 restarted (named
        // out of order and twice, as an asker may).
        let restart = Change::Restart {
            nodes: vec![NodeId(3), NodeId(2), NodeId(3)],
            damaged: Vec::new(),
        };
        let actions = manager.change(restart.clone(), ms(5)).expect("accepted");
        let (expected_id, next) = proposal(&actions).expect("a proposal");
        let mut expected = config.clone();
        expected.id = 2;
        expected.regions[0].copying = vec![NodeId(2)];
        expected.regions[1].state = RegionState::Blocked;
        expected.regions[1].copying = vec![NodeId(3)];
        expected.regions[2].state = RegionState::Blocked;
        assert_eq!((expected_id, &next), (1, &expected));
        assert!(
            manager
                .change(restart.clone(), ms(6))
                .is_err_and(|reason| reason.starts_with(BUSY)),
            "busy with the first restart"
        );

        let actions = manager.install_outcome(InstallOutcome::Installed(next.clone()), ms(7));
        assert!(matches!(actions[0], Action::UpdateLeaseMembers { .. }));
        assert_eq!(
            new_configs(&actions),
            (1..=5).map(|n| (NodeId(n), 2)).collect::<Vec<_>>()
        );
        let record = manager.in_progress().unwrap();
        assert_eq!(
            record.cause,
            Cause::Restart {
                nodes: vec![NodeId(2), NodeId(3)],
                damaged: Vec::new(),
            }
        );
        assert_eq!(record.cause.to_string(), "restart of n2, n3");
        assert!(record.failed.is_empty(), "{record}");
        // Nobody left: the caller reports no lease running past now, and the commit follows
        // the last acknowledgement at once.
        assert!(manager.leases_updated(2, ms(7), ms(7)).is_empty());
        let mut last = Vec::new();
        for node in next.leased() {
            last = manager.ack(node, &ok(2), ms(8));
        }
        assert_eq!(commits(&last).len(), 5, "{last:?}");
        let record = manager.history().last().unwrap();
        assert_eq!(record.outcome, Outcome::Committed);
        assert_eq!((record.from_id, record.to_id), (1, Some(2)));
        assert_eq!(record.cause.to_string(), "restart of n2, n3");

        // n2 recovered r2's transactions, its primary unchanged: the region is active again.
        let actions = manager
            .change(
                Change::Activate {
                    config: 2,
                    regions: vec![RegionId(2)],
                    node: Some(NodeId(2)),
                    copied: Vec::new(),
                },
                ms(20),
            )
            .expect("accepted");
        let (_, third) = proposal(&actions).expect("a proposal");
        let r2 = third.placement(RegionId(2)).unwrap();
        assert_eq!((r2.primary, r2.state), (NodeId(2), RegionState::Active));
        assert_eq!(r2.copying, [NodeId(3)], "n3 still copies r2 again");
    }

    /// A restart whose proposal is lost is proposed again, not distributed as the configuration
    /// before it (whose restarted primaries would serve unrecovered); one found applied after
    /// all is distributed.
    #[test]
    fn a_lost_restart_is_proposed_again_and_one_found_applied_is_distributed() {
        let mut manager = lead();
        let restart = Change::Restart {
            nodes: vec![NodeId(4)],
            damaged: Vec::new(),
        };
        let actions = manager.change(restart, ms(5)).expect("accepted");
        let (_, planned) = proposal(&actions).expect("a proposal");
        let actions = manager.install_outcome(InstallOutcome::Lost, ms(6));
        assert_eq!(
            proposal(&actions),
            Some((1, planned.clone())),
            "{actions:?}"
        );
        assert!(new_configs(&actions).is_empty(), "{actions:?}");
        // The first proposal was applied after all: the second finds it and distributes it.
        let actions = manager.install_outcome(InstallOutcome::Stale(planned.clone()), ms(7));
        assert!(proposal(&actions).is_none(), "{actions:?}");
        assert_eq!(new_configs(&actions).len(), 5, "{actions:?}");
        assert_eq!(manager.in_progress().unwrap().to_id, Some(planned.id));
    }

    /// The request file of a restart, as `acre cluster up` writes it, reads back (in the shape
    /// of `acre_replication::cm_request::CmRequest`: that crate's `Change` is another copy of
    /// this one in this crate's tests).
    #[test]
    fn a_restart_request_reads_back_as_written() {
        #[derive(Debug, PartialEq, serde::Serialize, serde::Deserialize)]
        struct CmRequest {
            nonce: u64,
            change: Change,
        }
        let request = CmRequest {
            nonce: 11,
            change: Change::Restart {
                nodes: vec![NodeId(1), NodeId(2), NodeId(3)],
                damaged: Vec::new(),
            },
        };
        let text = toml::to_string(&request).unwrap();
        assert_eq!(
            toml::from_str::<CmRequest>(&text).unwrap(),
            request,
            "{text}"
        );
        let written = "nonce = 11\n[change]\nchange = \"restart\"\nnodes = [1, 2, 3]\n";
        assert_eq!(
            toml::from_str::<CmRequest>(written).unwrap(),
            request,
            "a request written before damaged copies were reported reads as none"
        );
        let damaged = CmRequest {
            nonce: 12,
            change: Change::Restart {
                nodes: vec![NodeId(1), NodeId(2), NodeId(3)],
                damaged: vec![(NodeId(1), RegionId(1))],
            },
        };
        let text = toml::to_string(&damaged).unwrap();
        assert!(text.contains("damaged = [[1, 1]]"), "{text}");
        assert_eq!(toml::from_str::<CmRequest>(&text).unwrap(), damaged);
    }

    /// A restart whose node found its primary copy damaged hands the region to a backup, and
    /// the history names the damaged copy.
    #[test]
    fn a_restart_with_a_damaged_primary_copy_promotes_a_backup() {
        let mut manager = lead();
        // r1: n1 [n2]; n1's copy of r1 is damaged.
        let restart = Change::Restart {
            nodes: vec![NodeId(1), NodeId(2)],
            damaged: vec![(NodeId(1), RegionId(1))],
        };
        let actions = manager.change(restart, ms(5)).expect("accepted");
        let (_, next) = proposal(&actions).expect("a proposal");
        let r1 = next.placement(RegionId(1)).unwrap();
        assert_eq!((r1.primary, r1.state), (NodeId(2), RegionState::Blocked));
        assert_eq!(r1.copying, [NodeId(1)]);
        assert_eq!(
            manager.in_progress().unwrap().cause.to_string(),
            "restart of n1, n2, damaged copies: n1's r1"
        );
    }

    /// A node's report of a damaged copy its configuration counts complete: moved (or copied
    /// again) when it is of the current configuration, nothing to do when it is of another
    /// one or names no copy the configuration counts complete, and nothing to do while a
    /// reconfiguration runs (the node reports again).
    #[test]
    fn a_report_of_damaged_copies_moves_them_when_it_is_of_the_current_configuration() {
        let mut manager = lead();
        let current = manager.configuration().unwrap().id;
        let report = |config: u64, regions: &[u32]| Change::DamagedCopies {
            config,
            node: NodeId(1),
            regions: regions.iter().copied().map(RegionId).collect(),
        };
        let stale = manager.change(report(current - 1, &[1]), ms(5));
        assert_eq!(stale, Ok(Vec::new()), "a report of another configuration");
        // r2: n2 [n1]... whatever is not n1's: none of n1's copies.
        let r_other = (manager.configuration().unwrap().regions.iter())
            .find(|p| !p.replicas().any(|r| r == NodeId(1)))
            .map(|p| p.region.0);
        if let Some(other) = r_other {
            let none = manager.change(report(current, &[other]), ms(5));
            assert_eq!(none, Ok(Vec::new()), "a copy n1 does not hold");
        }
        let actions = manager
            .change(report(current, &[1]), ms(5))
            .expect("accepted");
        let (_, next) = proposal(&actions).expect("a proposal");
        let r1 = next.placement(RegionId(1)).unwrap();
        assert_eq!((r1.primary, r1.state), (NodeId(2), RegionState::Blocked));
        assert_eq!(r1.copying, [NodeId(1)]);
        assert_eq!(
            manager.in_progress().unwrap().cause.to_string(),
            "damaged copies: n1's r1"
        );
        let busy = manager.change(report(current, &[1]), ms(6));
        assert_eq!(busy, Ok(Vec::new()), "while a reconfiguration runs");
    }

    /// Two clients that found the same regions full at once: the second request, taken while
    /// the first growth is installed, is answered with nothing to do (its asker asks again if
    /// it still needs a region), not refused, which its grower would turn into `OutOfMemory`.
    #[test]
    fn a_second_growth_request_for_the_same_regions_is_not_refused() {
        let mut manager = lead();
        let regions = manager.config.as_ref().unwrap().regions.len();
        let first = manager
            .change(
                Change::AddRegion {
                    known_regions: regions,
                },
                ms(5),
            )
            .expect("accepted");
        assert!(proposal(&first).is_some());
        let second = manager
            .change(
                Change::AddRegion {
                    known_regions: regions,
                },
                ms(5),
            )
            .expect("not refused");
        assert!(second.is_empty(), "{second:?}");
    }

    /// A new region is proposed when the asker saw every region of the configuration; a
    /// request from an asker that saw fewer (another request grew them since) does nothing.
    #[test]
    fn a_region_is_added_once_for_askers_that_saw_the_same_regions() {
        let mut manager = lead();
        let regions = manager.config.as_ref().unwrap().regions.len();
        let nothing = manager
            .change(
                Change::AddRegion {
                    known_regions: regions - 1,
                },
                ms(5),
            )
            .expect("accepted");
        assert!(nothing.is_empty() && manager.is_idle(), "{nothing:?}");
        let actions = manager
            .change(
                Change::AddRegion {
                    known_regions: regions,
                },
                ms(5),
            )
            .expect("accepted");
        let (_, next) = proposal(&actions).expect("a proposal");
        assert_eq!(next.regions.len(), regions + 1);
        let created = next.regions.last().unwrap().region;
        manager.install_outcome(InstallOutcome::Installed(next), ms(7));
        assert_eq!(
            manager.in_progress().unwrap().cause,
            Cause::Growth { region: created }
        );
        assert_eq!(
            manager.in_progress().unwrap().cause.to_string(),
            format!("new region {created}")
        );
    }

    /// A manager that committed configuration 2 without n2 (failed): n2's r2 is blocked at n3.
    fn after_n2_failed() -> (Manager, Configuration) {
        let mut manager = lead();
        let (_, next) = suspect_and_probe(&mut manager, NodeId(2), ms(10));
        manager.install_outcome(InstallOutcome::Installed(next.clone()), ms(12));
        manager.leases_updated(2, ms(12), ms(12));
        let mut last = Vec::new();
        for node in next.leased() {
            last = manager.ack(node, &ok(2), ms(13));
        }
        assert_eq!(commits(&last).len(), 4, "{last:?}");
        let r2 = next.placement(RegionId(2)).unwrap();
        assert_eq!((r2.primary, r2.state), (NodeId(3), RegionState::Blocked));
        (manager, next)
    }

    // docs/failures.md#transaction-recovery: once the new primary recovered a blocked region's
    // transactions, the CM installs and commits a configuration in which it is active again.
    #[test]
    fn a_recovered_region_is_activated_and_committed_everywhere() {
        let (mut manager, second) = after_n2_failed();
        let activate = |config: u64, regions: &[u32]| Change::Activate {
            config,
            regions: regions.iter().copied().map(RegionId).collect(),
            node: Some(NodeId(3)),
            copied: Vec::new(),
        };
        let actions = manager.change(activate(2, &[2]), ms(20)).expect("accepted");
        let (expected_id, third) = proposal(&actions).expect("a proposal");
        assert_eq!((expected_id, third.id), (2, 3));
        let mut expected = second.clone();
        expected.id = 3;
        expected.regions[1].state = RegionState::Active;
        assert_eq!(third, expected, "r2 active, nothing else changed");
        assert_eq!(
            manager.change(activate(2, &[2]), ms(21)),
            Ok(Vec::new()),
            "the same report again while it is installed: nothing to do, not refused"
        );

        let actions = manager.install_outcome(InstallOutcome::Installed(third.clone()), ms(22));
        let sent: Vec<(NodeId, u64)> = new_configs(&actions);
        assert_eq!(sent, [1, 3, 4, 5].map(|n| (NodeId(n), 3)));
        let record = manager.in_progress().unwrap();
        assert_eq!(
            record.cause,
            Cause::Recovery {
                regions: vec![RegionId(2)],
                node: Some(NodeId(3)),
                copied: Vec::new(),
            }
        );
        assert_eq!(record.cause.to_string(), "recovery of r2");
        assert!(record.failed.is_empty());
        manager.leases_updated(3, ms(22), ms(22));
        let mut last = Vec::new();
        for node in third.leased() {
            last = manager.ack(node, &ok(3), ms(23));
        }
        assert_eq!(commits(&last), [1, 3, 4, 5].map(|n| (NodeId(n), 3)));
        assert!(manager.is_idle());
        let record = manager.history().last().unwrap();
        assert_eq!(record.outcome, Outcome::Committed);
        assert_eq!((record.from_id, record.to_id), (2, Some(3)));
        assert_eq!(manager.last_committed().map(|c| c.id), Some(3));

        // A late report of configuration 2, and one of 3 whose region is active already.
        assert_eq!(manager.change(activate(2, &[2]), ms(30)), Ok(Vec::new()));
        assert_eq!(manager.change(activate(3, &[2]), ms(30)), Ok(Vec::new()));
        assert!(manager.is_idle());
    }

    /// A report that is stale, of active regions, or that comes while another reconfiguration
    /// runs gives nothing to do (its node reports again); one naming a region that does not
    /// exist is refused with the reason.
    #[test]
    fn an_activation_that_is_stale_or_comes_while_busy_does_nothing() {
        let (mut manager, _) = after_n2_failed();
        let activate = |config: u64, regions: &[u32]| Change::Activate {
            config,
            regions: regions.iter().copied().map(RegionId).collect(),
            node: Some(NodeId(3)),
            copied: Vec::new(),
        };
        assert_eq!(manager.change(activate(1, &[2]), ms(20)), Ok(Vec::new()));
        assert_eq!(manager.change(activate(3, &[2]), ms(20)), Ok(Vec::new()));
        assert_eq!(
            manager.change(activate(2, &[1, 3]), ms(20)),
            Ok(Vec::new()),
            "active regions"
        );
        assert!(manager.is_idle());
        let refused = manager.change(activate(2, &[2, 9]), ms(20));
        assert!(refused.is_err_and(|reason| reason.contains("r9")));
        assert!(manager.is_idle());

        // Busy with a failure of n5: nothing now, and no refusal.
        let _ = suspect_and_probe(&mut manager, NodeId(5), ms(30));
        assert!(!manager.is_idle());
        assert_eq!(manager.change(activate(2, &[2]), ms(31)), Ok(Vec::new()));

        let mut follower = Manager::new(ME, ManagerTiming::default());
        assert!(follower.change(activate(2, &[2]), ms(31)).is_err());
    }

    #[test]
    fn a_recovery_names_its_regions() {
        let cause = |regions: &[u32], copied: &[u32]| Cause::Recovery {
            regions: regions.iter().copied().map(RegionId).collect(),
            node: Some(NodeId(2)),
            copied: copied.iter().copied().map(RegionId).collect(),
        };
        assert_eq!(cause(&[3, 5], &[]).to_string(), "recovery of r3, r5");
        assert_eq!(cause(&[], &[3]).to_string(), "copy of r3 by n2 complete");
        assert_eq!(
            cause(&[2], &[3, 4]).to_string(),
            "recovery of r2; copy of r3, r4 by n2 complete"
        );
    }

    /// The first (region, node) copying in `config`.
    fn a_copy(config: &Configuration) -> (RegionId, NodeId) {
        config
            .regions
            .iter()
            .find_map(|p| p.copying.first().map(|&node| (p.region, node)))
            .expect("a copying backup")
    }

    // docs/failures.md#data-recovery: once a new backup reports its copy filled, the CM
    // installs and commits a configuration in which it is no longer copying.
    #[test]
    fn a_completed_copy_is_committed_everywhere_without_the_backup_copying() {
        let (mut manager, second) = after_n2_failed();
        let (region, node) = a_copy(&second);
        let copied = |config: u64, from: NodeId, regions: &[RegionId]| Change::Activate {
            config,
            regions: Vec::new(),
            node: Some(from),
            copied: regions.to_vec(),
        };
        // Not the copying node's report (the driver ignores such reports; the manager finds
        // nothing to do), and a stale one.
        let other = second
            .members()
            .find(|&n| !second.placement(region).unwrap().copying.contains(&n))
            .unwrap();
        assert_eq!(
            manager.change(copied(2, other, &[region]), ms(20)),
            Ok(Vec::new())
        );
        assert_eq!(
            manager.change(copied(1, node, &[region]), ms(20)),
            Ok(Vec::new())
        );
        assert!(manager.is_idle());

        let actions = manager
            .change(copied(2, node, &[region]), ms(20))
            .expect("accepted");
        let (expected_id, third) = proposal(&actions).expect("a proposal");
        assert_eq!((expected_id, third.id), (2, 3));
        let mut expected = second.clone();
        expected.id = 3;
        for placement in &mut expected.regions {
            if placement.region == region {
                placement.copying.retain(|&n| n != node);
            }
        }
        assert_eq!(
            third, expected,
            "{node}'s copy complete, nothing else changed"
        );
        assert_eq!(
            manager.change(copied(2, node, &[region]), ms(21)),
            Ok(Vec::new()),
            "the same report again while it is installed: nothing to do"
        );
        manager.install_outcome(InstallOutcome::Installed(third.clone()), ms(22));
        let record = manager.in_progress().unwrap();
        assert_eq!(
            record.cause,
            Cause::Recovery {
                regions: Vec::new(),
                node: Some(node),
                copied: vec![region],
            }
        );
        assert_eq!(
            record.cause.to_string(),
            format!("copy of {region} by {node} complete")
        );
        manager.leases_updated(3, ms(22), ms(22));
        let mut last = Vec::new();
        for member in third.leased() {
            last = manager.ack(member, &ok(3), ms(23));
        }
        assert_eq!(commits(&last).len(), 4, "{last:?}");
        assert!(manager.is_idle());
        assert_eq!(
            manager.history().last().unwrap().outcome,
            Outcome::Committed
        );
        assert_eq!(
            manager.change(copied(3, node, &[region]), ms(30)),
            Ok(Vec::new()),
            "a late report of a complete copy"
        );

        // Recovered and copied regions in one report: one configuration, both named.
        let both = Change::Activate {
            config: 3,
            regions: vec![RegionId(2)],
            node: Some(NodeId(3)),
            copied: vec![RegionId(2)],
        };
        let copies_r2 = third
            .placement(RegionId(2))
            .unwrap()
            .copying
            .contains(&NodeId(3));
        let actions = manager.change(both, ms(40)).expect("accepted");
        let (_, fourth) = proposal(&actions).expect("a proposal");
        assert_eq!(
            fourth.placement(RegionId(2)).unwrap().state,
            RegionState::Active
        );
        manager.install_outcome(InstallOutcome::Installed(fourth), ms(41));
        let expected_copied = if copies_r2 {
            vec![RegionId(2)]
        } else {
            Vec::new()
        };
        assert_eq!(
            manager.in_progress().unwrap().cause,
            Cause::Recovery {
                regions: vec![RegionId(2)],
                node: Some(NodeId(3)),
                copied: expected_copied,
            }
        );

        // A replica that does not lead refuses it.
        let mut follower = Manager::new(ME, ManagerTiming::default());
        assert!(follower.change(copied(3, node, &[region]), ms(50)).is_err());
    }

    #[test]
    fn copies_reported_without_their_node_are_refused_and_busy_reports_wait() {
        let (mut manager, second) = after_n2_failed();
        let (region, node) = a_copy(&second);
        let nameless = Change::Activate {
            config: 2,
            regions: Vec::new(),
            node: None,
            copied: vec![region],
        };
        let refused = manager.change(nameless, ms(20));
        assert!(refused.is_err_and(|reason| reason.contains("name it")));
        let unknown = Change::Activate {
            config: 2,
            regions: Vec::new(),
            node: Some(node),
            copied: vec![region, RegionId(9)],
        };
        let refused = manager.change(unknown, ms(20));
        assert!(refused.is_err_and(|reason| reason.contains("r9")));
        assert!(manager.is_idle());
        // Busy with a failure of n5: nothing now, and no refusal.
        let _ = suspect_and_probe(&mut manager, NodeId(5), ms(30));
        let report = Change::Activate {
            config: 2,
            regions: Vec::new(),
            node: Some(node),
            copied: vec![region],
        };
        assert_eq!(manager.change(report, ms(31)), Ok(Vec::new()));
    }

    /// A member whose lease expires while it has not acknowledged the configuration being
    /// distributed supersedes it at once, not at the acknowledgement timeout.
    #[test]
    fn a_silent_member_whose_lease_expires_supersedes_the_distribution_at_once() {
        let mut manager = lead();
        let (_, next) = suspect_and_probe(&mut manager, NodeId(5), ms(10));
        manager.install_outcome(InstallOutcome::Installed(next), ms(12));
        manager.leases_updated(2, ms(12), ms(12));
        for node in 1..=3 {
            assert!(commits(&manager.ack(NodeId(node), &ok(2), ms(13))).is_empty());
        }
        let actions = manager.suspect(NodeId(4), ms(20));
        assert!(commits(&actions).is_empty());
        assert_eq!(
            manager.history().last().unwrap().outcome,
            Outcome::Superseded
        );
        let sent = probes(&actions);
        assert_eq!(
            sent.iter().map(|p| p.0).collect::<Vec<_>>(),
            [NodeId(2), NodeId(3)],
            "probed at once, {:?} before the acknowledgement timeout",
            ACK_TIMEOUT_DEFAULT
        );
    }

    #[test]
    fn refusals_stale_stands_down_and_removed_is_suspected() {
        let mut manager = lead();
        let (_, next) = suspect_and_probe(&mut manager, NodeId(5), ms(10));
        manager.install_outcome(InstallOutcome::Installed(next.clone()), ms(12));
        let removed = NewConfigAck {
            id: 2,
            refused: "removed: not listed".into(),
        };
        let actions = manager.ack(NodeId(4), &removed, ms(13));
        assert_eq!(
            manager.history().last().unwrap().outcome,
            Outcome::Superseded
        );
        assert!(probes(&actions).iter().all(|p| p.0 != NodeId(4)));

        let mut manager = lead();
        let (_, next) = suspect_and_probe(&mut manager, NodeId(5), ms(10));
        manager.install_outcome(InstallOutcome::Installed(next), ms(12));
        let stale = NewConfigAck {
            id: 2,
            refused: "stale: n4 holds configuration 3".into(),
        };
        assert!(stood_down(&manager.ack(NodeId(4), &stale, ms(13))));
    }

    /// The CM's own node refuses NEW-CONFIG for a reason other than staleness: it cannot
    /// suspect itself (the configuration would stay uncommitted and every plan would promote
    /// it again), so it stands down for another replica to lead and remove it.
    #[test]
    fn a_refusal_by_the_cms_own_node_stands_down() {
        let mut manager = lead();
        let (_, next) = suspect_and_probe(&mut manager, NodeId(5), ms(10));
        manager.install_outcome(InstallOutcome::Installed(next), ms(12));
        let refused = NewConfigAck {
            id: 2,
            refused: "configuration 2 makes this node primary of r3, whose copy here was found \
                      damaged"
                .into(),
        };
        assert!(stood_down(&manager.ack(ME, &refused, ms(13))));
    }

    #[test]
    fn a_repeated_ack_of_the_committed_configuration_gets_the_commit_again() {
        let mut manager = lead();
        assert_eq!(
            manager.ack(NodeId(3), &ok(1), ms(50)),
            [Action::SendNewConfigCommit {
                to: NodeId(3),
                id: 1
            }]
        );
        assert!(manager.ack(NodeId(3), &ok(0), ms(50)).is_empty());
    }

    #[test]
    fn a_rejected_plan_is_recorded_and_the_next_suspects_go_on() {
        let mut manager = lead();
        suspect_and_probe(&mut manager, NodeId(5), ms(10));
        assert!(manager.suspect(NodeId(4), ms(11)).is_empty());
        let actions = manager.install_outcome(InstallOutcome::Rejected("invalid".into()), ms(12));
        assert!(matches!(
            manager.history().last().unwrap().outcome,
            Outcome::Failed { .. }
        ));
        assert_eq!(
            probes(&actions).len(),
            3,
            "n4's reconfiguration starts: {actions:?}"
        );
    }

    #[test]
    fn with_nobody_else_to_probe_a_cm_alone_stands_down() {
        let nodes = vec![ME, NodeId(2)];
        let mut config = Configuration::place(1, nodes, vec![], 1, 1, 1 << 20, 4096).unwrap();
        config.cm_leader = Some(ME);
        let mut manager = Manager::new(ME, ManagerTiming::default());
        manager.became_leader(config, ms(0));
        manager.leases_updated(1, ms(0), ms(0));
        manager.ack(ME, &ok(1), ms(0));
        manager.ack(NodeId(2), &ok(1), ms(0));
        // One of two members is no majority.
        assert!(stood_down(&manager.suspect(NodeId(2), ms(10))));
    }

    #[test]
    fn the_lease_wait_is_a_deadline_only_once_it_is_known() {
        let mut manager = lead();
        let (_, next) = suspect_and_probe(&mut manager, NodeId(5), ms(10));
        manager.install_outcome(InstallOutcome::Installed(next), ms(12));
        for node in 1..=4 {
            manager.ack(NodeId(node), &ok(2), ms(13));
        }
        // Not reported yet: the next deadline is the resend, not a lease end in the past.
        assert_eq!(
            manager.next_deadline(),
            Some(ms(12) + RESEND_PERIOD_DEFAULT)
        );
        manager.leases_updated(2, ms(150), ms(14));
        assert_eq!(
            manager.next_deadline(),
            Some(ms(12) + RESEND_PERIOD_DEFAULT)
        );
        manager.tick(ms(140));
        assert_eq!(manager.next_deadline(), Some(ms(150)));
    }

    #[test]
    fn a_new_leader_installs_a_configuration_that_names_it() {
        let mut config = cluster();
        config.cm_leader = Some(NodeId(2));
        let mut manager = Manager::new(ME, ManagerTiming::default());
        let actions = manager.became_leader(config.clone(), ms(0));
        let (expected_id, next) = proposal(&actions).unwrap();
        assert_eq!((expected_id, next.id, next.cm_leader), (1, 2, Some(ME)));
        assert_eq!(next.nodes, config.nodes);
        assert_eq!(next.regions, config.regions);
        assert_eq!(manager.in_progress().unwrap().cause, Cause::NewLeader);
        manager.lost_leadership();
        assert!(!manager.is_leader());
        assert!(
            manager
                .install_outcome(InstallOutcome::Installed(next), ms(1))
                .is_empty()
        );
    }
}

/// A seeded simulation of the manager and five members over a network that loses, delays and
/// reorders messages, with nodes that crash, a Raft group that loses proposals (some of them
/// applied after all) and a CM that stands down and is elected again.
///
/// Leases are the real state machines ([`crate::lease::CmLeases`] at the CM,
/// [`crate::lease::NodeLease`] at every node) exchanging their packets over the same network,
/// so suspicions come from leases the CM saw expire. A node *acts* (serves as primary or backup,
/// coordinates) at a step exactly when its own lease gate is open, as a node process's worker and
/// NIC thread do (docs/failures.md#leases); besides crashes, a node's lease side may stall (its
/// renewals stop while it keeps answering the reconfiguration protocol, as a node whose lease
/// thread is descheduled), so live nodes are removed too. Checked at every step: no node acts
/// while the CM considers its lease expired, and no node acts once the CM has committed a
/// configuration without it (FaRM's lease safety: the CM's wait for a removed node's lease is
/// sound only because the node stops on its own).
#[cfg(test)]
mod simulation {
    use super::*;
    use crate::lease::{CmLeases, DRIFT_PPM_DEFAULT, LeaseTiming, NodeLease, Packet};
    use crate::member::tests::FakeNode;
    use crate::member::{Adopter, Member};
    use crate::wire::{ConfigurationMessage, envelope::Body};
    use acre_nvm_log::random::{Replay, SplitMix, for_each_seed, pinned_seed};
    use std::collections::BTreeMap;

    /// Runs per test run: about a second in a debug build.
    const SEED_COUNT: u64 = 100;
    const CM: NodeId = NodeId(1);
    const NODE_COUNT: u16 = 5;
    const LEASE: Duration = Duration::from_millis(200);
    const STEP: Duration = Duration::from_millis(1);
    const STEP_COUNT: u64 = 6_000;
    /// Nodes crash only before this step, and messages are lost only before the next.
    const FAULTS_UNTIL_STEP: u64 = 2_500;
    /// How long data recovery takes to fill a new backup's copy, from the commit of the first
    /// configuration that lists it as copying.
    const COPY_TIME: Duration = Duration::from_millis(40);
    const LOSS_UNTIL_STEP: u64 = 3_500;
    /// Nodes that crash or whose lease side stalls, per run: with the members lost to probes
    /// that go unanswered, more would leave too few for a majority.
    const FAILURES_MAX: usize = 2;
    const DELAY_MS_MAX: u64 = 8;
    /// How long a node's lease side stalls: longer than a lease, so that it lapses.
    const STALL_MS_MIN: u64 = 250;
    const STALL_MS_MAX: u64 = 600;

    enum Message {
        ToCm { from: NodeId, body: Body },
        ToMember { to: NodeId, body: Body },
        LeaseToCm(Packet),
        LeaseToNode(Packet),
    }

    struct Sim {
        rng: SplitMix,
        now: Time,
        lossy: bool,
        manager: Manager,
        members: BTreeMap<NodeId, Member<FakeNode>>,
        crashed: BTreeSet<NodeId>,
        /// What Raft applied, and the proposal in flight: when it resolves, what, and its plan.
        raft: Configuration,
        raft_pending: Option<(Time, u64, Arc<Configuration>)>,
        net: Vec<(Time, Message)>,
        lease_reports: Vec<(Time, u64, Time)>,
        elect_at: Option<Time>,
        /// The CM's lease table, and each node's side of its lease (its gate).
        cm_leases: CmLeases,
        node_leases: BTreeMap<NodeId, NodeLease>,
        /// Nodes whose lease side is stalled, until when.
        stalled: BTreeMap<NodeId, Time>,
        stalls: usize,
        /// Until when the CM believed each node it dropped from its lease table held a lease:
        /// what it waited out.
        removed_view: BTreeMap<NodeId, Time>,
        /// The first update of the lease table since this CM was elected (the driver's rule: a
        /// removed node's lease is waited out for at least a lease from then).
        first_update: bool,
        /// When the CM first committed a configuration that does not list each node.
        excluded_at: BTreeMap<NodeId, Time>,
        /// Steps at which some live node acted, and live (stalled, not crashed) nodes removed.
        acts: u64,
        removed_while_live: BTreeSet<NodeId>,
        /// Until when the leases of the nodes each configuration removed run, as reported to
        /// the manager: a configuration commits only after those of it and of every older one.
        removed_until_reported: BTreeMap<u64, Time>,
        cm_committed: BTreeMap<u64, Time>,
        /// Recovery reports that started a reconfiguration.
        activations: usize,
        /// When each node first held a committed configuration listing it as copying a region:
        /// its copy completes [`COPY_TIME`] later.
        copy_started: BTreeMap<(NodeId, RegionId), Time>,
        /// Reports of completed copies that started a reconfiguration.
        copies_counted: usize,
    }

    fn cluster() -> Configuration {
        let nodes = (1..=NODE_COUNT).map(NodeId).collect();
        let mut config = Configuration::place(1, nodes, vec![], 1, 1, 1 << 20, 4096).unwrap();
        config.cm_replicas = vec![NodeId(1), NodeId(2), NodeId(3)];
        config.cm_leader = Some(CM);
        config
    }

    impl Sim {
        fn new(seed: u64) -> Sim {
            let raft = cluster();
            let members = raft
                .members()
                .map(|node| (node, Member::new(node, FakeNode::at(1))))
                .collect();
            let now = Time::from_nanos(1_000_000_000);
            let timing = LeaseTiming::new(LEASE, DRIFT_PPM_DEFAULT);
            let nodes: Vec<NodeId> = raft.leased().collect();
            let cm_leases = CmLeases::new(CM, raft.id, timing, &nodes, now);
            let node_leases = nodes
                .iter()
                .map(|&node| (node, NodeLease::new(node, CM, raft.id, timing, 1, now)))
                .collect();
            let mut sim = Sim {
                rng: SplitMix::new(seed),
                now,
                lossy: true,
                manager: Manager::new(CM, ManagerTiming::default()),
                members,
                crashed: BTreeSet::new(),
                raft,
                raft_pending: None,
                net: Vec::new(),
                lease_reports: Vec::new(),
                elect_at: None,
                cm_leases,
                node_leases,
                stalled: BTreeMap::new(),
                stalls: 0,
                removed_view: BTreeMap::new(),
                first_update: true,
                excluded_at: BTreeMap::new(),
                acts: 0,
                removed_while_live: BTreeSet::new(),
                removed_until_reported: BTreeMap::new(),
                cm_committed: BTreeMap::new(),
                activations: 0,
                copy_started: BTreeMap::new(),
                copies_counted: 0,
            };
            sim.elect();
            sim
        }

        fn later(&mut self, ms_max: u64) -> Time {
            self.now + Duration::from_millis(self.rng.range(0, ms_max))
        }

        fn send(&mut self, message: Message) {
            // Lease packets are delayed and reordered, not lost: enough lost renewals in a row
            // suspect a live node, a failure beyond the run's budget (FAILURES_MAX) that can
            // leave the CM without a majority; the lease tests cover loss (crate::lease), and
            // stalls here cut a node's renewals on purpose.
            let lease = matches!(message, Message::LeaseToCm(_) | Message::LeaseToNode(_));
            if self.lossy && !lease && self.rng.below(100) < 15 {
                return;
            }
            let at = self.later(DELAY_MS_MAX);
            self.net.push((at, message));
        }

        fn elect(&mut self) {
            // As the driver does: the lease table gives every member a lease of grace and
            // forgets its suspicions (`CmLeases::regrace`), so a member still silent one lease
            // later is suspected again, even when the leader's configuration already names it
            // and nothing new resets the table.
            self.cm_leases.regrace(self.now);
            self.first_update = true;
            let actions = self.manager.became_leader(self.raft.clone(), self.now);
            self.handle(actions);
        }

        fn handle(&mut self, actions: Vec<Action>) {
            for action in actions {
                match action {
                    Action::SendProbe { to, nonce } => {
                        self.send(Message::ToMember {
                            to,
                            body: Body::Probe(nonce),
                        });
                    }
                    Action::ProposeInstall {
                        expected_id,
                        configuration,
                    } => {
                        assert!(self.raft_pending.is_none(), "one proposal at a time");
                        let at = self.later(5);
                        self.raft_pending = Some((at, expected_id, configuration));
                    }
                    Action::UpdateLeaseMembers { configuration } => {
                        // As the driver does: read the removed nodes' leases, then hand the
                        // lease table the new members.
                        let members: BTreeSet<NodeId> = configuration.leased().collect();
                        let unknown = self.now + LEASE;
                        let mut until = self.now;
                        let removed: Vec<(NodeId, Time)> = self
                            .cm_leases
                            .members()
                            .filter(|(node, _)| !members.contains(node))
                            .collect();
                        for (gone, granted_until) in removed {
                            let end = if self.first_update {
                                granted_until.max(unknown)
                            } else {
                                granted_until
                            };
                            self.removed_view.insert(gone, end);
                            until = until.max(end);
                        }
                        if configuration.id > self.cm_leases.config() {
                            let members: Vec<NodeId> = members.into_iter().collect();
                            self.cm_leases
                                .set_configuration(configuration.id, &members, self.now);
                        }
                        self.first_update = false;
                        let at = self.later(3);
                        self.lease_reports.push((at, configuration.id, until));
                    }
                    Action::SendNewConfig { to, configuration } => {
                        let body = Body::NewConfig(ConfigurationMessage::from(&*configuration));
                        self.send(Message::ToMember { to, body });
                    }
                    Action::SendNewConfigCommit { to, id } => {
                        let removed_until = self
                            .removed_until_reported
                            .range(..=id)
                            .map(|(_, &until)| until)
                            .max()
                            .unwrap_or(Time::ZERO);
                        assert!(
                            self.now >= removed_until,
                            "commit of {id} at {} before the removed leases end at {removed_until}",
                            self.now,
                        );
                        let config = self.manager.configuration().expect("a leader's");
                        if config.id != id {
                            // The commit again, for a member that acknowledged an older
                            // configuration late (it lost the commit); the CM has moved on.
                            assert!(
                                id < config.id && self.cm_committed.contains_key(&id),
                                "commit of {id}, never committed, while distributing {}",
                                config.id
                            );
                            self.send(Message::ToMember {
                                to,
                                body: Body::NewConfigCommit(id),
                            });
                            continue;
                        }
                        // FaRM's rule: a configuration commits once every member adopted it.
                        for node in config.members() {
                            let held = self.members[&node].adopter().current_id();
                            assert!(held >= id, "commit of {id} while {node} holds {held}");
                        }
                        if !self.cm_committed.contains_key(&id) {
                            self.cm_committed.insert(id, self.now);
                            // From now on a node this configuration does not list must not act.
                            for node in (1..=NODE_COUNT).map(NodeId) {
                                if !config.members().any(|m| m == node) {
                                    self.excluded_at.entry(node).or_insert(self.now);
                                    if !self.crashed.contains(&node) {
                                        self.removed_while_live.insert(node);
                                    }
                                }
                            }
                        }
                        self.send(Message::ToMember {
                            to,
                            body: Body::NewConfigCommit(id),
                        });
                    }
                    Action::StandDown { .. } => {
                        assert!(!self.manager.is_leader());
                        self.elect_at = Some(self.now + Duration::from_millis(50));
                    }
                }
            }
        }

        fn deliver(&mut self, message: Message) {
            match message {
                Message::ToCm { from, body } => {
                    let actions = match body {
                        Body::ProbeReply(nonce) => self.manager.probe_reply(from, nonce, self.now),
                        Body::NewConfigAck(ack) => self.manager.ack(from, &ack, self.now),
                        Body::RegionsRecovered(report) => {
                            let change = Change::Activate {
                                config: report.config,
                                regions: report.regions.iter().copied().map(RegionId).collect(),
                                node: Some(from),
                                copied: report.copied.iter().copied().map(RegionId).collect(),
                            };
                            // Refused only while this CM does not lead: the node reports again.
                            let actions = self.manager.change(change, self.now).unwrap_or_default();
                            if !actions.is_empty() {
                                self.activations += 1;
                                if !report.copied.is_empty() {
                                    self.copies_counted += 1;
                                }
                            }
                            actions
                        }
                        _ => unreachable!("members send only these"),
                    };
                    self.handle(actions);
                }
                Message::ToMember { to, body } => {
                    if self.crashed.contains(&to) {
                        return;
                    }
                    if let Body::Probe(nonce) = body {
                        self.send(Message::ToCm {
                            from: to,
                            body: Body::ProbeReply(nonce),
                        });
                        return;
                    }
                    let member = self.members.get_mut(&to).expect("a node");
                    let (before_id, before) = {
                        let state = member.adopter().state.borrow();
                        (state.id, state.committed)
                    };
                    let reply = member.receive(CM, &body, self.now);
                    let (id, committed) = {
                        let state = member.adopter().state.borrow();
                        (state.id, state.committed)
                    };
                    if id > before_id {
                        // The member adopted it: its lease side asks the CM under it.
                        let lease = self.node_leases.get_mut(&to).expect("a node");
                        lease.set_configuration(id, CM, self.now);
                    }
                    if committed && !before {
                        self.check_commit(to, id);
                    }
                    if let Some((cm, body)) = reply {
                        assert_eq!(cm, CM);
                        self.send(Message::ToCm { from: to, body });
                    }
                }
                Message::LeaseToCm(packet) => {
                    // A refused packet (stale, suspected, not a member) changes nothing.
                    if let Ok(Some(reply)) = self.cm_leases.receive(self.now, &packet) {
                        self.send(Message::LeaseToNode(reply));
                    }
                }
                Message::LeaseToNode(packet) => {
                    if self.crashed.contains(&packet.node)
                        || self.stalled.contains_key(&packet.node)
                    {
                        return;
                    }
                    let lease = self.node_leases.get_mut(&packet.node).expect("a node");
                    if let Ok(grant) = lease.receive(self.now, &packet) {
                        self.send(Message::LeaseToCm(grant));
                    }
                }
            }
        }

        /// The property: a node acts only on a lease the CM also counts as valid, and never
        /// once the CM committed a configuration without it. A node acts at a step exactly
        /// when its gate is open (module docs).
        fn check_acting(&mut self) {
            let now = self.now;
            for (&node, lease) in &self.node_leases {
                if self.crashed.contains(&node) || !lease.is_valid(now) {
                    continue;
                }
                self.acts += 1;
                let cm_view = self
                    .cm_leases
                    .node_lease_until(node)
                    .or_else(|| self.removed_view.get(&node).copied());
                assert!(
                    cm_view.is_some_and(|until| now < until),
                    "{node} acts at {now} on a lease the CM sees ending at {cm_view:?}"
                );
                if let Some(&at) = self.excluded_at.get(&node) {
                    panic!(
                        "{node} acts at {now}, after the CM committed a configuration without it \
                         at {at} (its lease ends at {:?})",
                        lease.expiry().until()
                    );
                }
            }
        }

        /// A member committed configuration `id`: the CM sent its commit, and every node it
        /// does not list holds no lease any more.
        fn check_commit(&self, node: NodeId, id: u64) {
            assert!(
                self.cm_committed.contains_key(&id),
                "{node} committed {id}, which the CM never committed"
            );
            let config = if self.raft.id == id {
                self.raft.clone()
            } else {
                return;
            };
            for removed in (1..=NODE_COUNT).map(NodeId) {
                if config.members().any(|m| m == removed) || self.crashed.contains(&removed) {
                    continue;
                }
                let lease = &self.node_leases[&removed];
                assert!(
                    !lease.is_valid(self.now),
                    "{node} committed {id} at {} while removed {removed} holds a lease until {:?}",
                    self.now,
                    lease.expiry().until()
                );
            }
        }

        fn step(&mut self, step_index: u64) {
            self.now += STEP;
            self.lossy = step_index < LOSS_UNTIL_STEP;
            // Due messages, in a random order among those due.
            let mut due = Vec::new();
            let mut index = 0;
            while index < self.net.len() {
                if self.net[index].0 <= self.now {
                    due.push(self.net.swap_remove(index).1);
                } else {
                    index += 1;
                }
            }
            while !due.is_empty() {
                let pick = self.rng.below(due.len() as u64) as usize;
                let message = due.swap_remove(pick);
                self.deliver(message);
            }
            if let Some((at, expected_id, plan)) = self.raft_pending.clone()
                && at <= self.now
            {
                self.raft_pending = None;
                let applies = expected_id == self.raft.id;
                let lost = self.rng.below(100) < 10;
                if applies && (!lost || self.rng.below(2) == 0) {
                    assert_eq!(plan.id, self.raft.id + 1);
                    self.raft = (*plan).clone();
                }
                let outcome = if lost {
                    InstallOutcome::Lost
                } else if applies {
                    InstallOutcome::Installed((*plan).clone())
                } else {
                    InstallOutcome::Stale(self.raft.clone())
                };
                let actions = self.manager.install_outcome(outcome, self.now);
                self.handle(actions);
            }
            let now = self.now;
            let reports: Vec<_> = self.lease_reports.extract_if(.., |r| r.0 <= now).collect();
            for (_, id, until) in reports {
                let reported = self.removed_until_reported.entry(id).or_insert(until);
                *reported = (*reported).max(until);
                let actions = self.manager.leases_updated(id, until, now);
                self.handle(actions);
            }
            let fresh: Vec<NodeId> =
                std::iter::from_fn(|| self.cm_leases.next_suspect(now)).collect();
            for node in fresh {
                let actions = self.manager.suspect(node, now);
                self.handle(actions);
            }
            self.stalled.retain(|_, until| *until > now);
            let renewing: Vec<NodeId> = self
                .node_leases
                .keys()
                .copied()
                .filter(|n| !self.crashed.contains(n) && !self.stalled.contains_key(n))
                .collect();
            for node in renewing {
                let lease = self.node_leases.get_mut(&node).expect("a node");
                if let Some(request) = lease.poll(now) {
                    self.send(Message::LeaseToCm(request));
                }
            }
            if self.elect_at.is_some_and(|at| at <= now) {
                self.elect_at = None;
                self.elect();
            }
            if self.manager.next_deadline().is_some_and(|at| at <= now) {
                let actions = self.manager.tick(now);
                self.handle(actions);
            }
            let live: Vec<NodeId> = self
                .members
                .keys()
                .copied()
                .filter(|n| !self.crashed.contains(n))
                .collect();
            for node in live {
                let member = self.members.get_mut(&node).unwrap();
                // Transaction recovery ends as soon as a configuration is committed: the regions
                // blocked at the node in it are recovered.
                {
                    let mut state = member.adopter().state.borrow_mut();
                    let recovered = match &state.config {
                        Some(config) if state.committed => config
                            .regions
                            .iter()
                            .filter(|p| p.state == RegionState::Blocked && p.primary == node)
                            .map(|p| p.region)
                            .collect(),
                        _ => Vec::new(),
                    };
                    state.recovered = recovered;
                    // Data recovery fills a copy some time after the configuration that made
                    // the node a copying backup committed.
                    let mut copied = Vec::new();
                    if let Some(config) = state.config.as_ref().filter(|_| state.committed) {
                        // A copy counted complete and started again later starts from then.
                        self.copy_started.retain(|&(n, region), _| {
                            n != node
                                || config
                                    .placement(region)
                                    .is_some_and(|p| p.copying.contains(&node))
                        });
                        for placement in &config.regions {
                            if placement.copying.contains(&node) {
                                let started = self
                                    .copy_started
                                    .entry((node, placement.region))
                                    .or_insert(now);
                                if now >= *started + COPY_TIME {
                                    copied.push(placement.region);
                                }
                            }
                        }
                    }
                    state.copied = copied;
                }
                let replies = [member.tick(now), member.recovery_report(now)];
                for (cm, body) in replies.into_iter().flatten() {
                    assert_eq!(cm, CM);
                    self.send(Message::ToCm { from: node, body });
                }
            }
            // A node fails: it crashes, or its lease side stalls (its renewals stop; it goes on
            // answering NEW-CONFIG and probes, and would go on serving but for its gate).
            if step_index < FAULTS_UNTIL_STEP
                && self.crashed.len() + self.stalls < FAILURES_MAX
                && self.rng.below(1_000) == 0
            {
                let node = NodeId(self.rng.range(2, u64::from(NODE_COUNT)) as u16);
                // Only while a majority of the configuration runs on without it: the CM needs
                // one to answer its probes, or it stands down (and, with members also lost to
                // unanswered probes, a run could end with the CM unable to remove anyone).
                let members: Vec<NodeId> = self.raft.leased().collect();
                let running_after = members
                    .iter()
                    .filter(|&&n| {
                        n != node && !self.crashed.contains(&n) && !self.stalled.contains_key(&n)
                    })
                    .count();
                if !members.contains(&node) || 2 * running_after <= members.len() {
                    // No failure this time.
                } else if self.rng.below(2) == 0 {
                    // The CM suspects it once the lease it granted runs out.
                    self.crashed.insert(node);
                } else if !self.crashed.contains(&node) {
                    let stall = Duration::from_millis(self.rng.range(STALL_MS_MIN, STALL_MS_MAX));
                    self.stalled.insert(node, now + stall);
                    self.stalls += 1;
                }
            }
            if step_index < FAULTS_UNTIL_STEP && self.rng.below(2_000) == 0 {
                self.manager.lost_leadership();
                self.elect_at = Some(now + Duration::from_millis(30));
            }
            self.check_acting();
        }
    }

    /// What one run exercised, so the test can tell it did.
    #[derive(Default)]
    struct Exercised {
        /// Crashed nodes removed.
        removed: usize,
        /// Reconfigurations the CM stood down from (or lost its leadership in).
        stood_down: usize,
        /// Live nodes removed (their lease lapsed while they ran).
        removed_while_live: usize,
        /// Node-steps at which a node acted.
        acts: u64,
        /// Recovery reports that started a reconfiguration.
        activations: usize,
        /// Reports of completed copies that started a reconfiguration.
        copies_counted: usize,
    }

    /// One run.
    fn run(seed: u64) -> Exercised {
        let mut sim = Sim::new(seed);
        let mut ids_seen: BTreeMap<NodeId, u64> = BTreeMap::new();
        for step_index in 0..STEP_COUNT {
            sim.step(step_index);
            for (&node, member) in &sim.members {
                let id = member.adopter().current_id();
                let last = ids_seen.insert(node, id).unwrap_or(0);
                assert!(id >= last, "{node} went from {last} to {id}");
                assert!(
                    id <= sim.raft.id,
                    "{node} holds {id}, Raft only {}",
                    sim.raft.id
                );
            }
        }
        // Without faults the cluster settles: the crashed nodes are out, and every member
        // holds the current configuration, committed.
        assert!(
            sim.manager.is_leader() && sim.manager.is_idle(),
            "{:?}",
            sim.manager.phase
        );
        for &node in &sim.crashed {
            assert!(
                !sim.raft.members().any(|m| m == node),
                "{node} crashed, still a member"
            );
        }
        for node in sim.raft.members() {
            let state = sim.members[&node].adopter().state.borrow();
            assert_eq!((state.id, state.committed), (sim.raft.id, true), "{node}");
        }
        // Every region that lost its primary was recovered by the new one and is active again
        // (or lost: then it has no replica to recover).
        for placement in &sim.raft.regions {
            assert_ne!(
                placement.state,
                RegionState::Blocked,
                "{placement:?} is still blocked in {}",
                sim.raft.id
            );
            // Every member is live at the end (crashed nodes are out): each completed its
            // copies and the CM counted them.
            assert!(
                placement.copying.is_empty(),
                "{placement:?} is still copying in {}",
                sim.raft.id
            );
        }
        let stood_down = sim
            .manager
            .history()
            .filter(|r| matches!(r.outcome, Outcome::StoodDown { .. }))
            .count();
        Exercised {
            removed: sim.crashed.len(),
            stood_down,
            removed_while_live: sim.removed_while_live.len(),
            acts: sim.acts,
            activations: sim.activations,
            copies_counted: sim.copies_counted,
        }
    }

    #[test]
    fn reconfigurations_under_loss_crashes_and_elections() {
        let mut total = Exercised::default();
        for_each_seed(SEED_COUNT, Replay::Exact, |seed| {
            let run = run(seed);
            total.removed += run.removed;
            total.stood_down += run.stood_down;
            total.removed_while_live += run.removed_while_live;
            total.acts += run.acts;
            total.activations += run.activations;
            total.copies_counted += run.copies_counted;
        });
        if pinned_seed().is_none() {
            let Exercised {
                removed,
                stood_down,
                removed_while_live,
                acts,
                activations,
                copies_counted,
            } = total;
            assert!(removed >= SEED_COUNT as usize / 2, "removed={removed}");
            assert!(
                stood_down > 0,
                "the CM never stood down: the faults are too mild"
            );
            // The lease property is checked on live nodes that lost their lease, not only on
            // crashed ones, and on nodes that did act.
            assert!(
                removed_while_live >= SEED_COUNT as usize / 10,
                "removed_while_live={removed_while_live}"
            );
            assert!(acts > 0, "no node ever acted");
            assert!(
                activations >= SEED_COUNT as usize / 2,
                "activations={activations}"
            );
            assert!(
                copies_counted >= SEED_COUNT as usize / 2,
                "copies_counted={copies_counted}"
            );
        }
    }
}
