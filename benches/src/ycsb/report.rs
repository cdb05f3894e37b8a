//! The results of a phase and of a whole benchmark: a compact YCSB-like text table and the JSON
//! file (`serde`). Latencies are reported in microseconds, from histograms kept in nanoseconds.

use super::options::Options;
use super::stats::Stats;
use super::workload::{FIELD_COUNT, FIELD_LENGTH_BYTES, KeyDistribution, OpKind, Workload};
use anyhow::Context;
use serde::{Serialize, Serializer};
use std::collections::BTreeMap;
use std::fs::File;
use std::io::{self, BufWriter, Write};
use std::path::Path;
use std::time::Duration;

/// Which phase a report is about.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Phase {
    /// Inserting the records.
    Load,
    /// The workload's operation mix, after the warm-up.
    Run,
}

impl Phase {
    pub fn name(self) -> &'static str {
        match self {
            Phase::Load => "LOAD",
            Phase::Run => "RUN",
        }
    }
}

/// One operation kind's results in a phase.
#[derive(Clone, Debug, Serialize)]
pub struct OpReport {
    /// YCSB's name: `READ`, `UPDATE`, `INSERT`, `SCAN`, `READ-MODIFY-WRITE`.
    pub name: OpKind,
    /// Operations that succeeded; the latencies are theirs.
    pub count: u64,
    /// Operations that returned an error or found no record (YCSB's `[READ-FAILED]`).
    pub failed_count: u64,
    pub mean_us: f64,
    pub p50_us: f64,
    pub p99_us: f64,
    pub p999_us: f64,
    pub max_us: f64,
    /// What the first failure was.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub first_error: Option<String>,
}

/// The results of one phase.
#[derive(Clone, Debug, Serialize)]
pub struct PhaseReport {
    pub phase: Phase,
    /// From the end of the warm-up to the last client thread's last operation.
    #[serde(rename = "elapsed_s", serialize_with = "seconds")]
    pub elapsed: Duration,
    /// Operations done in the measured time, failed ones included.
    pub operation_count: u64,
    /// `operation_count` over `elapsed`, as YCSB's `[OVERALL] Throughput(ops/sec)`.
    pub throughput_ops_per_s: f64,
    /// The phase's operation kinds, in YCSB's order (insert, read, update, scan,
    /// read-modify-write), including those with a count of zero.
    pub operations: Vec<OpReport>,
}

fn seconds<S: Serializer>(duration: &Duration, serializer: S) -> Result<S::Ok, S::Error> {
    serializer.serialize_f64(duration.as_secs_f64())
}

fn optional_seconds<S: Serializer>(
    duration: &Option<Duration>,
    serializer: S,
) -> Result<S::Ok, S::Error> {
    match duration {
        Some(duration) => serializer.serialize_some(&duration.as_secs_f64()),
        None => serializer.serialize_none(),
    }
}

impl PhaseReport {
    /// The report of `stats` merged over a phase's threads, for the operation `kinds` the phase
    /// does.
    pub fn new(phase: Phase, elapsed: Duration, stats: &Stats, kinds: &[OpKind]) -> PhaseReport {
        let operation_count = stats.operation_count();
        let seconds = elapsed.as_secs_f64();
        let mut kinds = kinds.to_vec();
        kinds.sort();
        let operations = kinds
            .into_iter()
            .map(|kind| {
                let measured = stats.kind(kind);
                let histogram = &measured.latency_ns;
                let micros = |nanoseconds: u64| nanoseconds as f64 / 1e3;
                let empty = histogram.is_empty();
                OpReport {
                    name: kind,
                    count: measured.count(),
                    failed_count: measured.failed_count,
                    mean_us: if empty { 0.0 } else { histogram.mean() / 1e3 },
                    p50_us: micros(histogram.value_at_quantile(0.5)),
                    p99_us: micros(histogram.value_at_quantile(0.99)),
                    p999_us: micros(histogram.value_at_quantile(0.999)),
                    max_us: micros(histogram.max()),
                    first_error: measured.first_error.clone(),
                }
            })
            .collect();
        PhaseReport {
            phase,
            elapsed,
            operation_count,
            throughput_ops_per_s: if seconds > 0.0 {
                operation_count as f64 / seconds
            } else {
                0.0
            },
            operations,
        }
    }

    /// The results of `kind`, if the phase does that kind of operation.
    pub fn operation(&self, kind: OpKind) -> Option<&OpReport> {
        self.operations.iter().find(|op| op.name == kind)
    }

    /// Failed operations of every kind.
    pub fn failed_count(&self) -> u64 {
        self.operations.iter().map(|op| op.failed_count).sum()
    }

    /// A compact table in YCSB's words:
    ///
    /// ```text
    /// [RUN] 10.002 s, 1,234,567 operations, 123,432 ops/s
    ///   operation               count   failed   mean µs    p50 µs    p99 µs  p99.9 µs    max µs
    ///   READ                  617,102        0      7.41       6.9      15.2      40.1     911.4
    /// ```
    pub fn print_text(&self, out: &mut dyn Write) -> io::Result<()> {
        writeln!(
            out,
            "[{}] {:.3} s, {} operations, {} ops/s",
            self.phase.name(),
            self.elapsed.as_secs_f64(),
            grouped(self.operation_count),
            grouped(self.throughput_ops_per_s.round() as u64)
        )?;
        writeln!(
            out,
            "  {:<18} {:>12} {:>8} {:>9} {:>9} {:>9} {:>9} {:>10}",
            "operation", "count", "failed", "mean µs", "p50 µs", "p99 µs", "p99.9 µs", "max µs"
        )?;
        for op in &self.operations {
            writeln!(
                out,
                "  {:<18} {:>12} {:>8} {:>9.2} {:>9.1} {:>9.1} {:>9.1} {:>10.1}",
                op.name.name(),
                grouped(op.count),
                grouped(op.failed_count),
                op.mean_us,
                op.p50_us,
                op.p99_us,
                op.p999_us,
                op.max_us
            )?;
        }
        for op in &self.operations {
            if let Some(error) = &op.first_error {
                writeln!(
                    out,
                    "  [{}-FAILED] {} times, the first: {error}",
                    op.name.name(),
                    grouped(op.failed_count)
                )?;
            }
        }
        Ok(())
    }
}

/// The settings a benchmark ran with, as written to the JSON file.
#[derive(Clone, Debug, Serialize)]
pub struct Settings {
    pub records: u64,
    pub threads: usize,
    #[serde(rename = "duration_s", serialize_with = "optional_seconds")]
    pub duration: Option<Duration>,
    pub operations: Option<u64>,
    #[serde(rename = "warmup_s", serialize_with = "seconds")]
    pub warmup: Duration,
    pub seed: Option<u64>,
    pub field_count: usize,
    pub field_length_bytes: usize,
    pub distribution: KeyDistribution,
    /// The workload's operation mix: each kind's proportion.
    pub proportions: BTreeMap<OpKind, f64>,
}

impl Settings {
    pub fn new(options: &Options) -> Settings {
        Settings {
            records: options.records,
            threads: options.threads,
            duration: options.duration,
            operations: options.operations,
            warmup: options.warmup,
            seed: options.seed,
            field_count: FIELD_COUNT,
            field_length_bytes: FIELD_LENGTH_BYTES,
            distribution: options.workload.distribution(),
            proportions: options.workload.mix().iter().copied().collect(),
        }
    }
}

/// A whole benchmark: what ran against what, and both phases' reports.
#[derive(Clone, Debug, Serialize)]
pub struct Results {
    /// The backend's name ("acre", "redis").
    pub target: String,
    pub workload: Workload,
    pub settings: Settings,
    pub load: PhaseReport,
    pub run: PhaseReport,
}

impl Results {
    pub fn new(target: &str, options: &Options, load: PhaseReport, run: PhaseReport) -> Results {
        Results {
            target: target.to_string(),
            workload: options.workload,
            settings: Settings::new(options),
            load,
            run,
        }
    }
}

/// Writes `results` to `path` as pretty-printed JSON (replacing the file).
pub fn write_json(path: &Path, results: &Results) -> anyhow::Result<()> {
    let file = File::create(path).with_context(|| format!("create {}", path.display()))?;
    let mut out = BufWriter::new(file);
    serde_json::to_writer_pretty(&mut out, results).context("encode the results")?;
    writeln!(out)?;
    out.flush()
        .with_context(|| format!("write {}", path.display()))
}

/// `n` with thousands separated by commas.
pub(crate) fn grouped(n: u64) -> String {
    let digits = n.to_string();
    let mut out = String::with_capacity(digits.len() + digits.len() / 3);
    for (index, digit) in digits.chars().enumerate() {
        if index > 0 && (digits.len() - index).is_multiple_of(3) {
            out.push(',');
        }
        out.push(digit);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn numbers_are_grouped_by_thousands() {
        assert_eq!(grouped(0), "0");
        assert_eq!(grouped(999), "999");
        assert_eq!(grouped(1000), "1,000");
        assert_eq!(grouped(1_234_567), "1,234,567");
    }

    #[test]
    fn reports_print_and_serialize_every_kind_with_microseconds() {
        let mut stats = Stats::new();
        for micros in [10, 20, 30] {
            stats.record_success(OpKind::Read, Duration::from_micros(micros));
        }
        stats.record_failure(OpKind::Update, || "update user1: no such record".into());
        let report = PhaseReport::new(
            Phase::Run,
            Duration::from_secs(2),
            &stats,
            &[OpKind::Update, OpKind::Read],
        );
        assert_eq!(report.operation_count, 4);
        assert_eq!(report.throughput_ops_per_s, 2.0);
        let read = report.operation(OpKind::Read).expect("read reported");
        assert_eq!(read.count, 3);
        assert!((read.p50_us - 20.0).abs() < 0.1, "p50={}", read.p50_us);
        assert!((read.mean_us - 20.0).abs() < 0.1, "mean={}", read.mean_us);
        assert_eq!(report.failed_count(), 1);

        let mut text = Vec::new();
        report.print_text(&mut text).expect("print to memory");
        let text = String::from_utf8(text).expect("utf-8");
        assert!(
            text.starts_with("[RUN] 2.000 s, 4 operations, 2 ops/s\n"),
            "{text}"
        );
        assert!(text.contains("\n  READ "), "{text}");
        assert!(
            text.contains("[UPDATE-FAILED] 1 times, the first: update user1: no such record"),
            "{text}"
        );
        // READ before UPDATE: YCSB's order, not the order asked for.
        assert!(
            text.find("READ").unwrap() < text.find("UPDATE").unwrap(),
            "{text}"
        );

        let json = serde_json::to_value(&report).expect("serialize");
        assert_eq!(json["phase"], "run");
        assert_eq!(json["elapsed_s"], 2.0);
        assert_eq!(json["operations"][0]["name"], "READ");
        assert_eq!(json["operations"][1]["name"], "UPDATE");
        assert_eq!(json["operations"][1]["failed_count"], 1);
        assert!(json["operations"][0].get("first_error").is_none());
    }
}
