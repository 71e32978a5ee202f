//! shoal: the command-line client. Docker-Swarm-like verbs over the control API of the local
//! daemon (unix socket) or of a manager (HOST:PORT). It only parses, calls and prints: every
//! decision is made by the daemon.

#[macro_use]
mod out;
mod exec;
mod output;
mod progress;
mod specs;
mod stack;
mod volume;

use clap::{Args, Parser, Subcommand};
use shoal_api::names;
use shoal_api::v1::{self, control_client::ControlClient, *};
use shoal_client::{connect_with, Host, MAX_MESSAGE_BYTES};
use tonic::transport::Channel;

use crate::output::{print_json, print_table, Format};
use crate::specs::{CommonFlags, Lists};

/// Default control socket of the local daemon.
const DEFAULT_HOST: &str = "unix:///run/shoal/shoal.sock";

#[derive(Debug, Parser)]
#[command(name = "shoal", version, about = "shoal: a clustered container orchestrator")]
struct Cli {
    /// Daemon to talk to: unix:///path/to.sock (local daemon) or HOST:PORT (a manager).
    #[arg(long, short = 'H', env = "SHOAL_HOST", default_value = DEFAULT_HOST, global = true)]
    host: String,
    /// Directory with an admin certificate (ca.crt, admin.crt, admin.key) for a HOST:PORT host.
    #[arg(long, env = "SHOAL_TLS_DIR", global = true)]
    tls_dir: Option<std::path::PathBuf>,
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Debug, Subcommand)]
enum Cmd {
    /// Show what the daemon is (role, cluster, raft state).
    Info(FormatArg),
    /// Manage the cluster.
    #[command(subcommand)]
    Cluster(ClusterCmd),
    /// Manage nodes.
    #[command(subcommand)]
    Node(NodeCmd),
    /// Manage services.
    #[command(subcommand)]
    Service(ServiceCmd),
    /// Manage overlay networks.
    #[command(subcommand)]
    Network(NetworkCmd),
    /// Work with tasks.
    #[command(subcommand)]
    Task(TaskCmd),
    /// Manage secrets (their data is never shown again).
    #[command(subcommand)]
    Secret(DataCmd),
    /// Manage configs.
    #[command(subcommand)]
    Config(DataCmd),
    /// Deploy and manage stacks from Compose files.
    #[command(subcommand)]
    Stack(stack::StackCmd),
    /// Named local volumes of the nodes.
    #[command(subcommand)]
    Volume(volume::VolumeCmd),
    /// Print a shell completion script: `source <(shoal completion bash)`, or save it where your
    /// shell loads completions from (e.g. /usr/share/bash-completion/completions/shoal).
    Completion {
        /// bash, zsh, fish, elvish or powershell.
        shell: clap_complete::Shell,
    },
}

/// Task commands.
#[derive(Debug, Subcommand)]
enum TaskCmd {
    /// Run a command in a task's container and exit with its code (TASK: an id or id prefix,
    /// or a name like web.3 for the running task of that name).
    Exec {
        /// Keep stdin open and send it to the command.
        #[arg(short, long)]
        interactive: bool,
        /// Give the command a terminal (this one, in raw mode).
        #[arg(short, long)]
        tty: bool,
        /// The task.
        task: String,
        /// The command and its arguments (after `--`).
        #[arg(required = true, trailing_var_arg = true, allow_hyphen_values = true)]
        command: Vec<String>,
    },
}

/// Network commands.
#[derive(Debug, Subcommand)]
enum NetworkCmd {
    /// Create an overlay network.
    Create {
        /// Name (a DNS label).
        name: String,
        /// Driver (only overlay).
        #[arg(short, long, default_value = "overlay")]
        driver: String,
        /// Subnet in CIDR notation; default: the next free one from the cluster's address pools.
        #[arg(long)]
        subnet: Option<String>,
        /// Gateway address in the subnet; default: its first address.
        #[arg(long)]
        gateway: Option<String>,
        /// Let standalone containers attach (kept for compose files; services always can).
        #[arg(long)]
        attachable: bool,
        /// No traffic leaves the network (no egress).
        #[arg(long)]
        internal: bool,
        /// The cluster's ingress network, over which every node forwards ports published in
        /// ingress mode (there is one; `cluster init` makes it).
        #[arg(long)]
        ingress: bool,
        /// Driver options (KEY=VALUE; known: mtu).
        #[arg(short, long = "opt")]
        opts: Vec<String>,
        /// Labels (KEY=VALUE).
        #[arg(short, long = "label")]
        labels: Vec<String>,
    },
    /// List networks.
    Ls(ListArgs),
    /// Show networks in detail.
    Inspect(InspectArgs),
    /// Remove networks (refused while a service uses one).
    Rm {
        #[arg(required = true)]
        names: Vec<String>,
    },
}

/// Commands shared by secrets and configs.
#[derive(Debug, Subcommand)]
enum DataCmd {
    /// Create from a file, or from standard input with "-".
    Create {
        /// Name (a DNS label).
        name: String,
        /// File with the data, or "-" for standard input.
        file: String,
        /// Labels (KEY=VALUE).
        #[arg(short, long = "label")]
        labels: Vec<String>,
    },
    /// List.
    Ls {
        #[arg(long, default_value = "table")]
        format: Format,
    },
    /// Show in detail (secrets without their data).
    Inspect {
        #[arg(long, default_value = "json")]
        format: Format,
        #[arg(required = true)]
        names: Vec<String>,
    },
    /// Remove (refused while a service uses it).
    Rm {
        #[arg(required = true)]
        names: Vec<String>,
    },
}

/// What every `ls` takes.
#[derive(Debug, Args)]
struct ListArgs {
    /// Output format: table or json.
    #[arg(long, default_value = "table")]
    format: Format,
    /// Only ids.
    #[arg(short, long)]
    quiet: bool,
}

/// What every `inspect` takes.
#[derive(Debug, Args)]
struct InspectArgs {
    /// Output format: json (or table where there is one).
    #[arg(long, default_value = "json")]
    format: Format,
    /// Names, ids or unique id prefixes.
    #[arg(required = true)]
    names: Vec<String>,
}

#[derive(Debug, Args)]
struct FormatArg {
    /// Output format: table or json.
    #[arg(long, default_value = "table")]
    format: Format,
}

#[derive(Debug, Subcommand)]
enum ClusterCmd {
    /// Make the local daemon the first manager of a new cluster.
    Init {
        /// Address other nodes reach this one at (default: the daemon's).
        #[arg(long)]
        advertise_addr: Option<String>,
        /// Address pool overlay subnets are taken from (CIDR; repeat for more; default 10.0.0.0/8).
        #[arg(long = "default-addr-pool")]
        default_addr_pool: Vec<String>,
        /// Prefix length of each subnet taken from the pools (default 24).
        #[arg(long = "default-addr-pool-mask-length")]
        default_addr_pool_mask_length: Option<u32>,
        /// UDP port of VXLAN traffic between hosts (default 4789).
        #[arg(long = "data-path-port")]
        data_path_port: Option<u16>,
        #[command(flatten)]
        settings: SettingsFlags,
    },
    /// Join the local daemon to a cluster through one of its managers.
    Join {
        /// Join token (from `shoal cluster join-token`).
        #[arg(long)]
        token: String,
        /// Address other nodes reach this one at (default: the daemon's).
        #[arg(long)]
        advertise_addr: Option<String>,
        /// HOST:PORT of a manager.
        addr: String,
    },
    /// Print the command to join a node as worker or manager.
    JoinToken {
        /// Print the token alone.
        #[arg(short, long)]
        quiet: bool,
        /// Replace the token (the old one stops working).
        #[arg(long)]
        rotate: bool,
        /// worker or manager.
        role: String,
    },
    /// Leave the cluster (a manager needs --force, or a demotion first).
    Leave {
        /// Leave even as a manager.
        #[arg(short, long)]
        force: bool,
    },
    /// Show the cluster object and its settings.
    Inspect(FormatArg),
    /// Issue a client certificate for remote CLI access (--host MANAGER:PORT --tls-dir DIR).
    /// The key is made here and never leaves this machine.
    AdminCert {
        /// Who the certificate is for (a-z, 0-9, '-').
        #[arg(long)]
        name: String,
        /// Directory to write ca.crt, admin.crt and admin.key (mode 0600) to.
        #[arg(long)]
        out: std::path::PathBuf,
    },
    /// Change cluster settings.
    Update(SettingsFlags),
}

#[derive(Debug, Args, Default)]
struct SettingsFlags {
    /// Node heartbeat period (e.g. 1s).
    #[arg(long)]
    heartbeat_period: Option<String>,
    /// Missed heartbeats before a node is down.
    #[arg(long)]
    heartbeat_grace: Option<u32>,
    /// Raft election timeout (takes effect as managers restart).
    #[arg(long)]
    election_timeout: Option<String>,
    /// Raft heartbeat between managers (takes effect as managers restart).
    #[arg(long)]
    raft_heartbeat: Option<String>,
    /// Log entries between raft snapshots (takes effect as managers restart).
    #[arg(long)]
    snapshot_interval: Option<u64>,
    /// Log entries kept behind a snapshot (takes effect as managers restart).
    #[arg(long)]
    log_entries_kept: Option<u64>,
    /// Terminated tasks kept per slot.
    #[arg(long)]
    task_history_limit: Option<u32>,
    /// Validity of node certificates (e.g. 90d, 10m); nodes renew in the second half.
    #[arg(long)]
    cert_expiry: Option<String>,
}

#[derive(Debug, Subcommand)]
enum NodeCmd {
    /// List nodes.
    Ls(ListArgs),
    /// Show nodes in detail ("self" names the local node).
    Inspect(InspectArgs),
    /// Change a node's availability, labels or role.
    Update {
        /// active, pause or drain.
        #[arg(long)]
        availability: Option<String>,
        /// Add or replace a label (KEY=VALUE).
        #[arg(long)]
        label_add: Vec<String>,
        /// Remove a label.
        #[arg(long)]
        label_rm: Vec<String>,
        /// manager or worker.
        #[arg(long)]
        role: Option<String>,
        node: String,
    },
    /// Make nodes managers.
    Promote {
        #[arg(required = true)]
        nodes: Vec<String>,
    },
    /// Make managers workers.
    Demote {
        #[arg(required = true)]
        nodes: Vec<String>,
    },
    /// Remove nodes from the cluster.
    Rm {
        /// Remove even if the node is not down.
        #[arg(short, long)]
        force: bool,
        #[arg(required = true)]
        nodes: Vec<String>,
    },
}

#[derive(Debug, Subcommand)]
enum ServiceCmd {
    /// Create a service.
    Create(Box<CreateArgs>),
    /// Update a service.
    Update(Box<UpdateArgs>),
    /// List services.
    Ls {
        #[arg(long, default_value = "table")]
        format: Format,
        #[arg(short, long)]
        quiet: bool,
    },
    /// Show services in detail.
    Inspect {
        #[arg(long, default_value = "json")]
        format: Format,
        #[arg(required = true)]
        services: Vec<String>,
    },
    /// List the tasks of a service.
    Ps {
        #[arg(long, default_value = "table")]
        format: Format,
        #[arg(short, long)]
        quiet: bool,
        service: String,
    },
    /// Show what the service's containers printed.
    Logs {
        /// Keep following new output.
        #[arg(long, short = 'f')]
        follow: bool,
        /// Only the last N lines of each task (0: all).
        #[arg(long, short = 'n', default_value_t = 0)]
        tail: u32,
        /// Omit the task and node prefix.
        #[arg(long)]
        no_task_ids: bool,
        service: String,
    },
    /// Remove services.
    Rm {
        #[arg(required = true)]
        services: Vec<String>,
    },
    /// Scale replicated services: NAME=REPLICAS ...
    Scale {
        /// Return without waiting for the services to converge.
        #[arg(long, short = 'd', env = "SHOAL_DETACH")]
        detach: bool,
        #[arg(required = true)]
        pairs: Vec<String>,
    },
    /// Go back to a service's previous spec, or to a revision of `service history` (a rolling
    /// update with the rollback settings).
    Rollback {
        /// Return without waiting for the rollback to complete.
        #[arg(long, short = 'd', env = "SHOAL_DETACH")]
        detach: bool,
        /// The revision to go back to (default: the previous spec).
        #[arg(long)]
        to: Option<u64>,
        service: String,
    },
    /// The service's last 10 specs, numbered; `rollback --to N` goes back to one.
    History {
        #[arg(long, default_value = "table")]
        format: Format,
        service: String,
    },
}

#[derive(Debug, Args)]
struct CreateArgs {
    /// Service name (default: derived from the image).
    #[arg(long)]
    name: Option<String>,
    /// replicated, global, replicated-job or global-job.
    #[arg(long, default_value = "replicated")]
    mode: String,
    /// Environment variable (KEY=VALUE).
    #[arg(long, short = 'e')]
    env: Vec<String>,
    /// Service label (KEY=VALUE).
    #[arg(long, short = 'l')]
    label: Vec<String>,
    /// Container label (KEY=VALUE).
    #[arg(long)]
    container_label: Vec<String>,
    /// Placement constraint (e.g. node.role==worker).
    #[arg(long)]
    constraint: Vec<String>,
    /// Placement preference (spread=node.labels.<key>).
    #[arg(long)]
    placement_pref: Vec<String>,
    /// Mount (type=bind|volume|tmpfs,source=..,target=..[,readonly]).
    #[arg(long)]
    mount: Vec<String>,
    /// Publish a port (PUBLISHED:TARGET[/PROTO], or published=..,target=..,protocol=tcp|udp,
    /// mode=ingress|host,traffic=cluster|local). Ingress (the default): every node accepts on
    /// it; traffic=local keeps the client address, sending only to the receiving node's tasks.
    #[arg(long, short = 'p')]
    publish: Vec<String>,
    /// Attach to a network.
    #[arg(long)]
    network: Vec<String>,
    /// Give the service a secret (NAME or source=..,target=..).
    #[arg(long)]
    secret: Vec<String>,
    /// Give the service a config (NAME or source=..,target=..).
    #[arg(long)]
    config: Vec<String>,
    /// Additional group for the container's user.
    #[arg(long)]
    group: Vec<String>,
    /// Return once the service is created, without waiting for it to converge.
    #[arg(long, short = 'd', env = "SHOAL_DETACH")]
    detach: bool,
    /// Print only the service id.
    #[arg(long, short = 'q')]
    quiet: bool,
    #[command(flatten)]
    common: CommonFlags,
    /// Image to run.
    image: String,
    /// Command and arguments (replace the image's CMD).
    #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
    args: Vec<String>,
}

#[derive(Debug, Args)]
struct UpdateArgs {
    /// New image.
    #[arg(long)]
    image: Option<String>,
    /// New command arguments (space separated, replaces the old ones).
    #[arg(long)]
    args: Option<String>,
    #[arg(long)]
    env_add: Vec<String>,
    #[arg(long)]
    env_rm: Vec<String>,
    #[arg(long)]
    label_add: Vec<String>,
    #[arg(long)]
    label_rm: Vec<String>,
    #[arg(long)]
    container_label_add: Vec<String>,
    #[arg(long)]
    container_label_rm: Vec<String>,
    #[arg(long)]
    constraint_add: Vec<String>,
    #[arg(long)]
    constraint_rm: Vec<String>,
    #[arg(long)]
    placement_pref_add: Vec<String>,
    #[arg(long)]
    placement_pref_rm: Vec<String>,
    #[arg(long)]
    mount_add: Vec<String>,
    /// Remove the mount at this target path.
    #[arg(long)]
    mount_rm: Vec<String>,
    #[arg(long)]
    publish_add: Vec<String>,
    /// Remove the port published at this port.
    #[arg(long)]
    publish_rm: Vec<String>,
    #[arg(long)]
    network_add: Vec<String>,
    #[arg(long)]
    network_rm: Vec<String>,
    #[arg(long)]
    secret_add: Vec<String>,
    #[arg(long)]
    secret_rm: Vec<String>,
    #[arg(long)]
    config_add: Vec<String>,
    #[arg(long)]
    config_rm: Vec<String>,
    #[arg(long)]
    group_add: Vec<String>,
    #[arg(long)]
    group_rm: Vec<String>,
    /// Replace the tasks even if nothing else changed.
    #[arg(long)]
    force: bool,
    /// Go back to the previous spec.
    #[arg(long)]
    rollback: bool,
    /// Print what the update would do (tasks replaced, on which nodes, in how many batches)
    /// and change nothing.
    #[arg(long)]
    dry_run: bool,
    /// Output of --dry-run.
    #[arg(long, default_value = "table")]
    format: Format,
    /// Return without waiting for the update to converge.
    #[arg(long, short = 'd', env = "SHOAL_DETACH")]
    detach: bool,
    /// Print only the service id.
    #[arg(long, short = 'q')]
    quiet: bool,
    #[command(flatten)]
    common: CommonFlags,
    /// Service name or id.
    service: String,
}

type Client = ControlClient<Channel>;

#[tokio::main(flavor = "current_thread")]
async fn main() -> std::process::ExitCode {
    // A bug must still end in one line, not a backtrace.
    std::panic::set_hook(Box::new(|info| {
        errln!("Error: internal error in shoal (please report it): {info}");
    }));
    let cli = Cli::parse();
    if let Cmd::Completion { shell } = cli.cmd {
        let mut out = Vec::new();
        clap_complete::generate(shell, &mut <Cli as clap::CommandFactory>::command(), "shoal", &mut out);
        out!("{}", String::from_utf8_lossy(&out));
        return std::process::ExitCode::SUCCESS;
    }
    match run(cli).await {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(Failure { line, code }) => {
            if !line.is_empty() {
                errln!("Error: {line}");
            }
            std::process::ExitCode::from(code)
        }
    }
}

/// Exit status of a write whose outcome is unknown: it may still take effect.
const EXIT_UNKNOWN_OUTCOME: u8 = 3;

/// What the CLI prints and exits with when a command fails.
struct Failure {
    line: String,
    code: u8,
}

impl From<String> for Failure {
    fn from(line: String) -> Self {
        Failure { line, code: 1 }
    }
}

/// Turns a gRPC status into the one line a user reads, and the exit status: 1, or
/// [`EXIT_UNKNOWN_OUTCOME`] when the daemon says a write may or may not have taken effect.
fn status_failure(host: &str, s: tonic::Status) -> Failure {
    let outcome = s
        .metadata()
        .get(shoal_api::outcome::WRITE_OUTCOME_KEY)
        .and_then(|v| v.to_str().ok())
        .and_then(shoal_api::outcome::WriteOutcome::parse);
    let code = if outcome == Some(shoal_api::outcome::WriteOutcome::Unknown) { EXIT_UNKNOWN_OUTCOME } else { 1 };
    let msg = s.message();
    // A status made on this side of the connection carries the transport error as its source;
    // the daemon's own answers carry none.
    let transport = std::error::Error::source(&s).is_some_and(|e| e.is::<tonic::transport::Error>());
    let line = if s.code() == tonic::Code::Unavailable && transport {
        format!("cannot reach shoald at {host}: {msg}")
    } else if msg.is_empty() {
        format!("{:?}", s.code())
    } else {
        msg.to_string()
    };
    Failure { line, code }
}

async fn run(cli: Cli) -> Result<(), Failure> {
    // Needs no daemon: the files only.
    if let Cmd::Stack(stack::StackCmd::Config { files }) = &cli.cmd {
        return stack::config(files).map_err(Failure::from);
    }
    let host = Host::parse(&cli.host).map_err(|e| e.to_string())?;
    let channel = connect_with(&host, cli.tls_dir.as_deref()).await.map_err(|e| e.to_string())?;
    let mut c = ControlClient::new(channel)
        .max_decoding_message_size(MAX_MESSAGE_BYTES)
        .max_encoding_message_size(MAX_MESSAGE_BYTES);
    let hs = cli.host.clone();
    let err = move |s: tonic::Status| status_failure(&hs, s);
    match cli.cmd {
        Cmd::Info(f) => info(&mut c, f.format).await.map_err(err),
        Cmd::Cluster(cmd) => cluster(&mut c, cmd).await.map_err(|e| e.into_line(&err)),
        Cmd::Node(cmd) => node(&mut c, cmd).await.map_err(|e| e.into_line(&err)),
        Cmd::Service(cmd) => service(&mut c, cmd).await.map_err(|e| e.into_line(&err)),
        Cmd::Network(cmd) => network(&mut c, cmd).await.map_err(|e| e.into_line(&err)),
        Cmd::Task(TaskCmd::Exec { interactive, tty, task, command }) => {
            match exec::exec(&mut c, task, command, interactive, tty).await.map_err(|e| e.into_line(&err))? {
                0 => Ok(()),
                // The command's own failure: its code, and nothing more to say.
                code => Err(Failure { line: String::new(), code: u8::try_from(code).unwrap_or(255) }),
            }
        }
        Cmd::Secret(cmd) => data(&mut c, cmd, true).await.map_err(|e| e.into_line(&err)),
        Cmd::Config(cmd) => data(&mut c, cmd, false).await.map_err(|e| e.into_line(&err)),
        Cmd::Stack(cmd) => stack::run(&mut c, cmd).await.map_err(|e| e.into_line(&err)),
        Cmd::Volume(cmd) => volume::run(&mut c, cmd).await.map_err(|e| e.into_line(&err)),
        Cmd::Completion { .. } => Ok(()),
    }
}

/// A failure: from the daemon or from the command line.
enum Fail {
    Rpc(tonic::Status),
    Usage(String),
}

impl Fail {
    fn into_line(self, f: &dyn Fn(tonic::Status) -> Failure) -> Failure {
        match self {
            Fail::Rpc(s) => f(s),
            Fail::Usage(m) => m.into(),
        }
    }
}

impl From<tonic::Status> for Fail {
    fn from(s: tonic::Status) -> Self {
        Fail::Rpc(s)
    }
}

impl From<String> for Fail {
    fn from(s: String) -> Self {
        Fail::Usage(s)
    }
}

async fn info(c: &mut Client, format: Format) -> Result<(), tonic::Status> {
    let i = c.info(InfoRequest {}).await?.into_inner();
    match format {
        Format::Json => print_json(&serde_json::to_value(&i).unwrap_or_default()),
        Format::Table => {
            outln!("Node ID:     {}", i.node_id);
            outln!("Hostname:    {}", i.hostname);
            outln!("State:       {}", i.state);
            outln!("Cluster ID:  {}", i.cluster_id);
            outln!("Advertise:   {}", i.advertise_addr);
            outln!("Managers:    {}", i.manager_addrs.join(", "));
            outln!("Certificate: {}", i.certificate);
            if !i.workers.is_empty() {
                let list: Vec<String> = i.workers.iter().map(|w| format!("{} ({})", w.name, w.state)).collect();
                outln!("Workers:     {}", list.join(", "));
            }
            if let Some(a) = i.agent {
                let list = |v: &[String]| if v.is_empty() { "none".to_string() } else { v.join(", ") };
                outln!(
                    "Agent:       {}, {} tasks, secrets: {}, configs: {}",
                    if a.connected { "following the leader" } else { "not connected" },
                    a.tasks,
                    list(&a.secrets),
                    list(&a.configs)
                );
            }
            if let Some(r) = i.raft {
                outln!("Raft:        id {} term {} leader {} ({})", r.raft_id, r.term, r.leader_raft_id, r.leader_addr);
                outln!("             voters {:?} learners {:?}", r.voters, r.learners);
                outln!(
                    "             last log {} applied {} snapshot {}",
                    r.last_log_index,
                    r.last_applied,
                    r.snapshot_index
                );
            }
        }
    }
    Ok(())
}

fn settings_from(f: &SettingsFlags, base: ClusterSettings) -> Result<ClusterSettings, String> {
    let mut s = base;
    let ms = |v: &Option<String>| v.as_deref().map(shoal_api::units::parse_duration_ms).transpose();
    if let Some(v) = ms(&f.heartbeat_period)? {
        s.heartbeat_period_ms = v.max(0) as u64;
    }
    if let Some(v) = f.heartbeat_grace {
        s.heartbeat_grace_periods = v;
    }
    if let Some(v) = ms(&f.election_timeout)? {
        s.election_timeout_ms = v.max(0) as u64;
    }
    if let Some(v) = ms(&f.raft_heartbeat)? {
        s.raft_heartbeat_ms = v.max(0) as u64;
    }
    if let Some(v) = f.snapshot_interval {
        s.snapshot_interval_entries = v;
    }
    if let Some(v) = f.log_entries_kept {
        s.log_entries_kept = v;
    }
    if let Some(v) = f.task_history_limit {
        s.task_history_limit = v;
    }
    if let Some(v) = ms(&f.cert_expiry)? {
        s.node_cert_validity_s = (v.max(0) / 1000) as u64;
    }
    Ok(s)
}

fn parse_role(s: &str) -> Result<NodeRole, String> {
    names::parse_node_role(s).ok_or_else(|| format!("role {s:?} must be worker or manager"))
}

async fn cluster(c: &mut Client, cmd: ClusterCmd) -> Result<(), Fail> {
    match cmd {
        ClusterCmd::Init {
            advertise_addr,
            default_addr_pool,
            default_addr_pool_mask_length,
            data_path_port,
            settings,
        } => {
            let s = settings_from(&settings, ClusterSettings::default())?;
            let network_defaults = NetworkDefaults {
                default_addr_pool,
                default_addr_pool_mask_length: default_addr_pool_mask_length.unwrap_or(0),
                data_path_port: data_path_port.map_or(0, u32::from),
            };
            let r = c
                .init_cluster(InitClusterRequest {
                    advertise_addr: advertise_addr.unwrap_or_default(),
                    settings: Some(s),
                    network_defaults: Some(network_defaults),
                })
                .await?
                .into_inner();
            outln!("Cluster initialized: current node ({}) is now a manager.", r.node_id);
            outln!();
            let t = c
                .get_join_token(GetJoinTokenRequest { role: NodeRole::Worker as i32, rotate: false })
                .await?
                .into_inner();
            outln!("To add a worker to this cluster, run the following command:");
            outln!();
            outln!(
                "    shoal cluster join --token {} {}",
                t.token,
                t.manager_addrs.first().cloned().unwrap_or_default()
            );
            outln!();
            outln!(
                "To add a manager to this cluster, run 'shoal cluster join-token manager' and follow the instructions."
            );
        }
        ClusterCmd::Join { token, advertise_addr, addr } => {
            errln!("Joining through {addr} ...");
            let r = c
                .join_cluster(JoinClusterRequest {
                    token,
                    remote_addr: addr,
                    advertise_addr: advertise_addr.unwrap_or_default(),
                })
                .await?
                .into_inner();
            outln!("This node joined the cluster as a {}.", names::node_role(r.role()));
        }
        ClusterCmd::JoinToken { quiet, rotate, role } => {
            let role = parse_role(&role)?;
            let t = c.get_join_token(GetJoinTokenRequest { role: role as i32, rotate }).await?.into_inner();
            if quiet {
                outln!("{}", t.token);
            } else {
                if rotate {
                    outln!("Successfully rotated {} join token.", names::node_role(role));
                    outln!();
                }
                outln!("To add a {} to this cluster, run the following command:", names::node_role(role));
                outln!();
                outln!(
                    "    shoal cluster join --token {} {}",
                    t.token,
                    t.manager_addrs.first().cloned().unwrap_or_default()
                );
            }
        }
        ClusterCmd::AdminCert { name, out } => {
            let key = shoal_client::pki::NodeKey::generate().map_err(|e| e.to_string())?;
            let csr_pem = key.csr_pem(&name).map_err(|e| e.to_string())?;
            let r = c.issue_admin_certificate(IssueAdminCertificateRequest { csr_pem, name }).await?.into_inner();
            let write = |f: &str, data: &str, private: bool| {
                let path = out.join(f);
                let r = if private {
                    shoal_client::pki::write_private_file(&path, data.as_bytes())
                } else {
                    shoal_client::pki::write_public_file(&path, data.as_bytes())
                };
                r.map_err(|e| format!("cannot write {}: {e}", path.display()))
            };
            write(shoal_client::ADMIN_KEY_FILE, &key.key_pem(), true)?;
            write(shoal_client::ADMIN_CERT_FILE, &r.cert_pem, false)?;
            write(shoal_client::ADMIN_CA_FILE, &r.ca_pem, false)?;
            let expires = shoal_client::pki::identity_from_pem(&r.cert_pem)
                .map(|i| shoal_client::pki::rfc3339(i.not_after))
                .unwrap_or_default();
            outln!("Admin certificate written to {} (expires {expires}).", out.display());
            outln!("Use it with: shoal --host MANAGER:PORT --tls-dir {} ...", out.display());
        }
        ClusterCmd::Leave { force } => {
            c.leave_cluster(LeaveClusterRequest { force }).await?;
            outln!("Node left the cluster.");
        }
        ClusterCmd::Inspect(f) => {
            let cl = c.get_cluster(GetClusterRequest {}).await?.into_inner().cluster.unwrap_or_default();
            match f.format {
                Format::Json => print_json(&serde_json::to_value(&cl).unwrap_or_default()),
                Format::Table => output::cluster_pretty(&cl),
            }
        }
        ClusterCmd::Update(flags) => {
            let cl = c.get_cluster(GetClusterRequest {}).await?.into_inner().cluster.unwrap_or_default();
            let version = cl.meta.as_ref().map(|m| m.version).unwrap_or(0);
            let s = settings_from(&flags, cl.settings.unwrap_or_default())?;
            c.update_cluster(UpdateClusterRequest { version, settings: Some(s) }).await?;
            outln!("Cluster updated.");
            if flags.election_timeout.is_some()
                || flags.raft_heartbeat.is_some()
                || flags.snapshot_interval.is_some()
                || flags.log_entries_kept.is_some()
            {
                outln!("Raft settings take effect on each manager when it restarts.");
            }
        }
    }
    Ok(())
}

async fn update_node_spec(
    c: &mut Client,
    node: &str,
    f: impl FnOnce(&mut NodeSpec) -> Result<(), String>,
) -> Result<v1::Node, Fail> {
    let n = c.get_node(GetNodeRequest { node: node.to_string() }).await?.into_inner().node.unwrap_or_default();
    let mut spec = n.spec.clone().unwrap_or_default();
    f(&mut spec)?;
    let version = n.meta.as_ref().map(|m| m.version).unwrap_or(0);
    let id = n.meta.as_ref().map(|m| m.id.clone()).unwrap_or_default();
    let r = c.update_node(UpdateNodeRequest { node: id, version, spec: Some(spec) }).await?.into_inner();
    Ok(r.node.unwrap_or_default())
}

/// The service `q` names (id, id prefix or name).
async fn service_named(c: &mut Client, q: &str) -> Result<v1::Service, Fail> {
    Ok(c.get_service(GetServiceRequest { service: q.to_string() }).await?.into_inner().service.unwrap_or_default())
}

/// Every node's hostname, by node id.
async fn hostnames(c: &mut Client) -> Result<std::collections::BTreeMap<String, String>, Fail> {
    let nodes = c.list_nodes(ListNodesRequest {}).await?.into_inner().nodes;
    Ok(nodes
        .iter()
        .filter_map(|v| v.node.as_ref())
        .filter_map(|n| Some((n.meta.as_ref()?.id.clone(), hostname_of(n))))
        .collect())
}

/// Prints list rows: their ids (`-q`), the rows as JSON, or a table of `headers` and `cells`.
fn print_rows(
    rows: &[serde_json::Value],
    format: Format,
    quiet: bool,
    headers: &[&str],
    cells: impl Fn(&serde_json::Value) -> Vec<String>,
) {
    if quiet {
        rows.iter().for_each(|r| outln!("{}", r["id"].as_str().unwrap_or("")));
        return;
    }
    match format {
        Format::Json => print_json(&serde_json::Value::Array(rows.to_vec())),
        Format::Table => print_table(headers, rows.iter().map(cells).collect()),
    }
}

/// A row's field as text, `""` without it.
fn field(r: &serde_json::Value, key: &str) -> String {
    r[key].as_str().unwrap_or("").to_string()
}

/// Prints `service ls` rows (also `stack services`).
fn print_services(rows: &[serde_json::Value], format: Format, quiet: bool) {
    print_rows(rows, format, quiet, &["ID", "NAME", "MODE", "REPLICAS", "IMAGE", "PORTS"], |r| {
        vec![
            field(r, "id").chars().take(12).collect(),
            field(r, "name"),
            field(r, "mode"),
            // As Docker: the update state beside the counts while it matters.
            match (r["mode"].as_str().unwrap_or(""), r["update_state"].as_str().unwrap_or("")) {
                ("replicated-job" | "global-job", _) => {
                    format!("{}/{} ({} completed)", r["running"], r["replicas"], r["completed"])
                }
                (_, "" | "completed") => format!("{}/{}", r["running"], r["replicas"]),
                (_, state) => format!("{}/{} ({state})", r["running"], r["replicas"]),
            },
            field(r, "image"),
            field(r, "ports"),
        ]
    });
}

/// Prints `service ps` rows (also `stack ps`).
fn print_tasks(rows: &[serde_json::Value], format: Format, quiet: bool) {
    print_rows(rows, format, quiet, &["ID", "NAME", "NODE", "DESIRED STATE", "CURRENT STATE", "ERROR"], |r| {
        vec![
            field(r, "id").chars().take(12).collect(),
            field(r, "name"),
            field(r, "node"),
            field(r, "desired_state"),
            match r["health"].as_str().unwrap_or("") {
                "" => field(r, "state"),
                h => format!("{} ({h})", field(r, "state")),
            },
            field(r, "error"),
        ]
    });
}

/// Prints what `service update --dry-run` found.
async fn print_update_plan(c: &mut Client, plan: &v1::UpdatePlan, format: Format) -> Result<(), Fail> {
    if matches!(format, Format::Json) {
        print_json(&serde_json::to_value(plan).unwrap_or_default());
        return Ok(());
    }
    let hosts = hostnames(c).await?;
    let host_of = |id: &str| hosts.get(id).cloned().unwrap_or_else(|| "(no node yet)".into());
    let n = plan.replaced.len();
    if n == 0 {
        outln!("no task would be replaced ({} unchanged)", plan.unchanged);
    } else {
        let per =
            if plan.parallelism == 0 { "all at once".to_string() } else { format!("{} at a time", plan.parallelism) };
        outln!(
            "{n} task(s) would be replaced in {} batch(es), {per}, {}; {} unchanged",
            plan.batches,
            plan.order,
            plan.unchanged
        );
    }
    if plan.added > 0 || plan.removed > 0 {
        outln!("{} task(s) would be added, {} removed", plan.added, plan.removed);
    }
    print_table(&["TASK", "NODE"], plan.replaced.iter().map(|r| vec![r.name.clone(), host_of(&r.node_id)]).collect());
    Ok(())
}

fn hostname_of(n: &v1::Node) -> String {
    n.description.as_ref().map(|d| d.hostname.clone()).unwrap_or_default()
}

/// Size limit checked before sending (the manager checks it too).
const MAX_DATA_BYTES: u64 = 500 * 1024;

fn read_data(file: &str) -> Result<Vec<u8>, String> {
    use std::io::Read;
    let mut data = Vec::new();
    if file == "-" {
        std::io::stdin()
            .take(MAX_DATA_BYTES + 1)
            .read_to_end(&mut data)
            .map_err(|e| format!("cannot read standard input: {e}"))?;
    } else {
        std::fs::File::open(file)
            .and_then(|f| f.take(MAX_DATA_BYTES + 1).read_to_end(&mut data))
            .map_err(|e| format!("cannot read {file}: {e}"))?;
    }
    if data.len() as u64 > MAX_DATA_BYTES {
        return Err(format!("{file} is larger than the {MAX_DATA_BYTES}-byte limit"));
    }
    Ok(data)
}

fn rfc3339_ms(ms: i64) -> String {
    let t = std::time::UNIX_EPOCH + std::time::Duration::from_millis(ms.max(0) as u64);
    shoal_client::pki::rfc3339(t)
}

fn data_row(meta: &Option<Meta>, ann: Option<&Annotations>, size: Option<usize>) -> serde_json::Value {
    let m = meta.clone().unwrap_or_default();
    let mut row = serde_json::json!({
        "id": m.id,
        "name": ann.map(|a| a.name.clone()).unwrap_or_default(),
        "created": rfc3339_ms(m.created_at_ms),
        "updated": rfc3339_ms(m.updated_at_ms),
    });
    if let Some(n) = size {
        row["size"] = serde_json::json!(n);
    }
    row
}

/// The ids of the networks named (by name, id or id prefix), as a service's spec holds them.
async fn network_ids(c: &mut Client, names: &[String]) -> Result<Vec<String>, Fail> {
    let mut ids = Vec::new();
    for n in names {
        let net = c.get_network(GetNetworkRequest { network: n.clone() }).await?.into_inner();
        ids.push(net.meta.map(|m| m.id).unwrap_or_default());
    }
    Ok(ids)
}

async fn network(c: &mut Client, cmd: NetworkCmd) -> Result<(), Fail> {
    match cmd {
        NetworkCmd::Create { name, driver, subnet, gateway, attachable, internal, ingress, opts, labels } => {
            let spec = NetworkSpec {
                annotations: Some(Annotations { name, labels: specs::labels(&labels)? }),
                driver,
                internal,
                attachable,
                ingress,
                subnet: subnet.unwrap_or_default(),
                gateway: gateway.unwrap_or_default(),
                options: specs::labels(&opts)?,
            };
            let n = c.create_network(CreateNetworkRequest { spec: Some(spec) }).await?.into_inner();
            outln!("{}", n.meta.map(|m| m.id).unwrap_or_default());
        }
        NetworkCmd::Ls(ListArgs { format, quiet }) => {
            let mut list = c.list_networks(ListNetworksRequest {}).await?.into_inner().networks;
            list.sort_by(|a, b| output::network_name(a).cmp(output::network_name(b)));
            if quiet {
                for n in &list {
                    outln!("{}", n.meta.as_ref().map(|m| m.id.as_str()).unwrap_or(""));
                }
                return Ok(());
            }
            match format {
                Format::Json => print_json(&serde_json::to_value(&list).unwrap_or_default()),
                Format::Table => print_table(
                    &["ID", "NAME", "DRIVER", "SUBNET", "GATEWAY", "VNI", "SCOPE"],
                    list.iter().map(output::network_row).collect(),
                ),
            }
        }
        NetworkCmd::Inspect(InspectArgs { format, names }) => {
            let mut out = Vec::new();
            for n in names {
                let v = c.get_network(GetNetworkRequest { network: n }).await?.into_inner();
                out.push(serde_json::to_value(v).unwrap_or_default());
            }
            match format {
                Format::Json | Format::Table => print_json(&serde_json::Value::Array(out)),
            }
        }
        NetworkCmd::Rm { names } => {
            for n in names {
                c.remove_network(RemoveNetworkRequest { network: n.clone() }).await?;
                outln!("{n}");
            }
        }
    }
    Ok(())
}

async fn data(c: &mut Client, cmd: DataCmd, secret: bool) -> Result<(), Fail> {
    match cmd {
        DataCmd::Create { name, file, labels } => {
            let data = read_data(&file)?;
            let labels = specs::labels(&labels)?;
            let annotations = Some(Annotations { name: name.clone(), labels });
            let id = if secret {
                let spec = SecretSpec { annotations, data };
                c.create_secret(CreateSecretRequest { spec: Some(spec) }).await?.into_inner().meta
            } else {
                let spec = ConfigSpec { annotations, data };
                c.create_config(CreateConfigRequest { spec: Some(spec) }).await?.into_inner().meta
            };
            outln!("{}", id.map(|m| m.id).unwrap_or_default());
        }
        DataCmd::Ls { format } => {
            let rows: Vec<serde_json::Value> = if secret {
                let list = c.list_secrets(ListSecretsRequest {}).await?.into_inner().secrets;
                list.iter()
                    .map(|s| data_row(&s.meta, s.spec.as_ref().and_then(|s| s.annotations.as_ref()), None))
                    .collect()
            } else {
                let list = c.list_configs(ListConfigsRequest {}).await?.into_inner().configs;
                list.iter()
                    .map(|x| {
                        let spec = x.spec.as_ref();
                        data_row(&x.meta, spec.and_then(|s| s.annotations.as_ref()), spec.map(|s| s.data.len()))
                    })
                    .collect()
            };
            match format {
                Format::Json => print_json(&serde_json::Value::Array(rows)),
                Format::Table => print_table(
                    &["ID", "NAME", "CREATED", "UPDATED"],
                    rows.iter()
                        .map(|r| {
                            ["id", "name", "created", "updated"]
                                .iter()
                                .map(|k| r[*k].as_str().unwrap_or("").to_string())
                                .collect()
                        })
                        .collect(),
                ),
            }
        }
        DataCmd::Inspect { format, names } => {
            let mut out = Vec::new();
            for n in names {
                let v = if secret {
                    serde_json::to_value(c.get_secret(GetSecretRequest { secret: n }).await?.into_inner())
                } else {
                    serde_json::to_value(c.get_config(GetConfigRequest { config: n }).await?.into_inner())
                };
                out.push(v.unwrap_or_default());
            }
            match format {
                Format::Json | Format::Table => print_json(&serde_json::Value::Array(out)),
            }
        }
        DataCmd::Rm { names } => {
            for n in names {
                if secret {
                    c.remove_secret(RemoveSecretRequest { secret: n.clone() }).await?;
                } else {
                    c.remove_config(RemoveConfigRequest { config: n.clone() }).await?;
                }
                outln!("{n}");
            }
        }
    }
    Ok(())
}

async fn node(c: &mut Client, cmd: NodeCmd) -> Result<(), Fail> {
    match cmd {
        NodeCmd::Ls(ListArgs { format, quiet }) => {
            let nodes = c.list_nodes(ListNodesRequest {}).await?.into_inner().nodes;
            if quiet {
                for v in &nodes {
                    outln!("{}", v.node.as_ref().and_then(|n| n.meta.as_ref()).map(|m| m.id.as_str()).unwrap_or(""));
                }
                return Ok(());
            }
            let self_id = c.info(InfoRequest {}).await.map(|r| r.into_inner().node_id).unwrap_or_default();
            let mut rows: Vec<serde_json::Value> = nodes.iter().map(output::node_row).collect();
            // As docker does: by hostname (then id, for equal names).
            let key = |r: &serde_json::Value| {
                (r["hostname"].as_str().unwrap_or("").to_string(), r["id"].as_str().unwrap_or("").to_string())
            };
            rows.sort_by_key(key);
            match format {
                Format::Json => print_json(&serde_json::Value::Array(rows)),
                Format::Table => print_table(
                    &["ID", "HOSTNAME", "STATUS", "AVAILABILITY", "MANAGER STATUS", "ADDR"],
                    rows.iter()
                        .map(|r| {
                            let id = r["id"].as_str().unwrap_or("").to_string();
                            let mark = if id == self_id { " *" } else { "" };
                            vec![
                                format!("{id}{mark}"),
                                r["hostname"].as_str().unwrap_or("").to_string(),
                                r["status"].as_str().unwrap_or("").to_string(),
                                r["availability"].as_str().unwrap_or("").to_string(),
                                r["manager_status"].as_str().unwrap_or("").to_string(),
                                r["addr"].as_str().unwrap_or("").to_string(),
                            ]
                        })
                        .collect(),
                ),
            }
        }
        NodeCmd::Inspect(InspectArgs { format, names: nodes }) => {
            let mut out = Vec::new();
            for q in nodes {
                let v = c.get_node(GetNodeRequest { node: q }).await?.into_inner();
                out.push(v);
            }
            match format {
                Format::Json => print_json(&serde_json::to_value(&out).unwrap_or_default()),
                Format::Table => out.iter().for_each(output::node_pretty),
            }
        }
        NodeCmd::Update { availability, label_add, label_rm, role, node } => {
            let avail = availability
                .map(|a| {
                    names::parse_availability(&a)
                        .ok_or_else(|| format!("availability {a:?} must be active, pause or drain"))
                })
                .transpose()?;
            let role = role.map(|r| parse_role(&r)).transpose()?;
            let adds = specs::labels(&label_add)?;
            let n = update_node_spec(c, &node, |s| {
                if let Some(a) = avail {
                    s.availability = a as i32;
                }
                if let Some(r) = role {
                    s.desired_role = r as i32;
                }
                let ann = s.annotations.get_or_insert_with(Default::default);
                ann.labels.extend(adds);
                for k in &label_rm {
                    if ann.labels.remove(k).is_none() {
                        return Err(format!("node has no label {k:?}"));
                    }
                }
                Ok(())
            })
            .await?;
            outln!("{}", n.meta.map(|m| m.id).unwrap_or_default());
        }
        NodeCmd::Promote { nodes } => {
            for q in nodes {
                let n = update_node_spec(c, &q, |s| {
                    s.desired_role = NodeRole::Manager as i32;
                    Ok(())
                })
                .await?;
                outln!("Node {} promoted to a manager in the cluster.", hostname_of(&n));
            }
        }
        NodeCmd::Demote { nodes } => {
            for q in nodes {
                let n = update_node_spec(c, &q, |s| {
                    s.desired_role = NodeRole::Worker as i32;
                    Ok(())
                })
                .await?;
                outln!("Manager {} demoted in the cluster.", hostname_of(&n));
            }
        }
        NodeCmd::Rm { force, nodes } => {
            for q in nodes {
                c.remove_node(RemoveNodeRequest { node: q.clone(), force }).await?;
                outln!("{q}");
            }
        }
    }
    Ok(())
}

fn service_name_from_image(image: &str) -> String {
    let last = image.rsplit('/').next().unwrap_or(image);
    let base = last.split([':', '@']).next().unwrap_or(last);
    let cleaned: String =
        base.chars().map(|ch| if ch.is_ascii_alphanumeric() || ch == '-' || ch == '_' { ch } else { '-' }).collect();
    // Docker appends a random suffix; the std hasher's per-process random keys are enough here.
    use std::hash::BuildHasher;
    let bits = std::collections::hash_map::RandomState::new().hash_one(std::time::SystemTime::now());
    let id = shoal_api::ids::id_from_bits(u128::from(bits) << 64 | u128::from(bits));
    let suffix = &id[..6];
    format!("{}-{suffix}", cleaned.trim_matches('-'))
}

async fn service(c: &mut Client, cmd: ServiceCmd) -> Result<(), Fail> {
    match cmd {
        ServiceCmd::Create(a) => {
            let name = a.name.clone().unwrap_or_else(|| service_name_from_image(&a.image));
            let mut spec = specs::base_spec(name, &a.mode, a.image.clone(), a.args.clone())?;
            specs::apply_common(&mut spec, &a.common)?;
            let lists = Lists {
                env: a.env.clone(),
                labels: a.label.clone(),
                container_labels: a.container_label.clone(),
                constraints: a.constraint.clone(),
                placement_prefs: a.placement_pref.clone(),
                mounts: a.mount.clone(),
                publish: a.publish.clone(),
                networks: a.network.clone(),
                secrets: a.secret.clone(),
                configs: a.config.clone(),
                groups: a.group.clone(),
            };
            specs::add_lists(&mut spec, &lists)?;
            let is_job =
                matches!(spec.mode, Some(service_spec::Mode::ReplicatedJob(_) | service_spec::Mode::GlobalJob(_)));
            let v = c.create_service(CreateServiceRequest { spec: Some(spec) }).await?.into_inner();
            let id = v.service.as_ref().and_then(|s| s.meta.as_ref()).map(|m| m.id.clone()).unwrap_or_default();
            outln!("{id}");
            if !a.detach && !a.quiet {
                if is_job {
                    progress::wait_job(c, &id).await?;
                } else {
                    progress::wait_converged(c, &id).await?;
                }
            }
        }
        ServiceCmd::Update(a) => {
            let cur = c.get_service(GetServiceRequest { service: a.service.clone() }).await?.into_inner();
            let svc = cur.service.unwrap_or_default();
            let version = svc.meta.as_ref().map(|m| m.version).unwrap_or(0);
            let mut spec = svc.spec.clone().unwrap_or_default();
            if !a.rollback {
                specs::apply_common(&mut spec, &a.common)?;
                let rm = Lists {
                    env: a.env_rm.clone(),
                    labels: a.label_rm.clone(),
                    container_labels: a.container_label_rm.clone(),
                    constraints: a.constraint_rm.clone(),
                    placement_prefs: a.placement_pref_rm.clone(),
                    mounts: a.mount_rm.clone(),
                    publish: a.publish_rm.clone(),
                    networks: network_ids(c, &a.network_rm).await?,
                    secrets: a.secret_rm.clone(),
                    configs: a.config_rm.clone(),
                    groups: a.group_rm.clone(),
                };
                specs::remove_lists(&mut spec, &rm)?;
                let add = Lists {
                    env: Vec::new(),
                    labels: a.label_add.clone(),
                    container_labels: a.container_label_add.clone(),
                    constraints: a.constraint_add.clone(),
                    placement_prefs: a.placement_pref_add.clone(),
                    mounts: a.mount_add.clone(),
                    publish: a.publish_add.clone(),
                    networks: a.network_add.clone(),
                    secrets: a.secret_add.clone(),
                    configs: a.config_add.clone(),
                    groups: a.group_add.clone(),
                };
                specs::add_lists(&mut spec, &add)?;
                let tt = spec.task_template.get_or_insert_with(Default::default);
                let ct = tt.container.get_or_insert_with(Default::default);
                specs::upsert_env(&mut ct.env, &a.env_add);
                if let Some(img) = &a.image {
                    ct.image = img.clone();
                }
                if let Some(args) = &a.args {
                    ct.args = args.split_whitespace().map(str::to_string).collect();
                }
                if a.force {
                    tt.force_update += 1;
                }
            }
            let is_job =
                matches!(spec.mode, Some(service_spec::Mode::ReplicatedJob(_) | service_spec::Mode::GlobalJob(_)));
            let req = UpdateServiceRequest {
                service: a.service.clone(),
                version,
                spec: Some(spec),
                rollback: a.rollback,
                rollback_to: 0,
            };
            if a.dry_run {
                let plan = c.plan_service_update(req).await?.into_inner();
                return print_update_plan(c, &plan, a.format).await;
            }
            let v = c.update_service(req).await?.into_inner();
            let name = v.service.and_then(|s| s.spec).and_then(|s| s.annotations).map(|a| a.name).unwrap_or_default();
            outln!("{name}");
            if !a.detach && !a.quiet {
                if is_job {
                    progress::wait_job(c, &name).await?;
                } else {
                    progress::wait_updated(c, &name).await?;
                }
            }
        }
        ServiceCmd::Ls { format, quiet } => {
            let services = c.list_services(ListServicesRequest {}).await?.into_inner().services;
            let rows: Vec<serde_json::Value> = services.iter().map(output::service_row).collect();
            print_services(&rows, format, quiet);
        }
        ServiceCmd::Inspect { format, services } => {
            let mut out = Vec::new();
            for q in services {
                let v = c.get_service(GetServiceRequest { service: q }).await?.into_inner();
                out.push(v.service.unwrap_or_default());
            }
            match format {
                Format::Json => print_json(&serde_json::to_value(&out).unwrap_or_default()),
                Format::Table => out.iter().for_each(output::service_pretty),
            }
        }
        ServiceCmd::Ps { format, quiet, service } => {
            let svc = service_named(c, &service).await?;
            let name =
                svc.spec.as_ref().and_then(|s| s.annotations.as_ref()).map(|a| a.name.clone()).unwrap_or_default();
            let id = svc.meta.as_ref().map(|m| m.id.clone()).unwrap_or_default();
            let mut tasks =
                c.list_tasks(ListTasksRequest { service: id, node: String::new() }).await?.into_inner().tasks;
            tasks.sort_by_key(|t| {
                (t.slot, t.node_id.clone(), std::cmp::Reverse(t.meta.as_ref().map(|m| m.created_at_ms).unwrap_or(0)))
            });
            let hosts = hostnames(c).await?;
            let host_of = |id: &str| hosts.get(id).cloned().unwrap_or_default();
            let rows: Vec<serde_json::Value> =
                tasks.iter().map(|t| output::task_row(&name, t, &host_of(&t.node_id))).collect();
            print_tasks(&rows, format, quiet);
        }
        ServiceCmd::Logs { follow, tail, no_task_ids, service } => {
            use std::io::Write;
            let mut stream = c.service_logs(ServiceLogsRequest { service, follow, tail }).await?.into_inner();
            let mut out = std::io::stdout().lock();
            while let Some(line) = stream.message().await? {
                let text = String::from_utf8_lossy(&line.line);
                let res = if no_task_ids {
                    write!(out, "{text}")
                } else {
                    write!(out, "{}@{}    | {text}", line.task_name, line.node)
                };
                if res.and_then(|_| out.flush()).is_err() {
                    break; // stdout closed (e.g. piped into head)
                }
            }
        }
        ServiceCmd::Rm { services } => {
            let mut failed = Vec::new();
            for q in services {
                match c.remove_service(RemoveServiceRequest { service: q.clone() }).await {
                    Ok(_) => outln!("{q}"),
                    Err(s) => failed.push(s),
                }
            }
            if let Some(s) = failed.into_iter().next() {
                return Err(Fail::Rpc(s));
            }
        }
        ServiceCmd::History { format, service } => {
            let svc = service_named(c, &service).await?;
            let mut rows: Vec<serde_json::Value> = svc
                .history
                .iter()
                .map(|r| output::revision_row(r.revision, r.spec.as_ref(), Some(r.replaced_at_ms), false))
                .collect();
            rows.push(output::revision_row(svc.spec_revision.max(1), svc.spec.as_ref(), None, true));
            rows.reverse();
            match format {
                Format::Json => print_json(&serde_json::Value::Array(rows)),
                Format::Table => print_table(
                    &["REVISION", "IMAGE", "REPLICAS", "REPLACED", ""],
                    rows.iter()
                        .map(|r| {
                            vec![
                                r["revision"].to_string(),
                                r["image"].as_str().unwrap_or("").to_string(),
                                r["replicas"].as_str().unwrap_or("").to_string(),
                                r["replaced_at"].as_str().unwrap_or("").to_string(),
                                if r["current"] == true { "current".into() } else { String::new() },
                            ]
                        })
                        .collect(),
                ),
            }
        }
        ServiceCmd::Rollback { detach, to, service } => {
            let v = c.get_service(GetServiceRequest { service: service.clone() }).await?.into_inner();
            let version = v.service.as_ref().and_then(|s| s.meta.as_ref()).map(|m| m.version).unwrap_or(0);
            c.update_service(UpdateServiceRequest {
                service: service.clone(),
                version,
                spec: None,
                rollback: true,
                rollback_to: to.unwrap_or(0),
            })
            .await?;
            outln!("{service}");
            if !detach {
                progress::wait_updated(c, &service).await?;
            }
        }
        ServiceCmd::Scale { detach, pairs } => {
            for p in pairs {
                let (name, n) = p
                    .split_once('=')
                    .and_then(|(a, b)| b.parse::<u64>().ok().map(|n| (a.to_string(), n)))
                    .ok_or_else(|| format!("invalid scale {p:?}: use SERVICE=REPLICAS"))?;
                let v = c.get_service(GetServiceRequest { service: name.clone() }).await?.into_inner();
                let svc = v.service.unwrap_or_default();
                let mut spec = svc.spec.clone().unwrap_or_default();
                match spec.mode.as_mut() {
                    Some(service_spec::Mode::Replicated(r)) => r.replicas = n,
                    _ => return Err(format!("{name}: scale can only be used with replicated mode").into()),
                }
                let version = svc.meta.as_ref().map(|m| m.version).unwrap_or(0);
                c.update_service(UpdateServiceRequest {
                    service: name.clone(),
                    version,
                    spec: Some(spec),
                    rollback: false,
                    rollback_to: 0,
                })
                .await?;
                outln!("{name} scaled to {n}");
                if !detach {
                    progress::wait_converged(c, &name).await?;
                }
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use clap::Parser;

    use super::*;

    #[test]
    fn boolean_flags_take_no_value_unless_given_with_equals() {
        let cli =
            Cli::try_parse_from(["shoal", "service", "create", "--init", "--read-only", "-t", "img", "sleep", "1"])
                .expect("parses");
        let Cmd::Service(ServiceCmd::Create(a)) = cli.cmd else { panic!("a service create") };
        assert_eq!((a.common.init, a.common.read_only, a.common.tty), (Some(true), Some(true), Some(true)));
        assert_eq!(a.image, "img", "the image is not taken as the flag's value");
        let cli = Cli::try_parse_from(["shoal", "service", "update", "--init=false", "web"]).expect("parses");
        let Cmd::Service(ServiceCmd::Update(a)) = cli.cmd else { panic!("a service update") };
        assert_eq!(a.common.init, Some(false));
    }
}
