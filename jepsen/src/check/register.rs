//! Registers checked for linearizability, one key at a time (a history of independent
//! registers is linearizable exactly when each register's is).
//!
//! Each operation must take effect at one instant between its invocation and its completion,
//! in an order that a single register explains: a read returns the last value written (`None`
//! before any write), a compare-and-set takes effect only on the value it expects. By outcome:
//! - `ok`: it took effect, inside its interval; a read must return what it returned.
//! - `fail`: it did not take effect, and is left out (a failed compare-and-set found another
//!   value, which says nothing about when).
//! - `info` (or never completed): a write or compare-and-set may take effect at any time after
//!   its invocation, or never; a read whose result is unknown constrains nothing.
//!
//! The search is Wing and Gong's with memoization, in its "just in time" form: a state is the
//! register's value and the set of operations taken effect; from it, any operation not taken
//! effect whose invocation comes before the earliest completion among the acknowledged
//! operations not taken effect may come next. The history is linearizable when some path
//! takes every acknowledged operation. Events are ordered by their position in the history,
//! which has no ties. States already visited are not visited again; past
//! [`STATES_PER_KEY_MAX`] the key is reported unchecked in the verdict's notes. Writes of
//! unknown outcome whose value nothing observes are left out before the search (see
//! `without_unobservable`): a run whose clients die leaves many, and each would double it.
//!
//! Final reads are reads like the others, invoked after every client operation ended, so they
//! must follow every acknowledged write. When a key fails only because of its final reads (the
//! key's history without them is linearizable), the final read is reported as a lost write.

use super::{Checked, Operation};
use crate::history::{Kind, Process, Value};
use crate::results::{Finding, Verdict};
use std::collections::{BTreeMap, BTreeSet, HashSet};

/// States one key's search may visit before it gives up.
pub const STATES_PER_KEY_MAX: usize = 1_000_000;

/// What an operation does to a register.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Effect {
    /// Returned this value (`None`: the register held nothing).
    Read(Option<u64>),
    Write(u64),
    Cas {
        from: u64,
        to: u64,
    },
}

impl Effect {
    /// The value after the effect from `value`, or `None` if it cannot take effect on it.
    fn apply(self, value: Option<u64>) -> Option<Option<u64>> {
        match self {
            Effect::Read(read) => (read == value).then_some(value),
            Effect::Write(written) => Some(Some(written)),
            Effect::Cas { from, to } => (value == Some(from)).then_some(Some(to)),
        }
    }
}

/// One operation on one register, as the search sees it.
#[derive(Clone, Debug)]
struct RegisterOp {
    /// The invocation's history index: `op 12` in findings.
    index: u64,
    /// Position of the invocation in the history.
    call: usize,
    /// Position of the completion, for an acknowledged operation; `None` for one that may take
    /// effect any time after its call, or never.
    ret: Option<usize>,
    effect: Effect,
    process: Process,
    /// "client 2, invoked at 1.200 s, ok at 1.204 s".
    when: String,
}

impl RegisterOp {
    fn describe(&self, key: u64) -> String {
        let what = match self.effect {
            Effect::Read(Some(value)) => format!("read of key {key} = {value}"),
            Effect::Read(None) => format!("read of key {key} = nothing"),
            Effect::Write(value) => format!("write of {value} to key {key}"),
            Effect::Cas { from, to } => format!("cas of key {key} from {from} to {to}"),
        };
        format!("op {} ({what}; {})", self.index, self.when)
    }
}

/// The search's verdict on one key.
#[derive(Clone, Debug, PartialEq, Eq)]
enum Search {
    Linearizable,
    /// No order works; the words say how far the best order got.
    Not(String),
    /// The budget ran out after this many states.
    TooLarge(usize),
}

/// A search state: the register's value, and which operations have not taken effect, as those
/// below `horizon` (sorted) plus every operation from `horizon` on.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
struct State {
    value: Option<u64>,
    pending_below: Vec<u32>,
    horizon: u32,
}

/// `ops` without the writes and compare-and-sets of unknown outcome whose value nothing can
/// observe: no acknowledged read returns it, no acknowledged compare-and-set expects it, nor
/// any kept one of unknown outcome. Taking effect, such an operation leaves a value that must
/// be overwritten before any read or compare-and-set, so an order with it works without it
/// too, and leaving it out (never took effect) spares the search every subset of them: a run
/// whose clients die leaves many.
fn without_unobservable(ops: &[RegisterOp]) -> Vec<RegisterOp> {
    let mut observable: HashSet<u64> = HashSet::new();
    for op in ops.iter().filter(|op| op.ret.is_some()) {
        match op.effect {
            Effect::Read(Some(value)) => {
                observable.insert(value);
            }
            Effect::Cas { from, .. } => {
                observable.insert(from);
            }
            Effect::Read(None) | Effect::Write(_) => {}
        }
    }
    // A kept compare-and-set of unknown outcome makes the value it expects observable.
    loop {
        let mut grew = false;
        for op in ops.iter().filter(|op| op.ret.is_none()) {
            if let Effect::Cas { from, to } = op.effect
                && observable.contains(&to)
            {
                grew |= observable.insert(from);
            }
        }
        if !grew {
            break;
        }
    }
    ops.iter()
        .filter(|op| {
            op.ret.is_some()
                || match op.effect {
                    Effect::Write(value) | Effect::Cas { to: value, .. } => {
                        observable.contains(&value)
                    }
                    Effect::Read(_) => true,
                }
        })
        .cloned()
        .collect()
}

/// Searches for a linearization of `ops` (sorted by `call`), visiting at most `states_max`
/// states.
fn search(key: u64, ops: &[RegisterOp], states_max: usize) -> Search {
    let ops = &without_unobservable(ops)[..];
    let n = ops.len();
    // required_from[i]: the earliest completion and the count of acknowledged operations
    // among ops[i..].
    let mut earliest_ret_from = vec![usize::MAX; n + 1];
    let mut required_from = vec![0usize; n + 1];
    for i in (0..n).rev() {
        earliest_ret_from[i] = earliest_ret_from[i + 1].min(ops[i].ret.unwrap_or(usize::MAX));
        required_from[i] = required_from[i + 1] + usize::from(ops[i].ret.is_some());
    }
    let required_count = required_from[0];

    // Expands a state's horizon: every operation invoked before the earliest pending
    // completion may come next, so it joins the pending set below the horizon.
    let expand = |mut state: State| -> State {
        loop {
            let below = state
                .pending_below
                .iter()
                .filter_map(|&i| ops[i as usize].ret)
                .min()
                .unwrap_or(usize::MAX);
            let earliest = below.min(earliest_ret_from[state.horizon as usize]);
            let horizon = state.horizon as usize;
            if horizon < n && ops[horizon].call < earliest {
                state.pending_below.push(state.horizon);
                state.horizon += 1;
            } else {
                return state;
            }
        }
    };
    let pending_required = |state: &State| -> usize {
        state
            .pending_below
            .iter()
            .filter(|&&i| ops[i as usize].ret.is_some())
            .count()
            + required_from[state.horizon as usize]
    };

    let start = expand(State {
        value: None,
        pending_below: Vec::new(),
        horizon: 0,
    });
    let mut visited: HashSet<State> = HashSet::new();
    let mut stack = vec![start.clone()];
    visited.insert(start);
    // The deepest point reached: how many acknowledged operations took effect, the values
    // the register could hold there, and the acknowledged operation due first.
    let mut best_done = 0;
    let mut best_values: BTreeSet<Option<u64>> = BTreeSet::new();
    let mut best_due: Option<usize> = None;
    while let Some(state) = stack.pop() {
        let pending = pending_required(&state);
        if pending == 0 {
            return Search::Linearizable;
        }
        let done = required_count - pending;
        if done >= best_done {
            if done > best_done {
                best_values.clear();
                best_due = None;
            }
            best_done = done;
            best_values.insert(state.value);
            let due = state
                .pending_below
                .iter()
                .map(|&i| i as usize)
                .chain(state.horizon as usize..n)
                .filter(|&i| ops[i].ret.is_some())
                .min_by_key(|&i| ops[i].ret);
            best_due = best_due.or(due);
        }
        for (slot, &candidate) in state.pending_below.iter().enumerate() {
            let Some(value) = ops[candidate as usize].effect.apply(state.value) else {
                continue;
            };
            let mut pending_below = state.pending_below.clone();
            pending_below.remove(slot);
            let next = expand(State {
                value,
                pending_below,
                horizon: state.horizon,
            });
            if visited.contains(&next) {
                continue;
            }
            if visited.len() >= states_max {
                return Search::TooLarge(visited.len());
            }
            visited.insert(next.clone());
            stack.push(next);
        }
    }
    let values: Vec<String> = best_values
        .iter()
        .map(|value| value.map_or("nothing".to_string(), |v| v.to_string()))
        .collect();
    let due = best_due.map_or(String::new(), |i| {
        format!(
            "; then {} cannot take effect, the register holding {} in every such order",
            ops[i].describe(key),
            values.join(" or ")
        )
    });
    Search::Not(format!(
        "key {key} is not linearizable: of its {required_count} acknowledged operations, at \
         most {best_done} take effect in an order real time allows{due}"
    ))
}

/// The register operations of `operations`, by key, each key's sorted by invocation.
fn by_key(operations: &[Operation<'_>]) -> (BTreeMap<u64, Vec<RegisterOp>>, usize) {
    let mut keys: BTreeMap<u64, Vec<RegisterOp>> = BTreeMap::new();
    let mut foreign_count = 0;
    for operation in operations {
        let outcome = operation.outcome();
        let acknowledged = outcome == Kind::Ok;
        let (key, effect) = match *operation.value() {
            Value::Read { key, value } if acknowledged => (key, Effect::Read(value)),
            // A read that failed or whose result is unknown says nothing.
            Value::Read { .. } => continue,
            Value::Write { key, value } => (key, Effect::Write(value)),
            Value::Cas { key, from, to } => (key, Effect::Cas { from, to }),
            _ => {
                foreign_count += 1;
                continue;
            }
        };
        if outcome == Kind::Fail {
            continue;
        }
        keys.entry(key).or_default().push(RegisterOp {
            index: operation.index(),
            call: operation.invocation_position,
            ret: if acknowledged {
                operation.completion_position
            } else {
                None
            },
            effect,
            process: operation.process(),
            when: operation.describe_when(),
        });
    }
    for ops in keys.values_mut() {
        ops.sort_by_key(|op| op.call);
    }
    (keys, foreign_count)
}

/// Checks each register's operations for linearizability, and its final reads for lost
/// writes.
pub fn check(operations: &[Operation<'_>]) -> Checked {
    check_within(operations, STATES_PER_KEY_MAX)
}

/// [`check`], with each key's search bounded by `states_max` states.
fn check_within(operations: &[Operation<'_>], states_max: usize) -> Checked {
    let (keys, foreign_count) = by_key(operations);
    let mut findings = Vec::new();
    let mut lost_writes = Vec::new();
    let mut notes = Vec::new();
    let mut unchecked_count = 0;
    let mut without_final_count = 0;
    for (&key, ops) in &keys {
        let is_final = |op: &RegisterOp| matches!(op.process, Process::Final(_));
        let has_final = ops.iter().any(is_final);
        if !has_final {
            without_final_count += 1;
        }
        match search(key, ops, states_max) {
            Search::Linearizable => {}
            Search::TooLarge(states) => {
                unchecked_count += 1;
                notes.push(format!(
                    "key {key} not checked: {states} states of its {} operations searched \
                     without a verdict",
                    ops.len()
                ));
            }
            Search::Not(text) => {
                let clients: Vec<RegisterOp> =
                    ops.iter().filter(|op| !is_final(op)).cloned().collect();
                if has_final && search(key, &clients, states_max) == Search::Linearizable {
                    lost_writes.push(lost_write_text(key, ops));
                }
                findings.push(Finding {
                    class: "nonlinearizable".into(),
                    checker: "register".into(),
                    text,
                });
            }
        }
    }
    notes.insert(
        0,
        format!(
            "{} registers checked for linearizability ({} operations); {unchecked_count} too \
             large to search",
            keys.len(),
            keys.values().map(Vec::len).sum::<usize>()
        ),
    );
    if without_final_count > 0 {
        notes.push(format!(
            "{without_final_count} registers had no final read: their last writes were not \
             checked for loss"
        ));
    }
    if foreign_count > 0 {
        notes.push(format!(
            "{foreign_count} operations that are not register operations were ignored"
        ));
    }
    findings.extend(lost_writes.iter().map(|text| Finding {
        class: "lost-write".into(),
        checker: "register".into(),
        text: text.clone(),
    }));
    Checked {
        verdicts: vec![Verdict {
            checker: "register".into(),
            valid: findings.is_empty(),
            notes,
        }],
        findings,
        lost_writes,
    }
}

/// A key whose client operations linearize but whose final read does not follow them: the
/// final read, and the acknowledged writes that ended last.
fn lost_write_text(key: u64, ops: &[RegisterOp]) -> String {
    /// Writes named in the text, the latest first.
    const NAMED_MAX: usize = 3;
    let finals: Vec<String> = ops
        .iter()
        .filter(|op| matches!(op.process, Process::Final(_)))
        .map(|op| op.describe(key))
        .collect();
    let mut writes: Vec<&RegisterOp> = ops
        .iter()
        .filter(|op| op.ret.is_some() && !matches!(op.effect, Effect::Read(_)))
        .collect();
    writes.sort_by_key(|op| std::cmp::Reverse(op.ret));
    let named: Vec<String> = writes
        .iter()
        .take(NAMED_MAX)
        .map(|op| op.describe(key))
        .collect();
    let latest = if named.is_empty() {
        "no acknowledged write".to_string()
    } else {
        format!(
            "the acknowledged writes that ended last: {}",
            named.join("; ")
        )
    };
    format!(
        "key {key}: the final read {} cannot follow the key's acknowledged writes in any order \
         real time allows ({latest})",
        finals.join(", ")
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::check::test_history::Builder;
    use crate::check::{Workload, check as check_history};
    use acre_nvm_log::random::{Replay, SplitMix, for_each_seed};

    fn read(key: u64, value: Option<u64>) -> Value {
        Value::Read { key, value }
    }

    fn write(key: u64, value: u64) -> Value {
        Value::Write { key, value }
    }

    fn cas(key: u64, from: u64, to: u64) -> Value {
        Value::Cas { key, from, to }
    }

    fn checked(history: &Builder) -> Checked {
        check_history(&Workload::Register, &history.ops)
    }

    #[test]
    fn overlapping_operations_may_take_effect_in_either_order() {
        // The writes overlap and so does the read, which sees the write invoked first: it took
        // effect second. Then the cas finds the value the read saw, and the failed cas has
        // no effect.
        let mut history = Builder::default();
        history.invoke(0, write(1, 1));
        history.invoke(1, write(1, 2));
        history.invoke(2, read(1, None));
        history.complete(1, Kind::Ok, write(1, 2));
        history.complete(0, Kind::Ok, write(1, 1));
        history.complete(2, Kind::Ok, read(1, Some(1)));
        history.run(0, Kind::Ok, cas(1, 1, 3), cas(1, 1, 3));
        history.run(1, Kind::Fail, cas(1, 1, 4), cas(1, 1, 4));
        history.final_read(0, read(1, None), read(1, Some(3)));
        // Another register, read before any write.
        history.run(2, Kind::Ok, read(2, None), read(2, None));
        let checked = checked(&history);
        assert!(checked.valid(), "{checked:#?}");
        assert!(
            checked.verdicts[0].notes[0].starts_with("2 registers checked"),
            "{checked:#?}"
        );
    }

    #[test]
    fn a_stale_read_is_not_linearizable() {
        // The write of 2 ended before the read began, which still saw 1.
        let mut history = Builder::default();
        history.run(0, Kind::Ok, write(1, 1), write(1, 1));
        history.run(0, Kind::Ok, write(1, 2), write(1, 2));
        history.run(1, Kind::Ok, read(1, None), read(1, Some(1)));
        let checked = checked(&history);
        assert!(!checked.valid());
        assert_eq!(checked.classes(), ["nonlinearizable"], "{checked:#?}");
        let text = &checked.findings[0].text;
        assert!(
            text.contains("of its 3 acknowledged operations, at most 2 take effect"),
            "{text}"
        );
        assert!(text.contains("op 4 (read of key 1 = 1; client 1"), "{text}");
        assert!(
            text.ends_with("the register holding 2 in every such order"),
            "{text}"
        );
        // No final read, so no lost write: the stale read is the anomaly.
        assert!(checked.lost_writes.is_empty(), "{checked:#?}");
    }

    #[test]
    fn info_writes_may_take_effect_late_or_never() {
        let mut history = Builder::default();
        // Client 0's write of 5 has an unknown outcome: it takes effect after the write of 6
        // (the first read sees 6, the second 5) ...
        history.run(0, Kind::Info, write(1, 5), write(1, 5));
        history.run(1, Kind::Ok, write(1, 6), write(1, 6));
        history.run(1, Kind::Ok, read(1, None), read(1, Some(6)));
        history.run(1, Kind::Ok, read(1, None), read(1, Some(5)));
        // ... and client 2's cas of 5 to 7, never: the final read still sees 5.
        history.run(2, Kind::Info, cas(1, 5, 7), cas(1, 5, 7));
        // A read whose result is unknown says nothing.
        history.run(3, Kind::Info, read(1, None), read(1, Some(99)));
        history.final_read(0, read(1, None), read(1, Some(5)));
        let checked = checked(&history);
        assert!(checked.valid(), "{checked:#?}");
        // Were client 0's write acknowledged, the first read could not see 6 after it... as
        // the second read must see 5 after the 6: not linearizable.
        let mut ops = history.ops.clone();
        ops[1].kind = Kind::Ok;
        let checked = check_history(&Workload::Register, &ops);
        assert_eq!(checked.classes(), ["nonlinearizable"], "{checked:#?}");
    }

    #[test]
    fn an_acknowledged_cas_found_the_value_it_expected() {
        let mut history = Builder::default();
        history.run(0, Kind::Ok, write(1, 1), write(1, 1));
        history.run(0, Kind::Ok, cas(1, 2, 3), cas(1, 2, 3));
        let checked = checked(&history);
        assert_eq!(checked.classes(), ["nonlinearizable"], "{checked:#?}");
        assert!(
            checked.findings[0]
                .text
                .contains("op 2 (cas of key 1 from 2 to 3; client 0"),
            "{checked:#?}"
        );
    }

    #[test]
    fn a_failed_write_never_took_effect() {
        let mut history = Builder::default();
        history.run(0, Kind::Fail, write(1, 1), write(1, 1));
        history.run(1, Kind::Ok, read(1, None), read(1, None));
        assert!(checked(&history).valid());
        history.run(1, Kind::Ok, read(1, None), read(1, Some(1)));
        let checked = checked(&history);
        assert_eq!(checked.classes(), ["nonlinearizable"], "{checked:#?}");
    }

    #[test]
    fn an_acknowledged_write_missing_from_the_final_read_is_lost() {
        let mut history = Builder::default();
        history.run(0, Kind::Ok, write(1, 1), write(1, 1));
        history.run(0, Kind::Ok, cas(1, 1, 2), cas(1, 1, 2));
        history.final_read(0, read(1, None), read(1, Some(1)));
        let checked = checked(&history);
        assert_eq!(
            checked.classes(),
            ["lost-write", "nonlinearizable"],
            "{checked:#?}"
        );
        assert_eq!(checked.lost_writes.len(), 1, "{checked:#?}");
        let text = &checked.lost_writes[0];
        assert!(
            text.starts_with("key 1: the final read op 4 (read of key 1 = 1"),
            "{text}"
        );
        assert!(
            text.contains("ended last: op 2 (cas of key 1 from 1 to 2; client 0"),
            "{text}"
        );
    }

    /// A register history from a few clients over two keys, each operation taking effect at
    /// one instant between its invocation and its completion against a model, so
    /// linearizable by construction: writes and compare-and-sets may fail before they run
    /// (and a compare-and-set that finds another value fails), any operation may end `info`
    /// before or after it runs, and a final read of each key ends it.
    fn random_registers(seed: u64, op_count: u64) -> Vec<crate::history::Op> {
        const CLIENT_COUNT: u64 = 3;
        const KEY_COUNT: u64 = 2;
        /// Few values, so that compare-and-sets often find the value they expect.
        const VALUE_COUNT: u64 = 4;
        let mut rng = SplitMix::new(seed);
        let mut registers: Vec<Option<u64>> = vec![None; KEY_COUNT as usize];
        let mut history = Builder::default();
        /// A client's operation: invoked and not run, or run (its completion's kind and value).
        enum Pending {
            Invoked(Value),
            Ran(Kind, Value),
        }
        let mut clients: Vec<(u32, Option<Pending>)> =
            (0..CLIENT_COUNT as u32).map(|n| (n, None)).collect();
        let mut next_process = CLIENT_COUNT as u32;
        let mut started_count = 0;
        while started_count < op_count || clients.iter().any(|(_, op)| op.is_some()) {
            let client = &mut clients[rng.below(CLIENT_COUNT) as usize];
            let process = client.0;
            let mut gave_up = false;
            match client.1.take() {
                None if started_count < op_count => {
                    let key = rng.below(KEY_COUNT);
                    let value = match rng.below(3) {
                        0 => read(key, None),
                        1 => write(key, rng.below(VALUE_COUNT)),
                        _ => cas(key, rng.below(VALUE_COUNT), rng.below(VALUE_COUNT)),
                    };
                    history.invoke(process, value.clone());
                    started_count += 1;
                    client.1 = Some(Pending::Invoked(value));
                }
                None => {}
                Some(Pending::Invoked(invoked)) => match rng.below(12) {
                    0 if !matches!(invoked, Value::Read { .. }) => {
                        history.complete(process, Kind::Fail, invoked);
                    }
                    1 => {
                        history.complete(process, Kind::Info, invoked);
                        gave_up = true;
                    }
                    _ => {
                        let ran = match invoked {
                            Value::Read { key, .. } => {
                                (Kind::Ok, read(key, registers[key as usize]))
                            }
                            Value::Write { key, value } => {
                                registers[key as usize] = Some(value);
                                (Kind::Ok, invoked)
                            }
                            Value::Cas { key, from, to } => {
                                if registers[key as usize] == Some(from) {
                                    registers[key as usize] = Some(to);
                                    (Kind::Ok, invoked)
                                } else {
                                    (Kind::Fail, invoked)
                                }
                            }
                            _ => unreachable!("only register operations are invoked"),
                        };
                        client.1 = Some(Pending::Ran(ran.0, ran.1));
                    }
                },
                Some(Pending::Ran(kind, value)) => {
                    if rng.below(10) == 0 {
                        history.complete(process, Kind::Info, value);
                        gave_up = true;
                    } else {
                        history.complete(process, kind, value);
                    }
                }
            }
            if gave_up {
                client.0 = next_process;
                next_process += 1;
            }
        }
        for key in 0..KEY_COUNT {
            history.final_read(0, read(key, None), read(key, registers[key as usize]));
        }
        history.ops
    }

    #[test]
    fn random_linearizable_histories_are_valid() {
        for_each_seed(40, Replay::Exact, |seed| {
            let ops = random_registers(seed, 80);
            let checked = check_history(&Workload::Register, &ops);
            assert!(checked.valid(), "seed={seed}\n{checked:#?}");
        });
    }

    #[test]
    fn a_read_of_a_value_never_written_is_caught() {
        for_each_seed(40, Replay::Exact, |seed| {
            let mut ops = random_registers(seed, 80);
            let mut rng = SplitMix::new(seed);
            let reads: Vec<usize> = (0..ops.len())
                .filter(|&i| ops[i].kind == Kind::Ok && matches!(ops[i].value, Value::Read { .. }))
                .collect();
            let position = reads[rng.below(reads.len() as u64) as usize];
            let Value::Read { value, .. } = &mut ops[position].value else {
                unreachable!("a read was chosen");
            };
            *value = Some(1000);
            let checked = check_history(&Workload::Register, &ops);
            // (A final read so changed is a lost write as well.)
            assert!(
                checked.classes().contains(&"nonlinearizable"),
                "seed={seed} entry {position}\n{checked:#?}"
            );
        });
    }

    #[test]
    fn writes_of_unknown_outcome_nobody_observes_do_not_blow_up_the_search() {
        // 40 clients died writing values nobody reads, while a stale read happened: the
        // search needs no subset of their writes to find no order explains the read.
        let mut history = Builder::default();
        let dead_count = 40;
        for client in 0..dead_count {
            history.invoke(client, write(1, u64::from(client)));
        }
        history.run(dead_count, Kind::Ok, write(1, 1000), write(1, 1000));
        history.run(dead_count, Kind::Ok, write(1, 2000), write(1, 2000));
        history.run(dead_count, Kind::Ok, read(1, None), read(1, Some(1000)));
        // A compare-and-set of unknown outcome to a value a read returns keeps the write it
        // expects: 7, then 8, then a read of 8 needs both.
        history.invoke(dead_count + 1, write(2, 7));
        history.invoke(dead_count + 2, cas(2, 7, 8));
        history.run(dead_count, Kind::Ok, read(2, None), read(2, Some(8)));
        let operations = crate::check::operations(&history.ops).unwrap();
        let checked = check_within(&operations, 10_000);
        assert_eq!(checked.findings.len(), 1, "{checked:#?}");
        assert!(
            checked.findings[0].text.starts_with("key 1 is not"),
            "{checked:#?}"
        );
    }

    #[test]
    fn a_history_too_large_to_search_is_reported_unchecked() {
        // Many concurrent acknowledged writes of distinct values, and a read no order
        // explains: the search tries every order of them before it gives up.
        let mut history = Builder::default();
        let writer_count = 40;
        for client in 0..writer_count {
            history.invoke(client, write(1, u64::from(client)));
        }
        for client in 0..writer_count {
            history.complete(client, Kind::Ok, write(1, u64::from(client)));
        }
        history.run(writer_count, Kind::Ok, read(1, None), read(1, Some(1000)));
        let operations = crate::check::operations(&history.ops).unwrap();
        let checked = check_within(&operations, 10_000);
        assert!(checked.findings.is_empty(), "{checked:#?}");
        let notes = &checked.verdicts[0].notes;
        assert!(notes[0].ends_with("1 too large to search"), "{notes:?}");
        assert!(notes[1].starts_with("key 1 not checked"), "{notes:?}");
    }
}
