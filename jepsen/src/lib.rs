//! Acre's fault-injection harness (`acre jepsen`): it starts a real cluster of node processes,
//! runs client workers that record every operation as an invocation and its completion, injects
//! faults on a seeded schedule, heals them, reads everything at the end, and checks the history
//! with checkers that know nothing of Acre.
//!
//! - [`history`]: the recorded operations (`history.jsonl`), one line each.
//! - [`results`]: what a run concludes (`results.json`): validity, anomalies, counts, faults.
//! - [`timeline`]: a history over time: fault windows, availability, throughput and latency.
//! - [`report`]: `report.html` and its charts, for a person to read a run.

pub mod history;
pub mod report;
pub mod results;
pub mod timeline;
