//! The HTTP client for the agent's API: address parsing, URL building, and an error type that
//! says what failed (the address it could not reach, or the HTTP status and the server's message).

use std::fmt;
use std::time::Duration;

use reqwest::blocking::Client as HttpClient;
use reqwest::Method;
use serde_json::Value;

/// Port of the HTTP API when an address names none.
pub const DEFAULT_HTTP_PORT: u16 = 8500;
/// How long to wait for a TCP connection to the agent.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// How long a whole request may take.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(60);
/// How much of an error body to show.
const MAX_MESSAGE_CHARS: usize = 500;

/// Parses `--http-addr`: `host:port`, `http://host:port` or `[v6]:port`, with an optional
/// trailing slash; a missing port means 8500. Returns the base URL, `http://host:port`.
pub fn parse_http_addr(s: &str) -> Result<String, String> {
    let s = s.trim();
    let rest = if let Some(rest) = s.strip_prefix("http://") {
        rest
    } else if s.starts_with("https://") {
        return Err(format!(
            "{s:?}: https is not supported; meshd serves plain HTTP, use http://host:port"
        ));
    } else if let Some((scheme, _)) = s.split_once("://") {
        return Err(format!(
            "{s:?}: unsupported scheme {scheme:?}; use host:port or http://host:port"
        ));
    } else {
        s
    };
    let hostport = rest.strip_suffix('/').unwrap_or(rest);
    if hostport.is_empty() {
        return Err("empty address; use host:port, like 127.0.0.1:8500".to_string());
    }
    if hostport.contains('/') {
        return Err(format!("{s:?}: expected host:port without a path"));
    }
    let (host, port) = if let Some(v6) = hostport.strip_prefix('[') {
        let (host, after) = v6
            .split_once(']')
            .ok_or_else(|| format!("{s:?}: missing ']' after the IPv6 address"))?;
        let port = match after {
            "" => None,
            p => Some(
                p.strip_prefix(':')
                    .ok_or_else(|| format!("{s:?}: expected ':' and a port after ']'"))?,
            ),
        };
        (host, port)
    } else if hostport.matches(':').count() > 1 {
        return Err(format!(
            "{s:?}: put an IPv6 address in brackets, like [::1]:8500"
        ));
    } else {
        match hostport.split_once(':') {
            Some((h, p)) => (h, Some(p)),
            None => (hostport, None),
        }
    };
    if host.is_empty() {
        return Err(format!("{s:?}: missing host"));
    }
    let port = match port {
        None => DEFAULT_HTTP_PORT,
        Some(p) => match p.parse::<u16>() {
            Ok(n) if n > 0 => n,
            _ => return Err(format!("{s:?}: invalid port {p:?}")),
        },
    };
    if host.contains(':') {
        Ok(format!("http://[{host}]:{port}"))
    } else {
        Ok(format!("http://{host}:{port}"))
    }
}

/// Percent-encodes a KV key or service ID for a URL path; `/` is kept, so keys stay
/// hierarchical.
pub fn encode_path(s: &str) -> String {
    encode(s, true)
}

/// Percent-encodes one path segment (a service name or ID) or a query-string value.
pub fn encode_segment(s: &str) -> String {
    encode(s, false)
}

fn encode(s: &str, keep_slash: bool) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || b"-._~".contains(&b) || (keep_slash && b == b'/') {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// Why a request failed.
#[derive(Debug)]
pub enum ClientError {
    /// No TCP connection to the agent.
    Connect { addr: String, cause: String },
    /// The agent did not answer within `after`.
    Timeout {
        method: Method,
        path: String,
        after: Duration,
    },
    /// Any other transport failure.
    Transport {
        method: Method,
        path: String,
        cause: String,
    },
    /// The agent answered with a non-2xx status.
    Status {
        method: Method,
        path: String,
        status: reqwest::StatusCode,
        message: String,
    },
    /// The answer was not the JSON expected.
    Decode {
        method: Method,
        path: String,
        cause: String,
    },
}

impl fmt::Display for ClientError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ClientError::Connect { addr, cause } => write!(
                f,
                "cannot connect to meshd at {addr}: {cause} (is `meshd agent` running? \
                 set --http-addr or MESH_HTTP_ADDR)"
            ),
            ClientError::Timeout {
                method,
                path,
                after,
            } => write!(
                f,
                "{method} {path}: no answer within {}s",
                after.as_secs_f64()
            ),
            ClientError::Transport {
                method,
                path,
                cause,
            } => write!(f, "{method} {path}: {cause}"),
            ClientError::Status {
                method,
                path,
                status,
                message,
            } => {
                write!(f, "{method} {path}: HTTP {status}")?;
                if !message.is_empty() {
                    write!(f, ": {message}")?;
                }
                Ok(())
            }
            ClientError::Decode {
                method,
                path,
                cause,
            } => write!(
                f,
                "{method} {path}: the answer is not the expected JSON: {cause}"
            ),
        }
    }
}

impl std::error::Error for ClientError {}

impl ClientError {
    /// Whether the agent never answered (no connection, a timeout, a broken transport), as
    /// opposed to answering with an error status or an unexpected body.
    pub fn is_unreachable(&self) -> bool {
        matches!(
            self,
            ClientError::Connect { .. }
                | ClientError::Timeout { .. }
                | ClientError::Transport { .. }
        )
    }

    /// The HTTP status of an error answer, if the agent answered.
    pub fn status(&self) -> Option<reqwest::StatusCode> {
        match self {
            ClientError::Status { status, .. } => Some(*status),
            _ => None,
        }
    }
}

/// The innermost cause of an error: for a refused connection, "Connection refused (os error
/// 111)" rather than reqwest's wrapper text.
fn root_cause(err: &(dyn std::error::Error + 'static)) -> String {
    let mut cur = err;
    while let Some(next) = cur.source() {
        cur = next;
    }
    cur.to_string()
}

/// Turns an error body into one short line: the `error`/`message` of a JSON body, or the text.
fn server_message(body: &[u8]) -> String {
    let text = String::from_utf8_lossy(body);
    let text = match serde_json::from_str::<Value>(&text) {
        Ok(Value::Object(map)) => ["error", "Error", "message", "Message"]
            .iter()
            .find_map(|k| map.get(*k).and_then(Value::as_str).map(str::to_string))
            .unwrap_or_else(|| text.to_string()),
        Ok(Value::String(s)) => s,
        _ => text.to_string(),
    };
    let line = text.split_whitespace().collect::<Vec<_>>().join(" ");
    if line.chars().count() > MAX_MESSAGE_CHARS {
        let cut: String = line.chars().take(MAX_MESSAGE_CHARS).collect();
        format!("{cut}…")
    } else {
        line
    }
}

/// A 2xx answer.
#[derive(Default)]
struct Answer {
    body: Vec<u8>,
    headers: reqwest::header::HeaderMap,
}

/// A blocking client bound to one agent address.
pub struct Client {
    base: String,
    http: HttpClient,
    timeout: Duration,
}

impl Client {
    /// `base` is a URL from [`parse_http_addr`].
    pub fn new(base: String) -> anyhow::Result<Client> {
        Client::with_timeout(base, REQUEST_TIMEOUT)
    }

    /// A client whose requests (connecting included) give up after `timeout`.
    pub fn with_timeout(base: String, timeout: Duration) -> anyhow::Result<Client> {
        // reqwest is built without a default crypto provider; ring is the one the workspace uses.
        let _ = rustls::crypto::ring::default_provider().install_default();
        let http = HttpClient::builder()
            .connect_timeout(CONNECT_TIMEOUT.min(timeout))
            .timeout(timeout)
            .user_agent(concat!("meshctl/", env!("CARGO_PKG_VERSION")))
            .build()?;
        Ok(Client {
            base,
            http,
            timeout,
        })
    }

    /// The agent's base URL, `http://host:port`.
    pub fn base(&self) -> &str {
        &self.base
    }

    /// Sends a request; returns the body of a 2xx answer, `None` for a 404 when `allow_404`.
    /// `path` starts with `/` and includes any query string.
    fn send(
        &self,
        method: Method,
        path: &str,
        body: Option<Vec<u8>>,
        allow_404: bool,
    ) -> Result<Option<Vec<u8>>, ClientError> {
        Ok(self
            .send_full(method, path, body, allow_404)?
            .map(|answer| answer.body))
    }

    /// Like [`Client::send`], keeping the answer's headers.
    fn send_full(
        &self,
        method: Method,
        path: &str,
        body: Option<Vec<u8>>,
        allow_404: bool,
    ) -> Result<Option<Answer>, ClientError> {
        let url = format!("{}{}", self.base, path);
        let mut req = self.http.request(method.clone(), &url);
        if let Some(body) = body {
            req = req.body(body);
        }
        let transport = |e: reqwest::Error| {
            if e.is_connect() {
                ClientError::Connect {
                    addr: self.base.clone(),
                    cause: root_cause(&e),
                }
            } else if e.is_timeout() {
                ClientError::Timeout {
                    method: method.clone(),
                    path: path.to_string(),
                    after: self.timeout,
                }
            } else {
                ClientError::Transport {
                    method: method.clone(),
                    path: path.to_string(),
                    cause: root_cause(&e),
                }
            }
        };
        let resp = req.send().map_err(transport)?;
        let status = resp.status();
        let headers = resp.headers().clone();
        let bytes = resp.bytes().map_err(transport)?;
        if status.is_success() {
            Ok(Some(Answer {
                body: bytes.to_vec(),
                headers,
            }))
        } else if allow_404 && status == reqwest::StatusCode::NOT_FOUND {
            Ok(None)
        } else {
            Err(ClientError::Status {
                method,
                path: path.to_string(),
                status,
                message: server_message(&bytes),
            })
        }
    }

    fn decode(method: Method, path: &str, body: &[u8]) -> Result<Option<Value>, ClientError> {
        if body.iter().all(u8::is_ascii_whitespace) {
            return Ok(None);
        }
        serde_json::from_slice(body)
            .map(Some)
            .map_err(|e| ClientError::Decode {
                method,
                path: path.to_string(),
                cause: e.to_string(),
            })
    }

    /// GET a JSON document; an empty body is an error.
    pub fn get_json(&self, path: &str) -> Result<Value, ClientError> {
        self.get_json_opt(path, false)?
            .ok_or_else(|| ClientError::Decode {
                method: Method::GET,
                path: path.to_string(),
                cause: "empty body".to_string(),
            })
    }

    /// GET a JSON document; `None` for a 404 (when `allow_404`) or an empty body.
    pub fn get_json_opt(&self, path: &str, allow_404: bool) -> Result<Option<Value>, ClientError> {
        match self.send(Method::GET, path, None, allow_404)? {
            Some(body) => Self::decode(Method::GET, path, &body),
            None => Ok(None),
        }
    }

    /// GET raw bytes; `None` for a 404.
    pub fn get_raw_opt(&self, path: &str) -> Result<Option<Vec<u8>>, ClientError> {
        self.send(Method::GET, path, None, true)
    }

    /// GET raw bytes; a 404 is an error like any other non-2xx status.
    pub fn get_raw(&self, path: &str) -> Result<Vec<u8>, ClientError> {
        Ok(self
            .send(Method::GET, path, None, false)?
            .unwrap_or_default())
    }

    /// PUT a JSON body; returns the answer's JSON, if any.
    pub fn put_json(&self, path: &str, body: &Value) -> Result<Option<Value>, ClientError> {
        let bytes = serde_json::to_vec(body).expect("a JSON value always serializes");
        self.put_raw(path, bytes)
    }

    /// PUT raw bytes; returns the answer's JSON, if any.
    pub fn put_raw(&self, path: &str, body: Vec<u8>) -> Result<Option<Value>, ClientError> {
        let answer = self
            .send(Method::PUT, path, Some(body), false)?
            .unwrap_or_default();
        Self::decode(Method::PUT, path, &answer)
    }

    /// GET raw bytes (a 404 is an error) with the `X-Consul-Index` of the answer, if it had
    /// a valid one.
    pub fn get_raw_indexed(&self, path: &str) -> Result<(Vec<u8>, Option<u64>), ClientError> {
        let answer = self
            .send_full(Method::GET, path, None, false)?
            .unwrap_or_default();
        let index = answer
            .headers
            .get("X-Consul-Index")
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.trim().parse().ok());
        Ok((answer.body, index))
    }

    /// POST a JSON body (`None`: no body); returns the answer's JSON, if any.
    pub fn post_json(
        &self,
        path: &str,
        body: Option<&Value>,
    ) -> Result<Option<Value>, ClientError> {
        let bytes = body.map(|b| serde_json::to_vec(b).expect("a JSON value always serializes"));
        let answer = self
            .send(Method::POST, path, bytes, false)?
            .unwrap_or_default();
        Self::decode(Method::POST, path, &answer)
    }

    /// DELETE; returns the answer's JSON, if any.
    pub fn delete(&self, path: &str) -> Result<Option<Value>, ClientError> {
        let answer = self
            .send(Method::DELETE, path, None, false)?
            .unwrap_or_default();
        Self::decode(Method::DELETE, path, &answer)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn http_addr_forms() {
        let ok = [
            ("127.0.0.1:8500", "http://127.0.0.1:8500"),
            ("http://127.0.0.1:8500", "http://127.0.0.1:8500"),
            ("http://127.0.0.1:8500/", "http://127.0.0.1:8500"),
            (" localhost:9000 ", "http://localhost:9000"),
            ("localhost", "http://localhost:8500"),
            ("http://meshd.internal", "http://meshd.internal:8500"),
            ("[::1]:8500", "http://[::1]:8500"),
            ("http://[::1]", "http://[::1]:8500"),
        ];
        for (input, want) in ok {
            assert_eq!(parse_http_addr(input).as_deref(), Ok(want), "{input}");
        }
        let bad = [
            "",
            "http://",
            ":8500",
            "127.0.0.1:",
            "127.0.0.1:0",
            "127.0.0.1:99999",
            "127.0.0.1:port",
            "::1",
            "[::1",
            "[::1]8500",
            "https://127.0.0.1:8500",
            "unix:///tmp/meshd.sock",
            "http://127.0.0.1:8500/v1",
        ];
        for input in bad {
            assert!(parse_http_addr(input).is_err(), "{input}");
        }
        assert!(parse_http_addr("https://x:1")
            .unwrap_err()
            .contains("https is not supported"));
    }

    #[test]
    fn path_encoding() {
        assert_eq!(encode_path("app/config/db"), "app/config/db");
        assert_eq!(encode_path("a b?c#d%e"), "a%20b%3Fc%23d%25e");
        assert_eq!(encode_path("ü"), "%C3%BC");
        assert_eq!(encode_segment("a/b&c=d"), "a%2Fb%26c%3Dd");
    }

    #[test]
    fn server_messages_are_one_short_line() {
        assert_eq!(
            server_message(b"missing service name\n"),
            "missing service name"
        );
        assert_eq!(server_message(b"line one\nline two"), "line one line two");
        assert_eq!(server_message(br#"{"error":"bad port"}"#), "bad port");
        assert_eq!(server_message(b""), "");
        let long = "x".repeat(2000);
        assert_eq!(
            server_message(long.as_bytes()).chars().count(),
            MAX_MESSAGE_CHARS + 1
        );
    }

    #[test]
    fn status_error_names_status_and_message() {
        let err = ClientError::Status {
            method: Method::PUT,
            path: "/v1/agent/service/register".into(),
            status: reqwest::StatusCode::BAD_REQUEST,
            message: "missing service name".into(),
        };
        assert_eq!(
            err.to_string(),
            "PUT /v1/agent/service/register: HTTP 400 Bad Request: missing service name"
        );
    }

    #[test]
    fn refused_connection_names_the_address() {
        // Bind then drop a listener to find a port nothing listens on.
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let client = Client::new(format!("http://127.0.0.1:{port}")).unwrap();
        let err = client.get_json("/v1/agent/members").unwrap_err();
        let msg = err.to_string();
        assert!(matches!(err, ClientError::Connect { .. }), "{msg}");
        assert!(msg.contains(&format!("http://127.0.0.1:{port}")), "{msg}");
        assert!(!msg.contains('\n'), "{msg}");
    }
}
