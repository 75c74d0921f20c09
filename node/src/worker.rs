//! The worker role of a node: turns the scheduler's placements for this node (in the
//! replicated state) into assignments for the actor tree, unpacks packages, and owns
//! the routing snapshot the gateway reads.
//!
//! Durable: unpacked packages under `<data-dir>/apps/<app>/<version>/` (unpacked once,
//! into a temp folder renamed into place, so a present folder is complete) and the
//! process runtime's pid files under `<data-dir>/run/instances/` (orphans of a
//! previous run are killed at start). Everything else is in memory.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use ractor::{Actor, ActorRef};
use strom_actors::runtime::process::{reap_orphans, ProcessRuntime};
use strom_actors::{Assignment, Lifecycle, NodeArgs, NodeMsg, NodeSupervisor, RoutingTable};
use strom_control_plane::state_machine::StateView;
use strom_proto::ids::{AppName, NodeId, VersionId};
use strom_proto::instances::InstanceStatus;
use strom_proto::manifest::{extract_to, ZipLimits};
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

use crate::agent::Packages;

pub struct Worker {
    supervisor: ActorRef<NodeMsg>,
    run_dir: PathBuf,
    pub routing: RoutingTable,
    pub instances: watch::Receiver<Arc<Vec<InstanceStatus>>>,
    /// The cluster state this worker runs from (local, or watched from a
    /// management node).
    pub state: watch::Receiver<Arc<StateView>>,
    assign_task: tokio::task::JoinHandle<()>,
    cancel: CancellationToken,
}

impl Worker {
    pub async fn start(
        node_id: NodeId,
        data_dir: &Path,
        lifecycle: Lifecycle,
        state: watch::Receiver<Arc<StateView>>,
        packages: Packages,
        limits: ZipLimits,
    ) -> anyhow::Result<Worker> {
        let run_dir = data_dir.join("run").join("instances");
        let killed = reap_orphans(&run_dir);
        if !killed.is_empty() {
            tracing::warn!(?killed, "killed handler processes left by a previous run");
        }
        let runtime = Arc::new(ProcessRuntime::new(&run_dir)?);
        let run_dir = run_dir.clone();
        let routing = RoutingTable::default();
        let (status_tx, instances) = watch::channel(Arc::new(Vec::new()));
        let (supervisor, _) = Actor::spawn(
            Some("node-supervisor".into()),
            NodeSupervisor,
            NodeArgs {
                runtime,
                lifecycle,
                routing: routing.clone(),
                status: status_tx,
            },
        )
        .await?;
        let cancel = CancellationToken::new();
        let apps_dir = data_dir.join("apps");
        std::fs::create_dir_all(&apps_dir)?;
        let assign_task = tokio::spawn(assign_loop(
            node_id,
            state.clone(),
            packages,
            apps_dir,
            limits,
            supervisor.clone(),
            cancel.clone(),
        ));
        Ok(Worker {
            supervisor,
            run_dir,
            routing,
            instances,
            state,
            assign_task,
            cancel,
        })
    }

    /// Drain every instance (in-flight requests finish), stop them, stop the tree.
    pub async fn shutdown(self, timeout: Duration) {
        self.cancel.cancel();
        // The assign loop may be inside a package fetch: do not wait on it.
        let mut assign_task = self.assign_task;
        if tokio::time::timeout(Duration::from_secs(2), &mut assign_task)
            .await
            .is_err()
        {
            assign_task.abort();
        }
        let drained = ractor::call_t!(
            self.supervisor,
            NodeMsg::Shutdown,
            timeout.as_millis() as u64
        );
        if drained.is_err() {
            tracing::warn!("instances did not drain within {timeout:?}; stopping anyway");
        }
        self.supervisor.stop(None);
        // Whatever is still running now (a handler that ignored SIGTERM past every
        // grace) is killed with its process group: nothing outlives the node.
        let killed = reap_orphans(&self.run_dir);
        if !killed.is_empty() {
            tracing::warn!(?killed, "killed handlers that did not stop in time");
        }
    }
}

async fn assign_loop(
    node_id: NodeId,
    mut state: watch::Receiver<Arc<StateView>>,
    packages: Packages,
    apps_dir: PathBuf,
    limits: ZipLimits,
    supervisor: ActorRef<NodeMsg>,
    cancel: CancellationToken,
) {
    // The last assignment that could be unpacked, per app: when a new version cannot
    // be fetched yet, the version already running keeps running.
    let mut last_good: std::collections::HashMap<AppName, Assignment> = Default::default();
    loop {
        let view = state.borrow_and_update().clone();
        let mut assignments = Vec::new();
        let mut failed = false;
        for app in view.state.apps.values() {
            // What the scheduler placed on this worker.
            let instances = view.state.placed(&app.name, node_id);
            if instances == 0 {
                continue;
            }
            let version = &app.active_version;
            match unpacked(&apps_dir, &app.name, version, &packages, &limits).await {
                Ok(root) => {
                    let a = Assignment {
                        app: app.name.clone(),
                        version: version.clone(),
                        app_root: root,
                        manifest: Arc::new(app.active().manifest.clone()),
                        settings: app.settings.clone(),
                        instances,
                    };
                    last_good.insert(app.name.clone(), a.clone());
                    assignments.push(a);
                }
                Err(e) => {
                    failed = true;
                    tracing::error!(app = %app.name, version = version.short(), "cannot unpack the package: {e:#}");
                    if let Some(previous) = last_good.get(&app.name) {
                        assignments.push(Assignment {
                            instances,
                            ..previous.clone()
                        });
                    }
                }
            }
        }
        last_good.retain(|app, _| view.state.placed(app, node_id) > 0);
        if supervisor
            .send_message(NodeMsg::Assign(assignments))
            .is_err()
        {
            return;
        }
        let retry = async {
            if failed {
                tokio::time::sleep(Duration::from_secs(2)).await
            } else {
                std::future::pending().await
            }
        };
        tokio::select! {
            _ = cancel.cancelled() => return,
            changed = state.changed() => if changed.is_err() { return },
            _ = retry => {}
        }
    }
}

/// The unpacked folder of a version, unpacking it first if needed.
async fn unpacked(
    apps_dir: &Path,
    app: &AppName,
    version: &VersionId,
    packages: &Packages,
    limits: &ZipLimits,
) -> anyhow::Result<PathBuf> {
    let app_dir = apps_dir.join(app.as_str());
    let target = app_dir.join(version.as_str());
    if target.is_dir() {
        return Ok(target);
    }
    // Local, or fetched from a management node (hash verified).
    let bytes = packages.get(version, limits.max_compressed_bytes).await?;
    let limits = limits.clone();
    let target2 = target.clone();
    tokio::task::spawn_blocking(move || -> anyhow::Result<()> {
        std::fs::create_dir_all(&app_dir)?;
        let tmp = tempfile::Builder::new()
            .prefix(".unpacking-")
            .tempdir_in(&app_dir)?;
        extract_to(&bytes, tmp.path(), &limits)?;
        std::fs::rename(tmp.keep(), &target2)?;
        Ok(())
    })
    .await??;
    Ok(target)
}
