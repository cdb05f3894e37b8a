//! The bank workload: accounts holding balances, transfers between random pairs, and
//! read-only audits that sum every balance. The total never changes and no balance goes
//! negative in a serializable history; `acre demo`, `acre bank` and the tests run it.
//!
//! The accounts are listed in a *directory object* (`count u64 | initial balance i64 | addr u64
//! ...`) so that
//! processes other than the one that created them can find them from one address.

use acre_engine::signal::Termination;
use acre_replication::db::{Addr, Db, Error, NodeId, TxnError};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

/// Accounts created per setup transaction.
const SETUP_BATCH: usize = 32;
/// The most accounts one directory object lists (it is one object of at most 64 KiB).
pub const ACCOUNTS_MAX: usize = 8000;
/// The most threads (transfers and audits together) one run starts: far more than the cores
/// of any machine this runs on, few enough that their stacks fit in memory.
pub const THREADS_MAX: usize = 1024;

/// Why a bank run stopped.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum BankError {
    /// A transaction failed in a way a retry does not fix.
    #[error(transparent)]
    Txn(#[from] Error),
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
    pub aborted: u64,
    /// Latency of each committed transfer, begin to commit.
    pub commit_latencies: Vec<Duration>,
    pub audits_committed: u64,
    pub audits_aborted: u64,
    /// Audit failures: a committed audit that saw a wrong total or a negative balance.
    pub violations: Vec<String>,
}

impl BankReport {
    pub fn merge(&mut self, other: BankReport) {
        self.committed += other.committed;
        self.aborted += other.aborted;
        self.commit_latencies.extend(other.commit_latencies);
        self.audits_committed += other.audits_committed;
        self.audits_aborted += other.audits_aborted;
        self.violations.extend(other.violations);
    }

    /// The `q`-quantile (0..=1) of the commit latencies.
    pub fn latency_quantile(&mut self, q: f64) -> Duration {
        quantile(&mut self.commit_latencies, q)
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

    /// One read-only audit: the sum of all balances, or why it is wrong. `Err` is a
    /// transaction error (a conflict: the audit is retried by the caller).
    pub fn audit(&self, db: &Db) -> Result<Result<i64, String>, Error> {
        let mut txn = db.begin()?;
        let mut total = 0i64;
        let mut negative = None;
        for &addr in &self.accounts {
            let b = balance(&txn.read(addr)?, addr)?;
            if b < 0 && negative.is_none() {
                negative = Some((addr, b));
            }
            total += b;
        }
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

    /// Runs `transfer_threads` threads of transfers and `audit_threads` threads of audits for
    /// `duration` (at most [`THREADS_MAX`] together), or until `termination` is requested
    /// (Ctrl-C): then every thread finishes the transaction it is in and the run reports what
    /// it measured so far. Non-retryable errors end the run with that error.
    pub fn run(
        &self,
        db: &Db,
        transfer_threads: usize,
        audit_threads: usize,
        duration: Duration,
        seed: u64,
        termination: &Termination,
    ) -> Result<BankReport, BankError> {
        let threads = transfer_threads.saturating_add(audit_threads);
        if threads > THREADS_MAX {
            return Err(BankError::TooManyThreads {
                threads,
                max: THREADS_MAX,
            });
        }
        let stop = Arc::new(AtomicBool::new(false));
        let start = Instant::now();
        let mut handles = Vec::new();
        for t in 0..threads {
            let (db, bank, stopped) = (db.clone(), self.clone(), stop.clone());
            let audit = t >= transfer_threads;
            let spawned = std::thread::Builder::new()
                .name(format!("bank-{t}"))
                .spawn(move || {
                    let mut random =
                        acre_nvm_log::random::SplitMix::new(seed ^ ((t as u64 + 1) * 0x9e37));
                    let mut report = BankReport::default();
                    while !stopped.load(Ordering::Relaxed) {
                        if audit {
                            match bank.audit(&db) {
                                Ok(Ok(_)) => report.audits_committed += 1,
                                Ok(Err(violation)) => {
                                    report.audits_committed += 1;
                                    report.violations.push(violation);
                                }
                                Err(e) if e.is_retryable() => report.audits_aborted += 1,
                                Err(e) => return Err(e),
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
                                report.committed += 1;
                                report.commit_latencies.push(began.elapsed());
                            }
                            Err(e) if e.is_retryable() => report.aborted += 1,
                            Err(e) => return Err(e),
                        }
                    }
                    Ok(report)
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
        let mut failure = None;
        for handle in handles {
            match handle.join().expect("bank threads do not panic") {
                Ok(report) => total.merge(report),
                Err(e) => failure = Some(e),
            }
        }
        total.elapsed = start.elapsed();
        match failure {
            Some(e) => Err(e.into()),
            None => Ok(total),
        }
    }
}
