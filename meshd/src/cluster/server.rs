//! What a server answers on `meshd-rpc/1` and `meshd-join/1`: writes (forwarded to the leader
//! when this server follows), read indexes, server discovery and joins, heartbeats, leaves,
//! Raft membership, agents' watch streams, and enrollment of new agents.

use std::collections::BTreeSet;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use prometheus_client::metrics::gauge::Gauge;
use registry::ca::{self, CaBundle, Identity};
use registry::model::MemberStatus;
use registry::{AdminError, Command, ReadError, Registry, WriteError};
use tokio_util::sync::CancellationToken;

use super::client::{ClusterClient, REQUEST_TIMEOUT};
use super::liveness::Liveness;
use super::proto::{
    EnrollReply, EnrollRequest, ErrorKind, PeerInfo, Reply, Request, ServerInfo, WatchFrame,
};
use crate::transport::frame::{self, read_frame, write_encoded, write_frame};
use crate::transport::{Incoming, TransportError, ALPN_JOIN, ALPN_RAFT, ALPN_RPC};

/// Most commands in one watch frame.
const WATCH_BATCH: usize = 1024;
/// A watch stream with nothing new sends an empty frame this often (the agent's liveness check
/// of its server).
const WATCH_KEEPALIVE: Duration = Duration::from_secs(1);
/// How long a write may wait for its commit on this server.
const COMMIT_TIMEOUT: Duration = Duration::from_secs(5);
/// Validity of a node certificate issued at enrollment.
const NODE_CERT_DAYS: u32 = 365;

/// Everything a server's handlers share.
pub struct ServerCtx {
    pub registry: Registry,
    pub client: Arc<ClusterClient>,
    pub me: ServerInfo,
    pub datacenter: String,
    pub join_token: Option<String>,
    /// Servers this one has heard of (for bootstrap).
    pub known: Mutex<BTreeSet<ServerInfo>>,
    pub liveness: Arc<Liveness>,
    pub watchers: Gauge,
    pub cancel: CancellationToken,
    /// The last watch snapshot frame built, with its index.
    pub snapshot_cache: Mutex<Option<(Arc<Vec<u8>>, u64)>>,
}

fn error(kind: ErrorKind, message: impl Into<String>) -> Reply {
    Reply::Error {
        kind,
        message: message.into(),
    }
}

impl ServerCtx {
    /// Dispatches one incoming stream by ALPN.
    pub async fn serve(self: Arc<Self>, s: Incoming) {
        match s.alpn.as_slice() {
            a if a == ALPN_RAFT => super::raft_net::serve(Some(self.registry.clone()), s).await,
            a if a == ALPN_RPC => self.serve_rpc(s).await,
            a if a == ALPN_JOIN => self.serve_join(s).await,
            other => {
                tracing::warn!(remote = %s.remote, alpn = %String::from_utf8_lossy(other), "stream with an unknown ALPN")
            }
        }
    }

    async fn serve_rpc(self: Arc<Self>, mut s: Incoming) {
        let Some(peer) = s
            .peer
            .clone()
            .filter(|p| !matches!(p.identity, Identity::Service(_)))
        else {
            let reply = error(
                ErrorKind::Forbidden,
                "a server or node certificate is required (service leaves are for tunnels)",
            );
            let _ = write_frame(&mut s.send, &reply).await;
            let _ = s.send.finish();
            return;
        };
        let req = match read_frame::<Request>(&mut s.recv).await {
            Ok(Some(r)) => r,
            Ok(None) => return,
            Err(e) => {
                tracing::warn!(remote = %s.remote, error = %e, "bad RPC frame");
                let _ =
                    write_frame(&mut s.send, &error(ErrorKind::BadRequest, e.to_string())).await;
                let _ = s.send.finish();
                return;
            }
        };
        let from_server = matches!(peer.identity, Identity::Server(_));
        if let Request::Watch { from } = req {
            self.watch(s, from).await;
            return;
        }
        let reply = self.handle(req, from_server, &peer.identity).await;
        if let Err(e) = write_frame(&mut s.send, &reply).await {
            tracing::debug!(remote = %s.remote, error = %e, "RPC reply not delivered");
        }
        let _ = s.send.finish();
    }

    fn ok(&self) -> Reply {
        Reply::Ok {
            leader: self.registry.leader().map(|(_, a)| a),
            servers: self.registry.peers().into_iter().map(|p| p.addr).collect(),
        }
    }

    async fn handle(&self, req: Request, from_server: bool, who: &Identity) -> Reply {
        match req {
            Request::Write(cmd) => self.write(cmd, !from_server).await,
            Request::ReadIndex => match self.read_index().await {
                Ok(i) => Reply::ReadIndex(i),
                Err(e) => error(ErrorKind::NoLeader, e.to_string()),
            },
            Request::Hello(info) => {
                if !from_server {
                    return error(ErrorKind::Forbidden, "only servers announce themselves");
                }
                let known = {
                    let mut k = self.known.lock().unwrap_or_else(PoisonError::into_inner);
                    k.insert(info);
                    k.iter().cloned().collect()
                };
                Reply::Hello {
                    me: self.me.clone(),
                    initialized: self.registry.is_initialized().await,
                    known,
                }
            }
            Request::JoinServer(info) => {
                if !from_server {
                    return error(ErrorKind::Forbidden, "only servers join the Raft cluster");
                }
                self.join_server(info).await
            }
            Request::Heartbeat(hb) => {
                if !speaks_for(who, &hb.node) {
                    return error(
                        ErrorKind::Forbidden,
                        format!(
                            "certificate of {who:?} may not heartbeat for node {}",
                            hb.node
                        ),
                    );
                }
                self.liveness.metrics.heartbeats_received.inc();
                self.liveness.record(hb, Duration::ZERO);
                self.ok()
            }
            Request::Liveness(seen) => {
                if !from_server {
                    return error(ErrorKind::Forbidden, "only servers report liveness");
                }
                for s in seen {
                    self.liveness
                        .record(s.heartbeat, Duration::from_millis(s.age_ms));
                }
                self.ok()
            }
            Request::Leave { node } => {
                if !(from_server || speaks_for(who, &node)) {
                    return error(
                        ErrorKind::Forbidden,
                        format!("{who:?} may not make {node} leave"),
                    );
                }
                self.leave(node).await
            }
            Request::RemovePeer { id, addr } => self.remove_peer(id, addr, from_server).await,
            Request::Peers => Reply::Peers(self.peer_infos()),
            Request::Watch { .. } => error(ErrorKind::BadRequest, "watch is a stream"),
            Request::SignLeaf {
                service,
                csr_pem,
                ttl_secs,
            } => match who {
                Identity::Node(n) | Identity::Server(n) => {
                    match self.sign_leaf(n, &service, &csr_pem, Duration::from_secs(ttl_secs)) {
                        Ok(cert_pem) => Reply::Leaf { cert_pem },
                        Err(e) => e,
                    }
                }
                Identity::Service(_) => error(ErrorKind::Forbidden, "not a node"),
            },
        }
    }

    /// An operator request made through this server's own API (acts as this server).
    pub async fn admin(&self, req: Request) -> Reply {
        let me = Identity::Server(self.me.node.clone());
        self.handle(req, false, &me).await
    }

    /// Writes locally on the leader; a follower forwards once to the leader (`may_forward` is
    /// false for requests that were already forwarded by a server).
    pub async fn write(&self, cmd: Command, may_forward: bool) -> Reply {
        if !self.registry.is_leader() {
            if !may_forward {
                return error(ErrorKind::NoLeader, "no cluster leader");
            }
            let addr = match self.leader_addr() {
                Ok(a) => a,
                Err(r) => return r,
            };
            return match self
                .client
                .request_to(addr, &Request::Write(cmd), REQUEST_TIMEOUT)
                .await
            {
                Ok(r) => r,
                // Never sent: the caller may retry.
                Err(e @ TransportError::Connect { .. }) => {
                    error(ErrorKind::NoLeader, format!("leader unreachable: {e}"))
                }
                Err(e) => error(
                    ErrorKind::Unknown,
                    format!("the leader did not answer; the write's outcome is unknown: {e}"),
                ),
            };
        }
        // A leader cut off from its quorum never commits: answer with an error rather than hang.
        match tokio::time::timeout(COMMIT_TIMEOUT, self.registry.write(cmd)).await {
            Ok(Ok(a)) => Reply::Written {
                index: a.index,
                response: a.response,
            },
            // Leadership moved before the entry was appended: nothing written, retryable.
            Ok(Err(WriteError::NotLeader { .. })) => {
                error(ErrorKind::NoLeader, "no cluster leader")
            }
            Ok(Err(WriteError::Shutdown)) => {
                error(ErrorKind::Unavailable, "server is shutting down")
            }
            Ok(Err(e)) => error(ErrorKind::NoLeader, e.to_string()),
            Err(_) => error(
                ErrorKind::Unknown,
                format!(
                    "not committed within {COMMIT_TIMEOUT:?} (no quorum reachable?); the write's \
                     outcome is unknown"
                ),
            ),
        }
    }

    /// The current leader's QUIC address, or the error to answer with.
    fn leader_addr(&self) -> Result<SocketAddr, Reply> {
        let Some((_, addr)) = self.registry.leader() else {
            return Err(error(ErrorKind::NoLeader, "no cluster leader"));
        };
        addr.parse().map_err(|_| {
            error(
                ErrorKind::NoLeader,
                format!("leader address {addr:?} is invalid"),
            )
        })
    }

    /// The leader's read index, asked of the leader when this server follows.
    pub async fn read_index(&self) -> Result<u64, ReadError> {
        match self.registry.read_index().await {
            Err(ReadError::NotLeader { leader: Some(addr) }) => {
                let parsed: SocketAddr = addr
                    .parse()
                    .map_err(|_| ReadError::Raft(format!("leader address {addr:?} is invalid")))?;
                match self
                    .client
                    .request_to(parsed, &Request::ReadIndex, REQUEST_TIMEOUT)
                    .await
                {
                    Ok(Reply::ReadIndex(i)) => Ok(i),
                    Ok(Reply::Error { message, .. }) => Err(ReadError::Raft(message)),
                    Ok(_) => Err(ReadError::Raft("unexpected answer from the leader".into())),
                    Err(e) => Err(ReadError::Raft(format!("asking the leader: {e}"))),
                }
            }
            other => other,
        }
    }

    async fn join_server(&self, info: ServerInfo) -> Reply {
        if self.registry.is_leader() {
            match self.registry.add_server(info.id, info.addr.clone()).await {
                Ok(()) => self.ok(),
                Err(e) => admin_error(e),
            }
        } else {
            let addr = match self.leader_addr() {
                Ok(a) => a,
                Err(r) => return r,
            };
            match self
                .client
                .request_to(addr, &Request::JoinServer(info), Duration::from_secs(130))
                .await
            {
                Ok(r) => r,
                Err(e) => error(
                    ErrorKind::NoLeader,
                    format!("forwarding to the leader: {e}"),
                ),
            }
        }
    }

    async fn leave(&self, node: String) -> Reply {
        let member = self.registry.read().member(&node).cloned();
        let Some(m) = member else {
            return error(ErrorKind::BadRequest, format!("no member named {node}"));
        };
        let cmd = Command::MemberSet {
            name: m.name.clone(),
            addr: m.addr.clone(),
            role: m.role,
            status: MemberStatus::Left,
            datacenter: m.datacenter.clone(),
        };
        match self.write(cmd, true).await {
            Reply::Written { .. } => {
                tracing::info!(%node, "member left");
                self.ok()
            }
            other => other,
        }
    }

    async fn remove_peer(&self, id: Option<u64>, addr: Option<String>, from_server: bool) -> Reply {
        let peers = self.registry.peers();
        let target = peers
            .iter()
            .find(|p| Some(p.id) == id || addr.as_deref() == Some(p.addr.as_str()));
        let Some(target) = target else {
            return error(
                ErrorKind::BadRequest,
                format!("no server with id {id:?} / address {addr:?} in the Raft configuration"),
            );
        };
        if self.registry.is_leader() {
            return match self.registry.remove_server(target.id).await {
                Ok(()) => self.ok(),
                Err(e) => admin_error(e),
            };
        }
        if from_server {
            return error(ErrorKind::NoLeader, "not the leader");
        }
        let leader = match self.leader_addr() {
            Ok(a) => a,
            Err(r) => return r,
        };
        let req = Request::RemovePeer {
            id: Some(target.id),
            addr: None,
        };
        match self.client.request_to(leader, &req, REQUEST_TIMEOUT).await {
            Ok(r) => r,
            Err(e) => error(
                ErrorKind::NoLeader,
                format!("forwarding to the leader: {e}"),
            ),
        }
    }

    /// The Raft configuration with node names from the members table.
    pub fn peer_infos(&self) -> Vec<PeerInfo> {
        let state = self.registry.read();
        let known = self.known.lock().unwrap_or_else(PoisonError::into_inner);
        self.registry
            .peers()
            .into_iter()
            .map(|p| {
                let node = state
                    .members()
                    .find(|m| m.addr == p.addr)
                    .map(|m| m.name.clone())
                    .or_else(|| known.iter().find(|k| k.id == p.id).map(|k| k.node.clone()))
                    .unwrap_or_default();
                PeerInfo {
                    id: p.id,
                    node,
                    addr: p.addr,
                    leader: p.leader,
                    voter: p.voter,
                }
            })
            .collect()
    }

    /// Streams the registry to an agent: a snapshot when it has nothing (or is too far
    /// behind), then the applied commands as they come.
    async fn watch(&self, mut s: Incoming, mut from: u64) {
        self.watchers.inc();
        let _guard = GaugeGuard(self.watchers.clone());
        let mut applied = self.registry.subscribe();
        loop {
            let changes = if from == 0 {
                None
            } else {
                match self.registry.changes_since(from, WATCH_BATCH) {
                    Ok(c) => Some(c),
                    Err(gap) => {
                        tracing::debug!(remote = %s.remote, %gap, "watcher too far behind; sending a snapshot");
                        None
                    }
                }
            };
            let (bytes, more) = match changes {
                None => match self.snapshot_frame().await {
                    Ok((bytes, index)) => {
                        from = index;
                        (bytes, false)
                    }
                    Err(e) => {
                        tracing::warn!(error = %e, "cannot encode a snapshot for a watcher");
                        return;
                    }
                },
                Some((entries, upto)) => {
                    let more = entries.len() == WATCH_BATCH;
                    from = from.max(upto);
                    let msg = WatchFrame::Changes {
                        entries,
                        upto,
                        leader: self.registry.leader().map(|(_, a)| a),
                    };
                    match frame::encode(&msg) {
                        Ok(b) => (Arc::new(b), more),
                        Err(e) => {
                            tracing::warn!(error = %e, "cannot encode changes for a watcher");
                            return;
                        }
                    }
                }
            };
            if let Err(e) = write_encoded(&mut s.send, &bytes).await {
                tracing::debug!(remote = %s.remote, error = %e, "watcher gone");
                return;
            }
            if more {
                continue;
            }
            // Wait for something new, a keepalive tick, or shutdown.
            tokio::select! {
                _ = self.cancel.cancelled() => {
                    let _ = s.send.finish();
                    return;
                }
                r = applied.wait_for(|a| *a > from) => if r.is_err() { return },
                _ = tokio::time::sleep(WATCH_KEEPALIVE) => {}
            }
        }
    }

    /// A watch snapshot frame (redacted state image) and its index. Built and encoded on the
    /// blocking pool, and shared by the watchers that ask at the same index (agents starting
    /// together, or reconnecting after a server died).
    async fn snapshot_frame(&self) -> Result<(Arc<Vec<u8>>, u64), String> {
        let current = self.registry.applied_index();
        if let Some((bytes, index)) = &*self
            .snapshot_cache
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
        {
            if *index == current {
                return Ok((bytes.clone(), *index));
            }
        }
        let registry = self.registry.clone();
        let built = tokio::task::spawn_blocking(move || {
            let (image, index) = registry.redacted_image();
            let msg = WatchFrame::Snapshot {
                image: Box::new(image),
                index,
            };
            frame::encode(&msg).map(|b| (Arc::new(b), index))
        })
        .await
        .map_err(|e| format!("snapshot task failed: {e}"))?
        .map_err(|e| e.to_string())?;
        *self
            .snapshot_cache
            .lock()
            .unwrap_or_else(PoisonError::into_inner) = Some(built.clone());
        Ok(built)
    }

    /// Enrollment: an agent without a certificate presents the join token and a CSR.
    async fn serve_join(&self, mut s: Incoming) {
        let req = match read_frame::<EnrollRequest>(&mut s.recv).await {
            Ok(Some(r)) => r,
            Ok(None) => return,
            Err(e) => {
                tracing::warn!(remote = %s.remote, error = %e, "bad enrollment frame");
                return;
            }
        };
        let reply = self.enroll(&req);
        match &reply {
            EnrollReply::Enrolled { .. } => {
                tracing::info!(remote = %s.remote, node = %req.node, "enrolled an agent")
            }
            EnrollReply::Error { message, .. } => {
                tracing::warn!(remote = %s.remote, node = %req.node, reason = %message, "refused an enrollment")
            }
        }
        let _ = write_frame(&mut s.send, &reply).await;
        let _ = s.send.finish();
    }

    fn enroll(&self, req: &EnrollRequest) -> EnrollReply {
        let refuse = |kind, message: String| EnrollReply::Error { kind, message };
        let Some(expected) = &self.join_token else {
            return refuse(
                ErrorKind::Forbidden,
                "this cluster accepts no join token (set join_token on the servers)".into(),
            );
        };
        if !constant_time_eq(expected.as_bytes(), req.token.as_bytes()) {
            return refuse(ErrorKind::Forbidden, "invalid join token".into());
        }
        if let Err(e) = ca::validate_node_name(&req.node) {
            return refuse(
                ErrorKind::BadRequest,
                format!("node name {:?}: {e}", req.node),
            );
        }
        if req.datacenter != self.datacenter {
            return refuse(
                ErrorKind::BadRequest,
                format!(
                    "agent datacenter {:?} is not this cluster's {:?}",
                    req.datacenter, self.datacenter
                ),
            );
        }
        let bundle = match self.signing_root() {
            Ok(b) => b,
            Err(message) => return refuse(ErrorKind::Unavailable, message),
        };
        match ca::sign_node_csr(
            &bundle,
            &req.csr_pem,
            &req.node,
            &self.datacenter,
            NODE_CERT_DAYS,
        ) {
            Ok(cert_pem) => EnrollReply::Enrolled {
                cert_pem,
                ca_pem: bundle.cert_pem,
                servers: self.registry.peers().into_iter().map(|p| p.addr).collect(),
            },
            Err(e) => refuse(ErrorKind::BadRequest, format!("CSR refused: {e}")),
        }
    }
}

impl ServerCtx {
    /// The active root with its key, to sign with.
    fn signing_root(&self) -> Result<CaBundle, String> {
        let st = self.registry.read();
        match st.active_ca_root().filter(|r| !r.key_pem.is_empty()) {
            Some(root) => Ok(CaBundle {
                cert_pem: root.cert_pem.clone(),
                key_pem: root.key_pem.clone(),
                trust_domain: root.trust_domain.clone(),
            }),
            None => Err("the cluster has no CA key yet (bootstrapping); retry".into()),
        }
    }

    /// Signs a leaf for `service` if an instance of it is registered on `node`.
    pub fn sign_leaf(
        &self,
        node: &str,
        service: &str,
        csr_pem: &str,
        ttl: Duration,
    ) -> Result<String, Reply> {
        let registered = self
            .registry
            .read()
            .node_services(node)
            .any(|s| s.service == service);
        if !registered {
            return Err(error(
                ErrorKind::Forbidden,
                format!("service {service:?} is not registered on node {node:?}"),
            ));
        }
        let bundle = self
            .signing_root()
            .map_err(|m| error(ErrorKind::Unavailable, m))?;
        ca::sign_service_csr(&bundle, csr_pem, service, ttl)
            .map_err(|e| error(ErrorKind::BadRequest, format!("leaf refused: {e}")))
    }
}

/// Whether a peer with this identity may act for `node` (heartbeat, leave): the node's own
/// certificate, or the server certificate of a server with that node name.
fn speaks_for(who: &Identity, node: &str) -> bool {
    match who {
        Identity::Node(n) | Identity::Server(n) => n == node,
        Identity::Service(_) => false,
    }
}

fn admin_error(e: AdminError) -> Reply {
    match e {
        AdminError::NotLeader { .. } => error(ErrorKind::NoLeader, e.to_string()),
        AdminError::Refused(m) => error(ErrorKind::BadRequest, m),
        AdminError::Raft(m) => error(ErrorKind::NoLeader, m),
    }
}

/// Compares secrets in time independent of where they differ.
fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    let mut diff = u8::from(a.len() != b.len());
    for (i, x) in a.iter().enumerate() {
        diff |= x ^ b.get(i).copied().unwrap_or(0);
    }
    diff == 0
}

struct GaugeGuard(Gauge);

impl Drop for GaugeGuard {
    fn drop(&mut self) {
        self.0.dec();
    }
}
