//! The gateway's keep-alive HTTP/1.1 connections to one instance's handler.
//!
//! They belong to the instance's [`Endpoint`](crate::routing::Endpoint), not to a
//! process-wide pool keyed by address: an instance that ends takes its connections
//! with it (a later instance on the same port never inherits them), a stopping
//! instance's idle connections are closed so that its handler's graceful shutdown is
//! not held open by them, and a request never goes to a connection once the worker
//! has noticed the instance's exit.
//!
//! A connection idle for longer than [`IDLE_MAX`] is not reused: handlers close idle
//! keep-alive connections on their own timers (Node.js after 5 s), and a request
//! written into a connection the handler is closing at that moment fails.

use std::net::SocketAddr;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::client::conn::http1::SendRequest;
use hyper::{Request, Response};
use hyper_util::rt::TokioIo;

/// Idle connections kept per instance (more are closed when returned).
const MAX_IDLE: usize = 256;
/// A connection idle this long is closed rather than reused.
pub const IDLE_MAX: Duration = Duration::from_secs(4);
/// Connecting to a local handler takes microseconds; this only bounds a wedged one.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(2);
/// Requests a closing connection handed back unsent, re-sent on another.
const MAX_UNSENT_RETRIES: usize = 3;

/// Why a request got no response.
#[derive(Debug, thiserror::Error)]
pub enum SendError {
    /// No connection could be made: the request never reached a handler.
    #[error("could not connect to the handler at {addr}: {source}")]
    Connect {
        addr: SocketAddr,
        source: std::io::Error,
    },
    /// The worker had noticed the instance's exit before the request was sent.
    #[error("the instance had ended")]
    Ended,
    /// The request may have reached the handler (it died or closed the connection
    /// under it, or answered with something that is not HTTP).
    #[error(transparent)]
    Http(#[from] hyper::Error),
}

impl SendError {
    /// Whether the request certainly never reached a handler.
    pub fn undelivered(&self) -> bool {
        matches!(self, SendError::Connect { .. } | SendError::Ended)
    }
}

struct Idle {
    sender: SendRequest<Full<Bytes>>,
    since: Instant,
}

/// One instance's connections: reused last-in first-out (the warmest first).
pub struct HandlerConnections {
    addr: SocketAddr,
    /// Returned connections, some possibly still reading their last response.
    idle: Mutex<Option<Vec<Idle>>>,
}

impl HandlerConnections {
    pub fn new(addr: SocketAddr) -> Self {
        HandlerConnections {
            addr,
            idle: Mutex::new(Some(Vec::new())),
        }
    }

    /// Send `request` (origin-form URI, `Host` set) on a kept-alive connection, or
    /// a new one. A request a closing connection hands back unsent is re-sent.
    pub async fn send(
        &self,
        mut request: Request<Full<Bytes>>,
    ) -> Result<Response<Incoming>, SendError> {
        let mut retries = 0;
        loop {
            let mut sender = match self.checkout()? {
                Some(s) => s,
                None => self.connect().await?,
            };
            match sender.try_send_request(request).await {
                Ok(response) => {
                    self.checkin(sender);
                    return Ok(response);
                }
                Err(mut e) => match e.take_message() {
                    Some(unsent) if retries < MAX_UNSENT_RETRIES => {
                        retries += 1;
                        request = unsent;
                    }
                    _ => return Err(SendError::Http(e.into_error())),
                },
            }
        }
    }

    /// Close every idle connection and keep no more (the instance is stopping or
    /// has ended); requests in flight finish on theirs.
    pub fn close(&self) {
        self.idle.lock().expect("connections lock").take();
    }

    /// Connections kept for reuse (open or not yet noticed closed).
    pub fn idle_count(&self) -> usize {
        self.idle
            .lock()
            .expect("connections lock")
            .as_ref()
            .map_or(0, Vec::len)
    }

    /// A ready idle connection; closed and expired ones are dropped on the way, busy
    /// ones (still reading a response) stay. `Err(Ended)` once closed.
    fn checkout(&self) -> Result<Option<SendRequest<Full<Bytes>>>, SendError> {
        let mut guard = self.idle.lock().expect("connections lock");
        let idle = guard.as_mut().ok_or(SendError::Ended)?;
        let now = Instant::now();
        let mut i = idle.len();
        while i > 0 {
            i -= 1;
            let entry = &idle[i];
            if entry.sender.is_closed() || now.duration_since(entry.since) > IDLE_MAX {
                idle.swap_remove(i);
            } else if entry.sender.is_ready() {
                return Ok(Some(idle.swap_remove(i).sender));
            }
        }
        Ok(None)
    }

    fn checkin(&self, sender: SendRequest<Full<Bytes>>) {
        let mut guard = self.idle.lock().expect("connections lock");
        if let Some(idle) = guard.as_mut() {
            if idle.len() < MAX_IDLE {
                idle.push(Idle {
                    sender,
                    since: Instant::now(),
                });
            }
        }
    }

    async fn connect(&self) -> Result<SendRequest<Full<Bytes>>, SendError> {
        let addr = self.addr;
        let failed = |source| SendError::Connect { addr, source };
        let stream = tokio::time::timeout(CONNECT_TIMEOUT, tokio::net::TcpStream::connect(addr))
            .await
            .map_err(|_| {
                failed(std::io::Error::new(
                    std::io::ErrorKind::TimedOut,
                    format!("no connection within {CONNECT_TIMEOUT:?}"),
                ))
            })?
            .map_err(failed)?;
        let _ = stream.set_nodelay(true);
        let (sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
            .await
            .map_err(|e| failed(std::io::Error::other(e)))?;
        // Runs until the handler closes the connection or every sender is dropped
        // (the connection is closed then).
        tokio::spawn(async move {
            if let Err(e) = connection.await {
                tracing::debug!(%addr, "handler connection ended: {e}");
            }
        });
        Ok(sender)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use hyper::service::service_fn;
    use hyper_util::rt::TokioIo;
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::sync::Arc;

    /// A keep-alive HTTP/1.1 server counting the connections it accepted and the
    /// ones still open.
    async fn server() -> (SocketAddr, Arc<AtomicUsize>, Arc<AtomicUsize>) {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let accepted = Arc::new(AtomicUsize::new(0));
        let open = Arc::new(AtomicUsize::new(0));
        let (a, o) = (accepted.clone(), open.clone());
        tokio::spawn(async move {
            loop {
                let (stream, _) = listener.accept().await.unwrap();
                a.fetch_add(1, Ordering::SeqCst);
                o.fetch_add(1, Ordering::SeqCst);
                let o = o.clone();
                tokio::spawn(async move {
                    let svc = service_fn(|_req| async {
                        Ok::<_, std::convert::Infallible>(Response::new(Full::new(Bytes::from(
                            "ok",
                        ))))
                    });
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(TokioIo::new(stream), svc)
                        .await;
                    o.fetch_sub(1, Ordering::SeqCst);
                });
            }
        });
        (addr, accepted, open)
    }

    fn get(addr: SocketAddr) -> Request<Full<Bytes>> {
        Request::builder()
            .uri("/")
            .header(hyper::header::HOST, addr.to_string())
            .body(Full::new(Bytes::new()))
            .unwrap()
    }

    async fn call(conns: &HandlerConnections, addr: SocketAddr) -> Result<(), SendError> {
        use http_body_util::BodyExt;
        let response = conns.send(get(addr)).await?;
        assert_eq!(response.status(), 200);
        let body = response.into_body().collect().await.unwrap().to_bytes();
        assert_eq!(&body[..], b"ok");
        Ok(())
    }

    async fn eventually(what: &str, f: impl Fn() -> bool) {
        for _ in 0..200 {
            if f() {
                return;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        panic!("{what}: not within 2 s");
    }

    #[tokio::test]
    async fn sequential_requests_reuse_one_connection() {
        let (addr, accepted, _) = server().await;
        let conns = HandlerConnections::new(addr);
        for _ in 0..20 {
            call(&conns, addr).await.unwrap();
            // The connection is ready again once its response has been read.
            eventually("connection ready", || conns.checkout_ready_peek()).await;
        }
        assert_eq!(accepted.load(Ordering::SeqCst), 1);
    }

    #[tokio::test]
    async fn closing_drops_idle_connections_and_refuses_new_requests() {
        let (addr, _, open) = server().await;
        let conns = HandlerConnections::new(addr);
        call(&conns, addr).await.unwrap();
        assert_eq!(conns.idle_count(), 1);
        conns.close();
        // The handler sees its connection closed (a graceful stop is not held up).
        eventually("server saw the close", || open.load(Ordering::SeqCst) == 0).await;
        let e = call(&conns, addr).await.unwrap_err();
        assert!(matches!(e, SendError::Ended), "{e}");
        assert!(e.undelivered());
    }

    #[tokio::test]
    async fn a_connection_the_handler_closed_is_not_reused() {
        // A handler that answers one request per connection, then closes it.
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let accepted = Arc::new(AtomicUsize::new(0));
        let a = accepted.clone();
        tokio::spawn(async move {
            loop {
                let (stream, _) = listener.accept().await.unwrap();
                a.fetch_add(1, Ordering::SeqCst);
                tokio::spawn(async move {
                    let svc = service_fn(|_req| async {
                        Ok::<_, std::convert::Infallible>(Response::new(Full::new(Bytes::from(
                            "ok",
                        ))))
                    });
                    let _ = hyper::server::conn::http1::Builder::new()
                        .keep_alive(false)
                        .serve_connection(TokioIo::new(stream), svc)
                        .await;
                });
            }
        });
        let conns = HandlerConnections::new(addr);
        for _ in 0..5 {
            call(&conns, addr).await.unwrap();
        }
        assert_eq!(accepted.load(Ordering::SeqCst), 5);
    }

    #[tokio::test]
    async fn no_handler_listening_is_a_connect_failure() {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        drop(listener);
        let conns = HandlerConnections::new(addr);
        let e = call(&conns, addr).await.unwrap_err();
        assert!(matches!(e, SendError::Connect { .. }), "{e}");
        assert!(e.undelivered());
        assert!(e.to_string().contains(&addr.to_string()), "{e}");
    }

    #[tokio::test]
    async fn concurrent_requests_open_connections_that_are_then_reused() {
        let (addr, accepted, _) = server().await;
        let conns = Arc::new(HandlerConnections::new(addr));
        for _round in 0..3 {
            let calls: Vec<_> = (0..8)
                .map(|_| {
                    let conns = conns.clone();
                    tokio::spawn(async move { call(&conns, addr).await.unwrap() })
                })
                .collect();
            for c in calls {
                c.await.unwrap();
            }
            eventually("connections ready", || conns.checkout_ready_peek()).await;
        }
        let opened = accepted.load(Ordering::SeqCst);
        assert!(
            (1..=8).contains(&opened),
            "24 requests, 8 at a time, opened {opened} connections"
        );
    }

    impl HandlerConnections {
        /// Whether every kept connection is ready (test helper; takes none).
        fn checkout_ready_peek(&self) -> bool {
            let guard = self.idle.lock().unwrap();
            guard
                .as_ref()
                .is_some_and(|v| v.iter().all(|i| i.sender.is_ready()))
        }
    }
}
