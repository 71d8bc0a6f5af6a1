//! The openraft type configuration of the registry, type aliases over it, and the storage error
//! type shared by the log store and the state machine.

use std::io::Cursor;

use openraft::{AnyError, BasicNode, ErrorSubject, ErrorVerb, StorageIOError, TokioRuntime};

use crate::command::{Command, Response};

openraft::declare_raft_types!(
    /// The registry's Raft types: a log entry carries one [`Command`], applying it yields a
    /// [`Response`]; servers are `u64` IDs with their advertised address; snapshots are JSON
    /// bytes held in memory.
    pub TypeConfig:
        D = Command,
        R = Response,
        NodeId = u64,
        Node = BasicNode,
        Entry = openraft::Entry<TypeConfig>,
        SnapshotData = Cursor<Vec<u8>>,
        AsyncRuntime = TokioRuntime,
);

pub type NodeId = u64;
pub type LogId = openraft::LogId<NodeId>;
pub type Vote = openraft::Vote<NodeId>;
pub type Entry = openraft::Entry<TypeConfig>;
pub type StoredMembership = openraft::StoredMembership<NodeId, BasicNode>;
pub type SnapshotMeta = openraft::SnapshotMeta<NodeId, BasicNode>;
pub type Snapshot = openraft::Snapshot<TypeConfig>;
pub type StorageError = openraft::StorageError<NodeId>;
pub type Raft = openraft::Raft<TypeConfig>;

/// A failure of the sled-backed stores, before it is given openraft's error context.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("sled: {0}")]
    Sled(#[from] sled::Error),
    /// Stored data that does not decode or is inconsistent; `what` names the record.
    #[error("corrupt {what}: {reason}")]
    Corrupt { what: String, reason: String },
    #[error("encode {what}: {reason}")]
    Encode { what: String, reason: String },
    #[error("flush to disk: {0}")]
    Flush(String),
}

impl StoreError {
    pub(crate) fn corrupt(what: impl Into<String>, reason: impl ToString) -> StoreError {
        StoreError::Corrupt {
            what: what.into(),
            reason: reason.to_string(),
        }
    }

    pub(crate) fn encode(what: impl Into<String>, reason: impl ToString) -> StoreError {
        StoreError::Encode {
            what: what.into(),
            reason: reason.to_string(),
        }
    }

    /// Wraps the error as openraft's storage error on `subject`.
    pub(crate) fn into_storage(
        self,
        subject: ErrorSubject<NodeId>,
        verb: ErrorVerb,
    ) -> StorageError {
        StorageIOError::new(subject, verb, AnyError::new(&self)).into()
    }
}

/// Flushes sled (every tree shares one log) on the blocking pool, so a slow fsync does not stall
/// the async workers. Returns once everything written before the call is durable.
pub(crate) async fn flush(tree: &sled::Tree) -> Result<(), StoreError> {
    let tree = tree.clone();
    match tokio::task::spawn_blocking(move || tree.flush()).await {
        Ok(Ok(_)) => Ok(()),
        Ok(Err(e)) => Err(StoreError::Sled(e)),
        Err(e) => Err(StoreError::Flush(e.to_string())),
    }
}
