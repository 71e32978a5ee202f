//! Address management for overlay networks, pure: which subnet and VXLAN id a new network
//! gets, and which address each service (its virtual IP) and each task gets on the networks
//! it is attached to.
//!
//! Nothing is remembered here: what is in use is read from the replicated state every time
//! (networks' subnets and VNIs; the VIPs of services; the addresses of tasks that may still
//! run), so an address is free again as soon as the object holding it is gone or ended, and a
//! snapshot restore or a leader change cannot leak or duplicate one.

mod cidr;
mod plan;

use std::collections::BTreeSet;

pub use cidr::{fmt_addr, parse_addr, Cidr, CidrError};
pub use plan::{
    allocate_ingress, allocate_network, plan_addresses, pools, AddressPlan, AllocError, NetworkAllocation, Pools,
    INGRESS_SUBNET,
};

/// The VXLAN ids overlays use (Swarm's range: below 4096 stays free for VLAN-like uses).
pub const VNI_FIRST: u32 = 4096;
/// The largest VXLAN id (24 bits).
pub const VNI_LAST: u32 = (1 << 24) - 1;

/// The lowest VXLAN id not in `used`.
pub fn next_vni(used: &BTreeSet<u32>) -> Option<u32> {
    let mut v = VNI_FIRST;
    for &u in used.range(VNI_FIRST..) {
        if u != v {
            break;
        }
        v = v.checked_add(1)?;
    }
    (v <= VNI_LAST).then_some(v)
}

/// The first subnet of prefix length `prefix`, in pool order, that overlaps nothing in `taken`.
pub fn next_subnet(pools: &[Cidr], prefix: u8, taken: &[Cidr]) -> Option<Cidr> {
    for pool in pools {
        if prefix < pool.prefix_len() || prefix > 30 {
            continue;
        }
        let step = 1u64 << (32 - u32::from(prefix));
        let mut at = u64::from(pool.base());
        let end = u64::from(pool.last());
        while at <= end {
            let candidate = Cidr::new(at as u32, prefix);
            // Jump past everything that overlaps, to the next subnet boundary after it.
            match taken.iter().filter(|t| t.overlaps(&candidate)).map(|t| u64::from(t.last())).max() {
                None => return Some(candidate),
                Some(last) => at = (last + 1).div_ceil(step) * step,
            }
        }
    }
    None
}

/// A host address of `subnet` not in `taken`: the first one after `after` (so an address just
/// freed is not handed out again at once while others are free), wrapping around.
pub fn next_address(subnet: Cidr, taken: &BTreeSet<u32>, after: Option<u32>) -> Option<u32> {
    let (first, last) = subnet.hosts()?;
    let start = after.filter(|a| *a >= first && *a < last).map_or(first, |a| a + 1);
    let free_in = |lo: u32, hi: u32| -> Option<u32> {
        let mut a = lo;
        for &t in taken.range(lo..=hi) {
            if t != a {
                break;
            }
            if a == hi {
                return None;
            }
            a += 1;
        }
        Some(a)
    };
    free_in(start, last).or_else(|| if start > first { free_in(first, start - 1) } else { None })
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn c(s: &str) -> Cidr {
        Cidr::parse(s).expect("valid")
    }

    #[test]
    fn subnets_come_in_pool_order_and_skip_what_is_taken() {
        let pools = [c("10.0.0.0/8")];
        assert_eq!(next_subnet(&pools, 24, &[]), Some(c("10.0.0.0/24")));
        assert_eq!(next_subnet(&pools, 24, &[c("10.0.0.0/24")]), Some(c("10.0.1.0/24")));
        // A host route over the first /16 is skipped in one step.
        assert_eq!(next_subnet(&pools, 24, &[c("10.0.0.0/16")]), Some(c("10.1.0.0/24")));
        // A small taken range inside a candidate rules the whole candidate out.
        assert_eq!(next_subnet(&pools, 24, &[c("10.0.0.128/25")]), Some(c("10.0.1.0/24")));
        assert_eq!(next_subnet(&[c("10.0.0.0/23")], 24, &[c("10.0.0.0/24"), c("10.0.1.0/24")]), None);
        assert_eq!(
            next_subnet(&[c("10.0.0.0/24"), c("172.20.0.0/16")], 24, &[c("10.0.0.0/24")]),
            Some(c("172.20.0.0/24"))
        );
        // A pool smaller than the subnet size is never split into it.
        assert_eq!(next_subnet(&[c("10.0.0.0/25")], 24, &[]), None);
    }

    #[test]
    fn addresses_follow_the_last_one_and_wrap() {
        let net = c("10.0.1.0/29"); // hosts .1 ..= .6
        let a = |s: &str| parse_addr(s).expect("valid");
        let taken: BTreeSet<u32> = [a("10.0.1.1"), a("10.0.1.2")].into();
        assert_eq!(next_address(net, &taken, None), Some(a("10.0.1.3")));
        assert_eq!(next_address(net, &taken, Some(a("10.0.1.5"))), Some(a("10.0.1.6")));
        assert_eq!(next_address(net, &taken, Some(a("10.0.1.6"))), Some(a("10.0.1.3")));
        let full: BTreeSet<u32> = (1..=6).map(|i| a(&format!("10.0.1.{i}"))).collect();
        assert_eq!(next_address(net, &full, Some(a("10.0.1.3"))), None);
    }

    #[test]
    fn vnis_fill_gaps() {
        assert_eq!(next_vni(&BTreeSet::new()), Some(VNI_FIRST));
        assert_eq!(next_vni(&[VNI_FIRST, VNI_FIRST + 2].into()), Some(VNI_FIRST + 1));
        assert_eq!(next_vni(&[1, 2].into()), Some(VNI_FIRST));
    }

    proptest! {
        #[test]
        fn a_subnet_handed_out_overlaps_nothing_taken_and_lies_in_a_pool(
            taken in proptest::collection::vec((0u32..1 << 16, 16u8..=26), 0..40),
            prefix in 20u8..=28,
        ) {
            let pools = [c("10.0.0.0/8")];
            let taken: Vec<Cidr> = taken.into_iter().map(|(x, l)| Cidr::new((10 << 24) | (x << 8), l)).collect();
            if let Some(s) = next_subnet(&pools, prefix, &taken) {
                prop_assert_eq!(s.prefix_len(), prefix);
                prop_assert!(pools[0].contains(s.base()) && pools[0].contains(s.last()));
                prop_assert!(taken.iter().all(|t| !t.overlaps(&s)), "{} overlaps one of {:?}", s, taken);
            } else {
                // None only when every candidate is covered.
                let step = 1u32 << (32 - u32::from(prefix));
                let mut at = pools[0].base();
                while at <= pools[0].last() - (step - 1) {
                    let cand = Cidr::new(at, prefix);
                    prop_assert!(taken.iter().any(|t| t.overlaps(&cand)), "{} was free", cand);
                    at = match at.checked_add(step) { Some(n) => n, None => break };
                }
            }
        }

        #[test]
        fn an_address_handed_out_is_a_free_host_address(
            taken in proptest::collection::btree_set(0u32..64, 0..64),
            after in proptest::option::of(0u32..64),
        ) {
            let net = c("10.9.8.0/26");
            let taken: BTreeSet<u32> = taken.into_iter().map(|i| net.base() + i).collect();
            let after = after.map(|i| net.base() + i);
            let (first, last) = net.hosts().expect("hosts");
            match next_address(net, &taken, after) {
                Some(a) => {
                    prop_assert!(a >= first && a <= last);
                    prop_assert!(!taken.contains(&a));
                }
                None => prop_assert!((first..=last).all(|a| taken.contains(&a))),
            }
        }
    }
}
