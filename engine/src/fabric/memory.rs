//! A node's registered memory: the areas (regions, log rings) that others may operate on, each
//! under its access key, and the node's doorbell.

use crate::addr::{NodeId, RegionId};
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
}

impl NodeMemory {
    pub fn new(node: NodeId, doorbell: Arc<Doorbell>) -> NodeMemory {
        NodeMemory {
            node,
            areas: RwLock::new(FastMap::default()),
            doorbell,
        }
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
