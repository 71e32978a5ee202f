//! Tasks of removed services.

use shoal_api::v1::{NodeState, ObjectKind, TaskState::*};
use shoal_scheduler::testing::*;

use super::{expect, stored};

#[test]
fn tasks_of_a_removed_service_are_shut_down_then_deleted() {
    let mut w = World::new();
    w.add_all([node("n1"), node("n2").state(NodeState::Down)]);
    w.add(replicated("web", 4));
    let web = stored(&w, "web");
    w.add_all([
        task("running", &web, 1).on("n1").state(Running, 0),
        task("pending", &web, 2),
        task("lost", &web, 3).on("n2").state(Running, 0),
        task("done", &web, 4).on("n1").state(Failed, 0).desired(Shutdown),
    ]);
    w.remove(ObjectKind::Service, "web");
    expect(
        &mut w,
        1_000,
        &[
            "update running node=n1 desired=shutdown state=running",
            "delete task done",
            "delete task lost",
            "delete task pending",
        ],
    );
    // Once its agent reports it stopped, the last one goes.
    w.edit_task("running", |t| *t = t.clone().state(Shutdown, 1_500));
    expect(&mut w, 2_000, &["delete task running"]);
    assert_eq!(w.store.tasks().count(), 0);
}
