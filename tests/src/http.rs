//! A small async HTTP client for meshd's API.
//!
//! Every call returns a [`Resp`] (status, headers, body) whatever the status, so tests assert on
//! 4xx answers as easily as on 200s. Transport errors panic with the method and URL: in a test
//! they are failures. [`Api::send`] returns them instead, for callers that count errors.

use std::time::Duration;

use reqwest::header::HeaderMap;
use reqwest::Method;
use serde::de::DeserializeOwned;
use serde_json::Value;

/// Default bound on one request (blocking queries pass their own, longer one).
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(60);

/// A response: status, headers and the whole body.
#[derive(Clone, Debug)]
pub struct Resp {
    pub method: Method,
    pub url: String,
    pub status: u16,
    pub headers: HeaderMap,
    pub body: Vec<u8>,
}

impl Resp {
    /// The body as text (lossy UTF-8).
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }

    /// The body as JSON; panics with the request and body if it is not.
    pub fn json(&self) -> Value {
        self.parse()
    }

    /// The body deserialized as `T`; panics with the request and body if it does not fit.
    pub fn parse<T: DeserializeOwned>(&self) -> T {
        serde_json::from_slice(&self.body).unwrap_or_else(|e| {
            panic!(
                "{} {} -> {}: body is not the expected JSON ({e}): {}",
                self.method,
                self.url,
                self.status,
                self.text()
            )
        })
    }

    /// A header's value as text.
    pub fn header(&self, name: &str) -> Option<String> {
        self.headers
            .get(name)
            .and_then(|v| v.to_str().ok())
            .map(str::to_string)
    }

    /// `X-Consul-Index` as a number, if present and numeric.
    pub fn index(&self) -> Option<u64> {
        self.header("X-Consul-Index")
            .and_then(|v| v.trim().parse().ok())
    }

    /// `X-Consul-Index`; panics if it is missing or not a number.
    pub fn must_index(&self) -> u64 {
        self.index().unwrap_or_else(|| {
            panic!(
                "{} {} -> {}: no numeric X-Consul-Index header (headers: {:?})",
                self.method, self.url, self.status, self.headers
            )
        })
    }

    /// Panics unless the status is `want`, showing the request and body.
    pub fn expect_status(&self, want: u16) -> &Resp {
        assert_eq!(
            self.status,
            want,
            "{} {}: expected status {want}, got {} with body {:?}",
            self.method,
            self.url,
            self.status,
            self.text()
        );
        self
    }

    /// Panics unless the status is 200 and the body is JSON `true`.
    pub fn expect_true(&self) -> &Resp {
        self.expect_status(200);
        assert_eq!(
            self.text().trim(),
            "true",
            "{} {}: expected body `true`",
            self.method,
            self.url
        );
        self
    }
}

/// HTTP client bound to one meshd's base URL. Cheap to clone (shares the connection pool).
#[derive(Clone, Debug)]
pub struct Api {
    base: String,
    client: reqwest::Client,
}

impl Api {
    /// A client for `base` (e.g. `http://127.0.0.1:43123`).
    pub fn new(base: &str) -> Api {
        let _ = rustls::crypto::ring::default_provider().install_default();
        let client = reqwest::Client::builder()
            .no_proxy()
            .connect_timeout(Duration::from_secs(10))
            .timeout(REQUEST_TIMEOUT)
            .build()
            .expect("build an HTTP client");
        Api {
            base: base.trim_end_matches('/').to_string(),
            client,
        }
    }

    /// The base URL.
    pub fn base(&self) -> &str {
        &self.base
    }

    /// The full URL of `path` (which starts with `/`).
    pub fn url(&self, path: &str) -> String {
        format!("{}{}", self.base, path)
    }

    /// Sends one request; transport errors are returned.
    pub async fn send(
        &self,
        method: Method,
        path: &str,
        body: Option<Vec<u8>>,
        timeout: Option<Duration>,
    ) -> Result<Resp, reqwest::Error> {
        let url = self.url(path);
        let mut req = self.client.request(method.clone(), &url);
        if let Some(b) = body {
            req = req.body(b);
        }
        if let Some(t) = timeout {
            req = req.timeout(t);
        }
        let resp = req.send().await?;
        let status = resp.status().as_u16();
        let headers = resp.headers().clone();
        let body = resp.bytes().await?.to_vec();
        Ok(Resp {
            method,
            url,
            status,
            headers,
            body,
        })
    }

    async fn must(
        &self,
        method: Method,
        path: &str,
        body: Option<Vec<u8>>,
        timeout: Option<Duration>,
    ) -> Resp {
        match self.send(method.clone(), path, body, timeout).await {
            Ok(r) => r,
            Err(e) => panic!("{method} {}: request failed: {e:?}", self.url(path)),
        }
    }

    /// GET `path`.
    pub async fn get(&self, path: &str) -> Resp {
        self.must(Method::GET, path, None, None).await
    }

    /// GET `path` with its own timeout (blocking queries).
    pub async fn get_timeout(&self, path: &str, timeout: Duration) -> Resp {
        self.must(Method::GET, path, None, Some(timeout)).await
    }

    /// PUT `path` with a raw body.
    pub async fn put(&self, path: &str, body: impl Into<Vec<u8>>) -> Resp {
        self.must(Method::PUT, path, Some(body.into()), None).await
    }

    /// PUT `path` with a JSON body.
    pub async fn put_json(&self, path: &str, body: &Value) -> Resp {
        let bytes = serde_json::to_vec(body).expect("serialize a JSON body");
        self.must(Method::PUT, path, Some(bytes), None).await
    }

    /// POST `path` with a JSON body.
    pub async fn post_json(&self, path: &str, body: &Value) -> Resp {
        let bytes = serde_json::to_vec(body).expect("serialize a JSON body");
        self.must(Method::POST, path, Some(bytes), None).await
    }

    /// DELETE `path`.
    pub async fn delete(&self, path: &str) -> Resp {
        self.must(Method::DELETE, path, None, None).await
    }

    /// Any method, optional body.
    pub async fn request(&self, method: Method, path: &str, body: Option<Vec<u8>>) -> Resp {
        self.must(method, path, body, None).await
    }

    /// The Prometheus text of `/metrics`.
    pub async fn metrics(&self) -> String {
        let r = self.get("/metrics").await;
        r.expect_status(200);
        r.text()
    }

    /// The value of `meshd_api_blocking_queries` (0 when absent from `/metrics`... which a test
    /// that needs it asserts separately).
    pub async fn blocking_queries(&self) -> Option<f64> {
        let text = self.metrics().await;
        crate::sys::metric_value(&text, "meshd_api_blocking_queries")
    }
}

/// Consul-shaped reads the tests share.
impl Api {
    /// The `Status` of check `check_id` as `/v1/health/checks/{service}` reports it.
    pub async fn check_status(&self, service: &str, check_id: &str) -> Option<String> {
        let r = self.get(&format!("/v1/health/checks/{service}")).await;
        if r.status != 200 {
            return None;
        }
        let checks: Vec<Value> = r.parse();
        checks
            .iter()
            .find(|c| c.get("CheckID").and_then(Value::as_str) == Some(check_id))
            .and_then(|c| c.get("Status").and_then(Value::as_str))
            .map(str::to_string)
    }

    /// The check `check_id` as `/v1/health/checks/{service}` reports it.
    pub async fn health_check(&self, service: &str, check_id: &str) -> Option<Value> {
        let r = self.get(&format!("/v1/health/checks/{service}")).await;
        if r.status != 200 {
            return None;
        }
        let checks: Vec<Value> = r.parse();
        checks
            .into_iter()
            .find(|c| c.get("CheckID").and_then(Value::as_str) == Some(check_id))
    }
}
