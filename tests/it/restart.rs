//! A node's region copies and rings outlive its process: a node started again on its own
//! refuses them and changes nothing, `cluster down` keeps them unless `--purge`, and `cluster
//! up` restarts the whole cluster from them (docs/failures.md#whole-cluster-restart), after a
//! clean stop or a kill -9 of every node.

use crate::cluster::{
    Cluster, acre, bank_holds, node_pid, run_bounded, send_signal, text, wait_until_dead,
};
use acre::cluster::CLUSTER_FILE;
use acre::db::{Db, NodeId};
use acre::engine::object::HELD_BACK_WORD;
use acre_benches::bank::Bank;
use std::collections::BTreeMap;
use std::hash::{DefaultHasher, Hasher};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicBool, Ordering};
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
/// until every backup has applied it; returns the bank's directory.
fn fill(cluster: &Cluster) -> acre::db::Addr {
    let db = Db::connect(&cluster.dir.join(CLUSTER_FILE)).expect("connect");
    let bank = Bank::create(&db, 30, 1000).expect("create accounts");
    assert!(db.quiesce(QUIESCE_TIMEOUT), "the cluster did not quiesce");
    bank.directory
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

/// The refusal is one line that says what the node found, how `cluster up` brings it back,
/// and how to start fresh.
fn assert_refused(output: &std::process::Output, cluster: &Cluster, node: u16) {
    assert_eq!(output.status.code(), Some(2), "{}", text(output));
    let stderr = String::from_utf8_lossy(&output.stderr);
    let line = stderr
        .lines()
        .find(|l| l.starts_with("acre: "))
        .unwrap_or_else(|| panic!("no error line: {}", text(output)));
    // With a CM, a node killed long enough (a loaded host) is removed before it starts again:
    // that refusal comes first, and leaves its data untouched too.
    if line.contains(&format!(
        "n{node} was removed from the cluster by its configuration manager"
    )) {
        return;
    }
    for expected in [
        format!("n{node} found data of an earlier run in {}", cluster.dir()),
        "region copies".to_string(),
        format!("acre cluster up --dir {}` brings it back", cluster.dir()),
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
    let _ = fill(&cluster);
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
/// the directory. Now `down` keeps the data, a node started on it alone refuses (only a
/// restart of the cluster recovers it), `up` restarts the cluster from it with every account
/// intact and every region committing again, and `down --purge` removes it.
#[test]
fn cluster_down_keeps_the_data_and_up_restarts_from_it() {
    let cluster = Cluster::up("restart-down", "shm");
    let bank = fill(&cluster);
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
    assert!(up.status.success(), "{}", text(&up));
    let shown = String::from_utf8_lossy(&up.stdout);
    assert!(shown.contains("restarted"), "{shown}");
    audit_holds(&cluster, bank);
    bank_holds(cluster.dir());

    let purge = acre(&["cluster", "down", "--dir", cluster.dir(), "--purge"]);
    assert!(purge.status.success(), "{}", text(&purge));
    assert!(!cluster.dir.exists(), "down --purge removes the directory");
}

/// The data directory on an ordinary disk (not /dev/shm), every write persisted with msync
/// (`--persist msync`): the cluster stopped with `down` restarts from its files, and again after
/// kill -9 of every node, with the bank's total intact each time (docs/failures.md, "What the
/// data survives").
#[test]
fn a_cluster_on_disk_with_msync_restarts_from_its_files() {
    let dir = std::env::temp_dir().join(format!("acre-test-disk-{}", std::process::id()));
    let cluster = Cluster::up_in(dir, "shm", &["--persist", "msync"]);
    let bank = fill(&cluster);
    let down = acre(&["cluster", "down", "--dir", cluster.dir()]);
    assert!(down.status.success(), "{}", text(&down));
    let up = acre(&["cluster", "up", "--dir", cluster.dir()]);
    assert!(up.status.success(), "{}", text(&up));
    assert!(
        String::from_utf8_lossy(&up.stdout).contains("restarted"),
        "{}",
        text(&up)
    );
    audit_holds(&cluster, bank);

    kill_every_node(&cluster);
    let up = acre(&["cluster", "up", "--dir", cluster.dir()]);
    assert!(up.status.success(), "{}", text(&up));
    audit_holds(&cluster, bank);
    bank_holds(cluster.dir());
}

/// kill -9 of every node at once while transfers commit, then `acre cluster up`: every
/// acknowledged transfer is there, none is applied in part (the total holds), and every region
/// commits again. In both commit modes: message mode recovers locks the workers took, one-sided
/// mode those the coordinators took by compare-and-swap.
#[test]
fn every_node_killed_during_transfers_restarts_with_every_acknowledged_transfer() {
    for commit in ["messages", "one-sided"] {
        let cluster = Cluster::up_with(
            &format!("restart-all-{commit}"),
            "shm",
            &["--commit", commit],
        );
        let db = Db::connect(&cluster.dir.join(CLUSTER_FILE)).expect("connect");
        // Balances no run of transfers drains: every transfer moves 1.
        let bank = Bank::create(&db, 30, INITIAL_BALANCE).expect("create accounts");
        let acknowledged =
            transfer_until_killed(&cluster, &db, &bank, 3, Duration::from_millis(1500));
        drop(db);
        assert!(
            acknowledged.iter().all(|&n| n > 0),
            "{commit}: transfers before the kill: {acknowledged:?}"
        );

        let up = acre(&["cluster", "up", "--dir", cluster.dir()]);
        assert!(
            up.status.success(),
            "{commit}: {}{}",
            text(&up),
            node_logs(&cluster)
        );
        let db = Db::connect(&cluster.dir.join(CLUSTER_FILE)).expect("connect again");
        let bank = Bank::open(&db, bank.directory).expect("the bank's directory survives");
        check_acknowledged(&db, &bank, &acknowledged, commit);
        drop(db);
        bank_holds(cluster.dir());
    }
}

/// Transfers from `threads` threads until every node of `cluster` is killed (kill -9 at once,
/// after `run`): thread k moves 1 from account 2k to account 2k+1 over and over, and counts
/// the transfers acknowledged. After a restart, account 2k+1 has gained that many, or one more
/// (the transfer in flight at the kill, if it committed): see [`check_acknowledged`].
fn transfer_until_killed(
    cluster: &Cluster,
    db: &Db,
    bank: &Bank,
    threads: usize,
    run: Duration,
) -> Vec<u64> {
    let stop = AtomicBool::new(false);
    std::thread::scope(|scope| {
        let workers: Vec<_> = (0..threads)
            .map(|k| {
                let stop = &stop;
                scope.spawn(move || {
                    let (from, to) = (bank.accounts[2 * k], bank.accounts[2 * k + 1]);
                    let mut count = 0;
                    while !stop.load(Ordering::Relaxed) {
                        if Bank::transfer(db, from, to, 1).is_ok() {
                            count += 1;
                        }
                    }
                    count
                })
            })
            .collect();
        std::thread::sleep(run);
        kill_every_node(cluster);
        stop.store(true, Ordering::Relaxed);
        workers
            .into_iter()
            .map(|w| w.join().expect("a transfer thread"))
            .collect()
    })
}

/// kill -9 of every node of `cluster` at once; returns once they are dead.
fn kill_every_node(cluster: &Cluster) {
    let pids: Vec<u32> = (1..=3).map(|n| node_pid(cluster, NodeId(n))).collect();
    for &pid in &pids {
        send_signal(pid, "KILL");
    }
    for pid in pids {
        wait_until_dead(pid);
    }
}

/// Every transfer [`transfer_until_killed`] saw acknowledged is in the restarted cluster, and
/// the bank's total holds.
fn check_acknowledged(db: &Db, bank: &Bank, acknowledged: &[u64], what: &str) {
    for (k, &count) in acknowledged.iter().enumerate() {
        let gained = balance_of(db, bank.accounts[2 * k + 1]) - INITIAL_BALANCE;
        assert!(
            gained == count as i64 || gained == count as i64 + 1,
            "{what}: thread {k} had {count} transfers acknowledged, its account gained {gained}"
        );
    }
    assert_eq!(audit(db, bank), Ok(bank.expected_total()), "{what}");
}

/// The balance of the accounts of the transfers a kill interrupts.
const INITIAL_BALANCE: i64 = 1 << 40;

/// A bit flipped in a record a node acknowledged (a COMMIT-BACKUP appended while it was
/// stopped, then every node killed): the restart ends that ring at the damaged record, logs
/// the loss, and serves none of the node's copies (each is copied again from a live replica),
/// rather than serve without what the record committed. The commit reads back. (Before, the
/// restart refused to start at all.)
#[test]
fn a_restart_on_a_ring_whose_acknowledged_record_is_damaged_serves_none_of_its_copies() {
    let cluster = Cluster::up_with("restart-flip", "shm", &["--f", "1"]);
    let db = Db::connect(&cluster.dir.join(CLUSTER_FILE)).expect("connect");
    let client = db.client_id().expect("a client");
    let status = acre::cluster::CmStatusFile::read(&cluster.dir)
        .expect("read the CM status")
        .expect("a CM status");
    let victim = NodeId(2);
    let region = status
        .committed
        .regions
        .iter()
        .find(|p| p.backups.contains(&victim) && p.primary != victim)
        .expect("a region n2 backs up")
        .region;
    let addr = db
        .run(|txn| {
            let addr = txn.alloc_near(8, acre::db::Addr::new(region, 0))?;
            txn.write(addr, &1u64.to_le_bytes())?;
            Ok(addr)
        })
        .expect("create an object");
    let ring = crate::cm::ring_file(&cluster.dir, victim, client);
    let pid = node_pid(&cluster, victim);
    send_signal(pid, "STOP");
    let tail = crate::cm::ring_tail(&ring);
    db.run(|txn| Ok(txn.write(addr, &2u64.to_le_bytes())?))
        .expect("commits while n2 is stopped");
    let pids: Vec<u32> = (1..=3).map(|n| node_pid(&cluster, NodeId(n))).collect();
    for &pid in &pids {
        send_signal(pid, "KILL");
    }
    for pid in pids {
        wait_until_dead(pid);
    }
    drop(db);
    crate::cm::flip_a_bit(&ring, tail);

    let up = acre(&["cluster", "up", "--dir", cluster.dir()]);
    assert_eq!(up.status.code(), Some(0), "{}", text(&up));
    let stdout = String::from_utf8_lossy(&up.stdout);
    assert!(
        stdout.contains("n2's copy of") && stdout.contains("is damaged"),
        "n2's copies are not served: {stdout}"
    );
    let log = std::fs::read_to_string(cluster.dir.join("n2.log")).expect("read n2's log");
    assert!(
        log.contains(&format!("from position {tail}")) && log.contains("are lost"),
        "n2's log names the lost records: {log}"
    );
    let db = Db::connect(&cluster.dir.join(CLUSTER_FILE)).expect("connect again");
    let value = db.run(|txn| Ok(txn.read(addr)?)).expect("read the object");
    assert_eq!(u64::from_le_bytes(value[..8].try_into().unwrap()), 2);
}

/// The bank `fill` made holds its total after a restart.
fn audit_holds(cluster: &Cluster, directory: acre::db::Addr) {
    let db = Db::connect(&cluster.dir.join(CLUSTER_FILE)).expect("connect");
    let bank = Bank::open(&db, directory).expect("the bank's directory survives");
    assert_eq!(audit(&db, &bank), Ok(bank.expected_total()));
}

/// One audit of `bank`, retried while it fails as transactions may (a conflict, a region not
/// serving yet).
fn audit(db: &Db, bank: &Bank) -> Result<i64, String> {
    let mut tries = 0;
    loop {
        match bank.audit(db) {
            Ok(result) => return result,
            Err(e) if tries < 100 => {
                tries += 1;
                eprintln!("audit: {e}; again");
                std::thread::sleep(Duration::from_millis(50));
            }
            Err(e) => panic!("audit: {e}"),
        }
    }
}

/// The nodes' logs, for a failure's message.
fn node_logs(cluster: &Cluster) -> String {
    (1..=3)
        .map(|n| {
            let log =
                std::fs::read_to_string(cluster.dir.join(format!("n{n}.log"))).unwrap_or_default();
            format!("\n--- n{n}.log:\n{log}")
        })
        .collect()
}

fn balance_of(db: &Db, account: acre::db::Addr) -> i64 {
    let bytes = db.read(account).expect("read an account");
    i64::from_le_bytes(bytes[..8].try_into().expect("8 bytes"))
}

/// The cluster is killed (kill -9 of every node) during its restart, once the CM's restart
/// configuration is committed (every region blocked, every backup copying) and before any
/// region serves again; `cluster up` restarts it a second time. The nodes start in that
/// configuration and recover what it blocks at once; when the CM replica that led before leads
/// again, it distributes that configuration with the same id, from which the nodes learn their
/// CM (their leases and their reports), and the launcher's `restart` changes nothing. It used
/// to leave the nodes without a CM until one was removed as failed, and its region lost.
#[test]
fn a_cluster_killed_during_its_restart_restarts_again() {
    use acre::cluster::CmStatusFile;
    use acre::txn::RegionState;
    let cluster = Cluster::up_with("restart-twice", "shm", &["--commit", "messages"]);
    let db = Db::connect(&cluster.dir.join(CLUSTER_FILE)).expect("connect");
    let bank = Bank::create(&db, 30, INITIAL_BALANCE).expect("create accounts");
    let acknowledged = transfer_until_killed(&cluster, &db, &bank, 3, Duration::from_millis(1500));
    // The client process stays (an application outliving the memory nodes): its transactions
    // are settled by the restart configuration's recovery.
    let killed_in = CmStatusFile::read(&cluster.dir)
        .expect("read the CM status")
        .expect("a CM status")
        .committed
        .id;

    // The first restart, killed once the restart configuration is committed.
    let mut first = Command::new(env!("CARGO_BIN_EXE_acre"))
        .args(["cluster", "up", "--dir", cluster.dir()])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .expect("start the first restart");
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    loop {
        assert!(
            std::time::Instant::now() < deadline,
            "no restart configuration"
        );
        if let Ok(Some(status)) = CmStatusFile::read(&cluster.dir)
            && status.committed.id > killed_in
            && status
                .committed
                .regions
                .iter()
                .any(|p| p.state == RegionState::Blocked)
        {
            break;
        }
        std::thread::sleep(Duration::from_millis(1));
    }
    kill_every_node(&cluster);
    let _ = first.kill();
    let _ = first.wait();

    let mut command = Command::new(env!("CARGO_BIN_EXE_acre"));
    command.args(["cluster", "up", "--dir", cluster.dir()]);
    let up = run_bounded(command, Duration::from_secs(120)).unwrap_or_else(|output| output);
    assert!(
        up.status.success(),
        "the second restart: {}{}",
        text(&up),
        node_logs(&cluster)
    );
    drop(db);
    let db = Db::connect(&cluster.dir.join(CLUSTER_FILE)).expect("connect again");
    let bank = Bank::open(&db, bank.directory).expect("the bank's directory survives");
    check_acknowledged(&db, &bank, &acknowledged, "killed during its restart");
}

/// A bit flipped, while the cluster is down, in the balance of an account in its primary's
/// copy: `up` finds the copy does not match the block sums its node wrote when it stopped,
/// serves none of it (a backup whose copy is intact becomes the region's primary), and the
/// bank's total holds with every balance as committed. The damaged copy is then copied again
/// whole from the new primary. Without the check the flipped balance is served and the total
/// is off by 4096.
#[test]
fn a_primary_copy_damaged_while_down_is_never_served() {
    damaged_primary_copy_is_never_served("restart-sums", Stop::Down);
}

/// The same after kill -9 of every node: no block sums were written, and the objects' own
/// sums find the flipped balance. Without them the copy was served as memory that outlived
/// its process, and the flipped balance with it.
#[test]
fn a_primary_copy_damaged_after_every_node_was_killed_is_never_served() {
    damaged_primary_copy_is_never_served("restart-object-sums", Stop::KillEveryNode);
}

/// How a test stops the whole cluster.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Stop {
    /// `acre cluster down`: every node writes its copies' block sums.
    Down,
    /// kill -9 of every node at once: no sums.
    KillEveryNode,
}

fn damaged_primary_copy_is_never_served(name: &str, stop: Stop) {
    use acre::cluster::CmStatusFile;
    let cluster = Cluster::up(name, "shm");
    let (bank, balances) = bank_settled(&cluster);
    let account = bank.accounts[0];
    let region = account.region();
    let victim = placement_of(&cluster, region).primary;

    match stop {
        Stop::Down => {
            let down = acre(&["cluster", "down", "--dir", cluster.dir()]);
            assert!(down.status.success(), "{}", text(&down));
        }
        Stop::KillEveryNode => kill_every_node(&cluster),
    }
    let copy = copy_file(&cluster.dir, victim, region);
    let sums = acre::replication::sums::sums_path(&copy);
    assert_eq!(
        sums.exists(),
        stop == Stop::Down,
        "a clean stop writes the copy's block sums, a kill none"
    );
    // The slot: its header word, the value's length (a word), then the balance, whose second
    // byte is 0x03 (1000 is 0x3e8): 0x03 ^ 0x10 adds 4096.
    let balance_offset = u64::from(account.offset()) + 16;
    let bytes = std::fs::read(&copy).expect("read the copy");
    let at = balance_offset as usize;
    assert_eq!(
        i64::from_le_bytes(bytes[at..at + 8].try_into().expect("8 bytes")),
        balances[0],
        "the balance's place in the copy"
    );
    flip_a_byte_bit(&copy, balance_offset + 1);

    let up = acre(&["cluster", "up", "--dir", cluster.dir()]);
    assert!(up.status.success(), "{}{}", text(&up), node_logs(&cluster));
    let db = Db::connect(&cluster.dir.join(CLUSTER_FILE)).expect("connect again");
    let bank = Bank::open(&db, bank.directory).expect("the bank's directory survives");
    let after: Vec<i64> = bank.accounts.iter().map(|&a| balance_of(&db, a)).collect();
    assert_eq!(after, balances, "every balance as committed");
    assert_eq!(audit(&db, &bank), Ok(bank.expected_total()));
    drop(db);
    let shown = String::from_utf8_lossy(&up.stdout);
    assert!(
        shown.contains(&format!("{victim}'s copy of {region} is damaged")),
        "{shown}"
    );
    let log = std::fs::read_to_string(acre::cluster::node_log_path(&cluster.dir, victim))
        .expect("read the victim's log");
    assert!(
        log.contains(&format!("its copy of {region} is damaged")),
        "{log}"
    );
    let status = CmStatusFile::read(&cluster.dir)
        .expect("read the CM status")
        .expect("a CM status");
    let placement = status.committed.placement(region).expect("the region");
    assert_ne!(placement.primary, victim, "{placement:?}");
    assert!(placement.backups.contains(&victim), "{placement:?}");
    assert!(
        !sums.exists(),
        "sums never outlive the restart that checked them"
    );

    // The damaged copy is taken again from the new primary, from block 0: the balance is
    // back in the victim's file once the copy is counted complete.
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    loop {
        let status = CmStatusFile::read(&cluster.dir)
            .expect("read the CM status")
            .expect("a CM status");
        let placement = status.committed.placement(region).expect("the region");
        if !placement.copying.contains(&victim) {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "{victim} still copies {region}: {placement:?}{}",
            node_logs(&cluster)
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    let bytes = std::fs::read(&copy).expect("read the copy");
    let balance = i64::from_le_bytes(bytes[at..at + 8].try_into().expect("8 bytes"));
    assert_eq!(balance, balances[0], "the copied balance at {victim}");
    // The held-back copy is replaced whole: word for word its new primary's (nothing writes
    // the region meanwhile), no held-back word left in a slot, a block's slack or the tail.
    let primary = placement_of(&cluster, region).primary;
    let primary_bytes = std::fs::read(copy_file(&cluster.dir, primary, region))
        .expect("read the new primary's copy");
    let held_back = bytes
        .chunks(8)
        .filter(|w| u64::from_le_bytes((*w).try_into().expect("8 bytes")) == HELD_BACK_WORD)
        .count();
    assert_eq!(held_back, 0, "held-back words left in {victim}'s copy");
    let differing = (bytes.chunks(8).zip(primary_bytes.chunks(8)))
        .position(|(a, b)| a != b)
        .map(|word| word * 8);
    assert_eq!(
        differing, None,
        "{victim}'s copy differs from {primary}'s at this offset"
    );
}

/// The file of `node`'s copy of `region` in the cluster directory.
fn copy_file(dir: &Path, node: NodeId, region: acre::db::RegionId) -> PathBuf {
    acre::engine::directory::node_area_files(dir, node)
        .expect("list the node's files")
        .into_iter()
        .find(|(area, _)| *area == region)
        .map(|(_, path)| path)
        .unwrap_or_else(|| panic!("{node} has no copy of {region}"))
}

/// Flips bit 4 of the byte at `offset` in the file at `path`.
fn flip_a_byte_bit(path: &Path, offset: u64) {
    let mut bytes = std::fs::read(path).expect("read the copy");
    bytes[offset as usize] ^= 0x10;
    std::fs::write(path, bytes).expect("write the copy back");
}

/// Every replica of a region damaged while the cluster is down (f = 1: its primary's copy and
/// its backup's): no copy can be vouched for, so the region is lost rather than served, `up`
/// says so and fails, and a read of an account in it fails instead of returning a wrong
/// balance; accounts in the other regions read as committed.
#[test]
fn a_region_whose_every_copy_is_damaged_is_lost_not_served() {
    let cluster = Cluster::up_with("restart-sums-lost", "shm", &["--f", "1"]);
    let db = Db::connect(&cluster.dir.join(CLUSTER_FILE)).expect("connect");
    let bank = Bank::create(&db, 30, 1000).expect("create accounts");
    assert!(db.quiesce(QUIESCE_TIMEOUT), "the cluster did not quiesce");
    drop(db);
    let account = bank.accounts[0];
    let region = account.region();
    let placement = placement_of(&cluster, region);
    let replicas: Vec<NodeId> = placement.replicas().collect();
    assert_eq!(replicas.len(), 2, "{placement:?}");

    let down = acre(&["cluster", "down", "--dir", cluster.dir()]);
    assert!(down.status.success(), "{}", text(&down));
    for &node in &replicas {
        let copy = copy_file(&cluster.dir, node, region);
        flip_a_byte_bit(&copy, u64::from(account.offset()) + 16 + 1);
    }

    let up = acre(&["cluster", "up", "--dir", cluster.dir()]);
    assert!(!up.status.success(), "{}{}", text(&up), node_logs(&cluster));
    let stderr = String::from_utf8_lossy(&up.stderr);
    assert!(
        stderr.contains(&format!("{region} is lost")),
        "{}",
        text(&up)
    );
    let db = Db::connect(&cluster.dir.join(CLUSTER_FILE)).expect("connect again");
    let read = db.read(account);
    assert!(read.is_err(), "a lost region's account read {read:?}");
    for &other in bank.accounts.iter().filter(|a| a.region() != region) {
        assert_eq!(balance_of(&db, other), 1000, "{other}");
    }
}

/// A bank of 30 accounts, applied everywhere, and its balances.
fn bank_settled(cluster: &Cluster) -> (Bank, Vec<i64>) {
    let db = Db::connect(&cluster.dir.join(CLUSTER_FILE)).expect("connect");
    let bank = Bank::create(&db, 30, 1000).expect("create accounts");
    assert!(db.quiesce(QUIESCE_TIMEOUT), "the cluster did not quiesce");
    let balances: Vec<i64> = bank.accounts.iter().map(|&a| balance_of(&db, a)).collect();
    (bank, balances)
}

/// Where the CM's last committed configuration places `region`.
fn placement_of(cluster: &Cluster, region: acre::db::RegionId) -> acre::txn::config::Placement {
    acre::cluster::CmStatusFile::read(&cluster.dir)
        .expect("read the CM status")
        .expect("a CM status")
        .committed
        .placement(region)
        .expect("the region is in the configuration")
        .clone()
}

/// A primary copy damaged while the cluster was down, and a CM that was never told: the nodes
/// are started again by hand, one `acre node --restart` each, with no restart request naming
/// the damage (as when `up`'s request is refused, or the CM commits a configuration before it
/// comes). The CM's configurations keep the damaged node primary of the region. The node
/// reports its held-back copy itself: the CM hands the region to an intact backup, and every
/// balance reads as committed. Before, the region stayed active on the emptied copy, and the
/// account read as absent.
#[test]
fn a_damaged_primary_copy_the_cm_was_not_told_of_is_handed_to_an_intact_backup() {
    let cluster = Cluster::up("restart-damage-untold", "shm");
    let (bank, balances) = bank_settled(&cluster);
    let account = bank.accounts[0];
    let region = account.region();
    let victim = placement_of(&cluster, region).primary;
    let nodes = acre::cluster::CmStatusFile::read(&cluster.dir)
        .expect("read the CM status")
        .expect("a CM status")
        .committed
        .nodes;

    let down = acre(&["cluster", "down", "--dir", cluster.dir()]);
    assert!(down.status.success(), "{}", text(&down));
    let copy = copy_file(&cluster.dir, victim, region);
    flip_a_byte_bit(&copy, u64::from(account.offset()) + 16 + 1);

    acre::replication::sums::clear_cluster_stopping(&cluster.dir).expect("clear the stop mark");
    let mut children = Vec::new();
    for &node in &nodes {
        acre::engine::directory::NodeManifest::remove(&cluster.dir, node)
            .expect("remove the stopped process's manifest");
        let log = std::fs::File::create(acre::cluster::node_log_path(&cluster.dir, node))
            .expect("create the node's log");
        let child = Command::new(env!("CARGO_BIN_EXE_acre"))
            .arg("node")
            .arg("--cluster")
            .arg(cluster.dir.join(CLUSTER_FILE))
            .args(["--id", &node.0.to_string(), "--restart"])
            .stdin(std::process::Stdio::null())
            .stdout(log.try_clone().expect("share the log"))
            .stderr(log)
            .spawn()
            .expect("start a node process");
        children.push(child);
    }
    // `cluster down` at the end stops them through their manifests (the fixture's drop too).
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    let placement = loop {
        let placement = acre::cluster::CmStatusFile::read(&cluster.dir)
            .ok()
            .flatten()
            .and_then(|status| status.committed.placement(region).cloned());
        if let Some(p) =
            placement.filter(|p| p.primary != victim && p.state == acre::txn::RegionState::Active)
        {
            break p;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "{region} is still served by {victim}, whose copy is damaged: {:?}{}",
            placement_of(&cluster, region),
            node_logs(&cluster)
        );
        std::thread::sleep(Duration::from_millis(50));
    };
    assert!(placement.backups.contains(&victim), "{placement:?}");
    let db = Db::connect(&cluster.dir.join(CLUSTER_FILE)).expect("connect again");
    let bank = Bank::open(&db, bank.directory).expect("the bank's directory survives");
    let after: Vec<i64> = bank.accounts.iter().map(|&a| balance_of(&db, a)).collect();
    assert_eq!(after, balances, "every balance as committed");
    let log = std::fs::read_to_string(acre::cluster::node_log_path(&cluster.dir, victim))
        .expect("read the victim's log");
    assert!(
        log.contains(&format!("its copy of {region} is damaged")),
        "{log}"
    );
    drop(db);
    let down = acre(&["cluster", "down", "--dir", cluster.dir()]);
    assert!(down.status.success(), "{}", text(&down));
    for mut child in children {
        child.wait().expect("reap a node process");
    }
}
