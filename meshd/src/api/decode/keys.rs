//! Key matching of request bodies: every key folded (lowercase, no `_` or `-`) and, when it
//! names a known field, replaced by Consul's spelling; free-form maps are left alone (see the
//! [`super`] module doc).

use std::collections::HashMap;
use std::sync::OnceLock;

use serde_json::{Map, Value};

use super::connect;

/// Every field name the API's request bodies use, spelled as Consul spells it.
const CANONICAL: &[&str] = &[
    "Action",
    "Add",
    "Address",
    "AliasNode",
    "AliasService",
    "Args",
    "Body",
    "Check",
    "CheckID",
    "Checks",
    "Connect",
    "ConnectTimeout",
    "CreateIndex",
    "Datacenter",
    "DefaultSubset",
    "Definition",
    "DeregisterCriticalServiceAfter",
    "Description",
    "Destination",
    "DestinationName",
    "DockerContainerID",
    "EnableTagOverride",
    "Exact",
    "Failover",
    "FailuresBeforeCritical",
    "FailuresBeforeWarning",
    "Filter",
    "GRPC",
    "GRPCUseTLS",
    "H2PING",
    "H2PingUseTLS",
    "HTTP",
    "Header",
    "ID",
    "IdleTimeout",
    "Interval",
    "Invert",
    "Kind",
    "Limits",
    "LoadBalancer",
    "Match",
    "MaxConnections",
    "MaxPendingConnects",
    "Meta",
    "Method",
    "Methods",
    "ModifyIndex",
    "Name",
    "Namespace",
    "Node",
    "NodeMeta",
    "Notes",
    "NumRetries",
    "OSService",
    "OnlyPassing",
    "Output",
    "Partition",
    "Passing",
    "PathExact",
    "PathPrefix",
    "PathRegex",
    "Policy",
    "Port",
    "Prefix",
    "PrefixRewrite",
    "Present",
    "Protocol",
    "Proxy",
    "QueryParam",
    "Redirect",
    "Regex",
    "Remove",
    "RequestHeaders",
    "RequestTimeout",
    "ResponseHeaders",
    "RetryOnConnectFailure",
    "RetryOnStatusCodes",
    "Routes",
    "Script",
    "ScriptArgs",
    "Service",
    "ServiceID",
    "ServiceName",
    "ServiceSubset",
    "ServiceTags",
    "Services",
    "Set",
    "Shell",
    "SkipNodeUpdate",
    "SocketPath",
    "SourceName",
    "SourceType",
    "Splits",
    "Status",
    "Subsets",
    "SuccessBeforePassing",
    "Suffix",
    "TCP",
    "TCPUseTLS",
    "TLSServerName",
    "TLSSkipVerify",
    "TTL",
    "TaggedAddresses",
    "Tags",
    "Targets",
    "Timeout",
    "Type",
    "UDP",
    "Warning",
    "Weight",
    "Weights",
];

/// Fields whose value is user data, copied verbatim (inside `Connect`: [`connect::FREE_FORM`]).
/// `Add` and `Set` of config entries' header changes map header names to values.
const FREE_FORM: &[&str] = &[
    "Meta", "NodeMeta", "Header", "Proxy", "Config", "Add", "Set",
];
/// Maps whose names are user data but whose values are objects with known fields.
const NAMED_OBJECTS: &[&str] = &["TaggedAddresses", "Subsets", "Failover"];

/// A key folded for comparison: lowercase, without `_` and `-`.
fn fold(key: &str) -> String {
    key.chars()
        .filter(|c| *c != '_' && *c != '-')
        .flat_map(char::to_lowercase)
        .collect()
}

/// The canonical spelling of a request key, if it names a known field.
pub fn canonical(key: &str) -> Option<&'static str> {
    static TABLE: OnceLock<HashMap<String, &'static str>> = OnceLock::new();
    TABLE
        .get_or_init(|| {
            CANONICAL
                .iter()
                .chain(connect::CANONICAL)
                .map(|c| (fold(c), *c))
                .collect()
        })
        .get(&fold(key))
        .copied()
}

/// Rewrites the keys of a parsed body to their canonical spelling (see the module doc).
pub fn normalize_keys(v: Value) -> Value {
    normalize_with(v, FREE_FORM)
}

/// As [`normalize_keys`], with `free_form` the fields whose values are left alone.
fn normalize_with(v: Value, free_form: &[&str]) -> Value {
    match v {
        Value::Object(map) => Value::Object(normalize_object(map, free_form)),
        Value::Array(items) => Value::Array(
            items
                .into_iter()
                .map(|v| normalize_with(v, free_form))
                .collect(),
        ),
        other => other,
    }
}

fn normalize_object(map: Map<String, Value>, free_form: &[&str]) -> Map<String, Value> {
    let mut out = Map::new();
    // Canonical keys that were given in their exact spelling: they win over an alias.
    let mut exact: Vec<&'static str> = Vec::new();
    for (key, value) in map {
        let Some(canon) = canonical(&key) else {
            out.insert(key, value);
            continue;
        };
        let is_exact = key == canon;
        if out.contains_key(canon) && (!is_exact || exact.contains(&canon)) {
            continue;
        }
        if is_exact {
            exact.push(canon);
        }
        let value = if canon == "Header" && value.is_array() {
            // A service-router's header matchers, not a check's header map.
            normalize_with(value, free_form)
        } else if free_form.contains(&canon) {
            value
        } else if canon == "Connect" {
            normalize_with(value, connect::FREE_FORM)
        } else if NAMED_OBJECTS.contains(&canon) {
            // The names are user data; each value (an address object) is not.
            match value {
                Value::Object(m) => Value::Object(
                    m.into_iter()
                        .map(|(name, addr)| (name, normalize_keys(addr)))
                        .collect(),
                ),
                other => other,
            }
        } else {
            normalize_with(value, free_form)
        };
        out.insert(canon.to_string(), value);
    }
    out
}
