//! Acre's transactions: the FaRM commit protocol (DESIGN.md §5) over the engine's fabric.
//!
//! - [`config`]: the static configuration (nodes, regions, primary and backups of each).
//! - [`record`]: the log records (LOCK, COMMIT-BACKUP, COMMIT-PRIMARY, ABORT, TRUNCATE, and the
//!   VALIDATE / ALLOC / RELEASE requests) and transaction ids.
//! - [`txn`]: a transaction's execution and the coordinator's commit.
//! - [`primary`]: what a primary does with LOCK, VALIDATE, COMMIT-PRIMARY and ABORT.
//! - [`node`]: one node's transactional state: links to the other nodes' logs, lazy
//!   truncation, one-sided object reads, allocation.
//! - [`reply`]: the reply area participants answer coordinators in.
//! - [`directory`]: the access keys of other nodes' areas.
//! - [`value`]: how a value is kept in an object's payload.
//! - [`retry`]: running a transaction to completion, retrying conflicts ([`Transact`]).
//! - [`index`]: transactional indexes: a hash table and a B-tree kept in objects.
//!
//! Backups, truncation apply and the node worker that serves incoming records live in
//! acre-replication; the embedded `Db` API in the `acre` facade.
#![forbid(unsafe_code)]

pub mod config;
mod cursor;
pub mod directory;
pub mod error;
pub mod index;
pub mod node;
pub mod primary;
pub mod record;
pub mod reply;
pub mod retry;
pub mod txn;
pub mod value;

pub use config::{Configuration, Placement};
pub use error::TxnError;
pub use node::TxnNode;
pub use record::TxnId;
pub use retry::Transact;
pub use txn::Txn;
