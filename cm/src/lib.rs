//! Acre's configuration manager (docs/failures.md#configuration-manager).
//!
//! - [`remap`]: the pure functions that compute configuration c+1 from c when nodes fail, join
//!   or leave, and when a region is created.
//! - [`lease`]: the leases that tell the CM which nodes are alive and tell every node whether it
//!   may still act, as state machines driven by explicit time.
//! - [`lease_thread`]: the dedicated thread per process that keeps them over UDP.
//! - [`net`]: authenticated, framed message links over TCP between CM replicas and nodes (Raft
//!   messages, NEW-CONFIG, admin requests); lossy by design, as Raft tolerates.

#![forbid(unsafe_code)]

pub mod lease;
pub mod lease_thread;
pub mod net;
pub mod remap;
