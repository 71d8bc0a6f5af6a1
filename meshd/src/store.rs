//! The registry as the API and the check runner use it, on a server or on an agent.
//!
//! - On a server: the replicated [`Registry`]; a write on a follower goes to the leader; a
//!   consistent read on a follower asks the leader for its read index and waits until the local
//!   state has applied it.
//! - On an agent: the local [`View`] fed by the watch stream; writes and read indexes go to a
//!   server. After a write the agent waits (briefly) until its view shows it, so a client reads
//!   its own writes from the same agent.
//!
//! A write that could not be delivered before a leader answered is retried for a short while
//! (an election); one whose outcome is unknown is reported as an error, never as a success.

use std::sync::{Arc, RwLockReadGuard};
use std::time::Duration;

use registry::view::View;
use registry::{Applied, Command, Consistency, LeaderInfo, ReadError, State, WriteError};
use tokio::sync::watch;
use tokio::time::Instant;

use crate::cluster::client::{ClientError, ClusterClient, REQUEST_TIMEOUT};
use crate::cluster::proto::{ErrorKind, PeerInfo, Reply, Request};
use crate::cluster::server::ServerCtx;
use crate::read_index::{Check, ReadIndex};

/// How long a write waits for a leader to appear before failing.
const LEADER_WAIT: Duration = Duration::from_secs(5);
/// How long a consistent read waits for the local state to catch up with the read index.
const CATCH_UP: Duration = Duration::from_secs(5);
/// How long an agent waits for its view to show its own write.
const OWN_WRITE_WAIT: Duration = Duration::from_secs(2);

enum Backend {
    Server(Arc<ServerCtx>),
    Agent {
        view: View,
        client: Arc<ClusterClient>,
    },
}

/// Cheap to clone.
#[derive(Clone)]
pub struct Store(Arc<Backend>, ReadIndex);

fn retryable(kind: ErrorKind) -> bool {
    matches!(kind, ErrorKind::NoLeader)
}

impl Store {
    pub fn server(ctx: Arc<ServerCtx>) -> Store {
        let c = ctx.clone();
        let check: Check = Arc::new(move || {
            let c = c.clone();
            Box::pin(async move { c.read_index().await.map_err(|e| e.to_string()) })
        });
        Store(Arc::new(Backend::Server(ctx)), ReadIndex::new(check))
    }

    pub fn agent(view: View, client: Arc<ClusterClient>) -> Store {
        let c = client.clone();
        let check: Check = Arc::new(move || {
            let c = c.clone();
            Box::pin(async move {
                match c.request(&Request::ReadIndex, REQUEST_TIMEOUT).await {
                    Ok(Reply::ReadIndex(i)) => Ok(i),
                    Ok(Reply::Error { message, .. }) => Err(message),
                    Ok(other) => Err(format!("unexpected answer: {other:?}")),
                    Err(e) => Err(e.to_string()),
                }
            })
        });
        Store(
            Arc::new(Backend::Agent { view, client }),
            ReadIndex::new(check),
        )
    }

    /// Writes a command; returns once it is committed (and, on an agent, visible locally).
    pub async fn write(&self, cmd: Command) -> Result<Applied, WriteError> {
        let deadline = Instant::now() + LEADER_WAIT;
        loop {
            let outcome = match &*self.0 {
                Backend::Server(ctx) => ctx.write(cmd.clone(), true).await,
                Backend::Agent { client, .. } => {
                    match client
                        .request(&Request::Write(cmd.clone()), REQUEST_TIMEOUT)
                        .await
                    {
                        Ok(r) => r,
                        // Never sent: as good as no leader.
                        Err(ClientError::Unreachable { last, .. }) => Reply::Error {
                            kind: ErrorKind::NoLeader,
                            message: format!("no server reachable: {last}"),
                        },
                        Err(e) => {
                            return Err(WriteError::Raft(format!(
                                "the write's outcome is unknown: {e}"
                            )))
                        }
                    }
                }
            };
            match outcome {
                Reply::Written { index, response } => {
                    if let Backend::Agent { view, .. } = &*self.0 {
                        if !view.wait_for(index, OWN_WRITE_WAIT).await {
                            tracing::debug!(index, "local view did not show the write in time");
                        }
                    }
                    return Ok(Applied { index, response });
                }
                Reply::Error { kind, message } if retryable(kind) && Instant::now() < deadline => {
                    tracing::debug!(%message, "write not accepted yet; retrying");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
                Reply::Error {
                    kind: ErrorKind::NoLeader,
                    message,
                } => {
                    tracing::debug!(%message, "write failed: no leader");
                    return Err(WriteError::NotLeader { leader: None });
                }
                Reply::Error {
                    kind: ErrorKind::Unavailable,
                    ..
                } => return Err(WriteError::Shutdown),
                Reply::Error { message, .. } => return Err(WriteError::Raft(message)),
                other => return Err(WriteError::Raft(format!("unexpected answer: {other:?}"))),
            }
        }
    }

    /// Waits until a read at `consistency` may be served from the local state.
    pub async fn read_barrier(&self, consistency: Consistency) -> Result<(), ReadError> {
        if consistency == Consistency::Stale {
            return Ok(());
        }
        // Concurrent consistent reads share one leadership check.
        let index = self.1.get().await?;
        let caught_up = match &*self.0 {
            Backend::Server(ctx) => ctx.registry.wait_applied(index, CATCH_UP).await,
            Backend::Agent { view, .. } => view.wait_for(index, CATCH_UP).await,
        };
        if caught_up {
            Ok(())
        } else {
            Err(ReadError::Raft(format!(
                "the local state did not reach the read index {index} within {CATCH_UP:?}"
            )))
        }
    }

    /// The local state (a server's registry, an agent's view). Never hold across an `.await`.
    pub fn read(&self) -> RwLockReadGuard<'_, State> {
        match &*self.0 {
            Backend::Server(ctx) => ctx.registry.read(),
            Backend::Agent { view, .. } => view.read(),
        }
    }

    /// A receiver of the local applied index.
    pub fn subscribe(&self) -> watch::Receiver<u64> {
        match &*self.0 {
            Backend::Server(ctx) => ctx.registry.subscribe(),
            Backend::Agent { view, .. } => view.subscribe(),
        }
    }

    pub fn leader_info(&self) -> LeaderInfo {
        match &*self.0 {
            Backend::Server(ctx) => ctx.registry.leader_info(),
            Backend::Agent { client, .. } => {
                let (leader, last_contact) = client.leader();
                LeaderInfo {
                    leader,
                    last_contact,
                    peers: client.servers().iter().map(|a| a.to_string()).collect(),
                }
            }
        }
    }

    /// The Raft configuration.
    pub async fn peers(&self) -> Result<Vec<PeerInfo>, String> {
        match &*self.0 {
            Backend::Server(ctx) => Ok(ctx.peer_infos()),
            Backend::Agent { client, .. } => {
                match client.request(&Request::Peers, REQUEST_TIMEOUT).await {
                    Ok(Reply::Peers(p)) => Ok(p),
                    Ok(other) => Err(format!("unexpected answer: {other:?}")),
                    Err(e) => Err(e.to_string()),
                }
            }
        }
    }

    /// An operator request served by a server (remove a peer, make a node leave).
    pub async fn admin(&self, req: Request) -> Result<(), (ErrorKind, String)> {
        let reply = match &*self.0 {
            Backend::Server(ctx) => ctx.admin(req).await,
            Backend::Agent { client, .. } => client
                .request(&req, REQUEST_TIMEOUT)
                .await
                .map_err(|e| (ErrorKind::NoLeader, e.to_string()))?,
        };
        match reply {
            Reply::Ok { .. } | Reply::Written { .. } => Ok(()),
            Reply::Error { kind, message } => Err((kind, message)),
            other => Err((
                ErrorKind::BadRequest,
                format!("unexpected answer: {other:?}"),
            )),
        }
    }

    /// Leaves the cluster: the member `node` is marked left and its catalog entries removed; a
    /// server also leaves the Raft configuration (unless it is the last voter), so the others'
    /// quorum no longer counts it.
    pub async fn leave(&self, node: &str) -> Result<(), (ErrorKind, String)> {
        self.admin(Request::Leave {
            node: node.to_string(),
        })
        .await?;
        if let Backend::Server(ctx) = &*self.0 {
            let req = Request::RemovePeer {
                id: Some(ctx.registry.node_id()),
                addr: None,
            };
            match self.admin(req).await {
                Ok(()) => tracing::info!("left the Raft configuration"),
                Err((_, msg)) => {
                    tracing::warn!(reason = %msg, "still in the Raft configuration after leaving")
                }
            }
        }
        Ok(())
    }

    /// Has a servers' CA sign a leaf for `service` on this host (`node`): a server signs it
    /// itself, an agent asks a server. The error names the cause.
    pub async fn sign_leaf(
        &self,
        node: &str,
        service: &str,
        csr_pem: &str,
        ttl: Duration,
    ) -> Result<String, String> {
        let reply = match &*self.0 {
            Backend::Server(ctx) => match ctx.sign_leaf(node, service, csr_pem, ttl) {
                Ok(cert_pem) => return Ok(cert_pem),
                Err(r) => r,
            },
            Backend::Agent { client, .. } => {
                let req = Request::SignLeaf {
                    service: service.to_string(),
                    csr_pem: csr_pem.to_string(),
                    ttl_secs: ttl.as_secs(),
                };
                client
                    .request(&req, REQUEST_TIMEOUT)
                    .await
                    .map_err(|e| e.to_string())?
            }
        };
        match reply {
            Reply::Leaf { cert_pem } => Ok(cert_pem),
            Reply::Error { message, .. } => Err(message),
            other => Err(format!("unexpected answer: {other:?}")),
        }
    }

    /// The replicated registry, on a server.
    pub fn registry(&self) -> Option<&registry::Registry> {
        match &*self.0 {
            Backend::Server(ctx) => Some(&ctx.registry),
            Backend::Agent { .. } => None,
        }
    }
}
