//! Response bodies in Consul's shapes (`api.AgentService`, `api.CatalogService`,
//! `api.ServiceEntry`, ...), built from registry objects while the state is read-locked and
//! serialized after the lock is released.

use std::collections::BTreeMap;

use registry::{Check, Connect, Node, Service, ServiceAddress, Weights};
use serde::Serialize;
use serde_json::Value;

fn is_zero(n: &u64) -> bool {
    *n == 0
}

/// A service instance as the agent endpoints and health entries show it (`api.AgentService`).
/// `Tags` and `Meta` are always present (`[]`, `{}`), `Weights` too; `Kind`,
/// `TaggedAddresses`, `Proxy` and `Connect` only when set, as Consul does.
#[derive(Serialize, Debug, Clone, PartialEq)]
#[serde(rename_all = "PascalCase")]
pub struct AgentService {
    #[serde(skip_serializing_if = "String::is_empty")]
    pub kind: String,
    #[serde(rename = "ID")]
    pub id: String,
    pub service: String,
    pub tags: Vec<String>,
    pub meta: BTreeMap<String, String>,
    pub port: u16,
    pub address: String,
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    pub tagged_addresses: BTreeMap<String, ServiceAddress>,
    pub weights: Weights,
    pub enable_tag_override: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub proxy: Option<Value>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub connect: Option<Connect>,
    #[serde(skip_serializing_if = "is_zero")]
    pub create_index: u64,
    #[serde(skip_serializing_if = "is_zero")]
    pub modify_index: u64,
    pub datacenter: String,
}

impl AgentService {
    pub fn new(s: &Service, datacenter: &str) -> AgentService {
        AgentService {
            kind: s.kind.clone(),
            id: s.id.clone(),
            service: s.service.clone(),
            tags: s.tags.clone(),
            meta: s.meta.clone(),
            port: s.port,
            address: s.address.clone(),
            tagged_addresses: s.tagged_addresses.clone(),
            weights: s.weights,
            enable_tag_override: s.enable_tag_override,
            proxy: s.proxy.clone(),
            connect: s.connect.clone(),
            create_index: s.create_index,
            modify_index: s.modify_index,
            datacenter: datacenter.to_string(),
        }
    }
}

/// One instance in `/v1/catalog/service/{name}` (`api.CatalogService`).
#[derive(Serialize, Debug, Clone, PartialEq)]
#[serde(rename_all = "PascalCase")]
pub struct CatalogService {
    #[serde(rename = "ID")]
    pub id: String,
    pub node: String,
    pub address: String,
    pub datacenter: String,
    pub tagged_addresses: BTreeMap<String, String>,
    pub node_meta: BTreeMap<String, String>,
    pub service_kind: String,
    #[serde(rename = "ServiceID")]
    pub service_id: String,
    pub service_name: String,
    pub service_tags: Vec<String>,
    pub service_address: String,
    pub service_tagged_addresses: BTreeMap<String, ServiceAddress>,
    pub service_weights: Weights,
    pub service_meta: BTreeMap<String, String>,
    pub service_port: u16,
    pub service_enable_tag_override: bool,
    pub service_proxy: Value,
    /// `{}` when the service has no block, as Consul shows it.
    pub service_connect: Connect,
    pub create_index: u64,
    pub modify_index: u64,
}

impl CatalogService {
    pub fn new(n: &Node, s: &Service) -> CatalogService {
        let empty = || Value::Object(serde_json::Map::new());
        CatalogService {
            id: n.id.clone(),
            node: n.node.clone(),
            address: n.address.clone(),
            datacenter: n.datacenter.clone(),
            tagged_addresses: n.tagged_addresses.clone(),
            node_meta: n.meta.clone(),
            service_kind: s.kind.clone(),
            service_id: s.id.clone(),
            service_name: s.service.clone(),
            service_tags: s.tags.clone(),
            service_address: s.address.clone(),
            service_tagged_addresses: s.tagged_addresses.clone(),
            service_weights: s.weights,
            service_meta: s.meta.clone(),
            service_port: s.port,
            service_enable_tag_override: s.enable_tag_override,
            service_proxy: s.proxy.clone().unwrap_or_else(empty),
            service_connect: s.connect.clone().unwrap_or_default(),
            create_index: s.create_index,
            modify_index: s.modify_index,
        }
    }
}

/// One entry of `/v1/health/service/{name}` (`api.ServiceEntry`).
#[derive(Serialize, Debug, Clone, PartialEq)]
#[serde(rename_all = "PascalCase")]
pub struct ServiceEntry {
    pub node: Node,
    pub service: AgentService,
    pub checks: Vec<Check>,
}

/// `/v1/catalog/node/{node}` (`api.CatalogNode`).
#[derive(Serialize, Debug, Clone, PartialEq)]
#[serde(rename_all = "PascalCase")]
pub struct CatalogNode {
    pub node: Node,
    pub services: BTreeMap<String, AgentService>,
}

/// A Serf-like member (`/v1/agent/members`, `Member` of `/v1/agent/self`).
#[derive(Serialize, Debug, Clone, PartialEq)]
#[serde(rename_all = "PascalCase")]
pub struct Member {
    pub name: String,
    pub addr: String,
    pub port: u16,
    pub tags: BTreeMap<String, String>,
    /// 1: alive.
    pub status: u8,
    pub protocol_min: u8,
    pub protocol_max: u8,
    pub protocol_cur: u8,
    pub delegate_min: u8,
    pub delegate_max: u8,
    pub delegate_cur: u8,
}

/// The port members are reached at (meshd's QUIC port).
pub const MEMBER_PORT: u16 = 8301;

impl Member {
    pub fn new(name: &str, addr: &str, role: &str, dc: &str, id: &str) -> Member {
        let mut tags = BTreeMap::new();
        tags.insert("role".to_string(), role.to_string());
        tags.insert("dc".to_string(), dc.to_string());
        if !id.is_empty() {
            tags.insert("id".to_string(), id.to_string());
        }
        Member {
            name: name.to_string(),
            addr: addr.to_string(),
            port: MEMBER_PORT,
            tags,
            status: 1,
            protocol_min: 1,
            protocol_max: 5,
            protocol_cur: 2,
            delegate_min: 2,
            delegate_max: 5,
            delegate_cur: 4,
        }
    }
}
