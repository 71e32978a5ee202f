//! Architecture invariants of the dependency graph:
//! - pure crates pull no async runtime, RPC, storage or randomness crate, directly or through
//!   any dependency, when built on their own (as `cargo build -p <crate>` resolves features);
//! - workspace crates depend only on crates of lower layers (`shoal-api` <- pure crates <- I/O
//!   crates <- binaries), never sideways into the same layer unless listed, never upwards.

use std::collections::{BTreeMap, BTreeSet};

use anyhow::{bail, Context, Result};

const PURE: &[&str] = &["shoal-api", "shoal-store", "shoal-scheduler", "shoal-orchestrator"];
const FORBIDDEN_IN_PURE: &[&str] =
    &["tokio", "tonic", "sled", "openraft", "nix", "rand", "hyper", "tower", "containerd-client", "rustls", "mio"];

/// Layer of every workspace crate: a crate may depend on workspace crates of lower layers only.
const LAYERS: &[(&str, u8)] = &[
    ("shoal-api", 0),
    ("shoal-store", 1),
    ("shoal-scheduler", 2),
    ("shoal-orchestrator", 3),
    ("shoal-pki", 4),
    ("shoal-raft", 4),
    ("shoal-runtime", 4),
    ("shoal-agent", 5),
    ("shoal-client", 5),
    ("shoal-manager", 6),
    ("shoal-daemon", 7),
    ("shoal-cli", 7),
    ("shoal-testkit", 7),
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
    ] {
        assert!(!deps.contains(daemon_only), "the CLI pulls {daemon_only}");
    }
    Ok(())
}
