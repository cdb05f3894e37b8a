//! Acre's configuration manager (docs/failures.md#configuration-manager).
//!
//! - [`remap`]: the pure functions that compute configuration c+1 from c when nodes fail, join
//!   or leave, and when a region is created.

#![forbid(unsafe_code)]

pub mod net;
pub mod remap;
