//! `acre idle-cpu`: starts a cluster of node processes (`acre cluster up`), leaves it idle, and
//! reports the CPU time its processes used. The target is under 2% of one core (docs/ARCHITECTURE.md, "Idle CPU"):
//! workers must sleep on their doorbells, the TCP NIC threads in epoll, and the ofi NIC threads
//! on their completion queues.

use crate::launch::{self, DownArgs, UpArgs};
use acre::cluster::{CLUSTER_FILE, ClusterFile};
use acre::engine::procfs;
use anyhow::Context;
use std::io::Write as _;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::{Duration, Instant};

/// Share of one core an idle cluster may use.
const IDLE_CORE_SHARE_MAX: f64 = 0.02;

#[derive(clap::Args)]
pub struct IdleArgs {
    /// Transport of the node processes: shm, tcp or ofi (in an acre built with
    /// `--features ofi`).
    #[arg(long, default_value = "shm", value_parser = ["shm", "tcp", "ofi"])]
    transport: String,
    /// With --transport ofi: the libfabric provider (default tcp;ofi_rxm).
    #[arg(long, value_name = "PROVIDER")]
    ofi_provider: Option<String>,
    /// How long to watch the idle cluster.
    #[arg(long, default_value_t = 30)]
    seconds: u64,
    /// Number of node processes.
    #[arg(long, default_value_t = 3)]
    nodes: u16,
    /// Length of the CM's leases, in milliseconds (renewals every fifth of it).
    #[arg(long, default_value_t = launch::LEASE_MS_DEFAULT)]
    lease_ms: u64,
    /// The cluster directory (created and removed).
    #[arg(long, default_value = "/dev/shm/acre-idle")]
    dir: PathBuf,
}

pub fn run(args: &IdleArgs) -> anyhow::Result<ExitCode> {
    let mut out = crate::output::stdout();
    anyhow::ensure!(args.seconds > 0, "--seconds must be at least 1");
    let up = UpArgs {
        nodes: args.nodes,
        transport: args.transport.clone(),
        ofi_provider: args.ofi_provider.clone(),
        ofi_transfer_threshold: None,
        dir: args.dir.clone(),
        clients: 1,
        f: None,
        regions_per_node: 1,
        region_bytes: 16 << 20,
        block_bytes: 1 << 20,
        ring_bytes: 1 << 20,
        persist: "auto".into(),
        cm: None,
        cm_processes: 0,
        backup_only: 0,
        lease_ms: args.lease_ms,
        commit: "one-sided".into(),
        clock_control: false,
        netns: None,
        netns_subnet: None,
    };
    launch::up(&up)?;
    let down = DownArgs {
        purge: true,
        dir: args.dir.clone(),
    };
    let measured = measure(args);
    launch::down(&down)?;
    let (used, elapsed) = measured?;
    let share = used.as_secs_f64() / elapsed.as_secs_f64();
    writeln!(
        out,
        "idle {}-node {} cluster: {:.3} s CPU in {:.1} s = {:.3}% of one core (target < {:.0}%)",
        args.nodes,
        args.transport,
        used.as_secs_f64(),
        elapsed.as_secs_f64(),
        share * 100.0,
        IDLE_CORE_SHARE_MAX * 100.0
    )?;
    Ok(if share < IDLE_CORE_SHARE_MAX {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(1)
    })
}

fn measure(args: &IdleArgs) -> anyhow::Result<(Duration, Duration)> {
    let file = ClusterFile::read(&args.dir.join(CLUSTER_FILE))?;
    // Let start-up work finish before measuring.
    std::thread::sleep(Duration::from_secs(1));
    let pids: Vec<u32> = launch::running_nodes(&args.dir, Some(&file))
        .into_iter()
        .map(|(_, pid)| pid)
        .collect();
    let cpu = || -> anyhow::Result<Duration> {
        pids.iter()
            .map(|&pid| procfs::cpu_time(pid).with_context(|| format!("read CPU time of {pid}")))
            .sum()
    };
    let before = cpu()?;
    let start = Instant::now();
    std::thread::sleep(Duration::from_secs(args.seconds));
    Ok((cpu()? - before, start.elapsed()))
}
