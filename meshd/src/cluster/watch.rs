//! The agent side of the watch stream: keeps the local [`View`] current from one server at a
//! time (a snapshot first if the view is empty or too far behind, then the commands as they
//! are applied), resumes from the view's index after a reconnect, and moves to another server
//! when the current one fails or goes quiet.

use std::sync::Arc;
use std::time::Duration;

use prometheus_client::metrics::counter::Counter;
use registry::view::View;
use tokio_util::sync::CancellationToken;

use super::client::ClusterClient;
use super::proto::{Request, WatchFrame};
use crate::transport::frame::{read_frame, write_frame};
use crate::transport::ALPN_RPC;

/// A server that sends nothing (not even a keepalive) for this long is given up.
const QUIET_LIMIT: Duration = Duration::from_secs(3);

#[derive(Clone, Default)]
pub struct WatchMetrics {
    pub snapshots: Counter,
    pub reconnects: Counter,
}

/// Runs until `cancel`.
pub async fn run(
    view: View,
    client: Arc<ClusterClient>,
    metrics: WatchMetrics,
    cancel: CancellationToken,
) {
    let mut failures = 0u64;
    let mut last_failed: Option<std::net::SocketAddr> = None;
    loop {
        // The server that just failed goes last: another one is more likely to answer.
        let mut servers = client.servers();
        if let Some(bad) = last_failed {
            if servers.len() > 1 {
                servers.retain(|a| *a != bad);
                servers.push(bad);
            }
        }
        for addr in servers {
            if cancel.is_cancelled() {
                return;
            }
            let followed = tokio::select! {
                _ = cancel.cancelled() => return,
                r = follow(&view, &client, addr, &metrics, &cancel) => r,
            };
            match followed {
                Ok(()) => return,
                Err(e) => {
                    failures += 1;
                    last_failed = Some(addr);
                    metrics.reconnects.inc();
                    if failures % 10 == 1 {
                        tracing::warn!(server = %addr, error = %e, index = view.applied(), "watch stream lost; trying another server");
                    } else {
                        tracing::debug!(server = %addr, error = %e, "watch stream lost");
                    }
                }
            }
        }
        tokio::select! {
            _ = cancel.cancelled() => return,
            _ = tokio::time::sleep(Duration::from_millis(300)) => {}
        }
    }
}

/// Follows one server until it fails (`Err`) or `cancel` (`Ok`).
async fn follow(
    view: &View,
    client: &ClusterClient,
    addr: std::net::SocketAddr,
    metrics: &WatchMetrics,
    cancel: &CancellationToken,
) -> anyhow::Result<()> {
    let (mut send, mut recv) = client.transport().open(addr, ALPN_RPC).await?;
    let from = view.applied();
    write_frame(&mut send, &Request::Watch { from }).await?;
    let _ = send.finish();
    tracing::info!(server = %addr, from, "following the registry");
    loop {
        let frame = tokio::select! {
            _ = cancel.cancelled() => return Ok(()),
            f = tokio::time::timeout(QUIET_LIMIT, read_frame::<WatchFrame>(&mut recv)) => f,
        };
        let frame = match frame {
            Err(_) => anyhow::bail!("no frame for {QUIET_LIMIT:?}"),
            Ok(Err(e)) => return Err(e.into()),
            Ok(Ok(None)) => anyhow::bail!("server ended the stream"),
            Ok(Ok(Some(f))) => f,
        };
        client.answered(addr);
        match frame {
            WatchFrame::Snapshot { image, index } => {
                metrics.snapshots.inc();
                tracing::info!(server = %addr, index, "loaded a registry snapshot");
                view.load(*image, index);
            }
            WatchFrame::Changes {
                entries,
                upto,
                leader,
            } => {
                view.apply(&entries, upto);
                client.learn(&[], leader.as_deref());
            }
            WatchFrame::Error { message } => anyhow::bail!("server: {message}"),
        }
    }
}
