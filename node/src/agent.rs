//! The worker role's link to the management group.
//!
//! - **Register** with any management node (the join token; followers point to the
//!   leader), then **heartbeat** the leader every fifth of the lease, carrying this
//!   worker's instance reports (one batch per heartbeat).
//! - The management nodes it knows ([`Managers`]), for the view watch
//!   (`cluster_view`) and package fetches.
//! - **Packages** are fetched by hash from any management node and verified.
//!
//! Durable: `worker.json` in the data dir (this node's id and its cluster's id: a
//! data dir is never reused for another node or cluster) and `join.token` (0600).
//! Everything else is in memory.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde::{Deserialize, Serialize};
use strom_control_plane::blob_replication::fetch_blob_from;
use strom_control_plane::internal_auth::{ClusterSecret, InternalChannel};
use strom_control_plane::tls::url as tls_url;
use strom_control_plane::workers::{report_of, trigger_report_of};
use strom_control_plane::ManagementNode;
use strom_proto::ids::{NodeId, VersionId};
use strom_proto::instances::InstanceStatus;
use strom_proto::internal_v1::worker_service_client::WorkerServiceClient;
use strom_proto::internal_v1::{HeartbeatRequest, RegisterWorkerRequest};
use strom_proto::version;
use strom_proto::worker_view::WorkerView;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

/// What this worker offers the scheduler.
#[derive(Debug, Clone)]
pub struct WorkerOffer {
    pub node_id: NodeId,
    /// `host:port` other gateways reach this node's function port at.
    pub http_addr: String,
    pub capacity_instances: u32,
    pub capacity_memory_mb: u64,
    pub labels: BTreeMap<String, String>,
}

#[derive(Serialize, Deserialize)]
struct WorkerFile {
    node_id: NodeId,
    cluster_id: String,
}

/// Where packages come from: the local management role, or any management node.
#[derive(Clone)]
pub enum Packages {
    Local(ManagementNode),
    Remote(Arc<Managers>),
}

impl Packages {
    pub async fn get(&self, id: &VersionId, limit: u64) -> anyhow::Result<Vec<u8>> {
        match self {
            Packages::Local(node) => Ok(node.blob(id).await?),
            Packages::Remote(m) => {
                let mut errors = Vec::new();
                for addr in m.addresses() {
                    match fetch_blob_from(&addr, &m.secret, &m.cluster_id(), id, limit).await {
                        Ok(bytes) => return Ok(bytes),
                        Err(e) => errors.push(format!("{addr}: {e}")),
                    }
                }
                anyhow::bail!(
                    "no management node could send package {}: {}",
                    id.short(),
                    errors.join("; ")
                )
            }
        }
    }
}

/// The management nodes this worker knows (seeds, then the members in the latest
/// state), and the leader to heartbeat.
pub struct Managers {
    seeds: Vec<String>,
    known: Mutex<Known>,
    /// The proof of membership every call to them shows (from the join token).
    pub secret: ClusterSecret,
}

#[derive(Default)]
struct Known {
    members: Vec<String>,
    leader: Option<String>,
    cluster_id: String,
}

impl Managers {
    pub fn new(seeds: Vec<String>, secret: ClusterSecret) -> Arc<Self> {
        Arc::new(Managers {
            seeds,
            known: Mutex::default(),
            secret,
        })
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Known> {
        self.known.lock().expect("managers lock")
    }

    /// Control URLs to try, the leader (if known) first.
    pub fn addresses(&self) -> Vec<String> {
        let known = self.lock();
        let mut out: Vec<String> = Vec::new();
        for a in known
            .leader
            .iter()
            .chain(known.members.iter())
            .chain(self.seeds.iter())
        {
            let url = tls_url(a);
            if !out.contains(&url) {
                out.push(url);
            }
        }
        out
    }

    pub fn cluster_id(&self) -> String {
        self.lock().cluster_id.clone()
    }

    /// Remember the members and the cluster id a view names.
    pub fn learn(&self, view: &WorkerView) {
        let mut known = self.lock();
        known.members = view.managers.values().map(|a| tls_url(a)).collect();
        if !view.cluster_id.is_empty() {
            known.cluster_id = view.cluster_id.clone();
        }
    }
}

/// The leader's control URL a refusal names, if any.
pub(crate) fn leader_hint(s: &tonic::Status) -> Option<String> {
    s.metadata()
        .get(strom_control_plane::membership::LEADER_METADATA)
        .and_then(|v| v.to_str().ok())
        .map(tls_url)
}

pub(crate) async fn client(
    url: &str,
    secret: &ClusterSecret,
) -> Result<WorkerServiceClient<InternalChannel>, String> {
    let channel = strom_control_plane::tls::channel(url, Duration::from_secs(2), secret).await?;
    Ok(WorkerServiceClient::new(channel).max_decoding_message_size(256 * 1024 * 1024))
}

pub struct Agent {
    pub offer: WorkerOffer,
    pub token: String,
    pub managers: Arc<Managers>,
    data_dir: PathBuf,
    /// The leader's applied index from the latest heartbeat: a watched state that
    /// stays behind it is stale, and the watch moves to another management node.
    pub(crate) leader_index: std::sync::atomic::AtomicU64,
    /// When the leader last answered (a registration or a heartbeat), and the
    /// lease it gave: the worker's readiness.
    heard: std::sync::Mutex<Option<(std::time::Instant, Duration)>>,
}

impl Agent {
    /// `/readyz`'s worker check: registered, and heard by a leader within its lease.
    pub fn readiness(&self) -> strom_control_plane::health::Check {
        use strom_control_plane::health::Check;
        match *self.heard.lock().expect("heard") {
            None => Check::not_ready("not registered with the cluster yet"),
            Some((at, lease)) if at.elapsed() <= lease => Check::ready(format!(
                "registered; the leader answered {} ms ago (lease {} ms)",
                at.elapsed().as_millis(),
                lease.as_millis()
            )),
            Some((at, lease)) => Check::not_ready(format!(
                "no leader has answered for {} ms (lease {} ms): the cluster may mark this worker Down",
                at.elapsed().as_millis(),
                lease.as_millis()
            )),
        }
    }

    fn heard(&self, lease: Duration) {
        *self.heard.lock().expect("heard") = Some((std::time::Instant::now(), lease));
    }

    pub fn new(
        offer: WorkerOffer,
        token: String,
        managers: Arc<Managers>,
        data_dir: &Path,
    ) -> Self {
        Agent {
            offer,
            token,
            managers,
            data_dir: data_dir.to_path_buf(),
            leader_index: Default::default(),
            heard: Default::default(),
        }
    }

    /// Register with the cluster, following leader hints and retrying until `wait`
    /// runs out. Returns the lease length. Refusals that retrying cannot fix (wrong
    /// token, bad settings, another cluster's data dir) fail at once.
    pub async fn register(&self, wait: Duration) -> Result<Duration, String> {
        let deadline = tokio::time::Instant::now() + wait;
        let mut last_error = String::from("no management node given");
        loop {
            let mut targets = self.managers.addresses();
            while let Some(url) = (!targets.is_empty()).then(|| targets.remove(0)) {
                match self.register_at(&url).await {
                    Ok(lease) => return Ok(lease),
                    Err(RegisterError::Refused(e)) => return Err(e),
                    Err(RegisterError::Leader(l)) => {
                        self.managers.lock().leader = Some(l.clone());
                        targets.retain(|t| t != &l);
                        targets.insert(0, l);
                    }
                    Err(RegisterError::Retry(e)) => last_error = e,
                }
            }
            if tokio::time::Instant::now() >= deadline {
                return Err(format!("registering as a worker failed: {last_error}"));
            }
            tokio::time::sleep(Duration::from_millis(300)).await;
        }
    }

    async fn register_at(&self, url: &str) -> Result<Duration, RegisterError> {
        let mut c = client(url, &self.managers.secret)
            .await
            .map_err(RegisterError::Retry)?;
        let call = c.register(RegisterWorkerRequest {
            join_token: self.token.clone(),
            node_id: self.offer.node_id,
            http_addr: self.offer.http_addr.clone(),
            capacity_instances: self.offer.capacity_instances,
            capacity_memory_mb: self.offer.capacity_memory_mb,
            labels: self.offer.labels.clone().into_iter().collect(),
            build: version::BUILD.to_string(),
            protocol: version::PROTOCOL,
        });
        let reply = tokio::time::timeout(Duration::from_secs(10), call)
            .await
            .map_err(|_| RegisterError::Retry(format!("{url}: no answer within 10 s")))?;
        match reply {
            Ok(r) => {
                let r = r.into_inner();
                self.check_cluster(&r.cluster_id)
                    .map_err(RegisterError::Refused)?;
                self.managers.lock().cluster_id = r.cluster_id;
                self.managers.lock().leader = Some(url.to_string());
                let lease = Duration::from_millis(r.lease_ms.max(1));
                self.heard(lease);
                Ok(lease)
            }
            Err(s) => match s.code() {
                tonic::Code::Unauthenticated | tonic::Code::InvalidArgument => Err(
                    RegisterError::Refused(format!("{url} refused the worker: {}", s.message())),
                ),
                tonic::Code::Unavailable => match leader_hint(&s) {
                    Some(l) if l != url => Err(RegisterError::Leader(l)),
                    _ => Err(RegisterError::Retry(format!("{url}: {}", s.message()))),
                },
                _ => Err(RegisterError::Retry(format!("{url}: {}", s.message()))),
            },
        }
    }

    /// A data dir belongs to one node of one cluster.
    fn check_cluster(&self, cluster_id: &str) -> Result<(), String> {
        let path = self.data_dir.join("worker.json");
        match std::fs::read(&path) {
            Ok(bytes) => {
                let file: WorkerFile = serde_json::from_slice(&bytes)
                    .map_err(|e| format!("{}: {e}", path.display()))?;
                if file.node_id != self.offer.node_id {
                    return Err(format!(
                        "{} belongs to node {}, not node {}",
                        path.display(),
                        file.node_id,
                        self.offer.node_id
                    ));
                }
                if file.cluster_id != cluster_id {
                    return Err(format!(
                        "{} belongs to cluster {}, but the management nodes are cluster {cluster_id}",
                        path.display(),
                        file.cluster_id
                    ));
                }
                Ok(())
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                let json = serde_json::to_string(&WorkerFile {
                    node_id: self.offer.node_id,
                    cluster_id: cluster_id.to_string(),
                })
                .expect("plain struct");
                strom_control_plane::management::write_secret_file(&path, &json)
                    .map_err(|e| format!("{}: {e}", path.display()))
            }
            Err(e) => Err(format!("{}: {e}", path.display())),
        }
    }

    /// Heartbeat the leader until `cancel`, re-registering if the cluster forgot
    /// this worker.
    pub async fn heartbeats(
        self: Arc<Self>,
        lease: Duration,
        instances: watch::Receiver<Arc<Vec<InstanceStatus>>>,
        triggers: crate::gateway::consumers::TriggerBoard,
        cancel: CancellationToken,
    ) {
        let mut every = (lease / 5).max(Duration::from_millis(100));
        let mut current: Option<(String, WorkerServiceClient<InternalChannel>)> = None;
        loop {
            tokio::select! {
                _ = cancel.cancelled() => return,
                _ = tokio::time::sleep(every) => {}
            }
            if current.is_none() {
                let targets = self.managers.addresses();
                for url in targets {
                    if let Ok(c) = client(&url, &self.managers.secret).await {
                        current = Some((url, c));
                        break;
                    }
                }
            }
            let Some((url, c)) = current.as_mut() else {
                continue;
            };
            let reports = instances.borrow().iter().map(report_of).collect();
            let trigger_reports = triggers.reports().iter().map(trigger_report_of).collect();
            let call = c.heartbeat(HeartbeatRequest {
                join_token: self.token.clone(),
                node_id: self.offer.node_id,
                build: version::BUILD.to_string(),
                protocol: version::PROTOCOL,
                instances: reports,
                triggers: trigger_reports,
            });
            // A leader that vanished must not hold the next heartbeat up.
            let result = tokio::time::timeout(every * 2, call)
                .await
                .unwrap_or_else(|_| Err(tonic::Status::unavailable("no answer in time")));
            match result {
                Ok(r) => {
                    let r = r.into_inner();
                    self.managers.lock().leader = Some(url.clone());
                    self.leader_index
                        .fetch_max(r.applied_index, std::sync::atomic::Ordering::Relaxed);
                    let lease = Duration::from_millis(r.lease_ms.max(1));
                    self.heard(lease);
                    every = (lease / 5).max(Duration::from_millis(100));
                }
                Err(s) if s.code() == tonic::Code::FailedPrecondition => {
                    tracing::warn!(
                        "the cluster does not know this worker ({}); registering again",
                        s.message()
                    );
                    if let Err(e) = self.register(Duration::from_secs(5)).await {
                        tracing::warn!("{e}");
                    }
                    current = None;
                }
                Err(s) => {
                    let hint = leader_hint(&s);
                    tracing::debug!(target = %url, "heartbeat: {}", s.message());
                    let mut known = self.managers.lock();
                    known.leader = hint.filter(|h| h != url);
                    drop(known);
                    current = None;
                }
            }
        }
    }
}

enum RegisterError {
    Refused(String),
    Leader(String),
    Retry(String),
}
