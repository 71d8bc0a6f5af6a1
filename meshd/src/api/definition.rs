//! Validation of decoded requests and their translation into registry objects: names and IDs,
//! meta, services (their `Connect` block in [`connect`]), and health checks (type, durations,
//! defaults).

use std::collections::BTreeMap;

use registry::{Check, CheckDefinition, Service, ServiceAddress, Status, Weights};

use super::decode::{CheckDef, ServiceDef, WeightsDef};
use super::error::ApiError;
use registry::duration::format_go_duration;

pub mod connect;

/// Longest name or ID (service ID, node, check, tag), in bytes. Service names are shorter:
/// [`registry::name::MAX_SERVICE_NAME_LEN`].
pub const MAX_NAME_LEN: usize = 512;
/// Longest KV key, in bytes.
pub const MAX_KEY_LEN: usize = 2048;
/// Consul's limits on `Meta`: pairs, key and value length.
const MAX_META_PAIRS: usize = 64;
const MAX_META_KEY_LEN: usize = 128;
const MAX_META_VALUE_LEN: usize = 512;
/// Check output kept, in bytes (Consul's `CheckBufSize`).
pub const MAX_OUTPUT_LEN: usize = 4096;
/// The service kinds Consul knows.
const KINDS: &[&str] = &[
    "",
    "connect-proxy",
    "mesh-gateway",
    "terminating-gateway",
    "ingress-gateway",
    "api-gateway",
];

/// A name or ID: non-empty, at most [`MAX_NAME_LEN`] bytes, no control characters.
pub fn validate_name(what: &str, s: &str) -> Result<(), ApiError> {
    if s.is_empty() {
        return Err(ApiError::bad(format!("Missing {what}")));
    }
    if s.len() > MAX_NAME_LEN {
        return Err(ApiError::bad(format!(
            "{what} is {} bytes long; the limit is {MAX_NAME_LEN}",
            s.len()
        )));
    }
    no_control(what, s)
}

/// A service ID or a node name: a name (see [`validate_name`]) without whitespace,
/// `/`, `\\` or `?`, so that it is one URL path segment.
pub fn validate_ident(what: &str, s: &str) -> Result<(), ApiError> {
    validate_name(what, s)?;
    match s
        .chars()
        .find(|c| c.is_whitespace() || matches!(c, '/' | '\\' | '?'))
    {
        Some(c) => Err(ApiError::bad(format!(
            "invalid {what} {s:?}: it must not contain {c:?} (no whitespace, '/', '\\' or '?')"
        ))),
        None => Ok(()),
    }
}

/// A service name, by the one rule of [`registry::name`]; `field` names where it was given
/// (`Name`, `Service`, ...).
pub fn validate_service_name(field: &str, name: &str) -> Result<(), ApiError> {
    registry::validate_service_name(name)
        .map_err(|e| ApiError::bad(format!("invalid {field}: {e}")))
}

/// A check ID: a name (see [`validate_name`]) without `/` or `?`, so that
/// `/v1/agent/check/.../{id}` can name it.
pub fn validate_check_id(id: &str) -> Result<(), ApiError> {
    validate_name("check ID", id)?;
    match id.chars().find(|c| matches!(c, '/' | '?')) {
        Some(c) => Err(ApiError::bad(format!(
            "invalid check ID {id:?}: it must not contain {c:?}; give a CheckID"
        ))),
        None => Ok(()),
    }
}

/// Refuses control characters (they break logs, DNS and headers).
pub fn no_control(what: &str, s: &str) -> Result<(), ApiError> {
    match s.chars().find(|c| c.is_control()) {
        Some(c) => Err(ApiError::bad(format!(
            "{what} {s:?} contains the control character {c:?}"
        ))),
        None => Ok(()),
    }
}

/// A KV key: no leading `/`, no control characters, at most [`MAX_KEY_LEN`] bytes; empty
/// only where a prefix is meant (`allow_empty`).
pub fn validate_kv_key(key: &str, allow_empty: bool) -> Result<(), ApiError> {
    if key.is_empty() {
        return if allow_empty {
            Ok(())
        } else {
            Err(ApiError::bad("Missing key name"))
        };
    }
    if key.starts_with('/') {
        return Err(ApiError::bad(format!(
            "invalid key {key:?}: a key must not begin with a '/'"
        )));
    }
    if key.len() > MAX_KEY_LEN {
        return Err(ApiError::bad(format!(
            "key is {} bytes long; the limit is {MAX_KEY_LEN}",
            key.len()
        )));
    }
    no_control("key", key)
}

/// `Meta`/`NodeMeta` under Consul's rules.
pub fn validate_meta(what: &str, meta: &BTreeMap<String, String>) -> Result<(), ApiError> {
    if meta.len() > MAX_META_PAIRS {
        return Err(ApiError::bad(format!(
            "{what} has {} pairs; the limit is {MAX_META_PAIRS}",
            meta.len()
        )));
    }
    for (k, v) in meta {
        if k.is_empty() {
            return Err(ApiError::bad(format!("{what}: a key is empty")));
        }
        if k.len() > MAX_META_KEY_LEN {
            return Err(ApiError::bad(format!(
                "{what}: key {k:?} is longer than {MAX_META_KEY_LEN} bytes"
            )));
        }
        if !k
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-')
        {
            return Err(ApiError::bad(format!(
                "{what}: key {k:?} may only contain letters, digits, '_' and '-'"
            )));
        }
        if v.len() > MAX_META_VALUE_LEN {
            return Err(ApiError::bad(format!(
                "{what}: the value of {k:?} is longer than {MAX_META_VALUE_LEN} bytes"
            )));
        }
    }
    Ok(())
}

fn port(what: &str, p: Option<i64>) -> Result<u16, ApiError> {
    match p {
        None => Ok(0),
        Some(p) => u16::try_from(p)
            .map_err(|_| ApiError::bad(format!("{what} {p} is out of range (0-65535)"))),
    }
}

fn weights(w: Option<&WeightsDef>) -> Result<Weights, ApiError> {
    let Some(w) = w else {
        return Ok(Weights::default());
    };
    let (passing, warning) = (w.passing.unwrap_or(0), w.warning.unwrap_or(0));
    if passing == 0 && warning == 0 {
        return Ok(Weights::default());
    }
    let conv = |name: &str, v: i64| {
        u32::try_from(v).map_err(|_| ApiError::bad(format!("Weights.{name} {v} is out of range")))
    };
    let passing = conv("Passing", passing)?;
    if passing < 1 {
        return Err(ApiError::bad("Weights.Passing must be greater than 0"));
    }
    Ok(Weights {
        passing,
        warning: conv("Warning", warning)?,
    })
}

/// Builds the service instance of a definition; its ID defaults to its name.
pub fn build_service(def: &ServiceDef) -> Result<Service, ApiError> {
    let (field, name) = match def.name.as_deref().filter(|n| !n.is_empty()) {
        Some(n) => ("Name", n),
        None => ("Service", def.service.as_deref().unwrap_or("")),
    };
    if name.is_empty() {
        return Err(ApiError::bad("Missing service name (Name)"));
    }
    validate_service_name(field, name)?;
    let id = def.id.as_deref().filter(|i| !i.is_empty()).unwrap_or(name);
    validate_ident("service ID", id)?;
    let kind = def.kind.clone().unwrap_or_default();
    if !KINDS.contains(&kind.as_str()) {
        return Err(ApiError::bad(format!(
            "invalid service Kind {kind:?} (one of {})",
            KINDS[1..].join(", ")
        )));
    }
    if def.socket_path.as_deref().is_some_and(|s| !s.is_empty()) {
        return Err(ApiError::bad(
            "SocketPath is not supported; use Address and Port",
        ));
    }
    let tags = def.tags.clone().unwrap_or_default();
    for t in &tags {
        if t.len() > MAX_NAME_LEN {
            return Err(ApiError::bad(format!(
                "tag is longer than {MAX_NAME_LEN} bytes"
            )));
        }
        no_control("tag", t)?;
    }
    let meta = def.meta.clone().unwrap_or_default();
    validate_meta("Meta", &meta)?;
    let address = def.address.clone().unwrap_or_default();
    no_control("service address", &address)?;
    if matches!(address.as_str(), "0.0.0.0" | "::" | "[::]") {
        return Err(ApiError::bad(format!(
            "Invalid service address {address:?}"
        )));
    }
    let mut tagged = BTreeMap::new();
    for (tag, a) in def.tagged_addresses.iter().flatten() {
        validate_name("tagged address name", tag)?;
        let addr = a.address.clone().unwrap_or_default();
        no_control("tagged address", &addr)?;
        let p = port(&format!("TaggedAddresses.{tag}.Port"), a.port)?;
        tagged.insert(
            tag.clone(),
            ServiceAddress {
                address: addr,
                port: p,
            },
        );
    }
    let proxy = def.proxy.clone().filter(|v| !v.is_null());
    let user = def.user.clone().unwrap_or_default();
    no_control("User", &user)?;
    let service = Service {
        kind,
        id: id.to_string(),
        service: name.to_string(),
        tags,
        meta,
        port: port("Port", def.port)?,
        address,
        tagged_addresses: tagged,
        weights: weights(def.weights.as_ref())?,
        enable_tag_override: def.enable_tag_override.unwrap_or(false),
        proxy,
        connect: def
            .connect
            .as_ref()
            .map(connect::build_connect)
            .transpose()?,
        user,
        create_index: 0,
        modify_index: 0,
    };
    Ok(service)
}

/// Parses a check status as Consul spells it.
pub fn parse_status(s: &str) -> Result<Status, ApiError> {
    Status::parse(&s.to_ascii_lowercase()).ok_or_else(|| {
        ApiError::bad(format!(
            "Invalid check status {s:?}: must be 'passing', 'warning' or 'critical'"
        ))
    })
}

/// Cuts a check output to [`MAX_OUTPUT_LEN`] bytes, as Consul does.
pub fn truncate_output(s: String) -> String {
    if s.len() <= MAX_OUTPUT_LEN {
        return s;
    }
    let mut cut = MAX_OUTPUT_LEN;
    while !s.is_char_boundary(cut) {
        cut -= 1;
    }
    format!("{} ... (captured {cut} of {} bytes)", &s[..cut], s.len())
}

fn dur(d: &Option<super::decode::GoDuration>) -> String {
    d.map(|d| format_go_duration(d.0)).unwrap_or_default()
}

/// The stored definition of a check: durations normalized as Go prints them.
fn definition_of(def: &CheckDef) -> Result<CheckDefinition, ApiError> {
    let mut header = BTreeMap::new();
    for (name, values) in def.header.iter().flatten() {
        if axum::http::HeaderName::from_bytes(name.as_bytes()).is_err() {
            return Err(ApiError::bad(format!("invalid header name {name:?}")));
        }
        for v in &values.0 {
            if axum::http::HeaderValue::from_str(v).is_err() {
                return Err(ApiError::bad(format!("invalid value for header {name:?}")));
            }
        }
        header.insert(name.clone(), values.0.clone());
    }
    let method = def.method.clone().unwrap_or_default();
    if !method.is_empty() && axum::http::Method::from_bytes(method.as_bytes()).is_err() {
        return Err(ApiError::bad(format!("invalid HTTP method {method:?}")));
    }
    Ok(CheckDefinition {
        http: def.http.clone().unwrap_or_default(),
        header,
        method,
        body: def.body.clone().unwrap_or_default(),
        tls_skip_verify: def.tls_skip_verify.unwrap_or(false),
        tcp: def.tcp.clone().unwrap_or_default(),
        ttl: dur(&def.ttl),
        interval: dur(&def.interval),
        timeout: dur(&def.timeout),
        deregister_critical_service_after: dur(&def.deregister_critical_service_after),
    })
}

fn validate_http_url(url: &str) -> Result<(), ApiError> {
    let ok = url
        .parse::<axum::http::Uri>()
        .ok()
        .filter(|u| matches!(u.scheme_str(), Some("http" | "https")))
        .and_then(|u| u.authority().map(|a| !a.host().is_empty()))
        .unwrap_or(false);
    if ok {
        Ok(())
    } else {
        Err(ApiError::bad(format!(
            "invalid HTTP check URL {url:?}: expected http:// or https:// and a host"
        )))
    }
}

fn validate_tcp_target(target: &str) -> Result<(), ApiError> {
    let ok = target
        .rsplit_once(':')
        .is_some_and(|(host, port)| !host.is_empty() && port.parse::<u16>().is_ok_and(|p| p > 0));
    if ok {
        Ok(())
    } else {
        Err(ApiError::bad(format!(
            "invalid TCP check target {target:?}: expected host:port"
        )))
    }
}

/// A check this agent runs (HTTP, TCP or TTL), from its definition. `default_id` and
/// `default_name` apply when the definition has none; `service` ties it to a service instance.
/// The status is the one given, else critical; the caller keeps an existing check's status.
pub fn build_agent_check(
    def: &CheckDef,
    default_id: Option<&str>,
    default_name: Option<&str>,
    service: Option<&Service>,
) -> Result<Check, ApiError> {
    if let Some(t) = def.unsupported_type() {
        return Err(ApiError::bad(format!(
            "unsupported check type {t}: meshd runs HTTP, TCP and TTL checks"
        )));
    }
    let set = |o: &Option<String>| o.as_deref().is_some_and(|s| !s.is_empty());
    let kinds: Vec<&str> = [
        (set(&def.http), "http"),
        (set(&def.tcp), "tcp"),
        (def.ttl.is_some(), "ttl"),
    ]
    .into_iter()
    .filter(|(on, _)| *on)
    .map(|(_, k)| k)
    .collect();
    let check_type = match kinds.as_slice() {
        [one] => *one,
        [] => {
            return Err(ApiError::bad(
                "invalid check: it has no type; set one of HTTP, TCP or TTL",
            ))
        }
        _ => {
            return Err(ApiError::bad(format!(
                "invalid check: ambiguous type (sets {}); set only one of HTTP, TCP or TTL",
                kinds.join(" and ").to_uppercase()
            )))
        }
    };
    let interval = def.interval.map(|d| d.0).unwrap_or_default();
    match check_type {
        "ttl" => {
            if def.ttl.is_some_and(|t| t.0.is_zero()) {
                return Err(ApiError::bad("invalid check: TTL must be greater than 0"));
            }
            if !interval.is_zero() {
                return Err(ApiError::bad(
                    "invalid check: Interval and TTL cannot both be specified",
                ));
            }
        }
        _ => {
            if interval.is_zero() {
                return Err(ApiError::bad(format!(
                    "invalid check: a {} check needs an Interval greater than 0",
                    check_type.to_uppercase()
                )));
            }
            if check_type == "http" {
                validate_http_url(def.http.as_deref().unwrap_or_default())?;
            } else {
                validate_tcp_target(def.tcp.as_deref().unwrap_or_default())?;
            }
        }
    }
    let id = def
        .check_id
        .as_deref()
        .filter(|s| !s.is_empty())
        .or(def.id.as_deref().filter(|s| !s.is_empty()))
        .or(default_id)
        .or(def.name.as_deref())
        .unwrap_or_default();
    let name = def
        .name
        .as_deref()
        .filter(|s| !s.is_empty())
        .or(default_name)
        .unwrap_or_default();
    validate_name("check name", name)?;
    validate_check_id(id)?;
    let status = match def.status.as_deref().filter(|s| !s.is_empty()) {
        Some(s) => parse_status(s)?,
        None => Status::Critical,
    };
    let definition = definition_of(def)?;
    Ok(Check {
        check_id: id.to_string(),
        name: name.to_string(),
        status,
        notes: def.notes.clone().unwrap_or_default(),
        service_id: service
            .map(|s| s.id.clone())
            .or_else(|| def.service_id.clone())
            .unwrap_or_default(),
        check_type: check_type.to_string(),
        interval: definition.interval.clone(),
        timeout: definition.timeout.clone(),
        definition,
        ..Check::default()
    })
}

/// The checks of a service definition (`Check` then `Checks`), with Consul's default IDs
/// (`service:<id>`, or `service:<id>:<n>` when there are several) and names.
pub fn build_service_checks(def: &ServiceDef, service: &Service) -> Result<Vec<Check>, ApiError> {
    let defs: Vec<&CheckDef> = def
        .check
        .iter()
        .chain(def.checks.iter().flatten())
        .collect();
    let name = format!("Service '{}' check", service.service);
    let mut out: Vec<Check> = Vec::with_capacity(defs.len());
    for (i, c) in defs.iter().enumerate() {
        let default_id = if defs.len() > 1 {
            format!("service:{}:{}", service.id, i + 1)
        } else {
            format!("service:{}", service.id)
        };
        let check = build_agent_check(c, Some(&default_id), Some(&name), Some(service))?;
        if out.iter().any(|o| o.check_id == check.check_id) {
            return Err(ApiError::bad(format!(
                "duplicate CheckID {:?} in the service definition",
                check.check_id
            )));
        }
        out.push(check);
    }
    Ok(out)
}

/// A health check registered through the catalog: its status is set from outside, so it is
/// stored with an empty type and is not run by any agent.
pub fn build_catalog_check(def: &CheckDef, node: &str) -> Result<Check, ApiError> {
    if let Some(n) = def.node.as_deref().filter(|n| !n.is_empty()) {
        if n != node {
            return Err(ApiError::bad(format!(
                "check node {n:?} does not match the registered node {node:?}"
            )));
        }
    }
    let id = def
        .check_id
        .as_deref()
        .filter(|s| !s.is_empty())
        .or(def.id.as_deref().filter(|s| !s.is_empty()))
        .or(def.name.as_deref())
        .unwrap_or_default();
    validate_check_id(id)?;
    let name = def.name.as_deref().filter(|s| !s.is_empty()).unwrap_or(id);
    no_control("check name", name)?;
    let status = match def.status.as_deref().filter(|s| !s.is_empty()) {
        Some(s) => parse_status(s)?,
        None => Status::Critical,
    };
    let definition = match &def.definition {
        Some(d) => definition_of(d)?,
        None => definition_of(def)?,
    };
    Ok(Check {
        node: node.to_string(),
        check_id: id.to_string(),
        name: name.to_string(),
        status,
        notes: def.notes.clone().unwrap_or_default(),
        output: truncate_output(def.output.clone().unwrap_or_default()),
        service_id: def.service_id.clone().unwrap_or_default(),
        interval: definition.interval.clone(),
        timeout: definition.timeout.clone(),
        definition,
        ..Check::default()
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::decode::decode;
    use serde_json::json;

    #[test]
    fn names_and_keys() {
        assert!(validate_ident("service name", "web-1.v2_x#3").is_ok());
        for bad in ["", "a b", "a/b", "a?b", "a\\b", "a\u{7}b"] {
            assert!(validate_ident("service name", bad).is_err(), "{bad:?}");
        }
        assert!(validate_ident("service name", &"x".repeat(MAX_NAME_LEN + 1)).is_err());
        assert!(validate_check_id("service:web:1").is_ok());
        assert!(validate_check_id("disk usage").is_ok());
        assert!(validate_check_id("a/b").is_err());
        assert!(validate_kv_key("", true).is_ok());
        assert!(validate_kv_key("", false).is_err());
        assert!(validate_kv_key("app/config/", false).is_ok());
        assert!(validate_kv_key("/abs", false).is_err());
        assert!(validate_kv_key("a\nb", false).is_err());
        assert!(validate_kv_key(&"k".repeat(MAX_KEY_LEN + 1), false).is_err());
        let mut meta = BTreeMap::new();
        meta.insert("ok_key-1".to_string(), "v".to_string());
        assert!(validate_meta("Meta", &meta).is_ok());
        meta.insert("bad.key".to_string(), "v".to_string());
        assert!(validate_meta("Meta", &meta).is_err());
    }

    #[test]
    fn output_is_truncated_on_a_char_boundary() {
        assert_eq!(truncate_output("short".into()), "short");
        let long = "é".repeat(MAX_OUTPUT_LEN);
        let t = truncate_output(long.clone());
        assert!(t.contains(&format!(
            "(captured {MAX_OUTPUT_LEN} of {} bytes)",
            long.len()
        )));
    }

    #[test]
    fn service_defaults_and_check_ids() {
        let def = decode(
            json!({"Name": "web", "Checks": [{"TTL": "5s"}, {"TCP": "localhost:80", "Interval": "10s"}]}),
            "service",
        )
        .expect("decodes");
        let s = build_service(&def).expect("valid");
        assert_eq!((s.id.as_str(), s.weights), ("web", Weights::default()));
        let checks = build_service_checks(&def, &s).expect("valid");
        let ids: Vec<&str> = checks.iter().map(|c| c.check_id.as_str()).collect();
        assert_eq!(ids, ["service:web:1", "service:web:2"]);
        assert_eq!(checks[1].check_type, "tcp");
        assert_eq!(checks[1].interval, "10s");
        assert_eq!(checks[0].definition.ttl, "5s");
        assert!(checks
            .iter()
            .all(|c| c.status == Status::Critical && c.service_id == "web"));

        let dup = decode(
            json!({"Name": "web", "Checks": [{"TTL": "5s", "ID": "a"}, {"TTL": "6s", "ID": "a"}]}),
            "service",
        )
        .expect("decodes");
        let s = build_service(&dup).expect("valid");
        assert!(build_service_checks(&dup, &s).is_err());
    }

    #[test]
    fn catalog_checks_are_not_run() {
        let def = decode(
            json!({"Name": "alive", "Status": "passing", "Definition": {"HTTP": "http://x/", "Interval": "30s"}}),
            "check",
        )
        .expect("decodes");
        let c = build_catalog_check(&def, "n1").expect("valid");
        assert_eq!(c.check_id, "alive");
        assert_eq!(c.status, Status::Passing);
        assert_eq!(c.check_type, "");
        assert_eq!(c.definition.interval, "30s");
        let other = decode(json!({"CheckID": "c", "Node": "n2"}), "check").expect("decodes");
        assert!(build_catalog_check(&other, "n1").is_err());
    }
}
