//! Acre's engine: the global address space (addresses, regions, objects, the slab allocator),
//! the fabric that performs one-sided operations on it over several transports, and the node
//! runtime.
#![deny(unsafe_code)]

pub mod addr;
pub mod region;

pub use addr::{Addr, AddrParseError, NodeId, RegionId};
pub use region::{AccessError, AccessKey, Region};
