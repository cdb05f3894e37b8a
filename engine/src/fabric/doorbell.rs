//! The doorbell: how a polling thread sleeps when there is nothing to do and is woken when a
//! peer posts work for it, so an idle cluster uses close to no CPU.
//!
//! A doorbell is two words in memory that every writer can reach: a ring counter and the number
//! of sleepers. A writer bumps the counter and, only if someone sleeps, issues a futex wake on
//! it. A poller spins briefly on its own "is there work" check, then reads the counter, checks
//! once more, and sleeps on the futex until the counter changes or a timeout passes. Because the
//! counter is read before the last check, a ring that lands between the check and the sleep makes
//! the futex wait return at once: no lost wake-up.
//!
//! In a shared file mapping the futex is process-shared (no `FUTEX_PRIVATE_FLAG`), so the shm
//! transport's writers wake pollers in other processes; the TCP NIC thread rings the doorbell
//! of its own node.
#![allow(unsafe_code)]

use crate::clock::{Clock, Time};
use acre_nvm_log::{MapOptions, Mapping};
use std::io;
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

/// Bytes of a doorbell area.
pub const DOORBELL_BYTES: usize = 4096;
/// How many times a poller re-checks for work before it sleeps (a few microseconds).
pub const SPIN_CHECKS_MAX: u32 = 200;

const COUNTER_WORD: usize = 0;
const SLEEPERS_WORD: usize = 1;

/// A wake-up word shared by a node's pollers and everyone who posts work to them.
pub struct Doorbell {
    mapping: Mapping,
}

impl Doorbell {
    /// A doorbell in private memory (nodes in one process, or rung only by this node's NIC thread).
    pub fn anonymous() -> io::Result<Doorbell> {
        Ok(Doorbell {
            mapping: Mapping::anonymous(DOORBELL_BYTES)?,
        })
    }

    /// A new doorbell file that other processes can map and ring.
    pub fn create_file(path: &Path) -> io::Result<Doorbell> {
        Ok(Doorbell {
            mapping: Mapping::create_file(path, DOORBELL_BYTES, MapOptions::default())?,
        })
    }

    /// Maps another process's doorbell file.
    pub fn open_file(path: &Path) -> io::Result<Doorbell> {
        Ok(Doorbell {
            mapping: Mapping::open_file(path, MapOptions::default())?,
        })
    }

    fn word(&self, index: usize) -> &AtomicU64 {
        &self.mapping.words()[index]
    }

    /// The ring counter: read it before the last check for work, then pass it to [`Doorbell::sleep`].
    pub fn rings(&self) -> u64 {
        self.word(COUNTER_WORD).load(Ordering::SeqCst)
    }

    /// Wakes every sleeping poller.
    pub fn ring(&self) {
        self.word(COUNTER_WORD).fetch_add(1, Ordering::SeqCst);
        if self.word(SLEEPERS_WORD).load(Ordering::SeqCst) > 0 {
            futex_wake(self.word(COUNTER_WORD));
        }
    }

    /// Sleeps until the counter differs from `seen` (a ring since it was read) or `timeout` passes.
    pub fn sleep(&self, seen: u64, timeout: Duration) {
        self.word(SLEEPERS_WORD).fetch_add(1, Ordering::SeqCst);
        if self.word(COUNTER_WORD).load(Ordering::SeqCst) == seen {
            futex_wait(self.word(COUNTER_WORD), seen as u32, timeout);
        }
        self.word(SLEEPERS_WORD).fetch_sub(1, Ordering::SeqCst);
    }

    /// Calls `work` until it reports progress (returns true) or `clock` reads `deadline`:
    /// spins briefly, then sleeps on the doorbell between checks, each sleep as long in real
    /// time as `clock` says is left ([`Clock::real_duration_until`]: a slice of it on a
    /// controlled clock, whose rate may change), and looks at the clock again when it wakes.
    /// Returns whether there was progress.
    pub fn wait_until(
        &self,
        clock: &Clock,
        deadline: Time,
        mut work: impl FnMut() -> bool,
    ) -> bool {
        // A task of `interleave::run` lets the thread's other tasks run while it waits (no
        // spinning). Once they all wait, it sleeps on the doorbell, which any of their replies
        // rings, for at most a slice, and then every task looks again.
        let task = crate::interleave::may_switch();
        if !task {
            for _ in 0..SPIN_CHECKS_MAX {
                if work() {
                    return true;
                }
                std::hint::spin_loop();
            }
        }
        loop {
            let seen = self.rings();
            if work() {
                crate::interleave::progressed();
                return true;
            }
            let left = clock.real_duration_until(deadline);
            if left.is_zero() {
                crate::interleave::progressed();
                return false;
            }
            if task {
                // The ring count the first waiter of this round of turns read: a reply that
                // rang since, for any task of the thread, must not be slept through.
                let round = crate::interleave::round();
                let me = self as *const Doorbell as usize;
                let first = ROUND_SEEN.with(|first| match first.get() {
                    Some((doorbell, at, seen)) if doorbell == me && at == round => seen,
                    _ => {
                        first.set(Some((me, round, seen)));
                        seen
                    }
                });
                if crate::interleave::wait_turn() {
                    continue;
                }
                self.sleep(first, left.min(crate::interleave::BLOCK_SLICE));
                crate::interleave::progressed();
            } else {
                self.sleep(seen, left);
            }
        }
    }
}

thread_local! {
    /// In a thread of `interleave` tasks: the doorbell, round of turns and ring count of the
    /// round's first waiter on it.
    static ROUND_SEEN: std::cell::Cell<Option<(usize, u64, u64)>> =
        const { std::cell::Cell::new(None) };
}

/// The low 32 bits of the counter word, which is what the kernel compares (little-endian).
fn futex_address(word: &AtomicU64) -> *const u32 {
    word.as_ptr().cast::<u32>().cast_const()
}

fn futex_wait(word: &AtomicU64, expected: u32, timeout: Duration) {
    let timeout = libc::timespec {
        tv_sec: timeout.as_secs().min(i64::MAX as u64) as libc::time_t,
        tv_nsec: timeout.subsec_nanos() as libc::c_long,
    };
    // SAFETY: the address is the first 4 bytes of a live, aligned AtomicU64 in a mapping that
    // outlives the call; FUTEX_WAIT only reads it (atomically, in the kernel) and sleeps. The
    // timeout pointer refers to a local that outlives the call. Spurious returns are harmless:
    // callers re-check their condition.
    unsafe {
        libc::syscall(
            libc::SYS_futex,
            futex_address(word),
            libc::FUTEX_WAIT,
            expected,
            &timeout as *const libc::timespec,
        );
    }
}

fn futex_wake(word: &AtomicU64) {
    // SAFETY: the address is the first 4 bytes of a live, aligned AtomicU64; FUTEX_WAKE only
    // uses it as a key to find sleepers.
    unsafe {
        libc::syscall(
            libc::SYS_futex,
            futex_address(word),
            libc::FUTEX_WAKE,
            i32::MAX,
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;
    use std::sync::atomic::AtomicBool;
    use std::time::Instant;

    #[test]
    fn a_ring_wakes_a_sleeping_poller() {
        let bell = Arc::new(Doorbell::anonymous().unwrap());
        let flag = Arc::new(AtomicBool::new(false));
        let (b, f) = (bell.clone(), flag.clone());
        let poller = std::thread::spawn(move || {
            let start = Instant::now();
            let clock = Clock::system();
            let deadline = clock.now() + Duration::from_secs(10);
            let woke = b.wait_until(&clock, deadline, || f.load(Ordering::SeqCst));
            (woke, start.elapsed())
        });
        std::thread::sleep(Duration::from_millis(50));
        flag.store(true, Ordering::SeqCst);
        bell.ring();
        let (woke, elapsed) = poller.join().unwrap();
        assert!(woke);
        assert!(elapsed < Duration::from_secs(5), "woke after {elapsed:?}");
    }

    #[test]
    fn wait_times_out_without_work() {
        let bell = Doorbell::anonymous().unwrap();
        let clock = Clock::system();
        let start = Instant::now();
        assert!(!bell.wait_until(&clock, clock.now() + Duration::from_millis(30), || false));
        assert!(start.elapsed() >= Duration::from_millis(30));
    }

    /// The wait ends when the clock it was given reaches the deadline, not when real time
    /// does: a clock jumped forward ends it at once, a stopped one holds it however long.
    #[test]
    fn a_wait_follows_its_clock() {
        use crate::clock::Rate;
        let bell = Arc::new(Doorbell::anonymous().unwrap());
        let (clock, control) = Clock::controlled();
        control.set_rate(Rate::STOPPED);
        let waiter = {
            let (bell, clock) = (bell.clone(), clock.clone());
            std::thread::spawn(move || {
                let deadline = clock.now() + Duration::from_millis(10);
                let start = Instant::now();
                let woke = bell.wait_until(&clock, deadline, || false);
                (woke, start.elapsed())
            })
        };
        std::thread::sleep(Duration::from_millis(200));
        assert!(!waiter.is_finished(), "10 ms of a stopped clock passed");
        control.jump_forward(Duration::from_secs(60));
        let (woke, waited) = waiter.join().unwrap();
        assert!(!woke);
        assert!(waited < Duration::from_secs(5), "waited {waited:?}");
    }

    #[test]
    fn a_file_doorbell_is_shared_between_mappings() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("bell");
        let a = Doorbell::create_file(&path).unwrap();
        let b = Doorbell::open_file(&path).unwrap();
        let before = a.rings();
        b.ring();
        assert_eq!(a.rings(), before + 1);
    }
}
