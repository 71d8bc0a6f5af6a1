//! `meshctl catalog nodes`: GET /v1/catalog/nodes.

use serde_json::Value;

use super::Ctx;
use crate::cli::CatalogCommand;
use crate::output::{str_field, Table};

pub fn run(ctx: &Ctx, cmd: CatalogCommand) -> anyhow::Result<()> {
    match cmd {
        CatalogCommand::Nodes => {
            let nodes = ctx.client.get_json("/v1/catalog/nodes")?;
            ctx.show(&nodes, || nodes_table(&nodes))
        }
    }
}

fn nodes_table(nodes: &Value) -> Table {
    let mut t = Table::new(&["Node", "ID", "Address", "DC"]);
    for n in nodes.as_array().into_iter().flatten() {
        // Like `consul catalog nodes`: the first 8 characters of the UUID identify a node.
        let id: String = str_field(n, "ID").chars().take(8).collect();
        t.push(vec![
            str_field(n, "Node").to_string(),
            id,
            str_field(n, "Address").to_string(),
            str_field(n, "Datacenter").to_string(),
        ]);
    }
    t
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn nodes_table_shortens_ids() {
        let nodes = json!([
            {"ID": "7c4ec2f4-4e7b-4b32-9f0a-1d2e3f4a5b6c", "Node": "alpha",
             "Address": "10.0.0.1", "Datacenter": "dc1"},
            {"ID": "", "Node": "b", "Address": "10.0.0.2", "Datacenter": "dc1"},
        ]);
        assert_eq!(
            nodes_table(&nodes).render(),
            "Node   ID        Address   DC\n\
             alpha  7c4ec2f4  10.0.0.1  dc1\n\
             b      -         10.0.0.2  dc1\n"
        );
    }
}
