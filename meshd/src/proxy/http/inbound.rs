//! The destination side of one HTTP exchange on a tunnel stream (the caller's identity was
//! checked against the intentions before, by [`proxy::inbound`](crate::proxy::inbound)): the
//! request is read from its frames and sent to the local instance over a pooled connection
//! (HTTP/2 for `http2` and `grpc` services, else HTTP/1.1), and the response is framed back
//! as it comes. A reset on either side is passed on as a reset; an upgrade handshake that the
//! instance accepts turns the stream into the connection's bytes.

use std::net::SocketAddr;
use std::sync::Arc;

use http::{Request, Response, StatusCode};

use super::body::{self, framed, pump, RESET};
use super::frame::{self, FrameReader, ResponseHead};
use super::upgrade::{handshake_local, Upstream};
use super::{error_response, strip_hop_by_hop, Body};
use crate::proxy::connect::{connect_local, Stream};
use crate::proxy::metrics::{Pair, Request as RequestLabels};
use crate::proxy::Inner;

/// Serves one exchange for the instance at `instance`, from `pair.source`.
pub async fn serve(
    inner: Arc<Inner>,
    mut send: quinn::SendStream,
    recv: quinn::RecvStream,
    instance: SocketAddr,
    h2: bool,
    pair: &Pair,
) {
    let mut reader = FrameReader::new(recv);
    let head = match reader
        .head()
        .await
        .and_then(|p| frame::parse_request_head(&p))
    {
        Ok(h) => h,
        Err(e) => {
            tracing::debug!(error = %e, "bad exchange from a caller");
            let _ = send.reset(RESET.into());
            return;
        }
    };
    let mut req = Request::new(body::empty());
    *req.method_mut() = head.method;
    *req.uri_mut() = match head.path.parse() {
        Ok(u) => u,
        Err(e) => {
            let r = error_response(StatusCode::BAD_REQUEST, "bad_request", format!("{e}"));
            return respond(&mut send, r).await;
        }
    };
    *req.headers_mut() = head.headers;
    let head_end = head.end;
    if super::upgrade::is_upgrade(&req) {
        return upgrade(send, reader, req, instance).await;
    }
    strip_hop_by_hop(req.headers_mut());
    let req = if head_end {
        req
    } else {
        req.map(|_| framed(reader))
    };
    let resp = match inner.pool.checkout(instance, h2).await {
        Ok(sender) => match sender.send(req).await {
            Ok(r) => r.map(super::boxed),
            Err(e) => {
                tracing::debug!(%instance, error = %e, "local instance failed the request");
                let _ = send.reset(RESET.into());
                return;
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
    respond(&mut send, resp).await;
}

/// Frames `resp` back: its head, then its body as it comes.
async fn respond(send: &mut quinn::SendStream, resp: Response<Body>) {
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
        return;
    }
    if end {
        let _ = send.finish();
        return;
    }
    if let Err(e) = pump(body, send).await {
        tracing::debug!(error = %e, "response body not delivered");
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
            return respond(&mut send, r).await;
        }
    };
    let (resp, upstream) = match handshake_local(tcp, req).await {
        Ok(r) => r,
        Err(e) => {
            let r = error_response(StatusCode::BAD_GATEWAY, "upstream_reset", e);
            return respond(&mut send, r).await;
        }
    };
    let Some(Upstream::Local(mut up)) = upstream else {
        return respond(&mut send, resp).await;
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
