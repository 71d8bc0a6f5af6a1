//! The probes a check runs: an HTTP request or a TCP connect, each bounded by a timeout.

use std::time::Duration;

use registry::{CheckDefinition, Status};

/// Longest part of an HTTP response body kept as check output (Consul keeps 4 KiB).
pub const MAX_OUTPUT: usize = 4096;

/// HTTP clients shared by every HTTP check (one verifying TLS, one not, for TLSSkipVerify).
#[derive(Clone)]
pub struct HttpClients {
    verify: reqwest::Client,
    insecure: reqwest::Client,
}

impl HttpClients {
    pub fn new() -> Result<HttpClients, reqwest::Error> {
        let base = || {
            reqwest::Client::builder()
                .user_agent(concat!(
                    "meshd/",
                    env!("CARGO_PKG_VERSION"),
                    " (health check)"
                ))
                .redirect(reqwest::redirect::Policy::limited(10))
                .pool_max_idle_per_host(1)
        };
        Ok(HttpClients {
            verify: base().build()?,
            insecure: base().tls_danger_accept_invalid_certs(true).build()?,
        })
    }
}

/// Runs an HTTP check: 2xx is passing, 429 warning, anything else (or no answer) critical.
pub async fn http(
    clients: &HttpClients,
    def: &CheckDefinition,
    timeout: Duration,
) -> (Status, String) {
    let method_name = if def.method.is_empty() {
        "GET"
    } else {
        def.method.as_str()
    };
    let method = match reqwest::Method::from_bytes(method_name.as_bytes()) {
        Ok(m) => m,
        Err(_) => {
            return (
                Status::Critical,
                format!("invalid HTTP method {method_name:?}"),
            )
        }
    };
    let client = if def.tls_skip_verify {
        &clients.insecure
    } else {
        &clients.verify
    };
    let mut req = client.request(method, &def.http).timeout(timeout);
    for (name, values) in &def.header {
        for v in values {
            req = req.header(name.as_str(), v.as_str());
        }
    }
    if !def.body.is_empty() {
        req = req.body(def.body.clone());
    }
    let resp = match req.send().await {
        Ok(r) => r,
        Err(e) => {
            let why = if e.is_timeout() {
                format!("timed out after {timeout:?}")
            } else {
                error_chain(&e)
            };
            return (
                Status::Critical,
                format!("HTTP {method_name} {}: {why}", def.http),
            );
        }
    };
    let code = resp.status();
    let status = if code.is_success() {
        Status::Passing
    } else if code.as_u16() == 429 {
        Status::Warning
    } else {
        Status::Critical
    };
    let body = match tokio::time::timeout(timeout, read_prefix(resp, MAX_OUTPUT)).await {
        Ok(b) => b,
        Err(_) => String::from("(body not read: timed out)"),
    };
    (
        status,
        format!("HTTP {method_name} {}: {} Output: {body}", def.http, code),
    )
}

async fn read_prefix(mut resp: reqwest::Response, limit: usize) -> String {
    let mut buf = Vec::new();
    while buf.len() < limit {
        match resp.chunk().await {
            Ok(Some(chunk)) => buf.extend_from_slice(&chunk),
            _ => break,
        }
    }
    buf.truncate(limit);
    String::from_utf8_lossy(&buf).into_owned()
}

/// Runs a TCP check: passing when a connection opens within the timeout.
pub async fn tcp(addr: &str, timeout: Duration) -> (Status, String) {
    match tokio::time::timeout(timeout, tokio::net::TcpStream::connect(addr)).await {
        Ok(Ok(_)) => (Status::Passing, format!("TCP connect {addr}: Success")),
        Ok(Err(e)) => (Status::Critical, format!("TCP connect {addr}: {e}")),
        Err(_) => (
            Status::Critical,
            format!("TCP connect {addr}: timed out after {timeout:?}"),
        ),
    }
}

fn error_chain(e: &dyn std::error::Error) -> String {
    let mut out = e.to_string();
    let mut cur = e.source();
    while let Some(s) = cur {
        out.push_str(": ");
        out.push_str(&s.to_string());
        cur = s.source();
    }
    out
}
