//! Allocation decisions over the replicated state: a new network's subnet, gateway and VNI
//! (taken when the network is created), and the addresses services and tasks need (taken by the
//! leader's allocator pass, before the scheduler places a task).

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;

use shoal_api::v1::{
    endpoint_spec, object, op, NetworkAttachment, NetworkDefaults, NetworkSpec, Object, Op, Service, Task, TaskState,
    TaskStatus, VirtualIp,
};
use shoal_store::Store;

use crate::{fmt_addr, next_address, next_subnet, next_vni, parse_addr, Cidr};

/// The pool new subnets come from when the cluster names none.
pub const DEFAULT_POOL: &str = "10.0.0.0/8";
/// The prefix length of subnets taken from the pools when the cluster names none.
pub const DEFAULT_PREFIX: u8 = 24;

/// Where new subnets come from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Pools {
    /// The address pools, in order.
    pub pools: Vec<Cidr>,
    /// The prefix length of each subnet taken from them.
    pub prefix: u8,
}

/// Why an allocation cannot be made; each says what to do about it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AllocError {
    /// A subnet, gateway or pool that does not parse or does not fit.
    Invalid(String),
    /// The requested subnet overlaps something (`what`: a network, or a node's addresses).
    Overlaps { subnet: String, what: String },
    /// No subnet of the pool's size is free.
    PoolExhausted { pools: String, prefix: u8 },
    /// Every VXLAN id is in use.
    NoVni,
}

impl fmt::Display for AllocError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            AllocError::Invalid(m) => f.write_str(m),
            AllocError::Overlaps { subnet, what } => {
                write!(f, "subnet {subnet} overlaps {what}; choose another --subnet")
            }
            AllocError::PoolExhausted { pools, prefix } => write!(
                f,
                "no free /{prefix} subnet in the address pools {pools}: networks and the nodes' own addresses and routes take them all; remove a network, or give a --subnet"
            ),
            AllocError::NoVni => f.write_str("every VXLAN id is in use; remove a network first"),
        }
    }
}

impl std::error::Error for AllocError {}

/// The pools `defaults` name (the defaults where they name none).
pub fn pools(settings: &NetworkDefaults) -> Result<Pools, AllocError> {
    let texts: Vec<&str> = if settings.default_addr_pool.is_empty() {
        vec![DEFAULT_POOL]
    } else {
        settings.default_addr_pool.iter().map(String::as_str).collect()
    };
    let pools = texts
        .iter()
        .map(|t| Cidr::parse(t).map_err(|e| AllocError::Invalid(format!("default address pool: {e}"))))
        .collect::<Result<Vec<_>, _>>()?;
    let prefix = match settings.default_addr_pool_mask_length {
        0 => DEFAULT_PREFIX,
        n => u8::try_from(n).unwrap_or(u8::MAX),
    };
    if !(8..=29).contains(&prefix) {
        return Err(AllocError::Invalid(format!(
            "default address pool mask length {prefix}: must be between 8 and 29"
        )));
    }
    if let Some(p) = pools.iter().find(|p| p.prefix_len() > prefix) {
        return Err(AllocError::Invalid(format!(
            "the address pool {p} is smaller than one /{prefix} subnet; use a shorter mask length or a larger pool"
        )));
    }
    Ok(Pools { pools, prefix })
}

/// What a new network gets.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NetworkAllocation {
    /// Its subnet, in CIDR notation.
    pub subnet: String,
    /// Its gateway address (dotted).
    pub gateway: String,
    /// Its VXLAN id.
    pub vni: u32,
}

/// The networks the nodes' own addresses and routes cover, with who has them. A default
/// route (`/0`) covers everything and is not counted.
fn host_networks(store: &Store) -> Vec<(Cidr, String)> {
    let mut out = Vec::new();
    for n in store.nodes() {
        let Some(d) = n.description.as_ref() else { continue };
        for h in &d.host_networks {
            if let Ok((_, net)) = Cidr::parse_interface(h) {
                if net.prefix_len() > 0 {
                    out.push((net, d.hostname.clone()));
                }
            }
        }
    }
    out
}

/// The ingress network's subnet when it overlaps nothing: a /16, so every node and every task
/// publishing a port has room on it in a large cluster.
pub const INGRESS_SUBNET: &str = "10.255.0.0/16";

/// Subnet, gateway and VNI of the ingress network `cluster init` makes: [`INGRESS_SUBNET`]
/// unless it overlaps a network or one of `host_networks` (the first node's, not in the store
/// yet), else the next free subnet of the pools.
pub fn allocate_ingress(
    store: &Store,
    host_networks: &[String],
    pools: &Pools,
) -> Result<NetworkAllocation, AllocError> {
    let extra: Vec<(Cidr, String)> = host_networks
        .iter()
        .filter_map(|h| Cidr::parse_interface(h).ok().map(|(_, c)| c))
        .filter(|c| c.prefix_len() > 0)
        .map(|c| (c, format!("{c}, a network of this node")))
        .collect();
    let fixed = NetworkSpec { subnet: INGRESS_SUBNET.into(), ingress: true, ..Default::default() };
    match allocate_with(store, &fixed, pools, &extra) {
        Err(AllocError::Overlaps { .. }) => {
            allocate_with(store, &NetworkSpec { ingress: true, ..Default::default() }, pools, &extra)
        }
        other => other,
    }
}

/// Subnet, gateway and VNI for a new network with `spec`, given every network in `store`:
/// the requested subnet when it overlaps nothing, else the next free one from `pools`.
pub fn allocate_network(store: &Store, spec: &NetworkSpec, pools: &Pools) -> Result<NetworkAllocation, AllocError> {
    allocate_with(store, spec, pools, &[])
}

fn allocate_with(
    store: &Store,
    spec: &NetworkSpec,
    pools: &Pools,
    extra: &[(Cidr, String)],
) -> Result<NetworkAllocation, AllocError> {
    let mut taken: Vec<(Cidr, String)> = Vec::new();
    let mut vnis = BTreeSet::new();
    for n in store.networks() {
        if let Ok(c) = Cidr::parse(&n.subnet) {
            let name = n.spec.as_ref().and_then(|s| s.annotations.as_ref()).map(|a| a.name.clone()).unwrap_or_default();
            taken.push((c, format!("network {name:?}")));
        }
        if n.vni != 0 {
            vnis.insert(n.vni);
        }
    }
    let hosts: Vec<(Cidr, String)> = host_networks(store)
        .into_iter()
        .map(|(c, host)| (c, format!("{c}, a network of node {host} (its addresses or routes)")))
        .chain(extra.iter().cloned())
        .collect();
    let subnet = if spec.subnet.is_empty() {
        let all: Vec<Cidr> = taken.iter().chain(hosts.iter()).map(|(c, _)| *c).collect();
        next_subnet(&pools.pools, pools.prefix, &all).ok_or_else(|| AllocError::PoolExhausted {
            pools: pools.pools.iter().map(ToString::to_string).collect::<Vec<_>>().join(", "),
            prefix: pools.prefix,
        })?
    } else {
        let s = Cidr::parse(&spec.subnet).map_err(|e| AllocError::Invalid(format!("--subnet: {e}")))?;
        if s.hosts().is_none_or(|(first, last)| last <= first) {
            return Err(AllocError::Invalid(format!("--subnet {s} is too small: use a /29 or larger")));
        }
        if let Some((_, what)) = taken.iter().chain(hosts.iter()).find(|(c, _)| c.overlaps(&s)) {
            return Err(AllocError::Overlaps { subnet: s.to_string(), what: what.clone() });
        }
        s
    };
    let (first, last) = subnet.hosts().ok_or_else(|| AllocError::Invalid(format!("{subnet} has no host addresses")))?;
    let gateway = if spec.gateway.is_empty() {
        first
    } else {
        let g = parse_addr(&spec.gateway).map_err(|e| AllocError::Invalid(format!("--gateway: {e}")))?;
        if g < first || g > last {
            return Err(AllocError::Invalid(format!(
                "--gateway {} is not a host address of the subnet {subnet}",
                fmt_addr(g)
            )));
        }
        g
    };
    let vni = next_vni(&vnis).ok_or(AllocError::NoVni)?;
    Ok(NetworkAllocation { subnet: subnet.to_string(), gateway: fmt_addr(gateway), vni })
}

/// Whether a task's addresses are still its own: until it ended (a task told to stop still
/// holds them while its container runs).
fn holds_addresses(t: &Task) -> bool {
    t.status.as_ref().map_or(0, |s| s.state) < TaskState::Complete as i32
}

/// Whether a task has not started yet, so the allocator may give it addresses: wanted (desired
/// `RUNNING` or `READY`) and waiting to be placed, or (a global service's) created on its node.
fn awaits_placement(t: &Task) -> bool {
    t.desired_state <= TaskState::Running as i32
        && t.status.as_ref().map_or(0, |s| s.state) <= TaskState::Assigned as i32
}

/// The tasks that may need addresses: those waiting to be placed (indexed) and the new tasks
/// of global services (created on their node), never a walk over every task.
fn candidates(store: &Store) -> impl Iterator<Item = &Task> {
    let globals: Vec<&str> = store
        .services()
        .filter(|s| !network_targets(s).is_empty() || joins_ingress(s))
        .filter(|s| {
            matches!(
                s.spec.as_ref().and_then(|sp| sp.mode.as_ref()),
                Some(shoal_api::v1::service_spec::Mode::Global(_) | shoal_api::v1::service_spec::Mode::GlobalJob(_))
            )
        })
        .filter_map(|s| s.meta.as_ref().map(|m| m.id.as_str()))
        .collect();
    store
        .unassigned_tasks()
        .chain(globals.into_iter().flat_map(|id| store.tasks_by_service(id)).filter(|t| !t.node_id.is_empty()))
        .filter(|t| awaits_placement(t) && !attached(t))
}

fn attached(t: &Task) -> bool {
    t.networks_attached()
}

fn uses_vip(s: &Service) -> bool {
    s.spec.as_ref().and_then(|s| s.endpoint_spec.as_ref()).is_none_or(|e| e.mode() == endpoint_spec::Mode::Vip)
}

fn joins_ingress(s: &Service) -> bool {
    s.spec.as_ref().is_some_and(shoal_api::v1::ServiceSpec::joins_ingress)
}

/// Whether nodes need their address on the ingress network: some service publishes a port
/// through it.
fn ingress_in_use(store: &Store) -> bool {
    store.services().any(joins_ingress)
}

fn network_targets(s: &Service) -> Vec<String> {
    s.spec
        .as_ref()
        .and_then(|s| s.task_template.as_ref())
        .map(|t| t.networks.iter().map(|n| n.target.clone()).collect())
        .unwrap_or_default()
}

/// One network's addresses: its subnet, what is taken, and the last one handed out.
struct Space {
    name: String,
    subnet: Cidr,
    taken: BTreeSet<u32>,
    last: Option<u32>,
}

impl Space {
    fn take(&mut self) -> Option<String> {
        let a = next_address(self.subnet, &self.taken, self.last)?;
        self.taken.insert(a);
        self.last = Some(a);
        Some(self.subnet.interface(a))
    }

    fn exhausted(&self) -> String {
        format!("no free address on network {:?} ({})", self.name, self.subnet)
    }
}

/// What the allocator pass decided: the objects to write, and tasks that could not get an
/// address (their status says why, where `service ps` shows it).
#[derive(Debug, Default, Clone, PartialEq)]
pub struct AddressPlan {
    /// Versioned updates of services (VIPs) and tasks (attachments, or the reason they wait).
    pub ops: Vec<Op>,
}

fn update(kind: object::Kind) -> Op {
    Op { kind: Some(op::Kind::Update(Object { kind: Some(kind) })) }
}

/// Gives a VIP to every service attached to a network (VIP mode) that lacks one there, drops
/// the VIPs of networks a service left, and gives every task waiting for placement an address
/// on each network of its spec. What is taken is read from `store` (gateways, VIPs, the
/// addresses of tasks that have not ended), so nothing is handed out twice or kept by what is
/// gone.
pub fn plan_addresses(store: &Store) -> AddressPlan {
    // Without a network there is nothing to give (and this runs after every apply).
    if store.networks().next().is_none() {
        return AddressPlan::default();
    }
    let ingress = store.ingress_network().filter(|_| ingress_in_use(store));
    let ingress_id = ingress.and_then(|n| n.meta.as_ref()).map(|m| m.id.clone());
    let needs_work = candidates(store).next().is_some()
        || (ingress_id.is_some() && store.nodes().any(|n| n.ingress_address.is_empty()))
        || store.services().any(|s| {
            let targets = network_targets(s);
            let vip = uses_vip(s);
            (vip && targets.iter().any(|n| !s.virtual_ips.iter().any(|v| &v.network_id == n)))
                || s.virtual_ips.iter().any(|v| !vip || !targets.contains(&v.network_id))
        });
    if !needs_work {
        return AddressPlan::default();
    }
    let mut spaces: BTreeMap<String, Space> = BTreeMap::new();
    for n in store.networks() {
        let (Ok(subnet), Some(meta)) = (Cidr::parse(&n.subnet), n.meta.as_ref()) else { continue };
        let name = n.spec.as_ref().and_then(|s| s.annotations.as_ref()).map(|a| a.name.clone()).unwrap_or_default();
        let mut taken = BTreeSet::new();
        if let Ok(g) = parse_addr(&n.gateway) {
            taken.insert(g);
        }
        spaces.insert(meta.id.clone(), Space { name, subnet, taken, last: None });
    }
    let mut record = |net: &str, addr: &str| {
        if let (Some(space), Ok((a, _))) = (spaces.get_mut(net), Cidr::parse_interface(addr)) {
            space.taken.insert(a);
            space.last = space.last.max(Some(a));
        }
    };
    for s in store.services() {
        for v in &s.virtual_ips {
            record(&v.network_id, &v.address);
        }
    }
    for t in store.tasks().filter(|t| holds_addresses(t)) {
        for a in &t.networks {
            record(&a.network_id, &a.address);
        }
    }
    let mut ops = Vec::new();
    if let Some(ingress_id) = &ingress_id {
        for n in store.nodes() {
            if !n.ingress_address.is_empty() {
                record(ingress_id, &n.ingress_address);
            }
        }
        for n in store.nodes().filter(|n| n.ingress_address.is_empty()) {
            // An exhausted ingress network leaves the node without one: it then forwards no
            // ingress port (its agent says so), and gets one as soon as an address is free.
            if let Some(address) = spaces.get_mut(ingress_id).and_then(Space::take) {
                let mut next = n.clone();
                next.ingress_address = address;
                ops.push(update(object::Kind::Node(next)));
            }
        }
    }
    for s in store.services() {
        let targets = network_targets(s);
        let vip = uses_vip(s);
        let mut vips: Vec<VirtualIp> =
            s.virtual_ips.iter().filter(|v| vip && targets.contains(&v.network_id)).cloned().collect();
        if vip {
            for n in &targets {
                if vips.iter().any(|v| &v.network_id == n) {
                    continue;
                }
                if let Some(address) = spaces.get_mut(n).and_then(Space::take) {
                    vips.push(VirtualIp { network_id: n.clone(), address });
                }
            }
        }
        if vips != s.virtual_ips {
            let mut next = s.clone();
            next.virtual_ips = vips;
            ops.push(update(object::Kind::Service(next)));
        }
    }
    let waiting: Vec<&Task> = candidates(store).collect();
    for t in waiting {
        let mut next = t.clone();
        let mut short = None;
        // Attachments asked for without an address (the ingress network's).
        for a in next.networks.iter_mut().filter(|a| a.address.is_empty()) {
            let Some(space) = spaces.get_mut(&a.network_id) else {
                short = Some(format!("network {} does not exist", a.network_id));
                break;
            };
            match space.take() {
                Some(address) => a.address = address,
                None => {
                    short = Some(space.exhausted());
                    break;
                }
            }
        }
        for want in t.spec.as_ref().map(|s| s.networks.as_slice()).unwrap_or_default() {
            if short.is_some() {
                break;
            }
            if next.networks.iter().any(|a| a.network_id == want.target && !a.address.is_empty()) {
                continue;
            }
            let Some(space) = spaces.get_mut(&want.target) else {
                short = Some(format!("network {} does not exist", want.target));
                break;
            };
            match space.take() {
                Some(address) => {
                    next.networks.retain(|a| a.network_id != want.target);
                    next.networks.push(NetworkAttachment {
                        network_id: want.target.clone(),
                        address,
                        aliases: want.aliases.clone(),
                    });
                }
                None => {
                    short = Some(space.exhausted());
                    break;
                }
            }
        }
        if let Some(why) = short {
            // Nothing is half given: the task keeps no address until it can have all of them.
            let current = t.status.as_ref().map(|s| s.message.as_str()).unwrap_or_default();
            if current == why {
                continue;
            }
            next = t.clone();
            let status = next.status.get_or_insert_with(TaskStatus::default);
            status.message = why;
        }
        ops.push(update(object::Kind::Task(next)));
    }
    AddressPlan { ops }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use shoal_api::v1::{Annotations, Meta, Network, NetworkAttachmentConfig, NodeDescription};
    use shoal_scheduler::testing::{node, replicated, task, World};

    fn network(id: &str, subnet: &str) -> Network {
        let (_, net) = Cidr::parse_interface(subnet).expect("valid");
        Network {
            meta: Some(Meta { id: id.into(), ..Default::default() }),
            spec: Some(NetworkSpec {
                annotations: Some(Annotations { name: id.into(), ..Default::default() }),
                driver: "overlay".into(),
                ..Default::default()
            }),
            subnet: net.to_string(),
            gateway: fmt_addr(net.base() + 1),
            vni: 4096,
        }
    }

    fn on_network(mut s: Service, net: &str) -> Service {
        if let Some(t) = s.spec.as_mut().and_then(|s| s.task_template.as_mut()) {
            t.networks = vec![NetworkAttachmentConfig { target: net.into(), aliases: vec![] }];
        }
        s
    }

    fn default_pools() -> Pools {
        pools(&NetworkDefaults::default()).expect("defaults are valid")
    }

    #[test]
    fn new_networks_take_the_next_subnet_and_vni_and_skip_the_nodes_own_networks() {
        let mut w = World::new();
        let spec = NetworkSpec::default();
        let a = allocate_network(&w.store, &spec, &default_pools()).expect("free");
        assert_eq!(a, NetworkAllocation { subnet: "10.0.0.0/24".into(), gateway: "10.0.0.1".into(), vni: 4096 });
        w.add(network("n1", "10.0.0.0/24"));
        let mut host = node("h1");
        host.description = Some(NodeDescription {
            hostname: "host1".into(),
            host_networks: vec!["10.0.1.17/24".into(), "0.0.0.0/0".into()],
            ..Default::default()
        });
        w.add(host);
        let b = allocate_network(&w.store, &spec, &default_pools()).expect("free");
        assert_eq!((b.subnet.as_str(), b.vni), ("10.0.2.0/24", 4097), "10.0.1.0/24 is host1's");
        let asked = |subnet: &str, gateway: &str| NetworkSpec {
            subnet: subnet.into(),
            gateway: gateway.into(),
            ..Default::default()
        };
        let e = allocate_network(&w.store, &asked("10.0.1.0/25", ""), &default_pools()).expect_err("host's");
        assert_eq!(
            e.to_string(),
            "subnet 10.0.1.0/25 overlaps 10.0.1.0/24, a network of node host1 (its addresses or routes); choose another --subnet"
        );
        let e = allocate_network(&w.store, &asked("10.0.0.0/16", ""), &default_pools()).expect_err("n1's");
        assert_eq!(e.to_string(), "subnet 10.0.0.0/16 overlaps network \"n1\"; choose another --subnet");
        let e = allocate_network(&w.store, &asked("192.168.5.0/24", "192.168.6.1"), &default_pools()).expect_err("gw");
        assert!(e.to_string().contains("is not a host address of the subnet 192.168.5.0/24"), "{e}");
        let ok = allocate_network(&w.store, &asked("192.168.5.0/24", "192.168.5.254"), &default_pools()).expect("ok");
        assert_eq!(ok.gateway, "192.168.5.254");
        let tiny = Pools { pools: vec![Cidr::parse("10.0.0.0/23").expect("valid")], prefix: 24 };
        let e = allocate_network(&w.store, &spec, &tiny).expect_err("both /24s taken");
        assert!(matches!(e, AllocError::PoolExhausted { .. }), "{e}");
    }

    #[test]
    fn pools_refuse_what_cannot_work() {
        let s = |pool: &str, len| NetworkDefaults {
            default_addr_pool: vec![pool.into()],
            default_addr_pool_mask_length: len,
            ..Default::default()
        };
        assert_eq!(pools(&s("172.16.0.0/12", 20)).map(|p| p.prefix), Ok(20));
        assert!(pools(&s("172.16.0.0/12", 31)).is_err());
        assert!(pools(&s("10.0.0.0/26", 24)).is_err());
        assert!(pools(&s("10.0.0.1/8", 24)).is_err());
    }

    /// Applies the plan until it has nothing more to do (it converges in one pass).
    fn settle(w: &mut World) -> usize {
        let plan = plan_addresses(&w.store);
        let n = plan.ops.len();
        if n > 0 {
            w.apply(plan.ops);
        }
        n
    }

    /// Every address held (gateway, VIPs, tasks that have not ended) on `net`, by holder.
    fn holders(w: &World, net: &str) -> Vec<(String, String)> {
        let mut out = Vec::new();
        for s in w.store.services() {
            for v in s.virtual_ips.iter().filter(|v| v.network_id == net) {
                out.push((format!("vip {}", s.meta.as_ref().expect("valid").id), v.address.clone()));
            }
        }
        for t in w.store.tasks().filter(|t| holds_addresses(t)) {
            for a in t.networks.iter().filter(|a| a.network_id == net) {
                out.push((format!("task {}", t.meta.as_ref().expect("valid").id), a.address.clone()));
            }
        }
        out
    }

    #[test]
    fn services_get_a_vip_and_waiting_tasks_an_address_once() {
        let mut w = World::new();
        w.add(network("net", "10.0.5.0/24"));
        let svc = on_network(replicated("web", 2), "net");
        w.add(svc.clone());
        w.add(task("t1", &svc, 1));
        w.add(task("t2", &svc, 2));
        assert_eq!(settle(&mut w), 3, "one VIP, two task addresses");
        let got = holders(&w, "net");
        let mut addrs: Vec<&str> = got.iter().map(|(_, a)| a.as_str()).collect();
        addrs.sort();
        assert_eq!(addrs, ["10.0.5.2/24", "10.0.5.3/24", "10.0.5.4/24"], "{got:?}");
        assert_eq!(settle(&mut w), 0, "nothing more to do");
        assert!(w.store.tasks().all(attached));
    }

    #[test]
    fn publishing_through_ingress_gives_every_node_and_the_tasks_an_address_there() {
        use shoal_api::v1::{port_config::PublishMode, EndpointSpec, PortConfig};
        let mut w = World::new();
        let mut ingress = network("ing", "10.255.0.0/29");
        if let Some(s) = ingress.spec.as_mut() {
            s.ingress = true;
        }
        w.add(ingress);
        w.add_all([node("n1"), node("n2")]);
        let mut svc = replicated("web", 2);
        assert_eq!(settle(&mut w), 0, "nodes get no address while nothing publishes through ingress");
        if let Some(s) = svc.spec.as_mut() {
            s.endpoint_spec = Some(EndpointSpec {
                ports: vec![PortConfig {
                    target_port: 80,
                    published_port: 8080,
                    publish_mode: PublishMode::Ingress as i32,
                    ..Default::default()
                }],
                ..Default::default()
            });
        }
        w.add(svc.clone());
        let mut t = task("t1", &svc, 1);
        t.networks = vec![NetworkAttachment { network_id: "ing".into(), ..Default::default() }];
        let mut t2 = t.clone();
        t2.meta = Some(Meta { id: "t2".into(), ..Default::default() });
        w.add(t);
        assert!(!w.store.task("t1").is_some_and(attached), "an attachment without address waits");
        assert_eq!(settle(&mut w), 3, "two nodes and the task");
        let nodes: Vec<String> = w.store.nodes().map(|n| n.ingress_address.clone()).collect();
        assert_eq!(nodes, ["10.255.0.2/29", "10.255.0.3/29"]);
        assert_eq!(w.store.task("t1").map(|t| t.networks[0].address.clone()), Some("10.255.0.4/29".into()));
        assert!(w.store.task("t1").is_some_and(attached));
        assert_eq!(settle(&mut w), 0);
        // The network is full (.1 gateway, .2-.6 hosts): a node beyond waits, with the task's reason.
        w.add(node("n3"));
        w.add(t2);
        w.add(node("n4"));
        settle(&mut w);
        let given = w.store.nodes().filter(|n| !n.ingress_address.is_empty()).count();
        assert_eq!(given, 4, "{:?}", w.store.nodes().map(|n| &n.ingress_address).collect::<Vec<_>>());
        let t2 = w.store.task("t2").cloned().unwrap_or_default();
        assert!(
            !attached(&t2) && t2.status.as_ref().is_some_and(|s| s.message.contains("no free address on network")),
            "{t2:?}"
        );
    }

    #[test]
    fn exhaustion_is_written_where_service_ps_shows_it_and_no_address_is_half_given() {
        let mut w = World::new();
        w.add(network("small", "10.0.9.0/29")); // 6 hosts: gateway, VIP, 4 tasks
        let svc = on_network(replicated("web", 6), "small");
        w.add(svc.clone());
        for i in 1..=6 {
            w.add(task(&format!("t{i}"), &svc, i));
        }
        settle(&mut w);
        let waiting: Vec<Task> = w.store.tasks().filter(|t| !attached(t)).cloned().collect();
        assert_eq!(waiting.len(), 2);
        for t in &waiting {
            assert_eq!(t.status.as_ref().expect("valid").message, "no free address on network \"small\" (10.0.9.0/29)");
            assert!(t.networks.is_empty());
        }
        assert_eq!(settle(&mut w), 0, "the reason is written once");
        // A task ends: its address is free for a waiting one.
        w.edit_task("t1", |t| t.status.as_mut().expect("valid").state = TaskState::Failed as i32);
        assert_eq!(settle(&mut w), 1);
        assert_eq!(w.store.tasks().filter(|t| !attached(t)).count(), 1);
    }

    #[derive(Debug, Clone)]
    enum Step {
        AddTask(u8),
        EndTask(u8),
        StopTask(u8),
        Allocate,
        RemoveService,
    }

    fn step() -> impl Strategy<Value = Step> {
        prop_oneof![
            4 => (0u8..24).prop_map(Step::AddTask),
            2 => (0u8..24).prop_map(Step::EndTask),
            1 => (0u8..24).prop_map(Step::StopTask),
            3 => Just(Step::Allocate),
            1 => Just(Step::RemoveService),
        ]
    }

    proptest! {
        /// Whatever happens to tasks and services, two holders never share an address, every
        /// address lies in the subnet off the gateway, and what ended gives its address back.
        #[test]
        fn no_address_is_held_twice_and_nothing_leaks(steps in proptest::collection::vec(step(), 1..60)) {
            let mut w = World::new();
            w.add(network("net", "10.0.7.0/28")); // 14 hosts
            let svc = on_network(replicated("web", 1), "net");
            w.add(svc.clone());
            let mut service_there = true;
            for s in steps {
                match s {
                    Step::AddTask(i) => {
                        let id = format!("t{i}");
                        if service_there && w.store.task(&id).is_none() {
                            w.add(task(&id, &svc, u64::from(i) + 1));
                        }
                    }
                    Step::EndTask(i) => {
                        if w.store.task(&format!("t{i}")).is_some() {
                            w.edit_task(&format!("t{i}"), |t| {
                                t.status.as_mut().expect("valid").state = TaskState::Shutdown as i32;
                            });
                        }
                    }
                    Step::StopTask(i) => {
                        if w.store.task(&format!("t{i}")).is_some() {
                            w.edit_task(&format!("t{i}"), |t| t.desired_state = TaskState::Shutdown as i32);
                        }
                    }
                    Step::Allocate => {
                        settle(&mut w);
                        prop_assert_eq!(plan_addresses(&w.store).ops.len(), 0, "one pass is enough");
                    }
                    Step::RemoveService => {
                        if service_there {
                            w.remove(shoal_api::v1::ObjectKind::Service, "web");
                            service_there = false;
                        }
                    }
                }
                let held = holders(&w, "net");
                let mut seen = BTreeSet::new();
                for (who, a) in &held {
                    let (addr, _) = Cidr::parse_interface(a).expect("valid");
                    prop_assert!(seen.insert(addr), "{} holds {}, already held: {:?}", who, a, held);
                    let net = Cidr::parse("10.0.7.0/28").expect("valid");
                    prop_assert!(addr > net.base() + 1 && addr < net.last(), "{} outside the hosts", a);
                }
            }
            // Everything ends: every address but the gateway's and the VIPs' can be handed out again.
            let ids: Vec<String> = w.store.tasks().map(|t| t.meta.as_ref().expect("valid").id.clone()).collect();
            for id in ids {
                w.edit_task(&id, |t| t.status.as_mut().expect("valid").state = TaskState::Shutdown as i32);
            }
            let fresh = on_network(replicated("api", 11), "net");
            w.add(fresh.clone());
            for i in 0..11u64 {
                w.add(task(&format!("n{i}"), &fresh, i + 1));
            }
            settle(&mut w);
            prop_assert!(w.store.tasks().filter(|t| t.service_id == "api").all(attached), "addresses leaked");
        }
    }
}
