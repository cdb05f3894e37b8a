//! `acre cluster up` on a cluster that runs but lost processes
//! (docs/failures.md#a-node-that-comes-back). `up` brings back what its CM's last configuration
//! is missing:
//! - a memory node that the configuration still lists but whose process is gone (killed while
//!   the CM could not reconfigure, for instance with a majority of its replicas down, or
//!   before its lease expired) restarts in place from its region copies and logs, as in a
//!   whole-cluster restart ([`launch::restart`] with those nodes), where it must: when the CM
//!   lacks a majority, or when some region it holds has no complete replica on a running
//!   member. Otherwise its copies, which nothing vouches for (no block sums after a kill),
//!   are not served again: `up` waits for the CM to remove it and it rejoins as a new node,
//!   as below. A standalone CM replica whose process is gone restarts in place;
//! - a memory node the CM removed after its failure (its lease expired) whose files are still
//!   in place rejoins as a new node (`remove-node` moves a gracefully removed node's files aside, so
//!   they do not count):
//!   ids are never reused, since records, locks and votes of its earlier run still name the old
//!   id and recovery treats them as a removed node's. Its files move to `retired/<node>` in the
//!   cluster directory (kept: if a region was lost, they may hold its last copy), and
//!   `add-node` starts a node in its failure domain, which takes the missing backups of the
//!   degraded regions and copies them from their primaries before it counts as a replica.

use crate::launch::{self, AddNodeArgs, node_list};
use acre::cluster::{self, ClusterFile};
use acre::engine::addr::NodeId;
use acre::engine::directory;
use acre::txn::{Configuration, RegionState};
use anyhow::{Context, bail};
use std::collections::BTreeSet;
use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::{Duration, Instant};

/// Where the files of a node that rejoined as a new node go, under the cluster directory.
pub const RETIRED_DIR: &str = "retired";

/// What `up` finds missing in a running cluster.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Missing {
    /// Memory nodes of the configuration whose processes are gone.
    pub members: Vec<NodeId>,
    /// Standalone CM replicas whose processes are gone.
    pub cms: Vec<NodeId>,
    /// Memory nodes the configuration no longer lists whose files are still in place.
    pub removed: Vec<NodeId>,
}

impl Missing {
    pub fn is_empty(&self) -> bool {
        self.members.is_empty() && self.cms.is_empty() && self.removed.is_empty()
    }
}

/// What the cluster in `dir` (cluster file `file`, which runs a CM) is missing.
pub fn missing(dir: &Path, file: &ClusterFile) -> anyhow::Result<Missing> {
    let config = cluster::current_configuration(dir, file);
    let running: BTreeSet<NodeId> = launch::running_nodes(dir, Some(file))
        .into_iter()
        .map(|(node, _)| node)
        .collect();
    let running_cms: BTreeSet<NodeId> = launch::running_cms(dir, Some(file))
        .into_iter()
        .map(|(node, _)| node)
        .collect();
    let with_files = cluster::nodes_with_area_files(dir)
        .with_context(|| format!("look for nodes' files in {}", dir.display()))?;
    Ok(Missing {
        members: (config.nodes.iter())
            .filter(|node| !running.contains(node))
            .copied()
            .collect(),
        cms: (file.standalone_cms().into_iter())
            .filter(|node| !running_cms.contains(node))
            .collect(),
        removed: (with_files.into_iter())
            .filter(|node| {
                node.0 < cluster::CLIENT_ID_BASE
                    && !config.nodes.contains(node)
                    && !running.contains(node)
            })
            .collect(),
    })
}

/// `acre cluster up` on the directory of a running cluster with a CM: restarts its members
/// and standalone CM replicas whose processes are gone, and adds a new node in place of each
/// node the CM removed whose files remain. Refuses, as before, when nothing is missing.
///
/// A member whose process is gone does not restart in place when the CM can remove it (a
/// majority of its replicas run) and running members hold another complete replica of every
/// region it holds a complete copy of: its copies have no block sums (a node killed or
/// stopped alone writes none), so it waits for its removal and comes back as a new node that
/// copies its regions from those replicas.
///
/// A member that cannot vouch for one of its primary copies (marked damaged: a node that failed
/// on a loss of acknowledged records marks every copy, and a restart that finds one damaged
/// marks it) does not restart in place when running members hold another complete replica of
/// every region it holds a complete copy of: the running processes still read that copy where it is mapped,
/// and emptying it would show its objects as absent. The other members restart first (they
/// may be the CM's majority); it comes back as a new node once the CM has removed it, which
/// loses nothing. Where the CM does not remove it, or a region of it has no running replica
/// (its other replicas are missing too), it restarts in place as before, emptying the copy,
/// which is then copied again: a window of absent reads, rather than a region lost.
pub fn up_running(dir: &Path, file: ClusterFile) -> anyhow::Result<ExitCode> {
    let missing = missing(dir, &file)?;
    if missing.is_empty() {
        bail!(
            "a cluster is already running in {} with every node of its configuration: run \
             `acre cluster down --dir {}` first to start another",
            dir.display(),
            dir.display()
        );
    }
    let mut out = crate::output::stdout();
    let recoverable = recoverable_without(dir, &file, &missing.members);
    let unvouched = unvouched_members(dir, &file, &missing.members)?;
    let mut waiting = Vec::new();
    // A member whose process is gone left copies that only its failure vouches for: no block
    // sums (a node killed, or stopped alone, writes none). Where running members hold another
    // complete replica of everything it held and the CM can remove it, it comes back as a new
    // node, its copies taken from those replicas, rather than serve them unproven.
    let config = cluster::current_configuration(dir, &file);
    if cm_can_act(dir, &file, &config) {
        // The CM removes a suspect only when a majority of the members answer its probe:
        // those that wait answer nothing, so fewer than half of the members may wait.
        let may_wait = config.nodes.len().div_ceil(2).saturating_sub(1);
        for &node in &recoverable {
            if unvouched.contains(&node) {
                continue;
            }
            if waiting.len() >= may_wait {
                break;
            }
            writeln!(
                out,
                "{node} left copies nothing vouches for (no block sums: it was killed or \
                 stopped alone), and running members hold another complete replica of each: \
                 it comes back as a new node, its regions copied from them, once the CM \
                 removed it"
            )?;
            waiting.push(node);
        }
    }
    for node in unvouched {
        let log = cluster::node_log_path(dir, node);
        if recoverable.contains(&node) {
            writeln!(
                out,
                "{node} cannot vouch for a primary copy of its earlier run (see {}): it does \
                 not restart in place, and comes back as a new node once the CM removed it",
                log.display()
            )?;
            waiting.push(node);
        } else {
            writeln!(
                out,
                "{node} cannot vouch for a primary copy of its earlier run (see {}), and no \
                 running node holds all its regions: it restarts in place, and the running \
                 processes may find that copy's objects absent until the region moves",
                log.display()
            )?;
        }
    }
    let in_place: Vec<NodeId> = (missing.members.iter())
        .filter(|node| !waiting.contains(node))
        .copied()
        .collect();
    // Those may refuse at their start (a damage found only there): they wait too.
    let beside: Vec<NodeId> = (in_place.iter())
        .filter(|node| recoverable.contains(node))
        .copied()
        .collect();
    if (!in_place.is_empty() || !missing.cms.is_empty())
        && let Err(error) = launch::restart(dir, &file, &in_place, &missing.cms, &beside)
    {
        // The CM may have removed a dead member between the look above and the restart
        // request (its lease ran out meanwhile): that node now rejoins as a new one. A member
        // may have found at its start a primary copy it cannot vouch for (it marked it and
        // refused): it waits for the CM to remove it. Any other failure stands.
        let now = self::missing(dir, &file)?;
        // Among those it restarted: the waiting ones' removal is expected.
        let overtaken: Vec<NodeId> = (removed_meanwhile(&missing, &now).into_iter())
            .filter(|node| in_place.contains(node))
            .collect();
        let refused = unvouched_members(dir, &file, &beside)?;
        if overtaken.is_empty() && refused.is_empty() {
            return Err(error);
        }
        writeln!(out, "{error:#}")?;
        if !overtaken.is_empty() {
            writeln!(out, "the CM removed {} meanwhile", node_list(&overtaken))?;
        }
        let mut fallback = Vec::new();
        if !refused.is_empty() {
            writeln!(
                out,
                "{} cannot vouch for a primary copy: {} comes back as a new node once the CM \
                 removed it",
                node_list(&refused),
                if refused.len() == 1 { "it" } else { "each" }
            )?;
            // Before the others start again: they would wait for the refused nodes' CM
            // replicas, whose manifests the restart removed, as long as those are members.
            if !wait_until_removed(dir, &file, &refused, &mut out)? {
                fallback = refused.clone();
            }
        }
        // The restart stopped what it started: the others start again, without those removed.
        let now = self::missing(dir, &file)?;
        let again: Vec<NodeId> = (in_place.iter())
            .filter(|node| now.members.contains(node))
            .copied()
            .collect();
        let again_beside: Vec<NodeId> = (beside.iter())
            .filter(|node| !fallback.contains(node))
            .copied()
            .collect();
        if !again.is_empty() || !now.cms.is_empty() {
            launch::restart(dir, &file, &again, &now.cms, &again_beside)?;
        }
    }
    if !waiting.is_empty() && !wait_until_removed(dir, &file, &waiting, &mut out)? {
        // Rather than leave them out for good: in place, as before (those still members).
        let now = self::missing(dir, &file)?;
        let members: Vec<NodeId> = (waiting.iter())
            .filter(|node| now.members.contains(node))
            .copied()
            .collect();
        if !members.is_empty() {
            launch::restart(dir, &file, &members, &[], &[])?;
        }
    }
    // Whatever the CM removed by now, of what was missing, rejoins as a new node.
    let removed = self::missing(dir, &file)?.removed;
    for &node in &removed {
        let retired = retire(dir, node)?;
        writeln!(
            out,
            "{node} was removed from the cluster (its lease expired): it rejoins as a new node; \
             the files of its earlier run are in {} (remove them once `acre cluster status` \
             shows every region with all its replicas)",
            retired.display()
        )?;
        let domain = (file.config.domains.iter())
            .find(|d| d.node == node)
            .map(|d| d.domain.clone());
        launch::add_node(&AddNodeArgs {
            dir: dir.to_path_buf(),
            id: None,
            domain,
        })?;
    }
    Ok(ExitCode::SUCCESS)
}

/// The members among `missing` (whose processes are gone) such that every region they hold a
/// complete copy of, as primary or backup (lost ones aside), has another complete replica on a
/// member that runs: the CM recovers those regions if it removes them, and their copies are
/// not the last intact ones.
fn recoverable_without(dir: &Path, file: &ClusterFile, missing: &[NodeId]) -> Vec<NodeId> {
    let config = cluster::current_configuration(dir, file);
    let running = |node: &NodeId| config.nodes.contains(node) && !missing.contains(node);
    (missing.iter())
        .filter(|&&node| {
            (config.regions.iter())
                .filter(|p| p.state != RegionState::Lost)
                .filter(|p| p.complete_replicas().any(|r| r == node))
                .all(|p| p.complete_replicas().any(|r| r != node && running(&r)))
        })
        .copied()
        .collect()
}

/// Whether a majority of the CM's replicas run, so that it can remove a member whose lease
/// ran out (a member that waits for its removal otherwise waits the whole [`REMOVAL_WAIT`]).
fn cm_can_act(dir: &Path, file: &ClusterFile, config: &Configuration) -> bool {
    let running: BTreeSet<NodeId> = (launch::running_nodes(dir, Some(file)).into_iter())
        .chain(launch::running_cms(dir, Some(file)))
        .map(|(node, _)| node)
        .collect();
    let replicas = config.cm_replicas.len();
    let up = (config.cm_replicas.iter())
        .filter(|replica| running.contains(replica))
        .count();
    replicas > 0 && up > replicas / 2
}

/// The members among `members` (whose processes are gone) holding a primary copy, in the
/// CM's last configuration, that is marked damaged ([`acre::replication::sums::mark_damaged`]).
/// A lost region's copy does not count: nobody reads it.
fn unvouched_members(
    dir: &Path,
    file: &ClusterFile,
    members: &[NodeId],
) -> anyhow::Result<Vec<NodeId>> {
    let config = cluster::current_configuration(dir, file);
    let mut found = Vec::new();
    for &node in members {
        let primaries: BTreeSet<_> = (config.regions.iter())
            .filter(|p| p.primary == node && p.state != RegionState::Lost)
            .map(|p| p.region)
            .collect();
        let files = directory::node_area_files(dir, node)
            .with_context(|| format!("list {node}'s files in {}", dir.display()))?;
        let marked = (files.iter())
            .filter(|(area, _)| primaries.contains(area))
            .any(|(_, path)| acre::replication::sums::damaged_path(path).exists());
        if marked {
            found.push(node);
        }
    }
    Ok(found)
}

/// Waits until the CM's configuration no longer lists `nodes` (their leases expire, then the
/// CM removes them), saying so; `false` if it still lists them after the wait (the CM may lack
/// a majority).
fn wait_until_removed(
    dir: &Path,
    file: &ClusterFile,
    nodes: &[NodeId],
    out: &mut impl std::io::Write,
) -> anyhow::Result<bool> {
    let lease = file.cm.as_ref().map_or(Duration::ZERO, |cm| cm.lease());
    let limit = REMOVAL_WAIT + 4 * lease;
    writeln!(
        out,
        "waiting up to {:.0} s for the CM to remove {} (leases of {} ms)",
        limit.as_secs_f64(),
        node_list(nodes),
        lease.as_millis()
    )?;
    let began = Instant::now();
    loop {
        let config = cluster::current_configuration(dir, file);
        if nodes.iter().all(|node| !config.nodes.contains(node)) {
            writeln!(
                out,
                "  removed in configuration {} after {:.0} ms",
                config.id,
                began.elapsed().as_secs_f64() * 1e3
            )?;
            return Ok(true);
        }
        if began.elapsed() >= limit {
            writeln!(
                out,
                "  the CM did not remove {} within {:.0} s (it may lack a majority of its \
                 replicas): {} restarts in place instead (a primary copy marked damaged is \
                 emptied, and the running processes may find its objects absent until the \
                 region moves)",
                node_list(nodes),
                limit.as_secs_f64(),
                if nodes.len() == 1 { "it" } else { "each" },
            )?;
            return Ok(false);
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// How long `up` waits for the CM to remove a member that cannot restart in place, beyond a
/// few of its leases.
const REMOVAL_WAIT: Duration = Duration::from_secs(30);

/// The members `before` meant to restart in place that `now` finds removed by the CM.
fn removed_meanwhile(before: &Missing, now: &Missing) -> Vec<NodeId> {
    (before.members.iter())
        .filter(|node| now.removed.contains(node))
        .copied()
        .collect()
}

/// Moves the area files (region copies, rings, and whatever sits next to them) and the
/// doorbell of `node`, which the CM removed, to `retired/<node>` in `dir`. Its log stays, so
/// that its id is never used again, and so does its manifest: a process that starts links to
/// every CM replica and waits for each one's addresses there, a dead one's included (a Raft
/// voter's address, dialled in vain until it comes back). Returns the directory.
pub fn retire(dir: &Path, node: NodeId) -> anyhow::Result<PathBuf> {
    let retired = dir.join(RETIRED_DIR).join(node.to_string());
    std::fs::create_dir_all(&retired).with_context(|| format!("create {}", retired.display()))?;
    let prefix = format!("{node}-");
    let doorbell = directory::doorbell_path(dir, node);
    for entry in std::fs::read_dir(dir).with_context(|| format!("read {}", dir.display()))? {
        let path = entry?.path();
        let name = path.file_name().and_then(|n| n.to_str()).unwrap_or("");
        if name.starts_with(&prefix) || path == doorbell {
            let to = retired.join(name);
            std::fs::rename(&path, &to)
                .with_context(|| format!("move {} to {}", path.display(), to.display()))?;
        }
    }
    Ok(retired)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_member_removed_while_its_restart_was_asked_for_is_found_removed_meanwhile() {
        let before = Missing {
            members: vec![NodeId(1), NodeId(3)],
            ..Missing::default()
        };
        let now = Missing {
            members: vec![NodeId(3)],
            removed: vec![NodeId(1), NodeId(7)],
            ..Missing::default()
        };
        assert_eq!(removed_meanwhile(&before, &now), vec![NodeId(1)]);
        assert!(removed_meanwhile(&before, &before).is_empty());
    }

    #[test]
    fn retire_moves_the_node_s_files_and_only_them() {
        let dir = std::env::temp_dir().join(format!("acre-retire-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let mine = ["n2-r1-00ab.region", "n2-r1-00ab.region.sums", "n2.doorbell"];
        let others = ["n20-r1-00ab.region", "n1-r2-00cd.region", "n2.log"];
        for name in mine.iter().chain(&others) {
            std::fs::write(dir.join(name), b"x").unwrap();
        }

        let retired = retire(&dir, NodeId(2)).unwrap();

        assert_eq!(retired, dir.join("retired").join("n2"));
        for name in mine {
            assert!(retired.join(name).exists(), "{name} retired");
            assert!(!dir.join(name).exists(), "{name} moved");
        }
        for name in others {
            assert!(dir.join(name).exists(), "{name} stays");
        }
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
