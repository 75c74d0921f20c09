//! The Raft state machine: applies committed entries to [`ClusterState`] and
//! builds/installs snapshots.
//!
//! Durable: snapshot files under `<data-dir>/raft/snapshots/` (`snapshot.bin`, a
//! versioned envelope of the snapshot meta + state; written to a temp file, fsync'd,
//! renamed). In memory: the applied state, published after every batch as an
//! immutable [`StateView`] through a `watch` channel, so readers (admin API,
//! gateways) never lock the state machine. On start the latest snapshot file is
//! loaded; openraft then re-applies the committed log entries after it, so a crash
//! at any point loses nothing that was committed.

use std::io::Cursor;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use openraft::storage::{RaftStateMachine, Snapshot};
use openraft::{EntryPayload, RaftSnapshotBuilder, StorageIOError};
use serde::{Deserialize, Serialize};
use strom_proto::codec;
use strom_proto::command::CommandResult;
use strom_proto::raft_types::{
    Entry, LogId, SnapshotMeta, StorageError, StoredMembership, TypeConfig,
};
use tokio::sync::watch;

use crate::cluster_state::ClusterState;
use crate::durable::write_atomically;

/// Snapshot format written by this build. Formats 1 (no workers, no placements),
/// 2 (no timers), 3 (no timer retries), 4 (no deployments, no system keys) and 5
/// (no client sessions) are still read and migrated.
pub const SNAPSHOT_FORMAT: u32 = 6;
const SNAPSHOT_FILE: &str = "snapshot.bin";

/// What readers see: the state as of `last_applied`.
#[derive(Debug, Clone, Default)]
pub struct StateView {
    pub last_applied: Option<LogId>,
    pub membership: StoredMembership,
    pub state: Arc<ClusterState>,
}

impl StateView {
    pub fn applied_index(&self) -> u64 {
        self.last_applied.map(|l| l.index).unwrap_or(0)
    }
}

#[derive(Serialize, Deserialize)]
struct SnapshotBody {
    meta: SnapshotMeta,
    state: ClusterState,
}

pub struct StateMachine {
    view: StateView,
    dir: PathBuf,
    /// Last log id of the snapshot file on disk: a snapshot built earlier but
    /// finished later never replaces a newer one.
    on_disk: Arc<std::sync::Mutex<Option<LogId>>>,
    publish: watch::Sender<Arc<StateView>>,
    snapshot_seq: u64,
}

impl StateMachine {
    /// Open the state machine, loading the latest snapshot from `dir` if any.
    pub fn open(dir: &Path) -> Result<(Self, watch::Receiver<Arc<StateView>>), std::io::Error> {
        std::fs::create_dir_all(dir)?;
        let mut view = StateView::default();
        let path = dir.join(SNAPSHOT_FILE);
        if path.exists() {
            let bytes = std::fs::read(&path)?;
            let body = decode_snapshot(&bytes)
                .map_err(|e| std::io::Error::other(format!("snapshot {}: {e}", path.display())))?;
            view = StateView {
                last_applied: body.meta.last_log_id,
                membership: body.meta.last_membership.clone(),
                state: Arc::new(body.state),
            };
        }
        let (publish, rx) = watch::channel(Arc::new(view.clone()));
        Ok((
            StateMachine {
                on_disk: Arc::new(std::sync::Mutex::new(view.last_applied)),
                view,
                dir: dir.to_path_buf(),
                publish,
                snapshot_seq: 0,
            },
            rx,
        ))
    }

    fn publish(&self) {
        self.publish.send_replace(Arc::new(self.view.clone()));
    }
}

/// A checkpoint's state bytes: the snapshot envelope of `view` (what a snapshot
/// file holds), so a restore reads it with the same code as a snapshot.
pub fn checkpoint_bytes(view: &StateView) -> Result<Vec<u8>, codec::CodecError> {
    let meta = SnapshotMeta {
        last_log_id: view.last_applied,
        last_membership: view.membership.clone(),
        snapshot_id: format!("checkpoint-{}", view.applied_index()),
    };
    encode_snapshot(&meta, &view.state)
}

/// A checkpoint's (or a snapshot file's) meta and state, in any format.
pub fn read_checkpoint(bytes: &[u8]) -> Result<(SnapshotMeta, ClusterState), codec::CodecError> {
    let body = decode_snapshot(bytes)?;
    Ok((body.meta, body.state))
}

/// Write `state` as the snapshot file of a state machine in `dir` (a restore:
/// the node starts from it, its log beginning after `meta.last_log_id`).
pub fn write_snapshot_file(
    dir: &Path,
    meta: &SnapshotMeta,
    state: &ClusterState,
) -> std::io::Result<()> {
    std::fs::create_dir_all(dir)?;
    let bytes = encode_snapshot(meta, state).map_err(std::io::Error::other)?;
    write_atomically(dir, SNAPSHOT_FILE, &bytes)
}

/// Format 1: the state before workers and placements existed.
#[derive(Deserialize)]
struct SnapshotBodyV1 {
    meta: SnapshotMeta,
    state: ClusterStateV1,
}

#[derive(Deserialize)]
struct ClusterStateV1 {
    cluster: Option<crate::cluster_state::ClusterInfo>,
    apps: crate::cluster_state::Apps,
}

fn decode_snapshot(bytes: &[u8]) -> Result<SnapshotBody, codec::CodecError> {
    let (format, body) = codec::open_envelope(bytes, SNAPSHOT_FORMAT)?;
    if format == 1 {
        let old: SnapshotBodyV1 = codec::decode(body)?;
        return Ok(SnapshotBody {
            meta: old.meta,
            state: ClusterState {
                cluster: old.state.cluster,
                apps: old.state.apps,
                ..ClusterState::default()
            },
        });
    }
    if format == 2 {
        let old: SnapshotBodyV2 = codec::decode(body)?;
        return Ok(SnapshotBody {
            meta: old.meta,
            state: old.state.into(),
        });
    }
    if format == 3 {
        let old: SnapshotBodyV3 = codec::decode(body)?;
        return Ok(SnapshotBody {
            meta: old.meta,
            state: old.state.into(),
        });
    }
    if format == 5 {
        let old: SnapshotBodyV5 = codec::decode(body)?;
        return Ok(SnapshotBody {
            meta: old.meta,
            state: old.state.into(),
        });
    }
    if format == 4 {
        let old: SnapshotBodyV4 = codec::decode(body)?;
        return Ok(SnapshotBody {
            meta: old.meta,
            state: old.state.into(),
        });
    }
    codec::decode(body)
}

/// The snapshot of `state`, in the newest format every member can read: format 2
/// until the cluster speaks [`Feature::Timers`] (a follower of an older build may be
/// sent it during a rolling upgrade; there are no timer records before), then 3.
fn encode_snapshot(
    meta: &SnapshotMeta,
    state: &ClusterState,
) -> Result<Vec<u8>, codec::CodecError> {
    if state.allows(strom_proto::version::Feature::ClientSessions) {
        return codec::encode_envelope(
            SNAPSHOT_FORMAT,
            &SnapshotBody {
                meta: meta.clone(),
                state: state.clone(),
            },
        );
    }
    if state.allows(strom_proto::version::Feature::Publishing) {
        #[derive(Serialize)]
        struct V5<'a> {
            meta: &'a SnapshotMeta,
            state: crate::cluster_state::ClusterStateV5Ref<'a>,
        }
        return codec::encode_envelope(
            5,
            &V5 {
                meta,
                state: state.as_v5(),
            },
        );
    }
    if state.allows(strom_proto::version::Feature::TimerRuns) {
        #[derive(Serialize)]
        struct V4<'a> {
            meta: &'a SnapshotMeta,
            state: crate::cluster_state::ClusterStateV4Ref<'a>,
        }
        return codec::encode_envelope(
            4,
            &V4 {
                meta,
                state: state.as_v4(),
            },
        );
    }
    if state.allows(strom_proto::version::Feature::Timers) {
        #[derive(Serialize)]
        struct V3<'a> {
            meta: &'a SnapshotMeta,
            state: crate::cluster_state::ClusterStateV3Ref<'a>,
        }
        return codec::encode_envelope(
            3,
            &V3 {
                meta,
                state: state.as_v3(),
            },
        );
    }
    #[derive(Serialize)]
    struct V2<'a> {
        meta: &'a SnapshotMeta,
        state: crate::cluster_state::ClusterStateV2Ref<'a>,
    }
    codec::encode_envelope(
        2,
        &V2 {
            meta,
            state: state.as_v2(),
        },
    )
}

/// Format 5: the state before client sessions.
#[derive(Deserialize)]
struct SnapshotBodyV5 {
    meta: SnapshotMeta,
    state: crate::cluster_state::ClusterStateV5,
}

/// Format 4: the state before deployments and system keys.
#[derive(Deserialize)]
struct SnapshotBodyV4 {
    meta: SnapshotMeta,
    state: crate::cluster_state::ClusterStateV4,
}

/// Format 3: the state before timer retries.
#[derive(Deserialize)]
struct SnapshotBodyV3 {
    meta: SnapshotMeta,
    state: crate::cluster_state::ClusterStateV3,
}

/// Format 2: the state before timers.
#[derive(Deserialize)]
struct SnapshotBodyV2 {
    meta: SnapshotMeta,
    state: crate::cluster_state::ClusterStateV2,
}

pub struct SnapshotBuilder {
    body: Option<(SnapshotMeta, Arc<ClusterState>)>,
    dir: PathBuf,
    on_disk: Arc<std::sync::Mutex<Option<LogId>>>,
}

/// Write the snapshot file unless the one on disk is newer.
fn store_snapshot(
    dir: PathBuf,
    on_disk: Arc<std::sync::Mutex<Option<LogId>>>,
    last: Option<LogId>,
    bytes: Vec<u8>,
) -> impl FnOnce() -> std::io::Result<()> {
    move || {
        let mut current = on_disk.lock().expect("snapshot file lock");
        if *current > last {
            return Ok(());
        }
        write_atomically(&dir, SNAPSHOT_FILE, &bytes)?;
        *current = last;
        Ok(())
    }
}

impl RaftSnapshotBuilder<TypeConfig> for SnapshotBuilder {
    async fn build_snapshot(&mut self) -> Result<Snapshot<TypeConfig>, StorageError> {
        let (meta, state) = self.body.take().expect("a builder builds one snapshot");
        let bytes = encode_snapshot(&meta, &state)
            .map_err(|e| StorageIOError::write_snapshot(Some(meta.signature()), &e))?;
        tokio::task::spawn_blocking(store_snapshot(
            self.dir.clone(),
            self.on_disk.clone(),
            meta.last_log_id,
            bytes.clone(),
        ))
        .await
        .map_err(|e| StorageIOError::write_snapshot(Some(meta.signature()), &e))?
        .map_err(|e| StorageIOError::write_snapshot(Some(meta.signature()), &e))?;
        Ok(Snapshot {
            meta,
            snapshot: Box::new(Cursor::new(bytes)),
        })
    }
}

impl RaftStateMachine<TypeConfig> for StateMachine {
    type SnapshotBuilder = SnapshotBuilder;

    async fn applied_state(&mut self) -> Result<(Option<LogId>, StoredMembership), StorageError> {
        Ok((self.view.last_applied, self.view.membership.clone()))
    }

    async fn apply<I>(&mut self, entries: I) -> Result<Vec<CommandResult>, StorageError>
    where
        I: IntoIterator<Item = Entry> + Send,
        I::IntoIter: Send,
    {
        let mut results = Vec::new();
        {
            let state = Arc::make_mut(&mut self.view.state);
            for entry in entries {
                self.view.last_applied = Some(entry.log_id);
                match entry.payload {
                    EntryPayload::Blank => results.push(CommandResult::Unchanged),
                    EntryPayload::Normal(ref command) => {
                        let result = state.apply_at(command, entry.log_id.index);
                        tracing::debug!(index = entry.log_id.index, ?result, "applied");
                        results.push(result);
                    }
                    EntryPayload::Membership(ref m) => {
                        self.view.membership = StoredMembership::new(Some(entry.log_id), m.clone());
                        results.push(CommandResult::Applied);
                    }
                }
            }
        }
        self.publish();
        Ok(results)
    }

    async fn get_snapshot_builder(&mut self) -> Self::SnapshotBuilder {
        self.snapshot_seq += 1;
        let last = self.view.last_applied;
        let snapshot_id = match last {
            Some(l) => format!("{}-{}-{}", l.leader_id.term, l.index, self.snapshot_seq),
            None => format!("0-0-{}", self.snapshot_seq),
        };
        SnapshotBuilder {
            body: Some((
                SnapshotMeta {
                    last_log_id: last,
                    last_membership: self.view.membership.clone(),
                    snapshot_id,
                },
                self.view.state.clone(),
            )),
            dir: self.dir.clone(),
            on_disk: self.on_disk.clone(),
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
        let bytes = snapshot.into_inner();
        let body = decode_snapshot(&bytes)
            .map_err(|e| StorageIOError::read_snapshot(Some(meta.signature()), &e))?;
        tokio::task::spawn_blocking(store_snapshot(
            self.dir.clone(),
            self.on_disk.clone(),
            meta.last_log_id,
            bytes,
        ))
        .await
        .map_err(|e| StorageIOError::write_snapshot(Some(meta.signature()), &e))?
        .map_err(|e| StorageIOError::write_snapshot(Some(meta.signature()), &e))?;
        self.view = StateView {
            last_applied: meta.last_log_id,
            membership: meta.last_membership.clone(),
            state: Arc::new(body.state),
        };
        self.publish();
        Ok(())
    }

    async fn get_current_snapshot(&mut self) -> Result<Option<Snapshot<TypeConfig>>, StorageError> {
        let path = self.dir.join(SNAPSHOT_FILE);
        let bytes = match tokio::fs::read(&path).await {
            Ok(b) => b,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(StorageIOError::read_snapshot(None, &e).into()),
        };
        let body = decode_snapshot(&bytes).map_err(|e| StorageIOError::read_snapshot(None, &e))?;
        Ok(Some(Snapshot {
            meta: body.meta,
            snapshot: Box::new(Cursor::new(bytes)),
        }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A snapshot written by a build before workers existed (format 1) still loads.
    #[test]
    fn format_1_snapshots_are_migrated() {
        #[derive(Serialize)]
        struct V1<'a> {
            meta: SnapshotMeta,
            state: (
                &'a Option<crate::cluster_state::ClusterInfo>,
                &'a std::collections::BTreeMap<
                    strom_proto::ids::AppName,
                    crate::cluster_state::AppState,
                >,
            ),
        }
        let info = crate::cluster_state::ClusterInfo {
            cluster_id: strom_proto::ids::ClusterId::new_random(),
            admin_token_hash: strom_proto::ids::TokenHash::of("a"),
            join_token_hash: strom_proto::ids::TokenHash::of("j"),
            created_at_ms: 7,
        };
        let cluster = Some(info.clone());
        let apps = std::collections::BTreeMap::new();
        let bytes = codec::encode_envelope(
            1,
            &V1 {
                meta: SnapshotMeta::default(),
                state: (&cluster, &apps),
            },
        )
        .unwrap();
        let body = decode_snapshot(&bytes).unwrap();
        assert_eq!(body.state.cluster, Some(info));
        assert!(body.state.workers.is_empty());
        assert!(body.state.placements.is_empty());
    }

    /// Until the cluster speaks protocol 6, snapshots are written in format 2 (an
    /// older follower may be sent one); then in format 3, timers included.
    #[test]
    fn the_snapshot_format_follows_the_cluster_protocol() {
        let mut state = crate::timer_records::tests::with_timer_app();
        state.protocol = 5;
        let meta = SnapshotMeta::default();
        let old = encode_snapshot(&meta, &state).unwrap();
        assert_eq!(codec::open_envelope(&old, 2).unwrap().0, 2);
        assert_eq!(decode_snapshot(&old).unwrap().state, state);
        state.protocol = 6;
        let v3 = encode_snapshot(&meta, &state).unwrap();
        assert_eq!(codec::open_envelope(&v3, 3).unwrap().0, 3);
        assert_eq!(decode_snapshot(&v3).unwrap().state, state);
        // Protocol 7: format 4, with the timers' retries.
        state.protocol = 7;
        let (timer, retry) = crate::timer_records::tests::a_retry();
        state.timer_retries.insert(timer, retry);
        let v4 = encode_snapshot(&meta, &state).unwrap();
        assert_eq!(codec::open_envelope(&v4, 4).unwrap().0, 4);
        assert_eq!(decode_snapshot(&v4).unwrap().state, state);
        // Protocol 8: format 5, with deployments and system keys.
        state.protocol = 8;
        let app = strom_proto::ids::AppName::parse("batch").unwrap();
        state.apply(&strom_proto::command::Command::BeginDeployment(Box::new(
            strom_proto::command::DeploymentStart {
                app: app.clone(),
                id: "d1".into(),
                author: "ada".into(),
                deployer: "curl".into(),
                message: String::new(),
                node: 1,
                size_bytes: 1,
                deadline_ms: 10,
                at_ms: 1,
            },
        )));
        state
            .system_keys
            .entry(app)
            .or_default()
            .insert("hook".into(), "v".repeat(20));
        assert!(!state.deployments.is_empty());
        let v5 = encode_snapshot(&meta, &state).unwrap();
        assert_eq!(codec::open_envelope(&v5, 5).unwrap().0, 5);
        assert_eq!(decode_snapshot(&v5).unwrap().state, state);
        // Protocol 10: format 6, with client sessions.
        state.protocol = 10;
        let open = strom_proto::command::Command::OpenSession {
            id: "0123456789abcdef0123456789abcdef".into(),
            at_ms: 5,
        };
        assert_eq!(
            state.apply(&open),
            strom_proto::command::CommandResult::Applied
        );
        let v6 = encode_snapshot(&meta, &state).unwrap();
        assert_eq!(codec::open_envelope(&v6, 6).unwrap().0, 6);
        assert_eq!(decode_snapshot(&v6).unwrap().state, state);
    }

    /// A snapshot of a build before timers (format 2) still loads, with no timers.
    #[test]
    fn format_2_snapshots_are_migrated() {
        #[derive(Serialize)]
        struct V2<'a> {
            meta: SnapshotMeta,
            state: crate::cluster_state::ClusterStateV2Ref<'a>,
        }
        let mut state = crate::timer_records::tests::with_timer_app();
        state.protocol = 5;
        let bytes = codec::encode_envelope(
            2,
            &V2 {
                meta: SnapshotMeta::default(),
                state: state.as_v2(),
            },
        )
        .unwrap();
        let body = decode_snapshot(&bytes).unwrap();
        assert_eq!(body.state, state, "every field but the (empty) timers");
        assert!(body.state.timers.is_empty());
    }
}
