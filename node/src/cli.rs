//! The `strom` command line.

use std::net::SocketAddr;
use std::path::PathBuf;

use clap::{Args, Parser, Subcommand, ValueEnum};

#[derive(Debug, Parser)]
#[command(
    name = "strom",
    version,
    about = "Strom runs Azure Functions apps (custom handlers) on servers you own.",
    long_about = "Strom runs Azure Functions apps (host.json + one folder per function with \
function.json, any language through the custom handler protocol) on a cluster of your own \
machines.\n\nStart a single-node cluster with `strom up [APP_DIR…]`; manage it with the client \
commands (`strom app …`, `strom fn …`, `strom cluster …`), which talk gRPC to a management node.\n\n\
Exit codes: 0 success, 1 error, 2 invalid input or usage, 3 not found, 4 authentication failed, \
5 server unavailable (unreachable, no leader, or no quorum)."
)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
    /// Log lines: `text` (default) or `json` (one object per line, with the node
    /// id and each event's fields). Read before the rest of the command line.
    #[arg(long, global = true, env = "STROM_LOG_FORMAT", value_parser = ["text", "json"])]
    pub log_format: Option<String>,
    /// Which log lines, in `tracing` filter syntax (`info`, `warn,strom_node=debug`);
    /// wins over `STROM_LOG`.
    #[arg(long, global = true)]
    pub log_level: Option<String>,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run a single-node cluster in the foreground and deploy the given app folders.
    Up(UpArgs),
    /// Run a node of a cluster: bootstrap a new cluster or join a running one.
    Serve(Box<ServeArgs>),
    /// Manage function apps.
    #[command(subcommand)]
    App(AppCommand),
    /// Functions: list them, manage their keys, show their invocations and logs.
    #[command(subcommand)]
    Fn(FnCommand),
    /// Inspect the cluster.
    #[command(subcommand)]
    Cluster(ClusterCommand),
    /// Operate on one node.
    #[command(subcommand)]
    Node(NodeCommand),
    /// Container images for apps (`STROM_RUNTIME=docker`), built locally.
    #[command(subcommand)]
    Image(ImageCommand),
    /// Run a node as a Windows service: `strom serve --config FILE`, started with
    /// Windows, restarted on failure, logging to `logs\` in its data dir (Windows
    /// only; on Linux run `strom serve` under systemd).
    #[command(subcommand)]
    Service(ServiceCommand),
}

#[derive(Debug, Subcommand)]
pub enum ServiceCommand {
    /// Register the service: checks the configuration first (nothing is registered
    /// when it is invalid), creates the data dir (SYSTEM and Administrators only),
    /// and registers `strom.exe serve --config FILE` to start automatically as
    /// LocalSystem, restarted when it fails. Does not start it.
    Install(ServiceArgs),
    /// Stop the service if it runs (a graceful stop), then remove it. The data dir
    /// is kept.
    Uninstall(ServiceArgs),
    /// Start the service and wait until the node serves.
    Start(ServiceArgs),
    /// Stop the service gracefully (drain, hand over leadership, stop the
    /// handlers) and wait until it has stopped.
    Stop(ServiceArgs),
}

#[derive(Debug, Args)]
pub struct ServiceArgs {
    /// The node's configuration (`strom serve`'s TOML file). `install` registers
    /// it; the other commands, when given, check that the service runs this one
    /// [default: %ProgramData%\Strom\strom.toml].
    #[arg(long)]
    pub config: Option<PathBuf>,
    /// The service's name; several nodes on one host need one each.
    #[arg(long, default_value = "Strom")]
    pub name: String,
    /// How long `start`, `stop` and `uninstall` wait for the service, in seconds.
    #[arg(long, default_value_t = 180)]
    pub timeout: u64,
}

#[derive(Debug, Subcommand)]
pub enum ImageCommand {
    /// Build a local image of an app folder: FROM the base, the app's files at
    /// /home/site/wwwroot, run as 65534:65534. No registry is needed; load it on
    /// every worker (`docker save TAG | docker load`) and name it in the app setting
    /// STROM_CONTAINER_IMAGE.
    Build {
        /// The app folder (host.json at its root).
        app_dir: PathBuf,
        /// The image's name and tag, e.g. `orders:1`.
        #[arg(long)]
        tag: String,
        /// The base image with the handler's language runtime; `scratch` for a
        /// statically linked handler.
        #[arg(long, default_value = "scratch")]
        base: String,
        /// Let the engine pull a base image that is not present locally.
        #[arg(long)]
        pull: bool,
    },
}

#[derive(Debug, Args)]
pub struct UpArgs {
    /// App folders to deploy on start (each holds host.json and function folders).
    pub app_dirs: Vec<PathBuf>,
    /// Where the node keeps its state (Raft log, snapshots, packages, tokens).
    #[arg(long, env = "STROM_DATA_DIR", default_value = "./.strom")]
    pub data_dir: PathBuf,
    /// Control port: gRPC admin API and internal RPC.
    #[arg(long, env = "STROM_CONTROL_ADDR", default_value = "127.0.0.1:7171")]
    pub control_addr: SocketAddr,
    /// Function HTTP port [default: 127.0.0.1:7071, or `Host.LocalHttpPort` of the
    /// first app's local.settings.json].
    #[arg(long, env = "STROM_HTTP_ADDR")]
    pub http_addr: Option<SocketAddr>,
    /// How long a handler may take to answer its readiness probe.
    #[arg(long, env = "STROM_STARTUP_TIMEOUT_SECS", default_value_t = 60)]
    pub startup_timeout_secs: u64,
    /// Largest HTTP request body accepted by the function port, in bytes.
    #[arg(long, env = "STROM_MAX_REQUEST_BODY_BYTES", default_value_t = 100 * 1024 * 1024)]
    pub max_request_body_bytes: usize,
    /// Largest app package accepted, in bytes.
    #[arg(long, env = "STROM_MAX_PACKAGE_BYTES", default_value_t = 256 * 1024 * 1024)]
    pub max_package_bytes: u64,
    /// Largest total uncompressed size of an app package, in bytes.
    #[arg(long, env = "STROM_MAX_UNCOMPRESSED_BYTES", default_value_t = 1024 * 1024 * 1024)]
    pub max_uncompressed_bytes: u64,
    /// Most entries (files and folders) in an app package.
    #[arg(long, env = "STROM_MAX_PACKAGE_ENTRIES", default_value_t = 10_000)]
    pub max_package_entries: u32,
    /// Versions kept per app; older ones are forgotten and their packages removed.
    #[arg(long, env = "STROM_KEEP_VERSIONS", default_value_t = 10)]
    pub keep_versions: usize,
    /// Export traces (OpenTelemetry, OTLP over gRPC) to this collector, e.g.
    /// `http://127.0.0.1:4317` (`https://` is checked against the system's roots)
    /// [default: off].
    #[arg(long, env = "OTEL_EXPORTER_OTLP_ENDPOINT")]
    pub otlp_endpoint: Option<String>,
    /// Each app's own address is `{app}.<domain>` on the function port (`*.localhost`
    /// reaches this machine without DNS); the bare address serves a route only
    /// while one app claims it.
    #[arg(long, env = "STROM_APP_DOMAIN", default_value = "localhost")]
    pub app_domain: String,
    /// Print the function table as wide as its contents (whole keys); by default
    /// it fits 100 columns.
    #[arg(long)]
    pub wide: bool,
    /// Function port: seconds a client may take to send a request's headers (and
    /// the TLS handshake); longer closes the connection.
    #[arg(long, env = "STROM_HTTP_HEADER_TIMEOUT_SECS", default_value_t = 30)]
    pub http_header_timeout_secs: u64,
    /// Function port: longest pause in seconds while a request body arrives (408).
    #[arg(long, env = "STROM_HTTP_BODY_TIMEOUT_SECS", default_value_t = 30)]
    pub http_body_timeout_secs: u64,
    /// Function port: seconds a connection with no request in flight stays open.
    #[arg(long, env = "STROM_HTTP_IDLE_TIMEOUT_SECS", default_value_t = 120)]
    pub http_idle_timeout_secs: u64,
    /// Function port: connections open at once; one more gets 503.
    #[arg(long, env = "STROM_HTTP_MAX_CONNECTIONS", default_value_t = 10_000)]
    pub http_max_connections: usize,
    #[command(flatten)]
    pub containers: ContainerArgs,
}

/// The worker's instance runtimes: which one apps get by default, and the container
/// defaults for apps that set none (app settings `STROM_RUNTIME`,
/// `STROM_CONTAINER_IMAGE`, `STROM_MEMORY_MB`, `STROM_CONTAINER_CPUS`,
/// `STROM_CONTAINER_PIDS`, `STROM_CONTAINER_USER` win).
#[derive(Debug, Default, Clone, Args, serde::Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case", default)]
pub struct ContainerArgs {
    // Keep CONTAINER_KEYS in step with these fields.
    /// Worker: runtime of apps without `STROM_RUNTIME`: `process` or `docker`
    /// [default: process].
    #[arg(long, env = "STROM_DEFAULT_RUNTIME")]
    pub default_runtime: Option<String>,
    /// Worker: image of container apps without `STROM_CONTAINER_IMAGE`.
    #[arg(long, env = "STROM_CONTAINER_IMAGE")]
    pub container_image: Option<String>,
    /// Worker: memory limit (MiB) of container apps without `STROM_MEMORY_MB`
    /// [default: none].
    #[arg(long, env = "STROM_CONTAINER_MEMORY_MB")]
    pub container_memory_mb: Option<String>,
    /// Worker: CPUs (e.g. 0.5) of container apps without `STROM_CONTAINER_CPUS`.
    #[arg(long, env = "STROM_CONTAINER_CPUS")]
    pub container_cpus: Option<String>,
    /// Worker: process limit of container apps without `STROM_CONTAINER_PIDS`.
    #[arg(long, env = "STROM_CONTAINER_PIDS")]
    pub container_pids: Option<String>,
    /// Worker: `user[:group]` of container apps without `STROM_CONTAINER_USER`
    /// [default: the image's non-root user, else 65534:65534].
    #[arg(long, env = "STROM_CONTAINER_USER")]
    pub container_user: Option<String>,
    /// Worker: pull a missing image from its registry (off: a missing image is an
    /// error in the instance's status).
    #[arg(long, env = "STROM_CONTAINER_ALLOW_PULL")]
    #[serde(default)]
    pub container_allow_pull: bool,
    /// Worker on Windows: container isolation, `process` or `hyperv` [default: the
    /// engine's].
    #[arg(long, env = "STROM_CONTAINER_ISOLATION")]
    pub container_isolation: Option<String>,
}

/// The `--config` file keys of [`ContainerArgs`].
pub const CONTAINER_KEYS: [&str; 8] = [
    "default-runtime",
    "container-image",
    "container-memory-mb",
    "container-cpus",
    "container-pids",
    "container-user",
    "container-allow-pull",
    "container-isolation",
];

impl ContainerArgs {
    /// Fill what is unset here from `file`.
    pub fn or(self, file: ContainerArgs) -> ContainerArgs {
        ContainerArgs {
            default_runtime: self.default_runtime.or(file.default_runtime),
            container_image: self.container_image.or(file.container_image),
            container_memory_mb: self.container_memory_mb.or(file.container_memory_mb),
            container_cpus: self.container_cpus.or(file.container_cpus),
            container_pids: self.container_pids.or(file.container_pids),
            container_user: self.container_user.or(file.container_user),
            container_allow_pull: self.container_allow_pull || file.container_allow_pull,
            container_isolation: self.container_isolation.or(file.container_isolation),
        }
    }
}

/// `strom serve`: every setting may also come from a TOML file (`--config`, keys as
/// the flags without `--`, e.g. `node-id = 2`) or a `STROM_*` variable; flags win over
/// variables, which win over the file.
#[derive(Debug, Default, Args, serde::Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case", default)]
pub struct ServeArgs {
    /// A TOML file with any of these settings.
    #[arg(long, env = "STROM_CONFIG")]
    #[serde(skip)]
    pub config: Option<PathBuf>,
    /// Run as the Windows service of this name (set by `strom service install`).
    #[arg(long, hide = true, value_name = "SERVICE")]
    #[serde(skip)]
    pub windows_service: Option<String>,
    /// This node's id (≥ 1), unique in the cluster and kept for its data dir.
    #[arg(long, env = "STROM_NODE_ID")]
    pub node_id: Option<u64>,
    /// Roles, comma-separated: `management`, `worker` [default: management,worker].
    #[arg(long, env = "STROM_ROLES", value_delimiter = ',')]
    pub roles: Option<Vec<String>>,
    /// Where the node keeps its state [default: ./.strom; on Windows
    /// %ProgramData%\Strom].
    #[arg(long, env = "STROM_DATA_DIR")]
    pub data_dir: Option<PathBuf>,
    /// Control port [default: 127.0.0.1:7171].
    #[arg(long, env = "STROM_CONTROL_ADDR")]
    pub control_addr: Option<SocketAddr>,
    /// Function HTTP port; every node serves it (a node without the worker role
    /// routes to workers) [default: 127.0.0.1:7071].
    #[arg(long, env = "STROM_HTTP_ADDR")]
    pub http_addr: Option<SocketAddr>,
    /// Control address other nodes use to reach this one [default: the control address].
    #[arg(long, env = "STROM_ADVERTISE_ADDR")]
    pub advertise_addr: Option<String>,
    /// Create a new cluster of this node (only once; a restart needs no flag).
    #[arg(long)]
    pub bootstrap: bool,
    /// Join a running cluster through these control URLs (comma-separated).
    #[arg(long, env = "STROM_JOIN", value_delimiter = ',')]
    pub join: Option<Vec<String>>,
    /// The cluster's join token (`join.token` in the first node's data dir).
    #[arg(long, env = "STROM_JOIN_TOKEN", hide_env_values = true)]
    pub join_token: Option<String>,
    /// How long a handler may take to answer its readiness probe, in seconds [default: 60].
    #[arg(long, env = "STROM_STARTUP_TIMEOUT_SECS")]
    pub startup_timeout_secs: Option<u64>,
    /// Function port address other nodes forward requests to [default: the HTTP address].
    #[arg(long, env = "STROM_ADVERTISE_HTTP_ADDR")]
    pub advertise_http_addr: Option<String>,
    /// Worker: most instances (of all apps) it runs [default: 64].
    #[arg(long, env = "STROM_CAPACITY_INSTANCES")]
    pub capacity_instances: Option<u32>,
    /// Worker: memory for instances in MiB, reserved by apps' `STROM_MEMORY_MB`
    /// [default: 0 = not limited].
    #[arg(long, env = "STROM_CAPACITY_MEMORY_MB")]
    pub capacity_memory_mb: Option<u64>,
    /// Worker: labels apps can require with `STROM_WORKER_LABELS`, comma-separated
    /// `key=value` pairs.
    #[arg(long, env = "STROM_LABELS", value_delimiter = ',')]
    pub labels: Option<Vec<String>>,
    /// Management: a worker silent this long (milliseconds) is Down and its
    /// instances are placed elsewhere [default: 5000].
    #[arg(long, env = "STROM_WORKER_LEASE_MS")]
    pub worker_lease_ms: Option<u64>,
    /// Management: versions kept per app; older ones are forgotten (no rollback to
    /// them) and their packages removed from every node. Set the same on every
    /// management node (the leader's applies) [default: 10].
    #[arg(long, env = "STROM_KEEP_VERSIONS")]
    pub keep_versions: Option<usize>,
    /// Each app's own address is `{app}.<domain>` on the function port: point a
    /// wildcard DNS name (`*.functions.example.com`) at the nodes; the bare address
    /// serves a route only while one app claims it. Shown in function URLs
    /// [default: localhost].
    #[arg(long, env = "STROM_APP_DOMAIN")]
    pub app_domain: Option<String>,
    /// Function port: seconds a client may take to send a request's headers (and
    /// the TLS handshake) [default: 30].
    #[arg(long, env = "STROM_HTTP_HEADER_TIMEOUT_SECS")]
    pub http_header_timeout_secs: Option<u64>,
    /// Function port: longest pause in seconds while a request body arrives (408)
    /// [default: 30].
    #[arg(long, env = "STROM_HTTP_BODY_TIMEOUT_SECS")]
    pub http_body_timeout_secs: Option<u64>,
    /// Function port: seconds a connection with no request in flight stays open
    /// [default: 120].
    #[arg(long, env = "STROM_HTTP_IDLE_TIMEOUT_SECS")]
    pub http_idle_timeout_secs: Option<u64>,
    /// Function port: connections open at once; one more gets 503 [default: 10000].
    #[arg(long, env = "STROM_HTTP_MAX_CONNECTIONS")]
    pub http_max_connections: Option<usize>,
    /// TLS: this node's certificate chain (PEM). With --tls-key and --tls-ca, every
    /// listener serves TLS and node-to-node connections use mutual TLS.
    #[arg(long, env = "STROM_TLS_CERT")]
    pub tls_cert: Option<PathBuf>,
    /// TLS: this node's private key (PEM).
    #[arg(long, env = "STROM_TLS_KEY")]
    pub tls_key: Option<PathBuf>,
    /// TLS: the CA certificate that signed every node's certificate (PEM).
    #[arg(long, env = "STROM_TLS_CA")]
    pub tls_ca: Option<PathBuf>,
    /// On SIGTERM/Ctrl-C, seconds to answer not-ready on `/readyz` (still serving)
    /// before stopping, so a load balancer stops sending first; a second signal
    /// stops at once [default: 5].
    #[arg(long, env = "STROM_SHUTDOWN_DELAY_SECS")]
    pub shutdown_delay_secs: Option<u64>,
    /// Export traces (OpenTelemetry, OTLP over gRPC) to this collector, e.g.
    /// `http://127.0.0.1:4317` (`https://` is checked against the system's roots)
    /// [default: off].
    #[arg(long, env = "OTEL_EXPORTER_OTLP_ENDPOINT")]
    pub otlp_endpoint: Option<String>,
    /// Management: where the leader writes checkpoints of the cluster's state:
    /// `local:DIR` (a directory, may be a network share) or
    /// `sqlserver:<ADO.NET connection string>` (`sqlserver:@FILE` reads it from a
    /// file, keeping the password off the command line) [default: none].
    #[arg(long, env = "STROM_CHECKPOINT_STORE", hide_env_values = true)]
    pub checkpoint_store: Option<String>,
    /// Management: a checkpoint after this many committed entries [default: 10000].
    #[arg(long, env = "STROM_CHECKPOINT_EVERY_ENTRIES")]
    pub checkpoint_every_entries: Option<u64>,
    /// Management: a checkpoint at least this often while anything changes, e.g.
    /// `15m`, `1h` [default: 15m].
    #[arg(long, env = "STROM_CHECKPOINT_EVERY")]
    pub checkpoint_every: Option<String>,
    /// Management: checkpoints kept in the store per cluster (older ones, and
    /// packages no kept checkpoint references, are deleted) [default: 10].
    #[arg(long, env = "STROM_CHECKPOINT_KEEP")]
    pub checkpoint_keep: Option<usize>,
    /// In a `--config` file, these keys sit beside the others (`default-runtime = …`).
    #[command(flatten)]
    #[serde(skip)]
    pub containers: ContainerArgs,
}

/// How a client command reaches and authenticates to a management node.
#[derive(Debug, Clone, Args)]
pub struct ClientArgs {
    /// Management nodes' control URLs, comma-separated (`http://a:7171,http://b:7171`):
    /// a call goes to the first that answers. Members learned from the cluster
    /// (kept in `client.json` in --data-dir) are tried after these.
    #[arg(long, env = "STROM_SERVER", default_value = "http://127.0.0.1:7171")]
    pub server: String,
    /// Deadline of each call on one member: seconds, or a duration like `500ms`,
    /// `2m`; `0` waits forever. An upload instead fails after 15 s without progress.
    #[arg(long, env = "STROM_TIMEOUT", default_value = "15")]
    pub timeout: String,
    /// Say which member answered (and which did not) on stderr.
    #[arg(long, short = 'v')]
    pub verbose: bool,
    /// Admin token (default: `admin.token` in --data-dir).
    #[arg(long, env = "STROM_TOKEN", hide_env_values = true)]
    pub token: Option<String>,
    /// CA certificate (PEM) to verify an `https://` server with.
    #[arg(long, env = "STROM_CA_CERT")]
    pub ca_cert: Option<PathBuf>,
    /// Data dir whose `admin.token` is used when --token is not given.
    #[arg(long, env = "STROM_DATA_DIR", default_value = "./.strom")]
    pub data_dir: PathBuf,
    /// Output format.
    #[arg(long, value_enum, default_value_t = Output::Table)]
    pub output: Output,
    /// Tables as wide as their contents (whole keys); by default function tables
    /// fit 100 columns.
    #[arg(long)]
    pub wide: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Output {
    Table,
    Json,
}

#[derive(Debug, Subcommand)]
pub enum AppCommand {
    /// Zip an app folder (honoring .funcignore), or take a ready-made zip, and
    /// deploy it as a new version.
    Deploy {
        /// The app folder (`host.json` and one folder per function), or a zip of
        /// it as Azure zip deploy takes (`host.json` at the zip's root).
        dir: PathBuf,
        /// App name (default: the folder's name).
        #[arg(long)]
        name: Option<String>,
        /// Also set the `Values` of the folder's local.settings.json as app
        /// settings, together with the new version (as `func … publish
        /// --publish-local-settings` does).
        #[arg(long)]
        publish_local_settings: bool,
        #[command(flatten)]
        client: ClientArgs,
    },
    /// List apps.
    List {
        #[command(flatten)]
        client: ClientArgs,
    },
    /// Show an app: versions, active version, functions with their URLs.
    Show {
        /// The app's name (as `strom app list` shows it).
        name: String,
        #[command(flatten)]
        client: ClientArgs,
    },
    /// Delete an app and all its versions.
    Delete {
        /// The app's name (as `strom app list` shows it).
        name: String,
        #[command(flatten)]
        client: ClientArgs,
    },
    /// App settings (passed to the handler as environment variables).
    #[command(subcommand)]
    Settings(SettingsCommand),
    /// Set how many instances of the app run.
    Scale {
        /// The app's name (as `strom app list` shows it).
        name: String,
        /// Instances to run (0 stops the app without deleting it).
        instances: u32,
        #[command(flatten)]
        client: ClientArgs,
    },
    /// Make an earlier version active again.
    Rollback {
        /// The app's name (as `strom app list` shows it).
        name: String,
        /// Version id or a unique prefix (≥ 7 hex digits).
        version: String,
        #[command(flatten)]
        client: ClientArgs,
    },
    /// The app's deployment history, newest first (zip deploys, `strom app
    /// deploy`, `strom up`): who, when, status, the version, why one failed.
    Deployments {
        /// The app's name.
        name: String,
        #[command(flatten)]
        client: ClientArgs,
    },
    /// The app's deployment credential for the publishing endpoint (HTTP Basic,
    /// user `$NAME`; valid for this app's zip deploy only). Made and shown once;
    /// kept hashed, so an existing one is not shown again: `--rotate` makes a new
    /// one (the old one stops working).
    Credentials {
        /// The app's name.
        name: String,
        /// Make a new credential even if one exists.
        #[arg(long, conflicts_with = "delete")]
        rotate: bool,
        /// Remove the credential (only the admin token deploys the app then).
        #[arg(long)]
        delete: bool,
        #[command(flatten)]
        client: ClientArgs,
    },
    /// Write a publish profile (`.PublishSettings`, as Visual Studio imports for
    /// zip deploy) naming this cluster's publishing endpoint and the app's
    /// deployment credential. Makes the credential if the app has none; with one,
    /// `--rotate` is needed (it is stored hashed and cannot be shown again).
    PublishProfile {
        /// The app's name.
        name: String,
        /// Where to write it (mode 0600: it holds the credential).
        #[arg(long, short = 'o', default_value = "NAME.PublishSettings")]
        out: PathBuf,
        /// Make a new credential for the profile (the old one stops working).
        #[arg(long)]
        rotate: bool,
        /// The publishing endpoint as the tools should reach it (default: --server).
        #[arg(long)]
        publish_url: Option<String>,
        #[command(flatten)]
        client: ClientArgs,
    },
    /// The app's own keys: host keys (open every function), system keys and the
    /// master key.
    Keys {
        /// The app's name.
        name: String,
        #[command(flatten)]
        client: ClientArgs,
    },
    /// Create or replace an app key: a host key (default), a system key
    /// (`--scope system`) or the master key (`--scope master`). Prints the key.
    SetKey {
        /// The app's name.
        name: String,
        /// The key's name (ignored for the master key).
        #[arg(default_value = "")]
        key: String,
        /// The key's value (16 to 128 of A-Z a-z 0-9 - _ =); default: a new random key.
        #[arg(long)]
        value: Option<String>,
        /// `host`, `system` or `master`.
        #[arg(long, default_value = "host")]
        scope: String,
        #[command(flatten)]
        client: ClientArgs,
    },
    /// Remove a host key or a system key (`--scope system`); `_master` stays.
    DeleteKey {
        /// The app's name.
        name: String,
        /// The key's name.
        key: String,
        /// `host` or `system`.
        #[arg(long, default_value = "host")]
        scope: String,
        #[command(flatten)]
        client: ClientArgs,
    },
}

#[derive(Debug, Subcommand)]
pub enum SettingsCommand {
    /// Set settings: `strom app settings set NAME K=V [K=V…]`.
    Set {
        /// The app's name (as `strom app list` shows it).
        name: String,
        /// Settings as KEY=VALUE; a value may contain `=`.
        #[arg(required = true, value_name = "K=V")]
        pairs: Vec<String>,
        #[command(flatten)]
        client: ClientArgs,
    },
    /// Show settings.
    Get {
        /// The app's name (as `strom app list` shows it).
        name: String,
        #[command(flatten)]
        client: ClientArgs,
    },
    /// Remove settings.
    Unset {
        /// The app's name (as `strom app list` shows it).
        name: String,
        /// Names of the settings to remove.
        #[arg(required = true)]
        keys: Vec<String>,
        #[command(flatten)]
        client: ClientArgs,
    },
}

#[derive(Debug, Subcommand)]
pub enum FnCommand {
    /// List functions of one app, or of every app.
    List {
        /// Only this app's functions (default: every app's).
        app: Option<String>,
        #[command(flatten)]
        client: ClientArgs,
    },
    /// Show the keys that can call a function (function, host and master keys).
    Keys {
        /// The app's name.
        app: String,
        /// The function's name (its folder in the app).
        function: String,
        #[command(flatten)]
        client: ClientArgs,
    },
    /// Create or replace a key: a function key (default), a host key (`--scope host`)
    /// or the master key (`--scope master`). Prints the key.
    SetKey {
        /// The app's name.
        app: String,
        /// The function (for a function key; ignored for host and master keys).
        function: String,
        /// The key's name (ignored for the master key).
        #[arg(default_value = "default")]
        name: String,
        /// The key's value (16 to 128 of A-Z a-z 0-9 - _ =); default: a new random key.
        #[arg(long)]
        value: Option<String>,
        /// `function`, `host` or `master`.
        #[arg(long, default_value = "function")]
        scope: String,
        #[command(flatten)]
        client: ClientArgs,
    },
    /// Remove a function key or a host key (`--scope host`).
    DeleteKey {
        /// The app's name.
        app: String,
        /// The function (for a function key; ignored for a host key).
        function: String,
        /// The key's name.
        name: String,
        /// `function` or `host`.
        #[arg(long, default_value = "function")]
        scope: String,
        #[command(flatten)]
        client: ClientArgs,
    },
    /// Run a non-HTTP (timer) function now, outside its schedule, on a worker
    /// that runs its app; waits and prints the outcome (exit 1 if it failed).
    Invoke {
        /// The app's name.
        app: String,
        /// The function's name.
        function: String,
        /// Azure's `input` (JSON text); a timer function ignores it.
        #[arg(long)]
        input: Option<String>,
        /// Print the invocation id once the run is started; do not wait for it.
        #[arg(long)]
        no_wait: bool,
        #[command(flatten)]
        client: ClientArgs,
    },
    /// Show recent invocations with their logs; `--follow` keeps streaming.
    Logs {
        /// The app's name.
        app: String,
        /// Only this function's invocations (default: every function of the app).
        function: Option<String>,
        /// Keep streaming new invocations.
        #[arg(long, short)]
        follow: bool,
        /// How many recent invocations to show first (0: none, e.g. with
        /// `--follow` to see only new ones).
        #[arg(long, default_value_t = 20)]
        tail: u32,
        /// Only those started within this long, e.g. `10m`, `2h`.
        #[arg(long)]
        since: Option<String>,
        /// Only `succeeded`, `failed` (failed or timed out) or `timedout` ones.
        #[arg(long)]
        status: Option<String>,
        /// Only those that ran on this node.
        #[arg(long)]
        node: Option<u64>,
        /// Only this invocation (its id, as the handler received it).
        #[arg(long)]
        invocation: Option<String>,
        #[command(flatten)]
        client: ClientArgs,
    },
}

#[derive(Debug, Subcommand)]
pub enum NodeCommand {
    /// Prepare a node for a planned stop: a management node that leads hands
    /// leadership to a caught-up follower first; a worker's instances move to other
    /// workers (make-before-break) and it takes no new ones.
    Drain {
        /// The node's id (as `strom cluster status` shows it).
        node_id: u64,
        #[command(flatten)]
        client: ClientArgs,
    },
    /// A worker takes no new instances; it keeps what it runs.
    Cordon {
        /// The node's id (as `strom cluster status` shows it).
        node_id: u64,
        #[command(flatten)]
        client: ClientArgs,
    },
    /// A cordoned or drained worker takes instances again.
    Uncordon {
        /// The node's id (as `strom cluster status` shows it).
        node_id: u64,
        #[command(flatten)]
        client: ClientArgs,
    },
}

#[derive(Debug, Subcommand)]
pub enum ClusterCommand {
    /// The management nodes: id, address, voter or learner, leader.
    Members {
        #[command(flatten)]
        client: ClientArgs,
    },
    /// Remove a management node from the Raft group (joint consensus), or a worker
    /// from the cluster (its instances are placed elsewhere).
    RemoveMember {
        /// The node's id (as `strom cluster status` shows it).
        node_id: u64,
        #[command(flatten)]
        client: ClientArgs,
    },
    /// Cluster id, leader, term, members (build, protocol, lag), workers (status,
    /// placed, ready, capacity, heartbeat), placements per app, instances.
    Status {
        /// Answer from the node's local state without a linearizable read.
        #[arg(long)]
        stale: bool,
        #[command(flatten)]
        client: ClientArgs,
    },
    /// Write a checkpoint of the cluster's state (apps, packages, settings, keys,
    /// deployments, timers) to the checkpoint store of the node asked, now.
    Checkpoint {
        #[command(flatten)]
        client: ClientArgs,
    },
    /// The checkpoints a store holds, newest first (id, cluster, term/index, time,
    /// size, and with --verify whether each reads back whole).
    Checkpoints {
        /// The store: `local:DIR`, `sqlserver:<connection string>` or `sqlserver:@FILE`.
        #[arg(long, env = "STROM_CHECKPOINT_STORE", hide_env_values = true)]
        from: String,
        /// Only this cluster's.
        #[arg(long)]
        cluster: Option<String>,
        /// Read each checkpoint and its packages back and check their SHA-256.
        #[arg(long)]
        verify: bool,
        /// Output format.
        #[arg(long, value_enum, default_value_t = Output::Table)]
        output: Output,
    },
    /// Make a new first management node from a checkpoint (every management node
    /// lost): its data dir holds the checkpoint's state, packages and a new
    /// membership of this node alone. Then `strom serve --data-dir D --node-id N`
    /// starts it; other management nodes and workers `--join` it as usual.
    Restore {
        /// The store: `local:DIR`, `sqlserver:<connection string>` or `sqlserver:@FILE`.
        #[arg(long, env = "STROM_CHECKPOINT_STORE", hide_env_values = true)]
        from: String,
        /// The checkpoint (as `strom cluster checkpoints` lists it) [default: the
        /// newest whole one; a damaged newer one is skipped and named].
        #[arg(long)]
        checkpoint: Option<String>,
        /// The new node's data dir: must be empty or absent.
        #[arg(long)]
        data_dir: PathBuf,
        /// The new node's id (give `strom serve` the same).
        #[arg(long, default_value_t = 1)]
        node_id: u64,
        /// The control address other nodes will reach it at (give `strom serve`
        /// the same, as --advertise-addr or --control-addr).
        #[arg(long, default_value = "127.0.0.1:7171")]
        advertise_addr: String,
        /// A new cluster id (e.g. a drill beside the running cluster), so the two
        /// never fence each other's checkpoints.
        #[arg(long)]
        new_cluster_id: bool,
        /// Keep the cluster's join token (checked against the checkpoint); by
        /// default a new one is made and written to `join.token`.
        #[arg(long, env = "STROM_JOIN_TOKEN", hide_env_values = true)]
        join_token: Option<String>,
    },
}
