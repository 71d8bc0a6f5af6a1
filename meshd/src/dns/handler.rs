//! The request handler hickory-server calls for every parsed query: checks the message, answers
//! names in our domains from the local state, forwards or refuses the rest, and counts.

use std::net::IpAddr;
use std::sync::Arc;
use std::time::Instant;

use hickory_proto::op::{Edns, Header, HeaderCounts, Metadata, OpCode, ResponseCode};
use hickory_proto::rr::{DNSClass, Name, RData, Record, RecordType};
use hickory_server::net::runtime::Time;
use hickory_server::net::xfer::Protocol;
use hickory_server::server::{Request, RequestHandler, ResponseHandler, ResponseInfo};
use hickory_server::zone_handler::MessageResponseBuilder;

use super::answer::Zone;
use super::cache::InstanceCache;
use super::fast::{self, FastCache, Plan, Question, Shuffler};
use super::metrics::{DnsMetrics, QueryLabels};
use super::names::{self, Lookup, Parsed};
use super::recursor::Recursor;
use super::{udp_payload_limit, MAX_UDP_PAYLOAD};
use crate::config::DnsConfig;
use crate::store::Store;

pub struct Handler {
    pub store: Store,
    /// `domain`, then `alt_domain` if set: the zones' numbers are their places here.
    pub domains: Vec<String>,
    pub cfg: Arc<DnsConfig>,
    pub datacenter: String,
    /// What `ns.<domain>` resolves to.
    pub ns_ip: IpAddr,
    pub recursor: Option<Recursor>,
    pub metrics: DnsMetrics,
    pub cache: InstanceCache,
    pub fast: FastCache,
}

/// The records of a response, owned until it is encoded.
#[derive(Default)]
struct Reply {
    rcode: ResponseCode,
    authoritative: bool,
    truncated: bool,
    answers: Vec<Record>,
    authorities: Vec<Record>,
    additionals: Vec<Record>,
}

impl Reply {
    fn code(rcode: ResponseCode) -> Reply {
        Reply {
            rcode,
            ..Reply::default()
        }
    }
}

impl Handler {
    /// Answers for zone number `zone` in messages of at most `size_limit` bytes.
    fn zone(&self, zone: usize, size_limit: u16) -> Zone<'_> {
        Zone {
            cfg: &self.cfg,
            domain: &self.domains[zone],
            datacenter: &self.datacenter,
            ns_ip: self.ns_ip,
            size_limit: size_limit as usize,
            zone,
            a_record_limit: self.cfg.a_record_limit,
            cache: &self.cache,
        }
    }

    async fn resolve(&self, request: &Request) -> (Reply, Option<RecordType>) {
        if request.metadata.op_code != OpCode::Query {
            return (Reply::code(ResponseCode::NotImp), None);
        }
        let queries = request.queries.queries();
        if queries.len() != 1 {
            return (Reply::code(ResponseCode::FormErr), None);
        }
        let q = &queries[0];
        let qtype = q.query_type();
        if !matches!(q.query_class(), DNSClass::IN | DNSClass::ANY) {
            return (Reply::code(ResponseCode::NotImp), Some(qtype));
        }
        // Answers are owned by the name as asked (resolvers using 0x20 case randomization).
        let qname: Name = q.original().name().clone();
        let text = qname.to_ascii();
        match names::parse(&text, &self.domains, &self.datacenter) {
            Parsed::Ours { zone, lookup } => {
                if matches!(qtype, RecordType::AXFR | RecordType::IXFR) {
                    return (Reply::code(ResponseCode::Refused), Some(qtype));
                }
                let size_limit = match request.protocol() {
                    Protocol::Udp => {
                        udp_payload_limit(request.edns.as_ref().map(Edns::max_payload))
                    }
                    _ => u16::MAX,
                };
                let z = self.zone(zone, size_limit);
                let a = {
                    let state = self.store.read();
                    z.answer(&state, &lookup, &qname, qtype)
                };
                let reply = Reply {
                    rcode: a.rcode,
                    authoritative: true,
                    truncated: a.truncated,
                    answers: a.answers,
                    authorities: a.soa.into_iter().collect(),
                    additionals: a.additionals,
                };
                (reply, Some(qtype))
            }
            Parsed::Reverse(ip) if matches!(qtype, RecordType::PTR | RecordType::ANY) => {
                let answers = {
                    let state = self.store.read();
                    self.zone(0, u16::MAX).reverse(&state, ip, &qname)
                };
                if answers.is_empty() {
                    self.foreign(qname, qtype, &text).await
                } else {
                    let reply = Reply {
                        rcode: ResponseCode::NoError,
                        authoritative: true,
                        answers,
                        ..Reply::default()
                    };
                    (reply, Some(qtype))
                }
            }
            Parsed::Reverse(_) | Parsed::Foreign => self.foreign(qname, qtype, &text).await,
        }
    }

    /// A name that is not ours: to the recursors, or refused.
    async fn foreign(
        &self,
        qname: Name,
        qtype: RecordType,
        text: &str,
    ) -> (Reply, Option<RecordType>) {
        match &self.recursor {
            None => (Reply::code(ResponseCode::Refused), Some(qtype)),
            Some(r) => match r.forward(qname, qtype).await {
                Ok(f) => (
                    Reply {
                        rcode: f.rcode,
                        authoritative: false,
                        truncated: false,
                        answers: f.answers,
                        authorities: f.authorities,
                        additionals: f.additionals,
                    },
                    Some(qtype),
                ),
                Err(e) => {
                    self.metrics.recursor_errors.inc();
                    tracing::debug!(name = %text, error = %e, "no recursor answered");
                    (Reply::code(ResponseCode::ServFail), Some(qtype))
                }
            },
        }
    }
}

impl Handler {
    /// The fast path's answer to a plain A/AAAA query (see [`fast`]); `None` when the full
    /// path must answer.
    pub fn fast_answer(&self, d: &[u8], q: &Question, rng: &mut Shuffler) -> Option<Vec<u8>> {
        let start = Instant::now();
        let plan = {
            let state = self.store.read();
            let index = state.applied_index();
            match self.fast.get(q, index) {
                Some(plan) => plan,
                None => {
                    let plan = self.plan(&state, q);
                    self.fast.put(q, index, plan.clone());
                    plan
                }
            }
        }?;
        let limit = self.cfg.a_record_limit as usize;
        let bytes = fast::write(d, q, &plan, limit, self.recursor.is_some(), rng)?;
        self.metrics
            .queries
            .get_or_create(&QueryLabels {
                qtype: qtype_label(Some(q.record_type())),
                rcode: "NOERROR",
                protocol: "udp",
            })
            .inc();
        self.metrics.duration.observe(start.elapsed().as_secs_f64());
        Some(bytes)
    }

    /// The addresses a plain A/AAAA answer to `q` holds, if its answer is only that: a
    /// service, virtual IP, `addr` or `ns` name with addresses (node answers carry TXT).
    fn plan(&self, state: &registry::State, q: &Question) -> Option<Arc<Plan>> {
        let text = q.name_text()?;
        let Parsed::Ours { zone, lookup } = names::parse(&text, &self.domains, &self.datacenter)
        else {
            return None;
        };
        if !matches!(
            lookup,
            Lookup::Service { .. }
                | Lookup::Virtual { .. }
                | Lookup::Addr { .. }
                | Lookup::NameServer
        ) {
            return None;
        }
        let qname = Name::from_ascii(&text).ok()?;
        // Every address (the limit is applied per query), if they fit the largest UDP answer;
        // a service too large for that is answered by the full path (which cuts it).
        let mut z = self.zone(zone, MAX_UDP_PAYLOAD);
        z.a_record_limit = 0;
        let a = z.answer(state, &lookup, &qname, q.record_type());
        if a.rcode != ResponseCode::NoError
            || a.truncated
            || a.soa.is_some()
            || !a.additionals.is_empty()
            || a.answers.is_empty()
        {
            return None;
        }
        let ttl = a.answers[0].ttl;
        let mut addrs = Vec::with_capacity(a.answers.len());
        for r in &a.answers {
            if r.ttl != ttl {
                return None;
            }
            match &r.data {
                RData::A(v4) => addrs.push(IpAddr::V4(v4.0)),
                RData::AAAA(v6) => addrs.push(IpAddr::V6(v6.0)),
                _ => return None,
            }
        }
        Some(Arc::new(Plan { ttl, addrs }))
    }
}

#[async_trait::async_trait]
impl RequestHandler for Handler {
    async fn handle_request<R: ResponseHandler, T: Time>(
        &self,
        request: &Request,
        mut response_handle: R,
    ) -> ResponseInfo {
        let start = Instant::now();
        let (reply, qtype) = self.resolve(request).await;

        let mut metadata = Metadata::response_from_request(&request.metadata);
        metadata.response_code = reply.rcode;
        metadata.authoritative = reply.authoritative;
        metadata.truncation = reply.truncated;
        metadata.recursion_available = self.recursor.is_some();
        // Our EDNS answer states the size we send up to: the client's, within bounds.
        let edns = request.edns.as_ref().map(|e| {
            let mut out = Edns::new();
            out.set_max_payload(udp_payload_limit(Some(e.max_payload())));
            out
        });
        let mut builder = MessageResponseBuilder::new(&request.queries, None);
        if let Some(e) = &edns {
            builder.edns(e);
        }
        let response = builder.build(
            metadata,
            reply.answers.iter(),
            reply.authorities.iter(),
            std::iter::empty(),
            reply.additionals.iter(),
        );
        let protocol = request.protocol();
        let info = match response_handle.send_response(response).await {
            Ok(info) => info,
            Err(e) => {
                tracing::debug!(error = %e, src = %request.src(), "DNS answer not sent");
                metadata.response_code = ResponseCode::ServFail;
                ResponseInfo::from(Header {
                    metadata,
                    counts: HeaderCounts::default(),
                })
            }
        };
        if info.truncation {
            self.metrics.truncated.inc();
        }
        self.metrics
            .queries
            .get_or_create(&QueryLabels {
                qtype: qtype_label(qtype),
                rcode: rcode_label(info.response_code),
                protocol: match protocol {
                    Protocol::Udp => "udp",
                    Protocol::Tcp => "tcp",
                    _ => "other",
                },
            })
            .inc();
        self.metrics.duration.observe(start.elapsed().as_secs_f64());
        info
    }
}

/// A bounded set of label values, so hostile queries cannot grow the metric families.
fn qtype_label(t: Option<RecordType>) -> &'static str {
    match t {
        None => "NONE",
        Some(RecordType::A) => "A",
        Some(RecordType::AAAA) => "AAAA",
        Some(RecordType::SRV) => "SRV",
        Some(RecordType::TXT) => "TXT",
        Some(RecordType::NS) => "NS",
        Some(RecordType::SOA) => "SOA",
        Some(RecordType::ANY) => "ANY",
        Some(RecordType::PTR) => "PTR",
        Some(RecordType::CNAME) => "CNAME",
        Some(RecordType::MX) => "MX",
        Some(_) => "OTHER",
    }
}

fn rcode_label(c: ResponseCode) -> &'static str {
    match c {
        ResponseCode::NoError => "NOERROR",
        ResponseCode::FormErr => "FORMERR",
        ResponseCode::ServFail => "SERVFAIL",
        ResponseCode::NXDomain => "NXDOMAIN",
        ResponseCode::NotImp => "NOTIMP",
        ResponseCode::Refused => "REFUSED",
        _ => "OTHER",
    }
}
