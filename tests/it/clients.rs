//! Client processes that stop while they work (issue 11 item 1): stopped by SIGINT or SIGTERM, a
//! client finishes its run and releases everything it holds; killed, it leaves nothing that
//! slows the cluster down or that the next client inherits (docs/failures.md#a-client-that-dies).

use crate::cluster::{Cluster, acre, text};
use acre::cluster::CLUSTER_FILE;
use acre::db::Db;
use acre::engine::addr::NodeId;
use acre::engine::channel::ring_area_id;
use acre::engine::directory::NodeManifest;
use acre::nvm_log::ring::{HEAD_OFFSET, TAIL_OFFSET, decode_pos_word};
use std::io::{BufRead, BufReader, Read};
use std::os::unix::process::ExitStatusExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

/// How long a client runs transfers before it is stopped.
const RUN_BEFORE_STOP: Duration = Duration::from_millis(1500);
/// How long `acre bank` may take to connect and create its accounts.
const START_TIMEOUT: Duration = Duration::from_secs(30);
/// How long an interrupted client may take to finish its run, report and exit.
const EXIT_TIMEOUT: Duration = Duration::from_secs(30);
/// How long the memory nodes may take to drop what a stopped client held.
const RELEASE_TIMEOUT: Duration = Duration::from_secs(20);
/// The memory nodes `Cluster::up` starts.
const MEMORY_NODES: [NodeId; 3] = [NodeId(1), NodeId(2), NodeId(3)];

/// An `acre bank` process of a test, killed if the test fails while it runs.
struct Running {
    child: Child,
    /// The lines of its stdout, as they come.
    lines: mpsc::Receiver<String>,
    stdout: String,
}

impl Running {
    /// Starts `acre bank` on `cluster` with `args` and waits until its transfers run.
    fn start(cluster: &Cluster, args: &[&str]) -> Running {
        Running::spawn(
            &[&["bank", "--dir", cluster.dir()], args].concat(),
            "transfer threads",
        )
    }

    /// Starts `acre` with `args` and waits until its stdout has a line containing `ready`.
    fn spawn(args: &[&str], ready: &str) -> Running {
        let mut child = Command::new(env!("CARGO_BIN_EXE_acre"))
            .args(args)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("start acre bank");
        let stdout = child.stdout.take().expect("piped stdout");
        let (sender, lines) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                if sender.send(line).is_err() {
                    break;
                }
            }
        });
        let mut running = Running {
            child,
            lines,
            stdout: String::new(),
        };
        let deadline = Instant::now() + START_TIMEOUT;
        while !running.stdout.contains(ready) {
            let left = deadline.saturating_duration_since(Instant::now());
            match running.lines.recv_timeout(left) {
                Ok(line) => {
                    running.stdout.push_str(&line);
                    running.stdout.push('\n');
                }
                Err(_) => {
                    let (status, stderr) = running.kill();
                    panic!(
                        "acre {args:?} printed no {ready:?} within {START_TIMEOUT:?} \
                         ({status}):\n{}\n{stderr}",
                        running.stdout
                    );
                }
            }
        }
        running
    }

    fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Sends `signal` (a name `kill -s` takes).
    fn signal(&self, signal: &str) {
        let status = Command::new("kill")
            .args(["-s", signal, &self.pid().to_string()])
            .status()
            .expect("run kill");
        assert!(status.success(), "kill -s {signal} failed: {status}");
    }

    /// Waits up to `timeout` for the process to exit; returns its status, stdout and stderr.
    fn wait(mut self, timeout: Duration) -> (ExitStatus, String, String) {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(status) = self.child.try_wait().expect("wait for acre bank") {
                self.stdout.extend(self.lines.try_iter().map(|l| l + "\n"));
                // The reader thread may still hold the last lines: it ends at end of file.
                while let Ok(line) = self.lines.recv_timeout(Duration::from_secs(1)) {
                    self.stdout.push_str(&line);
                    self.stdout.push('\n');
                }
                let mut stderr = String::new();
                if let Some(mut pipe) = self.child.stderr.take() {
                    let _ = pipe.read_to_string(&mut stderr);
                }
                return (status, std::mem::take(&mut self.stdout), stderr);
            }
            if Instant::now() >= deadline {
                let (status, stderr) = self.kill();
                panic!(
                    "acre bank did not exit within {timeout:?} ({status}):\n{}\n{stderr}",
                    self.stdout
                );
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    /// Kills the process (SIGKILL) and returns how it ended and its stderr.
    fn kill(&mut self) -> (ExitStatus, String) {
        let _ = self.child.kill();
        let status = self.child.wait().expect("wait for acre bank");
        let mut stderr = String::new();
        if let Some(mut pipe) = self.child.stderr.take() {
            let _ = pipe.read_to_string(&mut stderr);
        }
        (status, stderr)
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

/// The client id `acre bank` claimed, as the first line of its `stdout` says.
fn client_of(stdout: &str) -> NodeId {
    let id = stdout
        .split_once("as client n")
        .and_then(|(_, rest)| rest.split(|c: char| !c.is_ascii_digit()).next())
        .and_then(|digits| digits.parse().ok())
        .unwrap_or_else(|| panic!("no client id in:\n{stdout}"));
    NodeId(id)
}

/// Head and tail of the ring `sender` writes at memory node `receiver`, read from its file.
fn ring_positions(dir: &Path, receiver: NodeId, sender: NodeId) -> (u64, u64) {
    let prefix = format!("{receiver}-r{}-", ring_area_id(sender).0);
    let path = std::fs::read_dir(dir)
        .expect("read the cluster directory")
        .map(|entry| entry.expect("a directory entry").path())
        .find(|path| {
            path.file_name()
                .and_then(|name| name.to_str())
                .is_some_and(|name| name.starts_with(&prefix) && name.ends_with(".region"))
        })
        .unwrap_or_else(|| panic!("no ring file {prefix}* in {}", dir.display()));
    let bytes = std::fs::read(&path).expect("read a ring file");
    let word = |offset: u64| {
        let at = offset as usize;
        let word = u64::from_le_bytes(bytes[at..at + 8].try_into().expect("8 bytes"));
        decode_pos_word(word, offset).expect("a ring position word")
    };
    (word(HEAD_OFFSET), word(TAIL_OFFSET))
}

/// The rings of `client` at the memory nodes that still hold records: `(node, head, tail)`.
fn held_rings(dir: &Path, client: NodeId) -> Vec<(NodeId, u64, u64)> {
    MEMORY_NODES
        .iter()
        .map(|&node| {
            let (head, tail) = ring_positions(dir, node, client);
            (node, head, tail)
        })
        .filter(|(_, head, tail)| head != tail)
        .collect()
}

/// Waits up to [`RELEASE_TIMEOUT`] until no memory node holds a record of `client`.
fn assert_released(dir: &Path, client: NodeId, what: &str) {
    let deadline = Instant::now() + RELEASE_TIMEOUT;
    loop {
        let held = held_rings(dir, client);
        if held.is_empty() {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "{what}: after {RELEASE_TIMEOUT:?} the memory nodes still hold records of {client} \
             (node, head, tail): {held:?}"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// A client stopped by SIGINT (Ctrl-C) or SIGTERM stops its transfers, lets the transactions
/// in flight finish, reports what it measured, checks the invariant, and drops its `Db`, which
/// sends its queued truncations: nothing of it stays at any memory node. Before, either signal
/// killed the process on the spot, with its truncations unsent and its last transactions
/// half-way, and the memory nodes kept its records (and locks) for good.
#[test]
fn a_client_stopped_by_sigint_or_sigterm_finishes_its_run_and_leaves_nothing_held() {
    let cluster = Cluster::up("interrupt", "shm");
    for signal in ["INT", "TERM"] {
        let bank = Running::start(&cluster, &["--seconds", "600", "--accounts", "20"]);
        std::thread::sleep(RUN_BEFORE_STOP);
        bank.signal(signal);
        let started = Instant::now();
        let (status, stdout, stderr) = bank.wait(EXIT_TIMEOUT);
        let shown = format!("SIG{signal}: {status}\nstdout:\n{stdout}\nstderr:\n{stderr}");
        assert!(status.success(), "{shown}");
        assert!(
            stdout.contains(&format!("interrupted by SIG{signal}")),
            "{shown}"
        );
        assert!(stdout.contains("invariant held"), "{shown}");
        assert!(
            started.elapsed() < EXIT_TIMEOUT,
            "took {:?}: {shown}",
            started.elapsed()
        );
        let client = client_of(&stdout);
        assert_released(&cluster.dir, client, &format!("after SIG{signal}"));
    }
    let status = acre(&["cluster", "status", "--dir", cluster.dir()]);
    assert!(status.status.success(), "{}", text(&status));
}

/// The client ids `Cluster::up` provides.
const CLIENT_IDS: std::ops::Range<u16> = 100..108;

/// `acre bench ycsb` on a cluster stops its phase on SIGINT as `acre bank` does: its threads
/// finish the operation they are in, it prints what it measured, and its `Db` is dropped, so
/// no memory node holds anything of it. Before, SIGINT killed it on the spot.
#[test]
fn an_interrupted_ycsb_run_prints_what_it_measured_and_leaves_nothing_held() {
    let cluster = Cluster::up("ycsb-interrupt", "shm");
    let target = format!("acre:{}", cluster.dir());
    let json = cluster.dir.join("interrupted.json");
    let ycsb = Running::spawn(
        &[
            "bench",
            "ycsb",
            "--target",
            &target,
            "--records",
            "500",
            "--duration",
            "600s",
            "--json",
            json.to_str().expect("utf-8 path"),
        ],
        "[LOAD]",
    );
    std::thread::sleep(RUN_BEFORE_STOP);
    ycsb.signal("INT");
    let (status, stdout, stderr) = ycsb.wait(EXIT_TIMEOUT);
    let shown = format!("{status}\nstdout:\n{stdout}\nstderr:\n{stderr}");
    assert!(status.success(), "{shown}");
    assert!(stdout.contains("[RUN]"), "{shown}");
    assert!(
        stdout.contains("interrupted by SIGINT during the run"),
        "{shown}"
    );
    assert!(
        !json.exists(),
        "an interrupted run writes no results: {shown}"
    );
    for client in CLIENT_IDS.map(NodeId) {
        assert_released(&cluster.dir, client, "after SIGINT");
    }
}

/// `acre cluster up` with `extra` arguments, taken down when the test ends.
fn cluster_with(name: &str, extra: &[&str]) -> Cluster {
    let cluster = Cluster {
        dir: PathBuf::from(format!("/dev/shm/acre-test-{name}-{}", std::process::id())),
    };
    let up = acre(
        &[
            &["cluster", "up", "--dir", cluster.dir()][..],
            &["--region-bytes", "8388608", "--ring-bytes", "262144"],
            extra,
        ]
        .concat(),
    );
    assert!(up.status.success(), "{}", text(&up));
    cluster
}

/// The memory nodes' processes, paused (SIGSTOP) until this is dropped (SIGCONT), so that
/// what a client sends them stays unread in their rings.
struct Paused {
    pids: Vec<u32>,
}

impl Paused {
    fn nodes(dir: &Path) -> Paused {
        let pids: Vec<u32> = MEMORY_NODES
            .iter()
            .map(|&node| {
                NodeManifest::read(dir, node)
                    .expect("read a manifest")
                    .unwrap_or_else(|| panic!("{node} has no manifest"))
                    .pid
            })
            .collect();
        for pid in &pids {
            let status = Command::new("kill")
                .args(["-s", "STOP", &pid.to_string()])
                .status()
                .expect("run kill");
            assert!(status.success(), "SIGSTOP {pid}: {status}");
        }
        Paused { pids }
    }
}

impl Drop for Paused {
    fn drop(&mut self) {
        for pid in &self.pids {
            let _ = Command::new("kill")
                .args(["-s", "CONT", &pid.to_string()])
                .status();
        }
    }
}

/// A client killed while memory nodes hold its records (here: records it appended to paused
/// nodes, unread) leaves its id to nobody until they are released: the next client takes
/// another id instead of inheriting the dead one's locks and pinned rings, and with every id
/// taken, connecting fails and says which ids are taken and why. Before, the next client took
/// the dead one's id as soon as its lock file was free.
#[test]
fn a_killed_clients_id_is_not_reused_while_a_memory_node_holds_its_records() {
    let cluster = cluster_with("held", &["--clients", "2"]);
    let mut bank = Running::start(&cluster, &["--seconds", "600", "--accounts", "20"]);
    let dead = client_of(&bank.stdout);
    std::thread::sleep(RUN_BEFORE_STOP);
    let paused = Paused::nodes(&cluster.dir);
    // Its transactions now wait for votes that do not come, their LOCK records unread.
    std::thread::sleep(RUN_BEFORE_STOP);
    bank.kill();
    let held = held_rings(&cluster.dir, dead);
    assert!(!held.is_empty(), "the killed client left nothing to hold");

    let file = cluster.dir.join(CLUSTER_FILE);
    let db = Db::connect(&file).expect("connect while the dead client's id is held");
    assert_ne!(
        db.client_id(),
        Some(dead),
        "held at (node, head, tail): {held:?}"
    );
    let error = match Db::connect(&file) {
        Ok(other) => panic!(
            "a third client got {:?} with {dead} held and {:?} running",
            other.client_id(),
            db.client_id()
        ),
        Err(error) => error.to_string(),
    };
    assert!(error.contains("all 2 client ids"), "{error}");
    assert!(
        error.contains(&format!("{dead} is held by n")),
        "the dead client's id: {error}"
    );
    let running = db.client_id().expect("a client id");
    assert!(
        error.contains(&format!("{running} runs in another process")),
        "the running client's id: {error}"
    );
    drop(paused);
}

/// SIGKILL's number (`kill -l KILL`), as an `ExitStatus` reports it.
const SIGKILL: i32 = 9;
/// Clients started and stopped in a row by the tests below.
const STOPS: usize = 20;
/// Seconds of the short bank run that measures the cluster's speed.
const MEASURE_SECONDS: &str = "1";
/// The share of the speed before the stops that the cluster must keep after each: well below
/// what the noise of a shared two-core machine takes away, far above what a cluster wedged by a
/// dead client's locks and pinned rings gives (a few percent).
const SPEED_KEPT_MIN: f64 = 0.3;
/// Measurements of one state of the cluster: one slow run can be another process's doing, a
/// wedged cluster is slow every time.
const MEASURE_ATTEMPTS: usize = 3;

/// Characters of a failed run's output a failure message quotes.
const OUTPUT_SHOWN_MAX: usize = 2000;

/// Transfers per second of a short `acre bank` on a fresh bank, or the run's output if it
/// failed.
fn transfer_rate(cluster: &Cluster) -> Result<f64, String> {
    let run = acre(&["bank", "--dir", cluster.dir(), "--seconds", MEASURE_SECONDS]);
    let shown = text(&run);
    if !run.status.success() {
        return Err(shown);
    }
    String::from_utf8_lossy(&run.stdout)
        .lines()
        .find_map(|line| line.strip_prefix("transfers: "))
        .and_then(|line| line.split_once('(').map(|(_, rest)| rest.to_string()))
        .and_then(|rest| rest.split_once("/s").map(|(rate, _)| rate.to_string()))
        .and_then(|rate| rate.parse::<f64>().ok())
        .ok_or(shown)
}

/// Asserts that the cluster serves at [`SPEED_KEPT_MIN`] of `before` or more, in one of
/// [`MEASURE_ATTEMPTS`] runs.
fn assert_full_speed(cluster: &Cluster, before: f64, after: &str) {
    let mut seen = Vec::new();
    for _ in 0..MEASURE_ATTEMPTS {
        match transfer_rate(cluster) {
            Ok(rate) if rate >= before * SPEED_KEPT_MIN => return,
            Ok(rate) => seen.push(format!("{rate:.0}/s")),
            Err(output) => seen.push(output.chars().take(OUTPUT_SHOWN_MAX).collect()),
        }
    }
    panic!("after {after}: {before:.0} transfers/s before, then: {seen:#?}");
}

/// Starts a client, lets it run transfers for a while, and stops it with `signal` (`kill -s`);
/// returns its stdout once it exited.
fn start_and_stop(cluster: &Cluster, signal: &str, index: usize) -> (ExitStatus, String, String) {
    let bank = Running::start(cluster, &["--seconds", "600"]);
    // Stop it at different points of its transactions.
    std::thread::sleep(Duration::from_millis(200 + 37 * index as u64 % 500));
    bank.signal(signal);
    bank.wait(EXIT_TIMEOUT)
}

/// Issue 11 item 1: a client killed (SIGKILL, or a panic: release builds abort) in the middle of
/// its transfers, 20 times in a row, leaves the cluster serving at full speed after each kill:
/// the next client does not inherit its id while anything of it is held, and the memory nodes
/// release its locks and records. Before, the next client got the dead one's id with its locks
/// and its pinned rings: a few hundred transfers per second and a million aborts.
#[test]
fn a_client_killed_20_times_leaves_the_cluster_serving_at_full_speed() {
    let cluster = Cluster::up("kill20", "shm");
    let before = transfer_rate(&cluster).unwrap_or_else(|output| panic!("{output}"));
    for index in 0..STOPS {
        let (status, stdout, _) = start_and_stop(&cluster, "KILL", index);
        assert_eq!(status.signal(), Some(SIGKILL), "{stdout}");
        assert_full_speed(&cluster, before, &format!("kill {}", index + 1));
    }
}

/// The same with SIGINT (Ctrl-C), which lets the client finish: every time it exits with its
/// report, and the cluster serves at full speed after. Before, SIGINT killed it as SIGKILL does.
#[test]
fn a_client_interrupted_20_times_leaves_the_cluster_serving_at_full_speed() {
    let cluster = Cluster::up("int20", "shm");
    let before = transfer_rate(&cluster).unwrap_or_else(|output| panic!("{output}"));
    for index in 0..STOPS {
        let (status, stdout, stderr) = start_and_stop(&cluster, "INT", index);
        assert!(
            status.success() && stdout.contains("invariant held"),
            "SIGINT {}: {status}\n{stdout}\n{stderr}",
            index + 1
        );
        assert_full_speed(&cluster, before, &format!("SIGINT {}", index + 1));
    }
}
