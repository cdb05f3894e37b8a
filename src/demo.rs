//! `acre demo`: a 3-node cluster on each transport (local in-process, shm child processes, tcp
//! over loopback), objects allocated on every node, and one-sided READ, WRITE and CAS timed from
//! a client node, with p50/p99 latency per operation. It checks what it did: every READ must
//! decode to a consistent object, and every counter must equal the number of CAS increments.

use crate::launch::{CLIENT_NODE, ProcessCluster};
use acre::engine::addr::{Addr, NodeId, RegionId};
use acre::engine::fabric::doorbell::Doorbell;
use acre::engine::fabric::local::{LocalCluster, LocalTransport};
use acre::engine::fabric::memory::NodeMemory;
use acre::engine::fabric::{Fabric, Transport};
use acre::engine::node::{Endpoint, TransportKind};
use acre::engine::region::{AccessKey, REGION_BYTES_DEFAULT, Region};
use acre::engine::slab::BLOCK_BYTES_DEFAULT;
use acre::engine::slab::SlabAllocator;
use acre::engine::{directory, object};
use anyhow::{Context, ensure};
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::{Duration, Instant};

const NODE_COUNT: u16 = 3;
const OBJECTS_PER_NODE: usize = 16;
const PAYLOAD_BYTES: usize = 64;
const CALL_TIMEOUT: Duration = Duration::from_secs(5);

#[derive(clap::Args)]
pub struct DemoArgs {
    /// Transports to run: all, local, shm or tcp.
    #[arg(long, default_value = "all", value_parser = ["all", "local", "shm", "tcp"])]
    transport: String,
    /// Operations timed per operation kind and transport.
    #[arg(long, default_value_t = 20_000)]
    ops: u32,
    /// Parent directory of the cluster directory for shm and tcp.
    #[arg(long, default_value = directory::CLUSTER_DIR_PARENT_DEFAULT)]
    dir: PathBuf,
}

/// What the client knows of one node's objects.
struct Target {
    node: NodeId,
    key: AccessKey,
    objects: Vec<Addr>,
    scratch: Addr,
    counter: Addr,
}

struct Timing {
    transport: &'static str,
    operation: &'static str,
    samples: Vec<Duration>,
}

pub fn run(args: &DemoArgs) -> anyhow::Result<ExitCode> {
    ensure!(args.ops > 0, "--ops must be at least 1");
    let mut timings = Vec::new();
    let which = args.transport.as_str();
    println!(
        "acre demo: {NODE_COUNT} nodes; a client node times {} one-sided operations of each kind\n",
        args.ops
    );
    if which == "all" || which == "local" {
        timings.extend(run_local(args.ops).context("local transport")?);
    }
    for kind in [TransportKind::Shm, TransportKind::Tcp] {
        if which == "all" || which == kind.name() {
            timings.extend(
                run_processes(kind, args).with_context(|| format!("{} transport", kind.name()))?,
            );
        }
    }
    print_table(&mut timings);
    Ok(ExitCode::SUCCESS)
}

fn run_local(ops: u32) -> anyhow::Result<Vec<Timing>> {
    let cluster = LocalCluster::new();
    let mut targets = Vec::new();
    for n in 0..=NODE_COUNT {
        let memory = Arc::new(NodeMemory::new(NodeId(n), Arc::new(Doorbell::anonymous()?)));
        if n > 0 {
            let id = RegionId(n as u32);
            let region = Arc::new(Region::anonymous(id, REGION_BYTES_DEFAULT)?);
            memory.register(region.clone())?;
            let mut slab = SlabAllocator::format(id, REGION_BYTES_DEFAULT, BLOCK_BYTES_DEFAULT)?;
            let mut alloc = || {
                slab.alloc(&region, PAYLOAD_BYTES)
                    .context("allocate an object")
            };
            let objects = (0..OBJECTS_PER_NODE)
                .map(|_| alloc())
                .collect::<anyhow::Result<Vec<_>>>()?;
            let (scratch, counter) = (alloc()?, alloc()?);
            targets.push(Target {
                node: NodeId(n),
                key: region.key(),
                objects,
                scratch,
                counter,
            });
        }
        cluster.add(memory);
    }
    let client = cluster.node(NodeId(0)).context("client node")?;
    let fabric = Fabric::new(client, Transport::Local(LocalTransport::new(cluster)));
    measure(&fabric, &targets, ops, "local")
}

/// Starts the node processes, runs the measurement from a client endpoint, stops the nodes.
fn run_processes(kind: TransportKind, args: &DemoArgs) -> anyhow::Result<Vec<Timing>> {
    let mut cluster = ProcessCluster::start(kind, &args.dir, "demo", NODE_COUNT)?;
    let manifests = cluster.wait_ready()?;
    let client = Endpoint::start(cluster.config(CLIENT_NODE))?;
    client.publish(&[])?;
    let mut targets = Vec::new();
    for manifest in &manifests {
        let node = manifest.node;
        client.discover(node)?;
        let region = manifest
            .area(RegionId(node.0 as u32))
            .context("node publishes its region")?;
        let key = region.access_key()?;
        let alloc = || client.alloc_on(node, PAYLOAD_BYTES as u32, CALL_TIMEOUT);
        let objects = (0..OBJECTS_PER_NODE)
            .map(|_| alloc())
            .collect::<Result<Vec<_>, _>>()?;
        let (scratch, counter) = (alloc()?, alloc()?);
        targets.push(Target {
            node,
            key,
            objects,
            scratch,
            counter,
        });
    }
    let timings = measure(client.fabric(), &targets, args.ops, kind.name())?;
    drop(client);
    cluster.stop()?;
    Ok(timings)
}

/// Times READ of whole object slots, WRITE of 64 B, and CAS increments, round robin over nodes.
fn measure(
    fabric: &Fabric,
    targets: &[Target],
    ops: u32,
    transport: &'static str,
) -> anyhow::Result<Vec<Timing>> {
    let slot = object::slot_bytes(PAYLOAD_BYTES) as u32;
    let mut reads = Vec::with_capacity(ops as usize);
    let mut writes = Vec::with_capacity(ops as usize);
    let mut cases = Vec::with_capacity(ops as usize);
    let mut counters = vec![0u64; targets.len()];
    let payload = vec![0xa5u8; PAYLOAD_BYTES];
    for i in 0..ops as usize {
        let t = i % targets.len();
        let target = &targets[t];
        let addr = target.objects[(i / targets.len()) % target.objects.len()];

        let start = Instant::now();
        let bytes = fabric.read(target.node, addr, target.key, slot)?;
        reads.push(start.elapsed());
        let object =
            object::decode(&bytes).with_context(|| format!("decode {addr} on {}", target.node))?;
        ensure!(
            object.header.is_allocated(),
            "{addr} on {} reads as free",
            target.node
        );

        let payload_addr = target
            .scratch
            .checked_add(8)
            .context("scratch payload address")?;
        let start = Instant::now();
        fabric.write(target.node, payload_addr, target.key, payload.clone())?;
        writes.push(start.elapsed());

        let counter_addr = target
            .counter
            .checked_add(8)
            .context("counter payload address")?;
        let start = Instant::now();
        let previous = fabric.cas(
            target.node,
            counter_addr,
            target.key,
            counters[t],
            counters[t] + 1,
        )?;
        cases.push(start.elapsed());
        ensure!(
            previous == counters[t],
            "CAS on {} saw {previous}, expected {}",
            target.node,
            counters[t]
        );
        counters[t] += 1;
    }
    for (t, target) in targets.iter().enumerate() {
        let counter_addr = target
            .counter
            .checked_add(8)
            .context("counter payload address")?;
        let bytes = fabric.read(target.node, counter_addr, target.key, 8)?;
        let value = u64::from_le_bytes(bytes[..8].try_into()?);
        ensure!(
            value == counters[t],
            "counter on {} is {value}, {} increments were made",
            target.node,
            counters[t]
        );
    }
    Ok(vec![
        Timing {
            transport,
            operation: "read 80 B slot",
            samples: reads,
        },
        Timing {
            transport,
            operation: "write 64 B",
            samples: writes,
        },
        Timing {
            transport,
            operation: "cas 8 B",
            samples: cases,
        },
    ])
}

fn print_table(timings: &mut [Timing]) {
    println!(
        "{:<10} {:<16} {:>10} {:>10} {:>12}",
        "transport", "operation", "p50 µs", "p99 µs", "ops/s"
    );
    for timing in timings.iter_mut() {
        timing.samples.sort_unstable();
        let n = timing.samples.len();
        let p50 = timing.samples[n / 2];
        let p99 = timing.samples[(n * 99 / 100).min(n - 1)];
        let total: Duration = timing.samples.iter().sum();
        let rate = n as f64 / total.as_secs_f64().max(f64::MIN_POSITIVE);
        println!(
            "{:<10} {:<16} {:>10.2} {:>10.2} {:>12.0}",
            timing.transport,
            timing.operation,
            p50.as_secs_f64() * 1e6,
            p99.as_secs_f64() * 1e6,
            rate
        );
    }
    println!(
        "\nevery READ decoded to a consistent object; every CAS counter matched its increments"
    );
}
