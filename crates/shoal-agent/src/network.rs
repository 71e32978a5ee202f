//! The agent's side of the overlays: from the dispatcher's network view and this node's tasks to
//! the host state [`shoal_net`] converges to, and the loop that keeps the host there.
//!
//! One loop owns the host's network state, so two tasks never race to make one bridge. A task's
//! controller waits for the loop to report its namespace made (or why it could not be) before
//! it creates the container in it.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::net::Ipv4Addr;
use std::sync::Arc;
use std::time::Duration;

use shoal_api::v1::{Endpoint, Network, NetworkAttachment, ServiceVip};
use shoal_net::{
    bridge_name, dns, Desired, Executor, Gateway, Interface, Net, Overlay, Remote, TaskNet, GATEWAY_BRIDGE,
};
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

/// The dispatcher's network view.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct View {
    /// The networks this node's tasks attach to.
    pub networks: Vec<Network>,
    /// Every reachable task address on them.
    pub endpoints: Vec<Endpoint>,
    /// VXLAN's UDP port.
    pub port: u32,
    /// The services' VIPs on those networks.
    pub vips: Vec<ServiceVip>,
    /// Every port published in ingress mode in the cluster.
    pub ingress_ports: Vec<shoal_api::v1::IngressPort>,
}

impl View {
    /// The ingress network, when the view holds it.
    pub fn ingress(&self) -> Option<&Network> {
        self.networks.iter().find(|n| n.spec.as_ref().is_some_and(|s| s.ingress))
    }
}

/// A task of this node, as far as its network goes.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct LocalTask {
    /// Its addresses on the overlays, in interface order.
    pub attachments: Vec<NetworkAttachment>,
    /// Its address on the egress bridge, when it has one.
    pub gateway_address: Option<Ipv4Addr>,
    /// Its host-mode published ports.
    pub host_ports: Vec<shoal_api::v1::PortConfig>,
    /// Its service.
    pub service_id: String,
    /// It runs and is meant to: the node's own ingress ports with `traffic=local` lead to it.
    pub serving: bool,
}

/// What the loop works from.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Inputs {
    /// `None` until the first complete assignment set arrived: before that nothing is known
    /// and nothing is changed (a restarted agent must not tear down what its tasks use).
    pub view: Option<View>,
    /// This node's tasks that have (or are to have) a namespace.
    pub tasks: BTreeMap<String, LocalTask>,
    /// Number of the view in its stream (acknowledged once installed).
    pub view_seq: u64,
}

/// How a task's network stands.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Readiness {
    /// Its namespace is made and plugged in.
    Ready,
    /// It cannot be, and why.
    Failed(String),
}

/// Facts about the host the desired state depends on.
#[derive(Debug, Clone)]
pub struct Host {
    /// This node's id (its own endpoints are local, not remote).
    pub node_id: String,
    /// The underlay address VXLAN leaves from.
    pub local: Option<Ipv4Addr>,
    /// The egress bridge's address (none when no subnet is free).
    pub gateway: Option<Net>,
    /// The underlay's MTU.
    pub underlay_mtu: u32,
    /// Serve each task's resolver at 127.0.0.11 inside its namespace.
    pub dns: bool,
    /// TTL of its answers, in seconds.
    pub dns_ttl: u32,
}

/// The DNS entries of a view: every serving task address, with its names.
pub fn dns_entries(view: &View) -> Vec<dns::Entry> {
    // Nothing is looked up on the ingress network (as in Swarm).
    let ingress = view.ingress().and_then(|n| n.meta.as_ref()).map(|m| m.id.as_str());
    view.endpoints
        .iter()
        .filter(|e| e.serving && Some(e.network_id.as_str()) != ingress)
        .filter_map(|e| {
            Some(dns::Entry {
                network_id: e.network_id.clone(),
                service: e.service_name.clone(),
                task_name: e.task_name.clone(),
                task_id: e.task_id.clone(),
                aliases: e.aliases.clone(),
                address: Net::parse(&e.address)?.addr,
            })
        })
        .collect()
}

/// The resolvers this loop serves, one per task namespace.
struct Resolvers {
    table: watch::Sender<Arc<dns::Table>>,
    upstreams: Vec<std::net::SocketAddr>,
    /// Task id -> (its networks, what stops its resolver).
    running: HashMap<String, (Vec<String>, CancellationToken)>,
    set: tokio::task::JoinSet<()>,
}

impl Resolvers {
    /// Serves a resolver for every task of `d` whose namespace is ready, stops the others;
    /// a task whose resolver cannot be bound is not ready.
    async fn sync(
        &mut self,
        exec: &Arc<dyn Executor>,
        d: &Desired,
        tasks: &BTreeMap<String, LocalTask>,
        map: &mut BTreeMap<String, Readiness>,
        cancel: &CancellationToken,
    ) {
        while self.set.try_join_next().is_some() {}
        let ready: BTreeMap<&str, Vec<String>> = d
            .tasks
            .iter()
            .filter(|t| map.get(&t.task_id) == Some(&Readiness::Ready))
            .map(|t| {
                let nets = tasks.get(&t.task_id).map(|l| l.attachments.iter().map(|a| a.network_id.clone()).collect());
                (t.task_id.as_str(), nets.unwrap_or_default())
            })
            .collect();
        self.running.retain(|id, (nets, token)| {
            let keep = ready.get(id.as_str()) == Some(nets);
            if !keep {
                token.cancel();
            }
            keep
        });
        for (id, nets) in ready {
            if self.running.contains_key(id) {
                continue;
            }
            let path = exec.namespace_path(id);
            let bound = tokio::task::spawn_blocking(move || dns::bind_in(&path)).await.map_err(|e| e.to_string());
            match bound.and_then(|r| r) {
                Ok(socket) => {
                    let token = cancel.child_token();
                    self.set.spawn(dns::serve(
                        socket,
                        self.table.subscribe(),
                        nets.clone(),
                        self.upstreams.clone(),
                        token.clone(),
                    ));
                    self.running.insert(id.to_string(), (nets, token));
                }
                Err(e) => {
                    map.insert(id.to_string(), Readiness::Failed(format!("its resolver at 127.0.0.11: {e}")));
                }
            }
        }
    }
}

/// The overlay MTU of network `n`: its `mtu` option, else the underlay's minus VXLAN's overhead.
fn mtu_of(n: &Network, underlay: u32) -> u32 {
    n.spec
        .as_ref()
        .and_then(|s| s.options.get("mtu"))
        .and_then(|v| v.parse().ok())
        .unwrap_or(underlay.saturating_sub(shoal_net::VXLAN_OVERHEAD))
}

/// Whether a task with these attachments reaches outside the overlays: unless every one of
/// its networks is internal (a task on no network has egress, as in Swarm).
pub fn wants_egress(attachments: &[NetworkAttachment], networks: &HashMap<&str, &Network>) -> bool {
    attachments.is_empty()
        || attachments
            .iter()
            .any(|a| networks.get(a.network_id.as_str()).is_none_or(|n| !n.spec.as_ref().is_some_and(|s| s.internal)))
}

/// The host state `inputs` call for, and the tasks that cannot have their network, with why.
/// Pure; `resolve` turns a node's address into an IPv4 address.
pub fn desired(
    view: &View,
    tasks: &BTreeMap<String, LocalTask>,
    host: &Host,
    resolve: &dyn Fn(&str) -> Option<Ipv4Addr>,
) -> (Desired, Vec<(String, String)>) {
    let networks: HashMap<&str, &Network> =
        view.networks.iter().filter_map(|n| n.meta.as_ref().map(|m| (m.id.as_str(), n))).collect();
    let mut out = Desired {
        local: host.local,
        port: u16::try_from(view.port).ok().filter(|p| *p != 0).unwrap_or(4789),
        ..Default::default()
    };
    let mut unready = Vec::new();
    let mut used: BTreeSet<&str> = BTreeSet::new();
    'tasks: for (id, t) in tasks {
        let mut interfaces = Vec::new();
        for a in &t.attachments {
            let Some(n) = networks.get(a.network_id.as_str()) else {
                unready.push((id.clone(), format!("network {} is not known on this node yet", a.network_id)));
                continue 'tasks;
            };
            let Some(address) = Net::parse(&a.address) else {
                unready.push((id.clone(), format!("invalid address {:?}", a.address)));
                continue 'tasks;
            };
            interfaces.push(Interface {
                bridge: bridge_name(n.vni),
                address,
                mtu: mtu_of(n, host.underlay_mtu),
                gateway: None,
            });
            used.insert(a.network_id.as_str());
        }
        if wants_egress(&t.attachments, &networks) {
            match (host.gateway, t.gateway_address) {
                (Some(gw), Some(addr)) => {
                    interfaces.push(Interface {
                        bridge: GATEWAY_BRIDGE.into(),
                        address: Net { addr, prefix: gw.prefix },
                        mtu: host.underlay_mtu,
                        gateway: Some(gw.addr),
                    });
                    // A task that is not running, or is to stop, takes no connection.
                    for p in t.host_ports.iter().filter(|_| t.serving) {
                        if let Some((udp, published, target)) =
                            port_numbers(p.protocol, p.published_port, p.target_port)
                        {
                            out.ports.push(shoal_net::PublishedPort {
                                udp,
                                published,
                                target,
                                backends: vec![addr],
                                masquerade: false,
                            });
                        }
                    }
                }
                (None, _) => {
                    unready.push((id.clone(), "no subnet in 172.18.0.0-172.31.255.255 is free for egress".into()));
                    continue;
                }
                (Some(gw), None) => {
                    unready.push((id.clone(), format!("no free address for egress in {gw}")));
                    continue;
                }
            }
        }
        out.tasks.push(TaskNet { task_id: id.clone(), interfaces, vips: vips_for(view, &t.attachments) });
    }
    if let (true, Some(gw)) =
        (out.tasks.iter().any(|t| t.interfaces.iter().any(|i| i.bridge == GATEWAY_BRIDGE)), host.gateway)
    {
        out.gateway = Some(Gateway { address: gw, mtu: host.underlay_mtu });
    }
    // Every node forwards the ingress ports: it is on the ingress network with an address of
    // its own, whether or not a task of its own is.
    let ingress = view.ingress().and_then(|n| Some((n.meta.as_ref()?.id.as_str(), n)));
    let own_ingress = ingress.and_then(|(id, _)| {
        view.endpoints
            .iter()
            .find(|e| e.network_id == id && e.task_id.is_empty() && e.node_id == host.node_id)
            .and_then(|e| Net::parse(&e.address))
    });
    if let (Some((id, _)), Some(_)) = (ingress, own_ingress) {
        used.insert(id);
    }
    out.ports.extend(ingress_ports(view, tasks, ingress.map(|(id, _)| id), own_ingress.is_some()));
    for id in &used {
        if let Some(n) = networks.get(id) {
            if let Some(subnet) = Net::parse(&n.subnet) {
                let address = own_ingress.filter(|_| ingress.is_some_and(|(i, _)| i == *id));
                out.overlays.push(Overlay { vni: n.vni, subnet, mtu: mtu_of(n, host.underlay_mtu), address });
            }
        }
    }
    let vnis: HashMap<&str, u32> = used.iter().filter_map(|id| networks.get(id).map(|n| (*id, n.vni))).collect();
    for e in &view.endpoints {
        let Some(vni) = vnis.get(e.network_id.as_str()) else { continue };
        if e.node_id == host.node_id {
            continue;
        }
        let (Some(address), Some(h)) = (Net::parse(&e.address), resolve(&e.node_addr)) else { continue };
        out.remotes.push(Remote { vni: *vni, address: address.addr, host: h });
    }
    out.remotes.sort();
    out.remotes.dedup_by_key(|r| (r.vni, r.address));
    out.ports.sort();
    // One entry per protocol and port (two tasks of one service never share a host port on a
    // node, but a stopping one may still be listed for a moment): their backends together.
    out.ports.dedup_by(|later, first| {
        let same = (later.udp, later.published) == (first.udp, first.published);
        if same {
            first.backends.append(&mut later.backends);
            first.backends.sort();
            first.backends.dedup();
            first.masquerade |= later.masquerade;
        }
        same
    });
    (out, unready)
}

/// (udp, published, target) of a port, when it can be published (tcp or udp, in range).
fn port_numbers(protocol: i32, published: u32, target: u32) -> Option<(bool, u16, u16)> {
    use shoal_api::v1::port_config::Protocol;
    let udp = match Protocol::try_from(protocol).ok()? {
        Protocol::Tcp => false,
        Protocol::Udp => true,
        Protocol::Sctp => return None,
    };
    Some((udp, u16::try_from(published).ok().filter(|p| *p != 0)?, u16::try_from(target).ok()?))
}

/// The ports this node forwards for the ingress network: with `traffic=cluster`, to the
/// serving tasks of the service on the ingress network wherever they run (only once the node
/// has its own address there, which replies come back to); with `traffic=local`, to its own
/// serving tasks at their egress addresses. Pure.
fn ingress_ports(
    view: &View,
    tasks: &BTreeMap<String, LocalTask>,
    ingress_id: Option<&str>,
    have_address: bool,
) -> Vec<shoal_net::PublishedPort> {
    let mut out = Vec::new();
    for p in &view.ingress_ports {
        let Some((udp, published, target)) = port_numbers(p.protocol, p.published_port, p.target_port) else {
            continue;
        };
        let mut backends: Vec<Ipv4Addr> = if p.local {
            tasks
                .values()
                .filter(|t| t.serving && t.service_id == p.service_id)
                .filter_map(|t| t.gateway_address)
                .collect()
        } else if have_address {
            view.endpoints
                .iter()
                .filter(|e| e.serving && e.service_id == p.service_id && Some(e.network_id.as_str()) == ingress_id)
                .filter_map(|e| Net::parse(&e.address).map(|n| n.addr))
                .collect()
        } else {
            Vec::new()
        };
        backends.sort();
        backends.dedup();
        out.push(shoal_net::PublishedPort { udp, published, target, backends, masquerade: !p.local });
    }
    out
}

/// The VIPs a task on `attachments` reaches, each with its service's serving tasks on that
/// network. Pure.
pub fn vips_for(view: &View, attachments: &[NetworkAttachment]) -> Vec<shoal_net::Vip> {
    let mut out: Vec<shoal_net::Vip> = view
        .vips
        .iter()
        .filter(|v| attachments.iter().any(|a| a.network_id == v.network_id))
        .filter_map(|v| {
            let vip = Net::parse(&v.address)?.addr;
            let mut backends: Vec<Ipv4Addr> = view
                .endpoints
                .iter()
                .filter(|e| e.serving && e.service_id == v.service_id && e.network_id == v.network_id)
                .filter_map(|e| Net::parse(&e.address).map(|n| n.addr))
                .collect();
            backends.sort();
            backends.dedup();
            Some(shoal_net::Vip { vip, backends })
        })
        .collect();
    out.sort();
    out
}

/// The VIPs of a view for DNS: (network, service, VIP).
pub fn dns_vips(view: &View) -> Vec<(String, String, Ipv4Addr)> {
    view.vips
        .iter()
        .filter_map(|v| Some((v.network_id.clone(), v.service_name.clone(), Net::parse(&v.address)?.addr)))
        .collect()
}

/// Resolves node addresses, remembering the answers (an address is an IP literal in most
/// clusters; a name is looked up once).
#[derive(Default)]
pub struct Resolver {
    known: std::sync::Mutex<HashMap<String, Option<Ipv4Addr>>>,
}

impl Resolver {
    /// The IPv4 address of `host`.
    pub fn resolve(&self, host: &str) -> Option<Ipv4Addr> {
        if let Ok(a) = host.parse() {
            return Some(a);
        }
        let mut known = self.known.lock().unwrap_or_else(|e| e.into_inner());
        *known.entry(host.to_string()).or_insert_with(|| {
            use std::net::ToSocketAddrs;
            (host, 0).to_socket_addrs().ok()?.find_map(|a| match a.ip() {
                std::net::IpAddr::V4(v) => Some(v),
                std::net::IpAddr::V6(_) => None,
            })
        })
    }
}

/// What the network loop reports.
pub struct Reports {
    /// Each task's namespace: ready, or why not.
    pub ready: watch::Sender<BTreeMap<String, Readiness>>,
    /// The last view installed on the whole host (the leader lets stopping tasks go on it).
    pub acks: watch::Sender<u64>,
    /// Tasks a published port of the host leads to straight (host mode, `traffic=local`), as
    /// installed.
    pub published: watch::Sender<BTreeSet<String>>,
}

/// The tasks of `tasks` that the host-side ports of `d` lead to. Pure.
pub fn published_tasks(d: &Desired, tasks: &BTreeMap<String, LocalTask>) -> BTreeSet<String> {
    let backends: BTreeSet<Ipv4Addr> =
        d.ports.iter().filter(|p| !p.masquerade).flat_map(|p| p.backends.iter().copied()).collect();
    tasks
        .iter()
        .filter(|(_, t)| t.gateway_address.is_some_and(|a| backends.contains(&a)))
        .map(|(id, _)| id.clone())
        .collect()
}

/// The loop that keeps the host's network state where the inputs say, until `cancel`.
/// Failed steps are retried every second; the whole state is checked again every 30 seconds
/// (so a hand-deleted entry comes back).
pub async fn run(
    exec: Arc<dyn Executor>,
    mut inputs: watch::Receiver<Inputs>,
    reports: Reports,
    mut host: Host,
    cancel: CancellationToken,
) {
    let resolver = Resolver::default();
    let mut resolvers = Resolvers {
        table: watch::channel(Arc::new(dns::Table::default())).0,
        upstreams: std::fs::read_to_string("/etc/resolv.conf").map(|t| dns::upstreams(&t)).unwrap_or_default(),
        running: HashMap::new(),
        set: tokio::task::JoinSet::new(),
    };
    if let Some(local) = host.local {
        if let Some(mtu) = exec.underlay_mtu(local).await {
            host.underlay_mtu = mtu;
        }
    }
    loop {
        let current = inputs.borrow_and_update().clone();
        let mut retry = Duration::from_secs(30);
        if let Some(view) = &current.view {
            let (d, unready) = desired(view, &current.tasks, &host, &|h| resolver.resolve(h));
            let started = std::time::Instant::now();
            match shoal_net::converge(exec.as_ref(), &d).await {
                Ok(out) => {
                    tracing::debug!(
                        tasks = d.tasks.len(),
                        steps = out.done,
                        failed = out.failed.len(),
                        ms = started.elapsed().as_millis() as u64,
                        "host network converged"
                    );
                    // What the ports now lead to (a failed ports step keeps the old set: the
                    // next pass tries again).
                    if !out.failed.iter().any(|(s, _)| matches!(s, shoal_net::Step::SetPorts(_))) {
                        let now = published_tasks(&d, &current.tasks);
                        reports.published.send_if_modified(|p| {
                            let changed = *p != now;
                            *p = now;
                            changed
                        });
                    }
                    let mut map: BTreeMap<String, Readiness> = BTreeMap::new();
                    for t in &d.tasks {
                        let r = out.task_error(&t.task_id).map_or(Readiness::Ready, Readiness::Failed);
                        map.insert(t.task_id.clone(), r);
                    }
                    for (id, why) in unready {
                        map.insert(id, Readiness::Failed(why));
                    }
                    if host.dns {
                        let table =
                            Arc::new(dns::Table::new(&dns_entries(view), &dns_vips(view)).with_ttl(host.dns_ttl));
                        resolvers.table.send_if_modified(|t| {
                            let changed = **t != *table;
                            *t = table;
                            changed
                        });
                        resolvers.sync(&exec, &d, &current.tasks, &mut map, &cancel).await;
                        if map.values().any(|r| matches!(r, Readiness::Failed(_))) {
                            retry = Duration::from_secs(1);
                        }
                    }
                    reports.ready.send_if_modified(|m| {
                        let changed = *m != map;
                        *m = map;
                        changed
                    });
                    if !out.failed.is_empty() {
                        retry = Duration::from_secs(1);
                    } else {
                        // Installed everywhere on this host: the leader may let stopping tasks go.
                        reports.acks.send_if_modified(|a| {
                            let newer = current.view_seq > *a;
                            if newer {
                                *a = current.view_seq;
                            }
                            newer
                        });
                    }
                }
                Err(e) => {
                    tracing::warn!(error = %e, "cannot read the host's network state; retrying");
                    retry = Duration::from_secs(1);
                }
            }
        }
        tokio::select! {
            _ = cancel.cancelled() => return,
            r = inputs.changed() => if r.is_err() { return },
            _ = tokio::time::sleep(retry) => {}
        }
    }
}

/// The files a task's `/etc` gets (name, content): its resolver, its own name and addresses.
/// Pure.
pub fn etc_files(hostname: &str, addresses: &[Ipv4Addr]) -> Vec<(&'static str, String)> {
    let mut hosts = String::from("127.0.0.1\tlocalhost\n::1\tlocalhost ip6-localhost ip6-loopback\n");
    for a in addresses {
        hosts.push_str(&format!("{a}\t{hostname}\n"));
    }
    vec![
        ("resolv.conf", format!("nameserver {}\noptions ndots:0\n", dns::ADDRESS)),
        ("hosts", hosts),
        ("hostname", format!("{hostname}\n")),
    ]
}

/// Writes a task's `/etc` files under `dir` and returns the bind mounts that put them in its
/// container (leaving out a target the task mounts itself).
pub fn write_etc(
    dir: &std::path::Path,
    hostname: &str,
    task: &shoal_api::v1::Task,
    taken: &[shoal_runtime::MountSpec],
) -> Result<Vec<shoal_runtime::MountSpec>, String> {
    use shoal_runtime::MountSpec;
    std::fs::create_dir_all(dir).map_err(|e| format!("{}: {e}", dir.display()))?;
    let addresses: Vec<Ipv4Addr> =
        task.networks.iter().filter_map(|a| Net::parse(&a.address)).map(|n| n.addr).collect();
    let mut mounts = Vec::new();
    for (name, content) in etc_files(hostname, &addresses) {
        let path = dir.join(name);
        std::fs::write(&path, content).map_err(|e| format!("{}: {e}", path.display()))?;
        let target = format!("/etc/{name}");
        let mounted = taken.iter().any(|m| match m {
            MountSpec::Bind { target: t, .. }
            | MountSpec::Volume { target: t, .. }
            | MountSpec::Tmpfs { target: t, .. } => *t == target,
        });
        if !mounted {
            mounts.push(MountSpec::Bind { source: path, target, read_only: false });
        }
    }
    Ok(mounts)
}

/// Waits until the loop reports task `id`'s network, for at most `limit`.
pub async fn wait_ready(
    ready: &mut watch::Receiver<BTreeMap<String, Readiness>>,
    id: &str,
    limit: Duration,
) -> Result<(), String> {
    let wait = async {
        loop {
            if let Some(r) = ready.borrow_and_update().get(id).cloned() {
                return match r {
                    Readiness::Ready => Ok(()),
                    Readiness::Failed(why) => Err(why),
                };
            }
            if ready.changed().await.is_err() {
                return Err("the agent is stopping".to_string());
            }
        }
    };
    tokio::time::timeout(limit, wait)
        .await
        .unwrap_or_else(|_| Err(format!("the task's network was not ready within {}s", limit.as_secs())))
}

#[cfg(test)]
mod tests {
    use super::*;
    use shoal_api::v1::{Meta, NetworkSpec};

    fn network(id: &str, vni: u32, subnet: &str, internal: bool) -> Network {
        Network {
            meta: Some(Meta { id: id.into(), ..Default::default() }),
            spec: Some(NetworkSpec { internal, ..Default::default() }),
            subnet: subnet.into(),
            vni,
            ..Default::default()
        }
    }

    fn endpoint(net: &str, node: &str, addr: &str, host: &str) -> Endpoint {
        Endpoint {
            network_id: net.into(),
            node_id: node.into(),
            address: addr.into(),
            node_addr: host.into(),
            ..Default::default()
        }
    }

    fn host() -> Host {
        Host {
            node_id: "me".into(),
            local: Some(Ipv4Addr::new(192, 168, 1, 1)),
            gateway: Net::parse("172.18.0.1/16"),
            underlay_mtu: 1400,
            dns: false,
            dns_ttl: 5,
        }
    }

    fn attach(net: &str, addr: &str) -> NetworkAttachment {
        NetworkAttachment { network_id: net.into(), address: addr.into(), aliases: vec![] }
    }

    #[test]
    fn tasks_get_their_overlays_egress_and_remote_peers() {
        let view = View {
            networks: vec![network("n1", 4097, "10.0.1.0/24", false), network("n2", 4098, "10.0.2.0/24", true)],
            endpoints: vec![
                endpoint("n1", "me", "10.0.1.2/24", "192.168.1.1"),
                endpoint("n1", "other", "10.0.1.3/24", "192.168.1.2"),
                endpoint("n2", "other", "10.0.2.3/24", "192.168.1.2"),
                endpoint("n2", "unresolvable", "10.0.2.4/24", "nowhere"),
            ],
            port: 0,
            vips: vec![ServiceVip {
                network_id: "n1".into(),
                service_id: "s1".into(),
                service_name: "web".into(),
                address: "10.0.1.100/24".into(),
            }],
            ingress_ports: vec![],
        };
        let mut view = view;
        for e in view.endpoints.iter_mut().filter(|e| e.network_id == "n1") {
            e.service_id = "s1".into();
            e.serving = true;
        }
        let tasks = BTreeMap::from([
            (
                "a".to_string(),
                LocalTask {
                    attachments: vec![attach("n1", "10.0.1.2/24")],
                    gateway_address: Some(Ipv4Addr::new(172, 18, 0, 2)),
                    host_ports: vec![
                        shoal_api::v1::PortConfig { target_port: 80, published_port: 8080, ..Default::default() },
                        shoal_api::v1::PortConfig {
                            target_port: 53,
                            published_port: 5353,
                            protocol: shoal_api::v1::port_config::Protocol::Udp as i32,
                            ..Default::default()
                        },
                    ],
                    serving: true,
                    ..Default::default()
                },
            ),
            (
                "b".to_string(),
                LocalTask {
                    attachments: vec![attach("n2", "10.0.2.2/24")],
                    gateway_address: None,
                    host_ports: vec![],
                    ..Default::default()
                },
            ),
        ]);
        let resolve = |h: &str| h.parse().ok();
        let (d, unready) = desired(&view, &tasks, &host(), &resolve);
        assert!(unready.is_empty(), "{unready:?}");
        assert_eq!(d.port, 4789);
        assert_eq!(d.overlays.iter().map(|o| (o.vni, o.mtu)).collect::<Vec<_>>(), [(4097, 1350), (4098, 1350)]);
        assert_eq!(
            d.remotes.iter().map(|r| (r.vni, r.address.to_string(), r.host.to_string())).collect::<Vec<_>>(),
            [(4097, "10.0.1.3".into(), "192.168.1.2".into()), (4098, "10.0.2.3".into(), "192.168.1.2".into())],
            "not the node's own tasks, not a host that does not resolve"
        );
        let a = &d.tasks[0];
        assert_eq!(a.interfaces.len(), 2, "an overlay and egress");
        assert_eq!(a.interfaces[1].gateway, Some(Ipv4Addr::new(172, 18, 0, 1)));
        assert_eq!(a.interfaces[1].address.to_string(), "172.18.0.2/16");
        assert_eq!(d.tasks[1].interfaces.len(), 1, "an internal network only: no egress");
        assert_eq!(
            d.tasks[0].vips,
            [shoal_net::Vip {
                vip: Ipv4Addr::new(10, 0, 1, 100),
                backends: vec![Ipv4Addr::new(10, 0, 1, 2), Ipv4Addr::new(10, 0, 1, 3)]
            }],
            "the VIP of its network, to the service's serving tasks here and elsewhere"
        );
        assert!(d.tasks[1].vips.is_empty(), "no VIP on the other network");
        let gw = Ipv4Addr::new(172, 18, 0, 2);
        assert_eq!(
            d.ports,
            [
                shoal_net::PublishedPort {
                    udp: false,
                    published: 8080,
                    target: 80,
                    backends: vec![gw],
                    masquerade: false
                },
                shoal_net::PublishedPort {
                    udp: true,
                    published: 5353,
                    target: 53,
                    backends: vec![gw],
                    masquerade: false
                },
            ],
            "host-mode ports lead to the task's egress address"
        );
        assert!(d.gateway.is_some());
        let mut stopping = tasks.clone();
        if let Some(t) = stopping.get_mut("a") {
            t.serving = false;
        }
        let (d, _) = desired(&view, &stopping, &host(), &resolve);
        assert!(d.ports.is_empty(), "a task that is to stop takes no new connection");
        assert_eq!(d.tasks.len(), 2, "but keeps its network until it is gone");
    }

    #[test]
    fn every_node_forwards_ingress_ports_from_its_own_address_on_the_ingress_network() {
        use shoal_api::v1::{port_config::Protocol, IngressPort};
        let mut ingress = network("ing", 4096, "10.255.0.0/16", false);
        if let Some(s) = ingress.spec.as_mut() {
            s.ingress = true;
        }
        let serving = |mut e: Endpoint, task: &str| {
            e.task_id = task.into();
            e.service_id = "web".into();
            e.serving = true;
            e
        };
        let view = View {
            networks: vec![ingress],
            endpoints: vec![
                // Nodes' own addresses (no task), this one's included.
                endpoint("ing", "me", "10.255.0.2/16", "192.168.1.1"),
                endpoint("ing", "other", "10.255.0.3/16", "192.168.1.2"),
                serving(endpoint("ing", "other", "10.255.0.9/16", "192.168.1.2"), "t9"),
                Endpoint { serving: false, ..serving(endpoint("ing", "other", "10.255.0.8/16", "192.168.1.2"), "t8") },
            ],
            ingress_ports: vec![
                IngressPort {
                    service_id: "web".into(),
                    protocol: Protocol::Tcp as i32,
                    published_port: 8080,
                    target_port: 80,
                    local: false,
                },
                IngressPort {
                    service_id: "web".into(),
                    protocol: Protocol::Udp as i32,
                    published_port: 5353,
                    target_port: 53,
                    local: true,
                },
            ],
            ..Default::default()
        };
        let local = |serving: bool, n: u8| LocalTask {
            gateway_address: Some(Ipv4Addr::new(172, 18, 0, n)),
            service_id: "web".into(),
            serving,
            ..Default::default()
        };
        let tasks = BTreeMap::from([("l1".to_string(), local(true, 2)), ("l2".to_string(), local(false, 3))]);
        let (d, unready) = desired(&view, &tasks, &host(), &|h| h.parse().ok());
        assert!(unready.is_empty(), "{unready:?}");
        assert_eq!(d.overlays.len(), 1, "on the ingress network without a task of its own on it");
        assert_eq!(d.overlays[0].address, Net::parse("10.255.0.2/16"), "with its own address there");
        assert_eq!(
            d.remotes.iter().map(|r| r.address.to_string()).collect::<Vec<_>>(),
            ["10.255.0.3", "10.255.0.8", "10.255.0.9"],
            "every other node and task on it"
        );
        assert_eq!(
            d.ports,
            [
                shoal_net::PublishedPort {
                    udp: false,
                    published: 8080,
                    target: 80,
                    backends: vec![Ipv4Addr::new(10, 255, 0, 9)],
                    masquerade: true
                },
                shoal_net::PublishedPort {
                    udp: true,
                    published: 5353,
                    target: 53,
                    backends: vec![Ipv4Addr::new(172, 18, 0, 2)],
                    masquerade: false
                },
            ],
            "traffic=cluster: serving tasks anywhere; traffic=local: the node's own serving tasks"
        );
        assert!(dns_entries(&view).is_empty(), "nothing is looked up on the ingress network");

        // Without its own address yet, the node forwards nothing over the ingress network.
        let mut early = view.clone();
        early.endpoints.retain(|e| e.node_id != "me");
        let (d, _) = desired(&early, &tasks, &host(), &|h| h.parse().ok());
        assert!(d.overlays.is_empty());
        assert!(d.ports[0].backends.is_empty(), "refused rather than sent where replies cannot return");
    }

    #[test]
    fn a_task_whose_network_is_unknown_or_without_egress_address_waits_with_a_reason() {
        let view = View { networks: vec![network("n1", 4097, "10.0.1.0/24", false)], ..Default::default() };
        let tasks = BTreeMap::from([
            (
                "a".to_string(),
                LocalTask {
                    attachments: vec![attach("nx", "10.9.0.2/24")],
                    gateway_address: None,
                    host_ports: vec![],
                    ..Default::default()
                },
            ),
            (
                "b".to_string(),
                LocalTask { attachments: vec![], gateway_address: None, host_ports: vec![], ..Default::default() },
            ),
        ]);
        let (d, unready) = desired(&view, &tasks, &host(), &|_| None);
        assert!(d.tasks.is_empty() && d.overlays.is_empty() && d.gateway.is_none());
        assert!(unready[0].1.contains("network nx is not known"), "{unready:?}");
        assert!(unready[1].1.contains("no free address for egress"), "{unready:?}");
        let no_gw = Host { gateway: None, ..host() };
        let (_, unready) = desired(&view, &tasks, &no_gw, &|_| None);
        assert!(unready[1].1.contains("is free for egress"), "{unready:?}");
    }

    #[test]
    fn etc_files_name_the_resolver_and_the_task() {
        let f = etc_files("web.2", &[Ipv4Addr::new(10, 0, 1, 5)]);
        assert_eq!(f[0], ("resolv.conf", "nameserver 127.0.0.11\noptions ndots:0\n".to_string()));
        assert!(f[1].1.ends_with("10.0.1.5\tweb.2\n") && f[1].1.starts_with("127.0.0.1\tlocalhost"), "{}", f[1].1);
        assert_eq!(f[2].1, "web.2\n");
        let dir = tempfile::tempdir().expect("tempdir");
        let task = shoal_api::v1::Task { networks: vec![attach("n1", "10.0.1.5/24")], ..Default::default() };
        let own = shoal_runtime::MountSpec::Bind { source: "/x".into(), target: "/etc/hosts".into(), read_only: true };
        let m = write_etc(dir.path(), "web.2", &task, &[own]).expect("write");
        assert_eq!(m.len(), 2, "the task's own /etc/hosts stays: {m:?}");
        assert!(std::fs::read_to_string(dir.path().join("hosts")).is_ok_and(|h| h.contains("10.0.1.5")));
    }

    #[test]
    fn the_mtu_option_wins() {
        let mut n = network("n1", 4097, "10.0.1.0/24", false);
        assert_eq!(mtu_of(&n, 1500), 1450);
        if let Some(s) = n.spec.as_mut() {
            s.options.insert("mtu".into(), "1200".into());
        }
        assert_eq!(mtu_of(&n, 1500), 1200);
    }

    #[tokio::test]
    async fn the_loop_makes_namespaces_and_reports_them() {
        let fake = Arc::new(shoal_net::fake::Fake::default());
        fake.broken.lock().unwrap_or_else(|e| e.into_inner()).push("bad".into());
        let (tx, rx) = watch::channel(Inputs::default());
        let (ready_tx, mut ready) = watch::channel(BTreeMap::new());
        let (acks, mut acked) = watch::channel(0);
        let (published_tx, mut published) = watch::channel(BTreeSet::new());
        let cancel = CancellationToken::new();
        let reports = Reports { ready: ready_tx, acks, published: published_tx };
        let job = tokio::spawn(run(fake.clone(), rx, reports, host(), cancel.clone()));
        let egress = |n: u8| LocalTask {
            attachments: vec![],
            gateway_address: Some(Ipv4Addr::new(172, 18, 0, n)),
            ..Default::default()
        };
        tx.send_modify(|i| {
            i.tasks.insert("good".into(), egress(2));
            i.tasks.insert("bad".into(), egress(3));
        });
        assert!(fake.observed().namespaces.is_empty(), "nothing changes before the view is known");
        tx.send_modify(|i| {
            i.view = Some(View::default());
            i.view_seq = 3;
        });
        let limit = Duration::from_secs(5);
        assert_eq!(wait_ready(&mut ready, "good", limit).await, Ok(()));
        let bad = wait_ready(&mut ready, "bad", limit).await;
        assert!(bad.is_err_and(|e| e.contains("refused")));
        assert_eq!(fake.observed().namespaces, ["good"]);

        // A running task with a host-mode port is what the port leads to, until it is to stop.
        let port = shoal_api::v1::PortConfig { target_port: 80, published_port: 8080, ..Default::default() };
        tx.send_modify(|i| {
            if let Some(t) = i.tasks.get_mut("good") {
                t.host_ports = vec![port.clone()];
                t.serving = true;
            }
        });
        tokio::time::timeout(limit, published.wait_for(|p| p.contains("good"))).await.expect("published").expect("p");
        tx.send_modify(|i| {
            if let Some(t) = i.tasks.get_mut("good") {
                t.serving = false;
            }
        });
        tokio::time::timeout(limit, published.wait_for(|p| p.is_empty())).await.expect("withdrawn").expect("p");
        assert_eq!(fake.observed().ports, None, "the port is gone before the task is stopped");
        assert_eq!(*acked.borrow_and_update(), 0, "a pass with a failed step acknowledges nothing");
        tx.send_modify(|i| {
            i.tasks.clear();
        });
        tokio::time::timeout(limit, async {
            while !fake.observed().namespaces.is_empty() {
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        })
        .await
        .expect("the namespace goes with its task");
        tokio::time::timeout(limit, acked.wait_for(|a| *a == 3)).await.expect("acknowledged").expect("ack");
        cancel.cancel();
        job.await.expect("loop ends");
    }
}
