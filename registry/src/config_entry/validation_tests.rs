//! Write-time validation of router, splitter and resolver entries, and the protocol rules the
//! state applies: every refusal names the field and stores nothing.

use serde_json::json;

use super::*;
use crate::Command;

fn set(st: &mut State, index: u64, v: serde_json::Value) -> Response {
    let entry: ConfigEntry = serde_json::from_value(v).expect("entry JSON");
    st.apply(index, &Command::ConfigEntrySet { entry, cas: None })
}

fn http(st: &mut State, name: &str) {
    let r = set(
        st,
        1,
        json!({"Kind": SERVICE_DEFAULTS, "Name": name, "Protocol": "http"}),
    );
    assert_eq!(r, Response::Done);
}

fn rejected(r: Response, want: &str) {
    assert!(
        matches!(&r, Response::Rejected(m) if m.contains(want)),
        "{want}: {r:?}"
    );
}

#[test]
fn bad_entries_are_refused_naming_the_field() {
    let mut st = State::new();
    http(&mut st, "api");
    let route = |m: serde_json::Value| json!({"Kind": "service-router", "Name": "api", "Routes": [{}, {"Match": {"HTTP": m}}]});
    for (entry, want) in [
        (
            route(json!({"PathRegex": "(["})),
            "Routes[1].Match.HTTP.PathRegex: bad regex",
        ),
        (
            route(json!({"PathExact": "/a", "PathPrefix": "/b"})),
            "Routes[1].Match.HTTP: at most one",
        ),
        (
            route(json!({"PathPrefix": "b"})),
            "Routes[1].Match.HTTP.PathPrefix",
        ),
        (
            route(json!({"Header": [{"Name": "x", "Exact": "a", "Prefix": "b"}]})),
            "Routes[1].Match.HTTP.Header[0]: only one of",
        ),
        (
            route(json!({"Header": [{"Name": "x"}]})),
            "Header[0]: needs one of",
        ),
        (route(json!({"Header": [{"Exact": "x"}]})), "Header[0].Name"),
        (
            route(json!({"QueryParam": [{"Name": "q", "Regex": "a{99999999}"}]})),
            "QueryParam[0].Regex: bad regex",
        ),
        (
            route(json!({"Methods": ["get"]})),
            "Routes[1].Match.HTTP.Methods[0]",
        ),
        (
            json!({"Kind": "service-router", "Name": "api", "Routes": [
                {"Destination": {"PrefixRewrite": "/x"}}]}),
            "Routes[0].Destination.PrefixRewrite",
        ),
        (
            json!({"Kind": "service-router", "Name": "api", "Routes": [
                {"Destination": {"RequestTimeout": "soon"}}]}),
            "Routes[0].Destination.RequestTimeout",
        ),
        (
            json!({"Kind": "service-router", "Name": "api", "Routes": [
                {"Destination": {"RequestHeaders": {"Set": {"bad name": "x"}}}}]}),
            "Routes[0].Destination.RequestHeaders.Set",
        ),
        (
            json!({"Kind": "service-splitter", "Name": "api", "Splits": [
                {"Weight": 50}, {"Weight": 40, "Service": "b"}]}),
            "Splits: weights sum to 90, not 100",
        ),
        (
            json!({"Kind": "service-splitter", "Name": "api", "Splits": [
                {"Weight": 50.005}, {"Weight": 49.995}]}),
            "Splits[0].Weight",
        ),
        (
            json!({"Kind": "service-splitter", "Name": "api", "Splits": []}),
            "Splits",
        ),
        (
            json!({"Kind": "service-resolver", "Name": "api", "DefaultSubset": "v3",
                   "Subsets": {"v1": {}}}),
            "DefaultSubset",
        ),
        (
            json!({"Kind": "service-resolver", "Name": "api",
                   "Subsets": {"v2": {"Filter": "Service.Meta.version = 2"}}}),
            "Subsets.v2.Filter: at position",
        ),
        (
            json!({"Kind": "service-resolver", "Name": "api",
                   "Failover": {"v9": {"Service": "b"}}}),
            "Failover.v9",
        ),
        (
            json!({"Kind": "service-resolver", "Name": "api", "Redirect": {"Service": "b"},
                   "Subsets": {"v1": {}}}),
            "Redirect",
        ),
        (
            json!({"Kind": "service-resolver", "Name": "api", "ConnectTimeout": "5"}),
            "ConnectTimeout",
        ),
        (
            json!({"Kind": "service-resolver", "Name": "api", "Routes": []}),
            "Routes: not a field of a service-resolver entry",
        ),
        (
            json!({"Kind": "service-router", "Name": "api", "Protocol": "http"}),
            "Protocol: not a field of a service-router entry",
        ),
        (
            json!({"Kind": "service-defaults", "Name": "api", "Splits": []}),
            "Splits: not a field",
        ),
    ] {
        rejected(set(&mut st, 2, entry), want);
    }
    assert!(st.config_entry(SERVICE_ROUTER, "api").is_none());
    assert!(st.config_entry(SERVICE_SPLITTER, "api").is_none());
    assert!(st.config_entry(SERVICE_RESOLVER, "api").is_none());

    let unknown = serde_json::from_value::<ConfigEntry>(json!({"Kind": "service-router",
        "Name": "a", "Routes": [{"Match": {"HTTP": {"Foo": 1}}}]}));
    let e = unknown.expect_err("unknown field").to_string();
    assert!(e.contains("unknown field `Foo`"), "{e}");
}

#[test]
fn routing_needs_a_layer_7_protocol() {
    let mut st = State::new();
    let router = json!({"Kind": "service-router", "Name": "web", "Routes": [{}]});
    let splitter = json!({"Kind": "service-splitter", "Name": "web", "Splits": [{"Weight": 100}]});
    rejected(
        set(&mut st, 1, router.clone()),
        "does not permit advanced routing",
    );
    rejected(
        set(&mut st, 1, splitter.clone()),
        "does not permit advanced routing",
    );
    // A resolver is fine on tcp.
    let resolver = json!({"Kind": "service-resolver", "Name": "web", "Subsets": {"v1": {}}});
    assert_eq!(set(&mut st, 1, resolver), Response::Done);

    http(&mut st, "web");
    assert_eq!(set(&mut st, 2, router), Response::Done);
    assert_eq!(set(&mut st, 3, splitter), Response::Done);
    // Back to tcp, or no defaults at all, is refused while they exist.
    for proto in ["tcp", ""] {
        let back = json!({"Kind": SERVICE_DEFAULTS, "Name": "web", "Protocol": proto});
        rejected(set(&mut st, 4, back), "Protocol");
    }
    let del = |st: &mut State, kind: &str| {
        st.apply(
            5,
            &Command::ConfigEntryDelete {
                kind: kind.into(),
                name: "web".into(),
            },
        )
    };
    rejected(
        del(&mut st, SERVICE_DEFAULTS),
        "delete its service-router first",
    );
    assert_eq!(st.protocol("web"), Protocol::Http);
    assert_eq!(del(&mut st, SERVICE_ROUTER), Response::Done);
    assert_eq!(del(&mut st, SERVICE_SPLITTER), Response::Done);
    assert_eq!(del(&mut st, SERVICE_DEFAULTS), Response::Done);
    assert_eq!(st.protocol("web"), Protocol::Tcp);
}

#[test]
fn entries_serialize_in_consul_shape_and_old_defaults_still_read() {
    // A service-defaults entry as older versions stored it (every field written).
    let old = r#"{"Kind":"service-defaults","Name":"api","Protocol":"","LoadBalancer":null,
        "Limits":null,"Meta":{},"CreateIndex":3,"ModifyIndex":4}"#;
    let e: ConfigEntry = serde_json::from_str(old).expect("old entry reads");
    assert_eq!((e.create_index, e.modify_index), (3, 4));
    let v = serde_json::to_value(&e).expect("json");
    assert!(v.get("Routes").is_none() && v.get("Protocol").is_none());

    let router = json!({"Kind": "service-router", "Name": "api", "Routes": [
        {"Match": {"HTTP": {"PathPrefix": "/a", "Header": [{"Name": "x", "Present": true}]}},
         "Destination": {"Service": "b", "NumRetries": 2, "RetryOnStatusCodes": [503]}}],
        "Meta": {}, "CreateIndex": 0, "ModifyIndex": 0});
    let e: ConfigEntry = serde_json::from_value(router.clone()).expect("router");
    e.validate().expect("valid");
    assert_eq!(serde_json::to_value(&e).expect("json"), router);
}
