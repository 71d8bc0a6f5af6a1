//! Linearizability of a history of reads and writes on per-key registers, as Jepsen's Knossos
//! and Porcupine check it: is there, for every key, one order of its operations that respects
//! real time (an operation that completed before another was invoked comes first) and register
//! semantics (a read returns the last value written before it, or nothing before any write)?
//!
//! The history is what clients saw: each operation's invocation and completion time on one
//! clock, and for a read what it returned. Written values are unique across the history.
//!
//! - A read that failed (an error, a timeout) told nothing and is dropped.
//! - A write that failed or got no answer may or may not have happened. Unless some read
//!   returned its value it is dropped (not happening is always a valid choice for a write that
//!   nobody saw). If a read returned it, it happened, before that read completed: its
//!   completion is taken as the earliest completion of a read of its value.
//! - Keys are independent (a register per key is P-compositional), so each is checked alone.
//! - A key's history is split at quiescent points (no operation in flight): only the register's
//!   value crosses such a point, so each segment is searched alone, from every value the
//!   previous segment can end with. A long history checks in time linear in its segments.
//!
//! Within a segment, [`search`] is Wing & Gong's search with Lowe's memoization: the
//! configurations (operations linearized so far, register value) are explored depth first and
//! each is visited once. A read that matches the value when it may be linearized is taken at
//! once (a read changes nothing, so taking it early never excludes an order).
//!
//! Before the search, two defects are named directly: a read of a value that was never written,
//! and a read that completed before its write was invoked.

mod search;
#[cfg(test)]
mod tests;

use std::collections::{BTreeMap, BTreeSet};
use std::fmt::Write as _;

use serde::{Deserialize, Serialize};

pub use search::Budget;

/// What an operation did.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Kind {
    Read,
    Write,
}

/// One client operation on one key. Times are microseconds on the history's clock.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Op {
    pub client: usize,
    pub key: String,
    pub kind: Kind,
    /// A write: the value written. A read that succeeded: the value returned (`None`: the key
    /// was absent).
    pub value: Option<String>,
    pub invoke: u64,
    /// When the answer came; `None` when none came (a timeout, a connection error).
    pub complete: Option<u64>,
    /// The operation succeeded. A write that did not may or may not have happened; a read that
    /// did not is ignored.
    pub ok: bool,
    /// Who answered (a server name), for reading a failure.
    #[serde(default)]
    pub server: String,
    /// The error, when not `ok`.
    #[serde(default)]
    pub error: String,
}

/// A history with no linearization, and what shows it.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Violation {
    pub key: String,
    pub reason: String,
    /// The operations of the segment (or the direct evidence) that cannot be ordered, by
    /// invocation time.
    pub ops: Vec<Op>,
    /// The values the register could hold when the segment began (`None`: absent).
    pub initial: Vec<Option<String>>,
    /// The longest order found, as indexes into `ops`; the next operations could not follow it.
    pub longest: Vec<usize>,
}

impl Violation {
    /// A human-readable account: the reason, the operations on a timeline and the longest
    /// partial order the search found.
    pub fn render(&self) -> String {
        let mut out = String::new();
        let _ = writeln!(out, "key {}: {}", self.key, self.reason);
        if !self.initial.is_empty() {
            let init: Vec<String> = self.initial.iter().map(show).collect();
            let _ = writeln!(out, "possible values before: {}", init.join(", "));
        }
        let t0 = self.ops.iter().map(|o| o.invoke).min().unwrap_or(0);
        for (i, o) in self.ops.iter().enumerate() {
            let end = match o.complete {
                Some(c) => format!("{:>10.3}", (c - t0.min(c)) as f64 / 1000.0),
                None => format!("{:>10}", "-"),
            };
            let _ = writeln!(
                out,
                "  #{i:<4} [{:>10.3} ms, {end} ms] client {} {:5} {:<24} {}{}{}",
                (o.invoke - t0) as f64 / 1000.0,
                o.client,
                match o.kind {
                    Kind::Read => "read",
                    Kind::Write => "write",
                },
                show(&o.value),
                if o.ok { "ok" } else { "UNKNOWN" },
                if o.server.is_empty() {
                    String::new()
                } else {
                    format!(" via {}", o.server)
                },
                if o.error.is_empty() {
                    String::new()
                } else {
                    format!(" ({})", o.error)
                },
            );
        }
        if !self.longest.is_empty() {
            let order: Vec<String> = self.longest.iter().map(|i| format!("#{i}")).collect();
            let _ = writeln!(out, "longest valid order: {}", order.join(" "));
        }
        out
    }
}

fn show(v: &Option<String>) -> String {
    match v {
        Some(s) => s.clone(),
        None => "(absent)".into(),
    }
}

/// What a check looked at.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct Report {
    pub keys: usize,
    /// Operations kept for the search (failed reads and unseen failed writes dropped).
    pub ops_checked: usize,
    pub segments: usize,
    pub largest_segment: usize,
    /// Configurations the search visited.
    pub configurations: u64,
    pub violation: Option<Violation>,
    /// The search gave up (the budget ran out) on this key: neither verdict holds.
    pub inconclusive: Option<String>,
}

impl Report {
    pub fn linearizable(&self) -> bool {
        self.violation.is_none() && self.inconclusive.is_none()
    }
}

/// Checks every key of `history` with the default search budget.
pub fn check(history: &[Op]) -> Report {
    check_with(history, Budget::default())
}

/// Checks every key of `history`; stops at the first key with a violation.
pub fn check_with(history: &[Op], budget: Budget) -> Report {
    let mut by_key: BTreeMap<&str, Vec<&Op>> = BTreeMap::new();
    for op in history {
        by_key.entry(&op.key).or_default().push(op);
    }
    let mut report = Report {
        keys: by_key.len(),
        ..Report::default()
    };
    for (key, ops) in by_key {
        match check_key(key, &ops, &budget, &mut report) {
            Ok(()) => {}
            Err(Stop::Violation(v)) => {
                report.violation = Some(*v);
                return report;
            }
            Err(Stop::Inconclusive(why)) => {
                report.inconclusive = Some(format!("key {key}: {why}"));
                return report;
            }
        }
    }
    report
}

enum Stop {
    Violation(Box<Violation>),
    Inconclusive(String),
}

/// An operation as the search sees it: its interval and its effect on value ids (0: absent).
#[derive(Clone, Copy, Debug)]
pub(crate) struct Entry {
    pub invoke: u64,
    pub complete: u64,
    pub write: bool,
    pub value: u32,
    /// Index into the key's operations.
    pub op: usize,
}

fn violation(key: &str, reason: String, ops: Vec<Op>) -> Stop {
    Stop::Violation(Box::new(Violation {
        key: key.to_string(),
        reason,
        ops,
        initial: Vec::new(),
        longest: Vec::new(),
    }))
}

fn check_key(key: &str, ops: &[&Op], budget: &Budget, report: &mut Report) -> Result<(), Stop> {
    // Value ids: 0 is "absent"; each written value gets its own.
    let mut ids: BTreeMap<&str, u32> = BTreeMap::new();
    let mut names: Vec<Option<String>> = vec![None];
    let mut writer: Vec<usize> = vec![usize::MAX];
    for (i, op) in ops.iter().enumerate() {
        if op.kind != Kind::Write {
            continue;
        }
        let Some(v) = op.value.as_deref() else {
            return Err(violation(
                key,
                "malformed history: a write without a value".into(),
                vec![(*op).clone()],
            ));
        };
        if let Some(&other) = ids.get(v) {
            return Err(violation(
                key,
                format!("malformed history: the value {v} was written twice"),
                vec![ops[writer[other as usize]].clone(), (*op).clone()],
            ));
        }
        ids.insert(v, names.len() as u32);
        names.push(Some(v.to_string()));
        writer.push(i);
    }

    // Reads that answered, and what they say about the writes.
    let mut first_read_done: Vec<Option<u64>> = vec![None; names.len()];
    let mut entries = Vec::new();
    for (i, op) in ops.iter().enumerate() {
        if op.kind != Kind::Read || !op.ok {
            continue;
        }
        let Some(done) = op.complete else { continue };
        let id = match op.value.as_deref() {
            None => 0,
            Some(v) => match ids.get(v) {
                Some(&id) => id,
                None => {
                    return Err(violation(
                        key,
                        format!("a read returned {v}, a value never written to this key"),
                        vec![(*op).clone()],
                    ))
                }
            },
        };
        if id != 0 {
            let w = ops[writer[id as usize]];
            if done < w.invoke {
                return Err(violation(
                    key,
                    format!(
                        "a read returned {} {:.3} ms before its write was invoked",
                        show(&op.value),
                        (w.invoke - done) as f64 / 1000.0
                    ),
                    vec![(*op).clone(), w.clone()],
                ));
            }
            let slot = &mut first_read_done[id as usize];
            *slot = Some(slot.map_or(done, |d| d.min(done)));
        }
        entries.push(Entry {
            invoke: op.invoke,
            complete: done,
            write: false,
            value: id,
            op: i,
        });
    }
    for (id, &i) in writer.iter().enumerate().skip(1) {
        let op = ops[i];
        let complete = match (op.ok, op.complete, first_read_done[id]) {
            (true, Some(c), _) => c,
            // Seen, so it happened, before the first read of it completed.
            (_, _, Some(read)) => read,
            // Unseen and uncertain: it may not have happened.
            _ => continue,
        };
        entries.push(Entry {
            invoke: op.invoke,
            complete,
            write: true,
            value: id as u32,
            op: i,
        });
    }
    entries.sort_by_key(|e| (e.invoke, e.complete));
    report.ops_checked += entries.len();

    // Segments: a new one begins at an operation invoked after everything before it completed.
    let mut states: BTreeSet<u32> = BTreeSet::from([0]);
    let mut start = 0;
    let mut horizon = 0u64;
    for i in 0..=entries.len() {
        let boundary = i == entries.len() || (i > start && entries[i].invoke > horizon);
        if boundary && i > start {
            let segment = &entries[start..i];
            report.segments += 1;
            report.largest_segment = report.largest_segment.max(segment.len());
            let outcome = search::search(segment, &states, budget);
            report.configurations += outcome.visited;
            if outcome.exhausted {
                return Err(Stop::Inconclusive(format!(
                    "the search budget ({} configurations) ran out on a segment of {} operations",
                    budget.configurations,
                    segment.len()
                )));
            }
            if outcome.finals.is_empty() {
                return Err(Stop::Violation(Box::new(Violation {
                    key: key.to_string(),
                    reason: format!(
                        "no order of these {} operations respects real time and register \
                         semantics (a stale read, or a lost or reordered write)",
                        segment.len()
                    ),
                    ops: segment.iter().map(|e| ops[e.op].clone()).collect(),
                    initial: states.iter().map(|&s| names[s as usize].clone()).collect(),
                    longest: outcome.longest,
                })));
            }
            states = outcome.finals;
            start = i;
        }
        if i < entries.len() {
            if i == start {
                horizon = entries[i].complete;
            } else {
                horizon = horizon.max(entries[i].complete);
            }
        }
    }
    Ok(())
}
