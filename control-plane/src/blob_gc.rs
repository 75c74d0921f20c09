//! Removing packages that no app version references any more (a deleted app, a
//! version forgotten by retention), on every management node, once the change
//! that dropped them has been applied there.
//!
//! What goes is decided by [`collectable`], a pure function: a stored package is
//! removed when no version in the applied state references it and either
//! - this node saw it referenced before (it was deleted or forgotten), and it was
//!   not written again since (a deploy of the same package after the delete, whose
//!   version may still be committing: see `blob_store::PIN`), or
//! - it is older than [`ORPHAN_AGE`] and not written recently (left by a deploy
//!   that never committed, or by a node that was down when it was deleted).
//!
//! Durable: nothing of its own; the blob files are the state. Runs on every
//! management node (not only the leader), after every applied change (coalesced)
//! and every [`SWEEP_EVERY`].

use std::collections::{HashMap, HashSet};
use std::time::Duration;

use strom_proto::ids::VersionId;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use crate::cluster_state::ClusterState;
use crate::management::ManagementNode;

/// An unreferenced package nobody is known to have referenced is kept this long.
pub const ORPHAN_AGE: Duration = Duration::from_secs(3600);
/// How often the store is looked at without a change of the state.
const SWEEP_EVERY: Duration = Duration::from_secs(300);
/// Changes in a burst (a deploy, then its placement) are collected together.
const COALESCE: Duration = Duration::from_secs(1);

/// Every version the state references.
pub fn referenced(state: &ClusterState) -> HashSet<VersionId> {
    state
        .apps
        .values()
        .flat_map(|a| a.versions.iter().map(|v| v.id.clone()))
        .collect()
}

/// What the collector knows of one stored package.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Package {
    /// Since its file was written.
    pub age: Duration,
    /// When this node last saw a version reference it (`None`: never).
    pub last_referenced: Option<Instant>,
    /// When it was last written, if within the pin time.
    pub written: Option<Instant>,
}

/// The stored packages to remove, of those no version references now.
pub fn collectable(unreferenced: &[(VersionId, Package)], orphan_age: Duration) -> Vec<VersionId> {
    unreferenced
        .iter()
        .filter(|(_, p)| match (p.last_referenced, p.written) {
            // Deleted or forgotten, and not written again since.
            (Some(seen), Some(written)) => written <= seen,
            (Some(_), None) => true,
            // Never referenced here: an orphan once old, and not being written.
            (None, Some(_)) => false,
            (None, None) => p.age >= orphan_age,
        })
        .map(|(id, _)| id.clone())
        .collect()
}

/// Collect packages on this node until `cancel`. Every applied state is looked at
/// as it comes (to note what it references: a version deployed and forgotten
/// between two collections is still known to have been referenced); collections
/// run shortly after a change and every [`SWEEP_EVERY`].
pub async fn run(node: ManagementNode, cancel: CancellationToken) {
    let mut state = node.state.clone();
    let mut last_referenced: HashMap<VersionId, Instant> = HashMap::new();
    let mut collect_at = Instant::now();
    loop {
        tokio::select! {
            _ = cancel.cancelled() => return,
            changed = state.changed() => {
                if changed.is_err() {
                    return;
                }
                let at = Instant::now();
                for id in referenced(&state.borrow_and_update().state) {
                    last_referenced.insert(id, at);
                }
                collect_at = collect_at.min(at + COALESCE);
                continue;
            }
            _ = tokio::time::sleep_until(collect_at) => {}
        }
        let now = referenced(&state.borrow_and_update().state);
        let at = Instant::now();
        for id in &now {
            last_referenced.insert(id.clone(), at);
        }
        collect(&node, &now, &mut last_referenced).await;
        collect_at = Instant::now() + SWEEP_EVERY;
    }
}

/// One collection: remove what [`collectable`] picks.
async fn collect(
    node: &ManagementNode,
    now: &HashSet<VersionId>,
    last_referenced: &mut HashMap<VersionId, Instant>,
) {
    let stored = match node.blobs.list().await {
        Ok(s) => s,
        Err(e) => {
            tracing::warn!("listing the package store: {e}");
            return;
        }
    };
    let written = node.blobs.pinned();
    let unreferenced: Vec<(VersionId, Package)> = stored
        .iter()
        .filter(|(id, _)| !now.contains(id))
        .map(|(id, age)| {
            let package = Package {
                age: *age,
                last_referenced: last_referenced.get(id).copied(),
                written: written.get(id).copied(),
            };
            (id.clone(), package)
        })
        .collect();
    for id in collectable(&unreferenced, ORPHAN_AGE) {
        match node.blobs.remove(&id).await {
            Ok(()) => {
                tracing::info!(
                    version = id.short(),
                    "removed a package no version references"
                );
                last_referenced.remove(&id);
            }
            Err(e) => tracing::warn!("removing package {}: {e}", id.short()),
        }
    }
    // Remember only what is still stored or referenced.
    let stored: HashSet<&VersionId> = stored.iter().map(|(id, _)| id).collect();
    last_referenced.retain(|id, _| stored.contains(id) || now.contains(id));
}

#[cfg(test)]
mod tests {
    use super::*;

    fn v(n: u8) -> VersionId {
        VersionId::of_bytes(&[n])
    }

    const MIN: Duration = Duration::from_secs(60);

    fn package(
        age: Duration,
        last_referenced: Option<Instant>,
        written: Option<Instant>,
    ) -> Package {
        Package {
            age,
            last_referenced,
            written,
        }
    }

    #[tokio::test(start_paused = true)]
    async fn what_was_referenced_and_is_not_any_more_goes() {
        let t0 = Instant::now();
        tokio::time::advance(MIN).await;
        let seen = Some(Instant::now());
        let gone = collectable(
            &[
                // Deleted; written once, before it was last seen referenced.
                (v(1), package(MIN, seen, Some(t0))),
                // Deleted long ago (no longer pinned).
                (v(2), package(10 * MIN, seen, None)),
                // Never referenced here and young: a deploy that may still commit.
                (v(3), package(MIN, None, Some(t0))),
            ],
            ORPHAN_AGE,
        );
        assert_eq!(gone, vec![v(1), v(2)]);
    }

    #[tokio::test(start_paused = true)]
    async fn a_package_written_again_after_its_delete_stays() {
        // Deleted, then deployed again with the same bytes: written after it was
        // last seen referenced, while its new version may still be committing.
        let seen = Some(Instant::now());
        tokio::time::advance(MIN).await;
        let again = Some(Instant::now());
        let gone = collectable(&[(v(2), package(Duration::ZERO, seen, again))], ORPHAN_AGE);
        assert!(gone.is_empty());
    }

    #[test]
    fn old_orphans_go_young_ones_stay() {
        let gone = collectable(
            &[
                (v(4), package(ORPHAN_AGE, None, None)),
                (v(5), package(ORPHAN_AGE - MIN, None, None)),
            ],
            ORPHAN_AGE,
        );
        assert_eq!(gone, vec![v(4)]);
    }
}
