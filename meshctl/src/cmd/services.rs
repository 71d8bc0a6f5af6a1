//! `meshctl services`: GET /v1/catalog/services (service name → tags).

use serde_json::Value;

use super::Ctx;
use crate::output::Table;

pub fn run(ctx: &Ctx) -> anyhow::Result<()> {
    let services = ctx.client.get_json("/v1/catalog/services")?;
    ctx.show(&services, || table(&services))
}

fn table(services: &Value) -> Table {
    let mut t = Table::new(&["Service", "Tags"]);
    let mut names: Vec<(&String, &Value)> = services.as_object().into_iter().flatten().collect();
    names.sort_by(|a, b| a.0.cmp(b.0));
    for (name, tags) in names {
        let tags: Vec<&str> = tags
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(Value::as_str)
            .collect();
        t.push(vec![name.clone(), tags.join(",")]);
    }
    t
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn services_table() {
        let services = json!({"web": ["v1", "primary"], "db": null, "api": []});
        assert_eq!(
            table(&services).render(),
            "Service  Tags\napi      -\ndb       -\nweb      v1,primary\n"
        );
    }
}
