//! The ofi transport's hybrid transfer (`acre_engine::fabric::ofi::transfer`, docs/ofi.md
//! "Hybrid transfer") against a plain one-sided READ, for objects of 64 B to 1 MiB, from an
//! owner node to a requester node in this process over loopback. Three paths move the same
//! bytes: copy (messages of up to 64 KiB into a receive buffer the requester posted, answered
//! by the owner's NIC thread), zero copy (the owner's NIC thread registers exactly the object,
//! the requester `fi_read`s it and asks for the registration to be closed), and READ
//! (`Fabric::read` of the owner's region, which was registered once when the owner started, as
//! every Acre region is: one `fi_read`, nothing registered per transfer). Before timing, each
//! path's bytes are checked against the owner's. After criterion's lines it prints the three
//! curves (median of individually timed transfers per size and path), the copy/zero-copy
//! crossing point (the smallest size from which zero copy is faster at every larger size
//! measured; `TransferPolicy`'s default threshold is that figure on `tcp;ofi_rxm`), and the
//! sizes at which either hybrid path is faster than the READ.
//!
//! Why the READ is here: the hybrid transfer was meant for region data (data recovery's region
//! copies, a `txn.read` of a large object), but region data is already registered, so it can be
//! moved without the owner's NIC thread doing a copy (copy path) or a registration (zero-copy
//! path). Whether those callers should use the hybrid transfer at all depends on this third
//! curve.
//!
//! Expected, and why: a copy is one round trip to the owner's NIC thread per 64 KiB (~30 µs on
//! `tcp;ofi_rxm` loopback, the fabric bench's READ) plus two copies of the bytes on each side
//! and the socket's, a few GB/s: flat up to a few KiB, then growing by ~0.1–0.3 µs per KiB. A
//! zero-copy transfer is two round trips (expose, READ; the release is not answered) plus a
//! registration and its close, which these providers make cheap (they pin nothing): ~2 times a
//! small copy's time, growing more slowly per byte since the READ moves the bytes once through
//! the socket. So zero copy should win over copy from some tens of KiB on. The READ is the
//! zero-copy path without its EXPOSE round trip, registration, close and RELEASE send: it
//! should be faster than zero copy at every size, by about one round trip; against copy, about
//! equal for small objects (one round trip each) and faster from 64 KiB on (one round trip
//! where copy makes one per 64 KiB, and fewer copies of the bytes). So neither hybrid path
//! should beat the READ beyond noise. On an RDMA NIC the gap should widen: registration pins
//! pages, and the READ costs the owner's CPU nothing.
//!
//! Measured on 4 December 2026, two runs on the 2-core VM shared with other builds (load
//! average 6–15; docs/ofi.md, "Hybrid transfer", has the tables): on `tcp;ofi_rxm` the READ
//! was the fastest path from 4 KiB on in both runs (23–35 µs up to 64 KiB, 360–389 µs at
//! 1 MiB, against 519–524 µs zero copy and 3.7–7.9 ms copy); zero copy never beat it; copy
//! beat it by 2–13 µs at 64 B–1 KiB in one run only. On `sockets` the hybrid paths beat the
//! READ only in cells where its median was ~6 ms (the provider's millisecond stalls) and once
//! at 256 KiB. Copy and zero copy crossed at 256 KiB on both providers in both runs.
//!
//! `cargo bench -p acre-benches --features ofi --bench transfer`; `-- --test` runs each case
//! once and prints the table from that single run (not a measurement).

use acre_engine::addr::{Addr, NodeId, RegionId};
use acre_engine::fabric::ofi::{OfiConfig, OfiNic, OfiTransport};
use acre_engine::fabric::{Doorbell, Fabric, NodeMemory, OP_BYTES_MAX, Transport};
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
// The READ path is one fabric READ of the whole object: no size here needs splitting. The fabric
// caps one operation at `OP_BYTES_MAX` (8 MiB, checked by `Fabric::post`); the ofi transport
// adds no cap of its own, and both providers report a `max_msg_size` of about 2^64 (`fi_info -v`).
const _: () = assert!(SIZES_BYTES[SIZES_BYTES.len() - 1] <= OP_BYTES_MAX as u64);
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

/// How the requester gets the object's bytes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Path {
    /// `transfer_by_copy`: messages answered by the owner's NIC thread, 64 KiB at a time.
    Copy,
    /// `transfer_zero_copy`: the owner registers the range, the requester `fi_read`s it.
    ZeroCopy,
    /// `Fabric::read` of the owner's region, registered once when the owner started: one
    /// `fi_read`, no registration per transfer.
    Read,
}

const PATHS: [Path; 3] = [Path::Copy, Path::ZeroCopy, Path::Read];

impl std::fmt::Display for Path {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Path::Copy => "copy",
            Path::ZeroCopy => "zero-copy",
            Path::Read => "read",
        })
    }
}

/// A requester and an owner that know each other; the owner's region holds a pattern.
// Fields drop in order: the transports before their NIC threads, as in the fabric bench's test
// bed.
struct Pair {
    /// The requester's fabric, on the ofi transport: READs through it, transfers through its
    /// transport.
    requester: Fabric,
    _owner: OfiTransport,
    _nics: Vec<OfiNic>,
    key: AccessKey,
}

/// The word the owner's region holds at `index`.
fn pattern(index: usize) -> u64 {
    index as u64 * 0x9e37_79b9_7f4a_7c15
}

fn node(
    provider: &str,
    id: NodeId,
    region_bytes: u64,
) -> (Arc<NodeMemory>, OfiTransport, OfiNic, AccessKey) {
    let doorbell = Arc::new(Doorbell::anonymous().expect("map a doorbell"));
    let memory = Arc::new(NodeMemory::new(id, doorbell));
    let region = Region::anonymous(OBJECT_REGION, region_bytes).expect("map a region");
    for (index, word) in region.words().iter().enumerate() {
        word.store(pattern(index), Ordering::Relaxed);
    }
    let key = region.key();
    memory.register(Arc::new(region)).expect("register");
    let (transport, nic) = OfiTransport::start(&OfiConfig::loopback(provider), memory.clone())
        .unwrap_or_else(|e| panic!("start {provider}: {e}"));
    (memory, transport, nic, key)
}

impl Pair {
    fn new(provider: &str) -> Pair {
        let (memory, requester, requester_nic, _) = node(provider, REQUESTER, 4096);
        let (_, owner, owner_nic, key) = node(provider, OWNER, OBJECT_REGION_BYTES);
        requester
            .add_peer(owner.card().expect("owner's card"))
            .expect("add the owner");
        owner
            .add_peer(requester.card().expect("requester's card"))
            .expect("add the requester");
        let pair = Pair {
            requester: Fabric::new(memory, Transport::Ofi(requester)),
            _owner: owner,
            _nics: vec![requester_nic, owner_nic],
            key,
        };
        // The three paths move the same bytes, the owner's pattern (and the first operation
        // makes the connection).
        for len in SIZES_BYTES {
            let expected: Vec<u8> = (0..len as usize / 8)
                .flat_map(|index| pattern(index).to_le_bytes())
                .collect();
            for path in PATHS {
                let bytes = pair.transfer(path, len);
                assert!(
                    bytes == expected,
                    "{len} bytes by {path}: not the owner's bytes"
                );
            }
        }
        pair
    }

    fn ofi(&self) -> &OfiTransport {
        let Transport::Ofi(ofi) = self.requester.transport() else {
            unreachable!("the requester's fabric is built on the ofi transport")
        };
        ofi
    }

    fn transfer(&self, path: Path, len: u64) -> Vec<u8> {
        let addr = Addr::new(OBJECT_REGION, 0);
        match path {
            Path::Copy => self.ofi().transfer_by_copy(OWNER, addr, self.key, len),
            Path::ZeroCopy => self.ofi().transfer_zero_copy(OWNER, addr, self.key, len),
            Path::Read => {
                let len = u32::try_from(len).expect("sizes fit a READ (asserted above)");
                return self
                    .requester
                    .read(OWNER, addr, self.key, len)
                    .unwrap_or_else(|e| panic!("{path} of {len} bytes: {e}"));
            }
        }
        .unwrap_or_else(|e| panic!("{path} of {len} bytes: {e}"))
    }

    /// The median of `samples` individually timed transfers.
    fn median(&self, path: Path, len: u64, samples: usize) -> Duration {
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

/// The smallest size from which `wins` holds at every larger size measured.
fn crossing(wins: &[(u64, bool)]) -> Option<u64> {
    (0..wins.len())
        .find(|&from| wins[from..].iter().all(|&(_, win)| win))
        .map(|from| wins[from].0)
}

/// The sizes at which `wins` holds, or "none".
fn sizes_where(wins: &[(u64, bool)]) -> String {
    let sizes: Vec<String> = wins
        .iter()
        .filter(|&&(_, win)| win)
        .map(|&(len, _)| size_name(len))
        .collect();
    if sizes.is_empty() {
        "none".to_string()
    } else {
        sizes.join(", ")
    }
}

/// The three curves for `provider`, where copy and zero copy cross, and where either hybrid
/// path beats the plain READ.
fn report(provider: &str, pair: &Pair, samples: usize) -> String {
    let mut out = format!(
        "transfer on {provider}: median of {samples} transfers per size and path (µs)\n\
         {:>9}  {:>10}  {:>10}  {:>10}\n",
        "size", "copy", "zero-copy", "read"
    );
    let mut zero_beats_copy = Vec::new();
    let mut copy_beats_read = Vec::new();
    let mut zero_beats_read = Vec::new();
    for len in SIZES_BYTES {
        let copy = pair.median(Path::Copy, len, samples);
        let zero = pair.median(Path::ZeroCopy, len, samples);
        let read = pair.median(Path::Read, len, samples);
        out.push_str(&format!(
            "{:>9}  {:>10.1}  {:>10.1}  {:>10.1}\n",
            size_name(len),
            copy.as_secs_f64() * 1e6,
            zero.as_secs_f64() * 1e6,
            read.as_secs_f64() * 1e6
        ));
        zero_beats_copy.push((len, zero < copy));
        copy_beats_read.push((len, copy < read));
        zero_beats_read.push((len, zero < read));
    }
    match crossing(&zero_beats_copy) {
        Some(len) => out.push_str(&format!(
            "transfer on {provider}: crossing point {} (zero copy faster than copy from there on)\n",
            size_name(len)
        )),
        None => out.push_str(&format!(
            "transfer on {provider}: no crossing point: copy is as fast at {}\n",
            size_name(SIZES_BYTES[SIZES_BYTES.len() - 1])
        )),
    }
    out.push_str(&format!(
        "transfer on {provider}: copy faster than read at: {}\n\
         transfer on {provider}: zero copy faster than read at: {}\n",
        sizes_where(&copy_beats_read),
        sizes_where(&zero_beats_read)
    ));
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
