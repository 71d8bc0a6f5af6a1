//! `/v1/agent/...`: this agent's services (registered on the local node), `self` and `members`.
//! The check endpoints and maintenance mode are in [`check`].
//!
//! Agent registrations write to the local node with `SkipNodeUpdate`, so they never change the
//! node itself. A re-registration that changes nothing is applied as a no-op by the registry
//! and bumps no index (Nomad re-registers every 30 s); for that, a re-registered check keeps
//! its current status and output.

mod check;

use std::collections::BTreeMap;
use std::sync::Arc;

use axum::body::Bytes;
use axum::extract::{Path, RawQuery, State};
use axum::response::Response;
use registry::model::{MemberRole, MemberStatus};
use registry::{Check, Command, Consistency, Node, Register, Service};
use serde_json::{json, Value};

use super::blocking::{blocking_read, Params, QueryOptions};
use super::decode::{self, ServiceDef};
use super::definition::{build_service, build_service_checks};
use super::error::ApiError;
use super::types::{AgentService, Member};
use super::{read_json, read_not_found, write, write_empty, ApiContext};
use crate::local::{CONSUL_API_COMPAT_VERSION, MESHD_VERSION};
pub use check::{
    check_deregister, check_fail, check_pass, check_register, check_update, check_warn, checks,
    node_maintenance, service_maintenance,
};

type Ctx = State<Arc<ApiContext>>;

/// This agent's node, as agent registrations write it (with `SkipNodeUpdate`, it is only used
/// when the node is not in the catalog yet).
pub(super) fn local_node(ctx: &ApiContext) -> Node {
    Node {
        id: ctx.agent.node_id.clone(),
        node: ctx.agent.node.clone(),
        address: ctx.agent.address.clone(),
        datacenter: ctx.agent.datacenter.clone(),
        tagged_addresses: BTreeMap::new(),
        meta: ctx.agent.node_meta.clone(),
        create_index: 0,
        modify_index: 0,
    }
}

/// An existing local check's status and output carry over to its re-registration.
pub(super) fn keep_current_status(ctx: &ApiContext, checks: &mut [Check]) {
    let state = ctx.registry.read();
    for c in checks {
        if let Some(old) = state.check(&ctx.agent.node, &c.check_id) {
            c.status = old.status;
            c.output = old.output.clone();
        }
    }
}

/// A validated service registration, ready to write.
#[derive(Clone, Debug)]
pub struct Prepared {
    pub service: Service,
    checks: Vec<Check>,
}

/// Decodes and validates one service definition; writes nothing.
fn parse(body: Value) -> Result<Prepared, ApiError> {
    let def: ServiceDef = decode::decode(body, "service definition")?;
    prepared(&def)
}

/// A definition file's service: as [`parse`], and an unknown key is an error.
fn parse_strict(body: Value) -> Result<Prepared, ApiError> {
    prepared(&decode::decode_strict(body, "service definition")?)
}

fn prepared(def: &ServiceDef) -> Result<Prepared, ApiError> {
    let service = build_service(def)?;
    let checks = build_service_checks(def, &service)?;
    Ok(Prepared { service, checks })
}

fn prepare(ctx: &ApiContext, body: Value) -> Result<Prepared, ApiError> {
    let mut p = parse(body)?;
    keep_current_status(ctx, &mut p.checks);
    Ok(p)
}

async fn commit(
    ctx: &ApiContext,
    p: Prepared,
    replace_existing_checks: bool,
) -> Result<u64, ApiError> {
    let id = p.service.id.clone();
    let applied = write(
        ctx,
        Command::Register(Register {
            node: local_node(ctx),
            skip_node_update: true,
            service: Some(p.service),
            checks: p.checks,
            replace_service_checks: replace_existing_checks,
        }),
    )
    .await?;
    tracing::debug!(service = %id, index = applied.index, "service registered");
    Ok(applied.index)
}

/// The service definitions of a `--config-dir` file: `{"service": {...}}` or
/// `{"services": [...]}` (keys matched as the API matches them). `None` when `v` is not in
/// that form (then it is a bare service definition). Any other top-level key is an error.
fn definition_file_services(v: &Value) -> Result<Option<Vec<Value>>, ApiError> {
    let Some(obj) = v.as_object() else {
        return Err(ApiError::bad("a service definition must be a JSON object"));
    };
    const STANDALONE_CHECK: &str = "standalone check definitions (a top-level \"check\" or \
        \"checks\") are not supported: put the check in its service's definition \
        ({\"service\": {\"name\": ..., \"check\": {...}}})";
    let mut out = Vec::new();
    let mut found = false;
    let mut others = Vec::new();
    for (k, v) in obj {
        match (decode::canonical(k), v) {
            (Some("Service"), Value::Object(_)) => {
                found = true;
                out.push(v.clone());
            }
            (Some("Services"), Value::Array(items)) => {
                found = true;
                out.extend(items.iter().cloned());
            }
            (Some("Service"), _) => {
                return Err(ApiError::bad(
                    "\"service\" must be a service definition object",
                ))
            }
            (Some("Services"), _) => {
                return Err(ApiError::bad(
                    "\"services\" must be a list of service definitions",
                ))
            }
            (canon, _) => others.push((k.as_str(), canon)),
        }
    }
    let is_check = |c: Option<&str>| matches!(c, Some("Check" | "Checks"));
    if !found {
        // A bare service definition, unless it is a check file (no name, a check).
        let named = others.iter().any(|(_, c)| *c == Some("Name"));
        if !named && others.iter().any(|(_, c)| is_check(*c)) {
            return Err(ApiError::bad(STANDALONE_CHECK));
        }
        return Ok(None);
    }
    match others.as_slice() {
        [] => Ok(Some(out)),
        o if o.iter().any(|(_, c)| is_check(*c)) => Err(ApiError::bad(STANDALONE_CHECK)),
        o => Err(ApiError::bad(format!(
            "unknown top-level key{} {}: a definition file holds \"service\" or \"services\"",
            if o.len() == 1 { "" } else { "s" },
            decode::backquoted(&o.iter().map(|(k, _)| *k).collect::<Vec<_>>())
        ))),
    }
}

/// Every service of a definition file — `{"service": {...}}`, `{"services": [...]}` or a bare
/// definition — decoded and validated, writing nothing (`meshd validate`, and a reload before
/// it changes anything). Errors name the service's position in the file.
pub fn parse_definitions(file: &Value) -> Result<Vec<Prepared>, ApiError> {
    let Some(defs) = definition_file_services(file)? else {
        return Ok(vec![parse_strict(file.clone())?]);
    };
    let prepared = defs
        .into_iter()
        .enumerate()
        .map(|(i, d)| {
            parse_strict(d).map_err(|e| match e {
                ApiError::BadRequest(m) => ApiError::BadRequest(format!("service #{}: {m}", i + 1)),
                other => other,
            })
        })
        .collect::<Result<Vec<_>, _>>()?;
    let mut ids: Vec<&str> = Vec::with_capacity(prepared.len());
    for p in &prepared {
        if ids.contains(&p.service.id.as_str()) {
            return Err(ApiError::bad(format!(
                "service ID {:?} is defined twice in the file",
                p.service.id
            )));
        }
        ids.push(&p.service.id);
    }
    Ok(prepared)
}

/// Writes parsed definitions on this agent; a re-registered check keeps its status. With
/// `replace_checks`, checks no longer in a definition are removed (a reload).
pub async fn register_prepared(
    ctx: &ApiContext,
    defs: Vec<Prepared>,
    replace_checks: bool,
) -> Result<Vec<String>, ApiError> {
    let mut ids = Vec::with_capacity(defs.len());
    for mut p in defs {
        keep_current_status(ctx, &mut p.checks);
        ids.push(p.service.id.clone());
        commit(ctx, p, replace_checks).await?;
    }
    Ok(ids)
}

/// For each of `defs`, whether this agent's node already holds exactly that registration
/// (indexes, check status and output aside): a reload then skips its write.
pub fn registered_unchanged(ctx: &ApiContext, defs: &[&Prepared]) -> Vec<bool> {
    // The registry fills in the node and the service's name and tags (the service is compared
    // on its own).
    let normalize = |c: &Check| Check {
        node: String::new(),
        service_name: String::new(),
        service_tags: Vec::new(),
        status: registry::Status::Passing,
        output: String::new(),
        create_index: 0,
        modify_index: 0,
        ..c.clone()
    };
    let st = ctx.registry.read();
    let node = &ctx.agent.node;
    let mut checks: std::collections::HashMap<&str, Vec<Check>> = std::collections::HashMap::new();
    for c in st.node_checks(node) {
        checks.entry(&c.service_id).or_default().push(normalize(c));
    }
    defs.iter()
        .map(|p| {
            let Some(current) = st.service(node, &p.service.id) else {
                return false;
            };
            let same_service = Service {
                create_index: 0,
                modify_index: 0,
                ..current.clone()
            } == p.service;
            let have = checks
                .get(p.service.id.as_str())
                .map(Vec::as_slice)
                .unwrap_or(&[]);
            same_service
                && have.len() == p.checks.len()
                && p.checks.iter().all(|c| have.contains(&normalize(c)))
        })
        .collect()
}

/// Removes a service of this agent (and its checks); `false` when it was not registered.
pub async fn deregister_local(ctx: &ApiContext, id: &str) -> Result<bool, ApiError> {
    if ctx.registry.read().service(&ctx.agent.node, id).is_none() {
        return Ok(false);
    }
    write(
        ctx,
        Command::Deregister {
            node: ctx.agent.node.clone(),
            service_id: Some(id.to_string()),
            check_id: None,
        },
    )
    .await?;
    Ok(true)
}

/// `PUT /v1/agent/service/register[?replace-existing-checks]`
pub async fn service_register(
    State(ctx): Ctx,
    RawQuery(q): RawQuery,
    body: Bytes,
) -> Result<Response, ApiError> {
    let params = Params::parse(q.as_deref());
    let replace = params.bool("replace-existing-checks")?.unwrap_or(false);
    let value = decode::parse_json(&body, "service definition")?;
    if !value.is_object() {
        return Err(ApiError::bad(
            "Request decode failed: service definition must be a JSON object",
        ));
    }
    let p = prepare(&ctx, value)?;
    let index = commit(&ctx, p, replace).await?;
    Ok(write_empty(index))
}

/// `PUT /v1/agent/service/deregister/{id}`
pub async fn service_deregister(
    State(ctx): Ctx,
    Path(id): Path<String>,
) -> Result<Response, ApiError> {
    let exists = ctx.registry.read().service(&ctx.agent.node, &id).is_some();
    if !exists {
        return Err(ApiError::not_found(format!("Unknown service ID {id:?}")));
    }
    let applied = write(
        &ctx,
        Command::Deregister {
            node: ctx.agent.node.clone(),
            service_id: Some(id),
            check_id: None,
        },
    )
    .await?;
    Ok(write_empty(applied.index))
}

/// `GET /v1/agent/services`: map of service ID to service, this node only.
pub async fn services(State(ctx): Ctx, RawQuery(q): RawQuery) -> Result<Response, ApiError> {
    let opts = QueryOptions::parse(&Params::parse(q.as_deref()))?;
    let node = ctx.agent.node.clone();
    let dc = ctx.agent.datacenter.clone();
    let r = blocking_read(
        &ctx,
        &opts,
        |s| s.node_index(&node),
        |s| {
            s.node_services(&node)
                .map(|svc| (svc.id.clone(), AgentService::new(svc, &dc)))
                .collect::<BTreeMap<_, _>>()
        },
    )
    .await?;
    Ok(read_json(r.index, &r.value))
}

/// `GET /v1/agent/service/{id}`
pub async fn service(
    State(ctx): Ctx,
    Path(id): Path<String>,
    RawQuery(q): RawQuery,
) -> Result<Response, ApiError> {
    let opts = QueryOptions::parse(&Params::parse(q.as_deref()))?;
    let node = ctx.agent.node.clone();
    let dc = ctx.agent.datacenter.clone();
    let r = blocking_read(
        &ctx,
        &opts,
        |s| s.node_index(&node),
        |s| s.service(&node, &id).map(|svc| AgentService::new(svc, &dc)),
    )
    .await?;
    match r.value {
        Some(svc) => Ok(read_json(r.index, &svc)),
        None => Ok(read_not_found(
            r.index,
            format!("unknown service ID {id:?}"),
        )),
    }
}

/// This agent as a member.
fn self_member(ctx: &ApiContext) -> Member {
    let a = &ctx.agent;
    let role = if a.server { "consul" } else { "node" };
    let mut m = Member::new(&a.node, &a.address, role, &a.datacenter, &a.node_id);
    m.tags.insert(
        "build".to_string(),
        format!("{CONSUL_API_COMPAT_VERSION}:meshd-{MESHD_VERSION}"),
    );
    if let Some(row) = ctx.registry.read().member(&a.node) {
        let (_, port, status) = member_fields(row);
        m.port = port;
        m.status = status;
    }
    m
}

/// A member row's address, QUIC port and Serf status code (1 alive, 3 left, 4 failed).
fn member_fields(m: &registry::Member) -> (String, u16, u8) {
    let (ip, port) = match m.addr.parse::<std::net::SocketAddr>() {
        Ok(a) => (a.ip().to_string(), a.port()),
        Err(_) => (m.addr.clone(), super::types::MEMBER_PORT),
    };
    let status = match m.status {
        MemberStatus::Alive => 1,
        MemberStatus::Left => 3,
        MemberStatus::Failed => 4,
    };
    (ip, port, status)
}

/// `GET /v1/agent/self`
pub async fn agent_self(State(ctx): Ctx) -> Result<Response, ApiError> {
    let a = &ctx.agent;
    let leader = ctx.registry.leader_info();
    let index = ctx.registry.read().applied_index();
    let body = json!({
        "Config": {
            "Datacenter": a.datacenter,
            "PrimaryDatacenter": a.datacenter,
            "NodeName": a.node,
            "NodeID": a.node_id,
            "Server": a.server,
            "Revision": format!("meshd-{MESHD_VERSION}"),
            "Version": CONSUL_API_COMPAT_VERSION,
            "MeshdVersion": MESHD_VERSION,
        },
        "DebugConfig": {
            "Datacenter": a.datacenter,
            "NodeName": a.node,
            "NodeID": a.node_id,
            "ServerMode": a.server,
            "ConnectEnabled": false,
            "GRPCPort": -1,
        },
        "Coord": Value::Null,
        "Member": self_member(&ctx),
        "Meta": a.node_meta,
        "Stats": {
            "agent": {"check_monitors": "0"},
            "build": {"version": CONSUL_API_COMPAT_VERSION, "meshd": MESHD_VERSION},
            "consul": {
                "server": a.server.to_string(),
                "leader": leader.leader.as_deref().is_some_and(|l| {
                    l == a.address || l == format!("{}:{}", a.address, super::types::MEMBER_PORT)
                }).to_string(),
                "known_servers": leader.peers.len().to_string(),
            },
        },
        "xDS": Value::Null,
    });
    Ok(read_json(index, &body))
}

/// `GET /v1/agent/members`: the catalog's nodes as Serf members (this agent as in `self`).
pub async fn members(State(ctx): Ctx, RawQuery(q): RawQuery) -> Result<Response, ApiError> {
    let params = Params::parse(q.as_deref());
    if params.bool("wan")?.unwrap_or(false) {
        // No WAN pool: members are named "<node>.<dc>" there; this agent is the only one known.
        let mut m = self_member(&ctx);
        m.name = format!("{}.{}", m.name, ctx.agent.datacenter);
        let index = ctx.registry.read().applied_index();
        return Ok(read_json(index, &vec![m]));
    }
    ctx.registry.read_barrier(Consistency::Stale).await?;
    let me = self_member(&ctx);
    let (index, mut members) = {
        let state = ctx.registry.read();
        let members: Vec<Member> = state
            .members()
            .filter(|m| m.name != me.name)
            .map(|m| {
                let (ip, port, status) = member_fields(m);
                let role = match m.role {
                    MemberRole::Server => "consul",
                    MemberRole::Agent => "node",
                };
                let id = state
                    .node(&m.name)
                    .map(|n| n.id.clone())
                    .unwrap_or_default();
                let mut member = Member::new(&m.name, &ip, role, &m.datacenter, &id);
                member.port = port;
                member.status = status;
                member
            })
            .collect();
        (state.members_index(), members)
    };
    members.push(me);
    members.sort_by(|a, b| a.name.cmp(&b.name));
    Ok(read_json(index, &members))
}
