//! Tunnel streams kept between HTTP exchanges, on the calling side.
//!
//! A stream opened in [`Mode::Exchanges`](crate::proxy::tunnel::Mode) carries one exchange
//! after another, each message ending with its own frame ([`frame`](super::frame)), so the
//! next request from the same caller identity to the same instance reuses it: no stream to
//! open, no tunnel header, no intention answer to wait for, no task for the destination to
//! start. The destination still checks the caller against the intentions on every exchange.
//!
//! A stream comes back here only when both of its messages ended cleanly (the request written
//! to its end, the response read to its end); one that failed, was reset or whose body the
//! caller dropped is not used again. Kept streams are taken newest first and never used after
//! [`MAX_IDLE`] (the destination ends a stream idle for longer, see
//! [`inbound`](super::inbound)); at most [`PER_TARGET`] wait per instance and
//! [`PER_CONNECTION`] per tunnel connection, far below the streams a connection may have open
//! at once, so kept streams never hold back new ones.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Mutex, PoisonError};
use std::time::{Duration, Instant};

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;

use super::frame::FrameReader;

/// The longest a kept stream waits for its next exchange.
pub const MAX_IDLE: Duration = Duration::from_secs(20);
/// Kept streams per instance (caller identity, host, service, instance): as many as requests
/// to it may be in flight at once from one busy host (fewer, and a burst past them opens and
/// drops a stream per request).
pub const PER_TARGET: usize = 256;
/// Kept streams per tunnel connection (caller identity and host): half of the streams a
/// destination lets a connection have open at once (`MAX_BIDI_STREAMS`, 1024), so the other
/// half is always there for new ones.
pub const PER_CONNECTION: usize = 512;

/// Which streams may carry an exchange: the same caller identity, host and instance.
#[derive(Clone, Debug, Hash, PartialEq, Eq)]
pub struct Key {
    pub quic: SocketAddr,
    /// The caller service (`None`: the node's identity).
    pub source: Option<String>,
    pub service: String,
    pub instance: String,
    pub port: u16,
}

/// The halves of a stream between exchanges.
pub struct Kept {
    pub send: quinn::SendStream,
    pub reader: FrameReader<quinn::RecvStream>,
}

struct Idle {
    kept: Kept,
    since: Instant,
}

/// Whether an exchange's stream was opened for it or kept from an earlier one.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct Use {
    /// `opened` or `reused`.
    pub stream: &'static str,
}

/// The kept streams of this host's callers.
pub struct Streams {
    idle: Mutex<Table>,
    /// `meshd_proxy_http_tunnel_streams_total{stream}`.
    pub used: Family<Use, Counter>,
}

#[derive(Default)]
struct Table {
    by_key: HashMap<Key, Vec<Idle>>,
    /// Kept streams per (host, caller identity).
    per_connection: HashMap<(SocketAddr, Option<String>), usize>,
}

impl Table {
    fn forget(&mut self, key: &Key, n: usize) {
        if n == 0 {
            return;
        }
        let c = (key.quic, key.source.clone());
        if let Some(count) = self.per_connection.get_mut(&c) {
            *count = count.saturating_sub(n);
            if *count == 0 {
                self.per_connection.remove(&c);
            }
        }
    }

    /// Drops the streams of `key` idle for longer than [`MAX_IDLE`] (oldest first).
    fn expire(&mut self, key: &Key, now: Instant) {
        let Some(list) = self.by_key.get_mut(key) else {
            return;
        };
        let stale = list
            .iter()
            .take_while(|i| now.duration_since(i.since) >= MAX_IDLE)
            .count();
        list.drain(..stale);
        if list.is_empty() {
            self.by_key.remove(key);
        }
        self.forget(key, stale);
    }
}

impl Streams {
    pub fn new(registry: &mut prometheus_client::registry::Registry) -> Streams {
        let used = Family::<Use, Counter>::default();
        registry.register(
            "meshd_proxy_http_tunnel_streams",
            "Tunnel streams HTTP exchanges went on, by whether the stream was opened for the \
             exchange or kept from an earlier one",
            used.clone(),
        );
        Streams {
            idle: Mutex::default(),
            used,
        }
    }

    /// The most recently kept stream for `key`, if one is fresh enough.
    pub fn take(&self, key: &Key) -> Option<Kept> {
        let mut t = self.idle.lock().unwrap_or_else(PoisonError::into_inner);
        t.expire(key, Instant::now());
        let list = t.by_key.get_mut(key)?;
        let idle = list.pop()?;
        if list.is_empty() {
            t.by_key.remove(key);
        }
        t.forget(key, 1);
        Some(idle.kept)
    }

    /// Keeps a stream whose exchange ended cleanly, unless `key` or its connection has as
    /// many as it may keep (then it is finished: the destination ends its side).
    pub fn put(&self, key: Key, kept: Kept) {
        let mut t = self.idle.lock().unwrap_or_else(PoisonError::into_inner);
        let now = Instant::now();
        t.expire(&key, now);
        let c = (key.quic, key.source.clone());
        let on_connection = t.per_connection.get(&c).copied().unwrap_or(0);
        let on_key = t.by_key.get(&key).map_or(0, Vec::len);
        if on_connection >= PER_CONNECTION || on_key >= PER_TARGET {
            return;
        }
        *t.per_connection.entry(c).or_default() += 1;
        t.by_key
            .entry(key)
            .or_default()
            .push(Idle { kept, since: now });
    }

    /// Counts an exchange's stream as opened for it or reused.
    pub fn count(&self, reused: bool) {
        let stream = if reused { "reused" } else { "opened" };
        self.used.get_or_create(&Use { stream }).inc();
    }
}
