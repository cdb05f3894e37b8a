//! Faults of the command line found by using it as a new user would (issue 10, item 8): a
//! closed stdout, thread counts beyond reason, a ring too small for any record, and a cluster
//! file that no longer parses while its nodes run.

use crate::cluster::{Cluster, acre, text};
use std::process::{Command, Stdio};

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
/// address-space limit: the three node workers of the embedded cluster fit (with 400-900 MB
/// left for the rest, measured), the first bank thread does not, and what is left keeps small
/// allocations working (one malloc arena, so no thread reserves an arena of its own).
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
    assert!(stderr.contains("cannot start thread"), "{stderr}");
    assert_eq!(stderr.trim().lines().count(), 1, "{stderr}");
}
