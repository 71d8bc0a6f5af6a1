//! Config entries (`PUT /v1/config`): cluster-wide settings per service, in Consul's JSON
//! shape, one kind per file:
//! - `service-defaults` (here): the service's protocol, its load balancing policy and the caps
//!   callers' agents keep toward it;
//! - [`router`] `service-router`: layer-7 routes (path, header, query, method matches);
//! - [`splitter`] `service-splitter`: weighted splits of the service's traffic;
//! - [`resolver`] `service-resolver`: subsets, default subset, redirect and failover.
//!
//! One flat [`ConfigEntry`] holds every kind (stored service-defaults entries, in old Raft logs
//! and snapshots, read as before); each field is serialized only when set, so an entry's JSON is
//! Consul's shape for its kind, and a field of another kind is refused by [`ConfigEntry::validate`]
//! with its name. The discovery chain compiled from these entries is in [`crate::chain`].

pub mod resolver;
pub mod router;
pub mod splitter;

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::chain::Protocol;
use crate::command::Response;
use crate::state::State;

pub use resolver::{FailoverTarget, ResolverFailover, ResolverRedirect, ResolverSubset};
pub use router::{
    HeaderMatch, HeaderModifiers, QueryParamMatch, RouteDestination, RouteHttpMatch, RouteMatch,
    ServiceRoute,
};
pub use splitter::ServiceSplit;

pub const SERVICE_DEFAULTS: &str = "service-defaults";
pub const SERVICE_ROUTER: &str = "service-router";
pub const SERVICE_SPLITTER: &str = "service-splitter";
pub const SERVICE_RESOLVER: &str = "service-resolver";
/// The kinds meshd stores.
pub const KINDS: &[&str] = &[
    SERVICE_DEFAULTS,
    SERVICE_ROUTER,
    SERVICE_SPLITTER,
    SERVICE_RESOLVER,
];
/// Load-balancing policies, by their Consul names (`maglev` is a consistent hash too).
pub const POLICIES: &[&str] = &["round_robin", "least_request", "ring_hash", "maglev"];

/// Why an entry was refused: the field (a path such as `Routes[1].Match.HTTP.PathRegex`) and
/// what is wrong with it.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[error("{field}: {reason}")]
pub struct EntryError {
    pub field: String,
    pub reason: String,
}

impl EntryError {
    pub fn new(field: impl Into<String>, reason: impl Into<String>) -> EntryError {
        EntryError {
            field: field.into(),
            reason: reason.into(),
        }
    }
}

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

/// A config entry of any kind. Unknown fields are refused by deserialization, fields of another
/// kind by [`ConfigEntry::validate`].
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq)]
#[serde(rename_all = "PascalCase", deny_unknown_fields)]
pub struct ConfigEntry {
    pub kind: String,
    pub name: String,
    /// service-defaults: `tcp` (the default), `http`, `http2` or `grpc`; routers and
    /// splitters need a layer-7 protocol.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub protocol: String,
    /// service-defaults.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub load_balancer: Option<LoadBalancer>,
    /// service-defaults.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub limits: Option<Limits>,
    /// service-router: tried in order, the first match wins.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub routes: Option<Vec<ServiceRoute>>,
    /// service-splitter: weights in percent, summing to 100.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub splits: Option<Vec<ServiceSplit>>,
    /// service-resolver: the subset used when a route or split names none.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub default_subset: Option<String>,
    /// service-resolver: named subsets of the instances.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub subsets: Option<BTreeMap<String, ResolverSubset>>,
    /// service-resolver: send every request for this service elsewhere.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub redirect: Option<ResolverRedirect>,
    /// service-resolver: by subset name (or `*`), where to go when no instance is healthy.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub failover: Option<BTreeMap<String, ResolverFailover>>,
    /// service-resolver: Go duration for connecting to an instance.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub connect_timeout: Option<String>,
    /// service-resolver: Go duration, stored; not yet acted on by the data plane.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub request_timeout: Option<String>,
    #[serde(default)]
    pub meta: BTreeMap<String, String>,
    #[serde(default)]
    pub create_index: u64,
    #[serde(default)]
    pub modify_index: u64,
}

impl ConfigEntry {
    /// Checks the kind, name and values (regexes compile, filters parse, weights sum to 100);
    /// every error names the field. Checks against other entries are in [`State`]'s apply.
    pub fn validate(&self) -> Result<(), EntryError> {
        if !KINDS.contains(&self.kind.as_str()) {
            return Err(EntryError::new(
                "Kind",
                format!(
                    "unsupported config entry kind {:?}: meshd stores {}",
                    self.kind,
                    KINDS.join(", ")
                ),
            ));
        }
        crate::ca::validate_node_name(&self.name)
            .map_err(|e| EntryError::new("Name", format!("invalid {:?}: {e}", self.name)))?;
        let allowed: &[&str] = match self.kind.as_str() {
            SERVICE_DEFAULTS => &["Protocol", "LoadBalancer", "Limits"],
            SERVICE_ROUTER => &["Routes"],
            SERVICE_SPLITTER => &["Splits"],
            _ => &[
                "DefaultSubset",
                "Subsets",
                "Redirect",
                "Failover",
                "ConnectTimeout",
                "RequestTimeout",
            ],
        };
        if let Some(foreign) = self.fields_set().into_iter().find(|f| !allowed.contains(f)) {
            return Err(EntryError::new(
                foreign,
                format!("not a field of a {} entry", self.kind),
            ));
        }
        match self.kind.as_str() {
            SERVICE_DEFAULTS => self.validate_defaults(),
            SERVICE_ROUTER => router::validate(self),
            SERVICE_SPLITTER => splitter::validate(self),
            _ => resolver::validate(self),
        }
    }

    /// The kind-specific fields this entry sets.
    fn fields_set(&self) -> Vec<&'static str> {
        [
            ("Protocol", !self.protocol.is_empty()),
            ("LoadBalancer", self.load_balancer.is_some()),
            ("Limits", self.limits.is_some()),
            ("Routes", self.routes.is_some()),
            ("Splits", self.splits.is_some()),
            ("DefaultSubset", self.default_subset.is_some()),
            ("Subsets", self.subsets.is_some()),
            ("Redirect", self.redirect.is_some()),
            ("Failover", self.failover.is_some()),
            ("ConnectTimeout", self.connect_timeout.is_some()),
            ("RequestTimeout", self.request_timeout.is_some()),
        ]
        .into_iter()
        .filter(|(_, set)| *set)
        .map(|(name, _)| name)
        .collect()
    }

    fn validate_defaults(&self) -> Result<(), EntryError> {
        if !self.protocol.is_empty() && Protocol::parse(&self.protocol).is_none() {
            return Err(EntryError::new(
                "Protocol",
                format!("invalid {:?}: use tcp, http, http2 or grpc", self.protocol),
            ));
        }
        if let Some(lb) = &self.load_balancer {
            if !lb.policy.is_empty() && !POLICIES.contains(&lb.policy.as_str()) {
                return Err(EntryError::new(
                    "LoadBalancer.Policy",
                    format!(
                        "invalid {:?}: use one of {}",
                        lb.policy,
                        POLICIES.join(", ")
                    ),
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

/// Checks a service name a route, split, redirect or failover names.
pub(crate) fn check_service_name(field: &str, name: &str) -> Result<(), EntryError> {
    crate::name::validate_service_name(name)
        .map_err(|e| EntryError::new(field, format!("invalid service name {name:?}: {e}")))
}

/// Checks a Go duration field.
pub(crate) fn check_duration(field: &str, value: &str) -> Result<(), EntryError> {
    crate::duration::parse_go_duration(value)
        .map(|_| ())
        .map_err(|e| EntryError::new(field, e.to_string()))
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

    /// The protocol of `service`, from its `service-defaults` entry (tcp without one).
    pub fn protocol(&self, service: &str) -> Protocol {
        self.config_entry(SERVICE_DEFAULTS, service)
            .and_then(|e| Protocol::parse(&e.protocol))
            .unwrap_or(Protocol::Tcp)
    }

    /// The kind of a router or splitter entry of `service`, if it has one.
    fn l7_entry_of(&self, service: &str) -> Option<&'static str> {
        [SERVICE_ROUTER, SERVICE_SPLITTER]
            .into_iter()
            .find(|kind| self.config_entry(kind, service).is_some())
    }

    /// As Consul: routers and splitters need a layer-7 protocol, and a service with one cannot
    /// go back to tcp. Resolvers are allowed on tcp services.
    fn check_protocol(&self, entry: &ConfigEntry) -> Result<(), EntryError> {
        match entry.kind.as_str() {
            SERVICE_ROUTER | SERVICE_SPLITTER if self.protocol(&entry.name) == Protocol::Tcp => {
                Err(EntryError::new(
                    "Protocol",
                    format!(
                        "service {:?} uses protocol \"tcp\", which does not permit advanced \
                         routing or splitting behavior: write a service-defaults entry with \
                         Protocol http, http2 or grpc first",
                        entry.name
                    ),
                ))
            }
            SERVICE_DEFAULTS => {
                let proto = Protocol::parse(&entry.protocol).unwrap_or(Protocol::Tcp);
                match self.l7_entry_of(&entry.name) {
                    Some(l7) if proto == Protocol::Tcp => Err(EntryError::new(
                        "Protocol",
                        format!(
                            "tcp does not permit advanced routing or splitting behavior, and \
                             {:?} has a {l7} entry: delete it first",
                            entry.name
                        ),
                    )),
                    _ => Ok(()),
                }
            }
            _ => Ok(()),
        }
    }

    /// Upserts an entry; with `cas`, only if its `ModifyIndex` equals it (0: only if absent).
    pub(crate) fn config_entry_set(
        &mut self,
        index: u64,
        entry: &ConfigEntry,
        cas: Option<u64>,
    ) -> Response {
        if let Err(e) = entry.validate().and_then(|()| self.check_protocol(entry)) {
            return Response::Rejected(e.to_string());
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
        if kind == SERVICE_DEFAULTS {
            if let Some(l7) = self.l7_entry_of(name) {
                return Response::Rejected(format!(
                    "Protocol: deleting the service-defaults of {name:?} makes it tcp, which does \
                     not permit advanced routing or splitting behavior; delete its {l7} first"
                ));
            }
        }
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

#[cfg(test)]
mod validation_tests;
