//! The management role of one node: opens its durable stores, runs the Raft node,
//! bootstraps a new cluster exactly once, and offers a cheap-to-clone handle to
//! propose commands and read the applied state.
//!
//! Durable, under the data dir: `raft/log.redb` (log + vote + committed),
//! `raft/snapshots/`, `blobs/`, `node.json` (this node's id, checked on restart),
//! `admin.token` and `join.token` (mode 0600, for local CLI use; only their hashes
//! are replicated). In memory: the applied [`StateView`].

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use base64::Engine;
use openraft::error::{CheckIsLeaderError, ClientWriteError, RaftError};
use openraft::{BasicNode, ServerState};
use rand::RngCore;
use serde::{Deserialize, Serialize};
use strom_proto::command::{Command, CommandResult};
use strom_proto::ids::{AppName, ClusterId, NodeId, TokenHash};
use strom_proto::manifest::ZipLimits;
use strom_proto::raft_types::Raft;
use tokio::sync::watch;

use crate::blob_store::BlobStore;
pub use crate::error::{NoQuorum, ProposeError, QuorumView, StartError};
use crate::impl_raft_network::{NetworkFactory, PeerIdentity};
use crate::internal_auth::ClusterSecret;
use crate::leader_duties::LeaderDuties;
use crate::log_store::LogStore;
use crate::peers::PeerChannels;
use crate::state_machine::{StateMachine, StateView};

#[derive(Debug, Clone)]
pub struct ManagementConfig {
    pub data_dir: PathBuf,
    pub node_id: NodeId,
    /// Address other nodes reach this node's control port at (`host:port`).
    pub advertise_control_addr: String,
    /// Base URL of this node's function HTTP port, for the function URLs shown to users.
    pub public_http_url: String,
    pub package_limits: ZipLimits,
    /// Raft heartbeat; election timeouts are 4–8 heartbeats.
    pub heartbeat: Duration,
    /// A worker whose heartbeats stop for this long is marked Down (its instances
    /// are placed elsewhere).
    pub worker_lease: Duration,
    /// Versions kept per app (the leader forgets older ones).
    pub keep_versions: usize,
    /// Each app's own address is `{app}.<app_domain>` on the function port.
    pub app_domain: String,
    /// Where and how often the leader writes checkpoints (`None`: it does not).
    pub checkpoints: Option<crate::checkpointer::CheckpointSettings>,
}

impl ManagementConfig {
    pub fn new(
        data_dir: impl Into<PathBuf>,
        node_id: NodeId,
        control_addr: &str,
        http_url: &str,
    ) -> Self {
        ManagementConfig {
            data_dir: data_dir.into(),
            node_id,
            advertise_control_addr: control_addr.to_string(),
            public_http_url: http_url.trim_end_matches('/').to_string(),
            package_limits: ZipLimits::default(),
            heartbeat: Duration::from_millis(100),
            worker_lease: Duration::from_secs(5),
            keep_versions: crate::retention::DEFAULT_KEEP,
            app_domain: "localhost".into(),
            checkpoints: None,
        }
    }

    /// The base URL of `app`'s own address: the function port's scheme and port
    /// with the host `{app}.<app_domain>` (e.g. `http://shop.localhost:7071`).
    pub fn app_url(&self, app: &AppName) -> String {
        app_url(&self.public_http_url, &self.app_domain, app)
    }
}

/// `{scheme}://{app}.{domain}[:port]` from a node's public function URL.
pub fn app_url(public_http_url: &str, domain: &str, app: &AppName) -> String {
    let (scheme, rest) = public_http_url
        .split_once("://")
        .unwrap_or(("http", public_http_url));
    let authority = rest.split('/').next().unwrap_or(rest);
    // The port follows the last `:` after any `]` of an IPv6 literal.
    let after_bracket = authority.rsplit_once(']').map_or(authority, |(_, r)| r);
    let port = after_bracket
        .rsplit_once(':')
        .map(|(_, p)| p)
        .filter(|p| !p.is_empty() && p.bytes().all(|b| b.is_ascii_digit()));
    match port {
        Some(p) => format!("{scheme}://{app}.{domain}:{p}"),
        None => format!("{scheme}://{app}.{domain}"),
    }
}

/// A domain apps' own addresses may live under: DNS labels (letters, digits,
/// `-`, not at a label's ends), dot-separated, at most 253 bytes.
pub fn check_app_domain(domain: &str) -> Result<(), String> {
    if domain.is_empty() || domain.len() > 253 {
        return Err(format!(
            "`{domain}` is not a domain name (1 to 253 bytes, like `localhost` or `functions.example.com`)"
        ));
    }
    for label in domain.split('.') {
        let ok = !label.is_empty()
            && label.len() <= 63
            && label
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-')
            && !label.starts_with('-')
            && !label.ends_with('-');
        if !ok {
            return Err(format!(
                "`{domain}` is not a domain name: label `{label}` must be 1-63 letters, digits or `-` (not at its ends)"
            ));
        }
    }
    Ok(())
}

/// How often a write or read waiting for an election looks again.
const ELECTION_POLL: Duration = Duration::from_millis(50);

/// How long a write or a fresh read waits for a majority before failing.
pub const QUORUM_WAIT: Duration = Duration::from_secs(5);

/// How long a node waits to apply what the leader committed or confirmed.
pub const APPLY_WAIT: Duration = Duration::from_secs(10);

/// Cheap to clone; every clone drives the same Raft node.
#[derive(Clone)]
pub struct ManagementNode {
    pub raft: Raft,
    pub state: watch::Receiver<Arc<StateView>>,
    pub blobs: BlobStore,
    pub config: Arc<ManagementConfig>,
    /// One cached channel per peer, for every node-to-node call.
    pub peers: PeerChannels,
    /// The leader's duties of the current term, when this node leads.
    pub duties: LeaderDuties,
    /// The proof of membership this node shows and checks without TLS (from the
    /// join token: `join.token`, created at bootstrap or learned at join).
    pub secret: ClusterSecret,
    /// Checkpoints to the store outside the group (issue 17).
    pub checkpoints: Arc<crate::checkpointer::Checkpoints>,
    /// This leader is handing leadership over: it takes no new writes (they wait
    /// for the next leader), so the chosen follower's log can catch up with its.
    pub handing_over: Arc<std::sync::atomic::AtomicBool>,
}

#[derive(Serialize, Deserialize)]
struct NodeFile {
    node_id: NodeId,
}

fn io_err(path: &Path) -> impl Fn(std::io::Error) -> StartError + '_ {
    move |source| StartError::Io {
        path: path.to_path_buf(),
        source,
    }
}

/// Write a secret file (a line of text) readable by its owner only, atomically and
/// durably.
pub fn write_secret_file(path: &Path, contents: &str) -> std::io::Result<()> {
    crate::durable::write_durably(path, format!("{contents}\n").as_bytes())
}

/// A new random secret token: `strom_` + 32 random bytes, base64url.
pub fn new_token() -> String {
    let mut bytes = [0u8; 32];
    rand::rng().fill_bytes(&mut bytes);
    format!(
        "strom_{}",
        base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes)
    )
}

/// A new random function/host key value (Azure keys are 56 base64 characters).
pub fn new_function_key() -> String {
    strom_proto::key_rules::new_key_value()
}

pub fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}

/// A leader's quorum has been silent longer than `fresh_ms`: openraft 0.9 leaders
/// do not step down when cut off, so a leader counts only while a majority
/// acknowledged it recently. `Some(ms since the last ack, or None if never)` when
/// stale; a group of one is never stale.
pub fn stale_quorum(
    metrics: &openraft::RaftMetrics<u64, openraft::BasicNode>,
    fresh_ms: u64,
) -> Option<Option<u64>> {
    let voters = metrics.membership_config.membership().voter_ids().count();
    let since = metrics.millis_since_quorum_ack;
    (voters > 1 && since.is_none_or(|ms| ms > fresh_ms)).then_some(since)
}

/// What bootstrapping did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Bootstrap {
    /// A new cluster was created; the admin token is shown once.
    Created { admin_token: String },
    /// The node restarted into its existing cluster.
    Existing,
}

impl ManagementNode {
    /// Open the stores under the data dir and start the Raft node.
    pub async fn start(config: ManagementConfig) -> Result<Self, StartError> {
        let data = config.data_dir.clone();
        let raft_dir = data.join("raft");
        std::fs::create_dir_all(&raft_dir).map_err(io_err(&raft_dir))?;
        check_node_file(&data, config.node_id)?;

        let log_path = raft_dir.join("log.redb");
        let log_store = LogStore::open(&log_path).map_err(|source| StartError::LogStore {
            path: log_path.clone(),
            source,
        })?;
        let snap_dir = raft_dir.join("snapshots");
        let (state_machine, state) = StateMachine::open(&snap_dir).map_err(io_err(&snap_dir))?;
        let blobs = BlobStore::open(&data)?;

        let hb = config.heartbeat.as_millis() as u64;
        let raft_config = openraft::Config {
            cluster_name: "strom".into(),
            heartbeat_interval: hb,
            election_timeout_min: hb * 4,
            election_timeout_max: hb * 8,
            snapshot_policy: openraft::SnapshotPolicy::LogsSinceLast(1000),
            max_in_snapshot_log_to_keep: 1000,
            ..Default::default()
        }
        .validate()?;

        let secret = ClusterSecret::default();
        secret.load(&data);
        let identity = PeerIdentity {
            node_id: config.node_id,
            state: state.clone(),
            secret: secret.clone(),
        };
        let raft = Raft::new(
            config.node_id,
            Arc::new(raft_config),
            NetworkFactory::new(identity),
            log_store,
            state_machine,
        )
        .await?;

        let node = ManagementNode {
            raft,
            state,
            blobs,
            checkpoints: Arc::new(crate::checkpointer::Checkpoints::new(
                config.checkpoints.clone(),
            )),
            config: Arc::new(config),
            peers: PeerChannels::new(secret.clone()),
            duties: LeaderDuties::default(),
            secret,
            handing_over: Default::default(),
        };
        crate::metrics::observe_management(&node);
        Ok(node)
    }

    /// Make this node a single-member cluster if it has never been initialized,
    /// and commit the cluster's identity and token hashes. On a restart this does
    /// nothing but wait for the node to be ready: `initialize()` runs only once.
    pub async fn bootstrap(&self, wait: Duration) -> Result<Bootstrap, StartError> {
        let initialized = self.raft.is_initialized().await?;
        if !initialized {
            let members = std::collections::BTreeMap::from([(
                self.config.node_id,
                BasicNode::new(&self.config.advertise_control_addr),
            )]);
            self.raft.initialize(members).await?;
            tracing::info!(
                node_id = self.config.node_id,
                "initialized a new raft group"
            );
        }
        // A restart comes up from its own state, without waiting for a quorum (it
        // serves the data plane from it); otherwise wait until everything committed
        // before has been applied, whoever leads.
        let deadline = tokio::time::Instant::now() + wait;
        loop {
            if self.state.borrow().state.cluster.is_some() {
                return Ok(Bootstrap::Existing);
            }
            match self.read_linearizable().await {
                Ok(_) => break,
                Err(e) if tokio::time::Instant::now() >= deadline => return Err(e.into()),
                Err(e) => {
                    tracing::debug!("waiting for a leader to confirm the log: {e}");
                    tokio::time::sleep(Duration::from_millis(200)).await;
                }
            }
        }
        if self.state.borrow().state.cluster.is_some() {
            return Ok(Bootstrap::Existing);
        }
        // A crash between writing the token file and committing InitCluster leaves
        // the file: reuse it so the operator's copy stays valid.
        let admin_path = self.config.data_dir.join("admin.token");
        let admin_token = match std::fs::read_to_string(&admin_path) {
            Ok(t) if !t.trim().is_empty() => t.trim().to_string(),
            _ => new_token(),
        };
        let join_path = self.config.data_dir.join("join.token");
        let join_token = match std::fs::read_to_string(&join_path) {
            Ok(t) if !t.trim().is_empty() => t.trim().to_string(),
            _ => new_token(),
        };
        write_secret_file(&admin_path, &admin_token).map_err(io_err(&admin_path))?;
        write_secret_file(&join_path, &join_token).map_err(io_err(&join_path))?;
        self.secret.set_join_token(&join_token);
        let (_, result) = self
            .propose(Command::InitCluster {
                cluster_id: ClusterId::new_random(),
                admin_token_hash: TokenHash::of(&admin_token),
                join_token_hash: TokenHash::of(&join_token),
                at_ms: now_ms(),
            })
            .await?;
        tracing::info!(?result, "cluster initialized");
        Ok(Bootstrap::Created { admin_token })
    }

    pub async fn wait_for_leader(&self, timeout: Duration) -> Result<NodeId, StartError> {
        let metrics = self
            .raft
            .wait(Some(timeout))
            .metrics(|m| m.current_leader.is_some(), "a leader")
            .await
            .map_err(|_| StartError::NoLeader(timeout))?;
        Ok(metrics.current_leader.expect("waited for it"))
    }

    /// Commit a command through Raft; returns its log index and what applying it did.
    /// Acknowledged only after commit. On a follower the command is forwarded to the
    /// leader (once: if leadership moved meanwhile, the caller gets `NotLeader`).
    pub async fn propose(&self, command: Command) -> Result<(u64, CommandResult), ProposeError> {
        let span = crate::traces::write_span(command.kind(), self.config.node_id);
        let result = tokio::time::timeout(QUORUM_WAIT, self.propose_inner(command))
            .await
            .unwrap_or_else(|_| Err(self.no_quorum("the write was not committed")));
        crate::traces::end_write(span, &result);
        result
    }

    /// Why nothing commits: what this node sees, for the error message.
    pub(crate) fn no_quorum(&self, what: &'static str) -> ProposeError {
        let metrics = self.raft.metrics().borrow().clone();
        let voters = metrics.membership_config.membership().voter_ids().count();
        ProposeError::NoQuorum(NoQuorum {
            what,
            waited: QUORUM_WAIT,
            voters: Some(voters),
            view: match metrics.current_leader {
                Some(l) if l == self.config.node_id => QuorumView::Leads,
                Some(l) => QuorumView::Follows(l),
                None => QuorumView::NoLeader,
            },
        })
    }

    async fn propose_inner(&self, command: Command) -> Result<(u64, CommandResult), ProposeError> {
        loop {
            match self.propose_local(command.clone()).await {
                Err(ProposeError::NotLeader {
                    leader_id: Some(leader),
                    leader_addr: Some(addr),
                }) if leader != self.config.node_id => {
                    match self.forward_propose(&addr, &command).await {
                        // That node no longer leads and knows no leader yet (it is
                        // handing leadership over, or an election is on): it
                        // appended nothing, so ask again once there is one.
                        Err(ProposeError::NotLeader {
                            leader_addr: None, ..
                        }) => tokio::time::sleep(ELECTION_POLL).await,
                        other => return other,
                    }
                }
                // An election is in progress (this node refused the write, so nothing
                // was appended): wait for its outcome, within the caller's limit.
                Err(ProposeError::NotLeader {
                    leader_id: None, ..
                }) => tokio::time::sleep(ELECTION_POLL).await,
                other => return other,
            }
        }
    }

    /// Commit through this node's Raft only (no forwarding).
    pub async fn propose_local(
        &self,
        command: Command,
    ) -> Result<(u64, CommandResult), ProposeError> {
        if self.handing_over.load(std::sync::atomic::Ordering::SeqCst) {
            // A leadership transfer is under way: the caller waits for the next
            // leader (no leader is known until it is elected).
            return Err(ProposeError::NotLeader {
                leader_id: None,
                leader_addr: None,
            });
        }
        let started = tokio::time::Instant::now();
        let written = self.raft.client_write(command).await;
        if written.is_ok() {
            metrics::histogram!("strom_raft_proposal_duration_seconds")
                .record(started.elapsed().as_secs_f64());
        } else {
            metrics::counter!("strom_raft_proposal_failures_total").increment(1);
        }
        match written {
            Ok(r) => Ok((r.log_id.index, r.data)),
            Err(RaftError::APIError(ClientWriteError::ForwardToLeader(f))) => {
                Err(ProposeError::NotLeader {
                    leader_id: f.leader_id,
                    leader_addr: f.leader_node.map(|n| n.addr),
                })
            }
            Err(RaftError::APIError(ClientWriteError::ChangeMembershipError(e))) => {
                Err(ProposeError::Membership(Box::new(e)))
            }
            Err(RaftError::Fatal(f)) => Err(f.into()),
        }
    }

    /// [`Self::propose_local`], failing with "no quorum" after [`QUORUM_WAIT`]
    /// (the leader's own writes: leases, placements, the version gate).
    pub async fn propose_local_within(
        &self,
        command: Command,
    ) -> Result<(u64, CommandResult), ProposeError> {
        tokio::time::timeout(QUORUM_WAIT, self.propose_local(command))
            .await
            .unwrap_or_else(|_| Err(self.no_quorum("the write was not committed")))
    }

    /// The applied state, after a linearizable read barrier: it reflects every
    /// write acknowledged before this call. On a follower the leader confirms its
    /// leadership and its read index, and the follower waits until it has applied
    /// that far.
    pub async fn read_linearizable(&self) -> Result<Arc<StateView>, ProposeError> {
        tokio::time::timeout(QUORUM_WAIT, self.read_linearizable_inner())
            .await
            .unwrap_or_else(|_| Err(self.no_quorum("a fresh read could not be confirmed")))
    }

    async fn read_linearizable_inner(&self) -> Result<Arc<StateView>, ProposeError> {
        loop {
            match self.read_linearizable_once().await {
                // No leader known (an election, or a hand-over in progress): ask
                // again, within the caller's limit.
                Err(ProposeError::NotLeader {
                    leader_addr: None, ..
                }) => tokio::time::sleep(ELECTION_POLL).await,
                // openraft answers QuorumNotEnough as soon as a majority's heartbeat
                // replies failed, which happens for a moment after members restart
                // (stale connections): ask again, within the caller's limit (found
                // by the chaos soak: a drain right after an upgraded member came
                // back failed at once). A forwarded read index that met it comes
                // back as "no quorum" too.
                Err(ProposeError::NoQuorum(_)) => tokio::time::sleep(ELECTION_POLL * 2).await,
                // The leader went away under a forwarded read: a read is safe to
                // ask again (a write is not: it may have been applied).
                Err(ProposeError::Forward(crate::error::ForwardError::Unreachable { .. })) => {
                    tokio::time::sleep(ELECTION_POLL * 2).await
                }
                other => return other,
            }
        }
    }

    async fn read_linearizable_once(&self) -> Result<Arc<StateView>, ProposeError> {
        match self.read_index_local().await {
            Ok(_) => Ok(self.state.borrow().clone()),
            Err(ProposeError::NotLeader {
                leader_id: Some(leader),
                leader_addr: Some(addr),
            }) if leader != self.config.node_id => {
                let index = self.forward_read_index(&addr).await?;
                self.applied(index).await
            }
            Err(e) => Err(e),
        }
    }

    /// The applied state once this node has applied `index` (waiting up to
    /// [`APPLY_WAIT`]).
    pub async fn applied(&self, index: u64) -> Result<Arc<StateView>, ProposeError> {
        let mut state = self.state.clone();
        let applied =
            tokio::time::timeout(APPLY_WAIT, state.wait_for(|v| v.applied_index() >= index))
                .await
                .map(|r| r.map(|view| view.clone()));
        match applied {
            Ok(Ok(view)) => Ok(view),
            // The state machine is gone: Raft stopped.
            Ok(Err(_)) => Err(openraft::error::Fatal::Stopped.into()),
            Err(_) => Err(ProposeError::NotApplied {
                index,
                waited: APPLY_WAIT,
            }),
        }
    }

    /// Leader only: confirm leadership; returns the read index. One attempt: the
    /// caller's loop ([`Self::read_linearizable`], on this node or on the follower
    /// that forwarded the request) asks again within its limit.
    pub async fn read_index_local(&self) -> Result<u64, ProposeError> {
        match self.raft.ensure_linearizable().await {
            Ok(log_id) => Ok(log_id.map(|l| l.index).unwrap_or(0)),
            Err(RaftError::APIError(CheckIsLeaderError::ForwardToLeader(f))) => {
                Err(ProposeError::NotLeader {
                    leader_id: f.leader_id,
                    leader_addr: f.leader_node.map(|n| n.addr),
                })
            }
            Err(RaftError::APIError(CheckIsLeaderError::QuorumNotEnough(_))) => {
                Err(self.no_quorum("a fresh read could not be confirmed"))
            }
            Err(RaftError::Fatal(f)) => Err(f.into()),
        }
    }

    /// The locally applied state, without a read barrier.
    pub fn read_local(&self) -> Arc<StateView> {
        self.state.borrow().clone()
    }

    pub fn server_state(&self) -> ServerState {
        self.raft.metrics().borrow().state
    }

    pub async fn shutdown(&self) {
        if let Err(e) = self.raft.shutdown().await {
            tracing::warn!("raft shutdown: {e}");
        }
    }
}

pub(crate) fn check_node_file(data: &Path, node_id: NodeId) -> Result<(), StartError> {
    let path = data.join("node.json");
    match std::fs::read(&path) {
        Ok(bytes) => {
            let file: NodeFile = serde_json::from_slice(&bytes).map_err(|e| StartError::Io {
                path: path.clone(),
                source: std::io::Error::other(e),
            })?;
            if file.node_id != node_id {
                return Err(StartError::WrongNode {
                    path,
                    found: file.node_id,
                    expected: node_id,
                });
            }
            Ok(())
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            let json = serde_json::to_string(&NodeFile { node_id }).expect("plain struct");
            write_secret_file(&path, &json).map_err(io_err(&path))
        }
        Err(e) => Err(io_err(&path)(e)),
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn an_apps_own_address_keeps_the_function_ports_scheme_and_port() {
        let shop = strom_proto::ids::AppName::parse("shop").unwrap();
        for (base, domain, want) in [
            (
                "http://127.0.0.1:7071",
                "localhost",
                "http://shop.localhost:7071",
            ),
            (
                "https://[::1]:8443",
                "localhost",
                "https://shop.localhost:8443",
            ),
            ("https://node1.corp", "fn.corp", "https://shop.fn.corp"),
        ] {
            assert_eq!(super::app_url(base, domain, &shop), want);
        }
        assert!(super::check_app_domain("functions.example.com").is_ok());
        for bad in ["", "a..b", "-a.b", "a_b", "a.b.", "ü.de"] {
            let e = super::check_app_domain(bad).unwrap_err();
            assert!(e.contains(&format!("`{bad}`")), "{e}");
        }
    }
}
