//! Filter expressions, the subset of Consul's go-bexpr syntax that `service-resolver` subsets
//! use: `Service.Meta.version == "v2" and "canary" not in Service.Tags`.
//!
//! - selectors: `Service.ID`, `Service.Service`, `Service.Kind`, `Service.Tags`,
//!   `Service.Address`, `Service.Port`, `Service.Meta` (a map), `Service.Meta.<key>` or
//!   `Service.Meta["key"]`, `Node.ID`, `Node.Node`, `Node.Address`, `Node.Datacenter`,
//!   `Node.Meta`, `Node.Meta.<key>`;
//! - `S == V`, `S != V`, `S is empty`, `S is not empty`, `S contains V`, `S not contains V`,
//!   `V in S`, `V not in S`, `S matches "re"`, `S not matches "re"`; on a list, `contains` and
//!   `in` test membership, on a map key presence, on a string a substring;
//! - `and`, `or` (lower precedence), `not`, parentheses;
//! - values: `"double"` quoted (with `\` escapes), `` `raw` `` backquoted, or a bare word or
//!   number.
//!
//! A missing meta key reads as the empty string. Errors give the byte position and what was
//! expected. The tokenizer and parser are in [`parse`]; this file holds the tree and its
//! evaluation over a `(node, service)` pair.

mod parse;

use crate::model::{Node, Service};

/// A parse error: where (byte offset in the expression) and what was expected.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[error("at position {pos}: {message}")]
pub struct FilterError {
    pub pos: usize,
    pub message: String,
}

/// A parsed filter expression; evaluate it with [`Filter::matches`].
#[derive(Debug, Clone)]
pub struct Filter {
    source: String,
    expr: Expr,
}

impl PartialEq for Filter {
    fn eq(&self, other: &Filter) -> bool {
        self.source == other.source
    }
}

/// What a selector names.
#[derive(Debug, Clone, PartialEq)]
pub(crate) enum Selector {
    ServiceId,
    ServiceName,
    ServiceKind,
    ServiceTags,
    ServiceAddress,
    ServicePort,
    ServiceMeta(Option<String>),
    NodeId,
    NodeName,
    NodeAddress,
    NodeDatacenter,
    NodeMeta(Option<String>),
}

/// The shape of a selector's value, which decides the operators it takes.
#[derive(Debug, Clone, Copy, PartialEq)]
pub(crate) enum Shape {
    Str,
    Int,
    List,
    Map,
}

impl Selector {
    pub(crate) fn shape(&self) -> Shape {
        match self {
            Selector::ServiceTags => Shape::List,
            Selector::ServicePort => Shape::Int,
            Selector::ServiceMeta(None) | Selector::NodeMeta(None) => Shape::Map,
            _ => Shape::Str,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq)]
pub(crate) enum Op {
    Equal,
    IsEmpty,
    Contains,
    Matches,
}

#[derive(Debug, Clone)]
pub(crate) enum Expr {
    And(Box<Expr>, Box<Expr>),
    Or(Box<Expr>, Box<Expr>),
    Not(Box<Expr>),
    Match {
        selector: Selector,
        op: Op,
        /// The operator is negated (`!=`, `is not empty`, `not in`, ...).
        negate: bool,
        value: String,
        regex: Option<regex::Regex>,
    },
}

impl Filter {
    /// Parses an expression; the error says where and what was expected.
    pub fn parse(source: &str) -> Result<Filter, FilterError> {
        Ok(Filter {
            source: source.to_string(),
            expr: parse::parse(source)?,
        })
    }

    /// The expression as written.
    pub fn source(&self) -> &str {
        &self.source
    }

    /// Whether the instance `service` on `node` satisfies the expression.
    pub fn matches(&self, node: &Node, service: &Service) -> bool {
        eval(&self.expr, node, service)
    }
}

impl std::fmt::Display for Filter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.source)
    }
}

fn eval(e: &Expr, node: &Node, svc: &Service) -> bool {
    match e {
        Expr::And(a, b) => eval(a, node, svc) && eval(b, node, svc),
        Expr::Or(a, b) => eval(a, node, svc) || eval(b, node, svc),
        Expr::Not(a) => !eval(a, node, svc),
        Expr::Match {
            selector,
            op,
            negate,
            value,
            regex,
        } => negate ^ eval_match(selector, *op, value, regex.as_ref(), node, svc),
    }
}

fn eval_match(
    sel: &Selector,
    op: Op,
    value: &str,
    regex: Option<&regex::Regex>,
    node: &Node,
    svc: &Service,
) -> bool {
    let map = match sel {
        Selector::ServiceMeta(None) => Some(&svc.meta),
        Selector::NodeMeta(None) => Some(&node.meta),
        _ => None,
    };
    if let Some(map) = map {
        return match op {
            Op::IsEmpty => map.is_empty(),
            _ => map.contains_key(value),
        };
    }
    if *sel == Selector::ServiceTags {
        return match op {
            Op::IsEmpty => svc.tags.is_empty(),
            _ => svc.tags.iter().any(|t| t == value),
        };
    }
    if *sel == Selector::ServicePort {
        return value.parse::<u16>().ok() == Some(svc.port);
    }
    let empty = String::new();
    let s: &str = match sel {
        Selector::ServiceId => &svc.id,
        Selector::ServiceName => &svc.service,
        Selector::ServiceKind => &svc.kind,
        Selector::ServiceAddress => &svc.address,
        Selector::ServiceMeta(Some(k)) => svc.meta.get(k).unwrap_or(&empty),
        Selector::NodeId => &node.id,
        Selector::NodeName => &node.node,
        Selector::NodeAddress => &node.address,
        Selector::NodeDatacenter => &node.datacenter,
        Selector::NodeMeta(Some(k)) => node.meta.get(k).unwrap_or(&empty),
        _ => &empty,
    };
    match op {
        Op::Equal => s == value,
        Op::IsEmpty => s.is_empty(),
        Op::Contains => s.contains(value),
        Op::Matches => regex.is_some_and(|r| r.is_match(s)),
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use super::*;

    fn pair() -> (Node, Service) {
        let node = Node {
            id: "n-1".into(),
            node: "host1".into(),
            address: "10.0.0.1".into(),
            datacenter: "dc1".into(),
            meta: BTreeMap::from([("rack".into(), "r1".into())]),
            ..Node::default()
        };
        let svc = Service {
            id: "api-1".into(),
            service: "api".into(),
            tags: vec!["v2".into(), "canary".into()],
            meta: BTreeMap::from([
                ("version".into(), "2.1".into()),
                ("zone-name".into(), "a".into()),
            ]),
            port: 8080,
            address: "10.0.0.5".into(),
            ..Service::default()
        };
        (node, svc)
    }

    fn eval_str(src: &str) -> bool {
        let (n, s) = pair();
        Filter::parse(src)
            .unwrap_or_else(|e| panic!("{src}: {e}"))
            .matches(&n, &s)
    }

    #[test]
    fn every_form_evaluates() {
        for (src, want) in [
            (r#"Service.Meta.version == "2.1""#, true),
            (r#"Service.Meta["version"] == "2.1""#, true),
            (r#"Service.Meta["zone-name"] == `a`"#, true),
            (r#"Service.Meta.version != "2.1""#, false),
            (r#"Service.Meta.missing == """#, true),
            (r#"Service.ID == "api-1""#, true),
            (r#"Service.Service == api"#, true),
            (r#"Service.Tags contains "v2""#, true),
            (r#"Service.Tags not contains "v1""#, true),
            (r#""canary" in Service.Tags"#, true),
            (r#""v1" not in Service.Tags"#, true),
            (r#"v2 in Service.Tags"#, true),
            (r#"Service.Tags is empty"#, false),
            (r#"Service.Tags is not empty"#, true),
            (r#"Service.Meta is not empty"#, true),
            (r#"Service.Meta contains "version""#, true),
            (r#""rack" in Node.Meta"#, true),
            (r#"Node.Meta.rack == "r1""#, true),
            (
                r#"Node.Node == "host1" and Node.Address == "10.0.0.1""#,
                true,
            ),
            (r#"Node.Datacenter == "dc2" or Node.ID == "n-1""#, true),
            (r#"Service.Address matches "^10\\.0\\.""#, true),
            (r#"Service.Address not matches `^192\.`"#, true),
            (r#"Service.Port == 8080"#, true),
            (r#"Service.Port != "8080""#, false),
            (r#"Service.Kind is empty"#, true),
            (r#"Service.Meta.version contains "2.""#, true),
            (r#""2." in Service.Meta.version"#, true),
            (r#"not Service.Tags contains "v2""#, false),
            (r#"not (Service.Port == 1 or Node.Node == "x")"#, true),
            (
                r#"Service.Meta.version == "2.1" and ("x" in Service.Tags or Service.Port == 8080)"#,
                true,
            ),
            (
                r#"a in Service.Tags or b in Service.Tags and v2 in Service.Tags"#,
                false,
            ),
        ] {
            assert_eq!(eval_str(src), want, "{src}");
        }
    }

    #[test]
    fn errors_say_where_and_what() {
        for (src, pos, words) in [
            ("", 0, "selector"),
            ("Service.Meta.version ==", 23, "value"),
            (r#"Service.Bogus == "x""#, 0, "Service.Bogus"),
            (r#"Service.Tags == "x""#, 13, "contains"),
            (r#"Service.Port matches "8""#, 13, "=="),
            (r#"Service.Meta.v == "x" and"#, 25, "selector"),
            (r#"(Service.ID == "x""#, 18, ")"),
            (r#"Service.ID == "x" junk"#, 18, "and"),
            (r#"Service.ID matches "(""#, 19, "regex"),
            (r#"Service.ID == "unterminated"#, 14, "quote"),
            (r#"Service.ID is full"#, 14, "empty"),
            (r#"Service.Meta["k" == "x""#, 17, "]"),
        ] {
            let e = Filter::parse(src).expect_err(src);
            assert_eq!(e.pos, pos, "{src}: {e}");
            assert!(e.message.contains(words), "{src}: {e}");
        }
        let deep = "(".repeat(10_000);
        assert!(Filter::parse(&deep).is_err());
    }

    #[test]
    fn random_input_never_panics() {
        const PIECES: &[&str] = &[
            "Service.Meta.v",
            "Service.Tags",
            "Node.Meta",
            "Service.Port",
            "==",
            "!=",
            "in",
            "not",
            "and",
            "or",
            "is",
            "empty",
            "contains",
            "matches",
            "(",
            ")",
            "\"x\"",
            "`y`",
            "[",
            "]",
            "\"",
            "`",
            "\\",
            "é",
            "8080",
            ".",
            " ",
            "Service.Meta[\"k\"]",
            "\u{0}",
        ];
        let mut seed = 0x2545_f491_4f6c_dd1du64;
        let mut next = move || {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            seed
        };
        let (n, s) = pair();
        for _ in 0..20_000 {
            let len = next() % 12;
            let mut src = String::new();
            for _ in 0..len {
                src.push_str(PIECES[(next() % PIECES.len() as u64) as usize]);
                if next() % 2 == 0 {
                    src.push(' ');
                }
            }
            if let Ok(f) = Filter::parse(&src) {
                let _ = f.matches(&n, &s);
            }
            let bytes: Vec<u8> = (0..(next() % 20)).map(|_| next() as u8).collect();
            let _ = Filter::parse(&String::from_utf8_lossy(&bytes));
        }
    }
}
