//! The cluster's routes as one immutable snapshot: every app's route table, keys,
//! disabled functions and placements, and every worker's address, built from the
//! node's [`WorkerView`] after each change and read lock-free per request
//! (`ArcSwap`). The gateway decides where a request goes from this snapshot and
//! the local routing snapshot alone.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::Arc;

use arc_swap::ArcSwap;
use strom_proto::ids::{AppName, NodeId};
use strom_proto::manifest::{AppManifest, HttpTrigger, Trigger};
use strom_proto::route_table::{RouteMatch, RouteTable};
use strom_proto::worker_view::{AppKeys, Peer, WorkerView};
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

/// Everything about one app a gateway needs, whoever runs it.
#[derive(Debug)]
pub struct AppRouting {
    pub routes: RouteTable,
    pub manifest: AppManifest,
    pub keys: AppKeys,
    pub disabled: BTreeSet<String>,
    /// Instances per worker.
    pub placements: BTreeMap<NodeId, u32>,
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
    /// The view's applied index.
    pub index: u64,
    /// Every app's routes: the namespace of the bare address.
    pub all: RouteTable,
    pub apps: HashMap<AppName, AppRouting>,
    pub workers: BTreeMap<NodeId, Peer>,
}

impl ClusterRoutes {
    pub fn build(view: &WorkerView) -> ClusterRoutes {
        ClusterRoutes {
            index: view.applied_index,
            all: RouteTable::build(view.apps.iter().map(|(n, a)| (n, &a.manifest))),
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
                        },
                    )
                })
                .collect(),
            workers: view.workers.clone(),
        }
    }

    /// Look a request up: in one app's routes when the Host names a known app,
    /// else across all apps.
    pub fn lookup(&self, host_app: Option<&AppName>, method: &str, path: &str) -> RouteMatch<'_> {
        match host_app.and_then(|a| self.apps.get(a)) {
            Some(app) => app.routes.lookup(method, path),
            None => self.all.lookup(method, path),
        }
    }
}

/// The current snapshot. Cheap to share.
#[derive(Default)]
pub struct Routes {
    current: ArcSwap<ClusterRoutes>,
}

impl Routes {
    pub fn new(view: &WorkerView) -> Routes {
        Routes {
            current: ArcSwap::from_pointee(ClusterRoutes::build(view)),
        }
    }

    pub fn load(&self) -> Arc<ClusterRoutes> {
        self.current.load_full()
    }

    fn store(&self, routes: ClusterRoutes) {
        self.current.store(Arc::new(routes));
    }
}

/// Rebuild the snapshot after every change of the view, until `cancel`.
pub async fn follow(
    mut view: watch::Receiver<Arc<WorkerView>>,
    routes: Arc<Routes>,
    cancel: CancellationToken,
) {
    loop {
        let v = view.borrow_and_update().clone();
        routes.store(ClusterRoutes::build(&v));
        tokio::select! {
            _ = cancel.cancelled() => return,
            changed = view.changed() => if changed.is_err() { return },
        }
    }
}
