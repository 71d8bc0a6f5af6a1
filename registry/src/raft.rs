//! The registry replicated with openraft: log, vote and snapshots in sled, and the
//! [`Registry`] handle the rest of meshd uses to write, read and watch.
//!
//! Layout: `raft/types.rs` (openraft type config), `raft/log_store.rs` (the log and vote in
//! the sled trees `logs` and `meta`), `raft/state_machine.rs` (the in-memory [`State`];
//! snapshots in the sled tree `snapshot`), `raft/admin.rs` (membership, read indexes, what
//! agents' watch streams read), `raft/batch.rs` and `raft/disk.rs` (write batching, group
//! commit), `raft/network.rs` (a network with no peers; meshd brings the QUIC one),
//! `raft/metrics.rs`.
//!
//! On open, the state is loaded from the stored snapshot and openraft re-applies the committed
//! log after it; an entry is acknowledged only once it is flushed to disk and applied.

mod admin;
mod batch;
mod disk;
mod log_store;
mod metrics;
mod network;
mod state_machine;
mod types;

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, PoisonError, RwLock, RwLockReadGuard, Weak};
use std::time::Duration;

use openraft::error::{Fatal, RaftError};
use openraft::{BasicNode, ChangeMembers, ServerState, SnapshotPolicy};
use tokio::sync::watch;
use tokio::task::JoinHandle;
use tokio::time::Instant;

pub use admin::{AdminError, Peer};
pub use disk::Disk;
pub use log_store::{LogStats, LogStore};
pub use network::{NoConnection, NoNetwork, NoTransport};
pub use openraft::RaftNetworkFactory;
pub use state_machine::{SnapshotBuilder, SnapshotPayload, StateMachineStore};
pub use types::{StoreError, TypeConfig};

use crate::command::{Command, Response};
use crate::state::State;
use batch::{BatchError, Batcher};
use metrics::{gauge_value, RaftMetrics};

/// How long [`Registry::open`] waits for this server to lead and catch up.
const READY_TIMEOUT: Duration = Duration::from_secs(30);
/// How long opening retries sled's file lock (see [`open_sled`]).
const SLED_LOCK_RETRY: Duration = Duration::from_secs(3);
/// How long shutdown waits for openraft's tasks to drop the stores.
const STORE_RELEASE_TIMEOUT: Duration = Duration::from_secs(10);
/// Bound of a leadership check for a consistent read.
const READ_BARRIER_TIMEOUT: Duration = Duration::from_secs(5);

/// How a read is served (Consul's `?stale`, default, `?consistent`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Consistency {
    /// Leader-checked: this server confirms it is still the leader before reading.
    Default,
    /// Same guarantee as `Default`, spelled out by the client.
    Consistent,
    /// Any server's local state, no check.
    Stale,
}

/// Settings of the replicated registry.
#[derive(Clone, Debug)]
pub struct RegistryConfig {
    /// Directory of the sled database (created if missing).
    pub data_dir: PathBuf,
    /// Raft node ID of this server.
    pub node_id: u64,
    /// Address others reach this server at (kept in the Raft membership).
    pub advertise: String,
    /// Build a snapshot and compact the log after this many applied entries.
    pub snapshot_threshold: u64,
    /// sled's page cache, bytes.
    pub cache_capacity: u64,
    /// How a new store starts.
    pub bootstrap: Bootstrap,
}

/// How a server with a new (empty) store starts.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Bootstrap {
    /// Bootstrap a one-server cluster at once and wait until it leads (`--dev`,
    /// `bootstrap_expect = 1`).
    Single,
    /// Start Raft and return: the cluster module forms the cluster with the other servers
    /// ([`Registry::initialize`]) or has this server added to an existing one.
    Cluster,
}

/// The outcome of an acknowledged (durable, committed, applied) write.
#[derive(Clone, Debug, PartialEq)]
pub struct Applied {
    /// Raft log index of the write.
    pub index: u64,
    pub response: Response,
}

/// Why a write failed. Nothing was acknowledged, so the client may retry.
#[derive(Debug, thiserror::Error)]
pub enum WriteError {
    #[error("no leader: this server is not the leader (leader: {leader:?}); retry against it")]
    NotLeader { leader: Option<String> },
    #[error("raft: {0}")]
    Raft(String),
    #[error("registry is shutting down")]
    Shutdown,
}

/// Why a consistent read could not be served.
#[derive(Debug, thiserror::Error)]
pub enum ReadError {
    #[error(
        "no leader: cannot serve a consistent read (leader: {leader:?}); retry, or use ?stale"
    )]
    NotLeader { leader: Option<String> },
    #[error("raft: {0}")]
    Raft(String),
}

/// Why the registry could not be opened.
#[derive(Debug, thiserror::Error)]
pub enum OpenError {
    #[error("open sled database at {path}: {source}")]
    Sled { path: PathBuf, source: sled::Error },
    #[error("stored data in {path} is corrupt: {reason}")]
    Corrupt { path: PathBuf, reason: String },
    #[error("raft: {0}")]
    Raft(String),
}

/// Handle to the replicated registry; cheap to clone.
#[derive(Clone)]
pub struct Registry {
    state: Arc<RwLock<State>>,
    inner: Arc<Inner>,
}

struct Inner {
    raft: types::Raft,
    db: sled::Db,
    /// The log's `logs` and `meta` trees, read by [`Registry::log_stats`] (not a store holder).
    log_trees: (sled::Tree, sled::Tree),
    /// Alive while openraft still holds a store (its tasks end shortly after shutdown).
    store_holders: Weak<()>,
    node_id: u64,
    opened: Instant,
    applied_rx: watch::Receiver<u64>,
    metrics: RaftMetrics,
    /// Set when shutdown begins: writes fail fast from then on.
    stopping: AtomicBool,
    /// Whether shutdown finished; the lock serializes concurrent calls.
    stopped: tokio::sync::Mutex<bool>,
    /// When this server last heard from a leader (as a follower).
    last_contact: Mutex<Option<Instant>>,
    watcher: Mutex<Option<JoinHandle<()>>>,
    /// Group commit of writes; its task ends when this is dropped or at shutdown.
    batcher: Batcher,
    batch_task: Mutex<Option<JoinHandle<()>>>,
    /// Recent applied commands, for agents' watch streams.
    feed: Arc<Mutex<crate::feed::Feed>>,
}

impl Drop for Inner {
    fn drop(&mut self) {
        if let Some(h) = self
            .watcher
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .take()
        {
            h.abort();
        }
    }
}

/// Leader information for `/v1/status/leader` and `X-Consul-KnownLeader`.
#[derive(Clone, Debug, PartialEq)]
pub struct LeaderInfo {
    pub leader: Option<String>,
    /// Time since the last contact with the leader (zero on the leader; since open when this
    /// server has not heard from a leader).
    pub last_contact: Duration,
    pub peers: Vec<String>,
}

fn raft_config(cfg: &RegistryConfig) -> Result<openraft::Config, OpenError> {
    if cfg.snapshot_threshold == 0 {
        return Err(OpenError::Raft(
            "invalid registry config: snapshot_threshold must be at least 1".into(),
        ));
    }
    openraft::Config {
        cluster_name: "meshd".into(),
        // Generous for a loaded 2-core host: a missed heartbeat must not start an election.
        heartbeat_interval: 200,
        election_timeout_min: 1000,
        election_timeout_max: 2000,
        // Per snapshot chunk; the default 200 ms is too short for a chunk of a few MiB on a
        // busy host.
        install_snapshot_timeout: 10_000,
        snapshot_policy: SnapshotPolicy::LogsSinceLast(cfg.snapshot_threshold),
        // Followers a little behind catch up from the log rather than a whole snapshot.
        max_in_snapshot_log_to_keep: cfg.snapshot_threshold.min(1000),
        ..Default::default()
    }
    .validate()
    .map_err(|e| OpenError::Raft(format!("invalid raft config: {e}")))
}

/// Opens sled. A database closed just before (a restart in the same process) releases its file
/// lock only when sled's epoch-based reclamation drops its last internal reference, shortly
/// after; so a lock conflict is retried for a moment before it is reported.
async fn open_sled(cfg: &RegistryConfig) -> Result<sled::Db, sled::Error> {
    let deadline = Instant::now() + SLED_LOCK_RETRY;
    loop {
        let res = sled::Config::new()
            .path(&cfg.data_dir)
            .cache_capacity(cfg.cache_capacity)
            .open();
        match res {
            Err(sled::Error::Io(e))
                if e.to_string().contains("could not acquire lock")
                    && Instant::now() < deadline =>
            {
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            other => return other,
        }
    }
}

fn store_error(path: &std::path::Path, e: StoreError) -> OpenError {
    match e {
        StoreError::Sled(source) => OpenError::Sled {
            path: path.to_path_buf(),
            source,
        },
        other => OpenError::Corrupt {
            path: path.to_path_buf(),
            reason: other.to_string(),
        },
    }
}

impl Registry {
    /// Opens (or creates) the store in `cfg.data_dir`, starts Raft, bootstraps a single-server
    /// cluster if the store is new, and returns once this server is leader and has applied
    /// everything committed. Registers its metrics in `metrics`.
    pub async fn open<N: RaftNetworkFactory<TypeConfig>>(
        cfg: RegistryConfig,
        metrics: &mut prometheus_client::registry::Registry,
        network: N,
    ) -> Result<Registry, OpenError> {
        let path = cfg.data_dir.clone();
        let raft_config = raft_config(&cfg)?;
        let db = open_sled(&cfg).await.map_err(|source| OpenError::Sled {
            path: path.clone(),
            source,
        })?;
        let metrics = RaftMetrics::register(metrics);
        // Every store handed to openraft holds `holder`: shutdown waits until all are dropped,
        // so the sled database is released when the last `Registry` clone goes.
        let holder = Arc::new(());
        let disk = Disk::open(db.clone(), &path).map_err(|e| store_error(&path, e))?;
        let logs = LogStore::open_with_metrics(&db, disk.clone(), metrics.clone(), holder.clone())
            .map_err(|e| store_error(&path, e))?;
        logs.remove_purged().map_err(|e| store_error(&path, e))?;
        let stats = logs.verify().map_err(|e| store_error(&path, e))?;
        let resigned = logs
            .resign_leadership(cfg.node_id)
            .map_err(|e| store_error(&path, e))?;
        if let Some(term) = resigned {
            tracing::info!(
                node_id = cfg.node_id,
                term,
                "led the cluster before this start: standing for election instead of resuming \
                 the term"
            );
        }
        let sm = StateMachineStore::open_with_metrics(&db, disk, metrics.clone(), holder.clone())
            .map_err(|e| store_error(&path, e))?;
        let store_holders = Arc::downgrade(&holder);
        drop(holder);
        let state = sm.state();
        let applied_rx = sm.subscribe();
        tracing::info!(
            path = %path.display(),
            node_id = cfg.node_id,
            log_entries = stats.entries,
            first_index = ?stats.first_index,
            last_index = ?stats.last_index,
            snapshot_index = *applied_rx.borrow(),
            "opening the registry"
        );
        let feed = sm.feed();
        let raft = types::Raft::new(cfg.node_id, Arc::new(raft_config), network, logs, sm)
            .await
            .map_err(|e| OpenError::Raft(format!("start raft: {e}")))?;
        if resigned.is_some() {
            // Stand at once rather than at the first tick (300 ms): a single server is leader
            // again right away; in a cluster, followers still within the old leader's lease
            // refuse, and it stands again after an election timeout.
            raft.trigger()
                .elect()
                .await
                .map_err(|e| OpenError::Raft(format!("start an election: {e}")))?;
        }
        let (batcher, batch_task) = Batcher::start(raft.clone());
        let inner = Arc::new(Inner {
            raft,
            log_trees: (
                db.open_tree("logs")
                    .map_err(|e| store_error(&path, e.into()))?,
                db.open_tree("meta")
                    .map_err(|e| store_error(&path, e.into()))?,
            ),
            db,
            store_holders,
            node_id: cfg.node_id,
            opened: Instant::now(),
            applied_rx,
            metrics,
            stopping: AtomicBool::new(false),
            stopped: tokio::sync::Mutex::new(false),
            last_contact: Mutex::new(None),
            watcher: Mutex::new(None),
            batcher,
            batch_task: Mutex::new(Some(batch_task)),
            feed,
        });
        let watcher = tokio::spawn(watch_raft(Arc::downgrade(&inner)));
        *inner.watcher.lock().unwrap_or_else(PoisonError::into_inner) = Some(watcher);
        let registry = Registry { state, inner };
        if cfg.bootstrap == Bootstrap::Cluster {
            tracing::info!(
                node_id = cfg.node_id,
                "registry open; the cluster forms or joins next"
            );
            return Ok(registry);
        }
        if let Err(e) = registry.start(&cfg).await {
            registry.shutdown().await;
            return Err(e);
        }
        tracing::info!(
            node_id = cfg.node_id,
            applied_index = registry.applied_index(),
            "registry ready: this server leads and has applied everything committed"
        );
        Ok(registry)
    }

    /// Bootstraps a new store, then waits until this server leads and has caught up.
    async fn start(&self, cfg: &RegistryConfig) -> Result<(), OpenError> {
        let raft = &self.inner.raft;
        let fatal = |e: Fatal<u64>| OpenError::Raft(format!("raft stopped while starting: {e}"));
        if !raft.is_initialized().await.map_err(fatal)? {
            tracing::info!(
                node_id = cfg.node_id,
                advertise = %cfg.advertise,
                "new store: bootstrapping a single-server cluster"
            );
            let members = BTreeMap::from([(cfg.node_id, BasicNode::new(&cfg.advertise))]);
            raft.initialize(members)
                .await
                .map_err(|e| OpenError::Raft(format!("bootstrap single-server cluster: {e}")))?;
        } else {
            let membership = raft
                .with_raft_state(|st| st.membership_state.effective().clone())
                .await
                .map_err(fatal)?;
            if !membership.voter_ids().any(|id| id == cfg.node_id) {
                return Err(OpenError::Raft(format!(
                    "this server (node id {}) is not a voter of the stored cluster membership {}; \
                     was {} created by another server?",
                    cfg.node_id,
                    membership.membership(),
                    cfg.data_dir.display()
                )));
            }
        }
        self.wait_ready(READY_TIMEOUT).await?;

        // A single server whose advertised address changed: update it in the membership.
        let membership = raft
            .with_raft_state(|st| st.membership_state.effective().clone())
            .await
            .map_err(fatal)?;
        let stored = membership.get_node(&cfg.node_id).map(|n| n.addr.clone());
        let voters: Vec<u64> = membership.voter_ids().collect();
        if voters == [cfg.node_id] && stored.as_deref() != Some(cfg.advertise.as_str()) {
            tracing::info!(from = ?stored, to = %cfg.advertise, "advertised address changed; updating the membership");
            let nodes = BTreeMap::from([(cfg.node_id, BasicNode::new(&cfg.advertise))]);
            raft.change_membership(ChangeMembers::SetNodes(nodes), false)
                .await
                .map_err(|e| OpenError::Raft(format!("update the advertised address: {e}")))?;
            let (id, addr) = (cfg.node_id, cfg.advertise.clone());
            raft.wait(Some(READY_TIMEOUT))
                .metrics(
                    move |m| {
                        m.membership_config
                            .membership()
                            .get_node(&id)
                            .map(|n| n.addr.as_str())
                            == Some(addr.as_str())
                    },
                    "advertised address in the membership",
                )
                .await
                .map_err(|e| OpenError::Raft(format!("update the advertised address: {e}")))?;
        }
        Ok(())
    }

    /// Waits until a linearizable read succeeds: this server leads and has applied up to the
    /// commit index.
    async fn wait_ready(&self, timeout: Duration) -> Result<(), OpenError> {
        let deadline = Instant::now() + timeout;
        let mut last_err = String::from("no attempt finished");
        loop {
            let remaining = deadline.saturating_duration_since(Instant::now());
            match tokio::time::timeout(remaining, self.inner.raft.ensure_linearizable()).await {
                Err(_) => break,
                Ok(Ok(_)) => {
                    // Also wait for the metrics (leader_info) to show it.
                    let id = self.inner.node_id;
                    return self
                        .inner
                        .raft
                        .wait(Some(remaining))
                        .metrics(
                            move |m| m.state == ServerState::Leader && m.current_leader == Some(id),
                            "leader in metrics",
                        )
                        .await
                        .map(|_| ())
                        .map_err(|e| OpenError::Raft(format!("waiting to lead: {e}")));
                }
                Ok(Err(RaftError::Fatal(e))) => {
                    return Err(OpenError::Raft(format!("raft stopped while starting: {e}")))
                }
                Ok(Err(RaftError::APIError(e))) => last_err = e.to_string(),
            }
            if Instant::now() >= deadline {
                break;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        Err(OpenError::Raft(format!(
            "this server did not become a ready leader within {timeout:?}: {last_err}"
        )))
    }

    /// Writes a command through Raft; returns once it is durable on a majority and applied.
    pub async fn write(&self, cmd: Command) -> Result<Applied, WriteError> {
        let kind = cmd.kind();
        if self.inner.stopping.load(Ordering::Acquire) {
            self.inner.metrics.count_write(kind, "error");
            return Err(WriteError::Shutdown);
        }
        let started = std::time::Instant::now();
        let res = self.inner.batcher.write(cmd).await;
        let seconds = started.elapsed().as_secs_f64();
        match res {
            Ok((index, response)) => {
                let outcome = match response {
                    Response::Rejected(_) | Response::Cas(false) => "rejected",
                    _ => "ok",
                };
                self.inner.metrics.observe_write(kind, outcome, seconds);
                Ok(Applied { index, response })
            }
            Err(e) => {
                self.inner.metrics.observe_write(kind, "error", seconds);
                Err(match e {
                    BatchError::ForwardToLeader {
                        leader_id,
                        leader_node,
                    } => WriteError::NotLeader {
                        leader: self.leader_addr(leader_id, leader_node),
                    },
                    BatchError::Raft(e) => WriteError::Raft(e),
                    BatchError::Stopped => WriteError::Shutdown,
                    BatchError::Fatal(e) => {
                        tracing::error!(error = %e, "raft stopped on a fatal error; the registry is down");
                        WriteError::Shutdown
                    }
                })
            }
        }
    }

    /// Waits until a read at this consistency may be served from the local state.
    pub async fn read_barrier(&self, consistency: Consistency) -> Result<(), ReadError> {
        if consistency == Consistency::Stale {
            return Ok(());
        }
        let index = self.read_index().await?;
        if self.wait_applied(index, READ_BARRIER_TIMEOUT).await {
            Ok(())
        } else {
            Err(ReadError::Raft(format!(
                "index {index} not applied within {READ_BARRIER_TIMEOUT:?}; retry, or use ?stale"
            )))
        }
    }

    /// The local state, read-locked. Never hold the guard across an `.await`.
    pub fn read(&self) -> RwLockReadGuard<'_, State> {
        self.state.read().unwrap_or_else(|e| e.into_inner())
    }

    /// A receiver of the last applied index; it changes after every applied batch.
    pub fn subscribe(&self) -> watch::Receiver<u64> {
        self.inner.applied_rx.clone()
    }

    /// Raft log index of the last entry applied to the local state.
    pub fn applied_index(&self) -> u64 {
        *self.inner.applied_rx.borrow()
    }

    pub fn leader_info(&self) -> LeaderInfo {
        let rx = self.inner.raft.metrics();
        let m = rx.borrow();
        let membership = m.membership_config.membership();
        let addr = |id: u64| membership.get_node(&id).map(|n| n.addr.clone());
        let leading =
            m.state == ServerState::Leader && m.current_leader == Some(self.inner.node_id);
        let last_contact = if leading {
            Duration::ZERO
        } else {
            match *self
                .inner
                .last_contact
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
            {
                Some(t) => t.elapsed(),
                None => self.inner.opened.elapsed(),
            }
        };
        LeaderInfo {
            leader: m.current_leader.and_then(addr),
            last_contact,
            peers: membership.voter_ids().filter_map(addr).collect(),
        }
    }

    /// The openraft handle, for the server-to-server transport (RPC handlers) and admin
    /// operations such as membership changes.
    pub fn raft(&self) -> &openraft::Raft<TypeConfig> {
        &self.inner.raft
    }

    /// What the local Raft log holds (read from sled).
    pub fn log_stats(&self) -> Result<LogStats, StoreError> {
        LogStats::read(&self.inner.log_trees.0, &self.inner.log_trees.1)
    }

    /// Last log index covered by the current snapshot, if one was built or installed.
    pub fn snapshot_index(&self) -> Option<u64> {
        self.inner.raft.metrics().borrow().snapshot.map(|l| l.index)
    }

    /// Stops Raft and flushes the store.
    pub async fn shutdown(&self) {
        let mut stopped = self.inner.stopped.lock().await;
        if *stopped {
            return;
        }
        self.inner.stopping.store(true, Ordering::Release);
        tracing::info!(node_id = self.inner.node_id, "shutting down the registry");
        if let Err(e) = self.inner.raft.shutdown().await {
            tracing::warn!(error = %e, "raft did not stop cleanly");
        }
        // The state machine worker and a snapshot being built end on their own after the core;
        // wait for them to let go of the stores.
        let deadline = Instant::now() + STORE_RELEASE_TIMEOUT;
        while self.inner.store_holders.strong_count() > 0 {
            if Instant::now() >= deadline {
                tracing::warn!(
                    holders = self.inner.store_holders.strong_count(),
                    "raft tasks still hold the store after {STORE_RELEASE_TIMEOUT:?}"
                );
                break;
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        if let Some(h) = self
            .inner
            .watcher
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .take()
        {
            h.abort();
        }
        if let Some(h) = self
            .inner
            .batch_task
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .take()
        {
            h.abort();
        }
        self.inner.metrics.is_leader.set(0);
        if let Err(e) = types::flush(&self.inner.db).await {
            tracing::error!(error = %e, "flushing the registry store on shutdown failed");
        }
        *stopped = true;
        tracing::info!(node_id = self.inner.node_id, "registry stopped");
    }

    pub(crate) fn leader_addr(&self, id: Option<u64>, node: Option<BasicNode>) -> Option<String> {
        node.map(|n| n.addr).or_else(|| {
            let id = id?;
            let m = self.inner.raft.metrics();
            let m = m.borrow();
            m.membership_config
                .membership()
                .get_node(&id)
                .map(|n| n.addr.clone())
        })
    }
}

/// Mirrors Raft's metrics into the gauges, logs leadership changes and, on a follower, tracks
/// the last contact with the leader. Ends when Raft stops or the registry is dropped.
async fn watch_raft(inner: Weak<Inner>) {
    let (mut rx, node_id) = match inner.upgrade() {
        Some(i) => (i.raft.metrics(), i.node_id),
        None => return,
    };
    let mut tick = tokio::time::interval(Duration::from_millis(500));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut seen: Option<(Option<u64>, ServerState, u64)> = None;
    loop {
        tokio::select! {
            changed = rx.changed() => if changed.is_err() { return },
            _ = tick.tick() => {
                let Some(inner) = inner.upgrade() else { return };
                if let Ok(t) = inner.raft.with_raft_state(|st| st.vote_last_modified()).await {
                    *inner.last_contact.lock().unwrap_or_else(PoisonError::into_inner) = t;
                }
                continue;
            }
        }
        let Some(inner) = inner.upgrade() else { return };
        let (leader, state, term, last_log, applied, replication) = {
            let m = rx.borrow_and_update();
            (
                m.current_leader,
                m.state,
                m.current_term,
                m.last_log_index,
                m.last_applied.map(|l| l.index),
                m.replication.clone(),
            )
        };
        let leading = state == ServerState::Leader && leader == Some(node_id);
        let metrics = &inner.metrics;
        metrics.is_leader.set(i64::from(leading));
        metrics.term.set(gauge_value(term));
        metrics
            .last_log_index
            .set(gauge_value(last_log.unwrap_or(0)));
        metrics.applied_index.set(gauge_value(applied.unwrap_or(0)));
        match &replication {
            Some(followers) => {
                let last = last_log.unwrap_or(0);
                for (id, matched) in followers {
                    let lag = last.saturating_sub(matched.map(|l| l.index).unwrap_or(0));
                    metrics
                        .replication_lag
                        .get_or_create(&metrics::PeerLabels {
                            peer: id.to_string(),
                        })
                        .set(gauge_value(lag));
                }
            }
            None => metrics.replication_lag.clear(),
        }
        if seen.map(|s| s.0) != Some(leader) {
            metrics.leader_changes.inc();
        }
        if seen != Some((leader, state, term)) {
            tracing::info!(node_id, ?leader, ?state, term, "raft role changed");
            seen = Some((leader, state, term));
        }
    }
}
