//! meshctl: the operator CLI for meshd. It talks to the local agent's Consul-compatible HTTP API
//! (`--http-addr`, `MESH_HTTP_ADDR`, default 127.0.0.1:8500) and prints tables or JSON.
//!
//! Layout:
//! - [`cli`]: every flag and subcommand; the doc comments are the help text;
//! - [`client`]: the HTTP calls, address parsing and the error type that names the cause;
//! - [`output`]: table and JSON rendering;
//! - [`cmd`]: one file per command group (`members`, `services`, `service`, `catalog`,
//!   `health`, `kv`, `leave`, `operator`, `snapshot`, `intention`, `ca`, `config`, and the
//!   offline `tls`).
//!
//! Exit codes: 0 success, 1 any failure (one `Error: ...` line on stderr), 2 bad usage (clap)
//! or, for `intention check`, denied (as `consul intention check`).

#![forbid(unsafe_code)]

mod cli;
mod client;
mod cmd;
mod output;

use std::process::ExitCode;

use clap::Parser as _;

fn main() -> ExitCode {
    let cli = cli::Cli::parse_from(cli::consul_style_args(std::env::args_os()));
    match cmd::run(cli) {
        Ok(()) => ExitCode::SUCCESS,
        // The reader went away (`meshctl kv ls | head`): not an error worth a message.
        Err(err) if output::is_broken_pipe(&err) => ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("Error: {}", output::one_line(&format!("{err:#}")));
            ExitCode::FAILURE
        }
    }
}
