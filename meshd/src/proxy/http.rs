//! Layer 7: HTTP/1.1, HTTP/2 (h2c) and gRPC services, proxied request by request.
//!
//! A caller's connection to an HTTP service is served by hyper ([`server`]); each request goes
//! through a stack of tower layers, one file per layer, so that a new feature is a new layer:
//! - [`route`]: the destination's compiled routes (router, splitter, resolver) choose the
//!   target and rewrite the request and response;
//! - [`upgrade`]: `Upgrade` (WebSocket) and `CONNECT` requests become byte streams after the
//!   handshake;
//! - [`client`]: a healthy endpoint of the target per request, and the request sent to it:
//!   over a pooled connection ([`pool`]) to an instance on this host, or as an exchange on a
//!   tunnel stream ([`frame`], [`body`]), kept for the next one ([`streams`]), to another
//!   host, whose [`inbound`] side checks the caller's identity against the intentions and
//!   forwards it to the local instance.
//!
//! The routes themselves are compiled ahead, with the rest of a destination's decisions
//! ([`chain`]).

pub mod body;
pub mod chain;
pub mod client;
pub mod frame;
pub mod inbound;
pub mod pool;
pub mod route;
pub mod server;
pub mod streams;
pub mod upgrade;

use bytes::Bytes;
use http::header::{HeaderMap, HeaderName, HeaderValue};
use http::{Response, StatusCode};
use http_body_util::{BodyExt, Full};

/// Errors a body may end with.
pub type BoxError = Box<dyn std::error::Error + Send + Sync>;
/// The body type every layer passes on.
pub type Body = http_body_util::combinators::UnsyncBoxBody<Bytes, BoxError>;

/// A body from any body type.
pub fn boxed<B>(b: B) -> Body
where
    B: http_body::Body<Data = Bytes> + Send + 'static,
    B::Error: Into<BoxError>,
{
    b.map_err(Into::into).boxed_unsync()
}

/// The header that says why meshd itself answered a request.
pub const ERROR_HEADER: &str = "x-meshd-error";

/// A response meshd makes itself: `status`, a reason in [`ERROR_HEADER`] and the text.
pub fn error_response(status: StatusCode, reason: &'static str, text: String) -> Response<Body> {
    let mut r = Response::new(boxed(Full::new(Bytes::from(text + "\n"))));
    *r.status_mut() = status;
    r.headers_mut()
        .insert(ERROR_HEADER, HeaderValue::from_static(reason));
    r.headers_mut().insert(
        http::header::CONTENT_TYPE,
        HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    r
}

/// Hop-by-hop headers: they concern one connection, never the next hop (RFC 9110 7.6.1).
const HOP_BY_HOP: [&str; 7] = [
    "connection",
    "keep-alive",
    "proxy-connection",
    "transfer-encoding",
    "upgrade",
    "proxy-authenticate",
    "proxy-authorization",
];

/// Removes the hop-by-hop headers (and those `Connection` names); keeps `te: trailers`, which
/// gRPC needs end to end.
pub fn strip_hop_by_hop(h: &mut HeaderMap) {
    let named: Vec<HeaderName> = h
        .get_all(http::header::CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .filter_map(|n| HeaderName::from_bytes(n.trim().as_bytes()).ok())
        .collect();
    for n in named {
        h.remove(n);
    }
    for n in HOP_BY_HOP {
        h.remove(n);
    }
    let te_trailers = h
        .get_all(http::header::TE)
        .iter()
        .any(|v| v.to_str().is_ok_and(|s| s.contains("trailers")));
    h.remove(http::header::TE);
    if te_trailers {
        h.insert(http::header::TE, HeaderValue::from_static("trailers"));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hop_by_hop_headers_go_te_trailers_stays() {
        let mut h = HeaderMap::new();
        for (n, v) in [
            ("connection", "keep-alive, x-private"),
            ("x-private", "1"),
            ("keep-alive", "timeout=5"),
            ("transfer-encoding", "chunked"),
            ("te", "trailers, deflate"),
            ("x-canary", "1"),
        ] {
            h.append(
                HeaderName::from_static(n),
                HeaderValue::from_str(v).unwrap(),
            );
        }
        strip_hop_by_hop(&mut h);
        let left: Vec<(&str, &str)> = h
            .iter()
            .map(|(n, v)| (n.as_str(), v.to_str().unwrap()))
            .collect();
        assert_eq!(left, vec![("x-canary", "1"), ("te", "trailers")]);
    }
}
