//! `service-router`: layer-7 routes of a service, in Consul's JSON shape. Each route has an
//! optional `Match.HTTP` (path, headers, query parameters, methods) and a `Destination`; the
//! first matching route wins and unmatched requests go to the service itself.
//!
//! `RequestTimeout`, `IdleTimeout`, `NumRetries`, `RetryOnConnectFailure` and
//! `RetryOnStatusCodes` of a destination are validated and stored, and carried into the
//! compiled chain, but the data plane does not act on them yet.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use super::{check_duration, check_service_name, ConfigEntry, EntryError};

/// The HTTP methods a route may match.
pub const METHODS: &[&str] = &[
    "GET", "HEAD", "POST", "PUT", "DELETE", "CONNECT", "OPTIONS", "TRACE", "PATCH",
];
/// The most compiled regex program size accepted in a route or filter.
pub const REGEX_SIZE_LIMIT: usize = 1 << 20;

fn is_false(b: &bool) -> bool {
    !*b
}

/// One route of `Routes`.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq)]
#[serde(rename_all = "PascalCase", deny_unknown_fields)]
pub struct ServiceRoute {
    /// None: the route matches every request.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub r#match: Option<RouteMatch>,
    /// None: the router's own service.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub destination: Option<RouteDestination>,
}

/// `Match` of a route.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq)]
#[serde(rename_all = "PascalCase", deny_unknown_fields)]
pub struct RouteMatch {
    #[serde(rename = "HTTP", default, skip_serializing_if = "Option::is_none")]
    pub http: Option<RouteHttpMatch>,
}

/// `Match.HTTP`: every condition set must hold.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq)]
#[serde(rename_all = "PascalCase", deny_unknown_fields)]
pub struct RouteHttpMatch {
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub path_exact: String,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub path_prefix: String,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub path_regex: String,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub header: Vec<HeaderMatch>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub query_param: Vec<QueryParamMatch>,
    /// Any of these (none: any method).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub methods: Vec<String>,
}

/// One `Header` condition: exactly one of `Present`, `Exact`, `Prefix`, `Suffix`, `Regex`.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq)]
#[serde(rename_all = "PascalCase", deny_unknown_fields)]
pub struct HeaderMatch {
    #[serde(default)]
    pub name: String,
    #[serde(default, skip_serializing_if = "is_false")]
    pub present: bool,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub exact: String,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub prefix: String,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub suffix: String,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub regex: String,
    /// The condition is negated.
    #[serde(default, skip_serializing_if = "is_false")]
    pub invert: bool,
}

/// One `QueryParam` condition: exactly one of `Present`, `Exact`, `Regex`.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq)]
#[serde(rename_all = "PascalCase", deny_unknown_fields)]
pub struct QueryParamMatch {
    #[serde(default)]
    pub name: String,
    #[serde(default, skip_serializing_if = "is_false")]
    pub present: bool,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub exact: String,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub regex: String,
}

/// `RequestHeaders` / `ResponseHeaders`: headers added (appended), set (replaced) and removed.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq)]
#[serde(rename_all = "PascalCase", deny_unknown_fields)]
pub struct HeaderModifiers {
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub add: BTreeMap<String, String>,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub set: BTreeMap<String, String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub remove: Vec<String>,
}

/// `Destination` of a route.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq)]
#[serde(rename_all = "PascalCase", deny_unknown_fields)]
pub struct RouteDestination {
    /// Empty: the router's own service.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub service: String,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub service_subset: String,
    /// Replaces the matched `PathPrefix` (or `PathExact`).
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub prefix_rewrite: String,
    /// Stored, not yet acted on.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub request_timeout: String,
    /// Stored, not yet acted on.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub idle_timeout: String,
    /// Stored, not yet acted on.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub num_retries: Option<u32>,
    /// Stored, not yet acted on.
    #[serde(default, skip_serializing_if = "is_false")]
    pub retry_on_connect_failure: bool,
    /// Stored, not yet acted on.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub retry_on_status_codes: Vec<u16>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub request_headers: Option<HeaderModifiers>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub response_headers: Option<HeaderModifiers>,
}

/// Compiles a regex of a route or filter with a size cap; the error says why it is bad.
pub fn build_regex(pattern: &str) -> Result<regex::Regex, String> {
    regex::RegexBuilder::new(pattern)
        .size_limit(REGEX_SIZE_LIMIT)
        .build()
        .map_err(|e| format!("bad regex {pattern:?}: {e}"))
}

pub(super) fn validate(entry: &ConfigEntry) -> Result<(), EntryError> {
    for (i, route) in entry.routes.iter().flatten().enumerate() {
        let at = format!("Routes[{i}]");
        let http = route.r#match.as_ref().and_then(|m| m.http.as_ref());
        if let Some(http) = http {
            validate_match(&format!("{at}.Match.HTTP"), http)?;
        }
        if let Some(dest) = &route.destination {
            validate_destination(&format!("{at}.Destination"), dest, http)?;
        }
    }
    Ok(())
}

fn validate_match(at: &str, m: &RouteHttpMatch) -> Result<(), EntryError> {
    let paths = [
        ("PathExact", &m.path_exact),
        ("PathPrefix", &m.path_prefix),
        ("PathRegex", &m.path_regex),
    ];
    let set: Vec<&str> = paths
        .iter()
        .filter(|(_, v)| !v.is_empty())
        .map(|(n, _)| *n)
        .collect();
    if set.len() > 1 {
        return Err(EntryError::new(
            at,
            format!(
                "at most one of PathExact, PathPrefix, PathRegex; got {}",
                set.join(", ")
            ),
        ));
    }
    for (name, value) in &paths[..2] {
        if !value.is_empty() && !value.starts_with('/') {
            return Err(EntryError::new(
                format!("{at}.{name}"),
                format!("{value:?} does not begin with '/'"),
            ));
        }
    }
    if !m.path_regex.is_empty() {
        build_regex(&m.path_regex).map_err(|e| EntryError::new(format!("{at}.PathRegex"), e))?;
    }
    for (j, h) in m.header.iter().enumerate() {
        let hat = format!("{at}.Header[{j}]");
        if h.name.is_empty() {
            return Err(EntryError::new(format!("{hat}.Name"), "required"));
        }
        let kinds = one_kind(
            &hat,
            &[
                ("Present", h.present),
                ("Exact", !h.exact.is_empty()),
                ("Prefix", !h.prefix.is_empty()),
                ("Suffix", !h.suffix.is_empty()),
                ("Regex", !h.regex.is_empty()),
            ],
        )?;
        if kinds == "Regex" {
            build_regex(&h.regex).map_err(|e| EntryError::new(format!("{hat}.Regex"), e))?;
        }
    }
    for (j, q) in m.query_param.iter().enumerate() {
        let qat = format!("{at}.QueryParam[{j}]");
        if q.name.is_empty() {
            return Err(EntryError::new(format!("{qat}.Name"), "required"));
        }
        let kind = one_kind(
            &qat,
            &[
                ("Present", q.present),
                ("Exact", !q.exact.is_empty()),
                ("Regex", !q.regex.is_empty()),
            ],
        )?;
        if kind == "Regex" {
            build_regex(&q.regex).map_err(|e| EntryError::new(format!("{qat}.Regex"), e))?;
        }
    }
    for (j, method) in m.methods.iter().enumerate() {
        if !METHODS.contains(&method.as_str()) {
            return Err(EntryError::new(
                format!("{at}.Methods[{j}]"),
                format!("{method:?} is not one of {}", METHODS.join(", ")),
            ));
        }
    }
    Ok(())
}

/// The one match kind set among `kinds`, or an error naming them.
fn one_kind(at: &str, kinds: &[(&'static str, bool)]) -> Result<&'static str, EntryError> {
    let set: Vec<&str> = kinds.iter().filter(|(_, s)| *s).map(|(n, _)| *n).collect();
    let names: Vec<&str> = kinds.iter().map(|(n, _)| *n).collect();
    match set.as_slice() {
        [one] => Ok(one),
        [] => Err(EntryError::new(
            at,
            format!("needs one of {}", names.join(", ")),
        )),
        many => Err(EntryError::new(
            at,
            format!(
                "only one of {} may be set; got {}",
                names.join(", "),
                many.join(", ")
            ),
        )),
    }
}

fn validate_destination(
    at: &str,
    d: &RouteDestination,
    http: Option<&RouteHttpMatch>,
) -> Result<(), EntryError> {
    if !d.service.is_empty() {
        check_service_name(&format!("{at}.Service"), &d.service)?;
    }
    if !d.prefix_rewrite.is_empty()
        && http.is_none_or(|m| m.path_exact.is_empty() && m.path_prefix.is_empty())
    {
        return Err(EntryError::new(
            format!("{at}.PrefixRewrite"),
            "needs Match.HTTP.PathExact or Match.HTTP.PathPrefix",
        ));
    }
    for (name, value) in [
        ("RequestTimeout", &d.request_timeout),
        ("IdleTimeout", &d.idle_timeout),
    ] {
        if !value.is_empty() {
            check_duration(&format!("{at}.{name}"), value)?;
        }
    }
    for (j, code) in d.retry_on_status_codes.iter().enumerate() {
        if !(100..=599).contains(code) {
            return Err(EntryError::new(
                format!("{at}.RetryOnStatusCodes[{j}]"),
                format!("{code} is not an HTTP status code"),
            ));
        }
    }
    check_header_mods(&format!("{at}.RequestHeaders"), d.request_headers.as_ref())?;
    check_header_mods(
        &format!("{at}.ResponseHeaders"),
        d.response_headers.as_ref(),
    )
}

/// Header names of `Add`, `Set` and `Remove` must be valid HTTP header names.
pub(crate) fn check_header_mods(at: &str, m: Option<&HeaderModifiers>) -> Result<(), EntryError> {
    let Some(m) = m else { return Ok(()) };
    let names = m
        .add
        .keys()
        .map(|k| ("Add", k))
        .chain(m.set.keys().map(|k| ("Set", k)))
        .chain(m.remove.iter().map(|k| ("Remove", k)));
    for (field, name) in names {
        let token = |c: char| c.is_ascii_alphanumeric() || "!#$%&'*+-.^_`|~".contains(c);
        if name.is_empty() || !name.chars().all(token) {
            return Err(EntryError::new(
                format!("{at}.{field}"),
                format!("{name:?} is not an HTTP header name"),
            ));
        }
    }
    for (field, map) in [("Add", &m.add), ("Set", &m.set)] {
        if let Some((k, _)) = map.iter().find(|(_, v)| v.contains(['\r', '\n', '\0'])) {
            return Err(EntryError::new(
                format!("{at}.{field}.{k}"),
                "a header value may not hold CR, LF or NUL",
            ));
        }
    }
    Ok(())
}
