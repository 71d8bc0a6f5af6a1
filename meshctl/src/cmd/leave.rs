//! `meshctl leave`: PUT /v1/agent/leave, the local agent leaves the cluster and shuts down.

use serde_json::json;

use super::Ctx;

pub fn run(ctx: &Ctx) -> anyhow::Result<()> {
    ctx.client.put_raw("/v1/agent/leave", Vec::new())?;
    ctx.acted(
        "Graceful leave complete",
        json!({"Agent": ctx.client.base()}),
    )
}
