//! `shoal volume`: the named local volumes of the nodes (a volume lives on one node; the same
//! name on two nodes is two volumes).

use clap::Subcommand;
use shoal_api::v1::{ListVolumesRequest, RemoveVolumeRequest, Volume};

use crate::output::{print_json, print_table, Format};
use crate::{Client, Fail};

/// Volume commands.
#[derive(Debug, Subcommand)]
pub enum VolumeCmd {
    /// List the named volumes of every node (or one).
    Ls {
        /// Only this node's (id, id prefix, hostname or "self").
        #[arg(long)]
        node: Option<String>,
        /// Output format: table or json.
        #[arg(long, default_value = "table")]
        format: Format,
        /// Only names.
        #[arg(short, long)]
        quiet: bool,
    },
    /// Show volumes: where they are, their size and the tasks that use them.
    Inspect {
        /// Only on this node.
        #[arg(long)]
        node: Option<String>,
        /// Output format: json or table.
        #[arg(long, default_value = "json")]
        format: Format,
        #[arg(required = true)]
        names: Vec<String>,
    },
    /// Remove volumes and their data, on every node that has them (or one); refused while a
    /// task uses one.
    Rm {
        /// Only on this node.
        #[arg(long)]
        node: Option<String>,
        #[arg(required = true)]
        names: Vec<String>,
    },
}

fn row(v: &Volume) -> serde_json::Value {
    serde_json::json!({
        "name": v.name,
        "node": v.node,
        "node_id": v.node_id,
        "size_bytes": v.size_bytes,
        "created": crate::rfc3339_ms(v.created_at_ms),
        "used_by": v.used_by,
    })
}

fn size(bytes: u64) -> String {
    match bytes {
        b if b >= 1 << 30 => format!("{:.1}GiB", b as f64 / f64::from(1u32 << 30)),
        b if b >= 1 << 20 => format!("{:.1}MiB", b as f64 / f64::from(1u32 << 20)),
        b if b >= 1 << 10 => format!("{:.1}KiB", b as f64 / 1024.0),
        b => format!("{b}B"),
    }
}

async fn list(c: &mut Client, node: Option<String>) -> Result<Vec<Volume>, Fail> {
    let r = c.list_volumes(ListVolumesRequest { node: node.unwrap_or_default() }).await?.into_inner();
    if !r.unreachable.is_empty() {
        eprintln!("warning: not listed: {} did not answer", r.unreachable.join(", "));
    }
    Ok(r.volumes)
}

pub async fn run(c: &mut Client, cmd: VolumeCmd) -> Result<(), Fail> {
    match cmd {
        VolumeCmd::Ls { node, format, quiet } => {
            let volumes = list(c, node).await?;
            if quiet {
                for v in &volumes {
                    outln!("{}", v.name);
                }
                return Ok(());
            }
            match format {
                Format::Json => print_json(&serde_json::Value::Array(volumes.iter().map(row).collect())),
                Format::Table => print_table(
                    &["NAME", "NODE", "SIZE", "USED BY"],
                    volumes
                        .iter()
                        .map(|v| vec![v.name.clone(), v.node.clone(), size(v.size_bytes), v.used_by.join(", ")])
                        .collect(),
                ),
            }
        }
        VolumeCmd::Inspect { node, format, names } => {
            let volumes = list(c, node).await?;
            let mut out = Vec::new();
            for n in &names {
                let found: Vec<&Volume> = volumes.iter().filter(|v| &v.name == n).collect();
                if found.is_empty() {
                    return Err(format!("no volume {n:?} (see `shoal volume ls`)").into());
                }
                out.extend(found);
            }
            match format {
                Format::Json => print_json(&serde_json::Value::Array(out.iter().map(|v| row(v)).collect())),
                Format::Table => {
                    for v in out {
                        outln!("Name:     {}", v.name);
                        outln!("Node:     {} ({})", v.node, v.node_id);
                        outln!("Size:     {}", size(v.size_bytes));
                        outln!("Created:  {}", crate::rfc3339_ms(v.created_at_ms));
                        outln!(
                            "Used by:  {}",
                            if v.used_by.is_empty() { "-".to_string() } else { v.used_by.join(", ") }
                        );
                    }
                }
            }
        }
        VolumeCmd::Rm { node, names } => {
            let mut failed = Vec::new();
            for n in names {
                let req = RemoveVolumeRequest { volume: n.clone(), node: node.clone().unwrap_or_default() };
                match c.remove_volume(req).await {
                    Ok(r) => outln!("{n} (removed on {})", r.into_inner().nodes.join(", ")),
                    Err(s) => failed.push(s.message().to_string()),
                }
            }
            if !failed.is_empty() {
                return Err(failed.join("\n").into());
            }
        }
    }
    Ok(())
}
