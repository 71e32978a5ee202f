//! shoald: the shoal node daemon. Parses flags, installs logging and signal handling, and runs
//! the node (manager and/or worker roles live in shoal-manager).

use std::net::SocketAddr;
use std::path::PathBuf;

use clap::Parser;

/// shoal node daemon.
#[derive(Debug, Parser)]
#[command(name = "shoald", version, about = "shoal node daemon")]
struct Flags {
    /// Data directory: node identity, Raft log and snapshots.
    #[arg(long, env = "SHOALD_DATA_DIR", default_value = "/var/lib/shoal")]
    data_dir: PathBuf,
    /// TCP address for other nodes and remote CLIs. Loopback by default: choose an address
    /// other hosts can reach to build a multi-host cluster.
    #[arg(long, env = "SHOALD_LISTEN_ADDR", default_value = "127.0.0.1:4242")]
    listen_addr: SocketAddr,
    /// Address other nodes reach this one at (HOST:PORT); default: the listen address.
    #[arg(long, env = "SHOALD_ADVERTISE_ADDR")]
    advertise_addr: Option<String>,
    /// Unix socket for the local CLI (created mode 0600).
    #[arg(long, env = "SHOALD_CONTROL_SOCKET", default_value = "/run/shoal/shoal.sock")]
    control_socket: PathBuf,
    /// Name shown in `shoal node ls`; default: the machine's hostname.
    #[arg(long, env = "SHOALD_HOSTNAME")]
    hostname: Option<String>,
    /// Recover this manager after the loss of quorum: it becomes the only manager of a cluster
    /// that keeps its state. Other former managers must be wiped and joined again.
    #[arg(long)]
    force_new_cluster: bool,
    /// Log format.
    #[arg(long, env = "SHOALD_LOG_FORMAT", value_parser = ["text", "json"], default_value = "text")]
    log_format: String,
}

fn init_logging(format: &str) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info,openraft=warn,sled=warn,h2=warn,tower=warn"));
    let builder = tracing_subscriber::fmt().with_env_filter(filter).with_writer(std::io::stderr);
    if format == "json" {
        builder.json().init();
    } else {
        builder.init();
    }
}

fn main() -> std::process::ExitCode {
    let flags = Flags::parse();
    init_logging(&flags.log_format);
    let rt = match tokio::runtime::Builder::new_multi_thread().enable_all().build() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("shoald: cannot start the async runtime: {e}");
            return std::process::ExitCode::FAILURE;
        }
    };
    match rt.block_on(run(flags)) {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("shoald: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}

async fn run(flags: Flags) -> anyhow::Result<()> {
    let cfg = shoal_manager::DaemonConfig {
        data_dir: flags.data_dir,
        listen_addr: flags.listen_addr,
        advertise_addr: flags.advertise_addr,
        control_socket: Some(flags.control_socket),
        hostname: flags.hostname,
        force_new_cluster: flags.force_new_cluster,
    };
    let mut daemon = shoal_manager::Daemon::start(cfg).await?;
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
    tokio::select! {
        r = daemon.wait() => r?,
        _ = tokio::signal::ctrl_c() => tracing::info!("interrupted: shutting down"),
        _ = term.recv() => tracing::info!("terminated: shutting down"),
    }
    daemon.shutdown().await;
    Ok(())
}
