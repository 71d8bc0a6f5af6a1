//! Decide: what the data plane does with a connection, compiled ahead of it.
//!
//! A [`Table`] holds, per destination service, an immutable [`Destination`]: its protocol, its
//! healthy endpoints (one [`EndpointSet`] per virtual-IP port and one for all), its limits and
//! connection counts, and for HTTP services the compiled routes (the [`http`](super::http)
//! layers read them). It also holds what the listeners need of this host: its services and
//! their users (who is calling), the virtual IPs (which service a captured connection is for)
//! and the trust domain.
//!
//! A destination is compiled the first time a connection needs it ([`Decisions::want`]), and
//! from then on kept: ztunnel's on-demand discovery, not Istio's everything-everywhere. A host
//! pays for the services it calls, not for every service of the registry (a service of 5,000
//! instances whose health changes hundreds of times a second costs nothing to the hosts that
//! never call it). The virtual IPs of every service are in the table, so a captured
//! connection finds its service before it is compiled.
//!
//! The table is rebuilt when the registry's applied index moves and something it depends on
//! changed (KV writes never rebuild it); within it, only the kept destinations whose inputs
//! changed are compiled again (see [`build`]). The new table is published with one atomic
//! pointer swap ([`ArcSwap`]); the per-connection path loads it without a lock and clones one
//! `Arc`.

use std::collections::BTreeSet;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, PoisonError};

use arc_swap::ArcSwap;
use registry::config_entry::{Limits, SERVICE_DEFAULTS};
use registry::model::Status as Health;
use registry::state::State;
use registry::vip::Ipv4Cidr;
use tokio_util::sync::CancellationToken;

use super::balance::{Endpoint, EndpointSet, Loads, Policy};
use super::http::chain::Routes;
use super::local::LocalServices;
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

/// The data plane's decisions at one registry index.
#[derive(Clone, Default)]
pub struct Table {
    pub index: u64,
    pub trust_domain: String,
    /// This host's services and their users.
    pub local: LocalServices,
    /// Virtual IP → its service, and back, for every service (compiled or not).
    vips: imbl::HashMap<Ipv4Addr, String>,
    vip_of: imbl::HashMap<String, Ipv4Addr>,
    /// The destinations some connection needed (kept compiled while their service exists).
    wanted: imbl::HashSet<String>,
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
    /// dialled (its destination says whether one of its instances uses the port).
    pub fn captured(&self, local: SocketAddr) -> Option<&str> {
        let IpAddr::V4(ip) = local.ip() else {
            return None;
        };
        self.vips.get(&ip).map(String::as_str)
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

/// The shortest time between the starts of two rebuilds of the table (Istio's control plane
/// debounces its pushes by 100 ms for the same reason).
const REBUILD_GAP: std::time::Duration = std::time::Duration::from_millis(100);

/// The current table, and its rebuilding.
pub struct Decisions {
    node: String,
    current: ArcSwap<Table>,
    metrics: RebuildMetrics,
    /// Held while a new table is made (a rebuild, or a destination compiled on demand), so that
    /// neither overwrites the other's table.
    publishing: std::sync::Mutex<()>,
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
            publishing: Default::default(),
        }
    }

    /// The current table: lock-free.
    pub fn table(&self) -> arc_swap::Guard<Arc<Table>> {
        self.current.load()
    }

    /// The destination `name` for a connection: from the current table without a lock, or,
    /// the first time one is needed, compiled from `store` ([`Decisions::want`]).
    pub fn destination(&self, name: &str, store: &Store) -> Option<Arc<Destination>> {
        let table = self.current.load();
        match table.destination(name) {
            Some(d) => Some(d.clone()),
            None => self.want(name, &store.read()),
        }
    }

    /// The destination `name`, compiled now from `st` (and kept from then on) if no
    /// connection needed it before; `None`: no such service.
    pub fn want(&self, name: &str, st: &State) -> Option<Arc<Destination>> {
        let _publishing = self
            .publishing
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        let old = self.current.load_full();
        if let Some(d) = old.destinations.get(name) {
            return Some(d.clone());
        }
        if !exists(st, name) {
            return None;
        }
        // Compiled at `st`'s index, which may be past the table's: the next rebuild compiles
        // it again if it changed since the table's index, as it does every kept destination.
        let d = Arc::new(destination(&self.node, st, name, None));
        let mut table = Table::clone(&old);
        table.wanted.insert(name.to_string());
        if !d.deps.is_empty() {
            table.routed.insert(name.to_string());
        }
        table.destinations.insert(name.to_string(), d.clone());
        self.metrics.destinations.inc();
        tracing::debug!(service = name, "destination wanted");
        self.current.store(Arc::new(table));
        Some(d)
    }

    /// Rebuilds what changed in `st` since the current table.
    pub fn update(&self, st: &State) {
        let _publishing = self
            .publishing
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
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
    ///
    /// A change after a quiet spell is compiled at once. Changes that follow a rebuild wait
    /// until [`REBUILD_GAP`], or ten times what that rebuild took if longer, has passed since
    /// it, and are compiled together: under a stream of health changes (hundreds a second on a
    /// service of thousands of instances) the rebuilds, which hold the registry's read lock
    /// that DNS and the API also take, then cost at most about a tenth of a CPU instead of
    /// growing with the rate of changes.
    pub async fn run(self: Arc<Self>, store: Store, cancel: CancellationToken) {
        let mut applied = store.subscribe();
        loop {
            let started = tokio::time::Instant::now();
            self.update(&store.read());
            let gap = REBUILD_GAP.max(started.elapsed() * 10);
            tokio::select! {
                _ = cancel.cancelled() => return,
                r = applied.changed() => if r.is_err() { return },
            }
            tokio::select! {
                _ = cancel.cancelled() => return,
                _ = tokio::time::sleep_until(started + gap) => {}
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
    let (mut destinations, mut vips, mut vip_of, mut routed) = if full {
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
            old.vip_of.clone(),
            old.routed.clone(),
        )
    };
    let mut wanted = old.wanted.clone();
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
        if let Some(ip) = vip_of.remove(name.as_str()) {
            vips.remove(&ip);
        }
        if let Some(ip) = st.virtual_ip(name) {
            vips.insert(ip, name.clone());
            vip_of.insert(name.clone(), ip);
        }
        if !wanted.contains(name.as_str()) {
            continue;
        }
        let prev = destinations.remove(name.as_str());
        routed.remove(name.as_str());
        if !exists(st, name) {
            wanted.remove(name.as_str());
            continue;
        }
        rebuilt += 1;
        let d = destination(node, st, name, prev.as_deref());
        if !d.deps.is_empty() {
            routed.insert(name.clone());
        }
        destinations.insert(name.clone(), Arc::new(d));
    }
    let local = if full {
        LocalServices::of(node, st)
    } else if st.node_index(node) > since {
        let mut local = old.local.clone();
        for name in st.services_changed_since(since) {
            local.refresh(node, st, name);
        }
        local
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
        vip_of,
        wanted,
        destinations,
        routed,
        range: Some(range),
        seen,
    };
    (table, rebuilt)
}

/// Whether `name` is a service (an instance or a routing config entry of that name).
fn exists(st: &State, name: &str) -> bool {
    st.has_instances(name)
        || Routes::KINDS
            .iter()
            .any(|k| st.config_entry(k, name).is_some())
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

    fn dest(d: &Decisions, st: &State, name: &str) -> Arc<Destination> {
        d.want(name, st).expect(name)
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
        assert_eq!(metrics.destinations.get(), 0, "none wanted yet");
        let (api, db) = (dest(&d, &st, "api"), dest(&d, &st, "db"));
        dest(&d, &st, "web");
        assert_eq!(metrics.destinations.get(), 3);
        assert!(Arc::ptr_eq(&api, &dest(&d, &st, "api")), "compiled once");
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
        assert!(!Arc::ptr_eq(&api, &dest(&d, &st, "api")));
        assert!(Arc::ptr_eq(&db, &dest(&d, &st, "db")));
        assert_eq!(dest(&d, &st, "api").all.endpoints().len(), 2);

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
        let api = dest(&d, &st, "api");
        assert_eq!(api.protocol, Protocol::Http);
        assert_eq!(api.deps, vec!["web".to_string()]);
        let routes = api.routes.as_ref().expect("routes");
        assert_eq!(routes.targets.len(), 2);
        assert!(Arc::ptr_eq(&db, &dest(&d, &st, "db")), "db untouched");

        // A change to web rebuilds api (its split reaches web), not db.
        let before = metrics.destinations.get();
        reg(&mut st, 9, "n1", "web", 8001);
        d.update(&st);
        assert_eq!(
            metrics.destinations.get(),
            before + 2,
            "web, and api for its split"
        );
        assert!(!Arc::ptr_eq(&api, &dest(&d, &st, "api")));
        assert!(Arc::ptr_eq(&db, &dest(&d, &st, "db")));
        let api = dest(&d, &st, "api");
        let web = &api.routes.as_ref().expect("routes").targets["web"];
        assert_eq!(web.set.endpoints().len(), 2);
    }

    #[test]
    fn a_destination_is_compiled_when_first_wanted_and_kept_while_its_service_exists() {
        let mut st = State::new();
        reg(&mut st, 1, "n1", "big", 80);
        reg(&mut st, 2, "n2", "api", 80);
        let metrics = RebuildMetrics::default();
        let d = Decisions::new("n1".into(), metrics.clone());
        d.update(&st);
        // Changes to a service no connection asked for compile nothing, and its virtual IP
        // is known all the same.
        for (i, port) in (3..20).zip(81..) {
            reg(&mut st, i, "n1", "big", port);
            d.update(&st);
        }
        assert_eq!(metrics.destinations.get(), 0);
        let vip = st.virtual_ip("big").expect("a virtual IP");
        let at = SocketAddr::new(IpAddr::V4(vip), 80);
        assert_eq!(d.table().captured(at), Some("big"));
        // Wanted: compiled at the registry's state, then again at each change.
        assert_eq!(dest(&d, &st, "big").all.endpoints().len(), 18);
        assert_eq!(metrics.destinations.get(), 1);
        reg(&mut st, 20, "n1", "big", 99);
        d.update(&st);
        assert_eq!(metrics.destinations.get(), 2);
        assert_eq!(
            d.table()
                .destination("big")
                .expect("kept")
                .all
                .endpoints()
                .len(),
            19
        );
        // Gone with its service (and its virtual IP), and no longer kept.
        st.apply(
            21,
            &Command::Deregister {
                node: "n1".into(),
                service_id: None,
                check_id: None,
            },
        );
        st.apply(
            22,
            &Command::Deregister {
                node: "n2".into(),
                service_id: None,
                check_id: None,
            },
        );
        d.update(&st);
        let table = d.table();
        assert!(table.destination("big").is_none());
        assert_eq!(table.captured(at), None);
        assert!(!table.wanted.contains("big"));
        assert!(d.want("big", &st).is_none());
        assert!(d.want("nothing", &st).is_none());
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
        let api = dest(&d, &st, "api");
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
