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
    /// Configuration file (TOML; keys are the flag names) [default: /etc/shoal/shoald.toml if it
    /// exists]. Flags and environment variables override it.
    #[arg(long, env = "SHOALD_CONFIG")]
    config: Option<PathBuf>,
    /// Data directory: node identity, Raft log and snapshots [default: /var/lib/shoal].
    #[arg(long, env = "SHOALD_DATA_DIR")]
    data_dir: Option<PathBuf>,
    /// TCP address for other nodes and remote CLIs [default: 127.0.0.1:4242]. Loopback by
    /// default: choose an address other hosts can reach to build a multi-host cluster.
    #[arg(long, env = "SHOALD_LISTEN_ADDR")]
    listen_addr: Option<SocketAddr>,
    /// Address other nodes reach this one at (HOST:PORT); default: the listen address (required
    /// when that is 0.0.0.0).
    #[arg(long, env = "SHOALD_ADVERTISE_ADDR")]
    advertise_addr: Option<String>,
    /// Unix socket for the local CLI, created mode 0600 [default: /run/shoal/shoal.sock].
    #[arg(long, env = "SHOALD_CONTROL_SOCKET")]
    control_socket: Option<PathBuf>,
    /// Name shown in `shoal node ls`; default: the machine's hostname.
    #[arg(long, env = "SHOALD_HOSTNAME")]
    hostname: Option<String>,
    /// containerd's socket; the node runs tasks only if containerd answers there
    /// [default: /run/containerd/containerd.sock].
    #[arg(long, env = "SHOALD_CONTAINERD_SOCKET")]
    containerd_socket: Option<PathBuf>,
    /// containerd namespace for this node's containers (several nodes may share one containerd)
    /// [default: shoal].
    #[arg(long, env = "SHOALD_CONTAINERD_NAMESPACE")]
    containerd_namespace: Option<String>,
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
    /// TTL in seconds of the answers the tasks' resolvers (127.0.0.11) give for cluster names,
    /// 1..=60 [default: 5].
    #[arg(long, env = "SHOALD_DNS_TTL")]
    dns_ttl: Option<u32>,
    /// Run no tasks on this node (no container runtime).
    #[arg(long, env = "SHOALD_NO_RUNTIME")]
    no_runtime: bool,
    /// Recover this manager after the loss of quorum: it becomes the only manager of a cluster
    /// that keeps its state. Other former managers must be wiped and joined again.
    #[arg(long)]
    force_new_cluster: bool,
    /// Log format: text or json [default: text].
    #[arg(long, env = "SHOALD_LOG_FORMAT")]
    log_format: Option<String>,
}

impl Flags {
    fn values(self) -> config::FlagValues {
        config::FlagValues {
            data_dir: self.data_dir,
            listen_addr: self.listen_addr,
            advertise_addr: self.advertise_addr,
            control_socket: self.control_socket,
            hostname: self.hostname,
            log_format: self.log_format,
            containerd_socket: self.containerd_socket,
            containerd_namespace: self.containerd_namespace,
            insecure_registries: self.insecure_registries,
            registry_auth_file: self.registry_auth_file,
            task_log_max_size: self.task_log_max_size,
            dns_ttl: self.dns_ttl,
            no_runtime: self.no_runtime,
            force_new_cluster: self.force_new_cluster,
        }
    }
}

/// The long names of shoald's flags (without `--help`/`--version`).
#[cfg(test)]
fn flag_names() -> Vec<String> {
    use clap::CommandFactory;
    Flags::command()
        .get_arguments()
        .filter_map(|a| a.get_long().map(str::to_string))
        .filter(|l| l != "help" && l != "version")
        .collect()
}

fn init_logging(json: bool) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info,openraft=warn,sled=warn,h2=warn,tower=warn"));
    let builder = tracing_subscriber::fmt().with_env_filter(filter).with_writer(std::io::stderr);
    if json {
        builder.json().init();
    } else {
        builder.init();
    }
}

fn main() -> std::process::ExitCode {
    let flags = Flags::parse();
    let settings = config::load(flags.config.as_deref())
        .and_then(|(file, path)| config::resolve(flags.values(), file, path.as_deref()).map_err(anyhow::Error::msg));
    let settings = match settings {
        Ok(s) => s,
        Err(e) => {
            eprintln!("shoald: {e:#}");
            return std::process::ExitCode::FAILURE;
        }
    };
    init_logging(settings.json_logs);
    let rt = match tokio::runtime::Builder::new_multi_thread().enable_all().build() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("shoald: cannot start the async runtime: {e}");
            return std::process::ExitCode::FAILURE;
        }
    };
    match rt.block_on(run(settings)) {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("shoald: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}

async fn run(s: config::Settings) -> anyhow::Result<()> {
    let background = tokio_util::sync::CancellationToken::new();
    let _stop_background = background.clone().drop_guard();
    // Work of the daemon process itself (the node's own workers live in its supervisor).
    let mut own_work = tokio::task::JoinSet::new();
    let runtime: Option<std::sync::Arc<dyn shoal_runtime::ContainerRuntime>> = if s.no_runtime {
        None
    } else {
        if let Some(path) = &s.registry_auth_file {
            // Fail at start on a file that cannot work, rather than at the first pull.
            let text = std::fs::read_to_string(path)
                .map_err(|e| anyhow::anyhow!("registry-auth-file {}: {e}", path.display()))?;
            shoal_runtime::auth::parse(&text)
                .map_err(|e| anyhow::anyhow!("registry-auth-file {}: {e}", path.display()))?;
        }
        // Connects on first use: a node whose containerd is down starts, says so in its status,
        // and takes tasks once containerd answers.
        let c = shoal_runtime::containerd::Containerd::connect(
            &s.containerd_socket,
            &s.containerd_namespace,
            s.insecure_registries.clone(),
            s.registry_auth_file.clone(),
            s.data_dir.join("runtime"),
        )?;
        own_work.spawn(c.log_rotation(
            s.task_log_max_bytes.unwrap_or(shoal_runtime::logfile::DEFAULT_MAX_BYTES),
            background.clone(),
        ));
        Some(std::sync::Arc::new(c))
    };
    let cfg = shoal_manager::DaemonConfig {
        data_dir: s.data_dir,
        listen_addr: s.listen_addr,
        advertise_addr: s.advertise_addr,
        control_socket: Some(s.control_socket),
        hostname: s.hostname,
        force_new_cluster: s.force_new_cluster,
        runtime,
        dns_ttl: s.dns_ttl,
    };
    let mut daemon = shoal_manager::Daemon::start(cfg).await?;
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
    tokio::select! {
        r = daemon.wait() => r?,
        _ = tokio::signal::ctrl_c() => tracing::info!("interrupted: shutting down"),
        _ = term.recv() => tracing::info!("terminated: shutting down"),
    }
    daemon.shutdown().await;
    background.cancel();
    while own_work.join_next().await.is_some() {}
    Ok(())
}
