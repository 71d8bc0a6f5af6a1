//! What a query name asks for: the zone apex, a service (Consul's plain, tagged and RFC 2782
//! forms), a node, an address encoded in hex, or a service's virtual IP — or nothing in our
//! zone, or a name outside it.
//!
//! Names are matched case-insensitively; the labels naming a service, tag or node keep the case
//! asked, and the answers look them up exactly first, then ignoring case. As in Consul, the kind
//! label (`service`, `node`, `addr`, `virtual`) may be followed by one datacenter label; only
//! this agent's datacenter exists.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

/// What a name inside one of our domains names.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Lookup {
    /// The domain itself (SOA, NS).
    Apex,
    /// `ns.<domain>`, the name server of the zone.
    NameServer,
    /// `<svc>.service`, `<tag>.<svc>.service`, `_<svc>._<tag>.service`.
    Service { name: String, tag: Option<String> },
    /// `<node>.node`.
    Node { name: String },
    /// `<hex>.addr`.
    Addr { ip: IpAddr },
    /// `<svc>.virtual`.
    Virtual { name: String },
    /// In the zone, but not a name that exists.
    Missing,
}

/// The result of matching a query name against our domains.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Parsed {
    /// Inside domain number `zone` (0: `domain`, 1: `alt_domain`).
    Ours { zone: usize, lookup: Lookup },
    /// A reverse name (`in-addr.arpa`, `ip6.arpa`) of a full address.
    Reverse(IpAddr),
    /// Outside every domain we serve.
    Foreign,
}

/// Matches `name` (a query name, with or without the final dot) against `domains` (lowercase,
/// no dots at the ends) for datacenter `dc`.
pub fn parse(name: &str, domains: &[impl AsRef<str>], dc: &str) -> Parsed {
    let name = name.strip_suffix('.').unwrap_or(name);
    let lower = name.to_ascii_lowercase();
    for (zone, domain) in domains.iter().enumerate() {
        let domain = domain.as_ref();
        if lower == *domain {
            return Parsed::Ours {
                zone,
                lookup: Lookup::Apex,
            };
        }
        if lower.ends_with(domain) && lower[..lower.len() - domain.len()].ends_with('.') {
            // The labels keep the case asked: names in the registry are matched exactly first.
            let rest = &name[..name.len() - domain.len() - 1];
            return Parsed::Ours {
                zone,
                lookup: parse_labels(rest, dc),
            };
        }
    }
    reverse(&lower).map_or(Parsed::Foreign, Parsed::Reverse)
}

/// `4.3.2.1.in-addr.arpa` → 1.2.3.4; 32 nibbles under `ip6.arpa` → an IPv6 address.
fn reverse(name: &str) -> Option<IpAddr> {
    if let Some(rest) = name.strip_suffix(".in-addr.arpa") {
        let mut octets = [0u8; 4];
        let labels: Vec<&str> = rest.split('.').collect();
        if labels.len() != 4 {
            return None;
        }
        for (i, l) in labels.iter().rev().enumerate() {
            octets[i] = l.parse().ok()?;
        }
        return Some(IpAddr::V4(Ipv4Addr::from(octets)));
    }
    let rest = name.strip_suffix(".ip6.arpa")?;
    let nibbles: Vec<&str> = rest.split('.').collect();
    if nibbles.len() != 32 || nibbles.iter().any(|n| n.len() != 1) {
        return None;
    }
    let hex: String = nibbles.iter().rev().copied().collect();
    u128::from_str_radix(&hex, 16)
        .ok()
        .map(|v| IpAddr::V6(Ipv6Addr::from(v)))
}

const KINDS: [&str; 4] = ["service", "node", "addr", "virtual"];

fn parse_labels(rest: &str, dc: &str) -> Lookup {
    if rest.eq_ignore_ascii_case("ns") {
        return Lookup::NameServer;
    }
    let labels: Vec<&str> = rest.split('.').collect();
    let n = labels.len();
    let is_kind = |l: &str| KINDS.iter().any(|k| k.eq_ignore_ascii_case(l));
    // The kind label is the last one, or the one before a datacenter label.
    let (kind_at, datacenter) = if is_kind(labels[n - 1]) {
        (n - 1, None)
    } else if n >= 2 && is_kind(labels[n - 2]) {
        (n - 2, Some(labels[n - 1]))
    } else {
        return Lookup::Missing;
    };
    if datacenter.is_some_and(|d| !d.eq_ignore_ascii_case(dc)) {
        return Lookup::Missing;
    }
    let left = &labels[..kind_at];
    if left.is_empty() || left.iter().any(|l| l.is_empty()) {
        return Lookup::Missing;
    }
    match labels[kind_at].to_ascii_lowercase().as_str() {
        "service" => service(left),
        // Node names may hold dots.
        "node" => Lookup::Node {
            name: left.join("."),
        },
        "addr" if left.len() == 1 => match hex_ip(left[0]) {
            Some(ip) => Lookup::Addr { ip },
            None => Lookup::Missing,
        },
        "virtual" if left.len() == 1 => Lookup::Virtual {
            name: left[0].to_string(),
        },
        _ => Lookup::Missing,
    }
}

fn service(left: &[&str]) -> Lookup {
    match left {
        [name] => Lookup::Service {
            name: name.to_string(),
            tag: None,
        },
        // RFC 2782: `_name._tag`; `_tcp` means any instance.
        [name, tag] if name.starts_with('_') && tag.starts_with('_') => {
            let (name, tag) = (&name[1..], &tag[1..]);
            if name.is_empty() || tag.is_empty() {
                return Lookup::Missing;
            }
            Lookup::Service {
                name: name.to_string(),
                tag: (!tag.eq_ignore_ascii_case("tcp")).then(|| tag.to_string()),
            }
        }
        [tag, name] => Lookup::Service {
            name: name.to_string(),
            tag: Some(tag.to_string()),
        },
        _ => Lookup::Missing,
    }
}

/// `7f000001` → 127.0.0.1; 32 hex digits → an IPv6 address.
pub fn hex_ip(s: &str) -> Option<IpAddr> {
    if !s.bytes().all(|b| b.is_ascii_hexdigit()) {
        return None;
    }
    match s.len() {
        8 => u32::from_str_radix(s, 16)
            .ok()
            .map(|v| IpAddr::V4(Ipv4Addr::from(v))),
        32 => u128::from_str_radix(s, 16)
            .ok()
            .map(|v| IpAddr::V6(Ipv6Addr::from(v))),
        _ => None,
    }
}

/// The hex label of an address, the inverse of [`hex_ip`].
pub fn ip_hex(ip: IpAddr) -> String {
    match ip {
        IpAddr::V4(v4) => format!("{:08x}", u32::from(v4)),
        IpAddr::V6(v6) => format!("{:032x}", u128::from(v6)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const D: &[&str] = &["mesh", "consul"];

    fn ours(name: &str) -> Lookup {
        match parse(name, D, "dc1") {
            Parsed::Ours { lookup, .. } => lookup,
            other => panic!("{name} should be ours, not {other:?}"),
        }
    }

    fn svc(name: &str, tag: Option<&str>) -> Lookup {
        Lookup::Service {
            name: name.into(),
            tag: tag.map(Into::into),
        }
    }

    #[test]
    fn service_forms() {
        assert_eq!(ours("web.service.mesh."), svc("web", None));
        assert_eq!(ours("WEB.Service.MESH"), svc("WEB", None));
        assert_eq!(ours("v1.web.service.mesh."), svc("web", Some("v1")));
        assert_eq!(ours("_web._tcp.service.mesh."), svc("web", None));
        assert_eq!(ours("_web._v1.service.mesh."), svc("web", Some("v1")));
        assert_eq!(ours("web.service.dc1.mesh."), svc("web", None));
        assert_eq!(ours("web.service.dc2.mesh."), Lookup::Missing);
        assert_eq!(ours("a.b.web.service.mesh."), Lookup::Missing);
        assert_eq!(ours("_._tcp.service.mesh."), Lookup::Missing);
    }

    #[test]
    fn other_forms() {
        assert_eq!(ours("mesh."), Lookup::Apex);
        assert_eq!(ours("ns.mesh."), Lookup::NameServer);
        assert_eq!(
            ours("host-1.node.mesh."),
            Lookup::Node {
                name: "host-1".into()
            }
        );
        assert_eq!(
            ours("host.a.node.dc1.mesh."),
            Lookup::Node {
                name: "host.a".into()
            }
        );
        assert_eq!(
            ours("7f000001.addr.dc1.mesh."),
            Lookup::Addr {
                ip: "127.0.0.1".parse().unwrap()
            }
        );
        assert_eq!(ours("7f0001.addr.dc1.mesh."), Lookup::Missing);
        assert_eq!(
            ours("web.virtual.consul."),
            Lookup::Virtual { name: "web".into() }
        );
        assert_eq!(ours("nothing.mesh."), Lookup::Missing);
        assert_eq!(ours("service.mesh."), Lookup::Missing);
        assert_eq!(ours(".service.mesh."), Lookup::Missing);
        assert_eq!(parse("example.org.", D, "dc1"), Parsed::Foreign);
        assert_eq!(parse("xmesh.", D, "dc1"), Parsed::Foreign);
        assert_eq!(
            parse("web.service.consul.", D, "dc1"),
            Parsed::Ours {
                zone: 1,
                lookup: svc("web", None)
            }
        );
    }

    #[test]
    fn reverse_names() {
        assert_eq!(
            parse("5.0.0.10.in-addr.arpa.", D, "dc1"),
            Parsed::Reverse("10.0.0.5".parse().unwrap())
        );
        let v6 = "1.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.d.f.ip6.arpa.";
        assert_eq!(
            parse(v6, D, "dc1"),
            Parsed::Reverse("fd00::1".parse().unwrap())
        );
        assert_eq!(parse("0.10.in-addr.arpa.", D, "dc1"), Parsed::Foreign);
        assert_eq!(parse("x.0.0.10.in-addr.arpa.", D, "dc1"), Parsed::Foreign);
    }

    #[test]
    fn hex_round_trip() {
        for ip in ["10.1.2.3", "127.0.0.1", "::1", "fd00::1:2"] {
            let ip: IpAddr = ip.parse().unwrap();
            assert_eq!(hex_ip(&ip_hex(ip)), Some(ip));
        }
        assert_eq!(hex_ip("zz000001"), None);
    }
}
