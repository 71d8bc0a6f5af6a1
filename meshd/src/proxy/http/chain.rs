//! The compiled routes of an HTTP destination: its discovery chain (router → splitter →
//! resolver, compiled by the registry's [`Chain`]) plus, for every target the chain can
//! reach, the target's healthy endpoints as an [`EndpointSet`]. Built by
//! [`decide`](crate::proxy::decide) with the rest of a destination, immutable after;
//! [`Routes::decide`] is a pure function of the request and a split roll.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};

use registry::chain::{Chain, ChainRoute, PathMatch, RequestInfo, Split};
use registry::config_entry::{SERVICE_RESOLVER, SERVICE_ROUTER, SERVICE_SPLITTER};
use registry::state::State;

use crate::proxy::balance::{EndpointSet, Loads, GOLDEN};
use crate::proxy::decide::{endpoints_where, policy};

/// One target: a service (or a subset of it) and its endpoints.
pub struct TargetSet {
    pub id: String,
    pub service: String,
    pub set: EndpointSet,
    /// Targets tried in order when this one has no healthy endpoint.
    pub failover: Vec<String>,
}

/// An HTTP destination's routes.
pub struct Routes {
    pub chain: Chain,
    pub targets: HashMap<String, TargetSet>,
    cursor: AtomicU64,
}

/// What the routes decide for one request.
pub struct Decision<'a> {
    pub route: &'a ChainRoute,
    pub split: &'a Split,
    /// The target chosen (after failover): `None` when no target has a healthy endpoint.
    pub target: Option<&'a TargetSet>,
}

impl Routes {
    /// The config entry kinds routes are compiled from.
    pub const KINDS: [&'static str; 3] = [SERVICE_ROUTER, SERVICE_SPLITTER, SERVICE_RESOLVER];

    /// Services with routing entries (they are destinations even without instances).
    pub fn entry_names(st: &State) -> Vec<&str> {
        Self::KINDS
            .iter()
            .flat_map(|k| st.config_entries(k))
            .map(|e| e.name.as_str())
            .collect()
    }

    /// The other services `name`'s routes can send requests to.
    pub fn dependencies(st: &State, name: &str) -> Vec<String> {
        if !st.protocol(name).is_l7() && st.config_entry(SERVICE_RESOLVER, name).is_none() {
            return Vec::new();
        }
        let mut deps: Vec<String> = Chain::compile(st, name)
            .targets
            .into_values()
            .map(|t| t.service)
            .filter(|s| s != name)
            .collect();
        deps.sort();
        deps.dedup();
        deps
    }

    pub fn compile(node: &str, st: &State, name: &str, loads: &Loads) -> Routes {
        let chain = Chain::compile(st, name);
        let targets = chain
            .targets
            .values()
            .map(|t| {
                let eps = endpoints_where(node, st, &t.service, |n, s| t.admits(n, s));
                let set = EndpointSet::build(policy(st, &t.service), eps, loads);
                let ts = TargetSet {
                    id: t.id.clone(),
                    service: t.service.clone(),
                    set,
                    failover: t.failover.clone(),
                };
                (t.id.clone(), ts)
            })
            .collect();
        Routes {
            chain,
            targets,
            cursor: AtomicU64::new(0),
        }
    }

    /// The in-flight counts of every target's endpoints, for the routes that replace these.
    pub fn loads(&self, into: &mut Loads) {
        for t in self.targets.values() {
            t.set.loads(into);
        }
    }

    /// A split roll in 0..10000: a low-discrepancy sequence, so that any run of requests is
    /// split close to the weights (a random roll would be only in the long run).
    pub fn roll(&self) -> u32 {
        let k = self.cursor.fetch_add(1, Ordering::Relaxed);
        ((u128::from(k.wrapping_mul(GOLDEN)) * 10_000) >> 64) as u32
    }

    /// The route, split and target of a request.
    pub fn decide(&self, req: &http::request::Parts) -> Decision<'_> {
        let header = |name: &str| req.headers.get(name).and_then(|v| v.to_str().ok());
        let info = RequestInfo {
            method: req.method.as_str(),
            path: req.uri.path(),
            query: req.uri.query(),
            headers: &header,
        };
        let route = self.chain.route(&info);
        let split = if route.splits.len() == 1 {
            &route.splits[0]
        } else {
            route.split(self.roll())
        };
        Decision {
            route,
            split,
            target: self.resolve(&split.target),
        }
    }

    /// `id`, or the first of its failover targets with a healthy endpoint.
    pub fn resolve(&self, id: &str) -> Option<&TargetSet> {
        let t = self.targets.get(id)?;
        if !t.set.is_empty() {
            return Some(t);
        }
        t.failover
            .iter()
            .filter_map(|f| self.targets.get(f))
            .find(|f| !f.set.is_empty())
    }
}

/// The path after a route's `PrefixRewrite`: the matched `PathPrefix` replaced (Consul: only
/// with a `PathPrefix` or `PathExact` match; for an exact match, the whole path).
pub fn rewrite_path(route: &ChainRoute, path_and_query: &str) -> Option<String> {
    let to = route.prefix_rewrite.as_deref()?;
    let (path, query) = match path_and_query.split_once('?') {
        Some((p, q)) => (p, Some(q)),
        None => (path_and_query, None),
    };
    let rest = match &route.matcher.path {
        PathMatch::Prefix(p) => path.strip_prefix(p.as_str())?,
        PathMatch::Exact(p) if p == path => "",
        _ => return None,
    };
    let mut out = String::with_capacity(to.len() + rest.len() + 1);
    out.push_str(to);
    // "/api/v2/" → "/" on "/api/v2/x" gives "/x"; "/api/v2" → "/" on "/api/v2/x" gives "//x"
    // in Envoy; the one slash between is kept.
    if out.ends_with('/') && rest.starts_with('/') {
        out.pop();
    }
    out.push_str(rest);
    if out.is_empty() {
        out.push('/');
    }
    if let Some(q) = query {
        out.push('?');
        out.push_str(q);
    }
    Some(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use registry::chain::HttpMatch;

    fn route(path: PathMatch, to: &str) -> ChainRoute {
        ChainRoute {
            matcher: HttpMatch {
                path,
                ..HttpMatch::any()
            },
            prefix_rewrite: Some(to.into()),
            request_headers: Default::default(),
            response_headers: Default::default(),
            splits: Vec::new(),
            destination: "api".into(),
            definition: None,
            request_timeout: None,
            idle_timeout: None,
            num_retries: None,
            retry_on_connect_failure: false,
            retry_on_status_codes: Vec::new(),
        }
    }

    #[test]
    fn prefix_rewrite() {
        let r = route(PathMatch::Prefix("/api/v2/".into()), "/");
        assert_eq!(rewrite_path(&r, "/api/v2/x?y=1").as_deref(), Some("/x?y=1"));
        assert_eq!(rewrite_path(&r, "/api/v2/").as_deref(), Some("/"));
        assert_eq!(rewrite_path(&r, "/other").as_deref(), None);
        let r = route(PathMatch::Prefix("/api/v2".into()), "/v2");
        assert_eq!(rewrite_path(&r, "/api/v2/x").as_deref(), Some("/v2/x"));
        let r = route(PathMatch::Exact("/old".into()), "/new");
        assert_eq!(rewrite_path(&r, "/old").as_deref(), Some("/new"));
        assert_eq!(rewrite_path(&r, "/old/x"), None);
    }
}
