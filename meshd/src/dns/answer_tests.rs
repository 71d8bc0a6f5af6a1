//! Answers built from a registry state, without sockets.

use std::net::IpAddr;

use hickory_proto::op::ResponseCode;
use hickory_proto::rr::{Name, RData, RecordType};
use registry::{Check, Command, Node, Register, Service, State, Status, Weights};

use super::*;
use crate::config::DnsConfig;
use crate::dns::names::{parse, Parsed};

fn register(st: &mut State, i: &mut u64, node: &str, addr: &str, svc: Option<Service>) {
    *i += 1;
    let checks = match &svc {
        Some(s) => vec![Check {
            node: node.into(),
            check_id: format!("c-{}", s.id),
            name: "c".into(),
            status: Status::Passing,
            service_id: s.id.clone(),
            ..Check::default()
        }],
        None => vec![],
    };
    let meta = [("rack".to_string(), "r1".to_string())].into();
    st.apply(
        *i,
        &Command::Register(Register {
            node: Node {
                node: node.into(),
                address: addr.into(),
                datacenter: "dc1".into(),
                meta,
                ..Node::default()
            },
            service: svc,
            checks,
            ..Register::default()
        }),
    );
}

fn svc(id: &str, name: &str, addr: &str, port: u16, tags: &[&str]) -> Service {
    Service {
        id: id.into(),
        service: name.into(),
        address: addr.into(),
        port,
        tags: tags.iter().map(|t| t.to_string()).collect(),
        weights: Weights {
            passing: 3,
            warning: 1,
        },
        ..Service::default()
    }
}

fn set_check(st: &mut State, i: &mut u64, node: &str, id: &str, status: Status) {
    *i += 1;
    st.apply(
        *i,
        &Command::UpdateCheck {
            node: node.into(),
            check_id: format!("c-{id}"),
            status,
            output: String::new(),
        },
    );
}

fn state() -> State {
    let mut st = State::new();
    let mut i = 0;
    register(
        &mut st,
        &mut i,
        "n1",
        "10.0.0.1",
        Some(svc("web1", "web", "", 80, &["v1"])),
    );
    register(
        &mut st,
        &mut i,
        "n2",
        "10.0.0.2",
        Some(svc("web2", "web", "10.9.9.9", 81, &["v2"])),
    );
    register(
        &mut st,
        &mut i,
        "n3",
        "10.0.0.3",
        Some(svc("web3", "web", "fd00::3", 82, &[])),
    );
    register(
        &mut st,
        &mut i,
        "n4",
        "10.0.0.4",
        Some(svc("db1", "db", "", 5432, &[])),
    );
    set_check(&mut st, &mut i, "n4", "db1", Status::Critical);
    st
}

fn ask(st: &State, cfg: &DnsConfig, name: &str, qtype: RecordType, limit: usize) -> Answer {
    let Parsed::Ours { lookup, .. } = parse(name, &["mesh"], "dc1") else {
        panic!("{name} is ours");
    };
    let z = Zone {
        cfg,
        domain: "mesh",
        datacenter: "dc1",
        ns_ip: "127.0.0.1".parse().unwrap(),
        size_limit: limit,
        zone: 0,
        a_record_limit: cfg.a_record_limit,
        cache: &InstanceCache::default(),
    };
    z.answer(st, &lookup, &Name::from_ascii(name).unwrap(), qtype)
}

fn ips(a: &Answer) -> Vec<String> {
    let mut v: Vec<String> = a
        .answers
        .iter()
        .filter_map(|r| match &r.data {
            RData::A(a) => Some(a.0.to_string()),
            RData::AAAA(a) => Some(a.0.to_string()),
            _ => None,
        })
        .collect();
    v.sort();
    v
}

#[test]
fn service_addresses_follow_consul() {
    let st = state();
    let cfg = DnsConfig::default();
    let a = ask(&st, &cfg, "web.service.mesh.", RecordType::A, 512);
    assert_eq!(a.rcode, ResponseCode::NoError);
    // The service address when set, else the node's; AAAA separately.
    assert_eq!(ips(&a), vec!["10.0.0.1", "10.9.9.9"]);
    let aaaa = ask(&st, &cfg, "web.service.mesh.", RecordType::AAAA, 512);
    assert_eq!(ips(&aaaa), vec!["fd00::3"]);
    let tagged = ask(&st, &cfg, "v2.web.service.mesh.", RecordType::A, 512);
    assert_eq!(ips(&tagged), vec!["10.9.9.9"]);
    // Critical instances are left out; with none left the name does not exist.
    let db = ask(&st, &cfg, "db.service.mesh.", RecordType::A, 512);
    assert_eq!(db.rcode, ResponseCode::NXDomain);
    assert!(db.soa.is_some());
}

#[test]
fn srv_targets_and_additionals() {
    let st = state();
    let cfg = DnsConfig::default();
    let a = ask(&st, &cfg, "_web._tcp.service.mesh.", RecordType::SRV, 4096);
    let mut targets: Vec<(String, u16, u16)> = a
        .answers
        .iter()
        .filter_map(|r| match &r.data {
            RData::SRV(s) => Some((s.target.to_ascii(), s.port, s.weight)),
            _ => None,
        })
        .collect();
    targets.sort();
    assert_eq!(
        targets,
        vec![
            ("0a090909.addr.dc1.mesh.".to_string(), 81, 3),
            (
                "fd000000000000000000000000000003.addr.dc1.mesh.".to_string(),
                82,
                3
            ),
            ("n1.node.dc1.mesh.".to_string(), 80, 3),
        ]
    );
    assert_eq!(a.additionals.len(), 3);
    let add: Vec<String> = a.additionals.iter().map(|r| r.name.to_ascii()).collect();
    assert!(add.contains(&"n1.node.dc1.mesh.".to_string()), "{add:?}");
}

#[test]
fn warning_and_only_passing() {
    let mut st = state();
    let mut i = 100;
    set_check(&mut st, &mut i, "n1", "web1", Status::Warning);
    let cfg = DnsConfig::default();
    assert_eq!(
        ips(&ask(&st, &cfg, "web.service.mesh.", RecordType::A, 512)),
        vec!["10.0.0.1", "10.9.9.9"]
    );
    let strict = DnsConfig {
        only_passing: true,
        ..DnsConfig::default()
    };
    assert_eq!(
        ips(&ask(&st, &strict, "web.service.mesh.", RecordType::A, 512)),
        vec!["10.9.9.9"]
    );
}

#[test]
fn nodes_addr_and_negative_answers() {
    let st = state();
    let cfg = DnsConfig {
        node_ttl: std::time::Duration::from_secs(30),
        ..DnsConfig::default()
    };
    let a = ask(&st, &cfg, "n1.node.mesh.", RecordType::A, 512);
    assert_eq!(ips(&a), vec!["10.0.0.1"]);
    assert_eq!(a.answers[0].ttl, 30);
    assert_eq!(
        a.additionals.len(),
        1,
        "node meta as TXT in the additional section"
    );
    let txt = ask(&st, &cfg, "n1.node.dc1.mesh.", RecordType::TXT, 512);
    match &txt.answers[0].data {
        RData::TXT(t) => assert_eq!(t.to_string(), "rack=r1"),
        other => panic!("{other:?}"),
    }
    // NODATA: the node exists, without an IPv6 address.
    let nodata = ask(&st, &cfg, "n1.node.mesh.", RecordType::AAAA, 512);
    assert_eq!(nodata.rcode, ResponseCode::NoError);
    assert!(nodata.answers.is_empty() && nodata.soa.is_some());
    let nx = ask(&st, &cfg, "n9.node.mesh.", RecordType::A, 512);
    assert_eq!(nx.rcode, ResponseCode::NXDomain);
    let addr = ask(&st, &cfg, "0a000001.addr.dc1.mesh.", RecordType::A, 512);
    assert_eq!(ips(&addr), vec!["10.0.0.1"]);
    let web_txt = ask(&st, &cfg, "web.service.mesh.", RecordType::TXT, 512);
    assert!(web_txt.answers.is_empty() && web_txt.soa.is_some());
}

#[test]
fn limits_and_sizes() {
    let mut st = State::new();
    let mut i = 0;
    for n in 0..100u32 {
        let node = format!("h{n}");
        let ip = IpAddr::from([10, 1, (n / 250) as u8, (n % 250) as u8 + 1]).to_string();
        register(
            &mut st,
            &mut i,
            &node,
            &ip,
            Some(svc(&format!("big{n}"), "big", "", 80, &[])),
        );
    }
    let cfg = DnsConfig::default();
    // Only what surely fits is built, and the answer says it was cut: 512 bytes less the
    // header, OPT and question hold the first A record (owner in full) and 27 of 16 bytes.
    let a = ask(&st, &cfg, "big.service.mesh.", RecordType::A, 512);
    assert_eq!(a.answers.len(), 1 + (512 - 27 - 18 - (18 + 14)) / 16);
    assert!(a.truncated);
    let all = ask(&st, &cfg, "big.service.mesh.", RecordType::A, 65535);
    assert_eq!(all.answers.len(), 100);
    assert!(!all.truncated);
    // SRV: each instance's SRV and A record together; the additionals follow the answers.
    let srv = ask(&st, &cfg, "big.service.mesh.", RecordType::SRV, 512);
    assert!(srv.truncated && !srv.answers.is_empty());
    assert_eq!(srv.answers.len(), srv.additionals.len());
    let limited = DnsConfig {
        a_record_limit: 3,
        ..DnsConfig::default()
    };
    let three = ask(&st, &limited, "big.service.mesh.", RecordType::A, 65535);
    assert_eq!(three.answers.len(), 3);
    assert!(!three.truncated, "a_record_limit is not a truncation");
    // Shuffled: the first record is not always the same.
    let firsts: std::collections::HashSet<String> = (0..50)
        .map(|_| {
            ips(&Answer::records(
                ask(&st, &cfg, "big.service.mesh.", RecordType::A, 65535).answers[..1].to_vec(),
                vec![],
            ))[0]
                .clone()
        })
        .collect();
    assert!(firsts.len() > 1);
}

#[test]
fn apex_soa_and_ns() {
    let st = state();
    let cfg = DnsConfig::default();
    let soa = ask(&st, &cfg, "mesh.", RecordType::SOA, 512);
    assert_eq!(soa.answers.len(), 1);
    assert_eq!(soa.answers[0].record_type(), RecordType::SOA);
    let ns = ask(&st, &cfg, "mesh.", RecordType::NS, 512);
    assert_eq!(ns.answers[0].record_type(), RecordType::NS);
    assert_eq!(
        ips(&Answer::records(ns.additionals, vec![])),
        vec!["127.0.0.1"]
    );
    let none = ask(&st, &cfg, "mesh.", RecordType::TXT, 512);
    assert!(none.answers.is_empty() && none.soa.is_some());
    let missing = ask(&st, &cfg, "nothing.mesh.", RecordType::A, 512);
    assert_eq!(missing.rcode, ResponseCode::NXDomain);
}

#[test]
fn reverse_lookups_name_nodes_services_and_virtual_ips() {
    let st = state();
    let cfg = DnsConfig::default();
    let cache = InstanceCache::default();
    let z = Zone {
        cfg: &cfg,
        domain: "mesh",
        datacenter: "dc1",
        ns_ip: "127.0.0.1".parse().unwrap(),
        size_limit: 65535,
        zone: 0,
        a_record_limit: cfg.a_record_limit,
        cache: &cache,
    };
    let q = Name::from_ascii("1.0.0.10.in-addr.arpa.").unwrap();
    let mut got: Vec<String> = z
        .reverse(&st, "10.0.0.1".parse().unwrap(), &q)
        .iter()
        .map(|r| r.data.to_string())
        .collect();
    got.sort();
    assert_eq!(got, vec!["n1.node.dc1.mesh.", "web.service.dc1.mesh."]);
    let vip = st.virtual_ip("web").expect("web has a virtual IP");
    let got: Vec<String> = z
        .reverse(&st, IpAddr::V4(vip), &q)
        .iter()
        .map(|r| r.data.to_string())
        .collect();
    assert_eq!(got, vec!["web.virtual.mesh."]);
    assert!(z.reverse(&st, "192.0.2.1".parse().unwrap(), &q).is_empty());
    // A service at its own address, on a node elsewhere.
    let got: Vec<String> = z
        .reverse(&st, "10.9.9.9".parse().unwrap(), &q)
        .iter()
        .map(|r| r.data.to_string())
        .collect();
    assert_eq!(got, vec!["web.service.dc1.mesh."]);
}

#[test]
fn names_are_case_insensitive() {
    let mut st = state();
    let mut i = 200;
    register(
        &mut st,
        &mut i,
        "Host-A",
        "10.0.0.9",
        Some(svc("Api1", "Api", "", 80, &["Blue"])),
    );
    let cfg = DnsConfig::default();
    for name in [
        "api.service.mesh.",
        "API.service.mesh.",
        "Api.service.mesh.",
    ] {
        assert_eq!(
            ips(&ask(&st, &cfg, name, RecordType::A, 512)),
            vec!["10.0.0.9"],
            "{name}"
        );
    }
    assert_eq!(
        ips(&ask(
            &st,
            &cfg,
            "blue.api.service.mesh.",
            RecordType::A,
            512
        )),
        vec!["10.0.0.9"]
    );
    assert_eq!(
        ips(&ask(&st, &cfg, "host-a.node.mesh.", RecordType::A, 512)),
        vec!["10.0.0.9"]
    );
    assert_eq!(
        ips(&ask(&st, &cfg, "WEB.service.mesh.", RecordType::A, 512)).len(),
        2
    );
    let vip = ask(&st, &cfg, "api.virtual.mesh.", RecordType::A, 512);
    assert_eq!(vip.answers.len(), 1);
}

#[test]
fn few_addresses_of_one_family_among_many_of_the_other_are_found() {
    let mut st = State::new();
    let mut i = 0;
    for n in 0..300u32 {
        let addr = if n < 2 {
            format!("10.2.0.{}", n + 1)
        } else {
            format!("fd00::{n:x}")
        };
        register(
            &mut st,
            &mut i,
            &format!("m{n}"),
            "10.9.0.1",
            Some(svc(&format!("mix{n}"), "mix", &addr, 80, &[])),
        );
    }
    let cfg = DnsConfig::default();
    for _ in 0..20 {
        let a = ask(&st, &cfg, "mix.service.mesh.", RecordType::A, 512);
        assert_eq!(ips(&a), vec!["10.2.0.1", "10.2.0.2"]);
        assert!(!a.truncated);
    }
}
