//! A node's registered memory: the areas (regions, log rings) that others may operate on, each
//! under its access key, the node's doorbell, and the node's clock, which every timeout of the
//! node's fabric and of the protocol above it reads (docs/failures.md#clock), and the node's
//! lease gate, which its NIC thread and worker check before they serve.

use crate::addr::{NodeId, RegionId};
use crate::clock::Clock;
use crate::fabric::doorbell::Doorbell;
use crate::hash::FastMap;
use crate::lease::LeaseGate;
use crate::region::Region;
use std::sync::{Arc, RwLock};

/// Why a registration was refused.
#[derive(Debug, thiserror::Error)]
#[error("{node} already has an area registered as {id}: unregister it first")]
pub struct AlreadyRegistered {
    pub node: NodeId,
    pub id: RegionId,
}

/// The registered memory of one node.
pub struct NodeMemory {
    node: NodeId,
    areas: RwLock<FastMap<RegionId, Arc<Region>>>,
    doorbell: Arc<Doorbell>,
    clock: Clock,
    /// The node's lease from the CM, on `clock`: open unless a lease thread asked for one
    /// ([`crate::lease`]).
    lease: Arc<LeaseGate>,
}

impl NodeMemory {
    /// The memory of `node`, on the system clock.
    pub fn new(node: NodeId, doorbell: Arc<Doorbell>) -> NodeMemory {
        NodeMemory {
            node,
            areas: RwLock::new(FastMap::default()),
            doorbell,
            clock: Clock::system(),
            lease: Arc::new(LeaseGate::unleased()),
        }
    }

    /// This memory with `clock` as the node's clock: the one its fabric (the tcp transport and
    /// NIC thread), its pollers and the transactions on it read time through.
    pub fn with_clock(mut self, clock: Clock) -> NodeMemory {
        self.clock = clock;
        self
    }

    /// The node's clock.
    pub fn clock(&self) -> &Clock {
        &self.clock
    }

    pub fn node_id(&self) -> NodeId {
        self.node
    }

    /// The node's lease gate, for the lease thread that publishes the node's lease into it.
    pub fn lease_gate(&self) -> &Arc<LeaseGate> {
        &self.lease
    }

    /// Whether the node may act as a member now: it asked no CM for a lease, or holds one by its
    /// clock (docs/failures.md#leases). What the NIC thread and the worker check before they
    /// serve; a node without a CM reads one atomic word and no clock.
    #[inline]
    pub fn lease_is_open(&self) -> bool {
        self.lease.is_open_now(|| self.clock.now())
    }

    pub fn doorbell(&self) -> &Arc<Doorbell> {
        &self.doorbell
    }

    /// Makes `region` reachable by one-sided operations that present its key.
    pub fn register(&self, region: Arc<Region>) -> Result<(), AlreadyRegistered> {
        let mut areas = self.areas.write().expect(crate::POISONED);
        if areas.contains_key(&region.id()) {
            return Err(AlreadyRegistered {
                node: self.node,
                id: region.id(),
            });
        }
        areas.insert(region.id(), region);
        Ok(())
    }

    /// Stops serving an area; operations already running on it finish.
    pub fn unregister(&self, id: RegionId) -> Option<Arc<Region>> {
        self.areas.write().expect(crate::POISONED).remove(&id)
    }

    pub fn area(&self, id: RegionId) -> Option<Arc<Region>> {
        self.areas.read().expect(crate::POISONED).get(&id).cloned()
    }

    /// Every registered area, in id order.
    pub fn areas(&self) -> Vec<Arc<Region>> {
        let mut all: Vec<_> = self
            .areas
            .read()
            .expect(crate::POISONED)
            .values()
            .cloned()
            .collect();
        all.sort_by_key(|r| r.id());
        all
    }
}
