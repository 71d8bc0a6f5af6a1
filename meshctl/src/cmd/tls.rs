//! `meshctl tls ca create` and `meshctl tls cert create --server`: the mesh CA and server
//! certificates, made offline in the current directory (like `consul tls`). Files are created,
//! never overwritten; private keys get mode 0600. Agents get their certificates by enrolling.

use std::io::Write as _;
use std::path::{Path, PathBuf};

use anyhow::{bail, Context as _};
use registry::ca;
use serde_json::{json, Value};

use crate::cli::{CertCreateArgs, TlsCaCommand, TlsCertCommand, TlsCommand};
use crate::output::{self, Format};

/// The CA certificate `tls ca create` writes.
pub const CA_CERT_FILE: &str = "mesh-agent-ca.pem";
/// The CA key `tls ca create` writes.
pub const CA_KEY_FILE: &str = "mesh-agent-ca-key.pem";

/// Runs a `tls` command in the current directory.
pub fn run(format: Format, cmd: TlsCommand) -> anyhow::Result<()> {
    let dir = Path::new(".");
    let (saved, summary) = match cmd {
        TlsCommand::Ca(TlsCaCommand::Create { trust_domain, days }) => {
            create_ca(dir, &trust_domain, days)?
        }
        TlsCommand::Cert(TlsCertCommand::Create(args)) => create_server_cert(dir, &args)?,
    };
    match format {
        Format::Json => output::print(&output::json_pretty(&super::ok_object(summary)))?,
        Format::Table => {
            let lines: String = saved
                .iter()
                .map(|f| format!("==> Saved {}\n", f.display()))
                .collect();
            output::print(&lines)?;
        }
    }
    Ok(())
}

/// Writes a new CA into `dir`; returns the files written and a JSON summary.
pub fn create_ca(
    dir: &Path,
    trust_domain: &str,
    days: u32,
) -> anyhow::Result<(Vec<PathBuf>, Value)> {
    let cert_file = dir.join(CA_CERT_FILE);
    let key_file = dir.join(CA_KEY_FILE);
    refuse_existing(&[&cert_file, &key_file])?;
    let bundle = ca::create_ca(trust_domain, days)?;
    write_pair((&cert_file, &bundle.cert_pem), (&key_file, &bundle.key_pem))?;
    let summary = json!({
        "Certificate": CA_CERT_FILE,
        "Key": CA_KEY_FILE,
        "TrustDomain": bundle.trust_domain,
        "Days": days,
    });
    Ok((
        vec![PathBuf::from(CA_CERT_FILE), PathBuf::from(CA_KEY_FILE)],
        summary,
    ))
}

/// Signs a server certificate with the CA named by `args` and writes it into `dir` as
/// `<dc>-server-mesh-<n>.pem` and `<dc>-server-mesh-<n>-key.pem`, `n` the first free number.
pub fn create_server_cert(
    dir: &Path,
    args: &CertCreateArgs,
) -> anyhow::Result<(Vec<PathBuf>, Value)> {
    if !args.server {
        bail!(
            "only --server certificates are created offline; agents get theirs by enrolling \
             with a join token"
        );
    }
    let Some(node) = args.node.as_deref() else {
        bail!("--node is required with --server: the certificate names the server's node");
    };
    // Relative CA paths are read from `dir` (the current directory when run from the CLI).
    let ca_path = dir.join(&args.ca);
    let key_path = dir.join(&args.key);
    let read =
        |p: &Path| std::fs::read_to_string(p).with_context(|| format!("reading {}", p.display()));
    let (ca_pem, key_pem) = (read(&ca_path)?, read(&key_path)?);
    let bundle = ca::load_ca(&ca_pem, &key_pem).with_context(|| {
        format!(
            "loading the CA from {} and {}",
            ca_path.display(),
            key_path.display()
        )
    })?;
    let issued = ca::issue_server_cert(&bundle, node, &args.dc, args.days)?;

    let prefix = format!("{}-server-mesh", args.dc);
    let mut n = 0u32;
    loop {
        let cert_name = format!("{prefix}-{n}.pem");
        let key_name = format!("{prefix}-{n}-key.pem");
        let (cert_file, key_file) = (dir.join(&cert_name), dir.join(&key_name));
        if cert_file.exists() || key_file.exists() {
            n += 1;
            continue;
        }
        write_pair((&cert_file, &issued.cert_pem), (&key_file, &issued.key_pem))?;
        let summary = json!({
            "Certificate": cert_name,
            "Key": key_name,
            "Node": node,
            "Datacenter": args.dc,
            "ServerName": ca::server_name(&args.dc),
            "TrustDomain": bundle.trust_domain,
            "Days": args.days,
        });
        return Ok((
            vec![PathBuf::from(cert_name), PathBuf::from(key_name)],
            summary,
        ));
    }
}

fn refuse_existing(files: &[&Path]) -> anyhow::Result<()> {
    for f in files {
        if f.exists() {
            bail!("{} already exists; not overwriting it", f.display());
        }
    }
    Ok(())
}

/// Writes a certificate (0644) and its key (0600); if the key cannot be written, the
/// certificate is removed again so no half pair is left.
fn write_pair(cert: (&Path, &str), key: (&Path, &str)) -> anyhow::Result<()> {
    write_new(cert.0, cert.1, 0o644)?;
    if let Err(e) = write_new(key.0, key.1, 0o600) {
        let _ = std::fs::remove_file(cert.0);
        return Err(e);
    }
    Ok(())
}

/// Creates `path` (failing if it exists) with `mode`, writes `text` and syncs it.
fn write_new(path: &Path, text: &str, mode: u32) -> anyhow::Result<()> {
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create_new(true);
    #[cfg(unix)]
    std::os::unix::fs::OpenOptionsExt::mode(&mut options, mode);
    #[cfg(not(unix))]
    let _ = mode;
    let write = || -> std::io::Result<()> {
        let mut f = options.open(path)?;
        f.write_all(text.as_bytes())?;
        f.sync_all()
    };
    write().with_context(|| format!("writing {}", path.display()))
}
