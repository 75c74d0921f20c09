//! The gRPC admin API (`strom.admin.v1.AdminService`): validates input at the edge,
//! turns writes into [`Command`]s committed through Raft, and answers reads from
//! the applied state after a linearizable read barrier.
//!
//! Error mapping: bad input → INVALID_ARGUMENT (validation errors in the status
//! details as `ValidationErrors`), unknown app/version → NOT_FOUND, a conflict with
//! another app → FAILED_PRECONDITION, not the leader / no quorum → UNAVAILABLE.

use std::collections::BTreeMap;
use std::sync::Arc;

use prost::Message;
use strom_proto::admin_v1 as pb;
use strom_proto::admin_v1::admin_service_server::AdminService;
use strom_proto::command::{Command, CommandResult, DeployVersion, InitialKeys, Rejection};
use strom_proto::ids::{AppName, VersionId};
use strom_proto::manifest::{
    is_function_disabled, validate_app, AppManifest, AppPackage, FunctionManifest, ManifestError,
    Schedule, Trigger,
};
use tonic::{Request, Response, Status, Streaming};

use crate::cluster_state::AppState;
use crate::management::{new_function_key, now_ms, ManagementNode, ProposeError};
use crate::state_machine::StateView;

pub struct AdminApi {
    node: ManagementNode,
}

impl AdminApi {
    pub fn new(node: ManagementNode) -> Self {
        AdminApi { node }
    }

    async fn fresh(&self) -> Result<Arc<StateView>, Status> {
        self.node.read_linearizable().await.map_err(propose_status)
    }

    async fn commit(&self, command: Command) -> Result<(u64, CommandResult), Status> {
        let (index, result) = self.node.propose(command).await.map_err(propose_status)?;
        if let CommandResult::Rejected(r) = &result {
            return Err(rejection_status(r));
        }
        Ok((index, result))
    }

    /// Validate a package, store it, and commit it as the app's active version.
    /// Used by the gRPC upload and in-process by `strom up`.
    pub async fn deploy_bytes(
        &self,
        app: AppName,
        bytes: Vec<u8>,
    ) -> Result<pb::DeployAppResponse, Status> {
        let limits = self.node.config.package_limits.clone();
        if bytes.is_empty() {
            return Err(validation_status(&[ManifestError::new(
                "(package)",
                "",
                "the package is empty",
            )]));
        }

        let settings = self
            .node
            .read_local()
            .state
            .apps
            .get(&app)
            .map(|a| a.settings.clone())
            .unwrap_or_default();
        let bytes = Arc::new(bytes);
        let to_check = bytes.clone();
        let manifest = tokio::task::spawn_blocking(move || {
            let pkg = AppPackage::from_zip_bytes(&to_check, &limits)
                .map_err(|e| vec![ManifestError::from(e)])?;
            validate_app(&pkg, &settings)
        })
        .await
        .map_err(|e| Status::internal(format!("validation task failed: {e}")))?
        .map_err(|errors| validation_status(&errors))?;

        let size_bytes = bytes.len() as u64;
        let version = self
            .node
            .blobs
            .put(bytes)
            .await
            .map_err(|e| Status::internal(e.to_string()))?;
        let initial_keys = InitialKeys {
            master: new_function_key(),
            host_default: new_function_key(),
            function_defaults: manifest
                .functions
                .iter()
                .map(|f| (f.name.clone(), new_function_key()))
                .collect(),
        };
        let (log_index, result) = self
            .commit(Command::DeployVersion(Box::new(DeployVersion {
                app: app.clone(),
                version: version.clone(),
                size_bytes,
                manifest: manifest.clone(),
                at_ms: now_ms(),
                initial_keys,
            })))
            .await?;
        tracing::info!(%app, version = version.short(), log_index, "deployed");
        let view = self.node.read_local();
        let state = find_app(&view, &app)?;
        Ok(pb::DeployAppResponse {
            app_name: app.to_string(),
            version_id: version.to_string(),
            changed: result == CommandResult::Applied,
            functions: functions_of(state, &manifest, self.http_base()),
            log_index,
        })
    }

    fn http_base(&self) -> &str {
        &self.node.config.public_http_url
    }
}

fn propose_status(e: ProposeError) -> Status {
    Status::unavailable(e.to_string())
}

fn rejection_status(r: &Rejection) -> Status {
    match r {
        Rejection::AppNotFound { .. }
        | Rejection::VersionNotFound { .. }
        | Rejection::FunctionNotFound { .. }
        | Rejection::KeyNotFound { .. } => Status::not_found(r.to_string()),
        Rejection::RouteConflict { .. } => Status::failed_precondition(r.to_string()),
        Rejection::NotInitialized => Status::unavailable(r.to_string()),
        Rejection::AlreadyInitialized | Rejection::MasterKeyIsPermanent => {
            Status::failed_precondition(r.to_string())
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
    Status::with_details(
        tonic::Code::InvalidArgument,
        message,
        details.encode_to_vec().into(),
    )
}

fn parse_app(name: &str) -> Result<AppName, Status> {
    AppName::parse(name).map_err(|e| Status::invalid_argument(e.to_string()))
}

fn find_app<'a>(view: &'a StateView, name: &AppName) -> Result<&'a AppState, Status> {
    view.state
        .apps
        .get(name)
        .ok_or_else(|| Status::not_found(format!("app `{name}` not found")))
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

pub fn function_info(
    app: &AppName,
    manifest: &AppManifest,
    f: &FunctionManifest,
    settings: &BTreeMap<String, String>,
    http_base: &str,
) -> pb::FunctionInfo {
    let mut info = pb::FunctionInfo {
        app_name: app.to_string(),
        name: f.name.clone(),
        supported: f.unsupported.is_empty(),
        unsupported_reasons: f.unsupported.clone(),
        disabled: is_function_disabled(settings, &f.name),
        ..Default::default()
    };
    match &f.trigger {
        Trigger::Http(h) => {
            info.trigger_type = "httpTrigger".into();
            info.auth_level = format!("{:?}", h.auth_level).to_ascii_lowercase();
            info.methods = h.methods.clone();
            info.route = h.route.clone();
            info.url = format!("{http_base}{}", h.url_path(&manifest.host.route_prefix));
        }
        Trigger::Timer(t) => {
            info.trigger_type = "timerTrigger".into();
            info.schedule = t.schedule.clone();
        }
        Trigger::Unsupported { binding_type } => {
            info.trigger_type = binding_type.clone();
        }
    }
    info
}

fn functions_of(app: &AppState, manifest: &AppManifest, http_base: &str) -> Vec<pb::FunctionInfo> {
    manifest
        .functions
        .iter()
        .map(|f| function_info(&app.name, manifest, f, &app.settings, http_base))
        .collect()
}

fn summary(app: &AppState) -> pb::AppSummary {
    pb::AppSummary {
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
        let mut stream = request.into_inner();
        let mut name: Option<AppName> = None;
        let mut bytes = Vec::new();
        while let Some(chunk) = stream.message().await? {
            if name.is_none() {
                name = Some(parse_app(&chunk.app_name)?);
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
        self.deploy_bytes(app, bytes).await.map(Response::new)
    }

    async fn list_apps(
        &self,
        _request: Request<pb::ListAppsRequest>,
    ) -> Result<Response<pb::ListAppsResponse>, Status> {
        let view = self.fresh().await?;
        Ok(Response::new(pb::ListAppsResponse {
            apps: view.state.apps.values().map(summary).collect(),
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
        Ok(Response::new(pb::GetAppResponse {
            app: Some(summary(app)),
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
            functions: functions_of(app, manifest, self.http_base()),
            applied_index: view.applied_index(),
            route_prefix: manifest.host.route_prefix.clone(),
        }))
    }

    async fn delete_app(
        &self,
        request: Request<pb::DeleteAppRequest>,
    ) -> Result<Response<pb::DeleteAppResponse>, Status> {
        let app = parse_app(&request.get_ref().name)?;
        let (log_index, _) = self
            .commit(Command::DeleteApp {
                app,
                at_ms: now_ms(),
            })
            .await?;
        Ok(Response::new(pb::DeleteAppResponse { log_index }))
    }

    async fn set_app_settings(
        &self,
        request: Request<pb::SetAppSettingsRequest>,
    ) -> Result<Response<pb::SetAppSettingsResponse>, Status> {
        let req = request.into_inner();
        let app = parse_app(&req.name)?;
        let mut problems = Vec::new();
        for key in req.set.keys().chain(req.remove.iter()) {
            if let Err(e) = check_setting_name(key) {
                problems.push(e);
            }
        }
        if !problems.is_empty() {
            return Err(Status::invalid_argument(problems.join("; ")));
        }
        if req.set.is_empty() && req.remove.is_empty() {
            return Err(Status::invalid_argument("nothing to set or remove"));
        }
        if let Some(state) = self.node.read_local().state.apps.get(&app) {
            check_schedule_settings(&state.active().manifest, &req.set)
                .map_err(Status::invalid_argument)?;
        }
        let (log_index, _) = self
            .commit(Command::SetAppSettings {
                app: app.clone(),
                set: req.set.into_iter().collect(),
                remove: req.remove,
                at_ms: now_ms(),
            })
            .await?;
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
        let req = request.into_inner();
        let app = parse_app(&req.name)?;
        let view = self.fresh().await?;
        let version = resolve_version(find_app(&view, &app)?, &req.version_id)?;
        let (log_index, _) = self
            .commit(Command::ActivateVersion {
                app: app.clone(),
                version: version.clone(),
                at_ms: now_ms(),
            })
            .await?;
        let view = self.node.read_local();
        let state = find_app(&view, &app)?;
        Ok(Response::new(pb::RollbackAppResponse {
            version_id: version.to_string(),
            functions: functions_of(state, &state.active().manifest, self.http_base()),
            log_index,
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
            functions.extend(functions_of(app, &app.active().manifest, self.http_base()));
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
        let membership = metrics.membership_config.membership();
        let voters: std::collections::BTreeSet<u64> = membership.voter_ids().collect();
        let members = membership
            .nodes()
            .map(|(id, node)| pb::Member {
                node_id: *id,
                address: node.addr.clone(),
                voter: voters.contains(id),
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
            leader_id: metrics.current_leader.unwrap_or(0),
            term: metrics.current_term,
            last_applied_index: metrics.last_applied.map(|l| l.index).unwrap_or(0),
            last_log_index: metrics.last_log_index.unwrap_or(0),
            members,
            app_count: view.state.apps.len() as u32,
            state: format!("{:?}", metrics.state).to_ascii_lowercase(),
            build_version: env!("CARGO_PKG_VERSION").to_string(),
        }))
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
) -> Result<(), String> {
    let mut problems = Vec::new();
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

/// App setting names become environment variables: no `=`, no NUL, not empty.
fn check_setting_name(key: &str) -> Result<(), String> {
    if key.is_empty() {
        return Err("setting name is empty".into());
    }
    if key.contains('=') || key.contains('\0') {
        return Err(format!("setting name `{key}` must not contain `=` or NUL"));
    }
    Ok(())
}
