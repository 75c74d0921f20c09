//! The gRPC admin API (`strom.admin.v1.AdminService`): validates input at the edge,
//! turns writes into [`Command`]s committed through Raft, and answers reads from
//! the applied state after a linearizable read barrier.
//!
//! Error mapping: bad input → INVALID_ARGUMENT (validation errors in the status
//! details as `ValidationErrors`), unknown app/version → NOT_FOUND, a conflict with
//! another app → FAILED_PRECONDITION, not the leader / no quorum → UNAVAILABLE.

use std::collections::BTreeMap;
use std::sync::Arc;

use strom_proto::admin_v1 as pb;
use strom_proto::admin_v1::admin_service_server::AdminService;
use strom_proto::command::{
    Command, CommandResult, DeployVersion, InitialKeys, KeyScope, Rejection, TimerId,
    WorkerSchedule,
};
use strom_proto::ids::{AppName, VersionId};
use strom_proto::instances::InstanceStatus;
use strom_proto::internal_v1::LiveWorkersReply;
use strom_proto::invocations::{InvocationRecord, InvocationStore};
use strom_proto::manifest::AuthLevel;
use strom_proto::manifest::{
    is_function_disabled, validate_app_for, AppManifest, AppPackage, FunctionManifest,
    HandlerCheck, ManifestError, Schedule, Trigger,
};
use strom_proto::route_table::SharedRoute;
use strom_proto::version::Feature;
use tokio::sync::watch;
use tonic::{Request, Response, Status, Streaming};

use crate::client_sessions::{WriteTag, SESSION_METADATA};
use crate::cluster_state::{AppState, ClusterState};
use crate::management::{new_function_key, now_ms, ManagementConfig, ManagementNode};
use crate::state_machine::StateView;

#[derive(Clone)]
pub struct AdminApi {
    pub(crate) node: ManagementNode,
    /// Set once the node's worker role has started (if it has one).
    worker: Arc<std::sync::OnceLock<LocalWorker>>,
    /// The applied index this node's own worker view (its gateway's, its worker's)
    /// was last projected at; a write is acknowledged once it is there.
    local_view: Arc<std::sync::OnceLock<watch::Receiver<u64>>>,
    /// Ends long-lived streams (`fn logs --follow`) when the server stops.
    shutdown: tokio_util::sync::CancellationToken,
    /// How a deploy checks the handler executable (a management-only node cannot
    /// know the workers' `PATH`).
    handler_check: HandlerCheck,
    /// This node's worker runs apps without `STROM_RUNTIME` in containers.
    containers_by_default: bool,
    /// How this node asks other workers for their invocation records.
    pub(crate) peers: crate::cluster_invocations::PeerSlot,
}

/// Where a node announces how far its own worker view has followed the state.
#[derive(Clone)]
pub struct ViewSlot(Arc<std::sync::OnceLock<watch::Receiver<u64>>>);

impl ViewSlot {
    pub fn set(&self, projected: watch::Receiver<u64>) {
        let _ = self.0.set(projected);
    }
}

/// Where a node's worker role, started after the control port, announces itself.
#[derive(Clone)]
pub struct WorkerSlot(Arc<std::sync::OnceLock<LocalWorker>>);

impl WorkerSlot {
    pub fn set(&self, view: LocalWorker) {
        let _ = self.0.set(view);
    }
}

/// What the admin API can see of this node's worker role (when it has one).
#[derive(Clone)]
pub struct LocalWorker {
    pub node_id: u64,
    pub invocations: InvocationStore,
    pub instances: watch::Receiver<Arc<Vec<InstanceStatus>>>,
}

/// Most instances of one app on one node.
pub const MAX_SCALE: u32 = 64;

impl AdminApi {
    pub fn new(node: ManagementNode) -> Self {
        AdminApi {
            node,
            worker: Arc::default(),
            local_view: Arc::default(),
            shutdown: tokio_util::sync::CancellationToken::new(),
            handler_check: HandlerCheck::PackageOrPath,
            containers_by_default: false,
            peers: Default::default(),
        }
    }

    /// Apps without `STROM_RUNTIME` run in containers here: their handler command is
    /// in the image, not on this node's `PATH`.
    pub fn containers_by_default(mut self, yes: bool) -> Self {
        self.containers_by_default = yes;
        self
    }

    /// Check bare handler commands on this node's `PATH` only if it runs instances.
    pub fn runs_instances(mut self, runs: bool) -> Self {
        self.handler_check = if runs {
            HandlerCheck::PackageOrPath
        } else {
            HandlerCheck::PackageOnly
        };
        self
    }

    /// Streams end when `shutdown` fires (the control server stopping).
    pub fn with_shutdown(mut self, shutdown: tokio_util::sync::CancellationToken) -> Self {
        self.shutdown = shutdown;
        self
    }

    /// Whether the control server is stopping.
    pub(crate) fn shutdown_requested(&self) -> bool {
        self.shutdown.is_cancelled()
    }

    pub fn with_worker(self, worker: LocalWorker) -> Self {
        let _ = self.worker.set(worker);
        self
    }

    /// The slot this node fills in once its own worker view follows the state.
    pub fn view_slot(&self) -> ViewSlot {
        ViewSlot(self.local_view.clone())
    }

    /// The slot this node's worker role fills in once it runs.
    pub fn worker_slot(&self) -> WorkerSlot {
        WorkerSlot(self.worker.clone())
    }

    /// The slot this node's gateway fills in with its client for other workers.
    pub fn peers_slot(&self) -> crate::cluster_invocations::PeerSlot {
        self.peers.clone()
    }

    pub(crate) fn local_worker(&self) -> Option<&LocalWorker> {
        self.worker.get()
    }

    /// Instances of every worker as the leader last heard of them; this node's own
    /// when no leader answers.
    pub(crate) fn instances(
        &self,
        live: Option<&LiveWorkersReply>,
        app: Option<&AppName>,
    ) -> Vec<pb::InstanceInfo> {
        let all: Vec<(u64, InstanceStatus)> = match (live, self.worker.get()) {
            (Some(live), _) => live
                .workers
                .iter()
                .flat_map(|w| {
                    w.instances
                        .iter()
                        .filter_map(|r| crate::workers::status_of(r).ok())
                        .map(|s| (w.node_id, s))
                })
                .collect(),
            (None, Some(w)) => w
                .instances
                .borrow()
                .iter()
                .map(|i| (w.node_id, i.clone()))
                .collect(),
            (None, None) => Vec::new(),
        };
        all.iter()
            .filter(|(_, i)| app.is_none_or(|a| &i.app == a))
            .map(|(node_id, i)| pb::InstanceInfo {
                app_name: i.app.to_string(),
                version_id: i.version.to_string(),
                slot: i.slot,
                instance_id: i.instance_id.clone(),
                state: i.state.as_str().to_string(),
                restarts: i.restarts,
                pid: i.pid.unwrap_or(0),
                last_error: i.last_error.clone().unwrap_or_default(),
                // Answering this node's traffic: of the serving version, and Ready
                // (a crash-looping instance serves nothing).
                serving: i.serving && i.state == strom_proto::instances::InstanceState::Ready,
                node_id: *node_id,
            })
            .collect()
    }

    async fn set_schedule(
        &self,
        tag: Option<&WriteTag>,
        node: u64,
        schedule: WorkerSchedule,
    ) -> Result<Response<pb::CordonNodeResponse>, Status> {
        if node == 0 {
            return Err(Status::invalid_argument("node_id: must be at least 1"));
        }
        // Only for a registered worker (so only once the cluster speaks the protocol
        // that has workers: every member can read the entry).
        let view = self.fresh().await?;
        if !view.state.workers.contains_key(&node) {
            return Err(Status::not_found(format!(
                "node {node} is not a registered worker"
            )));
        }
        let log_index = self
            .commit_tagged(
                tag,
                Command::SetWorkerSchedule {
                    node,
                    schedule,
                    at_ms: now_ms(),
                },
            )
            .await?
            .index;
        let view = self.node.read_local();
        let status = view
            .state
            .workers
            .get(&node)
            .map(|w| w.status().to_string())
            .unwrap_or_default();
        Ok(Response::new(pb::CordonNodeResponse { status, log_index }))
    }

    /// Whether `id` is in the management group (voter or learner).
    fn is_management_member(&self, id: u64) -> bool {
        self.node
            .raft
            .metrics()
            .borrow()
            .membership_config
            .membership()
            .get_node(&id)
            .is_some()
    }

    pub(crate) async fn fresh(&self) -> Result<Arc<StateView>, Status> {
        self.node
            .read_linearizable()
            .await
            .map_err(|e| e.to_status())
    }

    pub(crate) async fn commit(&self, command: Command) -> Result<(u64, CommandResult), Status> {
        let c = self.commit_tagged(None, command).await?;
        Ok((c.index, c.result))
    }

    /// Commit `command`, in the client's session when the request carries one
    /// (a retry is answered with the first outcome, nothing applied again).
    pub(crate) async fn commit_tagged(
        &self,
        tag: Option<&WriteTag>,
        command: Command,
    ) -> Result<Committed, Status> {
        let command = match tag {
            None => command,
            Some(tag) => {
                if !self.node.read_local().state.allows(Feature::ClientSessions) {
                    return Err(Status::failed_precondition(format!(
                        "client sessions need cluster protocol {}: send the request without \
                         {SESSION_METADATA} until every member is upgraded",
                        Feature::ClientSessions.since()
                    )));
                }
                tag.wrap(command, now_ms())
            }
        };
        let (index, result) = self
            .node
            .propose(command)
            .await
            .map_err(|e| e.to_status())?;
        let (shown_index, result, replayed) = match result {
            CommandResult::Replayed { index, result } => (index, *result, true),
            other => (index, other, false),
        };
        if let CommandResult::Rejected(r) = &result {
            return Err(rejection_status(r));
        }
        // Read-your-writes on this node, even when the leader committed it: its
        // state, and the view its gateway and worker use.
        self.node.applied(index).await.map_err(|e| e.to_status())?;
        if let Some(projected) = self.local_view.get() {
            let mut projected = projected.clone();
            let seen = tokio::time::timeout(
                crate::management::APPLY_WAIT,
                projected.wait_for(|i| *i >= index),
            )
            .await;
            if !matches!(seen, Ok(Ok(_))) {
                tracing::warn!(
                    index,
                    "the local worker view did not follow the commit in time"
                );
            }
        }
        Ok(Committed {
            index: shown_index,
            result,
            replayed,
        })
    }

    /// Deploy a package as the app's active version through the one deploy path
    /// ([`AdminApi::deploy`]), answered once committed. Used by the gRPC upload and
    /// in-process by `strom up`.
    pub async fn deploy_bytes(
        &self,
        app: AppName,
        bytes: Vec<u8>,
        new_settings: BTreeMap<String, String>,
    ) -> Result<pb::DeployAppResponse, Status> {
        self.deploy_bytes_tagged(None, app, bytes, new_settings)
            .await
    }

    async fn deploy_bytes_tagged(
        &self,
        tag: Option<WriteTag>,
        app: AppName,
        bytes: Vec<u8>,
        new_settings: BTreeMap<String, String>,
    ) -> Result<pb::DeployAppResponse, Status> {
        let request = crate::deploy::DeployRequest {
            app,
            bytes,
            settings: new_settings,
            meta: crate::deploy::DeployMeta::cli(),
            wait: crate::deploy::DeployWait::Committed,
            tag,
        };
        self.deploy(request).await.map_err(|e| e.to_status())
    }

    /// Create or replace a key (the gRPC API and the key management REST API):
    /// the master key's name is always `_master`; `value` `None` makes a random
    /// one. Answers the name, the value and the commit's log index.
    pub async fn put_key(
        &self,
        app: AppName,
        scope: KeyScope,
        name: &str,
        value: Option<&str>,
    ) -> Result<(String, String, u64), Status> {
        self.put_key_tagged(None, app, scope, name, value).await
    }

    /// [`AdminApi::put_key`] in a client's session: a retry answers the key as
    /// the first attempt set it (a random value is not made again).
    pub(crate) async fn put_key_tagged(
        &self,
        tag: Option<&WriteTag>,
        app: AppName,
        scope: KeyScope,
        name: &str,
        value: Option<&str>,
    ) -> Result<(String, String, u64), Status> {
        let name = match scope {
            KeyScope::Master => "_master".to_string(),
            _ => {
                strom_proto::key_rules::check_key_name(name).map_err(Status::invalid_argument)?;
                name.to_string()
            }
        };
        let value = match value {
            None => new_function_key(),
            Some(v) => {
                strom_proto::key_rules::check_key_value(v).map_err(Status::invalid_argument)?;
                v.to_string()
            }
        };
        let committed = self
            .commit_tagged(
                tag,
                Command::PutKey {
                    app: app.clone(),
                    scope: scope.clone(),
                    name: name.clone(),
                    value: value.clone(),
                    at_ms: now_ms(),
                },
            )
            .await?;
        if committed.replayed {
            let stored = key_value(&self.node.read_local().state, &app, &scope, &name);
            return match stored {
                Some(v) => Ok((name, v, committed.index)),
                None => Err(Status::failed_precondition(format!(
                    "key `{name}` was set by this request's first attempt, and removed since"
                ))),
            };
        }
        Ok((name, value, committed.index))
    }

    /// Remove a key (not the master key); answers the commit's log index.
    pub async fn delete_key(
        &self,
        app: AppName,
        scope: KeyScope,
        name: &str,
    ) -> Result<u64, Status> {
        self.delete_key_tagged(None, app, scope, name).await
    }

    pub(crate) async fn delete_key_tagged(
        &self,
        tag: Option<&WriteTag>,
        app: AppName,
        scope: KeyScope,
        name: &str,
    ) -> Result<u64, Status> {
        if scope == KeyScope::Master || name == "_master" {
            return Err(Status::invalid_argument(
                "the master key cannot be deleted (set a new value instead)",
            ));
        }
        strom_proto::key_rules::check_key_name(name).map_err(Status::invalid_argument)?;
        let committed = self
            .commit_tagged(
                tag,
                Command::DeleteKey {
                    app,
                    scope,
                    name: name.to_string(),
                    at_ms: now_ms(),
                },
            )
            .await?;
        Ok(committed.index)
    }

    /// Whether `token` is the cluster's admin token.
    pub fn is_admin_token(&self, token: &str) -> bool {
        self.node
            .read_local()
            .state
            .cluster
            .as_ref()
            .is_some_and(|c| c.admin_token_hash.matches(token))
    }

    /// Validate a package, store it, and commit it as the app's active version
    /// (no history: [`AdminApi::deploy`] records it).
    pub(crate) async fn commit_package(
        &self,
        app: AppName,
        bytes: Vec<u8>,
        new_settings: BTreeMap<String, String>,
        deployment: Option<&str>,
        tag: Option<&WriteTag>,
    ) -> Result<pb::DeployAppResponse, crate::deploy::DeployError> {
        use crate::deploy::DeployError;
        let limits = self.node.config.package_limits.clone();
        if bytes.is_empty() {
            return Err(DeployError::Invalid(vec![ManifestError::new(
                "(package)",
                "",
                "the package is empty",
            )]));
        }

        let mut problems = Vec::new();
        for (key, value) in &new_settings {
            if let Err(e) = check_setting_name(key).and_then(|_| check_setting_value(key, value)) {
                problems.push(e);
            }
        }
        if !problems.is_empty() {
            return Err(DeployError::Status(Status::invalid_argument(
                problems.join("; "),
            )));
        }
        let mut settings = self
            .node
            .read_local()
            .state
            .apps
            .get(&app)
            .map(|a| a.settings.clone())
            .unwrap_or_default();
        settings.extend(new_settings.clone());
        let bytes = Arc::new(bytes);
        let to_check = bytes.clone();
        // A handler that runs in a container is looked up in its image, not here.
        let in_container = match settings
            .get(strom_proto::runtime_settings::RUNTIME)
            .map(|v| v.trim().to_ascii_lowercase())
        {
            Some(v) if v == "docker" => true,
            Some(v) if v == "process" => false,
            _ => self.containers_by_default,
        };
        let handler_check = if in_container {
            HandlerCheck::PackageOnly
        } else {
            self.handler_check
        };
        let manifest = tokio::task::spawn_blocking(move || {
            let pkg = AppPackage::from_zip_bytes(&to_check, &limits)
                .map_err(|e| vec![ManifestError::from(e)])?;
            validate_app_for(&pkg, &settings, handler_check)
        })
        .await
        .map_err(|e| DeployError::Status(Status::internal(format!("validation task failed: {e}"))))?
        .map_err(DeployError::Invalid)?;

        let size_bytes = bytes.len() as u64;
        let version = self
            .node
            .blobs
            .put(bytes.clone())
            .await
            .map_err(|e| DeployError::Status(Status::internal(e.to_string())))?;
        // Committed only once a majority of management nodes holds the package.
        self.node
            .replicate_blob(&version, bytes)
            .await
            .map_err(|e| DeployError::Status(Status::unavailable(e.to_string())))?;
        let initial_keys = InitialKeys {
            master: new_function_key(),
            host_default: new_function_key(),
            function_defaults: manifest
                .functions
                .iter()
                .map(|f| (f.name.clone(), new_function_key()))
                .collect(),
        };
        let deploy = Box::new(DeployVersion {
            app: app.clone(),
            version: version.clone(),
            size_bytes,
            manifest: manifest.clone(),
            at_ms: now_ms(),
            initial_keys,
            settings: new_settings,
        });
        // A recorded deployment commits its version only while it still runs.
        let command = match deployment {
            Some(id) => Command::DeployVersionFor {
                deployment: id.to_string(),
                deploy,
            },
            None => Command::DeployVersion(deploy),
        };
        let Committed {
            index: log_index,
            result,
            ..
        } = self
            .commit_tagged(tag, command)
            .await
            .map_err(DeployError::Status)?;
        tracing::info!(%app, version = version.short(), log_index, "deployed");
        let view = self.node.read_local();
        let state = find_app(&view, &app).map_err(DeployError::Status)?;
        let config = &self.node.config;
        Ok(pb::DeployAppResponse {
            app_name: app.to_string(),
            version_id: version.to_string(),
            changed: result == CommandResult::Applied,
            functions: functions_of(&view.state, state, &manifest, config),
            log_index,
            warnings: shared_route_warnings(&view.state, &app, &manifest, config),
        })
    }
}

/// The Raft role as the API names it.
fn server_state_name(state: openraft::ServerState) -> &'static str {
    match state {
        openraft::ServerState::Leader => "leader",
        openraft::ServerState::Follower => "follower",
        openraft::ServerState::Candidate => "candidate",
        openraft::ServerState::Learner => "learner",
        openraft::ServerState::Shutdown => "shutdown",
    }
}

/// A key's value in the state, if it exists.
fn key_value(state: &ClusterState, app: &AppName, scope: &KeyScope, name: &str) -> Option<String> {
    if *scope == KeyScope::System {
        return state.system_keys.get(app)?.get(name).cloned();
    }
    let keys = &state.apps.get(app)?.keys;
    match scope {
        KeyScope::Master => Some(keys.master.clone()),
        KeyScope::Host => keys.host.get(name).cloned(),
        KeyScope::Function(f) => keys.functions.get(f)?.get(name).cloned(),
        KeyScope::System => None,
    }
}

/// A committed write: its log index and outcome; for a client session's retry,
/// the first attempt's (`replayed`: nothing was applied now).
#[derive(Debug)]
pub(crate) struct Committed {
    pub index: u64,
    pub result: CommandResult,
    pub replayed: bool,
}

pub fn rejection_status(r: &Rejection) -> Status {
    match r {
        Rejection::AppNotFound { .. }
        | Rejection::VersionNotFound { .. }
        | Rejection::FunctionNotFound { .. }
        | Rejection::KeyNotFound { .. }
        | Rejection::WorkerNotFound { .. } => Status::not_found(r.to_string()),
        // Refused only while an older node holds the cluster below protocol 5.
        Rejection::RouteConflict { .. } => Status::failed_precondition(format!(
            "{r}: apps may share routes (each at its own address) once every node runs a \
             build of protocol {} or later",
            Feature::AppHosts.since()
        )),
        Rejection::NotInitialized => Status::unavailable(r.to_string()),
        Rejection::AlreadyInitialized
        | Rejection::MasterKeyIsPermanent
        | Rejection::TimerBusy { .. }
        | Rejection::TimerMoved { .. }
        | Rejection::NotYetEnabled { .. } => Status::failed_precondition(r.to_string()),
        Rejection::TimerNextNotAfter { .. } => Status::invalid_argument(r.to_string()),
        Rejection::TimerRunNotFound { .. } | Rejection::DeploymentNotFound { .. } => {
            Status::not_found(r.to_string())
        }
        Rejection::DeploymentInProgress { .. } | Rejection::DeploymentEnded { .. } => {
            Status::aborted(r.to_string())
        }
        Rejection::SessionUnknown { .. }
        | Rejection::SequenceOld { .. }
        | Rejection::SequenceAhead { .. } => Status::failed_precondition(r.to_string()),
        Rejection::SequenceReused { .. } | Rejection::NestedSession => {
            Status::invalid_argument(r.to_string())
        }
    }
}

/// INVALID_ARGUMENT carrying every validation error, in the message and as details.
pub fn validation_status(errors: &[ManifestError]) -> Status {
    let details = pb::ValidationErrors {
        errors: errors
            .iter()
            .map(|e| pb::ValidationError {
                file: e.file.clone(),
                json_path: e.json_path.clone(),
                message: e.message.clone(),
            })
            .collect(),
    };
    let mut message = format!(
        "the app is invalid ({} error{})",
        errors.len(),
        if errors.len() == 1 { "" } else { "s" }
    );
    for e in errors {
        message.push_str("\n  ");
        message.push_str(&e.to_string());
    }
    strom_proto::rich_error::validation_status(message, &details)
}

pub(crate) fn parse_app(name: &str) -> Result<AppName, Status> {
    AppName::parse(name).map_err(|e| Status::invalid_argument(e.to_string()))
}

pub(crate) fn find_app<'a>(view: &'a StateView, name: &AppName) -> Result<&'a AppState, Status> {
    view.state
        .apps
        .get(name)
        .map(|a| &**a)
        .ok_or_else(|| Status::not_found(format!("app `{name}` not found")))
}

/// A function of the app's active version, by name (case-insensitive).
fn find_function<'a>(app: &'a AppState, name: &str) -> Result<&'a FunctionManifest, Status> {
    app.active()
        .manifest
        .functions
        .iter()
        .find(|f| f.name.eq_ignore_ascii_case(name))
        .ok_or_else(|| Status::not_found(format!("app `{}` has no function `{name}`", app.name)))
}

/// Resolve a full version id or a unique prefix of ≥ 7 hex digits.
fn resolve_version(app: &AppState, raw: &str) -> Result<VersionId, Status> {
    let raw = raw.trim().to_ascii_lowercase();
    if raw.len() < 7 || !raw.bytes().all(|b| b.is_ascii_hexdigit()) {
        return Err(Status::invalid_argument(format!(
            "version `{raw}`: give a version id or a prefix of at least 7 hex digits"
        )));
    }
    let matches: Vec<_> = app
        .versions
        .iter()
        .filter(|v| v.id.as_str().starts_with(&raw))
        .collect();
    match matches.as_slice() {
        [one] => Ok(one.id.clone()),
        [] => Err(Status::not_found(format!(
            "app `{}` has no version `{raw}`",
            app.name
        ))),
        _ => Err(Status::invalid_argument(format!(
            "version prefix `{raw}` matches {} versions of app `{}`; give more digits",
            matches.len(),
            app.name
        ))),
    }
}

/// Where one app's functions are reached on this node's function port.
struct Addresses<'a> {
    /// The shared address (`http://127.0.0.1:7071`).
    shared: &'a str,
    /// The app's own address (`http://shop.localhost:7071`).
    own: String,
    /// The app's functions whose routes other apps also have.
    shared_routes: Vec<SharedRoute>,
    /// The manifest is the app's active version's (its timers run).
    active: bool,
    timers: &'a std::collections::BTreeMap<TimerId, crate::timer_records::TimerRecord>,
}

impl Addresses<'_> {
    fn timer(&self, app: &AppName, function: &str) -> Option<&crate::timer_records::TimerRecord> {
        self.timers.get(&TimerId {
            app: app.clone(),
            function: function.to_string(),
        })
    }
}

/// A timer's schedule as the cluster runs it, and its runs (`record`: its tick
/// record, for the app's active version).
fn timer_status(
    trigger: &strom_proto::manifest::TimerTrigger,
    settings: &std::collections::BTreeMap<String, String>,
    record: Option<&crate::timer_records::TimerRecord>,
) -> pb::TimerStatus {
    let mut status = match strom_proto::timers::TimerSpec::resolve(trigger, settings) {
        Ok(spec) => pb::TimerStatus {
            schedule: spec.describe(),
            time_zone: spec.zone.name().to_string(),
            ..Default::default()
        },
        Err(problem) => pb::TimerStatus {
            schedule: trigger.schedule.clone(),
            problem,
            ..Default::default()
        },
    };
    if let Some(r) = record {
        status.next_ms = r.next_ms;
        status.running = r.running.as_ref().map(|run| pb::TimerRunStatus {
            invocation_id: run.invocation_id.clone(),
            tick_ms: run.tick_ms,
            past_due: run.past_due,
            at_ms: run.fired_at_ms,
            ..Default::default()
        });
        status.last_run = r.last_outcome.as_ref().map(|run| pb::TimerRunStatus {
            invocation_id: run.invocation_id.clone(),
            tick_ms: run.tick_ms,
            past_due: false,
            at_ms: run.finished_at_ms,
            succeeded: run.outcome.succeeded,
            error: run.outcome.error.clone(),
            duration_ms: run.outcome.duration_ms,
        });
    }
    status
}

fn function_info(
    app: &AppState,
    manifest: &AppManifest,
    f: &FunctionManifest,
    at: &Addresses<'_>,
) -> pb::FunctionInfo {
    let (settings, keys) = (&app.settings, &app.keys);
    let mut info = pb::FunctionInfo {
        app_name: app.name.to_string(),
        name: f.name.clone(),
        // It serves when its trigger is supported; unsupported outputs are named.
        supported: !matches!(f.trigger, Trigger::Unsupported { .. }),
        unsupported_reasons: f
            .bindings
            .iter()
            .filter(|b| !b.supported)
            .map(|b| match b.direction {
                strom_proto::manifest::Direction::In => format!(
                    "{} `{}` ({}) is not supported on this cluster",
                    if b.binding_type.to_ascii_lowercase().ends_with("trigger") {
                        "trigger"
                    } else {
                        "input"
                    },
                    b.name,
                    b.binding_type
                ),
                _ => format!(
                    "output `{}` ({}) is not supported on this cluster: values given to it are dropped",
                    b.name, b.binding_type
                ),
            })
            .collect(),
        disabled: is_function_disabled(settings, &f.name),
        ..Default::default()
    };
    match &f.trigger {
        Trigger::Http(h) => {
            info.key = match h.auth_level {
                AuthLevel::Anonymous => String::new(),
                AuthLevel::Function => keys
                    .functions
                    .get(&f.name)
                    .and_then(|k| k.get("default"))
                    .cloned()
                    .unwrap_or_default(),
                AuthLevel::Admin => keys.master.clone(),
            };
            info.trigger_type = "httpTrigger".into();
            info.auth_level = h.auth_level.as_str().to_string();
            info.methods = h.methods.clone();
            info.route = h.route.clone();
            let path = h.url_path(&manifest.host.route_prefix);
            info.app_url = format!("{}{path}", at.own);
            info.shared_with = at
                .shared_routes
                .iter()
                .filter(|s| s.function == f.name)
                .map(|s| format!("{}/{}", s.other_app, s.other_function))
                .collect();
            info.url = if info.shared_with.is_empty() {
                format!("{}{path}", at.shared)
            } else {
                info.app_url.clone()
            };
        }
        Trigger::Timer(t) => {
            info.trigger_type = "timerTrigger".into();
            info.schedule = t.schedule.clone();
            // The active version's timers run (and have a record once scheduled).
            if at.active {
                info.timer = Some(timer_status(t, settings, at.timer(&app.name, &f.name)));
            }
        }
        Trigger::Unsupported { binding_type } => {
            info.trigger_type = binding_type.clone();
        }
        Trigger::RabbitMq(t) => {
            info.trigger_type = "rabbitMQTrigger".into();
            info.queue_name = t.queue_name.clone();
        }
    }
    info
}

/// The functions of `manifest` (a version of `app`) as the API shows them, with
/// the URLs that reach them on this node's function port.
pub fn functions_of(
    state: &ClusterState,
    app: &AppState,
    manifest: &AppManifest,
    config: &ManagementConfig,
) -> Vec<pb::FunctionInfo> {
    let at = Addresses {
        shared: &config.public_http_url,
        own: config.app_url(&app.name),
        shared_routes: state.shared_routes(&app.name, manifest),
        active: app.active().manifest == *manifest,
        timers: &state.timers,
    };
    manifest
        .functions
        .iter()
        .map(|f| function_info(app, manifest, f, &at))
        .collect()
}

/// Each RabbitMQ trigger's state from the leader's live view: its consumers on
/// every worker, the queue's depth and the app's scale on it. Nothing without a
/// live view (no leader answered).
pub fn with_queue_status(
    mut functions: Vec<pb::FunctionInfo>,
    live: Option<&LiveWorkersReply>,
) -> Vec<pb::FunctionInfo> {
    let Some(live) = live else {
        return functions;
    };
    for f in functions.iter_mut().filter(|f| !f.queue_name.is_empty()) {
        let mut status = pb::QueueTriggerStatus::default();
        for w in &live.workers {
            for t in &w.triggers {
                if t.app != f.app_name || t.function != f.name {
                    continue;
                }
                status.consumers += t.consumers;
                status.consuming += t.consuming;
                status.in_flight += t.in_flight;
                if !t.error.is_empty() {
                    status
                        .errors
                        .push(format!("worker {}: {}", w.node_id, t.error));
                }
            }
        }
        if let Some(q) = live
            .queues
            .iter()
            .find(|q| q.app == f.app_name && q.queue == f.queue_name)
        {
            status.ready = q.ready;
            status.depth_error = q.error.clone();
            status.scale = q.scale;
        }
        f.queue = Some(status);
    }
    functions
}

/// Warnings for a version of `app` that became active: each route another app
/// also has, and where each function is still reached.
fn shared_route_warnings(
    state: &ClusterState,
    app: &AppName,
    manifest: &AppManifest,
    config: &ManagementConfig,
) -> Vec<String> {
    state
        .shared_routes(app, manifest)
        .into_iter()
        .map(|s| {
            format!(
                "app `{app}`'s function `{}` and app `{}`'s function `{}` have the same route \
                 ({}): the shared address {} serves it for neither; call each at its app's own \
                 address: {}{}, {}{}",
                s.function,
                s.other_app,
                s.other_function,
                s.route,
                config.public_http_url,
                config.app_url(app),
                s.route,
                config.app_url(&s.other_app),
                s.other_route,
            )
        })
        .collect()
}

fn summary(app: &AppState, config: &ManagementConfig) -> pb::AppSummary {
    pb::AppSummary {
        url: config.app_url(&app.name),
        name: app.name.to_string(),
        active_version: app.active_version.to_string(),
        version_count: app.versions.len() as u32,
        function_count: app.active().manifest.functions.len() as u32,
        created_at_ms: app.created_at_ms,
        updated_at_ms: app.updated_at_ms,
    }
}

#[tonic::async_trait]
impl AdminService for AdminApi {
    #[tracing::instrument(skip_all)]
    async fn deploy_app(
        &self,
        request: Request<Streaming<pb::DeployAppChunk>>,
    ) -> Result<Response<pb::DeployAppResponse>, Status> {
        let limits = self.node.config.package_limits.clone();
        let metadata = request.metadata().clone();
        let mut stream = request.into_inner();
        let mut name: Option<AppName> = None;
        let mut bytes = Vec::new();
        let mut settings = BTreeMap::new();
        let mut index = 0usize;
        while let Some(chunk) = stream.message().await? {
            index += 1;
            if let Some(first) = &name {
                // Later chunks leave the name empty or repeat it (as the proto says).
                if !chunk.app_name.is_empty() && chunk.app_name != first.as_str() {
                    return Err(Status::invalid_argument(format!(
                        "app_name: chunk {index} names app `{}`, but the upload is for `{first}`",
                        chunk.app_name
                    )));
                }
            }
            if name.is_none() {
                name = Some(parse_app(&chunk.app_name)?);
                settings = chunk.settings.into_iter().collect();
                if chunk.total_size > limits.max_compressed_bytes {
                    return Err(too_large(limits.max_compressed_bytes));
                }
            }
            if (bytes.len() + chunk.data.len()) as u64 > limits.max_compressed_bytes {
                return Err(too_large(limits.max_compressed_bytes));
            }
            bytes.extend_from_slice(&chunk.data);
        }
        let app = name.ok_or_else(|| Status::invalid_argument("no data: the upload was empty"))?;
        let settings_text: String = settings.iter().map(|(k, v)| format!("{k}={v}\0")).collect();
        let tag = WriteTag::of_parts(
            &metadata,
            "DeployApp",
            &[app.as_str().as_bytes(), settings_text.as_bytes(), &bytes],
        )?;
        self.deploy_bytes_tagged(tag, app, bytes, settings)
            .await
            .map(Response::new)
    }

    async fn list_apps(
        &self,
        _request: Request<pb::ListAppsRequest>,
    ) -> Result<Response<pb::ListAppsResponse>, Status> {
        let view = self.fresh().await?;
        Ok(Response::new(pb::ListAppsResponse {
            apps: view
                .state
                .apps
                .values()
                .map(|a| summary(a, &self.node.config))
                .collect(),
            applied_index: view.applied_index(),
        }))
    }

    async fn get_app(
        &self,
        request: Request<pb::GetAppRequest>,
    ) -> Result<Response<pb::GetAppResponse>, Status> {
        let name = parse_app(&request.get_ref().name)?;
        let view = self.fresh().await?;
        let app = find_app(&view, &name)?;
        let manifest = &app.active().manifest;
        let live = self.node.live_workers().await;
        Ok(Response::new(pb::GetAppResponse {
            app: Some(summary(app, &self.node.config)),
            versions: app
                .versions
                .iter()
                .rev()
                .map(|v| pb::VersionInfo {
                    version_id: v.id.to_string(),
                    deployed_at_ms: v.deployed_at_ms,
                    size_bytes: v.size_bytes,
                    function_count: v.manifest.functions.len() as u32,
                    active: v.id == app.active_version,
                })
                .collect(),
            functions: with_queue_status(
                functions_of(&view.state, app, manifest, &self.node.config),
                live.as_ref(),
            ),
            applied_index: view.applied_index(),
            route_prefix: manifest.host.route_prefix.clone(),
            instances: self.instances(live.as_ref(), Some(&name)),
            scale: app
                .scale
                .unwrap_or_else(|| crate::scheduler::desired_in(&view.state, app, now_ms())),
        }))
    }

    async fn delete_app(
        &self,
        request: Request<pb::DeleteAppRequest>,
    ) -> Result<Response<pb::DeleteAppResponse>, Status> {
        let tag = WriteTag::of(request.metadata(), "DeleteApp", request.get_ref())?;
        let app = parse_app(&request.get_ref().name)?;
        let log_index = self
            .commit_tagged(
                tag.as_ref(),
                Command::DeleteApp {
                    app,
                    at_ms: now_ms(),
                },
            )
            .await?
            .index;
        Ok(Response::new(pb::DeleteAppResponse { log_index }))
    }

    async fn set_app_settings(
        &self,
        request: Request<pb::SetAppSettingsRequest>,
    ) -> Result<Response<pb::SetAppSettingsResponse>, Status> {
        let tag = WriteTag::of(request.metadata(), "SetAppSettings", request.get_ref())?;
        let req = request.into_inner();
        let app = parse_app(&req.name)?;
        let mut problems = Vec::new();
        for key in req.remove.iter() {
            if let Err(e) = check_setting_name(key) {
                problems.push(e);
            }
        }
        // A new name must also be one an environment (and Azure) takes; a setting
        // stored before this rule can still be removed.
        for key in req.set.keys() {
            if let Err(e) = check_setting_name(key).and_then(|()| check_new_setting_name(key)) {
                problems.push(e);
            }
        }
        for (key, value) in &req.set {
            if let Err(e) = check_setting_value(key, value) {
                problems.push(e);
            }
        }
        if !problems.is_empty() {
            return Err(Status::invalid_argument(problems.join("; ")));
        }
        if req.set.is_empty() && req.remove.is_empty() {
            return Err(Status::invalid_argument("nothing to set or remove"));
        }
        let view = self.node.read_local();
        if let Some(state) = view.state.apps.get(&app) {
            let mut merged = state.settings.clone();
            for k in &req.remove {
                merged.remove(k);
            }
            merged.extend(req.set.iter().map(|(k, v)| (k.clone(), v.clone())));
            check_schedule_settings(&state.active().manifest, &req.set, &merged)
                .map_err(Status::invalid_argument)?;
            let touched: Vec<&str> = req
                .set
                .keys()
                .chain(req.remove.iter())
                .map(String::as_str)
                .collect();
            self.check_rabbitmq_settings(state, &touched, &merged)
                .await
                .map_err(Status::invalid_argument)?;
        }
        let log_index = self
            .commit_tagged(
                tag.as_ref(),
                Command::SetAppSettings {
                    app: app.clone(),
                    set: req.set.into_iter().collect(),
                    remove: req.remove,
                    at_ms: now_ms(),
                },
            )
            .await?
            .index;
        let view = self.node.read_local();
        let state = find_app(&view, &app)?;
        Ok(Response::new(pb::SetAppSettingsResponse {
            settings: state.settings.clone().into_iter().collect(),
            log_index,
        }))
    }

    async fn get_app_settings(
        &self,
        request: Request<pb::GetAppSettingsRequest>,
    ) -> Result<Response<pb::GetAppSettingsResponse>, Status> {
        let app = parse_app(&request.get_ref().name)?;
        let view = self.fresh().await?;
        let state = find_app(&view, &app)?;
        Ok(Response::new(pb::GetAppSettingsResponse {
            settings: state.settings.clone().into_iter().collect(),
            applied_index: view.applied_index(),
        }))
    }

    async fn rollback_app(
        &self,
        request: Request<pb::RollbackAppRequest>,
    ) -> Result<Response<pb::RollbackAppResponse>, Status> {
        let tag = WriteTag::of(request.metadata(), "RollbackApp", request.get_ref())?;
        let req = request.into_inner();
        let app = parse_app(&req.name)?;
        let view = self.fresh().await?;
        let version = resolve_version(find_app(&view, &app)?, &req.version_id)?;
        let log_index = self
            .commit_tagged(
                tag.as_ref(),
                Command::ActivateVersion {
                    app: app.clone(),
                    version: version.clone(),
                    at_ms: now_ms(),
                },
            )
            .await?
            .index;
        let view = self.node.read_local();
        let state = find_app(&view, &app)?;
        let (config, manifest) = (&self.node.config, &state.active().manifest);
        Ok(Response::new(pb::RollbackAppResponse {
            version_id: version.to_string(),
            functions: functions_of(&view.state, state, manifest, config),
            log_index,
            warnings: shared_route_warnings(&view.state, &app, manifest, config),
        }))
    }

    #[tracing::instrument(skip_all)]
    async fn invoke_function(
        &self,
        request: Request<pb::InvokeFunctionRequest>,
    ) -> Result<Response<pb::InvokeFunctionResponse>, Status> {
        let req = request.into_inner();
        let app = parse_app(&req.app_name)?;
        let view = self.fresh().await?;
        let state = find_app(&view, &app)?;
        let function = find_function(state, &req.function_name)?;
        match &function.trigger {
            Trigger::Timer(_) => {}
            Trigger::RabbitMq(t) => {
                return Err(Status::invalid_argument(format!(
                    "function `{}` has a RabbitMQ trigger: publish a message to queue `{}` \
                     (or POST /admin/functions/{} with the app's master key and {{\"input\": \"…\"}})",
                    function.name, t.queue_name, function.name
                )))
            }
            Trigger::Http(_) => {
                return Err(Status::invalid_argument(format!(
                    "function `{}` has an HTTP trigger: call its URL (strom fn list shows it)",
                    function.name
                )))
            }
            Trigger::Unsupported { binding_type } => {
                return Err(Status::failed_precondition(format!(
                    "function `{}`'s trigger ({binding_type}) is not supported on this cluster",
                    function.name
                )))
            }
        }
        let batch =
            crate::scheduler::app_requirements(&state.settings).is_ok_and(|r| r.scale_to_zero);
        let placed: u32 = view
            .state
            .placements
            .get(&app)
            .map_or(0, |p| p.values().sum());
        if batch && placed == 0 {
            return Err(Status::failed_precondition(format!(
                "app `{app}` scales to zero (STROM_SCALE_TO_ZERO) and has no instance now: its \
                 instances start for its timer runs only; set STROM_SCALE_TO_ZERO=false to run it on demand"
            )));
        }
        let timer = TimerId {
            app: app.clone(),
            function: function.name.clone(),
        };
        let id = strom_proto::ids::new_invocation_id();
        let run = crate::timer_service::manual_dispatch(&view.state, &timer, id.clone(), now_ms())
            .ok_or_else(|| Status::not_found(format!("no timer function {timer}")))?;
        let dispatcher = self.node.duties.timers.get().ok_or_else(|| {
            Status::unavailable("this node has no function port to run functions through")
        })?;
        tracing::info!(%timer, invocation_id = %id, "admin invoke");
        let running = dispatcher.dispatch(run, crate::timer_service::always());
        if req.no_wait {
            tokio::spawn(running);
            return Ok(Response::new(pb::InvokeFunctionResponse {
                invocation_id: id,
                ..Default::default()
            }));
        }
        let outcome = running
            .await
            .ok_or_else(|| Status::internal("the run was given up"))?;
        Ok(Response::new(pb::InvokeFunctionResponse {
            invocation_id: id,
            finished: true,
            succeeded: outcome.succeeded,
            error: outcome.error,
            duration_ms: outcome.duration_ms,
        }))
    }

    async fn list_functions(
        &self,
        request: Request<pb::ListFunctionsRequest>,
    ) -> Result<Response<pb::ListFunctionsResponse>, Status> {
        let filter = match request.get_ref().app_name.as_str() {
            "" => None,
            raw => Some(parse_app(raw)?),
        };
        let view = self.fresh().await?;
        let mut functions = Vec::new();
        if let Some(name) = &filter {
            find_app(&view, name)?;
        }
        for app in view.state.apps.values() {
            if filter.as_ref().is_some_and(|f| f != &app.name) {
                continue;
            }
            functions.extend(functions_of(
                &view.state,
                app,
                &app.active().manifest,
                &self.node.config,
            ));
        }
        // Queue triggers' state is the leader's live view (asked only when shown).
        if functions.iter().any(|f| !f.queue_name.is_empty()) {
            let live = self.node.live_workers().await;
            functions = with_queue_status(functions, live.as_ref());
        }
        Ok(Response::new(pb::ListFunctionsResponse {
            functions,
            applied_index: view.applied_index(),
        }))
    }

    async fn get_cluster_status(
        &self,
        request: Request<pb::GetClusterStatusRequest>,
    ) -> Result<Response<pb::GetClusterStatusResponse>, Status> {
        let view = if request.get_ref().stale {
            self.node.read_local()
        } else {
            self.fresh().await?
        };
        let metrics = self.node.raft.metrics().borrow().clone();
        let live = self.node.live_workers().await;
        let membership = metrics.membership_config.membership();
        let voters: std::collections::BTreeSet<u64> = membership.voter_ids().collect();
        let members = membership
            .nodes()
            .map(|(id, node)| {
                let version = live
                    .as_ref()
                    .and_then(|l| l.members.iter().find(|m| m.node_id == *id));
                let matched = live.as_ref().and_then(|l| l.matched.get(id).copied());
                let leader_last = live.as_ref().map(|l| l.last_log_index);
                pb::Member {
                    node_id: *id,
                    address: node.addr.clone(),
                    voter: voters.contains(id),
                    leader: metrics.current_leader == Some(*id),
                    build: version.map(|v| v.build.clone()),
                    protocol: version.map(|v| v.protocol),
                    matched_index: matched,
                    lag: leader_last.zip(matched).map(|(l, m)| l.saturating_sub(m)),
                }
            })
            .collect();
        // Unknown without the leader's view; 0 for a worker it has not heard from.
        let ready_of = |node: u64, app: Option<&AppName>| -> Option<u32> {
            let live = live.as_ref()?;
            let heard = live.workers.iter().find(|w| w.node_id == node).map(|w| {
                w.instances
                    .iter()
                    .filter(|r| r.state == "Ready")
                    .filter(|r| {
                        app.is_none_or(|a| {
                            r.app == a.as_str()
                                && view
                                    .state
                                    .apps
                                    .get(a)
                                    .is_some_and(|s| s.active_version.as_str() == r.version)
                        })
                    })
                    .count() as u32
            });
            Some(heard.unwrap_or(0))
        };
        let workers = view
            .state
            .workers
            .iter()
            .map(|(id, w)| {
                let heard = live
                    .as_ref()
                    .and_then(|l| l.workers.iter().find(|x| x.node_id == *id));
                pb::WorkerStatus {
                    node_id: *id,
                    http_addr: w.info.http_addr.clone(),
                    status: w.status().to_string(),
                    capacity_instances: w.info.capacity.instances,
                    capacity_memory_mb: w.info.capacity.memory_mb,
                    labels: w.info.labels.clone().into_iter().collect(),
                    placed: view
                        .state
                        .placements
                        .values()
                        .filter_map(|p| p.get(id))
                        .sum(),
                    ready: ready_of(*id, None),
                    last_heartbeat_ms: heard.map(|h| h.since_heartbeat_ms as i64),
                    build: heard
                        .map(|h| h.build.clone())
                        .unwrap_or_else(|| w.info.build.clone()),
                    protocol: heard.map(|h| h.protocol),
                }
            })
            .collect();
        let placements = view
            .state
            .apps
            .values()
            .map(|app| pb::AppPlacement {
                app_name: app.name.to_string(),
                desired: crate::scheduler::desired_in(&view.state, app, now_ms()),
                nodes: view
                    .state
                    .placements
                    .get(&app.name)
                    .map(|p| {
                        p.iter()
                            .map(|(node, n)| pb::NodeInstances {
                                node_id: *node,
                                instances: *n,
                                ready: ready_of(*node, Some(&app.name)),
                            })
                            .collect()
                    })
                    .unwrap_or_default(),
            })
            .collect();
        Ok(Response::new(pb::GetClusterStatusResponse {
            cluster_id: view
                .state
                .cluster
                .as_ref()
                .map(|c| c.cluster_id.to_string())
                .unwrap_or_default(),
            node_id: self.node.config.node_id,
            leader_id: metrics.current_leader,
            term: metrics.current_term,
            last_applied_index: metrics.last_applied.map(|l| l.index).unwrap_or(0),
            last_log_index: metrics.last_log_index.unwrap_or(0),
            members,
            app_count: view.state.apps.len() as u32,
            state: server_state_name(metrics.state).to_string(),
            build_version: strom_proto::version::BUILD.to_string(),
            instances: self.instances(live.as_ref(), None),
            workers,
            placements,
            protocol: view.state.protocol(),
            live: live.is_some(),
            timer_runs: view
                .state
                .timer_attempts()
                .map(|(timer, a)| pb::TimerRunInfo {
                    app_name: timer.app.to_string(),
                    function_name: timer.function.clone(),
                    attempt: a.number(),
                    retry_at_ms: a.retry.as_ref().map_or(0, |r| r.retry_at_ms),
                    last_error: a
                        .retry
                        .as_ref()
                        .map(|r| r.error.clone())
                        .unwrap_or_default(),
                    run: Some(pb::TimerRunStatus {
                        invocation_id: a.invocation_id().to_string(),
                        tick_ms: a.run.tick_ms,
                        past_due: a.run.past_due,
                        at_ms: a.run.fired_at_ms,
                        ..Default::default()
                    }),
                })
                .collect(),
            // The leader's checkpointing; this node's own when no leader answers
            // (or the leader has no store configured but this node has).
            checkpoint: live
                .as_ref()
                .and_then(|l| crate::checkpointer::from_report(&l.checkpoint))
                .or_else(|| self.node.checkpoints.admin_status(self.node.config.node_id)),
        }))
    }

    async fn create_checkpoint(
        &self,
        _: Request<pb::CreateCheckpointRequest>,
    ) -> Result<Response<pb::CreateCheckpointResponse>, Status> {
        let Some(settings) = self.node.checkpoints.settings() else {
            return Err(Status::failed_precondition(format!(
                "node {} has no checkpoint store configured: start it with --checkpoint-store \
                 local:DIR or sqlserver:<connection string>",
                self.node.config.node_id
            )));
        };
        let store = settings.store.describe();
        // Everything acknowledged before this call is applied here first.
        self.fresh().await?;
        let started = std::time::Instant::now();
        match self.node.write_checkpoint().await {
            Ok(meta) => Ok(Response::new(pb::CreateCheckpointResponse {
                checkpoint: Some(crate::checkpointer::Written::of(meta).info()),
                store,
                took_ms: started.elapsed().as_millis() as u64,
            })),
            Err(e @ crate::checkpoint::CheckpointError::Stale { .. }) => {
                Err(Status::failed_precondition(e.to_string()))
            }
            Err(e) => Err(Status::unavailable(e.to_string())),
        }
    }

    async fn scale_app(
        &self,
        request: Request<pb::ScaleAppRequest>,
    ) -> Result<Response<pb::ScaleAppResponse>, Status> {
        let tag = WriteTag::of(request.metadata(), "ScaleApp", request.get_ref())?;
        let req = request.into_inner();
        let app = parse_app(&req.name)?;
        if req.instances > MAX_SCALE {
            return Err(Status::invalid_argument(format!(
                "instances: {} is more than the limit of {MAX_SCALE}",
                req.instances
            )));
        }
        let log_index = self
            .commit_tagged(
                tag.as_ref(),
                Command::SetScale {
                    app,
                    instances: req.instances,
                    at_ms: now_ms(),
                },
            )
            .await?
            .index;
        Ok(Response::new(pb::ScaleAppResponse {
            instances: req.instances,
            log_index,
        }))
    }

    async fn list_function_keys(
        &self,
        request: Request<pb::ListFunctionKeysRequest>,
    ) -> Result<Response<pb::ListFunctionKeysResponse>, Status> {
        let req = request.into_inner();
        let app = parse_app(&req.app_name)?;
        let view = self.fresh().await?;
        let state = find_app(&view, &app)?;
        let key = |scope: &str, (name, value): (&String, &String)| pb::FunctionKey {
            name: name.clone(),
            value: value.clone(),
            scope: scope.to_string(),
        };
        let master = key("master", (&"_master".to_string(), &state.keys.master));
        if req.function_name.is_empty() {
            let mut keys: Vec<pb::FunctionKey> =
                state.keys.host.iter().map(|kv| key("host", kv)).collect();
            keys.extend(
                view.state
                    .system_keys
                    .get(&app)
                    .into_iter()
                    .flatten()
                    .map(|kv| key("system", kv)),
            );
            keys.push(master);
            return Ok(Response::new(pb::ListFunctionKeysResponse {
                keys,
                auth_level: String::new(),
            }));
        }
        let f = find_function(state, &req.function_name)?;
        let mut keys: Vec<pb::FunctionKey> = state
            .keys
            .functions
            .get(&f.name)
            .into_iter()
            .flatten()
            .map(|kv| key("function", kv))
            .collect();
        keys.extend(state.keys.host.iter().map(|kv| key("host", kv)));
        keys.push(master);
        let auth_level = match &f.trigger {
            Trigger::Http(h) => h.auth_level.as_str().to_string(),
            _ => String::new(),
        };
        Ok(Response::new(pb::ListFunctionKeysResponse {
            keys,
            auth_level,
        }))
    }

    async fn set_function_key(
        &self,
        request: Request<pb::SetFunctionKeyRequest>,
    ) -> Result<Response<pb::SetFunctionKeyResponse>, Status> {
        let tag = WriteTag::of(request.metadata(), "SetFunctionKey", request.get_ref())?;
        let req = request.into_inner();
        let app = parse_app(&req.app_name)?;
        let scope = key_scope(&req.scope, &req.function_name)?;
        let scope_name = match &scope {
            KeyScope::Master => "master",
            KeyScope::Host => "host",
            KeyScope::Function(_) => "function",
            KeyScope::System => "system",
        };
        let value = (!req.value.is_empty()).then_some(req.value.as_str());
        let (name, value, log_index) = self
            .put_key_tagged(tag.as_ref(), app, scope, &req.name, value)
            .await?;
        Ok(Response::new(pb::SetFunctionKeyResponse {
            key: Some(pb::FunctionKey {
                name,
                value,
                scope: scope_name.to_string(),
            }),
            log_index,
        }))
    }

    async fn delete_function_key(
        &self,
        request: Request<pb::DeleteFunctionKeyRequest>,
    ) -> Result<Response<pb::DeleteFunctionKeyResponse>, Status> {
        let tag = WriteTag::of(request.metadata(), "DeleteFunctionKey", request.get_ref())?;
        let req = request.into_inner();
        let app = parse_app(&req.app_name)?;
        let scope = key_scope(&req.scope, &req.function_name)?;
        let log_index = self
            .delete_key_tagged(tag.as_ref(), app, scope, &req.name)
            .await?;
        Ok(Response::new(pb::DeleteFunctionKeyResponse { log_index }))
    }

    async fn list_invocations(
        &self,
        request: Request<pb::ListInvocationsRequest>,
    ) -> Result<Response<pb::ListInvocationsResponse>, Status> {
        let filter = InvocationFilter::parse(request.get_ref())?;
        filter.check_exists(&self.node.read_local().state)?;
        let (records, unreachable) =
            crate::cluster_invocations::gather(self, &filter.query, filter.node).await;
        Ok(Response::new(pb::ListInvocationsResponse {
            invocations: records
                .iter()
                .map(|(node, r)| invocation_info(*node, r))
                .collect(),
            unreachable: unreachable
                .into_iter()
                .map(|(node_id, error)| pb::NodeProblem { node_id, error })
                .collect(),
        }))
    }

    async fn remove_member(
        &self,
        request: Request<pb::RemoveMemberRequest>,
    ) -> Result<Response<pb::RemoveMemberResponse>, Status> {
        let id = request.get_ref().node_id;
        if id == 0 {
            return Err(Status::invalid_argument("node_id: must be at least 1"));
        }
        let view = self.fresh().await?;
        let is_worker = view.state.workers.contains_key(&id);
        let is_member = self.is_management_member(id);
        // A refused command changes nothing: the membership is checked before the
        // worker is removed.
        if is_member || !is_worker {
            self.node.removal_refused(id).map_err(|e| e.to_status())?;
        }
        if is_worker {
            self.commit(Command::RemoveWorker {
                node: id,
                at_ms: now_ms(),
            })
            .await?;
        }
        let voters = if is_member || !is_worker {
            self.node
                .remove_member(id)
                .await
                .map_err(|e| e.to_status())?
        } else {
            self.node
                .raft
                .metrics()
                .borrow()
                .membership_config
                .membership()
                .voter_ids()
                .collect()
        };
        Ok(Response::new(pb::RemoveMemberResponse {
            voters,
            worker_removed: is_worker,
        }))
    }

    async fn drain_node(
        &self,
        request: Request<pb::DrainNodeRequest>,
    ) -> Result<Response<pb::DrainNodeResponse>, Status> {
        let id = request.get_ref().node_id;
        let view = self.fresh().await?;
        let is_worker = view.state.workers.contains_key(&id);
        if is_worker {
            self.commit(Command::SetWorkerSchedule {
                node: id,
                schedule: WorkerSchedule::Draining,
                at_ms: now_ms(),
            })
            .await?;
        }
        let is_member = self.is_management_member(id);
        let (leader_id, handed_over) = if is_member || !is_worker {
            self.node.drain_node(id).await.map_err(|e| e.to_status())?
        } else {
            (self.node.raft.metrics().borrow().current_leader, false)
        };
        Ok(Response::new(pb::DrainNodeResponse {
            leader_id,
            handed_over,
            worker_draining: is_worker,
        }))
    }

    async fn cordon_node(
        &self,
        request: Request<pb::CordonNodeRequest>,
    ) -> Result<Response<pb::CordonNodeResponse>, Status> {
        let tag = WriteTag::of(request.metadata(), "CordonNode", request.get_ref())?;
        self.set_schedule(
            tag.as_ref(),
            request.get_ref().node_id,
            WorkerSchedule::Cordoned,
        )
        .await
    }

    async fn uncordon_node(
        &self,
        request: Request<pb::CordonNodeRequest>,
    ) -> Result<Response<pb::CordonNodeResponse>, Status> {
        let tag = WriteTag::of(request.metadata(), "UncordonNode", request.get_ref())?;
        self.set_schedule(
            tag.as_ref(),
            request.get_ref().node_id,
            WorkerSchedule::Active,
        )
        .await
    }

    type StreamInvocationsStream = std::pin::Pin<
        Box<dyn futures::Stream<Item = Result<pb::InvocationInfo, Status>> + Send + 'static>,
    >;

    async fn list_deployments(
        &self,
        request: Request<pb::ListDeploymentsRequest>,
    ) -> Result<Response<pb::ListDeploymentsResponse>, Status> {
        let req = request.into_inner();
        let app = parse_app(&req.app_name)?;
        let view = self.fresh().await?;
        let history = view.state.deployments.get(&app);
        if history.is_none() && !view.state.apps.contains_key(&app) {
            return Err(Status::not_found(format!(
                "app `{app}` not found (and has no deployment history)"
            )));
        }
        let now = now_ms();
        let deployments = crate::publishing::history(&app, &view.state, now)
            .into_iter()
            .map(deployment_info)
            .collect();
        Ok(Response::new(pb::ListDeploymentsResponse { deployments }))
    }

    async fn set_deploy_credential(
        &self,
        request: Request<pb::SetDeployCredentialRequest>,
    ) -> Result<Response<pb::SetDeployCredentialResponse>, Status> {
        let tag = WriteTag::of(request.metadata(), "SetDeployCredential", request.get_ref())?;
        let req = request.into_inner();
        let app = parse_app(&req.app_name)?;
        if req.rotate && req.delete {
            return Err(Status::invalid_argument(
                "rotate and delete: give one of them",
            ));
        }
        let view = self.fresh().await?;
        find_app(&view, &app)?;
        let user_name = format!("${app}");
        let exists = view
            .state
            .deployments
            .get(&app)
            .is_some_and(|d| d.credential.is_some());
        if !req.rotate && !req.delete && exists {
            return Ok(Response::new(pb::SetDeployCredentialResponse {
                user_name,
                password: String::new(),
                exists: true,
                log_index: view.applied_index(),
            }));
        }
        let password = (!req.delete).then(new_function_key);
        let committed = self
            .commit_tagged(
                tag.as_ref(),
                Command::SetDeployCredential {
                    app,
                    credential: password.as_deref().map(strom_proto::ids::TokenHash::of),
                    at_ms: now_ms(),
                },
            )
            .await?;
        if committed.replayed && password.is_some() {
            // The password is stored hashed: only the lost answer carried it.
            return Err(Status::failed_precondition(
                "the deployment credential was set by this request's first attempt, whose \
                 answer (the only place the password is shown) was lost: make a new one \
                 with rotate",
            ));
        }
        let log_index = committed.index;
        Ok(Response::new(pb::SetDeployCredentialResponse {
            user_name,
            exists: password.is_some(),
            password: password.unwrap_or_default(),
            log_index,
        }))
    }

    async fn open_session(
        &self,
        _request: Request<pb::OpenSessionRequest>,
    ) -> Result<Response<pb::OpenSessionResponse>, Status> {
        if !self.node.read_local().state.allows(Feature::ClientSessions) {
            return Err(Status::failed_precondition(format!(
                "client sessions need cluster protocol {}: some member runs an older build",
                Feature::ClientSessions.since()
            )));
        }
        let id = crate::client_sessions::new_session_id();
        let (log_index, _) = self
            .commit(Command::OpenSession {
                id: id.clone(),
                at_ms: now_ms(),
            })
            .await?;
        Ok(Response::new(pb::OpenSessionResponse {
            session_id: id,
            idle_expiry_seconds: (strom_proto::command::SESSION_IDLE_MS / 1000) as u64,
            max_sequence_ahead: strom_proto::command::SEQ_WINDOW,
            log_index,
        }))
    }

    async fn list_members(
        &self,
        _request: Request<pb::ListMembersRequest>,
    ) -> Result<Response<pb::ListMembersResponse>, Status> {
        let metrics = self.node.raft.metrics().borrow().clone();
        let membership = metrics.membership_config.membership();
        let voters: std::collections::BTreeSet<u64> = membership.voter_ids().collect();
        let members = membership
            .nodes()
            .map(|(id, node)| pb::Member {
                node_id: *id,
                address: node.addr.clone(),
                voter: voters.contains(id),
                leader: metrics.current_leader == Some(*id),
                ..Default::default()
            })
            .collect();
        Ok(Response::new(pb::ListMembersResponse {
            members,
            node_id: metrics.id,
        }))
    }

    async fn stream_invocations(
        &self,
        request: Request<pb::ListInvocationsRequest>,
    ) -> Result<Response<Self::StreamInvocationsStream>, Status> {
        let filter = InvocationFilter::parse(request.get_ref())?;
        filter.check_exists(&self.node.read_local().state)?;
        let follow = request.get_ref().follow;
        let (backlog, unreachable) =
            crate::cluster_invocations::gather(self, &filter.query, filter.node).await;
        let mut seen: std::collections::HashSet<String> =
            backlog.iter().map(|(_, r)| r.id.clone()).collect();
        let (tx, rx) = tokio::sync::mpsc::channel(256);
        let shutdown = self.shutdown.clone();
        let api = self.clone();
        tokio::spawn(async move {
            for (node, r) in &backlog {
                if tx.send(Ok(invocation_info(*node, r))).await.is_err() {
                    return;
                }
            }
            if !follow {
                return;
            }
            // Every node's new records, asked every second (records are written
            // when an invocation ends; one that started up to 10 minutes before
            // the follow began still shows when it ends).
            let mut query = filter.query.clone();
            query.limit = 1000;
            let started = now_ms();
            query.since_ms = Some(query.since_ms.unwrap_or(i64::MIN).max(started - 600_000));
            loop {
                tokio::select! {
                    _ = tx.closed() => return,
                    _ = shutdown.cancelled() => {
                        // A follower is told why the stream ends.
                        let _ = tx
                            .send(Err(Status::unavailable(
                                "the node is stopping: no more invocations from it",
                            )))
                            .await;
                        return;
                    }
                    _ = tokio::time::sleep(std::time::Duration::from_secs(1)) => {}
                }
                let (records, _) =
                    crate::cluster_invocations::gather(&api, &query, filter.node).await;
                for (node, r) in records {
                    if !seen.insert(r.id.clone()) {
                        continue;
                    }
                    if tx.send(Ok(invocation_info(node, &r))).await.is_err() {
                        return;
                    }
                }
                if seen.len() > 100_000 {
                    // Bounded: older ids fall out of the window anyway.
                    seen.clear();
                    query.since_ms = Some(now_ms() - 60_000);
                }
            }
        });
        let mut response = Response::new(Box::pin(tokio_stream::wrappers::ReceiverStream::new(rx))
            as Self::StreamInvocationsStream);
        // Workers that could not be asked, before the first record: the client
        // names them (`x-strom-unreachable`, JSON `[[node, "why"], …]`, ASCII).
        if !unreachable.is_empty() {
            let text: String = serde_json::to_string(&unreachable)
                .unwrap_or_default()
                .chars()
                .map(|c| {
                    if c.is_ascii() && !c.is_ascii_control() {
                        c
                    } else {
                        '?'
                    }
                })
                .collect();
            if let Ok(v) = text.parse() {
                response.metadata_mut().insert(UNREACHABLE_METADATA, v);
            }
        }
        Ok(response)
    }
}

/// Initial metadata of `StreamInvocations`: the workers that could not be asked.
pub const UNREACHABLE_METADATA: &str = "x-strom-unreachable";

struct InvocationFilter {
    query: strom_proto::invocations::Query,
    node: Option<u64>,
}

impl InvocationFilter {
    /// An app or function that does not exist is NOT_FOUND, not an empty answer.
    fn check_exists(&self, state: &crate::cluster_state::ClusterState) -> Result<(), Status> {
        let Some(app) = &self.query.app else {
            return Ok(());
        };
        let Some(found) = state.apps.get(app) else {
            return Err(Status::not_found(format!("app `{app}` not found")));
        };
        if let Some(function) = &self.query.function {
            let known = found
                .active()
                .manifest
                .functions
                .iter()
                .any(|f| &f.name == function);
            if !known {
                return Err(Status::not_found(format!(
                    "function `{function}` not found in app `{app}`"
                )));
            }
        }
        if let Some(node) = self.node {
            if !state.workers.contains_key(&node) {
                return Err(Status::not_found(format!(
                    "node {node} is not a worker of this cluster"
                )));
            }
        }
        Ok(())
    }

    fn parse(req: &pb::ListInvocationsRequest) -> Result<Self, Status> {
        let app = match req.app_name.as_str() {
            "" => None,
            raw => Some(parse_app(raw)?),
        };
        let function = (!req.function_name.is_empty()).then(|| req.function_name.clone());
        if function.is_some() && app.is_none() {
            return Err(Status::invalid_argument("function_name needs app_name"));
        }
        let limit = match req.limit {
            None => 100,
            Some(n) => (n as usize).min(10_000),
        };
        let status = (!req.status.is_empty()).then(|| req.status.clone());
        if let Some(s) = &status {
            strom_proto::invocations::Query::check_status(s).map_err(Status::invalid_argument)?;
        }
        Ok(InvocationFilter {
            query: strom_proto::invocations::Query {
                app,
                function,
                status,
                since_ms: req.since_ms,
                id: (!req.invocation_id.is_empty()).then(|| req.invocation_id.clone()),
                limit,
            },
            node: req.node_id.filter(|n| *n != 0),
        })
    }
}

fn invocation_info(node_id: u64, r: &InvocationRecord) -> pb::InvocationInfo {
    pb::InvocationInfo {
        node_id,
        id: r.id.clone(),
        app_name: r.app.to_string(),
        function_name: r.function.clone(),
        instance_id: r.instance_id.clone(),
        started_at_ms: r.started_at_ms,
        duration_us: r.duration_us,
        status: r.status.as_str().to_string(),
        http_status: r.http_status as u32,
        error: r.error.clone().unwrap_or_default(),
        trigger: r.trigger.to_string(),
        logs: r
            .logs
            .iter()
            .map(|l| pb::InvocationLog {
                source: l.source.clone(),
                text: l.text.clone(),
            })
            .collect(),
    }
}

fn deployment_info(d: crate::publishing::DeploymentView) -> pb::Deployment {
    pb::Deployment {
        id: d.id,
        status: d.status.into(),
        status_text: d.status_text,
        author: d.author,
        deployer: d.deployer,
        message: d.message,
        received_time: d.received_time.unwrap_or_default(),
        end_time: d.end_time.unwrap_or_default(),
        last_success_end_time: d.last_success_end_time.unwrap_or_default(),
        complete: d.complete,
        active: d.active,
        version_id: d.version.unwrap_or_default(),
        errors: d.errors,
        node_id: d.node,
        size_bytes: d.size_bytes,
    }
}

fn too_large(limit: u64) -> Status {
    validation_status(&[ManifestError::new(
        "(package)",
        "",
        format!("the package exceeds the upload limit of {limit} bytes"),
    )])
}

/// Settings that timer schedules refer to (`"schedule": "%NAME%"`) must hold a
/// valid NCRONTAB schedule, or the timer would silently never run.
fn check_schedule_settings(
    manifest: &AppManifest,
    set: &std::collections::HashMap<String, String>,
    after: &BTreeMap<String, String>,
) -> Result<(), String> {
    let mut problems = Vec::new();
    if let Some(p) = strom_proto::manifest::app::scale_to_zero_problem(&manifest.functions, after) {
        problems.push(format!("STROM_SCALE_TO_ZERO: {p}"));
    }
    let has_timers = manifest
        .functions
        .iter()
        .any(|f| matches!(f.trigger, Trigger::Timer(_)));
    let zone_changes = set.keys().any(|k| {
        strom_proto::timers::TIME_ZONE_SETTINGS
            .iter()
            .any(|z| z.eq_ignore_ascii_case(k))
    });
    // The zone the timers would use with the settings as they will be.
    if has_timers && zone_changes {
        if let Err(e) = strom_proto::timers::time_zone(after) {
            problems.push(format!("{e} (the time zone of this app's timers)"));
        }
    }
    for f in &manifest.functions {
        let Trigger::Timer(t) = &f.trigger else {
            continue;
        };
        let Some(name) = t
            .schedule
            .strip_prefix('%')
            .and_then(|s| s.strip_suffix('%'))
        else {
            continue;
        };
        if let Some(value) = set.get(name) {
            if let Err(e) = Schedule::parse(value) {
                problems.push(format!(
                    "setting `{name}` is the schedule of timer function `{}`: {e}",
                    f.name
                ));
            }
        }
    }
    if problems.is_empty() {
        Ok(())
    } else {
        Err(problems.join("; "))
    }
}

impl AdminApi {
    /// The RabbitMQ connections of the app's active version that read a setting
    /// this change touches must still name a broker with the settings as they
    /// will be (`after`): refused, the change changes nothing, where accepted it
    /// would leave a trigger that cannot connect or an output that fails every
    /// invocation. Outputs are read from the package (not in the replicated
    /// manifest); a member without the package's blob checks the triggers only.
    async fn check_rabbitmq_settings(
        &self,
        app: &AppState,
        touched: &[&str],
        after: &BTreeMap<String, String>,
    ) -> Result<(), String> {
        use strom_proto::manifest::rabbitmq::{is_output_type, outputs_of, Connection};
        let reads_touched = |c: &Connection| {
            c.settings()
                .iter()
                .any(|s| touched.iter().any(|t| t.eq_ignore_ascii_case(s)))
        };
        let mut problems = Vec::new();
        let manifest = &app.active().manifest;
        for f in &manifest.functions {
            if let Trigger::RabbitMq(t) = &f.trigger {
                if reads_touched(&t.connection) {
                    if let Err((field, why)) = t.connection.resolve(after) {
                        problems.push(format!(
                            "function `{}`: its rabbitMQTrigger's {field}: {why}",
                            f.name
                        ));
                    }
                }
            }
        }
        let with_outputs: Vec<String> = manifest
            .functions
            .iter()
            .filter(|f| f.bindings.iter().any(|b| is_output_type(&b.binding_type)))
            .map(|f| f.name.clone())
            .collect();
        if !with_outputs.is_empty() {
            if let Ok(bytes) = self.node.blobs.get(&app.active().id).await {
                let limits = self.node.config.package_limits.clone();
                let outputs = tokio::task::spawn_blocking(move || {
                    let pkg = AppPackage::from_zip_bytes(&bytes, &limits).ok()?;
                    Some(
                        with_outputs
                            .into_iter()
                            .filter_map(|f| {
                                let json = pkg.function_jsons.get(&f)?;
                                Some((f.clone(), outputs_of(&f, json).ok()?))
                            })
                            .collect::<Vec<_>>(),
                    )
                })
                .await
                .ok()
                .flatten()
                .unwrap_or_default();
                for (function, bindings) in outputs {
                    for b in bindings.iter().filter(|b| reads_touched(&b.connection)) {
                        if let Err((field, why)) = b.connection.resolve(after) {
                            problems.push(format!(
                                "function `{function}`: its rabbitMQ output `{}`'s {field}: {why}",
                                b.binding_name
                            ));
                        }
                    }
                }
            }
        }
        if problems.is_empty() {
            Ok(())
        } else {
            Err(problems.join("; "))
        }
    }
}

/// App setting values become environment variables: no NUL.
fn check_setting_value(key: &str, value: &str) -> Result<(), String> {
    if value.contains('\0') {
        return Err(format!("setting `{key}`: the value must not contain NUL"));
    }
    // Settings the scheduler reads are checked before they are committed.
    if [
        crate::scheduler::MEMORY_SETTING,
        crate::scheduler::LABELS_SETTING,
        crate::scheduler::SCALE_TO_ZERO_SETTING,
        crate::scheduler::IDLE_STOP_SETTING,
        crate::scheduler::MAX_SCALE_SETTING,
        crate::scheduler::TARGET_QUEUE_LENGTH_SETTING,
        crate::scheduler::SCALE_DOWN_COOLDOWN_SETTING,
    ]
    .contains(&key)
    {
        crate::scheduler::app_requirements(&BTreeMap::from([(
            key.to_string(),
            value.to_string(),
        )]))?;
    }
    strom_proto::runtime_settings::RuntimeSettings::check(key, value)?;
    Ok(())
}

/// The key collection a request names: `function` (the default) needs the function.
fn key_scope(scope: &str, function: &str) -> Result<KeyScope, Status> {
    match scope {
        "" | "function" if function.is_empty() => Err(Status::invalid_argument(
            "a function key needs the function's name (or scope `host` or `master`)",
        )),
        "" | "function" => Ok(KeyScope::Function(function.to_string())),
        "host" => Ok(KeyScope::Host),
        "master" => Ok(KeyScope::Master),
        "system" => Ok(KeyScope::System),
        other => Err(Status::invalid_argument(format!(
            "key scope `{other}` is not one of function, host, master, system"
        ))),
    }
}

/// App setting names become environment variables: no `=`, no NUL, not empty.
/// Whitespace and control characters make a name no shell, `.env` file or
/// Azure App Settings takes.
fn check_new_setting_name(key: &str) -> Result<(), String> {
    match key.chars().find(|c| c.is_whitespace() || c.is_control()) {
        Some(c) => Err(format!(
            "setting name `{}` must not contain whitespace or control characters (found {c:?})",
            key.escape_debug()
        )),
        None => Ok(()),
    }
}

fn check_setting_name(key: &str) -> Result<(), String> {
    if key.is_empty() {
        return Err("setting name is empty".into());
    }
    if key.contains('=') || key.contains('\0') {
        return Err(format!("setting name `{key}` must not contain `=` or NUL"));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn new_setting_names_take_no_whitespace_or_control_characters() {
        for good in [
            "GREETING",
            "AzureWebJobs.hello.Disabled",
            "ConnectionStrings:Db",
            "a-b_c",
        ] {
            assert_eq!(check_new_setting_name(good), Ok(()), "{good}");
        }
        for bad in ["bad name", "tab\there", "line\nbreak", "bell\u{7}"] {
            let e = check_new_setting_name(bad).unwrap_err();
            assert!(e.contains("whitespace or control"), "{bad}: {e}");
        }
        assert!(check_setting_name("a=b").is_err());
    }
}
