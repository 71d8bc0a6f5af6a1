//! Tokenizer and recursive-descent parser of filter expressions (see [`super`]). Nesting is
//! bounded, so no input can exhaust the stack; every error carries a byte position.

use super::{Expr, FilterError, Op, Selector, Shape};

/// Deepest nesting of parentheses and `not` accepted.
const MAX_DEPTH: usize = 64;
const KEYWORDS: &[&str] = &[
    "and", "or", "not", "in", "is", "empty", "contains", "matches",
];
const SELECTORS: &str = "Service.ID, Service.Service, Service.Kind, Service.Tags, \
    Service.Address, Service.Port, Service.Meta, Service.Meta.<key>, Node.ID, Node.Node, \
    Node.Address, Node.Datacenter, Node.Meta, Node.Meta.<key>";

#[derive(Debug, Clone, PartialEq)]
enum Tok {
    LParen,
    RParen,
    LBracket,
    RBracket,
    Eq,
    Ne,
    Str(String),
    Word(String),
    End,
}

fn err(pos: usize, message: impl Into<String>) -> FilterError {
    FilterError {
        pos,
        message: message.into(),
    }
}

fn tokenize(src: &str) -> Result<Vec<(Tok, usize)>, FilterError> {
    let mut out = Vec::new();
    let mut chars = src.char_indices().peekable();
    while let Some(&(pos, c)) = chars.peek() {
        if c.is_whitespace() {
            chars.next();
            continue;
        }
        let single = match c {
            '(' => Some(Tok::LParen),
            ')' => Some(Tok::RParen),
            '[' => Some(Tok::LBracket),
            ']' => Some(Tok::RBracket),
            _ => None,
        };
        if let Some(t) = single {
            chars.next();
            out.push((t, pos));
            continue;
        }
        if c == '=' || c == '!' {
            chars.next();
            if chars.next_if(|&(_, n)| n == '=').is_none() {
                return Err(err(pos, format!("expected `{c}=`")));
            }
            out.push((if c == '=' { Tok::Eq } else { Tok::Ne }, pos));
            continue;
        }
        if c == '"' || c == '`' {
            chars.next();
            let mut s = String::new();
            let mut closed = false;
            while let Some((_, n)) = chars.next() {
                if n == c {
                    closed = true;
                    break;
                }
                if n == '\\' && c == '"' {
                    match chars.next() {
                        Some((_, 'n')) => s.push('\n'),
                        Some((_, 't')) => s.push('\t'),
                        Some((_, e)) => s.push(e),
                        None => break,
                    }
                } else {
                    s.push(n);
                }
            }
            if !closed {
                return Err(err(
                    pos,
                    format!("unterminated string: missing closing {c} quote"),
                ));
            }
            out.push((Tok::Str(s), pos));
            continue;
        }
        let word_char = |c: char| c.is_alphanumeric() || "_.-:/".contains(c);
        if !word_char(c) {
            return Err(err(pos, format!("unexpected character {c:?}")));
        }
        let mut w = String::new();
        while let Some((_, n)) = chars.next_if(|&(_, n)| word_char(n)) {
            w.push(n);
        }
        out.push((Tok::Word(w), pos));
    }
    out.push((Tok::End, src.len()));
    Ok(out)
}

fn describe(t: &Tok) -> String {
    match t {
        Tok::LParen => "`(`".into(),
        Tok::RParen => "`)`".into(),
        Tok::LBracket => "`[`".into(),
        Tok::RBracket => "`]`".into(),
        Tok::Eq => "`==`".into(),
        Tok::Ne => "`!=`".into(),
        Tok::Str(s) => format!("{s:?}"),
        Tok::Word(w) => format!("`{w}`"),
        Tok::End => "the end".into(),
    }
}

struct Parser {
    toks: Vec<(Tok, usize)>,
    at: usize,
}

pub(super) fn parse(src: &str) -> Result<Expr, FilterError> {
    let mut p = Parser {
        toks: tokenize(src)?,
        at: 0,
    };
    let e = p.or_expr(0)?;
    match p.peek() {
        Tok::End => Ok(e),
        t => Err(err(
            p.pos(),
            format!("expected `and`, `or` or the end, found {}", describe(t)),
        )),
    }
}

impl Parser {
    fn peek(&self) -> &Tok {
        self.toks.get(self.at).map(|(t, _)| t).unwrap_or(&Tok::End)
    }

    fn peek_at(&self, ahead: usize) -> &Tok {
        self.toks
            .get(self.at + ahead)
            .map(|(t, _)| t)
            .unwrap_or(&Tok::End)
    }

    fn pos(&self) -> usize {
        self.toks
            .get(self.at)
            .or(self.toks.last())
            .map(|(_, p)| *p)
            .unwrap_or(0)
    }

    fn next(&mut self) -> Tok {
        let t = self.peek().clone();
        if self.at < self.toks.len() {
            self.at += 1;
        }
        t
    }

    fn is_word(&self, ahead: usize, w: &str) -> bool {
        matches!(self.peek_at(ahead), Tok::Word(x) if x == w)
    }

    fn or_expr(&mut self, depth: usize) -> Result<Expr, FilterError> {
        let mut e = self.and_expr(depth)?;
        while self.is_word(0, "or") {
            self.next();
            e = Expr::Or(Box::new(e), Box::new(self.and_expr(depth)?));
        }
        Ok(e)
    }

    fn and_expr(&mut self, depth: usize) -> Result<Expr, FilterError> {
        let mut e = self.unary(depth)?;
        while self.is_word(0, "and") {
            self.next();
            e = Expr::And(Box::new(e), Box::new(self.unary(depth)?));
        }
        Ok(e)
    }

    fn unary(&mut self, depth: usize) -> Result<Expr, FilterError> {
        if depth > MAX_DEPTH {
            return Err(err(self.pos(), "expression nested too deeply"));
        }
        let pos = self.pos();
        match self.peek().clone() {
            Tok::Word(w) if w == "not" => {
                self.next();
                Ok(Expr::Not(Box::new(self.unary(depth + 1)?)))
            }
            Tok::LParen => {
                self.next();
                let e = self.or_expr(depth + 1)?;
                match self.next() {
                    Tok::RParen => Ok(e),
                    t => Err(err(
                        self.toks.get(self.at - 1).map_or(pos, |(_, p)| *p),
                        format!("expected `)`, found {}", describe(&t)),
                    )),
                }
            }
            Tok::Str(v) => {
                self.next();
                self.value_first(v)
            }
            Tok::Word(w) if !KEYWORDS.contains(&w.as_str()) => {
                let value_first =
                    self.is_word(1, "in") || (self.is_word(1, "not") && self.is_word(2, "in"));
                if value_first {
                    self.next();
                    return self.value_first(w);
                }
                self.selector_first()
            }
            t => Err(err(
                pos,
                format!(
                    "expected a selector (such as Service.Meta.version), a value, `not` or `(`, \
                     found {}",
                    describe(&t)
                ),
            )),
        }
    }

    /// `V in S` / `V not in S`, after the value.
    fn value_first(&mut self, value: String) -> Result<Expr, FilterError> {
        let negate = self.is_word(0, "not");
        if negate {
            self.next();
        }
        if !self.is_word(0, "in") {
            return Err(err(
                self.pos(),
                format!(
                    "expected `in` or `not in` after the value, found {}",
                    describe(self.peek())
                ),
            ));
        }
        self.next();
        let sel_pos = self.pos();
        let selector = self.selector()?;
        if selector.shape() == Shape::Int {
            return Err(err(sel_pos, "`in` needs a string, list or map selector"));
        }
        Ok(Expr::Match {
            selector,
            op: Op::Contains,
            negate,
            value,
            regex: None,
        })
    }

    fn selector_first(&mut self) -> Result<Expr, FilterError> {
        let selector = self.selector()?;
        let shape = selector.shape();
        let op_pos = self.pos();
        let (op, negate) = match self.next() {
            Tok::Eq => (Op::Equal, false),
            Tok::Ne => (Op::Equal, true),
            Tok::Word(w) if w == "is" => {
                let negate = self.is_word(0, "not");
                if negate {
                    self.next();
                }
                if !self.is_word(0, "empty") {
                    return Err(err(
                        self.pos(),
                        format!(
                            "expected `empty` or `not empty` after `is`, found {}",
                            describe(self.peek())
                        ),
                    ));
                }
                self.next();
                (Op::IsEmpty, negate)
            }
            Tok::Word(w) if w == "contains" => (Op::Contains, false),
            Tok::Word(w) if w == "matches" => (Op::Matches, false),
            Tok::Word(w) if w == "not" && self.is_word(0, "contains") => {
                self.next();
                (Op::Contains, true)
            }
            Tok::Word(w) if w == "not" && self.is_word(0, "matches") => {
                self.next();
                (Op::Matches, true)
            }
            t => {
                return Err(err(
                    op_pos,
                    format!(
                        "expected an operator (==, !=, is empty, is not empty, contains, \
                         not contains, matches, not matches), found {}",
                        describe(&t)
                    ),
                ))
            }
        };
        let allowed = matches!(
            (shape, op),
            (Shape::Int, Op::Equal)
                | (Shape::Str, _)
                | (Shape::List | Shape::Map, Op::IsEmpty | Op::Contains)
        );
        if !allowed {
            let use_ = match shape {
                Shape::Int => "a number: use == or !=",
                Shape::List => "a list: use contains, not contains, in, not in, is empty",
                Shape::Map => "a map: use contains, not contains, in, not in, is empty",
                Shape::Str => "",
            };
            return Err(err(op_pos, format!("the selector is {use_}")));
        }
        if op == Op::IsEmpty {
            return Ok(Expr::Match {
                selector,
                op,
                negate,
                value: String::new(),
                regex: None,
            });
        }
        let value_pos = self.pos();
        let value = match self.next() {
            Tok::Str(s) => s,
            Tok::Word(w) if !KEYWORDS.contains(&w.as_str()) => w,
            t => {
                return Err(err(
                    value_pos,
                    format!("expected a value (a quoted string), found {}", describe(&t)),
                ))
            }
        };
        if shape == Shape::Int && value.parse::<u16>().is_err() {
            return Err(err(
                value_pos,
                format!("expected a port number, found {value:?}"),
            ));
        }
        let regex = if op == Op::Matches {
            Some(crate::config_entry::router::build_regex(&value).map_err(|e| err(value_pos, e))?)
        } else {
            None
        };
        Ok(Expr::Match {
            selector,
            op,
            negate,
            value,
            regex,
        })
    }

    /// A selector word, with an optional `["key"]` after a `Meta`.
    fn selector(&mut self) -> Result<Selector, FilterError> {
        let pos = self.pos();
        let word = match self.next() {
            Tok::Word(w) if !KEYWORDS.contains(&w.as_str()) => w,
            t => {
                return Err(err(
                    pos,
                    format!("expected a selector ({SELECTORS}), found {}", describe(&t)),
                ))
            }
        };
        let unknown = || {
            err(
                pos,
                format!("unknown selector {word}: use one of {SELECTORS}"),
            )
        };
        let (root, field) = word.split_once('.').ok_or_else(unknown)?;
        let (field, key) = match field.split_once('.') {
            Some((f, k)) if !k.is_empty() => (f, Some(k.to_string())),
            Some(_) => return Err(unknown()),
            None => (field, None),
        };
        let mut sel = match (root, field, key) {
            ("Service", "Meta", key) => Selector::ServiceMeta(key),
            ("Node", "Meta", key) => Selector::NodeMeta(key),
            (_, _, Some(_)) => return Err(unknown()),
            ("Service", "ID", _) => Selector::ServiceId,
            ("Service", "Service", _) => Selector::ServiceName,
            ("Service", "Kind", _) => Selector::ServiceKind,
            ("Service", "Tags", _) => Selector::ServiceTags,
            ("Service", "Address", _) => Selector::ServiceAddress,
            ("Service", "Port", _) => Selector::ServicePort,
            ("Node", "ID", _) => Selector::NodeId,
            ("Node", "Node", _) => Selector::NodeName,
            ("Node", "Address", _) => Selector::NodeAddress,
            ("Node", "Datacenter", _) => Selector::NodeDatacenter,
            _ => return Err(unknown()),
        };
        if *self.peek() == Tok::LBracket {
            let bpos = self.pos();
            self.next();
            let key = match self.next() {
                Tok::Str(k) => k,
                t => {
                    return Err(err(
                        self.toks.get(self.at - 1).map_or(bpos, |(_, p)| *p),
                        format!("expected a quoted key after `[`, found {}", describe(&t)),
                    ))
                }
            };
            let close = self.pos();
            if self.next() != Tok::RBracket {
                return Err(err(close, "expected `]` after the key"));
            }
            sel = match sel {
                Selector::ServiceMeta(None) => Selector::ServiceMeta(Some(key)),
                Selector::NodeMeta(None) => Selector::NodeMeta(Some(key)),
                _ => return Err(err(bpos, "only a Meta map takes a [\"key\"]")),
            };
        }
        Ok(sel)
    }
}
