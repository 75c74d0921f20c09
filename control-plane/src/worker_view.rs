//! The projection of the replicated state that a worker receives
//! ([`strom_proto::worker_view::WorkerView`]): what it runs and what its gateway
//! needs to route, nothing else. Pure: the same state and node give the same view.

use std::collections::BTreeMap;

use strom_proto::ids::{AppName, NodeId};
use strom_proto::manifest::is_function_disabled;
use strom_proto::worker_view::{AppRoutes, Peer, Run, ViewDelta, WorkerView};

use crate::cluster_state::{AppState, ClusterState, WorkerState};
use crate::state_machine::StateView;
use crate::view_feed::Changes;

/// The view of `state` for node `node`.
pub fn project(state: &StateView, node: NodeId) -> WorkerView {
    let s = &state.state;
    let mut view = WorkerView::new(node);
    view.cluster_id = cluster_id(state);
    view.applied_index = state.applied_index();
    view.protocol = s.protocol();
    view.managers = managers(state);
    view.workers = s.workers.iter().map(|(id, w)| (*id, peer(w))).collect();
    for (name, app) in &s.apps {
        view.apps.insert(name.clone(), routes(s, name, app));
        if let Some(run) = run(s, name, app, node) {
            view.runs.insert(name.clone(), run);
        }
    }
    view
}

/// What changed for node `node` between the view of the state at `base` and
/// `state`, given what changed in the state ([`Changes`]): only those entries.
pub fn project_delta(state: &StateView, node: NodeId, base: u64, changes: &Changes) -> ViewDelta {
    let s = &state.state;
    let mut delta = ViewDelta {
        base_index: base,
        applied_index: state.applied_index(),
        protocol: s.protocol(),
        cluster_id: cluster_id(state),
        managers: changes.managers.then(|| managers(state)),
        ..ViewDelta::default()
    };
    for id in &changes.workers {
        delta.workers.insert(*id, s.workers.get(id).map(peer));
    }
    for name in &changes.apps {
        let app = s.apps.get(name);
        delta
            .apps
            .insert(name.clone(), app.map(|a| routes(s, name, a)));
        delta
            .runs
            .insert(name.clone(), app.and_then(|a| run(s, name, a, node)));
    }
    delta
}

fn cluster_id(state: &StateView) -> String {
    state
        .state
        .cluster
        .as_ref()
        .map(|c| c.cluster_id.to_string())
        .unwrap_or_default()
}

fn managers(state: &StateView) -> BTreeMap<NodeId, String> {
    state
        .membership
        .membership()
        .nodes()
        .map(|(id, n)| (*id, n.addr.clone()))
        .collect()
}

fn peer(w: &WorkerState) -> Peer {
    Peer {
        http_addr: w.info.http_addr.clone(),
        up: w.up,
        draining: w.schedule == strom_proto::command::WorkerSchedule::Draining,
    }
}

fn routes(s: &ClusterState, name: &AppName, app: &AppState) -> AppRoutes {
    let manifest = app.active().manifest.clone();
    let disabled = manifest
        .functions
        .iter()
        .filter(|f| is_function_disabled(&app.settings, &f.name))
        .map(|f| f.name.clone())
        .collect();
    AppRoutes {
        version: app.active_version.clone(),
        manifest,
        keys: app.keys.clone(),
        disabled,
        placements: s.placements.get(name).cloned().unwrap_or_default(),
        system_keys: s.system_keys.get(name).cloned().unwrap_or_default(),
        scaled_to_zero: app.scale == Some(0),
    }
}

fn run(s: &ClusterState, name: &AppName, app: &AppState, node: NodeId) -> Option<Run> {
    let instances = s.placed(name, node);
    (instances > 0).then(|| Run {
        version: app.active_version.clone(),
        instances,
        settings: app.settings.clone(),
    })
}

#[cfg(test)]
pub(crate) mod tests {
    use std::collections::BTreeMap;
    use std::sync::Arc;

    use strom_proto::command::{Command, PlacementChange, WorkerCapacity, WorkerInfo};
    use strom_proto::worker_view::WorkerView;

    use super::*;
    use crate::cluster_state::tests::{app, deploy, http, initialized, manifest};
    use crate::cluster_state::ClusterState;

    fn worker(node: NodeId) -> Command {
        Command::RegisterWorker(Box::new(WorkerInfo {
            node,
            http_addr: format!("10.0.0.{node}:7071"),
            capacity: WorkerCapacity {
                instances: 8,
                memory_mb: 0,
            },
            labels: BTreeMap::new(),
            build: "test".into(),
            at_ms: 1,
        }))
    }

    /// Two apps with secret settings, `web` placed on workers 4 and 5, `batch`
    /// on worker 5 only.
    pub(crate) fn state() -> StateView {
        let mut s: ClusterState = initialized();
        s.cluster.as_mut().unwrap().cluster_id =
            strom_proto::ids::ClusterId::parse("6f1c1a5e-2b0c-4c52-9d55-3f8f2a7c9b10").unwrap();
        let hello = manifest("api", &[("hello", &http("hello/{name}", r#""get""#))]);
        s.apply(&deploy("web", 1, hello, 10));
        let job = manifest("jobs", &[("run", &http("run", r#""post""#))]);
        s.apply(&deploy("batch", 2, job, 11));
        for (a, k, v) in [
            ("web", "GREETING", "hi"),
            ("web", "AzureWebJobs.hello.Disabled", "false"),
            ("batch", "DB_PASSWORD", "s3cret-batch"),
            ("batch", "AzureWebJobs.run.Disabled", "true"),
        ] {
            s.apply(&Command::SetAppSettings {
                app: app(a),
                set: BTreeMap::from([(k.to_string(), v.to_string())]),
                remove: vec![],
                at_ms: 12,
            });
        }
        s.apply(&worker(4));
        s.apply(&worker(5));
        s.apply(&Command::Place {
            changes: vec![
                PlacementChange {
                    app: app("web"),
                    node: 4,
                    instances: 2,
                },
                PlacementChange {
                    app: app("web"),
                    node: 5,
                    instances: 1,
                },
                PlacementChange {
                    app: app("batch"),
                    node: 5,
                    instances: 1,
                },
            ],
            at_ms: 13,
        });
        let log_id = openraft::LogId::new(openraft::CommittedLeaderId::new(1, 1), 42);
        let members = openraft::Membership::new(
            vec![std::collections::BTreeSet::from([1])],
            BTreeMap::from([(1, openraft::BasicNode::new("10.0.0.1:7171"))]),
        );
        StateView {
            last_applied: Some(log_id),
            membership: openraft::StoredMembership::new(Some(log_id), members),
            state: Arc::new(s),
        }
    }

    #[test]
    fn a_worker_gets_its_runs_and_every_apps_routes() {
        let view = project(&state(), 4);
        assert_eq!(view.node, 4);
        assert_eq!(view.applied_index, 42);
        assert_eq!(
            view.runs.keys().map(|a| a.as_str()).collect::<Vec<_>>(),
            ["web"]
        );
        assert_eq!(view.runs[&app("web")].instances, 2);
        assert_eq!(view.runs[&app("web")].settings["GREETING"], "hi");
        // Routing for every app, including the ones it does not run.
        assert_eq!(view.apps.len(), 2);
        let batch = &view.apps[&app("batch")];
        assert_eq!(batch.placements, BTreeMap::from([(5, 1)]));
        assert!(batch.disabled.contains("run"));
        assert!(view.apps[&app("web")].disabled.is_empty());
        assert_eq!(batch.keys.master, "master-2");
        assert_eq!(view.workers[&5].http_addr, "10.0.0.5:7071");
        assert!(view.workers[&5].up);
    }

    #[test]
    fn no_token_hash_and_no_settings_of_apps_run_elsewhere_reach_a_worker() {
        let state = state();
        let info = state.state.cluster.as_ref().unwrap().clone();
        let bytes = String::from_utf8(project(&state, 4).encode()).unwrap();
        for secret in [
            serde_json::to_string(&info.admin_token_hash).unwrap(),
            serde_json::to_string(&info.join_token_hash).unwrap(),
        ] {
            let secret = secret.trim_matches('"');
            assert!(!bytes.contains(secret), "a token hash reached the worker");
        }
        assert!(!bytes.contains("s3cret-batch"), "another app's setting");
        // The worker that runs batch gets its settings.
        assert!(String::from_utf8(project(&state, 5).encode())
            .unwrap()
            .contains("s3cret-batch"));
    }

    /// The frozen format-1 sample in `proto/tests/data` is this projection as the
    /// first build with worker views wrote it (`STROM_WRITE_SAMPLE=<file>` writes
    /// what this build projects, to compare; the sample itself is never rewritten:
    /// a new format gets a new sample beside it).
    #[test]
    fn the_frozen_sample_is_what_this_projection_writes() {
        let view = project(&state(), 4);
        let json = serde_json::to_string_pretty(&view).unwrap();
        if let Some(path) = std::env::var_os("STROM_WRITE_SAMPLE") {
            std::fs::write(path, format!("{json}\n")).unwrap();
        }
        let frozen = include_str!("../../proto/tests/data/worker_view_format_1.json");
        let frozen = WorkerView::decode(frozen.as_bytes()).unwrap();
        assert_eq!(frozen, view);
    }
}
