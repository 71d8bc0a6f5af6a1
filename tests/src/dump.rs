//! A full dump of what an agent serves: catalog services and each service's instances and
//! health, nodes and each node, all KV entries, the agent's services and checks.
//!
//! Two dumps taken around a series of rejected requests must be identical: rejected input
//! changes nothing. Each section records the path, the status and the exact body bytes.

use std::collections::BTreeMap;

use serde_json::Value;

use crate::http::Api;

/// One request of the dump.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Section {
    pub path: String,
    pub status: u16,
    pub body: Vec<u8>,
}

/// The whole dump, in a fixed order.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Dump {
    pub sections: Vec<Section>,
}

impl Dump {
    /// The dump as text, one `== path status` header per section.
    pub fn to_text(&self) -> String {
        let mut s = String::new();
        for sec in &self.sections {
            s.push_str(&format!(
                "== {} {}\n{}\n",
                sec.path,
                sec.status,
                String::from_utf8_lossy(&sec.body)
            ));
        }
        s
    }

    /// Whether every section's body parses to the same JSON (order-insensitive for objects)
    /// as in `other`: the same registry, even if not the same bytes.
    pub fn json_equal(&self, other: &Dump) -> bool {
        if self.sections.len() != other.sections.len() {
            return false;
        }
        self.sections.iter().zip(&other.sections).all(|(a, b)| {
            a.path == b.path
                && a.status == b.status
                && match (
                    serde_json::from_slice::<Value>(&a.body),
                    serde_json::from_slice::<Value>(&b.body),
                ) {
                    (Ok(x), Ok(y)) => x == y,
                    _ => a.body == b.body,
                }
        })
    }
}

async fn section(api: &Api, path: String) -> Section {
    let r = api.get(&path).await;
    Section {
        path,
        status: r.status,
        body: r.body,
    }
}

/// Takes a full dump of the agent behind `api`.
pub async fn full_dump(api: &Api) -> Dump {
    let mut sections = Vec::new();
    let services = section(api, "/v1/catalog/services".into()).await;
    let names: Vec<String> = serde_json::from_slice::<BTreeMap<String, Value>>(&services.body)
        .map(|m| m.into_keys().collect())
        .unwrap_or_default();
    sections.push(services);
    for name in &names {
        sections.push(section(api, format!("/v1/catalog/service/{name}")).await);
        sections.push(section(api, format!("/v1/health/service/{name}")).await);
    }
    let nodes = section(api, "/v1/catalog/nodes".into()).await;
    let node_names: Vec<String> = serde_json::from_slice::<Vec<Value>>(&nodes.body)
        .map(|v| {
            v.iter()
                .filter_map(|n| n.get("Node").and_then(Value::as_str).map(str::to_string))
                .collect()
        })
        .unwrap_or_default();
    sections.push(nodes);
    for node in &node_names {
        sections.push(section(api, format!("/v1/catalog/node/{node}")).await);
        sections.push(section(api, format!("/v1/health/node/{node}")).await);
    }
    sections.push(section(api, "/v1/kv/?recurse".into()).await);
    sections.push(section(api, "/v1/agent/services".into()).await);
    sections.push(section(api, "/v1/agent/checks".into()).await);
    Dump { sections }
}
