//! Joining the management group.
//!
//! A new management node starts its Raft node *without* initializing it and asks
//! any member to join (`strom.internal.v1.ClusterService/Join`) with the cluster's
//! join token. Followers point to the leader; the leader adds the node as a
//! learner, waits until it has caught up (openraft's blocking `add_learner`), then
//! promotes it to voter through joint consensus. Nothing here is stored outside
//! Raft: membership lives in the log like any other entry.

use std::collections::BTreeSet;
use std::time::Duration;

use openraft::{BasicNode, ChangeMembers};
use strom_proto::codec;
use strom_proto::command::{Command, CommandResult};
use strom_proto::internal_v1::cluster_service_client::ClusterServiceClient;
use strom_proto::internal_v1::cluster_service_server::ClusterService;
use strom_proto::internal_v1::{
    ElectReply, ElectRequest, JoinReply, JoinRequest, ProposeReply, ProposeRequest, ReadIndexReply,
    ReadIndexRequest, RemoveMemberReply, RemoveMemberRequest, StepDownReply, StepDownRequest,
};
use tonic::{Request, Response, Status};

use crate::management::{ManagementNode, ProposeError, StartError};

/// Metadata key carrying the leader's address in UNAVAILABLE answers.
pub const LEADER_METADATA: &str = "x-strom-leader";

pub struct ClusterServer {
    pub node: ManagementNode,
}

impl ClusterServer {
    fn check_cluster(&self, theirs: &str) -> Result<(), Status> {
        check_cluster(&self.node, theirs)
    }

    fn propose_status(&self, e: ProposeError) -> Status {
        match e {
            ProposeError::NotLeader { .. } => self.not_leader(),
            other => Status::unavailable(other.to_string()),
        }
    }

    fn not_leader(&self) -> Status {
        not_leader_status(&self.node)
    }
}

/// Internal messages name their cluster: another cluster's (or any, before this
/// node's cluster is known) are refused, without naming ours.
pub(crate) fn check_cluster(node: &ManagementNode, theirs: &str) -> Result<(), Status> {
    let ours = cluster_of(node);
    if ours.is_empty() || theirs != ours {
        return Err(Status::permission_denied(format!(
            "request from cluster `{theirs}` refused: not this cluster"
        )));
    }
    Ok(())
}

/// UNAVAILABLE naming the leader's address (also in `x-strom-leader` metadata).
pub(crate) fn not_leader_status(node: &ManagementNode) -> Status {
    let metrics = node.raft.metrics().borrow().clone();
    let leader_addr = metrics.current_leader.and_then(|id| {
        metrics
            .membership_config
            .membership()
            .get_node(&id)
            .map(|n| n.addr.clone())
    });
    let mut status = Status::unavailable(match &leader_addr {
        Some(a) => format!("not the leader; the leader is at {a}"),
        None => "not the leader, and no leader is known (election in progress, or no quorum)"
            .to_string(),
    });
    if let Some(a) = leader_addr.and_then(|a| a.parse().ok()) {
        status.metadata_mut().insert(LEADER_METADATA, a);
    }
    status
}

#[tonic::async_trait]
impl ClusterService for ClusterServer {
    async fn join(&self, request: Request<JoinRequest>) -> Result<Response<JoinReply>, Status> {
        let req = request.into_inner();
        let view = self.node.read_local();
        let Some(cluster) = view.state.cluster.clone() else {
            return Err(Status::unavailable(
                "this node's cluster is not initialized yet",
            ));
        };
        if !cluster.join_token_hash.matches(req.join_token.trim()) {
            return Err(Status::unauthenticated("invalid join token"));
        }
        if req.node_id == 0 {
            return Err(Status::invalid_argument("node_id: must be at least 1"));
        }
        if req.address.trim().is_empty() {
            return Err(Status::invalid_argument("address: required"));
        }
        let theirs = req.protocol.max(strom_proto::version::OLDEST_PROTOCOL);
        if theirs < view.state.protocol() {
            return Err(Status::failed_precondition(format!(
                "node {} speaks protocol {theirs}, but the cluster already uses protocol {}: upgrade its build first",
                req.node_id,
                view.state.protocol()
            )));
        }
        let metrics = self.node.raft.metrics().borrow().clone();
        if metrics.current_leader != Some(self.node.config.node_id) {
            return Err(self.not_leader());
        }
        let membership = metrics.membership_config.membership().clone();
        if let Some(existing) = membership.get_node(&req.node_id) {
            if existing.addr != req.address {
                return Err(Status::already_exists(format!(
                    "node {} is already a member at {}; remove it first to move it",
                    req.node_id, existing.addr
                )));
            }
        }
        let is_voter = membership.voter_ids().any(|id| id == req.node_id);
        if !is_voter {
            tracing::info!(node = req.node_id, address = %req.address, "adding a management node");
            self.node
                .raft
                .add_learner(req.node_id, BasicNode::new(&req.address), true)
                .await
                .map_err(|e| Status::unavailable(format!("adding the learner failed: {e}")))?;
            self.node
                .raft
                .change_membership(
                    ChangeMembers::AddVoterIds(BTreeSet::from([req.node_id])),
                    false,
                )
                .await
                .map_err(|e| Status::unavailable(format!("promoting to voter failed: {e}")))?;
        }
        let metrics = self.node.raft.metrics().borrow().clone();
        Ok(Response::new(JoinReply {
            cluster_id: cluster.cluster_id.to_string(),
            leader_id: metrics.current_leader.unwrap_or(0),
            voters: metrics.membership_config.membership().voter_ids().collect(),
        }))
    }

    async fn propose(
        &self,
        request: Request<ProposeRequest>,
    ) -> Result<Response<ProposeReply>, Status> {
        let req = request.into_inner();
        self.check_cluster(&req.cluster_id)?;
        let command: Command = codec::decode(&req.command)
            .map_err(|e| Status::invalid_argument(format!("undecodable command: {e}")))?;
        let (log_index, result) = self
            .node
            .propose_local(command)
            .await
            .map_err(|e| self.propose_status(e))?;
        let result = codec::encode(&result).map_err(|e| Status::internal(e.to_string()))?;
        Ok(Response::new(ProposeReply { log_index, result }))
    }

    async fn remove_member(
        &self,
        request: Request<RemoveMemberRequest>,
    ) -> Result<Response<RemoveMemberReply>, Status> {
        let req = request.into_inner();
        self.check_cluster(&req.cluster_id)?;
        match self.node.remove_member_local(req.node_id).await {
            Ok(voters) => Ok(Response::new(RemoveMemberReply { voters })),
            Err(MemberError::NotLeader(_)) => Err(self.not_leader()),
            Err(e) => Err(e.to_status()),
        }
    }

    async fn step_down(
        &self,
        request: Request<StepDownRequest>,
    ) -> Result<Response<StepDownReply>, Status> {
        self.check_cluster(&request.get_ref().cluster_id)?;
        let (leader_id, handed_over) = self.node.step_down().await.map_err(Status::unavailable)?;
        Ok(Response::new(StepDownReply {
            leader_id,
            handed_over,
        }))
    }

    async fn elect(&self, request: Request<ElectRequest>) -> Result<Response<ElectReply>, Status> {
        self.check_cluster(&request.get_ref().cluster_id)?;
        tracing::info!("asked to take over leadership: starting an election");
        self.node
            .raft
            .trigger()
            .elect()
            .await
            .map_err(|e| Status::unavailable(e.to_string()))?;
        Ok(Response::new(ElectReply {}))
    }

    async fn read_index(
        &self,
        request: Request<ReadIndexRequest>,
    ) -> Result<Response<ReadIndexReply>, Status> {
        self.check_cluster(&request.get_ref().cluster_id)?;
        let index = self
            .node
            .read_index_local()
            .await
            .map_err(|e| self.propose_status(e))?;
        Ok(Response::new(ReadIndexReply { index }))
    }
}

impl ManagementNode {
    /// Leader only: take `node_id` out of the group (joint consensus).
    pub async fn remove_member_local(&self, node_id: u64) -> Result<Vec<u64>, MemberError> {
        let metrics = self.raft.metrics().borrow().clone();
        if metrics.current_leader != Some(self.config.node_id) {
            let m = metrics.membership_config.membership();
            return Err(MemberError::NotLeader(
                metrics
                    .current_leader
                    .and_then(|id| m.get_node(&id).map(|n| n.addr.clone())),
            ));
        }
        let membership = metrics.membership_config.membership().clone();
        if membership.get_node(&node_id).is_none() {
            return Err(MemberError::NotFound(node_id));
        }
        let voters: BTreeSet<u64> = membership.voter_ids().collect();
        if voters.contains(&node_id) && voters.len() == 1 {
            return Err(MemberError::LastVoter(node_id));
        }
        let change = if voters.contains(&node_id) {
            ChangeMembers::RemoveVoters(BTreeSet::from([node_id]))
        } else {
            ChangeMembers::RemoveNodes(BTreeSet::from([node_id]))
        };
        let r = self
            .raft
            .change_membership(change, false)
            .await
            .map_err(|e| MemberError::Raft(e.to_string()))?;
        let _ = r;
        let metrics = self.raft.metrics().borrow().clone();
        Ok(metrics.membership_config.membership().voter_ids().collect())
    }

    /// Take `node_id` out of the group, through the leader.
    pub async fn remove_member(&self, node_id: u64) -> Result<Vec<u64>, MemberError> {
        match self.remove_member_local(node_id).await {
            Err(MemberError::NotLeader(Some(addr))) => {
                let mut client = ClusterServiceClient::new(
                    crate::tls::channel(&addr, std::time::Duration::from_secs(2))
                        .await
                        .map_err(|e| MemberError::Raft(format!("the leader: {e}")))?,
                );
                let reply = client
                    .remove_member(RemoveMemberRequest {
                        cluster_id: cluster_of(self),
                        node_id,
                    })
                    .await
                    .map_err(|s| match s.code() {
                        tonic::Code::NotFound => MemberError::NotFound(node_id),
                        tonic::Code::FailedPrecondition => MemberError::LastVoter(node_id),
                        _ => MemberError::Raft(s.message().to_string()),
                    })?;
                Ok(reply.into_inner().voters)
            }
            other => other,
        }
    }
}

impl ManagementNode {
    /// Before a planned stop: if this node leads, stop campaigning and heartbeating,
    /// ask the most caught-up follower to run an election, and wait for the new
    /// leader (openraft 0.9 has no `transfer_leader`). Returns the new leader, or
    /// `None` when there was nothing to hand over. On failure this node resumes.
    pub async fn hand_over_leadership(&self, wait: Duration) -> Result<Option<u64>, String> {
        let me = self.config.node_id;
        let metrics = self.raft.metrics().borrow().clone();
        if metrics.current_leader != Some(me) {
            return Ok(None);
        }
        let membership = metrics.membership_config.membership().clone();
        let mut followers: Vec<(u64, u64, String)> = membership
            .voter_ids()
            .filter(|id| *id != me)
            .filter_map(|id| {
                let matched = metrics
                    .replication
                    .as_ref()
                    .and_then(|r| r.get(&id).cloned().flatten())
                    .map(|l| l.index)
                    .unwrap_or(0);
                membership
                    .get_node(&id)
                    .map(|n| (id, matched, n.addr.clone()))
            })
            .collect();
        if followers.is_empty() {
            return Ok(None);
        }
        followers.sort_by_key(|(_, matched, _)| std::cmp::Reverse(*matched));
        self.raft.runtime_config().elect(false);
        self.raft.runtime_config().heartbeat(false);
        let resume = || {
            self.raft.runtime_config().elect(true);
            self.raft.runtime_config().heartbeat(true);
        };
        let cluster = cluster_of(self);
        for (id, _, addr) in followers {
            let asked = async {
                let mut client = ClusterServiceClient::new(
                    crate::tls::channel(&addr, std::time::Duration::from_secs(2)).await?,
                );
                client
                    .elect(ElectRequest {
                        cluster_id: cluster.clone(),
                    })
                    .await
                    .map_err(|e| e.message().to_string())
            };
            if let Err(e) = asked.await {
                tracing::warn!(node = id, "cannot ask node {id} to take over: {e}");
                continue;
            }
            let changed = self
                .raft
                .wait(Some(wait))
                .metrics(
                    |m| m.current_leader.is_some_and(|l| l != me),
                    "a new leader",
                )
                .await;
            if let Ok(m) = changed {
                tracing::info!(new_leader = ?m.current_leader, "leadership handed over");
                return Ok(m.current_leader);
            }
        }
        resume();
        Err("no follower took over leadership in time".into())
    }
}

impl ManagementNode {
    /// Planned stop of this node: hand leadership over if it leads. Returns the
    /// leader afterwards and whether this node handed over.
    pub async fn step_down(&self) -> Result<(u64, bool), String> {
        match self.hand_over_leadership(Duration::from_secs(10)).await? {
            Some(new_leader) => Ok((new_leader, true)),
            None => Ok((
                self.raft.metrics().borrow().current_leader.unwrap_or(0),
                false,
            )),
        }
    }

    /// `strom node drain ID` for a management node: ask it to step down.
    pub async fn drain_node(&self, node_id: u64) -> Result<(u64, bool), MemberError> {
        if node_id == self.config.node_id {
            return self.step_down().await.map_err(MemberError::Raft);
        }
        let addr = {
            let metrics = self.raft.metrics().borrow().clone();
            metrics
                .membership_config
                .membership()
                .get_node(&node_id)
                .map(|n| n.addr.clone())
                .ok_or(MemberError::NotFound(node_id))?
        };
        let mut client = ClusterServiceClient::new(
            crate::tls::channel(&addr, std::time::Duration::from_secs(2))
                .await
                .map_err(|e| MemberError::Raft(format!("node {node_id}: {e}")))?,
        );
        let reply = client
            .step_down(StepDownRequest {
                cluster_id: cluster_of(self),
            })
            .await
            .map_err(|s| MemberError::Raft(format!("node {node_id}: {}", s.message())))?
            .into_inner();
        Ok((reply.leader_id, reply.handed_over))
    }
}

#[derive(Debug, thiserror::Error)]
pub enum MemberError {
    #[error("not the leader{}", .0.as_ref().map(|a| format!("; the leader is at {a}")).unwrap_or_default())]
    NotLeader(Option<String>),
    #[error("node {0} is not a member")]
    NotFound(u64),
    #[error("node {0} is the only voter; a cluster needs at least one")]
    LastVoter(u64),
    #[error("membership change failed: {0}")]
    Raft(String),
}

impl MemberError {
    pub fn to_status(&self) -> Status {
        match self {
            MemberError::NotLeader(_) | MemberError::Raft(_) => {
                Status::unavailable(self.to_string())
            }
            MemberError::NotFound(_) => Status::not_found(self.to_string()),
            MemberError::LastVoter(_) => Status::failed_precondition(self.to_string()),
        }
    }
}

/// This node's cluster id as sent in internal messages (empty before init).
pub(crate) fn cluster_of(node: &ManagementNode) -> String {
    node.read_local()
        .state
        .cluster
        .as_ref()
        .map(|c| c.cluster_id.to_string())
        .unwrap_or_default()
}

fn forward_error(addr: &str, s: Status) -> ProposeError {
    match s.code() {
        tonic::Code::Unavailable => ProposeError::NotLeader {
            leader_id: None,
            leader_addr: s
                .metadata()
                .get(LEADER_METADATA)
                .and_then(|v| v.to_str().ok())
                .map(str::to_string),
        },
        _ => ProposeError::Other(format!(
            "forwarding to the leader at {addr}: {}",
            s.message()
        )),
    }
}

/// Send a write to the leader at `addr`; answered after commit.
pub async fn forward_propose(
    node: &ManagementNode,
    addr: &str,
    command: &Command,
) -> Result<(u64, CommandResult), ProposeError> {
    let bytes = codec::encode(command).map_err(|e| ProposeError::Other(e.to_string()))?;
    let mut client = ClusterServiceClient::new(
        crate::tls::channel(addr, std::time::Duration::from_secs(2))
            .await
            .map_err(|e| ProposeError::Other(format!("the leader is unreachable: {e}")))?,
    )
    .max_encoding_message_size(64 * 1024 * 1024);
    let reply = client
        .propose(ProposeRequest {
            cluster_id: cluster_of(node),
            command: bytes,
        })
        .await
        .map_err(|s| forward_error(addr, s))?
        .into_inner();
    let result = codec::decode(&reply.result).map_err(|e| ProposeError::Other(e.to_string()))?;
    Ok((reply.log_index, result))
}

/// Ask the leader at `addr` for a read index.
pub async fn forward_read_index(node: &ManagementNode, addr: &str) -> Result<u64, ProposeError> {
    let mut client = ClusterServiceClient::new(
        crate::tls::channel(addr, std::time::Duration::from_secs(2))
            .await
            .map_err(|e| ProposeError::Other(format!("the leader is unreachable: {e}")))?,
    );
    Ok(client
        .read_index(ReadIndexRequest {
            cluster_id: cluster_of(node),
        })
        .await
        .map_err(|s| forward_error(addr, s))?
        .into_inner()
        .index)
}

impl ManagementNode {
    /// Join a running cluster through any of `seeds` (control URLs), following the
    /// leader hint, until this node is a voter with the cluster's state applied.
    /// A node restarted with its data dir is already a member: it only waits.
    pub async fn join(
        &self,
        seeds: &[String],
        token: &str,
        wait: Duration,
    ) -> Result<(), StartError> {
        let me = self.config.node_id;
        let deadline = tokio::time::Instant::now() + wait;
        let is_member = |node: &ManagementNode| {
            let m = node.raft.metrics().borrow().clone();
            m.membership_config
                .membership()
                .voter_ids()
                .any(|id| id == me)
        };
        let mut targets: Vec<String> = seeds.to_vec();
        let mut last_error = String::from("no seed given");
        while !is_member(self) {
            if tokio::time::Instant::now() >= deadline {
                return Err(StartError::Raft(format!(
                    "joining the cluster failed: {last_error}"
                )));
            }
            let target = targets.remove(0);
            targets.push(target.clone());
            match try_join(&target, me, &self.config.advertise_control_addr, token).await {
                Ok(()) => {}
                Err(JoinError::Refused(e)) => return Err(StartError::Raft(e)),
                Err(JoinError::Leader(addr)) => {
                    targets.insert(0, crate::tls::url(&addr));
                    continue;
                }
                Err(JoinError::Retry(e)) => {
                    last_error = format!("{target}: {e}");
                    tokio::time::sleep(Duration::from_millis(200)).await;
                }
            }
        }
        // The cluster's identity arrives with the log.
        let mut state = self.state.clone();
        let applied =
            tokio::time::timeout_at(deadline, state.wait_for(|v| v.state.cluster.is_some())).await;
        match applied {
            Ok(Ok(_)) => Ok(()),
            _ => Err(StartError::Raft(
                "joined, but the cluster state did not arrive in time".into(),
            )),
        }
    }
}

enum JoinError {
    /// Wrong token, conflicting id: asking again will not help.
    Refused(String),
    /// Ask the leader at this address.
    Leader(String),
    Retry(String),
}

async fn try_join(seed: &str, node_id: u64, address: &str, token: &str) -> Result<(), JoinError> {
    let mut client = ClusterServiceClient::new(
        crate::tls::channel(seed, std::time::Duration::from_secs(2))
            .await
            .map_err(JoinError::Retry)?,
    );
    let result = client
        .join(JoinRequest {
            node_id,
            address: address.to_string(),
            join_token: token.to_string(),
            protocol: strom_proto::version::PROTOCOL,
        })
        .await;
    match result {
        Ok(_) => Ok(()),
        Err(s) => match s.code() {
            tonic::Code::Unauthenticated
            | tonic::Code::InvalidArgument
            | tonic::Code::FailedPrecondition
            | tonic::Code::AlreadyExists => Err(JoinError::Refused(s.message().to_string())),
            tonic::Code::Unavailable => match s
                .metadata()
                .get(LEADER_METADATA)
                .and_then(|v| v.to_str().ok())
            {
                Some(leader) if leader != address => Err(JoinError::Leader(leader.to_string())),
                _ => Err(JoinError::Retry(s.message().to_string())),
            },
            _ => Err(JoinError::Retry(s.message().to_string())),
        },
    }
}
