//! `TxnNode`: the transactional side of one node: its configuration, fabric, links (the log
//! rings it writes at every other node), one-sided object reads, its reply area, and the
//! primary state of the regions it holds. Coordinators ([`crate::Txn`]) run on application
//! threads against a `TxnNode`; the node's worker (acre-replication) serves the records that
//! arrive in its own rings and answers through [`TxnNode::reply`].

use crate::commit::unfinished::UnfinishedCommits;
use crate::config::{Configuration, CurrentConfiguration, NotAdopted, StaleConfiguration};
use crate::courier::Couriers;
use crate::directory::Directory;
use crate::link::Links;
use crate::primary::Primary;
use crate::read::ObjectReader;
use crate::record::ReplyTo;
use crate::reply::{Code, ReplyArea, reply_ops};
use acre_engine::addr::NodeId;
use acre_engine::clock::Clock;
use acre_engine::fabric::Fabric;
use std::sync::{Arc, OnceLock};
use std::time::Duration;

/// How long a coordinator waits for a participant's reply, on the node's clock.
pub const REPLY_TIMEOUT: Duration = Duration::from_secs(5);

/// One node's transactional state.
pub struct TxnNode {
    node: NodeId,
    config: Arc<CurrentConfiguration>,
    fabric: Arc<Fabric>,
    directory: Arc<Directory>,
    links: Links,
    reader: ObjectReader,
    replies: ReplyArea,
    primary: Primary,
    couriers: Couriers,
    unfinished: UnfinishedCommits,
    /// Asks for a new region when every region is full; none unless set.
    grower: OnceLock<Grower>,
}

/// What a node calls when an allocation finds every serving region of `config` full
/// (docs/failures.md#region-growth): asks the configuration manager for a new region and
/// returns once the request is accepted (the new configuration is then on its way), or why
/// no region will come. Called by application threads; it may block for as long as the CM
/// takes to answer.
pub type Grower = Box<dyn Fn(&Configuration) -> Result<(), String> + Send + Sync>;

impl TxnNode {
    /// The node on `fabric`. Every timeout of the node (reply waits, backoff, truncation
    /// delays, the finisher's rounds) reads the fabric's clock ([`Fabric::clock`]), `replies`'s
    /// included.
    pub fn new(
        config: Arc<Configuration>,
        fabric: Arc<Fabric>,
        directory: Directory,
        mut replies: ReplyArea,
        primary: Primary,
    ) -> TxnNode {
        replies.set_clock(fabric.clock().clone());
        let directory = Arc::new(directory);
        let config = Arc::new(CurrentConfiguration::new(config));
        TxnNode {
            node: fabric.node_id(),
            links: Links::new(config.clone(), fabric.clone(), directory.clone()),
            reader: ObjectReader::new(&config.get(), fabric.clone(), directory.clone()),
            couriers: Couriers::new(fabric.clone(), directory.clone()),
            config,
            fabric,
            directory,
            replies,
            primary,
            unfinished: UnfinishedCommits::default(),
            grower: OnceLock::new(),
        }
    }

    /// Lets allocations that find every region full ask for a new one (a client of a cluster
    /// with a configuration manager). Only the first grower set is kept; returns whether this
    /// one was.
    pub fn set_grower(&self, grower: Grower) -> bool {
        self.grower.set(grower).is_ok()
    }

    pub(crate) fn grower(&self) -> Option<&Grower> {
        self.grower.get()
    }

    /// Commits that decided to commit but have records left to deliver, because a participant
    /// did not answer: the node's finisher sends them once it does
    /// (docs/protocol.md#unfinished-commits).
    pub fn unfinished_commits(&self) -> usize {
        self.unfinished.count()
    }

    /// Whether this node's finisher still has records of `txn` to deliver.
    pub fn is_unfinished(&self, txn: crate::record::TxnId) -> bool {
        self.unfinished.holds(txn)
    }

    /// Stops finishing commits before the node stops: a node that stopped sends nothing more,
    /// which the memory nodes' settlement of a gone client's transactions relies on. What is
    /// left stays unfinished for them to settle.
    pub fn stop_finisher(&self) {
        self.unfinished.stop(self);
    }

    pub(crate) fn unfinished(&self) -> &UnfinishedCommits {
        &self.unfinished
    }

    pub fn node_id(&self) -> NodeId {
        self.node
    }

    /// The node's clock: what every lease and timeout of the node reads
    /// (docs/failures.md#clock).
    pub fn clock(&self) -> &Clock {
        self.fabric.clock()
    }

    /// The node's configuration now. A transaction keeps the one it began in
    /// ([`crate::Txn::config`]).
    pub fn config(&self) -> Arc<Configuration> {
        self.config.get()
    }

    /// The id of the node's configuration now.
    pub fn config_id(&self) -> u64 {
        self.config.id()
    }

    /// The id of the node's configuration now, and whether it is committed (every member
    /// adopted it).
    pub fn config_state(&self) -> (u64, bool) {
        self.config.state()
    }

    /// The configurations committed at this node after configuration `id`, oldest first
    /// (`None` if it no longer remembers them all): what a worker that drained for `id` last
    /// drains for next, each in turn (docs/failures.md#drain).
    pub fn committed_after(&self, id: u64) -> Option<Vec<Arc<Configuration>>> {
        self.config.committed_after(id)
    }

    /// NEW-CONFIG: adopts configuration `newer` if it is newer than the current one
    /// (docs/failures.md#reconfiguration). From then on transactions begun in an older one do
    /// not commit (`ConfigurationChanged`, which `Db::run` retries), a primary refuses their
    /// LOCK and VALIDATE, and regions that do not serve in it are refused
    /// (`RegionUnavailable`). Transactions begun in it commit once it is committed
    /// ([`Self::commit_config`]); until then they fail with `Reconfiguring`, retried too.
    pub fn adopt(&self, newer: Arc<Configuration>) -> Result<(), StaleConfiguration> {
        let older = self.config.get();
        self.config.adopt(newer.clone())?;
        // Precise membership: nothing more goes to a node the configuration removed.
        for gone in older
            .members()
            .filter(|&n| !newer.members().any(|m| m == n))
        {
            self.links.remove(gone);
        }
        Ok(())
    }

    /// NEW-CONFIG-COMMIT of configuration `id`: every member adopted it, so transactions may
    /// commit in it.
    pub fn commit_config(&self, id: u64) -> Result<(), NotAdopted> {
        self.config.commit(id)
    }

    pub fn fabric(&self) -> &Arc<Fabric> {
        &self.fabric
    }

    pub fn directory(&self) -> &Directory {
        &self.directory
    }

    /// The rings this node writes at the others (reservations, appends, truncations).
    pub fn links(&self) -> &Links {
        &self.links
    }

    /// One-sided reads of objects on their primaries.
    pub fn reader(&self) -> &ObjectReader {
        &self.reader
    }

    pub fn replies(&self) -> &ReplyArea {
        &self.replies
    }

    pub fn primary(&self) -> &Primary {
        &self.primary
    }

    /// Answers a coordinator on `to_node` (fire and forget: a lost reply becomes the
    /// coordinator's timeout). Never waits on `to_node` where that could take long (see
    /// [`crate::courier`]).
    pub fn reply(&self, to_node: NodeId, to: ReplyTo, seq: u64, code: Code, values: [u64; 3]) {
        self.couriers
            .deliver(to_node, reply_ops(to, seq, code, values));
    }
}
