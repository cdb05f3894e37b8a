//! What a history looked like over time: the fault windows and the service the clients saw in
//! them, the operations by outcome, and the series a report plots (throughput per bucket,
//! latency per operation).
//!
//! Only client operations ([`Process::Client`]) make the windows and the series: the final
//! reads come after every fault was healed and the cluster settled, so they say nothing of the
//! service under faults. [`Counts`] covers them too, as `results.json` promises.

use crate::history::{self, Kind, Op, Process, Value};
use crate::results::{Counts, FaultWindow};
use std::io;

/// Bucket sizes a run's throughput is plotted with, smallest first: round numbers, so the
/// reader can tell the rate from the bucket.
const BUCKET_S_CHOICES: [f64; 11] = [0.1, 0.2, 0.5, 1.0, 2.0, 5.0, 10.0, 20.0, 30.0, 60.0, 120.0];

/// About this many buckets make a throughput plot: enough to show a dip of a few hundred
/// milliseconds in a short run, few enough that each bucket holds a rate and not noise.
const BUCKET_COUNT_TARGET: f64 = 300.0;

/// The most buckets [`Timeline::throughput`] makes; more is a bucket size chosen by mistake.
const BUCKET_COUNT_MAX: u64 = 1_000_000;

/// How an operation ended, once it ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Outcome {
    /// It took effect.
    Ok,
    /// It certainly did not take effect.
    Fail,
    /// Nobody knows.
    Info,
}

impl Outcome {
    /// The outcome a completion records; `None` for an invocation.
    pub fn of(kind: Kind) -> Option<Outcome> {
        match kind {
            Kind::Invoke => None,
            Kind::Ok => Some(Outcome::Ok),
            Kind::Fail => Some(Outcome::Fail),
            Kind::Info => Some(Outcome::Info),
        }
    }

    /// `ok`, `fail` or `info`, as the history writes it.
    pub fn name(self) -> &'static str {
        match self {
            Outcome::Ok => "ok",
            Outcome::Fail => "fail",
            Outcome::Info => "info",
        }
    }
}

/// A client operation that completed.
#[derive(Clone, Debug, PartialEq)]
pub struct Completion {
    /// What it did: the `f` of its value (`transfer`, `read-balances`, `txn`, `read`, `write`,
    /// `cas`).
    pub f: &'static str,
    pub outcome: Outcome,
    /// When it was invoked, in seconds since the run started.
    pub invoke_s: f64,
    /// When it completed, in seconds since the run started.
    pub complete_s: f64,
    /// From its invocation to its completion.
    pub latency_ms: f64,
}

/// One bucket of a throughput series: completions per second by outcome.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Bucket {
    /// Where the bucket starts, in seconds since the run started.
    pub start_s: f64,
    pub ok_per_s: f64,
    pub fail_per_s: f64,
    pub info_per_s: f64,
}

impl Bucket {
    /// The rate of completions with `outcome`.
    pub fn per_s(&self, outcome: Outcome) -> f64 {
        match outcome {
            Outcome::Ok => self.ok_per_s,
            Outcome::Fail => self.fail_per_s,
            Outcome::Info => self.info_per_s,
        }
    }
}

/// A history read for its timing: see the module's documentation.
#[derive(Clone, Debug, PartialEq)]
pub struct Timeline {
    /// The client operations that completed, in the order they were invoked.
    pub completions: Vec<Completion>,
    /// The faults in the order they started, with the service during each and after its heal.
    pub faults: Vec<FaultWindow>,
    /// Client operations and final reads by outcome; an invocation never completed is `info`.
    pub counts: Counts,
    /// The time of the history's last entry, in seconds since the run started.
    pub end_s: f64,
}

impl Timeline {
    /// Reads `ops`. A fault starts at the nemesis's `invoke` and is healed by its next `ok` of
    /// the same class and targets (first started, first healed); one with no such `ok` (the
    /// run ended first, or its heal did not end `ok`) has no `stop_s`. A malformed history (a
    /// process that completes what it did not invoke, or invokes twice) is `InvalidData`.
    pub fn of(ops: &[Op]) -> io::Result<Timeline> {
        let completion_of = history::pairs(ops)
            .map_err(|error| io::Error::new(io::ErrorKind::InvalidData, error))?;
        let end_ns = ops.iter().map(|op| op.time_ns).max().unwrap_or(0);

        let mut counts = Counts::default();
        // Client operations as (invocation, completion) times in ns, for the windows.
        let mut spans = Vec::new();
        let mut completions = Vec::new();
        for (i, op) in ops.iter().enumerate() {
            if op.process == Process::Nemesis || op.kind != Kind::Invoke {
                continue;
            }
            let Some(j) = completion_of[i] else {
                counts.info += 1;
                continue;
            };
            let completion = &ops[j];
            let outcome = Outcome::of(completion.kind)
                .expect("history::pairs pairs an invocation with a completion");
            match outcome {
                Outcome::Ok => counts.ok += 1,
                Outcome::Fail => counts.fail += 1,
                Outcome::Info => counts.info += 1,
            }
            if !matches!(op.process, Process::Client(_)) {
                continue;
            }
            assert!(
                completion.time_ns >= op.time_ns,
                "entry {j} completes entry {i} before it was invoked"
            );
            spans.push(Span {
                invoke_ns: op.time_ns,
                complete_ns: completion.time_ns,
                outcome,
            });
            completions.push(Completion {
                f: f_name(&op.value),
                outcome,
                invoke_s: seconds(op.time_ns),
                complete_s: seconds(completion.time_ns),
                latency_ms: (completion.time_ns - op.time_ns) as f64 / 1e6,
            });
        }

        let faults = fault_spans(ops)
            .into_iter()
            .map(|fault| fault.window(&spans, end_ns))
            .collect();
        Ok(Timeline {
            completions,
            faults,
            counts,
            end_s: seconds(end_ns),
        })
    }

    /// Completions per second by outcome in buckets of `bucket_s` from 0 to the end of the
    /// history, empty buckets included (they are the outages). An operation counts in the
    /// bucket where it completed; the last bucket's rate is over the part the run covered.
    pub fn throughput(&self, bucket_s: f64) -> Vec<Bucket> {
        assert!(bucket_s > 0.0, "bucket_s={bucket_s}");
        let count = (self.end_s / bucket_s).ceil().max(1.0);
        assert!(
            count <= BUCKET_COUNT_MAX as f64,
            "bucket_s={bucket_s} end_s={}",
            self.end_s
        );
        let count = count as usize;
        let mut buckets: Vec<Bucket> = (0..count)
            .map(|index| Bucket {
                start_s: index as f64 * bucket_s,
                ok_per_s: 0.0,
                fail_per_s: 0.0,
                info_per_s: 0.0,
            })
            .collect();
        for completion in &self.completions {
            let index = ((completion.complete_s / bucket_s) as usize).min(count - 1);
            let bucket = &mut buckets[index];
            match completion.outcome {
                Outcome::Ok => bucket.ok_per_s += 1.0,
                Outcome::Fail => bucket.fail_per_s += 1.0,
                Outcome::Info => bucket.info_per_s += 1.0,
            }
        }
        for bucket in &mut buckets {
            let covered_s = (self.end_s - bucket.start_s).min(bucket_s);
            let covered_s = if covered_s > 0.0 { covered_s } else { bucket_s };
            bucket.ok_per_s /= covered_s;
            bucket.fail_per_s /= covered_s;
            bucket.info_per_s /= covered_s;
        }
        buckets
    }
}

/// A bucket size for plotting the throughput of a run `duration_s` long: the smallest round
/// size that makes at most about 300 buckets.
pub fn bucket_s_for(duration_s: f64) -> f64 {
    BUCKET_S_CHOICES
        .into_iter()
        .find(|bucket_s| duration_s / bucket_s <= BUCKET_COUNT_TARGET)
        .unwrap_or_else(|| (duration_s / BUCKET_COUNT_TARGET).ceil())
}

/// The name of what an operation does, as its `f` is written in the history.
pub fn f_name(value: &Value) -> &'static str {
    match value {
        Value::Transfer { .. } => "transfer",
        Value::ReadBalances { .. } => "read-balances",
        Value::Txn { .. } => "txn",
        Value::Read { .. } => "read",
        Value::Write { .. } => "write",
        Value::Cas { .. } => "cas",
        Value::Fault(_) => "fault",
    }
}

fn seconds(ns: u64) -> f64 {
    ns as f64 / 1e9
}

/// A client operation's times, in ns (exact, for comparing with a window's edges).
struct Span {
    invoke_ns: u64,
    complete_ns: u64,
    outcome: Outcome,
}

/// A fault as the nemesis recorded it.
struct FaultSpan<'a> {
    fault: &'a history::Fault,
    start_ns: u64,
    stop_ns: Option<u64>,
}

/// The nemesis's faults in the order they started, each paired with its heal.
fn fault_spans(ops: &[Op]) -> Vec<FaultSpan<'_>> {
    let mut faults: Vec<FaultSpan> = Vec::new();
    for op in ops {
        let (Process::Nemesis, Value::Fault(fault)) = (op.process, &op.value) else {
            continue;
        };
        match op.kind {
            Kind::Invoke => faults.push(FaultSpan {
                fault,
                start_ns: op.time_ns,
                stop_ns: None,
            }),
            Kind::Ok => {
                let started = faults.iter_mut().find(|started| {
                    started.stop_ns.is_none()
                        && started.fault.class == fault.class
                        && started.fault.targets == fault.targets
                });
                // A heal of nothing started heals nothing (a nemesis that heals everything
                // at the end may record one).
                if let Some(started) = started {
                    started.stop_ns = Some(op.time_ns);
                }
            }
            // The heal was attempted and did not certainly work: the fault stays open.
            Kind::Fail | Kind::Info => {}
        }
    }
    faults
}

impl FaultSpan<'_> {
    /// The window with the service `spans` saw: the operations that completed from the
    /// fault's start to its heal (to `end_ns` when never healed), both included, and the
    /// first `ok` operation invoked at or after the heal.
    fn window(&self, spans: &[Span], end_ns: u64) -> FaultWindow {
        let last_ns = self.stop_ns.unwrap_or(end_ns);
        let mut during = Counts::default();
        for span in spans {
            if span.complete_ns < self.start_ns || span.complete_ns > last_ns {
                continue;
            }
            match span.outcome {
                Outcome::Ok => during.ok += 1,
                Outcome::Fail => during.fail += 1,
                Outcome::Info => during.info += 1,
            }
        }
        let completed = during.ok + during.fail + during.info;
        let availability = (completed > 0).then(|| during.ok as f64 / completed as f64);
        let recovered_after_s = self.stop_ns.and_then(|stop_ns| {
            spans
                .iter()
                .filter(|span| span.outcome == Outcome::Ok && span.invoke_ns >= stop_ns)
                .map(|span| span.complete_ns - stop_ns)
                .min()
                .map(seconds)
        });
        FaultWindow {
            class: self.fault.class.clone(),
            targets: self.fault.targets.clone(),
            detail: self.fault.detail.clone(),
            start_s: seconds(self.start_ns),
            stop_s: self.stop_ns.map(seconds),
            during,
            availability,
            recovered_after_s,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::history::Fault;

    /// Builds a history entry by entry; times in ms.
    #[derive(Default)]
    struct Builder {
        ops: Vec<Op>,
    }

    impl Builder {
        fn push(&mut self, ms: u64, process: Process, kind: Kind, value: Value) -> &mut Self {
            self.ops.push(Op {
                index: self.ops.len() as u64,
                time_ns: ms * 1_000_000,
                process,
                kind,
                value,
                error: None,
            });
            self
        }

        /// Entries go in time order: an operation overlapping others is pushed as its
        /// invocation and its completion apart.
        fn invoke(&mut self, ms: u64, client: u32) -> &mut Self {
            self.push(ms, Process::Client(client), Kind::Invoke, write())
        }

        fn complete(&mut self, ms: u64, client: u32, kind: Kind) -> &mut Self {
            self.push(ms, Process::Client(client), kind, write())
        }

        /// Client `client` writes, invoked at `invoke_ms`, completed `kind` at `complete_ms`.
        fn op(&mut self, invoke_ms: u64, complete_ms: u64, client: u32, kind: Kind) -> &mut Self {
            self.invoke(invoke_ms, client)
                .complete(complete_ms, client, kind)
        }

        fn fault(&mut self, ms: u64, kind: Kind, class: &str, targets: &[u32]) -> &mut Self {
            let fault = Fault {
                class: class.into(),
                targets: targets.to_vec(),
                detail: format!("{class} of {targets:?}"),
            };
            self.push(ms, Process::Nemesis, kind, Value::Fault(fault))
        }

        fn timeline(&self) -> Timeline {
            Timeline::of(&self.ops).unwrap()
        }
    }

    fn write() -> Value {
        Value::Write { key: 1, value: 2 }
    }

    fn counts(ok: u64, fail: u64, info: u64) -> Counts {
        Counts { ok, fail, info }
    }

    fn windows(timeline: &Timeline) -> Vec<(&str, Vec<u32>, f64, Option<f64>)> {
        timeline
            .faults
            .iter()
            .map(|w| (w.class.as_str(), w.targets.clone(), w.start_s, w.stop_s))
            .collect()
    }

    #[test]
    fn a_heal_closes_the_earliest_open_fault_of_its_class_and_targets() {
        let timeline = Builder::default()
            .fault(1000, Kind::Invoke, "kill", &[2])
            .fault(1500, Kind::Invoke, "kill", &[3])
            .fault(1800, Kind::Invoke, "pause", &[2])
            // n3's kill is healed first: targets tell the two kills apart.
            .fault(2000, Kind::Ok, "kill", &[3])
            .fault(2500, Kind::Ok, "kill", &[2])
            // A failed heal leaves the pause open; a heal of nothing is ignored.
            .fault(2600, Kind::Fail, "pause", &[2])
            .fault(2700, Kind::Ok, "partition", &[1])
            // The same fault again: a new window, never healed.
            .fault(3000, Kind::Invoke, "kill", &[2])
            .fault(3100, Kind::Invoke, "kill", &[2])
            .fault(3200, Kind::Ok, "kill", &[2])
            .timeline();
        assert_eq!(
            windows(&timeline),
            vec![
                ("kill", vec![2], 1.0, Some(2.5)),
                ("kill", vec![3], 1.5, Some(2.0)),
                ("pause", vec![2], 1.8, None),
                ("kill", vec![2], 3.0, Some(3.2)),
                ("kill", vec![2], 3.1, None),
            ]
        );
        assert_eq!(timeline.faults[0].detail, "kill of [2]");
        assert_eq!(timeline.end_s, 3.2);
    }

    #[test]
    fn a_window_counts_what_completed_inside_it_and_its_availability() {
        let timeline = Builder::default()
            .op(0, 900, 0, Kind::Ok) // before the fault
            .invoke(950, 0)
            .fault(1000, Kind::Invoke, "kill", &[2])
            .complete(1000, 0, Kind::Info) // at the start: inside
            .op(1100, 1200, 1, Kind::Ok)
            .op(1300, 1400, 1, Kind::Fail)
            .invoke(1900, 1)
            .fault(2000, Kind::Ok, "kill", &[2])
            .complete(2000, 1, Kind::Info) // at the heal: inside
            .op(2000, 2001, 2, Kind::Ok) // after the heal
            .fault(3000, Kind::Invoke, "pause", &[1])
            .fault(3500, Kind::Ok, "pause", &[1])
            .timeline();
        let kill = &timeline.faults[0];
        assert_eq!(kill.during, counts(1, 1, 2));
        assert_eq!(kill.availability, Some(0.25));
        // Nothing completed during the pause: no availability to speak of.
        let pause = &timeline.faults[1];
        assert_eq!(pause.during, counts(0, 0, 0));
        assert_eq!(pause.availability, None);
    }

    #[test]
    fn a_window_never_healed_runs_to_the_end_of_the_history() {
        let timeline = Builder::default()
            .fault(1000, Kind::Invoke, "partition", &[1, 2])
            .op(1500, 4000, 0, Kind::Info)
            .op(4000, 4100, 0, Kind::Ok)
            .timeline();
        let window = &timeline.faults[0];
        assert_eq!(window.stop_s, None);
        assert_eq!(window.during, counts(1, 0, 1));
        assert_eq!(window.recovered_after_s, None);
    }

    #[test]
    fn recovery_is_the_first_ok_invoked_after_the_heal() {
        let recovered = |builder: &mut Builder| builder.timeline().faults[0].recovered_after_s;
        let mut history = Builder::default();
        history
            .fault(1000, Kind::Invoke, "kill", &[2])
            .invoke(1900, 0)
            .fault(2000, Kind::Ok, "kill", &[2])
            // Invoked before the heal: not a sign of recovery, even though it ends ok after.
            .complete(2050, 0, Kind::Ok)
            // Invoked after the heal but failed.
            .op(2100, 2150, 1, Kind::Fail);
        assert_eq!(recovered(&mut history), None);
        history
            // Two ok operations: the one that completes first counts, not the one invoked
            // first.
            .invoke(2200, 1)
            .invoke(2250, 2)
            .complete(2400, 2, Kind::Ok)
            .complete(2700, 1, Kind::Ok);
        let after_s = recovered(&mut history).unwrap();
        assert!((after_s - 0.4).abs() < 1e-9, "after_s={after_s}");
    }

    #[test]
    fn an_ok_invoked_at_the_heal_itself_shows_recovery() {
        let timeline = Builder::default()
            .fault(1000, Kind::Invoke, "kill", &[2])
            .fault(2000, Kind::Ok, "kill", &[2])
            .op(2000, 2010, 0, Kind::Ok)
            .timeline();
        let after_s = timeline.faults[0].recovered_after_s.unwrap();
        assert!((after_s - 0.01).abs() < 1e-9, "after_s={after_s}");
    }

    #[test]
    fn counts_take_final_reads_and_call_an_invocation_never_completed_info() {
        let mut history = Builder::default();
        history
            .op(0, 10, 0, Kind::Ok)
            .op(10, 20, 0, Kind::Fail)
            .op(20, 30, 0, Kind::Info)
            .fault(30, Kind::Invoke, "kill", &[1])
            .invoke(40, 1) // never completes
            .fault(50, Kind::Ok, "kill", &[1])
            .push(60, Process::Final(0), Kind::Invoke, write())
            .push(70, Process::Final(0), Kind::Ok, write());
        let timeline = history.timeline();
        assert_eq!(timeline.counts, counts(2, 1, 2));
        // The final read and the operation never completed are not plotted.
        let plotted: Vec<_> = timeline
            .completions
            .iter()
            .map(|c| (c.outcome, c.invoke_s, c.complete_s))
            .collect();
        assert_eq!(
            plotted,
            vec![
                (Outcome::Ok, 0.0, 0.01),
                (Outcome::Fail, 0.01, 0.02),
                (Outcome::Info, 0.02, 0.03)
            ]
        );
    }

    #[test]
    fn a_completion_knows_its_latency_and_what_it_did() {
        let mut history = Builder::default();
        history
            .push(
                1000,
                Process::Client(3),
                Kind::Invoke,
                Value::ReadBalances { balances: None },
            )
            .push(
                1250,
                Process::Client(3),
                Kind::Fail,
                Value::ReadBalances { balances: None },
            );
        let timeline = history.timeline();
        assert_eq!(
            timeline.completions,
            vec![Completion {
                f: "read-balances",
                outcome: Outcome::Fail,
                invoke_s: 1.0,
                complete_s: 1.25,
                latency_ms: 250.0,
            }]
        );
    }

    #[test]
    fn throughput_is_per_second_per_bucket_with_the_gaps_kept() {
        let timeline = Builder::default()
            .op(0, 50, 0, Kind::Ok)
            .op(50, 90, 0, Kind::Ok)
            .op(90, 150, 0, Kind::Fail)
            // Nothing completes from 200 to 300 ms.
            .op(150, 310, 0, Kind::Info)
            .op(310, 350, 1, Kind::Ok)
            .timeline();
        let buckets = timeline.throughput(0.1);
        let rates: Vec<_> = buckets
            .iter()
            .map(|b| {
                let round = |rate: f64| (rate * 1000.0).round() / 1000.0;
                (
                    round(b.start_s),
                    round(b.ok_per_s),
                    round(b.fail_per_s),
                    round(b.info_per_s),
                )
            })
            .collect();
        assert_eq!(
            rates,
            vec![
                (0.0, 20.0, 0.0, 0.0),
                (0.1, 0.0, 10.0, 0.0),
                (0.2, 0.0, 0.0, 0.0),
                // The last bucket covers 50 ms of the run: 1 per 50 ms is 20 per second.
                (0.3, 20.0, 0.0, 20.0),
            ]
        );
    }

    #[test]
    fn an_empty_history_has_one_empty_bucket() {
        let timeline = Timeline::of(&[]).unwrap();
        assert_eq!(timeline.counts, Counts::default());
        assert_eq!(
            timeline.throughput(1.0),
            vec![Bucket {
                start_s: 0.0,
                ok_per_s: 0.0,
                fail_per_s: 0.0,
                info_per_s: 0.0
            }]
        );
    }

    #[test]
    fn buckets_are_round_and_about_300_to_a_run() {
        assert_eq!(bucket_s_for(0.0), 0.1);
        assert_eq!(bucket_s_for(30.0), 0.1);
        assert_eq!(bucket_s_for(30.1), 0.2);
        assert_eq!(bucket_s_for(600.0), 2.0);
        assert_eq!(bucket_s_for(36_000.0), 120.0);
        assert_eq!(bucket_s_for(360_000.0), 1200.0);
    }

    #[test]
    fn a_malformed_history_is_invalid_data() {
        let mut history = Builder::default();
        history.complete(0, 0, Kind::Ok);
        let error = Timeline::of(&history.ops).unwrap_err();
        assert_eq!(error.kind(), io::ErrorKind::InvalidData);
        assert!(error.to_string().contains("did not invoke"), "{error}");
    }
}
