//! The internal hop: a request this node cannot serve goes to a worker that runs
//! the app, over HTTP/2 (prior knowledge, or ALPN over mutual TLS), one pooled
//! multiplexed connection per peer, least outstanding requests first (ties
//! rotate), peers that recently refused a connection last (passive health). The
//! receiving gateway serves it locally only, or answers "undelivered".
//!
//! What to do after a hop failed is a pure function of what happened and the
//! method ([`after_hop`]): a request that provably never reached a handler
//! (connection refused, "undelivered") goes to the next worker; one whose hop
//! broke after sending goes to the next worker only when its method is
//! idempotent (RFC 9110 §9.2.2, as a reverse proxy retries it), else it fails
//! (502). An idempotent request's small answer is read whole before it is
//! relayed ([`read_whole`]), so a peer that dies mid-answer is retried too.
//! Keepalive pings (1 s, 2 s timeout) notice a peer that died, froze or was cut
//! off. In memory only.

use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, RwLock};
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::header::HeaderValue;
use hyper::http::request::Parts;
use hyper::{Request, Response, StatusCode};
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use opentelemetry::trace::SpanKind;
use opentelemetry::KeyValue;
use strom_proto::ids::{AppName, NodeId};
use strom_proto::worker_view::Peer;
use tokio::time::Instant;

use strom_control_plane::internal_auth::{ClusterSecret, PROOF_METADATA};

use super::admission::HOP_APP;
use super::responses::{bad_request, error, unavailable, Body, UNDELIVERED};
use super::translate::{copy_request, relay_response};
use super::Gateway;
use crate::traces::Trace;

/// Header naming the node a hop request comes from.
pub const HOP_FROM: &str = "x-strom-hop-from";
/// Header carrying the client's Host over the hop.
pub const HOP_HOST: &str = "x-strom-hop-host";
/// How long a peer that refused a connection is tried last.
const PEER_BACKOFF: Duration = Duration::from_secs(2);

/// How one attempt over the hop ended.
pub enum Hop {
    Answered(Response<Body>),
    /// The peer had no Ready instance; no handler saw the request.
    Undelivered,
    /// The connection was refused; no handler saw the request.
    Refused,
    /// The connection broke after the request was sent (the peer died, froze or
    /// was cut off): a handler may have seen it.
    Broken(String),
}

/// Answers up to this size are read whole before they are relayed.
const READ_WHOLE: u64 = 1 << 20;

/// Whether to read a hop's answer whole before relaying it: for a request that may
/// be sent again (idempotent) with a declared body of at most [`READ_WHOLE`], so a
/// peer that dies after its headers (the answer cut off mid-body) is a broken hop,
/// retried on another worker, and not a failed request. Larger or streamed answers
/// are relayed as they come.
pub fn read_whole(idempotent: bool, content_length: Option<u64>) -> bool {
    idempotent && content_length.is_some_and(|n| n <= READ_WHOLE)
}

/// What to do after an attempt that did not answer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Next {
    /// Try the next worker (marking this one unhealthy for a while, or not).
    TryAnother { mark_unhealthy: bool },
    /// Answer 502: a handler may have run it.
    Fail,
}

/// The retry choice after a failed attempt, from what happened and the method.
pub fn after_hop(hop: &Hop, idempotent: bool) -> Next {
    match hop {
        Hop::Answered(_) => Next::Fail,
        Hop::Undelivered => Next::TryAnother {
            mark_unhealthy: false,
        },
        Hop::Refused => Next::TryAnother {
            mark_unhealthy: true,
        },
        Hop::Broken(_) if idempotent => Next::TryAnother {
            mark_unhealthy: true,
        },
        Hop::Broken(_) => Next::Fail,
    }
}

/// What ranking a peer needs to know of it.
#[derive(Debug, Clone, Copy)]
pub struct PeerLoad {
    /// Refused a connection recently.
    pub sick: bool,
    /// Requests this gateway has in flight there.
    pub outstanding: usize,
}

/// Workers (not `me`, not already tried, Up) that run an app, best first: healthy
/// before sick, then least outstanding; ties rotate with `tick`.
pub fn rank_peers(
    placements: &BTreeMap<NodeId, u32>,
    workers: &BTreeMap<NodeId, Peer>,
    me: NodeId,
    tried: &[NodeId],
    load: impl Fn(NodeId) -> PeerLoad,
    tick: u64,
) -> Vec<(NodeId, String)> {
    let n = (placements.len() as u64).max(1);
    let mut peers: Vec<(bool, usize, u64, NodeId, String)> = placements
        .keys()
        .filter(|id| **id != me && !tried.contains(id))
        .filter_map(|id| {
            let w = workers.get(id).filter(|w| w.up)?;
            let l = load(*id);
            Some((
                l.sick,
                l.outstanding,
                id.wrapping_add(tick) % n,
                *id,
                w.http_addr.clone(),
            ))
        })
        .collect();
    peers.sort();
    peers.into_iter().map(|p| (p.3, p.4)).collect()
}

/// How long a hop connection (TCP and, between nodes with TLS, the handshake)
/// may take: a frozen peer accepts TCP (its kernel does) and never answers a
/// ClientHello.
const CONNECT_DEADLINE: Duration = Duration::from_secs(5);

/// A connector whose connections have [`CONNECT_DEADLINE`]. (Not tower's
/// `Timeout`: its future is not `Unpin`, which hyper-util's connectors must be.)
#[derive(Clone)]
pub struct ConnectDeadline<C>(C);

impl<C> tower_service::Service<hyper::Uri> for ConnectDeadline<C>
where
    C: tower_service::Service<hyper::Uri> + Send,
    C::Future: Send + 'static,
    C::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    type Response = C::Response;
    type Error = Box<dyn std::error::Error + Send + Sync>;
    type Future = std::pin::Pin<
        Box<dyn std::future::Future<Output = Result<C::Response, Self::Error>> + Send>,
    >;

    fn poll_ready(
        &mut self,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Result<(), Self::Error>> {
        self.0.poll_ready(cx).map_err(Into::into)
    }

    fn call(&mut self, uri: hyper::Uri) -> Self::Future {
        let connecting = self.0.call(uri);
        Box::pin(async move {
            match tokio::time::timeout(CONNECT_DEADLINE, connecting).await {
                Ok(r) => r.map_err(Into::into),
                Err(_) => Err(format!("no connection within {CONNECT_DEADLINE:?}").into()),
            }
        })
    }
}

/// The hop's connections and what this gateway knows of each peer.
pub struct HopClient {
    client: Client<ConnectDeadline<hyper_rustls::HttpsConnector<HttpConnector>>, Full<Bytes>>,
    scheme: &'static str,
    outstanding: RwLock<HashMap<NodeId, Arc<AtomicUsize>>>,
    unhealthy: RwLock<HashMap<NodeId, Instant>>,
    tick: AtomicU64,
    /// Shown to the peer: its gateway trusts hop metadata only with it.
    secret: ClusterSecret,
    /// `strom_gateway_hops_total` by outcome: answered, undelivered, refused, broken.
    outcomes: [metrics::Counter; 4],
}

impl HopClient {
    /// `tls`: the node's client identity (mutual TLS to other nodes), if any.
    pub fn new(tls: Option<rustls::ClientConfig>, secret: ClusterSecret) -> HopClient {
        let scheme = if tls.is_some() { "https" } else { "http" };
        let mut connector = HttpConnector::new();
        connector.set_nodelay(true);
        connector.set_connect_timeout(Some(Duration::from_secs(2)));
        connector.enforce_http(false);
        let connector = hyper_rustls::HttpsConnectorBuilder::new()
            .with_tls_config(tls.unwrap_or_else(strom_control_plane::tls::plain_http_only))
            .https_or_http()
            .enable_http2()
            .wrap_connector(connector);
        // Keepalive pings drop a connection to a peer that vanished (power loss,
        // partition) within seconds; requests then go elsewhere.
        let client = Client::builder(TokioExecutor::new())
            .http2_only(true)
            .http2_keep_alive_interval(Duration::from_secs(1))
            .http2_keep_alive_timeout(Duration::from_secs(2))
            .http2_keep_alive_while_idle(true)
            .timer(hyper_util::rt::TokioTimer::new())
            .pool_timer(hyper_util::rt::TokioTimer::new())
            .pool_idle_timeout(Duration::from_secs(90))
            .build(ConnectDeadline(connector));
        let outcome =
            |o: &'static str| metrics::counter!("strom_gateway_hops_total", "outcome" => o);
        HopClient {
            client,
            scheme,
            secret,
            outcomes: [
                outcome("answered"),
                outcome("undelivered"),
                outcome("refused"),
                outcome("broken"),
            ],
            outstanding: RwLock::new(HashMap::new()),
            unhealthy: RwLock::new(HashMap::new()),
            tick: AtomicU64::new(0),
        }
    }

    fn load(&self, now: Instant) -> impl Fn(NodeId) -> PeerLoad + '_ {
        let unhealthy = self.unhealthy.read().expect("health lock").clone();
        move |id| PeerLoad {
            sick: unhealthy.get(&id).is_some_and(|until| *until > now),
            outstanding: self
                .outstanding
                .read()
                .expect("outstanding lock")
                .get(&id)
                .map(|c| c.load(Ordering::Relaxed))
                .unwrap_or(0),
        }
    }

    pub(super) fn mark_unhealthy(&self, peer: NodeId) {
        self.unhealthy
            .write()
            .expect("health lock")
            .insert(peer, Instant::now() + PEER_BACKOFF);
    }

    fn counter(&self, peer: NodeId) -> Arc<AtomicUsize> {
        if let Some(c) = self
            .outstanding
            .read()
            .expect("outstanding lock")
            .get(&peer)
        {
            return c.clone();
        }
        self.outstanding
            .write()
            .expect("outstanding lock")
            .entry(peer)
            .or_default()
            .clone()
    }

    /// One attempt: send to `peer` at `addr` (`host:port`).
    /// `GET path` on another node's function port, as a node (its proof; mutual
    /// TLS with an identity): the body of a 200, or why not. At most 10 MiB.
    pub(super) async fn get_internal(&self, addr: &str, path: &str) -> Result<Bytes, String> {
        let mut request = hyper::Request::get(format!("{}://{addr}{path}", self.scheme));
        if let Some(proof) = self.secret.proof() {
            request = request.header(PROOF_METADATA, &*proof);
        }
        let request = request
            .body(Full::new(Bytes::new()))
            .map_err(|e| e.to_string())?;
        let resp = self
            .client
            .request(request)
            .await
            .map_err(|e| format!("{addr}: {e}"))?;
        let status = resp.status();
        let body = http_body_util::Limited::new(resp.into_body(), 10 * 1024 * 1024)
            .collect()
            .await
            .map_err(|e| format!("{addr}: reading the answer: {e}"))?
            .to_bytes();
        if !status.is_success() {
            return Err(format!(
                "{addr} answered {status}: {}",
                String::from_utf8_lossy(&body[..body.len().min(300)])
            ));
        }
        Ok(body)
    }

    /// Count a hop's outcome (`strom_gateway_hops_total`).
    pub(super) fn count(&self, hop: &Hop) {
        let i = match hop {
            Hop::Answered(_) => 0,
            Hop::Undelivered => 1,
            Hop::Refused => 2,
            Hop::Broken(_) => 3,
        };
        self.outcomes[i].increment(1);
    }

    pub(super) async fn send(
        &self,
        me: NodeId,
        app: &AppName,
        peer: NodeId,
        addr: &str,
        parts: &Parts,
        body: &Bytes,
    ) -> Hop {
        // HTTP/2 carries the authority itself: no Host header.
        let client_host = parts
            .headers
            .get(hyper::header::HOST)
            .cloned()
            .or_else(|| {
                parts
                    .uri
                    .authority()
                    .and_then(|a| HeaderValue::from_str(a.as_str()).ok())
            })
            .unwrap_or_else(|| HeaderValue::from_static("localhost"));
        let mut request = copy_request(
            parts,
            &format!("{}://{addr}", self.scheme),
            &hyper::header::HOST,
        )
        .header(HOP_APP, app.as_str())
        .header(HOP_FROM, me.to_string())
        .header(HOP_HOST, client_host);
        if let Some(proof) = self.secret.proof() {
            request = request.header(PROOF_METADATA, &*proof);
        }
        let mut request = match request.body(Full::new(body.clone())) {
            Ok(r) => r,
            Err(e) => {
                return Hop::Answered(bad_request(format!("the request cannot be forwarded: {e}")))
            }
        };
        let span = match parts.extensions.get::<Trace>() {
            Some(t @ Trace::On(_)) => t.child(
                "hop",
                SpanKind::Client,
                vec![
                    crate::traces::node(me),
                    KeyValue::new("strom.peer", peer as i64),
                    KeyValue::new("strom.app", app.to_string()),
                ],
            ),
            Some(t) => t.clone(),
            None => Trace::None,
        };
        span.inject(request.headers_mut());
        let hop = self.exchange(request, peer, addr, parts).await;
        span.end(match &hop {
            Hop::Answered(r) if r.status().is_server_error() => Some(r.status().to_string()),
            Hop::Answered(_) => None,
            Hop::Undelivered => Some("no instance there".into()),
            Hop::Refused => Some("connection refused".into()),
            Hop::Broken(why) => Some(why.clone()),
        });
        hop
    }

    async fn exchange(
        &self,
        request: Request<Full<Bytes>>,
        peer: NodeId,
        addr: &str,
        parts: &Parts,
    ) -> Hop {
        let counter = self.counter(peer);
        counter.fetch_add(1, Ordering::AcqRel);
        let guard = PeerInFlight(counter);
        match self.client.request(request).await {
            Ok(resp) if resp.headers().contains_key(UNDELIVERED) => Hop::Undelivered,
            Ok(resp) => {
                let length = resp
                    .headers()
                    .get(hyper::header::CONTENT_LENGTH)
                    .and_then(|v| v.to_str().ok())
                    .and_then(|v| v.parse::<u64>().ok());
                if !read_whole(parts.method.is_idempotent(), length) {
                    return Hop::Answered(relay_response(resp, parts.version, guard));
                }
                // Read before relaying: a peer that dies mid-body is a broken hop
                // (sent again), not a broken answer to the client.
                let (head, body) = resp.into_parts();
                match body.collect().await {
                    Ok(b) => Hop::Answered(relay_response(
                        Response::from_parts(head, Full::new(b.to_bytes())),
                        parts.version,
                        guard,
                    )),
                    Err(e) => Hop::Broken(format!(
                        "forwarding to node {peer} failed while reading the answer: {e}"
                    )),
                }
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
}

/// A request in flight on a peer; counted until dropped.
struct PeerInFlight(Arc<AtomicUsize>);

impl Drop for PeerInFlight {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::AcqRel);
    }
}

impl Gateway {
    /// Send a request over the hop to a worker running `app`. `Err(())`: serve it
    /// locally instead (this node runs the app: it waits for its own instance
    /// like a cold start).
    pub(super) async fn proxy(
        &self,
        app: &AppName,
        parts: &Parts,
        body: &Bytes,
    ) -> Result<Response<Body>, ()> {
        let inner = &self.inner;
        let me = inner.config.node_id;
        let deadline = Instant::now() + inner.config.cold_start_timeout;
        loop {
            // The signals first, then the routes: a change after this look wakes the
            // wait below (a clone of the gateway's receiver would count every change
            // since the gateway started as new, and the wait would spin).
            let local = inner.routing.changed();
            let mut view = inner.view.clone();
            view.mark_unchanged();
            let routes = inner.routes.load();
            let placements = routes.apps.get(app).map(|a| &a.placements);
            let mut tried: Vec<NodeId> = Vec::new();
            while let Some((peer, addr)) = placements.and_then(|p| {
                let tick = inner.hop.tick.fetch_add(1, Ordering::Relaxed);
                rank_peers(
                    p,
                    &routes.workers,
                    me,
                    &tried,
                    inner.hop.load(Instant::now()),
                    tick,
                )
                .into_iter()
                .next()
            }) {
                tried.push(peer);
                let hop = inner.hop.send(me, app, peer, &addr, parts, body).await;
                inner.hop.count(&hop);
                let next = after_hop(&hop, parts.method.is_idempotent());
                match (hop, next) {
                    (Hop::Answered(r), _) => return Ok(r),
                    (hop, Next::TryAnother { mark_unhealthy }) => {
                        if mark_unhealthy {
                            inner.hop.mark_unhealthy(peer);
                        }
                        if let Hop::Broken(why) = &hop {
                            tracing::debug!(peer, "{why}; idempotent, trying another worker");
                        }
                    }
                    (hop, Next::Fail) => {
                        inner.hop.mark_unhealthy(peer);
                        let why = match hop {
                            Hop::Broken(why) => why,
                            _ => "the hop failed".into(),
                        };
                        return Ok(error(StatusCode::BAD_GATEWAY, "BadGateway", why));
                    }
                }
            }
            // Nobody else could take it: this node runs the app and waits for its
            // own instance like a cold start. (Placed here but not started yet — the
            // package is still being fetched — keeps looking until it is.)
            if inner.routing.load().apps.contains_key(app) {
                return Err(());
            }
            if Instant::now() >= deadline {
                return Ok(unavailable(format!(
                    "no instance of app `{app}` became ready in time"
                )));
            }
            // Cold start somewhere else: look again after a local change, a new
            // view, or a short pause (not a tight loop of hops).
            tokio::select! {
                _ = local => {}
                _ = view.changed() => {}
                _ = tokio::time::sleep(Duration::from_millis(200)) => {}
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A hop to a frozen peer (TCP accepted, TLS never answered) gives up.
    #[tokio::test(start_paused = true)]
    async fn a_hop_connection_to_a_frozen_peer_has_a_deadline() {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let uri: hyper::Uri = format!(
            "https://127.0.0.1:{}",
            listener.local_addr().unwrap().port()
        )
        .parse()
        .unwrap();
        let mut roots = rustls::RootCertStore::empty();
        let _ = roots.add(rustls::pki_types::CertificateDer::from(vec![0u8]));
        let tls = rustls::ClientConfig::builder_with_provider(Arc::new(
            rustls::crypto::ring::default_provider(),
        ))
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth();
        let mut http = HttpConnector::new();
        http.enforce_http(false);
        let connector = hyper_rustls::HttpsConnectorBuilder::new()
            .with_tls_config(tls)
            .https_or_http()
            .enable_http2()
            .wrap_connector(http);
        let mut deadline = ConnectDeadline(connector);
        let outcome = tokio::time::timeout(
            Duration::from_secs(600),
            tower_service::Service::call(&mut deadline, uri),
        )
        .await;
        let Ok(Err(e)) = outcome else {
            panic!("the connect did not end on its own");
        };
        assert!(e.to_string().contains("no connection within"), "{e}");
    }

    fn peer(addr: &str, up: bool) -> Peer {
        Peer {
            http_addr: addr.into(),
            up,
            draining: false,
        }
    }

    #[test]
    fn peers_rank_healthy_then_least_loaded_and_skip_me_down_and_tried() {
        let placements = BTreeMap::from([(1, 1), (2, 1), (3, 1), (4, 1), (5, 1)]);
        let workers = BTreeMap::from([
            (1, peer("a:1", true)),
            (2, peer("b:1", true)),
            (3, peer("c:1", false)),
            (4, peer("d:1", true)),
            (5, peer("e:1", true)),
        ]);
        let load = |id| PeerLoad {
            sick: id == 2,
            outstanding: if id == 4 { 3 } else { 0 },
        };
        let ranked = rank_peers(&placements, &workers, 1, &[5], load, 0);
        assert_eq!(
            ranked,
            vec![(4, "d:1".to_string()), (2, "b:1".to_string())],
            "healthy first, then sick; me, Down and tried workers never"
        );
    }

    #[test]
    fn equal_peers_take_turns() {
        let placements = BTreeMap::from([(2, 1), (3, 1)]);
        let workers = BTreeMap::from([(2, peer("b:1", true)), (3, peer("c:1", true))]);
        let idle = |_| PeerLoad {
            sick: false,
            outstanding: 0,
        };
        let first: Vec<NodeId> = (0..4)
            .map(|tick| rank_peers(&placements, &workers, 1, &[], idle, tick)[0].0)
            .collect();
        assert!(first.contains(&2) && first.contains(&3), "{first:?}");
    }

    #[test]
    fn small_answers_to_idempotent_requests_are_read_whole_before_relaying() {
        assert!(read_whole(true, Some(12)));
        assert!(read_whole(true, Some(READ_WHOLE)));
        assert!(!read_whole(true, Some(READ_WHOLE + 1)), "large: streamed");
        assert!(!read_whole(true, None), "no length: streamed");
        assert!(
            !read_whole(false, Some(12)),
            "a POST is not sent again anyway"
        );
    }

    #[test]
    fn only_what_never_reached_a_handler_or_is_idempotent_is_sent_again() {
        let next = |hop: Hop, idempotent| after_hop(&hop, idempotent);
        assert_eq!(
            next(Hop::Undelivered, false),
            Next::TryAnother {
                mark_unhealthy: false
            }
        );
        assert_eq!(
            next(Hop::Refused, false),
            Next::TryAnother {
                mark_unhealthy: true
            }
        );
        assert_eq!(
            next(Hop::Broken("gone".into()), true),
            Next::TryAnother {
                mark_unhealthy: true
            }
        );
        assert_eq!(next(Hop::Broken("gone".into()), false), Next::Fail);
    }
}
