//! `GET /v1/agent/connect/ca/leaf/{service}`: the leaf certificate and key this agent holds
//! for a service registered on its node, in Consul's shape. Blocking queries (`?index=`) wake
//! when the leaf is renewed or re-issued after a root rotation.

use std::sync::Arc;
use std::time::Duration;

use axum::extract::{Path, RawQuery, State};
use axum::response::Response;
use serde::Serialize;

use super::blocking::{Params, QueryOptions};
use super::error::ApiError;
use super::{read_json, ApiContext};
use crate::proxy::leaves::Leaf;

/// How long a request waits for the first leaf of a service registered a moment ago.
const FIRST_LEAF_WAIT: Duration = Duration::from_secs(10);

#[derive(Serialize)]
#[serde(rename_all = "PascalCase")]
struct LeafBody {
    serial_number: String,
    #[serde(rename = "CertPEM")]
    cert_pem: String,
    #[serde(rename = "PrivateKeyPEM")]
    private_key_pem: String,
    service: String,
    #[serde(rename = "ServiceURI")]
    service_uri: String,
    valid_after: String,
    valid_before: String,
    create_index: u64,
    modify_index: u64,
}

fn body(leaf: &Leaf, trust_domain: &str) -> LeafBody {
    let summary = registry::ca::cert_summary(&leaf.cert_pem).ok();
    let field = |f: fn(&registry::ca::CertSummary) -> &String| {
        summary.as_ref().map(|s| f(s).clone()).unwrap_or_default()
    };
    LeafBody {
        serial_number: field(|s| &s.serial),
        cert_pem: leaf.cert_pem.clone(),
        private_key_pem: leaf.key_pem.clone(),
        service: leaf.service.clone(),
        service_uri: format!("spiffe://{trust_domain}/svc/{}", leaf.service),
        valid_after: field(|s| &s.not_before),
        valid_before: field(|s| &s.not_after),
        create_index: leaf.index,
        modify_index: leaf.index,
    }
}

/// `GET /v1/agent/connect/ca/leaf/{service}`.
pub async fn leaf(
    State(ctx): State<Arc<ApiContext>>,
    Path(service): Path<String>,
    RawQuery(q): RawQuery,
) -> Result<Response, ApiError> {
    super::definition::validate_service_name("service", &service)?;
    let params = Params::parse(q.as_deref());
    let opts = QueryOptions::parse(&params)?;
    let Some(leaves) = ctx.leaves.get() else {
        return Err(ApiError::Internal(
            "the data plane is not running yet".into(),
        ));
    };
    let registered = ctx
        .registry
        .read()
        .node_services(&ctx.agent.node)
        .any(|s| s.service == service);
    if !registered {
        return Err(ApiError::not_found(format!(
            "service {service:?} is not registered on this agent's node"
        )));
    }
    let mut changed = leaves.subscribe();
    let first = tokio::time::Instant::now() + FIRST_LEAF_WAIT;
    let wait_until = tokio::time::Instant::now() + opts.wait;
    loop {
        let current = leaves.get(&service);
        let fresh = current.as_ref().is_some_and(|l| l.index > opts.index);
        let now = tokio::time::Instant::now();
        if let Some(l) = &current {
            if fresh || now >= wait_until {
                let td = ctx
                    .registry
                    .read()
                    .active_ca_root()
                    .map(|r| r.trust_domain.clone())
                    .unwrap_or_default();
                return Ok(read_json(l.index, &body(l, &td)));
            }
        } else if now >= first {
            return Err(ApiError::Internal(format!(
                "no leaf for {service:?} yet: the servers have not signed it (see the agent log)"
            )));
        }
        let deadline = if current.is_some() { wait_until } else { first };
        tokio::select! {
            _ = changed.changed() => {}
            _ = tokio::time::sleep_until(deadline) => {}
            _ = ctx.shutdown.cancelled() => return Err(ApiError::Internal("shutting down".into())),
        }
    }
}
