//! The `local` transport: every node lives in this process, so a one-sided operation is an
//! atomic load, store or CAS on the target node's memory, checked like any other.

use crate::addr::NodeId;
use crate::fabric::memory::NodeMemory;
use crate::fabric::{Op, OpError, Pending, exec};
use crate::hash::FastMap;
use std::sync::{Arc, RwLock};

/// The nodes of an in-process cluster, by id.
#[derive(Default)]
pub struct LocalCluster {
    nodes: RwLock<FastMap<NodeId, Arc<NodeMemory>>>,
}

impl LocalCluster {
    pub fn new() -> Arc<LocalCluster> {
        Arc::new(LocalCluster::default())
    }

    /// Adds a node's memory; a node with the same id is replaced (a restarted node).
    pub fn add(&self, memory: Arc<NodeMemory>) {
        self.nodes
            .write()
            .expect(crate::POISONED)
            .insert(memory.node_id(), memory);
    }

    /// Removes a node: operations on it fail as unreachable from now on.
    pub fn remove(&self, node: NodeId) -> Option<Arc<NodeMemory>> {
        self.nodes.write().expect(crate::POISONED).remove(&node)
    }

    pub fn node(&self, node: NodeId) -> Option<Arc<NodeMemory>> {
        self.nodes
            .read()
            .expect(crate::POISONED)
            .get(&node)
            .cloned()
    }
}

/// One node's path to the others of a [`LocalCluster`].
pub struct LocalTransport {
    cluster: Arc<LocalCluster>,
}

impl LocalTransport {
    pub fn new(cluster: Arc<LocalCluster>) -> LocalTransport {
        LocalTransport { cluster }
    }

    pub fn post(&self, target: NodeId, ops: &[Op]) -> Pending {
        let results = match self.cluster.node(target) {
            Some(memory) => ops.iter().map(|op| exec::execute(&memory, op)).collect(),
            None => ops
                .iter()
                .map(|_| Err(OpError::UnknownNode { node: target }))
                .collect(),
        };
        Pending::ready(results)
    }
}
