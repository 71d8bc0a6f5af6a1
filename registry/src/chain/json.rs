//! The JSON of a compiled chain, in the shape of Consul's `GET /v1/discovery-chain/{service}`
//! `Chain`: `ServiceName`, `Protocol`, `StartNode`, `Nodes` (router, splitter and resolver
//! nodes, named `router:<service>`, `splitter:<service>`, `resolver:<target>`) and `Targets`;
//! plus meshd's flat `Routes` (each with its `Splits`), which is what the data plane runs.

use serde::{Serialize, Serializer};
use serde_json::{json, Map, Value};

use super::{Chain, ChainRoute, HeaderMods, Split, Target};
use crate::duration::format_go_duration as format;

fn mods(m: &HeaderMods) -> Value {
    let map = |pairs: &[(String, String)]| {
        pairs
            .iter()
            .map(|(k, v)| (k.clone(), Value::from(v.as_str())))
            .collect::<Map<_, _>>()
    };
    json!({"Add": map(&m.add), "Set": map(&m.set), "Remove": m.remove})
}

fn split_json(s: &Split) -> Value {
    let mut v = json!({
        "Weight": f64::from(s.weight) / 100.0,
        "Target": s.target,
        "NextNode": format!("resolver:{}", s.target),
    });
    if !s.request_headers.is_empty() {
        v["RequestHeaders"] = mods(&s.request_headers);
    }
    if !s.response_headers.is_empty() {
        v["ResponseHeaders"] = mods(&s.response_headers);
    }
    v
}

/// The node a route leads to: its destination's splitter, or the resolver of its one target.
fn next_node(r: &ChainRoute) -> String {
    match r.splits.as_slice() {
        [one] => format!("resolver:{}", one.target),
        _ => format!("splitter:{}", r.destination),
    }
}

fn route_json(r: &ChainRoute) -> Value {
    let mut v = json!({
        "Definition": r.definition,
        "Destination": r.destination,
        "NextNode": next_node(r),
        "Splits": r.splits.iter().map(split_json).collect::<Vec<_>>(),
    });
    if let Some(p) = &r.prefix_rewrite {
        v["PrefixRewrite"] = json!(p);
    }
    if !r.request_headers.is_empty() {
        v["RequestHeaders"] = mods(&r.request_headers);
    }
    if !r.response_headers.is_empty() {
        v["ResponseHeaders"] = mods(&r.response_headers);
    }
    if let Some(d) = r.request_timeout {
        v["RequestTimeout"] = json!(format(d));
    }
    if let Some(d) = r.idle_timeout {
        v["IdleTimeout"] = json!(format(d));
    }
    if let Some(n) = r.num_retries {
        v["NumRetries"] = json!(n);
    }
    if r.retry_on_connect_failure {
        v["RetryOnConnectFailure"] = json!(true);
    }
    if !r.retry_on_status_codes.is_empty() {
        v["RetryOnStatusCodes"] = json!(r.retry_on_status_codes);
    }
    v
}

fn target_json(t: &Target) -> Value {
    let mut v = json!({
        "ID": t.id,
        "Service": t.service,
        "ServiceSubset": t.subset,
        "Subset": {
            "Filter": t.filter.as_ref().map(|f| f.source()).unwrap_or(""),
            "OnlyPassing": t.only_passing,
        },
        "Failover": t.failover,
    });
    if let Some(d) = t.connect_timeout {
        v["ConnectTimeout"] = json!(format(d));
    }
    if let Some(d) = t.request_timeout {
        v["RequestTimeout"] = json!(format(d));
    }
    if t.subset_missing {
        v["SubsetMissing"] = json!(true);
    }
    v
}

impl Chain {
    /// The chain as Consul-shaped JSON (see the module doc).
    pub fn to_json(&self) -> Value {
        let mut nodes = Map::new();
        if self.router {
            let name = format!("router:{}", self.service);
            let routes: Vec<Value> = self
                .routes
                .iter()
                .map(|r| json!({"Definition": r.definition, "NextNode": next_node(r)}))
                .collect();
            nodes.insert(
                name,
                json!({"Type": "router", "Name": self.service, "Routes": routes}),
            );
        }
        for r in self.routes.iter().filter(|r| r.splits.len() > 1) {
            let splits: Vec<Value> = r
                .splits
                .iter()
                .map(|s| {
                    json!({"Weight": f64::from(s.weight) / 100.0,
                                 "NextNode": format!("resolver:{}", s.target)})
                })
                .collect();
            nodes.insert(
                format!("splitter:{}", r.destination),
                json!({"Type": "splitter", "Name": r.destination, "Splits": splits}),
            );
        }
        for t in self.targets.values() {
            let mut resolver = json!({"Target": t.id, "Failover": Value::Null});
            if !t.failover.is_empty() {
                resolver["Failover"] = json!({"Targets": t.failover});
            }
            if let Some(d) = t.connect_timeout {
                resolver["ConnectTimeout"] = json!(format(d));
            }
            nodes.insert(
                format!("resolver:{}", t.id),
                json!({"Type": "resolver", "Name": t.id, "Resolver": resolver}),
            );
        }
        let start = match self.routes.as_slice() {
            _ if self.router => format!("router:{}", self.service),
            [only] => next_node(only),
            _ => String::new(),
        };
        json!({
            "ServiceName": self.service,
            "Protocol": self.protocol.as_str(),
            "StartNode": start,
            "Nodes": nodes,
            "Targets": self.targets.iter()
                .map(|(id, t)| (id.clone(), target_json(t)))
                .collect::<Map<_, _>>(),
            "Routes": self.routes.iter().map(route_json).collect::<Vec<_>>(),
        })
    }
}

impl Serialize for Chain {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        self.to_json().serialize(s)
    }
}
