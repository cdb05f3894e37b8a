//! `acre bench recopy`: a small cluster is filled, a node is killed, and the copies that follow
//! are measured to the end and reported with the foreground's throughput; the cluster is gone
//! after.

use crate::cluster::text;
use std::path::Path;
use std::process::Command;

#[test]
fn a_small_recopy_is_measured_to_the_last_copy_and_reported() {
    let dir = format!("/dev/shm/acre-test-recopy-{}", std::process::id());
    let json = format!("{dir}.json");
    // Copies paced at 8 MiB/s: a region of 8 MiB takes about a second, so that several samples
    // of the foreground fall within the copies.
    let out = Command::new(env!("CARGO_BIN_EXE_acre"))
        .env("ACRE_COPY_BYTES_PER_SECOND", (8u64 << 20).to_string())
        .args([
            "bench",
            "recopy",
            "--data-mib",
            "16",
            "--region-mib",
            "8",
            "--baseline-seconds",
            "1",
            "--after-seconds",
            "0.5",
            "--copy-seconds-max",
            "60",
            "--lease-ms",
            "300",
            "--dir",
            &dir,
            "--json",
            &json,
        ])
        .output()
        .expect("run acre");
    let shown = text(&out);
    let written = std::fs::read_to_string(&json);
    let _ = std::fs::remove_file(&json);
    assert!(out.status.success(), "{shown}");
    let stdout = String::from_utf8_lossy(&out.stdout);
    for figure in [
        "data: ",
        "copy time: ",
        "re-replication rate: ",
        "before the kill: ",
        "during the copies: ",
        "after the copies: ",
        "goal (issue 14): ",
    ] {
        assert!(stdout.contains(figure), "no {figure:?}: {shown}");
    }
    // 3 nodes, f = 1, a primary killed: its regions and those it backed up are copied anew.
    let copies: usize = stdout
        .lines()
        .find_map(|line| line.strip_prefix("re-replicated: "))
        .and_then(|rest| rest.split_whitespace().next())
        .and_then(|count| count.parse().ok())
        .unwrap_or_else(|| panic!("no count of copies: {shown}"));
    assert!(copies >= 1, "{shown}");
    let written = written.unwrap_or_else(|e| panic!("no JSON written ({e}): {shown}"));
    assert!(written.contains("\"recopied_bytes\": "), "{written}");
    assert!(written.contains("\"during\": {\"median\": "), "{written}");
    assert!(
        !Path::new(&dir).exists(),
        "the cluster directory is removed"
    );
}
