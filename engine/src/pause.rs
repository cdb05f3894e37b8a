//! Pause points: named places in the protocol code where a test can stop a thread, do
//! something while it waits, and let it go on, so that a race window is hit every time instead
//! of once in a million runs.
//!
//! `pause::point("reply.poll.tag_read")` costs nothing unless the cargo feature `pause-points`
//! is on (tests turn it on through their dev-dependencies; release builds never have it). With
//! the feature, a point does nothing until a test [`arm`]s its name: then the next thread to
//! reach it blocks until the test [`Armed::release`]s it (or drops the handle).

#[cfg(feature = "pause-points")]
mod enabled {
    use std::collections::HashMap;
    use std::sync::{Arc, Condvar, Mutex, OnceLock};
    use std::time::{Duration, Instant};

    /// How long a paused thread waits for its release before it goes on by itself, so that a
    /// test that forgets a point cannot hang the whole test binary.
    pub const PAUSE_MAX: Duration = Duration::from_secs(30);

    #[derive(Default)]
    struct Point {
        reached: bool,
        released: bool,
    }

    type Shared = Arc<(Mutex<Point>, Condvar)>;

    fn armed() -> &'static Mutex<HashMap<&'static str, Shared>> {
        static ARMED: OnceLock<Mutex<HashMap<&'static str, Shared>>> = OnceLock::new();
        ARMED.get_or_init(Default::default)
    }

    /// A point a test armed: the next thread to reach it waits for [`Armed::release`].
    pub struct Armed {
        name: &'static str,
        shared: Shared,
    }

    /// Arms the point `name` for its next thread. One arming per name at a time.
    pub fn arm(name: &'static str) -> Armed {
        let shared: Shared = Arc::default();
        let previous = armed()
            .lock()
            .expect(crate::POISONED)
            .insert(name, shared.clone());
        assert!(previous.is_none(), "pause point {name} armed twice");
        Armed { name, shared }
    }

    impl Armed {
        /// Waits until a thread has reached the point; false if none did within `timeout`.
        pub fn wait_reached(&self, timeout: Duration) -> bool {
            let (point, reached) = &*self.shared;
            let deadline = Instant::now() + timeout;
            let mut state = point.lock().expect(crate::POISONED);
            while !state.reached {
                let left = deadline.saturating_duration_since(Instant::now());
                if left.is_zero() {
                    return false;
                }
                state = reached.wait_timeout(state, left).expect(crate::POISONED).0;
            }
            true
        }

        /// Lets the paused thread go on.
        pub fn release(self) {
            drop(self);
        }
    }

    impl Drop for Armed {
        fn drop(&mut self) {
            armed().lock().expect(crate::POISONED).remove(self.name);
            let (point, cond) = &*self.shared;
            point.lock().expect(crate::POISONED).released = true;
            cond.notify_all();
        }
    }

    /// See the module docs.
    pub fn point(name: &'static str) {
        let shared = armed().lock().expect(crate::POISONED).remove(name);
        let Some(shared) = shared else { return };
        let (point, cond) = &*shared;
        let mut state = point.lock().expect(crate::POISONED);
        state.reached = true;
        cond.notify_all();
        let deadline = Instant::now() + PAUSE_MAX;
        while !state.released {
            let left = deadline.saturating_duration_since(Instant::now());
            assert!(!left.is_zero(), "pause point {name} was never released");
            state = cond.wait_timeout(state, left).expect(crate::POISONED).0;
        }
    }
}

#[cfg(feature = "pause-points")]
pub use enabled::{Armed, PAUSE_MAX, arm, point};

/// See the module docs: without the `pause-points` feature, nothing.
#[cfg(not(feature = "pause-points"))]
#[inline(always)]
pub fn point(_name: &'static str) {}
