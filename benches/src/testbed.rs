//! Test beds for fabric benchmarks: small clusters of nodes on one transport, the operations a
//! benchmark times on them, and a latency report (median and p99 of individual operations) that
//! the command line can print.
//!
//! A cluster is built the way node processes build themselves: every node registers a data
//! region and an inbox (one ring per other node) in its own memory and reaches the others only
//! through its [`Fabric`]. All nodes live in this process; with `shm` they share nothing but the
//! files of a cluster directory, with `tcp` nothing but loopback sockets, and with the `ofi`
//! kinds (cargo feature `ofi`, [`ofi`]) nothing but what libfabric's provider carries over
//! loopback. The engine's
//! integration tests build the same clusters in `engine/tests/it/cluster.rs` (they may not
//! depend on this crate).

use acre_engine::addr::{Addr, NodeId, RegionId};
use acre_engine::channel::{ChannelError, Inbox, Outbox, RING_BYTES_DEFAULT, ring_area_id};
use acre_engine::directory::{self, AreaEntry, AreaKind, NodeManifest};
use acre_engine::fabric::local::{LocalCluster, LocalTransport};
use acre_engine::fabric::shm::ShmTransport;
use acre_engine::fabric::tcp::{ClusterSecret, NicServer, TcpTransport};
use acre_engine::fabric::{Doorbell, Fabric, Membership, NodeMemory, Op, OpError, Transport};
use acre_engine::region::{AccessKey, Region};
use acre_nvm_log::{LogError, MapOptions, RecordKind};
use std::any::Any;
use std::fmt::Write as _;
use std::io;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

#[cfg(feature = "ofi")]
pub mod ofi;

/// Every node's data region has this id (each node has its own, under its own key).
pub const DATA_REGION: RegionId = RegionId(1);
pub const DATA_REGION_BYTES: u64 = 1 << 20;
/// How long a ring round trip may take before the benchmark gives up.
pub const ROUND_TRIP_TIMEOUT: Duration = Duration::from_secs(5);
/// The configuration the tcp testbed's nodes are members of.
const CONFIG: u64 = 1;
/// How long the responder of a ring round trip sleeps before it checks whether to stop.
const RESPONDER_IDLE_WAIT: Duration = Duration::from_millis(100);
/// Bounds the attempts of one ring send that finds the ring full.
const SEND_ATTEMPTS_MAX: u32 = 10_000;

/// How the nodes of a test bed reach each other.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TransportKind {
    Local,
    Shm,
    Tcp,
    /// The ofi transport on libfabric's `tcp;ofi_rxm` provider.
    #[cfg(feature = "ofi")]
    OfiTcp,
    /// The ofi transport on libfabric's `sockets` provider.
    #[cfg(feature = "ofi")]
    OfiSockets,
}

impl TransportKind {
    #[cfg(not(feature = "ofi"))]
    pub const ALL: [TransportKind; 3] =
        [TransportKind::Local, TransportKind::Shm, TransportKind::Tcp];
    #[cfg(feature = "ofi")]
    pub const ALL: [TransportKind; 5] = [
        TransportKind::Local,
        TransportKind::Shm,
        TransportKind::Tcp,
        TransportKind::OfiTcp,
        TransportKind::OfiSockets,
    ];

    pub fn name(self) -> &'static str {
        match self {
            TransportKind::Local => "local",
            TransportKind::Shm => "shm",
            TransportKind::Tcp => "tcp",
            #[cfg(feature = "ofi")]
            TransportKind::OfiTcp => "ofi-tcp",
            #[cfg(feature = "ofi")]
            TransportKind::OfiSockets => "ofi-sockets",
        }
    }

    /// The width of the widest name, so that report lines align.
    fn name_width() -> usize {
        TransportKind::ALL
            .iter()
            .map(|kind| kind.name().len())
            .fold(6, usize::max)
    }

    pub fn parse(name: &str) -> Option<TransportKind> {
        TransportKind::ALL
            .into_iter()
            .find(|kind| kind.name() == name)
    }
}

fn other_error(context: &str, error: impl std::fmt::Display) -> io::Error {
    io::Error::other(format!("{context}: {error}"))
}

/// One node of a test bed.
pub struct TestbedNode {
    pub fabric: Arc<Fabric>,
    /// Taken by whoever receives messages (see [`RingPingPong`]).
    pub inbox: Option<Inbox>,
    pub data_key: AccessKey,
}

impl TestbedNode {
    pub fn id(&self) -> NodeId {
        self.fabric.node_id()
    }

    /// The key of the ring in this node's memory that `sender` writes.
    pub fn ring_key(&self, sender: NodeId) -> io::Result<AccessKey> {
        self.fabric
            .memory()
            .area(ring_area_id(sender))
            .map(|ring| ring.key())
            .ok_or_else(|| {
                other_error(
                    "find a ring",
                    format!("{} has none for {sender}", self.id()),
                )
            })
    }
}

/// A cluster directory this process created and removes when dropped.
struct OwnedDir(PathBuf);

impl Drop for OwnedDir {
    fn drop(&mut self) {
        if let Err(e) = std::fs::remove_dir_all(&self.0) {
            tracing::warn!(
                "could not remove the cluster directory {}: {e}",
                self.0.display()
            );
        }
    }
}

/// A cluster of nodes, all in this process.
pub struct Testbed {
    kind: TransportKind,
    pub nodes: Vec<TestbedNode>,
    /// Whatever must outlive the nodes (cluster directory, NIC servers and threads): dropped
    /// after them, because fields drop in declaration order.
    _keep: Box<dyn Any>,
}

fn node_ids(node_count: usize) -> Vec<NodeId> {
    (1..=node_count as u16).map(NodeId).collect()
}

/// Registers the data region and an inbox with a ring for every other node.
fn register(
    memory: &NodeMemory,
    data: Region,
    peers: &[NodeId],
    dir: Option<&Path>,
) -> io::Result<(AccessKey, Inbox)> {
    let data_key = data.key();
    memory
        .register(Arc::new(data))
        .map_err(|e| other_error("register the data region", e))?;
    let others: Vec<NodeId> = peers
        .iter()
        .copied()
        .filter(|&id| id != memory.node_id())
        .collect();
    let inbox = Inbox::create(
        memory,
        &others,
        RING_BYTES_DEFAULT,
        dir,
        MapOptions::default(),
    )
    .map_err(|e| other_error("create an inbox", e))?;
    Ok((data_key, inbox))
}

fn anonymous_memory(
    id: NodeId,
    peers: &[NodeId],
) -> io::Result<(Arc<NodeMemory>, AccessKey, Inbox)> {
    let memory = Arc::new(NodeMemory::new(id, Arc::new(Doorbell::anonymous()?)));
    let data = Region::anonymous(DATA_REGION, DATA_REGION_BYTES)?;
    let (data_key, inbox) = register(&memory, data, peers, None)?;
    Ok((memory, data_key, inbox))
}

impl Testbed {
    /// Builds `node_count` nodes that reach each other over `kind`.
    pub fn build(kind: TransportKind, node_count: usize) -> io::Result<Testbed> {
        assert!((1..=64).contains(&node_count), "node_count={node_count}");
        let ids = node_ids(node_count);
        match kind {
            TransportKind::Local => Testbed::local(&ids),
            TransportKind::Shm => Testbed::shm(&ids),
            TransportKind::Tcp => Testbed::tcp(&ids),
            #[cfg(feature = "ofi")]
            TransportKind::OfiTcp => ofi::build(&ids, kind, ofi::PROVIDER_TCP),
            #[cfg(feature = "ofi")]
            TransportKind::OfiSockets => ofi::build(&ids, kind, ofi::PROVIDER_SOCKETS),
        }
    }

    pub fn kind(&self) -> TransportKind {
        self.kind
    }

    fn local(ids: &[NodeId]) -> io::Result<Testbed> {
        let cluster = LocalCluster::new();
        let mut nodes = Vec::with_capacity(ids.len());
        for &id in ids {
            let (memory, data_key, inbox) = anonymous_memory(id, ids)?;
            cluster.add(memory.clone());
            let transport = Transport::Local(LocalTransport::new(cluster.clone()));
            nodes.push(TestbedNode {
                fabric: Arc::new(Fabric::new(memory, transport)),
                inbox: Some(inbox),
                data_key,
            });
        }
        Ok(Testbed {
            kind: TransportKind::Local,
            nodes,
            _keep: Box::new(()),
        })
    }

    fn shm(ids: &[NodeId]) -> io::Result<Testbed> {
        static DIR_COUNT: AtomicU64 = AtomicU64::new(0);
        let parent = Path::new(directory::CLUSTER_DIR_PARENT_DEFAULT);
        let parent = if parent.is_dir() {
            parent.to_path_buf()
        } else {
            std::env::temp_dir()
        };
        let dir = parent.join(format!(
            "acre-bench-{}-{}",
            std::process::id(),
            DIR_COUNT.fetch_add(1, Ordering::Relaxed)
        ));
        directory::create_cluster_dir(&dir)?;
        let owned = OwnedDir(dir.clone());
        let options = MapOptions::default();
        let mut nodes = Vec::with_capacity(ids.len());
        for &id in ids {
            let doorbell = Doorbell::create_file(&directory::doorbell_path(&dir, id))?;
            let memory = Arc::new(NodeMemory::new(id, Arc::new(doorbell)));
            let data = Region::create_file(&dir, id, DATA_REGION, DATA_REGION_BYTES, options)?;
            let (data_key, inbox) = register(&memory, data, ids, Some(&dir))?;
            let mut areas = vec![AreaEntry::new(
                DATA_REGION,
                AreaKind::Region,
                DATA_REGION_BYTES,
                data_key,
            )];
            areas.extend(inbox.area_entries());
            NodeManifest {
                node: id,
                pid: std::process::id(),
                transport: "shm".into(),
                tcp_addr: None,
                areas,
                started: None,
                cm_link: None,
                lease: None,
                damaged: Vec::new(),
                ofi: None,
            }
            .write(&dir)?;
            let transport = Transport::Shm(ShmTransport::new(dir.clone(), options));
            nodes.push(TestbedNode {
                fabric: Arc::new(Fabric::new(memory, transport)),
                inbox: Some(inbox),
                data_key,
            });
        }
        Ok(Testbed {
            kind: TransportKind::Shm,
            nodes,
            _keep: Box::new(owned),
        })
    }

    fn tcp(ids: &[NodeId]) -> io::Result<Testbed> {
        let secret = ClusterSecret::generate();
        let listen: SocketAddr = (std::net::Ipv4Addr::LOCALHOST, 0).into();
        let mut servers = Vec::with_capacity(ids.len());
        let mut addrs = Vec::with_capacity(ids.len());
        let mut parts = Vec::with_capacity(ids.len());
        for &id in ids {
            let (memory, data_key, inbox) = anonymous_memory(id, ids)?;
            let membership = Membership::new(CONFIG, ids.iter().copied());
            let server = NicServer::start(listen, memory.clone(), secret.clone(), membership)?;
            addrs.push((id, server.local_addr()));
            servers.push(server);
            parts.push((id, memory, data_key, inbox));
        }
        let mut nodes = Vec::with_capacity(ids.len());
        for (id, memory, data_key, inbox) in parts {
            let transport = TcpTransport::new(id, CONFIG, secret.clone());
            for &(peer, addr) in addrs.iter().filter(|(peer, _)| *peer != id) {
                transport.add_peer(peer, addr);
            }
            nodes.push(TestbedNode {
                fabric: Arc::new(Fabric::new(memory, Transport::Tcp(transport))),
                inbox: Some(inbox),
                data_key,
            });
        }
        Ok(Testbed {
            kind: TransportKind::Tcp,
            nodes,
            _keep: Box::new(servers),
        })
    }
}

/// Sends one message, retrying while the receiver's ring is full.
fn send_retrying(
    outbox: &mut Outbox,
    fabric: &Fabric,
    kind: RecordKind,
    payload: &[u8],
) -> io::Result<()> {
    for _ in 0..SEND_ATTEMPTS_MAX {
        match outbox.send(fabric, kind, payload) {
            Ok(()) => return Ok(()),
            Err(ChannelError::Log(LogError::Full { .. })) => std::thread::yield_now(),
            Err(e) => return Err(other_error("send a message", e)),
        }
    }
    Err(other_error(
        "send a message",
        format!(
            "{} -> {}: the ring stayed full for {SEND_ATTEMPTS_MAX} attempts",
            fabric.node_id(),
            outbox.target()
        ),
    ))
}

/// Message round trips between two nodes over their rings: A sends to B, a thread at B waits on
/// B's inbox and replies to A, A waits on its inbox for the reply.
pub struct RingPingPong {
    fabric: Arc<Fabric>,
    inbox: Inbox,
    outbox: Outbox,
    peer: NodeId,
    stop: Arc<AtomicBool>,
    responder: Option<JoinHandle<io::Result<()>>>,
}

/// The kind of ping and pong messages.
const PING: RecordKind = RecordKind(1);

impl RingPingPong {
    /// Takes the inboxes of nodes `a` and `b` and starts B's responder thread.
    pub fn start(testbed: &mut Testbed, a: usize, b: usize) -> io::Result<RingPingPong> {
        assert_ne!(a, b, "a node does not ping itself over a ring");
        let take = |node: &mut TestbedNode| {
            node.inbox
                .take()
                .ok_or_else(|| other_error("take an inbox", format!("{}'s is taken", node.id())))
        };
        let inbox_a = take(&mut testbed.nodes[a])?;
        let inbox_b = take(&mut testbed.nodes[b])?;
        let (node_a, node_b) = (&testbed.nodes[a], &testbed.nodes[b]);
        let outbox_ab = Outbox::attach(
            &node_a.fabric,
            node_b.id(),
            node_b.ring_key(node_a.id())?,
            RING_BYTES_DEFAULT,
        )
        .map_err(|e| other_error("attach A to B", e))?;
        let outbox_ba = Outbox::attach(
            &node_b.fabric,
            node_a.id(),
            node_a.ring_key(node_b.id())?,
            RING_BYTES_DEFAULT,
        )
        .map_err(|e| other_error("attach B to A", e))?;
        let stop = Arc::new(AtomicBool::new(false));
        let responder = {
            let (fabric, stop) = (node_b.fabric.clone(), stop.clone());
            std::thread::Builder::new()
                .name(format!("pong-{}", node_b.id()))
                .spawn(move || respond(&fabric, inbox_b, outbox_ba, &stop))?
        };
        Ok(RingPingPong {
            fabric: node_a.fabric.clone(),
            inbox: inbox_a,
            outbox: outbox_ab,
            peer: node_b.id(),
            stop,
            responder: Some(responder),
        })
    }

    /// One round trip of `payload`.
    pub fn round_trip(&mut self, payload: &[u8]) -> io::Result<()> {
        send_retrying(&mut self.outbox, &self.fabric, PING, payload)?;
        let reply = self
            .inbox
            .wait(ROUND_TRIP_TIMEOUT)
            .map_err(|e| other_error("wait for the reply", e))?
            .ok_or_else(|| {
                other_error(
                    "wait for the reply",
                    format!("none within {ROUND_TRIP_TIMEOUT:?}"),
                )
            })?;
        if reply.sender != self.peer || reply.record.payload.len() != payload.len() {
            return Err(other_error(
                "check the reply",
                format!("{} bytes from {}", reply.record.payload.len(), reply.sender),
            ));
        }
        self.inbox
            .truncate(reply.sender, reply.record.end())
            .map_err(|e| other_error("truncate the reply", e))
    }
}

/// B's side: echo every message until told to stop. A service loop, not a retry loop: it ends
/// when `stop` is set, which [`RingPingPong`]'s drop does.
fn respond(
    fabric: &Fabric,
    mut inbox: Inbox,
    mut outbox: Outbox,
    stop: &AtomicBool,
) -> io::Result<()> {
    while !stop.load(Ordering::Acquire) {
        let Some(message) = inbox
            .wait(RESPONDER_IDLE_WAIT)
            .map_err(|e| other_error("wait for a ping", e))?
        else {
            continue;
        };
        send_retrying(
            &mut outbox,
            fabric,
            message.record.kind,
            &message.record.payload,
        )?;
        inbox
            .truncate(message.sender, message.record.end())
            .map_err(|e| other_error("truncate the ping", e))?;
    }
    Ok(())
}

impl Drop for RingPingPong {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Release);
        // Wake the responder now rather than after its idle wait.
        let _ = self.fabric.execute(self.peer, vec![Op::Notify]);
        if let Some(responder) = self.responder.take() {
            match responder.join() {
                Ok(Ok(())) => {}
                Ok(Err(e)) => tracing::error!("the ring responder at {} failed: {e}", self.peer),
                Err(_) => tracing::error!("the ring responder at {} panicked", self.peer),
            }
        }
    }
}

/// The operations a fabric benchmark times, from node A to node B.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Operation {
    Read64,
    Read1K,
    Write64,
    Cas,
    RingRoundTrip64,
}

impl Operation {
    pub const ALL: [Operation; 5] = [
        Operation::Read64,
        Operation::Read1K,
        Operation::Write64,
        Operation::Cas,
        Operation::RingRoundTrip64,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Operation::Read64 => "read_64b",
            Operation::Read1K => "read_1kib",
            Operation::Write64 => "write_64b",
            Operation::Cas => "cas",
            Operation::RingRoundTrip64 => "ring_round_trip_64b",
        }
    }
}

/// A two-node test bed ready to run every [`Operation`] from node A (the first) on node B.
pub struct FabricWorkload {
    // Declared first so that it stops its responder before the nodes go away.
    ping_pong: RingPingPong,
    testbed: Testbed,
    cas_expected: u64,
    payload_64: Vec<u8>,
}

/// Where in B's data region the operations land (one cache line for the 64-byte ones).
const TARGET_OFFSET: u32 = 4096;

impl FabricWorkload {
    pub fn new(kind: TransportKind) -> io::Result<FabricWorkload> {
        let mut testbed = Testbed::build(kind, 2)?;
        let ping_pong = RingPingPong::start(&mut testbed, 0, 1)?;
        Ok(FabricWorkload {
            ping_pong,
            testbed,
            cas_expected: 0,
            payload_64: (0..64).collect(),
        })
    }

    pub fn kind(&self) -> TransportKind {
        self.testbed.kind()
    }

    /// Runs one operation and waits for its completion.
    pub fn run(&mut self, op: Operation) -> io::Result<()> {
        let (a, b) = (&self.testbed.nodes[0], &self.testbed.nodes[1]);
        let addr = Addr::new(DATA_REGION, TARGET_OFFSET);
        let failed = |e: OpError| other_error(op.name(), e);
        match op {
            Operation::Read64 => {
                std::hint::black_box(
                    a.fabric
                        .read(b.id(), addr, b.data_key, 64)
                        .map_err(failed)?,
                );
            }
            Operation::Read1K => {
                std::hint::black_box(
                    a.fabric
                        .read(b.id(), addr, b.data_key, 1024)
                        .map_err(failed)?,
                );
            }
            Operation::Write64 => {
                a.fabric
                    .write(b.id(), addr, b.data_key, self.payload_64.clone())
                    .map_err(failed)?;
            }
            Operation::Cas => {
                // A swap that succeeds every time: the word counts up.
                let expected = self.cas_expected;
                let previous = a
                    .fabric
                    .cas(b.id(), addr, b.data_key, expected, expected.wrapping_add(1))
                    .map_err(failed)?;
                self.cas_expected = if previous == expected {
                    expected.wrapping_add(1)
                } else {
                    previous
                };
            }
            Operation::RingRoundTrip64 => self.ping_pong.round_trip(&self.payload_64)?,
        }
        Ok(())
    }
}

/// How many threads post 64-byte READs to node B, how many batches each keeps in flight, and
/// how many READs a batch has.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Pipeline {
    pub threads: usize,
    pub depth: usize,
    pub batch_ops: usize,
}

impl Pipeline {
    /// The shapes [`throughput_report`] measures: one thread at growing depths, then several
    /// threads sharing the connection.
    pub const ALL: [Pipeline; 8] = [
        Pipeline::new(1, 1, 1),
        Pipeline::new(1, 4, 1),
        Pipeline::new(1, 16, 1),
        Pipeline::new(1, 64, 1),
        Pipeline::new(4, 1, 1),
        Pipeline::new(4, 16, 1),
        Pipeline::new(1, 1, 16),
        Pipeline::new(1, 4, 16),
    ];

    const fn new(threads: usize, depth: usize, batch_ops: usize) -> Pipeline {
        Pipeline {
            threads,
            depth,
            batch_ops,
        }
    }
}

impl FabricWorkload {
    /// READs of 64 B completed per second from node A to node B for `duration`, each thread
    /// keeping `depth` batches posted and waiting for the oldest before it posts the next.
    pub fn read_throughput(&self, pipeline: Pipeline, duration: Duration) -> io::Result<f64> {
        assert!(pipeline.depth > 0, "depth={}", pipeline.depth);
        let (a, b) = (&self.testbed.nodes[0], &self.testbed.nodes[1]);
        let read = Op::Read {
            addr: Addr::new(DATA_REGION, TARGET_OFFSET),
            key: b.data_key,
            len: 64,
        };
        let start = Instant::now();
        let counts = std::thread::scope(|scope| {
            let workers: Vec<_> = (0..pipeline.threads)
                .map(|_| {
                    scope.spawn(|| -> io::Result<u64> {
                        let mut in_flight = std::collections::VecDeque::new();
                        let mut completed = 0u64;
                        while start.elapsed() < duration {
                            while in_flight.len() < pipeline.depth {
                                let batch = vec![read.clone(); pipeline.batch_ops];
                                in_flight.push_back(a.fabric.post(b.id(), batch));
                            }
                            let oldest = in_flight.pop_front().expect("depth > 0");
                            for result in oldest.wait() {
                                result.map_err(|e| other_error("pipelined read", e))?;
                            }
                            completed += pipeline.batch_ops as u64;
                        }
                        for pending in in_flight {
                            pending.wait();
                        }
                        Ok(completed)
                    })
                })
                .collect();
            workers
                .into_iter()
                .map(|worker| worker.join().expect("a pipelined reader panicked"))
                .collect::<io::Result<Vec<u64>>>()
        })?;
        Ok(counts.iter().sum::<u64>() as f64 / start.elapsed().as_secs_f64())
    }
}

/// Builds a two-node test bed on `kind` and reports the READ throughput of every
/// [`Pipeline`] shape, each run for `duration`, one line each.
pub fn throughput_report(kind: TransportKind, duration: Duration) -> io::Result<String> {
    let workload = FabricWorkload::new(kind)?;
    let mut report = String::new();
    for pipeline in Pipeline::ALL {
        let per_second = workload.read_throughput(pipeline, duration)?;
        writeln!(
            report,
            "{:<width$} read_64b x{} threads, {:>2} batches of {:>2} in flight each: {:>9.0} ops/s",
            kind.name(),
            pipeline.threads,
            pipeline.depth,
            pipeline.batch_ops,
            per_second,
            width = TransportKind::name_width(),
        )
        .expect("writing to a String cannot fail");
    }
    Ok(report)
}

/// Median and tail of individually timed operations.
#[derive(Clone, Copy, Debug)]
pub struct Latency {
    pub p50: Duration,
    pub p99: Duration,
    pub max: Duration,
}

/// Times `samples` individual runs of `op` (after a warm-up of a tenth as many).
pub fn measure(
    workload: &mut FabricWorkload,
    op: Operation,
    samples: usize,
) -> io::Result<Latency> {
    assert!(samples > 0, "samples={samples}");
    for _ in 0..samples.div_ceil(10) {
        workload.run(op)?;
    }
    let mut times = Vec::with_capacity(samples);
    for _ in 0..samples {
        let start = Instant::now();
        workload.run(op)?;
        times.push(start.elapsed());
    }
    times.sort_unstable();
    let at = |fraction: f64| times[((samples - 1) as f64 * fraction).round() as usize];
    Ok(Latency {
        p50: at(0.50),
        p99: at(0.99),
        max: times[samples - 1],
    })
}

fn format_duration(d: Duration) -> String {
    let ns = d.as_nanos();
    if ns < 10_000 {
        format!("{ns} ns")
    } else if ns < 1_000_000 {
        format!("{:.1} µs", ns as f64 / 1e3)
    } else {
        format!("{:.2} ms", ns as f64 / 1e6)
    }
}

/// Builds a two-node test bed on `kind` and reports p50, p99 and max of `samples` individually
/// timed runs of every [`Operation`], one line each.
pub fn fabric_report(kind: TransportKind, samples: usize) -> io::Result<String> {
    let mut workload = FabricWorkload::new(kind)?;
    let mut report = String::new();
    for op in Operation::ALL {
        let latency = measure(&mut workload, op, samples)?;
        writeln!(
            report,
            "{:<width$} {:<20} p50 {:>9}  p99 {:>9}  max {:>9}  ({samples} samples)",
            kind.name(),
            op.name(),
            format_duration(latency.p50),
            format_duration(latency.p99),
            format_duration(latency.max),
            width = TransportKind::name_width(),
        )
        .expect("writing to a String cannot fail");
    }
    Ok(report)
}
