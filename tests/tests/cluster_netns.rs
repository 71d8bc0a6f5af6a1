//! The network-namespace harness on its own: hosts reach each other over the mesh bridge,
//! the root namespace reaches each host over its control link, a cut (and a partition) stops
//! mesh traffic and nothing else, heal restores it, a process started in a host is the
//! program itself (a SIGKILL reaches it), and dropping the net leaves nothing behind.

use std::time::{Duration, Instant};

use tests::netns::{netns_pids, Net};

const REACH: Duration = Duration::from_secs(3);
const NO_REACH: Duration = Duration::from_millis(600);

#[test]
fn hosts_reach_each_other_and_cut_heal_and_drop_work() {
    let net = Net::new(2).expect("create a 2-host net");
    let id = net.id().to_string();
    let (h0, h1) = (net.host(0).clone(), net.host(1).clone());
    assert_ne!(h0.mesh_ip, h1.mesh_ip);
    assert!(
        !Net::leftovers(&id).is_empty(),
        "the net exists while alive"
    );

    // Mesh: both ways. Control: root -> each host. Root's own bridge address: root <-> host.
    assert!(net.mesh_connected(0, 1, REACH).expect("probe"), "h0 <-> h1");
    for i in 0..2 {
        let h = net.host(i);
        assert!(
            net.udp_delivers(None, Some(i), h.control_ip, REACH)
                .expect("probe"),
            "root -> host {i} control {}",
            h.control_ip
        );
        assert!(
            net.udp_delivers(Some(i), None, h.root_control_ip, REACH)
                .expect("probe"),
            "host {i} -> root over its control link"
        );
        assert!(
            net.udp_delivers(Some(i), None, net.root_mesh_ip(), REACH)
                .expect("probe"),
            "host {i} -> root's mesh address"
        );
    }
    // The control links do not join the hosts to each other.
    assert!(
        !net.udp_delivers(Some(0), Some(1), h1.control_ip, NO_REACH)
            .expect("probe"),
        "h0 must not reach h1's control address"
    );

    // The `ping`-style check through `ip netns exec`, with a tool every machine has (bash's
    // /dev/udp is send-only, so this checks the route exists, not delivery).
    let out = net
        .exec(
            0,
            "bash",
            &["-c", &format!("echo x > /dev/udp/{}/9", h1.mesh_ip)],
        )
        .expect("run bash in h0");
    assert!(out.status.success(), "{out:?}");

    // Cut h1: mesh gone both ways, its control link still up.
    net.cut(1).expect("cut h1");
    assert!(
        !net.udp_delivers(Some(0), Some(1), h1.mesh_ip, NO_REACH)
            .expect("probe"),
        "h0 -> h1 while h1 is cut"
    );
    assert!(
        !net.udp_delivers(Some(1), Some(0), h0.mesh_ip, NO_REACH)
            .expect("probe"),
        "h1 -> h0 while h1 is cut"
    );
    assert!(
        net.udp_delivers(None, Some(1), h1.control_ip, REACH)
            .expect("probe"),
        "root -> h1 control while h1 is cut"
    );
    let out = net
        .exec(
            1,
            "bash",
            &["-c", &format!("echo x > /dev/udp/{}/9", h0.mesh_ip)],
        )
        .expect("run bash in h1");
    assert!(!out.status.success(), "h1 has no route to h0 while cut");

    // Heal.
    net.heal(1).expect("heal h1");
    assert!(
        net.mesh_connected(0, 1, REACH).expect("probe"),
        "h0 <-> h1 after heal"
    );

    // A process in a host: its pid is the program's, and it is in the namespace.
    let mut child = net
        .command(1, "sleep")
        .arg("300")
        .spawn()
        .expect("spawn sleep in h1");
    let pid = child.id();
    let start = Instant::now();
    loop {
        let comm = std::fs::read_to_string(format!("/proc/{pid}/comm")).unwrap_or_default();
        if comm.trim() == "sleep" {
            break;
        }
        assert!(
            start.elapsed() < Duration::from_secs(5),
            "pid {pid} never became `sleep` (comm {comm:?})"
        );
        std::thread::sleep(Duration::from_millis(10));
    }
    assert!(
        netns_pids(&h1.ns).contains(&pid),
        "pid {pid} is in {}: {:?}",
        h1.ns,
        netns_pids(&h1.ns)
    );

    // Drop kills what is left in the namespaces and removes every namespace and link.
    drop(net);
    let status = child.wait().expect("reap sleep");
    assert!(!status.success(), "sleep was killed: {status:?}");
    assert_eq!(Net::leftovers(&id), Vec::<String>::new(), "left after drop");
}

#[test]
fn partition_splits_the_mesh_and_heals() {
    let mut net = Net::new(3).expect("create a 3-host net");
    let id = net.id().to_string();
    assert!(net.mesh_connected(0, 1, REACH).expect("probe"));
    assert!(net.mesh_connected(1, 2, REACH).expect("probe"));

    net.partition(&[0], &[1, 2]).expect("partition");
    assert!(
        net.mesh_connected(1, 2, REACH).expect("probe"),
        "1 <-> 2 on the same side"
    );
    let h1 = net.host(1).mesh_ip;
    assert!(
        !net.udp_delivers(Some(0), Some(1), h1, NO_REACH)
            .expect("probe"),
        "0 -> 1 across the partition"
    );
    assert!(
        !net.udp_delivers(None, Some(2), net.host(2).mesh_ip, NO_REACH)
            .expect("probe"),
        "root mesh address -> 2 across the partition"
    );

    net.heal_partition().expect("heal the partition");
    assert!(net.mesh_connected(0, 1, REACH).expect("probe"));
    assert!(net.mesh_connected(0, 2, REACH).expect("probe"));

    drop(net);
    assert_eq!(Net::leftovers(&id), Vec::<String>::new());
}

#[test]
fn a_panicking_test_still_cleans_up() {
    let mut id = String::new();
    let r = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        let net = Net::new(1).expect("create a 1-host net");
        id = net.id().to_string();
        panic!("on purpose");
    }));
    assert!(r.is_err());
    assert!(!id.is_empty());
    assert_eq!(Net::leftovers(&id), Vec::<String>::new());
}
