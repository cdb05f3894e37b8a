//! Waiting before trying again, the one way the crate does it. On two shared cores a waiter
//! must hand the CPU to whoever it waits for: spinning is only for the first few checks. Its
//! sleeps are on a [`Clock`]: the node's, given with [`Backoff::with_clock`], in the data path
//! (docs/failures.md#clock).

use acre_engine::clock::Clock;
use acre_engine::interleave;
use acre_nvm_log::random::SplitMix;
use std::hash::{BuildHasher, Hasher};
use std::time::Duration;

/// Spins, then yields, then sleeps for growing (and, for retries, jittered) times.
#[derive(Debug)]
pub struct Backoff {
    attempt: u32,
    spins: u32,
    yields: u32,
    next: Duration,
    max: Duration,
    /// The generator of the jitter, when sleeps are jittered.
    jitter: Option<SplitMix>,
    /// What the sleeps are measured on.
    clock: Clock,
}

impl Backoff {
    /// For re-checking something another thread is about to change (a locked or torn object, a
    /// full log): 4 spins, 4 yields, then sleeps from 1 µs doubling up to 1 ms.
    pub fn poll() -> Backoff {
        Backoff {
            attempt: 0,
            spins: 4,
            yields: 4,
            next: Duration::from_micros(1),
            max: Duration::from_millis(1),
            jitter: None,
            clock: Clock::system(),
        }
    }

    /// Between attempts of a transaction that conflicted: sleeps from `first` doubling up to
    /// `max`, each uniform in [t/2, 3t/2) so threads that conflicted with each other do not
    /// retry in lockstep.
    pub fn retry(first: Duration, max: Duration) -> Backoff {
        assert!(!first.is_zero(), "first={first:?}");
        assert!(first <= max, "first={first:?} max={max:?}");
        // Seeded per backoff from the process's hash randomness.
        let seed = std::collections::hash_map::RandomState::new()
            .build_hasher()
            .finish();
        Backoff {
            attempt: 0,
            spins: 0,
            yields: 0,
            next: first,
            max,
            jitter: Some(SplitMix::new(seed)),
            clock: Clock::system(),
        }
    }

    /// This backoff with its sleeps on `clock` (the system clock otherwise).
    pub fn with_clock(mut self, clock: &Clock) -> Backoff {
        self.clock = clock.clone();
        self
    }

    /// Waits once, longer than the time before (up to the maximum).
    pub fn wait(&mut self) {
        let attempt = self.attempt;
        self.attempt = self.attempt.saturating_add(1);
        // A task of `interleave::run` lets the thread's other tasks run rather than spin.
        if attempt < self.spins + self.yields && interleave::wait_turn() {
            return;
        }
        if attempt < self.spins {
            std::hint::spin_loop();
            return;
        }
        if attempt < self.spins + self.yields {
            std::thread::yield_now();
            return;
        }
        let sleep = match &mut self.jitter {
            None => self.next,
            Some(random) => {
                let base = self.next.as_nanos() as u64;
                Duration::from_nanos(base / 2 + random.below(base.max(1)))
            }
        };
        self.sleep(sleep);
        self.next = (self.next * 2).min(self.max);
    }

    /// Sleeps for `duration` on the clock; a task of `interleave::run` lets the thread's other
    /// tasks run meanwhile, and sleeps only when they all wait too, a slice at a time.
    fn sleep(&self, duration: Duration) {
        if !interleave::may_switch() {
            self.clock.sleep(duration);
            return;
        }
        let deadline = self.clock.now().saturating_add(duration);
        loop {
            let left = self.clock.real_duration_until(deadline);
            if left.is_zero() {
                interleave::progressed();
                return;
            }
            if !interleave::wait_turn() {
                // Every task waits: sleep a slice (real time, as `left` is), then they all
                // look again.
                std::thread::sleep(left.min(interleave::BLOCK_SLICE));
                interleave::progressed();
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn poll_sleeps_grow_to_a_millisecond() {
        let mut backoff = Backoff::poll();
        for _ in 0..8 {
            backoff.wait(); // spins and yields: no sleep yet
        }
        assert_eq!(backoff.next, Duration::from_micros(1));
        for _ in 0..12 {
            backoff.wait();
        }
        assert_eq!(backoff.next, Duration::from_millis(1));
    }

    #[test]
    fn retry_sleeps_are_jittered_around_the_doubling_time() {
        let mut backoff = Backoff::retry(Duration::from_micros(10), Duration::from_micros(80));
        let start = std::time::Instant::now();
        for _ in 0..6 {
            backoff.wait();
        }
        // 10 + 20 + 40 + 80 + 80 + 80 µs, each at least half of that.
        assert!(
            start.elapsed() >= Duration::from_micros(155),
            "{:?}",
            start.elapsed()
        );
        assert_eq!(backoff.next, Duration::from_micros(80));
    }
}
