//! The `Connect` block of a service definition as a request carries it.
//!
//! Its keys are matched as the rest of a body's (Consul translates `sidecar_service`,
//! `local_bind_port`, ... in it too), except inside the opaque `Config` maps and `Meta`.
//! A key no field reads is ignored in an API body and refused in a configuration file, as
//! everywhere else in a definition.

use std::collections::BTreeMap;

use serde::Deserialize;
use serde_json::Value;

/// Field names of the `Connect` block that the rest of a body does not use.
pub const CANONICAL: &[&str] = &[
    "Config",
    "DestinationType",
    "LocalBindAddress",
    "LocalBindPort",
    "Native",
    "SidecarService",
    "Upstreams",
];

/// Inside `Connect`, the fields whose value is user data: `Proxy` is not one of them there.
pub const FREE_FORM: &[&str] = &["Meta", "NodeMeta", "Header", "Config"];

/// `Connect`.
#[derive(Deserialize, Debug, Default, Clone)]
#[serde(rename_all = "PascalCase")]
pub struct ConnectDef {
    pub native: Option<bool>,
    pub sidecar_service: Option<SidecarServiceDef>,
}

/// `Connect.SidecarService`.
#[derive(Deserialize, Debug, Default, Clone)]
#[serde(rename_all = "PascalCase")]
pub struct SidecarServiceDef {
    pub port: Option<i64>,
    pub proxy: Option<SidecarProxyDef>,
}

/// `Connect.SidecarService.Proxy`.
#[derive(Deserialize, Debug, Default, Clone)]
#[serde(rename_all = "PascalCase")]
pub struct SidecarProxyDef {
    pub upstreams: Option<Vec<UpstreamDef>>,
    pub config: Option<BTreeMap<String, Value>>,
}

/// One of `Connect.SidecarService.Proxy.Upstreams`.
#[derive(Deserialize, Debug, Default, Clone)]
#[serde(rename_all = "PascalCase")]
pub struct UpstreamDef {
    pub destination_name: Option<String>,
    pub destination_type: Option<String>,
    pub local_bind_port: Option<i64>,
    pub local_bind_address: Option<String>,
    pub datacenter: Option<String>,
    pub config: Option<BTreeMap<String, Value>>,
}

#[cfg(test)]
mod tests {
    use super::super::{decode, decode_strict, normalize_keys, ServiceDef};
    use serde_json::json;

    #[test]
    fn keys_are_matched_inside_connect_but_not_inside_config() {
        let v = normalize_keys(json!({"name": "web", "connect": {"sidecar_service": {
            "port": 1, "proxy": {"config": {"some_key": 1}, "upstreams": [{
                "destination_name": "api", "local_bind_port": 9000,
                "local_bind_address": "127.0.0.1", "config": {"x_y": 2}}]}}}}));
        assert_eq!(
            v,
            json!({"Name": "web", "Connect": {"SidecarService": {
                "Port": 1, "Proxy": {"Config": {"some_key": 1}, "Upstreams": [{
                    "DestinationName": "api", "LocalBindPort": 9000,
                    "LocalBindAddress": "127.0.0.1", "Config": {"x_y": 2}}]}}}})
        );
        // The service's own Proxy block stays verbatim.
        let v = normalize_keys(json!({"proxy": {"local_service_port": 1}}));
        assert_eq!(v, json!({"Proxy": {"local_service_port": 1}}));
    }

    #[test]
    fn unknown_keys_in_connect_are_ignored_by_the_api_and_refused_in_files() {
        let body = json!({"Name": "web", "Connect": {"SidecarService": {"Tags": ["x"]}}});
        let def: ServiceDef = decode(body.clone(), "service").expect("lenient");
        assert!(def.connect.and_then(|c| c.sidecar_service).is_some());
        let e = decode_strict::<ServiceDef>(body, "service definition").expect_err("strict");
        assert!(
            e.to_string()
                .contains("unknown key `Connect.SidecarService.Tags`"),
            "{e}"
        );
    }

    #[test]
    fn type_errors_name_the_field() {
        let e = decode::<ServiceDef>(
            json!({"Name": "web", "Connect": {"SidecarService": {"Proxy": {"Upstreams": [
                {"DestinationName": "api", "LocalBindPort": "80"}]}}}}),
            "service",
        )
        .expect_err("a string port");
        assert!(
            e.to_string()
                .contains("field Connect.SidecarService.Proxy.Upstreams[0].LocalBindPort"),
            "{e}"
        );
        let e = decode::<ServiceDef>(json!({"Name": "web", "Connect": 5}), "service")
            .expect_err("not an object");
        assert!(e.to_string().contains("field Connect"), "{e}");
    }
}
