//! RPC to the servers (ALPN `meshd-rpc/1`) with failover: agents send every request through
//! it, servers use it to forward to the leader. It keeps the known server addresses (the join
//! list plus those servers report) and prefers the last one that answered.

use std::net::SocketAddr;
use std::sync::{Mutex, PoisonError};
use std::time::Duration;

use std::sync::Arc;
use tokio::time::Instant;

use super::proto::{Reply, Request};
use crate::transport::{Transport, TransportError, ALPN_RPC};

/// Bound of one request (a write waits for a commit; a read index for a quorum).
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);

#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error("no server reachable (tried {tried}): {last}")]
    Unreachable { tried: usize, last: String },
    #[error("{0}")]
    Transport(#[from] TransportError),
}

struct Known {
    servers: Vec<SocketAddr>,
    preferred: Option<SocketAddr>,
    leader: Option<String>,
    last_contact: Option<Instant>,
}

pub struct ClusterClient {
    transport: Arc<Transport>,
    known: Mutex<Known>,
    started: Instant,
}

impl ClusterClient {
    pub fn new(transport: Arc<Transport>, servers: Vec<SocketAddr>) -> ClusterClient {
        ClusterClient {
            transport,
            known: Mutex::new(Known {
                servers,
                preferred: None,
                leader: None,
                last_contact: None,
            }),
            started: Instant::now(),
        }
    }

    pub fn transport(&self) -> &Arc<Transport> {
        &self.transport
    }

    fn known(&self) -> std::sync::MutexGuard<'_, Known> {
        self.known.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Servers in the order to try them: the preferred one first.
    pub fn servers(&self) -> Vec<SocketAddr> {
        let k = self.known();
        let mut list = k.servers.clone();
        if let Some(p) = k.preferred {
            list.retain(|a| *a != p);
            list.insert(0, p);
        }
        list
    }

    /// Adds server addresses learned from a server's answer.
    pub fn learn(&self, servers: &[String], leader: Option<&str>) {
        let mut k = self.known();
        for s in servers {
            if let Ok(a) = s.parse::<SocketAddr>() {
                if !k.servers.contains(&a) {
                    k.servers.push(a);
                }
            }
        }
        k.leader = leader.map(str::to_string);
        k.last_contact = Some(Instant::now());
    }

    /// Marks `addr` as answering (and preferred).
    pub fn answered(&self, addr: SocketAddr) {
        let mut k = self.known();
        k.preferred = Some(addr);
        k.last_contact = Some(Instant::now());
    }

    /// The leader last reported, and the time since a server last answered.
    pub fn leader(&self) -> (Option<String>, Duration) {
        let k = self.known();
        let since = k.last_contact.unwrap_or(self.started).elapsed();
        (k.leader.clone(), since)
    }

    /// Sends `req` to one server.
    pub async fn request_to(
        &self,
        addr: SocketAddr,
        req: &Request,
        timeout: Duration,
    ) -> Result<Reply, TransportError> {
        let reply = self.transport.call(addr, ALPN_RPC, req, timeout).await?;
        self.answered(addr);
        if let Reply::Ok { leader, servers } = &reply {
            self.learn(servers, leader.as_deref());
        }
        Ok(reply)
    }

    /// Sends `req` to the first server that can be reached. A server that could not be
    /// connected to is skipped; once the request was sent, its answer (or failure) is final,
    /// so a write is never sent twice.
    pub async fn request(&self, req: &Request, timeout: Duration) -> Result<Reply, ClientError> {
        let servers = self.servers();
        let mut last = String::from("no server address known");
        for addr in &servers {
            match self.request_to(*addr, req, timeout).await {
                Ok(r) => return Ok(r),
                Err(e @ TransportError::Connect { .. }) => {
                    tracing::debug!(%addr, error = %e, "server unreachable; trying the next");
                    last = e.to_string();
                }
                Err(e) => return Err(ClientError::Transport(e)),
            }
        }
        Err(ClientError::Unreachable {
            tried: servers.len(),
            last,
        })
    }
}
