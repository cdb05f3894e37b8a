//! `acre cluster up | status | down`: a cluster of node processes on this host. `up` writes the
//! cluster file into a cluster directory and starts one detached `acre node` process per node
//! and one `acre cm` process per standalone CM replica (`--cm-processes`; each one's output
//! goes to `n<id>.log` there); `status` asks every node whether it answers and reads
//! its rings in the cluster files;
//! `down` sends SIGTERM to every node and waits for them to exit. The nodes' region copies and
//! rings stay in the directory (they are what recovery will read) unless `down --purge`; `up`
//! on a directory that holds them restarts the cluster from them ([`restart`]), and `up` on a
//! running cluster brings back the nodes it lost ([`crate::rejoin`]).

use acre::cluster::{self, Answer, CLIENT_ID_BASE, CLUSTER_FILE, ClusterFile, Observation};
use acre::engine::addr::NodeId;
use acre::engine::directory::{self, NodeManifest};
use acre::engine::fabric::tcp::ClusterSecret;
use acre::engine::fabric::transport_kind::{OFI_PROVIDER_DEFAULT, OpenError, TransportKind};
use acre::replication::netns::NetnsPlacement;
use acre::txn::config::{CommitMode, Configuration};
use anyhow::{Context, bail};
use std::io::Write as _;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, ExitCode, Stdio};
use std::time::{Duration, Instant};

/// How long nodes may take to publish their manifests.
pub const START_TIMEOUT: Duration = Duration::from_secs(30);
/// How long `down` waits for the nodes to exit after SIGTERM, besides the time they take to
/// write the block sums of their copies ([`stop_timeout`]); how long a kill waits for a process.
pub const STOP_TIMEOUT: Duration = Duration::from_secs(10);
/// The slowest rate, in bytes per second of region files, at which `down` expects the nodes
/// together to write the block sums of their copies before they exit. Measured: 3 nodes with
/// 6.9 GiB of region files (1 GiB of data, f = 1, regions of 128 MiB) took 10.1 s on a 2-core
/// machine while a build ran, about 700 MiB/s; a fixed 10 s made that `down` fail although
/// every node went on to stop cleanly.
pub const STOP_SUM_RATE_MIN: u64 = 100 << 20;

/// How long `down` waits for nodes holding `region_file_bytes` of region files in all to exit
/// after SIGTERM: [`STOP_TIMEOUT`], plus those bytes at [`STOP_SUM_RATE_MIN`].
pub fn stop_timeout(region_file_bytes: u64) -> Duration {
    STOP_TIMEOUT + Duration::from_secs_f64(region_file_bytes as f64 / STOP_SUM_RATE_MIN as f64)
}

/// The bytes of the region files (copies, rings, reply areas) in the cluster directory `dir`,
/// by their length: what the nodes sum as they stop, at most.
fn region_file_bytes(dir: &Path) -> u64 {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return 0;
    };
    entries
        .filter_map(Result::ok)
        .filter(|entry| entry.path().extension().is_some_and(|e| e == "region"))
        .filter_map(|entry| entry.metadata().ok())
        .map(|metadata| metadata.len())
        .sum()
}
/// Where `acre cluster` keeps its cluster unless told otherwise.
pub const CLUSTER_DIR_DEFAULT: &str = "/dev/shm/acre-cluster";

#[derive(clap::Args, Clone, Debug)]
pub struct UpArgs {
    /// Memory nodes to start.
    #[arg(long, default_value_t = 3)]
    pub nodes: u16,
    /// How the nodes reach each other: shm (mapped files), tcp (a NIC thread per node), or ofi
    /// (libfabric, in an acre built with `--features ofi`; docs/ofi.md).
    #[arg(long, default_value = "shm", value_parser = ["shm", "tcp", "ofi"])]
    pub transport: String,
    /// With --transport ofi: the libfabric provider (`tcp;ofi_rxm`, `sockets`, `verbs;ofi_rxm`,
    /// `efa`). Default: tcp;ofi_rxm.
    #[arg(long, value_name = "PROVIDER")]
    pub ofi_provider: Option<String>,
    /// With --transport ofi: data recovery's reads of region copies and transactions' reads of
    /// objects of 4 KiB or more go by the hybrid transfer, zero
    /// copy from BYTES and by copy below (docs/ofi.md, "Hybrid transfer"). Default: plain
    /// READs of the registered regions, which measured faster on the software providers.
    #[arg(long, value_name = "BYTES")]
    pub ofi_transfer_threshold: Option<u64>,
    /// The cluster directory.
    #[arg(long, default_value = CLUSTER_DIR_DEFAULT)]
    pub dir: PathBuf,
    /// Client ids to provide (processes that connect with `Db::connect` or `acre bank`).
    #[arg(long, default_value_t = 8)]
    pub clients: u16,
    /// Failures tolerated (backups per region); default 2 with three or more nodes.
    #[arg(long)]
    pub f: Option<usize>,
    /// Regions whose primary is each node.
    #[arg(long, default_value_t = 1)]
    pub regions_per_node: usize,
    /// Bytes of each region.
    #[arg(long, default_value_t = 64 << 20)]
    pub region_bytes: u64,
    /// Bytes of each slab block.
    #[arg(long, default_value_t = 1 << 20)]
    pub block_bytes: u64,
    /// Bytes of each log ring (one per pair of nodes).
    #[arg(long, default_value_t = 1 << 20)]
    pub ring_bytes: u64,
    /// Persistence of the files: auto, flush or msync.
    #[arg(long, default_value = "auto", value_parser = ["auto", "flush", "msync"])]
    pub persist: String,
    /// Who does the primary's part of a commit: `messages` (the primary's worker, FaRM's) or
    /// `one-sided` (the coordinator, with one-sided operations); docs/protocol.md#one-sided-commit-mode.
    #[arg(long, default_value = "one-sided", value_parser = ["messages", "one-sided"])]
    pub commit: String,
    /// Replicas of the configuration manager, a Raft group hosted by the first N node
    /// processes: 1, 3, 5 or 7, at most --nodes; 0 runs no CM (nothing notices a failure and
    /// the configuration never changes). Default: 2f+1, at most the nodes and odd (4 nodes with f = 2: 3), unless
    /// --cm-processes is given.
    #[arg(long)]
    pub cm: Option<u16>,
    /// Run the configuration manager's replicas as K standalone `acre cm` processes (1, 3, 5
    /// or 7) instead of inside node processes: they hold no memory, and their ids follow the
    /// memory nodes' and the clients'. Not with --cm N > 0.
    #[arg(long, default_value_t = 0)]
    pub cm_processes: u16,
    /// Nodes, the last ones, that hold backups only and no primary (to watch a backup-only
    /// node fail, or keep room for new backups).
    #[arg(long, default_value_t = 0)]
    pub backup_only: u16,
    /// Length of the leases between the CM and every memory node, in milliseconds: a node
    /// silent for this long is suspected and removed from the configuration.
    #[arg(long, default_value_t = LEASE_MS_DEFAULT)]
    pub lease_ms: u64,
    /// Give every node and standalone CM process a clock control file (`n<id>.clock` in the
    /// directory) before it starts, through which another process can skew that process's
    /// clock: what `acre jepsen`'s clock nemesis does. Nodes started later (`add-node`) run on
    /// the system clock.
    #[arg(long)]
    pub clock_control: bool,
    /// Run each node process in network namespace PREFIX-n<id> (`ip netns exec`), bound to
    /// address <subnet>.<id> instead of 127.0.0.1 (tcp only; the placement is kept in
    /// `netns.toml`, so restarts and `add-node` follow it). The namespaces must exist, each
    /// reachable from this one: `acre jepsen` makes them for its partition nemesis.
    #[arg(long, value_name = "PREFIX", requires = "netns_subnet")]
    pub netns: Option<String>,
    /// The /24 of the namespaces' addresses, as 10.77.1.0 (with --netns).
    #[arg(long, value_name = "ADDRESS", requires = "netns")]
    pub netns_subnet: Option<std::net::Ipv4Addr>,
}

/// The default lease (docs/failures.md#leases says how it was chosen): ten times the shortest
/// lease that showed no false expiry here (50 ms), and long enough that renewals keep an idle
/// 5-node cluster under 2% of a core.
pub const LEASE_MS_DEFAULT: u64 = 500;
/// Where `ip netns add` names namespaces.
const NETNS_RUN_DIR: &str = "/run/netns";
/// How long `up` waits for the CM to commit its first configuration.
pub const CM_READY_TIMEOUT: Duration = Duration::from_secs(30);

#[derive(clap::Args, Clone, Debug)]
pub struct DirArgs {
    /// The cluster directory.
    #[arg(long, default_value = CLUSTER_DIR_DEFAULT)]
    pub dir: PathBuf,
}

#[derive(clap::Args, Clone, Debug)]
pub struct KillArgs {
    /// The cluster directory.
    #[arg(long, default_value = CLUSTER_DIR_DEFAULT)]
    pub dir: PathBuf,
    /// The memory node to kill (its id: 3 or n3).
    pub node: String,
}

#[derive(clap::Args, Clone, Debug)]
pub struct DownArgs {
    /// The cluster directory.
    #[arg(long, default_value = CLUSTER_DIR_DEFAULT)]
    pub dir: PathBuf,
    /// Also remove the directory with the nodes' data (region copies, rings, logs).
    #[arg(long)]
    pub purge: bool,
}

/// Whether `node` is a memory node of the cluster: one of `file`'s nodes, or, when the cluster
/// file is unreadable, an id below the client ids (`up` numbers memory nodes from 1).
fn is_memory_node(node: NodeId, file: Option<&ClusterFile>) -> bool {
    // A node `add-node` started is in no cluster file, and its id below the clients'.
    file.is_some_and(|file| file.config.nodes.contains(&node))
        || (node.0 < CLIENT_ID_BASE && file.is_none_or(|f| !f.config.clients.contains(&node)))
}

/// Whether `node`, whose manifest is `manifest`, is a standalone CM replica of the cluster (an
/// `acre cm` process): one of `file`'s, or, when the cluster file is unreadable, a manifest
/// with CM addresses and no memory.
fn is_cm_process(node: NodeId, manifest: &NodeManifest, file: Option<&ClusterFile>) -> bool {
    match file {
        Some(file) => file.is_standalone_cm(node),
        None => manifest.areas.is_empty() && manifest.cm_link.is_some(),
    }
}

/// The pids of the cluster's running standalone CM replicas, by id (as [`running_nodes`]).
pub fn running_cms(dir: &Path, file: Option<&ClusterFile>) -> Vec<(NodeId, u32)> {
    NodeManifest::list(dir)
        .unwrap_or_default()
        .into_iter()
        .filter_map(|node| {
            let manifest = NodeManifest::read(dir, node).ok()??;
            (is_cm_process(node, &manifest, file) && cluster::process_alive(manifest.pid))
                .then_some((node, manifest.pid))
        })
        .collect()
}

/// The pids of the cluster's running memory nodes, by node. Found through the manifests in
/// `dir`, so a cluster whose cluster file no longer parses (`file` is `None`) can still be seen
/// and stopped.
pub fn running_nodes(dir: &Path, file: Option<&ClusterFile>) -> Vec<(NodeId, u32)> {
    NodeManifest::list(dir)
        .unwrap_or_default()
        .into_iter()
        .filter(|&node| is_memory_node(node, file))
        .filter_map(|node| {
            let manifest = NodeManifest::read(dir, node).ok()??;
            cluster::process_alive(manifest.pid).then_some((node, manifest.pid))
        })
        .collect()
}

/// The cluster file `up` writes for `args`, validated: a bad value is refused before the
/// directory is touched or any node process starts.
fn cluster_file(args: &UpArgs) -> anyhow::Result<ClusterFile> {
    anyhow::ensure!(args.nodes > 0, "--nodes must be at least 1");
    anyhow::ensure!(
        args.nodes < CLIENT_ID_BASE,
        "--nodes must be below {CLIENT_ID_BASE}"
    );
    let nodes: Vec<NodeId> = (1..=args.nodes).map(NodeId).collect();
    let clients: Vec<NodeId> = (0..args.clients)
        .map(|c| NodeId(CLIENT_ID_BASE + c))
        .collect();
    let f = args
        .f
        .unwrap_or_else(|| Configuration::default_f(nodes.len()));
    let cm_processes = args.cm_processes;
    if cm_processes > 0
        && let Some(count) = args.cm
        && count > 0
    {
        bail!(
            "--cm {count} and --cm-processes {cm_processes}: the CM's replicas run either inside \
             node processes (--cm) or as standalone `acre cm` processes (--cm-processes), not both"
        );
    }
    anyhow::ensure!(
        cm_processes % 2 == 1 || cm_processes == 0,
        "--cm-processes {cm_processes}: a Raft group of an even size tolerates no more failures \
         than one replica fewer; use 1, 3, 5 or 7"
    );
    // Below the observers' id, which no member or replica may take.
    let cm_processes_first = u32::from(CLIENT_ID_BASE) + u32::from(args.clients);
    anyhow::ensure!(
        cm_processes_first + u32::from(cm_processes) < u32::from(NodeId::OBSERVER.0),
        "--clients {} and --cm-processes {cm_processes} leave no ids for the CM processes",
        args.clients
    );
    let cm_processes_first = u16::try_from(cm_processes_first).expect("checked above");
    let cm_replicas = match args.cm {
        Some(count) => count,
        None if cm_processes > 0 => 0,
        None => {
            // 2f + 1, as many as the nodes allow, and odd: an even group tolerates no more
            // failures than one replica fewer (4 nodes with f = 2 get 3).
            let count = u16::try_from(2 * f + 1).unwrap_or(u16::MAX).min(args.nodes);
            if count % 2 == 0 { count - 1 } else { count }
        }
    };
    anyhow::ensure!(
        cm_replicas <= args.nodes,
        "--cm {cm_replicas} is more than the {} nodes: the CM's replicas run in node processes",
        args.nodes
    );
    anyhow::ensure!(
        cm_replicas == 0 || cm_replicas % 2 == 1,
        "--cm {cm_replicas}: a Raft group of an even size tolerates no more failures than one \
         replica fewer; use 1, 3, 5 or 7 (or 0 for no CM)"
    );
    anyhow::ensure!(
        args.backup_only < args.nodes,
        "--backup-only {} leaves no node for the primaries (--nodes {})",
        args.backup_only,
        args.nodes
    );
    let mut config = Configuration::place_primaries_on(
        1,
        nodes.clone(),
        usize::from(args.nodes - args.backup_only),
        clients,
        args.regions_per_node,
        f,
        args.region_bytes,
        args.block_bytes,
    )?;
    config.commit = commit_mode(&args.commit)?;
    config.cm_replicas = nodes[..usize::from(cm_replicas)].to_vec();
    // Standalone replicas: the ids after the memory nodes' and the clients'.
    config
        .cm_replicas
        .extend((0..cm_processes).map(|i| NodeId(cm_processes_first + i)));
    let transport = transport_kind(&args.transport)?;
    anyhow::ensure!(
        args.ofi_provider.is_none() || transport == TransportKind::Ofi,
        "--ofi-provider needs --transport ofi"
    );
    anyhow::ensure!(
        args.ofi_transfer_threshold.is_none() || transport == TransportKind::Ofi,
        "--ofi-transfer-threshold needs --transport ofi"
    );
    let file = ClusterFile {
        transport,
        persist: args.persist.clone(),
        ring_bytes: args.ring_bytes,
        cm: (cm_replicas > 0 || cm_processes > 0).then_some(cluster::CmSettings {
            lease_ms: args.lease_ms,
        }),
        ofi: (transport == TransportKind::Ofi).then(|| cluster::OfiSettings {
            provider: args
                .ofi_provider
                .clone()
                .unwrap_or_else(|| OFI_PROVIDER_DEFAULT.to_string()),
            transfer_threshold_bytes: args.ofi_transfer_threshold,
        }),
        config,
    };
    file.validate()?;
    Ok(file)
}

/// The transport `name` (as `--transport` spells it), if this acre can run it.
pub fn transport_kind(name: &str) -> anyhow::Result<TransportKind> {
    let kind = match name {
        "shm" => TransportKind::Shm,
        "tcp" => TransportKind::Tcp,
        "ofi" => TransportKind::Ofi,
        other => bail!("unknown transport {other:?}: expected shm, tcp or ofi"),
    };
    anyhow::ensure!(kind.is_built(), "{}", OpenError::OfiNotBuilt);
    Ok(kind)
}

/// Where `up` places the node processes for `args`: in namespaces (`--netns`), validated, or
/// on loopback.
fn netns_placement(args: &UpArgs) -> anyhow::Result<Option<NetnsPlacement>> {
    let (Some(prefix), Some(subnet)) = (&args.netns, args.netns_subnet) else {
        return Ok(None);
    };
    anyhow::ensure!(
        args.transport != "shm",
        "--netns needs --transport tcp or ofi: over shm the nodes share memory files, not a \
         network"
    );
    anyhow::ensure!(
        args.cm_processes == 0,
        "--netns with --cm-processes: standalone CM replicas do not run in namespaces; host \
         the CM's replicas in the node processes (--cm)"
    );
    let placement = NetnsPlacement {
        prefix: prefix.clone(),
        subnet,
    };
    placement.validate()?;
    Ok(Some(placement))
}

pub fn up(args: &UpArgs) -> anyhow::Result<ExitCode> {
    let mut out = crate::output::stdout();
    let file = cluster_file(args)?;
    let placement = netns_placement(args)?;
    let dir = &args.dir;
    let file_path = dir.join(CLUSTER_FILE);
    let existing = ClusterFile::read(&file_path).ok();
    if !running_nodes(dir, existing.as_ref()).is_empty()
        || !running_cms(dir, existing.as_ref()).is_empty()
    {
        // Some of its processes run: bring back those that do not, if a CM can say which.
        if let Some(existing) = existing.filter(|f| f.cm.is_some()) {
            return crate::rejoin::up_running(dir, existing);
        }
        bail!(
            "a cluster is already running in {}: run `acre cluster down --dir {}` first",
            dir.display(),
            dir.display()
        );
    }
    if let Some(existing) = existing.filter(|f| f.cm.is_some())
        && !cluster::kept_data_in(dir).unwrap_or_default().is_empty()
    {
        let config = cluster::current_configuration(dir, &existing);
        return restart(
            dir,
            &existing,
            &config.nodes,
            &existing.standalone_cms(),
            &[],
        );
    }
    if dir.exists() {
        check_replaceable(dir)?;
        std::fs::remove_dir_all(dir)
            .with_context(|| format!("remove the old cluster in {}", dir.display()))?;
    }
    directory::create_cluster_dir(dir).with_context(|| format!("create {}", dir.display()))?;
    if file.transport == TransportKind::Tcp || file.cm.is_some() {
        ClusterSecret::generate()
            .write_file(&dir.join(directory::SECRET_FILE))
            .context("write the cluster secret")?;
    }
    file.write(&file_path)?;
    if let Some(placement) = &placement {
        placement.write(dir)?;
    }
    if args.clock_control {
        for node in file
            .config
            .nodes
            .iter()
            .copied()
            .chain(file.standalone_cms())
        {
            let path = acre::engine::clock::control_file_path(dir, node);
            acre::engine::clock::ClockControlFile::create(&path)
                .with_context(|| format!("create {}", path.display()))?;
        }
    }
    let mut children = Vec::new();
    let started = start_nodes(dir, &file, &mut children);
    let waited = started.and_then(|()| {
        let processes: Vec<NodeId> = file
            .config
            .nodes
            .iter()
            .copied()
            .chain(file.standalone_cms())
            .collect();
        cluster::wait_for_manifests(dir, processes.into_iter(), START_TIMEOUT, |node| {
            let (_, child) = children.iter_mut().find(|(n, _)| *n == node)?;
            let status = child.try_wait().ok()??;
            Some(status.to_string())
        })
        .map_err(anyhow::Error::from)
    });
    let waited = waited.and_then(|()| match &file.cm {
        Some(_) => wait_for_cm(dir, &mut children).map(Some),
        None => Ok(None),
    });
    let cm_status = match waited {
        Ok(status) => status,
        Err(error) => {
            // Leave the directory (the logs say what happened) but no process.
            let _ = stop_nodes(dir, Some(&file));
            stop_children(&mut children);
            return Err(error);
        }
    };
    writeln!(
        out,
        "cluster up: {} nodes over {}, {} regions with {} replicas each, in {}",
        file.config.nodes.len(),
        file.transport.name(),
        file.config.regions.len(),
        file.config.f + 1,
        dir.display()
    )?;
    writeln!(out, "cluster file: {}", file_path.display())?;
    if let Some(status) = &cm_status {
        let standalone = file.standalone_cms();
        let replicas = if standalone.is_empty() {
            format!("{} replicas", status.replicas.len())
        } else {
            format!(
                "{} replicas, {} of them standalone `acre cm` processes",
                status.replicas.len(),
                standalone.len()
            )
        };
        writeln!(
            out,
            "configuration manager: {replicas} ({}), leader {}, configuration {} committed, \
             leases of {} ms",
            node_list(&status.replicas),
            status.leader,
            status.committed.id,
            status.lease_ms
        )?;
    }
    print_try(&mut out, dir)?;
    Ok(ExitCode::SUCCESS)
}

/// `acre cluster up` on a directory holding the data of a stopped (or killed) cluster that ran
/// a CM: restarts the memory nodes `nodes` of the CM's last configuration from their region
/// copies and logs, and the standalone CM replicas `cms`, asks the CM for the restart
/// configuration, and waits until every region serves again
/// (docs/failures.md#whole-cluster-restart). `nodes` are every memory node of that
/// configuration when the whole cluster stopped, or the ones whose processes are gone while
/// the others run (docs/failures.md#a-node-that-comes-back). Those in `beside_running` start
/// with `--beside-running`: a primary copy they cannot vouch for fails their start rather than
/// be emptied where the running processes read it.
pub(crate) fn restart(
    dir: &Path,
    file: &ClusterFile,
    nodes: &[NodeId],
    cms: &[NodeId],
    beside_running: &[NodeId],
) -> anyhow::Result<ExitCode> {
    let mut out = crate::output::stdout();
    let began = Instant::now();
    let config = cluster::current_configuration(dir, file);
    let whole = nodes == config.nodes.as_slice();
    let nodes = nodes.to_vec();
    if whole {
        writeln!(
            out,
            "restarting the stopped cluster in {}: {} from their region copies and logs, in \
             configuration {} (the cluster file's settings; the other options of `up` are not \
             used)",
            dir.display(),
            node_list(&nodes),
            config.id
        )?;
    } else {
        let processes: Vec<NodeId> = nodes.iter().chain(cms).copied().collect();
        writeln!(
            out,
            "the cluster in {} runs without {}: restarting {} from {} files, in configuration {}",
            dir.display(),
            node_list(&processes),
            if processes.len() == 1 { "it" } else { "them" },
            if processes.len() == 1 { "its" } else { "their" },
            config.id
        )?;
    }
    // Nodes start again: a node stopped alone from now on writes no block sums.
    acre::replication::sums::clear_cluster_stopping(dir)
        .with_context(|| format!("clear the stopping mark in {}", dir.display()))?;
    // The manifests the stopped processes left name dead processes and their old addresses:
    // the restarted ones would look for each other (and the launcher for them) there. None
    // of these runs (checked by the caller).
    for &node in nodes.iter().chain(cms) {
        NodeManifest::remove(dir, node)
            .with_context(|| format!("remove the manifest {node}'s stopped process left"))?;
    }
    let mut children = Vec::new();
    let restarted = (|| -> anyhow::Result<Option<cluster::CmStatusFile>> {
        for &node in &nodes {
            let mut args = vec!["--restart".to_string()];
            if beside_running.contains(&node) {
                args.push("--beside-running".to_string());
            }
            children.push((node, spawn_node(dir, "node", node, &args)?));
        }
        for &node in cms {
            children.push((node, spawn_node(dir, "cm", node, &[])?));
        }
        let processes: Vec<NodeId> = nodes.iter().chain(cms).copied().collect();
        cluster::wait_for_manifests(dir, processes.into_iter(), START_TIMEOUT, |node| {
            let (_, child) = children.iter_mut().find(|(n, _)| *n == node)?;
            let status = child.try_wait().ok()??;
            Some(status.to_string())
        })?;
        let running = began.elapsed();
        if nodes.is_empty() {
            // Only standalone CM replicas: they rejoin their Raft group by themselves, and no
            // memory node's data changes hands, so there is no restart configuration to ask.
            writeln!(
                out,
                "  {} running again after {:.0} ms",
                node_list(cms),
                running.as_secs_f64() * 1e3
            )?;
            return Ok(None);
        }
        writeln!(
            out,
            "  processes running after {:.0} ms; asking the CM for the restart configuration",
            running.as_secs_f64() * 1e3
        )?;
        // The copies the nodes found damaged (their block sums did not match): never served,
        // and the restart configuration takes them into account.
        let mut damaged = Vec::new();
        for &node in &nodes {
            let manifest =
                NodeManifest::read(dir, node).with_context(|| format!("read {node}'s manifest"))?;
            for region in manifest.map(|m| m.damaged).unwrap_or_default() {
                writeln!(
                    out,
                    "  {node}'s copy of {region} is damaged (see {}): it is not served",
                    cluster::node_log_path(dir, node).display()
                )?;
                damaged.push((node, region));
            }
        }
        let change = cluster::cm_request::Change::Restart {
            nodes: nodes.clone(),
            damaged,
        };
        let deadline = Instant::now() + REMOVAL_TIMEOUT;
        let reply = loop {
            match ask_when_idle(dir, change.clone()) {
                Ok(reply) if reply.accepted => break reply,
                // Killed during an earlier restart: its restart configuration is the one the
                // nodes started in, and they recover what it blocks.
                Ok(reply) if reply.message.contains("changes nothing") => break reply,
                Ok(reply) => {
                    // The CM removed one of them meanwhile (its lease ran out before this
                    // request): no later answer restarts it. On a running cluster the caller
                    // has it rejoin as a new node; a whole-cluster restart stops, and the
                    // next `up` goes on without it.
                    let removed = removed_since(dir, &nodes, reply.from_id);
                    if !removed.is_empty() {
                        bail!(
                            "the CM refused the restart: {}; it removed {} meanwhile",
                            reply.message,
                            node_list(&removed)
                        );
                    }
                    if Instant::now() >= deadline {
                        bail!("the CM refused the restart: {}", reply.message)
                    }
                    std::thread::sleep(Duration::from_millis(100));
                }
                Err(e) if Instant::now() >= deadline => {
                    bail!("the CM did not answer the restart request: {e}")
                }
                // No CM elected yet, or it is busy: ask again.
                _ => std::thread::sleep(Duration::from_millis(100)),
            }
        };
        // The restart configuration: the one the request installs, or the one in force.
        let restart_id = reply.from_id + u64::from(reply.accepted);
        let status = wait_for_commit(dir, "the configuration with every region active", |c| {
            c.id > restart_id
                && c.regions
                    .iter()
                    .all(|p| p.state != acre::txn::RegionState::Blocked)
        })?;
        Ok(Some(status))
    })();
    let status = match restarted {
        Ok(Some(status)) => status,
        Ok(None) => return Ok(ExitCode::SUCCESS),
        Err(error) => {
            // Stop what this restart started; the processes that ran before run on.
            if whole {
                let _ = stop_nodes(dir, Some(file));
            }
            stop_children(&mut children);
            return Err(error);
        }
    };
    let lost: Vec<String> = status
        .committed
        .regions
        .iter()
        .filter(|p| p.state == acre::txn::RegionState::Lost)
        .map(|p| p.region.to_string())
        .collect();
    if !lost.is_empty() {
        // The processes run on (the other regions serve), but the restart did not bring
        // everything back: say so and fail.
        bail!(
            "the cluster in {} restarted in configuration {}, but {} {} lost: no replica of \
             {} is left in the configuration (see `acre cluster status --dir {}` and the nodes' \
             logs)",
            dir.display(),
            status.committed.id,
            lost.join(", "),
            if lost.len() == 1 { "is" } else { "are" },
            if lost.len() == 1 { "it" } else { "them" },
            dir.display()
        );
    }
    writeln!(
        out,
        "cluster up: restarted; every region serves again in configuration {}, {:.0} ms after \
         the start",
        status.committed.id,
        began.elapsed().as_secs_f64() * 1e3,
    )?;
    let copying: usize = status
        .committed
        .regions
        .iter()
        .map(|p| p.copying.len())
        .sum();
    if copying > 0 {
        writeln!(
            out,
            "  the backups re-copy their regions from the primaries in the background ({copying} \
             copies): progress in `acre cluster status --dir {}`",
            dir.display()
        )?;
    }
    print_try(&mut out, dir)?;
    Ok(ExitCode::SUCCESS)
}

/// `acre cluster kill N`: SIGKILL to memory node N's process, or standalone CM replica N's,
/// for demonstrations and tests of failure handling. The process is the one its manifest names, checked by its start time so
/// that a pid reused by another process is left alone.
pub fn kill(args: &KillArgs) -> anyhow::Result<ExitCode> {
    let mut out = crate::output::stdout();
    let dir = &args.dir;
    let file = ClusterFile::read(&dir.join(CLUSTER_FILE))
        .map_err(|e| anyhow::anyhow!("no cluster in {}: {e}", dir.display()))?;
    let node = parse_node(&args.node)?;
    let current = cluster::current_configuration(dir, &file);
    let standalone = file.standalone_cms();
    if !file.config.nodes.contains(&node)
        && !current.nodes.contains(&node)
        && !standalone.contains(&node)
    {
        let cms = if standalone.is_empty() {
            String::new()
        } else {
            format!(", its standalone CM replicas: {}", node_list(&standalone))
        };
        bail!(
            "{node} is not a memory node of the cluster in {} (its nodes: {}{cms})",
            dir.display(),
            node_list(&current.nodes)
        );
    }
    match cluster::fence_by_kill(dir, node, STOP_TIMEOUT)? {
        cluster::Fenced::Killed { pid } if standalone.contains(&node) => {
            writeln!(out, "killed CM replica {node} (pid {pid}) with SIGKILL")?;
            writeln!(
                out,
                "if it led, another replica is elected (a majority must run) and acts as CM: \
                 see `acre cluster status --dir {}`",
                dir.display()
            )?;
            Ok(ExitCode::SUCCESS)
        }
        cluster::Fenced::Killed { pid } => {
            writeln!(out, "killed {node} (pid {pid}) with SIGKILL")?;
            match &file.cm {
                Some(cm) => writeln!(
                    out,
                    "the configuration manager suspects it when its lease ({} ms) expires and \
                     removes it from the configuration: see `acre cluster status --dir {}`",
                    cm.lease_ms,
                    dir.display()
                )?,
                None => writeln!(
                    out,
                    "the cluster runs no configuration manager: nothing notices; clients that \
                     need {node} fail"
                )?,
            }
            Ok(ExitCode::SUCCESS)
        }
        cluster::Fenced::NotRunning => {
            bail!("{node} is not running (no live process matches its manifest)")
        }
    }
}

#[derive(clap::Args, Clone, Debug)]
pub struct AddNodeArgs {
    #[arg(long, default_value = CLUSTER_DIR_DEFAULT)]
    pub dir: PathBuf,
    /// The new node's id (the next free one if not given; ids are never reused).
    #[arg(long)]
    pub id: Option<u16>,
    /// Its failure domain (a domain of its own if not given).
    #[arg(long)]
    pub domain: Option<String>,
}

/// `acre cluster add-node`: starts a memory node process that joins (`acre node --join`),
/// waits until it runs and published its CM addresses, asks the acting CM to add it
/// ([`cluster::cm_request`]) and waits for the configuration that names it. The new node
/// takes the missing backups of degraded regions and, as data grows, the new regions (placed
/// on the node with the fewest primaries). Stops the process again if the CM refuses.
pub fn add_node(args: &AddNodeArgs) -> anyhow::Result<ExitCode> {
    let mut out = crate::output::stdout();
    let dir = &args.dir;
    let (file, status) = cm_cluster(dir)?;
    let node = match args.id {
        Some(id) => NodeId(id),
        None => free_node_id(dir, &file, &status.committed)?,
    };
    anyhow::ensure!(
        node.0 > 0 && node.0 < CLIENT_ID_BASE,
        "--id {} is out of range: memory node ids run from 1 to {}",
        node.0,
        CLIENT_ID_BASE - 1
    );
    let mut extra = vec!["--join".to_string()];
    if let Some(domain) = &args.domain {
        extra.extend(["--domain".to_string(), domain.clone()]);
    }
    let mut child = spawn_node(dir, "node", node, &extra)?;
    writeln!(out, "started {node} (pid {})", child.id())?;
    let stop_child = |child: &mut Child| stop_processes(vec![child]);
    // Running, with its CM links and lease thread published (the CM reaches it there).
    let deadline = Instant::now() + START_TIMEOUT;
    loop {
        if let Ok(Some(manifest)) = NodeManifest::read(dir, node)
            && manifest.cm_link.is_some()
        {
            break;
        }
        if let Ok(Some(exit)) = child.try_wait() {
            bail!(
                "{node} exited ({exit}) before it was serving; see {}",
                cluster::node_log_path(dir, node).display()
            );
        }
        if Instant::now() >= deadline {
            stop_child(&mut child);
            bail!(
                "{node} did not publish its CM addresses within {START_TIMEOUT:?}; see {}",
                cluster::node_log_path(dir, node).display()
            );
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let change = cluster::cm_request::Change::AddNode {
        node,
        domain: args.domain.clone(),
    };
    let reply = match ask_when_idle(dir, change) {
        Ok(reply) if reply.accepted => reply,
        Ok(reply) => {
            stop_child(&mut child);
            bail!(
                "the CM refused to add {node}: {}; stopped its process",
                reply.message
            );
        }
        Err(e) => {
            stop_child(&mut child);
            bail!("{e}; stopped {node}'s process");
        }
    };
    writeln!(out, "the CM accepted: {}", reply.message)?;
    let added = wait_for_commit(dir, &format!("the configuration with {node}"), |c| {
        c.nodes.contains(&node)
    })?;
    writeln!(
        out,
        "configuration {} committed with {node}",
        added.committed.id
    )?;
    print_timings(&mut out, &added, &format!("addition of {node}"))?;
    let roles: Vec<String> = added
        .committed
        .replicated_on(node)
        .map(|p| {
            let copying = if p.copying.contains(&node) {
                " (copying)"
            } else {
                ""
            };
            let role = if p.primary == node {
                "primary"
            } else {
                "backup"
            };
            format!("{} {role}{copying}", p.region)
        })
        .collect();
    if roles.is_empty() {
        writeln!(
            out,
            "  {node} holds no region yet: every region has its backups; new regions go to the \
             node with the fewest primaries as data grows"
        )?;
    } else {
        writeln!(out, "  {node} holds {}", roles.join(", "))?;
    }
    Ok(ExitCode::SUCCESS)
}

/// The next memory node id nobody used in the cluster in `dir`: above every id its cluster
/// file, its current configuration, its manifests and the logs of its node processes name
/// (ids are never reused: a log stays when its node is removed or stopped).
fn free_node_id(dir: &Path, file: &ClusterFile, current: &Configuration) -> anyhow::Result<NodeId> {
    let mut manifests = NodeManifest::list(dir).unwrap_or_default();
    let logs = std::fs::read_dir(dir).with_context(|| format!("read {}", dir.display()))?;
    manifests.extend(logs.flatten().filter_map(|entry| {
        let name = entry.file_name();
        let id = name.to_str()?.strip_prefix('n')?.strip_suffix(".log")?;
        id.parse().ok().map(NodeId)
    }));
    let used = file
        .config
        .nodes
        .iter()
        .chain(&file.config.cm_replicas)
        .chain(&current.nodes)
        .chain(&current.cm_replicas)
        .chain(&manifests)
        .map(|n| n.0)
        .filter(|&id| id < CLIENT_ID_BASE)
        .max()
        .unwrap_or(0);
    let next = used + 1;
    anyhow::ensure!(
        next < CLIENT_ID_BASE,
        "no memory node id is free: they run from 1 to {}",
        CLIENT_ID_BASE - 1
    );
    Ok(NodeId(next))
}

/// The cluster file of the cluster in `dir`, which must run a CM, and the CM's status.
fn cm_cluster(dir: &Path) -> anyhow::Result<(ClusterFile, cluster::CmStatusFile)> {
    let file = ClusterFile::read(&dir.join(CLUSTER_FILE))
        .map_err(|e| anyhow::anyhow!("no cluster in {}: {e}", dir.display()))?;
    anyhow::ensure!(
        file.cm.is_some(),
        "the cluster in {} runs no configuration manager (started with --cm 0): its membership \
         cannot change",
        dir.display()
    );
    let status = cluster::CmStatusFile::read(dir)?
        .ok_or_else(|| anyhow::anyhow!("the CM has committed no configuration yet"))?;
    Ok((file, status))
}

/// Those of `nodes` that the configuration the CM committed last no longer lists, if that is
/// configuration `from_id` (the one a refusal was made in) or a later one: a status file a
/// deposed leader wrote may hold an older configuration, and nodes added since are no member
/// of it.
fn removed_since(dir: &Path, nodes: &[NodeId], from_id: u64) -> Vec<NodeId> {
    let Ok(Some(status)) = cluster::CmStatusFile::read(dir) else {
        return Vec::new();
    };
    if status.committed.id < from_id {
        return Vec::new();
    }
    (nodes.iter())
        .filter(|node| !status.committed.nodes.contains(node))
        .copied()
        .collect()
}

/// Waits (at most [`REMOVAL_TIMEOUT`]) until the CM of the cluster in `dir` committed a
/// configuration for which `done` holds; `what` names it in the error.
fn wait_for_commit(
    dir: &Path,
    what: &str,
    done: impl Fn(&Configuration) -> bool,
) -> anyhow::Result<cluster::CmStatusFile> {
    let deadline = Instant::now() + REMOVAL_TIMEOUT;
    loop {
        if let Ok(Some(status)) = cluster::CmStatusFile::read(dir)
            && done(&status.committed)
        {
            return Ok(status);
        }
        if Instant::now() >= deadline {
            bail!(
                "{what} was not committed within {REMOVAL_TIMEOUT:?}: see `acre cluster status \
                 --dir {}` and the nodes' logs there",
                dir.display()
            );
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// The times of the latest reconfiguration for `cause` in `status`'s history.
fn print_timings(
    out: &mut impl std::io::Write,
    status: &cluster::CmStatusFile,
    cause: &str,
) -> anyhow::Result<()> {
    if let Some(row) = status.history.iter().rev().find(|r| r.cause == cause) {
        writeln!(
            out,
            "  {} -> {}: installed +{:.1} ms, committed +{:.1} ms after the request was taken",
            row.from_id,
            row.to_id.unwrap_or(0),
            row.installed_ms.unwrap_or(f64::NAN),
            row.committed_ms.unwrap_or(f64::NAN)
        )?;
    }
    Ok(())
}

/// How long `remove-node` waits for the acting CM to answer its request.
const REQUEST_ANSWER_TIMEOUT: Duration = Duration::from_secs(4);
/// How long `add-node` and `remove-node` wait for the configuration that adds or removes the
/// node to be committed.
const REMOVAL_TIMEOUT: Duration = Duration::from_secs(30);

/// `acre cluster remove-node N`: asks the acting CM to remove memory node N gracefully
/// (docs/failures.md#the-cm-in-node-processes): its primaries handed to complete backups, new
/// backups chosen, refused when N holds some region's last complete replica. Waits for the
/// configuration without N, then stops N's process if it still runs.
/// Refuses a lease length outside what the CM accepts, naming the option.
pub(crate) fn check_lease_ms(lease_ms: u64) -> anyhow::Result<()> {
    anyhow::ensure!(
        (cluster::CmSettings::LEASE_MS_MIN..=cluster::CmSettings::LEASE_MS_MAX).contains(&lease_ms),
        "--lease-ms {lease_ms}: expected {} to {}",
        cluster::CmSettings::LEASE_MS_MIN,
        cluster::CmSettings::LEASE_MS_MAX
    );
    Ok(())
}

/// How long a request waits out the reconfigurations the CM runs on its own (a recovered
/// region made active, a copy counted complete) before it gives up.
const BUSY_WAIT_MAX: Duration = Duration::from_secs(10);

/// Asks the CM for `change`, again while it answers that another reconfiguration is under way.
fn ask_when_idle(
    dir: &Path,
    change: cluster::cm_request::Change,
) -> Result<cluster::cm_request::CmReply, cluster::cm_request::AskError> {
    let started = Instant::now();
    loop {
        let reply = cluster::cm_request::ask(dir, change.clone(), REQUEST_ANSWER_TIMEOUT)?;
        let busy = !reply.accepted && reply.message.contains(cluster::cm_request::BUSY);
        if !busy || started.elapsed() >= BUSY_WAIT_MAX {
            return Ok(reply);
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

pub fn remove_node(args: &KillArgs) -> anyhow::Result<ExitCode> {
    let mut out = crate::output::stdout();
    let dir = &args.dir;
    let (file, status) = cm_cluster(dir)?;
    let node = parse_node(&args.node)?;
    if !status.committed.nodes.contains(&node) {
        bail!(
            "{node} is not a memory node of configuration {} (its nodes: {})",
            status.committed.id,
            node_list(&status.committed.nodes)
        );
    }
    let reply = ask_when_idle(dir, cluster::cm_request::Change::Remove { node })?;
    if !reply.accepted {
        bail!("the CM refused to remove {node}: {}", reply.message);
    }
    writeln!(out, "the CM accepted: {}", reply.message)?;
    let removed = wait_for_commit(dir, &format!("the configuration without {node}"), |c| {
        !c.nodes.contains(&node)
    })?;
    writeln!(
        out,
        "configuration {} committed without {node}",
        removed.committed.id
    )?;
    print_timings(&mut out, &removed, &format!("removal of {node}"))?;
    for placement in &removed.committed.regions {
        if !placement.state.is_active() {
            writeln!(
                out,
                "  {} is {} (its primary moved; it serves again once its transactions are \
                 recovered)",
                placement.region,
                placement.state.name()
            )?;
        }
    }
    // Over shm the CM fenced it (killed) before the commit; over tcp it runs on, refused by
    // every member: stop it.
    if let Some((_, pid)) = running_nodes(dir, Some(&file))
        .into_iter()
        .find(|(n, _)| *n == node)
    {
        let _ = acre::engine::signal::terminate(pid);
        let deadline = Instant::now() + STOP_TIMEOUT;
        while cluster::process_alive(pid) && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(20));
        }
        writeln!(out, "stopped {node}'s process (pid {pid})")?;
    }
    // Its files hold no region's last complete copy (the CM refuses such a removal): they move
    // aside, so that a later `up` does not take it for a failed node to replace.
    if running_nodes(dir, Some(&file))
        .iter()
        .all(|(n, _)| *n != node)
    {
        let retired = crate::rejoin::retire(dir, node)?;
        writeln!(
            out,
            "its files of this run are in {} (nothing needs them: remove them when you like)",
            retired.display()
        )?;
    }
    Ok(ExitCode::SUCCESS)
}

/// A node id as an operator writes it: `3` or `n3`.
fn parse_node(text: &str) -> anyhow::Result<NodeId> {
    let id: u16 = text
        .trim_start_matches('n')
        .parse()
        .map_err(|_| anyhow::anyhow!("{text:?} is not a node id: give 3 or n3"))?;
    Ok(NodeId(id))
}

/// Waits until the CM's leader has committed its first configuration (it names itself CM),
/// at most [`CM_READY_TIMEOUT`]; fails at once if a node process exits meanwhile.
fn wait_for_cm(
    dir: &Path,
    children: &mut [(NodeId, Child)],
) -> anyhow::Result<cluster::CmStatusFile> {
    let deadline = Instant::now() + CM_READY_TIMEOUT;
    let file = ClusterFile::read(&dir.join(CLUSTER_FILE))?;
    loop {
        if let Some(status) = cluster::CmStatusFile::read(dir)?
            && status.committed.cm_leader.is_some()
        {
            let missing: Vec<NodeId> = file
                .config
                .nodes
                .iter()
                .copied()
                .filter(|n| !status.committed.nodes.contains(n))
                .collect();
            if !missing.is_empty() {
                bail!(
                    "the configuration manager removed {} during start-up (its lease ran out \
                     before it answered): see {}; a longer --lease-ms helps on a loaded host",
                    node_list(&missing),
                    cluster::node_log_path(dir, missing[0]).display()
                );
            }
            return Ok(status);
        }
        for (node, child) in children.iter_mut() {
            if let Ok(Some(exit)) = child.try_wait() {
                bail!(
                    "{node} exited ({exit}) before the configuration manager was ready; see {}",
                    cluster::node_log_path(dir, *node).display()
                );
            }
        }
        if Instant::now() >= deadline {
            bail!(
                "the configuration manager committed no configuration within {CM_READY_TIMEOUT:?}: \
                 see the CM replicas' logs ({}) in {}",
                file.config
                    .cm_replicas
                    .iter()
                    .map(|r| format!("{r}.log"))
                    .collect::<Vec<_>>()
                    .join(", "),
                dir.display()
            );
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// The last line of `up`: what to try, and how to stop.
fn print_try(out: &mut impl std::io::Write, dir: &Path) -> std::io::Result<()> {
    writeln!(
        out,
        "try: acre bank --dir {}    stop: acre cluster down --dir {}",
        dir.display(),
        dir.display()
    )
}

/// `n1, n2, n3`.
pub(crate) fn node_list(nodes: &[NodeId]) -> String {
    nodes
        .iter()
        .map(ToString::to_string)
        .collect::<Vec<_>>()
        .join(", ")
}

/// Refuses to let `up` replace `dir` when that would throw data away: a stopped cluster's
/// region copies and rings (recovery will restart from them; until it exists, only `down
/// --purge` removes them), or a directory that is not a cluster's at all.
fn check_replaceable(dir: &Path) -> anyhow::Result<()> {
    let kept = cluster::kept_data_in(dir)
        .with_context(|| format!("look for a stopped cluster's data in {}", dir.display()))?;
    if let Some((node, data)) = kept.first() {
        bail!(
            "{} holds the data of a stopped cluster ({} of its nodes keep data; {node}: {data}) \
             that ran no configuration manager, so nothing can recover its transactions and it \
             cannot restart from its data; remove it with `acre cluster down --dir {} --purge`, \
             or use another --dir",
            dir.display(),
            kept.len(),
            dir.display()
        );
    }
    let empty = std::fs::read_dir(dir)
        .with_context(|| format!("read {}", dir.display()))?
        .next()
        .is_none();
    if !empty && !dir.join(CLUSTER_FILE).exists() {
        bail!(
            "{} is not empty and holds no cluster ({CLUSTER_FILE}): use another --dir",
            dir.display()
        );
    }
    Ok(())
}

/// Starts one detached `acre node` process per memory node and one `acre cm` process per
/// standalone CM replica, each one's output in `n<id>.log`.
fn start_nodes(
    dir: &Path,
    file: &ClusterFile,
    children: &mut Vec<(NodeId, Child)>,
) -> anyhow::Result<()> {
    for &node in &file.config.nodes {
        children.push((node, spawn_node(dir, "node", node, &[])?));
    }
    for node in file.standalone_cms() {
        children.push((node, spawn_node(dir, "cm", node, &[])?));
    }
    Ok(())
}

/// Starts a detached `acre <command>` process (`node`, or `cm` for a standalone CM replica)
/// for `node` with `extra` arguments, its output in `n<id>.log`.
/// In a cluster placed in network namespaces (`netns.toml`), the process runs in its own
/// through `ip netns exec`, which execs it: the child's pid is the node's.
fn spawn_node(dir: &Path, command: &str, node: NodeId, extra: &[String]) -> anyhow::Result<Child> {
    let exe = std::env::current_exe().context("find the acre binary")?;
    let placement = NetnsPlacement::read(dir)?;
    let mut process = match &placement {
        None => std::process::Command::new(&exe),
        Some(placement) => {
            let namespace = placement.namespace(node);
            placement.addr(node)?;
            let named = Path::new(NETNS_RUN_DIR).join(&namespace);
            anyhow::ensure!(
                named.exists(),
                "{node} runs in network namespace {namespace} (netns.toml in {}), which does not \
                 exist: create it with address {} first",
                dir.display(),
                placement.addr(node)?
            );
            let mut ip = std::process::Command::new("ip");
            ip.args(["netns", "exec", &namespace]).arg(&exe);
            ip
        }
    };
    let log =
        std::fs::File::create(cluster::node_log_path(dir, node)).context("create a node log")?;
    process
        .arg(command)
        .arg("--cluster")
        .arg(dir.join(CLUSTER_FILE))
        .arg("--id")
        .arg(node.0.to_string())
        .args(extra)
        .stdin(Stdio::null())
        .stdout(log.try_clone().context("share the node log")?)
        .stderr(log)
        // Its own process group: a Ctrl-C aimed at `acre cluster up` leaves it running.
        .process_group(0)
        .spawn()
        .context("start a node process")
}

/// SIGTERM to the node processes this `up` started that still run (some may not have
/// published a manifest yet), then SIGKILL to any that outlive [`STOP_TIMEOUT`].
fn stop_children(children: &mut [(NodeId, Child)]) {
    stop_processes(children.iter_mut().map(|(_, child)| child).collect());
}

/// SIGTERM to each of `children` that still runs, then SIGKILL to any that outlives
/// [`STOP_TIMEOUT`].
fn stop_processes(mut children: Vec<&mut Child>) {
    for child in children.iter_mut() {
        if let Ok(None) = child.try_wait() {
            let _ = acre::engine::signal::terminate(child.id());
        }
    }
    let deadline = Instant::now() + STOP_TIMEOUT;
    for child in children {
        while let Ok(None) = child.try_wait() {
            if Instant::now() >= deadline {
                let _ = child.kill();
                let _ = child.wait();
                break;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

/// `acre cluster status`: every memory node asked whether it answers (a pid is not an
/// answer), the regions, and every ring that was ever written with its fill and the oldest
/// transaction its node keeps there. Exit code 1 if a node does not answer.
pub fn status(args: &DirArgs) -> anyhow::Result<ExitCode> {
    let mut out = crate::output::stdout();
    let dir = &args.dir;
    let file = ClusterFile::read(&dir.join(CLUSTER_FILE))
        .map_err(|e| anyhow::anyhow!("no cluster in {}: {e}", dir.display()))?;
    // With a CM, the configuration is the one it committed last; without, the cluster file's.
    let cm = match cluster::CmStatusFile::read(dir) {
        Ok(cm) => cm,
        Err(e) => {
            writeln!(out, "{e}")?;
            None
        }
    };
    let config = cm.as_ref().map_or(&file.config, |cm| &cm.committed);
    writeln!(
        out,
        "cluster in {}: configuration {}, transport {}, f = {}",
        dir.display(),
        config.id,
        file.transport.name(),
        config.f
    )?;
    print_cm(&mut out, &file, cm.as_ref())?;
    // Every memory node the cluster had: the current ones (added ones too) and removed ones.
    let mut seen = file.clone();
    seen.config = config.clone();
    for &node in &file.config.nodes {
        if !seen.config.nodes.contains(&node) {
            seen.config.nodes.push(node);
        }
    }
    let observed = cluster::observe(dir, &seen);
    writeln!(
        out,
        "{:<6} {:<8} {:<8} {:<22} {:<10} regions",
        "node", "pid", "state", "address", "lease"
    )?;
    let mut silent = Vec::new();
    let mut members_not_serving = 0;
    for seen in &observed {
        let node = seen.node;
        let member = config.nodes.contains(&node);
        let pid = seen
            .manifest
            .as_ref()
            .map_or("-".to_string(), |m| m.pid.to_string());
        let state = match &seen.answer {
            Answer::Up => "up",
            Answer::Silent(why) => {
                silent.push((node, why));
                "silent"
            }
            Answer::Dead => "dead",
            Answer::Down => "down",
        };
        if member && seen.answer != Answer::Up {
            members_not_serving += 1;
        }
        let address = match (&seen.answer, &seen.manifest) {
            (Answer::Up | Answer::Silent(_), Some(m)) => m
                .tcp_addr
                .clone()
                .or_else(|| m.ofi.as_ref().map(|ofi| format!("ofi {}", ofi.provider)))
                .unwrap_or_else(|| "shm".into()),
            _ => "-".into(),
        };
        let lease = match &cm {
            None => "-".to_string(),
            Some(_) if !member => "removed".to_string(),
            Some(cm) => match cm.leases.iter().find(|l| l.node == node) {
                Some(cluster::LeaseRow {
                    remaining_ms: Some(ms),
                    ..
                }) if *ms >= 0 => format!("{ms} ms"),
                Some(cluster::LeaseRow {
                    remaining_ms: Some(ms),
                    ..
                }) => format!("expired {} ms", -ms),
                _ => "none yet".to_string(),
            },
        };
        let roles: Vec<String> = config
            .replicated_on(node)
            .map(|p| {
                let role = if p.primary == node { "P" } else { "b" };
                format!("{}{role}", p.region)
            })
            .collect();
        writeln!(
            out,
            "{:<6} {:<8} {:<8} {:<22} {:<10} {}",
            node.to_string(),
            pid,
            state,
            address,
            lease,
            roles.join(" ")
        )?;
    }
    for (node, why) in &silent {
        writeln!(out, "{node} runs but does not answer: {why}")?;
    }
    print_cm_processes(&mut out, dir, &file, cm.as_ref())?;
    writeln!(
        out,
        "{:<8} {:<8} {:<10} {:<14} copying",
        "region", "primary", "state", "backups"
    )?;
    let mut unavailable = 0;
    for placement in &config.regions {
        let backups: Vec<String> = placement.backups.iter().map(|b| b.to_string()).collect();
        // A copying backup's progress, as its copier last wrote it.
        let copying: Vec<String> = placement
            .copying
            .iter()
            .map(|&b| {
                let progress = acre::cluster::read_copy_progress(dir, b);
                match progress.get(&placement.region) {
                    Some(&(done, blocks)) if blocks > 0 => {
                        format!("{b} {}%", done * 100 / blocks)
                    }
                    _ => b.to_string(),
                }
            })
            .collect();
        if !placement.state.is_active() {
            unavailable += 1;
        }
        writeln!(
            out,
            "{:<8} {:<8} {:<10} {:<14} {}",
            placement.region.to_string(),
            placement.primary.to_string(),
            placement.state.name(),
            backups.join(" "),
            if copying.is_empty() {
                "-".to_string()
            } else {
                copying.join(" ")
            }
        )?;
    }
    if unavailable > 0 {
        writeln!(
            out,
            "{unavailable} region(s) unavailable: a blocked region lost its primary and serves \
             again once its new primary has recovered its transactions (milliseconds), so that \
             no committed update is lost; a lost region lost every replica. Transactions on a \
             blocked region are retried by Db::run; on a lost one they fail with \
             RegionUnavailable; the other regions commit."
        )?;
    }
    print_rings(&mut out, &observed)?;
    print_settled(&mut out, &observed)?;
    let clients = config
        .clients
        .iter()
        .filter(|&&c| {
            NodeManifest::read(dir, c)
                .ok()
                .flatten()
                .is_some_and(|m| cluster::process_alive(m.pid))
        })
        .count();
    writeln!(
        out,
        "clients connected: {clients} of {}",
        config.clients.len()
    )?;
    if members_not_serving > 0 {
        writeln!(
            out,
            "{members_not_serving} of {} nodes do not answer (down, dead or silent)",
            config.nodes.len()
        )?;
        return Ok(ExitCode::from(1));
    }
    Ok(ExitCode::SUCCESS)
}

/// The standalone CM replicas (`acre cm` processes), when the cluster runs them: their pids,
/// whether they run, and which one acts as CM. They hold no memory, so nothing is asked of
/// them over the fabric; the CM's status file says which one leads.
fn print_cm_processes(
    out: &mut impl std::io::Write,
    dir: &Path,
    file: &ClusterFile,
    cm: Option<&cluster::CmStatusFile>,
) -> std::io::Result<()> {
    let standalone = file.standalone_cms();
    if standalone.is_empty() {
        return Ok(());
    }
    writeln!(out, "{:<6} {:<8} {:<8} role", "cm", "pid", "state")?;
    for node in standalone {
        let manifest = NodeManifest::read(dir, node).ok().flatten();
        let pid = manifest
            .as_ref()
            .map_or("-".to_string(), |m| m.pid.to_string());
        let state = match &manifest {
            None => "down",
            Some(m) if cluster::process_alive(m.pid) => "running",
            Some(_) => "dead",
        };
        let role = match cm {
            Some(cm) if cm.leader == node => "CM replica, acting as CM",
            _ => "CM replica",
        };
        writeln!(
            out,
            "{:<6} {:<8} {:<8} {role}",
            node.to_string(),
            pid,
            state
        )?;
    }
    Ok(())
}

/// The CM's part of `status`: its leader and replicas, how fresh its status is, and the last
/// reconfigurations with the times of their steps.
fn print_cm(
    out: &mut impl std::io::Write,
    file: &ClusterFile,
    cm: Option<&cluster::CmStatusFile>,
) -> std::io::Result<()> {
    let Some(settings) = &file.cm else {
        return writeln!(
            out,
            "configuration manager: none (started with --cm 0): failures are not detected"
        );
    };
    let Some(cm) = cm else {
        return writeln!(
            out,
            "configuration manager: {} replicas ({}), leases of {} ms; it has committed no \
             configuration yet",
            file.config.cm_replicas.len(),
            node_list(&file.config.cm_replicas),
            settings.lease_ms
        );
    };
    let now_ms = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX));
    let age_ms = now_ms.saturating_sub(cm.written_unix_ms);
    writeln!(
        out,
        "configuration manager: leader {} (Raft term {}), replicas {}, leases of {} ms; \
         configuration {} installed; status written {:.1} s ago",
        cm.leader,
        cm.term,
        node_list(&cm.replicas),
        cm.lease_ms,
        cm.installed_id,
        age_ms as f64 / 1e3
    )?;
    let refresh_ms = u64::try_from(cluster::STATUS_REFRESH.as_millis()).unwrap_or(u64::MAX);
    if age_ms > 3 * refresh_ms {
        writeln!(
            out,
            "  the CM has not written its status for {:.1} s: its leader may have failed and \
             no other replica leads yet (a majority of the replicas must run)",
            age_ms as f64 / 1e3
        )?;
    }
    if !cm.history.is_empty() {
        writeln!(out, "last reconfigurations (ms from the suspicion):")?;
    }
    for row in &cm.history {
        let step = |name: &str, ms: Option<f64>| ms.map(|ms| format!(" {name} +{ms:.1}"));
        let steps: String = [
            step("probed", row.probed_ms),
            step("installed", row.installed_ms),
            step("acked", row.acked_ms),
            step("committed", row.committed_ms),
        ]
        .into_iter()
        .flatten()
        .collect();
        let to = row.to_id.map_or("?".to_string(), |id| id.to_string());
        let removed = if row.failed.is_empty() {
            String::new()
        } else {
            format!(", removed {}", node_list(&row.failed))
        };
        writeln!(
            out,
            "  {} -> {to}: {}{removed};{steps} ({})",
            row.from_id, row.cause, row.outcome
        )?;
    }
    Ok(())
}

/// What each node's worker settled since it started, from its status area: the transactions
/// it recovered after reconfigurations (committed, aborted), the regions it recovered as their
/// new primary, and the transactions of dead coordinators it left to an operator
/// (docs/failures.md#transaction-recovery). Nodes that settled nothing are left out.
fn print_settled(out: &mut impl std::io::Write, observed: &[Observation]) -> std::io::Result<()> {
    let settled: Vec<_> = observed
        .iter()
        .filter_map(|seen| Some((seen.node, *seen.settled.as_ref().ok()?)))
        .filter(|(_, counts)| *counts != cluster::SettledCounts::default())
        .collect();
    if settled.is_empty() {
        return writeln!(out, "transactions recovered: none");
    }
    writeln!(
        out,
        "transactions and regions recovered since each node started:"
    )?;
    writeln!(
        out,
        "{:<6} {:>9} {:>7} {:>7}  left to an operator",
        "node", "committed", "aborted", "regions"
    )?;
    for (node, counts) in settled {
        writeln!(
            out,
            "{:<6} {:>9} {:>7} {:>7}  {}",
            node.to_string(),
            counts.recovered_committed,
            counts.recovered_aborted,
            counts.regions_recovered,
            counts.orphans_left
        )?;
    }
    Ok(())
}

/// The rings that were ever written (or hold anything): fill of capacity, records the node
/// keeps and the oldest kept record's transaction, which pins the ring's head.
fn print_rings(out: &mut impl std::io::Write, observed: &[Observation]) -> std::io::Result<()> {
    writeln!(
        out,
        "{:<12} {:<32} {:>6}  oldest kept transaction",
        "ring", "fill (bytes)", "kept"
    )?;
    let mut unwritten = 0;
    for seen in observed {
        let rings = match &seen.rings {
            Ok(rings) => rings,
            Err(why) if seen.manifest.is_some() => {
                writeln!(
                    out,
                    "{:<12} unreadable: {why}",
                    format!("{} <- *", seen.node)
                )?;
                continue;
            }
            Err(_) => continue,
        };
        for ring in rings {
            let kept = ring.retention.map(|r| r.kept_count);
            if !ring.written && ring.fill_bytes == 0 && kept.unwrap_or(0) == 0 {
                unwritten += 1;
                continue;
            }
            let fill = format!(
                "{} of {} ({:.0}%)",
                ring.fill_bytes,
                ring.capacity_bytes,
                ring.fill_bytes as f64 * 100.0 / ring.capacity_bytes as f64
            );
            let oldest = match ring.retention.and_then(|r| r.oldest) {
                Some((pos, txn)) => format!("{txn} at {pos}"),
                None if ring.retention.is_some() => "-".to_string(),
                None => "? (no status area)".to_string(),
            };
            writeln!(
                out,
                "{:<12} {:<32} {:>6}  {oldest}",
                format!("{} <- {}", seen.node, ring.sender),
                fill,
                kept.map_or("?".to_string(), |k| k.to_string()),
            )?;
        }
    }
    if unwritten > 0 {
        writeln!(out, "({unwritten} more rings were never written)")?;
    }
    Ok(())
}

/// SIGTERM to every running memory node and standalone CM replica, then waits for them to
/// exit. Returns how many of each it stopped.
fn stop_nodes(dir: &Path, file: Option<&ClusterFile>) -> anyhow::Result<(usize, usize)> {
    let mut running = running_nodes(dir, file);
    let node_count = running.len();
    running.extend(running_cms(dir, file));
    for &(_, pid) in &running {
        let _ = acre::engine::signal::terminate(pid);
    }
    // Each node writes the block sums of its copies before it exits, which takes seconds per
    // GiB on a loaded machine.
    let started = Instant::now();
    let timeout = stop_timeout(region_file_bytes(dir));
    let mut told = false;
    for &(node, pid) in &running {
        while cluster::process_alive(pid) {
            let waited = started.elapsed();
            if waited >= timeout {
                bail!(
                    "{node} (pid {pid}) did not exit within {:.1} s of SIGTERM; it may still be \
                     writing the block sums of its copies (its log, {}, says): run `acre \
                     cluster down` again to wait more, or kill it (its copies then have no \
                     sums, and a restart re-copies or checks them slot by slot)",
                    timeout.as_secs_f64(),
                    cluster::node_log_path(dir, node).display()
                );
            }
            if !told && waited >= Duration::from_secs(3) {
                eprintln!(
                    "cluster down: waiting for the nodes to write the block sums of their \
                     copies and exit (up to {:.0} s)",
                    timeout.as_secs_f64()
                );
                told = true;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }
    Ok((node_count, running.len() - node_count))
}

pub fn down(args: &DownArgs) -> anyhow::Result<ExitCode> {
    let mut out = crate::output::stdout();
    let dir = &args.dir;
    let file_path = dir.join(CLUSTER_FILE);
    // `down --purge` removes the directory, so it must be a cluster's: a cluster file that
    // parses, or one that does not beside the manifests of nodes (which are then found through
    // those).
    let file = match ClusterFile::read(&file_path) {
        Ok(file) => Some(file),
        Err(error) => {
            let manifests = NodeManifest::list(dir).unwrap_or_default();
            if !file_path.exists() || manifests.is_empty() {
                bail!("no cluster in {}: {error}", dir.display());
            }
            writeln!(
                out,
                "cluster file unusable ({error}): stopping the nodes found by their manifests"
            )?;
            None
        }
    };
    // Every node stops: each writes the block sums of its copies (nobody writes them after).
    acre::replication::sums::mark_cluster_stopping(dir)
        .with_context(|| format!("mark the cluster in {} as stopping", dir.display()))?;
    let (node_count, cm_count) = stop_nodes(dir, file.as_ref())?;
    let stopped = match cm_count {
        0 => format!("{node_count} nodes"),
        1 => format!("{node_count} nodes and 1 CM process"),
        _ => format!("{node_count} nodes and {cm_count} CM processes"),
    };
    if args.purge {
        std::fs::remove_dir_all(dir).with_context(|| format!("remove {}", dir.display()))?;
        writeln!(
            out,
            "cluster down: stopped {stopped}, removed {}",
            dir.display()
        )?;
    } else {
        writeln!(
            out,
            "cluster down: stopped {stopped}; their data stays in {} (`acre cluster down \
             --dir {} --purge` removes it)",
            dir.display(),
            dir.display()
        )?;
    }
    Ok(ExitCode::SUCCESS)
}

/// The commit mode `--commit` names.
pub fn commit_mode(name: &str) -> anyhow::Result<CommitMode> {
    CommitMode::parse(name)
        .ok_or_else(|| anyhow::anyhow!("--commit {name:?}: expected messages or one-sided"))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `down` on a cluster holding 1 GiB of data (6.9 GiB of region files, f = 1) saw its nodes
    /// exit 10.1 s after SIGTERM, the time they took to write their block sums; a fixed 10 s
    /// made it fail. It waits in proportion to the region files, at a rate well below that.
    #[test]
    fn down_waits_longer_for_nodes_that_hold_more_to_sum() {
        assert_eq!(stop_timeout(0), STOP_TIMEOUT);
        let gib_of_data = 69 * (1u64 << 30) / 10;
        assert!(
            stop_timeout(gib_of_data) >= 3 * Duration::from_secs_f64(10.1),
            "{:?} is too close to the 10.1 s measured",
            stop_timeout(gib_of_data)
        );
    }
}
