//! One-sided operations and ring-message round trips on each fabric transport, from node A to
//! node B of a two-node test bed (`acre_benches::testbed`), both in this process.
//!
//! Expected medians on a 2-core VM, and why (measured there in brackets, criterion / p50 / p99):
//! - `local` READ 64 B, WRITE 64 B, CAS: ~0.1–0.3 µs. No I/O at all: a few allocations (the op
//!   vector, the result vector, the payload), two read-locked hash-map lookups (node, area), the
//!   key and bounds check, and 8 atomic words. READ 1 KiB adds 128 word loads and a 1 KiB copy,
//!   another ~0.1 µs. [READ 64 B 158 / 130 / 131 ns, READ 1 KiB 244 / 180 / 191 ns,
//!   WRITE 64 B 141 / 111 / 121 ns, CAS 139 / 110 / 121 ns]
//! - `shm`: the same work plus one more read-locked lookup (the peer's mapped area): within
//!   ~50 ns of `local`. The target's memory is a shared file mapping, but once mapped a word is a
//!   word. [READ 64 B 142 / 120 / 141 ns, READ 1 KiB 322 / 171 / 181 ns, WRITE 64 B
//!   128 / 110 / 121 ns, CAS 162 / 110 / 130 ns]
//! - `tcp` (loopback): ~5–15 µs per one-sided operation. Each is a request frame written to a
//!   socket, a wake-up of the target's NIC thread (mio), its reply, and a wake-up of the posting
//!   thread, which waits in `read` on the socket itself: 4–5 syscalls and 2 cross-thread
//!   wake-ups of ~2–5 µs each on a VM whose 2 cores are shared by every thread in the bench.
//!   Payload size hardly matters at 1 KiB. [READ 64 B p50 6.3–10 µs, p99 11–21 µs; READ 1 KiB
//!   6.6–11 / 11–27 µs; WRITE 64 B 6.2–10 / 10–24 µs; CAS 6.1–10 / 10–39 µs, on a loaded
//!   host. With a receiver thread between the socket and the waiter, a third wake-up, it was
//!   15–36 µs p50.]
//! - ring round trip 64 B: the ping is record WRITEs + PERSIST, tail WRITE + PERSIST and a
//!   NOTIFY in one batch, and so is the pong. Each side spins only ~200 polls (a few µs) before
//!   it sleeps on its doorbell, which is shorter than the other side's work, so a round trip is
//!   two futex wake-ups of a sleeping thread: `local` ~10–40 µs [37 / 24 / 48 µs]. `shm` adds
//!   4 `msync`s per message on tmpfs, ~1 µs each: ~15–50 µs [38 / 26 / 62 µs]. `tcp` is two
//!   batched round trips to NIC threads (like the one-sided ops above) plus the two doorbell
//!   wake-ups: ~60–150 µs [87 / 62 / 163 µs].
//! - tcp READ 64 B throughput, one connection (`throughput_report`): one thread with one READ
//!   in flight does one round trip at a time, ~100–150 k/s; with more in flight the NIC thread
//!   reads many requests per wake-up and answers them in one write, and the waiting thread
//!   reads many responses per `read`, so the rate grows until the posting thread's `write` per
//!   batch and the two cores are the limit: ~150–300 k/s at 16–64 in flight (noisy: the other
//!   bench threads and whatever else runs share the cores). Batches of 16 READs share one
//!   write, one wake-up and one read on each side, so only the encoding, execution and
//!   decoding of each READ remain, ~0.2 µs: ~0.5–0.9 M/s at 1 in flight, ~0.55–1.3 M/s at 4.
//!   [1 thread: 100–139 / 117–244 / 135–279 / 96–316 k/s at 1 / 4 / 16 / 64 in flight;
//!   4 threads: 51–138 k/s at 1, 117–227 k/s at 16; batches of 16: 192–906 k/s at 1,
//!   550–1325 k/s at 4. With a receiver thread: 70–76 / 110–162 / 168–262 / 96–327 k/s, and
//!   56–66 / 197–224 k/s.]
//! - `ofi-tcp` and `ofi-sockets` (cargo feature `ofi`: the ofi transport on libfabric's
//!   `tcp;ofi_rxm` and `sockets` providers over loopback, docs/ofi.md): ~20–50 µs per one-sided
//!   operation, the same order as `tcp`, since on these software providers a READ is still a
//!   message over a loopback socket answered by a thread of the target. On `tcp;ofi_rxm` the
//!   provider has manual progress: the target's bytes move when its NIC thread reads its
//!   completion queue, and that thread sleeps on the queue's wait object after 100 idle polls,
//!   so an operation costs a wake-up of it and one of the posting thread, plus rxm's framing.
//!   WRITE asks for delivery completion, so it waits for the target like a READ; CAS is the
//!   provider's atomic. Measured on a busier host than the figures above (in the same run `tcp`
//!   gave 18.9 / 48.5 / 72.3 µs for READ 64 B): [`ofi-tcp` READ 64 B 29.2 / 27.6 / 62.7 µs,
//!   READ 1 KiB 29.6 / 28.1 / 77.9 µs, WRITE 64 B 28.7 / 27.5 / 62.5 µs, CAS 31.7 / 29.9 /
//!   73.0 µs; `ofi-sockets` READ 64 B 71 / 37.2 / 236 µs, READ 1 KiB 95 / 44.9 / 93 µs,
//!   WRITE 64 B 96 / 37.4 / 932 µs, CAS 78 / 37.6 / 4100 µs]. `sockets` progresses in threads
//!   of its own, which share the 2 cores with the NIC threads and the waiter; its millisecond
//!   tail is theirs as far as can be told (not traced). Ring round trip 64 B: a ring send is
//!   ~5 operations, and on `tcp;ofi_rxm`, which does not promise to place RMA in order, each
//!   is posted after the previous one's delivery, and PERSIST and NOTIFY are messages the
//!   target's NIC thread answers: ~5 serial waits per side instead of one batched round trip
//!   [`ofi-tcp` 451 µs / 450 µs / 1.12 ms; `ofi-sockets` 1.37 ms / 929 µs / 5.8 ms].
//! - ofi-tcp READ 64 B throughput (`throughput_report`): `OfiTransport::post` drives a batch to
//!   completion under one lock per node, so batches in flight do not overlap, and a batch of 16
//!   READs on `tcp;ofi_rxm` is 16 serial deliveries: one READ per ~30 µs whatever the shape
//!   [29–32 k/s for 1 thread at 1–64 in flight, 33 k/s in batches of 16, 21 k/s with 4
//!   threads; `tcp` in the same run: 20 / 59 / 154 / 157 k/s and 0.34–1.26 M/s in batches].
//! - ofi set-up (`acre_benches::testbed::ofi::setup_report`, median of 9 fresh nodes): starting
//!   a node (`OfiTransport::start`: provider, endpoints, queues, NIC thread, registrations)
//!   [`tcp;ofi_rxm` 72 ms, `sockets` 0.4–0.5 ms], the same with no area, a 1 MiB area or a
//!   128 MiB area (no difference above the noise of a few ms and 0.1 ms: these providers do
//!   not pin memory); `add_peer` [17 µs, 2.7 µs]; the first READ to a peer, which makes the
//!   provider's connection, against the ones after it [`tcp;ofi_rxm` 19 ms vs 22 µs, `sockets`
//!   2–30 ms (medians 5 and 15 ms in two runs) vs 49 µs]. Where the 72 ms of a `tcp;ofi_rxm` start go was not
//!   traced.
//!
//! Criterion reports a median; the tail matters as much for a commit protocol that waits for
//! the slowest of several operations, so after criterion this prints p50, p99 and max of
//! individually timed operations (`acre_benches::testbed::fabric_report`).
//! `cargo bench --bench fabric -- --p99` prints only that report (with `--features ofi`, the
//! ofi test beds' lines, throughput and set-up report too).

use acre_benches::testbed::{
    FabricWorkload, Operation, TransportKind, fabric_report, throughput_report,
};
use criterion::Criterion;
use std::time::Duration;

/// Individually timed operations per line of the p50/p99 report.
const REPORT_SAMPLES: usize = 5_000;
/// The same under `--test`, where everything runs once to show it works.
const REPORT_SAMPLES_TEST: usize = 10;
/// How long each line of the tcp throughput report runs.
const THROUGHPUT_TIME: Duration = Duration::from_millis(500);
/// The same under `--test`.
const THROUGHPUT_TIME_TEST: Duration = Duration::from_millis(20);
/// How many times the ofi set-up report sets a pair of nodes up (feature `ofi`).
#[cfg(feature = "ofi")]
const SETUP_RUNS: usize = 9;
/// The same under `--test`.
#[cfg(feature = "ofi")]
const SETUP_RUNS_TEST: usize = 1;

fn bench_transport(c: &mut Criterion, kind: TransportKind) {
    let mut workload = FabricWorkload::new(kind)
        .unwrap_or_else(|e| panic!("build a two-node {} test bed: {e}", kind.name()));
    let mut group = c.benchmark_group(format!("fabric/{}", kind.name()));
    group
        .warm_up_time(Duration::from_secs(1))
        .measurement_time(Duration::from_secs(3));
    for op in Operation::ALL {
        group.bench_function(op.name(), |b| {
            b.iter(|| {
                workload
                    .run(op)
                    .unwrap_or_else(|e| panic!("{} on {}: {e}", op.name(), kind.name()))
            })
        });
    }
    group.finish();
}

fn print_report(samples: usize, throughput_time: Duration) {
    for kind in TransportKind::ALL {
        match fabric_report(kind, samples) {
            Ok(report) => print!("{report}"),
            Err(e) => panic!("fabric report on {}: {e}", kind.name()),
        }
    }
    match throughput_report(TransportKind::Tcp, throughput_time) {
        Ok(report) => print!("{report}"),
        Err(e) => panic!("throughput report on tcp: {e}"),
    }
}

/// The ofi transport's READ throughput (one batch at a time per node, so the depth does not
/// matter, the batch size does) and its set-up costs.
#[cfg(feature = "ofi")]
fn print_ofi_report(setup_runs: usize, throughput_time: Duration) {
    use acre_benches::testbed::ofi::{PROVIDER_SOCKETS, PROVIDER_TCP, setup_report};
    match throughput_report(TransportKind::OfiTcp, throughput_time) {
        Ok(report) => print!("{report}"),
        Err(e) => panic!("throughput report on ofi-tcp: {e}"),
    }
    for provider in [PROVIDER_TCP, PROVIDER_SOCKETS] {
        match setup_report(provider, setup_runs) {
            Ok(report) => print!("{report}"),
            Err(e) => panic!("set-up report on {provider}: {e}"),
        }
    }
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let has = |flag: &str| args.iter().any(|a| a == flag);
    if has("--p99") {
        print_report(REPORT_SAMPLES, THROUGHPUT_TIME);
        #[cfg(feature = "ofi")]
        print_ofi_report(SETUP_RUNS, THROUGHPUT_TIME);
        return;
    }
    let mut criterion = Criterion::default().configure_from_args();
    for kind in TransportKind::ALL {
        bench_transport(&mut criterion, kind);
    }
    criterion.final_summary();
    if has("--test") {
        print_report(REPORT_SAMPLES_TEST, THROUGHPUT_TIME_TEST);
        #[cfg(feature = "ofi")]
        print_ofi_report(SETUP_RUNS_TEST, THROUGHPUT_TIME_TEST);
    } else {
        print_report(REPORT_SAMPLES, THROUGHPUT_TIME);
        #[cfg(feature = "ofi")]
        print_ofi_report(SETUP_RUNS, THROUGHPUT_TIME);
    }
}
