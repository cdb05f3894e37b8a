//! `acre idle-cpu`: starts a 3-node cluster of processes, leaves it idle, and reports the CPU time
//! its processes used. The target is under 2% of one core (DESIGN.md §10): pollers must sleep
//! on their doorbells, and the TCP NIC threads in epoll.

use crate::launch::ProcessCluster;
use acre::engine::node::TransportKind;
use acre::engine::{directory, procfs};
use anyhow::Context;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::{Duration, Instant};

/// Share of one core an idle cluster may use.
const IDLE_CORE_SHARE_MAX: f64 = 0.02;

#[derive(clap::Args)]
pub struct IdleArgs {
    /// Transport of the node processes: shm or tcp.
    #[arg(long, default_value = "shm", value_parser = ["shm", "tcp"])]
    transport: String,
    /// How long to watch the idle cluster.
    #[arg(long, default_value_t = 30)]
    seconds: u64,
    /// Number of node processes.
    #[arg(long, default_value_t = 3)]
    nodes: u16,
    /// Parent directory of the cluster directory.
    #[arg(long, default_value = directory::CLUSTER_DIR_PARENT_DEFAULT)]
    dir: PathBuf,
}

pub fn run(args: &IdleArgs) -> anyhow::Result<ExitCode> {
    anyhow::ensure!(args.seconds > 0, "--seconds must be at least 1");
    anyhow::ensure!(args.nodes > 0, "--nodes must be at least 1");
    let kind = if args.transport == "tcp" {
        TransportKind::Tcp
    } else {
        TransportKind::Shm
    };
    let mut cluster = ProcessCluster::start(kind, &args.dir, "idle", args.nodes)?;
    cluster.wait_ready()?;
    // Let start-up work finish before measuring.
    std::thread::sleep(Duration::from_secs(1));
    let pids = cluster.pids();
    let cpu = || -> anyhow::Result<Duration> {
        pids.iter()
            .map(|&pid| procfs::cpu_time(pid).with_context(|| format!("read CPU time of {pid}")))
            .sum()
    };
    let before = cpu()?;
    let start = Instant::now();
    std::thread::sleep(Duration::from_secs(args.seconds));
    let used = cpu()? - before;
    let elapsed = start.elapsed();
    cluster.stop()?;
    let share = used.as_secs_f64() / elapsed.as_secs_f64();
    println!(
        "idle {}-node {} cluster: {:.3} s CPU in {:.1} s = {:.3}% of one core (target < {:.0}%)",
        args.nodes,
        kind.name(),
        used.as_secs_f64(),
        elapsed.as_secs_f64(),
        share * 100.0,
        IDLE_CORE_SHARE_MAX * 100.0
    );
    Ok(if share < IDLE_CORE_SHARE_MAX {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(1)
    })
}
