//! Every DNS name form meshd answers, checked with real `dig` against `meshd agent --dev`:
//! `<svc>.service` (A, AAAA, duplicates removed, service address else node address, SRV),
//! `<tag>.<svc>.service`, RFC 2782 `_<svc>._<tag>` / `_<svc>._tcp` SRV with the targets' A
//! records in the additional section (`<node>.node.dc1.mesh.` or `<hex>.addr.dc1.mesh.`),
//! `<node>.node` A and TXT (node meta), `<hex>.addr`, the datacenter label, `<svc>.virtual`,
//! the zone's SOA and NS, `--alt-domain`, TTLs from `dns_config`, `a_record_limit`,
//! `only_passing`, case-insensitivity and shuffling; `domain`, `alt_domain` and `recursors`
//! from the config file.

use std::collections::BTreeSet;
use std::path::PathBuf;
use std::time::Duration;

use serde_json::{json, Value};
use tempfile::TempDir;
use tests::dig::{Dig, DigAnswer, Srv};
use tests::{Api, Meshd, MeshdOptions};

/// How long a registration may take to show in DNS (the local view follows the registry).
const VISIBLE: Duration = Duration::from_secs(10);

/// A meshd with node name `n1` and `toml` as its config file.
struct Env {
    meshd: Meshd,
    dig: Dig,
    _dir: TempDir,
}

impl Env {
    async fn start(toml: &str, args: &[&str]) -> Env {
        let dir = tempfile::Builder::new()
            .prefix("dns-names-")
            .tempdir()
            .expect("temp dir");
        let cfg: PathBuf = dir.path().join("meshd.toml");
        std::fs::write(&cfg, toml).expect("write the config");
        let mut opts = MeshdOptions::default()
            .node("n1")
            .arg("--config")
            .arg(&cfg.display().to_string());
        for a in args {
            opts = opts.arg(a);
        }
        let meshd = Meshd::start(opts).await;
        let dig = Dig::new(meshd.dns_addr());
        Env {
            meshd,
            dig,
            _dir: dir,
        }
    }

    fn api(&self) -> &Api {
        self.meshd.api()
    }

    async fn q(&self, name: &str, qtype: &str) -> DigAnswer {
        self.dig.must(name, qtype, &[]).await
    }

    /// Queries until `name` has an answer of type `qtype` (a registration has reached DNS).
    async fn wait_answer(&self, name: &str, qtype: &str) -> DigAnswer {
        self.dig
            .wait_for(
                VISIBLE,
                &format!("{name} {qtype} has answers"),
                name,
                qtype,
                &["+tcp"],
                |a| a.status == "NOERROR" && !a.answers(qtype).is_empty(),
            )
            .await
    }
}

async fn register(api: &Api, body: Value) {
    api.put_json("/v1/agent/service/register", &body)
        .await
        .expect_status(200);
}

async fn catalog_register(api: &Api, body: Value) {
    api.put_json("/v1/catalog/register", &body)
        .await
        .expect_true();
}

/// The node address the catalog has for `node`.
async fn node_address(api: &Api, node: &str) -> String {
    let r = api.get(&format!("/v1/catalog/node/{node}")).await;
    r.expect_status(200);
    r.json()["Node"]["Address"]
        .as_str()
        .unwrap_or_else(|| panic!("no Node.Address for {node}: {}", r.text()))
        .to_string()
}

fn set(v: &[&str]) -> Vec<String> {
    let mut v: Vec<String> = v.iter().map(|s| s.to_string()).collect();
    v.sort();
    v
}

/// NOERROR, no answers, the zone SOA in the authority section.
fn assert_nodata(a: &DigAnswer, zone: &str) {
    assert_eq!(a.status, "NOERROR", "NODATA expected:\n{a}");
    assert!(a.answer.is_empty(), "NODATA expected, got answers:\n{a}");
    let (rec, soa) = a
        .authority_soa()
        .unwrap_or_else(|| panic!("no SOA in the authority section of a NODATA answer:\n{a}"));
    assert_eq!(rec.owner(), zone, "{a}");
    assert_eq!(soa.mname, format!("ns.{zone}."), "{a}");
}

/// NXDOMAIN with the zone SOA in the authority section.
fn assert_nxdomain(a: &DigAnswer, zone: &str) {
    assert_eq!(a.status, "NXDOMAIN", "NXDOMAIN expected:\n{a}");
    assert!(a.answer.is_empty(), "{a}");
    let (rec, _) = a
        .authority_soa()
        .unwrap_or_else(|| panic!("no SOA in the authority section of NXDOMAIN:\n{a}"));
    assert_eq!(rec.owner(), zone, "{a}");
}

/// Checks that every SRV target of `a` has an A record with `want[target]` in the additional
/// section.
fn assert_srv_additionals(a: &DigAnswer, want: &[(&str, &str)]) {
    for srv in a.srvs() {
        let adds: Vec<String> = a
            .additional
            .iter()
            .filter(|r| r.rtype == "A" && r.name.eq_ignore_ascii_case(&srv.target))
            .map(|r| r.rdata.clone())
            .collect();
        let expected = want
            .iter()
            .find(|(t, _)| t.eq_ignore_ascii_case(&srv.target))
            .map(|(_, ip)| ip.to_string())
            .unwrap_or_else(|| panic!("unexpected SRV target {}:\n{a}", srv.target));
        assert_eq!(
            adds,
            vec![expected],
            "the additional section must hold exactly the A record of {}:\n{a}",
            srv.target
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn service_names_a_aaaa_tags_and_case() {
    let env = Env::start("", &[]).await;
    let api = env.api();
    register(api, json!({"ID": "web-1", "Name": "web", "Port": 8080, "Address": "10.1.0.1", "Tags": ["v1", "primary"]})).await;
    register(
        api,
        json!({"ID": "web-2", "Name": "web", "Port": 8080, "Address": "10.1.0.2", "Tags": ["v2"]}),
    )
    .await;
    // Same address as web-1: one A record for both.
    register(
        api,
        json!({"ID": "web-3", "Name": "web", "Port": 8081, "Address": "10.1.0.1", "Tags": ["v2"]}),
    )
    .await;
    // No service address: the node's.
    register(api, json!({"ID": "local-1", "Name": "local", "Port": 7000})).await;
    register(
        api,
        json!({"ID": "six-1", "Name": "six", "Port": 80, "Address": "fd00::1"}),
    )
    .await;
    register(
        api,
        json!({"ID": "six-2", "Name": "six", "Port": 80, "Address": "fd00::2"}),
    )
    .await;

    let a = env.wait_answer("web.service.mesh", "A").await;
    assert_eq!(
        a.rdatas("A"),
        set(&["10.1.0.1", "10.1.0.2"]),
        "duplicates removed:\n{a}"
    );
    assert!(a.has_flag("aa"), "authoritative:\n{a}");
    assert!(
        a.answer.iter().all(|r| r.owner() == "web.service.mesh"),
        "{a}"
    );
    assert!(a.answer.iter().all(|r| r.ttl == 0), "default TTL 0:\n{a}");

    // Case-insensitive.
    let a = env.q("WeB.SeRvIcE.MeSh", "A").await;
    assert_eq!(a.status, "NOERROR", "{a}");
    assert_eq!(a.rdatas("A"), set(&["10.1.0.1", "10.1.0.2"]), "{a}");

    // Tags.
    let a = env.q("v1.web.service.mesh", "A").await;
    assert_eq!(a.rdatas("A"), set(&["10.1.0.1"]), "{a}");
    let a = env.q("primary.web.service.mesh", "A").await;
    assert_eq!(a.rdatas("A"), set(&["10.1.0.1"]), "{a}");
    let a = env.q("v2.web.service.mesh", "A").await;
    assert_eq!(a.rdatas("A"), set(&["10.1.0.1", "10.1.0.2"]), "{a}");
    let a = env.q("V2.web.service.mesh", "A").await;
    assert_eq!(
        a.rdatas("A"),
        set(&["10.1.0.1", "10.1.0.2"]),
        "tags case-insensitive:\n{a}"
    );
    let a = env.q("nosuchtag.web.service.mesh", "A").await;
    assert_nxdomain(&a, "mesh");

    // The plain name also answers SRV (three instances, two on the same address).
    let a = env.q("web.service.mesh", "SRV").await;
    assert_eq!(a.status, "NOERROR", "{a}");
    let ports: Vec<u16> = a.srvs().iter().map(|s| s.port).collect();
    assert_eq!(ports.len(), 3, "one SRV per instance:\n{a}");
    assert_eq!(
        a.srvs().iter().map(|s| s.priority).collect::<BTreeSet<_>>(),
        BTreeSet::from([1]),
        "{a}"
    );

    // No address on the instance: the node's.
    let node_ip = node_address(api, "n1").await;
    let a = env.wait_answer("local.service.mesh", "A").await;
    assert_eq!(a.rdatas("A"), vec![node_ip.clone()], "{a}");

    // IPv6 service addresses: AAAA; A is NODATA.
    let a = env.wait_answer("six.service.mesh", "AAAA").await;
    assert_eq!(a.rdatas("AAAA"), set(&["fd00::1", "fd00::2"]), "{a}");
    let a = env.q("six.service.mesh", "A").await;
    assert_nodata(&a, "mesh");
    // An IPv4-only service has no AAAA.
    let a = env.q("web.service.mesh", "AAAA").await;
    assert_nodata(&a, "mesh");
    // A service has no TXT.
    let a = env.q("web.service.mesh", "TXT").await;
    assert_nodata(&a, "mesh");

    // Unknown service.
    let a = env.q("nosuch.service.mesh", "A").await;
    assert_nxdomain(&a, "mesh");
    let a = env.q("nosuch.service.mesh", "SRV").await;
    assert_nxdomain(&a, "mesh");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn srv_forms_name_their_targets_and_carry_additional_a_records() {
    let env = Env::start("", &[]).await;
    let api = env.api();
    // ext1: no service address: target ext1.node.dc1.mesh.; weight 5 from Weights.Passing.
    catalog_register(
        api,
        json!({
            "Node": "ext1", "Address": "10.2.0.1",
            "Service": {"ID": "api-1", "Service": "api", "Port": 9001, "Tags": ["blue"],
                        "Weights": {"Passing": 5, "Warning": 1}}
        }),
    )
    .await;
    // ext2: its own address, different from the node's: target <hex>.addr.dc1.mesh.
    catalog_register(
        api,
        json!({
            "Node": "ext2", "Address": "10.2.0.2",
            "Service": {"ID": "api-2", "Service": "api", "Port": 9002, "Address": "10.2.0.99",
                        "Tags": ["green"]}
        }),
    )
    .await;
    // ext3: a service address equal to the node's: the node name.
    catalog_register(
        api,
        json!({
            "Node": "ext3", "Address": "10.2.0.3",
            "Service": {"ID": "api-3", "Service": "api", "Port": 9003, "Address": "10.2.0.3",
                        "Tags": ["green"]}
        }),
    )
    .await;
    let all_targets = [
        ("ext1.node.dc1.mesh.", "10.2.0.1"),
        ("0a020063.addr.dc1.mesh.", "10.2.0.99"),
        ("ext3.node.dc1.mesh.", "10.2.0.3"),
    ];
    let want_all = vec![
        Srv {
            priority: 1,
            weight: 1,
            port: 9002,
            target: "0a020063.addr.dc1.mesh.".into(),
        },
        Srv {
            priority: 1,
            weight: 1,
            port: 9003,
            target: "ext3.node.dc1.mesh.".into(),
        },
        Srv {
            priority: 1,
            weight: 5,
            port: 9001,
            target: "ext1.node.dc1.mesh.".into(),
        },
    ];
    let mut want_sorted = want_all.clone();
    want_sorted.sort();

    env.dig
        .wait_for(
            VISIBLE,
            "three api instances in SRV",
            "_api._tcp.service.mesh",
            "SRV",
            &[],
            |a| a.srvs().len() == 3,
        )
        .await;

    for name in [
        "_api._tcp.service.mesh",
        "api.service.mesh",
        "_API._TCP.service.mesh",
    ] {
        let a = env.q(name, "SRV").await;
        assert_eq!(a.status, "NOERROR", "{a}");
        assert_eq!(a.srvs(), want_sorted, "{name}:\n{a}");
        assert_srv_additionals(&a, &all_targets);
        assert!(
            a.answer.iter().all(|r| r.rtype == "SRV"),
            "only SRV records in the answer:\n{a}"
        );
    }

    // `_<svc>._<tag>`: the tag filter.
    let a = env.q("_api._blue.service.mesh", "SRV").await;
    assert_eq!(
        a.srvs(),
        vec![want_all[2].clone()],
        "only the blue instance:\n{a}"
    );
    assert_srv_additionals(&a, &all_targets);
    let a = env.q("_api._green.service.mesh", "SRV").await;
    let mut green = vec![want_all[0].clone(), want_all[1].clone()];
    green.sort();
    assert_eq!(a.srvs(), green, "{a}");
    assert_srv_additionals(&a, &all_targets);
    let a = env.q("_api._red.service.mesh", "SRV").await;
    assert_nxdomain(&a, "mesh");

    // The targets resolve.
    let a = env.q("ext1.node.dc1.mesh", "A").await;
    assert_eq!(a.rdatas("A"), vec!["10.2.0.1"], "{a}");
    let a = env.q("0a020063.addr.dc1.mesh", "A").await;
    assert_eq!(a.rdatas("A"), vec!["10.2.0.99"], "{a}");
    let a = env.q("ext3.node.dc1.mesh", "A").await;
    assert_eq!(a.rdatas("A"), vec!["10.2.0.3"], "{a}");

    // The A answer of the service: the instances' addresses.
    let a = env.q("api.service.mesh", "A").await;
    assert_eq!(
        a.rdatas("A"),
        set(&["10.2.0.1", "10.2.0.3", "10.2.0.99"]),
        "{a}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn node_addr_datacenter_virtual_and_apex_names() {
    let env = Env::start("node_meta = { rack = \"r1\", env = \"test\" }\n", &[]).await;
    let api = env.api();
    let node_ip = node_address(api, "n1").await;
    catalog_register(
        api,
        json!({"Node": "ext1", "Address": "10.3.0.1", "NodeMeta": {"zone": "z9"}}),
    )
    .await;
    register(
        api,
        json!({"ID": "web-1", "Name": "web", "Port": 80, "Address": "10.3.0.10"}),
    )
    .await;

    // Nodes: A and TXT, with and without the datacenter label.
    for name in ["n1.node.mesh", "n1.node.dc1.mesh", "N1.NODE.mesh"] {
        let a = env.q(name, "A").await;
        assert_eq!(a.status, "NOERROR", "{a}");
        assert_eq!(a.rdatas("A"), vec![node_ip.clone()], "{name}:\n{a}");
        let a = env.q(name, "TXT").await;
        assert_eq!(a.status, "NOERROR", "{a}");
        assert_eq!(
            a.txts(),
            set(&["env=test", "rack=r1"]),
            "one key=value string per meta entry:\n{a}"
        );
    }
    let a = env.wait_answer("ext1.node.mesh", "A").await;
    assert_eq!(a.rdatas("A"), vec!["10.3.0.1"], "{a}");
    let a = env.q("ext1.node.mesh", "TXT").await;
    assert_eq!(a.txts(), vec!["zone=z9"], "{a}");
    // An IPv4 node has no AAAA: NODATA.
    let a = env.q("n1.node.mesh", "AAAA").await;
    assert_nodata(&a, "mesh");
    let a = env.q("nosuch.node.mesh", "A").await;
    assert_nxdomain(&a, "mesh");

    // Addresses in hex.
    let a = env.q("7f000001.addr.dc1.mesh", "A").await;
    assert_eq!(a.rdatas("A"), vec!["127.0.0.1"], "{a}");
    let a = env.q("0A03000A.addr.dc1.mesh", "A").await;
    assert_eq!(a.rdatas("A"), vec!["10.3.0.10"], "{a}");
    let a = env.q("nothex.addr.dc1.mesh", "A").await;
    assert_nxdomain(&a, "mesh");

    // Datacenter label: dc1 exists, dc2 does not.
    let a = env.wait_answer("web.service.dc1.mesh", "A").await;
    assert_eq!(a.rdatas("A"), vec!["10.3.0.10"], "{a}");
    let a = env.q("web.service.dc2.mesh", "A").await;
    assert_nxdomain(&a, "mesh");
    let a = env.q("n1.node.dc2.mesh", "A").await;
    assert_nxdomain(&a, "mesh");
    // Unknown kind label.
    let a = env.q("web.nosuchkind.mesh", "A").await;
    assert_nxdomain(&a, "mesh");

    // Virtual IPs: the address /v1/mesh/virtual-ips lists.
    let vips = api.get("/v1/mesh/virtual-ips").await;
    vips.expect_status(200);
    let vips = vips.json();
    let list = vips["VirtualIPs"]
        .as_array()
        .unwrap_or_else(|| panic!("no VirtualIPs list: {vips}"));
    let vip = list
        .iter()
        .find(|v| v["Service"] == "web")
        .and_then(|v| v["IP"].as_str())
        .unwrap_or_else(|| panic!("no virtual IP for web: {vips}"))
        .to_string();
    assert!(vip.starts_with("127.100."), "in 127.100.0.0/16: {vips}");
    let a = env.q("web.virtual.mesh", "A").await;
    assert_eq!(a.status, "NOERROR", "{a}");
    assert_eq!(a.rdatas("A"), vec![vip], "{a}");
    let a = env.q("nosuch.virtual.mesh", "A").await;
    assert_nxdomain(&a, "mesh");

    // The zone apex: SOA and NS.
    let a = env.q("mesh", "SOA").await;
    assert_eq!(a.status, "NOERROR", "{a}");
    assert!(a.has_flag("aa"), "{a}");
    let soas: Vec<_> = a.answer.iter().filter_map(|r| r.soa()).collect();
    assert_eq!(soas.len(), 1, "{a}");
    assert_eq!(soas[0].mname, "ns.mesh.", "{a}");
    assert_eq!(soas[0].rname, "hostmaster.mesh.", "{a}");
    assert_eq!(a.answer[0].owner(), "mesh", "{a}");
    let a = env.q("mesh", "NS").await;
    assert_eq!(a.status, "NOERROR", "{a}");
    assert_eq!(a.rdatas("NS"), vec!["ns.mesh."], "{a}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn alt_domain_answers_the_same_names_in_its_own_domain() {
    let env = Env::start("", &["--alt-domain", "consul"]).await;
    let api = env.api();
    catalog_register(
        api,
        json!({"Node": "ext1", "Address": "10.4.0.1", "NodeMeta": {"k": "v"},
               "Service": {"ID": "db-1", "Service": "db", "Port": 5432}}),
    )
    .await;
    register(
        api,
        json!({"ID": "db-2", "Name": "db", "Port": 5433, "Address": "10.4.0.2", "Tags": ["replica"]}),
    )
    .await;

    let mesh = env.wait_answer("db.service.mesh", "A").await;
    let consul = env.wait_answer("db.service.consul", "A").await;
    assert_eq!(mesh.rdatas("A"), set(&["10.4.0.1", "10.4.0.2"]), "{mesh}");
    assert_eq!(consul.rdatas("A"), mesh.rdatas("A"), "{consul}");
    assert!(
        consul
            .answer
            .iter()
            .all(|r| r.owner() == "db.service.consul"),
        "{consul}"
    );

    let a = env.q("replica.db.service.consul", "A").await;
    assert_eq!(a.rdatas("A"), vec!["10.4.0.2"], "{a}");

    let a = env.q("_db._tcp.service.consul", "SRV").await;
    assert_eq!(a.status, "NOERROR", "{a}");
    let targets: BTreeSet<String> = a.srvs().into_iter().map(|s| s.target).collect();
    assert_eq!(
        targets,
        BTreeSet::from([
            "ext1.node.dc1.consul.".to_string(),
            "0a040002.addr.dc1.consul.".to_string()
        ]),
        "SRV targets in the domain asked:\n{a}"
    );
    assert_srv_additionals(
        &a,
        &[
            ("ext1.node.dc1.consul.", "10.4.0.1"),
            ("0a040002.addr.dc1.consul.", "10.4.0.2"),
        ],
    );

    let a = env.q("ext1.node.consul", "TXT").await;
    assert_eq!(a.txts(), vec!["k=v"], "{a}");
    let a = env.q("ext1.node.dc1.consul", "A").await;
    assert_eq!(a.rdatas("A"), vec!["10.4.0.1"], "{a}");

    let a = env.q("consul", "SOA").await;
    assert_eq!(a.status, "NOERROR", "{a}");
    let soa = a
        .answer
        .iter()
        .find_map(|r| r.soa())
        .unwrap_or_else(|| panic!("no SOA:\n{a}"));
    assert_eq!(soa.mname, "ns.consul.", "{a}");
    assert_eq!(soa.rname, "hostmaster.consul.", "{a}");
    let a = env.q("nosuch.service.consul", "A").await;
    assert_nxdomain(&a, "consul");
    let a = env.q("db.service.consul", "TXT").await;
    assert_nodata(&a, "consul");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ttls_come_from_dns_config() {
    let env = Env::start(
        "[dns_config]\n\
         service_ttl = { \"*\" = \"5s\", web = \"1s\" }\n\
         node_ttl = \"7s\"\n",
        &[],
    )
    .await;
    let api = env.api();
    register(
        api,
        json!({"ID": "web-1", "Name": "web", "Port": 80, "Address": "10.5.0.1"}),
    )
    .await;
    register(
        api,
        json!({"ID": "db-1", "Name": "db", "Port": 80, "Address": "10.5.0.2"}),
    )
    .await;

    let a = env.wait_answer("web.service.mesh", "A").await;
    assert!(a.answer.iter().all(|r| r.ttl == 1), "web: 1s\n{a}");
    let a = env.wait_answer("db.service.mesh", "A").await;
    assert!(a.answer.iter().all(|r| r.ttl == 5), "`*`: 5s\n{a}");
    let a = env.q("_web._tcp.service.mesh", "SRV").await;
    assert!(
        !a.answer.is_empty() && a.answer.iter().all(|r| r.ttl == 1),
        "SRV of web: 1s\n{a}"
    );
    let a = env.q("n1.node.mesh", "A").await;
    assert!(
        !a.answer.is_empty() && a.answer.iter().all(|r| r.ttl == 7),
        "node: 7s\n{a}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_record_limit_caps_address_answers() {
    let env = Env::start("[dns_config]\na_record_limit = 3\n", &[]).await;
    let api = env.api();
    for i in 1..=10 {
        register(
            api,
            json!({"ID": format!("lim-{i}"), "Name": "lim", "Port": 80,
                   "Address": format!("10.6.0.{i}")}),
        )
        .await;
    }
    env.dig
        .wait_for(
            VISIBLE,
            "10 lim instances in SRV",
            "lim.service.mesh",
            "SRV",
            &["+tcp"],
            |a| a.srvs().len() == 10,
        )
        .await;
    let mut seen = BTreeSet::new();
    for _ in 0..20 {
        let a = env.q("lim.service.mesh", "A").await;
        assert_eq!(a.status, "NOERROR", "{a}");
        assert_eq!(a.answers("A").len(), 3, "a_record_limit = 3:\n{a}");
        seen.extend(a.rdatas("A"));
    }
    assert!(
        seen.len() > 3,
        "the 3 addresses are a shuffled pick of the 10, not always the same: saw {seen:?}"
    );
    // Not a limit on SRV.
    let a = env.dig.must("lim.service.mesh", "SRV", &["+tcp"]).await;
    assert_eq!(a.srvs().len(), 10, "{a}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn warning_instances_are_answered_unless_only_passing() {
    let relaxed = Env::start("", &[]).await;
    let strict = Env::start("[dns_config]\nonly_passing = true\n", &[]).await;
    for env in [&relaxed, &strict] {
        let api = env.api();
        for (i, status) in [(1, "pass"), (2, "warn"), (3, "fail")] {
            register(
                api,
                json!({"ID": format!("hs-{i}"), "Name": "hs", "Port": 80,
                       "Address": format!("10.7.0.{i}"),
                       "Check": {"CheckID": format!("hs-{i}-ttl"), "TTL": "10m"}}),
            )
            .await;
            api.put(&format!("/v1/agent/check/{status}/hs-{i}-ttl"), "")
                .await
                .expect_status(200);
        }
        // A service whose only instance warns.
        register(
            api,
            json!({"ID": "warnonly-1", "Name": "warnonly", "Port": 80, "Address": "10.7.1.1",
                   "Check": {"CheckID": "warnonly-ttl", "TTL": "10m"}}),
        )
        .await;
        api.put("/v1/agent/check/warn/warnonly-ttl", "")
            .await
            .expect_status(200);
    }

    let a = relaxed
        .dig
        .wait_for(
            VISIBLE,
            "passing and warning hs instances answered",
            "hs.service.mesh",
            "A",
            &[],
            |a| a.rdatas("A") == set(&["10.7.0.1", "10.7.0.2"]),
        )
        .await;
    assert!(!a.rdatas("A").contains(&"10.7.0.3".to_string()), "{a}");
    let a = relaxed.q("warnonly.service.mesh", "A").await;
    assert_eq!(a.rdatas("A"), vec!["10.7.1.1"], "{a}");

    let a = strict
        .dig
        .wait_for(
            VISIBLE,
            "only the passing hs instance answered",
            "hs.service.mesh",
            "A",
            &[],
            |a| a.rdatas("A") == set(&["10.7.0.1"]),
        )
        .await;
    assert_eq!(a.status, "NOERROR", "{a}");
    let a = strict.q("_hs._tcp.service.mesh", "SRV").await;
    assert_eq!(a.srvs().len(), 1, "{a}");
    // No passing instance at all: NXDOMAIN, as Consul.
    let a = strict.q("warnonly.service.mesh", "A").await;
    assert_nxdomain(&a, "mesh");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn answers_are_shuffled() {
    let env = Env::start("", &[]).await;
    let api = env.api();
    for i in 1..=8 {
        register(
            api,
            json!({"ID": format!("sh-{i}"), "Name": "sh", "Port": 1000 + i,
                   "Address": format!("10.8.0.{i}")}),
        )
        .await;
    }
    env.dig
        .wait_for(
            VISIBLE,
            "8 sh instances",
            "sh.service.mesh",
            "A",
            &[],
            |a| a.answers("A").len() == 8,
        )
        .await;
    let mut first_a = BTreeSet::new();
    let mut first_srv = BTreeSet::new();
    for _ in 0..30 {
        let a = env.q("sh.service.mesh", "A").await;
        assert_eq!(a.answers("A").len(), 8, "{a}");
        first_a.insert(a.answers("A")[0].rdata.clone());
        let a = env.q("_sh._tcp.service.mesh", "SRV").await;
        assert_eq!(a.srvs().len(), 8, "{a}");
        first_srv.insert(a.answer[0].rdata.clone());
    }
    assert!(
        first_a.len() > 1,
        "30 A answers all start with the same record: {first_a:?}"
    );
    assert!(
        first_srv.len() > 1,
        "30 SRV answers all start with the same record: {first_srv:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn domain_alt_domain_and_recursors_from_the_config_file() {
    // The upstream: a meshd answering for `other`.
    let upstream = Meshd::start(MeshdOptions::default().arg("--domain").arg("other")).await;
    register(
        upstream.api(),
        json!({"ID": "up-1", "Name": "up", "Port": 80, "Address": "10.13.0.9"}),
    )
    .await;
    Dig::new(upstream.dns_addr())
        .wait_for(
            VISIBLE,
            "the upstream answers up.service.other",
            "up.service.other",
            "A",
            &[],
            |a| a.rdatas("A") == ["10.13.0.9"],
        )
        .await;

    let env = Env::start(
        &format!(
            "domain = \"Corp.\"\nalt_domain = \"consul\"\nrecursors = [\"{}\"]\n",
            upstream.dns_addr()
        ),
        &[],
    )
    .await;
    register(
        env.api(),
        json!({"ID": "web-1", "Name": "web", "Port": 80, "Address": "10.13.0.1"}),
    )
    .await;
    let a = env.wait_answer("web.service.corp", "A").await;
    assert_eq!(a.rdatas("A"), vec!["10.13.0.1"], "{a}");
    let a = env.q("web.service.consul", "A").await;
    assert_eq!(a.rdatas("A"), vec!["10.13.0.1"], "{a}");
    let a = env.q("_web._tcp.service.corp", "SRV").await;
    assert_eq!(
        a.srvs().into_iter().map(|s| s.target).collect::<Vec<_>>(),
        vec!["0a0d0001.addr.dc1.corp."],
        "{a}"
    );
    let a = env.q("corp", "SOA").await;
    let soa = a
        .answer
        .iter()
        .find_map(|r| r.soa())
        .unwrap_or_else(|| panic!("no SOA:\n{a}"));
    assert_eq!(soa.mname, "ns.corp.", "{a}");
    let a = env.q("nosuch.service.corp", "A").await;
    assert_nxdomain(&a, "corp");

    // `mesh` is no longer ours: it goes to the recursor, which refuses it.
    let a = env.q("web.service.mesh", "A").await;
    assert_eq!(
        a.status, "REFUSED",
        "`mesh` forwarded and refused upstream:\n{a}"
    );
    // The recursor's own names come back.
    let a = env.q("up.service.other", "A").await;
    assert_eq!(a.status, "NOERROR", "{a}");
    assert_eq!(a.rdatas("A"), vec!["10.13.0.9"], "{a}");
}
