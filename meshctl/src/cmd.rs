//! The commands, one file per group; [`run`] dispatches a parsed command line.

mod ca;
mod catalog;
mod config;
mod health;
mod intention;
mod kv;
mod leave;
mod members;
mod operator;
mod service;
mod services;
mod snapshot;
mod tls;

use crate::cli::{Cli, Command};
use crate::client::Client;
use crate::output::{self, Format, Table};

/// What every command needs: the client and the output format.
pub struct Ctx {
    pub client: Client,
    pub format: Format,
}

impl Ctx {
    /// Prints the API's JSON in JSON mode, or the table built from it otherwise.
    pub fn show(
        &self,
        json: &serde_json::Value,
        table: impl FnOnce() -> Table,
    ) -> anyhow::Result<()> {
        match self.format {
            Format::Json => output::print(&output::json_pretty(json))?,
            Format::Table => output::print(&table().render())?,
        }
        Ok(())
    }
}

pub fn run(cli: Cli) -> anyhow::Result<()> {
    let Cli {
        http_addr,
        output: format,
        command,
    } = cli;
    // Offline: no agent needed.
    let command = match command {
        Command::Tls(cmd) => return tls::run(format, cmd),
        other => other,
    };
    let ctx = Ctx {
        client: Client::new(http_addr)?,
        format,
    };
    match command {
        Command::Members => members::run(&ctx),
        Command::Services => services::run(&ctx),
        Command::Service(cmd) => service::run(&ctx, cmd),
        Command::Catalog(cmd) => catalog::run(&ctx, cmd),
        Command::Health(args) => health::run(&ctx, args),
        Command::Kv(cmd) => kv::run(&ctx, cmd),
        Command::Leave => leave::run(&ctx),
        Command::Operator(cmd) => operator::run(&ctx, cmd),
        Command::Snapshot(cmd) => snapshot::run(&ctx, cmd),
        Command::Tls(cmd) => tls::run(ctx.format, cmd),
        Command::Intention(cmd) => intention::run(&ctx, cmd),
        Command::Ca(cmd) => ca::run(&ctx, cmd),
        Command::Config(cmd) => config::run(&ctx, cmd),
    }
}
