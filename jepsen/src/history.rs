//! A history: every operation the harness's clients and nemesis did, in the order they
//! happened, as Jepsen records them.
//!
//! A client operation is two entries: its invocation (`invoke`) and its completion, which is
//! `ok` (it took effect), `fail` (it certainly did not) or `info` (nobody knows: a commit whose
//! outcome was not learned, a timeout, a client that died). A client process has at most one
//! operation outstanding; the completion repeats the invocation's value with what the
//! operation observed filled in (the balances a read returned, the lists a transaction read).
//! A client whose operation ended `info` never invokes again under the same process number
//! (as in Jepsen: the operation may still take effect at any later time, so the process is
//! "crashed" and a fresh one takes its place).
//!
//! The nemesis records each fault twice, as it starts and as it is healed. The final reads,
//! done after every fault is healed and the cluster settled, come from [`Process::Final`].
//!
//! Times are nanoseconds since the run started, on the harness's monotonic clock. The file
//! form is JSON lines (`history.jsonl`), one [`Op`] per line, in index order.

use serde::{Deserialize, Serialize};
use std::io::{self, BufRead, Write};

/// Who did an operation.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Process {
    /// A client worker (numbered from 0; a worker whose operation ended `info` takes the next
    /// free number).
    Client(u32),
    /// A final reader, after the faults were healed.
    Final(u32),
    /// The fault injector.
    Nemesis,
}

/// Which half of an operation an entry is, and how it ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Kind {
    Invoke,
    /// It took effect.
    Ok,
    /// It certainly did not take effect.
    Fail,
    /// Its outcome is unknown: it may have taken effect, at any time after its invocation.
    Info,
}

/// One entry of a history.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Op {
    /// Position in the history, from 0.
    pub index: u64,
    /// Nanoseconds since the run started.
    pub time_ns: u64,
    pub process: Process,
    #[serde(rename = "type")]
    pub kind: Kind,
    pub value: Value,
    /// Why a completion is `fail` or `info`, in words (the error's message).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

/// What an operation does (its invocation) and saw (its completion), per workload.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "f", rename_all = "kebab-case")]
pub enum Value {
    /// Bank: move `amount` from account `from` to account `to`, unless `from` holds less.
    Transfer { from: u32, to: u32, amount: u64 },
    /// Bank: read every account's balance in one transaction (`None` in the invocation).
    ReadBalances { balances: Option<Vec<u64>> },
    /// List-append: one transaction of micro-operations, run in order.
    Txn { ops: Vec<Micro> },
    /// Register: read one register (`None` in the invocation, and when it holds nothing).
    Read { key: u64, value: Option<u64> },
    /// Register: write one register.
    Write { key: u64, value: u64 },
    /// Register: compare-and-set: set `key` to `to` if it holds `from`; a completion `fail`
    /// means it did not hold `from`.
    Cas { key: u64, from: u64, to: u64 },
    /// Nemesis: a fault started (`invoke`) or was healed (`ok`).
    Fault(Fault),
}

/// One micro-operation of a list-append transaction.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "f", rename_all = "kebab-case")]
pub enum Micro {
    /// Append `value` to the list at `key`; a value is appended at most once per key in a run.
    Append { key: u64, value: u64 },
    /// Read the whole list at `key` (`None` in the invocation).
    Read { key: u64, list: Option<Vec<u64>> },
}

/// A fault the nemesis injected.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Fault {
    /// The nemesis class: `kill`, `pause`, `partition`, `clock`, `bitflip`.
    pub class: String,
    /// The node ids it hit.
    pub targets: Vec<u32>,
    /// What exactly, in words: "SIGKILL of n2 (primary of r1, r4)", "n1 | n2 n3".
    pub detail: String,
}

/// Writes `ops` as JSON lines.
pub fn write_jsonl(ops: &[Op], mut out: impl Write) -> io::Result<()> {
    for op in ops {
        serde_json::to_writer(&mut out, op)?;
        out.write_all(b"\n")?;
    }
    out.flush()
}

/// Reads a history written by [`write_jsonl`]; an unreadable line is an error naming it.
pub fn read_jsonl(input: impl BufRead) -> io::Result<Vec<Op>> {
    let mut ops = Vec::new();
    for (number, line) in input.lines().enumerate() {
        let line = line?;
        if line.trim().is_empty() {
            continue;
        }
        let op = serde_json::from_str(&line).map_err(|error| {
            io::Error::new(
                io::ErrorKind::InvalidData,
                format!("history line {}: {error}", number + 1),
            )
        })?;
        ops.push(op);
    }
    Ok(ops)
}

/// The completion of each invocation: `pairs(ops)[i]` is the index in `ops` of the entry that
/// completes `ops[i]` when `ops[i]` is a client invocation that completed, `None` otherwise.
/// A history whose process completes an operation it did not invoke, or invokes a second one
/// while one is outstanding, is malformed: the error says where.
pub fn pairs(ops: &[Op]) -> Result<Vec<Option<usize>>, String> {
    let mut open: std::collections::HashMap<Process, usize> = Default::default();
    let mut completion = vec![None; ops.len()];
    for (i, op) in ops.iter().enumerate() {
        if op.process == Process::Nemesis {
            continue;
        }
        match op.kind {
            Kind::Invoke => {
                if let Some(earlier) = open.insert(op.process, i) {
                    return Err(format!(
                        "entry {i}: {:?} invokes while entry {earlier} is outstanding",
                        op.process
                    ));
                }
            }
            _ => match open.remove(&op.process) {
                Some(invocation) => completion[invocation] = Some(i),
                None => {
                    return Err(format!(
                        "entry {i}: {:?} completes an operation it did not invoke",
                        op.process
                    ));
                }
            },
        }
    }
    Ok(completion)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn op(index: u64, process: Process, kind: Kind, value: Value) -> Op {
        Op {
            index,
            time_ns: index * 1000,
            process,
            kind,
            value,
            error: None,
        }
    }

    #[test]
    fn a_history_survives_its_file_form() {
        let ops = vec![
            op(
                0,
                Process::Client(0),
                Kind::Invoke,
                Value::Txn {
                    ops: vec![
                        Micro::Append { key: 1, value: 7 },
                        Micro::Read { key: 1, list: None },
                    ],
                },
            ),
            op(
                1,
                Process::Nemesis,
                Kind::Invoke,
                Value::Fault(Fault {
                    class: "kill".into(),
                    targets: vec![2],
                    detail: "SIGKILL of n2".into(),
                }),
            ),
            Op {
                error: Some("commit outcome unknown".into()),
                ..op(
                    2,
                    Process::Client(0),
                    Kind::Info,
                    Value::Txn {
                        ops: vec![
                            Micro::Append { key: 1, value: 7 },
                            Micro::Read {
                                key: 1,
                                list: Some(vec![7]),
                            },
                        ],
                    },
                )
            },
            op(
                3,
                Process::Final(0),
                Kind::Ok,
                Value::ReadBalances {
                    balances: Some(vec![5, 5]),
                },
            ),
        ];
        let mut file = Vec::new();
        write_jsonl(&ops, &mut file).unwrap();
        let text = String::from_utf8(file.clone()).unwrap();
        assert!(
            text.lines().next().unwrap().contains(r#""type":"invoke""#),
            "{text}"
        );
        assert!(text.contains(r#""f":"append""#), "{text}");
        assert_eq!(read_jsonl(&file[..]).unwrap(), ops);
    }

    #[test]
    fn a_bad_line_is_named() {
        let error = read_jsonl(&b"\n{}\n"[..]).unwrap_err();
        assert!(error.to_string().contains("history line 2"), "{error}");
    }

    #[test]
    fn completions_pair_with_their_invocations_per_process() {
        let read = || Value::Read {
            key: 1,
            value: None,
        };
        let ops = vec![
            op(0, Process::Client(0), Kind::Invoke, read()),
            op(1, Process::Client(1), Kind::Invoke, read()),
            op(2, Process::Client(1), Kind::Ok, read()),
            op(3, Process::Client(0), Kind::Info, read()),
            op(4, Process::Client(2), Kind::Invoke, read()),
        ];
        assert_eq!(
            pairs(&ops).unwrap(),
            vec![Some(3), Some(2), None, None, None]
        );
        let twice = vec![ops[0].clone(), ops[0].clone()];
        assert!(pairs(&twice).unwrap_err().contains("outstanding"));
    }
}
