//! `meshctl members`: GET /v1/agent/members.

use serde_json::Value;

use super::Ctx;
use crate::output::{host_port, str_field, Table};

pub fn run(ctx: &Ctx) -> anyhow::Result<()> {
    let members = ctx.client.get_json("/v1/agent/members")?;
    ctx.show(&members, || table(&members))
}

/// Serf's member status codes, as Consul reports them.
pub fn status_name(status: &Value) -> String {
    match status {
        Value::Number(n) => match n.as_u64() {
            Some(0) => "none".to_string(),
            Some(1) => "alive".to_string(),
            Some(2) => "leaving".to_string(),
            Some(3) => "left".to_string(),
            Some(4) => "failed".to_string(),
            _ => format!("unknown({n})"),
        },
        Value::String(s) => s.clone(),
        _ => String::new(),
    }
}

/// Consul's member type: the `role` tag "consul" marks a server, anything else a client.
fn member_type(role: &str) -> &'static str {
    match role {
        "consul" => "server",
        "" => "",
        _ => "client",
    }
}

fn table(members: &Value) -> Table {
    let mut t = Table::new(&["Node", "Address", "Status", "Type", "DC"]);
    for m in members.as_array().into_iter().flatten() {
        let tags = m.get("Tags").unwrap_or(&Value::Null);
        let port = m.get("Port").and_then(Value::as_u64).unwrap_or(0);
        t.push(vec![
            str_field(m, "Name").to_string(),
            host_port(str_field(m, "Addr"), port),
            status_name(m.get("Status").unwrap_or(&Value::Null)),
            member_type(str_field(tags, "role")).to_string(),
            str_field(tags, "dc").to_string(),
        ]);
    }
    t
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn members_table() {
        let members = json!([
            {"Name": "alpha", "Addr": "10.0.0.1", "Port": 8301, "Status": 1,
             "Tags": {"role": "consul", "dc": "dc1"}},
            {"Name": "beta", "Addr": "10.0.0.2", "Port": 8301, "Status": 4,
             "Tags": {"role": "node", "dc": "dc1"}},
            {"Name": "gamma", "Addr": "10.0.0.3", "Port": 8301, "Status": 3, "Tags": null},
        ]);
        assert_eq!(
            table(&members).render(),
            "Node   Address        Status  Type    DC\n\
             alpha  10.0.0.1:8301  alive   server  dc1\n\
             beta   10.0.0.2:8301  failed  client  dc1\n\
             gamma  10.0.0.3:8301  left    -       -\n"
        );
    }

    #[test]
    fn status_names() {
        assert_eq!(status_name(&json!(2)), "leaving");
        assert_eq!(status_name(&json!(9)), "unknown(9)");
        assert_eq!(status_name(&json!("alive")), "alive");
    }
}
