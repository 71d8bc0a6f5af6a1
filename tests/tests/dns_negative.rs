//! Negative and foreign answers, with real `dig`:
//! - NXDOMAIN for names that do not exist and NODATA (NOERROR, no answers) for names that exist
//!   without the type asked, both with the zone's SOA in the authority section, over UDP and
//!   TCP;
//! - REFUSED for names outside the domain when no recursor is configured;
//! - forwarding to a recursor: a second meshd (`--domain other`) is the first one's
//!   `--recursor`; its answers and its NXDOMAIN come back through the first;
//! - the query metrics (`meshd_dns_queries_total{qtype,rcode}`, the latency histogram).

use std::time::Duration;

use serde_json::json;
use tests::dig::{Dig, DigAnswer};
use tests::{Api, Meshd, MeshdOptions};

const VISIBLE: Duration = Duration::from_secs(10);

async fn register(api: &Api, body: serde_json::Value) {
    api.put_json("/v1/agent/service/register", &body)
        .await
        .expect_status(200);
}

fn assert_negative(a: &DigAnswer, status: &str, zone: &str, what: &str) {
    assert_eq!(a.status, status, "{what}: expected {status}:\n{a}");
    assert!(a.answer.is_empty(), "{what}: no answers expected:\n{a}");
    assert!(a.has_flag("aa"), "{what}: authoritative:\n{a}");
    let (rec, soa) = a
        .authority_soa()
        .unwrap_or_else(|| panic!("{what}: no SOA in the authority section:\n{a}"));
    assert_eq!(rec.owner(), zone, "{what}: SOA of the zone:\n{a}");
    assert_eq!(soa.mname, format!("ns.{zone}."), "{what}:\n{a}");
    assert_eq!(soa.rname, format!("hostmaster.{zone}."), "{what}:\n{a}");
    assert_eq!(
        a.authority.len(),
        1,
        "{what}: only the SOA in the authority section:\n{a}"
    );
}

/// The value of `name{...}` whose labels include every `k="v"` of `labels` (summed).
fn metric(text: &str, name: &str, labels: &[(&str, &str)]) -> Option<f64> {
    let mut found = None;
    for line in text.lines().map(str::trim) {
        if line.starts_with('#') {
            continue;
        }
        let Some(rest) = line.strip_prefix(name).and_then(|r| r.strip_prefix('{')) else {
            continue;
        };
        let Some((ls, v)) = rest.split_once('}') else {
            continue;
        };
        let have: Vec<&str> = ls.split(',').map(str::trim).collect();
        if labels
            .iter()
            .all(|(k, v)| have.contains(&format!("{k}=\"{v}\"").as_str()))
        {
            if let Some(v) = v
                .split_whitespace()
                .next()
                .and_then(|v| v.parse::<f64>().ok())
            {
                *found.get_or_insert(0.0) += v;
            }
        }
    }
    found
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nxdomain_and_nodata_carry_the_soa() {
    let meshd = Meshd::start(MeshdOptions::default().node("n1")).await;
    let api = meshd.api();
    let dig = Dig::new(meshd.dns_addr());
    register(
        api,
        json!({"ID": "web-1", "Name": "web", "Port": 80, "Address": "10.10.0.1"}),
    )
    .await;
    // A service whose only instance is critical (a new TTL check starts critical).
    register(
        api,
        json!({"ID": "down-1", "Name": "down", "Port": 80, "Address": "10.10.0.2",
               "Check": {"CheckID": "down-ttl", "TTL": "10m"}}),
    )
    .await;
    dig.wait_for(VISIBLE, "web answers", "web.service.mesh", "A", &[], |a| {
        a.status == "NOERROR" && !a.answer.is_empty()
    })
    .await;

    let cases: &[(&str, &str, &str)] = &[
        ("nosuch.service.mesh", "A", "NXDOMAIN"),
        ("nosuch.service.mesh", "SRV", "NXDOMAIN"),
        ("_nosuch._tcp.service.mesh", "SRV", "NXDOMAIN"),
        ("nosuchtag.web.service.mesh", "A", "NXDOMAIN"),
        ("nosuch.node.mesh", "A", "NXDOMAIN"),
        ("nosuch.node.mesh", "TXT", "NXDOMAIN"),
        ("web.nosuchkind.mesh", "A", "NXDOMAIN"),
        ("a.b.c.d.mesh", "A", "NXDOMAIN"),
        ("web.service.dc9.mesh", "A", "NXDOMAIN"),
        ("nosuch.virtual.mesh", "A", "NXDOMAIN"),
        ("zz.addr.dc1.mesh", "A", "NXDOMAIN"),
        ("down.service.mesh", "A", "NXDOMAIN"),
        ("web.service.mesh", "TXT", "NOERROR"),
        ("web.service.mesh", "AAAA", "NOERROR"),
        ("web.service.mesh", "MX", "NOERROR"),
        ("n1.node.mesh", "AAAA", "NOERROR"),
        ("n1.node.mesh", "SRV", "NOERROR"),
        ("0a0a0001.addr.dc1.mesh", "AAAA", "NOERROR"),
        ("mesh", "A", "NOERROR"),
        ("mesh", "TXT", "NOERROR"),
    ];
    for (name, qtype, status) in cases {
        for transport in ["+notcp", "+tcp"] {
            let a = dig.must(name, qtype, &[transport]).await;
            assert_negative(&a, status, "mesh", &format!("{name} {qtype} {transport}"));
        }
    }

    // The positive answers of the same names, for contrast.
    let a = dig.must("web.service.mesh", "A", &[]).await;
    assert_eq!(a.rdatas("A"), vec!["10.10.0.1"], "{a}");
    assert!(a.authority.is_empty(), "no SOA in a positive answer:\n{a}");
    let a = dig.must("n1.node.mesh", "A", &[]).await;
    assert_eq!(a.status, "NOERROR", "{a}");
    assert_eq!(a.answers("A").len(), 1, "{a}");

    // The metrics count queries by type and response code, and time them.
    let text = api.metrics().await;
    for (qtype, rcode) in [("A", "NXDOMAIN"), ("TXT", "NOERROR"), ("AAAA", "NOERROR")] {
        let asked = cases
            .iter()
            .filter(|(_, t, s)| *t == qtype && *s == rcode)
            .count() as f64
            * 2.0;
        let n = metric(
            &text,
            "meshd_dns_queries_total",
            &[("qtype", qtype), ("rcode", rcode)],
        );
        assert!(
            n.is_some_and(|n| n >= asked),
            "meshd_dns_queries_total{{qtype=\"{qtype}\",rcode=\"{rcode}\"}} = {n:?}, \
             expected at least {asked}:\n{text}"
        );
    }
    let count = tests::sys::metric_value(&text, "meshd_dns_query_duration_seconds_count");
    assert!(
        count.is_some_and(|n| n >= cases.len() as f64 * 2.0),
        "meshd_dns_query_duration_seconds_count = {count:?}:\n{text}"
    );
    assert!(
        text.lines()
            .any(|l| l.starts_with("meshd_dns_query_duration_seconds_bucket{")),
        "a latency histogram:\n{text}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn foreign_names_are_refused_without_recursors() {
    let meshd = Meshd::start_default().await;
    let dig = Dig::new(meshd.dns_addr());
    for (name, qtype) in [
        ("example.org", "A"),
        ("example.org", "AAAA"),
        ("www.example.org", "SRV"),
        ("org", "SOA"),
        (".", "NS"),
        // Ends in "mesh" but not in the label `mesh`.
        ("web.service.notmesh", "A"),
        ("mesh.example.org", "A"),
    ] {
        for transport in ["+notcp", "+tcp"] {
            let a = dig.must(name, qtype, &[transport]).await;
            assert_eq!(a.status, "REFUSED", "{name} {qtype} {transport}:\n{a}");
            assert!(a.answer.is_empty(), "{a}");
            assert!(!a.has_flag("aa"), "not authoritative for {name}:\n{a}");
        }
    }
    let text = meshd.api().metrics().await;
    let refused = metric(
        &text,
        "meshd_dns_queries_total",
        &[("qtype", "A"), ("rcode", "REFUSED")],
    );
    assert!(
        refused.is_some_and(|n| n >= 6.0),
        "meshd_dns_queries_total{{qtype=\"A\",rcode=\"REFUSED\"}} = {refused:?}:\n{text}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn foreign_names_are_forwarded_to_the_recursor() {
    // The upstream: a second meshd answering for `other`.
    let upstream = Meshd::start(
        MeshdOptions::default()
            .node("up1")
            .arg("--domain")
            .arg("other"),
    )
    .await;
    register(
        upstream.api(),
        json!({"ID": "fwd-1", "Name": "fwd", "Port": 7001, "Address": "10.11.0.1"}),
    )
    .await;
    register(
        upstream.api(),
        json!({"ID": "fwd-2", "Name": "fwd", "Port": 7002, "Address": "10.11.0.2"}),
    )
    .await;
    let up_dig = Dig::new(upstream.dns_addr());
    up_dig
        .wait_for(
            VISIBLE,
            "the upstream answers fwd.service.other",
            "fwd.service.other",
            "A",
            &[],
            |a| a.answers("A").len() == 2,
        )
        .await;
    // The upstream does not answer for `mesh`.
    let a = up_dig.must("fwd.service.mesh", "A", &[]).await;
    assert_eq!(a.status, "REFUSED", "{a}");

    let recursor = upstream.dns_addr().to_string();
    let meshd = Meshd::start(
        MeshdOptions::default()
            .node("down1")
            .arg("--recursor")
            .arg(&recursor),
    )
    .await;
    register(
        meshd.api(),
        json!({"ID": "local-1", "Name": "local", "Port": 80, "Address": "10.11.1.1"}),
    )
    .await;
    let dig = Dig::new(meshd.dns_addr());

    for transport in ["+notcp", "+tcp"] {
        let a = dig.must("fwd.service.other", "A", &[transport]).await;
        assert_eq!(a.status, "NOERROR", "forwarded ({transport}):\n{a}");
        assert_eq!(
            a.rdatas("A"),
            vec!["10.11.0.1", "10.11.0.2"],
            "the upstream's answer relayed ({transport}):\n{a}"
        );
        assert!(
            a.answer.iter().all(|r| r.owner() == "fwd.service.other"),
            "{a}"
        );

        let a = dig
            .must("_fwd._tcp.service.other", "SRV", &[transport])
            .await;
        assert_eq!(a.status, "NOERROR", "{a}");
        let ports: Vec<u16> = a.srvs().iter().map(|s| s.port).collect();
        assert_eq!(ports.len(), 2, "{a}");
        assert!(ports.contains(&7001) && ports.contains(&7002), "{a}");

        let a = dig.must("up1.node.other", "A", &[transport]).await;
        assert_eq!(a.status, "NOERROR", "{a}");
        assert_eq!(a.answers("A").len(), 1, "{a}");

        // The upstream's NXDOMAIN comes back as NXDOMAIN.
        let a = dig.must("nosuch.service.other", "A", &[transport]).await;
        assert_eq!(a.status, "NXDOMAIN", "NXDOMAIN relayed ({transport}):\n{a}");
        assert!(a.answer.is_empty(), "{a}");
    }

    // The upstream's REFUSED (it has no recursor) comes back as REFUSED.
    let a = dig.must("example.org", "A", &[]).await;
    assert_eq!(a.status, "REFUSED", "REFUSED relayed:\n{a}");

    // Our own domain is still answered locally, not forwarded.
    let a = dig.must("local.service.mesh", "A", &[]).await;
    assert_eq!(a.rdatas("A"), vec!["10.11.1.1"], "{a}");
    let a = dig.must("nosuch.service.mesh", "A", &[]).await;
    assert_negative(&a, "NXDOMAIN", "mesh", "local NXDOMAIN with a recursor set");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_silent_recursor_gives_servfail_and_blocks_no_one() {
    // A recursor that never answers: a UDP socket nobody reads.
    let silent = std::net::UdpSocket::bind("127.0.0.1:0").expect("bind a silent UDP socket");
    let silent_addr = silent.local_addr().expect("its address").to_string();
    let meshd = Meshd::start(MeshdOptions::default().arg("--recursor").arg(&silent_addr)).await;
    register(
        meshd.api(),
        json!({"ID": "web-1", "Name": "web", "Port": 80, "Address": "10.12.0.1"}),
    )
    .await;
    let dig = Dig::new(meshd.dns_addr());
    dig.wait_for(VISIBLE, "web answers", "web.service.mesh", "A", &[], |a| {
        a.rdatas("A") == ["10.12.0.1"]
    })
    .await;

    // Several forwarded queries wait on the silent upstream...
    let slow = Dig::new(meshd.dns_addr()).time(30);
    let mut pending = Vec::new();
    for i in 0..4 {
        let slow = slow.clone();
        let name = format!("host{i}.example.org");
        pending.push(tokio::spawn(
            async move { slow.query(&name, "A", &[]).await },
        ));
    }
    // ...while local names are answered, over UDP and TCP.
    for _ in 0..10 {
        for transport in ["+notcp", "+tcp"] {
            let a = dig.must("web.service.mesh", "A", &[transport]).await;
            assert_eq!(a.rdatas("A"), vec!["10.12.0.1"], "{a}");
        }
    }
    // The forwarded ones end with SERVFAIL (dig waits 30 s; meshd gives up before that).
    for p in pending {
        let a = p.await.expect("the dig task").unwrap_or_else(|e| {
            panic!("no answer to a query forwarded to a silent recursor: {e:#}")
        });
        assert_eq!(a.status, "SERVFAIL", "{a}");
        assert!(a.answer.is_empty(), "{a}");
    }
    drop(silent);
}
