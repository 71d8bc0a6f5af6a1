//! `meshctl kv get|put|delete|ls`: the key/value store under /v1/kv/.

use std::io::{IsTerminal as _, Read as _};

use anyhow::{anyhow, bail, Context as _};
use base64::Engine as _;
use serde_json::{json, Value};

use super::Ctx;
use crate::cli::KvCommand;
use crate::client::{encode_path, encode_segment};
use crate::output::{self, str_field, Format};

pub fn run(ctx: &Ctx, cmd: KvCommand) -> anyhow::Result<()> {
    match cmd {
        KvCommand::Get { key, recurse } => get(ctx, key.as_deref().unwrap_or(""), recurse),
        KvCommand::Put {
            key,
            value,
            flags,
            cas,
        } => put(ctx, &key, value.as_deref(), flags, cas),
        KvCommand::Delete { key, recurse, cas } => delete(ctx, &key, recurse, cas),
        KvCommand::Ls { prefix, separator } => ls(ctx, &prefix, &separator),
    }
}

/// Keys are stored without a leading slash, as Consul does; accept one anyway.
fn clean_key(key: &str) -> &str {
    key.strip_prefix('/').unwrap_or(key)
}

/// `/v1/kv/KEY` followed by the query parameters that have a value.
pub fn kv_path(key: &str, query: &[(&str, Option<String>)]) -> String {
    let mut path = format!("/v1/kv/{}", encode_path(clean_key(key)));
    let params: Vec<String> = query
        .iter()
        .filter_map(|(k, v)| v.as_ref().map(|v| format!("{k}={}", encode_segment(v))))
        .collect();
    if !params.is_empty() {
        path.push('?');
        path.push_str(&params.join("&"));
    }
    path
}

fn yes(on: bool) -> Option<String> {
    on.then(|| "true".to_string())
}

fn get(ctx: &Ctx, key: &str, recurse: bool) -> anyhow::Result<()> {
    let key = clean_key(key);
    if recurse {
        let path = kv_path(key, &[("recurse", yes(true))]);
        // A prefix with no keys is a 404: an empty listing, not an error.
        let entries = ctx
            .client
            .get_json_opt(&path, true)?
            .unwrap_or(Value::Array(vec![]));
        return match ctx.format {
            Format::Json => Ok(output::print(&output::json_pretty(&entries))?),
            Format::Table => Ok(output::print(&recurse_lines(&entries)?)?),
        };
    }
    if key.is_empty() {
        bail!("KEY must not be empty (use --recurse to read every key)");
    }
    let missing = || anyhow!("not found: no key exists at: {key}");
    match ctx.format {
        Format::Json => {
            let entry = ctx
                .client
                .get_json_opt(&kv_path(key, &[]), true)?
                .ok_or_else(missing)?;
            output::print(&output::json_pretty(&entry))?;
        }
        Format::Table => {
            let mut raw = ctx
                .client
                .get_raw_opt(&kv_path(key, &[("raw", yes(true))]))?
                .ok_or_else(missing)?;
            // Exact bytes into a pipe; a final newline on a terminal, so the prompt stays put.
            if std::io::stdout().is_terminal() && !raw.ends_with(b"\n") {
                raw.push(b'\n');
            }
            output::print_bytes(&raw)?;
        }
    }
    Ok(())
}

/// `KEY:VALUE` lines, as `consul kv get -recurse` prints them.
pub fn recurse_lines(entries: &Value) -> anyhow::Result<String> {
    let mut out = String::new();
    for e in entries.as_array().into_iter().flatten() {
        let key = str_field(e, "Key");
        let value = match e.get("Value") {
            Some(Value::String(b64)) => base64::engine::general_purpose::STANDARD
                .decode(b64)
                .with_context(|| format!("value of {key} is not base64"))?,
            _ => Vec::new(),
        };
        out.push_str(key);
        out.push(':');
        out.push_str(&String::from_utf8_lossy(&value));
        out.push('\n');
    }
    Ok(out)
}

/// The bytes VALUE stands for: `-` stdin, `@FILE` the file, `\@...` a literal `@...`.
pub fn read_value(value: Option<&str>) -> anyhow::Result<Vec<u8>> {
    match value {
        None => Ok(Vec::new()),
        Some("-") => {
            let mut buf = Vec::new();
            std::io::stdin()
                .read_to_end(&mut buf)
                .context("read the value from stdin")?;
            Ok(buf)
        }
        Some(v) if v.starts_with('@') => {
            let file = &v[1..];
            std::fs::read(file).with_context(|| format!("read the value from {file}"))
        }
        Some(v) => Ok(v
            .strip_prefix('\\')
            .filter(|r| r.starts_with('@'))
            .unwrap_or(v)
            .as_bytes()
            .to_vec()),
    }
}

/// The API answers a KV write or delete with `true` or `false`.
fn answer_bool(answer: Option<Value>, what: &str) -> anyhow::Result<bool> {
    match answer {
        Some(Value::Bool(b)) => Ok(b),
        Some(other) => bail!("{what}: expected true or false from the agent, got {other}"),
        None => bail!("{what}: expected true or false from the agent, got an empty body"),
    }
}

fn cas_failed(key: &str, cas: u64) -> anyhow::Error {
    if cas == 0 {
        anyhow!("CAS failed: {key} already exists (--cas 0 only creates a new key)")
    } else {
        anyhow!("CAS failed: {key} is not at ModifyIndex {cas} (it was modified or deleted)")
    }
}

fn put(
    ctx: &Ctx,
    key: &str,
    value: Option<&str>,
    flags: Option<u64>,
    cas: Option<u64>,
) -> anyhow::Result<()> {
    let key = clean_key(key);
    if key.is_empty() {
        bail!("KEY must not be empty");
    }
    let body = read_value(value)?;
    let path = kv_path(
        key,
        &[
            ("flags", flags.map(|f| f.to_string())),
            ("cas", cas.map(|c| c.to_string())),
        ],
    );
    let answer = ctx.client.put_raw(&path, body)?;
    if !answer_bool(answer, &format!("writing {key}"))? {
        return Err(match cas {
            Some(c) => cas_failed(key, c),
            None => anyhow!("failed writing data to {key}: the agent answered false"),
        });
    }
    ctx.acted(
        &format!("Success! Data written to: {key}"),
        json!({"Key": key}),
    )
}

fn delete(ctx: &Ctx, key: &str, recurse: bool, cas: Option<u64>) -> anyhow::Result<()> {
    let key = clean_key(key);
    if key.is_empty() && !recurse {
        bail!("KEY must not be empty");
    }
    let path = kv_path(
        key,
        &[
            ("recurse", yes(recurse)),
            ("cas", cas.map(|c| c.to_string())),
        ],
    );
    let answer = ctx.client.delete(&path)?;
    if !answer_bool(answer, &format!("deleting {key}"))? {
        return Err(match cas {
            Some(c) => cas_failed(key, c),
            None => anyhow!("failed deleting {key}: the agent answered false"),
        });
    }
    let message = if recurse {
        format!("Success! Deleted keys with prefix: {key}")
    } else {
        format!("Success! Deleted key: {key}")
    };
    ctx.acted(&message, json!({"Key": key, "Recurse": recurse}))
}

fn ls(ctx: &Ctx, prefix: &str, separator: &str) -> anyhow::Result<()> {
    let separator = (!separator.is_empty()).then(|| separator.to_string());
    let path = kv_path(prefix, &[("keys", yes(true)), ("separator", separator)]);
    // No key under the prefix is a 404: an empty listing.
    let keys = ctx
        .client
        .get_json_opt(&path, true)?
        .unwrap_or(Value::Array(vec![]));
    match ctx.format {
        Format::Json => output::print(&output::json_pretty(&keys))?,
        Format::Table => {
            let mut out = String::new();
            for k in keys
                .as_array()
                .into_iter()
                .flatten()
                .filter_map(Value::as_str)
            {
                out.push_str(k);
                out.push('\n');
            }
            output::print(&out)?;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn paths() {
        assert_eq!(kv_path("app/db", &[]), "/v1/kv/app/db");
        assert_eq!(
            kv_path("/app/db", &[("raw", yes(true))]),
            "/v1/kv/app/db?raw=true"
        );
        assert_eq!(
            kv_path("a b", &[("recurse", yes(false)), ("cas", Some("7".into()))]),
            "/v1/kv/a%20b?cas=7"
        );
        assert_eq!(
            kv_path("", &[("keys", yes(true)), ("separator", Some("/".into()))]),
            "/v1/kv/?keys=true&separator=%2F"
        );
    }

    #[test]
    fn values() {
        assert_eq!(read_value(None).unwrap(), b"");
        assert_eq!(read_value(Some("hello")).unwrap(), b"hello");
        assert_eq!(read_value(Some("\\@literal")).unwrap(), b"@literal");
        assert_eq!(read_value(Some("\\n")).unwrap(), b"\\n");
        let dir = std::env::temp_dir().join(format!("meshctl-kv-test-{}", std::process::id()));
        std::fs::write(&dir, b"from file\n").unwrap();
        assert_eq!(
            read_value(Some(&format!("@{}", dir.display()))).unwrap(),
            b"from file\n"
        );
        std::fs::remove_file(&dir).unwrap();
        let err = read_value(Some("@/nonexistent/meshctl")).unwrap_err();
        assert!(format!("{err:#}").contains("/nonexistent/meshctl"));
    }

    #[test]
    fn recurse_output() {
        let entries = json!([
            {"Key": "app/a", "Value": "b25l", "Flags": 0},
            {"Key": "app/empty", "Value": null},
        ]);
        assert_eq!(recurse_lines(&entries).unwrap(), "app/a:one\napp/empty:\n");
        assert!(recurse_lines(&json!([{"Key": "k", "Value": "!!"}])).is_err());
    }

    #[test]
    fn cas_messages() {
        assert!(cas_failed("k", 0).to_string().contains("already exists"));
        assert!(cas_failed("k", 12)
            .to_string()
            .contains("not at ModifyIndex 12"));
    }

    #[test]
    fn answers() {
        assert!(answer_bool(Some(json!(true)), "w").unwrap());
        assert!(!answer_bool(Some(json!(false)), "w").unwrap());
        assert!(answer_bool(None, "w").is_err());
        assert!(answer_bool(Some(json!({"x": 1})), "w").is_err());
    }
}
