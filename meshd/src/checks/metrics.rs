//! Metrics of the check runner.

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::registry::Registry;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ResultLabels {
    pub r#type: String,
    pub status: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct TypeLabels {
    pub r#type: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct OutcomeLabels {
    pub outcome: String,
}

/// Counters and histograms of check runs and of the status writes they cause.
#[derive(Clone)]
pub struct CheckMetrics {
    pub results: Family<ResultLabels, Counter>,
    pub duration: Family<TypeLabels, Histogram>,
    pub writes: Family<OutcomeLabels, Counter>,
    pub running: Gauge,
    pub ttl_expired: Counter,
    pub deregistered: Counter,
}

impl CheckMetrics {
    pub fn new(reg: &mut Registry) -> CheckMetrics {
        let m = CheckMetrics {
            results: Family::default(),
            duration: Family::new_with_constructor(|| {
                Histogram::new(exponential_buckets(0.0005, 2.0, 16))
            }),
            writes: Family::default(),
            running: Gauge::default(),
            ttl_expired: Counter::default(),
            deregistered: Counter::default(),
        };
        reg.register(
            "meshd_check_results",
            "Health check results by check type and status",
            m.results.clone(),
        );
        reg.register(
            "meshd_check_duration_seconds",
            "Time a health check probe took, by check type",
            m.duration.clone(),
        );
        reg.register(
            "meshd_check_status_writes",
            "Check status changes written to the registry, by outcome (ok, error)",
            m.writes.clone(),
        );
        reg.register(
            "meshd_checks_running",
            "Health checks this agent is running",
            m.running.clone(),
        );
        reg.register(
            "meshd_check_ttl_expired",
            "TTL checks that expired to critical",
            m.ttl_expired.clone(),
        );
        reg.register(
            "meshd_check_critical_deregistrations",
            "Services deregistered after DeregisterCriticalServiceAfter",
            m.deregistered.clone(),
        );
        m
    }
}
