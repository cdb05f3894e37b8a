//! `acre bench failover`: one kill of a backup-only node is measured and summarised, the
//! cluster is gone after; one kill of a primary is measured through its region's recovery; and
//! bad input is refused before any cluster starts.

use crate::cluster::{acre, text};
use std::path::Path;

#[test]
fn one_kill_of_a_backup_only_node_is_measured_and_summarised() {
    let dir = format!("/dev/shm/acre-test-failover-{}", std::process::id());
    let out = acre(&[
        "bench",
        "failover",
        "--kills",
        "1",
        "--victim",
        "backup",
        "--lease-ms",
        "300",
        "--dir",
        &dir,
    ]);
    let shown = text(&out);
    assert!(out.status.success(), "{shown}");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        stdout.contains("failover summary, ms from the kill (median/p99/max):"),
        "{shown}"
    );
    // nodes transport victim lease-ms kills failed suspected committed commits-again stall
    let row: Vec<&str> = stdout
        .lines()
        .map(|line| line.split_whitespace().collect::<Vec<_>>())
        .find(|fields| fields.len() == 10 && fields[..3] == ["3", "shm", "backup"])
        .unwrap_or_else(|| panic!("no summary row: {shown}"));
    assert_eq!(row[3..6], ["300", "1", "0"], "{shown}");
    let median = |field: &str| -> f64 {
        field
            .split('/')
            .next()
            .and_then(|m| m.parse().ok())
            .unwrap_or_else(|| panic!("{field:?} is not median/p99/max: {shown}"))
    };
    let (suspected, committed, again) = (median(row[6]), median(row[7]), median(row[8]));
    // The CM suspects the node when the lease it granted runs out, and it granted the last one
    // at most a fifth of a lease before the kill (renewals): 240 ms at the earliest.
    assert!(suspected >= 200.0, "suspected too early: {shown}");
    assert!(committed >= suspected, "{shown}");
    assert!(again >= 0.0, "{shown}");
    assert!(
        !Path::new(&dir).exists(),
        "the cluster directory is removed"
    );
}

/// `median/p99/max` -> median.
fn median(field: &str, shown: &str) -> f64 {
    field
        .split('/')
        .next()
        .and_then(|m| m.parse().ok())
        .unwrap_or_else(|| panic!("{field:?} is not median/p99/max: {shown}"))
}

#[test]
fn one_kill_of_a_primary_is_measured_until_its_region_commits_again() {
    let dir = format!("/dev/shm/acre-test-failover-primary-{}", std::process::id());
    let out = acre(&[
        "bench",
        "failover",
        "--kills",
        "1",
        "--victim",
        "primary",
        "--lease-ms",
        "300",
        "--dir",
        &dir,
    ]);
    let shown = text(&out);
    assert!(out.status.success(), "{shown}");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let rows: Vec<Vec<&str>> = stdout
        .lines()
        .map(|line| line.split_whitespace().collect::<Vec<_>>())
        .filter(|fields| fields[..].starts_with(&["3", "shm", "primary", "300", "1"]))
        .collect();
    // nodes transport victim lease-ms kills failed suspected committed commits-again stall, then
    // nodes transport victim lease-ms recovered active-again region-commits-again region-stall
    let [removal, recovery] = &rows[..] else {
        panic!("expected the two summary rows: {shown}");
    };
    assert_eq!(removal.len(), 10, "{shown}");
    assert_eq!(removal[5], "0", "{shown}");
    assert_eq!(recovery.len(), 8, "{shown}");
    let committed = median(removal[7], &shown);
    let (active, again) = (median(recovery[5], &shown), median(recovery[6], &shown));
    // The region is blocked in the configuration without the victim, and active again only in
    // a later one; no update of it commits after the removal until then.
    assert!(active > committed, "{shown}");
    assert!(again >= active, "{shown}");
    assert!(
        stdout.contains("(the victim's) active again"),
        "the kill's line names the region: {shown}"
    );
    assert!(
        !Path::new(&dir).exists(),
        "the cluster directory is removed"
    );
}

#[test]
fn bad_input_is_refused_in_one_line_before_any_cluster_starts() {
    let dir = format!("/dev/shm/acre-test-failover-bad-{}", std::process::id());
    for bad in [
        &["--kills", "0"][..],
        &["--victim", "primary,bystander"],
        &["--victim", "leader,leader"],
        &["--nodes", "2"],
        &["--lease-ms", "1"],
    ] {
        let mut args = vec!["bench", "failover", "--dir", &dir];
        args.extend_from_slice(bad);
        let out = acre(&args);
        assert_eq!(out.status.code(), Some(2), "{bad:?}: {}", text(&out));
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(stderr.lines().count(), 1, "{bad:?}: {}", text(&out));
        assert!(!Path::new(&dir).exists(), "{bad:?} started a cluster");
    }
}
