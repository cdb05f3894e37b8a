//! The embedded cluster the protocol, index and list-append tests run on, and `settle`, which
//! waits until nothing is in flight in it.
//!
//! Layout: three nodes, f = 2, one region per node; region `k + 1` has its primary on node
//! index `k` (`NodeId(k + 1)`) and its backups on the two others.

use acre_engine::addr::{Addr, NodeId, RegionId};
use acre_engine::channel::ring_area_id;
use acre_engine::clock::Clock;
use acre_engine::object::{Header, SLOT_OVERHEAD_BYTES, load_header};
use acre_engine::region::Region;
use acre_nvm_log::ring::{HEAD_OFFSET, TAIL_OFFSET, decode_pos_word};
use acre_replication::{EmbeddedCluster, ReplicaNode};
use acre_txn::config::CommitMode;
use acre_txn::{Configuration, Error, TxnNode};
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

pub const REGION_BYTES: u64 = 4 << 20;
pub const BLOCK_BYTES: u64 = 64 << 10;
pub const RING_BYTES: u64 = 256 << 10;
/// Generous: quiescence takes milliseconds, but the test binary shares two cores.
pub const SETTLE_TIMEOUT: Duration = Duration::from_secs(20);

/// Three nodes with regions of `region_bytes` (blocks of [`BLOCK_BYTES`]), rings of
/// `ring_bytes`, and `clients` as client-only node ids.
pub fn start(region_bytes: u64, ring_bytes: u64, clients: Vec<NodeId>) -> EmbeddedCluster {
    start_in(commit_mode(), region_bytes, ring_bytes, clients)
}

/// As [`start`], committing in `mode`.
pub fn start_in(
    mode: CommitMode,
    region_bytes: u64,
    ring_bytes: u64,
    clients: Vec<NodeId>,
) -> EmbeddedCluster {
    let ids: Vec<NodeId> = (1..=3).map(NodeId).collect();
    let mut config =
        Configuration::place(1, ids, clients, 1, 2, region_bytes, BLOCK_BYTES).expect("config");
    config.commit = mode;
    EmbeddedCluster::start_faulty(config, ring_bytes).expect("start the cluster")
}

/// [`three_nodes`], every node reading time through `clock`.
pub fn three_nodes_on(clock: Clock) -> EmbeddedCluster {
    let ids: Vec<NodeId> = (1..=3).map(NodeId).collect();
    let mut config =
        Configuration::place(1, ids, vec![], 1, 2, REGION_BYTES, BLOCK_BYTES).expect("config");
    config.commit = commit_mode();
    EmbeddedCluster::start_faulty_with_clock(config, RING_BYTES, clock).expect("start the cluster")
}

/// The commit mode of the clusters tests start: `ACRE_TEST_COMMIT` (`messages` or
/// `one-sided`), else the default. CI runs the whole binary in each mode.
pub fn commit_mode() -> CommitMode {
    match std::env::var("ACRE_TEST_COMMIT") {
        Ok(name) => CommitMode::parse(&name)
            .unwrap_or_else(|| panic!("ACRE_TEST_COMMIT={name:?}: expected messages or one-sided")),
        Err(_) => CommitMode::default(),
    }
}

/// Three nodes with the default sizes and no client-only nodes.
pub fn three_nodes() -> EmbeddedCluster {
    start(REGION_BYTES, RING_BYTES, vec![])
}

/// Head and tail of one log ring.
#[derive(Debug)]
pub struct RingState {
    pub receiver: NodeId,
    pub sender: NodeId,
    pub head: u64,
    pub tail: u64,
}

/// Every ring of every node: head (what the receiver has truncated) and tail (what the sender
/// has appended), read from the ring headers.
pub fn rings(cluster: &EmbeddedCluster) -> Vec<RingState> {
    let members: Vec<NodeId> = cluster.config().members().collect();
    let mut states = Vec::new();
    for node in cluster.nodes() {
        for &sender in &members {
            let area = node
                .txn()
                .fabric()
                .memory()
                .area(ring_area_id(sender))
                .expect("every member has a ring at every node");
            let word = |offset: u64| area.words_at(offset as u32, 8)[0].load(Ordering::Acquire);
            states.push(RingState {
                receiver: node.node_id(),
                sender,
                head: decode_pos_word(word(HEAD_OFFSET), HEAD_OFFSET).expect("head word"),
                tail: decode_pos_word(word(TAIL_OFFSET), TAIL_OFFSET).expect("tail word"),
            });
        }
    }
    states
}

/// Waits until nothing is in flight: every truncation sent and applied, every ring truncated
/// up to its tail (no record unread or kept alive), and no transaction held by any primary or
/// backup. Fails the test if that takes longer than [`SETTLE_TIMEOUT`], or if a node still
/// holds something once every ring is empty.
///
/// `EmbeddedCluster::quiesce` alone is not enough: it looks at what the nodes hold, not at
/// what their rings still hold, so it can return while a backup has yet to read a
/// COMMIT-BACKUP (and then holds a transaction again). Once every ring is empty, every record
/// has been handled and none is kept, so nothing can be held.
///
/// It does not compare backups with primaries: a test that expects them equal says so with
/// `cluster.check_replicas()` after it, in its own words.
pub fn settle(cluster: &EmbeddedCluster) {
    let deadline = Instant::now() + SETTLE_TIMEOUT;
    loop {
        assert!(
            cluster.quiesce(SETTLE_TIMEOUT),
            "the cluster did not quiesce within {SETTLE_TIMEOUT:?}"
        );
        let busy: Vec<RingState> = rings(cluster)
            .into_iter()
            .filter(|r| r.head != r.tail)
            .collect();
        if busy.is_empty() {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "rings still hold records after quiescence: {busy:?}"
        );
        std::thread::sleep(Duration::from_millis(1));
    }
    for node in cluster.nodes() {
        assert!(
            !node.txn().links().has_pending_truncations(),
            "{} has truncations to send with every ring empty",
            node.node_id()
        );
        assert_eq!(
            node.txn().primary().held_count(),
            0,
            "{} holds transactions as a primary with every ring empty",
            node.node_id()
        );
        assert_eq!(
            node.backup().held_count(),
            0,
            "{} holds transactions as a backup with every ring empty",
            node.node_id()
        );
    }
}

// Nodes and objects.

/// The coordinator side of node index `index`.
pub fn txn_node(cluster: &EmbeddedCluster, index: usize) -> Arc<TxnNode> {
    cluster.nodes()[index].txn().clone()
}

/// The region whose primary is node index `index`.
pub fn region_of(index: usize) -> RegionId {
    RegionId(index as u32 + 1)
}

pub fn replica(cluster: &EmbeddedCluster, id: NodeId) -> &ReplicaNode {
    cluster
        .nodes()
        .iter()
        .find(|n| n.node_id() == id)
        .unwrap_or_else(|| panic!("{id} is not in the cluster"))
}

/// The primary's copy of `region`.
pub fn primary_copy(cluster: &EmbeddedCluster, region: RegionId) -> Arc<Region> {
    let primary = cluster.config().placement(region).expect("placed").primary;
    replica(cluster, primary)
        .copy(region)
        .expect("the primary holds its region")
}

/// The header of the object at `addr` as its primary's memory holds it right now (no retry
/// while locked, unlike `TxnNode::read_slot`).
pub fn primary_header(cluster: &EmbeddedCluster, addr: Addr) -> Header {
    let copy = primary_copy(cluster, addr.region());
    load_header(copy.words_at(addr.offset(), SLOT_OVERHEAD_BYTES as u64))
}

/// Allocates an object in `region` from `node`, sets it to `value` and commits.
pub fn create(node: &Arc<TxnNode>, region: RegionId, value: &[u8]) -> Addr {
    let mut txn = node.begin().expect("begin");
    let addr = txn
        .alloc_near(value.len(), Addr::new(region, 0))
        .expect("alloc");
    assert_eq!(
        addr.region(),
        region,
        "alloc_near stays in the region of near"
    );
    txn.write(addr, value).expect("write");
    txn.commit().expect("commit the allocation");
    addr
}

/// Writes `value` to `addr` in a transaction of its own, from `node`.
pub fn overwrite(node: &Arc<TxnNode>, addr: Addr, value: &[u8]) {
    let mut txn = node.begin().expect("begin");
    txn.write(addr, value).expect("write");
    txn.commit().expect("commit the overwrite");
}

/// The committed value at `addr`, read by `node`.
pub fn value_at(node: &Arc<TxnNode>, addr: Addr) -> Result<Vec<u8>, Error> {
    let mut txn = node.begin()?;
    let value = txn.read(addr)?;
    txn.commit()?;
    Ok(value)
}

/// Node runtimes (`ProcessNode`s in this test process) of `config`'s memory nodes over
/// `transport` in `dir`, a fresh cluster directory: its secret and cluster file written first.
/// On ofi, `transfer_threshold_bytes` is the cluster file's (the hybrid transfer, docs/ofi.md).
pub fn process_nodes(
    dir: &std::path::Path,
    transport: acre_engine::fabric::transport_kind::TransportKind,
    transfer_threshold_bytes: Option<u64>,
    config: &Configuration,
) -> Vec<acre_replication::process::ProcessNode> {
    use acre_engine::directory::SECRET_FILE;
    use acre_engine::fabric::tcp::ClusterSecret;
    use acre_engine::fabric::transport_kind::TransportKind;
    use acre_replication::cluster_file::{CLUSTER_FILE, ClusterFile, OfiSettings};
    use acre_replication::process::ProcessNode;
    ClusterSecret::generate()
        .write_file(&dir.join(SECRET_FILE))
        .expect("write the secret");
    let path = dir.join(CLUSTER_FILE);
    ClusterFile {
        transport,
        persist: "flush".to_string(),
        ring_bytes: RING_BYTES,
        cm: None,
        ofi: (transport == TransportKind::Ofi).then(|| OfiSettings {
            provider: "tcp;ofi_rxm".to_string(),
            transfer_threshold_bytes,
        }),
        config: config.clone(),
    }
    .write(&path)
    .expect("write the cluster file");
    config
        .nodes
        .iter()
        .map(|&id| ProcessNode::start(&path, id).unwrap_or_else(|e| panic!("start {id}: {e}")))
        .collect()
}
