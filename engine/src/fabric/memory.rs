//! A node's registered memory: the areas (regions, log rings) that others may operate on, each
//! under its access key, the node's doorbell, and the node's clock, which every timeout of the
//! node's fabric and of the protocol above it reads (docs/failures.md#clock).

use crate::addr::{NodeId, RegionId};
use crate::clock::Clock;
use crate::fabric::doorbell::Doorbell;
use crate::hash::FastMap;
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
}

impl NodeMemory {
    /// The memory of `node`, on the system clock.
    pub fn new(node: NodeId, doorbell: Arc<Doorbell>) -> NodeMemory {
        NodeMemory {
            node,
            areas: RwLock::new(FastMap::default()),
            doorbell,
            clock: Clock::system(),
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
