//! `acre jepsen`: the fault-injection harness (the `acre-jepsen` crate) on a cluster of node
//! processes this command starts through this same binary.

use acre::engine::signal::Termination;
use acre_jepsen::nemesis::Class;
use acre_jepsen::results::Results;
use acre_jepsen::run::{Options, WorkloadName};
use acre_jepsen::timeline::Timeline;
use acre_jepsen::{check, history, report};
use anyhow::{Context, bail};
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

#[derive(clap::Args, Clone, Debug)]
pub struct JepsenArgs {
    /// bank (transfers and full reads: the total never changes), list-append (transactions of
    /// appends and reads, checked for strict serializability) or register (reads, writes and
    /// compare-and-sets, checked for linearizability per register).
    #[arg(long, default_value = "list-append")]
    pub workload: String,
    /// Faults, comma-separated: kill, pause, clock, bitflip, truncate, partition, or none.
    /// truncate stops the whole cluster, damages the region and log files of a minority of
    /// its nodes (cut short, or bits flipped) and starts it again from its files. partition
    /// (links between nodes cut by nftables rules: one node, halves, a majorities ring or a
    /// minority cut off; clients keep reaching every node) needs --transport tcp or ofi and
    /// root, and implies --netns.
    #[arg(long, default_value = "kill,pause")]
    pub nemesis: String,
    /// Memory nodes (each also hosts a replica of the configuration manager, up to 2f+1).
    #[arg(long, default_value_t = 5)]
    pub nodes: u16,
    /// How the nodes reach each other (ofi: in an acre built with `--features ofi`).
    #[arg(long, default_value = "shm", value_parser = ["shm", "tcp", "ofi"])]
    pub transport: String,
    /// Run each node in a network namespace of its own (`acrejp<r>-n<id>`, address
    /// 10.77.<r>.<id>, on a bridge that also carries the clients) instead of on loopback; tcp
    /// only, needs root, `ip` and `nft`. Everything made is removed at the end, and what a
    /// killed run left is removed by the next.
    #[arg(long)]
    pub netns: bool,
    #[arg(long, default_value = "one-sided", value_parser = ["messages", "one-sided"])]
    pub commit: String,
    /// How long the clients run: 60s, 2m, or seconds.
    #[arg(long, default_value = "60s", value_parser = parse_duration)]
    pub time_limit: Duration,
    /// Operations per second, all clients together.
    #[arg(long, default_value_t = 500.0)]
    pub rate: f64,
    /// Client workers (each a client of the cluster of its own).
    #[arg(long, default_value_t = 10)]
    pub concurrency: u32,
    /// Seed of the operations and of the faults' schedule (default: from the time).
    #[arg(long)]
    pub seed: Option<u64>,
    /// Where the history, results and report go.
    #[arg(long, default_value = "jepsen-out")]
    pub out: PathBuf,
    /// The cluster directory (default /dev/shm/acre-jepsen-<pid>; removed at the end).
    #[arg(long)]
    pub cluster_dir: Option<PathBuf>,
    /// Keep the cluster directory at the end (the nodes' logs and files).
    #[arg(long)]
    pub keep_cluster: bool,
    /// Time between a heal and the next fault.
    #[arg(long, default_value = "10s", value_parser = parse_duration)]
    pub interval: Duration,
    /// The longest a fault lasts (each lasts 1 s to this, drawn from the seed).
    #[arg(long, default_value = "10s", value_parser = parse_duration)]
    pub fault_max: Duration,
    /// Run each client worker's operations in a client process of its own, which the kill
    /// nemesis may also kill (a client that dies in the middle of a commit).
    #[arg(long)]
    pub client_processes: bool,
    /// Where the configuration manager's replicas run: `processes` (three standalone `acre
    /// cm` processes, restarted in place after a fault) or `nodes` (inside the first 2f+1
    /// memory nodes; a removed node's replica is replaced through the Raft group).
    #[arg(long, default_value = "processes", value_parser = ["processes", "nodes"])]
    pub cm: String,
    /// Lease between the CM and every node, in milliseconds.
    #[arg(long, default_value_t = crate::launch::LEASE_MS_DEFAULT)]
    pub lease_ms: u64,
}

/// `60s`, `2m`, `500ms`, or a number of seconds.
fn parse_duration(text: &str) -> Result<Duration, String> {
    let bad = || format!("`{text}` is not a duration: use 60s, 2m, 500ms or a number of seconds");
    let (number, unit) = match text.find(|c: char| !c.is_ascii_digit() && c != '.') {
        Some(at) => text.split_at(at),
        None => (text, "s"),
    };
    let number: f64 = number.parse().map_err(|_| bad())?;
    let seconds = match unit {
        "ms" => number / 1000.0,
        "s" => number,
        "m" => number * 60.0,
        _ => return Err(bad()),
    };
    if !seconds.is_finite() || seconds < 0.0 {
        return Err(bad());
    }
    Ok(Duration::from_secs_f64(seconds))
}

fn options(args: &JepsenArgs) -> anyhow::Result<Options> {
    let Some(workload) = WorkloadName::parse(&args.workload) else {
        bail!(
            "--workload {}: use bank, list-append or register",
            args.workload
        );
    };
    let mut nemesis = Vec::new();
    for name in args.nemesis.split(',').map(str::trim) {
        match name {
            "none" | "" => {}
            _ => match Class::parse(name) {
                Some(class) if !nemesis.contains(&class) => nemesis.push(class),
                Some(_) => {}
                None => bail!(
                    "--nemesis {name}: use kill, pause, clock, bitflip, truncate, partition or \
                     none, comma-separated"
                ),
            },
        }
    }
    let partition = nemesis.contains(&Class::Partition);
    let netns = args.netns || partition;
    if netns {
        let asked = if partition {
            "--nemesis partition"
        } else {
            "--netns"
        };
        if args.transport == "shm" {
            bail!(
                "{asked} needs --transport tcp or ofi: over shm the nodes share memory files, \
                 not a network"
            );
        }
        if let Some(why) = acre_jepsen::netns::unavailable() {
            bail!("{asked} puts the nodes in network namespaces: {why}");
        }
    }
    if args.concurrency == 0 {
        bail!("--concurrency 0: at least one client is needed");
    }
    if !(args.rate > 0.0 && args.rate.is_finite()) {
        bail!(
            "--rate {}: give a positive number of operations per second",
            args.rate
        );
    }
    if args.nodes < 3 {
        bail!(
            "--nodes {}: the harness needs at least 3 nodes, so that a fault leaves a majority",
            args.nodes
        );
    }
    if args.time_limit < Duration::from_secs(1) {
        bail!("--time-limit: at least 1s");
    }
    crate::launch::check_lease_ms(args.lease_ms)?;
    let seed = args.seed.unwrap_or_else(|| {
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos() as u64)
    });
    let cluster_dir = args
        .cluster_dir
        .clone()
        .unwrap_or_else(|| PathBuf::from(format!("/dev/shm/acre-jepsen-{}", std::process::id())));
    Ok(Options {
        workload,
        nemesis,
        nodes: args.nodes,
        transport: args.transport.clone(),
        netns,
        commit: args.commit.clone(),
        lease_ms: args.lease_ms,
        time_limit: args.time_limit,
        rate: args.rate,
        concurrency: args.concurrency,
        seed,
        out: args.out.clone(),
        cluster_dir,
        keep_cluster: args.keep_cluster,
        interval: args.interval,
        fault_max: args.fault_max,
        acre: std::env::current_exe().context("find the acre binary")?,
        client_processes: args.client_processes,
        cm_in_nodes: args.cm == "nodes",
    })
}

pub fn run(args: &JepsenArgs, termination: &Termination) -> anyhow::Result<ExitCode> {
    let options = options(args)?;
    let started = std::time::Instant::now();
    let progress = |line: &str| {
        eprintln!("jepsen {:>5.1} s: {line}", started.elapsed().as_secs_f64());
    };
    progress(&format!(
        "{} with nemesis {} on {} nodes over {}, seed {}, for {:?}",
        options.workload.name(),
        if options.nemesis.is_empty() {
            "none".to_string()
        } else {
            options
                .nemesis
                .iter()
                .map(|c| c.name())
                .collect::<Vec<_>>()
                .join(",")
        },
        options.nodes,
        options.transport,
        options.seed,
        options.time_limit
    ));
    let ran = acre_jepsen::run::run(&options, &progress, &|| termination.requested().is_some())
        .map_err(anyhow::Error::msg)?;
    let history_path = options.out.join("history.jsonl");
    let file = std::fs::File::create(&history_path)
        .with_context(|| format!("create {}", history_path.display()))?;
    history::write_jsonl(&ran.ops, std::io::BufWriter::new(file))
        .with_context(|| format!("write {}", history_path.display()))?;
    progress(&format!(
        "{} history entries in {}; checking",
        ran.ops.len(),
        history_path.display()
    ));
    let workload = match (options.workload, ran.bank) {
        (WorkloadName::Bank, Some((accounts, total))) => check::Workload::Bank { accounts, total },
        (WorkloadName::Bank, None) => bail!("the bank run reported no accounts"),
        (WorkloadName::ListAppend, _) => check::Workload::ListAppend,
        (WorkloadName::Register, _) => check::Workload::Register,
    };
    let checked = check::check(&workload, &ran.ops);
    let timeline = Timeline::of(&ran.ops).context("read the history as a timeline")?;
    let results = Results {
        valid: checked.valid(),
        workload: workload.name().into(),
        nemesis: options
            .nemesis
            .iter()
            .map(|c| c.name().to_string())
            .collect(),
        transport: options.transport.clone(),
        nodes: u32::from(options.nodes),
        seed: options.seed,
        time_limit_s: options.time_limit.as_secs_f64(),
        counts: timeline.counts,
        anomalies: checked.anomaly_counts(),
        findings: checked.findings.clone(),
        lost_writes: checked.lost_writes.clone(),
        verdicts: checked.verdicts.clone(),
        faults: timeline.faults.clone(),
    };
    report::write_results(&options.out, &results)
        .with_context(|| format!("write results.json in {}", options.out.display()))?;
    report::write_report(&options.out, &ran.ops, &results)
        .with_context(|| format!("write report.html in {}", options.out.display()))?;
    print_summary(&results, &options.out);
    Ok(if results.valid {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(1)
    })
}

/// The verdict and the figures, on stdout.
fn print_summary(results: &Results, out: &std::path::Path) {
    let c = results.counts;
    println!(
        "{}: {} with nemesis {} on {} nodes over {}, seed {}",
        if results.valid {
            "valid"
        } else {
            "ANOMALIES FOUND"
        },
        results.workload,
        if results.nemesis.is_empty() {
            "none".to_string()
        } else {
            results.nemesis.join(",")
        },
        results.nodes,
        results.transport,
        results.seed
    );
    println!("operations: {} ok, {} fail, {} info", c.ok, c.fail, c.info);
    for verdict in &results.verdicts {
        println!(
            "  {:<12} {}{}",
            verdict.checker,
            if verdict.valid { "valid" } else { "INVALID" },
            if verdict.notes.is_empty() {
                String::new()
            } else {
                format!(" ({})", verdict.notes.join("; "))
            }
        );
    }
    for (class, count) in &results.anomalies {
        println!("  anomaly {class}: {count}");
    }
    for lost in results.lost_writes.iter().take(10) {
        println!("  lost: {lost}");
    }
    for fault in &results.faults {
        println!(
            "  fault {:>6.1}-{:<6} {}: availability {}, recovered after {}",
            fault.start_s,
            fault
                .stop_s
                .map_or("end".to_string(), |s| format!("{s:.1} s")),
            fault.detail,
            fault
                .availability
                .map_or("-".to_string(), |a| format!("{:.0}%", 100.0 * a)),
            fault
                .recovered_after_s
                .map_or("-".to_string(), |s| format!("{s:.2} s")),
        );
    }
    println!(
        "history, results and report: {}",
        out.join("report.html").display()
    );
}
