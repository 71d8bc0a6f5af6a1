//! `meshctl snapshot save|restore|inspect`: GET and PUT /v1/snapshot. The servers check a
//! snapshot's integrity; meshctl moves the bytes and writes the file atomically (FILE.tmp, then
//! rename). `inspect` is offline: it checks the archive the way a restore would
//! ([`registry::archive::decode`]) and counts what it holds.

use std::io::Write as _;
use std::path::{Path, PathBuf};

use anyhow::{bail, Context as _};
use registry::state::StateImage;
use serde_json::{json, Value};

use super::Ctx;
use crate::cli::SnapshotCommand;
use crate::output::{self, Format, Table};

pub fn run(ctx: &Ctx, cmd: SnapshotCommand) -> anyhow::Result<()> {
    match cmd {
        SnapshotCommand::Save { file, stale } => save(ctx, &file, stale),
        SnapshotCommand::Restore { file } => restore(ctx, &file),
        SnapshotCommand::Inspect { file } => inspect(ctx.format, &file),
    }
}

/// `snapshot inspect FILE`: no agent needed.
pub fn inspect(format: Format, file: &Path) -> anyhow::Result<()> {
    let bytes = std::fs::read(file).with_context(|| format!("reading {}", file.display()))?;
    let (image, index) = registry::archive::decode(&bytes)
        .with_context(|| format!("{} is not a usable snapshot", file.display()))?;
    let summary = inspect_summary(&file.display().to_string(), bytes.len(), index, &image);
    match format {
        Format::Json => output::print(&output::json_pretty(&summary))?,
        Format::Table => output::print(&inspect_text(&summary))?,
    }
    Ok(())
}

/// What `inspect` shows: the file, its size, the Raft index it reflects, the format version,
/// and how many of each kind of object it holds.
fn inspect_summary(file: &str, size: usize, index: u64, image: &StateImage) -> Value {
    json!({
        "File": file,
        "Size": size,
        "Index": index,
        "Version": registry::archive::VERSION,
        "Counts": {
            "Nodes": image.nodes.len(),
            "Services": image.services.len(),
            "Checks": image.checks.len(),
            "KV": image.kv.len(),
            "Members": image.members.len(),
            "CARoots": image.ca_roots.len(),
            "VirtualIPs": image.virtual_ips.len(),
            "Intentions": image.intentions.len(),
            "ConfigEntries": image.config_entries.len(),
        },
    })
}

/// The summary as `consul snapshot inspect` lays it out: a key/value block, then the counts.
fn inspect_text(summary: &Value) -> String {
    let mut head = Table::new(&["Field", "Value"]);
    for k in ["File", "Size", "Index", "Version"] {
        let v = match &summary[k] {
            Value::String(s) => s.clone(),
            other => other.to_string(),
        };
        head.push(vec![k.to_string(), v]);
    }
    let mut counts = Table::new(&["Type", "Count"]);
    for (k, v) in summary["Counts"].as_object().into_iter().flatten() {
        counts.push(vec![k.clone(), v.to_string()]);
    }
    format!("{}\n{}", head.render(), counts.render())
}

fn save(ctx: &Ctx, file: &Path, stale: bool) -> anyhow::Result<()> {
    let path = if stale {
        "/v1/snapshot?stale"
    } else {
        "/v1/snapshot"
    };
    let (body, index) = ctx.client.get_raw_indexed(path)?;
    if body.is_empty() {
        bail!("GET {path}: the agent sent an empty snapshot");
    }
    let Some(index) = index else {
        bail!("GET {path}: the answer has no valid X-Consul-Index header");
    };
    write_atomically(file, &body)?;
    ctx.acted(
        &format!("Saved and verified snapshot to index {index}"),
        json!({
            "File": file.display().to_string(),
            "Index": index,
            "Bytes": body.len(),
        }),
    )
}

fn restore(ctx: &Ctx, file: &Path) -> anyhow::Result<()> {
    let body = std::fs::read(file).with_context(|| format!("reading {}", file.display()))?;
    if body.is_empty() {
        bail!("{} is empty", file.display());
    }
    let bytes = body.len();
    ctx.client.put_raw("/v1/snapshot", body)?;
    ctx.acted(
        "Restored snapshot",
        json!({"File": file.display().to_string(), "Bytes": bytes}),
    )
}

/// `FILE.tmp` beside `file`.
fn tmp_path(file: &Path) -> PathBuf {
    let mut name = file.as_os_str().to_owned();
    name.push(".tmp");
    PathBuf::from(name)
}

/// Writes `bytes` to FILE.tmp (mode 0600: a snapshot holds the whole state), syncs it, and
/// renames it over FILE, so FILE is either the old content or the whole new snapshot.
pub(super) fn write_atomically(file: &Path, bytes: &[u8]) -> anyhow::Result<()> {
    let tmp = tmp_path(file);
    let result = (|| -> std::io::Result<()> {
        let mut options = std::fs::OpenOptions::new();
        options.write(true).create(true).truncate(true);
        #[cfg(unix)]
        std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o600);
        let mut f = options.open(&tmp)?;
        f.write_all(bytes)?;
        f.sync_all()?;
        std::fs::rename(&tmp, file)
    })();
    if let Err(e) = result {
        let _ = std::fs::remove_file(&tmp);
        return Err(e).with_context(|| format!("writing {}", file.display()));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn atomic_write_replaces_and_cleans_up() {
        let dir = std::env::temp_dir().join(format!("meshctl-snap-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let file = dir.join("s.snap");
        std::fs::write(&file, b"old").unwrap();
        write_atomically(&file, b"new snapshot").unwrap();
        assert_eq!(std::fs::read(&file).unwrap(), b"new snapshot");
        assert!(!tmp_path(&file).exists());
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt as _;
            // The rename keeps the temporary file's mode.
            let mode = std::fs::metadata(&file).unwrap().permissions().mode();
            assert_eq!(mode & 0o777, 0o600);
        }
        let err = write_atomically(&dir.join("missing/s.snap"), b"x").unwrap_err();
        assert!(format!("{err:#}").contains("missing/s.snap"), "{err:#}");
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn inspect_counts_what_the_archive_holds() {
        let image = StateImage {
            nodes: vec![registry::Node {
                node: "n1".into(),
                ..Default::default()
            }],
            kv: vec![
                registry::KvEntry {
                    key: "a".into(),
                    ..Default::default()
                },
                registry::KvEntry {
                    key: "b".into(),
                    ..Default::default()
                },
            ],
            applied: 9,
            ..Default::default()
        };
        let bytes = registry::archive::encode(&image, 9);
        let (decoded, index) = registry::archive::decode(&bytes).unwrap();
        let summary = inspect_summary("s.snap", bytes.len(), index, &decoded);
        assert_eq!(summary["Index"], 9);
        assert_eq!(summary["Size"], bytes.len());
        assert_eq!(summary["Counts"]["Nodes"], 1);
        assert_eq!(summary["Counts"]["KV"], 2);
        assert_eq!(summary["Counts"]["Services"], 0);
        let text = inspect_text(&summary);
        assert!(
            text.starts_with("Field    Value\nFile     s.snap\n"),
            "{text}"
        );
        assert!(text.contains("\nIndex    9\n"), "{text}");
        assert!(text.contains("\nKV             2\n"), "{text}");
    }

    #[test]
    fn inspect_refuses_a_damaged_file() {
        let dir = std::env::temp_dir().join(format!("meshctl-inspect-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let file = dir.join("bad.snap");
        let mut bytes = registry::archive::encode(&StateImage::default(), 3);
        let last = bytes.len() - 1;
        bytes[last] ^= 0xff;
        std::fs::write(&file, &bytes).unwrap();
        let err = format!("{:#}", inspect(Format::Json, &file).unwrap_err());
        assert!(
            err.contains("bad.snap") && err.contains("checksum"),
            "{err}"
        );
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn tmp_is_beside_the_file() {
        assert_eq!(
            tmp_path(Path::new("a/b.snap")),
            PathBuf::from("a/b.snap.tmp")
        );
    }
}
