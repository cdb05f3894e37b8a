//! Acre's replication: the steady state that keeps f+1 copies of every region (backups take
//! COMMIT-BACKUP and apply it at truncation, docs/protocol.md#commit-backup), and the node runtime.
//!
//! - [`backup`]: backups hold COMMIT-BACKUP records and apply them at truncation.
//! - [`worker`]: the node worker that serves the commit protocol's records and keeps them in
//!   the log until they may be dropped.
//! - [`replica`]: one node assembled (region copies, rings, reply area, worker).
//! - [`embedded`]: every node of a configuration in one process.
//! - [`cluster_file`], [`process`], [`client`]: clusters of node processes on one host: the
//!   cluster file, the runtime of a node process (`acre node`), and the client node an
//!   application process joins a running cluster with.
//! - [`status`]: the status area a node's worker publishes its heartbeat, what it settled
//!   (transactions recovered) and what it keeps of each ring in, and what `acre cluster status`
//!   learns of each node (whether it answers, what it settled, its rings' fill and the oldest
//!   transaction each keeps).
//! - [`restart`]: what a node finds of an earlier run (region copies and rings that hold data),
//!   on which it refuses to start until a node can rejoin from its files.
//! - [`sums`]: the block sums a memory node writes of its region copies when it stops cleanly,
//!   by which it proves them intact when it restarts.
//! - [`db`]: `Db`, the embedded API over an embedded cluster or a client node (re-exported by
//!   the `acre` facade).
//! - [`liveness`], [`orphan`]: whether a client coordinator is gone, and how the memory nodes
//!   settle the transactions a client that died left half-way.
//! - [`verify`]: backups byte-identical to their primaries.
//! - [`copier`], [`pace`]: data recovery, a new backup copying its regions from their
//!   primaries, at a pace that spares its node's foreground.
//! - [`netns`]: where a tcp cluster's processes bind when each runs in a network namespace of
//!   its own (`netns.toml`).
//! - [`agent`], [`cm_status`]: a node process's part in the configuration manager (its
//!   replica, leases and reconfiguration driver; a client's following of the configuration),
//!   and the status file the CM publishes for `acre cluster status` and the clients.
//!
//! Recovery (of transactions, data and the allocator after a failure) comes with the failure
//! handling issue and lives here too.
#![forbid(unsafe_code)]

/// What `lock().expect` says of a poisoned lock. A thread panicked while holding it, so what
/// it guards may be half-changed: the process stops rather than go on with it (and in release
/// builds, where panics abort, no lock is ever poisoned).
pub(crate) const POISONED: &str = "a thread panicked while holding this lock";

pub mod agent;
mod allocations;
pub mod backup;
pub mod client;
pub mod cluster_file;
pub mod cm_request;
pub mod cm_status;
pub mod copier;
pub mod db;
pub mod embedded;
pub mod liveness;
pub mod netns;
pub mod orphan;
pub mod outcome;
pub mod pace;
pub mod process;
pub mod recovery;
pub mod replica;
pub mod restart;
pub mod status;
pub mod sums;
pub mod verify;
pub mod worker;

pub use embedded::EmbeddedCluster;
pub use replica::{AdoptError, Adopted, ReplicaNode, StartError, Storage};
