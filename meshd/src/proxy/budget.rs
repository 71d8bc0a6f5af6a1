//! The data plane's share of what the process can hold, so that it never starves the control
//! plane (HTTP API, Raft, enrollment, watch streams, DNS, health checks) of it:
//!
//! - **Descriptors.** A proxied connection takes its descriptors only while at least `reserve`
//!   stay free for the rest of meshd: `others + held + n + reserve <= RLIMIT_NOFILE`, where
//!   `held` is what proxied connections hold now, `others` what the rest of the process held at
//!   the last sample (`/proc/self/fd`, counted every [`SAMPLE_EVERY`]), and the limit is read
//!   at every admission, so one lowered or raised with `prlimit` applies at once. `reserve` is
//!   `proxy_reserved_fds`, by default a tenth of the limit and at least [`MIN_RESERVE`].
//! - **Connections.** At most `proxy_max_connections` proxied connections (both directions)
//!   at once: each is a task and up to two 64 KiB copy buffers, so this bounds the data
//!   plane's tasks and memory.
//!
//! Past either bound the connection is refused at once (the caller's TCP connection is reset;
//! a tunnel stream is answered `Overloaded`, so the caller tries another endpoint), counted in
//! `meshd_proxy_limit_refusals_total{limit}` and logged with the figures (at most once per
//! [`LOG_EVERY`] per limit, saying how many were refused meanwhile). Nothing is queued: as
//! soon as connections close, new ones are admitted again.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;
use tokio_util::sync::CancellationToken;

/// The smallest default reserve of descriptors for the control plane.
pub const MIN_RESERVE: u64 = 256;
/// Default bound on proxied connections at once.
pub const DEFAULT_MAX_CONNECTIONS: u64 = 16_384;
/// How often the rest of the process's descriptors are counted.
pub const SAMPLE_EVERY: Duration = Duration::from_secs(1);
/// At most one log line per limit this often while it refuses.
const LOG_EVERY: Duration = Duration::from_secs(10);

/// The default reserve for a descriptor limit: a tenth of it, at least [`MIN_RESERVE`].
pub fn default_reserve(limit: u64) -> u64 {
    (limit / 10).max(MIN_RESERVE)
}

/// Which bound refused.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Limit {
    Descriptors,
    Connections,
}

impl Limit {
    /// The `reason` of `meshd_proxy_connections_refused_total`.
    pub fn reason(self) -> &'static str {
        match self {
            Limit::Descriptors => "descriptor_limit",
            Limit::Connections => "connection_limit",
        }
    }

    fn label(self) -> &'static str {
        match self {
            Limit::Descriptors => "descriptors",
            Limit::Connections => "connections",
        }
    }
}

/// A refusal, with what was counted when it happened.
#[derive(Debug, Clone, thiserror::Error)]
pub enum Exhausted {
    #[error(
        "the data plane's descriptor budget is used up: proxied connections hold {held}, the \
         rest of meshd {others}, RLIMIT_NOFILE is {limit} and {reserve} stay reserved for the \
         control plane (proxy_reserved_fds)"
    )]
    Descriptors {
        held: u64,
        others: u64,
        limit: u64,
        reserve: u64,
    },
    #[error("{max} proxied connections are open, the most proxy_max_connections allows")]
    Connections { max: u64 },
}

impl Exhausted {
    pub fn limit(&self) -> Limit {
        match self {
            Exhausted::Descriptors { .. } => Limit::Descriptors,
            Exhausted::Connections { .. } => Limit::Connections,
        }
    }
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct LimitLabel {
    limit: &'static str,
}

#[derive(Clone)]
struct Metrics {
    refusals: Family<LimitLabel, Counter>,
    fds_held: Gauge,
    fds_budget: Gauge,
    connections: Gauge,
}

impl Metrics {
    fn new(registry: &mut Registry, max_connections: u64) -> Metrics {
        let m = Metrics {
            refusals: Family::default(),
            fds_held: Gauge::default(),
            fds_budget: Gauge::default(),
            connections: Gauge::default(),
        };
        registry.register(
            "meshd_proxy_limit_refusals",
            "Proxied connections refused because the data plane reached a limit (descriptors: \
             its share of RLIMIT_NOFILE; connections: proxy_max_connections)",
            m.refusals.clone(),
        );
        registry.register(
            "meshd_proxy_descriptors_held",
            "File descriptors proxied connections hold now",
            m.fds_held.clone(),
        );
        registry.register(
            "meshd_proxy_descriptor_budget",
            "File descriptors proxied connections may hold, from the last sample: RLIMIT_NOFILE \
             minus the reserve minus what the rest of meshd holds",
            m.fds_budget.clone(),
        );
        registry.register(
            "meshd_proxy_connections_held",
            "Proxied connections admitted and open now (both directions)",
            m.connections.clone(),
        );
        let max = Gauge::<i64>::default();
        max.set(i64::try_from(max_connections).unwrap_or(i64::MAX));
        registry.register(
            "meshd_proxy_max_connections",
            "proxy_max_connections: proxied connections admitted at once, at most",
            max,
        );
        m
    }
}

/// When a limit last logged, and how many refusals it has not logged since.
#[derive(Default)]
struct Gate {
    last: Option<Instant>,
    quiet: u64,
}

/// The data plane's bounds and what it holds now; shared by every proxied connection.
pub struct Budget {
    /// `proxy_reserved_fds`; `None`: [`default_reserve`] of the current limit.
    reserve: Option<u64>,
    max_connections: u64,
    held: AtomicU64,
    connections: AtomicU64,
    /// Descriptors of the rest of the process at the last sample.
    others: AtomicU64,
    metrics: Metrics,
    gates: [Mutex<Gate>; 2],
}

/// What one admitted connection holds; gives it back when dropped.
pub struct Ticket {
    budget: Arc<Budget>,
    fds: u64,
}

impl Ticket {
    /// Gives back `n` of the descriptors (a tunnelled connection needs fewer than it was
    /// admitted with).
    pub fn release(&mut self, n: u64) {
        let n = n.min(self.fds);
        self.fds -= n;
        self.budget.held.fetch_sub(n, Ordering::Relaxed);
        self.budget.metrics.fds_held.dec_by(n as i64);
    }
}

impl Drop for Ticket {
    fn drop(&mut self) {
        self.release(self.fds);
        self.budget.connections.fetch_sub(1, Ordering::Relaxed);
        self.budget.metrics.connections.dec();
    }
}

/// The process's soft descriptor limit now (`u64::MAX`: none).
fn nofile_limit() -> u64 {
    match rlimit::getrlimit(rlimit::Resource::NOFILE) {
        Ok((soft, _)) if soft != rlimit::INFINITY => soft,
        _ => u64::MAX,
    }
}

/// Descriptors the process has open now (`/proc/self/fd`, less the one reading it).
fn open_fds() -> std::io::Result<u64> {
    Ok(std::fs::read_dir("/proc/self/fd")?
        .count()
        .saturating_sub(1) as u64)
}

impl Budget {
    pub fn new(reserve: Option<u64>, max_connections: u64, registry: &mut Registry) -> Arc<Budget> {
        let b = Arc::new(Budget {
            reserve,
            max_connections,
            held: AtomicU64::new(0),
            connections: AtomicU64::new(0),
            others: AtomicU64::new(open_fds().unwrap_or(0)),
            metrics: Metrics::new(registry, max_connections),
            gates: Default::default(),
        });
        b.publish(nofile_limit());
        b
    }

    fn reserve_for(&self, limit: u64) -> u64 {
        self.reserve.unwrap_or_else(|| default_reserve(limit))
    }

    /// What proxied connections may hold in all, for `limit`.
    fn fd_budget(&self, limit: u64) -> u64 {
        limit
            .saturating_sub(self.reserve_for(limit))
            .saturating_sub(self.others.load(Ordering::Relaxed))
    }

    fn publish(&self, limit: u64) {
        let budget = self.fd_budget(limit);
        self.metrics
            .fds_budget
            .set(i64::try_from(budget).unwrap_or(i64::MAX));
    }

    /// Admits one connection that holds `fds` descriptors, or says which bound refuses it
    /// (counted and logged here).
    pub fn admit(self: &Arc<Self>, fds: u64) -> Result<Ticket, Exhausted> {
        let open = self.connections.fetch_add(1, Ordering::Relaxed) + 1;
        if open > self.max_connections {
            self.connections.fetch_sub(1, Ordering::Relaxed);
            return Err(self.refused(Exhausted::Connections {
                max: self.max_connections,
            }));
        }
        self.metrics.connections.inc();
        // From here on a refusal drops the ticket, which gives the connection slot back.
        let mut ticket = Ticket {
            budget: self.clone(),
            fds: 0,
        };
        let held = self.held.fetch_add(fds, Ordering::Relaxed) + fds;
        ticket.fds = fds;
        self.metrics.fds_held.inc_by(fds as i64);
        let limit = nofile_limit();
        let others = self.others.load(Ordering::Relaxed);
        let reserve = self.reserve_for(limit);
        if others.saturating_add(held).saturating_add(reserve) > limit {
            drop(ticket);
            return Err(self.refused(Exhausted::Descriptors {
                held: held - fds,
                others,
                limit,
                reserve,
            }));
        }
        Ok(ticket)
    }

    /// Counts and (rate-limited) logs a refusal.
    fn refused(&self, why: Exhausted) -> Exhausted {
        let limit = why.limit();
        self.metrics
            .refusals
            .get_or_create(&LimitLabel {
                limit: limit.label(),
            })
            .inc();
        let mut gate = self.gates[limit as usize]
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        let now = Instant::now();
        if gate.last.is_none_or(|t| now.duration_since(t) >= LOG_EVERY) {
            let quiet = std::mem::take(&mut gate.quiet);
            gate.last = Some(now);
            tracing::warn!(
                limit = limit.label(),
                refused_since_last_log = quiet,
                "proxied connection refused: {why}"
            );
        } else {
            gate.quiet += 1;
        }
        why
    }

    /// Counts the rest of the process's descriptors every [`SAMPLE_EVERY`] until `cancel`.
    pub async fn sample(self: Arc<Self>, cancel: CancellationToken) {
        let mut tick = tokio::time::interval(SAMPLE_EVERY);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut warned = false;
        loop {
            tokio::select! {
                _ = cancel.cancelled() => return,
                _ = tick.tick() => {}
            }
            // A directory of up to millions of entries: read off the async workers.
            let held_before = self.held.load(Ordering::Relaxed);
            match tokio::task::spawn_blocking(open_fds).await {
                Ok(Ok(total)) => {
                    let held = self.held.load(Ordering::Relaxed).min(held_before);
                    self.others
                        .store(total.saturating_sub(held), Ordering::Relaxed);
                    self.publish(nofile_limit());
                }
                Ok(Err(e)) if !warned => {
                    warned = true;
                    tracing::warn!(error = %e, "cannot count open descriptors in /proc/self/fd; the data plane's budget keeps the last count");
                }
                _ => {}
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn budget(reserve: u64, max_connections: u64) -> Arc<Budget> {
        Budget::new(Some(reserve), max_connections, &mut Registry::default())
    }

    #[test]
    fn the_default_reserve_is_a_tenth_and_at_least_the_minimum() {
        assert_eq!(default_reserve(1024), MIN_RESERVE);
        assert_eq!(default_reserve(20_000), 2_000);
        assert_eq!(default_reserve(1_048_576), 104_857);
    }

    #[test]
    fn connections_past_the_bound_are_refused_until_one_closes() {
        let b = budget(0, 2);
        let t1 = b.admit(0).expect("first");
        let _t2 = b.admit(0).expect("second");
        let e = b.admit(0).err().expect("third refused");
        assert_eq!(e.limit(), Limit::Connections);
        assert_eq!(b.connections.load(Ordering::Relaxed), 2);
        drop(t1);
        assert!(b.admit(0).is_ok(), "a slot freed");
    }

    #[test]
    fn descriptors_leave_the_reserve_free_and_come_back() {
        let limit = nofile_limit();
        assert!(
            limit < u64::MAX / 2,
            "tests run with a finite RLIMIT_NOFILE"
        );
        let b = budget(100, 1_000_000);
        // Pretend the rest of the process holds all but 110 descriptors: 10 are left to us.
        b.others.store(limit - 110, Ordering::Relaxed);
        let mut t = b.admit(8).expect("8 fit");
        let e = b.admit(3).err().expect("8 + 3 > 10");
        match e {
            Exhausted::Descriptors {
                held,
                reserve,
                limit: l,
                ..
            } => {
                assert_eq!((held, reserve, l), (8, 100, limit));
            }
            other => panic!("{other:?}"),
        }
        assert_eq!(b.held.load(Ordering::Relaxed), 8, "a refusal holds nothing");
        assert_eq!(b.connections.load(Ordering::Relaxed), 1);
        t.release(5);
        let _t2 = b.admit(3).expect("room again");
        drop(t);
        assert_eq!(b.held.load(Ordering::Relaxed), 3);
    }
}
