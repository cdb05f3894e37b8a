//! The bank workload: accounts holding balances, transfers between random pairs, and
//! read-only audits that sum every balance. The total never changes and no balance goes
//! negative in a serializable history; `acre demo`, `acre bank` and the tests run it.
//!
//! The accounts are listed in a *directory object* (`count u64 | initial balance i64 | addr u64
//! ...`) so that
//! processes other than the one that created them can find them from one address.
//!
//! A run keeps going through failures (a node that dies or pauses makes transactions fail with
//! `Unavailable` or `Indeterminate`): it counts them by kind in its report, next to what
//! completed, and tells its caller as they happen ([`Notice`]): the first failure of a kind at
//! once, then at most one notice per kind every [`NOTICE_INTERVAL`], and a stall when no
//! transfer has committed for [`STALL_AFTER`].

use acre_engine::signal::Termination;
use acre_replication::db::{Addr, CommitError, Db, Error, IndexError, NodeId, Txn, TxnError};
use acre_txn::backoff::Backoff;
use acre_txn::retry::{BACKOFF_FIRST, BACKOFF_MAX};
use std::collections::HashMap;
use std::fmt;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// Accounts created per setup transaction.
const SETUP_BATCH: usize = 32;
/// The most accounts one directory object lists (it is one object of at most 64 KiB).
pub const ACCOUNTS_MAX: usize = 8000;
/// The most threads (transfers and audits together) one run starts: far more than the cores
/// of any machine this runs on, few enough that their stacks fit in memory.
pub const THREADS_MAX: usize = 1024;
/// After the first notice of a kind of failure, at most one more per kind this often.
pub const NOTICE_INTERVAL: Duration = Duration::from_secs(5);
/// A run in which no transfer commits for this long says so (and again every this long): a
/// transaction that fails is reported on its own, one that keeps aborting is not.
pub const STALL_AFTER: Duration = Duration::from_secs(5);
/// How long a thread waits after a failure before its next transaction, so that a failure
/// that comes at once (a malformed bank, a protocol error) does not spin a core.
const FAILURE_PAUSE: Duration = Duration::from_millis(10);

const POISONED: &str = "a bank thread panicked while holding this lock";

/// What a bank run does: threads of transfers and of audits, for how long, from which seed.
#[derive(Clone, Copy, Debug)]
pub struct RunPlan {
    pub transfer_threads: usize,
    pub audit_threads: usize,
    pub duration: Duration,
    /// Seed of the transfer generator (each thread derives its own).
    pub seed: u64,
}

/// Why a bank run could not start.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum BankError {
    #[error("{threads} threads are too many: a bank run starts at most {max}")]
    TooManyThreads { threads: usize, max: usize },
    #[error("cannot start thread {index} of {threads}: {source}; run fewer threads")]
    Spawn {
        index: usize,
        threads: usize,
        #[source]
        source: std::io::Error,
    },
}

/// The accounts of one bank.
#[derive(Clone, Debug)]
pub struct Bank {
    pub directory: Addr,
    pub accounts: Vec<Addr>,
    pub initial_balance: i64,
}

/// What one run measured and checked.
#[derive(Debug, Default)]
pub struct BankReport {
    pub elapsed: Duration,
    pub committed: u64,
    /// Transfers that aborted with an error a retry may fix (conflicts, a full log, no free
    /// transaction slot).
    pub aborted: u64,
    /// Latency of each committed transfer, begin to commit.
    pub commit_latencies: Vec<Duration>,
    pub audits_committed: u64,
    pub audits_aborted: u64,
    /// Audit failures: a committed audit that saw a wrong total or a negative balance.
    pub violations: Vec<String>,
    /// Transactions that failed with an error a retry does not fix, by kind, in the order the
    /// kinds first happened.
    pub failures: Vec<FailureCount>,
}

/// The transactions of a run that failed with one kind of error.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FailureCount {
    /// [`failure_kind`] of the errors.
    pub kind: &'static str,
    pub count: u64,
    /// One such error (the first a thread saw).
    pub first: String,
}

impl BankReport {
    pub fn merge(&mut self, other: BankReport) {
        self.committed += other.committed;
        self.aborted += other.aborted;
        self.commit_latencies.extend(other.commit_latencies);
        self.audits_committed += other.audits_committed;
        self.audits_aborted += other.audits_aborted;
        self.violations.extend(other.violations);
        for failure in other.failures {
            match self.failures.iter_mut().find(|f| f.kind == failure.kind) {
                Some(known) => known.count += failure.count,
                None => self.failures.push(failure),
            }
        }
    }

    /// Transactions that failed, of every kind.
    pub fn failure_count(&self) -> u64 {
        self.failures.iter().map(|f| f.count).sum()
    }

    /// The `q`-quantile (0..=1) of the commit latencies.
    pub fn latency_quantile(&mut self, q: f64) -> Duration {
        quantile(&mut self.commit_latencies, q)
    }
}

/// A short name for the kind of a failure a retry does not fix: what a report counts by.
pub fn failure_kind(error: &Error) -> &'static str {
    match error {
        Error::Commit(CommitError::Indeterminate { .. }) => "indeterminate",
        Error::Commit(CommitError::Unavailable { .. })
        | Error::Txn(TxnError::Unavailable { .. })
        | Error::Index(IndexError::Txn(TxnError::Unavailable { .. })) => "unavailable",
        Error::Commit(CommitError::RegionUnavailable { .. })
        | Error::Txn(TxnError::RegionUnavailable { .. })
        | Error::Index(IndexError::Txn(TxnError::RegionUnavailable { .. })) => "region unavailable",
        Error::Commit(CommitError::Protocol { .. })
        | Error::Txn(TxnError::Protocol { .. })
        | Error::Index(IndexError::Txn(TxnError::Protocol { .. })) => "protocol violation",
        Error::Txn(TxnError::NotFound { .. }) => "no object",
        Error::Commit(CommitError::TxnTooLarge { .. })
        | Error::Txn(TxnError::TxnTooLarge { .. }) => "too large",
        _ => "other",
    }
}

/// What a run tells its caller while it runs.
#[derive(Debug)]
pub enum Notice<'a> {
    /// A transaction failed with an error a retry does not fix: the first of its kind, or the
    /// first after [`NOTICE_INTERVAL`] of more.
    Failure {
        /// `"transfer"` or `"audit"`.
        what: &'static str,
        kind: &'static str,
        error: &'a Error,
        /// Failures of this kind so far, this one included.
        count: u64,
        /// Since the run started.
        at: Duration,
    },
    /// No transfer has committed for `quiet`; transfers keep aborting, the last with `error`.
    Stalled {
        quiet: Duration,
        error: &'a Error,
        at: Duration,
    },
}

impl fmt::Display for Notice<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Notice::Failure {
                what,
                kind,
                error,
                count,
                at,
            } => {
                let article = if what.starts_with(['a', 'e', 'i', 'o', 'u']) {
                    "an"
                } else {
                    "a"
                };
                let at = at.as_secs_f64();
                match count {
                    1 => write!(
                        f,
                        "at {at:.1} s {article} {what} failed ({kind}, the first such failure): \
                         {error}"
                    ),
                    count => write!(
                        f,
                        "at {at:.1} s {count} failures ({kind}) so far, the latest of {article} \
                         {what}: {error}"
                    ),
                }
            }
            Notice::Stalled { quiet, error, at } => write!(
                f,
                "at {:.1} s no transfer has committed for {:.1} s; the last abort: {error}",
                at.as_secs_f64(),
                quiet.as_secs_f64()
            ),
        }
    }
}

/// What every thread of a run shares to decide when to tell the caller: failures by kind,
/// and when a transfer last committed.
struct Watch {
    start: Instant,
    notify: Box<dyn Fn(&Notice<'_>) + Send + Sync>,
    state: Mutex<WatchState>,
}

struct WatchState {
    /// Per kind: failures so far and when the last notice of it went out.
    kinds: HashMap<&'static str, (u64, Instant)>,
    last_commit: Instant,
    last_stall_notice: Option<Instant>,
}

impl Watch {
    fn new(notify: Box<dyn Fn(&Notice<'_>) + Send + Sync>) -> Watch {
        let start = Instant::now();
        Watch {
            start,
            notify,
            state: Mutex::new(WatchState {
                kinds: HashMap::new(),
                last_commit: start,
                last_stall_notice: None,
            }),
        }
    }

    fn committed(&self) {
        self.state.lock().expect(POISONED).last_commit = Instant::now();
    }

    fn failed(&self, what: &'static str, kind: &'static str, error: &Error) {
        let now = Instant::now();
        let count = {
            let mut state = self.state.lock().expect(POISONED);
            match state.kinds.get_mut(kind) {
                None => {
                    state.kinds.insert(kind, (1, now));
                    Some(1)
                }
                Some((count, noticed)) => {
                    *count += 1;
                    (now.duration_since(*noticed) >= NOTICE_INTERVAL).then(|| {
                        *noticed = now;
                        *count
                    })
                }
            }
        };
        if let Some(count) = count {
            (self.notify)(&Notice::Failure {
                what,
                kind,
                error,
                count,
                at: now.duration_since(self.start),
            });
        }
    }

    fn aborted(&self, error: &Error) {
        let now = Instant::now();
        let quiet = {
            let mut state = self.state.lock().expect(POISONED);
            let quiet = now.duration_since(state.last_commit);
            let due = quiet >= STALL_AFTER
                && state
                    .last_stall_notice
                    .is_none_or(|noticed| now.duration_since(noticed) >= STALL_AFTER);
            if !due {
                return;
            }
            state.last_stall_notice = Some(now);
            quiet
        };
        (self.notify)(&Notice::Stalled {
            quiet,
            error,
            at: now.duration_since(self.start),
        });
    }
}

/// One thread's failure of `kind`: counted in its report (the first message kept).
fn count_failure(report: &mut BankReport, kind: &'static str, error: &Error) {
    match report.failures.iter_mut().find(|f| f.kind == kind) {
        Some(known) => known.count += 1,
        None => report.failures.push(FailureCount {
            kind,
            count: 1,
            first: error.to_string(),
        }),
    }
}

/// The `q`-quantile (0..=1) of `samples` (sorted in place); zero when empty.
pub fn quantile(samples: &mut [Duration], q: f64) -> Duration {
    if samples.is_empty() {
        return Duration::ZERO;
    }
    samples.sort_unstable();
    let index = ((samples.len() - 1) as f64 * q).round() as usize;
    samples[index]
}

fn balance(bytes: &[u8], addr: Addr) -> Result<i64, TxnError> {
    bytes
        .try_into()
        .map(i64::from_le_bytes)
        .map_err(|_| TxnError::Protocol {
            node: NodeId(0),
            reason: format!("account {addr} holds {} bytes, not 8", bytes.len()),
        })
}

impl Bank {
    /// Creates `count` accounts of `initial_balance` each and their directory object.
    pub fn create(db: &Db, count: usize, initial_balance: i64) -> Result<Bank, Error> {
        if count > ACCOUNTS_MAX {
            return Err(Error::Txn(TxnError::TxnTooLarge {
                reason: format!("a bank holds at most {ACCOUNTS_MAX} accounts, not {count}"),
            }));
        }
        let mut accounts = Vec::with_capacity(count);
        while accounts.len() < count {
            let batch = SETUP_BATCH.min(count - accounts.len());
            let created = db.run(|txn| {
                (0..batch)
                    .map(|_| {
                        let addr = txn.alloc(8)?;
                        txn.write(addr, &initial_balance.to_le_bytes())?;
                        Ok(addr)
                    })
                    .collect::<Result<Vec<Addr>, Error>>()
            })?;
            accounts.extend(created);
        }
        let mut listing = (count as u64).to_le_bytes().to_vec();
        listing.extend_from_slice(&initial_balance.to_le_bytes());
        for addr in &accounts {
            listing.extend_from_slice(&addr.to_u64().to_le_bytes());
        }
        let directory = db.run(|txn| {
            let directory = txn.alloc(listing.len())?;
            txn.write(directory, &listing)?;
            Ok(directory)
        })?;
        Ok(Bank {
            directory,
            accounts,
            initial_balance,
        })
    }

    /// Opens the bank whose directory object is at `directory`.
    pub fn open(db: &Db, directory: Addr) -> Result<Bank, TxnError> {
        let listing = db.read(directory)?;
        let malformed = |reason: String| TxnError::Protocol {
            node: NodeId(0),
            reason: format!("bank directory {directory}: {reason}"),
        };
        let (count, rest) = listing
            .split_first_chunk::<8>()
            .ok_or_else(|| malformed("shorter than its count".into()))?;
        let (initial_balance, rest) = rest
            .split_first_chunk::<8>()
            .ok_or_else(|| malformed("shorter than its initial balance".into()))?;
        let count = u64::from_le_bytes(*count) as usize;
        let initial_balance = i64::from_le_bytes(*initial_balance);
        if rest.len() != count * 8 || count == 0 {
            return Err(malformed(format!("count {count} but {} bytes", rest.len())));
        }
        let accounts: Vec<Addr> = rest
            .chunks_exact(8)
            .map(|c| Addr::from_u64(u64::from_le_bytes(c.try_into().expect("8 bytes"))))
            .collect();
        Ok(Bank {
            directory,
            accounts,
            initial_balance,
        })
    }

    /// The total every audit must see.
    pub fn expected_total(&self) -> i64 {
        self.initial_balance * self.accounts.len() as i64
    }

    /// One transfer attempt of up to `amount` from `from` to `to` (less if `from` has less).
    pub fn transfer(db: &Db, from: Addr, to: Addr, amount: i64) -> Result<(), Error> {
        let mut txn = db.begin()?;
        let a = balance(&txn.read(from)?, from)?;
        let b = balance(&txn.read(to)?, to)?;
        let moved = amount.min(a).max(0);
        txn.write(from, &(a - moved).to_le_bytes())?;
        txn.write(to, &(b + moved).to_le_bytes())?;
        Ok(txn.commit()?)
    }

    /// The sum of all balances as `txn` reads them, and the first negative balance. The
    /// accounts are read with one batch per node ([`Txn::read_many`]), so an audit spends one
    /// round trip reading, which keeps its window for conflicts with transfers short.
    pub fn total(&self, txn: &mut Txn) -> Result<(i64, Option<(Addr, i64)>), Error> {
        let values = txn.read_many(&self.accounts)?;
        let mut total = 0i64;
        let mut negative = None;
        for (&addr, bytes) in self.accounts.iter().zip(&values) {
            let b = balance(bytes, addr)?;
            if b < 0 && negative.is_none() {
                negative = Some((addr, b));
            }
            total += b;
        }
        Ok((total, negative))
    }

    /// One read-only audit: the sum of all balances, or why it is wrong. `Err` is a
    /// transaction error (a conflict: the audit is retried by the caller).
    pub fn audit(&self, db: &Db) -> Result<Result<i64, String>, Error> {
        let mut txn = db.begin()?;
        let (total, negative) = self.total(&mut txn)?;
        txn.commit()?;
        if let Some((addr, b)) = negative {
            return Ok(Err(format!("account {addr} has a negative balance {b}")));
        }
        if total != self.expected_total() {
            return Ok(Err(format!(
                "total {total}, expected {}",
                self.expected_total()
            )));
        }
        Ok(Ok(total))
    }

    /// Runs the threads of `plan` (at most [`THREADS_MAX`] together) for its duration, or
    /// until `termination` is requested (Ctrl-C): then every thread finishes the transaction it
    /// is in and the run reports what it measured so far. A transaction that fails with an
    /// error a retry does not fix is counted in the report's `failures` and its thread goes on;
    /// `notify` hears of failures and stalls as they happen (from the run's threads, see
    /// [`Notice`]).
    pub fn run(
        &self,
        db: &Db,
        plan: RunPlan,
        termination: &Termination,
        notify: impl Fn(&Notice<'_>) + Send + Sync + 'static,
    ) -> Result<BankReport, BankError> {
        let committed = Arc::new(AtomicU64::new(0));
        self.run_counting(db, plan, termination, &committed, notify)
    }

    /// [`Bank::run`], adding one to `committed` at every committed transfer as it happens, so
    /// that another thread can sample the throughput while the run goes on (`acre demo
    /// --failure` draws it around a kill).
    pub fn run_counting(
        &self,
        db: &Db,
        plan: RunPlan,
        termination: &Termination,
        committed: &Arc<AtomicU64>,
        notify: impl Fn(&Notice<'_>) + Send + Sync + 'static,
    ) -> Result<BankReport, BankError> {
        let RunPlan {
            transfer_threads,
            audit_threads,
            duration,
            seed,
        } = plan;
        let threads = transfer_threads.saturating_add(audit_threads);
        if threads > THREADS_MAX {
            return Err(BankError::TooManyThreads {
                threads,
                max: THREADS_MAX,
            });
        }
        let stop = Arc::new(AtomicBool::new(false));
        let watch = Arc::new(Watch::new(Box::new(notify)));
        let start = watch.start;
        let mut handles = Vec::new();
        for t in 0..threads {
            let (db, bank, stopped, watch, counter) = (
                db.clone(),
                self.clone(),
                stop.clone(),
                watch.clone(),
                committed.clone(),
            );
            let audit = t >= transfer_threads;
            let spawned = std::thread::Builder::new()
                .name(format!("bank-{t}"))
                .spawn(move || {
                    let mut random =
                        acre_nvm_log::random::SplitMix::new(seed ^ ((t as u64 + 1) * 0x9e37));
                    let mut report = BankReport::default();
                    // After an abort, wait as `Db::run` would before the next attempt: a full
                    // log or busy slots do not clear faster for being asked a million times a
                    // second. Reset by a commit.
                    let mut backoff: Option<Backoff> = None;
                    let wait = |backoff: &mut Option<Backoff>| {
                        backoff
                            .get_or_insert_with(|| Backoff::retry(BACKOFF_FIRST, BACKOFF_MAX))
                            .wait();
                    };
                    let fail = |report: &mut BankReport, what, error: &Error| {
                        let kind = failure_kind(error);
                        count_failure(report, kind, error);
                        watch.failed(what, kind, error);
                        std::thread::sleep(FAILURE_PAUSE);
                    };
                    while !stopped.load(Ordering::Relaxed) {
                        if audit {
                            match bank.audit(&db) {
                                Ok(Ok(_)) => {
                                    backoff = None;
                                    report.audits_committed += 1;
                                }
                                Ok(Err(violation)) => {
                                    backoff = None;
                                    report.audits_committed += 1;
                                    report.violations.push(violation);
                                }
                                Err(e) if db.is_transient(&e) => {
                                    report.audits_aborted += 1;
                                    wait(&mut backoff);
                                }
                                Err(e) => fail(&mut report, "audit", &e),
                            }
                            continue;
                        }
                        let n = bank.accounts.len() as u64;
                        let from = bank.accounts[random.below(n) as usize];
                        let to = bank.accounts[random.below(n) as usize];
                        if from == to {
                            continue;
                        }
                        let amount = 1 + random.below(10) as i64;
                        let began = Instant::now();
                        match Bank::transfer(&db, from, to, amount) {
                            Ok(()) => {
                                backoff = None;
                                report.committed += 1;
                                report.commit_latencies.push(began.elapsed());
                                counter.fetch_add(1, Ordering::Relaxed);
                                watch.committed();
                            }
                            Err(e) if db.is_transient(&e) => {
                                report.aborted += 1;
                                watch.aborted(&e);
                                wait(&mut backoff);
                            }
                            Err(e) => fail(&mut report, "transfer", &e),
                        }
                    }
                    report
                });
            match spawned {
                Ok(handle) => handles.push(handle),
                Err(source) => {
                    stop.store(true, Ordering::Relaxed);
                    for handle in handles {
                        // Their outcome no longer matters: the run did not start.
                        let _ = handle.join().expect("bank threads do not panic");
                    }
                    return Err(BankError::Spawn {
                        index: t,
                        threads,
                        source,
                    });
                }
            }
        }
        termination.sleep(duration);
        stop.store(true, Ordering::Relaxed);
        let mut total = BankReport::default();
        for handle in handles {
            total.merge(handle.join().expect("bank threads do not panic"));
        }
        total.elapsed = start.elapsed();
        Ok(total)
    }
}
