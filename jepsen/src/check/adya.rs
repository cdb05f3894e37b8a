//! The list-append history in Elle's JSON form, and (with the feature `adya`) the verdict of
//! the adya crate, an independent implementation of Elle's analysis, on it: a second opinion
//! on the [`super::elle`] checker.
//!
//! Elle's form is one JSON object a line: `{"index", "time", "type", "process", "f", "value"}`,
//! a transaction's value a list of `["append", key, value]` and `["r", key, list]`, `null` for
//! a read not done or not known. Final readers get process numbers from
//! [`FINAL_PROCESS_BASE`] on, after the clients'; the nemesis's entries keep their place with
//! process `"nemesis"` and their fault class as `f`, which Elle's readers skip. An `info`
//! completion's reads are written `null`, as Jepsen records them: they may come from an
//! attempt that did not commit ([`super::list_append`] ignores them for the same reason).
//!
//! When the two checkers disagree (one finds the history valid, the other not), the run is
//! invalid and a `checker-disagreement` finding says which said what: one of them is wrong, or
//! sees what the other cannot (adya places an append no read saw after every element the
//! longest read shows; `elle` gives such an append no place).

use crate::history::{Kind, Micro, Op, Process, Value};
use serde_json::{Value as Json, json};

/// The `elle` anomaly classes that adya 0.1 does not judge, left out of the comparison: a
/// value no transaction appended (adya reports nothing), and a value appended twice (adya
/// calls the history undecidable and leaves that out of its verdict). Both still make the run
/// invalid through `elle`.
pub const NOT_JUDGED_BY_ADYA: &[&str] = &["garbage", "duplicate-append"];

/// Final reader `n` is process `FINAL_PROCESS_BASE + n` in Elle's form.
pub const FINAL_PROCESS_BASE: i64 = 1_000_000_000;

fn kind_name(kind: Kind) -> &'static str {
    match kind {
        Kind::Invoke => "invoke",
        Kind::Ok => "ok",
        Kind::Fail => "fail",
        Kind::Info => "info",
    }
}

/// One entry in Elle's form, `None` for one that is neither a transaction nor a fault.
fn entry(op: &Op) -> Option<Json> {
    let process = match op.process {
        Process::Client(n) => json!(n),
        Process::Final(n) => json!(FINAL_PROCESS_BASE + i64::from(n)),
        Process::Nemesis => json!("nemesis"),
    };
    let (f, value) = match &op.value {
        Value::Txn { ops: micros } => {
            let reads_known = op.kind != Kind::Info;
            let micros: Vec<Json> = micros
                .iter()
                .map(|micro| match micro {
                    Micro::Append { key, value } => json!(["append", key, value]),
                    Micro::Read { key, list } => {
                        let list = list.as_ref().filter(|_| reads_known);
                        json!(["r", key, list])
                    }
                })
                .collect();
            (json!("txn"), Json::Array(micros))
        }
        Value::Fault(fault) => (json!(fault.class), json!(fault.detail)),
        _ => return None,
    };
    Some(json!({
        "index": op.index,
        "time": op.time_ns,
        "type": kind_name(op.kind),
        "process": process,
        "f": f,
        "value": value,
    }))
}

/// The list-append history `ops` in Elle's JSON lines form (what elle-cli and adya read).
/// Entries of other workloads are left out.
pub fn elle_json(ops: &[Op]) -> String {
    let mut out = String::new();
    for json in ops.iter().filter_map(entry) {
        out.push_str(&json.to_string());
        out.push('\n');
    }
    out
}

/// adya's verdict on the list-append history `ops` (strict serializability), and its findings:
/// its anomalies, and a `checker-disagreement` when `elle_valid` (whether `elle` found no
/// anomaly outside [`NOT_JUDGED_BY_ADYA`]) says otherwise. adya's "unknown" (too little to go
/// on, or a search that timed out) counts as no objection, with a note.
#[cfg(feature = "adya")]
pub fn cross_check(
    ops: &[Op],
    elle_valid: bool,
) -> (crate::results::Verdict, Vec<crate::results::Finding>) {
    use crate::results::{Finding, Verdict};
    let finding = |class: &str, text: String| Finding {
        class: class.into(),
        checker: "adya".into(),
        text,
    };
    let history = match ::adya::History::from_json(&elle_json(ops)) {
        Ok(history) => history,
        Err(error) => {
            let text = format!("adya could not read the history's Elle form: {error}");
            return (
                Verdict {
                    checker: "adya".into(),
                    valid: false,
                    notes: vec![text.clone()],
                },
                vec![finding("checker-error", text)],
            );
        }
    };
    let options = ::adya::Opts {
        models: vec!["strict-serializable".into()],
        ..::adya::Opts::default()
    };
    let report = ::adya::check(&history, ::adya::Workload::ListAppend, &options);
    let mut notes = Vec::new();
    let mut findings = Vec::new();
    let adya_valid = match report.valid {
        ::adya::Valid::True => Some(true),
        ::adya::Valid::False => Some(false),
        ::adya::Valid::Unknown => None,
    };
    match adya_valid {
        Some(true) => notes.push("strict serializable".to_string()),
        Some(false) => {
            notes.push(format!("not {}", report.not.join(", ")));
            for anomalies in report.anomalies.values() {
                for anomaly in anomalies {
                    findings.push(finding(&anomaly.kind, anomaly.explanation.clone()));
                }
            }
        }
        None => notes.push(format!(
            "undecided: {} (counted as no objection)",
            report.anomaly_types.join(", ")
        )),
    }
    if let Some(adya_valid) = adya_valid
        && adya_valid != elle_valid
    {
        let say = |valid: bool| if valid { "valid" } else { "invalid" };
        let text = format!(
            "adya finds the history {} and elle finds it {}: one of the checkers is wrong, or \
             sees what the other cannot (see both checkers' findings)",
            say(adya_valid),
            say(elle_valid)
        );
        notes.push(text.clone());
        findings.push(finding("checker-disagreement", text));
    }
    let verdict = Verdict {
        checker: "adya".into(),
        // A disagreement makes the run invalid whichever checker objected.
        valid: adya_valid != Some(false) && adya_valid.is_none_or(|v| v == elle_valid),
        notes,
    };
    (verdict, findings)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::check::test_history::Builder;
    use crate::history::Fault;

    fn txn(micros: Vec<Micro>) -> Value {
        Value::Txn { ops: micros }
    }

    #[cfg(feature = "adya")]
    mod cross_check {
        use super::super::cross_check;
        use crate::check::test_history::{Builder, Drop, corrupt_a_read, random_list_append};
        use crate::check::{Checked, Workload, check};
        use crate::history::{Kind, Micro, Op, Value};
        use acre_nvm_log::random::{Replay, SplitMix, for_each_seed};

        fn verdict<'c>(checked: &'c Checked, checker: &str) -> &'c crate::results::Verdict {
            let found = checked.verdicts.iter().find(|v| v.checker == checker);
            found.unwrap_or_else(|| panic!("no {checker} verdict in {checked:#?}"))
        }

        /// Write skew between two transactions whose appends a final read shows.
        fn write_skew() -> Vec<Op> {
            let txn = |micros: Vec<Micro>| Value::Txn { ops: micros };
            let mut history = Builder::default();
            let first = vec![
                Micro::Read {
                    key: 1,
                    list: Some(vec![]),
                },
                Micro::Append { key: 2, value: 1 },
            ];
            let second = vec![
                Micro::Read {
                    key: 2,
                    list: Some(vec![]),
                },
                Micro::Append { key: 1, value: 1 },
            ];
            history.invoke(0, txn(first.clone()));
            history.invoke(1, txn(second.clone()));
            history.complete(0, Kind::Ok, txn(first));
            history.complete(1, Kind::Ok, txn(second));
            let reads = vec![
                Micro::Read {
                    key: 1,
                    list: Some(vec![1]),
                },
                Micro::Read {
                    key: 2,
                    list: Some(vec![1]),
                },
            ];
            history.final_read(0, txn(reads.clone()), txn(reads));
            history.ops
        }

        #[test]
        fn what_adya_does_not_judge_is_no_disagreement() {
            // A value nobody appended: elle calls it garbage, adya 0.1 sees nothing wrong.
            let txn = |micros: Vec<Micro>| Value::Txn { ops: micros };
            let mut history = Builder::default();
            let append = vec![Micro::Append { key: 1, value: 1 }];
            history.run(0, Kind::Ok, txn(append.clone()), txn(append));
            let read = vec![
                Micro::Read {
                    key: 1,
                    list: Some(vec![1, 9]),
                },
                Micro::Append { key: 2, value: 3 },
            ];
            history.run(1, Kind::Ok, txn(read.clone()), txn(read));
            let checked = check(&Workload::ListAppend, &history.ops);
            assert!(!checked.valid(), "{checked:#?}");
            assert_eq!(checked.classes(), ["garbage"], "{checked:#?}");
            assert!(verdict(&checked, "adya").valid, "{checked:#?}");
        }

        #[test]
        fn adya_finds_what_elle_finds() {
            let checked = check(&Workload::ListAppend, &write_skew());
            assert!(!verdict(&checked, "adya").valid, "{checked:#?}");
            let adya_classes: Vec<&str> = checked
                .findings
                .iter()
                .filter(|f| f.checker == "adya")
                .map(|f| f.class.as_str())
                .collect();
            assert_eq!(adya_classes, ["G2-item"], "{checked:#?}");
        }

        #[test]
        fn a_disagreement_is_a_finding_and_makes_the_run_invalid() {
            // adya finds write skew where (as if) elle found nothing ...
            let (verdict, findings) = cross_check(&write_skew(), true);
            assert!(!verdict.valid, "{verdict:?}");
            let disagreement = findings
                .iter()
                .find(|f| f.class == "checker-disagreement")
                .unwrap_or_else(|| panic!("no disagreement in {findings:#?}"));
            assert!(
                disagreement
                    .text
                    .starts_with("adya finds the history invalid and elle finds it valid"),
                "{disagreement:?}"
            );
            // ... and finds nothing where (as if) elle found something.
            let (verdict, findings) = cross_check(&random_list_append(1, 30), false);
            assert!(!verdict.valid, "{verdict:?}");
            assert_eq!(findings.len(), 1, "{findings:#?}");
            assert_eq!(findings[0].class, "checker-disagreement");
        }

        #[test]
        fn adya_and_elle_agree_on_random_histories() {
            // Stale reads: some are still valid (the dropped element's transaction overlaps
            // the reader), the others cycles through real time or rw edges.
            let (mut valid_count, mut invalid_count) = (0, 0);
            for_each_seed(40, Replay::Exact, |seed| {
                let ops = random_list_append(seed, 60);
                let checked = check(&Workload::ListAppend, &ops);
                assert!(checked.valid(), "seed={seed}\n{checked:#?}");
                for drop in [Drop::Last, Drop::Any] {
                    let mut ops = ops.clone();
                    let mut rng = SplitMix::new(seed);
                    let Some(corruption) = corrupt_a_read(&mut ops, &mut rng, drop) else {
                        continue;
                    };
                    let checked = check(&Workload::ListAppend, &ops);
                    assert!(
                        !checked.classes().contains(&"checker-disagreement"),
                        "seed={seed} {corruption}\n{checked:#?}"
                    );
                    if verdict(&checked, "elle").valid {
                        valid_count += 1;
                    } else {
                        invalid_count += 1;
                    }
                }
            });
            assert!(
                valid_count > 5 && invalid_count > 10,
                "valid_count={valid_count} invalid_count={invalid_count}"
            );
        }
    }

    #[test]
    fn the_elle_form_names_its_fields_as_elle_does() {
        let mut history = Builder::default();
        history.run(
            0,
            Kind::Ok,
            txn(vec![
                Micro::Append { key: 1, value: 2 },
                Micro::Read { key: 3, list: None },
            ]),
            txn(vec![
                Micro::Append { key: 1, value: 2 },
                Micro::Read {
                    key: 3,
                    list: Some(vec![4]),
                },
            ]),
        );
        history.push(
            Process::Nemesis,
            Kind::Invoke,
            Value::Fault(Fault {
                class: "pause".into(),
                targets: vec![2],
                detail: "SIGSTOP of n2".into(),
            }),
        );
        history.run(
            1,
            Kind::Info,
            txn(vec![Micro::Read { key: 3, list: None }]),
            txn(vec![Micro::Read {
                key: 3,
                list: Some(vec![4]),
            }]),
        );
        history.final_read(
            2,
            txn(vec![Micro::Read { key: 3, list: None }]),
            txn(vec![Micro::Read {
                key: 3,
                list: Some(vec![4]),
            }]),
        );
        history.run(
            0,
            Kind::Ok,
            Value::Write { key: 1, value: 1 },
            Value::Write { key: 1, value: 1 },
        );
        let text = elle_json(&history.ops);
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines.len(), 7, "{text}");
        assert_eq!(
            lines[1],
            r#"{"f":"txn","index":1,"process":0,"time":2000000,"type":"ok","value":[["append",1,2],["r",3,[4]]]}"#
        );
        assert_eq!(
            lines[2],
            r#"{"f":"pause","index":2,"process":"nemesis","time":3000000,"type":"invoke","value":"SIGSTOP of n2"}"#
        );
        // An info completion's reads are unknown.
        assert!(
            lines[4].contains(r#""type":"info","value":[["r",3,null]]"#),
            "{text}"
        );
        assert!(lines[6].contains(r#""process":1000000002"#), "{text}");
    }
}
