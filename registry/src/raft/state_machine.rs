//! The Raft state machine (openraft storage-v2 `RaftStateMachine`): the registry [`State`] in
//! memory, rebuilt on start from the last snapshot stored in sled plus a replay of the log after
//! it.
//!
//! A snapshot's data is the serde_json of [`SnapshotPayload`]: the state image with the last
//! applied log ID and the last membership. The current snapshot (built here or installed from
//! the leader) is kept in the sled tree `snapshot` as two records written in one batch and
//! flushed: `meta` (JSON of [`SnapshotHeader`]: openraft's snapshot meta, the data's length and
//! FNV-1a checksum) and `data` (the payload bytes).
//!
//! Every applied entry is also pushed to the change [`Feed`] that agents' watch streams read;
//! it is pushed while the state's write lock is held, so a reader that locks the state and then
//! the feed sees both at the same index.

use std::io::Cursor;
use std::sync::{Arc, Mutex, PoisonError, RwLock};
use std::time::{Instant, SystemTime, UNIX_EPOCH};

use openraft::storage::RaftStateMachine;
use openraft::{EntryPayload, ErrorSubject, ErrorVerb, OptionalSend, RaftSnapshotBuilder};
use serde::{Deserialize, Serialize};
use tokio::sync::watch;

use super::disk::Disk;
use super::metrics::{gauge_value, KindLabels, RaftMetrics};
use super::types::{
    Entry, LogId, Snapshot, SnapshotMeta, StorageError, StoreError, StoredMembership, TypeConfig,
};
use crate::archive::fnv1a;
use crate::command::Response;
use crate::feed::{Feed, DEFAULT_FEED_ENTRIES};
use crate::state::{State, StateImage};

const META: &str = "meta";
const DATA: &str = "data";

/// The content of a snapshot.
#[derive(Serialize, Deserialize)]
pub struct SnapshotPayload {
    pub last_applied: Option<LogId>,
    pub last_membership: StoredMembership,
    pub state: StateImage,
}

/// The `meta` record of the stored snapshot.
#[derive(Serialize, Deserialize)]
struct SnapshotHeader {
    meta: SnapshotMeta,
    len: u64,
    checksum: u64,
}

/// Decodes snapshot data and checks it against its meta.
fn decode_payload(meta: &SnapshotMeta, data: &[u8]) -> Result<SnapshotPayload, StoreError> {
    let what = || format!("snapshot {}", meta.snapshot_id);
    let payload: SnapshotPayload =
        serde_json::from_slice(data).map_err(|e| StoreError::corrupt(what(), e))?;
    if payload.last_applied != meta.last_log_id {
        return Err(StoreError::corrupt(
            what(),
            format!(
                "its data was taken at log {:?} but its meta says {:?}",
                payload.last_applied, meta.last_log_id
            ),
        ));
    }
    if payload.last_membership != meta.last_membership {
        return Err(StoreError::corrupt(
            what(),
            format!(
                "its data holds membership {:?} but its meta says {:?}",
                payload.last_membership, meta.last_membership
            ),
        ));
    }
    Ok(payload)
}

/// The `snapshot` tree; clones share it.
#[derive(Clone)]
struct SnapshotStore {
    tree: sled::Tree,
    disk: Arc<Disk>,
    /// Serializes check-and-store of a new snapshot (a build may finish after an install).
    lock: Arc<tokio::sync::Mutex<()>>,
    /// Held by the state machine and every snapshot builder: the registry waits for all to be
    /// dropped on shutdown.
    _holder: Arc<()>,
}

impl SnapshotStore {
    /// The stored snapshot's meta and data, with the data's length and checksum verified.
    fn load(&self) -> Result<Option<(SnapshotMeta, Vec<u8>)>, StoreError> {
        let header = self.tree.get(META)?;
        let data = self.tree.get(DATA)?;
        let (header, data) = match (header, data) {
            (None, None) => return Ok(None),
            (Some(h), Some(d)) => (h, d),
            (Some(_), None) => {
                return Err(StoreError::corrupt(
                    "stored snapshot",
                    "its data record is missing",
                ))
            }
            (None, Some(_)) => {
                return Err(StoreError::corrupt(
                    "stored snapshot",
                    "its meta record is missing",
                ))
            }
        };
        let header: SnapshotHeader = serde_json::from_slice(&header)
            .map_err(|e| StoreError::corrupt("stored snapshot meta", e))?;
        let what = || format!("stored snapshot {}", header.meta.snapshot_id);
        if data.len() as u64 != header.len {
            return Err(StoreError::corrupt(
                what(),
                format!("data is {} bytes, {} were written", data.len(), header.len),
            ));
        }
        let sum = fnv1a(&data);
        if sum != header.checksum {
            return Err(StoreError::corrupt(
                what(),
                format!(
                    "data checksum {sum:016x} != {:016x} written",
                    header.checksum
                ),
            ));
        }
        Ok(Some((header.meta, data.to_vec())))
    }

    /// Stores `meta` + `data` as the current snapshot unless a newer one is stored already;
    /// durable when it returns. Returns whether it was stored.
    async fn save(&self, meta: &SnapshotMeta, data: &[u8]) -> Result<bool, StoreError> {
        let _guard = self.lock.lock().await;
        if let Some(h) = self.tree.get(META)? {
            if let Ok(old) = serde_json::from_slice::<SnapshotHeader>(&h) {
                if old.meta.last_log_id > meta.last_log_id {
                    return Ok(false);
                }
            }
        }
        let header = SnapshotHeader {
            meta: meta.clone(),
            len: data.len() as u64,
            checksum: fnv1a(data),
        };
        let header =
            serde_json::to_vec(&header).map_err(|e| StoreError::encode("snapshot meta", e))?;
        let mut batch = sled::Batch::default();
        batch.insert(META, header);
        batch.insert(DATA, data);
        self.tree.apply_batch(batch)?;
        // A snapshot is large: sled may keep it in a blob file, which only a file-system sync
        // covers.
        self.disk.sync(true).await?;
        Ok(true)
    }
}

/// The registry state machine; `state` is shared with the [`Registry`](super::Registry) handle.
pub struct StateMachineStore {
    state: Arc<RwLock<State>>,
    /// The recent commands, for agents' watch streams; locked after `state` when both are.
    feed: Arc<Mutex<Feed>>,
    last_applied: Option<LogId>,
    last_membership: StoredMembership,
    snapshots: SnapshotStore,
    applied_tx: watch::Sender<u64>,
    metrics: RaftMetrics,
}

impl StateMachineStore {
    /// Opens the `snapshot` tree of `db` and loads the state from the stored snapshot (empty if
    /// there is none), with metrics that are not registered anywhere.
    pub fn open(db: &sled::Db, dir: &std::path::Path) -> Result<StateMachineStore, StoreError> {
        let disk = Disk::open(db.clone(), dir)?;
        StateMachineStore::open_with_metrics(db, disk, RaftMetrics::default(), Arc::default())
    }

    pub(crate) fn open_with_metrics(
        db: &sled::Db,
        disk: Arc<Disk>,
        metrics: RaftMetrics,
        holder: Arc<()>,
    ) -> Result<StateMachineStore, StoreError> {
        let snapshots = SnapshotStore {
            tree: db.open_tree("snapshot")?,
            disk,
            lock: Arc::default(),
            _holder: holder,
        };
        let (state, last_applied, last_membership) = match snapshots.load()? {
            None => (State::new(), None, StoredMembership::default()),
            Some((meta, data)) => {
                let payload = decode_payload(&meta, &data)?;
                tracing::info!(snapshot = %meta, bytes = data.len(), "loaded the state from the stored snapshot");
                (
                    State::from_image(payload.state),
                    payload.last_applied,
                    payload.last_membership,
                )
            }
        };
        let applied = last_applied.map(|l| l.index).unwrap_or(0);
        metrics.applied_index.set(gauge_value(applied));
        Ok(StateMachineStore {
            state: Arc::new(RwLock::new(state)),
            feed: Arc::new(Mutex::new(Feed::new(applied, DEFAULT_FEED_ENTRIES))),
            last_applied,
            last_membership,
            snapshots,
            applied_tx: watch::channel(applied).0,
            metrics,
        })
    }

    /// The state this machine applies to.
    pub fn state(&self) -> Arc<RwLock<State>> {
        self.state.clone()
    }

    /// The change feed: every command applied since the state was loaded, the oldest dropped
    /// beyond [`DEFAULT_FEED_ENTRIES`]. Lock it after the state when locking both.
    pub fn feed(&self) -> Arc<Mutex<Feed>> {
        self.feed.clone()
    }

    /// A receiver of the last applied log index.
    pub fn subscribe(&self) -> watch::Receiver<u64> {
        self.applied_tx.subscribe()
    }

    fn publish_applied(&self) {
        let index = self.last_applied.map(|l| l.index).unwrap_or(0);
        self.metrics.applied_index.set(gauge_value(index));
        self.applied_tx.send_replace(index);
    }
}

/// Builds a snapshot from a copy of the state taken when it was created.
pub struct SnapshotBuilder {
    payload: SnapshotPayload,
    snapshots: SnapshotStore,
    metrics: RaftMetrics,
}

impl RaftSnapshotBuilder<TypeConfig> for SnapshotBuilder {
    async fn build_snapshot(&mut self) -> Result<Snapshot, StorageError> {
        let started = Instant::now();
        let stamp = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_micros())
            .unwrap_or(0);
        let snapshot_id = match &self.payload.last_applied {
            Some(l) => format!(
                "{}-{}-{}-{stamp}",
                l.leader_id.term, l.leader_id.node_id, l.index
            ),
            None => format!("none-{stamp}"),
        };
        let meta = SnapshotMeta {
            last_log_id: self.payload.last_applied,
            last_membership: self.payload.last_membership.clone(),
            snapshot_id,
        };
        let subject = || ErrorSubject::Snapshot(Some(meta.signature()));
        // Encoding a large registry takes a while: on the blocking pool, so the async workers
        // (Raft heartbeats, RPC) are not held up.
        let placeholder = SnapshotPayload {
            last_applied: self.payload.last_applied,
            last_membership: self.payload.last_membership.clone(),
            state: StateImage::default(),
        };
        let payload = std::mem::replace(&mut self.payload, placeholder);
        let encoded = tokio::task::spawn_blocking(move || serde_json::to_vec(&payload))
            .await
            .map_err(|e| {
                StoreError::encode("snapshot", e).into_storage(subject(), ErrorVerb::Write)
            })?;
        let data = encoded.map_err(|e| {
            StoreError::encode("snapshot", e).into_storage(subject(), ErrorVerb::Write)
        })?;
        let stored = self
            .snapshots
            .save(&meta, &data)
            .await
            .map_err(|e| e.into_storage(subject(), ErrorVerb::Write))?;
        self.metrics.snapshot("built");
        tracing::info!(
            snapshot = %meta,
            bytes = data.len(),
            stored,
            took_ms = started.elapsed().as_millis() as u64,
            "built a snapshot"
        );
        Ok(Snapshot {
            meta,
            snapshot: Box::new(Cursor::new(data)),
        })
    }
}

impl RaftStateMachine<TypeConfig> for StateMachineStore {
    type SnapshotBuilder = SnapshotBuilder;

    async fn applied_state(&mut self) -> Result<(Option<LogId>, StoredMembership), StorageError> {
        Ok((self.last_applied, self.last_membership.clone()))
    }

    async fn apply<I>(&mut self, entries: I) -> Result<Vec<Response>, StorageError>
    where
        I: IntoIterator<Item = Entry> + OptionalSend,
        I::IntoIter: OptionalSend,
    {
        let mut responses = Vec::new();
        let first = self.last_applied.map(|l| l.index + 1);
        {
            let mut state = self.state.write().unwrap_or_else(PoisonError::into_inner);
            // Fed after the batch, still under the state lock: feed readers wait only for the
            // pushes, not for the applies.
            let mut fed = Vec::new();
            for entry in entries {
                let index = entry.log_id.index;
                let (response, cmd) = match entry.payload {
                    EntryPayload::Blank => (Response::Done, None),
                    EntryPayload::Normal(cmd) => {
                        let started = Instant::now();
                        let response = state.apply(index, &cmd);
                        self.metrics
                            .apply_duration
                            .get_or_create(&KindLabels { kind: cmd.kind() })
                            .observe(started.elapsed().as_secs_f64());
                        (response, Some(Arc::new(cmd)))
                    }
                    EntryPayload::Membership(m) => {
                        self.last_membership = StoredMembership::new(Some(entry.log_id), m);
                        (Response::Done, None)
                    }
                };
                fed.push((index, cmd));
                self.last_applied = Some(entry.log_id);
                responses.push(response);
            }
            let mut feed = self.feed.lock().unwrap_or_else(PoisonError::into_inner);
            for (index, cmd) in fed {
                feed.push(index, cmd);
            }
        }
        if !responses.is_empty() {
            tracing::debug!(
                from = first.unwrap_or(0),
                to = self.last_applied.map(|l| l.index).unwrap_or(0),
                entries = responses.len(),
                "applied a batch"
            );
            self.publish_applied();
        }
        Ok(responses)
    }

    async fn get_snapshot_builder(&mut self) -> SnapshotBuilder {
        // A point-in-time copy, so applying may go on while the snapshot is serialized.
        let image = self
            .state
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .image();
        SnapshotBuilder {
            payload: SnapshotPayload {
                last_applied: self.last_applied,
                last_membership: self.last_membership.clone(),
                state: image,
            },
            snapshots: self.snapshots.clone(),
            metrics: self.metrics.clone(),
        }
    }

    async fn begin_receiving_snapshot(&mut self) -> Result<Box<Cursor<Vec<u8>>>, StorageError> {
        Ok(Box::new(Cursor::new(Vec::new())))
    }

    async fn install_snapshot(
        &mut self,
        meta: &SnapshotMeta,
        snapshot: Box<Cursor<Vec<u8>>>,
    ) -> Result<(), StorageError> {
        let subject = || ErrorSubject::Snapshot(Some(meta.signature()));
        let data = snapshot.into_inner();
        let payload =
            decode_payload(meta, &data).map_err(|e| e.into_storage(subject(), ErrorVerb::Read))?;
        self.snapshots
            .save(meta, &data)
            .await
            .map_err(|e| e.into_storage(subject(), ErrorVerb::Write))?;
        let state = State::from_image(payload.state);
        {
            let mut current = self.state.write().unwrap_or_else(PoisonError::into_inner);
            *current = state;
            let index = payload.last_applied.map(|l| l.index).unwrap_or(0);
            self.feed
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .reset(index);
        }
        self.last_applied = payload.last_applied;
        self.last_membership = payload.last_membership;
        self.metrics.snapshot("installed");
        tracing::info!(snapshot = %meta, bytes = data.len(), "installed a snapshot");
        self.publish_applied();
        Ok(())
    }

    async fn get_current_snapshot(&mut self) -> Result<Option<Snapshot>, StorageError> {
        let stored = self
            .snapshots
            .load()
            .map_err(|e| e.into_storage(ErrorSubject::Snapshot(None), ErrorVerb::Read))?;
        Ok(stored.map(|(meta, data)| Snapshot {
            meta,
            snapshot: Box::new(Cursor::new(data)),
        }))
    }
}
