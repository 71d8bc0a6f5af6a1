//! Cluster administration on the [`Registry`] handle: forming the cluster, adding and removing
//! servers, the read index for linearizable reads served elsewhere, and what agents' watch
//! streams read (a redacted state image and the change feed).

use std::collections::{BTreeMap, BTreeSet};
use std::sync::{Arc, PoisonError};
use std::time::Duration;

use openraft::error::{CheckIsLeaderError, ClientWriteError, InitializeError, RaftError};
use openraft::{BasicNode, ChangeMembers, ServerState};

use super::{ReadError, Registry};
use crate::command::Command;
use crate::feed::FeedGap;
use crate::state::StateImage;

/// A Raft server of the cluster, as `operator raft list-peers` shows it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Peer {
    pub id: u64,
    /// Advertised QUIC address.
    pub addr: String,
    pub voter: bool,
    pub leader: bool,
}

/// Why a membership operation failed.
#[derive(Debug, thiserror::Error)]
pub enum AdminError {
    #[error("not the leader (leader: {leader:?})")]
    NotLeader { leader: Option<String> },
    #[error("{0}")]
    Refused(String),
    #[error("raft: {0}")]
    Raft(String),
}

/// How long a learner may take to catch up before it is promoted.
const CATCH_UP_TIMEOUT: Duration = Duration::from_secs(120);

impl Registry {
    /// This server's Raft ID.
    pub fn node_id(&self) -> u64 {
        self.inner.node_id
    }

    /// Whether the store holds a cluster membership (bootstrapped, or joined and replicated).
    pub async fn is_initialized(&self) -> bool {
        self.inner.raft.is_initialized().await.unwrap_or(false)
    }

    /// Whether this server is the leader now.
    pub fn is_leader(&self) -> bool {
        let m = self.inner.raft.metrics();
        let m = m.borrow();
        m.state == ServerState::Leader && m.current_leader == Some(self.inner.node_id)
    }

    /// The current leader's ID and address, if known.
    pub fn leader(&self) -> Option<(u64, String)> {
        let m = self.inner.raft.metrics();
        let m = m.borrow();
        let id = m.current_leader?;
        let addr = m.membership_config.membership().get_node(&id)?.addr.clone();
        Some((id, addr))
    }

    /// Voters and learners of the effective membership.
    pub fn peers(&self) -> Vec<Peer> {
        let m = self.inner.raft.metrics();
        let m = m.borrow();
        let membership = m.membership_config.membership();
        let voters: BTreeSet<u64> = membership.voter_ids().collect();
        membership
            .nodes()
            .map(|(id, node)| Peer {
                id: *id,
                addr: node.addr.clone(),
                voter: voters.contains(id),
                leader: m.current_leader == Some(*id),
            })
            .collect()
    }

    /// Forms a new cluster of `servers` (ID → advertised address). Every server of the set may
    /// call it with the same set; a store that already has a membership is left as it is.
    pub async fn initialize(&self, servers: BTreeMap<u64, String>) -> Result<(), AdminError> {
        let members: BTreeMap<u64, BasicNode> = servers
            .into_iter()
            .map(|(id, addr)| (id, BasicNode::new(addr)))
            .collect();
        match self.inner.raft.initialize(members).await {
            Ok(()) => Ok(()),
            Err(RaftError::APIError(InitializeError::NotAllowed(_))) => Ok(()),
            Err(e) => Err(AdminError::Raft(e.to_string())),
        }
    }

    /// On the leader: adds a server as a learner, waits until it has caught up, then makes it
    /// a voter. Adding a server that is already a voter at the same address does nothing.
    pub async fn add_server(&self, id: u64, addr: String) -> Result<(), AdminError> {
        if let Some(p) = self.peers().into_iter().find(|p| p.id == id) {
            if p.voter && p.addr == addr {
                return Ok(());
            }
        }
        tracing::info!(id, %addr, "adding a server as a learner");
        let raft = &self.inner.raft;
        let add = tokio::time::timeout(
            CATCH_UP_TIMEOUT,
            raft.add_learner(id, BasicNode::new(addr.clone()), true),
        )
        .await
        .map_err(|_| {
            AdminError::Raft(format!(
                "learner {id} did not catch up within {CATCH_UP_TIMEOUT:?}"
            ))
        })?;
        add.map_err(|e| self.write_error(e))?;
        tracing::info!(id, %addr, "learner caught up; promoting it to voter");
        raft.change_membership(ChangeMembers::AddVoterIds(BTreeSet::from([id])), false)
            .await
            .map_err(|e| self.write_error(e))?;
        // A server that came back with a new ID (its data dir was lost) at the address of an
        // old one: the old ID would count as a dead voter forever; drop it, as Consul does.
        for stale in self
            .peers()
            .into_iter()
            .filter(|p| p.addr == addr && p.id != id)
        {
            tracing::info!(old_id = stale.id, new_id = id, %addr, "removing the stale server with the same address");
            self.remove_server(stale.id).await?;
        }
        Ok(())
    }

    /// On the leader: removes a server (voter or learner) from the cluster. Refused when the
    /// remaining voters would be none.
    pub async fn remove_server(&self, id: u64) -> Result<(), AdminError> {
        let peers = self.peers();
        let Some(peer) = peers.iter().find(|p| p.id == id) else {
            return Err(AdminError::Refused(format!(
                "no server with ID {id} in the Raft configuration"
            )));
        };
        let raft = &self.inner.raft;
        // One membership change: a voter leaves without being kept as a learner (`retain`
        // false). A second change after it would run on a leader that may just have removed
        // itself, which openraft does not allow.
        let change = if peer.voter {
            if peers.iter().filter(|p| p.voter).count() <= 1 {
                return Err(AdminError::Refused(
                    "refusing to remove the last voter of the cluster".into(),
                ));
            }
            ChangeMembers::RemoveVoters(BTreeSet::from([id]))
        } else {
            ChangeMembers::RemoveNodes(BTreeSet::from([id]))
        };
        raft.change_membership(change, false)
            .await
            .map_err(|e| self.write_error(e))?;
        tracing::info!(id, addr = %peer.addr, "removed a server from the cluster");
        Ok(())
    }

    fn write_error(&self, e: RaftError<u64, ClientWriteError<u64, BasicNode>>) -> AdminError {
        match e {
            RaftError::APIError(ClientWriteError::ForwardToLeader(f)) => AdminError::NotLeader {
                leader: f.leader_node.map(|n| n.addr),
            },
            RaftError::APIError(ClientWriteError::ChangeMembershipError(c)) => {
                AdminError::Refused(c.to_string())
            }
            other => AdminError::Raft(other.to_string()),
        }
    }

    /// On the leader: confirms leadership with a quorum and returns the index a linearizable
    /// read must see (the commit index when the check began).
    pub async fn read_index(&self) -> Result<u64, ReadError> {
        let res = tokio::time::timeout(
            super::READ_BARRIER_TIMEOUT,
            self.inner.raft.ensure_linearizable(),
        )
        .await
        .map_err(|_| {
            ReadError::Raft(format!(
                "leadership not confirmed within {:?}",
                super::READ_BARRIER_TIMEOUT
            ))
        })?;
        match res {
            Ok(read_log) => Ok(read_log.map(|l| l.index).unwrap_or(0)),
            Err(RaftError::APIError(CheckIsLeaderError::ForwardToLeader(f))) => {
                Err(ReadError::NotLeader {
                    leader: self.leader_addr(f.leader_id, f.leader_node),
                })
            }
            Err(RaftError::APIError(CheckIsLeaderError::QuorumNotEnough(e))) => Err(
                ReadError::Raft(format!("leadership not confirmed by a quorum: {e}")),
            ),
            Err(RaftError::Fatal(e)) => Err(ReadError::Raft(format!("raft is stopped: {e}"))),
        }
    }

    /// Waits until the local state has applied `index`; false on timeout.
    pub async fn wait_applied(&self, index: u64, timeout: Duration) -> bool {
        crate::view::wait_index(self.subscribe(), index, timeout).await
    }

    /// The state as an agent may see it (CA keys removed) and the applied index it reflects.
    pub fn redacted_image(&self) -> (StateImage, u64) {
        let state = self.read();
        let index = self
            .inner
            .feed
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .applied();
        let mut image = state.image();
        drop(state);
        image.redact();
        (image, index)
    }

    /// Commands applied after `from` (at most `max`, redacted), and the index they bring a
    /// reader to; a gap when they are no longer kept.
    pub fn changes_since(
        &self,
        from: u64,
        max: usize,
    ) -> Result<(Vec<(u64, Command)>, u64), FeedGap> {
        let (entries, upto) = {
            let feed = self
                .inner
                .feed
                .lock()
                .unwrap_or_else(PoisonError::into_inner);
            feed.since(from, max)?
        };
        let entries = entries
            .into_iter()
            .map(|(i, c): (u64, Arc<Command>)| (i, c.redacted().into_owned()))
            .collect();
        Ok((entries, upto))
    }
}
