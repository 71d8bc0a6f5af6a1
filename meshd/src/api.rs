//! Consul-compatible HTTP API (skeleton; being written).
