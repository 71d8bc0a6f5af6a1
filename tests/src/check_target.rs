//! A loopback HTTP server for health-check tests, whose answer can be switched while meshd
//! probes it: any status code (200 passing, 429 warning, 500 critical) or [`HANG`] (accept,
//! read the request and never answer, to exercise check timeouts).
//!
//! It speaks just enough HTTP/1.1: reads the request head, answers with `Connection: close`.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU16, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::task::JoinHandle;

/// Status value meaning "never answer".
pub const HANG: u16 = 0;

/// Bound on reading one request head.
const READ_TIMEOUT: Duration = Duration::from_secs(5);
/// How long a hanging answer holds the connection.
const HANG_FOR: Duration = Duration::from_secs(60);

/// The server; dropping it stops accepting.
pub struct TestHttpServer {
    addr: SocketAddr,
    status: Arc<AtomicU16>,
    hits: Arc<AtomicU64>,
    task: JoinHandle<()>,
}

impl TestHttpServer {
    /// Binds 127.0.0.1:0 and serves `status` until told otherwise.
    pub async fn start(status: u16) -> TestHttpServer {
        let listener = TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind the test HTTP server on 127.0.0.1:0");
        let addr = listener.local_addr().expect("test server local address");
        let status = Arc::new(AtomicU16::new(status));
        let hits = Arc::new(AtomicU64::new(0));
        let (s, h) = (status.clone(), hits.clone());
        let task = tokio::spawn(async move {
            loop {
                let Ok((conn, _)) = listener.accept().await else {
                    continue;
                };
                let (s, h) = (s.clone(), h.clone());
                tokio::spawn(async move {
                    let _ = serve(conn, &s, &h).await;
                });
            }
        });
        TestHttpServer {
            addr,
            status,
            hits,
            task,
        }
    }

    /// Its address.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// `http://127.0.0.1:PORT{path}`.
    pub fn url(&self, path: &str) -> String {
        format!("http://{}{}", self.addr, path)
    }

    /// Switches the answer (a status code, or [`HANG`]).
    pub fn set_status(&self, status: u16) {
        self.status.store(status, Ordering::SeqCst);
    }

    /// Requests answered or held so far.
    pub fn hits(&self) -> u64 {
        self.hits.load(Ordering::SeqCst)
    }
}

impl Drop for TestHttpServer {
    fn drop(&mut self) {
        self.task.abort();
    }
}

async fn serve(mut conn: TcpStream, status: &AtomicU16, hits: &AtomicU64) -> std::io::Result<()> {
    let mut buf = Vec::with_capacity(1024);
    let mut chunk = [0u8; 1024];
    let read_head = async {
        loop {
            let n = conn.read(&mut chunk).await?;
            if n == 0 {
                return Ok::<bool, std::io::Error>(false);
            }
            buf.extend_from_slice(&chunk[..n]);
            if buf.windows(4).any(|w| w == b"\r\n\r\n") || buf.len() > 64 * 1024 {
                return Ok(true);
            }
        }
    };
    match tokio::time::timeout(READ_TIMEOUT, read_head).await {
        Ok(Ok(true)) => {}
        _ => return Ok(()),
    }
    hits.fetch_add(1, Ordering::SeqCst);
    let code = status.load(Ordering::SeqCst);
    if code == HANG {
        tokio::time::sleep(HANG_FOR).await;
        return Ok(());
    }
    let body = format!("status {code}\n");
    let resp = format!(
        "HTTP/1.1 {code} {}\r\nContent-Type: text/plain\r\nContent-Length: {}\r\n\
         Connection: close\r\n\r\n{body}",
        reason(code),
        body.len()
    );
    conn.write_all(resp.as_bytes()).await?;
    conn.shutdown().await
}

fn reason(code: u16) -> &'static str {
    match code {
        200 => "OK",
        204 => "No Content",
        429 => "Too Many Requests",
        500 => "Internal Server Error",
        503 => "Service Unavailable",
        _ => "Status",
    }
}
