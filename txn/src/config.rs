//! The static configuration: which nodes there are and, for every region, its primary and its
//! f backups on distinct nodes. Written as a cluster file (TOML) by `acre cluster up`, or built
//! in memory by the embedded cluster. The configuration manager of a later issue changes it
//! through Raft; its `id` is the first part of every transaction id.

use acre_engine::addr::{Addr, NodeId, RegionId};
use acre_engine::channel::RING_AREA_BASE;
use acre_engine::region::REGION_BYTES_MAX;
use acre_engine::slab::BLOCK_BYTES_MIN;
use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

/// Where one region's replicas live.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Placement {
    pub region: RegionId,
    pub primary: NodeId,
    /// At most `f`: fewer while no other node can take a lost backup's place.
    pub backups: Vec<NodeId>,
    /// The backups still receiving their copy of the region (data recovery): they take
    /// COMMIT-BACKUP records like the others, but their copy is incomplete, so they are never
    /// promoted and do not count as a copy of the data (docs/failures.md#configuration).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub copying: Vec<NodeId>,
    /// Whether the region serves; written by the configuration manager (docs/failures.md).
    #[serde(default, skip_serializing_if = "RegionState::is_active")]
    pub state: RegionState,
}

/// Whether a region serves transactions in a configuration.
#[derive(
    Clone, Copy, Debug, Default, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize,
)]
#[serde(rename_all = "kebab-case")]
pub enum RegionState {
    /// Its primary serves reads, locks and commits.
    #[default]
    Active,
    /// Its primary changed: transactions that touch it wait until its transactions are
    /// recovered on the new primary (`RegionUnavailable`, which `Db::run` waits through) and a
    /// configuration makes it active again.
    Blocked,
    /// Every replica failed: its data is gone until a replica's files come back. `primary` names
    /// the last primary.
    Lost,
}

impl RegionState {
    pub fn is_active(&self) -> bool {
        *self == RegionState::Active
    }

    pub fn name(self) -> &'static str {
        match self {
            RegionState::Active => "active",
            RegionState::Blocked => "blocked",
            RegionState::Lost => "lost",
        }
    }
}

/// The failure domain of a node: nodes that can fail together (a host, a rack). Backups of a
/// region go to other domains than its primary's when there are any.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FailureDomain {
    pub node: NodeId,
    pub domain: String,
}

impl Placement {
    /// Primary first, then the backups.
    pub fn replicas(&self) -> impl Iterator<Item = NodeId> + '_ {
        std::iter::once(self.primary).chain(self.backups.iter().copied())
    }

    /// The replicas whose copy is complete: the primary, then the backups not copying.
    pub fn complete_replicas(&self) -> impl Iterator<Item = NodeId> + '_ {
        self.replicas().filter(|node| !self.copying.contains(node))
    }
}

/// Who does the primary's part of a commit (docs/protocol.md#one-sided-commit-mode): the same for every
/// transaction of a cluster.
#[derive(
    Clone, Copy, Debug, Default, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize,
)]
#[serde(rename_all = "kebab-case")]
pub enum CommitMode {
    /// FaRM's: the primary's worker locks on LOCK, installs on COMMIT-PRIMARY, unlocks on ABORT.
    Messages,
    /// The coordinator locks, installs and unlocks with one-sided operations once the records
    /// are durable in the primary's log; no thread of another node is on the commit path. The
    /// default: about twice the transfers of message mode over shm on two cores.
    #[default]
    OneSided,
}

impl CommitMode {
    /// The name a cluster file and `--commit` use.
    pub fn name(self) -> &'static str {
        match self {
            CommitMode::Messages => "messages",
            CommitMode::OneSided => "one-sided",
        }
    }

    /// The mode named `name`, as [`CommitMode::name`] spells it.
    pub fn parse(name: &str) -> Option<CommitMode> {
        [CommitMode::Messages, CommitMode::OneSided]
            .into_iter()
            .find(|mode| mode.name() == name)
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
    /// Who does the primary's part of a commit.
    #[serde(default)]
    pub commit: CommitMode,
    /// Failure domains of nodes; a node not listed is a domain of its own.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub domains: Vec<FailureDomain>,
    /// The replicas of the configuration manager's Raft group; empty for a static configuration
    /// that nothing changes.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub cm_replicas: Vec<NodeId>,
    /// The replica that acts as configuration manager (the Raft leader that committed this
    /// configuration); it grants the leases of this configuration.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cm_leader: Option<NodeId>,
}

/// Why a configuration is unusable. Every variant is a mistake in the configuration (or the
/// file it came from) to fix before the cluster can start; none is worth a retry.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ConfigError {
    #[error("invalid configuration: no nodes; list at least one")]
    NoNodes,
    #[error(
        "invalid configuration: {node} appears twice in nodes and clients; give every member \
         its own id"
    )]
    DuplicateMember { node: NodeId },
    #[error(
        "invalid configuration: {node} is the id reserved for observers such as `acre cluster \
         status`; give the member another id"
    )]
    ObserverId { node: NodeId },
    #[error(
        "invalid configuration: f = {f} needs at least {} nodes, there are {nodes}; lower f or \
         add nodes",
        f + 1
    )]
    TooFewNodes { f: usize, nodes: usize },
    #[error("invalid configuration: region_bytes {region_bytes} is not in 1..={REGION_BYTES_MAX}")]
    RegionBytes { region_bytes: u64 },
    #[error(
        "invalid configuration: block_bytes {block_bytes} must be a power of two between \
         {BLOCK_BYTES_MIN} and region_bytes ({region_bytes})"
    )]
    BlockBytes { block_bytes: u64, region_bytes: u64 },
    #[error("invalid configuration: no regions; place at least one")]
    NoRegions,
    #[error(
        "invalid configuration: region id {region} must be between 1 and {REPLY_AREA_ID_MIN:#x}"
    )]
    RegionId { region: RegionId },
    #[error("invalid configuration: region {region} is placed twice")]
    PlacedTwice { region: RegionId },
    #[error("invalid configuration: region {region} has {backups} backups, more than f = {f}")]
    BackupCount {
        region: RegionId,
        backups: usize,
        f: usize,
    },
    #[error("invalid configuration: region {region} has two replicas on one node")]
    TwoReplicasOnOneNode { region: RegionId },
    #[error("invalid configuration: region {region} is placed on {node}, not a node")]
    NotANode { region: RegionId, node: NodeId },
    #[error(
        "invalid configuration: region {region} lists {node} as copying, but it is not one of \
         its backups"
    )]
    CopyingNotABackup { region: RegionId, node: NodeId },
    #[error("invalid configuration: {node} has a failure domain but is not a node")]
    DomainOfANonNode { node: NodeId },
    #[error("invalid configuration: {node} is given two failure domains")]
    TwoDomains { node: NodeId },
    #[error(
        "invalid configuration: CM replica {replica} is a client id; a CM replica runs in a \
         memory node's process or in a standalone `acre cm` process whose id is neither a node \
         nor a client"
    )]
    CmReplicaIsClient { replica: NodeId },
    #[error("invalid configuration: CM replica {replica} is listed twice")]
    CmReplicaTwice { replica: NodeId },
    #[error("invalid configuration: {source}")]
    Parse {
        #[source]
        source: TomlError,
    },
    #[error("cannot read the configuration {path}: {source}")]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("the configuration in {path} is unusable: {source}")]
    File {
        path: PathBuf,
        #[source]
        source: Box<ConfigError>,
    },
}

/// Where and why TOML text (a configuration, a cluster file) did not parse, on one line.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("line {line}, column {column}: {message}")]
pub struct TomlError {
    /// 1-based.
    pub line: usize,
    /// 1-based, in characters.
    pub column: usize,
    pub message: String,
}

impl TomlError {
    /// `error` of parsing `text`, with its position in lines and columns.
    pub fn new(text: &str, error: &toml::de::Error) -> TomlError {
        let offset = error.span().map_or(0, |span| span.start).min(text.len());
        let before = text.get(..offset).unwrap_or(text);
        let line_start = before.rfind('\n').map_or(0, |i| i + 1);
        TomlError {
            line: before.matches('\n').count() + 1,
            column: before[line_start..].chars().count() + 1,
            message: error.message().trim().to_string(),
        }
    }
}

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
        Configuration::place_primaries_on(
            id,
            nodes,
            n,
            clients,
            regions_per_node,
            f,
            region_bytes,
            block_bytes,
        )
    }

    /// As [`Configuration::place`], with primaries on the first `primaries` nodes only
    /// (`regions_per_node` regions each): the others hold backups only. Region `k` has its
    /// primary on node `k mod primaries` and its backups on the next `f` nodes of the whole
    /// list, so with `primaries = nodes - 1` and `f = 1` the last node backs up the last
    /// primary's regions and holds no primary.
    #[allow(clippy::too_many_arguments)]
    pub fn place_primaries_on(
        id: u64,
        nodes: Vec<NodeId>,
        primaries: usize,
        clients: Vec<NodeId>,
        regions_per_node: usize,
        f: usize,
        region_bytes: u64,
        block_bytes: u64,
    ) -> Result<Configuration, ConfigError> {
        let n = nodes.len();
        if f >= n {
            return Err(ConfigError::TooFewNodes { f, nodes: n });
        }
        assert!(
            (1..=n).contains(&primaries),
            "primaries={primaries} nodes={n}"
        );
        let mut regions = Vec::new();
        for k in 0..primaries * regions_per_node {
            let primary = k % primaries;
            regions.push(Placement {
                region: RegionId(k as u32 + 1),
                primary: nodes[primary],
                backups: (1..=f).map(|i| nodes[(primary + i) % n]).collect(),
                copying: Vec::new(),
                state: RegionState::Active,
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
            commit: CommitMode::default(),
            domains: Vec::new(),
            cm_replicas: Vec::new(),
            cm_leader: None,
        };
        config.validate()?;
        Ok(config)
    }

    /// Checks what serde cannot.
    pub fn validate(&self) -> Result<(), ConfigError> {
        if self.nodes.is_empty() {
            return Err(ConfigError::NoNodes);
        }
        let mut members = BTreeSet::new();
        if let Some(node) = self.members().find(|&node| !members.insert(node)) {
            return Err(ConfigError::DuplicateMember { node });
        }
        if members.contains(&NodeId::OBSERVER) {
            return Err(ConfigError::ObserverId {
                node: NodeId::OBSERVER,
            });
        }
        if self.region_bytes == 0 || self.region_bytes > REGION_BYTES_MAX {
            return Err(ConfigError::RegionBytes {
                region_bytes: self.region_bytes,
            });
        }
        if !self.block_bytes.is_power_of_two()
            || self.block_bytes < BLOCK_BYTES_MIN
            || self.block_bytes > self.region_bytes
        {
            return Err(ConfigError::BlockBytes {
                block_bytes: self.block_bytes,
                region_bytes: self.region_bytes,
            });
        }
        if self.regions.is_empty() {
            return Err(ConfigError::NoRegions);
        }
        let mut seen = BTreeSet::new();
        for placement in &self.regions {
            let region = placement.region;
            if region.0 == 0 || region.0 >= REPLY_AREA_ID_MIN {
                return Err(ConfigError::RegionId { region });
            }
            if !seen.insert(region) {
                return Err(ConfigError::PlacedTwice { region });
            }
            if placement.backups.len() > self.f {
                return Err(ConfigError::BackupCount {
                    region,
                    backups: placement.backups.len(),
                    f: self.f,
                });
            }
            let replicas: BTreeSet<NodeId> = placement.replicas().collect();
            if replicas.len() != placement.backups.len() + 1 {
                return Err(ConfigError::TwoReplicasOnOneNode { region });
            }
            if let Some(&node) = placement
                .copying
                .iter()
                .find(|n| !placement.backups.contains(n))
            {
                return Err(ConfigError::CopyingNotABackup { region, node });
            }
            // A lost region names its last primary, which may have left.
            let present = |n: &&NodeId| self.nodes.contains(n);
            let mut named = replicas.iter();
            if placement.state != RegionState::Lost
                && let Some(&node) = named.find(|n| !present(n))
            {
                return Err(ConfigError::NotANode { region, node });
            }
        }
        let mut domained = BTreeSet::new();
        for FailureDomain { node, .. } in &self.domains {
            if !self.nodes.contains(node) {
                return Err(ConfigError::DomainOfANonNode { node: *node });
            }
            if !domained.insert(*node) {
                return Err(ConfigError::TwoDomains { node: *node });
            }
        }
        // A CM replica runs in a memory node's process or in a standalone `acre cm` process
        // (an id that is neither a node nor a client); a removed memory node that hosted one
        // keeps its place in the Raft group, so a replica that is no longer a node is not an
        // error. A client's process runs no replica.
        let mut replicas = BTreeSet::new();
        for &replica in &self.cm_replicas {
            if self.clients.contains(&replica) {
                return Err(ConfigError::CmReplicaIsClient { replica });
            }
            if !replicas.insert(replica) {
                return Err(ConfigError::CmReplicaTwice { replica });
            }
        }
        Ok(())
    }

    /// The failure domain of `node`: its own id when none is given.
    pub fn domain_of(&self, node: NodeId) -> String {
        self.domains
            .iter()
            .find(|d| d.node == node)
            .map_or_else(|| node.to_string(), |d| d.domain.clone())
    }

    /// The CM replicas that are not members: standalone `acre cm` processes (and memory nodes
    /// that hosted a replica and were removed since).
    pub fn cm_replicas_outside(&self) -> impl Iterator<Item = NodeId> + '_ {
        self.cm_replicas
            .iter()
            .copied()
            .filter(|r| !self.members().any(|m| m == *r))
    }

    /// Every node that takes part: memory nodes, then clients.
    pub fn members(&self) -> impl Iterator<Item = NodeId> + '_ {
        self.nodes.iter().chain(self.clients.iter()).copied()
    }

    /// The members the configuration manager leases, probes, and waits for when it changes
    /// the configuration: the memory nodes. Client ids are provisioned ahead of the processes
    /// that will use them and come and go with applications, so they hold no lease (a client
    /// that dies is settled through its lock file, docs/failures.md#a-client-that-dies); a client learns
    /// each configuration once it is committed, and the memory nodes refuse what it sends under
    /// an older one.
    pub fn leased(&self) -> impl Iterator<Item = NodeId> + '_ {
        self.nodes.iter().copied()
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
        let config: Configuration = toml::from_str(text).map_err(|e| ConfigError::Parse {
            source: TomlError::new(text, &e),
        })?;
        config.validate()?;
        Ok(config)
    }

    pub fn from_file(path: &Path) -> Result<Configuration, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.to_path_buf(),
            source,
        })?;
        Configuration::from_toml(&text).map_err(|source| ConfigError::File {
            path: path.to_path_buf(),
            source: Box::new(source),
        })
    }
}

/// A node's current configuration, which the configuration manager replaces with newer ones
/// in two steps (docs/failures.md#reconfiguration): NEW-CONFIG makes a node adopt it
/// ([`CurrentConfiguration::adopt`]: from then on it refuses what belongs to older ones), and
/// NEW-CONFIG-COMMIT, sent once every member adopted it, lets transactions commit in it
/// ([`CurrentConfiguration::commit`]). Readers take the whole configuration at once
/// ([`CurrentConfiguration::get`]); a transaction keeps the one it began in.
#[derive(Debug)]
pub struct CurrentConfiguration {
    current: std::sync::RwLock<Current>,
}

#[derive(Debug)]
struct Current {
    config: std::sync::Arc<Configuration>,
    /// Every member adopted it (NEW-CONFIG-COMMIT): transactions may commit in it.
    committed: bool,
    /// The last configurations committed here, oldest first, at most
    /// [`COMMITTED_REMEMBERED`]: a worker that drains its log once for several of them
    /// (it was not scheduled while they came) drains for each in turn
    /// ([`CurrentConfiguration::committed_after`]).
    recent: std::collections::VecDeque<std::sync::Arc<Configuration>>,
}

/// How many committed configurations a node remembers for [`CurrentConfiguration::committed_after`].
pub const COMMITTED_REMEMBERED: usize = 64;

/// Why a configuration was not adopted.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error(
    "configuration {offered} is not newer than the current {current}: a node adopts only \
     higher ids, so this one is stale; ask the configuration manager for the current one"
)]
pub struct StaleConfiguration {
    pub offered: u64,
    pub current: u64,
}

/// Why a NEW-CONFIG-COMMIT was not taken: it is not for the configuration the node adopted.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error(
    "a commit of configuration {offered}, but this node is in configuration {current}: only the \
     configuration a node adopted can be committed there"
)]
pub struct NotAdopted {
    pub offered: u64,
    pub current: u64,
}

impl CurrentConfiguration {
    /// A node's first configuration, committed: a cluster starts in it.
    pub fn new(config: std::sync::Arc<Configuration>) -> CurrentConfiguration {
        CurrentConfiguration {
            current: std::sync::RwLock::new(Current {
                config: config.clone(),
                committed: true,
                recent: std::collections::VecDeque::from([config]),
            }),
        }
    }

    /// The configuration now.
    pub fn get(&self) -> std::sync::Arc<Configuration> {
        self.current.read().expect(crate::POISONED).config.clone()
    }

    /// The id of the configuration now.
    pub fn id(&self) -> u64 {
        self.current.read().expect(crate::POISONED).config.id
    }

    /// The id of the configuration now, and whether it is committed.
    pub fn state(&self) -> (u64, bool) {
        let current = self.current.read().expect(crate::POISONED);
        (current.config.id, current.committed)
    }

    /// NEW-CONFIG: replaces the configuration with `newer`, not committed yet, if its id is
    /// higher: ids only grow at a node.
    pub fn adopt(&self, newer: std::sync::Arc<Configuration>) -> Result<(), StaleConfiguration> {
        let mut current = self.current.write().expect(crate::POISONED);
        if newer.id <= current.config.id {
            return Err(StaleConfiguration {
                offered: newer.id,
                current: current.config.id,
            });
        }
        current.config = newer;
        current.committed = false;
        Ok(())
    }

    /// NEW-CONFIG-COMMIT of configuration `id`: transactions may commit in it. Taking it twice
    /// is harmless.
    pub fn commit(&self, id: u64) -> Result<(), NotAdopted> {
        let mut current = self.current.write().expect(crate::POISONED);
        if current.config.id != id {
            return Err(NotAdopted {
                offered: id,
                current: current.config.id,
            });
        }
        if !current.committed {
            current.committed = true;
            let config = current.config.clone();
            if current.recent.len() == COMMITTED_REMEMBERED {
                current.recent.pop_front();
            }
            current.recent.push_back(config);
        }
        Ok(())
    }

    /// The configurations committed here with an id above `id`, oldest first; `None` if some
    /// of them are no longer remembered (more than [`COMMITTED_REMEMBERED`] came since).
    pub fn committed_after(&self, id: u64) -> Option<Vec<std::sync::Arc<Configuration>>> {
        let current = self.current.read().expect(crate::POISONED);
        let after: Vec<_> = current
            .recent
            .iter()
            .filter(|config| config.id > id)
            .cloned()
            .collect();
        let oldest_remembered = current.recent.front().map_or(u64::MAX, |c| c.id);
        if current.recent.len() == COMMITTED_REMEMBERED && oldest_remembered > id {
            // Some forgotten ones may have come after `id` too.
            return None;
        }
        Some(after)
    }
}

impl Configuration {
    /// The placement of `region` when it serves in this configuration.
    pub fn serving(&self, addr: Addr) -> Result<&Placement, crate::error::TxnError> {
        let region = addr.region();
        let placement = self
            .placement(region)
            .ok_or(crate::error::TxnError::NoSuchRegion { addr, region })?;
        match placement.state {
            RegionState::Active => Ok(placement),
            state => Err(crate::error::TxnError::RegionUnavailable {
                region,
                state,
                config: self.id,
            }),
        }
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
        assert!(error.to_string().contains("two replicas"), "{error}");
        let mut config = Configuration::place(1, nodes(3), vec![NodeId(2)], 1, 1, 1 << 20, 4096);
        assert!(config.is_err());
        config = Configuration::place(1, nodes(3), vec![], 1, 1, 1 << 20, 1000);
        assert!(config.is_err());
        let observer =
            Configuration::place(1, nodes(3), vec![NodeId::OBSERVER], 1, 1, 1 << 20, 4096);
        let error = observer.unwrap_err();
        assert!(
            error.to_string().contains("reserved for observers"),
            "{error}"
        );
        assert_eq!(Configuration::default_f(1), 0);
        assert_eq!(Configuration::default_f(2), 1);
        assert_eq!(Configuration::default_f(5), 2);
        assert!(Configuration::from_toml("id = 1").is_err());
    }

    #[test]
    fn degraded_lost_and_domained_configurations_round_trip() {
        let mut config = Configuration::place(3, nodes(3), vec![], 1, 2, 1 << 20, 4096).unwrap();
        config.regions[0].backups.pop();
        config.regions[0].copying = vec![config.regions[0].backups[0]];
        config.regions[1].state = RegionState::Blocked;
        config.domains = vec![FailureDomain {
            node: NodeId(1),
            domain: "rack-a".into(),
        }];
        config.cm_replicas = nodes(3);
        config.cm_leader = Some(NodeId(2));
        config.validate().unwrap();
        assert_eq!(config.domain_of(NodeId(1)), "rack-a");
        let complete: Vec<NodeId> = config.regions[0].complete_replicas().collect();
        assert_eq!(complete, [config.regions[0].primary]);
        assert_eq!(config.domain_of(NodeId(2)), NodeId(2).to_string());
        assert_eq!(Configuration::from_toml(&config.to_toml()).unwrap(), config);

        // A lost region may name a primary that left; an active one may not.
        config.nodes.retain(|&n| n != NodeId(3));
        config.domains.clear();
        for placement in &mut config.regions {
            placement.backups.retain(|&n| n != NodeId(3));
        }
        let lost = config
            .regions
            .iter()
            .position(|p| p.primary == NodeId(3))
            .unwrap();
        let error = config.validate().unwrap_err();
        assert!(matches!(error, ConfigError::NotANode { .. }), "{error}");
        config.regions[lost].state = RegionState::Lost;
        config.regions[lost].backups.clear();
        config.validate().unwrap();

        config.domains = vec![FailureDomain {
            node: NodeId(7),
            domain: "x".into(),
        }];
        let error = config.validate().unwrap_err();
        assert!(
            matches!(error, ConfigError::DomainOfANonNode { .. }),
            "{error}"
        );
        config.domains.clear();

        let active = config
            .regions
            .iter()
            .position(|p| p.state.is_active())
            .unwrap();
        config.regions[active].copying = vec![config.regions[active].primary];
        let error = config.validate().unwrap_err();
        assert!(
            matches!(error, ConfigError::CopyingNotABackup { .. }),
            "{error}"
        );
    }

    #[test]
    fn cm_replicas_are_nodes_or_standalone_never_clients() {
        let mut config =
            Configuration::place(1, nodes(3), vec![NodeId(100)], 1, 2, 1 << 20, 4096).unwrap();
        // Standalone `acre cm` processes: ids in neither nodes nor clients.
        config.cm_replicas = vec![NodeId(101), NodeId(102), NodeId(103)];
        config.validate().unwrap();
        let outside: Vec<NodeId> = config.cm_replicas_outside().collect();
        assert_eq!(outside, config.cm_replicas);
        config.cm_replicas = nodes(3);
        config.validate().unwrap();
        assert_eq!(config.cm_replicas_outside().count(), 0);
        config.cm_replicas = vec![NodeId(1), NodeId(100), NodeId(2)];
        let error = config.validate().unwrap_err();
        assert!(
            matches!(error, ConfigError::CmReplicaIsClient { replica } if replica == NodeId(100)),
            "{error}"
        );
        assert!(error.to_string().contains("acre cm"), "{error}");
        config.cm_replicas = vec![NodeId(1), NodeId(1)];
        let error = config.validate().unwrap_err();
        assert!(
            matches!(error, ConfigError::CmReplicaTwice { .. }),
            "{error}"
        );
    }

    #[test]
    fn toml_errors_say_where_on_one_line() {
        let text = "id = 1\nf = 1\nnodes = [\"n1\", oops]\n";
        let error = toml::from_str::<Configuration>(text).unwrap_err();
        let error = TomlError::new(text, &error);
        assert_eq!((error.line, error.column), (3, 16), "{error}");
        assert!(!error.to_string().contains('\n'), "{error}");
        let error = Configuration::from_toml("garbage").unwrap_err();
        assert!(matches!(error, ConfigError::Parse { .. }), "{error}");
    }
}
