//! Self-tests of the checker: known-bad histories are refused with the right reason, known-good
//! ones (concurrent, uncertain, long) pass, and on thousands of small random histories the
//! verdict equals a brute-force search over every order and every choice of which uncertain
//! writes happened, which shares no code with the checker.

use rand::rngs::StdRng;
use rand::{RngExt, SeedableRng};

use super::*;

fn op(client: usize, kind: Kind, value: Option<&str>, invoke: u64, complete: Option<u64>) -> Op {
    Op {
        client,
        key: "k".into(),
        kind,
        value: value.map(str::to_string),
        invoke,
        complete,
        ok: complete.is_some(),
        server: String::new(),
        error: String::new(),
    }
}

fn w(client: usize, v: &str, invoke: u64, complete: u64) -> Op {
    op(client, Kind::Write, Some(v), invoke, Some(complete))
}

/// A write whose answer never came.
fn w_unknown(client: usize, v: &str, invoke: u64) -> Op {
    op(client, Kind::Write, Some(v), invoke, None)
}

fn r(client: usize, v: Option<&str>, invoke: u64, complete: u64) -> Op {
    op(client, Kind::Read, v, invoke, Some(complete))
}

fn reason(h: &[Op]) -> String {
    let report = check(h);
    assert!(report.inconclusive.is_none(), "{report:?}");
    match report.violation {
        Some(v) => {
            let text = v.render();
            assert!(text.contains(&v.reason), "{text}");
            v.reason
        }
        None => panic!("accepted a bad history: {h:#?}"),
    }
}

#[test]
fn a_lost_write_is_refused() {
    // The write was acknowledged, then a read that began after it sees nothing.
    let h = [w(0, "a", 0, 10), r(1, None, 20, 30)];
    assert!(reason(&h).contains("no order"), "{}", reason(&h));
}

#[test]
fn a_stale_read_is_refused() {
    // b overwrote a before the read began; the read still sees a.
    let h = [w(0, "a", 0, 10), w(0, "b", 20, 30), r(1, Some("a"), 40, 50)];
    assert!(reason(&h).contains("no order"));
}

#[test]
fn reordered_writes_are_refused() {
    // Reads see b then a, though a was written (and done) before b began.
    let h = [
        w(0, "a", 0, 10),
        w(0, "b", 20, 30),
        r(1, Some("b"), 40, 50),
        r(1, Some("a"), 60, 70),
    ];
    assert!(reason(&h).contains("no order"));
}

#[test]
fn a_read_of_a_value_never_written_is_refused() {
    let h = [w(0, "a", 0, 10), r(1, Some("zz"), 20, 30)];
    assert!(reason(&h).contains("never written"), "{}", reason(&h));
}

#[test]
fn a_read_of_a_value_before_its_write_began_is_refused() {
    let h = [r(1, Some("a"), 0, 10), w(0, "a", 20, 30)];
    assert!(
        reason(&h).contains("before its write was invoked"),
        "{}",
        reason(&h)
    );
    // Also when the write's outcome is unknown.
    let h = [r(1, Some("a"), 0, 10), w_unknown(0, "a", 20)];
    assert!(reason(&h).contains("before its write was invoked"));
}

#[test]
fn a_value_seen_then_gone_back_to_an_older_one_is_refused_across_segments() {
    // Quiescent points between every operation: the violation spans segments.
    let h = [
        w(0, "a", 0, 10),
        r(1, Some("a"), 20, 30),
        w(0, "b", 40, 50),
        r(1, Some("b"), 60, 70),
        r(2, Some("a"), 80, 90),
    ];
    let report = check(&h);
    assert!(report.segments >= 4, "{report:?}");
    assert!(reason(&h).contains("no order"));
}

#[test]
fn concurrent_reads_may_see_the_old_or_the_new_value() {
    let h = [
        w(0, "a", 0, 10),
        w(0, "b", 20, 60),
        r(1, Some("b"), 25, 30),
        r(2, Some("a"), 35, 40),
    ];
    // b is seen, then a: b's write was still in flight, but once b is seen a read that began
    // after that read completed cannot see a.
    assert!(!check(&h).linearizable());
    let h = [
        w(0, "a", 0, 10),
        w(0, "b", 20, 60),
        r(1, Some("a"), 25, 30),
        r(2, Some("b"), 35, 40),
        r(3, Some("b"), 32, 70),
    ];
    let report = check(&h);
    assert!(report.linearizable(), "{report:?}");
}

#[test]
fn uncertain_writes_may_have_happened_or_not() {
    // Never seen: as if it did not happen.
    let h = [
        w(0, "a", 0, 10),
        w_unknown(1, "x", 15),
        r(2, Some("a"), 20, 30),
    ];
    assert!(check(&h).linearizable());
    // Seen long after the client gave up: it happened late.
    let h = [
        w_unknown(1, "x", 0),
        w(0, "a", 10, 20),
        r(2, Some("a"), 30, 40),
        r(2, Some("x"), 5000, 5010),
        r(2, Some("x"), 6000, 6010),
    ];
    assert!(check(&h).linearizable());
    // Once seen, it cannot be undone by a later read of the older value.
    let h = [
        w(0, "a", 0, 10),
        w_unknown(1, "x", 20),
        r(2, Some("x"), 30, 40),
        r(2, Some("a"), 50, 60),
    ];
    assert!(!check(&h).linearizable());
}

#[test]
fn failed_reads_are_ignored() {
    let mut bad = r(1, Some("zz"), 20, 30);
    bad.ok = false;
    let h = [w(0, "a", 0, 10), bad, r(1, Some("a"), 40, 50)];
    assert!(check(&h).linearizable());
}

#[test]
fn keys_are_independent() {
    let mut h = vec![w(0, "a", 0, 10), r(1, Some("a"), 20, 30)];
    let mut other = r(1, None, 20, 30);
    other.key = "j".into();
    h.push(other);
    let report = check(&h);
    assert!(report.linearizable(), "{report:?}");
    assert_eq!(report.keys, 2);
}

#[test]
fn a_value_written_twice_is_a_malformed_history() {
    let h = [w(0, "a", 0, 10), w(1, "a", 20, 30)];
    assert!(reason(&h).contains("malformed"));
}

/// A history made by a real register: each operation takes effect at a random instant inside
/// its interval; some writes lose their answer (and some of those never happen).
fn simulated(seed: u64, clients: usize, keys: usize, ops: usize) -> Vec<Op> {
    let mut rng = StdRng::seed_from_u64(seed);
    let mut clock = vec![0u64; clients];
    // (effect time, op index, happens)
    let mut effects = Vec::new();
    let mut h = Vec::new();
    for n in 0..ops {
        let c = n % clients;
        let invoke = clock[c] + rng.random_range(0..50);
        let complete = invoke + rng.random_range(1..200);
        clock[c] = complete;
        let key = format!("k{}", rng.random_range(0..keys));
        let write = rng.random_bool(0.5);
        let at = rng.random_range(invoke..=complete);
        let lost = write && rng.random_bool(0.05);
        let happens = !lost || rng.random_bool(0.5);
        h.push(Op {
            client: c,
            key,
            kind: if write { Kind::Write } else { Kind::Read },
            value: write.then(|| format!("v{n}")),
            invoke,
            complete: (!lost).then_some(complete),
            ok: !lost,
            server: String::new(),
            error: String::new(),
        });
        effects.push((at, n, happens));
    }
    effects.sort();
    let mut registers: BTreeMap<String, String> = BTreeMap::new();
    for (_, n, happens) in effects {
        let o = &mut h[n];
        match o.kind {
            Kind::Write if happens => {
                registers.insert(o.key.clone(), o.value.clone().unwrap_or_default());
            }
            Kind::Write => {}
            Kind::Read => o.value = registers.get(&o.key).cloned(),
        }
    }
    h
}

#[test]
fn long_simulated_histories_are_linearizable_and_split_into_many_segments() {
    for seed in 0..3 {
        let h = simulated(seed, 4, 3, 100_000);
        let started = std::time::Instant::now();
        let report = check(&h);
        eprintln!(
            "seed {seed}: {} ops checked in {:?}: {} segments, largest {}, {} configurations",
            report.ops_checked,
            started.elapsed(),
            report.segments,
            report.largest_segment,
            report.configurations
        );
        assert!(
            report.linearizable(),
            "{:?}",
            report.violation.map(|v| v.render())
        );
        assert!(report.segments > 1000, "{report:?}");
    }
}

#[test]
fn a_simulated_history_with_one_read_changed_is_refused() {
    let mut h = simulated(7, 4, 1, 2000);
    // Make a read that sees a written value return the value two writes older: stale.
    let writes: Vec<usize> = (0..h.len()).filter(|&i| h[i].kind == Kind::Write).collect();
    let victim = (0..h.len())
        .rev()
        .find(|&i| {
            h[i].kind == Kind::Read
                && h[i].value.is_some()
                && h[i].invoke > h[writes[10]].complete.unwrap_or(0)
        })
        .expect("a read");
    // The latest write completed before the read began, two back from it.
    let before: Vec<usize> = writes
        .iter()
        .copied()
        .filter(|&i| h[i].ok && h[i].complete.unwrap_or(u64::MAX) < h[victim].invoke)
        .collect();
    let stale = before[before.len() - 3];
    h[victim].value = h[stale].value.clone();
    let report = check(&h);
    assert!(report.violation.is_some(), "{report:?}");
}

/// Every order of every subset of the uncertain writes, by brute force: nothing shared with
/// the checker (uncertain writes keep an open end; no splitting; no shortcut for reads).
fn brute_force(h: &[Op]) -> bool {
    let reads: Vec<&Op> = h
        .iter()
        .filter(|o| o.kind == Kind::Read && o.ok && o.complete.is_some())
        .collect();
    let sure: Vec<&Op> = h.iter().filter(|o| o.kind == Kind::Write && o.ok).collect();
    let unsure: Vec<&Op> = h
        .iter()
        .filter(|o| o.kind == Kind::Write && !o.ok)
        .collect();
    for mask in 0..(1u32 << unsure.len()) {
        let mut ops: Vec<&Op> = reads.iter().chain(sure.iter()).copied().collect();
        for (i, o) in unsure.iter().enumerate() {
            if mask & (1 << i) != 0 {
                ops.push(o);
            }
        }
        let mut used = vec![false; ops.len()];
        if order_exists(&ops, &mut used, &None) {
            return true;
        }
    }
    false
}

fn order_exists(ops: &[&Op], used: &mut [bool], value: &Option<String>) -> bool {
    if used.iter().all(|u| *u) {
        return true;
    }
    for i in 0..ops.len() {
        if used[i] {
            continue;
        }
        // Real time: nothing left may have completed before this one began.
        let blocked = (0..ops.len())
            .any(|j| j != i && !used[j] && ops[j].complete.is_some_and(|c| c < ops[i].invoke));
        if blocked {
            continue;
        }
        let next = match ops[i].kind {
            Kind::Write => ops[i].value.clone(),
            Kind::Read if &ops[i].value == value => value.clone(),
            Kind::Read => continue,
        };
        used[i] = true;
        let found = order_exists(ops, used, &next);
        used[i] = false;
        if found {
            return true;
        }
    }
    false
}

#[test]
fn small_random_histories_agree_with_brute_force() {
    let mut rng = StdRng::seed_from_u64(0x11ea);
    let (mut good, mut bad) = (0, 0);
    for case in 0..4000 {
        let n = rng.random_range(1..=7);
        let mut h = Vec::new();
        for i in 0..n {
            let invoke = rng.random_range(0..30);
            let complete = invoke + rng.random_range(1..15);
            let write = rng.random_bool(0.5);
            let mut o = if write {
                w(i % 3, &format!("v{i}"), invoke, complete)
            } else {
                r(i % 3, None, invoke, complete)
            };
            if rng.random_bool(0.2) {
                o.ok = false;
                o.complete = None;
            }
            h.push(o);
        }
        // Reads return the initial value or one of the values written (even later ones).
        let values: Vec<String> = h
            .iter()
            .filter_map(|o| (o.kind == Kind::Write).then(|| o.value.clone()).flatten())
            .collect();
        for o in h.iter_mut().filter(|o| o.kind == Kind::Read) {
            let k = rng.random_range(0..=values.len());
            o.value = values.get(k).cloned();
        }
        let expected = brute_force(&h);
        let report = check(&h);
        assert!(report.inconclusive.is_none());
        assert_eq!(report.linearizable(), expected, "case {case}: {h:#?}");
        if expected {
            good += 1;
        } else {
            bad += 1;
        }
    }
    // Both verdicts were exercised.
    assert!(good > 500 && bad > 500, "good {good}, bad {bad}");
}
