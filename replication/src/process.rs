//! Node processes of a cluster on this host: the runtime behind `acre node` ([`ProcessNode`]:
//! region copies, rings and reply area as files in the cluster directory, a manifest
//! published), the count of a node's starts, and what a launcher or client waits on.
//!
//! `acre cluster up` writes the cluster file ([`crate::cluster_file`]) into a cluster directory
//! and starts one `acre node` process per node; each creates its files in the directory and
//! publishes a manifest (areas, keys, pid, tcp address) there. Client nodes (the `client`
//! module, which builds on this one) find everything through the manifests.

use crate::cluster_file::{ClusterFile, ClusterFileError};
use crate::liveness::LockFiles;
use crate::restart::{self, KeptData};
use crate::{AdoptError, ReplicaNode, StartError, Storage};
use acre_engine::addr::{NodeId, RegionId};
use acre_engine::clock::{self, ControlFileError};
use acre_engine::directory::remove_node_files;
use acre_engine::directory::{self, NodeManifest};
use acre_engine::fabric::doorbell::Doorbell;
use acre_engine::fabric::memory::NodeMemory;
use acre_engine::fabric::transport_kind::{self, NodeNic, OpenError, OpenedTransport};
use acre_engine::fabric::{Fabric, Membership, Transport};
use acre_engine::region::AccessKey;
use acre_engine::{procfs, signal};
use acre_txn::TxnNode;
use acre_txn::config::{Configuration, NotAdopted};
use acre_txn::directory::Directory;
use std::io;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

const CM_ADDRS_POISONED: &str = "a thread panicked while publishing the CM addresses";

/// Why a node process could not start.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum NodeStartError {
    #[error(transparent)]
    ClusterFile(#[from] ClusterFileError),
    #[error("{node} is not a node of the cluster in {path}: use an id the cluster file lists")]
    NotAMember { node: NodeId, path: PathBuf },
    /// The cluster file lists it, but the configuration manager removed it since (its lease
    /// expired): it cannot rejoin until nodes can be added back.
    #[error(
        "{node} was removed from the cluster by its configuration manager (configuration \
         {config} no longer lists it; see `acre cluster status`): it cannot rejoin"
    )]
    Removed { node: NodeId, config: u64 },
    #[error(
        "{node} cannot join or restart from its files in the cluster in {path}: it runs no \
         configuration manager (started with --cm 0), so its membership cannot change and \
         nothing would recover its transactions"
    )]
    NoCm { node: NodeId, path: PathBuf },
    #[error(
        "{node} cannot join: the id is in use (configuration {config} or the cluster file names \
         it, and ids are never reused); `acre cluster add-node` picks a free one"
    )]
    InUse { node: NodeId, config: u64 },
    #[error("{node} cannot {what} ({path}): {source}")]
    Io {
        node: NodeId,
        what: &'static str,
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    /// `netns.toml` in the cluster directory is unusable, or gives this node no address.
    #[error("{node} cannot learn the address to bind to: {source}")]
    Netns {
        node: NodeId,
        #[source]
        source: crate::netns::NetnsError,
    },
    #[error("{node} cannot open its transport: {source}")]
    Transport {
        node: NodeId,
        #[source]
        source: OpenError,
    },
    /// Its clock control file (docs/failures.md#clock) is there but cannot be used.
    #[error("{node} cannot read its clock: {source}")]
    Clock {
        node: NodeId,
        #[source]
        source: ControlFileError,
    },
    /// Another process runs this node.
    #[error(
        "{node} is already running (pid {pid}): stop it first, or remove {} if that pid is \
         not an acre node",
        manifest.display()
    )]
    Running {
        node: NodeId,
        pid: u32,
        manifest: PathBuf,
    },
    /// The node's files hold data of an earlier run: starting on them alone, or replacing
    /// them, would serve copies that missed what committed meanwhile, or lose data; `acre
    /// cluster up` brings the node back (docs/failures.md#a-node-that-comes-back).
    #[error(
        "{node} found data of an earlier run in {} ({kept}) and does not start on it alone: \
         it would serve copies that missed what committed while it was away. `acre cluster up \
         --dir {}` brings it back: restarted from its files, with recovery, while its \
         configuration lists it, or rejoining as a new node that copies its regions from live \
         replicas once the CM removed it. To start fresh, remove the cluster's data with `acre \
         cluster down --dir {} --purge` and start a new cluster",
        dir.display(),
        dir.display(),
        dir.display()
    )]
    KeptData {
        node: NodeId,
        dir: PathBuf,
        kept: KeptData,
    },
    #[error("{node} cannot start: {source}")]
    Replica {
        node: NodeId,
        #[source]
        source: StartError,
    },
}

/// Why waiting for node processes to publish their manifests failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ManifestWaitError {
    #[error("cannot read the manifest of {node}: {source}; the cluster directory is damaged")]
    Read {
        node: NodeId,
        #[source]
        source: io::Error,
    },
    #[error(
        "{node} did not publish its manifest within {timeout:?}: see its log {}",
        log.display()
    )]
    Timeout {
        node: NodeId,
        timeout: Duration,
        log: PathBuf,
    },
    /// The node's process ended before it was serving: its log says why.
    #[error("{node} exited ({status}) before it published its manifest; {} ends: {tail}", log.display())]
    Exited {
        node: NodeId,
        status: String,
        log: PathBuf,
        /// The last lines of the log, joined by ` | `.
        tail: String,
    },
}

/// The directory of a cluster file: the cluster directory.
fn cluster_dir(cluster_file: &Path) -> PathBuf {
    cluster_file
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(Path::new("."))
        .to_path_buf()
}

/// The cluster file at `cluster_file` and its directory, for starting `node` in a way only a
/// cluster with a CM allows (joining, restarting).
fn read_with_cm(
    cluster_file: &Path,
    node: NodeId,
) -> Result<(ClusterFile, PathBuf), NodeStartError> {
    let file = ClusterFile::read(cluster_file)?;
    if file.cm.is_none() {
        return Err(NodeStartError::NoCm {
            node,
            path: cluster_file.to_path_buf(),
        });
    }
    Ok((file, cluster_dir(cluster_file)))
}

/// Where `acre cluster up` sends node `node`'s standard output and error: `n<id>.log` in the
/// cluster directory.
pub fn node_log_path(dir: &Path, node: NodeId) -> PathBuf {
    dir.join(format!("{node}.log"))
}

/// One node of a process cluster running in this process: a memory node (`acre node`) or a
/// client node (`Db::connect`).
///
/// A memory node's region copies and rings outlive the process: it never removes or replaces
/// them, on stop or on start (they are what recovery will read), and it does not start on files
/// that hold data (see [`crate::restart`]). A client node holds no region and nobody writes
/// records into its rings, so its files are removed when it stops and when its id starts again.
pub struct ProcessNode {
    replica: Option<ReplicaNode>,
    nic: Option<NodeNic>,
    dir: PathBuf,
    node: NodeId,
    /// Whether the configuration places regions on this node (else it is a client node).
    memory_node: bool,
    /// What its manifest says besides its areas.
    transport: String,
    tcp_addr: Option<String>,
    /// Where its CM links and lease thread listen, once its [`crate::agent::CmAgent`] bound them.
    cm_addrs: std::sync::Mutex<Option<(SocketAddr, SocketAddr)>>,
    /// Held while the manifest is written: publications from the adopting thread and the CM
    /// agent's would otherwise share its temporary file, and an older card could land last.
    publishing: std::sync::Mutex<()>,
}

impl ProcessNode {
    /// Starts node `node` of the cluster in `cluster_file`'s directory and publishes its
    /// manifest.
    pub fn start(cluster_file: &Path, node: NodeId) -> Result<ProcessNode, NodeStartError> {
        let mut file = ClusterFile::read(cluster_file)?;
        let dir = cluster_dir(cluster_file);
        // With a CM, the configuration may have moved on since the cluster file was written.
        let listed = file.config.members().any(|m| m == node);
        file.config = crate::agent::current_configuration(&dir, &file);
        if listed && !file.config.members().any(|m| m == node) {
            return Err(NodeStartError::Removed {
                node,
                config: file.config.id,
            });
        }
        if !file.config.members().any(|m| m == node) {
            return Err(NodeStartError::NotAMember {
                node,
                path: cluster_file.to_path_buf(),
            });
        }
        ProcessNode::start_in(file, dir, node, StartKind::Fresh)
    }

    /// Starts memory node `node` again from the region copies and rings its earlier run left
    /// in the cluster directory: `acre cluster up` on a stopped cluster's directory
    /// (docs/failures.md#whole-cluster-restart). The node starts in the CM's last committed
    /// configuration, reads what its rings kept, and locks nothing until the CM's restart
    /// configuration, which blocks its regions until their transactions are recovered. Refused
    /// when the cluster runs no CM (nobody would recover them), when the configuration does not
    /// name the node as a memory node, and when it lacks a copy the configuration places here.
    pub fn restart(cluster_file: &Path, node: NodeId) -> Result<ProcessNode, NodeStartError> {
        ProcessNode::restart_from_files(cluster_file, node, false)
    }

    /// [`ProcessNode::restart`] of one member while the rest of the cluster runs (`acre
    /// cluster up` on a running cluster that lost processes, docs/failures.md#a-node-that-comes-back):
    /// the running processes still read this node's primary copies where they are mapped, so
    /// one it cannot vouch for is neither emptied nor served, and the start fails with
    /// [`StartError::Unvouched`] (the node comes back as a new node once the CM removed it).
    pub fn restart_beside_running(
        cluster_file: &Path,
        node: NodeId,
    ) -> Result<ProcessNode, NodeStartError> {
        ProcessNode::restart_from_files(cluster_file, node, true)
    }

    fn restart_from_files(
        cluster_file: &Path,
        node: NodeId,
        others_run: bool,
    ) -> Result<ProcessNode, NodeStartError> {
        let (mut file, dir) = read_with_cm(cluster_file, node)?;
        file.config = crate::agent::current_configuration(&dir, &file);
        if !file.config.nodes.contains(&node) {
            return Err(NodeStartError::NotAMember {
                node,
                path: cluster_file.to_path_buf(),
            });
        }
        ProcessNode::start_in(file, dir, node, StartKind::Restart { others_run })
    }

    /// Starts memory node `node`, which no configuration names yet, to join the cluster in
    /// `cluster_file`'s directory (`acre cluster add-node`; docs/failures.md#adding-a-node):
    /// it starts from the CM's current configuration c with itself added as a memory node that
    /// holds no region, a view no other member shares. Nothing is addressed to it in c (no
    /// other member knows it); once its process runs, the CM is asked to add it, and it adopts
    /// c+1, which names it, as any member does. Refused when the cluster runs no CM, or when
    /// `node` is in use: a member, a CM replica, or listed by the cluster file (ids are never
    /// reused, so no message meant for an earlier holder of the id reaches it).
    pub fn join(
        cluster_file: &Path,
        node: NodeId,
        domain: Option<String>,
    ) -> Result<ProcessNode, NodeStartError> {
        let (mut file, dir) = read_with_cm(cluster_file, node)?;
        let listed =
            file.config.members().any(|m| m == node) || file.config.cm_replicas.contains(&node);
        file.config = crate::agent::current_configuration(&dir, &file);
        let config = &mut file.config;
        if listed || config.members().any(|m| m == node) || config.cm_replicas.contains(&node) {
            return Err(NodeStartError::InUse {
                node,
                config: config.id,
            });
        }
        config.nodes.push(node);
        if let Some(domain) = domain {
            config
                .domains
                .push(acre_txn::config::FailureDomain { node, domain });
        }
        ProcessNode::start_in(file, dir, node, StartKind::Fresh)
    }

    /// Starts `node` of `file.config` (which names it) in cluster directory `dir`; restarted,
    /// from the files of its earlier run.
    fn start_in(
        file: ClusterFile,
        dir: PathBuf,
        node: NodeId,
        kind: StartKind,
    ) -> Result<ProcessNode, NodeStartError> {
        let restart = kind != StartKind::Fresh;
        let io = |what, path| start_io(node, what, path);
        let memory_node = file.config.nodes.contains(&node);
        if restart {
            ProcessNode::check_not_running(&dir, node)?;
        } else if memory_node {
            ProcessNode::check_earlier_run(&dir, node)?;
        }
        let incarnation = next_incarnation(&dir, node)
            .map_err(io("count its starts", incarnation_path(&dir, node)))?;
        let reopen = if restart {
            Some(
                restart::areas_to_reopen(&dir, node)
                    .map_err(io("find the files of its earlier run", dir.clone()))?,
            )
        } else {
            // A client's files, or a memory node's that hold nothing (checked above).
            remove_node_files(&dir, node).map_err(io("remove its stale files", dir.clone()))?;
            None
        };
        let others_run = kind == StartKind::Restart { others_run: true };
        let reopen = reopen.as_deref().map(|areas| (areas, others_run));
        let started = ProcessNode::start_replica(&file, &dir, node, incarnation, reopen);
        if started.is_err() && !restart {
            // Whatever it created before it failed holds nothing and is of no use to the next
            // start.
            let _ = remove_node_files(&dir, node);
        }
        let (replica, nic, tcp_addr) = started?;
        if file.cm.is_some() && memory_node {
            let dir = dir.clone();
            replica.on_acknowledged_loss(move |sender| fail_on_loss(&dir, node, sender));
        }
        let process = ProcessNode {
            replica: Some(replica),
            nic,
            dir,
            node,
            memory_node,
            transport: file.transport.name().to_string(),
            tcp_addr: tcp_addr.map(|a| a.to_string()),
            cm_addrs: std::sync::Mutex::new(None),
            publishing: std::sync::Mutex::new(()),
        };
        process.publish().map_err(io(
            "publish its manifest",
            NodeManifest::path(&process.dir, node),
        ))?;
        Ok(process)
    }

    /// Publishes where the node's CM links (`link`, TCP) and lease thread (`lease`, UDP)
    /// listen, so that the CM's replicas and the other nodes find them in its manifest.
    pub fn publish_cm_addrs(&self, link: SocketAddr, lease: SocketAddr) -> io::Result<()> {
        *self.cm_addrs.lock().expect(CM_ADDRS_POISONED) = Some((link, lease));
        self.publish()
    }

    /// The cluster directory the node's files are in.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    pub fn node_id(&self) -> NodeId {
        self.node
    }

    /// Whether the configuration places regions on this node (else it is a client node).
    pub fn is_memory_node(&self) -> bool {
        self.memory_node
    }

    /// Writes the node's manifest: its areas (their keys), pid and addresses.
    fn publish(&self) -> io::Result<()> {
        let _publishing = self.publishing.lock().expect("a publication panicked");
        let cm_addrs = *self.cm_addrs.lock().expect(CM_ADDRS_POISONED);
        // Registers the areas placed since the last publication first (ofi), so that every
        // area the manifest lists can be reached.
        let ofi = transport_kind::publishable_card(self.txn().fabric().transport())
            .map_err(io::Error::other)?;
        NodeManifest {
            node: self.node,
            pid: std::process::id(),
            transport: self.transport.clone(),
            tcp_addr: self.tcp_addr.clone(),
            areas: self.replica().area_entries(),
            started: procfs::start_time(std::process::id()).ok(),
            cm_link: cm_addrs.map(|(link, _)| link.to_string()),
            lease: cm_addrs.map(|(_, lease)| lease.to_string()),
            damaged: self.replica().damaged_copies().to_vec(),
            ofi,
        }
        .write(&self.dir)
    }

    /// NEW-CONFIG (docs/failures.md#reconfiguration): the node adopts `newer`
    /// ([`ReplicaNode::adopt`]: the copies it asks of this node, then the configuration), serves
    /// only `newer`'s members from now on (on tcp its NIC thread closes connections of removed
    /// nodes and of configurations older than `newer`; on ofi it closes their registrations and
    /// neither executes nor answers their messages), republishes its manifest so that the
    /// others find the areas it created (and on ofi their registration keys) before the
    /// configuration is committed, and on tcp dials with `newer`'s id.
    pub fn adopt(&self, newer: Arc<Configuration>) -> Result<(), AdoptError> {
        let id = newer.id;
        let members = newer.members().collect::<Vec<_>>();
        let adopted = self.replica().adopt(newer)?;
        // The NIC thread serves the new members before the manifest that lets a new member
        // reach this node is published (on ofi a message of a node it does not serve is not
        // answered at all: its sender would wait out a timeout).
        if let Some(nic) = &self.nic
            && let Err(e) = nic.set_membership(Membership::new(id, members))
        {
            fail_on_unfenced(self.node, id, &e);
        }
        let card_changed = self
            .nic
            .as_ref()
            .is_some_and(NodeNic::card_follows_membership);
        if !adopted.new_areas.is_empty() || card_changed {
            self.publish()
                .map_err(|source| AdoptError::Publish { config: id, source })?;
        }
        if let Transport::Tcp(tcp) = self.txn().fabric().transport() {
            tcp.set_configuration(id);
        }
        Ok(())
    }

    /// NEW-CONFIG-COMMIT of configuration `id`.
    pub fn commit_config(&self, id: u64) -> Result<(), NotAdopted> {
        self.replica().commit_config(id)
    }

    /// Blocked regions whose transaction recovery this node finished
    /// ([`ReplicaNode::recovered_regions`]): what it reports to the CM.
    pub fn recovered_regions(&self) -> Vec<RegionId> {
        self.replica().recovered_regions()
    }

    /// Regions whose copy this node completed ([`ReplicaNode::copied_regions`]): what it
    /// reports to the CM.
    pub fn copied_regions(&self) -> Vec<RegionId> {
        self.replica().copied_regions()
    }

    /// Regions whose copy here its configuration counts complete although it was found
    /// damaged at the restart ([`ReplicaNode::damaged_complete`]): what it reports to the CM.
    pub fn damaged_complete(&self) -> Vec<RegionId> {
        self.replica().damaged_complete()
    }

    /// Refuses to start memory node `node` while another process runs it.
    fn check_not_running(dir: &Path, node: NodeId) -> Result<(), NodeStartError> {
        let io = |what, path| start_io(node, what, path);
        let manifest_path = NodeManifest::path(dir, node);
        let manifest = NodeManifest::read(dir, node)
            .map_err(io("read its manifest", manifest_path.clone()))?;
        if let Some(manifest) = manifest.filter(|m| process_alive(m.pid)) {
            return Err(NodeStartError::Running {
                node,
                pid: manifest.pid,
                manifest: manifest_path,
            });
        }
        Ok(())
    }

    /// Refuses to start memory node `node` while another process runs it, or on files of an
    /// earlier run that hold data.
    fn check_earlier_run(dir: &Path, node: NodeId) -> Result<(), NodeStartError> {
        let io = |what, path| start_io(node, what, path);
        ProcessNode::check_not_running(dir, node)?;
        let kept = restart::kept_data(dir, node).map_err(io(
            "look at the files of its earlier run",
            dir.to_path_buf(),
        ))?;
        if !kept.is_empty() {
            return Err(NodeStartError::KeptData {
                node,
                dir: dir.to_path_buf(),
                kept,
            });
        }
        Ok(())
    }

    /// The clock, the doorbell, the transport and the replica of a starting node.
    fn start_replica(
        file: &ClusterFile,
        dir: &Path,
        node: NodeId,
        incarnation: u64,
        reopen: Option<(&[(RegionId, AccessKey)], bool)>,
    ) -> Result<(ReplicaNode, Option<NodeNic>, Option<SocketAddr>), NodeStartError> {
        // Controlled by its control file if the harness left one, else the system clock.
        let clock = clock::node_clock(dir, node)
            .map_err(|source| NodeStartError::Clock { node, source })?;
        let doorbell_path = directory::doorbell_path(dir, node);
        let doorbell =
            Doorbell::create_file(&doorbell_path).map_err(|source| NodeStartError::Io {
                node,
                what: "create its doorbell",
                path: doorbell_path,
                source,
            })?;
        let memory = Arc::new(NodeMemory::new(node, Arc::new(doorbell)).with_clock(clock));
        let options = file.map_options();
        // On tcp the NIC thread serves the configuration's members only (and observers'
        // reads): a process of another cluster file that holds the same secret is refused.
        let membership = Membership::new(file.config.id, file.config.members());
        // In a namespace of its own, the NIC thread listens on the namespace's address;
        // otherwise on loopback.
        let listen = crate::netns::bind_addr(dir, node)
            .map_err(|source| NodeStartError::Netns { node, source })?;
        let OpenedTransport {
            transport,
            nic,
            tcp_addr,
        } = transport_kind::open_transport(
            dir,
            node,
            &file.transport_spec(listen),
            options,
            &memory,
            membership,
        )
        .map_err(|source| NodeStartError::Transport { node, source })?;
        let fabric = Arc::new(Fabric::new(memory, transport));
        let config = Arc::new(file.config.clone());
        let directory = Directory::manifests(dir.to_path_buf());
        let clients = Arc::new(LockFiles::new(dir.to_path_buf()));
        let replica = match reopen {
            None => ReplicaNode::start(
                config,
                fabric,
                directory,
                &Storage::Files {
                    dir: dir.to_path_buf(),
                    options,
                },
                file.ring_bytes,
                incarnation,
                clients,
            ),
            Some((areas, others_run)) => ReplicaNode::restart(
                config,
                fabric,
                directory,
                dir,
                options,
                file.ring_bytes,
                incarnation,
                clients,
                areas,
                others_run,
            ),
        }
        .map_err(|source| NodeStartError::Replica { node, source })?;
        Ok((replica, nic, tcp_addr))
    }

    /// Where its NIC thread listens (tcp only), as its manifest says.
    pub fn tcp_addr(&self) -> Option<&str> {
        self.tcp_addr.as_deref()
    }

    /// Where it serves the others, for its log: the tcp NIC thread's address, or the IP its ofi
    /// endpoints were opened at (its namespace's with `--netns`, loopback otherwise); `None`
    /// on shm.
    pub fn serving_at(&self) -> Result<Option<String>, crate::netns::NetnsError> {
        if let Some(addr) = &self.tcp_addr {
            return Ok(Some(addr.clone()));
        }
        if self.transport != transport_kind::TransportKind::Ofi.name() {
            return Ok(None);
        }
        let ip = crate::netns::bind_addr(&self.dir, self.node)?
            .map_or_else(|| transport_kind::LISTEN_DEFAULT.ip(), |addr| addr.ip());
        Ok(Some(format!("ofi endpoints at {ip}")))
    }

    pub fn txn(&self) -> &Arc<TxnNode> {
        self.replica.as_ref().expect("running").txn()
    }

    pub fn replica(&self) -> &ReplicaNode {
        self.replica.as_ref().expect("running")
    }

    /// Withdraws the manifest and stops the worker. A memory node keeps its files (its region
    /// copies and rings are what recovery will read); a client node's files go.
    pub fn stop(mut self) {
        self.stop_inner();
    }

    fn stop_inner(&mut self) {
        if let Some(replica) = self.replica.take() {
            let _ = NodeManifest::remove(&self.dir, self.node);
            replica.stop();
            if !self.memory_node {
                let _ = remove_node_files(&self.dir, self.node);
            }
        }
    }
}

impl Drop for ProcessNode {
    fn drop(&mut self) {
        self.stop_inner();
    }
}

/// `node` adopted configuration `config` but could not stop serving a node it removes (on
/// ofi, a registration of the removed node's could not be closed: `error`): acknowledging the
/// configuration would let the CM commit it with the fence not in place here, and the adoption
/// cannot be undone. So the node fails, as if killed: the process exits, and the CM finds its
/// lease expired and recovers its regions from their other replicas. Its copies are intact.
fn fail_on_unfenced(node: NodeId, config: u64, error: &OpenError) -> ! {
    tracing::error!(
        %node,
        "cannot stop serving the nodes configuration {config} removes: {error}; this node fails \
         (exit {UNFENCED_EXIT}) rather than acknowledge it, and the CM recovers its regions from \
         their other replicas"
    );
    std::process::exit(UNFENCED_EXIT)
}

/// Records `node` had acknowledged to `sender` are lost (a damaged record in `sender`'s ring,
/// or a reset that dropped records: docs/failures.md#a-damaged-ring): the node fails, as if
/// killed. What it holds no longer covers what it promised, and nothing it holds says what is
/// missing: a lost LOCK record leaves a lock word no record explains, and its silence about
/// the transaction would read as *truncated* in recovery's votes. So its copies are marked damaged (durably: a restart in
/// place, before the CM removed the node, serves none of them) and the process exits; the CM
/// finds its lease expired and recovers its regions from their other replicas, as after a
/// `kill -9`.
fn fail_on_loss(dir: &Path, node: NodeId, sender: NodeId) -> ! {
    tracing::error!(
        %node,
        "records {sender} appended to its ring here, which this node had acknowledged, are \
         damaged or lost: this node fails (exit {LOST_RECORDS_EXIT}), and the CM recovers its \
         regions from their other replicas; its copies are marked damaged, so a restart in \
         place serves none of them"
    );
    match restart::copy_files(dir, node) {
        Ok(files) => {
            for file in files {
                if let Err(e) = crate::sums::mark_damaged(&file) {
                    tracing::error!(%node, "cannot mark {} damaged: {e}", file.display());
                }
            }
        }
        Err(e) => {
            tracing::error!(%node, "cannot list this node's copies to mark them damaged: {e}")
        }
    }
    std::process::exit(LOST_RECORDS_EXIT)
}

/// How a node process starts: fresh, or again from its earlier run's files, the rest of the
/// cluster stopped or running.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum StartKind {
    Fresh,
    Restart { others_run: bool },
}

/// The exit status of a node process that failed because records it had acknowledged were
/// lost ([`fail_on_loss`]).
pub const LOST_RECORDS_EXIT: i32 = 3;
/// The exit status of a node that could not fence a node a configuration removes
/// (`fail_on_unfenced`).
pub const UNFENCED_EXIT: i32 = 4;

fn incarnation_path(dir: &Path, node: NodeId) -> PathBuf {
    dir.join(format!("{node}.incarnation"))
}

/// The incarnation of `node`'s latest start in `dir` (its process's, if it runs), from its
/// count of starts; `None` if it has none or it cannot be read.
pub(crate) fn current_incarnation(dir: &Path, node: NodeId) -> Option<u64> {
    let text = std::fs::read_to_string(incarnation_path(dir, node)).ok()?;
    text.trim().parse::<u64>().ok()?.checked_sub(1)
}

/// The error of starting `node` when `what` failed on `path`.
fn start_io(
    node: NodeId,
    what: &'static str,
    path: PathBuf,
) -> impl FnOnce(std::io::Error) -> NodeStartError {
    move |source| NodeStartError::Io {
        node,
        what,
        path,
        source,
    }
}

/// Counts a start of `node` in the cluster directory (`n<id>.incarnation`, a decimal number)
/// and returns how many starts came before this one. Only one process runs a node id at a
/// time (memory nodes are started once by `acre cluster up`; client ids are claimed by a lock),
/// so read, increment and replace need no further locking.
fn next_incarnation(dir: &Path, node: NodeId) -> io::Result<u64> {
    let path = incarnation_path(dir, node);
    let previous = match std::fs::read_to_string(&path) {
        Ok(text) => text.trim().parse::<u64>().map_err(|e| {
            io::Error::new(
                io::ErrorKind::InvalidData,
                format!("not a count of starts ({e}): remove the file to count from 0"),
            )
        })?,
        Err(e) if e.kind() == io::ErrorKind::NotFound => 0,
        Err(e) => return Err(e),
    };
    let temporary = path.with_extension("incarnation.new");
    std::fs::write(&temporary, format!("{}\n", previous + 1))?;
    std::fs::rename(&temporary, &path)?;
    Ok(previous)
}

/// Lines of a node's log an [`ManifestWaitError::Exited`] quotes.
pub const LOG_TAIL_LINES: usize = 3;

/// Waits until every node in `nodes` has published its manifest. `exited(node)` tells, for a
/// node that has not published yet, whether its process has ended and how (a launcher asks its
/// child processes; a client, which starts no process, answers `None`): waiting for such a
/// node is pointless, and its log says why it stopped.
pub fn wait_for_manifests(
    dir: &Path,
    nodes: impl Iterator<Item = NodeId> + Clone,
    timeout: Duration,
    mut exited: impl FnMut(NodeId) -> Option<String>,
) -> Result<(), ManifestWaitError> {
    // Real time, not a node's clock: it waits for other processes to start, before this one
    // is a node (a client claims its id, hence its clock, after this).
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
                Err(source) => return Err(ManifestWaitError::Read { node, source }),
            }
        }
        let Some(node) = missing else { return Ok(()) };
        if let Some(status) = exited(node) {
            // It may have published just before it exited (and withdrawn on the way out).
            if let Ok(Some(_)) = NodeManifest::read(dir, node) {
                continue;
            }
            let log = node_log_path(dir, node);
            return Err(ManifestWaitError::Exited {
                node,
                status,
                tail: log_tail(&log, LOG_TAIL_LINES),
                log,
            });
        }
        if Instant::now() >= deadline {
            return Err(ManifestWaitError::Timeout {
                node,
                timeout,
                log: node_log_path(dir, node),
            });
        }
        std::thread::sleep(MANIFEST_POLL_INTERVAL);
    }
}

/// The last `count` non-empty lines of the log at `path`, joined by ` | `, or why there are
/// none.
fn log_tail(path: &Path, count: usize) -> String {
    match std::fs::read_to_string(path) {
        Ok(text) => {
            let lines: Vec<&str> = text.lines().filter(|l| !l.trim().is_empty()).collect();
            match lines.len() {
                0 => "nothing".to_string(),
                n => lines[n.saturating_sub(count)..].join(" | "),
            }
        }
        Err(e) => format!("(cannot read it: {e})"),
    }
}

/// How often [`wait_for_manifests`] looks for the manifests.
const MANIFEST_POLL_INTERVAL: Duration = Duration::from_millis(20);

/// What fencing a node by killing its process found.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Fenced {
    /// Its process was killed and is gone.
    Killed { pid: u32 },
    /// No process runs it: no manifest, or its process is gone (its pid may run another).
    NotRunning,
}

/// Why a node could not be fenced.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum FenceError {
    #[error("cannot read the manifest of {node}: {source}")]
    Manifest {
        node: NodeId,
        #[source]
        source: io::Error,
    },
    #[error(
        "the manifest of {node} does not say when its process {pid} started, so it cannot be told \
         from a later process with that pid: kill it by hand, then reconfigure"
    )]
    Unverifiable { node: NodeId, pid: u32 },
    #[error("cannot kill {node}'s process {pid}: {source}")]
    Kill {
        node: NodeId,
        pid: u32,
        #[source]
        source: io::Error,
    },
    #[error("{node}'s process {pid} still runs {waited:?} after SIGKILL")]
    StillAlive {
        node: NodeId,
        pid: u32,
        waited: Duration,
    },
}

/// Fences node `node` of the cluster in `dir` on a host whose processes share memory
/// (docs/failures.md#fencing): kills its process with SIGKILL and waits until it is gone, so
/// that it can no longer touch the memory it maps. A removed node of a shared-memory cluster
/// cannot be refused at a NIC (its operations are loads and stores), so the configuration that
/// removes it is committed only after this. The process is the one the node's manifest names,
/// and only if it is still the process that wrote it (same pid and start time): a pid the
/// kernel gave to another process since is left alone.
pub fn fence_by_kill(dir: &Path, node: NodeId, timeout: Duration) -> Result<Fenced, FenceError> {
    let manifest =
        NodeManifest::read(dir, node).map_err(|source| FenceError::Manifest { node, source })?;
    let Some(manifest) = manifest else {
        return Ok(Fenced::NotRunning);
    };
    let pid = manifest.pid;
    let Some(started) = manifest.started else {
        return Err(FenceError::Unverifiable { node, pid });
    };
    let same = || procfs::start_time(pid).is_ok_and(|now| now == started) && process_alive(pid);
    if !same() {
        return Ok(Fenced::NotRunning);
    }
    match signal::kill(pid) {
        Ok(()) => {}
        // It exited between the look and the kill.
        Err(_) if !process_alive(pid) => return Ok(Fenced::NotRunning),
        Err(source) => return Err(FenceError::Kill { node, pid, source }),
    }
    // Real time, not a node's clock: it bounds how long the kernel takes to end the process,
    // and nothing is decided by it running out (`same()` decides).
    let deadline = Instant::now() + timeout;
    while same() {
        if Instant::now() >= deadline {
            return Err(FenceError::StillAlive {
                node,
                pid,
                waited: timeout,
            });
        }
        std::thread::sleep(Duration::from_millis(1));
    }
    Ok(Fenced::Killed { pid })
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

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::process::ExitStatusExt;

    fn manifest_of(node: NodeId, pid: u32, started: Option<u64>) -> NodeManifest {
        NodeManifest {
            node,
            pid,
            transport: "shm".into(),
            tcp_addr: None,
            areas: Vec::new(),
            started,
            cm_link: None,
            lease: None,
            damaged: Vec::new(),
            ofi: None,
        }
    }

    #[test]
    fn fencing_kills_the_process_its_manifest_names_and_nothing_else() {
        let dir = tempfile::tempdir().unwrap();
        let node = NodeId(2);
        assert_eq!(
            fence_by_kill(dir.path(), node, Duration::from_secs(5)).unwrap(),
            Fenced::NotRunning,
            "no manifest"
        );
        let mut child = std::process::Command::new("sleep")
            .arg("30")
            .spawn()
            .unwrap();
        let pid = child.id();
        let started = procfs::start_time(pid).unwrap();

        // A manifest whose start time is not the process's: its pid runs another process now.
        manifest_of(node, pid, Some(started + 1))
            .write(dir.path())
            .unwrap();
        assert_eq!(
            fence_by_kill(dir.path(), node, Duration::from_secs(5)).unwrap(),
            Fenced::NotRunning
        );
        assert!(
            child.try_wait().unwrap().is_none(),
            "another process was killed"
        );
        // One that does not say when it started cannot be trusted to name the node.
        manifest_of(node, pid, None).write(dir.path()).unwrap();
        let error = fence_by_kill(dir.path(), node, Duration::from_secs(5)).unwrap_err();
        assert!(matches!(error, FenceError::Unverifiable { .. }), "{error}");
        assert!(child.try_wait().unwrap().is_none());

        manifest_of(node, pid, Some(started))
            .write(dir.path())
            .unwrap();
        assert_eq!(
            fence_by_kill(dir.path(), node, Duration::from_secs(5)).unwrap(),
            Fenced::Killed { pid }
        );
        assert_eq!(child.wait().unwrap().signal(), Some(libc_sigkill()));
        assert_eq!(
            fence_by_kill(dir.path(), node, Duration::from_secs(5)).unwrap(),
            Fenced::NotRunning,
            "a second fence finds it gone"
        );
    }

    /// SIGKILL's number on Linux.
    fn libc_sigkill() -> i32 {
        9
    }

    #[test]
    fn starts_are_counted_and_a_damaged_count_is_an_error() {
        let dir = tempfile::tempdir().unwrap();
        assert_eq!(
            current_incarnation(dir.path(), NodeId(2)),
            None,
            "never started"
        );
        for expected in 0..3 {
            assert_eq!(next_incarnation(dir.path(), NodeId(2)).unwrap(), expected);
            assert_eq!(
                current_incarnation(dir.path(), NodeId(2)),
                Some(expected),
                "the latest start's incarnation"
            );
        }
        assert_eq!(next_incarnation(dir.path(), NodeId(3)).unwrap(), 0);
        std::fs::write(incarnation_path(dir.path(), NodeId(2)), "two\n").unwrap();
        let error = next_incarnation(dir.path(), NodeId(2)).unwrap_err();
        assert_eq!(error.kind(), io::ErrorKind::InvalidData, "{error}");
    }

    #[test]
    fn this_process_is_alive_and_a_pid_past_the_maximum_is_not() {
        assert!(process_alive(std::process::id()));
        assert!(!process_alive(u32::MAX));
    }

    #[test]
    fn a_manifest_that_never_comes_names_the_node_and_its_log() {
        let dir = tempfile::tempdir().unwrap();
        let error = wait_for_manifests(
            dir.path(),
            [NodeId(1)].into_iter(),
            Duration::from_millis(50),
            |_| None,
        )
        .unwrap_err();
        match error {
            ManifestWaitError::Timeout { node, log, .. } => {
                assert_eq!(node, NodeId(1));
                assert_eq!(log, dir.path().join("n1.log"));
            }
            other => panic!("{other}"),
        }
    }

    /// A node process that dies before it serves is noticed at once, with the end of its log,
    /// rather than after the whole timeout.
    #[test]
    fn a_node_process_that_exits_is_reported_with_the_end_of_its_log() {
        let dir = tempfile::tempdir().unwrap();
        let log = std::fs::File::create(node_log_path(dir.path(), NodeId(1))).unwrap();
        let mut child = std::process::Command::new("sh")
            .arg("-c")
            .arg("echo starting; echo; echo 'n1: invalid ring geometry' >&2; exit 3")
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .unwrap();
        let started = Instant::now();
        let error = wait_for_manifests(
            dir.path(),
            [NodeId(1)].into_iter(),
            Duration::from_secs(30),
            |_| child.try_wait().unwrap().map(|status| status.to_string()),
        )
        .unwrap_err();
        assert!(started.elapsed() < Duration::from_secs(10), "{error}");
        match &error {
            ManifestWaitError::Exited {
                node, status, tail, ..
            } => {
                assert_eq!(*node, NodeId(1));
                assert!(status.contains('3'), "{error}");
                assert_eq!(tail, "starting | n1: invalid ring geometry", "{error}");
            }
            other => panic!("{other}"),
        }
        assert!(!error.to_string().contains('\n'), "{error}");
    }
}
