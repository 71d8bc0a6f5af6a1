//! The commands, one file per group; [`run`] dispatches a parsed command line.

mod ca;
mod catalog;
mod config;
mod debug;
mod docs;
mod health;
mod intention;
mod kv;
mod leave;
mod members;
mod operator;
mod reload;
mod service;
mod services;
mod snapshot;
mod tls;
mod version;

use std::fmt;

use serde_json::{Map, Value};

use crate::cli::{Cli, Command, SnapshotCommand};
use crate::client::Client;
use crate::output::{self, Format, Table};

/// Not a failure, but not a success either: `intention check` found the connection denied.
/// It has printed its answer; `main` exits 2 without an error line (as `consul intention check`).
#[derive(Debug)]
pub struct Denied;

impl fmt::Display for Denied {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("denied")
    }
}

impl std::error::Error for Denied {}

/// `{"Ok": true}` with the fields of `fields` (an object; anything else is ignored): what a
/// command that acts prints with `-o json`.
pub fn ok_object(fields: Value) -> Value {
    let mut map = match fields {
        Value::Object(m) => m,
        _ => Map::new(),
    };
    map.insert("Ok".into(), Value::Bool(true));
    Value::Object(map)
}

/// Reports a command that acted: `message` (one line) for people, [`ok_object`] of `fields`
/// for programs.
pub fn acted(format: Format, message: &str, fields: Value) -> anyhow::Result<()> {
    match format {
        Format::Json => output::print(&output::json_pretty(&ok_object(fields)))?,
        Format::Table => output::print(&format!("{message}\n"))?,
    }
    Ok(())
}

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

    /// [`acted`] in this command's format.
    pub fn acted(&self, message: &str, fields: Value) -> anyhow::Result<()> {
        acted(self.format, message, fields)
    }
}

pub fn run(cli: Cli) -> anyhow::Result<()> {
    let Cli {
        http_addr,
        output: format,
        command,
    } = cli;
    // Offline, or tolerant of an absent agent.
    let command = match command {
        Command::Tls(cmd) => return tls::run(format, cmd),
        Command::Snapshot(SnapshotCommand::Inspect { file }) => {
            return snapshot::inspect(format, &file)
        }
        Command::Completion(args) => return docs::completion(format, args.shell),
        Command::Man(args) => return docs::man(format, args.dir.as_deref()),
        Command::Version => return version::run(format, http_addr),
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
        Command::Reload => reload::run(&ctx),
        Command::Debug(args) => debug::run(&ctx, &args),
        // Handled above; repeated here so the match stays exhaustive without a panic.
        Command::Completion(args) => docs::completion(ctx.format, args.shell),
        Command::Man(args) => docs::man(ctx.format, args.dir.as_deref()),
        Command::Version => version::run(ctx.format, ctx.client.base().to_string()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn ok_objects() {
        assert_eq!(
            ok_object(json!({"Key": "a/b"})),
            json!({"Ok": true, "Key": "a/b"})
        );
        assert_eq!(ok_object(Value::Null), json!({"Ok": true}));
        assert_eq!(ok_object(json!(true)), json!({"Ok": true}));
        // "Ok" is meshctl's: an API field of that name does not override it.
        assert_eq!(ok_object(json!({"Ok": false})), json!({"Ok": true}));
    }

    #[test]
    fn denied_is_recognized_through_anyhow() {
        let err = anyhow::Error::new(Denied);
        assert!(err.is::<Denied>());
        assert!(!anyhow::anyhow!("other").is::<Denied>());
    }
}
