//! The one clock every lease and timeout reads, so that a test or a fault-injection harness can
//! shift, speed up, slow down or stop time in one process without touching the others.
//!
//! A [`Clock`] is a cheap handle (an enum around an `Arc`) with three variants:
//!
//! - [`Clock::system`]: the host's `CLOCK_MONOTONIC`, in nanoseconds. It is the same on every
//!   process of a host, so times read by different processes compare.
//! - [`Clock::controlled`] and [`Clock::controlled_by_file`]: the system clock transformed by a
//!   rate and by jumps. A [`ClockControl`] changes them in-process (tests); a [`ClockControlFile`]
//!   changes them from another process (the harness's clock nemesis), through a small mapped file
//!   in the cluster directory, [`control_file_path`] (`n<id>.clock`).
//! - [`Clock::manual`]: time that moves only when a [`ManualClock`] advances it, for deterministic
//!   simulation.
//!
//! # How a controlled clock runs
//!
//! Its time is piecewise linear in the system clock: `base + (real - base_real) * rate`. A change
//! of rate re-bases at the moment it is applied, so the clock bends but does not jump; a jump
//! adds to `base`. The three words are published with a sequence lock, so reading the clock takes
//! no lock and never allocates: the lease thread reads it between packets.
//!
//! # It never goes backwards, unless asked to
//!
//! Every reading goes through a floor, the largest value the clock has returned (raised with a
//! compare-exchange). So a backward jump made with [`Backward::Stall`] holds the clock still
//! until its line catches up with the floor, like an NTP slew that never steps back, and readers
//! racing a change of rate never see time go back. Only [`Backward::Jump`], the nemesis that
//! tests what code does when a monotonic clock is not, lowers the floor (under the sequence lock)
//! and makes `now()` return less than before; a reader raises the floor only if the line it read
//! is still current, so a reading of the old line cannot undo the jump.
//!
//! # The control file
//!
//! 4096 bytes, read and written only as atomic little-endian 64-bit words:
//!
//! | word | content |
//! | --- | --- |
//! | 0 | magic [`CONTROL_FILE_MAGIC`] (`ACRECLK1`); zero while the creator initialises it |
//! | 1 | generation: the writer bumps it after changing the words below |
//! | 2 | offset: the sum of all jumps asked for so far, in nanoseconds (`i64`) |
//! | 3 | rate in parts per million (1 000 000 = real time), at most [`Rate::PPM_MAX`] |
//! | 4 | how the last backward jump is taken: 0 = [`Backward::Stall`], 1 = [`Backward::Jump`] |
//!
//! Each field is one word, so a writer that dies half-way leaves nothing torn: every state of
//! the file is a valid control. A process checks word 1 on every reading (one load from a shared
//! page); when it differs from the generation it last applied, the reading thread applies the
//! offset's change since then as one jump, and the rate from that moment. Its first reading
//! applies the whole offset, so a process the harness restarts keeps the skew it was given; the
//! rates it ran at before do not carry over (a restarted process starts at the system clock
//! plus the offset).
#![allow(unsafe_code)]

use acre_nvm_log::{MapOptions, Mapping};
use std::fmt;
use std::io;
use std::ops::{Add, AddAssign, Sub};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering, fence};
use std::sync::{Arc, Condvar, Mutex};
use std::time::Duration;

use crate::addr::NodeId;

/// A point in time of a [`Clock`], in nanoseconds since that clock's origin (the host's boot for
/// the system clock). Times of different clocks do not compare.
#[derive(Clone, Copy, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Time(u64);

impl Time {
    pub const ZERO: Time = Time(0);
    pub const MAX: Time = Time(u64::MAX);

    pub const fn from_nanos(nanos: u64) -> Time {
        Time(nanos)
    }

    pub const fn as_nanos(self) -> u64 {
        self.0
    }

    pub fn checked_add(self, by: Duration) -> Option<Time> {
        self.0.checked_add(nanos_of(by)?).map(Time)
    }

    pub fn saturating_add(self, by: Duration) -> Time {
        Time(self.0.saturating_add(nanos_of(by).unwrap_or(u64::MAX)))
    }

    pub fn saturating_sub(self, by: Duration) -> Time {
        Time(self.0.saturating_sub(nanos_of(by).unwrap_or(u64::MAX)))
    }

    /// The time from `earlier` to `self`, or `None` if `earlier` is later.
    pub fn checked_duration_since(self, earlier: Time) -> Option<Duration> {
        self.0.checked_sub(earlier.0).map(Duration::from_nanos)
    }

    /// The time from `earlier` to `self`, zero if `earlier` is later.
    pub fn saturating_duration_since(self, earlier: Time) -> Duration {
        Duration::from_nanos(self.0.saturating_sub(earlier.0))
    }
}

/// `None` for a duration of more than `u64::MAX` nanoseconds (584 years).
fn nanos_of(duration: Duration) -> Option<u64> {
    u64::try_from(duration.as_nanos()).ok()
}

fn saturating_nanos(duration: Duration) -> u64 {
    nanos_of(duration).unwrap_or(u64::MAX)
}

impl Add<Duration> for Time {
    type Output = Time;
    /// Panics on overflow, like `Instant`: a deadline 584 years away is a bug.
    fn add(self, by: Duration) -> Time {
        self.checked_add(by)
            .unwrap_or_else(|| panic!("time overflow: {self} + {by:?}"))
    }
}

impl AddAssign<Duration> for Time {
    fn add_assign(&mut self, by: Duration) {
        *self = *self + by;
    }
}

impl Sub<Duration> for Time {
    type Output = Time;
    /// Panics on underflow: a time before the clock's origin is a bug.
    fn sub(self, by: Duration) -> Time {
        nanos_of(by)
            .and_then(|by| self.0.checked_sub(by))
            .map(Time)
            .unwrap_or_else(|| panic!("time underflow: {self} - {by:?}"))
    }
}

impl Sub<Time> for Time {
    type Output = Duration;
    /// Saturates at zero, like `Instant`: with [`Backward::Jump`] a later reading may be smaller.
    fn sub(self, earlier: Time) -> Duration {
        self.saturating_duration_since(earlier)
    }
}

impl fmt::Display for Time {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{}.{:09}s",
            self.0 / 1_000_000_000,
            self.0 % 1_000_000_000
        )
    }
}

impl fmt::Debug for Time {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Time({self})")
    }
}

/// Parts per million of real time.
const PPM: u64 = 1_000_000;

/// How fast a controlled clock runs, in parts per million of real time: 1 500 000 runs 1.5 times
/// as fast as the system clock, 0 stands still.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Rate(u64);

impl Rate {
    /// Real time.
    pub const REAL: Rate = Rate(PPM);
    /// A clock that stands still.
    pub const STOPPED: Rate = Rate(0);
    /// The fastest rate: a thousand times real time.
    pub const PPM_MAX: u64 = 1000 * PPM;

    /// Panics above [`Rate::PPM_MAX`].
    pub fn from_ppm(ppm: u64) -> Rate {
        assert!(ppm <= Rate::PPM_MAX, "ppm={ppm} max={}", Rate::PPM_MAX);
        Rate(ppm)
    }

    /// `numerator / denominator` times real time: `from_ratio(3, 2)` is 1.5.
    pub fn from_ratio(numerator: u64, denominator: u64) -> Rate {
        assert!(denominator > 0, "numerator={numerator} denominator=0");
        let ppm = u128::from(numerator) * u128::from(PPM) / u128::from(denominator);
        Rate::from_ppm(u64::try_from(ppm).unwrap_or(u64::MAX))
    }

    pub fn ppm(self) -> u64 {
        self.0
    }

    /// Clock nanoseconds that pass in `real_nanos` of real time.
    fn scale(self, real_nanos: u64) -> u64 {
        let nanos = u128::from(real_nanos) * u128::from(self.0) / u128::from(PPM);
        u64::try_from(nanos).unwrap_or(u64::MAX)
    }

    /// Real nanoseconds for `clock_nanos` to pass, rounded up; `None` when stopped.
    fn real_nanos_for(self, clock_nanos: u64) -> Option<u64> {
        if self.0 == 0 {
            return None;
        }
        let nanos = (u128::from(clock_nanos) * u128::from(PPM)).div_ceil(u128::from(self.0));
        Some(u64::try_from(nanos).unwrap_or(u64::MAX))
    }
}

/// How a controlled clock takes a jump backwards.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Backward {
    /// It holds still until the new line catches up: `now()` never decreases.
    Stall,
    /// It really goes back: `now()` returns less than before (a nemesis, only on request).
    Jump,
}

/// The longest a wait on a controlled or manual clock sleeps before it looks at the clock again:
/// its rate may change meanwhile, so a long sleep computed at the old rate could be far off.
pub const WAIT_SLICE_MAX: Duration = Duration::from_millis(50);

/// Reads of a controlled clock's line spin this many times on a change in progress before they
/// yield the processor to the writer.
const SEQ_SPINS_MAX: u32 = 64;

/// The host's monotonic clock in nanoseconds.
fn system_nanos() -> u64 {
    let mut now = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: `now` is a valid, writable timespec that outlives the call; CLOCK_MONOTONIC is
    // always supported on Linux, and clock_gettime (a vDSO call) neither allocates nor blocks.
    let rc = unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut now) };
    assert!(rc == 0, "clock_gettime(CLOCK_MONOTONIC) failed: rc={rc}");
    (now.tv_sec as u64) * 1_000_000_000 + now.tv_nsec as u64
}

/// A handle on a clock: cheap to clone and to send, and read without locks or allocation.
#[derive(Clone)]
pub struct Clock {
    inner: Inner,
}

#[derive(Clone)]
enum Inner {
    System,
    Controlled(Arc<Controlled>),
    Manual(Arc<Manual>),
}

impl fmt::Debug for Clock {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.inner {
            Inner::System => f.write_str("Clock::System"),
            Inner::Controlled(controlled) => {
                let line = controlled.line();
                write!(f, "Clock::Controlled(rate_ppm={})", line.rate.0)
            }
            Inner::Manual(manual) => write!(f, "Clock::Manual({})", manual.now()),
        }
    }
}

impl Default for Clock {
    fn default() -> Clock {
        Clock::system()
    }
}

impl Clock {
    /// The host's monotonic clock.
    pub fn system() -> Clock {
        Clock {
            inner: Inner::System,
        }
    }

    /// A clock that starts at the system clock's time and runs at real rate until `control`
    /// changes it.
    ///
    /// ```
    /// use acre_engine::clock::{Backward, Clock, Rate};
    /// use std::time::Duration;
    ///
    /// let (clock, control) = Clock::controlled();
    /// let before = clock.now();
    /// control.set_rate(Rate::from_ratio(3, 2)); // 1.5 times real time from now on
    /// control.jump_forward(Duration::from_secs(5));
    /// assert!(clock.now() - before >= Duration::from_secs(5));
    /// // Backwards only stalls the clock, unless a nemesis asks for a real jump.
    /// let ahead = clock.now();
    /// control.jump_back(Duration::from_secs(60), Backward::Stall);
    /// assert!(clock.now() >= ahead);
    /// ```
    pub fn controlled() -> (Clock, ClockControl) {
        let controlled = Arc::new(Controlled::new(None));
        let clock = Clock {
            inner: Inner::Controlled(Arc::clone(&controlled)),
        };
        (clock, ClockControl { controlled })
    }

    /// A controlled clock that another process changes through the control file at `path`
    /// (see the module docs), created with real rate and no offset if it does not exist.
    pub fn controlled_by_file(path: &Path) -> Result<Clock, ControlFileError> {
        let file = match ClockControlFile::create(path) {
            Err(ControlFileError::Io { source, .. })
                if source.kind() == io::ErrorKind::AlreadyExists =>
            {
                ClockControlFile::open(path)?
            }
            created => created?,
        };
        Ok(Clock {
            inner: Inner::Controlled(Arc::new(Controlled::new(Some(file.mapping)))),
        })
    }

    /// A clock at `start` that moves only when the returned [`ManualClock`] advances it.
    pub fn manual(start: Time) -> (Clock, ManualClock) {
        let manual = Arc::new(Manual {
            now_nanos: AtomicU64::new(start.0),
            waiters: Mutex::new(()),
            advanced: Condvar::new(),
        });
        let clock = Clock {
            inner: Inner::Manual(Arc::clone(&manual)),
        };
        (clock, ManualClock { manual })
    }

    /// The current time. Never allocates, never takes a lock; never decreases unless a control
    /// asked for a [`Backward::Jump`].
    pub fn now(&self) -> Time {
        match &self.inner {
            Inner::System => Time(system_nanos()),
            Inner::Controlled(controlled) => controlled.now(),
            Inner::Manual(manual) => manual.now(),
        }
    }

    /// The clock's current rate (real for the system clock, stopped for a manual one).
    pub fn rate(&self) -> Rate {
        match &self.inner {
            Inner::System => Rate::REAL,
            Inner::Controlled(controlled) => controlled.line().rate,
            Inner::Manual(_) => Rate::STOPPED,
        }
    }

    /// How long in real time to wait before this clock may reach `deadline`: exact for the
    /// system clock; at the current rate, and at most [`WAIT_SLICE_MAX`], for a controlled one;
    /// [`WAIT_SLICE_MAX`] for a manual one until it is there. A thread that waits on something
    /// else (a socket) uses it as its timeout and then reads the clock again.
    pub fn real_duration_until(&self, deadline: Time) -> Duration {
        let now = self.now();
        let Some(ahead) = deadline
            .checked_duration_since(now)
            .filter(|d| !d.is_zero())
        else {
            return Duration::ZERO;
        };
        match &self.inner {
            Inner::System => ahead,
            Inner::Controlled(_) => self
                .rate()
                .real_nanos_for(saturating_nanos(ahead))
                .map_or(WAIT_SLICE_MAX, |nanos| {
                    Duration::from_nanos(nanos).min(WAIT_SLICE_MAX)
                }),
            Inner::Manual(_) => WAIT_SLICE_MAX,
        }
    }

    /// Sleeps until the clock reads `deadline` or later, at whatever rate it runs meanwhile.
    /// On a manual clock, until someone advances it that far.
    pub fn sleep_until(&self, deadline: Time) {
        if let Inner::Manual(manual) = &self.inner {
            manual.wait_until(deadline);
            return;
        }
        loop {
            let real = self.real_duration_until(deadline);
            if real.is_zero() {
                return;
            }
            std::thread::sleep(real);
        }
    }

    /// Sleeps for `duration` of this clock's time.
    pub fn sleep(&self, duration: Duration) {
        self.sleep_until(self.now().saturating_add(duration));
    }
}

/// A controlled clock's line: `base + (real - base_real) * rate`.
#[derive(Clone, Copy, Debug)]
struct Line {
    base_real: u64,
    base: u64,
    rate: Rate,
}

impl Line {
    fn at(&self, real: u64) -> u64 {
        self.base
            .saturating_add(self.rate.scale(real.saturating_sub(self.base_real)))
    }
}

/// What a change does to the line, applied at one real instant.
struct Change {
    /// Added to the clock's time (negative: backwards).
    jump_nanos: i64,
    /// The new rate; `None` keeps the current one.
    rate: Option<Rate>,
    backward: Backward,
}

struct Controlled {
    /// Sequence lock over the three line words: odd while a writer changes them.
    seq: AtomicU64,
    base_real: AtomicU64,
    base: AtomicU64,
    rate_ppm: AtomicU64,
    /// The largest time returned so far (see the module docs).
    floor: AtomicU64,
    file: Option<FileWatch>,
}

/// The control file of a clock controlled by another process, and how much of it is applied.
/// The two counters are written only by the thread that holds the sequence lock.
struct FileWatch {
    mapping: Mapping,
    applied_generation: AtomicU64,
    applied_offset: AtomicU64,
}

impl Controlled {
    fn new(file: Option<Mapping>) -> Controlled {
        let real = system_nanos();
        Controlled {
            seq: AtomicU64::new(0),
            base_real: AtomicU64::new(real),
            base: AtomicU64::new(real),
            rate_ppm: AtomicU64::new(PPM),
            floor: AtomicU64::new(0),
            file: file.map(|mapping| FileWatch {
                mapping,
                // Never a generation, so the first reading applies the file.
                applied_generation: AtomicU64::new(u64::MAX),
                applied_offset: AtomicU64::new(0),
            }),
        }
    }

    fn now(&self) -> Time {
        if let Some(watch) = &self.file {
            self.apply_file_if_changed(watch);
        }
        loop {
            let (line, seq) = self.line_and_seq();
            let computed = line.at(system_nanos());
            let floor = self.floor.load(Ordering::Acquire);
            if computed <= floor {
                return Time(floor);
            }
            // Raise the floor only if no change came in since the line was read: a backward
            // jump lowers the floor under the lock, and a reading of the old line must not
            // raise it again (the jump would become a stall). A change between the floor's
            // load and here shows in `seq`; one after it makes the exchange fail.
            if self.seq.load(Ordering::Acquire) != seq {
                continue;
            }
            if self
                .floor
                .compare_exchange(floor, computed, Ordering::AcqRel, Ordering::Acquire)
                .is_ok()
            {
                return Time(computed);
            }
        }
    }

    /// The current line, read under the sequence lock.
    fn line(&self) -> Line {
        self.line_and_seq().0
    }

    /// The current line and the (even) sequence number it was read at.
    fn line_and_seq(&self) -> (Line, u64) {
        let mut spins = 0u32;
        loop {
            let before = self.seq.load(Ordering::Acquire);
            if before.is_multiple_of(2) {
                let line = Line {
                    base_real: self.base_real.load(Ordering::Relaxed),
                    base: self.base.load(Ordering::Relaxed),
                    rate: Rate(self.rate_ppm.load(Ordering::Relaxed)),
                };
                fence(Ordering::Acquire);
                if self.seq.load(Ordering::Relaxed) == before {
                    return (line, before);
                }
            }
            // A writer is in its few stores. It never blocks while it holds the lock, so this
            // ends as soon as it runs again: spin a little, then let it have the processor.
            spins += 1;
            if spins < SEQ_SPINS_MAX {
                std::hint::spin_loop();
            } else {
                std::thread::yield_now();
            }
        }
    }

    /// Takes the sequence lock if no one holds it; returns the odd sequence number to release.
    fn try_lock(&self) -> Option<u64> {
        let seq = self.seq.load(Ordering::Relaxed);
        if !seq.is_multiple_of(2) {
            return None;
        }
        self.seq
            .compare_exchange(seq, seq + 1, Ordering::Acquire, Ordering::Relaxed)
            .ok()?;
        fence(Ordering::Release);
        Some(seq + 1)
    }

    fn lock(&self) -> u64 {
        loop {
            if let Some(seq) = self.try_lock() {
                return seq;
            }
            std::thread::yield_now();
        }
    }

    fn unlock(&self, seq: u64) {
        assert!(!seq.is_multiple_of(2), "seq={seq}");
        self.seq.store(seq + 1, Ordering::Release);
    }

    /// Applies `change` now; the caller holds the sequence lock.
    fn apply_locked(&self, change: &Change) {
        let line = Line {
            base_real: self.base_real.load(Ordering::Relaxed),
            base: self.base.load(Ordering::Relaxed),
            rate: Rate(self.rate_ppm.load(Ordering::Relaxed)),
        };
        let real = system_nanos();
        let at = line.at(real);
        let base = at.saturating_add_signed(change.jump_nanos);
        self.base_real.store(real, Ordering::Relaxed);
        self.base.store(base, Ordering::Relaxed);
        let rate = change.rate.unwrap_or(line.rate);
        self.rate_ppm.store(rate.0, Ordering::Relaxed);
        if change.jump_nanos < 0 && change.backward == Backward::Jump {
            self.floor.store(base, Ordering::Relaxed);
        }
    }

    fn apply(&self, change: &Change) {
        let seq = self.lock();
        self.apply_locked(change);
        self.unlock(seq);
    }

    fn apply_file_if_changed(&self, watch: &FileWatch) {
        let words = watch.mapping.words();
        let generation = words[WORD_GENERATION].load(Ordering::Acquire);
        if generation == watch.applied_generation.load(Ordering::Relaxed) {
            return;
        }
        // Another thread applying it already is as good as applying it here.
        let Some(seq) = self.try_lock() else { return };
        if generation != watch.applied_generation.load(Ordering::Relaxed)
            && words[WORD_MAGIC].load(Ordering::Relaxed) == CONTROL_FILE_MAGIC
        {
            let offset = words[WORD_OFFSET].load(Ordering::Relaxed) as i64;
            let applied = watch.applied_offset.load(Ordering::Relaxed) as i64;
            // A writer that stored a rate above the maximum gets the maximum.
            let rate_ppm = words[WORD_RATE].load(Ordering::Relaxed).min(Rate::PPM_MAX);
            let backward = match words[WORD_BACKWARD].load(Ordering::Relaxed) {
                BACKWARD_JUMP => Backward::Jump,
                _ => Backward::Stall,
            };
            self.apply_locked(&Change {
                jump_nanos: offset.wrapping_sub(applied),
                rate: Some(Rate(rate_ppm)),
                backward,
            });
            watch.applied_offset.store(offset as u64, Ordering::Relaxed);
        }
        watch
            .applied_generation
            .store(generation, Ordering::Relaxed);
        self.unlock(seq);
    }
}

/// Changes a clock made by [`Clock::controlled`], from any thread of its process.
#[derive(Clone)]
pub struct ClockControl {
    controlled: Arc<Controlled>,
}

impl fmt::Debug for ClockControl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "ClockControl(rate_ppm={})",
            self.controlled.line().rate.0
        )
    }
}

impl ClockControl {
    /// Runs the clock at `rate` from now on, without a jump.
    pub fn set_rate(&self, rate: Rate) {
        self.controlled.apply(&Change {
            jump_nanos: 0,
            rate: Some(rate),
            backward: Backward::Stall,
        });
    }

    /// Moves the clock forward by `by` at once.
    pub fn jump_forward(&self, by: Duration) {
        self.controlled.apply(&Change {
            jump_nanos: i64::try_from(saturating_nanos(by)).unwrap_or(i64::MAX),
            rate: None,
            backward: Backward::Stall,
        });
    }

    /// Moves the clock's line back by `by`, taken as `backward` says.
    pub fn jump_back(&self, by: Duration, backward: Backward) {
        self.controlled.apply(&Change {
            jump_nanos: -i64::try_from(saturating_nanos(by)).unwrap_or(i64::MAX),
            rate: None,
            backward,
        });
    }

    /// The clock this controls.
    pub fn clock(&self) -> Clock {
        Clock {
            inner: Inner::Controlled(Arc::clone(&self.controlled)),
        }
    }
}

/// Bytes of a clock control file.
pub const CONTROL_FILE_BYTES: usize = 4096;
/// Word 0 of a clock control file: `ACRECLK1` in little-endian bytes.
pub const CONTROL_FILE_MAGIC: u64 = u64::from_le_bytes(*b"ACRECLK1");
const WORD_MAGIC: usize = 0;
const WORD_GENERATION: usize = 1;
const WORD_OFFSET: usize = 2;
const WORD_RATE: usize = 3;
const WORD_BACKWARD: usize = 4;
const BACKWARD_STALL: u64 = 0;
const BACKWARD_JUMP: u64 = 1;

/// Where the clock control file of `node` lives in the cluster directory `dir`.
pub fn control_file_path(dir: &Path, node: NodeId) -> PathBuf {
    dir.join(format!("{node}.clock"))
}

/// The clock of the process that runs `node` of the cluster in `dir`: controlled through the
/// node's control file ([`control_file_path`]) if one is there when the process starts (the
/// fault-injection harness creates it to skew this one process's clock), else the system
/// clock. A file created later is not looked at. A file that is there but cannot be mapped, or
/// is not a control file, is an error naming it: a process does not start on a clock other than
/// the one it was given.
pub fn node_clock(dir: &Path, node: NodeId) -> Result<Clock, ControlFileError> {
    let path = control_file_path(dir, node);
    match path.try_exists() {
        Ok(false) => Ok(Clock::system()),
        Ok(true) => Clock::controlled_by_file(&path),
        Err(source) => Err(ControlFileError::Io { path, source }),
    }
}

/// Why a clock control file could not be used.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ControlFileError {
    #[error("cannot map the clock control file {path}: {source}; check the path and permissions")]
    Io { path: PathBuf, source: io::Error },
    #[error(
        "{path} is not a clock control file (word 0 is {magic:#018x}): remove it, and the \
         process or harness that reads it creates a new one"
    )]
    NotAControlFile { path: PathBuf, magic: u64 },
}

/// The writer's side of a clock control file: what a harness in another process uses to change
/// the clock of the process that reads it (see the module docs for the format).
pub struct ClockControlFile {
    mapping: Mapping,
}

impl fmt::Debug for ClockControlFile {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ClockControlFile")
            .field("path", &self.mapping.path())
            .finish()
    }
}

impl ClockControlFile {
    /// Creates a control file at `path` (real rate, no offset); fails if it exists.
    pub fn create(path: &Path) -> Result<ClockControlFile, ControlFileError> {
        let mapping = Mapping::create_file(path, CONTROL_FILE_BYTES, MapOptions::default())
            .map_err(|source| ControlFileError::Io {
                path: path.to_path_buf(),
                source,
            })?;
        let words = mapping.words();
        words[WORD_RATE].store(PPM, Ordering::Relaxed);
        words[WORD_MAGIC].store(CONTROL_FILE_MAGIC, Ordering::Relaxed);
        words[WORD_GENERATION].fetch_add(1, Ordering::Release);
        Ok(ClockControlFile { mapping })
    }

    /// Maps an existing control file.
    pub fn open(path: &Path) -> Result<ClockControlFile, ControlFileError> {
        let io = |source| ControlFileError::Io {
            path: path.to_path_buf(),
            source,
        };
        let mapping = Mapping::open_file(path, MapOptions::default()).map_err(io)?;
        if mapping.len() != CONTROL_FILE_BYTES {
            return Err(io(io::Error::new(
                io::ErrorKind::InvalidData,
                format!("{} bytes instead of {CONTROL_FILE_BYTES}", mapping.len()),
            )));
        }
        let magic = mapping.words()[WORD_MAGIC].load(Ordering::Acquire);
        // Zero: its creator has not finished; the reader applies it once the magic is there.
        if magic != CONTROL_FILE_MAGIC && magic != 0 {
            return Err(ControlFileError::NotAControlFile {
                path: path.to_path_buf(),
                magic,
            });
        }
        Ok(ClockControlFile { mapping })
    }

    fn publish(&self) {
        self.mapping.words()[WORD_GENERATION].fetch_add(1, Ordering::Release);
    }

    /// Runs the reading process's clock at `rate` from when it sees the change.
    pub fn set_rate(&self, rate: Rate) {
        self.mapping.words()[WORD_RATE].store(rate.0, Ordering::Relaxed);
        self.publish();
    }

    /// Moves the reading process's clock forward by `by`.
    pub fn jump_forward(&self, by: Duration) {
        let by = saturating_nanos(by);
        self.mapping.words()[WORD_OFFSET].fetch_add(by, Ordering::Relaxed);
        self.publish();
    }

    /// Moves the reading process's clock back by `by`, taken as `backward` says. A process that
    /// sees several jumps at once takes their sum as the last one says.
    pub fn jump_back(&self, by: Duration, backward: Backward) {
        let words = self.mapping.words();
        let mode = match backward {
            Backward::Stall => BACKWARD_STALL,
            Backward::Jump => BACKWARD_JUMP,
        };
        words[WORD_BACKWARD].store(mode, Ordering::Relaxed);
        words[WORD_OFFSET].fetch_sub(saturating_nanos(by), Ordering::Relaxed);
        self.publish();
    }
}

struct Manual {
    now_nanos: AtomicU64,
    /// Only for sleepers: `now` never takes it.
    waiters: Mutex<()>,
    advanced: Condvar,
}

impl Manual {
    fn now(&self) -> Time {
        Time(self.now_nanos.load(Ordering::Acquire))
    }

    fn wait_until(&self, deadline: Time) {
        let mut guard = self.waiters.lock().expect(crate::POISONED);
        while self.now() < deadline {
            guard = self.advanced.wait(guard).expect(crate::POISONED);
        }
    }
}

/// Moves a clock made by [`Clock::manual`]; time never moves otherwise.
#[derive(Clone)]
pub struct ManualClock {
    manual: Arc<Manual>,
}

impl fmt::Debug for ManualClock {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "ManualClock({})", self.manual.now())
    }
}

impl ManualClock {
    /// Moves the clock forward by `by` and wakes the threads sleeping on it.
    pub fn advance(&self, by: Duration) {
        self.set(self.now().saturating_add(by));
    }

    /// Moves the clock to `to`, which may not be earlier than now.
    pub fn set(&self, to: Time) {
        let _guard = self.manual.waiters.lock().expect(crate::POISONED);
        let now = self.manual.now();
        assert!(
            to >= now,
            "a manual clock never goes back: to={to} now={now}"
        );
        self.manual.now_nanos.store(to.0, Ordering::Release);
        self.manual.advanced.notify_all();
    }

    pub fn now(&self) -> Time {
        self.manual.now()
    }

    /// The clock this moves.
    pub fn clock(&self) -> Clock {
        Clock {
            inner: Inner::Manual(Arc::clone(&self.manual)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Instant;

    const MS: Duration = Duration::from_millis(1);

    #[test]
    fn time_arithmetic_saturates_where_instant_does_and_prints_seconds() {
        let t = Time::from_nanos(1_500_000_000);
        assert_eq!((t + MS).as_nanos(), 1_501_000_000);
        assert_eq!((t - MS).as_nanos(), 1_499_000_000);
        assert_eq!(t - (t + MS), Duration::ZERO, "saturates like Instant");
        assert_eq!((t + MS) - t, MS);
        assert_eq!(t.checked_duration_since(t + MS), None);
        assert_eq!(Time::MAX.checked_add(MS), None);
        assert_eq!(Time::ZERO.saturating_sub(MS), Time::ZERO);
        assert_eq!(t.to_string(), "1.500000000s");
        let mut u = t;
        u += MS;
        assert!(u > t);
    }

    #[test]
    #[should_panic(expected = "time underflow")]
    fn a_time_before_the_origin_is_a_bug() {
        let _ = Time::from_nanos(5) - MS;
    }

    #[test]
    fn rates_scale_and_round_waits_up() {
        assert_eq!(Rate::from_ratio(3, 2).ppm(), 1_500_000);
        assert_eq!(Rate::from_ratio(3, 2).scale(1_000), 1_500);
        assert_eq!(Rate::from_ratio(1, 4).real_nanos_for(1), Some(4));
        assert_eq!(
            Rate::from_ratio(3, 1).real_nanos_for(10),
            Some(4),
            "rounded up"
        );
        assert_eq!(Rate::STOPPED.real_nanos_for(10), None);
        assert_eq!(Rate::REAL.scale(u64::MAX), u64::MAX);
    }

    #[test]
    fn the_system_clock_follows_instant() {
        let clock = Clock::system();
        let (t0, i0) = (clock.now(), Instant::now());
        std::thread::sleep(20 * MS);
        let (t1, i1) = (clock.now(), Instant::now());
        let clock_elapsed = t1 - t0;
        let instant_elapsed = i1 - i0;
        assert!(clock_elapsed >= 20 * MS, "{clock_elapsed:?}");
        let gap = clock_elapsed.abs_diff(instant_elapsed);
        assert!(
            gap < 2 * MS,
            "clock={clock_elapsed:?} instant={instant_elapsed:?}"
        );
        let until = clock.real_duration_until(t1 + 7 * MS);
        assert!(until <= 7 * MS && until > 5 * MS, "{until:?}");
    }

    /// How many times faster than real time `clock` ran over about `real`, in percent.
    fn percent_over(clock: &Clock, real: Duration) -> u128 {
        let (t0, i0) = (clock.now(), Instant::now());
        std::thread::sleep(real);
        let (t1, i1) = (clock.now(), Instant::now());
        (t1 - t0).as_micros() * 100 / (i1 - i0).as_micros()
    }

    #[test]
    fn a_controlled_clock_runs_at_its_rate_and_bends_without_jumping() {
        let (clock, control) = Clock::controlled();
        let real = Clock::system();
        assert!(
            clock.now().abs_diff_nanos(real.now()) < 1_000_000,
            "starts at the system clock"
        );

        control.set_rate(Rate::from_ratio(3, 2));
        let fast = percent_over(&clock, 100 * MS);
        assert!((145..=155).contains(&fast), "rate 1.5: {fast}%");

        control.set_rate(Rate::from_ratio(1, 2));
        let slow = percent_over(&clock, 100 * MS);
        assert!((45..=55).contains(&slow), "rate 0.5: {slow}%");

        // A change of rate does not move the clock: readings just before and after differ by
        // about nothing.
        let before = clock.now();
        control.set_rate(Rate::from_ppm(10 * PPM));
        let after = clock.now();
        assert!(after - before < MS, "before={before} after={after}");

        control.set_rate(Rate::STOPPED);
        let t = clock.now();
        std::thread::sleep(5 * MS);
        assert_eq!(clock.now(), t, "a stopped clock stands still");
    }

    #[test]
    fn jumps_forward_move_the_clock_and_backward_ones_stall_unless_asked_to_jump() {
        let (clock, control) = Clock::controlled();
        let t0 = clock.now();
        control.jump_forward(Duration::from_secs(10));
        let t1 = clock.now();
        assert!(t1 - t0 >= Duration::from_secs(10), "t0={t0} t1={t1}");

        // Stall: the clock holds still while its line is behind what it returned, and runs
        // again once the line catches up (here by a jump forward, not to wait a second).
        control.jump_back(Duration::from_secs(1), Backward::Stall);
        let stalled = clock.now();
        assert!(stalled >= t1, "never backwards: t1={t1} stalled={stalled}");
        std::thread::sleep(10 * MS);
        assert_eq!(clock.now(), stalled, "still held");
        control.jump_forward(Duration::from_secs(1));
        std::thread::sleep(MS);
        assert!(clock.now() > stalled, "runs again after catching up");

        // Jump: really backwards.
        let before = clock.now();
        control.jump_back(Duration::from_secs(5), Backward::Jump);
        let after = clock.now();
        assert!(after < before, "before={before} after={after}");
        assert!(
            before - after > Duration::from_secs(4),
            "before={before} after={after}"
        );
    }

    #[test]
    fn readers_racing_changes_never_see_time_go_back() {
        let (clock, control) = Clock::controlled();
        let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let readers: Vec<_> = (0..2)
            .map(|_| {
                let (clock, stop) = (clock.clone(), Arc::clone(&stop));
                std::thread::spawn(move || {
                    let mut last = clock.now();
                    let mut readings = 0u64;
                    while !stop.load(Ordering::Relaxed) {
                        let now = clock.now();
                        assert!(now >= last, "last={last} now={now}");
                        last = now;
                        readings += 1;
                    }
                    readings
                })
            })
            .collect();
        let start = Instant::now();
        let mut i = 0u64;
        while start.elapsed() < Duration::from_millis(200) {
            control.set_rate(Rate::from_ppm((i % 5) * PPM / 2));
            control.jump_back(Duration::from_micros(50), Backward::Stall);
            control.jump_forward(Duration::from_micros(20));
            i += 1;
            std::thread::sleep(Duration::from_micros(100));
        }
        stop.store(true, Ordering::Relaxed);
        for reader in readers {
            assert!(reader.join().unwrap() > 0);
        }
    }

    #[test]
    fn readers_racing_a_backward_jump_do_not_undo_it() {
        let (clock, control) = Clock::controlled();
        let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let readers: Vec<_> = (0..2)
            .map(|_| {
                let (clock, stop) = (clock.clone(), Arc::clone(&stop));
                std::thread::spawn(move || {
                    while !stop.load(Ordering::Relaxed) {
                        std::hint::black_box(clock.now());
                    }
                })
            })
            .collect();
        // Many jumps, so a reader of the old line often races one; each is undone by a jump
        // forward so time does not run back to the clock's origin. A jump of a second stands
        // out from any preemption of this thread between its two readings.
        for _ in 0..10_000 {
            let before = clock.now();
            control.jump_back(Duration::from_secs(1), Backward::Jump);
            let after = clock.now();
            assert!(
                before - after > Duration::from_millis(500),
                "before={before} after={after}"
            );
            control.jump_forward(Duration::from_secs(1));
        }
        stop.store(true, Ordering::Relaxed);
        for reader in readers {
            reader.join().unwrap();
        }
    }

    #[test]
    fn sleeps_and_waits_honour_the_rate() {
        let (clock, control) = Clock::controlled();
        control.set_rate(Rate::from_ppm(2 * PPM));
        let start = Instant::now();
        clock.sleep(100 * MS);
        let real = start.elapsed();
        assert!(
            real >= 49 * MS && real < 80 * MS,
            "rate 2: 100 ms took {real:?}"
        );
        let until = clock.real_duration_until(clock.now() + 40 * MS);
        assert!(until <= 20 * MS && until > 15 * MS, "{until:?}");
        assert_eq!(
            clock.real_duration_until(clock.now() + Duration::from_secs(60)),
            WAIT_SLICE_MAX,
            "a rate may change: never wait longer than a slice"
        );
        assert_eq!(clock.real_duration_until(Time::ZERO), Duration::ZERO);

        // A stopped clock's sleeper wakes when the rate comes back.
        control.set_rate(Rate::STOPPED);
        let sleeper = {
            let clock = clock.clone();
            let deadline = clock.now() + 10 * MS;
            std::thread::spawn(move || clock.sleep_until(deadline))
        };
        std::thread::sleep(30 * MS);
        assert!(!sleeper.is_finished(), "time stands still");
        control.set_rate(Rate::REAL);
        sleeper.join().unwrap();
    }

    #[test]
    fn a_control_file_changes_the_clock_of_whoever_maps_it() {
        let dir = tempfile::tempdir().unwrap();
        let path = control_file_path(dir.path(), NodeId(3));
        assert!(path.ends_with("n3.clock"));
        // The process's side creates the file; the harness opens it.
        let clock = Clock::controlled_by_file(&path).unwrap();
        let harness = ClockControlFile::open(&path).unwrap();

        let t0 = clock.now();
        harness.jump_forward(Duration::from_secs(100));
        assert!(clock.now() - t0 >= Duration::from_secs(100));

        harness.set_rate(Rate::from_ratio(3, 2));
        let fast = percent_over(&clock, 100 * MS);
        assert!((145..=155).contains(&fast), "rate 1.5: {fast}%");
        harness.set_rate(Rate::REAL);

        let before = clock.now();
        harness.jump_back(Duration::from_secs(60), Backward::Stall);
        assert!(clock.now() >= before, "a stall never goes back");
        harness.jump_back(Duration::from_secs(20), Backward::Jump);
        let after = clock.now();
        assert!(
            before - after > Duration::from_secs(70),
            "before={before} after={after}"
        );

        // A second reader of an existing file (a restarted process) starts at the system clock
        // plus the file's offset, 100 - 60 - 20 seconds, and sees later jumps.
        let second = Clock::controlled_by_file(&path).unwrap();
        let expected = Clock::system().now() + Duration::from_secs(20);
        assert!(
            second.now().abs_diff_nanos(expected) < 5_000_000,
            "{}",
            second.now()
        );
        let s0 = second.now();
        harness.jump_forward(Duration::from_secs(1));
        assert!(second.now() - s0 >= Duration::from_secs(1));
    }

    #[test]
    fn a_node_reads_its_control_file_if_there_is_one_and_refuses_a_damaged_one() {
        let dir = tempfile::tempdir().unwrap();
        let clock = node_clock(dir.path(), NodeId(2)).unwrap();
        assert!(matches!(clock.inner, Inner::System), "{clock:?}");
        assert!(
            !control_file_path(dir.path(), NodeId(2)).exists(),
            "no file is created for a node on the system clock"
        );

        let harness = ClockControlFile::create(&control_file_path(dir.path(), NodeId(2))).unwrap();
        harness.jump_forward(Duration::from_secs(100));
        let clock = node_clock(dir.path(), NodeId(2)).unwrap();
        assert!(
            clock.now() - Clock::system().now() >= Duration::from_secs(99),
            "the skew the harness set before the start: {clock:?}"
        );

        let damaged = control_file_path(dir.path(), NodeId(3));
        std::fs::write(&damaged, [0xffu8; CONTROL_FILE_BYTES]).unwrap();
        let err = node_clock(dir.path(), NodeId(3)).unwrap_err();
        assert!(
            matches!(err, ControlFileError::NotAControlFile { .. }),
            "{err}"
        );
        assert!(err.to_string().contains("n3.clock"), "{err}");
    }

    /// Set in the child process of the next test: the control file it reads its clock from.
    const CHILD_ENV: &str = "ACRE_CLOCK_TEST_CHILD_FILE";

    /// The same test binary, run again as another process, reads its clock through the control
    /// file while this one changes it, as the harness will.
    #[test]
    fn another_process_changes_this_ones_clock_through_the_file() {
        if let Ok(path) = std::env::var(CHILD_ENV) {
            // The child: wait (at most 5 s) to see the jump, then measure the rate.
            let clock = Clock::controlled_by_file(Path::new(&path)).unwrap();
            let start = Instant::now();
            while clock.now() - Clock::system().now() < Duration::from_secs(99) {
                assert!(start.elapsed() < Duration::from_secs(5), "no jump seen");
                std::thread::sleep(MS);
            }
            println!("child rate {}%", percent_over(&clock, 100 * MS));
            return;
        }
        let dir = tempfile::tempdir().unwrap();
        let path = control_file_path(dir.path(), NodeId(1));
        let harness = ClockControlFile::create(&path).unwrap();
        let child = std::process::Command::new(std::env::current_exe().unwrap())
            .args([
                "--exact",
                "clock::tests::another_process_changes_this_ones_clock_through_the_file",
                "--nocapture",
                "--test-threads=1",
            ])
            .env(CHILD_ENV, &path)
            .stdout(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        std::thread::sleep(20 * MS);
        harness.set_rate(Rate::from_ppm(2 * PPM));
        harness.jump_forward(Duration::from_secs(100));
        let output = child.wait_with_output().unwrap();
        let stdout = String::from_utf8_lossy(&output.stdout);
        assert!(output.status.success(), "{stdout}");
        // The test harness prints it after "test ... " on the same line.
        let percent: u128 = stdout
            .split("child rate ")
            .nth(1)
            .and_then(|rest| rest.split('%').next())
            .and_then(|number| number.parse().ok())
            .unwrap_or_else(|| panic!("no rate in the child's output: {stdout}"));
        assert!((190..=210).contains(&percent), "rate 2: {percent}%");
    }

    #[test]
    fn files_that_are_not_control_files_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        let garbage = dir.path().join("garbage");
        std::fs::write(&garbage, [0xffu8; CONTROL_FILE_BYTES]).unwrap();
        let err = ClockControlFile::open(&garbage).unwrap_err();
        assert!(
            matches!(err, ControlFileError::NotAControlFile { .. }),
            "{err}"
        );
        assert!(err.to_string().contains("remove it"), "{err}");
        let short = dir.path().join("short");
        std::fs::write(&short, [0u8; 64]).unwrap();
        let err = Clock::controlled_by_file(&short).unwrap_err();
        assert!(matches!(err, ControlFileError::Io { .. }), "{err}");
        let missing = dir.path().join("no-such-dir").join("n1.clock");
        assert!(ClockControlFile::open(&missing).is_err());
    }

    #[test]
    fn a_manual_clock_moves_only_when_advanced_and_wakes_its_sleepers() {
        let (clock, manual) = Clock::manual(Time::from_nanos(1_000));
        assert_eq!(clock.now(), Time::from_nanos(1_000));
        std::thread::sleep(2 * MS);
        assert_eq!(clock.now(), Time::from_nanos(1_000));
        manual.advance(MS);
        assert_eq!(clock.now(), Time::from_nanos(1_001_000));

        let deadline = clock.now() + 10 * MS;
        let sleeper = {
            let clock = clock.clone();
            std::thread::spawn(move || {
                clock.sleep_until(deadline);
                clock.now()
            })
        };
        manual.advance(5 * MS);
        std::thread::sleep(10 * MS);
        assert!(!sleeper.is_finished(), "halfway there");
        manual.advance(5 * MS);
        assert!(sleeper.join().unwrap() >= deadline);
        assert_eq!(clock.real_duration_until(deadline), Duration::ZERO);
        assert_eq!(clock.real_duration_until(deadline + MS), WAIT_SLICE_MAX);
    }

    #[test]
    #[should_panic(expected = "never goes back")]
    fn a_manual_clock_refuses_to_go_back() {
        let (_clock, manual) = Clock::manual(Time::from_nanos(1_000));
        manual.set(Time::from_nanos(999));
    }

    #[test]
    fn handles_are_cheap_to_share() {
        fn shareable<T: Clone + Send + Sync>() {}
        shareable::<Clock>();
        shareable::<ClockControl>();
        shareable::<ManualClock>();
        assert!(size_of::<Clock>() <= 16);
    }

    impl Time {
        fn abs_diff_nanos(self, other: Time) -> u64 {
            self.0.abs_diff(other.0)
        }
    }
}
