//! The checkers: what a history proves or refutes, on std and serde alone (no other Acre
//! crate, so acre-replication's tests use them too).
//!
//! - [`elle`]: strict serializability of list-append transactions, by their dependency graph.

pub mod elle;
