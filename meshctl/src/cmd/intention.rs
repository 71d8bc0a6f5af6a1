//! `meshctl intention create|delete|get|list|check`: Consul's `/v1/connect/intentions`. A
//! source written `node:NAME` is a node identity (`SourceType` node).

use anyhow::bail;
use serde_json::{json, Value};

use super::{Ctx, Denied};
use crate::cli::IntentionCommand;
use crate::client::encode_segment;
use crate::output::{self, str_field, Format, Table};

pub fn run(ctx: &Ctx, cmd: IntentionCommand) -> anyhow::Result<()> {
    match cmd {
        IntentionCommand::Create {
            src,
            dst,
            deny,
            description,
            replace,
            ..
        } => create(ctx, &src, &dst, deny, &description, replace),
        IntentionCommand::Delete { src, dst } => {
            ctx.client.delete(&exact("exact", &src, &dst))?;
            ctx.acted(
                &format!("Intention deleted: {src} => {dst}"),
                json!({"Source": src, "Destination": dst}),
            )
        }
        IntentionCommand::Get { src, dst } => {
            let Some(v) = ctx.client.get_json_opt(&exact("exact", &src, &dst), true)? else {
                bail!("not found: no intention from {src} to {dst}");
            };
            ctx.show(&v, || table(std::slice::from_ref(&v)))
        }
        IntentionCommand::List => {
            let v = ctx.client.get_json("/v1/connect/intentions")?;
            let list = v.as_array().cloned().unwrap_or_default();
            ctx.show(&v, || table(&list))
        }
        IntentionCommand::Check { src, dst } => check(ctx, &src, &dst),
    }
}

/// `/v1/connect/intentions/{what}?source=..&destination=..[&source-type=node]`.
fn exact(what: &str, src: &str, dst: &str) -> String {
    let (name, node) = source(src);
    let mut p = format!(
        "/v1/connect/intentions/{what}?source={}&destination={}",
        encode_segment(name),
        encode_segment(dst)
    );
    if node {
        p.push_str("&source-type=node");
    }
    p
}

/// The source name and whether it is a node (`node:NAME`).
fn source(src: &str) -> (&str, bool) {
    match src.strip_prefix("node:") {
        Some(n) => (n, true),
        None => (src, false),
    }
}

fn create(
    ctx: &Ctx,
    src: &str,
    dst: &str,
    deny: bool,
    description: &str,
    replace: bool,
) -> anyhow::Result<()> {
    let action = if deny { "deny" } else { "allow" };
    // POST answers {"ID": ...}; PUT .../exact answers true.
    let answer = if replace {
        let body = json!({"Action": action, "Description": description});
        ctx.client.put_json(&exact("exact", src, dst), &body)?
    } else {
        let (name, node) = source(src);
        let body = json!({
            "SourceName": name,
            "SourceType": if node { "node" } else { "consul" },
            "DestinationName": dst,
            "Action": action,
            "Description": description,
        });
        ctx.client
            .post_json("/v1/connect/intentions", Some(&body))?
    };
    let mut fields = json!({"Source": src, "Destination": dst, "Action": action});
    if let Some(id) = answer.as_ref().and_then(|a| a.get("ID")) {
        fields["ID"] = id.clone();
    }
    ctx.acted(&format!("Created: {src} => {dst} ({action})"), fields)
}

fn check(ctx: &Ctx, src: &str, dst: &str) -> anyhow::Result<()> {
    let path = exact("check", src, dst);
    let v = ctx.client.get_json(&path)?;
    // An answer without a verdict is an error (1), never a silent "denied" (2).
    let Some(allowed) = v.get("Allowed").and_then(Value::as_bool) else {
        bail!("GET {path}: the answer has no boolean \"Allowed\": {v}");
    };
    match ctx.format {
        Format::Json => output::print(&output::json_pretty(&v))?,
        Format::Table => output::print(if allowed { "Allowed\n" } else { "Denied\n" })?,
    }
    if !allowed {
        return Err(Denied.into());
    }
    Ok(())
}

fn table(list: &[Value]) -> Table {
    let mut t = Table::new(&["ID", "Source", "Action", "Destination", "Precedence"]);
    for i in list {
        let src = match str_field(i, "SourceType") {
            "node" => format!("node:{}", str_field(i, "SourceName")),
            _ => str_field(i, "SourceName").to_string(),
        };
        t.push(vec![
            str_field(i, "ID").to_string(),
            src,
            str_field(i, "Action").to_string(),
            str_field(i, "DestinationName").to_string(),
            i.get("Precedence")
                .map(|p| p.to_string())
                .unwrap_or_default(),
        ]);
    }
    t
}
