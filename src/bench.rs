//! `acre bench bank`: transactions per second and p50/p99 commit latency of bank transfers
//! (two reads, two writes) and of read-only transactions of four objects, with 1, 2 and 4
//! client threads, on a 3-node cluster with 3 replicas: embedded (`local`) or node processes
//! (`shm`, `tcp`) with the client threads in this process.
//!
//! Expectation on this 2-core machine: a transfer costs a LOCK round trip through a worker
//! thread (two futex wake-ups, ~10-30 µs), COMMIT-BACKUP and COMMIT-PRIMARY appends (~1 µs each
//! on tmpfs) and lazy truncation; a few tens of thousands of transfers per second. A read-only
//! transaction of four objects is four one-sided reads and four header re-reads: several times
//! faster. More threads than cores mostly add contention.

use crate::launch::{self, DownArgs, UpArgs};
use acre::cluster::CLUSTER_FILE;
use acre::db::{Db, EmbeddedOptions};
use acre::engine::signal::{self, Termination};
use acre_benches::bank::{Bank, THREADS_MAX, quantile};
use anyhow::Context;
use std::io::Write as _;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

#[derive(clap::Args, Clone, Debug)]
pub struct BankBenchArgs {
    /// Where the nodes run: local (embedded), shm or tcp (node processes).
    #[arg(long, default_value = "local", value_parser = ["local", "shm", "tcp"])]
    transport: String,
    /// Client thread counts to measure, comma-separated.
    #[arg(long, default_value = "1,2,4", value_delimiter = ',')]
    threads: Vec<usize>,
    /// Seconds per measurement (after one second of warm-up).
    #[arg(long, default_value_t = 5)]
    seconds: u64,
    /// Accounts (objects) in the bank.
    #[arg(long, default_value_t = 4000)]
    accounts: usize,
    /// Cluster directory for shm and tcp (created and removed).
    #[arg(long, default_value = "/dev/shm/acre-bench")]
    dir: PathBuf,
    /// Who does the primary's part of a commit: `messages` (the primary's worker, FaRM's) or
    /// `one-sided` (the coordinator, with one-sided operations); docs/protocol.md#one-sided-commit-mode.
    #[arg(long, default_value = "one-sided", value_parser = ["messages", "one-sided"])]
    commit: String,
}

/// The kind of transaction measured.
#[derive(Clone, Copy)]
enum Kind {
    Transfer,
    ReadOnly4,
}

struct Row {
    kind: &'static str,
    threads: usize,
    committed_per_second: f64,
    aborted_per_second: f64,
    p50: Duration,
    p99: Duration,
}

pub fn run(args: &BankBenchArgs, termination: &Termination) -> anyhow::Result<ExitCode> {
    let mut out = crate::output::stdout();
    anyhow::ensure!(args.seconds > 0, "--seconds must be at least 1");
    anyhow::ensure!(args.accounts >= 8, "--accounts must be at least 8");
    anyhow::ensure!(
        args.threads.iter().all(|&t| t > 0),
        "--threads takes positive counts"
    );
    if let Some(&threads) = args.threads.iter().find(|&&t| t > THREADS_MAX) {
        anyhow::bail!("--threads {threads} is too many: at most {THREADS_MAX}");
    }
    let processes = args.transport != "local";
    if processes {
        launch::up(&UpArgs {
            nodes: 3,
            transport: args.transport.clone(),
            dir: args.dir.clone(),
            clients: 2,
            f: None,
            regions_per_node: 1,
            region_bytes: 64 << 20,
            block_bytes: 1 << 20,
            ring_bytes: 4 << 20,
            persist: "auto".into(),
            commit: args.commit.clone(),
        })?;
    }
    let outcome = measure(args, processes, termination);
    if processes {
        launch::down(&DownArgs {
            purge: true,
            dir: args.dir.clone(),
        })?;
    }
    let rows = outcome?;
    if let Some(signal) = termination.requested() {
        writeln!(
            out,
            "interrupted by {}: {} rows measured",
            signal::signal_name(signal),
            rows.len()
        )?;
    }
    writeln!(
        out,
        "{:<12} {:>7} {:>12} {:>10} {:>10} {:>10}",
        "transaction", "threads", "committed/s", "aborted/s", "p50 µs", "p99 µs"
    )?;
    for row in rows {
        writeln!(
            out,
            "{:<12} {:>7} {:>12.0} {:>10.0} {:>10.1} {:>10.1}",
            row.kind,
            row.threads,
            row.committed_per_second,
            row.aborted_per_second,
            row.p50.as_secs_f64() * 1e6,
            row.p99.as_secs_f64() * 1e6
        )?;
    }
    Ok(ExitCode::SUCCESS)
}

fn measure(
    args: &BankBenchArgs,
    processes: bool,
    termination: &Termination,
) -> anyhow::Result<Vec<Row>> {
    let mut out = crate::output::stdout();
    let db = if processes {
        Db::connect(&args.dir.join(CLUSTER_FILE))?
    } else {
        Db::embedded(&EmbeddedOptions {
            ring_bytes: 4 << 20,
            ..EmbeddedOptions::default()
        })?
    };
    writeln!(
        out,
        "bank bench: 3 nodes, {} replicas, {} transport, {} accounts, {} s per row",
        db.config().f + 1,
        args.transport,
        args.accounts,
        args.seconds
    )?;
    let bank = Bank::create(&db, args.accounts, 1000).context("create the accounts")?;
    let mut rows = Vec::new();
    for (kind, name) in [
        (Kind::Transfer, "transfer"),
        (Kind::ReadOnly4, "read-only 4"),
    ] {
        for &threads in &args.threads {
            if termination.requested().is_some() {
                break;
            }
            let row = measure_one(&db, &bank, kind, name, threads, args.seconds, termination)?;
            // A row cut short by Ctrl-C measured too little to print.
            if termination.requested().is_none() {
                rows.push(row);
            }
        }
    }
    let audit = bank.audit(&db).context("final audit")?;
    anyhow::ensure!(
        audit.is_ok(),
        "the bank is inconsistent after the bench: {audit:?}"
    );
    Ok(rows)
}

fn measure_one(
    db: &Db,
    bank: &Bank,
    kind: Kind,
    name: &'static str,
    threads: usize,
    seconds: u64,
    termination: &Termination,
) -> anyhow::Result<Row> {
    let stop = Arc::new(AtomicBool::new(false));
    let measuring = Arc::new(AtomicBool::new(false));
    let spawned: Vec<_> = (0..threads)
        .map(|t| {
            let (db, bank, stop, measuring) =
                (db.clone(), bank.clone(), stop.clone(), measuring.clone());
            std::thread::Builder::new()
                .name(format!("bench-{t}"))
                .spawn(move || -> Result<(u64, u64, Vec<Duration>), acre::Error> {
                    let mut random = acre::nvm_log::random::SplitMix::new(t as u64 * 7919 + 1);
                    let (mut committed, mut aborted, mut latencies) = (0u64, 0u64, Vec::new());
                    let n = bank.accounts.len() as u64;
                    while !stop.load(Ordering::Relaxed) {
                        let began = Instant::now();
                        let outcome = match kind {
                            Kind::Transfer => {
                                let from = bank.accounts[random.below(n) as usize];
                                let to = bank.accounts[random.below(n) as usize];
                                if from == to {
                                    continue;
                                }
                                Bank::transfer(&db, from, to, 1)
                            }
                            Kind::ReadOnly4 => (|| -> Result<(), acre::Error> {
                                let mut txn = db.begin()?;
                                for _ in 0..4 {
                                    txn.read(bank.accounts[random.below(n) as usize])?;
                                }
                                Ok(txn.commit()?)
                            })(),
                        };
                        let counted = measuring.load(Ordering::Relaxed);
                        match outcome {
                            Ok(()) if counted => {
                                committed += 1;
                                latencies.push(began.elapsed());
                            }
                            Ok(()) => {}
                            Err(e) if e.is_retryable() => aborted += counted as u64,
                            Err(e) => return Err(e),
                        }
                    }
                    Ok((committed, aborted, latencies))
                })
        })
        .collect();
    let mut handles = Vec::with_capacity(threads);
    let mut failed = None;
    for (index, handle) in spawned.into_iter().enumerate() {
        match handle {
            Ok(handle) => handles.push(handle),
            Err(error) => {
                failed.get_or_insert((index, error));
            }
        }
    }
    if let Some((index, error)) = failed {
        stop.store(true, Ordering::Relaxed);
        for handle in handles {
            // The measurement did not start; only the spawn error is worth reporting.
            let _ = handle.join().expect("bench threads do not panic");
        }
        return Err(anyhow::Error::new(error).context(format!(
            "start thread {index} of {threads} (run fewer threads)"
        )));
    }
    termination.sleep(Duration::from_secs(1)); // warm-up, not counted
    measuring.store(true, Ordering::Relaxed);
    let start = Instant::now();
    termination.sleep(Duration::from_secs(seconds));
    measuring.store(false, Ordering::Relaxed);
    let elapsed = start.elapsed().as_secs_f64();
    stop.store(true, Ordering::Relaxed);
    let (mut committed, mut aborted, mut latencies) = (0, 0, Vec::new());
    for handle in handles {
        let (c, a, l) = handle.join().expect("bench threads do not panic")?;
        committed += c;
        aborted += a;
        latencies.extend(l);
    }
    Ok(Row {
        kind: name,
        threads,
        committed_per_second: committed as f64 / elapsed,
        aborted_per_second: aborted as f64 / elapsed,
        p50: quantile(&mut latencies, 0.50),
        p99: quantile(&mut latencies, 0.99),
    })
}
