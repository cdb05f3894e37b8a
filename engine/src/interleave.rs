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
//! **Locks.** A task must not block on a lock another task of its thread holds across a switch:
//! the holder could never run again to release it. Code on the data path that holds a mutex
//! across a fabric wait takes it with [`lock`], which switches while the mutex is taken instead
//! of blocking the thread; other mutexes on that path are never held across a wait.

// Switching stacks is unsafe at two places: the yielder a task reaches through a thread-local,
// and a coroutine whose body borrows from the caller of `run`.
#![allow(unsafe_code)]

use corosensei::stack::DefaultStack;
use corosensei::{Coroutine, CoroutineResult, Yielder};
use std::cell::Cell;
use std::collections::VecDeque;
use std::sync::{Mutex, MutexGuard, TryLockError};

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
}

/// Whether the caller runs as a task of [`run`].
pub fn in_task() -> bool {
    !CURRENT.get().is_null()
}

/// Switches between tasks made on this thread so far (0 on a thread that never ran [`run`]).
pub fn switches() -> u64 {
    SWITCHES.get()
}

/// Called where a task would wait for something that completes without this thread (a fabric
/// completion, a reply, time passing): lets the other tasks run and returns `true` once this
/// task's turn comes again; the caller checks again and calls it again if still waiting.
/// Returns `false` at once outside a task, and when every task has had a turn since anything
/// completed: the caller then blocks on what it waits for, and calls [`progressed`] when done.
pub fn wait_turn() -> bool {
    if !in_task() || IDLE_TURNS.get() >= LIVE.get() {
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
}

/// Takes `mutex`, switching to the other tasks while it is taken when the caller is a task (the
/// holder may be a task of this thread, waiting for its turn); blocks as `Mutex::lock` does
/// otherwise. Panics if the mutex is poisoned (a thread panicked while holding it).
pub fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    if in_task() {
        loop {
            match mutex.try_lock() {
                Ok(guard) => return guard,
                Err(TryLockError::WouldBlock) => {
                    if !wait_turn() {
                        // Every task waits: the holder is another thread, or a task of this one
                        // that will block on its own wait at its next turn. Let the OS run it.
                        std::thread::yield_now();
                        IDLE_TURNS.set(IDLE_TURNS.get() + 1);
                        suspend();
                    }
                }
                Err(TryLockError::Poisoned(_)) => panic!("{}", crate::POISONED),
            }
        }
    }
    mutex.lock().expect(crate::POISONED)
}

/// Suspends the running task; the scheduler resumes it at a later turn.
fn suspend() {
    let yielder = CURRENT.get();
    assert!(!yielder.is_null(), "suspend outside a task");
    SWITCHES.set(SWITCHES.get() + 1);
    // SAFETY: `yielder` was set by this task's body from the `&Yielder` the coroutine passed
    // it, which lives on the task's own stack until the body returns; we are inside the body.
    unsafe { (*yielder).suspend(()) };
    // Back on this task's stack: the scheduler cleared CURRENT while it ran.
    CURRENT.set(yielder);
}

/// Runs `tasks` on this thread until every one has returned, switching between them where
/// one waits (see the module docs). A panic in a task ends the run and goes on in the caller,
/// after the other tasks' stacks are unwound. Panics if called from inside a task.
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
        }
    }
    let _reset = Reset;
    LIVE.set(ready.len());
    IDLE_TURNS.set(0);
    while let Some(mut task) = ready.pop_front() {
        let result = task.resume(());
        CURRENT.set(std::ptr::null());
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
    fn a_panicking_task_ends_the_run_and_unwinds_the_others() {
        struct Dropped<'a>(&'a Cell<u32>);
        impl Drop for Dropped<'_> {
            fn drop(&mut self) {
                self.0.set(self.0.get() + 1);
            }
        }
        let dropped = Cell::new(0);
        let outcome = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            let tasks: Vec<Box<dyn FnOnce() + '_>> = vec![
                Box::new(|| {
                    let _held = Dropped(&dropped);
                    while wait_turn() {}
                    unreachable!("the other task panics first");
                }),
                Box::new(|| panic!("task failed")),
            ];
            run(tasks);
        }));
        assert!(outcome.is_err());
        assert_eq!(dropped.get(), 1, "the waiting task's stack was unwound");
        assert!(!in_task());
        // The thread can run again.
        let ran = Cell::new(false);
        run(vec![Box::new(|| ran.set(true)) as Box<dyn FnOnce()>]);
        assert!(ran.get());
    }
}
