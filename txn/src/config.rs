//! The static configuration: which nodes there are and, for every region, its primary and its
//! f backups on distinct nodes. Written as a cluster file (TOML) by `acre cluster up`, or built
//! in memory by the embedded cluster. The configuration manager of a later issue changes it
//! through Raft; its `id` is the first part of every transaction id.

use acre_engine::addr::{NodeId, RegionId};
use acre_engine::channel::RING_AREA_BASE;
use acre_engine::region::REGION_BYTES_MAX;
use acre_engine::slab::BLOCK_BYTES_MIN;
use std::collections::BTreeSet;
use std::path::Path;

/// Where one region's replicas live.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Placement {
    pub region: RegionId,
    pub primary: NodeId,
    pub backups: Vec<NodeId>,
}

impl Placement {
    /// Primary first, then the backups.
    pub fn replicas(&self) -> impl Iterator<Item = NodeId> + '_ {
        std::iter::once(self.primary).chain(self.backups.iter().copied())
    }
}

/// The cluster's configuration.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Configuration {
    /// Configuration id; only grows.
    pub id: u64,
    /// Failures tolerated: every region has `f` backups.
    pub f: usize,
    /// Nodes that hold regions.
    pub nodes: Vec<NodeId>,
    /// Nodes that only run transactions (client processes); every node keeps a log for them.
    #[serde(default)]
    pub clients: Vec<NodeId>,
    pub region_bytes: u64,
    pub block_bytes: u64,
    pub regions: Vec<Placement>,
}

/// Why a configuration is unusable.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("invalid configuration: {0}")]
pub struct ConfigError(pub String);

impl Configuration {
    /// The default f: 2 with three or more nodes (three copies), else as many as there are
    /// other nodes.
    pub fn default_f(node_count: usize) -> usize {
        node_count.saturating_sub(1).min(2)
    }

    /// Places `regions_per_node` regions per node: region `k` (ids from 1) has its primary on
    /// node `k mod n` and its backups on the next `f` nodes, so primaries and backups spread
    /// evenly.
    pub fn place(
        id: u64,
        nodes: Vec<NodeId>,
        clients: Vec<NodeId>,
        regions_per_node: usize,
        f: usize,
        region_bytes: u64,
        block_bytes: u64,
    ) -> Result<Configuration, ConfigError> {
        let n = nodes.len();
        let mut regions = Vec::new();
        for k in 0..n * regions_per_node {
            let primary = k % n;
            regions.push(Placement {
                region: RegionId(k as u32 + 1),
                primary: nodes[primary],
                backups: (1..=f).map(|i| nodes[(primary + i) % n]).collect(),
            });
        }
        let config = Configuration {
            id,
            f,
            nodes,
            clients,
            region_bytes,
            block_bytes,
            regions,
        };
        config.validate()?;
        Ok(config)
    }

    /// Checks what serde cannot.
    pub fn validate(&self) -> Result<(), ConfigError> {
        let fail = |reason: String| Err(ConfigError(reason));
        if self.nodes.is_empty() {
            return fail("no nodes".into());
        }
        let members: Vec<NodeId> = self.members().collect();
        let unique: BTreeSet<NodeId> = members.iter().copied().collect();
        if unique.len() != members.len() {
            return fail("a node id appears twice in nodes and clients".into());
        }
        if self.f >= self.nodes.len() {
            return fail(format!(
                "f = {} needs at least {} nodes, there are {}",
                self.f,
                self.f + 1,
                self.nodes.len()
            ));
        }
        if self.region_bytes == 0 || self.region_bytes > REGION_BYTES_MAX {
            return fail(format!(
                "region_bytes {} is not in 1..={REGION_BYTES_MAX}",
                self.region_bytes
            ));
        }
        if !self.block_bytes.is_power_of_two()
            || self.block_bytes < BLOCK_BYTES_MIN
            || self.block_bytes > self.region_bytes
        {
            return fail(format!(
                "block_bytes {} must be a power of two between {BLOCK_BYTES_MIN} and region_bytes",
                self.block_bytes
            ));
        }
        if self.regions.is_empty() {
            return fail("no regions".into());
        }
        let mut seen = BTreeSet::new();
        for placement in &self.regions {
            let region = placement.region;
            if region.0 == 0 || region.0 >= REPLY_AREA_ID_MIN {
                return fail(format!(
                    "region id {region} must be between 1 and {REPLY_AREA_ID_MIN:#x}"
                ));
            }
            if !seen.insert(region) {
                return fail(format!("region {region} is placed twice"));
            }
            if placement.backups.len() != self.f {
                return fail(format!(
                    "region {region} has {} backups, f = {}",
                    placement.backups.len(),
                    self.f
                ));
            }
            let replicas: BTreeSet<NodeId> = placement.replicas().collect();
            if replicas.len() != self.f + 1 {
                return fail(format!("region {region} has two replicas on one node"));
            }
            if let Some(stranger) = replicas.iter().find(|n| !self.nodes.contains(n)) {
                return fail(format!(
                    "region {region} is placed on {stranger}, not a node"
                ));
            }
        }
        Ok(())
    }

    /// Every node that takes part: memory nodes, then clients.
    pub fn members(&self) -> impl Iterator<Item = NodeId> + '_ {
        self.nodes.iter().chain(self.clients.iter()).copied()
    }

    pub fn placement(&self, region: RegionId) -> Option<&Placement> {
        self.regions.iter().find(|p| p.region == region)
    }

    /// The regions whose primary is `node`.
    pub fn primary_regions(&self, node: NodeId) -> impl Iterator<Item = &Placement> + '_ {
        self.regions.iter().filter(move |p| p.primary == node)
    }

    /// The regions `node` holds a copy of (as primary or backup).
    pub fn replicated_on(&self, node: NodeId) -> impl Iterator<Item = &Placement> + '_ {
        self.regions
            .iter()
            .filter(move |p| p.replicas().any(|r| r == node))
    }

    pub fn to_toml(&self) -> String {
        toml::to_string(self).expect("a configuration always encodes")
    }

    pub fn from_toml(text: &str) -> Result<Configuration, ConfigError> {
        let config: Configuration = toml::from_str(text).map_err(|e| ConfigError(e.to_string()))?;
        config.validate()?;
        Ok(config)
    }

    pub fn from_file(path: &Path) -> Result<Configuration, ConfigError> {
        let text = std::fs::read_to_string(path)
            .map_err(|e| ConfigError(format!("cannot read {}: {e}", path.display())))?;
        Configuration::from_toml(&text)
            .map_err(|e| ConfigError(format!("{}: {}", path.display(), e.0)))
    }
}

/// Area ids from here up (and below the rings) are not regions: the reply area lives here.
pub const REPLY_AREA_ID_MIN: u32 = 0x7000_0000;
const _: () = assert!(REPLY_AREA_ID_MIN < RING_AREA_BASE);

#[cfg(test)]
mod tests {
    use super::*;

    fn nodes(n: u16) -> Vec<NodeId> {
        (1..=n).map(NodeId).collect()
    }

    #[test]
    fn placement_spreads_primaries_and_backups_over_distinct_nodes() {
        let config =
            Configuration::place(1, nodes(3), vec![NodeId(9)], 2, 2, 1 << 20, 4096).unwrap();
        assert_eq!(config.regions.len(), 6);
        for node in nodes(3) {
            assert_eq!(config.primary_regions(node).count(), 2);
            assert_eq!(config.replicated_on(node).count(), 6);
        }
        let text = config.to_toml();
        assert_eq!(Configuration::from_toml(&text).unwrap(), config);
    }

    #[test]
    fn bad_configurations_say_what_is_wrong() {
        assert!(Configuration::place(1, nodes(2), vec![], 1, 2, 1 << 20, 4096).is_err());
        let mut config = Configuration::place(1, nodes(3), vec![], 1, 2, 1 << 20, 4096).unwrap();
        config.regions[0].backups[0] = config.regions[0].primary;
        let error = config.validate().unwrap_err();
        assert!(error.0.contains("two replicas"), "{error}");
        let mut config = Configuration::place(1, nodes(3), vec![NodeId(2)], 1, 1, 1 << 20, 4096);
        assert!(config.is_err());
        config = Configuration::place(1, nodes(3), vec![], 1, 1, 1 << 20, 1000);
        assert!(config.is_err());
        assert_eq!(Configuration::default_f(1), 0);
        assert_eq!(Configuration::default_f(2), 1);
        assert_eq!(Configuration::default_f(5), 2);
        assert!(Configuration::from_toml("id = 1").is_err());
    }
}
