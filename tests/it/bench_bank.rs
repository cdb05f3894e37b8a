//! `acre bench bank --target ...` with bad input, against no server at all or a fake one on
//! loopback that answers just enough of RESP or of PostgreSQL's protocol: a peer that does not
//! answer, a database that holds data (refused without `--flush`, emptied with it: FLUSHDB on
//! the chosen Redis database, DROP TABLE of the bench's own table only), zero threads and an
//! unknown target get one line on stderr and exit code 2; and the fixed-count runs
//! (`--transfers`) on an embedded cluster.

use crate::cluster::{run_bounded, text};
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::process::{Command, Output};
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// Longer than any of these runs takes: they fail before measuring anything.
const RUN_TIMEOUT: Duration = Duration::from_secs(60);

/// Runs `acre bench bank` with `args`, bounded in time.
fn bench_bank(args: &[&str]) -> Output {
    let mut command = Command::new(env!("CARGO_BIN_EXE_acre"));
    command.args(["bench", "bank", "--seconds", "1"]).args(args);
    run_bounded(command, RUN_TIMEOUT)
        .unwrap_or_else(|output| panic!("acre bench bank {args:?} did not end: {}", text(&output)))
}

/// Asserts that `output` is a failure of one line on stderr, with exit code 2, saying `what`.
fn assert_refused(output: &Output, what: &str) {
    assert_eq!(output.status.code(), Some(2), "{}", text(output));
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.starts_with("acre: "), "{}", text(output));
    assert!(stderr.contains(what), "expected {what:?}: {}", text(output));
    assert_eq!(stderr.trim().lines().count(), 1, "{}", text(output));
}

/// A loopback port nothing listens on.
fn silent_port() -> u16 {
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
    listener.local_addr().expect("address").port()
}

#[test]
fn zero_threads_and_unknown_targets_get_one_line_and_exit_code_2() {
    for (args, what) in [
        (vec!["--threads", "1,0"], "positive"),
        (vec!["--target", "mysql://127.0.0.1"], "unknown target"),
        (vec!["--target", "redis:/x"], "unknown target"),
        (vec!["--target", "postgres://"], "malformed postgres URL"),
        (
            vec!["--target", "redis://127.0.0.1:1", "--transport", "shm"],
            "--transport goes with --target acre only",
        ),
        (
            vec!["--target", "acre:/dev/shm/acre-test-no-such-cluster"],
            "no cluster",
        ),
    ] {
        assert_refused(&bench_bank(&args), what);
    }
}

#[test]
fn a_peer_that_does_not_answer_gets_one_line_and_exit_code_2() {
    let port = silent_port();
    let redis = format!("redis://127.0.0.1:{port}");
    assert_refused(&bench_bank(&["--target", &redis]), "cannot reach redis");
    let postgres = format!("postgres://postgres@127.0.0.1:{port}/postgres");
    assert_refused(
        &bench_bank(&["--target", &postgres]),
        "cannot connect to postgres",
    );
}

/// A fake Redis whose every database holds 3 keys until FLUSHDB: it answers PING, SELECT,
/// FLUSHDB and DBSIZE, and an error to anything else. It records every command it got.
fn fake_redis() -> (u16, Arc<Mutex<Vec<String>>>) {
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
    let port = listener.local_addr().expect("address").port();
    let commands = Arc::new(Mutex::new(Vec::new()));
    let log = commands.clone();
    std::thread::spawn(move || {
        for stream in listener.incoming() {
            let Ok(stream) = stream else { return };
            let log = log.clone();
            std::thread::spawn(move || serve_redis(stream, &log));
        }
    });
    (port, commands)
}

fn serve_redis(stream: TcpStream, log: &Mutex<Vec<String>>) {
    let mut writer = stream.try_clone().expect("clone");
    let mut reader = BufReader::new(stream);
    let mut line = String::new();
    loop {
        line.clear();
        if reader.read_line(&mut line).unwrap_or(0) == 0 {
            return;
        }
        let count: usize = line
            .trim_start_matches('*')
            .trim()
            .parse()
            .expect("an array");
        let mut args = Vec::new();
        for _ in 0..count {
            line.clear();
            reader.read_line(&mut line).expect("a bulk length");
            let len: usize = line
                .trim_start_matches('$')
                .trim()
                .parse()
                .expect("a length");
            let mut arg = vec![0; len + 2];
            reader.read_exact(&mut arg).expect("a bulk string");
            arg.truncate(len);
            args.push(String::from_utf8_lossy(&arg).into_owned());
        }
        let command = args.join(" ");
        let flushed = log.lock().unwrap().iter().any(|c| c == "FLUSHDB");
        let reply: &[u8] = match args[0].as_str() {
            "PING" => b"+PONG\r\n",
            "SELECT" | "FLUSHDB" => b"+OK\r\n",
            "DBSIZE" if flushed => b":0\r\n",
            "DBSIZE" => b":3\r\n",
            _ => b"-ERR the fake knows no such command\r\n",
        };
        log.lock().unwrap().push(command);
        if writer.write_all(reply).is_err() {
            return;
        }
    }
}

#[test]
fn a_redis_database_that_holds_keys_is_refused_unless_flush_empties_it() {
    let (port, commands) = fake_redis();
    let target = format!("redis://127.0.0.1:{port}/3");
    assert_refused(&bench_bank(&["--target", &target]), "redis database 3 at");
    assert!(
        !commands.lock().unwrap().iter().any(|c| c == "FLUSHDB"),
        "{commands:?}"
    );
    // With --flush the database is emptied, then the bench goes on until the fake refuses to
    // create the accounts.
    assert_refused(
        &bench_bank(&["--target", &target, "--flush"]),
        "MSET answered",
    );
    let commands = commands.lock().unwrap().clone();
    let flush = commands
        .iter()
        .position(|c| c == "FLUSHDB")
        .expect("FLUSHDB sent");
    assert_eq!(commands[flush - 1], "SELECT 3", "{commands:?}");
}

/// A fake PostgreSQL (trust authentication) whose database has the bench's table until it is
/// dropped: it answers simple queries that look for the table, drop it or SHOW a setting, and
/// refuses any other. It records every query it got.
fn fake_postgres() -> (u16, Arc<Mutex<Vec<String>>>) {
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
    let port = listener.local_addr().expect("address").port();
    let queries = Arc::new(Mutex::new(Vec::new()));
    let log = queries.clone();
    std::thread::spawn(move || {
        for stream in listener.incoming() {
            let Ok(stream) = stream else { return };
            let log = log.clone();
            std::thread::spawn(move || serve_postgres(stream, &log));
        }
    });
    (port, queries)
}

fn message(tag: u8, body: &[u8]) -> Vec<u8> {
    let mut out = vec![tag];
    out.extend_from_slice(&(body.len() as i32 + 4).to_be_bytes());
    out.extend_from_slice(body);
    out
}

/// A one-column, one-row result and ReadyForQuery.
fn one_value(value: &[u8]) -> Vec<u8> {
    let mut reply = message(
        b'T',
        b"\0\x01v\0\0\0\0\0\0\0\0\0\0\x19\xff\xff\xff\xff\xff\xff\0\0",
    );
    let mut row = vec![0, 1];
    row.extend_from_slice(&(value.len() as i32).to_be_bytes());
    row.extend_from_slice(value);
    reply.extend(message(b'D', &row));
    reply.extend(message(b'C', b"SELECT 1\0"));
    reply.extend(message(b'Z', b"I"));
    reply
}

fn serve_postgres(mut stream: TcpStream, log: &Mutex<Vec<String>>) {
    let mut length = [0u8; 4];
    if stream.read_exact(&mut length).is_err() {
        return;
    }
    let mut startup = vec![0; i32::from_be_bytes(length) as usize - 4];
    stream
        .read_exact(&mut startup)
        .expect("the startup message");
    let mut reply = message(b'R', &0i32.to_be_bytes());
    reply.extend(message(b'S', b"server_version\x0015.0 (fake)\0"));
    reply.extend(message(b'Z', b"I"));
    stream.write_all(&reply).expect("answer the startup");
    loop {
        let mut header = [0u8; 5];
        if stream.read_exact(&mut header).is_err() {
            return;
        }
        let len = i32::from_be_bytes(header[1..].try_into().unwrap()) as usize - 4;
        let mut body = vec![0; len];
        stream.read_exact(&mut body).expect("a message body");
        if header[0] != b'Q' {
            return; // Terminate, or a message the fake does not serve
        }
        let sql = String::from_utf8_lossy(&body[..len - 1]).into_owned();
        let dropped = log.lock().unwrap().iter().any(|q| q.starts_with("DROP"));
        let reply = if sql.starts_with("DROP TABLE") {
            let mut reply = message(b'C', b"DROP TABLE\0");
            reply.extend(message(b'Z', b"I"));
            reply
        } else if sql.contains("to_regclass") {
            one_value(if dropped { b"f" } else { b"t" })
        } else if sql.starts_with("SHOW") {
            one_value(b"on")
        } else {
            let mut reply = message(b'E', b"SERROR\0C0A000\0Mthe fake refuses this\0\0");
            reply.extend(message(b'Z', b"I"));
            reply
        };
        log.lock().unwrap().push(sql);
        if stream.write_all(&reply).is_err() {
            return;
        }
    }
}

#[test]
fn a_postgres_database_with_the_bench_table_is_refused_unless_flush_drops_it() {
    let (port, queries) = fake_postgres();
    let target = format!("postgres://postgres@127.0.0.1:{port}/bench");
    assert_refused(
        &bench_bank(&["--target", &target]),
        "already has the table acre_bank",
    );
    assert!(
        !queries
            .lock()
            .unwrap()
            .iter()
            .any(|q| q.starts_with("DROP")),
        "{queries:?}"
    );
    assert_refused(
        &bench_bank(&["--target", &target, "--flush"]),
        "the fake refuses this",
    );
    let queries = queries.lock().unwrap().clone();
    let drops: Vec<&String> = queries.iter().filter(|q| q.starts_with("DROP")).collect();
    assert_eq!(drops, ["DROP TABLE IF EXISTS acre_bank"], "{queries:?}");
    assert!(
        queries
            .iter()
            .any(|q| q.starts_with("CREATE TABLE acre_bank")),
        "{queries:?}"
    );
}

/// A short run on an embedded cluster prints a row per kind and thread count and writes them
/// as JSON, each with its total checked and its latencies in order.
#[test]
fn a_short_run_on_an_embedded_cluster_writes_its_rows_as_json() {
    let dir = tempfile::tempdir().expect("a temporary directory");
    let json = dir.path().join("bank.json");
    let json_arg = json.to_str().expect("a UTF-8 path");
    let output = bench_bank(&["--threads", "1,2", "--accounts", "16", "--json", json_arg]);
    assert_eq!(output.status.code(), Some(0), "{}", text(&output));
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(stdout.contains("p99.9 µs"), "{stdout}");
    let report: serde_json::Value =
        serde_json::from_slice(&std::fs::read(&json).expect("the JSON file")).expect("JSON");
    assert_eq!(report["target"], "acre");
    assert_eq!(report["expected_total"], 16 * 1000);
    let rows = report["rows"].as_array().expect("rows");
    let kinds: Vec<(&str, u64)> = rows
        .iter()
        .map(|row| {
            (
                row["transaction"].as_str().expect("a name"),
                row["threads"].as_u64().expect("threads"),
            )
        })
        .collect();
    assert_eq!(
        kinds,
        [
            ("transfer", 1),
            ("transfer", 2),
            ("read-only 4", 1),
            ("read-only 4", 2)
        ]
    );
    for row in rows {
        assert!(row["committed"].as_u64() > Some(0), "{row}");
        assert_eq!(row["total"]["sum"], 16 * 1000, "{row}");
        let (p50, p99, p999) = (
            row["p50_us"].as_f64(),
            row["p99_us"].as_f64(),
            row["p999_us"].as_f64(),
        );
        assert!(p50 > Some(0.0) && p50 <= p99 && p99 <= p999, "{row}");
    }
}

/// `--transfers N` (what benches/instructions-per-transfer.sh counts under callgrind): each
/// row is exactly N committed transfers, in both commit modes, with no read-only row; zero
/// transfers, or a count with --seconds, is refused.
#[test]
fn a_fixed_count_run_commits_exactly_that_many_transfers() {
    for commit in ["one-sided", "messages"] {
        let mut command = Command::new(env!("CARGO_BIN_EXE_acre"));
        command.args([
            "bench",
            "bank",
            "--transport",
            "local",
            "--threads",
            "1",
            "--accounts",
            "100",
            "--transfers",
            "300",
            "--commit",
            commit,
        ]);
        let output = run_bounded(command, RUN_TIMEOUT)
            .unwrap_or_else(|output| panic!("a fixed-count run did not end: {}", text(&output)));
        assert!(output.status.success(), "{}", text(&output));
        let stdout = String::from_utf8_lossy(&output.stdout);
        assert!(
            stdout.contains("transfer with 1 threads: 300 committed, 0 aborted"),
            "{}",
            text(&output)
        );
        assert!(!stdout.contains("read-only"), "{}", text(&output));
    }
    let mut zero = Command::new(env!("CARGO_BIN_EXE_acre"));
    zero.args(["bench", "bank", "--transfers", "0"]);
    let output = run_bounded(zero, RUN_TIMEOUT)
        .unwrap_or_else(|output| panic!("--transfers 0 did not end: {}", text(&output)));
    assert_refused(&output, "--transfers must be at least 1");
    assert_refused(&bench_bank(&["--transfers", "10"]), "cannot be used with");
}

/// `--in-flight K`: each client thread runs K transactions as tasks that take turns where one
/// waits (acre_engine::interleave). On 16 accounts the tasks of one thread conflict with each
/// other all the time: one waits for a lock another task of its thread holds, backs off while
/// that one waits on the fabric, and a link to a node is held by one task across its wait while
/// another wants it. Every transport and both commit modes: exactly the transfers asked for
/// commit, and the bench checks the total after the row. Non-Acre targets and out-of-range
/// counts are refused.
#[test]
fn transactions_in_flight_on_one_thread_commit_exactly_and_keep_the_total() {
    for transport in ["local", "shm", "tcp"] {
        transactions_in_flight(transport);
    }
    assert_refused(
        &bench_bank(&["--in-flight", "0"]),
        "--in-flight 0 is out of range",
    );
    assert_refused(
        &bench_bank(&["--in-flight", "2", "--target", "redis://127.0.0.1:1"]),
        "--in-flight applies to Acre targets only",
    );
}

/// As on the other transports: the tasks' waits are ofi completions.
#[cfg(feature = "ofi")]
#[test]
fn transactions_in_flight_on_one_thread_commit_exactly_and_keep_the_total_over_ofi() {
    transactions_in_flight("ofi");
}

fn transactions_in_flight(transport: &str) {
    {
        for commit in ["one-sided", "messages"] {
            let dir = tempfile::Builder::new()
                .prefix("acre-inflight-")
                .tempdir_in("/dev/shm")
                .expect("a cluster directory");
            let cluster = dir.path().join("cluster");
            let mut command = Command::new(env!("CARGO_BIN_EXE_acre"));
            command.args([
                "bench",
                "bank",
                "--transport",
                transport,
                "--commit",
                commit,
            ]);
            command.args(["--threads", "2", "--in-flight", "8", "--accounts", "16"]);
            command.args(["--transfers", "1000", "--dir"]).arg(&cluster);
            let output = run_bounded(command, RUN_TIMEOUT).unwrap_or_else(|output| {
                panic!(
                    "{transport}/{commit} with transactions in flight did not end: {}",
                    text(&output)
                )
            });
            assert!(
                output.status.success(),
                "{transport}/{commit}: {}",
                text(&output)
            );
            let stdout = String::from_utf8_lossy(&output.stdout);
            assert!(
                stdout.contains("transfer with 2 threads: 1000 committed"),
                "{transport}/{commit}: {}",
                text(&output)
            );
            assert!(
                stdout.contains("total checked after every row: 16000"),
                "{stdout}"
            );
        }
    }
}
