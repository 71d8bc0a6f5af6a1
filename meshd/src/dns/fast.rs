//! The fast path for the most common query: a plain A or AAAA question over UDP whose answer is
//! a list of addresses. Such answers are kept per (name, type) at the registry's applied index
//! and written straight to wire form, shuffled per query, without building hickory messages.
//! Every other query (and every answer that would not fit the client's size) takes the full
//! path, which gives the same records: the fast path only skips work, never changes answers.
//!
//! Validity: an entry is used only while the local state's applied index is the one it was
//! built at, so any write anywhere invalidates every entry (correct and simple; a busy name is
//! rebuilt once per write).

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::{Arc, Mutex};

use hickory_proto::rr::RecordType;

use super::udp_payload_limit;

/// Entries kept at most; past this the cache starts over.
const MAX_ENTRIES: usize = 16_384;
const TYPE_A: u16 = 1;
const TYPE_AAAA: u16 = 28;
const TYPE_OPT: u16 = 41;
const CLASS_IN: u16 = 1;

/// A query the fast path can take, read from the datagram.
#[derive(Debug, PartialEq, Eq)]
pub struct Question {
    pub id: u16,
    pub recursion_desired: bool,
    /// End of the question section in the datagram (its bytes are echoed as asked).
    pub question_end: usize,
    /// The name in wire form, lowercased, then `qtype`: the cache key.
    pub key: Vec<u8>,
    pub qtype: u16,
    /// The client's EDNS UDP size, when it sent an OPT record.
    pub edns_size: Option<u16>,
}

impl Question {
    /// The most bytes the answer may take.
    pub fn limit(&self) -> usize {
        udp_payload_limit(self.edns_size) as usize
    }

    pub fn record_type(&self) -> RecordType {
        if self.qtype == TYPE_A {
            RecordType::A
        } else {
            RecordType::AAAA
        }
    }

    /// The name asked, lowercase, as text with the final dot.
    pub fn name_text(&self) -> Option<String> {
        // The key is the wire-form name followed by the type.
        let wire = self.key.get(..self.key.len().checked_sub(2)?)?;
        let mut out = String::with_capacity(wire.len());
        let mut at = 0;
        loop {
            let len = *wire.get(at)? as usize;
            if len == 0 {
                break;
            }
            out.push_str(std::str::from_utf8(wire.get(at + 1..at + 1 + len)?).ok()?);
            out.push('.');
            at += 1 + len;
        }
        if out.is_empty() {
            out.push('.');
        }
        Some(out)
    }
}

fn u16_at(b: &[u8], at: usize) -> Option<u16> {
    Some(u16::from_be_bytes([*b.get(at)?, *b.get(at + 1)?]))
}

/// Reads a datagram that is exactly one standard query for A or AAAA in class IN, with at
/// most an EDNS(0) OPT record; `None` for anything else (the full path decides).
pub fn parse(d: &[u8]) -> Option<Question> {
    if d.len() < 12 {
        return None;
    }
    let id = u16_at(d, 0)?;
    let flags = u16_at(d, 2)?;
    // QR=0, OPCODE=0.
    if flags & 0xF800 != 0 {
        return None;
    }
    let (qd, an, ns, ar) = (u16_at(d, 4)?, u16_at(d, 6)?, u16_at(d, 8)?, u16_at(d, 10)?);
    if qd != 1 || an != 0 || ns != 0 || ar > 1 {
        return None;
    }
    let mut at = 12;
    let mut key = Vec::with_capacity(32);
    loop {
        let len = *d.get(at)? as usize;
        // No compression in a question; labels of 1..63 bytes; names of at most 255.
        if len > 63 {
            return None;
        }
        key.push(len as u8);
        at += 1;
        if len == 0 {
            break;
        }
        let label = d.get(at..at + len)?;
        key.extend(label.iter().map(u8::to_ascii_lowercase));
        at += len;
        if key.len() > 255 {
            return None;
        }
    }
    let qtype = u16_at(d, at)?;
    let qclass = u16_at(d, at + 2)?;
    at += 4;
    if !matches!(qtype, TYPE_A | TYPE_AAAA) || qclass != CLASS_IN {
        return None;
    }
    key.extend_from_slice(&qtype.to_be_bytes());
    let question_end = at;
    let mut edns_size = None;
    if ar == 1 {
        // Root name, type OPT, class = UDP size, TTL = rcode/version/flags, options.
        if *d.get(at)? != 0 || u16_at(d, at + 1)? != TYPE_OPT {
            return None;
        }
        let size = u16_at(d, at + 3)?;
        let version = *d.get(at + 6)?;
        if version != 0 {
            return None;
        }
        let rdlen = u16_at(d, at + 9)? as usize;
        at += 11 + rdlen;
        edns_size = Some(size);
    }
    if at != d.len() {
        return None;
    }
    Some(Question {
        id,
        recursion_desired: flags & 0x0100 != 0,
        question_end,
        key,
        qtype,
        edns_size,
    })
}

/// What a name answers with: its addresses and their TTL.
#[derive(Debug)]
pub struct Plan {
    pub ttl: u32,
    pub addrs: Vec<IpAddr>,
}

/// A kept answer, or the knowledge that the full path is needed, at an applied index.
type Entry = (u64, Option<Arc<Plan>>);

#[derive(Default)]
pub struct FastCache {
    entries: Mutex<HashMap<Vec<u8>, Entry>>,
}

impl FastCache {
    /// `Some(Some(plan))`: answer with it; `Some(None)`: known to need the full path; `None`:
    /// not known at `index`.
    pub fn get(&self, q: &Question, index: u64) -> Option<Option<Arc<Plan>>> {
        let map = self.entries.lock().ok()?;
        match map.get(q.key.as_slice()) {
            Some((at, plan)) if *at == index => Some(plan.clone()),
            _ => None,
        }
    }

    pub fn put(&self, q: &Question, index: u64, plan: Option<Arc<Plan>>) {
        if let Ok(mut map) = self.entries.lock() {
            if map.len() >= MAX_ENTRIES {
                map.clear();
            }
            map.insert(q.key.clone(), (index, plan));
        }
    }
}

/// A small, fast generator for shuffling (xorshift64*); not for anything secret.
pub struct Shuffler(u64);

impl Shuffler {
    pub fn new() -> Shuffler {
        Shuffler(rand::random::<u64>() | 1)
    }

    fn next(&mut self) -> u64 {
        let mut x = self.0;
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        self.0 = x;
        x.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }

    /// Below `n` (n > 0).
    fn below(&mut self, n: usize) -> usize {
        (((self.next() >> 32) * n as u64) >> 32) as usize
    }
}

/// Writes the answer to `q` (whose datagram is `d`) from `plan`, in random order, with at
/// most `limit_records` records (`a_record_limit`; 0: all); `None` if it would not fit the
/// client's size (the full path then truncates).
pub fn write(
    d: &[u8],
    q: &Question,
    plan: &Plan,
    limit_records: usize,
    recursion_available: bool,
    rng: &mut Shuffler,
) -> Option<Vec<u8>> {
    let addr_len = if q.qtype == TYPE_A { 4 } else { 16 };
    let mut count = plan.addrs.len();
    if limit_records > 0 {
        count = count.min(limit_records);
    }
    let opt_len = if q.edns_size.is_some() { 11 } else { 0 };
    let size = q.question_end + count * (12 + addr_len) + opt_len;
    if size > q.limit() || count > u16::MAX as usize {
        return None;
    }
    // Partial Fisher-Yates: the first `count` of a random permutation.
    let mut order: Vec<u16> = (0..plan.addrs.len() as u16).collect();
    for i in 0..count {
        let j = i + rng.below(order.len() - i);
        order.swap(i, j);
    }
    let mut out = Vec::with_capacity(size);
    out.extend_from_slice(&q.id.to_be_bytes());
    // QR, AA, RD as asked, RA when recursors are set; NOERROR.
    let mut flags: u16 = 0x8400;
    if q.recursion_desired {
        flags |= 0x0100;
    }
    if recursion_available {
        flags |= 0x0080;
    }
    out.extend_from_slice(&flags.to_be_bytes());
    out.extend_from_slice(&1u16.to_be_bytes());
    out.extend_from_slice(&(count as u16).to_be_bytes());
    out.extend_from_slice(&0u16.to_be_bytes());
    out.extend_from_slice(&(u16::from(opt_len > 0)).to_be_bytes());
    // The question as asked (the case of a 0x20 resolver kept).
    out.extend_from_slice(d.get(12..q.question_end)?);
    for &i in &order[..count] {
        // The owner is the question's name: a pointer to offset 12.
        out.extend_from_slice(&[0xC0, 0x0C]);
        out.extend_from_slice(&q.qtype.to_be_bytes());
        out.extend_from_slice(&CLASS_IN.to_be_bytes());
        out.extend_from_slice(&plan.ttl.to_be_bytes());
        out.extend_from_slice(&(addr_len as u16).to_be_bytes());
        match plan.addrs[i as usize] {
            IpAddr::V4(v4) if addr_len == 4 => out.extend_from_slice(&v4.octets()),
            IpAddr::V6(v6) if addr_len == 16 => out.extend_from_slice(&v6.octets()),
            _ => return None,
        }
    }
    if let Some(s) = q.edns_size {
        out.push(0);
        out.extend_from_slice(&TYPE_OPT.to_be_bytes());
        out.extend_from_slice(&udp_payload_limit(Some(s)).to_be_bytes());
        out.extend_from_slice(&[0, 0, 0, 0, 0, 0]);
    }
    Some(out)
}

#[cfg(test)]
mod tests {
    use hickory_proto::op::{Edns, Message, MessageType, Query};
    use hickory_proto::rr::{Name, RData, RecordType};

    use super::*;

    fn query(name: &str, t: RecordType, edns: bool) -> Vec<u8> {
        let mut m = Message::query();
        m.metadata.id = 0x1234;
        m.metadata.recursion_desired = true;
        m.add_query(Query::query(Name::from_ascii(name).unwrap(), t));
        if edns {
            let mut e = Edns::new();
            e.set_max_payload(1232);
            m.edns = Some(e);
        }
        m.to_vec().unwrap()
    }

    #[test]
    fn parses_plain_queries_only() {
        let d = query("Web.Service.Mesh.", RecordType::A, true);
        let q = parse(&d).expect("fast");
        assert_eq!(q.id, 0x1234);
        assert_eq!(q.edns_size, Some(1232));
        assert_eq!(&q.key[..4], b"\x03web");
        assert!(parse(&query("web.service.mesh.", RecordType::SRV, false)).is_none());
        assert!(parse(&query("web.service.mesh.", RecordType::TXT, false)).is_none());
        assert!(parse(&d[..d.len() - 1]).is_none());
        let mut trailing = d.clone();
        trailing.push(0);
        assert!(parse(&trailing).is_none());
        let mut response = d.clone();
        response[2] |= 0x80;
        assert!(parse(&response).is_none());
    }

    #[test]
    fn writes_a_valid_shuffled_answer() {
        let d = query("WEB.service.mesh.", RecordType::A, true);
        let q = parse(&d).unwrap();
        let plan = Plan {
            ttl: 5,
            addrs: (1..=20).map(|i| IpAddr::from([10, 0, 0, i])).collect(),
        };
        let mut rng = Shuffler::new();
        let mut firsts = std::collections::HashSet::new();
        for _ in 0..50 {
            let bytes = write(&d, &q, &plan, 0, false, &mut rng).expect("fits");
            let m = Message::from_vec(&bytes).expect("valid message");
            assert_eq!(m.metadata.id, 0x1234);
            assert_eq!(m.metadata.message_type, MessageType::Response);
            assert!(m.metadata.authoritative && m.metadata.recursion_desired);
            assert_eq!(m.queries[0].name().to_ascii(), "WEB.service.mesh.");
            assert_eq!(m.answers.len(), 20);
            assert_eq!(m.edns.as_ref().map(|e| e.max_payload()), Some(1232));
            let mut got: Vec<IpAddr> = m
                .answers
                .iter()
                .map(|r| match &r.data {
                    RData::A(a) => IpAddr::V4(a.0),
                    other => panic!("{other:?}"),
                })
                .collect();
            assert_eq!(m.answers[0].ttl, 5);
            firsts.insert(got[0]);
            got.sort();
            assert_eq!(got, plan.addrs);
        }
        assert!(firsts.len() > 1, "shuffled");
        let three = write(&d, &q, &plan, 3, false, &mut rng).unwrap();
        assert_eq!(Message::from_vec(&three).unwrap().answers.len(), 3);
        // Too big for 512 bytes without EDNS: the full path truncates.
        let d = query("web.service.mesh.", RecordType::A, false);
        let q = parse(&d).unwrap();
        let many = Plan {
            ttl: 0,
            addrs: (0..40).map(|i| IpAddr::from([10, 0, 1, i])).collect(),
        };
        assert!(write(&d, &q, &many, 0, false, &mut rng).is_none());
    }
}
