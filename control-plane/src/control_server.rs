//! The control port: one tonic server carrying the admin API (behind the admin
//! token), the internal services (behind a node certificate with TLS, the
//! cluster's proof without: [`crate::internal_auth`]), and gRPC server reflection.

use std::net::SocketAddr;

use strom_proto::admin_v1::admin_service_server::AdminServiceServer;
use strom_proto::internal_v1::blob_service_server::BlobServiceServer;
use strom_proto::internal_v1::cluster_service_server::ClusterServiceServer;
use strom_proto::internal_v1::raft_service_server::RaftServiceServer;
use strom_proto::internal_v1::worker_service_server::WorkerServiceServer;
use tokio_stream::StreamExt;
use tokio_util::sync::CancellationToken;
use tonic::service::interceptor::InterceptedService;
use tonic::service::Interceptor;
use tonic::{Request, Status};

use crate::admin_service::AdminApi;
use crate::blob_replication::BlobServer;
use crate::impl_raft_network::{PeerIdentity, RaftServer};
use crate::management::ManagementNode;
use crate::membership::ClusterServer;

/// Checks `authorization: Bearer <admin token>` against the replicated token hash.
#[derive(Clone)]
pub struct AdminAuth {
    node: ManagementNode,
}

impl Interceptor for AdminAuth {
    fn call(&mut self, request: Request<()>) -> Result<Request<()>, Status> {
        let view = self.node.read_local();
        let Some(cluster) = view.state.cluster.as_ref() else {
            return Err(Status::unavailable("the cluster is not initialized yet"));
        };
        let header = request.metadata().get("authorization").ok_or_else(|| {
            Status::unauthenticated("missing admin token (authorization: Bearer …)")
        })?;
        let token = header
            .to_str()
            .ok()
            .and_then(|v| {
                v.strip_prefix("Bearer ")
                    .or_else(|| v.strip_prefix("bearer "))
            })
            .ok_or_else(|| {
                Status::unauthenticated("authorization must be `Bearer <admin token>`")
            })?;
        if !cluster.admin_token_hash.matches(token.trim()) {
            return Err(Status::unauthenticated("invalid admin token"));
        }
        Ok(request)
    }
}

/// Maximum gRPC message size: deploy chunks are 1 MiB; Raft payloads can be larger.
const MAX_MESSAGE: usize = 64 * 1024 * 1024;

/// Serve the control port on a bound listener until `cancel` fires.
pub async fn serve(
    node: ManagementNode,
    api: AdminApi,
    listener: tokio::net::TcpListener,
    cancel: CancellationToken,
) -> Result<(), tonic::transport::Error> {
    let reflection = tonic_reflection::server::Builder::configure()
        .register_encoded_file_descriptor_set(strom_proto::FILE_DESCRIPTOR_SET)
        .build_v1()
        .expect("the descriptor set is generated at build time");
    // Python's grpcio-reflection and older grpcurl still ask v1alpha.
    let reflection_v1alpha = tonic_reflection::server::Builder::configure()
        .register_encoded_file_descriptor_set(strom_proto::FILE_DESCRIPTOR_SET)
        .build_v1alpha()
        .expect("the descriptor set is generated at build time");
    // Long-lived streams end with the server, or its graceful stop would wait on them.
    let api = api.with_shutdown(cancel.clone());
    let admin = InterceptedService::new(
        AdminServiceServer::new(api).max_decoding_message_size(MAX_MESSAGE),
        AdminAuth { node: node.clone() },
    );
    // Internal services: with TLS, only nodes with a certificate from the cluster
    // CA; without it, only callers that show the cluster's proof.
    let internal = crate::internal_auth::RequireNode {
        secret: node.secret.clone(),
        state: node.state.clone(),
    };
    let raft = RaftServiceServer::new(RaftServer {
        raft: node.raft.clone(),
        identity: PeerIdentity {
            node_id: node.config.node_id,
            state: node.state.clone(),
            secret: node.secret.clone(),
        },
    })
    .max_decoding_message_size(MAX_MESSAGE)
    .max_encoding_message_size(MAX_MESSAGE);
    let raft = InterceptedService::new(raft, internal.clone());
    let cluster = InterceptedService::new(
        ClusterServiceServer::new(ClusterServer { node: node.clone() }),
        internal.clone(),
    );
    let blobs = InterceptedService::new(
        BlobServiceServer::new(BlobServer { node: node.clone() })
            .max_decoding_message_size(MAX_MESSAGE)
            .max_encoding_message_size(MAX_MESSAGE),
        internal.clone(),
    );
    let workers = WorkerServiceServer::new(crate::workers::WorkerServer::new(
        node.clone(),
        cancel.clone(),
    ))
    .max_decoding_message_size(MAX_MESSAGE)
    .max_encoding_message_size(MAX_MESSAGE);
    let workers = InterceptedService::new(workers, internal);
    // tonic does not apply TCP_NODELAY to a caller's listener: without it small
    // replies (Raft acks, admin answers) wait for Nagle's algorithm.
    let incoming = tokio_stream::wrappers::TcpListenerStream::new(listener).map(|s| {
        if let Ok(stream) = &s {
            let _ = stream.set_nodelay(true);
        }
        s
    });
    let mut server = tonic::transport::Server::builder();
    if let Some(tls) = crate::tls::current() {
        server = server.tls_config(tls.tonic_server())?;
    }
    server
        .layer(crate::decode_errors::DecodeErrorsLayer)
        .add_service(admin)
        .add_service(raft)
        .add_service(cluster)
        .add_service(blobs)
        .add_service(workers)
        .add_service(reflection)
        .add_service(reflection_v1alpha)
        .serve_with_incoming_shutdown(incoming, cancel.cancelled_owned())
        .await
}

/// Bind the control address (fails clearly if it is taken).
pub async fn bind(addr: SocketAddr) -> std::io::Result<tokio::net::TcpListener> {
    tokio::net::TcpListener::bind(addr).await
}
