//! Compiled request matchers of a route (`Match.HTTP` of a `service-router` route) and the
//! header modifications of routes and splits. Regexes are compiled once, anchored at both ends
//! (Envoy's full-match semantics); header names compare case-insensitively.

use crate::config_entry::router::build_regex;
use crate::config_entry::{HeaderModifiers, RouteHttpMatch};

/// What matching needs of a request, without any HTTP crate (registry knows nothing of HTTP).
pub struct RequestInfo<'a> {
    pub method: &'a str,
    /// The path, without the query string.
    pub path: &'a str,
    /// The raw query string, without `?`.
    pub query: Option<&'a str>,
    /// The value of a header by name (any case); the first if repeated.
    pub headers: &'a dyn Fn(&str) -> Option<&'a str>,
}

/// How a value (a header, a query parameter) must look.
#[derive(Debug, Clone)]
pub enum ValueMatch {
    Present,
    Exact(String),
    Prefix(String),
    Suffix(String),
    /// None: a regex that failed to compile (never, entries are validated): matches nothing.
    Regex(Option<regex::Regex>),
}

impl ValueMatch {
    fn test(&self, value: &str) -> bool {
        match self {
            ValueMatch::Present => true,
            ValueMatch::Exact(x) => value == x,
            ValueMatch::Prefix(x) => value.starts_with(x.as_str()),
            ValueMatch::Suffix(x) => value.ends_with(x.as_str()),
            ValueMatch::Regex(r) => r.as_ref().is_some_and(|r| r.is_match(value)),
        }
    }
}

/// The path condition of a route.
#[derive(Debug, Clone)]
pub enum PathMatch {
    Any,
    Exact(String),
    Prefix(String),
    Regex(Option<regex::Regex>),
}

/// One header condition; `name` is lowercase.
#[derive(Debug, Clone)]
pub struct HeaderMatcher {
    pub name: String,
    pub value: ValueMatch,
    pub invert: bool,
}

/// One query parameter condition.
#[derive(Debug, Clone)]
pub struct QueryMatcher {
    pub name: String,
    pub value: ValueMatch,
}

/// A route's compiled match: every condition must hold.
#[derive(Debug, Clone)]
pub struct HttpMatch {
    pub path: PathMatch,
    /// Any of these; empty: any method.
    pub methods: Vec<String>,
    pub headers: Vec<HeaderMatcher>,
    pub query: Vec<QueryMatcher>,
}

fn anchored(pattern: &str) -> Option<regex::Regex> {
    build_regex(&format!("^(?:{pattern})$")).ok()
}

impl HttpMatch {
    /// Matches every request (the default route, a route without `Match`).
    pub fn any() -> HttpMatch {
        HttpMatch {
            path: PathMatch::Any,
            methods: Vec::new(),
            headers: Vec::new(),
            query: Vec::new(),
        }
    }

    /// Compiles a validated `Match.HTTP`.
    pub fn compile(m: &RouteHttpMatch) -> HttpMatch {
        let path = if !m.path_exact.is_empty() {
            PathMatch::Exact(m.path_exact.clone())
        } else if !m.path_prefix.is_empty() {
            PathMatch::Prefix(m.path_prefix.clone())
        } else if !m.path_regex.is_empty() {
            PathMatch::Regex(anchored(&m.path_regex))
        } else {
            PathMatch::Any
        };
        let value = |present: bool, exact: &str, prefix: &str, suffix: &str, regex: &str| {
            if present {
                ValueMatch::Present
            } else if !prefix.is_empty() {
                ValueMatch::Prefix(prefix.to_string())
            } else if !suffix.is_empty() {
                ValueMatch::Suffix(suffix.to_string())
            } else if !regex.is_empty() {
                ValueMatch::Regex(anchored(regex))
            } else {
                ValueMatch::Exact(exact.to_string())
            }
        };
        HttpMatch {
            path,
            methods: m.methods.clone(),
            headers: m
                .header
                .iter()
                .map(|h| HeaderMatcher {
                    name: h.name.to_ascii_lowercase(),
                    value: value(h.present, &h.exact, &h.prefix, &h.suffix, &h.regex),
                    invert: h.invert,
                })
                .collect(),
            query: m
                .query_param
                .iter()
                .map(|q| QueryMatcher {
                    name: q.name.clone(),
                    value: value(q.present, &q.exact, "", "", &q.regex),
                })
                .collect(),
        }
    }

    pub fn matches(&self, req: &RequestInfo) -> bool {
        let path_ok = match &self.path {
            PathMatch::Any => true,
            PathMatch::Exact(p) => req.path == p,
            PathMatch::Prefix(p) => req.path.starts_with(p.as_str()),
            PathMatch::Regex(r) => r.as_ref().is_some_and(|r| r.is_match(req.path)),
        };
        if !path_ok {
            return false;
        }
        if !self.methods.is_empty() && !self.methods.iter().any(|m| m == req.method) {
            return false;
        }
        let headers_ok = self.headers.iter().all(|h| {
            let hit = (req.headers)(&h.name).is_some_and(|v| h.value.test(v));
            hit != h.invert
        });
        if !headers_ok {
            return false;
        }
        self.query.iter().all(|q| {
            let raw = req.query.unwrap_or("");
            form_urlencoded::parse(raw.as_bytes()).any(|(k, v)| k == q.name && q.value.test(&v))
        })
    }
}

/// Header changes: `add` appends, `set` replaces, `remove` deletes.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct HeaderMods {
    pub add: Vec<(String, String)>,
    pub set: Vec<(String, String)>,
    pub remove: Vec<String>,
}

impl HeaderMods {
    pub fn from_config(m: Option<&HeaderModifiers>) -> HeaderMods {
        let Some(m) = m else {
            return HeaderMods::default();
        };
        let pairs = |map: &std::collections::BTreeMap<String, String>| {
            map.iter()
                .map(|(k, v)| (k.clone(), v.clone()))
                .collect::<Vec<_>>()
        };
        HeaderMods {
            add: pairs(&m.add),
            set: pairs(&m.set),
            remove: m.remove.clone(),
        }
    }

    pub fn is_empty(&self) -> bool {
        self.add.is_empty() && self.set.is_empty() && self.remove.is_empty()
    }
}
