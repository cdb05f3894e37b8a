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
