//! The route layer: the destination's compiled routes choose, per request, the target it goes
//! to (router match, split, resolver subset and failover), and rewrite the request on the way
//! in and the response on the way out (path prefix, header rules).

use std::convert::Infallible;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use http::{Request, Response, StatusCode};

use super::{error_response, Body};
use crate::proxy::outbound::Call;

/// The target id the route layer chose, for the client layer (a request extension).
#[derive(Clone, Debug)]
pub struct Chosen(pub String);

#[derive(Clone)]
pub struct RouteLayer {
    call: Arc<Call>,
}

impl RouteLayer {
    pub fn new(call: Arc<Call>) -> RouteLayer {
        RouteLayer { call }
    }
}

impl<S> tower::Layer<S> for RouteLayer {
    type Service = Route<S>;

    fn layer(&self, inner: S) -> Route<S> {
        Route {
            inner,
            call: self.call.clone(),
        }
    }
}

#[derive(Clone)]
pub struct Route<S> {
    inner: S,
    call: Arc<Call>,
}

type BoxFuture<T> = Pin<Box<dyn Future<Output = T> + Send>>;

impl<S> tower::Service<Request<Body>> for Route<S>
where
    S: tower::Service<Request<Body>, Response = Response<Body>, Error = Infallible>,
    S::Future: Send + 'static,
{
    type Response = Response<Body>;
    type Error = Infallible;
    type Future = BoxFuture<Result<Response<Body>, Infallible>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: Request<Body>) -> Self::Future {
        let Some(routes) = self.call.destination.routes.as_ref() else {
            return Box::pin(async {
                Ok(error_response(
                    StatusCode::SERVICE_UNAVAILABLE,
                    "no_route",
                    "the destination has no routes".into(),
                ))
            });
        };
        let (mut parts, body) = req.into_parts();
        let decision = routes.decide(&parts);
        let Some(target) = decision.target else {
            let text = format!(
                "no healthy endpoint of {} or its failover targets",
                decision.chosen
            );
            return Box::pin(async {
                Ok(error_response(
                    StatusCode::SERVICE_UNAVAILABLE,
                    "no_healthy_upstream",
                    text,
                ))
            });
        };
        parts.extensions.insert(Chosen(target.id.clone()));
        let fut = self.inner.call(Request::from_parts(parts, body));
        Box::pin(fut)
    }
}
