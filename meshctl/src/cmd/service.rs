//! `meshctl service register|deregister`: PUT /v1/agent/service/register and
//! PUT /v1/agent/service/deregister/ID.
//!
//! A definition file may use either spelling Consul accepts: the config-file one
//! (`{"service": {"name": "web", "check": {"ttl": "30s"}}}`) or the API one
//! (`{"Name": "web", "Check": {"TTL": "30s"}}`). meshctl sends the API spelling.

use std::io::Read as _;
use std::path::Path;

use anyhow::{bail, Context as _};
use serde_json::{json, Map, Value};

use super::Ctx;
use crate::cli::{RegisterArgs, ServiceCommand};
use crate::client::encode_segment;
use crate::output::str_field;

pub fn run(ctx: &Ctx, cmd: ServiceCommand) -> anyhow::Result<()> {
    match cmd {
        ServiceCommand::Register(args) => register(ctx, *args),
        ServiceCommand::Deregister { id } => {
            let path = format!("/v1/agent/service/deregister/{}", encode_segment(&id));
            ctx.client.put_raw(&path, Vec::new())?;
            ctx.acted(&format!("Deregistered service: {id}"), json!({"ID": id}))
        }
    }
}

fn register(ctx: &Ctx, args: RegisterArgs) -> anyhow::Result<()> {
    let service = match &args.file {
        Some(file) => {
            let text = read_file(file)?;
            definition_from_json(&text)
                .with_context(|| format!("service definition {}", file.display()))?
        }
        None => definition_from_flags(&args)?,
    };
    let name = str_field(&service, "Name").to_string();
    // The instance ID defaults to the name, as the agent does.
    let id = match str_field(&service, "ID") {
        "" => name.clone(),
        id => id.to_string(),
    };
    ctx.client
        .put_json("/v1/agent/service/register", &service)?;
    ctx.acted(
        &format!("Registered service: {name}"),
        json!({"ID": id, "Name": name}),
    )
}

fn read_file(file: &Path) -> anyhow::Result<String> {
    if file == Path::new("-") {
        let mut text = String::new();
        std::io::stdin()
            .read_to_string(&mut text)
            .context("read service definition from stdin")?;
        Ok(text)
    } else {
        std::fs::read_to_string(file).with_context(|| format!("read {}", file.display()))
    }
}

/// The registration body for `--name`, `--port` and the other flags.
pub fn definition_from_flags(args: &RegisterArgs) -> anyhow::Result<Value> {
    let (Some(name), Some(port)) = (&args.name, args.port) else {
        bail!("give a service definition FILE, or --name and --port");
    };
    if name.is_empty() {
        bail!("--name must not be empty");
    }
    let mut svc = Map::new();
    if let Some(id) = &args.id {
        svc.insert("ID".into(), json!(id));
    }
    svc.insert("Name".into(), json!(name));
    svc.insert("Port".into(), json!(port));
    if let Some(address) = &args.address {
        svc.insert("Address".into(), json!(address));
    }
    if !args.tags.is_empty() {
        svc.insert("Tags".into(), json!(args.tags));
    }
    if !args.meta.is_empty() {
        let meta: Map<String, Value> = args
            .meta
            .iter()
            .map(|(k, v)| (k.clone(), json!(v)))
            .collect();
        svc.insert("Meta".into(), Value::Object(meta));
    }
    let check = match (&args.check_http, &args.check_tcp, &args.check_ttl) {
        (Some(url), _, _) => Some(json!({"HTTP": url, "Interval": args.check_interval})),
        (_, Some(addr), _) => Some(json!({"TCP": addr, "Interval": args.check_interval})),
        (_, _, Some(ttl)) => Some(json!({"TTL": ttl})),
        _ => None,
    };
    if let Some(check) = check {
        svc.insert("Check".into(), check);
    }
    Ok(Value::Object(svc))
}

/// Parses a service-definition file: a service object, or `{"service": {...}}`; returns the
/// service with Consul's API field names.
pub fn definition_from_json(text: &str) -> anyhow::Result<Value> {
    let doc: Value = serde_json::from_str(text).context("not valid JSON")?;
    let Value::Object(mut top) = doc else {
        bail!("expected a JSON object (a service, or {{\"service\": {{...}}}})");
    };
    if top.contains_key("services") || top.contains_key("Services") {
        bail!("\"services\" lists several services; register one service per file");
    }
    // A wrapper holds an object; `"Service": "web"` is the AgentService shape's name field.
    let wrapped = |k: &str| top.get(k).is_some_and(Value::is_object);
    let service = match (wrapped("service"), wrapped("Service")) {
        (true, true) => bail!("both \"service\" and \"Service\" are present; keep one"),
        (false, false) => Value::Object(top),
        (lower, _) => {
            let service = top.remove(if lower { "service" } else { "Service" });
            if !top.is_empty() {
                let extra: Vec<&String> = top.keys().collect();
                bail!("unexpected keys beside \"service\": {extra:?}");
            }
            service.expect("checked above")
        }
    };
    let mut service = normalize(service);
    let obj = service.as_object_mut().expect("normalize keeps objects");
    // The AgentService shape names the service in "Service"; registration calls it "Name".
    if !obj.contains_key("Name") {
        if let Some(Value::String(s)) = obj.get("Service").cloned() {
            obj.remove("Service");
            obj.insert("Name".into(), Value::String(s));
        }
    }
    match obj.get("Name") {
        Some(Value::String(s)) if !s.is_empty() => {}
        _ => bail!("missing the service name (\"name\")"),
    }
    // Files name a check's ID "id"; the registration API calls it "CheckID".
    if let Some(check) = obj.get_mut("Check") {
        rename_check_id(check);
    }
    if let Some(Value::Array(checks)) = obj.get_mut("Checks") {
        checks.iter_mut().for_each(rename_check_id);
    }
    Ok(service)
}

fn rename_check_id(check: &mut Value) {
    if let Some(c) = check.as_object_mut() {
        if !c.contains_key("CheckID") {
            if let Some(id) = c.remove("ID") {
                c.insert("CheckID".into(), id);
            }
        }
    }
}

/// Keys whose values are free-form maps: their keys are user data and stay as written.
const FREE_FORM: &[&str] = &["Meta", "Config", "Header", "NodeMeta"];

/// Rewrites config-file keys (`tagged_addresses`, `check`) to API keys (`TaggedAddresses`,
/// `Check`), recursively; values of free-form maps and the names of tagged addresses are kept.
pub fn normalize(v: Value) -> Value {
    match v {
        Value::Object(map) => {
            let mut out = Map::new();
            for (k, v) in map {
                let key = api_key(&k);
                let v = if FREE_FORM.contains(&key.as_str()) {
                    v
                } else if key == "TaggedAddresses" {
                    match v {
                        Value::Object(m) => Value::Object(
                            m.into_iter()
                                .map(|(name, a)| (name, normalize(a)))
                                .collect(),
                        ),
                        other => other,
                    }
                } else {
                    normalize(v)
                };
                out.insert(key, v);
            }
            Value::Object(out)
        }
        Value::Array(items) => Value::Array(items.into_iter().map(normalize).collect()),
        other => other,
    }
}

/// The API spelling of a config-file key: `snake_case` → `PascalCase`, with Consul's
/// initialisms (`service_id` → `ServiceID`, `tls_skip_verify` → `TLSSkipVerify`). A key that
/// already starts with a capital is kept.
pub fn api_key(k: &str) -> String {
    if k.starts_with(|c: char| c.is_ascii_uppercase()) {
        return k.to_string();
    }
    match k {
        "h2ping" => return "H2PING".into(),
        "h2ping_use_tls" => return "H2PingUseTLS".into(),
        "os_service" => return "OSService".into(),
        _ => {}
    }
    k.split('_')
        .map(|part| match part {
            "id" | "http" | "tcp" | "udp" | "ttl" | "tls" | "grpc" | "ip" | "dc" => {
                part.to_ascii_uppercase()
            }
            _ => {
                let mut chars = part.chars();
                match chars.next() {
                    Some(first) => first.to_ascii_uppercase().to_string() + chars.as_str(),
                    None => String::new(),
                }
            }
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn api_keys() {
        let cases = [
            ("name", "Name"),
            ("id", "ID"),
            ("tagged_addresses", "TaggedAddresses"),
            ("enable_tag_override", "EnableTagOverride"),
            (
                "deregister_critical_service_after",
                "DeregisterCriticalServiceAfter",
            ),
            ("tls_skip_verify", "TLSSkipVerify"),
            ("grpc_use_tls", "GRPCUseTLS"),
            ("service_id", "ServiceID"),
            ("destination_service_id", "DestinationServiceID"),
            ("local_bind_port", "LocalBindPort"),
            ("http", "HTTP"),
            ("ttl", "TTL"),
            ("os_service", "OSService"),
            ("Port", "Port"),
            ("TTL", "TTL"),
        ];
        for (input, want) in cases {
            assert_eq!(api_key(input), want, "{input}");
        }
    }

    #[test]
    fn config_file_spelling_becomes_api_spelling() {
        let text = r#"{
            "service": {
                "name": "web",
                "id": "web-1",
                "port": 8080,
                "tags": ["v1"],
                "meta": {"git_sha": "abc", "owner_team": "x"},
                "tagged_addresses": {"lan_ipv4": {"address": "10.0.0.1", "port": 8080}},
                "check": {"id": "web-ttl", "ttl": "30s", "deregister_critical_service_after": "90m"},
                "checks": [{"http": "http://127.0.0.1:8080/health", "interval": "10s",
                            "header": {"x_token": ["t"]}}]
            }
        }"#;
        let got = definition_from_json(text).unwrap();
        let want = json!({
            "Name": "web",
            "ID": "web-1",
            "Port": 8080,
            "Tags": ["v1"],
            "Meta": {"git_sha": "abc", "owner_team": "x"},
            "TaggedAddresses": {"lan_ipv4": {"Address": "10.0.0.1", "Port": 8080}},
            "Check": {"CheckID": "web-ttl", "TTL": "30s", "DeregisterCriticalServiceAfter": "90m"},
            "Checks": [{"HTTP": "http://127.0.0.1:8080/health", "Interval": "10s",
                        "Header": {"x_token": ["t"]}}]
        });
        assert_eq!(got, want);
    }

    #[test]
    fn bare_and_api_shaped_definitions() {
        let got = definition_from_json(r#"{"Name": "db", "Port": 5432, "Check": {"TCP": "127.0.0.1:5432", "Interval": "10s"}}"#).unwrap();
        assert_eq!(
            got,
            json!({"Name": "db", "Port": 5432, "Check": {"TCP": "127.0.0.1:5432", "Interval": "10s"}})
        );
        let got = definition_from_json(r#"{"Service": {"Name": "db"}}"#).unwrap();
        assert_eq!(got, json!({"Name": "db"}));
        // The AgentService shape, as `curl /v1/agent/services` prints it.
        let got = definition_from_json(r#"{"ID": "db-1", "Service": "db", "Port": 1}"#).unwrap();
        assert_eq!(got, json!({"ID": "db-1", "Name": "db", "Port": 1}));
    }

    #[test]
    fn bad_definitions_are_named() {
        let err = |t: &str| format!("{:#}", definition_from_json(t).unwrap_err());
        assert!(err("not json").contains("not valid JSON"));
        assert!(err("[1]").contains("expected a JSON object"));
        assert!(err(r#"{"service": {"port": 1}}"#).contains("missing the service name"));
        assert!(err(r#"{"services": []}"#).contains("one service per file"));
        assert!(err(r#"{"service": {"name": "a"}, "extra": 1}"#).contains("unexpected keys"));
    }

    fn args() -> RegisterArgs {
        RegisterArgs {
            file: None,
            name: Some("web".into()),
            port: Some(8080),
            id: None,
            address: None,
            tags: vec![],
            meta: vec![],
            check_http: None,
            check_tcp: None,
            check_ttl: None,
            check_interval: None,
        }
    }

    #[test]
    fn flags_build_the_api_body() {
        let mut a = args();
        a.check_ttl = Some("30s".into());
        assert_eq!(
            definition_from_flags(&a).unwrap(),
            json!({"Name": "web", "Port": 8080, "Check": {"TTL": "30s"}})
        );

        let mut a = args();
        a.id = Some("web-1".into());
        a.address = Some("127.0.0.1".into());
        a.tags = vec!["v1".into()];
        a.meta = vec![("version".into(), "1".into())];
        a.check_http = Some("http://127.0.0.1:8080/health".into());
        a.check_interval = Some("10s".into());
        assert_eq!(
            definition_from_flags(&a).unwrap(),
            json!({
                "ID": "web-1", "Name": "web", "Port": 8080, "Address": "127.0.0.1",
                "Tags": ["v1"], "Meta": {"version": "1"},
                "Check": {"HTTP": "http://127.0.0.1:8080/health", "Interval": "10s"}
            })
        );

        let mut a = args();
        a.check_tcp = Some("127.0.0.1:8080".into());
        a.check_interval = Some("5s".into());
        assert_eq!(
            definition_from_flags(&a).unwrap()["Check"],
            json!({"TCP": "127.0.0.1:8080", "Interval": "5s"})
        );
    }
}
