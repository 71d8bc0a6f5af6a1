//! The compiled discovery chain of a service: what the data plane does with a request to it,
//! as pure data built from the config entries by a pure function ([`Chain::compile`]).
//!
//! As Consul's: the `service-router`'s routes in order (first match wins), then a catch-all
//! default route to the service itself; each route's destination goes through that service's
//! `service-splitter` (unless the route names a subset) and each split through its service's
//! `service-resolver`, whose `Redirect` replaces the target, whose `DefaultSubset` applies when
//! no subset is named, and whose `Failover` (per subset, or `*`) lists fallback targets. Routers
//! and splitters apply only to layer-7 protocols; a tcp chain is one default route.
//!
//! Limits: splitters are applied one level deep (a split to a service with its own splitter
//! goes to that service's resolver); redirect chains are cut after [`MAX_REDIRECTS`].
//!
//! Layout: this file compiles; [`matcher`] holds request matching and header changes;
//! [`json`] the Consul-shaped JSON of `GET /v1/discovery-chain/{service}`.

mod json;
pub mod matcher;

use std::collections::BTreeMap;
use std::time::Duration;

use crate::config_entry::{
    ConfigEntry, RouteDestination, ServiceRoute, SERVICE_RESOLVER, SERVICE_ROUTER, SERVICE_SPLITTER,
};
use crate::filter::Filter;
use crate::model::{Node, Service};
use crate::state::State;

pub use matcher::{
    HeaderMatcher, HeaderMods, HttpMatch, PathMatch, QueryMatcher, RequestInfo, ValueMatch,
};

/// Redirects followed before the chain stops at the service reached.
pub const MAX_REDIRECTS: usize = 8;

/// A service's protocol, from its `service-defaults`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub enum Protocol {
    #[default]
    Tcp,
    Http,
    Http2,
    Grpc,
}

impl Protocol {
    /// Consul's names; `None` for anything else (the empty string included).
    pub fn parse(s: &str) -> Option<Protocol> {
        match s {
            "tcp" => Some(Protocol::Tcp),
            "http" => Some(Protocol::Http),
            "http2" => Some(Protocol::Http2),
            "grpc" => Some(Protocol::Grpc),
            _ => None,
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Protocol::Tcp => "tcp",
            Protocol::Http => "http",
            Protocol::Http2 => "http2",
            Protocol::Grpc => "grpc",
        }
    }

    /// Whether routers and splitters apply.
    pub fn is_l7(self) -> bool {
        self != Protocol::Tcp
    }
}

/// The compiled chain of one service.
#[derive(Debug, Clone)]
pub struct Chain {
    pub service: String,
    pub protocol: Protocol,
    /// Router routes in order, then one catch-all default route; never empty.
    pub routes: Vec<ChainRoute>,
    /// By target id: `service` or `subset.service`.
    pub targets: BTreeMap<String, Target>,
    /// Whether the service has a `service-router` (applied).
    pub router: bool,
}

/// One route: a match and where matching requests go.
#[derive(Debug, Clone)]
pub struct ChainRoute {
    /// The default route matches all.
    pub matcher: HttpMatch,
    pub prefix_rewrite: Option<String>,
    pub request_headers: HeaderMods,
    pub response_headers: HeaderMods,
    /// At least one; weights in 1/100 of a percent, summing to 10000.
    pub splits: Vec<Split>,
    /// The service the route's destination names (before splits and redirects).
    pub destination: String,
    /// The router's route as written; `None` for the default route.
    pub definition: Option<ServiceRoute>,
    /// Stored from the route's destination; not yet acted on by the data plane.
    pub request_timeout: Option<Duration>,
    /// Stored; not yet acted on.
    pub idle_timeout: Option<Duration>,
    /// Stored; not yet acted on.
    pub num_retries: Option<u32>,
    /// Stored; not yet acted on.
    pub retry_on_connect_failure: bool,
    /// Stored; not yet acted on.
    pub retry_on_status_codes: Vec<u16>,
}

/// One weighted split of a route.
#[derive(Debug, Clone, PartialEq)]
pub struct Split {
    /// In 1/100 of a percent.
    pub weight: u32,
    /// A key of [`Chain::targets`].
    pub target: String,
    pub request_headers: HeaderMods,
    pub response_headers: HeaderMods,
}

/// A set of instances: a service, or a subset of it.
#[derive(Debug, Clone, PartialEq)]
pub struct Target {
    pub id: String,
    pub service: String,
    /// Empty: every instance.
    pub subset: String,
    pub filter: Option<Filter>,
    /// Only instances whose checks all pass (the caller applies it; see [`Target::admits`]).
    pub only_passing: bool,
    /// Target ids tried in order when this one has no healthy endpoint.
    pub failover: Vec<String>,
    pub connect_timeout: Option<Duration>,
    /// The resolver's `RequestTimeout`: stored, not yet acted on.
    pub request_timeout: Option<Duration>,
    /// The subset is named (by a route, split or failover) but not defined by the service's
    /// resolver: the target admits no instance.
    pub subset_missing: bool,
}

impl Target {
    /// Whether the instance is in this target: its service, and the subset filter. Health
    /// (`only_passing`) is the caller's to apply.
    pub fn admits(&self, node: &Node, service: &Service) -> bool {
        service.service == self.service
            && !self.subset_missing
            && self
                .filter
                .as_ref()
                .is_none_or(|f| f.matches(node, service))
    }
}

impl ChainRoute {
    /// The split for `roll`, a number in `0..10000` (drawn uniformly by the caller).
    pub fn split(&self, roll: u32) -> &Split {
        let mut upto = 0u32;
        self.splits
            .iter()
            .find(|s| {
                upto += s.weight;
                roll < upto
            })
            .or(self.splits.last())
            .expect("a route has at least one split")
    }

    fn to(destination: &str, splits: Vec<Split>) -> ChainRoute {
        ChainRoute {
            matcher: HttpMatch::any(),
            prefix_rewrite: None,
            request_headers: HeaderMods::default(),
            response_headers: HeaderMods::default(),
            splits,
            destination: destination.to_string(),
            definition: None,
            request_timeout: None,
            idle_timeout: None,
            num_retries: None,
            retry_on_connect_failure: false,
            retry_on_status_codes: Vec::new(),
        }
    }
}

fn duration(s: &str) -> Option<Duration> {
    (!s.is_empty())
        .then(|| crate::duration::parse_go_duration(s).ok())
        .flatten()
}

fn or_default<'a>(s: &'a str, default: &'a str) -> &'a str {
    if s.is_empty() {
        default
    } else {
        s
    }
}

impl Chain {
    /// The chain of `service` from the entries in `st`. Never fails: entries were validated
    /// when written (a part that still does not compile matches nothing).
    pub fn compile(st: &State, service: &str) -> Chain {
        let protocol = st.protocol(service);
        let mut c = Compiler {
            st,
            l7: protocol.is_l7(),
            targets: BTreeMap::new(),
        };
        let mut routes = Vec::new();
        let router = st
            .config_entry(SERVICE_ROUTER, service)
            .filter(|_| c.l7)
            .and_then(|e| e.routes.as_ref());
        for route in router.into_iter().flatten() {
            let dest = route.destination.clone().unwrap_or_default();
            let svc = or_default(&dest.service, service);
            let splits = c.splits(svc, &dest.service_subset);
            routes.push(route_of(route, &dest, svc, splits));
        }
        let splits = c.splits(service, "");
        routes.push(ChainRoute::to(service, splits));
        Chain {
            service: service.to_string(),
            protocol,
            routes,
            targets: c.targets,
            router: router.is_some(),
        }
    }

    /// The route of a request: the first that matches; the default route last.
    pub fn route(&self, req: &RequestInfo) -> &ChainRoute {
        self.routes
            .iter()
            .find(|r| r.matcher.matches(req))
            .or(self.routes.last())
            .expect("a chain has its default route")
    }
}

fn route_of(
    route: &ServiceRoute,
    dest: &RouteDestination,
    svc: &str,
    splits: Vec<Split>,
) -> ChainRoute {
    let matcher = route
        .r#match
        .as_ref()
        .and_then(|m| m.http.as_ref())
        .map(HttpMatch::compile)
        .unwrap_or_else(HttpMatch::any);
    ChainRoute {
        matcher,
        prefix_rewrite: (!dest.prefix_rewrite.is_empty()).then(|| dest.prefix_rewrite.clone()),
        request_headers: HeaderMods::from_config(dest.request_headers.as_ref()),
        response_headers: HeaderMods::from_config(dest.response_headers.as_ref()),
        splits,
        destination: svc.to_string(),
        definition: Some(route.clone()),
        request_timeout: duration(&dest.request_timeout),
        idle_timeout: duration(&dest.idle_timeout),
        num_retries: dest.num_retries,
        retry_on_connect_failure: dest.retry_on_connect_failure,
        retry_on_status_codes: dest.retry_on_status_codes.clone(),
    }
}

struct Compiler<'a> {
    st: &'a State,
    l7: bool,
    targets: BTreeMap<String, Target>,
}

impl Compiler<'_> {
    /// The splits toward `service`: its splitter's (when no subset is named), else one.
    fn splits(&mut self, service: &str, subset: &str) -> Vec<Split> {
        let splitter = self
            .st
            .config_entry(SERVICE_SPLITTER, service)
            .filter(|_| self.l7 && subset.is_empty())
            .and_then(|e| e.splits.as_ref());
        let Some(splitter) = splitter else {
            return vec![Split {
                weight: 10000,
                target: self.resolve(service, subset, 0),
                request_headers: HeaderMods::default(),
                response_headers: HeaderMods::default(),
            }];
        };
        let mut out: Vec<Split> = splitter
            .iter()
            .filter(|s| s.weight_bp() > 0)
            .map(|s| Split {
                weight: s.weight_bp(),
                target: self.resolve(or_default(&s.service, service), &s.service_subset, 0),
                request_headers: HeaderMods::from_config(s.request_headers.as_ref()),
                response_headers: HeaderMods::from_config(s.response_headers.as_ref()),
            })
            .collect();
        if out.is_empty() {
            out.push(Split {
                weight: 10000,
                target: self.resolve(service, "", 0),
                request_headers: HeaderMods::default(),
                response_headers: HeaderMods::default(),
            });
        }
        out
    }

    /// The target id for `subset` of `service` through its resolver, adding the target (and
    /// its failover targets) to the chain.
    fn resolve(&mut self, service: &str, subset: &str, depth: usize) -> String {
        let resolver = self.st.config_entry(SERVICE_RESOLVER, service);
        if let Some(r) = resolver.and_then(|r| r.redirect.as_ref()) {
            if depth < MAX_REDIRECTS {
                let to = or_default(&r.service, service).to_string();
                return self.resolve(&to, &r.service_subset, depth + 1);
            }
        }
        let default_subset = resolver.and_then(|r| r.default_subset.as_deref());
        let subset = or_default(subset, default_subset.unwrap_or(""));
        let id = if subset.is_empty() {
            service.to_string()
        } else {
            format!("{subset}.{service}")
        };
        if self.targets.contains_key(&id) {
            return id;
        }
        let target = new_target(&id, service, subset, resolver);
        self.targets.insert(id.clone(), target);
        let mut failover = Vec::new();
        let spec = resolver
            .and_then(|r| r.failover.as_ref())
            .and_then(|f| f.get(subset).or_else(|| f.get("*")));
        if let Some(f) = spec {
            let list: Vec<(String, String)> = if f.targets.is_empty() {
                vec![(f.service.clone(), f.service_subset.clone())]
            } else {
                f.targets
                    .iter()
                    .map(|t| (t.service.clone(), t.service_subset.clone()))
                    .collect()
            };
            for (svc, sub) in list {
                let tid = self.resolve(or_default(&svc, service), &sub, depth + 1);
                if tid != id && !failover.contains(&tid) {
                    failover.push(tid);
                }
            }
        }
        if let Some(t) = self.targets.get_mut(&id) {
            t.failover = failover;
        }
        id
    }
}

fn new_target(id: &str, service: &str, subset: &str, resolver: Option<&ConfigEntry>) -> Target {
    let def = resolver
        .and_then(|r| r.subsets.as_ref())
        .and_then(|s| s.get(subset));
    Target {
        id: id.to_string(),
        service: service.to_string(),
        subset: subset.to_string(),
        filter: def
            .filter(|d| !d.filter.is_empty())
            .and_then(|d| Filter::parse(&d.filter).ok()),
        only_passing: def.is_some_and(|d| d.only_passing),
        failover: Vec::new(),
        connect_timeout: resolver
            .and_then(|r| r.connect_timeout.as_deref())
            .and_then(duration),
        request_timeout: resolver
            .and_then(|r| r.request_timeout.as_deref())
            .and_then(duration),
        subset_missing: !subset.is_empty() && def.is_none(),
    }
}

#[cfg(test)]
mod tests;
