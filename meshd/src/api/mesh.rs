//! `/v1/mesh/...`: the mesh's own endpoints (no Consul equivalent). For now the virtual IP of
//! every service name (see `registry::vip`).

use std::sync::Arc;

use axum::extract::{RawQuery, State};
use axum::response::Response;
use registry::{Ipv4Cidr, VirtualIp};
use serde::Serialize;

use super::blocking::{blocking_read, Params, QueryOptions};
use super::error::ApiError;
use super::{read_json, ApiContext};

type Ctx = State<Arc<ApiContext>>;

/// The body of `GET /v1/mesh/virtual-ips`.
#[derive(Serialize)]
#[serde(rename_all = "PascalCase")]
struct VirtualIps {
    /// The range new addresses come from (older ones may lie outside it).
    range: Ipv4Cidr,
    /// By service name.
    #[serde(rename = "VirtualIPs")]
    virtual_ips: Vec<VirtualIp>,
}

/// `GET /v1/mesh/virtual-ips`: the range and every service name's virtual IP. Blocking queries
/// (`?index=&wait=`) wake only when the table or its range changes.
pub async fn virtual_ips(State(ctx): Ctx, RawQuery(q): RawQuery) -> Result<Response, ApiError> {
    let params = Params::parse(q.as_deref());
    let opts = QueryOptions::parse(&params)?;
    let r = blocking_read(
        &ctx,
        &opts,
        |s| s.virtual_ips_index(),
        |s| VirtualIps {
            range: s.virtual_ip_range(),
            virtual_ips: s.virtual_ips().cloned().collect(),
        },
    )
    .await?;
    Ok(read_json(r.index, &r.value))
}
