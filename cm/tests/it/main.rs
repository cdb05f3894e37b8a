//! acre-cm's integration tests, one binary for the crate (STYLE.md): lease threads as a cluster
//! runs them.

mod idle_cpu;
