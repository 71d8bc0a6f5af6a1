//! Builds the records of an answer from the local state: which instances are healthy, their
//! addresses, SRV targets named as Consul names them, node records with meta as TXT, virtual
//! IPs, and the zone's SOA and NS. Pure and synchronous: the caller holds the state's read
//! lock only while this runs.

use std::net::{IpAddr, Ipv4Addr};
use std::time::{SystemTime, UNIX_EPOCH};

use hickory_proto::op::ResponseCode;
use hickory_proto::rr::rdata::{A, AAAA, NS, PTR, SOA, SRV, TXT};
use hickory_proto::rr::{Name, RData, Record, RecordType};
use rand::seq::index::sample;
use registry::{Node, Service, State, Status};

use super::cache::{Instance, InstanceCache};
use super::names::{ip_hex, Lookup};
use crate::config::DnsConfig;

/// What this agent answers with, besides the registry.
pub struct Zone<'a> {
    pub cfg: &'a DnsConfig,
    /// The domain asked, lowercase, without dots at the ends.
    pub domain: &'a str,
    pub datacenter: &'a str,
    /// The address `ns.<domain>` resolves to (this agent's).
    pub ns_ip: IpAddr,
    /// The largest message the client takes (bytes). Records that would not fit are left out
    /// (and the answer marked truncated), so the encoder never has to cut a message.
    pub size_limit: usize,
    /// Which of the domains was asked (0: `domain`, 1: `alt_domain`), for the cache.
    pub zone: usize,
    /// At most this many address records (0: no limit); `dns_config.a_record_limit`.
    pub a_record_limit: u32,
    pub cache: &'a InstanceCache,
}

/// Bytes of a message besides its records, at most: header (12), the OPT record (11), and the
/// question's type and class (4); the question's name is added per query.
const MESSAGE_OVERHEAD: usize = 27;
/// Fixed bytes of a resource record: type, class, TTL, RDLENGTH.
const RR_FIXED: usize = 10;
/// The fewest bytes an SRV record and its target's A record take together.
const MIN_PAIR: usize = 36;
/// The fewest bytes of an address record.
const MIN_ADDRESS: usize = 16;
/// A compressed owner name: a pointer to an earlier copy.
const OWNER_POINTER: usize = 2;
/// hickory-proto compresses at most this many names in a message (a guard against costly
/// encodes); every later one is written in full.
const COMPRESSED_NAMES: usize = 120;

/// The most bytes the owner name of the `i`-th answer record takes: the first is written in
/// full (the question is copied raw, so nothing points at it), later ones point at it until
/// the encoder stops compressing.
fn owner_bytes(i: usize, qname_wire: usize) -> usize {
    if i == 0 || i >= COMPRESSED_NAMES {
        qname_wire
    } else {
        OWNER_POINTER
    }
}

/// The most bytes `name` takes on the wire (uncompressed).
fn wire_len(name: &Name) -> usize {
    name.iter().map(|l| l.len() + 1).sum::<usize>() + 1
}

fn address_bytes(ip: IpAddr) -> usize {
    match ip {
        IpAddr::V4(_) => 4,
        IpAddr::V6(_) => 16,
    }
}

/// An answer before it is encoded.
#[derive(Debug)]
pub struct Answer {
    pub rcode: ResponseCode,
    pub answers: Vec<Record>,
    pub additionals: Vec<Record>,
    /// The zone's SOA, in the authority section of negative answers.
    pub soa: Option<Record>,
    /// Records were left out because the message would not hold them (TC).
    pub truncated: bool,
}

impl Answer {
    fn records(answers: Vec<Record>, additionals: Vec<Record>) -> Answer {
        Answer {
            rcode: ResponseCode::NoError,
            answers,
            additionals,
            soa: None,
            truncated: false,
        }
    }
}

impl Zone<'_> {
    fn name(&self, prefix: &str) -> Option<Name> {
        let s = if prefix.is_empty() {
            format!("{}.", self.domain)
        } else {
            format!("{prefix}.{}.", self.domain)
        };
        Name::from_ascii(s).ok()
    }

    /// The zone's SOA record (Consul's shape: `ns.` and `hostmaster.` under the domain).
    pub fn soa(&self) -> Option<Record> {
        let serial = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_secs() as u32)
            .unwrap_or(0);
        let soa = SOA::new(
            self.name("ns")?,
            self.name("hostmaster")?,
            serial,
            3600,
            600,
            86400,
            0,
        );
        Some(Record::from_rdata(self.name("")?, 0, RData::SOA(soa)))
    }

    fn no_data(&self) -> Answer {
        Answer {
            rcode: ResponseCode::NoError,
            answers: Vec::new(),
            additionals: Vec::new(),
            soa: self.soa(),
            truncated: false,
        }
    }

    fn nx_domain(&self) -> Answer {
        Answer {
            rcode: ResponseCode::NXDomain,
            answers: Vec::new(),
            additionals: Vec::new(),
            soa: self.soa(),
            truncated: false,
        }
    }

    /// Answers `lookup` for `qtype`; `qname` is the name asked (the owner of the answers).
    pub fn answer(
        &self,
        state: &State,
        lookup: &Lookup,
        qname: &Name,
        qtype: RecordType,
    ) -> Answer {
        let out = match lookup {
            Lookup::Apex => self.apex(qname, qtype),
            Lookup::NameServer => self.address_answer(qname, qtype, self.ns_ip, 0),
            Lookup::Service { name, tag } => {
                self.service(state, name, tag.as_deref(), qname, qtype)
            }
            Lookup::Node { name } => self.node(state, name, qname, qtype),
            Lookup::Addr { ip } => self.address_answer(qname, qtype, *ip, self.cfg.node_ttl()),
            Lookup::Virtual { name } => {
                let name = state.service_name_ignore_case(name);
                match name.and_then(|n| Some((n, state.virtual_ip(n)?))) {
                    Some((name, ip)) => self.address_answer(
                        qname,
                        qtype,
                        IpAddr::V4(ip),
                        self.cfg.service_ttl(name),
                    ),
                    None => None,
                }
            }
            Lookup::Missing => None,
        };
        match out {
            None => self.nx_domain(),
            Some(a) if a.answers.is_empty() && a.rcode == ResponseCode::NoError => self.no_data(),
            Some(a) => a,
        }
    }

    /// PTR records for an address the registry knows: nodes at it, services with it as their
    /// own address, and the service whose virtual IP it is. Empty when it knows none.
    pub fn reverse(&self, state: &State, ip: IpAddr, qname: &Name) -> Vec<Record> {
        let mut targets = std::collections::BTreeSet::new();
        let text = ip.to_string();
        for node in state.nodes() {
            let node_here = node.address == text;
            if node_here {
                targets.insert(format!("{}.node.{}", node.node, self.datacenter));
            }
            for s in state.node_services(&node.node) {
                let here = if s.address.is_empty() {
                    node_here
                } else {
                    s.address == text
                };
                if here {
                    targets.insert(format!("{}.service.{}", s.service, self.datacenter));
                }
            }
        }
        if let IpAddr::V4(v4) = ip {
            if let Some(service) = state.virtual_ip_service(v4) {
                targets.insert(format!("{service}.virtual"));
            }
        }
        targets
            .iter()
            .filter_map(|t| self.name(t))
            .map(|t| Record::from_rdata(qname.clone(), self.cfg.node_ttl(), RData::PTR(PTR(t))))
            .collect()
    }

    fn apex(&self, qname: &Name, qtype: RecordType) -> Option<Answer> {
        let mut answers = Vec::new();
        let mut additionals = Vec::new();
        if matches!(qtype, RecordType::SOA | RecordType::ANY) {
            answers.extend(self.soa());
        }
        if matches!(qtype, RecordType::NS | RecordType::ANY) {
            if let Some(ns) = self.name("ns") {
                answers.push(Record::from_rdata(
                    qname.clone(),
                    0,
                    RData::NS(NS(ns.clone())),
                ));
                additionals.extend(address_record(ns, self.ns_ip, 0));
            }
        }
        Some(Answer::records(answers, additionals))
    }

    /// A name that has exactly one address.
    fn address_answer(
        &self,
        qname: &Name,
        qtype: RecordType,
        ip: IpAddr,
        ttl: u32,
    ) -> Option<Answer> {
        let rec = address_record(qname.clone(), ip, ttl)
            .filter(|r| qtype == RecordType::ANY || r.record_type() == qtype);
        Some(Answer::records(rec.into_iter().collect(), Vec::new()))
    }

    fn node(&self, state: &State, name: &str, qname: &Name, qtype: RecordType) -> Option<Answer> {
        let node = state.node_ignore_case(name)?;
        let ttl = self.cfg.node_ttl();
        let mut answers = Vec::new();
        let mut additionals = Vec::new();
        if let Ok(ip) = node.address.parse::<IpAddr>() {
            if let Some(r) = address_record(qname.clone(), ip, ttl) {
                if qtype == RecordType::ANY || r.record_type() == qtype {
                    answers.push(r);
                }
            }
        }
        let txt = node_meta_txt(node, qname, ttl);
        match qtype {
            RecordType::TXT | RecordType::ANY => answers.extend(txt),
            // As Consul: an address answer carries the node's meta in the additional section.
            RecordType::A | RecordType::AAAA if !answers.is_empty() => additionals.extend(txt),
            _ => {}
        }
        Some(Answer::records(answers, additionals))
    }

    fn service(
        &self,
        state: &State,
        name: &str,
        tag: Option<&str>,
        qname: &Name,
        qtype: RecordType,
    ) -> Option<Answer> {
        let name = state.service_name_ignore_case(name)?;
        let index = state.service_index(name);
        let instances = self.cache.get(self.zone, name, tag, index, || {
            healthy_instances(state, name, tag, self.cfg.only_passing)
                .iter()
                .filter_map(|i| self.instance(i))
                .collect()
        });
        if instances.is_empty() {
            // As Consul: a service without a healthy instance does not exist.
            return None;
        }
        let ttl = self.cfg.service_ttl(name);
        let mut rng = rand::rng();
        let mut answers = Vec::new();
        let mut additionals = Vec::new();
        // Records are added while they surely fit (sizes counted uncompressed); the first one
        // that might not ends the answer, marked truncated.
        let qname_wire = wire_len(qname);
        let mut budget = self
            .size_limit
            .saturating_sub(MESSAGE_OVERHEAD + qname_wire);
        let mut truncated = false;
        match qtype {
            RecordType::SRV => {
                // No more than could fit are drawn (each pair takes at least MIN_PAIR bytes).
                let n = instances.len();
                let drawn = n.min(budget / MIN_PAIR + 1);
                truncated = drawn < n;
                for i in sample(&mut rng, n, drawn) {
                    let inst = &instances[i];
                    let bytes = owner_bytes(answers.len(), qname_wire) + inst.srv_bytes;
                    if bytes > budget {
                        truncated = true;
                        break;
                    }
                    budget -= bytes;
                    let srv = SRV::new(1, inst.weight, inst.port, inst.target.clone());
                    answers.push(Record::from_rdata(qname.clone(), ttl, RData::SRV(srv)));
                    additionals.extend(address_record(inst.target.clone(), inst.ip, ttl));
                }
            }
            RecordType::A | RecordType::AAAA | RecordType::ANY => {
                let mut seen = std::collections::HashSet::new();
                let limit = match self.a_record_limit {
                    0 => usize::MAX,
                    n => n as usize,
                };
                // Twice what could fit are drawn (duplicates and the other family are
                // skipped); if they run out first, every instance is drawn.
                let n = instances.len();
                let mut order = sample(&mut rng, n, n.min(2 * (budget / MIN_ADDRESS + 1) + 8));
                let mut all = order.len() == n;
                let mut pos = 0;
                loop {
                    if pos == order.len() {
                        if all {
                            break;
                        }
                        order = sample(&mut rng, n, n);
                        all = true;
                        pos = 0;
                    }
                    let i = order.index(pos);
                    pos += 1;
                    let ip = instances[i].ip;
                    let wanted = match ip {
                        IpAddr::V4(_) => qtype != RecordType::AAAA,
                        IpAddr::V6(_) => qtype != RecordType::A,
                    };
                    if !wanted || !seen.insert(ip) {
                        continue;
                    }
                    if answers.len() >= limit {
                        break;
                    }
                    let bytes =
                        owner_bytes(answers.len(), qname_wire) + RR_FIXED + address_bytes(ip);
                    if bytes > budget {
                        truncated = true;
                        break;
                    }
                    budget -= bytes;
                    answers.extend(address_record(qname.clone(), ip, ttl));
                }
            }
            _ => {}
        }
        let mut a = Answer::records(answers, additionals);
        a.truncated = truncated;
        Some(a)
    }

    /// An instance as answers use it; `None` if it has no IP address.
    fn instance(&self, inst: &HealthyInstance<'_>) -> Option<Instance> {
        let (target, ip) = self.srv_target(inst)?;
        let weight = match inst.status {
            Status::Warning => inst.service.weights.warning,
            _ => inst.service.weights.passing,
        }
        .min(u16::MAX as u32) as u16;
        // The SRV record (owner compressed, target not: RFC 2782) and the target's A record.
        let srv_bytes = OWNER_POINTER
            + RR_FIXED
            + 6
            + wire_len(&target)
            + wire_len(&target)
            + RR_FIXED
            + address_bytes(ip);
        Some(Instance {
            ip,
            port: inst.service.port,
            weight,
            target,
            srv_bytes,
        })
    }

    /// Consul's SRV target: `<hex>.addr.<dc>.<domain>` when the instance has its own address,
    /// else `<node>.node.<dc>.<domain>`; with the address the target resolves to.
    fn srv_target(&self, inst: &HealthyInstance<'_>) -> Option<(Name, IpAddr)> {
        let ip = inst.ip()?;
        let own = !inst.service.address.is_empty() && inst.service.address != inst.node.address;
        let label = if own {
            format!("{}.addr.{}", ip_hex(ip), self.datacenter)
        } else {
            format!("{}.node.{}", inst.node.node, self.datacenter)
        };
        Some((self.name(&label)?, ip))
    }
}

/// One healthy instance in the registry.
pub struct HealthyInstance<'a> {
    pub node: &'a Node,
    pub service: &'a Service,
    pub status: Status,
}

impl HealthyInstance<'_> {
    /// The service's address, else its node's.
    pub fn ip(&self) -> Option<IpAddr> {
        let a = if self.service.address.is_empty() {
            &self.node.address
        } else {
            &self.service.address
        };
        a.parse().ok()
    }
}

/// The instances of `name` (with `tag`, if given) whose worst check is passing (or warning,
/// unless `only_passing`). Node-level checks count for every instance on the node. Each node's
/// checks are read once, however many instances it has.
pub fn healthy_instances<'a>(
    state: &'a State,
    name: &str,
    tag: Option<&str>,
    only_passing: bool,
) -> Vec<HealthyInstance<'a>> {
    let worst_allowed = if only_passing {
        Status::Passing
    } else {
        Status::Warning
    };
    let all = state.service_instances(name);
    let mut out = Vec::with_capacity(all.len());
    let mut i = 0;
    while i < all.len() {
        let node = all[i].0;
        let mut j = i;
        while j < all.len() && all[j].0.node == node.node {
            j += 1;
        }
        let group = &all[i..j];
        let mut node_status = Status::Passing;
        let mut by_service: std::collections::HashMap<&str, Status> = Default::default();
        for c in state.node_checks(&node.node) {
            if c.service_id.is_empty() {
                node_status = node_status.max(c.status);
            } else {
                let e = by_service
                    .entry(c.service_id.as_str())
                    .or_insert(Status::Passing);
                *e = (*e).max(c.status);
            }
        }
        for (node, service) in group {
            if tag.is_some_and(|t| !service.tags.iter().any(|s| s.eq_ignore_ascii_case(t))) {
                continue;
            }
            let status = node_status.max(
                by_service
                    .get(service.id.as_str())
                    .copied()
                    .unwrap_or(Status::Passing),
            );
            if status <= worst_allowed {
                out.push(HealthyInstance {
                    node,
                    service,
                    status,
                });
            }
        }
        i = j;
    }
    out
}

/// An A or AAAA record.
pub fn address_record(name: Name, ip: IpAddr, ttl: u32) -> Option<Record> {
    let rdata = match ip {
        IpAddr::V4(v4) if v4 != Ipv4Addr::UNSPECIFIED => RData::A(A(v4)),
        IpAddr::V6(v6) if !v6.is_unspecified() => RData::AAAA(AAAA(v6)),
        _ => return None,
    };
    Some(Record::from_rdata(name, ttl, rdata))
}

/// One TXT record per node meta entry, `key=value` (RFC 1464).
fn node_meta_txt(node: &Node, name: &Name, ttl: u32) -> Vec<Record> {
    node.meta
        .iter()
        .map(|(k, v)| {
            Record::from_rdata(
                name.clone(),
                ttl,
                RData::TXT(TXT::new(vec![format!("{k}={v}")])),
            )
        })
        .collect()
}

#[cfg(test)]
#[path = "answer_tests.rs"]
mod tests;
