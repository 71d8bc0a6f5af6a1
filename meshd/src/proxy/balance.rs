//! Choosing an endpoint (a healthy service instance) for each proxied connection.
//!
//! Three policies, named as in a `service-defaults` config entry's `LoadBalancer.Policy`:
//! smooth weighted round robin, least request with two random choices, and a consistent hash
//! ring on the caller's address. Weights: an endpoint of weight 0 is never chosen unless every
//! endpoint of the set has weight 0 (then all count as 1).

use std::cmp::Reverse;
use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};

use rand::RngExt;

/// Ring points per unit of weight.
const POINTS_PER_WEIGHT: u64 = 100;
/// The most points a ring holds (weights are scaled down beyond it).
const MAX_RING_POINTS: u64 = 100_000;

/// Load-balancing policy, as named in a `service-defaults` config entry's `LoadBalancer.Policy`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum Policy {
    #[default]
    RoundRobin,
    LeastRequest,
    ConsistentHash,
}

impl Policy {
    /// Parses Consul's names: "" or "round_robin" -> RoundRobin, "least_request" ->
    /// LeastRequest, "ring_hash" or "maglev" or "consistent_hash" -> ConsistentHash.
    pub fn parse(s: &str) -> Result<Policy, String> {
        match s {
            "" | "round_robin" => Ok(Policy::RoundRobin),
            "least_request" => Ok(Policy::LeastRequest),
            "ring_hash" | "maglev" | "consistent_hash" => Ok(Policy::ConsistentHash),
            other => Err(format!(
                "unknown load balancer policy {other:?}; expected one of \"round_robin\", \
                 \"least_request\", \"ring_hash\", \"maglev\", \"consistent_hash\" (or empty)"
            )),
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Policy::RoundRobin => "round_robin",
            Policy::LeastRequest => "least_request",
            Policy::ConsistentHash => "ring_hash",
        }
    }
}

/// One candidate endpoint. `key` identifies it stably (e.g. "node/service-id"); an endpoint of
/// `weight` 0 is never chosen unless every weight of the set is 0.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Endpoint {
    pub key: String,
    pub addr: SocketAddr,
    pub node: String,
    pub weight: u32,
}

/// A consistent hash ring, built for one endpoint set.
struct Ring {
    /// The set it was built for: keys (sorted) and effective weights.
    sig: Vec<(String, u32)>,
    /// (hash, index into `sig`), sorted.
    points: Vec<(u64, usize)>,
}

/// The balancer state for one destination service. Thread-safe.
pub struct Balancer {
    policy: Policy,
    /// Smooth weighted round robin: the current weight of each key.
    current: Mutex<HashMap<String, i64>>,
    /// In-flight connections per key.
    in_flight: Mutex<HashMap<String, Arc<AtomicUsize>>>,
    /// The ring of the last endpoint set seen.
    ring: Mutex<Option<Arc<Ring>>>,
}

/// One in-flight connection to an endpoint; dropping it decrements the count of its key.
pub struct InFlight {
    count: Arc<AtomicUsize>,
}

impl Drop for InFlight {
    fn drop(&mut self) {
        self.count.fetch_sub(1, Ordering::Relaxed);
    }
}

/// The usable endpoints of `endpoints` with their effective weights, sorted and deduplicated
/// by key: weight 0 drops an endpoint, unless all are 0 (then all count as 1).
fn candidates(endpoints: &[Endpoint]) -> Vec<(&Endpoint, u32)> {
    let mut v: Vec<&Endpoint> = endpoints.iter().collect();
    v.sort_by(|a, b| a.key.cmp(&b.key));
    v.dedup_by(|a, b| a.key == b.key);
    let all_zero = v.iter().all(|e| e.weight == 0);
    v.into_iter()
        .filter_map(|e| match e.weight {
            0 if all_zero => Some((e, 1)),
            0 => None,
            w => Some((e, w)),
        })
        .collect()
}

/// FNV-1a 64 followed by a 64-bit finalizer (splitmix64) for a better spread on a ring.
fn hash64(bytes: &[u8]) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in bytes {
        h ^= u64::from(*b);
        h = h.wrapping_mul(0x0000_0100_0000_01b3);
    }
    h ^= h >> 30;
    h = h.wrapping_mul(0xbf58_476d_1ce4_e5b9);
    h ^= h >> 27;
    h = h.wrapping_mul(0x94d0_49bb_1331_11eb);
    h ^ (h >> 31)
}

impl Ring {
    fn build(cands: &[(&Endpoint, u32)]) -> Ring {
        let total: u64 = cands.iter().map(|(_, w)| u64::from(*w)).sum();
        let scale = total.saturating_mul(POINTS_PER_WEIGHT) > MAX_RING_POINTS;
        let mut points = Vec::new();
        for (idx, (e, w)) in cands.iter().enumerate() {
            let w = u64::from(*w);
            let n = if scale {
                (w * MAX_RING_POINTS / total.max(1)).max(1)
            } else {
                w * POINTS_PER_WEIGHT
            };
            for i in 0..n {
                points.push((hash64(format!("{}#{i}", e.key).as_bytes()), idx));
            }
        }
        points.sort_unstable();
        Ring {
            sig: cands.iter().map(|(e, w)| (e.key.clone(), *w)).collect(),
            points,
        }
    }

    fn matches(&self, cands: &[(&Endpoint, u32)]) -> bool {
        let theirs = cands.iter().map(|(e, w)| (e.key.as_str(), *w));
        self.sig.iter().map(|(k, w)| (k.as_str(), *w)).eq(theirs)
    }
}

/// Index of a weighted random choice among `items`, leaving out index `skip`.
fn weighted_choice(items: &[(&Endpoint, u32)], skip: Option<usize>) -> Option<usize> {
    let weight = |i: usize| u64::from(items[i].1) * u64::from(Some(i) != skip);
    let total: u64 = (0..items.len()).map(weight).sum();
    if total == 0 {
        return None;
    }
    let mut r = rand::rng().random_range(0..total);
    (0..items.len()).find(|&i| {
        let hit = r < weight(i);
        r = r.saturating_sub(weight(i));
        hit
    })
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

/// Whether `key` is in `cands` (sorted by key).
fn has_key(cands: &[(&Endpoint, u32)], key: &str) -> bool {
    cands
        .binary_search_by(|(e, _)| e.key.as_str().cmp(key))
        .is_ok()
}

impl Balancer {
    pub fn new(policy: Policy) -> Balancer {
        Balancer {
            policy,
            current: Mutex::new(HashMap::new()),
            in_flight: Mutex::new(HashMap::new()),
            ring: Mutex::new(None),
        }
    }

    pub fn policy(&self) -> Policy {
        self.policy
    }

    /// Picks an endpoint from `endpoints` (the current healthy set, in any order), skipping any
    /// whose key is in `exclude` (endpoints already tried for this connection). `caller` is
    /// the caller's IP (used by ConsistentHash only). None if nothing is left.
    pub fn pick(
        &self,
        endpoints: &[Endpoint],
        exclude: &[String],
        caller: IpAddr,
    ) -> Option<Endpoint> {
        let cands = candidates(endpoints);
        self.prune_in_flight(&cands);
        if self.policy == Policy::ConsistentHash {
            return self.pick_hash(&cands, exclude, caller);
        }
        let eligible: Vec<(&Endpoint, u32)> = cands
            .iter()
            .filter(|(e, _)| !exclude.contains(&e.key))
            .copied()
            .collect();
        match eligible.len() {
            0 => None,
            1 => Some(eligible[0].0.clone()),
            _ if self.policy == Policy::LeastRequest => self.pick_least(&eligible),
            _ => self.pick_round_robin(&cands, &eligible),
        }
    }

    /// Marks a connection to `key` started; dropping the guard marks it finished.
    pub fn start(&self, key: &str) -> InFlight {
        let mut map = lock(&self.in_flight);
        let count = map.entry(key.to_string()).or_default().clone();
        count.fetch_add(1, Ordering::Relaxed);
        InFlight { count }
    }

    /// The number of connections to `key` in flight.
    pub fn in_flight(&self, key: &str) -> usize {
        let map = lock(&self.in_flight);
        map.get(key).map_or(0, |c| c.load(Ordering::Relaxed))
    }

    /// Drops the counts of keys gone from the set and without a connection in flight.
    fn prune_in_flight(&self, cands: &[(&Endpoint, u32)]) {
        let mut map = lock(&self.in_flight);
        if map.len() > 2 * cands.len() + 8 {
            map.retain(|k, c| Arc::strong_count(c) > 1 || has_key(cands, k));
        }
    }

    /// nginx's smooth weighted round robin over `eligible` (all from `cands`, sorted by key).
    fn pick_round_robin(
        &self,
        cands: &[(&Endpoint, u32)],
        eligible: &[(&Endpoint, u32)],
    ) -> Option<Endpoint> {
        let mut current = lock(&self.current);
        if current.len() > cands.len() {
            current.retain(|k, _| has_key(cands, k));
        }
        let total: i64 = eligible.iter().map(|(_, w)| i64::from(*w)).sum();
        let mut best: Option<(&Endpoint, i64)> = None;
        for (e, w) in eligible {
            let c = current.entry(e.key.clone()).or_insert(0);
            *c += i64::from(*w);
            if best.is_none_or(|(_, b)| *c > b) {
                best = Some((e, *c));
            }
        }
        let (e, _) = best?;
        if let Some(c) = current.get_mut(&e.key) {
            *c -= total;
        }
        Some(e.clone())
    }

    /// Power of two choices: two distinct weighted random endpoints, the less loaded wins
    /// (ties: the higher weight, then the first drawn).
    fn pick_least(&self, eligible: &[(&Endpoint, u32)]) -> Option<Endpoint> {
        let a = weighted_choice(eligible, None)?;
        let Some(b) = weighted_choice(eligible, Some(a)) else {
            return Some(eligible[a].0.clone());
        };
        let load = |i: usize| (self.in_flight(&eligible[i].0.key), Reverse(eligible[i].1));
        let winner = if load(b) < load(a) { b } else { a };
        Some(eligible[winner].0.clone())
    }

    /// The first ring point clockwise from the caller's hash whose endpoint is not excluded.
    fn pick_hash(
        &self,
        cands: &[(&Endpoint, u32)],
        exclude: &[String],
        caller: IpAddr,
    ) -> Option<Endpoint> {
        if cands.is_empty() {
            return None;
        }
        let ring = {
            let mut cached = lock(&self.ring);
            match cached.as_ref() {
                Some(r) if r.matches(cands) => r.clone(),
                _ => {
                    let r = Arc::new(Ring::build(cands));
                    *cached = Some(r.clone());
                    r
                }
            }
        };
        let h = hash64(caller.to_string().as_bytes());
        let n = ring.points.len();
        let start = ring.points.partition_point(|p| p.0 < h);
        (0..n)
            .map(|j| ring.points[(start + j) % n].1)
            .find(|&idx| !exclude.contains(&cands[idx].0.key))
            .map(|idx| cands[idx].0.clone())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const ALL: [Policy; 3] = [
        Policy::RoundRobin,
        Policy::LeastRequest,
        Policy::ConsistentHash,
    ];

    fn ep(key: &str, weight: u32) -> Endpoint {
        let (addr, node) = (SocketAddr::from(([127, 0, 0, 1], 80)), format!("n-{key}"));
        Endpoint {
            key: key.into(),
            addr,
            node,
            weight,
        }
    }

    fn eps(keys: &[&str]) -> Vec<Endpoint> {
        keys.iter().map(|k| ep(k, 1)).collect()
    }

    fn ip(i: u32) -> IpAddr {
        IpAddr::from(std::net::Ipv4Addr::from(0x0a00_0000 + i))
    }

    /// The key `b` picks for caller `i`, excluding `ex`.
    fn key(b: &Balancer, eps: &[Endpoint], ex: &[&str], i: u32) -> Option<String> {
        let ex: Vec<String> = ex.iter().map(|k| k.to_string()).collect();
        b.pick(eps, &ex, ip(i)).map(|e| e.key)
    }

    /// How often each key is picked over `n` picks (caller `i` for pick `i`).
    fn counts(b: &Balancer, eps: &[Endpoint], n: u32) -> HashMap<String, usize> {
        let mut m = HashMap::new();
        for i in 0..n {
            *m.entry(key(b, eps, &[], i).unwrap()).or_insert(0) += 1;
        }
        m
    }

    #[test]
    fn parse_names() {
        assert_eq!(Policy::parse(""), Ok(Policy::RoundRobin));
        assert_eq!(Policy::parse("round_robin"), Ok(Policy::RoundRobin));
        assert_eq!(Policy::parse("least_request"), Ok(Policy::LeastRequest));
        for s in ["ring_hash", "maglev", "consistent_hash"] {
            assert_eq!(Policy::parse(s), Ok(Policy::ConsistentHash));
        }
        let err = Policy::parse("random").unwrap_err();
        for part in ["\"random\"", "round_robin", "least_request", "ring_hash"] {
            assert!(err.contains(part), "{err}");
        }
        assert!(Policy::parse("Round_Robin").is_err());
        for p in ALL {
            assert_eq!(Policy::parse(p.as_str()), Ok(p));
            assert_eq!(Balancer::new(p).policy(), p);
        }
        assert_eq!(Policy::default(), Policy::RoundRobin);
    }

    #[test]
    fn round_robin_spread() {
        let b = Balancer::new(Policy::RoundRobin);
        let mut set = eps(&["c", "a", "e", "b", "d"]);
        let mut first: Vec<String> = Vec::new();
        for round in 0..4 {
            set.rotate_left(round); // the input order does not matter
            let mut keys: Vec<String> = (0..5).filter_map(|_| key(&b, &set, &[], 0)).collect();
            if round == 0 {
                first = keys.clone();
            }
            assert_eq!(keys, first);
            keys.sort();
            assert_eq!(keys, ["a", "b", "c", "d", "e"]);
        }
        let set = vec![ep("a", 3), ep("b", 1)];
        let m = counts(&b, &set, 400);
        assert_eq!((m["a"], m["b"]), (300, 100));
        let keys: Vec<String> = (0..4).filter_map(|_| key(&b, &set, &[], 0)).collect();
        assert_eq!(keys.iter().filter(|k| *k == "b").count(), 1, "{keys:?}");
    }

    #[test]
    fn zero_weights() {
        for p in ALL {
            let b = Balancer::new(p);
            let set = [ep("a", 2), ep("z", 0)];
            assert_eq!(counts(&b, &set, 50).get("z"), None, "{p:?}");
            // Weight 0 counts only when all are 0, not when the others are excluded.
            assert_eq!(key(&b, &set, &["a"], 0), None, "{p:?}");
            let m = counts(&b, &[ep("a", 0), ep("z", 0)], 200);
            assert!(m["a"] > 0 && m["z"] > 0, "{p:?}: {m:?}");
        }
    }

    #[test]
    fn exclude_and_empty_every_policy() {
        let set = eps(&["a", "b", "c"]);
        for p in ALL {
            let b = Balancer::new(p);
            assert_eq!(key(&b, &[], &[], 1), None, "{p:?}");
            assert_eq!(key(&b, &set, &["a", "b", "c"], 1), None, "{p:?}");
            for i in 0..200 {
                assert_eq!(key(&b, &set, &["a", "c"], i).unwrap(), "b", "{p:?}");
                let got = key(&b, &set, &["b"], i).unwrap();
                assert!(got == "a" || got == "c", "{p:?}: {got}");
            }
            let dup = eps(&["a", "a", "b"]);
            assert_eq!(counts(&b, &dup, 100).len(), 2, "{p:?}: duplicates");
        }
    }

    #[test]
    fn least_request_prefers_less_loaded() {
        let b = Balancer::new(Policy::LeastRequest);
        let busy: Vec<InFlight> = (0..10).map(|_| b.start("a")).collect();
        assert_eq!(b.in_flight("a"), 10);
        for i in 0..200 {
            assert_eq!(key(&b, &eps(&["a", "b"]), &[], i).unwrap(), "b");
        }
        let one = b.start("b");
        let m = counts(&b, &eps(&["a", "b", "c"]), 600);
        assert_eq!(m.get("a"), None, "the loaded one never wins: {m:?}");
        assert!(m["c"] > m["b"], "{m:?}");
        drop((busy, one));
        assert_eq!((b.in_flight("a"), b.in_flight("b")), (0, 0));
        // Equal load: the higher weight wins the tie, and weights bias the draws.
        assert_eq!(counts(&b, &[ep("x", 1), ep("y", 5)], 100).get("x"), None);
        let m = counts(&b, &[ep("x", 1), ep("y", 1), ep("z", 8)], 1000);
        assert!(m["z"] > m["x"] + m["y"], "{m:?}");
        // Counts of keys gone (and not in flight) are pruned.
        let held = b.start("held");
        (0..50).for_each(|i| drop(b.start(&format!("gone-{i}"))));
        key(&b, &eps(&["a"]), &[], 0);
        assert_eq!(lock(&b.in_flight).len(), 2, "a and held stay");
        assert_eq!(b.in_flight("held"), 1);
        drop(held);
    }

    #[test]
    fn consistent_hash_stable_and_minimal_disruption() {
        let b = Balancer::new(Policy::ConsistentHash);
        let set = eps(&["n0/web", "n1/web", "n2/web", "n3/web", "n4/web"]);
        let before: Vec<String> = (0..1000).filter_map(|i| key(&b, &set, &[], i)).collect();
        let mut rev = set.clone();
        rev.reverse();
        let fresh = Balancer::new(Policy::ConsistentHash);
        let (removed, mut moved) = ("n2/web", 0);
        let rest: Vec<Endpoint> = set.iter().filter(|e| e.key != removed).cloned().collect();
        for (i, was) in (0..1000).zip(&before) {
            assert_eq!(key(&b, &rev, &[], i).as_ref(), Some(was), "order matters");
            assert_eq!(key(&fresh, &set, &[], i).as_ref(), Some(was), "random");
            let now = key(&b, &rest, &[], i).unwrap();
            if was == removed {
                moved += 1;
            } else {
                assert_eq!(&now, was, "caller {i} moved");
            }
            assert_eq!(key(&b, &set, &[removed], i), Some(now), "exclude != remove");
        }
        assert!(moved > 0);
    }

    #[test]
    fn consistent_hash_spread_and_cache() {
        let b = Balancer::new(Policy::ConsistentHash);
        let mut set = eps(&["10.0.0.1:80", "10.0.0.2:80", "10.0.0.3:80", "10.0.0.4:80"]);
        let m = counts(&b, &set, 1000);
        assert_eq!(m.len(), 4);
        assert!(m.values().all(|n| (150..=350).contains(n)), "{m:?}");
        let ring = || lock(&b.ring).clone().unwrap();
        let r1 = ring();
        key(&b, &set, &[], 1);
        assert!(Arc::ptr_eq(&r1, &ring()), "rebuilt for the same set");
        assert_eq!(r1.points.len(), 400);
        set[0].weight = 3;
        let m = counts(&b, &set, 1000);
        assert!(m["10.0.0.1:80"] > 350, "{m:?}");
        assert_eq!(ring().points.len(), 600);
        key(&b, &[ep("a", u32::MAX), ep("b", 1)], &[], 1);
        assert!(ring().points.len() as u64 <= MAX_RING_POINTS + 1);
    }
}
