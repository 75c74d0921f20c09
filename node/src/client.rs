//! Client commands: talk gRPC to a management node's admin API.

use std::collections::HashMap;
use std::path::Path;

use strom_proto::admin_v1 as pb;
use strom_proto::admin_v1::admin_service_client::AdminServiceClient;
use tonic::metadata::MetadataValue;
use tonic::service::interceptor::InterceptedService;
use tonic::transport::Channel;

use std::sync::Arc;

use crate::endpoints::{Cluster, Deadline, Kind, Progress};

use crate::cli::{AppCommand, ClientArgs, ClusterCommand, FnCommand, NodeCommand, SettingsCommand};
use crate::output::Printer;

/// Upload chunk size.
const CHUNK: usize = 1024 * 1024;

/// A failed command: what to print and which exit code to use.
#[derive(Debug)]
pub struct CliError {
    pub code: i32,
    pub message: String,
}

impl CliError {
    pub fn new(code: i32, message: impl Into<String>) -> Self {
        CliError {
            code,
            message: message.into(),
        }
    }
}

impl From<anyhow::Error> for CliError {
    fn from(e: anyhow::Error) -> Self {
        CliError::new(1, format!("{e:#}"))
    }
}

/// Exit code and one-line reason for a gRPC error; validation errors are listed.
/// `--server` must be a control URL: `http://` or `https://`, a host and a port.
pub fn check_server_url(server: &str) -> Result<(), CliError> {
    let wrong = |why: &str| {
        Err(CliError::new(
            2,
            format!("--server `{server}`: {why}; give a URL like http://127.0.0.1:7171"),
        ))
    };
    let Some((scheme, rest)) = server.split_once("://") else {
        return wrong("no scheme");
    };
    if scheme != "http" && scheme != "https" {
        return wrong(&format!(
            "`{scheme}` is not a scheme Strom speaks (http or https)"
        ));
    }
    match server.parse::<hyper::Uri>() {
        Ok(uri) if uri.host().is_some_and(|h| !h.is_empty()) && !rest.starts_with('/') => Ok(()),
        _ => wrong("no host"),
    }
}

/// What a gRPC call to a plain HTTP server (a function port, by mistake) fails with.
fn answered_by_plain_http(status: &tonic::Status) -> bool {
    let m = status.message();
    m.contains("invalid compression flag")
        || (status.code() == tonic::Code::Unknown && m.contains("grpc-status header missing"))
        || m.contains("invalid content type")
}

pub fn status_error(status: tonic::Status) -> CliError {
    if answered_by_plain_http(&status) {
        return CliError::new(
            2,
            "the server answered with plain HTTP, not gRPC: this looks like a function port, \
             not the control port (--server is the control URL, http://127.0.0.1:7171 by default)",
        );
    }
    use tonic::Code;
    let code = match status.code() {
        Code::InvalidArgument | Code::FailedPrecondition | Code::OutOfRange => 2,
        Code::NotFound => 3,
        Code::Unauthenticated | Code::PermissionDenied => 4,
        Code::Unavailable | Code::DeadlineExceeded => 5,
        _ => 1,
    };
    let mut message = status.message().lines().next().unwrap_or("").to_string();
    {
        for e in &strom_proto::rich_error::validation_errors(&status) {
            message.push_str("\n  ");
            message.push_str(&e.file);
            if !e.json_path.is_empty() {
                message.push_str(": ");
                message.push_str(&e.json_path);
            }
            message.push_str(": ");
            message.push_str(&e.message);
        }
    }
    if message.is_empty() {
        message = status.code().description().to_string();
    }
    CliError::new(code, message)
}

#[derive(Clone)]
pub struct Bearer(pub MetadataValue<tonic::metadata::Ascii>);

impl tonic::service::Interceptor for Bearer {
    fn call(&mut self, mut req: tonic::Request<()>) -> Result<tonic::Request<()>, tonic::Status> {
        req.metadata_mut().insert("authorization", self.0.clone());
        Ok(req)
    }
}

pub type Client = AdminServiceClient<InterceptedService<Channel, Bearer>>;

pub(crate) fn read_token(args: &ClientArgs) -> Result<String, CliError> {
    if let Some(t) = &args.token {
        return Ok(t.trim().to_string());
    }
    let path = args.data_dir.join("admin.token");
    std::fs::read_to_string(&path)
        .map(|t| t.trim().to_string())
        .map_err(|e| {
            CliError::new(
                4,
                format!(
                    "no admin token: pass --token or STROM_TOKEN, or run where {} is readable ({e})",
                    path.display()
                ),
            )
        })
}

pub async fn run_app(cmd: AppCommand) -> Result<(), CliError> {
    match cmd {
        AppCommand::Deploy {
            dir,
            name,
            publish_local_settings,
            client,
        } => {
            let name = match name {
                Some(n) => n,
                None => default_app_name(&dir)?,
            };
            let zip_file = dir.is_file();
            if zip_file && publish_local_settings {
                return Err(CliError::new(
                    2,
                    format!(
                        "--publish-local-settings needs an app folder: {} is a file (a zip holds no local.settings.json)",
                        dir.display()
                    ),
                ));
            }
            let settings = if publish_local_settings {
                crate::local_settings::read(&dir)
                    .map_err(|e| CliError::new(2, e))?
                    .map(|l| l.values.into_iter().collect())
                    .unwrap_or_default()
            } else {
                HashMap::new()
            };
            let zip = if zip_file {
                read_zip(&dir)?
            } else {
                pack(&dir)?
            };
            let mut cl = Cluster::open(&client)?;
            let out = Printer::of(&client);
            let resp = upload(&mut cl, &name, zip, settings, out.interactive()).await?;
            out.deployed(&resp);
        }
        AppCommand::List { client } => {
            let mut cl = Cluster::open(&client)?;
            let resp = cl
                .read(pb::ListAppsRequest {}, |mut c, r| async move {
                    c.list_apps(r).await
                })
                .await?;
            Printer::of(&client).apps(&resp);
        }
        AppCommand::Show { name, client } => {
            let mut cl = Cluster::open(&client)?;
            let resp = cl
                .read(pb::GetAppRequest { name }, |mut c, r| async move {
                    c.get_app(r).await
                })
                .await?;
            Printer::of(&client).app(&resp);
        }
        AppCommand::Delete { name, client } => {
            let mut cl = Cluster::open(&client)?;
            let resp = cl
                .write(
                    pb::DeleteAppRequest { name: name.clone() },
                    |mut c, r| async move { c.delete_app(r).await },
                )
                .await?;
            Printer::of(&client).message(&format!("deleted app `{name}`"), &resp);
        }
        AppCommand::Rollback {
            name,
            version,
            client,
        } => {
            let mut cl = Cluster::open(&client)?;
            let resp = cl
                .write(
                    pb::RollbackAppRequest {
                        name: name.clone(),
                        version_id: version,
                    },
                    |mut c, r| async move { c.rollback_app(r).await },
                )
                .await?;
            let out = Printer::of(&client);
            out.message(
                &format!("app `{name}` now runs version {}", &resp.version_id[..12]),
                &resp,
            );
            out.warnings(&resp.warnings);
        }
        AppCommand::Deployments { name, client } => {
            let mut cl = Cluster::open(&client)?;
            let resp = cl
                .read(
                    pb::ListDeploymentsRequest { app_name: name },
                    |mut c, r| async move { c.list_deployments(r).await },
                )
                .await?;
            Printer::of(&client).deployments(&resp);
        }
        AppCommand::Credentials {
            name,
            rotate,
            delete,
            client,
        } => {
            let mut cl = Cluster::open(&client)?;
            let resp = cl
                .write(
                    pb::SetDeployCredentialRequest {
                        app_name: name.clone(),
                        rotate,
                        delete,
                    },
                    |mut c, r| async move { c.set_deploy_credential(r).await },
                )
                .await?;
            let text = if delete {
                format!("app `{name}` has no deployment credential now")
            } else if resp.password.is_empty() {
                format!(
                    "app `{name}` has a deployment credential (user `{}`); it is stored hashed \
                     and cannot be shown again: --rotate makes a new one",
                    resp.user_name
                )
            } else {
                format!(
                    "deployment credential of app `{name}` (shown once; keep it secret):\n  user:     {}\n  password: {}",
                    resp.user_name, resp.password
                )
            };
            Printer::of(&client).message(&text, &resp);
        }
        AppCommand::PublishProfile {
            name,
            out,
            rotate,
            publish_url,
            client,
        } => {
            let mut cl = Cluster::open(&client)?;
            let app = cl
                .read(
                    pb::GetAppRequest { name: name.clone() },
                    |mut c, r| async move { c.get_app(r).await },
                )
                .await?;
            let request = pb::SetDeployCredentialRequest {
                app_name: name.clone(),
                rotate,
                delete: false,
            };
            let resp = cl
                .write(request, |mut c, r| async move {
                    c.set_deploy_credential(r).await
                })
                .await?;
            if resp.password.is_empty() {
                return Err(CliError::new(
                    2,
                    format!(
                        "app `{name}` already has a deployment credential, stored hashed: it \
                         cannot be put in a profile. Pass --rotate to make a new one for the \
                         profile (the old one stops working)"
                    ),
                ));
            }
            let base = publish_url.unwrap_or_else(|| cl.first_endpoint().to_string());
            let base = base.trim_end_matches('/');
            let app_url = app.app.as_ref().map(|a| a.url.clone()).unwrap_or_default();
            let xml = crate::publish_profile::render(&crate::publish_profile::Profile {
                app: &name,
                scm_url: &format!("{base}/apps/{name}/scm"),
                user: &resp.user_name,
                password: &resp.password,
                app_url: &app_url,
            });
            let out = if out.as_os_str() == "NAME.PublishSettings" {
                std::path::PathBuf::from(format!("{name}.PublishSettings"))
            } else {
                out
            };
            crate::publish_profile::write_private(&out, xml.as_bytes())
                .map_err(|e| CliError::new(1, format!("writing {}: {e}", out.display())))?;
            Printer::of(&client).message(
                &format!(
                    "wrote {} (mode 0600; it holds the credential of user `{}`)\n  publish URL: {base}/apps/{name}/scm",
                    out.display(),
                    resp.user_name
                ),
                &serde_json::json!({"file": out, "user_name": resp.user_name, "publish_url": format!("{base}/apps/{name}/scm")}),
            );
        }
        AppCommand::Keys { name, client } => {
            let mut cl = Cluster::open(&client)?;
            let resp = cl
                .read(
                    pb::ListFunctionKeysRequest {
                        app_name: name,
                        function_name: String::new(),
                    },
                    |mut c, r| async move { c.list_function_keys(r).await },
                )
                .await?;
            Printer::of(&client).keys(&resp);
        }
        AppCommand::SetKey {
            name,
            key,
            value,
            scope,
            client,
        } => {
            if scope == "function" {
                return Err(CliError::new(
                    2,
                    "--scope function: function keys are set with `strom fn set-key APP FUNCTION KEY`",
                ));
            }
            let mut cl = Cluster::open(&client)?;
            let resp = cl
                .write(
                    pb::SetFunctionKeyRequest {
                        app_name: name,
                        function_name: String::new(),
                        scope,
                        name: key,
                        value: value.unwrap_or_default(),
                    },
                    |mut c, r| async move { c.set_function_key(r).await },
                )
                .await?;
            Printer::of(&client).key_set(&resp);
        }
        AppCommand::DeleteKey {
            name,
            key,
            scope,
            client,
        } => {
            if scope == "function" {
                return Err(CliError::new(
                    2,
                    "--scope function: function keys are deleted with `strom fn delete-key APP FUNCTION KEY`",
                ));
            }
            let mut cl = Cluster::open(&client)?;
            let resp = cl
                .write(
                    pb::DeleteFunctionKeyRequest {
                        app_name: name,
                        function_name: String::new(),
                        scope,
                        name: key.clone(),
                    },
                    |mut c, r| async move { c.delete_function_key(r).await },
                )
                .await?;
            Printer::of(&client).message(&format!("deleted key `{key}`"), &resp);
        }
        AppCommand::Scale {
            name,
            instances,
            client,
        } => {
            let mut cl = Cluster::open(&client)?;
            let resp = cl
                .write(
                    pb::ScaleAppRequest {
                        name: name.clone(),
                        instances,
                    },
                    |mut c, r| async move { c.scale_app(r).await },
                )
                .await?;
            Printer::of(&client).message(
                &format!("app `{name}` now runs {} instance(s)", resp.instances),
                &resp,
            );
        }
        AppCommand::Settings(s) => run_settings(s).await?,
    }
    Ok(())
}

async fn run_settings(cmd: SettingsCommand) -> Result<(), CliError> {
    match cmd {
        SettingsCommand::Set {
            name,
            pairs,
            client,
        } => {
            let mut set = HashMap::new();
            for p in &pairs {
                let (k, v) = p.split_once('=').ok_or_else(|| {
                    CliError::new(2, format!("setting `{p}`: expected KEY=VALUE"))
                })?;
                set.insert(k.to_string(), v.to_string());
            }
            let mut cl = Cluster::open(&client)?;
            let resp = cl
                .write(
                    pb::SetAppSettingsRequest {
                        name,
                        set,
                        remove: vec![],
                    },
                    |mut c, r| async move { c.set_app_settings(r).await },
                )
                .await?;
            Printer::of(&client).settings(&resp.settings, &resp);
        }
        SettingsCommand::Unset { name, keys, client } => {
            let mut cl = Cluster::open(&client)?;
            let resp = cl
                .write(
                    pb::SetAppSettingsRequest {
                        name,
                        set: HashMap::new(),
                        remove: keys,
                    },
                    |mut c, r| async move { c.set_app_settings(r).await },
                )
                .await?;
            Printer::of(&client).settings(&resp.settings, &resp);
        }
        SettingsCommand::Get { name, client } => {
            let mut cl = Cluster::open(&client)?;
            let resp = cl
                .read(pb::GetAppSettingsRequest { name }, |mut c, r| async move {
                    c.get_app_settings(r).await
                })
                .await?;
            Printer::of(&client).settings(&resp.settings, &resp);
        }
    }
    Ok(())
}

pub async fn run_fn(cmd: FnCommand) -> Result<(), CliError> {
    match cmd {
        FnCommand::List { app, client } => {
            let mut cl = Cluster::open(&client)?;
            let resp = cl
                .read(
                    pb::ListFunctionsRequest {
                        app_name: app.unwrap_or_default(),
                    },
                    |mut c, r| async move { c.list_functions(r).await },
                )
                .await?;
            Printer::of(&client).functions(&resp.functions, &resp);
        }
        FnCommand::Keys {
            app,
            function,
            client,
        } => {
            let mut cl = Cluster::open(&client)?;
            let resp = cl
                .read(
                    pb::ListFunctionKeysRequest {
                        app_name: app,
                        function_name: function,
                    },
                    |mut c, r| async move { c.list_function_keys(r).await },
                )
                .await?;
            Printer::of(&client).keys(&resp);
        }
        FnCommand::SetKey {
            app,
            function,
            name,
            value,
            scope,
            client,
        } => {
            let mut cl = Cluster::open(&client)?;
            let resp = cl
                .write(
                    pb::SetFunctionKeyRequest {
                        app_name: app,
                        function_name: function,
                        scope,
                        name,
                        value: value.unwrap_or_default(),
                    },
                    |mut c, r| async move { c.set_function_key(r).await },
                )
                .await?;
            Printer::of(&client).key_set(&resp);
        }
        FnCommand::DeleteKey {
            app,
            function,
            name,
            scope,
            client,
        } => {
            let mut cl = Cluster::open(&client)?;
            let resp = cl
                .write(
                    pb::DeleteFunctionKeyRequest {
                        app_name: app,
                        function_name: function,
                        scope,
                        name: name.clone(),
                    },
                    |mut c, r| async move { c.delete_function_key(r).await },
                )
                .await?;
            Printer::of(&client).message(&format!("deleted key `{name}`"), &resp);
        }
        FnCommand::Invoke {
            app,
            function,
            input,
            no_wait,
            client,
        } => {
            let input = input.unwrap_or_default();
            if !input.is_empty() {
                if let Err(e) = serde_json::from_str::<serde_json::Value>(&input) {
                    return Err(CliError::new(2, format!("--input is not JSON: {e}")));
                }
            }
            let mut cl = Cluster::open(&client)?;
            let resp = cl
                .once(
                    pb::InvokeFunctionRequest {
                        app_name: app.clone(),
                        function_name: function.clone(),
                        input,
                        no_wait,
                    },
                    |mut c, r| async move { c.invoke_function(r).await },
                )
                .await?;
            let text = match (resp.finished, resp.succeeded) {
                (false, _) => format!(
                    "started {app}/{function}: invocation {} (`strom fn logs {app} {function}` shows it)",
                    resp.invocation_id
                ),
                (true, true) => format!(
                    "{app}/{function} succeeded in {} ms (invocation {})",
                    resp.duration_ms, resp.invocation_id
                ),
                (true, false) => format!(
                    "{app}/{function} failed after {} ms (invocation {}): {}",
                    resp.duration_ms, resp.invocation_id, resp.error
                ),
            };
            Printer::of(&client).message(&text, &resp);
            if resp.finished && !resp.succeeded {
                return Err(CliError::new(1, format!("{app}/{function} failed")));
            }
        }
        FnCommand::Logs {
            app,
            function,
            follow,
            tail,
            since,
            status,
            node,
            invocation,
            client,
        } => {
            let since_ms = match since {
                None => None,
                Some(text) => {
                    let d = humantime::parse_duration(&text).map_err(|e| {
                        CliError::new(2, format!("--since `{text}`: {e} (e.g. 10m, 2h)"))
                    })?;
                    Some(strom_control_plane::management::now_ms() - d.as_millis() as i64)
                }
            };
            let mut cl = Cluster::open(&client)?;
            let request = pb::ListInvocationsRequest {
                app_name: app,
                function_name: function.unwrap_or_default(),
                limit: Some(tail),
                follow,
                since_ms,
                status: status.unwrap_or_default(),
                node_id: node,
                invocation_id: invocation.unwrap_or_default(),
            };
            // A followed stream runs until interrupted: the deadline is its start's.
            let response = cl
                .call(
                    Kind::Read,
                    Deadline::FirstAnswer,
                    request,
                    |mut c, r| async move { c.stream_invocations(r).await },
                )
                .await?;
            // Workers that could not be asked are named, never silently left out.
            if let Some(v) = response
                .metadata()
                .get(strom_control_plane::admin_service::UNREACHABLE_METADATA)
                .and_then(|v| v.to_str().ok())
            {
                let nodes: Vec<(u64, String)> = serde_json::from_str(v).unwrap_or_default();
                for (node, why) in nodes {
                    eprintln!("warning: node {node} was not asked: {why}");
                }
            }
            let mut stream = response.into_inner();
            let out = Printer::of(&client);
            loop {
                let next =
                    match cl.timeout() {
                        Some(t) if !follow => tokio::time::timeout(t, stream.message())
                            .await
                            .map_err(|_| {
                                CliError::new(
                                    5,
                                    format!(
                                        "the invocation list stopped: nothing came for {} s",
                                        t.as_secs()
                                    ),
                                )
                            })?,
                        _ => stream.message().await,
                    };
                match next.map_err(status_error)? {
                    Some(inv) => out.invocation(&inv),
                    None => break,
                }
            }
        }
    }
    Ok(())
}

pub async fn run_node_cmd(cmd: NodeCommand) -> Result<(), CliError> {
    match cmd {
        NodeCommand::Drain { node_id, client } => {
            let mut cl = Cluster::open(&client)?;
            let resp = cl
                .read(pb::DrainNodeRequest { node_id }, |mut c, r| async move {
                    c.drain_node(r).await
                })
                .await?;
            let mut text = if resp.handed_over {
                format!(
                    "node {node_id} handed leadership to node {}",
                    resp.leader_id.map(|l| l.to_string()).unwrap_or("?".into())
                )
            } else {
                format!(
                    "node {node_id} does not lead (leader: {})",
                    resp.leader_id
                        .map(|l| format!("node {l}"))
                        .unwrap_or("none known".into())
                )
            };
            if resp.worker_draining {
                text.push_str("; its instances move to other workers (see `strom cluster status`), then it can stop");
            } else {
                text.push_str("; it can stop now");
            }
            Printer::of(&client).message(&text, &resp);
        }
        NodeCommand::Cordon { node_id, client } => {
            let mut cl = Cluster::open(&client)?;
            let resp = cl
                .write(pb::CordonNodeRequest { node_id }, |mut c, r| async move {
                    c.cordon_node(r).await
                })
                .await?;
            Printer::of(&client).message(
                &format!(
                    "worker {node_id} is {}: it takes no new instances",
                    resp.status
                ),
                &resp,
            );
        }
        NodeCommand::Uncordon { node_id, client } => {
            let mut cl = Cluster::open(&client)?;
            let resp = cl
                .write(pb::CordonNodeRequest { node_id }, |mut c, r| async move {
                    c.uncordon_node(r).await
                })
                .await?;
            Printer::of(&client).message(
                &format!(
                    "worker {node_id} is {}: it takes instances again",
                    resp.status
                ),
                &resp,
            );
        }
    }
    Ok(())
}

pub async fn run_cluster(cmd: ClusterCommand) -> Result<(), CliError> {
    match cmd {
        ClusterCommand::Members { client } => {
            let mut cl = Cluster::open(&client)?;
            let resp = cl
                .read(
                    pb::GetClusterStatusRequest { stale: false },
                    |mut c, r| async move { c.get_cluster_status(r).await },
                )
                .await?;
            Printer::of(&client).members(&resp);
        }
        ClusterCommand::RemoveMember { node_id, client } => {
            let mut cl = Cluster::open(&client)?;
            let resp = cl
                .once(pb::RemoveMemberRequest { node_id }, |mut c, r| async move {
                    c.remove_member(r).await
                })
                .await?;
            Printer::of(&client).message(
                &format!(
                    "removed node {node_id}{}; voters now: {:?}",
                    if resp.worker_removed {
                        " (worker: its instances are placed elsewhere)"
                    } else {
                        ""
                    },
                    resp.voters
                ),
                &resp,
            );
        }
        ClusterCommand::Status { stale, client } => {
            let mut cl = Cluster::open(&client)?;
            let resp = cl
                .read(
                    pb::GetClusterStatusRequest { stale },
                    |mut c, r| async move { c.get_cluster_status(r).await },
                )
                .await?;
            Printer::of(&client).status(&resp);
        }
        ClusterCommand::Checkpoint { client } => {
            let mut cl = Cluster::open(&client)?;
            let resp = cl
                .read(pb::CreateCheckpointRequest {}, |mut c, r| async move {
                    c.create_checkpoint(r).await
                })
                .await?;
            let text = match &resp.checkpoint {
                Some(cp) => format!(
                    "checkpoint {} written to {} in {} ms ({} state, {} packages of {})",
                    cp.id,
                    resp.store,
                    resp.took_ms,
                    crate::output::bytes(cp.state_size),
                    cp.packages,
                    crate::output::bytes(cp.packages_size)
                ),
                None => format!("checkpoint written to {}", resp.store),
            };
            Printer::of(&client).message(&text, &resp);
        }
        ClusterCommand::Checkpoints {
            from,
            cluster,
            verify,
            output,
        } => {
            let store = open_checkpoint_store(&from)?;
            let list = store
                .list(cluster.as_deref())
                .await
                .map_err(|e| CliError::new(1, e.to_string()))?;
            let mut rows = Vec::new();
            for m in list {
                let verified = if verify {
                    Some(verify_checkpoint(&*store, &m).await)
                } else {
                    None
                };
                rows.push((m, verified));
            }
            Printer::new(output).checkpoints(&store.describe(), &rows);
        }
        ClusterCommand::Restore {
            from,
            checkpoint,
            data_dir,
            node_id,
            advertise_addr,
            new_cluster_id,
            join_token,
        } => {
            if node_id == 0 {
                return Err(CliError::new(2, "--node-id: must be at least 1"));
            }
            let store = open_checkpoint_store(&from)?;
            let restored = strom_control_plane::restore::restore(
                strom_control_plane::restore::RestoreRequest {
                    store: &*store,
                    checkpoint,
                    data_dir: data_dir.clone(),
                    node_id,
                    advertise_addr: advertise_addr.clone(),
                    new_cluster_id,
                    join_token,
                },
            )
            .await
            .map_err(|e| CliError::new(1, format!("restore from {}: {e}", store.describe())))?;
            // The files restore wrote (the Raft log, blobs): 0600 like any data dir.
            crate::data_dir::secure(&data_dir)
                .map_err(|e| CliError::new(1, format!("{}: {e}", data_dir.display())))?;
            crate::output::Printer::new(crate::cli::Output::Table).restored(
                &restored,
                &data_dir,
                node_id,
                &advertise_addr,
            );
        }
    }
    Ok(())
}

fn open_checkpoint_store(
    spec: &str,
) -> Result<std::sync::Arc<dyn strom_control_plane::checkpoint::CheckpointStore>, CliError> {
    strom_control_plane::checkpoint::open_store(spec).map_err(|e| CliError::new(2, e.to_string()))
}

/// Whether a checkpoint and its packages read back whole (`Ok`), or why not.
async fn verify_checkpoint(
    store: &dyn strom_control_plane::checkpoint::CheckpointStore,
    m: &strom_control_plane::checkpoint::CheckpointMeta,
) -> Result<(), String> {
    store.read(&m.id).await.map_err(|e| e.to_string())?;
    for p in &m.packages {
        store
            .get_package(&p.sha256)
            .await
            .map_err(|e| e.to_string())?;
    }
    Ok(())
}

/// The app name a folder deploys as: its name, lower-cased.
pub fn default_app_name(dir: &Path) -> Result<String, CliError> {
    let abs = std::fs::canonicalize(dir)
        .map_err(|e| CliError::new(2, format!("app folder {}: {e}", dir.display())))?;
    // A zip is named after its file (`web.zip` → `web`).
    let name = if abs.is_file() {
        abs.file_stem()
    } else {
        abs.file_name()
    };
    name.and_then(|n| n.to_str())
        .map(|n| n.to_ascii_lowercase())
        .ok_or_else(|| {
            CliError::new(
                2,
                format!(
                    "app folder {} has no usable name; pass --name",
                    dir.display()
                ),
            )
        })
}

/// Zip an app folder, honoring `.funcignore`.
/// A ready-made package (what Azure zip deploy takes: `host.json` at its root);
/// the cluster validates it as it does a packed folder.
pub fn read_zip(path: &Path) -> Result<Vec<u8>, CliError> {
    let bytes = std::fs::read(path)
        .map_err(|e| CliError::new(2, format!("app package {}: {e}", path.display())))?;
    if !bytes.starts_with(b"PK") {
        return Err(CliError::new(
            2,
            format!(
                "app package {}: not a zip file; give an app folder or a zip of one",
                path.display()
            ),
        ));
    }
    Ok(bytes)
}

pub fn pack(dir: &Path) -> Result<Vec<u8>, CliError> {
    if !dir.is_dir() {
        return Err(CliError::new(
            2,
            format!(
                "app folder {} does not exist or is not a folder",
                dir.display()
            ),
        ));
    }
    strom_proto::manifest::pack_dir(dir)
        .map_err(|e| CliError::new(2, format!("packing {}: {e}", dir.display())))
}

/// Stream a package to DeployApp in chunks, with a progress bar on a terminal.
/// The upload fails when no chunk went out for 15 s (not after a total time);
/// in a client session a lost answer is retried on another member.
pub async fn upload(
    cluster: &mut Cluster,
    name: &str,
    zip: Vec<u8>,
    settings: HashMap<String, String>,
    progress: bool,
) -> Result<pb::DeployAppResponse, CliError> {
    let total = zip.len() as u64;
    let bar = if progress {
        let bar = indicatif::ProgressBar::new(total);
        bar.set_style(
            indicatif::ProgressStyle::with_template(
                "uploading {msg} [{bar:30}] {bytes}/{total_bytes} ({bytes_per_sec})",
            )
            .expect("valid template")
            .progress_chars("=> "),
        );
        bar.set_message(name.to_string());
        Some(bar)
    } else {
        None
    };
    let chunks: Arc<Vec<Vec<u8>>> = Arc::new(zip.chunks(CHUNK).map(|c| c.to_vec()).collect());
    let tracker = Progress::new();
    let deadline = Deadline::Progress(tracker.clone());
    let name = name.to_string();
    let result = cluster
        .call(Kind::Write, deadline, chunks, |mut c, request| {
            let (name, settings, bar, tracker) =
                (name.clone(), settings.clone(), bar.clone(), tracker.clone());
            if let Some(b) = &bar {
                b.set_position(0);
            }
            let request = request.map(move |chunks| {
                let count = chunks.len();
                futures::stream::iter((0..count).map(move |i| {
                    let data = chunks[i].clone();
                    tracker.advanced(i + 1 == count);
                    if let Some(b) = &bar {
                        b.inc(data.len() as u64);
                    }
                    pb::DeployAppChunk {
                        app_name: if i == 0 { name.clone() } else { String::new() },
                        total_size: if i == 0 { total } else { 0 },
                        settings: if i == 0 {
                            settings.clone()
                        } else {
                            HashMap::new()
                        },
                        data,
                    }
                }))
            });
            async move { c.deploy_app(request).await }
        })
        .await;
    if let Some(b) = bar {
        b.finish_and_clear();
    }
    Ok(result?.into_inner())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn server_urls_need_a_scheme_strom_speaks_and_a_host() {
        assert!(check_server_url("http://127.0.0.1:7171").is_ok());
        assert!(check_server_url("https://mgmt.example:7171").is_ok());
        for (bad, why) in [
            ("127.0.0.1:7171", "no scheme"),
            ("ftp://127.0.0.1:7171", "`ftp` is not a scheme"),
            ("http://", "no host"),
            ("http:///x", "no host"),
        ] {
            let e = check_server_url(bad).unwrap_err();
            assert_eq!(e.code, 2, "{bad}");
            assert!(e.message.contains(why), "{bad}: {}", e.message);
            assert!(
                e.message.contains("http://127.0.0.1:7171") && e.message.contains(bad),
                "{}",
                e.message
            );
        }
    }

    #[test]
    fn a_plain_http_answer_is_named_as_a_wrong_port() {
        let e = status_error(tonic::Status::internal(
            "protocol error: received message with invalid compression flag: 123 (valid flags are 0 and 1) while receiving response with status: 404 Not Found",
        ));
        assert_eq!(e.code, 2);
        assert!(e.message.contains("function port"), "{}", e.message);
        assert!(!e.message.contains("compression"), "{}", e.message);
    }
}
