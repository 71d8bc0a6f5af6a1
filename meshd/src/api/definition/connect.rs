//! A service definition's `Connect` block checked and made the registry's typed
//! [`registry::Connect`]: every error names the field, as
//! `Connect.SidecarService.Proxy.Upstreams[0].LocalBindPort`.

use registry::{Connect, ConnectUpstream, SidecarProxy, SidecarService};

use super::super::decode::connect::{ConnectDef, SidecarServiceDef, UpstreamDef};
use super::super::error::ApiError;

const PROXY: &str = "Connect.SidecarService.Proxy";

/// The stored block of a definition's `Connect`.
pub fn build_connect(def: &ConnectDef) -> Result<Connect, ApiError> {
    Ok(Connect {
        native: def.native.unwrap_or(false),
        sidecar_service: def.sidecar_service.as_ref().map(sidecar).transpose()?,
    })
}

fn sidecar(def: &SidecarServiceDef) -> Result<SidecarService, ApiError> {
    let port = match def.port {
        None | Some(0) => None,
        Some(p) => Some(u16::try_from(p).map_err(|_| {
            ApiError::bad(format!(
                "Connect.SidecarService.Port {p} is out of range (0-65535)"
            ))
        })?),
    };
    let proxy = match &def.proxy {
        None => None,
        Some(p) => Some(SidecarProxy {
            upstreams: p
                .upstreams
                .iter()
                .flatten()
                .enumerate()
                .map(|(i, u)| upstream(i, u))
                .collect::<Result<_, _>>()?,
            config: p.config.clone().unwrap_or_default(),
        }),
    };
    Ok(SidecarService { port, proxy })
}

fn upstream(i: usize, def: &UpstreamDef) -> Result<ConnectUpstream, ApiError> {
    let field = |name: &str| format!("{PROXY}.Upstreams[{i}].{name}");
    let destination_name = def.destination_name.clone().unwrap_or_default();
    if destination_name.is_empty() {
        return Err(ApiError::bad(format!(
            "{} must be a service name",
            field("DestinationName")
        )));
    }
    registry::validate_service_name(&destination_name)
        .map_err(|e| ApiError::bad(format!("invalid {}: {e}", field("DestinationName"))))?;
    let destination_type = def.destination_type.clone().unwrap_or_default();
    if !matches!(destination_type.as_str(), "" | "service") {
        return Err(ApiError::bad(format!(
            "{} {destination_type:?} is not supported: meshd's upstreams name services \
             (\"service\")",
            field("DestinationType")
        )));
    }
    let local_bind_port = def
        .local_bind_port
        .and_then(|p| u16::try_from(p).ok())
        .filter(|p| *p != 0)
        .ok_or_else(|| {
            ApiError::bad(format!(
                "{} must be a port 1..=65535",
                field("LocalBindPort")
            ))
        })?;
    let local_bind_address = match def.local_bind_address.as_deref() {
        None | Some("") => None,
        Some(a) => Some(a.parse().map_err(|_| {
            ApiError::bad(format!(
                "{} {a:?} is not an IP address",
                field("LocalBindAddress")
            ))
        })?),
    };
    Ok(ConnectUpstream {
        destination_name,
        destination_type,
        local_bind_port,
        local_bind_address,
        datacenter: def.datacenter.clone().unwrap_or_default(),
        config: def.config.clone().unwrap_or_default(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::decode::decode;
    use serde_json::{json, Value};

    fn build(connect: Value) -> Result<Connect, String> {
        let def: ConnectDef = decode(connect, "connect").map_err(|e| e.to_string())?;
        build_connect(&def).map_err(|e| e.to_string())
    }

    fn upstream_error(u: Value) -> String {
        build(json!({"SidecarService": {"Proxy": {"Upstreams": [u]}}})).expect_err("refused")
    }

    #[test]
    fn a_full_block_is_kept_in_consul_shape() {
        let given = json!({"Native": true, "SidecarService": {"Port": 21000, "Proxy": {
            "Config": {"protocol": "http"},
            "Upstreams": [{"DestinationName": "api", "DestinationType": "service",
                "LocalBindPort": 9191, "LocalBindAddress": "127.0.0.2", "Datacenter": "dc1",
                "Config": {"connect_timeout_ms": 500}}]}}});
        let c = build(given.clone()).expect("valid");
        assert_eq!(serde_json::to_value(&c).expect("ser"), given);
        let up = c.upstreams();
        assert_eq!((up[0].destination.as_str(), up[0].bind_port), ("api", 9191));
        // Empty blocks stay empty; absent optional fields are not invented.
        assert_eq!(build(json!({})), Ok(Connect::default()));
        let side = build(json!({"sidecar_service": {"port": 0}})).expect("valid");
        assert_eq!(side.sidecar_service, Some(SidecarService::default()));
    }

    #[test]
    fn every_refusal_names_the_field() {
        let f = "Connect.SidecarService.Proxy.Upstreams[0]";
        assert_eq!(
            upstream_error(json!({"LocalBindPort": 1})),
            format!("{f}.DestinationName must be a service name")
        );
        assert_eq!(
            upstream_error(json!({"DestinationName": "a.b", "LocalBindPort": 1})),
            format!(
                "invalid {f}.DestinationName: service name \"a.b\" has '.' at position 2: \
                 only ASCII letters, digits, '-' and '_' are allowed"
            )
        );
        for port in [json!(0), json!(70000), json!(-1), Value::Null] {
            assert_eq!(
                upstream_error(json!({"DestinationName": "api", "LocalBindPort": port})),
                format!("{f}.LocalBindPort must be a port 1..=65535"),
                "{port}"
            );
        }
        assert_eq!(
            upstream_error(json!({"DestinationName": "api", "LocalBindPort": 1,
                "LocalBindAddress": "localhost"})),
            format!("{f}.LocalBindAddress \"localhost\" is not an IP address")
        );
        assert_eq!(
            upstream_error(json!({"DestinationName": "q", "LocalBindPort": 1,
                "DestinationType": "prepared_query"})),
            format!(
                "{f}.DestinationType \"prepared_query\" is not supported: meshd's upstreams \
                 name services (\"service\")"
            )
        );
        assert_eq!(
            build(json!({"SidecarService": {"Port": 65536}})),
            Err("Connect.SidecarService.Port 65536 is out of range (0-65535)".into())
        );
    }
}
