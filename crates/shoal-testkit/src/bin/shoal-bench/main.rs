//! shoal's benchmarks. They print figures, one per line as `<name>: <value> <unit>`, with the
//! anchor each is compared against; they assert nothing about time (a run that did not do its
//! work fails instead).
//!
//! ```text
//! shoal-bench raft [--runs N] [--seconds S] [--stability-minutes M]
//!                                              3 real managers: updates/s, elections while idle
//!                                              and under load, leader failover
//! shoal-bench schedule [--nodes N] [--tasks T] the pure scheduler over a large cluster
//! shoal-bench scale [--nodes N] [--tasks T] [--run-delay-ms D] [--join-parallelism P]
//!                                              simulated workers against 3 real managers
//! ```
//!
//! Run with the release binaries next to it (or SHOAL_BIN_DIR). Traffic stays on loopback.

mod raft;
mod scale;
mod schedule;

use anyhow::{bail, Context, Result};
use shoal_api::v1::{service_spec, Annotations, ContainerSpec, ReplicatedService, ServiceSpec, TaskSpec};

const USAGE: &str =
    "usage: shoal-bench raft [--runs N] [--seconds S] [--stability-minutes M] | schedule [--nodes N] [--tasks T] | \
                     scale [--nodes N] [--tasks T] [--run-delay-ms D] [--join-parallelism P]";

/// The value after flag `name`.
fn value<T: std::str::FromStr>(args: &mut impl Iterator<Item = String>, name: &str) -> Result<T>
where
    T::Err: std::error::Error + Send + Sync + 'static,
{
    Ok(args.next().with_context(|| format!("{name} needs a value"))?.parse()?)
}

/// Runs the benchmark the arguments name; a bad argument or a failed run ends in one line on
/// standard error and exit status 1 (2 for usage), never a backtrace.
fn main() -> std::process::ExitCode {
    let rt = match tokio::runtime::Builder::new_multi_thread().enable_all().build() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("shoal-bench: cannot start a runtime: {e}");
            return std::process::ExitCode::FAILURE;
        }
    };
    let args: Vec<String> = std::env::args().skip(1).collect();
    if args.iter().any(|a| a == "--help" || a == "-h") {
        println!("{USAGE}");
        return std::process::ExitCode::SUCCESS;
    }
    match rt.block_on(run(args.into_iter())) {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("shoal-bench: {e:#}");
            std::process::ExitCode::from(if e.to_string().contains(USAGE) { 2 } else { 1 })
        }
    }
}

async fn run(mut args: impl Iterator<Item = String>) -> Result<()> {
    let Some(which) = args.next() else { bail!("{USAGE}") };
    match which.as_str() {
        "raft" => {
            let mut o = raft::Opts { runs: 7, seconds: 5, stability_minutes: 10 };
            while let Some(a) = args.next() {
                match a.as_str() {
                    "--runs" => o.runs = value(&mut args, "--runs")?,
                    "--seconds" => o.seconds = value(&mut args, "--seconds")?,
                    "--stability-minutes" => o.stability_minutes = value(&mut args, "--stability-minutes")?,
                    other => bail!("unknown argument {other:?}; {USAGE}"),
                }
            }
            raft::run(o).await
        }
        "schedule" => {
            let (mut nodes, mut tasks) = (5_000usize, 100_000usize);
            while let Some(a) = args.next() {
                match a.as_str() {
                    "--nodes" => nodes = value(&mut args, "--nodes")?,
                    "--tasks" => tasks = value(&mut args, "--tasks")?,
                    other => bail!("unknown argument {other:?}; {USAGE}"),
                }
            }
            schedule::run(nodes, tasks)
        }
        "scale" => {
            let mut o = scale::Opts {
                nodes: 5_000,
                tasks: 100_000,
                run_delay: std::time::Duration::from_millis(100),
                join_parallelism: 32,
            };
            while let Some(a) = args.next() {
                match a.as_str() {
                    "--nodes" => o.nodes = value(&mut args, "--nodes")?,
                    "--tasks" => o.tasks = value(&mut args, "--tasks")?,
                    "--run-delay-ms" => {
                        o.run_delay = std::time::Duration::from_millis(value(&mut args, "--run-delay-ms")?)
                    }
                    "--join-parallelism" => o.join_parallelism = value(&mut args, "--join-parallelism")?,
                    other => bail!("unknown argument {other:?}; {USAGE}"),
                }
            }
            scale::run(o).await
        }
        other => bail!("unknown benchmark {other:?}; {USAGE}"),
    }
}

/// The spec of the benchmarks' services: `replicas` tasks of the bench image named `name`.
pub(crate) fn spec(name: &str, replicas: u64) -> ServiceSpec {
    ServiceSpec {
        annotations: Some(Annotations { name: name.into(), ..Default::default() }),
        task_template: Some(TaskSpec {
            container: Some(ContainerSpec { image: "bench:1".into(), ..Default::default() }),
            ..Default::default()
        }),
        mode: Some(service_spec::Mode::Replicated(ReplicatedService { replicas })),
        ..Default::default()
    }
}
