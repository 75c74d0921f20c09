//! openraft's network over tonic: the client side ([`RaftNetworkFactory`]) and the
//! `strom.internal.v1.RaftService` server side.
//!
//! openraft's messages travel as bincode bytes inside an envelope naming the
//! cluster and both nodes. A receiver refuses a message for another cluster or
//! another node id (PERMISSION_DENIED), so a misconfigured node never takes part
//! in the wrong group. Nothing here is durable.
//!
//! A member that cannot be reached is logged once when calls to it start failing
//! and once when they succeed again, with the count of failed calls between
//! ([`Reachability`]), not on every heartbeat (openraft's own replication
//! warnings are off in the default log filter).

use std::sync::Arc;

use openraft::error::{
    InstallSnapshotError, NetworkError, RPCError, RaftError, RemoteError, Unreachable,
};
use openraft::network::{RPCOption, RaftNetwork, RaftNetworkFactory};
use openraft::raft::{
    AppendEntriesRequest, AppendEntriesResponse, InstallSnapshotRequest, InstallSnapshotResponse,
    VoteRequest, VoteResponse,
};
use openraft::BasicNode;
use serde::{de::DeserializeOwned, Serialize};
use strom_proto::codec;
use strom_proto::internal_v1::raft_service_client::RaftServiceClient;
use strom_proto::internal_v1::raft_service_server::RaftService;
use strom_proto::internal_v1::{RaftReply, RaftRequest};
use strom_proto::raft_types::{Raft, TypeConfig};
use tokio::sync::watch;

use crate::state_machine::StateView;

type NodeId = u64;

/// Who this node is, for the envelope.
#[derive(Clone)]
pub struct PeerIdentity {
    pub node_id: NodeId,
    pub state: watch::Receiver<Arc<StateView>>,
    /// The proof of membership shown to peers.
    pub secret: crate::internal_auth::ClusterSecret,
}

impl PeerIdentity {
    fn cluster_id(&self) -> String {
        self.state
            .borrow()
            .state
            .cluster
            .as_ref()
            .map(|c| c.cluster_id.to_string())
            .unwrap_or_default()
    }
}

pub struct NetworkFactory {
    pub identity: PeerIdentity,
    /// Whether each member answered its last call (shared by every client).
    pub reachability: Arc<std::sync::Mutex<Reachability>>,
}

impl NetworkFactory {
    pub fn new(identity: PeerIdentity) -> NetworkFactory {
        NetworkFactory {
            identity,
            reachability: Default::default(),
        }
    }
}

/// What changed for a member after a call.
#[derive(Debug, PartialEq, Eq)]
pub enum Change {
    /// Calls to it started failing.
    Lost,
    /// It answered again after `failed` calls over `for_ms`.
    Back { failed: u64, for_ms: u64 },
}

/// Which members are failing calls, since when and how often (pure: the caller
/// passes the time).
#[derive(Debug, Default)]
pub struct Reachability {
    down: std::collections::HashMap<NodeId, (u64, u64)>,
}

impl Reachability {
    /// A call to `target` at `now_ms` ended: `Some` when that is news.
    pub fn record(&mut self, target: NodeId, ok: bool, now_ms: u64) -> Option<Change> {
        match (ok, self.down.get_mut(&target)) {
            (true, None) => None,
            (true, Some(_)) => {
                let (since, failed) = self.down.remove(&target).expect("present");
                Some(Change::Back {
                    failed,
                    for_ms: now_ms.saturating_sub(since),
                })
            }
            (false, Some((_, failed))) => {
                *failed += 1;
                None
            }
            (false, None) => {
                self.down.insert(target, (now_ms, 1));
                Some(Change::Lost)
            }
        }
    }
}

impl RaftNetworkFactory<TypeConfig> for NetworkFactory {
    type Network = PeerClient;

    async fn new_client(&mut self, target: NodeId, node: &BasicNode) -> Self::Network {
        PeerClient {
            identity: self.identity.clone(),
            target,
            node: node.clone(),
            client: None,
            reachability: self.reachability.clone(),
        }
    }
}

pub struct PeerClient {
    identity: PeerIdentity,
    target: NodeId,
    node: BasicNode,
    client: Option<RaftServiceClient<crate::internal_auth::InternalChannel>>,
    reachability: Arc<std::sync::Mutex<Reachability>>,
}

type RpcErr<E> = RPCError<NodeId, BasicNode, RaftError<NodeId, E>>;

impl PeerClient {
    async fn call<Req, Resp, E>(
        &mut self,
        method: &'static str,
        req: &Req,
        option: &RPCOption,
    ) -> Result<Resp, RpcErr<E>>
    where
        Req: Serialize,
        Resp: DeserializeOwned,
        E: std::error::Error + DeserializeOwned,
    {
        let result = self.call_once(method, req, option).await;
        let failed = match &result {
            Err(RPCError::Unreachable(e)) => Some(e.to_string()),
            Err(RPCError::Network(e)) => Some(e.to_string()),
            _ => None,
        };
        let now_ms = crate::management::now_ms().max(0) as u64;
        let change = self.reachability.lock().expect("reachability").record(
            self.target,
            failed.is_none(),
            now_ms,
        );
        match (change, failed) {
            (Some(Change::Lost), Some(e)) => tracing::warn!(
                member = self.target,
                addr = %self.node.addr,
                "management member {} cannot be reached ({e}); retrying, logged again when it answers",
                self.target
            ),
            (Some(Change::Back { failed, for_ms }), _) => tracing::info!(
                member = self.target,
                failed_calls = failed,
                "management member {} answers again after {failed} failed calls in {} ms",
                self.target,
                for_ms
            ),
            (_, Some(e)) => tracing::debug!(member = self.target, "{method}: {e}"),
            _ => {}
        }
        result
    }

    async fn call_once<Req, Resp, E>(
        &mut self,
        method: &'static str,
        req: &Req,
        option: &RPCOption,
    ) -> Result<Resp, RpcErr<E>>
    where
        Req: Serialize,
        Resp: DeserializeOwned,
        E: std::error::Error + DeserializeOwned,
    {
        let payload = codec::encode(req).map_err(|e| RPCError::Network(NetworkError::new(&e)))?;
        if self.client.is_none() {
            let channel =
                crate::tls::channel(&self.node.addr, option.hard_ttl(), &self.identity.secret)
                    .await
                    .map_err(|e| {
                        RPCError::Unreachable(Unreachable::new(&std::io::Error::other(e)))
                    })?;
            self.client = Some(
                RaftServiceClient::new(channel)
                    .max_decoding_message_size(usize::MAX)
                    .max_encoding_message_size(usize::MAX),
            );
        }
        let client = self.client.as_mut().expect("connected above");
        let mut request = tonic::Request::new(RaftRequest {
            cluster_id: self.identity.cluster_id(),
            from_node: self.identity.node_id,
            to_node: self.target,
            payload,
        });
        request.set_timeout(option.hard_ttl());
        let reply = match method {
            "append_entries" => client.append_entries(request).await,
            "vote" => client.vote(request).await,
            _ => client.install_snapshot(request).await,
        };
        let reply = match reply {
            Ok(r) => r.into_inner(),
            Err(status) => {
                if status.code() == tonic::Code::Unavailable {
                    self.client = None;
                    return Err(RPCError::Unreachable(Unreachable::new(&status)));
                }
                return Err(RPCError::Network(NetworkError::new(&status)));
            }
        };
        let result: Result<Resp, RaftError<NodeId, E>> =
            codec::decode(&reply.payload).map_err(|e| RPCError::Network(NetworkError::new(&e)))?;
        result.map_err(|e| {
            RPCError::RemoteError(RemoteError::new_with_node(
                self.target,
                self.node.clone(),
                e,
            ))
        })
    }
}

impl RaftNetwork<TypeConfig> for PeerClient {
    async fn append_entries(
        &mut self,
        rpc: AppendEntriesRequest<TypeConfig>,
        option: RPCOption,
    ) -> Result<AppendEntriesResponse<NodeId>, RpcErr<openraft::error::Infallible>> {
        self.call("append_entries", &rpc, &option).await
    }

    async fn install_snapshot(
        &mut self,
        rpc: InstallSnapshotRequest<TypeConfig>,
        option: RPCOption,
    ) -> Result<InstallSnapshotResponse<NodeId>, RpcErr<InstallSnapshotError>> {
        self.call("install_snapshot", &rpc, &option).await
    }

    async fn vote(
        &mut self,
        rpc: VoteRequest<NodeId>,
        option: RPCOption,
    ) -> Result<VoteResponse<NodeId>, RpcErr<openraft::error::Infallible>> {
        self.call("vote", &rpc, &option).await
    }
}

/// The receiving side: checks the envelope, hands the message to the local Raft.
pub struct RaftServer {
    pub raft: Raft,
    pub identity: PeerIdentity,
}

impl RaftServer {
    fn check(&self, req: &RaftRequest) -> Result<(), tonic::Status> {
        if req.to_node != self.identity.node_id {
            return Err(tonic::Status::permission_denied(format!(
                "message for node {} reached node {}",
                req.to_node, self.identity.node_id
            )));
        }
        let ours = self.identity.cluster_id();
        if !ours.is_empty() && !req.cluster_id.is_empty() && req.cluster_id != ours {
            return Err(tonic::Status::permission_denied(format!(
                "message from cluster {} refused: not this cluster",
                req.cluster_id
            )));
        }
        Ok(())
    }
}

fn decode_req<T: DeserializeOwned>(req: &RaftRequest) -> Result<T, tonic::Status> {
    codec::decode(&req.payload).map_err(|e| {
        tonic::Status::invalid_argument(format!(
            "undecodable raft message from node {}: {e}",
            req.from_node
        ))
    })
}

fn reply<T: Serialize>(value: &T) -> Result<tonic::Response<RaftReply>, tonic::Status> {
    let payload = codec::encode(value).map_err(|e| tonic::Status::internal(e.to_string()))?;
    Ok(tonic::Response::new(RaftReply { payload }))
}

#[tonic::async_trait]
impl RaftService for RaftServer {
    async fn append_entries(
        &self,
        request: tonic::Request<RaftRequest>,
    ) -> Result<tonic::Response<RaftReply>, tonic::Status> {
        let req = request.into_inner();
        self.check(&req)?;
        let rpc = decode_req(&req)?;
        reply(&self.raft.append_entries(rpc).await)
    }

    async fn vote(
        &self,
        request: tonic::Request<RaftRequest>,
    ) -> Result<tonic::Response<RaftReply>, tonic::Status> {
        let req = request.into_inner();
        self.check(&req)?;
        let rpc = decode_req(&req)?;
        reply(&self.raft.vote(rpc).await)
    }

    async fn install_snapshot(
        &self,
        request: tonic::Request<RaftRequest>,
    ) -> Result<tonic::Response<RaftReply>, tonic::Status> {
        let req = request.into_inner();
        self.check(&req)?;
        let rpc = decode_req(&req)?;
        reply(&self.raft.install_snapshot(rpc).await)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_member_that_stops_answering_is_news_once_and_again_when_it_answers() {
        let mut r = Reachability::default();
        assert_eq!(r.record(2, true, 0), None);
        assert_eq!(r.record(2, false, 1_000), Some(Change::Lost));
        for t in 1..=20 {
            assert_eq!(r.record(2, false, 1_000 + t * 500), None);
        }
        // Another member is its own story.
        assert_eq!(r.record(3, false, 5_000), Some(Change::Lost));
        assert_eq!(
            r.record(2, true, 12_000),
            Some(Change::Back {
                failed: 21,
                for_ms: 11_000
            })
        );
        assert_eq!(r.record(2, true, 12_500), None);
    }
}
