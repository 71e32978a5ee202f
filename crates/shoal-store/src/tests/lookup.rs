//! Lookups: id, then name (hostname for nodes), then unique id prefix.

use super::fixtures::*;
use crate::record::Record;
use crate::{LookupError, Store};

/// Services `abc1` "web", `abc2` "api", `xyz` "abc1x"; nodes `n-aa1` and `n-aa2` on "host-1",
/// `n-bb` on "host-2"; network `net1` "front", secret `sec1` "pw", config `cfg1` "conf".
fn store() -> Store {
    let mut store = Store::new();
    apply_ok(
        &mut store,
        1,
        vec![
            create(service("abc1", "web", 0)),
            create(service("abc2", "api", 0)),
            create(service("xyz", "abc1x", 0)),
            create(node("n-aa1", "host-1", 0)),
            create(node("n-aa2", "host-1", 0)),
            create(node("n-bb", "host-2", 0)),
            create(network("net1", "front", 0)),
            create(secret("sec1", "pw", 0)),
            create(config("cfg1", "conf", 0)),
            create(task("task-1", "abc1", "n-bb", 1, 0)),
        ],
    );
    store
}

fn show<T: Record>(r: Result<&T, LookupError>) -> Result<String, String> {
    r.map(|x| x.id().to_owned()).map_err(|e| e.to_string())
}

#[test]
fn lookups_resolve_id_then_name_then_unique_prefix() {
    let s = store();
    let ok = |id: &str| Ok::<String, String>(id.to_owned());
    let err = |m: &str| Err::<String, String>(m.to_owned());
    let cases = [
        ("service by id", show(s.lookup_service("abc1")), ok("abc1")),
        ("service by name", show(s.lookup_service("web")), ok("abc1")),
        ("service by unique prefix", show(s.lookup_service("x")), ok("xyz")),
        ("name before prefix", show(s.lookup_service("abc1x")), ok("xyz")),
        ("id before name", show(s.lookup_service("abc2")), ok("abc2")),
        (
            "ambiguous service prefix",
            show(s.lookup_service("abc")),
            err("service \"abc\" is ambiguous: matches 2 services; use the id or a longer prefix of it"),
        ),
        ("missing service", show(s.lookup_service("nope")), err("service \"nope\" not found")),
        ("empty query", show(s.lookup_service("")), err("service \"\" not found")),
        ("name prefixes do not count", show(s.lookup_service("we")), err("service \"we\" not found")),
        ("node by id", show(s.lookup_node("n-aa2")), ok("n-aa2")),
        ("node by unique hostname", show(s.lookup_node("host-2")), ok("n-bb")),
        (
            "node by shared hostname",
            show(s.lookup_node("host-1")),
            err("node \"host-1\" is ambiguous: matches 2 nodes; use the id or a longer prefix of it"),
        ),
        (
            "ambiguous node prefix",
            show(s.lookup_node("n-")),
            err("node \"n-\" is ambiguous: matches 3 nodes; use the id or a longer prefix of it"),
        ),
        ("node by unique prefix", show(s.lookup_node("n-b")), ok("n-bb")),
        ("self is not special", show(s.lookup_node("self")), err("node \"self\" not found")),
        ("task by prefix", show(s.lookup_task("task")), ok("task-1")),
        ("network by name", show(s.lookup_network("front")), ok("net1")),
        ("network by prefix", show(s.lookup_network("ne")), ok("net1")),
        ("secret by name", show(s.lookup_secret("pw")), ok("sec1")),
        ("secret by id", show(s.lookup_secret("sec1")), ok("sec1")),
        ("missing secret", show(s.lookup_secret("conf")), err("secret \"conf\" not found")),
        ("config by name", show(s.lookup_config("conf")), ok("cfg1")),
        ("config by prefix", show(s.lookup_config("c")), ok("cfg1")),
    ];
    for (name, got, want) in cases {
        assert_eq!(got, want, "{name}");
    }
}

#[test]
fn lookup_errors_carry_kind_query_and_count() {
    let s = store();
    assert_eq!(
        s.lookup_service("abc").map(Record::id),
        Err(LookupError::Ambiguous { kind: "service", query: "abc".into(), count: 2 })
    );
    assert_eq!(s.lookup_node("zz").map(Record::id), Err(LookupError::NotFound { kind: "node", query: "zz".into() }));
}
