//! The Docker runtime: each instance is a container, through the Docker Engine API
//! (bollard). Chosen per app with `STROM_RUNTIME=docker`.
//!
//! - Engine: local defaults (`/var/run/docker.sock`, `//./pipe/docker_engine` on
//!   Windows), `DOCKER_HOST` honored; the API version is negotiated, so older engines
//!   (API 1.41, Docker 20.10) work. Connected on first use and again after a failure:
//!   an engine that is down fails the starts of docker apps only.
//! - Linux or Windows containers: what the *engine* runs (`OSType` of its info), not
//!   what the worker was built for, picks the paths and the hardening below; the
//!   Windows parts are small and marked.
//! - Image: `STROM_CONTAINER_IMAGE` or the worker default. A missing image is an
//!   error naming it; it is pulled only when the worker allows pulls.
//! - The unpacked version folder is mounted read-only at `/home/site/wwwroot`
//!   (`C:\home\site\wwwroot` in Windows containers), the handler's executable and
//!   working directory resolve there, and it gets the process runtime's environment
//!   with `FUNCTIONS_CUSTOMHANDLER_PORT=8080` (the port inside the container). Linux:
//!   published on `127.0.0.1` at a port the engine picks. Windows (whose NAT cannot
//!   publish on one host address): reached at the container's own address. The
//!   handler must listen on all of the container's interfaces (`0.0.0.0`), since
//!   traffic arrives through its network.
//! - Network (Linux): every container joins the node's own bridge network
//!   (`strom-<node>-<cluster>`), created on first use with inter-container traffic
//!   off, so one app's containers cannot reach another's (or their own siblings').
//! - Limits (`STROM_MEMORY_MB`, `STROM_CONTAINER_CPUS`, `STROM_CONTAINER_PIDS`, or the
//!   worker defaults) and hardening on Linux: read-only root filesystem, a tmpfs
//!   `/tmp`, `no-new-privileges`, every capability dropped, an init process that
//!   forwards signals, and a non-root user (`65534:65534`) unless the image names a
//!   non-root user of its own or the app sets `STROM_CONTAINER_USER`.
//! - Exit: the engine's exit code; `OOMKilled` is reported as out of memory; an exit
//!   code of 128+N as signal N (what the init process reports).
//! - Never leaked: containers carry `strom.cluster`, `strom.node`, `strom.app`,
//!   `strom.version`, `strom.instance` labels; an ended container is removed; and
//!   [`DockerRuntime::sweep`] removes every container of this node that no live
//!   instance owns: at worker start (what a killed worker left), before each start,
//!   and at shutdown.

use std::collections::{HashMap, HashSet};
use std::net::{Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bollard::errors::Error as DockerError;
use bollard::models::{
    ContainerCreateBody, HostConfig, HostConfigLogConfig, Mount, MountType, PortBinding,
};
use bollard::query_parameters::{
    BuildImageOptionsBuilder, CreateContainerOptionsBuilder, CreateImageOptionsBuilder,
    ListContainersOptionsBuilder, LogsOptionsBuilder, RemoveContainerOptionsBuilder,
    StopContainerOptionsBuilder, WaitContainerOptionsBuilder,
};
use bollard::Docker;
use futures::StreamExt;
use strom_proto::runtime_settings::RuntimeSettings;
use tokio::sync::{broadcast, watch, OnceCell};

use super::{
    ExitInfo, InstanceControl, InstanceRuntime, InstanceSpec, LineSplitter, LogStream,
    RuntimeError, Started,
};

/// The port the handler listens on inside its container.
pub const CONTAINER_PORT: u16 = 8080;

/// Where the app's files are inside a Linux container (Azure's path).
pub const WWWROOT: &str = "/home/site/wwwroot";
/// … and inside a Windows container.
pub const WWWROOT_WINDOWS: &str = r"C:\home\site\wwwroot";

/// The user a Linux container runs as when neither the app nor the image names a
/// non-root one (`nobody`).
pub const DEFAULT_USER: &str = "65534:65534";

/// What the engine runs: Linux or Windows containers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EngineOs {
    Linux,
    Windows,
}

impl EngineOs {
    fn from_info(os_type: Option<&str>) -> EngineOs {
        match os_type {
            Some(t) if t.eq_ignore_ascii_case("windows") => EngineOs::Windows,
            _ => EngineOs::Linux,
        }
    }

    pub fn wwwroot(self) -> &'static str {
        match self {
            EngineOs::Linux => WWWROOT,
            EngineOs::Windows => WWWROOT_WINDOWS,
        }
    }

    fn separator(self) -> char {
        match self {
            EngineOs::Linux => '/',
            EngineOs::Windows => '\\',
        }
    }
}

pub const LABEL_CLUSTER: &str = "strom.cluster";
pub const LABEL_NODE: &str = "strom.node";
pub const LABEL_APP: &str = "strom.app";
pub const LABEL_VERSION: &str = "strom.version";
pub const LABEL_INSTANCE: &str = "strom.instance";

const NOT_READY_HINT: &str = "in a container the handler must listen on all interfaces \
(0.0.0.0:$FUNCTIONS_CUSTOMHANDLER_PORT), not 127.0.0.1";

/// Windows containers: how they are isolated from the host.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Isolation {
    /// The engine's default (process on Windows Server, hyperv on Windows client).
    #[default]
    Default,
    Process,
    HyperV,
}

impl std::str::FromStr for Isolation {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s.trim().to_ascii_lowercase().as_str() {
            "default" | "" => Ok(Isolation::Default),
            "process" => Ok(Isolation::Process),
            "hyperv" => Ok(Isolation::HyperV),
            _ => Err(format!(
                "`{s}` is not an isolation mode (process, hyperv, default)"
            )),
        }
    }
}

/// Worker configuration of the Docker runtime.
#[derive(Debug, Clone, Default)]
pub struct DockerConfig {
    /// Labels every container with these, and sweeps only its own.
    pub cluster: String,
    pub node: u64,
    /// What apps leave unset (image, limits, user).
    pub defaults: RuntimeSettings,
    /// Pull a missing image from its registry (off: a missing image is an error).
    pub allow_pull: bool,
    /// Windows containers only.
    pub isolation: Isolation,
    /// The engine's address (`unix://…`, `tcp://…`, `npipe://…`); default:
    /// `DOCKER_HOST`, else the local socket or pipe.
    pub engine: Option<String>,
}

/// The engine connection, made on first use (replaced to connect afresh).
type Connection = Arc<OnceCell<(Docker, EngineOs)>>;

/// Cheap to clone: clones share the connection, the live set and the sweep.
#[derive(Clone)]
pub struct DockerRuntime {
    config: Arc<DockerConfig>,
    client: Arc<Mutex<Connection>>,
    /// Names of the containers of live instances (the sweep leaves these alone).
    live: Arc<Mutex<HashSet<String>>>,
    /// A background sweep is running (one at a time).
    sweeping: Arc<std::sync::atomic::AtomicBool>,
    /// A container may have been left behind (a removal failed, a start was
    /// cancelled): the next start sweeps in the background.
    left_behind: Arc<std::sync::atomic::AtomicBool>,
    /// One network check-or-create at a time (an older engine would create two
    /// networks of the same name).
    network: Arc<tokio::sync::Mutex<()>>,
}

fn default_engine_address() -> String {
    std::env::var("DOCKER_HOST").unwrap_or_else(|_| {
        if cfg!(windows) {
            "npipe:////./pipe/docker_engine".into()
        } else {
            "unix:///var/run/docker.sock".into()
        }
    })
}

fn unreachable_at(engine: &str, e: impl std::fmt::Display) -> RuntimeError {
    RuntimeError::Other(format!(
        "the Docker engine at {engine} is unreachable (DOCKER_HOST names another): {e}"
    ))
}

fn unreachable(e: impl std::fmt::Display) -> RuntimeError {
    unreachable_at(&default_engine_address(), e)
}

fn is_not_found(e: &DockerError) -> bool {
    matches!(
        e,
        DockerError::DockerResponseServerError {
            status_code: 404,
            ..
        }
    )
}

/// A Docker error as one line: the engine's message when it gave one.
fn describe(e: &DockerError) -> String {
    match e {
        DockerError::DockerResponseServerError {
            status_code,
            message,
        } => format!("{message} (HTTP {status_code})"),
        other => other.to_string(),
    }
}

impl DockerRuntime {
    pub fn new(config: DockerConfig) -> DockerRuntime {
        DockerRuntime {
            config: Arc::new(config),
            client: Arc::new(Mutex::new(Arc::new(OnceCell::new()))),
            live: Arc::default(),
            sweeping: Arc::default(),
            left_behind: Arc::default(),
            network: Arc::default(),
        }
    }

    pub fn config(&self) -> &DockerConfig {
        &self.config
    }

    /// The engine client, connected (and its API version negotiated) on first use.
    pub async fn client(&self) -> Result<Docker, RuntimeError> {
        Ok(self.engine().await?.0)
    }

    /// The client and what the engine runs.
    pub async fn engine(&self) -> Result<(Docker, EngineOs), RuntimeError> {
        let cell = self.client.lock().expect("client lock").clone();
        let engine = self.engine_address();
        let connect = async {
            let docker = match &self.config.engine {
                Some(host) => Docker::connect_with_host(host),
                None => Docker::connect_with_defaults(),
            }
            .map_err(|e| unreachable_at(&engine, e))?;
            let ask = async {
                let docker = docker.negotiate_version().await?;
                let info = docker.info().await?;
                Ok::<_, DockerError>((docker, EngineOs::from_info(info.os_type.as_deref())))
            };
            tokio::time::timeout(Duration::from_secs(10), ask)
                .await
                .map_err(|_| unreachable_at(&engine, "no answer within 10 s"))?
                .map_err(|e| unreachable_at(&engine, describe(&e)))
        };
        cell.get_or_try_init(|| connect).await.cloned()
    }

    /// Where the engine is expected.
    pub fn engine_address(&self) -> String {
        self.config
            .engine
            .clone()
            .unwrap_or_else(default_engine_address)
    }

    /// After a connection failure, connect afresh next time (the engine may have
    /// restarted, or `DOCKER_HOST` pointed at a proxy that came back).
    fn reconnect_later(&self) {
        *self.client.lock().expect("client lock") = Arc::new(OnceCell::new());
    }

    fn labels(&self) -> HashMap<String, Vec<String>> {
        HashMap::from([(
            "label".to_string(),
            vec![
                format!("{LABEL_CLUSTER}={}", self.config.cluster),
                format!("{LABEL_NODE}={}", self.config.node),
            ],
        )])
    }

    /// Remove every container of this node (cluster + node labels) that no live
    /// instance owns; returns their names. An unreachable engine is an error.
    pub async fn sweep(&self) -> Result<Vec<String>, RuntimeError> {
        self.sweep_where(true).await
    }

    /// At shutdown, after the instances had their chance to stop: remove every
    /// container of this node, live or not.
    pub async fn sweep_all(&self) -> Result<Vec<String>, RuntimeError> {
        self.sweep_where(false).await
    }

    /// Remove this node's containers network (at shutdown, after its containers);
    /// the next start creates it again. In use or gone: left as it is.
    pub async fn remove_network(&self) {
        if let Ok(docker) = self.client().await {
            let _ = docker.remove_network(&self.network_name()).await;
        }
    }

    async fn sweep_where(&self, spare_live: bool) -> Result<Vec<String>, RuntimeError> {
        let docker = self.client().await?;
        let list = docker
            .list_containers(Some(
                ListContainersOptionsBuilder::new()
                    .all(true)
                    .filters(&self.labels())
                    .build(),
            ))
            .await
            .map_err(|e| self.engine_error(e))?;
        let mut removed = Vec::new();
        for c in list {
            let Some(name) = c
                .names
                .as_ref()
                .and_then(|n| n.first())
                .map(|n| n.trim_start_matches('/').to_string())
            else {
                continue;
            };
            if spare_live && self.live.lock().expect("live lock").contains(&name) {
                continue;
            }
            match remove(&docker, &name).await {
                Ok(()) => removed.push(name),
                Err(e) => tracing::warn!(container = %name, "cannot remove a stale container: {e}"),
            }
        }
        if !removed.is_empty() {
            tracing::warn!(?removed, "removed containers no live instance owns");
        }
        Ok(removed)
    }

    /// A sweep in the background (at most one at a time, bounded): a start does not
    /// wait on it.
    fn sweep_in_background(&self) {
        use std::sync::atomic::Ordering;
        if self.sweeping.swap(true, Ordering::AcqRel) {
            return;
        }
        let me = self.clone();
        tokio::spawn(async move {
            let done = match tokio::time::timeout(Duration::from_secs(60), me.sweep()).await {
                Ok(Err(e)) => {
                    tracing::warn!("sweeping stale containers: {e}");
                    false
                }
                Err(_) => {
                    tracing::warn!("sweeping stale containers took over 60 s");
                    false
                }
                Ok(Ok(_)) => true,
            };
            if !done {
                me.left_behind.store(true, Ordering::Release);
            }
            me.sweeping.store(false, Ordering::Release);
        });
    }

    /// An engine error: the engine's own answer, or (no answer) unreachable, and
    /// then a fresh connection next time.
    fn engine_error(&self, e: DockerError) -> RuntimeError {
        match e {
            DockerError::DockerResponseServerError { .. } => {
                RuntimeError::Other(format!("the Docker engine: {}", describe(&e)))
            }
            other => {
                self.reconnect_later();
                unreachable_at(&self.engine_address(), describe(&other))
            }
        }
    }

    /// The node's bridge network for its containers (Linux), created on first use:
    /// no traffic between containers (`enable_icc=false`); published ports work.
    pub fn network_name(&self) -> String {
        let cluster: String = self
            .config
            .cluster
            .chars()
            .filter(|c| c.is_ascii_alphanumeric())
            .take(12)
            .collect();
        format!("strom-{}-{cluster}", self.config.node)
    }

    /// The network's id (containers join it by id: names may be ambiguous).
    async fn ensure_network(&self, docker: &Docker) -> Result<String, RuntimeError> {
        let _one_at_a_time = self.network.lock().await;
        let name = self.network_name();
        match docker.inspect_network(&name, None).await {
            Ok(n) => {
                return n
                    .id
                    .ok_or_else(|| RuntimeError::Other(format!("network {name}: no id")))
            }
            Err(e) if is_not_found(&e) => {}
            Err(e) => return Err(self.engine_error(e)),
        }
        let request = bollard::models::NetworkCreateRequest {
            name: name.clone(),
            driver: Some("bridge".into()),
            options: Some(HashMap::from([(
                "com.docker.network.bridge.enable_icc".to_string(),
                "false".to_string(),
            )])),
            labels: Some(HashMap::from([
                (LABEL_CLUSTER.to_string(), self.config.cluster.clone()),
                (LABEL_NODE.to_string(), self.config.node.to_string()),
            ])),
            ..Default::default()
        };
        match docker.create_network(request).await {
            Ok(created) => Ok(created.id),
            Err(e) => Err(RuntimeError::Other(format!(
                "creating the containers' network {name}: {}",
                describe(&e)
            ))),
        }
    }

    /// The image, present on the engine (pulled first if allowed).
    async fn ensure_image(
        &self,
        docker: &Docker,
        image: &str,
    ) -> Result<bollard::models::ImageInspect, RuntimeError> {
        match docker.inspect_image(image).await {
            Ok(i) => return Ok(i),
            Err(e) if is_not_found(&e) && self.config.allow_pull => {}
            Err(e) if is_not_found(&e) => {
                return Err(RuntimeError::Other(format!(
                    "image `{image}` is not on this worker's Docker engine; build it \
                     (`strom image build`) or load it (`docker load`) on every worker, \
                     or let workers pull it (--container-allow-pull)"
                )))
            }
            Err(e) => return Err(self.engine_error(e)),
        }
        tracing::info!(%image, "pulling image");
        // Without a tag or digest the engine would pull every tag.
        let last = image.rsplit('/').next().unwrap_or(image);
        let mut options = CreateImageOptionsBuilder::new().from_image(image);
        if !last.contains(':') && !image.contains('@') {
            options = options.tag("latest");
        }
        let pull = async {
            let mut stream = docker.create_image(Some(options.build()), None, None);
            while let Some(step) = stream.next().await {
                step.map_err(|e| {
                    RuntimeError::Other(format!("pulling image `{image}` failed: {}", describe(&e)))
                })?;
            }
            Ok::<_, RuntimeError>(())
        };
        tokio::time::timeout(Duration::from_secs(900), pull)
            .await
            .map_err(|_| {
                RuntimeError::Other(format!("pulling image `{image}` took over 15 minutes"))
            })??;
        docker.inspect_image(image).await.map_err(|e| {
            RuntimeError::Other(format!("image `{image}` after the pull: {}", describe(&e)))
        })
    }

    #[allow(clippy::too_many_arguments)]
    fn body(
        &self,
        spec: &InstanceSpec,
        settings: &RuntimeSettings,
        image: &str,
        image_user: Option<&str>,
        source: &Path,
        os: EngineOs,
        network: Option<&str>,
    ) -> ContainerCreateBody {
        let root = os.wwwroot();
        let exe = &spec.handler.default_executable_path;
        let program = if Path::new(exe).is_relative() && spec.app_root.join(exe).is_file() {
            in_wwwroot(exe, os)
        } else {
            exe.clone()
        };
        let args = spec.expanded_arguments();
        let working_dir = match &spec.handler.working_directory {
            Some(w) if !w.is_empty() => in_wwwroot(w, os),
            _ => root.to_string(),
        };
        let mut env: Vec<String> = spec
            .settings
            .iter()
            .map(|(k, v)| format!("{k}={v}"))
            .collect();
        env.extend(
            spec.host_env(CONTAINER_PORT, root)
                .iter()
                .map(|(k, v)| format!("{k}={v}")),
        );
        let labels = HashMap::from([
            (LABEL_CLUSTER.to_string(), self.config.cluster.clone()),
            (LABEL_NODE.to_string(), self.config.node.to_string()),
            (LABEL_APP.to_string(), spec.app.to_string()),
            (LABEL_VERSION.to_string(), spec.version.to_string()),
            (LABEL_INSTANCE.to_string(), spec.instance_id.clone()),
        ]);
        let tcp = format!("{CONTAINER_PORT}/tcp");
        let mut host = HostConfig {
            mounts: Some(vec![Mount {
                target: Some(root.to_string()),
                source: Some(source.display().to_string()),
                typ: Some(MountType::BIND),
                read_only: Some(true),
                ..Default::default()
            }]),
            // Bounded logs: they are read as they come, kept only for `docker logs`.
            log_config: Some(HostConfigLogConfig {
                typ: Some("json-file".into()),
                config: Some(HashMap::from([
                    ("max-size".to_string(), "10m".to_string()),
                    ("max-file".to_string(), "2".to_string()),
                ])),
            }),
            nano_cpus: settings.nano_cpus,
            network_mode: network.map(str::to_string),
            memory: settings
                .memory_mb
                .filter(|m| *m > 0)
                .map(|mb| (mb * 1024 * 1024) as i64),
            ..Default::default()
        };
        let user = match os {
            EngineOs::Linux => harden_linux(&mut host, settings, image_user, &tcp),
            EngineOs::Windows => windows_host(&mut host, settings, self.config.isolation),
        };
        ContainerCreateBody {
            image: Some(image.to_string()),
            entrypoint: Some(vec![program]),
            cmd: Some(args),
            env: Some(env),
            working_dir: Some(working_dir),
            user,
            labels: Some(labels),
            exposed_ports: Some(vec![tcp]),
            host_config: Some(host),
            ..Default::default()
        }
    }
}

/// Windows' canonical paths carry the `\\?\` prefix, which bind mounts refuse.
fn plain_path(p: PathBuf) -> PathBuf {
    match p.to_str().and_then(|s| s.strip_prefix(r"\\?\")) {
        Some(rest) => PathBuf::from(rest),
        None => p,
    }
}

/// A path relative to the app root, inside the container.
fn in_wwwroot(rel: &str, os: EngineOs) -> String {
    let sep = os.separator();
    let mut rel = rel;
    // `./x`, `/x` and `.\x` are all `x` under the app root (as on the host).
    loop {
        if let Some(r) = rel.strip_prefix("./").or_else(|| rel.strip_prefix(".\\")) {
            rel = r;
        } else if let Some(r) = rel.strip_prefix(['/', '\\']) {
            rel = r;
        } else {
            break;
        }
    }
    if rel == "." {
        rel = "";
    }
    let rel: String = rel
        .chars()
        .map(|c| if c == '/' || c == '\\' { sep } else { c })
        .collect();
    if rel.is_empty() {
        os.wwwroot().to_string()
    } else {
        format!("{}{sep}{rel}", os.wwwroot())
    }
}

/// Linux containers: published on 127.0.0.1, hardened; returns the user to run as.
fn harden_linux(
    host: &mut HostConfig,
    settings: &RuntimeSettings,
    image_user: Option<&str>,
    tcp: &str,
) -> Option<String> {
    host.port_bindings = Some(HashMap::from([(
        tcp.to_string(),
        Some(vec![PortBinding {
            host_ip: Some(Ipv4Addr::LOCALHOST.to_string()),
            host_port: Some(String::new()),
        }]),
    )]));
    if let Some(bytes) = host.memory {
        // No swap beyond the memory limit: over it is out of memory.
        host.memory_swap = Some(bytes);
    }
    host.pids_limit = settings.pids;
    host.readonly_rootfs = Some(true);
    host.tmpfs = Some(HashMap::from([(
        "/tmp".to_string(),
        "rw,nosuid,nodev,size=64m".to_string(),
    )]));
    host.security_opt = Some(vec!["no-new-privileges".into()]);
    host.cap_drop = Some(vec!["ALL".into()]);
    // PID 1 that forwards SIGTERM and reaps children (the engine's docker-init).
    host.init = Some(true);
    let image_user = image_user.map(str::trim).filter(|u| !u.is_empty());
    let root = |u: &str| {
        let name = u.split(':').next().unwrap_or(u);
        name == "0" || name == "root"
    };
    match (&settings.user, image_user) {
        (Some(u), _) => Some(u.clone()),
        (None, Some(u)) if !root(u) => None,
        _ => Some(DEFAULT_USER.to_string()),
    }
}

/// Windows containers: no published port (Windows NAT cannot publish on one host
/// address; the worker reaches the container's own address), the isolation mode, and
/// none of what Windows lacks (read-only root, tmpfs, capabilities, pids, init). The
/// image's user (e.g. `ContainerUser` on nanoserver) applies unless the app names one.
fn windows_host(
    host: &mut HostConfig,
    settings: &RuntimeSettings,
    isolation: Isolation,
) -> Option<String> {
    use bollard::models::HostConfigIsolationEnum as I;
    host.isolation = Some(match isolation {
        Isolation::Default => I::DEFAULT,
        Isolation::Process => I::PROCESS,
        Isolation::HyperV => I::HYPERV,
    });
    settings.user.clone()
}

/// Force-remove a container (and its anonymous volumes); gone already is fine.
async fn remove(docker: &Docker, name: &str) -> Result<(), String> {
    match docker
        .remove_container(
            name,
            Some(
                RemoveContainerOptionsBuilder::new()
                    .force(true)
                    .v(true)
                    .build(),
            ),
        )
        .await
    {
        Ok(()) => Ok(()),
        Err(e) if is_not_found(&e) => Ok(()),
        Err(DockerError::DockerResponseServerError {
            status_code: 409, ..
        }) => Ok(()), // removal already in progress
        Err(e) => Err(describe(&e)),
    }
}

/// The container of a start in progress: if the start fails or is cancelled (its
/// future dropped) at any point, the container is removed and its name leaves the
/// live set, so nothing is left that the sweep would spare.
struct Pending {
    docker: Docker,
    name: String,
    live: Arc<Mutex<HashSet<String>>>,
    left_behind: Arc<std::sync::atomic::AtomicBool>,
    armed: bool,
}

impl Pending {
    fn new(runtime: &DockerRuntime, docker: &Docker, name: &str) -> Pending {
        runtime
            .live
            .lock()
            .expect("live lock")
            .insert(name.to_string());
        Pending {
            docker: docker.clone(),
            name: name.to_string(),
            live: runtime.live.clone(),
            left_behind: runtime.left_behind.clone(),
            armed: true,
        }
    }

    /// Started: the exit watcher owns the container (and its live entry) now.
    fn keep(mut self) {
        self.armed = false;
    }

    async fn fail(mut self) {
        self.armed = false;
        if remove(&self.docker, &self.name).await.is_err() {
            self.left_behind
                .store(true, std::sync::atomic::Ordering::Release);
        }
        self.live.lock().expect("live lock").remove(&self.name);
    }
}

impl Drop for Pending {
    fn drop(&mut self) {
        if !self.armed {
            return;
        }
        // Cancelled mid-start: remove in the background (a create still in flight
        // is caught by the next sweep, its name no longer being live).
        self.live.lock().expect("live lock").remove(&self.name);
        self.left_behind
            .store(true, std::sync::atomic::Ordering::Release);
        if let Ok(rt) = tokio::runtime::Handle::try_current() {
            let docker = self.docker.clone();
            let name = std::mem::take(&mut self.name);
            rt.spawn(async move {
                let _ = remove(&docker, &name).await;
            });
        }
    }
}

/// How a container's exit code reads. Linux: 128+N is signal N (what the init
/// process reports), and an out-of-memory kill is SIGKILL with the engine's OOM flag.
/// Windows: codes are unsigned (NTSTATUS values above `i32::MAX` shown in hex).
fn exit_from(code: i64, oom: bool, os: EngineOs) -> ExitInfo {
    match os {
        EngineOs::Linux if oom && code == 137 => ExitInfo::OutOfMemory,
        EngineOs::Linux if (129..=159).contains(&code) => ExitInfo::Signal((code - 128) as i32),
        EngineOs::Windows if code > i64::from(i32::MAX) || code < 0 => {
            ExitInfo::Other(format!("exited with code 0x{:08X}", code as u32))
        }
        _ => ExitInfo::Code(code as i32),
    }
}

/// Where the worker reaches the handler: the published port on 127.0.0.1 (Linux),
/// or the container's own address (Windows NAT). `None`: not there (yet).
fn endpoint_of(
    inspect: &bollard::models::ContainerInspectResponse,
    os: EngineOs,
) -> Option<SocketAddr> {
    let net = inspect.network_settings.as_ref()?;
    match os {
        EngineOs::Linux => net
            .ports
            .as_ref()?
            .get(&format!("{CONTAINER_PORT}/tcp"))
            .cloned()
            .flatten()?
            .into_iter()
            .find_map(|b| b.host_port.and_then(|p| p.parse::<u16>().ok()))
            .map(|port| SocketAddr::from((Ipv4Addr::LOCALHOST, port))),
        EngineOs::Windows => net
            .networks
            .as_ref()?
            .values()
            .find_map(|n| n.ip_address.as_deref().and_then(|ip| ip.parse().ok()))
            .map(|ip: std::net::IpAddr| SocketAddr::new(ip, CONTAINER_PORT)),
    }
}

#[async_trait::async_trait]
impl InstanceRuntime for DockerRuntime {
    fn name(&self) -> &'static str {
        "docker"
    }

    async fn start(&self, spec: &InstanceSpec) -> Result<Started, RuntimeError> {
        self.start_instance(spec).await
    }
}

impl DockerRuntime {
    /// Start one instance (see the module documentation).
    pub async fn start_instance(&self, spec: &InstanceSpec) -> Result<Started, RuntimeError> {
        let settings = RuntimeSettings::parse(&spec.settings)
            .map_err(|e| RuntimeError::Other(format!("app settings: {e}")))?
            .or(&self.config.defaults);
        let image = settings.image.clone().ok_or_else(|| {
            RuntimeError::Other(format!(
                "app `{}` runs in containers but names no image: set the app setting \
                 STROM_CONTAINER_IMAGE, or give workers --container-image",
                spec.app
            ))
        })?;
        let source: PathBuf = std::fs::canonicalize(&spec.app_root)
            .map(plain_path)
            .map_err(|e| {
                RuntimeError::Other(format!("app folder {}: {e}", spec.app_root.display()))
            })?;
        let (docker, os) = self.engine().await?;
        // What a lost engine connection or a cancelled start left behind (what a
        // killed worker left is swept when the worker starts).
        if self
            .left_behind
            .swap(false, std::sync::atomic::Ordering::AcqRel)
        {
            self.sweep_in_background();
        }
        let inspect = self.ensure_image(&docker, &image).await?;
        let image_user = inspect.config.as_ref().and_then(|c| c.user.clone());
        let name = format!("strom-{}", spec.instance_id);
        let network = match os {
            EngineOs::Linux => Some(self.ensure_network(&docker).await?),
            // Windows containers stay on the engine's `nat` network.
            EngineOs::Windows => None,
        };
        let body = self.body(
            spec,
            &settings,
            &image,
            image_user.as_deref(),
            &source,
            os,
            network.as_deref(),
        );
        let pending = Pending::new(self, &docker, &name);
        match self.create_and_start(&docker, &name, body, os).await {
            Ok((endpoint, pid)) => {
                pending.keep();
                Ok(self.watch(&docker, &name, endpoint, pid, spec, os))
            }
            Err(e) => {
                pending.fail().await;
                Err(e)
            }
        }
    }

    async fn create_and_start(
        &self,
        docker: &Docker,
        name: &str,
        body: ContainerCreateBody,
        os: EngineOs,
    ) -> Result<(SocketAddr, Option<u32>), RuntimeError> {
        let failed = |what: &str, e: DockerError| match e {
            DockerError::DockerResponseServerError { .. } => {
                RuntimeError::Other(format!("{what} container {name}: {}", describe(&e)))
            }
            other => self.engine_error(other),
        };
        docker
            .create_container(
                Some(CreateContainerOptionsBuilder::new().name(name).build()),
                body,
            )
            .await
            .map_err(|e| failed("creating", e))?;
        docker
            .start_container(name, None)
            .await
            .map_err(|e| failed("starting", e))?;
        let inspect = docker
            .inspect_container(name, None)
            .await
            .map_err(|e| failed("inspecting", e))?;
        let running = inspect
            .state
            .as_ref()
            .and_then(|s| s.running)
            .unwrap_or(false);
        // A handler that already exited has no address; its exit is reported by the
        // watcher like any other (with its output).
        let endpoint = match (endpoint_of(&inspect, os), running) {
            (Some(e), _) => e,
            (None, false) => SocketAddr::from((Ipv4Addr::LOCALHOST, 0)),
            (None, true) => {
                return Err(RuntimeError::Other(format!(
                    "container {name}: the engine gave no address for port {CONTAINER_PORT}"
                )))
            }
        };
        let pid = inspect
            .state
            .as_ref()
            .and_then(|s| s.pid)
            .filter(|p| *p > 0)
            .map(|p| p as u32);
        Ok((endpoint, pid))
    }

    /// Follow a started container's output and its end; the end is reported once
    /// its last lines are in, and then the container is removed.
    fn watch(
        &self,
        docker: &Docker,
        name: &str,
        endpoint: SocketAddr,
        pid: Option<u32>,
        spec: &InstanceSpec,
        os: EngineOs,
    ) -> Started {
        // Subscribed before the log stream starts: no line is missed.
        let (logs, lines) = broadcast::channel(1024);
        let logs_done = tokio::spawn(follow_logs(
            docker.clone(),
            name.to_string(),
            logs.clone(),
            spec.instance_id.clone(),
        ));
        let (exit_tx, exited) = watch::channel(None);
        let (removed_tx, removed) = watch::channel(false);
        let live = self.live.clone();
        let left_behind = self.left_behind.clone();
        let watcher_docker = docker.clone();
        let watcher_name = name.to_string();
        tokio::spawn(async move {
            let info = wait_exit(&watcher_docker, &watcher_name, os).await;
            // The log stream ends with the container; let it deliver the last lines.
            let _ = tokio::time::timeout(Duration::from_secs(2), logs_done).await;
            let _ = exit_tx.send(Some(info));
            match remove(&watcher_docker, &watcher_name).await {
                // Gone: the sweep may take the name from now on.
                Ok(()) => {
                    live.lock().expect("live lock").remove(&watcher_name);
                }
                // Still there (the engine is away): not live any more, so the next
                // sweep removes it.
                Err(e) => {
                    live.lock().expect("live lock").remove(&watcher_name);
                    left_behind.store(true, std::sync::atomic::Ordering::Release);
                    tracing::warn!(container = %watcher_name, "cannot remove the ended container (the next sweep will): {e}");
                }
            }
            let _ = removed_tx.send(true);
        });
        Started {
            endpoint,
            pid,
            logs,
            lines: Some(lines),
            exited: exited.clone(),
            control: Box::new(DockerControl {
                docker: docker.clone(),
                name: name.to_string(),
                exited,
                removed,
                stopped: false,
            }),
            not_ready_hint: Some(NOT_READY_HINT),
        }
    }
}

/// How the container ended. A lost engine connection ends the watch too (the
/// instance is replaced; the sweep removes the container once the engine answers).
async fn wait_exit(docker: &Docker, name: &str, os: EngineOs) -> ExitInfo {
    let mut wait = docker.wait_container(
        name,
        Some(
            WaitContainerOptionsBuilder::new()
                .condition("not-running")
                .build(),
        ),
    );
    let code = match wait.next().await {
        Some(Ok(r)) => r.status_code,
        Some(Err(DockerError::DockerContainerWaitError { code, .. })) => code,
        Some(Err(e)) => {
            return ExitInfo::Other(format!(
                "lost track of container {name}: the Docker engine: {}",
                describe(&e)
            ))
        }
        None => {
            return ExitInfo::Other(format!(
                "lost track of container {name}: the Docker engine closed the connection"
            ))
        }
    };
    let oom_flag = || async {
        match docker.inspect_container(name, None).await {
            Ok(i) => i.state.and_then(|s| s.oom_killed).unwrap_or(false),
            Err(_) => false,
        }
    };
    let mut oom = oom_flag().await;
    if !oom && code == 137 && os == EngineOs::Linux {
        // The OOM event can trail the exit a little.
        tokio::time::sleep(Duration::from_millis(200)).await;
        oom = oom_flag().await;
    }
    exit_from(code, oom, os)
}

async fn follow_logs(
    docker: Docker,
    name: String,
    tx: broadcast::Sender<super::LogLine>,
    instance: String,
) {
    let mut stream = docker.logs(
        &name,
        Some(
            LogsOptionsBuilder::new()
                .follow(true)
                .stdout(true)
                .stderr(true)
                .build(),
        ),
    );
    let mut out = LineSplitter::new(LogStream::Stdout, tx.clone(), instance.clone());
    let mut err = LineSplitter::new(LogStream::Stderr, tx, instance);
    while let Some(chunk) = stream.next().await {
        match chunk {
            Ok(bollard::container::LogOutput::StdOut { message })
            | Ok(bollard::container::LogOutput::Console { message }) => out.push(&message),
            Ok(bollard::container::LogOutput::StdErr { message }) => err.push(&message),
            Ok(bollard::container::LogOutput::StdIn { .. }) => {}
            Err(_) => break,
        }
    }
    out.finish();
    err.finish();
}

struct DockerControl {
    docker: Docker,
    name: String,
    exited: watch::Receiver<Option<ExitInfo>>,
    /// The watcher has removed the container (or given it to the sweep).
    removed: watch::Receiver<bool>,
    stopped: bool,
}

#[async_trait::async_trait]
impl InstanceControl for DockerControl {
    async fn stop(&mut self, grace: Duration) -> ExitInfo {
        self.stopped = true;
        if let Some(info) = self.exited.borrow().clone() {
            return info;
        }
        // SIGTERM, `grace`, then SIGKILL: the engine does both.
        let t = grace.as_secs_f64().ceil() as i32;
        if let Err(e) = self
            .docker
            .stop_container(
                &self.name,
                Some(StopContainerOptionsBuilder::new().t(t).build()),
            )
            .await
        {
            if !is_not_found(&e) {
                tracing::warn!(container = %self.name, "stopping: {}", describe(&e));
                // Removal kills it, if the engine answers at all.
                let _ = remove(&self.docker, &self.name).await;
            }
        }
        let ended = match tokio::time::timeout(
            grace + Duration::from_secs(10),
            self.exited.wait_for(|e| e.is_some()),
        )
        .await
        {
            Ok(Ok(v)) => v.clone(),
            _ => None,
        };
        let info = match ended {
            Some(info) => info,
            None => {
                let _ = remove(&self.docker, &self.name).await;
                ExitInfo::Other(format!(
                    "container {} did not report its end; it was removed",
                    self.name
                ))
            }
        };
        // Stopped means gone: the container is removed before this returns.
        let _ = tokio::time::timeout(Duration::from_secs(10), self.removed.wait_for(|r| *r)).await;
        info
    }
}

impl Drop for DockerControl {
    /// Dropped without a stop (an actor that failed before it could stop it): the
    /// container must not run on unowned.
    fn drop(&mut self) {
        if self.stopped || *self.removed.borrow() {
            return;
        }
        if let Ok(rt) = tokio::runtime::Handle::try_current() {
            let docker = self.docker.clone();
            let name = self.name.clone();
            rt.spawn(async move {
                let _ = remove(&docker, &name).await;
            });
        }
    }
}

/// Options of [`build_image`].
#[derive(Debug, Clone)]
pub struct ImageBuild {
    /// The app folder (host.json at its root); copied to the wwwroot path.
    pub app_dir: PathBuf,
    /// The base image (`scratch` for a statically linked handler).
    pub base: String,
    pub tag: String,
    /// Let the engine pull a missing base image.
    pub pull: bool,
}

#[derive(Debug, thiserror::Error)]
pub enum ImageBuildError {
    /// The folder, tag or base is wrong; nothing was built.
    #[error("{0}")]
    Input(String),
    #[error("{0}")]
    Unreachable(String),
    #[error("{0}")]
    Failed(String),
}

/// Build a local image for an app: `FROM <base>`, the app folder (as packed by
/// `strom app deploy`: `.funcignore` honored, `local.settings.json` left out) copied
/// to the wwwroot path, and on `scratch` a `nobody` user; it runs as 65534:65534.
/// The same image runs under `STROM_RUNTIME=docker` (which mounts the deployed
/// version over its copy) and under a bare `docker run`. Returns the image id.
pub async fn build_image(docker: &Docker, opts: &ImageBuild) -> Result<String, ImageBuildError> {
    use ImageBuildError::*;
    strom_proto::runtime_settings::parse_image(&opts.tag)
        .map_err(|e| Input(format!("--tag: {e}")))?;
    if opts.base != "scratch" {
        strom_proto::runtime_settings::parse_image(&opts.base)
            .map_err(|e| Input(format!("--base: {e}")))?;
    }
    let zip = strom_proto::manifest::pack_dir(&opts.app_dir)
        .map_err(|e| Input(format!("{}: {e}", opts.app_dir.display())))?;
    // Check it is an app before building (host.json, function folders).
    let limits = strom_proto::manifest::ZipLimits::default();
    let pkg = strom_proto::manifest::AppPackage::from_zip_bytes(&zip, &limits)
        .map_err(|e| Input(format!("{}: {e}", opts.app_dir.display())))?;
    strom_proto::manifest::validate_app_for(
        &pkg,
        &Default::default(),
        strom_proto::manifest::HandlerCheck::PackageOnly,
    )
    .map_err(|errors| {
        let lines: Vec<String> = errors.iter().map(|e| e.to_string()).collect();
        Input(format!("{}: {}", opts.app_dir.display(), lines.join("; ")))
    })?;
    let os = match docker.info().await {
        Ok(info) => EngineOs::from_info(info.os_type.as_deref()),
        Err(e) => return Err(Unreachable(unreachable(describe(&e)).to_string())),
    };
    if opts.base == "scratch" && os == EngineOs::Windows {
        return Err(Input(
            "--base: Windows images cannot start from scratch; name a Windows base image \
             matching the host (e.g. mcr.microsoft.com/windows/nanoserver:ltsc2022)"
                .into(),
        ));
    }
    if opts.base != "scratch" {
        match docker.inspect_image(&opts.base).await {
            Ok(_) => {}
            Err(e) if is_not_found(&e) && !opts.pull => {
                return Err(Input(format!(
                    "base image `{}` is not on this Docker engine (load it with `docker load`, \
                     or pass --pull to let the engine pull it)",
                    opts.base
                )))
            }
            Err(e) if is_not_found(&e) => {}
            Err(e) => return Err(Unreachable(unreachable(describe(&e)).to_string())),
        }
    }
    let context =
        context_tar(&zip, &opts.base, os).map_err(|e| Failed(format!("build context: {e}")))?;
    let mut options = BuildImageOptionsBuilder::new()
        .dockerfile("Dockerfile")
        .t(&opts.tag)
        .rm(true)
        .forcerm(true)
        .labels(&HashMap::from([(
            "strom.app-image".to_string(),
            "1".to_string(),
        )]));
    if opts.pull {
        options = options.pull("true");
    }
    let mut stream = docker.build_image(
        options.build(),
        None,
        Some(bollard::body_full(context.into())),
    );
    let mut id = None;
    let mut transcript = String::new();
    while let Some(step) = stream.next().await {
        let info =
            step.map_err(|e| Failed(format!("building `{}`: {}", opts.tag, describe(&e))))?;
        if let Some(detail) = info.error_detail.and_then(|d| d.message) {
            return Err(Failed(format!(
                "building `{}`: {detail}\n{transcript}",
                opts.tag
            )));
        }
        if let Some(s) = info.stream {
            transcript.push_str(&s);
        }
        if let Some(aux) = info.aux.and_then(|a| a.id) {
            id = Some(aux);
        }
    }
    match id {
        Some(id) => Ok(id),
        None => docker
            .inspect_image(&opts.tag)
            .await
            .ok()
            .and_then(|i| i.id)
            .ok_or_else(|| {
                Failed(format!(
                    "building `{}` produced no image:\n{transcript}",
                    opts.tag
                ))
            }),
    }
}

/// Where `strom image build` puts the app in a Windows image: not the wwwroot path,
/// since Windows mounts only onto a missing or empty folder.
pub const IMAGE_APP_WINDOWS: &str = "C:/strom/app";

/// The build context: a Dockerfile and the app's files (from the package zip, so
/// exactly what a deploy would ship, modes kept).
fn context_tar(zip: &[u8], base: &str, os: EngineOs) -> std::io::Result<Vec<u8>> {
    let staging = tempfile::tempdir()?;
    let app = staging.path().join("app");
    strom_proto::manifest::extract_to(zip, &app, &strom_proto::manifest::ZipLimits::default())
        .map_err(|e| std::io::Error::other(e.to_string()))?;
    open_up(&app)?;
    std::fs::write(staging.path().join("Dockerfile"), dockerfile(base, os))?;
    if base == "scratch" {
        std::fs::write(
            staging.path().join("passwd"),
            "root:x:0:0:root:/:/sbin/nologin\nnobody:x:65534:65534:nobody:/:/sbin/nologin\n",
        )?;
        std::fs::write(
            staging.path().join("group"),
            "root:x:0:\nnogroup:x:65534:\n",
        )?;
    }
    let mut tar = tar::Builder::new(Vec::new());
    tar.follow_symlinks(false);
    tar.append_dir_all(".", staging.path())?;
    tar.into_inner()
}

fn dockerfile(base: &str, os: EngineOs) -> String {
    let mut d = format!("FROM {base}\n");
    match os {
        EngineOs::Linux => {
            if base == "scratch" {
                d.push_str("COPY passwd /etc/passwd\nCOPY group /etc/group\n");
            }
            d.push_str(&format!(
                "COPY app {WWWROOT}\nWORKDIR {WWWROOT}\nUSER 65534:65534\n"
            ));
        }
        EngineOs::Windows => {
            d.push_str(&format!(
                "COPY app {IMAGE_APP_WINDOWS}\nWORKDIR {IMAGE_APP_WINDOWS}\n"
            ));
        }
    }
    d
}

/// Files readable and folders enterable by everyone (the container's user is not
/// their owner); executables stay executable.
#[cfg(unix)]
pub fn open_up(dir: &Path) -> std::io::Result<()> {
    use std::os::unix::fs::PermissionsExt;
    fn walk(path: &Path) -> std::io::Result<()> {
        let meta = std::fs::symlink_metadata(path)?;
        if meta.file_type().is_symlink() {
            return Ok(());
        }
        let mode = meta.permissions().mode() & 0o7777;
        let wanted = if meta.is_dir() || mode & 0o111 != 0 {
            mode | 0o555
        } else {
            mode | 0o444
        };
        if wanted != mode {
            std::fs::set_permissions(path, std::fs::Permissions::from_mode(wanted))?;
        }
        if meta.is_dir() {
            for entry in std::fs::read_dir(path)? {
                walk(&entry?.path())?;
            }
        }
        Ok(())
    }
    walk(dir)
}

#[cfg(not(unix))]
pub fn open_up(_dir: &Path) -> std::io::Result<()> {
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use EngineOs::{Linux, Windows};

    #[test]
    fn exit_codes_map_to_what_happened() {
        assert_eq!(exit_from(0, false, Linux), ExitInfo::Code(0));
        assert_eq!(exit_from(7, false, Linux), ExitInfo::Code(7));
        assert_eq!(exit_from(143, false, Linux), ExitInfo::Signal(15));
        assert_eq!(exit_from(137, false, Linux), ExitInfo::Signal(9));
        assert_eq!(exit_from(137, true, Linux), ExitInfo::OutOfMemory);
        // The flag alone (a child was OOM-killed, the handler exited by itself) is
        // not the handler running out of memory.
        assert_eq!(exit_from(0, true, Linux), ExitInfo::Code(0));
        assert_eq!(exit_from(143, false, Windows), ExitInfo::Code(143));
        assert_eq!(
            exit_from(0xC000_013A, false, Windows),
            ExitInfo::Other("exited with code 0xC000013A".into())
        );
    }

    #[test]
    fn paths_resolve_inside_wwwroot() {
        assert_eq!(in_wwwroot("handler", Linux), format!("{WWWROOT}/handler"));
        assert_eq!(
            in_wwwroot("./bin/handler", Linux),
            format!("{WWWROOT}/bin/handler")
        );
        assert_eq!(in_wwwroot("", Linux), WWWROOT);
        assert_eq!(in_wwwroot(".", Linux), WWWROOT);
        assert_eq!(
            in_wwwroot(".venv/bin/python", Linux),
            format!("{WWWROOT}/.venv/bin/python")
        );
        assert_eq!(in_wwwroot("/abs/x", Linux), format!("{WWWROOT}/abs/x"));
        assert_eq!(
            in_wwwroot("bin/handler.exe", Windows),
            r"C:\home\site\wwwroot\bin\handler.exe"
        );
        assert_eq!(
            in_wwwroot(r".\h.exe", Windows),
            r"C:\home\site\wwwroot\h.exe"
        );
        assert_eq!(
            plain_path(PathBuf::from(r"\\?\C:\data\apps\x")),
            PathBuf::from(r"C:\data\apps\x")
        );
        assert!("process".parse::<Isolation>().is_ok());
        assert!("HyperV".parse::<Isolation>().is_ok());
        assert!("vm"
            .parse::<Isolation>()
            .unwrap_err()
            .contains("process, hyperv"));
        assert_eq!(EngineOs::from_info(Some("windows")), Windows);
        assert_eq!(EngineOs::from_info(Some("linux")), Linux);
    }

    #[test]
    fn image_dockerfiles_fit_the_engine() {
        let linux = dockerfile("scratch", Linux);
        assert!(
            linux.starts_with("FROM scratch\nCOPY passwd /etc/passwd"),
            "{linux}"
        );
        assert!(
            linux.contains("COPY app /home/site/wwwroot\n") && linux.contains("USER 65534:65534")
        );
        let windows = dockerfile("mcr.microsoft.com/windows/nanoserver:ltsc2022", Windows);
        assert!(
            !windows.contains("wwwroot"),
            "Windows mounts only onto an empty folder: {windows}"
        );
        assert!(
            windows.contains("COPY app C:/strom/app") && !windows.contains("USER"),
            "{windows}"
        );
    }

    fn spec(dir: &Path) -> InstanceSpec {
        std::fs::write(dir.join("handler"), b"").unwrap();
        InstanceSpec {
            app: strom_proto::ids::AppName::parse("shop").unwrap(),
            version: strom_proto::ids::VersionId::of_bytes(b"v"),
            instance_id: "shop-1".into(),
            app_root: dir.to_path_buf(),
            handler: strom_proto::manifest::CustomHandler {
                default_executable_path: "handler".into(),
                arguments: vec!["--mode=%MODE%".into()],
                working_directory: Some("sub".into()),
                enable_forwarding_http_request: false,
            },
            settings: [("MODE".to_string(), "x".to_string())].into(),
        }
    }

    #[test]
    fn linux_containers_are_hardened_and_run_as_non_root() {
        let rt = DockerRuntime::new(DockerConfig {
            cluster: "c1".into(),
            node: 3,
            ..Default::default()
        });
        let dir = tempfile::tempdir().unwrap();
        let spec = spec(dir.path());
        let settings = RuntimeSettings {
            memory_mb: Some(64),
            nano_cpus: Some(500_000_000),
            pids: Some(32),
            ..Default::default()
        };
        let b = rt.body(
            &spec,
            &settings,
            "img:1",
            None,
            dir.path(),
            Linux,
            Some("strom-3-c1"),
        );
        let h = b.host_config.as_ref().unwrap();
        assert_eq!(b.entrypoint, Some(vec![format!("{WWWROOT}/handler")]));
        assert_eq!(b.cmd, Some(vec!["--mode=x".to_string()]));
        assert_eq!(b.working_dir.as_deref(), Some("/home/site/wwwroot/sub"));
        assert_eq!(b.user.as_deref(), Some(DEFAULT_USER));
        let env = b.env.as_ref().unwrap();
        assert!(env.contains(&"FUNCTIONS_CUSTOMHANDLER_PORT=8080".to_string()));
        assert!(env.contains(&format!("FUNCTIONS_APP_ROOT_PATH={WWWROOT}")));
        assert!(env.contains(&"MODE=x".to_string()));
        assert_eq!(b.labels.as_ref().unwrap()["strom.node"], "3");
        assert_eq!(h.memory, Some(64 << 20));
        assert_eq!(h.memory_swap, Some(64 << 20));
        assert_eq!(h.nano_cpus, Some(500_000_000));
        assert_eq!(h.pids_limit, Some(32));
        assert_eq!(h.readonly_rootfs, Some(true));
        assert_eq!(h.cap_drop, Some(vec!["ALL".to_string()]));
        assert_eq!(h.security_opt, Some(vec!["no-new-privileges".to_string()]));
        assert_eq!(h.init, Some(true));
        assert!(h.tmpfs.as_ref().unwrap().contains_key("/tmp"));
        assert_eq!(h.isolation, None);
        assert_eq!(h.network_mode.as_deref(), Some("strom-3-c1"));
        assert_eq!(rt.network_name(), "strom-3-c1");
        let binding = &h.port_bindings.as_ref().unwrap()["8080/tcp"]
            .as_ref()
            .unwrap()[0];
        assert_eq!(binding.host_ip.as_deref(), Some("127.0.0.1"));
        let m = &h.mounts.as_ref().unwrap()[0];
        assert_eq!(m.read_only, Some(true));
        assert_eq!(m.target.as_deref(), Some(WWWROOT));

        // The image's own non-root user is kept; a root one is not; the app wins.
        let b = rt.body(
            &spec,
            &settings,
            "img:1",
            Some("app:app"),
            dir.path(),
            Linux,
            None,
        );
        assert_eq!(b.user, None);
        let b = rt.body(
            &spec,
            &settings,
            "img:1",
            Some("root"),
            dir.path(),
            Linux,
            None,
        );
        assert_eq!(b.user.as_deref(), Some(DEFAULT_USER));
        let mine = RuntimeSettings {
            user: Some("0".into()),
            ..Default::default()
        };
        let b = rt.body(&spec, &mine, "img:1", Some("app"), dir.path(), Linux, None);
        assert_eq!(b.user.as_deref(), Some("0"));
        assert_eq!(
            b.host_config.unwrap().memory,
            None,
            "no memory limit unless set"
        );
    }

    #[test]
    fn windows_containers_get_their_paths_isolation_and_no_linux_options() {
        let rt = DockerRuntime::new(DockerConfig {
            cluster: "c1".into(),
            node: 3,
            isolation: Isolation::HyperV,
            ..Default::default()
        });
        let dir = tempfile::tempdir().unwrap();
        let spec = spec(dir.path());
        let settings = RuntimeSettings {
            memory_mb: Some(256),
            nano_cpus: Some(1_000_000_000),
            pids: Some(32),
            ..Default::default()
        };
        let b = rt.body(
            &spec,
            &settings,
            "win:1",
            Some("ContainerUser"),
            dir.path(),
            Windows,
            None,
        );
        let h = b.host_config.as_ref().unwrap();
        assert_eq!(
            b.entrypoint,
            Some(vec![r"C:\home\site\wwwroot\handler".to_string()])
        );
        assert_eq!(b.working_dir.as_deref(), Some(r"C:\home\site\wwwroot\sub"));
        assert!(b
            .env
            .as_ref()
            .unwrap()
            .contains(&r"FUNCTIONS_APP_ROOT_PATH=C:\home\site\wwwroot".to_string()));
        assert_eq!(b.user, None, "the image's user");
        assert_eq!(
            h.mounts.as_ref().unwrap()[0].target.as_deref(),
            Some(WWWROOT_WINDOWS)
        );
        assert_eq!(
            h.isolation,
            Some(bollard::models::HostConfigIsolationEnum::HYPERV)
        );
        assert_eq!(h.memory, Some(256 << 20));
        assert_eq!(h.nano_cpus, Some(1_000_000_000));
        // Windows NAT cannot publish on 127.0.0.1; Windows has none of these.
        assert_eq!(h.port_bindings, None);
        assert_eq!(h.memory_swap, None);
        assert_eq!(h.pids_limit, None);
        assert_eq!(h.readonly_rootfs, None);
        assert_eq!(h.tmpfs, None);
        assert_eq!(h.cap_drop, None);
        assert_eq!(h.security_opt, None);
        assert_eq!(h.init, None);
        assert_eq!(h.network_mode, None, "the engine's nat network");
    }

    #[cfg(unix)]
    #[test]
    fn unpacked_files_are_opened_to_the_container_user() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let sub = dir.path().join("sub");
        std::fs::create_dir(&sub).unwrap();
        std::fs::write(sub.join("data"), b"x").unwrap();
        std::fs::write(sub.join("run"), b"x").unwrap();
        let set =
            |p: &Path, m| std::fs::set_permissions(p, std::fs::Permissions::from_mode(m)).unwrap();
        set(&sub.join("data"), 0o600);
        set(&sub.join("run"), 0o700);
        set(&sub, 0o700);
        open_up(dir.path()).unwrap();
        let mode = |p: &Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode(&sub), 0o755);
        assert_eq!(mode(&sub.join("data")), 0o644);
        assert_eq!(mode(&sub.join("run")), 0o755);
    }
}
