//! A service with 40 instances (10.0.0.1 ... 10.0.0.40) does not fit a 512-byte UDP answer:
//! over UDP without EDNS, dig (`+notcp +ignore +noedns`) gets a well-formed answer of at most
//! 512 bytes with TC set and fewer than 40 records, for A and SRV; over TCP, and over UDP with
//! `+bufsize=4096`, all 40 (SRV with the 40 targets' A records in the additional section). A
//! client's EDNS size below the answer's is honoured the same way, a plain dig retries over TCP
//! on TC, and `meshd_dns_truncated_total` counts the truncations.

use std::collections::BTreeSet;
use std::time::Duration;

use serde_json::json;
use tests::dig::{Dig, DigAnswer};
use tests::sys::metric_value;
use tests::Meshd;

const INSTANCES: usize = 40;
const VISIBLE: Duration = Duration::from_secs(15);

fn all_addrs() -> BTreeSet<String> {
    (1..=INSTANCES).map(|i| format!("10.0.0.{i}")).collect()
}

fn target_of(i: usize) -> String {
    format!("0a0000{i:02x}.addr.dc1.mesh.")
}

/// Whether the answer is a well-formed message: dig found nothing extra or missing in it and
/// the header's ANSWER count is the records it printed. A problem is recorded (the test fails
/// at its end, after checking everything else).
fn check_well_formed(a: &DigAnswer, problems: &mut Vec<String>) {
    let bad: Vec<&String> = a
        .warnings
        .iter()
        .filter(|w| !w.contains("recursion requested but not available"))
        .collect();
    if !bad.is_empty() {
        problems.push(format!("dig warns about the message: {bad:?}\n{a}"));
    }
    if usize::from(a.counts[1]) != a.answer.len() {
        problems.push(format!("ANSWER count vs records printed:\n{a}"));
    }
}

/// Every A record in the answer is one of the 40 addresses, no duplicates.
fn assert_subset_of_instances(a: &DigAnswer) -> usize {
    let got = a.rdatas("A");
    let uniq: BTreeSet<String> = got.iter().cloned().collect();
    assert_eq!(uniq.len(), got.len(), "duplicate A records:\n{a}");
    assert!(uniq.is_subset(&all_addrs()), "unknown addresses:\n{a}");
    got.len()
}

/// Every SRV target is one of the instances', and every additional A record is the address of
/// a target in the answer.
fn assert_srv_consistent(a: &DigAnswer) {
    let targets: BTreeSet<String> = a.srvs().into_iter().map(|s| s.target).collect();
    assert_eq!(targets.len(), a.srvs().len(), "duplicate SRV targets:\n{a}");
    let known: BTreeSet<String> = (1..=INSTANCES).map(target_of).collect();
    assert!(targets.is_subset(&known), "unknown targets:\n{a}");
    for r in a.additionals("A") {
        assert!(
            targets.contains(&r.name.to_ascii_lowercase()),
            "additional record for a target not in the answer: {r}\n{a}"
        );
        let i = usize::from_str_radix(&r.name[6..8], 16).expect("hex");
        assert_eq!(r.rdata, format!("10.0.0.{i}"), "{a}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn forty_instances_truncate_over_udp_and_are_complete_over_tcp_and_edns() {
    let meshd = Meshd::start_default().await;
    let api = meshd.api();
    let dig = Dig::new(meshd.dns_addr());
    let mut problems = Vec::new();
    for i in 1..=INSTANCES {
        api.put_json(
            "/v1/agent/service/register",
            &json!({"ID": format!("big-{i}"), "Name": "big", "Port": 8000 + i,
                    "Address": format!("10.0.0.{i}")}),
        )
        .await
        .expect_status(200);
    }
    dig.wait_for(
        VISIBLE,
        "40 instances over TCP",
        "big.service.mesh",
        "A",
        &["+tcp"],
        |a| a.answers("A").len() == INSTANCES,
    )
    .await;
    let truncated_before = metric_value(&api.metrics().await, "meshd_dns_truncated_total");

    // UDP, no EDNS: 512 bytes at most, TC, fewer than 40.
    let udp_plain = ["+notcp", "+ignore", "+noedns", "+stats"];
    let a = dig.must("big.service.mesh", "A", &udp_plain).await;
    assert_eq!(a.status, "NOERROR", "{a}");
    assert!(a.truncated(), "TC must be set:\n{a}");
    assert_eq!(a.transport.as_deref(), Some("UDP"), "{a}");
    assert!(a.msg_size.is_some_and(|n| n <= 512), "over 512 bytes:\n{a}");
    let n = assert_subset_of_instances(&a);
    assert!(n < INSTANCES, "{n} A records in a 512-byte answer?\n{a}");
    check_well_formed(&a, &mut problems);

    let a = dig.must("_big._tcp.service.mesh", "SRV", &udp_plain).await;
    assert_eq!(a.status, "NOERROR", "{a}");
    assert!(a.truncated(), "TC must be set:\n{a}");
    assert!(a.msg_size.is_some_and(|n| n <= 512), "over 512 bytes:\n{a}");
    assert!(a.srvs().len() < INSTANCES, "{a}");
    assert_srv_consistent(&a);
    check_well_formed(&a, &mut problems);

    // TCP: everything.
    let a = dig.must("big.service.mesh", "A", &["+tcp", "+stats"]).await;
    assert_eq!(a.status, "NOERROR", "{a}");
    assert!(!a.truncated(), "{a}");
    assert_eq!(a.transport.as_deref(), Some("TCP"), "{a}");
    assert_eq!(
        a.rdatas("A").into_iter().collect::<BTreeSet<_>>(),
        all_addrs(),
        "{a}"
    );
    assert_eq!(a.answers("A").len(), INSTANCES, "{a}");
    check_well_formed(&a, &mut problems);

    let a = dig.must("_big._tcp.service.mesh", "SRV", &["+tcp"]).await;
    assert!(!a.truncated(), "{a}");
    assert_eq!(a.srvs().len(), INSTANCES, "{a}");
    assert_eq!(
        a.additionals("A").len(),
        INSTANCES,
        "40 additional A records:\n{a}"
    );
    assert_srv_consistent(&a);
    let ports: BTreeSet<u16> = a.srvs().iter().map(|s| s.port).collect();
    assert_eq!(
        ports,
        (1..=INSTANCES).map(|i| 8000 + i as u16).collect(),
        "{a}"
    );
    check_well_formed(&a, &mut problems);

    // UDP with a 4096-byte EDNS buffer: everything, no TC.
    let big_buf = ["+notcp", "+ignore", "+bufsize=4096", "+stats"];
    let a = dig.must("big.service.mesh", "A", &big_buf).await;
    assert!(!a.truncated(), "{a}");
    assert_eq!(a.transport.as_deref(), Some("UDP"), "{a}");
    assert_eq!(a.answers("A").len(), INSTANCES, "{a}");
    assert!(
        a.edns_udp.is_some(),
        "EDNS in the answer to an EDNS query:\n{a}"
    );
    check_well_formed(&a, &mut problems);
    let a = dig.must("_big._tcp.service.mesh", "SRV", &big_buf).await;
    assert!(!a.truncated(), "{a}");
    assert_eq!(a.srvs().len(), INSTANCES, "{a}");
    assert_eq!(a.additionals("A").len(), INSTANCES, "{a}");
    assert_srv_consistent(&a);
    assert!(a.msg_size.is_some_and(|n| n <= 4096), "{a}");
    check_well_formed(&a, &mut problems);

    // A smaller EDNS size than the SRV answer needs: truncated to that size.
    let a = dig
        .must(
            "_big._tcp.service.mesh",
            "SRV",
            &["+notcp", "+ignore", "+bufsize=1232", "+stats"],
        )
        .await;
    assert!(a.truncated(), "the 40 SRV + A do not fit 1232 bytes:\n{a}");
    assert!(
        a.msg_size.is_some_and(|n| n <= 1232),
        "over 1232 bytes:\n{a}"
    );
    assert!(a.srvs().len() < INSTANCES, "{a}");
    assert!(
        !a.srvs().is_empty(),
        "1232 bytes hold some SRV records:\n{a}"
    );
    assert_srv_consistent(&a);
    check_well_formed(&a, &mut problems);

    // A plain dig (no +ignore) over UDP without EDNS sees TC and retries over TCP.
    let a = dig
        .must("big.service.mesh", "A", &["+notcp", "+noedns", "+stats"])
        .await;
    assert!(a.retried_tcp, "dig retried over TCP:\n{a}");
    assert_eq!(a.transport.as_deref(), Some("TCP"), "{a}");
    assert!(!a.truncated(), "{a}");
    assert_eq!(a.answers("A").len(), INSTANCES, "{a}");

    // The truncations are counted (4 truncated UDP answers above).
    let text = api.metrics().await;
    let after = metric_value(&text, "meshd_dns_truncated_total").unwrap_or_else(|| {
        panic!("no meshd_dns_truncated_total in /metrics:\n{text}");
    });
    let before = truncated_before.unwrap_or(0.0);
    assert!(
        after - before >= 4.0,
        "meshd_dns_truncated_total went from {before} to {after}, expected +4 or more"
    );
    assert!(
        problems.is_empty(),
        "{} malformed answers:\n{}",
        problems.len(),
        problems.join("\n\n")
    );
}
