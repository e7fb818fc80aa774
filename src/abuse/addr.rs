//! Source addresses: which address a request is counted against, and the networks anomaly
//! detection compares.
//!
//! The address is the TCP peer's, unless the peer is a configured trusted proxy
//! (`TELBASE_TRUSTED_PROXIES`, a list of CIDR blocks): then `X-Forwarded-For` is read from
//! the right, skipping hops that are themselves trusted proxies, and the first hop that is
//! not trusted is the client. Every hop left of that one was written by the client (or by a
//! proxy we do not know) and may be anything, so it is never used. From an untrusted peer
//! the header is ignored entirely: anyone can send it.
//!
//! Counting keys: an IPv4 address counts alone (/32); an IPv6 address counts by its /64.
//! One IPv6 host is normally given a whole /64 (SLAAC, RFC 6177's advice to ISPs), so an
//! attacker can walk through 2^64 addresses of their own; counting per /128 would let each
//! guess come from a fresh address. Anomaly detection compares coarser networks (an IPv4
//! /24, an IPv6 /48: roughly "the same ISP site"), so a dynamic address that changes within
//! one provider's block is not flagged as a new network every day.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

/// An IPv4-mapped IPv6 address (`::ffff:a.b.c.d`, what a dual-stack socket reports for an
/// IPv4 peer) is that IPv4 address: otherwise one client would be counted under two keys.
pub fn canonical(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => IpAddr::V4(v4),
            None => IpAddr::V6(v6),
        },
        v4 => v4,
    }
}

/// A CIDR block: an address and a prefix length, the host bits cleared.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Cidr {
    network: IpAddr,
    prefix: u8,
}

/// Why a CIDR block or list could not be read.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CidrError {
    #[error("`{0}` is not an IP address or CIDR block (e.g. 10.0.0.0/8, 203.0.113.7, fd00::/8)")]
    Syntax(String),
    #[error("`{0}`: the prefix length is larger than the address ({1} bits)")]
    Prefix(String, u8),
}

impl Cidr {
    /// `10.0.0.0/8`, `203.0.113.7` (a /32), `fd00::/8`, `::1` (a /128). Host bits set past
    /// the prefix are cleared (`10.1.2.3/8` is `10.0.0.0/8`), as `ip route` does.
    pub fn parse(text: &str) -> Result<Cidr, CidrError> {
        let t = text.trim();
        let (addr, prefix) = match t.split_once('/') {
            Some((a, p)) => {
                // Digits only: `u8::from_str` would take a leading `+`.
                if p.is_empty() || p.len() > 3 || !p.bytes().all(|b| b.is_ascii_digit()) {
                    return Err(CidrError::Syntax(t.to_owned()));
                }
                (
                    a,
                    Some(
                        p.parse::<u16>()
                            .map_err(|_| CidrError::Syntax(t.to_owned()))?,
                    ),
                )
            }
            None => (t, None),
        };
        let ip: IpAddr = addr.parse().map_err(|_| CidrError::Syntax(t.to_owned()))?;
        let ip = canonical(ip);
        let bits: u8 = if ip.is_ipv4() { 32 } else { 128 };
        // A mapped IPv6 block (`::ffff:10.0.0.0/104`) becomes the IPv4 block it covers.
        let prefix = match (prefix, addr.parse::<IpAddr>()) {
            (None, _) => u16::from(bits),
            (Some(p), Ok(IpAddr::V6(_))) if ip.is_ipv4() => {
                if p < 96 {
                    return Err(CidrError::Syntax(t.to_owned()));
                }
                p - 96
            }
            (Some(p), _) => p,
        };
        if prefix > u16::from(bits) {
            return Err(CidrError::Prefix(t.to_owned(), bits));
        }
        let prefix = prefix as u8;
        Ok(Cidr {
            network: mask(ip, prefix),
            prefix,
        })
    }

    /// Whether `ip` is inside the block (mapped IPv4 addresses count as IPv4).
    pub fn contains(&self, ip: IpAddr) -> bool {
        let ip = canonical(ip);
        ip.is_ipv4() == self.network.is_ipv4() && mask(ip, self.prefix) == self.network
    }

    /// The one address a full-length block (/32, /128) is, else `None`.
    pub fn host(&self) -> Option<IpAddr> {
        let bits = if self.network.is_ipv4() { 32 } else { 128 };
        (self.prefix == bits).then_some(self.network)
    }

    pub fn prefix(&self) -> u8 {
        self.prefix
    }
}

impl std::fmt::Display for Cidr {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}", self.network, self.prefix)
    }
}

/// `ip` with every bit past `prefix` cleared.
fn mask(ip: IpAddr, prefix: u8) -> IpAddr {
    match ip {
        IpAddr::V4(v4) => {
            let p = u32::from(prefix.min(32));
            let m = if p == 0 { 0 } else { u32::MAX << (32 - p) };
            IpAddr::V4(Ipv4Addr::from(u32::from(v4) & m))
        }
        IpAddr::V6(v6) => {
            let p = u32::from(prefix.min(128));
            let m = if p == 0 { 0 } else { u128::MAX << (128 - p) };
            IpAddr::V6(Ipv6Addr::from(u128::from(v6) & m))
        }
    }
}

/// The key failures and rate limits are counted under: `203.0.113.7/32` or `2001:db8:1:2::/64`.
pub fn address_key(ip: IpAddr) -> String {
    let ip = canonical(ip);
    let prefix = if ip.is_ipv4() { 32 } else { 64 };
    format!("{}/{prefix}", mask(ip, prefix))
}

/// The network anomaly detection compares: `203.0.113.0/24` or `2001:db8:1::/48`.
pub fn network_key(ip: IpAddr) -> String {
    let ip = canonical(ip);
    let prefix = if ip.is_ipv4() { 24 } else { 48 };
    format!("{}/{prefix}", mask(ip, prefix))
}

/// The proxies whose `X-Forwarded-For` is believed.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct TrustedProxies(Vec<Cidr>);

impl TrustedProxies {
    /// No proxy is trusted: the peer address is always the client.
    pub fn none() -> Self {
        TrustedProxies(Vec::new())
    }

    /// A comma- or whitespace-separated list of CIDR blocks (`TELBASE_TRUSTED_PROXIES`);
    /// an empty list trusts nobody.
    pub fn parse(list: &str) -> Result<Self, CidrError> {
        list.split(|c: char| c == ',' || c.is_whitespace())
            .filter(|s| !s.is_empty())
            .map(Cidr::parse)
            .collect::<Result<Vec<_>, _>>()
            .map(TrustedProxies)
    }

    pub fn blocks(&self) -> &[Cidr] {
        &self.0
    }

    pub fn trusts(&self, ip: IpAddr) -> bool {
        self.0.iter().any(|c| c.contains(ip))
    }

    /// The client's address: `peer` itself unless `peer` is trusted; then the right-most
    /// `X-Forwarded-For` hop that is not a trusted proxy. `forwarded_for` is every
    /// `X-Forwarded-For` header value in the order received (several headers form one list,
    /// RFC 9110 §5.3). A hop that is not an IP address ends the walk: the address to its
    /// right (a trusted proxy, which wrote it) is then the best that can be said.
    pub fn client(&self, peer: IpAddr, forwarded_for: &[&str]) -> IpAddr {
        let peer = canonical(peer);
        if !self.trusts(peer) {
            return peer;
        }
        let hops: Vec<&str> = forwarded_for
            .iter()
            .flat_map(|v| v.split(','))
            .map(str::trim)
            .collect();
        let mut client = peer;
        for hop in hops.iter().rev() {
            let Some(ip) = parse_hop(hop) else {
                return client;
            };
            client = ip;
            if !self.trusts(ip) {
                return ip;
            }
        }
        client
    }
}

/// One `X-Forwarded-For` element: an address, optionally `[v6]` or with a `:port` (some
/// proxies add one). Anything else (`unknown`, an obfuscated RFC 7239 name) is `None`.
fn parse_hop(hop: &str) -> Option<IpAddr> {
    if hop.is_empty() || hop.len() > 64 {
        return None;
    }
    if let Ok(ip) = hop.parse::<IpAddr>() {
        return Some(canonical(ip));
    }
    if let Some(rest) = hop.strip_prefix('[') {
        let (inside, after) = rest.split_once(']')?;
        if !(after.is_empty() || after.strip_prefix(':').is_some_and(is_port)) {
            return None;
        }
        return inside
            .parse::<Ipv6Addr>()
            .ok()
            .map(|v6| canonical(IpAddr::V6(v6)));
    }
    let (a, port) = hop.rsplit_once(':')?;
    if !is_port(port) {
        return None;
    }
    a.parse::<Ipv4Addr>().ok().map(IpAddr::V4)
}

fn is_port(p: &str) -> bool {
    !p.is_empty() && p.len() <= 5 && p.bytes().all(|b| b.is_ascii_digit())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    #[test]
    fn cidr_blocks_parse_and_contain() {
        let c = Cidr::parse("10.1.2.3/8").unwrap();
        assert_eq!(c.to_string(), "10.0.0.0/8");
        assert!(c.contains(ip("10.255.0.1")));
        assert!(c.contains(ip("::ffff:10.9.9.9")));
        assert!(!c.contains(ip("11.0.0.1")));
        assert_eq!(Cidr::parse("203.0.113.7").unwrap().prefix(), 32);
        assert_eq!(Cidr::parse("::1").unwrap().prefix(), 128);
        assert_eq!(
            Cidr::parse("::ffff:10.0.0.0/104").unwrap().to_string(),
            "10.0.0.0/8"
        );
        assert!(Cidr::parse("fd00::/8").unwrap().contains(ip("fd12::1")));
        for bad in [
            "10.0.0.0/33",
            "10.0.0.0/",
            "10.0.0.0/+8",
            "x",
            "",
            "::/129",
            "1.2.3/8",
        ] {
            assert!(Cidr::parse(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn keys_count_ipv4_hosts_and_ipv6_slash_64s() {
        assert_eq!(address_key(ip("203.0.113.7")), "203.0.113.7/32");
        assert_eq!(address_key(ip("::ffff:203.0.113.7")), "203.0.113.7/32");
        assert_eq!(
            address_key(ip("2001:db8:1:2:aaaa::1")),
            address_key(ip("2001:db8:1:2:bbbb::9"))
        );
        assert_eq!(address_key(ip("2001:db8:1:2::1")), "2001:db8:1:2::/64");
        assert_eq!(network_key(ip("203.0.113.7")), "203.0.113.0/24");
        assert_eq!(network_key(ip("2001:db8:1:2::1")), "2001:db8:1::/48");
    }

    #[test]
    fn forwarded_for_is_read_only_from_trusted_proxies() {
        let t = TrustedProxies::parse("10.0.0.0/8, 192.168.1.5").unwrap();
        // Untrusted peer: the header is ignored.
        assert_eq!(
            t.client(ip("198.51.100.1"), &["203.0.113.9"]),
            ip("198.51.100.1")
        );
        // Trusted peer: the right-most untrusted hop; what the client wrote is skipped.
        assert_eq!(
            t.client(ip("10.0.0.2"), &["6.6.6.6, 203.0.113.9, 192.168.1.5"]),
            ip("203.0.113.9")
        );
        // Several headers are one list.
        assert_eq!(
            t.client(ip("10.0.0.2"), &["6.6.6.6", "203.0.113.9"]),
            ip("203.0.113.9")
        );
        // No header: the proxy itself.
        assert_eq!(t.client(ip("10.0.0.2"), &[]), ip("10.0.0.2"));
        // Garbage stops the walk at the proxy that wrote it.
        assert_eq!(
            t.client(ip("10.0.0.2"), &["203.0.113.9, unknown"]),
            ip("10.0.0.2")
        );
        assert_eq!(
            t.client(ip("10.0.0.2"), &["[2001:db8::1]:443"]),
            ip("2001:db8::1")
        );
        assert_eq!(
            t.client(ip("10.0.0.2"), &["203.0.113.9:5000"]),
            ip("203.0.113.9")
        );
    }
}
