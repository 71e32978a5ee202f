//! Task history: the per-slot (per-node) limit, its default, and what it never deletes.

use shoal_api::v1::{restart_policy::Condition, ClusterSettings, Service, TaskState::*};
use shoal_scheduler::testing::*;

use super::{expect, pass, stored};

const NOW: i64 = 100_000;

/// `web` with a running task in slot 1 and `n` history tasks there (h1 oldest), plus the
/// history limit set to `limit` (0: unset).
fn world(s: Service, n: usize, limit: u32) -> World {
    let mut w = World::new();
    w.edit_cluster(|c| {
        c.settings = Some(ClusterSettings { task_history_limit: limit, ..c.settings.unwrap_or_default() });
    });
    w.add(node("n1"));
    w.add(s);
    let web = stored(&w, "web");
    w.add(task("live", &web, 1).on("n1").state(Running, 0));
    w.add_all((1..=n).map(|i| {
        task(&format!("h{i}"), &web, 1)
            .on("n1")
            .state(if i % 2 == 0 { Failed } else { Shutdown }, i as i64 * 10)
            .desired(Shutdown)
    }));
    w
}

#[test]
fn history_beyond_the_limit_is_deleted_oldest_first() {
    let mut w = world(replicated("web", 1), 4, 2);
    expect(&mut w, NOW, &["delete task h1", "delete task h2"]);
}

#[test]
fn the_limit_defaults_to_five() {
    let mut w = world(replicated("web", 1), 6, 0);
    expect(&mut w, NOW, &["delete task h1"]);
    let w = world(replicated("web", 1), 5, 0);
    assert_eq!(pass(&w, NOW), Vec::<String>::new());
}

#[test]
fn an_ended_task_that_is_still_wanted_is_not_history() {
    let s = replicated("web", 2).restart(Condition::None, None, 0, 0);
    let mut w = world(s, 2, 1);
    let web = stored(&w, "web");
    w.add(task("ended", &web, 2).on("n1").state(Failed, 0));
    w.add(task("old2", &web, 2).on("n1").state(Failed, 0).desired(Shutdown));
    // Slot 1 drops h1; slot 2 keeps its only history task and the ended one.
    expect(&mut w, NOW, &["delete task h1"]);
}

#[test]
fn restart_attempts_are_kept_beyond_the_limit() {
    // Limit 1, but three attempts must stay countable or the loop would restart forever.
    let s = replicated("web", 1).restart(Condition::Any, Some(0), 3, 0);
    let mut w = world(s, 0, 1);
    let web = stored(&w, "web");
    w.edit_task("live", |t| *t = t.clone().state(Failed, 50));
    w.add_all((1..=3).map(|i| task(&format!("f{i}"), &web, 1).on("n1").state(Failed, i).desired(Shutdown)));
    w.add(task("s1", &web, 1).on("n1").state(Shutdown, 40).desired(Shutdown));
    // Four failures > 3 attempts: no restart. s1 is newest history (kept by the limit); the
    // three failures are kept as attempts.
    assert_eq!(pass(&w, NOW), Vec::<String>::new());
    w.add(task("f0", &web, 1).on("n1").state(Failed, 0).desired(Shutdown));
    // A fourth failure in history stays: had the current task ended without counting (stopped
    // from outside), four would be needed to stay over the limit.
    assert_eq!(pass(&w, NOW), Vec::<String>::new());
    w.add(task("e0", &web, 1).on("n1").state(Failed, 0).desired(Shutdown));
    // A fifth is never needed: it goes.
    expect(&mut w, NOW, &["delete task e0"]);
}

/// The case proptest found: a slot whose current task ended without counting as an attempt
/// (shut down from outside while still wanted) over two failures in history, with max attempts 1
/// and a history limit of 1. Two failures are over the limit, so no restart; pruning must not
/// forget one of them, or the next pass would count one and restart the slot, and every pass
/// after that could do the same.
#[test]
fn pruning_never_turns_a_refused_restart_into_a_restart() {
    let s = replicated("web", 1).restart(Condition::Any, Some(0), 1, 0);
    let mut w = world(s, 0, 1);
    let web = stored(&w, "web");
    w.edit_task("live", |t| *t = t.clone().state(Shutdown, 50));
    w.add_all([
        task("f1", &web, 1).on("n1").state(Failed, 10).desired(Shutdown),
        task("f2", &web, 1).on("n1").state(Failed, 20).desired(Shutdown),
    ]);
    // Nothing to do now, and nothing later either.
    assert_eq!(pass(&w, NOW), Vec::<String>::new());
    assert_eq!(pass(&w, NOW * 10), Vec::<String>::new());
    // A third failure is more than the decision needs: pruned, and still no restart after.
    w.add(task("f0", &web, 1).on("n1").state(Failed, 5).desired(Shutdown));
    expect(&mut w, NOW, &["delete task f0"]);
    assert_eq!(pass(&w, NOW * 10), Vec::<String>::new());
}

#[test]
fn global_history_is_kept_per_node() {
    let mut w = World::new();
    w.edit_cluster(|c| {
        c.settings = Some(ClusterSettings { task_history_limit: 1, ..c.settings.unwrap_or_default() });
    });
    w.add_all([node("n1"), node("n2")]);
    w.add(global("mon"));
    let mon = stored(&w, "mon");
    w.add_all([
        task("a", &mon, 0).on("n1").state(Running, 0),
        task("a1", &mon, 0).on("n1").state(Shutdown, 1).desired(Shutdown),
        task("a2", &mon, 0).on("n1").state(Shutdown, 2).desired(Shutdown),
        task("b", &mon, 0).on("n2").state(Running, 0),
        task("b1", &mon, 0).on("n2").state(Shutdown, 1).desired(Shutdown),
    ]);
    expect(&mut w, NOW, &["delete task a1"]);
}
