//! The one deploy path: `strom app deploy` (gRPC `DeployApp`), `strom up` and the
//! zip deploy endpoint all come through [`AdminApi::deploy`]. It records the
//! deployment in the replicated history (once the cluster speaks protocol 8),
//! validates the package, stores and replicates it, commits the version, and —
//! for a zip deploy — waits until the new version serves on every worker it is
//! placed on. A deploy that fails before its commit changes no version; one whose
//! version never becomes ready gives the app back the version that served before
//! (make-before-break kept it serving all along).
//!
//! The deployment runs in its own task: a caller that goes away (a client
//! disconnecting from a synchronous zip deploy) does not leave it half done.

use std::collections::BTreeMap;
use std::time::Duration;

use strom_proto::admin_v1 as pb;
use strom_proto::command::{Command, DeployStatus, DeploymentStart, DeploymentUpdate, Rejection};
use strom_proto::ids::{AppName, VersionId};
use strom_proto::manifest::ManifestError;
use strom_proto::version::Feature;
use tonic::Status;

use crate::admin_service::{rejection_status, validation_status, AdminApi};
use crate::management::now_ms;

/// How long a zip deploy waits for its version's instances to be ready.
pub const READY_TIMEOUT: Duration = Duration::from_secs(300);
/// An unfinished deployment counts as abandoned once its deadline passes (its
/// node stopped or was cut off): the next deployment of the app may then begin,
/// and the abandoned one can no longer commit its version. The deadline is this
/// long after it was received (checking, storing and committing the package)…
pub const COMMIT_DEADLINE: Duration = Duration::from_secs(300);
/// …and, once its version is committed, this long for its instances to be ready
/// (a zip deploy: [`READY_TIMEOUT`] and a margin). A node that restarts fails its
/// own unfinished deployments at once.
pub const SERVING_DEADLINE: Duration = Duration::from_secs(360);
/// How long a deployed app may have no placement before the deploy says so and
/// ends (scaled to zero, or no worker can take it).
const PLACEMENT_GRACE: Duration = Duration::from_secs(3);

/// Who deploys, and why (Kudu's `author`, `deployer`, `message`).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct DeployMeta {
    pub author: String,
    pub deployer: String,
    pub message: String,
}

impl DeployMeta {
    /// A deploy through the admin API (`strom app deploy`, `strom up`).
    pub fn cli() -> DeployMeta {
        DeployMeta {
            author: String::new(),
            deployer: "strom".into(),
            message: String::new(),
        }
    }
}

/// When the deploy is done.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DeployWait {
    /// Once the version is committed (the admin API's promise: instances start in
    /// the background, make-before-break).
    Committed,
    /// Once the version serves on every worker it is placed on (zip deploy).
    Serving,
}

#[derive(Debug, Clone)]
pub struct DeployRequest {
    pub app: AppName,
    pub bytes: Vec<u8>,
    pub settings: BTreeMap<String, String>,
    pub meta: DeployMeta,
    pub wait: DeployWait,
    /// The client session's write this deploy is (its version commit is applied
    /// once; a retry is answered from the first).
    pub tag: Option<crate::client_sessions::WriteTag>,
}

/// Why a deploy did not succeed.
#[derive(Debug, Clone)]
pub enum DeployError {
    /// The package is not a valid app: every error, with file and JSON path.
    Invalid(Vec<ManifestError>),
    /// Another deployment of the app is in progress.
    Busy { id: String },
    /// The version was committed but did not become ready; the app has the
    /// version that served before again.
    NotReady(String),
    /// Anything else (no quorum, storage), as the admin API answers it.
    Status(Status),
}

impl DeployError {
    pub fn to_status(&self) -> Status {
        match self {
            DeployError::Invalid(errors) => validation_status(errors),
            DeployError::Busy { id } => Status::aborted(format!(
                "deployment {id} of this app is in progress (one deployment of an app at a time); \
                 try again when it ends (strom app deployments)"
            )),
            DeployError::NotReady(why) => Status::failed_precondition(why.clone()),
            DeployError::Status(s) => s.clone(),
        }
    }

    /// One line for the history.
    pub fn describe(&self) -> String {
        match self {
            DeployError::Invalid(errors) => format!(
                "the app is invalid ({} error{})",
                errors.len(),
                if errors.len() == 1 { "" } else { "s" }
            ),
            DeployError::Busy { id } => format!("deployment {id} is in progress"),
            DeployError::NotReady(why) => why.clone(),
            DeployError::Status(s) => s.message().to_string(),
        }
    }
}

/// A deployment that was received and recorded.
#[derive(Debug)]
pub struct Started {
    /// Its id in the history (`None` below protocol 8: no history yet).
    pub id: Option<String>,
    /// The running deployment (dropping the handle does not stop it).
    run: tokio::task::JoinHandle<Result<pb::DeployAppResponse, DeployError>>,
}

impl Started {
    /// Wait for the outcome.
    pub async fn finished(self) -> Result<pb::DeployAppResponse, DeployError> {
        self.run.await.unwrap_or_else(|e| {
            Err(DeployError::Status(Status::internal(format!(
                "the deployment task failed: {e}"
            ))))
        })
    }
}

/// A new deployment id: 32 hex digits, as Kudu's.
pub fn new_deployment_id() -> String {
    uuid::Uuid::new_v4().simple().to_string()
}

impl AdminApi {
    /// Deploy and wait for the outcome.
    pub async fn deploy(
        &self,
        request: DeployRequest,
    ) -> Result<pb::DeployAppResponse, DeployError> {
        self.start_deploy(request).await?.finished().await
    }

    /// Record the deployment (refused with [`DeployError::Busy`] while another of
    /// the app runs) and start it in its own task.
    pub async fn start_deploy(&self, request: DeployRequest) -> Result<Started, DeployError> {
        let view = self.node.read_local();
        let id = if view.state.allows(Feature::Publishing) {
            let id = new_deployment_id();
            let at_ms = now_ms();
            let begin = Command::BeginDeployment(Box::new(DeploymentStart {
                app: request.app.clone(),
                id: id.clone(),
                author: request.meta.author.clone(),
                deployer: request.meta.deployer.clone(),
                message: request.meta.message.clone(),
                node: self.node.config.node_id,
                size_bytes: request.bytes.len() as u64,
                deadline_ms: at_ms + COMMIT_DEADLINE.as_millis() as i64,
                at_ms,
            }));
            match self.node.propose(begin).await {
                Ok((_, strom_proto::command::CommandResult::Rejected(r))) => {
                    return Err(match r {
                        Rejection::DeploymentInProgress { id, .. } => DeployError::Busy { id },
                        other => DeployError::Status(rejection_status(&other)),
                    })
                }
                Ok((index, _)) => {
                    // Answers read this node's state: let it show the deployment.
                    let _ = self.node.applied(index).await;
                    Some(id)
                }
                Err(e) => {
                    // The begin may still commit (a write whose outcome is unknown):
                    // end it then, so the next deployment need not wait.
                    let (api, app) = (self.clone(), request.app.clone());
                    let why = format!("it could not begin: {}", e.to_status().message());
                    tokio::spawn(async move {
                        let failed = Step::new(DeployStatus::Failed, why, None);
                        api.finish(&Some(id), &app, failed).await;
                    });
                    return Err(DeployError::Status(e.to_status()));
                }
            }
        } else {
            None
        };
        let api = self.clone();
        let run_id = id.clone();
        let run = tokio::spawn(async move { api.run_deployment(run_id, request).await });
        Ok(Started { id, run })
    }

    async fn run_deployment(
        &self,
        id: Option<String>,
        request: DeployRequest,
    ) -> Result<pb::DeployAppResponse, DeployError> {
        let app = request.app.clone();
        let step = Step::new;
        // A deploy answered at its commit is quick: its steps are not recorded
        // (fewer commits before the answer), only its end.
        if request.wait == DeployWait::Serving {
            self.record(
                &id,
                &app,
                step(
                    DeployStatus::Building,
                    "checking and validating the package".into(),
                    None,
                ),
            )
            .await;
        }
        let before = self
            .node
            .read_local()
            .state
            .apps
            .get(&app)
            .map(|a| a.active_version.clone());
        let deployed = match self
            .commit_package(
                app.clone(),
                request.bytes,
                request.settings,
                id.as_deref(),
                request.tag.as_ref(),
            )
            .await
        {
            Ok(d) => d,
            Err(e) => {
                let errors = match &e {
                    DeployError::Invalid(errors) => errors.iter().map(|e| e.to_string()).collect(),
                    _ => Vec::new(),
                };
                let mut failed = step(DeployStatus::Failed, e.describe(), None);
                failed.errors = errors;
                self.finish(&id, &app, failed).await;
                return Err(e);
            }
        };
        let version = VersionId::parse(&deployed.version_id).ok();
        let short = version
            .as_ref()
            .map(|v| v.short().to_string())
            .unwrap_or_default();
        if request.wait == DeployWait::Committed {
            self.finish(
                &id,
                &app,
                step(
                    DeployStatus::Success,
                    format!("version {short} committed; its instances start in the background"),
                    version,
                ),
            )
            .await;
            return Ok(deployed);
        }
        let Some(version) = version else {
            let text = format!("version {} committed", deployed.version_id);
            self.finish(&id, &app, step(DeployStatus::Success, text, None))
                .await;
            return Ok(deployed);
        };
        // The version to give back if this one fails is remembered with the step,
        // so that a restart of this node can give it back too.
        let restore = before.filter(|b| b != &version);
        let mut deploying = step(
            DeployStatus::Deploying,
            format!("version {short} committed; waiting for its instances to be ready"),
            Some(version.clone()),
        );
        deploying.restore = restore.clone();
        deploying.deadline_ms = Some(now_ms() + SERVING_DEADLINE.as_millis() as i64);
        self.record(&id, &app, deploying).await;
        match self.wait_serving(&app, &version).await {
            Ok(text) => {
                self.finish(&id, &app, step(DeployStatus::Success, text, Some(version)))
                    .await;
                Ok(deployed)
            }
            Err(why) => {
                let mut failed = step(DeployStatus::Failed, why.clone(), Some(version.clone()));
                // The version that served before is active again (only if this
                // deployment's version still is: a rollback meanwhile wins).
                failed.restore = restore;
                if failed.restore.is_some() {
                    failed
                        .text
                        .push_str("; the version that served before is active again");
                }
                let text = failed.text.clone();
                self.finish(&id, &app, failed).await;
                Err(DeployError::NotReady(text))
            }
        }
    }

    /// Commit a step of a deployment (nothing without a history); `false` when it
    /// could not be committed for now (no quorum): logged, and the deployment goes
    /// on. A refusal (the record ended or is gone) counts as recorded: there is
    /// nothing to retry.
    async fn record(&self, id: &Option<String>, app: &AppName, step: Step) -> bool {
        let Some(id) = id else { return true };
        let command = Command::UpdateDeployment(Box::new(DeploymentUpdate {
            app: app.clone(),
            id: id.clone(),
            status: step.status,
            status_text: step.text,
            version: step.version,
            errors: step.errors,
            restore: step.restore,
            deadline_ms: step.deadline_ms,
            at_ms: now_ms(),
        }));
        match self.commit(command).await {
            Ok(_) => true,
            Err(e) if matches!(e.code(), tonic::Code::Unavailable | tonic::Code::Internal) => {
                tracing::warn!(%app, deployment = %id, "recording a deployment step failed: {e}");
                false
            }
            Err(e) => {
                tracing::info!(%app, deployment = %id, "a deployment step was refused: {e}");
                true
            }
        }
    }

    /// Commit a deployment's end. If that fails (no quorum for now), the answer
    /// goes out and the end is committed in the background once it can be (until
    /// the record's deadline), so the next deployment need not wait for it.
    async fn finish(&self, id: &Option<String>, app: &AppName, step: Step) {
        let retry = step.clone();
        if self.record(id, app, step).await {
            return;
        }
        let (api, id, app) = (self.clone(), id.clone(), app.clone());
        tokio::spawn(async move {
            let give_up = tokio::time::Instant::now() + SERVING_DEADLINE;
            let mut pause = Duration::from_millis(500);
            while tokio::time::Instant::now() < give_up && !api.shutdown_requested() {
                tokio::time::sleep(pause).await;
                if api.record(&id, &app, retry.clone()).await {
                    return;
                }
                pause = (pause * 2).min(Duration::from_secs(10));
            }
        });
    }

    /// Deployments this node ran before it restarted can never end: fail them now
    /// (giving back the version that served before, as a failed deployment does).
    /// Those received after `started_ms` are this process's own and go on.
    pub async fn abandon_own_deployments(&self, started_ms: i64) -> Result<usize, Status> {
        let view = self.fresh().await?;
        let me = self.node.config.node_id;
        let stale: Vec<(AppName, crate::deployments::DeploymentRecord)> = view
            .state
            .deployments
            .iter()
            .flat_map(|(app, d)| d.history.iter().map(move |r| (app.clone(), r.clone())))
            .filter(|(_, r)| r.node == me && !r.status.is_complete() && r.received_ms < started_ms)
            .collect();
        for (app, r) in &stale {
            let mut step = Step::new(
                DeployStatus::Failed,
                format!(
                    "node {me} restarted during the deployment{}",
                    if r.restore.is_some() {
                        "; the version that served before is active again"
                    } else {
                        ""
                    }
                ),
                r.version.clone(),
            );
            step.restore = r.restore.clone();
            if !self.record(&Some(r.id.clone()), app, step).await {
                return Err(Status::unavailable("could not commit (no quorum yet)"));
            }
        }
        Ok(stale.len())
    }

    /// Wait until `version` serves on every worker the app is placed on: each has
    /// switched its traffic to a Ready instance of it. `Err` when an instance of
    /// it crash-loops, another version became active, or [`READY_TIMEOUT`] passes.
    async fn wait_serving(&self, app: &AppName, version: &VersionId) -> Result<String, String> {
        let start = tokio::time::Instant::now();
        let short = version.short();
        loop {
            let view = self.node.read_local();
            let Some(state) = view.state.apps.get(app) else {
                return Err(format!(
                    "app `{app}` was deleted while version {short} deployed"
                ));
            };
            if &state.active_version != version {
                return Err(format!(
                    "another version ({}) became active before version {short} served",
                    state.active_version.short()
                ));
            }
            let placed: Vec<u64> = view
                .state
                .placements
                .get(app)
                .into_iter()
                .flatten()
                .filter(|(node, n)| **n > 0 && view.state.workers.get(node).is_some_and(|w| w.up))
                .map(|(node, _)| *node)
                .collect();
            if placed.is_empty() && start.elapsed() >= PLACEMENT_GRACE {
                return Ok(format!(
                    "version {short} is active; no worker runs the app now (scaled to zero, \
                     or no worker can take it): it starts where it is placed"
                ));
            }
            if !placed.is_empty() {
                let live = self.node.live_workers().await;
                let instances = self.instances(live.as_ref(), Some(app));
                let ours = |i: &&pb::InstanceInfo| i.version_id == version.as_str();
                if let Some(bad) = instances
                    .iter()
                    .filter(ours)
                    .find(|i| i.state == "CrashLooping")
                {
                    return Err(format!(
                        "version {short} does not start on node {}: {}",
                        bad.node_id,
                        if bad.last_error.is_empty() {
                            "crash looping"
                        } else {
                            &bad.last_error
                        }
                    ));
                }
                let serving_on = |node: u64| {
                    instances
                        .iter()
                        .filter(ours)
                        .any(|i| i.node_id == node && i.serving)
                };
                if placed.iter().all(|n| serving_on(*n)) {
                    return Ok(format!(
                        "version {short} serves on {} worker{}",
                        placed.len(),
                        if placed.len() == 1 { "" } else { "s" }
                    ));
                }
            }
            if start.elapsed() >= READY_TIMEOUT {
                return Err(format!(
                    "version {short} was not ready within {} s",
                    READY_TIMEOUT.as_secs()
                ));
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }
}

#[derive(Clone)]
struct Step {
    status: DeployStatus,
    text: String,
    version: Option<VersionId>,
    errors: Vec<String>,
    restore: Option<VersionId>,
    deadline_ms: Option<i64>,
}

impl Step {
    fn new(status: DeployStatus, text: String, version: Option<VersionId>) -> Step {
        Step {
            status,
            text,
            version,
            errors: Vec::new(),
            restore: None,
            deadline_ms: None,
        }
    }
}
