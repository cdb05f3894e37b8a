//! `acre demo` and `acre bank`: concurrent bank transfers with read-only audits checking the
//! total, on a 3-node embedded cluster with 3 replicas (`demo`) or on a running cluster of node
//! processes (`bank`). Prints committed and aborted transactions per second, the p50/p99 commit
//! latency, and whether the invariant held; exit code 1 if it did not. A transaction that fails
//! (a node died or stopped answering) is said on stderr when it happens (rate-limited, see
//! `acre_benches::bank::Notice`); the run goes on, prints what completed, and exits 2. SIGINT
//! (Ctrl-C) or SIGTERM ends the run early: the transactions in flight finish, the report covers
//! what ran, and the client's `Db` is dropped as at any other end (a second signal exits at
//! once).

use acre::cluster::CLUSTER_FILE;
use acre::db::{Addr, Db, EmbeddedOptions};
use acre::engine::signal::{self, Termination};
use acre_benches::bank::{Bank, BankReport, RunPlan, THREADS_MAX};
use anyhow::Context;
use std::io::Write as _;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

/// How long the cluster may take to apply every committed transaction to every backup.
const QUIESCE_TIMEOUT: Duration = Duration::from_secs(30);

#[derive(clap::Args, Clone, Debug)]
pub struct WorkloadArgs {
    /// How long to run the transfers.
    #[arg(long, default_value_t = 10)]
    pub seconds: u64,
    /// Threads running transfers.
    #[arg(long, default_value_t = 2)]
    pub threads: usize,
    /// Threads running read-only audits of the total.
    #[arg(long, default_value_t = 1)]
    pub audits: usize,
    /// Accounts in the bank.
    #[arg(long, default_value_t = 100)]
    pub accounts: usize,
    /// Seed of the transfer generator.
    #[arg(long, default_value_t = 1)]
    pub seed: u64,
}

#[derive(clap::Args, Clone, Debug)]
pub struct DemoArgs {
    #[command(flatten)]
    pub workload: WorkloadArgs,
    /// Nodes of the embedded cluster.
    #[arg(long, default_value_t = 3)]
    pub nodes: u16,
    /// Who does the primary's part of a commit: `messages` (the primary's worker, FaRM's) or
    /// `one-sided` (the coordinator, with one-sided operations); docs/protocol.md#one-sided-commit-mode.
    #[arg(long, default_value = "one-sided", value_parser = ["messages", "one-sided"])]
    pub commit: String,
}

#[derive(clap::Args, Clone, Debug)]
pub struct BankArgs {
    #[command(flatten)]
    pub workload: WorkloadArgs,
    /// The cluster directory (of `acre cluster up`).
    #[arg(long, default_value = crate::launch::CLUSTER_DIR_DEFAULT)]
    pub dir: PathBuf,
    /// Use the existing bank whose directory object is here (as printed by an earlier run)
    /// instead of creating one.
    #[arg(long)]
    pub bank: Option<Addr>,
}

fn check_workload(args: &WorkloadArgs) -> anyhow::Result<()> {
    anyhow::ensure!(args.seconds > 0, "--seconds must be at least 1");
    anyhow::ensure!(args.threads > 0, "--threads must be at least 1");
    let threads = args.threads.saturating_add(args.audits);
    anyhow::ensure!(
        threads <= THREADS_MAX,
        "--threads {} and --audits {} make {threads} threads: at most {THREADS_MAX}",
        args.threads,
        args.audits
    );
    anyhow::ensure!(args.accounts >= 2, "--accounts must be at least 2");
    Ok(())
}

pub fn demo(args: &DemoArgs, termination: &Termination) -> anyhow::Result<ExitCode> {
    let mut out = crate::output::stdout();
    check_workload(&args.workload)?;
    anyhow::ensure!(args.nodes > 0, "--nodes must be at least 1");
    let options = EmbeddedOptions {
        nodes: args.nodes,
        region_bytes: 16 << 20,
        commit: crate::launch::commit_mode(&args.commit)?,
        ..EmbeddedOptions::default()
    };
    let db = Db::embedded(&options)?;
    let replicas = db.config().f + 1;
    writeln!(
        out,
        "acre demo: {}-node embedded cluster (local transport), {} replicas of every region",
        args.nodes, replicas
    )?;
    let bank = Bank::create(&db, args.workload.accounts, 1000).context("create the accounts")?;
    run_and_report(&db, &bank, &args.workload, "acre demo", true, termination)
}

pub fn bank(args: &BankArgs, termination: &Termination) -> anyhow::Result<ExitCode> {
    let mut out = crate::output::stdout();
    check_workload(&args.workload)?;
    let db = Db::connect(&args.dir.join(CLUSTER_FILE))?;
    writeln!(
        out,
        "acre bank: connected to the {}-node cluster in {} as client {}, {} replicas of every \
         region",
        db.config().nodes.len(),
        args.dir.display(),
        db.client_id()
            .map_or_else(|| "?".into(), |id| id.to_string()),
        db.config().f + 1
    )?;
    let bank = match args.bank {
        Some(directory) => Bank::open(&db, directory).context("open the bank")?,
        None => Bank::create(&db, args.workload.accounts, 1000).context("create the accounts")?,
    };
    writeln!(
        out,
        "bank directory object: {} (pass --bank {} to reuse it)",
        bank.directory, bank.directory
    )?;
    run_and_report(&db, &bank, &args.workload, "acre bank", false, termination)
}

fn run_and_report(
    db: &Db,
    bank: &Bank,
    args: &WorkloadArgs,
    command: &'static str,
    embedded: bool,
    termination: &Termination,
) -> anyhow::Result<ExitCode> {
    let mut out = crate::output::stdout();
    writeln!(
        out,
        "{} accounts of {}, {} transfer threads and {} audit threads for {} s...",
        bank.accounts.len(),
        bank.initial_balance,
        args.threads,
        args.audits,
        args.seconds
    )?;
    let mut report = bank
        .run(
            db,
            RunPlan {
                transfer_threads: args.threads,
                audit_threads: args.audits,
                duration: Duration::from_secs(args.seconds),
                seed: args.seed,
            },
            termination,
            // Said when it happens, on stderr (where the libraries' warnings go too).
            move |notice| eprintln!("{command}: {notice}"),
        )
        .context("run the transfers")?;
    if let Some(signal) = termination.requested() {
        writeln!(
            out,
            "interrupted by {} after {:.1} s: the transactions in flight finished",
            signal::signal_name(signal),
            report.elapsed.as_secs_f64()
        )?;
    }
    print_report(&mut report)?;
    // A transfer of unknown outcome (its commit was cut by a failure: recovery or its
    // finisher decides it) moves money between two accounts whichever way it went, so the
    // total still holds: the final audit runs. Any other failure stops here.
    let other = report
        .failures
        .iter()
        .find(|f| f.kind != "indeterminate" || !report.violations.is_empty());
    if let Some(first) = other {
        // With a node gone, the final audit would wait on what it cannot reach or on what
        // transactions of unknown outcome keep locked: what was measured is reported above.
        anyhow::bail!(
            "{} transactions failed during the run ({}; e.g. {}): the report above counts what \
             completed; no final audit",
            report.failure_count(),
            report
                .failures
                .iter()
                .map(|f| format!("{} {}", f.count, f.kind))
                .collect::<Vec<_>>()
                .join(", "),
            first.first
        );
    }
    let quiet = db.quiesce(QUIESCE_TIMEOUT);
    let final_audit = db
        .run(|txn| Ok(bank.total(txn)?.0))
        .context("final audit")?;
    let mut held = report.violations.is_empty() && final_audit == bank.expected_total();
    writeln!(
        out,
        "final audit: total {final_audit} (expected {})",
        bank.expected_total()
    )?;
    if embedded {
        match (quiet, db.check_replicas()) {
            (true, Ok(())) => writeln!(
                out,
                "backups: byte-identical to their primaries after quiescence"
            )?,
            (false, _) => {
                held = false;
                writeln!(
                    out,
                    "backups: the cluster did not quiesce within {QUIESCE_TIMEOUT:?}"
                )?;
            }
            (true, Err(mismatch)) => {
                held = false;
                writeln!(out, "backups: {mismatch}")?;
            }
        }
    }
    for violation in report.violations.iter().take(5) {
        writeln!(out, "violation: {violation}")?;
    }
    if held {
        writeln!(
            out,
            "invariant held: the total never changed and no balance went negative"
        )?;
        Ok(ExitCode::SUCCESS)
    } else {
        writeln!(out, "INVARIANT VIOLATED")?;
        Ok(ExitCode::from(1))
    }
}

fn print_report(report: &mut BankReport) -> std::io::Result<()> {
    let mut out = crate::output::stdout();
    let seconds = report.elapsed.as_secs_f64();
    let p50 = report.latency_quantile(0.50);
    let p99 = report.latency_quantile(0.99);
    writeln!(
        out,
        "transfers: {} committed ({:.0}/s), {} aborted ({:.0}/s)",
        report.committed,
        report.committed as f64 / seconds,
        report.aborted,
        report.aborted as f64 / seconds
    )?;
    writeln!(
        out,
        "commit latency: p50 {:.1} µs, p99 {:.1} µs",
        p50.as_secs_f64() * 1e6,
        p99.as_secs_f64() * 1e6
    )?;
    writeln!(
        out,
        "audits (read-only, every account): {} committed ({:.0}/s), {} aborted, {} saw a wrong total",
        report.audits_committed,
        report.audits_committed as f64 / seconds,
        report.audits_aborted,
        report.violations.len()
    )?;
    for failure in &report.failures {
        writeln!(
            out,
            "failed ({}): {} transactions, e.g. {}",
            failure.kind, failure.count, failure.first
        )?;
    }
    Ok(())
}
