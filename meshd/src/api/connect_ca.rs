//! The mesh CA as Consul shows it: `GET /v1/agent/connect/ca/roots` (and
//! `/v1/connect/ca/roots`), and meshd's `POST /v1/mesh/ca/rotate`, which makes a new root for
//! the same trust domain and makes it the active one (`meshctl ca rotate`).

use std::sync::Arc;

use axum::extract::{RawQuery, State};
use axum::response::Response;
use registry::model::CaRoot;
use registry::Command;
use serde::Serialize;
use serde_json::json;

use super::blocking::{blocking_read, Params, QueryOptions};
use super::error::ApiError;
use super::{read_json, write, write_json, ApiContext};

type Ctx = State<Arc<ApiContext>>;

/// Validity of a root made by a rotation.
const ROOT_DAYS: u32 = 3650;

#[derive(Serialize)]
#[serde(rename_all = "PascalCase")]
struct Root {
    #[serde(rename = "ID")]
    id: String,
    name: String,
    serial_number: String,
    /// The subject key identifier of the root (colon-separated hex, as Consul).
    #[serde(rename = "SigningKeyID")]
    signing_key_id: String,
    not_before: String,
    not_after: String,
    root_cert: String,
    intermediate_certs: Vec<String>,
    active: bool,
    create_index: u64,
    modify_index: u64,
}

#[derive(Serialize)]
#[serde(rename_all = "PascalCase")]
struct Roots {
    #[serde(rename = "ActiveRootID")]
    active_root_id: String,
    trust_domain: String,
    roots: Vec<Root>,
}

fn root(r: &CaRoot) -> Root {
    let summary = registry::ca::cert_summary(&r.cert_pem).ok();
    let field = |f: fn(&registry::ca::CertSummary) -> &String| {
        summary.as_ref().map(|s| f(s).clone()).unwrap_or_default()
    };
    Root {
        id: r.id.clone(),
        name: format!("meshd CA {}", r.trust_domain),
        serial_number: field(|s| &s.serial),
        signing_key_id: signing_key_id(&r.cert_pem).unwrap_or_default(),
        not_before: field(|s| &s.not_before),
        not_after: field(|s| &s.not_after),
        root_cert: r.cert_pem.clone(),
        intermediate_certs: Vec::new(),
        active: r.active,
        create_index: r.create_index,
        modify_index: r.modify_index,
    }
}

/// The subject key identifier of the first certificate of `pem`, colon-separated hex; `None`
/// when it cannot be read or has none (a root made elsewhere may lack the extension).
fn signing_key_id(pem: &str) -> Option<String> {
    use x509_parser::extensions::ParsedExtension;
    let (_, pem) = x509_parser::pem::parse_x509_pem(pem.as_bytes()).ok()?;
    let cert = pem.parse_x509().ok()?;
    let ext = cert
        .get_extension_unique(&x509_parser::oid_registry::OID_X509_EXT_SUBJECT_KEY_IDENTIFIER)
        .ok()??;
    match ext.parsed_extension() {
        ParsedExtension::SubjectKeyIdentifier(id) => Some(
            id.0.iter()
                .map(|b| format!("{b:02x}"))
                .collect::<Vec<_>>()
                .join(":"),
        ),
        _ => None,
    }
}

/// `GET /v1/agent/connect/ca/roots`: every trusted root, the active one named.
pub async fn roots(State(ctx): Ctx, RawQuery(q): RawQuery) -> Result<Response, ApiError> {
    let opts = QueryOptions::parse(&Params::parse(q.as_deref()))?;
    let r = blocking_read(
        &ctx,
        &opts,
        |s| s.ca_roots_index(),
        |s| {
            let active = s.active_ca_root();
            Roots {
                active_root_id: active.map(|r| r.id.clone()).unwrap_or_default(),
                trust_domain: active.map(|r| r.trust_domain.clone()).unwrap_or_default(),
                roots: s.ca_roots().map(root).collect(),
            }
        },
    )
    .await?;
    Ok(read_json(r.index, &r.value))
}

/// `POST /v1/mesh/ca/rotate`: a new active root; leaves are re-issued under it and the old
/// roots stay trusted.
pub async fn rotate(State(ctx): Ctx) -> Result<Response, ApiError> {
    let trust_domain = ctx
        .registry
        .read()
        .active_ca_root()
        .map(|r| r.trust_domain.clone())
        .ok_or_else(|| ApiError::Internal("the mesh has no CA root yet".into()))?;
    let bundle = registry::ca::create_ca(&trust_domain, ROOT_DAYS)
        .map_err(|e| ApiError::Internal(format!("creating a root: {e}")))?;
    let new = crate::cluster::ca_root(&bundle);
    let id = new.id.clone();
    let applied = write(&ctx, Command::CaRotate(new)).await?;
    tracing::info!(root = %id, index = applied.index, "CA rotated: a new active root");
    Ok(write_json(&applied, &json!({ "ActiveRootID": id })))
}
