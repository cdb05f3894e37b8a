//! acre-cm's integration tests (one binary per crate): the CM group simulated under faults.

mod sim;
