//! openraft's network over tonic: the client side ([`RaftNetworkFactory`]) and the
//! `strom.internal.v1.RaftService` server side.
//!
//! openraft's messages travel as bincode bytes inside an envelope naming the
//! cluster and both nodes. A receiver refuses a message for another cluster or
//! another node id (PERMISSION_DENIED), so a misconfigured node never takes part
//! in the wrong group. Nothing here is durable.

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
}

impl RaftNetworkFactory<TypeConfig> for NetworkFactory {
    type Network = PeerClient;

    async fn new_client(&mut self, target: NodeId, node: &BasicNode) -> Self::Network {
        PeerClient {
            identity: self.identity.clone(),
            target,
            node: node.clone(),
            client: None,
        }
    }
}

pub struct PeerClient {
    identity: PeerIdentity,
    target: NodeId,
    node: BasicNode,
    client: Option<RaftServiceClient<crate::internal_auth::InternalChannel>>,
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
