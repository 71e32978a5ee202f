//! Property tests: random command sequences over a small id and name space, so that conflicts,
//! stale versions and name collisions really happen.
//!
//! - replaying the tail of the log on a store decoded from a snapshot taken at any point gives
//!   the same store (objects, indexes, version) and the same results as applying everything;
//! - after every apply the indexes equal a brute-force recomputation from the objects;
//! - a failing command changes nothing but the version, and never emits events.

use proptest::prelude::*;
use proptest::strategy::ValueTree;
use proptest::test_runner::TestRunner;
use shoal_api::v1::{op, Command, CommandResult, Object, ObjectKind, ObjectRef, Op};

use super::fixtures::*;
use crate::record::{Record, Tag};
use crate::Store;

#[derive(Clone, Copy, Debug)]
enum Action {
    Create,
    Update,
    Delete,
    Upsert,
}

/// Which version an update or delete carries, relative to what the store holds when the op is
/// built.
#[derive(Clone, Copy, Debug)]
enum Ver {
    /// The stored version: succeeds unless an earlier op of the batch changed the object.
    Read,
    /// Some versions behind.
    Stale(u64),
    /// 0: "any" for deletes, always stale for updates.
    Zero,
    /// Anything.
    Any(u64),
}

#[derive(Clone, Debug)]
struct OpSeed {
    action: Action,
    kind: Option<Tag>,
    id: &'static str,
    name: &'static str,
    ver: Ver,
    service: &'static str,
    node: &'static str,
    slot: u64,
    /// A task's desired and observed state: what the running counts follow.
    life: u8,
}

const KINDS: &[Option<Tag>] = &[
    Some(Tag::Cluster),
    Some(Tag::Node),
    Some(Tag::Node),
    Some(Tag::Service),
    Some(Tag::Service),
    Some(Tag::Service),
    Some(Tag::Task),
    Some(Tag::Task),
    Some(Tag::Task),
    Some(Tag::Network),
    Some(Tag::Secret),
    Some(Tag::Config),
    None,
];
const IDS: &[&str] = &["a", "a", "b", "b", "ab", "c", "c", ""];
const NAMES: &[&str] = &["x", "x", "y", "y", "z", ""];

fn action() -> impl Strategy<Value = Action> {
    prop_oneof![3 => Just(Action::Create), 3 => Just(Action::Update), 2 => Just(Action::Delete), 2 => Just(Action::Upsert)]
}

fn ver() -> impl Strategy<Value = Ver> {
    prop_oneof![
        5 => Just(Ver::Read),
        2 => (1u64..4).prop_map(Ver::Stale),
        1 => Just(Ver::Zero),
        1 => (0u64..60).prop_map(Ver::Any),
    ]
}

fn op_seed() -> impl Strategy<Value = OpSeed> {
    (
        action(),
        prop::sample::select(KINDS),
        prop::sample::select(IDS),
        prop::sample::select(NAMES),
        ver(),
        prop::sample::select(&["a", "b"][..]),
        prop::sample::select(&["", "a", "b"][..]),
        0u64..3,
        0u8..4,
    )
        .prop_map(|(action, kind, id, name, ver, service, node, slot, life)| OpSeed {
            action,
            kind,
            id,
            name,
            ver,
            service,
            node,
            slot,
            life,
        })
}

/// Commands as (gap to the previous log index, ops).
fn log() -> impl Strategy<Value = Vec<(u64, Vec<OpSeed>)>> {
    prop::collection::vec((1u64..3, prop::collection::vec(op_seed(), 0..4)), 1..40)
}

fn stored_version(store: &Store, tag: Tag, id: &str) -> u64 {
    let v = match tag {
        Tag::Cluster => store.clusters.get(id).map(Record::version),
        Tag::Node => store.nodes.get(id).map(Record::version),
        Tag::Service => store.services.get(id).map(Record::version),
        Tag::Task => store.tasks.get(id).map(Record::version),
        Tag::Network => store.networks.get(id).map(Record::version),
        Tag::Secret => store.secrets.get(id).map(Record::version),
        Tag::Config => store.configs.get(id).map(Record::version),
    };
    v.unwrap_or(0)
}

fn wire_kind(tag: Option<Tag>) -> ObjectKind {
    match tag {
        None => ObjectKind::Unspecified,
        Some(Tag::Cluster) => ObjectKind::Cluster,
        Some(Tag::Node) => ObjectKind::Node,
        Some(Tag::Service) => ObjectKind::Service,
        Some(Tag::Task) => ObjectKind::Task,
        Some(Tag::Network) => ObjectKind::Network,
        Some(Tag::Secret) => ObjectKind::Secret,
        Some(Tag::Config) => ObjectKind::Config,
    }
}

/// Turns a seed into an op, reading versions from the store it is about to be applied to.
fn realize(seed: &OpSeed, store: &Store) -> Op {
    let stored = seed.kind.map_or(0, |tag| stored_version(store, tag, seed.id));
    let version = match seed.ver {
        Ver::Read => stored,
        Ver::Stale(n) => stored.saturating_sub(n),
        Ver::Zero => 0,
        Ver::Any(v) => v,
    };
    let (id, name) = (seed.id, seed.name);
    let object = match seed.kind {
        None => Object { kind: None },
        Some(Tag::Cluster) => cluster(id, version),
        Some(Tag::Node) => node(id, name, version),
        Some(Tag::Service) => service(id, name, version),
        Some(Tag::Task) => {
            let mut o = task(id, seed.service, seed.node, seed.slot, version);
            if let Some(shoal_api::v1::object::Kind::Task(t)) = o.kind.as_mut() {
                use shoal_api::v1::{TaskState, TaskStatus};
                let running = TaskState::Running as i32;
                t.desired_state = if seed.life < 3 { running } else { TaskState::Shutdown as i32 };
                t.status = (seed.life % 2 == 1).then(|| TaskStatus { state: running, ..Default::default() });
            }
            o
        }
        Some(Tag::Network) => network(id, name, version),
        Some(Tag::Secret) => secret(id, name, version),
        Some(Tag::Config) => config(id, name, version),
    };
    match seed.action {
        Action::Create => create(object),
        Action::Update => update(object),
        Action::Upsert => upsert(object),
        Action::Delete => {
            let r = ObjectRef { kind: wire_kind(seed.kind).into(), id: id.to_owned(), version };
            Op { kind: Some(op::Kind::Delete(r)) }
        }
    }
}

/// A log applied to one store: the concrete commands at their log indexes, and the results.
struct Run {
    store: Store,
    commands: Vec<(u64, Command)>,
    results: Vec<CommandResult>,
}

/// Builds and applies the log, checking the per-apply invariants on the way.
fn run(seeds: &[(u64, Vec<OpSeed>)]) -> Result<Run, TestCaseError> {
    let mut store = Store::new();
    let mut commands = Vec::new();
    let mut results = Vec::new();
    let mut index = 0;
    for (gap, ops) in seeds {
        index += gap;
        let command = Command { now_ms: 1_000 * index as i64, ops: ops.iter().map(|s| realize(s, &store)).collect() };
        let before = store.clone();
        let (result, events) = store.apply(index, &command);
        prop_assert_eq!(store.version(), index);
        prop_assert_eq!(result.version, index);
        if let Err(e) = check_indexes(&store) {
            return Err(TestCaseError::fail(format!("after {command:?}: {e}")));
        }
        if result.error.is_empty() {
            prop_assert_eq!(shoal_api::names::refusal(result.refusal()), "");
            prop_assert_eq!(events.len(), command.ops.len());
            prop_assert!(events.iter().all(|e| e.version == index && e.object.is_some()));
        } else {
            prop_assert!(
                ["conflict", "not_found", "exists", "invalid"].contains(&shoal_api::names::refusal(result.refusal()))
            );
            prop_assert!(events.is_empty() && result.objects.is_empty());
            let mut unchanged = before;
            unchanged.version = index;
            prop_assert_eq!(&store, &unchanged, "failed command {:?} changed the store", command);
        }
        commands.push((index, command));
        results.push(result);
    }
    Ok(Run { store, commands, results })
}

// 256 cases each by default; PROPTEST_CASES raises it.
proptest! {
    #[test]
    fn replay_after_snapshot_equals_full_replay(seeds in log(), split in any::<prop::sample::Index>()) {
        let full = run(&seeds)?;
        let k = split.index(full.commands.len() + 1);
        let mut head = Store::new();
        for (index, command) in &full.commands[..k] {
            head.apply(*index, command);
        }
        let bytes = head.encode_snapshot();
        let mut restored = match Store::decode_snapshot(&bytes) {
            Ok(s) => s,
            Err(e) => return Err(TestCaseError::fail(format!("snapshot after {k} commands: {e}"))),
        };
        prop_assert_eq!(&restored, &head);
        let mut tail_results = Vec::new();
        for (index, command) in &full.commands[k..] {
            tail_results.push(restored.apply(*index, command).0);
        }
        prop_assert_eq!(restored.version(), full.store.version());
        prop_assert_eq!(&restored, &full.store);
        prop_assert_eq!(&tail_results[..], &full.results[k..]);
        prop_assert_eq!(restored.encode_snapshot(), full.store.encode_snapshot());
    }

    #[test]
    fn indexes_match_objects_and_failures_change_nothing(seeds in log()) {
        // The checks are inside `run`, after every apply.
        let done = run(&seeds)?;
        prop_assert_eq!(done.results.len(), seeds.len());
    }

    #[test]
    fn apply_never_panics_on_arbitrary_commands(bytes in prop::collection::vec(any::<u8>(), 0..256)) {
        use prost::Message;
        if let Ok(command) = Command::decode(&bytes[..]) {
            let mut store = base();
            let before = store.clone();
            let (result, _) = store.apply(11, &command);
            if let Err(e) = check_indexes(&store) {
                return Err(TestCaseError::fail(e));
            }
            if !result.error.is_empty() {
                let mut unchanged = before;
                unchanged.version = 11;
                prop_assert_eq!(store, unchanged);
            }
        }
    }
}

/// The generator is only worth something if its logs hit every outcome; this guards it against
/// drifting into logs that always succeed or always fail.
#[test]
fn generated_logs_hit_every_error_kind() {
    let mut runner = TestRunner::deterministic();
    let mut seen = std::collections::BTreeMap::<String, usize>::new();
    for _ in 0..64 {
        let seeds = log().new_tree(&mut runner).map(|t| t.current()).unwrap_or_else(|e| panic!("{e}"));
        let done = run(&seeds).unwrap_or_else(|e| panic!("{e}"));
        for r in done.results {
            *seen.entry(shoal_api::names::refusal(r.refusal()).to_string()).or_default() += 1;
        }
    }
    for kind in ["", "conflict", "not_found", "exists", "invalid"] {
        assert!(seen.get(kind).is_some_and(|n| *n >= 10), "outcome {kind:?} too rare: {seen:?}");
    }
}
