//! One run of the harness, from an empty directory to a checked history:
//!
//! 1. start a cluster of node processes with a configuration manager (`acre cluster up`);
//! 2. create the workload's objects, then run `concurrency` client workers (threads of this
//!    process, each with its own `Db::connect`, so each is a client of its own) that invoke
//!    operations at `rate` per second in all, recording each invocation and completion;
//! 3. meanwhile the nemesis waits `interval`, starts a fault, waits 1 s to `fault_max`, heals
//!    it, and again, on a schedule drawn from `seed`;
//! 4. at `time_limit`, stop the workers, heal everything, wait for the cluster to settle
//!    (every member running, every region active), and do the final reads;
//! 5. stop the cluster and hand the history to the checkers.
//!
//! Everything random (operations, faults, targets, durations) comes from `seed`; the cluster's
//! own timing does not, so a seed replays the same schedule, not the same interleaving.

use crate::client::{self, ClientProcess};
use crate::cluster::{Cluster, Spec};
use crate::history::{Fault, Kind, Op, Process, Value};
use crate::nemesis::{self, Class};
use crate::netns::Network;
use crate::workload::{Bank, Completion, ListAppend, Register, Workload};
use acre_nvm_log::random::SplitMix;
use acre_replication::db::Db;
use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// The workloads.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum WorkloadName {
    Bank,
    ListAppend,
    Register,
}

impl WorkloadName {
    pub fn name(self) -> &'static str {
        match self {
            WorkloadName::Bank => "bank",
            WorkloadName::ListAppend => "list-append",
            WorkloadName::Register => "register",
        }
    }

    pub fn parse(name: &str) -> Option<WorkloadName> {
        [
            WorkloadName::Bank,
            WorkloadName::ListAppend,
            WorkloadName::Register,
        ]
        .into_iter()
        .find(|w| w.name() == name)
    }
}

/// What a run does; `acre jepsen`'s flags.
#[derive(Clone, Debug)]
pub struct Options {
    pub workload: WorkloadName,
    /// Empty: no faults.
    pub nemesis: Vec<Class>,
    pub nodes: u16,
    pub transport: String,
    /// Each node in a network namespace of its own (tcp; the partition nemesis needs it).
    pub netns: bool,
    pub commit: String,
    pub lease_ms: u64,
    pub time_limit: Duration,
    /// Operations per second, all workers together.
    pub rate: f64,
    pub concurrency: u32,
    pub seed: u64,
    /// Where the history, the results and the report go (and the cluster's command output).
    pub out: PathBuf,
    /// The cluster directory (removed at the end unless `keep_cluster`).
    pub cluster_dir: PathBuf,
    pub keep_cluster: bool,
    /// Time between a heal and the next fault.
    pub interval: Duration,
    /// The longest a fault lasts (at least 1 s).
    pub fault_max: Duration,
    /// The `acre` binary that runs the cluster's commands.
    pub acre: PathBuf,
    /// Run each client worker's operations in a client process of its own (`acre
    /// jepsen-client`), which the kill nemesis may kill too.
    pub client_processes: bool,
    /// The configuration manager in the memory nodes' processes rather than standalone ones.
    pub cm_in_nodes: bool,
}

/// How long the final phase waits for the cluster to settle, and for each final read.
pub const SETTLE_MAX: Duration = Duration::from_secs(60);

/// The history so far, appended to by every worker and the nemesis.
#[derive(Clone)]
struct Recorder {
    ops: Arc<Mutex<Vec<Op>>>,
    start: Instant,
}

impl Recorder {
    fn record(&self, process: Process, kind: Kind, value: Value, error: Option<String>) {
        let mut ops = self.ops.lock().expect("the history's lock");
        let index = ops.len() as u64;
        ops.push(Op {
            index,
            time_ns: self.start.elapsed().as_nanos() as u64,
            process,
            kind,
            value,
            error,
        });
    }

    fn counts(&self) -> (u64, u64, u64) {
        let ops = self.ops.lock().expect("the history's lock");
        let count = |k: Kind| {
            ops.iter()
                .filter(|o| o.kind == k && o.process != Process::Nemesis)
                .count() as u64
        };
        (count(Kind::Ok), count(Kind::Fail), count(Kind::Info))
    }
}

/// What a run produced: the history, and the facts the checkers need about the workload.
pub struct Ran {
    pub ops: Vec<Op>,
    /// Bank: accounts and total.
    pub bank: Option<(u32, u64)>,
}

/// Runs `options`; `progress` gets a line every few seconds; `interrupted` ends the run early
/// (the final phase still runs, so the history is complete).
pub fn run(
    options: &Options,
    progress: &dyn Fn(&str),
    interrupted: &dyn Fn() -> bool,
) -> Result<Ran, String> {
    std::fs::create_dir_all(&options.out)
        .map_err(|e| format!("create {}: {e}", options.out.display()))?;
    let spec = Spec {
        nodes: options.nodes,
        transport: options.transport.clone(),
        commit: options.commit.clone(),
        lease_ms: options.lease_ms,
        region_bytes: 64 << 20,
        // Every worker is a client of its own, and so is the set-up's and the final reads'; a
        // killed client process's id stays taken until the memory nodes settled what it left,
        // so its worker's next process takes another.
        clients: u16::try_from(2 * options.concurrency + 4)
            .map_err(|_| "--concurrency is too large".to_string())?,
        // Standalone CM processes do not run in namespaces (`acre cluster up --netns` refuses them).
        cm_in_nodes: options.cm_in_nodes || options.netns,
    };
    let log = options.out.join("cluster.log");
    progress(&format!(
        "starting {} nodes over {} in {}",
        spec.nodes,
        spec.transport,
        options.cluster_dir.display()
    ));
    // Made before the cluster and removed after it (on drop, after `down`).
    let network = match options.netns {
        true => {
            let network = Network::create(progress)?;
            progress(&format!(
                "nodes in network namespaces {}-n<id> on {}/24, clients on {}",
                network.placement().prefix,
                network.placement().subnet,
                network.host_addr()
            ));
            Some(network)
        }
        false => None,
    };
    let cluster = Cluster::up(&options.acre, &options.cluster_dir, &spec, &log, network)?;
    let result = run_on(options, &cluster, progress, interrupted);
    // What the run left, for a run that went wrong above all (a lock that stayed, a ring
    // pinned): best effort, the run's verdict does not depend on it.
    if let Err(error) = cluster.log_status() {
        progress(&format!("{error}; the run goes on"));
    }
    // A node still writing its block sums when the stop's bound ran out (a loaded host) has
    // exited by the second try; anything else is reported.
    let down = cluster.down().or_else(|error| {
        progress(&format!("{error}; stopping the cluster again"));
        cluster.down()
    });
    drop(cluster);
    keep_logs(&options.cluster_dir, &options.out.join("logs"));
    if !options.keep_cluster {
        let _ = std::fs::remove_dir_all(&options.cluster_dir);
    }
    let ran = result?;
    down?;
    Ok(ran)
}

/// Copies the processes' logs and the CM's status file from the cluster directory into
/// `to`, so that a run's directory says what the nodes and the CM did (the cluster directory
/// goes at the end). Best effort: a file that cannot be copied is left out.
fn keep_logs(cluster_dir: &std::path::Path, to: &std::path::Path) {
    let Ok(entries) = std::fs::read_dir(cluster_dir) else {
        return;
    };
    let _ = std::fs::create_dir_all(to);
    for entry in entries.flatten() {
        let name = entry.file_name();
        let keep = name
            .to_str()
            .is_some_and(|n| n.ends_with(".log") || n == "cm-status.toml");
        if keep {
            let _ = std::fs::copy(entry.path(), to.join(&name));
        }
    }
}

fn run_on(
    options: &Options,
    cluster: &Cluster,
    progress: &dyn Fn(&str),
    interrupted: &dyn Fn() -> bool,
) -> Result<Ran, String> {
    let connect =
        || Db::connect(&cluster.cluster_file()).map_err(|e| format!("connect a client: {e}"));
    let setup = connect()?;
    let operations = (options.rate * options.time_limit.as_secs_f64()) as u64;
    let (workload, bank): (Arc<dyn Workload>, _) = match options.workload {
        WorkloadName::Bank => {
            let bank = Bank::create(&setup, 8, 100)?;
            let facts = (bank.accounts(), bank.total());
            (Arc::new(bank), Some(facts))
        }
        WorkloadName::ListAppend => (
            Arc::new(ListAppend::create(
                &setup,
                ListAppend::keys_for(operations),
            )?),
            None,
        ),
        WorkloadName::Register => (Arc::new(Register::create(&setup, 8)?), None),
    };
    let recorder = Recorder {
        ops: Arc::default(),
        start: Instant::now(),
    };
    let stop = Arc::new(AtomicBool::new(false));
    let objects_file = options.out.join("objects.json");
    if options.client_processes {
        let objects = serde_json::to_string(&workload.objects()).map_err(|e| e.to_string())?;
        std::fs::write(&objects_file, objects)
            .map_err(|e| format!("write {}: {e}", objects_file.display()))?;
    }
    // Closed by the truncate nemesis while the cluster is stopped as a whole.
    let gate = Arc::new(client::Gate::default());
    // The running client processes by worker: (pid, client id), for the kill nemesis.
    let client_pids: Arc<Mutex<BTreeMap<u32, (u32, u32)>>> = Arc::default();
    let mut seeds = SplitMix::new(options.seed);
    let mut workers = Vec::new();
    let period = Duration::from_secs_f64(f64::from(options.concurrency) / options.rate.max(0.001));
    for worker in 0..options.concurrency {
        let in_process = !options.client_processes;
        let mut db = if in_process {
            assert!(gate.enter(), "the gate is open until the nemesis starts");
            Some(connect()?)
        } else {
            None
        };
        let (workload, recorder, stop, client_pids, gate) = (
            workload.clone(),
            recorder.clone(),
            stop.clone(),
            client_pids.clone(),
            gate.clone(),
        );
        let cluster_file = cluster.cluster_file();
        let spawn = {
            let (acre, cluster_file, objects_file) = (
                options.acre.clone(),
                cluster.cluster_file(),
                objects_file.clone(),
            );
            let log = options.out.join("clients.log");
            move || ClientProcess::spawn(&acre, &cluster_file, &objects_file, &log)
        };
        let mut rng = SplitMix::new(seeds.next_u64());
        let processes = options.concurrency;
        workers.push(
            std::thread::Builder::new()
                .name(format!("jepsen-client-{worker}"))
                .spawn(move || {
                    let mut process = worker;
                    let mut child: Option<ClientProcess> = None;
                    // Workers start spread over one period, so invocations do not come in bursts.
                    let mut next = Instant::now() + period.mul_f64(rng.below(1000) as f64 / 1000.0);
                    while !stop.load(Ordering::Relaxed) {
                        if let Some(wait) = next.checked_duration_since(Instant::now()) {
                            std::thread::sleep(wait);
                        }
                        next += period;
                        if gate.is_closed() {
                            // The nemesis stops the cluster as a whole: let go of the client.
                            if db.take().is_some() {
                                gate.leave();
                            }
                            if child.take().is_some() {
                                client_pids.lock().expect("the pids' lock").remove(&worker);
                                gate.leave();
                            }
                            gate.wait_open(period);
                            continue;
                        }
                        if in_process && db.is_none() {
                            if !gate.enter() {
                                continue;
                            }
                            match Db::connect(&cluster_file) {
                                Ok(connected) => db = Some(connected),
                                Err(e) => {
                                    gate.leave();
                                    eprintln!("jepsen: connect a client again: {e}");
                                    continue;
                                }
                            }
                        }
                        let Some(value) = workload.generate(&mut rng) else {
                            break;
                        };
                        recorder.record(
                            Process::Client(process),
                            Kind::Invoke,
                            value.clone(),
                            None,
                        );
                        let Completion { kind, value, error } = match &db {
                            Some(db) => workload.invoke(db, &value),
                            None => {
                                if child.is_none() && gate.enter() {
                                    child = spawn()
                                        .inspect(|c| {
                                            client_pids
                                                .lock()
                                                .expect("the pids' lock")
                                                .insert(worker, (c.pid(), c.client));
                                        })
                                        .inspect_err(|e| {
                                            gate.leave();
                                            eprintln!("jepsen: {e}");
                                        })
                                        .ok();
                                }
                                match child.as_mut().map(|c| c.invoke(&value)) {
                                    Some(Ok(completion)) => completion,
                                    Some(Err(error)) => {
                                        client_pids.lock().expect("the pids' lock").remove(&worker);
                                        child = None;
                                        gate.leave();
                                        client::lost(&value, error)
                                    }
                                    // Nothing was sent: the operation did not happen.
                                    None => Completion {
                                        kind: Kind::Fail,
                                        value,
                                        error: Some("no client process could be started".into()),
                                    },
                                }
                            }
                        };
                        recorder.record(Process::Client(process), kind, value, error);
                        if kind == Kind::Info {
                            // The operation may still take effect: this process is done.
                            process += processes;
                        }
                    }
                    client_pids.lock().expect("the pids' lock").remove(&worker);
                    if db.take().is_some() || child.take().is_some() {
                        gate.leave();
                    }
                })
                .map_err(|e| format!("start a client worker: {e}"))?,
        );
    }

    // The nemesis, on this thread.
    let lease = Duration::from_millis(options.lease_ms);
    let mut rng = SplitMix::new(seeds.next_u64());
    let deadline = recorder.start + options.time_limit;
    let mut next_fault = Instant::now() + options.interval;
    let mut active: Option<(nemesis::Active, Instant)> = None;
    let mut errors = Vec::new();
    let mut last_progress = Instant::now();
    while Instant::now() < deadline && !interrupted() {
        std::thread::sleep(Duration::from_millis(50));
        let now = Instant::now();
        if let Some((fault, until)) = &active {
            if now >= *until {
                heal(cluster, &recorder, fault, &gate, &mut errors);
                active = None;
                next_fault = Instant::now() + options.interval;
            }
        } else if !options.nemesis.is_empty() && now >= next_fault {
            let class = options.nemesis[rng.below(options.nemesis.len() as u64) as usize];
            let pids: Vec<(u32, u32)> = client_pids
                .lock()
                .expect("the pids' lock")
                .values()
                .copied()
                .collect();
            if class == Class::Kill && !pids.is_empty() && rng.below(4) == 0 {
                // A client process killed in the middle of whatever it does; its worker starts
                // another for its next operation, so the fault heals itself.
                let (pid, client) = pids[rng.below(pids.len() as u64) as usize];
                let fault = Fault {
                    class: "kill".into(),
                    targets: vec![client],
                    detail: format!("SIGKILL of client n{client} (pid {pid})"),
                };
                if acre_engine::signal::kill(pid).is_ok() {
                    recorder.record(
                        Process::Nemesis,
                        Kind::Invoke,
                        Value::Fault(fault.clone()),
                        None,
                    );
                    recorder.record(Process::Nemesis, Kind::Ok, Value::Fault(fault), None);
                }
                next_fault = now + options.interval;
                continue;
            }
            match nemesis::start(cluster, class, lease, &gate, &mut rng) {
                Ok(Some(fault)) => {
                    recorder.record(
                        Process::Nemesis,
                        Kind::Invoke,
                        Value::Fault(fault.fault.clone()),
                        None,
                    );
                    let max_ms = options.fault_max.as_millis().max(1000) as u64;
                    let lasts = Duration::from_millis(1000 + rng.below(max_ms - 999));
                    active = Some((fault, Instant::now() + lasts));
                }
                Ok(None) => next_fault = now + options.interval,
                Err(error) => {
                    errors.push(format!("start a {class} fault: {error}"));
                    next_fault = now + options.interval;
                }
            }
        }
        if last_progress.elapsed() >= Duration::from_secs(5) {
            last_progress = Instant::now();
            let (ok, fail, info) = recorder.counts();
            let fault = active
                .as_ref()
                .map_or("none".to_string(), |(f, _)| f.fault.detail.clone());
            progress(&format!(
                "{:>4.0} s: ok {ok}, fail {fail}, info {info}; fault: {fault}",
                recorder.start.elapsed().as_secs_f64()
            ));
        }
    }

    // The final phase: stop the workers, heal, settle, read everything.
    stop.store(true, Ordering::Relaxed);
    for worker in workers {
        let _ = worker.join();
    }
    if let Some((fault, _)) = active.take() {
        heal(cluster, &recorder, &fault, &gate, &mut errors);
    }
    progress("healed; waiting for the cluster to settle");
    let finished = settle(cluster)
        .and_then(|()| final_reads(&*workload, &recorder, &connect, progress))
        .inspect_err(|_| {
            // A run that could not be done still leaves what its clients saw, to read.
            let ops = recorder.ops.lock().expect("the history's lock");
            let path = options.out.join("history.jsonl");
            let written = std::fs::File::create(&path)
                .and_then(|f| crate::history::write_jsonl(&ops, std::io::BufWriter::new(f)));
            if written.is_ok() {
                progress(&format!(
                    "the history so far ({} entries) is in {}",
                    ops.len(),
                    path.display()
                ));
            }
        });
    if !errors.is_empty() {
        progress(&format!("nemesis errors: {}", errors.join("; ")));
    }
    finished?;
    let ops = std::mem::take(&mut *recorder.ops.lock().expect("the history's lock"));
    Ok(Ran { ops, bank })
}

/// Reads every object of `workload` once more, each read retried until it succeeds (for at
/// most [`SETTLE_MAX`] each).
fn final_reads(
    workload: &dyn Workload,
    recorder: &Recorder,
    connect: &dyn Fn() -> Result<Db, String>,
    progress: &dyn Fn(&str),
) -> Result<(), String> {
    progress("final reads");
    let reader = connect()?;
    for (i, value) in workload.final_reads().into_iter().enumerate() {
        let process = Process::Final(i as u32);
        let started = Instant::now();
        loop {
            recorder.record(process, Kind::Invoke, value.clone(), None);
            let Completion {
                kind,
                value: seen,
                error,
            } = workload.invoke(&reader, &value);
            recorder.record(process, kind, seen, error.clone());
            if kind == Kind::Ok {
                break;
            }
            if started.elapsed() >= SETTLE_MAX {
                return Err(format!(
                    "a final read did not succeed within {SETTLE_MAX:?}: {}",
                    error.unwrap_or_default()
                ));
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }
    Ok(())
}

/// Heals `fault` and records the heal; a heal that failed is kept in `errors` (the next heal,
/// or the settling at the end, tries again).
fn heal(
    cluster: &Cluster,
    recorder: &Recorder,
    fault: &nemesis::Active,
    gate: &client::Gate,
    errors: &mut Vec<String>,
) {
    if let Err(error) = nemesis::heal(cluster, fault, gate) {
        errors.push(format!("heal {}: {error}", fault.fault.detail));
    }
    recorder.record(
        Process::Nemesis,
        Kind::Ok,
        Value::Fault(fault.fault.clone()),
        None,
    );
}

/// Waits until every member of the configuration runs and every region is active, with no
/// configuration being installed.
fn settle(cluster: &Cluster) -> Result<(), String> {
    let started = Instant::now();
    let mut restore_error = None;
    loop {
        let missing = cluster.missing();
        let whole = cluster.whole();
        if !whole {
            // A restore that fails (the CM could not answer yet, or removed a node the
            // restore meant to restart in place) is tried again until the end.
            restore_error = cluster.restore().err();
        }
        let status = cluster.status();
        let settled = status.as_ref().is_some_and(|s| {
            s.installing.is_none() && s.committed.regions.iter().all(|p| p.state.is_active())
        }) && whole;
        if settled {
            return Ok(());
        }
        if started.elapsed() >= SETTLE_MAX {
            let unsettled: Vec<String> = status
                .iter()
                .flat_map(|s| s.committed.regions.iter())
                .filter(|p| !p.state.is_active())
                .map(|p| format!("{} {}", p.region, p.state.name()))
                .collect();
            return Err(format!(
                "the cluster did not settle within {SETTLE_MAX:?}: members not running: \
                 {missing:?}; regions not active: {unsettled:?}; a configuration being \
                 installed: {}; last restore: {}",
                status.as_ref().is_some_and(|s| s.installing.is_some()),
                restore_error.as_deref().unwrap_or("none failed")
            ));
        }
        std::thread::sleep(Duration::from_millis(200));
    }
}
