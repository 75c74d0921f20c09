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
//!
//! Files: [`engine`] (the connection and its errors), [`spec`] (what a container
//! is asked to be, and what the engine's answers mean: pure), [`lifecycle`]
//! (start, watch, stop), [`sweep`] (what no live instance owns), [`mount`] (the
//! app folder as containers see it). Building app images is not the runtime's
//! business: `crate::image_build`.

use std::collections::HashSet;
use std::sync::{Arc, Mutex};

use bollard::Docker;
use strom_proto::runtime_settings::RuntimeSettings;
use tokio::sync::OnceCell;

use super::{InstanceRuntime, InstanceSpec, RuntimeError, Started};

pub mod engine;
pub mod lifecycle;
pub mod mount;
pub mod spec;
pub mod sweep;

pub use engine::EngineOs;
pub use mount::open_up;

/// The port the handler listens on inside its container.
pub const CONTAINER_PORT: u16 = 8080;

/// Where the app's files are inside a Linux container (Azure's path).
pub const WWWROOT: &str = "/home/site/wwwroot";
/// … and inside a Windows container.
pub const WWWROOT_WINDOWS: &str = r"C:\home\site\wwwroot";

/// The user a Linux container runs as when neither the app nor the image names a
/// non-root one (`nobody`).
pub const DEFAULT_USER: &str = "65534:65534";

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
pub(crate) type Connection = Arc<OnceCell<(Docker, EngineOs)>>;

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
