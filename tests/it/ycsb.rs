//! `acre bench ycsb` against the embedded cluster, the Acre backend's operations checked
//! against what was written, and bad input.

use crate::cluster::{acre, text};
use acre::db::{Db, EmbeddedOptions};
use acre::ycsb::AcreBackend;
use acre_benches::ycsb::{Backend, Fields};

fn small_db() -> Db {
    Db::embedded(&EmbeddedOptions {
        region_bytes: 8 << 20,
        ..EmbeddedOptions::default()
    })
    .expect("start an embedded cluster")
}

fn record(tag: u8) -> Fields {
    (0..10u8).map(|field| vec![tag ^ field; 100]).collect()
}

#[test]
fn the_acre_backend_reads_updates_and_scans_what_was_inserted() {
    let backend = AcreBackend::create(small_db(), 300).expect("create the table");
    let mut client = backend.client().expect("a client");
    let mut keys: Vec<String> = (0..300u32)
        .map(|n| format!("user{}", n * 7919 % 1000))
        .collect();
    for (n, key) in keys.iter().enumerate() {
        client.insert(key, &record(n as u8)).expect("insert");
    }
    assert!(
        client.insert(&keys[0], &record(0)).is_err(),
        "a second insert of a key fails"
    );
    for (n, key) in keys.iter().enumerate() {
        assert_eq!(
            client.read(key).expect("read"),
            Some(record(n as u8)),
            "{key}"
        );
    }
    assert_eq!(client.read("user-missing").expect("read"), None);

    assert!(client.update(&keys[5], 3, b"three").expect("update"));
    assert!(
        client
            .read_modify_write(&keys[5], 9, b"nine")
            .expect("read-modify-write")
    );
    let mut expected = record(5);
    expected[3] = b"three".to_vec();
    expected[9] = b"nine".to_vec();
    assert_eq!(client.read(&keys[5]).expect("read"), Some(expected.clone()));
    assert!(!client.update("user-missing", 0, b"x").expect("update"));
    assert!(
        !client
            .read_modify_write("user-missing", 0, b"x")
            .expect("rmw")
    );

    // Scans return records in key order from the start key on, across B-tree leaves.
    let by_key: std::collections::BTreeMap<String, Fields> = keys
        .iter()
        .enumerate()
        .map(|(n, key)| {
            (
                key.clone(),
                if n == 5 {
                    expected.clone()
                } else {
                    record(n as u8)
                },
            )
        })
        .collect();
    keys.sort();
    for (start, count) in [(&keys[0], 100), (&keys[123], 50), (&keys[290], 100)] {
        let scanned = client.scan(start, count).expect("scan");
        let wanted: Vec<Fields> = by_key
            .range(start.clone()..)
            .take(count)
            .map(|(_, f)| f.clone())
            .collect();
        assert_eq!(scanned, wanted, "scan from {start} of {count}");
    }
    assert!(client.scan("user999999", 10).expect("scan").is_empty());
}

#[test]
fn a_short_ycsb_run_against_the_embedded_cluster_reports_every_operation() {
    let dir = tempfile::tempdir().expect("temporary directory");
    for (workload, kinds) in [
        ("a", &["READ", "UPDATE"][..]),
        ("e", &["SCAN", "INSERT"][..]),
        ("f", &["READ", "READ-MODIFY-WRITE"][..]),
    ] {
        let json = dir.path().join(format!("{workload}.json"));
        let output = acre(&[
            "bench",
            "ycsb",
            "--workload",
            workload,
            "--records",
            "400",
            "--threads",
            "2",
            "--duration",
            "1s",
            "--warmup",
            "200ms",
            "--seed",
            "7",
            "--json",
            json.to_str().expect("utf-8 path"),
        ]);
        assert!(output.status.success(), "{workload}: {}", text(&output));
        let stdout = String::from_utf8_lossy(&output.stdout);
        assert!(
            stdout.contains("[RUN]") && stdout.contains("p99.9"),
            "{stdout}"
        );
        let results: serde_json::Value =
            serde_json::from_slice(&std::fs::read(&json).expect("read the JSON")).expect("JSON");
        assert_eq!(results["target"], "acre");
        let load = &results["load"]["operations"][0];
        assert_eq!(
            (load["name"].as_str(), load["count"].as_u64()),
            (Some("INSERT"), Some(400))
        );
        assert_eq!(load["failed_count"], 0);
        let run = &results["run"];
        assert!(run["throughput_ops_per_s"].as_f64().expect("throughput") > 0.0);
        for kind in kinds {
            let op = run["operations"]
                .as_array()
                .expect("operations")
                .iter()
                .find(|op| op["name"] == *kind)
                .unwrap_or_else(|| panic!("{workload}: no {kind} in {run}"));
            assert!(op["count"].as_u64().expect("count") > 0, "{workload}: {op}");
            assert_eq!(op["failed_count"], 0, "{workload}: {op}");
            let (p50, p99, max) = (
                op["p50_us"].as_f64(),
                op["p99_us"].as_f64(),
                op["max_us"].as_f64(),
            );
            assert!(
                p50 > Some(0.0) && p50 <= p99 && p99 <= max,
                "{workload}: {op}"
            );
        }
    }
}

#[test]
fn bad_ycsb_input_gets_one_line_and_exit_code_2() {
    for args in [
        vec!["bench", "ycsb", "--workload", "z", "--duration", "1s"],
        vec!["bench", "ycsb", "--records", "0", "--duration", "1s"],
        vec!["bench", "ycsb", "--threads", "0", "--duration", "1s"],
        vec![
            "bench",
            "ycsb",
            "--target",
            "postgres://x",
            "--duration",
            "1s",
        ],
        vec![
            "bench",
            "ycsb",
            "--target",
            "redis://127.0.0.1:1",
            "--duration",
            "1s",
        ],
        vec![
            "bench",
            "ycsb",
            "--target",
            "acre:/dev/shm/acre-test-no-such-cluster",
        ],
        vec!["bench", "ycsb", "--duration", "soon"],
    ] {
        let output = acre(&args);
        assert_eq!(output.status.code(), Some(2), "{args:?}: {}", text(&output));
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert_eq!(stderr.trim().lines().count(), 1, "{args:?}: {stderr}");
    }
}
