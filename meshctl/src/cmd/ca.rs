//! `meshctl ca roots|rotate`: the mesh CA's roots (`/v1/connect/ca/roots`) and a rotation to
//! a new active root (`POST /v1/mesh/ca/rotate`).

use super::Ctx;
use crate::cli::CaCommand;
use crate::output::{str_field, Table};

pub fn run(ctx: &Ctx, cmd: CaCommand) -> anyhow::Result<()> {
    match cmd {
        CaCommand::Roots => {
            let v = ctx.client.get_json("/v1/connect/ca/roots")?;
            ctx.show(&v, || {
                let mut t = Table::new(&["ID", "Active", "NotAfter", "SerialNumber"]);
                for r in v["Roots"].as_array().into_iter().flatten() {
                    let active = r.get("Active").and_then(|a| a.as_bool()).unwrap_or(false);
                    t.push(vec![
                        str_field(r, "ID").to_string(),
                        if active { "active" } else { "" }.to_string(),
                        str_field(r, "NotAfter").to_string(),
                        str_field(r, "SerialNumber").to_string(),
                    ]);
                }
                t
            })
        }
        CaCommand::Rotate => {
            let v = ctx
                .client
                .post_json("/v1/mesh/ca/rotate", None)?
                .unwrap_or_default();
            // JSON: the API's answer ({"ActiveRootID": ...}) with "Ok".
            let message = format!(
                "Rotated: new active root {}; leaves are being re-issued, old roots stay trusted",
                str_field(&v, "ActiveRootID")
            );
            ctx.acted(&message, v)
        }
    }
}
