//! acre-cm's integration tests, one binary for the crate (STYLE.md): lease threads as a cluster
//! runs them, and the Raft group simulated under faults.

mod idle_cpu;
mod sim;
