//! The redb log store and the state machine pass openraft's storage test suite.

use openraft::testing::{StoreBuilder, Suite};
use strom_control_plane::log_store::LogStore;
use strom_control_plane::state_machine::StateMachine;
use strom_proto::raft_types::{StorageError, TypeConfig};
use tempfile::TempDir;

struct Builder;

impl StoreBuilder<TypeConfig, LogStore, StateMachine, TempDir> for Builder {
    async fn build(&self) -> Result<(TempDir, LogStore, StateMachine), StorageError> {
        let dir = tempfile::tempdir().expect("temp dir");
        let log = LogStore::open(&dir.path().join("log.redb")).expect("log store");
        let (sm, _view) = StateMachine::open(&dir.path().join("snapshots")).expect("state machine");
        Ok((dir, log, sm))
    }
}

#[test]
fn t01_redb_log_store_and_state_machine_pass_the_openraft_suite() {
    if let Err(e) = Suite::test_all(Builder) {
        panic!("openraft storage suite failed: {e}");
    }
}
