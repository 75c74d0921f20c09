//! Worker nodes, seen from the management group.
//!
//! - **Registration** (`WorkerService/Register`, join token): committed as
//!   `RegisterWorker`; a registered worker is Up.
//! - **Leases** live in the leader's memory only: every heartbeat renews one, and
//!   carries the worker's instance reports (one batch per heartbeat). Only
//!   transitions are committed: `SetWorkerLiveness` Down when a lease expires (default
//!   5 s), Up when heartbeats resume. A new leader gives every worker a full lease
//!   before judging it, so a leader change never marks a healthy worker Down.
//! - **Leader duties** (`leader_duties`): leases are kept by the leader's term
//!   task; this service hands it heartbeats and asks it for what it knows.
//! - **State watch** (`WorkerService/WatchState`): any management node streams its
//!   applied state to workers, so worker-only nodes route and run from the last state
//!   they received, with or without a reachable leader.

use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures::{Stream, StreamExt};
use strom_proto::codec;
use strom_proto::command::{Command, CommandResult, WorkerCapacity, WorkerInfo};
use strom_proto::ids::{AppName, VersionId};
use strom_proto::instances::{InstanceState, InstanceStatus, TriggerStatus};
use strom_proto::internal_v1::worker_service_client::WorkerServiceClient;
use strom_proto::internal_v1::worker_service_server::WorkerService;
use strom_proto::internal_v1::{
    HeartbeatReply, HeartbeatRequest, InstanceReport, LiveWorker, LiveWorkersReply,
    LiveWorkersRequest, NodeInfoReply, NodeInfoRequest, QueueDepth, RegisterWorkerReply,
    RegisterWorkerRequest, StateUpdate, TriggerReport, WatchStateRequest,
};
use strom_proto::raft_types::{LogId, StoredMembership};
use strom_proto::version::{self, Feature};
use tokio_util::sync::CancellationToken;
use tonic::{Request, Response, Status};

use crate::cluster_state::{ClusterState, ClusterStateV2};
use crate::leader_duties::{LiveSnapshot, TermHandle};
use crate::management::{now_ms, ManagementNode};
use crate::membership::cluster_of;
use crate::state_machine::StateView;

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

/// The trigger report a worker sends for one of its RabbitMQ triggers.
pub fn trigger_report_of(t: &TriggerStatus) -> TriggerReport {
    TriggerReport {
        app: t.app.to_string(),
        function: t.function.clone(),
        queue: t.queue.clone(),
        consumers: t.consumers,
        consuming: t.consuming,
        in_flight: t.in_flight,
        error: t.error.clone().unwrap_or_default(),
    }
}

/// The longest trigger error a leader keeps from a report (a worker's reason is
/// a line; anything longer is cut, not trusted to be small).
const MAX_TRIGGER_ERROR: usize = 1024;

/// The trigger status in a report, or why the report is malformed.
pub fn trigger_status_of(r: &TriggerReport) -> Result<TriggerStatus, String> {
    let mut error = r.error.clone();
    if error.len() > MAX_TRIGGER_ERROR {
        let mut cut = MAX_TRIGGER_ERROR;
        while !error.is_char_boundary(cut) {
            cut -= 1;
        }
        error.truncate(cut);
        error.push('…');
    }
    if r.consuming > r.consumers {
        return Err(format!(
            "trigger of `{}`: {} consuming of {} consumers",
            r.function, r.consuming, r.consumers
        ));
    }
    Ok(TriggerStatus {
        app: AppName::parse(&r.app).map_err(|e| format!("app `{}`: {e}", r.app))?,
        function: r.function.chars().take(256).collect(),
        queue: r.queue.chars().take(256).collect(),
        consumers: r.consumers,
        consuming: r.consuming,
        in_flight: r.in_flight,
        error: (!error.is_empty()).then_some(error),
    })
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

/// The whole state on the wire, for workers of builds from before worker views
/// (`view_format` 0). Its bytes must not change while such workers may still run:
/// `a_legacy_watch_is_encoded_as_before` freezes them.
pub fn encode_view(view: &StateView) -> Vec<u8> {
    codec::encode(&(&view.last_applied, &view.membership, view.state.as_v2()))
        .expect("the state always encodes")
}

/// The whole state from a management node of a build from before worker views.
pub fn decode_view(bytes: &[u8]) -> Result<StateView, codec::CodecError> {
    let (last_applied, membership, state): (Option<LogId>, StoredMembership, ClusterStateV2) =
        codec::decode(bytes)?;
    Ok(StateView {
        last_applied,
        membership,
        state: Arc::new(ClusterState::from(state)),
    })
}

pub struct WorkerServer {
    node: ManagementNode,
    /// Ends the state streams when the control server stops.
    shutdown: CancellationToken,
    encoded: Arc<EncodedView>,
    /// What changed with each state, for the watchers' deltas (`view_feed`).
    feed: tokio::sync::watch::Receiver<Arc<crate::view_feed::Feed>>,
}

impl WorkerServer {
    /// Starts the state feed (a task until `shutdown`): call within the runtime.
    pub fn new(node: ManagementNode, shutdown: CancellationToken) -> Self {
        WorkerServer {
            feed: crate::view_feed::start(node.state.clone(), shutdown.clone()),
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
    fn leader_only(&self) -> Result<TermHandle, Status> {
        let metrics = self.node.raft.metrics().borrow().clone();
        if metrics.current_leader != Some(self.node.config.node_id)
            || metrics.state != openraft::ServerState::Leader
        {
            return Err(self.node.not_leader_status());
        }
        let fresh = self.node.config.worker_lease.as_millis() as u64 / 2;
        if let Some(since) = crate::management::stale_quorum(&metrics, fresh) {
            return Err(Status::unavailable(format!(
                "this leader has not heard from a majority for {} ms: it may have been replaced",
                since
                    .map(|m| m.to_string())
                    .unwrap_or_else(|| "ever".into())
            )));
        }
        // Raft says this node leads, but its term task has not started yet (a
        // moment after an election): the worker asks again shortly.
        self.node
            .duties
            .term()
            .ok_or_else(|| Status::unavailable("this node has just become leader; ask again"))
    }

    /// Commit through this node's Raft, failing with "no quorum" after its wait.
    async fn commit(&self, command: Command) -> Result<CommandResult, Status> {
        self.node
            .propose_local_within(command)
            .await
            .map(|(_, result)| result)
            .map_err(|e| e.to_status())
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
        let term = self.leader_only()?;
        if !view.state.allows(Feature::Workers) {
            return Err(Status::failed_precondition(format!(
                "the cluster still speaks protocol {} (workers need {}): waiting until every management node runs a build that has them",
                view.state.protocol(),
                Feature::Workers.since()
            )));
        }
        let theirs = req.protocol.max(version::OLDEST_PROTOCOL);
        if theirs < view.state.protocol() {
            return Err(Status::failed_precondition(format!(
                "worker {} speaks protocol {theirs}, but the cluster already uses protocol {}: upgrade its build first",
                req.node_id,
                view.state.protocol()
            )));
        }
        // Two live nodes with one id would take turns owning the registration.
        if let Some(known) = view.state.workers.get(&req.node_id) {
            let heard = term.silence(req.node_id).await.map_err(unavailable)?;
            let fresh = heard.is_some_and(|t| t < self.node.config.worker_lease);
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
        term.renew(req.node_id, req.build, req.protocol, Vec::new(), Vec::new())
            .await
            .map_err(unavailable)?;
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
        let term = self.leader_only()?;
        if !view.state.workers.contains_key(&req.node_id) {
            return Err(Status::failed_precondition(format!(
                "node {} is not a registered worker; register first",
                req.node_id
            )));
        }
        // A malformed report (a newer worker's state name, say) is skipped: it must
        // not cost the worker its lease.
        let mut instances = Vec::with_capacity(req.instances.len());
        for r in &req.instances {
            match status_of(r) {
                Ok(s) => instances.push(s),
                Err(e) => tracing::warn!(node = req.node_id, "skipping an instance report: {e}"),
            }
        }
        let mut triggers = Vec::with_capacity(req.triggers.len());
        for r in &req.triggers {
            match trigger_status_of(r) {
                Ok(t) => triggers.push(t),
                Err(e) => tracing::warn!(node = req.node_id, "skipping a trigger report: {e}"),
            }
        }
        metrics::counter!("strom_worker_heartbeats_total", "worker" => req.node_id.to_string())
            .increment(1);
        // The term task renews the lease, and marks a Down worker Up again.
        term.renew(req.node_id, req.build, req.protocol, instances, triggers)
            .await
            .map_err(unavailable)?;
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
        let stream: StateStream = if req.view_format >= 1 {
            // What this worker needs, made for it: a whole view, then deltas
            // (format 2) or whole views (format 1).
            Box::pin(
                crate::view_feed::updates(self.feed.clone(), req.node_id, req.view_format).map(Ok),
            )
        } else {
            // A worker of a build from before worker views (mid rolling upgrade):
            // the whole state, encoded once for every such watcher.
            let views = tokio_stream::wrappers::WatchStream::new(self.node.state.clone());
            let encoded = self.encoded.clone();
            Box::pin(views.map(move |view| {
                Ok(StateUpdate {
                    applied_index: view.applied_index(),
                    view: encoded.of(&view),
                    ..StateUpdate::default()
                })
            }))
        };
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
        let term = self.leader_only()?;
        let live = term.live().await.map_err(unavailable)?;
        Ok(Response::new(self.node.live_reply(live)))
    }
}

fn unavailable(e: crate::leader_duties::TermEnded) -> Status {
    Status::unavailable(e.to_string())
}

impl ManagementNode {
    /// The leader's live view as a reply (this node's own version filled in).
    pub fn live_reply(&self, live: LiveSnapshot) -> LiveWorkersReply {
        let mut members: Vec<NodeInfoReply> = live
            .members
            .iter()
            .map(|(id, v)| NodeInfoReply {
                node_id: *id,
                build: v.build.clone(),
                protocol: v.protocol,
            })
            .collect();
        if !live.members.contains_key(&self.config.node_id) {
            members.push(NodeInfoReply {
                node_id: self.config.node_id,
                build: version::BUILD.to_string(),
                protocol: version::PROTOCOL,
            });
            members.sort_by_key(|m| m.node_id);
        }
        let workers = live
            .workers
            .iter()
            .map(|w| LiveWorker {
                node_id: w.node,
                since_heartbeat_ms: w.since_heartbeat.as_millis() as u64,
                seen: true,
                build: w.build.clone(),
                protocol: w.protocol,
                instances: w.instances.iter().map(report_of).collect(),
                triggers: w.triggers.iter().map(trigger_report_of).collect(),
            })
            .collect();
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
        let queues = live
            .queues
            .iter()
            .map(|q| QueueDepth {
                app: q.app.to_string(),
                queue: q.queue.clone(),
                ready: q.read.as_ref().ok().copied(),
                error: q.read.as_ref().err().cloned().unwrap_or_default(),
                scale: q.scale,
            })
            .collect();
        LiveWorkersReply {
            leader_id: metrics.current_leader.unwrap_or(0),
            workers,
            members,
            term: metrics.current_term,
            last_log_index: metrics.last_log_index.unwrap_or(0),
            matched,
            checkpoint: self.checkpoints.report(self.config.node_id),
            queues,
        }
    }

    /// The leader's live view, asked from any member (`None` if no leader answers
    /// within 2 s).
    pub async fn live_workers(&self) -> Option<LiveWorkersReply> {
        let metrics = self.raft.metrics().borrow().clone();
        let leader = metrics.current_leader?;
        if leader == self.config.node_id {
            let term = self.duties.term()?;
            let live = tokio::time::timeout(Duration::from_secs(2), term.live())
                .await
                .ok()?
                .ok()?;
            return Some(self.live_reply(live));
        }
        let addr = metrics
            .membership_config
            .membership()
            .get_node(&leader)?
            .addr
            .clone();
        let mut client = WorkerServiceClient::new(self.peers.get(&addr).ok()?);
        let mut request = tonic::Request::new(LiveWorkersRequest {
            cluster_id: cluster_of(self),
        });
        request.set_timeout(Duration::from_secs(2));
        // tonic's deadline starts once a connection exists: this one bounds the connect too.
        tokio::time::timeout(Duration::from_secs(2), client.live_workers(request))
            .await
            .ok()?
            .ok()
            .map(|r| r.into_inner())
    }
}

#[cfg(test)]
mod tests {
    use sha2::Digest;

    use super::*;

    /// Workers of builds from before worker views read the whole state as bincode,
    /// field by field: while they may still run (mid rolling upgrade), its bytes
    /// must not change. A change to `ClusterState`'s shape fails here: then older
    /// workers need a frozen copy of the old shape to be encoded for them.
    #[test]
    fn a_trigger_report_is_checked_and_its_error_bounded() {
        let mut r = TriggerReport {
            app: "shop".into(),
            function: "f".into(),
            queue: "orders".into(),
            consumers: 2,
            consuming: 1,
            in_flight: 4,
            error: "é".repeat(2000),
        };
        let t = trigger_status_of(&r).unwrap();
        let e = t.error.unwrap();
        assert!(e.len() <= MAX_TRIGGER_ERROR + '…'.len_utf8(), "{}", e.len());
        assert!(e.ends_with('…'));
        r.error.clear();
        assert_eq!(trigger_status_of(&r).unwrap().error, None);
        assert_eq!(trigger_report_of(&trigger_status_of(&r).unwrap()), r);
        r.consuming = 3;
        assert!(trigger_status_of(&r)
            .unwrap_err()
            .contains("3 consuming of 2"));
        r.consuming = 0;
        r.app = "Not An App!".into();
        assert!(trigger_status_of(&r)
            .unwrap_err()
            .contains("app `Not An App!`"));
    }

    #[test]
    fn a_legacy_watch_is_encoded_as_before() {
        let view = crate::worker_view::tests::state();
        let bytes = encode_view(&view);
        let back = decode_view(&bytes).unwrap();
        assert_eq!(back.state, view.state);
        assert_eq!(
            hex::encode(sha2::Sha256::digest(&bytes)),
            "da87438e8372d1627334d8fadf7f9d2aba0767d78912878ca8141f9362b6afc9",
            "the legacy watch encoding changed"
        );
    }
}
