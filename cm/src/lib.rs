//! Acre's configuration manager: the leases that tell the CM which nodes are alive and tell
//! every node whether it may still act (`lease`), and the dedicated thread per process that
//! keeps them over UDP (`lease_thread`).
#![forbid(unsafe_code)]

pub mod lease;
pub mod lease_thread;
