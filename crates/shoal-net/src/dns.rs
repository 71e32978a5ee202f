//! The DNS server each task sees at 127.0.0.11: names of the networks the task is attached to,
//! answered from the replicated state (`answer` is pure), everything else forwarded to the
//! host's resolvers.

use std::collections::{BTreeMap, HashMap};
use std::net::{Ipv4Addr, SocketAddr};
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use hickory_proto::op::{Message, MessageType, OpCode, ResponseCode};
use hickory_proto::rr::rdata::A;
use hickory_proto::rr::{RData, Record, RecordType};
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

/// Where a task's resolver listens, inside its namespace (as Docker's).
pub const ADDRESS: Ipv4Addr = Ipv4Addr::new(127, 0, 0, 11);

/// How long answers may be cached by default: short, so a gone task is soon gone from every
/// cache too.
pub const TTL: u32 = 5;

/// One task address, with the names it answers to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Entry {
    /// The network.
    pub network_id: String,
    /// Its service's name.
    pub service: String,
    /// The task's name (`web.3`).
    pub task_name: String,
    /// The task's id.
    pub task_id: String,
    /// The service's aliases on the network.
    pub aliases: Vec<String>,
    /// The address.
    pub address: Ipv4Addr,
}

/// Per network: lower-case name (no trailing dot) -> addresses.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Table {
    names: HashMap<String, BTreeMap<String, Vec<Ipv4Addr>>>,
    ttl: u32,
}

fn key(name: &str) -> String {
    name.trim_end_matches('.').to_ascii_lowercase()
}

impl Table {
    /// The table of `entries`: `<service>` and `tasks.<service>` give every address of the
    /// service, each alias those of the service it belongs to, `<task name>` and
    /// `<task name>.<task id>` the task's own; but a service with a VIP on a network (`vips`:
    /// network, service, VIP) is its VIP there by `<service>` and its aliases (`tasks.` stays).
    pub fn new(entries: &[Entry], vips: &[(String, String, Ipv4Addr)]) -> Table {
        let mut names: HashMap<String, BTreeMap<String, Vec<Ipv4Addr>>> = HashMap::new();
        for e in entries {
            let net = names.entry(e.network_id.clone()).or_default();
            let mut add = |name: &str| {
                if !name.is_empty() {
                    let v = net.entry(key(name)).or_default();
                    if !v.contains(&e.address) {
                        v.push(e.address);
                    }
                }
            };
            if !e.service.is_empty() {
                add(&e.service);
                add(&format!("tasks.{}", e.service));
            }
            for a in &e.aliases {
                add(a);
            }
            if !e.task_name.is_empty() {
                add(&e.task_name);
                add(&format!("{}.{}", e.task_name, e.task_id));
            }
        }
        for net in names.values_mut() {
            for v in net.values_mut() {
                v.sort();
            }
        }
        for (network, service, vip) in vips {
            let net = names.entry(network.clone()).or_default();
            net.insert(key(service), vec![*vip]);
            let aliases = entries.iter().filter(|e| &e.network_id == network && &e.service == service);
            for a in aliases.flat_map(|e| e.aliases.iter()) {
                net.insert(key(a), vec![*vip]);
            }
        }
        Table { names, ttl: TTL }
    }

    /// The same table answering with `ttl`.
    pub fn with_ttl(mut self, ttl: u32) -> Table {
        self.ttl = ttl;
        self
    }

    /// The addresses of `name` on any of `networks`, or `None` when none of them knows it.
    pub fn lookup(&self, name: &str, networks: &[String]) -> Option<Vec<Ipv4Addr>> {
        let k = key(name);
        let mut out: Vec<Ipv4Addr> = Vec::new();
        let mut known = false;
        for n in networks {
            if let Some(v) = self.names.get(n).and_then(|m| m.get(&k)) {
                known = true;
                for a in v {
                    if !out.contains(a) {
                        out.push(*a);
                    }
                }
            }
        }
        known.then_some(out)
    }
}

/// What to do with a query.
#[derive(Debug, PartialEq, Eq)]
pub enum Answer {
    /// Send this back.
    Reply(Vec<u8>),
    /// Not a name of the task's networks: ask the host's resolvers.
    Forward,
    /// Not a DNS query: ignore.
    Drop,
}

/// How a query came.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Transport {
    /// A datagram: at most 512 bytes back (or the client's EDNS size), else truncated so the
    /// client asks again over TCP.
    Udp,
    /// A TCP stream: any size.
    Tcp,
}

/// The answer to `query` from a task on `networks`. Addresses are rotated by the query id so
/// clients that take the first one spread over the tasks. Pure.
pub fn answer(query: &[u8], table: &Table, networks: &[String], transport: Transport) -> Answer {
    let Ok(q) = Message::from_vec(query) else { return Answer::Drop };
    if q.metadata.message_type != MessageType::Query {
        return Answer::Drop;
    }
    if q.metadata.op_code != OpCode::Query || q.queries.len() != 1 {
        return Answer::Forward;
    }
    let question = &q.queries[0];
    let Some(mut addrs) = table.lookup(&question.name().to_ascii(), networks) else { return Answer::Forward };
    let mut r = Message::response(q.metadata.id, OpCode::Query);
    r.metadata.authoritative = true;
    r.metadata.recursion_desired = q.metadata.recursion_desired;
    r.metadata.recursion_available = true;
    r.metadata.response_code = ResponseCode::NoError;
    r.add_query(question.clone());
    if question.query_type() == RecordType::A || question.query_type() == RecordType::ANY {
        if !addrs.is_empty() {
            let n = usize::from(q.metadata.id) % addrs.len();
            addrs.rotate_left(n);
        }
        for a in addrs {
            r.add_answer(Record::from_rdata(question.name().clone(), table.ttl, RData::A(A(a))));
        }
    }
    let limit = match transport {
        Transport::Udp => q.edns.as_ref().map_or(512, |e| usize::from(e.max_payload()).max(512)),
        Transport::Tcp => usize::from(u16::MAX),
    };
    match r.to_vec() {
        Ok(v) if v.len() <= limit => Answer::Reply(v),
        Ok(_) => r.truncate().to_vec().map_or(Answer::Drop, Answer::Reply),
        Err(_) => Answer::Drop,
    }
}

/// A SERVFAIL for `query` (its upstream did not answer), if it parses.
pub fn servfail(query: &[u8]) -> Option<Vec<u8>> {
    let q = Message::from_vec(query).ok()?;
    let mut r = Message::error_msg(q.metadata.id, q.metadata.op_code, ResponseCode::ServFail);
    r.metadata.recursion_desired = q.metadata.recursion_desired;
    r.metadata.recursion_available = true;
    for x in q.queries {
        r.add_query(x);
    }
    r.to_vec().ok()
}

/// The name servers of a `resolv.conf`, port 53 (at most 3, as libc reads).
pub fn upstreams(resolv_conf: &str) -> Vec<SocketAddr> {
    resolv_conf
        .lines()
        .filter_map(|l| {
            let mut f = l.split_whitespace();
            (f.next()? == "nameserver").then(|| f.next()?.parse::<std::net::IpAddr>().ok()).flatten()
        })
        .map(|ip| SocketAddr::new(ip, 53))
        .take(3)
        .collect()
}

/// A resolver's sockets, bound inside a task's namespace.
#[derive(Debug)]
pub struct Sockets {
    /// UDP 127.0.0.11:53.
    pub udp: std::net::UdpSocket,
    /// TCP 127.0.0.11:53 (clients retry there when an answer was truncated).
    pub tcp: std::net::TcpListener,
}

/// Binds the resolver's sockets inside the namespace at `ns`.
pub fn bind_in(ns: &Path) -> Result<Sockets, String> {
    let target = ns.to_path_buf();
    crate::netns::on_own_thread(move || {
        let f = std::fs::File::open(&target).map_err(|e| format!("{}: {e}", target.display()))?;
        nix::sched::setns(&f, nix::sched::CloneFlags::CLONE_NEWNET)
            .map_err(|e| format!("entering the namespace: {e}"))?;
        let udp = std::net::UdpSocket::bind((ADDRESS, 53)).map_err(|e| format!("binding udp {ADDRESS}:53: {e}"))?;
        udp.set_nonblocking(true).map_err(|e| e.to_string())?;
        let tcp = std::net::TcpListener::bind((ADDRESS, 53)).map_err(|e| format!("binding tcp {ADDRESS}:53: {e}"))?;
        tcp.set_nonblocking(true).map_err(|e| e.to_string())?;
        Ok(Sockets { udp, tcp })
    })
}

/// Answers the queries of one TCP connection (length-prefixed, RFC 1035 4.2.2) until it
/// closes or stays idle for 10 s.
async fn serve_tcp(
    mut conn: tokio::net::TcpStream,
    table: Arc<Table>,
    networks: Arc<Vec<String>>,
    upstreams: Arc<Vec<SocketAddr>>,
) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    loop {
        let mut len = [0u8; 2];
        match tokio::time::timeout(Duration::from_secs(10), conn.read_exact(&mut len)).await {
            Ok(Ok(_)) => {}
            _ => return,
        }
        let mut query = vec![0u8; usize::from(u16::from_be_bytes(len))];
        if !matches!(tokio::time::timeout(Duration::from_secs(10), conn.read_exact(&mut query)).await, Ok(Ok(_))) {
            return;
        }
        let reply = match answer(&query, &table, &networks, Transport::Tcp) {
            Answer::Reply(r) => r,
            Answer::Forward => match forward(&query, &upstreams).await {
                Some(r) => r,
                None => match servfail(&query) {
                    Some(r) => r,
                    None => return,
                },
            },
            Answer::Drop => return,
        };
        let Ok(n) = u16::try_from(reply.len()) else { return };
        if conn.write_all(&n.to_be_bytes()).await.is_err() || conn.write_all(&reply).await.is_err() {
            return;
        }
    }
}

/// Asks the upstreams in turn (1 s each), returns the first answer.
async fn forward(query: &[u8], upstreams: &[SocketAddr]) -> Option<Vec<u8>> {
    for up in upstreams {
        let local: SocketAddr = if up.is_ipv4() { "0.0.0.0:0" } else { "[::]:0" }.parse().ok()?;
        let Ok(s) = tokio::net::UdpSocket::bind(local).await else { continue };
        if s.send_to(query, up).await.is_err() {
            continue;
        }
        let mut buf = vec![0u8; 4096];
        if let Ok(Ok((n, _))) = tokio::time::timeout(Duration::from_secs(1), s.recv_from(&mut buf)).await {
            if n >= 2 && buf[..2] == query[..2] {
                buf.truncate(n);
                return Some(buf);
            }
        }
    }
    None
}

/// Serves one task's resolver on `socket` until `cancel`: its names from `table`, the rest
/// from `upstreams` (at most 64 forwarded queries at once; a query that finds no upstream gets
/// SERVFAIL).
pub async fn serve(
    sockets: Sockets,
    mut table: watch::Receiver<Arc<Table>>,
    networks: Vec<String>,
    upstreams: Vec<SocketAddr>,
    cancel: CancellationToken,
) {
    let (socket, listener) =
        match (tokio::net::UdpSocket::from_std(sockets.udp), tokio::net::TcpListener::from_std(sockets.tcp)) {
            (Ok(s), Ok(l)) => (Arc::new(s), l),
            (Err(e), _) | (_, Err(e)) => {
                tracing::warn!(error = %e, "task resolver sockets");
                return;
            }
        };
    let upstreams = Arc::new(upstreams);
    let networks_shared = Arc::new(networks.clone());
    let slots = Arc::new(tokio::sync::Semaphore::new(64));
    let mut forwards = tokio::task::JoinSet::new();
    let mut buf = vec![0u8; 4096];
    loop {
        let (n, from) = tokio::select! {
            _ = cancel.cancelled() => return,
            r = socket.recv_from(&mut buf) => match r {
                Ok(x) => x,
                Err(_) => continue,
            },
            Some(_) = forwards.join_next(), if !forwards.is_empty() => continue,
            c = listener.accept() => {
                if let (Ok((conn, _)), Ok(permit)) = (c, slots.clone().try_acquire_owned()) {
                    let t = table.borrow_and_update().clone();
                    let (n, u) = (networks_shared.clone(), upstreams.clone());
                    forwards.spawn(async move {
                        serve_tcp(conn, t, n, u).await;
                        drop(permit);
                    });
                }
                continue;
            }
        };
        let query = buf[..n].to_vec();
        let t = table.borrow_and_update().clone();
        match answer(&query, &t, &networks, Transport::Udp) {
            Answer::Reply(r) => {
                let _ = socket.send_to(&r, from).await;
            }
            Answer::Drop => {}
            Answer::Forward => {
                let Ok(permit) = slots.clone().try_acquire_owned() else { continue };
                let (socket, upstreams) = (socket.clone(), upstreams.clone());
                forwards.spawn(async move {
                    let reply = match forward(&query, &upstreams).await {
                        Some(r) => Some(r),
                        None => servfail(&query),
                    };
                    if let Some(r) = reply {
                        let _ = socket.send_to(&r, from).await;
                    }
                    drop(permit);
                });
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use hickory_proto::op::Query;
    use hickory_proto::rr::Name;

    fn entry(net: &str, service: &str, slot: u8, aliases: &[&str]) -> Entry {
        Entry {
            network_id: net.into(),
            service: service.into(),
            task_name: format!("{service}.{slot}"),
            task_id: format!("id{slot}"),
            aliases: aliases.iter().map(|s| s.to_string()).collect(),
            address: Ipv4Addr::new(10, 0, 0, slot),
        }
    }

    fn query(name: &str, t: RecordType, id: u16) -> Vec<u8> {
        let mut m = Message::query();
        m.metadata.id = id;
        m.metadata.recursion_desired = true;
        m.add_query(Query::query(Name::from_ascii(name).expect("name"), t));
        m.to_vec().expect("encode")
    }

    fn answer_udp(q: &[u8], t: &Table, n: &[String]) -> Answer {
        answer(q, t, n, Transport::Udp)
    }

    fn reply(a: Answer) -> Message {
        match a {
            Answer::Reply(r) => Message::from_vec(&r).expect("decode"),
            other => panic!("expected a reply, got {other:?}"),
        }
    }

    fn addrs(m: &Message) -> Vec<String> {
        let mut v: Vec<String> = m
            .answers
            .iter()
            .filter_map(|r| match &r.data {
                RData::A(a) => Some(a.0.to_string()),
                _ => None,
            })
            .collect();
        v.sort();
        v
    }

    #[test]
    fn names_of_the_tasks_networks_only() {
        let t = Table::new(
            &[entry("n1", "web", 1, &["www"]), entry("n1", "web", 2, &["www"]), entry("n2", "db", 3, &[])],
            &[],
        );
        let n1 = vec!["n1".to_string()];
        let m = reply(answer_udp(&query("web.", RecordType::A, 7), &t, &n1));
        assert_eq!(addrs(&m), ["10.0.0.1", "10.0.0.2"]);
        assert_eq!(m.metadata.id, 7);
        assert!(m.answers.iter().all(|r| r.ttl == TTL));
        let slow = t.clone().with_ttl(30);
        assert!(reply(answer_udp(&query("web.", RecordType::A, 7), &slow, &n1)).answers.iter().all(|r| r.ttl == 30));
        assert_eq!(
            addrs(&reply(answer_udp(&query("tasks.WEB.", RecordType::A, 1), &t, &n1))),
            ["10.0.0.1", "10.0.0.2"]
        );
        assert_eq!(addrs(&reply(answer_udp(&query("www.", RecordType::A, 1), &t, &n1))), ["10.0.0.1", "10.0.0.2"]);
        assert_eq!(addrs(&reply(answer_udp(&query("web.2.", RecordType::A, 1), &t, &n1))), ["10.0.0.2"]);
        assert_eq!(addrs(&reply(answer_udp(&query("web.2.id2.", RecordType::A, 1), &t, &n1))), ["10.0.0.2"]);
        assert_eq!(answer_udp(&query("db.", RecordType::A, 1), &t, &n1), Answer::Forward, "another network's name");
        assert_eq!(answer_udp(&query("example.org.", RecordType::A, 1), &t, &n1), Answer::Forward);
        let aaaa = reply(answer_udp(&query("web.", RecordType::AAAA, 1), &t, &n1));
        assert!(aaaa.answers.is_empty() && aaaa.metadata.response_code == ResponseCode::NoError);
        assert_eq!(answer_udp(b"garbage", &t, &n1), Answer::Drop);
    }

    #[test]
    fn a_service_with_a_vip_is_its_vip_by_name_and_alias() {
        let vip = Ipv4Addr::new(10, 0, 0, 200);
        let t = Table::new(
            &[entry("n1", "web", 1, &["www"]), entry("n1", "web", 2, &["www"])],
            &[("n1".into(), "web".into(), vip)],
        );
        let n1 = vec!["n1".to_string()];
        assert_eq!(addrs(&reply(answer_udp(&query("web.", RecordType::A, 1), &t, &n1))), ["10.0.0.200"]);
        assert_eq!(addrs(&reply(answer_udp(&query("www.", RecordType::A, 1), &t, &n1))), ["10.0.0.200"]);
        assert_eq!(
            addrs(&reply(answer_udp(&query("tasks.web.", RecordType::A, 1), &t, &n1))),
            ["10.0.0.1", "10.0.0.2"]
        );
        assert_eq!(addrs(&reply(answer_udp(&query("web.1.", RecordType::A, 1), &t, &n1))), ["10.0.0.1"]);
        let none = Table::new(&[], &[("n1".into(), "idle".into(), vip)]);
        assert_eq!(
            addrs(&reply(answer_udp(&query("idle.", RecordType::A, 1), &none, &n1))),
            ["10.0.0.200"],
            "a service without tasks still has its VIP (which refuses connections)"
        );
    }

    #[test]
    fn the_first_address_rotates_with_the_query_id() {
        let t = Table::new(&[entry("n", "web", 1, &[]), entry("n", "web", 2, &[]), entry("n", "web", 3, &[])], &[]);
        let n = vec!["n".to_string()];
        let firsts: std::collections::BTreeSet<String> = (0..3)
            .map(|id| match &reply(answer_udp(&query("web.", RecordType::A, id), &t, &n)).answers[0].data {
                RData::A(a) => a.0.to_string(),
                _ => String::new(),
            })
            .collect();
        assert_eq!(firsts.len(), 3);
    }

    #[test]
    fn a_large_answer_is_truncated_for_a_client_without_edns() {
        let entries: Vec<Entry> = (1..=60).map(|i| entry("n", "big", i, &[])).collect();
        let t = Table::new(&entries, &[]);
        let m = reply(answer_udp(&query("big.", RecordType::A, 1), &t, &["n".to_string()]));
        assert!(m.metadata.truncation, "60 addresses do not fit in 512 bytes");
        let full = reply(answer(&query("big.", RecordType::A, 1), &t, &["n".to_string()], Transport::Tcp));
        assert!(!full.metadata.truncation && full.answers.len() == 60, "over TCP all of them");
    }

    #[test]
    fn servfail_keeps_the_id_and_upstreams_come_from_resolv_conf() {
        let s = Message::from_vec(&servfail(&query("x.", RecordType::A, 42)).expect("servfail")).expect("decode");
        assert_eq!((s.metadata.id, s.metadata.response_code), (42, ResponseCode::ServFail));
        let u = upstreams(
            "# c\nnameserver 192.0.2.1\nsearch x\nnameserver fd00::1\nnameserver 10.0.0.1\nnameserver 10.0.0.2\n",
        );
        assert_eq!(u.len(), 3);
        assert_eq!(u[0].to_string(), "192.0.2.1:53");
    }
}
