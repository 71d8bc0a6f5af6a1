//! Prometheus metrics of the replicated registry (`meshd_raft_*`, `meshd_registry_*`).

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::registry::Registry;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub(crate) struct KindLabels {
    /// `Command::kind()`.
    pub kind: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub(crate) struct WriteLabels {
    pub kind: &'static str,
    /// `ok`, `rejected` (applied but changed nothing: `Rejected` or a failed CAS) or `error`
    /// (not acknowledged: not leader, shutdown, raft error).
    pub outcome: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub(crate) struct PeerLabels {
    /// Raft node ID of the follower.
    pub peer: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub(crate) struct SnapshotLabels {
    /// `built` or `installed`.
    pub op: &'static str,
}

fn write_histogram() -> Histogram {
    // 100 µs .. ~3.3 s
    Histogram::new(exponential_buckets(0.000_1, 2.0, 16))
}

fn apply_histogram() -> Histogram {
    // 1 µs .. ~0.5 s
    Histogram::new(exponential_buckets(0.000_001, 2.0, 20))
}

/// The registry's metrics; cheap to clone (every metric is shared).
#[derive(Clone, Debug)]
pub(crate) struct RaftMetrics {
    pub write_duration: Family<KindLabels, Histogram, fn() -> Histogram>,
    pub apply_duration: Family<KindLabels, Histogram, fn() -> Histogram>,
    pub writes: Family<WriteLabels, Counter>,
    pub applied_index: Gauge,
    pub last_log_index: Gauge,
    pub term: Gauge,
    pub is_leader: Gauge,
    pub snapshots: Family<SnapshotLabels, Counter>,
    pub purged: Counter,
    pub flush_duration: Histogram,
    pub flush_batch: Histogram,
    pub leader_changes: Counter,
    pub replication_lag: Family<PeerLabels, Gauge>,
}

impl Default for RaftMetrics {
    fn default() -> Self {
        RaftMetrics {
            write_duration: Family::new_with_constructor(write_histogram as fn() -> Histogram),
            apply_duration: Family::new_with_constructor(apply_histogram as fn() -> Histogram),
            writes: Family::default(),
            applied_index: Gauge::default(),
            last_log_index: Gauge::default(),
            term: Gauge::default(),
            is_leader: Gauge::default(),
            snapshots: Family::default(),
            purged: Counter::default(),
            flush_duration: write_histogram(),
            // 1 .. 4096 entries
            flush_batch: Histogram::new(exponential_buckets(1.0, 2.0, 13)),
            leader_changes: Counter::default(),
            replication_lag: Family::default(),
        }
    }
}

impl RaftMetrics {
    /// Creates the metrics and registers them in `registry`.
    pub fn register(registry: &mut Registry) -> RaftMetrics {
        let m = RaftMetrics::default();
        registry.register(
            "meshd_raft_write_duration_seconds",
            "Time from submitting a write to Raft until it is committed and applied, by command kind",
            m.write_duration.clone(),
        );
        registry.register(
            "meshd_registry_apply_duration_seconds",
            "Time the state machine took to apply one command, by command kind",
            m.apply_duration.clone(),
        );
        registry.register(
            "meshd_registry_writes",
            "Writes submitted through Raft, by command kind and outcome (ok, rejected, error)",
            m.writes.clone(),
        );
        registry.register(
            "meshd_raft_applied_index",
            "Raft log index of the last entry applied to the state machine",
            m.applied_index.clone(),
        );
        registry.register(
            "meshd_raft_last_log_index",
            "Raft log index of the last entry in the local log",
            m.last_log_index.clone(),
        );
        registry.register(
            "meshd_raft_term",
            "Current Raft term of this server",
            m.term.clone(),
        );
        registry.register(
            "meshd_raft_is_leader",
            "1 if this server is the Raft leader, else 0",
            m.is_leader.clone(),
        );
        registry.register(
            "meshd_raft_snapshots",
            "Raft snapshots built locally or installed from the leader (op = built, installed)",
            m.snapshots.clone(),
        );
        registry.register(
            "meshd_raft_log_entries_purged",
            "Raft log entries removed from the local log after a snapshot",
            m.purged.clone(),
        );
        registry.register(
            "meshd_raft_log_flush_duration_seconds",
            "Time one group commit of the Raft log took to reach the disk (sled flush + fdatasync)",
            m.flush_duration.clone(),
        );
        registry.register(
            "meshd_raft_log_flush_batch",
            "Log appends made durable by one group commit",
            m.flush_batch.clone(),
        );
        registry.register(
            "meshd_raft_leader_changes",
            "Times this server saw the Raft leader change (including to no leader)",
            m.leader_changes.clone(),
        );
        registry.register(
            "meshd_raft_replication_lag_entries",
            "On the leader: log entries each follower is behind the leader's last log index",
            m.replication_lag.clone(),
        );
        m
    }

    pub fn observe_write(&self, kind: &'static str, outcome: &'static str, seconds: f64) {
        self.write_duration
            .get_or_create(&KindLabels { kind })
            .observe(seconds);
        self.count_write(kind, outcome);
    }

    /// Counts a write that never reached Raft.
    pub fn count_write(&self, kind: &'static str, outcome: &'static str) {
        self.writes
            .get_or_create(&WriteLabels { kind, outcome })
            .inc();
    }

    pub fn snapshot(&self, op: &'static str) {
        self.snapshots.get_or_create(&SnapshotLabels { op }).inc();
    }
}

/// A u64 index or term as a gauge value.
pub(crate) fn gauge_value(v: u64) -> i64 {
    i64::try_from(v).unwrap_or(i64::MAX)
}
