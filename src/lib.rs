//! Acre: a FaRM-style transactional distributed memory engine.
//!
//! The embedded API is [`db::Db`]: an in-process cluster ([`db::Db::embedded`]) or a
//! connection to a cluster of node processes ([`db::Db::connect`]), with strictly serializable
//! transactions over objects in a replicated global address space. The crates underneath are
//! re-exported for tools and tests. Where things live: `docs/ARCHITECTURE.md`.
#![forbid(unsafe_code)]

pub mod bank;
pub mod cluster;
pub mod db;
pub mod ycsb;

pub use acre_engine as engine;
pub use acre_nvm_log as nvm_log;
pub use acre_replication as replication;
pub use acre_txn as txn;
pub use db::{Db, EmbeddedOptions, Txn, TxnError};
