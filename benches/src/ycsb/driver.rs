//! The YCSB client: the load phase (insert the records) and the run phase (the workload's
//! operation mix for a time or an operation count, after a warm-up), each on `threads` client
//! threads that issue operations back to back through their own [`Client`] session.
//!
//! An operation that returns an error, or finds no record, counts as failed for its kind and the
//! run goes on, as in YCSB. A thread whose last [`FAILED_STREAK_MAX`] operations all failed
//! stops the phase with an error: the database is gone, and measuring its error path is not
//! the benchmark.

use super::backend::{Backend, Client, Fields};
use super::generator::{AcknowledgedCounter, Rng};
use super::options::Options;
use super::progress::{self, Plan, Tally};
use super::report::{Phase, PhaseReport};
use super::stats::Stats;
use super::workload::{
    Chooser, FIELD_COUNT, OpKind, Operation, Workload, key_name, random_record, random_value,
};
use acre_engine::signal::Termination;
use anyhow::Context;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::mpsc;
use std::thread;
use std::time::{Duration, Instant};

/// Consecutive failed operations after which a client thread gives up and stops the phase.
pub const FAILED_STREAK_MAX: u64 = 1000;

/// Inserts records `0..records` ([`key_name`], [`random_record`]) from `threads` threads that
/// take key numbers from one shared counter. The report has one kind, `INSERT`.
pub fn load(backend: &dyn Backend, options: &Options) -> anyhow::Result<PhaseReport> {
    options.validate()?;
    let next = AtomicU64::new(0);
    let plan = Plan {
        label: "load",
        start: Instant::now(),
        warmup: Duration::ZERO,
        duration: None,
        total_count: Some(options.records),
        unit: "records",
    };
    let (stats, finished_at) = run_threads(backend, options, Phase::Load, &plan, |worker| {
        loop {
            if worker.stopped() {
                return Ok(());
            }
            let key_number = next.fetch_add(1, Ordering::Relaxed);
            if key_number >= options.records {
                return Ok(());
            }
            worker.execute(Operation::Insert { key_number }, true)?;
        }
    })?;
    Ok(PhaseReport::new(
        Phase::Load,
        finished_at.saturating_duration_since(plan.start),
        &stats,
        &[OpKind::Insert],
    ))
}

/// Runs the workload against records loaded by [`load`]: a warm-up of `options.warmup`, then
/// `options.duration` or `options.operations` measured.
///
/// The table must hold exactly the `records` loaded: inserts take key numbers from `records`
/// on, so after a run of D or E, load again before the next run. The zipfian key space of a
/// workload with inserts (E) is sized, as YCSB does, for twice the inserts expected from the
/// operation count; a timed run expects as many operations as records (what YCSB's workload
/// files set).
pub fn run(backend: &dyn Backend, options: &Options) -> anyhow::Result<PhaseReport> {
    options.validate()?;
    let inserts = Arc::new(AcknowledgedCounter::new(options.records));
    let chooser = Chooser::new(
        options.workload,
        options.records,
        options.expected_operations(),
        inserts.clone(),
    );
    let plan = Plan {
        label: "run",
        start: Instant::now(),
        warmup: options.warmup,
        duration: options.duration,
        total_count: options.operations,
        unit: "ops",
    };
    let measure_start = plan.start + options.warmup;
    let deadline = options.duration.map(|duration| measure_start + duration);
    let (stats, finished_at) = run_threads(backend, options, Phase::Run, &plan, |worker| {
        let mut chooser = chooser.clone();
        // YCSB's split of the operation count: the first threads take one more.
        let quota = options.operations.map(|total| {
            let threads = options.threads as u64;
            let index = worker.index as u64;
            total / threads + u64::from(index < total % threads)
        });
        let mut measured_count = 0;
        loop {
            if worker.stopped() {
                return Ok(());
            }
            let now = Instant::now();
            let measured = now >= measure_start;
            if measured {
                if deadline.is_some_and(|deadline| now >= deadline)
                    || quota.is_some_and(|quota| measured_count >= quota)
                {
                    return Ok(());
                }
                measured_count += 1;
            }
            let operation = chooser.next(&mut worker.rng);
            let outcome = worker.execute(operation, measured);
            // Acknowledged even if it failed, as YCSB does: later inserts must become readable.
            if let Operation::Insert { key_number } = operation {
                chooser.inserts().acknowledge(key_number);
            }
            outcome?;
        }
    })?;
    let kinds: Vec<OpKind> = options
        .workload
        .mix()
        .iter()
        .map(|(kind, _)| *kind)
        .collect();
    Ok(PhaseReport::new(
        Phase::Run,
        finished_at.saturating_duration_since(measure_start),
        &stats,
        &kinds,
    ))
}

/// One client thread's state.
struct Worker<'a> {
    index: usize,
    client: Box<dyn Client>,
    rng: Rng,
    stats: Stats,
    tally: &'a Tally,
    /// Set by the first thread that fails; the others stop at their next operation.
    stop: &'a AtomicBool,
    /// Ctrl-C: every thread stops at its next operation.
    termination: Option<&'a Termination>,
    failed_streak: u64,
}

impl Worker<'_> {
    /// Whether the phase is over for this thread before its end: another thread failed, or
    /// termination was requested.
    fn stopped(&self) -> bool {
        self.stop.load(Ordering::Relaxed) || self.termination.is_some_and(Termination::is_requested)
    }

    /// Does `operation`, timing only the backend's call, and records it if `measured`. An error
    /// means the thread must stop (see [`FAILED_STREAK_MAX`]).
    fn execute(&mut self, operation: Operation, measured: bool) -> anyhow::Result<()> {
        let kind = operation.kind();
        let request = Request::new(operation, &mut self.rng);
        let start = Instant::now();
        let outcome = request.send(self.client.as_mut());
        let latency = start.elapsed();
        self.tally.add(measured);
        match outcome {
            Ok(()) => {
                self.failed_streak = 0;
                if measured {
                    self.stats.record_success(kind, latency);
                }
                Ok(())
            }
            Err(failure) => {
                self.failed_streak += 1;
                if self.failed_streak > FAILED_STREAK_MAX {
                    anyhow::bail!(
                        "client thread {}: the last {} operations failed, the last one: {failure}",
                        self.index,
                        self.failed_streak
                    );
                }
                if measured {
                    self.stats.record_failure(kind, || failure);
                }
                Ok(())
            }
        }
    }
}

/// An operation with its key name and values, ready to send (built before the clock starts).
enum Request {
    Insert {
        key: String,
        fields: Fields,
    },
    Read {
        key: String,
    },
    Update {
        key: String,
        field_index: usize,
        value: Vec<u8>,
    },
    Scan {
        key: String,
        record_count: usize,
    },
    ReadModifyWrite {
        key: String,
        field_index: usize,
        value: Vec<u8>,
    },
}

impl Request {
    fn new(operation: Operation, rng: &mut Rng) -> Request {
        match operation {
            Operation::Insert { key_number } => Request::Insert {
                key: key_name(key_number),
                fields: random_record(rng),
            },
            Operation::Read { key_number } => Request::Read {
                key: key_name(key_number),
            },
            Operation::Update {
                key_number,
                field_index,
            } => Request::Update {
                key: key_name(key_number),
                field_index,
                value: random_value(rng),
            },
            Operation::Scan {
                key_number,
                record_count,
            } => Request::Scan {
                key: key_name(key_number),
                record_count,
            },
            Operation::ReadModifyWrite {
                key_number,
                field_index,
            } => Request::ReadModifyWrite {
                key: key_name(key_number),
                field_index,
                value: random_value(rng),
            },
        }
    }

    /// Sends the request; a failure is described for the report.
    fn send(&self, client: &mut dyn Client) -> Result<(), String> {
        match self {
            Request::Insert { key, fields } => client
                .insert(key, fields)
                .map_err(|error| format!("insert {key}: {error:#}")),
            Request::Read { key } => match client.read(key) {
                Ok(Some(fields)) => {
                    check_record(&fields).map_err(|what| format!("read {key}: {what}"))
                }
                Ok(None) => Err(format!("read {key}: no such record")),
                Err(error) => Err(format!("read {key}: {error:#}")),
            },
            Request::Update {
                key,
                field_index,
                value,
            } => match client.update(key, *field_index, value) {
                Ok(true) => Ok(()),
                Ok(false) => Err(format!("update {key}: no such record")),
                Err(error) => Err(format!("update {key}: {error:#}")),
            },
            Request::Scan { key, record_count } => match client.scan(key, *record_count) {
                // The start key exists (it is acknowledged), so a scan finds at least it.
                Ok(records) if records.is_empty() => Err(format!(
                    "scan from {key}: no records, not even the start key"
                )),
                Ok(records) if records.len() > *record_count => Err(format!(
                    "scan from {key}: {} records, more than the {record_count} asked for",
                    records.len()
                )),
                Ok(records) => records
                    .iter()
                    .try_for_each(check_record)
                    .map_err(|what| format!("scan from {key}: {what}")),
                Err(error) => Err(format!("scan from {key}: {error:#}")),
            },
            Request::ReadModifyWrite {
                key,
                field_index,
                value,
            } => match client.read_modify_write(key, *field_index, value) {
                Ok(true) => Ok(()),
                Ok(false) => Err(format!("read-modify-write {key}: no such record")),
                Err(error) => Err(format!("read-modify-write {key}: {error:#}")),
            },
        }
    }
}

/// A record as the backend returned it has all the fields the driver wrote.
fn check_record(fields: &Fields) -> Result<(), String> {
    if fields.len() == FIELD_COUNT {
        Ok(())
    } else {
        Err(format!(
            "a record of {} fields, expected {FIELD_COUNT}",
            fields.len()
        ))
    }
}

/// The random stream of thread `index` in `phase` of `workload`.
///
/// With a seed, each (workload, phase, thread) gets its own stream: were the run phases of A and
/// F given the same stream, F's read-modify-writes would write exactly the values A's updates
/// wrote, to the same fields, in the same order (the two mixes draw alike).
fn thread_rng(
    seed: Option<u64>,
    workload: Workload,
    phase: Phase,
    index: usize,
) -> anyhow::Result<Rng> {
    match seed {
        // Each part goes through splitmix (Rng::from_seed) before the next is mixed in.
        Some(seed) => Ok(Rng::from_seed(
            [workload as u64, phase as u64, index as u64]
                .into_iter()
                .fold(seed, |mixed, part| {
                    Rng::from_seed(mixed ^ part.wrapping_mul(0x9E37_79B9_7F4A_7C15)).next_u64()
                }),
        )),
        None => Rng::from_entropy().context("seed the thread's random numbers"),
    }
}

/// Runs `body` on `options.threads` client threads (and the progress display if asked), and
/// returns their merged stats and when the last one finished. The first error stops every
/// thread and is returned.
fn run_threads<F>(
    backend: &dyn Backend,
    options: &Options,
    phase: Phase,
    plan: &Plan,
    body: F,
) -> anyhow::Result<(Stats, Instant)>
where
    F: Fn(&mut Worker<'_>) -> anyhow::Result<()> + Sync,
{
    let tallies: Vec<Tally> = (0..options.threads).map(|_| Tally::default()).collect();
    let stop = AtomicBool::new(false);
    let thread_main = |index: usize| -> anyhow::Result<(Stats, Instant)> {
        let result = (|| {
            let client = backend
                .client()
                .with_context(|| format!("open the session of client thread {index}"))?;
            let mut worker = Worker {
                index,
                client,
                rng: thread_rng(options.seed, options.workload, phase, index)?,
                stats: Stats::new(),
                tally: &tallies[index],
                stop: &stop,
                termination: options.termination.as_deref(),
                failed_streak: 0,
            };
            body(&mut worker)?;
            Ok((worker.stats, Instant::now()))
        })();
        if result.is_err() {
            stop.store(true, Ordering::Relaxed);
        }
        result
    };
    thread::scope(|scope| {
        let (done, done_receiver) = mpsc::channel::<()>();
        let display = options.progress.then(|| {
            let tallies = &tallies;
            scope.spawn(move || {
                progress::display(plan, tallies, done_receiver, &mut std::io::stdout());
            })
        });
        let thread_main = &thread_main;
        let handles: Vec<_> = (0..options.threads)
            .map(|index| {
                thread::Builder::new()
                    .name(format!("ycsb-client-{index}"))
                    .spawn_scoped(scope, move || thread_main(index))
            })
            .collect();
        let mut merged = Stats::new();
        let mut finished_at = plan.start;
        let mut first_error = None;
        for handle in handles {
            let result = match handle {
                Ok(handle) => match handle.join() {
                    Ok(result) => result,
                    Err(panic) => {
                        stop.store(true, Ordering::Relaxed);
                        std::panic::resume_unwind(panic);
                    }
                },
                Err(error) => {
                    stop.store(true, Ordering::Relaxed);
                    Err(anyhow::Error::new(error).context("start a client thread"))
                }
            };
            match result {
                Ok((stats, at)) => {
                    merged.merge(&stats);
                    finished_at = finished_at.max(at);
                }
                Err(error) => {
                    first_error.get_or_insert(error);
                }
            }
        }
        drop(done);
        if let Some(display) = display {
            // The display only formats and writes; a panic there is a bug to surface.
            if let Err(panic) = display.join() {
                std::panic::resume_unwind(panic);
            }
        }
        match first_error {
            Some(error) => Err(error),
            None => Ok((merged, finished_at)),
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn threads_of_a_seeded_run_get_distinct_reproducible_streams() {
        let draw = |workload, phase, index| {
            thread_rng(Some(9), workload, phase, index)
                .expect("seeded")
                .next_u64()
        };
        let first = draw(Workload::A, Phase::Run, 0);
        assert_eq!(first, draw(Workload::A, Phase::Run, 0));
        assert_ne!(first, draw(Workload::A, Phase::Run, 1));
        assert_ne!(first, draw(Workload::A, Phase::Load, 0));
        assert_ne!(first, draw(Workload::F, Phase::Run, 0));
    }
}
