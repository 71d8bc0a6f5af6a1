//! Virtual IPs: every service name gets a stable IPv4 address from a replicated range (default
//! `127.100.0.0/16`), which DNS answers for `<service>.virtual.<domain>` and agents bind to proxy
//! the service.
//!
//! The rules, all applied by [`State::apply`] so every server computes the same table:
//! - A name gets its address the first time an instance of it is registered (and, for names
//!   that lack one, at a [`Command::Restore`](crate::Command::Restore), at a range change, and
//!   when a state image written before this table existed is loaded).
//! - The address never changes while the name has at least one instance, and is never held by
//!   two names. When the last instance goes (deregistration, node removal, a member that left,
//!   a rename) the address is freed.
//! - Allocation is deterministic: a cursor (an offset into the range) marks where the search
//!   starts; the first free offset at or after it is taken, wrapping around, never the network
//!   address (offset 0) nor the broadcast address (the last); the cursor then moves past it, so
//!   a freed address is reused only after every other one.
//! - A full range: the registration still succeeds, the name just has no virtual IP. It gets one
//!   at a later registration of one of its instances once an address is free (or the range
//!   grows).
//! - [`Command::VirtualIpRange`](crate::Command::VirtualIpRange) changes the range: addresses
//!   already given stay as they are (even outside the new range); new ones come from the new
//!   range, searched from its start.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::net::Ipv4Addr;
use std::str::FromStr;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

use crate::command::Response;
use crate::model::VirtualIp;
use crate::state::{State, StateImage};

/// The range used until a [`Command::VirtualIpRange`](crate::Command::VirtualIpRange) sets one.
pub const DEFAULT_RANGE: Ipv4Cidr = Ipv4Cidr {
    network: u32::from_be_bytes([127, 100, 0, 0]),
    prefix: 16,
};

/// The longest prefix a range may have: a /30 holds two usable addresses.
pub const MAX_PREFIX_LEN: u8 = 30;

/// An IPv4 network in CIDR notation (`127.100.0.0/16`), host bits zero. Serialized as that
/// string.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Ipv4Cidr {
    network: u32,
    prefix: u8,
}

/// Why a string is not a usable virtual IP range.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CidrError(String);

impl fmt::Display for CidrError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for CidrError {}

impl Ipv4Cidr {
    /// The network `network/prefix`; `network` must have no host bits set and `prefix` be at
    /// most [`MAX_PREFIX_LEN`].
    pub fn new(network: Ipv4Addr, prefix: u8) -> Result<Ipv4Cidr, CidrError> {
        if prefix > MAX_PREFIX_LEN {
            return Err(CidrError(format!(
                "{network}/{prefix} is smaller than /{MAX_PREFIX_LEN}: a range needs at least two usable addresses"
            )));
        }
        let bits = u32::from(network);
        let masked = bits & mask(prefix);
        if masked != bits {
            return Err(CidrError(format!(
                "{network}/{prefix} has host bits set (the network is {}/{prefix})",
                Ipv4Addr::from(masked)
            )));
        }
        Ok(Ipv4Cidr {
            network: bits,
            prefix,
        })
    }

    /// The network address.
    pub fn network(&self) -> Ipv4Addr {
        Ipv4Addr::from(self.network)
    }

    pub fn prefix_len(&self) -> u8 {
        self.prefix
    }

    /// Every address of the range, network and broadcast included.
    pub fn size(&self) -> u64 {
        1u64 << (32 - u32::from(self.prefix))
    }

    /// The addresses a service may get (all but the network and broadcast addresses).
    pub fn usable(&self) -> u64 {
        self.size() - 2
    }

    pub fn contains(&self, ip: Ipv4Addr) -> bool {
        u32::from(ip) & mask(self.prefix) == self.network
    }

    /// The first and last usable addresses, as integers.
    fn usable_bounds(&self) -> (u64, u64) {
        let network = u64::from(self.network);
        (network + 1, network + self.size() - 2)
    }
}

impl Default for Ipv4Cidr {
    fn default() -> Self {
        DEFAULT_RANGE
    }
}

fn mask(prefix: u8) -> u32 {
    u32::MAX.checked_shl(32 - u32::from(prefix)).unwrap_or(0)
}

impl fmt::Display for Ipv4Cidr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.network(), self.prefix)
    }
}

impl FromStr for Ipv4Cidr {
    type Err = CidrError;

    fn from_str(s: &str) -> Result<Ipv4Cidr, CidrError> {
        let bad = || CidrError(format!("{s:?} is not an IPv4 CIDR (expected a.b.c.d/len)"));
        let (addr, len) = s.trim().split_once('/').ok_or_else(bad)?;
        let addr: Ipv4Addr = addr.parse().map_err(|_| bad())?;
        if len.is_empty() || len.len() > 2 || !len.bytes().all(|b| b.is_ascii_digit()) {
            return Err(bad());
        }
        let len: u8 = len.parse().map_err(|_| bad())?;
        if len > 32 {
            return Err(bad());
        }
        Ipv4Cidr::new(addr, len)
    }
}

impl Serialize for Ipv4Cidr {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for Ipv4Cidr {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Ipv4Cidr, D::Error> {
        let s = String::deserialize(d)?;
        s.parse().map_err(serde::de::Error::custom)
    }
}

/// The virtual IP table: the range, the cursor, and the address of each service name.
#[derive(Clone, Debug, PartialEq)]
pub(crate) struct VirtualIps {
    range: Ipv4Cidr,
    /// Offset into `range` where the next search starts.
    next: u64,
    /// By service name: lookups in O(log n), listing in name order.
    by_service: BTreeMap<String, VirtualIp>,
    /// Every address given (some may lie outside the current range), with its service.
    by_addr: BTreeMap<u32, String>,
    /// How many of `by_addr` are usable addresses of `range`: the range is full when this equals
    /// `range.usable()`.
    in_range: u64,
}

impl Default for VirtualIps {
    fn default() -> Self {
        VirtualIps {
            range: DEFAULT_RANGE,
            next: 1,
            by_service: BTreeMap::new(),
            by_addr: BTreeMap::new(),
            in_range: 0,
        }
    }
}

impl VirtualIps {
    pub(crate) fn get(&self, service: &str) -> Option<Ipv4Addr> {
        self.by_service.get(service).map(|v| v.ip)
    }

    pub(crate) fn iter(&self) -> impl Iterator<Item = &VirtualIp> {
        self.by_service.values()
    }

    pub(crate) fn range(&self) -> Ipv4Cidr {
        self.range
    }

    /// The service holding `ip`, O(log n).
    pub(crate) fn service_at(&self, ip: Ipv4Addr) -> Option<&str> {
        self.by_addr.get(&u32::from(ip)).map(String::as_str)
    }

    pub(crate) fn len(&self) -> usize {
        self.by_service.len()
    }

    /// The addresses given that lie outside the current range (held from an earlier one), in
    /// address order. Costs their number plus O(log n): two range scans of `by_addr`.
    pub(crate) fn outside_range(&self) -> impl Iterator<Item = Ipv4Addr> + '_ {
        let first = self.range.network;
        let last = first.saturating_add((self.range.size() - 1) as u32);
        self.by_addr
            .range(..first)
            .chain(self.by_addr.range(last.saturating_add(1)..))
            .filter(move |(a, _)| **a < first || **a > last)
            .map(|(a, _)| Ipv4Addr::from(*a))
    }

    /// Gives `service` an address unless it has one; true when it got one now.
    fn assign(&mut self, index: u64, service: &str) -> bool {
        if self.by_service.contains_key(service) {
            return false;
        }
        let Some(addr) = self.find_free() else {
            return false;
        };
        self.by_addr.insert(addr, service.to_string());
        self.in_range += 1;
        self.next = u64::from(addr) - u64::from(self.range.network) + 1;
        self.by_service.insert(
            service.to_string(),
            VirtualIp {
                service: service.to_string(),
                ip: Ipv4Addr::from(addr),
                create_index: index,
            },
        );
        true
    }

    /// Frees the address of `service`; true when it had one.
    fn free(&mut self, service: &str) -> bool {
        let Some(v) = self.by_service.remove(service) else {
            return false;
        };
        let addr = u32::from(v.ip);
        if self.by_addr.get(&addr).map(String::as_str) == Some(service) {
            self.by_addr.remove(&addr);
            // An address held from an earlier range may be this one's network or broadcast.
            let (first, last) = self.range.usable_bounds();
            if (first..=last).contains(&u64::from(addr)) {
                self.in_range -= 1;
            }
        }
        true
    }

    /// Switches to another range (addresses given stay); true when it differs.
    fn set_range(&mut self, range: Ipv4Cidr) -> bool {
        if range == self.range {
            return false;
        }
        self.range = range;
        self.next = 1;
        self.in_range = self.count_in_range();
        true
    }

    fn count_in_range(&self) -> u64 {
        let (first, last) = self.range.usable_bounds();
        self.by_addr.range(first as u32..=last as u32).count() as u64
    }

    /// The first free usable address at or after the cursor, wrapping; `None` when the range is
    /// full.
    fn find_free(&self) -> Option<u32> {
        if self.in_range >= self.range.usable() {
            return None;
        }
        let (first, last) = self.range.usable_bounds();
        let start = u64::from(self.range.network) + self.next;
        let start = if (first..=last).contains(&start) {
            start
        } else {
            first
        };
        self.gap(start, last)
            .or_else(|| {
                (start > first)
                    .then(|| self.gap(first, start - 1))
                    .flatten()
            })
            .map(|a| a as u32)
    }

    /// The first address of `from..=to` nobody holds. Costs the length of the run of taken
    /// addresses at `from`.
    fn gap(&self, from: u64, to: u64) -> Option<u64> {
        let mut want = from;
        for &a in self.by_addr.range(from as u32..=to as u32).map(|(a, _)| a) {
            if u64::from(a) != want {
                return Some(want);
            }
            want += 1;
        }
        (want <= to).then_some(want)
    }

    /// The image fields: the table, the range and the cursor.
    fn image(&self) -> (Vec<VirtualIp>, Option<Ipv4Cidr>, u64) {
        (
            self.by_service.values().cloned().collect(),
            Some(self.range),
            self.next,
        )
    }

    /// The table of an image written with it. An entry whose address is already held is
    /// dropped (images never hold one; this keeps the no-two-names rule whatever comes in).
    fn from_image(ips: &[VirtualIp], range: Ipv4Cidr, next: u64) -> VirtualIps {
        let mut t = VirtualIps {
            range,
            next,
            ..VirtualIps::default()
        };
        for v in ips {
            let addr = u32::from(v.ip);
            if t.by_addr.contains_key(&addr) || t.by_service.contains_key(&v.service) {
                continue;
            }
            t.by_addr.insert(addr, v.service.clone());
            t.by_service.insert(v.service.clone(), v.clone());
        }
        t.in_range = t.count_in_range();
        t
    }
}

/// The hooks [`State`] calls; each moves the table's index when it changes something.
impl State {
    /// After an instance of `service` was registered: gives the name an address if it has none.
    pub(crate) fn assign_virtual_ip(&mut self, index: u64, service: &str) {
        if self.vips.assign(index, service) {
            self.indexes.virtual_ips = index;
        }
    }

    /// After the last instance of `service` went: frees its address.
    pub(crate) fn free_virtual_ip(&mut self, index: u64, service: &str) {
        if self.vips.free(service) {
            self.indexes.virtual_ips = index;
        }
    }

    /// Gives an address to every name with instances that lacks one, in name order.
    pub(crate) fn assign_missing_virtual_ips(&mut self, index: u64) {
        let missing: BTreeSet<String> = self
            .by_name
            .keys()
            .filter(|n| self.vips.get(n).is_none())
            .cloned()
            .collect();
        for name in missing {
            self.assign_virtual_ip(index, &name);
        }
    }

    /// [`Command::VirtualIpRange`](crate::Command::VirtualIpRange).
    pub(crate) fn set_virtual_ip_range(&mut self, index: u64, cidr: &str) -> Response {
        let range: Ipv4Cidr = match cidr.parse() {
            Ok(r) => r,
            Err(e) => return Response::Rejected(format!("virtual IP range: {e}")),
        };
        if self.vips.set_range(range) {
            self.indexes.virtual_ips = index;
            self.assign_missing_virtual_ips(index);
        }
        Response::Done
    }

    /// Fills the image's virtual IP fields.
    pub(crate) fn virtual_ips_to_image(&self, img: &mut StateImage) {
        (img.virtual_ips, img.virtual_ip_range, img.virtual_ip_next) = self.vips.image();
    }

    /// Loads the table of an image into a state whose other tables are loaded. An image written
    /// before the table existed (no range) gets the default range and an address for every
    /// name, in name order, at the image's applied index.
    pub(crate) fn virtual_ips_from_image(
        &mut self,
        ips: &[VirtualIp],
        range: Option<Ipv4Cidr>,
        next: u64,
    ) {
        match range {
            Some(range) => self.vips = VirtualIps::from_image(ips, range, next),
            None => {
                self.vips = VirtualIps::default();
                self.assign_missing_virtual_ips(self.applied);
            }
        }
    }

    /// For a restore: an image without the table keeps this state's range.
    pub(crate) fn virtual_ip_range_for_restore(&self, img: &mut StateImage) {
        if img.virtual_ip_range.is_none() {
            img.virtual_ip_range = Some(self.vips.range());
            img.virtual_ip_next = 1;
            img.virtual_ips.clear();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::command::{Command, Register};
    use crate::model::{MemberRole, MemberStatus, Node, Service};

    fn reg(node: &str, id: &str, name: &str) -> Command {
        Command::Register(Register {
            node: Node {
                node: node.into(),
                address: "10.0.0.1".into(),
                ..Node::default()
            },
            service: Some(Service {
                id: id.into(),
                service: name.into(),
                port: 80,
                ..Service::default()
            }),
            ..Register::default()
        })
    }

    fn dereg(node: &str, id: &str) -> Command {
        Command::Deregister {
            node: node.into(),
            service_id: Some(id.into()),
            check_id: None,
        }
    }

    fn range(s: &str) -> Command {
        Command::VirtualIpRange { cidr: s.into() }
    }

    fn ip(s: &str) -> Option<Ipv4Addr> {
        s.parse().ok()
    }

    /// Asserts the table's invariants: one address per name, no address twice, no name without
    /// instances has one, the derived maps agree.
    fn check_invariants(st: &State) {
        let mut seen = BTreeSet::new();
        for v in st.virtual_ips() {
            assert!(seen.insert(v.ip), "{} given twice", v.ip);
            assert!(
                !st.service_instances(&v.service).is_empty(),
                "{} has an address but no instance",
                v.service
            );
        }
        let t = &st.vips;
        assert_eq!(t.by_addr.len(), t.by_service.len());
        assert_eq!(t.in_range, t.count_in_range());
        for (addr, name) in &t.by_addr {
            assert_eq!(t.get(name).map(u32::from), Some(*addr));
        }
    }

    #[test]
    fn cidr_parsing() {
        let c: Ipv4Cidr = "127.100.0.0/16".parse().expect("valid");
        assert_eq!(c, DEFAULT_RANGE);
        assert_eq!(c.to_string(), "127.100.0.0/16");
        assert_eq!(c.usable(), 65_534);
        assert!(c.contains(Ipv4Addr::new(127, 100, 255, 255)));
        assert!(!c.contains(Ipv4Addr::new(127, 101, 0, 0)));
        let c: Ipv4Cidr = "10.0.0.4/30".parse().expect("a /30");
        assert_eq!(c.usable(), 2);
        let all: Ipv4Cidr = "0.0.0.0/0".parse().expect("everything");
        assert_eq!(all.size(), 1 << 32);
        assert!(all.contains(Ipv4Addr::new(255, 255, 255, 255)));
        for bad in [
            "",
            "127.100.0.0",
            "127.100.0.0/",
            "127.100.0.0/33",
            "127.100.0.0/-1",
            "127.100.0.0/+8",
            "127.100.0/16",
            "::1/128",
            "127.100.0.0/16/1",
            "web",
        ] {
            let e = bad.parse::<Ipv4Cidr>().expect_err(bad);
            assert!(e.to_string().contains("not an IPv4 CIDR"), "{bad}: {e}");
        }
        let e = "10.0.0.0/31".parse::<Ipv4Cidr>().expect_err("/31");
        assert!(e.to_string().contains("smaller than /30"), "{e}");
        let e = "127.100.0.1/16".parse::<Ipv4Cidr>().expect_err("host bits");
        assert!(e.to_string().contains("127.100.0.0/16"), "{e}");
        let json = serde_json::to_string(&DEFAULT_RANGE).expect("ser");
        assert_eq!(json, "\"127.100.0.0/16\"");
        assert_eq!(
            serde_json::from_str::<Ipv4Cidr>(&json).ok(),
            Some(DEFAULT_RANGE)
        );
        assert!(serde_json::from_str::<Ipv4Cidr>("\"1.2.3.4/31\"").is_err());
    }

    #[test]
    fn first_registration_allocates_in_order() {
        let mut st = State::new();
        assert_eq!(st.virtual_ip_range(), DEFAULT_RANGE);
        assert_eq!(st.apply(1, &reg("n1", "web-1", "web")), Response::Done);
        assert_eq!(st.virtual_ip("web"), ip("127.100.0.1"));
        assert_eq!(st.virtual_ips_index(), 1);
        // A second instance, on another node: same address, no change.
        st.apply(2, &reg("n2", "web-2", "web"));
        assert_eq!(st.virtual_ip("web"), ip("127.100.0.1"));
        assert_eq!(st.virtual_ips_index(), 1);
        st.apply(3, &reg("n1", "db", "db"));
        assert_eq!(st.virtual_ip("db"), ip("127.100.0.2"));
        assert_eq!(st.virtual_ips_index(), 3);
        let listed: Vec<(&str, Ipv4Addr, u64)> = st
            .virtual_ips()
            .map(|v| (v.service.as_str(), v.ip, v.create_index))
            .collect();
        assert_eq!(
            listed,
            vec![
                ("db", Ipv4Addr::new(127, 100, 0, 2), 3),
                ("web", Ipv4Addr::new(127, 100, 0, 1), 1)
            ]
        );
        assert_eq!(st.virtual_ip("nope"), None);
        // A node without a service changes nothing.
        st.apply(
            4,
            &Command::Register(Register {
                node: Node {
                    node: "n3".into(),
                    address: "10.0.0.3".into(),
                    ..Node::default()
                },
                ..Register::default()
            }),
        );
        assert_eq!(st.virtual_ips_index(), 3);
        check_invariants(&st);
    }

    #[test]
    fn five_hundred_names_get_distinct_stable_addresses() {
        let mut st = State::new();
        for i in 0..500u64 {
            st.apply(
                i + 1,
                &reg(
                    &format!("n{}", i % 7),
                    &format!("s{i}"),
                    &format!("svc-{i}"),
                ),
            );
        }
        let before: Vec<VirtualIp> = st.virtual_ips().cloned().collect();
        assert_eq!(before.len(), 500);
        let distinct: BTreeSet<Ipv4Addr> = before.iter().map(|v| v.ip).collect();
        assert_eq!(distinct.len(), 500);
        assert!(distinct.iter().all(|a| DEFAULT_RANGE.contains(*a)));
        // Sorted by name.
        assert!(before.windows(2).all(|w| w[0].service < w[1].service));
        check_invariants(&st);
        // More instances and re-registrations leave them alone.
        for i in 0..500u64 {
            st.apply(
                1000 + i,
                &reg("other", &format!("x{i}"), &format!("svc-{i}")),
            );
            st.apply(
                2000 + i,
                &reg(
                    &format!("n{}", i % 7),
                    &format!("s{i}"),
                    &format!("svc-{i}"),
                ),
            );
        }
        let after: Vec<VirtualIp> = st.virtual_ips().cloned().collect();
        assert_eq!(after, before);
        // The same commands on another server give the same table.
        let mut other = State::new();
        for i in 0..500u64 {
            other.apply(
                i + 1,
                &reg(
                    &format!("n{}", i % 7),
                    &format!("s{i}"),
                    &format!("svc-{i}"),
                ),
            );
        }
        assert_eq!(other.virtual_ips().cloned().collect::<Vec<_>>(), before);
    }

    #[test]
    fn last_instance_frees_and_freed_addresses_come_last() {
        let mut st = State::new();
        st.apply(1, &reg("n1", "a", "a"));
        st.apply(2, &reg("n1", "b1", "b"));
        st.apply(3, &reg("n2", "b2", "b"));
        st.apply(4, &reg("n1", "c", "c"));
        assert_eq!(st.virtual_ip("b"), ip("127.100.0.2"));
        // One instance of b left: it keeps its address.
        st.apply(5, &dereg("n1", "b1"));
        assert_eq!(st.virtual_ip("b"), ip("127.100.0.2"));
        assert_eq!(st.virtual_ips_index(), 4);
        // The last one: freed.
        st.apply(6, &dereg("n2", "b2"));
        assert_eq!(st.virtual_ip("b"), None);
        assert_eq!(st.virtual_ips_index(), 6);
        // A new name takes the next address, not the freed one; b comes back elsewhere.
        st.apply(7, &reg("n1", "d", "d"));
        assert_eq!(st.virtual_ip("d"), ip("127.100.0.4"));
        st.apply(8, &reg("n1", "b1", "b"));
        assert_eq!(st.virtual_ip("b"), ip("127.100.0.5"));
        check_invariants(&st);
    }

    #[test]
    fn node_removal_member_left_and_rename_free() {
        let mut st = State::new();
        st.apply(1, &reg("n1", "web", "web"));
        st.apply(2, &reg("n2", "db", "db"));
        st.apply(3, &reg("n3", "api", "api"));
        // Node deregistration.
        st.apply(
            4,
            &Command::Deregister {
                node: "n1".into(),
                service_id: None,
                check_id: None,
            },
        );
        assert_eq!(st.virtual_ip("web"), None);
        assert_eq!(st.virtual_ips_index(), 4);
        // A member that left takes its node's services along.
        st.apply(
            5,
            &Command::MemberSet {
                name: "n2".into(),
                addr: "10.0.0.2:8301".into(),
                role: MemberRole::Agent,
                status: MemberStatus::Left,
                datacenter: "dc1".into(),
            },
        );
        assert_eq!(st.virtual_ip("db"), None);
        assert_eq!(st.virtual_ips_index(), 5);
        // A rename: the old name's only instance becomes the new name's.
        st.apply(6, &reg("n3", "api", "api-v2"));
        assert_eq!(st.virtual_ip("api"), None);
        assert_eq!(st.virtual_ip("api-v2"), ip("127.100.0.4"));
        assert_eq!(st.virtual_ips_index(), 6);
        check_invariants(&st);
    }

    #[test]
    fn wraps_and_skips_network_and_broadcast() {
        let mut st = State::new();
        assert_eq!(st.apply(1, &range("10.9.0.0/29")), Response::Done);
        // Six usable addresses: .1 to .6.
        for i in 1..=6u64 {
            st.apply(1 + i, &reg("n", &format!("s{i}"), &format!("s{i}")));
        }
        let got: Vec<Option<Ipv4Addr>> = (1..=6).map(|i| st.virtual_ip(&format!("s{i}"))).collect();
        let want: Vec<Option<Ipv4Addr>> = (1..=6).map(|i| ip(&format!("10.9.0.{i}"))).collect();
        assert_eq!(got, want);
        // Full: the registration succeeds without an address.
        assert_eq!(st.apply(8, &reg("n", "s7", "s7")), Response::Done);
        assert_eq!(st.virtual_ip("s7"), None);
        assert!(st.service_instances("s7").len() == 1);
        assert_eq!(st.virtual_ips_index(), 7);
        check_invariants(&st);
        // Free .3 and .5; the cursor is past .6, so the search wraps to .3 first.
        st.apply(9, &dereg("n", "s3"));
        st.apply(10, &dereg("n", "s5"));
        st.apply(11, &reg("n", "s8", "s8"));
        assert_eq!(st.virtual_ip("s8"), ip("10.9.0.3"));
        // s7 gets the last free one at its next registration.
        st.apply(12, &reg("n", "s7b", "s7"));
        assert_eq!(st.virtual_ip("s7"), ip("10.9.0.5"));
        check_invariants(&st);
    }

    #[test]
    fn range_change_keeps_old_addresses_and_fills_the_missing() {
        let mut st = State::new();
        st.apply(1, &range("10.0.0.0/30"));
        st.apply(2, &reg("n", "a", "a"));
        st.apply(3, &reg("n", "b", "b"));
        st.apply(4, &reg("n", "c", "c"));
        assert_eq!(st.virtual_ip("c"), None);
        // Rejected ranges change nothing.
        for bad in ["10.0.0.0/31", "nonsense", "10.0.0.1/24", ""] {
            match st.apply(5, &range(bad)) {
                Response::Rejected(why) => assert!(why.starts_with("virtual IP range: "), "{why}"),
                other => panic!("{bad}: {other:?}"),
            }
        }
        assert_eq!(st.virtual_ip_range().to_string(), "10.0.0.0/30");
        assert_eq!(st.virtual_ips_index(), 3);
        // The same range again: nothing.
        st.apply(6, &range("10.0.0.0/30"));
        assert_eq!(st.virtual_ips_index(), 3);
        // A new range: a and b stay, c gets the new range's first address, so do new names.
        st.apply(7, &range("10.1.0.0/24"));
        assert_eq!(st.virtual_ip_range().to_string(), "10.1.0.0/24");
        assert_eq!(st.virtual_ips_index(), 7);
        assert_eq!(st.virtual_ip("a"), ip("10.0.0.1"));
        assert_eq!(st.virtual_ip("b"), ip("10.0.0.2"));
        assert_eq!(st.virtual_ip("c"), ip("10.1.0.1"));
        st.apply(8, &reg("n", "d", "d"));
        assert_eq!(st.virtual_ip("d"), ip("10.1.0.2"));
        // What a host must capture besides the range: the two held from the old one.
        let outside: Vec<String> = st
            .virtual_ips_outside_range()
            .map(|a| a.to_string())
            .collect();
        assert_eq!(outside, ["10.0.0.1", "10.0.0.2"]);
        assert_eq!(
            st.virtual_ip_service("10.0.0.2".parse().unwrap()),
            Some("b")
        );
        assert_eq!(
            st.virtual_ip_service("10.1.0.2".parse().unwrap()),
            Some("d")
        );
        assert_eq!(st.virtual_ip_service("10.1.0.3".parse().unwrap()), None);
        assert_eq!(st.virtual_ip_count(), 4);
        // Back to a range that overlaps the addresses held: they are not given twice.
        st.apply(9, &range("10.0.0.0/29"));
        st.apply(10, &reg("n", "e", "e"));
        assert_eq!(st.virtual_ip("e"), ip("10.0.0.3"));
        // Freeing an address outside the current range.
        st.apply(11, &dereg("n", "d"));
        assert_eq!(st.virtual_ip("d"), None);
        check_invariants(&st);
    }

    #[test]
    fn image_round_trip() {
        let mut st = State::new();
        st.apply(1, &range("10.2.0.0/24"));
        for i in 0..20u64 {
            st.apply(2 + i, &reg("n", &format!("s{i}"), &format!("svc{i}")));
        }
        st.apply(30, &dereg("n", "s4"));
        let img = st.image();
        assert_eq!(img.virtual_ips.len(), 19);
        assert_eq!(
            img.virtual_ip_range.map(|r| r.to_string()).as_deref(),
            Some("10.2.0.0/24")
        );
        assert_eq!(img.virtual_ip_next, 21);
        let json = serde_json::to_value(&img).expect("ser");
        assert_eq!(json["virtual_ips"][0]["Service"], "svc0");
        assert_eq!(json["virtual_ips"][0]["IP"], "10.2.0.1");
        assert_eq!(json["virtual_ips"][0]["CreateIndex"], 2);
        assert_eq!(json["virtual_ip_range"], "10.2.0.0/24");
        let back = State::from_image(serde_json::from_value(json).expect("de"));
        assert_eq!(back, st);
        // The cursor survived: the next name continues where the original would.
        let mut a = st.clone();
        let mut b = back;
        a.apply(31, &reg("n", "new", "new"));
        b.apply(31, &reg("n", "new", "new"));
        assert_eq!(a.virtual_ip("new"), ip("10.2.0.21"));
        assert_eq!(a, b);
    }

    #[test]
    fn old_images_get_addresses_in_name_order() {
        let mut st = State::new();
        for name in ["web", "api", "db"] {
            st.apply(1, &reg("n", name, name));
        }
        st.applied = 9;
        let mut img = serde_json::to_value(st.image()).expect("ser");
        let obj = img.as_object_mut().expect("object");
        obj.remove("virtual_ips");
        obj.remove("virtual_ip_range");
        obj.remove("virtual_ip_next");
        if let Some(ix) = obj.get_mut("indexes").and_then(|i| i.as_object_mut()) {
            ix.remove("virtual_ips");
        }
        let old: StateImage = serde_json::from_value(img).expect("old image decodes");
        assert_eq!(old.virtual_ip_range, None);
        let st = State::from_image(old);
        assert_eq!(st.virtual_ip_range(), DEFAULT_RANGE);
        assert_eq!(st.virtual_ip("api"), ip("127.100.0.1"));
        assert_eq!(st.virtual_ip("db"), ip("127.100.0.2"));
        assert_eq!(st.virtual_ip("web"), ip("127.100.0.3"));
        assert!(st.virtual_ips().all(|v| v.create_index == 9));
        assert_eq!(st.virtual_ips_index(), 9);
        check_invariants(&st);
    }

    #[test]
    fn restore_keeps_the_image_table_and_fills_the_missing() {
        let mut src = State::new();
        src.apply(1, &reg("n", "web", "web"));
        src.apply(2, &reg("n", "db", "db"));
        src.apply(3, &dereg("n", "web"));
        src.apply(4, &reg("n", "api", "api"));
        let image = src.image();

        let mut st = State::new();
        st.apply(1, &range("10.5.0.0/24"));
        st.apply(2, &reg("n", "other", "other"));
        assert_eq!(
            st.apply(10, &Command::Restore(Box::new(image.clone()))),
            Response::Done
        );
        assert_eq!(st.virtual_ip_range(), DEFAULT_RANGE);
        assert_eq!(st.virtual_ip("db"), ip("127.100.0.2"));
        assert_eq!(st.virtual_ip("api"), ip("127.100.0.3"));
        assert_eq!(st.virtual_ip("other"), None);
        assert_eq!(st.virtual_ips_index(), 10);
        check_invariants(&st);

        // An image whose table lacks a name (the range was full): the restore gives it one.
        let mut partial = image.clone();
        partial.virtual_ips.retain(|v| v.service != "api");
        let mut st = State::new();
        st.apply(10, &Command::Restore(Box::new(partial)));
        assert_eq!(st.virtual_ip("db"), ip("127.100.0.2"));
        assert_eq!(st.virtual_ip("api"), ip("127.100.0.4"));
        check_invariants(&st);

        // An image from before the table: this state's range, names in order.
        let mut old = image;
        old.virtual_ips.clear();
        old.virtual_ip_range = None;
        old.virtual_ip_next = 0;
        let mut st = State::new();
        st.apply(1, &range("10.5.0.0/24"));
        st.apply(10, &Command::Restore(Box::new(old)));
        assert_eq!(st.virtual_ip_range().to_string(), "10.5.0.0/24");
        assert_eq!(st.virtual_ip("api"), ip("10.5.0.1"));
        assert_eq!(st.virtual_ip("db"), ip("10.5.0.2"));
        assert!(st.virtual_ips().all(|v| v.create_index == 10));
        check_invariants(&st);
    }

    #[test]
    fn command_round_trips_and_kind() {
        let c = range("10.0.0.0/8");
        assert_eq!(c.kind(), "virtual_ip_range");
        let j = serde_json::to_string(&c).expect("ser");
        assert_eq!(serde_json::from_str::<Command>(&j).ok(), Some(c));
    }

    #[test]
    fn random_churn_keeps_the_invariants_and_agrees_with_images() {
        let mut seed = 7u64;
        let mut rnd = |bound: u64| {
            seed = seed
                .wrapping_mul(6_364_136_223_846_793_005)
                .wrapping_add(1_442_695_040_888_963_407);
            (seed >> 33) % bound
        };
        let mut st = State::new();
        st.apply(1, &range("10.7.0.0/28"));
        for index in 2..3000u64 {
            let node = format!("n{}", rnd(4));
            let id = format!("i{}", rnd(6));
            let cmd = match rnd(10) {
                0..=4 => reg(&node, &id, &format!("svc{}", rnd(20))),
                5..=7 => dereg(&node, &id),
                8 => Command::Deregister {
                    node,
                    service_id: None,
                    check_id: None,
                },
                _ => range(["10.7.0.0/28", "10.7.0.0/29", "10.8.0.0/28"][rnd(3) as usize]),
            };
            st.apply(index, &cmd);
            check_invariants(&st);
            if index % 97 == 0 {
                let json = serde_json::to_vec(&st.image()).expect("ser");
                let back = State::from_image(serde_json::from_slice(&json).expect("de"));
                assert_eq!(back, st);
            }
        }
    }
}
