//! The replicated commands of the control plane.
//!
//! Every change to the cluster state is one [`Command`] committed to the Raft log
//! and applied in log order by every management node. Commands are deterministic:
//! anything random or time-dependent (keys, timestamps) is chosen by the proposer
//! and carried in the command. **Variants and fields are only ever added at the
//! end** (new variants), never changed or removed, so a node reading an old log
//! after a rolling upgrade still understands every entry.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::ids::{AppName, ClusterId, NodeId, TokenHash, VersionId};
use crate::manifest::AppManifest;

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Command {
    /// The first command of a cluster: its identity and the hashes of its tokens.
    InitCluster {
        cluster_id: ClusterId,
        admin_token_hash: TokenHash,
        join_token_hash: TokenHash,
        at_ms: i64,
    },
    /// A validated package (already in the blob store) becomes the app's active version;
    /// the app is created if it does not exist yet.
    DeployVersion(Box<DeployVersion>),
    /// Make an earlier version active again (rollback).
    ActivateVersion {
        app: AppName,
        version: VersionId,
        at_ms: i64,
    },
    DeleteApp {
        app: AppName,
        at_ms: i64,
    },
    SetAppSettings {
        app: AppName,
        set: BTreeMap<String, String>,
        remove: Vec<String>,
        at_ms: i64,
    },
    /// Create or replace a key.
    PutKey {
        app: AppName,
        scope: KeyScope,
        name: String,
        value: String,
        at_ms: i64,
    },
    DeleteKey {
        app: AppName,
        scope: KeyScope,
        name: String,
        at_ms: i64,
    },
    /// How many instances of the app to run.
    SetScale {
        app: AppName,
        instances: u32,
        at_ms: i64,
    },
    /// A worker node registers (or re-registers after a restart, possibly with a new
    /// address, capacity or labels). A registered worker is Up.
    RegisterWorker(Box<WorkerInfo>),
    /// The leader saw a worker's lease expire (`up: false`) or its heartbeats resume.
    SetWorkerLiveness {
        node: NodeId,
        up: bool,
        at_ms: i64,
    },
    /// An operator cordons, drains or uncordons a worker.
    SetWorkerSchedule {
        node: NodeId,
        schedule: WorkerSchedule,
        at_ms: i64,
    },
    /// The scheduler's decisions, one batch per reconcile round: how many instances
    /// of an app each worker runs (0 removes the placement). Changes naming an app
    /// or worker that no longer exists are skipped.
    Place {
        changes: Vec<PlacementChange>,
        at_ms: i64,
    },
    /// A worker leaves the cluster for good; its placements go with it.
    RemoveWorker {
        node: NodeId,
        at_ms: i64,
    },
    /// Every management member speaks `protocol` (the version gate): features up to
    /// it may be used from now on. Never lowers.
    SetClusterProtocol {
        protocol: u32,
        at_ms: i64,
    },
    /// The leader keeps each app's newest versions (protocol 3): these older ones
    /// are forgotten (their packages can then be removed). The active version is
    /// never forgotten; versions already gone are skipped.
    ForgetVersions {
        app: AppName,
        versions: Vec<VersionId>,
        at_ms: i64,
    },
}

/// What a worker node tells the cluster about itself when it registers.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct WorkerInfo {
    pub node: NodeId,
    /// `host:port` of its function HTTP port, where other gateways forward requests.
    pub http_addr: String,
    pub capacity: WorkerCapacity,
    pub labels: BTreeMap<String, String>,
    /// Its build (`strom --version`).
    pub build: String,
    pub at_ms: i64,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct WorkerCapacity {
    /// Most instances (of all apps) the worker runs.
    pub instances: u32,
    /// Memory for instances, in MiB; 0 = not limited. Apps reserve `STROM_MEMORY_MB`.
    pub memory_mb: u64,
}

/// Whether the scheduler may place instances on a worker.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum WorkerSchedule {
    /// Takes new instances.
    Active,
    /// Keeps what it runs; takes nothing new.
    Cordoned,
    /// Its instances move elsewhere (make-before-break), then it runs nothing.
    Draining,
}

impl WorkerSchedule {
    pub fn as_str(&self) -> &'static str {
        match self {
            WorkerSchedule::Active => "Active",
            WorkerSchedule::Cordoned => "Cordoned",
            WorkerSchedule::Draining => "Draining",
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PlacementChange {
    pub app: AppName,
    pub node: NodeId,
    pub instances: u32,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DeployVersion {
    pub app: AppName,
    pub version: VersionId,
    pub size_bytes: u64,
    pub manifest: AppManifest,
    pub at_ms: i64,
    /// Key values the proposer generated; applied only where the key does not
    /// exist yet (the app's `_master` and `default` host key on first deploy, a
    /// `default` function key for each function that has none).
    pub initial_keys: InitialKeys,
    /// Settings added or replaced together with the version, atomically (like
    /// Core Tools' `--publish-local-settings`), so the first instances start with them.
    pub settings: BTreeMap<String, String>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct InitialKeys {
    pub master: String,
    pub host_default: String,
    pub function_defaults: BTreeMap<String, String>,
}

/// Which key collection a key belongs to (as Azure: the master key, host keys
/// valid for every function, and per-function keys).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum KeyScope {
    Master,
    Host,
    Function(String),
}

/// What applying a command did. Business outcomes are values, not errors.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum CommandResult {
    /// The state changed.
    Applied,
    /// Valid, but the state already was what the command asks for.
    Unchanged,
    /// Refused; nothing changed.
    Rejected(Rejection),
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, thiserror::Error)]
pub enum Rejection {
    #[error("the cluster is not initialized")]
    NotInitialized,
    #[error("the cluster is already initialized")]
    AlreadyInitialized,
    #[error("app `{app}` not found")]
    AppNotFound { app: AppName },
    #[error("app `{app}` has no version `{version}`")]
    VersionNotFound { app: AppName, version: VersionId },
    #[error(
        "route conflict: function `{function}` of app `{app}` ({route}) overlaps function `{other_function}` of app `{other_app}` ({other_route}) on the shared address"
    )]
    RouteConflict {
        app: AppName,
        function: String,
        route: String,
        other_app: AppName,
        other_function: String,
        other_route: String,
    },
    #[error("app `{app}` has no function `{function}`")]
    FunctionNotFound { app: AppName, function: String },
    #[error("key `{name}` not found")]
    KeyNotFound { name: String },
    #[error("the `_master` key cannot be deleted")]
    MasterKeyIsPermanent,
    #[error("node {node} is not a registered worker")]
    WorkerNotFound { node: NodeId },
}
