//! Restore from a checkpoint (`strom cluster restore`): which checkpoint is used,
//! what the new data dir holds, and what is refused without changing anything.

use std::sync::Arc;

use openraft::storage::RaftStateMachine;
use openraft::CommittedLeaderId;
use strom_control_plane::checkpoint::local::LocalStore;
use strom_control_plane::checkpoint::{CheckpointMeta, CheckpointStore};
use strom_control_plane::cluster_state::ClusterState;
use strom_control_plane::restore::{restore, RestoreRequest};
use strom_control_plane::state_machine::{checkpoint_bytes, StateMachine, StateView};
use strom_proto::command::{Command, WorkerCapacity, WorkerInfo};
use strom_proto::ids::{ClusterId, TokenHash};
use strom_proto::raft_types::LogId;

const JOIN: &str = "the-join-token";

/// A cluster's state with one worker registered.
fn state(cluster: &ClusterId) -> ClusterState {
    let mut s = ClusterState::default();
    s.apply(&Command::InitCluster {
        cluster_id: cluster.clone(),
        admin_token_hash: TokenHash::of("admin"),
        join_token_hash: TokenHash::of(JOIN),
        at_ms: 1,
    });
    s.apply(&Command::RegisterWorker(Box::new(WorkerInfo {
        node: 4,
        http_addr: "10.0.0.4:7071".into(),
        capacity: WorkerCapacity {
            instances: 8,
            memory_mb: 0,
        },
        labels: Default::default(),
        build: "test".into(),
        at_ms: 2,
    })));
    assert_eq!(s.workers.len(), 1);
    s
}

/// Write a checkpoint of `state` at (term, index) under `cluster` (its record).
async fn write(
    store: &LocalStore,
    record_cluster: &str,
    state: &ClusterState,
    term: u64,
    index: u64,
) -> CheckpointMeta {
    let view = StateView {
        last_applied: Some(LogId::new(CommittedLeaderId::new(term, 1), index)),
        membership: Default::default(),
        state: Arc::new(state.clone()),
    };
    let bytes = checkpoint_bytes(&view).unwrap();
    let meta = CheckpointMeta::new(record_cluster, term, index, index as i64, &bytes, vec![]);
    store.write(&meta, &bytes).await.unwrap();
    meta
}

fn request<'a>(
    store: &'a LocalStore,
    dir: &std::path::Path,
    checkpoint: Option<&str>,
) -> RestoreRequest<'a> {
    RestoreRequest {
        store,
        checkpoint: checkpoint.map(str::to_string),
        data_dir: dir.to_path_buf(),
        node_id: 3,
        advertise_addr: "127.0.0.1:7300".into(),
        new_cluster_id: false,
        join_token: None,
    }
}

#[tokio::test]
async fn the_newest_whole_checkpoint_becomes_a_one_member_group_in_a_later_term() {
    let dir = tempfile::tempdir().unwrap();
    let store = LocalStore::open(&dir.path().join("store")).unwrap();
    let cluster = ClusterId::new_random();
    let s = state(&cluster);
    let older = write(&store, &cluster.to_string(), &s, 2, 10).await;
    let newer = write(&store, &cluster.to_string(), &s, 5, 30).await;
    store.corrupt_state(&newer.id).unwrap();

    let data = dir.path().join("node");
    let restored = restore(request(&store, &data, None)).await.unwrap();
    assert_eq!(restored.checkpoint.id, older.id);
    assert_eq!(restored.skipped.len(), 1);
    assert_eq!(restored.skipped[0].0, newer.id);
    assert!(
        restored.skipped[0].1.contains("corrupt"),
        "{:?}",
        restored.skipped
    );
    assert!(restored.new_join_token);

    // The state machine starts from the checkpoint, alone in its membership,
    // without the lost cluster's workers, with a new join token.
    let (mut sm, view) = StateMachine::open(&data.join("raft").join("snapshots")).unwrap();
    let view = view.borrow().clone();
    assert_eq!(view.last_applied.unwrap().index, 10);
    let (applied, membership) = sm.applied_state().await.unwrap();
    assert_eq!(applied.unwrap().leader_id.term, 2);
    let voters: Vec<u64> = membership.membership().voter_ids().collect();
    assert_eq!(voters, vec![3]);
    assert_eq!(
        membership.membership().get_node(&3).unwrap().addr,
        "127.0.0.1:7300"
    );
    assert!(view.state.workers.is_empty());
    let info = view.state.cluster.clone().unwrap();
    assert_eq!(info.cluster_id, cluster);
    assert_eq!(info.admin_token_hash, TokenHash::of("admin"));
    let token = std::fs::read_to_string(data.join("join.token")).unwrap();
    assert_ne!(token.trim(), JOIN);
    assert_eq!(info.join_token_hash, TokenHash::of(token.trim()));
    // The vote is one term past every stored checkpoint's (5, the damaged one's).
    let mut log =
        strom_control_plane::log_store::LogStore::open(&data.join("raft").join("log.redb"))
            .unwrap();
    use openraft::storage::RaftLogStorage;
    let vote = log.read_vote().await.unwrap().unwrap();
    assert_eq!(vote.leader_id().term, 6);
    assert!(log.get_log_state().await.unwrap().last_log_id.is_none());
}

#[tokio::test]
async fn what_is_refused_changes_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let store = LocalStore::open(&dir.path().join("store")).unwrap();
    let (a, b) = (ClusterId::new_random(), ClusterId::new_random());
    let s = state(&a);
    let only = write(&store, &a.to_string(), &s, 1, 5).await;

    // A data dir that is not empty.
    let busy = dir.path().join("busy");
    std::fs::create_dir_all(&busy).unwrap();
    std::fs::write(busy.join("keep"), "x").unwrap();
    let e = restore(request(&store, &busy, None)).await.unwrap_err();
    assert!(e.to_string().contains("is not empty"), "{e}");
    assert_eq!(std::fs::read_dir(&busy).unwrap().count(), 1);

    // A join token that is not the cluster's: the new dir is not left behind.
    let fresh = dir.path().join("fresh");
    let mut r = request(&store, &fresh, None);
    r.join_token = Some("wrong".into());
    let e = restore(r).await.unwrap_err();
    assert!(e.to_string().contains("not this cluster's"), "{e}");
    assert!(!fresh.exists());

    // A record that names another cluster than its state.
    write(&store, &b.to_string(), &s, 1, 6).await;
    let e = restore(request(&store, &fresh, Some(&format!("{b}-1-6"))))
        .await
        .unwrap_err();
    assert!(e.to_string().contains("refused"), "{e}");
    assert!(!fresh.exists());

    // Two clusters in the store: which one must be said.
    let e = restore(request(&store, &fresh, None)).await.unwrap_err();
    assert!(
        e.to_string().contains("2 clusters") && e.to_string().contains("--checkpoint"),
        "{e}"
    );
    assert!(!fresh.exists());

    // Named, with its own join token kept and a new cluster id.
    let mut r = request(&store, &fresh, Some(&only.id));
    r.join_token = Some(JOIN.into());
    r.new_cluster_id = true;
    let restored = restore(r).await.unwrap();
    assert!(!restored.new_join_token);
    assert_ne!(restored.cluster_id, a.to_string());
    assert_eq!(
        std::fs::read_to_string(fresh.join("join.token"))
            .unwrap()
            .trim(),
        JOIN
    );
}
