//! Faults of the command line found by using it as a new user would (issue 10, item 8): a
//! closed stdout, thread counts beyond reason, a ring too small for any record, and a cluster
//! file that no longer parses while its nodes run.

use crate::cluster::{Cluster, text};
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
