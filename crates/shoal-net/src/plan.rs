//! From desired and observed host state to the steps between them. Pure.

use std::collections::{BTreeMap, BTreeSet, HashMap};

use crate::{
    bridge_name, mac_of, veth_name, vxlan_name, Desired, Fdb, Link, LinkKind, Neigh, Observed, Step, GATEWAY_BRIDGE,
    VETH_PREFIX,
};

fn is_overlay_device(name: &str) -> bool {
    name.starts_with("shbr") || name.starts_with("shvx")
}

/// The steps that bring a host holding `o` to `d`, in an order the kernel accepts: what goes
/// first (task links, then namespaces, then overlay devices), then what comes (bridges before
/// the devices and task interfaces plugged into them, VXLAN devices before their entries).
/// Empty when the host holds exactly what is desired. Pure.
pub fn plan(d: &Desired, o: &Observed) -> Vec<Step> {
    let mut steps = Vec::new();
    let links: HashMap<&str, &Link> = o.links.iter().map(|l| (l.name.as_str(), l)).collect();

    // --- tasks: which are whole, which go, which are (re)made
    let namespaces: BTreeSet<&str> = o.namespaces.iter().map(String::as_str).collect();
    let mut keep_veths: BTreeSet<String> = BTreeSet::new();
    let mut remake: Vec<&crate::TaskNet> = Vec::new();
    for t in &d.tasks {
        let names: Vec<String> = (0..t.interfaces.len()).map(|i| veth_name(&t.task_id, i)).collect();
        let whole = namespaces.contains(t.task_id.as_str())
            && names.iter().zip(&t.interfaces).all(|(n, i)| {
                links
                    .get(n.as_str())
                    .is_some_and(|l| l.kind == LinkKind::Veth && l.master.as_deref() == Some(&i.bridge))
            });
        if whole {
            keep_veths.extend(names);
        } else {
            remake.push(t);
        }
    }
    let mut dead_links: BTreeSet<String> = o
        .links
        .iter()
        .filter(|l| l.name.starts_with(VETH_PREFIX) && !keep_veths.contains(&l.name))
        .map(|l| l.name.clone())
        .collect();
    let wanted_tasks: BTreeSet<&str> = d.tasks.iter().map(|t| t.task_id.as_str()).collect();
    let remade: BTreeSet<&str> = remake.iter().map(|t| t.task_id.as_str()).collect();
    let dead_namespaces: Vec<&str> =
        namespaces.iter().copied().filter(|id| !wanted_tasks.contains(id) || remade.contains(id)).collect();

    // --- overlay devices
    let wanted_overlays: BTreeMap<u32, &crate::Overlay> = d.overlays.iter().map(|n| (n.vni, n)).collect();
    let mut create_bridges = Vec::new();
    let mut create_vxlans = Vec::new();
    let mut mtus = Vec::new();
    for (vni, n) in &wanted_overlays {
        let (br, vx) = (bridge_name(*vni), vxlan_name(*vni));
        let addressed = |l: &Link| match n.address {
            Some(a) => l.addresses == [a],
            None => l.addresses.is_empty(),
        };
        let mut bridge_remade = false;
        match links.get(br.as_str()) {
            Some(l) if l.kind == LinkKind::Bridge && addressed(l) => {
                if l.mtu != n.mtu {
                    mtus.push(Step::SetMtu { name: br.clone(), mtu: n.mtu });
                }
            }
            Some(_) => {
                dead_links.insert(br.clone());
                bridge_remade = true;
                create_bridges.push(Step::CreateBridge { name: br.clone(), mtu: n.mtu, address: n.address });
            }
            None => {
                bridge_remade = true;
                create_bridges.push(Step::CreateBridge { name: br.clone(), mtu: n.mtu, address: n.address })
            }
        }
        let vx_ok = !bridge_remade
            && links.get(vx.as_str()).is_some_and(|l| {
                l.kind == LinkKind::Vxlan { vni: *vni, port: d.port } && l.master.as_deref() == Some(br.as_str())
            });
        if vx_ok {
            if links.get(vx.as_str()).is_some_and(|l| l.mtu != n.mtu) {
                mtus.push(Step::SetMtu { name: vx.clone(), mtu: n.mtu });
            }
        } else {
            if links.contains_key(vx.as_str()) {
                dead_links.insert(vx.clone());
            }
            create_vxlans.push(Step::CreateVxlan { vni: *vni, port: d.port, local: d.local, mtu: n.mtu, bridge: br });
        }
    }
    for l in &o.links {
        if is_overlay_device(&l.name) {
            let vni = l.name[4..].parse::<u32>().ok();
            if vni.is_none_or(|v| !wanted_overlays.contains_key(&v)) {
                dead_links.insert(l.name.clone());
            }
        }
    }

    // --- the gateway bridge
    let mut gateway_steps = Vec::new();
    match (&d.gateway, links.get(GATEWAY_BRIDGE)) {
        (Some(g), Some(l)) if l.kind == LinkKind::Bridge && l.addresses.contains(&g.address) => {
            if l.mtu != g.mtu {
                mtus.push(Step::SetMtu { name: GATEWAY_BRIDGE.into(), mtu: g.mtu });
            }
        }
        (Some(g), existing) => {
            if existing.is_some() {
                dead_links.insert(GATEWAY_BRIDGE.into());
            }
            gateway_steps.push(Step::CreateBridge {
                name: GATEWAY_BRIDGE.into(),
                mtu: g.mtu,
                address: Some(g.address),
            });
        }
        (None, Some(_)) => {
            dead_links.insert(GATEWAY_BRIDGE.into());
        }
        (None, None) => {}
    }
    match (&d.gateway, &o.masquerade) {
        (Some(g), m) if *m != Some(crate::Net { addr: g.address.network(), prefix: g.address.prefix }) => {
            gateway_steps
                .push(Step::Masquerade { subnet: crate::Net { addr: g.address.network(), prefix: g.address.prefix } });
        }
        (None, Some(_)) => gateway_steps.push(Step::RemoveMasquerade),
        _ => {}
    }

    // --- forwarding and neighbour entries of the devices that stay
    let live_vxlan = |vni: u32| wanted_overlays.contains_key(&vni) && !dead_links.contains(&vxlan_name(vni));
    let want_fdb: BTreeSet<Fdb> = d
        .remotes
        .iter()
        .filter(|r| wanted_overlays.contains_key(&r.vni))
        .map(|r| Fdb { vni: r.vni, mac: mac_of(r.address), dst: r.host })
        .collect();
    let want_neigh: BTreeSet<Neigh> = d
        .remotes
        .iter()
        .filter(|r| wanted_overlays.contains_key(&r.vni))
        .map(|r| Neigh { vni: r.vni, ip: r.address, mac: mac_of(r.address) })
        .collect();
    let have_fdb: BTreeSet<Fdb> = o.fdb.iter().copied().filter(|f| live_vxlan(f.vni)).collect();
    let have_neigh: BTreeSet<Neigh> = o.neigh.iter().copied().filter(|n| live_vxlan(n.vni)).collect();

    // --- in order
    // Task links before the bridges they are ports of; VXLAN devices before bridges.
    let order = |n: &String| {
        if n.starts_with(VETH_PREFIX) {
            0
        } else if n.starts_with("shvx") {
            1
        } else {
            2
        }
    };
    let mut dead: Vec<String> = dead_links.iter().cloned().collect();
    dead.sort_by_key(|n| (order(n), n.clone()));
    steps.extend(dead.into_iter().map(|name| Step::DeleteLink { name }));
    steps.extend(dead_namespaces.into_iter().map(|t| Step::DeleteNamespace { task_id: t.to_string() }));
    steps.extend(have_fdb.difference(&want_fdb).map(|f| Step::DeleteFdb(*f)));
    steps.extend(have_neigh.difference(&want_neigh).map(|n| Step::DeleteNeigh(*n)));
    steps.extend(create_bridges);
    steps.extend(create_vxlans);
    steps.extend(gateway_steps);
    steps.extend(mtus);
    let fresh_vxlan = |vni: u32| !links.contains_key(vxlan_name(vni).as_str()) || !live_vxlan(vni);
    // Entries of a device made in this pass are all new; the others only what is missing.
    steps.extend(want_fdb.iter().filter(|f| fresh_vxlan(f.vni) || !have_fdb.contains(f)).map(|f| Step::AddFdb(*f)));
    steps.extend(
        want_neigh.iter().filter(|n| fresh_vxlan(n.vni) || !have_neigh.contains(n)).map(|n| Step::AddNeigh(*n)),
    );
    for t in &remake {
        steps.push(Step::CreateNamespace { task_id: t.task_id.clone() });
        for (index, interface) in t.interfaces.iter().enumerate() {
            steps.push(Step::AddInterface { task_id: t.task_id.clone(), index, interface: interface.clone() });
        }
    }
    // Published ports, after the interfaces they lead to.
    let ports_differ = if d.ports.is_empty() { o.ports.is_some() } else { o.ports.as_ref() != Some(&d.ports) };
    if ports_differ {
        steps.push(Step::SetPorts(d.ports.clone()));
    }
    // VIP rules: a new namespace has none; another gets them when they differ from what was
    // installed, or when nobody knows what was (a restarted agent installs them again).
    let none = Vec::new();
    for t in &d.tasks {
        let have = if remade.contains(t.task_id.as_str()) { Some(&none) } else { o.lb.get(&t.task_id) };
        if have != Some(&t.vips) {
            steps.push(Step::SetVips { task_id: t.task_id.clone(), vips: t.vips.clone() });
        }
    }
    steps
}

#[cfg(test)]
mod tests {
    use std::net::Ipv4Addr;

    use super::*;
    use crate::{Gateway, Interface, Net, Overlay, Remote, TaskNet};

    fn net(s: &str) -> Net {
        Net::parse(s).expect("net")
    }

    fn desired() -> Desired {
        Desired {
            ports: vec![crate::PublishedPort {
                udp: false,
                published: 8080,
                target: 80,
                backends: vec![Ipv4Addr::new(172, 18, 0, 2)],
                masquerade: false,
            }],
            local: Some(Ipv4Addr::new(192, 168, 50, 2)),
            port: 4789,
            overlays: vec![Overlay { vni: 4097, subnet: net("10.0.1.0/24"), mtu: 1450, address: None }],
            remotes: vec![Remote {
                vni: 4097,
                address: Ipv4Addr::new(10, 0, 1, 7),
                host: Ipv4Addr::new(192, 168, 50, 3),
            }],
            gateway: Some(Gateway { address: net("172.18.0.1/16"), mtu: 1500 }),
            tasks: vec![TaskNet {
                task_id: "task1abcdefgh".into(),
                vips: vec![crate::Vip {
                    vip: Ipv4Addr::new(10, 0, 1, 2),
                    backends: vec![Ipv4Addr::new(10, 0, 1, 3), Ipv4Addr::new(10, 0, 1, 7)],
                }],
                interfaces: vec![
                    Interface { bridge: "shbr4097".into(), address: net("10.0.1.3/24"), mtu: 1450, gateway: None },
                    Interface {
                        bridge: GATEWAY_BRIDGE.into(),
                        address: net("172.18.0.2/16"),
                        mtu: 1500,
                        gateway: Some(Ipv4Addr::new(172, 18, 0, 1)),
                    },
                ],
            }],
        }
    }

    #[test]
    fn an_empty_host_gets_everything_in_order() {
        let steps = plan(&desired(), &Observed::default());
        let kinds: Vec<&str> = steps
            .iter()
            .map(|s| match s {
                Step::CreateBridge { name, .. } if name == GATEWAY_BRIDGE => "gwbridge",
                Step::CreateBridge { .. } => "bridge",
                Step::CreateVxlan { .. } => "vxlan",
                Step::Masquerade { .. } => "masquerade",
                Step::AddFdb(_) => "fdb",
                Step::AddNeigh(_) => "neigh",
                Step::CreateNamespace { .. } => "netns",
                Step::AddInterface { .. } => "if",
                Step::SetPorts(_) => "ports",
                Step::SetVips { .. } => "vips",
                _ => "other",
            })
            .collect();
        assert_eq!(
            kinds,
            ["bridge", "vxlan", "gwbridge", "masquerade", "fdb", "neigh", "netns", "if", "if", "ports", "vips"]
        );
        assert!(matches!(steps.last(), Some(Step::SetVips { vips, .. }) if vips.len() == 1), "the VIP rules last");
        assert!(steps.contains(&Step::Masquerade { subnet: net("172.18.0.0/16") }));
        assert!(steps.contains(&Step::AddFdb(Fdb {
            vni: 4097,
            mac: [2, 0x42, 10, 0, 1, 7],
            dst: Ipv4Addr::new(192, 168, 50, 3)
        })));
    }

    #[test]
    fn a_host_that_holds_what_is_desired_gets_no_step() {
        let fake = crate::fake::Fake::default();
        for s in plan(&desired(), &Observed::default()) {
            fake.apply(&s).expect("step");
        }
        assert_eq!(plan(&desired(), &fake.observed()), Vec::<Step>::new());
    }

    #[test]
    fn a_gone_remote_loses_its_entries_and_nothing_else_changes() {
        let fake = crate::fake::Fake::default();
        for s in plan(&desired(), &Observed::default()) {
            fake.apply(&s).expect("step");
        }
        let mut d = desired();
        d.remotes.clear();
        let steps = plan(&d, &fake.observed());
        assert_eq!(
            steps,
            vec![
                Step::DeleteFdb(Fdb { vni: 4097, mac: [2, 0x42, 10, 0, 1, 7], dst: Ipv4Addr::new(192, 168, 50, 3) }),
                Step::DeleteNeigh(Neigh { vni: 4097, ip: Ipv4Addr::new(10, 0, 1, 7), mac: [2, 0x42, 10, 0, 1, 7] }),
            ]
        );
    }

    #[test]
    fn a_remote_that_moved_host_is_repointed() {
        let fake = crate::fake::Fake::default();
        for s in plan(&desired(), &Observed::default()) {
            fake.apply(&s).expect("step");
        }
        let mut d = desired();
        d.remotes[0].host = Ipv4Addr::new(192, 168, 50, 9);
        let steps = plan(&d, &fake.observed());
        assert_eq!(steps.len(), 2, "{steps:?}");
        assert!(matches!(steps[0], Step::DeleteFdb(f) if f.dst == Ipv4Addr::new(192, 168, 50, 3)));
        assert!(matches!(steps[1], Step::AddFdb(f) if f.dst == Ipv4Addr::new(192, 168, 50, 9)));
    }

    #[test]
    fn the_last_task_going_takes_its_links_namespace_overlay_and_gateway() {
        let fake = crate::fake::Fake::default();
        for s in plan(&desired(), &Observed::default()) {
            fake.apply(&s).expect("step");
        }
        let steps = plan(&Desired { port: 4789, ..Default::default() }, &fake.observed());
        let names: Vec<String> = steps
            .iter()
            .map(|s| match s {
                Step::DeleteLink { name } => name.clone(),
                Step::DeleteNamespace { task_id } => format!("netns {task_id}"),
                Step::RemoveMasquerade => "masquerade".into(),
                Step::SetPorts(p) if p.is_empty() => "no ports".into(),
                other => format!("{other:?}"),
            })
            .collect();
        assert_eq!(
            names,
            [
                "shvetask1abcd0",
                "shvetask1abcd1",
                "shvx4097",
                "shbr4097",
                GATEWAY_BRIDGE,
                "netns task1abcdefgh",
                "masquerade",
                "no ports"
            ]
        );
        for s in &steps {
            fake.apply(s).expect("step");
        }
        assert_eq!(fake.observed(), Observed::default(), "nothing is left behind");
    }

    #[test]
    fn a_half_made_task_is_made_again() {
        let fake = crate::fake::Fake::default();
        for s in plan(&desired(), &Observed::default()) {
            fake.apply(&s).expect("step");
        }
        let mut o = fake.observed();
        o.links.retain(|l| l.name != "shvetask1abcd1");
        let steps = plan(&desired(), &o);
        assert_eq!(
            steps,
            vec![
                Step::DeleteLink { name: "shvetask1abcd0".into() },
                Step::DeleteNamespace { task_id: "task1abcdefgh".into() },
                Step::CreateNamespace { task_id: "task1abcdefgh".into() },
                Step::AddInterface {
                    task_id: "task1abcdefgh".into(),
                    index: 0,
                    interface: desired().tasks[0].interfaces[0].clone()
                },
                Step::AddInterface {
                    task_id: "task1abcdefgh".into(),
                    index: 1,
                    interface: desired().tasks[0].interfaces[1].clone()
                },
                Step::SetVips { task_id: "task1abcdefgh".into(), vips: desired().tasks[0].vips.clone() },
            ]
        );
    }

    #[test]
    fn vip_rules_follow_their_backends_and_come_back_after_a_restart() {
        let fake = crate::fake::Fake::default();
        for s in plan(&desired(), &Observed::default()) {
            fake.apply(&s).expect("step");
        }
        let mut d = desired();
        d.tasks[0].vips[0].backends.pop();
        let steps = plan(&d, &fake.observed());
        assert_eq!(steps, vec![Step::SetVips { task_id: "task1abcdefgh".into(), vips: d.tasks[0].vips.clone() }]);
        // A restarted agent does not know what it installed: it installs the rules again.
        let mut o = fake.observed();
        o.lb.clear();
        assert_eq!(plan(&desired(), &o).len(), 1);
    }

    #[test]
    fn a_vxlan_device_on_another_port_is_replaced_with_its_entries() {
        let fake = crate::fake::Fake::default();
        for s in plan(&desired(), &Observed::default()) {
            fake.apply(&s).expect("step");
        }
        let mut d = desired();
        d.port = 7777;
        let steps = plan(&d, &fake.observed());
        assert!(matches!(&steps[0], Step::DeleteLink { name } if name == "shvx4097"), "{steps:?}");
        assert!(steps.iter().any(|s| matches!(s, Step::CreateVxlan { port: 7777, .. })));
        assert!(steps.iter().any(|s| matches!(s, Step::AddFdb(_))));
        assert!(steps.iter().any(|s| matches!(s, Step::AddNeigh(_))));
        for s in &steps {
            fake.apply(s).expect("step");
        }
        assert_eq!(plan(&d, &fake.observed()), vec![]);
    }

    mod prop {
        use proptest::prelude::*;

        use super::*;

        fn arb_desired() -> impl Strategy<Value = Desired> {
            let overlays = proptest::collection::btree_set(4096u32..4100, 0..4);
            (overlays, proptest::collection::vec((0u8..20, 0u32..4, 1u8..4), 0..12), 0usize..4, any::<bool>()).prop_map(
                |(vnis, remotes, ntasks, gw)| {
                    let vnis: Vec<u32> = vnis.into_iter().collect();
                    let overlays: Vec<Overlay> = vnis
                        .iter()
                        .map(|v| Overlay {
                            vni: *v,
                            subnet: net(&format!("10.0.{}.0/24", v - 4096)),
                            mtu: 1450,
                            // The first one carries an address of the host's, as ingress does.
                            address: (*v == 4096).then(|| net("10.0.0.250/24")),
                        })
                        .collect();
                    let mut remotes: Vec<Remote> = if vnis.is_empty() {
                        vec![]
                    } else {
                        remotes
                            .into_iter()
                            .map(|(a, i, h)| Remote {
                                vni: vnis[i as usize % vnis.len()],
                                address: Ipv4Addr::new(10, 0, 9, 10 + a),
                                host: Ipv4Addr::new(192, 168, 0, h),
                            })
                            .collect()
                    };
                    // One host per remote address, as the allocator guarantees.
                    remotes.sort_by_key(|r| (r.vni, r.address));
                    remotes.dedup_by_key(|r| (r.vni, r.address));
                    let gateway = gw.then_some(Gateway { address: net("172.18.0.1/16"), mtu: 1500 });
                    let tasks = (0..ntasks)
                        .map(|i| TaskNet {
                            task_id: format!("t{i}xxxxxxxxxx"),
                            vips: if i % 2 == 0 {
                                vec![]
                            } else {
                                vec![crate::Vip {
                                    vip: Ipv4Addr::new(10, 0, 0, 2),
                                    backends: vec![Ipv4Addr::new(10, 0, 9, 10)],
                                }]
                            },
                            interfaces: vnis
                                .iter()
                                .take(i)
                                .enumerate()
                                .map(|(k, v)| Interface {
                                    bridge: bridge_name(*v),
                                    address: net(&format!("10.0.{}.{}/24", v - 4096, 2 + k)),
                                    mtu: 1450,
                                    gateway: None,
                                })
                                .collect(),
                        })
                        .collect();
                    let ports = if gw {
                        vec![
                            crate::PublishedPort {
                                udp: false,
                                published: 8080,
                                target: 80,
                                backends: vec![Ipv4Addr::new(172, 18, 0, 2)],
                                masquerade: false,
                            },
                            crate::PublishedPort {
                                udp: true,
                                published: 8080,
                                target: 53,
                                backends: vec![Ipv4Addr::new(10, 0, 9, 10), Ipv4Addr::new(10, 0, 9, 11)],
                                masquerade: true,
                            },
                        ]
                    } else {
                        vec![]
                    };
                    Desired { local: None, port: 4789, overlays, remotes, gateway, tasks, ports }
                },
            )
        }

        proptest! {
            /// From any state to any other: one pass of the plan reaches it, and a second pass
            /// finds nothing to do.
            #[test]
            fn one_pass_converges(a in arb_desired(), b in arb_desired()) {
                let fake = crate::fake::Fake::default();
                for s in plan(&a, &Observed::default()) {
                    fake.apply(&s).map_err(|e| TestCaseError::fail(e.to_string()))?;
                }
                prop_assert_eq!(plan(&a, &fake.observed()), vec![]);
                for s in plan(&b, &fake.observed()) {
                    fake.apply(&s).map_err(|e| TestCaseError::fail(e.to_string()))?;
                }
                prop_assert_eq!(plan(&b, &fake.observed()), vec![]);
                let fresh = crate::fake::Fake::default();
                for s in plan(&b, &Observed::default()) {
                    fresh.apply(&s).map_err(|e| TestCaseError::fail(e.to_string()))?;
                }
                prop_assert_eq!(fresh.observed(), fake.observed());
            }
        }
    }
}
