//! Moving app packages between management nodes.
//!
//! A deploy stores the package locally, then pushes it to the other voters; the
//! version is committed only once a majority of voters (this node included) holds
//! it, so a committed version always survives the loss of a minority. A node that
//! lacks a blob (it joined later, or was down) fetches it from a peer and verifies the
//! hash before storing it. Messages carry the cluster id; another cluster's are refused.

use std::time::Duration;

use futures::StreamExt;
use strom_proto::ids::VersionId;
use strom_proto::internal_v1::blob_service_client::BlobServiceClient;
use strom_proto::internal_v1::blob_service_server::BlobService;
use strom_proto::internal_v1::{BlobChunk, GetBlobRequest, PutBlobReply};
use tonic::{Request, Response, Status, Streaming};

use crate::blob_store::BlobError;
use crate::error::ForwardError;
use crate::management::ManagementNode;
use crate::membership::cluster_of;

const CHUNK: usize = 1024 * 1024;
const PUSH_TIMEOUT: Duration = Duration::from_secs(60);

/// The other members (id, control address) of the current membership.
fn peers(node: &ManagementNode, voters_only: bool) -> (usize, Vec<(u64, String)>) {
    let metrics = node.raft.metrics().borrow().clone();
    let membership = metrics.membership_config.membership();
    let voters: Vec<u64> = membership.voter_ids().collect();
    let peers = membership
        .nodes()
        .filter(|(id, _)| **id != node.config.node_id)
        .filter(|(id, _)| !voters_only || voters.contains(id))
        .map(|(id, n)| (*id, n.addr.clone()))
        .collect();
    (voters.len(), peers)
}

/// A deploy's package did not reach a majority of the management voters.
#[derive(Debug, thiserror::Error)]
#[error("the package reached {have} of {voters} management nodes, a majority needs {needed}: {}", failures.iter().map(|f| f.to_string()).collect::<Vec<_>>().join("; "))]
pub struct ReplicationError {
    pub have: usize,
    pub voters: usize,
    pub needed: usize,
    pub failures: Vec<ForwardError>,
}

async fn push_one(
    channel: Result<crate::internal_auth::InternalChannel, ForwardError>,
    addr: String,
    cluster: String,
    id: VersionId,
    bytes: std::sync::Arc<Vec<u8>>,
) -> Result<(), ForwardError> {
    let mut client = BlobServiceClient::new(channel?).max_encoding_message_size(CHUNK * 2);
    let chunks: Vec<BlobChunk> = bytes
        .chunks(CHUNK)
        .enumerate()
        .map(|(i, data)| BlobChunk {
            cluster_id: if i == 0 {
                cluster.clone()
            } else {
                String::new()
            },
            sha256: if i == 0 {
                id.to_string()
            } else {
                String::new()
            },
            data: data.to_vec(),
        })
        .collect();
    let mut request = tonic::Request::new(futures::stream::iter(chunks));
    request.set_timeout(PUSH_TIMEOUT);
    // tonic's deadline starts once a connection exists: this one bounds the connect too.
    tokio::time::timeout(PUSH_TIMEOUT, client.put_blob(request))
        .await
        .unwrap_or_else(|_| Err(tonic::Status::deadline_exceeded("no answer in time")))
        .map(|_| ())
        .map_err(|status| match status.code() {
            tonic::Code::Unavailable | tonic::Code::DeadlineExceeded => {
                ForwardError::Unreachable { addr, status }
            }
            _ => ForwardError::Refused { addr, status },
        })
}

impl ManagementNode {
    /// Push a stored package to the other voters; Ok once a majority of voters
    /// (this node included) holds it.
    pub async fn replicate_blob(
        &self,
        id: &VersionId,
        bytes: std::sync::Arc<Vec<u8>>,
    ) -> Result<(), ReplicationError> {
        let replicated = self.replicate_blob_once(id, bytes).await;
        let outcome = if replicated.is_ok() { "ok" } else { "failed" };
        metrics::counter!("strom_blob_replications_total", "outcome" => outcome).increment(1);
        replicated
    }

    async fn replicate_blob_once(
        &self,
        id: &VersionId,
        bytes: std::sync::Arc<Vec<u8>>,
    ) -> Result<(), ReplicationError> {
        let (voters, peers) = peers(self, true);
        let needed = voters / 2 + 1;
        let mut have = 1;
        if have >= needed {
            return Ok(());
        }
        let cluster = cluster_of(self);
        let mut pushes: futures::stream::FuturesUnordered<_> = peers
            .into_iter()
            .map(|(_, addr)| {
                push_one(
                    self.peers.get(&addr),
                    addr,
                    cluster.clone(),
                    id.clone(),
                    bytes.clone(),
                )
            })
            .collect();
        let mut failures = Vec::new();
        while let Some(result) = pushes.next().await {
            match result {
                Ok(()) => {
                    have += 1;
                    if have >= needed {
                        // Finish the other pushes in the background; a member that
                        // still misses the package fetches it when it needs it.
                        tokio::spawn(async move { while pushes.next().await.is_some() {} });
                        return Ok(());
                    }
                }
                Err(e) => failures.push(e),
            }
        }
        Err(ReplicationError {
            have,
            voters,
            needed,
            failures,
        })
    }

    /// A package by id: from the local blob store, else fetched from a peer (hash
    /// verified) and stored.
    pub async fn blob(&self, id: &VersionId) -> Result<Vec<u8>, BlobError> {
        match self.blobs.get(id).await {
            Err(BlobError::NotFound(_)) => {}
            other => return other,
        }
        let cluster = cluster_of(self);
        let (_, peers) = peers(self, false);
        for (peer, addr) in peers {
            let fetched = fetch_blob_from(
                &addr,
                &self.secret,
                &cluster,
                id,
                self.config.package_limits.max_compressed_bytes,
            );
            match fetched.await {
                Ok(bytes) => {
                    self.blobs.put(std::sync::Arc::new(bytes.clone())).await?;
                    tracing::info!(
                        version = id.short(),
                        from = peer,
                        "fetched a package from a peer"
                    );
                    return Ok(bytes);
                }
                Err(e) => {
                    tracing::debug!(version = id.short(), from = peer, "fetching failed: {e}")
                }
            }
        }
        Err(BlobError::NotFound(id.clone()))
    }
}

/// How long a package fetch may wait for the answer or for its next chunk.
const FETCH_IDLE: std::time::Duration = std::time::Duration::from_secs(15);

/// Fetch package `id` from the management node at `addr`, refusing more than
/// `limit` bytes and verifying the hash.
pub async fn fetch_blob_from(
    addr: &str,
    secret: &crate::internal_auth::ClusterSecret,
    cluster: &str,
    id: &VersionId,
    limit: u64,
) -> Result<Vec<u8>, String> {
    let mut client = BlobServiceClient::new(
        crate::tls::channel(addr, std::time::Duration::from_secs(2), secret).await?,
    )
    .max_decoding_message_size(CHUNK * 2);
    // A frozen or stuck peer must not hold the fetch (and the worker's
    // assignments behind it): the answer and each chunk have a deadline.
    let mut request = tonic::Request::new(GetBlobRequest {
        cluster_id: cluster.to_string(),
        sha256: id.to_string(),
    });
    request.set_timeout(FETCH_IDLE);
    let mut stream = tokio::time::timeout(FETCH_IDLE, client.get_blob(request))
        .await
        .map_err(|_| format!("{addr}: no answer within {FETCH_IDLE:?}"))?
        .map_err(|e| e.message().to_string())?
        .into_inner();
    let mut bytes = Vec::new();
    while let Some(chunk) = tokio::time::timeout(FETCH_IDLE, stream.message())
        .await
        .map_err(|_| format!("{addr}: the package stopped coming for {FETCH_IDLE:?}"))?
        .map_err(|e| e.message().to_string())?
    {
        if bytes.len() as u64 + chunk.data.len() as u64 > limit {
            return Err("larger than the package limit".to_string());
        }
        bytes.extend_from_slice(&chunk.data);
    }
    // Hashing up to the package limit is CPU work: off the async runtime.
    let expected = id.clone();
    let (bytes, matches) = tokio::task::spawn_blocking(move || {
        let matches = VersionId::of_bytes(&bytes) == expected;
        (bytes, matches)
    })
    .await
    .map_err(|e| format!("hashing the package: {e}"))?;
    if !matches {
        return Err(format!("{addr} sent a package with the wrong hash"));
    }
    Ok(bytes)
}

pub struct BlobServer {
    pub node: ManagementNode,
}

impl BlobServer {
    fn check_cluster(&self, theirs: &str) -> Result<(), Status> {
        crate::membership::check_cluster(&self.node, theirs)
    }
}

#[tonic::async_trait]
impl BlobService for BlobServer {
    async fn put_blob(
        &self,
        request: Request<Streaming<BlobChunk>>,
    ) -> Result<Response<PutBlobReply>, Status> {
        let mut stream = request.into_inner();
        let limit = self.node.config.package_limits.max_compressed_bytes;
        let mut declared: Option<VersionId> = None;
        let mut bytes = Vec::new();
        while let Some(chunk) = stream.message().await? {
            if declared.is_none() {
                self.check_cluster(&chunk.cluster_id)?;
                declared = Some(
                    VersionId::parse(&chunk.sha256)
                        .map_err(|e| Status::invalid_argument(e.to_string()))?,
                );
            }
            if bytes.len() as u64 + chunk.data.len() as u64 > limit {
                return Err(Status::invalid_argument(format!(
                    "blob larger than {limit} bytes"
                )));
            }
            bytes.extend_from_slice(&chunk.data);
        }
        let declared = declared.ok_or_else(|| Status::invalid_argument("empty blob upload"))?;
        let actual = VersionId::of_bytes(&bytes);
        if actual != declared {
            return Err(Status::invalid_argument(format!(
                "blob {declared}: content hashes to {actual}"
            )));
        }
        self.node
            .blobs
            .put(std::sync::Arc::new(bytes))
            .await
            .map_err(|e| Status::internal(e.to_string()))?;
        Ok(Response::new(PutBlobReply {}))
    }

    type GetBlobStream =
        std::pin::Pin<Box<dyn futures::Stream<Item = Result<BlobChunk, Status>> + Send + 'static>>;

    async fn get_blob(
        &self,
        request: Request<GetBlobRequest>,
    ) -> Result<Response<Self::GetBlobStream>, Status> {
        let req = request.into_inner();
        self.check_cluster(&req.cluster_id)?;
        let id =
            VersionId::parse(&req.sha256).map_err(|e| Status::invalid_argument(e.to_string()))?;
        let bytes = match self.node.blobs.get(&id).await {
            Ok(b) => b,
            Err(BlobError::NotFound(_)) => {
                return Err(Status::not_found(format!("no blob {id} here")))
            }
            Err(e) => return Err(Status::internal(e.to_string())),
        };
        let chunks: Vec<Result<BlobChunk, Status>> = bytes
            .chunks(CHUNK)
            .map(|data| {
                Ok(BlobChunk {
                    cluster_id: String::new(),
                    sha256: String::new(),
                    data: data.to_vec(),
                })
            })
            .collect();
        Ok(Response::new(Box::pin(futures::stream::iter(chunks))))
    }
}
