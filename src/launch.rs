//! Starting and stopping the node processes of a cluster on this host: configs written into a
//! fresh cluster directory, one `acre node` child per node, readiness by manifest, SIGTERM to stop.

use acre::engine::addr::{NodeId, RegionId};
use acre::engine::directory::{self, NodeManifest};
use acre::engine::node::{NodeConfig, TransportKind};
use acre::engine::region::REGION_BYTES_DEFAULT;
use acre::engine::slab::BLOCK_BYTES_DEFAULT;
use anyhow::{Context, bail};
use std::path::{Path, PathBuf};
use std::process::{Child, Stdio};
use std::time::{Duration, Instant};

/// How long nodes may take to publish their manifests.
pub const START_TIMEOUT: Duration = Duration::from_secs(20);
/// Node 0 is reserved for a client endpoint in the launching process.
pub const CLIENT_NODE: NodeId = NodeId(0);

/// Node processes started by this process; stopped (and their directory removed) on drop.
pub struct ProcessCluster {
    dir: PathBuf,
    kind: TransportKind,
    node_count: u16,
    children: Vec<Child>,
}

impl ProcessCluster {
    /// Starts nodes 1..=node_count, each holding region `n`, in a new directory under `parent`.
    pub fn start(
        kind: TransportKind,
        parent: &Path,
        name: &str,
        node_count: u16,
    ) -> anyhow::Result<ProcessCluster> {
        let dir = parent.join(format!(
            "acre-{name}-{}-{}",
            kind.name(),
            std::process::id()
        ));
        directory::create_cluster_dir(&dir).with_context(|| format!("create {}", dir.display()))?;
        let mut cluster = ProcessCluster {
            dir,
            kind,
            node_count,
            children: Vec::new(),
        };
        if kind == TransportKind::Tcp {
            acre::engine::fabric::tcp::ClusterSecret::generate()
                .write_file(&cluster.dir.join(directory::SECRET_FILE))
                .context("write the cluster secret")?;
        }
        let exe = std::env::current_exe().context("find the acre binary")?;
        for n in 1..=node_count {
            let path = cluster.dir.join(format!("n{n}.toml"));
            let text = toml::to_string(&cluster.config(NodeId(n)))?;
            std::fs::write(&path, text).with_context(|| format!("write {}", path.display()))?;
            let child = std::process::Command::new(&exe)
                .arg("node")
                .arg("--config")
                .arg(&path)
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .spawn()
                .context("start a node process")?;
            cluster.children.push(child);
        }
        Ok(cluster)
    }

    /// The configuration of node `node` (node 0 is the client: no regions).
    pub fn config(&self, node: NodeId) -> NodeConfig {
        NodeConfig {
            node,
            cluster_dir: self.dir.clone(),
            transport: self.kind,
            listen: (self.kind == TransportKind::Tcp).then(|| "127.0.0.1:0".to_string()),
            peers: (0..=self.node_count)
                .map(NodeId)
                .filter(|&n| n != node)
                .collect(),
            regions: if node == CLIENT_NODE {
                Vec::new()
            } else {
                vec![RegionId(node.0 as u32)]
            },
            region_bytes: REGION_BYTES_DEFAULT,
            ring_bytes: acre::engine::channel::RING_BYTES_DEFAULT,
            block_bytes: BLOCK_BYTES_DEFAULT,
            persist: "auto".into(),
        }
    }

    /// Waits until every node has published its manifest.
    pub fn wait_ready(&mut self) -> anyhow::Result<Vec<NodeManifest>> {
        let deadline = Instant::now() + START_TIMEOUT;
        let mut manifests = Vec::new();
        for n in 1..=self.node_count {
            loop {
                if let Some(status) = self.children[n as usize - 1].try_wait()? {
                    bail!("node {n} exited during start-up with {status}");
                }
                if let Some(manifest) = NodeManifest::read(&self.dir, NodeId(n))? {
                    manifests.push(manifest);
                    break;
                }
                if Instant::now() >= deadline {
                    bail!("node {n} did not start within {START_TIMEOUT:?}");
                }
                std::thread::sleep(Duration::from_millis(20));
            }
        }
        Ok(manifests)
    }

    pub fn pids(&self) -> Vec<u32> {
        self.children.iter().map(Child::id).collect()
    }

    /// Sends SIGTERM to every node and checks that each exits cleanly.
    pub fn stop(mut self) -> anyhow::Result<()> {
        self.stop_children()
    }

    fn stop_children(&mut self) -> anyhow::Result<()> {
        for child in &self.children {
            let _ = acre::engine::signal::terminate(child.id());
        }
        let mut failure = None;
        for (i, mut child) in self.children.drain(..).enumerate() {
            let status = child.wait().context("wait for a node process")?;
            if !status.success() && failure.is_none() {
                failure = Some(format!("node {} exited with {status} after SIGTERM", i + 1));
            }
        }
        let _ = std::fs::remove_dir_all(&self.dir);
        match failure {
            Some(message) => bail!(message),
            None => Ok(()),
        }
    }
}

impl Drop for ProcessCluster {
    fn drop(&mut self) {
        if !self.children.is_empty() {
            let _ = self.stop_children();
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}
