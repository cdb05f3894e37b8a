//! A process cluster over the shm transport, its nodes run in this test process: what
//! `acre cluster up` and `Db::connect` start (a cluster file in a directory, one
//! `ProcessNode` per memory node, a `ClientNode`), so the nodes reach each other by mapping
//! each other's region, ring and reply files, as node processes of one host do.

use crate::fixture::{BLOCK_BYTES, REGION_BYTES, RING_BYTES, SETTLE_TIMEOUT};
use acre_engine::addr::NodeId;
use acre_engine::fabric::transport_kind::TransportKind;
use acre_replication::client::ClientNode;
use acre_replication::cluster_file::{CLIENT_ID_BASE, CLUSTER_FILE, ClusterFile};
use acre_replication::process::ProcessNode;
use acre_replication::verify;
use acre_txn::{Configuration, TxnNode};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// Three memory nodes (f = 2, one region each, as the embedded fixture) and one client node.
pub struct ShmCluster {
    config: Configuration,
    // Fields drop in order: the client first (it flushes its truncations to the memory
    // nodes), then the memory nodes, then the directory with every file they mapped.
    client: Option<ClientNode>,
    nodes: Vec<ProcessNode>,
    dir: tempfile::TempDir,
}

impl ShmCluster {
    pub fn start() -> ShmCluster {
        let dir = tempfile::tempdir().expect("create the cluster directory");
        let ids: Vec<NodeId> = (1..=3).map(NodeId).collect();
        let mut config = Configuration::place(
            1,
            ids.clone(),
            vec![NodeId(CLIENT_ID_BASE)],
            1,
            2,
            REGION_BYTES,
            BLOCK_BYTES,
        )
        .expect("config");
        config.commit = crate::fixture::commit_mode();
        let file = ClusterFile {
            transport: TransportKind::Shm,
            // Flush + drain on the ordinary files of a temporary directory: `auto` would
            // msync every persist, which only makes the test slower.
            persist: "flush".to_string(),
            ring_bytes: RING_BYTES,
            cm: None,
            ofi: None,
            config: config.clone(),
        };
        let path = dir.path().join(CLUSTER_FILE);
        file.write(&path).expect("write the cluster file");
        let nodes = ids
            .iter()
            .map(|&id| {
                ProcessNode::start(&path, id).unwrap_or_else(|e| panic!("start {id} on shm: {e}"))
            })
            .collect();
        let client = ClientNode::connect(&path).expect("connect a client node");
        ShmCluster {
            config,
            client: Some(client),
            nodes,
            dir,
        }
    }

    /// The coordinators of the memory nodes, then the client node's.
    pub fn txn_nodes(&self) -> Vec<Arc<TxnNode>> {
        let mut nodes: Vec<Arc<TxnNode>> = self.nodes.iter().map(|n| n.txn().clone()).collect();
        nodes.extend(self.client.iter().map(|c| c.txn().clone()));
        nodes
    }

    /// The coordinators of the memory nodes (whose `primary()` holds the allocators).
    pub fn memory_txn_nodes(&self) -> Vec<Arc<TxnNode>> {
        self.nodes.iter().map(|n| n.txn().clone()).collect()
    }

    /// Waits until nothing is in flight (every truncation sent, every ring of every memory
    /// node read up to its tail, nothing held), then compares every backup copy with its
    /// primary's. Fails the test if that takes longer than [`SETTLE_TIMEOUT`].
    pub fn settle(&self) {
        let deadline = Instant::now() + SETTLE_TIMEOUT;
        loop {
            let client_quiet = self
                .client
                .as_ref()
                .is_none_or(|c| c.quiesce(Duration::ZERO));
            for node in &self.nodes {
                let _ = node.txn().links().flush_truncations(Duration::ZERO);
            }
            if client_quiet && self.nodes.iter().all(|n| n.replica().is_quiet()) {
                break;
            }
            assert!(
                Instant::now() < deadline,
                "the shm cluster in {} did not quiesce within {SETTLE_TIMEOUT:?}",
                self.dir.path().display()
            );
            std::thread::sleep(Duration::from_millis(1));
        }
        for placement in &self.config.regions {
            let copy = |id: NodeId| {
                self.nodes
                    .iter()
                    .find(|n| n.txn().node_id() == id)
                    .and_then(|n| n.replica().copy(placement.region))
                    .unwrap_or_else(|| panic!("{id} holds a copy of {}", placement.region))
            };
            let primary = copy(placement.primary);
            for &backup in &placement.backups {
                if let Err(mismatch) =
                    verify::compare(&primary, &copy(backup), self.config.block_bytes)
                {
                    panic!("the copy at {backup} differs from its primary's: {mismatch}");
                }
            }
        }
    }

    /// Stops the client node, then the memory nodes, and removes the directory.
    pub fn stop(mut self) {
        if let Some(client) = self.client.take() {
            drop(client);
        }
        for node in self.nodes.drain(..) {
            node.stop();
        }
    }
}

/// docs/failures.md#clock: a node process, memory node or client, reads its clock through the
/// control file the harness left for it in the cluster directory, from its start on, and
/// refuses to start on a damaged one; a node without one is on the system clock.
#[test]
fn node_processes_read_the_clock_their_control_files_set() {
    use acre_engine::clock::{Clock, ClockControlFile, control_file_path};
    use acre_replication::process::NodeStartError;
    let dir = tempfile::tempdir().expect("create the cluster directory");
    let client_id = NodeId(CLIENT_ID_BASE);
    let config = Configuration::place(
        1,
        vec![NodeId(1), NodeId(2)],
        vec![client_id],
        1,
        1,
        REGION_BYTES,
        BLOCK_BYTES,
    )
    .expect("config");
    let path = dir.path().join(CLUSTER_FILE);
    ClusterFile {
        transport: TransportKind::Shm,
        persist: "flush".to_string(),
        ring_bytes: RING_BYTES,
        config,
        cm: None,
        ofi: None,
    }
    .write(&path)
    .expect("write the cluster file");
    let skew =
        |clock: &Clock| clock.now().as_nanos() as i128 - Clock::system().now().as_nanos() as i128;
    let secs = |s: i128| s * 1_000_000_000;

    let n1_file = ClockControlFile::create(&control_file_path(dir.path(), NodeId(1)))
        .expect("create n1's control file");
    n1_file.jump_forward(Duration::from_secs(1000));
    let damaged = control_file_path(dir.path(), NodeId(2));
    std::fs::write(&damaged, [0xff; 4096]).expect("write a damaged control file");
    let error = ProcessNode::start(&path, NodeId(2))
        .err()
        .expect("n2 does not start on a damaged control file");
    assert!(matches!(error, NodeStartError::Clock { .. }), "{error}");
    assert!(error.to_string().contains("n2.clock"), "{error}");
    std::fs::remove_file(&damaged).expect("remove the damaged control file");

    let n1 = ProcessNode::start(&path, NodeId(1)).expect("start n1");
    let n2 = ProcessNode::start(&path, NodeId(2)).expect("start n2");
    assert!(skew(n1.txn().clock()) >= secs(999), "n1 runs 1000 s ahead");
    n1_file.jump_forward(Duration::from_secs(100));
    assert!(skew(n1.txn().clock()) >= secs(1099), "n1 sees a later jump");
    assert!(
        skew(n2.txn().clock()).abs() < secs(1),
        "n2 is on the system clock"
    );
    assert!(
        !control_file_path(dir.path(), NodeId(2)).exists(),
        "a node on the system clock creates no control file"
    );

    let client_file = ClockControlFile::create(&control_file_path(dir.path(), client_id))
        .expect("create the client's control file");
    client_file.jump_forward(Duration::from_secs(500));
    let client = ClientNode::connect(&path).expect("connect a client node");
    assert_eq!(client.txn().node_id(), client_id);
    assert!(
        skew(client.txn().clock()) >= secs(499),
        "the client runs 500 s ahead"
    );
    // Clocks that disagree by minutes change no outcome: only timeouts read them.
    let mut txn = client.txn().begin().expect("begin");
    let addr = txn.alloc(8).expect("alloc");
    txn.write(addr, b"skewed").expect("write");
    assert_eq!(txn.commit(), Ok(()));
    drop(client);
    n1.stop();
    n2.stop();
}
