//! shoal's benchmarks. They print figures, one per line as `<name>: <value> <unit>`, with the
//! anchor each is compared against; they assert nothing about time (a run that did not do its
//! work fails instead).
//!
//! ```text
//! shoal-bench raft [--runs N] [--seconds S]    3 real managers: updates/s, leader failover
//! shoal-bench schedule [--nodes N] [--tasks T] the pure scheduler over a large cluster
//! ```
//!
//! Run with the release binaries next to it (or SHOAL_BIN_DIR). Traffic stays on loopback.

mod raft;
mod schedule;

use anyhow::{bail, Context, Result};

const USAGE: &str = "usage: shoal-bench raft [--runs N] [--seconds S] | schedule [--nodes N] [--tasks T]";

/// The value after flag `name`.
fn value<T: std::str::FromStr>(args: &mut impl Iterator<Item = String>, name: &str) -> Result<T>
where
    T::Err: std::error::Error + Send + Sync + 'static,
{
    Ok(args.next().with_context(|| format!("{name} needs a value"))?.parse()?)
}

#[tokio::main]
async fn main() -> Result<()> {
    let mut args = std::env::args().skip(1);
    let Some(which) = args.next() else { bail!("{USAGE}") };
    match which.as_str() {
        "raft" => {
            let mut o = raft::Opts { runs: 7, seconds: 5 };
            while let Some(a) = args.next() {
                match a.as_str() {
                    "--runs" => o.runs = value(&mut args, "--runs")?,
                    "--seconds" => o.seconds = value(&mut args, "--seconds")?,
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
        other => bail!("unknown benchmark {other:?}; {USAGE}"),
    }
}
