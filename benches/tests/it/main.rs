//! Integration tests of acre-benches: the YCSB driver end to end against an in-memory backend
//! (`memory`, `ycsb`) and against a real Redis server this binary starts (`redis`); the Acre
//! backend on an embedded cluster (`acre`).

mod acre;
mod memory;
mod redis;
mod ycsb;

use acre_benches::ycsb::{Options, Workload};
use std::time::Duration;

/// Options of a seeded run of `operations` on `records` from two threads, with no warm-up and
/// no progress line.
fn options(workload: Workload, seed: u64, records: u64, operations: u64) -> Options {
    Options {
        workload,
        records,
        threads: 2,
        duration: None,
        operations: Some(operations),
        warmup: Duration::ZERO,
        seed: Some(seed),
        progress: false,
    }
}
