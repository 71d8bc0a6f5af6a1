//! `/v1/catalog/...`: register and deregister nodes, services and checks directly, and list
//! datacenters, nodes, services and instances.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;

use axum::body::Bytes;
use axum::extract::{Path, RawQuery, State};
use axum::response::Response;
use registry::{Command, Node, Register, Service};

use super::blocking::{blocking_read, Params, QueryOptions};
use super::decode::{self, CatalogDeregisterDef, CatalogRegisterDef};
use super::definition::{
    build_catalog_check, build_service, no_control, validate_ident, validate_meta, validate_name,
};
use super::error::ApiError;
use super::types::{AgentService, CatalogNode, CatalogService};
use super::{read_json, read_not_found, write, write_json, ApiContext};

type Ctx = State<Arc<ApiContext>>;

/// Whether a node's meta matches every `?node-meta=k:v` filter.
pub(super) fn meta_matches(node: &Node, filters: &[(String, String)]) -> bool {
    filters
        .iter()
        .all(|(k, v)| node.meta.get(k).is_some_and(|have| have == v))
}

/// Whether an instance has every tag asked for (case-insensitive, as Consul).
pub(super) fn has_tags(s: &Service, tags: &[String]) -> bool {
    tags.iter()
        .all(|want| s.tags.iter().any(|t| t.eq_ignore_ascii_case(want)))
}

fn check_datacenter(ctx: &ApiContext, dc: Option<&str>) -> Result<(), ApiError> {
    match dc.filter(|d| !d.is_empty()) {
        Some(d) if d != ctx.agent.datacenter => Err(ApiError::NoPathToDatacenter(d.to_string())),
        _ => Ok(()),
    }
}

fn is_uuid(s: &str) -> bool {
    s.len() == 36
        && s.char_indices().all(|(i, c)| match i {
            8 | 13 | 18 | 23 => c == '-',
            _ => c.is_ascii_hexdigit(),
        })
}

/// `PUT /v1/catalog/register`
pub async fn register(State(ctx): Ctx, body: Bytes) -> Result<Response, ApiError> {
    let def: CatalogRegisterDef = decode::decode_body(&body, "catalog registration")?;
    check_datacenter(&ctx, def.datacenter.as_deref())?;
    let node_name = def.node.clone().unwrap_or_default();
    validate_ident("node name", &node_name)?;
    let skip_node_update = def.skip_node_update.unwrap_or(false);
    let address = def.address.clone().unwrap_or_default();
    if address.is_empty() && !skip_node_update {
        return Err(ApiError::bad(
            "Must provide address if SkipNodeUpdate is not set",
        ));
    }
    no_control("node address", &address)?;
    let id = def.id.clone().unwrap_or_default();
    if !id.is_empty() && !is_uuid(&id) {
        return Err(ApiError::bad(format!(
            "Invalid node ID {id:?}: must be a UUID"
        )));
    }
    let meta = def.node_meta.clone().unwrap_or_default();
    validate_meta("NodeMeta", &meta)?;
    let tagged = def.tagged_addresses.clone().unwrap_or_default();
    for (k, v) in &tagged {
        validate_name("tagged address name", k)?;
        no_control("tagged address", v)?;
    }
    let service = match &def.service {
        Some(s) => {
            if s.check.is_some() || s.checks.is_some() {
                return Err(ApiError::bad(
                    "Service.Check/Checks are agent-only; give catalog checks as Check or Checks",
                ));
            }
            Some(build_service(s)?)
        }
        None => None,
    };
    let mut checks = Vec::new();
    for c in def.check.iter().chain(def.checks.iter().flatten()) {
        let check = build_catalog_check(c, &node_name)?;
        if checks
            .iter()
            .any(|o: &registry::Check| o.check_id == check.check_id)
        {
            return Err(ApiError::bad(format!(
                "duplicate CheckID {:?}",
                check.check_id
            )));
        }
        checks.push(check);
    }
    let node = Node {
        id,
        node: node_name,
        address,
        datacenter: ctx.agent.datacenter.clone(),
        tagged_addresses: tagged,
        meta,
        create_index: 0,
        modify_index: 0,
    };
    let applied = write(
        &ctx,
        Command::Register(Register {
            node,
            skip_node_update,
            service,
            checks,
            replace_service_checks: false,
        }),
    )
    .await?;
    Ok(write_json(&applied, &true))
}

/// `PUT /v1/catalog/deregister`: a check, a service instance (with its checks), or a node.
pub async fn deregister(State(ctx): Ctx, body: Bytes) -> Result<Response, ApiError> {
    let def: CatalogDeregisterDef = decode::decode_body(&body, "catalog deregistration")?;
    check_datacenter(&ctx, def.datacenter.as_deref())?;
    let node = def.node.unwrap_or_default();
    validate_name("node name", &node)?;
    let service_id = def.service_id.filter(|s| !s.is_empty());
    let check_id = def.check_id.filter(|s| !s.is_empty());
    let mut cmds = Vec::new();
    if service_id.is_none() && check_id.is_none() {
        cmds.push(Command::Deregister {
            node: node.clone(),
            service_id: None,
            check_id: None,
        });
    }
    if let Some(sid) = service_id {
        cmds.push(Command::Deregister {
            node: node.clone(),
            service_id: Some(sid),
            check_id: None,
        });
    }
    if let Some(cid) = check_id {
        cmds.push(Command::Deregister {
            node: node.clone(),
            service_id: None,
            check_id: Some(cid),
        });
    }
    let mut last = None;
    for cmd in cmds {
        last = Some(write(&ctx, cmd).await?);
    }
    match last {
        Some(applied) => Ok(write_json(&applied, &true)),
        None => Err(ApiError::Internal("nothing to deregister".into())),
    }
}

/// `GET /v1/catalog/datacenters`
pub async fn datacenters(State(ctx): Ctx) -> Result<Response, ApiError> {
    let index = ctx.registry.read().applied_index();
    Ok(read_json(index, &vec![ctx.agent.datacenter.clone()]))
}

/// `GET /v1/catalog/nodes[?node-meta=k:v]`
pub async fn nodes(State(ctx): Ctx, RawQuery(q): RawQuery) -> Result<Response, ApiError> {
    let params = Params::parse(q.as_deref());
    let opts = QueryOptions::parse(&params)?;
    let filters = params.node_meta()?;
    let r = blocking_read(
        &ctx,
        &opts,
        |s| s.indexes().nodes,
        |s| {
            s.nodes()
                .filter(|n| meta_matches(n, &filters))
                .cloned()
                .collect::<Vec<_>>()
        },
    )
    .await?;
    Ok(read_json(r.index, &r.value))
}

/// `GET /v1/catalog/services[?node-meta=k:v]`: service name to the union of its tags.
pub async fn services(State(ctx): Ctx, RawQuery(q): RawQuery) -> Result<Response, ApiError> {
    let params = Params::parse(q.as_deref());
    let opts = QueryOptions::parse(&params)?;
    let filters = params.node_meta()?;
    let r = blocking_read(
        &ctx,
        &opts,
        |s| {
            let i = s.indexes();
            if filters.is_empty() {
                i.services
            } else {
                i.services.max(i.nodes)
            }
        },
        |s| {
            // Each name's tags in the order its instances (by node, then ID) first show them,
            // so a single instance's tags read back as registered.
            let mut out: BTreeMap<String, Vec<String>> = BTreeMap::new();
            for name in s.service_names().into_keys() {
                let mut tags: Vec<String> = Vec::new();
                let mut seen: BTreeSet<&str> = BTreeSet::new();
                let mut any = false;
                for (node, svc) in s.service_instances(name) {
                    if !meta_matches(node, &filters) {
                        continue;
                    }
                    any = true;
                    for t in &svc.tags {
                        if seen.insert(t.as_str()) {
                            tags.push(t.clone());
                        }
                    }
                }
                if any {
                    out.insert(name.to_string(), tags);
                }
            }
            out
        },
    )
    .await?;
    Ok(read_json(r.index, &r.value))
}

/// `GET /v1/catalog/service/{name}[?tag=..][&node-meta=k:v]`
pub async fn service(
    State(ctx): Ctx,
    Path(name): Path<String>,
    RawQuery(q): RawQuery,
) -> Result<Response, ApiError> {
    let params = Params::parse(q.as_deref());
    let opts = QueryOptions::parse(&params)?;
    let filters = params.node_meta()?;
    let tags: Vec<String> = params.all("tag").map(str::to_string).collect();
    let r = blocking_read(
        &ctx,
        &opts,
        |s| s.service_index(&name),
        |s| {
            s.service_instances(&name)
                .into_iter()
                .filter(|(n, svc)| meta_matches(n, &filters) && has_tags(svc, &tags))
                .map(|(n, svc)| CatalogService::new(n, svc))
                .collect::<Vec<_>>()
        },
    )
    .await?;
    Ok(read_json(r.index, &r.value))
}

/// `GET /v1/catalog/node/{node}`: the node and its services; 404 for an unknown node.
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
        |s| {
            s.node(&name).map(|n| CatalogNode {
                node: n.clone(),
                services: s
                    .node_services(&name)
                    .map(|svc| (svc.id.clone(), AgentService::new(svc, &n.datacenter)))
                    .collect(),
            })
        },
    )
    .await?;
    match r.value {
        Some(n) => Ok(read_json(r.index, &n)),
        None => Ok(read_not_found(r.index, format!("Unknown node {name:?}"))),
    }
}
