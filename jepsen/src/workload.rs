//! The workloads: what the client workers ask of the cluster, and how each attempt ends.
//!
//! Every operation is one Acre transaction, run once (never retried inside: a retry is a new
//! operation in the history). How it ends:
//! - the commit succeeded: `ok`, with what its reads returned;
//! - it failed with an error that says nothing committed (a conflict, an unreachable
//!   participant before anything was durable, a reconfiguration, a region being recovered, an
//!   error while it executed): `fail`;
//! - the commit's outcome is unknown (`CommitError::Indeterminate`): the worker asks the
//!   cluster what became of it (`Db::outcome`) for a few seconds; committed is `ok` (with the
//!   values its reads returned, which the commit validated), aborted is `fail`, and anything
//!   else is `info`.
//!
//! The objects are allocated before the clients start, in transactions of their own, and
//! named by their index (an account, a key) in the history.

use crate::history::{Kind, Micro, Value};
use acre_engine::addr::Addr;
use acre_nvm_log::random::SplitMix;
use acre_replication::db::{CommitError, Db, Error, Txn};
use acre_replication::outcome::TxnOutcome;
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// How long a worker asks what became of a transaction whose commit was indeterminate.
pub const OUTCOME_WAIT: Duration = Duration::from_secs(5);

/// How one operation ended (also what a client process reports, as one JSON line).
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Completion {
    pub kind: Kind,
    pub value: Value,
    pub error: Option<String>,
}

/// What a transaction's body decides.
enum Body<T> {
    /// Commit, and report `T` if the commit succeeds.
    Commit(T),
    /// Do not commit (a transfer from an account that holds too little, a compare-and-set
    /// that found another value): the operation fails, nothing written.
    Refuse(String),
}

/// Runs `body` in one transaction and commits it once, as the module docs say.
fn attempt<T>(
    db: &Db,
    body: impl FnOnce(&mut Txn) -> Result<Body<T>, Error>,
) -> Result<T, (Kind, String)> {
    let mut txn = db.begin().map_err(|e| (Kind::Fail, e.to_string()))?;
    let value = match body(&mut txn) {
        Ok(Body::Commit(value)) => value,
        Ok(Body::Refuse(why)) => {
            txn.abort();
            return Err((Kind::Fail, why));
        }
        Err(error) => {
            txn.abort();
            return Err((Kind::Fail, error.to_string()));
        }
    };
    match txn.commit() {
        Ok(()) => Ok(value),
        Err(CommitError::Indeterminate { txn, node, reason }) => {
            let asked = Instant::now();
            loop {
                match db.outcome(txn) {
                    TxnOutcome::Committed => return Ok(value),
                    TxnOutcome::Aborted => {
                        return Err((
                            Kind::Fail,
                            format!("{txn} aborted (learned after: {node}: {reason})"),
                        ));
                    }
                    TxnOutcome::Pending { reason: pending }
                    | TxnOutcome::Unknown { reason: pending } => {
                        if asked.elapsed() >= OUTCOME_WAIT {
                            return Err((
                                Kind::Info,
                                format!(
                                    "the outcome of {txn} is unknown ({node}: {reason}; asked for {OUTCOME_WAIT:?}: {pending})"
                                ),
                            ));
                        }
                        std::thread::sleep(Duration::from_millis(100));
                    }
                }
            }
        }
        Err(error) => Err((Kind::Fail, error.to_string())),
    }
}

fn complete<T>(
    value: Value,
    result: Result<T, (Kind, String)>,
    fill: impl FnOnce(T) -> Value,
) -> Completion {
    match result {
        Ok(observed) => Completion {
            kind: Kind::Ok,
            value: fill(observed),
            error: None,
        },
        Err((kind, error)) => Completion {
            kind,
            value,
            error: Some(error),
        },
    }
}

fn u64_of(bytes: &[u8]) -> Result<u64, Error> {
    let word: [u8; 8] = bytes.try_into().map_err(|_| {
        Error::Txn(acre_replication::db::TxnError::Protocol {
            node: acre_engine::addr::NodeId(0),
            reason: format!("a {}-byte value where the workload wrote 8", bytes.len()),
        })
    })?;
    Ok(u64::from_le_bytes(word))
}

/// A workload: its objects, its operations, and its final reads.
pub trait Workload: Send + Sync {
    /// The next operation to invoke (`None`: nothing left to ask; the worker stops).
    fn generate(&self, rng: &mut SplitMix) -> Option<Value>;
    /// Runs `value` once against the cluster.
    fn invoke(&self, db: &Db, value: &Value) -> Completion;
    /// The reads to invoke at the end, once every fault is healed.
    fn final_reads(&self) -> Vec<Value>;
    /// The workload's objects, so that a client process can invoke its operations
    /// ([`Objects::workload`]).
    fn objects(&self) -> Objects;
}

/// A workload's objects, as the harness hands them to its client processes (a JSON file).
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(tag = "workload", rename_all = "kebab-case")]
pub enum Objects {
    Bank { accounts: Vec<u64>, initial: u64 },
    ListAppend { keys: Vec<u64> },
    Register { registers: Vec<u64> },
}

impl Objects {
    /// The workload over these objects, for invoking operations only (a client process's:
    /// the harness generates them).
    pub fn workload(&self) -> Box<dyn Workload> {
        let addrs = |words: &[u64]| words.iter().map(|&w| Addr::from_u64(w)).collect();
        match self {
            Objects::Bank { accounts, initial } => Box::new(Bank {
                accounts: addrs(accounts),
                initial: *initial,
            }),
            Objects::ListAppend { keys } => Box::new(ListAppend::over(addrs(keys))),
            Objects::Register { registers } => Box::new(Register {
                registers: addrs(registers),
            }),
        }
    }
}

fn words(addrs: &[Addr]) -> Vec<u64> {
    addrs.iter().map(|a| a.to_u64()).collect()
}

/// Allocates `count` objects of `len` bytes, each holding `initial(i)`, in transactions of up
/// to 64 (retried through conflicts and reconfigurations by `Db::run`).
fn allocate(
    db: &Db,
    count: usize,
    len: usize,
    initial: impl Fn(usize) -> Vec<u8>,
) -> Result<Vec<Addr>, String> {
    let mut addrs = Vec::with_capacity(count);
    while addrs.len() < count {
        let first = addrs.len();
        let batch = (count - first).min(64);
        let new = db
            .run(|txn| {
                (first..first + batch)
                    .map(|i| {
                        let addr = txn.alloc(len)?;
                        txn.write(addr, &initial(i))?;
                        Ok(addr)
                    })
                    .collect::<Result<Vec<Addr>, Error>>()
            })
            .map_err(|e| format!("allocate the workload's objects: {e}"))?;
        addrs.extend(new);
    }
    Ok(addrs)
}

/// Bank: accounts whose total never changes. A transfer moves 1 to 5 between two random
/// accounts (refused when the source holds less); a read returns every balance in one
/// transaction (one batch of reads per node).
pub struct Bank {
    accounts: Vec<Addr>,
    /// What every account starts with.
    pub initial: u64,
}

impl Bank {
    pub fn create(db: &Db, accounts: u32, initial: u64) -> Result<Bank, String> {
        let accounts = allocate(db, accounts as usize, 8, |_| initial.to_le_bytes().to_vec())?;
        Ok(Bank { accounts, initial })
    }

    pub fn total(&self) -> u64 {
        self.initial * self.accounts.len() as u64
    }

    pub fn accounts(&self) -> u32 {
        self.accounts.len() as u32
    }

    fn read_all(&self, db: &Db) -> Result<Vec<u64>, (Kind, String)> {
        attempt(db, |txn| {
            let values = txn.read_many(&self.accounts)?;
            let balances = values
                .iter()
                .map(|v| u64_of(v))
                .collect::<Result<Vec<u64>, Error>>()?;
            Ok(Body::Commit(balances))
        })
    }
}

impl Workload for Bank {
    fn generate(&self, rng: &mut SplitMix) -> Option<Value> {
        let n = self.accounts.len() as u64;
        if rng.below(4) == 0 {
            return Some(Value::ReadBalances { balances: None });
        }
        let from = rng.below(n);
        let to = (from + 1 + rng.below(n - 1)) % n;
        Some(Value::Transfer {
            from: from as u32,
            to: to as u32,
            amount: 1 + rng.below(5),
        })
    }

    fn invoke(&self, db: &Db, value: &Value) -> Completion {
        match *value {
            Value::Transfer { from, to, amount } => {
                let (a, b) = (self.accounts[from as usize], self.accounts[to as usize]);
                let result = attempt(db, |txn| {
                    let values = txn.read_many(&[a, b])?;
                    let (have, other) = (u64_of(&values[0])?, u64_of(&values[1])?);
                    if have < amount {
                        return Ok(Body::Refuse(format!(
                            "account {from} holds {have} < {amount}"
                        )));
                    }
                    txn.write(a, &(have - amount).to_le_bytes())?;
                    txn.write(b, &(other + amount).to_le_bytes())?;
                    Ok(Body::Commit(()))
                });
                complete(value.clone(), result, |()| value.clone())
            }
            Value::ReadBalances { .. } => complete(value.clone(), self.read_all(db), |balances| {
                Value::ReadBalances {
                    balances: Some(balances),
                }
            }),
            ref other => panic!("the bank workload got {other:?}"),
        }
    }

    fn objects(&self) -> Objects {
        Objects::Bank {
            accounts: words(&self.accounts),
            initial: self.initial,
        }
    }

    fn final_reads(&self) -> Vec<Value> {
        vec![Value::ReadBalances { balances: None }]
    }
}

/// Appends per key before a key is retired (and bytes of a key's object: 8 per element).
pub const LIST_CAPACITY: usize = 32;
/// Keys being appended to at once.
const ACTIVE_KEYS: usize = 8;

/// List-append: transactions of 1 to 4 micro-operations, each an append of a value unique to
/// its key or a read of a key's whole list, over a few active keys. A key that received
/// [`LIST_CAPACITY`] appends is retired and a fresh one takes its place, so lists stay short
/// and reads cheap, as in Elle's own generator.
pub struct ListAppend {
    keys: Vec<Addr>,
    generator: Mutex<ListGenerator>,
}

struct ListGenerator {
    /// The active keys and the appends each was given so far.
    active: Vec<(u64, u64)>,
    /// The next unused key.
    next_key: u64,
}

impl ListAppend {
    /// `keys`: the pool; the run stops appending once every key is retired.
    pub fn create(db: &Db, keys: usize) -> Result<ListAppend, String> {
        let keys = allocate(db, keys.max(ACTIVE_KEYS), 8 * LIST_CAPACITY, |_| Vec::new())?;
        Ok(ListAppend::over(keys))
    }

    fn over(keys: Vec<Addr>) -> ListAppend {
        let active = (0..ACTIVE_KEYS as u64).map(|k| (k, 0)).collect();
        ListAppend {
            keys,
            generator: Mutex::new(ListGenerator {
                active,
                next_key: ACTIVE_KEYS as u64,
            }),
        }
    }

    /// Keys for a run of `operations` transactions.
    pub fn keys_for(operations: u64) -> usize {
        // 2.5 micro-operations a transaction, half of them appends.
        let appends = operations.saturating_mul(5) / 4;
        (appends / LIST_CAPACITY as u64 + 2 * ACTIVE_KEYS as u64).min(1 << 16) as usize
    }

    fn list_of(bytes: &[u8]) -> Vec<u64> {
        bytes
            .chunks_exact(8)
            .map(|c| u64::from_le_bytes(c.try_into().expect("8-byte chunks")))
            .collect()
    }
}

impl Workload for ListAppend {
    fn generate(&self, rng: &mut SplitMix) -> Option<Value> {
        let mut generator = self.generator.lock().expect("the generator's lock");
        let count = 1 + rng.below(4);
        let mut ops = Vec::new();
        for _ in 0..count {
            let slot = rng.below(generator.active.len() as u64) as usize;
            let (key, appended) = generator.active[slot];
            if rng.below(2) == 0 {
                ops.push(Micro::Read { key, list: None });
                continue;
            }
            if appended as usize == LIST_CAPACITY {
                // Retire the key: the next unused one takes its place, if any is left.
                if generator.next_key as usize >= self.keys.len() {
                    ops.push(Micro::Read { key, list: None });
                    continue;
                }
                generator.active[slot] = (generator.next_key, 0);
                generator.next_key += 1;
            }
            let (key, appended) = generator.active[slot];
            generator.active[slot].1 = appended + 1;
            ops.push(Micro::Append {
                key,
                value: appended + 1,
            });
        }
        Some(Value::Txn { ops })
    }

    fn invoke(&self, db: &Db, value: &Value) -> Completion {
        let Value::Txn { ops } = value else {
            panic!("the list-append workload got {value:?}");
        };
        let result = attempt(db, |txn| {
            let mut done = Vec::with_capacity(ops.len());
            for op in ops {
                match *op {
                    Micro::Read { key, .. } => {
                        let list = ListAppend::list_of(&txn.read(self.keys[key as usize])?);
                        done.push(Micro::Read {
                            key,
                            list: Some(list),
                        });
                    }
                    Micro::Append { key, value } => {
                        let addr = self.keys[key as usize];
                        let mut bytes = txn.read(addr)?;
                        bytes.extend_from_slice(&value.to_le_bytes());
                        txn.write(addr, &bytes)?;
                        done.push(Micro::Append { key, value });
                    }
                }
            }
            Ok(Body::Commit(done))
        });
        complete(value.clone(), result, |ops| Value::Txn { ops })
    }

    fn objects(&self) -> Objects {
        Objects::ListAppend {
            keys: words(&self.keys),
        }
    }

    fn final_reads(&self) -> Vec<Value> {
        let used = self
            .generator
            .lock()
            .expect("the generator's lock")
            .next_key;
        (0..used)
            .collect::<Vec<u64>>()
            .chunks(16)
            .map(|keys| Value::Txn {
                ops: keys
                    .iter()
                    .map(|&key| Micro::Read { key, list: None })
                    .collect(),
            })
            .collect()
    }
}

/// Register: single-object reads, writes and compare-and-sets of values 0 to 4 over a few
/// registers, checked for linearizability per register. A register holds nothing until
/// written.
pub struct Register {
    registers: Vec<Addr>,
}

impl Register {
    pub fn create(db: &Db, registers: usize) -> Result<Register, String> {
        Ok(Register {
            registers: allocate(db, registers, 8, |_| Vec::new())?,
        })
    }

    fn read(&self, db: &Db, key: u64) -> Result<Option<u64>, (Kind, String)> {
        attempt(db, |txn| {
            let bytes = txn.read(self.registers[key as usize])?;
            let value = if bytes.is_empty() {
                None
            } else {
                Some(u64_of(&bytes)?)
            };
            Ok(Body::Commit(value))
        })
    }
}

impl Workload for Register {
    fn generate(&self, rng: &mut SplitMix) -> Option<Value> {
        let key = rng.below(self.registers.len() as u64);
        Some(match rng.below(3) {
            0 => Value::Read { key, value: None },
            1 => Value::Write {
                key,
                value: rng.below(5),
            },
            _ => Value::Cas {
                key,
                from: rng.below(5),
                to: rng.below(5),
            },
        })
    }

    fn invoke(&self, db: &Db, value: &Value) -> Completion {
        match *value {
            Value::Read { key, .. } => complete(value.clone(), self.read(db, key), |read| {
                Value::Read { key, value: read }
            }),
            Value::Write { key, value: new } => {
                let addr = self.registers[key as usize];
                let result = attempt(db, |txn| {
                    txn.write(addr, &new.to_le_bytes())?;
                    Ok(Body::Commit(()))
                });
                complete(value.clone(), result, |()| value.clone())
            }
            Value::Cas { key, from, to } => {
                let addr = self.registers[key as usize];
                let result = attempt(db, |txn| {
                    let bytes = txn.read(addr)?;
                    let now = if bytes.is_empty() {
                        None
                    } else {
                        Some(u64_of(&bytes)?)
                    };
                    if now != Some(from) {
                        return Ok(Body::Refuse(format!(
                            "register {key} holds {now:?}, not {from}"
                        )));
                    }
                    txn.write(addr, &to.to_le_bytes())?;
                    Ok(Body::Commit(()))
                });
                complete(value.clone(), result, |()| value.clone())
            }
            ref other => panic!("the register workload got {other:?}"),
        }
    }

    fn objects(&self) -> Objects {
        Objects::Register {
            registers: words(&self.registers),
        }
    }

    fn final_reads(&self) -> Vec<Value> {
        (0..self.registers.len() as u64)
            .map(|key| Value::Read { key, value: None })
            .collect()
    }
}
