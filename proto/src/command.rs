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
    /// Timers (protocol 6): a timer's next tick is `next_ms` (its first, or after
    /// a missed tick was skipped without the monitor), decided from a record whose
    /// next tick was `replaces_ms` (`None`: no record yet). Refused while it runs or
    /// when the record has moved on since (a leader deciding from an older view).
    ScheduleTimer {
        timer: TimerId,
        replaces_ms: Option<i64>,
        next_ms: i64,
        /// What `next_ms` was computed from (`timers::TimerSpec::describe`).
        schedule: String,
        at_ms: i64,
    },
    /// A timer's tick runs: recorded before it is dispatched, so that a new leader
    /// dispatches it again with the same invocation id. Refused while a run of the
    /// timer is recorded (never two at once) and unless `tick_ms` is the record's
    /// next tick (never one tick twice, none skipped).
    FireTimer(Box<TimerFire>),
    /// A timer run ended; the timer may fire again. Only the recorded run's
    /// invocation id completes it.
    CompleteTimer {
        timer: TimerId,
        invocation_id: String,
        outcome: TimerOutcome,
        at_ms: i64,
    },
    /// Timer retries (protocol 7): the current attempt of a timer's run failed and
    /// its retry policy allows another: attempt `attempt` runs at `retry_at_ms` with
    /// its own invocation id. The run stays recorded (the timer waits). Only the
    /// current attempt's id moves it on.
    RetryTimer(Box<TimerRetry>),
    /// Publishing (protocol 8): a deployment of an app begins (zip deploy, `strom
    /// app deploy`). Refused while another deployment of the app is in progress
    /// and before its deadline; one past its deadline is marked failed (abandoned)
    /// by this command. The app need not exist (a first deploy creates it).
    BeginDeployment(Box<DeploymentStart>),
    /// A deployment moves on (a step, or its end). Only an in-progress deployment
    /// moves; an ended one never changes again.
    UpdateDeployment(Box<DeploymentUpdate>),
    /// The app's deployment credential (its hash; `None` removes it). Valid only
    /// for the zip deploy endpoint of that app.
    SetDeployCredential {
        app: AppName,
        credential: Option<TokenHash>,
        at_ms: i64,
    },
    /// A version committed by a deployment (protocol 8): applied as
    /// `DeployVersion`, but only while that deployment is still running (not
    /// ended, its deadline not passed at `deploy.at_ms`), so a deployment given up
    /// as abandoned can never change the app afterwards.
    DeployVersionFor {
        deployment: String,
        deploy: Box<DeployVersion>,
    },
    /// Client sessions (protocol 10): a client opens a session before its first
    /// write; its writes then carry the session and a sequence number, so that a
    /// retried write is applied once (the Raft dissertation's §6.3). `id` is
    /// chosen by the node that takes the request (32 random hex digits). Opening
    /// one also forgets sessions idle for [`SESSION_IDLE_MS`] and, at
    /// [`MAX_SESSIONS`], the one idle longest.
    OpenSession {
        id: String,
        at_ms: i64,
    },
    /// A client's write in its session (protocol 10): applied as `command` when
    /// `seq` is new (above the session's last, by at most [`SEQ_WINDOW`]); when
    /// `seq` is the session's last and `fingerprint` matches, the result
    /// recorded then is answered ([`CommandResult::Replayed`]) and nothing is
    /// applied again.
    InSession(Box<SessionWrite>),
}

/// Sessions idle this long (Unix ms between their last write and a later
/// session command) are forgotten: a retry then gets "outcome unknown".
pub const SESSION_IDLE_MS: i64 = 60 * 60 * 1000;
/// Most sessions the state keeps; opening one more forgets the one idle longest.
pub const MAX_SESSIONS: usize = 10_000;
/// How far ahead of the session's last applied sequence number a write may be
/// (writes refused before they were proposed leave gaps).
pub const SEQ_WINDOW: u64 = 1_000;

/// One write of a client session.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SessionWrite {
    pub session: String,
    pub seq: u64,
    /// Hex SHA-256 of the request as the client sent it (method and body): a
    /// sequence number reused for another request is refused.
    pub fingerprint: String,
    pub command: Command,
    pub at_ms: i64,
}

/// Whether `id` has the form of a session id: 32 lower-case hex digits.
pub fn is_session_id(id: &str) -> bool {
    id.len() == 32 && id.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'))
}

impl Command {
    /// The command's name (a trace span's attribute, a log field).
    pub fn kind(&self) -> &'static str {
        match self {
            Command::InitCluster { .. } => "InitCluster",
            Command::DeployVersion { .. } => "DeployVersion",
            Command::ActivateVersion { .. } => "ActivateVersion",
            Command::DeleteApp { .. } => "DeleteApp",
            Command::SetAppSettings { .. } => "SetAppSettings",
            Command::PutKey { .. } => "PutKey",
            Command::DeleteKey { .. } => "DeleteKey",
            Command::SetScale { .. } => "SetScale",
            Command::RegisterWorker { .. } => "RegisterWorker",
            Command::SetWorkerLiveness { .. } => "SetWorkerLiveness",
            Command::SetWorkerSchedule { .. } => "SetWorkerSchedule",
            Command::Place { .. } => "Place",
            Command::RemoveWorker { .. } => "RemoveWorker",
            Command::SetClusterProtocol { .. } => "SetClusterProtocol",
            Command::ForgetVersions { .. } => "ForgetVersions",
            Command::ScheduleTimer { .. } => "ScheduleTimer",
            Command::FireTimer { .. } => "FireTimer",
            Command::CompleteTimer { .. } => "CompleteTimer",
            Command::RetryTimer { .. } => "RetryTimer",
            Command::BeginDeployment { .. } => "BeginDeployment",
            Command::UpdateDeployment { .. } => "UpdateDeployment",
            Command::SetDeployCredential { .. } => "SetDeployCredential",
            Command::DeployVersionFor { .. } => "DeployVersionFor",
            Command::OpenSession { .. } => "OpenSession",
            Command::InSession(w) => w.command.kind(),
        }
    }
}

/// A deployment's status, as Kudu numbers it (`DeployStatus`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum DeployStatus {
    Pending,
    Building,
    Deploying,
    Failed,
    Success,
}

impl DeployStatus {
    /// Kudu's number: 0 Pending, 1 Building, 2 Deploying, 3 Failed, 4 Success.
    pub fn code(self) -> u8 {
        match self {
            DeployStatus::Pending => 0,
            DeployStatus::Building => 1,
            DeployStatus::Deploying => 2,
            DeployStatus::Failed => 3,
            DeployStatus::Success => 4,
        }
    }

    /// The status Kudu's number names.
    pub fn from_code(code: u32) -> Option<DeployStatus> {
        [
            DeployStatus::Pending,
            DeployStatus::Building,
            DeployStatus::Deploying,
            DeployStatus::Failed,
            DeployStatus::Success,
        ]
        .into_iter()
        .find(|s| u32::from(s.code()) == code)
    }

    pub fn as_str(self) -> &'static str {
        match self {
            DeployStatus::Pending => "Pending",
            DeployStatus::Building => "Building",
            DeployStatus::Deploying => "Deploying",
            DeployStatus::Failed => "Failed",
            DeployStatus::Success => "Success",
        }
    }

    /// Failed or Success: the deployment ended.
    pub fn is_complete(self) -> bool {
        matches!(self, DeployStatus::Failed | DeployStatus::Success)
    }
}

/// A deployment as it is received.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DeploymentStart {
    pub app: AppName,
    /// Chosen by the receiving node (a random hex id, as Kudu's).
    pub id: String,
    pub author: String,
    pub deployer: String,
    pub message: String,
    /// The management node that runs it.
    pub node: NodeId,
    /// Package size in bytes.
    pub size_bytes: u64,
    /// After this time (Unix ms) an unfinished deployment counts as abandoned.
    pub deadline_ms: i64,
    pub at_ms: i64,
}

/// A step or the end of a deployment.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DeploymentUpdate {
    pub app: AppName,
    pub id: String,
    pub status: DeployStatus,
    /// What it does now, or why it failed.
    pub status_text: String,
    /// The version it deploys, once known.
    pub version: Option<VersionId>,
    /// Every validation error (file, JSON path, message), when it failed on them.
    pub errors: Vec<String>,
    /// On failure: make this version active again, but only while the deployment's
    /// own version is still the active one (make-before-break's promise: a failed
    /// deploy leaves the version that served before). Given with an earlier step,
    /// it is remembered for a failure (or an abandonment) later.
    pub restore: Option<VersionId>,
    /// The deployment's new deadline (it only moves later), for its next phase.
    pub deadline_ms: Option<i64>,
    pub at_ms: i64,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TimerRetry {
    pub timer: TimerId,
    /// The attempt that failed.
    pub failed_invocation_id: String,
    /// Why it failed (sent to the next attempt as `RetryContext.Exception`).
    pub error: String,
    /// The next attempt: its number (1 = the first retry), id and time.
    pub attempt: u32,
    pub invocation_id: String,
    pub retry_at_ms: i64,
    pub at_ms: i64,
}

/// A timer function of an app.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct TimerId {
    pub app: AppName,
    pub function: String,
}

impl std::fmt::Display for TimerId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}", self.app, self.function)
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TimerFire {
    pub timer: TimerId,
    /// The scheduled time of the tick that runs (Unix ms).
    pub tick_ms: i64,
    /// Sent to the handler; the same on every dispatch of this tick.
    pub invocation_id: String,
    /// Ticks were missed and collapse into this run (`IsPastDue`).
    pub past_due: bool,
    /// The tick after this one.
    pub next_ms: i64,
    /// What `next_ms` was computed from (`timers::TimerSpec::describe`).
    pub schedule: String,
    pub at_ms: i64,
}

/// How a timer run ended.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TimerOutcome {
    pub succeeded: bool,
    /// Why it failed (empty when it succeeded).
    pub error: String,
    pub duration_ms: u64,
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
    /// System keys (protocol 8), Azure's keys for extension webhooks
    /// (`/admin/host/systemkeys`). They open no function.
    System,
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
    /// A client session's write seen before (protocol 10): its result then, at
    /// log index `index`; nothing was applied now.
    Replayed {
        index: u64,
        result: Box<CommandResult>,
    },
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
    #[error("timer `{timer}` is running (invocation {invocation_id}): one run at a time")]
    TimerBusy {
        timer: TimerId,
        invocation_id: String,
    },
    #[error("timer `{timer}`'s next tick is {actual:?} (Unix ms), not {expected:?}: it moved on")]
    TimerMoved {
        timer: TimerId,
        expected: Option<i64>,
        actual: Option<i64>,
    },
    #[error("{what} needs cluster protocol {needs}; the cluster speaks {speaks}")]
    NotYetEnabled {
        what: String,
        needs: u32,
        speaks: u32,
    },
    #[error(
        "timer `{timer}`: the next tick ({next_ms}) must come after the tick that runs ({tick_ms})"
    )]
    TimerNextNotAfter {
        timer: TimerId,
        tick_ms: i64,
        next_ms: i64,
    },
    #[error("timer `{timer}` has no run {invocation_id} going on")]
    TimerRunNotFound {
        timer: TimerId,
        invocation_id: String,
    },
    #[error("deployment {id} of app `{app}` is in progress (one deployment of an app at a time)")]
    DeploymentInProgress { app: AppName, id: String },
    #[error("app `{app}` has no deployment `{id}`")]
    DeploymentNotFound { app: AppName, id: String },
    #[error(
        "deployment {id} of app `{app}` has ended (failed, or abandoned when its deadline passed)"
    )]
    DeploymentEnded { app: AppName, id: String },
    #[error(
        "outcome unknown: client session {session} expired (idle longer than {} min) or never existed; check the state (e.g. `strom app show`) before writing again",
        SESSION_IDLE_MS / 60_000
    )]
    SessionUnknown { session: String },
    #[error("sequence number {seq} of session {session} was used for another request")]
    SequenceReused { session: String, seq: u64 },
    #[error(
        "sequence number {seq} of session {session} is older than its last write ({last}): its outcome is no longer kept"
    )]
    SequenceOld {
        session: String,
        seq: u64,
        last: u64,
    },
    #[error(
        "sequence number {seq} of session {session} is too far ahead of its last write ({last}; at most {} ahead)",
        SEQ_WINDOW
    )]
    SequenceAhead {
        session: String,
        seq: u64,
        last: u64,
    },
    #[error("a session command cannot be nested in a session write")]
    NestedSession,
}
