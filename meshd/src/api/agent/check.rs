//! `/v1/agent/check/...` and maintenance mode (`/v1/agent/service/maintenance/{id}`,
//! `/v1/agent/maintenance`).

use std::collections::BTreeMap;
use std::sync::Arc;

use axum::body::Bytes;
use axum::extract::{Path, RawQuery, State};
use axum::response::Response;
use registry::{Check, Command, Register, Status};

use super::super::blocking::{blocking_read, Params, QueryOptions};
use super::super::decode::{self, CheckDef, CheckUpdateDef};
use super::super::definition::{build_agent_check, parse_status, truncate_output};
use super::super::error::ApiError;
use super::super::{read_json, write, write_empty, ApiContext};
use super::{keep_current_status, local_node};

type Ctx = State<Arc<ApiContext>>;

/// The check that puts a service in maintenance (Consul's ID and name).
fn service_maintenance_id(service_id: &str) -> String {
    format!("_service_maintenance:{service_id}")
}
const NODE_MAINTENANCE_ID: &str = "_node_maintenance";
const DEFAULT_SERVICE_REASON: &str = "Maintenance mode is enabled for this service, but no reason was provided. This is a default message.";
const DEFAULT_NODE_REASON: &str = "Maintenance mode is enabled for this node, but no reason was provided. This is a default message.";

/// `GET /v1/agent/checks`: map of check ID to check, this node only.
pub async fn checks(State(ctx): Ctx, RawQuery(q): RawQuery) -> Result<Response, ApiError> {
    let opts = QueryOptions::parse(&Params::parse(q.as_deref()))?;
    let node = ctx.agent.node.clone();
    let r = blocking_read(
        &ctx,
        &opts,
        |s| s.node_index(&node),
        |s| {
            s.node_checks(&node)
                .map(|c| (c.check_id.clone(), c.clone()))
                .collect::<BTreeMap<_, _>>()
        },
    )
    .await?;
    Ok(read_json(r.index, &r.value))
}

async fn register_checks(ctx: &ApiContext, checks: Vec<Check>) -> Result<u64, ApiError> {
    let applied = write(
        ctx,
        Command::Register(Register {
            node: local_node(ctx),
            skip_node_update: true,
            service: None,
            checks,
            replace_service_checks: false,
        }),
    )
    .await?;
    Ok(applied.index)
}

async fn deregister_check(ctx: &ApiContext, check_id: String) -> Result<u64, ApiError> {
    let applied = write(
        ctx,
        Command::Deregister {
            node: ctx.agent.node.clone(),
            service_id: None,
            check_id: Some(check_id),
        },
    )
    .await?;
    Ok(applied.index)
}

/// `PUT /v1/agent/check/register`
pub async fn check_register(State(ctx): Ctx, body: Bytes) -> Result<Response, ApiError> {
    let def: CheckDef = decode::decode_body(&body, "check definition")?;
    let mut check = build_agent_check(&def, None, None, None)?;
    if !check.service_id.is_empty()
        && ctx
            .registry
            .read()
            .service(&ctx.agent.node, &check.service_id)
            .is_none()
    {
        return Err(ApiError::bad(format!(
            "ServiceID {:?} does not exist on this agent",
            check.service_id
        )));
    }
    keep_current_status(&ctx, std::slice::from_mut(&mut check));
    let index = register_checks(&ctx, vec![check]).await?;
    Ok(write_empty(index))
}

/// `PUT /v1/agent/check/deregister/{id}`
pub async fn check_deregister(
    State(ctx): Ctx,
    Path(id): Path<String>,
) -> Result<Response, ApiError> {
    if ctx.registry.read().check(&ctx.agent.node, &id).is_none() {
        return Err(ApiError::not_found(format!("Unknown check ID {id:?}")));
    }
    let index = deregister_check(&ctx, id).await?;
    Ok(write_empty(index))
}

async fn ttl(
    ctx: &ApiContext,
    id: &str,
    status: Status,
    output: String,
) -> Result<Response, ApiError> {
    ctx.checks
        .ttl_update(id, status, truncate_output(output))
        .await?;
    let index = ctx.registry.read().applied_index();
    Ok(write_empty(index))
}

fn note(q: Option<&str>) -> String {
    Params::parse(q).get("note").unwrap_or_default().to_string()
}

/// `PUT /v1/agent/check/pass/{id}?note=`
pub async fn check_pass(
    State(ctx): Ctx,
    Path(id): Path<String>,
    RawQuery(q): RawQuery,
) -> Result<Response, ApiError> {
    ttl(&ctx, &id, Status::Passing, note(q.as_deref())).await
}

/// `PUT /v1/agent/check/warn/{id}?note=`
pub async fn check_warn(
    State(ctx): Ctx,
    Path(id): Path<String>,
    RawQuery(q): RawQuery,
) -> Result<Response, ApiError> {
    ttl(&ctx, &id, Status::Warning, note(q.as_deref())).await
}

/// `PUT /v1/agent/check/fail/{id}?note=`
pub async fn check_fail(
    State(ctx): Ctx,
    Path(id): Path<String>,
    RawQuery(q): RawQuery,
) -> Result<Response, ApiError> {
    ttl(&ctx, &id, Status::Critical, note(q.as_deref())).await
}

/// `PUT /v1/agent/check/update/{id}` with `{"Status": ..., "Output": ...}`
pub async fn check_update(
    State(ctx): Ctx,
    Path(id): Path<String>,
    body: Bytes,
) -> Result<Response, ApiError> {
    let u: CheckUpdateDef = decode::decode_body(&body, "check update")?;
    let status = parse_status(u.status.as_deref().unwrap_or_default())?;
    ttl(&ctx, &id, status, u.output.unwrap_or_default()).await
}

/// The `enable` parameter of the maintenance endpoints (required, a boolean).
fn enable_param(p: &Params) -> Result<bool, ApiError> {
    match p.get("enable") {
        None => Err(ApiError::bad("Missing value for enable")),
        Some(v) => super::super::blocking::parse_bool(v)
            .ok_or_else(|| ApiError::bad(format!("Invalid value for enable: {v:?}"))),
    }
}

fn reason(p: &Params, default: &str) -> String {
    p.get("reason")
        .filter(|r| !r.is_empty())
        .unwrap_or(default)
        .to_string()
}

/// `PUT /v1/agent/service/maintenance/{id}?enable=true|false&reason=`: a critical check
/// `_service_maintenance:<id>` takes the instance out of passing answers.
pub async fn service_maintenance(
    State(ctx): Ctx,
    Path(id): Path<String>,
    RawQuery(q): RawQuery,
) -> Result<Response, ApiError> {
    let params = Params::parse(q.as_deref());
    let enable = enable_param(&params)?;
    if ctx.registry.read().service(&ctx.agent.node, &id).is_none() {
        return Err(ApiError::not_found(format!("Unknown service ID {id:?}")));
    }
    let check_id = service_maintenance_id(&id);
    let index = if enable {
        let check = Check {
            check_id,
            name: "Service Maintenance Mode".to_string(),
            notes: reason(&params, DEFAULT_SERVICE_REASON),
            status: Status::Critical,
            service_id: id,
            ..Check::default()
        };
        register_checks(&ctx, vec![check]).await?
    } else if ctx
        .registry
        .read()
        .check(&ctx.agent.node, &check_id)
        .is_some()
    {
        deregister_check(&ctx, check_id).await?
    } else {
        ctx.registry.read().applied_index()
    };
    Ok(write_empty(index))
}

/// `PUT /v1/agent/maintenance?enable=true|false&reason=`: a critical node check
/// `_node_maintenance` takes every instance of this node out of passing answers.
pub async fn node_maintenance(
    State(ctx): Ctx,
    RawQuery(q): RawQuery,
) -> Result<Response, ApiError> {
    let params = Params::parse(q.as_deref());
    let enable = enable_param(&params)?;
    let index = if enable {
        let check = Check {
            check_id: NODE_MAINTENANCE_ID.to_string(),
            name: "Node Maintenance Mode".to_string(),
            notes: reason(&params, DEFAULT_NODE_REASON),
            status: Status::Critical,
            ..Check::default()
        };
        register_checks(&ctx, vec![check]).await?
    } else if ctx
        .registry
        .read()
        .check(&ctx.agent.node, NODE_MAINTENANCE_ID)
        .is_some()
    {
        deregister_check(&ctx, NODE_MAINTENANCE_ID.to_string()).await?
    } else {
        ctx.registry.read().applied_index()
    };
    Ok(write_empty(index))
}
