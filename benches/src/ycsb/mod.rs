//! A YCSB driver (the Yahoo! Cloud Serving Benchmark's core workloads A to F), generic over the
//! database it drives: anything that implements [`Backend`]. [`acre`] implements it for Acre
//! (over the public `Db` API) and [`redis`] for a Redis server, so both run the same operations
//! with the same key choices.
//!
//! It follows YCSB's `CoreWorkload` with its default properties: records of [`FIELD_COUNT`]
//! fields of [`FIELD_LENGTH_BYTES`] bytes, keys in hashed insert order ([`key_name`]), reads of
//! whole records, updates of one field, scrambled-zipfian or skewed-latest key choice
//! ([`generator`]), and run-phase inserts that become readable once acknowledged.
//!
//! - [`generator`]: the PRNG, YCSB's FNV hash and its zipfian generators.
//! - [`workload`]: the workloads, their records and the per-thread operation chooser.
//! - [`backend`]: the [`Backend`] and [`Client`] traits, the whole interface to a database.
//! - [`options`]: [`Options`] and the [`OptionsError`]s of options that cannot run.
//! - [`driver`]: the [`load`] and [`run`] phases on client threads.
//! - [`stats`]: per-thread HDR histograms of latencies; [`report`]: text and JSON results.
//! - [`progress`]: the progress line; [`redis`]: the Redis backend and its RESP client;
//!   [`acre`]: the Acre backend (a record is an object, found through Acre's indexes).
//!
//! ```no_run
//! use acre_benches::ycsb::{self, Options, Workload, redis::RedisBackend};
//! use std::time::Duration;
//!
//! # fn main() -> anyhow::Result<()> {
//! let backend = RedisBackend::connect("redis://127.0.0.1:6379")?;
//! backend.flush()?;
//! let options = Options {
//!     workload: Workload::parse("a")?,
//!     records: 10_000,
//!     threads: 2,
//!     duration: Some(Duration::from_secs(10)),
//!     operations: None,
//!     warmup: Duration::from_secs(1),
//!     seed: None,
//!     progress: false,
//!     termination: None,
//! };
//! let load = ycsb::load(&backend, &options)?;
//! let run = ycsb::run(&backend, &options)?;
//! run.print_text(&mut std::io::stdout())?;
//! ycsb::write_json("ycsb-a-redis.json".as_ref(), &ycsb::Results::new("redis", &options, load, run))?;
//! # Ok(())
//! # }
//! ```

pub mod acre;
pub mod backend;
pub mod driver;
pub mod generator;
pub mod options;
pub mod progress;
pub mod redis;
pub mod report;
pub mod stats;
pub mod workload;

pub use backend::{Backend, Client, Fields};
pub use driver::{FAILED_STREAK_MAX, load, run};
pub use options::{Options, OptionsError, THREADS_MAX};
pub use report::{OpReport, Phase, PhaseReport, Results, Settings, write_json};
pub use workload::{FIELD_COUNT, FIELD_LENGTH_BYTES, OpKind, UnknownWorkload, Workload, key_name};
