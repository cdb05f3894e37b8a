//! `acre cluster up | status | down` with real node processes; the bank workload run from
//! several processes at once over shm; bad input gets one line and exit code 2.

use acre::cluster::CLUSTER_FILE;
use acre::db::{Db, NodeId};
use acre::engine::directory::NodeManifest;
use acre_benches::bank::Bank;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

/// How long a killed process may take to be gone.
const DEATH_TIMEOUT: Duration = Duration::from_secs(10);
/// How often a bounded wait looks again.
const POLL_INTERVAL: Duration = Duration::from_millis(20);

pub fn acre(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_acre"))
        .args(args)
        .output()
        .expect("run acre")
}

pub fn text(output: &Output) -> String {
    format!(
        "status {:?}\nstdout:\n{}\nstderr:\n{}",
        output.status.code(),
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    )
}

/// Runs `command` with its output captured for at most `timeout`: `Ok` with its output if it
/// exited, `Err` with what it printed if it had to be killed.
pub fn run_bounded(mut command: Command, timeout: Duration) -> Result<Output, Output> {
    let mut child = command
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start the command");
    let deadline = Instant::now() + timeout;
    while child.try_wait().expect("wait for the command").is_none() {
        if Instant::now() >= deadline {
            let _ = child.kill();
            return Err(child
                .wait_with_output()
                .expect("collect the command's output"));
        }
        std::thread::sleep(POLL_INTERVAL);
    }
    Ok(child
        .wait_with_output()
        .expect("collect the command's output"))
}

/// Sends signal `name` (`KILL`, `STOP`, `CONT`, ...) to process `pid`.
pub fn send_signal(pid: u32, name: &str) {
    let status = Command::new("kill")
        .arg(format!("-{name}"))
        .arg(pid.to_string())
        .status()
        .expect("run kill");
    assert!(status.success(), "kill -{name} {pid}: {status}");
}

/// Waits until process `pid` is gone.
pub fn wait_until_dead(pid: u32) {
    let deadline = Instant::now() + DEATH_TIMEOUT;
    while acre::cluster::process_alive(pid) {
        assert!(Instant::now() < deadline, "{pid} still runs");
        std::thread::sleep(POLL_INTERVAL);
    }
}

/// The pid of a running node, from its manifest.
pub fn node_pid(cluster: &Cluster, node: NodeId) -> u32 {
    NodeManifest::read(&cluster.dir, node)
        .expect("read a manifest")
        .expect("a running node has a manifest")
        .pid
}

/// A cluster directory that is taken down and removed when the test ends, even on failure.
pub struct Cluster {
    pub dir: PathBuf,
}

impl Cluster {
    pub fn up(name: &str, transport: &str) -> Cluster {
        Cluster::up_with(name, transport, &[])
    }

    /// As [`Cluster::up`], with more arguments for `acre cluster up`.
    pub fn up_with(name: &str, transport: &str, extra: &[&str]) -> Cluster {
        let dir = PathBuf::from(format!("/dev/shm/acre-test-{name}-{}", std::process::id()));
        Cluster::up_in(dir, transport, extra)
    }

    /// As [`Cluster::up_with`], in the cluster directory `dir` (a directory on disk, say).
    pub fn up_in(dir: PathBuf, transport: &str, extra: &[&str]) -> Cluster {
        let cluster = Cluster { dir };
        let mut args = vec![
            "cluster",
            "up",
            "--dir",
            cluster.dir(),
            "--transport",
            transport,
            "--region-bytes",
            "8388608",
            "--ring-bytes",
            "262144",
        ];
        args.extend_from_slice(extra);
        let up = acre(&args);
        assert!(up.status.success(), "{}", text(&up));
        cluster
    }

    pub fn dir(&self) -> &str {
        self.dir.to_str().expect("utf-8 path")
    }

    pub fn file(&self) -> PathBuf {
        self.dir.join(CLUSTER_FILE)
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        if Path::new(&self.dir).exists() {
            let _ = acre(&["cluster", "down", "--dir", self.dir(), "--purge"]);
        }
    }
}

#[test]
fn bank_transfers_from_several_processes_keep_the_total_over_shm() {
    let cluster = Cluster::up("bank", "shm");
    let status = acre(&["cluster", "status", "--dir", cluster.dir()]);
    assert!(status.status.success(), "{}", text(&status));
    let shown = String::from_utf8_lossy(&status.stdout);
    assert!(shown.contains("n3") && shown.contains("r3"), "{shown}");

    let db = Db::connect(&cluster.file()).expect("connect");
    let bank = Bank::create(&db, 40, 1000).expect("create accounts");
    let directory = bank.directory.to_string();
    let workers: Vec<_> = (0..2)
        .map(|seed| {
            Command::new(env!("CARGO_BIN_EXE_acre"))
                .args(["bank", "--dir", cluster.dir(), "--bank", &directory])
                .args(["--seconds", "2", "--threads", "2", "--audits", "1"])
                .args(["--seed", &seed.to_string()])
                .output()
                .expect("run acre bank")
        })
        .collect();
    // `output` waits, so the two processes above ran one after the other; run two more
    // concurrently as well.
    let concurrent: Vec<_> = (10..12)
        .map(|seed| {
            Command::new(env!("CARGO_BIN_EXE_acre"))
                .args(["bank", "--dir", cluster.dir(), "--bank", &directory])
                .args(["--seconds", "2", "--threads", "1", "--audits", "1"])
                .args(["--seed", &seed.to_string()])
                .stdout(std::process::Stdio::piped())
                .stderr(std::process::Stdio::piped())
                .spawn()
                .expect("start acre bank")
        })
        .collect();
    let concurrent: Vec<Output> = concurrent
        .into_iter()
        .map(|child| child.wait_with_output().expect("wait for acre bank"))
        .collect();
    for output in workers.iter().chain(&concurrent) {
        assert!(output.status.success(), "{}", text(output));
        let stdout = String::from_utf8_lossy(&output.stdout);
        assert!(stdout.contains("invariant held"), "{}", text(output));
        let committed: u64 = stdout
            .lines()
            .find_map(|l| l.strip_prefix("transfers: "))
            .and_then(|l| l.split_whitespace().next())
            .and_then(|n| n.parse().ok())
            .unwrap_or_else(|| panic!("no transfer count in {}", text(output)));
        assert!(committed > 0, "{}", text(output));
    }
    // This process checks the end state itself.
    let balances: Vec<i64> = db
        .run(|txn| {
            bank.accounts
                .iter()
                .map(|&a| Ok(i64::from_le_bytes(txn.read(a)?.try_into().unwrap())))
                .collect()
        })
        .unwrap();
    assert_eq!(balances.iter().sum::<i64>(), 40 * 1000, "{balances:?}");
    assert!(balances.iter().all(|&b| b >= 0), "{balances:?}");
    assert!(db.quiesce(Duration::from_secs(10)));
    drop(db);

    let down = acre(&["cluster", "down", "--dir", cluster.dir(), "--purge"]);
    assert!(down.status.success(), "{}", text(&down));
    assert!(!cluster.dir.exists(), "down --purge removes the directory");
}

/// Clients that stop right after committing, one after another under the same client id (each
/// a new incarnation, numbering its transactions after the previous one's), keep working and
/// lose nothing. A stopping client sends its queued truncations (`ClientNode`'s drop): records
/// left untruncated would pin the participants' rings. (This test did not reproduce the
/// `LogFull` that successive `acre bench ycsb` runs hit before that flush; it guards the
/// restarts themselves.)
#[test]
fn clients_that_come_and_go_leave_the_logs_free() {
    let cluster = Cluster::up("churn", "shm");
    let counter = {
        let db = Db::connect(&cluster.file()).expect("connect");
        db.run(|txn| Ok(txn.alloc(8)?))
            .expect("allocate the counter")
    };
    for round in 0..20u64 {
        let db = Db::connect(&cluster.file()).expect("connect");
        for _ in 0..100 {
            db.run(|txn| {
                let n = u64::from_le_bytes(txn.read(counter)?.try_into().unwrap());
                Ok(txn.write(counter, &(n + 1).to_le_bytes())?)
            })
            .unwrap_or_else(|e| panic!("round {round}: {e}"));
        }
        // Dropped at once: the last transactions' truncations are still queued.
    }
    let db = Db::connect(&cluster.file()).expect("connect");
    assert_eq!(db.read(counter).expect("read"), 2000u64.to_le_bytes());
}

/// Runs `acre bank` for a second on the cluster in `dir`; it must succeed with its invariant
/// held.
pub fn bank_holds(dir: &str) {
    let run = acre(&["bank", "--dir", dir, "--seconds", "1", "--accounts", "10"]);
    assert!(run.status.success(), "{}", text(&run));
    assert!(
        String::from_utf8_lossy(&run.stdout).contains("invariant held"),
        "{}",
        text(&run)
    );
}

#[test]
fn the_bank_runs_over_tcp() {
    let cluster = Cluster::up("tcp", "tcp");
    bank_holds(cluster.dir());
}

/// Over ofi (libfabric's tcp;ofi_rxm on loopback): the nodes find each other's cards in their
/// manifests, and `cluster status` reaches every node through its own.
#[cfg(feature = "ofi")]
#[test]
fn the_bank_runs_over_ofi() {
    let cluster = Cluster::up("ofi", "ofi");
    bank_holds(cluster.dir());
    let status = acre(&["cluster", "status", "--dir", cluster.dir()]);
    let shown = String::from_utf8_lossy(&status.stdout);
    assert!(status.status.success(), "{}", text(&status));
    assert_eq!(
        shown.matches("ofi tcp;ofi_rxm").count(),
        3,
        "every node is up over ofi: {shown}"
    );
}

/// Without the cargo feature `ofi`, asking for the transport says how to get it, in one line.
#[cfg(not(feature = "ofi"))]
#[test]
fn ofi_in_an_acre_built_without_it_says_how_to_build_it() {
    let output = acre(&[
        "cluster",
        "up",
        "--transport",
        "ofi",
        "--dir",
        "/dev/shm/acre-test-no-ofi",
    ]);
    assert_eq!(output.status.code(), Some(2), "{}", text(&output));
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("--features ofi"), "{stderr}");
    assert_eq!(stderr.trim().lines().count(), 1, "{stderr}");
    assert!(!std::path::Path::new("/dev/shm/acre-test-no-ofi").exists());
}

#[test]
fn a_second_up_in_the_same_directory_is_refused() {
    let cluster = Cluster::up("twice", "shm");
    let again = acre(&["cluster", "up", "--dir", cluster.dir()]);
    assert_eq!(again.status.code(), Some(2), "{}", text(&again));
    let stderr = String::from_utf8_lossy(&again.stderr);
    assert!(stderr.contains("already running"), "{stderr}");
    assert_eq!(stderr.trim().lines().count(), 1, "{stderr}");
}

#[test]
fn bad_input_gets_one_line_and_exit_code_2() {
    let missing = "/dev/shm/acre-test-no-such-cluster";
    for args in [
        vec!["cluster", "status", "--dir", missing],
        vec!["cluster", "down", "--dir", missing],
        vec!["bank", "--dir", missing, "--seconds", "1"],
        vec![
            "node",
            "--cluster",
            "/nonexistent/cluster.toml",
            "--id",
            "1",
        ],
        vec!["demo", "--seconds", "0"],
        vec!["cluster", "up", "--nodes", "0", "--dir", missing],
    ] {
        let output = acre(&args);
        assert_eq!(output.status.code(), Some(2), "{args:?}: {}", text(&output));
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert!(stderr.starts_with("acre: "), "{args:?}: {stderr}");
        assert_eq!(stderr.trim().lines().count(), 1, "{args:?}: {stderr}");
    }
}

#[test]
fn the_demo_reports_and_checks_the_invariant() {
    let output = acre(&["demo", "--seconds", "1", "--accounts", "20"]);
    assert!(output.status.success(), "{}", text(&output));
    let stdout = String::from_utf8_lossy(&output.stdout);
    for expected in [
        "committed",
        "p50",
        "p99",
        "invariant held",
        "byte-identical",
    ] {
        assert!(stdout.contains(expected), "{expected}: {stdout}");
    }
}

/// How long `acre demo --failure --seconds 4` may take: a cluster up, 4 s of transfers, the
/// recovery waited for, the cluster down, in a debug build on a loaded machine.
const DEMO_FAILURE_TIMEOUT: Duration = Duration::from_secs(120);

/// `acre demo --failure`: a primary killed at 2 s of a 4 s run; the timeline comes from the CM
/// status file, the throughput from the run, and the cluster is gone after.
#[test]
fn the_failure_demo_shows_the_recovery_and_keeps_the_invariant() {
    let mut command = Command::new(env!("CARGO_BIN_EXE_acre"));
    command.args(["demo", "--failure", "--seconds", "4", "--accounts", "20"]);
    let output = run_bounded(command, DEMO_FAILURE_TIMEOUT).unwrap_or_else(|output| {
        panic!(
            "not done within {DEMO_FAILURE_TIMEOUT:?}: {}",
            text(&output)
        )
    });
    let shown = text(&output);
    assert_eq!(output.status.code(), Some(0), "{shown}");
    let stdout = String::from_utf8_lossy(&output.stdout);
    let line = |needle: &str| {
        stdout
            .lines()
            .find(|line| line.contains(needle))
            .unwrap_or_else(|| panic!("no line with {needle:?}: {shown}"))
    };
    // `+486.1  n1 suspected: ...`: a time after the kill, on the CM's clock.
    let ms = |line: &str| -> f64 {
        line.split_whitespace()
            .next()
            .and_then(|ms| ms.parse().ok())
            .unwrap_or_else(|| panic!("{line:?} does not start with ms: {shown}"))
    };
    let suspected = ms(line(" suspected: its lease ran out"));
    let configured = ms(line("new configuration "));
    let active = ms(line(" active again: \"recovery of r"));
    // Suspected when the lease runs out: renewals go every fifth of a 500 ms lease.
    assert!(suspected >= 300.0, "suspected too early: {shown}");
    assert!(configured >= suspected, "{shown}");
    assert!(active >= configured, "{shown}");
    line("SIGKILL to n");
    // f = 1: the new backups' copies complete, each region has 2 copies again.
    line("data re-replicated: every region has 2 complete copies again");
    line("throughput around the kill (committed transfers per 100 ms):");
    let throughput: Vec<&str> = stdout
        .lines()
        .filter(|line| line.contains(" ms ") && line.trim_start().contains(" to "))
        .collect();
    // A second before the kill and two after, one line per 100 ms (give or take the edges).
    assert!(
        throughput.len() >= 25,
        "{} throughput lines: {shown}",
        throughput.len()
    );
    assert!(
        throughput.iter().any(|line| line.contains("<- kill")),
        "{shown}"
    );
    // When the rate came back (on a loaded machine it may not within the lines shown).
    assert!(
        stdout.contains("throughput back to 90% of before")
            || stdout.contains("throughput not back to 90% of before"),
        "{shown}"
    );
    line("final audit: total 20000 (expected 20000)");
    line("invariant held");
    let dir = line("acre demo --failure: ")
        .rsplit(' ')
        .next()
        .expect("the line names the directory");
    assert!(!Path::new(dir).exists(), "{dir} is removed: {shown}");
}

/// The options of the failure demo are refused without `--failure`, in one line that names it,
/// and bad values before any node starts.
#[test]
fn the_failure_demo_refuses_bad_input_in_one_line() {
    for (args, expected) in [
        (&["demo", "--transport", "tcp"][..], "--failure"),
        (&["demo", "--kill-after-ms", "500"], "--failure"),
        (&["demo", "--failure", "--nodes", "2"], "at least 3"),
        (
            &[
                "demo",
                "--failure",
                "--seconds",
                "2",
                "--kill-after-ms",
                "2000",
            ],
            "less than --seconds 2",
        ),
    ] {
        let output = acre(args);
        assert_eq!(output.status.code(), Some(2), "{args:?}: {}", text(&output));
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert_eq!(stderr.trim().lines().count(), 1, "{args:?}: {stderr}");
        assert!(stderr.contains(expected), "{args:?}: {stderr}");
        assert!(output.stdout.is_empty(), "{args:?}: {}", text(&output));
    }
}

/// The libraries and the binary log through `tracing`; the binary's subscriber writes to
/// stderr, which `cluster up` points at each node's `n<id>.log`.
#[test]
fn node_processes_log_into_their_log_files() {
    let cluster = Cluster::up("log", "shm");
    for node in 1..=3 {
        let path = cluster.dir.join(format!("n{node}.log"));
        let log = std::fs::read_to_string(&path).expect("read a node log");
        assert!(log.contains("serving"), "{}: {log}", path.display());
        assert!(
            log.contains(&format!("node=n{node}")),
            "{}: {log}",
            path.display()
        );
    }
}
