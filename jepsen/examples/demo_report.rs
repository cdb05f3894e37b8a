//! Writes a report for a made-up bank run, to look at the report without a cluster:
//! `cargo run -p acre-jepsen --example demo_report -- DIR`, then open `DIR/report.html`.
//!
//! Five clients run transfers and balance reads for 10 s on 3 nodes. n2 is killed at 3 s:
//! the operations in flight end `info` after their 1 s timeout, new ones wait for the
//! reconfiguration (0.6 s) and some then fail while the promoted backups recover; n2 comes
//! back at 6 s, and a partition isolates n3 from 7.5 s to 8.5 s. The checkers' results are
//! invented too (one finding, one lost write), so every part of the page shows.

use acre_jepsen::history::{self, Fault, Kind, Op, Process, Value};
use acre_jepsen::report;
use acre_jepsen::results::{Finding, Results, Verdict};
use acre_jepsen::timeline::Timeline;
use std::path::PathBuf;

const RUN_MS: f64 = 10_000.0;
const CLIENT_COUNT: u32 = 5;
const ACCOUNT_COUNT: u32 = 8;
const TIMEOUT_MS: f64 = 1000.0;
const KILL_MS: (f64, f64) = (3000.0, 6000.0);
const RECONFIGURED_MS: f64 = 3600.0;
const RECOVERED_MS: f64 = 4300.0;
const PARTITION_MS: (f64, f64) = (7500.0, 8500.0);

/// SplitMix64: the demo is the same on every run.
struct Random(u64);

impl Random {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    /// Uniform in [0, 1).
    fn unit(&mut self) -> f64 {
        (self.next() >> 11) as f64 / (1u64 << 53) as f64
    }
}

/// An entry before it has its place in the history.
struct Entry {
    time_ms: f64,
    process: Process,
    kind: Kind,
    value: Value,
    error: Option<String>,
}

/// How a client operation invoked at `at_ms` goes: when it completes and how.
fn outcome(random: &mut Random, at_ms: f64) -> (f64, Kind, Option<&'static str>) {
    let normal_ms = 1.0 + 3.0 * random.unit() + if random.unit() < 0.03 { 20.0 } else { 0.0 };
    let touches_n2 = random.unit() < 0.4;
    if at_ms < KILL_MS.0 && at_ms + normal_ms >= KILL_MS.0 && touches_n2 {
        // In flight when n2 died: the commit's outcome is never learned.
        let error = "commit outcome unknown: n2 stopped answering";
        return (at_ms + TIMEOUT_MS, Kind::Info, Some(error));
    }
    if (KILL_MS.0..RECONFIGURED_MS).contains(&at_ms) {
        // Until the configuration without n2 is in, what touches n2 waits for it.
        if touches_n2 {
            let done_ms = RECONFIGURED_MS + 5.0 * random.unit();
            return if random.unit() < 0.5 {
                (
                    done_ms,
                    Kind::Fail,
                    Some("region r3 unavailable: recovering"),
                )
            } else {
                (done_ms, Kind::Ok, None)
            };
        }
    } else if (RECONFIGURED_MS..RECOVERED_MS).contains(&at_ms) {
        if touches_n2 {
            let done_ms = at_ms + 2.0 + 10.0 * random.unit();
            return (
                done_ms,
                Kind::Fail,
                Some("region r3 unavailable: recovering"),
            );
        }
        return (at_ms + 3.0 * normal_ms, Kind::Ok, None);
    } else if (KILL_MS.1..KILL_MS.1 + 150.0).contains(&at_ms) {
        // n2 rejoins: one configuration change.
        return (at_ms + normal_ms + 60.0, Kind::Ok, None);
    } else if (PARTITION_MS.0..PARTITION_MS.1).contains(&at_ms) && random.unit() < 0.25 {
        return (at_ms + 300.0, Kind::Fail, Some("n3 unreachable"));
    }
    (at_ms + normal_ms, Kind::Ok, None)
}

fn demo_history() -> Vec<Op> {
    let mut random = Random(7);
    let mut entries = Vec::new();
    let mut next_process = CLIENT_COUNT;
    for client in 0..CLIENT_COUNT {
        let mut process = Process::Client(client);
        let mut now_ms = random.unit() * 5.0;
        while now_ms < RUN_MS {
            let value = if random.unit() < 0.8 {
                let from = (random.next() % u64::from(ACCOUNT_COUNT)) as u32;
                Value::Transfer {
                    from,
                    to: (from + 1) % ACCOUNT_COUNT,
                    amount: 1 + random.next() % 5,
                }
            } else {
                Value::ReadBalances { balances: None }
            };
            let (done_ms, kind, error) = outcome(&mut random, now_ms);
            assert!(
                done_ms <= now_ms + TIMEOUT_MS,
                "at_ms={now_ms} done_ms={done_ms}"
            );
            let completed = match (&value, kind) {
                (Value::ReadBalances { .. }, Kind::Ok) => Value::ReadBalances {
                    balances: Some(vec![100; ACCOUNT_COUNT as usize]),
                },
                _ => value.clone(),
            };
            entries.push(Entry {
                time_ms: now_ms,
                process,
                kind: Kind::Invoke,
                value,
                error: None,
            });
            entries.push(Entry {
                time_ms: done_ms,
                process,
                kind,
                value: completed,
                error: error.map(String::from),
            });
            if kind == Kind::Info {
                process = Process::Client(next_process);
                next_process += 1;
            }
            now_ms = done_ms + 0.5 * random.unit();
        }
    }
    let fault = |class: &str, targets: Vec<u32>, detail: &str| {
        Value::Fault(Fault {
            class: class.into(),
            targets,
            detail: detail.into(),
        })
    };
    let kill = fault(
        "kill",
        vec![2],
        "SIGKILL of n2 (primary of r3, backup of r1)",
    );
    let partition = fault("partition", vec![3], "n3 | n1 n2");
    for (time_ms, kind, value) in [
        (KILL_MS.0, Kind::Invoke, kill.clone()),
        (KILL_MS.1, Kind::Ok, kill),
        (PARTITION_MS.0, Kind::Invoke, partition.clone()),
        (PARTITION_MS.1, Kind::Ok, partition),
    ] {
        entries.push(Entry {
            time_ms,
            process: Process::Nemesis,
            kind,
            value,
            error: None,
        });
    }
    let last_ms = entries.iter().map(|e| e.time_ms).fold(RUN_MS, f64::max);
    for (time_ms, kind, balances) in [
        (last_ms + 200.0, Kind::Invoke, None),
        (
            last_ms + 204.0,
            Kind::Ok,
            Some(vec![100; ACCOUNT_COUNT as usize]),
        ),
    ] {
        entries.push(Entry {
            time_ms,
            process: Process::Final(0),
            kind,
            value: Value::ReadBalances { balances },
            error: None,
        });
    }
    // A stable sort keeps each process's invocation before its completion.
    entries.sort_by(|a, b| a.time_ms.total_cmp(&b.time_ms));
    entries
        .into_iter()
        .enumerate()
        .map(|(index, entry)| Op {
            index: index as u64,
            time_ns: (entry.time_ms * 1e6) as u64,
            process: entry.process,
            kind: entry.kind,
            value: entry.value,
            error: entry.error,
        })
        .collect()
}

fn main() -> std::io::Result<()> {
    let dir = PathBuf::from(
        std::env::args()
            .nth(1)
            .unwrap_or_else(|| "jepsen-demo".to_string()),
    );
    let ops = demo_history();
    let timeline = Timeline::of(&ops)?;
    let results = Results {
        valid: false,
        workload: "bank".into(),
        nemesis: vec!["kill".into(), "partition".into()],
        transport: "tcp".into(),
        nodes: 3,
        seed: 7,
        time_limit_s: RUN_MS / 1000.0,
        counts: timeline.counts,
        anomalies: [("wrong-total".to_string(), 1)].into(),
        findings: vec![Finding {
            class: "wrong-total".into(),
            checker: "bank".into(),
            text: "read-balances by client 3 at 4.312 s (entry 5120) saw a total of 795 < 800: \
                   [100 100 95 100 100 100 100 100]; the transfer of 5 from account 2 to \
                   account 3 by client 7 (entry 5101, info) is seen debited but not credited."
                .into(),
        }],
        lost_writes: vec![
            "transfer of 3 from 6 to 7 (entry 2210, ok at 3.104 s) is in no read after 3.2 s"
                .into(),
        ],
        verdicts: vec![
            Verdict {
                checker: "bank".into(),
                valid: false,
                notes: vec!["1 of 2214 reads saw a wrong total".into()],
            },
            Verdict {
                checker: "lost-writes".into(),
                valid: false,
                notes: Vec::new(),
            },
        ],
        faults: timeline.faults,
    };
    std::fs::create_dir_all(&dir)?;
    history::write_jsonl(
        &ops,
        std::io::BufWriter::new(std::fs::File::create(dir.join("history.jsonl"))?),
    )?;
    report::write_results(&dir, &results)?;
    report::write_report(&dir, &ops, &results)?;
    println!("{}", dir.join("report.html").display());
    Ok(())
}
