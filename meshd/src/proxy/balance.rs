//! Choosing an endpoint (a healthy service instance) for each proxied connection or request.
//!
//! An [`EndpointSet`] is compiled once per endpoint set, when the registry changes (see
//! [`decide`](super::decide)), and is immutable after: a pick takes no lock and allocates
//! nothing. Its only mutable parts are atomics: the round-robin cursor and the in-flight count
//! of each endpoint (shared with the set that replaces it, by endpoint key, so least-request
//! keeps seeing the connections of an older set).
//!
//! Three policies, named as in a `service-defaults` config entry's `LoadBalancer.Policy`:
//! - round robin: equal weights take turns; unequal weights are interleaved by a
//!   low-discrepancy (golden ratio) sequence over the cumulative weights, so that any window of
//!   picks is close to the weights;
//! - least request with two weighted random choices (the less loaded wins, ties to the higher
//!   weight);
//! - a consistent hash ring on the caller's address (100 points per unit of weight, at most
//!   100,000 points).
//!
//! Weights: an endpoint of weight 0 is never chosen unless every endpoint of the set has
//! weight 0 (then all count as 1).

use std::cmp::Reverse;
use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;

use rand::RngExt;

/// Ring points per unit of weight.
const POINTS_PER_WEIGHT: u64 = 100;
/// The most points a ring holds (weights are scaled down beyond it).
const MAX_RING_POINTS: u64 = 100_000;
/// 2^64 / φ: consecutive multiples spread evenly over [0, 2^64) (Weyl sequence).
pub const GOLDEN: u64 = 0x9E37_79B9_7F4A_7C15;

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

/// One endpoint: a service instance and how to reach it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Endpoint {
    /// Identifies it stably: "node/service-id".
    pub key: String,
    pub node: String,
    /// The instance's service ID.
    pub instance: String,
    /// The instance's port (what a tunnel header names).
    pub port: u16,
    /// Where to connect: the instance itself on this host, else its host's QUIC address.
    pub addr: SocketAddr,
    /// The QUIC address of the instance's host; `None` when it is this host.
    pub quic: Option<SocketAddr>,
    pub weight: u32,
}

/// In-flight counts by endpoint key, handed from a set to the set that replaces it.
pub type Loads = HashMap<String, Arc<AtomicUsize>>;

/// A compiled balancer over one endpoint set. Thread-safe, lock-free.
pub struct EndpointSet {
    policy: Policy,
    /// The usable endpoints, sorted by key.
    endpoints: Box<[Endpoint]>,
    /// Effective weights.
    weights: Box<[u32]>,
    /// Running sums of `weights` (the first is `weights[0]`).
    cumulative: Box<[u64]>,
    equal: bool,
    cursor: AtomicU64,
    in_flight: Box<[Arc<AtomicUsize>]>,
    /// Consistent hash ring: (hash, endpoint index), sorted; empty for other policies.
    ring: Box<[(u64, u32)]>,
}

/// One connection or request in flight to an endpoint; dropping it ends it.
pub struct InFlight {
    count: Arc<AtomicUsize>,
}

impl Drop for InFlight {
    fn drop(&mut self) {
        self.count.fetch_sub(1, Ordering::Relaxed);
    }
}

impl EndpointSet {
    /// Compiles `endpoints` (any order; duplicates by key are dropped) for `policy`; in-flight
    /// counts are taken from `loads` by key, so they survive a rebuild.
    pub fn build(policy: Policy, mut endpoints: Vec<Endpoint>, loads: &Loads) -> EndpointSet {
        endpoints.sort_by(|a, b| a.key.cmp(&b.key));
        endpoints.dedup_by(|a, b| a.key == b.key);
        let all_zero = endpoints.iter().all(|e| e.weight == 0);
        let endpoints: Vec<Endpoint> = endpoints
            .into_iter()
            .filter(|e| all_zero || e.weight > 0)
            .collect();
        let weights: Box<[u32]> = endpoints
            .iter()
            .map(|e| if all_zero { 1 } else { e.weight })
            .collect();
        let mut sum = 0u64;
        let cumulative = weights
            .iter()
            .map(|w| {
                sum += u64::from(*w);
                sum
            })
            .collect();
        let equal = weights.windows(2).all(|w| w[0] == w[1]);
        let in_flight = endpoints
            .iter()
            .map(|e| loads.get(&e.key).cloned().unwrap_or_default())
            .collect();
        let ring = if policy == Policy::ConsistentHash {
            build_ring(&endpoints, &weights)
        } else {
            Box::default()
        };
        EndpointSet {
            policy,
            endpoints: endpoints.into(),
            weights,
            cumulative,
            equal,
            cursor: AtomicU64::new(0),
            in_flight,
            ring,
        }
    }

    #[cfg(test)]
    pub fn endpoints(&self) -> &[Endpoint] {
        &self.endpoints
    }

    pub fn is_empty(&self) -> bool {
        self.endpoints.is_empty()
    }

    /// The in-flight counts of this set, for the set that replaces it.
    pub fn loads(&self, into: &mut Loads) {
        for (e, c) in self.endpoints.iter().zip(self.in_flight.iter()) {
            into.insert(e.key.clone(), c.clone());
        }
    }

    /// Picks an endpoint, skipping the indexes in `tried` (endpoints that already failed this
    /// connection). `caller` feeds the consistent hash. `None` when nothing is left.
    pub fn pick(&self, tried: &[usize], caller: IpAddr) -> Option<usize> {
        let n = self.endpoints.len();
        if n == 0 || tried.len() >= n && (0..n).all(|i| tried.contains(&i)) {
            return None;
        }
        let ok = |i: usize| !tried.contains(&i);
        let first = match self.policy {
            Policy::ConsistentHash => return self.pick_hash(caller, ok),
            Policy::LeastRequest => self.pick_least(ok),
            Policy::RoundRobin => self.pick_round_robin(),
        };
        match first {
            Some(i) if ok(i) => Some(i),
            // Walk on from the excluded one: rare (a retry), and bounded by the set.
            Some(i) => (1..n).map(|d| (i + d) % n).find(|&j| ok(j)),
            None => (0..n).find(|&j| ok(j)),
        }
    }

    pub fn endpoint(&self, i: usize) -> &Endpoint {
        &self.endpoints[i]
    }

    /// Marks a connection or request to endpoint `i` started; dropping the guard ends it.
    pub fn start(&self, i: usize) -> InFlight {
        let count = self.in_flight[i].clone();
        count.fetch_add(1, Ordering::Relaxed);
        InFlight { count }
    }

    /// The number of connections or requests to endpoint `i` in flight.
    pub fn in_flight(&self, i: usize) -> usize {
        self.in_flight[i].load(Ordering::Relaxed)
    }

    fn pick_round_robin(&self) -> Option<usize> {
        let k = self.cursor.fetch_add(1, Ordering::Relaxed);
        if self.equal {
            return Some((k % self.endpoints.len() as u64) as usize);
        }
        Some(self.at(k.wrapping_mul(GOLDEN)))
    }

    /// The endpoint whose share of the cumulative weights holds `x` (uniform over u64).
    fn at(&self, x: u64) -> usize {
        let total = *self.cumulative.last().unwrap_or(&1);
        let pos = ((u128::from(x) * u128::from(total)) >> 64) as u64;
        self.cumulative.partition_point(|c| *c <= pos)
    }

    /// Power of two choices: two weighted random draws, the less loaded wins (ties: the higher
    /// weight, then the first drawn).
    fn pick_least(&self, ok: impl Fn(usize) -> bool) -> Option<usize> {
        let mut rng = rand::rng();
        let mut draw = |ok: &dyn Fn(usize) -> bool| {
            (0..4)
                .map(|_| self.at(rng.random()))
                .find(|&i| ok(i))
                .or_else(|| (0..self.endpoints.len()).find(|&i| ok(i)))
        };
        let a = draw(&ok)?;
        let Some(b) = draw(&|i| i != a && ok(i)) else {
            return Some(a);
        };
        let load = |i: usize| (self.in_flight(i), Reverse(self.weights[i]));
        Some(if load(b) < load(a) { b } else { a })
    }

    /// The first ring point clockwise from the caller's hash whose endpoint is allowed.
    fn pick_hash(&self, caller: IpAddr, ok: impl Fn(usize) -> bool) -> Option<usize> {
        let h = hash_ip(caller);
        let n = self.ring.len();
        let start = self.ring.partition_point(|p| p.0 < h);
        (0..n)
            .map(|j| self.ring[(start + j) % n].1 as usize)
            .find(|&i| ok(i))
    }
}

fn build_ring(endpoints: &[Endpoint], weights: &[u32]) -> Box<[(u64, u32)]> {
    let total: u64 = weights.iter().map(|w| u64::from(*w)).sum();
    let scale = total.saturating_mul(POINTS_PER_WEIGHT) > MAX_RING_POINTS;
    let mut points = Vec::new();
    for (idx, (e, w)) in endpoints.iter().zip(weights).enumerate() {
        let w = u64::from(*w);
        let n = if scale {
            (w * MAX_RING_POINTS / total.max(1)).max(1)
        } else {
            w * POINTS_PER_WEIGHT
        };
        for i in 0..n {
            points.push((hash64(format!("{}#{i}", e.key).as_bytes()), idx as u32));
        }
    }
    points.sort_unstable();
    points.into()
}

fn hash_ip(ip: IpAddr) -> u64 {
    match ip {
        IpAddr::V4(a) => hash64(&a.octets()),
        IpAddr::V6(a) => hash64(&a.octets()),
    }
}

/// FNV-1a 64 followed by a 64-bit finalizer (splitmix64) for a better spread on a ring.
pub fn hash64(bytes: &[u8]) -> u64 {
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

#[cfg(test)]
mod tests {
    use super::*;

    const ALL: [Policy; 3] = [
        Policy::RoundRobin,
        Policy::LeastRequest,
        Policy::ConsistentHash,
    ];

    fn ep(key: &str, weight: u32) -> Endpoint {
        Endpoint {
            key: key.into(),
            node: format!("n-{key}"),
            instance: key.into(),
            port: 80,
            addr: SocketAddr::from(([127, 0, 0, 1], 80)),
            quic: None,
            weight,
        }
    }

    fn set(p: Policy, eps: &[Endpoint]) -> EndpointSet {
        EndpointSet::build(p, eps.to_vec(), &Loads::new())
    }

    fn eps(keys: &[&str]) -> Vec<Endpoint> {
        keys.iter().map(|k| ep(k, 1)).collect()
    }

    fn ip(i: u32) -> IpAddr {
        IpAddr::from((0x0a00_0000 + i).to_be_bytes())
    }

    fn key(s: &EndpointSet, ex: &[&str], i: u32) -> Option<String> {
        let tried: Vec<usize> = (0..s.endpoints().len())
            .filter(|&j| ex.contains(&s.endpoint(j).key.as_str()))
            .collect();
        s.pick(&tried, ip(i)).map(|j| s.endpoint(j).key.clone())
    }

    fn counts(s: &EndpointSet, n: u32) -> HashMap<String, usize> {
        let mut m = HashMap::new();
        for i in 0..n {
            *m.entry(key(s, &[], i).unwrap()).or_default() += 1;
        }
        m
    }

    #[test]
    fn parse_names() {
        for (s, p) in [
            ("", Policy::RoundRobin),
            ("round_robin", Policy::RoundRobin),
            ("least_request", Policy::LeastRequest),
            ("ring_hash", Policy::ConsistentHash),
            ("maglev", Policy::ConsistentHash),
            ("consistent_hash", Policy::ConsistentHash),
        ] {
            assert_eq!(Policy::parse(s), Ok(p));
        }
        assert!(Policy::parse("random").unwrap_err().contains("random"));
        assert_eq!(Policy::default(), Policy::RoundRobin);
    }

    #[test]
    fn round_robin_spread() {
        let mut list = eps(&["c", "a", "e", "b", "d"]);
        let mut first: Vec<String> = Vec::new();
        for round in 0..4 {
            list.rotate_left(round); // the input order does not matter
            let s = set(Policy::RoundRobin, &list);
            let mut keys: Vec<String> = (0..5).filter_map(|_| key(&s, &[], 0)).collect();
            if round == 0 {
                first = keys.clone();
            }
            assert_eq!(keys, first);
            keys.sort();
            assert_eq!(keys, ["a", "b", "c", "d", "e"]);
        }
        // Unequal weights: close to the weights over any window, exact in the long run.
        let s = set(Policy::RoundRobin, &[ep("a", 3), ep("b", 1)]);
        let picks: Vec<String> = (0..4000).filter_map(|_| key(&s, &[], 0)).collect();
        for w in picks.chunks(40) {
            let b = w.iter().filter(|k| *k == "b").count();
            assert!((8..=12).contains(&b), "{b} of 40");
        }
        let b = picks.iter().filter(|k| *k == "b").count();
        assert!((990..=1010).contains(&b), "{b} of 4000");
    }

    #[test]
    fn zero_weights() {
        for p in ALL {
            let s = set(p, &[ep("a", 2), ep("z", 0)]);
            assert_eq!(counts(&s, 50).get("z"), None, "{p:?}");
            // Weight 0 counts only when all are 0, not when the others are excluded.
            assert_eq!(key(&s, &["a"], 0), None, "{p:?}");
            let m = counts(&set(p, &[ep("a", 0), ep("z", 0)]), 200);
            assert!(m["a"] > 0 && m["z"] > 0, "{p:?}: {m:?}");
        }
    }

    #[test]
    fn exclude_and_empty_every_policy() {
        let list = eps(&["a", "b", "c"]);
        for p in ALL {
            assert_eq!(key(&set(p, &[]), &[], 1), None, "{p:?}");
            let s = set(p, &list);
            assert_eq!(key(&s, &["a", "b", "c"], 1), None, "{p:?}");
            for i in 0..200 {
                assert_eq!(key(&s, &["a", "c"], i).unwrap(), "b", "{p:?}");
                let got = key(&s, &["b"], i).unwrap();
                assert!(got == "a" || got == "c", "{p:?}: {got}");
            }
            assert_eq!(
                counts(&set(p, &eps(&["a", "a", "b"])), 100).len(),
                2,
                "{p:?}"
            );
        }
    }

    #[test]
    fn least_request_prefers_less_loaded_and_loads_survive_a_rebuild() {
        let s = set(Policy::LeastRequest, &eps(&["a", "b"]));
        let busy: Vec<InFlight> = (0..10).map(|_| s.start(0)).collect();
        assert_eq!(s.in_flight(0), 10);
        for i in 0..200 {
            assert_eq!(key(&s, &[], i).unwrap(), "b");
        }
        // A rebuilt set (c added) sees a's connections.
        let mut loads = Loads::new();
        s.loads(&mut loads);
        let s2 = EndpointSet::build(Policy::LeastRequest, eps(&["a", "b", "c"]), &loads);
        let one = s2.start(1);
        let m = counts(&s2, 600);
        assert_eq!(m.get("a"), None, "the loaded one never wins: {m:?}");
        assert!(m["c"] > m["b"], "{m:?}");
        drop((busy, one));
        assert_eq!((s2.in_flight(0), s2.in_flight(1)), (0, 0));
        // Equal load: the higher weight wins the tie, and weights bias the draws.
        assert_eq!(
            counts(&set(Policy::LeastRequest, &[ep("x", 1), ep("y", 5)]), 100).get("x"),
            None
        );
        let m = counts(
            &set(Policy::LeastRequest, &[ep("x", 1), ep("y", 1), ep("z", 8)]),
            1000,
        );
        assert!(m["z"] > m["x"] + m["y"], "{m:?}");
    }

    #[test]
    fn consistent_hash_stable_and_minimal_disruption() {
        let list = eps(&["n0/web", "n1/web", "n2/web", "n3/web", "n4/web"]);
        let s = set(Policy::ConsistentHash, &list);
        let before: Vec<String> = (0..1000).filter_map(|i| key(&s, &[], i)).collect();
        let mut rev = list.clone();
        rev.reverse();
        let rev = set(Policy::ConsistentHash, &rev);
        let (removed, mut moved) = ("n2/web", 0);
        let rest: Vec<Endpoint> = list.iter().filter(|e| e.key != removed).cloned().collect();
        let rest = set(Policy::ConsistentHash, &rest);
        for (i, was) in (0..1000).zip(&before) {
            assert_eq!(key(&rev, &[], i).as_ref(), Some(was), "order matters");
            let now = key(&rest, &[], i).unwrap();
            if was == removed {
                moved += 1;
            } else {
                assert_eq!(&now, was, "caller {i} moved");
            }
            assert_eq!(key(&s, &[removed], i), Some(now), "exclude != remove");
        }
        assert!(moved > 0);
    }

    #[test]
    fn consistent_hash_spread_and_ring_size() {
        let mut list = eps(&["10.0.0.1:80", "10.0.0.2:80", "10.0.0.3:80", "10.0.0.4:80"]);
        let s = set(Policy::ConsistentHash, &list);
        let m = counts(&s, 1000);
        assert_eq!(m.len(), 4);
        assert!(m.values().all(|n| (150..=350).contains(n)), "{m:?}");
        assert_eq!(s.ring.len(), 400);
        list[0].weight = 3;
        let s = set(Policy::ConsistentHash, &list);
        assert!(counts(&s, 1000)["10.0.0.1:80"] > 350);
        assert_eq!(s.ring.len(), 600);
        let s = set(Policy::ConsistentHash, &[ep("a", u32::MAX), ep("b", 1)]);
        assert!(s.ring.len() as u64 <= MAX_RING_POINTS + 1);
    }
}
