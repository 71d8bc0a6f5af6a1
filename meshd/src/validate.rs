//! `meshd validate FILE|DIR...`, as `consul validate`: checks configuration without starting.
//!
//! - `*.toml` is an agent configuration, checked as `meshd agent --config FILE` would load it:
//!   every key and value, the TLS files it names (readable, key matches certificate), and the
//!   service definitions of its `config_dir`;
//! - `*.json` is a service definition file, checked as registration would;
//! - a directory: each of its `*.toml` and `*.json` files, in name order.
//!
//! Every problem is reported (one line each, naming the file, the key and the reason), not
//! only the first; the exit status is 1 when there is any.

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use crate::cli::{AgentArgs, ValidateArgs};
use crate::config;
use crate::transport::tls::TlsMaterial;

/// Runs the command: errors on stderr, a verdict on stdout.
pub fn main(args: &ValidateArgs) -> ExitCode {
    let mut report = Report::default();
    for p in &args.paths {
        report.path(p);
    }
    for e in &report.errors {
        eprintln!("error: {e}");
    }
    if report.errors.is_empty() {
        if !args.quiet {
            println!("Configuration is valid! ({} files checked)", report.files);
        }
        ExitCode::SUCCESS
    } else {
        eprintln!(
            "{} error(s) in {} files checked",
            report.errors.len(),
            report.files
        );
        ExitCode::FAILURE
    }
}

/// What was checked and what was wrong.
#[derive(Default, Debug)]
pub struct Report {
    pub files: usize,
    pub errors: Vec<String>,
}

impl Report {
    /// Checks a file or a directory.
    pub fn path(&mut self, path: &Path) {
        if path.is_dir() {
            let mut files: Vec<PathBuf> = match std::fs::read_dir(path) {
                Ok(rd) => rd
                    .filter_map(|e| e.ok().map(|e| e.path()))
                    .filter(|p| p.is_file() && kind(p).is_some())
                    .collect(),
                Err(e) => {
                    self.errors
                        .push(format!("directory {}: {e}", path.display()));
                    return;
                }
            };
            files.sort();
            if files.is_empty() {
                self.errors.push(format!(
                    "directory {}: no *.toml or *.json files to check",
                    path.display()
                ));
            }
            for f in files {
                self.file(&f);
            }
        } else if path.exists() {
            self.file(path);
        } else {
            self.errors
                .push(format!("{}: no such file or directory", path.display()));
        }
    }

    fn file(&mut self, path: &Path) {
        self.files += 1;
        match kind(path) {
            Some(Kind::Agent) => self.agent_config(path),
            Some(Kind::Definitions) => {
                if let Err(e) = definition_file(path) {
                    self.errors.push(e);
                }
            }
            None => self.errors.push(format!(
                "{}: unknown kind of file: expected *.toml (agent configuration) or *.json \
                 (service definitions)",
                path.display()
            )),
        }
    }

    fn agent_config(&mut self, path: &Path) {
        let args = AgentArgs {
            config: Some(path.to_path_buf()),
            ..AgentArgs::default()
        };
        let cfg = match config::build(&args) {
            Ok(c) => c,
            Err(e) => {
                self.errors.push(e.to_string());
                return;
            }
        };
        let file = path.display();
        let tls = &cfg.cluster.tls;
        if let (Some(ca), Some(cert), Some(key)) = (&tls.ca_file, &tls.cert_file, &tls.key_file) {
            if let Err(e) = TlsMaterial::load(ca, cert, key) {
                self.errors.push(format!(
                    "config file {file}: keys `ca_file`, `cert_file`, `key_file`: {e}"
                ));
            }
        }
        if let (Some(ca), Some(ca_key)) = (&tls.ca_file, &tls.ca_key_file) {
            let read =
                |p: &Path| std::fs::read_to_string(p).map_err(|e| format!("{}: {e}", p.display()));
            let checked = read(ca).and_then(|ca_pem| {
                let key_pem = read(ca_key)?;
                registry::ca::load_ca(&ca_pem, &key_pem)
                    .map(|_| ())
                    .map_err(|e| format!("does not match ca_file {}: {e}", ca.display()))
            });
            if let Err(e) = checked {
                self.errors
                    .push(format!("config file {file}: key `ca_key_file`: {e}"));
            }
        }
        if let Some(dir) = &cfg.config_dir {
            if !dir.is_dir() {
                self.errors.push(format!(
                    "config file {file}: key `config_dir`: {} is not a directory",
                    dir.display()
                ));
                return;
            }
            match crate::definitions::list(dir) {
                Ok(files) => {
                    for f in files {
                        self.files += 1;
                        if let Err(e) = definition_file(&f) {
                            self.errors.push(e);
                        }
                    }
                }
                Err(e) => self
                    .errors
                    .push(format!("config file {file}: key `config_dir`: {e}")),
            }
        }
    }
}

enum Kind {
    Agent,
    Definitions,
}

fn kind(path: &Path) -> Option<Kind> {
    match path.extension().and_then(|e| e.to_str()) {
        Some("toml") => Some(Kind::Agent),
        Some("json") => Some(Kind::Definitions),
        _ => None,
    }
}

/// Checks one service definition file as registration would.
fn definition_file(path: &Path) -> Result<(), String> {
    let value = crate::definitions::read_file(path).map_err(|e| e.to_string())?;
    crate::api::parse_definitions(&value)
        .map(|_| ())
        .map_err(|e| format!("service definition {}: {e}", path.display()))
}
