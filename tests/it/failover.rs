//! `acre bench failover`: one kill of a backup-only node is measured and summarised, the
//! cluster is gone after; two kills of a primary are measured through their region's recovery,
//! with the transactions recovered; and bad input is refused before any cluster starts.

use crate::cluster::{acre, run_bounded, text};
use std::path::Path;
use std::process::Command;
use std::time::Duration;

/// How long a run of two kills may take: two clusters started and stopped, each kill a lease
/// of 300 ms and the recovery after it (seconds on a loaded host), with room to spare.
const TWO_KILLS_MAX: Duration = Duration::from_secs(180);

/// The summary row of the transactions recovered: `nodes transport victim lease-ms kills`, then
/// `median/p99/max (total)` for committed, aborted and regions; the three as
/// `(median, max, total)`.
fn recovered_row(stdout: &str, prefix: &[&str], shown: &str) -> [(u64, u64, u64); 3] {
    let mut lines = stdout.lines();
    lines
        .find(|line| line.starts_with("transactions recovered per kill"))
        .unwrap_or_else(|| panic!("no table of the transactions recovered: {shown}"));
    let fields: Vec<&str> = lines
        .map(|line| line.split_whitespace().collect::<Vec<_>>())
        .find(|fields| fields.starts_with(prefix))
        .unwrap_or_else(|| panic!("no row {prefix:?} of the transactions recovered: {shown}"));
    assert_eq!(fields.len(), prefix.len() + 6, "{shown}");
    std::array::from_fn(|column| {
        let spread = fields[prefix.len() + 2 * column];
        let total = fields[prefix.len() + 2 * column + 1];
        let numbers: Vec<u64> = spread
            .split('/')
            .map(|n| n.parse().unwrap_or_else(|_| panic!("{spread:?}: {shown}")))
            .collect();
        let total = total
            .strip_prefix('(')
            .and_then(|t| t.strip_suffix(')'))
            .and_then(|t| t.parse().ok())
            .unwrap_or_else(|| panic!("{total:?} is not (total): {shown}"));
        (numbers[0], numbers[2], total)
    })
}

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
    // A backup-only node coordinates nothing and is no region's primary: nothing needs
    // recovery (docs/failures.md#transaction-recovery).
    let [committed, aborted, regions] =
        recovered_row(&stdout, &["3", "shm", "backup", "300", "1"], &shown);
    assert_eq!(
        (committed.2, aborted.2, regions.2),
        (0, 0, 0),
        "nothing to recover: {shown}"
    );
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
fn kills_of_a_primary_are_measured_until_its_region_commits_again_with_what_was_recovered() {
    let dir = format!("/dev/shm/acre-test-failover-primary-{}", std::process::id());
    let json = format!("{dir}.json");
    let mut command = Command::new(env!("CARGO_BIN_EXE_acre"));
    command.args([
        "bench",
        "failover",
        "--kills",
        "2",
        "--victim",
        "primary",
        "--lease-ms",
        "300",
        "--dir",
        &dir,
        "--json",
        &json,
    ]);
    let out = match run_bounded(command, TWO_KILLS_MAX) {
        Ok(out) => out,
        Err(out) => {
            // Killed: its last cluster is still up.
            let _ = acre(&["cluster", "down", "--dir", &dir, "--purge"]);
            panic!("not done within {TWO_KILLS_MAX:?}: {}", text(&out));
        }
    };
    let shown = text(&out);
    assert!(out.status.success(), "{shown}");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let rows: Vec<Vec<&str>> = stdout
        .lines()
        .map(|line| line.split_whitespace().collect::<Vec<_>>())
        .filter(|fields| fields[..].starts_with(&["3", "shm", "primary", "300", "2"]))
        .collect();
    // nodes transport victim lease-ms kills failed suspected committed commits-again stall, then
    // nodes transport victim lease-ms recovered active-again region-commits-again region-stall,
    // then the transactions recovered
    let [removal, recovery, _recovered] = &rows[..] else {
        panic!("expected the three summary rows: {shown}");
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
    // Each kill took the primary of one region (one per node), which its promoted backup
    // recovered: one region recovered per kill, by exactly one node.
    let [txn_committed, txn_aborted, regions] =
        recovered_row(&stdout, &["3", "shm", "primary", "300", "2"], &shown);
    assert_eq!(regions, (1, 1, 2), "{shown}");
    // The kills' lines and the JSON say the same, kill by kill.
    let written = std::fs::read_to_string(&json).expect("the JSON file");
    let _ = std::fs::remove_file(&json);
    let parsed: serde_json::Value = serde_json::from_str(&written).expect("JSON");
    let kills = parsed["series"][0]["kills"].as_array().expect("kills");
    assert_eq!(kills.len(), 2, "{written}");
    let count = |kill: &serde_json::Value, what: &str| {
        kill["recovered"][what]
            .as_u64()
            .unwrap_or_else(|| panic!("no recovered.{what}: {written}"))
    };
    let mut committed_total = 0;
    let mut aborted_total = 0;
    for kill in kills {
        assert_eq!(count(kill, "regions"), 1, "{written}");
        assert_eq!(
            kill["recovered"]["caveats"],
            serde_json::json!([]),
            "{written}"
        );
        // What recovery settles of the bench's updates to the victim's region: the one in
        // flight when the victim stopped answering, and over shm the ones that committed in
        // its memory after the kill (their truncations may not have reached the backup).
        let settled = count(kill, "committed") + count(kill, "aborted");
        let reached = kill["recovery"]["before_removal_commit_count"]
            .as_u64()
            .expect("before_removal_commit_count");
        assert!(settled <= reached + 1, "{written}");
        committed_total += count(kill, "committed");
        aborted_total += count(kill, "aborted");
    }
    assert_eq!(
        (txn_committed.2, txn_aborted.2),
        (committed_total, aborted_total),
        "{shown}"
    );
    let total = &parsed["series"][0]["recovered_total"];
    assert_eq!(total["regions"], 2, "{written}");
    assert_eq!(total["committed"], committed_total, "{written}");
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
