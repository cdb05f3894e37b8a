//! Acre's fault-injection harness (`acre jepsen`): it starts a real cluster of node processes,
//! runs client workers that record every operation as an invocation and its completion, injects
//! faults on a seeded schedule, heals them, reads everything at the end, and checks the history
//! with checkers that know nothing of Acre.
//!
//! - [`history`]: the recorded operations (`history.jsonl`), one line each.
//! - [`results`]: what a run concludes (`results.json`): validity, anomalies, counts, faults.
//! - [`timeline`]: a history over time: fault windows, availability, throughput and latency.
//! - [`check`]: the checkers, from a history to verdicts, findings and lost writes.
//!
//! With the feature `harness` (default; without it the crate is std and serde only):
//! - [`cluster`]: the cluster under test, driven through the `acre` command line.
//! - [`client`]: client processes (`--client-processes`), each a client of the cluster.
//! - [`workload`]: bank, list-append and register operations as Acre transactions.
//! - [`nemesis`]: kill, pause, clock, bitflip and partition faults, and their heals.
//! - [`netns`]: the nodes' network namespaces, their bridge, and the partitions' nftables
//!   rules; removed at the end of the run, or by the next run if this one was killed.
//! - [`run`]: one run, from an empty directory to a history.
//! - [`report`]: `report.html` and its charts, for a person to read a run.

pub mod check;
#[cfg(feature = "harness")]
pub mod client;
#[cfg(feature = "harness")]
pub mod cluster;
pub mod history;
#[cfg(feature = "harness")]
pub mod nemesis;
#[cfg(feature = "harness")]
pub mod netns;
#[cfg(feature = "harness")]
pub mod report;
pub mod results;
#[cfg(feature = "harness")]
pub mod run;
pub mod timeline;
#[cfg(feature = "harness")]
pub mod workload;
