//! shoald: the shoal node daemon. Parses flags, installs logging and signal handling, and runs
//! the node (manager and/or worker roles live in shoal-manager).

use std::net::SocketAddr;
use std::path::PathBuf;

use clap::Parser;

mod config;

/// shoal node daemon.
#[derive(Debug, Parser)]
#[command(name = "shoald", version, about = "shoal node daemon")]
struct Flags {
    /// Configuration file (TOML); flags and environment variables override it.
    #[arg(long, env = "SHOALD_CONFIG")]
    config: Option<PathBuf>,
    /// Data directory: node identity, Raft log and snapshots [default: /var/lib/shoal].
    #[arg(long, env = "SHOALD_DATA_DIR")]
    data_dir: Option<PathBuf>,
    /// TCP address for other nodes and remote CLIs [default: 127.0.0.1:4242]. Loopback by
    /// default: choose an address other hosts can reach to build a multi-host cluster.
    #[arg(long, env = "SHOALD_LISTEN_ADDR")]
    listen_addr: Option<SocketAddr>,
    /// Address other nodes reach this one at (HOST:PORT); default: the listen address.
    #[arg(long, env = "SHOALD_ADVERTISE_ADDR")]
    advertise_addr: Option<String>,
    /// Unix socket for the local CLI, created mode 0600 [default: /run/shoal/shoal.sock].
    #[arg(long, env = "SHOALD_CONTROL_SOCKET")]
    control_socket: Option<PathBuf>,
    /// Name shown in `shoal node ls`; default: the machine's hostname.
    #[arg(long, env = "SHOALD_HOSTNAME")]
    hostname: Option<String>,
    /// containerd's socket; the node runs tasks only if containerd answers there.
    #[arg(long, env = "SHOALD_CONTAINERD_SOCKET", default_value = "/run/containerd/containerd.sock")]
    containerd_socket: PathBuf,
    /// containerd namespace for this node's containers (several nodes may share one containerd).
    #[arg(long, env = "SHOALD_CONTAINERD_NAMESPACE", default_value = "shoal")]
    containerd_namespace: String,
    /// A registry (HOST:PORT) reached over plain HTTP; repeatable. Only for trusted networks.
    #[arg(long = "insecure-registry")]
    insecure_registries: Vec<String>,
    /// Registry credentials for image pulls, in Docker's config.json format (what `docker login`
    /// writes); read at each pull.
    #[arg(long, env = "SHOALD_REGISTRY_AUTH_FILE")]
    registry_auth_file: Option<PathBuf>,
    /// Cap of one task log file (e.g. 10MiB); past it, the log moves to `<file>.1` [default: 10MiB].
    #[arg(long, env = "SHOALD_TASK_LOG_MAX_SIZE")]
    task_log_max_size: Option<String>,
    /// Run no tasks on this node (no container runtime).
    #[arg(long)]
    no_runtime: bool,
    /// Recover this manager after the loss of quorum: it becomes the only manager of a cluster
    /// that keeps its state. Other former managers must be wiped and joined again.
    #[arg(long)]
    force_new_cluster: bool,
    /// Log format [default: text].
    #[arg(long, env = "SHOALD_LOG_FORMAT", value_parser = ["text", "json"])]
    log_format: Option<String>,
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
    let file = match config::load(flags.config.as_deref()) {
        Ok(f) => f,
        Err(e) => {
            eprintln!("shoald: {e:#}");
            return std::process::ExitCode::FAILURE;
        }
    };
    let log_format = flags.log_format.clone().or(file.log_format.clone()).unwrap_or_else(|| "text".into());
    if log_format != "text" && log_format != "json" {
        eprintln!("shoald: log format {log_format:?} must be text or json");
        return std::process::ExitCode::FAILURE;
    }
    init_logging(&log_format);
    let rt = match tokio::runtime::Builder::new_multi_thread().enable_all().build() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("shoald: cannot start the async runtime: {e}");
            return std::process::ExitCode::FAILURE;
        }
    };
    match rt.block_on(run(flags, file)) {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("shoald: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}

async fn run(flags: Flags, file: config::FileConfig) -> anyhow::Result<()> {
    let default_listen: SocketAddr = ([127, 0, 0, 1], 4242).into();
    let background = tokio_util::sync::CancellationToken::new();
    let _stop_background = background.clone().drop_guard();
    let data_dir = flags.data_dir.clone().or(file.data_dir.clone()).unwrap_or_else(|| PathBuf::from("/var/lib/shoal"));
    let runtime: Option<std::sync::Arc<dyn shoal_runtime::ContainerRuntime>> = if flags.no_runtime {
        None
    } else {
        let auth_file = flags.registry_auth_file.clone().or(file.registry_auth_file.clone());
        if let Some(path) = &auth_file {
            // Fail at start on a file that cannot work, rather than at the first pull.
            let text = std::fs::read_to_string(path)
                .map_err(|e| anyhow::anyhow!("--registry-auth-file {}: {e}", path.display()))?;
            shoal_runtime::auth::parse(&text)
                .map_err(|e| anyhow::anyhow!("--registry-auth-file {}: {e}", path.display()))?;
        }
        // Connects on first use: a node whose containerd is down starts, says so in its status,
        // and takes tasks once containerd answers.
        let c = shoal_runtime::containerd::Containerd::connect(
            &flags.containerd_socket,
            &flags.containerd_namespace,
            flags.insecure_registries.iter().chain(&file.insecure_registries).cloned().collect(),
            auth_file,
            data_dir.join("runtime"),
        )?;
        let max_log = match flags.task_log_max_size.as_deref().or(file.task_log_max_size.as_deref()) {
            Some(t) => config::parse_size(t).map_err(|e| anyhow::anyhow!("--task-log-max-size: {e}"))?,
            None => shoal_runtime::logfile::DEFAULT_MAX_BYTES,
        };
        c.spawn_log_rotation(max_log, background.clone());
        Some(std::sync::Arc::new(c))
    };
    let cfg = shoal_manager::DaemonConfig {
        data_dir,
        listen_addr: flags.listen_addr.or(file.listen_addr).unwrap_or(default_listen),
        advertise_addr: flags.advertise_addr.or(file.advertise_addr),
        control_socket: Some(
            flags.control_socket.or(file.control_socket).unwrap_or_else(|| PathBuf::from("/run/shoal/shoal.sock")),
        ),
        hostname: flags.hostname.or(file.hostname),
        force_new_cluster: flags.force_new_cluster,
        runtime,
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
