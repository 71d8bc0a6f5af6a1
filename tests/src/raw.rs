//! Hand-written HTTP/1.1 over tokio `TcpStream`: one GET per connection with
//! `Connection: close`, the whole response read until the server closes. Far cheaper than a
//! full client when a test holds ten thousand connections.

use std::net::SocketAddr;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// Largest response read before giving up (a blocking query's answer is small).
const MAX_RESPONSE: usize = 4 * 1024 * 1024;

/// A parsed response.
#[derive(Clone, Debug)]
pub struct RawResponse {
    pub status: u16,
    /// Header names lowercased.
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

impl RawResponse {
    pub fn header(&self, name: &str) -> Option<&str> {
        let name = name.to_ascii_lowercase();
        self.headers
            .iter()
            .find(|(k, _)| *k == name)
            .map(|(_, v)| v.as_str())
    }

    /// Whether the whole body is there: as long as `Content-Length` says (a chunked body
    /// parses only when its last chunk arrived).
    pub fn is_complete(&self) -> bool {
        match self.header("content-length") {
            Some(v) => v.trim().parse::<usize>().ok() == Some(self.body.len()),
            None => self.header("transfer-encoding").is_some(),
        }
    }

    /// `X-Consul-Index` as a number.
    pub fn index(&self) -> Option<u64> {
        self.header("x-consul-index")
            .and_then(|v| v.trim().parse().ok())
    }
}

/// Why a raw exchange failed.
#[derive(Debug)]
pub enum RawError {
    Io(std::io::Error),
    Malformed(String),
}

impl std::fmt::Display for RawError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            RawError::Io(e) => write!(f, "i/o: {e}"),
            RawError::Malformed(m) => write!(f, "malformed response: {m}"),
        }
    }
}

impl std::error::Error for RawError {}

impl From<std::io::Error> for RawError {
    fn from(e: std::io::Error) -> Self {
        RawError::Io(e)
    }
}

/// Connects to `addr` and sends `GET path` with `Connection: close`; returns the open stream
/// (the response is read later with [`read_response`]).
pub async fn send_get(addr: SocketAddr, path: &str) -> Result<TcpStream, RawError> {
    let mut s = TcpStream::connect(addr).await?;
    let req = format!("GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n");
    s.write_all(req.as_bytes()).await?;
    Ok(s)
}

/// Reads the whole response (until EOF) and parses it. Handles `Content-Length` and chunked
/// bodies.
pub async fn read_response(s: &mut TcpStream) -> Result<RawResponse, RawError> {
    let mut buf = Vec::with_capacity(1024);
    let mut chunk = [0u8; 4096];
    loop {
        let n = match s.read(&mut chunk).await {
            Ok(n) => n,
            // A server may reset a `Connection: close` connection right after a complete
            // response (as browsers and curl accept); a reset before that is an error.
            Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => {
                return match parse_response(&buf) {
                    Ok(r) if r.is_complete() => Ok(r),
                    _ => Err(RawError::Malformed(format!(
                        "connection reset after {} bytes of the response: {e}",
                        buf.len()
                    ))),
                };
            }
            Err(e) => return Err(e.into()),
        };
        if n == 0 {
            break;
        }
        buf.extend_from_slice(&chunk[..n]);
        if buf.len() > MAX_RESPONSE {
            return Err(RawError::Malformed(format!(
                "response larger than {MAX_RESPONSE} bytes"
            )));
        }
    }
    parse_response(&buf)
}

/// Parses one complete HTTP/1.1 response.
pub fn parse_response(buf: &[u8]) -> Result<RawResponse, RawError> {
    let end = buf
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .ok_or_else(|| RawError::Malformed(format!("no end of head in {} bytes", buf.len())))?;
    let head = std::str::from_utf8(&buf[..end])
        .map_err(|_| RawError::Malformed("head is not UTF-8".into()))?;
    let mut lines = head.split("\r\n");
    let status_line = lines.next().unwrap_or_default();
    let status = status_line
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse::<u16>().ok())
        .ok_or_else(|| RawError::Malformed(format!("bad status line {status_line:?}")))?;
    let headers: Vec<(String, String)> = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(k, v)| (k.trim().to_ascii_lowercase(), v.trim().to_string()))
        .collect();
    let raw_body = &buf[end + 4..];
    let chunked = headers
        .iter()
        .any(|(k, v)| k == "transfer-encoding" && v.to_ascii_lowercase().contains("chunked"));
    let body = if chunked {
        dechunk(raw_body)?
    } else {
        raw_body.to_vec()
    };
    Ok(RawResponse {
        status,
        headers,
        body,
    })
}

fn dechunk(mut b: &[u8]) -> Result<Vec<u8>, RawError> {
    let mut out = Vec::new();
    loop {
        let line_end = b
            .windows(2)
            .position(|w| w == b"\r\n")
            .ok_or_else(|| RawError::Malformed("truncated chunk size".into()))?;
        let size_text = std::str::from_utf8(&b[..line_end])
            .map_err(|_| RawError::Malformed("chunk size is not UTF-8".into()))?;
        let size_text = size_text.split(';').next().unwrap_or_default().trim();
        let size = usize::from_str_radix(size_text, 16)
            .map_err(|_| RawError::Malformed(format!("bad chunk size {size_text:?}")))?;
        b = &b[line_end + 2..];
        if size == 0 {
            return Ok(out);
        }
        if b.len() < size + 2 {
            return Err(RawError::Malformed("truncated chunk".into()));
        }
        out.extend_from_slice(&b[..size]);
        b = &b[size + 2..];
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_plain_and_chunked() {
        let r =
            parse_response(b"HTTP/1.1 200 OK\r\nX-Consul-Index: 42\r\nContent-Length: 2\r\n\r\n[]")
                .expect("parse");
        assert_eq!(r.status, 200);
        assert_eq!(r.index(), Some(42));
        assert_eq!(r.body, b"[]");
        let r = parse_response(
            b"HTTP/1.1 404 Not Found\r\ntransfer-encoding: chunked\r\n\r\n3\r\nabc\r\n2\r\nde\r\n0\r\n\r\n",
        )
        .expect("parse");
        assert_eq!(r.status, 404);
        assert_eq!(r.body, b"abcde");
    }
}
