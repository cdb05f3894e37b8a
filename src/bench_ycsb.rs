//! `acre bench ycsb`: YCSB's core workloads through one driver (`acre_benches::ycsb`) against
//! Acre (an embedded cluster, or a running cluster started by `acre cluster up`) or Redis.
//! A load phase inserts the records, a run phase measures after a warm-up; the results are
//! printed and written to a JSON file. SIGINT (Ctrl-C) or SIGTERM ends the phase early: its
//! threads finish the operation they are in, what it measured is printed (nothing written), and
//! a cluster client drops its `Db` as at any other end.
//!
//! Expectation on this 2-core machine: Acre's reads are read-only transactions of two one-sided
//! reads plus two header re-reads, a few µs; its updates commit through LOCK at the primary's
//! worker thread, tens of µs. Redis serves every operation with a loopback round trip to a
//! single-threaded server, around 20-40 µs.

use acre::db::{Db, EmbeddedOptions};
use acre::engine::signal::{self, Termination};
use acre_benches::ycsb::acre::AcreBackend;
use acre_benches::ycsb::{self, Backend, Workload};
use anyhow::Context;
use std::io::IsTerminal;
use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

/// Bytes of object memory an embedded cluster provides per record (a record's 1 KiB slot and
/// its share of both indexes, with room for the run phase's inserts).
const EMBEDDED_BYTES_PER_RECORD: u64 = 3 << 10;

#[derive(clap::Args, Clone, Debug)]
pub struct YcsbArgs {
    /// Core workload: a (50/50 read/update), b (95/5 read/update), c (read only), d (95/5
    /// read/insert, latest), e (95/5 scan/insert), f (50/50 read/read-modify-write).
    #[arg(long, default_value = "a")]
    workload: String,
    /// Records loaded before the run.
    #[arg(long, default_value_t = 100_000)]
    records: u64,
    /// Client threads (load and run).
    #[arg(long, default_value_t = 2)]
    threads: usize,
    /// How long the run phase measures, after the warm-up: e.g. 30s, 500ms, 2m.
    #[arg(long, value_parser = parse_duration, conflicts_with = "operations")]
    duration: Option<Duration>,
    /// Measure this many operations instead of a duration.
    #[arg(long)]
    operations: Option<u64>,
    /// Operations during this first part of the run are done but not counted.
    #[arg(long, value_parser = parse_duration, default_value = "2s")]
    warmup: Duration,
    /// `acre` (an embedded 3-node cluster, 3 replicas), `acre:DIR` (the cluster `acre cluster
    /// up --dir DIR` started), or `redis://HOST:PORT`.
    #[arg(long, default_value = "acre")]
    target: String,
    /// Where the JSON results go (default: ycsb-<workload>-<target kind>.json).
    #[arg(long)]
    json: Option<PathBuf>,
    /// Seed of the key and operation choices (default: random).
    #[arg(long)]
    seed: Option<u64>,
    /// With a redis target: delete every key of its database (FLUSHDB) before loading. Without
    /// it, a database that holds keys is refused.
    #[arg(long)]
    flush: bool,
}

/// Where the benchmark runs.
enum Target {
    Embedded,
    Cluster(PathBuf),
    Redis(String),
}

impl Target {
    fn parse(text: &str) -> anyhow::Result<Target> {
        if text == "acre" {
            Ok(Target::Embedded)
        } else if let Some(dir) = text.strip_prefix("acre:") {
            anyhow::ensure!(!dir.is_empty(), "--target acre:DIR needs a directory");
            Ok(Target::Cluster(PathBuf::from(dir)))
        } else if text.starts_with("redis://") {
            Ok(Target::Redis(text.to_string()))
        } else {
            anyhow::bail!(
                "unknown target {text:?}: use acre, acre:DIR (a cluster from `acre cluster up`) \
                 or redis://HOST:PORT"
            )
        }
    }

    fn kind(&self) -> &'static str {
        match self {
            Target::Embedded | Target::Cluster(_) => "acre",
            Target::Redis(_) => "redis",
        }
    }
}

/// Parses `30s`, `500ms`, `2m`, `1h` or a plain number of seconds.
pub(crate) fn parse_duration(text: &str) -> Result<Duration, String> {
    let text = text.trim();
    let split = text
        .find(|c: char| !c.is_ascii_digit() && c != '.')
        .unwrap_or(text.len());
    let (number, unit) = text.split_at(split);
    let number: f64 = number
        .parse()
        .map_err(|_| format!("{text:?} is not a duration: use e.g. 30s, 500ms or 2m"))?;
    let seconds = match unit {
        "" | "s" => number,
        "ms" => number / 1e3,
        "m" => number * 60.0,
        "h" => number * 3600.0,
        _ => {
            return Err(format!(
                "unknown unit {unit:?} in {text:?}: use ms, s, m or h"
            ));
        }
    };
    Duration::try_from_secs_f64(seconds).map_err(|e| format!("{text:?}: {e}"))
}

pub fn run(args: &YcsbArgs, termination: &Arc<Termination>) -> anyhow::Result<ExitCode> {
    let mut out = crate::output::stdout();
    let workload = Workload::parse(&args.workload)?;
    let target = Target::parse(&args.target)?;
    let duration = match (args.duration, args.operations) {
        (None, None) => Some(Duration::from_secs(30)),
        (duration, _) => duration,
    };
    let options = ycsb::Options {
        workload,
        records: args.records,
        threads: args.threads,
        duration,
        operations: args.operations,
        warmup: args.warmup,
        seed: args.seed,
        progress: std::io::stdout().is_terminal(),
        termination: Some(termination.clone()),
    };
    options.validate()?;
    let backend = connect(&target, args)?;
    writeln!(
        out,
        "ycsb workload {} against {}: {} records, {} threads",
        args.workload.to_lowercase(),
        describe(&target),
        args.records,
        args.threads
    )?;
    let load = ycsb::load(backend.as_ref(), &options).context("load the records")?;
    load.print_text(&mut out)?;
    if let Some(signal) = termination.requested() {
        writeln!(
            out,
            "interrupted by {} during the load: no run, no results written",
            signal::signal_name(signal)
        )?;
        return Ok(ExitCode::SUCCESS);
    }
    if let Some(failed) = load.operations.iter().find(|op| op.failed_count > 0) {
        anyhow::bail!(
            "{} of the {} inserts of the load failed ({}): the run would measure a partial \
             table",
            failed.failed_count,
            args.records,
            failed.first_error.as_deref().unwrap_or("no error recorded")
        );
    }
    let run = ycsb::run(backend.as_ref(), &options).context("run the workload")?;
    run.print_text(&mut out)?;
    if let Some(signal) = termination.requested() {
        writeln!(
            out,
            "interrupted by {} during the run: the numbers above cover what ran; no results \
             written",
            signal::signal_name(signal)
        )?;
        return Ok(ExitCode::SUCCESS);
    }
    let json = args.json.clone().unwrap_or_else(|| {
        PathBuf::from(format!(
            "ycsb-{}-{}.json",
            args.workload.to_lowercase(),
            target.kind()
        ))
    });
    let results = ycsb::Results::new(&backend.name(), &options, load, run);
    ycsb::write_json(&json, &results)
        .with_context(|| format!("write the results to {}", json.display()))?;
    writeln!(out, "results written to {}", json.display())?;
    Ok(ExitCode::SUCCESS)
}

fn describe(target: &Target) -> String {
    match target {
        Target::Embedded => "an embedded 3-node cluster (3 replicas)".into(),
        Target::Cluster(dir) => format!("the cluster in {}", dir.display()),
        Target::Redis(url) => url.clone(),
    }
}

fn connect(target: &Target, args: &YcsbArgs) -> anyhow::Result<Box<dyn Backend>> {
    Ok(match target {
        Target::Embedded => {
            let db = Db::embedded(&embedded_options(args.records))?;
            Box::new(AcreBackend::create(db, args.records)?)
        }
        Target::Cluster(dir) => {
            let file = cluster_file(dir);
            anyhow::ensure!(
                file.exists(),
                "no cluster at {}: start one with `acre cluster up --dir {}`",
                dir.display(),
                dir.display()
            );
            let db = Db::connect(&file)?;
            Box::new(AcreBackend::create(db, args.records)?)
        }
        Target::Redis(url) => {
            let redis = ycsb::redis::RedisBackend::connect(url)
                .with_context(|| format!("cannot reach redis at {url}"))?;
            if args.flush {
                redis.flush().context("flush the redis database")?;
            }
            let keys = redis
                .key_count()
                .context("count the keys of the redis database")?;
            anyhow::ensure!(
                keys == 0,
                "redis database {} at {url} holds {keys} keys: pass --flush to empty it, or use \
                 an empty database (redis://HOST:PORT/DB)",
                redis.url().database
            );
            Box::new(redis)
        }
    })
}

fn cluster_file(dir: &Path) -> PathBuf {
    dir.join(acre::cluster::CLUSTER_FILE)
}

/// An embedded cluster with room for `records`: three nodes, each the primary of one region.
fn embedded_options(records: u64) -> EmbeddedOptions {
    let defaults = EmbeddedOptions::default();
    let nodes = u64::from(defaults.nodes);
    let needed = records.saturating_mul(EMBEDDED_BYTES_PER_RECORD) / nodes;
    EmbeddedOptions {
        region_bytes: needed.next_power_of_two().max(defaults.region_bytes),
        ring_bytes: 4 << 20,
        ..defaults
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_parse_with_units_and_bad_ones_are_errors() {
        assert_eq!(parse_duration("30s"), Ok(Duration::from_secs(30)));
        assert_eq!(parse_duration("30"), Ok(Duration::from_secs(30)));
        assert_eq!(parse_duration("500ms"), Ok(Duration::from_millis(500)));
        assert_eq!(parse_duration("2m"), Ok(Duration::from_secs(120)));
        assert_eq!(parse_duration("1.5s"), Ok(Duration::from_millis(1500)));
        for bad in ["", "s", "10x", "-1s", "1e400"] {
            assert!(parse_duration(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn targets_parse_and_unknown_ones_are_errors() {
        assert!(matches!(Target::parse("acre"), Ok(Target::Embedded)));
        assert!(matches!(
            Target::parse("acre:/tmp/c"),
            Ok(Target::Cluster(_))
        ));
        assert!(matches!(
            Target::parse("redis://127.0.0.1:6379"),
            Ok(Target::Redis(_))
        ));
        for bad in ["", "acre:", "postgres://x", "redis:/x"] {
            assert!(Target::parse(bad).is_err(), "{bad}");
        }
    }
}
