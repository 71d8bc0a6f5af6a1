//! The destination side of HTTP exchanges on a tunnel stream (the caller's identity was
//! checked against the intentions when the stream opened, by
//! [`proxy::inbound`](crate::proxy::inbound), and is checked again for every later exchange
//! on a stream that carries several): the request is read from its frames and sent to the
//! local instance over a pooled connection (HTTP/2 for `http2` and `grpc` services, else
//! HTTP/1.1), and the response is framed back as it comes. A reset on either side is passed
//! on as a reset; an upgrade handshake that the instance accepts turns the stream into the
//! connection's bytes. A stream of several exchanges ends when the caller finishes it, after
//! [`IDLE`] without a request, or at shutdown.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use http::{Request, Response, StatusCode};
use tokio::sync::oneshot;

use super::body::{self, framed_then, pump, pump_delimited, RESET};
use super::frame::{self, FrameError, FrameReader, RequestHead, ResponseHead};
use super::upgrade::{handshake_local, Upstream};
use super::{error_response, strip_hop_by_hop, Body};
use crate::proxy::connect::{connect_local, Stream};
use crate::proxy::metrics::{Pair, Request as RequestLabels};
use crate::proxy::Inner;

/// How long a stream of several exchanges waits for its next request. Longer than the caller
/// keeps a stream unused ([`streams::MAX_IDLE`](super::streams::MAX_IDLE)), so a caller never
/// sends on a stream this side is ending.
pub const IDLE: Duration = Duration::from_secs(60);

/// Serves the exchanges of a tunnel stream for the instance at `instance`, from
/// `pair.source`: one, or with `several` one after another, each time asking whether the
/// intentions still let the caller in (before every exchange but the first, which the
/// stream's opening checked).
pub async fn serve(
    inner: Arc<Inner>,
    mut send: quinn::SendStream,
    recv: quinn::RecvStream,
    instance: SocketAddr,
    h2: bool,
    pair: &Pair,
    several: Option<impl Fn() -> bool>,
) {
    let Some(allowed) = several else {
        let mut reader = FrameReader::new(recv);
        let read = reader.head().await;
        if let Some(head) = head_or_reset(read, &mut send) {
            exchange(&inner, send, reader, head, instance, h2, pair).await;
        }
        return;
    };
    let mut reader = FrameReader::delimited(recv);
    let idle = tokio::time::sleep(IDLE);
    tokio::pin!(idle);
    let mut first = true;
    loop {
        idle.as_mut().reset(tokio::time::Instant::now() + IDLE);
        let next = tokio::select! {
            biased;
            _ = inner.stopping.cancelled() => None,
            _ = &mut idle => None,
            r = reader.head() => Some(r),
        };
        let read = match next {
            None | Some(Err(FrameError::Ended)) => {
                let _ = send.finish();
                return;
            }
            Some(read) => read,
        };
        let Some(head) = head_or_reset(read, &mut send) else {
            return;
        };
        if !first && !allowed() {
            inner.metrics.denied.get_or_create(pair).inc();
            tracing::info!(source = %pair.source, destination = %pair.destination,
                "request denied: the intentions changed");
            let r = error_response(
                StatusCode::FORBIDDEN,
                "refused_by_destination",
                "denied by the intentions".into(),
            );
            if respond_framed(&mut send, r, true).await {
                let _ = send.finish();
            }
            return;
        }
        first = false;
        match exchange(&inner, send, reader, head, instance, h2, pair).await {
            Some((s, r)) => (send, reader) = (s, r),
            None => return,
        }
    }
}

/// The request head a read gave, parsed; a bad one resets the stream (`None`).
fn head_or_reset(
    read: Result<bytes::Bytes, FrameError>,
    send: &mut quinn::SendStream,
) -> Option<RequestHead> {
    match read.and_then(|p| frame::parse_request_head(&p)) {
        Ok(h) => Some(h),
        Err(e) => {
            tracing::debug!(error = %e, "bad exchange from a caller");
            let _ = send.reset(RESET.into());
            None
        }
    }
}

/// One exchange whose head was read: the request sent to the instance, the response framed
/// back. On a delimited stream whose two messages both ended cleanly, the stream comes back
/// for the next exchange; otherwise it has been finished or reset.
async fn exchange(
    inner: &Arc<Inner>,
    mut send: quinn::SendStream,
    mut reader: FrameReader<quinn::RecvStream>,
    head: RequestHead,
    instance: SocketAddr,
    h2: bool,
    pair: &Pair,
) -> Option<(quinn::SendStream, FrameReader<quinn::RecvStream>)> {
    let delimited = reader.is_delimited();
    let end = head.end;
    let req = match request(head) {
        Ok(r) => r,
        Err(e) => {
            let r = error_response(StatusCode::BAD_REQUEST, "bad_request", format!("{e}"));
            if respond_framed(&mut send, r, delimited).await && delimited {
                let _ = send.finish();
            }
            return None;
        }
    };
    if super::upgrade::is_upgrade(&req) {
        upgrade(send, reader, req, instance).await;
        return None;
    }
    // The stream's reader comes back when the request's body has been read to its end.
    let (req, waiting) = if end {
        reader.end_message();
        (req, Ok(reader))
    } else {
        let (tx, rx) = oneshot::channel();
        let body = framed_then(reader, move |r| {
            let _ = tx.send(r);
        });
        (req.map(|_| body), Err(rx))
    };
    let Some(resp) = forward(inner, req, instance, h2, pair).await else {
        let _ = send.reset(RESET.into());
        return None;
    };
    if !respond_framed(&mut send, resp, delimited).await || !delimited {
        return None;
    }
    let reader = match waiting {
        Ok(r) => r,
        Err(rx) => match rx.await {
            Ok(r) => r,
            Err(_) => {
                // The instance answered without reading the whole request.
                let _ = send.reset(RESET.into());
                return None;
            }
        },
    };
    Some((send, reader))
}

/// The request a head describes (an empty body: the caller puts the framed one in when the
/// head says one follows); an error when its path is not a URI.
fn request(head: RequestHead) -> Result<Request<Body>, http::uri::InvalidUri> {
    let mut req = Request::new(body::empty());
    *req.method_mut() = head.method;
    *req.uri_mut() = head.path.parse()?;
    *req.headers_mut() = head.headers;
    Ok(req)
}

/// Sends `req` to the local instance; `None` when the instance failed it (the caller resets
/// the stream). A pool failure is meshd's own 503.
async fn forward(
    inner: &Arc<Inner>,
    mut req: Request<Body>,
    instance: SocketAddr,
    h2: bool,
    pair: &Pair,
) -> Option<Response<Body>> {
    strip_hop_by_hop(req.headers_mut());
    let resp = match inner.pool.checkout(instance, h2).await {
        Ok(sender) => match sender.send(req).await {
            Ok(r) => r.map(super::boxed),
            Err(e) => {
                tracing::debug!(%instance, error = %e, "local instance failed the request");
                return None;
            }
        },
        Err(e) => error_response(
            StatusCode::SERVICE_UNAVAILABLE,
            "connect_failed",
            e.to_string(),
        ),
    };
    inner
        .metrics
        .requests
        .get_or_create(&RequestLabels {
            source: pair.source.clone(),
            destination: pair.destination.clone(),
            direction: "inbound",
            code: resp.status().as_u16(),
        })
        .inc();
    Some(resp)
}

/// Frames `resp`: its head, then its body as it comes; the message ends with its own frames
/// (`delimited`) or the stream's finish. Whether it was all written.
async fn respond_framed(
    send: &mut quinn::SendStream,
    resp: Response<Body>,
    delimited: bool,
) -> bool {
    let (parts, body) = resp.into_parts();
    let mut headers = parts.headers;
    strip_hop_by_hop(&mut headers);
    let end = http_body::Body::is_end_stream(&body);
    let head = ResponseHead {
        status: parts.status,
        headers,
        end,
    };
    if send.write_all(&frame::response_head(&head)).await.is_err() {
        return false;
    }
    if end {
        if !delimited {
            let _ = send.finish();
        }
        return true;
    }
    let pumped = if delimited {
        pump_delimited(body, send).await
    } else {
        pump(body, send).await
    };
    match pumped {
        Ok(_) => true,
        Err(e) => {
            tracing::debug!(error = %e, "response body not delivered");
            false
        }
    }
}

async fn upgrade(
    mut send: quinn::SendStream,
    reader: FrameReader<quinn::RecvStream>,
    req: Request<Body>,
    instance: SocketAddr,
) {
    let tcp = match connect_local(instance).await {
        Ok(t) => t,
        Err(e) => {
            let r = error_response(
                StatusCode::SERVICE_UNAVAILABLE,
                "connect_failed",
                e.to_string(),
            );
            respond_framed(&mut send, r, false).await;
            return;
        }
    };
    let (resp, upstream) = match handshake_local(tcp, req).await {
        Ok(r) => r,
        Err(e) => {
            let r = error_response(StatusCode::BAD_GATEWAY, "upstream_reset", e);
            respond_framed(&mut send, r, false).await;
            return;
        }
    };
    let Some(Upstream::Local(mut up)) = upstream else {
        respond_framed(&mut send, resp, false).await;
        return;
    };
    let head = ResponseHead {
        status: resp.status(),
        headers: resp.headers().clone(),
        end: false,
    };
    if send.write_all(&frame::response_head(&head)).await.is_err() {
        return;
    }
    let mut stream = Stream::Tunnel(send, reader.into_inner());
    if let Err(e) = tokio::io::copy_bidirectional(&mut stream, &mut up).await {
        tracing::debug!(error = %e, "upgraded connection ended");
    }
}
