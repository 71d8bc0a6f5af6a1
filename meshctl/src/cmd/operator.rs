//! `meshctl operator raft list-peers|remove-peer`: GET /v1/operator/raft/configuration and
//! DELETE /v1/operator/raft/peer.

use serde_json::{json, Value};

use super::Ctx;
use crate::cli::{OperatorCommand, RaftCommand, RemovePeerArgs};
use crate::client::encode_segment;
use crate::output::{str_field, Table};

pub fn run(ctx: &Ctx, cmd: OperatorCommand) -> anyhow::Result<()> {
    match cmd {
        OperatorCommand::Raft(RaftCommand::ListPeers) => {
            let config = ctx.client.get_json("/v1/operator/raft/configuration")?;
            ctx.show(&config, || peers_table(&config))
        }
        OperatorCommand::Raft(RaftCommand::RemovePeer(args)) => remove_peer(ctx, &args),
    }
}

/// The query that names the peer, how to say it (`id=...` or `address=...`), and the JSON
/// fields that name it.
fn peer_query(args: &RemovePeerArgs) -> (String, String, Value) {
    match (&args.id, &args.address) {
        (Some(id), _) => (
            format!("id={}", encode_segment(id)),
            format!("Removed peer with id {id:?}"),
            json!({"ID": id}),
        ),
        (None, Some(addr)) => (
            format!("address={}", encode_segment(addr)),
            format!("Removed peer with address {addr:?}"),
            json!({"Address": addr}),
        ),
        // clap requires one of the two.
        (None, None) => (String::new(), String::new(), Value::Null),
    }
}

fn remove_peer(ctx: &Ctx, args: &RemovePeerArgs) -> anyhow::Result<()> {
    let (query, message, fields) = peer_query(args);
    if query.is_empty() {
        anyhow::bail!("give the peer to remove with --id or --address");
    }
    ctx.client
        .delete(&format!("/v1/operator/raft/peer?{query}"))?;
    ctx.acted(&message, fields)
}

/// Leader, follower, or learner (a non-voter).
fn peer_state(peer: &Value) -> &'static str {
    let flag = |k| peer.get(k).and_then(Value::as_bool).unwrap_or(false);
    if flag("Leader") {
        "leader"
    } else if flag("Voter") {
        "follower"
    } else {
        "learner"
    }
}

fn peers_table(config: &Value) -> Table {
    let mut t = Table::new(&["Node", "ID", "Address", "State", "Voter"]);
    let servers = config.get("Servers").and_then(Value::as_array);
    for p in servers.into_iter().flatten() {
        let voter = p.get("Voter").and_then(Value::as_bool).unwrap_or(false);
        t.push(vec![
            str_field(p, "Node").to_string(),
            str_field(p, "ID").to_string(),
            str_field(p, "Address").to_string(),
            peer_state(p).to_string(),
            voter.to_string(),
        ]);
    }
    t
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn peers_table_states() {
        let config = json!({"Servers": [
            {"ID": "a1", "Node": "s1", "Address": "10.0.0.1:8301", "Leader": true,
             "Voter": true, "ProtocolVersion": "3"},
            {"ID": "b2", "Node": "s2", "Address": "10.0.0.2:8301", "Leader": false,
             "Voter": true, "ProtocolVersion": "3"},
            {"ID": "c3", "Node": "s3", "Address": "10.0.0.3:8301", "Leader": false,
             "Voter": false, "ProtocolVersion": "3"},
        ], "Index": 42});
        assert_eq!(
            peers_table(&config).render(),
            "Node  ID  Address        State     Voter\n\
             s1    a1  10.0.0.1:8301  leader    true\n\
             s2    b2  10.0.0.2:8301  follower  true\n\
             s3    c3  10.0.0.3:8301  learner   false\n"
        );
        assert_eq!(
            peers_table(&json!({})).render(),
            "Node  ID  Address  State  Voter\n"
        );
    }

    #[test]
    fn remove_peer_query_is_encoded() {
        let by_id = RemovePeerArgs {
            id: Some("a b".into()),
            address: None,
        };
        assert_eq!(
            peer_query(&by_id),
            (
                "id=a%20b".to_string(),
                "Removed peer with id \"a b\"".to_string(),
                json!({"ID": "a b"})
            )
        );
        let by_addr = RemovePeerArgs {
            id: None,
            address: Some("[::1]:8301".into()),
        };
        let (query, _, fields) = peer_query(&by_addr);
        assert_eq!(query, "address=%5B%3A%3A1%5D%3A8301");
        assert_eq!(fields, json!({"Address": "[::1]:8301"}));
    }
}
