//! A node that comes back (issue 11 item 2): its region copies and rings outlive its process,
//! a restarted node refuses to start on them (until recovery exists) and changes nothing,
//! `cluster down` keeps them unless `--purge`, and `cluster up` says what to do with them.

use crate::cluster::{Cluster, acre, node_pid, run_bounded, send_signal, text, wait_until_dead};
use acre::cluster::CLUSTER_FILE;
use acre::db::{Db, NodeId};
use acre_benches::bank::Bank;
use std::collections::BTreeMap;
use std::hash::{DefaultHasher, Hasher};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

/// How long a node given data of an earlier run may take to refuse (it reads its region
/// files once).
const REFUSAL_TIMEOUT: Duration = Duration::from_secs(20);
/// How long the cluster may take to apply what the bank committed everywhere.
const QUIESCE_TIMEOUT: Duration = Duration::from_secs(10);

/// Which of a node's area files a snapshot takes.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Areas {
    All,
    /// Region copies and rings, not the areas a running node rewrites while idle (the reply
    /// area, and the status area whose heartbeat moves every 200 ms): ids `0x7000_0000` up to
    /// the rings' `0x8000_0000`.
    Data,
}

/// The area files of `node` (`n<id>-r<area>-<key>.region`) with a hash of their bytes.
fn snapshot(dir: &Path, node: NodeId, areas: Areas) -> BTreeMap<PathBuf, u64> {
    let prefix = format!("{node}-r");
    std::fs::read_dir(dir)
        .expect("list the cluster directory")
        .map(|entry| entry.expect("a directory entry").path())
        .filter(|path| {
            let name = path
                .file_name()
                .and_then(|n| n.to_str())
                .unwrap_or_default();
            let area = name
                .strip_prefix(&prefix)
                .filter(|_| name.ends_with(".region"))
                .and_then(|rest| rest.split_once('-'))
                .and_then(|(area, _)| area.parse::<u32>().ok());
            match area {
                Some(area) => areas == Areas::All || !(0x7000_0000..0x8000_0000).contains(&area),
                None => false,
            }
        })
        .map(|path| {
            let mut hasher = DefaultHasher::new();
            hasher.write(&std::fs::read(&path).expect("read an area file"));
            (path, hasher.finish())
        })
        .collect()
}

/// Puts data into every region (the bank's accounts are spread over all of them) and waits
/// until every backup has applied it.
fn fill(cluster: &Cluster) {
    let db = Db::connect(&cluster.dir.join(CLUSTER_FILE)).expect("connect");
    Bank::create(&db, 30, 1000).expect("create accounts");
    assert!(db.quiesce(QUIESCE_TIMEOUT), "the cluster did not quiesce");
}

/// `acre node` for `node` of the cluster, bounded in time: a node that starts serves until it
/// is stopped, which is the failure here.
fn start_node(cluster: &Cluster, node: u16) -> std::process::Output {
    let mut command = Command::new(env!("CARGO_BIN_EXE_acre"));
    command
        .arg("node")
        .arg("--cluster")
        .arg(cluster.dir.join(CLUSTER_FILE))
        .args(["--id", &node.to_string()]);
    run_bounded(command, REFUSAL_TIMEOUT)
        .unwrap_or_else(|output| panic!("n{node} started on its old data: {}", text(&output)))
}

/// The refusal is one line that says what the node found, that recovery will make it rejoin,
/// and how to start fresh.
fn assert_refused(output: &std::process::Output, cluster: &Cluster, node: u16) {
    assert_eq!(output.status.code(), Some(2), "{}", text(output));
    let stderr = String::from_utf8_lossy(&output.stderr);
    let line = stderr
        .lines()
        .find(|l| l.starts_with("acre: "))
        .unwrap_or_else(|| panic!("no error line: {}", text(output)));
    for expected in [
        format!("n{node} found data of an earlier run in {}", cluster.dir()),
        "region copies".to_string(),
        "recovery will make it rejoin".to_string(),
        format!("acre cluster down --dir {} --purge", cluster.dir()),
    ] {
        assert!(line.contains(&expected), "{expected:?} not in: {line}");
    }
}

/// After `kill -9` of n2, `acre node --id 2` used to remove its surviving files and start
/// empty, serving as primary of r2 (the bank then failed with `no object at r2+...`). Now it
/// refuses, and its files are byte for byte what the killed node left.
#[test]
fn a_node_killed_and_started_again_refuses_its_data_and_leaves_it_untouched() {
    let cluster = Cluster::up("restart-kill", "shm");
    fill(&cluster);
    let pid = node_pid(&cluster, NodeId(2));
    send_signal(pid, "KILL");
    wait_until_dead(pid);
    let before = snapshot(&cluster.dir, NodeId(2), Areas::All);
    assert!(before.len() > 3, "n2's files: {before:?}");

    let output = start_node(&cluster, 2);

    assert_refused(&output, &cluster, 2);
    assert_eq!(
        snapshot(&cluster.dir, NodeId(2), Areas::All),
        before,
        "n2's files changed"
    );
}

/// SIGTERM used to make a node delete its region and ring files, and `cluster down` removed
/// the directory. Now `down` keeps the data; a node or `up` started on it refuses and says how
/// to start fresh; `down --purge` removes it.
#[test]
fn cluster_down_keeps_the_data_and_up_says_how_to_start_fresh() {
    let cluster = Cluster::up("restart-down", "shm");
    fill(&cluster);
    let before: Vec<_> = (1..=3)
        .map(|n| snapshot(&cluster.dir, NodeId(n), Areas::Data))
        .collect();

    let down = acre(&["cluster", "down", "--dir", cluster.dir()]);
    assert!(down.status.success(), "{}", text(&down));
    assert!(
        String::from_utf8_lossy(&down.stdout).contains("--purge"),
        "{}",
        text(&down)
    );
    for (n, files) in (1..=3).zip(&before) {
        assert_eq!(
            &snapshot(&cluster.dir, NodeId(n), Areas::Data),
            files,
            "n{n}'s files"
        );
    }

    let node = start_node(&cluster, 1);
    assert_refused(&node, &cluster, 1);
    let up = acre(&["cluster", "up", "--dir", cluster.dir()]);
    assert_eq!(up.status.code(), Some(2), "{}", text(&up));
    let stderr = String::from_utf8_lossy(&up.stderr);
    assert_eq!(stderr.trim().lines().count(), 1, "{stderr}");
    for expected in [
        "holds the data of a stopped cluster",
        "recovery",
        &format!("acre cluster down --dir {} --purge", cluster.dir()),
    ] {
        assert!(stderr.contains(expected), "{expected:?} not in: {stderr}");
    }
    for (n, files) in (1..=3).zip(&before) {
        assert_eq!(
            &snapshot(&cluster.dir, NodeId(n), Areas::Data),
            files,
            "n{n}'s files"
        );
    }

    let purge = acre(&["cluster", "down", "--dir", cluster.dir(), "--purge"]);
    assert!(purge.status.success(), "{}", text(&purge));
    assert!(!cluster.dir.exists(), "down --purge removes the directory");
}
