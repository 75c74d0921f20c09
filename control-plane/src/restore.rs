//! Restore (issue 17): a new first management node from a checkpoint.
//!
//! The node's data dir is made as if it had received the checkpoint as a Raft
//! snapshot: `raft/snapshots/snapshot.bin` holds the checkpoint's state at its log
//! id, with a new membership of this node alone; the log store holds a vote in the
//! term past every stored checkpoint's (so the node's first election is in a later
//! term, and its own checkpoints are newer than the stored ones and than those of
//! a node of the lost cluster that comes back); the packages are in its blob store;
//! `node.json` and `join.token` are written. `strom serve` on that data dir starts
//! as a restart: openraft begins the log after the snapshot. Other management
//! nodes and workers then join it as usual.
//!
//! The registered workers and their placements are dropped (they were machines of
//! the lost cluster); the scheduler places every app on the workers that join.
//! Everything else comes back: apps with their versions, active version,
//! settings, keys and scale; system keys; deployment history and credentials;
//! timer schedule status; the admin token (its hash).

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use openraft::storage::RaftLogStorage;
use openraft::{BasicNode, Membership};
use strom_proto::ids::{ClusterId, NodeId, TokenHash};
use strom_proto::raft_types::{SnapshotMeta, StoredMembership, Vote};

use crate::checkpoint::{CheckpointError, CheckpointMeta, CheckpointStore};
use crate::cluster_state::ClusterState;

/// What to restore and where.
pub struct RestoreRequest<'a> {
    pub store: &'a dyn CheckpointStore,
    /// A checkpoint id; `None`: the newest whole one.
    pub checkpoint: Option<String>,
    pub data_dir: PathBuf,
    pub node_id: NodeId,
    /// Where other nodes will reach this node's control port (`host:port`): give
    /// `strom serve` the same.
    pub advertise_addr: String,
    /// A new cluster id (a second cluster from the same checkpoint, e.g. a drill
    /// next to the running one); otherwise the checkpoint's.
    pub new_cluster_id: bool,
    /// The cluster's join token, to keep it (checked against the checkpoint);
    /// `None`: a new one is made.
    pub join_token: Option<String>,
}

/// What a restore did.
#[derive(Debug)]
pub struct Restored {
    pub checkpoint: CheckpointMeta,
    /// Newer checkpoints that could not be used, and why.
    pub skipped: Vec<(String, String)>,
    pub cluster_id: String,
    pub apps: usize,
    pub packages: usize,
    pub join_token_path: PathBuf,
    /// Whether the join token is new (the old one no longer admits nodes).
    pub new_join_token: bool,
}

#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct RestoreError(pub String);

impl From<CheckpointError> for RestoreError {
    fn from(e: CheckpointError) -> Self {
        RestoreError(e.to_string())
    }
}

/// Restore into `request.data_dir`, which must be empty or absent. On failure
/// the data dir is left as it was found.
pub async fn restore(request: RestoreRequest<'_>) -> Result<Restored, RestoreError> {
    let dir = &request.data_dir;
    check_empty(dir)?;
    let existed = dir.exists();
    // A new data dir is its owner's alone from the start (it will hold secrets).
    crate::durable::private_dir(dir).map_err(|e| io(dir, e))?;
    let result = restore_into(&request).await;
    if result.is_err() {
        // Leave nothing half made: the dir was empty (or absent) before.
        if existed {
            if let Ok(entries) = std::fs::read_dir(dir) {
                for e in entries.flatten() {
                    let p = e.path();
                    let _ = if p.is_dir() {
                        std::fs::remove_dir_all(&p)
                    } else {
                        std::fs::remove_file(&p)
                    };
                }
            }
        } else {
            let _ = std::fs::remove_dir_all(dir);
        }
    }
    result
}

fn check_empty(dir: &Path) -> Result<(), RestoreError> {
    match std::fs::read_dir(dir) {
        Ok(mut entries) => {
            if entries.next().is_some() {
                return Err(RestoreError(format!(
                    "{} is not empty: restore into a new, empty data dir (nothing was changed)",
                    dir.display()
                )));
            }
            Ok(())
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(RestoreError(format!("{}: {e}", dir.display()))),
    }
}

/// A checkpoint read whole: its state and every package, verified.
struct Whole {
    meta: CheckpointMeta,
    state: Vec<u8>,
    packages: Vec<Vec<u8>>,
}

async fn read_whole(store: &dyn CheckpointStore, id: &str) -> Result<Whole, CheckpointError> {
    let (meta, state) = store.read(id).await?;
    let mut packages = Vec::new();
    for p in &meta.packages {
        packages.push(store.get_package(&p.sha256).await.map_err(|e| match e {
            CheckpointError::PackageNotFound(sha) => CheckpointError::Corrupt {
                what: format!("checkpoint {id}: its package {sha}"),
                expected: sha,
                actual: "missing".into(),
            },
            other => other,
        })?);
    }
    Ok(Whole {
        meta,
        state,
        packages,
    })
}

/// The checkpoint to restore: the one named, or the newest whole one of the only
/// cluster in the store (a damaged one is skipped, and named).
async fn choose(
    store: &dyn CheckpointStore,
    id: Option<&str>,
) -> Result<(Whole, Vec<(String, String)>), RestoreError> {
    if let Some(id) = id {
        return Ok((read_whole(store, id).await?, Vec::new()));
    }
    let mut all = store.list(None).await?;
    let clusters: BTreeSet<&str> = all.iter().map(|m| m.cluster_id.as_str()).collect();
    if clusters.is_empty() {
        return Err(RestoreError(format!(
            "{} holds no checkpoint",
            store.describe()
        )));
    }
    if clusters.len() > 1 {
        let newest: Vec<String> = clusters
            .iter()
            .filter_map(|c| {
                all.iter()
                    .filter(|m| m.cluster_id == *c)
                    .max_by_key(|m| m.position())
                    .map(|m| format!("{c} (newest: {})", m.id))
            })
            .collect();
        return Err(RestoreError(format!(
            "{} holds checkpoints of {} clusters: {}; name one with --checkpoint",
            store.describe(),
            clusters.len(),
            newest.join(", ")
        )));
    }
    all.sort_by_key(|m| std::cmp::Reverse(m.position()));
    let mut skipped = Vec::new();
    for m in &all {
        match read_whole(store, &m.id).await {
            Ok(whole) => return Ok((whole, skipped)),
            Err(e @ (CheckpointError::Corrupt { .. } | CheckpointError::NotFound(_))) => {
                skipped.push((m.id.clone(), e.to_string()));
            }
            Err(e) => return Err(e.into()),
        }
    }
    Err(RestoreError(format!(
        "no checkpoint in {} is whole: {}",
        store.describe(),
        skipped
            .iter()
            .map(|(id, e)| format!("{id}: {e}"))
            .collect::<Vec<_>>()
            .join("; ")
    )))
}

async fn restore_into(request: &RestoreRequest<'_>) -> Result<Restored, RestoreError> {
    let (whole, skipped) = choose(request.store, request.checkpoint.as_deref()).await?;
    let id = whole.meta.id.clone();
    let (meta, mut state) = crate::state_machine::read_checkpoint(&whole.state)
        .map_err(|e| RestoreError(format!("checkpoint {id}: its state is unreadable: {e}")))?;
    let Some(log_id) = meta.last_log_id else {
        return Err(RestoreError(format!("checkpoint {id} has no log position")));
    };
    if (log_id.leader_id.term, log_id.index) != whole.meta.position() {
        return Err(RestoreError(format!(
            "checkpoint {id}: its state is at term {} index {}, not where its record says",
            log_id.leader_id.term, log_id.index
        )));
    }
    let join_token = prepare_state(&mut state, &whole.meta, request)?;

    let dir = &request.data_dir;
    // The packages first, verified again by the blob store's own hash.
    let blobs = crate::blob_store::BlobStore::open(dir).map_err(|e| RestoreError(e.to_string()))?;
    for (p, bytes) in whole.meta.packages.iter().zip(whole.packages) {
        let got = blobs
            .put(Arc::new(bytes))
            .await
            .map_err(|e| RestoreError(e.to_string()))?;
        if got.as_str() != p.sha256 {
            return Err(RestoreError(format!(
                "checkpoint {id}: package {} stored as {}",
                p.sha256,
                got.as_str()
            )));
        }
    }
    crate::management::check_node_file(dir, request.node_id)
        .map_err(|e| RestoreError(e.to_string()))?;
    let join_path = dir.join("join.token");
    crate::management::write_secret_file(&join_path, &join_token).map_err(|e| io(&join_path, e))?;

    // The log: a vote one term past the newest term stored for the cluster, so
    // the restored group's first election is in a term no stored checkpoint has
    // and no node of the lost cluster reaches by restarting (its own re-election
    // is one past the term it knew): their checkpoints are fenced out by ours.
    // openraft purges the empty log up to the snapshot on start.
    let newest_term = request
        .store
        .list(Some(&whole.meta.cluster_id))
        .await?
        .iter()
        .map(|m| m.term)
        .max()
        .unwrap_or(0)
        .max(log_id.leader_id.term);
    let raft_dir = dir.join("raft");
    std::fs::create_dir_all(&raft_dir).map_err(|e| io(&raft_dir, e))?;
    let log_path = raft_dir.join("log.redb");
    {
        let mut log = crate::log_store::LogStore::open(&log_path)
            .map_err(|e| RestoreError(format!("{}: {e}", log_path.display())))?;
        log.save_vote(&Vote::new(newest_term + 1, request.node_id))
            .await
            .map_err(|e| RestoreError(format!("{}: {e}", log_path.display())))?;
    }
    let membership = Membership::new(
        vec![BTreeSet::from([request.node_id])],
        BTreeMap::from([(request.node_id, BasicNode::new(&request.advertise_addr))]),
    );
    let snapshot = SnapshotMeta {
        last_log_id: Some(log_id),
        last_membership: StoredMembership::new(Some(log_id), membership),
        snapshot_id: format!("restore-{id}"),
    };
    let snap_dir = raft_dir.join("snapshots");
    crate::state_machine::write_snapshot_file(&snap_dir, &snapshot, &state)
        .map_err(|e| io(&snap_dir, e))?;
    Ok(Restored {
        cluster_id: state
            .cluster
            .as_ref()
            .map(|c| c.cluster_id.to_string())
            .unwrap_or_default(),
        apps: state.apps.len(),
        packages: whole.meta.packages.len(),
        checkpoint: whole.meta,
        skipped,
        join_token_path: join_path,
        new_join_token: request.join_token.is_none(),
    })
}

/// The restored state: the checkpoint's, with a new cluster id if asked, the join
/// token kept (if given and right) or new, and no workers. Answers the join token.
fn prepare_state(
    state: &mut ClusterState,
    meta: &CheckpointMeta,
    request: &RestoreRequest<'_>,
) -> Result<String, RestoreError> {
    let Some(info) = state.cluster.as_mut() else {
        return Err(RestoreError(format!(
            "checkpoint {}: its state holds no initialized cluster",
            meta.id
        )));
    };
    if info.cluster_id.to_string() != meta.cluster_id {
        return Err(RestoreError(format!(
            "checkpoint {} says cluster {}, but its state is of cluster {}: refused",
            meta.id, meta.cluster_id, info.cluster_id
        )));
    }
    let join_token = match &request.join_token {
        Some(t) => {
            let t = t.trim().to_string();
            if TokenHash::of(&t) != info.join_token_hash {
                return Err(RestoreError(
                    "the join token given is not this cluster's (leave --join-token out to make a new one)"
                        .into(),
                ));
            }
            t
        }
        None => crate::management::new_token(),
    };
    info.join_token_hash = TokenHash::of(&join_token);
    if request.new_cluster_id {
        info.cluster_id = ClusterId::new_random();
    }
    state.workers.clear();
    state.placements.clear();
    Ok(join_token)
}

fn io(path: &Path, e: std::io::Error) -> RestoreError {
    RestoreError(format!("{}: {e}", path.display()))
}
