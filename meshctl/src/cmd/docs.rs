//! `meshctl completion SHELL` and `meshctl man [--dir DIR]`: shell completion scripts
//! (clap_complete) and man pages (clap_mangen), both generated from the command-line
//! definition in [`crate::cli`], so they never drift from `--help`. The Debian package ships
//! what `meshctl man --dir target/man` and `meshctl completion bash|zsh|fish` print.

use std::path::{Path, PathBuf};

use anyhow::Context as _;
use clap::CommandFactory as _;
use serde_json::json;

use super::acted;
use crate::cli::Cli;
use crate::output::{self, Format};

/// The name completions and man pages are generated for.
const BIN_NAME: &str = "meshctl";
/// The man section of every page.
const MAN_SECTION: &str = "1";

/// Prints the completion script for `shell` (with `-o json`: `{"Shell", "Script"}`).
pub fn completion(format: Format, shell: clap_complete::Shell) -> anyhow::Result<()> {
    let script = completion_script(shell);
    match format {
        Format::Json => output::print(&output::json_pretty(&json!({
            "Shell": shell.to_string(),
            "Script": String::from_utf8_lossy(&script),
        })))?,
        Format::Table => output::print_bytes(&script)?,
    }
    Ok(())
}

/// The completion script for `shell`.
pub fn completion_script(shell: clap_complete::Shell) -> Vec<u8> {
    let mut cmd = Cli::command();
    let mut out = Vec::new();
    clap_complete::generate(shell, &mut cmd, BIN_NAME, &mut out);
    out
}

/// Prints meshctl(1) as roff, or writes every page into `dir`.
pub fn man(format: Format, dir: Option<&Path>) -> anyhow::Result<()> {
    let Some(dir) = dir else {
        let page = render(main_command())?;
        return match format {
            Format::Json => Ok(output::print(&output::json_pretty(&json!({
                "Page": format!("{BIN_NAME}.{MAN_SECTION}"),
                "Roff": String::from_utf8_lossy(&page),
            })))?),
            Format::Table => Ok(output::print_bytes(&page)?),
        };
    };
    let files = write_pages(dir)?;
    let names: Vec<String> = files.iter().map(|f| f.display().to_string()).collect();
    acted(
        format,
        &format!("Wrote {} man pages to {}", files.len(), dir.display()),
        json!({"Dir": dir.display().to_string(), "Files": names}),
    )
}

/// The command as the pages describe it: built (subcommands named `meshctl-kv-get`), without
/// clap's `help` subcommand (every page documents `--help`).
fn main_command() -> clap::Command {
    let mut cmd = Cli::command()
        .bin_name(BIN_NAME)
        .disable_help_subcommand(true);
    cmd.build();
    cmd
}

/// One page, roff.
fn render(cmd: clap::Command) -> anyhow::Result<Vec<u8>> {
    let mut out = Vec::new();
    man_page(cmd)
        .render(&mut out)
        .context("rendering the man page")?;
    Ok(out)
}

fn man_page(cmd: clap::Command) -> clap_mangen::Man {
    clap_mangen::Man::new(cmd)
        .section(MAN_SECTION)
        .source(format!("meshctl {}", env!("CARGO_PKG_VERSION")))
        .manual("meshctl manual")
}

/// Writes meshctl.1 and a page per (visible) subcommand, at every depth, into `dir` (created if
/// missing); returns the files written, meshctl.1 first.
pub fn write_pages(dir: &Path) -> anyhow::Result<Vec<PathBuf>> {
    std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    let mut files = Vec::new();
    write_tree(main_command(), dir, &mut files)?;
    Ok(files)
}

/// Writes the page of `cmd`, then those of its subcommands.
fn write_tree(cmd: clap::Command, dir: &Path, files: &mut Vec<PathBuf>) -> anyhow::Result<()> {
    let subs: Vec<clap::Command> = cmd
        .get_subcommands()
        .filter(|s| !s.is_hide_set())
        .cloned()
        .collect();
    let page = man_page(cmd);
    let file = dir.join(page.get_filename());
    let mut bytes = Vec::new();
    page.render(&mut bytes)
        .with_context(|| format!("rendering {}", file.display()))?;
    std::fs::write(&file, bytes).with_context(|| format!("writing {}", file.display()))?;
    files.push(file);
    for sub in subs {
        write_tree(sub, dir, files)?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The `.TH` line, after clap_mangen's two-line preamble (the `Aq` string definition).
    fn title(page: &str) -> &str {
        let mut lines = page
            .lines()
            .skip_while(|l| l.starts_with(".ie") || l.starts_with(".el"));
        lines.next().unwrap_or_default()
    }

    #[test]
    fn completions_name_the_subcommands() {
        for shell in [
            clap_complete::Shell::Bash,
            clap_complete::Shell::Zsh,
            clap_complete::Shell::Fish,
        ] {
            let script = String::from_utf8(completion_script(shell)).unwrap();
            for sub in ["members", "kv", "debug", "reload", "completion", "man"] {
                assert!(script.contains(sub), "{shell}: no {sub}");
            }
        }
        let bash = String::from_utf8(completion_script(clap_complete::Shell::Bash)).unwrap();
        assert!(bash.contains("complete -F _meshctl"), "{bash}");
    }

    #[test]
    fn main_page_is_roff_for_meshctl_1_with_the_exit_statuses() {
        let page = String::from_utf8(render(main_command()).unwrap()).unwrap();
        assert!(title(&page).starts_with(".TH meshctl 1 "), "{page}");
        assert!(page.contains("Exit status"));
        assert!(page.contains("MESH_HTTP_ADDR"));
    }

    #[test]
    fn pages_for_every_subcommand() {
        let dir = std::env::temp_dir().join(format!("meshctl-man-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let files = write_pages(&dir.join("man")).unwrap();
        let names: Vec<String> = files
            .iter()
            .map(|f| f.file_name().unwrap().to_string_lossy().into_owned())
            .collect();
        assert_eq!(names[0], "meshctl.1");
        for want in [
            "meshctl-kv.1",
            "meshctl-kv-get.1",
            "meshctl-operator-raft-list-peers.1",
            "meshctl-debug.1",
            "meshctl-man.1",
        ] {
            assert!(names.iter().any(|n| n == want), "no {want} in {names:?}");
        }
        assert!(!names.iter().any(|n| n.contains("help")), "{names:?}");
        let kv_get = std::fs::read_to_string(dir.join("man/meshctl-kv-get.1")).unwrap();
        assert!(
            title(&kv_get).starts_with(".TH meshctl-kv-get 1 "),
            "{kv_get}"
        );
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
