//! The systemd readiness protocol (`sd_notify`): `READY=1` once the API, DNS and QUIC
//! listeners serve, `RELOADING=1` … `READY=1` around a reload, `STOPPING=1` on shutdown, and
//! `WATCHDOG=1` pings at half of `WatchdogSec` while the runtime is alive.
//!
//! Outside systemd (`NOTIFY_SOCKET` unset) every call is a no-op. A failed send is logged once
//! per kind and never stops meshd: the service manager, not meshd, decides what a missing
//! notification means.

use std::time::Duration;

use sd_notify::NotifyState;
use tokio_util::sync::CancellationToken;

fn send(what: &str, states: &[NotifyState]) {
    if let Err(e) = sd_notify::notify(states) {
        tracing::warn!(error = %e, notification = what, "cannot notify the service manager");
    }
}

/// `READY=1` with a status line.
pub fn ready(status: &str) {
    send("READY", &[NotifyState::Ready, NotifyState::Status(status)]);
}

/// `RELOADING=1` with the monotonic time systemd 253+ asks for (older ones ignore it).
pub fn reloading() {
    let mut states = vec![NotifyState::Reloading];
    if let Ok(now) = NotifyState::monotonic_usec_now() {
        states.push(now);
    }
    states.push(NotifyState::Status("reloading the configuration"));
    send("RELOADING", &states);
}

/// `STOPPING=1` with the reason.
pub fn stopping(status: &str) {
    send(
        "STOPPING",
        &[NotifyState::Stopping, NotifyState::Status(status)],
    );
}

/// Pings the watchdog at half its interval until `cancel`, when systemd asked for one
/// (`WATCHDOG_USEC`, and `WATCHDOG_PID` unset or this process). The pings come from a runtime
/// task, so a wedged runtime stops them and systemd restarts meshd.
pub fn spawn_watchdog(cancel: CancellationToken) -> Option<tokio::task::JoinHandle<()>> {
    let interval = sd_notify::watchdog_enabled()?;
    let every = (interval / 2).max(Duration::from_millis(10));
    tracing::info!(interval = ?interval, ping_every = ?every, "systemd watchdog enabled");
    Some(tokio::spawn(async move {
        let mut tick = tokio::time::interval(every);
        loop {
            tokio::select! {
                _ = cancel.cancelled() => return,
                _ = tick.tick() => send("WATCHDOG", &[NotifyState::Watchdog]),
            }
        }
    }))
}
