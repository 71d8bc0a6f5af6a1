//! `meshctl debug [--output-file FILE] [--log-lines N]`: what a bug report needs from the local
//! agent, in one `.tar.gz` (default `meshd-debug-<unix time>.tar.gz` in the current directory,
//! never overwritten, mode 0600: it holds logs and configuration).
//!
//! The archive has one directory, named after the file, holding:
//!
//! | file          | source                                              |
//! | ------------- | --------------------------------------------------- |
//! | agent.json    | GET /v1/agent/self                                  |
//! | members.json  | GET /v1/agent/members                               |
//! | raft.json     | GET /v1/operator/raft/configuration                 |
//! | services.json | GET /v1/agent/services                              |
//! | checks.json   | GET /v1/agent/checks                                |
//! | metrics.prom  | GET /v1/agent/metrics?format=prometheus             |
//! | logs.txt      | GET /v1/agent/logs?lines=N (oldest line first)      |
//! | index.json    | each part, its source, and whether it was collected |
//!
//! A part that cannot be collected does not fail the command: its file holds a note in its own
//! format (`{"Error": ...}`, a `#` comment, a line of text), index.json says why, and a warning
//! goes to stderr. An agent that serves no logs (404) gets a logs.txt saying so. Only an agent
//! that does not answer at all fails (exit 1, nothing written).

use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::time::{SystemTime, UNIX_EPOCH};

use anyhow::{bail, Context as _};
use flate2::write::GzEncoder;
use flate2::Compression;
use serde_json::{json, Value};

use super::snapshot::write_atomically;
use super::version::MESHCTL_VERSION;
use super::Ctx;
use crate::cli::DebugArgs;
use crate::client::ClientError;

/// The index of the archive, written last.
pub const INDEX_FILE: &str = "index.json";
/// The part holding the agent's recent log lines.
const LOGS_FILE: &str = "logs.txt";

/// The parts collected, in archive order: file name and API path (`{lines}` is replaced).
const PARTS: &[(&str, &str)] = &[
    ("agent.json", "/v1/agent/self"),
    ("members.json", "/v1/agent/members"),
    ("raft.json", "/v1/operator/raft/configuration"),
    ("services.json", "/v1/agent/services"),
    ("checks.json", "/v1/agent/checks"),
    ("metrics.prom", "/v1/agent/metrics?format=prometheus"),
    (LOGS_FILE, "/v1/agent/logs?lines={lines}"),
];

/// One collected part: its file, where it came from, and its content or why there is none.
#[derive(Debug)]
pub struct Part {
    pub file: String,
    pub source: String,
    pub result: Result<Vec<u8>, String>,
}

pub fn run(ctx: &Ctx, args: &DebugArgs) -> anyhow::Result<()> {
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or_default();
    let file = args
        .output_file
        .clone()
        .unwrap_or_else(|| PathBuf::from(default_file_name(now)));
    if file.exists() {
        bail!("{} already exists; not overwriting it", file.display());
    }
    let parts = collect(ctx, args.log_lines)?;
    for p in &parts {
        if let Err(why) = &p.result {
            eprintln!("Warning: {}: {why}", p.file);
        }
    }
    let index = index(ctx.client.base(), now, args.log_lines, &parts);
    let dir = archive_dir(&file);
    let mut files: Vec<(String, Vec<u8>)> =
        parts.iter().map(|p| (p.file.clone(), content(p))).collect();
    files.push((
        INDEX_FILE.to_string(),
        crate::output::json_pretty(&index).into(),
    ));
    let bytes = archive(&dir, &files, now).context("building the archive")?;
    write_atomically(&file, &bytes)?;
    ctx.acted(
        &format!("Saved debug archive: {}", file.display()),
        json!({
            "File": file.display().to_string(),
            "Bytes": bytes.len(),
            "Parts": index["Parts"],
        }),
    )
}

/// Fetches every part. Fails only when the agent does not answer the first request.
fn collect(ctx: &Ctx, log_lines: u32) -> anyhow::Result<Vec<Part>> {
    let mut parts = Vec::new();
    for (file, path) in PARTS {
        let path = path.replace("{lines}", &log_lines.to_string());
        let fetched = ctx.client.get_raw(&path);
        if let (true, Err(e)) = (parts.is_empty(), &fetched) {
            if e.is_unreachable() {
                bail!("{e}; no debug archive written");
            }
        }
        let result = match fetched {
            Ok(body) => tidy(file, body),
            Err(e) => Err(failure(file, &e)),
        };
        parts.push(Part {
            file: file.to_string(),
            source: format!("GET {path}"),
            result,
        });
    }
    Ok(parts)
}

/// Why a part is missing; a 404 for the logs means this agent does not serve them.
fn failure(file: &str, e: &ClientError) -> String {
    if file == LOGS_FILE && e.status() == Some(reqwest::StatusCode::NOT_FOUND) {
        format!("the agent does not serve its logs ({e})")
    } else {
        e.to_string()
    }
}

/// JSON parts pretty-printed (and checked); others as they came.
fn tidy(file: &str, body: Vec<u8>) -> Result<Vec<u8>, String> {
    if !file.ends_with(".json") {
        return Ok(body);
    }
    let v: Value =
        serde_json::from_slice(&body).map_err(|e| format!("the answer is not JSON: {e}"))?;
    Ok(crate::output::json_pretty(&v).into_bytes())
}

/// What a part's file holds: its content, or a note in the file's own format.
pub fn content(part: &Part) -> Vec<u8> {
    match &part.result {
        Ok(body) => body.clone(),
        Err(why) => {
            let note = format!("meshctl debug could not collect {}: {why}", part.source);
            if part.file.ends_with(".json") {
                crate::output::json_pretty(&json!({ "Error": note })).into_bytes()
            } else if part.file.ends_with(".prom") {
                format!("# {note}\n").into_bytes()
            } else {
                format!("{note}\n").into_bytes()
            }
        }
    }
}

/// index.json: who collected what, from where, when, and each part's outcome.
pub fn index(agent: &str, now: u64, log_lines: u32, parts: &[Part]) -> Value {
    let parts: Vec<Value> = parts
        .iter()
        .map(|p| match &p.result {
            Ok(body) => json!({"File": p.file, "Source": p.source, "Ok": true,
                "Bytes": body.len()}),
            Err(why) => json!({"File": p.file, "Source": p.source, "Ok": false, "Error": why}),
        })
        .collect();
    json!({
        "Meshctl": MESHCTL_VERSION,
        "Agent": agent,
        "CreatedAt": now,
        "LogLines": log_lines,
        "Parts": parts,
    })
}

/// `meshd-debug-<unix time>.tar.gz`.
pub fn default_file_name(unix_secs: u64) -> String {
    format!("meshd-debug-{unix_secs}.tar.gz")
}

/// The directory inside the archive: the file's name without `.tar.gz` or `.tgz`.
pub fn archive_dir(file: &Path) -> String {
    let name = file
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let stem = name
        .strip_suffix(".tar.gz")
        .or_else(|| name.strip_suffix(".tgz"))
        .unwrap_or(&name);
    if stem.is_empty() || stem.starts_with('.') {
        "meshd-debug".to_string()
    } else {
        stem.to_string()
    }
}

/// A gzipped tar of `files` under `dir/`, every entry dated `mtime`.
pub fn archive(dir: &str, files: &[(String, Vec<u8>)], mtime: u64) -> std::io::Result<Vec<u8>> {
    let mut tar = tar::Builder::new(GzEncoder::new(Vec::new(), Compression::default()));
    let mut header = tar::Header::new_gnu();
    header.set_entry_type(tar::EntryType::Directory);
    header.set_mode(0o755);
    header.set_size(0);
    header.set_mtime(mtime);
    tar.append_data(&mut header, format!("{dir}/"), std::io::empty())?;
    for (name, data) in files {
        let mut header = tar::Header::new_gnu();
        header.set_entry_type(tar::EntryType::Regular);
        header.set_mode(0o644);
        header.set_size(data.len() as u64);
        header.set_mtime(mtime);
        tar.append_data(&mut header, format!("{dir}/{name}"), data.as_slice())?;
    }
    let mut gz = tar.into_inner()?;
    gz.flush()?;
    gz.finish()
}

#[cfg(test)]
mod tests {
    use std::io::Read as _;

    use super::*;

    #[test]
    fn names() {
        assert_eq!(default_file_name(17), "meshd-debug-17.tar.gz");
        assert_eq!(
            archive_dir(Path::new("meshd-debug-17.tar.gz")),
            "meshd-debug-17"
        );
        assert_eq!(archive_dir(Path::new("/tmp/x/report.tgz")), "report");
        assert_eq!(archive_dir(Path::new("out.bin")), "out.bin");
        assert_eq!(archive_dir(Path::new(".tar.gz")), "meshd-debug");
        assert_eq!(archive_dir(Path::new("/")), "meshd-debug");
    }

    #[test]
    fn parts_cover_the_brief() {
        let files: Vec<&str> = PARTS.iter().map(|(f, _)| *f).collect();
        assert_eq!(
            files,
            [
                "agent.json",
                "members.json",
                "raft.json",
                "services.json",
                "checks.json",
                "metrics.prom",
                "logs.txt"
            ]
        );
    }

    fn part(file: &str, result: Result<&str, &str>) -> Part {
        Part {
            file: file.into(),
            source: format!("GET /v1/{file}"),
            result: result
                .map(|b| b.as_bytes().to_vec())
                .map_err(str::to_string),
        }
    }

    #[test]
    fn failed_parts_become_notes_in_their_format() {
        let json_note = content(&part("raft.json", Err("HTTP 500: no leader")));
        let v: Value = serde_json::from_slice(&json_note).unwrap();
        assert!(v["Error"].as_str().unwrap().contains("no leader"));
        let prom = String::from_utf8(content(&part("metrics.prom", Err("x")))).unwrap();
        assert!(
            prom.starts_with("# meshctl debug could not collect"),
            "{prom}"
        );
        let logs = String::from_utf8(content(&part(
            "logs.txt",
            Err("the agent does not serve its logs (HTTP 404)"),
        )))
        .unwrap();
        assert!(logs.contains("does not serve its logs"), "{logs}");
        assert_eq!(content(&part("logs.txt", Ok("a\nb\n"))), b"a\nb\n");
    }

    #[test]
    fn index_says_what_succeeded() {
        let parts = [
            part("agent.json", Ok("{}")),
            part("logs.txt", Err("the agent does not serve its logs")),
        ];
        let v = index("http://127.0.0.1:8500", 42, 100, &parts);
        assert_eq!(v["CreatedAt"], 42);
        assert_eq!(v["LogLines"], 100);
        assert_eq!(
            v["Parts"][0],
            json!({"File": "agent.json",
            "Source": "GET /v1/agent.json", "Ok": true, "Bytes": 2})
        );
        assert_eq!(v["Parts"][1]["Ok"], false);
        assert_eq!(v["Parts"][1]["Error"], "the agent does not serve its logs");
    }

    #[test]
    fn json_parts_are_checked_and_pretty() {
        assert_eq!(
            tidy("a.json", b"{\"a\":1}".to_vec()).unwrap(),
            b"{\n  \"a\": 1\n}\n"
        );
        assert!(tidy("a.json", b"<html>".to_vec()).is_err());
        assert_eq!(tidy("logs.txt", b"<html>".to_vec()).unwrap(), b"<html>");
    }

    #[test]
    fn archive_round_trips() {
        let files = vec![
            ("agent.json".to_string(), b"{}\n".to_vec()),
            ("logs.txt".to_string(), b"line 1\nline 2\n".to_vec()),
        ];
        let bytes = archive("meshd-debug-1", &files, 1_700_000_000).unwrap();
        let mut tar = tar::Archive::new(flate2::read::GzDecoder::new(bytes.as_slice()));
        let mut seen = Vec::new();
        for entry in tar.entries().unwrap() {
            let mut entry = entry.unwrap();
            let path = entry.path().unwrap().display().to_string();
            assert_eq!(entry.header().mtime().unwrap(), 1_700_000_000);
            let mut body = String::new();
            entry.read_to_string(&mut body).unwrap();
            seen.push((path, body));
        }
        assert_eq!(
            seen,
            [
                ("meshd-debug-1/".to_string(), String::new()),
                ("meshd-debug-1/agent.json".to_string(), "{}\n".to_string()),
                (
                    "meshd-debug-1/logs.txt".to_string(),
                    "line 1\nline 2\n".to_string()
                ),
            ]
        );
    }
}
