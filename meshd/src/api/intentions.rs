//! `/v1/connect/intentions`: Consul's intentions API — create (`POST`), list, exact match
//! (`GET|PUT|DELETE /exact?source=&destination=`), by ID (`GET|PUT|DELETE /{id}`), `check`
//! and `match`. A source of type `node` (`SourceType` in bodies, `source-type=node` in
//! queries) names a node identity.

use std::collections::BTreeMap;
use std::sync::Arc;

use axum::body::Bytes;
use axum::extract::{Path, RawQuery, State};
use axum::response::Response;
use registry::intention::{Action, Caller, Intention, SOURCE_NODE, SOURCE_SERVICE, WILDCARD};
use registry::Command;
use serde::Deserialize;
use serde_json::json;

use super::blocking::{blocking_read, Params, QueryOptions};
use super::decode::decode_body;
use super::error::ApiError;
use super::{read_json, read_one, write, write_json, ApiContext};

type Ctx = State<Arc<ApiContext>>;

/// The body of a create or update.
#[derive(Deserialize, Default)]
#[serde(rename_all = "PascalCase")]
struct IntentionBody {
    source_name: Option<String>,
    destination_name: Option<String>,
    source_type: Option<String>,
    action: Option<String>,
    description: Option<String>,
    meta: Option<BTreeMap<String, String>>,
}

impl IntentionBody {
    /// An intention from this body; the pair may come from the query instead.
    fn into_intention(
        self,
        id: String,
        pair: Option<(String, String, String)>,
    ) -> Result<Intention, ApiError> {
        let action = Action::parse(self.action.as_deref().unwrap_or(""))
            .map_err(|e| ApiError::bad(format!("Action: {e}")))?;
        let (source_type, source, destination) = match pair {
            Some(p) => p,
            None => (
                self.source_type
                    .unwrap_or_else(|| SOURCE_SERVICE.to_string()),
                self.source_name
                    .ok_or_else(|| ApiError::bad("SourceName is required"))?,
                self.destination_name
                    .ok_or_else(|| ApiError::bad("DestinationName is required"))?,
            ),
        };
        let mut i = Intention {
            id,
            description: self.description.unwrap_or_default(),
            source_name: source,
            destination_name: destination,
            source_type,
            action,
            meta: self.meta.unwrap_or_default(),
            ..Intention::default()
        };
        i.check_names().map_err(ApiError::bad)?;
        i.normalize().map_err(ApiError::bad)?;
        Ok(i)
    }
}

/// Decodes an intention body (keys matched case-insensitively; unknown keys ignored).
fn decode_intention(body: &[u8]) -> Result<IntentionBody, ApiError> {
    decode_body(body, "intention")
}

/// `source`, `destination` and `source-type` of a query; both names are required.
fn pair(params: &Params) -> Result<(String, String, String), ApiError> {
    let get = |k: &str| {
        params
            .get(k)
            .filter(|v| !v.is_empty())
            .map(str::to_string)
            .ok_or_else(|| ApiError::bad(format!("required query parameter '{k}' not set")))
    };
    let source_type = match params.get("source-type") {
        None | Some("") | Some("consul") => SOURCE_SERVICE,
        Some("node") => SOURCE_NODE,
        Some(other) => {
            return Err(ApiError::bad(format!(
                "invalid source-type {other:?}: use consul or node"
            )))
        }
    };
    Ok((source_type.to_string(), get("source")?, get("destination")?))
}

/// `GET /v1/connect/intentions`: every intention, highest precedence first.
pub async fn list(State(ctx): Ctx, RawQuery(q): RawQuery) -> Result<Response, ApiError> {
    let opts = QueryOptions::parse(&Params::parse(q.as_deref()))?;
    let r = blocking_read(
        &ctx,
        &opts,
        |s| s.intentions_index(),
        |s| s.intentions().into_iter().cloned().collect::<Vec<_>>(),
    )
    .await?;
    Ok(read_json(r.index, &r.value))
}

/// `POST /v1/connect/intentions`: creates one; a pair that exists is refused.
pub async fn create(State(ctx): Ctx, body: Bytes) -> Result<Response, ApiError> {
    let b: IntentionBody = decode_intention(&body)?;
    let id = uuid::Uuid::new_v4().to_string();
    let intention = b.into_intention(id.clone(), None)?;
    let applied = write(
        &ctx,
        Command::IntentionSet {
            intention,
            create_only: true,
        },
    )
    .await?;
    Ok(write_json(&applied, &json!({ "ID": id })))
}

/// `GET /v1/connect/intentions/exact`.
pub async fn get_exact(State(ctx): Ctx, RawQuery(q): RawQuery) -> Result<Response, ApiError> {
    let params = Params::parse(q.as_deref());
    let (t, s, d) = pair(&params)?;
    let opts = QueryOptions::parse(&params)?;
    let r = blocking_read(
        &ctx,
        &opts,
        |st| st.intentions_index(),
        |st| st.intention_exact(&t, &s, &d).cloned(),
    )
    .await?;
    Ok(read_one(r, || format!("Intention not found: {s} => {d}")))
}

/// `PUT /v1/connect/intentions/exact`: creates or updates the pair's intention.
pub async fn put_exact(
    State(ctx): Ctx,
    RawQuery(q): RawQuery,
    body: Bytes,
) -> Result<Response, ApiError> {
    let p = pair(&Params::parse(q.as_deref()))?;
    let b: IntentionBody = decode_intention(&body)?;
    let existing = ctx
        .registry
        .read()
        .intention_exact(&p.0, &p.1, &p.2)
        .map(|i| i.id.clone());
    let id = existing.unwrap_or_else(|| uuid::Uuid::new_v4().to_string());
    let intention = b.into_intention(id, Some(p))?;
    upsert(&ctx, intention).await
}

/// Writes `intention` over the one of its pair (or as a new one); answers `true`.
async fn upsert(ctx: &ApiContext, intention: Intention) -> Result<Response, ApiError> {
    let applied = write(
        ctx,
        Command::IntentionSet {
            intention,
            create_only: false,
        },
    )
    .await?;
    Ok(write_json(&applied, &true))
}

/// `DELETE /v1/connect/intentions/exact`.
pub async fn delete_exact(State(ctx): Ctx, RawQuery(q): RawQuery) -> Result<Response, ApiError> {
    let (source_type, source, destination) = pair(&Params::parse(q.as_deref()))?;
    let applied = write(
        &ctx,
        Command::IntentionDelete {
            id: None,
            source_type,
            source,
            destination,
        },
    )
    .await?;
    Ok(write_json(&applied, &true))
}

/// `GET /v1/connect/intentions/{id}`.
pub async fn get_id(
    State(ctx): Ctx,
    Path(id): Path<String>,
    RawQuery(q): RawQuery,
) -> Result<Response, ApiError> {
    let opts = QueryOptions::parse(&Params::parse(q.as_deref()))?;
    let r = blocking_read(
        &ctx,
        &opts,
        |st| st.intentions_index(),
        |st| st.intention(&id).cloned(),
    )
    .await?;
    Ok(read_one(r, || format!("Intention not found: {id}")))
}

/// `PUT /v1/connect/intentions/{id}`: replaces the intention with that ID.
pub async fn put_id(
    State(ctx): Ctx,
    Path(id): Path<String>,
    body: Bytes,
) -> Result<Response, ApiError> {
    let mut b: IntentionBody = decode_intention(&body)?;
    let current = ctx.registry.read().intention(&id).cloned();
    let Some(current) = current else {
        return Err(ApiError::not_found(format!("Intention not found: {id}")));
    };
    // What the body leaves out of the pair stays as it is.
    b.source_name
        .get_or_insert_with(|| current.source_name.clone());
    b.destination_name
        .get_or_insert_with(|| current.destination_name.clone());
    b.source_type
        .get_or_insert_with(|| current.source_type.clone());
    let intention = b.into_intention(id, None)?;
    if !intention.same_pair(
        &current.source_type,
        &current.source_name,
        &current.destination_name,
    ) {
        return Err(ApiError::bad(
            "changing an intention's source or destination is not supported: delete it and create another",
        ));
    }
    upsert(&ctx, intention).await
}

/// `DELETE /v1/connect/intentions/{id}`.
pub async fn delete_id(State(ctx): Ctx, Path(id): Path<String>) -> Result<Response, ApiError> {
    let applied = write(
        &ctx,
        Command::IntentionDelete {
            id: Some(id),
            source_type: String::new(),
            source: String::new(),
            destination: String::new(),
        },
    )
    .await?;
    Ok(write_json(&applied, &true))
}

/// `GET /v1/connect/intentions/check?source=&destination=`: `{"Allowed": bool}`.
pub async fn check(State(ctx): Ctx, RawQuery(q): RawQuery) -> Result<Response, ApiError> {
    let params = Params::parse(q.as_deref());
    let (t, s, d) = pair(&params)?;
    let opts = QueryOptions::parse(&params)?;
    let r = blocking_read(
        &ctx,
        &opts,
        |st| st.intentions_index(),
        |st| {
            let caller = if t == SOURCE_NODE {
                Caller::Node(&s)
            } else {
                Caller::Service(&s)
            };
            st.check_intention(caller, &d).allowed
        },
    )
    .await?;
    Ok(read_json(r.index, &json!({ "Allowed": r.value })))
}

/// `GET /v1/connect/intentions/match?by=source|destination&name=N`: `{N: [...]}`, the
/// intentions that apply to N, highest precedence first.
pub async fn matches(State(ctx): Ctx, RawQuery(q): RawQuery) -> Result<Response, ApiError> {
    let params = Params::parse(q.as_deref());
    let by_source = match params.get("by") {
        Some("source") => true,
        Some("destination") => false,
        other => {
            return Err(ApiError::bad(format!(
                "required query parameter 'by' must be source or destination, not {other:?}"
            )))
        }
    };
    let names: Vec<String> = params.all("name").map(str::to_string).collect();
    if names.is_empty() {
        return Err(ApiError::bad("required query parameter 'name' not set"));
    }
    let opts = QueryOptions::parse(&params)?;
    let r = blocking_read(
        &ctx,
        &opts,
        |st| st.intentions_index(),
        |st| {
            let all = st.intentions();
            names
                .iter()
                .map(|n| {
                    let hits: Vec<Intention> = all
                        .iter()
                        .filter(|i| {
                            let field = if by_source {
                                &i.source_name
                            } else {
                                &i.destination_name
                            };
                            field == n || field == WILDCARD
                        })
                        .map(|i| (*i).clone())
                        .collect();
                    (n.clone(), hits)
                })
                .collect::<BTreeMap<_, _>>()
        },
    )
    .await?;
    Ok(read_json(r.index, &r.value))
}
