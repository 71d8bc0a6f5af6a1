//! `meshctl health SERVICE`: GET /v1/health/service/SERVICE, one row per instance.

use registry::Status;
use serde_json::Value;

use super::Ctx;
use crate::cli::HealthArgs;
use crate::client::encode_segment;
use crate::output::{host_port, str_field, Table};

pub fn run(ctx: &Ctx, args: HealthArgs) -> anyhow::Result<()> {
    let mut path = format!("/v1/health/service/{}", encode_segment(&args.service));
    if args.passing {
        path.push_str("?passing=true");
    }
    let entries = ctx.client.get_json(&path)?;
    ctx.show(&entries, || table(&entries))
}

/// The instance's health as Consul aggregates it: `maintenance` if a maintenance check is
/// present, else the worst check status (an unknown status counts as critical); passing when
/// there are no checks.
pub fn aggregate(checks: &[Value]) -> String {
    let in_maintenance = checks.iter().any(|c| {
        let id = str_field(c, "CheckID");
        id.starts_with("_node_maintenance") || id.starts_with("_service_maintenance")
    });
    if in_maintenance {
        return "maintenance".to_string();
    }
    checks
        .iter()
        .map(|c| Status::parse(str_field(c, "Status")).unwrap_or(Status::Critical))
        .max()
        .unwrap_or(Status::Passing)
        .to_string()
}

fn table(entries: &Value) -> Table {
    let mut t = Table::new(&["Node", "ID", "Address", "Status", "Checks"]);
    for e in entries.as_array().into_iter().flatten() {
        let node = e.get("Node").unwrap_or(&Value::Null);
        let svc = e.get("Service").unwrap_or(&Value::Null);
        let checks: &[Value] = e
            .get("Checks")
            .and_then(Value::as_array)
            .map_or(&[], Vec::as_slice);
        // An instance without its own address is reached at its node's.
        let address = match str_field(svc, "Address") {
            "" => str_field(node, "Address"),
            a => a,
        };
        let port = svc.get("Port").and_then(Value::as_u64).unwrap_or(0);
        let check_list: Vec<String> = checks
            .iter()
            .map(|c| format!("{}={}", str_field(c, "CheckID"), str_field(c, "Status")))
            .collect();
        t.push(vec![
            str_field(node, "Node").to_string(),
            str_field(svc, "ID").to_string(),
            host_port(address, port),
            aggregate(checks),
            check_list.join(" "),
        ]);
    }
    t
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn aggregate_is_the_worst_status() {
        assert_eq!(aggregate(&[]), "passing");
        let checks = [
            json!({"CheckID": "serfHealth", "Status": "passing"}),
            json!({"CheckID": "service:web", "Status": "warning"}),
        ];
        assert_eq!(aggregate(&checks), "warning");
        let checks = [
            json!({"CheckID": "a", "Status": "critical"}),
            json!({"CheckID": "b", "Status": "warning"}),
        ];
        assert_eq!(aggregate(&checks), "critical");
        assert_eq!(
            aggregate(&[json!({"CheckID": "a", "Status": "bogus"})]),
            "critical"
        );
        let checks = [
            json!({"CheckID": "a", "Status": "passing"}),
            json!({"CheckID": "_service_maintenance:web", "Status": "critical"}),
        ];
        assert_eq!(aggregate(&checks), "maintenance");
    }

    #[test]
    fn health_table() {
        let entries = json!([
            {
                "Node": {"Node": "alpha", "Address": "10.0.0.1"},
                "Service": {"ID": "web", "Service": "web", "Address": "", "Port": 8080},
                "Checks": [
                    {"CheckID": "serfHealth", "Status": "passing"},
                    {"CheckID": "service:web", "Status": "critical"}
                ]
            },
            {
                "Node": {"Node": "beta", "Address": "10.0.0.2"},
                "Service": {"ID": "web-2", "Service": "web", "Address": "127.0.0.1", "Port": 8081},
                "Checks": []
            }
        ]);
        assert_eq!(
            table(&entries).render(),
            "Node   ID     Address         Status    Checks\n\
             alpha  web    10.0.0.1:8080   critical  serfHealth=passing service:web=critical\n\
             beta   web-2  127.0.0.1:8081  passing   -\n"
        );
    }
}
