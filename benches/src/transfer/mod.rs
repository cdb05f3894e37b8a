//! The bank benchmark, one driver for several databases: every target creates the same
//! accounts with the same initial balance, runs transfers of random amounts between random
//! accounts, drawn by the same generator from the same seed as [`crate::bank`]'s runs, and
//! checks the total once a row is measured. A database is a [`Backend`]: Acre
//! ([`acre`]), Redis ([`redis`]: a Lua script, and WATCH/MULTI/EXEC) or PostgreSQL
//! ([`postgres`]: SERIALIZABLE transactions of prepared statements).
//!
//! A transfer moves `amount` (1 to 10) from one account to another, or what the first holds if
//! that is less, as [`crate::bank::Bank::transfer`] does. An attempt that aborts (a conflict, a
//! serialization failure, a WATCHed key changed) is counted and the same transfer is attempted
//! again after a jittered backoff, so every target does the same sequence of transfers per
//! thread; a transfer's latency runs from its first attempt to its commit.
//!
//! A row runs for a time (after a warm-up), or, with [`Options::transfers`], for a fixed
//! number of committed transfers: the same work on every run, whatever the machine's speed,
//! which is what counting instructions needs (`benches/instructions-per-transfer.sh`).

pub mod acre;
pub mod postgres;
pub mod redis;

use crate::ycsb::stats::HISTOGRAM_SIGNIFICANT_DIGITS;
use acre_engine::signal::Termination;
use acre_nvm_log::random::SplitMix;
use acre_txn::backoff::Backoff;
use acre_txn::retry::{BACKOFF_FIRST, BACKOFF_MAX};
use anyhow::Context;
use hdrhistogram::Histogram;
use serde::Serialize;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

/// Attempts of one transfer before the thread gives up on the run: far more than contention
/// among [`crate::bank::THREADS_MAX`] threads needs, so reaching it means the database refuses
/// every attempt.
pub const ATTEMPTS_MAX: u32 = 10_000;
/// The most accounts a run creates (the Acre bank's limit, so every target can hold them).
pub const ACCOUNTS_MAX: usize = crate::bank::ACCOUNTS_MAX;
/// The most transactions in flight on one thread (each is a task with a stack of its own): an
/// Acre client node has this many transaction slots.
pub const IN_FLIGHT_MAX: usize = acre_txn::reply::SLOTS_MAX;

/// What a row measures.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Work {
    /// Transfers between random accounts.
    Transfer,
    /// Read-only transactions of four random accounts.
    Read4,
}

/// One way a target runs its work, a row of the report per thread count: e.g. Redis's
/// transfer as a Lua script and as WATCH/MULTI/EXEC.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Kind {
    /// The row's name: `transfer`, `transfer lua`, `read-only 4`, ...
    pub name: &'static str,
    pub work: Work,
}

/// What one attempt came to.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Attempt {
    Committed,
    /// Nothing happened; the same work may be attempted again.
    Aborted,
}

/// A database the bank benchmark runs against. Accounts are numbered `0..count`; each backend
/// maps a number to its own key (an object address, a Redis key, a row id).
pub trait Backend: Send + Sync {
    /// The target's name in reports: `acre`, `redis`, `postgres`.
    fn name(&self) -> &'static str;
    /// What the target is, for the report's header: server version, durability settings.
    fn describe(&self) -> String;
    /// The rows this target measures, in order.
    fn kinds(&self) -> Vec<Kind>;
    /// Creates accounts `0..count` holding `initial_balance` each.
    fn create(&mut self, count: usize, initial_balance: i64) -> anyhow::Result<()>;
    /// A client for one thread.
    fn client(&self) -> anyhow::Result<Box<dyn Client>>;
    /// The sum of every balance and a negative one if any, read while no transfer runs.
    fn total(&self) -> anyhow::Result<Total>;
}

/// One thread's connection to a [`Backend`].
pub trait Client: Send {
    /// One attempt to move up to `amount` from account `from` to account `to` (`from != to`),
    /// the way `kind` says.
    fn transfer(
        &mut self,
        kind: Kind,
        from: usize,
        to: usize,
        amount: i64,
    ) -> anyhow::Result<Attempt>;
    /// One attempt to read `accounts` in one read-only transaction.
    fn read(&mut self, kind: Kind, accounts: [usize; 4]) -> anyhow::Result<Attempt>;
}

/// The balances as a backend found them.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
pub struct Total {
    pub sum: i64,
    /// A negative balance, if one was found (in a serializable history none is).
    pub negative: Option<i64>,
}

/// What a run does.
#[derive(Clone, Debug)]
pub struct Options {
    pub accounts: usize,
    pub initial_balance: i64,
    /// Thread counts, one row per kind and count.
    pub threads: Vec<usize>,
    /// Measured time of each row, after `warmup`.
    pub duration: Duration,
    pub warmup: Duration,
    /// A fixed-count run: with `Some(n)`, each row runs until exactly `n` transfers committed
    /// (split among its threads), with no warm-up; `duration` and `warmup` are not used, and
    /// only the transfer kinds are measured, so the run's work is the setup, `n` transfers per
    /// kind and thread count, and the totals read after the rows.
    pub transfers: Option<u64>,
    /// Transactions in flight on each client thread (`acre_engine::interleave`): each thread
    /// runs this many clients as tasks that take turns where one waits. 1: none interleaved.
    pub in_flight: usize,
    /// Seed of the transfer generator; client `c` (thread `t`'s task `i`, `c = t * in_flight +
    /// i`) draws from `seed ^ ((c + 1) * 0x9e37)`, as [`crate::bank::Bank::run`]'s threads do.
    pub seed: u64,
    /// Ctrl-C: the row being measured ends early and no more start.
    pub termination: Option<Arc<Termination>>,
}

/// Why a run cannot start with these options.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum OptionsError {
    #[error("--threads takes positive counts, not 0")]
    ZeroThreads,
    #[error("--threads {threads} is too many: at most {max}")]
    TooManyThreads { threads: usize, max: usize },
    #[error("--accounts {accounts} is out of range: between 8 and {max}")]
    Accounts { accounts: usize, max: usize },
    #[error("--seconds must be at least 1")]
    ZeroDuration,
    #[error("--transfers must be at least 1")]
    ZeroTransfers,
    #[error("--in-flight {in_flight} is out of range: between 1 and {max}")]
    InFlight { in_flight: usize, max: usize },
}

impl Options {
    pub fn validate(&self) -> Result<(), OptionsError> {
        if self.threads.contains(&0) {
            return Err(OptionsError::ZeroThreads);
        }
        if let Some(&threads) = self.threads.iter().find(|&&t| t > crate::bank::THREADS_MAX) {
            return Err(OptionsError::TooManyThreads {
                threads,
                max: crate::bank::THREADS_MAX,
            });
        }
        if !(8..=ACCOUNTS_MAX).contains(&self.accounts) {
            return Err(OptionsError::Accounts {
                accounts: self.accounts,
                max: ACCOUNTS_MAX,
            });
        }
        if !(1..=IN_FLIGHT_MAX).contains(&self.in_flight) {
            return Err(OptionsError::InFlight {
                in_flight: self.in_flight,
                max: IN_FLIGHT_MAX,
            });
        }
        match self.transfers {
            Some(0) => return Err(OptionsError::ZeroTransfers),
            Some(_) => {}
            None if self.duration.is_zero() => return Err(OptionsError::ZeroDuration),
            None => {}
        }
        Ok(())
    }

    fn terminated(&self) -> bool {
        self.termination
            .as_deref()
            .is_some_and(Termination::is_requested)
    }
}

/// One kind at one thread count.
#[derive(Clone, Debug, Serialize)]
pub struct Row {
    /// The kind's name.
    pub transaction: &'static str,
    pub threads: usize,
    /// Transactions in flight on each thread.
    pub in_flight: usize,
    #[serde(rename = "elapsed_s", serialize_with = "seconds")]
    pub elapsed: Duration,
    pub committed: u64,
    /// Attempts that aborted and were retried.
    pub aborted: u64,
    pub committed_per_s: f64,
    pub aborted_per_s: f64,
    pub mean_us: f64,
    pub p50_us: f64,
    pub p99_us: f64,
    pub p999_us: f64,
    pub max_us: f64,
    /// The balances once the row's threads stopped.
    pub total: Total,
}

fn seconds<S: serde::Serializer>(duration: &Duration, serializer: S) -> Result<S::Ok, S::Error> {
    serializer.serialize_f64(duration.as_secs_f64())
}

/// A whole run, what `--json` writes.
#[derive(Clone, Debug, Serialize)]
pub struct Report {
    pub target: &'static str,
    pub description: String,
    pub accounts: usize,
    pub initial_balance: i64,
    /// What every row's total must be.
    pub expected_total: i64,
    #[serde(rename = "duration_s", serialize_with = "seconds")]
    pub duration: Duration,
    #[serde(rename = "warmup_s", serialize_with = "seconds")]
    pub warmup: Duration,
    /// Committed transfers per row of a fixed-count run ([`Options::transfers`]).
    pub transfers: Option<u64>,
    pub seed: u64,
    pub rows: Vec<Row>,
    /// Whether Ctrl-C cut the run short (the rows cover what ran).
    pub interrupted: bool,
}

/// The total a row ended with was wrong: the database lost or made money.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error(
    "after {transaction} with {threads} threads the balances of {target} sum to {sum}, not \
     {expected}{}: the transfers were not atomic",
    negative.map(|b| format!(", and one is {b}")).unwrap_or_default()
)]
pub struct TotalError {
    pub target: &'static str,
    pub transaction: &'static str,
    pub threads: usize,
    pub sum: i64,
    pub expected: i64,
    pub negative: Option<i64>,
}

/// The header line of [`print_row`]'s table.
pub fn print_header(out: &mut dyn std::io::Write) -> std::io::Result<()> {
    writeln!(
        out,
        "{:<16} {:>7} {:>9} {:>12} {:>10} {:>10} {:>10} {:>10}",
        "transaction",
        "threads",
        "in flight",
        "committed/s",
        "aborted/s",
        "p50 µs",
        "p99 µs",
        "p99.9 µs"
    )
}

pub fn print_row(out: &mut dyn std::io::Write, row: &Row) -> std::io::Result<()> {
    writeln!(
        out,
        "{:<16} {:>7} {:>9} {:>12.0} {:>10.0} {:>10.1} {:>10.1} {:>10.1}",
        row.transaction,
        row.threads,
        row.threads * row.in_flight,
        row.committed_per_s,
        row.aborted_per_s,
        row.p50_us,
        row.p99_us,
        row.p999_us
    )
}

/// Creates the accounts, then measures every kind of `backend` at every thread count of
/// `options`, checking the total after each row; `on_row` hears of each row as it is measured.
/// A transfer that fails with an error other than an abort, or a wrong total, ends the run with
/// that error.
pub fn run(
    backend: &mut dyn Backend,
    options: &Options,
    mut on_row: impl FnMut(&Row) -> std::io::Result<()>,
) -> anyhow::Result<Report> {
    options.validate()?;
    backend
        .create(options.accounts, options.initial_balance)
        .context("create the accounts")?;
    let expected = options.initial_balance * options.accounts as i64;
    let mut report = Report {
        target: backend.name(),
        description: backend.describe(),
        accounts: options.accounts,
        initial_balance: options.initial_balance,
        expected_total: expected,
        duration: options.duration,
        warmup: options.warmup,
        transfers: options.transfers,
        seed: options.seed,
        rows: Vec::new(),
        interrupted: false,
    };
    let kinds = backend.kinds().into_iter().filter(|kind| {
        // A fixed-count run counts transfers only.
        options.transfers.is_none() || kind.work == Work::Transfer
    });
    for kind in kinds {
        for &threads in &options.threads {
            if options.terminated() {
                break;
            }
            let row = measure(&*backend, options, kind, threads)?;
            if row.total.sum != expected || row.total.negative.is_some() {
                return Err(TotalError {
                    target: backend.name(),
                    transaction: kind.name,
                    threads,
                    sum: row.total.sum,
                    expected,
                    negative: row.total.negative,
                }
                .into());
            }
            // A row cut short by Ctrl-C measured too little to report.
            if options.terminated() {
                break;
            }
            on_row(&row)?;
            report.rows.push(row);
        }
    }
    report.interrupted = options.terminated();
    Ok(report)
}

/// What one thread measured.
struct Tally {
    committed: u64,
    aborted: u64,
    latency_ns: Histogram<u64>,
}

fn measure(
    backend: &dyn Backend,
    options: &Options,
    kind: Kind,
    threads: usize,
) -> anyhow::Result<Row> {
    let in_flight = options.in_flight;
    let clients_total = threads * in_flight;
    // Every client connects before any thread starts, so a connection refused is reported
    // before anything is measured.
    let mut clients = (0..clients_total)
        .map(|c| {
            backend
                .client()
                .with_context(|| format!("connect client {c} of {clients_total}"))
        })
        .collect::<anyhow::Result<Vec<_>>>()?
        .into_iter();
    let stop = AtomicBool::new(false);
    // A fixed-count run has no warm-up: everything it runs is measured.
    let measuring = AtomicBool::new(options.transfers.is_some());
    // Client `c`'s share of a fixed-count row: the first `n % clients` clients run one more.
    let quota = |c: usize| {
        options.transfers.map(|n| {
            let clients = clients_total as u64;
            n / clients + u64::from((c as u64) < n % clients)
        })
    };
    let started = Instant::now();
    let (tallies, elapsed) = std::thread::scope(|scope| -> anyhow::Result<_> {
        let mut handles = Vec::with_capacity(threads);
        for t in 0..threads {
            let loops: Vec<ClientLoop> = (0..in_flight)
                .map(|i| {
                    let c = t * in_flight + i;
                    ClientLoop {
                        client: clients.next().expect("a client per task"),
                        seed: options.seed ^ ((c as u64 + 1) * 0x9e37),
                        quota: quota(c),
                        accounts: options.accounts as u64,
                        kind,
                    }
                })
                .collect();
            let (stop, measuring) = (&stop, &measuring);
            let spawned = std::thread::Builder::new()
                .name(format!("bank-{t}"))
                .spawn_scoped(scope, move || -> anyhow::Result<Vec<Tally>> {
                    if loops.len() == 1 {
                        let once = loops.into_iter().next().expect("one client");
                        return Ok(vec![once.run(options, stop, measuring)?]);
                    }
                    // The thread's clients as tasks that take turns where one waits.
                    let results = std::cell::RefCell::new(Vec::with_capacity(loops.len()));
                    let tasks = loops.into_iter().map(|client_loop| {
                        let results = &results;
                        Box::new(move || {
                            let tally = client_loop.run(options, stop, measuring);
                            if tally.is_err() {
                                // The thread's other clients stop too: the row failed.
                                stop.store(true, Ordering::Relaxed);
                            }
                            results.borrow_mut().push(tally);
                        }) as Box<dyn FnOnce()>
                    });
                    acre_engine::interleave::run(tasks);
                    results.into_inner().into_iter().collect()
                });
            match spawned {
                Ok(handle) => handles.push(handle),
                Err(error) => {
                    stop.store(true, Ordering::Relaxed);
                    return Err(anyhow::Error::new(error)
                        .context(format!("start thread {t} of {threads} (run fewer threads)")));
                }
            }
        }
        let sleep = |duration: Duration| match &options.termination {
            // Whether it was cut short does not matter: `terminated` is asked after the row.
            Some(termination) => {
                termination.sleep(duration);
            }
            None => std::thread::sleep(duration),
        };
        // A fixed-count row ends when its threads ran their quotas.
        let mut timed = None;
        if options.transfers.is_none() {
            sleep(options.warmup);
            measuring.store(true, Ordering::Relaxed);
            let start = Instant::now();
            sleep(options.duration);
            measuring.store(false, Ordering::Relaxed);
            timed = Some(start.elapsed());
            stop.store(true, Ordering::Relaxed);
        }
        let mut tallies = Vec::with_capacity(clients_total);
        let mut failed = None;
        for handle in handles {
            match handle.join().expect("bank threads do not panic") {
                Ok(tally) => tallies.extend(tally),
                Err(error) => {
                    failed.get_or_insert(error);
                }
            }
        }
        match failed {
            Some(error) => Err(error),
            None => Ok((tallies, timed.unwrap_or_else(|| started.elapsed()))),
        }
    })?;
    let mut latency_ns =
        Histogram::new(HISTOGRAM_SIGNIFICANT_DIGITS).expect("a valid histogram precision");
    let (mut committed, mut aborted) = (0, 0);
    for tally in tallies {
        committed += tally.committed;
        aborted += tally.aborted;
        latency_ns
            .add(&tally.latency_ns)
            .expect("auto-resizing histograms merge");
    }
    let total = backend
        .total()
        .with_context(|| format!("read the total after {} with {threads} threads", kind.name))?;
    let seconds = elapsed.as_secs_f64();
    let micros = |nanoseconds: u64| nanoseconds as f64 / 1e3;
    Ok(Row {
        transaction: kind.name,
        threads,
        in_flight,
        elapsed,
        committed,
        aborted,
        committed_per_s: committed as f64 / seconds,
        aborted_per_s: aborted as f64 / seconds,
        mean_us: if latency_ns.is_empty() {
            0.0
        } else {
            latency_ns.mean() / 1e3
        },
        p50_us: micros(latency_ns.value_at_quantile(0.5)),
        p99_us: micros(latency_ns.value_at_quantile(0.99)),
        p999_us: micros(latency_ns.value_at_quantile(0.999)),
        max_us: micros(latency_ns.max()),
        total,
    })
}

/// One client's part of a row: its transactions, drawn from its own seed, until the row
/// stops or (in a fixed-count row) its quota committed.
struct ClientLoop {
    client: Box<dyn Client>,
    seed: u64,
    quota: Option<u64>,
    accounts: u64,
    kind: Kind,
}

impl ClientLoop {
    fn run(
        mut self,
        options: &Options,
        stop: &AtomicBool,
        measuring: &AtomicBool,
    ) -> anyhow::Result<Tally> {
        let (kind, accounts, quota) = (self.kind, self.accounts, self.quota);
        let mut random = SplitMix::new(self.seed);
        let mut tally = Tally {
            committed: 0,
            aborted: 0,
            latency_ns: Histogram::new(HISTOGRAM_SIGNIFICANT_DIGITS)
                .expect("a valid histogram precision"),
        };
        while !stop.load(Ordering::Relaxed) && quota.is_none_or(|quota| tally.committed < quota) {
            // A timed row is ended by the main thread, a fixed-count one here.
            if quota.is_some() && options.terminated() {
                break;
            }
            let began = Instant::now();
            let (attempts, committed) = match kind.work {
                Work::Transfer => {
                    // Drawn as `Bank::run` draws them: from, to, amount.
                    let from = random.below(accounts) as usize;
                    let to = random.below(accounts) as usize;
                    if from == to {
                        continue;
                    }
                    let amount = 1 + random.below(10) as i64;
                    attempt(stop, || self.client.transfer(kind, from, to, amount))?
                }
                Work::Read4 => {
                    let accounts = std::array::from_fn(|_| random.below(accounts) as usize);
                    attempt(stop, || self.client.read(kind, accounts))?
                }
            };
            if measuring.load(Ordering::Relaxed) {
                tally.aborted += u64::from(attempts - u32::from(committed));
                if committed {
                    tally.committed += 1;
                    let nanoseconds = u64::try_from(began.elapsed().as_nanos()).unwrap_or(u64::MAX);
                    // `record` grows the histogram to fit, as the YCSB driver's stats do;
                    // clamping is the fallback if it cannot.
                    if tally.latency_ns.record(nanoseconds.max(1)).is_err() {
                        tally.latency_ns.saturating_record(nanoseconds);
                    }
                }
            }
        }
        Ok(tally)
    }
}

/// Attempts `once` until it commits, waiting between attempts as `Db::run` does, for at most
/// [`ATTEMPTS_MAX`] attempts or until `stop`: the attempts made and whether the last committed.
fn attempt(
    stop: &AtomicBool,
    mut once: impl FnMut() -> anyhow::Result<Attempt>,
) -> anyhow::Result<(u32, bool)> {
    let mut backoff: Option<Backoff> = None;
    for attempts in 1..=ATTEMPTS_MAX {
        match once()? {
            Attempt::Committed => return Ok((attempts, true)),
            Attempt::Aborted if stop.load(Ordering::Relaxed) => return Ok((attempts, false)),
            Attempt::Aborted => backoff
                .get_or_insert_with(|| Backoff::retry(BACKOFF_FIRST, BACKOFF_MAX))
                .wait(),
        }
    }
    anyhow::bail!("{ATTEMPTS_MAX} attempts of one transaction aborted: the database refuses it")
}

/// Writes `report` as pretty JSON to `path`.
pub fn write_json(path: &std::path::Path, report: &Report) -> anyhow::Result<()> {
    let file = std::fs::File::create(path).with_context(|| format!("create {}", path.display()))?;
    let mut writer = std::io::BufWriter::new(file);
    serde_json::to_writer_pretty(&mut writer, report).context("encode the report")?;
    std::io::Write::write_all(&mut writer, b"\n")?;
    std::io::Write::flush(&mut writer).with_context(|| format!("write {}", path.display()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Mutex;

    /// An in-memory bank behind one lock, whose every third transfer attempt aborts first.
    #[derive(Default)]
    struct Memory {
        balances: Arc<Mutex<Vec<i64>>>,
    }

    struct MemoryClient {
        balances: Arc<Mutex<Vec<i64>>>,
        attempts: u64,
    }

    impl Backend for Memory {
        fn name(&self) -> &'static str {
            "memory"
        }
        fn describe(&self) -> String {
            "a vector".into()
        }
        fn kinds(&self) -> Vec<Kind> {
            vec![Kind {
                name: "transfer",
                work: Work::Transfer,
            }]
        }
        fn create(&mut self, count: usize, initial_balance: i64) -> anyhow::Result<()> {
            *self.balances.lock().unwrap() = vec![initial_balance; count];
            Ok(())
        }
        fn client(&self) -> anyhow::Result<Box<dyn Client>> {
            Ok(Box::new(MemoryClient {
                balances: self.balances.clone(),
                attempts: 0,
            }))
        }
        fn total(&self) -> anyhow::Result<Total> {
            let balances = self.balances.lock().unwrap();
            Ok(Total {
                sum: balances.iter().sum(),
                negative: balances.iter().copied().find(|&b| b < 0),
            })
        }
    }

    impl Client for MemoryClient {
        fn transfer(
            &mut self,
            _: Kind,
            from: usize,
            to: usize,
            amount: i64,
        ) -> anyhow::Result<Attempt> {
            self.attempts += 1;
            if self.attempts.is_multiple_of(3) {
                return Ok(Attempt::Aborted);
            }
            let mut balances = self.balances.lock().unwrap();
            let moved = amount.min(balances[from]).max(0);
            balances[from] -= moved;
            balances[to] += moved;
            Ok(Attempt::Committed)
        }
        fn read(&mut self, _: Kind, _: [usize; 4]) -> anyhow::Result<Attempt> {
            Ok(Attempt::Committed)
        }
    }

    fn options() -> Options {
        Options {
            accounts: 16,
            initial_balance: 5,
            threads: vec![1, 3],
            duration: Duration::from_millis(200),
            warmup: Duration::from_millis(20),
            transfers: None,
            in_flight: 1,
            seed: 7,
            termination: None,
        }
    }

    /// A fixed-count run: each row commits exactly the transfers asked for, split among its
    /// threads, aborted attempts aside, and the read-only kinds are left out.
    #[test]
    fn a_fixed_count_run_commits_exactly_that_many_transfers() {
        struct WithReads(Memory);
        impl Backend for WithReads {
            fn name(&self) -> &'static str {
                "with reads"
            }
            fn describe(&self) -> String {
                String::new()
            }
            fn kinds(&self) -> Vec<Kind> {
                let mut kinds = self.0.kinds();
                kinds.push(Kind {
                    name: "read-only 4",
                    work: Work::Read4,
                });
                kinds
            }
            fn create(&mut self, count: usize, initial_balance: i64) -> anyhow::Result<()> {
                self.0.create(count, initial_balance)
            }
            fn client(&self) -> anyhow::Result<Box<dyn Client>> {
                self.0.client()
            }
            fn total(&self) -> anyhow::Result<Total> {
                self.0.total()
            }
        }
        let options = Options {
            transfers: Some(1001),
            // Not used by a fixed-count run.
            duration: Duration::ZERO,
            warmup: Duration::from_secs(3600),
            ..options()
        };
        let report = run(&mut WithReads(Memory::default()), &options, |_| Ok(())).expect("run");
        let rows: Vec<_> = report
            .rows
            .iter()
            .map(|row| (row.transaction, row.threads, row.committed))
            .collect();
        assert_eq!(rows, [("transfer", 1, 1001), ("transfer", 3, 1001)]);
        for row in &report.rows {
            // Every third attempt aborts and is retried.
            assert!(row.aborted >= 1001 / 3, "{row:?}");
            assert_eq!(row.total.sum, 80, "{row:?}");
        }
        let json = serde_json::to_value(&report).expect("json");
        assert_eq!(json["transfers"], 1001);
        let zero = Options {
            transfers: Some(0),
            ..options
        };
        let error = run(&mut Memory::default(), &zero, |_| Ok(())).expect_err("zero transfers");
        assert!(error.to_string().contains("--transfers"), "{error}");
    }

    /// Several clients on each thread split a fixed-count row between them as threads do.
    #[test]
    fn clients_in_flight_on_a_thread_share_its_work() {
        let options = Options {
            transfers: Some(1001),
            in_flight: 4,
            ..options()
        };
        let report = run(&mut Memory::default(), &options, |_| Ok(())).expect("run");
        let rows: Vec<_> = report
            .rows
            .iter()
            .map(|row| (row.threads, row.in_flight, row.committed, row.total.sum))
            .collect();
        assert_eq!(rows, [(1, 4, 1001, 80), (3, 4, 1001, 80)]);
        for in_flight in [0, IN_FLIGHT_MAX + 1] {
            let bad = Options {
                in_flight,
                ..options.clone()
            };
            let error = run(&mut Memory::default(), &bad, |_| Ok(())).expect_err("refused");
            assert!(error.to_string().contains("--in-flight"), "{error}");
        }
    }

    #[test]
    fn a_run_measures_every_thread_count_and_checks_the_total() {
        let mut rows_seen = 0;
        let report = run(&mut Memory::default(), &options(), |_| {
            rows_seen += 1;
            Ok(())
        })
        .expect("run");
        assert_eq!(rows_seen, 2);
        assert_eq!(report.expected_total, 80);
        for row in &report.rows {
            assert!(row.committed > 0, "{row:?}");
            // Every third attempt aborts and is retried.
            assert!(row.aborted > 0 && row.aborted <= row.committed, "{row:?}");
            assert_eq!(row.total.sum, 80, "{row:?}");
            assert!(
                row.p50_us <= row.p99_us && row.p99_us <= row.max_us,
                "{row:?}"
            );
        }
        let json = serde_json::to_value(&report).expect("json");
        assert_eq!(json["rows"][1]["threads"], 3);
        assert!(json["rows"][0]["p999_us"].is_number());
    }

    #[test]
    fn a_wrong_total_ends_the_run() {
        struct Leaky(Memory);
        impl Backend for Leaky {
            fn name(&self) -> &'static str {
                "leaky"
            }
            fn describe(&self) -> String {
                String::new()
            }
            fn kinds(&self) -> Vec<Kind> {
                self.0.kinds()
            }
            fn create(&mut self, count: usize, initial_balance: i64) -> anyhow::Result<()> {
                self.0.create(count, initial_balance)
            }
            fn client(&self) -> anyhow::Result<Box<dyn Client>> {
                self.0.client()
            }
            fn total(&self) -> anyhow::Result<Total> {
                let total = self.0.total()?;
                Ok(Total {
                    sum: total.sum - 1,
                    ..total
                })
            }
        }
        let error =
            run(&mut Leaky(Memory::default()), &options(), |_| Ok(())).expect_err("a wrong total");
        assert!(error.to_string().contains("sum to 79, not 80"), "{error}");
    }

    #[test]
    fn bad_options_are_refused_before_anything_runs() {
        for (change, what) in [
            (
                Box::new(|o: &mut Options| o.threads = vec![1, 0]) as Box<dyn Fn(&mut Options)>,
                "positive",
            ),
            (
                Box::new(|o: &mut Options| o.threads = vec![100_000]),
                "too many",
            ),
            (Box::new(|o: &mut Options| o.accounts = 2), "out of range"),
            (
                Box::new(|o: &mut Options| o.duration = Duration::ZERO),
                "at least 1",
            ),
        ] {
            let mut options = options();
            change(&mut options);
            let error = run(&mut Memory::default(), &options, |_| Ok(())).expect_err(what);
            assert!(error.to_string().contains(what), "{error}");
        }
    }
}
