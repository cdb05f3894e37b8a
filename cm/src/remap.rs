//! Reconfiguration planning: the functions that compute configuration c+1 from c when nodes
//! fail ([`after_failure`]), join ([`add_node`]) or leave ([`remove_node`]), and when a region
//! is created ([`add_region`]) (docs/failures.md#reconfiguration, FaRM SOSP'15 §5.2).
//!
//! They are pure: no I/O, no clock, no randomness, and the same input gives the same output, so
//! every CM replica that replays a Raft entry computes the same configuration, and a test can
//! check a plan by value. Each returns a [`Remap`]: the next configuration (validated, id + 1)
//! and what changed in every region, or a [`RemapError`] that says why no configuration can
//! follow and what to do instead.
//!
//! # Rules
//!
//! - **Surviving data is never dropped.** A live replica of a region stays one of its replicas;
//!   only replicas on failed or removed nodes leave. A new primary is always one of the region's
//!   backups in c, which hold every committed write (FaRM commits only after every backup has the
//!   COMMIT-BACKUP record).
//! - **Promotion.** When a region's primary fails (or leaves), the surviving backup with the
//!   fewest primaries becomes primary, ties going to the earlier backup in the list (backups are
//!   kept oldest first: new ones are appended). The domain of the primary does not matter for
//!   safety, every replica has the data, but load does: the primary serves every read and lock.
//!   The region becomes [`RegionState::Blocked`]: the new primary holds none of the locks of the
//!   transactions in flight, and serves only once transaction recovery has rebuilt them.
//! - **States last.** A blocked region stays blocked through later changes (even when its new
//!   primary fails too and another backup is promoted) until recovery, not a remap, unblocks it.
//!   An active region whose primary survives stays active. A region whose every replica fails is
//!   [`RegionState::Lost`], naming its last primary, with no backups: an explicit state shown
//!   everywhere, never a silently dropped region; a lost region stays lost (its data comes back
//!   only with a replica's files, which is not planned here).
//! - **New backups.** A region with fewer than f backups gets new ones on live memory nodes that
//!   hold no replica of it, chosen one at a time by, in order: fewest of the region's replicas in
//!   the candidate's failure domain (so replicas spread over domains, and a domain that fails
//!   takes as few copies as it can), fewest replicas on the candidate (memory and copy work
//!   spread), lowest node id. When there is no candidate the region runs with fewer backups
//!   (degraded); every membership change ([`after_failure`], [`add_node`], [`remove_node`])
//!   tries again, so after any of them a region is degraded only if every memory node already
//!   holds a replica of it. A new backup needs a copy of the region's data ([`Remap::copies`]).
//! - **Membership.** Failed or removed nodes leave `nodes`, `clients` and `domains`; a failed or
//!   removed CM leader is cleared, but `cm_replicas` is left alone: the Raft group's membership
//!   changes through Raft, not through these plans.
//!
//! Loads (primaries and replicas per node) count regions that are not lost, and are updated as
//! each region is placed, in the order of `regions`, so a plan that moves many regions at once
//! spreads them rather than sending them all to the node that was least loaded at the start.

use acre_engine::addr::{NodeId, RegionId};
use acre_txn::config::{ConfigError, Configuration, Placement, REPLY_AREA_ID_MIN, RegionState};
use std::collections::{BTreeMap, BTreeSet};
use std::fmt;

/// Configuration c+1 and what it changes.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Remap {
    /// The next configuration: validated, its id one more than the one it follows.
    pub config: Configuration,
    /// One entry per region that changed (or was created), in the order of `config.regions`.
    pub changes: Vec<RegionChange>,
}

impl Remap {
    /// The data copies the plan needs: one per new replica, from the region's primary in the
    /// new configuration. After a failure they run in the background (data recovery); before a
    /// graceful removal they must complete before the configuration is installed.
    pub fn copies(&self) -> impl Iterator<Item = DataCopy> + '_ {
        let moved = self.changes.iter().filter(|change| !change.created);
        moved.flat_map(|change| {
            change.added.iter().map(|&to| DataCopy {
                region: change.region,
                from: change.primary,
                to,
            })
        })
    }

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
    /// A replica that holds the data: the region's primary in the new configuration.
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
    /// Replicas the region no longer has (on failed or removed nodes). All of them when lost.
    pub dropped: Vec<NodeId>,
    /// New backups: each needs a copy of the region's data ([`Remap::copies`]), unless created.
    pub added: Vec<NodeId>,
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
}

impl fmt::Display for RegionChange {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: ", self.region)?;
        if self.is_lost() {
            return write!(
                f,
                "lost (last primary {}; every replica gone: {})",
                self.primary,
                list(&self.dropped)
            );
        }
        if self.created {
            write!(f, "created, primary {}", self.primary)?;
        } else if let Some(Promotion { from, to }) = self.promoted {
            write!(f, "primary {from} -> {to} (promoted)")?;
        } else {
            write!(f, "primary {}", self.primary)?;
        }
        if !self.dropped.is_empty() {
            write!(f, ", dropped {}", list(&self.dropped))?;
        }
        if !self.added.is_empty() {
            let copy = if self.created { "" } else { " (data copy needed)" };
            write!(f, ", new backups {}{copy}", list(&self.added))?;
        }
        if self.backups_missing_count > 0 {
            write!(f, ", degraded: {} backups short", self.backups_missing_count)?;
        }
        if self.state_before != Some(self.state) {
            write!(f, ", {}", self.state.name())?;
        }
        Ok(())
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
        "removing {node} would remove the last replica of {}: add a node first (it gives \
         degraded regions their backups), or stop the node instead and let the regions be lost",
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
}

fn region_list(regions: &[RegionId]) -> String {
    let names: Vec<String> = regions.iter().map(RegionId::to_string).collect();
    names.join(" ")
}

/// Configuration c+1 after the nodes in `failed` (memory nodes or clients) failed: their
/// replicas leave, regions that lost their primary get a surviving backup as primary and become
/// blocked, regions get new backups where a node can take them, and regions whose every replica
/// failed become lost (module docs, "Rules").
pub fn after_failure(
    config: &Configuration,
    failed: &BTreeSet<NodeId>,
) -> Result<Remap, RemapError> {
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
        if placement.replicas().all(|node| failed.contains(&node)) {
            // FaRM SOSP'15 §5.2: with every replica gone nothing can serve the region. It stays
            // in the configuration, lost, so that everyone sees why its addresses fail.
            placement.state = RegionState::Lost;
            placement.backups.clear();
            continue;
        }
        placement.backups.retain(|node| !failed.contains(node));
        if failed.contains(&placement.primary) {
            orphaned.push(index);
        }
    }
    promote(&mut next, &orphaned);
    fill_backups(&mut next);
    Ok(finish(config, next))
}

/// Configuration c+1 with the memory node `node` added (in failure domain `domain`, or a domain
/// of its own). Degraded regions get their missing backups, on the new node first as it holds
/// nothing yet; the changes say which regions it receives. Primaries do not move.
pub fn add_node(
    config: &Configuration,
    node: NodeId,
    domain: Option<String>,
) -> Result<Remap, RemapError> {
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
        next.domains
            .push(acre_txn::config::FailureDomain { node, domain });
    }
    fill_backups(&mut next);
    Ok(finish(config, next))
}

/// Configuration c+1 without `node` (a memory node or a client), which leaves gracefully: every
/// region it holds a replica of gets a new one elsewhere, and a region it is primary of gets one
/// of its backups as primary (blocked, as after a failure, since the new primary holds none of
/// the locks of transactions in flight). The copies ([`Remap::copies`]) must complete before the
/// configuration is installed.
///
/// Refused when the node is not a member, when it holds the only replica of a region, or when
/// it is the last memory node.
pub fn remove_node(config: &Configuration, node: NodeId) -> Result<Remap, RemapError> {
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
        .filter(|p| p.state != RegionState::Lost && p.primary == node && p.backups.is_empty())
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
        placement.backups.retain(|&backup| backup != node);
        if placement.primary == node {
            orphaned.push(index);
        }
    }
    promote(&mut next, &orphaned);
    fill_backups(&mut next);
    Ok(finish(config, next))
}

/// Configuration c+1 with one more region (as data grows), of the configuration's
/// `region_bytes`: the next id after the largest in use (ids are never reused, so an address
/// of a lost region never points into a new one), its primary on the node with the fewest
/// primaries (then fewest replicas, then lowest id), and up to f backups chosen as new backups
/// are (module docs). The region is new and empty: it is active at once and needs no copy.
pub fn add_region(config: &Configuration) -> Result<Remap, RemapError> {
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
        state: RegionState::Active,
    });
    fill_backups(&mut next);
    Ok(finish(config, next))
}

/// The changes from `before` to `after`, one per region of `after` that differs, in its order.
/// Every plan returns them; `acre cluster status` can compute them for any two configurations.
pub fn diff(before: &Configuration, after: &Configuration) -> Vec<RegionChange> {
    let mut changes = Vec::new();
    for placement in &after.regions {
        let old = before.placement(placement.region);
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
/// whose `backups` are the survivors) one of its backups as primary and blocks it.
fn promote(config: &mut Configuration, orphaned: &[usize]) {
    // Count the primaries that stay, so that the first promotions do not see the departed
    // primaries' regions as load.
    let mut primary_count: BTreeMap<NodeId, usize> = BTreeMap::new();
    for (index, placement) in config.regions.iter().enumerate() {
        if placement.state != RegionState::Lost && !orphaned.contains(&index) {
            *primary_count.entry(placement.primary).or_default() += 1;
        }
    }
    for &index in orphaned {
        let placement = &mut config.regions[index];
        assert!(
            !placement.backups.is_empty(),
            "{} has no surviving backup to promote: it should be lost",
            placement.region
        );
        // `min_by_key` keeps the first of equal keys: the oldest backup among the least loaded.
        let (position, &primary) = placement
            .backups
            .iter()
            .enumerate()
            .min_by_key(|(_, node)| primary_count.get(node).copied().unwrap_or(0))
            .expect("checked non-empty above");
        placement.backups.remove(position);
        placement.primary = primary;
        placement.state = RegionState::Blocked;
        *primary_count.entry(primary).or_default() += 1;
    }
}

/// Gives every region that is not lost new backups up to f where a memory node can take them
/// (module docs, "New backups").
fn fill_backups(config: &mut Configuration) {
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

fn check(config: &Configuration) -> Result<(), RemapError> {
    config.validate().map_err(|source| RemapError::Invalid {
        id: config.id,
        source,
    })
}

fn next_id(config: &Configuration) -> u64 {
    config
        .id
        .checked_add(1)
        .unwrap_or_else(|| panic!("configuration id {} cannot grow", config.id))
}

/// Checks the plan's invariants (a failure is a bug here, not in the input) and adds its changes.
fn finish(before: &Configuration, next: Configuration) -> Remap {
    assert!(
        next.id == before.id + 1,
        "next id={} before id={}",
        next.id,
        before.id
    );
    if let Err(error) = next.validate() {
        panic!("planned configuration {} is invalid: {error}", next.id);
    }
    for placement in &next.regions {
        let old = before.placement(placement.region);
        if let Some(old) = old {
            let lost = placement.state == RegionState::Lost;
            assert!(
                lost || old.state != RegionState::Lost,
                "{} came back from lost",
                placement.region
            );
            // Surviving data is never dropped: a region that still has data keeps a replica
            // that had it, as primary.
            assert!(
                lost || old.replicas().any(|node| node == placement.primary),
                "{}: primary {} held no copy in configuration {}",
                placement.region,
                placement.primary,
                before.id
            );
        }
    }
    let changes = diff(before, &next);
    Remap {
        config: next,
        changes,
    }
}
