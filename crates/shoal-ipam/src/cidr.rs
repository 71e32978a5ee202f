//! IPv4 networks in CIDR notation: parsing with errors a user can act on, containment, overlap.

use std::fmt;
use std::net::Ipv4Addr;

/// An IPv4 network: base address (host bits zero) and prefix length.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Cidr {
    base: u32,
    len: u8,
}

/// Why a CIDR or an address did not parse.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CidrError(pub String);

impl fmt::Display for CidrError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for CidrError {}

fn mask(len: u8) -> u32 {
    if len == 0 {
        0
    } else {
        u32::MAX << (32 - u32::from(len))
    }
}

/// Parses a dotted IPv4 address.
pub fn parse_addr(s: &str) -> Result<u32, CidrError> {
    s.trim()
        .parse::<Ipv4Addr>()
        .map(u32::from)
        .map_err(|_| CidrError(format!("{s:?} is not an IPv4 address (like 10.0.1.1)")))
}

/// Formats an address as dotted quad.
pub fn fmt_addr(a: u32) -> String {
    Ipv4Addr::from(a).to_string()
}

impl Cidr {
    /// The network of `addr` with prefix `len` (host bits cleared).
    pub fn new(addr: u32, len: u8) -> Cidr {
        let len = len.min(32);
        Cidr { base: addr & mask(len), len }
    }

    /// Parses `A.B.C.D/N`; host bits must be zero (`10.0.1.5/24` is refused, naming
    /// `10.0.1.0/24`).
    pub fn parse(s: &str) -> Result<Cidr, CidrError> {
        let (addr, len) = split(s)?;
        let c = Cidr::new(addr, len);
        if c.base != addr {
            return Err(CidrError(format!("{s:?} has host bits set: the network is {c}")));
        }
        Ok(c)
    }

    /// Parses an interface address with its prefix (`10.0.1.5/24`): the address and its network.
    pub fn parse_interface(s: &str) -> Result<(u32, Cidr), CidrError> {
        let (addr, len) = split(s)?;
        Ok((addr, Cidr::new(addr, len)))
    }

    /// The first address (the network address).
    pub fn base(&self) -> u32 {
        self.base
    }

    /// The prefix length.
    pub fn prefix_len(&self) -> u8 {
        self.len
    }

    /// The last address (broadcast).
    pub fn last(&self) -> u32 {
        self.base | !mask(self.len)
    }

    /// Number of addresses, network and broadcast included.
    pub fn size(&self) -> u64 {
        1u64 << (32 - u32::from(self.len))
    }

    /// Whether `addr` lies in this network.
    pub fn contains(&self, addr: u32) -> bool {
        addr & mask(self.len) == self.base
    }

    /// Whether the two networks share an address.
    pub fn overlaps(&self, other: &Cidr) -> bool {
        self.base <= other.last() && other.base <= self.last()
    }

    /// The usable host addresses: all but the network and broadcast addresses (a /31 or /32
    /// has none usable this way, as no overlay subnet is that small).
    pub fn hosts(&self) -> Option<(u32, u32)> {
        if self.len >= 31 {
            return None;
        }
        Some((self.base + 1, self.last() - 1))
    }

    /// `addr` with this network's prefix length, as an interface address (`10.0.1.5/24`).
    pub fn interface(&self, addr: u32) -> String {
        format!("{}/{}", fmt_addr(addr), self.len)
    }
}

fn split(s: &str) -> Result<(u32, u8), CidrError> {
    let bad = || CidrError(format!("{s:?} is not an IPv4 network in CIDR notation (like 10.0.1.0/24)"));
    let (a, l) = s.trim().split_once('/').ok_or_else(bad)?;
    let addr = parse_addr(a).map_err(|_| bad())?;
    let len: u8 = l.parse().map_err(|_| bad())?;
    if len > 32 {
        return Err(bad());
    }
    Ok((addr, len))
}

impl fmt::Display for Cidr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", Ipv4Addr::from(self.base), self.len)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_and_prints() {
        let c = Cidr::parse("10.0.1.0/24").expect("valid");
        assert_eq!(c.to_string(), "10.0.1.0/24");
        assert_eq!(c.size(), 256);
        assert_eq!(c.hosts(), Some((parse_addr("10.0.1.1").expect("valid"), parse_addr("10.0.1.254").expect("valid"))));
        assert!(c.contains(parse_addr("10.0.1.77").expect("valid")));
        assert!(!c.contains(parse_addr("10.0.2.0").expect("valid")));
    }

    #[test]
    fn refuses_what_is_not_a_network_with_the_reason() {
        assert_eq!(
            Cidr::parse("10.0.1.5/24").map_err(|e| e.0),
            Err("\"10.0.1.5/24\" has host bits set: the network is 10.0.1.0/24".to_string())
        );
        for bad in ["10.0.1.0", "10.0.1.0/33", "10.0.300.0/24", "x/8", ""] {
            let e = Cidr::parse(bad).expect_err(bad);
            assert!(e.0.contains("CIDR notation"), "{bad}: {e}");
        }
    }

    #[test]
    fn overlap_is_symmetric_and_exact_at_the_edges() {
        let a = Cidr::parse("10.0.0.0/16").expect("valid");
        let b = Cidr::parse("10.0.255.0/24").expect("valid");
        let c = Cidr::parse("10.1.0.0/24").expect("valid");
        assert!(a.overlaps(&b) && b.overlaps(&a));
        assert!(!a.overlaps(&c) && !c.overlaps(&a));
        assert!(Cidr::parse("0.0.0.0/0").expect("valid").overlaps(&c));
    }

    #[test]
    fn interface_addresses_keep_their_host_part() {
        let (addr, net) = Cidr::parse_interface("192.168.7.9/20").expect("valid");
        assert_eq!(fmt_addr(addr), "192.168.7.9");
        assert_eq!(net.to_string(), "192.168.0.0/20");
        assert_eq!(net.interface(addr), "192.168.7.9/20");
    }
}
