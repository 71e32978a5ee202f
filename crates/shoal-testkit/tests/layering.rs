//! Architecture invariants of the dependency graph:
//! - pure crates pull no async runtime, RPC, storage or randomness crate, directly or through
//!   any dependency, when built on their own (as `cargo build -p <crate>` resolves features);
//! - workspace crates depend only on crates of lower layers (`shoal-api` <- pure crates <- I/O
//!   crates <- binaries), never sideways into the same layer unless listed, never upwards.

use std::collections::{BTreeMap, BTreeSet};

use anyhow::{bail, Context, Result};

const PURE: &[&str] = &[
    "shoal-api",
    "shoal-store",
    "shoal-scheduler",
    "shoal-orchestrator",
    "shoal-ipam",
    "shoal-compose",
    "shoal-chaos",
];
const FORBIDDEN_IN_PURE: &[&str] =
    &["tokio", "tonic", "sled", "openraft", "nix", "rand", "hyper", "tower", "containerd-client", "rustls", "mio"];

/// Layer of every workspace crate: a crate may depend on workspace crates of lower layers only.
const LAYERS: &[(&str, u8)] = &[
    ("shoal-api", 0),
    ("shoal-store", 1),
    ("shoal-scheduler", 2),
    ("shoal-ipam", 2),
    ("shoal-compose", 1),
    ("shoal-orchestrator", 3),
    ("shoal-pki", 4),
    ("shoal-raft", 4),
    ("shoal-runtime", 4),
    ("shoal-net", 4),
    ("shoal-agent", 5),
    ("shoal-client", 5),
    ("shoal-manager", 6),
    ("shoal-daemon", 7),
    ("shoal-cli", 7),
    ("shoal-testkit", 7),
    ("shoal-chaos", 1),
];

fn cargo(args: &[&str]) -> Result<String> {
    let out = std::process::Command::new(env!("CARGO"))
        .args(args)
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .output()
        .with_context(|| format!("run cargo {args:?}"))?;
    if !out.status.success() {
        bail!("cargo {args:?} failed: {}", String::from_utf8_lossy(&out.stderr));
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// Every crate a normal build of `krate` alone compiles, by name.
fn transitive_deps(krate: &str) -> Result<BTreeSet<String>> {
    let tree = cargo(&["tree", "--offline", "-p", krate, "-e", "normal", "--prefix", "none", "--format", "{p}"])?;
    Ok(tree.lines().filter_map(|l| l.split_whitespace().next()).map(str::to_string).collect())
}

#[test]
fn pure_crates_pull_nothing_that_does_io_not_even_indirectly() -> Result<()> {
    for krate in PURE {
        let deps = transitive_deps(krate)?;
        assert!(deps.contains(*krate), "cargo tree of {krate} lists the crate itself: {deps:?}");
        let bad: Vec<&String> = deps.iter().filter(|d| FORBIDDEN_IN_PURE.contains(&d.as_str())).collect();
        assert!(bad.is_empty(), "pure crate {krate} pulls {bad:?}: move that code to an I/O crate");
    }
    Ok(())
}

#[test]
fn workspace_crates_depend_only_on_lower_layers() -> Result<()> {
    let meta: serde_json::Value =
        serde_json::from_str(&cargo(&["metadata", "--format-version", "1", "--no-deps", "--offline"])?)?;
    let layers: BTreeMap<&str, u8> = LAYERS.iter().copied().collect();
    let packages = meta["packages"].as_array().context("packages")?;
    let names: BTreeSet<&str> = packages.iter().filter_map(|p| p["name"].as_str()).collect();
    assert_eq!(names, layers.keys().copied().collect(), "every workspace crate has a layer here");
    for p in packages {
        let name = p["name"].as_str().unwrap_or("");
        let own = layers[name];
        for d in p["dependencies"].as_array().into_iter().flatten() {
            let dep = d["name"].as_str().unwrap_or("");
            // Tests may use anything; build scripts and libraries may not reach up or sideways.
            if d["kind"] == "dev" {
                continue;
            }
            if let Some(&layer) = layers.get(dep) {
                assert!(layer < own, "{name} (layer {own}) depends on {dep} (layer {layer}): dependencies point down");
            }
        }
    }
    Ok(())
}

/// The `shoal` binary is a client: no Raft, storage or container runtime code is compiled in.
#[test]
fn the_cli_links_no_daemon_code() -> Result<()> {
    let deps = transitive_deps("shoal-cli")?;
    assert!(deps.contains("shoal-client"), "{deps:?}");
    for daemon_only in [
        "openraft",
        "sled",
        "containerd-client",
        "oci-client",
        "shoal-manager",
        "shoal-raft",
        "shoal-runtime",
        "shoal-agent",
        "shoal-net",
        "rtnetlink",
    ] {
        assert!(!deps.contains(daemon_only), "the CLI pulls {daemon_only}");
    }
    Ok(())
}

/// The modules of `src` (top level: `a.rs` or `a/`) and, for each, the modules of the same
/// crate it names through `crate::` paths (comments ignored).
fn module_imports(src: &std::path::Path) -> Result<BTreeMap<String, BTreeSet<String>>> {
    fn files(dir: &std::path::Path, out: &mut Vec<std::path::PathBuf>) -> Result<()> {
        for e in std::fs::read_dir(dir).with_context(|| format!("read {}", dir.display()))? {
            let p = e?.path();
            if p.is_dir() {
                files(&p, out)?;
            } else if p.extension().is_some_and(|x| x == "rs") {
                out.push(p);
            }
        }
        Ok(())
    }
    let mut all = Vec::new();
    files(src, &mut all)?;
    let mut out: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    for f in all {
        let rel = f.strip_prefix(src)?;
        let top = rel.components().next().context("empty path")?.as_os_str().to_string_lossy();
        let top = top.trim_end_matches(".rs").to_string();
        if top == "lib" || top == "main" {
            continue;
        }
        let text = std::fs::read_to_string(&f)?;
        let deps = out.entry(top.clone()).or_default();
        for line in text.lines() {
            let code = line.split("//").next().unwrap_or("");
            for (i, _) in code.match_indices("crate::") {
                let name: String =
                    code[i + 7..].chars().take_while(|c| c.is_ascii_alphanumeric() || *c == '_').collect();
                if !name.is_empty() && name != top {
                    deps.insert(name);
                }
            }
        }
    }
    let known: BTreeSet<String> = out.keys().cloned().collect();
    for deps in out.values_mut() {
        deps.retain(|d| known.contains(d));
    }
    Ok(out)
}

/// A cycle in `graph`, if there is one (as the modules along it).
fn find_cycle(graph: &BTreeMap<String, BTreeSet<String>>) -> Option<Vec<String>> {
    fn visit(
        m: &str,
        graph: &BTreeMap<String, BTreeSet<String>>,
        path: &mut Vec<String>,
        done: &mut BTreeSet<String>,
    ) -> Option<Vec<String>> {
        if let Some(at) = path.iter().position(|p| p == m) {
            let mut cycle = path[at..].to_vec();
            cycle.push(m.to_string());
            return Some(cycle);
        }
        if done.contains(m) {
            return None;
        }
        path.push(m.to_string());
        for d in graph.get(m).into_iter().flatten() {
            if let Some(c) = visit(d, graph, path, done) {
                return Some(c);
            }
        }
        path.pop();
        done.insert(m.to_string());
        None
    }
    let mut done = BTreeSet::new();
    graph.keys().find_map(|m| visit(m, graph, &mut Vec::new(), &mut done))
}

#[test]
fn the_cycle_finder_finds_cycles() {
    let g = |edges: &[(&str, &str)]| {
        let mut g: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
        for (a, b) in edges {
            g.entry(a.to_string()).or_default().insert(b.to_string());
            g.entry(b.to_string()).or_default();
        }
        g
    };
    assert_eq!(find_cycle(&g(&[("a", "b"), ("b", "c"), ("a", "c")])), None);
    let c = find_cycle(&g(&[("a", "b"), ("b", "c"), ("c", "a")])).expect("a cycle");
    assert_eq!(c.first(), c.last());
    assert_eq!(c.len(), 4);
}

/// Within each crate, modules import one another in one direction only: a module that needs
/// another's internals is a sign of a part doing two jobs.
#[test]
fn no_import_cycle_between_modules_of_a_crate() -> Result<()> {
    let crates = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let mut checked = 0;
    for e in std::fs::read_dir(&crates)? {
        let src = e?.path().join("src");
        if !src.is_dir() {
            continue;
        }
        let graph = module_imports(&src)?;
        if let Some(cycle) = find_cycle(&graph) {
            panic!("{}: modules import each other in a circle: {}", src.display(), cycle.join(" -> "));
        }
        checked += graph.len();
    }
    assert!(checked > 30, "only {checked} modules found: the scan looks in the wrong place");
    Ok(())
}
