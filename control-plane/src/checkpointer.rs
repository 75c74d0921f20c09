//! Checkpointing (issue 17): the applied state, with every package it references,
//! written to the configured [`CheckpointStore`].
//!
//! [`run_checkpointer`] runs on every management node with a store configured and
//! acts while the node leads: a checkpoint is due when `every_entries` entries
//! were applied since the newest one, or `every` has passed and anything changed.
//! At the start of each term the newest checkpoint is read from the store, so a
//! new leader continues where the last one stopped. The writer is its own task:
//! the state is an immutable view (encoded off the runtime), packages come from
//! this node's blob store (only those the store lacks), and a failing store is
//! retried with backoff (2 s doubling to 5 min) — Raft writes and serving never
//! wait for it. `strom cluster checkpoint` ([`ManagementNode::write_checkpoint`])
//! writes one at once on the node asked; the store's fencing keeps concurrent
//! writers (two nodes, a deposed leader) from ever storing older state over newer.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use strom_proto::admin_v1 as pb;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use crate::checkpoint::{CheckpointError, CheckpointMeta, CheckpointStore, PackageRef};
use crate::management::{now_ms, ManagementNode};

/// Defaults of `--checkpoint-every-entries`, `--checkpoint-every`, `--checkpoint-keep`.
pub const DEFAULT_EVERY_ENTRIES: u64 = 10_000;
pub const DEFAULT_EVERY: Duration = Duration::from_secs(15 * 60);
pub const DEFAULT_KEEP: usize = 10;

/// How often the writer looks whether a checkpoint is due.
const LOOK_EVERY: Duration = Duration::from_secs(1);
const BACKOFF_MIN: Duration = Duration::from_secs(2);
const BACKOFF_MAX: Duration = Duration::from_secs(300);

#[derive(Clone)]
pub struct CheckpointSettings {
    pub store: Arc<dyn CheckpointStore>,
    pub every_entries: u64,
    pub every: Duration,
    pub keep: usize,
}

impl std::fmt::Debug for CheckpointSettings {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CheckpointSettings")
            .field("store", &self.store.describe())
            .field("every_entries", &self.every_entries)
            .field("every", &self.every)
            .field("keep", &self.keep)
            .finish()
    }
}

/// What this node knows of checkpointing.
#[derive(Debug, Clone, Default)]
pub struct CheckpointStatus {
    pub store: String,
    pub last: Option<Written>,
    /// The last failure since `last` (Unix ms, message).
    pub last_error: Option<(i64, String)>,
}

/// A checkpoint and the bytes of the packages it references.
#[derive(Debug, Clone)]
pub struct Written {
    pub meta: CheckpointMeta,
    pub packages_size: u64,
}

impl Written {
    pub fn of(meta: CheckpointMeta) -> Written {
        Written {
            packages_size: meta.packages.iter().map(|p| p.size).sum(),
            meta,
        }
    }

    pub fn info(&self) -> pb::CheckpointInfo {
        let m = &self.meta;
        pb::CheckpointInfo {
            id: m.id.clone(),
            cluster_id: m.cluster_id.clone(),
            term: m.term,
            index: m.index,
            created_ms: m.created_ms,
            state_size: m.state_size,
            packages_size: self.packages_size,
            packages: m.packages.len() as u32,
        }
    }
}

/// A node's checkpointing: its settings (none: not configured) and status.
#[derive(Default)]
pub struct Checkpoints {
    settings: Option<CheckpointSettings>,
    status: std::sync::Mutex<CheckpointStatus>,
    /// One write at a time on this node (the writer and `strom cluster checkpoint`).
    writing: tokio::sync::Mutex<()>,
}

impl Checkpoints {
    pub fn new(settings: Option<CheckpointSettings>) -> Checkpoints {
        let store = settings
            .as_ref()
            .map(|s| s.store.describe())
            .unwrap_or_default();
        Checkpoints {
            settings,
            status: std::sync::Mutex::new(CheckpointStatus {
                store,
                ..Default::default()
            }),
            writing: Default::default(),
        }
    }

    pub fn settings(&self) -> Option<&CheckpointSettings> {
        self.settings.as_ref()
    }

    /// `None` when no store is configured.
    pub fn status(&self) -> Option<CheckpointStatus> {
        self.settings.as_ref()?;
        Some(self.status.lock().expect("checkpoint status").clone())
    }

    fn succeeded(&self, meta: CheckpointMeta) {
        metrics::counter!("strom_checkpoints_total").increment(1);
        let mut s = self.status.lock().expect("checkpoint status");
        s.last = Some(Written::of(meta));
        s.last_error = None;
    }

    fn failed(&self, e: &CheckpointError) {
        metrics::counter!("strom_checkpoint_failures_total").increment(1);
        let mut s = self.status.lock().expect("checkpoint status");
        s.last_error = Some((now_ms(), e.to_string()));
    }

    /// The store's newest checkpoint, if newer than the one known.
    fn learned(&self, meta: CheckpointMeta) {
        let mut s = self.status.lock().expect("checkpoint status");
        if s.last
            .as_ref()
            .is_none_or(|l| l.meta.position() < meta.position())
        {
            s.last = Some(Written::of(meta));
        }
    }

    /// This node's status as the admin API shows it (`None`: no store).
    pub fn admin_status(&self, node_id: u64) -> Option<pb::CheckpointStatus> {
        let s = self.status()?;
        Some(pb::CheckpointStatus {
            store: s.store,
            last: s.last.as_ref().map(Written::info),
            last_error: s.last_error.as_ref().map(|(_, e)| e.clone()),
            last_error_ms: s.last_error.as_ref().map(|(at, _)| *at),
            node_id,
        })
    }

    /// The status for other members, in the leader's live view (encoded; empty
    /// without a store).
    pub fn report(&self, node_id: u64) -> Vec<u8> {
        self.admin_status(node_id)
            .map(|s| prost::Message::encode_to_vec(&s))
            .unwrap_or_default()
    }
}

/// The leader's status from its live view.
pub fn from_report(bytes: &[u8]) -> Option<pb::CheckpointStatus> {
    if bytes.is_empty() {
        return None;
    }
    prost::Message::decode(bytes).ok()
}

/// Whether a checkpoint of the state at (term, index) is due, the newest being
/// `last` (`None`: none stored) and `now_ms` the time.
pub fn due(
    applied: (u64, u64),
    last: Option<&CheckpointMeta>,
    every_entries: u64,
    every: Duration,
    now_ms: i64,
) -> bool {
    if applied.1 == 0 {
        return false;
    }
    let Some(last) = last else {
        return true;
    };
    if applied <= last.position() {
        return false;
    }
    applied.1.saturating_sub(last.index) >= every_entries.max(1)
        || now_ms.saturating_sub(last.created_ms) >= every.as_millis() as i64
}

impl ManagementNode {
    /// Write a checkpoint of this node's applied state now (its packages first,
    /// those the store lacks), then apply retention. One at a time per node.
    pub async fn write_checkpoint(&self) -> Result<CheckpointMeta, CheckpointError> {
        let Some(settings) = self.checkpoints.settings() else {
            return Err(CheckpointError::Store {
                store: "(none)".into(),
                message: format!(
                    "node {} has no checkpoint store configured (--checkpoint-store)",
                    self.config.node_id
                ),
            });
        };
        let _one = self.checkpoints.writing.lock().await;
        let result = self.write_checkpoint_now(settings).await;
        match &result {
            Ok(meta) => {
                self.checkpoints.succeeded(meta.clone());
                match settings.store.retain(&meta.cluster_id, settings.keep).await {
                    Ok(gone) if !gone.checkpoints.is_empty() || !gone.packages.is_empty() => {
                        tracing::info!(
                            checkpoints = ?gone.checkpoints,
                            packages = gone.packages.len(),
                            "checkpoint retention removed old checkpoints"
                        );
                    }
                    Ok(_) => {}
                    Err(e) => tracing::warn!("checkpoint retention: {e}"),
                }
            }
            Err(CheckpointError::Stale { .. }) => {}
            Err(e) => self.checkpoints.failed(e),
        }
        result
    }

    async fn write_checkpoint_now(
        &self,
        settings: &CheckpointSettings,
    ) -> Result<CheckpointMeta, CheckpointError> {
        let store = &settings.store;
        let view = self.read_local();
        let not_yet = |what: &str| CheckpointError::Store {
            store: store.describe(),
            message: format!("nothing to checkpoint: {what}"),
        };
        let cluster_id = view
            .state
            .cluster
            .as_ref()
            .ok_or_else(|| not_yet("the cluster is not initialized yet"))?
            .cluster_id
            .to_string();
        let last = view
            .last_applied
            .ok_or_else(|| not_yet("no entry applied yet"))?;
        let encoded = {
            let view = view.clone();
            tokio::task::spawn_blocking(move || crate::state_machine::checkpoint_bytes(&view))
                .await
                .map_err(|e| CheckpointError::Store {
                    store: store.describe(),
                    message: format!("encoding the state: {e}"),
                })?
                .map_err(|e| CheckpointError::Store {
                    store: store.describe(),
                    message: format!("encoding the state: {e}"),
                })?
        };
        let mut packages: BTreeMap<String, u64> = BTreeMap::new();
        for app in view.state.apps.values() {
            for v in &app.versions {
                packages.insert(v.id.as_str().to_string(), v.size_bytes);
            }
        }
        for sha in packages.keys() {
            if store.has_package(sha).await? {
                continue;
            }
            let id =
                strom_proto::ids::VersionId::parse(sha).map_err(|e| CheckpointError::Store {
                    store: store.describe(),
                    message: e.to_string(),
                })?;
            let bytes = self
                .blobs
                .get(&id)
                .await
                .map_err(|e| CheckpointError::Store {
                    store: store.describe(),
                    message: format!(
                        "package {sha} is not on node {} yet ({e}); tried again later",
                        self.config.node_id
                    ),
                })?;
            store.put_package(sha, &bytes).await?;
        }
        let meta = CheckpointMeta::new(
            &cluster_id,
            last.leader_id.term,
            last.index,
            now_ms(),
            &encoded,
            packages
                .into_iter()
                .map(|(sha256, size)| PackageRef { sha256, size })
                .collect(),
        );
        store.write(&meta, &encoded).await?;
        Ok(meta)
    }
}

/// Write checkpoints while this node leads, until `cancel`.
pub async fn run_checkpointer(node: ManagementNode, cancel: CancellationToken) {
    let Some(settings) = node.checkpoints.settings().cloned() else {
        return;
    };
    let me = node.config.node_id;
    let mut metrics = node.raft.metrics();
    let mut known_term: Option<u64> = None;
    let mut backoff = Duration::ZERO;
    let mut next_try = Instant::now();
    loop {
        tokio::select! {
            _ = cancel.cancelled() => return,
            _ = tokio::time::sleep(LOOK_EVERY) => {}
        }
        let (leading, term) = {
            let m = metrics.borrow_and_update();
            (
                m.current_leader == Some(me) && m.state == openraft::ServerState::Leader,
                m.current_term,
            )
        };
        if !leading {
            known_term = None;
            continue;
        }
        if Instant::now() < next_try {
            continue;
        }
        let view = node.read_local();
        let Some(cluster) = view
            .state
            .cluster
            .as_ref()
            .map(|c| c.cluster_id.to_string())
        else {
            continue;
        };
        let result = async {
            if known_term != Some(term) {
                // A new term: continue from the newest checkpoint in the store.
                if let Some(newest) = settings
                    .store
                    .list(Some(&cluster))
                    .await?
                    .into_iter()
                    .max_by_key(|m| m.position())
                {
                    node.checkpoints.learned(newest);
                }
                known_term = Some(term);
            }
            let applied = view
                .last_applied
                .map(|l| (l.leader_id.term, l.index))
                .unwrap_or((0, 0));
            let last = node.checkpoints.status().and_then(|s| s.last);
            if !due(
                applied,
                last.as_ref().map(|w| &w.meta),
                settings.every_entries,
                settings.every,
                now_ms(),
            ) {
                return Ok(None);
            }
            let started = Instant::now();
            node.write_checkpoint()
                .await
                .map(|m| Some((m, started.elapsed())))
        }
        .await;
        match result {
            Ok(None) => {}
            Ok(Some((meta, took))) => {
                backoff = Duration::ZERO;
                tracing::info!(
                    id = %meta.id,
                    bytes = meta.state_size,
                    packages = meta.packages.len(),
                    took_ms = took.as_millis() as u64,
                    "checkpoint written"
                );
            }
            Err(CheckpointError::Stale { newest, .. }) => {
                // Someone wrote a newer one (`strom cluster checkpoint` on another
                // node): learn it and go on.
                tracing::info!("checkpoint store holds a newer checkpoint ({newest})");
                known_term = None;
            }
            Err(e) => {
                node.checkpoints.failed(&e);
                backoff = (backoff * 2).clamp(BACKOFF_MIN, BACKOFF_MAX);
                next_try = Instant::now() + backoff;
                tracing::warn!(
                    retry_in_s = backoff.as_secs(),
                    "checkpoint failed (the cluster goes on; retried): {e}"
                );
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn meta(term: u64, index: u64, created_ms: i64) -> CheckpointMeta {
        CheckpointMeta::new("c", term, index, created_ms, b"s", vec![])
    }

    #[test]
    fn a_checkpoint_is_due_after_enough_entries_or_time_with_changes() {
        let every = Duration::from_secs(60);
        // Nothing applied: nothing to write. None stored: write one.
        assert!(!due((0, 0), None, 100, every, 0));
        assert!(due((1, 5), None, 100, every, 0));
        let last = meta(1, 100, 1_000);
        // Unchanged: never due, however long ago.
        assert!(!due((1, 100), Some(&last), 100, every, 10_000_000));
        // Some entries, little time: not yet; enough entries: due.
        assert!(!due((1, 150), Some(&last), 100, every, 2_000));
        assert!(due((1, 200), Some(&last), 100, every, 2_000));
        // Few entries, enough time: due.
        assert!(due((1, 101), Some(&last), 100, every, 61_000));
        // An older position (a deposed leader's view): never.
        assert!(!due((0, 500), Some(&last), 100, every, 61_000));
        // A newer term counts as progress.
        assert!(due((2, 101), Some(&last), 100, every, 61_000));
    }
}
