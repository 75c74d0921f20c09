//! `NodeSupervisor`: the root of a worker's actor tree.
//!
//! It receives the desired assignments (which app versions run here, with how
//! many instances and which settings), keeps one [`AppSupervisor`] per deployment
//! (app + version + configuration), decides which deployment **serves** each app,
//! and publishes the routing snapshot and the instance statuses.
//!
//! Make-before-break (decided by [`serving::plan`], pure): a new deployment (new
//! version, or changed settings) starts next to the serving one; traffic switches
//! only once all its instances are Ready; then the old one drains (in-flight
//! requests finish) and stops. If the new one never becomes Ready (crash loop),
//! the old one keeps serving. In memory only: the desired assignments come from
//! the replicated state again after a restart.

use std::collections::hash_map::DefaultHasher;
use std::collections::BTreeMap;
use std::hash::{Hash, Hasher};
use std::path::PathBuf;
use std::sync::Arc;

use ractor::{Actor, ActorProcessingErr, ActorRef, RpcReplyPort, SupervisionEvent};
use strom_proto::ids::{AppName, VersionId};
use strom_proto::instances::InstanceStatus;
use strom_proto::manifest::rabbitmq::PackageMessaging;
use strom_proto::manifest::AppManifest;
use strom_proto::route_table::RouteTable;
use tokio::sync::watch;

use crate::app_supervisor::{AppArgs, AppMsg, AppSupervisor, Lifecycle};
use crate::routing::{Endpoint, RoutingSnapshot, RoutingTable, ServingApp};
use crate::runtime::{InstanceRuntime, InstanceSpec};
use crate::serving::{self, DeployFacts};

/// One deployment of an app: a version with one configuration. A settings change
/// is a new deployment, so it rolls out make-before-break like a new version.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct DeployKey {
    pub app: AppName,
    pub version: VersionId,
    pub config: u64,
}

/// "Run this app version here with these settings and this many instances."
#[derive(Debug, Clone)]
pub struct Assignment {
    pub app: AppName,
    pub version: VersionId,
    /// The unpacked package.
    pub app_root: PathBuf,
    pub manifest: Arc<AppManifest>,
    /// The version's host.json uses the legacy `httpWorker` section: forwarded
    /// requests go to `/{FunctionName}` (read from the unpacked package).
    pub http_worker: bool,
    /// The version's RabbitMQ outputs and prefetch (read from the unpacked package).
    pub messaging: Arc<PackageMessaging>,
    pub settings: BTreeMap<String, String>,
    pub instances: u32,
}

impl Assignment {
    pub fn key(&self) -> DeployKey {
        let mut h = DefaultHasher::new();
        self.settings.hash(&mut h);
        self.app_root.hash(&mut h);
        DeployKey {
            app: self.app.clone(),
            version: self.version.clone(),
            config: h.finish(),
        }
    }
}

pub enum NodeMsg {
    Assign(Vec<Assignment>),
    AppReport {
        key: DeployKey,
        statuses: Vec<InstanceStatus>,
        endpoints: Vec<Arc<Endpoint>>,
        wanted: u32,
    },
    AppStopped {
        key: DeployKey,
        actor: ractor::ActorId,
    },
    /// Drain every app, then answer.
    Shutdown(RpcReplyPort<()>),
}

pub struct NodeArgs {
    pub runtime: Arc<dyn InstanceRuntime>,
    pub lifecycle: Lifecycle,
    pub routing: RoutingTable,
    pub status: watch::Sender<Arc<Vec<InstanceStatus>>>,
}

struct Deploy {
    actor: ActorRef<AppMsg>,
    manifest: Arc<AppManifest>,
    http_worker: bool,
    messaging: Arc<PackageMessaging>,
    statuses: Vec<InstanceStatus>,
    endpoints: Vec<Arc<Endpoint>>,
    wanted: u32,
    draining: bool,
}

#[derive(Default)]
struct AppEntry {
    desired: Option<Assignment>,
    deploys: BTreeMap<DeployKey, Deploy>,
    serving: Option<DeployKey>,
}

pub struct NodeState {
    args: NodeArgs,
    apps: BTreeMap<AppName, AppEntry>,
    shutdown: Option<RpcReplyPort<()>>,
}

pub struct NodeSupervisor;

impl NodeState {
    async fn spawn(&mut self, myself: &ActorRef<NodeMsg>, a: &Assignment) {
        let key = a.key();
        let spec = InstanceSpec {
            app: a.app.clone(),
            version: a.version.clone(),
            instance_id: String::new(),
            app_root: a.app_root.clone(),
            handler: a.manifest.host.custom_handler.clone(),
            settings: a.settings.clone(),
        };
        let args = AppArgs {
            key: key.clone(),
            spec,
            instances: a.instances,
            runtime: self.args.runtime.clone(),
            lifecycle: self.args.lifecycle.clone(),
            parent: myself.clone(),
        };
        match Actor::spawn_linked(None, AppSupervisor, args, myself.get_cell()).await {
            Ok((actor, _)) => {
                let entry = self.apps.entry(a.app.clone()).or_default();
                entry.deploys.insert(
                    key,
                    Deploy {
                        actor,
                        manifest: a.manifest.clone(),
                        http_worker: a.http_worker,
                        messaging: a.messaging.clone(),
                        statuses: Vec::new(),
                        endpoints: Vec::new(),
                        wanted: a.instances,
                        draining: false,
                    },
                );
            }
            Err(e) => tracing::error!(app = %a.app, "cannot start the app supervisor: {e}"),
        }
    }

    async fn reconcile(&mut self, myself: &ActorRef<NodeMsg>) {
        if self.shutdown.is_none() {
            let missing: Vec<Assignment> = self
                .apps
                .values()
                .filter_map(|e| e.desired.clone())
                // A deployment of the same key still draining is waited for.
                .filter(|a| !self.apps[&a.app].deploys.contains_key(&a.key()))
                .collect();
            for a in missing {
                self.spawn(myself, &a).await;
            }
        }
        let shutting_down = self.shutdown.is_some();
        let mut to_drain = Vec::new();
        for entry in self.apps.values_mut() {
            let desired = entry.desired.as_ref().map(Assignment::key);
            let facts = entry
                .deploys
                .iter()
                .map(|(k, d)| {
                    let facts = DeployFacts {
                        wanted: d.wanted,
                        ready: d.endpoints.len() as u32,
                        draining: d.draining,
                    };
                    (k.clone(), facts)
                })
                .collect();
            let plan = serving::plan(
                desired.as_ref(),
                entry.serving.as_ref(),
                &facts,
                shutting_down,
            );
            entry.serving = plan.serving;
            for key in plan.drain {
                if let Some(deploy) = entry.deploys.get_mut(&key) {
                    deploy.draining = true;
                    to_drain.push(deploy.actor.clone());
                }
            }
        }
        self.apps
            .retain(|_, e| e.desired.is_some() || !e.deploys.is_empty());
        // Traffic leaves a deployment (publish) before it is told to drain.
        self.publish();
        for actor in to_drain {
            let _ = actor.send_message(AppMsg::Drain);
        }
        if self.shutdown.is_some() && self.apps.values().all(|e| e.deploys.is_empty()) {
            if let Some(reply) = self.shutdown.take() {
                let _ = reply.send(());
            }
        }
    }

    fn publish(&self) {
        let mut serving_apps = BTreeMap::new();
        let mut statuses = Vec::new();
        for (name, entry) in &self.apps {
            for (key, deploy) in &entry.deploys {
                let is_serving = Some(key) == entry.serving.as_ref() && !deploy.draining;
                statuses.extend(deploy.statuses.iter().cloned().map(|mut s| {
                    s.serving = is_serving;
                    s
                }));
                if !is_serving {
                    continue;
                }
                // The deployment on its way (wanted, not yet serving), if any.
                let newer = entry
                    .desired
                    .as_ref()
                    .map(Assignment::key)
                    .filter(|k| k != key)
                    .and_then(|k| entry.deploys.get(&k))
                    .map(|d| d.statuses.as_slice());
                let unavailable = serving::unavailable_with_newer(
                    name.as_str(),
                    serving::unavailable(
                        name.as_str(),
                        deploy.wanted,
                        deploy.endpoints.len(),
                        &deploy.statuses,
                    ),
                    newer,
                );
                serving_apps.insert(
                    name.clone(),
                    ServingApp {
                        version: key.version.clone(),
                        routes: Arc::new(RouteTable::build([(name, deploy.manifest.as_ref())])),
                        manifest: deploy.manifest.clone(),
                        http_worker: deploy.http_worker,
                        messaging: deploy.messaging.clone(),
                        endpoints: deploy.endpoints.clone(),
                        unavailable,
                    },
                );
            }
        }
        self.args
            .routing
            .publish(RoutingSnapshot::new(serving_apps));
        self.args.status.send_replace(Arc::new(statuses));
    }
}

impl Actor for NodeSupervisor {
    type Msg = NodeMsg;
    type State = NodeState;
    type Arguments = NodeArgs;

    async fn pre_start(
        &self,
        _myself: ActorRef<NodeMsg>,
        args: NodeArgs,
    ) -> Result<NodeState, ActorProcessingErr> {
        Ok(NodeState {
            args,
            apps: BTreeMap::new(),
            shutdown: None,
        })
    }

    async fn handle(
        &self,
        myself: ActorRef<NodeMsg>,
        msg: NodeMsg,
        state: &mut NodeState,
    ) -> Result<(), ActorProcessingErr> {
        match msg {
            NodeMsg::Assign(assignments) => {
                let mut seen = std::collections::BTreeSet::new();
                for a in assignments {
                    seen.insert(a.app.clone());
                    let entry = state.apps.entry(a.app.clone()).or_default();
                    if let Some(d) = entry.deploys.get_mut(&a.key()) {
                        if d.wanted != a.instances && !d.draining {
                            d.wanted = a.instances;
                            let _ = d.actor.send_message(AppMsg::SetScale(a.instances));
                        }
                    }
                    entry.desired = Some(a);
                }
                for (name, entry) in state.apps.iter_mut() {
                    if !seen.contains(name) {
                        entry.desired = None;
                    }
                }
            }
            NodeMsg::AppReport {
                key,
                statuses,
                endpoints,
                wanted,
            } => {
                if let Some(d) = state
                    .apps
                    .get_mut(&key.app)
                    .and_then(|e| e.deploys.get_mut(&key))
                {
                    d.statuses = statuses;
                    d.endpoints = endpoints;
                    d.wanted = wanted;
                }
            }
            NodeMsg::AppStopped { key, actor } => {
                if let Some(e) = state.apps.get_mut(&key.app) {
                    if e.deploys
                        .get(&key)
                        .is_some_and(|d| d.actor.get_id() == actor)
                    {
                        e.deploys.remove(&key);
                    }
                }
            }
            NodeMsg::Shutdown(reply) => {
                state.shutdown = Some(reply);
            }
        }
        state.reconcile(&myself).await;
        Ok(())
    }

    async fn handle_supervisor_evt(
        &self,
        myself: ActorRef<NodeMsg>,
        event: SupervisionEvent,
        state: &mut NodeState,
    ) -> Result<(), ActorProcessingErr> {
        if let SupervisionEvent::ActorFailed(cell, err) = event {
            // An app supervisor failed (a bug): forget it; reconcile starts it again.
            tracing::error!("app supervisor failed: {err}");
            for e in state.apps.values_mut() {
                e.deploys.retain(|_, d| d.actor.get_id() != cell.get_id());
            }
            state.reconcile(&myself).await;
        }
        Ok(())
    }
}
