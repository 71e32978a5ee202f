//! `shoal-chaos check`: judges what `chaos/run.sh` recorded (JSON lines) with shoal-chaos's
//! checker, prints the counts and the verdict, and exits 1 on any violation.
//!
//! ```text
//! shoal-chaos check --history OPS.jsonl --finals FINALS.json [--initial INITIAL.json]
//!                   [--versions VERSIONS.jsonl]
//!                   [--hosts SAMPLES.jsonl --cut-offs CUTS.jsonl --grace-ms N
//!                    [--stopped-within-ms N]]
//! ```
//! - OPS: `{"object", "value" (null: removal), "start_ms", "end_ms", "outcome": ok|failed|unknown}`
//! - FINALS / INITIAL: `{"object": "value", ...}` (absent objects left out)
//! - VERSIONS: `{"object", "at_ms", "version"}`
//! - SAMPLES: `{"at_ms", "running": [{"service", "slot", "host"}]}`
//! - CUTS: `{"host", "from_ms", "to_ms"}`

use std::collections::BTreeMap;

use serde_json::Value;
use shoal_chaos::check;
use shoal_chaos::history::{CutOff, HostSample, Op, Outcome, Running, VersionSample, Write};

fn lines(path: &str) -> Result<Vec<Value>, String> {
    let text = std::fs::read_to_string(path).map_err(|e| format!("cannot read {path}: {e}"))?;
    text.lines()
        .filter(|l| !l.trim().is_empty())
        .enumerate()
        .map(|(i, l)| serde_json::from_str(l).map_err(|e| format!("{path}:{}: {e}", i + 1)))
        .collect()
}

fn map(path: &str) -> Result<BTreeMap<String, String>, String> {
    let text = std::fs::read_to_string(path).map_err(|e| format!("cannot read {path}: {e}"))?;
    let v: BTreeMap<String, Value> = serde_json::from_str(&text).map_err(|e| format!("{path}: {e}"))?;
    Ok(v.into_iter().map(|(k, v)| (k, v.as_str().map_or_else(|| v.to_string(), str::to_string))).collect())
}

fn u(v: &Value, key: &str) -> Result<u64, String> {
    v[key].as_u64().ok_or_else(|| format!("{key} missing in {v}"))
}

fn s(v: &Value, key: &str) -> Result<String, String> {
    v[key].as_str().map(str::to_string).ok_or_else(|| format!("{key} missing in {v}"))
}

fn op(v: &Value) -> Result<Op, String> {
    Ok(Op {
        object: s(v, "object")?,
        write: match &v["value"] {
            Value::Null => Write::Remove,
            Value::String(x) => Write::Set(x.clone()),
            other => Write::Set(other.to_string()),
        },
        start_ms: u(v, "start_ms")?,
        end_ms: u(v, "end_ms")?,
        outcome: match s(v, "outcome")?.as_str() {
            "ok" => Outcome::Ok,
            "failed" => Outcome::Failed,
            "unknown" => Outcome::Unknown,
            other => return Err(format!("outcome {other:?} must be ok, failed or unknown")),
        },
    })
}

fn run(args: &[String]) -> Result<bool, String> {
    let mut flags: BTreeMap<&str, &str> = BTreeMap::new();
    let mut it = args.iter().skip(1);
    match args.first().map(String::as_str) {
        Some("check") => {}
        _ => {
            return Err(
                "usage: shoal-chaos check --history F --finals F [--initial F] [--versions F] [--hosts F --cut-offs F --grace-ms N [--stopped-within-ms N]]"
                    .into(),
            )
        }
    }
    while let Some(k) = it.next() {
        let v = it.next().ok_or_else(|| format!("{k} needs a value"))?;
        flags.insert(k.trim_start_matches("--"), v);
    }
    let need = |k: &str| flags.get(k).copied().ok_or_else(|| format!("--{k} is required"));
    let history: Vec<Op> = lines(need("history")?)?.iter().map(op).collect::<Result<_, _>>()?;
    let finals = map(need("finals")?)?;
    let initial = flags.get("initial").map(|p| map(p)).transpose()?.unwrap_or_default();
    let mut violations = check::writes(&history, &initial, &finals);
    if let Some(path) = flags.get("versions") {
        let samples: Vec<VersionSample> = lines(path)?
            .iter()
            .map(|v| Ok(VersionSample { object: s(v, "object")?, at_ms: u(v, "at_ms")?, version: u(v, "version")? }))
            .collect::<Result<_, String>>()?;
        println!("version samples: {}", samples.len());
        if samples.is_empty() {
            return Err("no version was sampled: the sampler is broken".into());
        }
        violations.extend(check::versions(&samples));
    }
    if let Some(hosts) = flags.get("hosts") {
        let samples: Vec<HostSample> = lines(hosts)?
            .iter()
            .map(|v| {
                let running = v["running"]
                    .as_array()
                    .into_iter()
                    .flatten()
                    .map(|r| Ok(Running { service: s(r, "service")?, slot: u(r, "slot")?, host: s(r, "host")? }))
                    .collect::<Result<_, String>>()?;
                Ok(HostSample { at_ms: u(v, "at_ms")?, running })
            })
            .collect::<Result<_, String>>()?;
        let cuts: Vec<CutOff> = match flags.get("cut-offs") {
            Some(p) => lines(p)?
                .iter()
                .map(|v| Ok(CutOff { host: s(v, "host")?, from_ms: u(v, "from_ms")?, to_ms: u(v, "to_ms")? }))
                .collect::<Result<_, String>>()?,
            None => Vec::new(),
        };
        let grace =
            flags.get("grace-ms").map(|g| g.parse::<u64>().map_err(|e| format!("--grace-ms: {e}"))).transpose()?;
        let sizes: Vec<usize> = samples.iter().map(|s| s.running.len()).collect();
        let (lo, hi) = (sizes.iter().min().copied().unwrap_or(0), sizes.iter().max().copied().unwrap_or(0));
        println!("host samples: {} ({lo}-{hi} containers each)", samples.len());
        // A slot check over samples that saw nothing judges nothing.
        if hi == 0 {
            return Err("the host samples saw no container of the service: the sampler is broken".into());
        }
        violations.extend(check::slots(&samples, &cuts, grace.unwrap_or(0)));
        if let Some(bound) = flags.get("stopped-within-ms") {
            let bound = bound.parse::<u64>().map_err(|e| format!("--stopped-within-ms: {e}"))?;
            violations.extend(check::stopped_when_cut_off(&samples, &cuts, bound));
            for c in &cuts {
                let on = |s: &HostSample| s.running.iter().filter(|r| r.host == c.host).count();
                let during: Vec<&HostSample> =
                    samples.iter().filter(|s| s.at_ms >= c.from_ms && s.at_ms < c.to_ms).collect();
                let at_cut = during.first().map_or(0, |s| on(s));
                let last = during.iter().rev().find(|s| on(s) > 0).map(|s| s.at_ms - c.from_ms);
                match last {
                    Some(ms) => println!("{}: {at_cut} running when cut off, the last seen {ms} ms after", c.host),
                    None => println!("{}: {at_cut} running when cut off", c.host),
                }
            }
        }
    }
    let count = |o: Outcome| history.iter().filter(|h| h.outcome == o).count();
    println!(
        "operations: {} acknowledged, {} failed, {} unknown",
        count(Outcome::Ok),
        count(Outcome::Failed),
        count(Outcome::Unknown)
    );
    for v in &violations {
        println!("violation: {}", v.0);
    }
    println!("verdict: {}", if violations.is_empty() { "pass" } else { "FAIL" });
    Ok(violations.is_empty())
}

fn main() -> std::process::ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    match run(&args) {
        Ok(true) => std::process::ExitCode::SUCCESS,
        Ok(false) => std::process::ExitCode::from(1),
        Err(e) => {
            eprintln!("shoal-chaos: {e}");
            std::process::ExitCode::from(2)
        }
    }
}
