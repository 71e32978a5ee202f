//! The executor over the kernel: rtnetlink for links, addresses, routes, forwarding and
//! neighbour entries; `nft` (one atomic transaction) for the egress masquerade.

use std::collections::HashMap;
use std::net::{IpAddr, Ipv4Addr};
use std::path::{Path, PathBuf};

use futures::TryStreamExt;
use rtnetlink::packet_route::address::AddressAttribute;
use rtnetlink::packet_route::link::{
    InfoData, InfoKind, InfoVeth, InfoVxlan, LinkAttribute, LinkFlags, LinkInfo, LinkMessage,
};
use rtnetlink::packet_route::neighbour::{
    NeighbourAddress, NeighbourAttribute, NeighbourFlags, NeighbourMessage, NeighbourState,
};
use rtnetlink::packet_route::AddressFamily;
use rtnetlink::{Handle, LinkBridge, LinkBridgePort, LinkUnspec, LinkVeth, LinkVxlan, RouteMessageBuilder};

use crate::{
    mac_of, netns, veth_name, vxlan_name, Executor, Fdb, Interface, Link, LinkKind, Neigh, Net, NetError, Observed,
    Step, Vip, GATEWAY_BRIDGE,
};

/// nftables table holding shoal's egress rules.
pub const NFT_TABLE: &str = "shoal";

/// The host's kernel, through one netlink connection (and one per task namespace while a task
/// is being plugged in).
pub struct Netlink {
    handle: Handle,
    /// Drives the connection; dropping the executor stops it.
    _conn: tokio::task::JoinSet<()>,
    namespaces: PathBuf,
    /// The VIP rules installed in each task namespace by this executor.
    lb: std::sync::Mutex<std::collections::BTreeMap<String, Vec<Vip>>>,
    /// The host's nftables state as this executor left it, and when it was last read from the
    /// kernel: kept as each step changes it, so a burst of passes does not run `nft` to look,
    /// and read again after [`TABLES_REREAD`] so a hand-made change is still repaired.
    tables: std::sync::Mutex<Option<(Tables, std::time::Instant)>>,
}

impl std::fmt::Debug for Netlink {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Netlink").field("namespaces", &self.namespaces).finish()
    }
}

fn nl(step: &Step, e: impl std::fmt::Display) -> NetError {
    NetError::Step { step: describe(step), reason: e.to_string() }
}

/// A step in words, for errors and logs.
pub fn describe(step: &Step) -> String {
    match step {
        Step::CreateBridge { name, .. } => format!("creating bridge {name}"),
        Step::CreateVxlan { vni, .. } => format!("creating VXLAN device {}", vxlan_name(*vni)),
        Step::SetMtu { name, mtu } => format!("setting the MTU of {name} to {mtu}"),
        Step::DeleteLink { name } => format!("deleting link {name}"),
        Step::AddFdb(f) => {
            format!("adding forwarding entry {} -> {} on VNI {}", crate::mac_string(&f.mac), f.dst, f.vni)
        }
        Step::DeleteFdb(f) => format!("deleting forwarding entry {} on VNI {}", crate::mac_string(&f.mac), f.vni),
        Step::AddNeigh(n) => format!("adding neighbour {} on VNI {}", n.ip, n.vni),
        Step::DeleteNeigh(n) => format!("deleting neighbour {} on VNI {}", n.ip, n.vni),
        Step::Masquerade { subnet } => format!("installing the egress masquerade for {subnet}"),
        Step::RemoveMasquerade => "removing the egress masquerade".into(),
        Step::CreateNamespace { task_id } => format!("creating the network namespace of task {task_id}"),
        Step::DeleteNamespace { task_id } => format!("deleting the network namespace of task {task_id}"),
        Step::AddInterface { task_id, index, interface } => {
            format!("adding eth{index} ({}) on {} to task {task_id}", interface.address, interface.bridge)
        }
        Step::SetVips { task_id, vips } => format!("installing {} VIP rule(s) in task {task_id}", vips.len()),
        Step::SetPorts(p) => format!("publishing {} port(s)", p.len()),
    }
}

fn ours(name: &str) -> bool {
    name.starts_with("sh") || name == GATEWAY_BRIDGE
}

fn link_of(m: &LinkMessage, names: &HashMap<u32, String>) -> Option<Link> {
    let mut name = None;
    let mut mtu = 0;
    let mut master = None;
    let mut kind = LinkKind::Other;
    for a in &m.attributes {
        match a {
            LinkAttribute::IfName(n) => name = Some(n.clone()),
            LinkAttribute::Mtu(v) => mtu = *v,
            LinkAttribute::Controller(i) => master = names.get(i).cloned(),
            LinkAttribute::LinkInfo(infos) => {
                let mut vni = 0;
                let mut port = 0;
                for i in infos {
                    match i {
                        LinkInfo::Kind(InfoKind::Bridge) => kind = LinkKind::Bridge,
                        LinkInfo::Kind(InfoKind::Veth) => kind = LinkKind::Veth,
                        LinkInfo::Kind(InfoKind::Vxlan) => kind = LinkKind::Vxlan { vni: 0, port: 0 },
                        LinkInfo::Data(InfoData::Vxlan(d)) => {
                            for x in d {
                                match x {
                                    InfoVxlan::Id(v) => vni = *v,
                                    InfoVxlan::Port(p) => port = *p,
                                    _ => {}
                                }
                            }
                        }
                        _ => {}
                    }
                }
                if let LinkKind::Vxlan { .. } = kind {
                    kind = LinkKind::Vxlan { vni, port };
                }
            }
            _ => {}
        }
    }
    Some(Link { name: name?, kind, master, mtu, up: m.header.flags.contains(LinkFlags::Up), addresses: vec![] })
}

fn ip4(a: &NeighbourAddress) -> Option<Ipv4Addr> {
    match a {
        NeighbourAddress::Inet(v) => Some(*v),
        // In a bridge forwarding entry the destination comes undecoded.
        NeighbourAddress::Other(b) => <[u8; 4]>::try_from(b.as_slice()).ok().map(Ipv4Addr::from),
        _ => None,
    }
}

fn mac6(v: &[u8]) -> Option<[u8; 6]> {
    v.try_into().ok()
}

/// The neighbour table entries of `family` on the VXLAN devices (`vxlans`: ifindex -> VNI) that
/// carry a MAC and an IPv4 address: (VNI, MAC, address, state).
async fn entries_of(
    h: &Handle,
    family: AddressFamily,
    vxlans: &HashMap<u32, u32>,
) -> Result<Vec<(u32, [u8; 6], Ipv4Addr, NeighbourState)>, rtnetlink::Error> {
    let mut q = h.neighbours().get();
    q.message_mut().header.family = family;
    let messages: Vec<NeighbourMessage> = q.execute().try_collect().await?;
    Ok(messages
        .into_iter()
        .filter_map(|m| {
            let vni = *vxlans.get(&m.header.ifindex)?;
            let mac = m.attributes.iter().find_map(|a| match a {
                NeighbourAttribute::LinkLayerAddress(v) => mac6(v),
                _ => None,
            })?;
            let ip = m.attributes.iter().find_map(|a| match a {
                NeighbourAttribute::Destination(d) => ip4(d),
                _ => None,
            })?;
            Some((vni, mac, ip, m.header.state))
        })
        .collect())
}

impl Netlink {
    /// Connects to the host's kernel; task namespaces are pinned under `namespaces`.
    pub fn new(namespaces: PathBuf) -> Result<Self, NetError> {
        let (conn, handle, _) = rtnetlink::new_connection().map_err(|e| NetError::Observe(e.to_string()))?;
        let mut driver = tokio::task::JoinSet::new();
        driver.spawn(conn);
        Ok(Self { handle, _conn: driver, namespaces, lb: Default::default(), tables: Default::default() })
    }

    async fn index(&self, h: &Handle, name: &str) -> Result<u32, String> {
        let mut links = h.link().get().match_name(name.to_string()).execute();
        match links.try_next().await {
            Ok(Some(m)) => Ok(m.header.index),
            Ok(None) => Err(format!("no link {name}")),
            Err(e) => Err(format!("link {name}: {e}")),
        }
    }

    /// Records a change of the host's nftables state (when it is known at all).
    fn tables_set(&self, f: impl FnOnce(&mut Tables)) {
        if let Some((t, _)) = self.tables.lock().unwrap_or_else(|e| e.into_inner()).as_mut() {
            f(t);
        }
    }

    fn lb_memory(&self) -> std::sync::MutexGuard<'_, std::collections::BTreeMap<String, Vec<Vip>>> {
        self.lb.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The MTU of the link holding `addr` (the underlay's), if one does.
    pub async fn mtu_of_address(&self, addr: Ipv4Addr) -> Option<u32> {
        let mut addrs = self.handle.address().get().execute();
        let mut index = None;
        while let Ok(Some(m)) = addrs.try_next().await {
            if m.attributes.iter().any(|a| matches!(a, AddressAttribute::Address(IpAddr::V4(v)) if *v == addr)) {
                index = Some(m.header.index);
                break;
            }
        }
        let index = index?;
        let mut links = self.handle.link().get().match_index(index).execute();
        let m = links.try_next().await.ok()??;
        m.attributes.iter().find_map(|a| match a {
            LinkAttribute::Mtu(v) => Some(*v),
            _ => None,
        })
    }

    async fn add_interface(&self, task_id: &str, index: usize, i: &Interface) -> Result<(), String> {
        let host = veth_name(task_id, index);
        let name = format!("eth{index}");
        let h = &self.handle;
        let bridge = self.index(h, &i.bridge).await?;
        let path = self.namespace_path(task_id);
        let ns = std::fs::File::open(&path).map_err(|e| format!("{}: {e}", path.display()))?;
        // The task's end is made inside its namespace, named, addressed and sized there, and
        // the host's end in its bridge and up, in one request: moving a link from one
        // namespace to another waits for an RCU grace period (~20 ms a task).
        let peer = LinkUnspec::new_with_name(&name)
            .address(mac_of(i.address.addr).to_vec())
            .mtu(i.mtu)
            .setns_by_fd(std::os::fd::AsRawFd::as_raw_fd(&ns))
            .build();
        h.link()
            .add(
                LinkVeth::new(&host, &name)
                    .set_info_data(InfoData::Veth(InfoVeth::Peer(peer)))
                    .mtu(i.mtu)
                    .controller(bridge)
                    .up()
                    .build(),
            )
            .execute()
            .await
            .map_err(|e| format!("creating veth {host} in {}: {e}", i.bridge))?;
        if i.bridge == GATEWAY_BRIDGE {
            // Tasks on the egress bridge reach the host, never each other (Docker turns
            // inter-container traffic off on docker_gwbridge for the same reason).
            let host_index = self.index(h, &host).await?;
            h.link()
                .set_port(LinkBridgePort::new(host_index).isolated(true).build())
                .execute()
                .await
                .map_err(|e| format!("isolating {host}: {e}"))?;
        }
        let (inner, conn) = netns::connect_in(&path)?;
        netns::driven(conn, self.configure_inside(&inner, &name, i)).await
    }

    /// Brings up, addresses and routes the task's interface `name`, through a connection
    /// inside its namespace.
    async fn configure_inside(&self, inner: &Handle, name: &str, i: &Interface) -> Result<(), String> {
        let at = self.index(inner, name).await?;
        inner
            .link()
            .set(LinkUnspec::new_with_index(at).up().build())
            .execute()
            .await
            .map_err(|e| format!("bringing {name} up: {e}"))?;
        inner
            .address()
            .add(at, IpAddr::V4(i.address.addr), i.address.prefix)
            .execute()
            .await
            .map_err(|e| format!("addressing {name} with {}: {e}", i.address))?;
        if let Some(gw) = i.gateway {
            inner
                .route()
                .add(RouteMessageBuilder::<Ipv4Addr>::new().gateway(gw).output_interface(at).build())
                .execute()
                .await
                .map_err(|e| format!("default route via {gw}: {e}"))?;
        }
        Ok(())
    }

    async fn create_namespace(&self, task_id: &str) -> Result<(), String> {
        let path = self.namespace_path(task_id);
        let p = path.clone();
        tokio::task::spawn_blocking(move || netns::create(&p)).await.map_err(|e| e.to_string())??;
        let (inner, conn) = netns::connect_in(&path)?;
        netns::driven(conn, async {
            let lo = self.index(&inner, "lo").await?;
            inner
                .link()
                .set(LinkUnspec::new_with_index(lo).up().build())
                .execute()
                .await
                .map_err(|e| format!("lo: {e}"))
        })
        .await
    }

    async fn fdb_message(&self, f: &Fdb) -> Result<NeighbourMessage, String> {
        let mut m = NeighbourMessage::default();
        m.header.family = AddressFamily::Bridge;
        m.header.ifindex = self.index(&self.handle, &vxlan_name(f.vni)).await?;
        m.header.flags = NeighbourFlags::Own;
        m.header.state = NeighbourState::Permanent;
        m.attributes.push(NeighbourAttribute::LinkLayerAddress(f.mac.to_vec()));
        m.attributes.push(NeighbourAttribute::Destination(NeighbourAddress::Inet(f.dst)));
        Ok(m)
    }

    async fn neigh_message(&self, n: &Neigh) -> Result<NeighbourMessage, String> {
        let mut m = NeighbourMessage::default();
        m.header.family = AddressFamily::Inet;
        m.header.ifindex = self.index(&self.handle, &vxlan_name(n.vni)).await?;
        m.header.state = NeighbourState::Permanent;
        m.attributes.push(NeighbourAttribute::Destination(NeighbourAddress::Inet(n.ip)));
        Ok(m)
    }

    async fn run_step(&self, step: &Step) -> Result<(), String> {
        let h = &self.handle;
        match step {
            Step::CreateBridge { name, mtu, address } => {
                h.link()
                    .add(LinkBridge::new(name).mtu(*mtu).up().build())
                    .execute()
                    .await
                    .map_err(|e| e.to_string())?;
                if let Some(a) = address {
                    let i = self.index(h, name).await?;
                    h.address().add(i, IpAddr::V4(a.addr), a.prefix).execute().await.map_err(|e| e.to_string())?;
                }
                Ok(())
            }
            Step::CreateVxlan { vni, port, local, mtu, bridge } => {
                let br = self.index(h, bridge).await?;
                let mut b = LinkVxlan::new(&vxlan_name(*vni), *vni)
                    .port(*port)
                    .learning(false)
                    .proxy(true)
                    .l2miss(false)
                    .l3miss(false)
                    .mtu(*mtu)
                    .controller(br);
                if let Some(l) = local {
                    b = b.local(*l);
                }
                h.link().add(b.up().build()).execute().await.map_err(|e| e.to_string())?;
                // The bridge learns nothing from the overlay either: a remote MAC is known only
                // from the device's programmed entries, so a gone task is gone at once.
                let i = self.index(h, &vxlan_name(*vni)).await?;
                h.link()
                    .set_port(LinkBridgePort::new(i).learning(false).build())
                    .execute()
                    .await
                    .map_err(|e| format!("turning learning off on the bridge port: {e}"))
            }
            Step::SetMtu { name, mtu } => {
                let i = self.index(h, name).await?;
                h.link().set(LinkUnspec::new_with_index(i).mtu(*mtu).build()).execute().await.map_err(|e| e.to_string())
            }
            Step::DeleteLink { name } => {
                let i = self.index(h, name).await?;
                h.link().del(i).execute().await.map_err(|e| e.to_string())
            }
            Step::AddFdb(f) => {
                let i = self.index(h, &vxlan_name(f.vni)).await?;
                h.neighbours()
                    .add_bridge(i, &f.mac)
                    .flags(NeighbourFlags::Own)
                    .destination(IpAddr::V4(f.dst))
                    .execute()
                    .await
                    .map_err(|e| e.to_string())
            }
            Step::DeleteFdb(f) => {
                let m = self.fdb_message(f).await?;
                h.neighbours().del(m).execute().await.map_err(|e| e.to_string())
            }
            Step::AddNeigh(n) => {
                let i = self.index(h, &vxlan_name(n.vni)).await?;
                h.neighbours()
                    .add(i, IpAddr::V4(n.ip))
                    .link_layer_address(&n.mac)
                    .execute()
                    .await
                    .map_err(|e| e.to_string())
            }
            Step::DeleteNeigh(n) => {
                let m = self.neigh_message(n).await?;
                h.neighbours().del(m).execute().await.map_err(|e| e.to_string())
            }
            Step::Masquerade { subnet } => {
                std::fs::write("/proc/sys/net/ipv4/ip_forward", "1")
                    .map_err(|e| format!("enabling forwarding: {e}"))?;
                nft(&masquerade_script(subnet)).await?;
                self.tables_set(|t| t.masquerade = Some(*subnet));
                Ok(())
            }
            Step::RemoveMasquerade => {
                nft(&format!("table ip {NFT_TABLE} {{}}\ndelete table ip {NFT_TABLE}\n")).await?;
                self.tables_set(|t| t.masquerade = None);
                Ok(())
            }
            Step::CreateNamespace { task_id } => {
                self.create_namespace(task_id).await?;
                self.lb_memory().insert(task_id.clone(), vec![]);
                Ok(())
            }
            Step::DeleteNamespace { task_id } => {
                self.lb_memory().remove(task_id);
                let p = self.namespace_path(task_id);
                tokio::task::spawn_blocking(move || netns::remove(&p)).await.map_err(|e| e.to_string())?
            }
            Step::SetPorts(ports) => {
                // Ingress ports are forwarded to other hosts' tasks.
                if ports.iter().any(|p| p.masquerade) {
                    std::fs::write("/proc/sys/net/ipv4/ip_forward", "1")
                        .map_err(|e| format!("enabling forwarding: {e}"))?;
                }
                let before =
                    self.tables.lock().unwrap_or_else(|e| e.into_inner()).as_ref().and_then(|(t, _)| t.ports.clone());
                nft(&ports_script(ports)).await?;
                self.tables_set(|t| t.ports = if ports.is_empty() { None } else { Some(ports.clone()) });
                // UDP flows of a backend that left a port are balanced afresh.
                for (port, backend) in removed_udp_backends(before.as_deref().unwrap_or_default(), ports) {
                    if let Err(e) = flush_host_udp(port, backend).await {
                        tracing::warn!(error = %e, port, %backend, "UDP flows of a removed backend stay until they time out");
                    }
                }
                Ok(())
            }
            Step::SetVips { task_id, vips } => {
                let (p, script) = (self.namespace_path(task_id), vip_script(vips));
                let gone = {
                    let before = self.lb_memory().get(task_id).cloned().unwrap_or_default();
                    removed_backends(&before, vips)
                };
                let now = vips.clone();
                tokio::task::spawn_blocking(move || -> Result<(), String> {
                    netns::nft_in(&p, &script)?;
                    // Flows of this namespace that go to a backend no longer behind their VIP
                    // (found in the kernel, so a restarted agent finds them too).
                    let mut gone = gone;
                    for v in &now {
                        match netns::udp_flow_backends(&p, v.vip) {
                            Ok(list) => gone.extend(
                                list.into_iter().filter(|b| !v.backends.contains(b)).map(|b| (v.vip, b)),
                            ),
                            Err(e) => tracing::debug!(error = %e, "cannot list UDP flows"),
                        }
                    }
                    gone.sort();
                    gone.dedup();
                    for (vip, backend) in gone {
                        if let Err(e) = netns::flush_udp_flows(&p, vip, backend) {
                            tracing::warn!(error = %e, %vip, %backend, "UDP flows of a removed backend stay until they time out");
                        }
                    }
                    Ok(())
                })
                .await
                .map_err(|e| e.to_string())??;
                self.lb_memory().insert(task_id.clone(), vips.clone());
                Ok(())
            }
            Step::AddInterface { task_id, index, interface } => self.add_interface(task_id, *index, interface).await,
        }
    }
}

/// The reply sources (the backends) of `conntrack -L` lines. Pure.
pub fn reply_sources(listing: &str) -> Vec<std::net::Ipv4Addr> {
    let mut out: Vec<std::net::Ipv4Addr> = listing
        .lines()
        .filter_map(|l| l.split_whitespace().filter_map(|f| f.strip_prefix("src=")).nth(1)?.parse().ok())
        .collect();
    out.sort();
    out.dedup();
    out
}

/// How long the host's nftables state is trusted without reading it again.
const TABLES_REREAD: std::time::Duration = std::time::Duration::from_secs(25);

/// The host-level nftables state shoal keeps.
#[derive(Debug, Clone, Default)]
struct Tables {
    /// The egress masquerade's subnet.
    masquerade: Option<Net>,
    /// The published ports (empty: some, not known which).
    ports: Option<Vec<crate::PublishedPort>>,
}

/// nftables table holding the host's published ports.
pub const PORTS_TABLE: &str = "shoal_ports";

/// The nftables transaction that replaces the host's published ports: a connection to any
/// local address but loopback on a published port (from outside, or from the host itself) is
/// found in one verdict map keyed by protocol and port, and DNATed to one of the port's
/// backends at random; a port without backends is left out, so the host refuses it (TCP reset,
/// ICMP unreachable) as nothing listens there. Connections forwarded over an overlay leave with
/// the host's address on it (the bridge's), so the replies come back here to be translated.
pub fn ports_script(ports: &[crate::PublishedPort]) -> String {
    let mut s = format!("table ip {t} {{}}\ndelete table ip {t}\n", t = PORTS_TABLE);
    if ports.is_empty() {
        return s;
    }
    s.push_str(&format!("table ip {PORTS_TABLE} {{\n"));
    let mut vmap = Vec::new();
    for (i, p) in ports.iter().enumerate().filter(|(_, p)| !p.backends.is_empty()) {
        let proto = if p.udp { "udp" } else { "tcp" };
        let to = match p.backends.as_slice() {
            [one] => format!("{one}"),
            many => {
                let map: Vec<String> = many.iter().enumerate().map(|(k, b)| format!("{k} : {b}")).collect();
                format!("numgen random mod {} map {{ {} }}", many.len(), map.join(", "))
            }
        };
        s.push_str(&format!("\tchain port{i} {{\n\t\tmeta l4proto {proto} dnat to {to} : {}\n\t}}\n", p.target));
        vmap.push(format!("{proto} . {} : jump port{i}", p.published));
    }
    let lookup = if vmap.is_empty() {
        String::new()
    } else {
        format!(
            "\t\tfib daddr type local ip daddr != 127.0.0.0/8 meta l4proto . th dport vmap {{ {} }}\n",
            vmap.join(", ")
        )
    };
    for (chain, hook) in [("prerouting", "prerouting"), ("output", "output")] {
        s.push_str(&format!(
            "\tchain {chain} {{\n\t\ttype nat hook {hook} priority -100; policy accept;\n{lookup}\t}}\n"
        ));
    }
    if ports.iter().any(|p| p.masquerade) {
        s.push_str(
            "\tchain postrouting {\n\t\ttype nat hook postrouting priority srcnat; policy accept;\n\t\toifname \"shbr*\" ct status dnat masquerade\n\t}\n",
        );
    }
    s.push_str("}\n");
    s
}

/// (published UDP port, backend) pairs of `before` that `after` no longer has. Pure.
pub fn removed_udp_backends(before: &[crate::PublishedPort], after: &[crate::PublishedPort]) -> Vec<(u16, Ipv4Addr)> {
    let mut out = Vec::new();
    for b in before.iter().filter(|p| p.udp) {
        let kept =
            after.iter().find(|a| a.udp && a.published == b.published).map(|a| a.backends.as_slice()).unwrap_or(&[]);
        out.extend(b.backends.iter().filter(|x| !kept.contains(x)).map(|x| (b.published, *x)));
    }
    out
}

/// Forgets the host's UDP flows to published `port` that went to `backend`.
async fn flush_host_udp(port: u16, backend: Ipv4Addr) -> Result<(), String> {
    let out = tokio::process::Command::new("conntrack")
        .args(["-D", "-p", "udp", "--orig-port-dst", &port.to_string(), "--reply-src", &backend.to_string()])
        .output()
        .await
        .map_err(|e| format!("conntrack: {e} (install conntrack)"))?;
    match out.status.code() {
        // 1: no flow matched.
        Some(0 | 1) => Ok(()),
        _ => Err(format!("conntrack: {}", String::from_utf8_lossy(&out.stderr).trim())),
    }
}

/// (VIP, backend) pairs in `before` that `after` no longer has. Pure.
pub fn removed_backends(before: &[Vip], after: &[Vip]) -> Vec<(std::net::Ipv4Addr, std::net::Ipv4Addr)> {
    let mut out = Vec::new();
    for b in before {
        let kept = after.iter().find(|a| a.vip == b.vip).map(|a| a.backends.as_slice()).unwrap_or(&[]);
        out.extend(b.backends.iter().filter(|x| !kept.contains(x)).map(|x| (b.vip, *x)));
    }
    out
}

/// nftables table holding a task's VIP rules (in the task's namespace).
pub const VIP_TABLE: &str = "shoal_vip";

/// The nftables transaction that replaces a task namespace's VIP rules with `vips`: a
/// connection to a VIP is DNATed to one of its backends at random (the port kept, so every
/// port of the service works, as with Swarm's VIPs); a VIP without backends is refused at once
/// (TCP reset, ICMP unreachable) instead of timing out.
pub fn vip_script(vips: &[Vip]) -> String {
    let mut s = format!("table ip {t} {{}}\ndelete table ip {t}\n", t = VIP_TABLE);
    if vips.is_empty() {
        return s;
    }
    s.push_str(&format!("table ip {VIP_TABLE} {{\n"));
    let live: Vec<(usize, &Vip)> = vips.iter().enumerate().filter(|(_, v)| !v.backends.is_empty()).collect();
    let dead: Vec<&Vip> = vips.iter().filter(|v| v.backends.is_empty()).collect();
    for (i, v) in &live {
        let map: Vec<String> = v.backends.iter().enumerate().map(|(k, b)| format!("{k} : {b}")).collect();
        s.push_str(&format!(
            "\tchain vip{i} {{\n\t\tdnat to numgen random mod {} map {{ {} }}\n\t}}\n",
            v.backends.len(),
            map.join(", ")
        ));
    }
    s.push_str("\tchain output {\n\t\ttype nat hook output priority -100; policy accept;\n");
    if !live.is_empty() {
        let vmap: Vec<String> = live.iter().map(|(i, v)| format!("{} : jump vip{i}", v.vip)).collect();
        s.push_str(&format!("\t\tip daddr vmap {{ {} }}\n", vmap.join(", ")));
    }
    s.push_str("\t}\n");
    if !dead.is_empty() {
        let set: Vec<String> = dead.iter().map(|v| v.vip.to_string()).collect();
        let set = set.join(", ");
        s.push_str(&format!(
            "\tchain refuse {{\n\t\ttype filter hook output priority filter; policy accept;\n             \t\tip daddr {{ {set} }} meta l4proto tcp reject with tcp reset\n             \t\tip daddr {{ {set} }} reject with icmp type port-unreachable\n\t}}\n"
        ));
    }
    s.push_str("}\n");
    s
}

/// The nftables transaction for egress from the gateway bridge's `subnet`: replaces shoal's
/// table as a whole, atomically.
pub fn masquerade_script(subnet: &Net) -> String {
    format!(
        "table ip {t} {{}}\n\
         delete table ip {t}\n\
         table ip {t} {{\n\
         \tchain postrouting {{\n\
         \t\ttype nat hook postrouting priority srcnat; policy accept;\n\
         \t\tip saddr {subnet} oifname != \"{gw}\" masquerade\n\
         \t}}\n\
         }}\n",
        t = NFT_TABLE,
        gw = GATEWAY_BRIDGE,
    )
}

async fn nft(script: &str) -> Result<(), String> {
    use tokio::io::AsyncWriteExt;
    let mut child = tokio::process::Command::new("nft")
        .args(["-f", "-"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .map_err(|e| format!("cannot run nft (install nftables): {e}"))?;
    if let Some(mut stdin) = child.stdin.take() {
        stdin.write_all(script.as_bytes()).await.map_err(|e| format!("nft: {e}"))?;
    }
    let out = child.wait_with_output().await.map_err(|e| format!("nft: {e}"))?;
    if out.status.success() {
        Ok(())
    } else {
        Err(format!("nft: {}", String::from_utf8_lossy(&out.stderr).trim()))
    }
}

async fn table_exists(table: &str) -> bool {
    tokio::process::Command::new("nft")
        .args(["list", "table", "ip", table])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .status()
        .await
        .is_ok_and(|s| s.success())
}

/// The subnet shoal's egress masquerade covers now, if installed.
async fn masquerade_installed() -> Option<Net> {
    let out = tokio::process::Command::new("nft").args(["list", "table", "ip", NFT_TABLE]).output().await.ok()?;
    if !out.status.success() {
        return None;
    }
    let text = String::from_utf8_lossy(&out.stdout);
    let at = text.find("ip saddr ")?;
    let rest = &text[at + "ip saddr ".len()..];
    Net::parse(rest.split_whitespace().next()?)
}

fn in_dir(dir: &Path) -> Result<Vec<String>, NetError> {
    Ok(netns::list(dir).map_err(NetError::Observe)?.into_iter().map(|(name, _)| name).collect())
}

#[async_trait::async_trait]
impl Executor for Netlink {
    async fn observe(&self) -> Result<Observed, NetError> {
        let h = &self.handle;
        let obs = |e: rtnetlink::Error| NetError::Observe(e.to_string());
        let messages: Vec<LinkMessage> = h.link().get().execute().try_collect().await.map_err(obs)?;
        let names: HashMap<u32, String> = messages
            .iter()
            .filter_map(|m| {
                m.attributes.iter().find_map(|a| match a {
                    LinkAttribute::IfName(n) => Some((m.header.index, n.clone())),
                    _ => None,
                })
            })
            .collect();
        let mut links: Vec<Link> =
            messages.iter().filter_map(|m| link_of(m, &names)).filter(|l| ours(&l.name)).collect();
        let addrs: Vec<_> = h.address().get().execute().try_collect().await.map_err(obs)?;
        for a in addrs {
            let Some(name) = names.get(&a.header.index) else { continue };
            let Some(l) = links.iter_mut().find(|l| &l.name == name) else { continue };
            for attr in &a.attributes {
                if let AddressAttribute::Address(IpAddr::V4(v)) = attr {
                    l.addresses.push(Net { addr: *v, prefix: a.header.prefix_len });
                }
            }
        }
        let vxlans: HashMap<u32, u32> = links
            .iter()
            .filter_map(|l| match l.kind {
                LinkKind::Vxlan { vni, .. } => names.iter().find(|(_, n)| **n == l.name).map(|(i, _)| (*i, vni)),
                _ => None,
            })
            .collect();
        let mut fdb = Vec::new();
        let mut neigh = Vec::new();
        if !vxlans.is_empty() {
            // Forwarding entries: bridge family, MAC -> underlay destination.
            for (vni, mac, dst, _) in entries_of(h, AddressFamily::Bridge, &vxlans).await.map_err(obs)? {
                fdb.push(Fdb { vni, mac, dst });
            }
            // Neighbour entries: IPv4 family, address -> MAC; only the permanent ones are ours.
            for (vni, mac, ip, state) in entries_of(h, AddressFamily::Inet, &vxlans).await.map_err(obs)? {
                if state == NeighbourState::Permanent {
                    neigh.push(Neigh { vni, ip, mac });
                }
            }
        }
        let dir = self.namespaces.clone();
        let namespaces =
            tokio::task::spawn_blocking(move || in_dir(&dir)).await.map_err(|e| NetError::Observe(e.to_string()))??;
        let lb = self
            .lb_memory()
            .iter()
            .filter(|(t, _)| namespaces.contains(t))
            .map(|(t, v)| (t.clone(), v.clone()))
            .collect();
        let known = self.tables.lock().unwrap_or_else(|e| e.into_inner()).clone();
        let tables = match known {
            Some((t, read)) if read.elapsed() < TABLES_REREAD => t,
            // From the kernel (first look, or a while since): published ports present but not
            // known which, unless they are as this executor left them.
            stale => {
                let masquerade = masquerade_installed().await;
                let present = table_exists(PORTS_TABLE).await;
                let ports = match stale.and_then(|(t, _)| t.ports) {
                    Some(p) if present => Some(p),
                    _ => present.then(Vec::new),
                };
                let t = Tables { masquerade, ports };
                *self.tables.lock().unwrap_or_else(|e| e.into_inner()) = Some((t.clone(), std::time::Instant::now()));
                t
            }
        };
        Ok(Observed { links, fdb, neigh, namespaces, masquerade: tables.masquerade, lb, ports: tables.ports })
    }

    async fn run(&self, step: &Step) -> Result<(), NetError> {
        self.run_step(step).await.map_err(|e| nl(step, e))
    }

    fn namespace_path(&self, task_id: &str) -> PathBuf {
        self.namespaces.join(task_id)
    }

    async fn underlay_mtu(&self, local: Ipv4Addr) -> Option<u32> {
        self.mtu_of_address(local).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn vip(v: u8, backends: &[u8]) -> Vip {
        Vip {
            vip: std::net::Ipv4Addr::new(10, 0, 0, v),
            backends: backends.iter().map(|b| std::net::Ipv4Addr::new(10, 0, 1, *b)).collect(),
        }
    }

    #[test]
    fn reply_sources_come_from_the_second_src() {
        let l = "udp      17 29 src=10.77.0.11 dst=10.77.0.100 sport=39492 dport=9999 src=10.77.0.12 dst=10.77.0.11 sport=9999 dport=39492 mark=0 use=1\n\
                 conntrack v1.4.7 (conntrack-tools): 1 flow entries have been shown.\n";
        assert_eq!(reply_sources(l), [std::net::Ipv4Addr::new(10, 77, 0, 12)]);
        assert!(reply_sources("").is_empty());
    }

    #[test]
    fn removed_backends_are_the_pairs_that_went() {
        let before = [vip(1, &[1, 2]), vip(2, &[3])];
        let after = [vip(1, &[2, 4])];
        let gone: Vec<String> = removed_backends(&before, &after).iter().map(|(v, b)| format!("{v}>{b}")).collect();
        assert_eq!(gone, ["10.0.0.1>10.0.1.1", "10.0.0.2>10.0.1.3"]);
        assert!(removed_backends(&after, &after).is_empty());
    }

    #[test]
    fn removed_udp_backends_are_those_a_udp_port_lost() {
        let port = |udp: bool, published: u16, backends: &[u8]| crate::PublishedPort {
            udp,
            published,
            target: 53,
            backends: backends.iter().map(|b| Ipv4Addr::new(10, 0, 1, *b)).collect(),
            masquerade: true,
        };
        let before = [port(false, 80, &[1]), port(true, 53, &[1, 2]), port(true, 54, &[3])];
        let after = [port(true, 53, &[2, 5])];
        let gone: Vec<String> = removed_udp_backends(&before, &after).iter().map(|(p, b)| format!("{p}>{b}")).collect();
        assert_eq!(gone, ["53>10.0.1.1", "54>10.0.1.3"], "TCP connections are left to end by themselves");
    }

    #[test]
    fn the_ports_script_looks_ports_up_in_one_map_and_leaves_out_those_without_backends() {
        let p = |udp: bool, published: u16, backends: Vec<Ipv4Addr>, masquerade: bool| crate::PublishedPort {
            udp,
            published,
            target: 80,
            backends,
            masquerade,
        };
        let a = Ipv4Addr::new(10, 255, 0, 5);
        let b = Ipv4Addr::new(10, 255, 0, 6);
        let s = ports_script(&[
            p(false, 8080, vec![a, b], true),
            p(true, 5353, vec![a], false),
            p(false, 9090, vec![], true),
        ]);
        assert!(s.starts_with("table ip shoal_ports {}\ndelete table ip shoal_ports\n"), "{s}");
        assert!(
            s.contains("meta l4proto tcp dnat to numgen random mod 2 map { 0 : 10.255.0.5, 1 : 10.255.0.6 } : 80"),
            "{s}"
        );
        assert!(s.contains("meta l4proto udp dnat to 10.255.0.5 : 80"), "{s}");
        assert!(s.contains("vmap { tcp . 8080 : jump port0, udp . 5353 : jump port1 }"), "{s}");
        assert!(!s.contains("9090"), "no backend: nothing listens, so the host refuses: {s}");
        assert!(s.contains("oifname \"shbr*\" ct status dnat masquerade"), "{s}");
        assert!(!ports_script(&[p(true, 53, vec![a], false)]).contains("masquerade"), "host mode keeps the source");
        assert_eq!(ports_script(&[]), "table ip shoal_ports {}\ndelete table ip shoal_ports\n");
    }

    #[test]
    fn the_vip_script_balances_refuses_and_replaces_atomically() {
        let s = vip_script(&[vip(1, &[1, 2]), vip(2, &[])]);
        assert!(s.starts_with("table ip shoal_vip {}\ndelete table ip shoal_vip\n"), "{s}");
        assert!(s.contains("dnat to numgen random mod 2 map { 0 : 10.0.1.1, 1 : 10.0.1.2 }"), "{s}");
        assert!(s.contains("ip daddr vmap { 10.0.0.1 : jump vip0 }"), "{s}");
        assert!(s.contains("ip daddr { 10.0.0.2 } meta l4proto tcp reject with tcp reset"), "{s}");
        assert_eq!(vip_script(&[]), "table ip shoal_vip {}\ndelete table ip shoal_vip\n");
    }
}
