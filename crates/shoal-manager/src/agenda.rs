//! What the leader's orchestration loop does next, and when: the services to reconcile, whether
//! placement (the allocator, then the scheduler) runs, and the services' wake-ups.
//!
//! Work is proportional to change: a pass looks at the services that applied changes touched
//! and at those whose time-based decision came due (the orchestrator says when, see
//! `shoal_orchestrator::Pass::wake`), and placement runs only after a change that may let a
//! pending task be placed. A pass whose proposals did not all apply is looked at again shortly:
//! a refused or lost proposal leaves no change behind to trigger one. The loop (`leader`) adds
//! a full pass now and then as a safety net.
//!
//! Architecture Invariant: pure. Times are wall-clock milliseconds handed in (the deadlines
//! the orchestrator finds come from stored timestamps); nothing here sleeps or proposes.

use std::collections::{BTreeMap, BTreeSet};

use shoal_orchestrator::Scope;

/// How long after a pass whose proposals failed its work is looked at again.
pub(crate) const RETRY_MS: i64 = 250;

/// One pass to run.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Work {
    /// The services to reconcile (may be none).
    pub(crate) scope: Scope,
    /// Whether the allocator and the scheduler run after the orchestrator.
    pub(crate) place: bool,
}

/// How a pass went.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(crate) struct Outcome {
    /// The services of the pass's scope with a time-based decision ahead, and when.
    pub(crate) wake: BTreeMap<String, i64>,
    /// Some of the orchestrator's proposals did not apply.
    pub(crate) reconcile_failed: bool,
    /// Some of the allocator's or the scheduler's proposals did not apply.
    pub(crate) place_failed: bool,
}

/// The loop's record of what is due.
#[derive(Debug)]
pub(crate) struct Agenda {
    /// Services changed since the last pass.
    scope: Scope,
    /// Placement is due.
    place: bool,
    /// Service id -> when (ms) to reconcile it although nothing changed.
    wake: BTreeMap<String, i64>,
    /// When to run everything again (a failed full pass).
    all_at: Option<i64>,
    /// When to run placement again (its proposals failed).
    place_at: Option<i64>,
}

fn nothing() -> Scope {
    Scope::Services(BTreeSet::new())
}

impl Agenda {
    /// A new leader's agenda: everything is due.
    pub(crate) fn new() -> Agenda {
        Agenda { scope: Scope::All, place: true, wake: BTreeMap::new(), all_at: None, place_at: None }
    }

    /// Applied changes touched `scope`; `place`: they may let a pending task be placed.
    pub(crate) fn changed(&mut self, scope: Scope, place: bool) {
        self.place |= place;
        match (&mut self.scope, scope) {
            (Scope::All, _) => {}
            (s, Scope::All) => *s = Scope::All,
            (Scope::Services(a), Scope::Services(b)) => a.extend(b),
        }
    }

    /// Everything is due (the periodic full pass, or changes that could not be read).
    pub(crate) fn everything(&mut self) {
        self.changed(Scope::All, true);
    }

    /// The pass to run at `now_ms`, if anything is due: the changed services and those whose
    /// wake-up came, placement if a change or a retry asks for it.
    pub(crate) fn take(&mut self, now_ms: i64) -> Option<Work> {
        if self.all_at.is_some_and(|at| at <= now_ms) {
            self.all_at = None;
            self.everything();
        }
        if self.place_at.is_some_and(|at| at <= now_ms) {
            self.place_at = None;
            self.place = true;
        }
        let due: Vec<String> = self.wake.iter().filter(|(_, at)| **at <= now_ms).map(|(id, _)| id.clone()).collect();
        for id in due {
            self.wake.remove(&id);
            if let Scope::Services(ids) = &mut self.scope {
                ids.insert(id);
            }
        }
        let scope = std::mem::replace(&mut self.scope, nothing());
        let place = std::mem::take(&mut self.place);
        if scope == nothing() && !place {
            return None;
        }
        Some(Work { scope, place })
    }

    /// The pass over `scope` went as `outcome` says, at `now_ms`: its services' wake-ups are
    /// replaced by the ones it found, and what failed is due again after [`RETRY_MS`].
    pub(crate) fn done(&mut self, now_ms: i64, scope: &Scope, outcome: Outcome) {
        match scope {
            Scope::All => self.wake.clear(),
            Scope::Services(ids) => {
                for id in ids {
                    self.wake.remove(id);
                }
            }
        }
        self.wake.extend(outcome.wake);
        let retry = now_ms.saturating_add(RETRY_MS);
        if outcome.reconcile_failed {
            match scope {
                Scope::All => self.all_at = Some(self.all_at.map_or(retry, |a| a.min(retry))),
                Scope::Services(ids) => {
                    for id in ids {
                        let at = self.wake.entry(id.clone()).or_insert(retry);
                        *at = (*at).min(retry);
                    }
                }
            }
        }
        if outcome.place_failed {
            self.place_at = Some(self.place_at.map_or(retry, |a| a.min(retry)));
        }
    }

    /// When something comes due without a change (ms), if anything will.
    pub(crate) fn next_at(&self) -> Option<i64> {
        self.wake.values().copied().chain(self.all_at).chain(self.place_at).min()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn services(ids: &[&str]) -> Scope {
        Scope::Services(ids.iter().map(|s| s.to_string()).collect())
    }

    fn wake(pairs: &[(&str, i64)]) -> BTreeMap<String, i64> {
        pairs.iter().map(|(id, at)| (id.to_string(), *at)).collect()
    }

    #[test]
    fn a_new_leader_does_everything_once_then_waits_for_a_change() {
        let mut a = Agenda::new();
        assert_eq!(a.take(0), Some(Work { scope: Scope::All, place: true }));
        a.done(0, &Scope::All, Outcome::default());
        assert_eq!(a.take(1), None);
        assert_eq!(a.next_at(), None, "nothing is due without a change");
        a.changed(services(&["web"]), false);
        a.changed(services(&["db"]), false);
        assert_eq!(a.take(2), Some(Work { scope: services(&["db", "web"]), place: false }));
        a.changed(nothing(), true);
        assert_eq!(a.take(3), Some(Work { scope: nothing(), place: true }), "placement alone");
        a.changed(services(&["web"]), false);
        a.changed(Scope::All, false);
        assert_eq!(a.take(4), Some(Work { scope: Scope::All, place: false }), "everything absorbs services");
    }

    #[test]
    fn a_service_comes_due_at_its_wake_and_not_before() {
        let mut a = Agenda::new();
        let work = a.take(0).expect("everything is due");
        a.done(0, &work.scope, Outcome { wake: wake(&[("web", 5_000), ("db", 9_000)]), ..Outcome::default() });
        assert_eq!(a.next_at(), Some(5_000));
        assert_eq!(a.take(4_999), None);
        assert_eq!(a.take(5_000), Some(Work { scope: services(&["web"]), place: false }));
        a.done(5_000, &services(&["web"]), Outcome::default());
        assert_eq!(a.next_at(), Some(9_000), "web has nothing ahead any more; db still waits");
        // A change of db before its wake: its pass replaces the wake-up with what it found.
        a.changed(services(&["db"]), false);
        let work = a.take(6_000).expect("db changed");
        a.done(6_000, &work.scope, Outcome { wake: wake(&[("db", 7_000)]), ..Outcome::default() });
        assert_eq!(a.next_at(), Some(7_000));
        // A full pass drops every wake-up it did not find again.
        a.everything();
        let work = a.take(6_500).expect("everything");
        a.done(6_500, &work.scope, Outcome::default());
        assert_eq!(a.next_at(), None);
    }

    #[test]
    fn failed_proposals_are_due_again_after_the_retry_delay() {
        let mut a = Agenda::new();
        let work = a.take(0).expect("everything is due");
        a.done(0, &work.scope, Outcome { reconcile_failed: true, place_failed: true, ..Outcome::default() });
        assert_eq!(a.next_at(), Some(RETRY_MS));
        assert_eq!(a.take(RETRY_MS - 1), None);
        assert_eq!(a.take(RETRY_MS), Some(Work { scope: Scope::All, place: true }));
        a.done(RETRY_MS, &Scope::All, Outcome::default());

        a.changed(services(&["web", "db"]), false);
        let work = a.take(1_000).expect("changed");
        a.done(
            1_000,
            &work.scope,
            Outcome { wake: wake(&[("db", 60_000)]), reconcile_failed: true, ..Outcome::default() },
        );
        assert_eq!(a.take(1_000 + RETRY_MS), Some(Work { scope: services(&["db", "web"]), place: false }));
        a.done(1_000 + RETRY_MS, &services(&["db", "web"]), Outcome::default());
        assert_eq!(a.take(100_000), None, "retried and done");

        a.changed(nothing(), true);
        let work = a.take(200_000).expect("placement");
        a.done(200_000, &work.scope, Outcome { place_failed: true, ..Outcome::default() });
        assert_eq!(a.take(200_000 + RETRY_MS), Some(Work { scope: nothing(), place: true }));
    }
}
