//! Wing & Gong's search for a linearization of one segment, with Lowe's memoization: every
//! configuration (the set of operations linearized so far, the register's value) is visited at
//! most once, depth first, with an explicit stack.
//!
//! An operation may come next when no other operation not yet linearized completed before it
//! was invoked. A write sets the value; a read must match it. When a read may come next and
//! matches, it is the only move tried: a read changes nothing, and every order that takes it
//! later can take it now instead (everything still pending completed no earlier than it was
//! invoked). The search goes on past the first complete order, to collect every value the
//! segment can end with.

use std::collections::{BTreeSet, HashSet};

use super::Entry;

/// Bounds on one search.
#[derive(Clone, Copy, Debug)]
pub struct Budget {
    /// Most configurations one segment may visit before the check is called inconclusive.
    pub configurations: u64,
}

impl Default for Budget {
    fn default() -> Self {
        Budget {
            configurations: 20_000_000,
        }
    }
}

pub(crate) struct Outcome {
    /// The values a complete order can end with; empty: there is none.
    pub finals: BTreeSet<u32>,
    /// The longest partial order reached (positions in the segment).
    pub longest: Vec<usize>,
    pub visited: u64,
    /// The budget ran out before the search was done.
    pub exhausted: bool,
}

type Bits = Box<[u64]>;

fn is_set(bits: &[u64], i: usize) -> bool {
    bits[i / 64] & (1 << (i % 64)) != 0
}

fn with(bits: &[u64], i: usize) -> Bits {
    let mut b: Bits = bits.into();
    b[i / 64] |= 1 << (i % 64);
    b
}

struct Config {
    bits: Bits,
    value: u32,
    done: usize,
    /// Its node in the tree of orders: the last operation taken and the node before it.
    node: usize,
}

/// The orders explored, as a tree: (parent node, operation); node 0 is the empty order.
struct Orders(Vec<(usize, usize)>);

impl Orders {
    fn extend(&mut self, node: usize, op: usize) -> usize {
        self.0.push((node, op));
        self.0.len() - 1
    }

    fn order(&self, mut node: usize) -> Vec<usize> {
        let mut out = Vec::new();
        while node != 0 {
            let (parent, op) = self.0[node];
            out.push(op);
            node = parent;
        }
        out.reverse();
        out
    }
}

pub(crate) fn search(segment: &[Entry], initial: &BTreeSet<u32>, budget: &Budget) -> Outcome {
    let n = segment.len();
    let words = n.div_ceil(64).max(1);
    let mut seen: HashSet<(Bits, u32)> = HashSet::new();
    let mut stack: Vec<Config> = Vec::new();
    let mut orders = Orders(vec![(0, usize::MAX)]);
    for &v in initial {
        let bits: Bits = vec![0; words].into_boxed_slice();
        if seen.insert((bits.clone(), v)) {
            stack.push(Config {
                bits,
                value: v,
                done: 0,
                node: 0,
            });
        }
    }
    let mut deepest = (0usize, 0usize);
    let mut out = Outcome {
        finals: BTreeSet::new(),
        longest: Vec::new(),
        visited: 0,
        exhausted: false,
    };
    while let Some(c) = stack.pop() {
        out.visited += 1;
        if out.visited > budget.configurations {
            out.exhausted = true;
            break;
        }
        if c.done > deepest.0 {
            deepest = (c.done, c.node);
        }
        if c.done == n {
            out.finals.insert(c.value);
            continue;
        }
        // Everything pending must still be able to come after the next operation.
        let deadline = (0..n)
            .filter(|&i| !is_set(&c.bits, i))
            .map(|i| segment[i].complete)
            .min()
            .unwrap_or(u64::MAX);
        let candidates: Vec<usize> = (0..n)
            .filter(|&i| !is_set(&c.bits, i) && segment[i].invoke <= deadline)
            .collect();
        if let Some(&r) = candidates
            .iter()
            .find(|&&i| !segment[i].write && segment[i].value == c.value)
        {
            push(&mut stack, &mut seen, &mut orders, &c, r, c.value);
            continue;
        }
        for &i in &candidates {
            let e = &segment[i];
            if e.write {
                push(&mut stack, &mut seen, &mut orders, &c, i, e.value);
            }
        }
    }
    out.longest = orders.order(deepest.1);
    out
}

fn push(
    stack: &mut Vec<Config>,
    seen: &mut HashSet<(Bits, u32)>,
    orders: &mut Orders,
    c: &Config,
    i: usize,
    value: u32,
) {
    let bits = with(&c.bits, i);
    if seen.insert((bits.clone(), value)) {
        stack.push(Config {
            bits,
            value,
            done: c.done + 1,
            node: orders.extend(c.node, i),
        });
    }
}
