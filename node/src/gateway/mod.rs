//! The HTTP gateway: every node's function port.
//!
//! A request's head is checked against two immutable snapshots, read lock-free:
//! this node's Ready instances (the routing snapshot the worker's node supervisor
//! publishes) and the cluster's routes, keys and placements ([`routes`], built
//! from the node's worker view when it changed). [`admission`] decides, as a
//! pure function, whether to refuse it, call a local instance ([`invoke`]), or
//! send it over the internal hop to a worker that runs the app ([`hop`]).
//! [`translate`] builds what the handler receives (JSON mode or the forwarded
//! request) and relays responses; [`recorder`] writes one invocation record per
//! call; [`limiter`] applies `host.json`'s request limits; [`listener`] serves the
//! port. No actor mailbox and no lock on control-plane state is on the request
//! path. In memory only.

pub mod admin_invoke;
pub mod admission;
pub mod consumers;
pub mod hop;
pub mod invoke;
pub mod json_mode;
pub mod keys;
pub mod keys_api;
pub mod limiter;
pub mod listener;
pub mod outputs;
pub mod recorder;
pub mod responses;
pub mod routes;
pub mod timer_run;
pub mod translate;

use std::sync::atomic::AtomicU64;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::{Request, Response, StatusCode};
use opentelemetry::KeyValue;
use strom_actors::RoutingTable;
use strom_control_plane::internal_auth::{self, ClusterSecret};
use strom_proto::ids::{AppName, NodeId};
use strom_proto::invocations::InvocationStore;
use strom_proto::worker_view::WorkerView;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

use crate::traces::Trace;

pub use admission::app_from_host;
use admission::{Decision, Head, Limits, Origin, HOP_APP};
use hop::{HopClient, HOP_FROM, HOP_HOST};
pub use keys_api::KeyAdmin;
use limiter::Limiters;
use recorder::Recorder;
pub use responses::Body;
use responses::{error, full, read_body, undelivered};
use routes::Routes;

pub const HOST_VERSION: &str = concat!("4.0.0-strom.", env!("CARGO_PKG_VERSION"));

#[derive(Debug, Clone)]
pub struct GatewayConfig {
    /// This node (its own placements are served locally, without a hop).
    pub node_id: NodeId,
    pub max_body_bytes: usize,
    pub max_url_bytes: usize,
    /// How long a request waits for a first Ready instance (cold start).
    pub cold_start_timeout: Duration,
    /// The function port's TLS, when the node has an identity.
    pub tls: Option<Arc<rustls::ServerConfig>>,
    /// The node's client identity for the hop (mutual TLS between nodes).
    pub hop_tls: Option<rustls::ClientConfig>,
    /// The proof of membership hops carry, and that hop metadata must come with.
    pub secret: ClusterSecret,
    /// Timeouts and the connection limit of the port.
    pub http: listener::HttpLimits,
    /// Where the key management API's writes go.
    pub key_admin: KeyAdminHandle,
    /// `/healthz` and `/readyz` (the node's checks; none: always ready).
    pub health: Option<Arc<strom_control_plane::health::Health>>,
    /// Where the RabbitMQ consumers say how they fare (the worker's heartbeats
    /// carry it).
    pub triggers: consumers::TriggerBoard,
}

/// This node's [`KeyAdmin`], if it has one.
#[derive(Clone, Default)]
pub struct KeyAdminHandle(pub Option<Arc<dyn KeyAdmin>>);

impl std::fmt::Debug for KeyAdminHandle {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(if self.0.is_some() { "KeyAdmin" } else { "none" })
    }
}

impl Default for GatewayConfig {
    fn default() -> Self {
        GatewayConfig {
            node_id: 0,
            max_body_bytes: 100 * 1024 * 1024,
            max_url_bytes: 4096,
            cold_start_timeout: Duration::from_secs(60),
            tls: None,
            hop_tls: None,
            secret: ClusterSecret::default(),
            http: listener::HttpLimits::default(),
            key_admin: KeyAdminHandle::default(),
            health: None,
            triggers: consumers::TriggerBoard::default(),
        }
    }
}

struct Inner {
    config: GatewayConfig,
    /// This node's Ready instances (from its worker role; empty without one).
    routing: RoutingTable,
    /// The node's view of the cluster (changes wake requests waiting for one).
    view: watch::Receiver<Arc<WorkerView>>,
    /// The cluster's routes, built from `view`.
    routes: Routes,
    hop: HopClient,
    limiters: Limiters,
    /// Rotates ties between equal instances.
    tick: AtomicU64,
    /// `strom_gateway_responses_total`.
    responses: ResponseCounters,
    recorder: Recorder,
    /// This node's invocation records (answered to management nodes asking).
    invocations: InvocationStore,
    /// Timer runs started here, by invocation id (each runs once per node).
    timer_runs: timer_run::TimerRuns,
    /// Publishes functions' RabbitMQ outputs (a connection per broker).
    publisher: strom_messaging::Publisher,
    /// When the gateway started (the host status's `processUptime`).
    started: tokio::time::Instant,
    /// Stops the recorder once the port has closed.
    stop: CancellationToken,
    background: std::sync::Mutex<Vec<tokio::task::JoinHandle<()>>>,
}

/// `strom_gateway_responses_total` by status code, each counter registered the
/// first time its code is answered (a request pays one atomic add).
struct ResponseCounters(Box<[std::sync::OnceLock<metrics::Counter>]>);

impl Default for ResponseCounters {
    fn default() -> Self {
        ResponseCounters((100..600).map(|_| std::sync::OnceLock::new()).collect())
    }
}

impl ResponseCounters {
    fn count(&self, status: StatusCode) {
        let code = status.as_u16();
        if let Some(slot) = self.0.get(usize::from(code).wrapping_sub(100)) {
            slot.get_or_init(
                || metrics::counter!("strom_gateway_responses_total", "code" => code.to_string()),
            )
            .increment(1);
        }
    }
}

/// Cheap to clone.
#[derive(Clone)]
pub struct Gateway {
    inner: Arc<Inner>,
}

impl Gateway {
    pub fn new(
        config: GatewayConfig,
        routing: RoutingTable,
        view: watch::Receiver<Arc<WorkerView>>,
        invocations: InvocationStore,
    ) -> Self {
        let stop = CancellationToken::new();
        let routes = Routes::new(view.clone());
        let (recorder, recording) = Recorder::start(invocations.clone(), stop.clone());
        Gateway {
            inner: Arc::new(Inner {
                hop: HopClient::new(config.hop_tls.clone(), config.secret.clone()),
                config,
                routing,
                view,
                routes,
                limiters: Limiters::default(),
                tick: AtomicU64::new(0),
                responses: ResponseCounters::default(),
                recorder,
                invocations,
                timer_runs: timer_run::TimerRuns::default(),
                publisher: strom_messaging::Publisher::default(),
                started: tokio::time::Instant::now(),
                stop,
                background: std::sync::Mutex::new(vec![recording]),
            }),
        }
    }

    /// Serve the function port on `listener` until `cancel`; in-flight requests
    /// finish, their records are written, then the background tasks stop.
    pub async fn serve(self, listener: tokio::net::TcpListener, cancel: CancellationToken) {
        let tls = self
            .inner
            .config
            .tls
            .clone()
            .map(tokio_rustls::TlsAcceptor::from);
        let consumers = tokio::spawn(self.clone().run_consumers());
        self.inner
            .background
            .lock()
            .expect("tasks lock")
            .push(consumers);
        listener::accept(self.clone(), listener, tls, cancel).await;
        self.inner.stop.cancel();
        let tasks = std::mem::take(&mut *self.inner.background.lock().expect("tasks lock"));
        for task in tasks {
            let _ = task.await;
        }
    }

    /// A request's head and whole body within the port's limits (size, idle
    /// time), or the refusal to answer.
    async fn whole_request<B>(
        &self,
        req: Request<B>,
    ) -> Result<(hyper::http::request::Parts, Bytes), Response<Body>>
    where
        B: hyper::body::Body<Data = Bytes> + Send,
        B::Error: Into<responses::BoxError>,
    {
        let (parts, body) = req.into_parts();
        let config = &self.inner.config;
        let http2 = parts.version == hyper::Version::HTTP_2;
        let body = read_body(body, config.max_body_bytes, config.http.body_read, http2).await?;
        Ok((parts, body))
    }

    fn limits(&self) -> Limits {
        Limits {
            max_url_bytes: self.inner.config.max_url_bytes,
            max_body_bytes: self.inner.config.max_body_bytes,
        }
    }

    /// Whether hop metadata on a request is another node's: its connection
    /// presented a node certificate (mutual TLS), or the request shows the
    /// cluster's proof (a cluster of the previous protocol sends none).
    fn hop_trusted(&self, proof: Option<&hyper::header::HeaderValue>, node_cert: bool) -> bool {
        if node_cert {
            return true;
        }
        let shown = internal_auth::check(&self.inner.config.secret, proof.map(|v| v.as_bytes()));
        shown == internal_auth::Shown::Valid
            || internal_auth::admits(
                shown,
                internal_auth::required_at(self.inner.view.borrow().protocol),
            )
    }

    /// `GET /metrics` on the function port.
    fn metrics<B>(
        &self,
        req: &Request<B>,
        proof: Option<&hyper::header::HeaderValue>,
        node_cert: bool,
    ) -> Response<Body> {
        let admin = self.inner.config.key_admin.0.clone();
        let (status, extra, body) = strom_control_plane::metrics::answer(
            req.headers(),
            proof,
            &self.inner.config.secret,
            node_cert,
            &|t| admin.as_ref().and_then(|a| a.is_admin_token(t)) == Some(true),
        );
        let body = if req.method() == hyper::Method::HEAD {
            Bytes::new()
        } else {
            Bytes::from(body)
        };
        let mut resp = Response::new(full(body));
        *resp.status_mut() = status;
        resp.headers_mut().extend(extra);
        resp
    }

    /// Every request starts here. `node_cert`: its connection presented a
    /// certificate the cluster CA signed.
    async fn handle(&self, req: Request<Incoming>, node_cert: bool) -> Response<Body> {
        let response = self.route(req, node_cert).await;
        self.inner.responses.count(response.status());
        response
    }

    async fn route(&self, mut req: Request<Incoming>, node_cert: bool) -> Response<Body> {
        // The proof never reaches a handler; hop metadata from anyone but another
        // node is dropped, so a client reaches only what it could without it.
        let proof = req.headers_mut().remove(internal_auth::PROOF_METADATA);
        // Nor the portal's session cookie, which a browser sends to every port.
        strom_control_plane::portal::session::strip_from(req.headers_mut());
        if req.headers().contains_key(HOP_APP) && !self.hop_trusted(proof.as_ref(), node_cert) {
            for name in [HOP_APP, HOP_HOST, HOP_FROM, timer_run::HOP_TIMER] {
                req.headers_mut().remove(name);
            }
        }
        let hop_app = req.headers().get(HOP_APP).map(|v| {
            v.to_str()
                .ok()
                .and_then(|a| AppName::parse(a).ok())
                .ok_or(())
        });
        if hop_app.is_some() {
            // Sent by another node's gateway, with the Host the client used
            // (HTTP/2 carried it as the hop's own).
            if let Some(host) = req.headers_mut().remove(HOP_HOST) {
                req.headers_mut().insert(hyper::header::HOST, host);
            }
        }
        // Health requests for load balancers: no key, before any routing (a
        // client's `/healthz` never reaches an app).
        if hop_app.is_none() {
            if let Some(health) = &self.inner.config.health {
                if let Some((status, body)) = health.answer(
                    req.method(),
                    req.uri().path(),
                    strom_control_plane::health::FUNCTION_PORT_CHECKS,
                ) {
                    let head = req.method() == hyper::Method::HEAD;
                    let mut resp = Response::new(full(if head {
                        Bytes::new()
                    } else {
                        Bytes::from(body)
                    }));
                    *resp.status_mut() = status;
                    resp.headers_mut().insert(
                        hyper::header::CONTENT_TYPE,
                        hyper::header::HeaderValue::from_static("application/json"),
                    );
                    resp.headers_mut().insert(
                        hyper::header::CACHE_CONTROL,
                        hyper::header::HeaderValue::from_static("no-store"),
                    );
                    return resp;
                }
            }
        }
        // Prometheus (the metrics token, or the admin token where this node can
        // check it).
        if hop_app.is_none()
            && req.uri().path() == strom_control_plane::metrics::PATH
            && matches!(*req.method(), hyper::Method::GET | hyper::Method::HEAD)
        {
            return self.metrics(&req, proof.as_ref(), node_cert);
        }
        // A management node asking for this node's invocation records (`strom fn
        // logs` across the cluster): other nodes only, like hop metadata.
        if req.uri().path() == strom_control_plane::cluster_invocations::PEER_PATH {
            if !self.hop_trusted(proof.as_ref(), node_cert) || proof.is_none() && !node_cert {
                return error(
                    StatusCode::NOT_FOUND,
                    "NotFound",
                    format!("no function at {}", req.uri().path()),
                );
            }
            return match strom_control_plane::cluster_invocations::from_query_string(
                req.uri().query().unwrap_or(""),
            ) {
                Ok(query) => {
                    let records: Vec<_> = self
                        .inner
                        .invocations
                        .query(&query)
                        .iter()
                        .map(|r| (**r).clone())
                        .collect();
                    responses::json(StatusCode::OK, &serde_json::json!(records))
                }
                Err(e) => error(StatusCode::BAD_REQUEST, "BadRequest", e),
            };
        }
        // A timer run another node's leader sends (trusted hop metadata only).
        if let Some(Ok(app)) = &hop_app {
            if req.headers().contains_key(timer_run::HOP_TIMER) {
                return self.serve_timer_run(req, app.clone()).await;
            }
        }
        let query: Vec<(String, String)> = req
            .uri()
            .query()
            .map(|q| form_urlencoded::parse(q.as_bytes()).into_owned().collect())
            .unwrap_or_default();
        let header = |name| req.headers().get(name).and_then(|v| v.to_str().ok());
        let head = Head {
            method: req.method().as_str(),
            path: req.uri().path(),
            uri_len: req
                .uri()
                .path_and_query()
                .map(|p| p.as_str().len())
                .unwrap_or(0),
            host: header(hyper::header::HOST.as_str()).unwrap_or(""),
            key_header: header("x-functions-key"),
            authorization: header(hyper::header::AUTHORIZATION.as_str()),
            query: &query,
            content_length: header(hyper::header::CONTENT_LENGTH.as_str())
                .and_then(|v| v.parse::<u64>().ok()),
            origin: match &hop_app {
                Some(app) => Origin::Peer(app.as_ref().map_err(|_| ())),
                None => Origin::Client,
            },
        };
        let decision = admission::admit(
            &head,
            &self.inner.routing.load(),
            &self.inner.routes.load(),
            self.limits(),
        );
        let from_gateway = hop_app.is_some();
        match decision {
            Decision::Ping => Response::new(full(Bytes::new())),
            Decision::Refuse(r) => {
                // An HTTP/2 client still sending a body too large gets the 413, not
                // a stream reset: the rest is read and dropped first (bounded).
                if r.status == StatusCode::PAYLOAD_TOO_LARGE
                    && req.version() == hyper::Version::HTTP_2
                {
                    responses::discard(req.into_body()).await;
                }
                let mut resp = error(r.status, r.code, r.message);
                if let Some(allow) = r.allow.and_then(|a| a.parse().ok()) {
                    resp.headers_mut().insert(hyper::header::ALLOW, allow);
                }
                resp
            }
            Decision::Undelivered(app) => undelivered(&app),
            Decision::Local(target) => {
                let trace = self.incoming_trace(&req, &target.app, Some(&target.function));
                trace.attach(req.extensions_mut());
                let response = self.invoke(req, query, target, !from_gateway).await;
                trace.end_http(response.status());
                response
            }
            Decision::AdminInvoke(target) => {
                let trace = self.incoming_trace(&req, &target.app, Some(&target.function));
                trace.attach(req.extensions_mut());
                let response = self.admin_invoke(req, target, !from_gateway).await;
                trace.end_http(response.status());
                response
            }
            Decision::HostStatus(app) => self.host_status(&app),
            Decision::Keys(target) => self.keys(req, target).await,
            Decision::Remote(app) => {
                let trace = self.incoming_trace(&req, &app, None);
                trace.attach(req.extensions_mut());
                let response = self.remote(req, app).await;
                trace.end_http(response.status());
                response
            }
        }
    }

    /// The `gateway` span of a request for a function (a child of the caller's
    /// or the sending node's `traceparent`).
    fn incoming_trace<B>(&self, req: &Request<B>, app: &AppName, function: Option<&str>) -> Trace {
        if !strom_control_plane::traces::enabled() {
            return Trace::incoming(req.headers(), "gateway", Vec::new());
        }
        let mut attributes = vec![
            crate::traces::node(self.inner.config.node_id),
            KeyValue::new("strom.app", app.to_string()),
            KeyValue::new("http.request.method", req.method().to_string()),
            KeyValue::new("url.path", req.uri().path().to_string()),
        ];
        if let Some(f) = function {
            attributes.push(KeyValue::new("faas.name", f.to_string()));
        }
        Trace::incoming(req.headers(), "gateway", attributes)
    }

    /// How the admin API asks other workers for their invocation records.
    pub fn peer_invocations(
        &self,
    ) -> Arc<dyn strom_control_plane::cluster_invocations::PeerInvocations> {
        Arc::new(PeerRecords(self.clone()))
    }

    /// The gateway's readiness: a route table is loaded, and every app it routes
    /// (with HTTP functions, not scaled to 0 on purpose) is placed on a worker that
    /// is up or has a Ready instance here.
    pub fn readiness(&self) -> strom_control_plane::health::Check {
        use strom_control_plane::health::Check;
        let view = self.inner.view.borrow().clone();
        if view.cluster_id.is_empty() || view.applied_index == 0 {
            return Check::not_ready("no route table yet (the cluster's state has not arrived)");
        }
        if view
            .workers
            .get(&self.inner.config.node_id)
            .is_some_and(|w| w.draining)
        {
            return Check::not_ready(
                "this worker is draining (`strom node drain`): its instances move to other workers",
            );
        }
        let local = self.inner.routing.load();
        let mut unreachable = Vec::new();
        let mut routed = 0;
        for (name, app) in &view.apps {
            let http = app
                .manifest
                .functions
                .iter()
                .any(|f| matches!(f.trigger, strom_proto::manifest::Trigger::Http(_)));
            if !http || app.scaled_to_zero {
                continue;
            }
            routed += 1;
            let here = local
                .apps
                .get(name)
                .is_some_and(|a| !a.endpoints.is_empty());
            let up = app
                .placements
                .iter()
                .any(|(node, n)| *n > 0 && view.workers.get(node).is_some_and(|w| w.up));
            if !here && !up {
                unreachable.push(name.to_string());
            }
        }
        if unreachable.is_empty() {
            Check::ready(format!(
                "routes {routed} app(s) at log index {}",
                view.applied_index
            ))
        } else {
            Check::not_ready(format!(
                "no worker that is up runs (or none could be placed for) {}",
                unreachable.join(", ")
            ))
        }
    }

    /// A request for an app with no Ready instance here: over the hop, or (when
    /// this node runs the app but nobody else could take it) served here once its
    /// own instance is Ready.
    async fn remote(&self, req: Request<Incoming>, app: AppName) -> Response<Body> {
        // The hop needs the whole body (it may be sent more than once).
        let (parts, body) = match self.whole_request(req).await {
            Ok(r) => r,
            Err(refused) => return refused,
        };
        match self.proxy(&app, &parts, &body).await {
            Ok(response) => response,
            Err(()) => {
                let req = Request::from_parts(parts, Full::new(body));
                let query: Vec<(String, String)> = req
                    .uri()
                    .query()
                    .map(|q| form_urlencoded::parse(q.as_bytes()).into_owned().collect())
                    .unwrap_or_default();
                let header = |name| req.headers().get(name).and_then(|v| v.to_str().ok());
                let head = Head {
                    method: req.method().as_str(),
                    path: req.uri().path(),
                    uri_len: 0,
                    host: header(hyper::header::HOST.as_str()).unwrap_or(""),
                    key_header: header("x-functions-key"),
                    authorization: header(hyper::header::AUTHORIZATION.as_str()),
                    query: &query,
                    content_length: None,
                    origin: Origin::Here,
                };
                match admission::admit(
                    &head,
                    &self.inner.routing.load(),
                    &self.inner.routes.load(),
                    self.limits(),
                ) {
                    Decision::Local(target) => self.invoke(req, query, target, true).await,
                    Decision::AdminInvoke(target) => self.admin_invoke(req, target, true).await,
                    Decision::Refuse(r) => error(r.status, r.code, r.message),
                    _ => error(
                        StatusCode::SERVICE_UNAVAILABLE,
                        "Unavailable",
                        format!("app `{app}` cannot be served here"),
                    ),
                }
            }
        }
    }
}

/// Another worker's invocation records, through its function port (the hop's
/// client: TLS and the cluster's proof).
struct PeerRecords(Gateway);

#[async_trait::async_trait]
impl strom_control_plane::cluster_invocations::PeerInvocations for PeerRecords {
    async fn fetch(
        &self,
        http_addr: &str,
        query: &strom_proto::invocations::Query,
    ) -> Result<Vec<strom_proto::invocations::InvocationRecord>, String> {
        let path = format!(
            "{}?{}",
            strom_control_plane::cluster_invocations::PEER_PATH,
            strom_control_plane::cluster_invocations::to_query_string(query)
        );
        let body = self.0.inner.hop.get_internal(http_addr, &path).await?;
        serde_json::from_slice(&body)
            .map_err(|e| format!("{http_addr}: not a list of invocation records: {e}"))
    }
}
