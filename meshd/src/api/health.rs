//! `/v1/health/...`: instances with their checks, and checks by service, node or state.

use std::sync::Arc;

use axum::extract::{Path, RawQuery, State};
use axum::response::Response;
use registry::{Check, Status};

use super::blocking::{blocking_read, Params, QueryOptions};
use super::catalog::{has_tags, meta_matches};
use super::error::ApiError;
use super::read_json;
use super::types::{AgentService, ServiceEntry};
use super::ApiContext;

type Ctx = State<Arc<ApiContext>>;

/// `GET /v1/health/service/{name}[?passing][&tag=..][&node-meta=k:v]`: every instance with
/// its node and the checks that decide its health (the node's and its own). With `passing`,
/// only instances whose checks all pass.
pub async fn service(
    State(ctx): Ctx,
    Path(name): Path<String>,
    RawQuery(q): RawQuery,
) -> Result<Response, ApiError> {
    let params = Params::parse(q.as_deref());
    let opts = QueryOptions::parse(&params)?;
    let passing = params.bool("passing")?.unwrap_or(false);
    let filters = params.node_meta()?;
    let tags: Vec<String> = params.all("tag").map(str::to_string).collect();
    let r = blocking_read(
        &ctx,
        &opts,
        |s| s.service_index(&name),
        |s| {
            s.health_service(&name)
                .into_iter()
                .filter(|e| meta_matches(e.node, &filters) && has_tags(e.service, &tags))
                .filter(|e| !passing || e.checks.iter().all(|c| c.status == Status::Passing))
                .map(|e| ServiceEntry {
                    node: e.node.clone(),
                    service: AgentService::new(e.service, &e.node.datacenter),
                    checks: e.checks.into_iter().cloned().collect(),
                })
                .collect::<Vec<_>>()
        },
    )
    .await?;
    Ok(read_json(r.index, &r.value))
}

/// `GET /v1/health/checks/{name}[?node-meta=k:v]`: the checks of every instance of a service.
pub async fn checks(
    State(ctx): Ctx,
    Path(name): Path<String>,
    RawQuery(q): RawQuery,
) -> Result<Response, ApiError> {
    let params = Params::parse(q.as_deref());
    let opts = QueryOptions::parse(&params)?;
    let filters = params.node_meta()?;
    let r = blocking_read(
        &ctx,
        &opts,
        |s| s.service_index(&name),
        |s| {
            s.service_checks(&name)
                .into_iter()
                .filter(|c| {
                    filters.is_empty() || s.node(&c.node).is_some_and(|n| meta_matches(n, &filters))
                })
                .cloned()
                .collect::<Vec<Check>>()
        },
    )
    .await?;
    Ok(read_json(r.index, &r.value))
}

/// `GET /v1/health/node/{node}`: every check of a node (`[]` for an unknown node).
pub async fn node(
    State(ctx): Ctx,
    Path(name): Path<String>,
    RawQuery(q): RawQuery,
) -> Result<Response, ApiError> {
    let opts = QueryOptions::parse(&Params::parse(q.as_deref()))?;
    let r = blocking_read(
        &ctx,
        &opts,
        |s| s.node_index(&name),
        |s| s.node_checks(&name).cloned().collect::<Vec<Check>>(),
    )
    .await?;
    Ok(read_json(r.index, &r.value))
}

/// `GET /v1/health/state/{state}`: checks in `passing`, `warning`, `critical`, or `any`.
pub async fn state(
    State(ctx): Ctx,
    Path(state): Path<String>,
    RawQuery(q): RawQuery,
) -> Result<Response, ApiError> {
    let params = Params::parse(q.as_deref());
    let wanted = match state.as_str() {
        "any" => None,
        s => Some(Status::parse(s).ok_or_else(|| {
            ApiError::bad(format!(
                "Invalid check state {s:?}: must be passing, warning, critical or any"
            ))
        })?),
    };
    let opts = QueryOptions::parse(&params)?;
    let filters = params.node_meta()?;
    let r = blocking_read(
        &ctx,
        &opts,
        |s| s.indexes().checks,
        |s| {
            s.checks_in_state(wanted)
                .into_iter()
                .filter(|c| {
                    filters.is_empty() || s.node(&c.node).is_some_and(|n| meta_matches(n, &filters))
                })
                .cloned()
                .collect::<Vec<Check>>()
        },
    )
    .await?;
    Ok(read_json(r.index, &r.value))
}
