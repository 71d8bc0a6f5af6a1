//! Durability of the sled store: a flush that reaches the disk, and group commit for the log.
//!
//! sled's `flush` ends in `sync_file_range`, which writes the file's pages but neither its
//! metadata nor the drive's write cache, and sled writes large values to separate blob files
//! without syncing them. [`Disk::sync`] therefore follows sled's flush with `fdatasync` of the
//! database file, or with `syncfs` of its file system when a large value may have gone to a
//! blob file, so that what it acknowledges survives a power cut and not only a process kill.
//!
//! Log appends do not wait for their own flush: each hands its completion callback to the
//! [`Committer`], a task that makes one flush for every append queued while the previous flush
//! ran (group commit) and then completes them in order. openraft counts an entry as persisted
//! only when its callback runs, so nothing is acknowledged before it is durable, and concurrent
//! writers share one disk sync instead of queueing for one each.

use std::fs::File;
use std::path::Path;
use std::sync::Arc;
use std::time::Instant;

use openraft::storage::LogFlushed;
use tokio::sync::mpsc;

use super::metrics::RaftMetrics;
use super::types::{StoreError, TypeConfig};

/// Values at least this large may be stored by sled in a blob file of their own (sled's
/// threshold is a quarter of its 512 KiB segment; this stays well below it).
pub(crate) const BLOB_SAFE_LEN: usize = 32 * 1024;

/// The sled database and its data file, for syncs that reach the disk.
pub struct Disk {
    db: sled::Db,
    file: File,
}

impl Disk {
    /// `dir` is the directory sled was opened in.
    pub fn open(db: sled::Db, dir: &Path) -> Result<Arc<Disk>, StoreError> {
        let path = dir.join("db");
        let file = File::open(&path)
            .map_err(|e| StoreError::Flush(format!("open {} for syncing: {e}", path.display())))?;
        Ok(Arc::new(Disk { db, file }))
    }

    fn sync_blocking(&self, whole_fs: bool) -> Result<(), StoreError> {
        self.db.flush()?;
        let res = if whole_fs {
            rustix::fs::syncfs(&self.file).map_err(std::io::Error::from)
        } else {
            self.file.sync_data()
        };
        res.map_err(|e| StoreError::Flush(format!("sync the registry database: {e}")))
    }

    /// Makes everything written to sled before the call durable. `whole_fs` also syncs blob
    /// files (use it after writing a value of [`BLOB_SAFE_LEN`] or more).
    pub async fn sync(self: &Arc<Self>, whole_fs: bool) -> Result<(), StoreError> {
        let disk = Arc::clone(self);
        match tokio::task::spawn_blocking(move || disk.sync_blocking(whole_fs)).await {
            Ok(r) => r,
            Err(e) => Err(StoreError::Flush(e.to_string())),
        }
    }
}

struct Pending {
    callback: LogFlushed<TypeConfig>,
    whole_fs: bool,
}

/// Sender side of the group-commit task; the task ends when every clone is dropped.
#[derive(Clone)]
pub(crate) struct Committer {
    tx: mpsc::UnboundedSender<Pending>,
}

impl Committer {
    /// Starts the group-commit task. `holder` is kept by the task so that the registry's
    /// shutdown waits for it to release the store.
    pub fn start(disk: Arc<Disk>, metrics: RaftMetrics, holder: Arc<()>) -> Committer {
        let (tx, rx) = mpsc::unbounded_channel();
        tokio::spawn(commit_loop(disk, rx, metrics, holder));
        Committer { tx }
    }

    /// Completes `callback` once everything written so far is durable.
    pub fn submit(&self, callback: LogFlushed<TypeConfig>, whole_fs: bool) {
        if let Err(mpsc::error::SendError(p)) = self.tx.send(Pending { callback, whole_fs }) {
            p.callback.log_io_completed(Err(std::io::Error::other(
                "the log's commit task has stopped",
            )));
        }
    }
}

async fn commit_loop(
    disk: Arc<Disk>,
    mut rx: mpsc::UnboundedReceiver<Pending>,
    metrics: RaftMetrics,
    _holder: Arc<()>,
) {
    let mut batch: Vec<Pending> = Vec::new();
    while rx.recv_many(&mut batch, 4096).await > 0 {
        let whole_fs = batch.iter().any(|p| p.whole_fs);
        let started = Instant::now();
        let res = disk.sync(whole_fs).await;
        metrics
            .flush_duration
            .observe(started.elapsed().as_secs_f64());
        metrics.flush_batch.observe(batch.len() as f64);
        if let Err(e) = &res {
            tracing::error!(error = %e, "making the raft log durable failed");
        }
        for p in batch.drain(..) {
            let r = match &res {
                Ok(()) => Ok(()),
                Err(e) => Err(std::io::Error::other(e.to_string())),
            };
            p.callback.log_io_completed(r);
        }
    }
    tracing::debug!("raft log commit task stopped");
}
