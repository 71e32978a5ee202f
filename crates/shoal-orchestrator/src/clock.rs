//! The time a pass decides at, and when its time-based decisions come due.
//!
//! Every comparison of a stored time with the present goes through [`Clock::reached`]. A
//! deadline not reached yet is one a later pass may decide differently (a restart delay
//! elapses, an attempt leaves the restart window, an update's monitor period ends), so the
//! clock records the earliest of them: the pass's caller needs to look at that service again
//! then, and not before, unless something changes. Routing every comparison through here means
//! a time-based decision cannot be left out of that answer.

use std::cell::Cell;

/// The present of one pass and the earliest deadline it found ahead.
#[derive(Debug)]
pub(crate) struct Clock {
    now_ms: i64,
    wake: Cell<Option<i64>>,
}

impl Clock {
    pub(crate) fn new(now_ms: i64) -> Clock {
        Clock { now_ms, wake: Cell::new(None) }
    }

    /// The present, for timestamps written; never compare it yourself, use [`Clock::reached`].
    pub(crate) fn now(&self) -> i64 {
        self.now_ms
    }

    /// Whether `at_ms` has come. When it has not, a pass at `at_ms` may decide otherwise: it
    /// is recorded as a wake-up.
    pub(crate) fn reached(&self, at_ms: i64) -> bool {
        if self.now_ms >= at_ms {
            return true;
        }
        self.wake.set(Some(self.wake.get().map_or(at_ms, |w| w.min(at_ms))));
        false
    }

    /// The earliest deadline found ahead since the last call, clearing it.
    pub(crate) fn take_wake(&self) -> Option<i64> {
        self.wake.take()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn records_the_earliest_deadline_not_reached() {
        let c = Clock::new(100);
        assert!(c.reached(100) && c.reached(50));
        assert_eq!(c.take_wake(), None, "deadlines already reached are not wake-ups");
        assert!(!c.reached(300));
        assert!(!c.reached(200));
        assert!(!c.reached(250));
        assert_eq!(c.take_wake(), Some(200));
        assert_eq!(c.take_wake(), None, "taking clears it");
    }
}
