//! Pooled connections to the service instances on this host: HTTP/1.1 keep-alive connections
//! (an idle one is reused, else a new one is opened; at most [`MAX_IDLE`] kept per instance)
//! and one multiplexed HTTP/2 connection per instance (prior knowledge; `http2` and `grpc`
//! services). Connections come from the one [`connect_local`] of the connector.
//!
//! A connection's task ends when the connection does: its peer closes it, or every handle to
//! it is dropped while it is idle.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Mutex, PoisonError};

use http::{Request, Response, Uri};
use hyper::body::Incoming;
use hyper::client::conn::{http1, http2};
use hyper_util::rt::{TokioExecutor, TokioIo};

use super::Body;
use crate::proxy::connect::{connect_local, ConnectError};

/// Idle HTTP/1.1 connections kept per instance.
const MAX_IDLE: usize = 64;

#[derive(Debug, thiserror::Error)]
pub enum PoolError {
    /// No connection could be made: nothing of the request was sent.
    #[error("{0}")]
    Connect(#[from] ConnectError),
    #[error("HTTP handshake with {0}: {1}")]
    Handshake(SocketAddr, hyper::Error),
    /// The request was sent, or may have been.
    #[error("request to {0}: {1}")]
    Request(SocketAddr, hyper::Error),
}

#[derive(Default)]
pub struct Pool {
    h1: Mutex<HashMap<SocketAddr, Vec<http1::SendRequest<Body>>>>,
    h2: Mutex<HashMap<SocketAddr, http2::SendRequest<Body>>>,
}

/// A connection checked out of the pool, ready for one request.
pub enum Sender<'a> {
    H1(&'a Pool, SocketAddr, http1::SendRequest<Body>),
    H2(SocketAddr, http2::SendRequest<Body>),
}

impl Pool {
    /// A connection to the instance at `addr`, in HTTP/2 when `h2`, else HTTP/1.1: nothing of
    /// a request is consumed until [`Sender::send`], so a failure here may be retried elsewhere.
    pub async fn checkout(&self, addr: SocketAddr, h2: bool) -> Result<Sender<'_>, PoolError> {
        Ok(if h2 {
            Sender::H2(addr, self.h2_sender(addr).await?)
        } else {
            Sender::H1(self, addr, self.h1_sender(addr).await?)
        })
    }

    async fn h1_sender(&self, addr: SocketAddr) -> Result<http1::SendRequest<Body>, PoolError> {
        {
            let mut idle = self.h1.lock().unwrap_or_else(PoisonError::into_inner);
            if let Some(list) = idle.get_mut(&addr) {
                list.retain(|s| !s.is_closed());
                if let Some(i) = list.iter().position(|s| s.is_ready()) {
                    return Ok(list.swap_remove(i));
                }
            }
        }
        let tcp = connect_local(addr).await?;
        let (sender, conn) = http1::Builder::new()
            .handshake(TokioIo::new(tcp))
            .await
            .map_err(|e| PoolError::Handshake(addr, e))?;
        tokio::spawn(async move {
            if let Err(e) = conn.await {
                tracing::debug!(%addr, error = %e, "HTTP/1.1 connection to a local instance ended");
            }
        });
        Ok(sender)
    }

    fn checkin(&self, addr: SocketAddr, sender: http1::SendRequest<Body>) {
        let mut idle = self.h1.lock().unwrap_or_else(PoisonError::into_inner);
        let list = idle.entry(addr).or_default();
        if list.len() < MAX_IDLE && !sender.is_closed() {
            list.push(sender);
        }
    }

    async fn h2_sender(&self, addr: SocketAddr) -> Result<http2::SendRequest<Body>, PoolError> {
        if let Some(s) = self
            .h2
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .get(&addr)
            .filter(|s| !s.is_closed())
        {
            return Ok(s.clone());
        }
        let tcp = connect_local(addr).await?;
        let (sender, conn) = http2::Builder::new(TokioExecutor::new())
            .handshake(TokioIo::new(tcp))
            .await
            .map_err(|e| PoolError::Handshake(addr, e))?;
        tokio::spawn(async move {
            if let Err(e) = conn.await {
                tracing::debug!(%addr, error = %e, "HTTP/2 connection to a local instance ended");
            }
        });
        self.h2
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .insert(addr, sender.clone());
        Ok(sender)
    }
}

impl Sender<'_> {
    /// Sends `req`. Its URI may be in any form: it is made what the version needs (origin form
    /// and `Host` for HTTP/1.1, absolute for HTTP/2).
    pub async fn send(self, mut req: Request<Body>) -> Result<Response<Incoming>, PoolError> {
        let addr = match &self {
            Sender::H1(_, a, _) | Sender::H2(a, _) => *a,
        };
        let authority = req
            .headers()
            .get(http::header::HOST)
            .and_then(|h| h.to_str().ok())
            .map(str::to_string)
            .or_else(|| req.uri().authority().map(|a| a.to_string()))
            .unwrap_or_else(|| addr.to_string());
        let path = req
            .uri()
            .path_and_query()
            .map(|p| p.as_str().to_string())
            .unwrap_or_else(|| "/".into());
        match self {
            Sender::H2(_, mut sender) => {
                req.headers_mut().remove(http::header::HOST);
                *req.uri_mut() = Uri::builder()
                    .scheme("http")
                    .authority(authority.as_str())
                    .path_and_query(path.as_str())
                    .build()
                    .unwrap_or_else(|_| Uri::from_static("/"));
                *req.version_mut() = http::Version::HTTP_2;
                sender
                    .send_request(req)
                    .await
                    .map_err(|e| PoolError::Request(addr, e))
            }
            Sender::H1(pool, _, mut sender) => {
                if !req.headers().contains_key(http::header::HOST) {
                    if let Ok(v) = http::HeaderValue::from_str(&authority) {
                        req.headers_mut().insert(http::header::HOST, v);
                    }
                }
                *req.uri_mut() = path.parse().unwrap_or_else(|_| Uri::from_static("/"));
                *req.version_mut() = http::Version::HTTP_11;
                let resp = sender.send_request(req).await;
                // Back in the pool: ready again once this response's body is read.
                pool.checkin(addr, sender);
                resp.map_err(|e| PoolError::Request(addr, e))
            }
        }
    }
}
