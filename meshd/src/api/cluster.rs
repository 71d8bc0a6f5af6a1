//! Cluster operations: `PUT /v1/agent/leave`, `GET /v1/operator/raft/configuration`,
//! `DELETE /v1/operator/raft/peer`, and `GET`/`PUT /v1/snapshot` (save and restore the whole
//! registry as a checksummed archive).

use std::sync::Arc;

use axum::body::Bytes;
use axum::extract::{RawQuery, State};
use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use registry::{archive, Command};
use serde::Serialize;

use super::blocking::{Params, QueryOptions};
use super::error::ApiError;
use super::{read_json, write_empty, ApiContext, X_CONSUL_INDEX};
use crate::cluster::proto::{ErrorKind, Request};

type Ctx = State<Arc<ApiContext>>;

fn admin_error((kind, message): (ErrorKind, String)) -> ApiError {
    match kind {
        ErrorKind::BadRequest | ErrorKind::Forbidden => ApiError::bad(message),
        _ => ApiError::Internal(message),
    }
}

/// `PUT /v1/agent/leave`: this member leaves the cluster (its catalog entries are removed; a
/// server also leaves the Raft configuration), then the agent stops.
pub async fn leave(State(ctx): Ctx) -> Result<Response, ApiError> {
    ctx.registry
        .leave(&ctx.agent.node)
        .await
        .map_err(admin_error)?;
    tracing::info!(node = %ctx.agent.node, "left the cluster; stopping");
    ctx.leave_requested.cancel();
    let index = ctx.registry.read().applied_index();
    Ok(write_empty(index))
}

#[derive(Serialize)]
#[serde(rename_all = "PascalCase")]
struct RaftServer {
    #[serde(rename = "ID")]
    id: String,
    node: String,
    address: String,
    leader: bool,
    voter: bool,
    protocol_version: &'static str,
}

#[derive(Serialize)]
#[serde(rename_all = "PascalCase")]
struct RaftConfiguration {
    servers: Vec<RaftServer>,
    index: u64,
}

/// `GET /v1/operator/raft/configuration`: the Raft servers, as Consul shows them.
pub async fn raft_configuration(State(ctx): Ctx) -> Result<Response, ApiError> {
    let peers = ctx.registry.peers().await.map_err(ApiError::Internal)?;
    let index = ctx.registry.read().applied_index();
    let body = RaftConfiguration {
        servers: peers
            .into_iter()
            .map(|p| RaftServer {
                id: p.id.to_string(),
                node: p.node,
                address: p.addr,
                leader: p.leader,
                voter: p.voter,
                protocol_version: "3",
            })
            .collect(),
        index,
    };
    Ok(read_json(index, &body))
}

/// `DELETE /v1/operator/raft/peer?id=ID` or `?address=IP:PORT`: removes a server.
pub async fn raft_remove_peer(
    State(ctx): Ctx,
    RawQuery(q): RawQuery,
) -> Result<Response, ApiError> {
    let params = Params::parse(q.as_deref());
    let id = match params.get("id").filter(|s| !s.is_empty()) {
        Some(v) => Some(v.parse::<u64>().map_err(|_| {
            ApiError::bad(format!(
                "Invalid ?id {v:?}: expected a Raft server ID (a number)"
            ))
        })?),
        None => None,
    };
    let addr = params
        .get("address")
        .filter(|s| !s.is_empty())
        .map(str::to_string);
    if id.is_none() && addr.is_none() {
        return Err(ApiError::bad("Must specify either ?id with the server's ID or ?address with IP:port of peer to remove"));
    }
    ctx.registry
        .admin(Request::RemovePeer { id, addr })
        .await
        .map_err(admin_error)?;
    let index = ctx.registry.read().applied_index();
    Ok(write_empty(index))
}

/// `GET /v1/snapshot`: the whole registry (CA keys included: keep it safe) as an archive.
/// Consistent by default; `?stale` serves this server's or agent's local state.
pub async fn snapshot_save(State(ctx): Ctx, RawQuery(q): RawQuery) -> Result<Response, ApiError> {
    let params = Params::parse(q.as_deref());
    let opts = QueryOptions::parse(&params)?;
    if ctx.registry.registry().is_none() {
        // An agent's view has no CA key, and servers do not hand it to agents: a snapshot
        // taken here could not be restored into a working cluster.
        return Err(ApiError::bad(
            "snapshots are taken on a server (they include the CA key, which agents never \
             hold): use a server's HTTP API (meshctl --http-addr SERVER:8500 snapshot save)",
        ));
    }
    ctx.registry.read_barrier(opts.consistency).await?;
    let (image, index) = {
        let state = ctx.registry.read();
        (state.image(), state.applied_index())
    };
    let bytes = archive::encode(&image, index);
    tracing::info!(index, bytes = bytes.len(), "snapshot saved");
    let mut resp = (
        StatusCode::OK,
        [(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/octet-stream"),
        )],
        bytes,
    )
        .into_response();
    resp.headers_mut()
        .insert(X_CONSUL_INDEX, HeaderValue::from(index.max(1)));
    Ok(resp)
}

/// `PUT /v1/snapshot`: replaces the registry with an archive's content, after checking its
/// integrity; a damaged archive is refused with 400 and changes nothing.
pub async fn snapshot_restore(State(ctx): Ctx, body: Bytes) -> Result<Response, ApiError> {
    let (image, from_index) =
        archive::decode(&body).map_err(|e| ApiError::bad(format!("snapshot refused: {e}")))?;
    let applied = super::write(&ctx, Command::Restore(Box::new(image))).await?;
    tracing::info!(
        from_index,
        index = applied.index,
        bytes = body.len(),
        "snapshot restored"
    );
    Ok(write_empty(applied.index))
}
