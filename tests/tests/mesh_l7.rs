//! Layer-7 proxying across hosts (issue 15), on the three-host harness of [`tests::l7`]: `api`
//! v1 on B and v2 on C (HTTP/1.1 + h2c backends that echo what they saw), `api-backup` on C,
//! `api-new` on B; callers on A through `api`'s virtual IP, with `service-defaults`
//! `Protocol: http | grpc` and Consul's `service-router`, `service-splitter` and
//! `service-resolver` entries written with `PUT /v1/config`.
//!
//! - splits, routes (header, path prefix with rewrite, regex, query parameter, header rules),
//!   subsets by tag and by meta, and per-request balancing on one keep-alive connection;
//! - failover to another service when every v1 instance is critical, and a resolver redirect;
//! - h2c with per-stream balancing, real gRPC (unary, bidi streaming, error status,
//!   trailers) and WebSocket peers from PyPI, trailers, and a backend reset mid-response
//!   that reaches the client as an error;
//! - 1 GiB each way intact while every meshd stays under 100 MiB resident;
//! - bad entries refused with a 400 naming the field, nothing stored;
//! - tunnel streams kept between exchanges, and every exchange on a kept stream checked
//!   against the intentions again.

use std::collections::{BTreeMap, BTreeSet};
use std::net::SocketAddr;
use std::path::Path;
use std::time::Duration;

use serde_json::{json, Value};
use tests::l7::{python_tool, tally, L7Mesh, API_PORT};
use tests::mesh::{metric_sum, virtual_ip, PROPAGATE};
use tests::sys::RssSampler;
use tests::{pattern, wait_until};

const BACKEND: &str = env!("CARGO_BIN_EXE_l7backend");
const GRPC_PORT: u16 = 18090;
const WS_PORT: u16 = 18091;

async fn start() -> L7Mesh {
    L7Mesh::start(Path::new(BACKEND)).await
}

fn resolver_by_tag(extra: Value) -> Value {
    let mut r = json!({
        "Kind": "service-resolver", "Name": "api", "DefaultSubset": "v1",
        "Subsets": {
            "v1": {"Filter": "\"v1\" in Service.Tags", "OnlyPassing": true},
            "v2": {"Filter": "\"v2\" in Service.Tags", "OnlyPassing": true},
            "by-meta": {"Filter": "Service.Meta.version == \"v2\""},
        },
    });
    if let (Some(r), Some(e)) = (r.as_object_mut(), extra.as_object()) {
        r.extend(e.clone());
    }
    r
}

fn only(t: &BTreeMap<String, usize>, instance: &str) -> bool {
    t.len() == 1 && t.contains_key(instance)
}

/// Per-request balancing on one connection, a 90/10 split, the router's matches and rewrites,
/// and a subset chosen by meta.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn splits_routes_and_subsets_choose_the_instance_of_each_request() {
    let mesh = start().await;
    let vip = virtual_ip(mesh.a(), "api").await;
    let base = format!("http://{vip}:{API_PORT}");
    mesh.protocol(&["api", "api-backup", "api-new"], "http")
        .await;

    // One keep-alive connection (curl with 100 URLs, by the DNS name), both instances.
    let by_name = format!("http://api.virtual.mesh:{API_PORT}/keep-alive");
    let urls = vec![by_name.clone(); 100];
    let mut last = Vec::new();
    let both = tests::wait::poll_until(PROPAGATE, || {
        let r = mesh.requests(mesh.a(), &urls, &[]);
        let ok = matches!(&r, Ok(r) if tally(r).len() == 2);
        last = r
            .map(|r| tally(&r).into_iter().collect())
            .unwrap_or_default();
        async move { ok }
    })
    .await;
    assert!(both, "one connection of 100 requests reached only {last:?}");
    let r = mesh.requests(mesh.a(), &urls, &[]).expect("100 requests");
    let connects: u32 = r.iter().map(|x| x.connects).sum();
    assert_eq!(
        connects, 1,
        "curl opened {connects} connections for 100 requests"
    );
    assert!(r.iter().all(|x| x.status == 200 && x.version == "1.1"));
    assert_eq!(tally(&r).len(), 2, "{:?}", tally(&r));

    // Resolver first (the splitter and router name its subsets), then splitter, then router.
    mesh.config(resolver_by_tag(json!({}))).await;
    mesh.config(
        json!({"Kind": "service-splitter", "Name": "api", "Splits": [
        {"Weight": 90, "ServiceSubset": "v1"},
        {"Weight": 10, "ServiceSubset": "v2"}]}),
    )
    .await;
    mesh.config(json!({"Kind": "service-router", "Name": "api", "Routes": [
        {"Match": {"HTTP": {"Header": [{"Name": "x-canary", "Exact": "1"}]}},
         "Destination": {"ServiceSubset": "v2"}},
        {"Match": {"HTTP": {"PathPrefix": "/api/v2/"}},
         "Destination": {"ServiceSubset": "v2", "PrefixRewrite": "/",
                         "RequestHeaders": {"Set": {"x-routed-by": "prefix"}},
                         "ResponseHeaders": {"Add": {"x-route": "api-v2"}}}},
        {"Match": {"HTTP": {"PathRegex": "^/re/[0-9]+$", "Methods": ["GET"]}},
         "Destination": {"ServiceSubset": "v2"}},
        {"Match": {"HTTP": {"PathExact": "/exact",
                            "QueryParam": [{"Name": "canary", "Exact": "yes"}]}},
         "Destination": {"ServiceSubset": "v2"}}]}))
        .await;
    // The router was written last: once it acts on A, the splitter and resolver do too.
    let canary = ["-H", "x-canary: 1"];
    mesh.wait_tally(
        "x-canary: 1 reaches only v2",
        &format!("{base}/c"),
        &canary,
        |t| only(t, "api-v2"),
    )
    .await;
    let r = mesh.many(mesh.a(), 100, &format!("{base}/c"), &canary, "canary");
    assert!(only(&tally(&r), "api-v2"), "x-canary: 1 {:?}", tally(&r));

    let r = mesh.many(mesh.a(), 2000, &format!("{base}/split"), &[], "split");
    let t = tally(&r);
    let v2 = t.get("api-v2").copied().unwrap_or(0);
    assert_eq!(t.values().sum::<usize>(), 2000, "{t:?}");
    assert!(
        (160..=240).contains(&v2),
        "a 90/10 split gave v2 {v2} of 2,000 (want 10 % ± 2 %): {t:?}"
    );

    let r = mesh.many(
        mesh.a(),
        20,
        &format!("{base}/api/v2/items/7?q=1"),
        &[],
        "prefix",
    );
    for x in &r {
        assert_eq!(x.instance(), "api-v2", "/api/v2/ reaches v2: {x:?}");
        assert_eq!(x.path(), "/items/7", "PrefixRewrite /api/v2/ -> /: {x:?}");
        assert_eq!(
            x.body["query"], "q=1",
            "the query survives the rewrite: {x:?}"
        );
        assert_eq!(
            x.seen_header("x-routed-by").as_deref(),
            Some("prefix"),
            "{x:?}"
        );
        assert_eq!(x.header("x-route").as_deref(), Some("api-v2"), "{x:?}");
    }
    let r = mesh.many(mesh.a(), 20, &format!("{base}/re/42"), &[], "regex");
    assert!(only(&tally(&r), "api-v2"), "GET /re/42: {:?}", tally(&r));
    let r = mesh.many(
        mesh.a(),
        40,
        &format!("{base}/re/42"),
        &["-X", "POST"],
        "regex",
    );
    assert!(
        tally(&r).contains_key("api-v1"),
        "POST /re/42 is split: {:?}",
        tally(&r)
    );
    let r = mesh.many(
        mesh.a(),
        20,
        &format!("{base}/exact?canary=yes"),
        &[],
        "query",
    );
    assert!(only(&tally(&r), "api-v2"), "?canary=yes: {:?}", tally(&r));
    let r = mesh.many(
        mesh.a(),
        40,
        &format!("{base}/exact?canary=no"),
        &[],
        "query",
    );
    assert!(
        tally(&r).contains_key("api-v1"),
        "?canary=no is split: {:?}",
        tally(&r)
    );

    // A subset chosen by meta: everything that no route takes goes to `by-meta`.
    mesh.config(
        json!({"Kind": "service-splitter", "Name": "api", "Splits": [
        {"Weight": 100, "ServiceSubset": "by-meta"}]}),
    )
    .await;
    mesh.wait_tally(
        "the by-meta subset takes every request",
        &format!("{base}/m"),
        &[],
        |t| only(t, "api-v2"),
    )
    .await;
    let r = mesh.many(mesh.a(), 100, &format!("{base}/m"), &[], "by-meta");
    assert!(
        only(&tally(&r), "api-v2"),
        "Service.Meta.version == v2: {:?}",
        tally(&r)
    );
}

/// Failover to `api-backup` when every v1 instance is critical, back when it passes again,
/// then a resolver that redirects `api` to `api-new`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failover_and_redirect_send_requests_to_another_service() {
    let mesh = start().await;
    let url = format!("http://{}:{API_PORT}/f", virtual_ip(mesh.a(), "api").await);
    mesh.protocol(&["api", "api-backup", "api-new"], "http")
        .await;
    mesh.config(resolver_by_tag(
        json!({"Failover": {"v1": {"Service": "api-backup"}}}),
    ))
    .await;
    mesh.wait_tally(
        "the default subset v1 takes every request",
        &url,
        &[],
        |t| only(t, "api-v1"),
    )
    .await;

    mesh.set_check(1, "api-v1-ttl", false).await;
    mesh.wait_tally("requests fail over to api-backup", &url, &[], |t| {
        only(t, "api-backup")
    })
    .await;
    let r = mesh.many(mesh.a(), 100, &url, &[], "failover");
    assert!(
        only(&tally(&r), "api-backup"),
        "v1 critical: failover goes to api-backup, not to v2: {:?}",
        tally(&r)
    );

    mesh.set_check(1, "api-v1-ttl", true).await;
    mesh.wait_tally("v1 takes the requests back", &url, &[], |t| {
        only(t, "api-v1")
    })
    .await;

    mesh.config(json!({"Kind": "service-resolver", "Name": "api",
                       "Redirect": {"Service": "api-new"}}))
        .await;
    mesh.wait_tally("the redirect sends api to api-new", &url, &[], |t| {
        only(t, "api-new")
    })
    .await;
    let r = mesh.many(mesh.a(), 100, &url, &[], "redirect");
    assert!(only(&tally(&r), "api-new"), "redirect: {:?}", tally(&r));
    for x in &r {
        assert_eq!(x.path(), "/f", "{x:?}");
    }
}

/// h2c with requests of one connection balanced per stream, trailers, gRPC and WebSocket
/// through the mesh, and a backend reset mid-response seen by the client as an error.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn h2c_grpc_websocket_and_resets_pass_through_the_mesh() {
    let mut mesh = start().await;
    mesh.protocol(&["api", "ws"], "http").await;
    mesh.protocol(&["greeter"], "grpc").await;
    mesh.start_python(1, "grpc_peer.py", "greeter", "greeter-b", GRPC_PORT)
        .await;
    mesh.start_python(2, "grpc_peer.py", "greeter", "greeter-c", GRPC_PORT)
        .await;
    mesh.start_python(1, "ws_peer.py", "ws", "ws-b", WS_PORT)
        .await;
    let api = format!("http://{}:{API_PORT}", virtual_ip(mesh.a(), "api").await);

    // h2c, prior knowledge: one connection, 40 streams, both instances. (curl 7.88 sends only
    // the first of several URLs given with --http2-prior-knowledge: hyper's client instead.)
    let h2 = ["--http2-prior-knowledge"];
    let api_addr: SocketAddr = api
        .trim_start_matches("http://")
        .parse()
        .expect("api address");
    wait_until(
        PROPAGATE,
        "one h2c connection reaches both instances",
        || async {
            matches!(h2c_instances(mesh.a().ns(), api_addr, "/h2", 40).await,
                     Ok(r) if r.iter().collect::<BTreeSet<_>>().len() == 2)
        },
    )
    .await;

    // Trailers arrive, over HTTP/2 and over HTTP/1.1 (chunked).
    let want = pattern::sha256_hex(300_000);
    for proto in [&h2[..], &[][..]] {
        let mut args = vec!["-sS", "--max-time", "20", "-H", "te: trailers", "-D", "-"];
        args.extend_from_slice(proto);
        args.extend(["-o", "/dev/null"]);
        let url = format!("{api}/bytes/300000");
        args.push(&url);
        let head = mesh.curl(mesh.a(), &args).expect("trailers");
        assert!(
            head.to_ascii_lowercase()
                .contains(&format!("x-sha256: {want}")),
            "trailer x-sha256 {proto:?}: {head}"
        );
    }

    // gRPC: unary, bidi in lockstep, an error status with trailing metadata; the channel's
    // calls spread over both instances.
    let greeter = format!("{}:{GRPC_PORT}", virtual_ip(mesh.a(), "greeter").await);
    let out = mesh
        .cluster
        .net()
        .command(mesh.a().host(), "python3")
        .arg(python_tool("grpc_peer.py"))
        .args(["client", &greeter])
        .output()
        .expect("run the gRPC client");
    let text = String::from_utf8_lossy(&out.stdout).to_string();
    assert!(
        out.status.success(),
        "gRPC through the mesh: {text}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        text.contains("greeter-b") && text.contains("greeter-c"),
        "gRPC calls on one channel reach both instances: {text}"
    );

    // WebSocket: the upgrade, text and binary echoes, a burst, a clean close.
    let ws = format!("ws://{}:{WS_PORT}/ws", virtual_ip(mesh.a(), "ws").await);
    let out = mesh
        .cluster
        .net()
        .command(mesh.a().host(), "python3")
        .arg(python_tool("ws_peer.py"))
        .args(["client", &ws])
        .output()
        .expect("run the WebSocket client");
    assert!(
        out.status.success(),
        "WebSocket through the mesh: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );

    // A reset after 100,000 of 165,536 promised bytes, made once the client holds those bytes,
    // is an error, never a short success.
    for (i, h2) in [false, true].into_iter().cycle().take(10).enumerate() {
        let token = format!("cut-{i}");
        let how = cut_mid_response(&mesh, api_addr, h2, &token)
            .await
            .unwrap_or_else(|e| panic!("a reset mid-response (HTTP/2: {h2}): {e}"));
        assert!(how.starts_with("error"), "{how}");
    }
    // The instances still answer afterwards.
    let r = mesh.many(mesh.a(), 10, &format!("{api}/after"), &[], "after resets");
    assert!(r.iter().all(|x| x.status == 200), "{r:?}");
}

/// 1 GiB uploaded and 1 GiB downloaded through an `http` service arrive intact (SHA-256),
/// while every meshd stays under 100 MiB resident.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_gibibyte_each_way_arrives_intact_while_meshd_stays_small() {
    const GIB: u64 = 1 << 30;
    const MAX_RSS_KIB: u64 = 100 * 1024;
    let mesh = start().await;
    mesh.protocol(&["api"], "http").await;
    let api = format!("http://{}:{API_PORT}", virtual_ip(mesh.a(), "api").await);
    let want = tokio::task::spawn_blocking(|| pattern::sha256_hex(GIB));
    // Wait until the L7 path answers: the backend's JSON through the virtual IP.
    wait_until(PROPAGATE, "api answers through its virtual IP", || async {
        matches!(mesh.requests(mesh.a(), &[format!("{api}/ready")], &[]),
                 Ok(r) if r[0].status == 200)
    })
    .await;
    let pids: Vec<u32> = [mesh.a(), mesh.b(), mesh.c()]
        .iter()
        .map(|n| n.pid().expect("meshd runs"))
        .collect();
    let sampler = RssSampler::start(pids);
    let want = want.await.expect("the expected digest");

    let up = mesh
        .upload(mesh.a(), &format!("{api}/sha256"), GIB, 280)
        .await
        .unwrap_or_else(|e| panic!("upload 1 GiB: {e}\n{}", mesh.a().log()));
    assert_eq!(up["bytes"], GIB, "the backend got {up}");
    assert_eq!(up["sha256"], want.as_str(), "the upload arrived different");

    let (n, got) = mesh
        .download(mesh.a(), &format!("{api}/bytes/{GIB}"), &[], 280)
        .await
        .unwrap_or_else(|e| panic!("download 1 GiB: {e}\n{}", mesh.a().log()));
    assert_eq!(n, GIB, "downloaded {n} bytes");
    assert_eq!(got, want, "the download arrived different");

    let max = sampler.max_kib();
    for (name, kib) in ["A", "B", "C"].iter().zip(&max) {
        assert!(*kib > 0, "no RSS sample of meshd on {name}");
        assert!(
            *kib < MAX_RSS_KIB,
            "meshd on {name} reached {} MiB resident during the transfers",
            kib / 1024
        );
    }
    eprintln!("meshd max RSS during 2 GiB: A/B/C {max:?} KiB");
}

/// Bad entries: `PUT /v1/config` answers 400 naming the field, and no node stores anything.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_config_entries_are_refused_naming_the_field_and_nothing_is_stored() {
    let mesh = start().await;
    mesh.protocol(&["api", "api-new"], "http").await;
    mesh.protocol(&["db"], "tcp").await;
    let tags = |name: &str| json!({"Filter": format!("\"{name}\" in Service.Tags")});
    let bad: Vec<(&str, Value, &[&str])> = vec![
        (
            "an unknown field in a route match",
            json!({"Kind": "service-router", "Name": "api", "Routes": [
             {"Match": {"HTTP": {"PathPrefix": "/x", "PathPrefx": "/y"}}}]}),
            &["PathPrefx"],
        ),
        (
            "an unknown top-level field",
            json!({"Kind": "service-splitter", "Name": "api", "Splitz": []}),
            &["Splitz"],
        ),
        (
            "a regex that does not compile",
            json!({"Kind": "service-router", "Name": "api", "Routes": [
             {"Match": {"HTTP": {"PathRegex": "^/(unclosed[$"}},
              "Destination": {"Service": "api"}}]}),
            &["PathRegex"],
        ),
        (
            "weights summing to 95",
            json!({"Kind": "service-splitter", "Name": "api", "Splits": [
             {"Weight": 90, "Service": "api"}, {"Weight": 5, "Service": "api-new"}]}),
            &["weight"],
        ),
        (
            "a router for a tcp service",
            json!({"Kind": "service-router", "Name": "db", "Routes": [
             {"Match": {"HTTP": {"PathPrefix": "/"}}, "Destination": {"Service": "db"}}]}),
            &["protocol"],
        ),
        (
            "a subset filter that does not parse",
            json!({"Kind": "service-resolver", "Name": "api", "Subsets": {
             "v1": tags("v1"), "v2": {"Filter": "\"v2\" in Service.Tags and"}}}),
            &["Filter"],
        ),
        (
            "an unknown field in a subset",
            json!({"Kind": "service-resolver", "Name": "api", "Subsets": {
             "v1": {"Filtr": "\"v1\" in Service.Tags"}}}),
            &["Filtr"],
        ),
    ];
    for (what, entry, names) in &bad {
        for node in [mesh.a(), mesh.b()] {
            let r = mesh.put_config(node, entry).await;
            let msg = r.text();
            assert_eq!(
                r.status,
                400,
                "{what} on {}: {} {msg}",
                node.name(),
                r.status
            );
            let lower = msg.to_ascii_lowercase();
            assert!(
                names
                    .iter()
                    .any(|n| lower.contains(&n.to_ascii_lowercase())),
                "{what}: the message names none of {names:?}: {msg}"
            );
        }
    }

    // A good entry written after the bad ones: once every node has it, every node has seen
    // whatever the bad writes might have left.
    mesh.config(
        json!({"Kind": "service-resolver", "Name": "api-new", "DefaultSubset": "v1",
                       "Subsets": {"v1": tags("v1")}}),
    )
    .await;
    for node in [mesh.a(), mesh.b(), mesh.c()] {
        wait_until(
            PROPAGATE,
            &format!("{} has the good entry", node.name()),
            || async {
                node.api()
                    .get("/v1/config/service-resolver/api-new?stale")
                    .await
                    .status
                    == 200
            },
        )
        .await;
        for kind in ["service-router", "service-splitter"] {
            let r = node.api().get(&format!("/v1/config/{kind}?stale")).await;
            assert_eq!(r.json(), json!([]), "{} stores a {kind}", node.name());
        }
        let r = node.api().get("/v1/config/service-resolver?stale").await;
        let names: Vec<String> = r
            .json()
            .as_array()
            .map(|a| {
                a.iter()
                    .filter_map(|e| e["Name"].as_str().map(str::to_string))
                    .collect()
            })
            .unwrap_or_default();
        assert_eq!(names, vec!["api-new"], "{} resolvers", node.name());
        for path in [
            "service-router/api",
            "service-router/db",
            "service-splitter/api",
            "service-resolver/api",
        ] {
            let r = node.api().get(&format!("/v1/config/{path}?stale")).await;
            assert_eq!(r.status, 404, "{} has {path}: {}", node.name(), r.text());
        }
    }
}

/// Exchanges with another host's instance go on tunnel streams kept from earlier ones, and
/// the destination checks each exchange on a kept stream against the intentions: a deny
/// intention refuses the very next request on a stream opened while it was allowed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kept_streams_carry_later_exchanges_each_checked_against_the_intentions() {
    let owned = start().await;
    let mesh = &owned;
    let vip = virtual_ip(mesh.a(), "api").await;
    let url = format!("http://{vip}:{API_PORT}/kept");
    mesh.protocol(&["api"], "http").await;
    mesh.wait_tally("api at layer 7 from A", &url, &[], |t| t.len() == 2)
        .await;
    let streams = |stream: &'static str| async move {
        let m = mesh.a().api().metrics().await;
        metric_sum(
            &m,
            "meshd_proxy_http_tunnel_streams_total",
            &[("stream", stream)],
        )
    };
    let opened = streams("opened").await;
    let r = mesh.many(mesh.a(), 200, &url, &[], "sequential requests");
    assert!(r.iter().all(|x| x.status == 200), "{:?}", tally(&r));
    let (opened_after, reused) = (streams("opened").await, streams("reused").await);
    assert_eq!(
        opened_after,
        opened,
        "200 sequential requests opened {} new streams",
        opened_after - opened
    );
    assert!(reused >= 200.0, "{reused} exchanges on kept streams");

    // Deny every caller of api: the first refusal comes on a kept stream (no stream opened
    // for it), as the destination's answer.
    mesh.a()
        .api()
        .put_json(
            "/v1/connect/intentions/exact?source=*&destination=api",
            &json!({"Action": "deny"}),
        )
        .await
        .expect_status(200);
    let one = vec![url.clone()];
    let refused = tests::wait_for(
        PROPAGATE,
        "the deny intention refuses a request",
        || async {
            let before = streams("opened").await;
            let r = mesh.requests(mesh.a(), &one, &[]).ok()?;
            let after = streams("opened").await;
            (r[0].status != 200).then_some((r[0].clone(), after - before))
        },
    )
    .await;
    assert_eq!(refused.0.status, 403, "{refused:?}");
    assert_eq!(
        refused.0.header("x-meshd-error").as_deref(),
        Some("refused_by_destination")
    );
    assert_eq!(refused.1, 0.0, "the refused request opened a stream");
    // Later requests, on kept streams or new ones, are refused too.
    let r = mesh.many(mesh.a(), 20, &url, &[], "requests after the deny");
    assert!(r.iter().all(|x| x.status == 403), "{:?}", tally(&r));
}

/// GETs `/reset-after/100000?token=TOKEN` through `addr` from A (HTTP/2 with prior knowledge,
/// or HTTP/1.1), reads the 100,000 bytes the backend sends, then has it reset the response
/// (`/cut/TOKEN` on both instances' hosts) and says how the rest of the body ended.
async fn cut_mid_response(
    mesh: &L7Mesh,
    addr: SocketAddr,
    h2: bool,
    token: &str,
) -> Result<String, String> {
    use http_body_util::BodyExt;
    const SENT: usize = 100_000;
    let tcp = tests::mesh::connect_in(mesh.a().ns(), addr)
        .await
        .map_err(|e| e.to_string())?;
    let io = hyper_util::rt::TokioIo::new(tcp);
    let req = hyper::Request::get(format!("http://{addr}/reset-after/{SENT}?token={token}"))
        .body(http_body_util::Empty::<bytes::Bytes>::new())
        .map_err(|e| e.to_string())?;
    let e = |e: hyper::Error| e.to_string();
    let resp = if h2 {
        let (mut sender, conn) =
            hyper::client::conn::http2::handshake(hyper_util::rt::TokioExecutor::new(), io)
                .await
                .map_err(e)?;
        tokio::spawn(conn);
        sender.send_request(req).await.map_err(e)?
    } else {
        let (mut sender, conn) = hyper::client::conn::http1::handshake(io).await.map_err(e)?;
        tokio::spawn(conn);
        sender.send_request(req).await.map_err(e)?
    };
    if resp.status() != 200 {
        return Err(format!("status {}", resp.status()));
    }
    let mut body = resp.into_body();
    let mut got = 0;
    while got < SENT {
        match tokio::time::timeout(Duration::from_secs(20), body.frame()).await {
            Ok(Some(Ok(f))) => got += f.data_ref().map_or(0, |d| d.len()),
            Ok(Some(Err(e))) => return Err(format!("an error before the cut, at {got}: {e}")),
            Ok(None) => return Err(format!("the end before the cut, at {got}")),
            Err(_) => return Err(format!("stalled before the cut, at {got}")),
        }
    }
    for host in [mesh.b(), mesh.c()] {
        let url = format!("http://127.0.0.1:{API_PORT}/cut/{token}");
        let _ = mesh.curl(host, &["-s", "-o", "/dev/null", &url]);
    }
    loop {
        match tokio::time::timeout(Duration::from_secs(20), body.frame()).await {
            Ok(Some(Ok(f))) => got += f.data_ref().map_or(0, |d| d.len()),
            Ok(Some(Err(e))) => return Ok(format!("error after {got} bytes: {e}")),
            Ok(None) => return Ok(format!("a clean end after {got} of the promised bytes")),
            Err(_) => return Err(format!("no end within 20 s of the cut, at {got}")),
        }
    }
}

/// The instances that answered `n` GETs of `path`, sent one after another on one HTTP/2
/// connection (prior knowledge) from namespace `ns` to `addr`; an error if any answer was not
/// HTTP/2 200.
async fn h2c_instances(
    ns: &str,
    addr: SocketAddr,
    path: &str,
    n: usize,
) -> Result<Vec<String>, String> {
    use http_body_util::BodyExt;
    let tcp = tests::mesh::connect_in(ns, addr)
        .await
        .map_err(|e| e.to_string())?;
    let (mut sender, conn) = hyper::client::conn::http2::handshake(
        hyper_util::rt::TokioExecutor::new(),
        hyper_util::rt::TokioIo::new(tcp),
    )
    .await
    .map_err(|e| e.to_string())?;
    let driver = tokio::spawn(conn);
    let mut out = Vec::with_capacity(n);
    for _ in 0..n {
        let req = hyper::Request::get(format!("http://{addr}{path}"))
            .body(http_body_util::Empty::<bytes::Bytes>::new())
            .map_err(|e| e.to_string())?;
        let resp = sender.send_request(req).await.map_err(|e| e.to_string())?;
        if resp.version() != hyper::Version::HTTP_2 || resp.status() != 200 {
            return Err(format!("{:?} {}", resp.version(), resp.status()));
        }
        let instance = resp
            .headers()
            .get("x-instance")
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default()
            .to_string();
        resp.into_body()
            .collect()
            .await
            .map_err(|e| e.to_string())?;
        out.push(instance);
    }
    driver.abort();
    Ok(out)
}
