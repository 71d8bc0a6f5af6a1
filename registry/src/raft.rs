//! The registry replicated with openraft: log, vote and snapshots in sled, and the
//! [`Registry`] handle the rest of meshd uses to write, read and watch.
//!
//! INTERFACE SKELETON — bodies are being written; the signatures are the contract.

use std::path::PathBuf;
use std::sync::{Arc, RwLock, RwLockReadGuard};
use std::time::Duration;

use crate::command::{Command, Response};
use crate::state::State;

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
    #[error("no leader: cannot serve a consistent read (leader: {leader:?}); retry, or use ?stale")]
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
}

/// Leader information for `/v1/status/leader` and `X-Consul-KnownLeader`.
#[derive(Clone, Debug, PartialEq)]
pub struct LeaderInfo {
    pub leader: Option<String>,
    /// Time since the last contact with the leader (zero on the leader).
    pub last_contact: Duration,
    pub peers: Vec<String>,
}

impl Registry {
    /// Opens (or creates) the store in `cfg.data_dir`, starts Raft, bootstraps a single-server
    /// cluster if the store is new, and returns once this server is leader and has applied
    /// everything committed. Registers its metrics in `metrics`.
    pub async fn open(
        cfg: RegistryConfig,
        metrics: &mut prometheus_client::registry::Registry,
    ) -> Result<Registry, OpenError> {
        let _ = (cfg, metrics);
        todo!()
    }

    /// Writes a command through Raft; returns once it is durable on a majority and applied.
    pub async fn write(&self, cmd: Command) -> Result<Applied, WriteError> {
        let _ = cmd;
        todo!()
    }

    /// Waits until a read at this consistency may be served from the local state.
    pub async fn read_barrier(&self, consistency: Consistency) -> Result<(), ReadError> {
        let _ = consistency;
        todo!()
    }

    /// The local state, read-locked. Never hold the guard across an `.await`.
    pub fn read(&self) -> RwLockReadGuard<'_, State> {
        self.state.read().unwrap_or_else(|e| e.into_inner())
    }

    /// A receiver of the last applied index; it changes after every applied batch.
    pub fn subscribe(&self) -> tokio::sync::watch::Receiver<u64> {
        todo!()
    }

    pub fn leader_info(&self) -> LeaderInfo {
        todo!()
    }

    /// Stops Raft and flushes the store.
    pub async fn shutdown(&self) {
        todo!()
    }
}
