//! Blocking queries: per-query indexes, timeouts, many waiters, and a client that hangs up.

use std::time::Duration;

use axum::body::Body;
use axum::http::{Method, Request, StatusCode};
use serde_json::json;
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::time::Instant;
use tower::ServiceExt as _;

use super::{assert_status, Harness};

async fn eventually(what: &str, timeout: Duration, mut cond: impl FnMut() -> bool) {
    let deadline = Instant::now() + timeout;
    while !cond() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

#[tokio::test]
async fn a_service_watch_wakes_only_for_its_service() {
    let h = Harness::new().await;
    let r = h
        .put("/v1/agent/service/register", json!({"Name": "web"}))
        .await;
    assert_status(&r, StatusCode::OK);
    let r = h.get("/v1/health/service/web").await;
    let index = r.index();
    let gauge = h.ctx.metrics.blocking_queries.clone();

    let app = h.app.clone();
    let uri = format!("/v1/health/service/web?index={index}&wait=20s");
    let watch = tokio::spawn(async move {
        let req = Request::builder()
            .uri(uri)
            .body(Body::empty())
            .expect("request");
        let started = Instant::now();
        let resp = app.oneshot(req).await.expect("infallible");
        (started.elapsed(), resp)
    });
    eventually("the query to wait", Duration::from_secs(5), || {
        gauge.get() == 1
    })
    .await;

    // Writes elsewhere (another service, KV) do not answer it.
    let r = h
        .put("/v1/agent/service/register", json!({"Name": "db"}))
        .await;
    assert_status(&r, StatusCode::OK);
    assert_status(&h.call(Method::PUT, "/v1/kv/k", "v").await, StatusCode::OK);
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert!(
        !watch.is_finished(),
        "a write to another service woke the watch"
    );
    assert_eq!(gauge.get(), 1);

    // A change to web does.
    let r = h
        .put(
            "/v1/agent/service/register",
            json!({"Name": "web", "Tags": ["new"]}),
        )
        .await;
    assert_status(&r, StatusCode::OK);
    let (elapsed, resp) = tokio::time::timeout(Duration::from_secs(5), watch)
        .await
        .expect("answered")
        .expect("task");
    assert!(elapsed < Duration::from_secs(10));
    assert_eq!(resp.status(), StatusCode::OK);
    let new_index: u64 = resp
        .headers()
        .get("x-consul-index")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse().ok())
        .expect("index");
    assert!(new_index > index);
    let body = axum::body::to_bytes(resp.into_body(), usize::MAX)
        .await
        .expect("body");
    let v: serde_json::Value = serde_json::from_slice(&body).expect("json");
    assert_eq!(v[0]["Service"]["Tags"], json!(["new"]));
    assert_eq!(gauge.get(), 0);
}

#[tokio::test]
async fn wait_elapses_and_old_index_answers_at_once() {
    let h = Harness::new().await;
    assert_status(&h.call(Method::PUT, "/v1/kv/a", "1").await, StatusCode::OK);
    let index = h.get("/v1/kv/a").await.index();

    let start = Instant::now();
    let r = h.get(&format!("/v1/kv/a?index={index}&wait=300ms")).await;
    let took = start.elapsed();
    assert_status(&r, StatusCode::OK);
    assert_eq!(r.index(), index);
    assert!(took >= Duration::from_millis(300), "{took:?}");
    assert!(took < Duration::from_secs(3), "{took:?}");

    let start = Instant::now();
    let r = h
        .get(&format!("/v1/kv/a?index={}&wait=30s", index - 1))
        .await;
    assert_status(&r, StatusCode::OK);
    assert!(start.elapsed() < Duration::from_secs(1));

    // A missing key blocks too, and its 404 carries the index to block on.
    let r = h.get("/v1/kv/missing").await;
    assert_status(&r, StatusCode::NOT_FOUND);
    let i = r.index();
    let app = h.app.clone();
    let watch = tokio::spawn(async move {
        let req = Request::builder()
            .uri(format!("/v1/kv/missing?index={i}&wait=20s"))
            .body(Body::empty())
            .expect("request");
        app.oneshot(req).await.expect("infallible")
    });
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert!(!watch.is_finished());
    assert_status(
        &h.call(Method::PUT, "/v1/kv/missing", "now").await,
        StatusCode::OK,
    );
    let resp = tokio::time::timeout(Duration::from_secs(5), watch)
        .await
        .expect("answered")
        .expect("task");
    assert_eq!(resp.status(), StatusCode::OK);
}

#[tokio::test]
async fn ten_thousand_waiters_are_answered_and_freed() {
    const N: usize = 10_000;
    let h = Harness::new().await;
    assert_status(
        &h.put("/v1/agent/service/register", json!({"Name": "web"}))
            .await,
        StatusCode::OK,
    );
    let index = h.get("/v1/catalog/service/web").await.index();
    let gauge = h.ctx.metrics.blocking_queries.clone();
    let rss = || {
        std::fs::read_to_string("/proc/self/status")
            .ok()
            .and_then(|s| {
                s.lines()
                    .find(|l| l.starts_with("VmRSS"))
                    .map(str::to_string)
            })
    };
    let before = rss();
    let mut tasks = Vec::with_capacity(N);
    for _ in 0..N {
        let app = h.app.clone();
        let uri = format!("/v1/catalog/service/web?index={index}&wait=60s");
        tasks.push(tokio::spawn(async move {
            let req = Request::builder()
                .uri(uri)
                .body(Body::empty())
                .expect("request");
            app.oneshot(req).await.expect("infallible").status()
        }));
    }
    eventually("all queries to wait", Duration::from_secs(60), || {
        gauge.get() == N as i64
    })
    .await;
    eprintln!(
        "RSS before the waiters: {before:?}; with {N} waiting: {:?}",
        rss()
    );
    let r = h
        .put(
            "/v1/agent/service/register",
            json!({"Name": "web", "Port": 81}),
        )
        .await;
    assert_status(&r, StatusCode::OK);
    let woke = Instant::now();
    for t in tasks {
        let status = tokio::time::timeout(Duration::from_secs(60), t)
            .await
            .expect("answered")
            .expect("task");
        assert_eq!(status, StatusCode::OK);
    }
    eprintln!("{N} waiters answered {:?} after the write", woke.elapsed());
    assert_eq!(gauge.get(), 0);
}

#[tokio::test]
async fn a_client_that_hangs_up_frees_its_query() {
    let h = Harness::new().await;
    assert_status(
        &h.put("/v1/agent/service/register", json!({"Name": "web"}))
            .await,
        StatusCode::OK,
    );
    let index = h.get("/v1/catalog/service/web").await.index();
    let gauge = h.ctx.metrics.blocking_queries.clone();

    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let addr = listener.local_addr().expect("addr");
    let app = h.app.clone();
    let server = tokio::spawn(async move { axum::serve(listener, app).await });

    let mut conn = tokio::net::TcpStream::connect(addr).await.expect("connect");
    let req = format!(
        "GET /v1/catalog/service/web?index={index}&wait=120s HTTP/1.1\r\nHost: {addr}\r\n\r\n"
    );
    conn.write_all(req.as_bytes()).await.expect("send");
    eventually("the query to wait", Duration::from_secs(5), || {
        gauge.get() == 1
    })
    .await;
    drop(conn);
    eventually("the query to be freed", Duration::from_secs(5), || {
        gauge.get() == 0
    })
    .await;

    // The server still answers, with the headers every response carries.
    let mut conn = tokio::net::TcpStream::connect(addr).await.expect("connect");
    let req =
        format!("GET /v1/catalog/services HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n");
    conn.write_all(req.as_bytes()).await.expect("send");
    let mut out = String::new();
    conn.read_to_string(&mut out).await.expect("read");
    let lower = out.to_ascii_lowercase();
    assert!(lower.starts_with("http/1.1 200"), "{out}");
    for h in [
        "x-consul-index:",
        "x-consul-knownleader: true",
        "x-consul-lastcontact:",
    ] {
        assert!(lower.contains(h), "missing {h}: {out}");
    }
    server.abort();
}
