//! `ClusterState`: the replicated state machine's data, and the pure function that
//! applies one [`Command`] to it.
//!
//! Durability: this lives in memory on every management node. It is rebuilt on start
//! from the latest snapshot file plus the committed Raft log entries after it, so
//! `apply` must be deterministic (no clocks, no randomness, no I/O): everything
//! variable comes inside the command.

// Rejections are rare business outcomes, returned by value on purpose.
#![allow(clippy::result_large_err)]

use std::collections::BTreeMap;
use std::sync::Arc;

use serde::{Deserialize, Serialize};
use strom_proto::command::{
    Command, CommandResult, DeployVersion, KeyScope, Rejection, SessionWrite, TimerId, WorkerInfo,
    WorkerSchedule, MAX_SESSIONS, SEQ_WINDOW, SESSION_IDLE_MS,
};
use strom_proto::ids::{AppName, ClusterId, NodeId, TokenHash, VersionId};
use strom_proto::manifest::AppManifest;
use strom_proto::route_table::SharedRoute;

use crate::timer_records::{TimerRecord, TimerRetryState};
use strom_proto::version::{Feature, OLDEST_PROTOCOL};

/// Identity of the cluster, set once by `InitCluster`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ClusterInfo {
    pub cluster_id: ClusterId,
    pub admin_token_hash: TokenHash,
    pub join_token_hash: TokenHash,
    pub created_at_ms: i64,
}

/// Every app, each behind its own `Arc`: a state change copies only the apps it
/// changes (`Arc::make_mut`), published states share the rest, and what changed
/// between two states is found by pointer (`view_feed`). Encoded as before (an
/// `Arc` encodes as what it holds).
pub type Apps = BTreeMap<AppName, Arc<AppState>>;

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ClusterState {
    pub cluster: Option<ClusterInfo>,
    pub apps: Apps,
    /// Registered worker nodes.
    pub workers: BTreeMap<NodeId, WorkerState>,
    /// The scheduler's placements: per app, how many instances each worker runs.
    pub placements: BTreeMap<AppName, BTreeMap<NodeId, u32>>,
    /// The wire protocol every management member has reported (the version gate;
    /// 0 before the first report means [`OLDEST_PROTOCOL`]).
    pub protocol: u32,
    /// Timer functions' schedule status and runs (protocol 6; snapshot format 3).
    pub timers: BTreeMap<TimerId, TimerRecord>,
    /// Runs being retried: their next attempt (protocol 7; snapshot format 4).
    pub timer_retries: BTreeMap<TimerId, TimerRetryState>,
    /// Per app name: its deployment history and deployment credential (protocol
    /// 8; snapshot format 5). An app name may have a history before the app
    /// exists (a first deploy that failed).
    pub deployments: BTreeMap<AppName, AppDeployments>,
    /// Per app: its system keys (protocol 8; snapshot format 5). They open no
    /// function, so they stay out of the worker view.
    pub system_keys: BTreeMap<AppName, BTreeMap<String, String>>,
    /// Client sessions by id (protocol 10; snapshot format 6): each one's last
    /// write and its result, so a retried write is answered, not applied again.
    pub sessions: BTreeMap<String, ClientSession>,
}

/// A client session's last write (`seq` 0: none yet).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ClientSession {
    pub last_seq: u64,
    pub fingerprint: String,
    pub result: CommandResult,
    /// The log index the last write was applied at.
    pub index: u64,
    /// When it was opened or last wrote (the commands' `at_ms`).
    pub last_used_ms: i64,
}

impl ClientSession {
    fn expired(&self, at_ms: i64) -> bool {
        at_ms - self.last_used_ms > SESSION_IDLE_MS
    }
}

/// `ClusterState` as builds of protocol 8 and 9 encode it: snapshot format 5.
/// Field for field the same, without the session table.
#[derive(Debug, Deserialize)]
pub struct ClusterStateV5 {
    pub cluster: Option<ClusterInfo>,
    pub apps: Apps,
    pub workers: BTreeMap<NodeId, WorkerState>,
    pub placements: BTreeMap<AppName, BTreeMap<NodeId, u32>>,
    pub protocol: u32,
    pub timers: BTreeMap<TimerId, TimerRecord>,
    pub timer_retries: BTreeMap<TimerId, TimerRetryState>,
    pub deployments: BTreeMap<AppName, AppDeployments>,
    pub system_keys: BTreeMap<AppName, BTreeMap<String, String>>,
}

/// Encodes a state as [`ClusterStateV5`] (no sessions exist before protocol 10).
#[derive(Serialize)]
pub struct ClusterStateV5Ref<'a> {
    pub cluster: &'a Option<ClusterInfo>,
    pub apps: &'a Apps,
    pub workers: &'a BTreeMap<NodeId, WorkerState>,
    pub placements: &'a BTreeMap<AppName, BTreeMap<NodeId, u32>>,
    pub protocol: u32,
    pub timers: &'a BTreeMap<TimerId, TimerRecord>,
    pub timer_retries: &'a BTreeMap<TimerId, TimerRetryState>,
    pub deployments: &'a BTreeMap<AppName, AppDeployments>,
    pub system_keys: &'a BTreeMap<AppName, BTreeMap<String, String>>,
}

impl From<ClusterStateV5> for ClusterState {
    fn from(v: ClusterStateV5) -> ClusterState {
        ClusterState {
            cluster: v.cluster,
            apps: v.apps,
            workers: v.workers,
            placements: v.placements,
            protocol: v.protocol,
            timers: v.timers,
            timer_retries: v.timer_retries,
            deployments: v.deployments,
            system_keys: v.system_keys,
            sessions: BTreeMap::new(),
        }
    }
}

pub use crate::deployments::{AppDeployments, DeploymentRecord};

/// `ClusterState` as builds of protocol 7 encode it: snapshot format 4. Field for
/// field the same, without the publishing maps.
#[derive(Debug, Deserialize)]
pub struct ClusterStateV4 {
    pub cluster: Option<ClusterInfo>,
    pub apps: Apps,
    pub workers: BTreeMap<NodeId, WorkerState>,
    pub placements: BTreeMap<AppName, BTreeMap<NodeId, u32>>,
    pub protocol: u32,
    pub timers: BTreeMap<TimerId, TimerRecord>,
    pub timer_retries: BTreeMap<TimerId, TimerRetryState>,
}

/// Encodes a state as [`ClusterStateV4`] (no deployments or system keys exist
/// before protocol 8).
#[derive(Serialize)]
pub struct ClusterStateV4Ref<'a> {
    pub cluster: &'a Option<ClusterInfo>,
    pub apps: &'a Apps,
    pub workers: &'a BTreeMap<NodeId, WorkerState>,
    pub placements: &'a BTreeMap<AppName, BTreeMap<NodeId, u32>>,
    pub protocol: u32,
    pub timers: &'a BTreeMap<TimerId, TimerRecord>,
    pub timer_retries: &'a BTreeMap<TimerId, TimerRetryState>,
}

impl From<ClusterStateV4> for ClusterState {
    fn from(v: ClusterStateV4) -> ClusterState {
        ClusterState {
            cluster: v.cluster,
            apps: v.apps,
            workers: v.workers,
            placements: v.placements,
            protocol: v.protocol,
            timers: v.timers,
            timer_retries: v.timer_retries,
            deployments: BTreeMap::new(),
            system_keys: BTreeMap::new(),
            sessions: BTreeMap::new(),
        }
    }
}

/// `ClusterState` as builds of protocol 6 encode it: snapshot format 3. Field for
/// field the same, without `timer_retries`.
#[derive(Debug, Deserialize)]
pub struct ClusterStateV3 {
    pub cluster: Option<ClusterInfo>,
    pub apps: Apps,
    pub workers: BTreeMap<NodeId, WorkerState>,
    pub placements: BTreeMap<AppName, BTreeMap<NodeId, u32>>,
    pub protocol: u32,
    pub timers: BTreeMap<TimerId, TimerRecord>,
}

/// Encodes a state as [`ClusterStateV3`] (its retries left out: there are none
/// before protocol 7).
#[derive(Serialize)]
pub struct ClusterStateV3Ref<'a> {
    pub cluster: &'a Option<ClusterInfo>,
    pub apps: &'a Apps,
    pub workers: &'a BTreeMap<NodeId, WorkerState>,
    pub placements: &'a BTreeMap<AppName, BTreeMap<NodeId, u32>>,
    pub protocol: u32,
    pub timers: &'a BTreeMap<TimerId, TimerRecord>,
}

impl From<ClusterStateV3> for ClusterState {
    fn from(v: ClusterStateV3) -> ClusterState {
        ClusterState {
            cluster: v.cluster,
            apps: v.apps,
            workers: v.workers,
            placements: v.placements,
            protocol: v.protocol,
            timers: v.timers,
            timer_retries: BTreeMap::new(),
            deployments: BTreeMap::new(),
            system_keys: BTreeMap::new(),
            sessions: BTreeMap::new(),
        }
    }
}

/// `ClusterState` as builds before timers (protocol ≤ 5) encode it: snapshot
/// format 2 and the legacy worker watch. Field for field the same, without `timers`.
#[derive(Debug, Deserialize)]
pub struct ClusterStateV2 {
    pub cluster: Option<ClusterInfo>,
    pub apps: Apps,
    pub workers: BTreeMap<NodeId, WorkerState>,
    pub placements: BTreeMap<AppName, BTreeMap<NodeId, u32>>,
    pub protocol: u32,
}

/// Encodes a state as [`ClusterStateV2`] (its timers left out).
#[derive(Serialize)]
pub struct ClusterStateV2Ref<'a> {
    pub cluster: &'a Option<ClusterInfo>,
    pub apps: &'a Apps,
    pub workers: &'a BTreeMap<NodeId, WorkerState>,
    pub placements: &'a BTreeMap<AppName, BTreeMap<NodeId, u32>>,
    pub protocol: u32,
}

impl From<ClusterStateV2> for ClusterState {
    fn from(v: ClusterStateV2) -> ClusterState {
        ClusterState {
            cluster: v.cluster,
            apps: v.apps,
            workers: v.workers,
            placements: v.placements,
            protocol: v.protocol,
            timers: BTreeMap::new(),
            timer_retries: BTreeMap::new(),
            deployments: BTreeMap::new(),
            system_keys: BTreeMap::new(),
            sessions: BTreeMap::new(),
        }
    }
}

impl ClusterState {
    pub fn as_v5(&self) -> ClusterStateV5Ref<'_> {
        ClusterStateV5Ref {
            cluster: &self.cluster,
            apps: &self.apps,
            workers: &self.workers,
            placements: &self.placements,
            protocol: self.protocol,
            timers: &self.timers,
            timer_retries: &self.timer_retries,
            deployments: &self.deployments,
            system_keys: &self.system_keys,
        }
    }

    pub fn as_v4(&self) -> ClusterStateV4Ref<'_> {
        ClusterStateV4Ref {
            cluster: &self.cluster,
            apps: &self.apps,
            workers: &self.workers,
            placements: &self.placements,
            protocol: self.protocol,
            timers: &self.timers,
            timer_retries: &self.timer_retries,
        }
    }

    pub fn as_v3(&self) -> ClusterStateV3Ref<'_> {
        ClusterStateV3Ref {
            cluster: &self.cluster,
            apps: &self.apps,
            workers: &self.workers,
            placements: &self.placements,
            protocol: self.protocol,
            timers: &self.timers,
        }
    }

    pub fn as_v2(&self) -> ClusterStateV2Ref<'_> {
        ClusterStateV2Ref {
            cluster: &self.cluster,
            apps: &self.apps,
            workers: &self.workers,
            placements: &self.placements,
            protocol: self.protocol,
        }
    }
}

/// A registered worker as the replicated state knows it. Heartbeats are not
/// replicated (leases live in the leader's memory); only transitions are.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct WorkerState {
    pub info: WorkerInfo,
    /// `false` once the leader saw its lease expire.
    pub up: bool,
    pub schedule: WorkerSchedule,
    /// When `up` or `schedule` last changed.
    pub since_ms: i64,
}

impl WorkerState {
    /// Up/Down/Draining/Cordoned, as `strom cluster status` shows it.
    pub fn status(&self) -> &'static str {
        match (self.up, self.schedule) {
            (false, _) => "Down",
            (true, WorkerSchedule::Active) => "Up",
            (true, s) => s.as_str(),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AppState {
    pub name: AppName,
    pub created_at_ms: i64,
    pub updated_at_ms: i64,
    pub settings: BTreeMap<String, String>,
    /// Every version deployed, oldest first.
    pub versions: Vec<VersionState>,
    pub active_version: VersionId,
    pub keys: AppKeys,
    /// Desired instances; `None` = the default (one per node today).
    pub scale: Option<u32>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct VersionState {
    pub id: VersionId,
    pub size_bytes: u64,
    pub deployed_at_ms: i64,
    pub manifest: AppManifest,
}

/// An app's keys (defined with the worker view, which carries them to gateways;
/// the same fields in the same order, so snapshots and log entries read as before).
pub use strom_proto::worker_view::AppKeys;

impl AppState {
    pub fn version(&self, id: &VersionId) -> Option<&VersionState> {
        self.versions.iter().find(|v| &v.id == id)
    }

    pub fn active(&self) -> &VersionState {
        self.version(&self.active_version)
            .expect("the active version is always one of the app's versions")
    }
}

impl ClusterState {
    /// Apply one committed command. Rejections change nothing.
    pub fn apply(&mut self, command: &Command) -> CommandResult {
        self.apply_at(command, 0)
    }

    /// Apply the command committed at log `index` (recorded for a session's
    /// write, answered again to its retry).
    pub fn apply_at(&mut self, command: &Command, index: u64) -> CommandResult {
        if let Command::InSession(write) = command {
            return self.apply_in_session(write, index);
        }
        match self.try_apply(command) {
            Ok(true) => CommandResult::Applied,
            Ok(false) => CommandResult::Unchanged,
            Err(r) => CommandResult::Rejected(r),
        }
    }

    /// A session's write: applied once; its retry answered from the record.
    fn apply_in_session(&mut self, write: &SessionWrite, index: u64) -> CommandResult {
        let rejected = CommandResult::Rejected;
        if self.cluster.is_none() {
            return rejected(Rejection::NotInitialized);
        }
        if let Err(r) = self.needs(Feature::ClientSessions, "client sessions") {
            return rejected(r);
        }
        if matches!(
            write.command,
            Command::InSession(_) | Command::OpenSession { .. } | Command::InitCluster { .. }
        ) {
            return rejected(Rejection::NestedSession);
        }
        let unknown = || Rejection::SessionUnknown {
            session: write.session.clone(),
        };
        let Some(session) = self.sessions.get(&write.session) else {
            return rejected(unknown());
        };
        if session.expired(write.at_ms) {
            return rejected(unknown());
        }
        let last = session.last_seq;
        if write.seq == last && last > 0 {
            if session.fingerprint != write.fingerprint {
                return rejected(Rejection::SequenceReused {
                    session: write.session.clone(),
                    seq: write.seq,
                });
            }
            return CommandResult::Replayed {
                index: session.index,
                result: Box::new(session.result.clone()),
            };
        }
        if write.seq <= last {
            return rejected(Rejection::SequenceOld {
                session: write.session.clone(),
                seq: write.seq,
                last,
            });
        }
        if write.seq > last + SEQ_WINDOW {
            return rejected(Rejection::SequenceAhead {
                session: write.session.clone(),
                seq: write.seq,
                last,
            });
        }
        let result = self.apply_at(&write.command, index);
        let session = self
            .sessions
            .get_mut(&write.session)
            .expect("the session was found above; applying its command keeps it");
        session.last_seq = write.seq;
        session.fingerprint = write.fingerprint.clone();
        session.result = result.clone();
        session.index = index;
        session.last_used_ms = session.last_used_ms.max(write.at_ms);
        result
    }

    /// A new session; idle ones are forgotten, and at the limit the one idle longest.
    fn open_session(&mut self, id: &str, at_ms: i64) -> Result<bool, Rejection> {
        self.needs(Feature::ClientSessions, "client sessions")?;
        if self.sessions.contains_key(id) {
            return Ok(false);
        }
        self.sessions.retain(|_, s| !s.expired(at_ms));
        while self.sessions.len() >= MAX_SESSIONS {
            let oldest = self
                .sessions
                .iter()
                .min_by_key(|(id, s)| (s.last_used_ms, id.to_string()))
                .map(|(id, _)| id.clone())
                .expect("the table is not empty");
            self.sessions.remove(&oldest);
        }
        self.sessions.insert(
            id.to_string(),
            ClientSession {
                last_seq: 0,
                fingerprint: String::new(),
                result: CommandResult::Unchanged,
                index: 0,
                last_used_ms: at_ms,
            },
        );
        Ok(true)
    }

    fn try_apply(&mut self, command: &Command) -> Result<bool, Rejection> {
        if self.cluster.is_none() && !matches!(command, Command::InitCluster { .. }) {
            return Err(Rejection::NotInitialized);
        }
        match command {
            Command::InitCluster {
                cluster_id,
                admin_token_hash,
                join_token_hash,
                at_ms,
            } => {
                if self.cluster.is_some() {
                    return Err(Rejection::AlreadyInitialized);
                }
                self.cluster = Some(ClusterInfo {
                    cluster_id: cluster_id.clone(),
                    admin_token_hash: admin_token_hash.clone(),
                    join_token_hash: join_token_hash.clone(),
                    created_at_ms: *at_ms,
                });
                Ok(true)
            }
            Command::DeployVersion(d) => self.deploy(d),
            Command::OpenSession { id, at_ms } => self.open_session(id, *at_ms),
            Command::InSession(_) => Err(Rejection::NestedSession),
            Command::ActivateVersion {
                app,
                version,
                at_ms,
            } => {
                let conflicts = {
                    let state = self.app(app)?;
                    let v = state
                        .version(version)
                        .ok_or_else(|| Rejection::VersionNotFound {
                            app: app.clone(),
                            version: version.clone(),
                        })?;
                    if &state.active_version == version {
                        return Ok(false);
                    }
                    self.route_conflict(app, &v.manifest)
                };
                if let Some(c) = conflicts {
                    return Err(c);
                }
                let state = self.app_mut(app)?;
                state.active_version = version.clone();
                state.updated_at_ms = *at_ms;
                self.prune_timers();
                Ok(true)
            }
            Command::DeleteApp { app, .. } => {
                self.apps
                    .remove(app)
                    .ok_or_else(|| Rejection::AppNotFound { app: app.clone() })?;
                self.placements.remove(app);
                self.deployments.remove(app);
                self.system_keys.remove(app);
                self.prune_timers();
                Ok(true)
            }
            Command::ScheduleTimer { .. }
            | Command::FireTimer(_)
            | Command::CompleteTimer { .. }
            | Command::RetryTimer(_) => self.apply_timer(command),
            Command::BeginDeployment(_)
            | Command::UpdateDeployment(_)
            | Command::SetDeployCredential { .. }
            | Command::DeployVersionFor { .. } => self.apply_deployment(command),
            Command::SetAppSettings {
                app,
                set,
                remove,
                at_ms,
            } => {
                let state = self.app_mut(app)?;
                let before = state.settings.clone();
                for k in remove {
                    state.settings.remove(k);
                }
                for (k, v) in set {
                    state.settings.insert(k.clone(), v.clone());
                }
                let changed = before != state.settings;
                if changed {
                    state.updated_at_ms = *at_ms;
                }
                Ok(changed)
            }
            Command::PutKey {
                app,
                scope,
                name,
                value,
                ..
            } => {
                if *scope == KeyScope::System {
                    self.needs(Feature::Publishing, "system keys")?;
                    self.app(app)?;
                    let keys = self.system_keys.entry(app.clone()).or_default();
                    return Ok(keys.insert(name.clone(), value.clone()).as_ref() != Some(value));
                }
                let state = self.app_mut(app)?;
                let slot = match scope {
                    KeyScope::System => unreachable!("handled above"),
                    KeyScope::Master => {
                        let changed = &state.keys.master != value;
                        state.keys.master = value.clone();
                        return Ok(changed);
                    }
                    KeyScope::Host => &mut state.keys.host,
                    KeyScope::Function(f) => {
                        if !state
                            .active()
                            .manifest
                            .functions
                            .iter()
                            .any(|x| &x.name == f)
                        {
                            return Err(Rejection::FunctionNotFound {
                                app: app.clone(),
                                function: f.clone(),
                            });
                        }
                        state.keys.functions.entry(f.clone()).or_default()
                    }
                };
                Ok(slot.insert(name.clone(), value.clone()).as_ref() != Some(value))
            }
            Command::SetScale {
                app,
                instances,
                at_ms,
            } => {
                let state = self.app_mut(app)?;
                if state.scale == Some(*instances) {
                    return Ok(false);
                }
                state.scale = Some(*instances);
                state.updated_at_ms = *at_ms;
                Ok(true)
            }
            Command::DeleteKey {
                app, scope, name, ..
            } => {
                if *scope == KeyScope::System {
                    self.needs(Feature::Publishing, "system keys")?;
                    self.app(app)?;
                    return self
                        .system_keys
                        .get_mut(app)
                        .and_then(|s| s.remove(name))
                        .map(|_| true)
                        .ok_or_else(|| Rejection::KeyNotFound { name: name.clone() });
                }
                let state = self.app_mut(app)?;
                let slot = match scope {
                    KeyScope::System => unreachable!("handled above"),
                    KeyScope::Master => return Err(Rejection::MasterKeyIsPermanent),
                    KeyScope::Host => Some(&mut state.keys.host),
                    KeyScope::Function(f) => state.keys.functions.get_mut(f),
                };
                slot.and_then(|s| s.remove(name))
                    .map(|_| true)
                    .ok_or_else(|| Rejection::KeyNotFound { name: name.clone() })
            }
            Command::RegisterWorker(info) => {
                let at_ms = info.at_ms;
                match self.workers.get_mut(&info.node) {
                    Some(w) => {
                        let mut known = info.as_ref().clone();
                        known.at_ms = w.info.at_ms;
                        if w.info == known && w.up {
                            return Ok(false);
                        }
                        w.info = known;
                        if !w.up {
                            w.up = true;
                            w.since_ms = at_ms;
                        }
                    }
                    None => {
                        self.workers.insert(
                            info.node,
                            WorkerState {
                                info: info.as_ref().clone(),
                                up: true,
                                schedule: WorkerSchedule::Active,
                                since_ms: at_ms,
                            },
                        );
                    }
                }
                Ok(true)
            }
            Command::SetWorkerLiveness { node, up, at_ms } => {
                let w = self.worker_mut(*node)?;
                if w.up == *up {
                    return Ok(false);
                }
                w.up = *up;
                w.since_ms = *at_ms;
                Ok(true)
            }
            Command::SetWorkerSchedule {
                node,
                schedule,
                at_ms,
            } => {
                let w = self.worker_mut(*node)?;
                if w.schedule == *schedule {
                    return Ok(false);
                }
                w.schedule = *schedule;
                w.since_ms = *at_ms;
                Ok(true)
            }
            Command::Place { changes, .. } => {
                let mut changed = false;
                for c in changes {
                    if !self.apps.contains_key(&c.app) || !self.workers.contains_key(&c.node) {
                        continue;
                    }
                    let per_app = self.placements.entry(c.app.clone()).or_default();
                    let before = per_app.get(&c.node).copied().unwrap_or(0);
                    if before == c.instances {
                        continue;
                    }
                    changed = true;
                    if c.instances == 0 {
                        per_app.remove(&c.node);
                    } else {
                        per_app.insert(c.node, c.instances);
                    }
                }
                self.placements.retain(|_, p| !p.is_empty());
                Ok(changed)
            }
            Command::SetClusterProtocol { protocol, .. } => {
                if *protocol <= self.protocol {
                    return Ok(false);
                }
                self.protocol = *protocol;
                Ok(true)
            }
            Command::ForgetVersions { app, versions, .. } => {
                let state = self.app_mut(app)?;
                let before = state.versions.len();
                let active = state.active_version.clone();
                state
                    .versions
                    .retain(|v| v.id == active || !versions.contains(&v.id));
                Ok(state.versions.len() != before)
            }
            Command::RemoveWorker { node, .. } => {
                self.workers
                    .remove(node)
                    .ok_or(Rejection::WorkerNotFound { node: *node })?;
                for p in self.placements.values_mut() {
                    p.remove(node);
                }
                self.placements.retain(|_, p| !p.is_empty());
                Ok(true)
            }
        }
    }

    /// The protocol the whole cluster speaks (see `strom_proto::version`).
    pub fn protocol(&self) -> u32 {
        self.protocol.max(OLDEST_PROTOCOL)
    }

    /// Whether the cluster has switched `feature` on.
    pub fn allows(&self, feature: Feature) -> bool {
        self.protocol() >= feature.since()
    }

    /// Refuses `what` until the cluster speaks `feature`'s protocol.
    pub fn needs(&self, feature: Feature, what: &str) -> Result<(), Rejection> {
        if self.allows(feature) {
            return Ok(());
        }
        Err(Rejection::NotYetEnabled {
            what: what.to_string(),
            needs: feature.since(),
            speaks: self.protocol(),
        })
    }

    fn worker_mut(&mut self, node: NodeId) -> Result<&mut WorkerState, Rejection> {
        self.workers
            .get_mut(&node)
            .ok_or(Rejection::WorkerNotFound { node })
    }

    /// Instances of `app` placed on worker `node`.
    pub fn placed(&self, app: &AppName, node: NodeId) -> u32 {
        self.placements
            .get(app)
            .and_then(|p| p.get(&node))
            .copied()
            .unwrap_or(0)
    }

    pub(crate) fn deploy(&mut self, d: &DeployVersion) -> Result<bool, Rejection> {
        if let Some(c) = self.route_conflict(&d.app, &d.manifest) {
            return Err(c);
        }
        let messaging = d.manifest.functions.iter().any(|f| {
            matches!(f.trigger, strom_proto::manifest::Trigger::RabbitMq(_))
                || f.bindings
                    .iter()
                    .any(|b| strom_proto::manifest::rabbitmq::is_output_type(&b.binding_type))
        });
        if messaging {
            self.needs(Feature::Messaging, "RabbitMQ bindings")?;
        }
        let state = self.apps.entry(d.app.clone()).or_insert_with(|| {
            Arc::new(AppState {
                name: d.app.clone(),
                created_at_ms: d.at_ms,
                updated_at_ms: d.at_ms,
                settings: BTreeMap::new(),
                versions: Vec::new(),
                active_version: d.version.clone(),
                scale: None,
                keys: AppKeys {
                    master: d.initial_keys.master.clone(),
                    host: BTreeMap::from([(
                        "default".to_string(),
                        d.initial_keys.host_default.clone(),
                    )]),
                    functions: BTreeMap::new(),
                },
            })
        });
        let state = Arc::make_mut(state);
        for (function, value) in &d.initial_keys.function_defaults {
            if d.manifest.functions.iter().any(|f| &f.name == function) {
                state
                    .keys
                    .functions
                    .entry(function.clone())
                    .or_default()
                    .entry("default".to_string())
                    .or_insert_with(|| value.clone());
            }
        }
        let mut settings_changed = false;
        for (k, v) in &d.settings {
            if state.settings.get(k) != Some(v) {
                state.settings.insert(k.clone(), v.clone());
                settings_changed = true;
            }
        }
        let existed = state.version(&d.version).is_some();
        if existed && state.active_version == d.version {
            if settings_changed {
                state.updated_at_ms = d.at_ms;
            }
            return Ok(settings_changed);
        }
        if !existed {
            state.versions.push(VersionState {
                id: d.version.clone(),
                size_bytes: d.size_bytes,
                deployed_at_ms: d.at_ms,
                manifest: d.manifest.clone(),
            });
        }
        state.active_version = d.version.clone();
        state.updated_at_ms = d.at_ms;
        self.prune_timers();
        Ok(true)
    }

    /// Before [`Feature::AppHosts`], HTTP routes of all apps formed one namespace:
    /// a version whose route+method pairs overlap another app's active version is
    /// refused. Since, apps may share routes (each is reached at its own address):
    /// see [`ClusterState::shared_routes`].
    pub fn route_conflict(&self, app: &AppName, manifest: &AppManifest) -> Option<Rejection> {
        if self.allows(Feature::AppHosts) {
            return None;
        }
        let s = self.shared_routes(app, manifest).into_iter().next()?;
        Some(Rejection::RouteConflict {
            app: app.clone(),
            function: s.function,
            route: s.route,
            other_app: s.other_app,
            other_function: s.other_function,
            other_route: s.other_route,
        })
    }

    /// The functions of `app` (in `manifest`) whose routes another app's active
    /// version also claims: the shared address serves neither.
    pub fn shared_routes(&self, app: &AppName, manifest: &AppManifest) -> Vec<SharedRoute> {
        strom_proto::route_table::shared_routes(
            app,
            manifest,
            self.apps
                .iter()
                .map(|(name, other)| (name, &other.active().manifest)),
        )
    }

    pub(crate) fn app(&self, app: &AppName) -> Result<&AppState, Rejection> {
        self.apps
            .get(app)
            .map(|a| &**a)
            .ok_or_else(|| Rejection::AppNotFound { app: app.clone() })
    }

    fn app_mut(&mut self, app: &AppName) -> Result<&mut AppState, Rejection> {
        self.apps
            .get_mut(app)
            .map(Arc::make_mut)
            .ok_or_else(|| Rejection::AppNotFound { app: app.clone() })
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use strom_proto::command::InitialKeys;
    use strom_proto::manifest::{pack_dir, validate_app, AppPackage, ZipLimits};

    /// A validated manifest of an app whose functions are `(name, function.json)`.
    pub(crate) fn manifest(prefix: &str, functions: &[(&str, &str)]) -> AppManifest {
        manifest_with(prefix, functions, &BTreeMap::new())
    }

    /// [`manifest`], validated with these app settings.
    pub(crate) fn manifest_with(
        prefix: &str,
        functions: &[(&str, &str)],
        settings: &BTreeMap<String, String>,
    ) -> AppManifest {
        let dir = tempfile::tempdir().unwrap();
        // The handler is in the package (a bare command would depend on this
        // machine's PATH: no `sh` on Windows).
        std::fs::write(dir.path().join("sh"), "").unwrap();
        std::fs::write(
            dir.path().join("host.json"),
            format!(
                r#"{{"version":"2.0","customHandler":{{"description":{{"defaultExecutablePath":"sh"}}}},
                   "extensions":{{"http":{{"routePrefix":"{prefix}"}}}}}}"#
            ),
        )
        .unwrap();
        for (name, json) in functions {
            std::fs::create_dir(dir.path().join(name)).unwrap();
            std::fs::write(dir.path().join(name).join("function.json"), json).unwrap();
        }
        let zip = pack_dir(dir.path()).unwrap();
        let pkg = AppPackage::from_zip_bytes(&zip, &ZipLimits::default()).unwrap();
        validate_app(&pkg, settings).unwrap()
    }

    pub(crate) fn http(route: &str, methods: &str) -> String {
        format!(
            r#"{{"bindings":[{{"type":"httpTrigger","direction":"in","name":"req","route":"{route}","methods":[{methods}]}},
                {{"type":"http","direction":"out","name":"res"}}]}}"#
        )
    }

    pub(crate) fn app(name: &str) -> AppName {
        AppName::parse(name).unwrap()
    }

    pub(crate) fn version(n: u8) -> VersionId {
        VersionId::of_bytes(&[n])
    }

    pub(crate) fn deploy(app_name: &str, v: u8, m: AppManifest, at: i64) -> Command {
        Command::DeployVersion(Box::new(DeployVersion {
            app: app(app_name),
            version: version(v),
            size_bytes: 10,
            initial_keys: InitialKeys {
                master: format!("master-{v}"),
                host_default: format!("host-{v}"),
                function_defaults: m
                    .functions
                    .iter()
                    .map(|f| (f.name.clone(), format!("{}-{v}", f.name)))
                    .collect(),
            },
            manifest: m,
            at_ms: at,
            settings: BTreeMap::new(),
        }))
    }

    pub(crate) fn initialized() -> ClusterState {
        let mut s = ClusterState::default();
        let r = s.apply(&Command::InitCluster {
            cluster_id: ClusterId::new_random(),
            admin_token_hash: TokenHash::of("a"),
            join_token_hash: TokenHash::of("j"),
            at_ms: 1,
        });
        assert_eq!(r, CommandResult::Applied);
        s
    }

    const SESSION: &str = "0123456789abcdef0123456789abcdef";

    fn scale_in_session(seq: u64, instances: u32, at_ms: i64) -> Command {
        Command::InSession(Box::new(SessionWrite {
            session: SESSION.into(),
            seq,
            fingerprint: format!("scale-{instances}"),
            command: Command::SetScale {
                app: app("api"),
                instances,
                at_ms,
            },
            at_ms,
        }))
    }

    fn with_session() -> ClusterState {
        let mut s = initialized();
        s.protocol = 10;
        let m = manifest("api", &[("a", &http("a", r#""get""#))]);
        assert_eq!(s.apply(&deploy("api", 1, m, 1)), CommandResult::Applied);
        let open = Command::OpenSession {
            id: SESSION.into(),
            at_ms: 10,
        };
        assert_eq!(s.apply(&open), CommandResult::Applied);
        s
    }

    /// A write retried in its session is answered with the first result and
    /// applied once, even when another client changed the state in between.
    #[test]
    fn a_retried_session_write_is_applied_once() {
        let mut s = with_session();
        assert_eq!(
            s.apply_at(&scale_in_session(1, 3, 20), 7),
            CommandResult::Applied
        );
        // Someone else scales the app; then the retry of seq 1 arrives.
        let other = Command::SetScale {
            app: app("api"),
            instances: 5,
            at_ms: 21,
        };
        assert_eq!(s.apply(&other), CommandResult::Applied);
        assert_eq!(
            s.apply_at(&scale_in_session(1, 3, 22), 9),
            CommandResult::Replayed {
                index: 7,
                result: Box::new(CommandResult::Applied)
            }
        );
        assert_eq!(s.apps[&app("api")].scale, Some(5), "not applied again");
        // A rejection is an outcome too: its retry gets the same rejection.
        let missing = Command::InSession(Box::new(SessionWrite {
            session: SESSION.into(),
            seq: 2,
            fingerprint: "del".into(),
            command: Command::DeleteApp {
                app: app("nope"),
                at_ms: 23,
            },
            at_ms: 23,
        }));
        let first = s.apply_at(&missing, 11);
        assert!(matches!(
            first,
            CommandResult::Rejected(Rejection::AppNotFound { .. })
        ));
        assert_eq!(
            s.apply_at(&missing, 12),
            CommandResult::Replayed {
                index: 11,
                result: Box::new(first)
            }
        );
    }

    /// Malformed sequences are refused and change nothing.
    #[test]
    fn reused_old_and_far_ahead_sequence_numbers_are_refused() {
        let mut s = with_session();
        assert_eq!(s.apply(&scale_in_session(1, 3, 20)), CommandResult::Applied);
        let before = s.clone();
        // The same number with another request.
        assert!(matches!(
            s.apply(&scale_in_session(1, 4, 21)),
            CommandResult::Rejected(Rejection::SequenceReused { seq: 1, .. })
        ));
        assert_eq!(s, before);
        // Gaps are allowed (a refused request used no number), within the window.
        assert_eq!(s.apply(&scale_in_session(5, 6, 22)), CommandResult::Applied);
        let before = s.clone();
        assert!(matches!(
            s.apply(&scale_in_session(3, 7, 23)),
            CommandResult::Rejected(Rejection::SequenceOld {
                seq: 3,
                last: 5,
                ..
            })
        ));
        assert!(matches!(
            s.apply(&scale_in_session(5 + SEQ_WINDOW + 1, 8, 24)),
            CommandResult::Rejected(Rejection::SequenceAhead { last: 5, .. })
        ));
        assert_eq!(s, before, "refused writes change nothing");
        // Sessions cannot nest, and an unknown one is refused.
        let nested = Command::InSession(Box::new(SessionWrite {
            session: SESSION.into(),
            seq: 6,
            fingerprint: "n".into(),
            command: Command::OpenSession {
                id: SESSION.into(),
                at_ms: 1,
            },
            at_ms: 25,
        }));
        assert_eq!(
            s.apply(&nested),
            CommandResult::Rejected(Rejection::NestedSession)
        );
        let mut unknown = scale_in_session(6, 9, 26);
        if let Command::InSession(w) = &mut unknown {
            w.session = "f".repeat(32);
        }
        assert!(matches!(
            s.apply(&unknown),
            CommandResult::Rejected(Rejection::SessionUnknown { .. })
        ));
        assert_eq!(s, before);
    }

    /// Idle sessions expire by the commands' own times (every member agrees):
    /// a late retry gets "outcome unknown", never a second application.
    #[test]
    fn idle_sessions_expire_and_the_table_is_bounded() {
        let mut s = with_session();
        assert_eq!(s.apply(&scale_in_session(1, 3, 20)), CommandResult::Applied);
        let late = 20 + SESSION_IDLE_MS + 1;
        let r = s.apply(&scale_in_session(1, 3, late));
        match &r {
            CommandResult::Rejected(e @ Rejection::SessionUnknown { .. }) => {
                assert!(e.to_string().starts_with("outcome unknown"), "{e}")
            }
            other => panic!("{other:?}"),
        }
        // Opening another session forgets the idle one.
        let open = |id: String, at_ms| Command::OpenSession { id, at_ms };
        assert_eq!(s.apply(&open("a".repeat(32), late)), CommandResult::Applied);
        assert!(!s.sessions.contains_key(SESSION));
        // At the limit, the session idle longest makes room.
        for i in 0..MAX_SESSIONS as i64 {
            s.apply(&open(format!("{:032x}", i + 1), late + 1 + i));
        }
        assert_eq!(s.sessions.len(), MAX_SESSIONS);
        assert!(!s.sessions.contains_key(&"a".repeat(32)), "the oldest went");
        // Before protocol 10 there are no sessions.
        let mut old = initialized();
        old.protocol = 9;
        assert!(matches!(
            old.apply(&open("b".repeat(32), 1)),
            CommandResult::Rejected(Rejection::NotYetEnabled { needs: 10, .. })
        ));
    }

    /// An older worker would take a RabbitMQ output for unsupported and drop its
    /// messages: such versions wait until every node speaks protocol 9.
    #[test]
    fn rabbitmq_outputs_wait_for_protocol_9() {
        let mut m = manifest("api", &[("a", &http("a", r#""get""#))]);
        m.functions[0]
            .bindings
            .push(strom_proto::manifest::BindingSpec {
                binding_type: "rabbitMQ".into(),
                direction: strom_proto::manifest::Direction::Out,
                name: "msg".into(),
                supported: true,
            });
        let mut s = initialized();
        s.protocol = 8;
        assert!(matches!(
            s.apply(&deploy("mq", 1, m.clone(), 1)),
            CommandResult::Rejected(Rejection::NotYetEnabled { needs: 9, .. })
        ));
        assert!(!s.apps.contains_key(&app("mq")), "nothing changed");
        s.protocol = 9;
        assert_eq!(s.apply(&deploy("mq", 1, m, 1)), CommandResult::Applied);
    }

    #[test]
    fn commands_before_init_and_a_second_init_are_rejected() {
        let mut s = ClusterState::default();
        let m = manifest("api", &[("a", &http("a", r#""get""#))]);
        assert_eq!(
            s.apply(&deploy("x1", 1, m, 1)),
            CommandResult::Rejected(Rejection::NotInitialized)
        );
        let mut s = initialized();
        let again = s.apply(&Command::InitCluster {
            cluster_id: ClusterId::new_random(),
            admin_token_hash: TokenHash::of("b"),
            join_token_hash: TokenHash::of("k"),
            at_ms: 2,
        });
        assert_eq!(
            again,
            CommandResult::Rejected(Rejection::AlreadyInitialized)
        );
        assert!(s.cluster.as_ref().unwrap().admin_token_hash.matches("a"));
    }

    #[test]
    fn deploy_creates_the_app_with_keys_and_redeploy_keeps_them() {
        let mut s = initialized();
        let m1 = manifest("api", &[("a", &http("a", r#""get""#))]);
        assert_eq!(
            s.apply(&deploy("orders", 1, m1.clone(), 10)),
            CommandResult::Applied
        );
        let st = &s.apps[&app("orders")];
        assert_eq!(st.active_version, version(1));
        assert_eq!(st.keys.master, "master-1");
        assert_eq!(st.keys.host["default"], "host-1");
        assert_eq!(st.keys.functions["a"]["default"], "a-1");

        // Same package again: nothing changes.
        assert_eq!(
            s.apply(&deploy("orders", 1, m1, 11)),
            CommandResult::Unchanged
        );

        // A new version with a new function: old keys kept, new function gets one.
        let m2 = manifest(
            "api",
            &[("a", &http("a", r#""get""#)), ("b", &http("b", r#""get""#))],
        );
        assert_eq!(
            s.apply(&deploy("orders", 2, m2, 12)),
            CommandResult::Applied
        );
        let st = &s.apps[&app("orders")];
        assert_eq!(st.active_version, version(2));
        assert_eq!(st.versions.len(), 2);
        assert_eq!(st.keys.master, "master-1");
        assert_eq!(st.keys.functions["a"]["default"], "a-1");
        assert_eq!(st.keys.functions["b"]["default"], "b-2");
        assert_eq!(st.created_at_ms, 10);
        assert_eq!(st.updated_at_ms, 12);
    }

    #[test]
    fn rollback_activates_an_earlier_version_and_unknown_versions_are_rejected() {
        let mut s = initialized();
        s.apply(&deploy(
            "orders",
            1,
            manifest("api", &[("a", &http("a", ""))]),
            1,
        ));
        s.apply(&deploy(
            "orders",
            2,
            manifest("api", &[("b", &http("b", ""))]),
            2,
        ));
        let r = s.apply(&Command::ActivateVersion {
            app: app("orders"),
            version: version(1),
            at_ms: 3,
        });
        assert_eq!(r, CommandResult::Applied);
        assert_eq!(
            s.apps[&app("orders")].active().manifest.functions[0].name,
            "a"
        );
        let r = s.apply(&Command::ActivateVersion {
            app: app("orders"),
            version: version(9),
            at_ms: 4,
        });
        assert!(matches!(
            r,
            CommandResult::Rejected(Rejection::VersionNotFound { .. })
        ));
        assert_eq!(s.apps[&app("orders")].active_version, version(1));
    }

    #[test]
    fn since_app_hosts_apps_may_share_routes_and_the_sharing_is_named() {
        let mut s = initialized();
        s.apply(&deploy(
            "one",
            1,
            manifest("api", &[("get-item", &http("items/{id}", r#""get""#))]),
            1,
        ));
        s.apply(&Command::SetClusterProtocol {
            protocol: Feature::AppHosts.since(),
            at_ms: 2,
        });
        let two = manifest("api", &[("item", &http("items/{key}", r#""get","post""#))]);
        assert_eq!(
            s.apply(&deploy("two", 2, two.clone(), 3)),
            CommandResult::Applied
        );
        let shared = s.shared_routes(&app("two"), &two);
        assert_eq!(shared.len(), 1);
        assert_eq!(
            (shared[0].function.as_str(), shared[0].other_app.as_str()),
            ("item", "one")
        );
        assert!(s
            .shared_routes(&app("one"), &s.apps[&app("one")].active().manifest)
            .iter()
            .any(|r| r.other_app == app("two")));
    }

    #[test]
    fn overlapping_routes_across_apps_are_refused_naming_both_apps() {
        let mut s = initialized();
        s.apply(&deploy(
            "one",
            1,
            manifest("api", &[("get-item", &http("items/{id}", r#""get""#))]),
            1,
        ));
        let before = s.clone();
        let r = s.apply(&deploy(
            "two",
            2,
            manifest("api", &[("item", &http("items/{key}", r#""get","post""#))]),
            2,
        ));
        match r {
            CommandResult::Rejected(e @ Rejection::RouteConflict { .. }) => {
                let text = e.to_string();
                assert!(text.contains("`one`") && text.contains("`two`"), "{text}");
            }
            other => panic!("expected a route conflict, got {other:?}"),
        }
        assert_eq!(s, before, "a rejected deploy changes nothing");
        // Different methods, a different prefix, or a different shape are fine.
        for (v, m) in [
            (
                3,
                manifest("api", &[("item", &http("items/{key}", r#""post""#))]),
            ),
            (
                4,
                manifest("v2", &[("item", &http("items/{key}", r#""get""#))]),
            ),
            (
                5,
                manifest("api", &[("item", &http("items/{key:int}/x", r#""get""#))]),
            ),
        ] {
            let r = s.apply(&deploy("two", v, m, v as i64));
            assert_eq!(r, CommandResult::Applied, "version {v}");
        }
    }

    #[test]
    fn settings_are_set_and_removed_and_unknown_apps_are_not_found() {
        let mut s = initialized();
        s.apply(&deploy(
            "orders",
            1,
            manifest("api", &[("a", &http("a", ""))]),
            1,
        ));
        let set = |set: &[(&str, &str)], remove: &[&str]| Command::SetAppSettings {
            app: app("orders"),
            set: set
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
            remove: remove.iter().map(|k| k.to_string()).collect(),
            at_ms: 5,
        };
        assert_eq!(
            s.apply(&set(&[("A", "1"), ("B", "2")], &[])),
            CommandResult::Applied
        );
        assert_eq!(s.apply(&set(&[("A", "1")], &[])), CommandResult::Unchanged);
        assert_eq!(s.apply(&set(&[], &["B"])), CommandResult::Applied);
        assert_eq!(
            s.apps[&app("orders")].settings,
            BTreeMap::from([("A".to_string(), "1".to_string())])
        );
        let r = s.apply(&Command::SetAppSettings {
            app: app("nope"),
            set: BTreeMap::new(),
            remove: vec![],
            at_ms: 6,
        });
        assert!(matches!(
            r,
            CommandResult::Rejected(Rejection::AppNotFound { .. })
        ));
        let r = s.apply(&Command::DeleteApp {
            app: app("orders"),
            at_ms: 7,
        });
        assert_eq!(r, CommandResult::Applied);
        assert!(s.apps.is_empty());
    }

    #[test]
    fn keys_can_be_put_and_deleted_but_master_is_permanent() {
        let mut s = initialized();
        s.apply(&deploy(
            "orders",
            1,
            manifest("api", &[("a", &http("a", ""))]),
            1,
        ));
        let put = Command::PutKey {
            app: app("orders"),
            scope: KeyScope::Function("a".into()),
            name: "ci".into(),
            value: "v".into(),
            at_ms: 2,
        };
        assert_eq!(s.apply(&put), CommandResult::Applied);
        assert_eq!(s.apply(&put), CommandResult::Unchanged);
        let bad = Command::PutKey {
            app: app("orders"),
            scope: KeyScope::Function("zzz".into()),
            name: "ci".into(),
            value: "v".into(),
            at_ms: 2,
        };
        assert!(matches!(
            s.apply(&bad),
            CommandResult::Rejected(Rejection::FunctionNotFound { .. })
        ));
        let del_master = Command::DeleteKey {
            app: app("orders"),
            scope: KeyScope::Master,
            name: "_master".into(),
            at_ms: 3,
        };
        assert_eq!(
            s.apply(&del_master),
            CommandResult::Rejected(Rejection::MasterKeyIsPermanent)
        );
        let del = Command::DeleteKey {
            app: app("orders"),
            scope: KeyScope::Function("a".into()),
            name: "ci".into(),
            at_ms: 4,
        };
        assert_eq!(s.apply(&del), CommandResult::Applied);
        assert!(matches!(
            s.apply(&del),
            CommandResult::Rejected(Rejection::KeyNotFound { .. })
        ));
    }
}
