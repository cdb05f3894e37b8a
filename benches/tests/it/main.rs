//! Integration tests of acre-benches: the YCSB driver end to end against an in-memory backend
//! (`memory`, `ycsb`) and against a real Redis server this binary starts (`redis`); the Acre
//! backend on an embedded cluster (`acre`).

mod acre;
mod memory;
mod redis;
mod tpcc;
mod ycsb;

use acre_benches::ycsb::{Options, Workload};
use std::time::Duration;

/// Options of a seeded run of `operations` on `records` from two threads, with no warm-up and
/// no progress line.
///
/// The seed fixes each thread's stream of operations, keys and values, but the two threads
/// share the backend and the acknowledged-insert counter, so how their operations interleave
/// is the scheduler's: a pinned seed does not replay that. The tests that run these options take
/// their seed from a `ConcurrentSeed`, which says so when it prints the seed and when the test
/// fails.
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
        termination: None,
    }
}
