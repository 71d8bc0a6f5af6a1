//! The API's own metrics (requests by route and status, latency by route, waiting blocking
//! queries) and the metrics endpoints: `/metrics` and `/v1/agent/metrics?format=prometheus`
//! (OpenMetrics text of every registered metric), `/v1/agent/metrics` (a JSON summary in
//! Consul's shape: `Timestamp`, `Gauges`, `Counters`, `Samples`, `Points`).

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use axum::extract::{RawQuery, State};
use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use serde_json::{json, Value};

use super::blocking::Params;
use super::error::ApiError;
use super::{read_json, ApiContext};

type Ctx = State<Arc<ApiContext>>;

const OPENMETRICS: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RequestLabels {
    route: String,
    method: String,
    code: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RouteLabels {
    route: String,
    method: String,
}

fn latency_histogram() -> Histogram {
    // 0.5 ms .. ~16 s; blocking queries land in +Inf.
    Histogram::new(exponential_buckets(0.0005, 2.0, 16))
}

/// The API's metrics; cheap to clone.
#[derive(Clone, Debug)]
pub struct ApiMetrics {
    requests: Family<RequestLabels, Counter>,
    duration: Family<RouteLabels, Histogram, fn() -> Histogram>,
    /// Blocking queries waiting right now.
    pub blocking_queries: Gauge,
}

impl ApiMetrics {
    /// Creates the metrics and registers them in `registry`.
    pub fn new(registry: &mut prometheus_client::registry::Registry) -> ApiMetrics {
        let m = ApiMetrics {
            requests: Family::default(),
            duration: Family::new_with_constructor(latency_histogram as fn() -> Histogram),
            blocking_queries: Gauge::default(),
        };
        registry.register(
            "meshd_api_requests",
            "HTTP API requests by matched route, method and status code",
            m.requests.clone(),
        );
        registry.register(
            "meshd_api_request_duration_seconds",
            "HTTP API request latency by matched route and method, in seconds (blocking queries included)",
            m.duration.clone(),
        );
        registry.register(
            "meshd_api_blocking_queries",
            "Blocking queries waiting for a change",
            m.blocking_queries.clone(),
        );
        m
    }

    /// Records one finished request.
    pub fn observe_request(&self, route: &str, method: &str, status: u16, elapsed: Duration) {
        self.requests
            .get_or_create(&RequestLabels {
                route: route.to_string(),
                method: method.to_string(),
                code: status.to_string(),
            })
            .inc();
        self.duration
            .get_or_create(&RouteLabels {
                route: route.to_string(),
                method: method.to_string(),
            })
            .observe(elapsed.as_secs_f64());
    }
}

fn encode(ctx: &ApiContext) -> Result<String, ApiError> {
    let mut out = String::new();
    prometheus_client::encoding::text::encode(&mut out, &ctx.metrics_registry)
        .map_err(|e| ApiError::Internal(format!("encoding metrics: {e}")))?;
    Ok(out)
}

fn prometheus_text(ctx: &ApiContext) -> Result<Response, ApiError> {
    let body = encode(ctx)?;
    let mut resp = (StatusCode::OK, body).into_response();
    resp.headers_mut()
        .insert(header::CONTENT_TYPE, HeaderValue::from_static(OPENMETRICS));
    Ok(resp)
}

/// `GET /metrics`
pub async fn prometheus(State(ctx): Ctx) -> Result<Response, ApiError> {
    prometheus_text(&ctx)
}

/// `GET /v1/agent/metrics[?format=prometheus]`
pub async fn agent_metrics(State(ctx): Ctx, RawQuery(q): RawQuery) -> Result<Response, ApiError> {
    let params = Params::parse(q.as_deref());
    match params.get("format") {
        Some("prometheus") => prometheus_text(&ctx),
        None | Some("") => {
            let summary = summarize(&encode(&ctx)?, SystemTime::now());
            let index = ctx.registry.read().applied_index();
            Ok(read_json(index, &summary))
        }
        Some(other) => Err(ApiError::bad(format!(
            "Invalid value for ?format: {other:?} (only \"prometheus\")"
        ))),
    }
}

/// One sample line of the text format: name, labels, value.
fn parse_sample(line: &str) -> Option<(String, BTreeMap<String, String>, f64)> {
    let (series, value) = line.rsplit_once(' ')?;
    let value: f64 = value.parse().ok()?;
    let (name, labels) = match series.split_once('{') {
        None => (series.to_string(), BTreeMap::new()),
        Some((name, rest)) => (name.to_string(), parse_labels(rest.strip_suffix('}')?)?),
    };
    Some((name, labels, value))
}

fn parse_labels(s: &str) -> Option<BTreeMap<String, String>> {
    let mut out = BTreeMap::new();
    let mut chars = s.chars().peekable();
    loop {
        while chars.peek() == Some(&',') || chars.peek() == Some(&' ') {
            chars.next();
        }
        if chars.peek().is_none() {
            return Some(out);
        }
        let key: String = chars.by_ref().take_while(|c| *c != '=').collect();
        if chars.next() != Some('"') {
            return None;
        }
        let mut value = String::new();
        loop {
            match chars.next()? {
                '\\' => match chars.next()? {
                    'n' => value.push('\n'),
                    c => value.push(c),
                },
                '"' => break,
                c => value.push(c),
            }
        }
        out.insert(key, value);
    }
}

/// Consul's `Timestamp` format: `2006-01-02 15:04:05 +0000 UTC`.
fn consul_timestamp(now: SystemTime) -> String {
    let secs = now
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0);
    let (days, rem) = (secs / 86_400, secs % 86_400);
    // Civil date from days since 1970-01-01 (Howard Hinnant's algorithm).
    let z = days as i64 + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!(
        "{year:04}-{month:02}-{day:02} {:02}:{:02}:{:02} +0000 UTC",
        rem / 3600,
        (rem / 60) % 60,
        rem % 60
    )
}

/// A histogram's `_count`, `_sum` and labels.
type HistogramSums = (f64, f64, BTreeMap<String, String>);

/// A JSON summary of the text exposition in Consul's `/v1/agent/metrics` shape: gauges as
/// `Gauges`, counters as `Counters` (the running total as `Count` and `Sum`), histograms as
/// `Samples` (`Count`, `Sum`, `Mean`).
pub fn summarize(text: &str, now: SystemTime) -> Value {
    let mut types: BTreeMap<String, String> = BTreeMap::new();
    let mut gauges = Vec::new();
    let mut counters = Vec::new();
    let mut hist: BTreeMap<(String, String), HistogramSums> = BTreeMap::new();
    for line in text.lines() {
        if let Some(rest) = line.strip_prefix("# TYPE ") {
            if let Some((name, t)) = rest.split_once(' ') {
                types.insert(name.to_string(), t.to_string());
            }
            continue;
        }
        if line.starts_with('#') || line.is_empty() {
            continue;
        }
        let Some((name, labels, value)) = parse_sample(line) else {
            continue;
        };
        let family = |suffix: &str| name.strip_suffix(suffix).map(str::to_string);
        if types.get(&name).map(String::as_str) == Some("gauge") {
            gauges.push(json!({"Name": name, "Value": value, "Labels": labels}));
        } else if let Some(base) =
            family("_total").filter(|b| types.get(b).is_some_and(|t| t == "counter"))
        {
            counters.push(json!({"Name": base, "Count": value, "Sum": value, "Labels": labels}));
        } else if let Some(base) =
            family("_count").filter(|b| types.get(b).is_some_and(|t| t == "histogram"))
        {
            let key = (base, format!("{labels:?}"));
            hist.entry(key).or_insert((0.0, 0.0, labels)).0 = value;
        } else if let Some(base) =
            family("_sum").filter(|b| types.get(b).is_some_and(|t| t == "histogram"))
        {
            let key = (base, format!("{labels:?}"));
            hist.entry(key).or_insert((0.0, 0.0, labels)).1 = value;
        }
    }
    let samples: Vec<Value> = hist
        .into_iter()
        .map(|((name, _), (count, sum, labels))| {
            let mean = if count > 0.0 { sum / count } else { 0.0 };
            json!({"Name": name, "Count": count, "Sum": sum, "Mean": mean, "Labels": labels})
        })
        .collect();
    json!({
        "Timestamp": consul_timestamp(now),
        "Gauges": gauges,
        "Points": [],
        "Counters": counters,
        "Samples": samples,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn registers_and_encodes() {
        let mut reg = prometheus_client::registry::Registry::default();
        let m = ApiMetrics::new(&mut reg);
        m.observe_request("/v1/kv/{*key}", "GET", 200, Duration::from_millis(3));
        m.blocking_queries.inc();
        let mut text = String::new();
        prometheus_client::encoding::text::encode(&mut text, &reg).expect("encodes");
        assert!(
            text.contains(
                "meshd_api_requests_total{route=\"/v1/kv/{*key}\",method=\"GET\",code=\"200\"} 1"
            ),
            "{text}"
        );
        assert!(text.contains("meshd_api_blocking_queries 1"), "{text}");
        assert!(
            text.contains("meshd_api_request_duration_seconds_count"),
            "{text}"
        );

        let s = summarize(&text, UNIX_EPOCH + Duration::from_secs(1_700_000_000));
        assert_eq!(s["Timestamp"], "2023-11-14 22:13:20 +0000 UTC");
        assert_eq!(s["Gauges"][0]["Name"], "meshd_api_blocking_queries");
        assert_eq!(s["Gauges"][0]["Value"], 1.0);
        assert_eq!(s["Counters"][0]["Name"], "meshd_api_requests");
        assert_eq!(s["Counters"][0]["Labels"]["route"], "/v1/kv/{*key}");
        assert_eq!(s["Samples"][0]["Count"], 1.0);
    }

    #[test]
    fn label_parsing_handles_escapes() {
        let (name, labels, v) =
            parse_sample(r#"x_total{a="b \"q\"",c="d,e"} 2.5"#).expect("parses");
        assert_eq!(name, "x_total");
        assert_eq!(labels["a"], "b \"q\"");
        assert_eq!(labels["c"], "d,e");
        assert_eq!(v, 2.5);
    }
}
