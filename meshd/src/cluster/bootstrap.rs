//! How a server comes into the cluster: with `bootstrap_expect = N` it announces itself to the
//! `retry_join` addresses until N servers know each other, and the one with the smallest Raft
//! ID forms the cluster of those N; a server that finds a formed cluster asks to join it (as a
//! learner, promoted to voter once caught up). Both retry until they succeed or meshd stops.
//! Once the cluster has a leader, a server holding the CA key imports the root into the
//! registry, so any leader can sign, and every server writes its configured virtual IP range
//! if the registry's differs.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::{Arc, PoisonError};
use std::time::Duration;

use registry::intention::Action;
use registry::model::CaRoot;
use registry::{Command, Ipv4Cidr, Response};
use tokio_util::sync::CancellationToken;

use super::proto::{Reply, Request, ServerInfo};
use super::server::ServerCtx;

const RETRY: Duration = Duration::from_secs(1);

/// Forms or joins the cluster; returns once this server belongs to one (or on cancel).
pub async fn form_or_join(
    ctx: Arc<ServerCtx>,
    expect: u32,
    join: Vec<SocketAddr>,
    cancel: CancellationToken,
) {
    tokio::select! {
        _ = cancel.cancelled() => {}
        _ = form_or_join_inner(ctx, expect, join, cancel.clone()) => {}
    }
}

async fn form_or_join_inner(
    ctx: Arc<ServerCtx>,
    expect: u32,
    join: Vec<SocketAddr>,
    cancel: CancellationToken,
) {
    let me = ctx.me.clone();
    ctx.known
        .lock()
        .unwrap_or_else(PoisonError::into_inner)
        .insert(me.clone());
    let mut attempt = 0u64;
    loop {
        if ctx.registry.is_initialized().await {
            tracing::info!("this server belongs to a formed cluster");
            return;
        }
        attempt += 1;
        let mut formed_at = None;
        for addr in &join {
            if addr.to_string() == me.addr {
                continue;
            }
            match ctx
                .client
                .request_to(*addr, &Request::Hello(me.clone()), Duration::from_secs(3))
                .await
            {
                Ok(Reply::Hello {
                    me: them,
                    initialized,
                    known,
                }) => {
                    let mut k = ctx.known.lock().unwrap_or_else(PoisonError::into_inner);
                    k.insert(them);
                    k.extend(known);
                    if initialized {
                        formed_at = Some(*addr);
                    }
                }
                Ok(other) => {
                    tracing::warn!(%addr, reply = ?other, "unexpected answer to hello")
                }
                Err(e) if e.is_certificate_error() => {
                    tracing::warn!(%addr, error = %e, "TLS handshake refused: the server does not accept this server's certificate, or its certificate is not from our CA; retrying");
                }
                Err(e) => {
                    if attempt % 10 == 1 {
                        tracing::warn!(%addr, error = %e, "cannot reach a server to join; retrying");
                    } else {
                        tracing::debug!(%addr, error = %e, "cannot reach a server to join; retrying");
                    }
                }
            }
        }
        if let Some(addr) = formed_at {
            tracing::info!(%addr, "a cluster is formed; asking to join it");
            match ctx
                .client
                .request_to(
                    addr,
                    &Request::JoinServer(me.clone()),
                    Duration::from_secs(130),
                )
                .await
            {
                Ok(Reply::Ok { .. }) => {
                    tracing::info!("joined the cluster as a voter");
                }
                Ok(Reply::Error { message, .. }) => {
                    tracing::warn!(%addr, reason = %message, "join refused; retrying")
                }
                Ok(other) => tracing::warn!(%addr, reply = ?other, "unexpected answer to join"),
                Err(e) => tracing::warn!(%addr, error = %e, "join failed; retrying"),
            }
        } else if expect > 0 {
            let known: Vec<ServerInfo> = ctx
                .known
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .iter()
                .cloned()
                .collect();
            let mut by_id = known.clone();
            by_id.sort_by_key(|s| s.id);
            by_id.dedup_by_key(|s| s.id);
            if by_id.len() >= expect as usize {
                let chosen: Vec<ServerInfo> = by_id.into_iter().take(expect as usize).collect();
                if chosen.first().map(|s| s.id) == Some(me.id) {
                    let servers: BTreeMap<u64, String> =
                        chosen.iter().map(|s| (s.id, s.addr.clone())).collect();
                    tracing::info!(servers = ?chosen, "bootstrap_expect reached; forming the cluster");
                    if let Err(e) = ctx.registry.initialize(servers).await {
                        tracing::warn!(error = %e, "forming the cluster failed; retrying");
                    }
                } else {
                    tracing::debug!(servers = ?chosen, "bootstrap_expect reached; waiting for the server with the smallest ID to form the cluster");
                }
            } else if attempt % 10 == 1 {
                tracing::info!(
                    known = known.len(),
                    expect,
                    "waiting for more servers before bootstrapping"
                );
            }
        }
        tokio::select! {
            _ = cancel.cancelled() => return,
            _ = tokio::time::sleep(RETRY) => {}
        }
    }
}

/// Imports `root` (with its key) into the registry once there is a leader, unless a root is
/// there already. Retries until it is done or meshd stops.
pub async fn import_ca(ctx: Arc<ServerCtx>, root: CaRoot, cancel: CancellationToken) {
    retry_until_done(&cancel, || async {
        if ctx.registry.read().active_ca_root().is_some() {
            return true;
        }
        match ctx.write(Command::CaInit(root.clone()), true).await {
            Reply::Written { index, .. } => {
                tracing::info!(index, trust_domain = %root.trust_domain, "CA root imported into the registry");
                true
            }
            other => {
                tracing::debug!(reply = ?other, "CA import not done yet; retrying");
                false
            }
        }
    })
    .await
}

/// Sets the registry's virtual IP range to this server's configured one (when it differs).
pub async fn set_virtual_ip_range(ctx: Arc<ServerCtx>, cidr: String, cancel: CancellationToken) {
    let range: Ipv4Cidr = match cidr.parse() {
        Ok(r) => r,
        Err(e) => {
            tracing::error!(%cidr, error = %e, "invalid virtual IP range; keeping the registry's");
            return;
        }
    };
    let cmd = Command::VirtualIpRange {
        cidr: range.to_string(),
    };
    ensure_setting(
        ctx,
        cancel,
        "virtual IP range",
        range,
        |st| st.virtual_ip_range(),
        cmd,
    )
    .await
}

/// Sets the cluster-wide default intention policy to this server's configured one.
pub async fn set_default_intention_policy(
    ctx: Arc<ServerCtx>,
    action: Action,
    cancel: CancellationToken,
) {
    let cmd = Command::DefaultIntentionPolicy { action };
    let read = |st: &registry::State| st.default_intention_policy();
    ensure_setting(ctx, cancel, "default intention policy", action, read, cmd).await
}

/// Writes `cmd` until the registry's setting (read by `read`, consistently) is `want`.
async fn ensure_setting<T>(
    ctx: Arc<ServerCtx>,
    cancel: CancellationToken,
    what: &'static str,
    want: T,
    read: impl Fn(&registry::State) -> T,
    cmd: Command,
) where
    T: PartialEq + std::fmt::Debug,
{
    retry_until_done(&cancel, || async {
        let current = match consistent_read(&ctx, &read).await {
            Ok(current) if current == want => {
                tracing::debug!(?want, "{what} already set");
                return true;
            }
            Ok(current) => current,
            Err(e) => {
                tracing::debug!(error = %e, "{what} not read yet; retrying");
                return false;
            }
        };
        match ctx.write(cmd.clone(), true).await {
            Reply::Written {
                index,
                response: Response::Rejected(why),
            } => {
                tracing::error!(index, ?want, reason = %why, "{what} refused");
                true
            }
            Reply::Written { index, .. } => {
                tracing::info!(index, ?want, previous = ?current, "{what} set");
                true
            }
            other => {
                tracing::debug!(reply = ?other, "{what} not set yet; retrying");
                false
            }
        }
    })
    .await
}

/// Runs `attempt` every [`RETRY`] until it says it is done or meshd stops (which also stops an
/// attempt under way).
async fn retry_until_done<F, Fut>(cancel: &CancellationToken, mut attempt: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    loop {
        tokio::select! {
            _ = cancel.cancelled() => return,
            done = attempt() => if done { return },
        }
        tokio::select! {
            _ = cancel.cancelled() => return,
            _ = tokio::time::sleep(RETRY) => {}
        }
    }
}

/// A read of the local state once it has applied the leader's read index.
async fn consistent_read<T>(
    ctx: &ServerCtx,
    read: impl Fn(&registry::State) -> T,
) -> Result<T, String> {
    let index = ctx.read_index().await.map_err(|e| e.to_string())?;
    if !ctx.registry.wait_applied(index, RETRY * 5).await {
        return Err(format!(
            "the local state did not reach the read index {index}"
        ));
    }
    Ok(read(&ctx.registry.read()))
}
