//! The innermost layer: one request to one endpoint of the target the route layer chose.
//!
//! The endpoint is picked per request by the target's balancer, so the requests of one
//! keep-alive connection spread over the instances. An instance on this host gets the request
//! over a pooled connection ([`pool`](super::pool)); one on another host gets it as an
//! exchange on a stream of the caller's tunnel connection ([`frame`](super::frame)): one kept
//! from an earlier exchange with that instance ([`streams`](super::streams)) or a new one,
//! the request body written by a task while the response comes back. A failure to connect is
//! retried on another endpoint (nothing of the request was sent yet); a kept stream that its
//! host ended meanwhile, on a new stream.

use std::convert::Infallible;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use http::{Request, Response, StatusCode};

use tokio::sync::oneshot;

use super::body::{framed_then, pump_delimited};
use super::frame::{self, FrameError, FrameReader};
use super::route::Chosen;
use super::streams::{Kept, Key};
use super::{boxed, error_response, strip_hop_by_hop, Body};
use crate::proxy::connect::{ConnectError, Stream};
use crate::proxy::l4::MAX_ATTEMPTS;
use crate::proxy::metrics::{Dest, Request as RequestLabels};
use crate::proxy::outbound::Call;
use crate::proxy::tunnel::{Mode, Status};
use crate::proxy::Inner;

/// The client service of one caller connection.
#[derive(Clone)]
pub struct Client {
    inner: Arc<Inner>,
    call: Arc<Call>,
}

impl Client {
    pub fn new(inner: Arc<Inner>, call: Arc<Call>) -> Client {
        Client { inner, call }
    }
}

type BoxFuture<T> = Pin<Box<dyn Future<Output = T> + Send>>;

impl tower::Service<Request<Body>> for Client {
    type Response = Response<Body>;
    type Error = Infallible;
    type Future = BoxFuture<Result<Response<Body>, Infallible>>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, req: Request<Body>) -> Self::Future {
        let (inner, call) = (self.inner.clone(), self.call.clone());
        Box::pin(async move {
            let started = std::time::Instant::now();
            let resp = send(&inner, &call, req).await;
            let m = &inner.metrics;
            m.requests
                .get_or_create(&RequestLabels {
                    source: call.source_label.clone(),
                    destination: call.destination.service.clone(),
                    direction: "outbound",
                    code: resp.status().as_u16(),
                })
                .inc();
            m.request_seconds
                .get_or_create(&Dest {
                    destination: call.destination.service.clone(),
                })
                .observe(started.elapsed().as_secs_f64());
            Ok(resp)
        })
    }
}

/// Sends `req` to an endpoint of its chosen target; an error becomes meshd's own response.
async fn send(inner: &Arc<Inner>, call: &Call, mut req: Request<Body>) -> Response<Body> {
    let dest = &call.destination;
    let Some(chosen) = req.extensions_mut().remove::<Chosen>() else {
        return error_response(
            StatusCode::INTERNAL_SERVER_ERROR,
            "no_route",
            "no route was chosen".into(),
        );
    };
    let Some(target) = dest.routes.as_ref().and_then(|r| r.targets.get(&chosen.0)) else {
        return error_response(
            StatusCode::SERVICE_UNAVAILABLE,
            "no_healthy_upstream",
            format!("no target {:?}", chosen.0),
        );
    };
    let h2 = crate::proxy::decide::h2_upstream(dest.protocol);
    strip_hop_by_hop(req.headers_mut());
    let mut tried = Vec::new();
    let mut last = String::new();
    for _ in 0..MAX_ATTEMPTS {
        let Some(i) = target.set.pick(&tried, call.peer.ip()) else {
            break;
        };
        tried.push(i);
        let ep = target.set.endpoint(i);
        let _in_flight = target.set.start(i);
        match ep.quic {
            None => match inner.pool.checkout(ep.addr, h2).await {
                Ok(sender) => {
                    return match sender.send(req).await {
                        Ok(resp) => resp.map(boxed),
                        Err(e) => {
                            tracing::debug!(service = %target.service, error = %e, "request failed");
                            error_response(StatusCode::BAD_GATEWAY, "upstream_reset", e.to_string())
                        }
                    };
                }
                Err(e) => last = e.to_string(),
            },
            Some(quic) => {
                let (head, end) = request_head(&mut req);
                let key = Key {
                    quic,
                    source: call.source.clone(),
                    service: target.service.clone(),
                    instance: ep.instance.clone(),
                    port: ep.port,
                };
                if let Some(kept) = inner.streams.take(&key) {
                    inner.streams.count(true);
                    match on_kept(inner, key.clone(), kept, &head, req, end).await {
                        Ok(resp) => return resp,
                        Err(back) => req = back,
                    }
                }
                match inner
                    .connect_early(
                        call.source.as_deref(),
                        &target.service,
                        ep,
                        Mode::Exchanges,
                        &head,
                    )
                    .await
                {
                    Ok(Stream::Tunnel(send, recv)) => {
                        inner.streams.count(false);
                        let kept = Kept {
                            send,
                            reader: FrameReader::delimited(recv),
                        };
                        let body = (!end).then(|| req.into_body());
                        return exchange_delimited(inner, key, kept, body)
                            .await
                            .unwrap_or_else(upstream_reset);
                    }
                    Ok(Stream::Tcp(_)) => last = "a tunnel endpoint answered as local".into(),
                    Err(ConnectError::Final(status, why)) => {
                        let code = if status == Status::Denied {
                            StatusCode::FORBIDDEN
                        } else {
                            StatusCode::BAD_GATEWAY
                        };
                        return error_response(code, "refused_by_destination", why);
                    }
                    Err(ConnectError::Retry(why)) => last = why,
                }
            }
        }
        tracing::debug!(service = %target.service, node = %ep.node, error = %last,
            "endpoint failed; trying another");
    }
    if tried.is_empty() {
        return error_response(
            StatusCode::SERVICE_UNAVAILABLE,
            "no_healthy_upstream",
            format!("no healthy endpoint of {}", target.id),
        );
    }
    error_response(
        StatusCode::SERVICE_UNAVAILABLE,
        "connect_failed",
        format!("no endpoint of {} answered: {last}", target.id),
    )
}

/// The HEAD frame of `req` (given `Host` from the URI's authority when it has none), and
/// whether it is the whole request (no body follows).
pub fn request_head(req: &mut Request<Body>) -> (Vec<u8>, bool) {
    let end = http_body::Body::is_end_stream(req.body());
    if !req.headers().contains_key(http::header::HOST) {
        let host = req
            .uri()
            .authority()
            .and_then(|a| http::HeaderValue::from_str(a.as_str()).ok());
        if let Some(v) = host {
            req.headers_mut().insert(http::header::HOST, v);
        }
    }
    let path = req.uri().path_and_query().map_or("/", |p| p.as_str());
    let head = frame::encode_request_head(req.method(), path, req.headers(), end);
    (head, end)
}

/// An exchange on a kept stream. `Err` gives the request back, untouched, when the stream
/// proved dead before the destination could have acted on it (the head could not be written,
/// or the destination ended the stream without an answer): it then goes on a new stream.
async fn on_kept(
    inner: &Arc<Inner>,
    key: Key,
    mut kept: Kept,
    head: &[u8],
    req: Request<Body>,
    end: bool,
) -> Result<Response<Body>, Request<Body>> {
    if kept.send.write_all(head).await.is_err() {
        return Err(req);
    }
    // A request without a body is still whole here, to be sent again if need be.
    let (body, whole) = if end {
        (None, Some(req))
    } else {
        (Some(req.into_body()), None)
    };
    match (exchange_delimited(inner, key, kept, body).await, whole) {
        (Err(FrameError::Ended), Some(req)) => Err(req),
        (r, _) => Ok(r.unwrap_or_else(upstream_reset)),
    }
}

/// meshd's answer when the exchange's stream failed before a response head came back.
fn upstream_reset(e: FrameError) -> Response<Body> {
    error_response(StatusCode::BAD_GATEWAY, "upstream_reset", e.to_string())
}

/// Where a stream goes once one of its messages ended cleanly.
enum Then {
    /// The request was whole already: the stream is kept for the next exchange.
    Keep(Arc<Inner>, Key, quinn::SendStream),
    /// The task writing the request body keeps it when that is done too.
    ToWriter(oneshot::Sender<FrameReader<quinn::RecvStream>>),
}

impl Then {
    fn give(self, reader: FrameReader<quinn::RecvStream>) {
        match self {
            Then::Keep(inner, key, send) => inner.streams.put(key, Kept { send, reader }),
            Then::ToWriter(tx) => {
                let _ = tx.send(reader);
            }
        }
    }
}

/// The rest of an exchange on a delimited stream whose request head was sent: the body, if
/// any (written by a task, so that a streaming response can come back meanwhile), then the
/// response head read back; the stream is kept again when both messages have ended.
async fn exchange_delimited(
    inner: &Arc<Inner>,
    key: Key,
    kept: Kept,
    body: Option<Body>,
) -> Result<Response<Body>, FrameError> {
    let Kept { send, mut reader } = kept;
    let then = match body {
        None => Then::Keep(inner.clone(), key, send),
        Some(body) => {
            let (tx, rx) = oneshot::channel();
            let mut send = send;
            let owner = inner.clone();
            inner.tasks.spawn(async move {
                match pump_delimited(body, &mut send).await {
                    Ok(_) => {
                        if let Ok(reader) = rx.await {
                            owner.streams.put(key, Kept { send, reader });
                        }
                    }
                    Err(e) => tracing::debug!(error = %e, "request body not delivered"),
                }
            });
            Then::ToWriter(tx)
        }
    };
    let head = frame::parse_response_head(&reader.head().await?)?;
    let body = if head.end {
        reader.end_message();
        then.give(reader);
        super::body::empty()
    } else {
        framed_then(reader, move |r| then.give(r))
    };
    let mut resp = Response::new(body);
    *resp.status_mut() = head.status;
    *resp.headers_mut() = head.headers;
    Ok(resp)
}
