//! Rendering: aligned tables for people, pretty JSON (the API's own document) for programs.

use std::io::{self, Write as _};

use serde_json::Value;

/// `-o/--output`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum Format {
    /// Aligned columns.
    Table,
    /// JSON, pretty-printed: the API's answer, or an object saying what was done.
    Json,
}

/// Columns separated by two spaces, each as wide as its widest cell; the last column is not
/// padded. An empty cell shows as `-` so columns stay countable.
#[derive(Debug, Default)]
pub struct Table {
    headers: Vec<String>,
    rows: Vec<Vec<String>>,
}

impl Table {
    pub fn new(headers: &[&str]) -> Table {
        Table {
            headers: headers.iter().map(|h| h.to_string()).collect(),
            rows: Vec::new(),
        }
    }

    /// Adds a row; missing cells are empty, extra cells are dropped.
    pub fn push(&mut self, row: Vec<String>) {
        self.rows.push(row);
    }

    pub fn render(&self) -> String {
        let n = self.headers.len();
        let cell = |row: &[String], i: usize| -> String {
            match row.get(i).map(|c| one_line(c)) {
                Some(c) if !c.is_empty() => c,
                _ => "-".to_string(),
            }
        };
        let lines: Vec<Vec<String>> = std::iter::once(self.headers.clone())
            .chain(
                self.rows
                    .iter()
                    .map(|r| (0..n).map(|i| cell(r, i)).collect()),
            )
            .collect();
        let widths: Vec<usize> = (0..n)
            .map(|i| {
                lines
                    .iter()
                    .map(|l| l[i].chars().count())
                    .max()
                    .unwrap_or(0)
            })
            .collect();
        let mut out = String::new();
        for line in &lines {
            let mut text = String::new();
            for (i, c) in line.iter().enumerate() {
                if i + 1 == n {
                    text.push_str(c);
                } else {
                    text.push_str(c);
                    let pad = widths[i] - c.chars().count() + 2;
                    text.extend(std::iter::repeat_n(' ', pad));
                }
            }
            out.push_str(text.trim_end());
            out.push('\n');
        }
        out
    }
}

/// Collapses all whitespace runs (newlines included) into single spaces.
pub fn one_line(s: &str) -> String {
    s.split_whitespace().collect::<Vec<_>>().join(" ")
}

/// Pretty JSON with a trailing newline.
pub fn json_pretty(v: &Value) -> String {
    let mut s = serde_json::to_string_pretty(v).expect("a JSON value always serializes");
    s.push('\n');
    s
}

/// Writes text to stdout.
pub fn print(s: &str) -> io::Result<()> {
    print_bytes(s.as_bytes())
}

/// Writes bytes to stdout as they are (KV values need not be UTF-8).
pub fn print_bytes(b: &[u8]) -> io::Result<()> {
    let mut out = io::stdout().lock();
    out.write_all(b)?;
    out.flush()
}

/// Whether an error comes from writing to a closed pipe.
pub fn is_broken_pipe(err: &anyhow::Error) -> bool {
    err.chain().any(|e| {
        e.downcast_ref::<io::Error>()
            .is_some_and(|e| e.kind() == io::ErrorKind::BrokenPipe)
    })
}

/// The string at `v[key]`, or "" when absent or not a string.
pub fn str_field<'a>(v: &'a Value, key: &str) -> &'a str {
    v.get(key).and_then(Value::as_str).unwrap_or("")
}

/// `host:port`, with brackets around an IPv6 host; just the host when the port is 0 or absent.
pub fn host_port(host: &str, port: u64) -> String {
    match (host.contains(':'), port) {
        (_, 0) => host.to_string(),
        (true, p) => format!("[{host}]:{p}"),
        (false, p) => format!("{host}:{p}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn table_aligns_columns() {
        let mut t = Table::new(&["Node", "Address", "Status"]);
        t.push(vec![
            "alpha".into(),
            "127.0.0.1:8301".into(),
            "alive".into(),
        ]);
        t.push(vec!["b".into(), "10.0.0.2:8301".into(), "failed".into()]);
        assert_eq!(
            t.render(),
            "Node   Address         Status\n\
             alpha  127.0.0.1:8301  alive\n\
             b      10.0.0.2:8301   failed\n"
        );
    }

    #[test]
    fn table_fills_empty_and_missing_cells_and_keeps_rows_on_one_line() {
        let mut t = Table::new(&["A", "B", "C"]);
        t.push(vec!["x".into(), String::new()]);
        t.push(vec![
            "multi\nline".into(),
            "y".into(),
            "z".into(),
            "extra".into(),
        ]);
        assert_eq!(
            t.render(),
            "A           B  C\n\
             x           -  -\n\
             multi line  y  z\n"
        );
    }

    #[test]
    fn table_counts_characters_not_bytes() {
        let mut t = Table::new(&["K", "V"]);
        t.push(vec!["ü".into(), "1".into()]);
        t.push(vec!["ab".into(), "2".into()]);
        assert_eq!(t.render(), "K   V\nü   1\nab  2\n");
    }

    #[test]
    fn header_only_table() {
        assert_eq!(Table::new(&["Service", "Tags"]).render(), "Service  Tags\n");
    }

    #[test]
    fn fields_and_addresses() {
        let v = json!({"Name": "n", "Port": 8301});
        assert_eq!(str_field(&v, "Name"), "n");
        assert_eq!(str_field(&v, "Port"), "");
        assert_eq!(str_field(&v, "Missing"), "");
        assert_eq!(host_port("10.0.0.1", 80), "10.0.0.1:80");
        assert_eq!(host_port("::1", 80), "[::1]:80");
        assert_eq!(host_port("10.0.0.1", 0), "10.0.0.1");
    }

    #[test]
    fn json_is_pretty_with_newline() {
        assert_eq!(json_pretty(&json!({"a": 1})), "{\n  \"a\": 1\n}\n");
    }

    #[test]
    fn one_line_collapses_whitespace() {
        assert_eq!(one_line(" a\n b\t\tc "), "a b c");
    }
}
