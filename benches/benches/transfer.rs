//! The two paths of the ofi transport's hybrid transfer (`acre_engine::fabric::ofi::transfer`,
//! docs/ofi.md "Hybrid transfer") for objects of 64 B to 1 MiB, from an owner node to a
//! requester node in this process over loopback: copy (messages of up to 64 KiB into a receive
//! buffer the requester posted, answered by the owner's NIC thread) against zero copy (the
//! owner's NIC thread registers exactly the object, the requester `fi_read`s it and asks for
//! the registration to be closed). After criterion's lines it prints both curves (median of
//! individually timed transfers per size and path) and the crossing point: the smallest size
//! from which zero copy is faster at every larger size measured. `TransferPolicy`'s default
//! threshold is that figure on `tcp;ofi_rxm`.
//!
//! Expected, and why: a copy is one round trip to the owner's NIC thread per 64 KiB (~30 µs on
//! `tcp;ofi_rxm` loopback, the fabric bench's READ) plus two copies of the bytes on each side
//! and the socket's, a few GB/s: flat up to a few KiB, then growing by ~0.1–0.3 µs per KiB. A
//! zero-copy transfer is two round trips (expose, READ; the release is not answered) plus a
//! registration and its close, which these providers make cheap (they pin nothing): ~2 times a
//! small copy's time, growing more slowly per byte since the READ moves the bytes once through
//! the socket. So zero copy should win from some tens of KiB on. On an RDMA NIC both change (registration pins
//! pages, costing tens of µs for a large object; the READ costs the owner no CPU), so the
//! threshold must be measured there.
//!
//! Measured on 4 December 2026, 2-core VM shared with other builds, two runs (docs/ofi.md,
//! "Hybrid transfer", has the table): on `tcp;ofi_rxm` a small copy took ~20 µs and a small
//! zero-copy transfer ~45–50 µs (two round trips), but both are bimodal (cells of ~120–350 µs
//! in the same runs: whether the waiters sleep, as far as can be told); at 1 MiB copy
//! 1.3–5.1 ms, zero copy 0.56–0.80 ms. Crossing point 16 KiB and 256 KiB in the two tables
//! (256 KiB by criterion's medians in both); on `sockets` 256 KiB in both.
//!
//! `cargo bench -p acre-benches --features ofi --bench transfer`; `-- --test` runs each case
//! once and prints the table from that single run (not a measurement).

use acre_engine::addr::{Addr, NodeId, RegionId};
use acre_engine::fabric::ofi::transfer::TransferPath;
use acre_engine::fabric::ofi::{OfiConfig, OfiNic, OfiTransport};
use acre_engine::fabric::{Doorbell, NodeMemory};
use acre_engine::region::{AccessKey, Region};
use criterion::{BenchmarkId, Criterion, Throughput};
use std::hint::black_box;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

/// Object sizes, each a multiple of the fabric's 8-byte word.
const SIZES_BYTES: [u64; 8] = [
    64,
    256,
    1 << 10,
    4 << 10,
    16 << 10,
    64 << 10,
    256 << 10,
    1 << 20,
];
/// The owner's region: room for the largest object.
const OBJECT_REGION: RegionId = RegionId(1);
const OBJECT_REGION_BYTES: u64 = 1 << 20;
const OWNER: NodeId = NodeId(2);
const REQUESTER: NodeId = NodeId(1);
/// Providers measured: the one the default threshold comes from, and `sockets`.
const PROVIDERS: [&str; 2] = ["tcp;ofi_rxm", "sockets"];
/// Individually timed transfers per size and path for the table.
const TABLE_SAMPLES: usize = 101;
/// The same under `--test`, where everything runs once to show it works.
const TABLE_SAMPLES_TEST: usize = 1;
const PATHS: [TransferPath; 2] = [TransferPath::Copy, TransferPath::ZeroCopy];

/// A requester and an owner that know each other; the owner's region holds a pattern.
// Fields drop in order: the transports before their NIC threads, as in the fabric bench's test
// bed.
struct Pair {
    requester: OfiTransport,
    _owner: OfiTransport,
    _nics: Vec<OfiNic>,
    key: AccessKey,
}

fn node(provider: &str, id: NodeId, region_bytes: u64) -> (OfiTransport, OfiNic, AccessKey) {
    let doorbell = Arc::new(Doorbell::anonymous().expect("map a doorbell"));
    let memory = Arc::new(NodeMemory::new(id, doorbell));
    let region = Region::anonymous(OBJECT_REGION, region_bytes).expect("map a region");
    for (index, word) in region.words().iter().enumerate() {
        word.store(index as u64 * 0x9e37_79b9_7f4a_7c15, Ordering::Relaxed);
    }
    let key = region.key();
    memory.register(Arc::new(region)).expect("register");
    let (transport, nic) = OfiTransport::start(&OfiConfig::loopback(provider), memory)
        .unwrap_or_else(|e| panic!("start {provider}: {e}"));
    (transport, nic, key)
}

impl Pair {
    fn new(provider: &str) -> Pair {
        let (requester, requester_nic, _) = node(provider, REQUESTER, 4096);
        let (owner, owner_nic, key) = node(provider, OWNER, OBJECT_REGION_BYTES);
        requester
            .add_peer(owner.card().expect("owner's card"))
            .expect("add the owner");
        owner
            .add_peer(requester.card().expect("requester's card"))
            .expect("add the requester");
        let pair = Pair {
            requester,
            _owner: owner,
            _nics: vec![requester_nic, owner_nic],
            key,
        };
        // Both paths move the same bytes (and the first operation makes the connection).
        for len in SIZES_BYTES {
            let copy = pair.transfer(TransferPath::Copy, len);
            let zero = pair.transfer(TransferPath::ZeroCopy, len);
            assert!(copy == zero, "{len} bytes: the paths disagree");
        }
        pair
    }

    fn transfer(&self, path: TransferPath, len: u64) -> Vec<u8> {
        let addr = Addr::new(OBJECT_REGION, 0);
        let result = match path {
            TransferPath::Copy => self.requester.transfer_by_copy(OWNER, addr, self.key, len),
            TransferPath::ZeroCopy => self
                .requester
                .transfer_zero_copy(OWNER, addr, self.key, len),
        };
        result.unwrap_or_else(|e| panic!("{path} of {len} bytes: {e}"))
    }

    /// The median of `samples` individually timed transfers.
    fn median(&self, path: TransferPath, len: u64, samples: usize) -> Duration {
        let mut times: Vec<Duration> = (0..samples)
            .map(|_| {
                let started = Instant::now();
                black_box(self.transfer(path, len));
                started.elapsed()
            })
            .collect();
        times.sort_unstable();
        times[times.len() / 2]
    }
}

fn size_name(len: u64) -> String {
    match len {
        len if len >= 1 << 20 => format!("{} MiB", len >> 20),
        len if len >= 1 << 10 => format!("{} KiB", len >> 10),
        len => format!("{len} B"),
    }
}

fn bench_provider(c: &mut Criterion, provider: &str, pair: &Pair) {
    let mut group = c.benchmark_group(format!("transfer/{provider}"));
    group
        .warm_up_time(Duration::from_millis(200))
        .measurement_time(Duration::from_millis(800))
        .sample_size(20);
    for len in SIZES_BYTES {
        group.throughput(Throughput::Bytes(len));
        for path in PATHS {
            group.bench_with_input(BenchmarkId::new(path.to_string(), len), &len, |b, &len| {
                b.iter(|| black_box(pair.transfer(path, len)))
            });
        }
    }
    group.finish();
}

/// Both curves for `provider` and where they cross.
fn report(provider: &str, pair: &Pair, samples: usize) -> String {
    let mut out = format!(
        "transfer on {provider}: median of {samples} transfers per size and path (µs)\n\
         {:>9}  {:>10}  {:>10}\n",
        "size", "copy", "zero-copy"
    );
    let mut faster = Vec::new();
    for len in SIZES_BYTES {
        let copy = pair.median(TransferPath::Copy, len, samples);
        let zero = pair.median(TransferPath::ZeroCopy, len, samples);
        out.push_str(&format!(
            "{:>9}  {:>10.1}  {:>10.1}\n",
            size_name(len),
            copy.as_secs_f64() * 1e6,
            zero.as_secs_f64() * 1e6
        ));
        faster.push((len, zero < copy));
    }
    // The smallest size from which zero copy wins at every larger size measured.
    let crossing = (0..faster.len())
        .find(|&from| faster[from..].iter().all(|&(_, zero_wins)| zero_wins))
        .map(|from| faster[from].0);
    match crossing {
        Some(len) => out.push_str(&format!(
            "transfer on {provider}: crossing point {} (zero copy faster from there on)\n",
            size_name(len)
        )),
        None => out.push_str(&format!(
            "transfer on {provider}: no crossing point: copy is as fast at {}\n",
            size_name(SIZES_BYTES[SIZES_BYTES.len() - 1])
        )),
    }
    if samples < 3 {
        out.push_str("(one sample per cell under --test: not a measurement)\n");
    }
    out
}

fn main() {
    let test_mode = std::env::args().any(|a| a == "--test");
    let mut criterion = Criterion::default().configure_from_args();
    let pairs: Vec<(&str, Pair)> = PROVIDERS.iter().map(|&p| (p, Pair::new(p))).collect();
    for (provider, pair) in &pairs {
        bench_provider(&mut criterion, provider, pair);
    }
    criterion.final_summary();
    let samples = if test_mode {
        TABLE_SAMPLES_TEST
    } else {
        TABLE_SAMPLES
    };
    for (provider, pair) in &pairs {
        print!("{}", report(provider, pair, samples));
    }
}
