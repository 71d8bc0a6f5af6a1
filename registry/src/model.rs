//! The objects the registry stores: nodes, service instances (with their `Connect` block, in
//! [`connect`]), health checks, KV entries, cluster members, CA roots and virtual IPs.
//!
//! They serialize with Consul's JSON field names and casing, so the HTTP API can return them as
//! they are. Every object carries `CreateIndex`/`ModifyIndex`: the Raft log index of the write
//! that created it and of the last write that changed it.

use std::collections::BTreeMap;
use std::net::Ipv4Addr;

use base64::Engine as _;
use serde::{Deserialize, Deserializer, Serialize, Serializer};

pub mod connect;

pub use connect::{
    Connect, ConnectUpstream, SidecarProxy, SidecarService, Upstream, DEFAULT_BIND_ADDR,
};

/// Health status of a check, as Consul spells it.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
#[serde(rename_all = "lowercase")]
pub enum Status {
    Passing,
    Warning,
    Critical,
}

impl Status {
    pub fn as_str(self) -> &'static str {
        match self {
            Status::Passing => "passing",
            Status::Warning => "warning",
            Status::Critical => "critical",
        }
    }

    /// Parses Consul's status names; `None` for anything else.
    pub fn parse(s: &str) -> Option<Status> {
        match s {
            "passing" => Some(Status::Passing),
            "warning" => Some(Status::Warning),
            "critical" => Some(Status::Critical),
            _ => None,
        }
    }
}

impl std::fmt::Display for Status {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A host in the catalog.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq)]
#[serde(rename_all = "PascalCase")]
pub struct Node {
    #[serde(rename = "ID")]
    pub id: String,
    pub node: String,
    pub address: String,
    pub datacenter: String,
    pub tagged_addresses: BTreeMap<String, String>,
    pub meta: BTreeMap<String, String>,
    pub create_index: u64,
    pub modify_index: u64,
}

/// An address with a port, as used in a service's `TaggedAddresses`.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq)]
#[serde(rename_all = "PascalCase")]
pub struct ServiceAddress {
    pub address: String,
    pub port: u16,
}

/// Load-balancing weights of a service instance by health state.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq)]
#[serde(rename_all = "PascalCase")]
pub struct Weights {
    pub passing: u32,
    pub warning: u32,
}

impl Default for Weights {
    fn default() -> Self {
        Weights {
            passing: 1,
            warning: 1,
        }
    }
}

/// A service instance registered on a node (Consul's `AgentService` shape).
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq)]
#[serde(rename_all = "PascalCase")]
pub struct Service {
    pub kind: String,
    #[serde(rename = "ID")]
    pub id: String,
    pub service: String,
    pub tags: Vec<String>,
    pub meta: BTreeMap<String, String>,
    pub port: u16,
    pub address: String,
    pub tagged_addresses: BTreeMap<String, ServiceAddress>,
    pub weights: Weights,
    pub enable_tag_override: bool,
    /// Consul's `Proxy` block, kept verbatim for the data plane and echoed back.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub proxy: Option<serde_json::Value>,
    /// Consul's `Connect` block; its `SidecarService.Proxy.Upstreams` are read by
    /// [`Service::upstreams`]. Stored before it was typed, it reads leniently (see
    /// [`connect`]).
    #[serde(
        default,
        skip_serializing_if = "Option::is_none",
        deserialize_with = "connect::stored_connect"
    )]
    pub connect: Option<Connect>,
    /// meshd's extension: the system user (name or uid) the service runs as. The data plane
    /// attributes a connection to a virtual IP to the local service of the caller's uid.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub user: String,
    pub create_index: u64,
    pub modify_index: u64,
}

impl Service {
    /// The explicit upstreams of `Connect.SidecarService.Proxy.Upstreams` (see
    /// [`Connect::upstreams`]).
    pub fn upstreams(&self) -> Vec<Upstream> {
        self.connect
            .as_ref()
            .map(Connect::upstreams)
            .unwrap_or_default()
    }
}

/// How the agent runs a check. Durations are Go duration strings ("10s"), as Consul shows them.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq)]
#[serde(rename_all = "PascalCase")]
pub struct CheckDefinition {
    #[serde(rename = "HTTP", default, skip_serializing_if = "String::is_empty")]
    pub http: String,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub header: BTreeMap<String, Vec<String>>,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub method: String,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub body: String,
    #[serde(rename = "TLSSkipVerify", default)]
    pub tls_skip_verify: bool,
    #[serde(rename = "TCP", default, skip_serializing_if = "String::is_empty")]
    pub tcp: String,
    #[serde(rename = "TTL", default, skip_serializing_if = "String::is_empty")]
    pub ttl: String,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub interval: String,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub timeout: String,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub deregister_critical_service_after: String,
}

/// A health check of a node (empty `ServiceID`) or of one service instance.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "PascalCase")]
pub struct Check {
    pub node: String,
    #[serde(rename = "CheckID")]
    pub check_id: String,
    pub name: String,
    pub status: Status,
    pub notes: String,
    pub output: String,
    #[serde(rename = "ServiceID")]
    pub service_id: String,
    pub service_name: String,
    pub service_tags: Vec<String>,
    /// `http`, `tcp`, `ttl`, or empty for a check whose status is set from outside.
    #[serde(rename = "Type")]
    pub check_type: String,
    pub interval: String,
    pub timeout: String,
    pub definition: CheckDefinition,
    pub create_index: u64,
    pub modify_index: u64,
}

impl Default for Check {
    fn default() -> Self {
        Check {
            node: String::new(),
            check_id: String::new(),
            name: String::new(),
            status: Status::Critical,
            notes: String::new(),
            output: String::new(),
            service_id: String::new(),
            service_name: String::new(),
            service_tags: Vec::new(),
            check_type: String::new(),
            interval: String::new(),
            timeout: String::new(),
            definition: CheckDefinition::default(),
            create_index: 0,
            modify_index: 0,
        }
    }
}

/// `CheckID` of the node-level liveness check every agent registers (Consul's `serfHealth`);
/// member status changes set it (see [`Member`]).
pub const NODE_CHECK_ID: &str = "serfHealth";
/// `Name` of the node-level liveness check.
pub const NODE_CHECK_NAME: &str = "Mesh Health Status";
/// Output of the liveness check of a member that is alive.
pub const NODE_ALIVE_OUTPUT: &str = "Agent alive and reachable";
/// Output of the liveness check of a member that failed.
pub const NODE_FAILED_OUTPUT: &str = "Agent not live or unreachable";

/// What a cluster member is.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
#[serde(rename_all = "lowercase")]
pub enum MemberRole {
    /// Votes in Raft and serves the registry.
    Server,
    /// Keeps a streamed view of the registry.
    Agent,
}

impl MemberRole {
    pub fn as_str(self) -> &'static str {
        match self {
            MemberRole::Server => "server",
            MemberRole::Agent => "agent",
        }
    }
}

impl std::fmt::Display for MemberRole {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Liveness of a cluster member, as `consul members` shows it.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
#[serde(rename_all = "lowercase")]
pub enum MemberStatus {
    Alive,
    /// Not reachable: its node's liveness check is critical.
    Failed,
    /// Left the cluster on purpose: its node is gone from the catalog.
    Left,
}

impl MemberStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            MemberStatus::Alive => "alive",
            MemberStatus::Failed => "failed",
            MemberStatus::Left => "left",
        }
    }
}

impl std::fmt::Display for MemberStatus {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A server or agent of the cluster; `name` is its node name in the catalog.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "PascalCase")]
pub struct Member {
    pub name: String,
    /// Its QUIC endpoint, `ip:port`.
    pub addr: String,
    pub role: MemberRole,
    pub status: MemberStatus,
    pub datacenter: String,
    pub create_index: u64,
    pub modify_index: u64,
}

/// A root certificate of the mesh CA. `key_pem` is the root's private key: servers hold it to
/// sign; it is blanked in everything shipped to agents and never serialized when empty.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq)]
#[serde(rename_all = "PascalCase")]
pub struct CaRoot {
    #[serde(rename = "ID")]
    pub id: String,
    pub cert_pem: String,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub key_pem: String,
    pub trust_domain: String,
    /// The root that signs new certificates; at most one is active.
    pub active: bool,
    pub create_index: u64,
    pub modify_index: u64,
}

/// The virtual IP of a service name (see [`crate::vip`]); `IP` is the dotted address.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
#[serde(rename_all = "PascalCase")]
pub struct VirtualIp {
    pub service: String,
    #[serde(rename = "IP")]
    pub ip: Ipv4Addr,
    /// Index of the write that gave the name this address.
    pub create_index: u64,
}

/// One KV entry (Consul's `KVPair`); `Value` is base64 on the wire, `null` when empty.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq)]
#[serde(rename_all = "PascalCase")]
pub struct KvEntry {
    pub key: String,
    pub create_index: u64,
    pub modify_index: u64,
    pub lock_index: u64,
    pub flags: u64,
    #[serde(with = "base64_value")]
    pub value: Vec<u8>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub session: Option<String>,
}

mod base64_value {
    use super::*;

    pub fn serialize<S: Serializer>(v: &[u8], s: S) -> Result<S::Ok, S::Error> {
        if v.is_empty() {
            s.serialize_none()
        } else {
            s.serialize_str(&base64::engine::general_purpose::STANDARD.encode(v))
        }
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<u8>, D::Error> {
        let s: Option<String> = Option::deserialize(d)?;
        match s {
            None => Ok(Vec::new()),
            Some(s) => base64::engine::general_purpose::STANDARD
                .decode(s.as_bytes())
                .map_err(serde::de::Error::custom),
        }
    }
}
