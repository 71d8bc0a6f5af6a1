//! `meshctl reload`: PUT /v1/agent/reload, as `consul reload`. The agent re-reads its
//! configuration and service definitions and validates them before it changes anything; it
//! answers `{"Reloaded": SUMMARY}`, or an error status whose body names what was wrong (then
//! meshctl exits 1 with that message and nothing was changed).

use serde_json::{json, Value};

use super::Ctx;
use crate::output::str_field;

pub fn run(ctx: &Ctx) -> anyhow::Result<()> {
    let answer = ctx
        .client
        .put_raw("/v1/agent/reload", Vec::new())?
        .unwrap_or(Value::Null);
    let summary = str_field(&answer, "Reloaded").to_string();
    ctx.acted(&message(&summary), json!({"Reloaded": summary}))
}

/// Consul's line, then what the agent said it applied, if anything.
fn message(summary: &str) -> String {
    match summary.trim() {
        "" => "Configuration reload triggered".to_string(),
        s => format!("Configuration reload triggered\n{s}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn message_names_the_summary() {
        assert_eq!(message(""), "Configuration reload triggered");
        assert_eq!(
            message("2 services unchanged\n"),
            "Configuration reload triggered\n2 services unchanged"
        );
    }
}
