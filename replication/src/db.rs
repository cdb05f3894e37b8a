//! The embedded API: [`Db`], a handle on a transactional cluster, and [`Txn`], one transaction.
//!
//! A `Db` is either an embedded in-process cluster ([`Db::embedded`]) or a connection to a
//! running cluster of node processes ([`Db::connect`]). Either way transactions are strictly
//! serializable and every committed transaction is durable in the logs of f+1 replicas.

use crate::EmbeddedCluster;
use acre_engine::clock::Clock;
use acre_txn::{Configuration, TxnNode};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

pub use acre_engine::addr::{Addr, NodeId, RegionId};
pub use acre_txn::config::CommitMode;
pub use acre_txn::{CommitError, Error, IndexError, Txn, TxnError, TxnId};

pub use acre_txn::retry::{
    BACKOFF_FIRST, BACKOFF_MAX, RECONFIGURATION_WAIT_MAX, RUN_ATTEMPTS_MAX, Transact,
};

/// How an embedded cluster is laid out.
#[derive(Clone, Debug)]
pub struct EmbeddedOptions {
    /// Nodes in the cluster.
    pub nodes: u16,
    /// Failures tolerated (backups per region); `None`: 2 with three or more nodes.
    pub f: Option<usize>,
    /// Regions whose primary is each node.
    pub regions_per_node: usize,
    pub region_bytes: u64,
    pub block_bytes: u64,
    /// Bytes of each log ring (one per pair of nodes).
    pub ring_bytes: u64,
    /// Who does the primary's part of a commit.
    pub commit: CommitMode,
}

impl Default for EmbeddedOptions {
    fn default() -> EmbeddedOptions {
        EmbeddedOptions {
            nodes: 3,
            f: None,
            regions_per_node: 1,
            region_bytes: 64 << 20,
            block_bytes: 1 << 20,
            ring_bytes: 1 << 20,
            commit: CommitMode::default(),
        }
    }
}

/// Why a `Db` could not be opened.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum DbError {
    #[error(transparent)]
    Config(#[from] acre_txn::config::ConfigError),
    #[error("cannot start the embedded cluster: {0}")]
    Start(#[from] crate::StartError),
    #[error("cannot connect to the cluster: {0}")]
    Connect(#[from] crate::client::ConnectError),
}

enum Backing {
    Embedded(EmbeddedCluster),
    Client(Box<crate::client::ClientNode>),
}

struct Inner {
    backing: Backing,
    coordinators: Vec<Arc<TxnNode>>,
    next_coordinator: AtomicUsize,
}

/// A handle on a transactional cluster. Cheap to clone; share it between threads.
///
/// ```
/// use acre_replication::db::{Db, EmbeddedOptions};
///
/// let db = Db::embedded(&EmbeddedOptions { region_bytes: 4 << 20, ..Default::default() })?;
/// // Create two accounts in one transaction.
/// let (alice, bob) = db.run(|txn| {
///     let alice = txn.alloc(8)?;
///     let bob = txn.alloc(8)?;
///     txn.write(alice, &100u64.to_le_bytes())?;
///     txn.write(bob, &0u64.to_le_bytes())?;
///     Ok((alice, bob))
/// })?;
/// // Move 30 from one to the other; `run` retries if another transaction conflicts.
/// db.run(|txn| {
///     let a = u64::from_le_bytes(txn.read(alice)?.try_into().unwrap());
///     let b = u64::from_le_bytes(txn.read(bob)?.try_into().unwrap());
///     txn.write(alice, &(a - 30).to_le_bytes())?;
///     txn.write(bob, &(b + 30).to_le_bytes())?;
///     Ok(()) // a closure's errors (of reads, writes, indexes) all become `acre::Error`
/// })?;
/// assert_eq!(db.read(bob)?, 30u64.to_le_bytes());
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
#[derive(Clone)]
pub struct Db {
    inner: Arc<Inner>,
}

impl Db {
    /// Starts an in-process cluster (every node in this process, on the `local` transport).
    pub fn embedded(options: &EmbeddedOptions) -> Result<Db, DbError> {
        let nodes: Vec<NodeId> = (1..=options.nodes).map(NodeId).collect();
        let f = options
            .f
            .unwrap_or_else(|| Configuration::default_f(nodes.len()));
        let mut config = Configuration::place(
            1,
            nodes,
            Vec::new(),
            options.regions_per_node,
            f,
            options.region_bytes,
            options.block_bytes,
        )?;
        config.commit = options.commit;
        let cluster = EmbeddedCluster::start(config, options.ring_bytes)?;
        let coordinators = cluster.nodes().iter().map(|n| n.txn().clone()).collect();
        Ok(Db::new(Backing::Embedded(cluster), coordinators))
    }

    /// Joins a running cluster (started by `acre cluster up`) described by `cluster_file`, as
    /// one of its client nodes. Transactions run in this process; their objects live in the
    /// node processes.
    pub fn connect(cluster_file: &std::path::Path) -> Result<Db, DbError> {
        let client = crate::client::ClientNode::connect(cluster_file)?;
        let coordinators = vec![client.txn().clone()];
        Ok(Db::new(Backing::Client(Box::new(client)), coordinators))
    }

    fn new(backing: Backing, coordinators: Vec<Arc<TxnNode>>) -> Db {
        Db {
            inner: Arc::new(Inner {
                backing,
                coordinators,
                next_coordinator: AtomicUsize::new(0),
            }),
        }
    }

    /// The client id this `Db` claimed, for one connected to a cluster of node processes
    /// ([`Db::connect`]); `None` for an embedded cluster.
    pub fn client_id(&self) -> Option<NodeId> {
        match &self.inner.backing {
            Backing::Embedded(_) => None,
            Backing::Client(client) => Some(client.txn().node_id()),
        }
    }

    /// The configuration now: nodes, regions, primaries and backups.
    pub fn config(&self) -> Arc<Configuration> {
        self.inner.coordinators[0].config()
    }

    /// The clock this process's nodes read every lease and timeout through
    /// (docs/failures.md#clock).
    pub fn clock(&self) -> &Clock {
        self.inner.coordinators[0].clock()
    }

    fn coordinator(&self) -> &Arc<TxnNode> {
        let coordinators = &self.inner.coordinators;
        let index = self.inner.next_coordinator.fetch_add(1, Ordering::Relaxed);
        &coordinators[index % coordinators.len()]
    }

    /// Starts a transaction. What it reads is only trustworthy once `commit` succeeds: a
    /// transaction that will abort may see objects from different moments (never a torn one).
    ///
    /// ```
    /// # use acre_replication::db::{Db, EmbeddedOptions};
    /// # let db = Db::embedded(&EmbeddedOptions { region_bytes: 4 << 20, ..Default::default() })?;
    /// let mut txn = db.begin()?;
    /// let list = txn.alloc(64)?;
    /// txn.write(list, b"first")?;
    /// assert_eq!(txn.read(list)?, b"first"); // a transaction sees its own writes
    /// txn.commit()?;
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn begin(&self) -> Result<Txn, TxnError> {
        self.coordinator().begin()
    }

    /// Runs `body` in a transaction and commits it, retrying with bounded, jittered
    /// exponential backoff while it conflicts (at most [`RUN_ATTEMPTS_MAX`] times) and through a
    /// reconfiguration (for up to [`RECONFIGURATION_WAIT_MAX`]). An error
    /// from `body` ends the run, unless what the transaction read had already changed, in which
    /// case the error came from a stale view and the transaction is retried.
    ///
    /// ```
    /// # use acre_replication::db::{Db, EmbeddedOptions, Error};
    /// # let db = Db::embedded(&EmbeddedOptions { region_bytes: 4 << 20, ..Default::default() })?;
    /// let counter = db.run(|txn| Ok(txn.alloc(8)?))?;
    /// let threads: Vec<_> = (0..2).map(|_| {
    ///     let db = db.clone();
    ///     std::thread::spawn(move || {
    ///         for _ in 0..50 {
    ///             db.run(|txn| {
    ///                 let n = u64::from_le_bytes(txn.read(counter)?.try_into().unwrap());
    ///                 Ok(txn.write(counter, &(n + 1).to_le_bytes())?)
    ///             })?;
    ///         }
    ///         Ok::<(), Error>(())
    ///     })
    /// }).collect();
    /// for t in threads { t.join().unwrap()?; }
    /// assert_eq!(db.read(counter)?, 100u64.to_le_bytes());
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn run<T>(&self, body: impl FnMut(&mut Txn) -> Result<T, Error>) -> Result<T, Error> {
        acre_txn::retry::run(self.clock(), || self.begin(), body)
    }

    /// Reads one object without a transaction: a consistent, committed value (lock-free; it
    /// waits only while a commit is installing the object).
    pub fn read(&self, addr: Addr) -> Result<Vec<u8>, TxnError> {
        let coordinator = self.coordinator();
        let slot = coordinator
            .reader()
            .read_slot(&coordinator.config(), addr)?;
        if !slot.header.is_allocated() {
            return Err(TxnError::NotFound { addr });
        }
        acre_txn::value::decode(&slot.payload)
            .map(<[u8]>::to_vec)
            .map_err(|reason| TxnError::Protocol {
                node: self.coordinator().node_id(),
                reason: format!("object at {addr}: {reason}"),
            })
    }

    /// Whether the cluster holds objects, or ever did: whether any block of any region has been
    /// claimed by its allocator (docs/formats.md). One READ of each block header on its
    /// region's primary, stopping at the first claimed block; an empty cluster costs one read
    /// per block. A cluster whose objects were all freed still counts as holding objects: its
    /// blocks stay claimed. For loaders that must start from an empty cluster.
    pub fn holds_objects(&self) -> Result<bool, TxnError> {
        let coordinator = self.coordinator();
        let config = coordinator.config();
        let blocks = config.region_bytes / config.block_bytes;
        for placement in &config.regions {
            for block in 0..blocks {
                let addr = Addr::new(placement.region, (block * config.block_bytes) as u32);
                if !coordinator.reader().block_unclaimed(&config, addr)? {
                    return Ok(true);
                }
            }
        }
        Ok(false)
    }

    /// The id of the configuration this process's coordinators hold (with a CM, the last one it
    /// committed that the process has adopted: a client learns it within about
    /// `acre_replication::agent::FOLLOW_TICK` of the CM's status file).
    pub fn configuration_id(&self) -> u64 {
        self.coordinator().config_id()
    }

    /// What became of `txn`, whose commit reported `CommitError::Indeterminate` (its id is in
    /// the error): committed, aborted, or still pending (its coordinator is finishing it, or
    /// recovery is deciding it: ask again). Asks every memory node (a round trip, bounded by a
    /// second).
    pub fn outcome(&self, txn: TxnId) -> crate::outcome::TxnOutcome {
        crate::outcome::outcome(self.coordinator(), txn)
    }

    /// Whether a transaction that failed with `error` may be run again and should be, as
    /// [`Db::run`] does: a conflict, a full log, a reconfiguration, a region being recovered,
    /// or, with a configuration manager, a participant that cannot be reached (it comes back,
    /// or a configuration removes it). For callers that run their own attempts.
    pub fn is_transient(&self, error: &Error) -> bool {
        error.is_retryable()
            || (error.is_unavailable() && !self.coordinator().config().cm_replicas.is_empty())
    }

    /// Waits until every committed transaction has been applied to every backup and all logs
    /// are truncated (embedded clusters; a connected `Db` only flushes its own truncations and
    /// finishes its unfinished commits).
    /// Returns whether that happened within `timeout`.
    pub fn quiesce(&self, timeout: Duration) -> bool {
        match &self.inner.backing {
            Backing::Embedded(cluster) => cluster.quiesce(timeout),
            Backing::Client(client) => client.quiesce(timeout),
        }
    }

    /// Checks that every backup copy is byte-identical to its primary (embedded clusters,
    /// after [`Db::quiesce`]). A connected `Db` cannot see the nodes' memory and reports
    /// nothing.
    pub fn check_replicas(&self) -> Result<(), crate::verify::Mismatch> {
        match &self.inner.backing {
            Backing::Embedded(cluster) => cluster.check_replicas(),
            Backing::Client(_) => Ok(()),
        }
    }
}

impl Transact for Db {
    fn transact<T>(&self, body: impl FnMut(&mut Txn) -> Result<T, Error>) -> Result<T, Error> {
        self.run(body)
    }
}
