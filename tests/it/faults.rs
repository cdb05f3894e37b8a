//! A node that dies or stops under a running cluster (issue 11): the client says so when it
//! happens and keeps what it measured (item 5).

use crate::cluster::{Cluster, node_pid, send_signal};
use acre::db::NodeId;
use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

/// How long the bank under test runs.
const BANK_SECONDS: u64 = 20;
/// How long the bank may take to start transferring.
const BANK_START_TIMEOUT: Duration = Duration::from_secs(20);
/// How soon after a node dies the client must say so: a transaction that needs the dead node's
/// vote waits 5 s (`REPLY_TIMEOUT`) for it, plus a margin for a loaded machine.
const NOTICE_TIMEOUT: Duration = Duration::from_secs(10);
/// How long the bank may take to end after its run.
const BANK_END_TIMEOUT: Duration = Duration::from_secs(60);

/// The lines a child process writes to one of its streams, as they come.
fn lines(stream: impl std::io::Read + Send + 'static) -> mpsc::Receiver<String> {
    let (send, receive) = mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stream).lines().map_while(Result::ok) {
            if send.send(line).is_err() {
                break;
            }
        }
    });
    receive
}

/// The first line from `lines` that contains `needle`, if one comes before `deadline`; every
/// line read on the way is added to `seen`.
fn wait_for_line(
    lines: &mpsc::Receiver<String>,
    needle: &str,
    deadline: Instant,
    seen: &mut Vec<String>,
) -> Option<String> {
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        let line = lines.recv_timeout(left).ok()?;
        seen.push(line.clone());
        if line.contains(needle) {
            return Some(line);
        }
    }
}

/// `kill -9` of a node under `acre bank` over shm: the client used to print nothing until its
/// run ended, then only the error, dropping what it had measured. Now the first failure is on
/// stderr within seconds, the run goes on, and it ends with its report and exit code 2.
#[test]
fn a_client_under_a_node_that_dies_says_so_at_once_and_keeps_what_it_measured() {
    let cluster = Cluster::up("dies", "shm");
    let mut bank = Command::new(env!("CARGO_BIN_EXE_acre"))
        .args(["bank", "--dir", cluster.dir(), "--accounts", "30"])
        .args(["--seconds", &BANK_SECONDS.to_string()])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start acre bank");
    let stdout = lines(bank.stdout.take().expect("piped stdout"));
    let stderr = lines(bank.stderr.take().expect("piped stderr"));
    let mut out = Vec::new();
    let mut err = Vec::new();
    let started = wait_for_line(
        &stdout,
        "transfer threads",
        Instant::now() + BANK_START_TIMEOUT,
        &mut out,
    );
    if started.is_none() {
        let _ = bank.kill();
        panic!("the bank did not start: {out:?}");
    }

    send_signal(node_pid(&cluster, NodeId(2)), "KILL");
    let killed = Instant::now();
    let notice = wait_for_line(&stderr, "failed (", killed + NOTICE_TIMEOUT, &mut err);
    let running_at_notice = bank.try_wait().expect("poll acre bank").is_none();
    let status = loop {
        if let Some(status) = bank.try_wait().expect("poll acre bank") {
            break status;
        }
        if killed.elapsed() > BANK_END_TIMEOUT {
            let _ = bank.kill();
            panic!("the bank did not end: {out:?} {err:?}");
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    out.extend(stdout.iter());
    err.extend(stderr.iter());

    let notice = notice.unwrap_or_else(|| {
        panic!("nothing on stderr within {NOTICE_TIMEOUT:?} of the kill: {err:?}")
    });
    assert!(running_at_notice, "said only at the end: {notice}");
    assert!(notice.contains("n2"), "{notice}");
    assert_eq!(status.code(), Some(2), "{out:?} {err:?}");
    let committed: u64 = out
        .iter()
        .find_map(|l| l.strip_prefix("transfers: "))
        .and_then(|l| l.split_whitespace().next())
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("no report of what completed: {out:?} {err:?}"));
    assert!(committed > 0, "{out:?}");
    assert!(
        out.iter().any(|l| l.starts_with("failed (unavailable)")),
        "{out:?}"
    );
    let last = err.last().expect("a last line on stderr");
    assert!(last.starts_with("acre: "), "{err:?}");
    assert!(last.contains("transactions failed"), "{last}");
}
