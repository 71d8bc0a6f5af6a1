//! The backend of the L7 tests (`tests/tests/mesh_l7.rs`): an HTTP server speaking HTTP/1.1
//! and h2c with prior knowledge on one port, through hyper-util's auto builder (which tells
//! them apart by the HTTP/2 preface; it does not switch on `Upgrade: h2c`, so such a request is
//! answered over HTTP/1.1, as RFC 9113 allows). `l7backend ADDR NAME`, for example `l7backend 127.0.0.1:18080 api-v1`; every
//! answer carries `x-instance: NAME`.
//!
//! Routes:
//! - `/status/{code}`: that status, with the echo body below.
//! - `/bytes/{n}`: `n` bytes of the deterministic stream of [`tests::pattern`], produced in
//!   64 KiB chunks (never all in memory). With `te: trailers` in the request the body is sent
//!   without a length and ends with the trailer `x-sha256` (hex); otherwise with
//!   `Content-Length: n`. Tests compute the expected digest with [`tests::pattern::sha256_hex`].
//! - `POST|PUT /sha256`: reads the request body as it streams and answers
//!   `{"bytes":N,"sha256":"hex"}`.
//! - `/reset-after/{n}?token=T`: headers with `Content-Length: n + 65536`, `n` bytes of the
//!   stream, then, once `/cut/T` is asked (the client has the `n` bytes, so the reset is sure
//!   to come in the middle of the response; at the latest after [`CUT_WAIT`]), the connection
//!   is reset (SO_LINGER 0 and close; an HTTP/2 stream gets RST_STREAM): a client must see an
//!   error, never a short success.
//! - `/cut/T`: releases the reset of `/reset-after/{n}?token=T` (404 if none waits).
//! - anything else: `{"instance","method","path","query","version","headers":{..}}`.
//!
//! WebSocket echo is `tests/python-tools/ws_peer.py` (the `websockets` package), not here.

use std::convert::Infallible;
use std::io;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use http_body::{Body, Frame};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::header::{HeaderMap, HeaderValue, CONTENT_LENGTH, CONTENT_TYPE};
use hyper::{Method, Request, Response, StatusCode, Version};
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use serde_json::json;
use std::collections::HashMap;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{mpsc, oneshot};

use tests::pattern;

/// Bytes per data frame of a streamed body.
const CHUNK: usize = 64 * 1024;
/// How much longer than what it sends `/reset-after/{n}` says its body is.
const RESET_SHORTFALL: u64 = 65536;
/// The longest a `/reset-after/` response waits for its `/cut/`.
const CUT_WAIT: Duration = Duration::from_secs(30);

/// The `/reset-after/` responses waiting for their `/cut/`, by token.
static CUTS: std::sync::LazyLock<std::sync::Mutex<HashMap<String, oneshot::Sender<()>>>> =
    std::sync::LazyLock::new(Default::default);

type RespBody = http_body_util::combinators::BoxBody<Bytes, io::Error>;

fn main() -> std::process::ExitCode {
    let mut args = std::env::args().skip(1);
    let (Some(addr), Some(name)) = (args.next(), args.next()) else {
        eprintln!("usage: l7backend IP:PORT INSTANCE-NAME");
        return std::process::ExitCode::from(2);
    };
    let rt = match tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("l7backend: runtime: {e}");
            return std::process::ExitCode::FAILURE;
        }
    };
    rt.block_on(async move {
        let listener = match TcpListener::bind(&addr).await {
            Ok(l) => l,
            Err(e) => {
                eprintln!("l7backend: bind {addr}: {e}");
                return std::process::ExitCode::FAILURE;
            }
        };
        let name: Arc<str> = name.into();
        loop {
            match listener.accept().await {
                Ok((conn, _)) => {
                    tokio::spawn(serve(conn, name.clone()));
                }
                Err(e) => {
                    eprintln!("l7backend: accept: {e}");
                    tokio::time::sleep(Duration::from_millis(10)).await;
                }
            }
        }
    })
}

/// Serves one connection, HTTP/1.1 or HTTP/2 as the client speaks.
async fn serve(conn: TcpStream, name: Arc<str>) {
    let _ = conn.set_nodelay(true);
    let reset = Arc::new(AtomicBool::new(false));
    let io = ResettableIo {
        inner: conn,
        reset: reset.clone(),
    };
    let svc = hyper::service::service_fn(move |req| {
        let (name, reset) = (name.clone(), reset.clone());
        async move { Ok::<_, Infallible>(handle(req, &name, &reset).await) }
    });
    let _ = auto::Builder::new(TokioExecutor::new())
        .serve_connection_with_upgrades(TokioIo::new(io), svc)
        .await;
}

async fn handle(req: Request<Incoming>, name: &str, reset: &Arc<AtomicBool>) -> Response<RespBody> {
    let path = req.uri().path().to_string();
    let mut resp = if let Some(code) = path.strip_prefix("/status/") {
        match code
            .parse::<u16>()
            .ok()
            .and_then(|c| StatusCode::from_u16(c).ok())
        {
            Some(code) => {
                let mut r = echo(&req, name);
                *r.status_mut() = code;
                r
            }
            None => text(StatusCode::BAD_REQUEST, "bad status code"),
        }
    } else if let Some(n) = path.strip_prefix("/bytes/") {
        match n.parse::<u64>() {
            Ok(n) => bytes(n, wants_trailers(req.headers())),
            Err(_) => text(StatusCode::BAD_REQUEST, "bad length"),
        }
    } else if path == "/sha256" && matches!(*req.method(), Method::POST | Method::PUT) {
        sha256(req).await
    } else if let Some(n) = path.strip_prefix("/reset-after/") {
        let token = req
            .uri()
            .query()
            .and_then(|q| q.split('&').find_map(|kv| kv.strip_prefix("token=")))
            .unwrap_or_default()
            .to_string();
        match n.parse::<u64>() {
            // HTTP/2: only the stream is reset, so the flag for the connection stays down.
            Ok(n) => reset_after(
                n,
                token,
                (req.version() != Version::HTTP_2).then(|| reset.clone()),
            ),
            Err(_) => text(StatusCode::BAD_REQUEST, "bad length"),
        }
    } else if let Some(token) = path.strip_prefix("/cut/") {
        let waiting = CUTS
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .remove(token);
        match waiting {
            Some(tx) => {
                let _ = tx.send(());
                text(StatusCode::OK, "cut")
            }
            None => text(StatusCode::NOT_FOUND, "nothing waits for that token"),
        }
    } else {
        echo(&req, name)
    };
    resp.headers_mut().insert(
        "x-instance",
        HeaderValue::from_str(name).unwrap_or(HeaderValue::from_static("invalid")),
    );
    resp
}

fn wants_trailers(h: &HeaderMap) -> bool {
    h.get_all("te")
        .iter()
        .filter_map(|v| v.to_str().ok())
        .any(|v| {
            v.split(',')
                .any(|t| t.trim().eq_ignore_ascii_case("trailers"))
        })
}

fn full(body: impl Into<Bytes>) -> RespBody {
    Full::new(body.into())
        .map_err(|e: Infallible| match e {})
        .boxed()
}

fn text(status: StatusCode, msg: &str) -> Response<RespBody> {
    let mut r = Response::new(full(format!("{msg}\n")));
    *r.status_mut() = status;
    r
}

fn json_response(v: serde_json::Value) -> Response<RespBody> {
    let mut r = Response::new(full(v.to_string()));
    r.headers_mut()
        .insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
    r
}

/// What the backend saw of the request.
fn echo(req: &Request<Incoming>, name: &str) -> Response<RespBody> {
    let mut headers = serde_json::Map::new();
    for (k, v) in req.headers() {
        let v = String::from_utf8_lossy(v.as_bytes()).to_string();
        let entry = headers
            .entry(k.as_str().to_string())
            .or_insert_with(|| json!(""));
        *entry = match entry.as_str() {
            Some("") => json!(v),
            Some(prev) => json!(format!("{prev}, {v}")),
            None => json!(v),
        };
    }
    // HTTP/2 carries the authority in the URI, not in a Host header.
    if let Some(a) = req.uri().authority() {
        headers
            .entry("host".to_string())
            .or_insert_with(|| json!(a.as_str()));
    }
    json_response(json!({
        "instance": name,
        "method": req.method().as_str(),
        "path": req.uri().path(),
        "query": req.uri().query().unwrap_or(""),
        "version": format!("{:?}", req.version()),
        "headers": headers,
    }))
}

/// `n` bytes of the stream, then (if asked) the `x-sha256` trailer.
fn bytes(n: u64, trailers: bool) -> Response<RespBody> {
    let (tx, body) = ChanBody::new();
    tokio::spawn(async move {
        let mut sha = pattern::Sha256::new();
        let mut pos = 0u64;
        while pos < n {
            let k = (n - pos).min(CHUNK as u64) as usize;
            let mut b = BytesMut::zeroed(k);
            pattern::fill(pos, &mut b);
            if trailers {
                sha.update(&b);
            }
            if tx.send(Ok(Frame::data(b.freeze()))).await.is_err() {
                return;
            }
            pos += k as u64;
        }
        if trailers {
            let mut t = HeaderMap::new();
            if let Ok(v) = HeaderValue::from_str(&sha.finish_hex()) {
                t.insert("x-sha256", v);
            }
            let _ = tx.send(Ok(Frame::trailers(t))).await;
        }
    });
    let mut r = Response::new(body.boxed());
    let h = r.headers_mut();
    h.insert(
        CONTENT_TYPE,
        HeaderValue::from_static("application/octet-stream"),
    );
    if trailers {
        h.insert("trailer", HeaderValue::from_static("x-sha256"));
    } else {
        h.insert(CONTENT_LENGTH, HeaderValue::from(n));
    }
    r
}

/// Reads the request body as it arrives and answers its length and digest.
async fn sha256(req: Request<Incoming>) -> Response<RespBody> {
    let mut body = req.into_body();
    let mut sha = pattern::Sha256::new();
    while let Some(frame) = body.frame().await {
        match frame {
            Ok(f) => {
                if let Some(d) = f.data_ref() {
                    sha.update(d);
                }
            }
            Err(e) => return text(StatusCode::BAD_REQUEST, &format!("request body: {e}")),
        }
    }
    let n = sha.len();
    json_response(json!({"bytes": n, "sha256": sha.finish_hex()}))
}

/// Promises `n + RESET_SHORTFALL` bytes, sends `n`, waits for `/cut/{token}`, then fails the
/// body: hyper drops the connection (HTTP/1.1) or resets the stream (HTTP/2). With `reset`
/// (HTTP/1.1) the drop is a TCP reset.
fn reset_after(n: u64, token: String, reset: Option<Arc<AtomicBool>>) -> Response<RespBody> {
    let (tx, body) = ChanBody::new();
    let (cut_tx, cut) = oneshot::channel();
    CUTS.lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
        .insert(token, cut_tx);
    tokio::spawn(async move {
        let mut pos = 0u64;
        while pos < n {
            let k = (n - pos).min(CHUNK as u64) as usize;
            let mut b = BytesMut::zeroed(k);
            pattern::fill(pos, &mut b);
            if tx.send(Ok(Frame::data(b.freeze()))).await.is_err() {
                return;
            }
            pos += k as u64;
        }
        let _ = tokio::time::timeout(CUT_WAIT, cut).await;
        if let Some(r) = reset {
            r.store(true, Ordering::SeqCst);
        }
        let _ = tx
            .send(Err(io::Error::new(
                io::ErrorKind::ConnectionReset,
                "reset-after: cut on purpose",
            )))
            .await;
    });
    let mut r = Response::new(body.boxed());
    r.headers_mut().insert(
        CONTENT_TYPE,
        HeaderValue::from_static("application/octet-stream"),
    );
    r.headers_mut()
        .insert(CONTENT_LENGTH, HeaderValue::from(n + RESET_SHORTFALL));
    r
}

/// A body fed by a channel (bounded, so a slow reader slows the producer).
struct ChanBody {
    rx: mpsc::Receiver<Result<Frame<Bytes>, io::Error>>,
}

impl ChanBody {
    fn new() -> (mpsc::Sender<Result<Frame<Bytes>, io::Error>>, ChanBody) {
        let (tx, rx) = mpsc::channel(4);
        (tx, ChanBody { rx })
    }
}

impl Body for ChanBody {
    type Data = Bytes;
    type Error = io::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, io::Error>>> {
        self.rx.poll_recv(cx)
    }
}

/// The connection's socket; when `reset` is set by the time it is dropped, it is closed with
/// SO_LINGER 0, which sends a TCP reset instead of a FIN.
struct ResettableIo {
    inner: TcpStream,
    reset: Arc<AtomicBool>,
}

impl Drop for ResettableIo {
    fn drop(&mut self) {
        if self.reset.load(Ordering::SeqCst) {
            let _ = socket2::SockRef::from(&self.inner).set_linger(Some(Duration::ZERO));
        }
    }
}

impl AsyncRead for ResettableIo {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_read(cx, buf)
    }
}

impl AsyncWrite for ResettableIo {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }
}
