//! The commands, one file per group; [`run`] dispatches a parsed command line.

mod catalog;
mod health;
mod kv;
mod members;
mod service;
mod services;

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
    let ctx = Ctx {
        client: Client::new(cli.http_addr)?,
        format: cli.output,
    };
    match cli.command {
        Command::Members => members::run(&ctx),
        Command::Services => services::run(&ctx),
        Command::Service(cmd) => service::run(&ctx, cmd),
        Command::Catalog(cmd) => catalog::run(&ctx, cmd),
        Command::Health(args) => health::run(&ctx, args),
        Command::Kv(cmd) => kv::run(&ctx, cmd),
    }
}
