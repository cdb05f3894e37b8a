//! The one-line progress display of a phase: elapsed time against the total, operations so far
//! and the current rate, redrawn in place (`\r`) a few times a second by a thread that sleeps
//! between redraws and stops as soon as the phase ends.

use super::report::grouped;
use std::io::Write;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc::{Receiver, RecvTimeoutError};
use std::time::{Duration, Instant};

/// Time between redraws.
pub const PROGRESS_INTERVAL: Duration = Duration::from_millis(250);

/// ANSI "erase to the end of the line", so a shorter line leaves nothing of a longer one.
const ERASE_LINE_END: &str = "\x1b[K";

/// Operations one client thread has done, for the display. Aligned to a cache line so the
/// threads' counters do not share one.
#[derive(Debug, Default)]
#[repr(align(64))]
pub struct Tally {
    /// Operations of the warm-up (not measured).
    pub warmup_count: AtomicU64,
    /// Operations measured.
    pub measured_count: AtomicU64,
}

impl Tally {
    /// Counts one operation; only its thread writes the counters, so load-and-store is enough.
    pub fn add(&self, measured: bool) {
        let counter = if measured {
            &self.measured_count
        } else {
            &self.warmup_count
        };
        counter.store(counter.load(Ordering::Relaxed) + 1, Ordering::Relaxed);
    }
}

/// What the display knows of the phase.
#[derive(Clone, Debug)]
pub struct Plan {
    /// "load" or "run".
    pub label: &'static str,
    /// When the phase started.
    pub start: Instant,
    /// How long the warm-up lasts (zero for the load phase).
    pub warmup: Duration,
    /// How long the measured part lasts, if it is timed.
    pub duration: Option<Duration>,
    /// How many operations the measured part does, if it is counted (records for the load).
    pub total_count: Option<u64>,
    /// What the operations are called ("records", "ops").
    pub unit: &'static str,
}

/// Redraws the progress line on `out` every [`PROGRESS_INTERVAL`] until `stop` receives or its
/// sender is dropped, then erases it. Write errors end the display (it is only cosmetic).
pub fn display(plan: &Plan, tallies: &[Tally], stop: Receiver<()>, out: &mut dyn Write) {
    let mut last_count = 0;
    let mut last_at = plan.start;
    // Wakes on a message, on the sender's drop, or after the interval: never spins.
    while let Err(RecvTimeoutError::Timeout) = stop.recv_timeout(PROGRESS_INTERVAL) {
        let now = Instant::now();
        let warmup_count: u64 = tallies
            .iter()
            .map(|t| t.warmup_count.load(Ordering::Relaxed))
            .sum();
        let measured_count: u64 = tallies
            .iter()
            .map(|t| t.measured_count.load(Ordering::Relaxed))
            .sum();
        let count = warmup_count + measured_count;
        let interval = now.duration_since(last_at).as_secs_f64();
        let rate = if interval > 0.0 {
            (count - last_count) as f64 / interval
        } else {
            0.0
        };
        (last_count, last_at) = (count, now);
        let line = line(plan, now, warmup_count, measured_count, rate);
        if write!(out, "\r{line}{ERASE_LINE_END}")
            .and_then(|()| out.flush())
            .is_err()
        {
            return;
        }
    }
    let _ = write!(out, "\r{ERASE_LINE_END}").and_then(|()| out.flush());
}

/// The progress line at `now`.
fn line(plan: &Plan, now: Instant, warmup_count: u64, measured_count: u64, rate: f64) -> String {
    let elapsed = now.duration_since(plan.start);
    let rate = grouped(rate.round() as u64);
    if elapsed < plan.warmup {
        return format!(
            "warm-up {:.1}/{:.1} s   {} ops   {rate} ops/s",
            elapsed.as_secs_f64(),
            plan.warmup.as_secs_f64(),
            grouped(warmup_count)
        );
    }
    let measured = elapsed - plan.warmup;
    let time = match plan.duration {
        Some(duration) => format!(
            "{:.1}/{:.1} s",
            measured.as_secs_f64(),
            duration.as_secs_f64()
        ),
        None => format!("{:.1} s", measured.as_secs_f64()),
    };
    let count = match plan.total_count {
        Some(total) => format!("{}/{}", grouped(measured_count), grouped(total)),
        None => grouped(measured_count),
    };
    format!(
        "{} {time}   {count} {}   {rate} ops/s",
        plan.label, plan.unit
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::mpsc;

    #[test]
    fn lines_show_time_count_and_rate_in_each_part() {
        let start = Instant::now();
        let plan = Plan {
            label: "run",
            start,
            warmup: Duration::from_secs(2),
            duration: Some(Duration::from_secs(30)),
            total_count: None,
            unit: "ops",
        };
        let at = |ms| start + Duration::from_millis(ms);
        assert_eq!(
            line(&plan, at(1500), 1234, 0, 999.6),
            "warm-up 1.5/2.0 s   1,234 ops   1,000 ops/s"
        );
        assert_eq!(
            line(&plan, at(5000), 1234, 56_789, 40_000.0),
            "run 3.0/30.0 s   56,789 ops   40,000 ops/s"
        );
        let load = Plan {
            label: "load",
            warmup: Duration::ZERO,
            duration: None,
            total_count: Some(100_000),
            unit: "records",
            ..plan
        };
        assert_eq!(
            line(&load, at(2500), 0, 45_678, 18_271.2),
            "load 2.5 s   45,678/100,000 records   18,271 ops/s"
        );
    }

    #[test]
    fn display_redraws_in_place_and_stops_promptly_when_told() {
        let tallies: Vec<Tally> = (0..2).map(|_| Tally::default()).collect();
        tallies[0].add(true);
        tallies[1].add(true);
        let plan = Plan {
            label: "load",
            start: Instant::now(),
            warmup: Duration::ZERO,
            duration: None,
            total_count: Some(10),
            unit: "records",
        };
        let (stop, stopped) = mpsc::channel();
        let mut out = Vec::new();
        let began = Instant::now();
        std::thread::scope(|scope| {
            let display = scope.spawn(|| display(&plan, &tallies, stopped, &mut out));
            std::thread::sleep(PROGRESS_INTERVAL * 3);
            drop(stop);
            display.join().expect("display thread");
        });
        let waited = began.elapsed();
        assert!(waited < PROGRESS_INTERVAL * 5, "waited={waited:?}");
        let text = String::from_utf8(out).expect("utf-8");
        assert!(text.contains("\rload "), "{text:?}");
        assert!(text.contains("2/10 records"), "{text:?}");
        assert!(!text.contains('\n'), "{text:?}");
        assert!(text.ends_with("\r\x1b[K"), "{text:?}");
    }
}
