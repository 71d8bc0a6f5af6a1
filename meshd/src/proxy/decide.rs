//! Decide: what the data plane does with a connection, compiled ahead of it.
//!
//! A [`Table`] holds, per destination service, an immutable [`Destination`]: its protocol, its
//! healthy endpoints (one [`EndpointSet`] per virtual-IP port and one for all), its limits and
//! connection counts, and for HTTP services the compiled routes (the [`http`](super::http)
//! layers read them). It also holds what the listeners need of this host: its services and
//! their users (who is calling), the virtual IPs (which service a captured connection is for)
//! and the trust domain.
//!
//! The table is rebuilt when the registry's applied index moves and something it depends on
//! changed (KV writes never rebuild it); within it, only the destinations whose inputs changed
//! are compiled again (see [`build`]). The new table is published with one atomic pointer swap
//! ([`ArcSwap`]); the per-connection path loads it without a lock and clones one `Arc`.

use std::collections::BTreeSet;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Arc;

use arc_swap::ArcSwap;
use registry::config_entry::{Limits, SERVICE_DEFAULTS};
use registry::model::Status as Health;
use registry::state::State;
use registry::vip::Ipv4Cidr;
use tokio_util::sync::CancellationToken;

use super::balance::{Endpoint, EndpointSet, Loads, Policy};
use super::http::chain::Routes;
use crate::store::Store;

pub use registry::chain::Protocol;

/// Whether instances of a `protocol` service are spoken to in HTTP/2 (prior knowledge) rather
/// than HTTP/1.1.
pub fn h2_upstream(protocol: Protocol) -> bool {
    matches!(protocol, Protocol::Http2 | Protocol::Grpc)
}

/// Connections toward one destination from this host.
#[derive(Default)]
pub struct DestCounts {
    pub active: AtomicU32,
    pub pending: AtomicU32,
}

/// Decrements a counter when dropped (`true`: the active one, else the pending one).
pub struct Held(Arc<DestCounts>, bool);

impl Drop for Held {
    fn drop(&mut self) {
        self.0.counter(self.1).fetch_sub(1, Ordering::Relaxed);
    }
}

impl DestCounts {
    fn counter(&self, active: bool) -> &AtomicU32 {
        if active {
            &self.active
        } else {
            &self.pending
        }
    }

    pub fn hold_active(self: &Arc<Self>) -> Held {
        self.active.fetch_add(1, Ordering::Relaxed);
        Held(self.clone(), true)
    }

    pub fn hold_pending(self: &Arc<Self>) -> Held {
        self.pending.fetch_add(1, Ordering::Relaxed);
        Held(self.clone(), false)
    }
}

/// Everything about one destination service that a connection needs. Immutable.
pub struct Destination {
    pub service: String,
    pub protocol: Protocol,
    pub limits: Limits,
    pub counts: Arc<DestCounts>,
    /// Every passing endpoint.
    pub all: EndpointSet,
    /// Per instance port: the passing endpoints on it (a virtual IP's port maps to them).
    pub by_port: Box<[(u16, EndpointSet)]>,
    /// The ports some instance (passing or not) listens on: a captured connection to the
    /// virtual IP on another port is for no service.
    pub ports: BTreeSet<u16>,
    /// HTTP services: the compiled routes and their targets' endpoints.
    pub routes: Option<Routes>,
    /// The other services its routes reach: a change to one rebuilds this destination.
    pub deps: Vec<String>,
    pub vip: Option<Ipv4Addr>,
}

impl Destination {
    /// The endpoints for a connection on `port` of the virtual IP (`None`: an explicit
    /// upstream, any port): those on that port when some are, else all.
    pub fn endpoints(&self, port: Option<u16>) -> &EndpointSet {
        port.and_then(|p| {
            self.by_port
                .iter()
                .find(|(q, s)| *q == p && !s.is_empty())
                .map(|(_, s)| s)
        })
        .unwrap_or(&self.all)
    }
}

/// A service on this host: who a connection from its user is.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LocalService {
    pub name: String,
    pub user: String,
}

/// The data plane's decisions at one registry index.
#[derive(Default)]
pub struct Table {
    pub index: u64,
    pub trust_domain: String,
    /// This host's services (name, user), sorted, one per name and user.
    pub local: Arc<Vec<LocalService>>,
    /// Virtual IP → its service, for the destinations of the table.
    vips: imbl::HashMap<Ipv4Addr, String>,
    destinations: imbl::HashMap<String, Arc<Destination>>,
    /// The destinations whose routes reach other services.
    routed: imbl::HashSet<String>,
    range: Option<Ipv4Cidr>,
    seen: Seen,
}

impl Table {
    pub fn destination(&self, service: &str) -> Option<&Arc<Destination>> {
        self.destinations.get(service)
    }

    /// How many destinations the table holds.
    pub fn len(&self) -> usize {
        self.destinations.len()
    }

    /// The service a captured connection to `local` is for: the one whose virtual IP it
    /// dialled, if one of its instances uses the port.
    pub fn captured(&self, local: SocketAddr) -> Option<&Arc<Destination>> {
        let IpAddr::V4(ip) = local.ip() else {
            return None;
        };
        let dest = self.destinations.get(self.vips.get(&ip)?.as_str())?;
        dest.ports.contains(&local.port()).then_some(dest)
    }
}

/// The registry indexes the table depends on as a whole.
#[derive(Clone, Copy, Default, PartialEq, Eq)]
struct Seen {
    nodes: u64,
    services: u64,
    checks: u64,
    members: u64,
    config: u64,
    vips: u64,
    roots: u64,
    restore: u64,
}

fn seen(st: &State) -> Seen {
    let i = st.indexes();
    Seen {
        nodes: i.nodes,
        services: i.services,
        checks: i.checks,
        members: i.members,
        config: i.config_entries,
        vips: i.virtual_ips,
        roots: i.ca_roots,
        restore: i.restore,
    }
}

/// The current table, and its rebuilding.
pub struct Decisions {
    node: String,
    current: ArcSwap<Table>,
    metrics: RebuildMetrics,
}

/// Counts of rebuilds, for the data plane's metrics.
#[derive(Clone, Default)]
pub struct RebuildMetrics {
    pub tables: prometheus_client::metrics::counter::Counter,
    pub destinations: prometheus_client::metrics::counter::Counter,
    pub seconds: prometheus_client::metrics::counter::Counter<f64>,
}

impl Decisions {
    pub fn new(node: String, metrics: RebuildMetrics) -> Decisions {
        Decisions {
            node,
            current: ArcSwap::from_pointee(Table::default()),
            metrics,
        }
    }

    /// The current table: lock-free.
    pub fn table(&self) -> arc_swap::Guard<Arc<Table>> {
        self.current.load()
    }

    /// Rebuilds what changed in `st` since the current table.
    pub fn update(&self, st: &State) {
        let old = self.current.load_full();
        let now = seen(st);
        if old.index != 0 && old.seen == now {
            return;
        }
        let started = std::time::Instant::now();
        let (table, rebuilt) = build(&self.node, st, &old, now);
        self.metrics.tables.inc();
        self.metrics.destinations.inc_by(rebuilt as u64);
        self.metrics.seconds.inc_by(started.elapsed().as_secs_f64());
        tracing::debug!(
            index = table.index,
            rebuilt,
            destinations = table.len(),
            "data-plane decisions rebuilt"
        );
        self.current.store(Arc::new(table));
    }

    /// Keeps the table in step with `store` until `cancel`.
    pub async fn run(self: Arc<Self>, store: Store, cancel: CancellationToken) {
        let mut applied = store.subscribe();
        loop {
            self.update(&store.read());
            tokio::select! {
                _ = cancel.cancelled() => return,
                r = applied.changed() => if r.is_err() { return },
            }
        }
    }
}

/// A new table from `st`: `old`'s, with the destinations that changed since `old.index`
/// compiled again (or removed); returns it and how many destinations were compiled.
///
/// What changed is found from the registry's per-service change log
/// ([`State::services_changed_since`]) and the config entries' indexes: a destination is
/// compiled again when one of its services (its own, or one its routes reach: their instances,
/// checks, nodes' checks, virtual IP) or one of their config entries changed. A membership
/// change (QUIC addresses), a restore, a new virtual-IP range or a deleted config entry
/// compiles all. The maps are persistent ([`imbl`]): the new table shares everything unchanged
/// with the old one, so a change costs O(log n) plus what it compiles, not a copy of the table.
fn build(node: &str, st: &State, old: &Table, seen: Seen) -> (Table, usize) {
    let since = old.index;
    let range = st.virtual_ip_range();
    let mut changed: BTreeSet<String> = BTreeSet::new();
    let full = since == 0
        || seen.members != old.seen.members
        || seen.restore != old.seen.restore
        || Some(range) != old.range
        || !config_changed_since(st, since, &mut changed);
    let (mut destinations, mut vips, mut routed) = if full {
        changed.extend(st.service_name_list().map(str::to_string));
        changed.extend(Routes::entry_names(st).into_iter().map(str::to_string));
        Default::default()
    } else {
        // A node's own checks count as a change of every service on it (the registry records
        // it so), and a new service's virtual IP comes with its registration.
        changed.extend(st.services_changed_since(since).map(str::to_string));
        (
            old.destinations.clone(),
            old.vips.clone(),
            old.routed.clone(),
        )
    };
    // Destinations whose routes reach a changed service.
    let dependents: Vec<String> = routed
        .iter()
        .filter(|name| {
            destinations
                .get(name.as_str())
                .is_some_and(|d: &Arc<Destination>| d.deps.iter().any(|x| changed.contains(x)))
        })
        .cloned()
        .collect();
    changed.extend(dependents);
    let mut rebuilt = 0;
    for name in &changed {
        let prev = destinations.remove(name.as_str());
        if let Some(ip) = prev.as_ref().and_then(|d| d.vip) {
            vips.remove(&ip);
        }
        routed.remove(name.as_str());
        let exists = !st.service_instances(name).is_empty()
            || Routes::KINDS
                .iter()
                .any(|k| st.config_entry(k, name).is_some());
        if !exists {
            continue;
        }
        rebuilt += 1;
        let d = destination(node, st, name, prev.as_deref());
        if let Some(ip) = d.vip {
            vips.insert(ip, name.clone());
        }
        if !d.deps.is_empty() {
            routed.insert(name.clone());
        }
        destinations.insert(name.clone(), Arc::new(d));
    }
    let local = if full || st.node_index(node) > since {
        let mut local: Vec<LocalService> = st
            .node_services(node)
            .map(|s| LocalService {
                name: s.service.clone(),
                user: s.user.clone(),
            })
            .collect();
        local.sort_by(|a, b| (&a.name, &a.user).cmp(&(&b.name, &b.user)));
        local.dedup();
        Arc::new(local)
    } else {
        old.local.clone()
    };
    let table = Table {
        index: st.applied_index(),
        trust_domain: st
            .active_ca_root()
            .map(|r| r.trust_domain.clone())
            .unwrap_or_default(),
        local,
        vips,
        destinations,
        routed,
        range: Some(range),
        seen,
    };
    (table, rebuilt)
}

/// Adds the names of the config entries (of the kinds destinations read) written after
/// `since` to `names`; false when the config entries changed but none was written after it
/// (one was deleted: its name is not known any more).
fn config_changed_since(st: &State, since: u64, names: &mut BTreeSet<String>) -> bool {
    let mut any = false;
    for kind in Routes::KINDS.iter().chain([&SERVICE_DEFAULTS]) {
        for e in st.config_entries(kind) {
            if e.modify_index > since {
                names.insert(e.name.clone());
                any = true;
            }
        }
    }
    any || st.config_entries_index() <= since
}

/// The passing endpoints of `service`, as this host reaches them.
pub fn endpoints(node: &str, st: &State, service: &str) -> Vec<Endpoint> {
    endpoints_where(node, st, service, |_, _| true)
}

/// The passing endpoints of `service` that `admit` lets in (a subset's filter).
pub fn endpoints_where(
    node: &str,
    st: &State,
    service: &str,
    admit: impl Fn(&registry::model::Node, &registry::model::Service) -> bool,
) -> Vec<Endpoint> {
    st.health_service(service)
        .into_iter()
        .filter(|e| e.status() == Health::Passing && admit(e.node, e.service))
        .filter_map(|e| {
            let n = e.node.node.clone();
            let (addr, quic) = if n == node {
                (local_addr(&e.service.address, e.service.port), None)
            } else {
                let quic: SocketAddr = st.member(&n)?.addr.parse().ok()?;
                (quic, Some(quic))
            };
            Some(Endpoint {
                key: format!("{n}/{}", e.service.id),
                node: n,
                instance: e.service.id.clone(),
                port: e.service.port,
                addr,
                quic,
                weight: e.service.weights.passing,
            })
        })
        .collect()
}

/// The balancing policy of `service`'s `service-defaults`.
pub fn policy(st: &State, service: &str) -> Policy {
    st.config_entry(SERVICE_DEFAULTS, service)
        .and_then(|e| Policy::parse(e.policy()).ok())
        .unwrap_or_default()
}

fn destination(node: &str, st: &State, name: &str, prev: Option<&Destination>) -> Destination {
    let defaults = st.config_entry(SERVICE_DEFAULTS, name);
    let protocol = st.protocol(name);
    let policy = policy(st, name);
    let mut loads = Loads::new();
    if let Some(p) = prev {
        p.all.loads(&mut loads);
        if let Some(r) = &p.routes {
            r.loads(&mut loads);
        }
    }
    let eps = endpoints(node, st, name);
    let mut ports: Vec<u16> = eps.iter().map(|e| e.port).collect();
    ports.sort_unstable();
    ports.dedup();
    let by_port = ports
        .iter()
        .map(|p| {
            let on: Vec<Endpoint> = eps.iter().filter(|e| e.port == *p).cloned().collect();
            (*p, EndpointSet::build(policy, on, &loads))
        })
        .collect();
    let all_ports = st
        .service_instances(name)
        .iter()
        .map(|(_, s)| s.port)
        .filter(|p| *p != 0)
        .collect();
    let routes = protocol
        .is_l7()
        .then(|| Routes::compile(node, st, name, &loads));
    tracing::debug!(service = %name, protocol = protocol.as_str(), policy = policy.as_str(),
        endpoints = eps.len(), "destination compiled");
    Destination {
        service: name.to_string(),
        protocol,
        limits: defaults.and_then(|e| e.limits).unwrap_or_default(),
        counts: prev.map(|p| p.counts.clone()).unwrap_or_default(),
        all: EndpointSet::build(policy, eps, &loads),
        by_port,
        ports: all_ports,
        routes,
        deps: Routes::dependencies(st, name),
        vip: st.virtual_ip(name),
    }
}

/// A local instance's address: its own, or loopback when it registered none.
pub fn local_addr(address: &str, port: u16) -> SocketAddr {
    let ip = address
        .parse::<IpAddr>()
        .unwrap_or(IpAddr::V4(Ipv4Addr::LOCALHOST));
    SocketAddr::new(ip, port)
}

#[cfg(test)]
mod tests {
    use super::*;
    use registry::config_entry::ConfigEntry;
    use registry::{Command, Node, Register, Service};
    use serde_json::json;

    fn reg(st: &mut State, index: u64, node: &str, name: &str, port: u16) {
        let cmd = Command::Register(Register {
            node: Node {
                node: node.into(),
                address: "10.0.0.1".into(),
                ..Node::default()
            },
            service: Some(Service {
                id: format!("{name}-{node}-{port}"),
                service: name.into(),
                port,
                ..Service::default()
            }),
            ..Register::default()
        });
        st.apply(index, &cmd);
    }

    fn entry(st: &mut State, index: u64, e: serde_json::Value) {
        let entry: ConfigEntry = serde_json::from_value(e).expect("an entry");
        st.apply(index, &Command::ConfigEntrySet { entry, cas: None });
    }

    fn dest(d: &Decisions, name: &str) -> Arc<Destination> {
        d.table().destination(name).cloned().expect(name)
    }

    #[test]
    fn only_what_changed_is_rebuilt() {
        let mut st = State::new();
        reg(&mut st, 1, "n1", "api", 80);
        reg(&mut st, 2, "n3", "db", 5432);
        reg(&mut st, 3, "n1", "web", 8000);
        let metrics = RebuildMetrics::default();
        let d = Decisions::new("n1".into(), metrics.clone());
        d.update(&st);
        assert_eq!(metrics.destinations.get(), 3);
        let (api, db) = (dest(&d, "api"), dest(&d, "db"));
        assert_eq!(api.all.endpoints().len(), 1);
        assert_eq!(api.protocol, Protocol::Tcp);

        // A KV write: the table is not even rebuilt.
        let kv = Command::KvSet {
            key: "k".into(),
            value: b"v".to_vec(),
            flags: 0,
            cas: None,
        };
        st.apply(4, &kv);
        d.update(&st);
        assert_eq!(metrics.tables.get(), 1);

        // A second instance of api: api alone is compiled again.
        reg(&mut st, 5, "n1", "api", 81);
        d.update(&st);
        assert_eq!(metrics.destinations.get(), 4);
        assert!(!Arc::ptr_eq(&api, &dest(&d, "api")));
        assert!(Arc::ptr_eq(&db, &dest(&d, "db")));
        assert_eq!(dest(&d, "api").all.endpoints().len(), 2);

        // api becomes HTTP and splits between itself and web.
        entry(
            &mut st,
            6,
            json!({"Kind": "service-defaults", "Name": "api", "Protocol": "http"}),
        );
        entry(
            &mut st,
            7,
            json!({"Kind": "service-defaults", "Name": "web", "Protocol": "http"}),
        );
        entry(
            &mut st,
            8,
            json!({"Kind": "service-splitter", "Name": "api",
                   "Splits": [{"Weight": 50}, {"Weight": 50, "Service": "web"}]}),
        );
        d.update(&st);
        let api = dest(&d, "api");
        assert_eq!(api.protocol, Protocol::Http);
        assert_eq!(api.deps, vec!["web".to_string()]);
        let routes = api.routes.as_ref().expect("routes");
        assert_eq!(routes.targets.len(), 2);
        assert!(Arc::ptr_eq(&db, &dest(&d, "db")), "db untouched");

        // A change to web rebuilds api (its split reaches web), not db.
        let before = metrics.destinations.get();
        reg(&mut st, 9, "n1", "web", 8001);
        d.update(&st);
        assert_eq!(
            metrics.destinations.get(),
            before + 2,
            "web, and api for its split"
        );
        assert!(!Arc::ptr_eq(&api, &dest(&d, "api")));
        assert!(Arc::ptr_eq(&db, &dest(&d, "db")));
        let api = dest(&d, "api");
        let web = &api.routes.as_ref().expect("routes").targets["web"];
        assert_eq!(web.set.endpoints().len(), 2);
    }

    #[test]
    fn a_split_follows_its_weights_over_any_run_of_requests() {
        let mut st = State::new();
        reg(&mut st, 1, "n1", "api", 80);
        reg(&mut st, 2, "n1", "web", 80);
        entry(
            &mut st,
            3,
            json!({"Kind": "service-defaults", "Name": "api", "Protocol": "http"}),
        );
        entry(
            &mut st,
            4,
            json!({"Kind": "service-defaults", "Name": "web", "Protocol": "http"}),
        );
        entry(
            &mut st,
            5,
            json!({"Kind": "service-splitter", "Name": "api",
                   "Splits": [{"Weight": 90}, {"Weight": 10, "Service": "web"}]}),
        );
        let d = Decisions::new("n1".into(), RebuildMetrics::default());
        d.update(&st);
        let api = dest(&d, "api");
        let routes = api.routes.as_ref().expect("routes");
        let req = http::Request::get("/x").body(()).expect("a request");
        let (parts, ()) = req.into_parts();
        let picks: Vec<bool> = (0..2000)
            .map(|_| routes.decide(&parts).split.target == "web")
            .collect();
        for w in picks.chunks(100) {
            let n = w.iter().filter(|x| **x).count();
            assert!((9..=11).contains(&n), "{n} of 100 to web");
        }
    }
}
