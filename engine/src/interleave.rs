//! Many transactions in flight on one client thread (docs/protocol.md#interleaved-transactions).
//!
//! A transaction spends most of its life waiting: for a batch of fabric operations to come back
//! over tcp, for a reply in its reply area, for a lock another transaction holds, or for a
//! backoff to pass. [`run`] runs several tasks (closures that use the ordinary blocking
//! `txn.read`/`write`/`commit` API) on the calling thread, each on a stack of its own (a
//! stackful coroutine), and switches to another task where one would wait. The places that
//! wait call [`wait_turn`]; outside [`run`] it does nothing and they block as before, so the
//! blocking API is unchanged and only a thread that asks for interleaving gets it.
//!
//! **When a waiter blocks anyway.** The thread has nothing else to run once every task has
//! had a turn since anything completed: then [`wait_turn`] says so and its caller blocks on what
//! it waits for (a socket read, a futex, a sleep) instead of polling in circles, so an
//! interleaving thread never spins while everything it runs is waiting.
//!
//! A waiter that blocks on a doorbell or a backoff sleeps at most [`BLOCK_SLICE`] at a time
//! before every task looks again, and the doorbell wakes it for any task's reply. A waiter on a
//! tcp batch blocks until its own batch completes (which reads the other batches' responses on
//! that connection too): one round trip in the normal case, but a peer that stops answering
//! holds the thread's tasks until the connection is declared broken.
//!
//! **Locks.** A task must not block on a lock another task of its thread holds across a switch:
//! the holder could never run again to release it. Code on the data path that holds a mutex
//! across a fabric wait takes it with [`lock`]: while another task of the thread holds a mutex
//! taken that way, a task that finds its mutex taken switches instead of blocking; otherwise
//! the holder is another thread and it blocks as `Mutex::lock` does. No other mutex on that path
//! that two tasks could both want is held across a wait.
//!
//! **Panics.** No task switches while it unwinds. A task that panics while others are in the
//! middle of their work aborts the process (as release builds do on any panic): their stacks
//! hold transactions and links that could only be released by running them.

// Switching stacks is unsafe at two places: the yielder a task reaches through a thread-local,
// and a coroutine whose body borrows from the caller of `run`.
#![allow(unsafe_code)]

use corosensei::stack::DefaultStack;
use corosensei::{Coroutine, CoroutineResult, Yielder};
use std::cell::Cell;
use std::collections::VecDeque;
use std::ops::{Deref, DerefMut};
use std::sync::{Mutex, MutexGuard, TryLockError};
use std::time::Duration;

/// The longest a task sleeps on a doorbell or a backoff while the thread's other tasks wait too,
/// before they all look again.
pub const BLOCK_SLICE: Duration = Duration::from_micros(200);

/// The stack of each task. Pages are touched only as the stack grows; the guard page below it
/// turns an overflow into a fault rather than a corruption.
pub const TASK_STACK_BYTES: usize = 2 << 20;

/// The task body as the coroutine runs it.
type Body<'a> = Box<dyn FnOnce(&Yielder<(), ()>, ()) + 'a>;

thread_local! {
    /// The yielder of the task running on this thread; null on the thread's own stack.
    static CURRENT: Cell<*const Yielder<(), ()>> = const { Cell::new(std::ptr::null()) };
    /// Tasks of this thread's [`run`] not finished yet.
    static LIVE: Cell<usize> = const { Cell::new(0) };
    /// Turns given up by waiters since a wait last completed or a task finished.
    static IDLE_TURNS: Cell<usize> = const { Cell::new(0) };
    /// Switches between tasks on this thread, ever (for tests and reports).
    static SWITCHES: Cell<u64> = const { Cell::new(0) };
    /// Waits that completed on this thread, ever: the idle turns since the last one form a
    /// round ([`round`]).
    static ROUNDS: Cell<u64> = const { Cell::new(0) };
    /// Guards of [`lock`] held by this thread's tasks, and by the running one.
    static HELD: Cell<usize> = const { Cell::new(0) };
    static HELD_BY_RUNNING: Cell<usize> = const { Cell::new(0) };
}

/// Whether the caller runs as a task of [`run`].
pub fn in_task() -> bool {
    !CURRENT.get().is_null()
}

/// Switches between tasks made on this thread so far (0 on a thread that never ran [`run`]).
pub fn switches() -> u64 {
    SWITCHES.get()
}

/// Whether the caller may switch to another task: it runs as a task and is not unwinding from
/// a panic.
pub fn may_switch() -> bool {
    in_task() && !std::thread::panicking()
}

/// Called where a task would wait for something that completes without this thread (a fabric
/// completion, a reply, time passing): lets the other tasks run and returns `true` once this
/// task's turn comes again; the caller checks again and calls it again if still waiting.
/// Returns `false` at once outside a task or while unwinding, and when every task has had a
/// turn since anything completed: the caller then blocks on what it waits for (for at most
/// [`BLOCK_SLICE`] where it can), and calls [`progressed`] when it wakes.
pub fn wait_turn() -> bool {
    if !may_switch() || IDLE_TURNS.get() >= LIVE.get() {
        return false;
    }
    IDLE_TURNS.set(IDLE_TURNS.get() + 1);
    suspend();
    true
}

/// Says the caller's wait completed: the tasks that gave up their turn may find theirs
/// completed too, so each gets another turn before anyone blocks.
pub fn progressed() {
    IDLE_TURNS.set(0);
    ROUNDS.set(ROUNDS.get() + 1);
}

/// The current round of turns: it changes whenever a wait completes ([`progressed`]). A waiter
/// that blocks at the end of a round may rely on what the waiters before it in the same round
/// saw (the doorbell sleeps on the ring count the round's first waiter read).
pub fn round() -> u64 {
    ROUNDS.get()
}

/// Takes `mutex`. In a task, while another task of this thread holds a mutex taken here, a
/// taken mutex may be held by one of them, waiting for its turn: the caller switches to the
/// other tasks until it is free. Otherwise the holder is another thread and the caller blocks
/// as `Mutex::lock` does. Panics if the mutex is poisoned (a thread panicked while holding it).
pub fn lock<T>(mutex: &Mutex<T>) -> Guard<'_, T> {
    if !in_task() {
        return Guard::new(mutex.lock().expect(crate::POISONED), false);
    }
    loop {
        match mutex.try_lock() {
            Ok(guard) => return Guard::new(guard, true),
            Err(TryLockError::WouldBlock) => {
                if HELD.get() == HELD_BY_RUNNING.get() {
                    break; // no other task of this thread holds one: another thread does
                }
                if std::thread::panicking() {
                    abort(
                        "a task unwinding from a panic needs a lock another task of its thread may hold",
                    );
                }
                if !wait_turn() {
                    // Every task waits. A holder among them blocks on its own wait at its turn
                    // and then goes on: give it the turn rather than block on it.
                    IDLE_TURNS.set(IDLE_TURNS.get() + 1);
                    suspend();
                }
            }
            Err(TryLockError::Poisoned(_)) => panic!("{}", crate::POISONED),
        }
    }
    Guard::new(mutex.lock().expect(crate::POISONED), true)
}

/// A mutex taken with [`lock`]; counted while a task holds it.
pub struct Guard<'a, T> {
    guard: MutexGuard<'a, T>,
    counted: bool,
}

impl<'a, T> Guard<'a, T> {
    fn new(guard: MutexGuard<'a, T>, counted: bool) -> Guard<'a, T> {
        if counted {
            HELD.set(HELD.get() + 1);
            HELD_BY_RUNNING.set(HELD_BY_RUNNING.get() + 1);
        }
        Guard { guard, counted }
    }
}

impl<T> Deref for Guard<'_, T> {
    type Target = T;
    fn deref(&self) -> &T {
        &self.guard
    }
}

impl<T> DerefMut for Guard<'_, T> {
    fn deref_mut(&mut self) -> &mut T {
        &mut self.guard
    }
}

impl<T> Drop for Guard<'_, T> {
    fn drop(&mut self) {
        if self.counted {
            HELD.set(HELD.get() - 1);
            HELD_BY_RUNNING.set(HELD_BY_RUNNING.get() - 1);
        }
    }
}

/// Stops the process: a task's state cannot be released without running it.
fn abort(why: &str) -> ! {
    eprintln!("acre: {why}; aborting");
    std::process::abort()
}

/// Suspends the running task; the scheduler resumes it at a later turn.
fn suspend() {
    let yielder = CURRENT.get();
    assert!(!yielder.is_null(), "suspend outside a task");
    SWITCHES.set(SWITCHES.get() + 1);
    let held = HELD_BY_RUNNING.replace(0);
    // SAFETY: `yielder` was set by this task's body from the `&Yielder` the coroutine passed
    // it, which lives on the task's own stack until the body returns; we are inside the body.
    unsafe { (*yielder).suspend(()) };
    // Back on this task's stack: the scheduler cleared CURRENT while it ran.
    CURRENT.set(yielder);
    HELD_BY_RUNNING.set(held);
}

/// Runs `tasks` on this thread until every one has returned, switching between them where
/// one waits (see the module docs). A panic in a task ends the run and goes on in the caller
/// when no other task is part-way through (aborts the process otherwise). Panics if called
/// from inside a task.
pub fn run<'a>(tasks: impl IntoIterator<Item = Box<dyn FnOnce() + 'a>>) {
    assert!(!in_task(), "interleave::run called from inside a task");
    assert_eq!(LIVE.get(), 0, "interleave::run called while one runs");
    let mut ready: VecDeque<Coroutine<(), (), (), DefaultStack>> = VecDeque::new();
    for task in tasks {
        let body: Body<'a> = Box::new(move |yielder: &Yielder<(), ()>, ()| {
            CURRENT.set(yielder);
            task();
            CURRENT.set(std::ptr::null());
        });
        let stack = DefaultStack::new(TASK_STACK_BYTES)
            .unwrap_or_else(|e| panic!("cannot map a task stack of {TASK_STACK_BYTES} bytes: {e}"));
        // SAFETY: what `body` borrows lives for 'a, which outlives this call; every coroutine
        // is owned by `ready` (or the loop below) and is run to completion or dropped (its
        // stack unwound) before this function returns, panic or not; none is forgotten.
        ready.push_back(unsafe { Coroutine::with_stack_unchecked(stack, body) });
    }
    struct Reset;
    impl Drop for Reset {
        fn drop(&mut self) {
            CURRENT.set(std::ptr::null());
            LIVE.set(0);
            IDLE_TURNS.set(0);
            HELD.set(0);
            HELD_BY_RUNNING.set(0);
        }
    }
    let _reset = Reset;
    LIVE.set(ready.len());
    IDLE_TURNS.set(0);
    while let Some(mut task) = ready.pop_front() {
        let result = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| task.resume(())));
        CURRENT.set(std::ptr::null());
        let result = match result {
            Ok(result) => result,
            Err(panic) => {
                if ready.iter().any(|other| other.started()) {
                    abort("a task panicked while others were part-way through their work");
                }
                // Tasks never started hold nothing: dropping them drops only what their
                // closures captured.
                ready.clear();
                std::panic::resume_unwind(panic);
            }
        };
        match result {
            CoroutineResult::Yield(()) => ready.push_back(task),
            CoroutineResult::Return(()) => {
                LIVE.set(LIVE.get() - 1);
                progressed();
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::cell::RefCell;
    use std::sync::Arc;
    use std::sync::atomic::{AtomicBool, Ordering};
    use std::time::Duration;

    /// Waits like the fabric does: polls, gives up its turn, blocks once everyone waits.
    fn wait_for(flag: &AtomicBool, blocked: &Cell<u32>) {
        loop {
            if flag.load(Ordering::Acquire) {
                progressed();
                return;
            }
            if !wait_turn() {
                blocked.set(blocked.get() + 1);
                while !flag.load(Ordering::Acquire) {
                    std::thread::sleep(Duration::from_micros(100));
                }
                progressed();
                return;
            }
        }
    }

    #[test]
    fn tasks_run_in_turns_where_they_wait() {
        let log = RefCell::new(Vec::new());
        let done = AtomicBool::new(true);
        let blocked = Cell::new(0);
        let tasks: Vec<Box<dyn FnOnce() + '_>> = (0..3)
            .map(|i| {
                let (log, done, blocked) = (&log, &done, &blocked);
                Box::new(move || {
                    log.borrow_mut().push((i, 'a'));
                    // Not waiting for anything: no switch.
                    wait_for(done, blocked);
                    log.borrow_mut().push((i, 'b'));
                    assert!(wait_turn(), "another task is ready");
                    log.borrow_mut().push((i, 'c'));
                }) as Box<dyn FnOnce()>
            })
            .collect();
        let before = switches();
        run(tasks);
        assert_eq!(
            *log.borrow(),
            vec![
                (0, 'a'),
                (0, 'b'),
                (1, 'a'),
                (1, 'b'),
                (2, 'a'),
                (2, 'b'),
                (0, 'c'),
                (1, 'c'),
                (2, 'c')
            ]
        );
        assert_eq!(switches() - before, 3);
        assert_eq!(blocked.get(), 0);
        assert!(!in_task());
    }

    #[test]
    fn waiters_block_once_every_task_waits_and_each_completion_is_seen() {
        // Four tasks each wait for a flag another thread sets later; the thread must not spin
        // through turns meanwhile: some waiter blocks, and every task finishes.
        let flags: Vec<Arc<AtomicBool>> =
            (0..4).map(|_| Arc::new(AtomicBool::new(false))).collect();
        let setter = {
            let flags = flags.clone();
            std::thread::spawn(move || {
                for flag in flags.iter().rev() {
                    std::thread::sleep(Duration::from_millis(5));
                    flag.store(true, Ordering::Release);
                }
            })
        };
        let blocked = Cell::new(0);
        let finished = Cell::new(0);
        let before = switches();
        let tasks: Vec<Box<dyn FnOnce() + '_>> = flags
            .iter()
            .map(|flag| {
                let (blocked, finished) = (&blocked, &finished);
                Box::new(move || {
                    wait_for(flag, blocked);
                    finished.set(finished.get() + 1);
                }) as Box<dyn FnOnce()>
            })
            .collect();
        run(tasks);
        setter.join().unwrap();
        assert_eq!(finished.get(), 4);
        assert!(blocked.get() >= 1, "nobody blocked: the thread spun");
        // Each task gave up at most one turn per completion seen before someone blocked.
        assert!(
            switches() - before <= 4 * 5,
            "{} switches",
            switches() - before
        );
    }

    #[test]
    fn a_mutex_held_by_a_waiting_task_is_waited_for_by_switching() {
        let mutex = Mutex::new(0u32);
        let ready = AtomicBool::new(false);
        let blocked = Cell::new(0);
        let tasks: Vec<Box<dyn FnOnce() + '_>> = vec![
            Box::new(|| {
                let mut guard = lock(&mutex);
                // Waits with the mutex held; the other task takes its turn.
                assert!(wait_turn());
                ready.store(true, Ordering::Release);
                *guard += 1;
            }),
            Box::new(|| {
                // Would deadlock the thread with `mutex.lock()`.
                let mut guard = lock(&mutex);
                assert!(ready.load(Ordering::Acquire));
                *guard += 10;
            }),
            Box::new(|| wait_for(&AtomicBool::new(true), &blocked)),
        ];
        run(tasks);
        assert_eq!(*mutex.lock().unwrap(), 11);
    }

    #[test]
    fn outside_a_task_nothing_switches() {
        assert!(!in_task());
        assert!(!wait_turn());
        let mutex = Mutex::new(());
        drop(lock(&mutex));
    }

    #[test]
    fn a_task_that_panics_before_the_others_started_ends_the_run() {
        let started = Cell::new(false);
        let outcome = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            let tasks: Vec<Box<dyn FnOnce() + '_>> = vec![
                Box::new(|| panic!("task failed")),
                Box::new(|| started.set(true)),
            ];
            run(tasks);
        }));
        assert!(outcome.is_err());
        assert!(!started.get());
        assert!(!in_task());
        // The thread can run again.
        let ran = Cell::new(false);
        run(vec![Box::new(|| ran.set(true)) as Box<dyn FnOnce()>]);
        assert!(ran.get());
    }

    /// The child of [`a_task_that_panics_while_others_are_part_way_aborts`].
    #[test]
    fn panic_while_others_are_part_way_child() {
        if std::env::var_os(ABORT_CHILD).is_none() {
            return;
        }
        let mutex = Mutex::new(());
        let tasks: Vec<Box<dyn FnOnce() + '_>> = vec![
            Box::new(|| {
                let _link = lock(&mutex);
                while wait_turn() {}
            }),
            Box::new(|| panic!("task failed")),
        ];
        run(tasks);
    }

    const ABORT_CHILD: &str = "ACRE_INTERLEAVE_ABORT_CHILD";

    /// Unwinding a task suspended part-way could need what another suspended task holds (a
    /// link it would append an ABORT on): the process aborts instead, as release builds do.
    #[test]
    fn a_task_that_panics_while_others_are_part_way_aborts() {
        use std::os::unix::process::ExitStatusExt;
        let output = std::process::Command::new(std::env::current_exe().expect("test binary"))
            .args([
                "--exact",
                "interleave::tests::panic_while_others_are_part_way_child",
                "--nocapture",
                "--test-threads=1",
            ])
            .env(ABORT_CHILD, "1")
            .output()
            .expect("run the child");
        assert_eq!(output.status.signal(), Some(libc::SIGABRT), "{output:?}");
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert!(stderr.contains("part-way through their work"), "{stderr}");
    }

    /// A task unwinding from a panic never switches: the others must not run while this
    /// thread is panicking (a guard they drop would poison its mutex).
    #[test]
    fn a_task_does_not_switch_while_it_unwinds() {
        struct WaitsOnDrop<'a>(&'a Cell<Option<bool>>);
        impl Drop for WaitsOnDrop<'_> {
            fn drop(&mut self) {
                self.0.set(Some(wait_turn()));
            }
        }
        let switched = Cell::new(None);
        let outcome = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            let tasks: Vec<Box<dyn FnOnce() + '_>> = vec![Box::new(|| {
                let _w = WaitsOnDrop(&switched);
                panic!("task failed");
            })];
            run(tasks);
        }));
        assert!(outcome.is_err());
        assert_eq!(switched.get(), Some(false));
    }

    /// When every task waits on the doorbell, a reply for any of them wakes the thread: the one
    /// that blocked goes back to the turns instead of sleeping until its own reply.
    #[test]
    fn a_reply_for_any_task_wakes_a_thread_whose_tasks_all_wait() {
        use crate::clock::Clock;
        use crate::fabric::Doorbell;
        let doorbell = Arc::new(Doorbell::anonymous().expect("a doorbell"));
        let clock = Clock::system();
        let (first, second) = (
            Arc::new(AtomicBool::new(false)),
            Arc::new(AtomicBool::new(false)),
        );
        let replier = {
            let (doorbell, first, second) = (doorbell.clone(), first.clone(), second.clone());
            std::thread::spawn(move || {
                std::thread::sleep(Duration::from_millis(10));
                second.store(true, Ordering::Release);
                doorbell.ring();
                std::thread::sleep(Duration::from_millis(500));
                first.store(true, Ordering::Release);
                doorbell.ring();
            })
        };
        let start = std::time::Instant::now();
        let second_done = Cell::new(None);
        let deadline = clock.now().saturating_add(Duration::from_secs(10));
        let tasks: Vec<Box<dyn FnOnce() + '_>> = vec![
            Box::new(|| {
                assert!(doorbell.wait_until(&clock, deadline, || first.load(Ordering::Acquire)))
            }),
            Box::new(|| {
                assert!(doorbell.wait_until(&clock, deadline, || second.load(Ordering::Acquire)));
                second_done.set(Some(start.elapsed()));
            }),
        ];
        run(tasks);
        replier.join().expect("the replier");
        let second_done = second_done.get().expect("the second task finished");
        assert!(
            second_done < Duration::from_millis(400),
            "the second task's reply came at 10 ms, it went on at {second_done:?}"
        );
    }

    /// A mutex held by another thread (not by a task of this one) is waited for by blocking,
    /// not by switching in circles.
    #[test]
    fn a_mutex_another_thread_holds_is_waited_for_by_blocking() {
        let mutex = Arc::new(Mutex::new(()));
        let (taken, release) = (std::sync::mpsc::channel(), std::sync::mpsc::channel::<()>());
        let holder = {
            let mutex = mutex.clone();
            let (taken, release) = (taken.0, release.1);
            std::thread::spawn(move || {
                let _held = mutex.lock().expect("not poisoned");
                taken.send(()).expect("the test waits");
                std::thread::sleep(Duration::from_millis(100));
                drop(release);
            })
        };
        taken.1.recv().expect("the holder took it");
        let before = switches();
        let tasks: Vec<Box<dyn FnOnce() + '_>> = (0..2)
            .map(|_| Box::new(|| drop(lock(&mutex))) as Box<dyn FnOnce()>)
            .collect();
        run(tasks);
        holder.join().expect("the holder");
        assert!(switches() - before < 10, "{} switches", switches() - before);
    }
}
