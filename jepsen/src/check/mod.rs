//! The checkers: what a history proves or refutes, on std and serde alone (no other Acre
//! crate, so acre-replication's tests use them too).
//!
//! [`check`] is the entry point: a whole run's history (client operations, final reads,
//! nemesis entries, which the checkers ignore) and its workload in, the verdicts, findings and
//! lost writes that `results.json` reports out.
//!
//! - [`elle`]: strict serializability of list-append transactions, by their dependency graph.
//! - [`list_append`]: a list-append history as `elle` sees it (`info` transactions included
//!   when a read proves they committed), and acknowledged appends missing from the final reads.
//! - [`bank`]: the total and every balance in each read of the bank's accounts.
//! - [`register`]: linearizability of each register (reads, writes, compare-and-set), by a
//!   bounded search over the orders real time allows.
//! - [`adya`]: the list-append history in Elle's JSON form, and, with the feature `adya`, the
//!   adya crate's independent verdict on it.

pub mod adya;
pub mod bank;
pub mod elle;
pub mod list_append;
pub mod register;

use crate::history::{self, Kind, Op, Process, Value};
use crate::results::{Finding, Verdict};
use std::collections::BTreeMap;

/// The workload a history comes from, with what its checker must know of it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Workload {
    /// Transfers between `accounts` accounts holding `total` between them, and reads of every
    /// balance.
    Bank { accounts: u32, total: u64 },
    /// Transactions of appends to lists and reads of whole lists.
    ListAppend,
    /// Single-register reads, writes and compare-and-sets, on many registers (keys).
    Register,
}

impl Workload {
    /// The workload's name in `results.json`.
    pub fn name(&self) -> &'static str {
        match self {
            Workload::Bank { .. } => "bank",
            Workload::ListAppend => "list-append",
            Workload::Register => "register",
        }
    }
}

/// What the checkers concluded of a history: the parts of [`crate::results::Results`] they
/// fill in.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Checked {
    /// One per checker that ran (`elle`, `lost-writes`, `adya`, `bank`, `register`).
    pub verdicts: Vec<Verdict>,
    /// Every anomaly found, each explained in words; a lost write is one too (class
    /// `lost-write`), besides its line in `lost_writes`.
    pub findings: Vec<Finding>,
    /// Acknowledged writes that the final reads do not show, in words.
    pub lost_writes: Vec<String>,
}

impl Checked {
    /// Every checker accepted the history and no acknowledged write is lost.
    pub fn valid(&self) -> bool {
        self.verdicts.iter().all(|verdict| verdict.valid) && self.lost_writes.is_empty()
    }

    /// The findings counted by class (`Results::anomalies`).
    pub fn anomaly_counts(&self) -> BTreeMap<String, u64> {
        let mut counts = BTreeMap::new();
        for finding in &self.findings {
            *counts.entry(finding.class.clone()).or_default() += 1;
        }
        counts
    }

    /// The classes of the findings, each once, sorted.
    pub fn classes(&self) -> Vec<&str> {
        let mut classes: Vec<&str> = self.findings.iter().map(|f| f.class.as_str()).collect();
        classes.sort_unstable();
        classes.dedup();
        classes
    }
}

/// Checks a whole run's history against what its workload promises.
///
/// - [`Workload::ListAppend`]: strict serializability of the transactions (the `elle`
///   checker, final reads included as ordinary read-only transactions), every acknowledged
///   append present in the final reads of its key (`lost-writes`), and, with the feature
///   `adya`, the adya crate's verdict, whose disagreement with `elle` is a finding of class
///   `checker-disagreement` (see [`list_append::check`]).
/// - [`Workload::Bank`]: every `ok` read of the balances, the final ones included, sums to the
///   total and shows no negative balance and none above the total (see [`bank::check`]).
/// - [`Workload::Register`]: each register's operations are linearizable, and each final read
///   follows every acknowledged write (see [`register::check`]).
///
/// A history that pairs completions wrongly (see [`history::pairs`]) is judged invalid with
/// a `malformed-history` finding, and nothing else is checked.
pub fn check(workload: &Workload, ops: &[Op]) -> Checked {
    let operations = match operations(ops) {
        Ok(operations) => operations,
        Err(error) => {
            return Checked {
                verdicts: vec![Verdict {
                    checker: "history".into(),
                    valid: false,
                    notes: vec![error.clone()],
                }],
                findings: vec![Finding {
                    class: "malformed-history".into(),
                    checker: "history".into(),
                    text: format!("the history cannot be read as operations: {error}"),
                }],
                lost_writes: Vec::new(),
            };
        }
    };
    match workload {
        Workload::Bank { accounts, total } => bank::check(&operations, *accounts, *total),
        Workload::ListAppend => list_append::check(ops, &operations),
        Workload::Register => register::check(&operations),
    }
}

/// One client operation: its invocation and, unless the run ended first, its completion.
#[derive(Clone, Copy, Debug)]
pub struct Operation<'h> {
    pub invocation: &'h Op,
    pub completion: Option<&'h Op>,
    /// Positions of the invocation and the completion in the history's slice: the order of
    /// events, with no ties (times can tie).
    pub invocation_position: usize,
    pub completion_position: Option<usize>,
}

impl<'h> Operation<'h> {
    /// How it ended; an operation that never completed is `info`, as in `results.json`.
    pub fn outcome(&self) -> Kind {
        self.completion
            .map_or(Kind::Info, |completion| completion.kind)
    }

    /// What it saw: the completion's value, or the invocation's if it never completed.
    pub fn value(&self) -> &'h Value {
        &self.completion.unwrap_or(self.invocation).value
    }

    pub fn process(&self) -> Process {
        self.invocation.process
    }

    /// The history index of its invocation, which names it in findings (`T12`, `op 12`).
    pub fn index(&self) -> u64 {
        self.invocation.index
    }

    /// Who ran it and when, in words: "client 3, invoked at 1.204 s, ok at 1.210 s".
    pub fn describe_when(&self) -> String {
        let who = match self.process() {
            Process::Client(n) => format!("client {n}"),
            Process::Final(n) => format!("final reader {n}"),
            Process::Nemesis => "nemesis".to_string(),
        };
        let invoked = seconds(self.invocation.time_ns);
        match self.completion {
            Some(completion) => {
                let outcome = match completion.kind {
                    Kind::Ok => "ok",
                    Kind::Fail => "failed",
                    Kind::Info => "outcome unknown",
                    Kind::Invoke => "invoked again",
                };
                let at = seconds(completion.time_ns);
                format!("{who}, invoked at {invoked}, {outcome} at {at}")
            }
            None => format!("{who}, invoked at {invoked}, never completed"),
        }
    }
}

/// A time since the run started, in seconds with millisecond digits: "1.204 s".
pub(crate) fn seconds(time_ns: u64) -> String {
    format!("{:.3} s", time_ns as f64 / 1e9)
}

/// A list in findings: whole when short, else its length, its first and its last elements.
pub(crate) fn list_text(list: &[u64]) -> String {
    const SHOWN_MAX: usize = 12;
    const HEAD: usize = 3;
    const TAIL: usize = 6;
    let words = |values: &[u64]| -> Vec<String> { values.iter().map(u64::to_string).collect() };
    if list.len() <= SHOWN_MAX {
        format!("[{}]", words(list).join(" "))
    } else {
        format!(
            "[{} ... {}] ({} elements)",
            words(&list[..HEAD]).join(" "),
            words(&list[list.len() - TAIL..]).join(" "),
            list.len()
        )
    }
}

/// The client operations of `ops` (final reads included, nemesis entries left out) in the
/// order they were invoked.
pub fn operations(ops: &[Op]) -> Result<Vec<Operation<'_>>, String> {
    let completions = history::pairs(ops)?;
    let mut operations = Vec::new();
    for (position, op) in ops.iter().enumerate() {
        if op.process == Process::Nemesis || op.kind != Kind::Invoke {
            continue;
        }
        let completion_position = completions[position];
        operations.push(Operation {
            invocation: op,
            completion: completion_position.map(|p| &ops[p]),
            invocation_position: position,
            completion_position,
        });
    }
    Ok(operations)
}

/// Builders of histories for the checkers' tests.
#[cfg(test)]
pub(crate) mod test_history {
    use crate::history::{Kind, Micro, Op, Process, Value};
    use acre_nvm_log::random::SplitMix;
    use std::collections::BTreeMap;

    /// Appends entries one at a time, each 1 ms after the last.
    #[derive(Default)]
    pub struct Builder {
        pub ops: Vec<Op>,
    }

    impl Builder {
        pub fn push(&mut self, process: Process, kind: Kind, value: Value) -> u64 {
            let index = self.ops.len() as u64;
            self.ops.push(Op {
                index,
                time_ns: (index + 1) * 1_000_000,
                process,
                kind,
                value,
                error: None,
            });
            index
        }

        pub fn invoke(&mut self, client: u32, value: Value) -> u64 {
            self.push(Process::Client(client), Kind::Invoke, value)
        }

        pub fn complete(&mut self, client: u32, kind: Kind, value: Value) -> u64 {
            self.push(Process::Client(client), kind, value)
        }

        /// An invocation completed at once.
        pub fn run(&mut self, client: u32, kind: Kind, invoked: Value, completed: Value) -> u64 {
            let index = self.invoke(client, invoked);
            self.complete(client, kind, completed);
            index
        }

        /// A final read, invoked and completed `ok` at once.
        pub fn final_read(&mut self, reader: u32, invoked: Value, completed: Value) -> u64 {
            let index = self.push(Process::Final(reader), Kind::Invoke, invoked);
            self.push(Process::Final(reader), Kind::Ok, completed);
            index
        }
    }

    /// Where a client of [`random_list_append`] is.
    enum Slot {
        Idle,
        /// Invoked, not yet run: it may still fail or be given up on.
        Invoked(Vec<Micro>),
        /// Ran atomically against the model (its reads filled in), not yet completed.
        Ran(Vec<Micro>),
    }

    /// A list-append history of `txn_count` transactions from a few clients, each run
    /// atomically at one instant between its invocation and its completion against a model
    /// of the lists, so strictly serializable by construction; some fail before running, some
    /// end `info` before or after running (their client takes a fresh process number), and one
    /// final read of every key ends it.
    pub fn random_list_append(seed: u64, txn_count: u64) -> Vec<Op> {
        const CLIENT_COUNT: u64 = 4;
        const KEY_COUNT: u64 = 4;
        let mut rng = SplitMix::new(seed);
        let mut lists: BTreeMap<u64, Vec<u64>> = (0..KEY_COUNT).map(|k| (k, vec![])).collect();
        let mut next_value = 1;
        let mut history = Builder::default();
        let mut slots: Vec<(u32, Slot)> =
            (0..CLIENT_COUNT as u32).map(|n| (n, Slot::Idle)).collect();
        let mut next_process = CLIENT_COUNT as u32;
        let mut started_count = 0;
        let txn = |micros: &[Micro]| Value::Txn {
            ops: micros.to_vec(),
        };
        while started_count < txn_count || slots.iter().any(|(_, s)| !matches!(s, Slot::Idle)) {
            let slot_index = rng.below(CLIENT_COUNT) as usize;
            let (process, slot) = &mut slots[slot_index];
            let process = *process;
            let mut gave_up = false;
            match std::mem::replace(slot, Slot::Idle) {
                Slot::Idle if started_count < txn_count => {
                    let micros: Vec<Micro> = (0..=rng.below(3))
                        .map(|_| {
                            let key = rng.below(KEY_COUNT);
                            if rng.below(2) == 0 {
                                Micro::Read { key, list: None }
                            } else {
                                next_value += 1;
                                Micro::Append {
                                    key,
                                    value: next_value,
                                }
                            }
                        })
                        .collect();
                    history.invoke(process, txn(&micros));
                    started_count += 1;
                    *slot = Slot::Invoked(micros);
                }
                Slot::Idle => {}
                Slot::Invoked(micros) => match rng.below(16) {
                    0 | 1 => {
                        history.complete(process, Kind::Fail, txn(&micros));
                    }
                    2 => {
                        history.complete(process, Kind::Info, txn(&micros));
                        gave_up = true;
                    }
                    _ => {
                        let ran = micros
                            .into_iter()
                            .map(|micro| match micro {
                                Micro::Read { key, .. } => Micro::Read {
                                    key,
                                    list: Some(lists[&key].clone()),
                                },
                                Micro::Append { key, value } => {
                                    lists.entry(key).or_default().push(value);
                                    Micro::Append { key, value }
                                }
                            })
                            .collect();
                        *slot = Slot::Ran(ran);
                    }
                },
                Slot::Ran(micros) => {
                    if rng.below(10) == 0 {
                        history.complete(process, Kind::Info, txn(&micros));
                        gave_up = true;
                    } else {
                        history.complete(process, Kind::Ok, txn(&micros));
                    }
                }
            }
            if gave_up {
                slots[slot_index].0 = next_process;
                next_process += 1;
            }
        }
        let reads: Vec<Micro> = (0..KEY_COUNT)
            .map(|key| Micro::Read { key, list: None })
            .collect();
        let finals: Vec<Micro> = lists
            .iter()
            .map(|(&key, list)| Micro::Read {
                key,
                list: Some(list.clone()),
            })
            .collect();
        history.final_read(0, txn(&reads), txn(&finals));
        history.ops
    }

    /// Which element [`corrupt_a_read`] may drop.
    // `Any` and `Last` serve the adya cross-check's tests only.
    #[cfg_attr(not(feature = "adya"), allow(dead_code))]
    #[derive(Clone, Copy, PartialEq, Eq)]
    pub enum Drop {
        /// Any element of any `ok` read.
        Any,
        /// The last element of an `ok` read: a stale read, which may still be valid when the
        /// element's transaction overlaps the reader.
        Last,
        /// An element of the final read that an `ok` transaction appended: a lost write.
        AcknowledgedFinal,
    }

    /// Drops one element (which, `drop` says) from one `ok` read, and says which; `None` when
    /// there is no such element.
    pub fn corrupt_a_read(ops: &mut [Op], rng: &mut SplitMix, drop: Drop) -> Option<String> {
        let acknowledged_final = drop == Drop::AcknowledgedFinal;
        let mut acknowledged = std::collections::HashSet::new();
        for op in ops.iter().filter(|op| op.kind == Kind::Ok) {
            if let Value::Txn { ops: micros } = &op.value {
                for micro in micros {
                    if let Micro::Append { key, value } = micro {
                        acknowledged.insert((*key, *value));
                    }
                }
            }
        }
        let mut candidates = Vec::new();
        for (position, op) in ops.iter().enumerate() {
            let is_final = matches!(op.process, Process::Final(_));
            if op.kind != Kind::Ok || (acknowledged_final && !is_final) {
                continue;
            }
            let Value::Txn { ops: micros } = &op.value else {
                continue;
            };
            for (micro_index, micro) in micros.iter().enumerate() {
                let Micro::Read {
                    key,
                    list: Some(list),
                } = micro
                else {
                    continue;
                };
                for (element_index, value) in list.iter().enumerate() {
                    let last = element_index + 1 == list.len();
                    let fits = match drop {
                        Drop::Any => true,
                        Drop::Last => last,
                        Drop::AcknowledgedFinal => acknowledged.contains(&(*key, *value)),
                    };
                    if fits {
                        candidates.push((position, micro_index, element_index));
                    }
                }
            }
        }
        if candidates.is_empty() {
            return None;
        }
        let (position, micro_index, element_index) =
            candidates[rng.below(candidates.len() as u64) as usize];
        let Value::Txn { ops: micros } = &mut ops[position].value else {
            unreachable!("a candidate is a transaction");
        };
        let Micro::Read {
            key,
            list: Some(list),
        } = &mut micros[micro_index]
        else {
            unreachable!("a candidate is a read with a list");
        };
        let dropped = list.remove(element_index);
        Some(format!("entry {position} read key {key} without {dropped}"))
    }
}

#[cfg(test)]
mod tests {
    use super::test_history::Builder;
    use super::*;

    #[test]
    fn a_malformed_history_is_invalid_and_says_where() {
        let mut history = Builder::default();
        let read = Value::Read {
            key: 1,
            value: None,
        };
        history.complete(0, Kind::Ok, read);
        let checked = check(&Workload::Register, &history.ops);
        assert!(!checked.valid(), "{checked:?}");
        assert_eq!(checked.classes(), ["malformed-history"], "{checked:?}");
        assert!(checked.findings[0].text.contains("entry 0"), "{checked:?}");
    }

    #[test]
    fn long_lists_are_shortened_in_words() {
        assert_eq!(list_text(&[1, 2]), "[1 2]");
        let long: Vec<u64> = (1..=20).collect();
        assert_eq!(
            list_text(&long),
            "[1 2 3 ... 15 16 17 18 19 20] (20 elements)"
        );
    }
}
