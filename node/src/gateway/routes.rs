//! The cluster's routes as one immutable snapshot: every app's route table, keys,
//! disabled functions and placements, and every worker's address, built from the
//! node's [`WorkerView`] and read per request from an `ArcSwap`. The first request
//! after the view changed rebuilds it, so a request never sees an older view than
//! the one published (an acknowledged key works at once). The gateway decides
//! where a request goes from this snapshot and the local routing snapshot alone.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::Arc;

use arc_swap::ArcSwap;
use strom_proto::ids::{AppName, NodeId};
use strom_proto::manifest::{AppManifest, HttpTrigger, Trigger};
use strom_proto::route_table::{RouteMatch, RouteTable};
use strom_proto::worker_view::{AppKeys, Peer, WorkerView};
use tokio::sync::watch;

/// Everything about one app a gateway needs, whoever runs it.
#[derive(Debug)]
pub struct AppRouting {
    pub routes: RouteTable,
    pub manifest: AppManifest,
    pub keys: AppKeys,
    pub disabled: BTreeSet<String>,
    /// Instances per worker.
    pub placements: BTreeMap<NodeId, u32>,
    /// System keys (listed by the key management API; they open no function).
    pub system_keys: BTreeMap<String, String>,
}

impl AppRouting {
    /// The HTTP trigger of `function` in the app's active version.
    pub fn http_trigger(&self, function: &str) -> Option<&HttpTrigger> {
        self.manifest
            .functions
            .iter()
            .find(|f| f.name == function)
            .and_then(|f| match &f.trigger {
                Trigger::Http(h) => Some(h),
                _ => None,
            })
    }
}

#[derive(Debug, Default)]
pub struct ClusterRoutes {
    /// The view this was built from.
    pub view: Arc<WorkerView>,
    /// The shared address's routes: every app's, but a route only while one app
    /// claims it.
    pub all: RouteTable,
    pub apps: HashMap<AppName, AppRouting>,
    pub workers: BTreeMap<NodeId, Peer>,
}

impl ClusterRoutes {
    pub fn build(view: Arc<WorkerView>) -> ClusterRoutes {
        ClusterRoutes {
            all: RouteTable::build_shared(view.apps.iter().map(|(n, a)| (n, &a.manifest))),
            apps: view
                .apps
                .iter()
                .map(|(name, a)| {
                    (
                        name.clone(),
                        AppRouting {
                            routes: RouteTable::build([(name, &a.manifest)]),
                            manifest: a.manifest.clone(),
                            keys: a.keys.clone(),
                            disabled: a.disabled.clone(),
                            placements: a.placements.clone(),
                            system_keys: a.system_keys.clone(),
                        },
                    )
                })
                .collect(),
            workers: view.workers.clone(),
            view,
        }
    }

    /// Look a request up: in one app's routes when the Host names a known app,
    /// else on the shared address.
    pub fn lookup(&self, host_app: Option<&AppName>, method: &str, path: &str) -> RouteMatch<'_> {
        match host_app.and_then(|a| self.apps.get(a)) {
            Some(app) => app.routes.lookup(method, path),
            None => self.all.lookup(method, path),
        }
    }
}

/// The current snapshot, following the node's view.
pub struct Routes {
    view: watch::Receiver<Arc<WorkerView>>,
    current: ArcSwap<ClusterRoutes>,
}

impl Routes {
    pub fn new(view: watch::Receiver<Arc<WorkerView>>) -> Routes {
        let first = view.borrow().clone();
        Routes {
            view,
            current: ArcSwap::from_pointee(ClusterRoutes::build(first)),
        }
    }

    /// The routes of the newest view (rebuilt here if the view changed since).
    pub fn load(&self) -> Arc<ClusterRoutes> {
        let current = self.current.load_full();
        let view = self.view.borrow().clone();
        if Arc::ptr_eq(&current.view, &view) {
            return current;
        }
        let rebuilt = Arc::new(ClusterRoutes::build(view));
        self.current.store(rebuilt.clone());
        rebuilt
    }
}

#[cfg(test)]
mod tests {
    use strom_proto::worker_view::AppRoutes;

    use super::*;

    #[test]
    fn a_request_after_a_view_change_sees_the_new_view() {
        let manifest = strom_testkit::apps::manifest(
            strom_testkit::apps::HOST,
            &[("f", &strom_testkit::apps::http_fn("f"))],
        );
        let (tx, rx) = watch::channel(Arc::new(WorkerView::new(1)));
        let routes = Routes::new(rx);
        assert!(routes.load().apps.is_empty());
        let mut view = WorkerView::new(1);
        view.apps.insert(
            AppName::parse("web").unwrap(),
            AppRoutes {
                version: strom_proto::ids::VersionId::of_bytes(b"v"),
                manifest,
                keys: AppKeys::default(),
                disabled: Default::default(),
                placements: Default::default(),
                system_keys: Default::default(),
                scaled_to_zero: false,
            },
        );
        tx.send_replace(Arc::new(view));
        let now = routes.load();
        assert!(matches!(
            now.lookup(None, "GET", "/api/f"),
            RouteMatch::Found { .. }
        ));
        assert!(Arc::ptr_eq(&now, &routes.load()), "built once per view");
    }
}
