//! Liveness: every host heartbeats to a server; servers pass what they saw to the leader; the
//! leader marks a member failed when no server heard from it for `liveness_timeout` (its
//! `serfHealth` check turns critical, so its services leave health queries everywhere), and
//! alive again when it is heard from.
//!
//! A new leader waits one full timeout before failing anyone, since it has not yet heard the
//! heartbeats that went to other servers. A left member is revived only by a heartbeat received
//! after the leader saw it leave, so a heartbeat in flight during a leave does not undo it.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::gauge::Gauge;
use registry::model::MemberStatus;
use registry::{Command, Registry};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use super::client::ClusterClient;
use super::proto::{Heartbeat, Request, Seen};

const TICK: Duration = Duration::from_millis(500);

#[derive(Clone, Default)]
pub struct LivenessMetrics {
    /// Members marked failed by this server as leader.
    pub failed: Counter,
    /// Heartbeats an agent could not deliver.
    pub heartbeats_failed: Counter,
    /// Heartbeats this server received.
    pub heartbeats_received: Counter,
    /// Members alive in the registry, as this leader sees them.
    pub alive: Gauge,
}

impl LivenessMetrics {
    pub fn register(reg: &mut prometheus_client::registry::Registry) -> LivenessMetrics {
        let m = LivenessMetrics::default();
        reg.register(
            "meshd_liveness_members_failed",
            "Members this server, as leader, marked failed after missing heartbeats for the liveness bound",
            m.failed.clone(),
        );
        reg.register(
            "meshd_liveness_heartbeats_missed",
            "Heartbeats this host could not deliver to any server",
            m.heartbeats_failed.clone(),
        );
        reg.register(
            "meshd_liveness_heartbeats_received",
            "Heartbeats this server received from hosts",
            m.heartbeats_received.clone(),
        );
        reg.register(
            "meshd_liveness_members_alive",
            "Members the leader sees alive",
            m.alive.clone(),
        );
        m
    }
}

/// What a server heard; on the leader also what other servers reported.
pub struct Liveness {
    seen: Mutex<HashMap<String, (Instant, Heartbeat)>>,
    timeout: Duration,
    pub metrics: LivenessMetrics,
}

impl Liveness {
    pub fn new(timeout: Duration, metrics: LivenessMetrics) -> Liveness {
        Liveness {
            seen: Mutex::default(),
            timeout,
            metrics,
        }
    }

    /// Records a heartbeat received `age` ago.
    pub fn record(&self, hb: Heartbeat, age: Duration) {
        let at = Instant::now().checked_sub(age).unwrap_or_else(Instant::now);
        let mut seen = self.seen.lock().unwrap_or_else(PoisonError::into_inner);
        match seen.get(&hb.node) {
            Some((t, _)) if *t >= at => {}
            _ => {
                seen.insert(hb.node.clone(), (at, hb));
            }
        }
    }

    fn recent(&self) -> Vec<Seen> {
        let now = Instant::now();
        let mut seen = self.seen.lock().unwrap_or_else(PoisonError::into_inner);
        seen.retain(|_, (t, _)| now.duration_since(*t) < self.timeout * 3);
        seen.values()
            .filter(|(t, _)| now.duration_since(*t) < self.timeout)
            .map(|(t, hb)| Seen {
                heartbeat: hb.clone(),
                age_ms: u64::try_from(now.duration_since(*t).as_millis()).unwrap_or(u64::MAX),
            })
            .collect()
    }

    /// Runs on every server until `cancel`: records this server's own heartbeat, reports to the
    /// leader when following, and decides alive/failed when leading.
    pub async fn run_server(
        self: Arc<Self>,
        me: Heartbeat,
        registry: Registry,
        client: Arc<ClusterClient>,
        cancel: CancellationToken,
    ) {
        let mut leading_since: Option<Instant> = None;
        let mut left_seen: HashMap<String, Instant> = HashMap::new();
        let mut last_report = Instant::now();
        loop {
            tokio::select! {
                _ = cancel.cancelled() => return,
                _ = tokio::time::sleep(TICK) => {}
            }
            self.record(me.clone(), Duration::ZERO);
            if !registry.is_leader() {
                leading_since = None;
                left_seen.clear();
                if last_report.elapsed() >= Duration::from_secs(1) {
                    last_report = Instant::now();
                    if let Some((_, addr)) = registry.leader() {
                        if let Ok(addr) = addr.parse() {
                            let req = Request::Liveness(self.recent());
                            if let Err(e) =
                                client.request_to(addr, &req, Duration::from_secs(2)).await
                            {
                                tracing::debug!(error = %e, "liveness report to the leader failed");
                            }
                        }
                    }
                }
                continue;
            }
            let since = *leading_since.get_or_insert_with(Instant::now);
            let cmds = self.decide(&registry, since, &mut left_seen);
            if cmds.is_empty() {
                continue;
            }
            let n = cmds.len();
            let cmd = if n == 1 {
                cmds.into_iter()
                    .next()
                    .unwrap_or(Command::Batch(Vec::new()))
            } else {
                Command::Batch(cmds)
            };
            // Bounded, and abandoned at shutdown: a leader cut from its quorum never commits.
            tokio::select! {
                _ = cancel.cancelled() => return,
                r = tokio::time::timeout(Duration::from_secs(5), registry.write(cmd)) => match r {
                    Ok(Ok(_)) => {}
                    Ok(Err(e)) => tracing::warn!(error = %e, changes = n, "writing member status changes failed"),
                    Err(_) => tracing::warn!(changes = n, "member status changes not committed within 5s"),
                },
            }
        }
    }

    /// On the leader: the member status changes to write now.
    fn decide(
        &self,
        registry: &Registry,
        leading_since: Instant,
        left_seen: &mut HashMap<String, Instant>,
    ) -> Vec<Command> {
        let now = Instant::now();
        let mut cmds = Vec::new();
        let heard = self.recent();
        let state = registry.read();
        let mut alive = 0;
        for m in state.members() {
            if m.status == MemberStatus::Left {
                left_seen.entry(m.name.clone()).or_insert(now);
            } else {
                left_seen.remove(&m.name);
            }
            if m.status == MemberStatus::Alive {
                alive += 1;
            }
        }
        self.metrics.alive.set(alive);
        for s in &heard {
            let hb = &s.heartbeat;
            let at = now
                .checked_sub(Duration::from_millis(s.age_ms))
                .unwrap_or(now);
            let current = state.member(&hb.node);
            let revive = match current {
                None => true,
                Some(m) if m.status == MemberStatus::Left => {
                    left_seen.get(&m.name).is_some_and(|t| at > *t)
                }
                Some(m) => {
                    m.status != MemberStatus::Alive
                        || m.addr != hb.addr
                        || m.role != hb.role
                        || m.datacenter != hb.datacenter
                }
            };
            if revive {
                tracing::info!(node = %hb.node, addr = %hb.addr, "member alive");
                cmds.push(member_set(hb, MemberStatus::Alive));
            }
        }
        if now.duration_since(leading_since) >= self.timeout {
            for m in state.members() {
                if m.status != MemberStatus::Alive {
                    continue;
                }
                // `heard` holds exactly the members heard from within the bound.
                let fresh = heard.iter().any(|s| s.heartbeat.node == m.name);
                if !fresh {
                    tracing::warn!(node = %m.name, timeout = ?self.timeout, "no heartbeat within the liveness bound; marking the member failed");
                    self.metrics.failed.inc();
                    cmds.push(Command::MemberSet {
                        name: m.name.clone(),
                        addr: m.addr.clone(),
                        role: m.role,
                        status: MemberStatus::Failed,
                        datacenter: m.datacenter.clone(),
                    });
                }
            }
        }
        cmds
    }
}

fn member_set(hb: &Heartbeat, status: MemberStatus) -> Command {
    Command::MemberSet {
        name: hb.node.clone(),
        addr: hb.addr.clone(),
        role: hb.role,
        status,
        datacenter: hb.datacenter.clone(),
    }
}

/// Runs on agents until `cancel`: one heartbeat per `interval` to a server (with failover).
pub async fn run_agent(
    me: Heartbeat,
    interval: Duration,
    client: Arc<ClusterClient>,
    metrics: LivenessMetrics,
    cancel: CancellationToken,
) {
    loop {
        let req = Request::Heartbeat(me.clone());
        match client
            .request(&req, interval.max(Duration::from_secs(1)))
            .await
        {
            Ok(_) => {}
            Err(e) => {
                metrics.heartbeats_failed.inc();
                tracing::debug!(error = %e, "heartbeat not delivered");
            }
        }
        tokio::select! {
            _ = cancel.cancelled() => return,
            _ = tokio::time::sleep(interval) => {}
        }
    }
}
