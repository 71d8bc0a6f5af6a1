//! The mesh certificate authority: pure certificate logic, no sockets and no files.
//!
//! - [`create_ca`] makes a self-signed ECDSA P-256 root whose URI SAN `spiffe://<trust-domain>`
//!   names the trust domain; [`load_ca`] reads one back and checks that its key matches.
//! - [`issue_server_cert`] signs a server leaf with a new key; [`sign_node_csr`] signs a node
//!   leaf for the key of an agent's CSR, ignoring every name the CSR asks for.
//! - Leaves carry one `spiffe://<trust-domain>/{server,node,svc}/<name>` URI SAN ([`SpiffeId`],
//!   read back with [`spiffe_id_of`]) beside DNS SANs that rustls' stock verifier can match, and
//!   both the serverAuth and clientAuth EKUs, since every QUIC connection is mutual TLS.

use std::collections::hash_map::RandomState;
use std::hash::{BuildHasher, Hash, Hasher};
use std::net::{IpAddr, Ipv4Addr};
use std::time::{SystemTime, UNIX_EPOCH};

use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa,
    Issuer, KeyPair, KeyUsagePurpose, PublicKeyData, SanType, SerialNumber, SubjectPublicKeyInfo,
    PKCS_ECDSA_P256_SHA256,
};
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::CertificateDer;
use time::{Duration, OffsetDateTime};
use x509_parser::certificate::X509Certificate;
use x509_parser::certification_request::X509CertificationRequest;
use x509_parser::extensions::GeneralName;
use x509_parser::prelude::FromDer;

/// The trust domain of a mesh whose operator chose none.
pub const DEFAULT_TRUST_DOMAIN: &str = "mesh.local";

/// How far back a new certificate's validity starts, to absorb clock skew between hosts.
const BACKDATE: Duration = Duration::minutes(5);

/// What went wrong while making, reading or checking a certificate.
#[derive(Debug, thiserror::Error)]
pub enum CaError {
    #[error("invalid trust domain {0:?}: use 1..=255 lowercase letters, digits, '.', '-' or '_'")]
    InvalidTrustDomain(String),
    #[error("invalid node name {name:?}: {reason}")]
    InvalidNodeName { name: String, reason: &'static str },
    #[error("invalid {0}")]
    InvalidServiceName(#[from] crate::name::NameError),
    #[error("invalid datacenter {0:?}: use 1..=63 lowercase letters, digits, '-' or '_'")]
    InvalidDatacenter(String),
    #[error("invalid validity: {0} days (must be at least 1)")]
    InvalidDays(u32),
    #[error("invalid leaf lifetime {0:?}: must be at least 1 minute")]
    InvalidTtl(std::time::Duration),
    #[error("generating {what}: {source}")]
    Generate {
        what: &'static str,
        #[source]
        source: rcgen::Error,
    },
    #[error("no CERTIFICATE block in the PEM text")]
    NoCertificate,
    #[error("invalid PEM: {0}")]
    Pem(String),
    #[error("certificate cannot be parsed: {0}")]
    ParseCertificate(String),
    #[error("CA key cannot be read: {0}")]
    ParseKey(String),
    #[error("CA key does not match the CA certificate")]
    KeyMismatch,
    #[error("certificate is not a CA (no BasicConstraints CA:TRUE)")]
    NotCa,
    #[error("CA certificate expired at {0}")]
    CaExpired(OffsetDateTime),
    #[error("CA certificate has no spiffe:// URI SAN")]
    CaNoSpiffeSan,
    #[error("certificate has no spiffe:// URI SAN")]
    NoSpiffeSan,
    #[error("certificate has {0} spiffe:// URI SANs, expected one")]
    ManySpiffeSans(usize),
    #[error("invalid SPIFFE ID {uri:?}: {reason}")]
    InvalidSpiffeId { uri: String, reason: &'static str },
    #[error("CSR cannot be parsed: {0}")]
    ParseCsr(String),
    #[error("CSR signature invalid")]
    CsrSignature,
    #[error("CSR public key is not supported: {0}")]
    CsrKey(String),
    #[error("certificate was not issued by this CA")]
    NotIssuedByCa,
    #[error("certificate is not valid now (valid from {not_before} to {not_after})")]
    NotValidNow {
        not_before: OffsetDateTime,
        not_after: OffsetDateTime,
    },
    #[error("certificate names trust domain {found:?}, the CA {expected:?}")]
    WrongTrustDomain { expected: String, found: String },
}

/// A CA certificate and its private key, both PEM, and the trust domain it names.
#[derive(Clone, Debug)]
pub struct CaBundle {
    pub cert_pem: String,
    pub key_pem: String,
    pub trust_domain: String,
}

/// A leaf certificate and its new private key, both PEM.
#[derive(Clone, Debug)]
pub struct Issued {
    pub cert_pem: String,
    pub key_pem: String,
}

/// Who a leaf certificate speaks for, below the trust domain.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Identity {
    /// `/server/<node>`: a server (Raft member).
    Server(String),
    /// `/node/<node>`: an enrolled agent.
    Node(String),
    /// `/svc/<service>`: a service's data-plane identity.
    Service(String),
}

/// A parsed `spiffe://<trust-domain>/<kind>/<name>` URI.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SpiffeId {
    pub trust_domain: String,
    pub identity: Identity,
}

impl SpiffeId {
    /// Parses one of our SPIFFE IDs: `server/<node>`, `node/<node>` or `svc/<service>`.
    pub fn parse(uri: &str) -> Result<SpiffeId, CaError> {
        let bad = |reason| CaError::InvalidSpiffeId {
            uri: uri.to_string(),
            reason,
        };
        let rest = strip_scheme(uri).ok_or_else(|| bad("scheme is not spiffe://"))?;
        let (trust_domain, path) = rest
            .split_once('/')
            .ok_or_else(|| bad("no path after the trust domain"))?;
        if validate_trust_domain(trust_domain).is_err() {
            return Err(bad("invalid trust domain"));
        }
        let (kind, name) = path
            .split_once('/')
            .ok_or_else(|| bad("path is not <kind>/<name>"))?;
        if validate_node_name(name).is_err() {
            return Err(bad("invalid name"));
        }
        let identity = match kind {
            "server" => Identity::Server(name.to_string()),
            "node" => Identity::Node(name.to_string()),
            "svc" => Identity::Service(name.to_string()),
            _ => return Err(bad("kind is not server, node or svc")),
        };
        Ok(SpiffeId {
            trust_domain: trust_domain.to_string(),
            identity,
        })
    }

    /// The URI form, `spiffe://<trust-domain>/<kind>/<name>`.
    pub fn uri(&self) -> String {
        let (kind, name) = match &self.identity {
            Identity::Server(n) => ("server", n),
            Identity::Node(n) => ("node", n),
            Identity::Service(n) => ("svc", n),
        };
        format!("spiffe://{}/{kind}/{name}", self.trust_domain)
    }
}

impl std::fmt::Display for SpiffeId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.uri())
    }
}

/// The DNS name clients verify the servers of datacenter `datacenter` by.
pub fn server_name(datacenter: &str) -> String {
    format!("server.{datacenter}.mesh")
}

/// Makes a new self-signed root for `trust_domain`, valid for `days` days.
pub fn create_ca(trust_domain: &str, days: u32) -> Result<CaBundle, CaError> {
    validate_trust_domain(trust_domain)?;
    let key = new_key()?;
    let mut params = base_params(lifetime_days(days)?, None);
    let mut dn = DistinguishedName::new();
    dn.push(DnType::CommonName, format!("meshd CA {trust_domain}"));
    dn.push(DnType::OrganizationName, "meshd");
    params.distinguished_name = dn;
    params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
    params.subject_alt_names = vec![uri_san(&format!("spiffe://{trust_domain}"))?];
    params.serial_number = Some(new_serial(key.der_bytes()));
    let cert = params
        .self_signed(&key)
        .map_err(|source| CaError::Generate {
            what: "CA certificate",
            source,
        })?;
    Ok(CaBundle {
        cert_pem: cert.pem(),
        key_pem: key.serialize_pem(),
        trust_domain: trust_domain.to_string(),
    })
}

/// Reads a CA back: the certificate must be a CA, unexpired, name a trust domain, and match
/// the key.
pub fn load_ca(cert_pem: &str, key_pem: &str) -> Result<CaBundle, CaError> {
    let der = first_cert(cert_pem)?;
    let cert = parse_cert(&der)?;
    check_is_ca(&cert)?;
    let not_after = cert.validity().not_after.to_datetime();
    if not_after <= OffsetDateTime::now_utc() {
        return Err(CaError::CaExpired(not_after));
    }
    let trust_domain = ca_trust_domain(&cert)?;
    let key = KeyPair::from_pem(key_pem).map_err(|e| CaError::ParseKey(e.to_string()))?;
    if key.subject_public_key_info() != cert.tbs_certificate.subject_pki.raw {
        return Err(CaError::KeyMismatch);
    }
    Ok(CaBundle {
        cert_pem: cert_pem.to_string(),
        key_pem: key_pem.to_string(),
        trust_domain,
    })
}

/// The trust domain a CA certificate names in its `spiffe://<trust-domain>` URI SAN.
pub fn trust_domain_of(cert_pem: &str) -> Result<String, CaError> {
    let der = first_cert(cert_pem)?;
    let cert = parse_cert(&der)?;
    check_is_ca(&cert)?;
    ca_trust_domain(&cert)
}

/// Signs a server certificate for `node` in `datacenter` with a new key.
pub fn issue_server_cert(
    ca: &CaBundle,
    node: &str,
    datacenter: &str,
    days: u32,
) -> Result<Issued, CaError> {
    validate_node_name(node)?;
    validate_datacenter(datacenter)?;
    let key = new_key()?;
    let id = SpiffeId {
        trust_domain: ca.trust_domain.clone(),
        identity: Identity::Server(node.to_string()),
    };
    let sans = vec![
        uri_san(&id.uri())?,
        dns_san(&server_name(datacenter))?,
        dns_san(&format!("{node}.{}", server_name(datacenter)))?,
        dns_san(&node_host_name(node, datacenter))?,
        dns_san("localhost")?,
        SanType::IpAddress(IpAddr::V4(Ipv4Addr::LOCALHOST)),
    ];
    let cert_pem = sign_leaf(ca, &key, node, sans, lifetime_days(days)?)?;
    Ok(Issued {
        cert_pem,
        key_pem: key.serialize_pem(),
    })
}

/// Makes a new key and a CSR for it naming `node` (the names in it are advisory: the CA
/// decides them). Returns `(csr_pem, key_pem)`.
pub fn create_csr(node: &str) -> Result<(String, String), CaError> {
    validate_node_name(node)?;
    let key = new_key()?;
    let mut params = CertificateParams::default();
    let mut dn = DistinguishedName::new();
    dn.push(DnType::CommonName, node);
    params.distinguished_name = dn;
    let csr = params
        .serialize_request(&key)
        .map_err(|source| CaError::Generate {
            what: "CSR",
            source,
        })?;
    let csr_pem = csr.pem().map_err(|source| CaError::Generate {
        what: "CSR PEM",
        source,
    })?;
    Ok((csr_pem, key.serialize_pem()))
}

/// Signs a node certificate for the key of `csr_pem` after checking the CSR's signature.
/// The subject and SANs the CSR asks for are ignored: the certificate names `node` in
/// `datacenter` only.
pub fn sign_node_csr(
    ca: &CaBundle,
    csr_pem: &str,
    node: &str,
    datacenter: &str,
    days: u32,
) -> Result<String, CaError> {
    validate_node_name(node)?;
    validate_datacenter(datacenter)?;
    let public_key = csr_public_key(csr_pem)?;
    let id = SpiffeId {
        trust_domain: ca.trust_domain.clone(),
        identity: Identity::Node(node.to_string()),
    };
    let sans = vec![
        uri_san(&id.uri())?,
        dns_san(&node_host_name(node, datacenter))?,
    ];
    sign_leaf(ca, &public_key, node, sans, lifetime_days(days)?)
}

/// The DNS name a host's certificate (server or node) carries and data-plane tunnels to that
/// host verify: `<node>.node.<datacenter>.mesh`.
pub fn node_host_name(node: &str, datacenter: &str) -> String {
    format!("{node}.node.{datacenter}.mesh")
}

/// The shortest leaf lifetime the CA issues (tests use minutes; production the default 72 h).
pub const MIN_LEAF_TTL: std::time::Duration = std::time::Duration::from_secs(60);

/// Signs a service leaf (`spiffe://<td>/svc/<service>`) for the key of `csr_pem`, valid for
/// `ttl` (at least [`MIN_LEAF_TTL`], capped by the CA's own expiry). Whether the asking node
/// may have it (the service is registered on it) is the caller's check.
pub fn sign_service_csr(
    ca: &CaBundle,
    csr_pem: &str,
    service: &str,
    ttl: std::time::Duration,
) -> Result<String, CaError> {
    crate::name::validate_service_name(service)?;
    if ttl < MIN_LEAF_TTL {
        return Err(CaError::InvalidTtl(ttl));
    }
    let public_key = csr_public_key(csr_pem)?;
    let id = SpiffeId {
        trust_domain: ca.trust_domain.clone(),
        identity: Identity::Service(service.to_string()),
    };
    let lifetime = Duration::try_from(ttl).map_err(|_| CaError::InvalidTtl(ttl))?;
    sign_leaf(
        ca,
        &public_key,
        service,
        vec![uri_san(&id.uri())?],
        lifetime,
    )
}

/// When the first certificate of `pem` stops being valid.
pub fn not_after(pem: &str) -> Result<SystemTime, CaError> {
    let der = first_cert(pem)?;
    let cert = parse_cert(&der)?;
    let t = cert.validity().not_after.to_datetime();
    let secs = u64::try_from(t.unix_timestamp()).unwrap_or(0);
    Ok(UNIX_EPOCH + std::time::Duration::from_secs(secs))
}

/// What the API shows of a certificate: its serial (colon-separated hex, as Consul) and
/// validity bounds (RFC 3339).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CertSummary {
    pub serial: String,
    pub not_before: String,
    pub not_after: String,
}

/// The [`CertSummary`] of the first certificate of `pem`.
pub fn cert_summary(pem: &str) -> Result<CertSummary, CaError> {
    let der = first_cert(pem)?;
    let cert = parse_cert(&der)?;
    let serial = cert
        .raw_serial()
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect::<Vec<_>>()
        .join(":");
    let fmt = |t: OffsetDateTime| {
        t.format(&time::format_description::well_known::Rfc3339)
            .unwrap_or_default()
    };
    Ok(CertSummary {
        serial,
        not_before: fmt(cert.validity().not_before.to_datetime()),
        not_after: fmt(cert.validity().not_after.to_datetime()),
    })
}

fn lifetime_days(days: u32) -> Result<Duration, CaError> {
    if days == 0 {
        return Err(CaError::InvalidDays(days));
    }
    Ok(Duration::days(i64::from(days)))
}

/// The SPIFFE ID in the (single) `spiffe://` URI SAN of a leaf certificate.
pub fn spiffe_id_of(cert_der: &[u8]) -> Result<SpiffeId, CaError> {
    let cert = parse_cert(cert_der)?;
    let uris = spiffe_uris(&cert)?;
    match uris.as_slice() {
        [] => Err(CaError::NoSpiffeSan),
        [uri] => SpiffeId::parse(uri),
        many => Err(CaError::ManySpiffeSans(many.len())),
    }
}

/// Checks that the first certificate of `leaf_pem` was signed by the CA `ca_cert_pem`, is valid
/// now, and names a SPIFFE ID in the CA's trust domain; returns that ID. (Offline checks of
/// issued files; connections are verified by rustls.)
pub fn verify_leaf(ca_cert_pem: &str, leaf_pem: &str) -> Result<SpiffeId, CaError> {
    let ca_der = first_cert(ca_cert_pem)?;
    let ca_cert = parse_cert(&ca_der)?;
    check_is_ca(&ca_cert)?;
    let trust_domain = ca_trust_domain(&ca_cert)?;
    let leaf_der = first_cert(leaf_pem)?;
    let leaf = parse_cert(&leaf_der)?;
    if leaf.issuer().as_raw() != ca_cert.subject().as_raw()
        || leaf.verify_signature(Some(ca_cert.public_key())).is_err()
    {
        return Err(CaError::NotIssuedByCa);
    }
    if !leaf.validity().is_valid() {
        return Err(CaError::NotValidNow {
            not_before: leaf.validity().not_before.to_datetime(),
            not_after: leaf.validity().not_after.to_datetime(),
        });
    }
    let id = spiffe_id_of(&leaf_der)?;
    if id.trust_domain != trust_domain {
        return Err(CaError::WrongTrustDomain {
            expected: trust_domain,
            found: id.trust_domain,
        });
    }
    Ok(id)
}

/// A node name: 1..=63 characters of `[A-Za-z0-9-_.]`, not starting with `-`. Certificates
/// still parse service names with it; new ones are checked with the narrower
/// [`crate::name::validate_service_name`].
pub fn validate_node_name(name: &str) -> Result<(), CaError> {
    let bad = |reason| {
        Err(CaError::InvalidNodeName {
            name: name.to_string(),
            reason,
        })
    };
    if name.is_empty() {
        return bad("empty");
    }
    if name.len() > 63 {
        return bad("longer than 63 characters");
    }
    if name.starts_with('-') {
        return bad("starts with '-'");
    }
    if !name
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'))
    {
        return bad("only letters, digits, '-', '_' and '.' are allowed");
    }
    Ok(())
}

/// Every CERTIFICATE block of a PEM text, as DER, in order. Other blocks are skipped; no
/// certificate at all is an error.
pub fn pem_to_ders(pem: &str) -> Result<Vec<Vec<u8>>, CaError> {
    let ders = CertificateDer::pem_slice_iter(pem.as_bytes())
        .map(|c| c.map(|c| c.to_vec()))
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| CaError::Pem(e.to_string()))?;
    if ders.is_empty() {
        return Err(CaError::NoCertificate);
    }
    Ok(ders)
}

fn validate_trust_domain(td: &str) -> Result<(), CaError> {
    let ok = !td.is_empty()
        && td.len() <= 255
        && !td.starts_with(['.', '-'])
        && !td.ends_with('.')
        && !td.contains("..")
        && td.bytes().all(|b| {
            b.is_ascii_lowercase() || b.is_ascii_digit() || matches!(b, b'.' | b'-' | b'_')
        });
    if ok {
        Ok(())
    } else {
        Err(CaError::InvalidTrustDomain(td.to_string()))
    }
}

fn validate_datacenter(dc: &str) -> Result<(), CaError> {
    let ok = !dc.is_empty()
        && dc.len() <= 63
        && !dc.starts_with('-')
        && dc
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || matches!(b, b'-' | b'_'));
    if ok {
        Ok(())
    } else {
        Err(CaError::InvalidDatacenter(dc.to_string()))
    }
}

fn strip_scheme(uri: &str) -> Option<&str> {
    let scheme = uri.get(..9)?;
    scheme.eq_ignore_ascii_case("spiffe://").then(|| &uri[9..])
}

fn new_key() -> Result<KeyPair, CaError> {
    KeyPair::generate_for(&PKCS_ECDSA_P256_SHA256).map_err(|source| CaError::Generate {
        what: "ECDSA P-256 key",
        source,
    })
}

/// Parameters valid from a little before now for `lifetime`, but never past `cap`.
fn base_params(lifetime: Duration, cap: Option<OffsetDateTime>) -> CertificateParams {
    let now = OffsetDateTime::now_utc();
    let mut params = CertificateParams::default();
    params.not_before = now - BACKDATE;
    let mut not_after = now + lifetime;
    if let Some(cap) = cap {
        not_after = not_after.min(cap);
    }
    params.not_after = not_after;
    params
}

/// A 20-byte positive serial: the time in nanoseconds and a per-process random hash of the
/// key, so a renewal for the same key does not repeat a serial.
fn new_serial(public_key: &[u8]) -> SerialNumber {
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_nanos())
        .unwrap_or_default();
    let mut hasher = RandomState::new().build_hasher();
    public_key.hash(&mut hasher);
    nanos.hash(&mut hasher);
    let mut bytes = Vec::with_capacity(20);
    bytes.extend_from_slice(&hasher.finish().to_be_bytes());
    bytes.extend_from_slice(&nanos.to_be_bytes()[4..]);
    bytes[0] &= 0x7f;
    bytes[0] |= 0x01 << 6; // never a leading zero byte
    SerialNumber::from_slice(&bytes)
}

fn uri_san(uri: &str) -> Result<SanType, CaError> {
    let value = uri.try_into().map_err(|source| CaError::Generate {
        what: "URI SAN",
        source,
    })?;
    Ok(SanType::URI(value))
}

fn dns_san(name: &str) -> Result<SanType, CaError> {
    let value = name
        .to_ascii_lowercase()
        .try_into()
        .map_err(|source| CaError::Generate {
            what: "DNS SAN",
            source,
        })?;
    Ok(SanType::DnsName(value))
}

/// Signs a non-CA leaf for `public_key` with `sans`, CN `common_name`.
fn sign_leaf(
    ca: &CaBundle,
    public_key: &impl PublicKeyData,
    common_name: &str,
    sans: Vec<SanType>,
    lifetime: Duration,
) -> Result<String, CaError> {
    let ca_der = first_cert(&ca.cert_pem)?;
    let ca_cert = parse_cert(&ca_der)?;
    let cap = ca_cert.validity().not_after.to_datetime();
    let ca_key = KeyPair::from_pem(&ca.key_pem).map_err(|e| CaError::ParseKey(e.to_string()))?;
    if ca_key.subject_public_key_info() != ca_cert.tbs_certificate.subject_pki.raw {
        return Err(CaError::KeyMismatch);
    }
    let issuer = Issuer::from_ca_cert_der(&CertificateDer::from(ca_der.as_slice()), &ca_key)
        .map_err(|e| CaError::ParseCertificate(e.to_string()))?;

    let mut params = base_params(lifetime, Some(cap));
    let mut dn = DistinguishedName::new();
    dn.push(DnType::CommonName, common_name);
    params.distinguished_name = dn;
    params.is_ca = IsCa::ExplicitNoCa;
    params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
    params.extended_key_usages = vec![
        ExtendedKeyUsagePurpose::ServerAuth,
        ExtendedKeyUsagePurpose::ClientAuth,
    ];
    params.subject_alt_names = sans;
    params.use_authority_key_identifier_extension = true;
    params.serial_number = Some(new_serial(public_key.der_bytes()));
    let cert = params
        .signed_by(public_key, &issuer)
        .map_err(|source| CaError::Generate {
            what: "leaf certificate",
            source,
        })?;
    Ok(cert.pem())
}

/// The public key of a CSR whose self-signature verifies; everything else in it is dropped.
fn csr_public_key(csr_pem: &str) -> Result<SubjectPublicKeyInfo, CaError> {
    use rustls_pki_types::CertificateSigningRequestDer;
    let der = CertificateSigningRequestDer::from_pem_slice(csr_pem.as_bytes())
        .map_err(|e| CaError::ParseCsr(e.to_string()))?;
    let (_, csr) = X509CertificationRequest::from_der(der.as_ref())
        .map_err(|e| CaError::ParseCsr(e.to_string()))?;
    csr.verify_signature().map_err(|_| CaError::CsrSignature)?;
    SubjectPublicKeyInfo::from_der(csr.certification_request_info.subject_pki.raw)
        .map_err(|e| CaError::CsrKey(e.to_string()))
}

fn first_cert(pem: &str) -> Result<Vec<u8>, CaError> {
    let mut ders = pem_to_ders(pem)?;
    Ok(ders.swap_remove(0))
}

fn parse_cert(der: &[u8]) -> Result<X509Certificate<'_>, CaError> {
    let (rest, cert) =
        X509Certificate::from_der(der).map_err(|e| CaError::ParseCertificate(e.to_string()))?;
    if !rest.is_empty() {
        return Err(CaError::ParseCertificate(
            "trailing bytes after the certificate".to_string(),
        ));
    }
    Ok(cert)
}

fn check_is_ca(cert: &X509Certificate<'_>) -> Result<(), CaError> {
    match cert.basic_constraints() {
        Ok(Some(bc)) if bc.value.ca => Ok(()),
        Ok(_) => Err(CaError::NotCa),
        Err(e) => Err(CaError::ParseCertificate(e.to_string())),
    }
}

/// Every URI SAN of `cert` with the spiffe scheme.
fn spiffe_uris<'a>(cert: &'a X509Certificate<'_>) -> Result<Vec<&'a str>, CaError> {
    let sans = cert
        .subject_alternative_name()
        .map_err(|e| CaError::ParseCertificate(e.to_string()))?;
    let Some(sans) = sans else {
        return Ok(Vec::new());
    };
    Ok(sans
        .value
        .general_names
        .iter()
        .filter_map(|name| match name {
            GeneralName::URI(uri) if strip_scheme(uri).is_some() => Some(*uri),
            _ => None,
        })
        .collect())
}

fn ca_trust_domain(cert: &X509Certificate<'_>) -> Result<String, CaError> {
    let uris = spiffe_uris(cert)?;
    let uri = match uris.as_slice() {
        [] => return Err(CaError::CaNoSpiffeSan),
        [uri] => *uri,
        many => return Err(CaError::ManySpiffeSans(many.len())),
    };
    let td = strip_scheme(uri)
        .map(|rest| rest.trim_end_matches('/'))
        .unwrap_or_default();
    validate_trust_domain(td)?;
    Ok(td.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn leaf(pem: &str) -> Vec<u8> {
        first_cert(pem).expect("one certificate")
    }

    fn has_dns(der: &[u8], name: &str) -> bool {
        let cert = parse_cert(der).expect("parse");
        let sans = cert
            .subject_alternative_name()
            .expect("sans")
            .expect("some");
        sans.value
            .general_names
            .iter()
            .any(|n| matches!(n, GeneralName::DNSName(d) if *d == name))
    }

    fn signed_by_ca(leaf_der: &[u8], ca: &CaBundle) -> bool {
        let ca_der = leaf(&ca.cert_pem);
        let ca_cert = parse_cert(&ca_der).expect("ca");
        let cert = parse_cert(leaf_der).expect("leaf");
        cert.verify_signature(Some(ca_cert.public_key())).is_ok()
    }

    #[test]
    fn ca_round_trip() {
        let ca = create_ca("example.org", 30).expect("create");
        assert_eq!(ca.trust_domain, "example.org");
        let loaded = load_ca(&ca.cert_pem, &ca.key_pem).expect("load");
        assert_eq!(loaded.trust_domain, "example.org");
        assert_eq!(trust_domain_of(&ca.cert_pem).expect("td"), "example.org");
        let der = leaf(&ca.cert_pem);
        let cert = parse_cert(&der).expect("parse");
        assert!(check_is_ca(&cert).is_ok());
        let ku = cert.key_usage().expect("ku").expect("some").value;
        assert!(ku.key_cert_sign() && ku.crl_sign());
        assert_eq!(
            cert.subject().to_string(),
            "CN=meshd CA example.org, O=meshd"
        );
        assert!(cert.verify_signature(None).is_ok(), "self-signed");
    }

    #[test]
    fn service_leaves_name_the_service_only_and_live_as_long_as_asked() {
        let ca = create_ca("example.org", 30).expect("create");
        let (csr, _key) = create_csr("web").expect("csr");
        let ttl = std::time::Duration::from_secs(600);
        let pem = sign_service_csr(&ca, &csr, "api", ttl).expect("sign");
        let der = leaf(&pem);
        assert!(signed_by_ca(&der, &ca));
        let id = spiffe_id_of(&der).expect("id");
        assert_eq!(id.uri(), "spiffe://example.org/svc/api");
        let left = not_after(&pem)
            .expect("not after")
            .duration_since(SystemTime::now())
            .expect("in the future");
        assert!(
            left <= ttl && left > ttl - std::time::Duration::from_secs(5),
            "{left:?}"
        );
        assert!(matches!(
            sign_service_csr(&ca, &csr, "api", std::time::Duration::from_secs(59)),
            Err(CaError::InvalidTtl(_))
        ));
        assert!(sign_service_csr(&ca, "not a csr", "api", ttl).is_err());
        let summary = cert_summary(&pem).expect("summary");
        assert!(
            summary.serial.contains(':') && summary.not_after.ends_with('Z'),
            "{summary:?}"
        );
        assert!(sign_service_csr(&ca, &csr, "bad name!", ttl).is_err());
        // A name a node may have but a service may not: no certificate.
        let e = sign_service_csr(&ca, &csr, "web.v2", ttl).expect_err("a dot");
        assert!(matches!(e, CaError::InvalidServiceName(_)), "{e:?}");
        assert!(e.to_string().contains("has '.' at position 4"), "{e}");
    }

    #[test]
    fn bad_trust_domains_rejected() {
        for td in ["", "Mesh.local", "a b", "-x", "x.", "a..b", "spiffe://x"] {
            assert!(
                matches!(create_ca(td, 1), Err(CaError::InvalidTrustDomain(_))),
                "{td:?} accepted"
            );
        }
        assert!(matches!(create_ca("ok", 0), Err(CaError::InvalidDays(0))));
    }

    #[test]
    fn key_mismatch_rejected() {
        let a = create_ca(DEFAULT_TRUST_DOMAIN, 1).expect("a");
        let b = create_ca(DEFAULT_TRUST_DOMAIN, 1).expect("b");
        assert!(matches!(
            load_ca(&a.cert_pem, &b.key_pem),
            Err(CaError::KeyMismatch)
        ));
        let forged = CaBundle {
            key_pem: b.key_pem.clone(),
            ..a.clone()
        };
        assert!(matches!(
            issue_server_cert(&forged, "s1", "dc1", 1),
            Err(CaError::KeyMismatch)
        ));
        assert!(matches!(
            load_ca(&a.cert_pem, "not a key"),
            Err(CaError::ParseKey(_))
        ));
    }

    #[test]
    fn leaf_is_not_a_ca_and_has_no_trust_domain() {
        let ca = create_ca(DEFAULT_TRUST_DOMAIN, 1).expect("ca");
        let s = issue_server_cert(&ca, "s1", "dc1", 1).expect("issue");
        assert!(matches!(trust_domain_of(&s.cert_pem), Err(CaError::NotCa)));
        assert!(matches!(
            load_ca(&s.cert_pem, &s.key_pem),
            Err(CaError::NotCa)
        ));
        assert!(matches!(trust_domain_of(""), Err(CaError::NoCertificate)));
    }

    #[test]
    fn server_cert_round_trip() {
        let ca = create_ca("corp.example", 10).expect("ca");
        let s = issue_server_cert(&ca, "s1", "dc2", 365).expect("issue");
        let der = leaf(&s.cert_pem);
        assert!(signed_by_ca(&der, &ca));
        let other = create_ca("corp.example", 10).expect("other");
        assert!(!signed_by_ca(&der, &other));
        assert_eq!(
            spiffe_id_of(&der).expect("id"),
            SpiffeId {
                trust_domain: "corp.example".into(),
                identity: Identity::Server("s1".into())
            }
        );
        for name in ["server.dc2.mesh", "s1.server.dc2.mesh", "localhost"] {
            assert!(has_dns(&der, name), "missing {name}");
        }
        let cert = parse_cert(&der).expect("parse");
        let eku = cert.extended_key_usage().expect("eku").expect("some").value;
        assert!(eku.server_auth && eku.client_auth);
        assert!(!cert.is_ca());
        // Capped at the CA's own expiry.
        let ca_cert_der = leaf(&ca.cert_pem);
        let ca_cert = parse_cert(&ca_cert_der).expect("ca");
        assert!(cert.validity().not_after <= ca_cert.validity().not_after);
        // The key belongs to the certificate.
        let key = KeyPair::from_pem(&s.key_pem).expect("key");
        assert_eq!(
            key.subject_public_key_info(),
            cert.tbs_certificate.subject_pki.raw
        );
    }

    #[test]
    fn node_csr_round_trip_ignores_requested_names() {
        let ca = create_ca(DEFAULT_TRUST_DOMAIN, 10).expect("ca");
        // A CSR asking for a server identity and a foreign DNS name.
        let key = new_key().expect("key");
        let mut params = CertificateParams::new(vec!["evil.example".to_string()]).expect("p");
        params
            .subject_alt_names
            .push(uri_san("spiffe://mesh.local/server/s1").expect("uri"));
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        let csr = params
            .serialize_request(&key)
            .expect("csr")
            .pem()
            .expect("pem");
        let cert_pem = sign_node_csr(&ca, &csr, "web-1", "dc1", 3).expect("sign");
        let der = leaf(&cert_pem);
        assert!(signed_by_ca(&der, &ca));
        assert_eq!(
            spiffe_id_of(&der).expect("id").identity,
            Identity::Node("web-1".into())
        );
        assert!(has_dns(&der, "web-1.node.dc1.mesh"));
        assert!(!has_dns(&der, "evil.example"));
        let cert = parse_cert(&der).expect("parse");
        assert!(!cert.is_ca());
        assert_eq!(
            key.subject_public_key_info(),
            cert.tbs_certificate.subject_pki.raw
        );

        let (csr, key_pem) = create_csr("web-2").expect("csr");
        let cert_pem = sign_node_csr(&ca, &csr, "web-2", "dc1", 3).expect("sign");
        let cert_der = leaf(&cert_pem);
        let cert = parse_cert(&cert_der).expect("parse");
        let key = KeyPair::from_pem(&key_pem).expect("key");
        assert_eq!(
            key.subject_public_key_info(),
            cert.tbs_certificate.subject_pki.raw
        );
    }

    #[test]
    fn tampered_csr_rejected() {
        let ca = create_ca(DEFAULT_TRUST_DOMAIN, 10).expect("ca");
        let (csr_pem, _) = create_csr("web-1").expect("csr");
        let der =
            rustls_pki_types::CertificateSigningRequestDer::from_pem_slice(csr_pem.as_bytes())
                .expect("der");
        let mut bytes = der.as_ref().to_vec();
        // Flip a bit inside the subject CN "web-1", well before the signature.
        let pos = bytes
            .windows(5)
            .position(|w| w == b"web-1")
            .expect("CN in CSR");
        bytes[pos] ^= 0x01;
        let pem = format!(
            "-----BEGIN CERTIFICATE REQUEST-----\n{}\n-----END CERTIFICATE REQUEST-----\n",
            base64::Engine::encode(&base64::engine::general_purpose::STANDARD, &bytes)
        );
        assert!(matches!(
            sign_node_csr(&ca, &pem, "web-1", "dc1", 1),
            Err(CaError::CsrSignature)
        ));
        assert!(matches!(
            sign_node_csr(&ca, "garbage", "web-1", "dc1", 1),
            Err(CaError::ParseCsr(_))
        ));
    }

    #[test]
    fn identity_parsing() {
        let id = SpiffeId::parse("spiffe://mesh.local/svc/web").expect("svc");
        assert_eq!(id.identity, Identity::Service("web".into()));
        assert_eq!(id.uri(), "spiffe://mesh.local/svc/web");
        for (uri, identity) in [
            ("spiffe://td/server/s1", Identity::Server("s1".into())),
            ("spiffe://td/node/n-1.a", Identity::Node("n-1.a".into())),
        ] {
            let id = SpiffeId::parse(uri).expect(uri);
            assert_eq!(id.identity, identity);
            assert_eq!(id.trust_domain, "td");
            assert_eq!(id.uri(), uri);
        }
        for bad in [
            "",
            "https://td/node/a",
            "spiffe://td",
            "spiffe://td/",
            "spiffe://td/node",
            "spiffe://td/node/",
            "spiffe://td/node/a/b",
            "spiffe://td/host/a",
            "spiffe://TD/node/a",
            "spiffe:///node/a",
        ] {
            assert!(SpiffeId::parse(bad).is_err(), "{bad:?} accepted");
        }
    }

    #[test]
    fn node_name_validation() {
        for ok in ["a", "node-1", "web_2.dc", "A9", &"x".repeat(63)] {
            assert!(validate_node_name(ok).is_ok(), "{ok:?} rejected");
        }
        for bad in ["", "-a", "a b", "a/b", "é", &"x".repeat(64)] {
            assert!(validate_node_name(bad).is_err(), "{bad:?} accepted");
        }
        let ca = create_ca(DEFAULT_TRUST_DOMAIN, 1).expect("ca");
        assert!(issue_server_cert(&ca, "a/b", "dc1", 1).is_err());
        assert!(issue_server_cert(&ca, "s1", "DC.1", 1).is_err());
    }

    #[test]
    fn pem_to_ders_reads_every_certificate() {
        let a = create_ca("a", 1).expect("a");
        let b = create_ca("b", 1).expect("b");
        let both = format!("{}{}{}", a.cert_pem, a.key_pem, b.cert_pem);
        let ders = pem_to_ders(&both).expect("ders");
        assert_eq!(ders.len(), 2);
        assert_eq!(ders[0], leaf(&a.cert_pem));
        assert!(matches!(
            pem_to_ders(&a.key_pem),
            Err(CaError::NoCertificate)
        ));
    }

    #[test]
    fn verify_leaf_checks_issuer_and_trust_domain() {
        let ca = create_ca("a.example", 10).expect("ca");
        let s = issue_server_cert(&ca, "s1", "dc1", 1).expect("issue");
        assert_eq!(
            verify_leaf(&ca.cert_pem, &s.cert_pem)
                .expect("verify")
                .identity,
            Identity::Server("s1".into())
        );
        // Same subject name (same trust domain), other key: the signature decides.
        let twin = create_ca("a.example", 10).expect("twin");
        assert!(matches!(
            verify_leaf(&twin.cert_pem, &s.cert_pem),
            Err(CaError::NotIssuedByCa)
        ));
        let other = create_ca("b.example", 10).expect("other");
        assert!(matches!(
            verify_leaf(&other.cert_pem, &s.cert_pem),
            Err(CaError::NotIssuedByCa)
        ));
        assert!(matches!(
            verify_leaf(&s.cert_pem, &s.cert_pem),
            Err(CaError::NotCa)
        ));
    }

    #[test]
    fn serials_differ_for_the_same_key() {
        let ca = create_ca(DEFAULT_TRUST_DOMAIN, 1).expect("ca");
        let (csr, _) = create_csr("n").expect("csr");
        let a = sign_node_csr(&ca, &csr, "n", "dc1", 1).expect("a");
        let b = sign_node_csr(&ca, &csr, "n", "dc1", 1).expect("b");
        let (da, db) = (leaf(&a), leaf(&b));
        let (ca_, cb) = (parse_cert(&da).expect("a"), parse_cert(&db).expect("b"));
        assert_ne!(ca_.raw_serial(), cb.raw_serial());
    }
}
