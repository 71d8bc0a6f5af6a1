//! Reloading the configuration on SIGHUP and `PUT /v1/agent/reload`, as `consul reload`.
//!
//! A reload reads the configuration file and every service definition again and validates all
//! of it before it changes anything: a broken file is rejected with its name and the reason
//! (logged, counted, and returned to the API caller) and the running configuration stays.
//! What a reload applies:
//! - service definitions (`config_dir`): new and changed ones are registered (their checks
//!   replaced), the ones whose file is gone are deregistered;
//! - `log_level`;
//! - the TLS files (`ca_file`, `cert_file`, `key_file`): new connections present the new
//!   certificate, which must name the same identity; open connections keep theirs;
//! - `drain_timeout` and `leave_on_terminate`, read at shutdown.
//!
//! Other keys (addresses, names, the data dir, cluster settings) are fixed at start: a change
//! is logged as taking effect at the next restart. Open proxied connections are never touched.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Instant;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use tokio::sync::{mpsc, oneshot};
use tokio_util::sync::CancellationToken;

use crate::api::{self, ApiContext, Prepared};
use crate::cli::AgentArgs;
use crate::config::{self, RuntimeConfig};
use crate::logging::Logging;
use crate::notify;
use crate::transport::tls::TlsMaterial;
use crate::transport::Transport;

/// The definition files of a directory, each with its parsed services.
pub type Definitions = Vec<(PathBuf, Vec<Prepared>)>;

/// Reads and validates every definition file of `dir` (none without a dir). The error names
/// the file and the reason; a service ID defined by two files is an error too.
pub fn load_definitions(dir: Option<&Path>) -> Result<Definitions, String> {
    let Some(dir) = dir else {
        return Ok(Vec::new());
    };
    let files = crate::definitions::read_dir(dir).map_err(|e| e.to_string())?;
    let defs = files
        .into_iter()
        .map(|(file, value)| match api::parse_definitions(&value) {
            Ok(p) => Ok((file, p)),
            Err(e) => Err(format!("service definition {}: {e}", file.display())),
        })
        .collect::<Result<Definitions, String>>()?;
    let mut seen: std::collections::HashMap<&str, &Path> = std::collections::HashMap::new();
    for (file, prepared) in &defs {
        for p in prepared {
            if let Some(first) = seen.insert(&p.service.id, file) {
                return Err(format!(
                    "service definition {}: service ID {:?} is already defined in {}",
                    file.display(),
                    p.service.id,
                    first.display()
                ));
            }
        }
    }
    Ok(defs)
}

/// Registrations in flight at once: the Raft log commits concurrent writes together.
const CONCURRENT_REGISTRATIONS: usize = 64;

/// Registers every definition (IDs are unique across files, so order does not matter);
/// returns how many were written. A reload (`replace_checks`) skips those this node already
/// holds unchanged. The error names the file.
pub async fn register_all(
    ctx: &ApiContext,
    defs: &Definitions,
    replace_checks: bool,
) -> Result<usize, String> {
    use futures_util::stream::{self, StreamExt as _, TryStreamExt as _};
    let all: Vec<(&PathBuf, &Prepared)> = defs
        .iter()
        .flat_map(|(file, ps)| ps.iter().map(move |p| (file, p)))
        .collect();
    let unchanged = if replace_checks {
        api::registered_unchanged(ctx, &all.iter().map(|(_, p)| *p).collect::<Vec<_>>())
    } else {
        vec![false; all.len()]
    };
    let items: Vec<(PathBuf, Prepared)> = all
        .into_iter()
        .zip(unchanged)
        .filter(|(_, same)| !same)
        .map(|((file, p), _)| (file.clone(), p.clone()))
        .collect();
    stream::iter(items)
        .map(|(file, p)| async move {
            api::register_prepared(ctx, vec![p], replace_checks)
                .await
                .map_err(|e| format!("registering service definition {}: {e}", file.display()))
        })
        .buffer_unordered(CONCURRENT_REGISTRATIONS)
        .try_fold(0, |n, ids| async move { Ok(n + ids.len()) })
        .await
}

/// The service IDs of `defs`.
pub fn definition_ids(defs: &Definitions) -> BTreeSet<String> {
    defs.iter()
        .flat_map(|(_, p)| p.iter().map(|p| p.service.id.clone()))
        .collect()
}

/// A reload request from the API: the answer is the summary or the reason it was rejected.
type Request = oneshot::Sender<Result<String, String>>;

/// The API's handle on the reloader.
#[derive(Clone)]
pub struct Requests(mpsc::Sender<Request>);

impl Requests {
    /// Reloads and waits for the outcome.
    pub async fn reload(&self) -> Result<String, String> {
        let (tx, rx) = oneshot::channel();
        self.0
            .send(tx)
            .await
            .map_err(|_| "the agent is shutting down".to_string())?;
        rx.await
            .map_err(|_| "the agent is shutting down".to_string())?
    }
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct Outcome {
    result: &'static str,
}

/// `meshd_config_reloads_total{result}`, `meshd_config_last_reload_successful`,
/// `meshd_config_reload_duration_seconds`.
#[derive(Clone)]
pub struct ReloadMetrics {
    reloads: Family<Outcome, Counter>,
    last_successful: Gauge,
    duration: Histogram,
}

impl ReloadMetrics {
    pub fn new(registry: &mut prometheus_client::registry::Registry) -> ReloadMetrics {
        let m = ReloadMetrics {
            reloads: Family::default(),
            last_successful: Gauge::default(),
            duration: Histogram::new([0.001, 0.005, 0.02, 0.1, 0.5, 2.0, 10.0]),
        };
        m.last_successful.set(1);
        registry.register(
            "meshd_config_reloads",
            "Configuration reloads (SIGHUP or PUT /v1/agent/reload), by result",
            m.reloads.clone(),
        );
        registry.register(
            "meshd_config_last_reload_successful",
            "1 when the last reload was applied (or none was asked), 0 when it was rejected",
            m.last_successful.clone(),
        );
        registry.register(
            "meshd_config_reload_duration_seconds",
            "Time to validate and apply a reload",
            m.duration.clone(),
        );
        m
    }
}

/// What a reload needs from the running agent.
pub struct Reloader {
    pub args: AgentArgs,
    /// The configuration running now (reloadable keys updated by each reload).
    pub running: RuntimeConfig,
    pub ctx: Arc<ApiContext>,
    pub transport: Arc<Transport>,
    pub logging: Option<Logging>,
    /// Services registered from definition files: a reload removes those whose file is gone.
    pub from_files: BTreeSet<String>,
    pub metrics: ReloadMetrics,
}

impl Reloader {
    /// The API's handle, and the channel [`Reloader::run`] serves.
    pub fn channel() -> (Requests, mpsc::Receiver<Request>) {
        let (tx, rx) = mpsc::channel(8);
        (Requests(tx), rx)
    }

    /// Serves SIGHUP and API requests one at a time until `stop`; returns the configuration
    /// then running (shutdown reads `drain_timeout` from it).
    pub async fn run(
        mut self,
        mut hangup: tokio::signal::unix::Signal,
        mut requests: mpsc::Receiver<Request>,
        stop: CancellationToken,
    ) -> RuntimeConfig {
        loop {
            tokio::select! {
                _ = stop.cancelled() => return self.running,
                Some(()) = hangup.recv() => {
                    tracing::info!("SIGHUP received: reloading the configuration");
                    let _ = self.reload().await;
                }
                Some(reply) = requests.recv() => {
                    tracing::info!("reload requested through the API");
                    let _ = reply.send(self.reload().await);
                }
            }
        }
    }

    /// One reload, announced to systemd, timed, counted and logged.
    pub async fn reload(&mut self) -> Result<String, String> {
        let started = Instant::now();
        notify::reloading();
        let result = self.apply().await;
        notify::ready("serving");
        self.metrics
            .duration
            .observe(started.elapsed().as_secs_f64());
        let result_label = if result.is_ok() { "ok" } else { "error" };
        self.metrics
            .reloads
            .get_or_create(&Outcome {
                result: result_label,
            })
            .inc();
        self.metrics.last_successful.set(i64::from(result.is_ok()));
        match &result {
            Ok(summary) => tracing::info!(%summary, "configuration reloaded"),
            Err(e) => tracing::error!(
                error = %e,
                "configuration reload rejected; the running configuration is kept"
            ),
        }
        result
    }

    async fn apply(&mut self) -> Result<String, String> {
        // Validate everything first: nothing changes unless all of it is good.
        let new = config::build(&self.args).map_err(|e| e.to_string())?;
        let defs = load_definitions(new.config_dir.as_deref())?;
        let certificate = self.load_certificate(&new)?;

        for key in restart_only_changes(&self.running, &new) {
            tracing::warn!(
                key,
                "changed in the configuration; takes effect at the next restart"
            );
        }
        let mut done = Vec::new();
        if new.log_level != self.running.log_level {
            if let Some(l) = &self.logging {
                l.set_level(&new.log_level)
                    .map_err(|e| format!("log_level {:?}: {e}", new.log_level))?;
            }
            done.push(format!("log_level {}", new.log_level));
            self.running.log_level = new.log_level.clone();
        }
        if let Some(m) = certificate {
            self.transport
                .set_certificate(m)
                .map_err(|e| format!("installing the new certificate: {e}"))?;
            done.push("TLS certificate".into());
        }
        self.running.cluster.tls = new.cluster.tls.clone();

        let ids = definition_ids(&defs);
        let written = register_all(&self.ctx, &defs, true).await?;
        let mut removed = Vec::new();
        for gone in self.from_files.difference(&ids) {
            if api::deregister_local(&self.ctx, gone)
                .await
                .map_err(|e| format!("deregistering service {gone:?}: {e}"))?
            {
                removed.push(gone.clone());
            }
        }
        done.push(format!(
            "{} service definitions ({written} new or changed)",
            ids.len()
        ));
        self.from_files = ids;
        if !removed.is_empty() {
            done.push(format!("removed {}", removed.join(", ")));
        }
        self.running.config_dir = new.config_dir;
        self.running.drain_timeout = new.drain_timeout;
        self.running.cluster.leave_on_terminate = new.cluster.leave_on_terminate;
        Ok(done.join("; "))
    }

    /// The configured certificate, when it differs from the one presented now. It must load,
    /// match its key, chain to `ca_file`, and name the identity this host runs as.
    fn load_certificate(&self, new: &RuntimeConfig) -> Result<Option<TlsMaterial>, String> {
        let t = &new.cluster.tls;
        let (Some(ca), Some(cert), Some(key)) = (&t.ca_file, &t.cert_file, &t.key_file) else {
            return Ok(None);
        };
        let m = TlsMaterial::load(ca, cert, key).map_err(|e| format!("cert_file: {e}"))?;
        let current = self.transport.chain();
        if current.first() == m.chain.first() {
            return Ok(None);
        }
        let identity = |der: &[u8]| registry::ca::spiffe_id_of(der).map(|i| i.identity);
        if let (Some(old), Some(new_leaf)) = (current.first(), m.chain.first()) {
            let new_id =
                identity(new_leaf).map_err(|e| format!("cert_file {}: {e}", cert.display()))?;
            if identity(old).ok().as_ref() != Some(&new_id) {
                return Err(format!(
                    "cert_file {}: the certificate is for {new_id:?}, not for this host's identity",
                    cert.display()
                ));
            }
        }
        Ok(Some(m))
    }
}

/// The keys fixed at start that differ between `old` and `new`.
fn restart_only_changes(old: &RuntimeConfig, new: &RuntimeConfig) -> Vec<&'static str> {
    let (a, b) = (&old.cluster, &new.cluster);
    let pairs: [(&'static str, bool); 20] = [
        ("node_name", old.node_name != new.node_name),
        ("datacenter", old.datacenter != new.datacenter),
        ("data_dir", old.data_dir != new.data_dir),
        ("server", old.server != new.server),
        ("http_addr", old.http_addr != new.http_addr),
        ("advertise_addr", old.advertise_addr != new.advertise_addr),
        ("node_meta", old.node_meta != new.node_meta),
        (
            "snapshot_threshold",
            old.snapshot_threshold != new.snapshot_threshold,
        ),
        (
            "check_update_interval",
            old.check_update_interval != new.check_update_interval,
        ),
        ("cache_mb", old.cache_bytes != new.cache_bytes),
        ("worker_threads", old.worker_threads != new.worker_threads),
        ("log_json", old.log_json != new.log_json),
        ("bind_addr", a.bind != b.bind),
        ("bootstrap_expect", a.bootstrap_expect != b.bootstrap_expect),
        ("retry_join", a.retry_join != b.retry_join),
        ("join_token", a.join_token != b.join_token),
        ("liveness_timeout", a.liveness_timeout != b.liveness_timeout),
        (
            "heartbeat_interval",
            a.heartbeat_interval != b.heartbeat_interval,
        ),
        ("dns", format!("{:?}", old.dns) != format!("{:?}", new.dns)),
        (
            "connect",
            format!("{:?}", old.connect) != format!("{:?}", new.connect),
        ),
    ];
    pairs
        .into_iter()
        .filter(|(_, changed)| *changed)
        .map(|(k, _)| k)
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn dev_config(extra: &str) -> RuntimeConfig {
        let f = tempfile::NamedTempFile::new().expect("temp file");
        std::fs::write(f.path(), extra).expect("write");
        let args = AgentArgs {
            dev: true,
            node: Some("n1".into()),
            config: Some(f.path().to_path_buf()),
            ..AgentArgs::default()
        };
        config::build(&args).expect("valid")
    }

    #[test]
    fn keys_fixed_at_start_are_named_and_reloadable_ones_are_not() {
        let old = dev_config("log_level = \"info\"\n");
        let new = dev_config(
            "log_level = \"debug\"\ndrain_timeout = \"5s\"\nhttp_addr = \"127.0.0.1:9500\"\n\
             [dns_config]\nnode_ttl = \"10s\"\n",
        );
        assert_eq!(restart_only_changes(&old, &new), ["http_addr", "dns"]);
        assert!(restart_only_changes(&old, &old).is_empty());
    }

    #[test]
    fn definitions_name_the_file_and_refuse_an_id_defined_twice() {
        let d = tempfile::tempdir().expect("tempdir");
        let write = |name: &str, text: &str| std::fs::write(d.path().join(name), text);
        write("a.json", r#"{"service": {"name": "web"}}"#).expect("write");
        write(
            "b.json",
            r#"{"services": [{"name": "db"}, {"name": "db", "id": "db2"}]}"#,
        )
        .expect("write");
        let defs = load_definitions(Some(d.path())).expect("valid");
        assert_eq!(
            definition_ids(&defs).into_iter().collect::<Vec<_>>(),
            ["db", "db2", "web"]
        );
        write("c.json", r#"{"service": {"name": "other", "id": "web"}}"#).expect("write");
        let e = load_definitions(Some(d.path())).expect_err("web twice");
        assert!(
            e.contains("c.json") && e.contains("a.json") && e.contains("\"web\""),
            "{e}"
        );
        assert!(load_definitions(None).expect("no dir").is_empty());
    }
}
