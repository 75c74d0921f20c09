//! The function port's listener: accepts connections (HTTP/1.1 and HTTP/2, TLS
//! when the node has an identity), serves each on its own task, and on cancel
//! stops accepting and lets requests in flight finish (up to [`DRAIN`]).
//!
//! Every connection is bounded ([`HttpLimits`]): the TLS handshake and a request's
//! headers must arrive within `header_read` (HTTP/1.1 closes the connection), a
//! request body may not pause longer than `body_read` (408), a connection with no
//! request in flight for `idle` is closed gracefully, and at most
//! `max_connections` are open at once (one more gets 503 and is closed).

use std::convert::Infallible;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use super::Gateway;

/// How long requests in flight may take to finish once the port closes.
const DRAIN: Duration = Duration::from_secs(30);

/// The function port's timeouts and connection limit.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HttpLimits {
    /// The TLS handshake, and a request's head (HTTP/1.1), must arrive within this.
    pub header_read: Duration,
    /// Longest pause while a request body arrives.
    pub body_read: Duration,
    /// A connection with no request in flight for this long is closed.
    pub idle: Duration,
    /// Connections open at once.
    pub max_connections: usize,
}

impl Default for HttpLimits {
    fn default() -> Self {
        HttpLimits {
            header_read: Duration::from_secs(30),
            body_read: Duration::from_secs(30),
            idle: Duration::from_secs(120),
            max_connections: 10_000,
        }
    }
}

/// Requests in flight on one connection and when the last one ended.
struct Activity {
    opened: Instant,
    in_flight: AtomicUsize,
    /// Milliseconds after `opened` when the connection last became idle.
    idle_since_ms: AtomicU64,
}

impl Activity {
    fn idle_for(&self, now: Instant) -> Option<Duration> {
        if self.in_flight.load(Ordering::Acquire) > 0 {
            return None;
        }
        let since = Duration::from_millis(self.idle_since_ms.load(Ordering::Acquire));
        Some(now.duration_since(self.opened).saturating_sub(since))
    }
}

/// Ends a request's activity when dropped (also when a client goes away).
struct InFlight(Arc<Activity>);

impl Drop for InFlight {
    fn drop(&mut self) {
        let ms = self.0.opened.elapsed().as_millis() as u64;
        self.0.idle_since_ms.store(ms, Ordering::Release);
        self.0.in_flight.fetch_sub(1, Ordering::AcqRel);
    }
}

const BUSY: &[u8] = b"HTTP/1.1 503 Service Unavailable\r\ncontent-type: application/json\r\nconnection: close\r\ncontent-length: 85\r\n\r\n{\"error\":{\"code\":\"Unavailable\",\"message\":\"too many connections to this node; retry\"}}";

pub(super) async fn accept(
    gw: Gateway,
    listener: tokio::net::TcpListener,
    tls: Option<tokio_rustls::TlsAcceptor>,
    cancel: CancellationToken,
) {
    let limits = gw.inner.config.http;
    let mut builder = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new());
    builder
        .http1()
        .timer(TokioTimer::new())
        .header_read_timeout(limits.header_read);
    builder.http2().timer(TokioTimer::new());
    let slots = Arc::new(tokio::sync::Semaphore::new(limits.max_connections));
    let tasks = TaskTracker::new();
    loop {
        let (mut stream, remote) = tokio::select! {
            _ = cancel.cancelled() => break,
            accepted = listener.accept() => match accepted {
                Ok(a) => a,
                Err(e) => {
                    // E.g. out of file descriptors: back off instead of spinning.
                    tracing::warn!("accept: {e}");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            },
        };
        let _ = stream.set_nodelay(true);
        let Ok(slot) = slots.clone().try_acquire_owned() else {
            tracing::debug!(%remote, "connection refused: {} open", limits.max_connections);
            if tls.is_none() {
                tasks.spawn(async move {
                    let _ = tokio::time::timeout(Duration::from_secs(1), async {
                        stream.write_all(BUSY).await?;
                        stream.shutdown().await
                    })
                    .await;
                });
            }
            continue;
        };
        let gw = gw.clone();
        let builder = builder.clone();
        let tls = tls.clone();
        let cancel = cancel.clone();
        tasks.spawn(async move {
            let _slot = slot;
            match tls {
                None => serve(gw, builder, stream, false, limits, cancel).await,
                Some(acceptor) => {
                    let stream =
                        match tokio::time::timeout(limits.header_read, acceptor.accept(stream))
                            .await
                        {
                            Ok(Ok(s)) => s,
                            Ok(Err(e)) => {
                                tracing::debug!(%remote, "TLS handshake failed: {e}");
                                return;
                            }
                            Err(_) => {
                                tracing::debug!(%remote, "TLS handshake timed out");
                                return;
                            }
                        };
                    // The TLS layer verified a presented certificate against the CA.
                    let node_cert = stream.get_ref().1.peer_certificates().is_some();
                    serve(gw, builder, stream, node_cert, limits, cancel).await
                }
            }
        });
    }
    tasks.close();
    let _ = tokio::time::timeout(DRAIN, tasks.wait()).await;
}

/// Serve one connection until it ends: closed gracefully when the port closes or
/// when it has been idle for `limits.idle`.
async fn serve<S>(
    gw: Gateway,
    builder: hyper_util::server::conn::auto::Builder<TokioExecutor>,
    stream: S,
    node_cert: bool,
    limits: HttpLimits,
    cancel: CancellationToken,
) where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let activity = Arc::new(Activity {
        opened: Instant::now(),
        in_flight: AtomicUsize::new(0),
        idle_since_ms: AtomicU64::new(0),
    });
    let service = {
        let activity = activity.clone();
        hyper::service::service_fn(move |req| {
            let gw = gw.clone();
            activity.in_flight.fetch_add(1, Ordering::AcqRel);
            let guard = InFlight(activity.clone());
            async move {
                let response = gw.handle(req, node_cert).await;
                drop(guard);
                Ok::<_, Infallible>(response)
            }
        })
    };
    let conn = builder.serve_connection_with_upgrades(TokioIo::new(stream), service);
    let mut conn = std::pin::pin!(conn);
    let mut closing = false;
    let mut check = Instant::now() + limits.idle;
    loop {
        tokio::select! {
            _ = conn.as_mut() => return,
            _ = cancel.cancelled(), if !closing => {
                conn.as_mut().graceful_shutdown();
                closing = true;
            }
            _ = tokio::time::sleep_until(check), if !closing => {
                let now = Instant::now();
                match activity.idle_for(now) {
                    Some(idle) if idle >= limits.idle => {
                        conn.as_mut().graceful_shutdown();
                        closing = true;
                    }
                    Some(idle) => check = now + (limits.idle - idle),
                    None => check = now + limits.idle,
                }
            }
        }
    }
}
