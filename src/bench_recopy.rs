//! `acre bench recopy`: how fast a cluster of node processes re-replicates its data after the
//! loss of a node, and what the foreground keeps of its throughput meanwhile (issue 14: "data
//! re-replication rate and the foreground throughput during it").
//!
//! It starts a cluster (`launch::up`, f = 1, the CM in the first 2f+1 nodes) with enough
//! regions for `--data-mib` of objects, fills them with objects of the largest size the slab
//! offers ([`PAYLOAD_BYTES`], 64 KiB less its length word) from a few threads, then runs bank transfers from this
//! process and samples the transfers committed every [`SAMPLE_INTERVAL`]. After a baseline it
//! SIGKILLs a node that holds replicas (`--victim primary`: the primary of some regions and the
//! backup of others, not the CM leader; `--victim backup`: a node that holds backups only), and
//! keeps running until the CM's committed configuration lists no copying backup (every copy is
//! complete, docs/failures.md#data-recovery), then a little longer for the throughput after.
//!
//! The copies start with the configuration without the victim (the one that adds the new
//! backups as *copying*) and end with the last `copy of r3 by n1 complete` configuration; both
//! times are the CM's (its status file's `started_ns` + `committed_ms`, on the host's
//! `CLOCK_MONOTONIC`, the clock the transfers are sampled on). The bytes re-replicated are the
//! regions copied times the region size: the copier reads every block of a region, claimed or
//! not, and its pace counts them all.
//!
//! Expectation: each surviving node copies its regions one after the other, each at the
//! copier's pace (at most 256 MiB/s of blocks read per node unless `ACRE_COPY_BYTES_PER_SECOND`
//! says otherwise, cut by quarters while the node's foreground runs below 80% of its rate without the copy,
//! down to 32 MiB/s; the copy pauses 200 ms in every 1.2 s to measure that rate), so 1 GiB spread over two copying nodes takes at least 2 s, plus a CM
//! reconfiguration per completed copy. On two cores the copier, three node processes and the
//! transfers share the CPUs, so the foreground loses what the copier takes. Measured: see
//! docs/failures.md#data-recovery.

use crate::bench_failover::{
    Cleanup, cause_names, committed_ns_of, json_number, json_string, reconfigure_max, role_of,
    take_down,
};
use crate::launch::{self, UpArgs};
use acre::cluster::{CLUSTER_FILE, ClusterFile, CmStatusFile, ReconfigurationRow};
use acre::db::{Addr, Db, NodeId, RegionId};
use acre::engine::clock::Clock;
use acre::engine::object;
use acre::engine::signal::{self, Termination};
use acre::engine::slab::{BLOCK_HEADER_BYTES, PAYLOAD_BYTES_MAX};
use acre::txn::config::Configuration;
use acre_benches::bank::{Bank, RunPlan};
use anyhow::Context;
use std::collections::{BTreeMap, BTreeSet};
use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

/// Where the cluster runs unless told otherwise.
const DIR_DEFAULT: &str = "/dev/shm/acre-recopy";
/// Failures tolerated per region.
const F: usize = 1;
/// The bytes of every object of the fill: the largest the slab offers with the default block
/// (its largest slot, less the object's length word).
const PAYLOAD_BYTES: usize = PAYLOAD_BYTES_MAX - acre::txn::value::LEN_BYTES;
/// Objects written by one fill transaction: 128 KiB of payload, well inside a ring.
const OBJECTS_PER_TXN: usize = 2;
/// Blocks of each region left to other size classes (the bank's accounts and directory), so
/// that the fill does not make the cluster grow a region for them.
const RESERVED_BLOCKS_PER_REGION: u64 = 2;
/// Slab block size of the cluster.
const BLOCK_BYTES: u64 = 1 << 20;
/// Each log ring (one per pair of nodes): several fill transactions in flight per pair.
const RING_BYTES: u64 = 4 << 20;
/// How often the transfers committed are sampled: the throughput's resolution.
const SAMPLE_INTERVAL: Duration = Duration::from_millis(100);
/// How often the wait for the copies reads the CM status file. Well under the time
/// [`acre::cluster::HISTORY_MAX`] reconfigurations take, so that no row is missed.
const POLL: Duration = Duration::from_millis(10);
/// How often the fill reports its progress on stderr.
const FILL_REPORT_EVERY: Duration = Duration::from_secs(2);
/// Samples of the start of the run left out of the baseline: connections and caches warming.
const WARM_UP: Duration = Duration::from_millis(500);
/// Fill and transfer threads, at most.
const THREADS_MAX: usize = 16;
/// Clusters started again because the backup-only node came up as CM leader.
const LEADER_REROLL_MAX: usize = 6;
/// What the end of the measurement tells the transfers' own [`Termination`] (SIGTERM's number:
/// the bank run only passes it on, and no process is signalled).
const STOP_SIGNAL: i32 = 15;
/// Bank accounts' initial balance.
const INITIAL_BALANCE: i64 = 1000;

#[derive(clap::Args, Clone, Debug)]
pub struct RecopyArgs {
    /// Memory nodes (at least 3: f = 1 and a CM of 3 replicas that outlives the kill).
    #[arg(long, default_value_t = 3)]
    nodes: u16,
    /// How the nodes reach each other (ofi: in an acre built with `--features ofi`).
    #[arg(long, default_value = "shm", value_parser = ["shm", "tcp", "ofi"])]
    transport: String,
    /// With --transport ofi: the copies read by the hybrid transfer, zero copy from BYTES and by
    /// copy below (default: plain READs).
    #[arg(long, value_name = "BYTES")]
    ofi_transfer_threshold: Option<u64>,
    /// Which node to kill: `primary` (the primary of some regions and backup of others, not
    /// the CM leader) or `backup` (the last node, started to hold backups only).
    #[arg(long, value_enum, default_value = "primary")]
    victim: RecopyVictim,
    /// MiB of object data to fill the cluster with (objects of 64 KiB).
    #[arg(long, default_value_t = 1024)]
    data_mib: u64,
    /// MiB of each region; the regions per node follow from --data-mib.
    #[arg(long, default_value_t = 64)]
    region_mib: u64,
    /// Threads that fill the regions.
    #[arg(long, default_value_t = 2)]
    fill_threads: usize,
    /// Threads of bank transfers (the foreground).
    #[arg(long, default_value_t = 2)]
    threads: usize,
    /// Bank accounts the transfers move money between.
    #[arg(long, default_value_t = 64)]
    accounts: usize,
    /// Seconds of transfers before the kill (the baseline).
    #[arg(long, default_value_t = 3.0)]
    baseline_seconds: f64,
    /// Seconds of transfers after the last copy is complete.
    #[arg(long, default_value_t = 2.0)]
    after_seconds: f64,
    /// Seconds the copies may take after the configuration that started them, before the run
    /// gives up (exit 1).
    #[arg(long, default_value_t = 120.0)]
    copy_seconds_max: f64,
    /// Length of the leases between the CM and the nodes, in milliseconds.
    #[arg(long, default_value_t = launch::LEASE_MS_DEFAULT)]
    lease_ms: u64,
    /// The cluster directory (created, and removed at the end).
    #[arg(long, default_value = DIR_DEFAULT)]
    dir: PathBuf,
    /// Also write the figures to this file, as JSON.
    #[arg(long)]
    json: Option<PathBuf>,
}

/// The node the run kills.
#[derive(clap::ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
enum RecopyVictim {
    Primary,
    Backup,
}

/// How the run lays out the data: regions and objects per region.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Layout {
    region_bytes: u64,
    regions_per_node: usize,
    /// Regions in all: `regions_per_node` per node that holds primaries.
    region_count: usize,
    /// Objects of [`PAYLOAD_BYTES`] to write into each region.
    objects_per_region: u64,
}

/// Objects of [`PAYLOAD_BYTES`] one region of `region_bytes` takes, leaving
/// [`RESERVED_BLOCKS_PER_REGION`] blocks to other sizes.
fn objects_per_region_max(region_bytes: u64) -> u64 {
    let slot_bytes = object::slot_bytes(PAYLOAD_BYTES_MAX) as u64;
    let per_block = (BLOCK_BYTES - BLOCK_HEADER_BYTES) / slot_bytes;
    let blocks = (region_bytes / BLOCK_BYTES).saturating_sub(RESERVED_BLOCKS_PER_REGION);
    blocks * per_block
}

/// Regions enough for `data_bytes` of objects, as many on each of `primary_nodes`.
fn layout(data_bytes: u64, region_bytes: u64, primary_nodes: usize) -> anyhow::Result<Layout> {
    let per_region_max = objects_per_region_max(region_bytes);
    anyhow::ensure!(
        per_region_max > 0,
        "a region of {} MiB holds no object of {PAYLOAD_BYTES} bytes beside its {} reserved \
         blocks: use a larger --region-mib",
        region_bytes >> 20,
        RESERVED_BLOCKS_PER_REGION
    );
    let objects = data_bytes.div_ceil(PAYLOAD_BYTES as u64).max(1);
    let regions_needed = objects.div_ceil(per_region_max) as usize;
    let regions_per_node = regions_needed.div_ceil(primary_nodes).max(1);
    let region_count = regions_per_node * primary_nodes;
    Ok(Layout {
        region_bytes,
        regions_per_node,
        region_count,
        objects_per_region: objects.div_ceil(region_count as u64),
    })
}

fn validate(args: &RecopyArgs) -> anyhow::Result<()> {
    anyhow::ensure!(
        args.nodes >= 3,
        "--nodes {}: at least 3 (f = 1 and a CM of 3 replicas that outlives the kill)",
        args.nodes
    );
    anyhow::ensure!(
        args.nodes < acre::cluster::CLIENT_ID_BASE,
        "--nodes must be below {}",
        acre::cluster::CLIENT_ID_BASE
    );
    anyhow::ensure!(args.data_mib > 0, "--data-mib must be at least 1");
    anyhow::ensure!(
        args.region_mib > 0 && (args.region_mib << 20) < acre::engine::region::REGION_BYTES_MAX,
        "--region-mib must be between 1 and {}",
        (acre::engine::region::REGION_BYTES_MAX >> 20) - 1
    );
    for (name, threads) in [
        ("--fill-threads", args.fill_threads),
        ("--threads", args.threads),
    ] {
        anyhow::ensure!(
            (1..=THREADS_MAX).contains(&threads),
            "{name} must be between 1 and {THREADS_MAX}"
        );
    }
    anyhow::ensure!(args.accounts >= 2, "--accounts must be at least 2");
    for (name, seconds) in [
        ("--baseline-seconds", args.baseline_seconds),
        ("--after-seconds", args.after_seconds),
        ("--copy-seconds-max", args.copy_seconds_max),
    ] {
        anyhow::ensure!(
            seconds.is_finite() && (0.0..=3600.0).contains(&seconds),
            "{name} must be between 0 and 3600"
        );
    }
    launch::check_lease_ms(args.lease_ms)
}

/// The copy pace the node processes inherit from this one (they are started by it).
fn copy_pace() -> String {
    match std::env::var("ACRE_COPY_BYTES_PER_SECOND") {
        Ok(rate) => format!(
            "at most ACRE_COPY_BYTES_PER_SECOND={rate} per node, slower while a node's \
             foreground runs below 80% of its rate without the copy"
        ),
        Err(_) => "at most 256 MiB/s per node (the default), slower while a node's foreground \
                   runs below 80% of its rate without the copy"
            .into(),
    }
}

pub fn run(args: &RecopyArgs, termination: &Arc<Termination>) -> anyhow::Result<ExitCode> {
    validate(args)?;
    let dir = &args.dir;
    let existing = ClusterFile::read(&dir.join(CLUSTER_FILE)).ok();
    if !launch::running_nodes(dir, existing.as_ref()).is_empty() {
        anyhow::bail!(
            "a cluster is running in {}: stop it with `acre cluster down --dir {}`, or use another \
             --dir",
            dir.display(),
            dir.display()
        );
    }
    // The run makes and removes its cluster there, so it refuses a directory that holds
    // anything (a stopped cluster's data is not its to remove).
    if std::fs::read_dir(dir).is_ok_and(|mut entries| entries.next().is_some()) {
        anyhow::bail!(
            "{} is not empty: the bench makes and removes its cluster there; remove a stopped \
             cluster's data with `acre cluster down --dir {} --purge`, or use another --dir",
            dir.display(),
            dir.display()
        );
    }
    let backup_only = u16::from(args.victim == RecopyVictim::Backup);
    let primary_nodes = usize::from(args.nodes - backup_only);
    let layout = layout(args.data_mib << 20, args.region_mib << 20, primary_nodes)?;
    let mut out = crate::output::stdout();
    writeln!(
        out,
        "recopy bench: {} nodes over {}, f = {F}, leases of {} ms, {} regions of {} MiB ({} per \
         node{}), objects of {PAYLOAD_BYTES} bytes, copy pace {}",
        args.nodes,
        args.transport,
        args.lease_ms,
        layout.region_count,
        layout.region_bytes >> 20,
        layout.regions_per_node,
        if backup_only > 0 {
            format!(", n{} holds backups only", args.nodes)
        } else {
            String::new()
        },
        copy_pace()
    )?;
    // Takes down whatever cluster is left in the directory however this function ends.
    let _cleanup = Cleanup { dir: dir.clone() };
    let status = start(args, &layout, backup_only)?;
    let db = Db::connect(&dir.join(CLUSTER_FILE)).context("connect a client")?;
    let filled = fill(&db, &status.committed, &layout, args, termination)?;
    if let Some(signal) = termination.requested() {
        writeln!(
            out,
            "interrupted by {} during the fill: nothing measured",
            signal::signal_name(signal)
        )?;
        return Ok(ExitCode::from(2));
    }
    let data_bytes: u64 = filled.per_region.values().sum();
    writeln!(
        out,
        "filled {:.1} MiB of objects into {} regions in {:.1} s ({:.0} MiB/s, {} threads)",
        mib(data_bytes),
        filled.per_region.len(),
        filled.elapsed.as_secs_f64(),
        mib(data_bytes) / filled.elapsed.as_secs_f64().max(1e-9),
        args.fill_threads
    )?;
    let bank = Bank::create(&db, args.accounts, INITIAL_BALANCE).context("create the accounts")?;
    let status = CmStatusFile::read(dir)?.context("the CM status file vanished")?;
    let victim = choose_victim(args, &status)?;
    let role = role_of(&status.committed, status.leader, victim);
    writeln!(
        out,
        "foreground: {} transfer threads on {} accounts, sampled every {} ms; SIGKILL to {victim} \
         ({role}) after {:.1} s",
        args.threads,
        args.accounts,
        SAMPLE_INTERVAL.as_millis(),
        args.baseline_seconds
    )?;
    let measured = measure(args, &db, &bank, &status, victim, termination)?;
    let report = Report::new(&layout, data_bytes, &filled, &measured);
    report.print(&mut out)?;
    if let Some(json) = &args.json {
        std::fs::write(json, report.json(args, &layout, victim, &role))
            .with_context(|| format!("write {}", json.display()))?;
        writeln!(out, "figures written to {}", json.display())?;
    }
    if let Some(signal) = termination.requested() {
        writeln!(
            out,
            "interrupted by {}: the figures cover what ran before",
            signal::signal_name(signal)
        )?;
        return Ok(ExitCode::from(2));
    }
    if let Err(why) = &measured.outcome {
        writeln!(out, "FAILED: {why}")?;
        return Ok(ExitCode::from(1));
    }
    Ok(ExitCode::SUCCESS)
}

/// Starts the cluster and returns the CM's first status; with a backup-only victim, starts
/// again while that node leads the CM (its kill would measure a leader's replacement too).
fn start(args: &RecopyArgs, layout: &Layout, backup_only: u16) -> anyhow::Result<CmStatusFile> {
    let mut attempt = 0;
    loop {
        attempt += 1;
        launch::up(&UpArgs {
            nodes: args.nodes,
            transport: args.transport.clone(),
            ofi_provider: None,
            ofi_transfer_threshold: args.ofi_transfer_threshold,
            dir: args.dir.clone(),
            clients: 2,
            f: Some(F),
            regions_per_node: layout.regions_per_node,
            region_bytes: layout.region_bytes,
            block_bytes: BLOCK_BYTES,
            ring_bytes: RING_BYTES,
            persist: "auto".into(),
            commit: "one-sided".into(),
            cm: None,
            cm_processes: 0,
            backup_only,
            lease_ms: args.lease_ms,
            clock_control: false,
            netns: None,
            netns_subnet: None,
        })
        .context("start the cluster")?;
        let status = CmStatusFile::read(&args.dir)?
            .context("the CM wrote no status file though `cluster up` saw one")?;
        if backup_only > 0 && status.leader == NodeId(args.nodes) && attempt < LEADER_REROLL_MAX {
            eprintln!(
                "recopy: the backup-only node {} leads the CM; starting again so that its kill \
                 is not a leader kill",
                status.leader
            );
            take_down(&args.dir);
            continue;
        }
        return Ok(status);
    }
}

/// The node to kill in the configuration `status` shows.
fn choose_victim(args: &RecopyArgs, status: &CmStatusFile) -> anyhow::Result<NodeId> {
    match args.victim {
        RecopyVictim::Backup => Ok(NodeId(args.nodes)),
        RecopyVictim::Primary => status
            .committed
            .regions
            .iter()
            .map(|p| p.primary)
            .find(|&p| p != status.leader)
            .context("every region's primary is the CM leader"),
    }
}

/// What the fill wrote: object bytes per region, and how long it took.
struct Filled {
    per_region: BTreeMap<RegionId, u64>,
    elapsed: Duration,
}

/// Writes [`Layout::objects_per_region`] objects into every region, from `--fill-threads`
/// threads that take the regions in turns, and reports the progress on stderr.
fn fill(
    db: &Db,
    config: &Configuration,
    layout: &Layout,
    args: &RecopyArgs,
    termination: &Termination,
) -> anyhow::Result<Filled> {
    let regions: Vec<RegionId> = config.regions.iter().map(|p| p.region).collect();
    let total_bytes = layout.objects_per_region * regions.len() as u64 * PAYLOAD_BYTES as u64;
    let written = AtomicU64::new(0);
    let done = AtomicBool::new(false);
    let started = Instant::now();
    let results = std::thread::scope(|scope| {
        let mut handles = Vec::new();
        for t in 0..args.fill_threads {
            let mine: Vec<RegionId> = regions
                .iter()
                .copied()
                .skip(t)
                .step_by(args.fill_threads)
                .collect();
            let (db, written) = (db.clone(), &written);
            handles.push(scope.spawn(move || {
                let mut per_region = BTreeMap::new();
                for region in mine {
                    let bytes = fill_region(&db, region, layout.objects_per_region, t, written)
                        .with_context(|| format!("fill {region}"))?;
                    per_region.insert(region, bytes);
                    if termination.is_requested() {
                        break;
                    }
                }
                anyhow::Ok(per_region)
            }));
        }
        // Progress while the threads write (the scope joins them after).
        let reporter = scope.spawn(|| {
            let mut next = started + FILL_REPORT_EVERY;
            while !done.load(Ordering::Acquire) {
                std::thread::sleep(POLL);
                if Instant::now() >= next {
                    next += FILL_REPORT_EVERY;
                    let bytes = written.load(Ordering::Relaxed);
                    eprintln!(
                        "recopy: filled {:.0} of {:.0} MiB ({:.0} MiB/s)",
                        mib(bytes),
                        mib(total_bytes),
                        mib(bytes) / started.elapsed().as_secs_f64()
                    );
                }
            }
        });
        let results: Vec<_> = handles
            .into_iter()
            .map(|h| h.join().expect("a fill thread does not panic"))
            .collect();
        done.store(true, Ordering::Release);
        reporter.join().expect("the reporter does not panic");
        results
    });
    let mut per_region = BTreeMap::new();
    for result in results {
        per_region.extend(result?);
    }
    Ok(Filled {
        per_region,
        elapsed: started.elapsed(),
    })
}

/// Writes `count` objects of [`PAYLOAD_BYTES`] into `region`; returns the payload bytes
/// written (fewer objects if the region fills up first).
fn fill_region(
    db: &Db,
    region: RegionId,
    count: u64,
    thread_index: usize,
    written: &AtomicU64,
) -> anyhow::Result<u64> {
    // Bytes that differ from object to object, none of them zero.
    let mut payload = vec![0u8; PAYLOAD_BYTES];
    let mut done = 0u64;
    while done < count {
        let batch = (count - done).min(OBJECTS_PER_TXN as u64);
        for (i, byte) in payload.iter_mut().enumerate() {
            *byte = (i as u64 ^ done ^ (thread_index as u64) << 7) as u8 | 1;
        }
        let result = db.run(|txn| {
            for _ in 0..batch {
                let addr = txn.alloc_near(PAYLOAD_BYTES, Addr::new(region, 0))?;
                txn.write(addr, &payload)?;
            }
            Ok(())
        });
        match result {
            Ok(()) => {}
            Err(acre::Error::Txn(acre::TxnError::RegionFull { .. })) => {
                eprintln!(
                    "recopy: {region} is full after {done} objects of {PAYLOAD_BYTES} bytes \
                     (planned {count})"
                );
                break;
            }
            Err(error) => return Err(error).context("write objects"),
        }
        done += batch;
        written.fetch_add(batch * PAYLOAD_BYTES as u64, Ordering::Relaxed);
    }
    Ok(done * PAYLOAD_BYTES as u64)
}

/// What the run around the kill saw, on the CM's clock (ns).
struct Measured {
    /// `(time, transfers committed so far)` every [`SAMPLE_INTERVAL`].
    samples: Vec<(u64, u64)>,
    started_ns: u64,
    kill_ns: u64,
    /// When the CM started suspecting the victim, and when the configuration without it (the
    /// one that starts the copies) committed.
    suspected_ns: Option<u64>,
    copies_started_ns: Option<u64>,
    /// When the last `copy ... complete` configuration committed.
    copies_done_ns: Option<u64>,
    /// Every `(region, new backup)` a committed configuration listed as copying since the kill.
    copies: BTreeSet<(RegionId, NodeId)>,
    /// `copy ... complete` reconfigurations committed.
    complete_configuration_count: usize,
    /// What the node logs say of the copies.
    logged: Logged,
    /// Transfers that failed with an error a retry does not fix.
    failure_count: u64,
    /// Why the copies are not measured (not complete in time, the removal not seen).
    outcome: Result<(), String>,
}

/// Runs the transfers, kills the victim after the baseline, waits for the copies, and samples
/// throughout.
fn measure(
    args: &RecopyArgs,
    db: &Db,
    bank: &Bank,
    before: &CmStatusFile,
    victim: NodeId,
    termination: &Arc<Termination>,
) -> anyhow::Result<Measured> {
    let clock = Clock::system();
    let committed = Arc::new(AtomicU64::new(0));
    // Stops the transfers when the measurement ends (or when the run is interrupted).
    let stop = Termination::new();
    let samples_done = AtomicBool::new(false);
    let plan = RunPlan {
        transfer_threads: args.threads,
        audit_threads: 0,
        // A bound the run never reaches: `stop` ends it.
        duration: Duration::from_secs_f64(
            args.baseline_seconds + args.copy_seconds_max + args.after_seconds,
        ) + reconfigure_max(args.lease_ms)
            + Duration::from_secs(60),
        seed: 14,
    };
    std::thread::scope(|scope| {
        let bank_run = scope.spawn(|| {
            bank.run_counting(db, plan, &stop, &committed, |notice| {
                eprintln!("recopy: {notice}")
            })
        });
        let sampler = scope.spawn(|| {
            let start = Instant::now();
            let mut samples = vec![(clock.now().as_nanos(), committed.load(Ordering::Relaxed))];
            let mut tick = 0u32;
            while !samples_done.load(Ordering::Acquire) {
                tick += 1;
                let due = start + SAMPLE_INTERVAL * tick;
                // Behind: the next tick on time instead of a burst of samples.
                let Some(wait) = due.checked_duration_since(Instant::now()) else {
                    continue;
                };
                std::thread::sleep(wait);
                samples.push((clock.now().as_nanos(), committed.load(Ordering::Relaxed)));
            }
            samples
        });
        let started_ns = clock.now().as_nanos();
        let waited = kill_and_wait(args, before, victim, &clock, termination);
        // The throughput after the copies.
        if waited.outcome.is_ok() {
            termination.sleep(Duration::from_secs_f64(args.after_seconds));
        }
        samples_done.store(true, Ordering::Release);
        stop.request(STOP_SIGNAL);
        let samples = sampler.join().expect("the sampler does not panic");
        let report = bank_run
            .join()
            .expect("the bank run does not panic")
            .context("run the transfers")?;
        Ok(Measured {
            samples,
            started_ns,
            kill_ns: waited.kill_ns,
            suspected_ns: waited.suspected_ns,
            copies_started_ns: waited.copies_started_ns,
            copies_done_ns: waited.copies_done_ns,
            copies: waited.copies,
            complete_configuration_count: waited.complete_configuration_count,
            logged: read_logs(&args.dir),
            failure_count: report.failure_count(),
            outcome: waited.outcome,
        })
    })
}

/// What [`kill_and_wait`] saw.
struct Waited {
    kill_ns: u64,
    suspected_ns: Option<u64>,
    copies_started_ns: Option<u64>,
    copies_done_ns: Option<u64>,
    copies: BTreeSet<(RegionId, NodeId)>,
    complete_configuration_count: usize,
    outcome: Result<(), String>,
}

/// Waits out the baseline, kills the victim, then reads the CM status every [`POLL`] until its
/// committed configuration, without the victim, lists no copying backup (bounded).
fn kill_and_wait(
    args: &RecopyArgs,
    before: &CmStatusFile,
    victim: NodeId,
    clock: &Clock,
    termination: &Termination,
) -> Waited {
    let mut waited = Waited {
        kill_ns: 0,
        suspected_ns: None,
        copies_started_ns: None,
        copies_done_ns: None,
        copies: BTreeSet::new(),
        complete_configuration_count: 0,
        outcome: Err("interrupted".into()),
    };
    if termination.sleep(Duration::from_secs_f64(args.baseline_seconds)) {
        return waited;
    }
    waited.kill_ns = clock.now().as_nanos();
    match acre::cluster::fence_by_kill(&args.dir, victim, launch::STOP_TIMEOUT) {
        Ok(acre::cluster::Fenced::Killed { .. }) => {}
        Ok(acre::cluster::Fenced::NotRunning) => {
            waited.outcome = Err(format!("{victim} was not running"));
            return waited;
        }
        Err(e) => {
            waited.outcome = Err(format!("kill {victim}: {e}"));
            return waited;
        }
    }
    eprintln!("recopy: killed {victim}; waiting for the configuration without it and the copies");
    // Rows seen since the kill, by (from_id, started_ns): the status file keeps only the last
    // HISTORY_MAX, and a run makes a reconfiguration per copy.
    let mut rows: BTreeMap<(u64, u64), ReconfigurationRow> = BTreeMap::new();
    let removal_deadline = Instant::now() + reconfigure_max(args.lease_ms);
    let mut copy_deadline = None;
    let mut last_report = Instant::now();
    loop {
        if termination.is_requested() {
            return waited;
        }
        if let Ok(Some(status)) = CmStatusFile::read(&args.dir) {
            for row in &status.history {
                if row.started_ns >= waited.kill_ns && row.committed_ms.is_some() {
                    rows.insert((row.from_id, row.started_ns), row.clone());
                }
            }
            let removal = rows
                .values()
                .find(|row| row.failed.contains(&victim) || cause_names(&row.cause, victim));
            if let Some(removal) = removal
                && waited.copies_started_ns.is_none()
            {
                waited.suspected_ns = Some(removal.started_ns);
                let started_ns = committed_ns_of(removal);
                waited.copies_started_ns = Some(started_ns);
                copy_deadline =
                    Some(Instant::now() + Duration::from_secs_f64(args.copy_seconds_max));
                eprintln!(
                    "recopy: {} committed {:.1} ms after the kill; the copies run",
                    removal.cause,
                    (started_ns.saturating_sub(waited.kill_ns)) as f64 / 1e6
                );
            }
            let committed = &status.committed;
            let removed = waited.copies_started_ns.is_some() && !committed.nodes.contains(&victim);
            if removed {
                for placement in &committed.regions {
                    for &node in &placement.copying {
                        waited.copies.insert((placement.region, node));
                    }
                }
                let copying = committed.regions.iter().any(|p| !p.copying.is_empty());
                if !copying {
                    let complete: Vec<&ReconfigurationRow> = rows
                        .values()
                        .filter(|row| row.cause.contains("copy of"))
                        .collect();
                    waited.complete_configuration_count = complete.len();
                    waited.copies_done_ns = complete.iter().map(|row| committed_ns_of(row)).max();
                    waited.outcome = if waited.copies_done_ns.is_some() {
                        Ok(())
                    } else {
                        Err(format!(
                            "configuration {} has no copying backup, but no `copy ... complete` \
                             reconfiguration was seen",
                            committed.id
                        ))
                    };
                    return waited;
                }
                if last_report.elapsed() >= Duration::from_secs(2) {
                    last_report = Instant::now();
                    eprintln!("recopy: {}", copy_progress(&args.dir, committed));
                }
            }
        }
        match copy_deadline {
            None if Instant::now() >= removal_deadline => {
                waited.outcome = Err(format!(
                    "{victim} was not removed from the configuration within {:?} (configuration \
                     {} before the kill)",
                    reconfigure_max(args.lease_ms),
                    before.committed.id
                ));
                return waited;
            }
            Some(deadline) if Instant::now() >= deadline => {
                let progress = CmStatusFile::read(&args.dir)
                    .ok()
                    .flatten()
                    .map_or("no status".into(), |s| {
                        copy_progress(&args.dir, &s.committed)
                    });
                waited.outcome = Err(format!(
                    "the copies were not complete within --copy-seconds-max {}: {progress}",
                    args.copy_seconds_max
                ));
                return waited;
            }
            _ => {}
        }
        std::thread::sleep(POLL);
    }
}

/// `copying: r2 by n1 37%, r4 by n3 0%`, from the configuration and the nodes' progress files.
fn copy_progress(dir: &Path, config: &Configuration) -> String {
    let mut parts = Vec::new();
    let mut files = BTreeMap::new();
    for placement in &config.regions {
        for &node in &placement.copying {
            let progress = files
                .entry(node)
                .or_insert_with(|| acre::cluster::read_copy_progress(dir, node));
            let percent = progress
                .get(&placement.region)
                .map_or(0, |&(done, blocks)| done * 100 / blocks.max(1));
            parts.push(format!("{} by {node} {percent}%", placement.region));
        }
    }
    format!("copying: {}", parts.join(", "))
}

/// What the node logs in `dir` say of the copies: per node, the seconds of each copy that
/// completed (`copied r3 from its primary: 64 MiB in 0.27 s (237 MiB/s)`), and the copy
/// attempts that stopped part-way (`copying r3 from its primary stopped: the configuration
/// changed ...`), which start again from the first block at the next look.
#[derive(Clone, Debug, Default, PartialEq)]
struct Logged {
    copy_seconds: BTreeMap<String, Vec<f64>>,
    stopped_count: usize,
}

fn read_logs(dir: &Path) -> Logged {
    let mut logged = Logged::default();
    let Ok(entries) = std::fs::read_dir(dir) else {
        return logged;
    };
    for entry in entries.filter_map(Result::ok) {
        let name = entry.file_name().to_string_lossy().into_owned();
        let Some(node) = name.strip_suffix(".log") else {
            continue;
        };
        let Ok(text) = std::fs::read_to_string(entry.path()) else {
            continue;
        };
        logged.add(node, &text);
    }
    logged
}

impl Logged {
    fn add(&mut self, node: &str, text: &str) {
        for line in text.lines() {
            if line.contains("from its primary stopped") {
                self.stopped_count += 1;
            } else if let Some((_, rest)) = line.split_once("from its primary: ")
                && let Some((_, rest)) = rest.split_once(" MiB in ")
                && let Some((seconds, _)) = rest.split_once(" s (")
                && let Ok(seconds) = seconds.parse::<f64>()
            {
                self.copy_seconds
                    .entry(node.to_string())
                    .or_default()
                    .push(seconds);
            }
        }
    }
}

fn mib(bytes: u64) -> f64 {
    bytes as f64 / f64::from(1u32 << 20)
}

/// Transfers per second in each [`SAMPLE_INTERVAL`] that lies within `[from_ns, to_ns]`.
fn rates(samples: &[(u64, u64)], from_ns: u64, to_ns: u64) -> Vec<f64> {
    samples
        .windows(2)
        .filter(|w| w[0].0 >= from_ns && w[1].0 <= to_ns && w[1].0 > w[0].0)
        .map(|w| (w[1].1 - w[0].1) as f64 / ((w[1].0 - w[0].0) as f64 / 1e9))
        .collect()
}

/// Median and minimum of `values`, if any.
fn median_min(values: &[f64]) -> Option<(f64, f64)> {
    if values.is_empty() {
        return None;
    }
    let mut sorted = values.to_vec();
    sorted.sort_by(f64::total_cmp);
    Some((sorted[(sorted.len() - 1) / 2], sorted[0]))
}

/// The figures of a run.
struct Report {
    data_bytes: u64,
    fill_seconds: f64,
    copy_count: usize,
    copy_nodes: Vec<NodeId>,
    /// Region bytes of the copies (the copier reads every block).
    recopied_bytes: u64,
    /// Object bytes in the regions copied (as many times as they were copied).
    recopied_object_bytes: u64,
    suspected_ms: Option<f64>,
    copies_started_ms: Option<f64>,
    copies_done_ms: Option<f64>,
    copy_seconds: Option<f64>,
    complete_configuration_count: usize,
    logged: Logged,
    before: Option<(f64, f64)>,
    /// From the kill to the configuration that starts the copies.
    removal: Option<(f64, f64)>,
    during: Option<(f64, f64)>,
    after: Option<(f64, f64)>,
    failure_count: u64,
}

impl Report {
    fn new(layout: &Layout, data_bytes: u64, filled: &Filled, m: &Measured) -> Report {
        let ms = |ns: Option<u64>| ns.map(|ns| (ns as f64 - m.kill_ns as f64) / 1e6);
        let copy_nodes: BTreeSet<NodeId> = m.copies.iter().map(|&(_, node)| node).collect();
        let copy_seconds = m
            .copies_started_ns
            .zip(m.copies_done_ns)
            .map(|(from, to)| to.saturating_sub(from) as f64 / 1e9);
        let end_ns = m.samples.last().map_or(0, |s| s.0);
        let warm_ns = m.started_ns + WARM_UP.as_nanos() as u64;
        let window = |from: Option<u64>, to: Option<u64>| match (from, to) {
            (Some(from), Some(to)) => median_min(&rates(&m.samples, from, to)),
            _ => None,
        };
        let kill = (m.kill_ns > 0).then_some(m.kill_ns);
        Report {
            data_bytes,
            fill_seconds: filled.elapsed.as_secs_f64(),
            copy_count: m.copies.len(),
            copy_nodes: copy_nodes.into_iter().collect(),
            recopied_bytes: m.copies.len() as u64 * layout.region_bytes,
            recopied_object_bytes: m
                .copies
                .iter()
                .map(|(region, _)| filled.per_region.get(region).copied().unwrap_or(0))
                .sum(),
            suspected_ms: ms(m.suspected_ns),
            copies_started_ms: ms(m.copies_started_ns),
            copies_done_ms: ms(m.copies_done_ns),
            copy_seconds,
            complete_configuration_count: m.complete_configuration_count,
            logged: m.logged.clone(),
            // Interrupted before the kill: the baseline is all there is.
            before: window(Some(warm_ns), kill.or(Some(end_ns))),
            removal: window(kill, m.copies_started_ns),
            during: window(m.copies_started_ns, m.copies_done_ns),
            after: window(m.copies_done_ns, Some(end_ns)),
            failure_count: m.failure_count,
        }
    }

    /// Re-replication rate, MiB/s of region copied.
    fn rate_mib_per_second(&self) -> Option<f64> {
        self.copy_seconds
            .filter(|&s| s > 0.0)
            .map(|s| mib(self.recopied_bytes) / s)
    }

    fn percent_of_before(&self, value: f64) -> Option<f64> {
        self.before
            .filter(|(median, _)| *median > 0.0)
            .map(|(median, _)| 100.0 * value / median)
    }

    fn print(&self, out: &mut crate::output::Stdout) -> std::io::Result<()> {
        let ms = |v: Option<f64>| v.map_or("-".into(), |v| format!("+{v:.1} ms"));
        let nodes = self
            .copy_nodes
            .iter()
            .map(ToString::to_string)
            .collect::<Vec<_>>()
            .join(", ");
        writeln!(
            out,
            "data: {:.1} MiB of objects (filled in {:.1} s)",
            mib(self.data_bytes),
            self.fill_seconds
        )?;
        writeln!(
            out,
            "re-replicated: {} region copies by {} = {:.1} MiB of regions ({:.1} MiB of objects \
             in them)",
            self.copy_count,
            if nodes.is_empty() { "-" } else { &nodes },
            mib(self.recopied_bytes),
            mib(self.recopied_object_bytes)
        )?;
        writeln!(
            out,
            "times from the kill: suspected {}, copies started (configuration without the victim \
             committed) {}, last copy complete {}",
            ms(self.suspected_ms),
            ms(self.copies_started_ms),
            ms(self.copies_done_ms)
        )?;
        writeln!(
            out,
            "copy time: {} from the configuration that started the copies to the last copy \
             complete ({} copy-complete configurations)",
            self.copy_seconds
                .map_or("-".into(), |s| format!("{:.0} ms", s * 1e3)),
            self.complete_configuration_count,
        )?;
        let per_node: Vec<String> = self
            .logged
            .copy_seconds
            .iter()
            .map(|(node, seconds)| {
                let mut sorted = seconds.clone();
                sorted.sort_by(f64::total_cmp);
                format!(
                    "{node} {} copies, {:.2} s copying in all, median {:.2} s",
                    seconds.len(),
                    seconds.iter().sum::<f64>(),
                    sorted[(sorted.len() - 1) / 2]
                )
            })
            .collect();
        writeln!(
            out,
            "copiers (node logs): {}; {} copy attempts stopped part-way by a configuration change \
             or an error (a region queued behind one stops before its first block), each to \
             start again from the first block",
            if per_node.is_empty() {
                "no copy logged".into()
            } else {
                per_node.join("; ")
            },
            self.logged.stopped_count
        )?;
        writeln!(
            out,
            "re-replication rate: {}",
            self.rate_mib_per_second().map_or("-".into(), |rate| format!(
                "{rate:.1} MiB/s of regions ({:.1} MiB/s of objects); 1 GiB at this rate: {:.1} s",
                mib(self.recopied_object_bytes) / self.copy_seconds.unwrap_or(1.0),
                1024.0 / rate
            ))
        )?;
        let pair = |w: Option<(f64, f64)>| {
            w.map_or("-".into(), |(median, min)| {
                format!(
                    "median {median:.0}{}, min {min:.0}{}",
                    self.percent_of_before(median)
                        .map_or(String::new(), |p| format!(" ({p:.0}%)")),
                    self.percent_of_before(min)
                        .map_or(String::new(), |p| format!(" ({p:.0}%)"))
                )
            })
        };
        writeln!(
            out,
            "foreground transfers/s per {} ms (% of before):",
            SAMPLE_INTERVAL.as_millis()
        )?;
        writeln!(out, "  before the kill:      {}", pair(self.before))?;
        writeln!(out, "  kill to removal:      {}", pair(self.removal))?;
        writeln!(out, "  during the copies:    {}", pair(self.during))?;
        writeln!(out, "  after the copies:     {}", pair(self.after))?;
        if self.failure_count > 0 {
            writeln!(
                out,
                "{} transfers failed with an error a retry does not fix (see stderr)",
                self.failure_count
            )?;
        }
        let time_met = self.rate_mib_per_second().map(|rate| 1024.0 / rate < 10.0);
        let share_met = self
            .during
            .and_then(|(median, _)| self.percent_of_before(median))
            .map(|p| p > 80.0);
        let yes_no = |met: Option<bool>| match met {
            Some(true) => "met",
            Some(false) => "NOT met",
            None => "not measured",
        };
        writeln!(
            out,
            "goal (issue 14): 1 GiB re-replicated in under 10 s {}; foreground above 80% of \
             before during the copies (median) {}",
            yes_no(time_met),
            yes_no(share_met)
        )
    }

    fn json(&self, args: &RecopyArgs, layout: &Layout, victim: NodeId, role: &str) -> String {
        let opt = |v: Option<f64>| v.map_or("null".into(), json_number);
        let pair = |w: Option<(f64, f64)>| {
            w.map_or("null".into(), |(median, min)| {
                format!(
                    "{{\"median\": {}, \"min\": {}}}",
                    json_number(median),
                    json_number(min)
                )
            })
        };
        format!(
            "{{\n  \"nodes\": {}, \"transport\": {}, \"f\": {F}, \"lease_ms\": {}, \
             \"region_bytes\": {}, \"region_count\": {}, \"object_bytes\": {PAYLOAD_BYTES},\n  \
             \"victim\": {}, \"role\": {},\n  \"data_bytes\": {}, \"fill_seconds\": {},\n  \
             \"copy_count\": {}, \"recopied_bytes\": {}, \"recopied_object_bytes\": {},\n  \
             \"suspected_ms\": {}, \"copies_started_ms\": {}, \"copies_done_ms\": {}, \
             \"copy_seconds\": {}, \"rate_mib_per_second\": {},\n  \
             \"complete_configuration_count\": {}, \"stopped_count\": {}, \
             \"copy_seconds_logged\": {{{}}},\n  \
             \"transfers_per_second\": {{\"before\": {}, \"kill_to_removal\": {}, \"during\": {}, \
             \"after\": {}}},\n  \"failure_count\": {}\n}}\n",
            args.nodes,
            json_string(&args.transport),
            args.lease_ms,
            layout.region_bytes,
            layout.region_count,
            json_string(&victim.to_string()),
            json_string(role),
            self.data_bytes,
            json_number(self.fill_seconds),
            self.copy_count,
            self.recopied_bytes,
            self.recopied_object_bytes,
            opt(self.suspected_ms),
            opt(self.copies_started_ms),
            opt(self.copies_done_ms),
            opt(self.copy_seconds),
            opt(self.rate_mib_per_second()),
            self.complete_configuration_count,
            self.logged.stopped_count,
            self.logged
                .copy_seconds
                .iter()
                .map(|(node, seconds)| format!(
                    "{}: [{}]",
                    json_string(node),
                    seconds
                        .iter()
                        .map(|&s| json_number(s))
                        .collect::<Vec<_>>()
                        .join(", ")
                ))
                .collect::<Vec<_>>()
                .join(", "),
            pair(self.before),
            pair(self.removal),
            pair(self.during),
            pair(self.after),
            self.failure_count
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_layout_holds_the_data_in_equal_regions() {
        // 64 MiB regions: 62 blocks of 15 objects of 64 KiB.
        assert_eq!(objects_per_region_max(64 << 20), 62 * 15);
        let planned = layout(1 << 30, 64 << 20, 3).unwrap();
        assert_eq!(planned.regions_per_node, 6);
        assert_eq!(planned.region_count, 18);
        assert!(planned.objects_per_region <= objects_per_region_max(64 << 20));
        assert!(
            planned.objects_per_region * planned.region_count as u64 * PAYLOAD_BYTES as u64
                >= 1 << 30
        );
        assert!(layout(1 << 30, 2 << 20, 3).is_err());
    }

    #[test]
    fn rates_take_the_intervals_inside_the_window() {
        let samples = [(0, 0), (100, 10), (200, 30), (300, 30), (400, 50)];
        // Per interval: 10, 20, 0, 20 transfers per 100 ns = 1e8, 2e8, 0, 2e8 per second.
        assert_eq!(rates(&samples, 100, 400), vec![2e8, 0.0, 2e8]);
        assert_eq!(median_min(&rates(&samples, 0, 400)), Some((1e8, 0.0)));
        assert_eq!(median_min(&[]), None);
    }

    #[test]
    fn the_logs_give_each_copy_its_seconds() {
        let mut logged = Logged::default();
        logged.add(
            "n2",
            "INFO copied r3 from its primary: 64 MiB in 0.27 s (237 MiB/s); the CM counts the \
             copy complete next\nWARN copying r4 from its primary stopped: the configuration \
             changed from 5 to 6; it starts again at the next look\nINFO other",
        );
        assert_eq!(logged.copy_seconds["n2"], vec![0.27]);
        assert_eq!(logged.stopped_count, 1);
    }
}
