//! Facts about this agent that the API and the check runner need: its node and datacenter,
//! its role and its version.

/// The Consul HTTP API version meshd implements (reported in `/v1/agent/self` `Config.Version`;
/// clients such as Nomad compare it against their minimum).
pub const CONSUL_API_COMPAT_VERSION: &str = "1.17.0";

/// meshd's own version.
pub const MESHD_VERSION: &str = env!("CARGO_PKG_VERSION");

/// This agent's identity in the catalog.
#[derive(Clone, Debug)]
pub struct AgentInfo {
    /// Node name (`--node`, default the hostname).
    pub node: String,
    /// Stable node ID (a UUID kept in the data dir).
    pub node_id: String,
    /// Address other hosts reach this node at.
    pub address: String,
    pub datacenter: String,
    /// Whether this agent is a Raft server.
    pub server: bool,
    /// Node meta from the config.
    pub node_meta: std::collections::BTreeMap<String, String>,
}
