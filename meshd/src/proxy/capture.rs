//! How connections to virtual IPs reach the data plane without a socket per service.
//!
//! - **`sk_lookup`** (the default wherever it works): one listening socket for the whole
//!   virtual-IP range, on any port. An eBPF `sk_lookup` program ([`sk_lookup`]) hands it every
//!   TCP connection whose destination is in the range (plus the addresses still held from an
//!   earlier range, as /32s); the accepted socket's local address is the virtual IP and port
//!   the caller dialled, which [`route`] turns into the service. The descriptors this costs are
//!   the same with 10 services or 50,000.
//! - **`listeners`** (the fallback, for a host without `CAP_BPF` and `CAP_NET_ADMIN` or a
//!   kernel older than 5.9): one listening socket per virtual IP and port its instances use,
//!   as before, but at most `proxy_listener_limit` of them (default
//!   [`DEFAULT_LISTENER_LIMIT`]), the first services in name order; the services left out are
//!   counted (`meshd_proxy_virtual_ips_unserved`) and logged, and connections to them are
//!   refused by the kernel.
//!
//! `auto` tries `sk_lookup` and falls back to `listeners` with a warning that says why.
//!
//! Why `sk_lookup` rather than an nftables `redirect` with `SO_ORIGINAL_DST` (Istio's way): no
//! NAT and no conntrack entry per connection (the conntrack table is one more thing a busy
//! host runs out of), the accepted socket already carries the original destination, and the
//! program lives exactly as long as meshd's descriptors do: a SIGKILLed or crashed meshd
//! leaves no rule behind redirecting callers to a dead port, and nothing has to be removed at
//! stop or restart. It needs no `nft` binary either.

pub mod sk_lookup;

use std::collections::{BTreeMap, BTreeSet};
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::str::FromStr;

use registry::State;

use sk_lookup::{Prefix, SkLookup, SkLookupError};

/// Virtual-IP listeners at most in the fallback.
pub const DEFAULT_LISTENER_LIMIT: usize = 1024;

/// `proxy_capture`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Mode {
    /// `sk_lookup` where it works, else `listeners`.
    Auto,
    /// `sk_lookup` or fail at start.
    SkLookup,
    /// One listener per virtual IP and port, bounded.
    Listeners,
}

impl Mode {
    pub fn as_str(self) -> &'static str {
        match self {
            Mode::Auto => "auto",
            Mode::SkLookup => "sk_lookup",
            Mode::Listeners => "listeners",
        }
    }
}

impl FromStr for Mode {
    type Err = String;

    fn from_str(s: &str) -> Result<Mode, String> {
        match s {
            "auto" => Ok(Mode::Auto),
            "sk_lookup" => Ok(Mode::SkLookup),
            "listeners" => Ok(Mode::Listeners),
            _ => Err("expected auto, sk_lookup or listeners".into()),
        }
    }
}

/// The destinations to capture for `st`: its range, and every address held outside it.
pub fn prefixes(st: &State) -> BTreeSet<Prefix> {
    let range = st.virtual_ip_range();
    std::iter::once((range.network(), range.prefix_len()))
        .chain(st.virtual_ips_outside_range().map(|a| (a, 32)))
        .collect()
}

/// The fallback's listeners: `<virtual IP>:<port>` → service, at most `limit`.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Fallback {
    pub listeners: BTreeMap<SocketAddr, String>,
    /// Services with a virtual IP left without a listener on some or all of their ports.
    pub unserved: usize,
}

/// The first `limit` virtual-IP listeners in service name order. Costs O(limit · log n), not
/// the registry's size: it stops at the bound, and the services past it are counted from the
/// table's size.
pub fn fallback(st: &State, limit: usize) -> Fallback {
    let mut out = Fallback::default();
    let mut served = 0usize;
    for vip in st.virtual_ips() {
        let ports: BTreeSet<u16> = st
            .service_instances(&vip.service)
            .into_iter()
            .map(|(_, s)| s.port)
            .filter(|p| *p != 0)
            .collect();
        if out.listeners.len() + ports.len() > limit {
            break;
        }
        for port in ports {
            out.listeners.insert(
                SocketAddr::new(IpAddr::V4(vip.ip), port),
                vip.service.clone(),
            );
        }
        served += 1;
    }
    out.unserved = st.virtual_ip_count().saturating_sub(served);
    out
}

/// Why capture could not start as configured.
#[derive(Debug, thiserror::Error)]
pub enum CaptureError {
    #[error("capturing virtual IPs with sk_lookup: {0}")]
    SkLookup(#[from] SkLookupError),
    #[error("the capture listener on 127.0.0.1: {0}")]
    Listen(std::io::Error),
}

/// The capture in effect.
pub enum Capture {
    /// The program, and the listener it steers to.
    SkLookup {
        program: SkLookup,
        listener: std::net::TcpListener,
    },
    Listeners {
        limit: usize,
    },
}

impl Capture {
    /// Sets up `mode`; `Auto` falls back to listeners, logging why.
    pub fn start(mode: Mode, limit: usize, backlog: i32) -> Result<Capture, CaptureError> {
        match mode {
            Mode::Listeners => Ok(Capture::Listeners { limit }),
            Mode::SkLookup => Capture::sk_lookup(backlog),
            Mode::Auto => match Capture::sk_lookup(backlog) {
                Ok(c) => Ok(c),
                Err(e) => {
                    tracing::warn!(error = %e, limit,
                        "virtual IPs fall back to one listening socket per virtual IP and port, at most proxy_listener_limit");
                    Ok(Capture::Listeners { limit })
                }
            },
        }
    }

    fn sk_lookup(backlog: i32) -> Result<Capture, CaptureError> {
        let program = SkLookup::attach()?;
        let listener = listen_any_port(backlog).map_err(CaptureError::Listen)?;
        program.steer_to(&listener)?;
        Ok(Capture::SkLookup { program, listener })
    }

    pub fn mode(&self) -> Mode {
        match self {
            Capture::SkLookup { .. } => Mode::SkLookup,
            Capture::Listeners { .. } => Mode::Listeners,
        }
    }
}

/// The capture listener: 127.0.0.1 on a port the kernel picks (connections arrive there only
/// through the program; one made to that port directly matches no virtual IP and is reset).
fn listen_any_port(backlog: i32) -> std::io::Result<std::net::TcpListener> {
    let s = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None)?;
    s.set_nonblocking(true)?;
    s.set_tcp_nodelay(true)?;
    s.bind(&SocketAddr::new(IpAddr::V4(Ipv4Addr::LOCALHOST), 0).into())?;
    s.listen(backlog)?;
    Ok(s.into())
}

#[cfg(test)]
mod tests {
    use super::*;
    use registry::{Command, Node, Register, Service};

    fn reg(st: &mut State, index: u64, node: &str, name: &str, port: u16) {
        let cmd = Command::Register(Register {
            node: Node {
                node: node.into(),
                address: "10.0.0.1".into(),
                ..Node::default()
            },
            service: Some(Service {
                id: format!("{name}-{port}"),
                service: name.into(),
                port,
                ..Service::default()
            }),
            ..Register::default()
        });
        st.apply(index, &cmd);
    }

    fn state(services: &[(&str, &[u16])]) -> State {
        let mut st = State::new();
        let mut index = 1;
        for (name, ports) in services {
            for port in *ports {
                reg(&mut st, index, "n1", name, *port);
                index += 1;
            }
        }
        st
    }

    #[test]
    fn modes_parse_and_print() {
        for m in [Mode::Auto, Mode::SkLookup, Mode::Listeners] {
            assert_eq!(m.as_str().parse::<Mode>(), Ok(m));
        }
        assert!("nft".parse::<Mode>().is_err());
    }

    #[test]
    fn the_range_is_captured_whole() {
        let st = state(&[("api", &[80]), ("db", &[5432])]);
        assert_eq!(
            prefixes(&st),
            BTreeSet::from([("127.100.0.0".parse().unwrap(), 16)])
        );
    }

    #[test]
    fn a_connection_routes_to_the_service_of_its_address_on_a_port_it_uses() {
        let st = state(&[("api", &[80, 8080]), ("db", &[5432])]);
        let api = st.virtual_ip("api").expect("api's address");
        let at = |port| SocketAddr::new(IpAddr::V4(api), port);
        let decisions = crate::proxy::decide::Decisions::new("n1".into(), Default::default());
        decisions.update(&st);
        let table = decisions.table();
        let route = |a: SocketAddr| {
            let name = table.captured(a)?;
            let d = decisions.want(name, &st)?;
            d.ports.contains(&a.port()).then(|| d.service.clone())
        };
        assert_eq!(route(at(80)).as_deref(), Some("api"));
        assert_eq!(route(at(8080)).as_deref(), Some("api"));
        assert_eq!(route(at(5432)), None, "db's port, api's address");
        assert_eq!(route("127.100.9.9:80".parse().unwrap()), None);
        assert_eq!(route("[::1]:80".parse().unwrap()), None);
    }

    #[test]
    fn the_fallback_stops_at_its_bound_and_counts_the_rest() {
        let st = state(&[("a", &[1, 2]), ("b", &[3]), ("c", &[4, 5]), ("d", &[6])]);
        let all = fallback(&st, 100);
        assert_eq!(all.listeners.len(), 6);
        assert_eq!(all.unserved, 0);
        let some = fallback(&st, 4);
        // a (2 ports) and b (1) fit; c's two ports would make 5.
        let served: BTreeSet<&str> = some.listeners.values().map(String::as_str).collect();
        assert_eq!(served, BTreeSet::from(["a", "b"]));
        assert_eq!(some.listeners.len(), 3);
        assert_eq!(some.unserved, 2);
        let none = fallback(&st, 0);
        assert!(none.listeners.is_empty());
        assert_eq!(none.unserved, 4);
    }
}
