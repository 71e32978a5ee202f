//! An in-memory host for tests: it checks each step the way the kernel would (a VXLAN device
//! needs its bridge, an entry needs its device, nothing is made twice) and records what ran.

use std::path::PathBuf;
use std::sync::Mutex;

use crate::{veth_name, vxlan_name, Executor, Fdb, Link, LinkKind, NetError, Observed, Step, GATEWAY_BRIDGE};

/// A host in memory.
#[derive(Debug, Default)]
pub struct Fake {
    state: Mutex<(Observed, Vec<Step>)>,
    /// Task ids whose namespace cannot be made (to test failure paths).
    pub broken: Mutex<Vec<String>>,
}

fn refuse(step: &Step, reason: &str) -> NetError {
    NetError::Step { step: format!("{step:?}"), reason: reason.to_string() }
}

fn link(name: &str, kind: LinkKind, master: Option<String>, mtu: u32) -> Link {
    Link { name: name.to_string(), kind, master, mtu, up: true, addresses: vec![] }
}

impl Fake {
    /// What the host holds.
    pub fn observed(&self) -> Observed {
        let mut o = self.lock().0.clone();
        o.links.sort_by(|a, b| a.name.cmp(&b.name));
        o.fdb.sort();
        o.neigh.sort();
        o.namespaces.sort();
        o
    }

    /// Every step run so far.
    pub fn steps(&self) -> Vec<Step> {
        self.lock().1.clone()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, (Observed, Vec<Step>)> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Runs one step against the model.
    pub fn apply(&self, step: &Step) -> Result<(), NetError> {
        let broken = self.broken.lock().unwrap_or_else(|e| e.into_inner()).clone();
        let mut g = self.lock();
        let (o, log) = &mut *g;
        let has = |o: &Observed, n: &str| o.links.iter().any(|l| l.name == n);
        match step {
            Step::CreateBridge { name, mtu, address } => {
                if has(o, name) {
                    return Err(refuse(step, "File exists"));
                }
                let mut l = link(name, LinkKind::Bridge, None, *mtu);
                l.addresses.extend(address.iter().copied());
                o.links.push(l);
            }
            Step::CreateVxlan { vni, port, mtu, bridge, .. } => {
                if has(o, &vxlan_name(*vni)) {
                    return Err(refuse(step, "File exists"));
                }
                if !has(o, bridge) {
                    return Err(refuse(step, "No such device (bridge)"));
                }
                o.links.push(link(
                    &vxlan_name(*vni),
                    LinkKind::Vxlan { vni: *vni, port: *port },
                    Some(bridge.clone()),
                    *mtu,
                ));
            }
            Step::SetMtu { name, mtu } => match o.links.iter_mut().find(|l| &l.name == name) {
                Some(l) => l.mtu = *mtu,
                None => return Err(refuse(step, "No such device")),
            },
            Step::DeleteLink { name } => {
                let Some(l) = o.links.iter().find(|l| &l.name == name).cloned() else {
                    return Err(refuse(step, "No such device"));
                };
                o.links.retain(|x| &x.name != name);
                for x in o.links.iter_mut().filter(|x| x.master.as_deref() == Some(name.as_str())) {
                    x.master = None;
                }
                if let LinkKind::Vxlan { vni, .. } = l.kind {
                    o.fdb.retain(|f| f.vni != vni);
                    o.neigh.retain(|n| n.vni != vni);
                }
                if name == GATEWAY_BRIDGE {
                    // The masquerade is a separate rule; the bridge going does not take it.
                }
            }
            Step::AddFdb(f) => {
                if !has(o, &vxlan_name(f.vni)) {
                    return Err(refuse(step, "No such device"));
                }
                if o.fdb.iter().any(|x: &Fdb| x.vni == f.vni && x.mac == f.mac) {
                    return Err(refuse(step, "File exists"));
                }
                o.fdb.push(*f);
            }
            Step::DeleteFdb(f) => {
                let before = o.fdb.len();
                o.fdb.retain(|x| x != f);
                if o.fdb.len() == before {
                    return Err(refuse(step, "No such file or directory"));
                }
            }
            Step::AddNeigh(n) => {
                if !has(o, &vxlan_name(n.vni)) {
                    return Err(refuse(step, "No such device"));
                }
                if o.neigh.iter().any(|x| x.vni == n.vni && x.ip == n.ip) {
                    return Err(refuse(step, "File exists"));
                }
                o.neigh.push(*n);
            }
            Step::DeleteNeigh(n) => {
                let before = o.neigh.len();
                o.neigh.retain(|x| x != n);
                if o.neigh.len() == before {
                    return Err(refuse(step, "No such file or directory"));
                }
            }
            Step::Masquerade { subnet } => o.masquerade = Some(*subnet),
            Step::RemoveMasquerade => o.masquerade = None,
            Step::CreateNamespace { task_id } => {
                if broken.contains(task_id) {
                    return Err(NetError::Namespace { task_id: task_id.clone(), reason: "refused".into() });
                }
                if o.namespaces.contains(task_id) {
                    return Err(refuse(step, "File exists"));
                }
                o.namespaces.push(task_id.clone());
                o.lb.insert(task_id.clone(), vec![]);
            }
            Step::DeleteNamespace { task_id } => {
                if !o.namespaces.contains(task_id) {
                    return Err(refuse(step, "No such file or directory"));
                }
                o.namespaces.retain(|t| t != task_id);
                o.lb.remove(task_id);
            }
            Step::SetPorts(ports) => {
                o.ports = if ports.is_empty() { None } else { Some(ports.clone()) };
            }
            Step::SetVips { task_id, vips } => {
                if !o.namespaces.contains(task_id) {
                    return Err(refuse(step, "no namespace"));
                }
                o.lb.insert(task_id.clone(), vips.clone());
            }
            Step::AddInterface { task_id, index, interface } => {
                if !o.namespaces.contains(task_id) {
                    return Err(refuse(step, "no namespace"));
                }
                if !has(o, &interface.bridge) {
                    return Err(refuse(step, "No such device (bridge)"));
                }
                let name = veth_name(task_id, *index);
                if has(o, &name) {
                    return Err(refuse(step, "File exists"));
                }
                o.links.push(link(&name, LinkKind::Veth, Some(interface.bridge.clone()), interface.mtu));
            }
        }
        log.push(step.clone());
        Ok(())
    }
}

#[async_trait::async_trait]
impl Executor for Fake {
    async fn observe(&self) -> Result<Observed, NetError> {
        Ok(self.observed())
    }

    async fn run(&self, step: &Step) -> Result<(), NetError> {
        self.apply(step)
    }

    fn namespace_path(&self, task_id: &str) -> PathBuf {
        PathBuf::from("/fake/netns").join(task_id)
    }
}
