//! The innermost layer: one request to one endpoint of the target the route layer chose.
//!
//! The endpoint is picked per request by the target's balancer, so the requests of one
//! keep-alive connection spread over the instances. An instance on this host gets the request
//! over a pooled connection ([`pool`](super::pool)); one on another host gets it as one
//! exchange on a new stream of the caller's tunnel connection ([`frame`](super::frame)), the
//! request body written by a task while the response comes back. A failure to connect is
//! retried on another endpoint (nothing of the request was sent yet).

use std::convert::Infallible;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use http::{Request, Response, StatusCode};

use super::body::{framed, pump};
use super::frame::{self, FrameReader, RequestHead};
use super::route::Chosen;
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
            Some(_) => {
                let (head, end) = request_head(&req);
                match inner
                    .connect_early(
                        call.source.as_deref(),
                        &target.service,
                        ep,
                        Mode::Http,
                        &head,
                    )
                    .await
                {
                    Ok(Stream::Tunnel(send, recv)) => {
                        return exchange(inner, send, recv, req.into_body(), end).await
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

/// The HEAD frame of `req` (with `Host` from the URI's authority when it has none), and
/// whether it is the whole request (no body follows).
pub fn request_head(req: &Request<Body>) -> (Vec<u8>, bool) {
    let end = http_body::Body::is_end_stream(req.body());
    let mut headers = req.headers().clone();
    if !headers.contains_key(http::header::HOST) {
        if let Some(a) = req.uri().authority() {
            if let Ok(v) = http::HeaderValue::from_str(a.as_str()) {
                headers.insert(http::header::HOST, v);
            }
        }
    }
    let head = RequestHead {
        method: req.method().clone(),
        path: req
            .uri()
            .path_and_query()
            .map_or_else(|| "/".to_string(), |p| p.as_str().to_string()),
        headers,
        end,
    };
    (frame::request_head(&head), end)
}

/// The rest of one exchange on a tunnel stream whose request head was sent: the body (written
/// by a task, so that a streaming response can come back meanwhile), then the response read
/// back.
pub async fn exchange(
    inner: &Arc<Inner>,
    mut send: quinn::SendStream,
    recv: quinn::RecvStream,
    body: Body,
    end: bool,
) -> Response<Body> {
    if end {
        let _ = send.finish();
    } else {
        inner.tasks.spawn(async move {
            if let Err(e) = pump(body, &mut send).await {
                tracing::debug!(error = %e, "request body not delivered");
            }
        });
    }
    let mut reader = FrameReader::new(recv);
    let head = match reader.head().await {
        Ok(p) => match frame::parse_response_head(&p) {
            Ok(h) => h,
            Err(e) => return error_response(StatusCode::BAD_GATEWAY, "bad_frame", e.to_string()),
        },
        Err(e) => return error_response(StatusCode::BAD_GATEWAY, "upstream_reset", e.to_string()),
    };
    let body = if head.end {
        super::body::empty()
    } else {
        framed(reader)
    };
    let mut resp = Response::new(body);
    *resp.status_mut() = head.status;
    *resp.headers_mut() = head.headers;
    resp
}
