//! What a worker (and every gateway) is told of the cluster: a projection of the
//! replicated state with exactly what it needs, not the whole state.
//!
//! - **Routing**, for every app: its active version's manifest (routes, auth
//!   levels, host limits), its function keys (a gateway checks them before a
//!   request goes anywhere), the functions disabled by settings, and where its
//!   instances are placed; and every worker's function address and liveness (the
//!   hop picks among them).
//! - **Runs**, for this node only: the apps placed on it, with the version, the
//!   instance count and the app settings (only these apps' settings: a worker
//!   never holds the settings, possibly secrets, of apps it does not run).
//! - The management members' control addresses (where to watch and fetch from)
//!   and the cluster id.
//!
//! Never in it: the admin and join token hashes, other apps' settings, versions
//! other than the active one, deployment internals.
//!
//! On the wire it is JSON (self-describing): a worker of an older build ignores
//! fields it does not know, and a newer worker reads an older view because every
//! field added after format 1 must carry `#[serde(default)]` (a frozen format-1
//! sample in the tests keeps that true). New enum variants (a new trigger type)
//! may only appear once the cluster protocol, which counts workers, allows them.

use std::collections::{BTreeMap, BTreeSet};

use serde::{Deserialize, Serialize};

use crate::ids::{AppName, NodeId, VersionId};
use crate::manifest::AppManifest;

/// The format this build writes.
pub const WORKER_VIEW_FORMAT: u32 = 1;
/// What this build asks a watch stream for (`WatchStateRequest.view_format`):
/// format-1 views, and after a stream's first (whole) view, deltas
/// ([`ViewDelta`]).
pub const DELTA_FORMAT: u32 = 2;

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct WorkerView {
    pub format: u32,
    /// The oldest format whose readers can read this view (a writer that breaks
    /// older readers raises it, and they refuse the view instead of misreading it).
    #[serde(default = "one")]
    pub readable_since: u32,
    pub cluster_id: String,
    /// The applied log index this view was projected at (newer views win).
    pub applied_index: u64,
    /// The protocol the whole cluster speaks (the version gate).
    pub protocol: u32,
    /// The node this view was made for.
    pub node: NodeId,
    /// Management members: node id → control address.
    pub managers: BTreeMap<NodeId, String>,
    /// Every registered worker, for the gateway hop.
    pub workers: BTreeMap<NodeId, Peer>,
    /// Every app, for routing.
    pub apps: BTreeMap<AppName, AppRoutes>,
    /// The apps placed on this node.
    pub runs: BTreeMap<AppName, Run>,
}

/// A worker as another gateway sees it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Peer {
    /// `host:port` of its function port.
    pub http_addr: String,
    /// `false` once the leader saw its lease expire.
    pub up: bool,
    /// Being drained for a planned stop (`strom node drain`): its own `/readyz`
    /// says not-ready so a load balancer stops sending first. Absent in older
    /// views: false.
    #[serde(default)]
    pub draining: bool,
}

/// What any gateway needs to route and authorize a request for one app.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AppRoutes {
    /// The active version.
    pub version: VersionId,
    pub manifest: AppManifest,
    pub keys: AppKeys,
    /// Functions disabled by `AzureWebJobs.<name>.Disabled`.
    pub disabled: BTreeSet<String>,
    /// Instances per worker.
    pub placements: BTreeMap<NodeId, u32>,
    /// System keys (protocol 8): they open no function; a gateway lists them for
    /// the key management API (`/admin/host/systemkeys`).
    #[serde(default)]
    pub system_keys: BTreeMap<String, String>,
    /// Scaled to 0 on purpose (`strom app scale APP 0`): a gateway with nothing
    /// placed for it is still ready (`/readyz`). Absent in older views: false.
    #[serde(default)]
    pub scaled_to_zero: bool,
}

/// One app placed on this node.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Run {
    pub version: VersionId,
    pub instances: u32,
    /// The app settings (the handler's environment).
    pub settings: BTreeMap<String, String>,
}

/// An app's keys, as Azure keeps them per function app.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct AppKeys {
    pub master: String,
    pub host: BTreeMap<String, String>,
    pub functions: BTreeMap<String, BTreeMap<String, String>>,
}

/// Why a view could not be read.
#[derive(Debug, thiserror::Error)]
pub enum ViewError {
    #[error("the worker view is not valid JSON of a known shape: {0}")]
    Json(#[from] serde_json::Error),
    #[error("the worker view has format {0}, newer than this build reads ({WORKER_VIEW_FORMAT}), and says it cannot be read by older builds")]
    TooNew(u32),
}

impl WorkerView {
    /// An empty view of this build's format.
    pub fn new(node: NodeId) -> WorkerView {
        WorkerView {
            format: WORKER_VIEW_FORMAT,
            readable_since: 1,
            node,
            ..WorkerView::default()
        }
    }

    pub fn encode(&self) -> Vec<u8> {
        serde_json::to_vec(self).expect("a worker view always encodes")
    }

    pub fn decode(bytes: &[u8]) -> Result<WorkerView, ViewError> {
        let view: WorkerView = serde_json::from_slice(bytes)?;
        if view.readable_since > WORKER_VIEW_FORMAT {
            return Err(ViewError::TooNew(view.format));
        }
        Ok(view)
    }

    /// Whether two views say the same, whatever index they were projected at
    /// (every field is named: a new one cannot be forgotten here).
    pub fn same_content(&self, other: &WorkerView) -> bool {
        let WorkerView {
            format,
            readable_since,
            cluster_id,
            applied_index: _,
            protocol,
            node,
            managers,
            workers,
            apps,
            runs,
        } = self;
        *format == other.format
            && *readable_since == other.readable_since
            && *cluster_id == other.cluster_id
            && *protocol == other.protocol
            && *node == other.node
            && *managers == other.managers
            && *workers == other.workers
            && *apps == other.apps
            && *runs == other.runs
    }

    /// The apps this node runs, with what is needed to start them.
    pub fn assigned(&self) -> impl Iterator<Item = (&AppName, &Run, &AppRoutes)> {
        self.runs.iter().filter_map(|(name, run)| {
            let app = self.apps.get(name)?;
            (app.version == run.version).then_some((name, run, app))
        })
    }
}

fn one() -> u32 {
    1
}

/// What changed in a worker's view from the view at `base_index` to the one at
/// `applied_index`: only the entries that changed, each whole (`None`: removed).
/// A watch stream sends one after its first whole view, so the bytes and the
/// work per change grow with the change, not with the cluster. JSON like the view.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ViewDelta {
    /// The view this applies to (the stream's previous one).
    pub base_index: u64,
    pub applied_index: u64,
    pub protocol: u32,
    pub cluster_id: String,
    /// The management members, whole, when they changed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub managers: Option<BTreeMap<NodeId, String>>,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub workers: BTreeMap<NodeId, Option<Peer>>,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub apps: BTreeMap<AppName, Option<AppRoutes>>,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub runs: BTreeMap<AppName, Option<Run>>,
}

/// Why a delta could not be applied.
#[derive(Debug, thiserror::Error)]
pub enum DeltaError {
    #[error("the view delta is not valid JSON of a known shape: {0}")]
    Json(#[from] serde_json::Error),
    #[error("a view delta from index {base} came for the view at index {have}")]
    WrongBase { base: u64, have: u64 },
}

impl ViewDelta {
    pub fn encode(&self) -> Vec<u8> {
        serde_json::to_vec(self).expect("a view delta always encodes")
    }

    pub fn decode(bytes: &[u8]) -> Result<ViewDelta, DeltaError> {
        Ok(serde_json::from_slice(bytes)?)
    }
}

impl WorkerView {
    /// This view with `delta` applied; refused unless the delta is from this view.
    pub fn apply(&self, delta: &ViewDelta) -> Result<WorkerView, DeltaError> {
        if delta.base_index != self.applied_index {
            return Err(DeltaError::WrongBase {
                base: delta.base_index,
                have: self.applied_index,
            });
        }
        let mut view = self.clone();
        view.applied_index = delta.applied_index;
        view.protocol = delta.protocol;
        view.cluster_id = delta.cluster_id.clone();
        if let Some(managers) = &delta.managers {
            view.managers = managers.clone();
        }
        patch(&mut view.workers, &delta.workers);
        patch(&mut view.apps, &delta.apps);
        patch(&mut view.runs, &delta.runs);
        Ok(view)
    }
}

fn patch<K: Ord + Clone, V: Clone>(map: &mut BTreeMap<K, V>, changes: &BTreeMap<K, Option<V>>) {
    for (k, v) in changes {
        match v {
            Some(v) => {
                map.insert(k.clone(), v.clone());
            }
            None => {
                map.remove(k);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A view written by the first build with worker views (format 1). Every
    /// later build must read it: a field added since needs `#[serde(default)]`.
    const FORMAT_1_SAMPLE: &str = include_str!("../tests/data/worker_view_format_1.json");

    #[test]
    fn a_format_1_view_is_read_by_this_build() {
        let view = WorkerView::decode(FORMAT_1_SAMPLE.as_bytes()).unwrap();
        assert_eq!(view.format, 1);
        assert_eq!(view.node, 4);
        assert_eq!(view.applied_index, 42);
        let web = &view.apps[&AppName::parse("web").unwrap()];
        assert_eq!(web.placements, BTreeMap::from([(4, 2), (5, 1)]));
        assert_eq!(web.manifest.functions[0].name, "hello");
        assert_eq!(web.keys.master, "master-1");
        let (name, run, app) = view.assigned().next().unwrap();
        assert_eq!(name.as_str(), "web");
        assert_eq!(run.instances, 2);
        assert_eq!(run.settings["GREETING"], "hi");
        assert_eq!(app.version, run.version);
        assert_eq!(view.workers[&5].http_addr, "10.0.0.5:7071");
        assert_eq!(view.managers[&1], "10.0.0.1:7171");
    }

    #[test]
    fn a_view_from_a_newer_build_with_more_fields_is_read() {
        // A newer writer adds fields at every level; this build ignores them.
        let mut json: serde_json::Value = serde_json::from_str(FORMAT_1_SAMPLE).unwrap();
        json["format"] = 7.into();
        json["timers"] = serde_json::json!({"nightly": {"next": 1}});
        json["workers"]["5"]["zone"] = "b".into();
        json["apps"]["web"]["traffic_split"] = serde_json::json!([1, 2]);
        json["runs"]["web"]["memory_mb"] = 512.into();
        let view = WorkerView::decode(json.to_string().as_bytes()).unwrap();
        assert_eq!(view.format, 7);
        assert_eq!(view.runs.len(), 1);
        // Unless the newer writer says older builds cannot read it.
        json["readable_since"] = 2.into();
        assert!(matches!(
            WorkerView::decode(json.to_string().as_bytes()),
            Err(ViewError::TooNew(7))
        ));
    }

    #[test]
    fn views_that_differ_only_in_their_index_say_the_same() {
        let a = WorkerView::decode(FORMAT_1_SAMPLE.as_bytes()).unwrap();
        let mut b = a.clone();
        b.applied_index += 7;
        assert!(a.same_content(&b));
        b.runs.clear();
        assert!(!a.same_content(&b));
    }

    #[test]
    fn a_view_round_trips() {
        let view = WorkerView::decode(FORMAT_1_SAMPLE.as_bytes()).unwrap();
        assert_eq!(WorkerView::decode(&view.encode()).unwrap(), view);
        assert!(WorkerView::decode(b"{\"format\": \"x\"}").is_err());
    }
}
