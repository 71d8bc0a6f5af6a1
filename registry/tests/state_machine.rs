//! Unit tests of the state machine: every command, its index bookkeeping, KV CAS, members, CA
//! roots, restore, redaction, and replaying the change feed.

use std::borrow::Cow;

use registry::command::{Command, Register, Response};
use registry::model::{
    CaRoot, Check, MemberRole, MemberStatus, Node, Service, Status, NODE_CHECK_ID, NODE_CHECK_NAME,
};
use registry::state::StateImage;
use registry::State;

fn node(name: &str, addr: &str) -> Node {
    Node {
        id: format!("id-{name}"),
        node: name.into(),
        address: addr.into(),
        datacenter: "dc1".into(),
        ..Node::default()
    }
}

fn service(id: &str, name: &str, port: u16) -> Service {
    Service {
        id: id.into(),
        service: name.into(),
        port,
        tags: vec!["v1".into()],
        ..Service::default()
    }
}

fn check(id: &str, service_id: &str, status: Status) -> Check {
    Check {
        check_id: id.into(),
        name: id.into(),
        service_id: service_id.into(),
        status,
        check_type: "ttl".into(),
        ..Check::default()
    }
}

fn reg(n: Node, s: Option<Service>, checks: Vec<Check>) -> Command {
    Command::Register(Register {
        node: n,
        skip_node_update: false,
        service: s,
        checks,
        replace_service_checks: false,
    })
}

fn kv_set(key: &str, value: &str, cas: Option<u64>) -> Command {
    Command::KvSet {
        key: key.into(),
        value: value.as_bytes().to_vec(),
        flags: 0,
        cas,
    }
}

#[test]
fn register_creates_node_service_and_checks_with_indexes() {
    let mut st = State::new();
    let r = st.apply(
        5,
        &reg(
            node("n1", "10.0.0.1"),
            Some(service("web-1", "web", 80)),
            vec![check("c1", "web-1", Status::Passing)],
        ),
    );
    assert_eq!(r, Response::Done);
    let n = st.node("n1").expect("node");
    assert_eq!((n.create_index, n.modify_index), (5, 5));
    let s = st.service("n1", "web-1").expect("service");
    assert_eq!((s.create_index, s.modify_index), (5, 5));
    let c = st.check("n1", "c1").expect("check");
    assert_eq!(c.service_name, "web");
    assert_eq!(c.service_tags, vec!["v1".to_string()]);
    assert_eq!(c.node, "n1");
    assert_eq!((c.create_index, c.modify_index), (5, 5));
    assert_eq!(st.service_index("web"), 5);
    assert_eq!(st.node_index("n1"), 5);
    assert_eq!(st.indexes().services, 5);
    assert_eq!(st.indexes().checks, 5);
    assert_eq!(st.applied_index(), 5);
}

#[test]
fn identical_reregistration_changes_no_index() {
    let mut st = State::new();
    let cmd = reg(
        node("n1", "10.0.0.1"),
        Some(service("web-1", "web", 80)),
        vec![check("c1", "web-1", Status::Passing)],
    );
    st.apply(3, &cmd);
    let before = st.clone();
    st.apply(9, &cmd);
    assert_eq!(st.service_index("web"), 3);
    assert_eq!(st.node("n1"), before.node("n1"));
    assert_eq!(st.service("n1", "web-1"), before.service("n1", "web-1"));
    assert_eq!(st.check("n1", "c1"), before.check("n1", "c1"));
    assert_eq!(st.applied_index(), 9);
}

#[test]
fn service_update_keeps_create_index_and_bumps_modify() {
    let mut st = State::new();
    st.apply(
        2,
        &reg(node("n1", "a"), Some(service("web-1", "web", 80)), vec![]),
    );
    st.apply(
        4,
        &reg(node("n1", "a"), Some(service("web-1", "web", 81)), vec![]),
    );
    let s = st.service("n1", "web-1").expect("service");
    assert_eq!((s.create_index, s.modify_index, s.port), (2, 4, 81));
    assert_eq!(st.service_index("web"), 4);
}

#[test]
fn per_service_index_is_not_moved_by_other_services() {
    let mut st = State::new();
    st.apply(
        2,
        &reg(node("n1", "a"), Some(service("web-1", "web", 80)), vec![]),
    );
    st.apply(
        3,
        &reg(node("n1", "a"), Some(service("db-1", "db", 5432)), vec![]),
    );
    st.apply(4, &kv_set("k", "v", None));
    assert_eq!(st.service_index("web"), 2);
    assert_eq!(st.service_index("db"), 3);
    // A node-level check affects every service on the node.
    st.apply(
        6,
        &reg(
            node("n1", "a"),
            None,
            vec![check("node-ok", "", Status::Passing)],
        ),
    );
    assert_eq!(st.service_index("web"), 6);
    assert_eq!(st.service_index("db"), 6);
}

fn changed(st: &State, index: u64) -> Vec<&str> {
    st.services_changed_since(index).collect()
}

#[test]
fn the_services_changed_after_an_index_come_from_the_change_log() {
    let mut st = State::new();
    st.apply(
        2,
        &reg(node("n1", "a"), Some(service("web-1", "web", 80)), vec![]),
    );
    st.apply(
        3,
        &reg(node("n1", "a"), Some(service("db-1", "db", 5432)), vec![]),
    );
    st.apply(4, &kv_set("k", "v", None));
    assert_eq!(changed(&st, 0), ["web", "db"]);
    assert_eq!(changed(&st, 2), ["db"]);
    assert!(changed(&st, 4).is_empty(), "a KV write changes no service");
    st.apply(
        5,
        &reg(node("n1", "a"), Some(service("web-1", "web", 81)), vec![]),
    );
    assert_eq!(
        changed(&st, 2),
        ["db", "web"],
        "each once, by its last change"
    );
    // A node-level check changes every service on the node.
    st.apply(
        6,
        &reg(
            node("n1", "a"),
            None,
            vec![check("node-ok", "", Status::Passing)],
        ),
    );
    assert_eq!(changed(&st, 5), ["db", "web"]);
    // An image carries it (derived from the per-service indexes).
    let back = State::from_image(st.image());
    assert_eq!(changed(&back, 5), ["db", "web"]);
    assert_eq!(changed(&back, 6), Vec::<&str>::new());
}

#[test]
fn service_rename_moves_instance_and_bumps_both_names() {
    let mut st = State::new();
    st.apply(
        2,
        &reg(
            node("n1", "a"),
            Some(service("s1", "old", 80)),
            vec![check("c", "s1", Status::Passing)],
        ),
    );
    st.apply(
        3,
        &reg(node("n1", "a"), Some(service("s1", "new", 80)), vec![]),
    );
    assert!(st.service_instances("old").is_empty());
    assert_eq!(st.service_instances("new").len(), 1);
    assert_eq!(st.service_index("old"), 3);
    assert_eq!(st.service_index("new"), 3);
    assert_eq!(st.check("n1", "c").expect("check").service_name, "new");
}

#[test]
fn register_rejects_check_for_unknown_service_and_changes_nothing() {
    let mut st = State::new();
    st.apply(1, &reg(node("n1", "a"), None, vec![]));
    let before = st.clone();
    let r = st.apply(
        2,
        &reg(
            node("n1", "b"),
            None,
            vec![check("c", "nope", Status::Passing)],
        ),
    );
    assert!(
        matches!(r, Response::Rejected(ref m) if m.contains("nope")),
        "{r:?}"
    );
    assert_eq!(st.node("n1"), before.node("n1"));
    assert_eq!(st.indexes(), before.indexes());
}

#[test]
fn register_rejects_new_node_without_address() {
    let mut st = State::new();
    let r = st.apply(1, &reg(node("n1", ""), None, vec![]));
    assert!(matches!(r, Response::Rejected(_)));
    assert!(st.node("n1").is_none());
}

#[test]
fn skip_node_update_leaves_node_alone() {
    let mut st = State::new();
    st.apply(1, &reg(node("n1", "10.0.0.1"), None, vec![]));
    let cmd = Command::Register(Register {
        node: node("n1", "10.9.9.9"),
        skip_node_update: true,
        service: Some(service("web-1", "web", 80)),
        checks: vec![],
        replace_service_checks: false,
    });
    assert_eq!(st.apply(2, &cmd), Response::Done);
    assert_eq!(st.node("n1").expect("node").address, "10.0.0.1");
    assert_eq!(st.node("n1").expect("node").modify_index, 1);
}

#[test]
fn replace_service_checks_removes_checks_not_listed() {
    let mut st = State::new();
    st.apply(
        1,
        &reg(
            node("n1", "a"),
            Some(service("web-1", "web", 80)),
            vec![
                check("c1", "web-1", Status::Passing),
                check("c2", "web-1", Status::Passing),
            ],
        ),
    );
    let cmd = Command::Register(Register {
        node: node("n1", "a"),
        skip_node_update: true,
        service: Some(service("web-1", "web", 80)),
        checks: vec![check("c1", "web-1", Status::Passing)],
        replace_service_checks: true,
    });
    st.apply(2, &cmd);
    assert!(st.check("n1", "c1").is_some());
    assert!(st.check("n1", "c2").is_none());
    assert_eq!(st.indexes().checks, 2);
}

#[test]
fn deregister_check_service_and_node() {
    let mut st = State::new();
    st.apply(
        1,
        &reg(
            node("n1", "a"),
            Some(service("web-1", "web", 80)),
            vec![
                check("c1", "web-1", Status::Passing),
                check("nc", "", Status::Passing),
            ],
        ),
    );
    st.apply(
        2,
        &reg(node("n1", "a"), Some(service("db-1", "db", 1)), vec![]),
    );
    st.apply(
        3,
        &reg(node("n2", "b"), Some(service("web-2", "web", 80)), vec![]),
    );

    // One check.
    st.apply(
        4,
        &Command::Deregister {
            node: "n1".into(),
            service_id: None,
            check_id: Some("nc".into()),
        },
    );
    assert!(st.check("n1", "nc").is_none());
    assert_eq!(st.indexes().checks, 4);

    // One service with its checks.
    st.apply(
        5,
        &Command::Deregister {
            node: "n1".into(),
            service_id: Some("web-1".into()),
            check_id: None,
        },
    );
    assert!(st.service("n1", "web-1").is_none());
    assert!(st.check("n1", "c1").is_none());
    assert_eq!(st.service_instances("web").len(), 1);
    assert_eq!(st.service_index("web"), 5);
    // The node-level check removed at 4 was part of db's health too.
    assert_eq!(st.service_index("db"), 4);

    // The whole node.
    st.apply(
        6,
        &Command::Deregister {
            node: "n1".into(),
            service_id: None,
            check_id: None,
        },
    );
    assert!(st.node("n1").is_none());
    assert!(st.service("n1", "db-1").is_none());
    assert_eq!(st.service_index("db"), 6);
    assert_eq!(st.indexes().nodes, 6);
    assert_eq!(st.nodes().count(), 1);

    // Deregistering what is not there is a no-op.
    let before = st.indexes().clone();
    st.apply(
        7,
        &Command::Deregister {
            node: "zz".into(),
            service_id: None,
            check_id: None,
        },
    );
    assert_eq!(st.indexes(), &before);
}

#[test]
fn node_names_that_share_a_prefix_are_distinct() {
    let mut st = State::new();
    st.apply(
        1,
        &reg(node("n", "a"), Some(service("s", "web", 1)), vec![]),
    );
    st.apply(
        2,
        &reg(node("n1", "b"), Some(service("s", "web", 2)), vec![]),
    );
    assert_eq!(st.node_services("n").count(), 1);
    st.apply(
        3,
        &Command::Deregister {
            node: "n".into(),
            service_id: None,
            check_id: None,
        },
    );
    assert!(st.service("n1", "s").is_some());
}

#[test]
fn update_check_writes_only_changes() {
    let mut st = State::new();
    st.apply(
        1,
        &reg(
            node("n1", "a"),
            Some(service("web-1", "web", 80)),
            vec![check("c1", "web-1", Status::Critical)],
        ),
    );
    let upd = |status, out: &str| Command::UpdateCheck {
        node: "n1".into(),
        check_id: "c1".into(),
        status,
        output: out.into(),
    };
    assert_eq!(st.apply(2, &upd(Status::Passing, "ok")), Response::Done);
    let c = st.check("n1", "c1").expect("check");
    assert_eq!(
        (c.status, c.output.as_str(), c.modify_index, c.create_index),
        (Status::Passing, "ok", 2, 1)
    );
    assert_eq!(st.service_index("web"), 2);
    // Same status and output: nothing moves.
    st.apply(3, &upd(Status::Passing, "ok"));
    assert_eq!(st.check("n1", "c1").expect("check").modify_index, 2);
    assert_eq!(st.service_index("web"), 2);
    // Unknown check: rejected.
    let r = st.apply(
        4,
        &Command::UpdateCheck {
            node: "n1".into(),
            check_id: "zz".into(),
            status: Status::Passing,
            output: String::new(),
        },
    );
    assert!(matches!(r, Response::Rejected(_)));
}

#[test]
fn health_service_aggregates_node_and_service_checks() {
    let mut st = State::new();
    st.apply(
        1,
        &reg(
            node("n1", "a"),
            Some(service("web-1", "web", 80)),
            vec![
                check("c1", "web-1", Status::Passing),
                check("node", "", Status::Passing),
            ],
        ),
    );
    st.apply(
        2,
        &reg(
            node("n1", "a"),
            Some(service("web-2", "web", 81)),
            vec![check("c2", "web-2", Status::Warning)],
        ),
    );
    let h = st.health_service("web");
    assert_eq!(h.len(), 2);
    assert_eq!(h[0].checks.len(), 2);
    assert_eq!(h[0].status(), Status::Passing);
    assert_eq!(h[1].status(), Status::Warning);
    st.apply(
        3,
        &Command::UpdateCheck {
            node: "n1".into(),
            check_id: "node".into(),
            status: Status::Critical,
            output: String::new(),
        },
    );
    assert!(st
        .health_service("web")
        .iter()
        .all(|e| e.status() == Status::Critical));
    assert_eq!(st.checks_in_state(Some(Status::Critical)).len(), 1);
    assert_eq!(st.checks_in_state(None).len(), 3);
    assert_eq!(st.service_checks("web").len(), 2);
}

#[test]
fn kv_set_plain_and_indexes() {
    let mut st = State::new();
    assert_eq!(st.apply(1, &kv_set("a/b", "x", None)), Response::Cas(true));
    assert_eq!(st.apply(2, &kv_set("a/b", "y", None)), Response::Cas(true));
    let e = st.kv_get("a/b").expect("entry");
    assert_eq!(
        (e.create_index, e.modify_index, e.value.as_slice()),
        (1, 2, b"y".as_slice())
    );
    assert_eq!(st.kv_key_index("a/b"), 2);
    assert_eq!(st.indexes().kv, 2);
    st.apply(
        3,
        &Command::KvSet {
            key: "f".into(),
            value: vec![],
            flags: 42,
            cas: None,
        },
    );
    assert_eq!(st.kv_get("f").expect("f").flags, 42);
}

#[test]
fn kv_cas() {
    let mut st = State::new();
    // cas=0 creates only.
    assert_eq!(st.apply(1, &kv_set("k", "1", Some(0))), Response::Cas(true));
    assert_eq!(
        st.apply(2, &kv_set("k", "2", Some(0))),
        Response::Cas(false)
    );
    assert_eq!(st.kv_get("k").expect("k").value, b"1");
    // Wrong index fails and changes nothing; the right one succeeds.
    assert_eq!(
        st.apply(3, &kv_set("k", "3", Some(7))),
        Response::Cas(false)
    );
    assert_eq!(st.kv_get("k").expect("k").modify_index, 1);
    assert_eq!(st.apply(4, &kv_set("k", "4", Some(1))), Response::Cas(true));
    let e = st.kv_get("k").expect("k");
    assert_eq!(
        (e.modify_index, e.create_index, e.value.as_slice()),
        (4, 1, b"4".as_slice())
    );
    assert_eq!(st.indexes().kv, 4);
}

#[test]
fn kv_delete_single_recurse_and_cas() {
    let mut st = State::new();
    for (i, k) in ["app/a", "app/b", "app/c/d", "apple", "z"]
        .iter()
        .enumerate()
    {
        st.apply(i as u64 + 1, &kv_set(k, "v", None));
    }
    assert_eq!(st.kv_keys("app/", None), vec!["app/a", "app/b", "app/c/d"]);
    assert_eq!(
        st.kv_keys("app/", Some("/")),
        vec!["app/a", "app/b", "app/c/"]
    );
    assert_eq!(st.kv_keys("", Some("/")), vec!["app/", "apple", "z"]);
    assert!(st.kv_keys("nothing/", None).is_empty());

    // CAS delete at the wrong index fails.
    let r = st.apply(
        10,
        &Command::KvDelete {
            key: "z".into(),
            recurse: false,
            cas: Some(1),
        },
    );
    assert_eq!(r, Response::Cas(false));
    assert!(st.kv_get("z").is_some());
    let r = st.apply(
        11,
        &Command::KvDelete {
            key: "z".into(),
            recurse: false,
            cas: Some(5),
        },
    );
    assert_eq!(r, Response::Cas(true));
    assert!(st.kv_get("z").is_none());
    assert_eq!(st.indexes().kv_delete, 11);

    // Recursive delete takes the prefix only.
    st.apply(
        12,
        &Command::KvDelete {
            key: "app/".into(),
            recurse: true,
            cas: None,
        },
    );
    assert!(st.kv_prefix("app/").next().is_none());
    assert!(st.kv_get("apple").is_some());
    assert_eq!(st.kv_prefix_index("app/"), 12);

    // Deleting a missing key is a success that changes nothing.
    let before = st.indexes().clone();
    assert_eq!(
        st.apply(
            13,
            &Command::KvDelete {
                key: "nope".into(),
                recurse: false,
                cas: None
            }
        ),
        Response::Cas(true)
    );
    assert_eq!(st.indexes(), &before);
}

#[test]
fn image_round_trip_keeps_everything() {
    let mut st = State::new();
    st.apply(
        1,
        &reg(
            node("n1", "a"),
            Some(service("web-1", "web", 80)),
            vec![check("c1", "web-1", Status::Passing)],
        ),
    );
    st.apply(2, &kv_set("k", "v", None));
    st.apply(
        3,
        &Command::Deregister {
            node: "n1".into(),
            service_id: Some("web-1".into()),
            check_id: None,
        },
    );
    st.apply(
        4,
        &reg(node("n2", "b"), Some(service("db", "db", 1)), vec![]),
    );
    let json = serde_json::to_vec(&st.image()).expect("serialize");
    let back = State::from_image(serde_json::from_slice(&json).expect("deserialize"));
    assert_eq!(back, st);
    assert_eq!(back.service_index("web"), 3);
    assert_eq!(back.service_instances("db").len(), 1);
}

#[test]
fn commands_round_trip_through_json() {
    let cmds = vec![
        reg(
            node("n1", "a"),
            Some(service("s", "web", 1)),
            vec![check("c", "s", Status::Warning)],
        ),
        Command::Deregister {
            node: "n1".into(),
            service_id: None,
            check_id: Some("c".into()),
        },
        Command::UpdateCheck {
            node: "n".into(),
            check_id: "c".into(),
            status: Status::Critical,
            output: "x".into(),
        },
        Command::KvSet {
            key: "k".into(),
            value: vec![0, 255, 10],
            flags: 3,
            cas: Some(0),
        },
        Command::KvDelete {
            key: "k".into(),
            recurse: true,
            cas: None,
        },
    ];
    for c in cmds {
        let j = serde_json::to_string(&c).expect("ser");
        let back: Command = serde_json::from_str(&j).expect("de");
        assert_eq!(back, c);
    }
}

#[test]
fn batch_applies_in_order_at_one_index() {
    let mut st = State::new();
    let r = st.apply(
        7,
        &Command::Batch(vec![
            kv_set("k", "1", Some(0)),
            // The same key again with cas=0: the first write of the batch already made it.
            kv_set("k", "2", Some(0)),
            reg(node("n1", "a"), Some(service("web-1", "web", 80)), vec![]),
            Command::Batch(vec![]),
            Command::UpdateCheck {
                node: "n1".into(),
                check_id: "none".into(),
                status: Status::Passing,
                output: String::new(),
            },
        ]),
    );
    let Response::Batch(rs) = r else {
        panic!("expected a batch response, got {r:?}");
    };
    assert_eq!(rs.len(), 5);
    assert_eq!(rs[0], Response::Cas(true));
    assert_eq!(rs[1], Response::Cas(false));
    assert_eq!(rs[2], Response::Done);
    assert!(matches!(rs[3], Response::Rejected(ref m) if m.contains("nest")));
    assert!(matches!(rs[4], Response::Rejected(_)));
    assert_eq!(st.kv_get("k").expect("k").value, b"1");
    assert_eq!(st.kv_get("k").expect("k").modify_index, 7);
    assert_eq!(st.service_index("web"), 7);
    assert_eq!(st.applied_index(), 7);
}

/// A small deterministic pseudo-random generator (64-bit LCG), so the sequence is reproducible.
struct Lcg(u64);

impl Lcg {
    fn next(&mut self, bound: u64) -> u64 {
        self.0 = self
            .0
            .wrapping_mul(6_364_136_223_846_793_005)
            .wrapping_add(1_442_695_040_888_963_407);
        (self.0 >> 33) % bound
    }
}

/// One random-ish command over a few nodes, services, checks, keys, members and roots;
/// sometimes a restore of `saved`.
fn random_command(rng: &mut Lcg, saved: Option<&StateImage>) -> Command {
    let n = format!("n{}", rng.next(4));
    match (rng.next(12), saved) {
        (0, _) => {
            let status = [
                MemberStatus::Alive,
                MemberStatus::Failed,
                MemberStatus::Left,
            ][rng.next(3) as usize];
            return member(&n, status);
        }
        (1, Some(image)) if rng.next(8) == 0 => return Command::Restore(Box::new(image.clone())),
        (1, _) => return Command::CaInit(root(&format!("r{}", rng.next(3)))),
        _ => {}
    }
    let sid = format!("s{}", rng.next(3));
    let name = ["web", "db", "api"][rng.next(3) as usize];
    let status = [Status::Passing, Status::Warning, Status::Critical][rng.next(3) as usize];
    match rng.next(9) {
        0 | 1 => reg(
            node(&n, &format!("10.0.0.{}", rng.next(3))),
            Some(service(&sid, name, 80 + rng.next(2) as u16)),
            vec![check(&format!("c-{sid}"), &sid, status)],
        ),
        2 => reg(node(&n, "10.0.0.9"), None, vec![check("node", "", status)]),
        3 => Command::UpdateCheck {
            node: n,
            check_id: format!("c-{sid}"),
            status,
            output: format!("out {}", rng.next(2)),
        },
        4 => Command::Deregister {
            node: n,
            service_id: (rng.next(2) == 0).then_some(sid),
            check_id: None,
        },
        5 => kv_set(&format!("k/{}", rng.next(5)), "v", None),
        6 => Command::KvDelete {
            key: "k/".into(),
            recurse: rng.next(2) == 0,
            cas: None,
        },
        _ => Command::Batch(vec![
            kv_set(&format!("k/{}", rng.next(5)), "b", Some(rng.next(3))),
            Command::UpdateCheck {
                node: n,
                check_id: "node".into(),
                status,
                output: String::new(),
            },
        ]),
    }
}

#[test]
fn feed_replay_from_a_midway_image_reaches_the_server_state() {
    use registry::Feed;
    use std::sync::Arc;

    let mut rng = Lcg(42);
    let mut server = State::new();
    let mut feed = Feed::new(0, 10_000);
    let mut midway = None;
    let mut saved = None;
    let mut kinds = std::collections::BTreeSet::new();
    for index in 1..=800u64 {
        // Some log entries carry no command (blank and membership entries).
        if rng.next(10) == 0 {
            feed.push(index, None);
        } else {
            let cmd = random_command(&mut rng, saved.as_ref());
            kinds.insert(cmd.kind());
            server.apply(index, &cmd);
            feed.push(index, Some(Arc::new(cmd)));
        }
        if index == 100 {
            saved = Some(server.image());
        }
        if index == 250 {
            // What a server sends first on a watch stream: the redacted image.
            let mut image = server.image();
            image.redact();
            let json = serde_json::to_vec(&image).expect("serialize");
            midway = Some((json, feed.applied()));
        }
    }
    assert_eq!(kinds.len(), 9, "{kinds:?}");
    let (json, mut at) = midway.expect("taken");
    let mut agent = State::from_image(serde_json::from_slice(&json).expect("deserialize"));
    let mut rounds = 0;
    while at < feed.applied() {
        let (cmds, to) = feed.since(at, 37).expect("kept");
        for (index, cmd) in cmds {
            assert!(index > at);
            // Servers ship commands without private keys.
            let cmd = serde_json::to_vec(cmd.redacted().as_ref()).expect("serialize");
            let cmd: Command = serde_json::from_slice(&cmd).expect("deserialize");
            agent.apply(index, &cmd);
        }
        assert!(to > at);
        at = to;
        rounds += 1;
    }
    assert!(rounds > 1);
    assert_eq!(at, 800);
    assert_eq!(agent.applied_index(), server.applied_index());
    let mut want = server.image();
    assert!(want.ca_roots.iter().any(|r| !r.key_pem.is_empty()));
    want.redact();
    assert_eq!(agent.image(), want);
    assert_eq!(agent, State::from_image(want));
}

fn member(name: &str, status: MemberStatus) -> Command {
    Command::MemberSet {
        name: name.into(),
        addr: "10.0.0.1:8301".into(),
        role: MemberRole::Agent,
        status,
        datacenter: "dc1".into(),
    }
}

fn root(id: &str) -> CaRoot {
    CaRoot {
        id: id.into(),
        cert_pem: format!("cert {id}"),
        key_pem: format!("key {id}"),
        trust_domain: "mesh.local".into(),
        active: false,
        create_index: 0,
        modify_index: 0,
    }
}

#[test]
fn member_set_upserts_and_bumps_indexes_only_on_change() {
    let mut st = State::new();
    assert_eq!(
        st.apply(3, &member("n1", MemberStatus::Alive)),
        Response::Done
    );
    let m = st.member("n1").expect("member");
    assert_eq!((m.create_index, m.modify_index), (3, 3));
    assert_eq!(m.status, MemberStatus::Alive);
    assert_eq!(st.members_index(), 3);
    // The node is not in the catalog: no check is made up.
    assert!(st.check("n1", NODE_CHECK_ID).is_none());

    st.apply(4, &member("n1", MemberStatus::Alive));
    assert_eq!(st.members_index(), 3);
    assert_eq!(st.member("n1").expect("member").modify_index, 3);

    st.apply(5, &member("n1", MemberStatus::Failed));
    let m = st.member("n1").expect("member");
    assert_eq!((m.create_index, m.modify_index), (3, 5));
    assert_eq!(st.members_index(), 5);

    st.apply(6, &member("a0", MemberStatus::Alive));
    let names: Vec<&str> = st.members().map(|m| m.name.as_str()).collect();
    assert_eq!(names, vec!["a0", "n1"]);

    let json = serde_json::to_value(st.member("n1").expect("member")).expect("json");
    assert_eq!(json["Status"], "failed");
    assert_eq!(json["Role"], "agent");
    assert_eq!(json["Addr"], "10.0.0.1:8301");
}

#[test]
fn member_set_rejects_bad_input() {
    let mut st = State::new();
    let bad_addr = Command::MemberSet {
        name: "n1".into(),
        addr: "nowhere".into(),
        role: MemberRole::Server,
        status: MemberStatus::Alive,
        datacenter: "dc1".into(),
    };
    assert!(matches!(st.apply(1, &bad_addr), Response::Rejected(m) if m.contains("nowhere")));
    assert!(matches!(
        st.apply(2, &member("", MemberStatus::Alive)),
        Response::Rejected(_)
    ));
    assert_eq!(st.members().count(), 0);
    assert_eq!(st.members_index(), 0);
}

#[test]
fn failed_member_makes_its_node_check_critical_and_alive_passing() {
    let mut st = State::new();
    st.apply(
        1,
        &reg(
            node("n1", "10.0.0.1"),
            Some(service("web-1", "web", 80)),
            vec![],
        ),
    );
    // The node lacks serfHealth: failing creates it, critical.
    st.apply(2, &member("n1", MemberStatus::Failed));
    let c = st.check("n1", NODE_CHECK_ID).expect("created");
    assert_eq!(c.status, Status::Critical);
    assert_eq!(c.output, "Agent not live or unreachable");
    assert_eq!(c.name, NODE_CHECK_NAME);
    assert!(c.service_id.is_empty());
    assert_eq!((c.create_index, c.modify_index), (2, 2));
    assert_eq!(st.service_index("web"), 2);
    assert_eq!(st.node_index("n1"), 2);
    assert_eq!(st.indexes().checks, 2);
    assert_eq!(st.health_service("web")[0].status(), Status::Critical);

    // Failing again changes nothing.
    st.apply(3, &member("n1", MemberStatus::Failed));
    assert_eq!(st.indexes().checks, 2);
    assert_eq!(st.service_index("web"), 2);

    st.apply(4, &member("n1", MemberStatus::Alive));
    let c = st.check("n1", NODE_CHECK_ID).expect("check");
    assert_eq!(c.status, Status::Passing);
    assert_eq!(c.output, "Agent alive and reachable");
    assert_eq!((c.create_index, c.modify_index), (2, 4));
    assert_eq!(st.service_index("web"), 4);
    assert_eq!(st.node_index("n1"), 4);
    assert_eq!(st.health_service("web")[0].status(), Status::Passing);

    // An existing check registered by the agent is updated in place.
    st.apply(
        5,
        &reg(
            node("n2", "10.0.0.2"),
            None,
            vec![check(NODE_CHECK_ID, "", Status::Passing)],
        ),
    );
    st.apply(6, &member("n2", MemberStatus::Failed));
    let c = st.check("n2", NODE_CHECK_ID).expect("check");
    assert_eq!(c.status, Status::Critical);
    assert_eq!(c.name, NODE_CHECK_ID);
    assert_eq!((c.create_index, c.modify_index), (5, 6));
    assert_eq!(st.node_index("n1"), 4);
}

#[test]
fn left_member_is_reaped_from_the_catalog() {
    let mut st = State::new();
    st.apply(
        1,
        &reg(
            node("n1", "10.0.0.1"),
            Some(service("web-1", "web", 80)),
            vec![check("c1", "web-1", Status::Passing)],
        ),
    );
    st.apply(
        2,
        &reg(
            node("n2", "10.0.0.2"),
            Some(service("web-2", "web", 80)),
            vec![],
        ),
    );
    st.apply(3, &member("n1", MemberStatus::Alive));
    st.apply(7, &member("n1", MemberStatus::Left));
    assert!(st.node("n1").is_none());
    assert_eq!(st.node_services("n1").count(), 0);
    assert_eq!(st.node_checks("n1").count(), 0);
    assert_eq!(st.service_instances("web").len(), 1);
    assert_eq!(st.service_index("web"), 7);
    assert_eq!(st.node_index("n1"), 7);
    assert_eq!(st.indexes().nodes, 7);
    assert_eq!(st.indexes().services, 7);
    assert_eq!(st.indexes().checks, 7);
    let m = st.member("n1").expect("row stays");
    assert_eq!(m.status, MemberStatus::Left);
    assert_eq!(m.modify_index, 7);
}

#[test]
fn ca_init_installs_the_first_root_only() {
    let mut st = State::new();
    assert!(st.active_ca_root().is_none());
    assert_eq!(st.apply(2, &Command::CaInit(root("r1"))), Response::Done);
    let r = st.active_ca_root().expect("active");
    assert_eq!(r.id, "r1");
    assert!(r.active);
    assert_eq!(r.key_pem, "key r1");
    assert_eq!((r.create_index, r.modify_index), (2, 2));
    assert_eq!(st.ca_roots_index(), 2);

    let before = st.clone();
    // Every server proposes its root at bootstrap: the later ones change nothing.
    assert_eq!(st.apply(3, &Command::CaInit(root("r2"))), Response::Done);
    assert_eq!(st.apply(4, &Command::CaInit(root("r1"))), Response::Done);
    assert_eq!(st.ca_roots().count(), 1);
    assert_eq!(st.active_ca_root().expect("active").id, "r1");
    assert_eq!(st.ca_roots_index(), 2);
    assert_eq!(st.indexes(), before.indexes());

    let mut empty = root("r3");
    empty.cert_pem.clear();
    assert!(matches!(
        State::new().apply(1, &Command::CaInit(empty)),
        Response::Rejected(_)
    ));
}

#[test]
fn restore_replaces_everything_and_wakes_every_index() {
    // The image to restore: web on n1, a key, a member, a root.
    let mut src = State::new();
    src.apply(
        10,
        &reg(
            node("n1", "10.0.0.1"),
            Some(service("web-1", "web", 80)),
            vec![check("c1", "web-1", Status::Passing)],
        ),
    );
    src.apply(11, &kv_set("k", "old", None));
    src.apply(12, &member("n1", MemberStatus::Alive));
    src.apply(13, &Command::CaInit(root("r1")));
    let image = src.image();

    // The live state: db on n2, other keys.
    let mut st = State::new();
    st.apply(
        20,
        &reg(
            node("n2", "10.0.0.2"),
            Some(service("db-1", "db", 5432)),
            vec![],
        ),
    );
    st.apply(21, &kv_set("k", "new", None));
    st.apply(22, &kv_set("other", "x", None));

    assert_eq!(
        st.apply(30, &Command::Restore(Box::new(image.clone()))),
        Response::Done
    );
    assert_eq!(st.applied_index(), 30);
    assert!(st.node("n2").is_none());
    assert!(st.kv_get("other").is_none());
    assert_eq!(st.kv_get("k").expect("k").value, b"old");
    assert_eq!(st.service_instances("web").len(), 1);
    assert!(st.service_instances("db").is_empty());
    assert_eq!(st.member("n1").expect("member").status, MemberStatus::Alive);
    assert_eq!(st.active_ca_root().expect("root").id, "r1");
    // Objects keep their own indexes.
    let n = st.node("n1").expect("n1");
    assert_eq!((n.create_index, n.modify_index), (10, 10));
    assert_eq!(st.kv_get("k").expect("k").modify_index, 11);
    // Every index a blocking query may hold moves to the restore's.
    for name in ["web", "db", "never"] {
        assert_eq!(st.service_index(name), 30, "service {name}");
    }
    for name in ["n1", "n2", "never"] {
        assert_eq!(st.node_index(name), 30, "node {name}");
    }
    assert_eq!(st.kv_key_index("k"), 30);
    assert_eq!(st.kv_key_index("other"), 30);
    assert_eq!(st.kv_prefix_index(""), 30);
    assert_eq!(st.members_index(), 30);
    assert_eq!(st.ca_roots_index(), 30);
    let i = st.indexes();
    assert_eq!((i.nodes, i.services, i.checks, i.kv), (30, 30, 30, 30));

    // The tables are the image's.
    let got = st.image();
    assert_eq!(got.nodes, image.nodes);
    assert_eq!(got.services, image.services);
    assert_eq!(got.checks, image.checks);
    assert_eq!(got.kv, image.kv);
    assert_eq!(got.members, image.members);
    assert_eq!(got.ca_roots, image.ca_roots);

    // Later writes move past it as usual.
    st.apply(31, &kv_set("k", "later", None));
    assert_eq!(st.kv_key_index("k"), 31);
}

#[test]
fn redaction_blanks_private_keys_only() {
    let cmd = Command::CaInit(root("r1"));
    let red = cmd.redacted();
    assert!(matches!(red, Cow::Owned(_)));
    let Command::CaInit(r) = red.as_ref() else {
        panic!("expected CaInit, got {red:?}");
    };
    assert!(r.key_pem.is_empty());
    assert_eq!(r.cert_pem, "cert r1");
    // An already redacted command or one without keys is borrowed.
    assert!(matches!(red.redacted(), Cow::Borrowed(_)));
    let plain = kv_set("k", "v", None);
    assert!(matches!(plain.redacted(), Cow::Borrowed(_)));
    assert!(matches!(
        member("n1", MemberStatus::Alive).redacted(),
        Cow::Borrowed(_)
    ));

    let batch = Command::Batch(vec![plain.clone(), Command::CaInit(root("r2"))]);
    let Command::Batch(cmds) = batch.redacted().into_owned() else {
        panic!("expected a batch");
    };
    assert_eq!(cmds[0], plain);
    assert!(matches!(&cmds[1], Command::CaInit(r) if r.key_pem.is_empty() && r.id == "r2"));

    let mut st = State::new();
    st.apply(1, &Command::CaInit(root("r1")));
    let restore = Command::Restore(Box::new(st.image()));
    let Command::Restore(img) = restore.redacted().into_owned() else {
        panic!("expected a restore");
    };
    assert!(img.ca_roots.iter().all(|r| r.key_pem.is_empty()));
    assert_eq!(img.ca_roots.len(), 1);

    let mut image = st.image();
    image.redact();
    assert!(image.ca_roots[0].key_pem.is_empty());
    // A redacted root does not serialize its key at all.
    let json = serde_json::to_value(&image.ca_roots[0]).expect("json");
    assert!(json.get("KeyPem").is_none(), "{json}");
    assert_eq!(json["ID"], "r1");
}

#[test]
fn images_without_members_or_roots_still_decode() {
    let old = r#"{"nodes":[],"services":[],"checks":[],"kv":[],
        "indexes":{"nodes":1,"services":1,"checks":1,"kv":0,"kv_delete":0,
                   "by_service":{},"by_node":{}},"applied":1}"#;
    let img: StateImage = serde_json::from_str(old).expect("old image decodes");
    assert!(img.members.is_empty() && img.ca_roots.is_empty());
    let st = State::from_image(img);
    assert_eq!(st.members_index(), 0);
    assert_eq!(st.applied_index(), 1);
}

#[test]
fn new_commands_round_trip_through_json() {
    let mut st = State::new();
    st.apply(1, &member("n1", MemberStatus::Failed));
    let cmds = vec![
        member("n1", MemberStatus::Left),
        Command::CaInit(root("r1")),
        Command::Restore(Box::new(st.image())),
    ];
    for c in cmds {
        let j = serde_json::to_string(&c).expect("ser");
        let back: Command = serde_json::from_str(&j).expect("de");
        assert_eq!(back, c);
    }
    assert_eq!(member("n", MemberStatus::Alive).kind(), "member_set");
    assert_eq!(Command::CaInit(root("r")).kind(), "ca_init");
    assert_eq!(Command::Restore(Box::default()).kind(), "restore");
}

#[test]
fn an_instances_checks_are_found_by_index_as_a_scan_of_its_node_finds_them() {
    // The instance → checks index is derived: after any run of commands (re-registrations
    // that move a check to another service, deregistrations, restores) it must find what a
    // scan of the node's checks finds, and equal the index a restore builds from scratch.
    let mut rng = Lcg(7);
    let mut st = State::new();
    let mut saved = None;
    for index in 1..=1_500u64 {
        let cmd = if rng.next(6) == 0 {
            // One check that moves between the services of a node (and to the node itself).
            let n = format!("n{}", rng.next(4));
            let sid = ["s0", "s1", "s2", ""][rng.next(4) as usize];
            reg(
                node(&n, "10.0.0.9"),
                None,
                vec![check("moving", sid, Status::Passing)],
            )
        } else {
            random_command(&mut rng, saved.as_ref())
        };
        st.apply(index, &cmd);
        if index % 300 == 0 {
            saved = Some(st.image());
        }
        if index % 50 != 0 {
            continue;
        }
        for name in ["web", "db", "api"] {
            for e in st.health_service(name) {
                let scanned: Vec<&str> = st
                    .node_checks(&e.node.node)
                    .filter(|c| c.service_id.is_empty() || c.service_id == e.service.id)
                    .map(|c| c.check_id.as_str())
                    .collect();
                let found: Vec<&str> = e.checks.iter().map(|c| c.check_id.as_str()).collect();
                assert_eq!(found, scanned, "{name} on {} at {index}", e.node.node);
            }
            let by_service: Vec<&str> = st
                .service_checks(name)
                .iter()
                .map(|c| c.check_id.as_str())
                .collect();
            let scanned: Vec<&str> = st
                .service_instances(name)
                .iter()
                .flat_map(|(n, s)| {
                    st.node_checks(&n.node)
                        .filter(|c| c.service_id == s.id)
                        .map(|c| c.check_id.as_str())
                })
                .collect();
            assert_eq!(by_service, scanned, "{name} at {index}");
        }
        assert_eq!(st, State::from_image(st.image()), "at {index}");
    }
}
