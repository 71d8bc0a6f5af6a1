//! The route layer: the destination's compiled routes choose, per request, the target it goes
//! to (router match, split, resolver subset and failover), and rewrite the request on the way
//! in and the response on the way out (path prefix, header rules).

use std::convert::Infallible;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use http::{Request, Response, StatusCode};

use super::chain::rewrite_path;
use super::{error_response, Body};
use crate::proxy::outbound::Call;
use registry::chain::HeaderMods;

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
                decision.split.target
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
        if let Some(p) = parts
            .uri
            .path_and_query()
            .and_then(|p| rewrite_path(decision.route, p.as_str()))
        {
            let mut uri = parts.uri.clone().into_parts();
            uri.path_and_query = p.parse().ok();
            if let Ok(u) = http::Uri::from_parts(uri) {
                parts.uri = u;
            }
        }
        apply(&decision.route.request_headers, &mut parts.headers);
        apply(&decision.split.request_headers, &mut parts.headers);
        let response_mods = [
            decision.route.response_headers.clone(),
            decision.split.response_headers.clone(),
        ];
        let fut = self.inner.call(Request::from_parts(parts, body));
        Box::pin(respond(fut, response_mods))
    }
}

/// The response, with the route's and split's response header rules applied.
async fn respond<F>(fut: F, mods: [HeaderMods; 2]) -> Result<Response<Body>, Infallible>
where
    F: Future<Output = Result<Response<Body>, Infallible>>,
{
    let mut resp = fut.await?;
    let [a, b] = mods;
    apply(&a, resp.headers_mut());
    apply(&b, resp.headers_mut());
    Ok(resp)
}

/// Applies a route's or split's header rules: `Set` replaces, `Add` appends, `Remove` deletes
/// (a name or value that is not valid HTTP was refused when the entry was written; one that
/// still is not is skipped).
pub fn apply(mods: &HeaderMods, headers: &mut http::HeaderMap) {
    use http::header::{HeaderName, HeaderValue};
    let pair = |(n, v): &(String, String)| {
        Some((
            HeaderName::from_bytes(n.as_bytes()).ok()?,
            HeaderValue::from_str(v).ok()?,
        ))
    };
    for (n, v) in mods.set.iter().filter_map(pair) {
        headers.insert(n, v);
    }
    for (n, v) in mods.add.iter().filter_map(pair) {
        headers.append(n, v);
    }
    for n in &mods.remove {
        if let Ok(n) = HeaderName::from_bytes(n.as_bytes()) {
            headers.remove(n);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn header_rules_set_add_remove() {
        let mut h = http::HeaderMap::new();
        h.insert("x-a", "1".parse().unwrap());
        h.insert("x-gone", "1".parse().unwrap());
        let mods = HeaderMods {
            add: vec![("x-a".into(), "2".into()), ("bad name".into(), "v".into())],
            set: vec![("x-b".into(), "3".into())],
            remove: vec!["x-gone".into()],
        };
        apply(&mods, &mut h);
        let a: Vec<&str> = h
            .get_all("x-a")
            .iter()
            .map(|v| v.to_str().unwrap())
            .collect();
        assert_eq!(a, ["1", "2"]);
        assert_eq!(h["x-b"], "3");
        assert!(!h.contains_key("x-gone"));
    }
}
