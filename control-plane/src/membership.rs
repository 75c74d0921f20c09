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
use strom_proto::command::Command;
use strom_proto::internal_v1::cluster_service_client::ClusterServiceClient;
use strom_proto::internal_v1::cluster_service_server::ClusterService;
use strom_proto::internal_v1::{
    ElectReply, ElectRequest, JoinReply, JoinRequest, ProposeReply, ProposeRequest, ReadIndexReply,
    ReadIndexRequest, RemoveMemberReply, RemoveMemberRequest, StepDownReply, StepDownRequest,
};
use tonic::{Request, Response, Status};

use crate::error::{ForwardError, HandOverError, JoinError, ProposeError, StartError};
pub use crate::error::{MemberError, LEADER_METADATA};
use crate::management::ManagementNode;

pub struct ClusterServer {
    pub node: ManagementNode,
}

impl ClusterServer {
    fn check_cluster(&self, theirs: &str) -> Result<(), Status> {
        check_cluster(&self.node, theirs)
    }

    fn not_leader(&self) -> Status {
        self.node.not_leader_status()
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
            .map_err(|e| e.to_status())?;
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
        let (leader_id, handed_over) = self.node.step_down().await.map_err(|e| e.to_status())?;
        Ok(Response::new(StepDownReply {
            leader_id: leader_id.unwrap_or(0),
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
            .map_err(|e| e.to_status())?;
        Ok(Response::new(ReadIndexReply { index }))
    }
}

/// How long a leader handing over waits for its chosen follower to catch up.
const CATCH_UP: Duration = Duration::from_secs(2);

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
        let voters: BTreeSet<u64> = membership.voter_ids().collect();
        check_removal(&voters, membership.get_node(&node_id).is_some(), node_id)?;
        let change = if voters.contains(&node_id) {
            ChangeMembers::RemoveVoters(BTreeSet::from([node_id]))
        } else {
            ChangeMembers::RemoveNodes(BTreeSet::from([node_id]))
        };
        self.raft.change_membership(change, false).await?;
        let metrics = self.raft.metrics().borrow().clone();
        Ok(metrics.membership_config.membership().voter_ids().collect())
    }

    /// Whether this node's view of the membership would refuse removing
    /// `node_id` (asked before anything else is changed).
    pub fn removal_refused(&self, node_id: u64) -> Result<(), MemberError> {
        let metrics = self.raft.metrics().borrow().clone();
        let membership = metrics.membership_config.membership();
        let voters: BTreeSet<u64> = membership.voter_ids().collect();
        check_removal(&voters, membership.get_node(&node_id).is_some(), node_id)
    }

    /// Take `node_id` out of the group, through the leader.
    pub async fn remove_member(&self, node_id: u64) -> Result<Vec<u64>, MemberError> {
        match self.remove_member_local(node_id).await {
            Err(MemberError::NotLeader(Some(addr))) => {
                let peer = |source| MemberError::Peer {
                    node: node_id,
                    source,
                };
                let mut client = ClusterServiceClient::new(self.peers.get(&addr).map_err(peer)?);
                let mut request = tonic::Request::new(RemoveMemberRequest {
                    cluster_id: cluster_of(self),
                    node_id,
                });
                request.set_timeout(MEMBER_CALL);
                let reply = client
                    .remove_member(request)
                    .await
                    .map_err(|s| match s.code() {
                        tonic::Code::NotFound => MemberError::NotFound(node_id),
                        tonic::Code::FailedPrecondition => MemberError::LastVoter(node_id),
                        _ => peer(forward_error(&addr, s)),
                    })?;
                Ok(reply.into_inner().voters)
            }
            other => other,
        }
    }
}

/// Whether `node_id` may leave a group with these voters (`is_node`: it is a
/// voter or a learner): a group keeps at least one voter.
pub fn check_removal(
    voters: &BTreeSet<u64>,
    is_node: bool,
    node_id: u64,
) -> Result<(), MemberError> {
    if !is_node {
        return Err(MemberError::NotFound(node_id));
    }
    if voters.contains(&node_id) && voters.len() == 1 {
        return Err(MemberError::LastVoter(node_id));
    }
    Ok(())
}

impl ManagementNode {
    /// Before a planned stop: if this node leads, stop campaigning, heartbeating
    /// and taking new writes (Raft's leadership transfer, §3.10: a write appended
    /// meanwhile would leave the chosen follower's log behind this node's, and this
    /// node would refuse it its vote), let the most caught-up follower replicate
    /// everything, ask it to run an election, and wait for the new leader (openraft
    /// 0.9 has no `transfer_leader`). Writes proposed meanwhile wait and then go to
    /// the new leader. Returns the new leader, or `None` when there was nothing to
    /// hand over. On failure this node resumes.
    pub async fn hand_over_leadership(&self, wait: Duration) -> Result<Option<u64>, HandOverError> {
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
        self.handing_over
            .store(true, std::sync::atomic::Ordering::SeqCst);
        // Resumes this node unless the hand-over succeeded — also when this
        // future is dropped half-way (a StepDown call whose deadline passed while
        // a frozen follower held it): a node must never stay without elections
        // and heartbeats because its caller gave up.
        let mut resume = ResumeUnlessHandedOver {
            node: self,
            handed_over: false,
        };
        let cluster = cluster_of(self);
        for (id, _, addr) in followers {
            // Everything this node appended (writes admitted before the hand-over
            // began included) reaches the follower first.
            let caught_up = self
                .raft
                .wait(Some(CATCH_UP))
                .metrics(
                    |m| {
                        let matched = m
                            .replication
                            .as_ref()
                            .and_then(|r| r.get(&id).cloned().flatten())
                            .map(|l| l.index);
                        matched >= m.last_log_index
                    },
                    "the follower caught up",
                )
                .await;
            if caught_up.is_err() {
                tracing::warn!(
                    node = id,
                    "node {id} did not catch up within {CATCH_UP:?}; asking it anyway"
                );
            }
            let asked = async {
                let mut client = ClusterServiceClient::new(self.peers.get(&addr)?);
                let mut request = tonic::Request::new(ElectRequest {
                    cluster_id: cluster.clone(),
                });
                request.set_timeout(MEMBER_CALL);
                client
                    .elect(request)
                    .await
                    .map_err(|s| forward_error(&addr, s))
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
                resume.handed_over = true;
                self.handing_over
                    .store(false, std::sync::atomic::Ordering::SeqCst);
                tracing::info!(new_leader = ?m.current_leader, "leadership handed over");
                return Ok(m.current_leader);
            }
        }
        drop(resume);
        Err(HandOverError::NoTakeOver(wait))
    }
}

/// Undoes a hand-over's pause (elections and heartbeats back on, writes taken
/// again) when dropped, unless leadership was handed over.
struct ResumeUnlessHandedOver<'a> {
    node: &'a ManagementNode,
    handed_over: bool,
}

impl Drop for ResumeUnlessHandedOver<'_> {
    fn drop(&mut self) {
        if self.handed_over {
            return;
        }
        self.node
            .handing_over
            .store(false, std::sync::atomic::Ordering::SeqCst);
        self.node.raft.runtime_config().elect(true);
        self.node.raft.runtime_config().heartbeat(true);
    }
}

impl ManagementNode {
    /// Planned stop of this node: hand leadership over if it leads. Returns the
    /// leader afterwards and whether this node handed over.
    pub async fn step_down(&self) -> Result<(Option<u64>, bool), MemberError> {
        match self.hand_over_leadership(Duration::from_secs(10)).await? {
            Some(new_leader) => Ok((Some(new_leader), true)),
            None => Ok((self.raft.metrics().borrow().current_leader, false)),
        }
    }

    /// `strom node drain ID` for a management node: ask it to step down.
    pub async fn drain_node(&self, node_id: u64) -> Result<(Option<u64>, bool), MemberError> {
        if node_id == self.config.node_id {
            return self.step_down().await;
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
        let peer = |source| MemberError::Peer {
            node: node_id,
            source,
        };
        let mut client = ClusterServiceClient::new(self.peers.get(&addr).map_err(peer)?);
        // A hand-over waits up to 10 s for the new leader.
        let mut request = tonic::Request::new(StepDownRequest {
            cluster_id: cluster_of(self),
        });
        request.set_timeout(Duration::from_secs(15));
        let reply = client
            .step_down(request)
            .await
            .map_err(|s| peer(forward_error(&addr, s)))?
            .into_inner();
        Ok((Some(reply.leader_id).filter(|l| *l != 0), reply.handed_over))
    }
}

/// How long a membership call to another member may take.
const MEMBER_CALL: Duration = Duration::from_secs(5);

/// A peer's error answer: unreachable (UNAVAILABLE without a leader hint) or
/// refused (its own code and message).
fn forward_error(addr: &str, status: Status) -> ForwardError {
    match ProposeError::from_peer(addr, status) {
        ProposeError::Forward(f) => f,
        other => ForwardError::Refused {
            addr: addr.to_string(),
            status: other.to_status(),
        },
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
        // The token proves membership from the first call on (Join included).
        self.secret.set_join_token(token);
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
                return Err(JoinError::TimedOut {
                    waited: wait,
                    last: last_error,
                }
                .into());
            }
            let target = targets.remove(0);
            targets.push(target.clone());
            match self.try_join(&target, token).await {
                Ok(()) => {}
                Err(Attempt::Refused(status)) => {
                    return Err(JoinError::Refused {
                        addr: target,
                        status,
                    }
                    .into())
                }
                Err(Attempt::Leader(addr)) => {
                    targets.insert(0, crate::tls::url(&addr));
                    continue;
                }
                Err(Attempt::Retry(e)) => {
                    last_error = e.to_string();
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
            _ => Err(JoinError::NoState(wait).into()),
        }
    }

    async fn try_join(&self, seed: &str, token: &str) -> Result<(), Attempt> {
        let address = &self.config.advertise_control_addr;
        let mut client = ClusterServiceClient::new(self.peers.get(seed).map_err(Attempt::Retry)?);
        // Joining waits for the new member to catch up: give it time.
        let mut request = tonic::Request::new(JoinRequest {
            node_id: self.config.node_id,
            address: address.clone(),
            join_token: token.to_string(),
            protocol: strom_proto::version::PROTOCOL,
        });
        request.set_timeout(Duration::from_secs(30));
        match client.join(request).await {
            Ok(_) => Ok(()),
            Err(s) => match s.code() {
                tonic::Code::Unauthenticated
                | tonic::Code::InvalidArgument
                | tonic::Code::FailedPrecondition
                | tonic::Code::AlreadyExists => Err(Attempt::Refused(s)),
                tonic::Code::Unavailable => match s
                    .metadata()
                    .get(LEADER_METADATA)
                    .and_then(|v| v.to_str().ok())
                {
                    Some(leader) if leader != address => Err(Attempt::Leader(leader.to_string())),
                    _ => Err(Attempt::Retry(forward_error(seed, s))),
                },
                _ => Err(Attempt::Retry(forward_error(seed, s))),
            },
        }
    }
}

/// One join attempt's outcome.
enum Attempt {
    /// Wrong token, conflicting id: asking again will not help.
    Refused(Status),
    /// Ask the leader at this address.
    Leader(String),
    Retry(ForwardError),
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_last_voter_and_strangers_cannot_be_removed() {
        let one = BTreeSet::from([1]);
        let three = BTreeSet::from([1, 2, 3]);
        assert!(matches!(
            check_removal(&one, true, 1),
            Err(MemberError::LastVoter(1))
        ));
        assert!(matches!(
            check_removal(&three, false, 9),
            Err(MemberError::NotFound(9))
        ));
        assert!(check_removal(&three, true, 2).is_ok());
        // A learner beside a single voter may go.
        assert!(check_removal(&one, true, 4).is_ok());
    }
}
