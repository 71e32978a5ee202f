//! openraft's own storage test suite against `LogStore` + `StateMachineStore`, each case on a
//! fresh data directory.

use openraft::testing::{StoreBuilder, Suite};
use openraft::{AnyError, StorageError, StorageIOError};
use shoal_raft::{LogStore, StateMachineStore, TypeConfig};

struct TempDirBuilder;

impl StoreBuilder<TypeConfig, LogStore, StateMachineStore, tempfile::TempDir> for TempDirBuilder {
    async fn build(&self) -> Result<(tempfile::TempDir, LogStore, StateMachineStore), StorageError<u64>> {
        let dir = tempfile::tempdir().map_err(|e| StorageIOError::write(AnyError::new(&e)))?;
        let (log, sm, _store) =
            shoal_raft::open(dir.path()).await.map_err(|e| StorageIOError::write(AnyError::new(&e)))?;
        Ok((dir, log, sm))
    }
}

#[test]
fn openraft_storage_suite() {
    Suite::test_all(TempDirBuilder).expect("openraft storage suite");
}
