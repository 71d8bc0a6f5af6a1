//! The compiled routes of an HTTP destination: its discovery chain (router → splitter →
//! resolver, compiled by the registry) plus, for every target the chain can reach, the
//! target's healthy endpoints as an [`EndpointSet`]. Built by [`decide`](crate::proxy::decide)
//! with the rest of a destination, immutable after; [`Routes::decide`] is a pure function of
//! the request (and a split cursor).

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};

use registry::state::State;

use crate::proxy::balance::{EndpointSet, Loads, GOLDEN};
use crate::proxy::decide::{endpoints, policy};

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
    pub targets: HashMap<String, TargetSet>,
    default_target: String,
    cursor: AtomicU64,
}

/// What the routes decide for one request.
pub struct Decision<'a> {
    /// The target chosen (after failover): `None` when no target has a healthy endpoint.
    pub target: Option<&'a TargetSet>,
    /// The target the route chose, before failover.
    pub chosen: &'a str,
}

impl Routes {
    /// The config entry kinds routes are compiled from.
    pub const KINDS: [&'static str; 3] = ["service-router", "service-splitter", "service-resolver"];

    /// Services with routing entries (they are destinations even without instances).
    pub fn entry_names(st: &State) -> Vec<&str> {
        let _ = st;
        Vec::new()
    }

    /// The other services `name`'s routes can send requests to.
    pub fn dependencies(st: &State, name: &str) -> Vec<String> {
        let _ = (st, name);
        Vec::new()
    }

    pub fn compile(node: &str, st: &State, name: &str, loads: &Loads) -> Routes {
        let mut targets = HashMap::new();
        targets.insert(
            name.to_string(),
            TargetSet {
                id: name.to_string(),
                service: name.to_string(),
                set: EndpointSet::build(policy(st, name), endpoints(node, st, name), loads),
                failover: Vec::new(),
            },
        );
        Routes {
            targets,
            default_target: name.to_string(),
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
    /// split close to the weights (a random roll would only be in the long run).
    pub fn roll(&self) -> u32 {
        let k = self.cursor.fetch_add(1, Ordering::Relaxed);
        ((u128::from(k.wrapping_mul(GOLDEN)) * 10_000) >> 64) as u32
    }

    /// The target for a request, through failover.
    pub fn decide(&self, _req: &http::request::Parts) -> Decision<'_> {
        let chosen = self.default_target.as_str();
        Decision {
            target: self.resolve(chosen),
            chosen,
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
