//! `meshctl config write|read|list|delete`: config entries through `/v1/config`.

use std::io::Read as _;
use std::path::Path;

use anyhow::{bail, Context as _};
use serde_json::json;

use super::Ctx;
use crate::cli::ConfigCommand;
use crate::client::encode_segment;
use crate::output::{self, str_field, Table};

pub fn run(ctx: &Ctx, cmd: ConfigCommand) -> anyhow::Result<()> {
    match cmd {
        ConfigCommand::Write { file } => write(ctx, &file),
        ConfigCommand::Read { kind, name } => {
            let path = format!(
                "/v1/config/{}/{}",
                encode_segment(&kind),
                encode_segment(&name)
            );
            let Some(v) = ctx.client.get_json_opt(&path, true)? else {
                bail!("not found: no config entry {kind}/{name}");
            };
            output::print(&output::json_pretty(&v))?;
            Ok(())
        }
        ConfigCommand::List { kind } => {
            let v = ctx
                .client
                .get_json(&format!("/v1/config/{}", encode_segment(&kind)))?;
            ctx.show(&v, || {
                let mut t = Table::new(&["Kind", "Name"]);
                for e in v.as_array().into_iter().flatten() {
                    t.push(vec![
                        str_field(e, "Kind").into(),
                        str_field(e, "Name").into(),
                    ]);
                }
                t
            })
        }
        ConfigCommand::Delete { kind, name } => {
            let path = format!(
                "/v1/config/{}/{}",
                encode_segment(&kind),
                encode_segment(&name)
            );
            ctx.client.delete(&path)?;
            ctx.acted(
                &format!("Deleted config entry {kind}/{name}"),
                json!({"Kind": kind, "Name": name}),
            )
        }
    }
}

fn write(ctx: &Ctx, file: &Path) -> anyhow::Result<()> {
    let mut text = String::new();
    if file == Path::new("-") {
        std::io::stdin()
            .read_to_string(&mut text)
            .context("reading the config entry from stdin")?;
    } else {
        text =
            std::fs::read_to_string(file).with_context(|| format!("reading {}", file.display()))?;
    }
    let entry: serde_json::Value = serde_json::from_str(&text)
        .with_context(|| format!("{}: not a JSON config entry", file.display()))?;
    let ok = ctx.client.put_json("/v1/config", &entry)?;
    if ok == Some(serde_json::Value::Bool(false)) {
        bail!("the config entry was not written");
    }
    let (kind, name) = (str_field(&entry, "Kind"), str_field(&entry, "Name"));
    ctx.acted(
        &format!("Config entry written: {kind}/{name}"),
        json!({"Kind": kind, "Name": name}),
    )
}
