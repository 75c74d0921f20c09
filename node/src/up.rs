//! `strom up`: a single-node cluster in the foreground, on the embedded defaults
//! (both roles, local storage under the data dir, process runtime, no external
//! services) — like Azure Core Tools' `func start`, but a real cluster of one.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use strom_actors::Lifecycle;
use strom_control_plane::admin_service::{AdminApi, WorkerView};
use strom_control_plane::{control_server, Bootstrap, ManagementConfig, ManagementNode};
use strom_proto::ids::AppName;
use strom_proto::invocations::InvocationStore;
use strom_proto::manifest::ZipLimits;
use tokio_util::sync::CancellationToken;

use crate::cli::UpArgs;
use crate::client::{default_app_name, pack, status_error, CliError};
use crate::gateway::{Gateway, GatewayConfig};
use crate::local_settings::{self, LocalSettings};
use crate::output::print_functions;
use crate::worker::Worker;

/// The node id of the single node `strom up` runs.
pub const UP_NODE_ID: u64 = 1;
/// Invocation records kept per node.
pub const INVOCATION_RECORDS: usize = 10_000;

pub struct AppDir {
    dir: std::path::PathBuf,
    name: AppName,
    local: Option<LocalSettings>,
}

fn read_app_dirs(args: &UpArgs) -> Result<Vec<AppDir>, CliError> {
    let mut out = Vec::new();
    for dir in &args.app_dirs {
        let name = default_app_name(dir)?;
        let name = AppName::parse(&name)
            .map_err(|e| CliError::new(2, format!("{}: {e}; rename the folder", dir.display())))?;
        let local = local_settings::read(dir).map_err(|e| CliError::new(2, e))?;
        out.push(AppDir {
            dir: dir.clone(),
            name,
            local,
        });
    }
    Ok(out)
}

/// How a node starts: everything `strom up` and `strom serve` share.
#[derive(Debug, Clone)]
pub struct NodeSettings {
    pub node_id: u64,
    pub data_dir: std::path::PathBuf,
    pub control_addr: SocketAddr,
    pub http_addr: SocketAddr,
    /// Address other nodes reach this node's control port at (default: the bound one).
    pub advertise_addr: Option<String>,
    pub start: Start,
    /// Run the worker role and the function HTTP port.
    pub worker: bool,
    pub startup_timeout: Duration,
    pub max_request_body_bytes: usize,
    pub limits: ZipLimits,
}

#[derive(Debug, Clone)]
pub enum Start {
    /// Create a new cluster of this node (does nothing on a restart).
    Bootstrap,
    /// Join a running cluster through these control URLs (a member restarts as itself).
    Join { seeds: Vec<String>, token: String },
}

pub async fn run(args: UpArgs) -> Result<(), CliError> {
    let apps = read_app_dirs(&args)?;
    let http_addr: SocketAddr = match args.http_addr {
        Some(a) => a,
        None => {
            let port = apps
                .iter()
                .find_map(|a| a.local.as_ref().and_then(|l| l.local_http_port))
                .unwrap_or(7071);
            SocketAddr::from(([127, 0, 0, 1], port))
        }
    };
    let settings = NodeSettings {
        node_id: UP_NODE_ID,
        data_dir: args.data_dir.clone(),
        control_addr: args.control_addr,
        http_addr,
        advertise_addr: None,
        start: Start::Bootstrap,
        worker: true,
        startup_timeout: Duration::from_secs(args.startup_timeout_secs),
        max_request_body_bytes: args.max_request_body_bytes,
        limits: ZipLimits {
            max_compressed_bytes: args.max_package_bytes,
            max_uncompressed_bytes: args.max_uncompressed_bytes,
            max_entries: args.max_package_entries,
            ..ZipLimits::default()
        },
    };
    run_node(settings, apps, "single-node cluster").await
}

/// Run a node until SIGTERM/Ctrl-C.
pub async fn run_node(
    settings: NodeSettings,
    apps: Vec<AppDir>,
    title: &str,
) -> Result<(), CliError> {
    std::fs::create_dir_all(&settings.data_dir)
        .map_err(|e| CliError::new(2, format!("data dir {}: {e}", settings.data_dir.display())))?;
    // Bind first: a taken port is reported before anything else happens.
    let control = control_server::bind(settings.control_addr)
        .await
        .map_err(|e| CliError::new(2, format!("control address {}: {e}", settings.control_addr)))?;
    let control_addr = control
        .local_addr()
        .map_err(|e| CliError::new(1, e.to_string()))?;
    let http = if settings.worker {
        let l = tokio::net::TcpListener::bind(settings.http_addr)
            .await
            .map_err(|e| CliError::new(2, format!("HTTP address {}: {e}", settings.http_addr)))?;
        Some(l)
    } else {
        None
    };
    let http_addr = match &http {
        Some(l) => l
            .local_addr()
            .map_err(|e| CliError::new(1, e.to_string()))?,
        None => settings.http_addr,
    };

    let advertise = settings
        .advertise_addr
        .clone()
        .unwrap_or_else(|| control_addr.to_string());
    let mut config = ManagementConfig::new(
        &settings.data_dir,
        settings.node_id,
        &advertise,
        &format!("http://{http_addr}"),
    );
    config.package_limits = settings.limits.clone();
    let node = ManagementNode::start(config)
        .await
        .map_err(|e| CliError::new(1, e.to_string()))?;

    let invocations = InvocationStore::new(INVOCATION_RECORDS);
    let worker = if settings.worker {
        let lifecycle = Lifecycle {
            startup_timeout: settings.startup_timeout,
            ..Lifecycle::default()
        };
        Some(
            Worker::start(
                &settings.data_dir,
                lifecycle,
                node.state.clone(),
                node.clone(),
                settings.limits.clone(),
            )
            .await
            .map_err(|e| CliError::new(1, format!("worker role: {e:#}")))?,
        )
    } else {
        None
    };
    let mut api = AdminApi::new(node.clone());
    if let Some(w) = &worker {
        api = api.with_worker(WorkerView {
            node_id: settings.node_id,
            invocations: invocations.clone(),
            instances: w.instances.clone(),
        });
    }
    let cancel = CancellationToken::new();
    let server = tokio::spawn(control_server::serve(
        node.clone(),
        api,
        control,
        cancel.clone(),
    ));
    let http_cancel = CancellationToken::new();
    let gateway_task = match (&worker, http) {
        (Some(w), Some(listener)) => {
            let gateway = Gateway::new(
                GatewayConfig {
                    max_body_bytes: settings.max_request_body_bytes,
                    cold_start_timeout: settings.startup_timeout,
                    ..GatewayConfig::default()
                },
                w.routing.clone(),
                node.state.clone(),
                invocations,
            );
            Some(tokio::spawn(gateway.serve(listener, http_cancel.clone())))
        }
        _ => None,
    };

    let stop = |node: ManagementNode, worker: Option<Worker>| async move {
        http_cancel.cancel();
        if let Some(t) = gateway_task {
            let _ = t.await;
        }
        if let Some(w) = worker {
            // Longer than drain (30 s) + stop grace (10 s) + the kill wait (10 s).
            w.shutdown(Duration::from_secs(55)).await;
        }
        // A planned stop: let another member lead first (none in a cluster of one).
        if let Err(e) = node.hand_over_leadership(Duration::from_secs(5)).await {
            tracing::warn!("leadership hand-over: {e}");
        }
        cancel.cancel();
        let _ = server.await;
        node.shutdown().await;
    };

    let started = match &settings.start {
        Start::Bootstrap => node.bootstrap(Duration::from_secs(30)).await,
        Start::Join { seeds, token } => node
            .join(seeds, token, Duration::from_secs(60))
            .await
            .map(|_| Bootstrap::Existing),
    };
    let bootstrap = match started {
        Ok(b) => b,
        Err(e) => {
            stop(node, worker).await;
            return Err(CliError::new(1, e.to_string()));
        }
    };
    println!("strom {} — {title}", env!("CARGO_PKG_VERSION"));
    println!("  node:      {}", settings.node_id);
    println!("  data dir:  {}", settings.data_dir.display());
    println!("  control:   http://{control_addr}  (gRPC admin API)");
    if worker.is_some() {
        println!("  functions: http://{http_addr}");
    }
    match &bootstrap {
        Bootstrap::Created { admin_token } => {
            println!(
                "New cluster. Admin token (shown once; saved to {} with mode 0600):",
                settings.data_dir.join("admin.token").display()
            );
            println!("  {admin_token}");
        }
        Bootstrap::Existing => {
            let view = node.read_local();
            println!(
                "{} cluster {} at log index {}.",
                if matches!(settings.start, Start::Join { .. }) {
                    "Member of"
                } else {
                    "Restarted into"
                },
                view.state
                    .cluster
                    .as_ref()
                    .map(|c| c.cluster_id.to_string())
                    .unwrap_or_default(),
                view.applied_index()
            );
        }
    }

    if let Err(e) = deploy_dirs(&node, &apps).await {
        stop(node, worker).await;
        return Err(e);
    }
    if let Some(w) = &worker {
        wait_until_ready(&node, w, settings.startup_timeout).await;
        print_running(&node, w);
    }
    println!("Ready. Press Ctrl-C to stop.");

    shutdown_signal().await;
    eprintln!("stopping…");
    stop(node, worker).await;
    Ok(())
}

async fn deploy_dirs(node: &ManagementNode, apps: &[AppDir]) -> Result<(), CliError> {
    let api = Arc::new(AdminApi::new(node.clone()));
    for app in apps {
        let zip = pack(&app.dir)?;
        // local.settings.json Values go in with the version, so the first
        // instances already start with them.
        let settings = app
            .local
            .as_ref()
            .map(|l| l.values.clone())
            .unwrap_or_default();
        let resp = api
            .deploy_bytes(app.name.clone(), zip, settings)
            .await
            .map_err(|s| {
                let mut e = status_error(s);
                e.message = format!("deploying {}: {}", app.dir.display(), e.message);
                e
            })?;
        if resp.changed {
            println!(
                "Deployed app `{}` version {}{}.",
                resp.app_name,
                &resp.version_id[..12],
                if app.local.is_some() {
                    format!(" with the settings of {}", local_settings::FILE)
                } else {
                    String::new()
                }
            );
        }
    }
    Ok(())
}

/// Wait (bounded) until every app is served by an instance that is Ready (or
/// crash-looping) and nothing is still starting, so the URLs printed next answer.
async fn wait_until_ready(node: &ManagementNode, worker: &Worker, limit: Duration) {
    use strom_proto::instances::InstanceState;
    let deadline = tokio::time::Instant::now() + limit;
    let mut rx = worker.instances.clone();
    loop {
        {
            let view = node.read_local();
            let all = rx.borrow_and_update();
            let starting = all
                .iter()
                .any(|i| matches!(i.state, InstanceState::Starting | InstanceState::Restarting));
            let served = view.state.apps.keys().all(|app| {
                all.iter().any(|i| {
                    &i.app == app
                        && i.serving
                        && matches!(i.state, InstanceState::Ready | InstanceState::CrashLooping)
                })
            });
            if served && !starting {
                return;
            }
        }
        if tokio::time::timeout_at(deadline, rx.changed())
            .await
            .is_err()
        {
            return;
        }
    }
}

fn print_running(node: &ManagementNode, worker: &Worker) {
    let view = node.read_local();
    if view.state.apps.is_empty() {
        println!("No apps yet: deploy one with `strom app deploy DIR`.");
        return;
    }
    let mut functions = Vec::new();
    for app in view.state.apps.values() {
        let manifest = &app.active().manifest;
        for f in &manifest.functions {
            functions.push(strom_control_plane::admin_service::function_info(
                &app.name,
                manifest,
                f,
                &app.settings,
                &app.keys,
                &node.config.public_http_url,
            ));
        }
    }
    print_functions(&functions, true);
    for i in worker.instances.borrow().iter() {
        if let Some(e) = &i.last_error {
            if i.state != strom_proto::instances::InstanceState::Ready {
                println!("app `{}`: {} — {e}", i.app, i.state.as_str());
            }
        }
    }
}

async fn shutdown_signal() {
    #[cfg(unix)]
    {
        let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
            .expect("SIGTERM handler");
        tokio::select! {
            _ = tokio::signal::ctrl_c() => {}
            _ = term.recv() => {}
        }
    }
    #[cfg(not(unix))]
    {
        let _ = tokio::signal::ctrl_c().await;
    }
}
