//! Names outside our domains: asked of the configured upstream resolvers (hickory-resolver),
//! whose answer and response code are relayed. Without recursors such names are refused.

use std::net::SocketAddr;
use std::time::Duration;

use hickory_proto::op::ResponseCode;
use hickory_proto::rr::{Name, Record, RecordType};
use hickory_resolver::config::{ConnectionConfig, NameServerConfig, ResolverConfig, ResolverOpts};
use hickory_resolver::net::runtime::TokioRuntimeProvider;
use hickory_resolver::net::{DnsError, NetError};
use hickory_resolver::TokioResolver;

/// What an upstream said.
pub struct Forwarded {
    pub rcode: ResponseCode,
    pub answers: Vec<Record>,
    pub authorities: Vec<Record>,
    pub additionals: Vec<Record>,
}

/// The upstream resolvers, tried in order.
pub struct Recursor {
    resolver: TokioResolver,
}

impl Recursor {
    /// `None` when no recursor is configured.
    pub fn new(upstreams: &[SocketAddr], timeout: Duration) -> Result<Option<Recursor>, NetError> {
        if upstreams.is_empty() {
            return Ok(None);
        }
        let servers = upstreams
            .iter()
            .map(|a| {
                let conn = |mut c: ConnectionConfig| {
                    c.port = a.port();
                    c
                };
                NameServerConfig::new(
                    a.ip(),
                    true,
                    vec![conn(ConnectionConfig::udp()), conn(ConnectionConfig::tcp())],
                )
            })
            .collect();
        let mut opts = ResolverOpts::default();
        opts.timeout = timeout;
        opts.attempts = 1;
        opts.edns0 = true;
        // Upstream TTLs are honoured by the cache; nothing is kept past them.
        opts.cache_size = 4096;
        let resolver = TokioResolver::builder_with_config(
            ResolverConfig::from_name_servers(servers),
            TokioRuntimeProvider::default(),
        )
        .with_options(opts)
        .build()?;
        Ok(Some(Recursor { resolver }))
    }

    /// Asks the upstreams; `Err` when none answered.
    pub async fn forward(&self, name: Name, qtype: RecordType) -> Result<Forwarded, NetError> {
        let mut fqdn = name;
        fqdn.set_fqdn(true);
        match self.resolver.lookup(fqdn, qtype).await {
            Ok(lookup) => Ok(Forwarded {
                rcode: ResponseCode::NoError,
                answers: lookup.answers().to_vec(),
                authorities: lookup.authorities().to_vec(),
                additionals: lookup.additionals().to_vec(),
            }),
            Err(NetError::Dns(DnsError::NoRecordsFound(nr))) => Ok(Forwarded {
                rcode: nr.response_code,
                answers: Vec::new(),
                authorities: nr
                    .soa
                    .map(|soa| vec![soa.into_record_of_rdata()])
                    .unwrap_or_default(),
                additionals: Vec::new(),
            }),
            Err(NetError::Dns(DnsError::ResponseCode(code))) => Ok(Forwarded {
                rcode: code,
                answers: Vec::new(),
                authorities: Vec::new(),
                additionals: Vec::new(),
            }),
            Err(e) => Err(e),
        }
    }
}
