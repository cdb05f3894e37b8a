//! The `acre` command line: the demo, node processes, local clusters, and the bank workload.

mod bench;
mod bench_failover;
mod bench_recopy;
mod bench_tpcc;
mod bench_ycsb;
mod demo;
mod idle;
mod jepsen;
mod launch;
mod output;
mod rejoin;

use acre::db::NodeId;
use acre::engine::signal::Termination;
use anyhow::Context;
use clap::error::ErrorKind;
use clap::{Parser, Subcommand};
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;

#[derive(Parser)]
#[command(
    name = "acre",
    version,
    about = "Acre: a FaRM-style transactional distributed memory engine"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run concurrent bank transfers with audits on a 3-node embedded cluster (3 replicas); with
    /// --failure, on node processes with a CM, killing a primary midway and showing the recovery.
    Demo(demo::DemoArgs),
    /// Run the bank workload against a cluster started by `acre cluster up`.
    Bank(demo::BankArgs),
    /// Start, inspect or stop a cluster of node processes on this host.
    #[command(subcommand)]
    Cluster(ClusterCommand),
    /// Run one node process of a cluster until SIGTERM or SIGINT (`acre cluster up` starts these).
    Node {
        /// The cluster file (`cluster.toml` in the cluster directory).
        #[arg(long)]
        cluster: PathBuf,
        /// This node's id in the cluster file.
        #[arg(long)]
        id: u16,
        /// Join a running cluster as a new memory node whose id no configuration names yet
        /// (`acre cluster add-node` starts these, then asks the configuration manager to add
        /// it).
        #[arg(long)]
        join: bool,
        /// With --join: the node's failure domain (a domain of its own if not given).
        #[arg(long, requires = "join")]
        domain: Option<String>,
        /// Start again from the region copies and logs of this node's earlier run (`acre
        /// cluster up` on a stopped cluster's directory starts these, then asks the
        /// configuration manager for the restart configuration).
        #[arg(long, conflicts_with = "join")]
        restart: bool,
        /// With --restart: the rest of the cluster runs meanwhile (`acre cluster up` on a
        /// running cluster that lost this node's process). A primary copy the node cannot vouch
        /// for then fails the start instead of being emptied where the running processes read
        /// it; the node comes back as a new node once the CM removed it.
        #[arg(long, requires = "restart")]
        beside_running: bool,
    },
    /// Run one standalone replica of a cluster's configuration manager until SIGTERM or SIGINT:
    /// a CM replica with no memory (`acre cluster up --cm-processes K` starts these).
    Cm {
        /// The cluster file (`cluster.toml` in the cluster directory).
        #[arg(long)]
        cluster: PathBuf,
        /// This replica's id: one of the cluster file's `cm_replicas` that is neither a memory
        /// node nor a client.
        #[arg(long)]
        id: u16,
    },
    /// Start a cluster of node processes, leave it idle, and report the CPU time it uses.
    IdleCpu(idle::IdleArgs),
    /// The fault-injection harness: a cluster of node processes under faults (kills, pauses,
    /// clock skew, damaged logs) while clients record every operation, then the history
    /// checked (exit 0: valid, 1: anomalies found, 2: bad usage or the run could not be done).
    Jepsen(jepsen::JepsenArgs),
    /// One client process of `acre jepsen --client-processes`: runs the operations it reads on
    /// stdin (JSON lines) against the cluster and writes their completions on stdout.
    #[command(hide = true)]
    JepsenClient {
        /// The cluster file.
        #[arg(long)]
        cluster: PathBuf,
        /// The workload's objects (JSON, written by the harness).
        #[arg(long)]
        objects: PathBuf,
    },
    /// Benchmarks that print numbers.
    #[command(subcommand)]
    Bench(BenchCommand),
}

#[derive(Subcommand)]
enum BenchCommand {
    /// Bank transfers and read-only transactions against Acre, Redis or PostgreSQL: committed
    /// and aborted per second, p50/p99/p99.9 latency per thread count.
    ///
    /// Every target gets the same accounts, the same transfers of 1 to 10 between random
    /// accounts (from --seed) and its total checked after every row. An attempt that aborts
    /// (an Acre conflict, a changed WATCHed key, a PostgreSQL serialization failure or
    /// deadlock) is counted in aborted/s and the same transfer retried after a jittered
    /// backoff; latency runs from the first attempt to the commit. Redis runs the transfer as
    /// a Lua script (EVALSHA) and as WATCH/MULTI/EXEC; PostgreSQL as a SERIALIZABLE
    /// transaction of prepared statements in two round trips. benches/bank-vs-peers.sh runs
    /// all three side by side.
    Bank(bench::BankBenchArgs),
    /// YCSB's core workloads (a-f) against Acre or Redis: throughput and latency percentiles.
    Ycsb(bench_ycsb::YcsbArgs),
    /// TPC-C's full mix (45/43/4/4/4, no think times) against Acre or PostgreSQL: new-order/s,
    /// tpmC, committed and aborted per transaction, latency percentiles, and the spec's
    /// consistency conditions checked after the load and after the run (exit 1 if violated).
    Tpcc(bench_tpcc::TpccArgs),
    /// Kills of a backup-only node, a primary or the CM leader, each on a fresh cluster of node
    /// processes: milliseconds from the SIGKILL to the suspicion, to the configuration without
    /// the node committed, and to the first commit again on a region that kept its primary
    /// (median, p99, max per victim kind; exit 1 if a kill was not reconfigured in time or a
    /// cluster could not be set up).
    Failover(bench_failover::FailoverArgs),
    /// Data re-replication after a node's loss on a cluster of node processes filled with
    /// --data-mib of objects: bytes of regions copied, the time from the configuration that
    /// starts the copies to the last copy complete, the rate, and the foreground's bank
    /// transfers per 100 ms before, during and after the copies (exit 1 if the copies do not
    /// complete in time).
    Recopy(bench_recopy::RecopyArgs),
}

#[derive(Subcommand)]
enum ClusterCommand {
    /// Start node processes and write the cluster file.
    Up(launch::UpArgs),
    /// Show the nodes and regions of a cluster.
    Status(launch::DirArgs),
    /// Stop every node of a cluster; its data stays unless --purge.
    Down(launch::DownArgs),
    /// SIGKILL one memory node (to watch the configuration manager remove it), or one
    /// standalone CM replica (to watch another replica take over as CM).
    Kill(launch::KillArgs),
    /// Remove one memory node gracefully through the configuration manager.
    RemoveNode(launch::KillArgs),
    /// Start a new memory node process and have the configuration manager add it.
    AddNode(launch::AddNodeArgs),
}

fn main() -> ExitCode {
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        // --help, --version, and a command without its subcommand: clap prints the help.
        Err(error)
            if !error.use_stderr()
                || error.kind() == ErrorKind::DisplayHelpOnMissingArgumentOrSubcommand =>
        {
            error.exit()
        }
        Err(error) => {
            // Usage errors get one line, like every other bad input: clap's first paragraph,
            // which lists what it names on the lines after a colon (`the following required
            // arguments were not provided:` / `--failure`).
            let rendered = error.render().to_string();
            let first = rendered
                .lines()
                .take_while(|line| !line.trim().is_empty())
                .map(str::trim)
                .collect::<Vec<_>>()
                .join(" ");
            eprintln!("acre: {} (see --help)", first.trim_start_matches("error: "));
            return ExitCode::from(2);
        }
    };
    // The libraries report what they handle through `tracing`; their messages go to stderr,
    // which `acre cluster up` points at each node's `n<id>.log`. The harness's clients would
    // drown its progress lines in what each of them handles: it shows their warnings only.
    let level = match cli.command {
        Command::Jepsen(_) | Command::JepsenClient { .. } => tracing::Level::WARN,
        _ => tracing::Level::INFO,
    };
    tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_max_level(level)
        .with_target(false)
        .init();
    let result = match cli.command {
        Command::Demo(args) => watch_termination().and_then(|t| demo::demo(&args, &t)),
        Command::Bank(args) => watch_termination().and_then(|t| demo::bank(&args, &t)),
        Command::Cluster(ClusterCommand::Up(args)) => launch::up(&args),
        Command::Cluster(ClusterCommand::Status(args)) => launch::status(&args),
        Command::Cluster(ClusterCommand::Down(args)) => launch::down(&args),
        Command::Cluster(ClusterCommand::Kill(args)) => launch::kill(&args),
        Command::Cluster(ClusterCommand::RemoveNode(args)) => launch::remove_node(&args),
        Command::Cluster(ClusterCommand::AddNode(args)) => launch::add_node(&args),
        Command::Node {
            cluster,
            id,
            join,
            domain,
            restart,
            beside_running,
        } => run_node(
            &cluster,
            NodeId(id),
            join.then_some(domain),
            restart.then_some(beside_running),
        ),
        Command::Cm { cluster, id } => run_cm(&cluster, NodeId(id)),
        Command::IdleCpu(args) => idle::run(&args),
        Command::Jepsen(args) => watch_termination().and_then(|t| jepsen::run(&args, &t)),
        Command::JepsenClient { cluster, objects } => {
            acre_jepsen::client::serve(&cluster, &objects)
                .map(|()| ExitCode::SUCCESS)
                .map_err(anyhow::Error::msg)
        }
        Command::Bench(BenchCommand::Bank(args)) => {
            watch_termination().and_then(|t| bench::run(&args, &t))
        }
        Command::Bench(BenchCommand::Ycsb(args)) => {
            watch_termination().and_then(|t| bench_ycsb::run(&args, &t))
        }
        Command::Bench(BenchCommand::Tpcc(args)) => {
            watch_termination().and_then(|t| bench_tpcc::run(&args, &t))
        }
        Command::Bench(BenchCommand::Failover(args)) => {
            watch_termination().and_then(|t| bench_failover::run(&args, &t))
        }
        Command::Bench(BenchCommand::Recopy(args)) => {
            watch_termination().and_then(|t| bench_recopy::run(&args, &t))
        }
    };
    match result {
        Ok(code) => code,
        // The reader of stdout is gone (`acre cluster status | head -1`): nobody is left to
        // tell, so exit quietly, as ripgrep and other filters do.
        Err(error) if output::is_stdout_closed(&error) => ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("acre: {}", one_line(&error));
            ExitCode::from(2)
        }
    }
}

/// `error` and its causes on one line. The libraries' errors name their cause in their own
/// message (so that printing one alone says everything), so a cause whose text the line holds
/// already is not repeated.
fn one_line(error: &anyhow::Error) -> String {
    let mut line = String::new();
    for cause in error.chain() {
        let text = cause.to_string();
        let text = text.split_whitespace().collect::<Vec<_>>().join(" ");
        if line.contains(&text) {
            continue;
        }
        if !line.is_empty() {
            line.push_str(": ");
        }
        line.push_str(&text);
    }
    line
}

/// Takes SIGINT and SIGTERM from here on as a request to stop (see
/// `acre::engine::signal::Termination`): a client command winds its work down, lets its
/// transactions finish and drops its `Db` (which sends its queued truncations) instead of dying
/// with locks and records held at the memory nodes. Called before the command starts any thread.
fn watch_termination() -> anyhow::Result<Arc<Termination>> {
    Termination::watch().context("watch for SIGINT and SIGTERM")
}

/// `join` is `Some(domain)` for a node joining a running cluster (`acre node --join`).
/// `acre node`: `restart` is `Some(whether the rest of the cluster runs)` with `--restart`.
fn run_node(
    cluster_file: &std::path::Path,
    id: NodeId,
    join: Option<Option<String>>,
    restart: Option<bool>,
) -> anyhow::Result<ExitCode> {
    // Block the termination signals before any thread starts, so only `wait_for_termination`
    // receives them and shutdown is ordinary code.
    acre::engine::signal::block_termination().context("block termination signals")?;
    let node = match join {
        None => match restart {
            Some(false) => acre::cluster::ProcessNode::restart(cluster_file, id),
            Some(true) => acre::cluster::ProcessNode::restart_beside_running(cluster_file, id),
            None => acre::cluster::ProcessNode::start(cluster_file, id),
        },
        Some(domain) => acre::cluster::ProcessNode::join(cluster_file, id, domain),
    }
    .with_context(|| format!("start {id}"))?;
    let node = Arc::new(node);
    let file = acre::cluster::ClusterFile::read(cluster_file)?;
    // The CM's machinery, when the cluster has one (memory nodes only: `acre node` runs no
    // client).
    let agent = match &file.cm {
        Some(settings) if node.is_memory_node() => Some(
            acre::cluster::CmAgent::start(
                node.clone(),
                &file,
                settings,
                // The node's clock: controlled by its control file if the harness left one.
                node.txn().clock().clone(),
            )
            .with_context(|| format!("start {id}'s part in the configuration manager"))?,
        ),
        _ => None,
    };
    match node.serving_at()? {
        // Where it listens: loopback, or its network namespace's address (`--netns`).
        Some(at) => tracing::info!(node = %id, "serving (pid {}) on {at}", std::process::id()),
        None => tracing::info!(node = %id, "serving (pid {})", std::process::id()),
    }
    acre::engine::signal::wait_for_termination().context("wait for a signal")?;
    drop(agent);
    match Arc::try_unwrap(node) {
        Ok(node) => node.stop(),
        Err(_) => {
            tracing::warn!(node = %id, "a thread still holds the node; it stops with the process")
        }
    }
    tracing::info!(node = %id, "stopped");
    Ok(ExitCode::SUCCESS)
}

/// `acre cm`: one standalone CM replica, run as a memory node's process runs its part in the
/// configuration manager, minus the memory (docs/failures.md#the-cm-in-node-processes).
fn run_cm(cluster_file: &std::path::Path, id: NodeId) -> anyhow::Result<ExitCode> {
    // As in `run_node`: the termination signals are blocked before any thread starts.
    acre::engine::signal::block_termination().context("block termination signals")?;
    let (cm, file) = acre::cluster::StandaloneCm::start(cluster_file, id)
        .with_context(|| format!("start CM replica {id}"))?;
    let cm = Arc::new(cm);
    let settings = file
        .cm
        .clone()
        .expect("StandaloneCm::start refuses a cluster without a CM");
    // The process's clock: controlled by its control file if the harness left one, as a
    // node's is.
    let agent = acre::engine::clock::node_clock(cm.dir(), id)
        .map_err(anyhow::Error::from)
        .and_then(|clock| {
            acre::cluster::CmAgent::start_standalone(cm.clone(), &file, &settings, clock)
                .map_err(anyhow::Error::from)
        });
    let agent = match agent {
        Ok(agent) => agent,
        Err(error) => {
            cm.stop();
            return Err(error).with_context(|| format!("start CM replica {id}"));
        }
    };
    tracing::info!(node = %id, "serving as a standalone CM replica (pid {})", std::process::id());
    let waited = acre::engine::signal::wait_for_termination().context("wait for a signal");
    agent.stop();
    cm.stop();
    waited?;
    tracing::info!(node = %id, "stopped");
    Ok(ExitCode::SUCCESS)
}
