//! IPv4 and IPv6 networks (`"10.0.0.0/8"`, `"::1/128"`): a listener's `proxy_trusted`, and the
//! `source` condition of authorization rules (AWS `aws:SourceIp` style; [`crate::acl`],
//! [`crate::store`]). Parsed once, matched without allocation: a check compares masked integers.

use std::fmt;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::str::FromStr;

/// An IPv4 or IPv6 network (`"10.0.0.0/8"`, `"2001:db8::/32"`; a bare address is a single
/// host), as listed in a listener's `proxy_trusted` or a rule's `source`. Serialized as that
/// text (the policy store's JSON).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Cidr {
    addr: IpAddr,
    prefix: u8,
}

impl Cidr {
    /// Whether `ip` is in this network. An IPv4-mapped IPv6 address (`::ffff:10.0.0.1`, what a
    /// listener bound to `[::]` sees of an IPv4 client) counts as its IPv4 address.
    pub fn contains(&self, ip: IpAddr) -> bool {
        let ip = match ip {
            IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(ip, IpAddr::V4),
            v4 => v4,
        };
        match (self.addr, ip) {
            (IpAddr::V4(net), IpAddr::V4(a)) => mask32(u32::from(a), self.prefix) == u32::from(net),
            (IpAddr::V6(net), IpAddr::V6(a)) => mask128(u128::from(a), self.prefix) == u128::from(net),
            _ => false,
        }
    }
}

/// True when `ip` is in one of `nets`.
#[inline]
pub fn any_contains(nets: &[Cidr], ip: IpAddr) -> bool {
    nets.iter().any(|n| n.contains(ip))
}

fn mask32(a: u32, prefix: u8) -> u32 {
    if prefix == 0 {
        return 0;
    }
    let shift = 32 - u32::from(prefix.min(32));
    (a >> shift) << shift
}

fn mask128(a: u128, prefix: u8) -> u128 {
    if prefix == 0 {
        return 0;
    }
    let shift = 128 - u32::from(prefix.min(128));
    (a >> shift) << shift
}

impl FromStr for Cidr {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        let (a, p) = match s.split_once('/') {
            Some((a, p)) => (a, Some(p)),
            None => (s, None),
        };
        let addr = IpAddr::from_str(a).map_err(|_| format!("{s:?} is not a network (e.g. \"10.0.0.0/8\")"))?;
        let max = if addr.is_ipv4() { 32 } else { 128 };
        let prefix = match p {
            None => max,
            Some(p) => match p.parse::<u8>() {
                Ok(n) if n <= max && !p.starts_with('+') => n,
                _ => return Err(format!("{s:?}: prefix length must be 0..={max}")),
            },
        };
        let masked = match addr {
            IpAddr::V4(v) => IpAddr::V4(Ipv4Addr::from(mask32(u32::from(v), prefix))),
            IpAddr::V6(v) => IpAddr::V6(Ipv6Addr::from(mask128(u128::from(v), prefix))),
        };
        if masked != addr {
            return Err(format!("{s:?} has host bits set (the network is {masked}/{prefix})"));
        }
        Ok(Cidr { addr, prefix })
    }
}

impl fmt::Display for Cidr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.addr, self.prefix)
    }
}

impl serde::Serialize for Cidr {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> serde::Deserialize<'de> for Cidr {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = <std::borrow::Cow<'de, str>>::deserialize(d)?;
        s.parse().map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cidrs() {
        let c: Cidr = "10.0.0.0/8".parse().unwrap();
        assert!(c.contains("10.200.1.1".parse().unwrap()));
        assert!(c.contains("::ffff:10.0.0.1".parse().unwrap()), "IPv4-mapped");
        assert!(!c.contains("11.0.0.1".parse().unwrap()));
        assert!(!c.contains("::1".parse().unwrap()));
        let one: Cidr = "127.0.0.1/32".parse().unwrap();
        assert!(one.contains("127.0.0.1".parse().unwrap()) && !one.contains("127.0.0.2".parse().unwrap()));
        assert_eq!("127.0.0.1".parse::<Cidr>().unwrap(), one);
        let all: Cidr = "0.0.0.0/0".parse().unwrap();
        assert!(all.contains("203.0.113.9".parse().unwrap()));
        let v6: Cidr = "2001:db8::/32".parse().unwrap();
        assert!(v6.contains("2001:db8:1::5".parse().unwrap()) && !v6.contains("2001:db9::".parse().unwrap()));
        assert!("::/0".parse::<Cidr>().unwrap().contains("::1".parse().unwrap()));
        for bad in ["10.0.0.0/33", "10.0.0.1/8", "10.0.0/8", "nope", "10.0.0.0/", "10.0.0.0/+8", "::/129"] {
            assert!(bad.parse::<Cidr>().is_err(), "{bad}");
        }
        assert_eq!(one.to_string(), "127.0.0.1/32");
        assert!(any_contains(&[c, one], "127.0.0.1".parse().unwrap()));
        assert!(!any_contains(&[], "127.0.0.1".parse().unwrap()));
    }

    #[test]
    fn serde_as_text() {
        let v: Vec<Cidr> = serde_json::from_str(r#"["10.0.0.0/8", "::1/128"]"#).unwrap();
        assert_eq!(serde_json::to_string(&v).unwrap(), r#"["10.0.0.0/8","::1/128"]"#);
        let e = serde_json::from_str::<Vec<Cidr>>(r#"["10.0.0.1/8"]"#).unwrap_err().to_string();
        assert!(e.contains("host bits"), "{e}");
    }
}
