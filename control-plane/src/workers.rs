//! Worker nodes, seen from the management group.
//!
//! - **Registration** (`WorkerService/Register`, join token): committed as
//!   `RegisterWorker`; a registered worker is Up.
//! - **Leases** live in the leader's memory only: every heartbeat renews one, and
//!   carries the worker's instance reports (one batch per heartbeat). Only
//!   transitions are committed: `SetWorkerLiveness` Down when a lease expires (default
//!   5 s), Up when heartbeats resume. A new leader gives every worker a full lease
//!   before judging it, so a leader change never marks a healthy worker Down.
//! - **Leader duties** ([`run_leader_duties`]): expire leases, raise the cluster
//!   protocol once every member speaks it (the version gate), and run the scheduler
//!   (`scheduler::plan`), committing its decisions as one `Place` per round.
//! - **State watch** (`WorkerService/WatchState`): any management node streams its
//!   applied state to workers, so worker-only nodes route and run from the last state
//!   they received, with or without a reachable leader.

use std::collections::{BTreeMap, HashMap};
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures::{Stream, StreamExt};
use strom_proto::codec;
use strom_proto::command::{Command, CommandResult, WorkerCapacity, WorkerInfo};
use strom_proto::ids::{AppName, NodeId, VersionId};
use strom_proto::instances::{InstanceState, InstanceStatus};
use strom_proto::internal_v1::worker_service_client::WorkerServiceClient;
use strom_proto::internal_v1::worker_service_server::WorkerService;
use strom_proto::internal_v1::{
    HeartbeatReply, HeartbeatRequest, InstanceReport, LiveWorker, LiveWorkersReply,
    LiveWorkersRequest, NodeInfoReply, NodeInfoRequest, RegisterWorkerReply, RegisterWorkerRequest,
    StateUpdate, WatchStateRequest,
};
use strom_proto::raft_types::{LogId, StoredMembership};
use strom_proto::version::{self, Feature, NodeVersion};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tonic::{Request, Response, Status};

use crate::cluster_state::ClusterState;
use crate::management::{now_ms, ManagementNode, QUORUM_WAIT};
use crate::membership::{cluster_of, not_leader_status};
use crate::scheduler;
use crate::state_machine::StateView;

/// What the leader knows about workers and members from outside the log.
#[derive(Default)]
pub struct LiveWorkers {
    inner: Mutex<LiveInner>,
}

#[derive(Default)]
struct LiveInner {
    /// Since when this node leads (`None` when it does not).
    leader_since: Option<Instant>,
    leases: HashMap<NodeId, Lease>,
    /// Build and protocol of the management members, as they answered `NodeInfo`.
    members: BTreeMap<NodeId, NodeVersion>,
}

#[derive(Debug, Clone)]
struct Lease {
    last: Instant,
    build: String,
    protocol: u32,
    instances: Vec<InstanceStatus>,
}

impl LiveWorkers {
    fn lock(&self) -> std::sync::MutexGuard<'_, LiveInner> {
        self.inner.lock().expect("live workers lock")
    }

    /// Ready instances of each app's active version per worker, from the latest
    /// heartbeats (what the scheduler needs for make-before-break drains).
    pub fn ready_view(&self, state: &ClusterState) -> scheduler::LiveView {
        let inner = self.lock();
        let mut ready = HashMap::new();
        for (node, lease) in &inner.leases {
            for i in &lease.instances {
                let active = state.apps.get(&i.app).map(|a| &a.active_version);
                if i.state == InstanceState::Ready && active == Some(&i.version) {
                    *ready.entry((*node, i.app.clone())).or_insert(0) += 1;
                }
            }
        }
        scheduler::LiveView { ready }
    }

    /// The member versions known here (this node's own included by the caller).
    pub fn member_versions(&self) -> BTreeMap<NodeId, NodeVersion> {
        self.lock().members.clone()
    }
}

/// The instance report a worker sends for one of its instances.
pub fn report_of(s: &InstanceStatus) -> InstanceReport {
    InstanceReport {
        app: s.app.to_string(),
        version: s.version.to_string(),
        slot: s.slot,
        instance_id: s.instance_id.clone(),
        state: s.state.as_str().to_string(),
        restarts: s.restarts,
        pid: s.pid.unwrap_or(0),
        last_error: s.last_error.clone().unwrap_or_default(),
        serving: s.serving,
    }
}

/// The instance status in a report; `None` (with the reason) if the report is malformed.
pub fn status_of(r: &InstanceReport) -> Result<InstanceStatus, String> {
    let state = match r.state.as_str() {
        "Starting" => InstanceState::Starting,
        "Ready" => InstanceState::Ready,
        "Draining" => InstanceState::Draining,
        "Restarting" => InstanceState::Restarting,
        "CrashLooping" => InstanceState::CrashLooping,
        other => return Err(format!("instance state `{other}` is unknown")),
    };
    Ok(InstanceStatus {
        app: AppName::parse(&r.app).map_err(|e| format!("app `{}`: {e}", r.app))?,
        version: VersionId::parse(&r.version).map_err(|e| format!("version: {e}"))?,
        slot: r.slot,
        instance_id: r.instance_id.clone(),
        state,
        restarts: r.restarts,
        pid: (r.pid != 0).then_some(r.pid),
        last_error: (!r.last_error.is_empty()).then(|| r.last_error.clone()),
        serving: r.serving,
    })
}

/// The watched state on the wire: what a worker-only node needs to run and route.
pub fn encode_view(view: &StateView) -> Vec<u8> {
    codec::encode(&(&view.last_applied, &view.membership, view.state.as_ref()))
        .expect("the state always encodes")
}

pub fn decode_view(bytes: &[u8]) -> Result<StateView, codec::CodecError> {
    let (last_applied, membership, state): (Option<LogId>, StoredMembership, ClusterState) =
        codec::decode(bytes)?;
    Ok(StateView {
        last_applied,
        membership,
        state: Arc::new(state),
    })
}

pub struct WorkerServer {
    node: ManagementNode,
    /// Ends the state streams when the control server stops.
    shutdown: CancellationToken,
    encoded: Arc<EncodedView>,
}

impl WorkerServer {
    pub fn new(node: ManagementNode, shutdown: CancellationToken) -> Self {
        WorkerServer {
            node,
            shutdown,
            encoded: Arc::default(),
        }
    }
}

/// The latest state encoded once, shared by every watcher.
#[derive(Default)]
struct EncodedView(Mutex<Option<(u64, Vec<u8>)>>);

impl EncodedView {
    fn of(&self, view: &StateView) -> Vec<u8> {
        let index = view.applied_index();
        let mut cached = self.0.lock().expect("encoded view lock");
        match cached.as_ref() {
            Some((i, bytes)) if *i == index => bytes.clone(),
            _ => {
                let bytes = encode_view(view);
                *cached = Some((index, bytes.clone()));
                bytes
            }
        }
    }
}

impl WorkerServer {
    fn check_token(&self, token: &str) -> Result<Arc<StateView>, Status> {
        let view = self.node.read_local();
        let Some(cluster) = view.state.cluster.as_ref() else {
            return Err(Status::unavailable(
                "this management node's cluster is not initialized yet",
            ));
        };
        if !cluster.join_token_hash.matches(token.trim()) {
            return Err(Status::unauthenticated("invalid join token"));
        }
        Ok(view)
    }

    fn check_cluster(&self, theirs: &str) -> Result<(), Status> {
        crate::membership::check_cluster(&self.node, theirs)
    }

    /// UNAVAILABLE with the leader's address, for leader-only calls.
    /// Leader-only calls (leases) are answered only by a leader that a majority
    /// acknowledged recently: openraft 0.9 leaders do not step down when cut off, and
    /// a cut-off leader renewing leases would let the new leader mark every worker
    /// Down.
    fn leader_only(&self) -> Result<(), Status> {
        let metrics = self.node.raft.metrics().borrow().clone();
        if metrics.current_leader != Some(self.node.config.node_id)
            || metrics.state != openraft::ServerState::Leader
        {
            return Err(not_leader_status(&self.node));
        }
        let voters = metrics.membership_config.membership().voter_ids().count();
        let fresh = self.node.config.worker_lease.as_millis() as u64 / 2;
        if voters > 1 && metrics.millis_since_quorum_ack.is_none_or(|ms| ms > fresh) {
            return Err(Status::unavailable(format!(
                "this leader has not heard from a majority for {} ms: it may have been replaced",
                metrics
                    .millis_since_quorum_ack
                    .map(|m| m.to_string())
                    .unwrap_or_else(|| "ever".into())
            )));
        }
        Ok(())
    }

    /// Commit through this node's Raft, failing after [`QUORUM_WAIT`].
    async fn commit(&self, command: Command) -> Result<CommandResult, Status> {
        match tokio::time::timeout(QUORUM_WAIT, self.node.propose_local(command)).await {
            Ok(Ok((_, result))) => Ok(result),
            Ok(Err(e)) => Err(Status::unavailable(e.to_string())),
            Err(_) => Err(Status::unavailable(format!(
                "not committed within {QUORUM_WAIT:?}: no quorum"
            ))),
        }
    }

    fn lease_ms(&self) -> u64 {
        self.node.config.worker_lease.as_millis() as u64
    }
}

/// Validate a registration; every problem is named.
fn worker_info(req: &RegisterWorkerRequest) -> Result<WorkerInfo, Status> {
    if req.node_id == 0 {
        return Err(Status::invalid_argument("node_id: must be at least 1"));
    }
    let addr = req.http_addr.trim();
    if addr.is_empty() || addr.parse::<std::net::SocketAddr>().is_err() && !addr.contains(':') {
        return Err(Status::invalid_argument(format!(
            "http_addr: `{addr}` is not a host:port address"
        )));
    }
    if req.capacity_instances == 0 {
        return Err(Status::invalid_argument(
            "capacity_instances: must be at least 1",
        ));
    }
    for k in req.labels.keys() {
        if k.is_empty() || k.contains([',', '=']) {
            return Err(Status::invalid_argument(format!(
                "labels: `{k}` is not a valid label name (non-empty, no `,` or `=`)"
            )));
        }
    }
    Ok(WorkerInfo {
        node: req.node_id,
        http_addr: addr.to_string(),
        capacity: WorkerCapacity {
            instances: req.capacity_instances,
            memory_mb: req.capacity_memory_mb,
        },
        labels: req.labels.clone().into_iter().collect(),
        build: req.build.clone(),
        at_ms: now_ms(),
    })
}

type StateStream = Pin<Box<dyn Stream<Item = Result<StateUpdate, Status>> + Send>>;

#[tonic::async_trait]
impl WorkerService for WorkerServer {
    async fn register(
        &self,
        request: Request<RegisterWorkerRequest>,
    ) -> Result<Response<RegisterWorkerReply>, Status> {
        let req = request.into_inner();
        let view = self.check_token(&req.join_token)?;
        let info = worker_info(&req)?;
        self.leader_only()?;
        if !view.state.allows(Feature::Workers) {
            return Err(Status::failed_precondition(format!(
                "the cluster still speaks protocol {} (workers need {}): waiting until every management node runs a build that has them",
                view.state.protocol(),
                Feature::Workers.since()
            )));
        }
        // Two live nodes with one id would take turns owning the registration.
        if let Some(known) = view.state.workers.get(&req.node_id) {
            let lease = self
                .node
                .live
                .lock()
                .leases
                .get(&req.node_id)
                .map(|l| l.last);
            let fresh = lease.is_some_and(|t| t.elapsed() < self.node.config.worker_lease);
            if known.up && fresh && known.info.http_addr != info.http_addr {
                return Err(Status::already_exists(format!(
                    "node {} is already a live worker at {}; another node cannot register with its id",
                    req.node_id, known.info.http_addr
                )));
            }
        }
        let result = self.commit(Command::RegisterWorker(Box::new(info))).await?;
        if let CommandResult::Rejected(r) = result {
            return Err(Status::failed_precondition(r.to_string()));
        }
        self.node.live.lock().leases.insert(
            req.node_id,
            Lease {
                last: Instant::now(),
                build: req.build,
                protocol: req.protocol,
                instances: Vec::new(),
            },
        );
        Ok(Response::new(RegisterWorkerReply {
            cluster_id: cluster_of(&self.node),
            lease_ms: self.lease_ms(),
        }))
    }

    async fn heartbeat(
        &self,
        request: Request<HeartbeatRequest>,
    ) -> Result<Response<HeartbeatReply>, Status> {
        let req = request.into_inner();
        let view = self.check_token(&req.join_token)?;
        self.leader_only()?;
        let Some(worker) = view.state.workers.get(&req.node_id) else {
            return Err(Status::failed_precondition(format!(
                "node {} is not a registered worker; register first",
                req.node_id
            )));
        };
        // A malformed report (a newer worker's state name, say) is skipped: it must
        // not cost the worker its lease.
        let mut instances = Vec::with_capacity(req.instances.len());
        for r in &req.instances {
            match status_of(r) {
                Ok(s) => instances.push(s),
                Err(e) => tracing::warn!(node = req.node_id, "skipping an instance report: {e}"),
            }
        }
        self.node.live.lock().leases.insert(
            req.node_id,
            Lease {
                last: Instant::now(),
                build: req.build,
                protocol: req.protocol,
                instances,
            },
        );
        if !worker.up {
            tracing::info!(node = req.node_id, "worker heartbeats resumed: Up");
            self.commit(Command::SetWorkerLiveness {
                node: req.node_id,
                up: true,
                at_ms: now_ms(),
            })
            .await?;
        }
        Ok(Response::new(HeartbeatReply {
            lease_ms: self.lease_ms(),
            applied_index: view.applied_index(),
        }))
    }

    type WatchStateStream = StateStream;

    async fn watch_state(
        &self,
        request: Request<WatchStateRequest>,
    ) -> Result<Response<Self::WatchStateStream>, Status> {
        let req = request.into_inner();
        self.check_token(&req.join_token)?;
        // The current state at once, then the latest after every change (a slow
        // watcher skips intermediate states, never the last one).
        let stream = tokio_stream::wrappers::WatchStream::new(self.node.state.clone()).map({
            let encoded = self.encoded.clone();
            move |view| {
                Ok(StateUpdate {
                    applied_index: view.applied_index(),
                    view: encoded.of(&view),
                })
            }
        });
        let stream = stream.take_until(self.shutdown.clone().cancelled_owned());
        Ok(Response::new(Box::pin(stream)))
    }

    async fn node_info(
        &self,
        request: Request<NodeInfoRequest>,
    ) -> Result<Response<NodeInfoReply>, Status> {
        self.check_cluster(&request.get_ref().cluster_id)?;
        Ok(Response::new(NodeInfoReply {
            node_id: self.node.config.node_id,
            build: version::BUILD.to_string(),
            protocol: version::PROTOCOL,
        }))
    }

    async fn live_workers(
        &self,
        request: Request<LiveWorkersRequest>,
    ) -> Result<Response<LiveWorkersReply>, Status> {
        self.check_cluster(&request.get_ref().cluster_id)?;
        self.leader_only()?;
        Ok(Response::new(self.node.live_workers_local()))
    }
}

impl ManagementNode {
    /// What this node knows from heartbeats (meaningful on the leader).
    pub fn live_workers_local(&self) -> LiveWorkersReply {
        let inner = self.live.lock();
        let now = Instant::now();
        let mut members: Vec<NodeInfoReply> = inner
            .members
            .iter()
            .map(|(id, v)| NodeInfoReply {
                node_id: *id,
                build: v.build.clone(),
                protocol: v.protocol,
            })
            .collect();
        if !inner.members.contains_key(&self.config.node_id) {
            members.push(NodeInfoReply {
                node_id: self.config.node_id,
                build: version::BUILD.to_string(),
                protocol: version::PROTOCOL,
            });
            members.sort_by_key(|m| m.node_id);
        }
        let mut workers: Vec<LiveWorker> = inner
            .leases
            .iter()
            .map(|(id, l)| LiveWorker {
                node_id: *id,
                since_heartbeat_ms: now.duration_since(l.last).as_millis() as u64,
                seen: true,
                build: l.build.clone(),
                protocol: l.protocol,
                instances: l.instances.iter().map(report_of).collect(),
            })
            .collect();
        workers.sort_by_key(|w| w.node_id);
        let metrics = self.raft.metrics().borrow().clone();
        let matched = metrics
            .replication
            .as_ref()
            .map(|r| {
                r.iter()
                    .map(|(id, l)| (*id, l.map(|l| l.index).unwrap_or(0)))
                    .collect()
            })
            .unwrap_or_default();
        LiveWorkersReply {
            leader_id: metrics.current_leader.unwrap_or(0),
            workers,
            members,
            term: metrics.current_term,
            last_log_index: metrics.last_log_index.unwrap_or(0),
            matched,
        }
    }

    /// The leader's live view, asked from any member (`None` if no leader answers).
    pub async fn live_workers(&self) -> Option<LiveWorkersReply> {
        let metrics = self.raft.metrics().borrow().clone();
        let leader = metrics.current_leader?;
        if leader == self.config.node_id {
            return Some(self.live_workers_local());
        }
        let addr = metrics
            .membership_config
            .membership()
            .get_node(&leader)?
            .addr
            .clone();
        let call = async {
            let mut client = WorkerServiceClient::new(
                crate::tls::channel(&addr, std::time::Duration::from_secs(2))
                    .await
                    .ok()?,
            );
            client
                .live_workers(LiveWorkersRequest {
                    cluster_id: cluster_of(self),
                })
                .await
                .ok()
                .map(|r| r.into_inner())
        };
        tokio::time::timeout(Duration::from_secs(2), call)
            .await
            .ok()
            .flatten()
    }
}

/// How often the leader looks at leases and runs the scheduler.
const DUTY_TICK: Duration = Duration::from_millis(200);
/// How often the leader asks members for their build and protocol.
const VERSION_REFRESH: Duration = Duration::from_secs(3);

/// Least time between two rounds woken by state changes.
const MIN_ROUND_GAP: Duration = Duration::from_millis(10);

/// The leader's periodic work, on every management node (idle unless it leads).
pub async fn run_leader_duties(node: ManagementNode, cancel: CancellationToken) {
    let mut last_versions: Option<Instant> = None;
    let mut last_plan: Option<((u64, u64), Instant)> = None;
    // A change to the state (a scale, a deploy, a worker) wakes a round at once, so a
    // placement follows its cause within milliseconds; bursts are coalesced.
    let mut state = node.state.clone();
    let mut state_open = true;
    let mut last_round = Instant::now();
    loop {
        tokio::select! {
            _ = cancel.cancelled() => return,
            _ = tokio::time::sleep(DUTY_TICK) => {}
            changed = state.changed(), if state_open => {
                state_open = changed.is_ok();
                let since = last_round.elapsed();
                if since < MIN_ROUND_GAP {
                    tokio::time::sleep(MIN_ROUND_GAP - since).await;
                }
            }
        }
        last_round = Instant::now();
        let metrics = node.raft.metrics().borrow().clone();
        let leading = metrics.current_leader == Some(node.config.node_id)
            && metrics.state == openraft::ServerState::Leader;
        if !leading {
            let mut inner = node.live.lock();
            inner.leader_since = None;
            inner.leases.clear();
            last_versions = None;
            last_plan = None;
            continue;
        }
        let now = Instant::now();
        let view = node.read_local();
        let leader_since = *node.live.lock().leader_since.get_or_insert(now);

        // Leases: a worker Up in the state whose lease ran out goes Down.
        let lease = node.config.worker_lease;
        let expired: Vec<NodeId> = {
            let inner = node.live.lock();
            view.state
                .workers
                .iter()
                .filter(|(_, w)| w.up)
                .filter(|(id, _)| {
                    let last = inner
                        .leases
                        .get(id)
                        .map(|l| l.last.max(leader_since))
                        .unwrap_or(leader_since);
                    now.duration_since(last) > lease
                })
                .map(|(id, _)| *id)
                .collect()
        };
        for id in expired {
            tracing::warn!(
                node = id,
                "worker lease expired ({lease:?} without a heartbeat): Down"
            );
            node.live.lock().leases.remove(&id);
            let down = node.propose_local(Command::SetWorkerLiveness {
                node: id,
                up: false,
                at_ms: now_ms(),
            });
            if let Err(e) = tokio::time::timeout(QUORUM_WAIT, down)
                .await
                .unwrap_or_else(|_| Err(crate::ProposeError::Other("timed out".into())))
            {
                tracing::warn!("marking worker {id} Down: {e}");
            }
        }

        // Version gate: ask the members what they speak; raise the cluster protocol
        // once all of them speak this build's.
        if last_versions.is_none_or(|t| now.duration_since(t) >= VERSION_REFRESH) {
            last_versions = Some(now);
            let members = refresh_member_versions(&node).await;
            let ids: Vec<NodeId> = metrics
                .membership_config
                .membership()
                .nodes()
                .map(|(id, _)| *id)
                .collect();
            let cluster = version::cluster_protocol(ids, &members);
            if cluster > view.state.protocol() {
                tracing::info!(
                    protocol = cluster,
                    "every management member speaks protocol {cluster}: switching the cluster to it"
                );
                let raise = node.propose_local(Command::SetClusterProtocol {
                    protocol: cluster,
                    at_ms: now_ms(),
                });
                if let Err(e) = tokio::time::timeout(QUORUM_WAIT, raise)
                    .await
                    .unwrap_or_else(|_| Err(crate::ProposeError::Other("timed out".into())))
                {
                    tracing::warn!("raising the cluster protocol: {e}");
                }
            }
        }

        // Scheduler: one round whenever the state or the Ready counts changed, and
        // at least every second.
        let view = node.read_local();
        if !view.state.allows(Feature::Workers) {
            continue;
        }
        let live = node.live.ready_view(&view.state);
        let fingerprint = (view.applied_index(), live_fingerprint(&live));
        let due = match last_plan {
            Some((p, at)) => p != fingerprint || now.duration_since(at) >= Duration::from_secs(1),
            None => true,
        };
        if !due {
            continue;
        }
        last_plan = Some((fingerprint, now));
        let changes = scheduler::plan(&view.state, &live);
        if changes.is_empty() {
            continue;
        }
        tracing::info!(changes = changes.len(), "scheduler: placing");
        let place = node.propose_local(Command::Place {
            changes,
            at_ms: now_ms(),
        });
        if let Err(e) = tokio::time::timeout(QUORUM_WAIT, place)
            .await
            .unwrap_or_else(|_| Err(crate::ProposeError::Other("timed out".into())))
        {
            tracing::warn!("scheduler: committing placements: {e}");
        }
    }
}

fn live_fingerprint(live: &scheduler::LiveView) -> u64 {
    use std::hash::{Hash, Hasher};
    let mut entries: Vec<_> = live.ready.iter().collect();
    entries.sort();
    let mut h = std::collections::hash_map::DefaultHasher::new();
    entries.hash(&mut h);
    h.finish()
}

/// Ask every management member for its build and protocol. Returns this round's
/// answers only (a member that does not answer counts as the oldest protocol for
/// the gate); the display keeps each member's last known version.
async fn refresh_member_versions(node: &ManagementNode) -> BTreeMap<NodeId, NodeVersion> {
    let metrics = node.raft.metrics().borrow().clone();
    let cluster = cluster_of(node);
    let peers: Vec<(NodeId, String)> = metrics
        .membership_config
        .membership()
        .nodes()
        .map(|(id, n)| (*id, n.addr.clone()))
        .collect();
    let asks = peers.into_iter().map(|(id, addr)| {
        let cluster = cluster.clone();
        let me = node.config.node_id;
        async move {
            if id == me {
                return (
                    id,
                    Some(NodeVersion {
                        build: version::BUILD.to_string(),
                        protocol: version::PROTOCOL,
                    }),
                );
            }
            let call = async {
                let mut client = WorkerServiceClient::new(
                    crate::tls::channel(&addr, std::time::Duration::from_secs(2))
                        .await
                        .ok()?,
                );
                match client
                    .node_info(NodeInfoRequest {
                        cluster_id: cluster,
                    })
                    .await
                {
                    Ok(r) => {
                        let r = r.into_inner();
                        Some(NodeVersion {
                            build: r.build,
                            protocol: r.protocol,
                        })
                    }
                    // A build from before the gate has no NodeInfo.
                    Err(s) if s.code() == tonic::Code::Unimplemented => Some(NodeVersion {
                        build: "unknown (before 0.2)".into(),
                        protocol: version::OLDEST_PROTOCOL,
                    }),
                    Err(_) => None,
                }
            };
            (
                id,
                tokio::time::timeout(Duration::from_secs(1), call)
                    .await
                    .ok()
                    .flatten(),
            )
        }
    });
    let answers = futures::future::join_all(asks).await;
    let mut inner = node.live.lock();
    let member_ids: Vec<NodeId> = answers.iter().map(|(id, _)| *id).collect();
    let mut answered = BTreeMap::new();
    for (id, v) in answers {
        if let Some(v) = v {
            inner.members.insert(id, v.clone());
            answered.insert(id, v);
        }
    }
    inner.members.retain(|id, _| member_ids.contains(id));
    answered
}
