//! `/v1/kv/{key}`: Consul's KV store — get (one key, `recurse`, `keys`/`separator`, `raw`),
//! put (`flags`, `cas`; the body is the value), delete (`recurse`, `cas`).

use std::sync::Arc;

use axum::body::Bytes;
use axum::extract::{Path, RawQuery, State};
use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use registry::{Command, KvEntry, Response as CmdResponse};

use super::blocking::{blocking_read, Params, QueryOptions};
use super::definition::validate_kv_key;
use super::error::ApiError;
use super::{read_json, read_not_found, write, write_json, ApiContext, X_CONSUL_INDEX};

type Ctx = State<Arc<ApiContext>>;

/// Largest value a PUT may store (Consul's default `kv_max_value_size`).
pub const MAX_VALUE_SIZE: usize = 512 * 1024;

/// `GET /v1/kv/` (the root: only with `recurse` or `keys`).
pub async fn get_root(ctx: Ctx, q: RawQuery) -> Result<Response, ApiError> {
    get(ctx, String::new(), q).await
}

/// `GET /v1/kv/{key}`
pub async fn get_key(ctx: Ctx, Path(key): Path<String>, q: RawQuery) -> Result<Response, ApiError> {
    get(ctx, key, q).await
}

/// `PUT /v1/kv/` (always a 400: a key is needed).
pub async fn put_root(ctx: Ctx, q: RawQuery, body: Bytes) -> Result<Response, ApiError> {
    put(ctx, String::new(), q, body).await
}

/// `PUT /v1/kv/{key}`
pub async fn put_key(
    ctx: Ctx,
    Path(key): Path<String>,
    q: RawQuery,
    body: Bytes,
) -> Result<Response, ApiError> {
    put(ctx, key, q, body).await
}

/// `DELETE /v1/kv/` (only with `recurse`: deletes everything).
pub async fn delete_root(ctx: Ctx, q: RawQuery) -> Result<Response, ApiError> {
    delete(ctx, String::new(), q).await
}

/// `DELETE /v1/kv/{key}`
pub async fn delete_key(
    ctx: Ctx,
    Path(key): Path<String>,
    q: RawQuery,
) -> Result<Response, ApiError> {
    delete(ctx, key, q).await
}

async fn get(State(ctx): Ctx, key: String, RawQuery(q): RawQuery) -> Result<Response, ApiError> {
    let params = Params::parse(q.as_deref());
    let opts = QueryOptions::parse(&params)?;
    let recurse = params.has("recurse");
    validate_kv_key(&key, true)?;

    if params.has("keys") {
        let sep = params
            .get("separator")
            .or_else(|| params.get("seperator"))
            .map(str::to_string);
        let r = blocking_read(
            &ctx,
            &opts,
            |s| s.kv_prefix_index(&key),
            |s| s.kv_keys(&key, sep.as_deref()),
        )
        .await?;
        // No keys under a prefix is `[]`, not a 404 (Consul answers 404 except at the root;
        // an empty list is what a listing means, and py-consul reads both as "nothing").
        return Ok(read_json(r.index, &r.value));
    }

    if recurse {
        let r = blocking_read(
            &ctx,
            &opts,
            |s| s.kv_prefix_index(&key),
            |s| s.kv_prefix(&key).cloned().collect::<Vec<KvEntry>>(),
        )
        .await?;
        if r.value.is_empty() {
            return Ok(read_not_found(r.index, format!("no entries under {key:?}")));
        }
        return Ok(read_json(r.index, &r.value));
    }

    if key.is_empty() {
        return Err(ApiError::bad("Missing key name"));
    }
    let r = blocking_read(
        &ctx,
        &opts,
        |s| s.kv_key_index(&key),
        |s| s.kv_get(&key).cloned(),
    )
    .await?;
    let Some(entry) = r.value else {
        return Ok(read_not_found(r.index, format!("key {key:?} not found")));
    };
    if params.has("raw") {
        let mut resp = (StatusCode::OK, entry.value).into_response();
        let h = resp.headers_mut();
        h.insert(header::CONTENT_TYPE, HeaderValue::from_static("text/plain"));
        h.insert(
            header::X_CONTENT_TYPE_OPTIONS,
            HeaderValue::from_static("nosniff"),
        );
        h.insert(
            header::CONTENT_SECURITY_POLICY,
            HeaderValue::from_static("sandbox"),
        );
        h.insert(X_CONSUL_INDEX, HeaderValue::from(r.index));
        return Ok(resp);
    }
    Ok(read_json(r.index, &vec![entry]))
}

fn refuse_sessions(params: &Params) -> Result<(), ApiError> {
    if params.has("acquire") || params.has("release") {
        return Err(ApiError::bad(
            "?acquire and ?release are not supported: meshd has no sessions",
        ));
    }
    Ok(())
}

async fn put(
    State(ctx): Ctx,
    key: String,
    RawQuery(q): RawQuery,
    body: Bytes,
) -> Result<Response, ApiError> {
    let params = Params::parse(q.as_deref());
    validate_kv_key(&key, false)?;
    refuse_sessions(&params)?;
    let flags = params.u64("flags")?.unwrap_or(0);
    let cas = params.u64("cas")?;
    if body.len() > MAX_VALUE_SIZE {
        return Err(ApiError::TooLarge(format!(
            "Request body ({} bytes) too large, max size: {MAX_VALUE_SIZE} bytes",
            body.len()
        )));
    }
    let applied = write(
        &ctx,
        Command::KvSet {
            key,
            value: body.to_vec(),
            flags,
            cas,
        },
    )
    .await?;
    let ok = match applied.response {
        CmdResponse::Cas(ok) => cas.is_none() || ok,
        _ => true,
    };
    Ok(write_json(&applied, &ok))
}

async fn delete(State(ctx): Ctx, key: String, RawQuery(q): RawQuery) -> Result<Response, ApiError> {
    let params = Params::parse(q.as_deref());
    let recurse = params.has("recurse");
    validate_kv_key(&key, recurse)?;
    let cas = params.u64("cas")?;
    if recurse && cas.is_some() {
        return Err(ApiError::bad("Conflicting flags: ?recurse and ?cas"));
    }
    let applied = write(&ctx, Command::KvDelete { key, recurse, cas }).await?;
    let ok = match applied.response {
        CmdResponse::Cas(ok) => cas.is_none() || ok,
        _ => true,
    };
    Ok(write_json(&applied, &ok))
}
