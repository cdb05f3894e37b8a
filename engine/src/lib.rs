//! Acre's engine: the global address space (addresses, regions, objects, the slab allocator),
//! the fabric that performs one-sided operations on it over several transports, the ring
//! channels on top of it, and the cluster directory node processes find each other through.
#![deny(unsafe_code)]

/// What `lock().expect` says of a poisoned lock. A thread panicked while holding it, so what
/// it guards may be half-changed: the process stops rather than go on with it (and in release
/// builds, where panics abort, no lock is ever poisoned).
pub(crate) const POISONED: &str = "a thread panicked while holding this lock";

pub mod addr;
pub mod channel;
pub mod clock;
pub mod cursor;
pub mod directory;
pub mod fabric;
pub mod hash;
pub mod interleave;
pub mod lease;
pub mod object;
pub mod pause;
pub mod procfs;
pub mod region;
pub mod signal;
pub mod slab;
pub mod space;
mod sync;

pub use addr::{Addr, AddrParseError, NodeId, RegionId};
pub use fabric::{Completion, Fabric, Op, OpError, OpResult};
pub use region::{AccessError, AccessKey, Region};
