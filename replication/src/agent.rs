//! A process's part in the configuration manager (docs/failures.md#the-cm-in-node-processes):
//! [`CmAgent`] runs in every memory node process of a cluster whose cluster file has a `[cm]`
//! section and in every standalone CM replica's process ([`StandaloneCm`], `acre cm`), and
//! [`ConfigFollower`] in every client node of such a cluster.
//!
//! # What a memory node runs
//!
//! - **CM links** ([`acre_cm::net::Links`], TCP on loopback, or on the address of the
//!   process's network namespace: [`crate::netns`]) and a **lease thread**
//!   ([`acre_cm::lease_thread::LeaseThread`], UDP on the same address), both on free ports
//!   that the node publishes in its manifest (`cm_link`, `lease`), where the others find
//!   them, and look again when a connection fails (a process restarted in place listens at
//!   new ports: the links' address book, [`acre_cm::net::Links::set_address_book`]). The
//!   lease thread publishes the node's lease into its memory's lease gate
//!   ([`acre_engine::fabric::NodeMemory::lease_gate`]), which the node's NIC thread, worker and
//!   coordinators check before they act (docs/failures.md#leases); the gate stays open until
//!   the node adopts a configuration naming a CM, and from then on needs a grant.
//! - In the processes of the configuration's `cm_replicas`, a **CM replica**
//!   ([`acre_cm::CmGroup`], its Raft files under `cm-n<id>/` in the cluster directory). A
//!   replica's process waits (at most [`PEERS_WAIT`]) for the other replicas' manifests before it
//!   starts its replica, since Raft needs every voter's address. Any other memory node starts
//!   one at run time, with its housekeeping thread, when the group's leader adds it to replace
//!   a replica whose node left ([`acre_cm::replacement`], [`acre_cm::driver::Source::Joinable`]);
//!   its CM addresses are in its manifest already, where the others look them up.
//! - The **driver** ([`acre_cm::driver::CmDriver`]): the node's member of the reconfiguration
//!   protocol, and the CM's manager while its replica leads. Its adopter is the
//!   [`ProcessNode`]: NEW-CONFIG is [`ProcessNode::adopt`], NEW-CONFIG-COMMIT
//!   [`ProcessNode::commit_config`], and the regions it reports to the CM as recovered (for
//!   the CM to make them active again) are [`ProcessNode::recovered_regions`], those whose copy
//!   it completed (for the CM to count it complete) [`ProcessNode::copied_regions`].
//! - A **housekeeping thread** (a replica's process only) woken by the group's status watch
//!   and otherwise after [`AGENT_TICK`], [`AGENT_IDLE_TICK`] once settled, or
//!   [`DISTRIBUTING_TICK`] while a configuration is being distributed (a wait, never a spin).
//!   It installs the cluster file's configuration through Raft when the replica leads a group
//!   that holds none yet (the first configuration; its compare-and-set on
//!   id 0 lets exactly one replica's install succeed); makes every memory node a peer of the
//!   links once its manifest names its address, and forgets removed ones; and, while its
//!   replica leads and a configuration is committed, writes the CM status file
//!   ([`crate::cm_status`]) and answers the requests to the CM ([`crate::cm_request`]:
//!   `acre cluster add-node` and `remove-node`, a client's new region); and, while it acts as
//!   CM with nothing being distributed, takes the next step of replacing a replica whose node
//!   left ([`acre_cm::replacement::next_step`]: a Raft conf change, or the configuration that
//!   names the new voters).
//!
//! # What a standalone CM replica runs
//!
//! The same, through the same code (`CmHost` says which process it serves), minus the
//! memory: a standalone replica is no member of any configuration and holds no lease, so its
//! lease thread has no node role and takes up the CM's role for the replica's id when its
//! driver hands it a configuration naming it. Its driver's member only records configurations
//! (none reaches it: the CM sends NEW-CONFIG to members). Its housekeeping thread keeps the
//! newest configuration Raft applied as the process's current one, and tells the lease thread
//! when one names another replica as CM (a memory node's thread learns it by adopting
//! NEW-CONFIG), so that a replica that leads again later starts a fresh lease table.
//!
//! Fencing a removed node before NEW-CONFIG-COMMIT: over shm by killing its process
//! ([`crate::process::fence_by_kill`]); over tcp the members' NIC threads already refuse it once
//! they adopted the configuration (docs/failures.md#fencing), so nothing more is done.
//!
//! # What a client node runs
//!
//! Clients hold no lease ([`acre_txn::Configuration::leased`]): a [`ConfigFollower`] thread
//! looks at the CM status file every [`FOLLOW_TICK`], adopts the configuration the CM is
//! distributing (uncommitted: its transactions wait) and commits each one the CM committed.

use crate::cluster_file::{ClusterFile, ClusterFileError, CmSettings};
use crate::cm_request::{self, CmReply, REQUEST_MAX_AGE};
use crate::cm_status::{CmStatusFile, HISTORY_MAX, LeaseRow, ReconfigurationRow, STATUS_REFRESH};
use crate::process::{ProcessNode, fence_by_kill};
use acre_cm::driver::{
    CmDriver, CmLeaseAddrs, CmSeat, DriverOptions, Fence, INSTALL_TIMEOUT_DEFAULT, Join, Source,
};
use acre_cm::group::{CmGroup, ConfChangeType, GroupOptions, LinkMessage, node_of};
use acre_cm::lease::{DRIFT_PPM_DEFAULT, LeaseTiming};
use acre_cm::lease_thread::{LeaseThread, LeaseThreadConfig, NewConfiguration, NodeRole};
use acre_cm::manager::{Change, ManagerTiming, Outcome, Reconfiguration};
use acre_cm::member::Adopter;
use acre_cm::net::Links;
use acre_cm::replacement::{self, GroupView, Step};
use acre_engine::addr::{NodeId, RegionId};
use acre_engine::clock::{Clock, Time};
use acre_engine::directory::{self, NodeManifest};
use acre_engine::fabric::tcp::ClusterSecret;
use acre_engine::fabric::transport_kind::TransportKind;
use acre_txn::Configuration;
use std::net::{Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, OnceLock, Weak};
use std::thread::JoinHandle;
use std::time::{Duration, Instant, SystemTime};

/// How long a CM replica's process waits for the other replicas' manifests at start.
pub const PEERS_WAIT: Duration = Duration::from_secs(30);
/// The housekeeping thread's period while it has something to do soon: before the first
/// configuration, while a peer's address is missing, and while its replica acts as CM (the
/// status file a client follows).
pub const AGENT_TICK: Duration = Duration::from_millis(100);
/// Its period otherwise, and while its replica acts as CM with nothing under way (it answers
/// operators' requests at this pace).
pub const AGENT_IDLE_TICK: Duration = Duration::from_millis(500);
/// Its period while its replica acts as CM and a configuration is being distributed.
pub const DISTRIBUTING_TICK: Duration = Duration::from_millis(2);
/// How often a client node looks at the CM status file (its modification time: a `stat`).
pub const FOLLOW_TICK: Duration = Duration::from_millis(10);
/// How long the driver may take to accept or refuse an operator's request.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(2);
/// How long fencing a removed node by killing it may take.
const FENCE_TIMEOUT: Duration = Duration::from_secs(5);
/// How often a wait for manifests looks again.
const POLL: Duration = Duration::from_millis(20);

/// Why a node's CM agent could not start; the node process stops with it.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum AgentError {
    #[error(
        "the cluster runs a CM but its secret {path} cannot be read: {reason}; start the \
         cluster with `acre cluster up`, which writes it"
    )]
    Secret { path: PathBuf, reason: String },
    #[error("{node} cannot open its CM links: {reason}")]
    Links { node: NodeId, reason: String },
    #[error("{node} cannot start its lease thread: {source}")]
    Lease {
        node: NodeId,
        #[source]
        source: std::io::Error,
    },
    #[error("{node} cannot publish its CM addresses in its manifest: {source}")]
    Publish {
        node: NodeId,
        #[source]
        source: std::io::Error,
    },
    #[error(
        "{node}: CM replica {replica} did not publish its CM addresses within {waited:?}; see \
         its log n{}.log in the cluster directory",
        replica.0
    )]
    PeerMissing {
        node: NodeId,
        replica: NodeId,
        waited: Duration,
    },
    #[error("{node} cannot start its CM replica: {reason}")]
    Group { node: NodeId, reason: String },
    #[error("{node} cannot start a thread: {source}")]
    Thread {
        node: NodeId,
        #[source]
        source: std::io::Error,
    },
}

/// The process the CM machinery serves: a memory node's, or a standalone CM replica's (`acre
/// cm`), which has no memory.
#[derive(Clone)]
enum CmHost {
    Node(Arc<ProcessNode>),
    Standalone(Arc<StandaloneCm>),
}

impl CmHost {
    fn id(&self) -> NodeId {
        match self {
            CmHost::Node(node) => node.node_id(),
            CmHost::Standalone(cm) => cm.node,
        }
    }

    fn dir(&self) -> &Path {
        match self {
            CmHost::Node(node) => node.dir(),
            CmHost::Standalone(cm) => &cm.dir,
        }
    }

    /// The process's current configuration: the node's, or the one a standalone replica
    /// recorded last.
    fn configuration(&self) -> Arc<Configuration> {
        match self {
            CmHost::Node(node) => node.txn().config(),
            CmHost::Standalone(cm) => cm.configuration(),
        }
    }

    fn publish_cm_addrs(&self, link: SocketAddr, lease: SocketAddr) -> std::io::Result<()> {
        match self {
            CmHost::Node(node) => node.publish_cm_addrs(link, lease),
            CmHost::Standalone(cm) => cm.publish(Some((link, lease))),
        }
    }
}

/// The member's side of a reconfiguration: carried out by the node process, or recorded by a
/// standalone replica (which is no member: the CM sends it nothing to adopt, but a driver has
/// a member in every process).
struct HostAdopter(CmHost);

impl Adopter for HostAdopter {
    fn adopt(&self, config: Arc<Configuration>) -> Result<(), String> {
        match &self.0 {
            CmHost::Node(node) => node.adopt(config).map_err(|e| e.to_string()),
            CmHost::Standalone(cm) => cm.adopt(config),
        }
    }

    fn commit(&self, id: u64) -> Result<(), String> {
        match &self.0 {
            CmHost::Node(node) => node.commit_config(id).map_err(|e| e.to_string()),
            CmHost::Standalone(cm) => cm.commit(id),
        }
    }

    fn current_id(&self) -> u64 {
        self.0.configuration().id
    }

    /// A memory node's blocked regions whose transactions it recovered; a standalone replica
    /// holds no region.
    fn recovered(&self) -> Vec<RegionId> {
        match &self.0 {
            CmHost::Node(node) => node.recovered_regions(),
            CmHost::Standalone(_) => Vec::new(),
        }
    }

    /// A memory node's regions whose copy it completed while still listed as copying; a
    /// standalone replica holds no region.
    fn copied(&self) -> Vec<RegionId> {
        match &self.0 {
            CmHost::Node(node) => node.copied_regions(),
            CmHost::Standalone(_) => Vec::new(),
        }
    }

    /// A memory node's damaged copies its configuration counts complete; a standalone replica
    /// holds no region.
    fn damaged_complete(&self) -> Vec<RegionId> {
        match &self.0 {
            CmHost::Node(node) => node.damaged_complete(),
            CmHost::Standalone(_) => Vec::new(),
        }
    }
}

/// Why a standalone CM replica (`acre cm`) could not start.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum StandaloneError {
    #[error(transparent)]
    File(#[from] ClusterFileError),
    #[error(
        "the cluster in {} runs no configuration manager (its cluster file has no [cm] \
         section): there is no CM replica to run",
        dir.display()
    )]
    NoCm { dir: PathBuf },
    #[error(
        "{node} is a memory node of the cluster: its own process (`acre node`) hosts its CM \
         replica; `acre cm` runs only the standalone replicas ({})",
        list(standalone)
    )]
    MemoryNode {
        node: NodeId,
        standalone: Vec<NodeId>,
    },
    #[error(
        "{node} is a client id of the cluster: a client runs no CM replica; `acre cm` runs only \
         the standalone replicas ({})",
        list(standalone)
    )]
    Client {
        node: NodeId,
        standalone: Vec<NodeId>,
    },
    #[error(
        "{node} is not a CM replica of the cluster (cm_replicas: {}); `acre cm` runs only the \
         standalone replicas ({})",
        list(replicas),
        list(standalone)
    )]
    NotAReplica {
        node: NodeId,
        replicas: Vec<NodeId>,
        standalone: Vec<NodeId>,
    },
    #[error("{node} already runs (pid {pid}, manifest {}): stop it first", manifest.display())]
    Running {
        node: NodeId,
        pid: u32,
        manifest: PathBuf,
    },
    #[error("{node} cannot read its manifest {}: {source}", path.display())]
    Manifest {
        node: NodeId,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

/// `n1, n2` (`none` when empty).
fn list(nodes: &[NodeId]) -> String {
    if nodes.is_empty() {
        return "none".into();
    }
    nodes
        .iter()
        .map(ToString::to_string)
        .collect::<Vec<_>>()
        .join(", ")
}

/// A standalone CM replica's process (`acre cm`): a CM replica with no memory
/// (docs/failures.md#the-cm-in-node-processes). It publishes a manifest with its pid and,
/// once its [`CmAgent`] bound them, its CM addresses and no areas; it is no member of any
/// configuration and holds no lease, and it keeps the newest configuration it knows (Raft's
/// applied one) as its current one.
pub struct StandaloneCm {
    node: NodeId,
    dir: PathBuf,
    transport: String,
    /// The configuration known last, and whether it was committed.
    current: Mutex<(Arc<Configuration>, bool)>,
}

const CURRENT_POISONED: &str = "a thread panicked while holding a standalone CM's configuration";

impl StandaloneCm {
    /// Checks that `node` is a standalone CM replica of the cluster in `cluster_file` (one of
    /// its `cm_replicas` that is neither a memory node nor a client) and that no process runs
    /// it, and publishes its manifest (its pid, no CM addresses yet).
    pub fn start(
        cluster_file: &Path,
        node: NodeId,
    ) -> Result<(StandaloneCm, ClusterFile), StandaloneError> {
        let file = ClusterFile::read(cluster_file)?;
        let dir = cluster_file
            .parent()
            .filter(|p| !p.as_os_str().is_empty())
            .unwrap_or(Path::new("."))
            .to_path_buf();
        if file.cm.is_none() {
            return Err(StandaloneError::NoCm { dir });
        }
        let standalone = file.standalone_cms();
        if file.config.nodes.contains(&node) {
            return Err(StandaloneError::MemoryNode { node, standalone });
        }
        if file.config.clients.contains(&node) {
            return Err(StandaloneError::Client { node, standalone });
        }
        if !file.is_standalone_cm(node) {
            return Err(StandaloneError::NotAReplica {
                node,
                replicas: file.config.cm_replicas.clone(),
                standalone,
            });
        }
        let path = NodeManifest::path(&dir, node);
        let manifest =
            NodeManifest::read(&dir, node).map_err(|source| StandaloneError::Manifest {
                node,
                path: path.clone(),
                source,
            })?;
        if let Some(manifest) = manifest.filter(|m| crate::process::process_alive(m.pid)) {
            return Err(StandaloneError::Running {
                node,
                pid: manifest.pid,
                manifest: path,
            });
        }
        let current = current_configuration(&dir, &file);
        let cm = StandaloneCm {
            node,
            dir,
            transport: file.transport.name().to_string(),
            current: Mutex::new((Arc::new(current), true)),
        };
        cm.publish(None)
            .map_err(|source| StandaloneError::Manifest { node, path, source })?;
        Ok((cm, file))
    }

    pub fn node_id(&self) -> NodeId {
        self.node
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The configuration known last.
    pub fn configuration(&self) -> Arc<Configuration> {
        self.current.lock().expect(CURRENT_POISONED).0.clone()
    }

    /// Records `config` as the current one unless it is older (refused as stale).
    fn adopt(&self, config: Arc<Configuration>) -> Result<(), String> {
        let mut current = self.current.lock().expect(CURRENT_POISONED);
        if config.id < current.0.id {
            return Err(format!(
                "stale: {} holds configuration {}",
                self.node, current.0.id
            ));
        }
        if config.id > current.0.id {
            *current = (config, false);
        }
        Ok(())
    }

    /// Records that configuration `id`, the current one, is committed.
    fn commit(&self, id: u64) -> Result<(), String> {
        let mut current = self.current.lock().expect(CURRENT_POISONED);
        if current.0.id != id {
            return Err(format!(
                "{} holds configuration {}, not {id}",
                self.node, current.0.id
            ));
        }
        current.1 = true;
        Ok(())
    }

    /// Writes the manifest: the pid, its start time, and the CM addresses once bound.
    fn publish(&self, cm_addrs: Option<(SocketAddr, SocketAddr)>) -> std::io::Result<()> {
        let pid = std::process::id();
        NodeManifest {
            node: self.node,
            pid,
            transport: self.transport.clone(),
            tcp_addr: None,
            areas: Vec::new(),
            started: acre_engine::procfs::start_time(pid).ok(),
            cm_link: cm_addrs.map(|(link, _)| link.to_string()),
            lease: cm_addrs.map(|(_, lease)| lease.to_string()),
            damaged: Vec::new(),
            ofi: None,
        }
        .write(&self.dir)
    }

    /// Withdraws the manifest: the process stops cleanly (after its [`CmAgent`] stopped).
    pub fn stop(&self) {
        if let Err(e) = NodeManifest::remove(&self.dir, self.node) {
            tracing::warn!(node = %self.node, "cannot remove its manifest: {e}");
        }
    }
}

/// A memory node process's CM machinery (module docs). Dropping it stops every thread.
pub struct CmAgent {
    node: NodeId,
    stopping: Arc<AtomicBool>,
    /// The housekeeping thread, once the process hosts a replica (at start, or when the group
    /// added it: then the driver's thread starts it).
    housekeeping: Arc<Mutex<Option<JoinHandle<()>>>>,
    driver: Option<Arc<CmDriver>>,
    /// The process's replica, once it hosts one.
    group: Arc<Mutex<Option<Arc<CmGroup>>>>,
    lease_thread: Arc<LeaseThread>,
}

const AGENT_POISONED: &str = "a thread panicked while holding the CM agent's slots";

fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex.lock().expect(AGENT_POISONED)
}

/// What the housekeeping thread and a replica's seat are made of, kept by the process until
/// it hosts a replica (at start, or when the group adds it: [`KeeperParts::joiner`]).
#[derive(Clone)]
struct KeeperParts {
    host: CmHost,
    dir: PathBuf,
    cm_lease_addrs: CmLeaseAddrs,
    first: Configuration,
    standalone: Vec<NodeId>,
    size: usize,
    lease_ms: u64,
    links: Arc<Links>,
    lease_thread: Arc<LeaseThread>,
    clock: Clock,
    stopping: Arc<AtomicBool>,
    transport: TransportKind,
    known_nodes: Vec<NodeId>,
}

impl KeeperParts {
    /// The driver's seat for `group`, with the fence of the cluster's transport.
    fn seat(&self, group: Arc<CmGroup>, routed: std::sync::mpsc::Receiver<LinkMessage>) -> CmSeat {
        let fence: Fence = match self.transport {
            // On shm nothing refuses a removed node's one-sided operations (it stores into the
            // others' files itself); on ofi the members close its registrations when they adopt
            // the configuration, but a client only once its follower finds it published, which
            // may be after the commit. So its process is killed before the configuration without
            // it commits.
            TransportKind::Shm | TransportKind::Ofi => {
                let dir = self.dir.clone();
                Box::new(move |removed| {
                    fence_by_kill(&dir, removed, FENCE_TIMEOUT)
                        .map(|_| ())
                        .map_err(|e| e.to_string())
                })
            }
            // The members' NIC threads refuse a removed node once they adopted c+1.
            _ => Box::new(|_| Ok(())),
        };
        CmSeat {
            group,
            routed,
            timing: ManagerTiming::default(),
            fence,
            known_nodes: self.known_nodes.clone(),
        }
    }

    /// Starts the housekeeping thread of the replica `group`.
    fn spawn(&self, group: Arc<CmGroup>, driver: Arc<CmDriver>) -> std::io::Result<JoinHandle<()>> {
        let me = self.host.id();
        let keeper = Keeper {
            host: self.host.clone(),
            dir: self.dir.clone(),
            cm_lease_addrs: self.cm_lease_addrs.clone(),
            first: self.first.clone(),
            standalone: self.standalone.clone(),
            size: self.size,
            lease_ms: self.lease_ms,
            group,
            driver,
            links: self.links.clone(),
            lease_thread: self.lease_thread.clone(),
            clock: self.clock.clone(),
            stopping: self.stopping.clone(),
            committed: None,
            last_written: None,
            last_discovery: None,
            epoch: 0,
            joining: None,
            lease_followed: 0,
            last_step: None,
        };
        std::thread::Builder::new()
            .name(format!("cm-agent-{}", me.0))
            .spawn(move || keeper.run())
    }

    /// What the driver of a memory node that hosts no replica calls when a Raft message
    /// arrives: the group's leader added this node (acre_cm::replacement). It starts the
    /// replica (its files under `cm-n<id>/`, empty until the leader's snapshot) and its
    /// housekeeping thread, as a process that hosted one from its start runs them.
    fn joiner(
        &self,
        group_slot: Arc<Mutex<Option<Arc<CmGroup>>>>,
        housekeeping: Arc<Mutex<Option<JoinHandle<()>>>>,
        driver_cell: Arc<OnceLock<Weak<CmDriver>>>,
    ) -> Join {
        let parts = self.clone();
        Box::new(move |inbox, from| {
            let me = parts.host.id();
            if parts.stopping.load(Ordering::Acquire) {
                return Err(inbox);
            }
            // Only a node of the cluster's configuration leads a CM group (ids are never
            // reused, so no earlier holder of this id is addressed).
            let config = parts.host.configuration();
            if !config.nodes.contains(&from) && !config.cm_replicas.contains(&from) {
                tracing::warn!(%from, "a Raft message from a node that is no member; dropped");
                return Err(inbox);
            }
            let Some(driver) = driver_cell.get().and_then(Weak::upgrade) else {
                return Err(inbox); // The driver is starting or stopping: at the next message.
            };
            let mut options = GroupOptions::new(me, Vec::new(), &parts.dir);
            options.clock = parts.clock.clone();
            let (group, routed) = match CmGroup::join(options, parts.links.clone(), inbox) {
                Ok(started) => started,
                Err((e, inbox)) => {
                    tracing::error!(%from, "added to the CM group, but its replica cannot start: {e}");
                    return Err(inbox);
                }
            };
            let group = Arc::new(group);
            tracing::info!(%from, "added to the CM group by its leader: starting the replica");
            match parts.spawn(group.clone(), driver) {
                Ok(thread) => *lock(&housekeeping) = Some(thread),
                // The replica runs; only the status file and requests wait for a restart.
                Err(e) => tracing::error!("cannot start the CM agent's thread: {e}"),
            }
            *lock(&group_slot) = Some(group.clone());
            Ok(parts.seat(group, routed))
        })
    }
}

/// The manifests' CM addresses of `node`, once it published them.
fn cm_addrs(dir: &Path, node: NodeId) -> Option<(SocketAddr, SocketAddr)> {
    let manifest = NodeManifest::read(dir, node).ok()??;
    let link = manifest.cm_link?.parse().ok()?;
    let lease = manifest.lease?.parse().ok()?;
    Some((link, lease))
}

impl CmAgent {
    /// Starts the CM machinery of memory node `node`, which runs in this process, for the
    /// cluster of `file` (which has a `[cm]` section).
    pub fn start(
        node: Arc<ProcessNode>,
        file: &ClusterFile,
        settings: &CmSettings,
        clock: Clock,
    ) -> Result<CmAgent, AgentError> {
        CmAgent::start_in(CmHost::Node(node), file, settings, clock)
    }

    /// Starts the CM machinery of a standalone CM replica (`acre cm`): the same as a memory
    /// node's, but for the memory: its lease thread holds no lease and takes up the CM's role
    /// when its replica leads, and its driver's member only records configurations.
    pub fn start_standalone(
        cm: Arc<StandaloneCm>,
        file: &ClusterFile,
        settings: &CmSettings,
        clock: Clock,
    ) -> Result<CmAgent, AgentError> {
        CmAgent::start_in(CmHost::Standalone(cm), file, settings, clock)
    }

    fn start_in(
        host: CmHost,
        file: &ClusterFile,
        settings: &CmSettings,
        clock: Clock,
    ) -> Result<CmAgent, AgentError> {
        let me = host.id();
        let dir = host.dir().to_path_buf();
        let secret_path = dir.join(directory::SECRET_FILE);
        let secret = ClusterSecret::from_file(&secret_path).map_err(|e| AgentError::Secret {
            path: secret_path.clone(),
            reason: e.to_string(),
        })?;
        // Loopback, or the address of this process's network namespace (`netns.toml`).
        let bind = crate::netns::bind_addr(&dir, me)
            .map_err(|e| AgentError::Links {
                node: me,
                reason: e.to_string(),
            })?
            .unwrap_or(SocketAddr::from((Ipv4Addr::LOCALHOST, 0)));
        let (links, inbox) =
            Links::bind(me, bind, secret.clone()).map_err(|e| AgentError::Links {
                node: me,
                reason: e.to_string(),
            })?;
        // A peer whose process restarted listens elsewhere; its manifest says where. Without
        // this a member kept sending to a restarted CM replica's old address (its NEW-CONFIG
        // acknowledgements and probe answers lost), and a restarted replica that led suspected
        // every member and stood down, again and again.
        {
            let dir = dir.clone();
            links.set_address_book(Arc::new(move |node| {
                cm_addrs(&dir, node).map(|(link, _)| link)
            }));
        }
        let links = Arc::new(links);
        let current = host.configuration();
        // A memory node holds a lease from the CM; a standalone replica is no member and
        // holds none, and its thread takes up the CM's role when a configuration names it.
        let (node_role, standalone_cm) = match &host {
            // The CM is not known before a configuration names it: the thread asks for
            // nothing until the driver hands it the first one it adopts.
            CmHost::Node(node) => (
                Some(NodeRole {
                    node: me,
                    cm: current.cm_leader.unwrap_or(current.cm_replicas[0]),
                    cm_addr: None,
                    config: 0,
                    gate: Some(node.txn().fabric().memory().lease_gate().clone()),
                }),
                None,
            ),
            CmHost::Standalone(_) => (None, Some(me)),
        };
        let lease_thread = Arc::new(
            LeaseThread::spawn(LeaseThreadConfig {
                bind,
                secret,
                clock: clock.clone(),
                timing: LeaseTiming::new(settings.lease(), DRIFT_PPM_DEFAULT),
                node: node_role,
                cm: None,
                standalone_cm,
            })
            .map_err(|source| AgentError::Lease { node: me, source })?,
        );
        host.publish_cm_addrs(links.local_addr(), lease_thread.local_addr())
            .map_err(|source| AgentError::Publish { node: me, source })?;

        // Every replica's addresses: Raft's voters, and where the CM's lease thread listens.
        // A replica whose memory node the configuration removed is dead (fenced) and waits to
        // be replaced, maybe by this very node: its manifest may be gone, so it is not waited
        // for (the housekeeping finds it in the manifests should it come back).
        let replicas: Vec<NodeId> = (current.cm_replicas.iter())
            .copied()
            .filter(|&replica| {
                replica == me || file.is_standalone_cm(replica) || current.nodes.contains(&replica)
            })
            .collect();
        let deadline = Instant::now() + PEERS_WAIT;
        let mut voters = Vec::new();
        let mut cm_lease_addrs = Vec::new();
        for &replica in &replicas {
            let (link, lease) = loop {
                if let Some(addrs) = cm_addrs(&dir, replica) {
                    break addrs;
                }
                if Instant::now() >= deadline {
                    return Err(AgentError::PeerMissing {
                        node: me,
                        replica,
                        waited: PEERS_WAIT,
                    });
                }
                std::thread::sleep(POLL);
            };
            if replica != me {
                links.add_peer(replica, link);
            }
            voters.push((replica, link));
            cm_lease_addrs.push((replica, lease));
        }

        // Looked up in the manifests each time: a replica restarted since listens elsewhere.
        let options_lease_addrs = {
            let dir = dir.clone();
            CmLeaseAddrs::lookup(move |node| {
                cm_addrs(&dir, node).map(|(_, lease)| lease).or_else(|| {
                    (cm_lease_addrs.iter())
                        .find(|(n, _)| *n == node)
                        .map(|&(_, addr)| addr)
                })
            })
        };
        let options = DriverOptions {
            node: me,
            clock: clock.clone(),
            lease: settings.lease(),
            cm_lease_addrs: options_lease_addrs.clone(),
            install_timeout: INSTALL_TIMEOUT_DEFAULT,
        };
        let adopter = HostAdopter(host.clone());
        let stopping = Arc::new(AtomicBool::new(false));
        let housekeeping = Arc::new(Mutex::new(None));
        let group_slot = Arc::new(Mutex::new(None));
        let driver_cell: Arc<OnceLock<Weak<CmDriver>>> = Arc::new(OnceLock::new());
        let keeper = KeeperParts {
            host: host.clone(),
            dir: dir.clone(),
            cm_lease_addrs: options_lease_addrs,
            first: file.config.clone(),
            standalone: file.standalone_cms(),
            size: file.config.cm_replicas.len(),
            lease_ms: settings.lease_ms,
            links: links.clone(),
            lease_thread: lease_thread.clone(),
            clock: clock.clone(),
            stopping: stopping.clone(),
            transport: file.transport,
            known_nodes: file.config.nodes.clone(),
        };
        let (source, group) = if replicas.contains(&me) {
            let mut group_options = GroupOptions::new(me, voters, &dir);
            group_options.clock = clock.clone();
            let (group, routed) =
                CmGroup::start(group_options, links.clone(), inbox).map_err(|e| {
                    AgentError::Group {
                        node: me,
                        reason: e.to_string(),
                    }
                })?;
            let group = Arc::new(group);
            (Source::Cm(keeper.seat(group.clone(), routed)), Some(group))
        } else if let CmHost::Node(_) = &host {
            // Any memory node may be made a replica when one whose node left is replaced
            // (acre_cm::replacement): its replica starts when the leader's first message comes.
            let join = keeper.joiner(
                group_slot.clone(),
                housekeeping.clone(),
                driver_cell.clone(),
            );
            (Source::Joinable { inbox, join }, None)
        } else {
            (Source::Inbox(inbox), None)
        };
        let driver = Arc::new(
            CmDriver::start(
                options,
                links.clone(),
                lease_thread.clone(),
                adopter,
                source,
            )
            .map_err(|source| AgentError::Thread { node: me, source })?,
        );
        driver_cell
            .set(Arc::downgrade(&driver))
            .unwrap_or_else(|_| unreachable!("the driver is set once"));
        if let Some(group) = group {
            *lock(&group_slot) = Some(group.clone());
            let thread = keeper
                .spawn(group, driver.clone())
                .map_err(|source| AgentError::Thread { node: me, source })?;
            *lock(&housekeeping) = Some(thread);
        }
        Ok(CmAgent {
            node: me,
            stopping,
            housekeeping,
            driver: Some(driver),
            group: group_slot,
            lease_thread,
        })
    }

    pub fn node(&self) -> NodeId {
        self.node
    }

    /// Whether this process's replica leads the CM's Raft group.
    pub fn is_cm_leader(&self) -> bool {
        lock(&self.group).as_ref().is_some_and(|g| g.is_leader())
    }

    /// Whether this node may act: it holds a valid lease from the CM, or has asked none yet (it
    /// has adopted no configuration naming a CM). Its worker and NIC thread check the same gate
    /// (docs/failures.md#leases).
    pub fn lease_is_valid(&self) -> bool {
        self.lease_thread.is_valid()
    }

    /// Stops every thread: the housekeeping, the driver, the replica, the lease thread.
    pub fn stop(mut self) {
        self.stop_inner();
    }

    fn stop_inner(&mut self) {
        self.stopping.store(true, Ordering::Release);
        let join_housekeeping = || {
            let thread = lock(&self.housekeeping).take();
            if let Some(thread) = thread
                && thread.join().is_err()
            {
                tracing::error!(node = %self.node, "the CM agent's thread panicked");
            }
        };
        join_housekeeping();
        // The housekeeping thread held the other clones: these are the last ones.
        if let Some(driver) = self.driver.take() {
            drop(driver);
        }
        // A replica the driver's thread started while this stop began (it checks `stopping`
        // first, so at most one): its thread sees `stopping` at its next turn.
        join_housekeeping();
        *lock(&self.group) = None;
    }
}

impl Drop for CmAgent {
    fn drop(&mut self) {
        self.stop_inner();
    }
}

/// The housekeeping thread of a replica's process (module docs).
struct Keeper {
    host: CmHost,
    dir: PathBuf,
    /// Where each replica's lease thread listens (a standalone replica tells its own which CM
    /// another replica's configuration names).
    cm_lease_addrs: CmLeaseAddrs,
    /// The cluster file's configuration: the first one installed.
    first: Configuration,
    /// The standalone CM replicas (never replaced) and the group's full size (2f+1), as the
    /// cluster file says.
    standalone: Vec<NodeId>,
    size: usize,
    lease_ms: u64,
    group: Arc<CmGroup>,
    driver: Arc<CmDriver>,
    links: Arc<Links>,
    lease_thread: Arc<LeaseThread>,
    clock: Clock,
    stopping: Arc<AtomicBool>,
    /// The configuration this CM last committed.
    committed: Option<Arc<Configuration>>,
    /// When the status file was last written, and what it said (but its time).
    last_written: Option<(Instant, CmStatusFile)>,
    last_discovery: Option<Instant>,
    /// The group's status epoch last seen.
    epoch: u64,
    /// The node an accepted request adds, and when: a peer of the links before any
    /// configuration names it.
    joining: Option<(NodeId, Instant)>,
    /// The configuration id a standalone replica last handed its lease thread.
    lease_followed: u64,
    /// The step of a replica's replacement last taken (logged once each).
    last_step: Option<Step>,
}

/// How soon the housekeeping thread looks again.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Pace {
    /// The replica does not lead.
    Follower,
    Leading,
    /// A configuration is installed and not yet committed: its commit is due within
    /// milliseconds, and clients follow the status file.
    Distributing,
}

impl Keeper {
    fn run(mut self) {
        while !self.stopping.load(Ordering::Acquire) {
            self.bootstrap();
            self.follow_group();
            let missing = self.discover_peers();
            let pace = self.publish_status();
            let mut replacing = false;
            if pace != Pace::Follower {
                self.answer_requests();
            }
            if pace == Pace::Leading {
                replacing = self.replace_replicas();
            }
            // Busy only while something is to be done soon: the first install, a peer's
            // address, the status a client follows, a replica's replacement; and woken at once
            // when Raft applies a configuration or a membership change or the leadership moves
            // (the group's status watch).
            let settled = !missing && !replacing && self.group.configuration().is_some();
            let wait = match pace {
                Pace::Distributing => DISTRIBUTING_TICK,
                _ if settled => AGENT_IDLE_TICK,
                _ => AGENT_TICK,
            };
            // One wait, cut short by the watch: a stop waits for it (at most AGENT_IDLE_TICK).
            self.group.wait_status(self.epoch, wait);
        }
    }

    /// The requests to the CM ([`crate::cm_request`]): each fresh one handed to the driver
    /// and answered while this replica acts as CM.
    fn answer_requests(&mut self) {
        for request in cm_request::pending(&self.dir) {
            let from_id = self.host.configuration().id;
            let reply = match self.prepare(&request.change) {
                Err(reason) => Err(reason),
                Ok(()) => self.driver.change(request.change.clone(), REQUEST_TIMEOUT),
            };
            // A node being added stays a peer until a configuration names it (only once
            // accepted: a refused request does not displace it).
            if let (Ok(true), Change::AddNode { node, .. }) = (&reply, &request.change) {
                self.joining = Some((*node, Instant::now()));
            }
            let reply = match reply {
                Ok(started) => CmReply {
                    nonce: request.nonce,
                    accepted: true,
                    started,
                    message: if started {
                        format!(
                            "{}: configuration {from_id} + 1 is being installed",
                            describe(&request.change)
                        )
                    } else {
                        format!(
                            "{}: nothing to do in configuration {from_id}",
                            describe(&request.change)
                        )
                    },
                    from_id,
                },
                Err(reason) => CmReply {
                    nonce: request.nonce,
                    accepted: false,
                    started: false,
                    message: reason,
                    from_id,
                },
            };
            if let Err(e) = cm_request::answer(&self.dir, &reply) {
                tracing::warn!("cannot answer a request to the CM: {e}");
            }
        }
    }

    /// Takes the next step of replacing a CM replica whose node left the cluster
    /// ([`acre_cm::replacement`]) while this replica acts as CM and nothing is being
    /// distributed. Returns whether a replacement is under way (look again soon).
    fn replace_replicas(&mut self) -> bool {
        let status = self.group.status();
        let (true, Some(config)) = (status.is_leader, status.configuration) else {
            return false;
        };
        let Some(membership) = self.group.membership() else {
            return false;
        };
        let nodes =
            |ids: &[u64]| -> Vec<NodeId> { ids.iter().filter_map(|&id| node_of(id)).collect() };
        let view = GroupView {
            me: self.host.id(),
            voters: nodes(&membership.voters),
            learners: nodes(&membership.learners),
            caught_up: nodes(&membership.caught_up),
            conf_change_pending: membership.conf_change_pending,
        };
        let step = replacement::next_step(&config, &self.standalone, self.size, &view);
        let under_way = step.is_some() || !view.learners.is_empty() || view.conf_change_pending;
        let Some(step) = step else {
            return under_way;
        };
        if self.last_step.as_ref() != Some(&step) {
            tracing::info!(?step, voters = ?view.voters, learners = ?view.learners, "replacing a CM replica whose node left");
            self.last_step = Some(step.clone());
        }
        let result = match step {
            Step::AddLearner(node) => self
                .group
                .propose_conf_change(ConfChangeType::AddLearnerNode, node)
                .map_err(|e| e.to_string()),
            Step::Promote(node) => self
                .group
                .propose_conf_change(ConfChangeType::AddNode, node)
                .map_err(|e| e.to_string()),
            Step::Remove(node) => self
                .group
                .propose_conf_change(ConfChangeType::RemoveNode, node)
                .map_err(|e| e.to_string()),
            Step::Name(replicas) => self
                .driver
                .change(Change::CmReplicas { replicas }, REQUEST_TIMEOUT)
                .map(|_| ()),
        };
        if let Err(reason) = result {
            // The manager is busy, or the leadership moved: the next turn decides again.
            tracing::debug!(%reason, "a step of a CM replica's replacement waits");
        }
        true
    }

    /// What a change needs before the CM plans it: a node to add must run and have published
    /// its CM addresses, and becomes a peer of the links (NEW-CONFIG reaches it there); the CM's
    /// replicas are not a request's to name.
    fn prepare(&mut self, change: &Change) -> Result<(), String> {
        if let Change::DamagedCopies { node, .. } = change {
            // Only the node that holds the copies knows they are damaged: a request could
            // demote any primary.
            return Err(format!(
                "{node} reports its damaged copies itself \
                 (docs/failures.md#whole-cluster-restart); ask for nothing"
            ));
        }
        if let Change::CmReplicas { .. } = change {
            // The configuration names the voters Raft applied, which only the acting CM
            // knows: a request could make it name others.
            return Err(
                "the CM names its replicas itself, once its Raft group changed; ask for nothing"
                    .into(),
            );
        }
        let Change::AddNode { node, .. } = change else {
            return Ok(());
        };
        let config = self.host.configuration();
        if config.members().any(|m| m == *node) || config.cm_replicas.contains(node) {
            return Err(format!(
                "{node} is in use in configuration {}: pick another id",
                config.id
            ));
        }
        let Some((link, _)) = cm_addrs(&self.dir, *node) else {
            return Err(format!(
                "{node} has not published its CM addresses in its manifest: start its process \
                 with `acre node --join` first"
            ));
        };
        self.links.add_peer(*node, link);
        Ok(())
    }

    /// Installs the cluster file's configuration when this replica leads a group that holds
    /// none (module docs).
    fn bootstrap(&self) {
        if !self.group.is_leader() || self.group.configuration().is_some() {
            return;
        }
        match self
            .group
            .propose_install(0, &self.first, INSTALL_TIMEOUT_DEFAULT)
        {
            Ok(config) => tracing::info!(id = config.id, "installed the first configuration"),
            Err(e) => tracing::info!("installing the first configuration: {e}; trying again"),
        }
    }

    /// A standalone replica's current configuration is the newest Raft applied (no CM sends
    /// it NEW-CONFIG: it is no member). Its lease thread is told which CM a configuration
    /// names when that is another replica, so that a thread that had the CM's role gives it up
    /// (a memory node's learns it by adopting NEW-CONFIG), and takes it up afresh, with a
    /// lease of grace for every member, when this replica leads again.
    fn follow_group(&mut self) {
        let CmHost::Standalone(cm) = &self.host else {
            return;
        };
        let Some(config) = self.group.configuration() else {
            return;
        };
        if let Err(e) = cm.adopt(config.clone()) {
            tracing::warn!("Raft applied an older configuration than this replica holds: {e}");
        }
        let Some(leader) = config.cm_leader.filter(|&l| l != cm.node) else {
            return;
        };
        if config.id <= self.lease_followed {
            return;
        }
        let Some(cm_addr) = self.cm_lease_addrs.get(leader) else {
            return;
        };
        self.lease_followed = config.id;
        let members: Vec<NodeId> = config.leased().collect();
        self.lease_thread.set_configuration(&NewConfiguration {
            config: config.id,
            cm: leader,
            cm_addr,
            members: &members,
        });
    }

    /// Makes every memory node of the configuration a peer of the links (the CM sends it
    /// NEW-CONFIG and probes), at every turn while one is missing and every
    /// [`STATUS_REFRESH`] otherwise (a restarted node publishes a new address). Returns whether
    /// one is still missing.
    fn discover_peers(&mut self) -> bool {
        let config = self.host.configuration();
        let peers = self.links.peers();
        let me = self.host.id();
        let missing = config
            .leased()
            .any(|n| n != me && !peers.iter().any(|(p, _)| *p == n));
        let due = self
            .last_discovery
            .is_none_or(|at| at.elapsed() >= STATUS_REFRESH);
        if !missing && !due {
            return false;
        }
        self.last_discovery = Some(Instant::now());
        // The memory nodes, and the standalone CM replicas: a replica restarted in place
        // listens elsewhere, and until its peers look again their Raft messages to it are lost
        // (with two of three replicas restarted one after the other, no leader could be
        // elected at all).
        let standalone = config
            .cm_replicas
            .iter()
            .copied()
            .filter(|r| !config.nodes.contains(r));
        for member in config.leased().chain(standalone).filter(|&n| n != me) {
            if let Some((link, _)) = cm_addrs(&self.dir, member)
                && !peers.contains(&(member, link))
            {
                self.links.add_peer(member, link);
            }
        }
        // A node being added is a peer before a configuration names it.
        let joining = self
            .joining
            .filter(|(_, at)| at.elapsed() < REQUEST_MAX_AGE)
            .map(|(node, _)| node);
        for (peer, _) in peers {
            if !config.members().any(|m| m == peer)
                && !config.cm_replicas.contains(&peer)
                && joining != Some(peer)
            {
                self.links.remove_peer(peer);
            }
        }
        missing
    }

    /// Writes the status file while this replica acts as CM (module docs); says how soon to
    /// look again.
    fn publish_status(&mut self) -> Pace {
        let status = self.group.status();
        self.epoch = status.epoch;
        if !status.is_leader {
            self.committed = None;
            self.last_written = None;
            return Pace::Follower;
        }
        let history = self.driver.history();
        // The driver says what its manager committed; Raft's configuration may be newer
        // (being distributed).
        if let Some(committed) = self.driver.committed()
            && self.committed.as_ref().is_none_or(|c| c.id < committed.id)
        {
            self.committed = Some(committed);
        }
        // A new leader before its first commit starts from what the previous CM published as
        // committed, so that it shows (and clients adopt) what it distributes meanwhile.
        if self.committed.is_none()
            && let Ok(Some(previous)) = CmStatusFile::read(&self.dir)
            && previous.committed.id <= status.configuration_id()
        {
            self.committed = Some(Arc::new(previous.committed));
        }
        let Some(committed) = self.committed.clone() else {
            // The first configurations are being installed and distributed.
            return Pace::Distributing;
        };
        // Installed through Raft and being distributed: clients adopt it with the members.
        let installing = status
            .configuration
            .as_ref()
            .filter(|c| c.id > committed.id)
            .map(|c| (**c).clone());
        let pace = if installing.is_some() {
            Pace::Distributing
        } else {
            Pace::Leading
        };
        // Built and compared only when something it shows may have changed, or it is due.
        if let Some((at, last)) = &self.last_written
            && at.elapsed() < STATUS_REFRESH
            && last.installed_id == status.configuration_id()
            && last.committed.id == committed.id
            && last.term == status.term
            && last.history.len() == history.len().min(HISTORY_MAX)
            && last.history.last().map(|r| (r.outcome.clone(), r.from_id))
                == history
                    .last()
                    .map(|r| (outcome_name(&r.outcome), r.from_id))
        {
            return pace;
        }
        let now = self.clock.now();
        let leases = committed
            .leased()
            .map(|node| LeaseRow {
                node,
                remaining_ms: self
                    .lease_thread
                    .node_lease_until(node)
                    .map(|until| signed_ms(until, now)),
            })
            .collect();
        let skip = history.len().saturating_sub(HISTORY_MAX);
        let file = CmStatusFile {
            written_unix_ms: SystemTime::now()
                .duration_since(SystemTime::UNIX_EPOCH)
                .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX)),
            leader: self.host.id(),
            term: status.term,
            replicas: committed.cm_replicas.clone(),
            lease_ms: self.lease_ms,
            installed_id: status.configuration_id(),
            leases,
            history: history.iter().skip(skip).map(row).collect(),
            committed: (*committed).clone(),
            installing,
        };
        match file.write(&self.dir) {
            Ok(()) => self.last_written = Some((Instant::now(), file)),
            Err(e) => tracing::warn!("cannot write the CM status file: {e}"),
        }
        pace
    }
}

/// A change in an answer's words.
fn describe(change: &Change) -> String {
    match change {
        Change::Remove { node } => format!("removing {node}"),
        Change::AddNode { node, .. } => format!("adding {node}"),
        Change::AddRegion { .. } => "adding a region".into(),
        Change::CmReplicas { replicas } => format!("naming the CM replicas {}", list(replicas)),
        Change::Restart { nodes, .. } => {
            let names: Vec<String> = nodes.iter().map(|n| n.to_string()).collect();
            format!("restarting {}", names.join(" "))
        }
        Change::DamagedCopies { node, regions, .. } => {
            let names: Vec<String> = regions.iter().map(|r| r.to_string()).collect();
            format!(
                "setting aside {node}'s damaged copies of {}",
                names.join(" ")
            )
        }
        Change::Activate {
            regions,
            node,
            copied,
            ..
        } => {
            let names = |regions: &[RegionId]| {
                let names: Vec<String> = regions.iter().map(|r| r.to_string()).collect();
                names.join(" ")
            };
            let mut words = Vec::new();
            if !regions.is_empty() {
                words.push(format!("activating {}", names(regions)));
            }
            if !copied.is_empty() {
                let by = node.map(|node| format!(" by {node}")).unwrap_or_default();
                words.push(format!(
                    "counting the copy of {}{by} complete",
                    names(copied)
                ));
            }
            words.join(", ")
        }
    }
}

/// `until - now` in milliseconds, negative when `until` has passed.
fn signed_ms(until: Time, now: Time) -> i64 {
    let ms = |d: Duration| i64::try_from(d.as_millis()).unwrap_or(i64::MAX);
    if until >= now {
        ms(until.saturating_duration_since(now))
    } else {
        -ms(now.saturating_duration_since(until))
    }
}

fn row(record: &Reconfiguration) -> ReconfigurationRow {
    let step = |at: Option<Time>| {
        at.map(|t| {
            t.saturating_duration_since(record.suspected_at)
                .as_secs_f64()
                * 1e3
        })
    };
    ReconfigurationRow {
        cause: record.cause.to_string(),
        from_id: record.from_id,
        to_id: record.to_id,
        failed: record.failed.clone(),
        started_ns: record.suspected_at.as_nanos(),
        probed_ms: step(record.probed_at),
        installed_ms: step(record.installed_at),
        acked_ms: step(record.acked_at),
        committed_ms: step(record.committed_at),
        outcome: outcome_name(&record.outcome),
    }
}

fn outcome_name(outcome: &Outcome) -> String {
    match outcome {
        Outcome::InProgress => "in progress".into(),
        Outcome::Committed => "committed".into(),
        Outcome::Superseded => "superseded".into(),
        Outcome::NothingToDo => "nothing to do".into(),
        Outcome::StoodDown { reason } => format!("stood down: {reason}"),
        Outcome::Failed { reason } => format!("failed: {reason}"),
    }
}

/// A client node's thread that adopts each configuration the CM committed (module docs).
/// Dropping it stops the thread.
pub struct ConfigFollower {
    stopping: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl ConfigFollower {
    pub fn start(node: Arc<ProcessNode>) -> std::io::Result<ConfigFollower> {
        let stopping = Arc::new(AtomicBool::new(false));
        let stop = stopping.clone();
        let thread = std::thread::Builder::new()
            .name(format!("cm-follow-{}", node.node_id().0))
            .spawn(move || {
                let mut seen = None;
                while !stop.load(Ordering::Acquire) {
                    follow_once(&node, &mut seen);
                    std::thread::sleep(FOLLOW_TICK);
                }
            })?;
        Ok(ConfigFollower {
            stopping,
            thread: Some(thread),
        })
    }
}

impl Drop for ConfigFollower {
    fn drop(&mut self) {
        self.stopping.store(true, Ordering::Release);
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

/// Adopts and commits the status file's committed configuration if it is newer than the
/// node's. `seen` is the file's modification time last read, so an unchanged file is not
/// parsed again.
pub fn follow_once(node: &ProcessNode, seen: &mut Option<SystemTime>) {
    let path = CmStatusFile::path(node.dir());
    let Ok(modified) = std::fs::metadata(&path).and_then(|m| m.modified()) else {
        return;
    };
    // Keyed on the modification time only while the node's configuration is committed: two
    // writes within one tick of the file system's clock (coarse on many kernels: a jiffy) carry
    // the same time, and the CM writes every 2 ms while it distributes. A node waiting for a
    // commit reads the file at every look.
    if *seen == Some(modified) && node.txn().config_state().1 {
        return;
    }
    let status = match CmStatusFile::read(node.dir()) {
        Ok(Some(status)) => status,
        Ok(None) => return,
        Err(e) => {
            tracing::debug!("{e}");
            return;
        }
    };
    *seen = Some(modified);
    // The one being distributed first (adopted, not committed: the node's transactions wait
    // for its commit, as a member's do), then the committed one.
    for (newer, commit) in [(status.installing, false), (Some(status.committed), true)] {
        let Some(newer) = newer else {
            continue;
        };
        let id = newer.id;
        if id > node.txn().config_id()
            && let Err(e) = node.adopt(Arc::new(newer))
        {
            tracing::warn!(id, "cannot adopt the CM's configuration: {e}");
            *seen = None;
            return;
        }
        let (current, committed) = node.txn().config_state();
        if commit
            && current == id
            && !committed
            && let Err(e) = node.commit_config(id)
        {
            tracing::warn!(id, "cannot commit the CM's configuration: {e}");
        }
    }
}

/// How long a client waits for the CM to answer its request for a new region.
pub const GROWTH_ANSWER_TIMEOUT: Duration = Duration::from_secs(5);
/// How long a client counts on a request the CM accepted before it asks again: the new
/// configuration normally reaches it within milliseconds of the acceptance.
pub const GROWTH_PATIENCE: Duration = Duration::from_secs(10);

/// A client's [`Grower`](acre_txn::txn_node::Grower) (docs/failures.md#region-growth): asks
/// the CM of the cluster in `dir` for a region when an allocation finds every region full.
/// One request per number of regions seen: the threads of a client that find the same
/// regions full wait for the one request (the CM's answer to a request whose regions grew
/// meanwhile is "nothing to do", so clients that ask at once add one region, not several).
pub fn region_grower(dir: PathBuf) -> acre_txn::txn_node::Grower {
    let asked: std::sync::Mutex<Option<(usize, Instant)>> = std::sync::Mutex::new(None);
    Box::new(move |config: &Configuration| {
        let known_regions = config.regions.len();
        let mut asked = asked.lock().expect(crate::POISONED);
        if let Some((regions, at)) = *asked
            && regions == known_regions
            && at.elapsed() < GROWTH_PATIENCE
        {
            return Ok(());
        }
        let reply = cm_request::ask(
            &dir,
            Change::AddRegion { known_regions },
            GROWTH_ANSWER_TIMEOUT,
        )
        .map_err(|e| e.to_string())?;
        if !reply.accepted {
            return Err(format!("the CM refused a new region: {}", reply.message));
        }
        tracing::info!(known_regions, "{}", reply.message);
        // Remembered only when a region is on its way: "nothing to do now" (a reconfiguration
        // was under way) is asked again by the next attempt if the regions are still full.
        if reply.started {
            *asked = Some((known_regions, Instant::now()));
        }
        Ok(())
    })
}

/// The configuration a starting node or client should start from: the CM's committed one
/// when the cluster in `dir` has a CM that committed one newer than `file`'s, else `file`'s.
pub fn current_configuration(dir: &Path, file: &ClusterFile) -> Configuration {
    if file.cm.is_none() {
        return file.config.clone();
    }
    match CmStatusFile::read(dir) {
        Ok(Some(status)) if status.committed.id > file.config.id => status.committed,
        _ => file.config.clone(),
    }
}
