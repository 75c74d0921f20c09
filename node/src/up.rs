//! `strom up`: a single-node cluster in the foreground, on the embedded defaults
//! (both roles, local storage under the data dir, process runtime, no external
//! services) — like Azure Core Tools' `func start`, but a real cluster of one.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use strom_actors::{Lifecycle, RoutingTable};
use strom_control_plane::admin_service::{AdminApi, LocalWorker, WorkerSlot};
use strom_control_plane::internal_auth::ClusterSecret;
use strom_control_plane::management::write_secret_file;
use strom_control_plane::{control_server, Bootstrap, ManagementConfig, ManagementNode};
use strom_proto::ids::AppName;
use strom_proto::invocations::InvocationStore;
use strom_proto::manifest::ZipLimits;
use strom_proto::worker_view::WorkerView;
use tokio_util::sync::CancellationToken;

use crate::agent::{Agent, Managers, Packages, WorkerOffer};
use crate::cli::UpArgs;
use crate::client::{default_app_name, pack, status_error, CliError};
use crate::cluster_view;
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

/// Validate an app folder as the cluster would on a first deploy (no settings but
/// its local.settings.json); every problem at once, each naming file and JSON path.
fn check_app_dir(app: &AppDir, limits: &ZipLimits, in_containers: bool) -> Result<(), CliError> {
    use strom_proto::manifest::{validate_app_for, AppPackage, HandlerCheck, ManifestError};
    let zip = pack(&app.dir)?;
    let settings: BTreeMap<String, String> = app
        .local
        .as_ref()
        .map(|l| l.values.clone().into_iter().collect())
        .unwrap_or_default();
    let in_containers = match settings.get(strom_proto::runtime_settings::RUNTIME) {
        Some(v) => v.trim().eq_ignore_ascii_case("docker"),
        None => in_containers,
    };
    let check = if in_containers {
        HandlerCheck::PackageOnly
    } else {
        HandlerCheck::PackageOrPath
    };
    let errors = AppPackage::from_zip_bytes(&zip, limits)
        .map_err(|e| vec![ManifestError::from(e)])
        .and_then(|pkg| validate_app_for(&pkg, &settings, check).map(|_| ()))
        .err()
        .unwrap_or_default();
    if errors.is_empty() {
        return Ok(());
    }
    let mut message = format!(
        "app folder {} is not valid (nothing was created):",
        app.dir.display()
    );
    for e in &errors {
        message.push_str(&format!("\n  {e}"));
    }
    Err(CliError::new(2, message))
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
    /// Address other nodes reach this node's function port at (default: the bound one).
    pub advertise_http_addr: Option<String>,
    pub start: Start,
    /// Run the management role (Raft member, admin API) and the control port.
    pub management: bool,
    /// Run the worker role and the function HTTP port.
    pub worker: bool,
    pub capacity: Capacity,
    /// A worker silent for this long is Down (management role setting).
    pub worker_lease: Duration,
    /// Versions kept per app (management role setting).
    pub keep_versions: usize,
    /// Apps' own addresses are `{app}.<app_domain>` (shown in function URLs).
    pub app_domain: String,
    /// Print the function table as wide as its contents.
    pub wide: bool,
    /// TLS identity for every listener and node-to-node connection.
    pub tls: Option<strom_control_plane::tls::NodeTls>,
    pub startup_timeout: Duration,
    /// On SIGTERM/Ctrl-C: answer not-ready on `/readyz` this long, still serving,
    /// before stopping (a load balancer notices and sends no new requests).
    pub shutdown_delay: Duration,
    pub max_request_body_bytes: usize,
    /// The function port's timeouts and connection limit.
    pub http: crate::gateway::listener::HttpLimits,
    pub limits: ZipLimits,
    /// The worker's runtimes: default and container defaults.
    pub containers: crate::worker::Containers,
    /// Where traces are exported (OTLP/gRPC); none: tracing off.
    pub otlp_endpoint: Option<String>,
    /// Checkpoints to a store (management role; `None`: none).
    pub checkpoints: Option<strom_control_plane::checkpointer::CheckpointSettings>,
}

/// What a worker offers the scheduler.
#[derive(Debug, Clone)]
pub struct Capacity {
    pub instances: u32,
    /// 0 = not limited.
    pub memory_mb: u64,
    pub labels: BTreeMap<String, String>,
}

impl Default for Capacity {
    fn default() -> Self {
        Capacity {
            instances: 64,
            memory_mb: 0,
            labels: BTreeMap::new(),
        }
    }
}

#[derive(Debug, Clone)]
pub enum Start {
    /// Create a new cluster of this node (does nothing on a restart).
    Bootstrap,
    /// Join a running cluster through these control URLs (a member restarts as itself).
    Join { seeds: Vec<String>, token: String },
}

pub async fn run(args: UpArgs) -> Result<(), CliError> {
    if args.keep_versions == 0 {
        return Err(CliError::new(
            2,
            "--keep-versions: must be at least 1 (the active version)",
        ));
    }
    strom_control_plane::management::check_app_domain(&args.app_domain)
        .map_err(|e| CliError::new(2, format!("--app-domain: {e}")))?;
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
        advertise_http_addr: None,
        start: Start::Bootstrap,
        management: true,
        worker: true,
        capacity: Capacity::default(),
        worker_lease: Duration::from_secs(5),
        keep_versions: args.keep_versions,
        app_domain: args.app_domain.clone(),
        wide: args.wide,
        tls: None,
        startup_timeout: Duration::from_secs(args.startup_timeout_secs),
        // A developer's single node: stop at once.
        shutdown_delay: Duration::ZERO,
        otlp_endpoint: args.otlp_endpoint.clone().filter(|e| !e.trim().is_empty()),
        max_request_body_bytes: args.max_request_body_bytes,
        http: crate::gateway::listener::HttpLimits {
            header_read: Duration::from_secs(args.http_header_timeout_secs),
            body_read: Duration::from_secs(args.http_body_timeout_secs),
            idle: Duration::from_secs(args.http_idle_timeout_secs),
            max_connections: args.http_max_connections,
        },
        containers: crate::worker::Containers::from_args(&args.containers)
            .map_err(|p| CliError::new(2, p.join("\n")))?,
        limits: ZipLimits {
            max_compressed_bytes: args.max_package_bytes,
            max_uncompressed_bytes: args.max_uncompressed_bytes,
            max_entries: args.max_package_entries,
            ..ZipLimits::default()
        },
        checkpoints: None,
    };
    let problems = crate::serve::http_problems(&settings.http);
    if !problems.is_empty() {
        return Err(CliError::new(2, problems.join("\n")));
    }
    // A first start validates the apps before it creates anything: an invalid app
    // must not leave a new cluster (and its one-time admin token) behind. Later
    // starts deploy through the cluster, which also knows settings set since.
    if !settings.data_dir.join("node.json").exists() {
        let in_containers = settings.containers.default_runtime
            == strom_proto::runtime_settings::RuntimeKind::Docker;
        for app in &apps {
            check_app_dir(app, &settings.limits, in_containers)?;
        }
    }
    run_node(settings, apps, "single-node cluster").await
}

fn io_error(what: impl std::fmt::Display) -> impl FnOnce(std::io::Error) -> CliError {
    move |e| CliError::new(2, format!("{what}: {e}"))
}

/// The background parts of a running node, stopped in order by [`Running::stop`].
struct Running {
    node: Option<ManagementNode>,
    worker: Option<Worker>,
    server: Option<tokio::task::JoinHandle<Result<(), control_server::ServeError>>>,
    gateway: Option<tokio::task::JoinHandle<()>>,
    /// Control server, leader duties.
    control_cancel: CancellationToken,
    /// Gateway.
    http_cancel: CancellationToken,
    /// Heartbeats and the state watch.
    agent_cancel: CancellationToken,
    /// Where the admin API learns about the worker role.
    worker_view: Option<WorkerSlot>,
    /// The leader's duties and the package collector (stopped with the control port).
    duties: Vec<tokio::task::JoinHandle<()>>,
    /// Heartbeats and the state watch (stopped with `agent_cancel`).
    agent_tasks: Vec<tokio::task::JoinHandle<()>>,
    /// The node's proof of membership (shown on internal calls and hops).
    secret: ClusterSecret,
    /// `/healthz` and `/readyz` on both ports: each role adds its check.
    health: Arc<strom_control_plane::health::Health>,
    /// What this node's worker and gateway see of the cluster.
    view: Option<tokio::sync::watch::Receiver<Arc<WorkerView>>>,
    /// The admin API (a management node): the key management API writes through it.
    api: Option<AdminApi>,
    /// The management group as a worker-only node knows it.
    managers: Option<Arc<Managers>>,
    /// The gateway's RabbitMQ consumers, as the worker's heartbeats report them.
    triggers: crate::gateway::consumers::TriggerBoard,
}

impl Running {
    async fn stop(self) {
        self.http_cancel.cancel();
        if let Some(t) = self.gateway {
            let _ = t.await;
        }
        if let Some(w) = self.worker {
            // Longer than drain (30 s) + stop grace (10 s) + the kill wait (10 s).
            w.shutdown(Duration::from_secs(55)).await;
        }
        self.agent_cancel.cancel();
        for task in self.agent_tasks {
            let _ = task.await;
        }
        if let Some(node) = &self.node {
            // A planned stop: let another member lead first (none in a cluster of one).
            if let Err(e) = node.hand_over_leadership(Duration::from_secs(5)).await {
                tracing::warn!("leadership hand-over: {e}");
            }
        }
        self.control_cancel.cancel();
        for task in self.duties {
            let _ = task.await;
        }
        if let Some(mut s) = self.server {
            // Clients' open connections (a worker's channel, a CLI stream) must not
            // hold the stop up: give them a moment, then close them.
            if tokio::time::timeout(Duration::from_secs(3), &mut s)
                .await
                .is_err()
            {
                tracing::info!("closing the control port's remaining connections");
                s.abort();
            }
        }
        if let Some(node) = self.node {
            node.shutdown().await;
        }
    }
}

/// Run a node until it is asked to stop (Ctrl-C, SIGTERM, a service stop:
/// [`crate::lifecycle`]).
pub async fn run_node(
    settings: NodeSettings,
    apps: Vec<AppDir>,
    title: &str,
) -> Result<(), CliError> {
    crate::logging::set_node_id(settings.node_id);
    let exporter = match &settings.otlp_endpoint {
        Some(endpoint) => Some(
            crate::traces::start(endpoint, settings.node_id).map_err(|e| CliError::new(2, e))?,
        ),
        None => None,
    };
    let result = run_node_traced(settings, apps, title).await;
    if let Some(exporter) = exporter {
        exporter.shutdown();
    }
    result
}

async fn run_node_traced(
    settings: NodeSettings,
    apps: Vec<AppDir>,
    title: &str,
) -> Result<(), CliError> {
    // Deployments recorded by this node before now are an earlier process's.
    let started_ms = strom_control_plane::management::now_ms();
    // The data dir holds secrets: its owner's alone (older ones are fixed).
    let first_start = !settings.data_dir.join("node.json").exists()
        && !settings.data_dir.join("worker.json").exists();
    crate::data_dir::secure_and_log(&settings.data_dir).map_err(io_error(format!(
        "data dir {}",
        settings.data_dir.display()
    )))?;
    if let Some(tls) = &settings.tls {
        strom_control_plane::tls::install(tls.clone());
    }
    // A new cluster's tokens exist before its control port opens: a script that
    // waits for the port and then runs the CLI finds `admin.token` (bootstrap
    // takes the files it finds).
    let new_cluster = settings.management
        && matches!(settings.start, Start::Bootstrap)
        && !settings.data_dir.join("raft").join("log.redb").exists();
    if new_cluster {
        for file in ["admin.token", JOIN_TOKEN_FILE] {
            let path = settings.data_dir.join(file);
            let present = std::fs::read_to_string(&path).is_ok_and(|t| !t.trim().is_empty());
            if !present {
                strom_control_plane::management::write_secret_file(
                    &path,
                    &strom_control_plane::management::new_token(),
                )
                .map_err(io_error(path.display().to_string()))?;
            }
        }
    }
    // Bind first: a taken port is reported before anything else happens.
    let control = match settings.management {
        true => Some(
            control_server::bind(settings.control_addr)
                .await
                .map_err(io_error(format!(
                    "control address {}",
                    settings.control_addr
                )))?,
        ),
        false => None,
    };
    let control_addr = match &control {
        Some(l) => l
            .local_addr()
            .map_err(|e| CliError::new(1, e.to_string()))?,
        None => settings.control_addr,
    };
    // Every node serves the function port; a node without the worker role only
    // routes requests to workers.
    let http = match settings.worker || settings.management {
        true => Some(
            tokio::net::TcpListener::bind(settings.http_addr)
                .await
                .map_err(io_error(format!("HTTP address {}", settings.http_addr)))?,
        ),
        false => None,
    };
    let http_addr = match &http {
        Some(l) => l
            .local_addr()
            .map_err(|e| CliError::new(1, e.to_string()))?,
        None => settings.http_addr,
    };
    let scheme = if strom_control_plane::tls::current().is_some() {
        "https"
    } else {
        let exposed: Vec<String> = [
            settings.management.then_some(control_addr),
            http.as_ref().map(|_| http_addr),
        ]
        .into_iter()
        .flatten()
        .filter(|a| !a.ip().is_loopback())
        .map(|a| a.to_string())
        .collect();
        if !exposed.is_empty() {
            let warning = format!(
                "warning: listening on {} without TLS: tokens, keys and function traffic travel in clear text; give --tls-cert, --tls-key and --tls-ca",
                exposed.join(" and ")
            );
            eprintln!("{warning}");
            tracing::warn!("{warning}");
        }
        "http"
    };
    let advertise = settings
        .advertise_addr
        .clone()
        .unwrap_or_else(|| control_addr.to_string());
    let advertise_http = settings
        .advertise_http_addr
        .clone()
        .unwrap_or_else(|| http_addr.to_string());

    let mut running = Running {
        node: None,
        worker: None,
        server: None,
        gateway: None,
        control_cancel: CancellationToken::new(),
        http_cancel: CancellationToken::new(),
        agent_cancel: CancellationToken::new(),
        worker_view: None,
        duties: Vec::new(),
        agent_tasks: Vec::new(),
        view: None,
        api: None,
        managers: None,
        triggers: Default::default(),
        secret: ClusterSecret::default(),
        health: strom_control_plane::health::Health::new(settings.node_id),
    };
    let invocations = InvocationStore::new(INVOCATION_RECORDS);

    // The management role: Raft member, admin API, leader duties.
    let mut bootstrap = Bootstrap::Existing;
    if let Some(control) = control {
        let mut config = ManagementConfig::new(
            &settings.data_dir,
            settings.node_id,
            &advertise,
            &format!("{scheme}://{advertise_http}"),
        );
        config.package_limits = settings.limits.clone();
        config.worker_lease = settings.worker_lease;
        config.keep_versions = settings.keep_versions;
        config.app_domain = settings.app_domain.clone();
        config.checkpoints = settings.checkpoints.clone();
        let node = ManagementNode::start(config)
            .await
            .map_err(|e| CliError::new(1, e.to_string()))?;
        running.node = Some(node.clone());
        running.secret = node.secret.clone();
        // The admin API learns about the local worker below, once it exists.
        let api = AdminApi::new(node.clone())
            .runs_instances(settings.worker)
            .containers_by_default(
                settings.worker
                    && settings.containers.default_runtime
                        == strom_proto::runtime_settings::RuntimeKind::Docker,
            );
        let worker_view = api.worker_slot();
        let view_slot = api.view_slot();
        running.api = Some(api.clone());
        {
            let node = node.clone();
            running.health.set_check("management", move || {
                strom_control_plane::health::management_check(&node)
            });
        }
        // A new cluster's control port accepts only once the cluster exists (a
        // client connecting meanwhile waits in the backlog, then is answered);
        // a joining or restarting member serves at once (its peers need it).
        let serve = {
            let (node, health, cancel) = (
                node.clone(),
                running.health.clone(),
                running.control_cancel.clone(),
            );
            move || tokio::spawn(control_server::serve(node, api, control, health, cancel))
        };
        let mut serve = Some(serve);
        if !new_cluster {
            running.server = serve.take().map(|s| s());
        }
        running.duties.push(tokio::spawn(
            strom_control_plane::checkpointer::run_checkpointer(
                node.clone(),
                running.control_cancel.clone(),
            ),
        ));
        running.duties.push(tokio::spawn(
            strom_control_plane::leader_duties::run_leader_duties(
                node.clone(),
                running.control_cancel.clone(),
            ),
        ));
        running
            .duties
            .push(tokio::spawn(strom_control_plane::leader_watch::run(
                node.clone(),
                running.control_cancel.clone(),
            )));
        running
            .duties
            .push(tokio::spawn(strom_control_plane::blob_gc::run(
                node.clone(),
                running.control_cancel.clone(),
            )));
        let started = match &settings.start {
            Start::Bootstrap => node.bootstrap(Duration::from_secs(30)).await,
            Start::Join { seeds, token } => {
                // A restart may leave the token out: it is in the data dir.
                let token = if token.is_empty() {
                    std::fs::read_to_string(settings.data_dir.join(JOIN_TOKEN_FILE))
                        .map(|t| t.trim().to_string())
                        .unwrap_or_default()
                } else {
                    token.clone()
                };
                let token = &token;
                let joined = node
                    .join(seeds, token, Duration::from_secs(60))
                    .await
                    .map(|_| Bootstrap::Existing);
                if joined.is_ok() && !token.is_empty() {
                    let path = settings.data_dir.join(JOIN_TOKEN_FILE);
                    if let Err(e) = write_secret_file(&path, token) {
                        tracing::warn!("{}: {e}", path.display());
                    }
                }
                joined
            }
        };
        if let Some(serve) = serve.take() {
            running.server = Some(serve());
        }
        match started {
            Ok(b) => bootstrap = b,
            Err(e) => {
                running.stop().await;
                return Err(CliError::new(1, e.to_string()));
            }
        }
        running.worker_view = Some(worker_view);
        // Deployments this node ran before a restart can never end: fail them (and
        // give back the version that served before) once a write can commit.
        if let Some(api) = running.api.clone() {
            let cancel = running.control_cancel.clone();
            running.duties.push(tokio::spawn(async move {
                for _ in 0..150 {
                    match api.abandon_own_deployments(started_ms).await {
                        Ok(0) => return,
                        Ok(n) => {
                            tracing::info!(
                                "failed {n} deployment(s) this node ran before it restarted"
                            );
                            return;
                        }
                        Err(e) => tracing::debug!("abandoning old deployments: {e}"),
                    }
                    tokio::select! {
                        _ = cancel.cancelled() => return,
                        _ = tokio::time::sleep(Duration::from_secs(2)) => {}
                    }
                }
            }));
        }
        // The worker and the gateway see the local applied state, projected; the
        // admin API acknowledges a write once they do (read-your-writes here).
        let local = cluster_view::local(
            node.state.clone(),
            settings.node_id,
            running.agent_cancel.clone(),
        );
        view_slot.set(local.projected);
        running.view = Some(local.view);
        running.agent_tasks.push(local.task);
    }

    // The worker role: register, follow the state, run instances.
    if settings.worker {
        if let Err(e) = start_worker(
            &settings,
            &advertise,
            &advertise_http,
            &mut running,
            &invocations,
        )
        .await
        {
            running.stop().await;
            return Err(e);
        }
    }
    // The gateway: local instances first, else other workers.
    let routing = match &running.worker {
        Some(w) => w.routing.clone(),
        None => RoutingTable::default(),
    };
    let view = running
        .view
        .clone()
        .expect("a node has the management role or a watched view");
    if let Some(listener) = http {
        let gateway = Gateway::new(
            GatewayConfig {
                node_id: settings.node_id,
                max_body_bytes: settings.max_request_body_bytes,
                cold_start_timeout: settings.startup_timeout,
                tls: node_tls(|t| t.rustls_server(), "TLS for the function port"),
                hop_tls: node_tls(|t| t.rustls_client(), "TLS client for the gateway hop"),
                secret: running.secret.clone(),
                http: settings.http,
                key_admin: key_admin(&running, &view),
                health: Some(running.health.clone()),
                triggers: running.triggers.clone(),
                ..GatewayConfig::default()
            },
            routing,
            view,
            invocations.clone(),
        );
        {
            let gateway = gateway.clone();
            running
                .health
                .set_check("gateway", move || gateway.readiness());
        }
        // `strom fn logs` through this node asks other workers with its client.
        if let Some(api) = &running.api {
            api.peers_slot().set(gateway.peer_invocations());
        }
        // The leader's timer duties send runs through this node's gateway.
        if let Some(node) = &running.node {
            node.duties.timers.set(Arc::new(gateway.clone()));
        }
        running.gateway = Some(tokio::spawn(
            gateway.serve(listener, running.http_cancel.clone()),
        ));
    }

    // Prometheus reads `/metrics` with this read-only token (never printed).
    if let Some(token) = running.secret.metrics_token() {
        let path = settings
            .data_dir
            .join(strom_control_plane::metrics::TOKEN_FILE);
        if std::fs::read_to_string(&path).ok().as_deref() != Some(token.as_str()) {
            if let Err(e) = write_secret_file(&path, &token) {
                tracing::warn!("{}: {e}", path.display());
            }
        }
    }

    // What the roles created on a first start (the Raft log and its folders) too;
    // later files are created 0600 (tempfile, write_secret_file).
    if first_start {
        if let Err(e) = crate::data_dir::secure(&settings.data_dir) {
            tracing::warn!("data dir {}: {e}", settings.data_dir.display());
        }
    }
    println!("strom {} — {title}", env!("CARGO_PKG_VERSION"));
    println!("  node:      {}", settings.node_id);
    println!("  data dir:  {}", settings.data_dir.display());
    if running.node.is_some() {
        println!("  control:   {scheme}://{control_addr}  (gRPC admin API)");
        println!("  portal:    {scheme}://{control_addr}/  (sign in with the admin token)");
    }
    println!(
        "  functions: {scheme}://{http_addr}{}",
        if running.worker.is_some() {
            ""
        } else {
            "  (routes to workers)"
        }
    );
    match (&bootstrap, &running.node) {
        (Bootstrap::Created { admin_token }, _) => {
            println!(
                "New cluster. Admin token (shown once; saved to {} with mode 0600):",
                settings.data_dir.join("admin.token").display()
            );
            println!("  {admin_token}");
        }
        (Bootstrap::Existing, Some(node)) => {
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
        (Bootstrap::Existing, None) => {
            if let Some(w) = &running.worker {
                let view = w.state.borrow().clone();
                println!(
                    "Worker of cluster {} (state at log index {}).",
                    view.cluster_id, view.applied_index
                );
            }
        }
    }

    if let Some(node) = &running.node {
        let in_containers = settings.worker
            && settings.containers.default_runtime
                == strom_proto::runtime_settings::RuntimeKind::Docker;
        if let Err(e) = deploy_dirs(node, &apps, settings.worker, in_containers).await {
            running.stop().await;
            return Err(e);
        }
    }
    let mut not_ready = 0;
    let mut reporter = None;
    if let (Some(node), Some(w)) = (&running.node, &running.worker) {
        wait_until_ready(node, w, settings.startup_timeout).await;
        print_running(node, settings.wide);
        let health = app_health(&node.read_local().state, &w.instances.borrow());
        not_ready = print_health(&health);
        reporter = Some(tokio::spawn(report_health_changes(
            node.clone(),
            w.instances.clone(),
            health,
            running.agent_cancel.clone(),
        )));
    }
    running.agent_tasks.extend(reporter);
    if not_ready == 0 {
        println!("Ready. Press Ctrl-C to stop.");
    } else {
        println!(
            "Started, but {not_ready} app{} not ready (see above; `strom app show APP`). Press Ctrl-C to stop.",
            if not_ready == 1 { " is" } else { "s are" }
        );
    }

    crate::lifecycle::started();
    let mut stops = crate::lifecycle::StopRequests::default();
    stops.next().await;
    // Not ready first, still serving, so a load balancer stops sending before
    // the ports close.
    running.health.stopping();
    if !settings.shutdown_delay.is_zero() {
        eprintln!(
            "stopping in {} s (not ready from now on)…",
            settings.shutdown_delay.as_secs_f64()
        );
        tokio::select! {
            _ = tokio::time::sleep(settings.shutdown_delay) => {}
            _ = stops.next() => {}
        }
    }
    eprintln!("stopping…");
    running.stop().await;
    Ok(())
}

/// A TLS configuration from this node's identity, if it has one (a configuration
/// that cannot be built is logged and left out).
fn node_tls<T>(
    make: impl FnOnce(&strom_control_plane::tls::NodeTls) -> Result<T, String>,
    what: &str,
) -> Option<T> {
    let tls = strom_control_plane::tls::current()?;
    match make(tls) {
        Ok(c) => Some(c),
        Err(e) => {
            tracing::error!("{what}: {e}");
            None
        }
    }
}

/// The join token file in a data dir (mode 0600).
pub const JOIN_TOKEN_FILE: &str = "join.token";

/// Start the worker role: register with the cluster, follow its state, start the
/// actor tree, heartbeat.
async fn start_worker(
    settings: &NodeSettings,
    advertise: &str,
    advertise_http: &str,
    running: &mut Running,
    invocations: &InvocationStore,
) -> Result<(), CliError> {
    let token_path = settings.data_dir.join(JOIN_TOKEN_FILE);
    let (seeds, token) = match (&settings.start, &running.node) {
        // The local management role is the first to ask; leader hints do the rest.
        (_, Some(_)) => (
            vec![advertise.to_string()],
            std::fs::read_to_string(&token_path).map_err(io_error(format!(
                "{} (the join token)",
                token_path.display()
            )))?,
        ),
        (Start::Join { seeds, token }, None) => {
            let token = if token.is_empty() {
                std::fs::read_to_string(&token_path).map_err(io_error(format!(
                    "{} (no --join-token given)",
                    token_path.display()
                )))?
            } else {
                token.clone()
            };
            (seeds.clone(), token)
        }
        (Start::Bootstrap, None) => {
            return Err(CliError::new(
                2,
                "a worker-only node cannot bootstrap a cluster: start it with --join",
            ))
        }
    };
    let token = token.trim().to_string();
    // The proof of membership: the management role's (it may create the token),
    // or this worker's from its join token.
    let secret = match &running.node {
        Some(node) => node.secret.clone(),
        None => ClusterSecret::from_join_token(&token),
    };
    running.secret = secret.clone();
    let managers = Managers::new(seeds, secret);
    running.managers = Some(managers.clone());
    let agent = Arc::new(Agent::new(
        WorkerOffer {
            node_id: settings.node_id,
            http_addr: advertise_http.to_string(),
            capacity_instances: settings.capacity.instances,
            capacity_memory_mb: settings.capacity.memory_mb,
            labels: settings.capacity.labels.clone(),
        },
        token.clone(),
        managers.clone(),
        &settings.data_dir,
    ));
    {
        let agent = agent.clone();
        running
            .health
            .set_check("worker", move || agent.readiness());
    }
    let lease = agent
        .register(Duration::from_secs(60))
        .await
        .map_err(|e| CliError::new(1, e))?;
    let cluster_id = managers.cluster_id();
    if running.node.is_none() {
        if let Err(e) = write_secret_file(&token_path, &token) {
            tracing::warn!("{}: {e}", token_path.display());
        }
    }
    let (state, packages) = match (&running.node, &running.view) {
        (Some(node), Some(view)) => (view.clone(), Packages::Local(node.clone())),
        _ => {
            let (tx, rx) = tokio::sync::watch::channel(Arc::new(WorkerView::new(settings.node_id)));
            running
                .agent_tasks
                .push(tokio::spawn(cluster_view::watch_remote(
                    agent.clone(),
                    tx,
                    running.agent_cancel.clone(),
                )));
            // Wait (bounded) for the first view, so the node starts with its apps.
            let mut first = rx.clone();
            let _ = tokio::time::timeout(
                Duration::from_secs(30),
                first.wait_for(|v: &Arc<WorkerView>| !v.cluster_id.is_empty()),
            )
            .await;
            running.view = Some(rx.clone());
            (rx, Packages::Remote(managers))
        }
    };
    let _ = advertise;
    let lifecycle = Lifecycle {
        startup_timeout: settings.startup_timeout,
        ..Lifecycle::default()
    };
    let worker = Worker::start(
        settings.node_id,
        cluster_id,
        &settings.data_dir,
        &settings.containers,
        lifecycle,
        state,
        packages,
        settings.limits.clone(),
    )
    .await
    .map_err(|e| CliError::new(1, format!("worker role: {e:#}")))?;
    if let Some(slot) = &running.worker_view {
        slot.set(LocalWorker {
            node_id: settings.node_id,
            invocations: invocations.clone(),
            instances: worker.instances.clone(),
        });
    }
    running.agent_tasks.push(tokio::spawn(agent.heartbeats(
        lease,
        worker.instances.clone(),
        running.triggers.clone(),
        running.agent_cancel.clone(),
    )));
    running.worker = Some(worker);
    Ok(())
}

/// Which `local.settings.json` Values each app last got, by hash (in the data
/// dir, 0600): a restart applies the file again only when it changed, so settings
/// changed since with `strom app settings set` are kept.
const APPLIED_LOCAL_SETTINGS: &str = "applied-local-settings.json";

fn values_hash(values: &BTreeMap<String, String>) -> String {
    use sha2::Digest;
    let json = serde_json::to_vec(values).expect("a map of strings");
    hex::encode(sha2::Sha256::digest(json))
}

fn read_applied(data_dir: &std::path::Path) -> BTreeMap<String, String> {
    std::fs::read(data_dir.join(APPLIED_LOCAL_SETTINGS))
        .ok()
        .and_then(|b| serde_json::from_slice(&b).ok())
        .unwrap_or_default()
}

/// The Values to send with `app`'s deploy: all of them when the file is new or
/// changed since they were last applied, none otherwise.
pub fn local_values_to_apply(
    applied: &BTreeMap<String, String>,
    app: &str,
    values: Option<&BTreeMap<String, String>>,
) -> Option<BTreeMap<String, String>> {
    let values = values?;
    (applied.get(app) != Some(&values_hash(values))).then(|| values.clone())
}

async fn deploy_dirs(
    node: &ManagementNode,
    apps: &[AppDir],
    runs_instances: bool,
    in_containers: bool,
) -> Result<(), CliError> {
    let api = Arc::new(
        AdminApi::new(node.clone())
            .runs_instances(runs_instances)
            .containers_by_default(in_containers),
    );
    wait_for_this_protocol(node, Duration::from_secs(10)).await;
    let data_dir = node.config.data_dir.clone();
    let mut applied = read_applied(&data_dir);
    for app in apps {
        let zip = pack(&app.dir)?;
        // local.settings.json Values go in with the version, so the first
        // instances already start with them — once per change of the file.
        let values = app.local.as_ref().map(|l| &l.values);
        let to_apply = local_values_to_apply(&applied, app.name.as_str(), values);
        if values.is_some() && to_apply.is_none() {
            println!(
                "app `{}`: {} unchanged since it was applied; keeping the current settings",
                app.name,
                local_settings::FILE
            );
        }
        let applying = to_apply.is_some();
        let settings = to_apply.unwrap_or_default();
        let resp = api
            .deploy_bytes(app.name.clone(), zip, settings)
            .await
            .map_err(|s| {
                let mut e = status_error(s);
                e.message = format!("deploying {}: {}", app.dir.display(), e.message);
                e
            })?;
        if let (true, Some(values)) = (applying, values) {
            applied.insert(app.name.to_string(), values_hash(values));
            let text = serde_json::to_string_pretty(&applied).expect("a map of strings");
            let path = data_dir.join(APPLIED_LOCAL_SETTINGS);
            if let Err(e) = write_secret_file(&path, &text) {
                tracing::warn!("{}: {e}", path.display());
            }
        }
        if resp.changed || applying {
            println!(
                "Deployed app `{}` version {}{}.",
                resp.app_name,
                &resp.version_id[..12],
                if applying {
                    format!(" with the settings of {}", local_settings::FILE)
                } else {
                    String::new()
                }
            );
        }
        for w in &resp.warnings {
            println!("Warning: {w}");
        }
    }
    Ok(())
}

/// A new cluster speaks the oldest protocol until its leader has heard from every
/// member and worker (a second or so): wait (bounded) for this build's, so that
/// apps deployed now or just after may share routes (a feature of protocol 5).
async fn wait_for_this_protocol(node: &ManagementNode, limit: Duration) {
    let mut state = node.state.clone();
    let reached = tokio::time::timeout(
        limit,
        state.wait_for(|v| v.state.protocol() >= strom_proto::version::PROTOCOL),
    )
    .await;
    if !matches!(reached, Ok(Ok(_))) {
        tracing::warn!(
            "the cluster still speaks protocol {} after {limit:?}: apps that share routes are refused until it speaks {}",
            node.read_local().state.protocol(),
            strom_proto::version::PROTOCOL
        );
    }
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
            // A scale-to-zero app with nothing placed has nothing to wait for.
            let idle = |app: &AppName| {
                view.state.apps.get(app).is_some_and(|a| wants_none(a))
                    && view
                        .state
                        .placements
                        .get(app)
                        .is_none_or(|p| p.values().sum::<u32>() == 0)
            };
            let served = view.state.apps.keys().all(|app| {
                idle(app)
                    || all.iter().any(|i| {
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

fn print_running(node: &ManagementNode, wide: bool) {
    let view = node.read_local();
    if view.state.apps.is_empty() {
        println!("No apps yet: deploy one with `strom app deploy DIR`.");
        return;
    }
    let mut functions = Vec::new();
    for app in view.state.apps.values() {
        functions.extend(strom_control_plane::admin_service::functions_of(
            &view.state,
            app,
            &app.active().manifest,
            &node.config,
        ));
    }
    print_functions(&functions, wide);
}

/// How one app is doing on this node, as `strom up` reports it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AppHealth {
    /// `ready` of the version's instances answer requests.
    Ready { ready: usize },
    /// Nothing answers yet; instances are starting.
    Starting,
    /// Nothing answers: its instances keep failing (the newest error).
    Failing(String),
    /// No instance is wanted now: scaled to 0, or a scale-to-zero batch app
    /// between its timer runs.
    Idle,
}

impl std::fmt::Display for AppHealth {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            AppHealth::Ready { ready } => write!(
                f,
                "ready ({ready} instance{})",
                if *ready == 1 { "" } else { "s" }
            ),
            AppHealth::Starting => f.write_str("starting"),
            AppHealth::Failing(e) => write!(f, "NOT ready: {e}"),
            AppHealth::Idle => f.write_str("no instance (scaled to zero until it is needed)"),
        }
    }
}

/// Each app's health from this node's instances: those of the active version
/// (a failing new instance never hides behind an old one that serves).
pub fn app_health(
    state: &strom_control_plane::cluster_state::ClusterState,
    instances: &[strom_proto::instances::InstanceStatus],
) -> BTreeMap<AppName, AppHealth> {
    use strom_proto::instances::InstanceState;
    state
        .apps
        .values()
        .map(|app| {
            let mine: Vec<_> = instances
                .iter()
                .filter(|i| i.app == app.name && i.version == app.active_version)
                .collect();
            let ready = mine
                .iter()
                .filter(|i| i.state == InstanceState::Ready)
                .count();
            let failing = mine.iter().find_map(|i| i.failure());
            let placed: u32 = state
                .placements
                .get(&app.name)
                .map_or(0, |p| p.values().sum());
            let health = match (ready, failing) {
                (0, Some(e)) => AppHealth::Failing(e.to_string()),
                (0, None) if placed == 0 && mine.is_empty() && wants_none(app) => AppHealth::Idle,
                (0, None) => AppHealth::Starting,
                (ready, _) => AppHealth::Ready { ready },
            };
            (app.name.clone(), health)
        })
        .collect()
}

/// Whether an app may rightly have no instance: scaled to 0, or scale-to-zero.
fn wants_none(app: &strom_control_plane::cluster_state::AppState) -> bool {
    app.scale == Some(0)
        || strom_control_plane::scheduler::app_requirements(&app.settings)
            .is_ok_and(|r| r.scale_to_zero)
}

/// Print each app's health; returns how many are not ready.
fn print_health(health: &BTreeMap<AppName, AppHealth>) -> usize {
    for (app, h) in health {
        println!("app `{app}`: {h}");
    }
    health
        .values()
        .filter(|h| !matches!(h, AppHealth::Ready { .. } | AppHealth::Idle))
        .count()
}

/// After start-up: say when an app becomes ready or starts failing.
async fn report_health_changes(
    node: ManagementNode,
    mut instances: tokio::sync::watch::Receiver<Arc<Vec<strom_proto::instances::InstanceStatus>>>,
    mut last: BTreeMap<AppName, AppHealth>,
    cancel: CancellationToken,
) {
    loop {
        tokio::select! {
            _ = cancel.cancelled() => return,
            changed = instances.changed() => if changed.is_err() { return },
        }
        // Let a burst of changes settle into one line per app.
        tokio::time::sleep(Duration::from_millis(200)).await;
        let now = app_health(&node.read_local().state, &instances.borrow_and_update());
        for (app, h) in &now {
            let kind = |h: &AppHealth| std::mem::discriminant(h);
            if last.get(app).map(kind) != Some(kind(h)) {
                // stdout may be gone (`strom up | head`): a lost line is no error.
                use std::io::Write;
                let _ = writeln!(std::io::stdout().lock(), "app `{app}`: {h}");
            }
        }
        last = now;
    }
}

/// Where this node's key management API writes: its admin API, or (worker only)
/// the management group.
fn key_admin(
    running: &Running,
    view: &tokio::sync::watch::Receiver<Arc<WorkerView>>,
) -> crate::gateway::KeyAdminHandle {
    let admin: Option<Arc<dyn crate::gateway::KeyAdmin>> = match (&running.api, &running.managers) {
        (Some(api), _) => Some(Arc::new(crate::key_admin::ManagementKeys(api.clone()))),
        (None, Some(managers)) => Some(Arc::new(crate::key_admin::RemoteKeys {
            managers: managers.clone(),
            secret: running.secret.clone(),
            view: view.clone(),
        })),
        (None, None) => None,
    };
    crate::gateway::KeyAdminHandle(admin)
}
