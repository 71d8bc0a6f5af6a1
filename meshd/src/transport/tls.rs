//! rustls and quinn configuration for mutual TLS with the mesh CA.
//!
//! - [`TlsMaterial`]: the roots this host trusts and its own chain and key, read from PEM;
//! - [`quic_server_config`]: client certificates verified against the roots (optionally
//!   admitting clients without one, for enrollment only);
//! - [`quic_client_config`]: the server verified against the roots and the DNS name given at
//!   connect time, presenting this host's certificate when it has one;
//! - [`peer_spiffe`]: who the peer of an established connection is.
//!
//! Only TLS 1.3 (QUIC needs it) and the ring provider are used. The verifiers check the chain
//! only: authorizing the peer's SPIFFE ID is the caller's job.

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use quinn::crypto::rustls::{QuicClientConfig, QuicServerConfig};
use quinn::{IdleTimeout, MtuDiscoveryConfig, TransportConfig, VarInt};
use registry::ca::SpiffeId;
use rustls::client::WebPkiServerVerifier;
use rustls::crypto::CryptoProvider;
use rustls::server::WebPkiClientVerifier;
use rustls::sign::CertifiedKey;
use rustls::RootCertStore;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};

/// Concurrent bidirectional streams per connection (one per tunneled TCP connection).
const MAX_BIDI_STREAMS: u32 = 1024;
/// Per-stream receive window.
const STREAM_WINDOW: u32 = 4 << 20;
/// Per-connection receive (and send) window.
const CONNECTION_WINDOW: u32 = 16 << 20;
/// Keepalives keep an idle connection open and let a dead peer be noticed within
/// [`IDLE_TIMEOUT`]: a request on a cached connection to a host that died (a killed leader)
/// fails after that long rather than hanging.
const KEEP_ALIVE: Duration = Duration::from_millis(750);
const IDLE_TIMEOUT: Duration = Duration::from_secs(4);
/// Largest UDP payload MTU discovery probes for (a 9000-byte jumbo frame less IPv6 and UDP
/// headers); it never exceeds what the endpoints allow, and stays far below the 64 KiB GSO
/// batch limit.
const MTU_UPPER_BOUND: u16 = 8952;

/// Why TLS material could not be read or a configuration built.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("reading {file}: {source}")]
    Read {
        file: String,
        #[source]
        source: std::io::Error,
    },
    #[error("{file}: invalid PEM: {reason}")]
    Pem { file: String, reason: String },
    #[error("{file}: no CERTIFICATE in it")]
    NoCertificate { file: String },
    #[error("{file}: no private key in it ({reason})")]
    NoKey { file: String, reason: String },
    #[error("{key_file} does not match the certificate in {cert_file}: {reason}")]
    KeyMismatch {
        cert_file: String,
        key_file: String,
        reason: String,
    },
    #[error("no trusted roots")]
    NoRoots,
    #[error("trusted root rejected: {0}")]
    BadRoot(String),
    #[error("certificate verifier: {0}")]
    Verifier(String),
    #[error("TLS configuration: {0}")]
    Config(String),
    #[error("QUIC TLS configuration: {0}")]
    Quic(String),
}

/// The roots this host trusts and the certificate chain and key it presents.
#[derive(Clone, Debug)]
pub struct TlsMaterial {
    pub roots: Vec<CertificateDer<'static>>,
    /// Leaf first.
    pub chain: Vec<CertificateDer<'static>>,
    pub key: Arc<PrivateKeyDer<'static>>,
}

impl TlsMaterial {
    /// Reads material from PEM text: the trusted roots, this host's chain (leaf first) and its
    /// key, which must match the leaf.
    pub fn from_pem(
        roots_pem: &str,
        cert_pem: &str,
        key_pem: &str,
    ) -> Result<TlsMaterial, TlsError> {
        Self::from_named_pem(
            ("CA PEM", roots_pem),
            ("certificate PEM", cert_pem),
            ("key PEM", key_pem),
        )
    }

    /// Reads material from PEM files; errors name the file.
    pub fn load(
        ca_file: &Path,
        cert_file: &Path,
        key_file: &Path,
    ) -> Result<TlsMaterial, TlsError> {
        let read = |path: &Path| {
            std::fs::read_to_string(path).map_err(|source| TlsError::Read {
                file: path.display().to_string(),
                source,
            })
        };
        let (ca, cert, key) = (read(ca_file)?, read(cert_file)?, read(key_file)?);
        Self::from_named_pem(
            (&ca_file.display().to_string(), &ca),
            (&cert_file.display().to_string(), &cert),
            (&key_file.display().to_string(), &key),
        )
    }

    fn from_named_pem(
        (roots_name, roots_pem): (&str, &str),
        (cert_name, cert_pem): (&str, &str),
        (key_name, key_pem): (&str, &str),
    ) -> Result<TlsMaterial, TlsError> {
        let roots = certs_from_pem(roots_name, roots_pem)?;
        let chain = certs_from_pem(cert_name, cert_pem)?;
        let key =
            PrivateKeyDer::from_pem_slice(key_pem.as_bytes()).map_err(|e| TlsError::NoKey {
                file: key_name.to_string(),
                reason: e.to_string(),
            })?;
        CertifiedKey::from_der(chain.clone(), key.clone_key(), &provider()).map_err(|e| {
            TlsError::KeyMismatch {
                cert_file: cert_name.to_string(),
                key_file: key_name.to_string(),
                reason: e.to_string(),
            }
        })?;
        Ok(TlsMaterial {
            roots,
            chain,
            key: Arc::new(key),
        })
    }
}

/// Every certificate of a PEM text (a CA file may hold several roots during a rotation).
pub fn roots_from_pem(pem: &str) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    certs_from_pem("CA PEM", pem)
}

/// The transport parameters of every mesh connection, both directions.
pub fn transport_config() -> Arc<TransportConfig> {
    let mut t = TransportConfig::default();
    t.max_concurrent_bidi_streams(VarInt::from_u32(MAX_BIDI_STREAMS))
        .stream_receive_window(VarInt::from_u32(STREAM_WINDOW))
        .receive_window(VarInt::from_u32(CONNECTION_WINDOW))
        .send_window(u64::from(CONNECTION_WINDOW))
        .keep_alive_interval(Some(KEEP_ALIVE));
    // 4 s is far below the 2^62 ms limit, so the conversion cannot fail.
    if let Ok(idle) = IdleTimeout::try_from(IDLE_TIMEOUT) {
        t.max_idle_timeout(Some(idle));
    }
    let mut mtu = MtuDiscoveryConfig::default();
    mtu.upper_bound(MTU_UPPER_BOUND);
    t.mtu_discovery_config(Some(mtu));
    Arc::new(t)
}

/// Server side of the QUIC endpoint: client certificates verified against `m.roots`; when
/// `allow_anonymous`, a client without a certificate is admitted too (for the enrollment ALPN
/// only: the caller checks the ALPN and [`peer_spiffe`] per connection).
pub fn quic_server_config(
    m: &TlsMaterial,
    alpns: &[&[u8]],
    allow_anonymous: bool,
) -> Result<quinn::ServerConfig, TlsError> {
    let provider = Arc::new(provider());
    let roots = Arc::new(root_store(&m.roots)?);
    let mut verifier = WebPkiClientVerifier::builder_with_provider(roots, provider.clone());
    if allow_anonymous {
        verifier = verifier.allow_unauthenticated();
    }
    let verifier = verifier
        .build()
        .map_err(|e| TlsError::Verifier(e.to_string()))?;
    let mut tls = rustls::ServerConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13])
        .map_err(|e| TlsError::Config(e.to_string()))?
        .with_client_cert_verifier(verifier)
        .with_single_cert(m.chain.clone(), m.key.clone_key())
        .map_err(|e| TlsError::Config(e.to_string()))?;
    tls.alpn_protocols = alpns.iter().map(|a| a.to_vec()).collect();
    let quic = QuicServerConfig::try_from(tls).map_err(|e| TlsError::Quic(e.to_string()))?;
    let mut config = quinn::ServerConfig::with_crypto(Arc::new(quic));
    config.transport_config(transport_config());
    Ok(config)
}

/// Client side: the server's chain is verified against `roots` and must be valid for the DNS
/// name given to `connect` (for servers, [`registry::ca::server_name`]); `identity` (chain,
/// key) is presented when given (an agent enrolling has none). One ALPN.
pub fn quic_client_config(
    roots: &[CertificateDer<'static>],
    identity: Option<(&[CertificateDer<'static>], &PrivateKeyDer<'static>)>,
    alpn: &[u8],
) -> Result<quinn::ClientConfig, TlsError> {
    let provider = Arc::new(provider());
    let verifier =
        WebPkiServerVerifier::builder_with_provider(Arc::new(root_store(roots)?), provider.clone())
            .build()
            .map_err(|e| TlsError::Verifier(e.to_string()))?;
    let builder = rustls::ClientConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13])
        .map_err(|e| TlsError::Config(e.to_string()))?
        .with_webpki_verifier(verifier);
    let mut tls = match identity {
        Some((chain, key)) => builder
            .with_client_auth_cert(chain.to_vec(), key.clone_key())
            .map_err(|e| TlsError::Config(e.to_string()))?,
        None => builder.with_no_client_auth(),
    };
    tls.alpn_protocols = vec![alpn.to_vec()];
    let quic = QuicClientConfig::try_from(tls).map_err(|e| TlsError::Quic(e.to_string()))?;
    let mut config = quinn::ClientConfig::new(Arc::new(quic));
    config.transport_config(transport_config());
    Ok(config)
}

/// The SPIFFE ID of the peer of an established connection (the URI SAN of its leaf); `None`
/// when it presented no certificate or its leaf names no single valid SPIFFE ID.
pub fn peer_spiffe(conn: &quinn::Connection) -> Option<SpiffeId> {
    let identity = conn.peer_identity()?;
    let chain = identity.downcast::<Vec<CertificateDer<'static>>>().ok()?;
    let leaf = chain.first()?;
    registry::ca::spiffe_id_of(leaf).ok()
}

fn provider() -> CryptoProvider {
    rustls::crypto::ring::default_provider()
}

fn certs_from_pem(file: &str, pem: &str) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let certs = CertificateDer::pem_slice_iter(pem.as_bytes())
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| TlsError::Pem {
            file: file.to_string(),
            reason: e.to_string(),
        })?;
    if certs.is_empty() {
        return Err(TlsError::NoCertificate {
            file: file.to_string(),
        });
    }
    Ok(certs)
}

fn root_store(roots: &[CertificateDer<'static>]) -> Result<RootCertStore, TlsError> {
    if roots.is_empty() {
        return Err(TlsError::NoRoots);
    }
    let mut store = RootCertStore::empty();
    for root in roots {
        store
            .add(root.clone())
            .map_err(|e| TlsError::BadRoot(e.to_string()))?;
    }
    Ok(store)
}

#[cfg(test)]
mod tests {
    use super::*;
    use registry::ca::{self, CaBundle, Identity};
    use std::net::SocketAddr;

    const ALPN: &[u8] = b"test/1";

    fn install() {
        let _ = rustls::crypto::ring::default_provider().install_default();
    }

    fn server_material(ca: &CaBundle) -> TlsMaterial {
        let s = ca::issue_server_cert(ca, "s1", "dc1", 1).expect("server cert");
        TlsMaterial::from_pem(&ca.cert_pem, &s.cert_pem, &s.key_pem).expect("material")
    }

    fn node_material(ca: &CaBundle, node: &str) -> TlsMaterial {
        let (csr, key) = ca::create_csr(node).expect("csr");
        let cert = ca::sign_node_csr(ca, &csr, node, "dc1", 1).expect("sign");
        TlsMaterial::from_pem(&ca.cert_pem, &cert, &key).expect("material")
    }

    fn server(m: &TlsMaterial, allow_anonymous: bool) -> (quinn::Endpoint, SocketAddr) {
        let cfg = quic_server_config(m, &[ALPN], allow_anonymous).expect("server config");
        let ep = quinn::Endpoint::server(cfg, "127.0.0.1:0".parse().expect("addr")).expect("bind");
        let addr = ep.local_addr().expect("addr");
        (ep, addr)
    }

    /// Connects with `client` to `addr` as `name`; returns what the server saw (the peer's
    /// SPIFFE ID, or the handshake error) and whether the client could complete a round trip.
    async fn handshake(
        server: &quinn::Endpoint,
        addr: SocketAddr,
        client: quinn::ClientConfig,
        name: &str,
    ) -> (Result<Option<SpiffeId>, String>, bool) {
        let ep = quinn::Endpoint::client("127.0.0.1:0".parse().expect("addr")).expect("client");
        let accept = async {
            let incoming = server.accept().await.ok_or("endpoint closed")?;
            let conn = incoming.await.map_err(|e| e.to_string())?;
            let id = peer_spiffe(&conn);
            let (mut send, mut recv) = conn.accept_bi().await.map_err(|e| e.to_string())?;
            let msg = recv.read_to_end(64).await.map_err(|e| e.to_string())?;
            send.write_all(&msg).await.map_err(|e| e.to_string())?;
            send.finish().map_err(|e| e.to_string())?;
            conn.closed().await;
            Ok::<_, String>(id)
        };
        let connect = async {
            let round_trip = async {
                let conn = ep
                    .connect_with(client, addr, name)
                    .map_err(|e| e.to_string())?
                    .await
                    .map_err(|e| e.to_string())?;
                let (mut send, mut recv) = conn.open_bi().await.map_err(|e| e.to_string())?;
                send.write_all(b"ping").await.map_err(|e| e.to_string())?;
                send.finish().map_err(|e| e.to_string())?;
                let echo = recv.read_to_end(64).await.map_err(|e| e.to_string())?;
                conn.close(0u32.into(), b"done");
                Ok::<_, String>(echo == b"ping")
            };
            let ok = tokio::time::timeout(Duration::from_secs(5), round_trip)
                .await
                .map(|r| r.unwrap_or(false))
                .unwrap_or(false);
            ep.close(0u32.into(), b"done");
            ok
        };
        let (seen, ok) = tokio::join!(
            tokio::time::timeout(Duration::from_secs(5), accept),
            connect
        );
        (seen.unwrap_or_else(|_| Err("timeout".into())), ok)
    }

    #[tokio::test]
    async fn mutual_tls_handshake_reads_client_identity() {
        install();
        let ca = ca::create_ca(ca::DEFAULT_TRUST_DOMAIN, 1).expect("ca");
        let (ep, addr) = server(&server_material(&ca), false);
        let node = node_material(&ca, "web-1");
        let client = quic_client_config(&node.roots, Some((&node.chain, &node.key)), ALPN)
            .expect("client config");
        let (seen, ok) = handshake(&ep, addr, client, &ca::server_name("dc1")).await;
        assert!(ok, "round trip failed: {seen:?}");
        let id = seen.expect("accepted").expect("client identity");
        assert_eq!(id.identity, Identity::Node("web-1".into()));
        assert_eq!(id.trust_domain, ca::DEFAULT_TRUST_DOMAIN);
    }

    #[tokio::test]
    async fn server_identity_seen_by_client() {
        install();
        let ca = ca::create_ca(ca::DEFAULT_TRUST_DOMAIN, 1).expect("ca");
        let (ep, addr) = server(&server_material(&ca), false);
        let me = server_material(&ca);
        let client =
            quic_client_config(&me.roots, Some((&me.chain, &me.key)), ALPN).expect("client");
        let cep = quinn::Endpoint::client("127.0.0.1:0".parse().expect("addr")).expect("client");
        let accept = async {
            let conn = ep.accept().await.expect("incoming").await.expect("accept");
            conn.closed().await;
        };
        let connect = async {
            let conn = cep
                .connect_with(client, addr, &ca::server_name("dc1"))
                .expect("connect")
                .await
                .expect("handshake");
            let id = peer_spiffe(&conn);
            conn.close(0u32.into(), b"");
            id
        };
        let (_, id) = tokio::join!(accept, connect);
        assert_eq!(
            id.expect("server identity").identity,
            Identity::Server("s1".into())
        );
    }

    #[tokio::test]
    async fn client_from_another_ca_is_refused() {
        install();
        let ca = ca::create_ca(ca::DEFAULT_TRUST_DOMAIN, 1).expect("ca");
        let other = ca::create_ca(ca::DEFAULT_TRUST_DOMAIN, 1).expect("other");
        for anonymous in [false, true] {
            let (ep, addr) = server(&server_material(&ca), anonymous);
            let stranger = node_material(&other, "web-1");
            // It trusts our CA, but its own certificate is from another one.
            let client = quic_client_config(
                &server_material(&ca).roots,
                Some((&stranger.chain, &stranger.key)),
                ALPN,
            )
            .expect("client config");
            let (seen, ok) = handshake(&ep, addr, client, &ca::server_name("dc1")).await;
            assert!(seen.is_err(), "server accepted a foreign client: {seen:?}");
            assert!(!ok, "round trip with a foreign client");
        }
    }

    #[tokio::test]
    async fn client_not_trusting_the_server_fails() {
        install();
        let ca = ca::create_ca(ca::DEFAULT_TRUST_DOMAIN, 1).expect("ca");
        let other = ca::create_ca(ca::DEFAULT_TRUST_DOMAIN, 1).expect("other");
        let (ep, addr) = server(&server_material(&ca), true);
        let client =
            quic_client_config(&roots_from_pem(&other.cert_pem).expect("roots"), None, ALPN)
                .expect("client config");
        let (seen, ok) = handshake(&ep, addr, client, &ca::server_name("dc1")).await;
        assert!(seen.is_err() && !ok, "{seen:?}");
    }

    #[tokio::test]
    async fn wrong_server_name_fails() {
        install();
        let ca = ca::create_ca(ca::DEFAULT_TRUST_DOMAIN, 1).expect("ca");
        let (ep, addr) = server(&server_material(&ca), true);
        let client = quic_client_config(&roots_from_pem(&ca.cert_pem).expect("roots"), None, ALPN)
            .expect("client config");
        let (seen, ok) = handshake(&ep, addr, client, &ca::server_name("dc2")).await;
        assert!(seen.is_err() && !ok, "{seen:?}");
    }

    #[tokio::test]
    async fn anonymous_client_only_when_allowed() {
        install();
        let ca = ca::create_ca(ca::DEFAULT_TRUST_DOMAIN, 1).expect("ca");
        let roots = roots_from_pem(&ca.cert_pem).expect("roots");

        let (ep, addr) = server(&server_material(&ca), true);
        let client = quic_client_config(&roots, None, ALPN).expect("client config");
        let (seen, ok) = handshake(&ep, addr, client, &ca::server_name("dc1")).await;
        assert!(ok, "anonymous round trip failed: {seen:?}");
        assert_eq!(seen.expect("accepted"), None);

        let (ep, addr) = server(&server_material(&ca), false);
        let client = quic_client_config(&roots, None, ALPN).expect("client config");
        let (seen, ok) = handshake(&ep, addr, client, &ca::server_name("dc1")).await;
        assert!(seen.is_err(), "anonymous client admitted: {seen:?}");
        assert!(!ok);
    }

    #[test]
    fn material_errors_name_the_file() {
        let ca = ca::create_ca(ca::DEFAULT_TRUST_DOMAIN, 1).expect("ca");
        let a = ca::issue_server_cert(&ca, "s1", "dc1", 1).expect("a");
        let b = ca::issue_server_cert(&ca, "s2", "dc1", 1).expect("b");
        let dir = std::env::temp_dir().join(format!("meshd-tls-test-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("dir");
        let write = |name: &str, text: &str| {
            let p = dir.join(name);
            std::fs::write(&p, text).expect("write");
            p
        };
        let (ca_f, cert_f, key_f, other_key) = (
            write("ca.pem", &ca.cert_pem),
            write("cert.pem", &a.cert_pem),
            write("key.pem", &a.key_pem),
            write("other-key.pem", &b.key_pem),
        );
        let m = TlsMaterial::load(&ca_f, &cert_f, &key_f).expect("load");
        assert_eq!((m.roots.len(), m.chain.len()), (1, 1));

        let err = TlsMaterial::load(&ca_f, &cert_f, &other_key).expect_err("mismatch");
        assert!(matches!(err, TlsError::KeyMismatch { .. }), "{err}");
        assert!(err.to_string().contains("other-key.pem"), "{err}");

        let missing = dir.join("missing.pem");
        let err = TlsMaterial::load(&missing, &cert_f, &key_f).expect_err("missing");
        assert!(err.to_string().contains("missing.pem"), "{err}");

        let err = TlsMaterial::load(&key_f, &cert_f, &key_f).expect_err("no cert");
        assert!(matches!(err, TlsError::NoCertificate { .. }), "{err}");
        assert!(err.to_string().contains("key.pem"), "{err}");

        let err = TlsMaterial::load(&ca_f, &cert_f, &cert_f).expect_err("no key");
        assert!(matches!(err, TlsError::NoKey { .. }), "{err}");
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn transport_is_tuned() {
        let t = format!("{:?}", transport_config());
        assert!(t.contains("max_concurrent_bidi_streams: 1024"), "{t}");
        assert!(t.contains("stream_receive_window: 4194304"), "{t}");
        assert!(t.contains("receive_window: 16777216"), "{t}");
    }
}
