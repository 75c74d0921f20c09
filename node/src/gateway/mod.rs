//! The HTTP gateway: every node's function port.
//!
//! A request is matched against the route table of the serving apps (by
//! `{app}.<domain>` Host header, or across all apps on the bare address), checked
//! for keys, limited (`maxOutstandingRequests` → 429, `maxConcurrentRequests`
//! queueing, body and URL size), then sent to a Ready instance picked from the
//! routing snapshot (fewest requests in flight): in JSON mode as a custom handler
//! invocation, in forwarding mode as the original request. The hot path reads the
//! routing snapshot lock-free and never goes through an actor mailbox.
//!
//! A request is re-sent to another instance only when the connection to the first
//! could not be established (it provably never reached a handler), or, for an
//! idempotent method (GET, HEAD, OPTIONS, TRACE, PUT, DELETE), when the hop to
//! another worker broke after sending (that worker died, froze or was cut off;
//! keepalive pings notice within about 3 s). In memory only.

pub mod json_mode;
pub mod keys;

use std::collections::HashMap;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, RwLock};
use std::time::Duration;

use bytes::Bytes;
use http_body_util::combinators::BoxBody;
use http_body_util::{BodyExt, Full, Limited};
use hyper::body::Incoming;
use hyper::header::{HeaderName, HeaderValue};
use hyper::{Request, Response, StatusCode};
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::{TokioExecutor, TokioIo};
use strom_actors::{Endpoint, RoutingTable};
use strom_control_plane::state_machine::StateView;
use strom_proto::ids::{AppName, NodeId, VersionId};
use strom_proto::invocations::{InvocationRecord, InvocationStatus, InvocationStore, LogEntry};
use strom_proto::manifest::{is_function_disabled, FunctionManifest, HostConfig, Trigger};
use strom_proto::route_table::{RouteMatch, RouteTable};
use tokio::sync::{watch, Semaphore};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use json_mode::{parse_answer, request_payload, HttpRequestData};

type BoxError = Box<dyn std::error::Error + Send + Sync>;
pub type Body = BoxBody<Bytes, BoxError>;

/// Instances one request may find unreachable before it fails.
const MAX_UNREACHABLE: usize = 8;

/// How long handler output after an invocation's answer still counts as its log.
const LOG_GRACE: Duration = Duration::from_millis(50);

pub const HOST_VERSION: &str = concat!("4.0.0-strom.", env!("CARGO_PKG_VERSION"));

#[derive(Debug, Clone)]
pub struct GatewayConfig {
    /// This node (its own placements are served locally, without a hop).
    pub node_id: NodeId,
    pub max_body_bytes: usize,
    pub max_url_bytes: usize,
    /// How long a request waits for a first Ready instance (cold start).
    pub cold_start_timeout: Duration,
}

impl Default for GatewayConfig {
    fn default() -> Self {
        GatewayConfig {
            node_id: 0,
            max_body_bytes: 100 * 1024 * 1024,
            max_url_bytes: 4096,
            cold_start_timeout: Duration::from_secs(60),
        }
    }
}

struct Limiter {
    outstanding: AtomicUsize,
    max_outstanding: Option<usize>,
    concurrency: Option<Arc<Semaphore>>,
}

struct Inner {
    config: GatewayConfig,
    routing: RoutingTable,
    state: watch::Receiver<Arc<StateView>>,
    invocations: InvocationStore,
    client: Client<HttpConnector, Full<Bytes>>,
    /// HTTP/2 to other nodes' function ports (prior knowledge, or by ALPN over
    /// mutual TLS): one multiplexed, kept-alive connection per peer.
    hop_client: Client<hyper_rustls::HttpsConnector<HttpConnector>, Full<Bytes>>,
    /// The function port's TLS, when the node has an identity.
    tls: Option<tokio_rustls::TlsAcceptor>,
    /// Requests this gateway has in flight on each peer (least outstanding first).
    peer_outstanding: RwLock<HashMap<NodeId, Arc<AtomicUsize>>>,
    /// Peers that refused a connection, skipped until then (passive health).
    peer_unhealthy: RwLock<HashMap<NodeId, Instant>>,
    /// Route tables of every app in the cluster state, for requests this node
    /// cannot serve itself (rebuilt when the applied index changes).
    cluster_routes: RwLock<Option<(u64, Arc<ClusterRoutes>)>>,
    /// Per app, for its serving version.
    limiters: RwLock<HashMap<AppName, (VersionId, Arc<Limiter>)>>,
    tick: AtomicU64,
    recorder: tokio::sync::mpsc::Sender<Pending>,
}

/// An invocation whose record waits for trailing handler output.
struct Pending {
    record: InvocationRecord,
    endpoint: Arc<Endpoint>,
    from_line: u64,
    /// The instance's next line number when the answer arrived.
    answered_line: u64,
    due: Instant,
}

/// Lines after the answer that may still belong to the invocation.
const TRAILING_LINES: u64 = 16;
/// Most handler lines kept in one invocation record.
const MAX_RECORD_LINES: u64 = 200;

/// Writes invocation records once their grace period is over; one task for all
/// (records arrive in due order, as the grace is constant).
async fn recorder(mut rx: tokio::sync::mpsc::Receiver<Pending>, store: InvocationStore) {
    let mut batch = Vec::new();
    // Wake once per batch, not once per record: take everything queued, wait for
    // the last one's due time, write them all.
    while rx.recv_many(&mut batch, 1024).await > 0 {
        if let Some(last) = batch.last() {
            tokio::time::sleep_until(last.due).await;
        }
        for p in batch.drain(..) {
            store.record(finish_record(p));
        }
    }
}

fn finish_record(p: Pending) -> InvocationRecord {
    let mut record = p.record;
    let to = p
        .endpoint
        .logs
        .next_seq()
        .min(p.answered_line + TRAILING_LINES)
        .min(p.from_line + MAX_RECORD_LINES);
    for line in p.endpoint.logs.range(p.from_line, to) {
        if names_other_invocation(&line.text, &record.id, &p.endpoint) {
            continue;
        }
        record.logs.push(LogEntry {
            source: match line.stream {
                strom_actors::runtime::LogStream::Stdout => "stdout".into(),
                strom_actors::runtime::LogStream::Stderr => "stderr".into(),
            },
            text: line.text,
        });
    }
    record
}

/// Cheap to clone.
#[derive(Clone)]
pub struct Gateway {
    inner: Arc<Inner>,
}

fn error(status: StatusCode, code: &str, message: impl Into<String>) -> Response<Body> {
    let body = serde_json::json!({"error": {"code": code, "message": message.into()}});
    let mut r = Response::new(full(Bytes::from(body.to_string())));
    *r.status_mut() = status;
    r.headers_mut().insert(
        hyper::header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    r
}

fn full(b: Bytes) -> Body {
    Full::new(b).map_err(|e: Infallible| match e {}).boxed()
}

fn is_hop_by_hop(name: &str) -> bool {
    matches!(
        name,
        "connection"
            | "keep-alive"
            | "proxy-authenticate"
            | "proxy-authorization"
            | "proxy-connection"
            | "te"
            | "trailer"
            | "transfer-encoding"
            | "upgrade"
    )
}

/// The UUID-shaped words of a log line.
fn uuids_in(line: &str) -> impl Iterator<Item = &str> {
    let b = line.as_bytes();
    (0..b.len().saturating_sub(35)).filter_map(move |i| {
        let w = &b[i..i + 36];
        let shaped = w.iter().enumerate().all(|(j, c)| match j {
            8 | 13 | 18 | 23 => *c == b'-',
            _ => c.is_ascii_hexdigit(),
        });
        shaped.then(|| &line[i..i + 36])
    })
}

/// Whether a line names another invocation sent to the same instance (so it
/// belongs to that one's record, not this one's).
fn names_other_invocation(line: &str, ours: &str, endpoint: &Endpoint) -> bool {
    !line.contains(ours) && uuids_in(line).any(|id| endpoint.had_invocation(id))
}

/// Forwarding mode applies to functions with exactly one httpTrigger in and one http out.
fn forwards(host: &HostConfig, f: &FunctionManifest) -> bool {
    host.custom_handler.enable_forwarding_http_request
        && f.bindings.len() == 2
        && matches!(&f.trigger, Trigger::Http(h) if h.output.is_some())
}

impl Gateway {
    pub fn new(
        config: GatewayConfig,
        routing: RoutingTable,
        state: watch::Receiver<Arc<StateView>>,
        invocations: InvocationStore,
    ) -> Self {
        let mut connector = HttpConnector::new();
        connector.set_nodelay(true);
        connector.set_connect_timeout(Some(Duration::from_secs(2)));
        let client = Client::builder(TokioExecutor::new())
            .pool_idle_timeout(Duration::from_secs(30))
            .pool_max_idle_per_host(256)
            .build(connector);
        let mut hop_connector = HttpConnector::new();
        hop_connector.set_nodelay(true);
        hop_connector.set_connect_timeout(Some(Duration::from_secs(2)));
        hop_connector.enforce_http(false);
        let hop_tls = strom_control_plane::tls::current()
            .and_then(|t| match t.rustls_client() {
                Ok(c) => Some(c),
                Err(e) => {
                    tracing::error!("TLS client for the gateway hop: {e}");
                    None
                }
            })
            .unwrap_or_else(no_tls_client);
        let hop_connector = hyper_rustls::HttpsConnectorBuilder::new()
            .with_tls_config(hop_tls)
            .https_or_http()
            .enable_http2()
            .wrap_connector(hop_connector);
        // Keepalive pings drop a connection to a peer that vanished (power loss,
        // partition) within seconds; requests then go elsewhere.
        let hop_client = Client::builder(TokioExecutor::new())
            .http2_only(true)
            .http2_keep_alive_interval(Duration::from_secs(1))
            .http2_keep_alive_timeout(Duration::from_secs(2))
            .http2_keep_alive_while_idle(true)
            .timer(hyper_util::rt::TokioTimer::new())
            .pool_timer(hyper_util::rt::TokioTimer::new())
            .pool_idle_timeout(Duration::from_secs(90))
            .build(hop_connector);
        let tls = strom_control_plane::tls::current().and_then(|t| match t.rustls_server() {
            Ok(c) => Some(tokio_rustls::TlsAcceptor::from(c)),
            Err(e) => {
                tracing::error!("TLS for the function port: {e}");
                None
            }
        });
        let (recorder_tx, recorder_rx) = tokio::sync::mpsc::channel(65_536);
        tokio::spawn(recorder(recorder_rx, invocations.clone()));
        Gateway {
            inner: Arc::new(Inner {
                config,
                routing,
                state,
                invocations,
                client,
                hop_client,
                tls,
                peer_outstanding: RwLock::new(HashMap::new()),
                peer_unhealthy: RwLock::new(HashMap::new()),
                cluster_routes: RwLock::new(None),
                limiters: RwLock::new(HashMap::new()),
                tick: AtomicU64::new(0),
                recorder: recorder_tx,
            }),
        }
    }

    /// Serve the function port on `listener` until `cancel`; in-flight requests finish.
    pub async fn serve(self, listener: tokio::net::TcpListener, cancel: CancellationToken) {
        let graceful = hyper_util::server::graceful::GracefulShutdown::new();
        let builder = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new());
        loop {
            let (stream, remote) = tokio::select! {
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
            let gw = self.clone();
            let service = hyper::service::service_fn(move |req| {
                let gw = gw.clone();
                async move { Ok::<_, Infallible>(gw.handle(req).await) }
            });
            let watcher = graceful.watcher();
            let builder = builder.clone();
            let tls = self.inner.tls.clone();
            tokio::spawn(async move {
                match tls {
                    None => {
                        let conn =
                            builder.serve_connection_with_upgrades(TokioIo::new(stream), service);
                        let _ = watcher.watch(conn.into_owned()).await;
                    }
                    Some(acceptor) => {
                        let stream = match tokio::time::timeout(
                            TLS_HANDSHAKE,
                            acceptor.accept(stream),
                        )
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
                        let conn =
                            builder.serve_connection_with_upgrades(TokioIo::new(stream), service);
                        let _ = watcher.watch(conn.into_owned()).await;
                    }
                }
            });
        }
        let _ = tokio::time::timeout(Duration::from_secs(30), graceful.shutdown()).await;
    }

    /// Every request starts here: served by a local instance when this node has a
    /// Ready one, else sent over the internal hop to a worker that runs the app.
    async fn handle(&self, req: Request<Incoming>) -> Response<Body> {
        if let Some(v) = req.headers().get(HOP_APP) {
            // Sent by another node's gateway: serve locally or say "undelivered",
            // with the Host the client used (HTTP/2 carried it as the hop's own).
            let app = v.to_str().ok().and_then(|a| AppName::parse(a).ok());
            let mut req = req;
            if let Some(host) = req.headers_mut().remove(HOP_HOST) {
                req.headers_mut().insert(hyper::header::HOST, host);
            }
            return match app {
                Some(app) => self.handle_local(req, Some(app)).await,
                None => error(
                    StatusCode::BAD_REQUEST,
                    "BadRequest",
                    format!("{HOP_APP}: not an app name"),
                ),
            };
        }
        let app = match self.remote_app(&req) {
            Ok(Some(app)) => app,
            Ok(None) => return self.handle_local(req, None).await,
            Err(refused) => return refused,
        };
        // The hop needs the whole body (it may be sent more than once).
        let (parts, body) = req.into_parts();
        let max = self.inner.config.max_body_bytes;
        if parts
            .headers
            .get(hyper::header::CONTENT_LENGTH)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.parse::<u64>().ok())
            .is_some_and(|len| len > max as u64)
        {
            return too_large(max);
        }
        let body = match Limited::new(body, max).collect().await {
            Ok(b) => b.to_bytes(),
            Err(e)
                if e.downcast_ref::<http_body_util::LengthLimitError>()
                    .is_some() =>
            {
                return too_large(max)
            }
            Err(e) => {
                return error(
                    StatusCode::BAD_REQUEST,
                    "BadRequest",
                    format!("reading the request body: {e}"),
                )
            }
        };
        match self.proxy(&app, &parts, &body).await {
            Ok(response) => response,
            Err(()) => {
                self.handle_local(Request::from_parts(parts, Full::new(body)), None)
                    .await
            }
        }
    }

    /// Keys and disabled functions, as Azure checks them, against the cluster state.
    // The refusal is the response to send; it is built once and sent as is.
    #[allow(clippy::result_large_err)]
    fn check_access(
        &self,
        app: &AppName,
        function: &str,
        auth_level: strom_proto::manifest::AuthLevel,
        headers: &hyper::HeaderMap,
        query: &[(String, String)],
        path: &str,
    ) -> Result<(), Response<Body>> {
        let view = self.inner.state.borrow().clone();
        let Some(app_state) = view.state.apps.get(app) else {
            return Err(error(
                StatusCode::NOT_FOUND,
                "NotFound",
                format!("no function at {path}"),
            ));
        };
        let header_key = headers.get("x-functions-key").and_then(|v| v.to_str().ok());
        let granted = keys::granted(
            &app_state.keys,
            function,
            keys::presented(header_key, query),
        );
        if is_function_disabled(&app_state.settings, function) && granted != keys::Granted::Master {
            return Err(error(
                StatusCode::NOT_FOUND,
                "NotFound",
                format!("function `{function}` is disabled"),
            ));
        }
        if !keys::allows(auth_level, granted) {
            return Err(error(
                StatusCode::UNAUTHORIZED,
                "Unauthorized",
                "a valid function key is required (x-functions-key header or code query parameter)",
            ));
        }
        Ok(())
    }

    /// The app a request is for when this node has no Ready instance of it (the
    /// request then goes to another worker); `None` to serve it locally. Keys are
    /// checked here, before the body is read (`Err`: the refusal).
    #[allow(clippy::result_large_err)]
    fn remote_app<B>(&self, req: &Request<B>) -> Result<Option<AppName>, Response<Body>> {
        let path = req.uri().path();
        if path.eq_ignore_ascii_case("/admin/host/ping") {
            return Ok(None);
        }
        let snapshot = self.inner.routing.load();
        let host = req
            .headers()
            .get(hyper::header::HOST)
            .and_then(|h| h.to_str().ok())
            .unwrap_or("");
        let routes = self.cluster_routes();
        let scoped = app_from_host(host).filter(|a| routes.apps.contains_key(a));
        let method = req.method().as_str();
        let lookup = match &scoped {
            Some(app) => routes.apps[app].lookup(method, path),
            None => routes.all.lookup(method, path),
        };
        let RouteMatch::Found { app, function, .. } = lookup else {
            return Ok(None);
        };
        let ready_here = snapshot
            .apps
            .get(app)
            .is_some_and(|s| !s.endpoints.is_empty());
        if ready_here {
            return Ok(None);
        }
        let view = self.inner.state.borrow().clone();
        let auth_level = view
            .state
            .apps
            .get(app)
            .and_then(|a| {
                a.active()
                    .manifest
                    .functions
                    .iter()
                    .find(|f| f.name == function)
            })
            .and_then(|f| match &f.trigger {
                Trigger::Http(h) => Some(h.auth_level),
                _ => None,
            });
        let Some(auth_level) = auth_level else {
            return Ok(None);
        };
        let query: Vec<(String, String)> = req
            .uri()
            .query()
            .map(|q| form_urlencoded::parse(q.as_bytes()).into_owned().collect())
            .unwrap_or_default();
        self.check_access(app, function, auth_level, req.headers(), &query, path)?;
        Ok(Some(app.clone()))
    }

    fn cluster_routes(&self) -> Arc<ClusterRoutes> {
        let view = self.inner.state.borrow().clone();
        let index = view.applied_index();
        if let Some((i, r)) = self
            .inner
            .cluster_routes
            .read()
            .expect("routes lock")
            .as_ref()
        {
            if *i == index {
                return r.clone();
            }
        }
        let apps: Vec<(&AppName, &strom_proto::manifest::AppManifest)> = view
            .state
            .apps
            .iter()
            .map(|(n, a)| (n, &a.active().manifest))
            .collect();
        let routes = Arc::new(ClusterRoutes {
            all: RouteTable::build(apps.iter().copied()),
            apps: apps
                .iter()
                .map(|(n, m)| ((*n).clone(), RouteTable::build([(*n, *m)])))
                .collect(),
        });
        *self.inner.cluster_routes.write().expect("routes lock") = Some((index, routes.clone()));
        routes
    }

    /// Workers (not this node) that run `app`, least outstanding requests first,
    /// peers that recently refused connections last.
    fn peers_for(
        &self,
        app: &AppName,
        view: &StateView,
        tried: &[NodeId],
    ) -> Vec<(NodeId, String)> {
        let me = self.inner.config.node_id;
        let Some(placed) = view.state.placements.get(app) else {
            return Vec::new();
        };
        let now = Instant::now();
        let unhealthy = self.inner.peer_unhealthy.read().expect("health lock");
        let outstanding = self
            .inner
            .peer_outstanding
            .read()
            .expect("outstanding lock");
        let mut peers: Vec<(bool, usize, u64, NodeId, String)> = placed
            .keys()
            .filter(|id| **id != me && !tried.contains(id))
            .filter_map(|id| {
                let w = view.state.workers.get(id)?;
                if !w.up {
                    return None;
                }
                let sick = unhealthy.get(id).is_some_and(|until| *until > now);
                let load = outstanding
                    .get(id)
                    .map(|c| c.load(Ordering::Relaxed))
                    .unwrap_or(0);
                Some((sick, load, 0, *id, w.info.http_addr.clone()))
            })
            .collect();
        // Rotate ties so equal peers share the load.
        let tick = self.inner.tick.fetch_add(1, Ordering::Relaxed);
        for p in &mut peers {
            p.2 = p.3.wrapping_add(tick) % (placed.len() as u64).max(1);
        }
        peers.sort();
        peers.into_iter().map(|p| (p.3, p.4)).collect()
    }

    /// Send a request over the internal hop to a worker running `app`. Re-sent to
    /// another worker only when it provably never reached a handler (the connection
    /// was refused, or the worker answered "undelivered"). `Err(())`: serve it
    /// locally instead (this node runs the app, or now has a Ready instance).
    async fn proxy(
        &self,
        app: &AppName,
        parts: &hyper::http::request::Parts,
        body: &Bytes,
    ) -> Result<Response<Body>, ()> {
        let me = self.inner.config.node_id;
        let deadline = Instant::now() + self.inner.config.cold_start_timeout;
        loop {
            let view = self.inner.state.borrow().clone();
            let mut tried: Vec<NodeId> = Vec::new();
            while let Some((peer, addr)) = self.peers_for(app, &view, &tried).into_iter().next() {
                tried.push(peer);
                match self.send_hop(app, peer, &addr, parts, body).await {
                    Hop::Answered(r) => return Ok(r),
                    Hop::Undelivered => continue,
                    Hop::Refused => {
                        self.mark_unhealthy(peer);
                        continue;
                    }
                    // An idempotent request may run twice (RFC 9110 §9.2.2): it goes
                    // to another worker, as a reverse proxy retries it. Any other
                    // request fails: its handler may have run.
                    Hop::Broken(why) => {
                        self.mark_unhealthy(peer);
                        if parts.method.is_idempotent() {
                            tracing::debug!(peer, "{why}; idempotent, trying another worker");
                            continue;
                        }
                        return Ok(error(StatusCode::BAD_GATEWAY, "BadGateway", why));
                    }
                }
            }
            // Nobody else could take it: this node runs the app and waits for its
            // own instance like a cold start. (Placed here but not started yet — the
            // package is still being fetched — keeps looking until it is.)
            let snapshot = self.inner.routing.load();
            if snapshot.apps.contains_key(app) {
                return Err(());
            }
            let _ = me;
            if Instant::now() >= deadline {
                return Ok(error(
                    StatusCode::SERVICE_UNAVAILABLE,
                    "Unavailable",
                    format!("no instance of app `{app}` became ready in time"),
                ));
            }
            // Cold start somewhere else: look again after a local change, a new
            // state, or a short pause (not a tight loop of hops).
            let changed = self.inner.routing.changed();
            let mut state = self.inner.state.clone();
            tokio::select! {
                _ = changed => {}
                _ = state.changed() => {}
                _ = tokio::time::sleep(Duration::from_millis(200)) => {}
            }
        }
    }

    fn mark_unhealthy(&self, peer: NodeId) {
        self.inner
            .peer_unhealthy
            .write()
            .expect("health lock")
            .insert(peer, Instant::now() + PEER_BACKOFF);
    }

    async fn send_hop(
        &self,
        app: &AppName,
        peer: NodeId,
        addr: &str,
        parts: &hyper::http::request::Parts,
        body: &Bytes,
    ) -> Hop {
        // HTTP/2 carries the authority itself: no Host header.
        let request = match copy_request(parts, &hop_url(addr), &hyper::header::HOST)
            .header(HOP_APP, app.as_str())
            .header(HOP_FROM, self.inner.config.node_id.to_string())
            .header(
                HOP_HOST,
                parts
                    .headers
                    .get(hyper::header::HOST)
                    .cloned()
                    .or_else(|| {
                        parts
                            .uri
                            .authority()
                            .and_then(|a| HeaderValue::from_str(a.as_str()).ok())
                    })
                    .unwrap_or_else(|| HeaderValue::from_static("localhost")),
            )
            .body(Full::new(body.clone()))
        {
            Ok(r) => r,
            Err(e) => {
                return Hop::Answered(error(
                    StatusCode::BAD_REQUEST,
                    "BadRequest",
                    format!("the request cannot be forwarded: {e}"),
                ))
            }
        };
        let counter = self
            .inner
            .peer_outstanding
            .write()
            .expect("outstanding lock")
            .entry(peer)
            .or_default()
            .clone();
        counter.fetch_add(1, Ordering::AcqRel);
        let guard = PeerInFlight(counter);
        match self.inner.hop_client.request(request).await {
            Ok(resp) if resp.headers().contains_key(UNDELIVERED) => Hop::Undelivered,
            Ok(resp) => {
                let (mut head, body) = resp.into_parts();
                let names: Vec<HeaderName> = head
                    .headers
                    .keys()
                    .filter(|k| is_hop_by_hop(k.as_str()))
                    .cloned()
                    .collect();
                for n in names {
                    head.headers.remove(n);
                }
                head.version = parts.version;
                let body = Guarded {
                    inner: body.map_err(|e| Box::new(e) as BoxError).boxed(),
                    _guard: guard,
                };
                Hop::Answered(Response::from_parts(head, body.boxed()))
            }
            Err(e) if e.is_connect() => {
                tracing::debug!(peer, %addr, "hop refused ({e}); trying another worker");
                Hop::Refused
            }
            Err(e) => Hop::Broken(format!(
                "forwarding to node {peer} failed after sending: {e}"
            )),
        }
    }

    fn limiter(&self, app: &AppName, version: &VersionId, host: &HostConfig) -> Arc<Limiter> {
        if let Some((v, l)) = self.inner.limiters.read().expect("limiter lock").get(app) {
            if v == version {
                return l.clone();
            }
        }
        let mut map = self.inner.limiters.write().expect("limiter lock");
        if let Some((v, l)) = map.get(app) {
            if v == version {
                return l.clone();
            }
        }
        let limiter = Arc::new(Limiter {
            outstanding: AtomicUsize::new(0),
            max_outstanding: host.max_outstanding_requests.map(|n| n as usize),
            concurrency: host
                .max_concurrent_requests
                .map(|n| Arc::new(Semaphore::new(n as usize))),
        });
        map.insert(app.clone(), (version.clone(), limiter.clone()));
        limiter
    }

    async fn handle_local<B>(&self, req: Request<B>, hop: Option<AppName>) -> Response<Body>
    where
        B: hyper::body::Body<Data = Bytes> + Send,
        B::Error: Into<BoxError>,
    {
        let uri_len = req
            .uri()
            .path_and_query()
            .map(|p| p.as_str().len())
            .unwrap_or(0);
        if uri_len > self.inner.config.max_url_bytes {
            return error(
                StatusCode::URI_TOO_LONG,
                "UriTooLong",
                format!(
                    "the URL is longer than {} bytes",
                    self.inner.config.max_url_bytes
                ),
            );
        }
        let path = req.uri().path().to_string();
        if path.eq_ignore_ascii_case("/admin/host/ping") {
            return Response::new(full(Bytes::new()));
        }
        let host_header = req
            .headers()
            .get(hyper::header::HOST)
            .and_then(|h| h.to_str().ok())
            .unwrap_or("")
            .to_string();
        let snapshot = self.inner.routing.load();
        if let Some(app) = &hop {
            if snapshot
                .apps
                .get(app)
                .is_none_or(|s| s.endpoints.is_empty())
            {
                return undelivered(app);
            }
        }
        let scoped_app = hop
            .clone()
            .or_else(|| app_from_host(&host_header).filter(|a| snapshot.apps.contains_key(a)));
        let method = req.method().as_str().to_string();
        let lookup = match &scoped_app {
            Some(app) => snapshot.apps[app].routes.lookup(&method, &path),
            None => snapshot.routes.lookup(&method, &path),
        };
        let (app, function, params) = match lookup {
            RouteMatch::Found {
                app,
                function,
                params,
            } => (app.clone(), function.to_string(), params),
            RouteMatch::MethodNotAllowed { allowed } => {
                let mut r = error(
                    StatusCode::METHOD_NOT_ALLOWED,
                    "MethodNotAllowed",
                    format!(
                        "{method} is not allowed here; allowed: {}",
                        allowed.join(", ")
                    ),
                );
                if let Ok(v) = HeaderValue::from_str(&allowed.join(", ")) {
                    r.headers_mut().insert(hyper::header::ALLOW, v);
                }
                return r;
            }
            RouteMatch::NotFound => {
                return error(
                    StatusCode::NOT_FOUND,
                    "NotFound",
                    format!("no function at {path}"),
                )
            }
        };
        let serving = &snapshot.apps[&app];
        let Some(fmanifest) = serving
            .manifest
            .functions
            .iter()
            .find(|f| f.name == function)
        else {
            return error(
                StatusCode::NOT_FOUND,
                "NotFound",
                format!("no function at {path}"),
            );
        };
        let Trigger::Http(http) = &fmanifest.trigger else {
            return error(
                StatusCode::NOT_FOUND,
                "NotFound",
                format!("no function at {path}"),
            );
        };

        let query: Vec<(String, String)> = req
            .uri()
            .query()
            .map(|q| form_urlencoded::parse(q.as_bytes()).into_owned().collect())
            .unwrap_or_default();
        if let Err(refused) = self.check_access(
            &app,
            &function,
            http.auth_level,
            req.headers(),
            &query,
            &path,
        ) {
            return refused;
        }

        let host = &serving.manifest.host;
        let limiter = self.limiter(&app, &serving.version, host);
        let outstanding = limiter.outstanding.fetch_add(1, Ordering::AcqRel) + 1;
        let outstanding_guard = Outstanding(limiter.clone());
        if limiter.max_outstanding.is_some_and(|max| outstanding > max) {
            return error(
                StatusCode::TOO_MANY_REQUESTS,
                "TooManyRequests",
                "maxOutstandingRequests reached; retry later",
            );
        }
        let permit = match &limiter.concurrency {
            Some(sem) => Some(sem.clone().acquire_owned().await.expect("never closed")),
            None => None,
        };

        if let Some(len) = req
            .headers()
            .get(hyper::header::CONTENT_LENGTH)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.parse::<u64>().ok())
        {
            if len > self.inner.config.max_body_bytes as u64 {
                return too_large(self.inner.config.max_body_bytes);
            }
        }
        let (parts, body) = req.into_parts();
        let body = match Limited::new(body, self.inner.config.max_body_bytes)
            .collect()
            .await
        {
            Ok(b) => b.to_bytes(),
            Err(e) => {
                if e.downcast_ref::<http_body_util::LengthLimitError>()
                    .is_some()
                {
                    return too_large(self.inner.config.max_body_bytes);
                }
                return error(
                    StatusCode::BAD_REQUEST,
                    "BadRequest",
                    format!("reading the request body: {e}"),
                );
            }
        };

        let invocation_id = fast_uuid();
        let started_at_ms = strom_control_plane::management::now_ms();
        let start = Instant::now();
        let forwarding = forwards(host, fmanifest);
        let timeout = host.function_timeout_ms.map(Duration::from_millis);
        let binding = http.binding_name.clone();
        let output_binding = http.output.clone();

        // Instances this request could not connect to: skipped until the routing
        // snapshot offers another (a restarted instance has a new id).
        let mut unreachable: Vec<String> = Vec::new();
        let outcome = loop {
            let endpoint = match self.ready_endpoint(&app, &unreachable, hop.is_none()).await {
                Ok(e) => e,
                Err(r) => return r,
            };
            let logs_rx = endpoint.logs.next_seq();
            let in_flight = endpoint.begin();
            endpoint.note_invocation(&invocation_id);
            let request = if forwarding {
                forward_request(&parts, &body, endpoint.addr, &invocation_id)
            } else {
                let headers: Vec<(String, String)> = parts
                    .headers
                    .iter()
                    .filter_map(|(k, v)| {
                        Some((k.as_str().to_string(), v.to_str().ok()?.to_string()))
                    })
                    .collect();
                let url = format!(
                    "http://{}{}",
                    if host_header.is_empty() {
                        "localhost"
                    } else {
                        &host_header
                    },
                    parts
                        .uri
                        .path_and_query()
                        .map(|p| p.as_str())
                        .unwrap_or("/")
                );
                let data = HttpRequestData {
                    url,
                    method: parts.method.as_str(),
                    query: &query,
                    headers: &headers,
                    params: &params,
                    content_type: parts
                        .headers
                        .get(hyper::header::CONTENT_TYPE)
                        .and_then(|v| v.to_str().ok()),
                    body: &body,
                };
                let payload = request_payload(
                    &data,
                    &binding,
                    &function,
                    &humantime::format_rfc3339_micros(std::time::SystemTime::now()).to_string(),
                    &fast_uuid(),
                );
                json_request(&function, payload, endpoint.addr, &invocation_id)
            };
            let sent_at = Instant::now();
            let call = self.inner.client.request(request);
            let result = match timeout {
                Some(t) => match tokio::time::timeout(t, call).await {
                    Ok(r) => r,
                    Err(_) => {
                        endpoint.recycle(format!(
                            "function `{function}` exceeded functionTimeout ({t:?})"
                        ));
                        break Outcome::TimedOut {
                            endpoint,
                            logs_rx,
                            t,
                        };
                    }
                },
                None => call.await,
            };
            match result {
                Ok(resp) => {
                    break Outcome::Answered {
                        endpoint,
                        logs_rx,
                        resp,
                        in_flight,
                    }
                }
                Err(e) if e.is_connect() && unreachable.len() < MAX_UNREACHABLE => {
                    // Never reached a handler: safe to send again, to another instance
                    // (waiting for one, as on a cold start, if there is none).
                    tracing::debug!(instance = %endpoint.instance_id, "not delivered ({e}); trying another instance");
                    unreachable.push(endpoint.instance_id.clone());
                    continue;
                }
                // The instance had already ended when this was sent (a stale
                // keep-alive connection): it never reached a handler either.
                Err(e)
                    if unreachable.len() < MAX_UNREACHABLE
                        && endpoint
                            .ended_before(sent_at, Duration::from_millis(50))
                            .await =>
                {
                    tracing::debug!(instance = %endpoint.instance_id, "sent to an instance that had ended ({e}); trying another");
                    unreachable.push(endpoint.instance_id.clone());
                    continue;
                }
                Err(e) => {
                    break Outcome::Failed {
                        endpoint,
                        logs_rx,
                        error: e.to_string(),
                    }
                }
            }
        };

        let mut record = InvocationRecord {
            id: invocation_id.clone(),
            app: app.clone(),
            function: function.clone(),
            instance_id: String::new(),
            started_at_ms,
            duration_us: 0,
            status: InvocationStatus::Succeeded,
            http_status: 200,
            error: None,
            logs: Vec::new(),
        };
        // The instance may have died under the request (out of memory, a crash):
        // its record says how, once the worker has noticed.
        let mut died_under_call = false;
        let (response, endpoint, logs_rx) = match outcome {
            Outcome::TimedOut {
                endpoint,
                logs_rx,
                t,
            } => {
                record.status = InvocationStatus::TimedOut;
                record.error = Some(format!(
                    "exceeded functionTimeout ({t:?}); the instance is recycled"
                ));
                (
                    error(
                        StatusCode::GATEWAY_TIMEOUT,
                        "FunctionTimeout",
                        format!(
                            "function `{function}` did not finish within functionTimeout ({t:?})"
                        ),
                    ),
                    endpoint,
                    logs_rx,
                )
            }
            Outcome::Failed {
                endpoint,
                logs_rx,
                error: e,
            } => {
                died_under_call = true;
                record.status = InvocationStatus::Failed;
                record.error = Some(format!("calling the handler failed: {e}"));
                (
                    error(
                        StatusCode::INTERNAL_SERVER_ERROR,
                        "InvocationFailed",
                        format!("function `{function}` failed: the handler did not answer ({e})"),
                    ),
                    endpoint,
                    logs_rx,
                )
            }
            Outcome::Answered {
                endpoint,
                logs_rx,
                resp,
                in_flight,
            } => {
                if forwarding {
                    let (mut head, body) = resp.into_parts();
                    let names: Vec<HeaderName> = head
                        .headers
                        .keys()
                        .filter(|k| is_hop_by_hop(k.as_str()))
                        .cloned()
                        .collect();
                    for n in names {
                        head.headers.remove(n);
                    }
                    // The handler's HTTP version is its own business; answer in ours.
                    head.version = parts.version;
                    record.http_status = head.status.as_u16();
                    // The request counts as in flight (for drains and limits) until
                    // its streamed body has been relayed.
                    let body = Guarded {
                        inner: body.map_err(|e| Box::new(e) as BoxError).boxed(),
                        _guard: (in_flight, outstanding_guard, permit),
                    };
                    (Response::from_parts(head, body.boxed()), endpoint, logs_rx)
                } else {
                    let status = resp.status().as_u16();
                    let read = match timeout {
                        Some(t) => tokio::time::timeout(t, resp.into_body().collect())
                            .await
                            .map_err(|_| "timed out reading the answer".to_string()),
                        None => Ok(resp.into_body().collect().await),
                    };
                    let body = match read {
                        Ok(Ok(b)) => Ok(b.to_bytes()),
                        Ok(Err(e)) => Err(e.to_string()),
                        Err(e) => Err(e),
                    };
                    let response = match body {
                        Err(e) => {
                            record.status = InvocationStatus::Failed;
                            record.error =
                                Some(format!("reading the handler's answer failed: {e}"));
                            error(
                                StatusCode::INTERNAL_SERVER_ERROR,
                                "InvocationFailed",
                                format!("function `{function}` failed"),
                            )
                        }
                        Ok(bytes) => {
                            match parse_answer(status, &bytes, output_binding.as_deref()) {
                                Ok(answer) => {
                                    record.logs.extend(answer.logs.into_iter().map(|text| {
                                        LogEntry {
                                            source: "handler".into(),
                                            text,
                                        }
                                    }));
                                    match answer.output {
                                        None => {
                                            let mut r = Response::new(full(Bytes::new()));
                                            *r.status_mut() = StatusCode::NO_CONTENT;
                                            r
                                        }
                                        Some(out) => http_response(out),
                                    }
                                }
                                Err(e) => {
                                    record.status = InvocationStatus::Failed;
                                    record.logs.extend(e.logs().iter().map(|text| LogEntry {
                                        source: "handler".into(),
                                        text: text.clone(),
                                    }));
                                    record.error = Some(e.to_string());
                                    error(
                                        StatusCode::INTERNAL_SERVER_ERROR,
                                        "InvocationFailed",
                                        format!("function `{function}` failed: {e}"),
                                    )
                                }
                            }
                        }
                    };
                    (response, endpoint, logs_rx)
                }
            }
        };
        if record.status != InvocationStatus::Succeeded || !forwarding {
            record.http_status = response.status().as_u16();
        }
        record.instance_id = endpoint.instance_id.clone();
        record.duration_us = start.elapsed().as_micros() as u64;
        // The handler's output lines travel through a pipe and can trail its answer
        // a little: the record is written after a short grace period.
        let pending = Pending {
            record,
            endpoint: endpoint.clone(),
            from_line: logs_rx,
            answered_line: endpoint.logs.next_seq(),
            due: Instant::now() + LOG_GRACE,
        };
        if died_under_call {
            let recorder = self.inner.recorder.clone();
            let invocations = self.inner.invocations.clone();
            tokio::spawn(async move {
                let mut pending = pending;
                if let Some(info) = pending.endpoint.exit_reason(Duration::from_secs(5)).await {
                    if let Some(e) = pending.record.error.as_mut() {
                        e.push_str(&format!("; the instance ended: {info}"));
                    }
                }
                pending.due = Instant::now() + LOG_GRACE;
                if let Err(e) = recorder.try_send(pending) {
                    invocations.record(e.into_inner().record);
                }
            });
        } else if let Err(e) = self.inner.recorder.try_send(pending) {
            // The recorder is far behind: keep the record, without trailing lines.
            self.inner.invocations.record(e.into_inner().record);
        }
        // A handler cannot claim "undelivered": that would make a gateway re-send a
        // request a handler already saw.
        let mut response = response;
        response.headers_mut().remove(UNDELIVERED);
        response
    }

    /// A Ready endpoint for `app`, waiting for a cold start if none is Ready yet
    /// (unless `wait` is false: a request from another node is answered
    /// "undelivered" at once, and that node tries elsewhere).
    async fn ready_endpoint(
        &self,
        app: &AppName,
        unreachable: &[String],
        wait: bool,
    ) -> Result<Arc<Endpoint>, Response<Body>> {
        let deadline = Instant::now() + self.inner.config.cold_start_timeout;
        loop {
            let changed = self.inner.routing.changed();
            tokio::pin!(changed);
            changed.as_mut().enable();
            let snapshot = self.inner.routing.load();
            if let Some(e) = snapshot.pick_except(app, &self.inner.tick, unreachable) {
                return Ok(e);
            }
            if !wait {
                return Err(undelivered(app));
            }
            match snapshot.apps.get(app) {
                None => {
                    return Err(error(
                        StatusCode::NOT_FOUND,
                        "NotFound",
                        format!("app `{app}` is not served here"),
                    ));
                }
                Some(s) => {
                    if let Some(why) = &s.unavailable {
                        return Err(error(
                            StatusCode::SERVICE_UNAVAILABLE,
                            "Unavailable",
                            why.clone(),
                        ));
                    }
                }
            }
            if tokio::time::timeout_at(deadline, changed).await.is_err() {
                return Err(error(
                    StatusCode::SERVICE_UNAVAILABLE,
                    "Unavailable",
                    format!("no instance of app `{app}` became ready in time"),
                ));
            }
        }
    }
}

/// A TLS client config that is never used (plain-HTTP hops only).
fn no_tls_client() -> rustls::ClientConfig {
    rustls::ClientConfig::builder_with_provider(std::sync::Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .expect("ring supports the default protocol versions")
    .with_root_certificates(rustls::RootCertStore::empty())
    .with_no_client_auth()
}

/// How long a client may take to finish the TLS handshake.
const TLS_HANDSHAKE: Duration = Duration::from_secs(10);

/// Header naming the app on a request one gateway sends to another.
const HOP_APP: &str = "x-strom-hop-app";
/// Header naming the node a hop request comes from.
const HOP_FROM: &str = "x-strom-hop-from";
/// Header carrying the client's Host over the hop.
const HOP_HOST: &str = "x-strom-hop-host";
/// Header on a 503 meaning "no handler saw this request": the sender may retry.
const UNDELIVERED: &str = "x-strom-undelivered";
/// How long a peer that refused a connection is tried last.
const PEER_BACKOFF: Duration = Duration::from_secs(2);

/// Route tables over the whole cluster state.
struct ClusterRoutes {
    all: RouteTable,
    apps: HashMap<AppName, RouteTable>,
}

enum Hop {
    Answered(Response<Body>),
    /// The peer had no Ready instance; no handler saw the request.
    Undelivered,
    /// The connection was refused; no handler saw the request.
    Refused,
    /// The connection broke after the request was sent (the peer died, froze or
    /// was cut off): a handler may have seen it.
    Broken(String),
}

/// A request in flight on a peer; counted until dropped.
struct PeerInFlight(Arc<AtomicUsize>);

impl Drop for PeerInFlight {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::AcqRel);
    }
}

/// "No handler saw this request": the sending node tries elsewhere.
fn undelivered(app: &AppName) -> Response<Body> {
    let mut r = error(
        StatusCode::SERVICE_UNAVAILABLE,
        "Unavailable",
        format!("no Ready instance of app `{app}` on this node"),
    );
    r.headers_mut()
        .insert(UNDELIVERED, HeaderValue::from_static("1"));
    r
}

enum Outcome {
    Answered {
        endpoint: Arc<Endpoint>,
        logs_rx: u64,
        resp: Response<Incoming>,
        in_flight: strom_actors::routing::InFlight,
    },
    TimedOut {
        endpoint: Arc<Endpoint>,
        logs_rx: u64,
        t: Duration,
    },
    Failed {
        endpoint: Arc<Endpoint>,
        logs_rx: u64,
        error: String,
    },
}

/// Counts a request against `maxOutstandingRequests` until dropped.
struct Outstanding(Arc<Limiter>);

impl Drop for Outstanding {
    fn drop(&mut self) {
        self.0.outstanding.fetch_sub(1, Ordering::AcqRel);
    }
}

/// A response body that holds guards until it has been sent completely.
struct Guarded<G> {
    inner: Body,
    _guard: G,
}

impl<G: Send + Sync + Unpin + 'static> hyper::body::Body for Guarded<G> {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Result<hyper::body::Frame<Bytes>, BoxError>>> {
        std::pin::Pin::new(&mut self.inner).poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> hyper::body::SizeHint {
        self.inner.size_hint()
    }
}

fn too_large(limit: usize) -> Response<Body> {
    error(
        StatusCode::PAYLOAD_TOO_LARGE,
        "PayloadTooLarge",
        format!("the request body is larger than {limit} bytes"),
    )
}

/// A random (v4) UUID from the thread-local RNG (no system call per request).
fn fast_uuid() -> String {
    use rand::Rng;
    let bytes: [u8; 16] = rand::rng().random();
    uuid::Builder::from_random_bytes(bytes)
        .into_uuid()
        .hyphenated()
        .to_string()
}

/// `{app}.<domain>` → the app (IP addresses and bare names are not app hosts).
pub fn app_from_host(host: &str) -> Option<AppName> {
    let host = host.rsplit_once(':').map(|(h, _)| h).unwrap_or(host);
    if host.parse::<std::net::IpAddr>().is_ok() || host.starts_with('[') {
        return None;
    }
    let (first, rest) = host.split_once('.')?;
    if rest.is_empty() {
        return None;
    }
    AppName::parse(first).ok()
}

fn json_request(
    function: &str,
    payload: serde_json::Value,
    addr: SocketAddr,
    id: &str,
) -> Request<Full<Bytes>> {
    Request::builder()
        .method("POST")
        .uri(format!("http://{addr}/{function}"))
        .header(
            hyper::header::CONTENT_TYPE,
            "application/json; charset=utf-8",
        )
        .header("x-azure-functions-invocationid", id)
        .header("x-azure-functions-hostversion", HOST_VERSION)
        .header(
            hyper::header::USER_AGENT,
            concat!(
                "Azure-Functions-Host/4.0.0-strom.",
                env!("CARGO_PKG_VERSION")
            ),
        )
        .body(Full::new(Bytes::from(payload.to_string())))
        .expect("valid request")
}

/// Another node's function port (TLS when this node has an identity).
fn hop_url(addr: &str) -> String {
    strom_control_plane::tls::url(addr)
}

/// A request to `base` (`scheme://host:port`) with the method, path, query and
/// end-to-end headers of `parts` (except `skip`).
fn copy_request(
    parts: &hyper::http::request::Parts,
    base: &str,
    skip: &HeaderName,
) -> hyper::http::request::Builder {
    let pq = parts
        .uri
        .path_and_query()
        .map(|p| p.as_str())
        .unwrap_or("/");
    let mut builder = Request::builder()
        .method(parts.method.clone())
        .uri(format!("{base}{pq}"));
    for (k, v) in &parts.headers {
        if !is_hop_by_hop(k.as_str()) && k != skip {
            builder = builder.header(k, v);
        }
    }
    builder
}

fn forward_request(
    parts: &hyper::http::request::Parts,
    body: &Bytes,
    addr: SocketAddr,
    id: &str,
) -> Request<Full<Bytes>> {
    copy_request(
        parts,
        &format!("http://{addr}"),
        &hyper::header::CONTENT_LENGTH,
    )
    .header("x-azure-functions-invocationid", id)
    .header("x-azure-functions-hostversion", HOST_VERSION)
    .body(Full::new(body.clone()))
    .expect("valid request")
}

fn http_response(out: json_mode::HttpOutput) -> Response<Body> {
    let mut r = Response::new(full(out.body));
    *r.status_mut() = StatusCode::from_u16(out.status).unwrap_or(StatusCode::OK);
    for (k, v) in out.headers {
        if let (Ok(name), Ok(value)) = (
            HeaderName::from_bytes(k.as_bytes()),
            HeaderValue::from_str(&v),
        ) {
            if !is_hop_by_hop(name.as_str()) && name != hyper::header::CONTENT_LENGTH {
                r.headers_mut().append(name, value);
            }
        }
    }
    r
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn app_hosts() {
        assert_eq!(
            app_from_host("orders.example.com").unwrap().as_str(),
            "orders"
        );
        assert_eq!(
            app_from_host("Orders.localhost:7071").unwrap().as_str(),
            "orders"
        );
        assert_eq!(app_from_host("127.0.0.1:7071"), None);
        assert_eq!(app_from_host("localhost:7071"), None);
        assert_eq!(app_from_host("[::1]:7071"), None);
    }

    #[test]
    fn uuid_words_are_found_in_log_lines() {
        let a = "0b8e3c1e-9f3c-4c8e-8a1b-2d4e5f6a7b8c";
        let line = format!("order 11111111-2222-3333-4444-555555555555 for {a}");
        let found: Vec<_> = uuids_in(&line).collect();
        assert_eq!(found, ["11111111-2222-3333-4444-555555555555", a]);
        assert_eq!(uuids_in("plain line").count(), 0);
    }
}
