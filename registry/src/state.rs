//! The registry's state: its tables, the rules that apply a [`Command`] to them, and the index
//! bookkeeping that blocking queries rely on.
//!
//! `State` is a plain deterministic value: `apply(index, command)` is the whole write path, so it
//! is unit-tested without Raft. The Raft state machine owns one behind a lock; reads are in
//! [`crate::query`].

use std::collections::{BTreeMap, BTreeSet, HashMap};

use serde::{Deserialize, Serialize};

use crate::check_index::CheckIndex;
use crate::command::{Command, Register, Response};
use crate::config_entry::ConfigEntry;
use crate::intention::{Action, Intention};
use crate::model::{
    CaRoot, Check, KvEntry, Member, MemberRole, MemberStatus, Node, Service, Status, VirtualIp,
    NODE_ALIVE_OUTPUT, NODE_CHECK_ID, NODE_CHECK_NAME, NODE_FAILED_OUTPUT,
};
use crate::vip::Ipv4Cidr;

/// Key of a service instance or a check: (node name, ID).
pub type NodeKey = (String, String);

/// The highest index at which each table, service name and node last changed (deletions too).
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq)]
pub struct Indexes {
    pub nodes: u64,
    pub services: u64,
    pub checks: u64,
    pub kv: u64,
    /// Index of the last KV deletion (prefix queries cannot see a deleted key's own index).
    pub kv_delete: u64,
    #[serde(default)]
    pub members: u64,
    #[serde(default)]
    pub ca_roots: u64,
    /// Index of the last [`Command::Restore`]: every object changed then, whatever its own
    /// `ModifyIndex` says.
    #[serde(default)]
    pub restore: u64,
    /// Index of the last change of the virtual IP table or its range.
    #[serde(default)]
    pub virtual_ips: u64,
    /// Index of the last change of the intentions or the default intention policy.
    #[serde(default)]
    pub intentions: u64,
    #[serde(default)]
    pub config_entries: u64,
    pub by_service: HashMap<String, u64>,
    pub by_node: HashMap<String, u64>,
}

/// The replicated registry tables.
#[derive(Debug, Default, Clone, PartialEq)]
pub struct State {
    pub(crate) nodes: BTreeMap<String, Node>,
    pub(crate) services: BTreeMap<NodeKey, Service>,
    pub(crate) checks: BTreeMap<NodeKey, Check>,
    /// Which checks each instance has (derived; written only by `put_check`/`take_check`).
    pub(crate) check_index: CheckIndex,
    pub(crate) kv: BTreeMap<String, KvEntry>,
    pub(crate) members: BTreeMap<String, Member>,
    /// CA roots by ID.
    pub(crate) ca_roots: BTreeMap<String, CaRoot>,
    pub(crate) indexes: Indexes,
    /// Service name → its instances (derived; rebuilt from `services` on restore).
    pub(crate) by_name: HashMap<String, BTreeSet<NodeKey>>,
    /// The virtual IP of each service name, and the range they come from.
    pub(crate) vips: crate::vip::VirtualIps,
    /// Intentions by ID, and the policy for callers none names (`None`: allow).
    pub(crate) intentions: BTreeMap<String, Intention>,
    pub(crate) intention_default: Option<Action>,
    /// Config entries by (kind, name).
    pub(crate) config_entries: BTreeMap<(String, String), ConfigEntry>,
    /// Index of the last applied command.
    pub(crate) applied: u64,
    /// `indexes.by_service` ordered by index (derived): the services changed after an index,
    /// in O(log n + changes).
    pub(crate) service_changes: BTreeSet<(u64, String)>,
}

/// `by_service` ordered by index.
fn changes_of(by_service: &HashMap<String, u64>) -> BTreeSet<(u64, String)> {
    by_service.iter().map(|(n, i)| (*i, n.clone())).collect()
}

/// The serialized form of [`State`], used for Raft snapshots, snapshot archives and the first
/// message of an agent's watch stream.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq)]
pub struct StateImage {
    pub nodes: Vec<Node>,
    pub services: Vec<(String, Service)>,
    pub checks: Vec<Check>,
    pub kv: Vec<KvEntry>,
    // Absent from images written before members and CA roots existed.
    #[serde(default)]
    pub members: Vec<Member>,
    #[serde(default)]
    pub ca_roots: Vec<CaRoot>,
    // Absent from images written before virtual IPs existed (`virtual_ip_range` is `None`).
    #[serde(default)]
    pub virtual_ips: Vec<VirtualIp>,
    #[serde(default)]
    pub virtual_ip_range: Option<Ipv4Cidr>,
    /// The allocation cursor: offset into the range where the next search starts.
    #[serde(default)]
    pub virtual_ip_next: u64,
    // Absent from images written before intentions and config entries existed.
    #[serde(default)]
    pub intentions: Vec<Intention>,
    #[serde(default)]
    pub default_intention_policy: Option<Action>,
    #[serde(default)]
    pub config_entries: Vec<ConfigEntry>,
    pub indexes: Indexes,
    pub applied: u64,
}

impl StateImage {
    /// Blanks every private key (CA roots' `key_pem`), before the image leaves the servers.
    pub fn redact(&mut self) {
        for root in &mut self.ca_roots {
            root.key_pem.clear();
        }
    }
}

impl State {
    pub fn new() -> State {
        State::default()
    }

    /// Index of the last command applied.
    pub fn applied_index(&self) -> u64 {
        self.applied
    }

    pub fn indexes(&self) -> &Indexes {
        &self.indexes
    }

    /// Applies one command written at Raft log index `index`. A rejected command changes
    /// nothing but the applied index.
    pub fn apply(&mut self, index: u64, cmd: &Command) -> Response {
        self.applied = self.applied.max(index);
        match cmd {
            Command::Register(r) => self.register(index, r),
            Command::Deregister {
                node,
                service_id,
                check_id,
            } => self.deregister(index, node, service_id.as_deref(), check_id.as_deref()),
            Command::UpdateCheck {
                node,
                check_id,
                status,
                output,
            } => self.update_check(index, node, check_id, *status, output),
            Command::KvSet {
                key,
                value,
                flags,
                cas,
            } => self.kv_set(index, key, value, *flags, *cas),
            Command::KvDelete { key, recurse, cas } => self.kv_delete(index, key, *recurse, *cas),
            Command::MemberSet {
                name,
                addr,
                role,
                status,
                datacenter,
            } => self.member_set(index, name, addr, *role, *status, datacenter),
            Command::CaInit(root) => self.ca_init(index, root),
            Command::CaRotate(root) => self.ca_rotate(index, root),
            Command::IntentionSet {
                intention,
                create_only,
            } => self.intention_set(index, intention, *create_only),
            Command::IntentionDelete {
                id,
                source_type,
                source,
                destination,
            } => self.intention_delete(
                index,
                id.as_deref(),
                Some((source_type.as_str(), source.as_str(), destination.as_str())),
            ),
            Command::DefaultIntentionPolicy { action } => {
                self.set_default_intention_policy(index, *action)
            }
            Command::ConfigEntrySet { entry, cas } => self.config_entry_set(index, entry, *cas),
            Command::ConfigEntryDelete { kind, name } => {
                self.config_entry_delete(index, kind, name)
            }
            Command::Restore(image) => self.restore(index, image),
            Command::VirtualIpRange { cidr } => self.set_virtual_ip_range(index, cidr),
            Command::Batch(cmds) => Response::Batch(
                cmds.iter()
                    .map(|c| match c {
                        Command::Batch(_) => Response::Rejected("batches do not nest".into()),
                        c => self.apply(index, c),
                    })
                    .collect(),
            ),
        }
    }

    fn register(&mut self, index: u64, r: &Register) -> Response {
        let node_name = r.node.node.as_str();
        if node_name.is_empty() {
            return Response::Rejected("register: node name is empty".into());
        }
        let existing_node = self.nodes.get(node_name);
        if existing_node.is_none() && r.node.address.is_empty() {
            return Response::Rejected(format!(
                "register: node {node_name:?} is not in the catalog and no address was given"
            ));
        }
        // Validate every check against the services the node will have, before changing anything.
        for c in &r.checks {
            if c.check_id.is_empty() {
                return Response::Rejected("register: a check has an empty CheckID".into());
            }
            if !c.service_id.is_empty() {
                let on_node = self
                    .services
                    .contains_key(&(node_name.to_string(), c.service_id.clone()));
                let in_request = r.service.as_ref().is_some_and(|s| s.id == c.service_id);
                if !on_node && !in_request {
                    return Response::Rejected(format!(
                        "register: check {:?} names service {:?}, which is not registered on node {node_name:?}",
                        c.check_id, c.service_id
                    ));
                }
            }
        }
        if let Some(s) = &r.service {
            if s.id.is_empty() || s.service.is_empty() {
                return Response::Rejected("register: service ID and name must be set".into());
            }
        }

        // Node.
        let update_node = existing_node.is_none() || !r.skip_node_update;
        if update_node {
            let mut n = r.node.clone();
            match self.nodes.get(node_name) {
                Some(old) => {
                    n.create_index = old.create_index;
                    n.modify_index = old.modify_index;
                    if !same_node(old, &n) {
                        n.modify_index = index;
                        self.nodes.insert(n.node.clone(), n);
                        self.touch_node(index, node_name, true);
                    }
                }
                None => {
                    n.create_index = index;
                    n.modify_index = index;
                    self.nodes.insert(n.node.clone(), n);
                    self.touch_node(index, node_name, true);
                }
            }
        }

        // Service.
        if let Some(s) = &r.service {
            let key = (node_name.to_string(), s.id.clone());
            let mut s = s.clone();
            match self.services.get(&key) {
                Some(old) if same_service(old, &s) => {}
                Some(old) => {
                    s.create_index = old.create_index;
                    s.modify_index = index;
                    let old_name = old.service.clone();
                    if old_name != s.service {
                        self.unlink_name(index, &old_name, &key);
                        self.touch_service(index, &old_name);
                    }
                    self.link_name(&s.service, &key);
                    self.touch_service(index, &s.service);
                    self.services.insert(key.clone(), s);
                    self.touch_node(index, node_name, false);
                    self.indexes.services = index;
                    self.refresh_check_service_fields(index, &key);
                }
                None => {
                    s.create_index = index;
                    s.modify_index = index;
                    self.link_name(&s.service, &key);
                    self.touch_service(index, &s.service);
                    self.services.insert(key, s);
                    self.touch_node(index, node_name, false);
                    self.indexes.services = index;
                }
            }
            if r.replace_service_checks {
                let sid = r.service.as_ref().map(|s| s.id.clone()).unwrap_or_default();
                let keep: BTreeSet<&str> = r.checks.iter().map(|c| c.check_id.as_str()).collect();
                let stale: Vec<NodeKey> = self
                    .check_index
                    .ids(node_name, &sid)
                    .filter(|id| !keep.contains(id))
                    .map(|id| (node_name.to_string(), id.to_string()))
                    .collect();
                for k in stale {
                    self.remove_check(index, &k);
                }
            }
        }

        // Checks.
        for c in &r.checks {
            let key = (node_name.to_string(), c.check_id.clone());
            let mut c = c.clone();
            c.node = node_name.to_string();
            if let Some(s) = self
                .services
                .get(&(node_name.to_string(), c.service_id.clone()))
            {
                c.service_name = s.service.clone();
                c.service_tags = s.tags.clone();
            } else {
                c.service_name.clear();
                c.service_tags.clear();
            }
            match self.checks.get(&key) {
                Some(old) if same_check(old, &c) => continue,
                Some(old) => {
                    c.create_index = old.create_index;
                    let old_service = old.service_name.clone();
                    if !old_service.is_empty() && old_service != c.service_name {
                        self.touch_service(index, &old_service);
                    }
                }
                None => c.create_index = index,
            }
            c.modify_index = index;
            self.touch_check(index, &c);
            self.put_check(key, c);
        }
        if let Some(s) = &r.service {
            self.assign_virtual_ip(index, &s.service);
        }
        Response::Done
    }

    fn deregister(
        &mut self,
        index: u64,
        node: &str,
        service_id: Option<&str>,
        check_id: Option<&str>,
    ) -> Response {
        if let Some(cid) = check_id {
            self.remove_check(index, &(node.to_string(), cid.to_string()));
            return Response::Done;
        }
        if let Some(sid) = service_id {
            self.remove_service(index, &(node.to_string(), sid.to_string()));
            return Response::Done;
        }
        let services: Vec<NodeKey> = self
            .services
            .range(node_range(node))
            .map(|(k, _)| k.clone())
            .collect();
        for k in services {
            self.remove_service(index, &k);
        }
        let checks: Vec<NodeKey> = self
            .checks
            .range(node_range(node))
            .map(|(k, _)| k.clone())
            .collect();
        for k in checks {
            self.remove_check(index, &k);
        }
        if self.nodes.remove(node).is_some() {
            self.indexes.nodes = index;
            self.indexes.by_node.insert(node.to_string(), index);
        }
        Response::Done
    }

    fn update_check(
        &mut self,
        index: u64,
        node: &str,
        check_id: &str,
        status: Status,
        output: &str,
    ) -> Response {
        let key = (node.to_string(), check_id.to_string());
        let Some(c) = self.checks.get_mut(&key) else {
            return Response::Rejected(format!(
                "update check: no check {check_id:?} on node {node:?}"
            ));
        };
        if c.status == status && c.output == output {
            return Response::Done;
        }
        c.status = status;
        c.output = output.to_string();
        c.modify_index = index;
        let c = c.clone();
        self.touch_check(index, &c);
        Response::Done
    }

    fn kv_set(
        &mut self,
        index: u64,
        key: &str,
        value: &[u8],
        flags: u64,
        cas: Option<u64>,
    ) -> Response {
        let existing = self.kv.get(key);
        if let Some(want) = cas {
            let current = existing.map(|e| e.modify_index).unwrap_or(0);
            if current != want {
                return Response::Cas(false);
            }
        }
        let create_index = existing.map(|e| e.create_index).unwrap_or(index);
        let lock_index = existing.map(|e| e.lock_index).unwrap_or(0);
        let session = existing.and_then(|e| e.session.clone());
        self.kv.insert(
            key.to_string(),
            KvEntry {
                key: key.to_string(),
                create_index,
                modify_index: index,
                lock_index,
                flags,
                value: value.to_vec(),
                session,
            },
        );
        self.indexes.kv = index;
        Response::Cas(true)
    }

    fn kv_delete(&mut self, index: u64, key: &str, recurse: bool, cas: Option<u64>) -> Response {
        if let Some(want) = cas {
            match self.kv.get(key) {
                Some(e) if e.modify_index == want => {}
                // Consul: a CAS delete of a missing key succeeds only for index 0.
                None if want == 0 => return Response::Cas(true),
                _ => return Response::Cas(false),
            }
        }
        let removed = if recurse {
            let keys: Vec<String> = self
                .kv
                .range(key.to_string()..)
                .take_while(|(k, _)| k.starts_with(key))
                .map(|(k, _)| k.clone())
                .collect();
            for k in &keys {
                self.kv.remove(k);
            }
            !keys.is_empty()
        } else {
            self.kv.remove(key).is_some()
        };
        if removed {
            self.indexes.kv = index;
            self.indexes.kv_delete = index;
        }
        Response::Cas(true)
    }

    fn member_set(
        &mut self,
        index: u64,
        name: &str,
        addr: &str,
        role: MemberRole,
        status: MemberStatus,
        datacenter: &str,
    ) -> Response {
        if name.is_empty() {
            return Response::Rejected("member set: member name is empty".into());
        }
        if addr.parse::<std::net::SocketAddr>().is_err() {
            return Response::Rejected(format!(
                "member set: address {addr:?} of member {name:?} is not ip:port"
            ));
        }
        let unchanged = self.members.get(name).is_some_and(|m| {
            m.addr == addr && m.role == role && m.status == status && m.datacenter == datacenter
        });
        if !unchanged {
            let create_index = self
                .members
                .get(name)
                .map(|m| m.create_index)
                .unwrap_or(index);
            self.members.insert(
                name.to_string(),
                Member {
                    name: name.to_string(),
                    addr: addr.to_string(),
                    role,
                    status,
                    datacenter: datacenter.to_string(),
                    create_index,
                    modify_index: index,
                },
            );
            self.indexes.members = index;
        }
        // Applied even when the row did not change: a registration may have reset the check.
        match status {
            MemberStatus::Alive => {
                self.set_node_health(index, name, Status::Passing, NODE_ALIVE_OUTPUT)
            }
            MemberStatus::Failed => {
                self.set_node_health(index, name, Status::Critical, NODE_FAILED_OUTPUT)
            }
            MemberStatus::Left => {
                self.deregister(index, name, None, None);
            }
        }
        Response::Done
    }

    /// Sets a catalog node's liveness check, creating it if the node lacks it; nothing when the
    /// node is not in the catalog.
    fn set_node_health(&mut self, index: u64, node: &str, status: Status, output: &str) {
        if !self.nodes.contains_key(node) {
            return;
        }
        let key = (node.to_string(), NODE_CHECK_ID.to_string());
        let check = match self.checks.get_mut(&key) {
            Some(c) if c.status == status && c.output == output => return,
            Some(c) => {
                c.status = status;
                c.output = output.to_string();
                c.modify_index = index;
                c.clone()
            }
            None => {
                let c = Check {
                    node: node.to_string(),
                    check_id: NODE_CHECK_ID.to_string(),
                    name: NODE_CHECK_NAME.to_string(),
                    status,
                    output: output.to_string(),
                    create_index: index,
                    modify_index: index,
                    ..Check::default()
                };
                self.put_check(key, c.clone());
                c
            }
        };
        self.touch_check(index, &check);
    }

    fn ca_init(&mut self, index: u64, root: &CaRoot) -> Response {
        if root.id.is_empty() || root.cert_pem.is_empty() {
            return Response::Rejected("ca init: the root's ID and certificate must be set".into());
        }
        if self.ca_roots.values().any(|r| r.active) {
            return Response::Done;
        }
        let create_index = self
            .ca_roots
            .get(&root.id)
            .map(|r| r.create_index)
            .unwrap_or(index);
        self.ca_roots.insert(
            root.id.clone(),
            CaRoot {
                active: true,
                create_index,
                modify_index: index,
                ..root.clone()
            },
        );
        self.indexes.ca_roots = index;
        Response::Done
    }

    fn ca_rotate(&mut self, index: u64, root: &CaRoot) -> Response {
        if root.id.is_empty() || root.cert_pem.is_empty() {
            return Response::Rejected(
                "ca rotate: the root's ID and certificate must be set".into(),
            );
        }
        if self.ca_roots.contains_key(&root.id) {
            return Response::Rejected(format!("ca rotate: root {} exists already", root.id));
        }
        if let Some(current) = self.ca_roots.values().find(|r| r.active) {
            if current.trust_domain != root.trust_domain {
                return Response::Rejected(format!(
                    "ca rotate: the new root is for trust domain {:?}, the mesh's is {:?}",
                    root.trust_domain, current.trust_domain
                ));
            }
        }
        for r in self.ca_roots.values_mut().filter(|r| r.active) {
            r.active = false;
            r.modify_index = index;
        }
        self.ca_roots.insert(
            root.id.clone(),
            CaRoot {
                active: true,
                create_index: index,
                modify_index: index,
                ..root.clone()
            },
        );
        self.indexes.ca_roots = index;
        Response::Done
    }

    fn restore(&mut self, index: u64, image: &StateImage) -> Response {
        let mut image = image.clone();
        self.virtual_ip_range_for_restore(&mut image);
        let mut next = State::from_image(image);
        let mut services = self.service_name_set();
        services.extend(next.service_name_set());
        let mut nodes = self.node_name_set();
        nodes.extend(next.node_name_set());
        next.indexes = Indexes {
            nodes: index,
            services: index,
            checks: index,
            kv: index,
            kv_delete: index,
            members: index,
            ca_roots: index,
            restore: index,
            virtual_ips: index,
            intentions: index,
            config_entries: index,
            by_service: services.into_iter().map(|n| (n, index)).collect(),
            by_node: nodes.into_iter().map(|n| (n, index)).collect(),
        };
        next.applied = self.applied;
        next.service_changes = changes_of(&next.indexes.by_service);
        next.assign_missing_virtual_ips(index);
        *self = next;
        Response::Done
    }

    /// Every service name with an instance.
    fn service_name_set(&self) -> BTreeSet<String> {
        self.by_name.keys().cloned().collect()
    }

    /// Every node name in the catalog, or with a service or check.
    fn node_name_set(&self) -> BTreeSet<String> {
        let mut out: BTreeSet<String> = self.nodes.keys().cloned().collect();
        out.extend(self.services.keys().map(|k| k.0.clone()));
        out.extend(self.checks.keys().map(|k| k.0.clone()));
        out
    }

    fn remove_service(&mut self, index: u64, key: &NodeKey) {
        let Some(s) = self.services.remove(key) else {
            return;
        };
        self.unlink_name(index, &s.service, key);
        self.touch_service(index, &s.service);
        self.touch_node(index, &key.0, false);
        self.indexes.services = index;
        let checks: Vec<NodeKey> = self
            .check_index
            .ids(&key.0, &key.1)
            .map(|id| (key.0.clone(), id.to_string()))
            .collect();
        for k in checks {
            self.remove_check(index, &k);
        }
    }

    fn remove_check(&mut self, index: u64, key: &NodeKey) {
        if let Some(c) = self.take_check(key) {
            self.touch_check(index, &c);
        }
    }

    /// Stores a check: the one writer of the checks table, with `take_check`, so that the
    /// instance → checks index follows it.
    fn put_check(&mut self, key: NodeKey, c: Check) {
        if let Some(old) = self.checks.get(&key) {
            self.check_index.remove(old);
        }
        self.check_index.add(&c);
        self.checks.insert(key, c);
    }

    fn take_check(&mut self, key: &NodeKey) -> Option<Check> {
        let c = self.checks.remove(key)?;
        self.check_index.remove(&c);
        Some(c)
    }

    /// After a service changed, its checks' `ServiceName`/`ServiceTags` follow.
    fn refresh_check_service_fields(&mut self, index: u64, key: &NodeKey) {
        let Some(s) = self.services.get(key) else {
            return;
        };
        let (name, tags) = (s.service.clone(), s.tags.clone());
        let mut touched = false;
        for id in self.check_index.ids(&key.0, &key.1) {
            let Some(c) = self.checks.get_mut(&(key.0.clone(), id.to_string())) else {
                continue;
            };
            if c.service_name != name || c.service_tags != tags {
                c.service_name = name.clone();
                c.service_tags = tags.clone();
                c.modify_index = index;
                touched = true;
            }
        }
        if touched {
            self.indexes.checks = index;
        }
    }

    /// Records a change of a check: the checks table, its node, and the services it affects
    /// (a node-level check affects every service on the node).
    fn touch_check(&mut self, index: u64, c: &Check) {
        self.indexes.checks = index;
        if c.service_id.is_empty() {
            self.touch_node(index, &c.node, true);
        } else {
            self.indexes.by_node.insert(c.node.clone(), index);
            if !c.service_name.is_empty() {
                self.touch_service(index, &c.service_name);
            }
        }
    }

    /// Records a change on a node; with `all_services`, every service on it changed too
    /// (its address or a node-level check is part of their answers).
    fn touch_node(&mut self, index: u64, node: &str, all_services: bool) {
        self.indexes.by_node.insert(node.to_string(), index);
        if all_services {
            self.indexes.nodes = index;
            let names: BTreeSet<String> = self
                .services
                .range(node_range(node))
                .map(|(_, s)| s.service.clone())
                .collect();
            for n in names {
                self.touch_service(index, &n);
            }
        }
    }

    fn touch_service(&mut self, index: u64, name: &str) {
        if let Some(old) = self.indexes.by_service.insert(name.to_string(), index) {
            self.service_changes.remove(&(old, name.to_string()));
        }
        self.service_changes.insert((index, name.to_string()));
    }

    /// The services whose data (instances, their checks, their nodes' checks) changed after
    /// `index`, each once, in the order of their last change.
    pub fn services_changed_since(&self, index: u64) -> impl Iterator<Item = &str> {
        self.service_changes
            .range((index.saturating_add(1), String::new())..)
            .map(|(_, n)| n.as_str())
    }

    fn link_name(&mut self, name: &str, key: &NodeKey) {
        self.by_name
            .entry(name.to_string())
            .or_default()
            .insert(key.clone());
    }

    /// Unlinks an instance from its name; the name's last instance frees its virtual IP.
    fn unlink_name(&mut self, index: u64, name: &str, key: &NodeKey) {
        if let Some(set) = self.by_name.get_mut(name) {
            set.remove(key);
            if set.is_empty() {
                self.by_name.remove(name);
                self.free_virtual_ip(index, name);
            }
        }
    }

    /// The snapshot image of this state.
    pub fn image(&self) -> StateImage {
        let mut img = StateImage {
            nodes: self.nodes.values().cloned().collect(),
            services: self
                .services
                .iter()
                .map(|((n, _), s)| (n.clone(), s.clone()))
                .collect(),
            checks: self.checks.values().cloned().collect(),
            kv: self.kv.values().cloned().collect(),
            members: self.members.values().cloned().collect(),
            ca_roots: self.ca_roots.values().cloned().collect(),
            intentions: self.intentions.values().cloned().collect(),
            default_intention_policy: self.intention_default,
            config_entries: self.config_entries.values().cloned().collect(),
            indexes: self.indexes.clone(),
            applied: self.applied,
            ..StateImage::default()
        };
        self.virtual_ips_to_image(&mut img);
        img
    }

    /// Rebuilds a state from a snapshot image.
    pub fn from_image(img: StateImage) -> State {
        let mut st = State {
            service_changes: changes_of(&img.indexes.by_service),
            indexes: img.indexes,
            applied: img.applied,
            ..State::default()
        };
        for n in img.nodes {
            st.nodes.insert(n.node.clone(), n);
        }
        for (node, s) in img.services {
            let key = (node, s.id.clone());
            st.link_name(&s.service, &key);
            st.services.insert(key, s);
        }
        for c in img.checks {
            st.put_check((c.node.clone(), c.check_id.clone()), c);
        }
        for e in img.kv {
            st.kv.insert(e.key.clone(), e);
        }
        for m in img.members {
            st.members.insert(m.name.clone(), m);
        }
        for r in img.ca_roots {
            st.ca_roots.insert(r.id.clone(), r);
        }
        for i in img.intentions {
            st.intentions.insert(i.id.clone(), i);
        }
        st.intention_default = img.default_intention_policy;
        for e in img.config_entries {
            st.config_entries
                .insert((e.kind.clone(), e.name.clone()), e);
        }
        st.virtual_ips_from_image(&img.virtual_ips, img.virtual_ip_range, img.virtual_ip_next);
        st
    }
}

/// The key range of every entry of one node in a `(node, id)`-keyed table.
pub(crate) fn node_range(node: &str) -> std::ops::Range<NodeKey> {
    let mut end = node.to_string();
    end.push('\0');
    (node.to_string(), String::new())..(end, String::new())
}

fn same_node(a: &Node, b: &Node) -> bool {
    a.id == b.id
        && a.address == b.address
        && a.datacenter == b.datacenter
        && a.tagged_addresses == b.tagged_addresses
        && a.meta == b.meta
}

fn same_service(a: &Service, b: &Service) -> bool {
    let mut b = b.clone();
    b.create_index = a.create_index;
    b.modify_index = a.modify_index;
    *a == b
}

fn same_check(a: &Check, b: &Check) -> bool {
    let mut b = b.clone();
    b.create_index = a.create_index;
    b.modify_index = a.modify_index;
    *a == b
}
