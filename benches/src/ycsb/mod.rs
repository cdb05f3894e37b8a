//! A YCSB driver (the Yahoo! Cloud Serving Benchmark's core workloads A to F), generic over the
//! database it drives: anything that implements [`Backend`]. The root package implements it for
//! Acre; [`redis`] implements it for a Redis server, so both run the same operations with the
//! same key choices.
//!
//! It follows YCSB's `CoreWorkload` with its default properties: records of [`FIELD_COUNT`]
//! fields of [`FIELD_LENGTH_BYTES`] bytes, keys in hashed insert order ([`key_name`]), reads of
//! whole records, updates of one field, scrambled-zipfian or skewed-latest key choice
//! ([`generator`]), and run-phase inserts that become readable once acknowledged.
//!
//! - [`generator`]: the PRNG, YCSB's FNV hash and its zipfian generators.
//! - [`workload`]: the workloads, their records and the per-thread operation chooser.
//! - [`driver`]: [`Options`], the [`load`] and [`run`] phases on client threads.
//! - [`stats`]: per-thread HDR histograms of latencies; [`report`]: text and JSON results.
//! - [`progress`]: the progress line; [`redis`]: the Redis backend and its RESP client.
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
//! };
//! let load = ycsb::load(&backend, &options)?;
//! let run = ycsb::run(&backend, &options)?;
//! run.print_text(&mut std::io::stdout())?;
//! ycsb::write_json("ycsb-a-redis.json".as_ref(), &ycsb::Results::new("redis", &options, load, run))?;
//! # Ok(())
//! # }
//! ```

pub mod driver;
pub mod generator;
pub mod progress;
pub mod redis;
pub mod report;
pub mod stats;
pub mod workload;

pub use driver::{FAILED_STREAK_MAX, Options, OptionsError, load, run};
pub use report::{OpReport, Phase, PhaseReport, Results, Settings, write_json};
pub use workload::{FIELD_COUNT, FIELD_LENGTH_BYTES, OpKind, Workload, key_name};

/// One record: YCSB's fields, in order.
pub type Fields = Vec<Vec<u8>>;

/// A database the driver can load and run against. Shared by all client threads.
pub trait Backend: Send + Sync {
    /// Short name for reports ("acre", "redis").
    fn name(&self) -> String;
    /// One connection/session for one client thread.
    fn client(&self) -> anyhow::Result<Box<dyn Client>>;
}

/// One client thread's session. Every method is one YCSB operation; retries of conflicts happen
/// inside.
pub trait Client: Send {
    fn insert(&mut self, key: &str, fields: &Fields) -> anyhow::Result<()>;
    /// All fields of the record, or None if the key does not exist.
    fn read(&mut self, key: &str) -> anyhow::Result<Option<Fields>>;
    /// Overwrites field `field` (0-based) of an existing record; false if the key does not
    /// exist.
    fn update(&mut self, key: &str, field: usize, value: &[u8]) -> anyhow::Result<bool>;
    /// Reads the record and overwrites one field atomically (a transaction); false if missing.
    fn read_modify_write(&mut self, key: &str, field: usize, value: &[u8]) -> anyhow::Result<bool>;
    /// Up to `count` records with keys >= `start`, in key order (byte order of the key
    /// strings).
    fn scan(&mut self, start: &str, count: usize) -> anyhow::Result<Vec<Fields>>;
}
