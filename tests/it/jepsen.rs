//! `acre jepsen` with the nodes in network namespaces (tcp): the partition nemesis cuts links
//! between nodes and heals them, a kill nemesis restarts and rejoins nodes in their namespaces,
//! and every namespace, link and nftables table a run made is gone when it ends. Each needs
//! root, `ip` and `nft`; without them the test says why and checks nothing else.

use acre::cluster::CLIENT_ID_BASE;
use acre_jepsen::history::{Kind, Op, Process, Value, read_jsonl};
use acre_jepsen::netns::{self, NAME_PREFIX};
use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

/// Longest a run may take here: its time limit, heals, settling and final reads.
const RUN_MAX: Duration = Duration::from_secs(90);

/// Why the namespaces cannot be made here, printed; `None` when they can.
fn skipped(test: &str) -> bool {
    match netns::unavailable() {
        Some(why) => {
            eprintln!("{test}: skipped: {why}");
            true
        }
        None => false,
    }
}

/// What one `acre jepsen` run left.
struct Ran {
    code: Option<i32>,
    stderr: String,
    ops: Vec<Op>,
    /// The run's network name (`acrejp<r>`), from its progress lines.
    name: String,
    /// The output of its `acre cluster` commands.
    cluster_log: String,
    /// The cluster directory, kept.
    cluster: tempfile::TempDir,
}

/// Runs `acre jepsen ARGS --out <temp>`, ended with SIGKILL past [`RUN_MAX`] (the assertion
/// then fails), and reads its history.
fn jepsen(args: &[&str]) -> Ran {
    let out = tempfile::tempdir().expect("a temporary directory");
    let cluster = tempfile::tempdir_in("/dev/shm").expect("a temporary directory");
    let mut child = Command::new(env!("CARGO_BIN_EXE_acre"))
        .arg("jepsen")
        .args(args)
        .arg("--out")
        .arg(out.path())
        .arg("--cluster-dir")
        .arg(cluster.path())
        .arg("--keep-cluster")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start acre jepsen");
    let stderr = child.stderr.take().expect("its stderr");
    let reader = std::thread::spawn(move || {
        let mut lines = String::new();
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            lines.push_str(&line);
            lines.push('\n');
        }
        lines
    });
    let started = Instant::now();
    let code = loop {
        if let Some(status) = child.try_wait().expect("wait for acre jepsen") {
            break status.code();
        }
        if started.elapsed() > RUN_MAX {
            let _ = child.kill();
            let _ = child.wait();
            panic!("acre jepsen {args:?} ran for more than {RUN_MAX:?}");
        }
        std::thread::sleep(Duration::from_millis(100));
    };
    let stderr = reader.join().expect("the stderr reader");
    let history = out.path().join("history.jsonl");
    let ops = std::fs::File::open(&history)
        .map(|f| read_jsonl(BufReader::new(f)).expect("a readable history"))
        .unwrap_or_default();
    let name = stderr
        .split_whitespace()
        .find_map(|word| word.strip_suffix("-n<id>"))
        .unwrap_or_default()
        .to_string();
    let cluster_log = std::fs::read_to_string(out.path().join("cluster.log")).unwrap_or_default();
    Ran {
        code,
        stderr,
        ops,
        name,
        cluster_log,
        cluster,
    }
}

/// The network objects named `name` (`acrejp<r>`) or after it that exist now.
fn left_of(name: &str) -> Vec<String> {
    assert!(name.starts_with(NAME_PREFIX), "run name {name:?}");
    let listing = |program: &str, args: &[&str]| {
        let output = Command::new(program)
            .args(args)
            .output()
            .expect("list network objects");
        String::from_utf8_lossy(&output.stdout).into_owned()
    };
    let ours = |word: &str| word == name || word.starts_with(&format!("{name}-"));
    let mut left = Vec::new();
    for text in [
        listing("ip", &["netns", "list"]),
        listing("ip", &["-o", "link", "show"]),
        listing("nft", &["list", "tables"]),
    ] {
        for word in text.split([' ', ':', '@', '\n']) {
            if ours(word) {
                left.push(word.to_string());
            }
        }
    }
    if Path::new("/run/acre-jepsen").join(name).exists() {
        left.push(format!("/run/acre-jepsen/{name}"));
    }
    left
}

/// The nemesis entries of class `class` (invocations and heals).
fn faults<'a>(ops: &'a [Op], class: &str) -> Vec<&'a Op> {
    ops.iter()
        .filter(|op| matches!(&op.value, Value::Fault(f) if f.class == class))
        .collect()
}

/// Client completions that ended `fail` or `info` while a fault was in force, and all the
/// completions then; then the same outside faults. (A register's compare-and-set fails when
/// the register holds another value, fault or not: the two rates are worth comparing.)
fn troubled_in_faults(ops: &[Op]) -> [(usize, usize); 2] {
    let mut windows = Vec::new();
    let mut start = None;
    for op in ops.iter().filter(|op| op.process == Process::Nemesis) {
        match op.kind {
            Kind::Invoke => start = Some(op.time_ns),
            _ => windows.extend(start.take().map(|s| (s, op.time_ns))),
        }
    }
    let mut counts = [(0, 0); 2];
    for op in ops
        .iter()
        .filter(|op| matches!(op.process, Process::Client(_)) && op.kind != Kind::Invoke)
    {
        let during = windows.iter().any(|&(s, e)| (s..=e).contains(&op.time_ns));
        let (troubled, all) = &mut counts[usize::from(!during)];
        *all += 1;
        if op.kind != Kind::Ok {
            *troubled += 1;
        }
    }
    counts
}

fn assert_ran(ran: &Ran, args: &[&str]) {
    // 1: the checkers found the history invalid; the harness itself worked.
    assert!(
        matches!(ran.code, Some(0 | 1)),
        "acre jepsen {args:?} ended with {:?}:\n{}",
        ran.code,
        ran.stderr
    );
    assert!(!ran.name.is_empty(), "no namespaces named:\n{}", ran.stderr);
    let finals = ran
        .ops
        .iter()
        .filter(|op| matches!(op.process, Process::Final(_)) && op.kind == Kind::Ok)
        .count();
    assert!(finals > 0, "no final read succeeded:\n{}", ran.stderr);
    let left = left_of(&ran.name);
    assert!(left.is_empty(), "the run left {left:?}:\n{}", ran.stderr);
}

#[test]
fn partitions_cut_nodes_apart_and_leave_nothing_behind() {
    if skipped("partitions_cut_nodes_apart_and_leave_nothing_behind") {
        return;
    }
    partitions("tcp");
}

/// As over tcp: the ofi endpoints open at each namespace's address, `acre cluster status`'s
/// observer at the host's.
#[cfg(feature = "ofi")]
#[test]
fn partitions_cut_nodes_apart_and_leave_nothing_behind_over_ofi() {
    if skipped("partitions_cut_nodes_apart_and_leave_nothing_behind_over_ofi") {
        return;
    }
    partitions("ofi");
}

fn partitions(transport: &str) {
    let args = [
        "--transport",
        transport,
        "--nodes",
        "3",
        "--nemesis",
        "partition",
        "--time-limit",
        "20s",
        "--interval",
        "4s",
        "--fault-max",
        "4s",
        "--rate",
        "50",
        "--concurrency",
        "3",
        "--workload",
        "register",
    ];
    let ran = jepsen(&args);
    assert_ran(&ran, &args);
    let partitions = faults(&ran.ops, "partition");
    assert!(
        partitions.iter().any(|op| op.kind == Kind::Invoke),
        "no partition in the history:\n{}",
        ran.stderr
    );
    assert!(
        partitions.iter().all(|op| matches!(&op.value,
            Value::Fault(f) if f.detail.starts_with("partition: "))),
        "{partitions:?}"
    );
    // What the clients saw is recorded, not judged: the checkers do that.
    let [(troubled, all), (troubled_outside, all_outside)] = troubled_in_faults(&ran.ops);
    eprintln!(
        "{} partitions; during them {troubled} of {all} client operations failed or were \
         indeterminate, outside them {troubled_outside} of {all_outside}",
        partitions.len() / 2
    );
}

#[test]
fn killed_nodes_come_back_in_their_namespaces() {
    if skipped("killed_nodes_come_back_in_their_namespaces") {
        return;
    }
    killed_in_namespaces("tcp");
}

/// As over tcp: a node that rejoins opens its ofi endpoints at its namespace's address.
#[cfg(feature = "ofi")]
#[test]
fn killed_nodes_come_back_in_their_namespaces_over_ofi() {
    if skipped("killed_nodes_come_back_in_their_namespaces_over_ofi") {
        return;
    }
    killed_in_namespaces("ofi");
}

fn killed_in_namespaces(transport: &str) {
    let args = [
        "--transport",
        transport,
        "--netns",
        "--nodes",
        "3",
        "--nemesis",
        "kill",
        "--time-limit",
        "12s",
        "--interval",
        "3s",
        "--fault-max",
        "2s",
        "--rate",
        "50",
        "--concurrency",
        "2",
        "--workload",
        "register",
    ];
    let ran = jepsen(&args);
    assert_ran(&ran, &args);
    assert!(
        faults(&ran.ops, "kill")
            .iter()
            .any(|op| op.kind == Kind::Ok),
        "no kill healed:\n{}",
        ran.stderr
    );
    // A killed node came back: restarted in place, or rejoined as a new node.
    assert!(
        ran.cluster_log.contains("restarting it from its files")
            || ran.cluster_log.contains("rejoins as a new node"),
        "no node came back:\n{}",
        ran.cluster_log
    );
    // Every node that ran, those that came back included, listened in its namespace (each
    // node's log says where; the manifests are gone with `acre cluster down`).
    let subnet = format!("10.77.{}.", &ran.name[NAME_PREFIX.len()..]);
    let mut logs = 0;
    for entry in std::fs::read_dir(ran.cluster.path()).expect("the cluster directory") {
        let path = entry.expect("an entry").path();
        let name = path
            .file_name()
            .and_then(|n| n.to_str())
            .unwrap_or_default();
        let Some(id) = (name.strip_prefix('n'))
            .and_then(|n| n.strip_suffix(".log"))
            .and_then(|n| n.parse::<u16>().ok())
        else {
            continue;
        };
        if id >= CLIENT_ID_BASE {
            continue;
        }
        let log = std::fs::read_to_string(&path).expect("a node log");
        let serving = log
            .lines()
            .filter(|l| l.contains("serving (pid"))
            .collect::<Vec<_>>();
        // A process started to come back may be stopped before it serves (a restart in place
        // the CM refused because it had removed the node meanwhile): its log says nothing of
        // where it listened.
        assert!(
            serving.iter().all(|l| l.contains(&subnet)),
            "n{id} served elsewhere than on {subnet}*: {serving:?}"
        );
        logs += usize::from(!serving.is_empty());
    }
    assert!(logs >= 3, "{logs} node logs say where their node served");
    eprintln!(
        "{logs} nodes served; came back: {} restarted in place, {} rejoined",
        ran.cluster_log
            .matches("restarting it from its files")
            .count(),
        ran.cluster_log.matches("rejoins as a new node").count()
    );
}

#[test]
fn partitions_over_shm_are_refused_in_one_line() {
    let output = Command::new(env!("CARGO_BIN_EXE_acre"))
        .args(["jepsen", "--nemesis", "partition", "--transport", "shm"])
        .output()
        .expect("run acre jepsen");
    assert_eq!(output.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(stderr.trim().lines().count(), 1, "{stderr}");
    assert!(stderr.contains("--transport tcp or ofi"), "{stderr}");
}
