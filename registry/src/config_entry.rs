//! Config entries (`PUT /v1/config`): cluster-wide settings per service, in Consul's JSON
//! shape. The kind stored today is `service-defaults`: the service's protocol, its load
//! balancing policy and the caps callers' agents keep toward it.

use serde::{Deserialize, Serialize};

use crate::command::Response;
use crate::state::State;

/// The one kind of config entry meshd stores.
pub const SERVICE_DEFAULTS: &str = "service-defaults";
/// Load-balancing policies, by their Consul names (`maglev` is a consistent hash too).
pub const POLICIES: &[&str] = &["round_robin", "least_request", "ring_hash", "maglev"];

/// `LoadBalancer` of a `service-defaults` entry.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq)]
#[serde(rename_all = "PascalCase", deny_unknown_fields)]
pub struct LoadBalancer {
    /// One of [`POLICIES`]; empty means round robin.
    #[serde(default)]
    pub policy: String,
}

/// Per-destination caps each caller's agent applies (0: unlimited).
#[derive(Serialize, Deserialize, Clone, Copy, Debug, Default, PartialEq)]
#[serde(rename_all = "PascalCase", deny_unknown_fields)]
pub struct Limits {
    /// Proxied connections open at once from one host to the service.
    #[serde(default)]
    pub max_connections: u32,
    /// Connections from one host still being set up (tunnel and upstream connect) at once.
    #[serde(default)]
    pub max_pending_connects: u32,
}

/// A config entry. Fields other kinds would have are refused rather than ignored.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq)]
#[serde(rename_all = "PascalCase", deny_unknown_fields)]
pub struct ConfigEntry {
    pub kind: String,
    pub name: String,
    /// `tcp` (the default), `http`, `http2` or `grpc`: kept for layer-7 routing; the data
    /// plane proxies every protocol at layer 4 today.
    #[serde(default)]
    pub protocol: String,
    #[serde(default)]
    pub load_balancer: Option<LoadBalancer>,
    #[serde(default)]
    pub limits: Option<Limits>,
    #[serde(default)]
    pub meta: std::collections::BTreeMap<String, String>,
    #[serde(default)]
    pub create_index: u64,
    #[serde(default)]
    pub modify_index: u64,
}

impl ConfigEntry {
    /// Checks the kind, name and values; every error names the field.
    pub fn validate(&self) -> Result<(), String> {
        if self.kind != SERVICE_DEFAULTS {
            return Err(format!(
                "unsupported config entry Kind {:?}: meshd stores {SERVICE_DEFAULTS:?}",
                self.kind
            ));
        }
        crate::ca::validate_node_name(&self.name)
            .map_err(|e| format!("invalid Name {:?}: {e}", self.name))?;
        if !matches!(
            self.protocol.as_str(),
            "" | "tcp" | "http" | "http2" | "grpc"
        ) {
            return Err(format!(
                "invalid Protocol {:?}: use tcp, http, http2 or grpc",
                self.protocol
            ));
        }
        if let Some(lb) = &self.load_balancer {
            if !lb.policy.is_empty() && !POLICIES.contains(&lb.policy.as_str()) {
                return Err(format!(
                    "invalid LoadBalancer.Policy {:?}: use one of {}",
                    lb.policy,
                    POLICIES.join(", ")
                ));
            }
        }
        Ok(())
    }

    /// The load-balancing policy name (empty: round robin).
    pub fn policy(&self) -> &str {
        self.load_balancer
            .as_ref()
            .map(|lb| lb.policy.as_str())
            .unwrap_or("")
    }
}

impl State {
    pub fn config_entry(&self, kind: &str, name: &str) -> Option<&ConfigEntry> {
        self.config_entries
            .get(&(kind.to_string(), name.to_string()))
    }

    /// Every entry of `kind`, by name.
    pub fn config_entries(&self, kind: &str) -> Vec<&ConfigEntry> {
        self.config_entries
            .range((kind.to_string(), String::new())..)
            .take_while(|((k, _), _)| k == kind)
            .map(|(_, e)| e)
            .collect()
    }

    pub fn config_entries_index(&self) -> u64 {
        self.indexes.config_entries.max(self.indexes.restore)
    }

    /// Upserts an entry; with `cas`, only if its `ModifyIndex` equals it (0: only if absent).
    pub(crate) fn config_entry_set(
        &mut self,
        index: u64,
        entry: &ConfigEntry,
        cas: Option<u64>,
    ) -> Response {
        if let Err(e) = entry.validate() {
            return Response::Rejected(e);
        }
        let key = (entry.kind.clone(), entry.name.clone());
        let existing = self.config_entries.get(&key);
        if let Some(want) = cas {
            if existing.map(|e| e.modify_index).unwrap_or(0) != want {
                return Response::Cas(false);
            }
        }
        let create_index = existing.map(|e| e.create_index).unwrap_or(index);
        self.config_entries.insert(
            key,
            ConfigEntry {
                create_index,
                modify_index: index,
                ..entry.clone()
            },
        );
        self.indexes.config_entries = index;
        if cas.is_some() {
            Response::Cas(true)
        } else {
            Response::Done
        }
    }

    pub(crate) fn config_entry_delete(&mut self, index: u64, kind: &str, name: &str) -> Response {
        if self
            .config_entries
            .remove(&(kind.to_string(), name.to_string()))
            .is_some()
        {
            self.indexes.config_entries = index;
        }
        Response::Done
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::Command;

    fn entry(name: &str, policy: &str) -> ConfigEntry {
        ConfigEntry {
            kind: SERVICE_DEFAULTS.into(),
            name: name.into(),
            load_balancer: Some(LoadBalancer {
                policy: policy.into(),
            }),
            ..ConfigEntry::default()
        }
    }

    #[test]
    fn set_read_delete_and_cas() {
        let mut st = State::new();
        let set = |e: ConfigEntry, cas| Command::ConfigEntrySet { entry: e, cas };
        assert_eq!(
            st.apply(1, &set(entry("api", "least_request"), None)),
            Response::Done
        );
        assert_eq!(
            st.config_entry(SERVICE_DEFAULTS, "api").map(|e| e.policy()),
            Some("least_request")
        );
        assert_eq!(
            st.apply(2, &set(entry("api", ""), Some(0))),
            Response::Cas(false)
        );
        assert_eq!(
            st.apply(3, &set(entry("api", "ring_hash"), Some(1))),
            Response::Cas(true)
        );
        let e = st.config_entry(SERVICE_DEFAULTS, "api").expect("entry");
        assert_eq!((e.create_index, e.modify_index), (1, 3));
        st.apply(4, &set(entry("db", ""), None));
        let names: Vec<&str> = st
            .config_entries(SERVICE_DEFAULTS)
            .iter()
            .map(|e| e.name.as_str())
            .collect();
        assert_eq!(names, vec!["api", "db"]);
        assert!(st.config_entries("proxy-defaults").is_empty());
        st.apply(
            5,
            &Command::ConfigEntryDelete {
                kind: SERVICE_DEFAULTS.into(),
                name: "api".into(),
            },
        );
        assert!(st.config_entry(SERVICE_DEFAULTS, "api").is_none());
        assert_eq!(st.config_entries_index(), 5);
        assert_eq!(State::from_image(st.image()), st);
    }

    #[test]
    fn bad_entries_name_the_field_and_change_nothing() {
        let mut st = State::new();
        let mut kind = entry("api", "");
        kind.kind = "mesh".into();
        let mut proto = entry("api", "");
        proto.protocol = "udp".into();
        for (bad, field) in [
            (entry("api", "random"), "LoadBalancer.Policy"),
            (entry("bad name", ""), "Name"),
            (kind, "Kind"),
            (proto, "Protocol"),
        ] {
            let r = st.apply(
                1,
                &Command::ConfigEntrySet {
                    entry: bad,
                    cas: None,
                },
            );
            assert!(
                matches!(&r, Response::Rejected(m) if m.contains(field)),
                "{r:?}"
            );
        }
        assert!(st.config_entries(SERVICE_DEFAULTS).is_empty());
        let unknown = serde_json::from_str::<ConfigEntry>(
            r#"{"Kind":"service-defaults","Name":"a","Nope":1}"#,
        );
        assert!(unknown.is_err());
    }
}
