//! The netlink executor against the real kernel: two hosts (network namespaces joined by a
//! veth pair as the underlay), each converged to its desired state, then traffic between their
//! tasks over VXLAN, egress through the gateway bridge, and everything gone once nothing is
//! desired. Needs root, iproute2, nftables and busybox (CI has them; a missing one fails).

use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};
use std::process::Command;

use futures::TryStreamExt;
use shoal_net::{
    bridge_name, converge, netlink::Netlink, netns, plan, Desired, Executor, Gateway, Interface, Net, Observed,
    Overlay, PublishedPort, Remote, TaskNet, Vip, GATEWAY_BRIDGE,
};

fn net(s: &str) -> Net {
    Net::parse(s).expect("net")
}

/// Runs `f` on a thread inside the namespace at `ns`, with a runtime of its own.
fn in_ns<T: Send + 'static, F>(ns: &Path, f: impl FnOnce() -> F + Send + 'static) -> T
where
    F: std::future::Future<Output = T>,
{
    let ns = ns.to_path_buf();
    std::thread::spawn(move || {
        let file = std::fs::File::open(&ns).expect("open namespace");
        nix::sched::setns(&file, nix::sched::CloneFlags::CLONE_NEWNET).expect("enter namespace");
        let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().expect("runtime");
        rt.block_on(f())
    })
    .join()
    .expect("namespace thread")
}

fn sh(ns: &Path, args: &[&str]) -> std::process::Output {
    let out = Command::new("nsenter")
        .arg(format!("--net={}", ns.display()))
        .args(args)
        .output()
        .expect("nsenter (util-linux) must be installed");
    out
}

fn must(ns: &Path, args: &[&str]) {
    let out = sh(ns, args);
    assert!(out.status.success(), "{args:?}: {}", String::from_utf8_lossy(&out.stderr));
}

fn ping(ns: &Path, to: &str) -> bool {
    sh(ns, &["busybox", "ping", "-c", "1", "-W", "2", to]).status.success()
}

struct Host {
    ns: PathBuf,
    tasks: PathBuf,
}

impl Drop for Host {
    fn drop(&mut self) {
        for (_, p) in netns::list(&self.tasks).unwrap_or_default() {
            let _ = netns::remove(&p);
        }
        let _ = netns::remove(&self.ns);
    }
}

fn desired(me: u8, peer: u8, task: &str, with_remote: bool) -> Desired {
    // The host's own address on the overlay, as on the ingress network.
    let overlay = Overlay {
        vni: 5000,
        subnet: net("10.77.0.0/24"),
        mtu: 1450,
        address: Some(net(&format!("10.77.0.{}/24", 200 + me))),
    };
    Desired {
        ports: vec![
            // Host mode: port 8080 leads to its own task's port 9000.
            PublishedPort {
                udp: false,
                published: 8080,
                target: 9000,
                backends: vec![Ipv4Addr::new(172, 29, 0, 2)],
                masquerade: false,
            },
            // Ingress: port 8081 leads to the other host's task over the overlay.
            PublishedPort {
                udp: false,
                published: 8081,
                target: 9000,
                backends: vec![Ipv4Addr::new(10, 77, 0, 10 + peer)],
                masquerade: true,
            },
            // No backend: refused.
            PublishedPort { udp: false, published: 8082, target: 9000, backends: vec![], masquerade: true },
        ],
        local: Some(Ipv4Addr::new(192, 168, 77, me)),
        port: 4789,
        overlays: vec![overlay],
        remotes: if with_remote {
            vec![
                Remote {
                    vni: 5000,
                    address: Ipv4Addr::new(10, 77, 0, 10 + peer),
                    host: Ipv4Addr::new(192, 168, 77, peer),
                },
                Remote {
                    vni: 5000,
                    address: Ipv4Addr::new(10, 77, 0, 200 + peer),
                    host: Ipv4Addr::new(192, 168, 77, peer),
                },
            ]
        } else {
            vec![]
        },
        gateway: Some(Gateway { address: net("172.29.0.1/16"), mtu: 1500 }),
        tasks: vec![TaskNet {
            task_id: task.into(),
            // A VIP whose one backend is the peer task, and one with no backend.
            vips: vec![
                Vip { vip: Ipv4Addr::new(10, 77, 0, 100), backends: vec![Ipv4Addr::new(10, 77, 0, 10 + peer)] },
                Vip { vip: Ipv4Addr::new(10, 77, 0, 101), backends: vec![] },
            ],
            interfaces: vec![
                Interface {
                    bridge: bridge_name(5000),
                    address: Net { addr: Ipv4Addr::new(10, 77, 0, 10 + me), prefix: 24 },
                    mtu: 1450,
                    gateway: None,
                },
                Interface {
                    bridge: GATEWAY_BRIDGE.into(),
                    address: net("172.29.0.2/16"),
                    mtu: 1500,
                    gateway: Some(Ipv4Addr::new(172, 29, 0, 1)),
                },
            ],
        }],
    }
}

/// Converges the host to `d`; returns the steps that failed and what a second plan finds.
fn converge_in(h: &Host, d: Desired) -> (Vec<String>, Vec<shoal_net::Step>, Observed) {
    let dir = h.tasks.clone();
    in_ns(&h.ns, move || async move {
        let exec = Netlink::new(dir).expect("netlink");
        let out = converge(&exec, &d).await.expect("observe");
        let failed = out.failed.iter().map(|(s, e)| format!("{s:?}: {e}")).collect();
        let observed = exec.observe().await.expect("observe");
        (failed, plan(&d, &observed), observed)
    })
}

#[test]
fn two_hosts_reach_each_others_tasks_over_vxlan_and_leave_nothing_behind() {
    let root = tempfile::tempdir().expect("tempdir");
    let mk = |n: &str| {
        let ns = root.path().join(format!("host-{n}"));
        netns::create(&ns).expect("host namespace (needs root)");
        Host { ns, tasks: root.path().join(format!("tasks-{n}")) }
    };
    let (h1, h2) = (mk("1"), mk("2"));
    // The underlay: one veth pair between the two hosts.
    let (p1, p2) = (h1.ns.clone(), h2.ns.clone());
    tokio::runtime::Builder::new_current_thread().enable_all().build().expect("rt").block_on(async move {
        let (conn, handle, _) = rtnetlink::new_connection().expect("netlink");
        tokio::spawn(conn);
        handle.link().add(rtnetlink::LinkVeth::new("ntu1", "ntu2").build()).execute().await.expect("veth");
        for (name, ns) in [("ntu1", &p1), ("ntu2", &p2)] {
            let m = handle.link().get().match_name(name).execute().try_next().await.expect("get").expect("link");
            let f = std::fs::File::open(ns).expect("ns");
            handle
                .link()
                .set(
                    rtnetlink::LinkUnspec::new_with_index(m.header.index)
                        .setns_by_fd(std::os::fd::AsRawFd::as_raw_fd(&f))
                        .build(),
                )
                .execute()
                .await
                .expect("move");
        }
    });
    for (h, n, a) in [(&h1, "ntu1", "192.168.77.1/24"), (&h2, "ntu2", "192.168.77.2/24")] {
        must(&h.ns, &["ip", "link", "set", "lo", "up"]);
        must(&h.ns, &["ip", "addr", "add", a, "dev", n]);
        must(&h.ns, &["ip", "link", "set", n, "up"]);
    }

    let (failed, again, observed) = converge_in(&h1, desired(1, 2, "taska", true));
    assert_eq!(failed, Vec::<String>::new());
    assert_eq!(again, vec![], "what the executor made reads back as desired: {observed:?}");
    let (failed, again, _) = converge_in(&h2, desired(2, 1, "taskb", true));
    assert_eq!(failed, Vec::<String>::new());
    assert_eq!(again, vec![]);

    let (ta, tb) = (h1.tasks.join("taska"), h2.tasks.join("taskb"));
    let link = String::from_utf8_lossy(&sh(&h1.ns, &["ip", "-d", "link", "show", "shvx5000"]).stdout).to_string();
    assert!(link.contains("vxlan id 5000") && link.contains("nolearning") && link.contains("proxy"), "{link}");
    assert!(link.contains("mtu 1450"), "{link}");
    assert!(link.contains("learning off"), "the bridge does not learn from the overlay: {link}");
    let eth0 = String::from_utf8_lossy(&sh(&ta, &["ip", "addr", "show", "eth0"]).stdout).to_string();
    assert!(eth0.contains("10.77.0.11/24") && eth0.contains("02:42:0a:4d:00:0b"), "{eth0}");

    assert!(ping(&ta, "10.77.0.12"), "task a reaches task b across the hosts");
    assert!(ping(&tb, "10.77.0.11"), "and back");
    // Egress: the other host's underlay address answers only because the source is
    // masqueraded (it has no route back to 172.29.0.0/16).
    assert!(ping(&ta, "192.168.77.2"), "egress through the gateway bridge");
    let nft = String::from_utf8_lossy(&sh(&h1.ns, &["nft", "list", "table", "ip", "shoal"]).stdout).to_string();
    assert!(nft.contains("masquerade"), "{nft}");

    // The VIP leads to its backend on the other host; a VIP without backends refuses at once.
    assert!(ping(&ta, "10.77.0.100"), "the VIP reaches its backend");
    let refused = sh(&ta, &["busybox", "nc", "10.77.0.101", "80"]);
    let why = String::from_utf8_lossy(&refused.stderr).to_string();
    assert!(!refused.status.success() && why.contains("refused"), "{why}");

    // A published port: host 2 reaches task a's port 9000 at host 1's address, port 8080.
    let tcp_server = "import socket\ns = socket.socket()\ns.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)\n\
                      s.bind(('0.0.0.0', 9000))\ns.listen(1)\ns.settimeout(20)\nc, _ = s.accept()\nc.sendall(b'pong')\nc.close()\n";
    let mut pong = Command::new("nsenter")
        .arg(format!("--net={}", ta.display()))
        .args(["python3", "-c", tcp_server])
        .spawn()
        .expect("python3");
    let tcp_client = "import socket, time\nfor _ in range(20):\n    try:\n        s = socket.create_connection(('192.168.77.1', 8080), 2)\n\
                      \x20       print(s.recv(10).decode()); break\n    except OSError:\n        time.sleep(0.2)\n";
    let got = String::from_utf8_lossy(&sh(&h2.ns, &["python3", "-c", tcp_client]).stdout).to_string();
    assert_eq!(got.trim(), "pong", "the published port leads to the task");
    let _ = pong.kill();
    let _ = pong.wait();

    // An ingress port: host 1 forwards port 8081 to task b on host 2 over the overlay, from its
    // own address there, and the reply comes back through it.
    let peer_server = "import socket\ns = socket.socket()\ns.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)\n\
                       s.bind(('0.0.0.0', 9000))\ns.listen(1)\ns.settimeout(20)\nc, a = s.accept()\nc.sendall(a[0].encode())\nc.close()\n";
    let mut seen = Command::new("nsenter")
        .arg(format!("--net={}", tb.display()))
        .args(["python3", "-c", peer_server])
        .spawn()
        .expect("python3");
    let got = String::from_utf8_lossy(
        &sh(&h2.ns, &["python3", "-c", &tcp_client.replace("8080", "8081").replace("recv(10)", "recv(100)")]).stdout,
    )
    .to_string();
    assert_eq!(got.trim(), "10.77.0.201", "task b saw host 1's ingress address as the source");
    let _ = seen.kill();
    let _ = seen.wait();
    let refused = sh(&h2.ns, &["busybox", "nc", "192.168.77.1", "8082"]);
    let why = String::from_utf8_lossy(&refused.stderr).to_string();
    assert!(!refused.status.success() && why.contains("refused"), "a port without backends refuses: {why}");

    // UDP through the VIP too; once the backend leaves the VIP, its flow is forgotten.
    let server = "import socket\ns = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)\ns.bind(('0.0.0.0', 9999))\n\
                  s.settimeout(20)\nwhile True:\n    d, a = s.recvfrom(100)\n    s.sendto(d, a)\n";
    let mut echo = Command::new("nsenter")
        .arg(format!("--net={}", tb.display()))
        .args(["python3", "-c", server])
        .spawn()
        .expect("python3");
    let client = "import socket, time\ns = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)\ns.settimeout(1)\n\
                  for _ in range(10):\n    s.sendto(b'ping', ('10.77.0.100', 9999))\n    try:\n        print(s.recv(100).decode()); break\n\
                  \x20   except socket.timeout:\n        time.sleep(0.2)\n";
    let answer = String::from_utf8_lossy(&sh(&ta, &["python3", "-c", client]).stdout).to_string();
    assert_eq!(answer.trim(), "ping", "a UDP datagram to the VIP is answered by its backend");
    let flows = |ns: &Path| String::from_utf8_lossy(&sh(ns, &["conntrack", "-L", "-p", "udp"]).stdout).to_string();
    assert!(flows(&ta).contains("dst=10.77.0.100"), "{}", flows(&ta));
    let mut gone = desired(1, 2, "taska", true);
    gone.tasks[0].vips[0].backends.clear();
    let (failed, _, _) = converge_in(&h1, gone);
    assert_eq!(failed, Vec::<String>::new());
    assert!(!flows(&ta).contains("dst=10.77.0.100"), "the removed backend's UDP flow is flushed: {}", flows(&ta));
    let _ = echo.kill();
    let _ = echo.wait();

    // Host 1 forgets task b: nothing forwards to it any more.
    let (failed, _, observed) = converge_in(&h1, desired(1, 2, "taska", false));
    assert_eq!(failed, Vec::<String>::new());
    assert!(observed.fdb.is_empty() && observed.neigh.is_empty(), "{observed:?}");
    assert!(!ping(&ta, "10.77.0.12"), "a gone endpoint is not reachable");

    // Nothing desired: nothing of shoal's is left on the host.
    let (failed, again, observed) = converge_in(&h1, Desired { port: 4789, ..Default::default() });
    assert_eq!(failed, Vec::<String>::new());
    assert_eq!(again, vec![]);
    assert_eq!(observed, Observed::default());
    assert!(!ta.exists(), "the task's namespace file is gone");
    let links = String::from_utf8_lossy(&sh(&h1.ns, &["ip", "-o", "link"]).stdout).to_string();
    assert!(!links.contains("shbr") && !links.contains("shvx") && !links.contains(GATEWAY_BRIDGE), "{links}");
    assert!(!sh(&h1.ns, &["nft", "list", "table", "ip", "shoal"]).status.success(), "the nftables table is gone");
    assert!(!sh(&h1.ns, &["nft", "list", "table", "ip", "shoal_ports"]).status.success(), "no port is published");
}

/// The task resolver in a real namespace: UDP and TCP at 127.0.0.11:53, the task's names
/// answered, a large answer truncated over UDP and whole over TCP.
#[test]
fn the_resolver_answers_over_udp_and_tcp_inside_the_namespace() {
    use hickory_proto::op::{Message, Query};
    use hickory_proto::rr::{Name, RecordType};
    use shoal_net::dns;
    use std::io::{Read, Write};

    let root = tempfile::tempdir().expect("tempdir");
    let ns = root.path().join("task");
    netns::create(&ns).expect("namespace (needs root)");
    let _guard = Host { ns: ns.clone(), tasks: root.path().join("none") };
    must(&ns, &["ip", "link", "set", "lo", "up"]);
    let entries: Vec<dns::Entry> = (1..=40)
        .map(|i| dns::Entry {
            network_id: "n".into(),
            service: "big".into(),
            task_name: format!("big.{i}"),
            task_id: format!("t{i}"),
            aliases: vec![],
            address: Ipv4Addr::new(10, 1, 0, i),
        })
        .collect();
    let sockets = dns::bind_in(&ns).expect("bind in the namespace");
    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(1).enable_all().build().expect("rt");
    let cancel = tokio_util::sync::CancellationToken::new();
    let (_table_tx, table) = tokio::sync::watch::channel(std::sync::Arc::new(dns::Table::new(&entries, &[])));
    let server = rt.spawn(dns::serve(sockets, table, vec!["n".into()], vec![], cancel.clone()));
    let query = |name: &str| {
        let mut m = Message::query();
        m.metadata.id = 9;
        m.add_query(Query::query(Name::from_ascii(name).expect("name"), RecordType::A));
        m.to_vec().expect("encode")
    };
    let (q1, q2, q3) = (query("big.7."), query("big."), query("nosuch.example."));
    let (udp_one, udp_big, tcp_big, udp_unknown) = in_ns(&ns, move || async move {
        let s = std::net::UdpSocket::bind("127.0.0.1:0").expect("udp");
        s.set_read_timeout(Some(std::time::Duration::from_secs(3))).expect("timeout");
        let ask = |q: &[u8]| {
            s.send_to(q, (dns::ADDRESS, 53)).expect("send");
            let mut buf = [0u8; 4096];
            let n = s.recv(&mut buf).expect("an answer");
            Message::from_vec(&buf[..n]).expect("decode")
        };
        let (one, big, unknown) = (ask(&q1), ask(&q2), ask(&q3));
        let mut t = std::net::TcpStream::connect((dns::ADDRESS, 53)).expect("tcp");
        t.set_read_timeout(Some(std::time::Duration::from_secs(3))).expect("timeout");
        t.write_all(&(q2.len() as u16).to_be_bytes()).expect("write");
        t.write_all(&q2).expect("write");
        let mut len = [0u8; 2];
        t.read_exact(&mut len).expect("length");
        let mut body = vec![0u8; usize::from(u16::from_be_bytes(len))];
        t.read_exact(&mut body).expect("body");
        (one, big, Message::from_vec(&body).expect("decode"), unknown)
    });
    assert_eq!(udp_one.answers.len(), 1);
    assert!(udp_big.metadata.truncation, "40 addresses do not fit a 512-byte datagram");
    assert!(!tcp_big.metadata.truncation && tcp_big.answers.len() == 40, "over TCP they all come");
    assert_eq!(
        udp_unknown.metadata.response_code,
        hickory_proto::op::ResponseCode::ServFail,
        "a name of no network, with no upstream to ask"
    );
    cancel.cancel();
    rt.block_on(server).expect("server ends");
}
