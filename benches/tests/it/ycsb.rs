//! The YCSB driver end to end against the in-memory backend: what the reports count is what
//! the backend was asked, the loaded and inserted records are all there, updates change fields,
//! the warm-up is left out, and bad options or a dead backend are errors.

use crate::memory::{DeadBackend, MemoryBackend};
use acre_benches::ycsb::{
    self, FAILED_STREAK_MAX, FIELD_COUNT, FIELD_LENGTH_BYTES, Fields, OpKind, Options,
    OptionsError, PhaseReport, Workload, key_name,
};
use acre_nvm_log::random::ConcurrentSeed;
use std::collections::BTreeMap;
use std::time::{Duration, Instant};

const RECORDS: u64 = 1000;
const OPERATIONS: u64 = 3000;

fn options(workload: Workload, seed: u64) -> Options {
    crate::options(workload, seed, RECORDS, OPERATIONS)
}

/// How many (record, field) pairs differ between two snapshots of the same keys.
fn changed_fields(before: &BTreeMap<String, Fields>, after: &BTreeMap<String, Fields>) -> usize {
    before
        .iter()
        .map(|(key, old)| {
            let new = &after[key];
            old.iter().zip(new).filter(|(a, b)| a != b).count()
        })
        .sum()
}

/// The report of a run phase agrees with the backend's call counts, and nothing failed.
fn assert_counts_match(
    report: &PhaseReport,
    backend: &MemoryBackend,
    calls_before: &[u64],
    workload: Workload,
) {
    assert_eq!(report.operation_count, OPERATIONS, "{report:?}");
    assert_eq!(report.failed_count(), 0, "{report:?}");
    let reported: u64 = report.operations.iter().map(|op| op.count).sum();
    assert_eq!(reported, OPERATIONS);
    for kind in OpKind::ALL {
        let calls = backend.calls(kind) - calls_before[kind.index()];
        let proportion = workload
            .mix()
            .iter()
            .find(|(k, _)| *k == kind)
            .map(|(_, p)| *p);
        match (report.operation(kind), proportion) {
            (Some(op), Some(proportion)) => {
                assert_eq!(op.count, calls, "{workload} {kind}");
                // Binomial: five standard errors of the share over OPERATIONS draws.
                let share = op.count as f64 / OPERATIONS as f64;
                let se = (proportion * (1.0 - proportion) / OPERATIONS as f64).sqrt();
                assert!(
                    (share - proportion).abs() <= 5.0 * se + 1e-9,
                    "{workload} {kind}: share={share} expected={proportion}"
                );
                if op.count > 0 {
                    assert!(op.p50_us > 0.0 && op.p50_us <= op.p99_us, "{op:?}");
                    assert!(op.p99_us <= op.p999_us && op.p999_us <= op.max_us, "{op:?}");
                }
            }
            (None, None) => assert_eq!(calls, 0, "{workload} {kind}"),
            (op, proportion) => panic!("{workload} {kind}: {op:?} {proportion:?}"),
        }
    }
    assert!(report.throughput_ops_per_s > 0.0, "{report:?}");
}

fn snapshot(backend: &MemoryBackend) -> BTreeMap<String, Fields> {
    backend.table().clone()
}

#[test]
fn load_then_workloads_a_d_e_f_count_what_they_do_and_change_the_records() {
    let seeded = ConcurrentSeed::new(
        "load_then_workloads_a_d_e_f_count_what_they_do_and_change_the_records",
    );
    let seed = seeded.value();
    let backend = MemoryBackend::default();

    let load = ycsb::load(&backend, &options(Workload::A, seed)).expect("load");
    assert_eq!(load.operation_count, RECORDS);
    let insert = load.operation(OpKind::Insert).expect("inserts reported");
    assert_eq!((insert.count, insert.failed_count), (RECORDS, 0));
    assert_eq!(load.operations.len(), 1);
    {
        let table = backend.table();
        assert_eq!(table.len() as u64, RECORDS);
        for key_number in 0..RECORDS {
            let fields = &table[&key_name(key_number)];
            assert_eq!(fields.len(), FIELD_COUNT);
            assert!(fields.iter().all(|f| f.len() == FIELD_LENGTH_BYTES));
        }
    }

    // A: reads and updates of one field.
    let calls = |backend: &MemoryBackend| OpKind::ALL.map(|kind| backend.calls(kind));
    let before = snapshot(&backend);
    let before_calls = calls(&backend);
    let run = ycsb::run(&backend, &options(Workload::A, seed)).expect("run A");
    assert_counts_match(&run, &backend, &before_calls, Workload::A);
    let updates = run.operation(OpKind::Update).expect("updates").count as usize;
    let changed = changed_fields(&before, &snapshot(&backend));
    // Each update rewrites one field with random bytes; hot keys repeat, so fewer may differ.
    assert!(
        changed > 0 && changed <= updates,
        "changed={changed} updates={updates}"
    );

    // F: reads and read-modify-writes.
    let before = snapshot(&backend);
    let before_calls = calls(&backend);
    let run = ycsb::run(&backend, &options(Workload::F, seed)).expect("run F");
    assert_counts_match(&run, &backend, &before_calls, Workload::F);
    let rmws = run.operation(OpKind::ReadModifyWrite).expect("rmw").count as usize;
    let changed = changed_fields(&before, &snapshot(&backend));
    assert!(
        changed > 0 && changed <= rmws,
        "changed={changed} rmws={rmws}"
    );
    assert_eq!(backend.calls(OpKind::Insert), RECORDS);

    // E: scans and inserts; every insert adds a record after the loaded ones.
    let before_calls = calls(&backend);
    let run = ycsb::run(&backend, &options(Workload::E, seed)).expect("run E");
    assert_counts_match(&run, &backend, &before_calls, Workload::E);
    let inserted = run.operation(OpKind::Insert).expect("inserts").count;
    assert!(inserted > 0, "{run:?}");
    {
        let table = backend.table();
        assert_eq!(table.len() as u64, RECORDS + inserted);
        for key_number in 0..RECORDS + inserted {
            assert!(table.contains_key(&key_name(key_number)), "{key_number}");
        }
    }

    // D: reads of the latest inserts never miss, though those keys appear during the run. The
    // previous run's inserts are not known to this one, which numbers its inserts from RECORDS
    // again: start from a fresh load.
    let backend = MemoryBackend::default();
    ycsb::load(&backend, &options(Workload::D, seed)).expect("load");
    let before_calls = calls(&backend);
    let run = ycsb::run(&backend, &options(Workload::D, seed)).expect("run D");
    assert_counts_match(&run, &backend, &before_calls, Workload::D);
    let inserted = run.operation(OpKind::Insert).expect("inserts").count;
    assert_eq!(backend.table().len() as u64, RECORDS + inserted);
    // The newest records are the most popular: the run's own inserts were read (so they were
    // acknowledged as they finished).
    let read_keys = backend.shared.read_keys.lock().expect("read keys");
    let new_keys_read = (RECORDS..RECORDS + inserted)
        .filter(|&key_number| read_keys.contains(&key_name(key_number)))
        .count() as u64;
    assert!(
        new_keys_read > inserted / 2,
        "new_keys_read={new_keys_read} inserted={inserted}"
    );
}

#[test]
fn warm_up_operations_are_done_but_not_counted() {
    let seeded = ConcurrentSeed::new("warm_up_operations_are_done_but_not_counted");
    let seed = seeded.value();
    let backend = MemoryBackend::default();
    let mut options = options(Workload::C, seed);
    options.records = 100;
    ycsb::load(&backend, &options).expect("load");
    options.warmup = Duration::from_millis(300);
    options.operations = None;
    options.duration = Some(Duration::from_millis(300));
    let reads_before = backend.calls(OpKind::Read);
    let started = Instant::now();
    let run = ycsb::run(&backend, &options).expect("run");
    let took = started.elapsed();
    let reads = backend.calls(OpKind::Read) - reads_before;
    let measured = run.operation(OpKind::Read).expect("reads").count;
    assert_eq!(run.operation_count, measured);
    // The warm-up read too, uncounted. (How many it did depends on how the shared cores were
    // scheduled, so only "some" is checked; the clock bounds below are lower bounds for the
    // same reason, with an upper one that only catches a run that does not stop.)
    assert!(
        measured > 0 && reads > measured,
        "reads={reads} measured={measured}"
    );
    assert!(
        run.elapsed >= Duration::from_millis(300),
        "{:?}",
        run.elapsed
    );
    assert!(took >= Duration::from_millis(600), "took={took:?}");
    assert!(took < Duration::from_secs(30), "took={took:?}");
}

#[test]
fn missing_records_are_failed_reads_and_the_run_goes_on() {
    let seeded = ConcurrentSeed::new("missing_records_are_failed_reads_and_the_run_goes_on");
    let seed = seeded.value();
    let backend = MemoryBackend::default();
    let options = options(Workload::C, seed);
    ycsb::load(&backend, &options).expect("load");
    // Every other key is lost: about half the reads fail, never many in a row.
    {
        let mut table = backend.table();
        for key_number in (0..RECORDS).step_by(2) {
            table.remove(&key_name(key_number));
        }
    }
    let run = ycsb::run(&backend, &options).expect("run");
    let read = run.operation(OpKind::Read).expect("reads");
    assert_eq!(read.count + read.failed_count, OPERATIONS);
    assert!(read.count > 0 && read.failed_count > 0, "{read:?}");
    let first = read.first_error.as_deref().unwrap_or_default();
    assert!(first.contains("no such record"), "{first}");
    let mut text = Vec::new();
    run.print_text(&mut text).expect("print");
    let text = String::from_utf8(text).expect("utf-8");
    assert!(text.contains("[READ-FAILED]"), "{text}");
}

#[test]
fn a_dead_backend_stops_the_run_with_an_error_instead_of_running_on() {
    let mut options = options(Workload::A, 1);
    options.operations = None;
    options.duration = Some(Duration::from_secs(60));
    let started = Instant::now();
    let error = ycsb::run(&DeadBackend, &options).expect_err("every operation fails");
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "{:?}",
        started.elapsed()
    );
    let message = format!("{error:#}");
    assert!(
        message.contains(&format!(
            "the last {} operations failed",
            FAILED_STREAK_MAX + 1
        )),
        "{message}"
    );
    assert!(message.contains("connection refused"), "{message}");
    // The load too, once a thread has more failed inserts in a row than the bound.
    options.records = 4 * FAILED_STREAK_MAX;
    let error = ycsb::load(&DeadBackend, &options).expect_err("every insert fails");
    assert!(format!("{error:#}").contains("insert user"), "{error:#}");
}

#[test]
fn bad_options_are_errors_before_any_client_opens() {
    let backend = MemoryBackend::default();
    let cases = [
        (
            Options {
                records: 0,
                ..options(Workload::A, 1)
            },
            OptionsError::ZeroRecords,
        ),
        (
            Options {
                threads: 0,
                ..options(Workload::A, 1)
            },
            OptionsError::ZeroThreads,
        ),
        (
            Options {
                operations: None,
                duration: Some(Duration::ZERO),
                ..options(Workload::A, 1)
            },
            OptionsError::ZeroDuration,
        ),
    ];
    for (options, expected) in cases {
        for result in [
            ycsb::load(&backend, &options),
            ycsb::run(&backend, &options),
        ] {
            let error = result.expect_err("invalid options");
            assert_eq!(error.downcast_ref::<OptionsError>(), Some(&expected));
        }
    }
    assert_eq!(backend.total_calls(), 0);
    assert_eq!(
        backend
            .shared
            .clients_opened
            .load(std::sync::atomic::Ordering::Relaxed),
        0
    );
}

#[test]
fn results_are_written_as_json_with_settings_and_both_phases() {
    let backend = MemoryBackend::default();
    let mut options = options(Workload::B, 5);
    options.records = 50;
    options.operations = Some(200);
    let load = ycsb::load(&backend, &options).expect("load");
    let run = ycsb::run(&backend, &options).expect("run");
    let results = ycsb::Results::new("memory", &options, load, run);
    let path = std::env::temp_dir().join(format!("acre-ycsb-{}.json", std::process::id()));
    ycsb::write_json(&path, &results).expect("write");
    let text = std::fs::read_to_string(&path).expect("read back");
    std::fs::remove_file(&path).expect("remove");
    let json: serde_json::Value = serde_json::from_str(&text).expect("valid JSON");
    assert_eq!(json["target"], "memory");
    assert_eq!(json["workload"], "B");
    assert_eq!(json["settings"]["records"], 50);
    assert_eq!(json["settings"]["operations"], 200);
    assert_eq!(json["settings"]["duration_s"], serde_json::Value::Null);
    assert_eq!(json["settings"]["seed"], 5);
    assert_eq!(json["settings"]["distribution"], "zipfian");
    assert_eq!(json["settings"]["proportions"]["READ"], 0.95);
    assert_eq!(json["load"]["operations"][0]["name"], "INSERT");
    assert_eq!(json["load"]["operation_count"], 50);
    assert_eq!(json["run"]["phase"], "run");
    assert_eq!(json["run"]["operation_count"], 200);
    let names: Vec<&str> = json["run"]["operations"]
        .as_array()
        .expect("operations")
        .iter()
        .map(|op| op["name"].as_str().expect("name"))
        .collect();
    assert_eq!(names, ["READ", "UPDATE"]);
    for field in [
        "p50_us",
        "p99_us",
        "p999_us",
        "max_us",
        "mean_us",
        "count",
        "failed_count",
    ] {
        assert!(json["run"]["operations"][0][field].is_number(), "{field}");
    }
    assert!(
        json["run"]["throughput_ops_per_s"]
            .as_f64()
            .expect("throughput")
            > 0.0
    );
}
