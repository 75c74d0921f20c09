//! Forwarding to the leader: a follower sends a write (`ClusterService/Propose`,
//! answered after commit) or asks for a read index (`ClusterService/ReadIndex`)
//! over the cached channel to the leader, and turns the answer back into the
//! typed [`ProposeError`] the leader had (not the leader, no quorum, fatal), so a
//! cause keeps its meaning through the hop.
//!
//! A write is forwarded once: if leadership moved meanwhile the caller gets
//! `NotLeader` with the new leader's address. Nothing here is durable.

use strom_proto::codec;
use strom_proto::command::{Command, CommandResult};
use strom_proto::internal_v1::cluster_service_client::ClusterServiceClient;
use strom_proto::internal_v1::{ProposeRequest, ReadIndexRequest};
use tonic::Status;

use crate::error::{ForwardError, ProposeError};
use crate::management::{ManagementNode, QUORUM_WAIT};
use crate::membership::cluster_of;

/// Largest forwarded command (a deploy's manifest can be large).
const MAX_FORWARDED: usize = 64 * 1024 * 1024;

impl ManagementNode {
    /// Send a write to the leader at `addr`; answered after commit.
    pub(crate) async fn forward_propose(
        &self,
        addr: &str,
        command: &Command,
    ) -> Result<(u64, CommandResult), ProposeError> {
        let bytes = codec::encode(command).map_err(ForwardError::Encode)?;
        let mut client = ClusterServiceClient::new(self.peers.get(addr)?)
            .max_encoding_message_size(MAX_FORWARDED);
        let mut request = tonic::Request::new(ProposeRequest {
            cluster_id: cluster_of(self),
            command: bytes,
        });
        request.set_timeout(QUORUM_WAIT);
        let reply = client
            .propose(request)
            .await
            .map_err(|s| ProposeError::from_peer(addr, s))?
            .into_inner();
        let result = codec::decode(&reply.result).map_err(|source| ForwardError::Decode {
            addr: addr.to_string(),
            source,
        })?;
        Ok((reply.log_index, result))
    }

    /// Ask the leader at `addr` for a read index (it confirms its leadership).
    pub(crate) async fn forward_read_index(&self, addr: &str) -> Result<u64, ProposeError> {
        let mut client = ClusterServiceClient::new(self.peers.get(addr)?);
        let mut request = tonic::Request::new(ReadIndexRequest {
            cluster_id: cluster_of(self),
        });
        request.set_timeout(QUORUM_WAIT);
        Ok(client
            .read_index(request)
            .await
            .map_err(|s| ProposeError::from_peer(addr, s))?
            .into_inner()
            .index)
    }

    /// "Not the leader", naming the leader this node knows (for leader-only calls).
    pub fn not_leader(&self) -> ProposeError {
        let metrics = self.raft.metrics().borrow().clone();
        let leader_addr = metrics.current_leader.and_then(|id| {
            metrics
                .membership_config
                .membership()
                .get_node(&id)
                .map(|n| n.addr.clone())
        });
        ProposeError::NotLeader {
            leader_id: metrics.current_leader,
            leader_addr,
        }
    }

    /// UNAVAILABLE naming the leader's address (also in `x-strom-leader` metadata).
    pub fn not_leader_status(&self) -> Status {
        self.not_leader().to_status()
    }
}
