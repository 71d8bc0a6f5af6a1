//! `GET /v1/discovery-chain/{service}`: the compiled discovery chain of a service (see
//! `registry::chain`), as `{"Chain": {...}}` in the shape of Consul's answer (`ServiceName`,
//! `Protocol`, `StartNode`, `Nodes`, `Targets`) plus meshd's flat `Routes`. Blocking queries
//! wake when any config entry changes.

use std::sync::Arc;

use axum::extract::{Path, RawQuery, State};
use axum::response::Response;
use registry::chain::Chain;
use serde_json::json;

use super::blocking::{blocking_read, Params, QueryOptions};
use super::error::ApiError;
use super::{read_json, ApiContext};

/// `GET /v1/discovery-chain/{service}`; a service without entries has a chain too (tcp, one
/// route to itself), as in Consul.
pub async fn get(
    State(ctx): State<Arc<ApiContext>>,
    Path(service): Path<String>,
    RawQuery(q): RawQuery,
) -> Result<Response, ApiError> {
    let opts = QueryOptions::parse(&Params::parse(q.as_deref()))?;
    registry::ca::validate_node_name(&service)
        .map_err(|e| ApiError::bad(format!("invalid service name {service:?}: {e}")))?;
    let r = blocking_read(
        &ctx,
        &opts,
        |s| s.config_entries_index(),
        |s| Chain::compile(s, &service),
    )
    .await?;
    Ok(read_json(r.index, &json!({ "Chain": r.value })))
}
