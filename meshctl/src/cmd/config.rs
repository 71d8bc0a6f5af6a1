//! `meshctl config write|read|list|delete`: config entries of every kind through `/v1/config`;
//! `meshctl config chain SERVICE`: the compiled discovery chain (`/v1/discovery-chain`).

use std::io::Read as _;
use std::path::Path;

use anyhow::{bail, Context as _};
use serde_json::{json, Value};

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
        ConfigCommand::Chain { service } => {
            let v = ctx
                .client
                .get_json(&format!("/v1/discovery-chain/{}", encode_segment(&service)))?;
            ctx.show(&v, || chain_table(&v))
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

/// One row per route and split (the default route last), then one per target.
fn chain_table(v: &Value) -> Table {
    let chain = &v["Chain"];
    let mut t = Table::new(&["Route", "Match", "Weight", "Target", "Failover"]);
    let routes = chain["Routes"]
        .as_array()
        .map(Vec::as_slice)
        .unwrap_or_default();
    for (i, r) in routes.iter().enumerate() {
        let m = &r["Definition"]["Match"]["HTTP"];
        let what = if r["Definition"].is_null() {
            "(default)".to_string()
        } else if m.is_null() {
            "(any)".to_string()
        } else {
            compact(m)
        };
        for (j, s) in r["Splits"].as_array().into_iter().flatten().enumerate() {
            let target = str_field(s, "Target");
            let failover = chain["Targets"][target]["Failover"]
                .as_array()
                .map(|f| {
                    f.iter()
                        .filter_map(Value::as_str)
                        .collect::<Vec<_>>()
                        .join(",")
                })
                .unwrap_or_default();
            let (route, what) = if j == 0 {
                (i.to_string(), what.clone())
            } else {
                (String::new(), String::new())
            };
            t.push(vec![
                route,
                what,
                format!("{}%", s["Weight"].as_f64().unwrap_or(0.0)),
                target.to_string(),
                failover,
            ]);
        }
    }
    t
}

/// A match as one line of JSON.
fn compact(v: &Value) -> String {
    serde_json::to_string(v).unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn chain_table_lists_routes_splits_and_failover() {
        let v = json!({"Chain": {
            "Routes": [
                {"Definition": {"Match": {"HTTP": {"PathPrefix": "/a"}}},
                 "Splits": [{"Weight": 100.0, "Target": "v2.api"}]},
                {"Definition": null,
                 "Splits": [{"Weight": 90.0, "Target": "api"}, {"Weight": 10.0, "Target": "v2.api"}]}
            ],
            "Targets": {"v2.api": {"Failover": ["api-dr"]}, "api": {"Failover": []}}}});
        let out = chain_table(&v).render();
        let lines: Vec<&str> = out.lines().collect();
        assert_eq!(lines.len(), 4, "{out}");
        assert!(lines[1].contains(r#"{"PathPrefix":"/a"}"#) && lines[1].contains("api-dr"));
        assert!(lines[2].contains("(default)") && lines[2].contains("90%"));
        assert!(lines[3].starts_with("-") && lines[3].contains("v2.api"));
    }
}
