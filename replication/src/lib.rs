//! Acre's replication: the steady state of DESIGN.md §5 and §6 that keeps f+1 copies of every
//! region.
//!
//! - [`backup`]: backups hold COMMIT-BACKUP records and apply them at truncation.
//! - [`worker`]: the node worker that serves the commit protocol's records and keeps them in
//!   the log until they may be dropped.
//! - [`replica`]: one node assembled (region copies, rings, reply area, worker).
//! - [`embedded`]: every node of a configuration in one process.
//! - [`verify`]: backups byte-identical to their primaries.
//!
//! Recovery (of transactions, data and the allocator after a failure) comes with the failure
//! handling issue and lives here too.
#![forbid(unsafe_code)]

pub mod backup;
pub mod embedded;
pub mod replica;
pub mod verify;
pub mod worker;

pub use embedded::EmbeddedCluster;
pub use replica::{ReplicaNode, StartError, Storage};
