//! Raft RPC between servers over QUIC (ALPN `meshd-raft/1`): the openraft network factory that
//! sends [`RaftRequest`]s, and the handler that feeds received ones to the local Raft.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use openraft::error::{
    InstallSnapshotError, NetworkError, RPCError, RaftError, RemoteError, Unreachable,
};
use openraft::network::RPCOption;
use openraft::raft::{
    AppendEntriesRequest, AppendEntriesResponse, InstallSnapshotRequest, InstallSnapshotResponse,
    VoteRequest, VoteResponse,
};
use openraft::{BasicNode, RaftNetwork, RaftNetworkFactory};
use registry::ca::Identity;
use registry::raft::TypeConfig;
use registry::Registry;

use super::proto::{RaftReply, RaftRequest};
use crate::transport::frame::{read_frame, write_frame};
use crate::transport::{Incoming, Transport, TransportError, ALPN_RAFT};

/// Bound of one AppendEntries or Vote round trip (snapshots get longer).
const RPC_TIMEOUT: Duration = Duration::from_secs(3);
const SNAPSHOT_TIMEOUT: Duration = Duration::from_secs(60);

/// Creates a [`Peer`] client per target server.
#[derive(Clone)]
pub struct QuicNetwork {
    pub transport: Arc<Transport>,
}

/// Raft RPCs to one server.
pub struct Peer {
    transport: Arc<Transport>,
    target: u64,
    addr: Result<SocketAddr, String>,
}

impl RaftNetworkFactory<TypeConfig> for QuicNetwork {
    type Network = Peer;

    async fn new_client(&mut self, target: u64, node: &BasicNode) -> Peer {
        Peer {
            transport: self.transport.clone(),
            target,
            addr: node
                .addr
                .parse()
                .map_err(|e| format!("bad address {:?} of server {target}: {e}", node.addr)),
        }
    }
}

#[derive(Debug, thiserror::Error)]
#[error("server {target}: {reason}")]
struct PeerError {
    target: u64,
    reason: String,
}

impl Peer {
    async fn call<E: std::error::Error>(
        &self,
        req: RaftRequest,
        timeout: Duration,
    ) -> Result<RaftReply, RPCError<u64, BasicNode, E>> {
        let addr = self.addr.clone().map_err(|reason| {
            RPCError::Unreachable(Unreachable::new(&PeerError {
                target: self.target,
                reason,
            }))
        })?;
        let reply: Result<RaftReply, TransportError> =
            self.transport.call(addr, ALPN_RAFT, &req, timeout).await;
        match reply {
            Ok(RaftReply::Refused(reason)) => {
                Err(RPCError::Network(NetworkError::new(&PeerError {
                    target: self.target,
                    reason,
                })))
            }
            Ok(r) => Ok(r),
            Err(e @ (TransportError::Connect { .. } | TransportError::Timeout { .. })) => {
                Err(RPCError::Unreachable(Unreachable::new(&e)))
            }
            Err(e) => Err(RPCError::Network(NetworkError::new(&e))),
        }
    }

    fn mismatch<E: std::error::Error>(&self) -> RPCError<u64, BasicNode, E> {
        RPCError::Network(NetworkError::new(&PeerError {
            target: self.target,
            reason: "answer of the wrong kind".into(),
        }))
    }
}

impl RaftNetwork<TypeConfig> for Peer {
    async fn append_entries(
        &mut self,
        rpc: AppendEntriesRequest<TypeConfig>,
        option: RPCOption,
    ) -> Result<AppendEntriesResponse<u64>, RPCError<u64, BasicNode, RaftError<u64>>> {
        let timeout = option.hard_ttl().max(RPC_TIMEOUT);
        match self.call(RaftRequest::Append(rpc), timeout).await? {
            RaftReply::Append(Ok(r)) => Ok(r),
            RaftReply::Append(Err(e)) => {
                Err(RPCError::RemoteError(RemoteError::new(self.target, e)))
            }
            _ => Err(self.mismatch()),
        }
    }

    async fn install_snapshot(
        &mut self,
        rpc: InstallSnapshotRequest<TypeConfig>,
        _option: RPCOption,
    ) -> Result<
        InstallSnapshotResponse<u64>,
        RPCError<u64, BasicNode, RaftError<u64, InstallSnapshotError>>,
    > {
        match self
            .call(RaftRequest::Snapshot(rpc), SNAPSHOT_TIMEOUT)
            .await?
        {
            RaftReply::Snapshot(Ok(r)) => Ok(r),
            RaftReply::Snapshot(Err(e)) => {
                Err(RPCError::RemoteError(RemoteError::new(self.target, e)))
            }
            _ => Err(self.mismatch()),
        }
    }

    async fn vote(
        &mut self,
        rpc: VoteRequest<u64>,
        option: RPCOption,
    ) -> Result<VoteResponse<u64>, RPCError<u64, BasicNode, RaftError<u64>>> {
        let timeout = option.hard_ttl().max(RPC_TIMEOUT);
        match self.call(RaftRequest::Vote(rpc), timeout).await? {
            RaftReply::Vote(Ok(r)) => Ok(r),
            RaftReply::Vote(Err(e)) => Err(RPCError::RemoteError(RemoteError::new(self.target, e))),
            _ => Err(self.mismatch()),
        }
    }
}

/// Serves one Raft RPC stream: only servers of this trust domain may send them.
pub async fn serve(registry: Option<Registry>, mut s: Incoming) {
    let reply = match (&registry, &s.peer) {
        (Some(reg), Some(peer)) if matches!(peer.identity, Identity::Server(_)) => {
            match read_frame::<RaftRequest>(&mut s.recv).await {
                Ok(Some(req)) => handle(reg, req).await,
                Ok(None) => return,
                Err(e) => {
                    tracing::warn!(remote = %s.remote, error = %e, "bad raft frame");
                    return;
                }
            }
        }
        (None, _) => RaftReply::Refused("not a server".into()),
        (_, peer) => {
            tracing::warn!(remote = %s.remote, ?peer, "refused raft RPC from a non-server identity");
            RaftReply::Refused("raft RPC is for servers only".into())
        }
    };
    if let Err(e) = write_frame(&mut s.send, &reply).await {
        tracing::debug!(remote = %s.remote, error = %e, "raft reply not delivered");
    }
    let _ = s.send.finish();
}

async fn handle(reg: &Registry, req: RaftRequest) -> RaftReply {
    let raft = reg.raft();
    match req {
        RaftRequest::Append(r) => RaftReply::Append(raft.append_entries(r).await),
        RaftRequest::Vote(r) => RaftReply::Vote(raft.vote(r).await),
        RaftRequest::Snapshot(r) => RaftReply::Snapshot(raft.install_snapshot(r).await),
    }
}
