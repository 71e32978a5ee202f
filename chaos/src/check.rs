//! The checker: judges a run's history against the cluster's final state and samples.
//!
//! - **Writes**: an object's final value must be one a write may have left last: the last
//!   acknowledged write's, or that of a write (acknowledged or unknown) that was still in flight
//!   when the last acknowledged one started, or came after it. A refused write never counts, so
//!   a value only refused writes set is a lost refusal; an acknowledged removal with nothing
//!   after it must leave the object absent (no removal comes back).
//! - **Versions** of one object only grow across samples.
//! - **Slots**: no two containers of one replicated slot run at one sampled moment, unless one
//!   of them is on a host cut off from the managers (its containers keep running, as in Swarm);
//!   such a host's extra container must be gone within `grace_ms` of the heal.
//! - **Stop on disconnect**: a cut-off host runs no container of a service that asked for it
//!   from a bound after the cut.

use std::collections::{BTreeMap, BTreeSet};

use crate::history::{CutOff, HostSample, Op, Outcome, VersionSample, Write};

/// One thing the checker found wrong.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Violation(pub String);

/// The values an object may hold at the end given `ops` (all on that object, any order):
/// `None` stands for "absent". The object's value before the first write is `initial`.
pub fn possible_finals(ops: &[&Op], initial: Option<&str>) -> BTreeSet<Option<String>> {
    let value = |op: &Op| match &op.write {
        Write::Set(v) => Some(v.clone()),
        Write::Remove => None,
    };
    let acked: Vec<&&Op> = ops.iter().filter(|o| o.outcome == Outcome::Ok).collect();
    // The last acknowledged write: the one that ended last is certainly in effect after every
    // acknowledged write that ended before it started.
    let last = acked.iter().max_by_key(|o| o.end_ms);
    let mut out = BTreeSet::new();
    match last {
        None => {
            out.insert(initial.map(str::to_string));
            for o in ops.iter().filter(|o| o.outcome == Outcome::Unknown) {
                out.insert(value(o));
            }
        }
        Some(last) => {
            for o in ops.iter().filter(|o| o.outcome != Outcome::Failed) {
                // A write that ended before the last acknowledged one started cannot be last
                // (the last one itself ends after it starts).
                if o.end_ms >= last.start_ms {
                    out.insert(value(o));
                }
            }
        }
    }
    out
}

/// Judges the writes of `history` against `finals` (object -> value, absent objects left out)
/// and `initial` (the values before the run).
pub fn writes(history: &[Op], initial: &BTreeMap<String, String>, finals: &BTreeMap<String, String>) -> Vec<Violation> {
    let mut by_object: BTreeMap<&str, Vec<&Op>> = BTreeMap::new();
    for o in history {
        by_object.entry(o.object.as_str()).or_default().push(o);
    }
    let mut out = Vec::new();
    for (object, ops) in by_object {
        let allowed = possible_finals(&ops, initial.get(object).map(String::as_str));
        let got = finals.get(object).cloned();
        if !allowed.contains(&got) {
            let shown = |v: &Option<String>| v.clone().unwrap_or_else(|| "absent".into());
            let refused = ops
                .iter()
                .any(|o| o.outcome == Outcome::Failed && Some(&o.write) == got.clone().map(Write::Set).as_ref());
            let why = if got.is_some() && refused {
                "a write the client was told was refused took effect"
            } else if got.is_some() && ops.iter().any(|o| o.outcome == Outcome::Ok && o.write == Write::Remove) {
                "an acknowledged removal came back"
            } else {
                "an acknowledged write is lost"
            };
            out.push(Violation(format!(
                "{object}: ends {} but may only end as one of [{}]: {why}",
                shown(&got),
                allowed.iter().map(shown).collect::<Vec<_>>().join(", ")
            )));
        }
    }
    out
}

/// Judges that every object's version only grows across `samples`.
pub fn versions(samples: &[VersionSample]) -> Vec<Violation> {
    let mut by_object: BTreeMap<&str, Vec<&VersionSample>> = BTreeMap::new();
    for s in samples {
        by_object.entry(s.object.as_str()).or_default().push(s);
    }
    let mut out = Vec::new();
    for (object, mut list) in by_object {
        list.sort_by_key(|s| s.at_ms);
        for w in list.windows(2) {
            if w[1].version < w[0].version {
                out.push(Violation(format!(
                    "{object}: version went from {} (at {} ms) back to {} (at {} ms)",
                    w[0].version, w[0].at_ms, w[1].version, w[1].at_ms
                )));
            }
        }
    }
    out
}

/// Judges that no slot ran twice at a sampled moment, but for hosts cut off (then, or healed
/// less than `grace_ms` before).
pub fn slots(samples: &[HostSample], cut_offs: &[CutOff], grace_ms: u64) -> Vec<Violation> {
    let excused = |host: &str, at: u64| {
        cut_offs.iter().any(|c| c.host == host && at >= c.from_ms && at <= c.to_ms.saturating_add(grace_ms))
    };
    let mut out = Vec::new();
    for s in samples {
        let mut by_slot: BTreeMap<(&str, u64), Vec<&str>> = BTreeMap::new();
        for r in &s.running {
            by_slot.entry((r.service.as_str(), r.slot)).or_default().push(r.host.as_str());
        }
        for ((service, slot), hosts) in by_slot {
            let counted: Vec<&str> = hosts.iter().copied().filter(|h| !excused(h, s.at_ms)).collect();
            // A cut-off host's container may run beside the one that replaced it; two on
            // connected hosts never.
            if counted.len() > 1 {
                out.push(Violation(format!(
                    "{service}.{slot} ran {} times at {} ms (on {})",
                    hosts.len(),
                    s.at_ms,
                    hosts.join(", ")
                )));
            }
        }
    }
    out
}

/// Judges `--stop-on-disconnect`: a host cut off from the managers runs no container of the
/// services that asked for it from `bound_ms` after the cut until it is back. A host that ran
/// none when it was cut off proves nothing, and is a violation of the run itself.
pub fn stopped_when_cut_off(samples: &[HostSample], cut_offs: &[CutOff], bound_ms: u64) -> Vec<Violation> {
    let mut out = Vec::new();
    for c in cut_offs {
        let ran = samples
            .iter()
            .filter(|s| s.at_ms >= c.from_ms && s.at_ms < c.from_ms.saturating_add(bound_ms).min(c.to_ms))
            .any(|s| s.running.iter().any(|r| r.host == c.host));
        if !ran {
            out.push(Violation(format!(
                "{} ran nothing when it was cut off: there was nothing to stop, the run judged nothing",
                c.host
            )));
        }
    }
    for s in samples {
        for c in cut_offs.iter().filter(|c| s.at_ms >= c.from_ms.saturating_add(bound_ms) && s.at_ms < c.to_ms) {
            for r in s.running.iter().filter(|r| r.host == c.host) {
                out.push(Violation(format!(
                    "{}.{} still ran on {} at {} ms, {} ms after it was cut off (bound {bound_ms} ms)",
                    r.service,
                    r.slot,
                    r.host,
                    s.at_ms,
                    s.at_ms - c.from_ms
                )));
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::history::Running;

    fn op(object: &str, write: Write, start_ms: u64, end_ms: u64, outcome: Outcome) -> Op {
        Op { object: object.into(), write, start_ms, end_ms, outcome }
    }

    fn set(v: &str) -> Write {
        Write::Set(v.into())
    }

    fn finals(list: &[(&str, &str)]) -> BTreeMap<String, String> {
        list.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect()
    }

    #[test]
    fn the_last_acknowledged_write_wins_and_a_concurrent_one_may() {
        let h = vec![
            op("service/web", set("3"), 0, 10, Outcome::Ok),
            op("service/web", set("5"), 20, 30, Outcome::Ok),
            op("service/web", set("7"), 25, 40, Outcome::Unknown),
            op("service/web", set("9"), 28, 35, Outcome::Failed),
        ];
        let init = BTreeMap::new();
        assert!(writes(&h, &init, &finals(&[("service/web", "5")])).is_empty());
        assert!(writes(&h, &init, &finals(&[("service/web", "7")])).is_empty(), "unknown: either way");
        let lost = writes(&h, &init, &finals(&[("service/web", "3")]));
        assert_eq!(lost.len(), 1);
        assert!(lost[0].0.contains("an acknowledged write is lost"), "{lost:?}");
        let refused = writes(&h, &init, &finals(&[("service/web", "9")]));
        assert!(refused[0].0.contains("was told was refused took effect"), "{refused:?}");
    }

    #[test]
    fn an_acknowledged_removal_never_comes_back() {
        let h = vec![op("secret/s", set("1"), 0, 5, Outcome::Ok), op("secret/s", Write::Remove, 10, 12, Outcome::Ok)];
        assert!(writes(&h, &BTreeMap::new(), &BTreeMap::new()).is_empty());
        let back = writes(&h, &BTreeMap::new(), &finals(&[("secret/s", "1")]));
        assert!(back[0].0.contains("an acknowledged removal came back"), "{back:?}");
        // A create after the removal whose outcome is unknown may have brought it back.
        let mut h2 = h.clone();
        h2.push(op("secret/s", set("1"), 20, 30, Outcome::Unknown));
        assert!(writes(&h2, &BTreeMap::new(), &finals(&[("secret/s", "1")])).is_empty());
        assert!(writes(&h2, &BTreeMap::new(), &BTreeMap::new()).is_empty());
    }

    #[test]
    fn without_an_acknowledged_write_the_initial_value_or_an_unknown_one() {
        let h = vec![op("node/h4", set("b"), 0, 5, Outcome::Unknown), op("node/h4", set("c"), 6, 8, Outcome::Failed)];
        let init = finals(&[("node/h4", "a")]);
        assert!(writes(&h, &init, &finals(&[("node/h4", "a")])).is_empty());
        assert!(writes(&h, &init, &finals(&[("node/h4", "b")])).is_empty());
        assert_eq!(writes(&h, &init, &finals(&[("node/h4", "c")])).len(), 1);
    }

    #[test]
    fn versions_only_grow() {
        let s = |object: &str, at_ms, version| VersionSample { object: object.into(), at_ms, version };
        assert!(versions(&[s("a", 1, 3), s("a", 2, 3), s("a", 3, 5), s("b", 1, 9)]).is_empty());
        let v = versions(&[s("a", 2, 7), s("a", 1, 3), s("a", 3, 4)]);
        assert_eq!(v, [Violation("a: version went from 7 (at 2 ms) back to 4 (at 3 ms)".into())]);
    }

    #[test]
    fn a_cut_off_host_stops_the_containers_within_the_bound() {
        let r = |slot, host: &str| Running { service: "web".into(), slot, host: host.into() };
        let sample = |at_ms, running| HostSample { at_ms, running };
        let cut = [CutOff { host: "h4".into(), from_ms: 100, to_ms: 1_000 }];
        let ok = [
            sample(150, vec![r(1, "h4"), r(2, "h5")]),
            sample(700, vec![r(1, "h5"), r(2, "h5")]),
            sample(1_200, vec![r(1, "h4"), r(2, "h5")]),
        ];
        assert!(stopped_when_cut_off(&ok, &cut, 500).is_empty(), "before the bound, and after the heal");
        let idle = [sample(150, vec![r(2, "h5")]), sample(1_200, vec![r(1, "h4")])];
        assert_eq!(stopped_when_cut_off(&idle, &cut, 500).len(), 1, "nothing ran there: nothing judged");
        let late = [sample(150, vec![r(1, "h4")]), sample(650, vec![r(1, "h4"), r(2, "h5")])];
        assert_eq!(
            stopped_when_cut_off(&late, &cut, 500),
            [Violation("web.1 still ran on h4 at 650 ms, 550 ms after it was cut off (bound 500 ms)".into())]
        );
    }

    #[test]
    fn a_slot_runs_once_but_for_a_cut_off_host_until_its_grace_ends() {
        let r = |slot, host: &str| Running { service: "web".into(), slot, host: host.into() };
        let sample = |at_ms, running| HostSample { at_ms, running };
        let cut = [CutOff { host: "h4".into(), from_ms: 100, to_ms: 200 }];
        let ok = [
            sample(50, vec![r(1, "h4"), r(2, "h5")]),
            sample(150, vec![r(1, "h4"), r(1, "h5")]),
            sample(240, vec![r(1, "h4"), r(1, "h5")]),
        ];
        assert!(slots(&ok, &cut, 50).is_empty(), "cut off, then within the grace");
        let late = [sample(300, vec![r(1, "h4"), r(1, "h5")])];
        assert_eq!(slots(&late, &cut, 50).len(), 1, "past the grace");
        let twice = [sample(50, vec![r(1, "h5"), r(1, "h6")])];
        assert_eq!(slots(&twice, &cut, 50), [Violation("web.1 ran 2 times at 50 ms (on h5, h6)".into())]);
        let both_healthy_hosts = [sample(150, vec![r(1, "h4"), r(1, "h5"), r(1, "h6")])];
        assert_eq!(slots(&both_healthy_hosts, &cut, 50).len(), 1, "two on connected hosts is a duplicate");
    }
}
