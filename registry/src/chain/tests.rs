//! Chain compilation over states built by applying commands, as the state machine does.

use std::collections::BTreeMap;

use serde_json::json;

use super::*;
use crate::command::{Command, Response};

fn put(st: &mut State, index: u64, v: serde_json::Value) {
    let entry: ConfigEntry = serde_json::from_value(v).expect("entry JSON");
    let r = st.apply(index, &Command::ConfigEntrySet { entry, cas: None });
    assert_eq!(r, Response::Done);
}

fn req<'a>(
    method: &'a str,
    path: &'a str,
    query: Option<&'a str>,
    headers: &'a dyn Fn(&str) -> Option<&'a str>,
) -> RequestInfo<'a> {
    RequestInfo {
        method,
        path,
        query,
        headers,
    }
}

fn no_headers(_: &str) -> Option<&'static str> {
    None
}

#[test]
fn a_tcp_service_is_one_default_route() {
    let st = State::new();
    let c = Chain::compile(&st, "db");
    assert_eq!(c.protocol, Protocol::Tcp);
    assert_eq!(c.routes.len(), 1);
    assert_eq!(c.routes[0].splits.len(), 1);
    assert_eq!(c.routes[0].split(9999).target, "db");
    assert_eq!(c.targets.keys().collect::<Vec<_>>(), vec!["db"]);
    let r = c.route(&req("GET", "/", None, &no_headers));
    assert!(r.definition.is_none());
    assert_eq!(c.to_json()["StartNode"], "resolver:db");
}

fn l7_state() -> State {
    let mut st = State::new();
    put(
        &mut st,
        1,
        json!({"Kind": "service-defaults", "Name": "api", "Protocol": "http"}),
    );
    put(
        &mut st,
        2,
        json!({"Kind": "service-resolver", "Name": "api", "DefaultSubset": "v1",
               "ConnectTimeout": "5s",
               "Subsets": {"v1": {"Filter": "Service.Meta.version == \"1\""},
                           "v2": {"Filter": "Service.Meta.version == \"2\"", "OnlyPassing": true}},
               "Failover": {"*": {"Targets": [{"Service": "api-dr"}]}}}),
    );
    put(
        &mut st,
        3,
        json!({"Kind": "service-splitter", "Name": "api", "Splits": [
            {"Weight": 90, "ServiceSubset": "v1"},
            {"Weight": 10, "ServiceSubset": "v2",
             "RequestHeaders": {"Set": {"x-canary": "1"}}}]}),
    );
    put(
        &mut st,
        4,
        json!({"Kind": "service-router", "Name": "api", "Routes": [
            {"Match": {"HTTP": {"PathPrefix": "/v2", "Methods": ["GET"]}},
             "Destination": {"ServiceSubset": "v2", "PrefixRewrite": "/",
                             "NumRetries": 3, "RequestTimeout": "2s"}},
            {"Match": {"HTTP": {"Header": [{"Name": "X-Debug", "Exact": "on"}]}},
             "Destination": {"Service": "debug"}},
            {"Match": {"HTTP": {"QueryParam": [{"Name": "beta", "Regex": "y.s"}],
                                "PathRegex": "/items/[0-9]+"}},
             "Destination": {"Service": "api", "ServiceSubset": "v2"}},
            {"Match": {"HTTP": {"Header": [{"Name": "x-block", "Present": true,
                                            "Invert": true}],
                                "PathExact": "/open"}}}]}),
    );
    st
}

#[test]
fn router_splitter_resolver_compile_in_order() {
    let st = l7_state();
    let c = Chain::compile(&st, "api");
    assert_eq!(c.protocol, Protocol::Http);
    assert!(c.router);
    assert_eq!(c.routes.len(), 5);

    // /v2 with GET: the first route, straight to the v2 subset (no splitter).
    let r = c.route(&req("GET", "/v2/users", None, &no_headers));
    assert_eq!(r.prefix_rewrite.as_deref(), Some("/"));
    assert_eq!(r.num_retries, Some(3));
    assert_eq!(r.request_timeout, Some(Duration::from_secs(2)));
    assert_eq!(r.splits.len(), 1);
    assert_eq!(r.split(0).target, "v2.api");
    // POST does not match the first route; nothing else matches but the default.
    let r = c.route(&req("POST", "/v2/users", None, &no_headers));
    assert!(r.definition.is_none());

    // Header names compare case-insensitively (the callback gets the lowercase name).
    let debug = |name: &str| (name == "x-debug").then_some("on");
    let r = c.route(&req("GET", "/x", None, &debug));
    assert_eq!(r.destination, "debug");
    assert_eq!(r.split(0).target, "debug");

    // Query parameters, percent-decoded; path regexes match the whole path.
    let r = c.route(&req(
        "GET",
        "/items/42",
        Some("a=1&beta=y%65s"),
        &no_headers,
    ));
    assert_eq!(r.split(0).target, "v2.api");
    let r = c.route(&req("GET", "/items/42x", Some("beta=yes"), &no_headers));
    assert!(r.definition.is_none());

    // Inverted presence: /open matches only without x-block.
    let r = c.route(&req("GET", "/open", None, &no_headers));
    assert_eq!(r.destination, "api");
    assert!(r.definition.is_some());
    assert_eq!(r.splits.len(), 2);
    let block = |name: &str| (name == "x-block").then_some("");
    assert!(c
        .route(&req("GET", "/open", None, &block))
        .definition
        .is_none());

    // The default route: the splitter, 90/10 in 1/100 of a percent.
    let d = c.routes.last().expect("default");
    let w: Vec<(u32, &str)> = d
        .splits
        .iter()
        .map(|s| (s.weight, s.target.as_str()))
        .collect();
    assert_eq!(w, vec![(9000, "v1.api"), (1000, "v2.api")]);
    assert_eq!(d.split(0).target, "v1.api");
    assert_eq!(d.split(8999).target, "v1.api");
    assert_eq!(d.split(9000).target, "v2.api");
    assert_eq!(d.split(9999).target, "v2.api");
    assert_eq!(d.split(u32::MAX).target, "v2.api");
    assert_eq!(
        d.splits[1].request_headers.set,
        vec![("x-canary".into(), "1".into())]
    );

    // Targets: subsets with filters, failover to api-dr, the connect timeout.
    let v2 = &c.targets["v2.api"];
    assert_eq!((v2.service.as_str(), v2.subset.as_str()), ("api", "v2"));
    assert!(v2.only_passing);
    assert_eq!(v2.failover, vec!["api-dr".to_string()]);
    assert_eq!(v2.connect_timeout, Some(Duration::from_secs(5)));
    assert!(c.targets.contains_key("api-dr"));
    let node = Node::default();
    let inst = |version: &str| Service {
        service: "api".into(),
        meta: BTreeMap::from([("version".to_string(), version.to_string())]),
        ..Service::default()
    };
    assert!(v2.admits(&node, &inst("2")));
    assert!(!v2.admits(&node, &inst("1")));
    assert!(c.targets["v1.api"].admits(&node, &inst("1")));
    assert!(
        !c.targets["api-dr"].admits(&node, &inst("1")),
        "another service"
    );

    let j = serde_json::to_value(&c).expect("json");
    assert_eq!(j["ServiceName"], "api");
    assert_eq!(j["Protocol"], "http");
    assert_eq!(j["StartNode"], "router:api");
    assert_eq!(j["Nodes"]["splitter:api"]["Type"], "splitter");
    assert_eq!(j["Targets"]["v2.api"]["Failover"], json!(["api-dr"]));
    assert_eq!(
        j["Targets"]["v2.api"]["Subset"]["Filter"],
        "Service.Meta.version == \"2\""
    );
    assert_eq!(j["Routes"][4]["Splits"][1]["Weight"], 10.0);
}

#[test]
fn redirects_default_subsets_and_cycles() {
    let mut st = State::new();
    put(
        &mut st,
        1,
        json!({"Kind": "service-resolver", "Name": "old",
                           "Redirect": {"Service": "new", "ServiceSubset": "blue"}}),
    );
    put(
        &mut st,
        2,
        json!({"Kind": "service-resolver", "Name": "new",
                           "Subsets": {"blue": {}}}),
    );
    let c = Chain::compile(&st, "old");
    assert_eq!(c.routes[0].split(0).target, "blue.new");
    assert!(!c.targets["blue.new"].subset_missing);

    // a → b → a: cut after MAX_REDIRECTS, no hang.
    put(
        &mut st,
        3,
        json!({"Kind": "service-resolver", "Name": "a", "Redirect": {"Service": "b"}}),
    );
    put(
        &mut st,
        4,
        json!({"Kind": "service-resolver", "Name": "b", "Redirect": {"Service": "a"}}),
    );
    let c = Chain::compile(&st, "a");
    assert_eq!(c.routes.len(), 1);
    assert_eq!(c.targets.len(), 1);

    // A router on a tcp service is not stored, and so never compiled.
    let c = Chain::compile(&st, "new");
    assert_eq!(c.protocol, Protocol::Tcp);
    assert!(!c.router);
}

#[test]
fn a_subset_no_resolver_defines_admits_nothing() {
    let mut st = State::new();
    put(
        &mut st,
        1,
        json!({"Kind": "service-defaults", "Name": "web", "Protocol": "http"}),
    );
    put(
        &mut st,
        2,
        json!({"Kind": "service-router", "Name": "web", "Routes": [
        {"Destination": {"ServiceSubset": "ghost"}}]}),
    );
    let c = Chain::compile(&st, "web");
    let t = &c.targets["ghost.web"];
    assert!(t.subset_missing);
    let svc = Service {
        service: "web".into(),
        ..Service::default()
    };
    assert!(!t.admits(&Node::default(), &svc));
    // A route without Match matches everything, before the default route.
    let r = c.route(&req("DELETE", "/anything", None, &no_headers));
    assert!(r.definition.is_some());
}
