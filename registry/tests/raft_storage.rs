//! openraft's storage conformance suite against the sled log store and the registry state
//! machine.

use openraft::testing::{StoreBuilder, Suite};
use openraft::{StorageError, StorageIOError};
use registry::raft::{LogStore, StateMachineStore, TypeConfig};
use tempfile::TempDir;

/// Every build gets a fresh sled database in its own temp dir (the guard removes it).
struct SledStoreBuilder;

impl StoreBuilder<TypeConfig, LogStore, StateMachineStore, TempDir> for SledStoreBuilder {
    async fn build(&self) -> Result<(TempDir, LogStore, StateMachineStore), StorageError<u64>> {
        let dir = TempDir::new().map_err(|e| StorageIOError::write(&e))?;
        let db = sled::Config::new()
            .path(dir.path())
            .cache_capacity(8 << 20)
            .open()
            .map_err(|e| StorageIOError::write(&e))?;
        let logs = LogStore::open(&db, dir.path()).map_err(|e| StorageIOError::write(&e))?;
        let sm = StateMachineStore::open(&db, dir.path()).map_err(|e| StorageIOError::write(&e))?;
        Ok((dir, logs, sm))
    }
}

#[test]
fn openraft_storage_suite() {
    // The suite runs each case on its own tokio runtime, so this is a plain test.
    if let Err(e) = Suite::test_all(SledStoreBuilder) {
        panic!("openraft storage suite failed: {e}");
    }
}
