//! Waiting for SIGTERM or SIGINT without a signal handler: the signals are blocked in every
//! thread (call [`block_termination`] before spawning any) and one thread takes them with
//! `sigwait`, so shutdown runs as ordinary code.
//!
//! A node process waits in its main thread ([`wait_for_termination`]) and then stops. A client
//! process (`acre bank`, `acre bench`) has work to wind down first: [`Termination::watch`]
//! takes the signals on a thread of its own, blocked in `sigwait` (it never polls), and turns
//! the first one into a request that the work waits on or checks; the work stops, its
//! transactions finish or abort, and the process drops its `Db` as on any other exit. A second
//! signal ends the process at once, for a user whose first Ctrl-C seems ignored.
#![allow(unsafe_code)]

use std::io;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

fn termination_set() -> libc::sigset_t {
    // SAFETY: sigemptyset/sigaddset initialise and fill a sigset_t we own; a zeroed sigset_t is a
    // valid argument to sigemptyset.
    unsafe {
        let mut set: libc::sigset_t = std::mem::zeroed();
        libc::sigemptyset(&mut set);
        libc::sigaddset(&mut set, libc::SIGTERM);
        libc::sigaddset(&mut set, libc::SIGINT);
        set
    }
}

/// Blocks SIGTERM and SIGINT in the calling thread and every thread it spawns afterwards.
pub fn block_termination() -> io::Result<()> {
    let set = termination_set();
    // SAFETY: `set` is an initialised sigset_t; a null old-set pointer is allowed.
    let rc = unsafe { libc::pthread_sigmask(libc::SIG_BLOCK, &set, std::ptr::null_mut()) };
    if rc != 0 {
        return Err(io::Error::from_raw_os_error(rc));
    }
    Ok(())
}

/// Blocks until SIGTERM or SIGINT arrives; returns the signal number.
pub fn wait_for_termination() -> io::Result<i32> {
    let set = termination_set();
    let mut signal: libc::c_int = 0;
    // SAFETY: `set` is initialised and `signal` is a live out-parameter.
    let rc = unsafe { libc::sigwait(&set, &mut signal) };
    if rc != 0 {
        return Err(io::Error::from_raw_os_error(rc));
    }
    Ok(signal)
}

/// Sends SIGTERM to process `pid` (a node this process started).
pub fn terminate(pid: u32) -> io::Result<()> {
    send(pid, libc::SIGTERM)
}

/// Sends SIGINT to process `pid` (what Ctrl-C sends to a foreground process).
pub fn interrupt(pid: u32) -> io::Result<()> {
    send(pid, libc::SIGINT)
}

/// Sends SIGKILL to process `pid`: how a removed node of a shared-memory cluster is fenced
/// (docs/failures.md#fencing).
pub fn kill(pid: u32) -> io::Result<()> {
    send(pid, libc::SIGKILL)
}

/// Sends SIGSTOP to process `pid`: it stops where it is, holding whatever it holds, until
/// [`resume`] (the fault-injection harness's pause).
pub fn pause(pid: u32) -> io::Result<()> {
    send(pid, libc::SIGSTOP)
}

/// Sends SIGCONT to process `pid`, stopped by [`pause`].
pub fn resume(pid: u32) -> io::Result<()> {
    send(pid, libc::SIGCONT)
}

fn send(pid: u32, signal: libc::c_int) -> io::Result<()> {
    let pid = libc::pid_t::try_from(pid)
        .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "pid out of range"))?;
    // SAFETY: kill has no memory-safety preconditions; a wrong pid is an error, not UB.
    let rc = unsafe { libc::kill(pid, signal) };
    if rc != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// The exit status of a process ended by `signal` (the shell's convention: 128 + signal).
pub fn exit_status(signal: i32) -> i32 {
    128 + signal
}

/// A request to stop early, made by SIGTERM or SIGINT ([`Termination::watch`]) or by the code
/// that holds it ([`Termination::request`]). Work that runs for a while sleeps on it instead of
/// sleeping, and checks it between steps.
#[derive(Debug, Default)]
pub struct Termination {
    /// The signal that asked (0 for [`Termination::request`] without one), once one did.
    signal: Mutex<Option<i32>>,
    requested: Condvar,
    /// Whether `signal` is set, for a check on every operation of a hot loop.
    asked: AtomicBool,
}

impl Termination {
    /// A request nobody has made yet and no signal will make: for work run without a
    /// terminal (tests, embedding applications), which can still [`request`](Self::request) it.
    pub fn new() -> Arc<Termination> {
        Arc::new(Termination::default())
    }

    /// Blocks SIGTERM and SIGINT in the calling thread and every thread it spawns afterwards
    /// (so call it before any thread starts, as for [`block_termination`]), and starts a thread
    /// that waits for them: the first becomes the request, a second ends the process at once
    /// with [`exit_status`].
    pub fn watch() -> io::Result<Arc<Termination>> {
        block_termination()?;
        let termination = Termination::new();
        let watched = termination.clone();
        std::thread::Builder::new()
            .name("acre-signals".into())
            .spawn(move || {
                let Ok(first) = wait_for_termination() else {
                    return;
                };
                watched.request(first);
                if let Ok(second) = wait_for_termination() {
                    std::process::exit(exit_status(second));
                }
            })?;
        Ok(termination)
    }

    /// Requests termination as `signal` would (`0`: no signal).
    pub fn request(&self, signal: i32) {
        let mut requested = self.signal.lock().expect(crate::POISONED);
        requested.get_or_insert(signal);
        self.asked.store(true, Ordering::Release);
        self.requested.notify_all();
    }

    /// Whether termination was requested: one atomic load, for loops that check it often.
    pub fn is_requested(&self) -> bool {
        self.asked.load(Ordering::Acquire)
    }

    /// The signal that requested termination, if one did (`0` for a request without one).
    pub fn requested(&self) -> Option<i32> {
        *self.signal.lock().expect(crate::POISONED)
    }

    /// Sleeps for `duration` of real time, or until termination is requested; returns whether
    /// it was. Real time, not a node's clock: it measures how long a command (a benchmark)
    /// runs, which no protocol decision depends on.
    pub fn sleep(&self, duration: Duration) -> bool {
        let deadline = Instant::now() + duration;
        let mut requested = self.signal.lock().expect(crate::POISONED);
        while requested.is_none() {
            let now = Instant::now();
            if now >= deadline {
                return false;
            }
            requested = self
                .requested
                .wait_timeout(requested, deadline - now)
                .expect(crate::POISONED)
                .0;
        }
        true
    }
}

/// The name of a termination signal, for messages (`SIGINT`, `SIGTERM`, or the number).
pub fn signal_name(signal: i32) -> String {
    match signal {
        libc::SIGINT => "SIGINT".into(),
        libc::SIGTERM => "SIGTERM".into(),
        0 => "a request".into(),
        other => format!("signal {other}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_request_ends_a_sleep_early_and_stays() {
        let termination = Termination::new();
        assert!(!termination.sleep(Duration::from_millis(10)));
        assert_eq!(termination.requested(), None);
        assert!(!termination.is_requested());
        let sleeper = {
            let termination = termination.clone();
            std::thread::spawn(move || {
                let started = Instant::now();
                (
                    termination.sleep(Duration::from_secs(60)),
                    started.elapsed(),
                )
            })
        };
        std::thread::sleep(Duration::from_millis(20));
        termination.request(libc::SIGINT);
        let (requested, slept) = sleeper.join().expect("the sleeper");
        assert!(requested);
        assert!(termination.is_requested());
        assert!(slept < Duration::from_secs(30), "slept {slept:?}");
        // The first request is the one remembered; a later sleep returns at once.
        termination.request(libc::SIGTERM);
        assert_eq!(termination.requested(), Some(libc::SIGINT));
        assert!(termination.sleep(Duration::from_secs(60)));
        assert_eq!(signal_name(libc::SIGINT), "SIGINT");
    }
}
