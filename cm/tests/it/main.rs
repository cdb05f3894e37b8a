//! acre-cm's integration tests, one binary for the crate (STYLE.md): lease threads as a cluster
//! runs them, the Raft group simulated under faults, and the group run over loopback links.

mod group;
mod idle_cpu;
mod sim;
