//! The arguments of the operations commands: `version`, `reload`, `debug`, and the ones that
//! describe meshctl itself (`completion`, `man`), plus the exit-status text of `--help`.

use std::path::PathBuf;

use clap::{Args, ValueHint};

/// Exit statuses of every command; `meshctl --help` shows this, and the man page.
pub const EXIT_STATUS_HELP: &str = "\
Exit status:
  0  success (`version` also when the agent does not answer: it says so)
  1  an error: the agent unreachable, an HTTP error from the API, a key, intention or config
     entry not found (`Error: not found: ...`), a file that cannot be read or written; one
     `Error: ...` line on stderr
  2  bad usage: the command line does not parse; or `intention check`: denied

-o json prints JSON on stdout for every command: the API's answer for reads, an object
such as {\"Ok\": true, ...} for commands that act.";

/// Lines of the agent's log `debug` asks for when not told.
pub const DEFAULT_LOG_LINES: u32 = 1000;
/// The most lines the agent serves (`GET /v1/agent/logs?lines=N`, N at most 2000).
pub const MAX_LOG_LINES: u32 = 2000;

/// `meshctl completion SHELL`.
#[derive(Args, Debug)]
pub struct CompletionArgs {
    /// The shell to complete for.
    #[arg(value_enum)]
    pub shell: clap_complete::Shell,
}

/// `meshctl man [--dir DIR]`.
#[derive(Args, Debug)]
pub struct ManArgs {
    /// Write meshctl.1 and one page per subcommand (meshctl-kv.1, meshctl-kv-get.1, ...) into
    /// DIR (created if missing), instead of printing meshctl(1) on stdout.
    #[arg(long, value_name = "DIR", value_hint = ValueHint::DirPath)]
    pub dir: Option<PathBuf>,
}

/// `meshctl debug [--output-file FILE] [--log-lines N]`.
#[derive(Args, Debug)]
pub struct DebugArgs {
    /// Where to write the archive (default: meshd-debug-<unix time>.tar.gz in the current
    /// directory); an existing file is not overwritten.
    #[arg(long, value_name = "FILE", value_hint = ValueHint::FilePath)]
    pub output_file: Option<PathBuf>,

    /// How many of the agent's most recent log lines to collect (1 to 2000).
    #[arg(
        long,
        value_name = "N",
        default_value_t = DEFAULT_LOG_LINES,
        value_parser = clap::value_parser!(u32).range(1..=i64::from(MAX_LOG_LINES)),
    )]
    pub log_lines: u32,
}
