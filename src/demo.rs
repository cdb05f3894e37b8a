//! `acre demo` and `acre bank`: concurrent bank transfers with read-only audits checking the
//! total, on a 3-node embedded cluster with 3 replicas (`demo`) or on a running cluster of node
//! processes (`bank`). Prints committed and aborted transactions per second, the p50/p99 commit
//! latency, and whether the invariant held; exit code 1 if it did not. A transaction that fails
//! (a node died or stopped answering) is said on stderr when it happens (rate-limited, see
//! `acre_benches::bank::Notice`); the run goes on, prints what completed, and exits 2. SIGINT
//! (Ctrl-C) or SIGTERM ends the run early: the transactions in flight finish, the report covers
//! what ran, and the client's `Db` is dropped as at any other end (a second signal exits at
//! once).
//!
//! `acre demo --failure` runs the same bank on a cluster of node processes with a configuration
//! manager instead (`launch::up` in a fresh directory, f = 1; taken down and removed however the
//! demo ends, short of a second Ctrl-C, which exits at once), SIGKILLs the primary of a region that is not the CM leader in the middle of the
//! run, and prints what happened, in ms from the kill: the suspicion, the new configuration and
//! each region active again, read from the CM status file's history (stamped with the host's
//! `CLOCK_MONOTONIC`, the clock the kill is timed on), the new backups' copies counted complete
//! (data re-replicated), and the committed transfers per 100 ms around the kill
//! (sampled from a counter the bank run bumps at every commit). Exit code 0 if the invariant
//! held and the cluster recovered, 1 if not, 2 when the cluster could not be set up or killed.

use acre::cluster::{CLUSTER_FILE, CmStatusFile, Fenced};
use acre::db::{Addr, Db, EmbeddedOptions, NodeId};
use acre::engine::clock::Clock;
use acre::engine::signal::{self, Termination};
use acre_benches::bank::{Bank, BankReport, RunPlan, THREADS_MAX};
use anyhow::Context;
use std::io::Write as _;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
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
// With --failure the run is shorter by default: long enough to see the kill, the recovery and
// the throughput after it, short enough to watch.
#[command(mut_arg("seconds", |arg| arg
    .default_value_if("failure", clap::builder::ArgPredicate::IsPresent, Some(FAILURE_SECONDS_DEFAULT))
    .help("How long to run the transfers [default: 10; 6 with --failure]")
    .hide_default_value(true)))]
pub struct DemoArgs {
    #[command(flatten)]
    pub workload: WorkloadArgs,
    /// Nodes of the cluster (at least 3 with --failure).
    #[arg(long, default_value_t = 3)]
    pub nodes: u16,
    /// Who does the primary's part of a commit: `messages` (the primary's worker, FaRM's) or
    /// `one-sided` (the coordinator, with one-sided operations); docs/protocol.md#one-sided-commit-mode.
    #[arg(long, default_value = "one-sided", value_parser = ["messages", "one-sided"])]
    pub commit: String,
    /// Run on a cluster of node processes with a configuration manager (f = 1, in a fresh
    /// temporary directory, removed at the end) instead of an embedded one, and SIGKILL the
    /// primary of a region (not the CM leader) in the middle of the run: prints the timeline
    /// of the failure (suspicion, new configuration, region active again, on the CM's clock),
    /// the committed transfers per 100 ms around the kill, and whether the invariant held.
    #[arg(long)]
    pub failure: bool,
    /// With --failure: when to kill, in milliseconds after the transfers start.
    #[arg(long, requires = "failure", default_value_t = KILL_AFTER_MS_DEFAULT)]
    pub kill_after_ms: u64,
    /// With --failure: how the node processes reach each other (ofi: in an acre built with
    /// `--features ofi`).
    #[arg(long, requires = "failure", default_value = "shm", value_parser = ["shm", "tcp", "ofi"])]
    pub transport: String,
    /// With --failure: the leases between the CM and the nodes, in milliseconds (a killed node
    /// is suspected when its lease runs out).
    #[arg(long, requires = "failure", default_value_t = crate::launch::LEASE_MS_DEFAULT)]
    pub lease_ms: u64,
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
    if args.failure {
        return demo_failure(args, termination);
    }
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

/// `--seconds` with `--failure` unless given.
const FAILURE_SECONDS_DEFAULT: &str = "6";
/// When `--failure` kills, after the transfers start, unless `--kill-after-ms`.
const KILL_AFTER_MS_DEFAULT: u64 = 2000;
/// Failures tolerated per region in the `--failure` cluster: one kill leaves every region a
/// copy, and 3 nodes hold the CM's 2f+1 replicas.
const FAILURE_F: usize = 1;
/// How often the throughput is sampled, and the width of its lines.
const SAMPLE_INTERVAL: Duration = Duration::from_millis(100);
/// The throughput shown around the kill: from this long before it...
const SHOWN_BEFORE_KILL: Duration = Duration::from_secs(1);
/// ...to this long after it.
const SHOWN_AFTER_KILL: Duration = Duration::from_secs(2);
/// Characters of the longest throughput bar.
const BAR_WIDTH: u64 = 40;
/// How long after the run the CM may still take to commit the configuration without the
/// victim, to activate its regions again and to count the new backups' copies complete: the
/// run may end before the lease runs out.
const RECOVERY_WAIT: Duration = Duration::from_secs(30);
/// How often that wait reads the CM status file.
const STATUS_POLL: Duration = Duration::from_millis(20);

/// Takes the demo's cluster down and removes its directory when dropped: the end of the demo,
/// an error, or Ctrl-C (the bank run stops early, and this runs as the demo returns) leave no
/// node process and no files behind. It stops only the processes of this directory's
/// manifests, the ones `launch::up` started for the demo.
struct ClusterGuard {
    dir: PathBuf,
}

impl Drop for ClusterGuard {
    fn drop(&mut self) {
        if self.dir.join(CLUSTER_FILE).exists() {
            let down = crate::launch::down(&crate::launch::DownArgs {
                dir: self.dir.clone(),
                purge: true,
            });
            if let Err(error) = down {
                eprintln!(
                    "acre demo: could not take down the cluster in {}: {error:#}",
                    self.dir.display()
                );
            }
        }
        // `up` leaves the directory (with the nodes' logs) but no process when it fails.
        if self.dir.exists()
            && let Err(error) = std::fs::remove_dir_all(&self.dir)
        {
            eprintln!(
                "acre demo: could not remove {}: {error}",
                self.dir.display()
            );
        }
    }
}

/// A fresh directory for the demo's cluster: in shared memory when the host has it (the shm
/// transport maps the regions and rings from there), named by this process.
fn failure_dir() -> PathBuf {
    let name = format!("acre-demo-{}", std::process::id());
    let shm = std::path::Path::new("/dev/shm");
    if shm.is_dir() {
        shm.join(name)
    } else {
        std::env::temp_dir().join(name)
    }
}

/// The kill the sampler made, on the CM's clock.
struct Kill {
    victim: NodeId,
    /// `primary of r2, backup of r1`.
    role: String,
    leader: NodeId,
    kill_ns: u64,
    /// The CM status just before the kill.
    before: CmStatusFile,
}

/// What the sampler thread saw: committed transfers so far, every [`SAMPLE_INTERVAL`], on the
/// CM's clock, and the kill it made (`None` if the run ended or was interrupted first).
struct Sampled {
    samples: Vec<(u64, u64)>,
    kill: Option<Result<Kill, String>>,
}

fn demo_failure(args: &DemoArgs, termination: &Termination) -> anyhow::Result<ExitCode> {
    let mut out = crate::output::stdout();
    let workload = &args.workload;
    check_workload(workload)?;
    anyhow::ensure!(
        args.nodes >= 3,
        "--nodes {} with --failure: at least 3 (f = 1 and a CM of 3 replicas that outlives the \
         kill)",
        args.nodes
    );
    anyhow::ensure!(
        args.nodes < acre::cluster::CLIENT_ID_BASE,
        "--nodes must be below {}",
        acre::cluster::CLIENT_ID_BASE
    );
    let kill_after = Duration::from_millis(args.kill_after_ms);
    anyhow::ensure!(
        kill_after >= SAMPLE_INTERVAL && kill_after < Duration::from_secs(workload.seconds),
        "--kill-after-ms {}: at least {} and less than --seconds {}",
        args.kill_after_ms,
        SAMPLE_INTERVAL.as_millis(),
        workload.seconds
    );
    crate::launch::check_lease_ms(args.lease_ms)?;
    let dir = failure_dir();
    writeln!(
        out,
        "acre demo --failure: {} node processes over {}, {} replicas of every region, the CM in \
         the first 3, leases of {} ms, in {}",
        args.nodes,
        args.transport,
        FAILURE_F + 1,
        args.lease_ms,
        dir.display()
    )?;
    // Declared before the client, so dropped after it: the client leaves before the nodes go.
    let _guard = ClusterGuard { dir: dir.clone() };
    crate::launch::up(&crate::launch::UpArgs {
        nodes: args.nodes,
        transport: args.transport.clone(),
        ofi_provider: None,
        ofi_transfer_threshold: None,
        dir: dir.clone(),
        clients: 2,
        f: Some(FAILURE_F),
        regions_per_node: 1,
        region_bytes: 8 << 20,
        block_bytes: 1 << 20,
        ring_bytes: 256 << 10,
        persist: "auto".into(),
        commit: args.commit.clone(),
        cm: Some(3),
        cm_processes: 0,
        backup_only: 0,
        lease_ms: args.lease_ms,
        clock_control: false,
        netns: None,
        netns_subnet: None,
    })
    .context("start the cluster")?;
    let db = Db::connect(&dir.join(CLUSTER_FILE)).context("connect a client")?;
    let bank = Bank::create(&db, workload.accounts, 1000).context("create the accounts")?;
    writeln!(
        out,
        "{} accounts of {}, {} transfer threads and {} audit threads for {} s; SIGKILL to a \
         primary at {:.1} s...",
        bank.accounts.len(),
        bank.initial_balance,
        workload.threads,
        workload.audits,
        workload.seconds,
        kill_after.as_secs_f64()
    )?;
    let clock = Clock::system();
    let committed = Arc::new(AtomicU64::new(0));
    let done = AtomicBool::new(false);
    let kill_tick = u32::try_from(kill_after.as_millis() / SAMPLE_INTERVAL.as_millis())
        .context("--kill-after-ms is too large")?;
    let (report, sampled) = std::thread::scope(|scope| {
        let sampler = std::thread::Builder::new()
            .name("demo-sampler".into())
            .spawn_scoped(scope, || {
                sample_and_kill(&dir, &clock, &committed, &done, kill_tick, termination)
            })
            .context("start the sampler thread")?;
        let report = bank.run_counting(
            &db,
            RunPlan {
                transfer_threads: workload.threads,
                audit_threads: workload.audits,
                duration: Duration::from_secs(workload.seconds),
                seed: workload.seed,
            },
            termination,
            &committed,
            // Said when it happens, on stderr (where the libraries' warnings go too).
            move |notice| eprintln!("acre demo: {notice}"),
        );
        done.store(true, Ordering::Release);
        let sampled = sampler.join().expect("the sampler does not panic");
        anyhow::Ok((report.context("run the transfers")?, sampled))
    })?;
    let mut report = report;
    if let Some(signal) = termination.requested() {
        writeln!(
            out,
            "interrupted by {} after {:.1} s: the transactions in flight finished",
            signal::signal_name(signal),
            report.elapsed.as_secs_f64()
        )?;
    }
    print_report(&mut report)?;
    let kill = match sampled.kill {
        Some(Ok(kill)) => kill,
        Some(Err(why)) => anyhow::bail!("{why}"),
        None => {
            let why = if termination.is_requested() {
                "interrupted before the kill"
            } else {
                "the run ended before the kill"
            };
            writeln!(out, "{why}: nothing to show")?;
            return Ok(ExitCode::from(2));
        }
    };
    let recovery = wait_for_recovery(&dir, &kill, termination);
    let status = recovery.status.as_ref();
    print_timeline(&mut out, &kill, status)?;
    print_throughput(&mut out, &kill, &sampled.samples, status)?;
    if let Some(why) = &recovery.failure {
        writeln!(out, "the cluster did not recover from the kill: {why}")?;
    } else if recovery.interrupted {
        writeln!(
            out,
            "interrupted while the cluster recovered: the timeline shows what happened before"
        )?;
    }
    if !db.quiesce(QUIESCE_TIMEOUT) {
        writeln!(
            out,
            "the client did not finish its commits within {QUIESCE_TIMEOUT:?}"
        )?;
    }
    let final_audit = db.run(|txn| Ok(bank.total(txn)?.0));
    match &final_audit {
        Ok(total) => writeln!(
            out,
            "final audit: total {total} (expected {})",
            bank.expected_total()
        )?,
        Err(error) => writeln!(out, "final audit failed: {error}")?,
    }
    for violation in report.violations.iter().take(5) {
        writeln!(out, "violation: {violation}")?;
    }
    let violated = !report.violations.is_empty()
        || final_audit
            .as_ref()
            .is_ok_and(|&total| total != bank.expected_total());
    if violated {
        writeln!(out, "INVARIANT VIOLATED")?;
        Ok(ExitCode::from(1))
    } else if recovery.failure.is_some() || final_audit.is_err() {
        // The totals seen were right, but the demo's promise is a cluster that serves again.
        writeln!(
            out,
            "NOT RECOVERED: no audit saw a wrong total, but {}",
            if final_audit.is_err() {
                "the final audit could not run"
            } else {
                "the cluster did not recover in time"
            }
        )?;
        Ok(ExitCode::from(1))
    } else {
        writeln!(
            out,
            "invariant held: the total never changed, no balance went negative, and the \
             final audit saw the expected total"
        )?;
        Ok(ExitCode::SUCCESS)
    }
}

/// The sampler thread: every [`SAMPLE_INTERVAL`] the committed transfers so far; at tick
/// `kill_tick`, the kill (right after that tick's sample, so the samples' intervals start at
/// the kill).
fn sample_and_kill(
    dir: &std::path::Path,
    clock: &Clock,
    committed: &AtomicU64,
    done: &AtomicBool,
    kill_tick: u32,
    termination: &Termination,
) -> Sampled {
    let start = std::time::Instant::now();
    let mut sampled = Sampled {
        samples: vec![(clock.now().as_nanos(), committed.load(Ordering::Relaxed))],
        kill: None,
    };
    let mut tick = 0u32;
    while !done.load(Ordering::Acquire) {
        tick += 1;
        let due = start + SAMPLE_INTERVAL * tick;
        // Behind (the kill took a while): the next tick on time instead of a burst of samples.
        let Some(wait) = due.checked_duration_since(std::time::Instant::now()) else {
            continue;
        };
        std::thread::sleep(wait);
        sampled
            .samples
            .push((clock.now().as_nanos(), committed.load(Ordering::Relaxed)));
        if tick >= kill_tick
            && sampled.kill.is_none()
            && !termination.is_requested()
            && !done.load(Ordering::Acquire)
        {
            sampled.kill = Some(kill_a_primary(dir, clock));
        }
    }
    sampled
}

/// SIGKILL to the primary of a region that is not the CM leader (its kill would add a Raft
/// election to the story).
fn kill_a_primary(dir: &std::path::Path, clock: &Clock) -> Result<Kill, String> {
    let before = CmStatusFile::read(dir)
        .map_err(|e| format!("read the CM status: {e}"))?
        .ok_or("the CM wrote no status file")?;
    let config = &before.committed;
    let victim = config
        .regions
        .iter()
        .filter(|p| p.state.is_active())
        .map(|p| p.primary)
        .find(|&p| p != before.leader)
        .ok_or("every region's primary is the CM leader")?;
    let role = crate::bench_failover::role_of(config, before.leader, victim);
    // The time goes down just before the signal (fence_by_kill checks the manifest first).
    let kill_ns = clock.now().as_nanos();
    match acre::cluster::fence_by_kill(dir, victim, crate::launch::STOP_TIMEOUT) {
        Ok(Fenced::Killed { .. }) => {}
        Ok(Fenced::NotRunning) => return Err(format!("{victim} was not running")),
        Err(e) => return Err(format!("kill {victim}: {e}")),
    }
    eprintln!("acre demo: SIGKILL to {victim} ({role})");
    Ok(Kill {
        victim,
        role,
        leader: before.leader,
        kill_ns,
        before,
    })
}

/// What the wait for the recovery saw: the last CM status read, and why it is not a recovered
/// one (`None`: recovered, or the wait was interrupted).
struct Recovery {
    status: Option<CmStatusFile>,
    failure: Option<String>,
    interrupted: bool,
}

/// Waits (bounded) until the CM committed a configuration without the victim in which every
/// region is active again and no backup is copying.
fn wait_for_recovery(dir: &std::path::Path, kill: &Kill, termination: &Termination) -> Recovery {
    let deadline = std::time::Instant::now() + RECOVERY_WAIT;
    let mut last = None;
    loop {
        if let Ok(Some(status)) = CmStatusFile::read(dir) {
            let config = &status.committed;
            let recovered = !config.nodes.contains(&kill.victim)
                && config.regions.iter().all(|p| p.state.is_active());
            let copied = config.regions.iter().all(|p| p.copying.is_empty());
            let timed_out = std::time::Instant::now() >= deadline;
            if (recovered && copied) || timed_out {
                // A copy still running is shown, not failed: the data has a complete copy.
                let failure = (!recovered).then(|| {
                    format!(
                        "no configuration without {} and every region active within \
                         {RECOVERY_WAIT:?}",
                        kill.victim
                    )
                });
                return Recovery {
                    status: Some(status),
                    failure,
                    interrupted: false,
                };
            }
            last = Some(status);
        } else if std::time::Instant::now() >= deadline {
            return Recovery {
                status: last,
                failure: Some(format!("no CM status file within {RECOVERY_WAIT:?}")),
                interrupted: false,
            };
        }
        if termination.sleep(STATUS_POLL) {
            return Recovery {
                status: last,
                failure: None,
                interrupted: true,
            };
        }
    }
}

/// What a line of the timeline says happened (and the throughput lines mark).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum EventKind {
    Suspected,
    Configured,
    Active,
    Copied,
    Other,
}

impl EventKind {
    fn mark(self) -> &'static str {
        match self {
            EventKind::Suspected => "suspected",
            EventKind::Configured => "new configuration",
            EventKind::Active => "active again",
            EventKind::Copied => "re-replicated",
            EventKind::Other => "CM",
        }
    }
}

/// One line of the timeline, in ms from the kill.
struct Event {
    ms: f64,
    kind: EventKind,
    what: String,
}

/// The events of the failure, in order: the CM status file's reconfigurations that started
/// after the kill.
fn events(kill: &Kill, status: &CmStatusFile) -> Vec<Event> {
    let ms = |ns: f64| (ns - kill.kill_ns as f64) / 1e6;
    let victim = kill.victim;
    let known_ns = kill.before.history.iter().map(|row| row.started_ns).max();
    let mut events = Vec::new();
    let mut push = |ms: f64, kind: EventKind, what: String| events.push(Event { ms, kind, what });
    for row in status
        .history
        .iter()
        .filter(|row| Some(row.started_ns) > known_ns)
    {
        let started = row.started_ns as f64;
        let to = row.to_id.map_or_else(|| "?".into(), |id| id.to_string());
        let Some(committed) = row.committed_ms.map(|c| started + c * 1e6) else {
            push(
                ms(started),
                EventKind::Other,
                format!("{} ({})", row.cause, row.outcome),
            );
            continue;
        };
        if row.failed.contains(&victim) || crate::bench_failover::cause_names(&row.cause, victim) {
            push(
                ms(started),
                EventKind::Suspected,
                format!(
                    "{victim} suspected: its lease ran out; the CM starts \"{}\"",
                    row.cause
                ),
            );
            let step = |ms: Option<f64>| ms.map_or("?".into(), |ms| format!("{ms:.1}"));
            let promoted: Vec<String> = kill
                .before
                .committed
                .regions
                .iter()
                .filter(|p| p.primary == victim)
                .filter_map(|p| status.committed.placement(p.region))
                .map(|p| format!("{} now on {}, blocked until recovered", p.region, p.primary))
                .collect();
            push(
                ms(committed),
                EventKind::Configured,
                format!(
                    "new configuration {to} committed without {victim} (probe, Raft install, \
                     acks +{}/{}/{} ms after the suspicion){}",
                    step(row.probed_ms),
                    step(row.installed_ms),
                    step(row.acked_ms),
                    if promoted.is_empty() {
                        String::new()
                    } else {
                        format!(": {}", promoted.join(", "))
                    }
                ),
            );
            continue;
        }
        // `recovery of r2`, `copy of r1 by n3 complete`, or both: `recovery of r2; copy of ...`.
        let mut known = false;
        for part in row.cause.split("; ") {
            if let Some(regions) = part.strip_prefix("recovery of ") {
                known = true;
                push(
                    ms(committed),
                    EventKind::Active,
                    format!(
                        "{regions} active again: \"{part}\" committed configuration {to}, \
                         {:.1} ms after its new primary reported its transactions recovered",
                        row.committed_ms.unwrap_or_default()
                    ),
                );
            } else if let Some(copy) = part
                .strip_prefix("copy of ")
                .and_then(|c| c.strip_suffix(" complete"))
            {
                known = true;
                push(
                    ms(committed),
                    EventKind::Copied,
                    format!(
                        "{copy}: a complete copy again, \"{part}\" committed configuration {to}"
                    ),
                );
            }
        }
        if !known {
            push(
                ms(started),
                EventKind::Other,
                format!("{} ({})", row.cause, row.outcome),
            );
        }
    }
    events.sort_by(|a, b| a.ms.total_cmp(&b.ms));
    events
}

fn print_timeline(
    out: &mut crate::output::Stdout,
    kill: &Kill,
    status: Option<&CmStatusFile>,
) -> std::io::Result<()> {
    writeln!(
        out,
        "timeline, ms from the kill (the CM's clock, CLOCK_MONOTONIC):"
    )?;
    writeln!(
        out,
        "  {:>8.1}  SIGKILL to {} ({}; the CM leader is {})",
        0.0, kill.victim, kill.role, kill.leader
    )?;
    let Some(status) = status else {
        return writeln!(out, "  (no CM status file to read the rest from)");
    };
    let events = events(kill, status);
    for event in &events {
        writeln!(out, "  {:>+8.1}  {}", event.ms, event.what)?;
    }
    let config = &status.committed;
    let copying: Vec<String> = config
        .regions
        .iter()
        .filter(|p| !p.copying.is_empty())
        .map(|p| {
            let nodes: Vec<String> = p.copying.iter().map(ToString::to_string).collect();
            format!("{}'s new backup {}", p.region, nodes.join(", "))
        })
        .collect();
    let last_copy = events
        .iter()
        .filter(|e| e.kind == EventKind::Copied)
        .map(|e| e.ms)
        .next_back();
    match last_copy {
        _ if !copying.is_empty() => writeln!(
            out,
            "data re-replicated: not yet: {} still copying in configuration {} (one complete \
             copy until it is done)",
            copying.join("; "),
            config.id
        ),
        Some(ms) => writeln!(
            out,
            "data re-replicated: every region has {} complete copies again from {ms:+.1} ms \
             (configuration {})",
            config.f + 1,
            config.id
        ),
        None => writeln!(
            out,
            "data re-replicated: no region got a new backup (configuration {})",
            config.id
        ),
    }
}

/// Committed transfers per [`SAMPLE_INTERVAL`] from [`SHOWN_BEFORE_KILL`] before the kill to
/// [`SHOWN_AFTER_KILL`] after, a bar each, with the timeline's events marked.
fn print_throughput(
    out: &mut crate::output::Stdout,
    kill: &Kill,
    samples: &[(u64, u64)],
    status: Option<&CmStatusFile>,
) -> std::io::Result<()> {
    // Rounded to whole ms here, so that a sample taken a few µs before the kill reads 0, not -0.
    let ms = |ns: u64| ((ns as f64 - kill.kill_ns as f64) / 1e6).round() + 0.0;
    let before_ms = -(SHOWN_BEFORE_KILL.as_millis() as f64);
    let after_ms = SHOWN_AFTER_KILL.as_millis() as f64;
    // A sample's interval ends where it was taken; the kill comes just after one. Half an
    // interval of slack keeps the first and last wanted ones whatever the scheduler did.
    let half = SAMPLE_INTERVAL.as_millis() as f64 / 2.0;
    let rows: Vec<(f64, f64, u64)> = samples
        .windows(2)
        .map(|w| (ms(w[0].0), ms(w[1].0), w[1].1 - w[0].1))
        .filter(|&(from, to, _)| from >= before_ms - half && to <= after_ms + half)
        .collect();
    let events = status.map_or_else(Vec::new, |status| events(kill, status));
    let most = rows.iter().map(|r| r.2).max().unwrap_or(0).max(1);
    writeln!(
        out,
        "throughput around the kill (committed transfers per {} ms):",
        SAMPLE_INTERVAL.as_millis()
    )?;
    for &(from, to, count) in &rows {
        let bar = "#".repeat(usize::try_from(count * BAR_WIDTH / most).unwrap_or(0));
        let mut marks: Vec<&str> = Vec::new();
        if from <= 0.0 && 0.0 < to {
            marks.push("kill");
        }
        for event in &events {
            let mark = event.kind.mark();
            if from <= event.ms && event.ms < to && !marks.contains(&mark) {
                marks.push(mark);
            }
        }
        let marks = if marks.is_empty() {
            String::new()
        } else {
            format!("  <- {}", marks.join(", "))
        };
        writeln!(
            out,
            "  {from:>+7.0} to {to:>+5.0} ms {count:>6} {bar:<width$}{marks}",
            width = BAR_WIDTH as usize
        )?;
    }
    let share = (RECOVERED_SHARE * 100.0).round();
    match back_to_before(&rows) {
        Some((before, to)) => writeln!(
            out,
            "throughput back to {share}% of before (the median interval before the kill: \
             {before} transfers) in the interval ending at {to:+.0} ms"
        ),
        None => writeln!(
            out,
            "throughput not back to {share}% of before within the {} ms shown",
            SHOWN_AFTER_KILL.as_millis()
        ),
    }
}

/// The share of the throughput before the kill that counts as "back".
const RECOVERED_SHARE: f64 = 0.9;

/// Given rows (from ms, to ms, transfers) around the kill at 0: the median count of the
/// intervals that end by the kill, and the end of the first interval that starts at or after
/// the kill and reaches [`RECOVERED_SHARE`] of it (`None` if none does, or nothing came
/// before).
fn back_to_before(rows: &[(f64, f64, u64)]) -> Option<(u64, f64)> {
    let mut before: Vec<u64> = (rows.iter())
        .filter(|&&(_, to, _)| to <= 0.0)
        .map(|&(_, _, count)| count)
        .collect();
    if before.is_empty() {
        return None;
    }
    before.sort_unstable();
    let median = before[before.len() / 2];
    (rows.iter())
        .find(|&&(from, _, count)| from >= 0.0 && count as f64 >= RECOVERED_SHARE * median as f64)
        .map(|&(_, to, _)| (median, to))
}

#[cfg(test)]
mod throughput_tests {
    use super::back_to_before;

    #[test]
    fn throughput_is_back_at_the_first_interval_after_the_kill_that_reaches_nine_tenths() {
        let rows = [
            (-300.0, -200.0, 100),
            (-200.0, -100.0, 120),
            (-100.0, 0.0, 80),
            (0.0, 100.0, 95), // the kill's own interval: counts (it starts at the kill)
            (100.0, 200.0, 0),
        ];
        assert_eq!(back_to_before(&rows), Some((100, 100.0)));
        let later = [
            (-200.0, -100.0, 100),
            (-100.0, 0.0, 100),
            (0.0, 100.0, 10),
            (100.0, 200.0, 89),
            (200.0, 300.0, 90),
        ];
        assert_eq!(back_to_before(&later), Some((100, 300.0)));
        assert_eq!(back_to_before(&later[..4]), None, "never back");
        assert_eq!(back_to_before(&later[2..]), None, "nothing before the kill");
    }
}
