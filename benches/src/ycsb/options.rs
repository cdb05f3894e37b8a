//! How a YCSB benchmark runs ([`Options`]) and the options that cannot run ([`OptionsError`]):
//! what the command line checks before it loads anything.

use super::workload::Workload;
use acre_engine::signal::Termination;
use std::sync::Arc;
use std::time::Duration;

/// Client threads a phase may start.
pub const THREADS_MAX: usize = 1024;

/// How a benchmark runs. The same options serve both phases (and both validate all of them); the
/// load phase uses `records`, `threads`, `seed` and `progress`.
#[derive(Clone, Debug)]
pub struct Options {
    pub workload: Workload,
    /// Records the load phase inserts (key numbers `0..records`); the run phase's inserts
    /// continue from there.
    pub records: u64,
    /// Client threads, each with its own session ([`Backend::client`](super::Backend::client)).
    pub threads: usize,
    /// How long the run phase measures, after the warm-up. Exactly one of `duration` and
    /// `operations` is given.
    pub duration: Option<Duration>,
    /// How many operations the run phase measures, after the warm-up, split evenly over the
    /// threads (as YCSB's `operationcount`).
    pub operations: Option<u64>,
    /// How long the run phase does operations before it starts measuring. They are done (they
    /// warm caches and the database) but left out of the results.
    pub warmup: Duration,
    /// Seed of every random choice (keys, operations, values); each thread derives its own
    /// stream from it. `None`: fresh entropy per thread.
    pub seed: Option<u64>,
    /// Redraw a progress line on stdout about four times a second (for a terminal).
    pub progress: bool,
    /// Ends a phase early when requested (Ctrl-C): every thread finishes the operation it is
    /// in, and the phase reports what it measured. `None`: the phase runs to its end.
    pub termination: Option<Arc<Termination>>,
}

/// Options that cannot run: the command line reports them as usage errors.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum OptionsError {
    #[error("the number of records must be at least 1")]
    ZeroRecords,
    #[error("the number of threads must be at least 1")]
    ZeroThreads,
    #[error("{threads} threads are too many: at most {max}")]
    TooManyThreads { threads: usize, max: usize },
    #[error("the duration must be longer than zero")]
    ZeroDuration,
    #[error("the number of operations must be at least 1")]
    ZeroOperations,
    #[error("give either a duration or a number of operations, not both")]
    DurationAndOperations,
    #[error("give a duration or a number of operations")]
    NoDurationOrOperations,
}

impl Options {
    /// Checks that the options can run; [`load`](super::load) and [`run`](super::run) call it first.
    pub fn validate(&self) -> Result<(), OptionsError> {
        if self.records == 0 {
            return Err(OptionsError::ZeroRecords);
        }
        if self.threads == 0 {
            return Err(OptionsError::ZeroThreads);
        }
        if self.threads > THREADS_MAX {
            return Err(OptionsError::TooManyThreads {
                threads: self.threads,
                max: THREADS_MAX,
            });
        }
        match (self.duration, self.operations) {
            (Some(_), Some(_)) => Err(OptionsError::DurationAndOperations),
            (None, None) => Err(OptionsError::NoDurationOrOperations),
            (Some(duration), None) if duration.is_zero() => Err(OptionsError::ZeroDuration),
            (None, Some(0)) => Err(OptionsError::ZeroOperations),
            _ => Ok(()),
        }
    }

    /// The run's operation count as YCSB uses it to predict the inserts: the given count, or
    /// for a timed run as many operations as records (what YCSB's workload files set).
    pub(super) fn expected_operations(&self) -> u64 {
        self.operations.unwrap_or(self.records)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn options() -> Options {
        Options {
            workload: Workload::A,
            records: 10,
            threads: 2,
            duration: Some(Duration::from_secs(1)),
            operations: None,
            warmup: Duration::ZERO,
            seed: Some(1),
            progress: false,
            termination: None,
        }
    }

    #[test]
    fn options_that_cannot_run_are_named() {
        assert_eq!(options().validate(), Ok(()));
        let cases = [
            (
                Options {
                    records: 0,
                    ..options()
                },
                OptionsError::ZeroRecords,
            ),
            (
                Options {
                    threads: 0,
                    ..options()
                },
                OptionsError::ZeroThreads,
            ),
            (
                Options {
                    threads: THREADS_MAX + 1,
                    ..options()
                },
                OptionsError::TooManyThreads {
                    threads: THREADS_MAX + 1,
                    max: THREADS_MAX,
                },
            ),
            (
                Options {
                    duration: Some(Duration::ZERO),
                    ..options()
                },
                OptionsError::ZeroDuration,
            ),
            (
                Options {
                    duration: None,
                    operations: Some(0),
                    ..options()
                },
                OptionsError::ZeroOperations,
            ),
            (
                Options {
                    operations: Some(5),
                    ..options()
                },
                OptionsError::DurationAndOperations,
            ),
            (
                Options {
                    duration: None,
                    ..options()
                },
                OptionsError::NoDurationOrOperations,
            ),
        ];
        for (options, expected) in cases {
            assert_eq!(options.validate(), Err(expected), "{options:?}");
        }
    }
}
