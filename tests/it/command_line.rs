//! Faults of the command line found by using it as a new user would (issue 10, item 8): a
//! closed stdout, thread counts beyond reason, a ring too small for any record, and a cluster
//! file that no longer parses while its nodes run.

use crate::cluster::{Cluster, acre, text};
use acre::cluster::CLUSTER_FILE;
use acre::db::NodeId;
use acre::engine::directory::NodeManifest;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

/// `acre cluster status | head -1`: the reader of stdout is gone before the command writes.
#[test]
fn status_into_a_closed_pipe_exits_quietly() {
    let cluster = Cluster::up("pipe", "shm");
    let (reader, writer) = std::io::pipe().expect("a pipe");
    drop(reader);
    let output = Command::new(env!("CARGO_BIN_EXE_acre"))
        .args(["cluster", "status", "--dir", cluster.dir()])
        .stdout(writer)
        .stderr(Stdio::piped())
        .output()
        .expect("run acre");
    assert_eq!(output.status.code(), Some(0), "{}", text(&output));
    assert!(output.stderr.is_empty(), "{}", text(&output));
}

#[test]
fn thread_counts_beyond_the_bound_get_one_line_and_exit_code_2() {
    for args in [
        vec!["demo", "--threads", "100000", "--seconds", "1"],
        vec!["demo", "--audits", "100000", "--seconds", "1"],
        vec!["bench", "bank", "--threads", "1,100000", "--seconds", "1"],
        vec!["bench", "ycsb", "--threads", "100000", "--duration", "1s"],
    ] {
        let output = acre(&args);
        assert_eq!(output.status.code(), Some(2), "{args:?}: {}", text(&output));
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert!(stderr.starts_with("acre: "), "{args:?}: {stderr}");
        assert!(stderr.contains("thread"), "{args:?}: {stderr}");
        assert_eq!(stderr.trim().lines().count(), 1, "{args:?}: {stderr}");
    }
}

/// Threads within the bound that the system cannot start are an error of one line too, not an
/// abort. Every thread here asks for a 1 GiB stack (`RUST_MIN_STACK`) under a 3.9 GB
/// address-space limit, so some thread of the run cannot start: one of the embedded cluster's
/// (each node has a worker and a thread for ALLOC requests) or the first bank thread, as the
/// count of threads per node changes. What is left keeps small allocations working (one malloc
/// arena, so no thread reserves an arena of its own).
#[test]
fn threads_the_system_cannot_start_get_one_line_and_exit_code_2() {
    let output = Command::new("sh")
        .arg("-c")
        .arg("ulimit -v 3900000 && exec \"$0\" demo --threads 2 --seconds 1")
        .arg(env!("CARGO_BIN_EXE_acre"))
        .env("RUST_MIN_STACK", (1u64 << 30).to_string())
        .env("MALLOC_ARENA_MAX", "1")
        .output()
        .expect("run acre under sh");
    assert_eq!(output.status.code(), Some(2), "{}", text(&output));
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.starts_with("acre: "), "{stderr}");
    assert!(
        stderr.contains("cannot start thread") || stderr.contains("spawn"),
        "{stderr}"
    );
    assert!(
        stderr.contains("Resource temporarily unavailable"),
        "{stderr}"
    );
    assert_eq!(stderr.trim().lines().count(), 1, "{stderr}");
}

/// A ring too small for any record is refused before a node process starts, not after the
/// nodes failed and a 30 s wait for their manifests ran out.
#[test]
fn a_ring_too_small_is_refused_before_any_node_starts() {
    let dir = format!("/dev/shm/acre-test-ring-{}", std::process::id());
    let started = Instant::now();
    let output = acre(&["cluster", "up", "--dir", &dir, "--ring-bytes", "1"]);
    let elapsed = started.elapsed();
    let _ = std::fs::remove_dir_all(&dir);
    assert_eq!(output.status.code(), Some(2), "{}", text(&output));
    assert!(
        elapsed < Duration::from_secs(5),
        "{elapsed:?}: {}",
        text(&output)
    );
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("ring_bytes"), "{stderr}");
    assert_eq!(stderr.trim().lines().count(), 1, "{stderr}");
}

/// With a garbage cluster file, `up` still sees the running nodes (and leaves them alone), and
/// `down --purge` still finds and stops them through their manifests.
#[test]
fn a_garbage_cluster_file_does_not_hide_the_running_nodes() {
    let cluster = Cluster::up("garbage", "shm");
    let pids: Vec<u32> = (1..=3)
        .map(|n| {
            NodeManifest::read(&cluster.dir, NodeId(n))
                .expect("read a manifest")
                .expect("a running node has a manifest")
                .pid
        })
        .collect();
    std::fs::write(cluster.dir.join(CLUSTER_FILE), "this is [not toml").expect("garble");

    let up = acre(&["cluster", "up", "--dir", cluster.dir()]);
    let down = acre(&["cluster", "down", "--dir", cluster.dir(), "--purge"]);
    let deadline = Instant::now() + Duration::from_secs(10);
    while pids.iter().any(|&pid| acre::cluster::process_alive(pid)) && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(50));
    }
    let survivors: Vec<u32> = pids
        .iter()
        .copied()
        .filter(|&pid| acre::cluster::process_alive(pid))
        .collect();
    for &pid in &survivors {
        let _ = acre::engine::signal::terminate(pid); // leave no node behind
    }

    assert_eq!(up.status.code(), Some(2), "{}", text(&up));
    assert!(
        String::from_utf8_lossy(&up.stderr).contains("already running"),
        "{}",
        text(&up)
    );
    assert!(down.status.success(), "{}", text(&down));
    assert_eq!(survivors, Vec::<u32>::new(), "{}", text(&down));
    assert!(!cluster.dir.exists(), "down --purge removes the directory");
}

/// `acre cluster up --nodes 4 --f 2` without `--cm`: the default CM size, 2f + 1 capped at the
/// node count, came out at 4, and `up` refused its own default as "--cm 4: a Raft group of an
/// even size ...", naming an option the user never gave. It starts with 3 replicas.
#[test]
fn the_default_cm_on_an_even_node_count_below_2f_plus_1_has_an_odd_size() {
    let cluster = Cluster::up_with("even-cm", "shm", &["--nodes", "4", "--f", "2"]);
    let status = acre(&["cluster", "status", "--dir", cluster.dir()]);
    assert!(status.status.success(), "{}", text(&status));
    assert!(
        String::from_utf8_lossy(&status.stdout).contains("replicas n1, n2, n3, leases"),
        "{}",
        text(&status)
    );
}
