//! The state watch's fan-out: what changed between published states, found once
//! per change and shared by every watching worker, and the update stream each
//! worker gets.
//!
//! A worker that reads deltas (`view_format` ≥ [`DELTA_FORMAT`]) gets one whole
//! view when its stream starts and then, per change, a [`ViewDelta`] with only the
//! entries that changed, so the bytes sent and the work per change grow with the
//! change, not with the cluster. Finding what changed costs a pass over the apps
//! comparing pointers (each app is its own `Arc` in [`ClusterState`], copied only
//! when changed), once per change whatever the number of watchers; each watcher
//! then projects only the changed entries for its node. A watcher that skipped
//! states (the watch keeps only the newest) gets the union of the changes it
//! missed; one further behind than [`HISTORY`] changes gets a whole view.
//! Older workers (`view_format` 1) get a whole view per change, as before.

use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::sync::Arc;

use futures::{Stream, StreamExt};
use strom_proto::ids::{AppName, NodeId};
use strom_proto::internal_v1::StateUpdate;
use strom_proto::worker_view::DELTA_FORMAT;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

#[cfg(doc)]
use crate::cluster_state::ClusterState;
#[cfg(doc)]
use strom_proto::worker_view::ViewDelta;

use crate::state_machine::StateView;
use crate::worker_view::{project, project_delta};

/// Changes kept for watchers that fall behind.
pub const HISTORY: usize = 1024;

/// What changed between two published states, as far as worker views go.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Changes {
    /// The applied indexes of the two states.
    pub from: u64,
    pub to: u64,
    /// Apps added, removed or changed (their state, placements or system keys).
    pub apps: BTreeSet<AppName>,
    /// Workers registered, removed or changed.
    pub workers: BTreeSet<NodeId>,
    /// The management members changed.
    pub managers: bool,
}

impl Changes {
    fn absorb(&mut self, later: &Changes) {
        self.to = later.to;
        self.apps.extend(later.apps.iter().cloned());
        self.workers.extend(later.workers.iter().copied());
        self.managers |= later.managers;
    }
}

/// What changed from `old` to `new`: apps compared by pointer, the small
/// per-app maps and the workers by value.
pub fn diff(old: &StateView, new: &StateView) -> Changes {
    let mut changes = Changes {
        from: old.applied_index(),
        to: new.applied_index(),
        managers: !old
            .membership
            .membership()
            .nodes()
            .eq(new.membership.membership().nodes()),
        ..Changes::default()
    };
    let (o, n) = (&old.state, &new.state);
    if Arc::ptr_eq(o, n) {
        return changes;
    }
    changed_keys(&o.apps, &n.apps, Arc::ptr_eq, &mut changes.apps);
    changed_keys(
        &o.placements,
        &n.placements,
        |a, b| a == b,
        &mut changes.apps,
    );
    changed_keys(
        &o.system_keys,
        &n.system_keys,
        |a, b| a == b,
        &mut changes.apps,
    );
    changed_keys(&o.workers, &n.workers, |a, b| a == b, &mut changes.workers);
    changes
}

/// Every key present in only one of the maps, or in both with values not `same`.
fn changed_keys<K: Ord + Clone, V>(
    old: &BTreeMap<K, V>,
    new: &BTreeMap<K, V>,
    same: impl Fn(&V, &V) -> bool,
    out: &mut BTreeSet<K>,
) {
    let mut a = old.iter().peekable();
    let mut b = new.iter().peekable();
    loop {
        match (a.peek(), b.peek()) {
            (None, None) => return,
            (Some((k, _)), None) => {
                out.insert((*k).clone());
                a.next();
            }
            (None, Some((k, _))) => {
                out.insert((*k).clone());
                b.next();
            }
            (Some((ka, va)), Some((kb, vb))) => match ka.cmp(kb) {
                std::cmp::Ordering::Less => {
                    out.insert((*ka).clone());
                    a.next();
                }
                std::cmp::Ordering::Greater => {
                    out.insert((*kb).clone());
                    b.next();
                }
                std::cmp::Ordering::Equal => {
                    if !same(va, vb) {
                        out.insert((*ka).clone());
                    }
                    a.next();
                    b.next();
                }
            },
        }
    }
}

/// The newest state and the changes that led to it (oldest first).
#[derive(Debug, Clone)]
pub struct Feed {
    pub state: Arc<StateView>,
    history: VecDeque<Arc<Changes>>,
}

impl Feed {
    pub fn new(state: Arc<StateView>) -> Feed {
        Feed {
            state,
            history: VecDeque::new(),
        }
    }

    /// The feed after `state` was published.
    pub fn next(&self, state: Arc<StateView>) -> Feed {
        let changes = diff(&self.state, &state);
        let mut history = self.history.clone();
        history.push_back(Arc::new(changes));
        if history.len() > HISTORY {
            history.pop_front();
        }
        Feed { state, history }
    }

    /// Every change from the state at `index` to the newest, or `None` if the
    /// history no longer reaches back to `index`.
    pub fn since(&self, index: u64) -> Option<Changes> {
        let start = self.history.iter().position(|c| c.from == index)?;
        let mut all = Changes {
            from: index,
            to: index,
            ..Changes::default()
        };
        for c in self.history.range(start..) {
            all.absorb(c);
        }
        Some(all)
    }
}

/// A feed that follows `states` until `cancel` (one task per management node).
pub fn start(
    mut states: watch::Receiver<Arc<StateView>>,
    cancel: CancellationToken,
) -> watch::Receiver<Arc<Feed>> {
    let first = states.borrow_and_update().clone();
    let (tx, rx) = watch::channel(Arc::new(Feed::new(first)));
    tokio::spawn(async move {
        loop {
            tokio::select! {
                _ = cancel.cancelled() => return,
                changed = states.changed() => if changed.is_err() { return },
            }
            let state = states.borrow_and_update().clone();
            let next = tx.borrow().next(state);
            tx.send_replace(Arc::new(next));
        }
    });
    rx
}

/// The updates for a worker `node` that reads `view_format`: a whole view first,
/// then per change a delta (format ≥ [`DELTA_FORMAT`]) or a whole view.
pub fn updates(
    feed: watch::Receiver<Arc<Feed>>,
    node: NodeId,
    view_format: u32,
) -> impl Stream<Item = StateUpdate> + Send + 'static {
    let mut sent: Option<u64> = None;
    tokio_stream::wrappers::WatchStream::new(feed).filter_map(move |feed| {
        futures::future::ready(next_update(&feed, node, view_format, &mut sent))
    })
}

/// The update after `sent` (the index this stream last sent), if any.
pub fn next_update(
    feed: &Feed,
    node: NodeId,
    view_format: u32,
    sent: &mut Option<u64>,
) -> Option<StateUpdate> {
    let index = feed.state.applied_index();
    let mut update = StateUpdate {
        applied_index: index,
        ..StateUpdate::default()
    };
    if view_format >= DELTA_FORMAT {
        if let Some(base) = *sent {
            if base == index {
                return None;
            }
            if let Some(changes) = feed.since(base) {
                *sent = Some(index);
                update.worker_view_delta =
                    project_delta(&feed.state, node, base, &changes).encode();
                return Some(update);
            }
        }
    }
    *sent = Some(index);
    update.worker_view = project(&feed.state, node).encode();
    Some(update)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cluster_state::tests::app;
    use crate::worker_view::tests::state;
    use strom_proto::command::Command;
    use strom_proto::worker_view::{ViewDelta, WorkerView};

    /// `view` after `command`, one index later.
    fn after(view: &StateView, command: Command) -> StateView {
        let mut next = view.clone();
        Arc::make_mut(&mut next.state).apply(&command);
        let last = view.last_applied.unwrap();
        next.last_applied = Some(openraft::LogId::new(last.leader_id, last.index + 1));
        next
    }

    fn set(name: &str, key: &str, value: &str) -> Command {
        Command::SetAppSettings {
            app: app(name),
            set: BTreeMap::from([(key.to_string(), value.to_string())]),
            remove: vec![],
            at_ms: 20,
        }
    }

    #[test]
    fn a_settings_change_is_one_app_and_nothing_else() {
        let before = state();
        let after = after(&before, set("batch", "MODE", "fast"));
        let changes = diff(&before, &after);
        assert_eq!(changes.apps, BTreeSet::from([app("batch")]));
        assert!(changes.workers.is_empty());
        assert!(!changes.managers);
        assert_eq!((changes.from, changes.to), (42, 43));
        // The other app's state is shared, not copied.
        assert!(Arc::ptr_eq(
            &before.state.apps[&app("web")],
            &after.state.apps[&app("web")]
        ));
    }

    #[test]
    fn a_delta_applied_to_the_old_view_is_the_new_view_on_every_node() {
        let v0 = Arc::new(state());
        let v1 = Arc::new(after(&v0, set("batch", "MODE", "fast")));
        let v2 = Arc::new(after(
            &v1,
            Command::DeleteApp {
                app: app("web"),
                at_ms: 21,
            },
        ));
        let feed = Feed::new(v0.clone()).next(v1.clone()).next(v2.clone());
        for node in [4, 5, 9] {
            let old = project(&v0, node);
            // Both changes at once (a watcher that skipped v1).
            let delta = project_delta(&v2, node, 42, &feed.since(42).unwrap());
            let decoded = ViewDelta::decode(&delta.encode()).unwrap();
            let applied = old.apply(&decoded).unwrap();
            assert_eq!(applied, project(&v2, node), "node {node}");
            // One change at a time.
            let step = project_delta(&v2, node, 43, &feed.since(43).unwrap());
            assert_eq!(project(&v1, node).apply(&step).unwrap(), project(&v2, node));
        }
        // Only the changed app travels: node 5 runs batch, so its settings do.
        let delta = project_delta(
            &v1,
            5,
            42,
            &Feed::new(v0.clone()).next(v1.clone()).since(42).unwrap(),
        );
        assert_eq!(delta.apps.keys().collect::<Vec<_>>(), [&app("batch")]);
        assert_eq!(
            delta.runs[&app("batch")].as_ref().unwrap().settings["MODE"],
            "fast"
        );
        assert!(delta.workers.is_empty() && delta.managers.is_none());
    }

    #[test]
    fn a_delta_for_another_view_is_refused() {
        let v0 = Arc::new(state());
        let v1 = Arc::new(after(&v0, set("web", "A", "1")));
        let feed = Feed::new(v0.clone()).next(v1.clone());
        let delta = project_delta(&v1, 4, 42, &feed.since(42).unwrap());
        let newer = project(&v1, 4);
        assert!(newer.apply(&delta).is_err(), "applied to the view at 43");
        assert!(WorkerView::default().apply(&delta).is_err());
    }

    #[test]
    fn a_stream_sends_a_whole_view_then_deltas_and_a_whole_view_when_history_is_gone() {
        let v0 = Arc::new(state());
        let mut feed = Feed::new(v0.clone());
        let mut sent = None;
        let first = next_update(&feed, 4, DELTA_FORMAT, &mut sent).unwrap();
        assert!(!first.worker_view.is_empty() && first.worker_view_delta.is_empty());
        assert!(
            next_update(&feed, 4, DELTA_FORMAT, &mut sent).is_none(),
            "same index"
        );
        let v1 = Arc::new(after(&v0, set("web", "A", "1")));
        feed = feed.next(v1.clone());
        let second = next_update(&feed, 4, DELTA_FORMAT, &mut sent).unwrap();
        assert!(second.worker_view.is_empty());
        assert!(second.worker_view_delta.len() < first.worker_view.len());
        // A format-1 watcher gets whole views every time.
        let mut old_sent = Some(42);
        let whole = next_update(&feed, 4, 1, &mut old_sent).unwrap();
        assert!(!whole.worker_view.is_empty() && whole.worker_view_delta.is_empty());
        // More changes than the history keeps: a whole view.
        let mut last = v1;
        for i in 0..=HISTORY {
            let next = Arc::new(after(&last, set("web", "N", &i.to_string())));
            feed = feed.next(next.clone());
            last = next;
        }
        let mut far_behind = Some(43);
        let update = next_update(&feed, 4, DELTA_FORMAT, &mut far_behind).unwrap();
        assert!(!update.worker_view.is_empty());
        assert_eq!(far_behind, Some(last.applied_index()));
    }
}
