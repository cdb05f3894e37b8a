//! The pace of a copy (docs/failures.md#data-recovery): fast while the node's foreground keeps
//! its rate, slower as soon as it does not.
//!
//! A new backup copies its regions while the cluster serves, and on machines where the copy and
//! the foreground share cores, links or the primary's NIC thread, every byte copied is taken
//! from someone. The copier therefore watches the *foreground* of its own node: the records its
//! worker handles (LOCK, COMMIT-BACKUP, COMMIT-PRIMARY, TRUNCATE of the transactions that touch
//! its regions), a count that moves with the cluster's commits since every transaction writes
//! at some backup. [`Pace`] keeps:
//!
//! - a **baseline**: what the foreground does without the copy. A node's own rate before the
//!   failure is a poor one: once a node is gone, each survivor takes part in more of the
//!   transactions, so its rate goes up even while the cluster's goes down. So every
//!   [`PROBE_EVERY`] of copying the copier stops for [`PROBE_LENGTH`] and measures the rate
//!   without it (a *probe*; the copy takes a sixth longer), and the baseline is the median of
//!   the last [`PROBES_KEPT`] probes. Until the first probe, the median rate of the last
//!   [`BASELINE_SAMPLES`] intervals of [`SAMPLE_EVERY`] while no copy ran stands in (the median,
//!   so that the failure that made the copy necessary does not drag it down). A copy starts
//!   with a probe;
//! - while copying, the mean rate of the last [`RECENT_SAMPLES`] intervals (one alone swings by
//!   a third on a busy machine), and the copy's pace in bytes per second, changed once per
//!   interval: cut by a quarter (down to [`RATE_MIN`], or the maximum if lower) when that foreground ran
//!   below [`FOREGROUND_KEPT`] of the baseline, raised by a sixteenth of the maximum otherwise
//!   (additive increase, multiplicative decrease, as TCP's congestion control).
//!
//! A node with no foreground before the copy (an idle cluster) copies at the maximum. The
//! figures and what they mean for the goal are in the doc section.

use std::collections::VecDeque;
use std::time::{Duration, Instant};

/// The share of its rate before the copy that the node's foreground keeps: below it, the copy
/// slows down.
pub const FOREGROUND_KEPT: f64 = 0.8;
/// How often the foreground is sampled (and the pace changed, while copying).
pub const SAMPLE_EVERY: Duration = Duration::from_millis(100);
/// Intervals of the baseline: 5 s.
pub const BASELINE_SAMPLES: usize = 50;
/// The slowest pace, so that a copy under a foreground it hurts still ends: 32 MiB/s.
pub const RATE_MIN: u64 = 32 << 20;
/// Intervals whose mean is the foreground compared with the baseline while copying.
pub const RECENT_SAMPLES: usize = 3;
/// Copying time between two probes of the foreground without the copy.
pub const PROBE_EVERY: Duration = Duration::from_secs(1);
/// How long a probe stops the copy.
pub const PROBE_LENGTH: Duration = Duration::from_millis(200);
/// Probes whose median is the baseline.
pub const PROBES_KEPT: usize = 3;

/// The copy's pace (module docs).
#[derive(Debug)]
pub struct Pace {
    max: u64,
    rate: u64,
    /// Per-interval foreground rates (records per second) while no copy ran, oldest first.
    baseline: VecDeque<f64>,
    /// The last intervals' rates during the copy, oldest first.
    recent: VecDeque<f64>,
    /// The rates of the last probes of this copy, oldest first.
    probes: VecDeque<f64>,
    /// When the last probe of this copy ended.
    probed_at: Option<Instant>,
    /// The start of the current interval and the count then.
    interval: Option<(Instant, u64)>,
    copying: bool,
}

impl Pace {
    /// A pace of at most `max` bytes per second.
    pub fn new(max: u64) -> Pace {
        assert!(max > 0, "a copy needs a positive rate");
        Pace {
            max,
            rate: max,
            baseline: VecDeque::with_capacity(BASELINE_SAMPLES),
            recent: VecDeque::with_capacity(RECENT_SAMPLES),
            probes: VecDeque::with_capacity(PROBES_KEPT),
            probed_at: None,
            interval: None,
            copying: false,
        }
    }

    /// The pace now, in bytes per second.
    pub fn rate(&self) -> u64 {
        self.rate
    }

    /// The foreground's rate without the copy (records per second): the median of the last
    /// probes, else of the intervals before the copy; `None` if nothing was sampled.
    pub fn baseline(&self) -> Option<f64> {
        let samples = if self.probes.is_empty() {
            &self.baseline
        } else {
            &self.probes
        };
        if samples.is_empty() {
            return None;
        }
        let mut sorted: Vec<f64> = samples.iter().copied().collect();
        sorted.sort_by(f64::total_cmp);
        Some(sorted[sorted.len() / 2])
    }

    /// Whether the copy should stop now for a probe ([`PROBE_LENGTH`]): at its start, then
    /// every [`PROBE_EVERY`] of copying.
    pub fn probe_due(&self, now: Instant) -> bool {
        self.copying
            && self
                .probed_at
                .is_none_or(|at| now.saturating_duration_since(at) >= PROBE_EVERY)
    }

    /// A probe ended at `now`: the foreground did `records` per second without the copy.
    pub fn probed(&mut self, now: Instant, records_per_second: f64, records: u64) {
        if self.probes.len() == PROBES_KEPT {
            self.probes.pop_front();
        }
        self.probes.push_back(records_per_second);
        self.probed_at = Some(now);
        // The copy's intervals start again after the pause.
        self.interval = Some((now, records));
    }

    /// The foreground's count `records` at `now`, with or without a copy running. An interval
    /// of [`SAMPLE_EVERY`] or more since the last sample is closed: without a copy it joins
    /// the baseline, during one it changes the pace.
    pub fn observe(&mut self, now: Instant, records: u64, copying: bool) {
        if copying != self.copying {
            // A copy starts or ends: the interval under way mixed both.
            self.copying = copying;
            self.interval = Some((now, records));
            self.recent.clear();
            self.probes.clear();
            self.probed_at = None;
            if copying {
                self.rate = self.max;
            }
            return;
        }
        let Some((began, count)) = self.interval else {
            self.interval = Some((now, records));
            return;
        };
        let elapsed = now.saturating_duration_since(began);
        if elapsed < SAMPLE_EVERY {
            return;
        }
        self.interval = Some((now, records));
        let foreground = records.saturating_sub(count) as f64 / elapsed.as_secs_f64();
        if !copying {
            if self.baseline.len() == BASELINE_SAMPLES {
                self.baseline.pop_front();
            }
            self.baseline.push_back(foreground);
            return;
        }
        if self.recent.len() == RECENT_SAMPLES {
            self.recent.pop_front();
        }
        self.recent.push_back(foreground);
        let recent = self.recent.iter().sum::<f64>() / self.recent.len() as f64;
        let kept = self
            .baseline()
            .is_none_or(|before| recent >= FOREGROUND_KEPT * before);
        self.rate = if kept {
            (self.rate + self.max / 16).min(self.max)
        } else {
            (self.rate / 4 * 3).max(RATE_MIN.min(self.max))
        };
    }

    /// How long to wait after copying `bytes` at the pace, measured from when they began.
    pub fn due(&self, bytes: u64) -> Duration {
        Duration::from_secs_f64(bytes as f64 / self.rate as f64)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MAX: u64 = 256 << 20;

    /// Samples `count` intervals of `per_interval` records each, from `at` on.
    fn feed(
        pace: &mut Pace,
        at: &mut Instant,
        records: &mut u64,
        per_interval: u64,
        count: usize,
        copying: bool,
    ) {
        for _ in 0..count {
            *at += SAMPLE_EVERY;
            *records += per_interval;
            pace.observe(*at, *records, copying);
        }
    }

    #[test]
    fn an_idle_node_copies_at_the_maximum() {
        let mut pace = Pace::new(MAX);
        let (mut at, mut records) = (Instant::now(), 0);
        feed(&mut pace, &mut at, &mut records, 0, 20, false);
        assert_eq!(pace.baseline(), Some(0.0));
        feed(&mut pace, &mut at, &mut records, 0, 20, true);
        assert_eq!(pace.rate(), MAX);
    }

    #[test]
    fn a_foreground_that_drops_cuts_the_pace_down_to_the_minimum_and_it_comes_back() {
        let mut pace = Pace::new(MAX);
        let (mut at, mut records) = (Instant::now(), 0);
        feed(&mut pace, &mut at, &mut records, 1000, 30, false);
        assert_eq!(pace.baseline(), Some(10_000.0));
        pace.observe(at, records, true);
        assert_eq!(pace.rate(), MAX, "a copy starts at the maximum");
        feed(&mut pace, &mut at, &mut records, 700, 1, true);
        assert_eq!(pace.rate(), MAX / 4 * 3);
        feed(&mut pace, &mut at, &mut records, 700, 10, true);
        assert_eq!(pace.rate(), RATE_MIN, "never below the minimum");
        // One good interval is not enough: the mean of the last three is compared.
        feed(&mut pace, &mut at, &mut records, 900, 1, true);
        assert_eq!(pace.rate(), RATE_MIN);
        // The foreground back at 80% or more: a sixteenth of the maximum per interval.
        feed(&mut pace, &mut at, &mut records, 900, 1, true);
        assert_eq!(pace.rate(), RATE_MIN + MAX / 16);
        feed(&mut pace, &mut at, &mut records, 1000, 20, true);
        assert_eq!(pace.rate(), MAX, "never above the maximum");
        // The copy's intervals do not join the baseline.
        pace.observe(at, records, false);
        assert_eq!(pace.baseline(), Some(10_000.0));
    }

    #[test]
    fn the_failure_before_the_copy_does_not_drag_the_baseline_down() {
        let mut pace = Pace::new(MAX);
        let (mut at, mut records) = (Instant::now(), 0);
        feed(&mut pace, &mut at, &mut records, 1000, 40, false);
        feed(&mut pace, &mut at, &mut records, 0, 8, false); // the lease runs out
        assert_eq!(pace.baseline(), Some(10_000.0));
    }

    #[test]
    fn a_maximum_below_the_minimum_is_the_floor() {
        let mut pace = Pace::new(1 << 20);
        let (mut at, mut records) = (Instant::now(), 0);
        feed(&mut pace, &mut at, &mut records, 1000, 10, false);
        pace.observe(at, records, true);
        feed(&mut pace, &mut at, &mut records, 10, 5, true);
        assert_eq!(pace.rate(), 1 << 20);
    }

    #[test]
    fn short_intervals_change_nothing() {
        let mut pace = Pace::new(MAX);
        let at = Instant::now();
        pace.observe(at, 0, false);
        pace.observe(at + SAMPLE_EVERY / 2, 500, false);
        assert_eq!(pace.baseline(), None);
        pace.observe(at + SAMPLE_EVERY, 1000, false);
        assert_eq!(pace.baseline(), Some(10_000.0));
    }

    #[test]
    fn probes_replace_a_baseline_the_failure_made_too_low() {
        let mut pace = Pace::new(MAX);
        let (mut at, mut records) = (Instant::now(), 0);
        // Before the failure this node saw 500 records per interval; once a node is gone it
        // takes part in more transactions: 700 while copying, 1000 without the copy.
        feed(&mut pace, &mut at, &mut records, 500, 30, false);
        pace.observe(at, records, true);
        assert!(pace.probe_due(at), "a copy starts with a probe");
        at += PROBE_LENGTH;
        records += 2000;
        pace.probed(at, 10_000.0, records);
        assert!(!pace.probe_due(at));
        assert_eq!(pace.baseline(), Some(10_000.0));
        feed(&mut pace, &mut at, &mut records, 700, 3, true);
        assert!(
            pace.rate() < MAX,
            "70% of the probe's rate slows the copy down"
        );
        feed(&mut pace, &mut at, &mut records, 700, 7, true);
        assert!(pace.probe_due(at), "a probe every second of copying");
        // Against the rate before the failure alone, 700 would have looked like 140%.
        assert_eq!(pace.rate(), RATE_MIN);
        // The copy ends: the probes go, the baseline is the intervals before it again.
        pace.observe(at, records, false);
        assert_eq!(pace.baseline(), Some(5_000.0));
    }
}
