//! What one client thread measured in a phase: per operation kind, an HDR histogram of the
//! latencies of the operations that succeeded (nanoseconds, 3 significant digits) and the count
//! of those that failed. Threads record into their own [`Stats`]; the driver merges them.

use super::workload::OpKind;
use hdrhistogram::Histogram;
use std::time::Duration;

/// Significant decimal digits the histograms keep (a recorded value is within 0.1%).
pub const HISTOGRAM_SIGNIFICANT_DIGITS: u8 = 3;

/// One operation kind's measurements.
#[derive(Clone, Debug)]
pub struct KindStats {
    /// Latencies of the successful operations, in nanoseconds. Auto-resizing, so a stall of any
    /// length is recorded as it was.
    pub latency_ns: Histogram<u64>,
    pub failed_count: u64,
    /// What went wrong the first time one failed.
    pub first_error: Option<String>,
}

impl KindStats {
    fn new() -> KindStats {
        KindStats {
            latency_ns: Histogram::new(HISTOGRAM_SIGNIFICANT_DIGITS)
                .expect("3 significant digits is a valid histogram precision"),
            failed_count: 0,
            first_error: None,
        }
    }

    /// Successful operations.
    pub fn count(&self) -> u64 {
        self.latency_ns.len()
    }
}

/// The measurements of one thread, or of a whole phase once merged.
#[derive(Clone, Debug)]
pub struct Stats {
    kinds: [KindStats; OpKind::ALL.len()],
}

impl Default for Stats {
    fn default() -> Stats {
        Stats::new()
    }
}

impl Stats {
    pub fn new() -> Stats {
        Stats {
            kinds: std::array::from_fn(|_| KindStats::new()),
        }
    }

    pub fn record_success(&mut self, kind: OpKind, latency: Duration) {
        let nanoseconds = u64::try_from(latency.as_nanos()).unwrap_or(u64::MAX);
        let histogram = &mut self.kinds[kind.index()].latency_ns;
        // `record` grows the histogram to fit (`saturating_record` would clamp to its current
        // top instead); it fails only if the counts could not be indexed, when clamping is
        // the best left. Zero goes to the lowest bucket.
        if histogram.record(nanoseconds.max(1)).is_err() {
            histogram.saturating_record(nanoseconds);
        }
    }

    /// Counts a failed operation; `describe` is called only for the first one of its kind.
    pub fn record_failure(&mut self, kind: OpKind, describe: impl FnOnce() -> String) {
        let stats = &mut self.kinds[kind.index()];
        stats.failed_count += 1;
        if stats.first_error.is_none() {
            stats.first_error = Some(describe());
        }
    }

    pub fn kind(&self, kind: OpKind) -> &KindStats {
        &self.kinds[kind.index()]
    }

    /// Operations done, successful or not.
    pub fn operation_count(&self) -> u64 {
        self.kinds.iter().map(|k| k.count() + k.failed_count).sum()
    }

    /// Adds `other`'s measurements to these.
    pub fn merge(&mut self, other: &Stats) {
        for (mine, theirs) in self.kinds.iter_mut().zip(&other.kinds) {
            mine.latency_ns
                .add(&theirs.latency_ns)
                .expect("auto-resizing histograms of equal precision always add");
            mine.failed_count += theirs.failed_count;
            if mine.first_error.is_none() {
                mine.first_error.clone_from(&theirs.first_error);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn merged_stats_add_counts_and_keep_percentiles_within_precision() {
        let mut a = Stats::new();
        let mut b = Stats::new();
        for micros in 1..=1000 {
            a.record_success(OpKind::Read, Duration::from_micros(micros));
        }
        b.record_success(OpKind::Read, Duration::from_secs(120));
        b.record_failure(OpKind::Update, || "first".into());
        b.record_failure(OpKind::Update, || panic!("described twice"));
        a.merge(&b);
        let read = a.kind(OpKind::Read);
        assert_eq!(read.count(), 1001);
        let p50 = read.latency_ns.value_at_quantile(0.5);
        assert!(p50.abs_diff(501_000) <= 501, "p50={p50}");
        let max = read.latency_ns.max();
        assert!(max.abs_diff(120_000_000_000) <= 120_000_000, "max={max}");
        let update = a.kind(OpKind::Update);
        assert_eq!((update.count(), update.failed_count), (0, 2));
        assert_eq!(update.first_error.as_deref(), Some("first"));
        assert_eq!(a.operation_count(), 1003);
    }
}
