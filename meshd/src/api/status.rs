//! `/v1/status/...`: the Raft leader and peers.

use std::sync::Arc;

use axum::extract::State;
use axum::response::Response;

use super::error::ApiError;
use super::{read_json, ApiContext};

type Ctx = State<Arc<ApiContext>>;

/// `GET /v1/status/leader`: the leader's address as a JSON string (`""` when none is known).
pub async fn leader(State(ctx): Ctx) -> Result<Response, ApiError> {
    let info = ctx.registry.leader_info();
    let index = ctx.registry.read().applied_index();
    Ok(read_json(index, &info.leader.unwrap_or_default()))
}

/// `GET /v1/status/peers`: the Raft voters' addresses.
pub async fn peers(State(ctx): Ctx) -> Result<Response, ApiError> {
    let info = ctx.registry.leader_info();
    let index = ctx.registry.read().applied_index();
    Ok(read_json(index, &info.peers))
}
