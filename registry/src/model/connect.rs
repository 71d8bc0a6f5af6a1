//! A service's `Connect` block, typed, in Consul's JSON shape: `Native`, and a
//! `SidecarService` whose `Proxy.Upstreams` are the service's explicit upstreams.
//!
//! These types are what the registry stores and the API echoes. The HTTP API checks a block
//! before it is written (field by field, with the field named); what these types read is
//! stored data, which they never refuse: before they existed the block was stored verbatim,
//! so a field with a value of another type (say `"Port": "x"`) is read as absent rather than
//! failing the replay of a Raft log or the restore of a snapshot.

use std::collections::BTreeMap;
use std::net::IpAddr;

use serde::{Deserialize, Deserializer, Serialize};

/// Consul's `Connect` block of a service registration.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq)]
#[serde(rename_all = "PascalCase")]
pub struct Connect {
    /// The service speaks the mesh protocol itself (Consul's native integration).
    #[serde(
        default,
        skip_serializing_if = "is_false",
        deserialize_with = "lenient"
    )]
    pub native: bool,
    #[serde(
        default,
        skip_serializing_if = "Option::is_none",
        deserialize_with = "lenient"
    )]
    pub sidecar_service: Option<SidecarService>,
}

/// `Connect.SidecarService`. meshd runs no sidecar process: its own proxy serves the
/// upstreams, so only `Port` and `Proxy` are kept.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq)]
#[serde(rename_all = "PascalCase")]
pub struct SidecarService {
    #[serde(
        default,
        skip_serializing_if = "Option::is_none",
        deserialize_with = "lenient"
    )]
    pub port: Option<u16>,
    #[serde(
        default,
        skip_serializing_if = "Option::is_none",
        deserialize_with = "lenient"
    )]
    pub proxy: Option<SidecarProxy>,
}

/// `Connect.SidecarService.Proxy`.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq)]
#[serde(rename_all = "PascalCase")]
pub struct SidecarProxy {
    #[serde(
        default,
        skip_serializing_if = "Vec::is_empty",
        deserialize_with = "lenient"
    )]
    pub upstreams: Vec<ConnectUpstream>,
    /// Opaque proxy settings, kept and echoed as given.
    #[serde(
        default,
        skip_serializing_if = "BTreeMap::is_empty",
        deserialize_with = "lenient"
    )]
    pub config: BTreeMap<String, serde_json::Value>,
}

/// One of `Connect.SidecarService.Proxy.Upstreams`: connections to `LocalBindAddress`
/// (default 127.0.0.1) port `LocalBindPort` go to the service `DestinationName`.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq)]
#[serde(rename_all = "PascalCase")]
pub struct ConnectUpstream {
    pub destination_name: String,
    /// `service` or empty (the same); Consul's `prepared_query` is refused at registration.
    #[serde(
        default,
        skip_serializing_if = "String::is_empty",
        deserialize_with = "lenient"
    )]
    pub destination_type: String,
    pub local_bind_port: u16,
    #[serde(
        default,
        skip_serializing_if = "Option::is_none",
        deserialize_with = "lenient"
    )]
    pub local_bind_address: Option<IpAddr>,
    /// Kept and echoed; meshd has one datacenter.
    #[serde(
        default,
        skip_serializing_if = "String::is_empty",
        deserialize_with = "lenient"
    )]
    pub datacenter: String,
    /// Opaque per-upstream settings, kept and echoed as given.
    #[serde(
        default,
        skip_serializing_if = "BTreeMap::is_empty",
        deserialize_with = "lenient"
    )]
    pub config: BTreeMap<String, serde_json::Value>,
}

/// The address an upstream listens on when its registration gives none.
pub const DEFAULT_BIND_ADDR: IpAddr = IpAddr::V4(std::net::Ipv4Addr::LOCALHOST);

/// An explicit upstream of a service: a local port whose connections go to `destination`,
/// known to come from the registering service.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Upstream {
    pub destination: String,
    pub bind_addr: IpAddr,
    pub bind_port: u16,
}

impl Connect {
    /// The upstreams to listen for. Registration refuses bad ones; an entry stored before
    /// that (no destination, port 0, a prepared query) is skipped.
    pub fn upstreams(&self) -> Vec<Upstream> {
        let Some(proxy) = self.sidecar_service.as_ref().and_then(|s| s.proxy.as_ref()) else {
            return Vec::new();
        };
        proxy
            .upstreams
            .iter()
            .filter(|u| {
                !u.destination_name.is_empty()
                    && u.local_bind_port != 0
                    && matches!(u.destination_type.as_str(), "" | "service")
            })
            .map(|u| Upstream {
                destination: u.destination_name.clone(),
                bind_addr: u.local_bind_address.unwrap_or(DEFAULT_BIND_ADDR),
                bind_port: u.local_bind_port,
            })
            .collect()
    }
}

fn is_false(b: &bool) -> bool {
    !*b
}

/// Reads `T`, or its default when the stored value is not a `T` (see the module doc).
fn lenient<'de, D, T>(d: D) -> Result<T, D::Error>
where
    D: Deserializer<'de>,
    T: serde::de::DeserializeOwned + Default,
{
    let v = serde_json::Value::deserialize(d)?;
    Ok(T::deserialize(v).unwrap_or_default())
}

/// The old, untyped field (`Connect: any JSON`): an object is read leniently, anything else
/// (which never named an upstream) is no block at all.
pub(super) fn stored_connect<'de, D>(d: D) -> Result<Option<Connect>, D::Error>
where
    D: Deserializer<'de>,
{
    let v = serde_json::Value::deserialize(d)?;
    Ok(match v {
        serde_json::Value::Object(_) => Some(Connect::deserialize(v).unwrap_or_default()),
        _ => None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn stored(v: serde_json::Value) -> Option<Connect> {
        #[derive(Deserialize)]
        struct S {
            #[serde(default, deserialize_with = "stored_connect")]
            c: Option<Connect>,
        }
        serde_json::from_value::<S>(json!({ "c": v }))
            .expect("stored data always reads")
            .c
    }

    #[test]
    fn what_was_stored_verbatim_still_reads() {
        assert_eq!(stored(json!({})), Some(Connect::default()));
        assert_eq!(stored(json!(null)), None);
        assert_eq!(stored(json!(5)), None);
        assert_eq!(stored(json!(["x"])), None);
        let side = stored(json!({"SidecarService": {}})).expect("a block");
        assert_eq!(side.sidecar_service, Some(SidecarService::default()));
        // Fields of another type than the typed block's are absent, not an error.
        let odd = stored(json!({"Native": "yes", "SidecarService": {"Port": "x",
            "Proxy": {"Config": 3, "Upstreams": [{"DestinationName": "api",
            "LocalBindPort": 9000, "LocalBindAddress": "", "Datacenter": 1}]}}, "Other": 1}))
        .expect("a block");
        assert!(!odd.native);
        let up = odd.upstreams();
        assert_eq!(
            up,
            vec![Upstream {
                destination: "api".into(),
                bind_addr: DEFAULT_BIND_ADDR,
                bind_port: 9000
            }]
        );
        // Keys Consul's other spelling used were never read: still not.
        let snake = stored(json!({"sidecar_service": {"proxy": {}}})).expect("a block");
        assert_eq!(snake, Connect::default());
        // An upstream list that is not one drops the list, not the service.
        let bad = stored(json!({"SidecarService": {"Proxy": {"Upstreams": [{"x": 1}]}}}));
        assert!(bad.expect("a block").upstreams().is_empty());
    }

    #[test]
    fn echoes_consul_shape() {
        let c = Connect {
            native: false,
            sidecar_service: Some(SidecarService {
                port: None,
                proxy: Some(SidecarProxy {
                    upstreams: vec![ConnectUpstream {
                        destination_name: "api".into(),
                        local_bind_port: 9191,
                        local_bind_address: Some("127.0.0.2".parse().expect("ip")),
                        ..ConnectUpstream::default()
                    }],
                    config: BTreeMap::new(),
                }),
            }),
        };
        let v = serde_json::to_value(&c).expect("ser");
        assert_eq!(
            v,
            json!({"SidecarService": {"Proxy": {"Upstreams": [{"DestinationName": "api",
                "LocalBindPort": 9191, "LocalBindAddress": "127.0.0.2"}]}}})
        );
        assert_eq!(stored(v), Some(c));
        assert_eq!(
            serde_json::to_value(Connect::default()).expect("ser"),
            json!({})
        );
    }

    #[test]
    fn upstreams_skip_what_registration_refuses() {
        let up = |name: &str, port: u16, kind: &str| ConnectUpstream {
            destination_name: name.into(),
            local_bind_port: port,
            destination_type: kind.into(),
            ..ConnectUpstream::default()
        };
        let c = Connect {
            native: false,
            sidecar_service: Some(SidecarService {
                port: None,
                proxy: Some(SidecarProxy {
                    upstreams: vec![
                        up("api", 1, ""),
                        up("db", 2, "service"),
                        up("", 3, ""),
                        up("x", 0, ""),
                        up("q", 4, "prepared_query"),
                    ],
                    config: BTreeMap::new(),
                }),
            }),
        };
        let names: Vec<String> = c.upstreams().into_iter().map(|u| u.destination).collect();
        assert_eq!(names, ["api", "db"]);
        assert!(Connect::default().upstreams().is_empty());
    }
}
