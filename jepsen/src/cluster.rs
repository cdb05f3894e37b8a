//! The cluster under test: node processes started, restarted and stopped through the `acre`
//! command line, as an operator would (`acre cluster up`, `acre cluster down`), and the
//! processes found through the manifests they publish in the cluster directory.
//!
//! The harness never starts a node itself: a node it killed comes back through `acre cluster
//! up --dir D` on the running cluster, which has a node the configuration manager removed
//! (or will remove: its regions run elsewhere) rejoin as a new node, and restarts in place a
//! member whose copies are needed. So the harness tests the recovery an operator would get.

use crate::netns::Network;
use acre_engine::addr::NodeId;
use acre_engine::clock::{ClockControlFile, control_file_path};
use acre_engine::directory::NodeManifest;
use acre_engine::procfs;
use acre_replication::cluster_file::{CLIENT_ID_BASE, CLUSTER_FILE, ClusterFile};
use acre_replication::cm_status::CmStatusFile;
use acre_replication::process::process_alive;
use acre_replication::restart::nodes_with_area_files;
use acre_txn::config::Configuration;
use std::fs::File;
use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

/// Standalone CM processes (`acre cm`) by default: the configuration manager runs apart from
/// the memory nodes, and a CM process that dies restarts in place under its id.
pub const CM_PROCESSES: u16 = 3;

/// How the cluster is built.
#[derive(Clone, Debug)]
pub struct Spec {
    pub nodes: u16,
    /// `shm` or `tcp`.
    pub transport: String,
    /// `one-sided` or `messages`.
    pub commit: String,
    pub lease_ms: u64,
    pub region_bytes: u64,
    /// Client ids the cluster provides (each client worker process needs one; a `Db` is one).
    pub clients: u16,
    /// Run the configuration manager inside the first 2f+1 memory nodes' processes instead of
    /// [`CM_PROCESSES`] standalone ones (a removed CM-hosting node's replica is then replaced
    /// through the Raft group's membership change). Nodes in namespaces need it.
    pub cm_in_nodes: bool,
}

/// A running cluster of node processes in `dir`.
pub struct Cluster {
    acre: PathBuf,
    dir: PathBuf,
    /// Where the output of every `acre cluster` command goes (appended).
    log: PathBuf,
    /// The nodes' namespaces, when each node runs in one (tcp, `acre cluster up --netns`).
    network: Option<Network>,
    /// Memory nodes at the start: a fault that took one is healed when as many run, and as
    /// many namespaces are kept ready for rejoining nodes.
    nodes: u16,
    /// Standalone CM processes at the start.
    cm_processes: usize,
}

/// A memory node process found through its manifest.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct NodeProcess {
    pub node: NodeId,
    pub pid: u32,
}

impl Cluster {
    /// Starts a cluster with its configuration manager in [`CM_PROCESSES`] standalone processes
    /// (or in the nodes: [`Spec::cm_in_nodes`]) and a clock control file per process, so the
    /// clock nemesis can skew each one's clock. With `network`, each node runs in a namespace of its own on it (made
    /// here). `log` receives the commands' output.
    pub fn up(
        acre: &Path,
        dir: &Path,
        spec: &Spec,
        log: &Path,
        network: Option<Network>,
    ) -> Result<Cluster, String> {
        let cluster = Cluster {
            acre: acre.to_path_buf(),
            dir: dir.to_path_buf(),
            log: log.to_path_buf(),
            network,
            nodes: spec.nodes,
            cm_processes: if spec.cm_in_nodes {
                0
            } else {
                usize::from(CM_PROCESSES)
            },
        };
        let mut placement = Vec::new();
        if let Some(network) = &cluster.network {
            network.add_nodes((1..=spec.nodes).map(NodeId))?;
            placement = vec![
                "--netns".to_string(),
                network.placement().prefix.clone(),
                "--netns-subnet".to_string(),
                network.placement().subnet.to_string(),
            ];
        }
        let mut args: Vec<String> = vec![
            "cluster".to_string(),
            "up".to_string(),
            "--dir".to_string(),
            dir.display().to_string(),
            "--nodes".to_string(),
            spec.nodes.to_string(),
            "--transport".to_string(),
            spec.transport.clone(),
            "--commit".to_string(),
            spec.commit.clone(),
            "--lease-ms".to_string(),
            spec.lease_ms.to_string(),
            "--region-bytes".to_string(),
            spec.region_bytes.to_string(),
            "--clients".to_string(),
            spec.clients.to_string(),
            "--cm-processes".to_string(),
            cluster.cm_processes.to_string(),
            "--clock-control".to_string(),
        ];
        args.extend(placement);
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        cluster.acre_command(&args)?;
        Ok(cluster)
    }

    /// The nodes' network, when they run in namespaces.
    pub fn network(&self) -> Option<&Network> {
        self.network.as_ref()
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The cluster file clients connect with.
    pub fn cluster_file(&self) -> PathBuf {
        self.dir.join(CLUSTER_FILE)
    }

    /// Runs `acre ARGS`, its output appended to the log; an exit code other than 0 is an error
    /// with the code (the log says why).
    fn acre_command(&self, args: &[&str]) -> Result<(), String> {
        let output = File::options()
            .create(true)
            .append(true)
            .open(&self.log)
            .map_err(|e| format!("open {}: {e}", self.log.display()))?;
        let errors = output
            .try_clone()
            .map_err(|e| format!("open {}: {e}", self.log.display()))?;
        let started = std::time::Instant::now();
        let mut log = errors
            .try_clone()
            .map_err(|e| format!("open {}: {e}", self.log.display()))?;
        let status = Command::new(&self.acre)
            .args(args)
            .stdin(Stdio::null())
            .stdout(output)
            .stderr(errors)
            .status()
            .map_err(|e| format!("run {}: {e}", self.acre.display()))?;
        // What the harness ran and how long it took, between the commands' own lines.
        let _ = writeln!(
            log,
            "[jepsen] `acre {}`: {status} after {:.1} s",
            args.join(" "),
            started.elapsed().as_secs_f64()
        );
        match status.code() {
            Some(0) => Ok(()),
            _ => Err(format!(
                "`acre {}` ended with {status} (its output: {})",
                args.join(" "),
                self.log.display()
            )),
        }
    }

    /// Brings back every member that is not running, a node for each one the configuration
    /// manager removed, and every CM process (`acre cluster up --dir D` on the running
    /// cluster: restart in place, or rejoin as a new node). A removed node whose process still
    /// runs (cut off by a partition: over tcp the members refuse it, nothing ends it) is killed
    /// first, so that it rejoins, as an operator would do; a CM replica it hosted is replaced
    /// through the CM's Raft group. Nothing missing is not an error.
    pub fn restore(&self) -> Result<(), String> {
        if let Some(config) = self.configuration() {
            for process in self.processes() {
                if !config.nodes.contains(&process.node) {
                    let _ = self.signal(process.node, acre_engine::signal::kill);
                }
            }
        }
        if self.whole() && self.removed().is_empty() {
            return Ok(());
        }
        if let Some(network) = &self.network {
            // Rejoining nodes take the next free ids (`acre cluster add-node`): each needs its
            // namespace before it starts.
            let highest = NodeManifest::list(&self.dir)
                .unwrap_or_default()
                .into_iter()
                .chain(self.configuration().map(|c| c.nodes).unwrap_or_default())
                .map(|n| n.0)
                .filter(|&id| id < CLIENT_ID_BASE)
                .max()
                .unwrap_or(0);
            let ahead = self.removed().len() as u16 + self.nodes;
            network.add_nodes((highest + 1..=highest + ahead).map(NodeId))?;
        }
        self.acre_command(&["cluster", "up", "--dir", &self.dir.display().to_string()])
    }

    /// Memory nodes the configuration no longer lists whose processes are gone and whose
    /// files are still in place: `acre cluster up` makes each rejoin as a new node.
    pub fn removed(&self) -> Vec<NodeId> {
        let Some(config) = self.configuration() else {
            return Vec::new();
        };
        let running: Vec<NodeId> = self.processes().iter().map(|p| p.node).collect();
        // As `acre cluster up` finds them (src/rejoin.rs).
        nodes_with_area_files(&self.dir)
            .unwrap_or_default()
            .into_iter()
            .filter(|node| node.0 < CLIENT_ID_BASE)
            .filter(|node| !config.nodes.contains(node) && !running.contains(node))
            .collect()
    }

    /// Writes `acre cluster status` into the cluster log: the configuration, the nodes, and
    /// what each ring keeps (the oldest transaction pinning it), as the run left them.
    pub fn log_status(&self) -> Result<(), String> {
        self.acre_command(&[
            "cluster",
            "status",
            "--dir",
            &self.dir.display().to_string(),
        ])
    }

    /// Stops every process of the cluster and keeps its files (`acre cluster down`).
    pub fn down(&self) -> Result<(), String> {
        self.acre_command(&["cluster", "down", "--dir", &self.dir.display().to_string()])
    }

    /// SIGKILL of every memory node and standalone CM process at once, as a power cut would
    /// stop them (no block sums written, appends and installs cut short); returns once they
    /// are gone.
    pub fn kill_all(&self) -> Result<(), String> {
        let processes: Vec<NodeProcess> = self
            .processes()
            .into_iter()
            .chain(self.cm_processes())
            .collect();
        for process in &processes {
            // One gone meanwhile is as good as killed.
            let _ = self.signal(process.node, acre_engine::signal::kill);
        }
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
        for process in &processes {
            while process_alive(process.pid) {
                if std::time::Instant::now() > deadline {
                    return Err(format!(
                        "{} (pid {}) still runs 10 s after SIGKILL",
                        process.node, process.pid
                    ));
                }
                std::thread::sleep(std::time::Duration::from_millis(5));
            }
        }
        Ok(())
    }

    /// The memory node processes that run now, by node id.
    pub fn processes(&self) -> Vec<NodeProcess> {
        NodeManifest::list(&self.dir)
            .unwrap_or_default()
            .into_iter()
            .filter(|node| node.0 < CLIENT_ID_BASE)
            .filter_map(|node| {
                let manifest = NodeManifest::read(&self.dir, node).ok()??;
                (!manifest.areas.is_empty() && process_alive(manifest.pid)).then_some(NodeProcess {
                    node,
                    pid: manifest.pid,
                })
            })
            .collect()
    }

    /// Whether every member runs, as many memory nodes as the cluster started with, and every
    /// CM process.
    pub fn whole(&self) -> bool {
        self.missing().is_empty()
            && self.processes().len() >= usize::from(self.nodes)
            && self.cm_processes().len() >= self.cm_processes
    }

    /// The standalone CM processes that run now.
    pub fn cm_processes(&self) -> Vec<NodeProcess> {
        NodeManifest::list(&self.dir)
            .unwrap_or_default()
            .into_iter()
            .filter_map(|node| {
                let manifest = NodeManifest::read(&self.dir, node).ok()??;
                (manifest.areas.is_empty()
                    && manifest.cm_link.is_some()
                    && process_alive(manifest.pid))
                .then_some(NodeProcess {
                    node,
                    pid: manifest.pid,
                })
            })
            .collect()
    }

    /// Members of the CM's last configuration whose process does not run.
    pub fn missing(&self) -> Vec<NodeId> {
        let running: Vec<NodeId> = self.processes().iter().map(|p| p.node).collect();
        let members = self.configuration().map(|c| c.nodes).unwrap_or_default();
        members
            .into_iter()
            .filter(|node| !running.contains(node))
            .collect()
    }

    /// What the configuration manager last published: its committed configuration and the
    /// leader that wrote it. `None` before the first one, or when it cannot be read.
    pub fn status(&self) -> Option<CmStatusFile> {
        CmStatusFile::read(&self.dir).ok().flatten()
    }

    /// The configuration in force (the CM's committed one, else the cluster file's).
    pub fn configuration(&self) -> Option<Configuration> {
        match self.status() {
            Some(status) => Some(status.committed),
            None => ClusterFile::read(&self.cluster_file())
                .ok()
                .map(|f| f.config),
        }
    }

    /// The clock control file of `node`'s process (created by `up`); `None` for a node that
    /// joined later (it runs on the system clock).
    pub fn clock(&self, node: NodeId) -> Option<ClockControlFile> {
        ClockControlFile::open(&control_file_path(&self.dir, node)).ok()
    }

    /// Applies `action` (SIGKILL, SIGSTOP, SIGCONT: `acre_engine::signal`) to `node`'s process,
    /// if it runs. A pid reused by another process since the manifest was written is left
    /// alone (its start time differs).
    pub fn signal(
        &self,
        node: NodeId,
        action: fn(u32) -> std::io::Result<()>,
    ) -> Result<(), String> {
        let manifest = NodeManifest::read(&self.dir, node)
            .ok()
            .flatten()
            .ok_or_else(|| format!("{node} has no manifest"))?;
        let same = manifest
            .started
            .is_none_or(|started| procfs::start_time(manifest.pid).is_ok_and(|now| now == started));
        if !same || !process_alive(manifest.pid) {
            return Err(format!("{node} does not run"));
        }
        action(manifest.pid).map_err(|e| format!("{node} (pid {}): {e}", manifest.pid))
    }
}
