//! The node runtime: one process's share of the cluster, started by `acre node --config node.toml`.
//!
//! An [`Endpoint`] is what every participant has: registered memory with a doorbell, an inbox of
//! rings (one per peer), a transport to the others (shm or tcp), and a manifest in the cluster
//! directory so peers can find it. A [`Node`] is an endpoint that also owns regions of the global
//! address space, allocates in them, and runs a worker thread that serves [`Request`]s.
//!
//! Threads of a node: the worker (sleeps on the doorbell when idle), and for tcp the NIC thread
//! (sleeps in epoll). Neither spins while idle.

use crate::addr::{Addr, NodeId, RegionId};
use crate::channel::{ChannelError, Inbox, Message, Outbox, RING_BYTES_DEFAULT, ring_area_id};
use crate::directory::{self, AreaEntry, AreaKind, NodeManifest};
use crate::fabric::doorbell::Doorbell;
use crate::fabric::memory::NodeMemory;
use crate::fabric::shm::ShmTransport;
use crate::fabric::tcp::{ClusterSecret, NicServer, TcpTransport};
use crate::fabric::{Fabric, Transport};
use crate::region::{REGION_BYTES_DEFAULT, Region};
use crate::service::{Reply, Request};
use crate::slab::{BLOCK_BYTES_DEFAULT, SlabAllocator};
use acre_nvm_log::{MapOptions, PersistMode};
use std::collections::HashMap;
use std::io;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

/// How long a worker sleeps on its doorbell before re-checking the stop flag.
const WORKER_SLEEP_MAX: Duration = Duration::from_millis(200);

/// Which transport a node process uses.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum TransportKind {
    Shm,
    Tcp,
}

impl TransportKind {
    pub fn name(self) -> &'static str {
        match self {
            TransportKind::Shm => "shm",
            TransportKind::Tcp => "tcp",
        }
    }
}

fn default_region_bytes() -> u64 {
    REGION_BYTES_DEFAULT
}
fn default_ring_bytes() -> u64 {
    RING_BYTES_DEFAULT
}
fn default_block_bytes() -> u64 {
    BLOCK_BYTES_DEFAULT
}
fn default_persist() -> String {
    "auto".to_string()
}

/// A node's configuration file (`node.toml`).
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NodeConfig {
    /// This node's id, unique in the cluster.
    pub node: NodeId,
    /// The cluster directory (default parent: /dev/shm).
    pub cluster_dir: PathBuf,
    pub transport: TransportKind,
    /// Address the NIC thread listens on (tcp only), e.g. "127.0.0.1:0".
    #[serde(default)]
    pub listen: Option<String>,
    /// The nodes this one exchanges messages with: it keeps a ring for each.
    pub peers: Vec<NodeId>,
    /// Regions of the global address space this node holds.
    #[serde(default)]
    pub regions: Vec<RegionId>,
    #[serde(default = "default_region_bytes")]
    pub region_bytes: u64,
    #[serde(default = "default_ring_bytes")]
    pub ring_bytes: u64,
    #[serde(default = "default_block_bytes")]
    pub block_bytes: u64,
    /// auto | flush | msync (see acre-nvm-log's PersistMode).
    #[serde(default = "default_persist")]
    pub persist: String,
}

/// Why a node could not start or serve.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum NodeError {
    #[error("node config {path}: {reason}")]
    Config { path: PathBuf, reason: String },
    #[error("{what}: {source}")]
    Io { what: String, source: io::Error },
    #[error(transparent)]
    Channel(#[from] ChannelError),
    #[error(transparent)]
    Slab(#[from] crate::slab::AllocError),
    /// The tcp transport needs the cluster secret (`acre demo` and `acre cluster up` write one).
    #[error(transparent)]
    Secret(#[from] crate::fabric::tcp::SecretFileError),
    #[error("{node} did not answer within {timeout:?}: is it running?")]
    Timeout { node: NodeId, timeout: Duration },
    #[error("{node} has not published a manifest in the cluster directory: is it running?")]
    NotRunning { node: NodeId },
    #[error("{node} refused: {reason}")]
    Refused { node: NodeId, reason: String },
    #[error("{node} sent a malformed reply: {reason}")]
    BadReply { node: NodeId, reason: String },
}

fn io_error(what: impl Into<String>) -> impl FnOnce(io::Error) -> NodeError {
    let what = what.into();
    move |source| NodeError::Io { what, source }
}

impl NodeConfig {
    /// Reads and validates a config file.
    pub fn from_file(path: &Path) -> Result<NodeConfig, NodeError> {
        let fail = |reason: String| NodeError::Config {
            path: path.to_path_buf(),
            reason,
        };
        let text = std::fs::read_to_string(path).map_err(|e| fail(format!("cannot read: {e}")))?;
        let config: NodeConfig = toml::from_str(&text).map_err(|e| fail(e.to_string()))?;
        config.validate().map_err(fail)?;
        Ok(config)
    }

    /// Checks what serde cannot.
    pub fn validate(&self) -> Result<(), String> {
        if self.peers.contains(&self.node) {
            return Err(format!("peers lists the node itself ({})", self.node));
        }
        if self
            .regions
            .iter()
            .any(|r| r.0 >= crate::channel::RING_AREA_BASE)
        {
            return Err(format!(
                "region ids must be below {:#x}",
                crate::channel::RING_AREA_BASE
            ));
        }
        if self.transport == TransportKind::Tcp && self.listen.is_none() {
            return Err("transport = \"tcp\" needs listen = \"host:port\"".into());
        }
        if PersistMode::parse(&self.persist).is_none() {
            return Err(format!(
                "persist = {:?}: expected auto, flush or msync",
                self.persist
            ));
        }
        if !self.block_bytes.is_power_of_two() || self.block_bytes > self.region_bytes {
            return Err(format!(
                "block_bytes {} must be a power of two <= region_bytes",
                self.block_bytes
            ));
        }
        Ok(())
    }

    fn map_options(&self) -> MapOptions {
        MapOptions {
            persist: PersistMode::parse(&self.persist).unwrap_or_default(),
        }
    }
}

/// Removes files a previous run of this node left in the cluster directory.
fn remove_stale_files(dir: &Path, node: NodeId) -> io::Result<()> {
    let prefix = format!("{node}-");
    for entry in std::fs::read_dir(dir)? {
        let name = entry?.file_name();
        let name = name.to_string_lossy();
        if name.starts_with(&prefix) && name.ends_with(".region") {
            std::fs::remove_file(dir.join(name.as_ref()))?;
        }
    }
    match std::fs::remove_file(directory::doorbell_path(dir, node)) {
        Err(e) if e.kind() != io::ErrorKind::NotFound => Err(e),
        _ => Ok(()),
    }
}

/// A node's transport to the others: shm maps their files in `dir`; tcp starts this node's NIC
/// thread on `listen` (default `127.0.0.1:0`) serving `memory`, and returns its address.
pub fn open_transport(
    dir: &Path,
    node: NodeId,
    kind: TransportKind,
    listen: Option<&str>,
    options: MapOptions,
    memory: &Arc<NodeMemory>,
) -> Result<(Transport, Option<NicServer>, Option<SocketAddr>), NodeError> {
    match kind {
        TransportKind::Shm => Ok((
            Transport::Shm(ShmTransport::new(dir.to_path_buf(), options)),
            None,
            None,
        )),
        TransportKind::Tcp => {
            let secret = ClusterSecret::from_file(&dir.join(directory::SECRET_FILE))?;
            let listen = listen.unwrap_or("127.0.0.1:0");
            let listen: SocketAddr = listen.parse().map_err(|e| NodeError::Config {
                path: dir.to_path_buf(),
                reason: format!("listen = {listen:?}: {e}"),
            })?;
            let nic = NicServer::start(listen, memory.clone(), secret.clone())
                .map_err(io_error(format!("listen on {listen}")))?;
            let addr = nic.local_addr();
            Ok((
                Transport::Tcp(TcpTransport::new(node, secret)),
                Some(nic),
                Some(addr),
            ))
        }
    }
}

/// Removes files a previous run of `node` left in the cluster directory.
pub fn remove_node_files(dir: &Path, node: NodeId) -> io::Result<()> {
    remove_stale_files(dir, node)
}

/// One participant's presence on the fabric.
pub struct Endpoint {
    config: NodeConfig,
    fabric: Arc<Fabric>,
    inbox: Mutex<Inbox>,
    outboxes: Mutex<HashMap<NodeId, Outbox>>,
    nic: Option<NicServer>,
    tcp_addr: Option<SocketAddr>,
    next_request_id: AtomicU64,
}

impl Endpoint {
    /// Creates the endpoint's memory, inbox and transport (but publishes nothing yet).
    pub fn start(config: NodeConfig) -> Result<Endpoint, NodeError> {
        let dir = config.cluster_dir.clone();
        directory::create_cluster_dir(&dir)
            .map_err(io_error(format!("create {}", dir.display())))?;
        remove_stale_files(&dir, config.node).map_err(io_error("remove stale node files"))?;
        let doorbell = Doorbell::create_file(&directory::doorbell_path(&dir, config.node))
            .map_err(io_error("create doorbell"))?;
        let memory = Arc::new(NodeMemory::new(config.node, Arc::new(doorbell)));
        let inbox = Inbox::create(
            &memory,
            &config.peers,
            config.ring_bytes,
            Some(&dir),
            config.map_options(),
        )?;
        let (transport, nic, tcp_addr) = open_transport(
            &dir,
            config.node,
            config.transport,
            config.listen.as_deref(),
            config.map_options(),
            &memory,
        )?;
        let fabric = Arc::new(Fabric::new(memory, transport));
        Ok(Endpoint {
            config,
            fabric,
            inbox: Mutex::new(inbox),
            outboxes: Mutex::new(HashMap::new()),
            nic,
            tcp_addr,
            next_request_id: AtomicU64::new(1),
        })
    }

    pub fn node_id(&self) -> NodeId {
        self.config.node
    }

    pub fn config(&self) -> &NodeConfig {
        &self.config
    }

    pub fn fabric(&self) -> &Arc<Fabric> {
        &self.fabric
    }

    /// Publishes the manifest: from now on peers can reach this endpoint.
    pub fn publish(&self, regions: &[Arc<Region>]) -> Result<(), NodeError> {
        let mut areas: Vec<AreaEntry> = regions
            .iter()
            .map(|r| AreaEntry::new(r.id(), AreaKind::Region, r.len(), r.key()))
            .collect();
        areas.extend(
            self.inbox
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .area_entries(),
        );
        let manifest = NodeManifest {
            node: self.config.node,
            pid: std::process::id(),
            transport: self.config.transport.name().to_string(),
            tcp_addr: self.tcp_addr.map(|a| a.to_string()),
            areas,
        };
        manifest
            .write(&self.config.cluster_dir)
            .map_err(io_error("publish the manifest"))
    }

    /// Reads `node`'s manifest (and, for tcp, learns its address).
    pub fn discover(&self, node: NodeId) -> Result<NodeManifest, NodeError> {
        let manifest = NodeManifest::read(&self.config.cluster_dir, node)
            .map_err(io_error(format!("read the manifest of {node}")))?
            .ok_or(NodeError::NotRunning { node })?;
        if let (Transport::Tcp(tcp), Some(addr)) = (self.fabric_transport(), &manifest.tcp_addr) {
            let addr: SocketAddr = addr.parse().map_err(|e| NodeError::BadReply {
                node,
                reason: format!("manifest tcp_addr {addr:?}: {e}"),
            })?;
            tcp.add_peer(node, addr);
        }
        Ok(manifest)
    }

    fn fabric_transport(&self) -> &Transport {
        self.fabric.transport()
    }

    /// Sends one message to `target`, attaching to its ring on first use.
    pub fn send(
        &self,
        target: NodeId,
        kind: acre_nvm_log::RecordKind,
        payload: &[u8],
    ) -> Result<(), NodeError> {
        let mut outboxes = self.outboxes.lock().unwrap_or_else(|p| p.into_inner());
        let outbox = match outboxes.entry(target) {
            std::collections::hash_map::Entry::Occupied(entry) => entry.into_mut(),
            std::collections::hash_map::Entry::Vacant(entry) => {
                let manifest = self.discover(target)?;
                let area = manifest
                    .area(ring_area_id(self.config.node))
                    .ok_or_else(|| NodeError::Refused {
                        node: target,
                        reason: format!("it keeps no ring for {}", self.config.node),
                    })?;
                let key = area.access_key().map_err(io_error("read a ring key"))?;
                entry.insert(Outbox::attach(&self.fabric, target, key, area.bytes)?)
            }
        };
        outbox.send(&self.fabric, kind, payload)?;
        Ok(())
    }

    /// Waits up to `timeout` for the next message; the caller truncates it with [`Endpoint::done`].
    pub fn receive(&self, timeout: Duration) -> Result<Option<Message>, NodeError> {
        Ok(self
            .inbox
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .wait(timeout)?)
    }

    /// Frees the ring space of a handled message.
    pub fn done(&self, message: &Message) -> Result<(), NodeError> {
        self.inbox
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .truncate(message.sender, message.record.end())?;
        Ok(())
    }

    /// Sends `request` (its id is assigned here) and waits for the matching reply.
    pub fn call(
        &self,
        target: NodeId,
        request: Request,
        timeout: Duration,
    ) -> Result<Reply, NodeError> {
        let id = self.next_request_id.fetch_add(1, Ordering::Relaxed);
        let request = match request {
            Request::Ping { .. } => Request::Ping { id },
            Request::Alloc { len, .. } => Request::Alloc { id, len },
            Request::Free { addr, .. } => Request::Free { id, addr },
        };
        let (kind, payload) = request.encode();
        self.send(target, kind, &payload)?;
        let deadline = Instant::now() + timeout;
        loop {
            let now = Instant::now();
            if now >= deadline {
                return Err(NodeError::Timeout {
                    node: target,
                    timeout,
                });
            }
            let Some(message) = self.receive(deadline - now)? else {
                continue;
            };
            self.done(&message)?;
            let reply =
                Reply::decode(message.record.kind, &message.record.payload).map_err(|e| {
                    NodeError::BadReply {
                        node: message.sender,
                        reason: e.to_string(),
                    }
                })?;
            // A late reply to an earlier, timed-out call is dropped.
            if message.sender == target && reply.id() == id {
                return match reply {
                    Reply::Refused { reason, .. } => Err(NodeError::Refused {
                        node: target,
                        reason,
                    }),
                    reply => Ok(reply),
                };
            }
        }
    }

    /// Allocates `len` payload bytes on `target`.
    pub fn alloc_on(&self, target: NodeId, len: u32, timeout: Duration) -> Result<Addr, NodeError> {
        match self.call(target, Request::Alloc { id: 0, len }, timeout)? {
            Reply::Allocated { addr, .. } => Ok(addr),
            other => Err(NodeError::BadReply {
                node: target,
                reason: format!("{other:?} to alloc"),
            }),
        }
    }

    /// Stops serving: unpublishes the manifest and stops the NIC thread.
    pub fn shutdown(&mut self) {
        let _ = NodeManifest::remove(&self.config.cluster_dir, self.config.node);
        if let Some(nic) = self.nic.take() {
            nic.stop();
        }
    }
}

impl Drop for Endpoint {
    fn drop(&mut self) {
        self.shutdown();
    }
}

/// A node: an endpoint that holds regions and serves requests from a worker thread.
pub struct Node {
    endpoint: Arc<Endpoint>,
    regions: Vec<Arc<Region>>,
    stop: Arc<AtomicBool>,
    worker: Option<JoinHandle<()>>,
}

/// The regions of a node and their allocators.
struct Heap {
    regions: Vec<(Arc<Region>, SlabAllocator)>,
}

impl Heap {
    fn alloc(&mut self, len: u32) -> Result<Addr, String> {
        let mut last_error = "this node holds no regions".to_string();
        for (region, slab) in &mut self.regions {
            match slab.alloc(region, len as usize) {
                Ok(addr) => return Ok(addr),
                Err(e) => last_error = e.to_string(),
            }
        }
        Err(last_error)
    }

    fn free(&mut self, addr: Addr) -> Result<(), String> {
        let (region, slab) = self
            .regions
            .iter_mut()
            .find(|(r, _)| r.id() == addr.region())
            .ok_or_else(|| format!("{addr} is not in a region of this node"))?;
        slab.free(region, addr).map_err(|e| e.to_string())
    }
}

impl Node {
    /// Creates the node's regions, starts its transport and worker, and publishes its manifest.
    pub fn start(config: NodeConfig) -> Result<Node, NodeError> {
        let endpoint = Endpoint::start(config.clone())?;
        let mut regions = Vec::new();
        let mut heap = Heap {
            regions: Vec::new(),
        };
        for &id in &config.regions {
            let region = Region::create_file(
                &config.cluster_dir,
                config.node,
                id,
                config.region_bytes,
                config.map_options(),
            )
            .map_err(io_error(format!("create region {id}")))?;
            let region = Arc::new(region);
            endpoint
                .fabric()
                .memory()
                .register(region.clone())
                .map_err(|e| {
                    io_error("register a region")(io::Error::new(io::ErrorKind::AlreadyExists, e))
                })?;
            let slab = SlabAllocator::format(id, config.region_bytes, config.block_bytes)?;
            heap.regions.push((region.clone(), slab));
            regions.push(region);
        }
        endpoint.publish(&regions)?;
        let endpoint = Arc::new(endpoint);
        let stop = Arc::new(AtomicBool::new(false));
        let worker = {
            let (endpoint, stop) = (endpoint.clone(), stop.clone());
            std::thread::Builder::new()
                .name(format!("acre-worker-{}", config.node))
                .spawn(move || serve(&endpoint, &mut heap, &stop))
                .map_err(io_error("spawn the worker thread"))?
        };
        Ok(Node {
            endpoint,
            regions,
            stop,
            worker: Some(worker),
        })
    }

    pub fn endpoint(&self) -> &Arc<Endpoint> {
        &self.endpoint
    }

    pub fn regions(&self) -> &[Arc<Region>] {
        &self.regions
    }

    /// Stops the worker and the transport and removes the node's files from the cluster directory.
    pub fn stop(mut self) {
        self.stop_inner();
    }

    fn stop_inner(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        self.endpoint.fabric().memory().doorbell().ring();
        if let Some(worker) = self.worker.take() {
            let _ = worker.join();
        }
        let dir = self.endpoint.config().cluster_dir.clone();
        let node = self.endpoint.node_id();
        let _ = NodeManifest::remove(&dir, node);
        let _ = remove_stale_files(&dir, node);
    }
}

impl Drop for Node {
    fn drop(&mut self) {
        if self.worker.is_some() {
            self.stop_inner();
        }
    }
}

/// The worker loop: serve requests until told to stop.
fn serve(endpoint: &Endpoint, heap: &mut Heap, stop: &AtomicBool) {
    while !stop.load(Ordering::SeqCst) {
        let message = match endpoint.receive(WORKER_SLEEP_MAX) {
            Ok(Some(message)) => message,
            Ok(None) => continue,
            Err(e) => {
                // A corrupt ring is not something to serve through: stop this node.
                eprintln!(
                    "acre node {}: inbox failed: {e}; stopping",
                    endpoint.node_id()
                );
                return;
            }
        };
        if let Err(e) = endpoint.done(&message) {
            eprintln!("acre node {}: truncate failed: {e}", endpoint.node_id());
        }
        let reply = match Request::decode(message.record.kind, &message.record.payload) {
            Ok(Request::Ping { id }) => Reply::Pong { id },
            Ok(Request::Alloc { id, len }) => match heap.alloc(len) {
                Ok(addr) => Reply::Allocated { id, addr },
                Err(reason) => Reply::Refused { id, reason },
            },
            Ok(Request::Free { id, addr }) => match heap.free(addr) {
                Ok(()) => Reply::Freed { id },
                Err(reason) => Reply::Refused { id, reason },
            },
            Err(e) => {
                eprintln!(
                    "acre node {}: dropping a message from {}: {e}",
                    endpoint.node_id(),
                    message.sender
                );
                continue;
            }
        };
        let (kind, payload) = reply.encode();
        if let Err(e) = endpoint.send(message.sender, kind, &payload) {
            eprintln!(
                "acre node {}: reply to {} failed: {e}",
                endpoint.node_id(),
                message.sender
            );
        }
    }
}
