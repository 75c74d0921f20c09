//! The routing snapshot: which app version serves each app on this node and at
//! which Ready endpoints. Written only by the node supervisor (one writer), read by
//! the gateway on every request without locks or mailbox hops (`ArcSwap`).
//!
//! In memory only; rebuilt from the supervisor's state after every change.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;

use arc_swap::ArcSwap;
use strom_proto::ids::{AppName, VersionId};
use strom_proto::manifest::AppManifest;
use strom_proto::route_table::RouteTable;
use tokio::sync::Notify;

use bytes::Bytes;
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::{Request, Response};

use crate::handler_conns::{HandlerConnections, SendError};
use crate::log_ring::LogRing;
use crate::runtime::ExitInfo;

/// One Ready instance, as the gateway sees it.
pub struct Endpoint {
    pub addr: SocketAddr,
    pub instance_id: String,
    pub pid: Option<u32>,
    /// Requests the gateway has in flight on this instance (drained before stop).
    pub outstanding: AtomicUsize,
    /// Recent handler stdout/stderr lines, for invocation records.
    pub logs: Arc<LogRing>,
    /// When the worker noticed the instance had ended, and how it ended.
    exited_at: Arc<std::sync::OnceLock<(tokio::time::Instant, ExitInfo)>>,
    recycle: Box<dyn Fn(String) + Send + Sync>,
    /// The gateway's connections to this instance's handler (they end with it).
    connections: HandlerConnections,
}

impl std::fmt::Debug for Endpoint {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Endpoint")
            .field("addr", &self.addr)
            .field("instance_id", &self.instance_id)
            .finish()
    }
}

impl Endpoint {
    pub fn new(
        addr: SocketAddr,
        instance_id: String,
        pid: Option<u32>,
        logs: Arc<LogRing>,
        exited_at: Arc<std::sync::OnceLock<(tokio::time::Instant, ExitInfo)>>,
        recycle: Box<dyn Fn(String) + Send + Sync>,
    ) -> Self {
        Endpoint {
            addr,
            connections: HandlerConnections::new(addr),
            instance_id,
            pid,
            outstanding: AtomicUsize::new(0),
            logs,
            exited_at,
            recycle,
        }
    }

    /// Whether the instance had already ended when a request was sent at `sent_at`
    /// (so the request cannot have reached a handler). Waits up to `wait` for the
    /// exit to be noticed; `false` when unsure.
    pub async fn ended_before(
        &self,
        sent_at: tokio::time::Instant,
        wait: std::time::Duration,
    ) -> bool {
        let deadline = tokio::time::Instant::now() + wait;
        loop {
            if let Some((at, _)) = self.exited_at.get() {
                return *at <= sent_at;
            }
            if tokio::time::Instant::now() >= deadline {
                return false;
            }
            tokio::time::sleep(std::time::Duration::from_millis(2)).await;
        }
    }

    /// How the instance ended, waiting up to `wait` for the worker to notice (a
    /// request that failed mid-way may have been the instance dying, e.g. out of
    /// memory); `None` if it still runs.
    pub async fn exit_reason(&self, wait: std::time::Duration) -> Option<ExitInfo> {
        let deadline = tokio::time::Instant::now() + wait;
        loop {
            if let Some((_, info)) = self.exited_at.get() {
                return Some(info.clone());
            }
            if tokio::time::Instant::now() >= deadline {
                return None;
            }
            tokio::time::sleep(std::time::Duration::from_millis(5)).await;
        }
    }

    /// Send a request to the handler (origin-form URI, `Host` set) on one of this
    /// instance's connections. Once the worker has noticed the instance's exit, its
    /// connections are closed and nothing is sent ([`SendError::Ended`]).
    pub async fn send(
        &self,
        request: Request<Full<Bytes>>,
    ) -> Result<Response<Incoming>, SendError> {
        if self.exited_at.get().is_some() {
            self.connections.close();
            return Err(SendError::Ended);
        }
        self.connections.send(request).await
    }

    /// Close the idle connections to this instance and open no more (it is
    /// stopping: its handler's graceful shutdown does not wait on them).
    pub fn close_connections(&self) {
        self.connections.close();
    }

    /// Ask for this instance to be replaced (e.g. after `functionTimeout`).
    pub fn recycle(&self, reason: String) {
        (self.recycle)(reason)
    }

    /// Count a request in flight until the guard drops.
    pub fn begin(self: &Arc<Self>) -> InFlight {
        self.outstanding.fetch_add(1, Ordering::AcqRel);
        InFlight(self.clone(), None)
    }

    /// Invocation `id` is sent to this instance: counted in flight, and the
    /// instance's output is its while it is the only one ([`LogRing`]), until the
    /// guard drops. Also returns the number of the next output line.
    pub fn begin_invocation(self: &Arc<Self>, id: &str) -> (InFlight, u64) {
        self.outstanding.fetch_add(1, Ordering::AcqRel);
        let id: Arc<str> = id.into();
        let from_line = self.logs.begin(id.clone());
        (InFlight(self.clone(), Some(id)), from_line)
    }
}

/// A request in flight on an endpoint; counted (and its invocation's output
/// attributed) until dropped.
pub struct InFlight(Arc<Endpoint>, Option<Arc<str>>);

impl Drop for InFlight {
    fn drop(&mut self) {
        if let Some(id) = &self.1 {
            self.0.logs.end(id);
        }
        self.0.outstanding.fetch_sub(1, Ordering::AcqRel);
    }
}

/// What serves one app on this node.
#[derive(Debug, Clone)]
pub struct ServingApp {
    pub version: VersionId,
    pub manifest: Arc<AppManifest>,
    /// Legacy `httpWorker`: forwarded requests go to `/{FunctionName}`.
    pub http_worker: bool,
    /// The version's RabbitMQ outputs and prefetch (read from its package).
    pub messaging: Arc<strom_proto::manifest::rabbitmq::PackageMessaging>,
    pub routes: Arc<RouteTable>,
    pub endpoints: Vec<Arc<Endpoint>>,
    /// Set when no instance can be started (crash loop): requests fail fast.
    pub unavailable: Option<String>,
}

#[derive(Debug, Default)]
pub struct RoutingSnapshot {
    pub apps: BTreeMap<AppName, ServingApp>,
    /// The shared address's routes: every serving app's, a route only while one
    /// app claims it.
    pub routes: RouteTable,
}

impl RoutingSnapshot {
    pub fn new(apps: BTreeMap<AppName, ServingApp>) -> Self {
        let routes = RouteTable::build_shared(apps.iter().map(|(n, a)| (n, a.manifest.as_ref())));
        RoutingSnapshot { apps, routes }
    }

    /// The Ready endpoint with the fewest requests in flight (round-robin on ties).
    pub fn pick(&self, app: &AppName, tick: &AtomicU64) -> Option<Arc<Endpoint>> {
        self.pick_except(app, tick, &[])
    }

    /// Like [`pick`](Self::pick), skipping instances this request found unreachable.
    pub fn pick_except(
        &self,
        app: &AppName,
        tick: &AtomicU64,
        unreachable: &[String],
    ) -> Option<Arc<Endpoint>> {
        let endpoints = &self.apps.get(app)?.endpoints;
        if endpoints.is_empty() {
            return None;
        }
        let start = tick.fetch_add(1, Ordering::Relaxed) as usize % endpoints.len();
        (0..endpoints.len())
            .map(|i| &endpoints[(start + i) % endpoints.len()])
            .filter(|e| !unreachable.contains(&e.instance_id))
            .min_by_key(|e| e.outstanding.load(Ordering::Acquire))
            .cloned()
    }
}

/// Cheap to clone; the node supervisor publishes, gateways read.
#[derive(Clone, Default)]
pub struct RoutingTable {
    current: Arc<ArcSwap<RoutingSnapshot>>,
    changed: Arc<Notify>,
}

impl RoutingTable {
    pub fn load(&self) -> Arc<RoutingSnapshot> {
        self.current.load_full()
    }

    pub fn publish(&self, snapshot: RoutingSnapshot) {
        self.current.store(Arc::new(snapshot));
        self.changed.notify_waiters();
    }

    /// Resolves at the next publish (for requests waiting on a cold start).
    pub fn changed(&self) -> tokio::sync::futures::Notified<'_> {
        self.changed.notified()
    }
}
