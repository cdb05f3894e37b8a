//! Acre's engine: the global address space (addresses, regions, objects, the slab allocator),
//! the fabric that performs one-sided operations on it over several transports, the ring
//! channels on top of it, and the cluster directory node processes find each other through.
#![deny(unsafe_code)]

pub mod addr;
pub mod channel;
pub mod cursor;
pub mod directory;
pub mod fabric;
pub mod object;
pub mod procfs;
pub mod region;
pub mod signal;
pub mod slab;
mod sync;

pub use addr::{Addr, AddrParseError, NodeId, RegionId};
pub use fabric::{Completion, Fabric, Op, OpError, OpResult};
pub use region::{AccessError, AccessKey, Region};
