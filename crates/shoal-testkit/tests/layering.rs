//! Architecture invariant: pure crates (shoal-api, shoal-store) depend on no async runtime, RPC
//! or storage crate, and dependencies point from I/O crates to pure ones, never back.

use anyhow::{Context, Result};

const PURE: &[&str] = &["shoal-api", "shoal-store", "shoal-scheduler", "shoal-orchestrator"];
const FORBIDDEN_IN_PURE: &[&str] = &["tokio", "tonic", "sled", "openraft", "nix", "rand", "hyper", "tower"];

#[test]
fn pure_crates_stay_pure_and_layers_point_one_way() -> Result<()> {
    let out = std::process::Command::new(env!("CARGO"))
        .args(["metadata", "--format-version", "1", "--no-deps", "--offline"])
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .output()
        .context("run cargo metadata")?;
    assert!(out.status.success(), "cargo metadata failed: {}", String::from_utf8_lossy(&out.stderr));
    let meta: serde_json::Value = serde_json::from_slice(&out.stdout)?;
    let packages = meta["packages"].as_array().context("packages")?;
    let mut checked = 0;
    for p in packages {
        let name = p["name"].as_str().unwrap_or("");
        let deps: Vec<(&str, bool)> = p["dependencies"]
            .as_array()
            .into_iter()
            .flatten()
            .filter(|d| d["kind"].is_null()) // normal dependencies, not dev/build
            .map(|d| (d["name"].as_str().unwrap_or(""), d["optional"].as_bool().unwrap_or(false)))
            .collect();
        if PURE.contains(&name) {
            checked += 1;
            for (dep, optional) in &deps {
                assert!(
                    *optional || !FORBIDDEN_IN_PURE.contains(dep),
                    "pure crate {name} depends on {dep}: move that code to an I/O crate"
                );
            }
        }
        if name == "shoal-api" {
            for (dep, _) in &deps {
                assert!(!dep.starts_with("shoal-"), "shoal-api must not depend on {dep}");
            }
        }
        if name == "shoal-store" {
            for (dep, _) in &deps {
                assert!(!dep.starts_with("shoal-") || *dep == "shoal-api", "shoal-store must not depend on {dep}");
            }
        }
    }
    assert_eq!(checked, PURE.len(), "every pure crate was found in the workspace");
    Ok(())
}
