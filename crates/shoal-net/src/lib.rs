//! shoal's host networking: what a node's kernel must hold so its tasks reach each other across
//! hosts, and the code that makes it so.
//!
//! [`plan::plan`] is pure: from the [`Desired`] state of one host (the overlays its tasks use,
//! every remote endpoint on them, its tasks' namespaces and interfaces) and what the kernel
//! holds ([`Observed`]), it returns the [`Step`]s that bring the one to the other, and nothing
//! when they agree. An [`Executor`] observes and runs steps: [`netlink::Netlink`] over
//! rtnetlink (and `nft` for the egress masquerade), [`fake::Fake`] in memory for tests.
//!
//! Shape per overlay network (VNI n) on a host with one of its tasks: a bridge `shbr<n>` and a
//! VXLAN device `shvx<n>` in it, learning off and ARP answered from the neighbour table (the
//! "proxy" flag), so nothing is learned by flooding: every remote task's MAC is in the VXLAN
//! device's forwarding table with its host as destination, and its address in the neighbour
//! table, both programmed from the replicated state. Each task has a network namespace of its
//! own (a file the container runtime is pointed at), with `eth0..` on its overlays and, unless
//! all its networks are internal, a last interface on the host's gateway bridge for egress,
//! masqueraded by nftables (as Docker's `docker_gwbridge`).

use std::net::Ipv4Addr;
use std::path::PathBuf;

pub mod dns;
pub mod fake;
pub mod netlink;
pub mod netns;
pub mod plan;
pub mod routes;

pub use plan::plan;

/// The bridge for egress (Docker's `docker_gwbridge`).
pub const GATEWAY_BRIDGE: &str = "shoal_gwbridge";

/// VXLAN's overhead over the underlay: the overlay MTU is the underlay's minus this.
pub const VXLAN_OVERHEAD: u32 = 50;

/// An IPv4 network in CIDR form.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Net {
    /// An address in it (not necessarily the first).
    pub addr: Ipv4Addr,
    /// Prefix length.
    pub prefix: u8,
}

impl Net {
    /// Parses `a.b.c.d/n`.
    pub fn parse(s: &str) -> Option<Net> {
        let (a, p) = s.split_once('/')?;
        let prefix: u8 = p.parse().ok().filter(|p| *p <= 32)?;
        Some(Net { addr: a.parse().ok()?, prefix })
    }

    /// The first address of the network.
    pub fn network(&self) -> Ipv4Addr {
        let mask = if self.prefix == 0 { 0 } else { u32::MAX << (32 - u32::from(self.prefix)) };
        Ipv4Addr::from(u32::from(self.addr) & mask)
    }
}

impl std::fmt::Display for Net {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}", self.addr, self.prefix)
    }
}

/// The MAC of a task's interface: a function of its address, as Docker does (02:42 and the
/// four bytes), so no host needs to be told it.
pub fn mac_of(ip: Ipv4Addr) -> [u8; 6] {
    let o = ip.octets();
    [0x02, 0x42, o[0], o[1], o[2], o[3]]
}

/// Writes a MAC the way `ip` does.
pub fn mac_string(mac: &[u8; 6]) -> String {
    mac.iter().map(|b| format!("{b:02x}")).collect::<Vec<_>>().join(":")
}

/// The bridge of the overlay with VNI `vni`.
pub fn bridge_name(vni: u32) -> String {
    format!("shbr{vni}")
}

/// The VXLAN device of the overlay with VNI `vni`.
pub fn vxlan_name(vni: u32) -> String {
    format!("shvx{vni}")
}

/// Prefix of every task-side link name on the host (the host end of a task's veth pair).
pub const VETH_PREFIX: &str = "shve";

fn short_id(task_id: &str) -> String {
    task_id.chars().filter(char::is_ascii_alphanumeric).take(9).collect()
}

/// The host end of interface `index` of task `task_id` (at most 15 bytes, as the kernel asks).
pub fn veth_name(task_id: &str, index: usize) -> String {
    format!("{VETH_PREFIX}{}{index}", short_id(task_id))
}

/// One overlay network this host needs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Overlay {
    /// VXLAN network identifier.
    pub vni: u32,
    /// The overlay's subnet.
    pub subnet: Net,
    /// MTU of its devices.
    pub mtu: u32,
    /// This host's own address on it, on its bridge (the ingress network's).
    pub address: Option<Net>,
}

/// A task on another host: where frames for its address go.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Remote {
    /// The overlay.
    pub vni: u32,
    /// The task's address on it.
    pub address: Ipv4Addr,
    /// The underlay address of the task's host.
    pub host: Ipv4Addr,
}

/// Where one of a task's interfaces plugs in.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Interface {
    /// The host bridge (an overlay's, or [`GATEWAY_BRIDGE`]).
    pub bridge: String,
    /// The task's address and prefix on it.
    pub address: Net,
    /// MTU.
    pub mtu: u32,
    /// The default route goes through this address (the gateway bridge's), if set.
    pub gateway: Option<Ipv4Addr>,
}

/// A service's virtual IP as a task sees it: connections to `vip` go to one of `backends`,
/// picked at random per connection (none: refused at once).
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct Vip {
    /// The virtual IP.
    pub vip: Ipv4Addr,
    /// The service's serving task addresses.
    pub backends: Vec<Ipv4Addr>,
}

/// A port the host publishes: connections to any of the host's addresses on `published` go
/// to one of `backends` on `target`, picked at random per connection (none: refused, as
/// nothing listens there). Host mode and `traffic=local`: the host's own tasks at their egress
/// addresses, the client's address kept. Ingress mode: tasks on the ingress overlay, on any
/// host, the source rewritten to this host's ingress address (`masquerade`) so replies come
/// back through it.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct PublishedPort {
    /// `tcp` or `udp`.
    pub udp: bool,
    /// The host's port.
    pub published: u16,
    /// The tasks' port.
    pub target: u16,
    /// The tasks' addresses, sorted.
    pub backends: Vec<Ipv4Addr>,
    /// Connections leave over an overlay with this host's address as their source.
    pub masquerade: bool,
}

/// One task's network namespace.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TaskNet {
    /// Task id.
    pub task_id: String,
    /// `eth0, eth1, ...` in order.
    pub interfaces: Vec<Interface>,
    /// The VIPs of the services on its networks.
    pub vips: Vec<Vip>,
}

/// The host's egress bridge.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Gateway {
    /// The bridge's address and the subnet its tasks take addresses from.
    pub address: Net,
    /// MTU.
    pub mtu: u32,
}

/// What one host's kernel should hold.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Desired {
    /// Underlay address VXLAN packets leave from (unset: the kernel's choice).
    pub local: Option<Ipv4Addr>,
    /// UDP port of VXLAN.
    pub port: u16,
    /// Overlays with a task on this host.
    pub overlays: Vec<Overlay>,
    /// Every task on those overlays that runs on another host.
    pub remotes: Vec<Remote>,
    /// The egress bridge, when a task here needs it.
    pub gateway: Option<Gateway>,
    /// This host's tasks.
    pub tasks: Vec<TaskNet>,
    /// The ports this host publishes, sorted, one per protocol and port.
    pub ports: Vec<PublishedPort>,
}

/// The kind of a link the planner cares about.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LinkKind {
    /// A bridge.
    Bridge,
    /// A VXLAN device.
    Vxlan {
        /// Its VNI.
        vni: u32,
        /// Its UDP port.
        port: u16,
    },
    /// One end of a veth pair.
    Veth,
    /// Anything else.
    Other,
}

/// A link on the host.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Link {
    /// Name.
    pub name: String,
    /// Kind.
    pub kind: LinkKind,
    /// The bridge it is a port of.
    pub master: Option<String>,
    /// MTU.
    pub mtu: u32,
    /// Administratively up.
    pub up: bool,
    /// IPv4 addresses on it.
    pub addresses: Vec<Net>,
}

/// A forwarding entry of a VXLAN device: frames for `mac` go to `dst`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Fdb {
    /// VNI of the device.
    pub vni: u32,
    /// Destination MAC.
    pub mac: [u8; 6],
    /// Underlay address.
    pub dst: Ipv4Addr,
}

/// A neighbour entry of a VXLAN device (answers ARP for `ip` with `mac`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Neigh {
    /// VNI of the device.
    pub vni: u32,
    /// Address.
    pub ip: Ipv4Addr,
    /// Its MAC.
    pub mac: [u8; 6],
}

/// What the host's kernel holds, as far as shoal is concerned.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Observed {
    /// Links.
    pub links: Vec<Link>,
    /// Static forwarding entries of shoal's VXLAN devices.
    pub fdb: Vec<Fdb>,
    /// Permanent neighbour entries of shoal's VXLAN devices.
    pub neigh: Vec<Neigh>,
    /// Task ids that have a namespace file.
    pub namespaces: Vec<String>,
    /// The egress masquerade is installed for this subnet.
    pub masquerade: Option<Net>,
    /// The VIP rules installed in each task's namespace (as last installed by this executor;
    /// a task missing here gets its rules again).
    pub lb: std::collections::BTreeMap<String, Vec<Vip>>,
    /// The published ports installed (`None`: none; empty: some, but not known which).
    pub ports: Option<Vec<PublishedPort>>,
}

/// One change to the host.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Step {
    /// Create a bridge, up, with an address when given.
    CreateBridge { name: String, mtu: u32, address: Option<Net> },
    /// Create a VXLAN device (learning off, ARP proxy on) in `bridge`, up.
    CreateVxlan { vni: u32, port: u16, local: Option<Ipv4Addr>, mtu: u32, bridge: String },
    /// Change a link's MTU.
    SetMtu { name: String, mtu: u32 },
    /// Delete a link (a veth's peer goes with it).
    DeleteLink { name: String },
    /// Add a forwarding entry.
    AddFdb(Fdb),
    /// Delete a forwarding entry.
    DeleteFdb(Fdb),
    /// Add a neighbour entry.
    AddNeigh(Neigh),
    /// Delete a neighbour entry.
    DeleteNeigh(Neigh),
    /// Install (or replace) the egress masquerade for `subnet` out of any other interface.
    Masquerade { subnet: Net },
    /// Remove the egress masquerade.
    RemoveMasquerade,
    /// Make the task's namespace (loopback up).
    CreateNamespace { task_id: String },
    /// Delete the task's namespace file.
    DeleteNamespace { task_id: String },
    /// Plug interface `index` of a task in: a veth pair with the host end in `bridge`, the other
    /// end in the task's namespace as `eth<index>`, configured.
    AddInterface { task_id: String, index: usize, interface: Interface },
    /// Replace the VIP rules in the task's namespace (one atomic nftables transaction).
    SetVips { task_id: String, vips: Vec<Vip> },
    /// Replace the host's published ports (one atomic nftables transaction).
    SetPorts(Vec<PublishedPort>),
}

/// Host networking failed.
#[derive(Debug, thiserror::Error)]
pub enum NetError {
    /// The kernel refused a change.
    #[error("{step}: {reason}")]
    Step { step: String, reason: String },
    /// The kernel's state could not be read.
    #[error("reading the host's network state: {0}")]
    Observe(String),
    /// A namespace could not be made or removed.
    #[error("network namespace of task {task_id}: {reason}")]
    Namespace { task_id: String, reason: String },
}

/// Reads and changes a host's network state.
#[async_trait::async_trait]
pub trait Executor: Send + Sync {
    /// What the host holds now.
    async fn observe(&self) -> Result<Observed, NetError>;
    /// Runs one step.
    async fn run(&self, step: &Step) -> Result<(), NetError>;
    /// The namespace file of a task (what the container runtime is pointed at).
    fn namespace_path(&self, task_id: &str) -> PathBuf;
    /// The MTU of the interface holding `local` (the underlay), if known.
    async fn underlay_mtu(&self, local: Ipv4Addr) -> Option<u32> {
        let _ = local;
        None
    }
}

/// What one pass of [`converge`] did.
#[derive(Debug, Default)]
pub struct Outcome {
    /// Steps that ran.
    pub done: usize,
    /// Steps that failed, with why. A task's failure names the task.
    pub failed: Vec<(Step, NetError)>,
}

impl Outcome {
    /// Why task `task_id` could not be given its network, if it could not.
    pub fn task_error(&self, task_id: &str) -> Option<String> {
        self.failed.iter().find_map(|(s, e)| match s {
            Step::CreateNamespace { task_id: t }
            | Step::AddInterface { task_id: t, .. }
            | Step::SetVips { task_id: t, .. }
                if t == task_id =>
            {
                Some(e.to_string())
            }
            _ => None,
        })
    }
}

/// Observes, plans and runs the plan once. A failed step does not stop the others (a task
/// whose namespace could not be made must not keep another task from starting); the next pass
/// plans again from what the kernel then holds.
pub async fn converge(exec: &dyn Executor, desired: &Desired) -> Result<Outcome, NetError> {
    let observed = exec.observe().await?;
    let steps = plan(desired, &observed);
    let mut out = Outcome::default();
    let mut broken_tasks: Vec<String> = Vec::new();
    for step in steps {
        // The interfaces and rules of a task whose namespace failed cannot be added.
        if let Step::AddInterface { task_id, .. } | Step::SetVips { task_id, .. } = &step {
            if broken_tasks.contains(task_id) {
                continue;
            }
        }
        match exec.run(&step).await {
            Ok(()) => out.done += 1,
            Err(e) => {
                tracing::warn!(?step, error = %e, "host network step failed");
                if let Step::CreateNamespace { task_id } | Step::AddInterface { task_id, .. } = &step {
                    broken_tasks.push(task_id.clone());
                }
                out.failed.push((step, e));
            }
        }
    }
    Ok(out)
}
