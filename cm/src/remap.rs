//! Reconfiguration planning: the functions that compute configuration c+1 from c when nodes
//! fail ([`after_failure`]), join ([`add_node`]) or leave ([`remove_node`]), when a region is
//! created ([`add_region`]), when transaction recovery unblocks regions ([`activate`]), when
//! data recovery completes a backup's copy ([`copy_complete`], both at once: [`after_recovery`]),
//! and when node processes restarted from their files ([`restart`])
//! (docs/failures.md#reconfiguration, FaRM SOSP'15 §5.2).
//!
//! They are pure: no I/O, no clock, no randomness, and the same input gives the same output, so
//! every CM replica that replays a Raft entry computes the same configuration, and a test can
//! check a plan by value. Each returns a [`Plan`]: the next configuration (validated, id + 1)
//! and what changed in every region, or a [`RemapError`] that says why no configuration can
//! follow and what to do instead.
//!
//! ```
//! use acre_cm::remap::after_failure;
//! use acre_engine::addr::{NodeId, RegionId};
//! use acre_txn::config::{Configuration, RegionState};
//! use std::collections::BTreeSet;
//!
//! // Three nodes, f = 1: region 1 has its primary on n1 and its backup on n2.
//! let nodes = vec![NodeId(1), NodeId(2), NodeId(3)];
//! let config = Configuration::place(1, nodes, vec![], 1, 1, 1 << 20, 4096)?;
//! let plan = after_failure(&config, &BTreeSet::from([NodeId(1)]))?;
//! let region = plan.config.placement(RegionId(1)).unwrap();
//! assert_eq!((region.primary, region.state), (NodeId(2), RegionState::Blocked));
//! assert_eq!(region.backups, [NodeId(3)]);
//! // n3 receives its copy of the region in the background: until data recovery says it is
//! // complete, it is no copy of the data and cannot be promoted.
//! assert_eq!(region.copying, [NodeId(3)]);
//! for change in &plan.changes {
//!     // r1: primary n1 -> n2 (promoted), dropped n1, new backups n3 (copying), blocked
//!     println!("{change}");
//! }
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```
//!
//! # Rules
//!
//! - **Complete replicas.** A backup's copy of a region counts only once it is complete. Every
//!   backup a plan adds is `copying` ([`Placement::copying`]) until data recovery installs a
//!   configuration that says its copy is complete ([`copy_complete`], which its report asks
//!   for); no other plan here takes a backup out of `copying`. The one plan that puts a backup
//!   it keeps back into `copying` is [`restart`]: a restarted backup's copy may miss updates,
//!   and a primary whose copy its restart found damaged stays as a backup copying again.
//!   A copying backup takes COMMIT-BACKUP records like the others, so it keeps up once copied,
//!   but until then it misses whatever the copy has not reached: a plan never promotes it and
//!   never counts it as a copy of the data. The primary is always complete (only complete
//!   backups are promoted, and a new region's replicas are complete at once, being empty), so
//!   a region that is not lost always has a complete replica.
//! - **Surviving data is never dropped.** Only replicas on failed or removed nodes leave: a live
//!   complete replica stays one, and a live copying backup stays one, still copying, unless its
//!   region is lost. A new primary is always a complete backup of the region in c, which holds
//!   every committed write (FaRM commits only after every backup has the COMMIT-BACKUP record,
//!   and a complete backup also has everything committed before it joined).
//! - **Promotion.** When a region's primary fails (or leaves, or its restart found its copy
//!   damaged: then only a backup whose copy is intact is a candidate), the surviving complete
//!   backup with the fewest primaries becomes primary, ties going to the earlier backup in the
//!   list (new backups are appended, so the list is oldest first). The domain of the primary does
//!   not matter for safety, every complete replica has the data, but load does: the primary
//!   serves every read and lock. The region becomes [`RegionState::Blocked`]: the new primary
//!   holds none of the locks of the transactions in flight, and serves only once transaction
//!   recovery has rebuilt them.
//! - **Lost.** A region is lost exactly when every complete replica of it has failed (or, at a
//!   [`restart`], was found damaged): its surviving copying backups hold a part of its data at
//!   best, so they are dropped with the rest (there is nothing left to finish their copy from).
//!   A lost region is [`RegionState::Lost`], naming its last primary, with no backups and none
//!   copying: an explicit state shown everywhere, never a silently dropped region; it stays
//!   lost (its data comes back only with a replica's files, which is not planned here).
//! - **States last.** A blocked region stays blocked through later changes (even when its new
//!   primary fails too and another backup is promoted) until recovery, not a remap, unblocks it:
//!   [`activate`] (or [`after_recovery`], with completed copies in the same report), which its
//!   new primary's report of its recovered transactions asks for, is the only plan that makes a
//!   blocked region active. An active region whose primary survives stays active.
//! - **New backups.** A region with fewer than f backups gets new ones on live memory nodes that
//!   hold no replica of it, chosen one at a time by, in order: fewest of the region's replicas in
//!   the candidate's failure domain (so replicas spread over domains, and a domain that fails
//!   takes as few copies as it can), fewest replicas on the candidate (memory and copy work
//!   spread), lowest node id. When there is no candidate the region runs with fewer backups
//!   (degraded); every membership change ([`after_failure`], [`add_node`], [`remove_node`])
//!   tries again, so after any of them a region is degraded only if every memory node already
//!   holds a replica of it. A new backup is copying and needs a copy of the region's data
//!   ([`Plan::copies`]), except in a region [`add_region`] creates, which is empty.
//! - **Removal.** A graceful removal ([`remove_node`]) never loses data: it is refused for a node
//!   that holds some region's last complete replica. Since the primary is always complete and
//!   on another node than its backups, that is a primary whose backups are all copying (or
//!   which has none); a backup is never the last complete replica, its primary is another.
//! - **Membership.** Failed or removed nodes leave `nodes`, `clients` and `domains`; a failed or
//!   removed CM leader is cleared, but `cm_replicas` is left alone: the Raft group's membership
//!   changes through Raft, not through these plans. Once it changed, [`name_cm_replicas`]
//!   makes `cm_replicas` say so, and changes nothing else ([`crate::replacement`]).
//!
//! Loads (primaries and replicas per node, copying or not) count regions that are not lost, and
//! are updated as each region is placed, in the order of `regions`, so a plan that moves many
//! regions at once spreads them rather than sending them all to the node that was least loaded
//! at the start.
//!
//! # Not yet
//!
//! These plans do not move primaries to balance load after a join, or change f.

use acre_engine::addr::{NodeId, RegionId};
use acre_txn::config::{
    ConfigError, Configuration, FailureDomain, Placement, REPLY_AREA_ID_MIN, RegionState,
};
use std::collections::{BTreeMap, BTreeSet};
use std::fmt;

/// Configuration c+1 and what it changes.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Plan {
    /// The next configuration: validated, its id one more than the one it follows.
    pub config: Configuration,
    /// One entry per region that changed (or was created), in the order of `config.regions`.
    pub changes: Vec<RegionChange>,
    /// The data copies the plan needs: one per new backup of a region that has data, and one
    /// per restarted backup copying again ([`restart`]), in the order of `changes`. Where they
    /// come from and when they must be done depends on the plan: see [`after_failure`],
    /// [`add_node`], [`remove_node`] and [`restart`].
    pub copies: Vec<DataCopy>,
}

impl Plan {
    /// The regions the plan creates.
    pub fn created(&self) -> impl Iterator<Item = RegionId> + '_ {
        self.changes
            .iter()
            .filter(|change| change.created)
            .map(|change| change.region)
    }
}

/// One region's data to copy to a new backup.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct DataCopy {
    pub region: RegionId,
    /// The replica that holds the authoritative data: a primary.
    pub from: NodeId,
    /// The new backup.
    pub to: NodeId,
}

impl fmt::Display for DataCopy {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "copy {} from {} to {}", self.region, self.from, self.to)
    }
}

/// What changed in one region between two configurations: for logs and `acre cluster status`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RegionChange {
    pub region: RegionId,
    /// The region did not exist before: it is new and empty, so its replicas need no copy.
    pub created: bool,
    /// Its state before (`None` when created) and after.
    pub state_before: Option<RegionState>,
    pub state: RegionState,
    /// Its primary after the change (its last primary when lost).
    pub primary: NodeId,
    /// The backup promoted to primary, with the primary it replaces.
    pub promoted: Option<Promotion>,
    /// Replicas the region no longer has (on failed or removed nodes, or copying backups of a
    /// region that is lost). All of them when lost.
    pub dropped: Vec<NodeId>,
    /// New backups: each needs a copy of the region's data ([`Plan::copies`]), unless created.
    pub added: Vec<NodeId>,
    /// The backups copying before the change (none when created): with `copying`, what tells a
    /// reader which of `dropped` cost no data, and which copies completed.
    pub copying_before: Vec<NodeId>,
    /// The backups copying after the change, new or not: replicas in name only, which a reader
    /// should not count as copies of the data.
    pub copying: Vec<NodeId>,
    /// How many backups short of f the region is after the change (degraded when not 0).
    pub backups_missing_count: usize,
}

/// A backup that became primary.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Promotion {
    pub from: NodeId,
    pub to: NodeId,
}

impl RegionChange {
    pub fn is_lost(&self) -> bool {
        self.state == RegionState::Lost
    }

    /// The backups whose copy completed with this change (data recovery's configurations).
    pub fn copied(&self) -> impl Iterator<Item = NodeId> + '_ {
        self.copying_before
            .iter()
            .copied()
            .filter(|node| !self.copying.contains(node) && !self.dropped.contains(node))
    }

    /// The backups the region kept that copy again with this change: their processes restarted
    /// from their files ([`restart`]).
    pub fn copying_again(&self) -> impl Iterator<Item = NodeId> + '_ {
        self.copying
            .iter()
            .copied()
            .filter(|node| !self.copying_before.contains(node) && !self.added.contains(node))
    }
}

impl fmt::Display for RegionChange {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: ", self.region)?;
        // Which of a list were copying: a reader counts copies of the data, and a copying
        // backup is none.
        let split = |nodes: &[NodeId], copying: &[NodeId]| -> (Vec<NodeId>, Vec<NodeId>) {
            nodes
                .iter()
                .copied()
                .partition(|node| !copying.contains(node))
        };
        let (dropped_complete, dropped_copying) = split(&self.dropped, &self.copying_before);
        if self.is_lost() {
            write!(
                f,
                "lost (last primary {}; every complete replica gone: {}",
                self.primary,
                list(&dropped_complete)
            )?;
            if !dropped_copying.is_empty() {
                write!(f, "; dropped {} (copying)", list(&dropped_copying))?;
            }
            return write!(f, ")");
        }
        // Unblocked by transaction recovery ([`activate`]): said once, first when nothing else
        // about the primary changed.
        let recovered =
            self.state_before == Some(RegionState::Blocked) && self.state == RegionState::Active;
        let mut recovered_said = false;
        if self.created {
            write!(f, "created, primary {}", self.primary)?;
        } else if let Some(Promotion { from, to }) = self.promoted {
            write!(f, "primary {from} -> {to} (promoted)")?;
        } else if recovered {
            write!(f, "{RECOVERED}")?;
            recovered_said = true;
        } else {
            write!(f, "primary {}", self.primary)?;
        }
        write_split(f, "dropped", &dropped_complete, &dropped_copying)?;
        let (added_complete, added_copying) = split(&self.added, &self.copying);
        write_split(f, "new backups", &added_complete, &added_copying)?;
        let still: Vec<NodeId> = self
            .copying
            .iter()
            .copied()
            .filter(|node| !self.added.contains(node) && self.copying_before.contains(node))
            .collect();
        if !still.is_empty() {
            write!(f, ", {} still copying", list(&still))?;
        }
        let again: Vec<NodeId> = self.copying_again().collect();
        if !again.is_empty() {
            write!(f, ", {} copying again (restarted)", list(&again))?;
        }
        let copied: Vec<NodeId> = self.copied().collect();
        if !copied.is_empty() {
            write!(f, ", copy complete on {}", list(&copied))?;
        }
        if self.backups_missing_count > 0 {
            write!(
                f,
                ", degraded: {} backups short",
                self.backups_missing_count
            )?;
        }
        if recovered {
            if !recovered_said {
                write!(f, ", {RECOVERED}")?;
            }
        } else if self.state_before != Some(self.state) || !self.state.is_active() {
            write!(f, ", {}", self.state.name())?;
        }
        Ok(())
    }
}

/// What a change line says of a region that [`activate`] unblocked.
const RECOVERED: &str = "active again (its transactions are recovered)";

/// `, {what} n1 n2 and n3 (copying)`: the nodes of a list, those copying last and marked; nothing
/// when both are empty.
fn write_split(
    f: &mut fmt::Formatter<'_>,
    what: &str,
    complete: &[NodeId],
    copying: &[NodeId],
) -> fmt::Result {
    match (complete.is_empty(), copying.is_empty()) {
        (true, true) => Ok(()),
        (false, true) => write!(f, ", {what} {}", list(complete)),
        (true, false) => write!(f, ", {what} {} (copying)", list(copying)),
        (false, false) => write!(
            f,
            ", {what} {} and {} (copying)",
            list(complete),
            list(copying)
        ),
    }
}

fn list(nodes: &[NodeId]) -> String {
    let names: Vec<String> = nodes.iter().map(NodeId::to_string).collect();
    names.join(" ")
}

/// Why no configuration can follow: each variant says what to do instead.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum RemapError {
    #[error(
        "configuration {id} is invalid, so nothing can follow it: {source}; this is a bug in \
         whatever produced it (the CM's state or a hand-written file): fix it there"
    )]
    Invalid {
        id: u64,
        #[source]
        source: ConfigError,
    },
    #[error(
        "configuration {id} is invalid, so nothing can follow it: {region} is lost but lists \
         backups, and a lost region has none; this is a bug in whatever produced it (the CM's \
         state or a hand-written file): fix it there"
    )]
    LostWithBackups { id: u64, region: RegionId },
    #[error("no failed node given: configuration {id} stays; install nothing")]
    NothingFailed { id: u64 },
    #[error(
        "{node} is not a member of configuration {id}: it already left or never joined; leave \
         it out of the request"
    )]
    NotAMember { node: NodeId, id: u64 },
    #[error(
        "every memory node of configuration {id} failed: no configuration can follow; restart \
         nodes from their files and start the cluster again"
    )]
    EveryNodeFailed { id: u64 },
    #[error(
        "{node} is already a member of configuration {id}: give the new node another id, or \
         remove the old one first"
    )]
    AlreadyMember { node: NodeId, id: u64 },
    #[error(
        "{node} is the id reserved for observers such as `acre cluster status`: give the new \
         node another id"
    )]
    ObserverId { node: NodeId },
    #[error(
        "removing {node} would remove the last complete replica of {}: none of their backups \
         has a complete copy to take over; wait until data recovery completes a backup's copy, \
         or add a node first, which gives degraded regions their missing backups to copy (with \
         f = 0 there are none to give: raise f first)",
        region_list(regions)
    )]
    LastReplica {
        node: NodeId,
        regions: Vec<RegionId>,
    },
    #[error(
        "{node} is the last memory node of configuration {id}: a cluster needs one; add \
         another node first"
    )]
    LastNode { node: NodeId, id: u64 },
    #[error(
        "no region id is free below {REPLY_AREA_ID_MIN:#x} in configuration {id}: make regions \
         larger instead of creating more"
    )]
    RegionIdsExhausted { id: u64 },
    #[error(
        "{region} is no region of configuration {id}: a report of its recovery or of a copy of \
         it is for another configuration, or a bug in its sender; leave it out"
    )]
    UnknownRegion { region: RegionId, id: u64 },
    #[error(
        "{region} is lost in configuration {id}: it has no replica to recover, and stays lost; \
         leave it out"
    )]
    RegionLost { region: RegionId, id: u64 },
    #[error(
        "none of {} is blocked in configuration {id}: they are active already; install nothing",
        region_list(regions)
    )]
    NothingBlocked { regions: Vec<RegionId>, id: u64 },
    #[error(
        "{node} is copying none of {} in configuration {id}: its copies are complete already, \
         or it is no backup of them; install nothing",
        region_list(regions)
    )]
    NothingCopying {
        node: NodeId,
        regions: Vec<RegionId>,
        id: u64,
    },
    #[error("configuration {id} names these CM replicas already; install nothing")]
    CmReplicasUnchanged { id: u64 },
    #[error(
        "a configuration after {id} would name no CM replica: the CM's Raft group always has \
         one; name its voters"
    )]
    NoCmReplicas { id: u64 },
    #[error("no restarted node given: configuration {id} stays; install nothing")]
    NothingRestarted { id: u64 },
    #[error(
        "{node} is a client of configuration {id}, not a memory node: it holds no region to \
         recover; leave it out of the restart"
    )]
    NotAMemoryNode { node: NodeId, id: u64 },
    #[error(
        "restarting {} changes nothing in configuration {id}: the regions they are primary of \
         are blocked or lost already, and they copy every region they are backup of already; \
         install nothing",
        list(nodes)
    )]
    NothingToRestart { nodes: Vec<NodeId>, id: u64 },
    #[error(
        "{node}'s copy of {region} is reported damaged, but no restarted node of configuration \
         {id} holds that copy: the report is for another configuration, or a bug in its \
         sender; leave it out"
    )]
    DamagedNotHeld {
        node: NodeId,
        region: RegionId,
        id: u64,
    },
    #[error(
        "{node} holds no complete copy of any of {} in configuration {id} (or they are lost): \
         its report of damaged copies is for another configuration; nothing to do",
        region_list(regions)
    )]
    NoDamagedCopy {
        node: NodeId,
        regions: Vec<RegionId>,
        id: u64,
    },
}

fn region_list(regions: &[RegionId]) -> String {
    let names: Vec<String> = regions.iter().map(RegionId::to_string).collect();
    names.join(" ")
}

/// Configuration c+1 after the nodes in `failed` (memory nodes or clients) failed: their
/// replicas leave, regions that lost their primary get a surviving complete backup as primary
/// and become blocked, regions get new (copying) backups where a node can take them, and regions
/// whose every complete replica failed become lost (module docs, "Rules").
///
/// The copies come from each region's primary in c+1 and run in the background once it is
/// installed (data recovery); a blocked region's copy starts when recovery has made its new
/// primary's data current. Until its copy completes a new backup is a replica in name only,
/// which its place in `copying` says.
pub fn after_failure(
    config: &Configuration,
    failed: &BTreeSet<NodeId>,
) -> Result<Plan, RemapError> {
    check(config)?;
    if failed.is_empty() {
        return Err(RemapError::NothingFailed { id: config.id });
    }
    if let Some(&node) = failed.iter().find(|&&node| !is_member(config, node)) {
        return Err(RemapError::NotAMember {
            node,
            id: config.id,
        });
    }
    if config.nodes.iter().all(|node| failed.contains(node)) {
        return Err(RemapError::EveryNodeFailed { id: config.id });
    }
    let mut next = without(config, failed);
    let mut orphaned = Vec::new();
    for (index, placement) in next.regions.iter_mut().enumerate() {
        if placement.state == RegionState::Lost {
            continue;
        }
        if placement
            .complete_replicas()
            .all(|node| failed.contains(&node))
        {
            // With every complete replica gone nothing can serve the region: a copying backup
            // that survives holds a part of the data at best, and nothing is left to finish its
            // copy from. The region stays in the configuration, lost, so that everyone sees why
            // its addresses fail.
            lose(placement);
            continue;
        }
        placement.backups.retain(|node| !failed.contains(node));
        placement.copying.retain(|node| !failed.contains(node));
        if failed.contains(&placement.primary) {
            orphaned.push(index);
        }
    }
    promote(&mut next, &orphaned);
    fill_backups(&mut next, None);
    Ok(finish(config, next, CopyFrom::NewPrimary))
}

/// Configuration c+1 with the memory node `node` added (in failure domain `domain`, or a domain
/// of its own). Degraded regions get their missing backups, mostly on the new node since it
/// holds nothing yet (a node in a domain the region does not use comes first); the changes say
/// which regions it receives, and the copies (from each region's primary, in the background
/// once c+1 is installed) what it must fetch; it is copying in those regions until data
/// recovery says its copies are complete. Primaries do not move: no rebalancing yet.
pub fn add_node(
    config: &Configuration,
    node: NodeId,
    domain: Option<String>,
) -> Result<Plan, RemapError> {
    check(config)?;
    if node == NodeId::OBSERVER {
        return Err(RemapError::ObserverId { node });
    }
    if is_member(config, node) {
        return Err(RemapError::AlreadyMember {
            node,
            id: config.id,
        });
    }
    let mut next = config.clone();
    next.id = next_id(config);
    next.nodes.push(node);
    if let Some(domain) = domain {
        next.domains.push(FailureDomain { node, domain });
    }
    fill_backups(&mut next, None);
    Ok(finish(config, next, CopyFrom::NewPrimary))
}

/// Configuration c+1 without `node` (a memory node or a client), which leaves gracefully: every
/// region it holds a replica of gets a new one elsewhere, and a region it is primary of gets one
/// of its backups as primary (blocked, as after a failure, since the new primary holds none of
/// the locks of transactions in flight). The copies ([`Plan::copies`]) come from each region's
/// primary in c, which is still live and the one replica whose memory is current (a backup
/// applies committed writes only at truncation), and must complete before c+1 is installed.
/// The new backups are copying in c+1 all the same: a write committed between a copy and the
/// install reaches a new backup only once c+1 makes it one, so only data recovery, having seen
/// the copy through in c+1, can say that it is complete.
///
/// Refused when the node is not a member, when it holds the last complete replica of a region
/// (a primary whose backups are all copying, or which has none: module docs, "Removal"), or
/// when it is the last memory node.
pub fn remove_node(config: &Configuration, node: NodeId) -> Result<Plan, RemapError> {
    check(config)?;
    if !is_member(config, node) {
        return Err(RemapError::NotAMember {
            node,
            id: config.id,
        });
    }
    let last: Vec<RegionId> = config
        .regions
        .iter()
        .filter(|p| p.state != RegionState::Lost)
        .filter(|p| p.complete_replicas().all(|replica| replica == node))
        .map(|p| p.region)
        .collect();
    if !last.is_empty() {
        return Err(RemapError::LastReplica {
            node,
            regions: last,
        });
    }
    if config.nodes == [node] {
        return Err(RemapError::LastNode {
            node,
            id: config.id,
        });
    }
    let gone = BTreeSet::from([node]);
    let mut next = without(config, &gone);
    let mut orphaned = Vec::new();
    for (index, placement) in next.regions.iter_mut().enumerate() {
        if placement.state == RegionState::Lost {
            continue;
        }
        // The refusal above leaves every region a complete replica elsewhere: a removal never
        // makes one lost.
        placement.backups.retain(|&backup| backup != node);
        placement.copying.retain(|&backup| backup != node);
        if placement.primary == node {
            orphaned.push(index);
        }
    }
    promote(&mut next, &orphaned);
    fill_backups(&mut next, None);
    Ok(finish(config, next, CopyFrom::OldPrimary))
}

/// Configuration c+1 with one more region (as data grows), of the configuration's
/// `region_bytes`: the next id after the largest in use (ids are never reused, so an address
/// of a lost region never points into a new one), its primary on the node with the fewest
/// primaries (then fewest replicas, then lowest id), and up to f backups chosen as new backups
/// are (module docs). The region is new and empty: it is active at once, and its backups are
/// complete at once (not copying) and need no copy.
/// (Like the other plans, it would also give a degraded region a missing backup if a node could
/// take one, which no configuration these plans produce leaves.)
pub fn add_region(config: &Configuration) -> Result<Plan, RemapError> {
    check(config)?;
    let largest = config.regions.iter().map(|p| p.region.0).max().unwrap_or(0);
    let region = largest + 1;
    if region >= REPLY_AREA_ID_MIN {
        return Err(RemapError::RegionIdsExhausted { id: config.id });
    }
    let mut next = config.clone();
    next.id = next_id(config);
    let load = Load::of(&next);
    let primary = next
        .nodes
        .iter()
        .copied()
        .min_by_key(|&node| (load.primaries(node), load.replicas(node), node))
        .expect("a valid configuration has a node");
    next.regions.push(Placement {
        region: RegionId(region),
        primary,
        backups: Vec::new(),
        copying: Vec::new(),
        state: RegionState::Active,
    });
    fill_backups(&mut next, Some(RegionId(region)));
    // A new region is empty: nothing to copy.
    Ok(finish(config, next, CopyFrom::NewPrimary))
}

/// Configuration c+1 whose `cm_replicas` are `replicas`: the CM's Raft group changed its
/// membership (a removed node's replica replaced by a memory node's, [`crate::replacement`]), and
/// the configuration names the voters Raft applied, where the nodes find their addresses and
/// whether to run a replica. Nothing else changes, so the plan needs no copy. Refused when
/// `replicas` is what c says already ([`RemapError::CmReplicasUnchanged`]), and when it names
/// nobody or a client (the configuration would not validate: [`RemapError::Invalid`]).
pub fn name_cm_replicas(config: &Configuration, replicas: &[NodeId]) -> Result<Plan, RemapError> {
    check(config)?;
    if config.cm_replicas == replicas {
        return Err(RemapError::CmReplicasUnchanged { id: config.id });
    }
    let mut next = config.clone();
    next.id = next_id(config);
    next.cm_replicas = replicas.to_vec();
    if replicas.is_empty() {
        return Err(RemapError::NoCmReplicas { id: config.id });
    }
    next.validate().map_err(|source| RemapError::Invalid {
        id: next.id,
        source,
    })?;
    Ok(finish(config, next, CopyFrom::NewPrimary))
}

/// Configuration c+1 with every region of `regions` that is blocked in c active again: their new
/// primaries finished transaction recovery (docs/failures.md#transaction-recovery: the locks of
/// the transactions in flight are taken again, so the region can serve). Nothing else changes:
/// replicas, copying backups and members stay as they are, so the plan needs no copy.
///
/// A region of `regions` that is active already is skipped (a report that crossed the
/// configuration that activated it). Refused when a region of `regions` does not exist
/// ([`RemapError::UnknownRegion`]) or is lost ([`RemapError::RegionLost`]), and when none of
/// them is blocked ([`RemapError::NothingBlocked`]: there is nothing to install).
pub fn activate(config: &Configuration, regions: &[RegionId]) -> Result<Plan, RemapError> {
    after_recovery(config, regions, None)
}

/// Configuration c+1 in which `node` is no longer copying in `regions`: data recovery filled its
/// copy of each (docs/failures.md#data-recovery), so it counts as a complete backup from then
/// on and may be promoted. Nothing else changes, so the plan needs no copy.
///
/// A region of `regions` in which `node` is not a copying backup is skipped (a report that
/// crossed the configuration that completed the copy, or one that dropped the backup). Refused
/// as [`activate`] is: an unknown or lost region, and [`RemapError::NothingCopying`] when
/// `node` copies none of them.
pub fn copy_complete(
    config: &Configuration,
    node: NodeId,
    regions: &[RegionId],
) -> Result<Plan, RemapError> {
    after_recovery(config, &[], Some(Copied { node, regions }))
}

/// A node's report that data recovery completed its copies of `regions` ([`after_recovery`]).
#[derive(Clone, Copy, Debug)]
pub struct Copied<'a> {
    pub node: NodeId,
    pub regions: &'a [RegionId],
}

/// Configuration c+1 after a node's report of what recovery finished: the blocked regions of
/// `recovered` active again ([`activate`]), and the copies of `copied` complete
/// ([`copy_complete`]), both in one configuration. The rules and refusals are theirs; when
/// neither list changes anything, the refusal is [`RemapError::NothingBlocked`] if `recovered`
/// names a region, [`RemapError::NothingCopying`] otherwise.
pub fn after_recovery(
    config: &Configuration,
    recovered: &[RegionId],
    copied: Option<Copied<'_>>,
) -> Result<Plan, RemapError> {
    check(config)?;
    let mut next = config.clone();
    next.id = next_id(config);
    let copied_regions = copied.map_or(&[][..], |c| c.regions);
    // Lost or unknown in either list: refused before anything changes.
    for &region in recovered.iter().chain(copied_regions) {
        match next.placement(region).map(|p| p.state) {
            None => {
                return Err(RemapError::UnknownRegion {
                    region,
                    id: config.id,
                });
            }
            Some(RegionState::Lost) => {
                return Err(RemapError::RegionLost {
                    region,
                    id: config.id,
                });
            }
            Some(RegionState::Active | RegionState::Blocked) => {}
        }
    }
    let mut changed_count = 0;
    for placement in &mut next.regions {
        let region = placement.region;
        if recovered.contains(&region) && placement.state == RegionState::Blocked {
            placement.state = RegionState::Active;
            changed_count += 1;
        }
    }
    let mut completed = BTreeSet::new();
    if let Some(Copied { node, regions }) = copied {
        for placement in next
            .regions
            .iter_mut()
            .filter(|p| regions.contains(&p.region))
        {
            if placement.copying.contains(&node) {
                placement.copying.retain(|&backup| backup != node);
                completed.insert((placement.region, node));
                changed_count += 1;
            }
        }
    }
    if changed_count == 0 {
        return Err(match copied {
            Some(Copied { node, regions }) if recovered.is_empty() => RemapError::NothingCopying {
                node,
                regions: regions.to_vec(),
                id: config.id,
            },
            _ => RemapError::NothingBlocked {
                regions: recovered.to_vec(),
                id: config.id,
            },
        });
    }
    // Regions keep their backups, so `finish` finds none added: no copy.
    Ok(finish_completing(
        config,
        next,
        CopyFrom::NewPrimary,
        &completed,
    ))
}

/// Configuration c+1 after the processes of the memory nodes `nodes` restarted from their files
/// (a whole-cluster restart, docs/failures.md#whole-cluster-restart): their region copies and
/// logs are intact, but for the copies of `damaged`, and what they held in memory is gone: the
/// locks of the transactions in flight, which transactions they voted on, and which
/// truncations they applied. Members stay; primaries and backups stay but where a primary's
/// copy is damaged. Then, per region (not lost):
///
/// - one whose primary restarted becomes [`RegionState::Blocked`], as after a failure: its
///   primary holds the data but none of the locks, and serves again only once it has recovered
///   its transactions from its logs and reported them ([`activate`]); one blocked already stays
///   blocked;
/// - a backup that restarted goes back to `copying` (unless it is copying already): the
///   COMMIT-BACKUP records it had not applied yet are in its log, but which it applied is not
///   known, so its copy counts for nothing until data recovery has copied the region again from
///   its primary ([`copy_complete`]). Its copier thread starts once the region is active
///   (after the primary's recovery, when the primary's memory is current). The plan lists
///   these copies ([`Plan::copies`]), from the region's primary; the CM copies nothing itself.
/// - one whose primary's copy is damaged (`damaged`: its restarted node found that the copy
///   does not match the block sums it wrote when it stopped, and serves none of it) gets a
///   complete backup whose copy is not damaged as primary, chosen as after a failure (fewest
///   primaries, then oldest), and is blocked: the promoted backup holds every committed write
///   of the region, applied or in its log, as after its primary's failure. The damaged replica
///   stays, as a backup copying the region again (its node emptied its copy, so the copy is
///   taken whole). With no such backup the region is lost: no replica can vouch for its data,
///   and a damaged copy is never served.
///
/// A lost region stays lost: its last primary's files may hold its data, but bringing a lost
/// region back is not planned here. A region whose every replica restarted keeps its primary
/// if its copy is intact: its files hold every committed write, as its log holds the records it
/// has not applied.
///
/// Refused when `nodes` is empty ([`RemapError::NothingRestarted`]), names a node that is no
/// member ([`RemapError::NotAMember`]) or a client ([`RemapError::NotAMemoryNode`]), when
/// `damaged` names a copy that no restarted node holds ([`RemapError::DamagedNotHeld`]; a copy
/// of a lost region is left out), and when nothing would change
/// ([`RemapError::NothingToRestart`]).
pub fn restart(
    config: &Configuration,
    nodes: &[NodeId],
    damaged: &[(NodeId, RegionId)],
) -> Result<Plan, RemapError> {
    check(config)?;
    if nodes.is_empty() {
        return Err(RemapError::NothingRestarted { id: config.id });
    }
    for &node in nodes {
        if !is_member(config, node) {
            return Err(RemapError::NotAMember {
                node,
                id: config.id,
            });
        }
        if !config.nodes.contains(&node) {
            return Err(RemapError::NotAMemoryNode {
                node,
                id: config.id,
            });
        }
    }
    let restarted: BTreeSet<NodeId> = nodes.iter().copied().collect();
    let mut damaged_copies = BTreeSet::new();
    for &(node, region) in damaged {
        let held = config.placement(region).is_some_and(|p| {
            p.state == RegionState::Lost || p.replicas().any(|replica| replica == node)
        });
        if !restarted.contains(&node) || !held {
            return Err(RemapError::DamagedNotHeld {
                node,
                region,
                id: config.id,
            });
        }
        damaged_copies.insert((region, node));
    }
    let mut next = config.clone();
    next.id = next_id(config);
    let mut load = Load::of(&next);
    let mut again = BTreeSet::new();
    let mut changed_count = 0;
    for placement in &mut next.regions {
        if placement.state == RegionState::Lost {
            continue;
        }
        let region = placement.region;
        let is_damaged = |node: NodeId| damaged_copies.contains(&(region, node));
        if is_damaged(placement.primary) {
            changed_count += 1;
            let Some(demoted) = demote_damaged_primary(placement, &mut load, is_damaged) else {
                continue;
            };
            again.insert((region, demoted));
        } else if restarted.contains(&placement.primary) && placement.state == RegionState::Active {
            placement.state = RegionState::Blocked;
            changed_count += 1;
        }
        for &backup in &placement.backups {
            if restarted.contains(&backup) && !placement.copying.contains(&backup) {
                placement.copying.push(backup);
                again.insert((region, backup));
                changed_count += 1;
            }
        }
    }
    if changed_count == 0 {
        return Err(RemapError::NothingToRestart {
            nodes: restarted.into_iter().collect(),
            id: config.id,
        });
    }
    // The primaries stay, or a backup took over with the region blocked: a copy comes from the
    // region's primary in c+1.
    Ok(finish_checked(
        config,
        next,
        CopyFrom::NewPrimary,
        &Exceptions {
            completed: &BTreeSet::new(),
            copying_again: &again,
            damaged: &damaged_copies,
        },
    ))
}

/// Hands a region whose primary's copy is damaged to a complete backup whose copy is intact,
/// chosen as [`promote`] chooses (fewest primaries, then the oldest), and blocks it while that
/// backup recovers its transactions: it holds every committed write of the region, applied or in
/// its log, since a commit waits for every backup's COMMIT-BACKUP. The damaged replica stays, as
/// a backup copying the region again, and is returned. With no such backup the region is lost
/// (`None`): no replica can vouch for its data, and a damaged copy is never served.
fn demote_damaged_primary(
    placement: &mut Placement,
    load: &mut Load,
    is_damaged: impl Fn(NodeId) -> bool,
) -> Option<NodeId> {
    let chosen = placement
        .backups
        .iter()
        .enumerate()
        .filter(|(_, node)| !placement.copying.contains(node) && !is_damaged(**node))
        .min_by_key(|&(_, &node)| load.primaries(node));
    let Some((position, &primary)) = chosen else {
        lose(placement);
        return None;
    };
    let demoted = placement.primary;
    placement.backups.remove(position);
    placement.primary = primary;
    placement.backups.push(demoted);
    placement.copying.push(demoted);
    placement.state = RegionState::Blocked;
    *load.primary_count.entry(primary).or_default() += 1;
    if let Some(count) = load.primary_count.get_mut(&demoted) {
        *count = count.saturating_sub(1);
    }
    Some(demoted)
}

/// Configuration c+1 after `node`, running, reported that it holds a damaged copy of each of
/// `regions` that configuration c counts complete: it found the copies damaged at its restart
/// and holds them back (unreadable), and c was made without knowing (a CM acting on a
/// suspicion, or a new CM leader, before the restart request that names the damage reached it,
/// or that request refused). As at a restart ([`restart`]): a region whose primary's copy it
/// is goes to an intact complete backup and is blocked, or is lost; a backup's copy is copied
/// again (`copying`), so that no plan promotes it; nothing else changes. Regions of `regions`
/// of which `node` holds no complete copy in c (a configuration the report crossed), or that
/// are lost, are left out; refused when none is left ([`RemapError::NoDamagedCopy`]) or `node`
/// is no memory node of c.
pub fn damaged_copies(
    config: &Configuration,
    node: NodeId,
    regions: &[RegionId],
) -> Result<Plan, RemapError> {
    check(config)?;
    if !config.nodes.contains(&node) {
        return Err(RemapError::NotAMemoryNode {
            node,
            id: config.id,
        });
    }
    let reported: BTreeSet<RegionId> = regions.iter().copied().collect();
    let mut next = config.clone();
    next.id = next_id(config);
    let mut load = Load::of(&next);
    let mut again = BTreeSet::new();
    let mut damaged_copies = BTreeSet::new();
    for placement in &mut next.regions {
        let region = placement.region;
        let complete_here = placement.complete_replicas().any(|r| r == node);
        if !reported.contains(&region) || placement.state == RegionState::Lost || !complete_here {
            continue;
        }
        damaged_copies.insert((region, node));
        if placement.primary == node {
            if let Some(demoted) = demote_damaged_primary(placement, &mut load, |n| n == node) {
                again.insert((region, demoted));
            }
        } else {
            placement.copying.push(node);
            again.insert((region, node));
        }
    }
    if damaged_copies.is_empty() {
        return Err(RemapError::NoDamagedCopy {
            node,
            regions: reported.into_iter().collect(),
            id: config.id,
        });
    }
    Ok(finish_checked(
        config,
        next,
        CopyFrom::NewPrimary,
        &Exceptions {
            completed: &BTreeSet::new(),
            copying_again: &again,
            damaged: &damaged_copies,
        },
    ))
}

/// The changes from `before` to `after`, one per region of `after` that differs, in its order.
/// Every plan returns them; `acre cluster status` can compute them for any two configurations.
pub fn diff(before: &Configuration, after: &Configuration) -> Vec<RegionChange> {
    let placements = by_region(before);
    let mut changes = Vec::new();
    for placement in &after.regions {
        let old = placements.get(&placement.region).copied();
        if old == Some(placement) {
            continue;
        }
        let held = |p: &Placement| -> Vec<NodeId> {
            if p.state == RegionState::Lost {
                Vec::new()
            } else {
                p.replicas().collect()
            }
        };
        let held_before = old.map(held).unwrap_or_default();
        let held_after = held(placement);
        let promoted = match old {
            Some(old)
                if placement.state != RegionState::Lost
                    && old.state != RegionState::Lost
                    && old.primary != placement.primary =>
            {
                Some(Promotion {
                    from: old.primary,
                    to: placement.primary,
                })
            }
            _ => None,
        };
        let backups_missing_count = if placement.state == RegionState::Lost {
            0
        } else {
            after.f.saturating_sub(placement.backups.len())
        };
        changes.push(RegionChange {
            region: placement.region,
            created: old.is_none(),
            state_before: old.map(|p| p.state),
            state: placement.state,
            primary: placement.primary,
            promoted,
            dropped: held_before
                .iter()
                .copied()
                .filter(|node| !held_after.contains(node))
                .collect(),
            added: held_after
                .iter()
                .skip(1)
                .copied()
                .filter(|node| !held_before.contains(node))
                .collect(),
            copying_before: old.map(|p| p.copying.clone()).unwrap_or_default(),
            copying: placement.copying.clone(),
            backups_missing_count,
        });
    }
    changes
}

/// Replicas and primaries per memory node, counting regions that are not lost.
struct Load {
    primary_count: BTreeMap<NodeId, usize>,
    replica_count: BTreeMap<NodeId, usize>,
}

impl Load {
    fn of(config: &Configuration) -> Load {
        let mut load = Load {
            primary_count: BTreeMap::new(),
            replica_count: BTreeMap::new(),
        };
        for placement in config.regions.iter() {
            if placement.state == RegionState::Lost {
                continue;
            }
            *load.primary_count.entry(placement.primary).or_default() += 1;
            for node in placement.replicas() {
                *load.replica_count.entry(node).or_default() += 1;
            }
        }
        load
    }

    fn primaries(&self, node: NodeId) -> usize {
        self.primary_count.get(&node).copied().unwrap_or(0)
    }

    fn replicas(&self, node: NodeId) -> usize {
        self.replica_count.get(&node).copied().unwrap_or(0)
    }
}

/// Gives each region at `orphaned` (indexes into `config.regions`, whose primary is gone and
/// whose `backups` and `copying` are the survivors) one of its complete backups as primary and
/// blocks it.
fn promote(config: &mut Configuration, orphaned: &[usize]) {
    // Orphaned regions still name their departed primary, which counts it as load; that does
    // no harm, since a departed node is never a candidate.
    let mut load = Load::of(config);
    for &index in orphaned {
        let placement = &mut config.regions[index];
        // `min_by_key` keeps the first of equal keys: the oldest backup among the least loaded.
        // A copying backup is never a candidate: its copy may lack committed writes.
        let chosen = placement
            .backups
            .iter()
            .enumerate()
            .filter(|(_, node)| !placement.copying.contains(node))
            .min_by_key(|&(_, &node)| load.primaries(node));
        let Some((position, &primary)) = chosen else {
            panic!(
                "{} has no surviving complete backup to promote (backups {:?}, copying {:?}): it \
                 should be lost",
                placement.region, placement.backups, placement.copying
            );
        };
        placement.backups.remove(position);
        placement.primary = primary;
        placement.state = RegionState::Blocked;
        *load.primary_count.entry(primary).or_default() += 1;
    }
}

/// Makes `placement` lost: every complete replica of it is gone. It keeps its last primary and
/// drops its backups, copying ones included (`validate` does not check that a lost region has
/// none, so [`check`] refuses one in c and [`finish`] asserts there is none in c+1).
fn lose(placement: &mut Placement) {
    placement.state = RegionState::Lost;
    placement.backups.clear();
    placement.copying.clear();
}

/// Gives every region that is not lost new backups up to f where a memory node can take them
/// (module docs, "New backups"). They are copying, except in `created`, the region the plan
/// creates: it is empty, so an empty backup is a complete copy of it.
fn fill_backups(config: &mut Configuration, created: Option<RegionId>) {
    let mut load = Load::of(config);
    let domains: BTreeMap<NodeId, String> = config
        .nodes
        .iter()
        .map(|&node| (node, config.domain_of(node)))
        .collect();
    let nodes = config.nodes.clone();
    let f = config.f;
    for placement in config.regions.iter_mut() {
        if placement.state == RegionState::Lost {
            continue;
        }
        while placement.backups.len() < f {
            let share = |candidate: NodeId| {
                placement
                    .replicas()
                    .filter(|&node| domains[&node] == domains[&candidate])
                    .count()
            };
            let chosen = nodes
                .iter()
                .copied()
                .filter(|&node| !placement.replicas().any(|replica| replica == node))
                .min_by_key(|&node| (share(node), load.replicas(node), node));
            let Some(node) = chosen else {
                break; // Degraded: every node holds a replica already.
            };
            placement.backups.push(node);
            if created != Some(placement.region) {
                placement.copying.push(node);
            }
            *load.replica_count.entry(node).or_default() += 1;
        }
    }
}

/// `config` with id + 1 and the nodes in `gone` out of its membership (not yet of its regions).
fn without(config: &Configuration, gone: &BTreeSet<NodeId>) -> Configuration {
    let mut next = config.clone();
    next.id = next_id(config);
    next.nodes.retain(|node| !gone.contains(node));
    next.clients.retain(|node| !gone.contains(node));
    next.domains.retain(|d| !gone.contains(&d.node));
    if next.cm_leader.is_some_and(|leader| gone.contains(&leader)) {
        next.cm_leader = None;
    }
    next
}

fn is_member(config: &Configuration, node: NodeId) -> bool {
    config.members().any(|member| member == node)
}

/// Refuses a configuration no plan should follow: an invalid one, or one with a lost region
/// that lists backups, which `validate` lets through but a plan would carry into c+1 (where
/// [`finish`] asserts there is none).
fn check(config: &Configuration) -> Result<(), RemapError> {
    config.validate().map_err(|source| RemapError::Invalid {
        id: config.id,
        source,
    })?;
    let lost_with_backups = config
        .regions
        .iter()
        .find(|p| p.state == RegionState::Lost && !p.backups.is_empty());
    if let Some(placement) = lost_with_backups {
        return Err(RemapError::LostWithBackups {
            id: config.id,
            region: placement.region,
        });
    }
    Ok(())
}

fn next_id(config: &Configuration) -> u64 {
    config
        .id
        .checked_add(1)
        .unwrap_or_else(|| panic!("configuration id {} cannot grow", config.id))
}

fn by_region(config: &Configuration) -> BTreeMap<RegionId, &Placement> {
    config.regions.iter().map(|p| (p.region, p)).collect()
}

/// Which primary a plan's copies come from.
#[derive(Clone, Copy)]
enum CopyFrom {
    /// The region's primary in c+1 (after a failure, c's may be gone).
    NewPrimary,
    /// The region's primary in c (a graceful removal: still live, and current).
    OldPrimary,
}

/// Checks the plan's invariants (a failure is a bug here, not in the input) and adds its changes
/// and copies.
fn finish(before: &Configuration, next: Configuration, copy_from: CopyFrom) -> Plan {
    finish_completing(before, next, copy_from, &BTreeSet::new())
}

/// [`finish`] for a plan that completes the copies `completed` (region, backup): the only
/// backups it may take out of `copying` ([`copy_complete`]).
fn finish_completing(
    before: &Configuration,
    next: Configuration,
    copy_from: CopyFrom,
    completed: &BTreeSet<(RegionId, NodeId)>,
) -> Plan {
    let exceptions = Exceptions {
        completed,
        copying_again: &BTreeSet::new(),
        damaged: &BTreeSet::new(),
    };
    finish_checked(before, next, copy_from, &exceptions)
}

/// The (region, backup) pairs a plan may move in or out of `copying` although the backup stays:
/// the rules otherwise forbid both.
struct Exceptions<'a> {
    /// Copies data recovery reported complete ([`copy_complete`]): out of `copying`.
    completed: &'a BTreeSet<(RegionId, NodeId)>,
    /// Restarted backups ([`restart`]): into `copying`, to copy their region again.
    copying_again: &'a BTreeSet<(RegionId, NodeId)>,
    /// Copies a restarted node found damaged ([`restart`]): no longer complete replicas, so a
    /// region may be lost although they live.
    damaged: &'a BTreeSet<(RegionId, NodeId)>,
}

/// [`finish`] with the exceptions to the copying rule that the plan makes.
fn finish_checked(
    before: &Configuration,
    next: Configuration,
    copy_from: CopyFrom,
    exceptions: &Exceptions<'_>,
) -> Plan {
    assert!(
        next.id == before.id + 1,
        "next id={} before id={}",
        next.id,
        before.id
    );
    if let Err(error) = next.validate() {
        panic!("planned configuration {} is invalid: {error}", next.id);
    }
    let placements = by_region(before);
    for placement in &next.regions {
        let region = placement.region;
        if placement.state == RegionState::Lost {
            // `validate` lets a lost region through with backups; nothing here makes one.
            assert!(
                placement.backups.is_empty(),
                "{region} is lost with backups {:?}",
                placement.backups
            );
            assert!(
                placement.copying.is_empty(),
                "{region} is lost with copying {:?}",
                placement.copying
            );
        }
        let Some(old) = placements.get(&region) else {
            assert!(
                placement.copying.is_empty(),
                "new {region} is empty, yet copying {:?}",
                placement.copying
            );
            continue;
        };
        check_region(before, old, &next, placement, exceptions);
    }
    let changes = diff(before, &next);
    let mut copies = Vec::new();
    for change in changes.iter().filter(|change| !change.created) {
        let from = match copy_from {
            CopyFrom::NewPrimary => change.primary,
            CopyFrom::OldPrimary => placements[&change.region].primary,
        };
        let to = change.added.iter().copied().chain(change.copying_again());
        copies.extend(to.map(|to| DataCopy {
            region: change.region,
            from,
            to,
        }));
    }
    Plan {
        config: next,
        changes,
        copies,
    }
}

/// The rules between a region `old` of `before` and the same region `placement` of `next`
/// (module docs, "Rules"); only failed or removed nodes leave `nodes` in a plan, only the
/// copies of `exceptions.completed` complete, and only the backups of
/// `exceptions.copying_again` copy again.
fn check_region(
    before: &Configuration,
    old: &Placement,
    next: &Configuration,
    placement: &Placement,
    exceptions: &Exceptions<'_>,
) {
    let region = placement.region;
    let lost = placement.state == RegionState::Lost;
    if old.state == RegionState::Lost {
        assert!(lost, "{region} came back from lost");
        return;
    }
    let live = |node: &NodeId| next.nodes.contains(node);
    let intact = |node: &NodeId| !exceptions.damaged.contains(&(region, *node));
    if lost {
        // Lost only when every complete replica left or was found damaged. The converse
        // follows from the primary check below and `validate`: a region that is not lost has a
        // member as primary.
        let survivor = old.complete_replicas().filter(intact).find(live);
        assert!(
            survivor.is_none(),
            "{region} is lost, yet its complete replica {survivor:?} is live"
        );
        return;
    }
    // Surviving data is never dropped: the primary held a complete copy in c, and every live
    // replica of c stays one.
    assert!(
        old.complete_replicas()
            .filter(intact)
            .any(|node| node == placement.primary),
        "{region}: primary {} held no complete copy in configuration {}",
        placement.primary,
        before.id
    );
    for node in old.replicas().filter(live) {
        assert!(
            placement.replicas().any(|replica| replica == node),
            "{region} dropped its live replica {node}"
        );
    }
    // A plan marks every new backup copying and never completes a copy or undoes one, except
    // the copies data recovery reported complete and the restarted backups that copy again.
    for node in &placement.backups {
        let new = !old.replicas().any(|replica| replica == *node);
        let key = (region, *node);
        let copying = new
            || exceptions.copying_again.contains(&key)
            || (old.copying.contains(node) && !exceptions.completed.contains(&key));
        assert_eq!(
            placement.copying.contains(node),
            copying,
            "{region}: backup {node} new={new}, copying in c {:?}, in c+1 {:?}",
            old.copying,
            placement.copying
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use acre_txn::config::FailureDomain;

    fn n(id: u16) -> NodeId {
        NodeId(id)
    }

    fn nodes(count: u16) -> Vec<NodeId> {
        (1..=count).map(NodeId).collect()
    }

    fn failed(ids: &[u16]) -> BTreeSet<NodeId> {
        ids.iter().copied().map(NodeId).collect()
    }

    /// `count` nodes with `per_node` regions each: region k has its primary on node k (mod
    /// count) and its backups on the next f nodes.
    fn cluster(count: u16, per_node: usize, f: usize) -> Configuration {
        Configuration::place(7, nodes(count), vec![n(100)], per_node, f, 1 << 20, 4096).unwrap()
    }

    fn placement(config: &Configuration, region: u32) -> &Placement {
        config.placement(RegionId(region)).unwrap()
    }

    fn change(plan: &Plan, region: u32) -> &RegionChange {
        let found = plan.changes.iter().find(|c| c.region == RegionId(region));
        found.unwrap_or_else(|| panic!("r{region} did not change: {:?}", plan.changes))
    }

    // FaRM SOSP'15 §5.2: a backup of a region whose primary failed becomes its primary, and
    // the region gets a new backup to stay at f+1 copies.
    #[test]
    fn a_failed_primary_is_replaced_by_a_backup_and_the_region_blocks() {
        let config = cluster(4, 1, 1);
        // r1: n1 [n2]; r2: n2 [n3]; r3: n3 [n4]; r4: n4 [n1].
        let plan = after_failure(&config, &failed(&[1])).unwrap();
        let next = &plan.config;
        assert_eq!(next.id, 8);
        assert_eq!(next.nodes, vec![n(2), n(3), n(4)]);
        let r1 = placement(next, 1);
        assert_eq!((r1.primary, r1.state), (n(2), RegionState::Blocked));
        // n3 and n4 each hold two replicas and n3 is in a domain r1 does not use: the lower
        // id wins the tie. It has no copy of r1 yet.
        assert_eq!(r1.backups, vec![n(3)]);
        assert_eq!(r1.copying, vec![n(3)]);
        let r4 = placement(next, 4);
        assert_eq!((r4.primary, r4.state), (n(4), RegionState::Active));
        // n2 now holds r1 and r2 and n3 holds r1, r2 and r3: n2 is the less loaded.
        assert_eq!(r4.backups, vec![n(2)]);
        assert_eq!(r4.copying, vec![n(2)]);
        assert_eq!(placement(next, 2), placement(&config, 2));
        assert_eq!(placement(next, 3), placement(&config, 3));

        assert_eq!(plan.changes.len(), 2);
        let c1 = change(&plan, 1);
        assert_eq!(
            c1.promoted,
            Some(Promotion {
                from: n(1),
                to: n(2)
            })
        );
        assert_eq!(
            (c1.dropped.clone(), c1.added.clone()),
            (vec![n(1)], vec![n(3)])
        );
        let c4 = change(&plan, 4);
        assert_eq!((c4.promoted, c4.state), (None, RegionState::Active));
        let copies: Vec<DataCopy> = plan.copies.clone();
        assert_eq!(
            copies,
            vec![
                DataCopy {
                    region: RegionId(1),
                    from: n(2),
                    to: n(3)
                },
                DataCopy {
                    region: RegionId(4),
                    from: n(4),
                    to: n(2)
                },
            ]
        );
        assert_eq!(
            c1.to_string(),
            "r1: primary n1 -> n2 (promoted), dropped n1, new backups n3 (copying), blocked"
        );
    }

    #[test]
    fn promotions_spread_over_the_survivors_with_the_fewest_primaries() {
        // Regions 1 and 4 have their primary on n1 and backups [n2, n3].
        let config = cluster(3, 2, 2);
        let plan = after_failure(&config, &failed(&[1])).unwrap();
        let next = &plan.config;
        // n2 and n3 each had two primaries: the first orphan goes to the older backup, the
        // second to the node that then has fewer.
        assert_eq!(placement(next, 1).primary, n(2));
        assert_eq!(placement(next, 4).primary, n(3));
        for region in [1, 4] {
            let placement = placement(next, region);
            assert_eq!(placement.state, RegionState::Blocked);
            // Two nodes left: one backup only, degraded.
            assert_eq!(placement.backups.len(), 1);
            assert_eq!(change(&plan, region).backups_missing_count, 1);
        }
        assert_eq!(next.primary_regions(n(2)).count(), 3);
        assert_eq!(next.primary_regions(n(3)).count(), 3);
    }

    #[test]
    fn a_blocked_region_stays_blocked_and_promotes_again() {
        let config = cluster(3, 1, 2);
        // r1: n1 [n2, n3].
        let once = after_failure(&config, &failed(&[1])).unwrap().config;
        let r1 = placement(&once, 1);
        assert_eq!((r1.primary, r1.state), (n(2), RegionState::Blocked));
        assert_eq!(r1.backups, vec![n(3)]);
        let twice = after_failure(&once, &failed(&[2])).unwrap().config;
        let r1 = placement(&twice, 1);
        assert_eq!((r1.primary, r1.state), (n(3), RegionState::Blocked));
        assert!(r1.backups.is_empty());
        // A blocked region whose every replica fails is lost, naming the promoted primary.
        let once = after_failure(&cluster(4, 1, 1), &failed(&[1]))
            .unwrap()
            .config;
        assert_eq!(
            placement(&once, 1).replicas().collect::<Vec<_>>(),
            [n(2), n(3)]
        );
        let lost = after_failure(&once, &failed(&[2, 3])).unwrap().config;
        let r1 = placement(&lost, 1);
        assert_eq!((r1.primary, r1.state), (n(2), RegionState::Lost));
        // A blocked region whose primary survives stays blocked: only recovery unblocks it.
        let mut blocked = cluster(4, 1, 1);
        blocked.regions[0].state = RegionState::Blocked;
        let next = after_failure(&blocked, &failed(&[2])).unwrap().config;
        let r1 = placement(&next, 1);
        assert_eq!((r1.primary, r1.state), (n(1), RegionState::Blocked));
    }

    // docs/failures.md#transaction-recovery: a new primary that took the locks of the
    // transactions in flight again reports its regions recovered, and the CM makes them active.
    #[test]
    fn recovered_regions_become_active_and_nothing_else_changes() {
        let config = cluster(4, 1, 1);
        // r1: n1 [n2]; r2: n2 [n3]; r3: n3 [n4]; r4: n4 [n1]. n1 and n3 fail: r1 and r3 are
        // blocked at n2 and n4, with new copying backups.
        let blocked = after_failure(&config, &failed(&[1, 3])).unwrap().config;
        assert_eq!(placement(&blocked, 1).state, RegionState::Blocked);
        assert_eq!(placement(&blocked, 3).state, RegionState::Blocked);

        // r2 is active already (a report that crossed another activation): skipped.
        let plan = activate(&blocked, &[RegionId(1), RegionId(2)]).unwrap();
        assert_eq!(plan.config.id, blocked.id + 1);
        let mut expected = blocked.clone();
        expected.id += 1;
        expected.regions[0].state = RegionState::Active;
        assert_eq!(
            plan.config, expected,
            "r1 active, everything else as it was"
        );
        assert!(plan.copies.is_empty());
        assert_eq!(plan.changes.len(), 1);
        let c1 = change(&plan, 1);
        assert_eq!(
            (c1.state_before, c1.state, c1.promoted),
            (Some(RegionState::Blocked), RegionState::Active, None)
        );
        assert!(c1.added.is_empty() && c1.dropped.is_empty(), "{c1:?}");
        let copying = placement(&blocked, 1).copying.clone();
        assert_eq!(
            c1.to_string(),
            format!(
                "r1: active again (its transactions are recovered), {} still copying",
                list(&copying)
            )
        );

        // Both at once, in any order.
        let both = activate(&blocked, &[RegionId(3), RegionId(1)]).unwrap();
        assert!(both.config.regions.iter().all(|p| p.state.is_active()));
        let lines: Vec<String> = both.changes.iter().map(|c| c.region.to_string()).collect();
        assert_eq!(lines, ["r1", "r3"]);

        // Nothing blocked among them: nothing to install.
        let error = activate(&plan.config, &[RegionId(1), RegionId(2)]).unwrap_err();
        assert!(
            matches!(&error, RemapError::NothingBlocked { regions, id }
                if *regions == [RegionId(1), RegionId(2)] && *id == blocked.id + 1),
            "{error}"
        );
        assert!(activate(&blocked, &[]).is_err(), "nothing listed");
        let error = activate(&blocked, &[RegionId(1), RegionId(9)]).unwrap_err();
        assert!(
            matches!(error, RemapError::UnknownRegion { region: RegionId(9), id } if id == blocked.id),
            "{error}"
        );
        assert!(error.to_string().contains("r9"), "{error}");

        // A lost region has nothing to recover: refused, naming it.
        let lost = after_failure(&blocked, &failed(&[2])).unwrap().config;
        let (lost_region, still_blocked): (Vec<_>, Vec<_>) = lost
            .regions
            .iter()
            .filter(|p| !p.state.is_active())
            .partition(|p| p.state == RegionState::Lost);
        assert!(
            !lost_region.is_empty() && !still_blocked.is_empty(),
            "{lost:?}"
        );
        let region = lost_region[0].region;
        let error = activate(&lost, &[still_blocked[0].region, region]).unwrap_err();
        assert!(
            matches!(error, RemapError::RegionLost { region: r, .. } if r == region),
            "{error}"
        );
        assert!(error.to_string().contains("stays lost"), "{error}");
    }

    // docs/failures.md#data-recovery: a new backup whose copy is filled reports it, and the CM
    // counts it complete: out of `copying`, promotable from then on.
    #[test]
    fn a_completed_copy_leaves_copying_and_nothing_else_changes() {
        let config = cluster(4, 1, 1);
        // n1 fails: r1 is blocked at n2 and r4 (n4 [n1]) lost its backup; both get copying
        // backups.
        let blocked = after_failure(&config, &failed(&[1])).unwrap().config;
        let copiers: Vec<(u32, NodeId)> = blocked
            .regions
            .iter()
            .flat_map(|p| p.copying.iter().map(|&node| (p.region.0, node)))
            .collect();
        assert_eq!(copiers.len(), 2, "{copiers:?}");
        let (region, node) = copiers[0];
        let other_region = copiers[1].0;

        // Where the other region copies to another node, it is skipped; where it copies to
        // `node` too, both complete.
        let plan =
            copy_complete(&blocked, node, &[RegionId(region), RegionId(other_region)]).unwrap();
        let mut expected = blocked.clone();
        expected.id += 1;
        for placement in &mut expected.regions {
            if [region, other_region].contains(&placement.region.0) {
                placement.copying.retain(|&backup| backup != node);
            }
        }
        assert_eq!(plan.config, expected, "only {node}'s copies complete");
        assert!(plan.copies.is_empty());
        let c = change(&plan, region);
        assert_eq!(c.copied().collect::<Vec<_>>(), [node]);
        assert_eq!(
            (c.state_before, c.state),
            (Some(RegionState::Blocked), RegionState::Blocked),
            "a completed copy does not unblock"
        );
        let line = c.to_string();
        assert!(
            line.ends_with(&format!("copy complete on {node}, blocked")),
            "{line}"
        );
        assert!(line.starts_with(&format!("r{region}: primary ")), "{line}");

        // Done already: nothing to install.
        let error = copy_complete(&plan.config, node, &[RegionId(region)]).unwrap_err();
        assert!(
            matches!(&error, RemapError::NothingCopying { node: who, regions, id }
                if *who == node && *regions == [RegionId(region)] && *id == blocked.id + 1),
            "{error}"
        );
        assert!(error.to_string().contains("install nothing"), "{error}");
        // A node that is no backup of the region: nothing either.
        let primary = placement(&blocked, region).primary;
        assert!(matches!(
            copy_complete(&blocked, primary, &[RegionId(region)]),
            Err(RemapError::NothingCopying { .. })
        ));
        assert!(
            copy_complete(&blocked, node, &[]).is_err(),
            "nothing listed"
        );
        let error = copy_complete(&blocked, node, &[RegionId(region), RegionId(9)]).unwrap_err();
        assert!(
            matches!(error, RemapError::UnknownRegion { region: RegionId(9), id } if id == blocked.id),
            "{error}"
        );

        // The copy complete and r1 recovered in one configuration: one change line for r1 when
        // it is the region copied.
        let both = after_recovery(
            &blocked,
            &[RegionId(1)],
            Some(Copied {
                node,
                regions: &[RegionId(region)],
            }),
        )
        .unwrap();
        assert_eq!(placement(&both.config, 1).state, RegionState::Active);
        assert!(!placement(&both.config, region).copying.contains(&node));
        if region == 1 {
            assert_eq!(both.changes.len(), 1);
            assert_eq!(
                both.changes[0].to_string(),
                format!(
                    "r1: active again (its transactions are recovered), copy complete on {node}"
                )
            );
        }
        // Neither does anything: the recovery's refusal names the recovered regions.
        let error = after_recovery(
            &both.config,
            &[RegionId(1)],
            Some(Copied {
                node,
                regions: &[RegionId(region)],
            }),
        )
        .unwrap_err();
        assert!(
            matches!(error, RemapError::NothingBlocked { .. }),
            "{error}"
        );

        // A complete backup can be promoted: its primary fails and it takes over.
        let primary = placement(&plan.config, region).primary;
        let promoted = after_failure(&plan.config, &failed(&[primary.0])).unwrap();
        assert_eq!(placement(&promoted.config, region).primary, node);

        // A lost region has no copy to complete: refused, naming it.
        let lost = after_failure(&blocked, &failed(&[2])).unwrap().config;
        let lost_region = lost
            .regions
            .iter()
            .find(|p| p.state == RegionState::Lost)
            .expect("r1 lost with n1 and n2")
            .region;
        let error = copy_complete(&lost, node, &[lost_region]).unwrap_err();
        assert!(
            matches!(error, RemapError::RegionLost { region: r, .. } if r == lost_region),
            "{error}"
        );
    }

    #[test]
    fn a_region_whose_every_replica_failed_is_lost_and_stays_lost() {
        let config = cluster(4, 1, 1);
        // r1: n1 [n2] loses both; r2: n2 [n3] and r4: n4 [n1] keep one.
        let plan = after_failure(&config, &failed(&[1, 2])).unwrap();
        let r1 = placement(&plan.config, 1);
        assert_eq!(r1.state, RegionState::Lost);
        assert_eq!((r1.primary, r1.backups.len()), (n(1), 0));
        let c1 = change(&plan, 1);
        assert!(c1.is_lost());
        assert_eq!(c1.dropped, vec![n(1), n(2)]);
        assert!(plan.copies.iter().all(|copy| copy.region != RegionId(1)));
        assert_eq!(
            c1.to_string(),
            "r1: lost (last primary n1; every complete replica gone: n1 n2)"
        );
        assert_eq!(placement(&plan.config, 2).primary, n(3));
        assert_eq!(placement(&plan.config, 4).primary, n(4));

        let next = after_failure(&plan.config, &failed(&[3])).unwrap();
        assert_eq!(placement(&next.config, 1), r1);
        assert!(next.changes.iter().all(|c| c.region != RegionId(1)));
        // r2 (n3 [n4]) is lost too: n4 joined it in the first plan and its copy is incomplete.
        let r2 = placement(&next.config, 2);
        assert_eq!((r2.primary, r2.state), (n(3), RegionState::Lost));
        // n4 is the only node left, primary of every region that is not lost: r3 and r4.
        assert_eq!(next.config.primary_regions(n(4)).count(), 2);
        let error = after_failure(&next.config, &failed(&[4])).unwrap_err();
        assert!(
            matches!(error, RemapError::EveryNodeFailed { id: 9 }),
            "{error}"
        );
    }

    fn with_domains(mut config: Configuration, domains: &[(u16, &str)]) -> Configuration {
        config.domains = domains
            .iter()
            .map(|&(node, domain)| FailureDomain {
                node: n(node),
                domain: domain.to_string(),
            })
            .collect();
        config.validate().unwrap();
        config
    }

    #[test]
    fn new_backups_go_to_failure_domains_the_region_does_not_use() {
        // Racks a: n1 n2 n3, b: n4, c: n5 n6. r1: n1 [n2, n3] uses only rack a.
        let config = with_domains(
            cluster(6, 1, 2),
            &[(1, "a"), (2, "a"), (3, "a"), (4, "b"), (5, "c"), (6, "c")],
        );
        let next = after_failure(&config, &failed(&[2, 3])).unwrap().config;
        let r1 = placement(&next, 1);
        assert_eq!(r1.primary, n(1));
        // One in b and one in c, not two in c although n5 and n6 are both free of r1.
        let racks: BTreeSet<String> = r1.backups.iter().map(|&b| next.domain_of(b)).collect();
        assert_eq!(racks, BTreeSet::from(["b".to_string(), "c".to_string()]));
    }

    #[test]
    fn a_degraded_region_gets_its_backups_back_from_a_new_node() {
        let config = cluster(3, 1, 2);
        let degraded = after_failure(&config, &failed(&[3])).unwrap().config;
        assert!(degraded.regions.iter().all(|p| p.backups.len() == 1));
        let plan = add_node(&degraded, n(3), Some("rack-z".into())).unwrap();
        let next = &plan.config;
        assert_eq!(next.nodes, nodes(3));
        assert_eq!(next.domain_of(n(3)), "rack-z");
        assert!(next.regions.iter().all(|p| p.backups.len() == 2));
        // The new node receives one copy of every region, the lost copies of n3.
        assert_eq!(plan.changes.len(), 3);
        assert!(plan.copies.iter().all(|copy| copy.to == n(3)));
        assert_eq!(plan.copies.len(), 3);
        // Nothing to receive: a new node in a full cluster gets nothing (no rebalancing yet).
        let plan = add_node(next, n(4), None).unwrap();
        assert!(plan.changes.is_empty());
        assert_eq!(plan.config.id, next.id + 1);
    }

    #[test]
    fn membership_leaves_with_the_failed_nodes_but_the_raft_group_does_not() {
        let mut config = with_domains(cluster(3, 1, 1), &[(1, "a"), (2, "b")]);
        config.cm_replicas = nodes(3);
        config.cm_leader = Some(n(1));
        let next = after_failure(&config, &failed(&[1, 100])).unwrap().config;
        assert!(next.clients.is_empty());
        assert_eq!(next.domains.len(), 1);
        assert_eq!(next.cm_replicas, nodes(3));
        assert_eq!(next.cm_leader, None);
        let next = after_failure(&next, &failed(&[3])).unwrap().config;
        assert_eq!(next.cm_leader, None);
        config.cm_leader = Some(n(2));
        let next = after_failure(&config, &failed(&[1])).unwrap().config;
        assert_eq!(next.cm_leader, Some(n(2)));
    }

    #[test]
    fn impossible_changes_are_refused_with_what_to_do() {
        let config = cluster(3, 1, 1);
        let error = after_failure(&config, &BTreeSet::new()).unwrap_err();
        assert!(
            matches!(error, RemapError::NothingFailed { id: 7 }),
            "{error}"
        );
        let error = after_failure(&config, &failed(&[1, 9])).unwrap_err();
        assert!(
            matches!(
                error,
                RemapError::NotAMember {
                    node: NodeId(9),
                    id: 7
                }
            ),
            "{error}"
        );
        let error = after_failure(&config, &failed(&[1, 2, 3])).unwrap_err();
        assert!(error.to_string().contains("restart nodes"), "{error}");
        let error = add_node(&config, n(2), None).unwrap_err();
        assert!(matches!(error, RemapError::AlreadyMember { .. }), "{error}");
        let error = add_node(&config, n(100), None).unwrap_err();
        assert!(matches!(error, RemapError::AlreadyMember { .. }), "{error}");
        let error = add_node(&config, NodeId::OBSERVER, None).unwrap_err();
        assert!(matches!(error, RemapError::ObserverId { .. }), "{error}");
        let error = remove_node(&config, n(9)).unwrap_err();
        assert!(matches!(error, RemapError::NotAMember { .. }), "{error}");

        let mut invalid = config.clone();
        invalid.regions[0].backups = vec![invalid.regions[0].primary];
        let error = after_failure(&invalid, &failed(&[1])).unwrap_err();
        assert!(
            matches!(error, RemapError::Invalid { id: 7, .. }),
            "{error}"
        );
        assert!(add_region(&invalid).is_err());
        // `validate` lets a lost region with backups through; a plan, which would carry it
        // into the next configuration, does not.
        let mut lost = config.clone();
        lost.regions[0].state = RegionState::Lost;
        lost.validate().unwrap();
        let error = add_node(&lost, n(4), None).unwrap_err();
        assert!(
            matches!(
                error,
                RemapError::LostWithBackups {
                    id: 7,
                    region: RegionId(1)
                }
            ),
            "{error}"
        );

        // f = 0: every region has one replica, which a graceful removal cannot take away.
        let single = Configuration::place(1, nodes(2), vec![], 2, 0, 1 << 20, 4096).unwrap();
        let error = remove_node(&single, n(1)).unwrap_err();
        assert!(
            matches!(&error, RemapError::LastReplica { node: NodeId(1), regions }
                if *regions == [RegionId(1), RegionId(3)]),
            "{error}"
        );
        assert!(error.to_string().contains("r1 r3"), "{error}");
        let mut alone = Configuration::place(1, nodes(1), vec![], 1, 0, 1 << 20, 4096).unwrap();
        alone.regions[0].state = RegionState::Lost;
        let error = remove_node(&alone, n(1)).unwrap_err();
        assert!(matches!(error, RemapError::LastNode { .. }), "{error}");
    }

    #[test]
    fn a_graceful_removal_moves_every_replica_first() {
        let mut config = cluster(4, 1, 1);
        config.cm_leader = Some(n(2));
        // r1: n1 [n2]; r2: n2 [n3]; r3: n3 [n4]; r4: n4 [n1].
        let plan = remove_node(&config, n(2)).unwrap();
        let next = &plan.config;
        assert_eq!(next.nodes, vec![n(1), n(3), n(4)]);
        assert_eq!(next.cm_leader, None);
        assert!(next.replicated_on(n(2)).next().is_none());
        let r2 = placement(next, 2);
        assert_eq!((r2.primary, r2.state), (n(3), RegionState::Blocked));
        let r1 = placement(next, 1);
        assert_eq!((r1.primary, r1.state), (n(1), RegionState::Active));
        let copies: Vec<String> = plan.copies.iter().map(|c| c.to_string()).collect();
        assert_eq!(copies, ["copy r1 from n1 to n3", "copy r2 from n2 to n1"]);
        assert!(next.regions.iter().all(|p| p.backups.len() == 1));
        // Copied before c+1 or not, a new backup is complete only once data recovery says so.
        assert_eq!(
            (r1.copying.clone(), r2.copying.clone()),
            (vec![n(3)], vec![n(1)])
        );

        // A client leaves without moving anything.
        let plan = remove_node(&config, n(100)).unwrap();
        assert!(plan.config.clients.is_empty());
        assert!(plan.changes.is_empty());
    }

    // docs/failures.md#whole-cluster-restart: a restarted primary holds its data but none of
    // the locks of the transactions in flight, and a restarted backup does not know which
    // COMMIT-BACKUP records it applied.
    #[test]
    fn a_restarted_primary_blocks_its_region_and_a_restarted_backup_copies_again() {
        let config = cluster(4, 1, 1);
        // r1: n1 [n2]; r2: n2 [n3]; r3: n3 [n4]; r4: n4 [n1]. n1 restarted.
        let plan = restart(&config, &[n(1)], &[]).unwrap();
        let mut expected = config.clone();
        expected.id += 1;
        expected.regions[0].state = RegionState::Blocked;
        expected.regions[3].copying = vec![n(1)];
        assert_eq!(plan.config, expected, "nothing moves, nobody leaves");
        assert_eq!(plan.changes.len(), 2, "{:?}", plan.changes);
        assert_eq!(change(&plan, 1).to_string(), "r1: primary n1, blocked");
        assert_eq!(
            change(&plan, 4).to_string(),
            "r4: primary n4, n1 copying again (restarted)"
        );
        assert_eq!(change(&plan, 4).copying_again().collect::<Vec<_>>(), [n(1)]);
        assert_eq!(
            plan.copies,
            [DataCopy {
                region: RegionId(4),
                from: n(4),
                to: n(1)
            }]
        );

        // Its recovery unblocks r1 with its primary unchanged; n1's copy of r4 completes later.
        let recovered = activate(&plan.config, &[RegionId(1)]).unwrap();
        assert_eq!(placement(&recovered.config, 1).state, RegionState::Active);
        assert_eq!(placement(&recovered.config, 1).primary, n(1));
        assert_eq!(placement(&recovered.config, 4).copying, [n(1)]);
        let copied = copy_complete(&recovered.config, n(1), &[RegionId(4)]).unwrap();
        assert_eq!(
            copied.config.regions, config.regions,
            "as before the restart"
        );
    }

    #[test]
    fn a_whole_cluster_restart_blocks_every_region_and_every_backup_copies_again() {
        let config = cluster(4, 2, 2);
        let plan = restart(&config, &nodes(4), &[]).unwrap();
        assert_eq!(plan.config.nodes, config.nodes);
        assert_eq!(plan.config.clients, config.clients);
        for (before, after) in config.regions.iter().zip(&plan.config.regions) {
            assert_eq!(
                (after.primary, &after.backups),
                (before.primary, &before.backups)
            );
            assert_eq!(after.state, RegionState::Blocked, "{after:?}");
            assert_eq!(after.copying, after.backups, "{after:?}");
        }
        assert_eq!(plan.changes.len(), config.regions.len());
        assert_eq!(plan.copies.len(), config.regions.len() * 2);
        assert!(
            plan.copies
                .iter()
                .all(|copy| copy.from == placement(&config, copy.region.0).primary),
            "{:?}",
            plan.copies
        );
        // Every backup copies again, but every region keeps a complete replica: its primary.
        for placement in &plan.config.regions {
            assert_eq!(
                placement.complete_replicas().collect::<Vec<_>>(),
                [placement.primary]
            );
        }
    }

    #[test]
    fn a_restart_leaves_lost_regions_lost_and_blocked_regions_blocked() {
        let config = cluster(4, 1, 1);
        // n1 and n2 fail: r1 is lost; r2 is blocked at n3 with n4 copying; r4 keeps n4 with n3
        // copying; r3 (n3 [n4]) is untouched.
        let failed = after_failure(&config, &failed(&[1, 2])).unwrap().config;
        assert_eq!(placement(&failed, 1).state, RegionState::Lost);
        assert_eq!(placement(&failed, 2).state, RegionState::Blocked);
        let plan = restart(&failed, &[n(3), n(4)], &[]).unwrap();
        assert_eq!(
            placement(&plan.config, 1),
            placement(&failed, 1),
            "still lost"
        );
        assert_eq!(
            placement(&plan.config, 2),
            placement(&failed, 2),
            "still blocked"
        );
        let r3 = placement(&plan.config, 3);
        assert_eq!((r3.primary, r3.state), (n(3), RegionState::Blocked));
        assert_eq!(r3.copying, [n(4)]);
        let r4 = placement(&plan.config, 4);
        assert_eq!((r4.primary, r4.state), (n(4), RegionState::Blocked));
        assert_eq!(r4.copying, [n(3)], "copying already: not listed twice");
        let changed: Vec<RegionId> = plan.changes.iter().map(|c| c.region).collect();
        assert_eq!(changed, [RegionId(3), RegionId(4)]);
        assert_eq!(
            plan.copies,
            [DataCopy {
                region: RegionId(3),
                from: n(3),
                to: n(4)
            }]
        );
    }

    #[test]
    fn a_restart_of_nobody_of_a_stranger_or_of_nothing_to_change_is_refused() {
        let config = cluster(4, 1, 1);
        let error = restart(&config, &[], &[]).unwrap_err();
        assert!(
            matches!(error, RemapError::NothingRestarted { id: 7 }),
            "{error}"
        );
        let error = restart(&config, &[n(1), n(9)], &[]).unwrap_err();
        assert!(
            matches!(error, RemapError::NotAMember { node, id: 7 } if node == n(9)),
            "{error}"
        );
        let error = restart(&config, &[n(100)], &[]).unwrap_err();
        assert!(
            matches!(error, RemapError::NotAMemoryNode { node, id: 7 } if node == n(100)),
            "{error}"
        );
        // Once restarted, n1's region is blocked and its backup copying: again is nothing.
        let restarted = restart(&config, &[n(1)], &[]).unwrap().config;
        let error = restart(&restarted, &[n(1), n(1)], &[]).unwrap_err();
        assert!(
            matches!(&error, RemapError::NothingToRestart { nodes, id: 8 } if nodes == &[n(1)]),
            "{error}"
        );
        assert!(error.to_string().contains("install nothing"), "{error}");
    }

    // docs/failures.md#whole-cluster-restart: a node that found copies damaged at its restart,
    // in a configuration made without knowing, reports them: a primary copy's region goes to an
    // intact backup (or is lost without one), a backup copy copies again; nothing else moves.
    #[test]
    fn a_reported_damaged_copy_goes_to_an_intact_backup_or_copies_again_and_nothing_else_moves() {
        let config = cluster(4, 1, 2);
        // r1: n1 [n2 n3]; r2: n2 [n3 n4]. n1 reports r1 and r2 (the latter none of its).
        let plan = damaged_copies(&config, n(1), &[RegionId(1), RegionId(2)]).unwrap();
        assert_eq!(plan.config.id, config.id + 1);
        let r1 = placement(&plan.config, 1);
        assert_eq!(r1.primary, n(2), "the least loaded intact complete backup");
        assert_eq!(r1.state, RegionState::Blocked);
        assert_eq!(
            r1.backups,
            [n(3), n(1)],
            "the damaged copy stays, as a backup"
        );
        assert_eq!(r1.copying, [n(1)], "only the damaged copy is taken again");
        assert_eq!(
            plan.copies,
            [DataCopy {
                region: RegionId(1),
                from: n(2),
                to: n(1)
            }]
        );
        for region in 2..=4 {
            assert_eq!(
                placement(&plan.config, region),
                placement(&config, region),
                "r{region} unchanged"
            );
        }
        // A report that crossed the configuration that moved the region: nothing to do.
        let refused = damaged_copies(&plan.config, n(1), &[RegionId(1)]);
        assert!(
            matches!(&refused, Err(RemapError::NoDamagedCopy { node, id, .. })
                if *node == n(1) && *id == plan.config.id),
            "{refused:?}"
        );
        // A backup's damaged copy is copied again, so that nothing promotes it; the region
        // keeps serving from its primary.
        let plan = damaged_copies(&config, n(1), &[RegionId(3)]).unwrap();
        let r3 = placement(&plan.config, 3);
        assert_eq!((r3.primary, r3.state), (n(3), RegionState::Active));
        assert_eq!(r3.copying, [n(1)]);
        assert_eq!(
            plan.copies,
            [DataCopy {
                region: RegionId(3),
                from: n(3),
                to: n(1)
            }]
        );
        // No intact complete backup (f = 1, the backup still copying): the region is lost.
        let mut copying = cluster(2, 1, 1);
        let r1 = copying
            .regions
            .iter_mut()
            .find(|p| p.region == RegionId(1))
            .unwrap();
        r1.copying = r1.backups.clone();
        let plan = damaged_copies(&copying, n(1), &[RegionId(1)]).unwrap();
        assert_eq!(placement(&plan.config, 1).state, RegionState::Lost);
    }

    // docs/failures.md#whole-cluster-restart: a restarted node never serves a copy it cannot
    // vouch for.
    #[test]
    fn a_damaged_primary_copy_hands_its_region_to_an_intact_backup() {
        let config = cluster(4, 1, 2);
        // r1: n1 [n2 n3]; r2: n2 [n3 n4]; r3: n3 [n4 n1]; r4: n4 [n1 n2]. All restart; n1's
        // copy of r1 is damaged.
        let plan = restart(&config, &nodes(4), &[(n(1), RegionId(1))]).unwrap();
        let r1 = placement(&plan.config, 1);
        assert_eq!(r1.primary, n(2), "the least loaded intact complete backup");
        assert_eq!(r1.state, RegionState::Blocked);
        assert_eq!(
            r1.backups,
            [n(3), n(1)],
            "the damaged copy stays, as a backup"
        );
        assert_eq!(r1.copying, [n(1), n(3)], "both copy again");
        assert!(
            !plan.config.regions[0]
                .complete_replicas()
                .any(|r| r == n(1))
        );
        assert_eq!(
            change(&plan, 1).to_string(),
            "r1: primary n1 -> n2 (promoted), n1 n3 copying again (restarted), blocked"
        );
        let from_r1: Vec<DataCopy> = plan
            .copies
            .iter()
            .copied()
            .filter(|c| c.region == RegionId(1))
            .collect();
        assert_eq!(
            from_r1,
            [
                DataCopy {
                    region: RegionId(1),
                    from: n(2),
                    to: n(1)
                },
                DataCopy {
                    region: RegionId(1),
                    from: n(2),
                    to: n(3)
                }
            ],
            "from the new primary, the damaged copy whole"
        );
        // The other regions restart as without damage.
        let undamaged = restart(&config, &nodes(4), &[]).unwrap();
        for region in 2..=4 {
            assert_eq!(
                placement(&plan.config, region),
                placement(&undamaged.config, region)
            );
        }
    }

    #[test]
    fn a_damaged_backup_copy_copies_again_and_is_never_promoted() {
        let config = cluster(3, 1, 2);
        // r1: n1 [n2 n3]. n2's copy is damaged, and n1's too: n3 takes over.
        let plan = restart(
            &config,
            &nodes(3),
            &[(n(2), RegionId(1)), (n(1), RegionId(1))],
        )
        .unwrap();
        let r1 = placement(&plan.config, 1);
        assert_eq!((r1.primary, r1.state), (n(3), RegionState::Blocked));
        assert_eq!(r1.backups, [n(2), n(1)]);
        assert_eq!(r1.copying, [n(1), n(2)]);
        // Only n2's copy damaged: n1 keeps its region, n2 copies again as every restarted
        // backup does.
        let plan = restart(&config, &nodes(3), &[(n(2), RegionId(1))]).unwrap();
        let r1 = placement(&plan.config, 1);
        assert_eq!((r1.primary, r1.state), (n(1), RegionState::Blocked));
        assert_eq!(r1.copying, [n(2), n(3)]);
        // A copying backup is no candidate either: n2 was copying before the restart.
        let mut copying = config.clone();
        copying.regions[0].copying = vec![n(2)];
        let plan = restart(&copying, &nodes(3), &[(n(1), RegionId(1))]).unwrap();
        assert_eq!(placement(&plan.config, 1).primary, n(3));
    }

    #[test]
    fn a_region_with_no_intact_complete_replica_is_lost_never_served() {
        let config = cluster(3, 1, 1);
        // r1: n1 [n2]. Both copies damaged.
        let plan = restart(
            &config,
            &nodes(3),
            &[(n(1), RegionId(1)), (n(2), RegionId(1))],
        )
        .unwrap();
        let r1 = placement(&plan.config, 1);
        assert_eq!(r1.state, RegionState::Lost);
        assert!(r1.backups.is_empty() && r1.copying.is_empty(), "{r1:?}");
        assert!(change(&plan, 1).is_lost());
        // The primary damaged and its only backup copying: nothing can vouch for the data.
        let mut copying = config.clone();
        copying.regions[0].copying = vec![n(2)];
        let plan = restart(&copying, &nodes(3), &[(n(1), RegionId(1))]).unwrap();
        assert_eq!(placement(&plan.config, 1).state, RegionState::Lost);
        // A lost region stays lost, and its damaged copy is no error.
        let again = restart(&plan.config, &nodes(3), &[(n(1), RegionId(1))]);
        assert!(again.is_ok() || matches!(again, Err(RemapError::NothingToRestart { .. })));
    }

    #[test]
    fn a_damaged_copy_no_restarted_node_holds_is_refused() {
        let config = cluster(4, 1, 1);
        // r1: n1 [n2]: n3 holds no copy of it; n2 did not restart.
        for damaged in [
            (n(3), RegionId(1)),
            (n(9), RegionId(1)),
            (n(1), RegionId(77)),
        ] {
            let error = restart(&config, &nodes(4), &[damaged]).unwrap_err();
            assert!(
                matches!(error, RemapError::DamagedNotHeld { node, region, id: 7 }
                    if (node, region) == damaged),
                "{error}"
            );
        }
        let error = restart(&config, &[n(1)], &[(n(2), RegionId(1))]).unwrap_err();
        assert!(
            matches!(error, RemapError::DamagedNotHeld { .. }),
            "{error}"
        );
    }

    /// `config` after data recovery completed the copy of `region` on `node`: what the CM will
    /// install then, which no plan here makes.
    fn copied(config: &Configuration, region: u32, node: u16) -> Configuration {
        let mut next = config.clone();
        next.id += 1;
        let placement = next
            .regions
            .iter_mut()
            .find(|p| p.region == RegionId(region))
            .unwrap();
        assert!(placement.copying.contains(&n(node)), "{placement:?}");
        placement.copying.retain(|&copying| copying != n(node));
        next.validate().unwrap();
        next
    }

    #[test]
    fn a_copying_backup_is_not_promoted_while_a_complete_one_survives() {
        let mut config = cluster(4, 1, 2);
        // r1: n1 [n2, n3], n2 still copying. Every node is primary of one region, so without
        // the mark the older n2 would win.
        config.regions[0].copying = vec![n(2)];
        let plan = after_failure(&config, &failed(&[1])).unwrap();
        let r1 = placement(&plan.config, 1);
        assert_eq!((r1.primary, r1.state), (n(3), RegionState::Blocked));
        // n2 stays, still copying; n4 joins, copying.
        assert_eq!(r1.backups, vec![n(2), n(4)]);
        assert_eq!(r1.copying, vec![n(2), n(4)]);
        assert_eq!(
            change(&plan, 1).to_string(),
            "r1: primary n1 -> n3 (promoted), dropped n1, new backups n4 (copying), n2 still \
             copying, blocked"
        );
        // A copying backup that fails leaves `copying` with `backups`.
        let plan = after_failure(&config, &failed(&[2])).unwrap();
        let r1 = placement(&plan.config, 1);
        assert_eq!((r1.primary, r1.state), (n(1), RegionState::Active));
        assert_eq!(
            (r1.backups.clone(), r1.copying.clone()),
            (vec![n(3), n(4)], vec![n(4)])
        );
        assert_eq!(
            change(&plan, 1).to_string(),
            "r1: primary n1, dropped n2 (copying), new backups n4 (copying)"
        );
    }

    #[test]
    fn a_region_whose_only_survivors_are_copying_is_lost() {
        // r1: n1 [n2] -> n2 [n3], n3 copying.
        let once = after_failure(&cluster(4, 1, 1), &failed(&[1]))
            .unwrap()
            .config;
        let r1 = placement(&once, 1);
        assert_eq!((r1.primary, r1.copying.clone()), (n(2), vec![n(3)]));
        let plan = after_failure(&once, &failed(&[2])).unwrap();
        let r1 = placement(&plan.config, 1);
        // n3 is live, but its copy may lack any write: nothing of r1 is left to serve or to
        // finish the copy from.
        assert!(plan.config.nodes.contains(&n(3)));
        assert_eq!((r1.primary, r1.state), (n(2), RegionState::Lost));
        assert!(r1.backups.is_empty(), "{r1:?}");
        assert!(r1.copying.is_empty(), "{r1:?}");
        let c1 = change(&plan, 1);
        assert_eq!(c1.dropped, vec![n(2), n(3)]);
        assert!(plan.copies.iter().all(|copy| copy.region != RegionId(1)));
        assert_eq!(
            c1.to_string(),
            "r1: lost (last primary n2; every complete replica gone: n2; dropped n3 (copying))"
        );
        // The other regions keep their complete replicas: r2 (n2 [n3], both complete) promotes
        // n3.
        assert_eq!(placement(&plan.config, 2).primary, n(3));
    }

    #[test]
    fn a_backup_whose_copy_completed_can_be_promoted() {
        let once = after_failure(&cluster(4, 1, 1), &failed(&[1]))
            .unwrap()
            .config;
        let recovered = copied(&once, 1, 3);
        let changes = diff(&once, &recovered);
        assert_eq!(changes.len(), 1);
        assert_eq!(changes[0].copied().collect::<Vec<_>>(), [n(3)]);
        assert_eq!(
            changes[0].to_string(),
            "r1: primary n2, copy complete on n3, blocked"
        );
        let plan = after_failure(&recovered, &failed(&[2])).unwrap();
        let r1 = placement(&plan.config, 1);
        assert_eq!((r1.primary, r1.state), (n(3), RegionState::Blocked));
        assert_eq!(
            change(&plan, 1).promoted,
            Some(Promotion {
                from: n(2),
                to: n(3)
            })
        );
    }

    #[test]
    fn removing_the_last_complete_replica_is_refused() {
        // r1: n1 [n2] -> n2 [n3], n3 copying: n2 holds r1's only complete copy.
        let once = after_failure(&cluster(4, 1, 1), &failed(&[1]))
            .unwrap()
            .config;
        let error = remove_node(&once, n(2)).unwrap_err();
        assert!(
            matches!(&error, RemapError::LastReplica { node: NodeId(2), regions }
                if *regions == [RegionId(1)]),
            "{error}"
        );
        assert!(
            error.to_string().contains("last complete replica of r1"),
            "{error}"
        );
        // The copying backup may leave: another takes its place, copying.
        let plan = remove_node(&once, n(3)).unwrap();
        let r1 = placement(&plan.config, 1);
        assert_eq!((r1.primary, r1.backups.clone()), (n(2), vec![n(4)]));
        assert_eq!(r1.copying, vec![n(4)]);
        // Once n3's copy is complete, n2 may leave and n3 takes over.
        let plan = remove_node(&copied(&once, 1, 3), n(2)).unwrap();
        let r1 = placement(&plan.config, 1);
        assert_eq!((r1.primary, r1.state), (n(3), RegionState::Blocked));

        // The only complete backup may leave while the primary stays: the primary is complete.
        let mut config = cluster(4, 1, 2);
        // r1: n1 [n2, n3], n3 copying.
        config.regions[0].copying = vec![n(3)];
        let plan = remove_node(&config, n(2)).unwrap();
        let r1 = placement(&plan.config, 1);
        assert_eq!((r1.primary, r1.state), (n(1), RegionState::Active));
        assert_eq!(r1.copying, vec![n(3), n(4)]);
    }

    #[test]
    fn a_new_region_goes_to_the_least_loaded_nodes_in_other_domains() {
        let config = with_domains(cluster(4, 1, 1), &[(1, "a"), (2, "a"), (3, "b"), (4, "b")]);
        let grown = add_region(&config).unwrap();
        assert_eq!(grown.created().collect::<Vec<_>>(), vec![RegionId(5)]);
        let r5 = placement(&grown.config, 5);
        // Every node is primary of one region and holds two replicas: n1 by id; its backup
        // goes to rack b.
        assert_eq!((r5.primary, r5.state), (n(1), RegionState::Active));
        assert_eq!(r5.backups, vec![n(3)]);
        // An empty backup of an empty region is a complete copy of it.
        assert!(r5.copying.is_empty());
        assert_eq!(grown.copies.len(), 0);
        assert_eq!(
            change(&grown, 5).to_string(),
            "r5: created, primary n1, new backups n3, active"
        );
        let again = add_region(&grown.config).unwrap();
        let r6 = placement(&again.config, 6);
        assert_eq!((r6.primary, r6.backups.clone()), (n(2), vec![n(4)]));
        // Ids follow the largest, even past a gap.
        let mut sparse = config.clone();
        sparse.regions[1].region = RegionId(40);
        assert_eq!(
            add_region(&sparse).unwrap().created().next(),
            Some(RegionId(41))
        );
        sparse.regions[1].region = RegionId(REPLY_AREA_ID_MIN - 1);
        let error = add_region(&sparse).unwrap_err();
        assert!(
            matches!(error, RemapError::RegionIdsExhausted { .. }),
            "{error}"
        );
    }
}

/// Random clusters and random sequences of failures, joins, removals and new regions, with the
/// rules of the module docs checked after every step.
#[cfg(test)]
mod properties {
    use super::*;
    use acre_nvm_log::random::{Replay, SplitMix, for_each_seed};
    use acre_txn::config::FailureDomain;

    /// Sequences per run (each seed is one cluster and one sequence): about two seconds in a
    /// debug build.
    const SEED_COUNT: u64 = 250;
    /// Steps per sequence.
    const STEP_COUNT: usize = 16;
    const CLIENT: NodeId = NodeId(1000);

    fn random_cluster(rng: &mut SplitMix) -> Configuration {
        let count = rng.range(3, 9) as u16;
        let f = rng.range(1, 2) as usize;
        let per_node = rng.range(1, 4) as usize;
        let nodes: Vec<NodeId> = (1..=count).map(NodeId).collect();
        let clients = if rng.below(2) == 0 {
            vec![CLIENT]
        } else {
            vec![]
        };
        let mut config =
            Configuration::place(1, nodes.clone(), clients, per_node, f, 1 << 20, 4096).unwrap();
        let domain_count = rng.range(1, u64::from(count));
        for &node in &nodes {
            // Some nodes are left a domain of their own.
            if rng.below(4) != 0 {
                let domain = format!("rack-{}", rng.below(domain_count));
                config.domains.push(FailureDomain { node, domain });
            }
        }
        // Some backups are still receiving their copy, as if the cluster had been through
        // changes already.
        for placement in &mut config.regions {
            let backups = placement.backups.clone();
            placement.copying = backups.into_iter().filter(|_| rng.below(3) == 0).collect();
        }
        config.cm_replicas = nodes.iter().copied().take(2 * f + 1).collect();
        config.cm_leader =
            Some(config.cm_replicas[rng.below(config.cm_replicas.len() as u64) as usize]);
        config.validate().unwrap();
        config
    }

    fn pick(rng: &mut SplitMix, nodes: &[NodeId]) -> NodeId {
        nodes[rng.below(nodes.len() as u64) as usize]
    }

    /// Checks that hold after every plan.
    pub(super) fn check_common(before: &Configuration, plan: &Plan, gone: &BTreeSet<NodeId>) {
        check_common_completing(before, plan, gone, &[]);
    }

    /// [`check_common`] for a plan that completes the copies `completed` (region, backup).
    fn check_common_completing(
        before: &Configuration,
        plan: &Plan,
        gone: &BTreeSet<NodeId>,
        completed: &[(RegionId, NodeId)],
    ) {
        let next = &plan.config;
        assert_eq!(next.id, before.id + 1);
        next.validate().unwrap();
        assert_eq!(plan.changes, diff(before, next));
        for old in &before.regions {
            let placement = next
                .placement(old.region)
                .expect("a region never disappears");
            if old.state == RegionState::Lost {
                assert_eq!(placement, old, "a lost region stays lost, as it was");
            }
            // No plan completes a copy: only data recovery's report does.
            for node in &old.copying {
                if placement.backups.contains(node) && !completed.contains(&(old.region, *node)) {
                    assert!(placement.copying.contains(node), "{old:?} -> {placement:?}");
                }
            }
            let changed = plan.changes.iter().any(|c| c.region == old.region);
            assert_eq!(changed, placement != old, "{}", old.region);
        }
        for &node in gone {
            assert!(
                !next.members().any(|m| m == node),
                "{node} is still a member"
            );
            assert!(
                next.domains.iter().all(|d| d.node != node),
                "{node} has a domain"
            );
            assert_ne!(next.cm_leader, Some(node));
        }
        assert_eq!(next.cm_replicas, before.cm_replicas);
        let domains: BTreeMap<NodeId, String> = next
            .nodes
            .iter()
            .map(|&node| (node, next.domain_of(node)))
            .collect();
        for placement in &next.regions {
            if placement.state == RegionState::Lost {
                assert!(placement.backups.is_empty(), "{placement:?}");
                assert!(placement.copying.is_empty(), "{placement:?}");
                continue;
            }
            // Every backup a plan adds is copying, unless its region is new (and empty).
            if let Some(change) = plan.changes.iter().find(|c| c.region == placement.region) {
                for node in &change.added {
                    assert_eq!(
                        placement.copying.contains(node),
                        !change.created,
                        "{change:?} {placement:?}"
                    );
                }
            }
            for node in placement.replicas() {
                assert!(
                    !gone.contains(&node),
                    "{} on departed {node}",
                    placement.region
                );
            }
            let free: Vec<NodeId> = next
                .nodes
                .iter()
                .copied()
                .filter(|&node| !placement.replicas().any(|r| r == node))
                .collect();
            if placement.backups.len() < next.f {
                assert!(
                    free.is_empty(),
                    "{placement:?} is degraded but {free:?} are free"
                );
            }
            // Spread over domains: a domain holds two replicas of a region, one of them new,
            // only if every free node is in a domain the region already uses.
            let added: Vec<NodeId> = plan
                .changes
                .iter()
                .filter(|c| c.region == placement.region)
                .flat_map(|c| c.added.clone())
                .collect();
            let used: Vec<&String> = placement.replicas().map(|node| &domains[&node]).collect();
            let crowded = added
                .iter()
                .any(|node| used.iter().filter(|&&d| *d == domains[node]).count() > 1);
            if crowded {
                for node in &free {
                    assert!(
                        used.contains(&&domains[node]),
                        "{placement:?}: {node} in an unused domain was free, domains {domains:?}"
                    );
                }
            }
        }
    }

    /// The copies are exactly the new backups of regions that have data (so exactly the
    /// backups a plan marks copying).
    pub(super) fn check_copies(plan: &Plan) {
        let copied: Vec<(RegionId, NodeId)> = plan
            .copies
            .iter()
            .map(|copy| (copy.region, copy.to))
            .collect();
        let added: Vec<(RegionId, NodeId)> = plan
            .changes
            .iter()
            .filter(|change| !change.created)
            .flat_map(|change| change.added.iter().map(|&node| (change.region, node)))
            .collect();
        assert_eq!(copied, added);
    }

    /// The rules for a region after its replicas on `gone` left (a failure or a removal).
    pub(super) fn check_departure(
        before: &Configuration,
        next: &Configuration,
        gone: &BTreeSet<NodeId>,
    ) {
        for old in &before.regions {
            let placement = next.placement(old.region).unwrap();
            if old.state == RegionState::Lost {
                continue;
            }
            // Lost exactly when every complete replica left: copying ones do not count.
            let survivors: Vec<NodeId> = old
                .complete_replicas()
                .filter(|n| !gone.contains(n))
                .collect();
            if survivors.is_empty() {
                assert_eq!(placement.state, RegionState::Lost, "{}", old.region);
                assert_eq!(placement.primary, old.primary, "names its last primary");
                continue;
            }
            assert_ne!(
                placement.state,
                RegionState::Lost,
                "{} had {survivors:?}",
                old.region
            );
            // Surviving data is never dropped, nor a surviving copy in progress, which stays
            // in progress.
            for node in old.replicas().filter(|n| !gone.contains(n)) {
                assert!(
                    placement.replicas().any(|r| r == node),
                    "{} lost {node}",
                    old.region
                );
                if old.copying.contains(&node) {
                    assert!(
                        placement.copying.contains(&node),
                        "{old:?} -> {placement:?}"
                    );
                }
            }
            if gone.contains(&old.primary) {
                // The promoted primary was a complete backup of c.
                assert!(
                    old.backups.contains(&placement.primary),
                    "{old:?} -> {placement:?}"
                );
                assert!(
                    !old.copying.contains(&placement.primary),
                    "{old:?} -> {placement:?}"
                );
                assert_eq!(placement.state, RegionState::Blocked);
            } else {
                assert_eq!(
                    (placement.primary, placement.state),
                    (old.primary, old.state)
                );
            }
        }
    }

    /// Data recovery completes some copies: what the CM will install when they end, which no
    /// plan here makes. Checked with [`diff`].
    fn complete_copies(rng: &mut SplitMix, config: &Configuration) -> Configuration {
        let mut next = config.clone();
        next.id += 1;
        let mut completed = Vec::new();
        for placement in &mut next.regions {
            let copying = std::mem::take(&mut placement.copying);
            for node in copying {
                if rng.below(2) == 0 {
                    completed.push((placement.region, node));
                } else {
                    placement.copying.push(node);
                }
            }
        }
        next.validate().unwrap();
        let copied: Vec<(RegionId, NodeId)> = diff(config, &next)
            .iter()
            .flat_map(|change| change.copied().map(|node| (change.region, node)))
            .collect();
        assert_eq!(copied, completed);
        next
    }

    /// One step: a random change to `config`, checked; returns the next configuration (the
    /// same one when the change was refused, rightly).
    fn step(rng: &mut SplitMix, config: &Configuration, next_id: &mut u16) -> Configuration {
        // Small clusters grow more often than they shrink, but they still shrink: the refusals
        // (a last replica, a last node, every node failed) need them.
        let choice = if config.nodes.len() <= 2 && rng.below(2) == 0 {
            6
        } else {
            rng.below(13)
        };
        match choice {
            0..=4 => {
                let mut failed = BTreeSet::new();
                let count = rng.range(1, config.f as u64 + 1);
                for _ in 0..count {
                    failed.insert(pick(rng, &config.nodes));
                }
                if rng.below(4) == 0 && config.clients.contains(&CLIENT) {
                    failed.insert(CLIENT);
                }
                let result = after_failure(config, &failed);
                assert_eq!(
                    result.as_ref().ok(),
                    after_failure(config, &failed).as_ref().ok()
                );
                if config.nodes.iter().all(|node| failed.contains(node)) {
                    let error = result.unwrap_err();
                    assert!(
                        matches!(error, RemapError::EveryNodeFailed { .. }),
                        "{error}"
                    );
                    return config.clone();
                }
                let plan = result.unwrap();
                check_common(config, &plan, &failed);
                check_copies(&plan);
                check_departure(config, &plan.config, &failed);
                plan.config
            }
            5 => {
                let node = pick(rng, &config.nodes);
                let result = remove_node(config, node);
                assert_eq!(
                    result.as_ref().ok(),
                    remove_node(config, node).as_ref().ok()
                );
                // The model, derived apart from the code: the primary is always complete, so
                // the node is a region's last complete replica exactly when it is the primary
                // and every backup is still copying.
                let last: Vec<RegionId> = config
                    .regions
                    .iter()
                    .filter(|p| p.state != RegionState::Lost && p.primary == node)
                    .filter(|p| p.backups.iter().all(|b| p.copying.contains(b)))
                    .map(|p| p.region)
                    .collect();
                if !last.is_empty() {
                    let error = result.unwrap_err();
                    assert!(
                        matches!(&error, RemapError::LastReplica { regions, .. } if *regions == last),
                        "{error}"
                    );
                    return config.clone();
                }
                if config.nodes == [node] {
                    let error = result.unwrap_err();
                    assert!(matches!(error, RemapError::LastNode { .. }), "{error}");
                    return config.clone();
                }
                let plan = result.unwrap();
                let gone = BTreeSet::from([node]);
                check_common(config, &plan, &gone);
                check_copies(&plan);
                check_departure(config, &plan.config, &gone);
                for copy in &plan.copies {
                    let old = config.placement(copy.region).unwrap();
                    assert_eq!(
                        copy.from, old.primary,
                        "the current copy is the old primary's"
                    );
                    assert_ne!(copy.to, node);
                }
                plan.config
            }
            6..=8 => {
                // A fresh id, or sometimes one that left (a node back from the dead with a
                // new life, possibly the last primary of a lost region).
                let departed: Vec<NodeId> = (1..*next_id)
                    .map(NodeId)
                    .filter(|&node| !config.members().any(|m| m == node))
                    .collect();
                let node = if !departed.is_empty() && rng.below(3) == 0 {
                    pick(rng, &departed)
                } else {
                    *next_id += 1;
                    NodeId(*next_id - 1)
                };
                let domain = (rng.below(2) == 0).then(|| format!("rack-{}", rng.below(4)));
                let plan = add_node(config, node, domain.clone()).unwrap();
                assert_eq!(plan, add_node(config, node, domain).unwrap());
                check_common(config, &plan, &BTreeSet::new());
                check_copies(&plan);
                let error = add_node(&plan.config, node, None).unwrap_err();
                assert!(matches!(error, RemapError::AlreadyMember { .. }), "{error}");
                for old in &config.regions {
                    let placement = plan.config.placement(old.region).unwrap();
                    assert_eq!(
                        (placement.primary, placement.state),
                        (old.primary, old.state)
                    );
                    assert!(old.backups.iter().all(|b| placement.backups.contains(b)));
                    assert!(old.copying.iter().all(|b| placement.copying.contains(b)));
                }
                assert!(plan.copies.iter().all(|copy| copy.to == node));
                plan.config
            }
            9 => {
                let plan = add_region(config).unwrap();
                assert_eq!(plan, add_region(config).unwrap());
                check_common(config, &plan, &BTreeSet::new());
                check_copies(&plan);
                let created: Vec<RegionId> = plan.created().collect();
                assert_eq!(created.len(), 1);
                let largest = config.regions.iter().map(|p| p.region).max().unwrap();
                assert_eq!(created[0].0, largest.0 + 1);
                let placement = plan.config.placement(created[0]).unwrap();
                assert_eq!(placement.state, RegionState::Active);
                assert_eq!(plan.changes.len(), 1, "only the new region changes");
                assert_eq!(plan.copies.len(), 0, "a new region is empty");
                assert!(placement.copying.is_empty(), "{placement:?}");
                plan.config
            }
            12 => {
                // Recovery finished in some regions (active ones among them: a late report).
                let chosen: Vec<RegionId> = config
                    .regions
                    .iter()
                    .filter(|p| p.state != RegionState::Lost)
                    .map(|p| p.region)
                    .filter(|_| rng.below(2) == 0)
                    .collect();
                let blocked = |region: &RegionId| {
                    config.placement(*region).unwrap().state == RegionState::Blocked
                };
                let result = activate(config, &chosen);
                if !chosen.iter().any(blocked) {
                    let error = result.unwrap_err();
                    assert!(
                        matches!(error, RemapError::NothingBlocked { .. }),
                        "{error}"
                    );
                    return config.clone();
                }
                let plan = result.unwrap();
                assert_eq!(plan, activate(config, &chosen).unwrap());
                check_common(config, &plan, &BTreeSet::new());
                check_copies(&plan);
                assert!(plan.copies.is_empty(), "{:?}", plan.copies);
                for old in &config.regions {
                    let placement = plan.config.placement(old.region).unwrap();
                    let state = if chosen.contains(&old.region) && blocked(&old.region) {
                        RegionState::Active
                    } else {
                        old.state
                    };
                    let mut expected = old.clone();
                    expected.state = state;
                    assert_eq!(*placement, expected);
                }
                let mut unchanged = plan.config.clone();
                unchanged.id = config.id;
                unchanged.regions = config.regions.clone();
                assert_eq!(unchanged, *config, "only region states change");
                plan.config
            }
            11 => {
                // A node's copies complete in some regions (some where it copies nothing: a
                // late report), sometimes with recovered regions in the same report.
                let node = pick(rng, &config.nodes);
                let choose = |rng: &mut SplitMix| -> Vec<RegionId> {
                    config
                        .regions
                        .iter()
                        .filter(|p| p.state != RegionState::Lost)
                        .map(|p| p.region)
                        .filter(|_| rng.below(2) == 0)
                        .collect()
                };
                let copied = choose(rng);
                let recovered = if rng.below(3) == 0 {
                    choose(rng)
                } else {
                    Vec::new()
                };
                let copying =
                    |region: &RegionId| config.placement(*region).unwrap().copying.contains(&node);
                let blocked = |region: &RegionId| {
                    config.placement(*region).unwrap().state == RegionState::Blocked
                };
                let report = Copied {
                    node,
                    regions: &copied,
                };
                let result = after_recovery(config, &recovered, Some(report));
                if !copied.iter().any(copying) && !recovered.iter().any(blocked) {
                    let error = result.unwrap_err();
                    assert!(
                        matches!(
                            error,
                            RemapError::NothingCopying { .. } | RemapError::NothingBlocked { .. }
                        ),
                        "{error}"
                    );
                    return config.clone();
                }
                let plan = result.unwrap();
                assert_eq!(
                    plan,
                    after_recovery(config, &recovered, Some(report)).unwrap()
                );
                let completed: Vec<(RegionId, NodeId)> = copied
                    .iter()
                    .copied()
                    .filter(copying)
                    .map(|region| (region, node))
                    .collect();
                check_common_completing(config, &plan, &BTreeSet::new(), &completed);
                check_copies(&plan);
                assert!(plan.copies.is_empty(), "{:?}", plan.copies);
                for old in &config.regions {
                    let placement = plan.config.placement(old.region).unwrap();
                    let mut expected = old.clone();
                    if recovered.contains(&old.region) && blocked(&old.region) {
                        expected.state = RegionState::Active;
                    }
                    if copied.contains(&old.region) && copying(&old.region) {
                        expected.copying.retain(|&backup| backup != node);
                    }
                    assert_eq!(*placement, expected);
                }
                let mut reported: Vec<(RegionId, NodeId)> = plan
                    .changes
                    .iter()
                    .flat_map(|change| change.copied().map(|node| (change.region, node)))
                    .collect();
                reported.sort();
                let mut completed = completed;
                completed.sort();
                completed.dedup();
                assert_eq!(reported, completed);
                let mut unchanged = plan.config.clone();
                unchanged.id = config.id;
                unchanged.regions = config.regions.clone();
                assert_eq!(unchanged, *config, "only regions change");
                plan.config
            }
            _ => complete_copies(rng, config),
        }
    }

    // FaRM SOSP'15 §5.2: remapping keeps every region with a surviving complete replica and
    // loses only those whose every complete replica failed.
    #[test]
    fn random_sequences_of_changes_keep_every_rule() {
        for_each_seed(SEED_COUNT, Replay::Exact, |seed| {
            let mut rng = SplitMix::new(seed);
            let mut config = random_cluster(&mut rng);
            let mut next_id = config.nodes.len() as u16 + 1;
            // Model: the complete replicas of every region; a region is lost exactly when a
            // failure takes the last of them, whatever copying backups survive.
            let mut lost = BTreeSet::new();
            for _ in 0..STEP_COUNT {
                let next = step(&mut rng, &config, &mut next_id);
                for placement in config
                    .regions
                    .iter()
                    .filter(|p| p.state != RegionState::Lost)
                {
                    let after = next.placement(placement.region).unwrap();
                    let gone = placement
                        .complete_replicas()
                        .all(|n| !next.nodes.contains(&n));
                    assert_eq!(
                        after.state == RegionState::Lost,
                        gone,
                        "{placement:?} -> {after:?}"
                    );
                    if gone {
                        lost.insert(placement.region);
                    }
                }
                config = next;
            }
            let lost_now: BTreeSet<RegionId> = config
                .regions
                .iter()
                .filter(|p| p.state == RegionState::Lost)
                .map(|p| p.region)
                .collect();
            assert_eq!(lost_now, lost);
        });
    }
}

/// Single failures over all shapes of small clusters, shrunk by proptest to the smallest
/// cluster and failed set when a rule breaks (the sequences above find deeper states; this
/// finds the simplest counterexample).
#[cfg(test)]
mod shrinking {
    use super::*;
    use acre_txn::config::FailureDomain;
    use proptest::prelude::*;

    proptest! {
        #![proptest_config(ProptestConfig { cases: 128, ..ProptestConfig::default() })]

        // FaRM SOSP'15 §5.2: any failure that leaves a complete replica of a region keeps the
        // region, with a surviving complete replica as primary; copying backups do not count.
        #[test]
        fn any_failed_set_keeps_every_rule(
            count in 3u16..=9,
            f in 1usize..=2,
            per_node in 1usize..=4,
            racks in proptest::collection::vec(0u8..4, 9),
            copying_mask in 0u16..512,
            failed_mask in 1u16..512,
        ) {
            let nodes: Vec<NodeId> = (1..=count).map(NodeId).collect();
            let mut config =
                Configuration::place(1, nodes.clone(), vec![], per_node, f, 1 << 20, 4096)
                    .unwrap();
            config.domains = nodes
                .iter()
                .map(|&node| FailureDomain {
                    node,
                    domain: format!("rack-{}", racks[usize::from(node.0) - 1]),
                })
                .collect();
            // The nodes in `copying_mask` are still copying every region they are a backup of.
            let copying = |node: &NodeId| copying_mask & (1 << (node.0 - 1)) != 0;
            for placement in &mut config.regions {
                placement.copying = placement.backups.iter().copied().filter(copying).collect();
            }
            let failed: BTreeSet<NodeId> =
                nodes.iter().copied().filter(|n| failed_mask & (1 << (n.0 - 1)) != 0).collect();
            prop_assume!(!failed.is_empty());
            match after_failure(&config, &failed) {
                Err(RemapError::EveryNodeFailed { .. }) => {
                    prop_assert!(nodes.iter().all(|n| failed.contains(n)));
                }
                Err(error) => prop_assert!(false, "{error}"),
                Ok(plan) => {
                    super::properties::check_common(&config, &plan, &failed);
                    super::properties::check_copies(&plan);
                    super::properties::check_departure(&config, &plan.config, &failed);
                    prop_assert_eq!(&after_failure(&config, &failed).unwrap(), &plan);
                }
            }
        }
    }
}
