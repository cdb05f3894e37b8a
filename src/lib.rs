//! Acre: a FaRM-style transactional distributed memory engine.
//!
//! The embedded API is [`db::Db`]: an in-process cluster ([`db::Db::embedded`]) or a
//! connection to a cluster of node processes ([`db::Db::connect`]), with strictly serializable
//! transactions over objects in a replicated global address space. The crates underneath are
//! re-exported for tools and tests; this crate only assembles them. Where things live:
//! `docs/ARCHITECTURE.md`.
//!
//! The `acre` command line is behind the default feature `cli`; an application that embeds
//! Acre depends on it with `default-features = false` and compiles none of the command line's
//! and benchmark drivers' dependencies.
//!
//! Indexes ([`index`]) are kept in objects and used inside transactions, so one transaction
//! can change a row and the indexes that find it:
//!
//! ```
//! use acre::db::{Addr, Db, EmbeddedOptions};
//! use acre::index::{BTree, HashTable};
//! use std::ops::Bound;
//!
//! let db = Db::embedded(&EmbeddedOptions { region_bytes: 4 << 20, ..Default::default() })?;
//! let by_name = HashTable::create(&db, 1000)?; // room for about 1000 keys
//! let in_order = db.run(|txn| Ok(BTree::create(txn)?))?;
//! for (name, balance) in [("carol", 7u64), ("alice", 100), ("bob", 30)] {
//!     db.run(|txn| {
//!         let row = txn.alloc(8)?;
//!         txn.write(row, &balance.to_le_bytes())?;
//!         by_name.insert(txn, name.as_bytes(), row.to_u64())?; // all three commit together
//!         in_order.insert(txn, name.as_bytes(), row.to_u64())?;
//!         Ok(())
//!     })?;
//! }
//! let bob = db.run(|txn| Ok(by_name.get(txn, b"bob")?))?.expect("bob was inserted");
//! assert_eq!(db.read(Addr::from_u64(bob))?, 30u64.to_le_bytes());
//! let names = db.run(|txn| Ok(in_order.range(txn, Bound::Unbounded, Bound::Excluded(b"c"), 10)?))?;
//! assert_eq!(names.iter().map(|(k, _)| &k[..]).collect::<Vec<_>>(), [&b"alice"[..], b"bob"]);
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```
#![forbid(unsafe_code)]

pub use acre_replication::db;

/// Clusters of node processes on this host: the cluster file, the node process runtime behind
/// `acre node`, what a node finds of an earlier run, what `acre cluster status` observes of each
/// node, and the client node a [`Db::connect`] runs
/// in the application's process (all in acre-replication).
pub mod cluster {
    pub use acre_replication::agent::{
        CmAgent, ConfigFollower, StandaloneCm, StandaloneError, current_configuration,
    };
    pub use acre_replication::client::*;
    pub use acre_replication::cluster_file::*;
    pub use acre_replication::cm_request;
    pub use acre_replication::cm_status::*;
    pub use acre_replication::copier::read_progress_file as read_copy_progress;
    pub use acre_replication::process::*;
    pub use acre_replication::restart::*;
    pub use acre_replication::status::{
        Answer, Observation, RingFill, SettledCounts, observe, read_settled,
    };
}

pub use acre_engine as engine;
pub use acre_nvm_log as nvm_log;
pub use acre_replication as replication;
pub use acre_txn as txn;
pub use acre_txn::index;
pub use db::{CommitError, Db, EmbeddedOptions, Error, IndexError, Txn, TxnError};
