//! The Consul-compatible HTTP API: Consul's paths, JSON field names and semantics for the
//! agent, catalog, health, KV and status endpoints, so Consul clients (py-consul, Prometheus'
//! consul_sd, Nomad) work against meshd unchanged.
//!
//! Layout: [`decode`] (lenient JSON keys, Go durations, request structs), [`definition`]
//! (validation, services and checks), [`blocking`] (query parameters, consistency, blocking
//! queries), [`types`] (response shapes), one module per endpoint group, [`metrics`] (request
//! metrics and the Prometheus endpoints), [`error`].
//!
//! Every response carries `X-Consul-Index` (at least 1): reads set the index of their own data,
//! everything else gets the registry's applied index. Reads also carry `X-Consul-KnownLeader`
//! and `X-Consul-LastContact`. Errors are one-line plain-text bodies.

mod agent;
mod blocking;
mod catalog;
mod cluster;
mod config_entries;
mod connect_ca;
mod connect_leaf;
mod decode;
mod definition;
mod discovery_chain;
mod error;
mod health;
mod intentions;
mod kv;
mod mesh;
mod metrics;
mod operations;
mod status;
#[cfg(test)]
mod tests;
mod types;

use std::sync::Arc;
use std::time::Instant;

use axum::extract::{MatchedPath, Request, State as AxState};
use axum::http::{header, HeaderName, HeaderValue, Method, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post, put};
use axum::Router;
use registry::{Applied, Command, Response as CmdResponse};
use serde::Serialize;
use tokio_util::sync::CancellationToken;
use tracing::Instrument as _;

use crate::checks::CheckRunner;
use crate::local::AgentInfo;
use crate::store::Store;
pub use agent::{
    deregister_local, parse_definitions, register_prepared, registered_unchanged, Prepared,
};
pub use error::ApiError;
pub use metrics::ApiMetrics;

pub const X_CONSUL_INDEX: HeaderName = HeaderName::from_static("x-consul-index");
pub const X_CONSUL_KNOWN_LEADER: HeaderName = HeaderName::from_static("x-consul-knownleader");
pub const X_CONSUL_LAST_CONTACT: HeaderName = HeaderName::from_static("x-consul-lastcontact");

/// Everything the handlers share.
pub struct ApiContext {
    pub registry: Store,
    /// Fired by `PUT /v1/agent/leave` once this member has left: the agent then stops.
    pub leave_requested: CancellationToken,
    pub agent: AgentInfo,
    pub checks: CheckRunner,
    /// Encoded for `/metrics` and `/v1/agent/metrics?format=prometheus`.
    pub metrics_registry: Arc<prometheus_client::registry::Registry>,
    pub metrics: ApiMetrics,
    /// Fired at shutdown: waiting blocking queries answer at once with their current data.
    pub shutdown: CancellationToken,
    /// This host's service leaves, once the data plane runs.
    pub leaves: std::sync::OnceLock<Arc<crate::proxy::leaves::Leaves>>,
    /// The logger (recent lines for `/v1/agent/logs`), when the binary installed one.
    pub logging: std::sync::OnceLock<crate::logging::Logging>,
    /// Where `PUT /v1/agent/reload` sends its request, once the reloader runs.
    pub reload: std::sync::OnceLock<crate::reload::Requests>,
}

impl ApiContext {
    pub fn new(
        registry: Store,
        agent: AgentInfo,
        checks: CheckRunner,
        metrics_registry: Arc<prometheus_client::registry::Registry>,
        metrics: ApiMetrics,
        shutdown: CancellationToken,
    ) -> ApiContext {
        ApiContext {
            registry,
            agent,
            checks,
            metrics_registry,
            metrics,
            shutdown,
            leave_requested: CancellationToken::new(),
            leaves: std::sync::OnceLock::new(),
            logging: std::sync::OnceLock::new(),
            reload: std::sync::OnceLock::new(),
        }
    }
}

type Ctx = AxState<Arc<ApiContext>>;

/// The API's routes, with request metrics, tracing and the Consul headers.
pub fn router(ctx: Arc<ApiContext>) -> Router {
    Router::new()
        .route("/v1/agent/self", get(agent::agent_self))
        .route("/v1/agent/members", get(agent::members))
        .route("/v1/agent/services", get(agent::services))
        .route("/v1/agent/service/register", put(agent::service_register))
        .route(
            "/v1/agent/service/deregister/{id}",
            put(agent::service_deregister),
        )
        .route(
            "/v1/agent/service/maintenance/{id}",
            put(agent::service_maintenance),
        )
        .route("/v1/agent/service/{id}", get(agent::service))
        .route("/v1/agent/maintenance", put(agent::node_maintenance))
        .route("/v1/agent/checks", get(agent::checks))
        .route("/v1/agent/check/register", put(agent::check_register))
        .route(
            "/v1/agent/check/deregister/{id}",
            put(agent::check_deregister),
        )
        .route("/v1/agent/check/pass/{id}", put(agent::check_pass))
        .route("/v1/agent/check/warn/{id}", put(agent::check_warn))
        .route("/v1/agent/check/fail/{id}", put(agent::check_fail))
        .route("/v1/agent/check/update/{id}", put(agent::check_update))
        .route("/v1/agent/metrics", get(metrics::agent_metrics))
        .route("/metrics", get(metrics::prometheus))
        .route("/v1/catalog/register", put(catalog::register))
        .route("/v1/catalog/deregister", put(catalog::deregister))
        .route("/v1/catalog/datacenters", get(catalog::datacenters))
        .route("/v1/catalog/nodes", get(catalog::nodes))
        .route("/v1/catalog/services", get(catalog::services))
        .route("/v1/catalog/service/{name}", get(catalog::service))
        .route("/v1/catalog/node/{node}", get(catalog::node))
        .route("/v1/health/service/{name}", get(health::service))
        .route("/v1/health/checks/{name}", get(health::checks))
        .route("/v1/health/node/{node}", get(health::node))
        .route("/v1/health/state/{state}", get(health::state))
        .route(
            "/v1/kv/",
            get(kv::get_root).put(kv::put_root).delete(kv::delete_root),
        )
        .route(
            "/v1/kv/{*key}",
            get(kv::get_key).put(kv::put_key).delete(kv::delete_key),
        )
        .route("/v1/mesh/virtual-ips", get(mesh::virtual_ips))
        .route(
            "/v1/agent/connect/ca/leaf/{service}",
            get(connect_leaf::leaf),
        )
        .route("/v1/agent/connect/ca/roots", get(connect_ca::roots))
        .route("/v1/connect/ca/roots", get(connect_ca::roots))
        .route("/v1/mesh/ca/rotate", post(connect_ca::rotate))
        .route(
            "/v1/connect/intentions",
            get(intentions::list).post(intentions::create),
        )
        .route(
            "/v1/connect/intentions/exact",
            get(intentions::get_exact)
                .put(intentions::put_exact)
                .delete(intentions::delete_exact),
        )
        .route("/v1/connect/intentions/check", get(intentions::check))
        .route("/v1/connect/intentions/match", get(intentions::matches))
        .route(
            "/v1/connect/intentions/{id}",
            get(intentions::get_id)
                .put(intentions::put_id)
                .delete(intentions::delete_id),
        )
        .route("/v1/config", put(config_entries::put))
        .route("/v1/config/{kind}", get(config_entries::list))
        .route(
            "/v1/config/{kind}/{name}",
            get(config_entries::get).delete(config_entries::delete),
        )
        .route("/v1/discovery-chain/{service}", get(discovery_chain::get))
        .route("/v1/status/leader", get(status::leader))
        .route("/v1/status/peers", get(status::peers))
        .route("/v1/agent/leave", put(cluster::leave))
        .route("/v1/agent/reload", put(operations::reload))
        .route("/v1/agent/logs", get(operations::logs))
        .route(
            "/v1/operator/raft/configuration",
            get(cluster::raft_configuration),
        )
        .route(
            "/v1/operator/raft/peer",
            axum::routing::delete(cluster::raft_remove_peer),
        )
        .route(
            "/v1/snapshot",
            get(cluster::snapshot_save)
                .put(cluster::snapshot_restore)
                .layer(axum::extract::DefaultBodyLimit::max(
                    crate::transport::frame::MAX_FRAME / 2,
                )),
        )
        .fallback(not_found)
        .layer(axum::middleware::from_fn_with_state(ctx.clone(), observe))
        .with_state(ctx)
}

async fn not_found(method: Method, uri: axum::http::Uri) -> ApiError {
    ApiError::not_found(format!("no such endpoint: {method} {}", uri.path()))
}

/// Per request: a tracing span, the `dc`/`filter` parameters meshd cannot honour, the Consul
/// headers every response carries, and the request metrics.
async fn observe(AxState(ctx): Ctx, req: Request, next: Next) -> Response {
    let route = req
        .extensions()
        .get::<MatchedPath>()
        .map(|p| p.as_str().to_string())
        .unwrap_or_else(|| "unmatched".to_string());
    let method = req.method().clone();
    let is_read = method == Method::GET || method == Method::HEAD;
    let span = tracing::debug_span!("http", method = %method, route = %route);
    let start = Instant::now();

    let mut resp = match refuse_params(&ctx, req.uri().query()) {
        Err(e) => e.into_response(),
        Ok(()) => next.run(req).instrument(span.clone()).await,
    };

    let headers = resp.headers_mut();
    if !headers.contains_key(&X_CONSUL_INDEX) {
        let applied = ctx.registry.read().applied_index().max(1);
        headers.insert(X_CONSUL_INDEX, HeaderValue::from(applied));
    }
    if is_read {
        let leader = ctx.registry.leader_info();
        let known = if leader.leader.is_some() {
            "true"
        } else {
            "false"
        };
        headers.insert(X_CONSUL_KNOWN_LEADER, HeaderValue::from_static(known));
        let ms = u64::try_from(leader.last_contact.as_millis()).unwrap_or(u64::MAX);
        headers.insert(X_CONSUL_LAST_CONTACT, HeaderValue::from(ms));
    }
    let status = resp.status().as_u16();
    let elapsed = start.elapsed();
    ctx.metrics
        .observe_request(&route, method.as_str(), status, elapsed);
    span.in_scope(|| {
        tracing::debug!(
            status,
            elapsed_ms = elapsed.as_secs_f64() * 1e3,
            "request done"
        )
    });
    resp
}

/// `?dc=` naming another datacenter (meshd does not forward across datacenters) and
/// `?filter=` (no bexpr support; ignoring it would answer with unfiltered data).
fn refuse_params(ctx: &ApiContext, query: Option<&str>) -> Result<(), ApiError> {
    let Some(q) = query else { return Ok(()) };
    let params = blocking::Params::parse(Some(q));
    if let Some(dc) = params.get("dc").filter(|dc| !dc.is_empty()) {
        if dc != ctx.agent.datacenter {
            return Err(ApiError::NoPathToDatacenter(dc.to_string()));
        }
    }
    if params.get("filter").is_some_and(|f| !f.is_empty()) {
        return Err(ApiError::bad(
            "?filter is not supported by meshd; use the endpoint's tag/node-meta parameters",
        ));
    }
    Ok(())
}

/// A JSON response, with `X-Consul-Index` when given.
pub(crate) fn json<T: Serialize>(status: StatusCode, index: Option<u64>, body: &T) -> Response {
    let bytes = match serde_json::to_vec(body) {
        Ok(b) => b,
        Err(e) => return ApiError::Internal(format!("encoding the response: {e}")).into_response(),
    };
    let mut resp = (
        status,
        [(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/json"),
        )],
        bytes,
    )
        .into_response();
    if let Some(i) = index {
        resp.headers_mut()
            .insert(X_CONSUL_INDEX, HeaderValue::from(i.max(1)));
    }
    resp
}

/// The answer of a read: 200 with the body and the query's index.
pub(crate) fn read_json<T: Serialize>(index: u64, body: &T) -> Response {
    json(StatusCode::OK, Some(index), body)
}

/// A 404 of a read, still with the query's index (clients block on it).
pub(crate) fn read_not_found(index: u64, msg: String) -> Response {
    let mut resp = ApiError::NotFound(msg).into_response();
    resp.headers_mut()
        .insert(X_CONSUL_INDEX, HeaderValue::from(index.max(1)));
    resp
}

/// The answer of a read of one object: 200 with it, or a 404 saying `missing`; both carry
/// the read's index.
pub(crate) fn read_one<T: Serialize>(
    r: blocking::Read<Option<T>>,
    missing: impl FnOnce() -> String,
) -> Response {
    match r.value {
        Some(v) => read_json(r.index, &v),
        None => read_not_found(r.index, missing()),
    }
}

/// Writes a command; a rejected command becomes a 400 with its reason.
pub(crate) async fn write(ctx: &ApiContext, cmd: Command) -> Result<Applied, ApiError> {
    let kind = cmd.kind();
    let applied = ctx.registry.write(cmd).await?;
    tracing::debug!(kind, index = applied.index, response = ?applied.response, "write applied");
    if let CmdResponse::Rejected(why) = &applied.response {
        return Err(ApiError::Rejected(why.clone()));
    }
    Ok(applied)
}

/// The answer of a write: 200 with the JSON body and the write's index.
pub(crate) fn write_json<T: Serialize>(applied: &Applied, body: &T) -> Response {
    json(StatusCode::OK, Some(applied.index), body)
}

/// The answer of an agent write: 200 with an empty body (as Consul).
pub(crate) fn write_empty(index: u64) -> Response {
    let mut resp = StatusCode::OK.into_response();
    resp.headers_mut()
        .insert(X_CONSUL_INDEX, HeaderValue::from(index.max(1)));
    resp
}
