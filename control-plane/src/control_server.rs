//! The control port: one server carrying the admin API (behind the admin token),
//! the internal services (behind a node certificate with TLS, the cluster's proof
//! without: [`crate::internal_auth`]), gRPC server reflection, and the publishing
//! endpoint ([`crate::publishing`], HTTP/1.1 and HTTP/2).
//!
//! Connections: at most [`MAX_CONNECTIONS`] at once (one more is closed at once);
//! a TLS handshake must finish within [`HANDSHAKE`] (on its own task: a slow
//! client never holds up the accept loop); HTTP/1.1 request heads within 30 s
//! (hyper's default, as tonic sets its timer); HTTP/2 connections are pinged.

use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio_stream::Stream;
use tonic::transport::server::Connected;

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
/// Connections open at once on the control port.
pub const MAX_CONNECTIONS: usize = 4096;
/// A TLS handshake must finish within this.
const HANDSHAKE: Duration = Duration::from_secs(10);
/// A connection must send its first bytes (after TLS) within this, or it is
/// closed: an idle connection may not hold one of the port's slots.
const FIRST_BYTES: Duration = Duration::from_secs(10);

/// Why the control port stopped serving.
pub type ServeError = Box<dyn std::error::Error + Send + Sync>;

/// Serve the control port on a bound listener until `cancel` fires.
pub async fn serve(
    node: ManagementNode,
    api: AdminApi,
    listener: tokio::net::TcpListener,
    health: Arc<crate::health::Health>,
    cancel: CancellationToken,
) -> Result<(), ServeError> {
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
    let api_for_publishing = api.clone();
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
    let server = tonic::transport::Server::builder()
        // HTTP/1.1 for the publishing endpoint (curl, PowerShell, build tools).
        .accept_http1(true)
        .http2_keepalive_interval(Some(Duration::from_secs(10)))
        .http2_keepalive_timeout(Some(Duration::from_secs(20)));
    let router = server
        .layer(crate::decode_errors::DecodeErrorsLayer)
        .layer(crate::publishing::PublishingLayer::new(api_for_publishing).with_health(health))
        .add_service(admin)
        .add_service(raft)
        .add_service(cluster)
        .add_service(blobs)
        .add_service(workers)
        .add_service(reflection)
        .add_service(reflection_v1alpha);
    let slots = Arc::new(Semaphore::new(MAX_CONNECTIONS));
    match crate::tls::current() {
        None => {
            let incoming = tokio_stream::wrappers::TcpListenerStream::new(listener)
                .filter_map(move |s| admit(&slots, s));
            Ok(router
                .serve_with_incoming_shutdown(incoming, cancel.cancelled_owned())
                .await?)
        }
        Some(tls) => {
            // TLS here rather than in tonic: tonic offers only `h2` by ALPN, and
            // HTTP/1.1 clients of the publishing endpoint would fail the handshake.
            let config = tls
                .rustls_server()
                .map_err(|e| format!("control port TLS: {e}"))?;
            let incoming = tls_incoming(listener, config, slots, cancel.clone());
            Ok(router
                .serve_with_incoming_shutdown(incoming, cancel.cancelled_owned())
                .await?)
        }
    }
}

/// A connection that holds one of the port's connection slots while it is open,
/// and is closed if it sends nothing within [`FIRST_BYTES`].
pub struct Admitted<T> {
    io: T,
    _slot: OwnedSemaphorePermit,
    first_bytes: Option<Pin<Box<tokio::time::Sleep>>>,
}

impl<T> Admitted<T> {
    fn new(io: T, slot: OwnedSemaphorePermit) -> Self {
        Admitted {
            io,
            _slot: slot,
            first_bytes: Some(Box::pin(tokio::time::sleep(FIRST_BYTES))),
        }
    }
}

impl<T: Connected> Connected for Admitted<T> {
    type ConnectInfo = T::ConnectInfo;

    fn connect_info(&self) -> Self::ConnectInfo {
        self.io.connect_info()
    }
}

impl<T: AsyncRead + Unpin> AsyncRead for Admitted<T> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        let before = buf.filled().len();
        let read = Pin::new(&mut self.io).poll_read(cx, buf);
        if let Some(deadline) = self.first_bytes.as_mut() {
            match &read {
                Poll::Ready(Ok(())) if buf.filled().len() > before => self.first_bytes = None,
                Poll::Pending if deadline.as_mut().poll(cx).is_ready() => {
                    return Poll::Ready(Err(std::io::Error::new(
                        std::io::ErrorKind::TimedOut,
                        "the connection sent nothing in time",
                    )));
                }
                _ => {}
            }
        }
        read
    }
}

impl<T: AsyncWrite + Unpin> AsyncWrite for Admitted<T> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.io).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.io).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.io).poll_shutdown(cx)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.io).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.io.is_write_vectored()
    }
}

/// A plain connection, if a slot is free (TCP_NODELAY on: tonic does not set it
/// on a caller's listener, and small replies — Raft acks — would wait for Nagle).
fn admit(
    slots: &Arc<Semaphore>,
    accepted: std::io::Result<TcpStream>,
) -> Option<std::io::Result<Admitted<TcpStream>>> {
    let stream = match accepted {
        Ok(s) => s,
        Err(e) => return Some(Err(e)),
    };
    let _ = stream.set_nodelay(true);
    match slots.clone().try_acquire_owned() {
        Ok(slot) => Some(Ok(Admitted::new(stream, slot))),
        Err(_) => {
            tracing::warn!(
                "control port: {MAX_CONNECTIONS} connections are open; closing a new one"
            );
            None
        }
    }
}

type TlsConn = Admitted<tokio_rustls::server::TlsStream<TcpStream>>;

/// TLS connections: each handshake on its own task, within [`HANDSHAKE`].
fn tls_incoming(
    listener: tokio::net::TcpListener,
    config: Arc<rustls::ServerConfig>,
    slots: Arc<Semaphore>,
    cancel: CancellationToken,
) -> impl Stream<Item = std::io::Result<TlsConn>> {
    let (tx, rx) = tokio::sync::mpsc::channel::<std::io::Result<TlsConn>>(64);
    let acceptor = tokio_rustls::TlsAcceptor::from(config);
    tokio::spawn(async move {
        loop {
            let accepted = tokio::select! {
                _ = cancel.cancelled() => return,
                a = listener.accept() => a,
            };
            let (stream, peer) = match accepted {
                Ok(a) => a,
                Err(e) => {
                    tracing::warn!("control port: accept failed: {e}");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            };
            let Ok(slot) = slots.clone().try_acquire_owned() else {
                tracing::warn!(
                    "control port: {MAX_CONNECTIONS} connections are open; closing a new one"
                );
                continue;
            };
            let _ = stream.set_nodelay(true);
            let acceptor = acceptor.clone();
            let tx = tx.clone();
            tokio::spawn(async move {
                match tokio::time::timeout(HANDSHAKE, acceptor.accept(stream)).await {
                    Ok(Ok(tls)) => {
                        let _ = tx.send(Ok(Admitted::new(tls, slot))).await;
                    }
                    Ok(Err(e)) => tracing::debug!(%peer, "control port: TLS handshake failed: {e}"),
                    Err(_) => tracing::debug!(%peer, "control port: TLS handshake timed out"),
                }
            });
        }
    });
    tokio_stream::wrappers::ReceiverStream::new(rx)
}

/// Bind the control address (fails clearly if it is taken).
pub async fn bind(addr: SocketAddr) -> std::io::Result<tokio::net::TcpListener> {
    tokio::net::TcpListener::bind(addr).await
}
