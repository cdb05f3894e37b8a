//! Acre's transactions: the FaRM commit protocol (docs/protocol.md) over the engine's fabric.
//!
//! - [`config`]: the static configuration (nodes, regions, primary and backups of each).
//! - [`record`]: the log records (LOCK, COMMIT-BACKUP, COMMIT-PRIMARY, ABORT, TRUNCATE, and the
//!   VALIDATE / ALLOC / RELEASE requests) and transaction ids.
//! - [`txn`]: a transaction's execution (reads, buffered writes, allocations, frees).
//! - `commit`: the coordinator's commit, one module per protocol step.
//! - [`primary`]: what a primary does with LOCK, VALIDATE, COMMIT-PRIMARY and ABORT.
//! - [`txn_node`]: [`TxnNode`], one node's transactional state.
//! - [`link`]: the log rings a node writes at the others; [`truncation`]: lazy truncation.
//! - [`read`]: one-sided object reads.
//! - [`backoff`]: waiting before trying again.
//! - [`reply`]: the reply area participants answer coordinators in.
//! - [`directory`]: the access keys of other nodes' areas.
//! - [`value`]: how a value is kept in an object's payload.
//! - [`retry`]: running a transaction to completion, retrying conflicts ([`Transact`]).
//! - [`index`]: transactional indexes: a hash table and a B-tree kept in objects.
//!
//! Backups, truncation apply and the node worker that serves incoming records live in
//! acre-replication; the embedded `Db` API in the `acre` facade.
#![forbid(unsafe_code)]

pub mod alloc;
pub mod backoff;
mod commit;
pub mod config;
pub mod courier;
pub mod directory;
pub mod error;
pub mod index;
pub mod link;
pub mod primary;
pub mod read;
pub mod record;
pub mod reply;
pub mod retry;
pub mod truncation;
pub mod txn;
pub mod txn_node;
pub mod value;

/// What `lock().expect` says of a poisoned lock. A thread panicked while holding it, so what
/// it guards may be half-changed: the process stops rather than go on with it (and in release
/// builds, where panics abort, no lock is ever poisoned).
pub(crate) const POISONED: &str = "a thread panicked while holding this lock";

pub use commit::validate::T_R;
pub use config::{Configuration, FailureDomain, Placement, RegionState};
pub use error::{CommitError, Error, IndexError, TxnError};
pub use record::TxnId;
pub use retry::Transact;
pub use txn::Txn;
pub use txn_node::TxnNode;
