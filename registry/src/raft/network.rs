//! A Raft network with no peers, for a registry used on its own (tests, tools): every RPC to a
//! peer fails with [`Unreachable`], which openraft treats as a peer that is down; a one-server
//! cluster never sends any. meshd's servers talk to each other over QUIC
//! (`meshd/src/cluster/raft_net.rs`).

use openraft::error::{InstallSnapshotError, RPCError, RaftError, Unreachable};
use openraft::network::RPCOption;
use openraft::raft::{
    AppendEntriesRequest, AppendEntriesResponse, InstallSnapshotRequest, InstallSnapshotResponse,
    VoteRequest, VoteResponse,
};
use openraft::{BasicNode, RaftNetwork, RaftNetworkFactory};

use super::types::{NodeId, TypeConfig};

/// Why an RPC could not be sent.
#[derive(Debug, thiserror::Error)]
#[error("no transport to peer {peer} ({addr}): multi-server transport is not configured")]
pub struct NoTransport {
    pub peer: NodeId,
    pub addr: String,
}

/// The network factory of a server without a transport to its peers.
#[derive(Clone, Debug, Default)]
pub struct NoNetwork;

/// A "connection" to a peer that fails every RPC with [`NoTransport`].
#[derive(Clone, Debug)]
pub struct NoConnection {
    peer: NodeId,
    addr: String,
}

impl NoConnection {
    fn unreachable<E: std::error::Error>(&self) -> RPCError<NodeId, BasicNode, E> {
        RPCError::Unreachable(Unreachable::new(&NoTransport {
            peer: self.peer,
            addr: self.addr.clone(),
        }))
    }
}

impl RaftNetworkFactory<TypeConfig> for NoNetwork {
    type Network = NoConnection;

    async fn new_client(&mut self, target: NodeId, node: &BasicNode) -> NoConnection {
        tracing::warn!(
            peer = target,
            addr = %node.addr,
            "raft peer configured but multi-server transport is not; it will be unreachable"
        );
        NoConnection {
            peer: target,
            addr: node.addr.clone(),
        }
    }
}

impl RaftNetwork<TypeConfig> for NoConnection {
    async fn append_entries(
        &mut self,
        _rpc: AppendEntriesRequest<TypeConfig>,
        _option: RPCOption,
    ) -> Result<AppendEntriesResponse<NodeId>, RPCError<NodeId, BasicNode, RaftError<NodeId>>> {
        Err(self.unreachable())
    }

    async fn install_snapshot(
        &mut self,
        _rpc: InstallSnapshotRequest<TypeConfig>,
        _option: RPCOption,
    ) -> Result<
        InstallSnapshotResponse<NodeId>,
        RPCError<NodeId, BasicNode, RaftError<NodeId, InstallSnapshotError>>,
    > {
        Err(self.unreachable())
    }

    async fn vote(
        &mut self,
        _rpc: VoteRequest<NodeId>,
        _option: RPCOption,
    ) -> Result<VoteResponse<NodeId>, RPCError<NodeId, BasicNode, RaftError<NodeId>>> {
        Err(self.unreachable())
    }
}
