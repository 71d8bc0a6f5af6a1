//! The healthy instances of a service as DNS answers need them (address, port, weight, SRV
//! target), kept per (zone, service, tag) and reused while the service's registry index is the
//! one they were built at. The index moves with every change to the service's instances, their
//! checks and their nodes, so an entry is never stale; a busy name is rebuilt once per change
//! instead of once per query.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::{Arc, Mutex};

use hickory_proto::rr::Name;

/// Entries kept at most; past this the cache starts over (names asked are bounded by the
/// services that exist: names without healthy instances are not kept).
const MAX_ENTRIES: usize = 16_384;

/// One healthy instance, ready to become records.
#[derive(Debug, Clone)]
pub struct Instance {
    pub ip: IpAddr,
    pub port: u16,
    /// The SRV weight for its health (Weights.Passing or Weights.Warning).
    pub weight: u16,
    /// `<node>.node.<dc>.<domain>.` or `<hex>.addr.<dc>.<domain>.`
    pub target: Name,
    /// The most bytes its SRV record and the target's address record take in a message.
    pub srv_bytes: usize,
}

type Key = (usize, String, Option<String>);
/// The index an entry was built at, and the instances.
type Entry = (u64, Arc<[Instance]>);

#[derive(Default)]
pub struct InstanceCache {
    entries: Mutex<HashMap<Key, Entry>>,
}

impl InstanceCache {
    /// The instances of `(zone, name, tag)` at registry `index`, built with `build` unless an
    /// entry at that index exists.
    pub fn get(
        &self,
        zone: usize,
        name: &str,
        tag: Option<&str>,
        index: u64,
        build: impl FnOnce() -> Vec<Instance>,
    ) -> Arc<[Instance]> {
        let key: Key = (zone, name.to_string(), tag.map(str::to_string));
        if let Ok(map) = self.entries.lock() {
            if let Some((at, found)) = map.get(&key) {
                if *at == index {
                    return found.clone();
                }
            }
        }
        let built: Arc<[Instance]> = build().into();
        if !built.is_empty() {
            if let Ok(mut map) = self.entries.lock() {
                if map.len() >= MAX_ENTRIES {
                    map.clear();
                }
                map.insert(key, (index, built.clone()));
            }
        }
        built
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn inst(port: u16) -> Instance {
        Instance {
            ip: "10.0.0.1".parse().unwrap(),
            port,
            weight: 1,
            target: Name::from_ascii("n.node.dc1.mesh.").unwrap(),
            srv_bytes: 60,
        }
    }

    #[test]
    fn reused_at_the_same_index_rebuilt_after() {
        let c = InstanceCache::default();
        let a = c.get(0, "web", None, 5, || vec![inst(1)]);
        let b = c.get(0, "web", None, 5, || panic!("must be cached"));
        assert_eq!(a[0].port, b[0].port);
        let d = c.get(0, "web", None, 6, || vec![inst(2)]);
        assert_eq!(d[0].port, 2);
        // Other zones and tags are other entries; empty results are not kept.
        assert_eq!(c.get(1, "web", None, 6, || vec![inst(3)])[0].port, 3);
        assert!(c.get(0, "web", Some("v1"), 6, Vec::new).is_empty());
        assert_eq!(c.get(0, "web", Some("v1"), 6, || vec![inst(4)])[0].port, 4);
    }
}
