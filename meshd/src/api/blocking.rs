//! Query parameters, consistency modes and blocking queries (`?index=N&wait=D`).
//!
//! A blocking query waits until the index of *its own* data (one service, one node, one KV key
//! or prefix, or a table) exceeds the index the client holds, or until its wait elapses, then
//! answers with the current data. Waiting costs one `watch::Receiver` of the registry's applied
//! index and a timer; on every applied change the query recomputes its index under a short read
//! lock (never held across an await) and goes back to sleep if its data did not change, so a
//! watcher of one service is not answered by writes to another. When the client goes away the
//! handler future is dropped, which frees the query at once (the gauge follows through a drop
//! guard).

use std::time::Duration;

use prometheus_client::metrics::gauge::Gauge;
use rand::RngExt as _;
use registry::{Consistency, State};
use tokio::sync::watch;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use super::error::ApiError;
use super::ApiContext;
use registry::duration::parse_go_duration;

/// Wait of a blocking query that gives none (Consul's default).
pub const DEFAULT_WAIT: Duration = Duration::from_secs(300);
/// Longest wait a blocking query may ask for (Consul's cap).
pub const MAX_WAIT: Duration = Duration::from_secs(600);
/// The jitter added to a wait is up to `wait / JITTER_FRACTION` (as Consul).
const JITTER_FRACTION: u32 = 16;

/// The query string of a request, in order, repeated keys kept.
#[derive(Debug, Default, Clone)]
pub struct Params(Vec<(String, String)>);

impl Params {
    /// Parses a raw query string (`None`: no query).
    pub fn parse(raw: Option<&str>) -> Params {
        Params(
            raw.map(|q| {
                form_urlencoded::parse(q.as_bytes())
                    .map(|(k, v)| (k.into_owned(), v.into_owned()))
                    .collect()
            })
            .unwrap_or_default(),
        )
    }

    /// Whether the parameter is present, with or without a value (`?recurse`).
    pub fn has(&self, key: &str) -> bool {
        self.0.iter().any(|(k, _)| k == key)
    }

    /// The first value of a parameter.
    pub fn get(&self, key: &str) -> Option<&str> {
        self.0
            .iter()
            .find(|(k, _)| k == key)
            .map(|(_, v)| v.as_str())
    }

    /// Every value of a repeatable parameter (`?tag=a&tag=b`).
    pub fn all<'a>(&'a self, key: &'a str) -> impl Iterator<Item = &'a str> + 'a {
        self.0
            .iter()
            .filter(move |(k, _)| k == key)
            .map(|(_, v)| v.as_str())
    }

    /// A boolean parameter: absent is `None`; present without a value is true; otherwise a
    /// Go `strconv.ParseBool` spelling (`1`, `t`, `true`, `True`, `0`, `false`, ...).
    pub fn bool(&self, key: &str) -> Result<Option<bool>, ApiError> {
        match self.get(key) {
            None => Ok(None),
            Some("") => Ok(Some(true)),
            Some(v) => parse_bool(v)
                .map(Some)
                .ok_or_else(|| ApiError::bad(format!("Invalid value for ?{key}: {v:?}"))),
        }
    }

    /// An unsigned integer parameter.
    pub fn u64(&self, key: &str) -> Result<Option<u64>, ApiError> {
        match self.get(key) {
            None => Ok(None),
            Some(v) => v.parse::<u64>().map(Some).map_err(|_| {
                ApiError::bad(format!(
                    "Invalid value for ?{key}: {v:?} is not an unsigned integer"
                ))
            }),
        }
    }

    /// `?node-meta=key:value` filters (repeatable; all must match).
    pub fn node_meta(&self) -> Result<Vec<(String, String)>, ApiError> {
        self.all("node-meta")
            .map(|f| match f.split_once(':') {
                Some((k, v)) if !k.is_empty() => Ok((k.to_string(), v.to_string())),
                _ => Err(ApiError::bad(format!(
                    "Invalid value for ?node-meta: {f:?} (expected key:value)"
                ))),
            })
            .collect()
    }
}

/// Go's `strconv.ParseBool`.
pub fn parse_bool(v: &str) -> Option<bool> {
    match v {
        "1" | "t" | "T" | "true" | "TRUE" | "True" => Some(true),
        "0" | "f" | "F" | "false" | "FALSE" | "False" => Some(false),
        _ => None,
    }
}

/// Options every read takes: blocking and consistency.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct QueryOptions {
    /// The index the client holds; 0 does not block.
    pub index: u64,
    /// How long to block, jitter not included.
    pub wait: Duration,
    pub consistency: Consistency,
}

impl QueryOptions {
    pub fn parse(p: &Params) -> Result<QueryOptions, ApiError> {
        let index = match p.get("index") {
            None | Some("") => 0,
            Some(v) => v.parse::<u64>().map_err(|_| {
                ApiError::bad(format!("Invalid index {v:?}: not an unsigned integer"))
            })?,
        };
        let wait = match p.get("wait") {
            None | Some("") => DEFAULT_WAIT,
            Some(v) => {
                let d = parse_go_duration(v)
                    .map_err(|e| ApiError::bad(format!("Invalid wait time: {e}")))?;
                if d.is_zero() {
                    DEFAULT_WAIT
                } else {
                    d.min(MAX_WAIT)
                }
            }
        };
        let consistency = match (p.has("stale"), p.has("consistent")) {
            (true, true) => return Err(ApiError::bad("cannot specify ?stale with ?consistent")),
            (true, false) => Consistency::Stale,
            (false, true) => Consistency::Consistent,
            (false, false) => Consistency::Default,
        };
        Ok(QueryOptions {
            index,
            wait,
            consistency,
        })
    }

    /// The wait with Consul's random jitter (up to `wait / 16`) added.
    pub fn wait_with_jitter(&self) -> Duration {
        let max = self.wait / JITTER_FRACTION;
        if max.is_zero() {
            return self.wait;
        }
        let nanos = u64::try_from(max.as_nanos()).unwrap_or(u64::MAX);
        self.wait + Duration::from_nanos(rand::rng().random_range(0..=nanos))
    }
}

/// Keeps the gauge of waiting blocking queries up while it lives.
pub struct WaitingGuard(Gauge);

impl WaitingGuard {
    pub fn new(gauge: &Gauge) -> WaitingGuard {
        gauge.inc();
        WaitingGuard(gauge.clone())
    }
}

impl Drop for WaitingGuard {
    fn drop(&mut self) {
        self.0.dec();
    }
}

/// Why a wait ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WaitEnd {
    /// The query's index passed the one held.
    Changed,
    /// The wait elapsed.
    Timeout,
    /// The agent is shutting down, or the registry stopped publishing.
    Closed,
}

/// Waits until `current()` exceeds `min_index`, `deadline` passes or `shutdown` fires.
/// `current` is called once per applied change of the registry (`applied`).
pub async fn wait_for_index(
    mut applied: watch::Receiver<u64>,
    min_index: u64,
    deadline: Instant,
    shutdown: &CancellationToken,
    gauge: &Gauge,
    current: impl Fn() -> u64,
) -> WaitEnd {
    applied.borrow_and_update();
    if current() > min_index {
        return WaitEnd::Changed;
    }
    let _waiting = WaitingGuard::new(gauge);
    let sleep = tokio::time::sleep_until(deadline);
    tokio::pin!(sleep);
    loop {
        tokio::select! {
            changed = applied.changed() => {
                if changed.is_err() {
                    return WaitEnd::Closed;
                }
                if current() > min_index {
                    return WaitEnd::Changed;
                }
            }
            _ = &mut sleep => return WaitEnd::Timeout,
            _ = shutdown.cancelled() => return WaitEnd::Closed,
        }
    }
}

/// The outcome of a read: the data and the index it reflects (at least 1).
pub struct Read<T> {
    pub index: u64,
    pub value: T,
}

/// Runs a read with the query's consistency and blocking options: barrier, then (if the
/// client holds an index that is still current) wait, then read. `index_of` computes the
/// query's own index; `read` extracts the answer. Neither holds the state across an await.
pub async fn blocking_read<T>(
    ctx: &ApiContext,
    opts: &QueryOptions,
    index_of: impl Fn(&State) -> u64,
    read: impl FnOnce(&State) -> T,
) -> Result<Read<T>, ApiError> {
    ctx.registry.read_barrier(opts.consistency).await?;
    if opts.index > 0 {
        let applied = ctx.registry.subscribe();
        let deadline = Instant::now() + opts.wait_with_jitter();
        let end = wait_for_index(
            applied,
            opts.index,
            deadline,
            &ctx.shutdown,
            &ctx.metrics.blocking_queries,
            || index_of(&ctx.registry.read()),
        )
        .await;
        tracing::debug!(?end, index = opts.index, "blocking query woke");
        if end == WaitEnd::Changed && opts.consistency == Consistency::Consistent {
            // As Consul: `?consistent` confirms leadership again for the answer. The default
            // mode confirmed it when the query arrived, which spares a burst of leadership
            // checks when one write wakes thousands of waiters.
            ctx.registry.read_barrier(opts.consistency).await?;
        }
    }
    let state = ctx.registry.read();
    let index = index_of(&state).max(1);
    let value = read(&state);
    Ok(Read { index, value })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicU64, Ordering};
    use std::sync::Arc;

    fn opts(q: &str) -> Result<QueryOptions, ApiError> {
        QueryOptions::parse(&Params::parse(Some(q)))
    }

    #[test]
    fn query_options() {
        let o = opts("").expect("empty");
        assert_eq!(
            (o.index, o.wait, o.consistency),
            (0, DEFAULT_WAIT, Consistency::Default)
        );
        let o = opts("index=42&wait=10s&stale").expect("valid");
        assert_eq!(
            (o.index, o.wait, o.consistency),
            (42, Duration::from_secs(10), Consistency::Stale)
        );
        assert_eq!(
            opts("wait=120000ms").expect("ms").wait,
            Duration::from_secs(120)
        );
        assert_eq!(
            opts("wait=1m30s").expect("m s").wait,
            Duration::from_secs(90)
        );
        assert_eq!(opts("wait=1h").expect("capped").wait, MAX_WAIT);
        assert_eq!(
            opts("consistent=").expect("c").consistency,
            Consistency::Consistent
        );
        assert!(opts("index=abc").is_err());
        assert!(opts("index=-1").is_err());
        assert!(opts("wait=10").is_err());
        assert!(opts("wait=soon").is_err());
        let e = opts("stale&consistent").expect_err("both");
        assert!(e
            .to_string()
            .contains("cannot specify ?stale with ?consistent"));
    }

    #[test]
    fn jitter_is_bounded() {
        let o = opts("wait=16s").expect("valid");
        for _ in 0..100 {
            let w = o.wait_with_jitter();
            assert!(
                w >= Duration::from_secs(16) && w <= Duration::from_secs(17),
                "{w:?}"
            );
        }
    }

    #[test]
    fn params() {
        let p = Params::parse(Some(
            "tag=a&tag=b%20c&recurse&passing=0&keys=True&node-meta=k:v:w",
        ));
        assert_eq!(p.all("tag").collect::<Vec<_>>(), vec!["a", "b c"]);
        assert!(p.has("recurse"));
        assert_eq!(p.bool("recurse").ok(), Some(Some(true)));
        assert_eq!(p.bool("passing").ok(), Some(Some(false)));
        assert_eq!(p.bool("keys").ok(), Some(Some(true)));
        assert_eq!(p.bool("absent").ok(), Some(None));
        assert_eq!(
            p.node_meta().ok(),
            Some(vec![("k".to_string(), "v:w".to_string())])
        );
        assert!(Params::parse(Some("passing=maybe"))
            .bool("passing")
            .is_err());
        assert!(Params::parse(Some("node-meta=nocolon"))
            .node_meta()
            .is_err());
    }

    #[tokio::test]
    async fn waits_only_for_its_own_index() {
        let (tx, rx) = watch::channel(10u64);
        let own = Arc::new(AtomicU64::new(5));
        let gauge = Gauge::default();
        let shutdown = CancellationToken::new();
        let task = {
            let own = own.clone();
            let gauge = gauge.clone();
            let shutdown = shutdown.clone();
            tokio::spawn(async move {
                wait_for_index(
                    rx,
                    5,
                    Instant::now() + Duration::from_secs(30),
                    &shutdown,
                    &gauge,
                    || own.load(Ordering::SeqCst),
                )
                .await
            })
        };
        tokio::time::sleep(Duration::from_millis(50)).await;
        assert_eq!(gauge.get(), 1);
        // Another key changed: the applied index moves, ours does not.
        tx.send_replace(11);
        tokio::time::sleep(Duration::from_millis(50)).await;
        assert!(!task.is_finished());
        own.store(12, Ordering::SeqCst);
        tx.send_replace(12);
        assert_eq!(task.await.ok(), Some(WaitEnd::Changed));
        assert_eq!(gauge.get(), 0);
    }

    #[tokio::test]
    async fn returns_at_once_when_index_is_behind_and_times_out_otherwise() {
        let (_tx, rx) = watch::channel(1u64);
        let gauge = Gauge::default();
        let shutdown = CancellationToken::new();
        let end = wait_for_index(rx.clone(), 3, Instant::now(), &shutdown, &gauge, || 7).await;
        assert_eq!(end, WaitEnd::Changed);
        let start = Instant::now();
        let end = wait_for_index(
            rx,
            7,
            Instant::now() + Duration::from_millis(50),
            &shutdown,
            &gauge,
            || 7,
        )
        .await;
        assert_eq!(end, WaitEnd::Timeout);
        assert!(start.elapsed() >= Duration::from_millis(50));
        assert_eq!(gauge.get(), 0);
    }

    #[tokio::test]
    async fn dropping_the_future_frees_the_query() {
        let (_tx, rx) = watch::channel(1u64);
        let gauge = Gauge::default();
        let shutdown = CancellationToken::new();
        let fut = wait_for_index(
            rx,
            1,
            Instant::now() + Duration::from_secs(60),
            &shutdown,
            &gauge,
            || 1,
        );
        let r = tokio::time::timeout(Duration::from_millis(20), fut).await;
        assert!(r.is_err());
        assert_eq!(gauge.get(), 0);
    }

    #[tokio::test]
    async fn shutdown_ends_the_wait() {
        let (_tx, rx) = watch::channel(1u64);
        let gauge = Gauge::default();
        let shutdown = CancellationToken::new();
        shutdown.cancel();
        let end = wait_for_index(
            rx,
            1,
            Instant::now() + Duration::from_secs(60),
            &shutdown,
            &gauge,
            || 1,
        )
        .await;
        assert_eq!(end, WaitEnd::Closed);
    }
}
