//! An embedded cluster: every node of a configuration in this process, on the `local`
//! transport, in anonymous memory, reading time through the process's one clock. What
//! `Db::embedded` runs, and what the tests use.

use crate::liveness::Stopped;
use crate::replica::{AdoptError, ReplicaNode, StartError, Storage};
use crate::verify::{self, Mismatch};
use acre_engine::addr::NodeId;
use acre_engine::clock::Clock;
use acre_engine::fabric::fault::FaultPlan;
use acre_engine::fabric::local::{LocalCluster, LocalTransport};
use acre_engine::fabric::memory::NodeMemory;
use acre_engine::fabric::{Doorbell, Fabric, Transport};
use acre_txn::config::Configuration;
use acre_txn::directory::Directory;
use std::sync::Arc;
use std::time::Duration;

/// All nodes of a configuration, in this process.
pub struct EmbeddedCluster {
    config: Arc<Configuration>,
    nodes: Vec<ReplicaNode>,
    faults: Option<Arc<FaultPlan>>,
    /// The nodes [`EmbeddedCluster::kill`] stopped.
    stopped: Arc<Stopped>,
    local: Arc<LocalCluster>,
    /// The clock every node reads (they share a process).
    clock: Clock,
}

impl EmbeddedCluster {
    /// Starts every member of `config` with rings of `ring_bytes`.
    pub fn start(config: Configuration, ring_bytes: u64) -> Result<EmbeddedCluster, StartError> {
        EmbeddedCluster::start_with(config, ring_bytes, None, Clock::system())
    }

    /// Like [`start`](Self::start), with a [`FaultPlan`] (no rules yet) on every node's
    /// fabric, so that a test can fail, stall or half-execute what one node sends another.
    /// The nodes then treat each other as across a network that can stall.
    pub fn start_faulty(
        config: Configuration,
        ring_bytes: u64,
    ) -> Result<EmbeddedCluster, StartError> {
        EmbeddedCluster::start_faulty_with_clock(config, ring_bytes, Clock::system())
    }

    /// Like [`start_faulty`](Self::start_faulty), every node reading time through `clock`
    /// instead of the system clock: a test that controls it moves every lease and timeout of
    /// the cluster (docs/failures.md#clock).
    pub fn start_faulty_with_clock(
        config: Configuration,
        ring_bytes: u64,
        clock: Clock,
    ) -> Result<EmbeddedCluster, StartError> {
        let faults = Some(Arc::new(FaultPlan::new()));
        EmbeddedCluster::start_with(config, ring_bytes, faults, clock)
    }

    fn start_with(
        config: Configuration,
        ring_bytes: u64,
        faults: Option<Arc<FaultPlan>>,
        clock: Clock,
    ) -> Result<EmbeddedCluster, StartError> {
        let config = Arc::new(config);
        let local = LocalCluster::new();
        let stopped = Arc::new(Stopped::default());
        let mut nodes = Vec::new();
        for node in config.members() {
            let doorbell = Doorbell::anonymous().map_err(|source| StartError::Io {
                what: "create a doorbell".into(),
                source,
            })?;
            let memory =
                Arc::new(NodeMemory::new(node, Arc::new(doorbell)).with_clock(clock.clone()));
            local.add(memory.clone());
            let mut fabric =
                Fabric::new(memory, Transport::Local(LocalTransport::new(local.clone())));
            if let Some(plan) = &faults {
                fabric = fabric.with_faults(plan.clone());
            }
            let fabric = Arc::new(fabric);
            nodes.push(ReplicaNode::start(
                config.clone(),
                fabric,
                Directory::fixed(),
                &Storage::Anonymous,
                ring_bytes,
                0, // every embedded node starts once
                stopped.clone(),
            )?);
        }
        // Every node learns every area's key (a process cluster reads them from manifests).
        for owner in &nodes {
            for area in owner.txn().fabric().memory().areas() {
                for node in &nodes {
                    node.txn().directory().insert(
                        owner.node_id(),
                        area.id(),
                        area.key(),
                        area.len(),
                    );
                }
            }
        }
        Ok(EmbeddedCluster {
            config,
            nodes,
            faults,
            stopped,
            local,
            clock,
        })
    }

    /// Stops client node `client` for good, as its process would die: in a cluster with a
    /// fault plan nothing it posts reaches anyone from now on ([`FaultPlan::isolate`]; a batch
    /// a fault holds back still lands, as a dead process's last appends may), the other nodes
    /// see it gone and settle the transactions it left (docs/failures.md#a-client-that-dies),
    /// its worker stops, nothing reaches its memory, and it leaves [`EmbeddedCluster::nodes`].
    /// Its application threads may still run, as a dead process's do not: with a fault plan
    /// they reach nobody, without one they must not be used again. Memory nodes cannot be
    /// killed: nothing would serve their regions (reconfiguration is issue 13).
    pub fn kill(&mut self, client: NodeId) {
        assert!(
            self.config.clients.contains(&client),
            "{client} is not a client node; only client nodes can be killed"
        );
        let index = self.running(client);
        self.stop_for_good(index);
    }

    /// Stops the node at `index` as its process would die: isolated by the fault plan (if the
    /// cluster has one), its finisher stopped (a dead process finishes nothing), seen gone by
    /// the others, its worker stopped (after an append a fault holds back), its memory out of
    /// reach.
    fn stop_for_good(&mut self, index: usize) {
        let node = self.nodes[index].node_id();
        if let Some(faults) = &self.faults {
            faults.isolate(node);
        }
        self.nodes[index].txn().stop_finisher();
        self.stopped.insert(node);
        self.nodes.remove(index).stop();
        self.local.remove(node);
    }

    pub fn config(&self) -> &Arc<Configuration> {
        &self.config
    }

    /// From now on every READ loads its words in decreasing address order, as a NIC or a
    /// provider's copy may ([`LocalCluster::read_out_of_order`]).
    pub fn read_out_of_order(&self) {
        self.local.read_out_of_order();
    }

    pub fn nodes(&self) -> &[ReplicaNode] {
        &self.nodes
    }

    /// The faults injected into every node's batches to the others (none until a test adds a
    /// rule) of a cluster from [`start_faulty`](Self::start_faulty).
    pub fn faults(&self) -> &Arc<FaultPlan> {
        self.faults
            .as_ref()
            .expect("a cluster with faults is started with EmbeddedCluster::start_faulty")
    }

    /// Sends every pending truncation and waits until every node has applied and dropped all
    /// it holds. Returns whether that happened within `timeout` of the cluster's clock (looked
    /// at every millisecond of real time).
    pub fn quiesce(&self, timeout: Duration) -> bool {
        let deadline = self.clock.now().saturating_add(timeout);
        loop {
            for node in &self.nodes {
                if let Err(e) = node.txn().links().flush_truncations(Duration::ZERO) {
                    tracing::warn!(node = %node.node_id(), "sending truncations failed: {e}");
                }
            }
            if self.nodes.iter().all(ReplicaNode::is_quiet) {
                return true;
            }
            if self.clock.now() >= deadline {
                return false;
            }
            std::thread::sleep(Duration::from_millis(1));
        }
    }

    /// Compares every complete backup copy with its primary's copy (lock bits aside), in
    /// regions that serve (a copying backup's copy is incomplete by design).
    pub fn check_replicas(&self) -> Result<(), Mismatch> {
        for placement in self.config.regions.iter().filter(|p| p.state.is_active()) {
            let node = |id| self.nodes.iter().find(|n| n.node_id() == id);
            let primary = node(placement.primary)
                .and_then(|n| n.copy(placement.region))
                .expect("the primary holds its region");
            for backup in placement.complete_replicas().skip(1) {
                let copy = node(backup)
                    .and_then(|n| n.copy(placement.region))
                    .expect("a backup holds its region");
                verify::compare(&primary, &copy, self.config.block_bytes)?;
            }
        }
        Ok(())
    }

    /// Installs configuration `newer` on every running node as the configuration manager
    /// will (docs/failures.md#reconfiguration): NEW-CONFIG to each (which creates the copies
    /// it asks of it), every node told the keys of the areas created, then NEW-CONFIG-COMMIT
    /// to each. Nodes it does not list are stopped first, as the configuration manager has a
    /// removed node stopped before it commits (their fabric is cut off with a fault plan).
    pub fn reconfigure(&mut self, newer: Configuration) -> Result<(), AdoptError> {
        let newer = Arc::new(newer);
        let removed: Vec<NodeId> = self
            .nodes
            .iter()
            .map(|n| n.node_id())
            .filter(|&id| !newer.members().any(|member| member == id))
            .collect();
        for node in removed {
            self.fence_member(node);
        }
        let running: Vec<NodeId> = self.nodes.iter().map(|n| n.node_id()).collect();
        for node in running {
            self.adopt_at(node, newer.clone())?;
        }
        for node in &self.nodes {
            node.commit_config(newer.id)
                .expect("every node adopted it just now");
        }
        self.config = newer;
        Ok(())
    }

    /// NEW-CONFIG at one node, as the CM's driver delivers it to each node on its own (where
    /// [`reconfigure`](Self::reconfigure) hands it to every node at once): `node` adopts
    /// `newer`, and every running node learns the keys of the areas `node` created for the
    /// regions it becomes a new backup of, as a process cluster reads them from its manifest.
    /// Nodes `newer` removes are not touched: fence them with
    /// [`fence_member`](Self::fence_member) before the configuration commits.
    pub fn adopt_at(&mut self, node: NodeId, newer: Arc<Configuration>) -> Result<(), AdoptError> {
        let index = self.running(node);
        let adopted = self.nodes[index].adopt(newer.clone())?;
        for area in adopted.new_areas {
            let key = area.access_key().expect("a key this process formatted");
            for other in &self.nodes {
                other
                    .txn()
                    .directory()
                    .insert(node, area.id, key, area.bytes);
            }
        }
        if newer.id > self.config.id {
            self.config = newer;
        }
        Ok(())
    }

    /// NEW-CONFIG-COMMIT of configuration `id` at `node`, which adopted it.
    pub fn commit_at(&self, node: NodeId, id: u64) -> Result<(), acre_txn::config::NotAdopted> {
        self.nodes[self.running(node)].commit_config(id)
    }

    /// Stops memory node `node` for good, as fencing by killing its process would (on shm,
    /// `process::fence_by_kill`): what [`reconfigure`](Self::reconfigure) does to the nodes a
    /// configuration removes, for a CM that fences each removed node itself before
    /// NEW-CONFIG-COMMIT. Its regions are served by nobody until the configuration that
    /// removes it is adopted. Does nothing to a node that is not running (fenced already).
    pub fn fence_member(&mut self, node: NodeId) {
        if let Some(index) = self.nodes.iter().position(|n| n.node_id() == node) {
            self.stop_for_good(index);
        }
    }

    /// The index of running node `node`; panics on a node that is not running (the caller's
    /// bug: a removed node gets no NEW-CONFIG).
    fn running(&self, node: NodeId) -> usize {
        self.nodes
            .iter()
            .position(|n| n.node_id() == node)
            .unwrap_or_else(|| panic!("{node} is not running"))
    }

    pub fn stop(self) {
        for node in self.nodes {
            node.stop();
        }
    }
}
