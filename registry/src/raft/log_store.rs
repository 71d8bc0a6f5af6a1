//! The Raft log and vote in sled (openraft storage-v2 `RaftLogStorage`).
//!
//! Trees:
//! - `logs`: key = log index as 8 big-endian bytes (so keys sort by index), value = the
//!   serde_json of the [`Entry`];
//! - `meta`: `vote`, `committed` and `last_purged` (serde_json of the vote / log IDs).
//!
//! `save_vote` and `truncate` sync to disk before they return; `append` writes its entries and
//! hands the completion to the group-commit task ([`super::disk`]), which reports them
//! persisted only once a disk sync covers them, so nothing is acknowledged before it is
//! durable. `purge` and `save_committed` do not sync: losing them in a crash only means
//! re-reading or re-applying entries that are still covered by the log or the (already synced)
//! snapshot.

use std::fmt::Debug;
use std::ops::{Bound, RangeBounds};
use std::path::Path;
use std::sync::Arc;

use openraft::storage::{LogFlushed, LogState, RaftLogStorage};
use openraft::{ErrorSubject, ErrorVerb, OptionalSend, RaftLogReader};
use serde::de::DeserializeOwned;
use serde::Serialize;

use super::disk::{Committer, Disk, BLOB_SAFE_LEN};
use super::metrics::RaftMetrics;
use super::types::{Entry, LogId, NodeId, StorageError, StoreError, TypeConfig, Vote};

const VOTE: &str = "vote";
const COMMITTED: &str = "committed";
const LAST_PURGED: &str = "last_purged";

/// The sled-backed Raft log store; clones share the same trees.
#[derive(Clone)]
pub struct LogStore {
    logs: sled::Tree,
    meta: sled::Tree,
    metrics: RaftMetrics,
    disk: Arc<Disk>,
    committer: Committer,
    /// Held by every clone: the registry waits for all to be dropped on shutdown.
    _holder: Arc<()>,
}

/// What the log holds, for diagnostics and tests.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LogStats {
    /// Entries currently in the `logs` tree.
    pub entries: u64,
    pub first_index: Option<u64>,
    pub last_index: Option<u64>,
    /// Index of the last purged entry (every entry up to it was removed).
    pub last_purged_index: Option<u64>,
}

fn index_key(index: u64) -> [u8; 8] {
    index.to_be_bytes()
}

fn key_index(key: &[u8]) -> Result<u64, StoreError> {
    let bytes: [u8; 8] = key.try_into().map_err(|_| {
        StoreError::corrupt(
            "log key",
            format!("expected 8 bytes, found {} ({key:02x?})", key.len()),
        )
    })?;
    Ok(u64::from_be_bytes(bytes))
}

/// Decodes one `logs` record and checks that the entry's index is its key's.
fn decode_entry(key: &[u8], value: &[u8]) -> Result<Entry, StoreError> {
    let index = key_index(key)?;
    let entry: Entry = serde_json::from_slice(value)
        .map_err(|e| StoreError::corrupt(format!("log entry at index {index}"), e))?;
    if entry.log_id.index != index {
        return Err(StoreError::corrupt(
            format!("log entry at index {index}"),
            format!("it carries log id {}", entry.log_id),
        ));
    }
    Ok(entry)
}

/// First and last included index of `range`, or `None` when it is empty.
fn index_bounds<RB: RangeBounds<u64>>(range: &RB) -> Option<(u64, u64)> {
    let start = match range.start_bound() {
        Bound::Included(&s) => s,
        Bound::Excluded(&s) => s.checked_add(1)?,
        Bound::Unbounded => 0,
    };
    let end = match range.end_bound() {
        Bound::Included(&e) => e,
        Bound::Excluded(&e) => e.checked_sub(1)?,
        Bound::Unbounded => u64::MAX,
    };
    (start <= end).then_some((start, end))
}

impl LogStats {
    /// Reads the statistics of the log held in the `logs` and `meta` trees.
    pub(crate) fn read(logs: &sled::Tree, meta: &sled::Tree) -> Result<LogStats, StoreError> {
        let first_index = match logs.first()? {
            Some((k, _)) => Some(key_index(&k)?),
            None => None,
        };
        let last_index = match logs.last()? {
            Some((k, _)) => Some(key_index(&k)?),
            None => None,
        };
        let last_purged: Option<LogId> = get_meta(meta, LAST_PURGED)?;
        Ok(LogStats {
            entries: logs.len() as u64,
            first_index,
            last_index,
            last_purged_index: last_purged.map(|l| l.index),
        })
    }
}

fn get_meta<T: DeserializeOwned>(meta: &sled::Tree, key: &str) -> Result<Option<T>, StoreError> {
    match meta.get(key)? {
        None => Ok(None),
        Some(bytes) => serde_json::from_slice(&bytes)
            .map(Some)
            .map_err(|e| StoreError::corrupt(format!("raft meta {key:?}"), e)),
    }
}

impl LogStore {
    /// Opens the `logs` and `meta` trees of `db` (opened in `dir`) with metrics that are not
    /// registered anywhere. Starts the group-commit task: call it inside a tokio runtime.
    pub fn open(db: &sled::Db, dir: &Path) -> Result<LogStore, StoreError> {
        let disk = Disk::open(db.clone(), dir)?;
        LogStore::open_with_metrics(db, disk, RaftMetrics::default(), Arc::default())
    }

    pub(crate) fn open_with_metrics(
        db: &sled::Db,
        disk: Arc<Disk>,
        metrics: RaftMetrics,
        holder: Arc<()>,
    ) -> Result<LogStore, StoreError> {
        let committer = Committer::start(disk.clone(), metrics.clone(), holder.clone());
        Ok(LogStore {
            logs: db.open_tree("logs")?,
            meta: db.open_tree("meta")?,
            metrics,
            disk,
            committer,
            _holder: holder,
        })
    }

    /// Turns a vote this node won (`me` elected, committed) back into a vote for itself that no
    /// quorum granted yet; returns the term when it did. Called before openraft starts.
    ///
    /// openraft 0.9 lets a leader that restarts before any follower stood resume its term at
    /// once. Two things it then relies on may not hold after a crash: the commit index read
    /// back from disk (written without a sync, so it can lag the last write acknowledged), from
    /// which the resumed leader takes its read index; and its own log, whose latest entries a
    /// quorum of followers may have committed before its own sync covered them. With the
    /// committed flag gone the node waits for an election timeout and stands for a new term
    /// (or follows whoever won one): the usual Raft way back, where a leader with a shorter log
    /// cannot win, and a new leader's read index is its new blank entry, after everything
    /// acknowledged. The term and the node voted for are unchanged, so no second vote in a term
    /// becomes possible.
    pub fn resign_leadership(&self, me: NodeId) -> Result<Option<u64>, StoreError> {
        let Some(vote) = self.get_meta::<Vote>(VOTE)? else {
            return Ok(None);
        };
        if !vote.is_committed() || vote.leader_id().voted_for() != Some(me) {
            return Ok(None);
        }
        let term = vote.leader_id().get_term();
        // No sync needed: a crash before the next one leaves the committed vote, which the next
        // open resigns the same way.
        self.put_meta(VOTE, &Vote::new(term, me))?;
        Ok(Some(term))
    }

    /// Deletes the entries at or before the purge point. `purge` records the point before it
    /// deletes, so a crash in between leaves such entries behind; nothing reads them, and they
    /// would break the check that entries follow the purge point. Returns how many went.
    pub fn remove_purged(&self) -> Result<u64, StoreError> {
        let Some(purged) = self.get_meta::<LogId>(LAST_PURGED)? else {
            return Ok(0);
        };
        let mut batch = sled::Batch::default();
        let mut removed = 0u64;
        for item in self.logs.range(..=index_key(purged.index)) {
            let (k, _) = item?;
            batch.remove(k);
            removed += 1;
        }
        if removed > 0 {
            self.logs.apply_batch(batch)?;
            tracing::info!(
                removed,
                last_purged = purged.index,
                "removed log entries left behind by an interrupted purge"
            );
        }
        Ok(removed)
    }

    /// Reads every stored record and checks it: the meta values decode, every log entry decodes
    /// and sits under its own index, the indexes are consecutive and follow the last purged one.
    pub fn verify(&self) -> Result<LogStats, StoreError> {
        let _: Option<Vote> = self.get_meta(VOTE)?;
        let _: Option<LogId> = self.get_meta(COMMITTED)?;
        let stats = self.stats()?;
        let mut expected = stats.last_purged_index.map(|p| p + 1);
        for item in self.logs.iter() {
            let (k, v) = item?;
            let entry = decode_entry(&k, &v)?;
            let index = entry.log_id.index;
            if let Some(want) = expected {
                if index != want {
                    return Err(StoreError::corrupt(
                        "raft log",
                        format!("entry {want} is missing (next stored entry is {index})"),
                    ));
                }
            }
            expected = Some(index + 1);
        }
        Ok(stats)
    }

    /// Counts and bounds of the stored log.
    pub fn stats(&self) -> Result<LogStats, StoreError> {
        LogStats::read(&self.logs, &self.meta)
    }

    fn get_meta<T: DeserializeOwned>(&self, key: &str) -> Result<Option<T>, StoreError> {
        get_meta(&self.meta, key)
    }

    fn put_meta<T: Serialize>(&self, key: &str, value: &T) -> Result<(), StoreError> {
        let bytes = serde_json::to_vec(value)
            .map_err(|e| StoreError::encode(format!("raft meta {key:?}"), e))?;
        self.meta.insert(key, bytes)?;
        Ok(())
    }

    fn read_entries(&self, start: u64, end: u64) -> Result<Vec<Entry>, StoreError> {
        let mut entries = Vec::new();
        for item in self.logs.range(index_key(start)..=index_key(end)) {
            let (k, v) = item?;
            entries.push(decode_entry(&k, &v)?);
        }
        Ok(entries)
    }

    fn last_log_id(&self) -> Result<Option<LogId>, StoreError> {
        match self.logs.last()? {
            Some((k, v)) => Ok(Some(decode_entry(&k, &v)?.log_id)),
            None => Ok(None),
        }
    }
}

impl RaftLogReader<TypeConfig> for LogStore {
    async fn try_get_log_entries<RB: RangeBounds<u64> + Clone + Debug + OptionalSend>(
        &mut self,
        range: RB,
    ) -> Result<Vec<Entry>, StorageError> {
        let Some((start, end)) = index_bounds(&range) else {
            return Ok(Vec::new());
        };
        self.read_entries(start, end)
            .map_err(|e| e.into_storage(ErrorSubject::Logs, ErrorVerb::Read))
    }
}

impl RaftLogStorage<TypeConfig> for LogStore {
    type LogReader = LogStore;

    async fn get_log_state(&mut self) -> Result<LogState<TypeConfig>, StorageError> {
        let last_purged_log_id: Option<LogId> = self
            .get_meta(LAST_PURGED)
            .map_err(|e| e.into_storage(ErrorSubject::Store, ErrorVerb::Read))?;
        let last = self
            .last_log_id()
            .map_err(|e| e.into_storage(ErrorSubject::Logs, ErrorVerb::Read))?;
        Ok(LogState {
            last_purged_log_id,
            last_log_id: last.or(last_purged_log_id),
        })
    }

    async fn get_log_reader(&mut self) -> LogStore {
        self.clone()
    }

    async fn save_vote(&mut self, vote: &Vote) -> Result<(), StorageError> {
        self.put_meta(VOTE, vote)
            .map_err(|e| e.into_storage(ErrorSubject::Vote, ErrorVerb::Write))?;
        self.disk
            .sync(false)
            .await
            .map_err(|e| e.into_storage(ErrorSubject::Vote, ErrorVerb::Write))?;
        tracing::debug!(%vote, "saved vote");
        Ok(())
    }

    async fn read_vote(&mut self) -> Result<Option<Vote>, StorageError> {
        self.get_meta(VOTE)
            .map_err(|e| e.into_storage(ErrorSubject::Vote, ErrorVerb::Read))
    }

    async fn save_committed(&mut self, committed: Option<LogId>) -> Result<(), StorageError> {
        let res = match committed {
            Some(c) => self.put_meta(COMMITTED, &c),
            None => self
                .meta
                .remove(COMMITTED)
                .map(|_| ())
                .map_err(StoreError::from),
        };
        res.map_err(|e| e.into_storage(ErrorSubject::Store, ErrorVerb::Write))
    }

    async fn read_committed(&mut self) -> Result<Option<LogId>, StorageError> {
        self.get_meta(COMMITTED)
            .map_err(|e| e.into_storage(ErrorSubject::Store, ErrorVerb::Read))
    }

    async fn append<I>(
        &mut self,
        entries: I,
        callback: LogFlushed<TypeConfig>,
    ) -> Result<(), StorageError>
    where
        I: IntoIterator<Item = Entry> + OptionalSend,
        I::IntoIter: OptionalSend,
    {
        let mut batch = sled::Batch::default();
        let mut last = None;
        let mut large = false;
        for entry in entries {
            let value = serde_json::to_vec(&entry).map_err(|e| {
                StoreError::encode(format!("log entry {}", entry.log_id), e)
                    .into_storage(ErrorSubject::Log(entry.log_id), ErrorVerb::Write)
            })?;
            large |= value.len() >= BLOB_SAFE_LEN;
            batch.insert(&index_key(entry.log_id.index), value);
            last = Some(entry.log_id);
        }
        self.logs
            .apply_batch(batch)
            .map_err(|e| StoreError::from(e).into_storage(ErrorSubject::Logs, ErrorVerb::Write))?;
        if let Some(last) = last {
            tracing::trace!(%last, "appended log entries; durable at the next group commit");
        }
        // openraft counts the entries as persisted only when the commit task, after a disk
        // sync that covers them, runs the callback.
        self.committer.submit(callback, large);
        Ok(())
    }

    async fn truncate(&mut self, log_id: LogId) -> Result<(), StorageError> {
        tracing::debug!(%log_id, "truncating the log from this entry on");
        let mut batch = sled::Batch::default();
        for item in self.logs.range(index_key(log_id.index)..) {
            let (k, _) = item.map_err(|e| {
                StoreError::from(e).into_storage(ErrorSubject::Logs, ErrorVerb::Read)
            })?;
            batch.remove(k);
        }
        self.logs
            .apply_batch(batch)
            .map_err(|e| StoreError::from(e).into_storage(ErrorSubject::Logs, ErrorVerb::Delete))?;
        self.disk
            .sync(false)
            .await
            .map_err(|e| e.into_storage(ErrorSubject::Logs, ErrorVerb::Delete))
    }

    async fn purge(&mut self, log_id: LogId) -> Result<(), StorageError> {
        // Record the purge point first: entries at or before it are ignored from then on, so a
        // crash in between leaves only dead entries behind.
        self.put_meta(LAST_PURGED, &log_id)
            .map_err(|e| e.into_storage(ErrorSubject::Store, ErrorVerb::Write))?;
        let mut batch = sled::Batch::default();
        let mut removed = 0u64;
        for item in self.logs.range(..=index_key(log_id.index)) {
            let (k, _) = item.map_err(|e| {
                StoreError::from(e).into_storage(ErrorSubject::Logs, ErrorVerb::Read)
            })?;
            batch.remove(k);
            removed += 1;
        }
        self.logs
            .apply_batch(batch)
            .map_err(|e| StoreError::from(e).into_storage(ErrorSubject::Logs, ErrorVerb::Delete))?;
        self.metrics.purged.inc_by(removed);
        tracing::debug!(%log_id, removed, "purged log entries");
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use openraft::{CommittedLeaderId, EntryPayload};

    use super::*;

    fn log_id(index: u64) -> LogId {
        LogId::new(CommittedLeaderId::new(1, 1), index)
    }

    #[tokio::test]
    async fn entries_left_by_an_interrupted_purge_are_removed_at_open() {
        let dir = tempfile::TempDir::new().expect("temp dir");
        let db = sled::open(dir.path()).expect("sled");
        let logs = LogStore::open(&db, dir.path()).expect("log store");
        for i in 1..=5 {
            let entry = Entry {
                log_id: log_id(i),
                payload: EntryPayload::Blank,
            };
            let value = serde_json::to_vec(&entry).expect("encode");
            logs.logs.insert(index_key(i), value).expect("insert");
        }
        // `purge` recorded its point, then the process died before deleting.
        logs.put_meta(LAST_PURGED, &log_id(3)).expect("meta");
        assert!(logs.verify().is_err(), "entries 1..=3 are dead but present");
        assert_eq!(logs.remove_purged().expect("remove"), 3);
        let stats = logs.verify().expect("consistent after the cleanup");
        assert_eq!(stats.first_index, Some(4));
        assert_eq!(stats.last_index, Some(5));
        assert_eq!(logs.remove_purged().expect("again"), 0);
    }

    #[tokio::test]
    async fn a_leader_reopening_its_log_stands_again_and_others_keep_their_vote() {
        let dir = tempfile::TempDir::new().expect("temp dir");
        let db = sled::open(dir.path()).expect("sled");
        let mut logs = LogStore::open(&db, dir.path()).expect("log store");
        assert_eq!(logs.resign_leadership(7).expect("no vote"), None);

        // Node 7 led term 4.
        logs.save_vote(&Vote::new_committed(4, 7))
            .await
            .expect("save");
        assert_eq!(logs.resign_leadership(7).expect("resign"), Some(4));
        let vote = logs.read_vote().await.expect("read").expect("a vote");
        assert!(!vote.is_committed(), "{vote}");
        assert_eq!(vote.leader_id().get_term(), 4);
        assert_eq!(vote.leader_id().voted_for(), Some(7));
        assert_eq!(logs.resign_leadership(7).expect("again"), None);

        // Node 8 follows 7 in term 5: its vote stays as it is.
        logs.save_vote(&Vote::new_committed(5, 7))
            .await
            .expect("save");
        assert_eq!(logs.resign_leadership(8).expect("follower"), None);
        let vote = logs.read_vote().await.expect("read").expect("a vote");
        assert!(vote.is_committed());
        // A vote cast but not won is left alone too.
        logs.save_vote(&Vote::new(6, 8)).await.expect("save");
        assert_eq!(logs.resign_leadership(8).expect("candidate"), None);
    }
}
