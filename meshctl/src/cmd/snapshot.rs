//! `meshctl snapshot save|restore`: GET and PUT /v1/snapshot. The servers check a snapshot's
//! integrity; meshctl moves the bytes and writes the file atomically (FILE.tmp, then rename).

use std::io::Write as _;
use std::path::{Path, PathBuf};

use anyhow::{bail, Context as _};
use serde_json::json;

use super::Ctx;
use crate::cli::SnapshotCommand;
use crate::output::{self, Format};

pub fn run(ctx: &Ctx, cmd: SnapshotCommand) -> anyhow::Result<()> {
    match cmd {
        SnapshotCommand::Save { file, stale } => save(ctx, &file, stale),
        SnapshotCommand::Restore { file } => restore(ctx, &file),
    }
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
    match ctx.format {
        Format::Json => output::print(&output::json_pretty(&json!({
            "File": file.display().to_string(),
            "Index": index,
            "Bytes": body.len(),
        })))?,
        Format::Table => output::print(&format!("Saved and verified snapshot to index {index}\n"))?,
    }
    Ok(())
}

fn restore(ctx: &Ctx, file: &Path) -> anyhow::Result<()> {
    let body = std::fs::read(file).with_context(|| format!("reading {}", file.display()))?;
    if body.is_empty() {
        bail!("{} is empty", file.display());
    }
    let answer = ctx.client.put_raw("/v1/snapshot", body)?;
    match (ctx.format, answer) {
        (Format::Json, Some(v)) => output::print(&output::json_pretty(&v))?,
        (Format::Json, None) => {}
        (Format::Table, _) => output::print("Restored snapshot\n")?,
    }
    Ok(())
}

/// `FILE.tmp` beside `file`.
fn tmp_path(file: &Path) -> PathBuf {
    let mut name = file.as_os_str().to_owned();
    name.push(".tmp");
    PathBuf::from(name)
}

/// Writes `bytes` to FILE.tmp (mode 0600: a snapshot holds the whole state), syncs it, and
/// renames it over FILE, so FILE is either the old content or the whole new snapshot.
fn write_atomically(file: &Path, bytes: &[u8]) -> anyhow::Result<()> {
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
    fn tmp_is_beside_the_file() {
        assert_eq!(
            tmp_path(Path::new("a/b.snap")),
            PathBuf::from("a/b.snap.tmp")
        );
    }
}
