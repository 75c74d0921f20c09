//! Where a node's [`WorkerView`] comes from: what its worker runs and what its
//! gateway routes with.
//!
//! - On a management node: projected from its own applied state after every
//!   change ([`follow_local`]).
//! - On a worker-only node: watched from any management node
//!   (`WorkerService/WatchState`, [`watch_remote`]), rotating through them when a
//!   stream fails or stays behind the leader's log, keeping the newest view (by
//!   applied index). The worker runs and its gateway routes from the last view it
//!   received, whether or not the management group has quorum. A management node
//!   of a build from before worker views sends its whole state instead; that is
//!   projected here the same way.
//!
//! In memory only.

use std::sync::Arc;
use std::time::Duration;

use strom_control_plane::state_machine::StateView;
use strom_control_plane::worker_view::project;
use strom_control_plane::workers::decode_view;
use strom_proto::ids::NodeId;
use strom_proto::internal_v1::{StateUpdate, WatchStateRequest};
use strom_proto::worker_view::{ViewDelta, WorkerView, DELTA_FORMAT};
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

use crate::agent::{client, Agent};

/// How long a watched view may stay behind the leader's log before the watch moves.
const STALE_WATCH: Duration = Duration::from_secs(3);
/// How long opening the state watch on a manager may take.
const WATCH_OPEN: Duration = Duration::from_secs(5);

/// Keep `tx` at the projection of the local applied state for `node`, until
/// `cancel` (or the state machine is gone). A change that leaves the view as it
/// was (a write to an app this node neither runs nor routes differently) wakes
/// no one: the worker and the gateway see only changes that concern them.
pub async fn follow_local(
    mut state: watch::Receiver<Arc<StateView>>,
    node: NodeId,
    tx: watch::Sender<Arc<WorkerView>>,
    projected: watch::Sender<u64>,
    cancel: CancellationToken,
) {
    loop {
        tokio::select! {
            _ = cancel.cancelled() => return,
            changed = state.changed() => if changed.is_err() { return },
        }
        // At once, not coalesced: an acknowledged write (a new key) is what this
        // node's gateway serves by the time the client sends its next request.
        let view = project(&state.borrow_and_update(), node);
        let index = view.applied_index;
        tx.send_if_modified(|current| {
            let changed = !current.same_content(&view);
            if changed {
                *current = Arc::new(view);
            }
            changed
        });
        // After the view: whoever waits for an index finds the view published.
        projected.send_replace(index);
    }
}

/// The projection of a management node's own state for its worker and gateway.
pub struct LocalView {
    pub view: watch::Receiver<Arc<WorkerView>>,
    /// The applied index the view was last projected at (advances even when the
    /// view stays the same).
    pub projected: watch::Receiver<u64>,
    pub task: tokio::task::JoinHandle<()>,
}

/// A channel holding the projection of `state` for `node` now, and the task that
/// keeps it current.
pub fn local(
    mut state: watch::Receiver<Arc<StateView>>,
    node: NodeId,
    cancel: CancellationToken,
) -> LocalView {
    let first = project(&state.borrow_and_update(), node);
    let (projected_tx, projected) = watch::channel(first.applied_index);
    let (tx, view) = watch::channel(Arc::new(first));
    let task = tokio::spawn(follow_local(state, node, tx, projected_tx, cancel));
    LocalView {
        view,
        projected,
        task,
    }
}

/// The view in an update: the worker view, or (from a management node of an
/// older build) the whole state, projected here.
fn view_of(update: &StateUpdate, node: NodeId) -> Result<WorkerView, String> {
    if !update.worker_view.is_empty() {
        return WorkerView::decode(&update.worker_view).map_err(|e| e.to_string());
    }
    let state = decode_view(&update.view).map_err(|e| e.to_string())?;
    Ok(project(&state, node))
}

/// Keep `tx` at the newest view any management node streams, until `cancel`.
pub async fn watch_remote(
    agent: Arc<Agent>,
    tx: watch::Sender<Arc<WorkerView>>,
    cancel: CancellationToken,
) {
    let node = agent.offer.node_id;
    let mut round = 0usize;
    // Failed attempts since the last stream: the first is logged, the rest are
    // counted (not a line every 500 ms while no management node answers), and
    // the recovery says how many there were.
    let mut failures = 0u64;
    loop {
        let targets = agent.managers.addresses();
        let url = targets[round % targets.len().max(1)].clone();
        round += 1;
        let after_index = tx.borrow().applied_index;
        let watched = async {
            let mut c = client(&url, &agent.managers.secret).await?;
            // The stream's start has a deadline (a frozen manager accepts and
            // answers nothing); the stream itself is watched below.
            let open = c.watch_state(WatchStateRequest {
                join_token: agent.token.clone(),
                node_id: node,
                after_index,
                view_format: DELTA_FORMAT,
            });
            let mut stream = tokio::time::timeout(WATCH_OPEN, open)
                .await
                .map_err(|_| format!("{url}: no answer within {WATCH_OPEN:?}"))?
                .map_err(|s| format!("{url}: {}", s.message()))?
                .into_inner();
            if failures > 0 {
                tracing::info!(
                    from = %url,
                    failed_attempts = failures,
                    "watching the cluster state again"
                );
            } else {
                tracing::info!(from = %url, "watching the cluster state");
            }
            failures = 0;
            let mut behind_since: Option<tokio::time::Instant> = None;
            let mut stream_view: Option<Arc<WorkerView>> = None;
            loop {
                let next = tokio::select! {
                    m = stream.message() => m.map_err(|s| format!("{url}: {}", s.message()))?,
                    _ = tokio::time::sleep(Duration::from_secs(1)) => {
                        // A node that keeps its stream open but falls behind the
                        // leader (cut off, lagging) is left for another.
                        let leader = agent.leader_index.load(std::sync::atomic::Ordering::Relaxed);
                        if tx.borrow().applied_index < leader {
                            let since = *behind_since.get_or_insert_with(tokio::time::Instant::now);
                            if since.elapsed() > STALE_WATCH {
                                return Err(format!("{url} stays behind the leader's log"));
                            }
                        } else {
                            behind_since = None;
                        }
                        continue;
                    }
                };
                let Some(update) = next else { break };
                // A delta applies to this stream's previous view (which may be
                // older than the one published here, from an earlier stream).
                let view = if update.worker_view_delta.is_empty() {
                    view_of(&update, node)
                        .map_err(|e| format!("{url} sent an unreadable view: {e}"))?
                } else {
                    let delta = ViewDelta::decode(&update.worker_view_delta)
                        .map_err(|e| format!("{url} sent an unreadable view delta: {e}"))?;
                    stream_view
                        .as_ref()
                        .ok_or_else(|| format!("{url} sent a view delta before a whole view"))?
                        .apply(&delta)
                        .map_err(|e| format!("{url}: {e}"))?
                };
                let view = Arc::new(view);
                stream_view = Some(view.clone());
                agent.managers.learn(&view);
                tx.send_if_modified(|current| {
                    if view.applied_index > current.applied_index {
                        *current = view;
                        true
                    } else {
                        false
                    }
                });
            }
            Err::<(), String>(format!("{url} ended the state stream"))
        };
        tokio::select! {
            _ = cancel.cancelled() => return,
            result = watched => {
                if let Err(e) = result {
                    if failures == 0 {
                        tracing::warn!(
                            "state watch: {e}; trying the management nodes in turn (further failures are counted, and logged at debug level)"
                        );
                    } else {
                        tracing::debug!(failures, "state watch: {e}");
                    }
                    failures += 1;
                }
            }
        }
        let pause = if round.is_multiple_of(targets.len().max(1)) {
            500
        } else {
            50
        };
        tokio::select! {
            _ = cancel.cancelled() => return,
            _ = tokio::time::sleep(Duration::from_millis(pause)) => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_older_management_node_s_whole_state_is_projected_here() {
        let state = StateView::default();
        let update = StateUpdate {
            applied_index: 0,
            view: strom_control_plane::workers::encode_view(&state),
            ..StateUpdate::default()
        };
        let view = view_of(&update, 7).unwrap();
        assert_eq!(view.node, 7);
        let newer = StateUpdate {
            applied_index: 0,
            worker_view: view.encode(),
            ..StateUpdate::default()
        };
        assert_eq!(view_of(&newer, 7).unwrap(), view);
        let broken = StateUpdate {
            applied_index: 0,
            view: vec![1, 2, 3],
            ..StateUpdate::default()
        };
        assert!(view_of(&broken, 7).is_err());
    }
}
