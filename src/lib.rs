//! Acre: a FaRM-style transactional distributed memory engine.
//!
//! This facade re-exports the engine's crates; the embedded transactional API arrives with
//! acre-txn. Where things live is described in `docs/ARCHITECTURE.md`.
#![forbid(unsafe_code)]

pub use acre_engine as engine;
pub use acre_nvm_log as nvm_log;
