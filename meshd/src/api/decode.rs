//! Request decoding: JSON bodies with Consul's lenient key matching, Go durations, and the
//! request structs.
//!
//! Consul (Go's `encoding/json` plus its own key translation) matches keys case-insensitively
//! and accepts the snake_case spelling of its config files (`tagged_addresses`,
//! `deregister_critical_service_after`, ...), which clients such as py-consul send. Before
//! deserializing, every key of a body is normalized (lowercased, `_` and `-` removed) and, when
//! it names a known field, replaced by the canonical spelling. Keys inside free-form maps
//! (`Meta`, `NodeMeta`, `Header`, `Proxy`, `Connect`'s `Config` maps, and the names of
//! `TaggedAddresses`) are user data and are never touched; nor is the content of an unknown
//! key. The typed `Connect` block is in [`connect`].

use std::collections::BTreeMap;
use std::time::Duration;

use serde::de::{self, DeserializeOwned, Deserializer};
use serde::Deserialize;
use serde_json::Value;

use super::error::ApiError;
use registry::duration::parse_go_duration;

pub mod connect;
mod keys;

pub use connect::ConnectDef;
pub use keys::{canonical, normalize_keys};

/// Parses a request body as JSON. `what` names the body in errors.
pub fn parse_json(body: &[u8], what: &str) -> Result<Value, ApiError> {
    if body.iter().all(u8::is_ascii_whitespace) {
        return Err(ApiError::bad(format!(
            "Request decode failed: {what}: empty body"
        )));
    }
    serde_json::from_slice(body)
        .map_err(|e| ApiError::bad(format!("Request decode failed: {what}: invalid JSON: {e}")))
}

/// Normalizes the keys of `v` and deserializes it, naming the offending field on error.
pub fn decode<T: DeserializeOwned>(v: Value, what: &str) -> Result<T, ApiError> {
    let v = normalize_keys(v);
    serde_path_to_error::deserialize(v)
        .map_err(|e| field_error(e, &format!("Request decode failed: {what}: ")))
}

/// A decoding error, after `prefix`, with the field it is in.
fn field_error(e: serde_path_to_error::Error<serde_json::Error>, prefix: &str) -> ApiError {
    let path = e.path().to_string();
    let inner = e.into_inner();
    if path == "." || path.is_empty() {
        ApiError::bad(format!("{prefix}{inner}"))
    } else {
        ApiError::bad(format!("{prefix}field {path}: {inner}"))
    }
}

/// Names as a list for an error message: `` `a`, `b` ``.
pub fn backquoted<S: AsRef<str>>(names: &[S]) -> String {
    names
        .iter()
        .map(|n| format!("`{}`", n.as_ref()))
        .collect::<Vec<_>>()
        .join(", ")
}

/// As [`decode`], and a key that no field reads is an error that names it. For configuration
/// files (`--config-dir`), where a misspelt key would otherwise be dropped without a word; API
/// bodies stay lenient, as Consul's, since its clients send fields meshd does not model.
pub fn decode_strict<T: DeserializeOwned>(v: Value, what: &str) -> Result<T, ApiError> {
    let mut unknown: Vec<String> = Vec::new();
    // serde_ignored shows an `Option`'s content as a `?` segment: not part of the key.
    let mut note = |path: serde_ignored::Path| {
        let key = path.to_string();
        unknown.push(
            key.split('.')
                .filter(|seg| *seg != "?")
                .collect::<Vec<_>>()
                .join("."),
        )
    };
    let value: T = {
        let de = serde_ignored::Deserializer::new(normalize_keys(v), &mut note);
        // The caller's context already names the file and the definition: no prefix.
        serde_path_to_error::deserialize(de).map_err(|e| field_error(e, ""))?
    };
    match unknown.as_slice() {
        [] => Ok(value),
        keys => Err(ApiError::bad(format!(
            "unknown key{} {}: not a field meshd reads in a {what} (misspelt?)",
            if keys.len() == 1 { "" } else { "s" },
            backquoted(keys)
        ))),
    }
}

/// Parses and decodes a JSON request body.
pub fn decode_body<T: DeserializeOwned>(body: &[u8], what: &str) -> Result<T, ApiError> {
    decode(parse_json(body, what)?, what)
}

/// A duration given as a Go duration string (`"10s"`) or as integer nanoseconds (Go's
/// `time.Duration` in JSON).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct GoDuration(pub Duration);

impl<'de> Deserialize<'de> for GoDuration {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl de::Visitor<'_> for V {
            type Value = GoDuration;
            fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                f.write_str("a duration such as \"10s\" or integer nanoseconds")
            }
            fn visit_str<E: de::Error>(self, s: &str) -> Result<GoDuration, E> {
                parse_go_duration(s).map(GoDuration).map_err(E::custom)
            }
            fn visit_u64<E: de::Error>(self, n: u64) -> Result<GoDuration, E> {
                Ok(GoDuration(Duration::from_nanos(n)))
            }
            fn visit_i64<E: de::Error>(self, n: i64) -> Result<GoDuration, E> {
                u64::try_from(n)
                    .map(|n| GoDuration(Duration::from_nanos(n)))
                    .map_err(|_| E::custom(format!("negative duration {n}")))
            }
            fn visit_f64<E: de::Error>(self, n: f64) -> Result<GoDuration, E> {
                if n.is_finite() && n >= 0.0 && n.fract() == 0.0 && n < 1e18 {
                    Ok(GoDuration(Duration::from_nanos(n as u64)))
                } else {
                    Err(E::custom(format!("invalid duration {n}")))
                }
            }
        }
        d.deserialize_any(V)
    }
}

/// HTTP header values: a list of strings, or one string.
#[derive(Clone, Debug, PartialEq)]
pub struct HeaderValues(pub Vec<String>);

impl<'de> Deserialize<'de> for HeaderValues {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum OneOrMany {
            One(String),
            Many(Vec<String>),
        }
        OneOrMany::deserialize(d)
            .map(|v| match v {
                OneOrMany::One(s) => HeaderValues(vec![s]),
                OneOrMany::Many(v) => HeaderValues(v),
            })
            .map_err(|_| de::Error::custom("expected a string or a list of strings"))
    }
}

/// `Weights` of a service definition.
#[derive(Deserialize, Debug, Default, Clone)]
#[serde(rename_all = "PascalCase")]
pub struct WeightsDef {
    pub passing: Option<i64>,
    pub warning: Option<i64>,
}

/// One entry of a service's `TaggedAddresses`.
#[derive(Deserialize, Debug, Default, Clone)]
#[serde(rename_all = "PascalCase")]
pub struct ServiceAddressDef {
    pub address: Option<String>,
    pub port: Option<i64>,
}

/// A service as registered through the agent (`Name`) or the catalog (`Service`).
#[derive(Deserialize, Debug, Default, Clone)]
#[serde(rename_all = "PascalCase")]
pub struct ServiceDef {
    pub kind: Option<String>,
    #[serde(rename = "ID")]
    pub id: Option<String>,
    pub name: Option<String>,
    /// The catalog's spelling of the name.
    pub service: Option<String>,
    pub tags: Option<Vec<String>>,
    pub meta: Option<BTreeMap<String, String>>,
    pub port: Option<i64>,
    pub address: Option<String>,
    pub tagged_addresses: Option<BTreeMap<String, ServiceAddressDef>>,
    pub enable_tag_override: Option<bool>,
    pub weights: Option<WeightsDef>,
    pub check: Option<CheckDef>,
    pub checks: Option<Vec<CheckDef>>,
    pub proxy: Option<Value>,
    pub connect: Option<ConnectDef>,
    pub socket_path: Option<String>,
    /// meshd's extension: the system user the service runs as (see `Service::user`).
    pub user: Option<String>,
}

/// A check definition (agent check register, a service's `Check`/`Checks`, the catalog's
/// `Definition`), or a catalog health check (which adds `Node`, `Output`, `Definition`).
#[derive(Deserialize, Debug, Default, Clone)]
#[serde(rename_all = "PascalCase")]
pub struct CheckDef {
    #[serde(rename = "CheckID")]
    pub check_id: Option<String>,
    #[serde(rename = "ID")]
    pub id: Option<String>,
    pub name: Option<String>,
    pub notes: Option<String>,
    pub status: Option<String>,
    pub output: Option<String>,
    pub node: Option<String>,
    #[serde(rename = "ServiceID")]
    pub service_id: Option<String>,
    #[serde(rename = "HTTP")]
    pub http: Option<String>,
    pub method: Option<String>,
    pub header: Option<BTreeMap<String, HeaderValues>>,
    pub body: Option<String>,
    #[serde(rename = "TLSSkipVerify")]
    pub tls_skip_verify: Option<bool>,
    #[serde(rename = "TCP")]
    pub tcp: Option<String>,
    #[serde(rename = "TTL")]
    pub ttl: Option<GoDuration>,
    pub interval: Option<GoDuration>,
    pub timeout: Option<GoDuration>,
    pub deregister_critical_service_after: Option<GoDuration>,
    pub definition: Option<Box<CheckDef>>,
    // Check types meshd does not run: present only to refuse them by name.
    pub args: Option<Value>,
    pub script_args: Option<Value>,
    pub script: Option<Value>,
    #[serde(rename = "GRPC")]
    pub grpc: Option<Value>,
    #[serde(rename = "DockerContainerID")]
    pub docker_container_id: Option<Value>,
    pub shell: Option<Value>,
    #[serde(rename = "H2PING")]
    pub h2ping: Option<Value>,
    #[serde(rename = "UDP")]
    pub udp: Option<Value>,
    #[serde(rename = "OSService")]
    pub os_service: Option<Value>,
    pub alias_node: Option<Value>,
    pub alias_service: Option<Value>,
}

impl CheckDef {
    /// The first check type meshd does not support that this definition sets, by name.
    pub fn unsupported_type(&self) -> Option<&'static str> {
        let set = |v: &Option<Value>| match v {
            None | Some(Value::Null) => false,
            Some(Value::String(s)) => !s.is_empty(),
            Some(Value::Array(a)) => !a.is_empty(),
            Some(_) => true,
        };
        [
            (&self.args, "Args (script)"),
            (&self.script_args, "ScriptArgs (script)"),
            (&self.script, "Script"),
            (&self.grpc, "GRPC"),
            (&self.docker_container_id, "DockerContainerID (docker)"),
            (&self.shell, "Shell (docker)"),
            (&self.h2ping, "H2PING"),
            (&self.udp, "UDP"),
            (&self.os_service, "OSService"),
            (&self.alias_node, "AliasNode (alias)"),
            (&self.alias_service, "AliasService (alias)"),
        ]
        .into_iter()
        .find(|(v, _)| set(v))
        .map(|(_, name)| name)
    }
}

/// Body of `PUT /v1/catalog/register`.
#[derive(Deserialize, Debug, Default)]
#[serde(rename_all = "PascalCase")]
pub struct CatalogRegisterDef {
    #[serde(rename = "ID")]
    pub id: Option<String>,
    pub node: Option<String>,
    pub address: Option<String>,
    pub datacenter: Option<String>,
    pub tagged_addresses: Option<BTreeMap<String, String>>,
    pub node_meta: Option<BTreeMap<String, String>>,
    pub service: Option<ServiceDef>,
    pub check: Option<CheckDef>,
    pub checks: Option<Vec<CheckDef>>,
    pub skip_node_update: Option<bool>,
}

/// Body of `PUT /v1/catalog/deregister`.
#[derive(Deserialize, Debug, Default)]
#[serde(rename_all = "PascalCase")]
pub struct CatalogDeregisterDef {
    pub node: Option<String>,
    pub datacenter: Option<String>,
    #[serde(rename = "ServiceID")]
    pub service_id: Option<String>,
    #[serde(rename = "CheckID")]
    pub check_id: Option<String>,
}

/// Body of `PUT /v1/agent/check/update/{id}`.
#[derive(Deserialize, Debug, Default)]
#[serde(rename_all = "PascalCase")]
pub struct CheckUpdateDef {
    pub status: Option<String>,
    pub output: Option<String>,
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn canonical_names_fold_case_and_underscores() {
        assert_eq!(canonical("tagged_addresses"), Some("TaggedAddresses"));
        assert_eq!(canonical("TAGGEDADDRESSES"), Some("TaggedAddresses"));
        assert_eq!(canonical("tls_skip_verify"), Some("TLSSkipVerify"));
        assert_eq!(
            canonical("deregister_critical_service_after"),
            Some("DeregisterCriticalServiceAfter")
        );
        assert_eq!(canonical("enable_tag_override"), Some("EnableTagOverride"));
        assert_eq!(canonical("enabletagoverride"), Some("EnableTagOverride"));
        assert_eq!(canonical("check_id"), Some("CheckID"));
        assert_eq!(canonical("service_id"), Some("ServiceID"));
        assert_eq!(canonical("serviceid"), Some("ServiceID"));
        assert_eq!(canonical("node-meta"), Some("NodeMeta"));
        assert_eq!(canonical("http"), Some("HTTP"));
        assert_eq!(canonical("id"), Some("ID"));
        assert_eq!(canonical("docker_container_id"), Some("DockerContainerID"));
        assert_eq!(canonical("no_such_field"), None);
    }

    #[test]
    fn normalization_leaves_free_form_maps_alone() {
        let v = normalize_keys(json!({
            "name": "web",
            "meta": {"some_key": "v", "Other-Key": "w"},
            "tagged_addresses": {"lan_ipv4": {"address": "10.0.0.1", "port": 80}},
            "check": {"http": "http://x/", "interval": "10s",
                      "header": {"x_custom_header": ["a"]}},
            "connect": {"sidecar_service": {"port": 1}},
            "checks": [{"ttl": "5s", "check_id": "c1"}],
            "unknown_thing": {"inner_key": 1}
        }));
        assert_eq!(
            v,
            json!({
                "Name": "web",
                "Meta": {"some_key": "v", "Other-Key": "w"},
                "TaggedAddresses": {"lan_ipv4": {"Address": "10.0.0.1", "Port": 80}},
                "Check": {"HTTP": "http://x/", "Interval": "10s",
                          "Header": {"x_custom_header": ["a"]}},
                "Connect": {"SidecarService": {"Port": 1}},
                "Checks": [{"TTL": "5s", "CheckID": "c1"}],
                "unknown_thing": {"inner_key": 1}
            })
        );
    }

    #[test]
    fn exact_spelling_wins_over_an_alias() {
        let v = normalize_keys(json!({"name": "a", "Name": "b"}));
        assert_eq!(v, json!({"Name": "b"}));
        let v = normalize_keys(json!({"Name": "b", "name": "a"}));
        assert_eq!(v, json!({"Name": "b"}));
    }

    #[test]
    fn decodes_service_with_aliases() {
        let s: ServiceDef = decode(
            json!({
                "name": "web", "ID": "web-1", "port": 8080, "tags": ["a"],
                "enable_tag_override": true,
                "weights": {"passing": 3, "warning": 1},
                "checks": [{"http": "http://127.0.0.1/", "interval": "10s",
                            "tls_skip_verify": true,
                            "deregister_critical_service_after": "1m30s"}]
            }),
            "service",
        )
        .expect("decodes");
        assert_eq!(s.name.as_deref(), Some("web"));
        assert_eq!(s.id.as_deref(), Some("web-1"));
        assert_eq!(s.port, Some(8080));
        assert_eq!(s.enable_tag_override, Some(true));
        assert_eq!(s.weights.as_ref().and_then(|w| w.passing), Some(3));
        let c = &s.checks.as_ref().expect("checks")[0];
        assert_eq!(c.tls_skip_verify, Some(true));
        assert_eq!(c.interval, Some(GoDuration(Duration::from_secs(10))));
        assert_eq!(
            c.deregister_critical_service_after,
            Some(GoDuration(Duration::from_secs(90)))
        );
    }

    #[test]
    fn decode_errors_name_the_field() {
        let e = decode::<ServiceDef>(json!({"Name": "web", "Port": "eighty"}), "service")
            .expect_err("bad port");
        assert!(e.to_string().contains("Port"), "{e}");
        let e = decode::<ServiceDef>(
            json!({"Name": "web", "Checks": [{"TTL": "10 parsecs"}]}),
            "service",
        )
        .expect_err("bad ttl");
        assert!(e.to_string().contains("Checks[0].TTL"), "{e}");
        let e = parse_json(b"{nope", "service").expect_err("bad json");
        assert!(e.to_string().contains("invalid JSON"), "{e}");
        let e = parse_json(b"  ", "service").expect_err("empty");
        assert!(e.to_string().contains("empty"), "{e}");
    }

    #[test]
    fn go_durations() {
        let d = |v: Value| serde_json::from_value::<GoDuration>(v).map(|g| g.0);
        assert_eq!(d(json!("10s")).ok(), Some(Duration::from_secs(10)));
        assert_eq!(d(json!("1m30s")).ok(), Some(Duration::from_secs(90)));
        assert_eq!(d(json!("120000ms")).ok(), Some(Duration::from_secs(120)));
        assert_eq!(d(json!("1.5h")).ok(), Some(Duration::from_secs(5400)));
        assert_eq!(d(json!("250us")).ok(), Some(Duration::from_micros(250)));
        assert_eq!(d(json!("0")).ok(), Some(Duration::ZERO));
        assert_eq!(
            d(json!(1_000_000_000u64)).ok(),
            Some(Duration::from_secs(1))
        );
        assert!(d(json!("10")).is_err());
        assert!(d(json!("-1s")).is_err());
        assert!(d(json!("10 parsecs")).is_err());
        assert!(d(json!(-5)).is_err());
        assert!(d(json!(true)).is_err());
    }

    #[test]
    fn header_values_accept_one_or_many() {
        let c: CheckDef =
            decode(json!({"Header": {"A": "x", "B": ["y", "z"]}}), "check").expect("decodes");
        let h = c.header.expect("header");
        assert_eq!(h["A"].0, vec!["x"]);
        assert_eq!(h["B"].0, vec!["y", "z"]);
    }

    #[test]
    fn unsupported_check_types_are_named() {
        let c: CheckDef =
            decode(json!({"args": ["/bin/true"], "interval": "10s"}), "check").expect("decodes");
        assert_eq!(c.unsupported_type(), Some("Args (script)"));
        let c: CheckDef = decode(json!({"grpc": "127.0.0.1:1"}), "check").expect("decodes");
        assert_eq!(c.unsupported_type(), Some("GRPC"));
        let c: CheckDef = decode(json!({"ttl": "1s", "args": []}), "check").expect("decodes");
        assert_eq!(c.unsupported_type(), None);
    }
}
