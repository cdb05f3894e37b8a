//! The cost of an object slot's sum: a lock and install, a one-sided read's decode, and the sum
//! alone, for payloads of 64 B, 1 KiB and 8 KiB in a local slot (no fabric, no persist). An
//! install stores the sum word it computes (a CRC32C of header and payload, `object::sum_word`)
//! and a decode computes it again to check it, so the `sum` line is what each of the other
//! two pays for it.
//!
//! Measured on 3 December 2026 on a loaded 2-core VM (criterion means; 64 B / 1 KiB / 8 KiB):
//! lock and install 49 ns / 646 ns / 5.8 µs, decode 11 ns / 120 ns / 886 ns, the sum alone
//! 10 ns / 120 ns / 915 ns (CRC32C with the `crc32` instruction, about 8.5 GB/s). So the sum is
//! about a fifth of an install, whose word-by-word release stores dominate, and nearly all of a
//! decode, which is otherwise a header and trailer compare; against a one-sided READ over tcp
//! (several µs) or a commit (tens of µs) it is small.
//!
//! `cargo bench -p acre-benches --bench object`; `-- --test` runs each case once.

use acre_engine::object::{self, Header, Owner, WORD_BYTES};
use criterion::{BenchmarkId, Criterion, Throughput};
use std::hint::black_box;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

const PAYLOAD_SIZES_BYTES: [usize; 3] = [64, 1 << 10, 8 << 10];
const OWNER: u64 = 7;

/// A slot for `payload_bytes`, all zero (never installed).
fn slot(payload_bytes: usize) -> Vec<AtomicU64> {
    (0..object::slot_bytes(payload_bytes) / WORD_BYTES)
        .map(|_| AtomicU64::new(0))
        .collect()
}

fn objects(c: &mut Criterion) {
    let mut group = c.benchmark_group("object");
    group
        .warm_up_time(Duration::from_millis(300))
        .measurement_time(Duration::from_secs(1));
    for payload_bytes in PAYLOAD_SIZES_BYTES {
        let payload = vec![0x5a; payload_bytes];
        group.throughput(Throughput::Bytes(payload_bytes as u64));

        let words = slot(payload_bytes);
        let mut version = 0;
        let mut allocated = false;
        group.bench_function(BenchmarkId::new("lock_and_install", payload_bytes), |b| {
            b.iter(|| {
                let locked = if allocated {
                    object::try_lock(&words, version, Owner::new(OWNER))
                } else {
                    object::try_lock_unallocated(&words, version, Owner::new(OWNER))
                };
                locked.expect("the only locker");
                let header = object::install(&words, black_box(&payload));
                version = header.version();
                allocated = true;
            })
        });

        let bytes: Vec<u8> = words
            .iter()
            .flat_map(|w| w.load(Ordering::Acquire).to_le_bytes())
            .collect();
        group.bench_function(BenchmarkId::new("decode", payload_bytes), |b| {
            b.iter(|| {
                let read = object::decode(black_box(&bytes)).expect("a consistent slot");
                black_box(read.header.version())
            })
        });

        let header = Header::new(version, true, false);
        group.bench_function(BenchmarkId::new("sum", payload_bytes), |b| {
            b.iter(|| object::sum_word(header, black_box(&payload), payload_bytes))
        });
    }
    group.finish();
}

fn main() {
    let mut criterion = Criterion::default().configure_from_args();
    objects(&mut criterion);
    criterion.final_summary();
}
