//! The messages hosts exchange, one JSON frame each (see `transport::frame`).
//!
//! - ALPN `meshd-raft/1`: [`RaftRequest`] → [`RaftReply`], servers only.
//! - ALPN `meshd-rpc/1`: [`Request`] → [`Reply`]; [`Request::Watch`] turns the stream into a
//!   sequence of [`WatchFrame`]s.
//! - ALPN `meshd-join/1`: [`EnrollRequest`] → [`EnrollReply`], from agents without a
//!   certificate yet.

use openraft::error::{InstallSnapshotError, RaftError};
use openraft::raft::{
    AppendEntriesRequest, AppendEntriesResponse, InstallSnapshotRequest, InstallSnapshotResponse,
    VoteRequest, VoteResponse,
};
use registry::model::MemberRole;
use registry::raft::TypeConfig;
use registry::state::StateImage;
use registry::{Command, Response};
use serde::{Deserialize, Serialize};

#[derive(Serialize, Deserialize, Debug)]
pub enum RaftRequest {
    Append(AppendEntriesRequest<TypeConfig>),
    Vote(VoteRequest<u64>),
    Snapshot(InstallSnapshotRequest<TypeConfig>),
}

#[derive(Serialize, Deserialize, Debug)]
pub enum RaftReply {
    Append(Result<AppendEntriesResponse<u64>, RaftError<u64>>),
    Vote(Result<VoteResponse<u64>, RaftError<u64>>),
    Snapshot(Result<InstallSnapshotResponse<u64>, RaftError<u64, InstallSnapshotError>>),
    /// The request was not served (not a server, shutting down).
    Refused(String),
}

/// A server as servers announce themselves to each other.
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct ServerInfo {
    pub id: u64,
    pub node: String,
    /// Advertised QUIC address.
    pub addr: String,
}

/// One node seen alive by a server.
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq)]
pub struct Heartbeat {
    pub node: String,
    pub addr: String,
    pub role: MemberRole,
    pub datacenter: String,
}

/// A heartbeat a server received, and how long ago.
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq)]
pub struct Seen {
    pub heartbeat: Heartbeat,
    pub age_ms: u64,
}

// A request is built once and serialized; boxing the write's command would only add an
// allocation.
#[allow(clippy::large_enum_variant)]
#[derive(Serialize, Deserialize, Debug)]
pub enum Request {
    /// A registry write, forwarded to the leader by whichever server receives it.
    Write(Command),
    /// The index a linearizable read must reflect (confirmed by the leader with a quorum).
    ReadIndex,
    /// A server announcing itself before the cluster is formed.
    Hello(ServerInfo),
    /// A server asking to be added to the formed cluster (learner, then voter).
    JoinServer(ServerInfo),
    /// An agent (or a server for itself) is alive.
    Heartbeat(Heartbeat),
    /// A server passing the nodes it saw alive to the leader.
    Liveness(Vec<Seen>),
    /// Leave the cluster: the member is marked left, its catalog entries removed.
    Leave { node: String },
    /// Remove a server from the Raft configuration, by ID or address.
    RemovePeer {
        id: Option<u64>,
        addr: Option<String>,
    },
    /// The Raft configuration.
    Peers,
    /// Stream the registry from `from` (0: a full snapshot first).
    Watch { from: u64 },
    /// Sign a service leaf for the key of `csr_pem`, valid `ttl_secs`: only for a service
    /// registered on the asking node.
    SignLeaf {
        service: String,
        csr_pem: String,
        ttl_secs: u64,
    },
}

/// Why a request failed.
#[derive(Serialize, Deserialize, Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErrorKind {
    /// No leader reachable or no quorum; retry later.
    NoLeader,
    /// The caller may not do this.
    Forbidden,
    /// The request is invalid; it changed nothing.
    BadRequest,
    /// The server cannot serve now (shutting down, not ready).
    Unavailable,
    /// A forwarded write got no answer: it may or may not have been applied.
    Unknown,
}

#[derive(Serialize, Deserialize, Debug)]
pub enum Reply {
    Written {
        index: u64,
        response: Response,
    },
    ReadIndex(u64),
    Hello {
        me: ServerInfo,
        /// Whether this server already belongs to a formed cluster.
        initialized: bool,
        known: Vec<ServerInfo>,
    },
    /// Done; `leader` and `servers` let agents keep their server list current.
    Ok {
        leader: Option<String>,
        servers: Vec<String>,
    },
    Peers(Vec<PeerInfo>),
    /// A signed service leaf (PEM).
    Leaf {
        cert_pem: String,
    },
    Error {
        kind: ErrorKind,
        message: String,
    },
}

#[derive(Serialize, Deserialize, Debug, Clone)]
pub struct PeerInfo {
    pub id: u64,
    pub node: String,
    pub addr: String,
    pub leader: bool,
    pub voter: bool,
}

/// A frame of a watch stream.
#[derive(Serialize, Deserialize, Debug)]
pub enum WatchFrame {
    /// The whole registry at `index` (CA keys removed).
    Snapshot {
        image: Box<StateImage>,
        index: u64,
    },
    /// The commands applied after the reader's index, and the index they bring it to. Sent
    /// empty as a keepalive.
    Changes {
        entries: Vec<(u64, Command)>,
        upto: u64,
        leader: Option<String>,
    },
    Error {
        message: String,
    },
}

#[derive(Serialize, Deserialize, Debug)]
pub struct EnrollRequest {
    pub node: String,
    pub datacenter: String,
    pub token: String,
    pub csr_pem: String,
}

#[derive(Serialize, Deserialize, Debug)]
pub enum EnrollReply {
    Enrolled {
        cert_pem: String,
        ca_pem: String,
        servers: Vec<String>,
    },
    Error {
        kind: ErrorKind,
        message: String,
    },
}
