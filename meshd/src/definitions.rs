//! Service definitions from `--config-dir`: every `*.json` file, in name order, parsed before
//! anything is opened so that a broken file stops the start with its name and the reason.

use std::path::{Path, PathBuf};

/// A definition file that could not be read or parsed.
#[derive(Debug, thiserror::Error)]
pub enum DefinitionError {
    #[error("config dir {dir}: {source}")]
    Dir {
        dir: PathBuf,
        source: std::io::Error,
    },
    #[error("service definition {file}: {reason}")]
    File { file: PathBuf, reason: String },
}

/// The `*.json` files of `dir`, sorted by name.
pub fn list(dir: &Path) -> Result<Vec<PathBuf>, DefinitionError> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(dir)
        .map_err(|source| DefinitionError::Dir {
            dir: dir.to_path_buf(),
            source,
        })?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.is_file() && p.extension().is_some_and(|x| x == "json"))
        .collect();
    files.sort();
    Ok(files)
}

/// Reads one definition file as a JSON object.
pub fn read_file(file: &Path) -> Result<serde_json::Value, DefinitionError> {
    let bad = |reason: String| DefinitionError::File {
        file: file.to_path_buf(),
        reason,
    };
    let text = std::fs::read_to_string(file).map_err(|e| bad(e.to_string()))?;
    let value: serde_json::Value =
        serde_json::from_str(&text).map_err(|e| bad(format!("invalid JSON: {e}")))?;
    if !value.is_object() {
        return Err(bad(
            "expected a JSON object with a \"service\" or \"services\" key".into(),
        ));
    }
    Ok(value)
}

/// Reads every `*.json` file of `dir` (sorted by name) as JSON.
pub fn read_dir(dir: &Path) -> Result<Vec<(PathBuf, serde_json::Value)>, DefinitionError> {
    list(dir)?
        .into_iter()
        .map(|file| read_file(&file).map(|v| (file, v)))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_json_files_in_order_and_names_bad_ones() {
        let d = tempfile::tempdir().expect("tempdir");
        std::fs::write(d.path().join("b.json"), r#"{"service":{"name":"b"}}"#).expect("write");
        std::fs::write(d.path().join("a.json"), r#"{"service":{"name":"a"}}"#).expect("write");
        std::fs::write(d.path().join("notes.txt"), "ignored").expect("write");
        let defs = read_dir(d.path()).expect("valid");
        assert_eq!(defs.len(), 2);
        assert!(defs[0].0.ends_with("a.json"));

        std::fs::write(d.path().join("c.json"), "{not json").expect("write");
        let e = read_dir(d.path()).expect_err("broken").to_string();
        assert!(e.contains("c.json") && e.contains("invalid JSON"), "{e}");
    }
}
