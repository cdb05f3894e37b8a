//! The `local` transport: every node lives in this process, so a one-sided operation is an
//! atomic load, store or CAS on the target node's memory, checked like any other.

use crate::addr::NodeId;
use crate::fabric::exec::ReadOrder;
use crate::fabric::memory::NodeMemory;
use crate::fabric::{Op, OpError, Pending, exec};
use crate::hash::FastMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, RwLock};

/// The nodes of an in-process cluster, by id.
#[derive(Default)]
pub struct LocalCluster {
    nodes: RwLock<FastMap<NodeId, Arc<NodeMemory>>>,
    /// READs load their words in decreasing address order ([`Self::read_out_of_order`]).
    descending_reads: AtomicBool,
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

    /// From now on every READ of this cluster loads its words in decreasing address order, as
    /// a NIC or a provider's copy may: for tests of what holds over a transport that does not
    /// read in address order ([`crate::fabric::Fabric::reads_in_address_order`]).
    pub fn read_out_of_order(&self) {
        self.descending_reads.store(true, Ordering::Release);
    }

    /// Whether READs load their words in increasing address order.
    pub fn reads_in_address_order(&self) -> bool {
        !self.descending_reads.load(Ordering::Acquire)
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

    /// Whether READs load their words in increasing address order (unless a test asked
    /// otherwise: [`LocalCluster::read_out_of_order`]).
    pub fn reads_in_address_order(&self) -> bool {
        self.cluster.reads_in_address_order()
    }

    pub fn post(&self, target: NodeId, ops: &[Op]) -> Pending {
        let order = if self.cluster.reads_in_address_order() {
            ReadOrder::Ascending
        } else {
            ReadOrder::Descending
        };
        let results = match self.cluster.node(target) {
            Some(memory) => ops
                .iter()
                .map(|op| exec::execute_reading(&memory, op, order))
                .collect(),
            None => ops
                .iter()
                .map(|_| Err(OpError::UnknownNode { node: target }))
                .collect(),
        };
        Pending::ready(results)
    }
}
