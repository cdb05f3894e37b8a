//! A list-append history checked: its transactions as the [`elle`] checker sees them, and the
//! acknowledged appends that the final reads must show.
//!
//! How each transaction counts, by its completion:
//! - `ok`: committed, from its invocation to its completion, with the lists its reads returned
//!   (a read with no list counts as the empty list, as in Elle).
//! - `fail`: aborted; a read that shows one of its appends is G1a.
//! - `info` (or never completed): it may have committed, at any time after its invocation. If
//!   some read shows one of its appends, it did commit: it is checked as committed, with no end
//!   (real time orders nothing after it), and all of its appends must then be in the final
//!   reads as any acknowledged append must. If no read shows any of them, it is left out:
//!   nothing proves it committed, and nothing it did is visible. Its reads are never used: an
//!   `info` completion's reads may come from an attempt that did not commit (Jepsen records
//!   none), and the Elle JSON export leaves them out the same way.
//!
//! Final reads (`Process::Final`) are ordinary read-only transactions to `elle`, started after
//! everything else ended, so real time makes every acknowledged append they miss a cycle when
//! another read saw it; the lost-writes check also catches the appends no other read saw.

use super::elle::{self, END_UNKNOWN, History, MicroOp, TxnRecord};
use super::{Checked, Operation, list_text};
use crate::history::{Kind, Micro, Op, Process, Value};
use crate::results::{Finding, Verdict};
use std::collections::{BTreeMap, HashSet};

/// A history converted for [`elle::check`], with what the conversion decided.
#[derive(Clone, Debug, Default)]
pub struct Converted {
    pub history: History,
    /// `info` transactions a read proved committed, by their invocation's index.
    pub info_committed: Vec<u64>,
    /// `info` transactions left out, as no read showed any of their appends.
    pub info_left_out: Vec<u64>,
    /// Operations that are not transactions (another workload's), by invocation index.
    pub foreign: Vec<u64>,
}

fn micro_ops(micros: &[Micro], with_reads: bool) -> Vec<MicroOp> {
    micros
        .iter()
        .filter_map(|micro| match micro {
            Micro::Append { key, value } => Some(MicroOp::Append {
                key: *key,
                value: *value,
            }),
            Micro::Read { key, list } => with_reads.then(|| MicroOp::Read {
                key: *key,
                list: list.clone().unwrap_or_default(),
            }),
        })
        .collect()
}

fn appends(micros: &[Micro]) -> impl Iterator<Item = (u64, u64)> + '_ {
    micros.iter().filter_map(|micro| match *micro {
        Micro::Append { key, value } => Some((key, value)),
        Micro::Read { .. } => None,
    })
}

/// The transactions of `operations` as [`elle::check`] takes them; a transaction's id is its
/// invocation's index in the history.
pub fn convert(operations: &[Operation<'_>]) -> Converted {
    let mut converted = Converted::default();
    let mut info: Vec<(&Operation<'_>, &[Micro])> = Vec::new();
    for operation in operations {
        let Value::Txn { ops: micros } = operation.value() else {
            converted.foreign.push(operation.index());
            continue;
        };
        match operation.outcome() {
            Kind::Ok => converted.history.txns.push(TxnRecord {
                id: operation.index(),
                ops: micro_ops(micros, true),
                start_ns: operation.invocation.time_ns,
                end_ns: operation.completion.map_or(END_UNKNOWN, |c| c.time_ns),
            }),
            Kind::Fail => converted.history.aborted_appends.extend(appends(micros)),
            Kind::Info | Kind::Invoke => info.push((operation, micros)),
        }
    }
    // What the committed transactions read: an info transaction's reads are never used, so
    // one pass over the committed ones sees every read that can prove a commit.
    let mut observed: HashSet<(u64, u64)> = HashSet::new();
    for txn in &converted.history.txns {
        for op in &txn.ops {
            if let MicroOp::Read { key, list } = op {
                observed.extend(list.iter().map(|&value| (*key, value)));
            }
        }
    }
    for (operation, micros) in info {
        if appends(micros).any(|append| observed.contains(&append)) {
            converted.info_committed.push(operation.index());
            converted.history.txns.push(TxnRecord {
                id: operation.index(),
                ops: micro_ops(micros, false),
                start_ns: operation.invocation.time_ns,
                end_ns: END_UNKNOWN,
            });
        } else {
            converted.info_left_out.push(operation.index());
        }
    }
    converted
}

/// The appends that committed (acknowledged, or `info` proved committed) and are missing from
/// a final read of their key, in words; and a note of what was checked.
fn lost_appends(
    operations: &[Operation<'_>],
    converted: &Converted,
) -> (Vec<String>, Option<String>) {
    // key -> (final reader's index, list) for every final read.
    let mut final_lists: BTreeMap<u64, Vec<(u64, &[u64])>> = BTreeMap::new();
    for operation in operations {
        if !matches!(operation.process(), Process::Final(_)) || operation.outcome() != Kind::Ok {
            continue;
        }
        let Value::Txn { ops: micros } = operation.value() else {
            continue;
        };
        for micro in micros {
            if let Micro::Read {
                key,
                list: Some(list),
            } = micro
            {
                final_lists
                    .entry(*key)
                    .or_default()
                    .push((operation.index(), list));
            }
        }
    }
    if final_lists.is_empty() {
        return (
            Vec::new(),
            Some("no final read: no acknowledged append was checked for loss".into()),
        );
    }
    let info_committed: HashSet<u64> = converted.info_committed.iter().copied().collect();
    let mut lost = Vec::new();
    let mut checked_count = 0;
    for operation in operations {
        let Value::Txn { ops: micros } = operation.value() else {
            continue;
        };
        let how = match operation.outcome() {
            Kind::Ok => "acknowledged".to_string(),
            _ if info_committed.contains(&operation.index()) => {
                "outcome unknown to its client, but a read showed it committed".to_string()
            }
            _ => continue,
        };
        for (key, value) in appends(micros) {
            let Some(reads) = final_lists.get(&key) else {
                continue;
            };
            checked_count += 1;
            if let Some((reader, list)) = reads.iter().find(|(_, list)| !list.contains(&value)) {
                lost.push(format!(
                    "T{} appended {value} to key {key} ({how}; {}), but the final read T{reader} \
                     of key {key} = {} does not contain it",
                    operation.index(),
                    operation.describe_when(),
                    list_text(list)
                ));
            }
        }
    }
    let note = format!(
        "{checked_count} committed appends to the {} keys with a final read checked for loss",
        final_lists.len()
    );
    (lost, Some(note))
}

/// Checks a list-append history: `elle` (strict serializability), `lost-writes`, and with the
/// feature `adya` the adya crate's verdict. `ops` is the whole history (the adya cross-check
/// reads it in Elle's JSON form), `operations` its client operations.
pub fn check(ops: &[Op], operations: &[Operation<'_>]) -> Checked {
    let converted = convert(operations);
    let report = elle::check(&converted.history, true);
    let mut checked = Checked::default();
    let mut notes = vec![report.to_string().lines().next().unwrap_or("").to_string()];
    if !converted.info_committed.is_empty() || !converted.info_left_out.is_empty() {
        notes.push(format!(
            "{} transactions of unknown outcome: {} proved committed by a read and checked as \
             committed, {} left out (no read shows their appends)",
            converted.info_committed.len() + converted.info_left_out.len(),
            converted.info_committed.len(),
            converted.info_left_out.len()
        ));
    }
    if !converted.foreign.is_empty() {
        notes.push(format!(
            "{} operations that are not list-append transactions were ignored (first: op {})",
            converted.foreign.len(),
            converted.foreign[0]
        ));
    }
    checked.verdicts.push(Verdict {
        checker: "elle".into(),
        valid: report.is_valid(),
        notes,
    });
    checked
        .findings
        .extend(report.anomalies.iter().map(|anomaly| Finding {
            class: anomaly.class().into(),
            checker: "elle".into(),
            text: anomaly.to_string(),
        }));

    let (lost, note) = lost_appends(operations, &converted);
    checked.verdicts.push(Verdict {
        checker: "lost-writes".into(),
        valid: lost.is_empty(),
        notes: note.into_iter().collect(),
    });
    checked.findings.extend(lost.iter().map(|text| Finding {
        class: "lost-write".into(),
        checker: "lost-writes".into(),
        text: text.clone(),
    }));
    checked.lost_writes = lost;

    #[cfg(feature = "adya")]
    {
        let elle_valid = report
            .anomalies
            .iter()
            .all(|anomaly| super::adya::NOT_JUDGED_BY_ADYA.contains(&anomaly.class()));
        let (verdict, findings) = super::adya::cross_check(ops, elle_valid);
        checked.verdicts.push(verdict);
        checked.findings.extend(findings);
    }
    #[cfg(not(feature = "adya"))]
    let _ = ops;
    checked
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::check::test_history::{Builder, Drop, corrupt_a_read, random_list_append};
    use crate::check::{Workload, check as check_history};
    use acre_nvm_log::random::{Replay, SplitMix, for_each_seed};

    fn append(key: u64, value: u64) -> Micro {
        Micro::Append { key, value }
    }

    fn read(key: u64, list: &[u64]) -> Micro {
        Micro::Read {
            key,
            list: Some(list.to_vec()),
        }
    }

    /// The invocation's form of `micros`: reads not yet done.
    fn invoked(micros: &[Micro]) -> Value {
        Value::Txn {
            ops: micros
                .iter()
                .map(|micro| match micro {
                    Micro::Read { key, .. } => Micro::Read {
                        key: *key,
                        list: None,
                    },
                    append => append.clone(),
                })
                .collect(),
        }
    }

    fn txn(micros: &[Micro]) -> Value {
        Value::Txn {
            ops: micros.to_vec(),
        }
    }

    /// Runs a transaction on `client`, invoked and completed with `kind` at once.
    fn run(history: &mut Builder, client: u32, kind: Kind, micros: &[Micro]) -> u64 {
        history.run(client, kind, invoked(micros), txn(micros))
    }

    fn final_read(history: &mut Builder, micros: &[Micro]) -> u64 {
        history.final_read(0, invoked(micros), txn(micros))
    }

    fn checked(history: &Builder) -> Checked {
        check_history(&Workload::ListAppend, &history.ops)
    }

    /// The classes that `elle` and `lost-writes` found, each once, sorted (the adya
    /// cross-check's are its tests' business).
    fn elle_classes(checked: &Checked) -> Vec<&str> {
        let mut classes: Vec<&str> = checked
            .findings
            .iter()
            .filter(|finding| finding.checker != "adya")
            .map(|finding| finding.class.as_str())
            .collect();
        classes.sort_unstable();
        classes.dedup();
        classes
    }

    #[test]
    fn a_serial_history_with_failures_and_final_reads_is_valid() {
        let mut history = Builder::default();
        run(&mut history, 0, Kind::Ok, &[append(1, 1), read(2, &[])]);
        run(&mut history, 1, Kind::Fail, &[append(1, 2)]);
        run(&mut history, 1, Kind::Ok, &[read(1, &[1]), append(2, 3)]);
        history.push(
            Process::Nemesis,
            Kind::Invoke,
            Value::Fault(crate::history::Fault {
                class: "kill".into(),
                targets: vec![1],
                detail: "SIGKILL of n1".into(),
            }),
        );
        final_read(&mut history, &[read(1, &[1]), read(2, &[3])]);
        let checked = checked(&history);
        assert!(checked.valid(), "{checked:#?}");
        assert!(checked.findings.is_empty(), "{checked:#?}");
        assert!(
            checked.verdicts[1].notes[0].starts_with("2 committed appends"),
            "{checked:#?}"
        );
    }

    #[test]
    fn g_single_is_found_and_explained() {
        // T0 sees T2's append to key 2 but not its append to key 1, which T2 made first.
        let mut history = Builder::default();
        history.invoke(0, invoked(&[read(1, &[]), read(2, &[1])]));
        run(&mut history, 1, Kind::Ok, &[append(1, 1), append(2, 1)]);
        history.complete(0, Kind::Ok, txn(&[read(1, &[]), read(2, &[1])]));
        final_read(&mut history, &[read(1, &[1]), read(2, &[1])]);
        let checked = checked(&history);
        assert!(!checked.valid());
        assert_eq!(elle_classes(&checked), ["G-single"], "{checked:#?}");
        let text = &checked.findings[0].text;
        assert!(text.contains("T0 -rw-> T1: T0 read key 1 empty"), "{text}");
        assert!(text.contains("T1 -wr-> T0"), "{text}");
    }

    #[test]
    fn g2_is_found() {
        // Write skew: each reads the key the other appends to as empty.
        let mut history = Builder::default();
        history.invoke(0, invoked(&[read(1, &[]), append(2, 1)]));
        history.invoke(1, invoked(&[read(2, &[]), append(1, 1)]));
        history.complete(0, Kind::Ok, txn(&[read(1, &[]), append(2, 1)]));
        history.complete(1, Kind::Ok, txn(&[read(2, &[]), append(1, 1)]));
        final_read(&mut history, &[read(1, &[1]), read(2, &[1])]);
        let checked = checked(&history);
        assert_eq!(elle_classes(&checked), ["G2"], "{checked:#?}");
    }

    #[test]
    fn g1a_is_a_read_of_a_failed_append() {
        let mut history = Builder::default();
        run(&mut history, 0, Kind::Fail, &[append(1, 7)]);
        run(&mut history, 1, Kind::Ok, &[read(1, &[7])]);
        let checked = checked(&history);
        assert_eq!(elle_classes(&checked), ["G1a"], "{checked:#?}");
        assert!(
            checked.findings[0].text.contains("T2 read 7 in key 1"),
            "{checked:#?}"
        );
    }

    #[test]
    fn an_acknowledged_append_missing_from_the_final_read_is_lost() {
        // Nobody but the final read looks at key 1.
        let mut history = Builder::default();
        run(&mut history, 0, Kind::Ok, &[append(1, 1)]);
        run(&mut history, 0, Kind::Ok, &[append(1, 2)]);
        final_read(&mut history, &[read(1, &[1])]);
        let checked = checked(&history);
        assert!(!checked.valid());
        assert_eq!(checked.lost_writes.len(), 1, "{checked:#?}");
        let text = &checked.lost_writes[0];
        assert!(
            text.starts_with("T2 appended 2 to key 1 (acknowledged; client 0"),
            "{text}"
        );
        assert!(text.contains("final read T4 of key 1 = [1]"), "{text}");
        // elle sees it too: the final read began after T2 ended, without its append.
        assert_eq!(
            elle_classes(&checked),
            ["lost-write", "realtime"],
            "{checked:#?}"
        );
    }

    #[test]
    fn an_info_append_a_read_saw_counts_as_committed() {
        // T0's outcome is unknown; T2 read its append to key 1, so it committed, and its append
        // to key 2 must then be in the final read too.
        let mut history = Builder::default();
        run(&mut history, 0, Kind::Info, &[append(1, 5), append(2, 6)]);
        run(&mut history, 1, Kind::Ok, &[read(1, &[5])]);
        final_read(&mut history, &[read(1, &[5]), read(2, &[])]);
        let checked = checked(&history);
        // Its append is no value from nowhere (no garbage), but the final read sees half of
        // it: read skew, and real time puts the final read after T2, which saw T0.
        assert_eq!(
            elle_classes(&checked),
            ["G-single", "lost-write", "realtime"],
            "{checked:#?}"
        );
        assert_eq!(checked.lost_writes.len(), 1, "{checked:#?}");
        assert!(
            checked.lost_writes[0].contains("T0 appended 6 to key 2 (outcome unknown"),
            "{checked:#?}"
        );
        // Had the final read shown it too, all is well; had no read shown either append, the
        // transaction would be left out, committed or not.
        let mut history = Builder::default();
        run(&mut history, 0, Kind::Info, &[append(1, 5), append(2, 6)]);
        final_read(&mut history, &[read(1, &[5]), read(2, &[6])]);
        assert!(checked_valid(&history));
        let mut history = Builder::default();
        run(&mut history, 0, Kind::Info, &[append(1, 5), append(2, 6)]);
        final_read(&mut history, &[read(1, &[]), read(2, &[])]);
        assert!(checked_valid(&history));
    }

    fn checked_valid(history: &Builder) -> bool {
        let checked = checked(history);
        assert!(
            checked.findings.is_empty() == checked.valid(),
            "{checked:#?}"
        );
        checked.valid()
    }

    #[test]
    fn an_info_txn_proved_committed_obeys_the_cycle_rules() {
        // T0 (info) appended 1 to key 1 and 1 to key 2; T2 saw key 2 = [1] but key 1 empty:
        // read skew once T0 counts as committed.
        let mut history = Builder::default();
        history.invoke(0, invoked(&[append(1, 1), append(2, 1)]));
        run(&mut history, 1, Kind::Ok, &[read(1, &[]), read(2, &[1])]);
        history.complete(0, Kind::Info, txn(&[append(1, 1), append(2, 1)]));
        run(&mut history, 2, Kind::Ok, &[read(1, &[1])]);
        let checked = checked(&history);
        assert_eq!(elle_classes(&checked), ["G-single"], "{checked:#?}");
        assert!(
            checked.findings[0].text.contains("outcome unknown"),
            "{checked:#?}"
        );
    }

    #[test]
    fn an_info_txn_may_commit_after_its_client_gave_up() {
        // T0's client gave up on it before T2 began, and T2 does not see its append, which T4
        // does: T0 committed after T2, which real time allows as T0 has no known end.
        let mut history = Builder::default();
        run(&mut history, 0, Kind::Info, &[append(1, 5)]);
        run(&mut history, 1, Kind::Ok, &[read(1, &[])]);
        run(&mut history, 1, Kind::Ok, &[read(1, &[5])]);
        let checked = checked(&history);
        assert!(checked.valid(), "{checked:#?}");
        // Acknowledged instead, T0 ended before T2 began: T2's read is stale.
        let mut ops = history.ops.clone();
        ops[1].kind = Kind::Ok;
        let checked = check_history(&Workload::ListAppend, &ops);
        assert_eq!(elle_classes(&checked), ["realtime"], "{checked:#?}");
    }

    #[test]
    fn random_strictly_serializable_histories_are_valid() {
        for_each_seed(40, Replay::Exact, |seed| {
            let ops = random_list_append(seed, 60);
            let checked = check_history(&Workload::ListAppend, &ops);
            assert!(checked.valid(), "seed={seed}\n{checked:#?}");
        });
    }

    #[test]
    fn a_final_read_missing_an_acknowledged_append_is_caught() {
        let mut tested_count = 0;
        for_each_seed(40, Replay::Exact, |seed| {
            let mut ops = random_list_append(seed, 60);
            let mut rng = SplitMix::new(seed);
            let Some(corruption) = corrupt_a_read(&mut ops, &mut rng, Drop::AcknowledgedFinal)
            else {
                return;
            };
            let checked = check_history(&Workload::ListAppend, &ops);
            assert_eq!(
                checked.lost_writes.len(),
                1,
                "seed={seed} {corruption}\n{checked:#?}"
            );
            tested_count += 1;
        });
        assert!(tested_count > 0, "no seed's final read showed an append");
    }

    #[test]
    fn a_stale_final_read_seen_elsewhere_is_a_realtime_cycle_and_a_lost_write() {
        let mut history = Builder::default();
        run(&mut history, 0, Kind::Ok, &[append(1, 1)]);
        run(&mut history, 1, Kind::Ok, &[read(1, &[1])]);
        final_read(&mut history, &[read(1, &[])]);
        let checked = checked(&history);
        assert_eq!(
            elle_classes(&checked),
            ["lost-write", "realtime"],
            "{checked:#?}"
        );
    }
}
