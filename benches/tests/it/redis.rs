//! The Redis backend against a real `redis-server` that each test starts on a free loopback
//! port without persistence, and kills when it ends (a guard, so also when it panics).
//!
//! Tests run in parallel, so two may pick the same free port: a server is used only once it
//! answers with its own process id, and one that lost the port race is started again elsewhere.

use acre_benches::ycsb::redis::RedisBackend;
use acre_benches::ycsb::redis::resp::{Connection, Reply};
use acre_benches::ycsb::{
    self, Backend, FIELD_COUNT, FIELD_LENGTH_BYTES, Fields, OpKind, Options, Workload, key_name,
};
use acre_nvm_log::random::ConcurrentSeed;
use std::collections::BTreeMap;
use std::net::TcpListener;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// How long a starting server may take to answer PING.
const STARTUP_TIMEOUT: Duration = Duration::from_secs(10);
/// Servers started before giving up on finding a free port.
const START_ATTEMPTS_MAX: usize = 5;
const RECORDS: u64 = 1000;
const OPERATIONS: u64 = 2000;

/// The loopback address the servers of most tests listen on.
const SHARED_HOST: &str = "127.0.0.1";

/// A `redis-server` child process, killed on drop.
struct RedisServer {
    child: Child,
    host: &'static str,
    port: u16,
}

impl RedisServer {
    fn start(host: &'static str) -> RedisServer {
        for _ in 0..START_ATTEMPTS_MAX {
            if let Some(server) = RedisServer::try_start(host, free_port(host)) {
                return server;
            }
        }
        panic!("redis-server exited at startup {START_ATTEMPTS_MAX} times (ports taken?)");
    }

    /// A server on `port`, or None if it exited at startup (another took the port).
    fn try_start(host: &'static str, port: u16) -> Option<RedisServer> {
        let spawned = Command::new("redis-server")
            .args(["--port", &port.to_string()])
            .args(["--bind", host, "--save", "", "--appendonly", "no"])
            .arg("--dir")
            .arg(std::env::temp_dir())
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn();
        let child = match spawned {
            Ok(child) => child,
            Err(error) if error.kind() == std::io::ErrorKind::NotFound => panic!(
                "redis-server is not on PATH: install it (apt-get install redis-server) to \
                 test the YCSB driver's Redis backend"
            ),
            Err(error) => panic!("start redis-server: {error}"),
        };
        let mut server = RedisServer { child, host, port };
        let own_pid = format!("process_id:{}", server.child.id());
        let deadline = Instant::now() + STARTUP_TIMEOUT;
        loop {
            if let Ok(mut connection) = Connection::connect(&server.address())
                && let Ok(Reply::Bulk(info)) = connection.command(&[b"INFO", b"server"])
                && String::from_utf8_lossy(&info)
                    .lines()
                    .any(|line| line == own_pid)
            {
                return Some(server);
            }
            if let Ok(Some(_)) = server.child.try_wait() {
                return None;
            }
            assert!(
                Instant::now() < deadline,
                "redis-server on port {port} never answered"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    fn address(&self) -> String {
        format!("{}:{}", self.host, self.port)
    }

    fn url(&self) -> String {
        format!("redis://{}", self.address())
    }

    fn command(&self, args: &[&[u8]]) -> Reply {
        Connection::connect(&self.address())
            .expect("connect")
            .command(args)
            .expect("reply")
    }

    fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        self.kill();
    }
}

/// A port nothing listens on at `host` (just now).
fn free_port(host: &str) -> u16 {
    TcpListener::bind((host, 0))
        .and_then(|listener| listener.local_addr())
        .expect("bind a free port")
        .port()
}

fn options(workload: Workload, seed: u64) -> Options {
    crate::options(workload, seed, RECORDS, OPERATIONS)
}

/// Every record by key, read through the backend.
fn records(backend: &RedisBackend, count: u64) -> BTreeMap<String, Fields> {
    let mut client = backend.client().expect("client");
    (0..count)
        .map(|key_number| {
            let key = key_name(key_number);
            let fields = client.read(&key).expect("read").expect("record exists");
            assert_eq!(fields.len(), FIELD_COUNT, "{key}");
            assert!(
                fields.iter().all(|f| f.len() == FIELD_LENGTH_BYTES),
                "{key}"
            );
            (key, fields)
        })
        .collect()
}

fn changed_fields(before: &BTreeMap<String, Fields>, after: &BTreeMap<String, Fields>) -> usize {
    before
        .iter()
        .map(|(key, old)| old.iter().zip(&after[key]).filter(|(a, b)| a != b).count())
        .sum()
}

fn integer(reply: Reply) -> i64 {
    match reply {
        Reply::Integer(n) => n,
        other => panic!("expected an integer: {other:?}"),
    }
}

#[test]
fn load_and_workloads_a_e_f_against_a_real_server() {
    let seeded = ConcurrentSeed::new("load_and_workloads_a_e_f_against_a_real_server");
    let seed = seeded.value();
    let server = RedisServer::start(SHARED_HOST);
    let backend = RedisBackend::connect(&server.url()).expect("connect");
    backend.flush().expect("flush");
    assert_eq!(backend.name(), "redis");

    let load = ycsb::load(&backend, &options(Workload::A, seed)).expect("load");
    let insert = load.operation(OpKind::Insert).expect("inserts");
    assert_eq!((insert.count, insert.failed_count), (RECORDS, 0));
    assert_eq!(
        integer(server.command(&[b"ZCARD", b"ycsb:index"])),
        RECORDS as i64
    );
    // The records and the index, nothing else.
    assert_eq!(integer(server.command(&[b"DBSIZE"])), RECORDS as i64 + 1);

    // Scans walk the keys in byte order, from the start key on.
    let mut client = backend.client().expect("client");
    let mut keys: Vec<String> = (0..RECORDS).map(key_name).collect();
    keys.sort();
    let scanned = client.scan(&keys[10], 5).expect("scan");
    let expected: Vec<Fields> = keys[10..15]
        .iter()
        .map(|key| client.read(key).expect("read").expect("exists"))
        .collect();
    assert_eq!(scanned, expected);
    let last = client.scan(&keys[keys.len() - 2], 100).expect("scan");
    assert_eq!(last.len(), 2);

    // A: updates change one field at a time and keep every record whole.
    let before = records(&backend, RECORDS);
    let run = ycsb::run(&backend, &options(Workload::A, seed)).expect("run A");
    assert_eq!(
        (run.operation_count, run.failed_count()),
        (OPERATIONS, 0),
        "{run:?}"
    );
    let updates = run.operation(OpKind::Update).expect("updates").count as usize;
    let changed = changed_fields(&before, &records(&backend, RECORDS));
    assert!(
        changed > 0 && changed <= updates,
        "changed={changed} updates={updates}"
    );

    // F: read-modify-writes change fields too.
    let before = records(&backend, RECORDS);
    let run = ycsb::run(&backend, &options(Workload::F, seed)).expect("run F");
    assert_eq!(
        (run.operation_count, run.failed_count()),
        (OPERATIONS, 0),
        "{run:?}"
    );
    let rmws = run.operation(OpKind::ReadModifyWrite).expect("rmw").count as usize;
    let changed = changed_fields(&before, &records(&backend, RECORDS));
    assert!(
        changed > 0 && changed <= rmws,
        "changed={changed} rmws={rmws}"
    );

    // E: scans succeed, and every insert lands in the table and the index.
    let run = ycsb::run(&backend, &options(Workload::E, seed)).expect("run E");
    assert_eq!(
        (run.operation_count, run.failed_count()),
        (OPERATIONS, 0),
        "{run:?}"
    );
    let inserted = run.operation(OpKind::Insert).expect("inserts").count;
    assert!(inserted > 0, "{run:?}");
    let total = RECORDS + inserted;
    assert_eq!(
        integer(server.command(&[b"ZCARD", b"ycsb:index"])),
        total as i64
    );
    assert_eq!(records(&backend, total).len() as u64, total);
}

#[test]
fn missing_keys_are_false_or_none_and_values_are_binary_safe() {
    let server = RedisServer::start(SHARED_HOST);
    let backend = RedisBackend::connect(&server.url()).expect("connect");
    let mut client = backend.client().expect("client");
    assert_eq!(client.read("user1").expect("read"), None);
    assert!(!client.update("user1", 3, b"x").expect("update"));
    assert!(!client.read_modify_write("user1", 3, b"x").expect("rmw"));
    // The update's stray field was taken back: nothing exists.
    assert_eq!(integer(server.command(&[b"DBSIZE"])), 0);
    assert_eq!(client.scan("user", 10).expect("scan"), Vec::<Fields>::new());

    let fields: Fields = vec![b"a\r\nb".to_vec(), vec![0, 255, b'$', b'*'], Vec::new()];
    client.insert("user1", &fields).expect("insert");
    assert_eq!(client.read("user1").expect("read"), Some(fields.clone()));
    assert!(client.update("user1", 2, b"\0\r\n").expect("update"));
    assert!(
        client
            .read_modify_write("user1", 0, b"+OK\r\n")
            .expect("rmw")
    );
    let expected = vec![b"+OK\r\n".to_vec(), fields[1].clone(), b"\0\r\n".to_vec()];
    assert_eq!(client.read("user1").expect("read"), Some(expected.clone()));
    assert_eq!(client.scan("", 10).expect("scan"), vec![expected]);
    // A field beyond the record is an error, and leaves the record alone.
    assert!(client.read_modify_write("user1", 7, b"x").is_err());
    // The connection is still in step after it.
    assert_eq!(client.read("user2").expect("read"), None);
}

#[test]
fn flush_empties_the_database_of_the_url() {
    let server = RedisServer::start(SHARED_HOST);
    server.command(&[b"SET", b"other", b"1"]);
    let backend = RedisBackend::connect(&format!("{}/3", server.url())).expect("connect db 3");
    backend
        .client()
        .expect("client")
        .insert("user1", &vec![b"v".to_vec()])
        .expect("insert");
    let mut db3 = backend.connection().expect("connection");
    assert_eq!(
        db3.command(&[b"DBSIZE"]).expect("dbsize"),
        Reply::Integer(2)
    );
    backend.flush().expect("flush");
    assert_eq!(
        db3.command(&[b"DBSIZE"]).expect("dbsize"),
        Reply::Integer(0)
    );
    // Database 0 kept its key.
    assert_eq!(integer(server.command(&[b"DBSIZE"])), 1);
}

#[test]
fn a_port_where_nothing_listens_is_an_error_within_two_seconds() {
    // 127.0.0.2 (loopback too), where the other tests' servers never listen.
    let url = format!("redis://127.0.0.2:{}", free_port("127.0.0.2"));
    let started = Instant::now();
    let error = RedisBackend::connect(&url).expect_err("nothing listens");
    let took = started.elapsed();
    assert!(took < Duration::from_secs(2), "took={took:?}");
    let message = format!("{error:#}");
    assert!(message.contains("connect to 127.0.0.2:"), "{message}");

    let error = RedisBackend::connect("localhost:6379").expect_err("no scheme");
    assert!(
        error
            .to_string()
            .contains("expected redis://HOST[:PORT][/DB]"),
        "{error}"
    );
}

#[test]
fn a_server_that_dies_mid_run_stops_the_run_with_an_error() {
    let seeded = ConcurrentSeed::new("a_server_that_dies_mid_run_stops_the_run_with_an_error");
    let seed = seeded.value();
    // Alone on its loopback address: once killed, its port may go to another test's server,
    // which this test's clients must not reach.
    let mut server = RedisServer::start("127.0.0.3");
    let backend = RedisBackend::connect(&server.url()).expect("connect");
    let mut options = options(Workload::A, seed);
    options.records = 100;
    ycsb::load(&backend, &options).expect("load");
    options.operations = None;
    options.duration = Some(Duration::from_secs(60));
    let started = Instant::now();
    let error = std::thread::scope(|scope| {
        let run = scope.spawn(|| ycsb::run(&backend, &options));
        std::thread::sleep(Duration::from_millis(200));
        server.kill();
        run.join().expect("run thread")
    })
    .expect_err("the server is gone");
    let took = started.elapsed();
    assert!(took < Duration::from_secs(10), "took={took:?}");
    let message = format!("{error:#}");
    assert!(message.contains("operations failed"), "{message}");
}

#[test]
fn read_modify_writes_retry_when_another_client_changes_the_key() {
    const THREADS: usize = 4;
    const RMW_COUNT: usize = 200;
    let server = RedisServer::start(SHARED_HOST);
    let backend = RedisBackend::connect(&server.url()).expect("connect");
    let record = vec![b"v".to_vec(); FIELD_COUNT];
    backend
        .client()
        .expect("client")
        .insert("user1", &record)
        .expect("insert");
    std::thread::scope(|scope| {
        for thread_index in 0..THREADS {
            let backend = &backend;
            scope.spawn(move || {
                let mut client = backend.client().expect("client");
                for index in 0..RMW_COUNT {
                    let value = format!("{thread_index}.{index}");
                    let done = client
                        .read_modify_write("user1", index % FIELD_COUNT, value.as_bytes())
                        .expect("rmw");
                    assert!(done, "rmw {thread_index}.{index}");
                }
            });
        }
    });
    // Four clients on one key: some EXECs find it changed since WATCH and are tried again
    // (observed: about one retry per read-modify-write), so there are more EXECs than
    // read-modify-writes (and the insert's one).
    let Reply::Bulk(stats) = server.command(&[b"INFO", b"commandstats"]) else {
        panic!("INFO is a bulk string");
    };
    let stats = String::from_utf8_lossy(&stats);
    let exec_calls: usize = stats
        .lines()
        .find_map(|line| line.strip_prefix("cmdstat_exec:calls="))
        .and_then(|rest| rest.split(',').next())
        .and_then(|calls| calls.parse().ok())
        .unwrap_or_else(|| panic!("no EXEC calls in {stats}"));
    assert!(
        exec_calls > THREADS * RMW_COUNT + 1,
        "exec_calls={exec_calls}"
    );
    let fields = backend
        .client()
        .expect("client")
        .read("user1")
        .expect("read")
        .expect("exists");
    assert!(
        fields.iter().all(|field| field.as_slice() != b"v"),
        "{fields:?}"
    );
}

/// The bank benchmark's Redis backend: the Lua transfer never aborts, WATCH/MULTI/EXEC
/// transfers abort and are retried when threads collide (8 accounts, 4 threads), and the total
/// holds after every row; a database that holds keys is refused unless flushed.
#[test]
fn the_bank_transfers_keep_the_total_with_lua_and_with_watch() {
    use acre_benches::transfer::{self, redis::RedisBank};
    let server = RedisServer::start(SHARED_HOST);
    let mut bank = RedisBank::connect(&server.url(), false).expect("an empty database");
    let options = transfer::Options {
        accounts: 8,
        initial_balance: 20,
        threads: vec![1, 4],
        duration: Duration::from_millis(300),
        warmup: Duration::from_millis(50),
        transfers: None,
        in_flight: 1,
        seed: 3,
        termination: None,
    };
    let report = transfer::run(&mut bank, &options, |_| Ok(())).expect("run");
    let rows: Vec<(&str, usize)> = report
        .rows
        .iter()
        .map(|row| (row.transaction, row.threads))
        .collect();
    assert_eq!(
        rows,
        [
            ("transfer lua", 1),
            ("transfer lua", 4),
            ("transfer watch", 1),
            ("transfer watch", 4),
            ("read-only 4", 1),
            ("read-only 4", 4),
        ]
    );
    for row in &report.rows {
        assert!(row.committed > 0, "{row:?}");
        assert_eq!(row.total.sum, 160, "{row:?}");
        assert_eq!(row.total.negative, None, "{row:?}");
        if row.transaction != "transfer watch" || row.threads == 1 {
            assert_eq!(row.aborted, 0, "{row:?}");
        }
    }
    let error = RedisBank::connect(&server.url(), false)
        .err()
        .expect("the bank's keys are there");
    assert!(error.to_string().contains("holds 8 keys"), "{error}");
    RedisBank::connect(&server.url(), true).expect("flushed");
    assert_eq!(integer(server.command(&[b"DBSIZE"])), 0);
}
