//! The upgrade layer: a request that asks to leave HTTP (`Connection: upgrade` with an
//! `Upgrade` header, WebSocket's handshake; or `CONNECT`) is sent to one endpoint over a
//! connection of its own (never a pooled one), and once the endpoint agrees (101, or 2xx to a
//! `CONNECT`) the caller's connection and the endpoint's are spliced as byte streams. Across
//! hosts the exchange's tunnel stream carries the handshake's frames, then the bytes.

use std::convert::Infallible;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use http::{Method, Request, Response, StatusCode};
use hyper_util::rt::TokioIo;

use super::frame::{self, FrameReader, RequestHead, ResponseHead};
use super::route::Chosen;
use super::{body, boxed, error_response, Body};
use crate::proxy::connect::Stream;
use crate::proxy::outbound::Call;
use crate::proxy::tunnel::Mode;
use crate::proxy::Inner;

/// Whether `req` asks to leave HTTP.
pub fn is_upgrade<B>(req: &Request<B>) -> bool {
    if req.method() == Method::CONNECT {
        return true;
    }
    req.headers().contains_key(http::header::UPGRADE)
        && req
            .headers()
            .get_all(http::header::CONNECTION)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .any(|v| {
                v.split(',')
                    .any(|t| t.trim().eq_ignore_ascii_case("upgrade"))
            })
}

/// Whether the endpoint agreed to leave HTTP.
pub fn agreed(method: &Method, status: StatusCode) -> bool {
    status == StatusCode::SWITCHING_PROTOCOLS || (method == Method::CONNECT && status.is_success())
}

#[derive(Clone)]
pub struct UpgradeLayer {
    inner: Arc<Inner>,
    call: Arc<Call>,
}

impl UpgradeLayer {
    pub fn new(inner: Arc<Inner>, call: Arc<Call>) -> UpgradeLayer {
        UpgradeLayer { inner, call }
    }
}

impl<S> tower::Layer<S> for UpgradeLayer {
    type Service = Upgrade<S>;

    fn layer(&self, next: S) -> Upgrade<S> {
        Upgrade {
            next,
            inner: self.inner.clone(),
            call: self.call.clone(),
        }
    }
}

#[derive(Clone)]
pub struct Upgrade<S> {
    next: S,
    inner: Arc<Inner>,
    call: Arc<Call>,
}

type BoxFuture<T> = Pin<Box<dyn Future<Output = T> + Send>>;

impl<S> tower::Service<Request<Body>> for Upgrade<S>
where
    S: tower::Service<Request<Body>, Response = Response<Body>, Error = Infallible>,
    S::Future: Send + 'static,
{
    type Response = Response<Body>;
    type Error = Infallible;
    type Future = BoxFuture<Result<Response<Body>, Infallible>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        self.next.poll_ready(cx)
    }

    fn call(&mut self, req: Request<Body>) -> Self::Future {
        if !is_upgrade(&req) {
            return Box::pin(self.next.call(req));
        }
        let (inner, call) = (self.inner.clone(), self.call.clone());
        Box::pin(async move { Ok(upgrade(inner, call, req).await) })
    }
}

async fn upgrade(inner: Arc<Inner>, call: Arc<Call>, mut req: Request<Body>) -> Response<Body> {
    let dest = &call.destination;
    let target = req
        .extensions()
        .get::<Chosen>()
        .and_then(|c| dest.routes.as_ref()?.targets.get(&c.0));
    let Some(target) = target else {
        return error_response(
            StatusCode::SERVICE_UNAVAILABLE,
            "no_route",
            "no target".into(),
        );
    };
    let Some(i) = target.set.pick(&[], call.peer.ip()) else {
        return error_response(
            StatusCode::SERVICE_UNAVAILABLE,
            "no_healthy_upstream",
            format!("no healthy endpoint of {}", target.id),
        );
    };
    let ep = target.set.endpoint(i);
    let caller_side = hyper::upgrade::on(&mut req);
    let stream = match inner
        .connect(call.source.as_deref(), &target.service, ep, Mode::Http)
        .await
    {
        Ok(s) => s,
        Err(e) => return error_response(StatusCode::BAD_GATEWAY, "connect_failed", e.to_string()),
    };
    let (resp, upstream) = match stream {
        Stream::Tcp(tcp) => match handshake_local(tcp, req).await {
            Ok(r) => r,
            Err(e) => return error_response(StatusCode::BAD_GATEWAY, "upstream_reset", e),
        },
        Stream::Tunnel(send, recv) => match handshake_tunnel(send, recv, req).await {
            Ok(r) => r,
            Err(e) => return error_response(StatusCode::BAD_GATEWAY, "upstream_reset", e),
        },
    };
    if let Some(upstream) = upstream {
        inner.tasks.spawn(async move {
            match caller_side.await {
                Ok(up) => {
                    let mut caller = TokioIo::new(up);
                    let mut upstream = upstream;
                    if let Err(e) = upstream.splice(&mut caller).await {
                        tracing::debug!(error = %e, "upgraded connection ended");
                    }
                }
                Err(e) => tracing::debug!(error = %e, "the caller's upgrade failed"),
            }
        });
    }
    resp
}

/// The endpoint's side of an upgraded connection.
pub enum Upstream {
    Local(TokioIo<hyper::upgrade::Upgraded>),
    Tunnel(Stream),
}

impl Upstream {
    async fn splice<T>(&mut self, caller: &mut T) -> std::io::Result<(u64, u64)>
    where
        T: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
    {
        match self {
            Upstream::Local(u) => tokio::io::copy_bidirectional(caller, u).await,
            Upstream::Tunnel(s) => tokio::io::copy_bidirectional(caller, s).await,
        }
    }
}

/// Sends the handshake to an instance over a connection of its own; the response, and the
/// instance's side of the connection when it agreed.
pub async fn handshake_local(
    tcp: tokio::net::TcpStream,
    mut req: Request<Body>,
) -> Result<(Response<Body>, Option<Upstream>), String> {
    let (mut sender, conn) = hyper::client::conn::http1::Builder::new()
        .handshake(TokioIo::new(tcp))
        .await
        .map_err(|e| e.to_string())?;
    tokio::spawn(conn.with_upgrades());
    let path = req
        .uri()
        .path_and_query()
        .map_or_else(|| "/".to_string(), |p| p.as_str().to_string());
    if req.method() != Method::CONNECT {
        *req.uri_mut() = path
            .parse()
            .map_err(|e: http::uri::InvalidUri| e.to_string())?;
    }
    *req.version_mut() = http::Version::HTTP_11;
    let method = req.method().clone();
    let mut resp = sender.send_request(req).await.map_err(|e| e.to_string())?;
    if !agreed(&method, resp.status()) {
        return Ok((resp.map(boxed), None));
    }
    let upgraded = hyper::upgrade::on(&mut resp)
        .await
        .map_err(|e| e.to_string())?;
    let (parts, _) = resp.into_parts();
    Ok((
        Response::from_parts(parts, body::empty()),
        Some(Upstream::Local(TokioIo::new(upgraded))),
    ))
}

/// Sends the handshake as an exchange on a tunnel stream (head only, no finish: the stream
/// carries the bytes after).
async fn handshake_tunnel(
    mut send: quinn::SendStream,
    recv: quinn::RecvStream,
    req: Request<Body>,
) -> Result<(Response<Body>, Option<Upstream>), String> {
    let (parts, _) = req.into_parts();
    let method = parts.method.clone();
    let head = RequestHead {
        method: parts.method,
        path: parts
            .uri
            .path_and_query()
            .map_or_else(|| "/".to_string(), |p| p.as_str().to_string()),
        headers: parts.headers,
        end: false,
    };
    send.write_all(&frame::request_head(&head))
        .await
        .map_err(|e| e.to_string())?;
    let mut reader = FrameReader::new(recv);
    let p = reader.head().await.map_err(|e| e.to_string())?;
    let ResponseHead {
        status, headers, ..
    } = frame::parse_response_head(&p).map_err(|e| e.to_string())?;
    let (body, upstream) = if agreed(&method, status) {
        let stream = Stream::Tunnel(send, reader.into_inner());
        (body::empty(), Some(Upstream::Tunnel(stream)))
    } else {
        let _ = send.finish();
        (body::framed(reader), None)
    };
    let mut resp = Response::new(body);
    *resp.status_mut() = status;
    *resp.headers_mut() = headers;
    Ok((resp, upstream))
}
