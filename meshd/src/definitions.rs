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

/// Reads every `*.json` file of `dir` (sorted by name) as JSON.
pub fn read_dir(dir: &Path) -> Result<Vec<(PathBuf, serde_json::Value)>, DefinitionError> {
    let dir_err = |source| DefinitionError::Dir {
        dir: dir.to_path_buf(),
        source,
    };
    let mut files: Vec<PathBuf> = std::fs::read_dir(dir)
        .map_err(dir_err)?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.is_file() && p.extension().is_some_and(|x| x == "json"))
        .collect();
    files.sort();
    files
        .into_iter()
        .map(|file| {
            let text = std::fs::read_to_string(&file).map_err(|e| DefinitionError::File {
                file: file.clone(),
                reason: e.to_string(),
            })?;
            let value: serde_json::Value =
                serde_json::from_str(&text).map_err(|e| DefinitionError::File {
                    file: file.clone(),
                    reason: format!("invalid JSON: {e}"),
                })?;
            if !value.is_object() {
                return Err(DefinitionError::File {
                    file,
                    reason: "expected a JSON object with a \"service\" or \"services\" key".into(),
                });
            }
            Ok((file, value))
        })
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
