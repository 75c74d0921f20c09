//! The worker role of a node: turns the scheduler's placements for this node (in the
//! replicated state) into assignments for the actor tree, unpacks packages, and owns
//! the routing snapshot the gateway reads.
//!
//! Instances run as processes or containers ([`Containers`]: the worker's default
//! runtime and container defaults; apps choose with `STROM_RUNTIME`).
//!
//! Durable: unpacked packages under `<data-dir>/apps/<app>/<version>/` (see
//! [`crate::unpacked`]: unpacked once, removed once nothing uses them) and the process runtime's pid files under
//! `<data-dir>/run/instances/`. What a previous run left is cleaned up at start:
//! orphaned handler processes are killed, and containers labeled with this cluster
//! and node are removed. Everything else is in memory.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use ractor::{Actor, ActorRef};
use strom_actors::runtime::docker::{DockerConfig, DockerRuntime, Isolation};
use strom_actors::runtime::process::{reap_orphans, ProcessRuntime};
use strom_actors::runtime::select::Runtimes;
use strom_actors::{Assignment, Lifecycle, NodeArgs, NodeMsg, NodeSupervisor, RoutingTable};
use strom_proto::ids::{AppName, NodeId, VersionId};
use strom_proto::instances::{InstanceState, InstanceStatus};
use strom_proto::manifest::rabbitmq::PackageMessaging;
use strom_proto::manifest::{is_legacy_http_worker, ZipLimits, HOST_JSON};
use strom_proto::runtime_settings::{RuntimeKind, RuntimeSettings};
use strom_proto::worker_view::WorkerView;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

use crate::agent::Packages;
use crate::unpacked::{self, unpacked, Unpacked};

/// The worker's runtime configuration (`--default-runtime`, `--container-*`).
#[derive(Debug, Clone, Default)]
pub struct Containers {
    /// Runtime of apps without `STROM_RUNTIME`.
    pub default_runtime: RuntimeKind,
    /// Image, limits and user of container apps that set none.
    pub defaults: RuntimeSettings,
    pub allow_pull: bool,
    pub isolation: Isolation,
}

impl Containers {
    /// Check the flags with the rules of the app settings they default; every
    /// problem, named by flag.
    pub fn from_args(args: &crate::cli::ContainerArgs) -> Result<Containers, Vec<String>> {
        use strom_proto::runtime_settings as rs;
        let mut problems = Vec::new();
        let default_runtime = match &args.default_runtime {
            None => RuntimeKind::Process,
            Some(v) => v.parse().unwrap_or_else(|e| {
                problems.push(format!("default-runtime: {e}"));
                RuntimeKind::Process
            }),
        };
        let mut defaults = RuntimeSettings::default();
        for (flag, key, value) in [
            ("container-image", rs::IMAGE, &args.container_image),
            (
                "container-memory-mb",
                rs::MEMORY_MB,
                &args.container_memory_mb,
            ),
            ("container-cpus", rs::CPUS, &args.container_cpus),
            ("container-pids", rs::PIDS, &args.container_pids),
            ("container-user", rs::USER, &args.container_user),
        ] {
            let Some(value) = value else { continue };
            match RuntimeSettings::parse(&[(key.to_string(), value.clone())].into()) {
                Ok(one) => defaults = one.or(&defaults),
                Err(e) => problems.push(format!(
                    "{flag}: {}",
                    e.strip_prefix(&format!("{key}: ")).unwrap_or(&e)
                )),
            }
        }
        let isolation = match &args.container_isolation {
            None => Isolation::Default,
            Some(v) => v.parse().unwrap_or_else(|e| {
                problems.push(format!("container-isolation: {e}"));
                Isolation::Default
            }),
        };
        if isolation != Isolation::Default && !cfg!(windows) {
            problems
                .push("container-isolation: only Windows containers have an isolation mode".into());
        }
        if problems.is_empty() {
            Ok(Containers {
                default_runtime,
                defaults,
                allow_pull: args.container_allow_pull,
                isolation,
            })
        } else {
            Err(problems)
        }
    }
}

pub struct Worker {
    supervisor: ActorRef<NodeMsg>,
    run_dir: PathBuf,
    docker: Arc<DockerRuntime>,
    pub routing: RoutingTable,
    pub instances: watch::Receiver<Arc<Vec<InstanceStatus>>>,
    /// The view of the cluster this worker runs from (projected locally, or
    /// watched from a management node).
    pub state: watch::Receiver<Arc<WorkerView>>,
    assign_task: tokio::task::JoinHandle<()>,
    cancel: CancellationToken,
}

impl Worker {
    #[allow(clippy::too_many_arguments)]
    pub async fn start(
        node_id: NodeId,
        cluster_id: String,
        data_dir: &Path,
        containers: &Containers,
        lifecycle: Lifecycle,
        state: watch::Receiver<Arc<WorkerView>>,
        packages: Packages,
        limits: ZipLimits,
    ) -> anyhow::Result<Worker> {
        let run_dir = data_dir.join("run").join("instances");
        let killed = reap_orphans(&run_dir);
        if !killed.is_empty() {
            tracing::warn!(?killed, "killed handler processes left by a previous run");
        }
        let docker = Arc::new(DockerRuntime::new(DockerConfig {
            cluster: cluster_id,
            node: node_id,
            defaults: containers.defaults.clone(),
            allow_pull: containers.allow_pull,
            isolation: containers.isolation,
            engine: None,
        }));
        // Containers a previous run left (a killed worker) go before anything starts.
        match docker.sweep().await {
            Ok(removed) if !removed.is_empty() => {
                tracing::warn!(?removed, "removed containers left by a previous run")
            }
            Ok(_) => {}
            Err(e) if containers.default_runtime == RuntimeKind::Docker => {
                tracing::warn!("docker runtime: {e}")
            }
            Err(e) => tracing::info!("docker runtime not available yet: {e}"),
        }
        let runtime = Arc::new(Runtimes {
            process: Arc::new(match std::env::current_exe() {
                // Handlers die with the node, even after a kill -9 of it.
                Ok(strom) if launcher_enabled() => {
                    ProcessRuntime::new(&run_dir)?.with_launcher(strom)
                }
                _ => ProcessRuntime::new(&run_dir)?,
            }),
            docker: Some(docker.clone()),
            default: containers.default_runtime,
        });
        let run_dir = run_dir.clone();
        let routing = RoutingTable::default();
        // What the actor tree reports, what the assign loop could not unpack, and
        // both together (what heartbeats, the admin API and `strom up` show).
        let (status_tx, actor_statuses) = watch::channel(Arc::new(Vec::new()));
        let (failures_tx, failures) = watch::channel(Arc::new(Vec::new()));
        let (public_tx, instances) = watch::channel(Arc::new(Vec::new()));
        count_instances_when_scraped(instances.clone());
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
        // Absolute: handlers start in their own folder, and a relative data dir
        // (the default `./.strom`) would make their paths wrong there.
        let apps_dir = std::path::absolute(data_dir.join("apps"))?;
        std::fs::create_dir_all(&apps_dir)?;
        tokio::spawn(merge_statuses(
            actor_statuses.clone(),
            failures,
            public_tx,
            cancel.clone(),
        ));
        let assign_task = tokio::spawn(assign_loop(
            state.clone(),
            actor_statuses,
            packages,
            apps_dir,
            limits,
            supervisor.clone(),
            failures_tx,
            cancel.clone(),
        ));
        Ok(Worker {
            supervisor,
            run_dir,
            docker,
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
        // Containers too: whatever did not stop in time goes now.
        if let Ok(removed) = self.docker.sweep_all().await {
            if !removed.is_empty() {
                tracing::warn!(?removed, "removed containers that did not stop in time");
            }
            self.docker.remove_network().await;
        }
    }
}

/// Publish the actor tree's statuses and the unpack failures as one list.
async fn merge_statuses(
    mut actors: watch::Receiver<Arc<Vec<InstanceStatus>>>,
    mut failures: watch::Receiver<Arc<Vec<InstanceStatus>>>,
    public: watch::Sender<Arc<Vec<InstanceStatus>>>,
    cancel: CancellationToken,
) {
    loop {
        let merged: Vec<InstanceStatus> = actors
            .borrow_and_update()
            .iter()
            .chain(failures.borrow_and_update().iter())
            .cloned()
            .collect();
        public.send_replace(Arc::new(merged));
        tokio::select! {
            _ = cancel.cancelled() => return,
            changed = actors.changed() => if changed.is_err() { return },
            changed = failures.changed() => if changed.is_err() { return },
        }
    }
}

/// A version this worker could not unpack: attempts so far and the last error.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UnpackFailure {
    pub attempts: u32,
    pub error: String,
}

/// How long to wait before unpacking again after `attempts` failures in a row:
/// 2 s, doubling, at most a minute.
pub fn unpack_backoff(attempts: u32) -> Duration {
    Duration::from_secs(2u64.saturating_pow(attempts.clamp(1, 6)).min(60))
}

/// `strom_instances{app,state}` from this worker's instances, when scraped (an
/// app or state with none left reads 0).
fn count_instances_when_scraped(instances: watch::Receiver<Arc<Vec<InstanceStatus>>>) {
    let seen = std::sync::Mutex::new(std::collections::BTreeSet::<(String, &'static str)>::new());
    strom_control_plane::metrics::on_scrape(move || {
        let mut counts = std::collections::BTreeMap::<(String, &'static str), u32>::new();
        for s in instances.borrow().iter() {
            let state = match s.state {
                InstanceState::Starting => "starting",
                InstanceState::Ready => "ready",
                InstanceState::Draining => "draining",
                InstanceState::Restarting => "restarting",
                InstanceState::CrashLooping => "crashlooping",
            };
            *counts.entry((s.app.to_string(), state)).or_default() += 1;
        }
        let mut seen = seen.lock().expect("instance metrics");
        for key in seen.iter() {
            if !counts.contains_key(key) {
                metrics::gauge!("strom_instances", "app" => key.0.clone(), "state" => key.1)
                    .set(0.0);
            }
        }
        for ((app, state), n) in &counts {
            metrics::gauge!("strom_instances", "app" => app.clone(), "state" => *state)
                .set(f64::from(*n));
            seen.insert((app.clone(), state));
        }
    });
}

/// How an unpack failure shows among the instances (`strom app show`, `cluster
/// status`): a crash-looping slot of that version with the reason, never serving.
pub fn failure_status(app: &AppName, version: &VersionId, f: &UnpackFailure) -> InstanceStatus {
    InstanceStatus {
        app: app.clone(),
        version: version.clone(),
        slot: 0,
        instance_id: format!("unpack-{app}-{}", version.short()),
        state: InstanceState::CrashLooping,
        restarts: u64::from(f.attempts),
        pid: None,
        last_error: Some(format!(
            "cannot unpack version {}: {} (tried {} time{}; again in {} s)",
            version.short(),
            f.error,
            f.attempts,
            if f.attempts == 1 { "" } else { "s" },
            unpack_backoff(f.attempts).as_secs()
        )),
        serving: false,
    }
}

#[allow(clippy::too_many_arguments)]
async fn assign_loop(
    mut state: watch::Receiver<Arc<WorkerView>>,
    mut instances: watch::Receiver<Arc<Vec<InstanceStatus>>>,
    packages: Packages,
    apps_dir: PathBuf,
    limits: ZipLimits,
    supervisor: ActorRef<NodeMsg>,
    failures_tx: watch::Sender<Arc<Vec<InstanceStatus>>>,
    cancel: CancellationToken,
) {
    // The last assignment that could be unpacked, per app: when a new version cannot
    // be fetched yet, the version already running keeps running.
    let mut last_good: std::collections::HashMap<AppName, Assignment> = Default::default();
    let mut failures: std::collections::BTreeMap<(AppName, VersionId), UnpackFailure> =
        Default::default();
    loop {
        let view = state.borrow_and_update().clone();
        let mut assignments = Vec::new();
        let mut failed = false;
        let mut still_failing = std::collections::BTreeSet::new();
        // What the scheduler placed on this worker.
        for (name, run, app) in view.assigned() {
            match unpacked(&apps_dir, name, &run.version, &packages, &limits).await {
                Ok(root) => {
                    failures.remove(&(name.clone(), run.version.clone()));
                    // A version's package never changes: its facts are read once,
                    // not at every change of the view (a scale, a setting).
                    let known = last_good
                        .get(name)
                        .filter(|p| p.version == run.version && p.app_root == root);
                    let a = match known {
                        Some(p) => Assignment {
                            settings: run.settings.clone(),
                            instances: run.instances,
                            ..p.clone()
                        },
                        None => {
                            let http_worker = std::fs::read(root.join(HOST_JSON))
                                .is_ok_and(|bytes| is_legacy_http_worker(&bytes));
                            // What a RabbitMQ output needs is in the package, not the
                            // manifest.
                            let messaging =
                                PackageMessaging::from_dir(&root, &app.manifest.functions)
                                    .unwrap_or_else(|e| {
                                        tracing::error!(app = %name, version = run.version.short(), "cannot read the RabbitMQ bindings of the package: {e}; its outputs fail");
                                        PackageMessaging::default()
                                    });
                            Assignment {
                                app: name.clone(),
                                version: run.version.clone(),
                                app_root: root,
                                manifest: Arc::new(app.manifest.clone()),
                                http_worker,
                                messaging: Arc::new(messaging),
                                settings: run.settings.clone(),
                                instances: run.instances,
                            }
                        }
                    };
                    last_good.insert(name.clone(), a.clone());
                    assignments.push(a);
                }
                Err(e) => {
                    failed = true;
                    let key = (name.clone(), run.version.clone());
                    let failure = failures.entry(key.clone()).or_insert(UnpackFailure {
                        attempts: 0,
                        error: String::new(),
                    });
                    failure.attempts += 1;
                    failure.error = format!("{e:#}");
                    still_failing.insert(key);
                    tracing::error!(app = %name, version = run.version.short(), attempts = failure.attempts, "cannot unpack the package: {e:#}");
                    if let Some(previous) = last_good.get(name) {
                        assignments.push(Assignment {
                            instances: run.instances,
                            ..previous.clone()
                        });
                    }
                }
            }
        }
        last_good.retain(|app, _| view.runs.contains_key(app));
        // Only what is still assigned and still failing is shown.
        failures.retain(|key, _| still_failing.contains(key));
        failures_tx.send_replace(Arc::new(
            failures
                .iter()
                .map(|((app, version), f)| failure_status(app, version, f))
                .collect(),
        ));
        let backoff = failures
            .values()
            .map(|f| unpack_backoff(f.attempts))
            .min()
            .unwrap_or(Duration::from_secs(2));
        // An app placed nowhere (scaled to 0, or scaled up and not placed yet)
        // keeps its active version unpacked where it is (nothing is unpacked for
        // it anew): scaling it up again starts at once instead of unpacking the
        // package first (13 ms for 1.7 MB here). Placed on other workers, it goes.
        let assigned: std::collections::HashSet<Unpacked> = assignments
            .iter()
            .map(|a| (a.app.clone(), a.version.clone()))
            .chain(
                view.apps
                    .iter()
                    .filter(|(_, a)| a.placements.is_empty())
                    .map(|(app, a)| (app.clone(), a.version.clone())),
            )
            .collect();
        if supervisor
            .send_message(NodeMsg::Assign(assignments))
            .is_err()
        {
            return;
        }
        // Versions nothing uses any more leave the disk; a version whose
        // instances still drain goes once they have stopped.
        let mut running = in_use(&instances.borrow_and_update());
        unpacked::collect(&apps_dir, running.union(&assigned).cloned().collect()).await;
        let retry = async {
            if failed {
                tokio::time::sleep(backoff).await
            } else {
                std::future::pending().await
            }
        };
        tokio::pin!(retry);
        loop {
            tokio::select! {
                _ = cancel.cancelled() => return,
                changed = state.changed() => if changed.is_err() { return } else { break },
                _ = &mut retry => break,
                changed = instances.changed() => {
                    if changed.is_err() {
                        return;
                    }
                    let now = in_use(&instances.borrow_and_update());
                    if now != running {
                        running = now;
                        unpacked::collect(&apps_dir, running.union(&assigned).cloned().collect())
                            .await;
                    }
                }
            }
        }
    }
}

/// The versions the instances on this node run (draining ones included).
fn in_use(instances: &[InstanceStatus]) -> std::collections::HashSet<Unpacked> {
    instances
        .iter()
        .map(|i| (i.app.clone(), i.version.clone()))
        .collect()
}

/// Whether handlers start through the `strom` binary's launcher: only when this
/// process is the `strom` binary (tests that embed the node in another binary
/// start handlers directly).
fn launcher_enabled() -> bool {
    std::env::current_exe()
        .ok()
        .and_then(|p| p.file_stem().map(|s| s.to_string_lossy().into_owned()))
        .is_some_and(|name| name == "strom")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unpacking_backs_off_to_a_minute() {
        let secs: Vec<u64> = (1..=8).map(|n| unpack_backoff(n).as_secs()).collect();
        assert_eq!(secs, [2, 4, 8, 16, 32, 60, 60, 60]);
    }

    #[test]
    fn an_unpack_failure_shows_as_a_failing_slot_with_its_reason() {
        let app = AppName::parse("web").unwrap();
        let version = VersionId::of_bytes(b"zip");
        let s = failure_status(
            &app,
            &version,
            &UnpackFailure {
                attempts: 3,
                error: "the package does not match its hash".into(),
            },
        );
        assert_eq!(s.state, InstanceState::CrashLooping);
        assert!(!s.serving);
        let e = s.last_error.unwrap();
        assert!(
            e.contains("cannot unpack version") && e.contains("does not match"),
            "{e}"
        );
        assert!(e.contains("tried 3 times; again in 8 s"), "{e}");
    }
}
