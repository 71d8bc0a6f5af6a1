//! The check runner: runs the HTTP, TCP and TTL checks of this agent's services and writes a
//! check's status to the registry only when it changes.
//!
//! The checks themselves live in the registry (registered through the API or the config dir).
//! A supervisor task watches the registry for this node's checks and keeps one probe task per
//! HTTP/TCP check and one timer task per TTL check, restarting a task when its definition
//! changes and stopping it when the check goes. Output-only changes of a steady check are
//! written at most once per `check_update_interval` (as Consul), so a check whose body
//! varies does not write on every run. It also deregisters services whose check stayed critical
//! for longer than their `DeregisterCriticalServiceAfter`.

mod metrics;
mod probe;

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use registry::{Check, CheckDefinition, Command, Status, WriteError};

use crate::store::Store;
use tokio::task::JoinHandle;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn, Instrument};

pub use metrics::CheckMetrics;
use registry::duration::parse_go_duration;

/// Probe timeout when a check sets none (Consul's default).
const DEFAULT_TIMEOUT: Duration = Duration::from_secs(10);
/// Shortest interval a probe runs at.
const MIN_INTERVAL: Duration = Duration::from_millis(100);
/// How often the supervisor re-examines critical checks for deregistration.
const REAP_EVERY: Duration = Duration::from_secs(1);

/// Why a TTL update was refused.
#[derive(Debug, thiserror::Error)]
pub enum CheckUpdateError {
    #[error("unknown check ID {0:?}")]
    NotFound(String),
    #[error("check {0:?} is not a TTL check")]
    NotTtl(String),
    #[error(transparent)]
    Write(#[from] WriteError),
}

/// Handle to the check runner; cheap to clone.
#[derive(Clone)]
pub struct CheckRunner {
    inner: Arc<Inner>,
}

struct Inner {
    registry: Store,
    node: String,
    update_interval: Duration,
    http: probe::HttpClients,
    metrics: CheckMetrics,
    /// TTL checks: when each expires.
    ttl: Mutex<HashMap<String, TtlTimer>>,
    /// When each check last wrote its output.
    last_write: Mutex<HashMap<String, Instant>>,
}

#[derive(Clone, Copy)]
struct TtlTimer {
    ttl: Duration,
    deadline: Instant,
}

/// What a running task was started for; a change restarts the task.
#[derive(PartialEq)]
struct TaskSpec {
    check_type: String,
    definition: CheckDefinition,
}

impl CheckRunner {
    pub fn new(
        registry: Store,
        node: String,
        update_interval: Duration,
        metrics_registry: &mut prometheus_client::registry::Registry,
    ) -> Result<CheckRunner, reqwest::Error> {
        Ok(CheckRunner {
            inner: Arc::new(Inner {
                registry,
                node,
                update_interval,
                http: probe::HttpClients::new()?,
                metrics: CheckMetrics::new(metrics_registry),
                ttl: Mutex::new(HashMap::new()),
                last_write: Mutex::new(HashMap::new()),
            }),
        })
    }

    /// Starts the supervisor; it and every check task stop when `cancel` fires.
    pub fn spawn(&self, cancel: CancellationToken) -> JoinHandle<()> {
        let runner = self.clone();
        tokio::spawn(
            async move { runner.supervise(cancel).await }
                .instrument(tracing::info_span!("checks", node = %self.inner.node)),
        )
    }

    /// Records a TTL check update (`/v1/agent/check/{pass,warn,fail,update}/{id}`): resets the
    /// TTL timer and writes the status and output if they changed.
    pub async fn ttl_update(
        &self,
        check_id: &str,
        status: Status,
        output: String,
    ) -> Result<(), CheckUpdateError> {
        let check = self
            .local_check(check_id)
            .ok_or_else(|| CheckUpdateError::NotFound(check_id.to_string()))?;
        if check.check_type != "ttl" {
            return Err(CheckUpdateError::NotTtl(check_id.to_string()));
        }
        let ttl = ttl_of(&check.definition);
        self.lock_ttl().insert(
            check_id.to_string(),
            TtlTimer {
                ttl,
                deadline: Instant::now() + ttl,
            },
        );
        if check.status != status || check.output != output {
            self.write_status(check_id, status, output).await?;
        }
        Ok(())
    }

    fn local_check(&self, check_id: &str) -> Option<Check> {
        self.inner
            .registry
            .read()
            .check(&self.inner.node, check_id)
            .cloned()
    }

    fn lock_ttl(&self) -> std::sync::MutexGuard<'_, HashMap<String, TtlTimer>> {
        self.inner.ttl.lock().unwrap_or_else(|e| e.into_inner())
    }

    async fn write_status(
        &self,
        check_id: &str,
        status: Status,
        output: String,
    ) -> Result<(), WriteError> {
        let result = self
            .inner
            .registry
            .write(Command::UpdateCheck {
                node: self.inner.node.clone(),
                check_id: check_id.to_string(),
                status,
                output,
            })
            .await;
        let outcome = if result.is_ok() { "ok" } else { "error" };
        self.inner
            .metrics
            .writes
            .get_or_create(&metrics::OutcomeLabels {
                outcome: outcome.into(),
            })
            .inc();
        if result.is_ok() {
            self.inner
                .last_write
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .insert(check_id.to_string(), Instant::now());
        }
        result.map(|_| ())
    }

    /// Writes a probe's result if the status changed, or if only the output changed and the
    /// last write is older than the update interval.
    async fn record(&self, check_id: &str, status: Status, output: String) {
        let Some(current) = self.local_check(check_id) else {
            return;
        };
        let changed = if current.status != status {
            info!(check = check_id, from = %current.status, to = %status, "check status changed");
            true
        } else if current.output != output {
            let last = self
                .inner
                .last_write
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .get(check_id)
                .copied();
            last.is_none_or(|t| t.elapsed() >= self.inner.update_interval)
        } else {
            false
        };
        if changed {
            if let Err(e) = self.write_status(check_id, status, output).await {
                warn!(check = check_id, error = %e, "writing check status failed");
            }
        }
    }

    async fn supervise(self, cancel: CancellationToken) {
        let mut applied = self.inner.registry.subscribe();
        let mut tasks: HashMap<String, (TaskSpec, JoinHandle<()>)> = HashMap::new();
        let mut critical_since: HashMap<String, Instant> = HashMap::new();
        // Writes to other nodes do not concern this runner: it looks again only when this
        // node's index moved, and on the periodic tick (which also reaps critical services).
        let mut seen_node_index = None;
        let mut tick = tokio::time::interval(REAP_EVERY);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = cancel.cancelled() => break,
                r = applied.changed() => {
                    if r.is_err() {
                        break;
                    }
                    let index = self.inner.registry.read().node_index(&self.inner.node);
                    if seen_node_index != Some(index) {
                        seen_node_index = Some(index);
                        self.reconcile(&mut tasks, &cancel);
                    }
                }
                _ = tick.tick() => {
                    self.reconcile(&mut tasks, &cancel);
                    self.reap(&mut critical_since).await;
                }
            }
        }
        for (_, (_, handle)) in tasks.drain() {
            handle.abort();
        }
        self.inner.metrics.running.set(0);
        debug!("check runner stopped");
    }

    /// Starts, restarts and stops tasks to match this node's checks in the registry.
    fn reconcile(
        &self,
        tasks: &mut HashMap<String, (TaskSpec, JoinHandle<()>)>,
        cancel: &CancellationToken,
    ) {
        let wanted: HashMap<String, TaskSpec> = self
            .inner
            .registry
            .read()
            .node_checks(&self.inner.node)
            .filter(|c| matches!(c.check_type.as_str(), "http" | "tcp" | "ttl"))
            .map(|c| {
                (
                    c.check_id.clone(),
                    TaskSpec {
                        check_type: c.check_type.clone(),
                        definition: c.definition.clone(),
                    },
                )
            })
            .collect();
        tasks.retain(|id, (spec, handle)| {
            let keep = wanted.get(id) == Some(spec) && !handle.is_finished();
            if !keep {
                handle.abort();
                if !wanted.contains_key(id) {
                    self.lock_ttl().remove(id);
                }
            }
            keep
        });
        for (id, spec) in wanted {
            if tasks.contains_key(&id) {
                continue;
            }
            let runner = self.clone();
            let token = cancel.child_token();
            let span = tracing::info_span!("check", id = %id, r#type = %spec.check_type);
            let (check_id, def, kind) =
                (id.clone(), spec.definition.clone(), spec.check_type.clone());
            let handle = tokio::spawn(
                async move {
                    tokio::select! {
                        _ = token.cancelled() => {}
                        _ = runner.run_check(check_id, kind, def) => {}
                    }
                }
                .instrument(span),
            );
            tasks.insert(id, (spec, handle));
        }
        self.inner.metrics.running.set(tasks.len() as i64);
    }

    async fn run_check(self, id: String, kind: String, def: CheckDefinition) {
        if kind == "ttl" {
            return self.run_ttl(id, def).await;
        }
        let interval = parse_go_duration(&def.interval)
            .unwrap_or(Duration::from_secs(10))
            .max(MIN_INTERVAL);
        let timeout = parse_go_duration(&def.timeout)
            .ok()
            .filter(|t| !t.is_zero())
            .unwrap_or(DEFAULT_TIMEOUT);
        let mut ticker = tokio::time::interval(interval);
        ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            ticker.tick().await;
            let started = Instant::now();
            let (status, output) = match kind.as_str() {
                "http" => probe::http(&self.inner.http, &def, timeout).await,
                _ => probe::tcp(&def.tcp, timeout).await,
            };
            let m = &self.inner.metrics;
            m.duration
                .get_or_create(&metrics::TypeLabels {
                    r#type: kind.clone(),
                })
                .observe(started.elapsed().as_secs_f64());
            m.results
                .get_or_create(&metrics::ResultLabels {
                    r#type: kind.clone(),
                    status: status.as_str().into(),
                })
                .inc();
            debug!(%status, "check ran");
            self.record(&id, status, output).await;
        }
    }

    async fn run_ttl(self, id: String, def: CheckDefinition) {
        let ttl = ttl_of(&def);
        let mut deadline = {
            let mut timers = self.lock_ttl();
            let timer = timers.entry(id.clone()).or_insert(TtlTimer {
                ttl,
                deadline: Instant::now() + ttl,
            });
            timer.ttl = ttl;
            timer.deadline
        };
        loop {
            tokio::time::sleep_until(deadline).await;
            let now_deadline = self.lock_ttl().get(&id).map(|t| t.deadline);
            match now_deadline {
                Some(d) if d > Instant::now() => deadline = d,
                Some(_) => {
                    let expired = self
                        .local_check(&id)
                        .is_some_and(|c| c.status != Status::Critical);
                    if expired {
                        self.inner.metrics.ttl_expired.inc();
                        info!(check = %id, "TTL expired");
                        let out = format!("TTL expired (no update for {})", def.ttl);
                        if let Err(e) = self.write_status(&id, Status::Critical, out).await {
                            warn!(check = %id, error = %e, "writing TTL expiry failed");
                        }
                    }
                    // Wait for the next update to move the deadline.
                    deadline = Instant::now() + ttl.min(Duration::from_secs(1));
                }
                None => return,
            }
        }
    }

    /// Deregisters services whose check has been critical for longer than its
    /// `DeregisterCriticalServiceAfter`.
    async fn reap(&self, critical_since: &mut HashMap<String, Instant>) {
        let mut due: Vec<(String, String)> = Vec::new();
        {
            let state = self.inner.registry.read();
            let mut seen = Vec::new();
            for c in state.node_checks(&self.inner.node) {
                let Ok(after) = parse_go_duration(&c.definition.deregister_critical_service_after)
                else {
                    continue;
                };
                if c.service_id.is_empty() || c.status != Status::Critical {
                    continue;
                }
                seen.push(c.check_id.clone());
                let since = *critical_since
                    .entry(c.check_id.clone())
                    .or_insert_with(Instant::now);
                if since.elapsed() >= after {
                    due.push((c.service_id.clone(), c.check_id.clone()));
                }
            }
            critical_since.retain(|k, _| seen.contains(k));
        }
        for (service_id, check_id) in due {
            info!(service = %service_id, check = %check_id, "deregistering service: check critical for longer than DeregisterCriticalServiceAfter");
            let cmd = Command::Deregister {
                node: self.inner.node.clone(),
                service_id: Some(service_id.clone()),
                check_id: None,
            };
            match self.inner.registry.write(cmd).await {
                Ok(_) => {
                    self.inner.metrics.deregistered.inc();
                    critical_since.remove(&check_id);
                }
                Err(e) => warn!(service = %service_id, error = %e, "deregistration failed"),
            }
        }
    }
}

fn ttl_of(def: &CheckDefinition) -> Duration {
    parse_go_duration(&def.ttl)
        .ok()
        .filter(|d| !d.is_zero())
        .unwrap_or(Duration::from_secs(30))
}
