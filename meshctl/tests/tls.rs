//! The offline `meshctl tls` commands, run as the built binary in a scratch directory: the
//! files they write, their modes, that nothing is overwritten, and that a server certificate
//! verifies against the CA (with registry::ca and with rustls, for the name clients use).

use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::Arc;

use registry::ca::{self, Identity};
use rustls::client::danger::ServerCertVerifier as _;
use rustls::client::WebPkiServerVerifier;
use rustls::pki_types::pem::PemObject as _;
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};

/// A fresh directory, removed when dropped.
struct Scratch(PathBuf);

impl Scratch {
    fn new(name: &str) -> Scratch {
        let dir = std::env::temp_dir().join(format!("meshctl-tls-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).expect("scratch dir");
        Scratch(dir)
    }

    fn path(&self, name: &str) -> PathBuf {
        self.0.join(name)
    }

    fn read(&self, name: &str) -> String {
        std::fs::read_to_string(self.path(name)).unwrap_or_else(|e| panic!("{name}: {e}"))
    }

    fn meshctl(&self, args: &[&str]) -> Output {
        Command::new(env!("CARGO_BIN_EXE_meshctl"))
            .args(args)
            .current_dir(&self.0)
            // tls is offline: an unreachable agent address must not matter.
            .env("MESH_HTTP_ADDR", "127.0.0.1:1")
            .output()
            .expect("run meshctl")
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

fn assert_ok(o: &Output) {
    assert!(o.status.success(), "failed: {}{}", stdout(o), stderr(o));
}

/// Exit code 1 and a single `Error: ...` line.
fn assert_one_line_error(o: &Output) -> String {
    assert_eq!(o.status.code(), Some(1), "{}{}", stdout(o), stderr(o));
    let err = stderr(o);
    assert!(err.starts_with("Error: "), "{err}");
    assert_eq!(err.trim_end().lines().count(), 1, "{err}");
    err
}

#[cfg(unix)]
fn mode(path: &Path) -> u32 {
    use std::os::unix::fs::PermissionsExt as _;
    std::fs::metadata(path)
        .expect("metadata")
        .permissions()
        .mode()
        & 0o777
}

#[test]
fn ca_create_writes_both_files_and_never_overwrites() {
    let dir = Scratch::new("ca");
    let out = dir.meshctl(&["tls", "ca", "create"]);
    assert_ok(&out);
    assert_eq!(
        stdout(&out),
        "==> Saved mesh-agent-ca.pem\n==> Saved mesh-agent-ca-key.pem\n"
    );
    let (cert, key) = (
        dir.read("mesh-agent-ca.pem"),
        dir.read("mesh-agent-ca-key.pem"),
    );
    let bundle = ca::load_ca(&cert, &key).expect("a CA and its key");
    assert_eq!(bundle.trust_domain, ca::DEFAULT_TRUST_DOMAIN);
    #[cfg(unix)]
    assert_eq!(mode(&dir.path("mesh-agent-ca-key.pem")), 0o600);

    // A second run refuses, names the file, and leaves both untouched.
    let out = dir.meshctl(&["tls", "ca", "create", "--trust-domain", "other.example"]);
    let err = assert_one_line_error(&out);
    assert!(err.contains("mesh-agent-ca.pem"), "{err}");
    assert_eq!(dir.read("mesh-agent-ca.pem"), cert);
    assert_eq!(dir.read("mesh-agent-ca-key.pem"), key);

    // Only the key left over: still refused, and no certificate appears.
    std::fs::remove_file(dir.path("mesh-agent-ca.pem")).expect("rm");
    let err = assert_one_line_error(&dir.meshctl(&["tls", "ca", "create"]));
    assert!(err.contains("mesh-agent-ca-key.pem"), "{err}");
    assert!(!dir.path("mesh-agent-ca.pem").exists());
}

#[test]
fn ca_create_json_and_bad_trust_domain() {
    let dir = Scratch::new("ca-json");
    let out = dir.meshctl(&[
        "tls",
        "ca",
        "create",
        "--trust-domain",
        "corp.example",
        "--days",
        "30",
        "-o",
        "json",
    ]);
    assert_ok(&out);
    let v: serde_json::Value = serde_json::from_str(&stdout(&out)).expect("JSON");
    assert_eq!(v["Certificate"], "mesh-agent-ca.pem");
    assert_eq!(v["Key"], "mesh-agent-ca-key.pem");
    assert_eq!(v["TrustDomain"], "corp.example");
    assert_eq!(
        ca::trust_domain_of(&dir.read("mesh-agent-ca.pem")).expect("td"),
        "corp.example"
    );

    let dir = Scratch::new("ca-bad");
    let err = assert_one_line_error(&dir.meshctl(&[
        "tls",
        "ca",
        "create",
        "--trust-domain",
        "Not Valid",
    ]));
    assert!(err.contains("trust domain"), "{err}");
    assert!(!dir.path("mesh-agent-ca.pem").exists());
}

#[test]
fn server_cert_create_numbers_files_and_verifies_against_the_ca() {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let dir = Scratch::new("cert");
    assert_ok(&dir.meshctl(&["tls", "ca", "create", "--trust-domain", "corp.example"]));
    let ca_pem = dir.read("mesh-agent-ca.pem");

    let out = dir.meshctl(&["tls", "cert", "create", "--server", "--node", "s1"]);
    assert_ok(&out);
    assert_eq!(
        stdout(&out),
        "==> Saved dc1-server-mesh-0.pem\n==> Saved dc1-server-mesh-0-key.pem\n"
    );
    let out = dir.meshctl(&[
        "tls", "cert", "create", "--server", "--node", "s2", "-o", "json",
    ]);
    assert_ok(&out);
    let v: serde_json::Value = serde_json::from_str(&stdout(&out)).expect("JSON");
    assert_eq!(v["Certificate"], "dc1-server-mesh-1.pem");
    assert_eq!(v["Key"], "dc1-server-mesh-1-key.pem");
    assert_eq!(v["ServerName"], "server.dc1.mesh");
    assert_ok(&dir.meshctl(&[
        "tls", "cert", "create", "--server", "--node", "s3", "--dc", "dc2", "--days", "10",
    ]));
    assert!(dir.path("dc2-server-mesh-0.pem").exists());

    // A gap is filled first.
    std::fs::remove_file(dir.path("dc1-server-mesh-0-key.pem")).expect("rm");
    std::fs::remove_file(dir.path("dc1-server-mesh-0.pem")).expect("rm");
    assert_ok(&dir.meshctl(&["tls", "cert", "create", "--server", "--node", "s4"]));

    let roots: Vec<CertificateDer<'static>> = ca::pem_to_ders(&ca_pem)
        .expect("roots")
        .into_iter()
        .map(CertificateDer::from)
        .collect();
    let mut store = rustls::RootCertStore::empty();
    for r in roots {
        store.add(r).expect("root");
    }
    let verifier = WebPkiServerVerifier::builder_with_provider(
        Arc::new(store),
        Arc::new(rustls::crypto::ring::default_provider()),
    )
    .build()
    .expect("verifier");

    for (file, node, dc) in [
        ("dc1-server-mesh-0", "s4", "dc1"),
        ("dc1-server-mesh-1", "s2", "dc1"),
        ("dc2-server-mesh-0", "s3", "dc2"),
    ] {
        let cert_pem = dir.read(&format!("{file}.pem"));
        let key_pem = dir.read(&format!("{file}-key.pem"));
        #[cfg(unix)]
        assert_eq!(mode(&dir.path(&format!("{file}-key.pem"))), 0o600, "{file}");
        let id = ca::verify_leaf(&ca_pem, &cert_pem).expect("issued by the CA");
        assert_eq!(id.trust_domain, "corp.example");
        assert_eq!(id.identity, Identity::Server(node.to_string()), "{file}");

        let leaf = CertificateDer::from(ca::pem_to_ders(&cert_pem).expect("leaf").remove(0));
        let name = ServerName::try_from(ca::server_name(dc)).expect("name");
        verifier
            .verify_server_cert(&leaf, &[], &name, &[], UnixTime::now())
            .unwrap_or_else(|e| panic!("{file} for {dc}: {e}"));
        let wrong = ServerName::try_from(ca::server_name("dc9")).expect("name");
        assert!(verifier
            .verify_server_cert(&leaf, &[], &wrong, &[], UnixTime::now())
            .is_err());

        // The key belongs to the certificate: rustls accepts the pair.
        let key =
            rustls::pki_types::PrivateKeyDer::from_pem_slice(key_pem.as_bytes()).expect("key");
        rustls::sign::CertifiedKey::from_der(
            vec![leaf],
            key,
            &rustls::crypto::ring::default_provider(),
        )
        .expect("key matches certificate");
    }

    // Another CA's root does not accept these certificates.
    let other = ca::create_ca("corp.example", 1).expect("other CA");
    assert!(ca::verify_leaf(&other.cert_pem, &dir.read("dc1-server-mesh-1.pem")).is_err());
}

#[test]
fn cert_create_errors() {
    let dir = Scratch::new("cert-errors");
    let err = assert_one_line_error(&dir.meshctl(&["tls", "cert", "create", "--node", "n1"]));
    assert!(
        err.contains(
            "only --server certificates are created offline; agents get theirs by enrolling \
             with a join token"
        ),
        "{err}"
    );

    // No CA here yet: the error names the missing file.
    let err =
        assert_one_line_error(&dir.meshctl(&["tls", "cert", "create", "--server", "--node", "s1"]));
    assert!(err.contains("mesh-agent-ca.pem"), "{err}");

    assert_ok(&dir.meshctl(&["tls", "ca", "create"]));
    let err = assert_one_line_error(&dir.meshctl(&["tls", "cert", "create", "--server"]));
    assert!(err.contains("--node"), "{err}");
    let err = assert_one_line_error(
        &dir.meshctl(&["tls", "cert", "create", "--server", "--node", "bad/name"]),
    );
    assert!(err.contains("bad/name"), "{err}");

    // A key from another CA is refused, naming both files.
    let other = ca::create_ca(ca::DEFAULT_TRUST_DOMAIN, 1).expect("other");
    std::fs::write(dir.path("other-key.pem"), other.key_pem).expect("write");
    let err = assert_one_line_error(&dir.meshctl(&[
        "tls",
        "cert",
        "create",
        "--server",
        "--node",
        "s1",
        "--key",
        "other-key.pem",
    ]));
    assert!(
        err.contains("other-key.pem") && err.contains("does not match"),
        "{err}"
    );
    assert!(!dir.path("dc1-server-mesh-0.pem").exists());
}
