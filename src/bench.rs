//! `acre bench bank`: the bank benchmark, one driver (`acre_benches::transfer`) against several
//! targets: Acre (an embedded 3-node cluster with 3 replicas, node processes this command
//! starts over shm or tcp, or a running cluster from `acre cluster up`), Redis (the transfer
//! as a Lua script and as WATCH/MULTI/EXEC) or PostgreSQL (SERIALIZABLE transactions of
//! prepared statements). Every target gets the same accounts, the same transfers from the same
//! seed, and its total checked after every row; the rows are committed and aborted (retried)
//! transactions per second and p50/p99/p99.9 latency per thread count, optionally written as
//! JSON. With `--transfers N` a row is instead exactly N committed transfers (no warm-up, no
//! read-only rows): a fixed amount of work whose instruction count does not depend on the
//! machine's speed (`benches/instructions-per-transfer.sh` counts it under callgrind).
//!
//! Expectation on this 2-core machine: an Acre transfer costs a LOCK round trip through a
//! worker thread (two futex wake-ups, ~10-30 µs), COMMIT-BACKUP and COMMIT-PRIMARY appends
//! (~1 µs each on tmpfs) and lazy truncation; a few tens of thousands of transfers per second.
//! A read-only transaction of four objects is four one-sided reads and four header re-reads:
//! several times faster. Redis's Lua transfer is one loopback round trip to a single-threaded
//! server (~20-40 µs); WATCH/MULTI/EXEC is two. A PostgreSQL transfer is two round trips to a
//! backend process plus a WAL flush at COMMIT (fsync on by default): ~100 µs to a few ms,
//! depending on the disk. More threads than cores mostly add contention.

use crate::launch::{self, DownArgs, UpArgs};
use acre::cluster::CLUSTER_FILE;
use acre::db::{Db, EmbeddedOptions};
use acre::engine::signal::{self, Termination};
use acre_benches::transfer::{self, Backend, acre::AcreBackend};
use anyhow::Context;
use std::io::Write as _;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

/// What every account holds at the start.
const INITIAL_BALANCE: i64 = 1000;
/// Run before each row and not counted.
const WARMUP: Duration = Duration::from_secs(1);
/// Bytes of each region of a cluster this command starts.
const BENCH_REGION_BYTES: u64 = 16 << 20;

#[derive(clap::Args, Clone, Debug)]
pub struct BankBenchArgs {
    /// `acre` (a 3-node cluster with 3 replicas, see --transport), `acre:DIR` (the cluster
    /// `acre cluster up --dir DIR` started; this process joins it as a client node),
    /// `redis://HOST[:PORT][/DB]` (rows `transfer lua`, `transfer watch` and `read-only 4`), or
    /// `postgres://[USER[:PASSWORD]@]HOST[:PORT][/DATABASE]` (trust, password or
    /// scram-sha-256 authentication; table `acre_bank`, SERIALIZABLE).
    #[arg(long, default_value = "acre")]
    target: String,
    /// With --target acre: where the nodes run: local (embedded in this process), shm, tcp or
    /// ofi (node processes started in --dir and stopped at the end; ofi on libfabric's
    /// tcp;ofi_rxm, in an acre built with `--features ofi`). Default: local.
    #[arg(long, value_parser = ["local", "shm", "tcp", "ofi"])]
    transport: Option<String>,
    /// Client thread counts to measure, comma-separated: a row per count and transaction kind.
    #[arg(long, default_value = "1,2,4", value_delimiter = ',')]
    threads: Vec<usize>,
    /// Seconds each row measures, after one second of warm-up.
    #[arg(long, default_value_t = 5)]
    seconds: u64,
    /// Instead of --seconds: each row runs until exactly this many transfers committed (split
    /// among its threads), with no warm-up and no read-only rows; a fixed amount of work, for
    /// counting instructions (benches/instructions-per-transfer.sh).
    #[arg(long, conflicts_with = "seconds")]
    transfers: Option<u64>,
    /// Transactions in flight on each client thread (Acre targets only): the thread runs this
    /// many clients as tasks that take turns where one waits for the fabric, a reply or a
    /// backoff (docs/protocol.md#interleaved-transactions).
    #[arg(long, default_value_t = 1)]
    in_flight: usize,
    /// Accounts in the bank (each starts with 1000).
    #[arg(long, default_value_t = 4000)]
    accounts: usize,
    /// Seed of the transfers (thread t draws from seed ^ ((t + 1) * 0x9e37), as `acre bank`
    /// does); the same seed gives every target the same transfers.
    #[arg(long, default_value_t = 1)]
    seed: u64,
    /// Write the results as JSON to this file too.
    #[arg(long)]
    json: Option<PathBuf>,
    /// With a redis target: empty its database first (FLUSHDB). With a postgres target: drop
    /// the bench's table first (DROP TABLE IF EXISTS acre_bank; no other table). Without it,
    /// a redis database that holds keys or a postgres database with that table is refused.
    #[arg(long)]
    flush: bool,
    /// Cluster directory for --transport shm and tcp (created and removed).
    #[arg(long, default_value = "/dev/shm/acre-bench")]
    dir: PathBuf,
    /// Who does the primary's part of a commit: `messages` (the primary's worker, FaRM's) or
    /// `one-sided` (the coordinator, with one-sided operations); docs/protocol.md#one-sided-commit-mode.
    #[arg(long, default_value = "one-sided", value_parser = ["messages", "one-sided"])]
    commit: String,
}

/// Where the benchmark runs.
#[derive(Debug)]
enum Target {
    /// A cluster this command makes: embedded (`local`) or node processes (`shm`, `tcp`).
    Acre {
        transport: String,
    },
    Cluster(PathBuf),
    Redis(String),
    Postgres(String),
}

impl Target {
    fn parse(text: &str, transport: Option<&str>) -> anyhow::Result<Target> {
        let target = if text == "acre" {
            Target::Acre {
                transport: transport.unwrap_or("local").to_string(),
            }
        } else if let Some(dir) = text.strip_prefix("acre:") {
            anyhow::ensure!(!dir.is_empty(), "--target acre:DIR needs a directory");
            Target::Cluster(PathBuf::from(dir))
        } else if text.starts_with("redis://") {
            Target::Redis(text.to_string())
        } else if text.starts_with("postgres://") || text.starts_with("postgresql://") {
            Target::Postgres(text.to_string())
        } else {
            anyhow::bail!(
                "unknown target {text:?}: use acre, acre:DIR (a cluster from `acre cluster up`), \
                 redis://HOST:PORT or postgres://USER@HOST:PORT/DATABASE"
            )
        };
        if transport.is_some() && !matches!(target, Target::Acre { .. }) {
            anyhow::bail!("--transport goes with --target acre only, not {text:?}");
        }
        Ok(target)
    }
}

pub fn run(args: &BankBenchArgs, termination: &Arc<Termination>) -> anyhow::Result<ExitCode> {
    let mut out = crate::output::stdout();
    let target = Target::parse(&args.target, args.transport.as_deref())?;
    let options = transfer::Options {
        accounts: args.accounts,
        initial_balance: INITIAL_BALANCE,
        threads: args.threads.clone(),
        duration: Duration::from_secs(args.seconds),
        warmup: WARMUP,
        transfers: args.transfers,
        in_flight: args.in_flight,
        seed: args.seed,
        termination: Some(termination.clone()),
    };
    options.validate()?;
    if args.in_flight > 1 && matches!(target, Target::Redis(_) | Target::Postgres(_)) {
        anyhow::bail!(
            "--in-flight applies to Acre targets only: a Redis or PostgreSQL client blocks in \
             its socket; use more --threads"
        );
    }
    // Every transaction in flight holds one of its node's reply slots; more would wait for a
    // slot (`Busy`) rather than run.
    let threads = args.threads.iter().max().copied().unwrap_or(1);
    let most = threads * args.in_flight;
    if most > acre::txn::reply::SLOTS_MAX {
        anyhow::bail!(
            "--threads {threads} with --in-flight {} is {most} transactions at once; a client \
             node has {} transaction slots: use fewer",
            args.in_flight,
            acre::txn::reply::SLOTS_MAX
        );
    }
    let processes = matches!(&target, Target::Acre { transport } if transport != "local");
    if let (Target::Acre { transport }, true) = (&target, processes) {
        launch::up(&UpArgs {
            nodes: 3,
            transport: transport.clone(),
            ofi_provider: None,
            ofi_transfer_threshold: None,
            dir: args.dir.clone(),
            clients: 2,
            f: None,
            regions_per_node: 1,
            // The bank holds at most ACCOUNTS_MAX (8,000) 8-byte accounts and their directory:
            // well under a MiB. Larger regions only cost time at `cluster down`, where each
            // node writes the block sums of its copies.
            region_bytes: BENCH_REGION_BYTES,
            block_bytes: 1 << 20,
            ring_bytes: 4 << 20,
            persist: "auto".into(),
            cm: None,
            cm_processes: 0,
            backup_only: 0,
            lease_ms: launch::LEASE_MS_DEFAULT,
            commit: args.commit.clone(),
            clock_control: false,
            netns: None,
            netns_subnet: None,
        })?;
    }
    let outcome = measure(args, &target, &options, &mut out);
    if processes {
        launch::down(&DownArgs {
            purge: true,
            dir: args.dir.clone(),
        })?;
    }
    let report = outcome?;
    if let Some(signal) = termination.requested() {
        writeln!(
            out,
            "interrupted by {}: {} rows measured, no results written",
            signal::signal_name(signal),
            report.rows.len()
        )?;
        return Ok(ExitCode::SUCCESS);
    }
    if report.transfers.is_some() {
        for row in &report.rows {
            writeln!(
                out,
                "{} with {} threads: {} committed, {} aborted (retried) in {:.3} s",
                row.transaction,
                row.threads,
                row.committed,
                row.aborted,
                row.elapsed.as_secs_f64()
            )?;
        }
    }
    writeln!(
        out,
        "total checked after every row: {} in {} accounts",
        report.expected_total, report.accounts
    )?;
    if let Some(json) = &args.json {
        transfer::write_json(json, &report)
            .with_context(|| format!("write the results to {}", json.display()))?;
        writeln!(out, "results written to {}", json.display())?;
    }
    Ok(ExitCode::SUCCESS)
}

/// Connects to the target, runs the driver and prints each row as it is measured.
fn measure(
    args: &BankBenchArgs,
    target: &Target,
    options: &transfer::Options,
    out: &mut crate::output::Stdout,
) -> anyhow::Result<transfer::Report> {
    let mut backend = connect(args, target)?;
    let length = match args.transfers {
        Some(transfers) => format!("{transfers} committed transfers per row"),
        None => format!(
            "{} s per row after {} s of warm-up",
            args.seconds,
            WARMUP.as_secs()
        ),
    };
    writeln!(
        out,
        "bank bench against {}: {} accounts of {INITIAL_BALANCE}, {length}, seed {}",
        backend.describe(),
        args.accounts,
        args.seed
    )?;
    transfer::print_header(out)?;
    transfer::run(backend.as_mut(), options, |row| {
        transfer::print_row(out, row)
    })
}

fn connect(args: &BankBenchArgs, target: &Target) -> anyhow::Result<Box<dyn Backend>> {
    Ok(match target {
        Target::Acre { transport } if transport == "local" => {
            let db = Db::embedded(&EmbeddedOptions {
                ring_bytes: 4 << 20,
                commit: launch::commit_mode(&args.commit)?,
                ..EmbeddedOptions::default()
            })?;
            Box::new(AcreBackend::new(
                db,
                format!("Acre, 3 nodes embedded (local), {} commits", args.commit),
            ))
        }
        Target::Acre { transport } => {
            let db = Db::connect(&args.dir.join(CLUSTER_FILE))?;
            Box::new(AcreBackend::new(
                db,
                format!(
                    "Acre, 3 node processes over {transport}, {} commits",
                    args.commit
                ),
            ))
        }
        Target::Cluster(dir) => {
            let file = dir.join(CLUSTER_FILE);
            anyhow::ensure!(
                file.exists(),
                "no cluster at {}: start one with `acre cluster up --dir {}`",
                dir.display(),
                dir.display()
            );
            let db = Db::connect(&file)?;
            let description = format!(
                "Acre, the cluster in {} ({} nodes, {} commits)",
                dir.display(),
                db.config().nodes.len(),
                db.config().commit.name()
            );
            Box::new(AcreBackend::new(db, description))
        }
        Target::Redis(url) => Box::new(transfer::redis::RedisBank::connect(url, args.flush)?),
        Target::Postgres(url) => Box::new(transfer::postgres::PgBank::connect(url, args.flush)?),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn targets_parse_and_unknown_ones_are_errors() {
        assert!(matches!(
            Target::parse("acre", None),
            Ok(Target::Acre { transport }) if transport == "local"
        ));
        assert!(matches!(
            Target::parse("acre", Some("shm")),
            Ok(Target::Acre { transport }) if transport == "shm"
        ));
        assert!(matches!(
            Target::parse("acre:/tmp/c", None),
            Ok(Target::Cluster(_))
        ));
        assert!(matches!(
            Target::parse("redis://127.0.0.1:6379", None),
            Ok(Target::Redis(_))
        ));
        assert!(matches!(
            Target::parse("postgresql://u@h/d", None),
            Ok(Target::Postgres(_))
        ));
        for bad in ["", "acre:", "mysql://x", "redis:/x"] {
            assert!(Target::parse(bad, None).is_err(), "{bad}");
        }
        assert!(Target::parse("redis://h", Some("shm")).is_err());
    }
}
