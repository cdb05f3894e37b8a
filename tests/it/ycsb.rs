//! `acre bench ycsb` against the embedded cluster, and bad input. (The Acre backend's
//! operations are checked in acre-benches' own tests.)

use crate::cluster::{acre, text};

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
