//! meshd's registry: the replicated state of the mesh and the rules that change it.
//!
//! It knows nothing of HTTP, DNS or sockets. Layout:
//! - [`model`]: the stored objects (nodes, services, checks, KV), in Consul's JSON shape;
//! - [`command`]: the [`Command`]s a Raft log entry carries, and their [`Response`];
//! - [`state`]: the tables and `apply`, with per-table, per-service and per-node indexes;
//! - [`query`]: reads of the state and the index each reflects;
//! - [`name`]: the rule every service name follows (DNS label, SPIFFE path segment);
//! - [`intention`]: who may call whom, and the default policy;
//! - [`config_entry`]: per-service settings (`service-defaults`, `service-router`,
//!   `service-splitter`, `service-resolver`), validated at write;
//! - [`filter`]: the filter expressions of resolver subsets;
//! - [`chain`]: the compiled discovery chain of a service, which the data plane runs;
//! - [`vip`]: the virtual IP of each service name, allocated from a replicated range;
//! - [`feed`]: the recent applied commands, which agents' watch streams replay;
//! - [`archive`]: the self-checking snapshot file of `meshctl snapshot save`/`restore`;
//! - [`raft`]: openraft over sled (log, vote, snapshots) and the [`Registry`] handle that
//!   writes through Raft, reads with a chosen consistency and wakes watchers.

pub mod archive;
pub mod ca;
pub mod chain;
mod check_index;
pub mod command;
pub mod config_entry;
pub mod duration;
pub mod feed;
pub mod filter;
pub mod intention;
pub mod model;
pub mod name;
pub mod query;
pub mod raft;
pub mod state;
pub mod view;
pub mod vip;

pub use command::{Command, Register, Response};
pub use feed::{Feed, FeedEntry, FeedGap, DEFAULT_FEED_ENTRIES};
pub use model::{CaRoot, Member, MemberRole, MemberStatus, VirtualIp};
pub use model::{Check, CheckDefinition, KvEntry, Node, Service, ServiceAddress, Status, Weights};
pub use model::{Connect, ConnectUpstream, SidecarProxy, SidecarService, Upstream};
pub use name::{validate_service_name, NameError};
pub use raft::{
    AdminError, Applied, Bootstrap, Consistency, LeaderInfo, OpenError, Peer, ReadError, Registry,
    RegistryConfig, WriteError,
};
pub use state::State;
pub use vip::Ipv4Cidr;
