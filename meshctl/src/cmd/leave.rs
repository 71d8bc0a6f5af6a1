//! `meshctl leave`: PUT /v1/agent/leave, the local agent leaves the cluster and shuts down.

use super::Ctx;
use crate::output::{self, Format};

pub fn run(ctx: &Ctx) -> anyhow::Result<()> {
    let answer = ctx.client.put_raw("/v1/agent/leave", Vec::new())?;
    match (ctx.format, answer) {
        (Format::Json, Some(v)) => output::print(&output::json_pretty(&v))?,
        (Format::Json, None) => {}
        (Format::Table, _) => output::print("Graceful leave complete\n")?,
    }
    Ok(())
}
