//! Latency of one ring-log append (reserve, write, persist the record, write and persist the
//! tail) for payloads of 64 B, 1 KiB and 4 KiB, in three setups. What to expect, and why:
//!
//! - `tmpfs-flush` (flush + drain forced on a tmpfs file): every line of the record and the tail's
//!   line is written back with `clwb` and each of the two `sfence`s waits for its lines, ~30–40 ns
//!   a dirty line to DRAM. A 64 B payload is a 96-byte record, 2 lines + 1: **~0.4 µs**; 1 KiB is
//!   34 lines: **~1.2 µs**; 4 KiB is 66 lines: **~2.5 µs** (its CRC32C at ~8 B/cycle adds 0.2 µs).
//!   On real persistent memory add the media's write latency, ~0.1–0.3 µs a drain.
//! - `tmpfs-auto` (the default path on a file without DAX: `msync(MS_SYNC)` of the record's pages,
//!   then of the tail's): tmpfs has nothing to write back, so each `msync` is a bare syscall,
//!   ~0.2–0.5 µs: **~0.6 µs at 64 B, ~1 µs at 1 KiB, ~2 µs at 4 KiB**, the copy and checksum
//!   growing with the payload.
//! - `disk-msync` (a file on the disk's filesystem): each `msync` writes a dirty 4 KiB page and
//!   waits for the device to make it durable: two device flushes an append, flat in the payload
//!   size up to a page. **~20–100 µs** on an NVMe SSD with power-loss protection; **milliseconds**
//!   on the virtual disk of a cloud VM.
//!
//! Measured on a loaded 2-core AMD EPYC VM (criterion means, 64 B / 1 KiB / 4 KiB): tmpfs-flush
//! 0.49 / 1.33 / 3.09 µs, tmpfs-auto 1.42 / 1.70 / 2.68 µs, disk-msync 6.0 / 7.3 / 5.7 ms. The
//! medians of `acre_benches::log::run_report` on the same machine: 0.50 / 0.88 / 1.76 µs,
//! 0.56 / 0.88 / 1.93 µs, and 4.0 ms / 7.1 ms / 0.27 ms (the virtual disk is erratic).
//!
//! `cargo bench -p acre-benches --bench log_append`; `-- --test` runs each case once; after
//! criterion it prints p50, p99 and throughput per setup and size from appends timed one by one,
//! and `-- --p99` prints only that report.

use acre_benches::log::{AppendBench, PAYLOAD_SIZES_BYTES, run_report, setups};
use acre_nvm_log::PersistMode;
use criterion::{BenchmarkId, Criterion, Throughput};
use std::time::Duration;

fn log_append(c: &mut Criterion) {
    for setup in setups() {
        let mut group = c.benchmark_group(format!("log_append/{}", setup.name));
        if setup.mode == PersistMode::Msync {
            // Milliseconds an append: fewer samples, or the disk case alone takes minutes.
            group
                .sample_size(10)
                .warm_up_time(Duration::from_millis(500))
                .measurement_time(Duration::from_secs(3));
        } else {
            group
                .warm_up_time(Duration::from_millis(500))
                .measurement_time(Duration::from_secs(2));
        }
        for payload_bytes in PAYLOAD_SIZES_BYTES {
            let path = setup.ring_path(payload_bytes);
            let mut bench = AppendBench::create(&path, setup.mode, payload_bytes)
                .unwrap_or_else(|e| panic!("create a ring at {}: {e}", path.display()));
            group.throughput(Throughput::Bytes(payload_bytes as u64));
            group.bench_function(BenchmarkId::from_parameter(payload_bytes), |b| {
                b.iter_custom(|iters| {
                    let mut total = Duration::ZERO;
                    for _ in 0..iters {
                        total += bench.append_one().expect("append");
                    }
                    total
                })
            });
        }
        group.finish();
    }
}

/// Appends timed one by one per row of the p50/p99 report (at most; a row also stops after
/// `REPORT_ROW_DURATION`).
const REPORT_APPENDS: u64 = 200_000;
const REPORT_ROW_DURATION: Duration = Duration::from_secs(3);
/// The same under `--test`, where the report only has to run.
const REPORT_APPENDS_TEST: u64 = 50;

fn print_report(appends: u64) {
    match run_report(appends, REPORT_ROW_DURATION) {
        Ok(report) => print!("{report}"),
        Err(e) => panic!("log append report: {e}"),
    }
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let has = |flag: &str| args.iter().any(|a| a == flag);
    if has("--p99") {
        print_report(REPORT_APPENDS);
        return;
    }
    let mut criterion = Criterion::default().configure_from_args();
    log_append(&mut criterion);
    criterion.final_summary();
    print_report(if has("--test") {
        REPORT_APPENDS_TEST
    } else {
        REPORT_APPENDS
    });
}
