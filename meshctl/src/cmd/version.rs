//! `meshctl version`: meshctl's version and, when the agent answers, the agent's
//! (`GET /v1/agent/self`: `Config.MeshdVersion`, and `Config.Version`, the Consul API version
//! meshd is compatible with). Like `consul version`, it succeeds (exit 0) without an agent: it
//! then says the agent did not answer, and why.

use std::time::Duration;

use serde_json::{json, Value};

use crate::client::Client;
use crate::output::{self, str_field, Format};

/// meshctl's own version.
pub const MESHCTL_VERSION: &str = env!("CARGO_PKG_VERSION");

/// How long `version` waits for the agent: it is a quick look, not an operation.
const AGENT_TIMEOUT: Duration = Duration::from_secs(5);

pub fn run(format: Format, http_addr: String) -> anyhow::Result<()> {
    let client = Client::with_timeout(http_addr, AGENT_TIMEOUT)?;
    let agent = client
        .get_json("/v1/agent/self")
        .map_err(|e| (e.is_unreachable(), e.to_string()));
    let report = report(client.base(), agent);
    match format {
        Format::Json => output::print(&output::json_pretty(&report))?,
        Format::Table => output::print(&text(&report))?,
    }
    Ok(())
}

/// The JSON report: meshctl's version, and the agent's or why there is none. `agent` is
/// `/v1/agent/self`, or whether the agent was unreachable (rather than answering with an error)
/// and the error.
fn report(addr: &str, agent: Result<Value, (bool, String)>) -> Value {
    let agent = match agent {
        Ok(me) => {
            let config = me.get("Config").unwrap_or(&Value::Null);
            json!({
                "Address": addr,
                "Reachable": true,
                "MeshdVersion": str_field(config, "MeshdVersion"),
                "ConsulAPIVersion": str_field(config, "Version"),
                "Node": str_field(config, "NodeName"),
            })
        }
        Err((unreachable, error)) => {
            json!({"Address": addr, "Reachable": !unreachable, "Error": error})
        }
    };
    json!({"Meshctl": MESHCTL_VERSION, "Agent": agent})
}

/// `vX.Y.Z`, or a word when the agent did not say.
fn shown(version: &str) -> String {
    if version.is_empty() {
        "(version unknown)".to_string()
    } else {
        format!("v{version}")
    }
}

/// Two lines: meshctl, then the agent.
fn text(report: &Value) -> String {
    let agent = &report["Agent"];
    let addr = str_field(agent, "Address");
    let error = output::one_line(str_field(agent, "Error"));
    let second = match (agent["Reachable"].as_bool(), error.is_empty()) {
        (Some(true), true) => format!(
            "Agent: meshd {} (Consul API {}) at {addr}",
            shown(str_field(agent, "MeshdVersion")),
            shown(str_field(agent, "ConsulAPIVersion")),
        ),
        (Some(true), false) => format!("Agent: error from {addr}: {error}"),
        _ => format!("Agent: unreachable at {addr}: {error}"),
    };
    format!("meshctl v{}\n{second}\n", str_field(report, "Meshctl"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn both_versions_when_the_agent_answers() {
        let me = json!({"Config": {"MeshdVersion": "0.3.1", "Version": "1.21.0",
            "NodeName": "n1"}});
        let r = report("http://127.0.0.1:8500", Ok(me));
        assert_eq!(r["Meshctl"], MESHCTL_VERSION);
        assert_eq!(r["Agent"]["Reachable"], true);
        assert_eq!(r["Agent"]["MeshdVersion"], "0.3.1");
        assert_eq!(r["Agent"]["ConsulAPIVersion"], "1.21.0");
        assert_eq!(
            text(&r),
            format!(
                "meshctl v{MESHCTL_VERSION}\n\
                 Agent: meshd v0.3.1 (Consul API v1.21.0) at http://127.0.0.1:8500\n"
            )
        );
        // An agent that does not say its versions.
        let r = report("http://x:1", Ok(json!({})));
        assert!(text(&r).contains("meshd (version unknown) (Consul API (version unknown))"));
    }

    #[test]
    fn unreachable_agent_is_said() {
        let r = report(
            "http://127.0.0.1:1",
            Err((true, "connection refused".into())),
        );
        assert_eq!(r["Agent"]["Reachable"], false);
        assert_eq!(r["Agent"]["Error"], "connection refused");
        assert_eq!(
            text(&r),
            format!(
                "meshctl v{MESHCTL_VERSION}\n\
                 Agent: unreachable at http://127.0.0.1:1: connection refused\n"
            )
        );
        // It answered, with an error.
        let r = report("http://x:1", Err((false, "HTTP 500".into())));
        assert_eq!(r["Agent"]["Reachable"], true);
        assert!(text(&r).ends_with("Agent: error from http://x:1: HTTP 500\n"));
    }
}
