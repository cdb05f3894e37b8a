//! Three-node clusters on each transport, built the way node processes build themselves: every
//! node registers a data region and an inbox (one ring per other node) in its own memory and
//! reaches the others only through its [`Fabric`].
//!
//! The benches build the same clusters in `benches/src/testbed.rs`; the engine's tests may not
//! depend on the benches crate, so the two builders are kept small and alike.

use acre_engine::addr::{NodeId, RegionId};
use acre_engine::channel::{Inbox, ring_area_id};
use acre_engine::directory::{self, AreaEntry, AreaKind, NodeManifest};
use acre_engine::fabric::local::{LocalCluster, LocalTransport};
use acre_engine::fabric::shm::ShmTransport;
use acre_engine::fabric::tcp::{ClusterSecret, NicServer, TcpTransport};
use acre_engine::fabric::{Doorbell, Fabric, Membership, NodeMemory, Transport};
use acre_engine::region::{AccessKey, Region};
use acre_nvm_log::MapOptions;
use std::any::Any;
use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;

pub const NODE_COUNT: usize = 3;
/// Every node's data region has this id (each node has its own, under its own key).
pub const DATA_REGION: RegionId = RegionId(1);
pub const DATA_REGION_BYTES: u64 = 64 << 10;
/// Small rings, so that the channel tests wrap around many times.
pub const RING_BYTES: u64 = 16 << 10;

/// One node: its endpoint, its inbox, and the key of its data region.
pub struct Node {
    pub fabric: Fabric,
    pub inbox: Inbox,
    pub data_key: AccessKey,
}

impl Node {
    pub fn id(&self) -> NodeId {
        self.fabric.node_id()
    }

    /// The key of the ring in this node's memory that `sender` writes (what a real sender learns
    /// from the receiver's manifest).
    pub fn ring_key(&self, sender: NodeId) -> AccessKey {
        self.fabric
            .memory()
            .area(ring_area_id(sender))
            .unwrap_or_else(|| panic!("{} has no ring for {sender}", self.id()))
            .key()
    }
}

pub struct Cluster {
    pub nodes: [Node; NODE_COUNT],
    /// Whatever must outlive the nodes (the cluster directory, the NIC servers): dropped after
    /// them, because fields drop in declaration order.
    _keep: Box<dyn Any>,
}

/// The configuration the tcp cluster's nodes are members of.
const CONFIG: u64 = 1;

fn node_ids() -> [NodeId; NODE_COUNT] {
    std::array::from_fn(|index| NodeId(index as u16 + 1))
}

fn others(me: NodeId) -> Vec<NodeId> {
    node_ids().into_iter().filter(|&id| id != me).collect()
}

/// Registers the data region and the inbox in `memory`.
fn register(memory: &NodeMemory, data: Region, dir: Option<&Path>) -> (AccessKey, Inbox) {
    let data_key = data.key();
    memory
        .register(Arc::new(data))
        .expect("register the data region");
    let inbox = Inbox::create(
        memory,
        &others(memory.node_id()),
        RING_BYTES,
        dir,
        MapOptions::default(),
    )
    .expect("create the inbox");
    (data_key, inbox)
}

fn anonymous_memory(id: NodeId) -> (Arc<NodeMemory>, AccessKey, Inbox) {
    let doorbell = Arc::new(Doorbell::anonymous().expect("map a doorbell"));
    let memory = Arc::new(NodeMemory::new(id, doorbell));
    let data = Region::anonymous(DATA_REGION, DATA_REGION_BYTES).expect("map the data region");
    let (data_key, inbox) = register(&memory, data, None);
    (memory, data_key, inbox)
}

/// Every node in this process, operating on each other's memory directly.
pub fn local() -> Cluster {
    let directory = LocalCluster::new();
    let nodes = node_ids().map(|id| {
        let (memory, data_key, inbox) = anonymous_memory(id);
        directory.add(memory.clone());
        let transport = Transport::Local(LocalTransport::new(directory.clone()));
        Node {
            fabric: Fabric::new(memory, transport),
            inbox,
            data_key,
        }
    });
    Cluster {
        nodes,
        _keep: Box::new(()),
    }
}

/// Every node in this process, but each sharing its memory only as files in a cluster directory
/// and reaching the others by mapping their files, as separate node processes would.
pub fn shm() -> Cluster {
    // tmpfs, like the default cluster directory: PERSIST is an msync, which must not hit a disk.
    let dir = tempfile::Builder::new()
        .prefix("acre-it-")
        .tempdir_in(directory::CLUSTER_DIR_PARENT_DEFAULT)
        .or_else(|_| tempfile::tempdir())
        .expect("create the cluster directory");
    let path = dir.path();
    let options = MapOptions::default();
    let nodes = node_ids().map(|id| {
        let doorbell = Doorbell::create_file(&directory::doorbell_path(path, id))
            .expect("create the doorbell file");
        let memory = Arc::new(NodeMemory::new(id, Arc::new(doorbell)));
        let data = Region::create_file(path, id, DATA_REGION, DATA_REGION_BYTES, options)
            .expect("create the data region file");
        let (data_key, inbox) = register(&memory, data, Some(path));
        let mut areas = vec![AreaEntry::new(
            DATA_REGION,
            AreaKind::Region,
            DATA_REGION_BYTES,
            data_key,
        )];
        areas.extend(inbox.area_entries());
        NodeManifest {
            node: id,
            pid: std::process::id(),
            transport: "shm".into(),
            tcp_addr: None,
            areas,
            started: None,
            cm_link: None,
            lease: None,
            damaged: Vec::new(),
            ofi: None,
        }
        .write(path)
        .expect("publish the manifest");
        let transport = Transport::Shm(ShmTransport::new(path.to_path_buf(), options));
        Node {
            fabric: Fabric::new(memory, transport),
            inbox,
            data_key,
        }
    });
    Cluster {
        nodes,
        _keep: Box::new(dir),
    }
}

/// Every node in this process with a NIC server on loopback; the endpoints reach each other only
/// through TCP.
pub fn tcp() -> Cluster {
    let secret = ClusterSecret::generate();
    let listen: SocketAddr = "127.0.0.1:0".parse().expect("a socket address");
    let mut servers = Vec::with_capacity(NODE_COUNT);
    let mut addrs = Vec::with_capacity(NODE_COUNT);
    let mut parts = Vec::with_capacity(NODE_COUNT);
    for id in node_ids() {
        let (memory, data_key, inbox) = anonymous_memory(id);
        let membership = Membership::new(CONFIG, node_ids());
        let server = NicServer::start(listen, memory.clone(), secret.clone(), membership)
            .expect("start the NIC server");
        addrs.push((id, server.local_addr()));
        servers.push(server);
        parts.push((memory, data_key, inbox));
    }
    let mut parts = parts.into_iter();
    let nodes = node_ids().map(|id| {
        let (memory, data_key, inbox) = parts.next().expect("one part per node");
        let transport = TcpTransport::new(id, CONFIG, secret.clone());
        for &(peer, addr) in addrs.iter().filter(|(peer, _)| *peer != id) {
            transport.add_peer(peer, addr);
        }
        Node {
            fabric: Fabric::new(memory, Transport::Tcp(transport)),
            inbox,
            data_key,
        }
    });
    Cluster {
        nodes,
        _keep: Box::new(servers),
    }
}

/// Every node in this process with the ofi transport on loopback through libfabric's
/// `tcp;ofi_rxm` provider: READ/WRITE/CAS are the provider's RMA and atomics on each node's
/// registered memory.
#[cfg(feature = "ofi")]
pub fn ofi_tcp() -> Cluster {
    ofi(acre_engine::fabric::ofi::OfiConfig::loopback("tcp;ofi_rxm"))
}

/// As [`ofi_tcp`], through the `sockets` provider (which places a batch's RMA in order, so a
/// batch is posted at once).
#[cfg(feature = "ofi")]
pub fn ofi_sockets() -> Cluster {
    ofi(acre_engine::fabric::ofi::OfiConfig::loopback("sockets"))
}

/// As [`ofi_tcp`], with CAS as a message the target's NIC thread executes: the route a
/// provider without atomics takes.
#[cfg(feature = "ofi")]
pub fn ofi_tcp_cas_by_message() -> Cluster {
    ofi(acre_engine::fabric::ofi::OfiConfig {
        atomics: false,
        ..acre_engine::fabric::ofi::OfiConfig::loopback("tcp;ofi_rxm")
    })
}

#[cfg(feature = "ofi")]
fn ofi(config: acre_engine::fabric::ofi::OfiConfig) -> Cluster {
    use acre_engine::fabric::ofi::OfiTransport;
    let mut nics = Vec::with_capacity(NODE_COUNT);
    let mut parts = Vec::with_capacity(NODE_COUNT);
    let mut cards = Vec::with_capacity(NODE_COUNT);
    for id in node_ids() {
        let (memory, data_key, inbox) = anonymous_memory(id);
        let (transport, nic) = OfiTransport::start(&config, memory.clone())
            .unwrap_or_else(|e| panic!("start the ofi transport of {id}: {e}"));
        assert_eq!(
            transport.has_atomics(),
            config.atomics,
            "{}: CAS takes the route the test names",
            config.provider
        );
        cards.push(transport.card().expect("the node's card"));
        nics.push(nic);
        parts.push((memory, transport, data_key, inbox));
    }
    let mut parts = parts.into_iter();
    let nodes = node_ids().map(|id| {
        let (memory, transport, data_key, inbox) = parts.next().expect("one part per node");
        for card in cards.iter().filter(|card| card.node != id) {
            transport
                .add_peer(card.clone())
                .unwrap_or_else(|e| panic!("{id} adds {}: {e}", card.node));
        }
        Node {
            fabric: Fabric::new(memory, Transport::Ofi(transport)),
            inbox,
            data_key,
        }
    });
    Cluster {
        nodes,
        _keep: Box::new(nics),
    }
}

/// As [`ofi_tcp`], through libfabric's `shm` provider (shared memory between processes; here
/// between the nodes of one process), whose remote addresses are virtual addresses.
#[cfg(feature = "ofi")]
pub fn ofi_shm() -> Cluster {
    ofi(acre_engine::fabric::ofi::OfiConfig::loopback("shm"))
}

/// Every node in this process with the verbs transport on its in-process fake verbs layer
/// (feature `rdma-fake`): the transport's logic, with the device simulated. CAS is a message
/// to the target's NIC thread (the default).
#[cfg(feature = "rdma-fake")]
pub fn verbs_fake() -> Cluster {
    verbs_fake_with(false)
}

/// As [`verbs_fake`], with CAS as the NIC's ATOMIC_CMP_AND_SWP (each target allows it).
#[cfg(feature = "rdma-fake")]
pub fn verbs_fake_nic_atomics() -> Cluster {
    verbs_fake_with(true)
}

#[cfg(feature = "rdma-fake")]
fn verbs_fake_with(atomics: bool) -> Cluster {
    use acre_engine::fabric::verbs::fake::FakeNet;
    use acre_engine::fabric::verbs::{VerbsConfig, VerbsTransport};
    let net = FakeNet::new();
    let secret = acre_engine::fabric::tcp::ClusterSecret::generate();
    let config = VerbsConfig {
        atomics,
        ..VerbsConfig::new("fake", "127.0.0.1:0", &secret)
    };
    let mut nics = Vec::with_capacity(NODE_COUNT);
    let mut parts = Vec::with_capacity(NODE_COUNT);
    let mut cards = Vec::with_capacity(NODE_COUNT);
    for id in node_ids() {
        let (memory, data_key, inbox) = anonymous_memory(id);
        let (transport, nic) = VerbsTransport::start_on(net.device(id.0), &config, memory.clone())
            .unwrap_or_else(|e| panic!("start the verbs transport of {id}: {e}"));
        cards.push(transport.card());
        nics.push(nic);
        parts.push((memory, transport, data_key, inbox));
    }
    let mut parts = parts.into_iter();
    let nodes = node_ids().map(|id| {
        let (memory, transport, data_key, inbox) = parts.next().expect("one part per node");
        for card in cards.iter().filter(|card| card.node != id) {
            transport
                .add_peer(card.clone())
                .unwrap_or_else(|e| panic!("{id} adds {}: {e}", card.node));
        }
        Node {
            fabric: Fabric::new(memory, Transport::VerbsFake(transport)),
            inbox,
            data_key,
        }
    });
    Cluster {
        nodes,
        _keep: Box::new((nics, net)),
    }
}
