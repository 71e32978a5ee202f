//! `shoal stack`: deploy, ls, services, ps, rm, config. The files are read here and turned into
//! specs and a plan by shoal-compose (pure); the plan's steps run through the control API one
//! by one, as Swarm's CLI does, and a deploy then follows the stack until it converged.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use clap::Subcommand;
use shoal_api::v1::{service_spec::Mode, update_status::State, *};
use shoal_compose::stack::{self, Current, Held, Step, NAMESPACE_LABEL};
use shoal_compose::Condition;

use crate::output::{print_json, print_table, Format};
use crate::{Client, Fail};

/// Stack commands.
#[derive(Debug, Subcommand)]
pub enum StackCmd {
    /// Deploy a stack from Compose files, or update it: only what changed is touched.
    Deploy {
        /// A Compose file (`-`: standard input); several are merged in order (later files
        /// override earlier ones).
        #[arg(short = 'c', long = "compose-file", required = true)]
        files: Vec<PathBuf>,
        /// Remove the services, networks, secrets and configs of the stack the files no longer name.
        #[arg(long)]
        prune: bool,
        /// Return once the changes are made, without following the stack until it converged.
        #[arg(short, long)]
        detach: bool,
        /// Print what would be created, updated or removed, and change nothing.
        #[arg(long)]
        dry_run: bool,
        /// Output format of --dry-run: table or json.
        #[arg(long, default_value = "table")]
        format: Format,
        /// The stack's name (its objects are named <stack>_<name>).
        stack: String,
    },
    /// List stacks.
    Ls {
        /// Output format: table or json.
        #[arg(long, default_value = "table")]
        format: Format,
    },
    /// List a stack's services.
    Services {
        /// Output format: table or json.
        #[arg(long, default_value = "table")]
        format: Format,
        /// Only ids.
        #[arg(short, long)]
        quiet: bool,
        stack: String,
    },
    /// List a stack's tasks.
    Ps {
        /// Output format: table or json.
        #[arg(long, default_value = "table")]
        format: Format,
        /// Only ids.
        #[arg(short, long)]
        quiet: bool,
        stack: String,
    },
    /// Remove stacks: their services, then their secrets, configs and networks.
    Rm {
        #[arg(required = true)]
        stacks: Vec<String>,
    },
    /// Print the merged, interpolated files.
    Config {
        /// A Compose file (`-`: standard input); several are merged in order.
        #[arg(short = 'c', long = "compose-file", required = true)]
        files: Vec<PathBuf>,
    },
}

/// Reads the files and the variables they may use: the shell's, then `.env` beside the first
/// file (the shell wins).
struct Input {
    files: Vec<shoal_compose::File>,
    dir: PathBuf,
    dotenv: BTreeMap<String, String>,
}

impl Input {
    fn read(paths: &[PathBuf]) -> Result<Input, String> {
        let mut files = Vec::new();
        let stdin = Path::new("-");
        if paths.iter().filter(|p| p.as_path() == stdin).count() > 1 {
            return Err("standard input (-) can be only one of the files".into());
        }
        for p in paths {
            let (name, text) = if p.as_path() == stdin {
                let mut text = String::new();
                std::io::Read::read_to_string(&mut std::io::stdin(), &mut text)
                    .map_err(|e| format!("cannot read standard input: {e}"))?;
                ("(stdin)".to_string(), text)
            } else {
                let text = std::fs::read_to_string(p).map_err(|e| format!("cannot read {}: {e}", p.display()))?;
                (p.display().to_string(), text)
            };
            files.push(shoal_compose::File { name, text });
        }
        // Files the stack names (.env, env_file, secrets) are found beside the first file, or in
        // the current directory when it came from standard input.
        let dir = paths
            .first()
            .filter(|p| p.as_path() != stdin)
            .and_then(|p| p.parent())
            .map(Path::to_path_buf)
            .unwrap_or_default();
        let env_path = dir.join(".env");
        let mut dotenv = BTreeMap::new();
        if let Ok(text) = std::fs::read_to_string(&env_path) {
            let pairs = shoal_compose::interp::parse_env_file(&text)
                .map_err(|(line, why)| format!("{}:{line}: {why}", env_path.display()))?;
            dotenv.extend(pairs);
        }
        Ok(Input { files, dir, dotenv })
    }

    fn var(&self, name: &str) -> Option<String> {
        std::env::var(name).ok().or_else(|| self.dotenv.get(name).cloned())
    }

    fn path(&self, name: &str) -> PathBuf {
        let p = Path::new(name);
        if p.is_absolute() {
            p.to_path_buf()
        } else {
            self.dir.join(p)
        }
    }

    fn read_text(&self, name: &str) -> Result<String, String> {
        std::fs::read_to_string(self.path(name)).map_err(|e| e.to_string())
    }

    fn read_bytes(&self, name: &str) -> Result<Vec<u8>, String> {
        let data = std::fs::read(self.path(name)).map_err(|e| e.to_string())?;
        if data.len() as u64 > crate::MAX_DATA_BYTES {
            return Err(format!("larger than the {}-byte limit", crate::MAX_DATA_BYTES));
        }
        Ok(data)
    }
}

fn in_stack(labels: Option<&BTreeMap<String, String>>, stack: &str) -> bool {
    labels.and_then(|l| l.get(NAMESPACE_LABEL)).is_some_and(|s| s == stack)
}

fn spec_name(s: Option<&ServiceSpec>) -> String {
    s.and_then(|s| s.annotations.as_ref()).map(|a| a.name.clone()).unwrap_or_default()
}

/// What the cluster holds of every stack.
struct Cluster {
    services: Vec<ServiceView>,
    networks: Vec<Network>,
    secrets: Vec<Secret>,
    configs: Vec<Config>,
}

impl Cluster {
    async fn read(c: &mut Client) -> Result<Cluster, Fail> {
        Ok(Cluster {
            services: c.list_services(ListServicesRequest {}).await?.into_inner().services,
            networks: c.list_networks(ListNetworksRequest {}).await?.into_inner().networks,
            secrets: c.list_secrets(ListSecretsRequest {}).await?.into_inner().secrets,
            configs: c.list_configs(ListConfigsRequest {}).await?.into_inner().configs,
        })
    }

    fn services_of(&self, stack: &str) -> Vec<&ServiceView> {
        let mut v: Vec<&ServiceView> = self
            .services
            .iter()
            .filter(|v| {
                let spec = v.service.as_ref().and_then(|s| s.spec.as_ref());
                in_stack(spec.and_then(|s| s.annotations.as_ref()).map(|a| &a.labels), stack)
            })
            .collect();
        v.sort_by_key(|v| spec_name(v.service.as_ref().and_then(|s| s.spec.as_ref())));
        v
    }

    /// What `stack` holds, its services' specs made comparable with `desired`.
    fn current(&self, stack: &str, desired: &stack::Desired) -> Current {
        let network_name = |id: &str| {
            self.networks
                .iter()
                .find(|n| n.meta.as_ref().is_some_and(|m| m.id == id))
                .map(|n| crate::output::network_name(n).to_string())
        };
        let services = self
            .services_of(stack)
            .into_iter()
            .filter_map(|v| v.service.as_ref()?.spec.as_ref())
            .map(|stored| {
                let name = spec_name(Some(stored));
                let want = desired.services.iter().find(|s| spec_name(Some(&s.spec)) == name);
                let spec = match want {
                    Some(w) => stack::comparable(stored, &w.spec, &network_name),
                    None => stored.clone(),
                };
                Held { name, spec: Some(spec) }
            })
            .collect();
        let named = |a: Option<&Annotations>| a.filter(|a| in_stack(Some(&a.labels), stack)).map(|a| a.name.clone());
        Current {
            services,
            networks: self.networks.iter().filter_map(|n| named(n.spec.as_ref()?.annotations.as_ref())).collect(),
            secrets: self.secrets.iter().filter_map(|s| named(s.spec.as_ref()?.annotations.as_ref())).collect(),
            configs: self.configs.iter().filter_map(|s| named(s.spec.as_ref()?.annotations.as_ref())).collect(),
        }
    }

    /// The stacks there are, with how many services each has.
    fn stacks(&self) -> BTreeMap<String, usize> {
        let mut out = BTreeMap::new();
        for v in &self.services {
            let spec = v.service.as_ref().and_then(|s| s.spec.as_ref());
            if let Some(stack) = spec.and_then(|s| s.annotations.as_ref()).and_then(|a| a.labels.get(NAMESPACE_LABEL)) {
                *out.entry(stack.clone()).or_insert(0) += 1;
            }
        }
        out
    }
}

/// `stack config`: the files merged and interpolated, as YAML.
pub fn config(files: &[PathBuf]) -> Result<(), String> {
    let input = Input::read(files)?;
    let env = shoal_compose::Env { var: &|n| input.var(n), read: &|p| input.read_text(p) };
    let root = shoal_compose::merged(&input.files, &env).map_err(|e| e.to_string())?;
    out!("{}", shoal_compose::yaml::emit(&root));
    Ok(())
}

pub async fn run(c: &mut Client, cmd: StackCmd) -> Result<(), Fail> {
    match cmd {
        StackCmd::Config { files } => Ok(config(&files)?),
        StackCmd::Deploy { files, prune, detach, dry_run, format, stack } => {
            deploy(c, &files, prune, detach, dry_run, format, &stack).await
        }
        StackCmd::Ls { format } => {
            let cluster = Cluster::read(c).await?;
            let stacks = cluster.stacks();
            match format {
                Format::Json => print_json(&serde_json::Value::Array(
                    stacks.iter().map(|(n, s)| serde_json::json!({"name": n, "services": s})).collect(),
                )),
                Format::Table => print_table(
                    &["NAME", "SERVICES"],
                    stacks.iter().map(|(n, s)| vec![n.clone(), s.to_string()]).collect(),
                ),
            }
            Ok(())
        }
        StackCmd::Services { format, quiet, stack } => {
            let cluster = Cluster::read(c).await?;
            let views = cluster.services_of(&stack);
            if views.is_empty() {
                return Err(format!("stack {stack:?} has no services (see `shoal stack ls`)").into());
            }
            let rows: Vec<serde_json::Value> = views.iter().map(|v| crate::output::service_row(v)).collect();
            crate::print_services(&rows, format, quiet);
            Ok(())
        }
        StackCmd::Ps { format, quiet, stack } => {
            let cluster = Cluster::read(c).await?;
            let views = cluster.services_of(&stack);
            if views.is_empty() {
                return Err(format!("stack {stack:?} has no services (see `shoal stack ls`)").into());
            }
            let hosts = crate::hostnames(c).await?;
            let mut rows = Vec::new();
            for v in views {
                let Some(svc) = v.service.as_ref() else { continue };
                let name = spec_name(svc.spec.as_ref());
                let id = svc.meta.as_ref().map(|m| m.id.clone()).unwrap_or_default();
                let mut tasks =
                    c.list_tasks(ListTasksRequest { service: id, node: String::new() }).await?.into_inner().tasks;
                tasks.sort_by_key(|t| {
                    (t.slot, t.node_id.clone(), std::cmp::Reverse(t.meta.as_ref().map_or(0, |m| m.created_at_ms)))
                });
                for t in &tasks {
                    rows.push(crate::output::task_row(&name, t, &hosts.get(&t.node_id).cloned().unwrap_or_default()));
                }
            }
            crate::print_tasks(&rows, format, quiet);
            Ok(())
        }
        StackCmd::Rm { stacks } => {
            let mut failed = Vec::new();
            for stack in stacks {
                if let Err(e) = remove(c, &stack).await {
                    failed.push(match e {
                        Fail::Rpc(s) => format!("{stack}: {}", s.message()),
                        Fail::Usage(m) => format!("{stack}: {m}"),
                    });
                }
            }
            if failed.is_empty() {
                Ok(())
            } else {
                Err(failed.join("\n").into())
            }
        }
    }
}

#[allow(clippy::too_many_arguments)]
async fn deploy(
    c: &mut Client,
    files: &[PathBuf],
    prune: bool,
    detach: bool,
    dry_run: bool,
    format: Format,
    stack: &str,
) -> Result<(), Fail> {
    stack::check_stack_name(stack)?;
    let input = Input::read(files)?;
    let env = shoal_compose::Env { var: &|n| input.var(n), read: &|p| input.read_text(p) };
    let loaded = shoal_compose::load(&input.files, &env).map_err(|e| e.to_string())?;
    for w in &loaded.warnings {
        eprintln!("warning: {w}");
    }
    let desired = stack::desired(&loaded.project, stack, &|p| input.read_bytes(p)).map_err(|e| e.to_string())?;
    // Everything checked before anything is made: specs, then what must exist already.
    for s in &desired.services {
        shoal_api::validate::validate_service_spec(&s.spec)
            .map_err(|e| format!("service {}: {e}", spec_name(Some(&s.spec))))?;
    }
    for n in &desired.networks {
        shoal_api::validate::validate_network_spec(n).map_err(|e| format!("network: {e}"))?;
    }
    let cluster = Cluster::read(c).await?;
    let network_exists = |name: &str| cluster.networks.iter().any(|n| crate::output::network_name(n) == name);
    for n in &desired.external_networks {
        if !network_exists(n) {
            return Err(
                format!("external network {n:?} not found: create it first with `shoal network create {n}`").into()
            );
        }
    }
    let names = |list: Vec<Option<&Annotations>>| -> BTreeSet<String> {
        list.into_iter().flatten().map(|a| a.name.clone()).collect()
    };
    let secrets = names(cluster.secrets.iter().map(|s| s.spec.as_ref().and_then(|s| s.annotations.as_ref())).collect());
    let configs = names(cluster.configs.iter().map(|s| s.spec.as_ref().and_then(|s| s.annotations.as_ref())).collect());
    for (kind, wanted, held) in
        [("secret", &desired.external_secrets, &secrets), ("config", &desired.external_configs, &configs)]
    {
        if let Some(missing) = wanted.iter().find(|n| !held.contains(*n)) {
            return Err(format!(
                "external {kind} {missing:?} not found: create it first with `shoal {kind} create {missing} FILE`"
            )
            .into());
        }
    }
    let current = cluster.current(stack, &desired);
    let steps = stack::plan(&desired, &current, prune);
    if dry_run {
        match format {
            Format::Json => print_json(&serde_json::Value::Array(
                steps.iter().map(|s| serde_json::json!({"step": s.describe()})).collect(),
            )),
            Format::Table => {
                if steps.is_empty() {
                    outln!("nothing to change: stack {stack} is as the files describe it");
                }
                for s in &steps {
                    outln!("would {}", s.describe());
                }
            }
        }
        return Ok(());
    }
    let depends: BTreeMap<String, Vec<(String, Condition)>> =
        desired.services.iter().map(|s| (spec_name(Some(&s.spec)), s.depends_on.clone())).collect();
    let mut touched: Vec<String> = Vec::new();
    for step in &steps {
        match step {
            Step::CreateService(spec) | Step::UpdateService(spec) => {
                let name = spec_name(Some(spec));
                for (dep, cond) in depends.get(&name).into_iter().flatten() {
                    wait_for(c, &name, dep, *cond).await?;
                }
                outln!(
                    "{} service {name}",
                    if matches!(step, Step::CreateService(_)) { "Creating" } else { "Updating" }
                );
                if let Step::CreateService(_) = step {
                    c.create_service(CreateServiceRequest { spec: Some(spec.clone()) }).await?;
                } else {
                    let cur = c.get_service(GetServiceRequest { service: name.clone() }).await?.into_inner();
                    let version = cur.service.and_then(|s| s.meta).map_or(0, |m| m.version);
                    let req = UpdateServiceRequest {
                        service: name.clone(),
                        version,
                        spec: Some(spec.clone()),
                        rollback: false,
                        rollback_to: 0,
                    };
                    c.update_service(req).await?;
                }
                touched.push(name);
            }
            other => run_step(c, other).await?,
        }
    }
    if steps.is_empty() {
        outln!("stack {stack} is as the files describe it: nothing changed");
    }
    if detach {
        return Ok(());
    }
    let names: Vec<String> = desired.services.iter().map(|s| spec_name(Some(&s.spec))).collect();
    follow(c, &names, &touched).await
}

/// Runs a step other than a service create or update.
async fn run_step(c: &mut Client, step: &Step) -> Result<(), Fail> {
    outln!("{}{}", step.describe()[..1].to_uppercase(), &step.describe()[1..]);
    match step {
        Step::CreateNetwork(spec) => {
            c.create_network(CreateNetworkRequest { spec: Some(spec.clone()) }).await?;
        }
        Step::CreateSecret(spec) => {
            c.create_secret(CreateSecretRequest { spec: Some(spec.clone()) }).await?;
        }
        Step::CreateConfig(spec) => {
            c.create_config(CreateConfigRequest { spec: Some(spec.clone()) }).await?;
        }
        Step::RemoveService(name) => {
            c.remove_service(RemoveServiceRequest { service: name.clone() }).await?;
        }
        Step::RemoveSecret(name) => {
            c.remove_secret(RemoveSecretRequest { secret: name.clone() }).await?;
        }
        Step::RemoveConfig(name) => {
            c.remove_config(RemoveConfigRequest { config: name.clone() }).await?;
        }
        Step::RemoveNetwork(name) => remove_network(c, name).await?,
        Step::CreateService(_) | Step::UpdateService(_) => {}
    }
    Ok(())
}

/// Removes a network, waiting (up to a minute) for the tasks of removed services to leave it.
async fn remove_network(c: &mut Client, name: &str) -> Result<(), Fail> {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        match c.remove_network(RemoveNetworkRequest { network: name.to_string() }).await {
            Ok(_) => return Ok(()),
            Err(s) if s.code() == tonic::Code::NotFound => return Ok(()),
            Err(s) if Instant::now() < deadline && s.code() == tonic::Code::FailedPrecondition => {
                tokio::time::sleep(Duration::from_millis(500)).await;
            }
            Err(s) => return Err(s.into()),
        }
    }
}

/// Removes everything of `stack`: services first, then secrets, configs and networks.
async fn remove(c: &mut Client, stack: &str) -> Result<(), Fail> {
    let cluster = Cluster::read(c).await?;
    let current = cluster.current(stack, &stack::Desired::default());
    if current.services.is_empty()
        && current.networks.is_empty()
        && current.secrets.is_empty()
        && current.configs.is_empty()
    {
        return Err(format!("nothing found in stack {stack:?} (see `shoal stack ls`)").into());
    }
    let steps = stack::plan(&stack::Desired { stack: stack.to_string(), ..Default::default() }, &current, true);
    for s in &steps {
        run_step(c, s).await?;
    }
    Ok(())
}

/// Where a service stands for the services that depend on it.
struct DepState {
    /// Every task runs.
    started: bool,
    /// ... and is healthy where it has a check.
    healthy: bool,
    /// A job that completed.
    completed: bool,
    /// Why its newest task failed, when none runs.
    failing: Option<String>,
}

/// Where service `name` stands (see [`DepState`]).
async fn state_of(c: &mut Client, name: &str) -> Result<DepState, Fail> {
    let v = c.get_service(GetServiceRequest { service: name.to_string() }).await?.into_inner();
    let id = v.service.as_ref().and_then(|s| s.meta.as_ref()).map(|m| m.id.clone()).unwrap_or_default();
    let tasks = c.list_tasks(ListTasksRequest { service: id, node: String::new() }).await?.into_inner().tasks;
    let running: Vec<&Task> = tasks
        .iter()
        .filter(|t| {
            t.desired_state == TaskState::Running as i32
                && t.status.as_ref().is_some_and(|s| s.state == TaskState::Running as i32)
        })
        .collect();
    let started = v.desired_tasks > 0 && running.len() as u64 >= v.desired_tasks;
    let healthy = started && running.iter().all(|t| t.up_since().is_some());
    let completed = v.desired_tasks > 0 && v.completed_tasks >= v.desired_tasks;
    let newest = tasks.iter().max_by_key(|t| t.meta.as_ref().map_or(0, |m| m.created_at_ms));
    let failing = newest
        .and_then(|t| t.status.as_ref())
        .filter(|s| {
            running.is_empty() && (s.state == TaskState::Failed as i32 || s.state == TaskState::Rejected as i32)
        })
        .map(|s| if s.err.is_empty() { s.message.clone() } else { s.err.clone() });
    Ok(DepState { started, healthy, completed, failing })
}

/// Waits until `dep` meets `cond` before `service` is created (bounded: 10 minutes).
async fn wait_for(c: &mut Client, service: &str, dep: &str, cond: Condition) -> Result<(), Fail> {
    let what = match cond {
        Condition::Started => "run",
        Condition::Healthy => "be healthy",
        Condition::Completed => "complete",
    };
    outln!("{service}: waiting for {dep} to {what}");
    let started_at = Instant::now();
    let deadline = started_at + Duration::from_secs(600);
    loop {
        let st = state_of(c, dep).await?;
        let met = match cond {
            Condition::Started => st.started || st.completed,
            Condition::Healthy => st.healthy,
            Condition::Completed => st.completed,
        };
        if met {
            return Ok(());
        }
        // A dependency whose tasks keep failing will not get there: say why, soon.
        if let Some(why) = st.failing.filter(|_| started_at.elapsed() > Duration::from_secs(20)) {
            return Err(
                format!("{service} depends on {dep}, whose tasks fail: {why} (see `shoal service ps {dep}`)").into()
            );
        }
        if Instant::now() > deadline {
            return Err(format!(
                "{service} depends on {dep}, which did not {what} within 10 minutes (see `shoal service ps {dep}`)"
            )
            .into());
        }
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
}

/// Follows the stack's services until each converged (jobs: completed; updated services: their
/// update completed), printing a line per service when its picture changes. An update that
/// paused or rolled back ends it with the reason.
async fn follow(c: &mut Client, names: &[String], touched: &[String]) -> Result<(), Fail> {
    let touched: BTreeSet<&str> = touched.iter().map(String::as_str).collect();
    let mut last: BTreeMap<String, String> = BTreeMap::new();
    let mut stable_since: Option<Instant> = None;
    loop {
        let mut all = true;
        // One answer for every service of the stack.
        let views = c.list_services(ListServicesRequest {}).await?.into_inner().services;
        for name in names {
            let Some(v) = views.iter().find(|v| spec_name(v.service.as_ref().and_then(|s| s.spec.as_ref())) == *name)
            else {
                return Err(format!("service {name} is gone (removed while the stack deployed?)").into());
            };
            let svc = v.service.clone().unwrap_or_default();
            let job = matches!(
                svc.spec.as_ref().and_then(|s| s.mode.as_ref()),
                Some(Mode::ReplicatedJob(_) | Mode::GlobalJob(_))
            );
            let status = svc.update_status.clone().unwrap_or_default();
            let (picture, done) = if job {
                let done = v.desired_tasks > 0 && v.completed_tasks >= v.desired_tasks;
                (format!("{}/{} completed", v.completed_tasks, v.desired_tasks), done)
            } else {
                let updating = touched.contains(name.as_str())
                    && matches!(status.state(), State::Updating | State::RollbackStarted);
                // The deploy asked for no rollback: for a service it changed, a pause or a
                // rollback is its update failing.
                if touched.contains(name.as_str())
                    && matches!(status.state(), State::Paused | State::RollbackPaused | State::RollbackCompleted)
                {
                    return Err(format!("{name}: {} (see `shoal service ps {name}`)", status.message).into());
                }
                let state = if updating {
                    format!(" ({})", shoal_api::names::update_state(status.state()))
                } else {
                    String::new()
                };
                (
                    format!("{}/{} running{state}", v.running_tasks, v.desired_tasks),
                    !updating && v.running_tasks >= v.desired_tasks,
                )
            };
            all &= done;
            if last.get(name) != Some(&picture) {
                outln!("{name}: {picture}");
                last.insert(name.clone(), picture);
            }
        }
        if all {
            // As `service create`: converged for a moment, not only at one sample.
            let since = *stable_since.get_or_insert_with(Instant::now);
            if since.elapsed() >= Duration::from_secs(2) {
                outln!("verify: Stack converged");
                return Ok(());
            }
        } else {
            stable_since = None;
        }
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
}
