//! `acre bench tpcc`: TPC-C's full mix through one driver (`acre_benches::tpcc`) against Acre
//! (an embedded cluster, or a running cluster started by `acre cluster up`) or PostgreSQL.
//! The database is created and loaded with the spec's population for `--warehouses`, the
//! consistency conditions are checked, the mix runs for a warm-up and `--duration`, the
//! result is printed (and written as JSON), and the conditions are checked again. A violated
//! condition exits 1; bad input (zero warehouses or threads, an unreachable target, a
//! PostgreSQL database that already holds the tables without `--flush`, an `acre:DIR` cluster
//! that holds objects, more warehouses than the memory holds) exits 2 with one line, before
//! anything is loaded. SIGINT or SIGTERM ends the load or the run early: what ran is printed,
//! nothing written.
//!
//! Expectation on this 2-core machine: FaRM reports about 3,100 New-Orders per second per
//! core with 3 replicas; a New-Order here reads about 40 objects and writes about 30 (stock,
//! order lines and index nodes), so with commits of tens of µs a few thousand per second on
//! two cores is the order of magnitude. PostgreSQL at SERIALIZABLE spends several round trips
//! and fsyncs per transaction and serialization failures grow with the threads: hundreds.

use crate::bench_ycsb::parse_duration;
use acre::db::{Db, EmbeddedOptions};
use acre::engine::signal::{self, Termination};
use acre_benches::tpcc::acre::AcreTpcc;
use acre_benches::tpcc::postgres::{Isolation, PgTpcc};
use acre_benches::tpcc::{self, Backend, CheckReport};
use anyhow::Context;
use std::io::IsTerminal;
use std::io::Write as _;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

/// Region size of an embedded cluster: a loaded warehouse (about 160 MiB) fits in one, so its
/// rows share a primary.
const EMBEDDED_REGION_BYTES: u64 = 256 << 20;
/// New-Orders per second an embedded cluster is sized for (its memory grows with the orders).
const EMBEDDED_NEW_ORDERS_PER_SECOND: u64 = 10_000;

#[derive(clap::Args, Clone, Debug)]
pub struct TpccArgs {
    /// Warehouses loaded (each 100,000 stock rows, 30,000 customers, 30,000 orders).
    #[arg(long, default_value_t = 1)]
    warehouses: u32,
    /// Client threads (load and run); thread i's home warehouse is i mod W + 1.
    #[arg(long, default_value_t = 2)]
    threads: usize,
    /// How long the mix is measured, after the warm-up: e.g. 60s, 500ms, 2m.
    #[arg(long, value_parser = parse_duration, default_value = "60s")]
    duration: Duration,
    /// The mix runs this long before measuring starts.
    #[arg(long, value_parser = parse_duration, default_value = "10s")]
    warmup: Duration,
    /// `acre` (an embedded 3-node cluster, 3 replicas), `acre:DIR` (the cluster `acre cluster
    /// up --dir DIR` started), or `postgres://USER@HOST:PORT/DB`.
    #[arg(long, default_value = "acre")]
    target: String,
    /// Where the JSON results go (default: tpcc-<target kind>.json).
    #[arg(long)]
    json: Option<PathBuf>,
    /// Seed of the data and of every input (default: random).
    #[arg(long)]
    seed: Option<u64>,
    /// With a postgres target: drop the nine TPC-C tables if they exist. Without it, a
    /// database that has any of them is refused. An `acre:DIR` cluster that holds objects is
    /// always refused (nothing empties a running cluster: start a new one).
    #[arg(long)]
    flush: bool,
    /// With a postgres target: serializable (the default) or read-committed.
    #[arg(long, default_value = "serializable")]
    isolation: String,
}

/// Where the benchmark runs.
enum Target {
    Embedded,
    Cluster(PathBuf),
    Postgres(String),
}

impl Target {
    fn parse(text: &str) -> anyhow::Result<Target> {
        if text == "acre" {
            Ok(Target::Embedded)
        } else if let Some(dir) = text.strip_prefix("acre:") {
            anyhow::ensure!(!dir.is_empty(), "--target acre:DIR needs a directory");
            Ok(Target::Cluster(PathBuf::from(dir)))
        } else if text.starts_with("postgres://") || text.starts_with("postgresql://") {
            Ok(Target::Postgres(text.to_string()))
        } else {
            anyhow::bail!(
                "unknown target {text:?}: use acre, acre:DIR (a cluster from `acre cluster up`) \
                 or postgres://USER@HOST:PORT/DB"
            )
        }
    }

    fn kind(&self) -> &'static str {
        match self {
            Target::Embedded | Target::Cluster(_) => "acre",
            Target::Postgres(_) => "postgres",
        }
    }
}

fn parse_isolation(text: &str) -> anyhow::Result<Isolation> {
    match text {
        "serializable" => Ok(Isolation::Serializable),
        "read-committed" => Ok(Isolation::ReadCommitted),
        other => anyhow::bail!("unknown isolation {other:?}: use serializable or read-committed"),
    }
}

const MIB: u64 = 1 << 20;

pub fn run(args: &TpccArgs, termination: &Arc<Termination>) -> anyhow::Result<ExitCode> {
    let mut out = crate::output::stdout();
    let target = Target::parse(&args.target)?;
    let isolation = parse_isolation(&args.isolation)?;
    let options = tpcc::Options {
        warehouses: args.warehouses,
        threads: args.threads,
        duration: args.duration,
        warmup: args.warmup,
        seed: args.seed,
        progress: std::io::stdout().is_terminal(),
        termination: Some(termination.clone()),
    };
    options.validate()?;
    let mut backend = connect(&target, args, isolation)?;
    writeln!(
        out,
        "tpcc against {}: {} warehouses, {} threads",
        backend.describe(),
        args.warehouses,
        args.threads
    )?;
    backend
        .create(args.warehouses)
        .context("create the tables")?;
    let loaded = tpcc::load(backend.as_ref(), &options);
    if let Some(signal) = termination.requested() {
        writeln!(
            out,
            "interrupted by {} during the load: no run, no results written",
            signal::signal_name(signal)
        )?;
        return Ok(ExitCode::SUCCESS);
    }
    let loaded = loaded.context("load the warehouses")?;
    writeln!(
        out,
        "loaded {} warehouses in {:.1} s",
        args.warehouses,
        loaded.elapsed.as_secs_f64()
    )?;
    let mut client = backend.client().context("open a session for the checks")?;
    let report =
        tpcc::check(client.as_mut(), args.warehouses, true).context("check the loaded database")?;
    if !print_check(&mut out, "after the load", &report)? {
        return Ok(ExitCode::from(1));
    }
    let run = tpcc::run(backend.as_ref(), &options, &loaded.constants).context("run the mix")?;
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
    let report = tpcc::check(client.as_mut(), args.warehouses, false)
        .context("check the database after the run")?;
    let holds = print_check(&mut out, "after the run", &report)?;
    let json_path = args
        .json
        .clone()
        .unwrap_or_else(|| PathBuf::from(format!("tpcc-{}.json", target.kind())));
    run.write_json(&json_path, Some(&loaded), holds, args.seed)?;
    writeln!(out, "results written to {}", json_path.display())?;
    Ok(if holds {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(1)
    })
}

/// Prints the conditions; whether all hold.
fn print_check(
    out: &mut dyn std::io::Write,
    when: &str,
    report: &CheckReport,
) -> anyhow::Result<bool> {
    let verdict = if report.holds() {
        "every condition holds"
    } else {
        "CONDITIONS VIOLATED"
    };
    writeln!(out, "consistency (clause 3.3.2) {when}: {verdict}")?;
    report.print(out)?;
    Ok(report.holds())
}

fn connect(
    target: &Target,
    args: &TpccArgs,
    isolation: Isolation,
) -> anyhow::Result<Box<dyn Backend>> {
    let seconds = (args.duration + args.warmup).as_secs().max(1);
    let new_orders = seconds * EMBEDDED_NEW_ORDERS_PER_SECOND;
    Ok(match target {
        Target::Embedded => {
            let options = embedded_options(args.warehouses, new_orders);
            let copies = 1 + options.f.unwrap_or(2) as u64;
            let needed = options.regions_per_node as u64
                * u64::from(options.nodes)
                * options.region_bytes
                * copies;
            if let Some(available) = memory_available_bytes() {
                anyhow::ensure!(
                    needed <= available,
                    "{} warehouses need {} MiB of memory in an embedded cluster ({} copies of \
                     {} MiB of regions, sized for {} s of New-Orders), and this machine has {} \
                     MiB available: use fewer warehouses or a shorter run",
                    args.warehouses,
                    needed / MIB,
                    copies,
                    needed / copies / MIB,
                    seconds,
                    available / MIB
                );
            }
            let db = Db::embedded(&options)?;
            Box::new(AcreTpcc::new(db, "an embedded 3-node cluster".to_string()))
        }
        Target::Cluster(dir) => {
            let file = dir.join(acre::cluster::CLUSTER_FILE);
            anyhow::ensure!(
                file.exists(),
                "no cluster at {}: start one with `acre cluster up --dir {}`",
                dir.display(),
                dir.display()
            );
            let runs_cm = acre::cluster::ClusterFile::read(&file)?.cm.is_some();
            let db = Db::connect(&file)?;
            anyhow::ensure!(
                !db.holds_objects().with_context(|| format!(
                    "whether the cluster in {} is empty",
                    dir.display()
                ))?,
                "the cluster in {} already holds objects, and TPC-C loads into an empty cluster{}: \
                 start a new one (acre cluster down --dir {} --purge, then acre cluster up --dir {})",
                dir.display(),
                if args.flush {
                    " (--flush empties only a PostgreSQL database)"
                } else {
                    ""
                },
                dir.display(),
                dir.display()
            );
            let backend = AcreTpcc::new(db, format!("the cluster in {}", dir.display()));
            let needed = AcreTpcc::bytes_needed(args.warehouses, 0);
            let available = backend.bytes_available();
            if runs_cm {
                // Its CM adds regions as the load fills them: what must fit is every replica
                // of the regions still to come, in the file system that holds the cluster.
                let copies = backend.replicas() as u64;
                let more = needed.saturating_sub(available).saturating_mul(copies);
                let free = acre::engine::space::free_bytes(dir)
                    .with_context(|| format!("how much room {} has", dir.display()))?;
                anyhow::ensure!(
                    more <= free,
                    "{} warehouses need {} MiB of object memory once loaded; the cluster in {} \
                     has {} MiB of regions and its CM adds more as the load fills them, {} MiB \
                     with {copies} replicas each, but {} has {} MiB free: use fewer warehouses",
                    args.warehouses,
                    needed / MIB,
                    dir.display(),
                    available / MIB,
                    more / MIB,
                    dir.display(),
                    free / MIB
                );
            } else {
                anyhow::ensure!(
                    needed <= available,
                    "{} warehouses need {} MiB of object memory once loaded, and the cluster in {} \
                     has {} MiB of regions and no CM to add more: start it with more or larger \
                     regions (acre cluster up --regions-per-node, --region-bytes) or use fewer \
                     warehouses",
                    args.warehouses,
                    needed / MIB,
                    dir.display(),
                    available / MIB
                );
            }
            Box::new(backend)
        }
        Target::Postgres(url) => Box::new(PgTpcc::connect(url, isolation, args.flush)?),
    })
}

/// An embedded cluster of three nodes with room for `warehouses` and `new_orders`: regions
/// of [`EMBEDDED_REGION_BYTES`], as many per node as that takes.
fn embedded_options(warehouses: u32, new_orders: u64) -> EmbeddedOptions {
    let defaults = EmbeddedOptions::default();
    let nodes = u64::from(defaults.nodes);
    let needed = AcreTpcc::bytes_needed(warehouses, new_orders);
    let regions = needed.div_ceil(EMBEDDED_REGION_BYTES).max(nodes);
    EmbeddedOptions {
        regions_per_node: regions.div_ceil(nodes) as usize,
        region_bytes: EMBEDDED_REGION_BYTES,
        ring_bytes: 4 << 20,
        ..defaults
    }
}

/// MemAvailable from /proc/meminfo, if it can be read.
fn memory_available_bytes() -> Option<u64> {
    let meminfo = std::fs::read_to_string("/proc/meminfo").ok()?;
    let line = meminfo.lines().find(|l| l.starts_with("MemAvailable:"))?;
    let kib: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kib * 1024)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn targets_isolations_and_durations_parse_and_bad_ones_are_errors() {
        assert!(matches!(Target::parse("acre"), Ok(Target::Embedded)));
        assert!(matches!(Target::parse("acre:/c"), Ok(Target::Cluster(_))));
        assert!(matches!(
            Target::parse("postgres://postgres@127.0.0.1:5432/postgres"),
            Ok(Target::Postgres(_))
        ));
        for bad in ["", "acre:", "redis://x", "pg://x"] {
            assert!(Target::parse(bad).is_err(), "{bad}");
        }
        assert_eq!(
            parse_isolation("read-committed").ok(),
            Some(Isolation::ReadCommitted)
        );
        assert!(parse_isolation("snapshot").is_err());
        assert_eq!(parse_duration("1.5s"), Ok(Duration::from_millis(1500)));
        assert_eq!(parse_duration("2m"), Ok(Duration::from_secs(120)));
        assert!(parse_duration("10x").is_err());
    }

    #[test]
    fn an_embedded_cluster_is_sized_for_its_warehouses() {
        let options = embedded_options(4, 600_000);
        let bytes = options.regions_per_node as u64 * 3 * options.region_bytes;
        assert!(bytes >= AcreTpcc::bytes_needed(4, 600_000), "{options:?}");
        assert!(options.region_bytes >= tpcc::acre::LOADED_BYTES_PER_WAREHOUSE);
    }
}
