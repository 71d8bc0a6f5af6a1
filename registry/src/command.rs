//! Writes to the registry. Every write is one [`Command`], appended to the Raft log and applied
//! by the state machine in log order, so every server reaches the same state.

use std::borrow::Cow;

use serde::{Deserialize, Serialize};

use crate::config_entry::ConfigEntry;
use crate::intention::{Action, Intention};
use crate::model::{CaRoot, Check, MemberRole, MemberStatus, Node, Service, Status};
use crate::state::StateImage;

/// One replicated write. Later issues add config entries and ACLs as further variants; an old log never contains them, so adding variants is compatible.
// Commands are built once per write and moved into the log; boxing `Register` would only add
// an allocation.
#[allow(clippy::large_enum_variant)]
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq)]
pub enum Command {
    /// Consul's catalog register: upsert a node, and optionally one service instance and checks.
    Register(Register),
    /// Remove one check, one service instance (with its checks), or a whole node.
    Deregister {
        node: String,
        service_id: Option<String>,
        check_id: Option<String>,
    },
    /// Set a check's status and output (a check result, a TTL update).
    UpdateCheck {
        node: String,
        check_id: String,
        status: Status,
        output: String,
    },
    /// Set a KV entry; with `cas`, only if its `ModifyIndex` equals it (0: only if absent).
    KvSet {
        key: String,
        #[serde(with = "bytes_b64")]
        value: Vec<u8>,
        flags: u64,
        cas: Option<u64>,
    },
    /// Delete a KV entry, or every entry under a prefix; with `cas`, only at that index.
    KvDelete {
        key: String,
        recurse: bool,
        cas: Option<u64>,
    },
    /// Upsert a cluster member. Its status also drives its node in the catalog: `failed` sets
    /// the node's liveness check (`serfHealth`) critical, `alive` sets it passing (each creating
    /// it if the node lacks it), `left` deregisters the node with its services and checks.
    MemberSet {
        name: String,
        /// The member's QUIC endpoint, `ip:port`.
        addr: String,
        role: MemberRole,
        status: MemberStatus,
        datacenter: String,
    },
    /// Install the first CA root, active. Done without change when an active root exists, so
    /// every server may propose it at bootstrap.
    CaInit(CaRoot),
    /// Replace every table with a snapshot's content (`meshctl snapshot restore`). Every table,
    /// service and node index moves to the entry's index so every blocking query wakes; the
    /// objects keep their own indexes.
    Restore(Box<StateImage>),
    /// Set the range virtual IPs are taken from (`a.b.c.d/len`, at most /30). Addresses already
    /// given stay; names that lack one get one from the new range. Rejected if `cidr` is not a
    /// usable IPv4 CIDR; done without change when it is the current range. See [`crate::vip`].
    VirtualIpRange {
        cidr: String,
    },
    /// Add a CA root and make it the active one (`meshctl ca rotate`); the others stay as
    /// trusted, inactive roots. Rejected for a known ID or another trust domain.
    CaRotate(CaRoot),
    /// Upsert an intention by its source/destination pair; with `create_only`, an existing
    /// pair is refused (`POST /v1/connect/intentions`). See [`crate::intention`].
    IntentionSet {
        intention: Intention,
        create_only: bool,
    },
    /// Delete the intention with `id`, or else the one of the pair.
    IntentionDelete {
        id: Option<String>,
        source_type: String,
        source: String,
        destination: String,
    },
    /// Set the cluster-wide policy for callers no intention names.
    DefaultIntentionPolicy {
        action: Action,
    },
    /// Upsert a config entry; with `cas`, only if its `ModifyIndex` equals it.
    ConfigEntrySet {
        entry: ConfigEntry,
        cas: Option<u64>,
    },
    ConfigEntryDelete {
        kind: String,
        name: String,
    },
    /// Independent writes of concurrent clients carried by one log entry (group commit):
    /// applied in order, each with its own response, all at the entry's index. Batches do not
    /// nest.
    Batch(Vec<Command>),
}

impl Command {
    /// A short name for metrics and logs.
    pub fn kind(&self) -> &'static str {
        match self {
            Command::Register(_) => "register",
            Command::Deregister { .. } => "deregister",
            Command::UpdateCheck { .. } => "update_check",
            Command::KvSet { .. } => "kv_set",
            Command::KvDelete { .. } => "kv_delete",
            Command::MemberSet { .. } => "member_set",
            Command::CaInit(_) => "ca_init",
            Command::Restore(_) => "restore",
            Command::VirtualIpRange { .. } => "virtual_ip_range",
            Command::CaRotate(_) => "ca_rotate",
            Command::IntentionSet { .. } => "intention_set",
            Command::IntentionDelete { .. } => "intention_delete",
            Command::DefaultIntentionPolicy { .. } => "default_intention_policy",
            Command::ConfigEntrySet { .. } => "config_entry_set",
            Command::ConfigEntryDelete { .. } => "config_entry_delete",
            Command::Batch(_) => "batch",
        }
    }

    /// This command without private keys (CA roots' `key_pem` blanked, in batches too), as
    /// servers ship it to agents. Borrowed when there is nothing to blank.
    pub fn redacted(&self) -> Cow<'_, Command> {
        if !self.holds_keys() {
            return Cow::Borrowed(self);
        }
        Cow::Owned(match self {
            Command::CaInit(root) => Command::CaInit(CaRoot {
                key_pem: String::new(),
                ..root.clone()
            }),
            Command::CaRotate(root) => Command::CaRotate(CaRoot {
                key_pem: String::new(),
                ..root.clone()
            }),
            Command::Restore(image) => {
                let mut image = image.clone();
                image.redact();
                Command::Restore(image)
            }
            Command::Batch(cmds) => {
                Command::Batch(cmds.iter().map(|c| c.redacted().into_owned()).collect())
            }
            other => other.clone(),
        })
    }

    /// Whether a private key is part of this command.
    fn holds_keys(&self) -> bool {
        match self {
            Command::CaInit(root) | Command::CaRotate(root) => !root.key_pem.is_empty(),
            Command::Restore(image) => image.ca_roots.iter().any(|r| !r.key_pem.is_empty()),
            Command::Batch(cmds) => cmds.iter().any(Command::holds_keys),
            _ => false,
        }
    }
}

/// The body of [`Command::Register`].
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq)]
pub struct Register {
    /// The node; its indexes are ignored.
    pub node: Node,
    /// Leave an existing node's fields as they are (agent registrations of a service).
    pub skip_node_update: bool,
    pub service: Option<Service>,
    /// Checks to upsert; those with a `service_id` must name a service on this node.
    pub checks: Vec<Check>,
    /// Remove the service's checks that are not in `checks` (`replace-existing-checks`).
    pub replace_service_checks: bool,
}

/// What applying a command produced. A rejected command changed nothing.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Default)]
pub enum Response {
    #[default]
    Done,
    /// Result of a KV write: false when a `cas` condition did not hold.
    Cas(bool),
    /// The command was not applied; the reason names the cause.
    Rejected(String),
    /// The responses of a [`Command::Batch`], in order.
    Batch(Vec<Response>),
}

mod bytes_b64 {
    use base64::Engine as _;
    use serde::{Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(v: &[u8], s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&base64::engine::general_purpose::STANDARD.encode(v))
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<u8>, D::Error> {
        let s = String::deserialize(d)?;
        base64::engine::general_purpose::STANDARD
            .decode(s.as_bytes())
            .map_err(serde::de::Error::custom)
    }
}
