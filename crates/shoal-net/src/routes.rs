//! The host's IPv4 routes, read from `/proc/net/route`, and the choices made from them: the
//! egress bridge's subnet and its addresses. Pure.

use std::collections::BTreeSet;
use std::net::Ipv4Addr;

use crate::{Net, GATEWAY_BRIDGE};

/// Every route of the table but the default one: (interface, network).
pub fn routes(route_table: &str) -> Vec<(String, Net)> {
    route_table
        .lines()
        .skip(1)
        .filter_map(|line| {
            let f: Vec<&str> = line.split_whitespace().collect();
            let dest = u32::from_str_radix(f.get(1)?, 16).ok()?;
            let mask = u32::from_str_radix(f.get(7)?, 16).ok()?;
            // The kernel prints the bytes of each (network order) as a host-order word.
            let (dest, mask) = (u32::from_be(dest), u32::from_be(mask));
            let len = mask.count_ones();
            (len > 0 && mask.leading_ones() == len)
                .then(|| (f[0].to_string(), Net { addr: Ipv4Addr::from(dest & mask), prefix: len as u8 }))
        })
        .collect()
}

/// The networks of the host's routing table as `A.B.C.D/N`, without the default route: the
/// subnets of its own addresses and every network it reaches through a gateway. Overlay
/// subnets must stay clear of them.
pub fn host_networks(route_table: &str) -> Vec<String> {
    let mut out: Vec<String> = routes(route_table).into_iter().map(|(_, n)| n.to_string()).collect();
    out.sort();
    out.dedup();
    out
}

fn overlaps(a: &Net, b: &Net) -> bool {
    let p = a.prefix.min(b.prefix);
    let m = |n: &Net| if p == 0 { 0 } else { u32::from(n.addr) >> (32 - u32::from(p)) };
    m(a) == m(b)
}

/// The egress bridge's address: `.1` of the first of 172.18.0.0/16 .. 172.31.0.0/16 (where
/// Docker puts its bridges) that no route of the host covers but the bridge's own.
pub fn pick_gateway(route_table: &str) -> Option<Net> {
    let taken: Vec<Net> =
        routes(route_table).into_iter().filter(|(i, _)| i != GATEWAY_BRIDGE).map(|(_, n)| n).collect();
    (18..=31u8)
        .map(|b| Net { addr: Ipv4Addr::new(172, b, 0, 1), prefix: 16 })
        .find(|c| !taken.iter().any(|t| overlaps(c, t)))
}

/// The lowest address of `subnet` that is not its network or broadcast address, not the
/// gateway's and not in `used`.
pub fn next_free(gateway: Net, used: &BTreeSet<Ipv4Addr>) -> Option<Ipv4Addr> {
    let first = u32::from(gateway.network());
    let size = 1u64 << (32 - u32::from(gateway.prefix));
    (1..size.saturating_sub(1))
        .map(|i| Ipv4Addr::from(first + i as u32))
        .find(|a| *a != gateway.addr && !used.contains(a))
}

#[cfg(test)]
mod tests {
    use super::*;

    const TABLE: &str = "Iface\tDestination\tGateway \tFlags\tRefCnt\tUse\tMetric\tMask\t\tMTU\tWindow\tIRTT\n\
eth0\t00000000\t0100A8C0\t0003\t0\t0\t0\t00000000\t0\t0\t0\n\
eth0\t0000A8C0\t00000000\t0001\t0\t0\t0\t00FFFFFF\t0\t0\t0\n\
tun0\t0000000A\t0200A8C0\t0003\t0\t0\t0\t0000FFFF\t0\t0\t0\n\
eth0\t0000A8C0\t00000000\t0001\t0\t0\t100\t00FFFFFF\t0\t0\t0\n\
docker0\t000012AC\t00000000\t0001\t0\t0\t0\t0000FFFF\t0\t0\t0\n\
shoal_gwbridge\t000013AC\t00000000\t0001\t0\t0\t0\t0000FFFF\t0\t0\t0\n";

    #[test]
    fn the_routing_table_gives_the_hosts_networks_but_not_the_default_route() {
        assert_eq!(host_networks(TABLE), ["10.0.0.0/16", "172.18.0.0/16", "172.19.0.0/16", "192.168.0.0/24"]);
        assert!(host_networks("").is_empty());
        assert!(host_networks("header\ngarbage line\n").is_empty());
    }

    #[test]
    fn the_gateway_avoids_other_routes_but_keeps_its_own() {
        // 172.18/16 is docker0's; 172.19/16 is the bridge's own route, so it stays.
        assert_eq!(pick_gateway(TABLE), Net::parse("172.19.0.1/16"));
        assert_eq!(pick_gateway(""), Net::parse("172.18.0.1/16"));
        let wide = "h\neth0\t000010AC\t00000000\t0001\t0\t0\t0\t0000F0FF\t0\t0\t0\n";
        assert_eq!(pick_gateway(wide), None, "172.16.0.0/12 covers every candidate");
    }

    #[test]
    fn addresses_skip_network_gateway_broadcast_and_used() {
        let gw = Net::parse("172.18.0.1/30").expect("net");
        assert_eq!(next_free(gw, &BTreeSet::new()), Some(Ipv4Addr::new(172, 18, 0, 2)));
        let used = BTreeSet::from([Ipv4Addr::new(172, 18, 0, 2)]);
        assert_eq!(next_free(gw, &used), None, "a /30 has one address besides the gateway");
    }
}
