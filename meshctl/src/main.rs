//! meshctl: the operator CLI for meshd. It talks to the local agent's Consul-compatible HTTP API
//! (`--http-addr`, `MESH_HTTP_ADDR`, default 127.0.0.1:8500) and prints tables or JSON.
//!
//! Layout:
//! - [`cli`]: every flag and subcommand; the doc comments are the help text (and the man
//!   pages, and the shell completions); `cli/ops.rs` holds the operations commands' arguments
//!   and the exit-status text;
//! - [`client`]: the HTTP calls, address parsing and the error type that names the cause;
//! - [`output`]: table and JSON rendering;
//! - [`cmd`]: one file per command group (`members`, `services`, `service`, `catalog`,
//!   `health`, `kv`, `leave`, `operator`, `snapshot`, `intention`, `ca`, `config`, `reload`,
//!   `debug`, `version`; the offline `tls`; `docs` for `completion` and `man`).
//!
//! Output: a table (or the raw value, for `kv get`) by default; with `-o json`, every command
//! prints JSON on stdout: the API's answer for reads, `{"Ok": true, ...}` naming what was done
//! for commands that act, and an object for `version`, `debug`, `completion` and `man`.
//!
//! Exit codes (also in `meshctl --help`):
//! - 0: success; `version` also when the agent does not answer (it says so, like
//!   `consul version`, which never needs an agent);
//! - 1: any error, with one `Error: ...` line on stderr: the agent unreachable, an HTTP error
//!   status from the API, something not found (`Error: not found: ...`: a KV key, an
//!   intention, a config entry), a file that cannot be read or written;
//! - 2: bad usage (clap: the command line does not parse), or, for `intention check`, denied
//!   (as `consul intention check`; the answer is on stdout, there is no error line).
//!
//! A reader that goes away (`meshctl kv ls | head`) is not an error: exit 0, no message.

#![forbid(unsafe_code)]

mod cli;
mod client;
mod cmd;
mod output;

use std::process::ExitCode;

use clap::Parser as _;

/// Exit status of `intention check` when the connection is denied.
const EXIT_DENIED: u8 = 2;

fn main() -> ExitCode {
    // A command line that does not parse exits 2 here (clap), after its message.
    let cli = cli::Cli::parse_from(cli::consul_style_args(std::env::args_os()));
    match cmd::run(cli) {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) if err.is::<cmd::Denied>() => ExitCode::from(EXIT_DENIED),
        // The reader went away (`meshctl kv ls | head`): not an error worth a message.
        Err(err) if output::is_broken_pipe(&err) => ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("Error: {}", output::one_line(&format!("{err:#}")));
            ExitCode::FAILURE
        }
    }
}
