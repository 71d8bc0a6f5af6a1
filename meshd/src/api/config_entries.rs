//! `/v1/config`: config entries (`service-defaults`, `service-router`, `service-splitter`,
//! `service-resolver`) — `PUT /v1/config` (with `?cas=`), `GET /v1/config/{kind}`,
//! `GET|DELETE /v1/config/{kind}/{name}`. An entry is validated here for a quick 400, and
//! again where the write is applied, which also checks it against the other entries (a router
//! needs a layer-7 protocol): a refusal there is a 400 too.

use std::sync::Arc;

use axum::body::Bytes;
use axum::extract::{Path, RawQuery, State};
use axum::response::Response;
use registry::config_entry::ConfigEntry;
use registry::{Command, Response as CmdResponse};

use super::blocking::{blocking_read, Params, QueryOptions};
use super::decode::decode_body;
use super::error::ApiError;
use super::{read_json, read_one, write, write_json, ApiContext};

type Ctx = State<Arc<ApiContext>>;

/// `PUT /v1/config`: upserts the entry in the body; `true`, or `false` when `cas` failed.
pub async fn put(
    State(ctx): Ctx,
    RawQuery(q): RawQuery,
    body: Bytes,
) -> Result<Response, ApiError> {
    let params = Params::parse(q.as_deref());
    let cas = params.u64("cas")?;
    let entry: ConfigEntry = decode_body(&body, "config entry")?;
    // The registry's own check (which replaying old log entries repeats) keeps the older,
    // wider name rule; a new entry's Name must be a service name that can exist.
    registry::validate_service_name(&entry.name)
        .map_err(|e| ApiError::bad(format!("invalid Name {:?}: {e}", entry.name)))?;
    entry.validate().map_err(|e| ApiError::bad(e.to_string()))?;
    let applied = write(&ctx, Command::ConfigEntrySet { entry, cas }).await?;
    let ok = !matches!(applied.response, CmdResponse::Cas(false));
    Ok(write_json(&applied, &ok))
}

/// `GET /v1/config/{kind}`: every entry of the kind, by name.
pub async fn list(
    State(ctx): Ctx,
    Path(kind): Path<String>,
    RawQuery(q): RawQuery,
) -> Result<Response, ApiError> {
    let opts = QueryOptions::parse(&Params::parse(q.as_deref()))?;
    let r = blocking_read(
        &ctx,
        &opts,
        |s| s.config_entries_index(),
        |s| {
            s.config_entries(&kind)
                .into_iter()
                .cloned()
                .collect::<Vec<_>>()
        },
    )
    .await?;
    Ok(read_json(r.index, &r.value))
}

/// `GET /v1/config/{kind}/{name}`.
pub async fn get(
    State(ctx): Ctx,
    Path((kind, name)): Path<(String, String)>,
    RawQuery(q): RawQuery,
) -> Result<Response, ApiError> {
    let opts = QueryOptions::parse(&Params::parse(q.as_deref()))?;
    let r = blocking_read(
        &ctx,
        &opts,
        |s| s.config_entries_index(),
        |s| s.config_entry(&kind, &name).cloned(),
    )
    .await?;
    Ok(read_one(r, || {
        format!("Config entry not found for {kind:?} / {name:?}")
    }))
}

/// `DELETE /v1/config/{kind}/{name}`: `true` (also when there was none).
pub async fn delete(
    State(ctx): Ctx,
    Path((kind, name)): Path<(String, String)>,
) -> Result<Response, ApiError> {
    let applied = write(&ctx, Command::ConfigEntryDelete { kind, name }).await?;
    Ok(write_json(&applied, &true))
}
