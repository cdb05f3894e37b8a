//! Acre's fault-injection harness (`acre jepsen`): it starts a real cluster of node processes,
//! runs client workers that record every operation as an invocation and its completion, injects
//! faults on a seeded schedule, heals them, reads everything at the end, and checks the history
//! with checkers that know nothing of Acre.
//!
//! - [`history`]: the recorded operations (`history.jsonl`), one line each.
//! - [`results`]: what a run concludes (`results.json`): validity, anomalies, counts, faults.
//! - [`check`]: the checkers, from a history to verdicts, findings and lost writes.

pub mod check;
pub mod history;
pub mod results;
