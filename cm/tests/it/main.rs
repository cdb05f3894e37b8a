//! acre-cm's integration tests, one binary for the crate (STYLE.md): lease threads as a cluster
//! runs them, the Raft group simulated under faults, the group run over loopback links, and
//! the driver reconfiguring an embedded cluster end to end.

mod driver;
mod failover_fence;
mod group;
mod idle_cpu;
mod membership;
mod sim;
