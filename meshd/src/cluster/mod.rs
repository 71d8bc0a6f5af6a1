//! The cluster: how this host takes part, as a server (Raft voter over QUIC, answering agents)
//! or as an agent (enrolled, following a server's watch stream, heartbeating).
//!
//! Layout: [`proto`] (wire messages), [`raft_net`] (Raft RPC over QUIC), [`server`] (a
//! server's RPC handlers), [`bootstrap`] (forming or joining the Raft cluster, CA import),
//! [`client`] (requests to servers with failover), [`enroll`] (an agent's certificate),
//! [`watch`] (an agent's local view), [`liveness`] (heartbeats and failure detection).

pub mod bootstrap;
pub mod client;
pub mod enroll;
pub mod liveness;
pub mod proto;
pub mod raft_net;
pub mod server;
pub mod watch;

use std::collections::BTreeSet;
use std::net::SocketAddr;
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::{bail, Context as _};
use prometheus_client::metrics::gauge::Gauge;
use registry::ca::{self, Identity};
use registry::model::{CaRoot, MemberRole};
use registry::view::View;
use registry::{Bootstrap, Registry, RegistryConfig};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::config::RuntimeConfig;
use crate::store::Store;
use crate::transport::tls::TlsMaterial;
use crate::transport::{Transport, TransportMetrics, AGENT_ALPNS, SERVER_ALPNS};
use client::ClusterClient;
use liveness::{Liveness, LivenessMetrics};
use proto::{Heartbeat, ServerInfo};
use server::ServerCtx;

/// How long shutdown waits for the cluster's tasks.
const STOP_TIMEOUT: Duration = Duration::from_secs(5);

/// This host's part in the cluster; owns its tasks.
pub struct Cluster {
    pub store: Store,
    /// The QUIC address other hosts reach this one at.
    pub advertise: SocketAddr,
    node: String,
    /// The host's QUIC endpoint (the data plane opens tunnels on it).
    pub transport: Arc<Transport>,
    registry: Option<Registry>,
    cancel: CancellationToken,
    tasks: TaskTracker,
}

fn read_pem(path: &Path, what: &str) -> anyhow::Result<String> {
    std::fs::read_to_string(path).with_context(|| format!("reading {what} {}", path.display()))
}

fn register_metrics(metrics: &mut prometheus_client::registry::Registry) -> TransportMetrics {
    let t = TransportMetrics::default();
    metrics.register(
        "meshd_quic_handshake_failures",
        "QUIC/TLS handshakes that failed, by direction and reason (certificate, timeout, other)",
        t.handshake_failures.clone(),
    );
    metrics.register(
        "meshd_quic_connections",
        "Inbound QUIC connections open",
        t.connections.clone(),
    );
    t
}

/// Binds the endpoint, falling back to an ephemeral port in dev mode when the default one is
/// taken (several dev agents on one machine).
fn bind(
    cfg: &RuntimeConfig,
    roots: Vec<rustls_pki_types::CertificateDer<'static>>,
    material: Option<TlsMaterial>,
    alpns: &[&[u8]],
    metrics: TransportMetrics,
) -> anyhow::Result<Transport> {
    let server_name = ca::server_name(&cfg.datacenter);
    match Transport::bind(
        cfg.cluster.bind,
        roots.clone(),
        material.clone(),
        server_name.clone(),
        alpns,
        metrics.clone(),
    ) {
        Ok(t) => Ok(t),
        Err(e) if cfg.dev => {
            let fallback = SocketAddr::new(cfg.cluster.bind.ip(), 0);
            tracing::warn!(error = %e, %fallback, "dev mode: the QUIC port is taken; using an ephemeral one");
            Transport::bind(fallback, roots, material, server_name, alpns, metrics)
                .context("binding the QUIC endpoint")
        }
        Err(e) => Err(e).context("binding the QUIC endpoint"),
    }
}

impl Cluster {
    /// Starts this host's part. Servers return at once (the cluster forms in the
    /// background); agents return once enrolled. `Ok(None)`: cancelled while enrolling.
    pub async fn start(
        cfg: &RuntimeConfig,
        data_dir: &Path,
        raft_id: u64,
        metrics: &mut prometheus_client::registry::Registry,
        cancel: CancellationToken,
    ) -> anyhow::Result<Option<Cluster>> {
        let tm = register_metrics(metrics);
        if cfg.server {
            Cluster::start_server(cfg, data_dir, raft_id, metrics, tm, cancel)
                .await
                .map(Some)
        } else {
            Cluster::start_agent(cfg, data_dir, metrics, tm, cancel).await
        }
    }

    async fn start_server(
        cfg: &RuntimeConfig,
        data_dir: &Path,
        raft_id: u64,
        metrics: &mut prometheus_client::registry::Registry,
        tm: TransportMetrics,
        cancel: CancellationToken,
    ) -> anyhow::Result<Cluster> {
        let cc = &cfg.cluster;
        let (material, ca_root) = match (&cc.tls.ca_file, &cc.tls.cert_file, &cc.tls.key_file) {
            (Some(ca_file), Some(cert), Some(key)) => {
                let material = TlsMaterial::load(ca_file, cert, key)
                    .context("loading this server's TLS files")?;
                let ca_pem = read_pem(ca_file, "the CA certificate")?;
                let root = match &cc.tls.ca_key_file {
                    Some(k) => {
                        let key_pem = read_pem(k, "the CA key")?;
                        let bundle = ca::load_ca(&ca_pem, &key_pem).with_context(|| {
                            format!(
                                "ca_key_file {} does not match ca_file {}",
                                k.display(),
                                ca_file.display()
                            )
                        })?;
                        Some(ca_root(&bundle))
                    }
                    None => None,
                };
                (material, root)
            }
            (None, None, None) if cfg.dev => {
                let bundle =
                    ca::create_ca(ca::DEFAULT_TRUST_DOMAIN, 3650).context("creating the dev CA")?;
                let leaf = ca::issue_server_cert(&bundle, &cfg.node_name, &cfg.datacenter, 3650)
                    .context("creating the dev server certificate")?;
                let material =
                    TlsMaterial::from_pem(&bundle.cert_pem, &leaf.cert_pem, &leaf.key_pem)
                        .context("the dev certificates")?;
                (material, Some(ca_root(&bundle)))
            }
            _ => bail!("a server needs ca_file, cert_file and key_file (or --dev)"),
        };
        let me_id = material
            .chain
            .first()
            .map(|c| ca::spiffe_id_of(c))
            .transpose()
            .context("this server's certificate")?;
        match me_id.map(|i| i.identity) {
            Some(Identity::Server(n)) if n == cfg.node_name => {}
            other => bail!(
                "cert_file is not a server certificate for node {:?} (it is for {other:?}); \
                 create one with `meshctl tls cert create --server --node {}`",
                cfg.node_name,
                cfg.node_name
            ),
        }

        let roots = material.roots.clone();
        let transport = Arc::new(bind(cfg, roots, Some(material), SERVER_ALPNS, tm)?);
        let local = transport.local_addr().context("QUIC local address")?;
        let advertise = SocketAddr::new(cc.advertise_ip, local.port());

        let single = cc.bootstrap_expect == 1;
        let registry = Registry::open(
            RegistryConfig {
                data_dir: data_dir.join("raft"),
                node_id: raft_id,
                advertise: advertise.to_string(),
                snapshot_threshold: cfg.snapshot_threshold,
                cache_capacity: cfg.cache_bytes,
                bootstrap: if single {
                    Bootstrap::Single
                } else {
                    Bootstrap::Cluster
                },
            },
            metrics,
            raft_net::QuicNetwork {
                transport: transport.clone(),
            },
        )
        .await
        .context("opening the registry")?;

        let client = Arc::new(ClusterClient::new(transport.clone(), cc.retry_join.clone()));
        let lm = LivenessMetrics::register(metrics);
        let watchers = Gauge::default();
        metrics.register(
            "meshd_watch_subscribers",
            "Agents' watch streams this server feeds",
            watchers.clone(),
        );
        let me = ServerInfo {
            id: raft_id,
            node: cfg.node_name.clone(),
            addr: advertise.to_string(),
        };
        let ctx = Arc::new(ServerCtx {
            registry: registry.clone(),
            client: client.clone(),
            me: me.clone(),
            datacenter: cfg.datacenter.clone(),
            join_token: cc.join_token.clone(),
            known: Mutex::new(BTreeSet::new()),
            liveness: Arc::new(Liveness::new(cc.liveness_timeout, lm)),
            watchers,
            cancel: cancel.clone(),
            snapshot_cache: Mutex::new(None),
        });
        let tasks = TaskTracker::new();
        let handler_ctx = ctx.clone();
        let handler: crate::transport::Handler =
            Arc::new(move |s| Box::pin(handler_ctx.clone().serve(s)));
        tasks.spawn(transport.clone().serve(handler, cancel.clone()));
        if !single {
            tasks.spawn(bootstrap::form_or_join(
                ctx.clone(),
                cc.bootstrap_expect,
                cc.retry_join.clone(),
                cancel.clone(),
            ));
        }
        if let Some(root) = ca_root {
            tasks.spawn(bootstrap::import_ca(ctx.clone(), root, cancel.clone()));
        }
        tasks.spawn(bootstrap::set_virtual_ip_range(
            ctx.clone(),
            cfg.dns.virtual_ip_range.clone(),
            cancel.clone(),
        ));
        if let Some(action) = cfg.connect.default_intention_policy {
            tasks.spawn(bootstrap::set_default_intention_policy(
                ctx.clone(),
                action,
                cancel.clone(),
            ));
        }
        let hb = Heartbeat {
            node: cfg.node_name.clone(),
            addr: advertise.to_string(),
            role: MemberRole::Server,
            datacenter: cfg.datacenter.clone(),
        };
        tasks.spawn(
            ctx.liveness
                .clone()
                .run_server(hb, registry.clone(), client, cancel.clone()),
        );
        tracing::info!(%advertise, raft_id, bootstrap_expect = cc.bootstrap_expect, "server started");
        Ok(Cluster {
            store: Store::server(ctx),
            advertise,
            node: cfg.node_name.clone(),
            transport,
            registry: Some(registry),
            cancel,
            tasks,
        })
    }

    async fn start_agent(
        cfg: &RuntimeConfig,
        data_dir: &Path,
        metrics: &mut prometheus_client::registry::Registry,
        tm: TransportMetrics,
        cancel: CancellationToken,
    ) -> anyhow::Result<Option<Cluster>> {
        let cc = &cfg.cluster;
        let Some(ca_file) = &cc.tls.ca_file else {
            bail!("an agent needs ca_file (the mesh CA certificate) to verify the servers");
        };
        let ca_pem = read_pem(ca_file, "the CA certificate")?;
        let roots = crate::transport::tls::roots_from_pem(&ca_pem)
            .with_context(|| format!("ca_file {}", ca_file.display()))?;
        let transport = Arc::new(bind(cfg, roots, None, &[], tm)?);
        let enrollment = enroll::Enrollment {
            cfg: cc,
            ca_pem: &ca_pem,
            ca_file,
            node: &cfg.node_name,
            datacenter: &cfg.datacenter,
            data_dir,
        };
        let Some(material) = enroll::node_identity(enrollment, &transport, &cancel).await? else {
            return Ok(None);
        };
        transport
            .set_identity(material, AGENT_ALPNS)
            .context("installing the node certificate")?;
        let local = transport.local_addr().context("QUIC local address")?;
        let advertise = SocketAddr::new(cc.advertise_ip, local.port());

        let client = Arc::new(ClusterClient::new(transport.clone(), cc.retry_join.clone()));
        let view = View::new();
        let wm = watch::WatchMetrics::default();
        metrics.register(
            "meshd_watch_snapshots_loaded",
            "Full registry snapshots this agent loaded from a server",
            wm.snapshots.clone(),
        );
        metrics.register(
            "meshd_watch_reconnects",
            "Times this agent's watch stream was lost and reopened",
            wm.reconnects.clone(),
        );
        let lm = LivenessMetrics::register(metrics);
        let tasks = TaskTracker::new();
        // An agent serves tunnels only (their handler is set when the data plane starts).
        let refuse: crate::transport::Handler = Arc::new(|s| {
            Box::pin(async move {
                tracing::debug!(remote = %s.remote, alpn = %String::from_utf8_lossy(&s.alpn), "stream refused: an agent serves tunnels only");
            })
        });
        tasks.spawn(transport.clone().serve(refuse, cancel.clone()));
        tasks.spawn(watch::run(view.clone(), client.clone(), wm, cancel.clone()));
        let hb = Heartbeat {
            node: cfg.node_name.clone(),
            addr: advertise.to_string(),
            role: MemberRole::Agent,
            datacenter: cfg.datacenter.clone(),
        };
        tasks.spawn(liveness::run_agent(
            hb,
            cc.heartbeat_interval,
            client.clone(),
            lm,
            cancel.clone(),
        ));
        // Serve reads from a loaded view, not an empty one (bounded: a slow cluster only
        // delays the first reads' content).
        if !view.wait_for(1, Duration::from_secs(10)).await {
            tracing::warn!("no registry snapshot from a server within 10s; serving an empty view until one arrives");
        }
        tracing::info!(%advertise, "agent started");
        Ok(Some(Cluster {
            store: Store::agent(view, client),
            advertise,
            node: cfg.node_name.clone(),
            transport,
            registry: None,
            cancel,
            tasks,
        }))
    }

    /// Leaves the cluster (see [`Store::leave`]).
    pub async fn leave(&self) -> anyhow::Result<()> {
        self.store
            .leave(&self.node)
            .await
            .map_err(|(kind, msg)| anyhow::anyhow!("leave failed ({kind:?}): {msg}"))
    }

    /// Stops the tasks, closes the endpoint and (on a server) the registry.
    pub async fn shutdown(&self) {
        self.cancel.cancel();
        self.tasks.close();
        if tokio::time::timeout(STOP_TIMEOUT, self.tasks.wait())
            .await
            .is_err()
        {
            tracing::warn!("cluster tasks did not stop within {STOP_TIMEOUT:?}");
        }
        self.transport.close();
        if let Some(r) = &self.registry {
            r.shutdown().await;
        }
    }
}

/// The registry record of a CA root.
pub fn ca_root(bundle: &ca::CaBundle) -> CaRoot {
    let id = format!(
        "{:016x}",
        registry::archive::fnv1a(bundle.cert_pem.as_bytes())
    );
    CaRoot {
        id,
        cert_pem: bundle.cert_pem.clone(),
        key_pem: bundle.key_pem.clone(),
        trust_domain: bundle.trust_domain.clone(),
        active: true,
        create_index: 0,
        modify_index: 0,
    }
}
