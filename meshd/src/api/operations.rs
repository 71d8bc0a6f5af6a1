//! Operating the agent: `PUT /v1/agent/reload` (as Consul's: re-read the configuration and
//! the service definitions; an error status names what was wrong, and nothing changed) and
//! `GET /v1/agent/logs?lines=N` (the agent's most recent log lines, oldest first, as text; a
//! meshd extension that `meshctl debug` collects).

use std::sync::Arc;

use axum::extract::{RawQuery, State};
use axum::http::{header, HeaderValue};
use axum::response::{IntoResponse, Response};

use super::blocking::Params;
use super::error::ApiError;
use super::ApiContext;
use crate::logging::RECENT_LINES;

type Ctx = State<Arc<ApiContext>>;

/// Lines `/v1/agent/logs` returns when `lines` is not given.
const DEFAULT_LINES: u64 = 500;

/// `PUT /v1/agent/reload`
pub async fn reload(State(ctx): Ctx) -> Result<Response, ApiError> {
    let Some(requests) = ctx.reload.get() else {
        return Err(ApiError::Internal(
            "this agent cannot reload: it was not started from a configuration".into(),
        ));
    };
    match requests.reload().await {
        Ok(summary) => Ok(axum::Json(serde_json::json!({ "Reloaded": summary })).into_response()),
        Err(reason) => Err(ApiError::Internal(format!("reload failed: {reason}"))),
    }
}

/// `GET /v1/agent/logs[?lines=N]`
pub async fn logs(State(ctx): Ctx, RawQuery(q): RawQuery) -> Result<Response, ApiError> {
    let params = Params::parse(q.as_deref());
    let lines = params.u64("lines")?.unwrap_or(DEFAULT_LINES);
    if lines == 0 || lines > RECENT_LINES as u64 {
        return Err(ApiError::bad(format!(
            "lines must be 1 to {RECENT_LINES}, got {lines}"
        )));
    }
    let Some(logging) = ctx.logging.get() else {
        return Err(ApiError::NotFound(
            "this agent keeps no log lines in memory".into(),
        ));
    };
    let mut text = logging.recent(lines as usize).join("\n");
    text.push('\n');
    let mut resp = text.into_response();
    resp.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    Ok(resp)
}
