//! The agent: opens the registry, registers this node, loads service definitions, starts the
//! check runner, the data plane, the HTTP API and DNS, tells systemd it is ready, reloads on
//! SIGHUP, and on SIGTERM/SIGINT stops accepting, drains for up to `drain_timeout` and stops.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use registry::{Check, Command, Node, Register, Status};
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use crate::api;
use crate::checks::CheckRunner;
use crate::cli::AgentArgs;
use crate::cluster::Cluster;
use crate::config::RuntimeConfig;
use crate::dns;
use crate::local::AgentInfo;
use crate::logging::Logging;
use crate::notify;
use crate::proxy::{Proxy, ProxyConfig};
use crate::reload::{self, ReloadMetrics, Reloader};
use crate::store::Store;
/// The node-level liveness check every agent registers (Consul calls it `serfHealth`).
pub const NODE_CHECK_ID: &str = "serfHealth";

/// Runs the agent until a shutdown signal. `args` are re-read at each reload.
pub async fn run(
    cfg: RuntimeConfig,
    args: AgentArgs,
    logging: Option<Logging>,
) -> anyhow::Result<()> {
    // SIGHUP's default action ends the process: take it over before anything else.
    let hangup = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup())
        .context("listening for SIGHUP")?;
    if let Ok(limit) = rlimit::increase_nofile_limit(u64::MAX) {
        tracing::debug!(limit, "open file limit");
    }
    // Keeps a dev-mode temporary data dir alive (and removes it at exit).
    let (_temp, data_dir) = data_dir(&cfg)?;
    let node_id = node_id(&data_dir)?;
    let agent = AgentInfo {
        node: cfg.node_name.clone(),
        node_id: node_id.clone(),
        address: cfg.advertise_addr.clone(),
        datacenter: cfg.datacenter.clone(),
        server: cfg.server,
        node_meta: cfg.node_meta.clone(),
    };
    info!(node = %agent.node, datacenter = %agent.datacenter, data_dir = %data_dir.display(),
          http = %cfg.http_addr, dev = cfg.dev, "starting meshd agent");

    // Parse service definitions before opening anything, so a bad file stops the start.
    let definitions =
        reload::load_definitions(cfg.config_dir.as_deref()).map_err(anyhow::Error::msg)?;

    let mut metrics = prometheus_client::registry::Registry::default();
    let reload_metrics = ReloadMetrics::new(&mut metrics);
    // `cancel` stops everything; `drain`, fired first at shutdown, stops accepting.
    let cancel = CancellationToken::new();
    let drain = cancel.child_token();
    // Enrollment (agents) may wait for servers: a signal meanwhile stops the start.
    let signal_cancel = cancel.clone();
    let early_signal = tokio::spawn(async move {
        shutdown_signal().await;
        signal_cancel.cancel();
    });
    let cluster = Cluster::start(
        &cfg,
        &data_dir,
        raft_id(&node_id),
        &mut metrics,
        cancel.clone(),
    )
    .await
    .context("joining the cluster")?;
    early_signal.abort();
    let Some(cluster) = cluster else {
        info!("stopped before the agent enrolled");
        return Ok(());
    };
    let store = cluster.store.clone();
    let single = cfg.dev || cfg.cluster.bootstrap_expect == 1;

    let checks = CheckRunner::new(
        store.clone(),
        agent.node.clone(),
        cfg.check_update_interval,
        &mut metrics,
    )
    .context("creating the check runner")?;
    let proxy = Proxy::start(
        ProxyConfig {
            node: agent.node.clone(),
            datacenter: agent.datacenter.clone(),
            leaf_ttl: cfg.connect.leaf_ttl,
            capture: cfg.connect.capture,
            listener_limit: cfg.connect.listener_limit,
            reserved_fds: cfg.connect.reserved_fds,
            max_connections: cfg.connect.max_connections,
        },
        store.clone(),
        cluster.transport.clone(),
        &mut metrics,
        cancel.child_token(),
    )
    .context("starting the data plane")?;
    let api_metrics = api::ApiMetrics::new(&mut metrics);
    let dns_metrics = dns::DnsMetrics::new(&mut metrics);
    let ctx = Arc::new(api::ApiContext::new(
        store.clone(),
        agent.clone(),
        checks.clone(),
        Arc::new(metrics),
        api_metrics,
        drain.clone(),
    ));
    let _ = ctx.leaves.set(proxy.leaves());
    if let Some(l) = &logging {
        let _ = ctx.logging.set(l.clone());
    }
    let (requests, reload_rx) = Reloader::channel();
    let _ = ctx.reload.set(requests);
    let reloader = Reloader {
        args,
        running: cfg.clone(),
        ctx: ctx.clone(),
        transport: cluster.transport.clone(),
        logging,
        from_files: reload::definition_ids(&definitions),
        metrics: reload_metrics,
    };
    // A single server leads at once: register before serving, so a bad definition stops the
    // start. In a cluster, registration waits for a leader in the background.
    let registration = if single {
        register_node(&store, &agent).await?;
        register_definitions(&ctx, &definitions).await?;
        None
    } else {
        let (ctx, store, agent, cancel) =
            (ctx.clone(), store.clone(), agent.clone(), cancel.clone());
        Some(tokio::spawn(async move {
            loop {
                let res = async {
                    register_node(&store, &agent).await?;
                    register_definitions(&ctx, &definitions).await
                }
                .await;
                match res {
                    Ok(()) => return,
                    Err(e) => warn!(
                        error = format!("{e:#}"),
                        "registering this node failed; retrying"
                    ),
                }
                tokio::select! {
                    _ = cancel.cancelled() => return,
                    _ = tokio::time::sleep(Duration::from_secs(1)) => {}
                }
            }
        }))
    };
    let checks_task = checks.spawn(cancel.clone());

    let listener = tokio::net::TcpListener::bind(cfg.http_addr)
        .await
        .with_context(|| format!("binding the HTTP API on {}", cfg.http_addr))?;
    let http_addr = listener.local_addr()?;
    let app = api::router(ctx.clone());
    let server_cancel = drain.clone();
    let server = tokio::spawn(async move {
        axum::serve(listener, app)
            .with_graceful_shutdown(async move { server_cancel.cancelled().await })
            .await
    });

    let dns = start_dns(&cfg, &store, dns_metrics, cancel.clone()).await?;

    let role = if cfg.server { "server" } else { "agent" };
    println!(
        "==> meshd serving: http=http://{http_addr} dns={} quic={} node={} datacenter={} data_dir={} role={role}",
        dns.addr,
        cluster.advertise,
        agent.node,
        agent.datacenter,
        data_dir.display()
    );
    info!(%http_addr, dns = %dns.addr, quic = %cluster.advertise, role, "serving");
    let reload_task = tokio::spawn(reloader.run(hangup, reload_rx, drain.clone()));
    let watchdog = notify::spawn_watchdog(cancel.clone());
    // Every listener serves now: the API, DNS and QUIC (bound when the cluster started).
    notify::ready(&format!("serving: http {http_addr}, dns {}", dns.addr));

    let left = tokio::select! {
        _ = shutdown_signal() => false,
        _ = ctx.leave_requested.cancelled() => true,
    };
    notify::stopping("draining connections");
    drain.cancel();
    // The configuration as last reloaded: `leave_on_terminate` and `drain_timeout` may differ.
    let running = reload_task.await.unwrap_or(cfg);
    if !left && running.cluster.leave_on_terminate {
        info!("leave_on_terminate: leaving the cluster");
        if let Err(e) = cluster.leave().await {
            warn!(error = %e, "leaving the cluster failed");
        }
    }
    let timeout = running.drain_timeout;
    info!(
        ?timeout,
        "shutting down: no new connections; draining HTTP requests and proxied connections"
    );
    if let Some(r) = registration {
        r.abort();
    }
    let http = async {
        match server.await {
            Ok(Ok(())) => {}
            Ok(Err(e)) => warn!(error = %e, "HTTP server error"),
            Err(e) => warn!(error = %e, "HTTP server task failed"),
        }
    };
    // The data plane bounds its own drain by `timeout`; the HTTP server gets the same bound
    // apart. (One timer around both raced the data plane's own: under load the outer fired
    // first and the log blamed HTTP requests for connections the data plane had cut.)
    let (left, http_drained) =
        tokio::join!(proxy.stop(timeout), tokio::time::timeout(timeout, http));
    if left > 0 {
        warn!(left, "proxied connections cut at the drain timeout");
    }
    if http_drained.is_err() {
        warn!(
            ?timeout,
            "HTTP requests did not finish within the drain timeout; closing"
        );
    }
    if left == 0 && http_drained.is_ok() {
        info!("drained");
    }
    cancel.cancel();
    if let Some(w) = watchdog {
        let _ = w.await;
    }
    let _ = checks_task.await;
    dns.stopped().await;
    cluster.shutdown().await;
    info!("stopped");
    Ok(())
}

async fn register_definitions(
    ctx: &api::ApiContext,
    definitions: &reload::Definitions,
) -> anyhow::Result<()> {
    reload::register_all(ctx, definitions, false)
        .await
        .map(|_| ())
        .map_err(anyhow::Error::msg)
}

/// Upserts this node and its liveness check.
async fn register_node(registry: &Store, agent: &AgentInfo) -> anyhow::Result<()> {
    let cmd = Command::Register(Register {
        node: Node {
            id: agent.node_id.clone(),
            node: agent.node.clone(),
            address: agent.address.clone(),
            datacenter: agent.datacenter.clone(),
            meta: agent.node_meta.clone(),
            ..Node::default()
        },
        skip_node_update: false,
        service: None,
        checks: vec![Check {
            node: agent.node.clone(),
            check_id: NODE_CHECK_ID.into(),
            name: "Mesh Health Status".into(),
            status: Status::Passing,
            output: "Agent alive and reachable".into(),
            ..Check::default()
        }],
        replace_service_checks: false,
    });
    let applied = registry.write(cmd).await.context("registering this node")?;
    if let registry::Response::Rejected(why) = applied.response {
        anyhow::bail!("registering this node was rejected: {why}");
    }
    Ok(())
}

fn data_dir(cfg: &RuntimeConfig) -> anyhow::Result<(Option<tempfile::TempDir>, PathBuf)> {
    match &cfg.data_dir {
        Some(d) => {
            std::fs::create_dir_all(d)
                .with_context(|| format!("creating data dir {}", d.display()))?;
            Ok((None, d.clone()))
        }
        None => {
            let t = tempfile::Builder::new()
                .prefix("meshd-dev-")
                .tempdir()
                .context("creating a temporary data dir")?;
            let p = t.path().to_path_buf();
            Ok((Some(t), p))
        }
    }
}

/// The node's stable ID, kept in `<data_dir>/node-id`.
fn node_id(dir: &Path) -> anyhow::Result<String> {
    let path = dir.join("node-id");
    match std::fs::read_to_string(&path) {
        Ok(s) => {
            let id = s.trim();
            uuid::Uuid::parse_str(id)
                .with_context(|| format!("{} does not hold a UUID", path.display()))?;
            Ok(id.to_string())
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            let id = uuid::Uuid::new_v4().to_string();
            std::fs::write(&path, format!("{id}\n"))
                .with_context(|| format!("writing {}", path.display()))?;
            Ok(id)
        }
        Err(e) => Err(e).with_context(|| format!("reading {}", path.display())),
    }
}

/// The Raft node ID: the first 8 bytes of the node UUID.
fn raft_id(node_id: &str) -> u64 {
    uuid::Uuid::parse_str(node_id)
        .map(|u| {
            let b = u.as_bytes();
            u64::from_be_bytes([b[0], b[1], b[2], b[3], b[4], b[5], b[6], b[7]])
        })
        .unwrap_or(1)
        .max(1)
}

async fn shutdown_signal() {
    use tokio::signal::unix::{signal, SignalKind};
    let mut term = match signal(SignalKind::terminate()) {
        Ok(s) => s,
        Err(e) => {
            warn!(error = %e, "cannot listen for SIGTERM");
            let _ = tokio::signal::ctrl_c().await;
            return;
        }
    };
    tokio::select! {
        _ = term.recv() => info!("SIGTERM received"),
        _ = tokio::signal::ctrl_c() => info!("SIGINT received"),
    }
}

/// Starts the DNS server. In dev mode a taken default port falls back to a free one, so a
/// second dev agent on the machine still starts.
async fn start_dns(
    cfg: &RuntimeConfig,
    store: &Store,
    metrics: dns::DnsMetrics,
    cancel: CancellationToken,
) -> anyhow::Result<dns::Dns> {
    let start = |dns_cfg| {
        dns::start(
            dns_cfg,
            cfg.datacenter.clone(),
            cfg.cluster.advertise_ip,
            store.clone(),
            metrics.clone(),
            cancel.clone(),
        )
    };
    match start(cfg.dns.clone()).await {
        Ok(d) => Ok(d),
        Err(e) if cfg.dev && cfg.dns.addr.port() != 0 => {
            let mut fallback = cfg.dns.clone();
            fallback.addr.set_port(0);
            warn!(
                error = format!("{e:#}"),
                "DNS port taken; dev mode uses a free port"
            );
            start(fallback).await
        }
        Err(e) => Err(e),
    }
}
