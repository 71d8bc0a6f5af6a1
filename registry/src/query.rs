//! Reads of the registry state, and the index each read reflects.
//!
//! A blocking query waits until the index of *its* data passes the one it holds, so each read
//! here comes with the narrowest index that covers it: one service name, one node, one key.

use std::collections::{BTreeMap, BTreeSet};
use std::net::Ipv4Addr;

use crate::model::{CaRoot, Check, KvEntry, Member, Node, Service, Status, VirtualIp};
use crate::state::{node_range, NodeKey, State};
use crate::vip::Ipv4Cidr;

/// One instance of a service with its node and the checks that decide its health
/// (the node's own checks and the instance's).
#[derive(Debug, Clone)]
pub struct HealthEntry<'a> {
    pub node: &'a Node,
    pub service: &'a Service,
    pub checks: Vec<&'a Check>,
}

impl HealthEntry<'_> {
    /// The worst status among the checks (passing when there are none).
    pub fn status(&self) -> Status {
        aggregate(self.checks.iter().copied())
    }
}

/// The worst of the statuses; passing for none.
pub fn aggregate<'a>(checks: impl IntoIterator<Item = &'a Check>) -> Status {
    checks
        .into_iter()
        .map(|c| c.status)
        .max()
        .unwrap_or(Status::Passing)
}

impl State {
    pub fn nodes(&self) -> impl Iterator<Item = &Node> {
        self.nodes.values()
    }

    pub fn node(&self, name: &str) -> Option<&Node> {
        self.nodes.get(name)
    }

    /// A node by name, ignoring ASCII case (DNS names are case-insensitive); an exact match
    /// first.
    pub fn node_ignore_case(&self, name: &str) -> Option<&Node> {
        self.nodes.get(name).or_else(|| {
            self.nodes
                .values()
                .find(|n| n.node.eq_ignore_ascii_case(name))
        })
    }

    /// The registered spelling of a service name with an instance, ignoring ASCII case; an
    /// exact match first.
    pub fn service_name_ignore_case(&self, name: &str) -> Option<&str> {
        if let Some((k, _)) = self.by_name.get_key_value(name) {
            return Some(k);
        }
        self.by_name
            .keys()
            .find(|k| k.eq_ignore_ascii_case(name))
            .map(String::as_str)
    }

    pub fn node_services(&self, node: &str) -> impl Iterator<Item = &Service> {
        self.services.range(node_range(node)).map(|(_, s)| s)
    }

    pub fn service(&self, node: &str, id: &str) -> Option<&Service> {
        self.services.get(&(node.to_string(), id.to_string()))
    }

    pub fn node_checks(&self, node: &str) -> impl Iterator<Item = &Check> {
        self.checks.range(node_range(node)).map(|(_, c)| c)
    }

    pub fn check(&self, node: &str, id: &str) -> Option<&Check> {
        self.checks.get(&(node.to_string(), id.to_string()))
    }

    /// Every service name with the union of its instances' tags.
    pub fn service_names(&self) -> BTreeMap<&str, BTreeSet<&str>> {
        let mut out: BTreeMap<&str, BTreeSet<&str>> = BTreeMap::new();
        for s in self.services.values() {
            out.entry(s.service.as_str())
                .or_default()
                .extend(s.tags.iter().map(String::as_str));
        }
        out
    }

    /// The names of the services with at least one instance, in no particular order.
    pub fn service_name_list(&self) -> impl Iterator<Item = &str> {
        self.by_name.keys().map(String::as_str)
    }

    /// Whether some instance of `name` is registered.
    pub fn has_instances(&self, name: &str) -> bool {
        self.by_name.contains_key(name)
    }

    /// The instances of `name` on `node`, found in O(log n), ordered by ID.
    pub fn service_instances_on<'a>(
        &'a self,
        name: &str,
        node: &str,
    ) -> impl Iterator<Item = &'a Service> + 'a {
        let on_node = node_range(node);
        self.by_name
            .get(name)
            .into_iter()
            .flat_map(move |keys| keys.range(on_node.clone()))
            .filter_map(|k| self.services.get(k))
    }

    /// The instances of a service, ordered by node and ID.
    pub fn service_instances(&self, name: &str) -> Vec<(&Node, &Service)> {
        let Some(keys) = self.by_name.get(name) else {
            return Vec::new();
        };
        keys.iter()
            .filter_map(|k| Some((self.nodes.get(&k.0)?, self.services.get(k)?)))
            .collect()
    }

    /// The instances of a service with the checks that decide their health.
    pub fn health_service(&self, name: &str) -> Vec<HealthEntry<'_>> {
        // Found through the instance → checks index, not by scanning each node's checks; one
        // key and one ID list serve every lookup (a service of thousands of instances is read
        // by every DNS query for it).
        let mut key: NodeKey = Default::default();
        let mut ids: Vec<&str> = Vec::new();
        self.service_instances(name)
            .into_iter()
            .map(|(node, service)| {
                ids.clear();
                ids.extend(self.check_index.ids(&node.node, ""));
                let own = ids.len();
                ids.extend(self.check_index.ids(&node.node, &service.id));
                if own > 0 && ids.len() > own {
                    ids.sort_unstable();
                }
                key.0.clear();
                key.0.push_str(&node.node);
                let checks = ids
                    .iter()
                    .filter_map(|id| {
                        key.1.clear();
                        key.1.push_str(id);
                        self.checks.get(&key)
                    })
                    .collect();
                HealthEntry {
                    node,
                    service,
                    checks,
                }
            })
            .collect()
    }

    /// The checks of every instance of a service.
    pub fn service_checks(&self, name: &str) -> Vec<&Check> {
        let Some(keys) = self.by_name.get(name) else {
            return Vec::new();
        };
        keys.iter()
            .flat_map(|(node, id)| {
                self.check_index
                    .ids(node, id)
                    .filter_map(|c| self.check(node, c))
            })
            .collect()
    }

    /// Checks in a state (`None`: every check).
    pub fn checks_in_state(&self, status: Option<Status>) -> Vec<&Check> {
        self.checks
            .values()
            .filter(|c| status.is_none_or(|s| c.status == s))
            .collect()
    }

    pub fn kv_get(&self, key: &str) -> Option<&KvEntry> {
        self.kv.get(key)
    }

    /// Every entry whose key starts with `prefix`, in key order.
    pub fn kv_prefix<'a>(&'a self, prefix: &'a str) -> impl Iterator<Item = &'a KvEntry> + 'a {
        self.kv
            .range(prefix.to_string()..)
            .take_while(move |(k, _)| k.starts_with(prefix))
            .map(|(_, e)| e)
    }

    /// Keys under `prefix`; with a separator, keys are cut after the first separator past the
    /// prefix and deduplicated (Consul's `?keys&separator=`).
    pub fn kv_keys(&self, prefix: &str, separator: Option<&str>) -> Vec<String> {
        let mut out: Vec<String> = Vec::new();
        for e in self.kv_prefix(prefix) {
            let key = match separator.filter(|s| !s.is_empty()) {
                Some(sep) => match e.key[prefix.len()..].find(sep) {
                    Some(pos) => &e.key[..prefix.len() + pos + sep.len()],
                    None => e.key.as_str(),
                },
                None => e.key.as_str(),
            };
            if out.last().map(String::as_str) != Some(key) {
                out.push(key.to_string());
            }
        }
        out
    }

    /// Index of one service name's data (instances and their checks), else of the services table.
    pub fn service_index(&self, name: &str) -> u64 {
        self.indexes
            .by_service
            .get(name)
            .copied()
            .unwrap_or(self.indexes.services)
    }

    /// Index of one node's data, else of the nodes table.
    pub fn node_index(&self, node: &str) -> u64 {
        self.indexes
            .by_node
            .get(node)
            .copied()
            .unwrap_or(self.indexes.nodes)
    }

    /// Index of one KV key: its `ModifyIndex` (or the last restore, if later), else the last KV
    /// write.
    pub fn kv_key_index(&self, key: &str) -> u64 {
        self.kv
            .get(key)
            .map(|e| e.modify_index.max(self.indexes.restore))
            .unwrap_or(self.indexes.kv)
    }

    /// Index of a KV prefix: the highest `ModifyIndex` under it or the last deletion.
    pub fn kv_prefix_index(&self, prefix: &str) -> u64 {
        self.kv_prefix(prefix)
            .map(|e| e.modify_index)
            .max()
            .unwrap_or(0)
            .max(self.indexes.kv_delete)
    }

    /// Cluster members, by name.
    pub fn members(&self) -> impl Iterator<Item = &Member> {
        self.members.values()
    }

    pub fn member(&self, name: &str) -> Option<&Member> {
        self.members.get(name)
    }

    /// Index of the last change of the members table.
    pub fn members_index(&self) -> u64 {
        self.indexes.members
    }

    /// CA roots, by ID.
    pub fn ca_roots(&self) -> impl Iterator<Item = &CaRoot> {
        self.ca_roots.values()
    }

    /// The root that signs new certificates.
    pub fn active_ca_root(&self) -> Option<&CaRoot> {
        self.ca_roots.values().find(|r| r.active)
    }

    /// Index of the last change of the CA roots table.
    pub fn ca_roots_index(&self) -> u64 {
        self.indexes.ca_roots
    }

    /// The virtual IP of a service name (`None`: no instance, or the range was full). A map
    /// lookup, O(log n).
    pub fn virtual_ip(&self, name: &str) -> Option<Ipv4Addr> {
        self.vips.get(name)
    }

    /// Every virtual IP, by service name.
    pub fn virtual_ips(&self) -> impl Iterator<Item = &VirtualIp> {
        self.vips.iter()
    }

    /// The service whose virtual IP is `ip`, O(log n).
    pub fn virtual_ip_service(&self, ip: Ipv4Addr) -> Option<&str> {
        self.vips.service_at(ip)
    }

    /// How many service names hold a virtual IP.
    pub fn virtual_ip_count(&self) -> usize {
        self.vips.len()
    }

    /// The virtual IPs still held outside the current range (given from an earlier range), in
    /// address order; usually none. O(their number + log n).
    pub fn virtual_ips_outside_range(&self) -> impl Iterator<Item = Ipv4Addr> + '_ {
        self.vips.outside_range()
    }

    /// The range new virtual IPs come from.
    pub fn virtual_ip_range(&self) -> Ipv4Cidr {
        self.vips.range()
    }

    /// Index of the last change of the virtual IP table or its range.
    pub fn virtual_ips_index(&self) -> u64 {
        self.indexes.virtual_ips
    }
}
