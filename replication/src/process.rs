//! Node processes of a cluster on this host: the runtime behind `acre node` ([`ProcessNode`]:
//! region copies, rings and reply area as files in the cluster directory, a manifest
//! published), the count of a node's starts, and what a launcher or client waits on.
//!
//! `acre cluster up` writes the cluster file ([`crate::cluster_file`]) into a cluster directory
//! and starts one `acre node` process per node; each creates its files in the directory and
//! publishes a manifest (areas, keys, pid, tcp address) there. Clients
//! ([`crate::client::ClientNode`]) find everything through the manifests.

use crate::cluster_file::ClusterFile;
use crate::{ReplicaNode, Storage};
use acre_engine::addr::NodeId;
use acre_engine::directory::remove_node_files;
use acre_engine::directory::{self, NodeManifest};
use acre_engine::fabric::Fabric;
use acre_engine::fabric::doorbell::Doorbell;
use acre_engine::fabric::memory::NodeMemory;
use acre_engine::fabric::tcp::NicServer;
use acre_engine::fabric::transport_kind;
use acre_txn::TxnNode;
use acre_txn::directory::Directory;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// Why a cluster operation failed.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct ClusterError(pub String);

pub(crate) fn fail(what: &str) -> impl FnOnce(String) -> ClusterError + '_ {
    move |reason| ClusterError(format!("{what}: {reason}"))
}

/// One node of a process cluster running in this process: a memory node (`acre node`) or a
/// client node (`Db::connect`).
pub struct ProcessNode {
    replica: Option<ReplicaNode>,
    _nic: Option<NicServer>,
    dir: PathBuf,
    node: NodeId,
}

impl ProcessNode {
    /// Starts node `node` of the cluster in `cluster_file`'s directory and publishes its
    /// manifest.
    pub fn start(cluster_file: &Path, node: NodeId) -> Result<ProcessNode, ClusterError> {
        let file = ClusterFile::read(cluster_file)?;
        let dir = cluster_file
            .parent()
            .filter(|p| !p.as_os_str().is_empty())
            .unwrap_or(Path::new("."))
            .to_path_buf();
        if !file.config.members().any(|m| m == node) {
            return Err(ClusterError(format!(
                "{node} is not a node of the cluster in {}",
                cluster_file.display()
            )));
        }
        let io = |what: &'static str| move |e: std::io::Error| ClusterError(format!("{what}: {e}"));
        let incarnation = next_incarnation(&dir, node).map_err(io("count the node's starts"))?;
        remove_node_files(&dir, node).map_err(io("remove stale node files"))?;
        let doorbell = Doorbell::create_file(&directory::doorbell_path(&dir, node))
            .map_err(io("create the doorbell"))?;
        let memory = Arc::new(NodeMemory::new(node, Arc::new(doorbell)));
        let options = file.map_options();
        let (transport, nic, tcp_addr) =
            transport_kind::open_transport(&dir, node, file.transport, None, options, &memory)
                .map_err(|e| ClusterError(e.to_string()))?;
        let fabric = Arc::new(Fabric::new(memory, transport));
        let replica = ReplicaNode::start(
            Arc::new(file.config.clone()),
            fabric,
            Directory::manifests(dir.clone()),
            &Storage::Files {
                dir: dir.clone(),
                options,
            },
            file.ring_bytes,
            incarnation,
        )
        .map_err(|e| ClusterError(format!("start {node}: {e}")))?;
        let manifest = NodeManifest {
            node,
            pid: std::process::id(),
            transport: file.transport.name().to_string(),
            tcp_addr: tcp_addr.map(|a| a.to_string()),
            areas: replica.area_entries(),
        };
        manifest.write(&dir).map_err(io("publish the manifest"))?;
        Ok(ProcessNode {
            replica: Some(replica),
            _nic: nic,
            dir,
            node,
        })
    }

    pub fn txn(&self) -> &Arc<TxnNode> {
        self.replica.as_ref().expect("running").txn()
    }

    pub fn replica(&self) -> &ReplicaNode {
        self.replica.as_ref().expect("running")
    }

    /// Stops the worker, withdraws the manifest and removes the node's files.
    pub fn stop(mut self) {
        self.stop_inner();
    }

    fn stop_inner(&mut self) {
        if let Some(replica) = self.replica.take() {
            let _ = NodeManifest::remove(&self.dir, self.node);
            replica.stop();
            let _ = remove_node_files(&self.dir, self.node);
        }
    }
}

impl Drop for ProcessNode {
    fn drop(&mut self) {
        self.stop_inner();
    }
}

/// Counts a start of `node` in the cluster directory (`n<id>.incarnation`, a decimal number)
/// and returns how many starts came before this one. Only one process runs a node id at a
/// time (memory nodes are started once by `acre cluster up`; client ids are claimed by a lock),
/// so read, increment and replace need no further locking.
fn next_incarnation(dir: &Path, node: NodeId) -> std::io::Result<u64> {
    let path = dir.join(format!("{node}.incarnation"));
    let previous = match std::fs::read_to_string(&path) {
        Ok(text) => text.trim().parse::<u64>().map_err(|e| {
            std::io::Error::new(
                std::io::ErrorKind::InvalidData,
                format!("{}: {e}", path.display()),
            )
        })?,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => 0,
        Err(e) => return Err(e),
    };
    let temporary = path.with_extension("incarnation.new");
    std::fs::write(&temporary, format!("{}\n", previous + 1))?;
    std::fs::rename(&temporary, &path)?;
    Ok(previous)
}

/// Waits until every node in `nodes` has published its manifest.
pub fn wait_for_manifests(
    dir: &Path,
    nodes: impl Iterator<Item = NodeId> + Clone,
    timeout: Duration,
) -> Result<(), ClusterError> {
    let deadline = Instant::now() + timeout;
    loop {
        let mut missing = None;
        for node in nodes.clone() {
            match NodeManifest::read(dir, node) {
                Ok(Some(_)) => {}
                Ok(None) => {
                    missing = Some(node);
                    break;
                }
                Err(e) => return Err(ClusterError(format!("manifest of {node}: {e}"))),
            }
        }
        let Some(node) = missing else { return Ok(()) };
        if Instant::now() >= deadline {
            return Err(ClusterError(format!(
                "{node} did not publish its manifest within {timeout:?}: see its log in {}",
                dir.display()
            )));
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Whether process `pid` is running (Linux: it has a /proc entry and is not a zombie, which
/// nobody may reap in a container without an init).
pub fn process_alive(pid: u32) -> bool {
    let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
        return false;
    };
    // `pid (comm) state ...`: the state follows the last ')'.
    stat.rsplit_once(')')
        .and_then(|(_, rest)| rest.split_whitespace().next())
        .is_some_and(|state| state != "Z" && state != "X")
}
