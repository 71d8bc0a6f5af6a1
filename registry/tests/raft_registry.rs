//! The replicated registry end to end on one server: writes through Raft, restart from sled,
//! snapshots and log compaction, KV CAS, corruption detection, shutdown.

use std::path::{Path, PathBuf};
use std::time::Duration;

use prometheus_client::encoding::text::encode;
use registry::command::{Command, Register, Response};
use registry::model::{Check, Node, Service, Status};
use registry::raft::NoNetwork;
use registry::{Bootstrap, Consistency, OpenError, Registry, RegistryConfig, State, WriteError};
use tempfile::TempDir;

const ADDR: &str = "127.0.0.1:8301";

fn config(dir: &Path, snapshot_threshold: u64) -> RegistryConfig {
    RegistryConfig {
        data_dir: dir.join("raft"),
        node_id: 1,
        advertise: ADDR.into(),
        snapshot_threshold,
        cache_capacity: 16 << 20,
        bootstrap: Bootstrap::Single,
    }
}

async fn open(cfg: RegistryConfig) -> (Registry, prometheus_client::registry::Registry) {
    let mut metrics = prometheus_client::registry::Registry::default();
    let reg = Registry::open(cfg, &mut metrics, NoNetwork)
        .await
        .expect("open registry");
    (reg, metrics)
}

async fn open_err(cfg: RegistryConfig) -> OpenError {
    let mut metrics = prometheus_client::registry::Registry::default();
    match Registry::open(cfg, &mut metrics, NoNetwork).await {
        Ok(reg) => {
            reg.shutdown().await;
            panic!("open should have failed");
        }
        Err(e) => e,
    }
}

fn metrics_text(m: &prometheus_client::registry::Registry) -> String {
    let mut s = String::new();
    encode(&mut s, m).expect("encode metrics");
    s
}

/// The value of the first sample line starting with `prefix`.
fn sample(text: &str, prefix: &str) -> Option<f64> {
    text.lines()
        .find(|l| l.starts_with(prefix))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse().ok())
}

fn node(name: &str) -> Node {
    Node {
        id: format!("id-{name}"),
        node: name.into(),
        address: format!("10.0.0.{}", name.len()),
        datacenter: "dc1".into(),
        ..Node::default()
    }
}

fn register(i: usize) -> Command {
    Command::Register(Register {
        node: node(&format!("n{}", i % 7)),
        skip_node_update: false,
        service: Some(Service {
            id: format!("svc-{i}"),
            service: format!("web{}", i % 3),
            port: 8000 + (i % 100) as u16,
            tags: vec![format!("t{}", i % 4)],
            ..Service::default()
        }),
        checks: vec![Check {
            check_id: format!("chk-{i}"),
            name: format!("check {i}"),
            service_id: format!("svc-{i}"),
            status: Status::Critical,
            check_type: "ttl".into(),
            ..Check::default()
        }],
        replace_service_checks: false,
    })
}

fn kv_set(key: &str, value: &str, cas: Option<u64>) -> Command {
    Command::KvSet {
        key: key.into(),
        value: value.as_bytes().to_vec(),
        flags: 7,
        cas,
    }
}

/// Command `i` of a mixed workload and the response it must get.
fn mixed(i: usize) -> (Command, Response) {
    match i % 6 {
        0 => (register(i), Response::Done),
        1 => (
            kv_set(&format!("app/k{}", i % 20), &format!("v{i}"), None),
            Response::Cas(true),
        ),
        // The check registered two commands ago.
        2 => (
            Command::UpdateCheck {
                node: format!("n{}", (i - 2) % 7),
                check_id: format!("chk-{}", i - 2),
                status: Status::Passing,
                output: format!("ok {i}"),
            },
            Response::Done,
        ),
        3 => (
            Command::KvDelete {
                key: format!("app/k{}", (i - 2) % 20),
                recurse: false,
                cas: None,
            },
            Response::Cas(true),
        ),
        4 => (
            Command::UpdateCheck {
                node: "nowhere".into(),
                check_id: format!("missing-{i}"),
                status: Status::Warning,
                output: String::new(),
            },
            Response::Rejected(format!(
                "update check: no check \"missing-{i}\" on node \"nowhere\""
            )),
        ),
        _ => (
            Command::Deregister {
                node: format!("n{}", (i - 5) % 7),
                service_id: Some(format!("svc-{}", i - 5)),
                check_id: None,
            },
            Response::Done,
        ),
    }
}

/// Writes `n` mixed commands, checks every response and that indexes increase; returns the
/// state the same commands give when applied directly at the indexes Raft assigned.
async fn write_mixed(reg: &Registry, range: std::ops::Range<usize>, mut reference: State) -> State {
    let mut last = 0;
    for i in range {
        let (cmd, want) = mixed(i);
        let applied = reg.write(cmd.clone()).await.expect("write");
        assert_eq!(applied.response, want, "response of command {i}");
        assert!(applied.index > last, "index {} after {last}", applied.index);
        last = applied.index;
        reference.apply(applied.index, &cmd);
    }
    reference
}

/// Opens the registry's sled database directly, waiting for the closed registry to release it
/// (sled drops its file lock shortly after the last handle, from its epoch reclamation).
async fn open_sled(dir: &Path) -> sled::Db {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    loop {
        match sled::open(dir) {
            Ok(db) => return db,
            Err(e) if tokio::time::Instant::now() < deadline => {
                assert!(e.to_string().contains("could not acquire lock"), "{e}");
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            Err(e) => panic!("open sled at {}: {e}", dir.display()),
        }
    }
}

fn data_dir(tmp: &TempDir) -> PathBuf {
    tmp.path().join("raft")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn writes_survive_a_restart() {
    let tmp = TempDir::new().unwrap();
    let (reg, metrics) = open(config(tmp.path(), 10_000)).await;

    let info = reg.leader_info();
    assert_eq!(info.leader.as_deref(), Some(ADDR));
    assert_eq!(info.peers, vec![ADDR.to_string()]);
    assert_eq!(info.last_contact, Duration::ZERO);

    let reference = write_mixed(&reg, 0..300, State::new()).await;
    assert_eq!(*reg.read(), reference, "state after 300 writes");
    reg.read_barrier(Consistency::Default)
        .await
        .expect("consistent read");
    reg.read_barrier(Consistency::Stale)
        .await
        .expect("stale read");
    let applied = reg.applied_index();
    let state_applied = reg.read().applied_index();
    assert!(applied >= 300 && state_applied <= applied);
    assert_eq!(*reg.subscribe().borrow(), applied);

    let text = metrics_text(&metrics);
    assert!(
        sample(
            &text,
            "meshd_registry_writes_total{kind=\"register\",outcome=\"ok\"}"
        ) == Some(50.0),
        "{text}"
    );
    assert_eq!(
        sample(
            &text,
            "meshd_registry_writes_total{kind=\"update_check\",outcome=\"rejected\"}"
        ),
        Some(50.0)
    );
    assert_eq!(sample(&text, "meshd_raft_is_leader"), Some(1.0));
    assert!(text.contains("meshd_raft_write_duration_seconds_bucket"));
    assert!(text.contains("meshd_registry_apply_duration_seconds_count{kind=\"kv_delete\"} 50"));

    reg.shutdown().await;
    reg.shutdown().await; // idempotent
    assert!(matches!(
        reg.write(mixed(1).0).await,
        Err(WriteError::Shutdown)
    ));
    assert!(reg.read_barrier(Consistency::Consistent).await.is_err());
    drop(reg);

    let (reg, _m) = open(config(tmp.path(), 10_000)).await;
    assert_eq!(*reg.read(), reference, "state after restart");
    assert_eq!(reg.read().applied_index(), state_applied);
    // A server that led before the restart does not resume its term: it stands again, and the
    // new term's blank entry is the one after the last applied before the restart.
    assert!(
        reg.wait_applied(applied + 1, Duration::from_secs(10)).await,
        "no new term after the restart: applied {}",
        reg.applied_index()
    );
    let applied = reg.applied_index();
    let next = reg
        .write(kv_set("after/restart", "x", None))
        .await
        .expect("write");
    assert!(
        next.index > applied,
        "index {} after restart <= {applied}",
        next.index
    );
    assert_eq!(next.response, Response::Cas(true));

    // More writes after the restart keep matching the reference.
    let mut reference = reference;
    reference.apply(next.index, &kv_set("after/restart", "x", None));
    let reference = write_mixed(&reg, 300..330, reference).await;
    assert_eq!(*reg.read(), reference);
    reg.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn snapshots_compact_the_log_and_restore_the_state() {
    let tmp = TempDir::new().unwrap();
    let (reg, metrics) = open(config(tmp.path(), 50)).await;
    let mut reference = State::new();
    let mut rx = reg.subscribe();
    for i in 0..500 {
        let cmd = kv_set(&format!("snap/{}", i % 37), &format!("value {i}"), None);
        let applied = reg.write(cmd.clone()).await.expect("write");
        reference.apply(applied.index, &cmd);
    }
    assert!(rx.has_changed().unwrap());
    assert!(*rx.borrow_and_update() >= 500);
    assert_eq!(*reg.read(), reference);

    // Snapshots are built in the background: wait for the one covering most of the log.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    loop {
        let stats = reg.log_stats().expect("log stats");
        if reg.snapshot_index().unwrap_or(0) >= 450 && stats.last_purged_index.unwrap_or(0) >= 400 {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "no compaction: snapshot {:?}, {stats:?}",
            reg.snapshot_index()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let stats = reg.log_stats().unwrap();
    assert!(stats.entries <= 110, "log not compacted: {stats:?}");
    assert_eq!(stats.first_index, stats.last_purged_index.map(|p| p + 1));
    let text = metrics_text(&metrics);
    assert!(
        sample(&text, "meshd_raft_snapshots_total{op=\"built\"}").unwrap_or(0.0) >= 9.0,
        "{text}"
    );
    assert!(
        sample(&text, "meshd_raft_log_entries_purged_total").unwrap_or(0.0) >= 400.0,
        "{text}"
    );
    let applied = reg.applied_index();
    reg.shutdown().await;
    drop(reg);

    let (reg, _m) = open(config(tmp.path(), 50)).await;
    assert_eq!(
        *reg.read(),
        reference,
        "state after restart from snapshot + log"
    );
    assert!(reg.applied_index() >= applied);
    let w = reg.write(kv_set("snap/after", "1", None)).await.unwrap();
    assert!(w.index > applied);
    reg.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kv_cas_over_raft() {
    let tmp = TempDir::new().unwrap();
    let (reg, _m) = open(config(tmp.path(), 1000)).await;

    let first = reg.write(kv_set("lock", "a", Some(0))).await.unwrap();
    assert_eq!(first.response, Response::Cas(true));
    let again = reg.write(kv_set("lock", "b", Some(0))).await.unwrap();
    assert_eq!(
        again.response,
        Response::Cas(false),
        "cas=0 creates only once"
    );
    let wrong = reg
        .write(kv_set("lock", "c", Some(first.index + 1000)))
        .await
        .unwrap();
    assert_eq!(
        wrong.response,
        Response::Cas(false),
        "cas with a wrong index fails"
    );
    {
        let st = reg.read();
        let e = st.kv_get("lock").expect("entry");
        assert_eq!(e.value, b"a");
        assert_eq!((e.create_index, e.modify_index), (first.index, first.index));
    }
    let right = reg
        .write(kv_set("lock", "d", Some(first.index)))
        .await
        .unwrap();
    assert_eq!(right.response, Response::Cas(true));
    assert_eq!(reg.read().kv_get("lock").unwrap().modify_index, right.index);

    let del = |cas| Command::KvDelete {
        key: "lock".into(),
        recurse: false,
        cas: Some(cas),
    };
    assert_eq!(
        reg.write(del(first.index)).await.unwrap().response,
        Response::Cas(false)
    );
    assert!(reg.read().kv_get("lock").is_some());
    assert_eq!(
        reg.write(del(right.index)).await.unwrap().response,
        Response::Cas(true)
    );
    assert!(reg.read().kv_get("lock").is_none());
    reg.shutdown().await;
}

/// Writes some entries (with a snapshot) and stops, returning the data dir.
async fn populated(tmp: &TempDir) -> PathBuf {
    let (reg, _m) = open(config(tmp.path(), 10)).await;
    for i in 0..40 {
        reg.write(kv_set(&format!("k{i}"), "v", None))
            .await
            .unwrap();
    }
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while reg.snapshot_index().is_none() {
        assert!(tokio::time::Instant::now() < deadline, "no snapshot built");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    reg.shutdown().await;
    drop(reg);
    data_dir(tmp)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_corrupt_snapshot_is_refused() {
    let tmp = TempDir::new().unwrap();
    let dir = populated(&tmp).await;
    {
        let db = open_sled(&dir).await;
        let t = db.open_tree("snapshot").unwrap();
        let mut data = t.get("data").unwrap().expect("stored snapshot").to_vec();
        let mid = data.len() / 2;
        data[mid] ^= 0x20;
        t.insert("data", data).unwrap();
        db.flush().unwrap();
    }
    match open_err(config(tmp.path(), 10)).await {
        OpenError::Corrupt { path, reason } => {
            assert_eq!(path, dir);
            assert!(
                reason.contains("snapshot") && reason.contains("checksum"),
                "{reason}"
            );
        }
        other => panic!("unexpected error: {other}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_corrupt_log_entry_is_refused() {
    let tmp = TempDir::new().unwrap();
    let dir = populated(&tmp).await;
    let index = {
        let db = open_sled(&dir).await;
        let t = db.open_tree("logs").unwrap();
        let (k, _) = t.last().unwrap().expect("a log entry");
        t.insert(&k, &b"{not json"[..]).unwrap();
        db.flush().unwrap();
        u64::from_be_bytes(k.as_ref().try_into().unwrap())
    };
    match open_err(config(tmp.path(), 10)).await {
        OpenError::Corrupt { reason, .. } => {
            assert!(
                reason.contains(&format!("log entry at index {index}")),
                "{reason}"
            );
        }
        other => panic!("unexpected error: {other}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_missing_log_entry_is_refused() {
    let tmp = TempDir::new().unwrap();
    let dir = populated(&tmp).await;
    {
        let db = open_sled(&dir).await;
        let t = db.open_tree("logs").unwrap();
        let (k, _) = t.first().unwrap().expect("a log entry");
        let next = u64::from_be_bytes(k.as_ref().try_into().unwrap()) + 1;
        t.remove(next.to_be_bytes())
            .unwrap()
            .expect("entry after the first");
        db.flush().unwrap();
    }
    match open_err(config(tmp.path(), 10)).await {
        OpenError::Corrupt { reason, .. } => assert!(reason.contains("is missing"), "{reason}"),
        other => panic!("unexpected error: {other}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn another_node_id_is_refused_and_a_new_address_is_kept() {
    let tmp = TempDir::new().unwrap();
    let (reg, _m) = open(config(tmp.path(), 100)).await;
    reg.write(kv_set("a", "b", None)).await.unwrap();
    reg.shutdown().await;
    drop(reg);

    let mut other = config(tmp.path(), 100);
    other.node_id = 2;
    match open_err(other).await {
        OpenError::Raft(msg) => assert!(msg.contains("not a voter"), "{msg}"),
        e => panic!("unexpected error: {e}"),
    }

    let mut moved = config(tmp.path(), 100);
    moved.advertise = "127.0.0.2:8301".into();
    let (reg, _m) = open(moved).await;
    let info = reg.leader_info();
    assert_eq!(info.leader.as_deref(), Some("127.0.0.2:8301"));
    assert_eq!(info.peers, vec!["127.0.0.2:8301".to_string()]);
    assert!(reg.read().kv_get("a").is_some());
    reg.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_zero_snapshot_threshold_is_refused() {
    let tmp = TempDir::new().unwrap();
    match open_err(config(tmp.path(), 0)).await {
        OpenError::Raft(msg) => assert!(msg.contains("snapshot_threshold"), "{msg}"),
        e => panic!("unexpected error: {e}"),
    }
}
