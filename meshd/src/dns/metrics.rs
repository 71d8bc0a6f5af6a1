//! The DNS server's metrics: queries by type and response code, answer latency, truncated
//! answers, malformed packets and upstream (recursor) failures.

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::registry::Registry;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct QueryLabels {
    pub qtype: &'static str,
    pub rcode: &'static str,
    pub protocol: &'static str,
}

/// Cheap to clone.
#[derive(Clone, Debug)]
pub struct DnsMetrics {
    pub queries: Family<QueryLabels, Counter>,
    pub duration: Histogram,
    pub truncated: Counter,
    pub recursor_errors: Counter,
    /// UDP datagrams that do not parse as a query (answered FORMERR when their header reads).
    pub malformed: Counter,
}

impl DnsMetrics {
    pub fn new(registry: &mut Registry) -> DnsMetrics {
        let m = DnsMetrics {
            queries: Family::default(),
            // 10 µs .. ~330 ms.
            duration: Histogram::new(exponential_buckets(0.00001, 2.0, 16)),
            truncated: Counter::default(),
            recursor_errors: Counter::default(),
            malformed: Counter::default(),
        };
        registry.register(
            "meshd_dns_queries",
            "DNS queries answered, by query type, response code and transport",
            m.queries.clone(),
        );
        registry.register(
            "meshd_dns_query_duration_seconds",
            "Time from a parsed DNS query to its answer being handed to the socket, in seconds",
            m.duration.clone(),
        );
        registry.register(
            "meshd_dns_truncated",
            "DNS answers cut to the client's size limit (TC set)",
            m.truncated.clone(),
        );
        registry.register(
            "meshd_dns_recursor_errors",
            "Queries for foreign names that no recursor answered",
            m.recursor_errors.clone(),
        );
        registry.register(
            "meshd_dns_malformed",
            "UDP datagrams that did not parse as a DNS query",
            m.malformed.clone(),
        );
        m
    }
}
