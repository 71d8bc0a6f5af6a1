//! An agent's TLS identity: the node certificate configured (`cert_file`, `key_file`), the one
//! kept in the data dir from an earlier enrollment, or a new one from enrollment: the agent
//! verifies a server against the CA file, presents the join token and a CSR, and receives a
//! certificate for `spiffe://<trust-domain>/node/<node>`.
//!
//! A refusal (wrong token, a server certificate not from our CA) is final: the agent stops
//! with an error naming the cause. Unreachable servers are retried until one answers.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{bail, Context as _};
use registry::ca::{self, Identity};
use tokio_util::sync::CancellationToken;

use super::proto::{EnrollReply, EnrollRequest, ErrorKind};
use crate::config::ClusterConfig;
use crate::transport::tls::TlsMaterial;
use crate::transport::{Transport, TransportError, ALPN_JOIN};

const RETRY: Duration = Duration::from_secs(1);

fn cert_paths(data_dir: &Path) -> (PathBuf, PathBuf) {
    let dir = data_dir.join("tls");
    (dir.join("node.pem"), dir.join("node-key.pem"))
}

/// Who is enrolling, and with what.
pub struct Enrollment<'a> {
    pub cfg: &'a ClusterConfig,
    /// The mesh CA certificate (PEM) and the file it came from.
    pub ca_pem: &'a str,
    pub ca_file: &'a Path,
    pub node: &'a str,
    pub datacenter: &'a str,
    pub data_dir: &'a Path,
}

/// The agent's certificate, enrolling if it has none. Returns `Ok(None)` if cancelled.
pub async fn node_identity(
    e: Enrollment<'_>,
    transport: &Transport,
    cancel: &CancellationToken,
) -> anyhow::Result<Option<TlsMaterial>> {
    let Enrollment {
        cfg,
        ca_pem,
        ca_file,
        node,
        datacenter,
        data_dir,
    } = e;
    if let (Some(cert), Some(key)) = (&cfg.tls.cert_file, &cfg.tls.key_file) {
        return TlsMaterial::load(ca_file, cert, key)
            .map(Some)
            .context("loading this agent's certificate");
    }
    let (cert_path, key_path) = cert_paths(data_dir);
    if cert_path.exists() && key_path.exists() {
        let cert = std::fs::read_to_string(&cert_path)
            .with_context(|| format!("reading {}", cert_path.display()))?;
        let key = std::fs::read_to_string(&key_path)
            .with_context(|| format!("reading {}", key_path.display()))?;
        let material = TlsMaterial::from_pem(ca_pem, &cert, &key)
            .with_context(|| format!("the node certificate in {}", cert_path.display()))?;
        let same_node = material
            .chain
            .first()
            .and_then(|c| ca::spiffe_id_of(c).ok())
            .is_some_and(|id| id.identity == Identity::Node(node.to_string()));
        if same_node {
            tracing::info!(path = %cert_path.display(), "using the node certificate from an earlier enrollment");
            return Ok(Some(material));
        }
        tracing::info!("the stored node certificate is for another node name; enrolling again");
    }
    let Some(token) = cfg.join_token.clone() else {
        bail!("this agent has no certificate and no join token to enroll with (set join_token)");
    };
    let (csr_pem, key_pem) = ca::create_csr(node).context("creating a CSR")?;
    let req = EnrollRequest {
        node: node.to_string(),
        datacenter: datacenter.to_string(),
        token,
        csr_pem,
    };
    let mut round = 0u64;
    loop {
        round += 1;
        let mut refusals = Vec::new();
        for addr in &cfg.retry_join {
            match try_enroll(transport, *addr, &req).await {
                Ok(Attempt::Enrolled(cert_pem)) => {
                    let material = TlsMaterial::from_pem(ca_pem, &cert_pem, &key_pem)
                        .context("the certificate the server issued")?;
                    store(&cert_path, &key_path, &cert_pem, &key_pem)?;
                    tracing::info!(server = %addr, node, "enrolled: received a node certificate");
                    return Ok(Some(material));
                }
                Ok(Attempt::Refused(why)) => refusals.push(format!("{addr}: {why}")),
                Ok(Attempt::Retry(why)) => {
                    tracing::info!(server = %addr, reason = %why, "enrollment not possible yet; retrying")
                }
                Err(e) if e.is_certificate_error() => refusals.push(format!(
                    "{addr}: TLS handshake refused: {e} (is the server's certificate signed by the CA in {}?)",
                    ca_file.display()
                )),
                Err(e) => {
                    if round % 10 == 1 {
                        tracing::warn!(server = %addr, error = %e, "cannot reach a server to enroll; retrying");
                    }
                }
            }
        }
        if !refusals.is_empty() && refusals.len() == cfg.retry_join.len() {
            bail!("enrollment refused: {}", refusals.join("; "));
        }
        tokio::select! {
            _ = cancel.cancelled() => return Ok(None),
            _ = tokio::time::sleep(RETRY) => {}
        }
    }
}

enum Attempt {
    Enrolled(String),
    Refused(String),
    Retry(String),
}

async fn try_enroll(
    transport: &Transport,
    addr: SocketAddr,
    req: &EnrollRequest,
) -> Result<Attempt, TransportError> {
    let reply: EnrollReply = transport
        .call(addr, ALPN_JOIN, req, Duration::from_secs(10))
        .await?;
    Ok(match reply {
        EnrollReply::Enrolled { cert_pem, .. } => Attempt::Enrolled(cert_pem),
        EnrollReply::Error {
            kind: ErrorKind::Unavailable | ErrorKind::NoLeader,
            message,
        } => Attempt::Retry(message),
        EnrollReply::Error { message, .. } => Attempt::Refused(message),
    })
}

fn store(cert_path: &Path, key_path: &Path, cert: &str, key: &str) -> anyhow::Result<()> {
    use std::io::Write as _;
    use std::os::unix::fs::OpenOptionsExt as _;
    if let Some(dir) = cert_path.parent() {
        std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    }
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(key_path)
        .with_context(|| format!("writing {}", key_path.display()))?;
    f.write_all(key.as_bytes())
        .and_then(|_| f.sync_all())
        .with_context(|| format!("writing {}", key_path.display()))?;
    std::fs::write(cert_path, cert).with_context(|| format!("writing {}", cert_path.display()))?;
    Ok(())
}
