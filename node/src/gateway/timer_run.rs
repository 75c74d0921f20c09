//! Timer runs through the data plane. The leader's timer duties hand each run to
//! this node's gateway ([`TimerDispatcher`]); it goes to a Ready instance of the
//! app — here, or over the internal hop as `POST /admin/functions/{name}` marked
//! [`HOP_TIMER`] with the run as its body — and the answer is the run's outcome.
//!
//! Which worker runs it is chosen by rendezvous hashing of the invocation id over
//! the workers that run the app ([`candidates`]), so a new leader that sends a run
//! again (same id) reaches the worker the old leader chose while that worker is
//! up. A worker runs one invocation id once ([`TimerRuns`]): a second dispatch of
//! an id that is running waits for that run, and one that has finished (its
//! outcome not yet committed when the leader changed) gets its outcome without
//! running it again. A worker lost mid-run is the one case where a run is sent
//! to another worker, with the same id, so a handler can de-duplicate.

use crate::traces::Trace;
use opentelemetry::trace::SpanKind;
use opentelemetry::KeyValue;
use std::collections::{BTreeMap, HashMap};
use std::sync::Mutex;
use std::time::Duration;

use bytes::Bytes;
use futures::future::BoxFuture;
use http_body_util::BodyExt;
use hyper::{Request, Response, StatusCode};
use sha2::{Digest, Sha256};
use strom_control_plane::timer_service::{StillLeading, TimerDispatch, TimerDispatcher};
use strom_proto::command::TimerOutcome;
use strom_proto::ids::{AppName, NodeId};
use strom_proto::worker_view::Peer;
use tokio::sync::watch;
use tokio::time::Instant;

use super::admin_invoke::NonHttpRun;
use super::admission::AdminTarget;
use super::hop::Hop;
use super::responses::{bad_request, full, undelivered, Body, BoxError};
use super::Gateway;
use strom_proto::invocations::InvocationStatus;

/// Marks a hop request as a timer run (trusted only from another node).
pub const HOP_TIMER: &str = "x-strom-timer-run";
/// How long a worker remembers a finished run's outcome (for a leader that sends
/// it again before its outcome was committed).
const REMEMBER_FINISHED: Duration = Duration::from_secs(600);
/// The most runs a worker remembers.
const REMEMBER_MOST: usize = 4096;

/// The workers that may run `invocation_id` of an app placed on `placements`,
/// in the order to try them: Up, ordered by a hash of the id and the node, the
/// same order on every node (a new leader picks the worker the old one picked).
pub fn candidates(
    placements: &BTreeMap<NodeId, u32>,
    workers: &BTreeMap<NodeId, Peer>,
    invocation_id: &str,
) -> Vec<(NodeId, String)> {
    let mut ranked: Vec<([u8; 32], NodeId, String)> = placements
        .iter()
        .filter(|(_, n)| **n > 0)
        .filter_map(|(id, _)| {
            let w = workers.get(id).filter(|w| w.up)?;
            let mut h = Sha256::new();
            h.update(invocation_id.as_bytes());
            h.update(id.to_be_bytes());
            Some((h.finalize().into(), *id, w.http_addr.clone()))
        })
        .collect();
    ranked.sort();
    ranked.into_iter().map(|(_, id, addr)| (id, addr)).collect()
}

/// A run's outcome once it has one.
type Outcome = watch::Receiver<Option<TimerOutcome>>;

/// The timer runs this worker has started, by invocation id: their outcome (once
/// they have one) and when they finished (for forgetting them).
#[derive(Default)]
pub struct TimerRuns {
    runs: Mutex<HashMap<String, (Outcome, Option<Instant>)>>,
}

impl TimerRuns {
    /// The run of `id`, if one was started here.
    fn join(&self, id: &str) -> Option<Outcome> {
        let runs = self.runs.lock().expect("timer runs lock");
        runs.get(id).map(|(rx, _)| rx.clone())
    }

    /// The run of `id` if one was started here; else `start` is called with the
    /// sender its outcome goes to.
    fn join_or_start(
        &self,
        id: &str,
        start: impl FnOnce(watch::Sender<Option<TimerOutcome>>),
    ) -> Outcome {
        let mut runs = self.runs.lock().expect("timer runs lock");
        if let Some((rx, _)) = runs.get(id) {
            return rx.clone();
        }
        let now = Instant::now();
        runs.retain(|_, (_, done)| done.is_none_or(|t| now.duration_since(t) < REMEMBER_FINISHED));
        if runs.len() >= REMEMBER_MOST {
            // The oldest finished ones go first; running ones always stay.
            let mut finished: Vec<(Instant, String)> = runs
                .iter()
                .filter_map(|(k, (_, done))| done.map(|t| (t, k.clone())))
                .collect();
            finished.sort();
            for (_, k) in finished.iter().take(runs.len() + 1 - REMEMBER_MOST) {
                runs.remove(k);
            }
        }
        let (tx, rx) = watch::channel(None);
        runs.insert(id.to_string(), (rx.clone(), None));
        start(tx);
        rx
    }

    fn finished(&self, id: &str) {
        if let Some((_, done)) = self.runs.lock().expect("timer runs lock").get_mut(id) {
            *done = Some(Instant::now());
        }
    }
}

/// A run's outcome, once it has one (`None`: its task ended without one).
async fn wait(mut rx: Outcome) -> Option<TimerOutcome> {
    let outcome = rx.wait_for(Option::is_some).await.ok()?.clone();
    outcome
}

/// A run's duration counts from its dispatch: waiting for an instance (a cold
/// start, e.g. a scale-to-zero app's) is part of it.
fn with_wait(mut outcome: TimerOutcome, started: Instant) -> TimerOutcome {
    let total = started.elapsed().as_millis() as u64;
    if total > outcome.duration_ms + 1000 {
        tracing::info!(
            "timer run waited {} ms for an instance",
            total - outcome.duration_ms
        );
    }
    outcome.duration_ms = outcome.duration_ms.max(total);
    outcome
}

fn failed(error: String, started: Instant) -> TimerOutcome {
    TimerOutcome {
        succeeded: false,
        error,
        duration_ms: started.elapsed().as_millis() as u64,
    }
}

impl Gateway {
    /// Run `run` with a Ready local instance, once per invocation id on this
    /// node. `None`: no instance of the app is Ready here (nothing started).
    async fn run_timer_here(&self, run: TimerDispatch, trace: Trace) -> Option<TimerOutcome> {
        let inner = &self.inner;
        let app = run.timer.app.clone();
        if let Some(rx) = inner.timer_runs.join(&run.invocation_id) {
            return wait(rx).await;
        }
        let endpoint = self.ready_endpoint(&app, &[], false).await.ok()?;
        let gateway = self.clone();
        let id = run.invocation_id.clone();
        let rx = inner.timer_runs.join_or_start(&id, move |tx| {
            // The run goes on even if the dispatch that started it is dropped (its
            // leader lost its term): the next leader's dispatch joins it.
            tokio::spawn(async move {
                let target = AdminTarget {
                    app: run.timer.app.clone(),
                    function: run.timer.function.clone(),
                    binding: run.binding.clone(),
                };
                let mut data = serde_json::Map::new();
                data.insert(run.binding.clone(), run.value.clone());
                let mut metadata = serde_json::Map::new();
                if let Some(retry) = &run.retry_context {
                    metadata.insert("RetryContext".into(), retry.clone());
                }
                let record = gateway
                    .clone()
                    .run_non_http(
                        target,
                        endpoint,
                        NonHttpRun {
                            id: run.invocation_id.clone(),
                            data,
                            metadata,
                            trigger: if run.scheduled { "timer" } else { "admin" },
                            trace,
                        },
                    )
                    .await;
                let outcome = TimerOutcome {
                    succeeded: record.status == InvocationStatus::Succeeded,
                    error: record.error.unwrap_or_default(),
                    duration_ms: record.duration_us / 1000,
                };
                gateway.inner.timer_runs.finished(&run.invocation_id);
                let _ = tx.send(Some(outcome));
            });
        });
        wait(rx).await
    }

    /// Another node's dispatch of a timer run, over the hop: run it here and
    /// answer its outcome (200, JSON), or "undelivered" without a Ready instance.
    pub(super) async fn serve_timer_run<B>(
        &self,
        req: Request<B>,
        hop_app: AppName,
    ) -> Response<Body>
    where
        B: hyper::body::Body<Data = Bytes> + Send,
        B::Error: Into<BoxError>,
    {
        let trace = Trace::incoming(
            req.headers(),
            "gateway",
            if strom_control_plane::traces::enabled() {
                vec![
                    crate::traces::node(self.inner.config.node_id),
                    KeyValue::new("strom.app", hop_app.to_string()),
                ]
            } else {
                Vec::new()
            },
        );
        let answer = self
            .serve_timer_run_traced(req, hop_app, trace.clone())
            .await;
        trace.end_http(answer.status());
        answer
    }

    async fn serve_timer_run_traced<B>(
        &self,
        req: Request<B>,
        hop_app: AppName,
        trace: Trace,
    ) -> Response<Body>
    where
        B: hyper::body::Body<Data = Bytes> + Send,
        B::Error: Into<BoxError>,
    {
        let (_, body) = match self.whole_request(req).await {
            Ok(r) => r,
            Err(refused) => return refused,
        };
        let run: TimerDispatch = match serde_json::from_slice(&body) {
            Ok(r) => r,
            Err(e) => return bad_request(format!("{HOP_TIMER}: the body is not a timer run: {e}")),
        };
        let app = run.timer.app.clone();
        if app != hop_app {
            return bad_request(format!(
                "{HOP_TIMER}: the run is of app `{app}`, the hop names `{hop_app}`"
            ));
        }
        match self.run_timer_here(run, trace).await {
            Some(outcome) => {
                let mut r = Response::new(full(Bytes::from(
                    serde_json::to_vec(&outcome).unwrap_or_default(),
                )));
                r.headers_mut().insert(
                    hyper::header::CONTENT_TYPE,
                    hyper::header::HeaderValue::from_static("application/json"),
                );
                r
            }
            None => undelivered(&app),
        }
    }

    /// Send `run` to a worker of its app and wait for its outcome; workers are
    /// tried in [`candidates`] order, again after a pause while none has a Ready
    /// instance, until the cold-start timeout (then the run fails, recorded).
    /// Before each attempt the sender must still lead (`None` otherwise).
    async fn send_timer_run(
        self,
        run: TimerDispatch,
        leading: StillLeading,
    ) -> Option<TimerOutcome> {
        let trace = if strom_control_plane::traces::enabled() {
            Trace::root(
                "timer",
                SpanKind::Producer,
                vec![
                    crate::traces::node(self.inner.config.node_id),
                    KeyValue::new("strom.app", run.timer.app.to_string()),
                    KeyValue::new("faas.name", run.timer.function.clone()),
                    KeyValue::new("faas.invocation_id", run.invocation_id.clone()),
                    KeyValue::new("faas.trigger", "timer"),
                ],
            )
        } else {
            Trace::None
        };
        let outcome = self.send_timer_run_traced(run, leading, &trace).await;
        trace.end(match &outcome {
            Some(o) if !o.succeeded => Some(o.error.clone()),
            Some(_) => None,
            None => Some("no longer leading".into()),
        });
        outcome
    }

    async fn send_timer_run_traced(
        self,
        run: TimerDispatch,
        leading: StillLeading,
        trace: &Trace,
    ) -> Option<TimerOutcome> {
        let inner = &self.inner;
        let me = inner.config.node_id;
        let started = Instant::now();
        let deadline = started + inner.config.cold_start_timeout;
        let app = run.timer.app.clone();
        let body = Bytes::from(serde_json::to_vec(&run).unwrap_or_default());
        let path = format!("/admin/functions/{}", run.timer.function);
        let mut last_error = String::new();
        loop {
            // The signals first, then the routes: a change after this look wakes the
            // wait below (a clone of the gateway's receiver would count every change
            // since the gateway started as new, and the wait would spin).
            let local = inner.routing.changed();
            let mut view = inner.view.clone();
            view.mark_unchanged();
            let routes = inner.routes.load();
            let order = routes
                .apps
                .get(&app)
                .map(|a| candidates(&a.placements, &routes.workers, &run.invocation_id))
                .unwrap_or_default();
            for (node, addr) in order {
                if !leading().await {
                    tracing::info!(timer = %run.timer, invocation_id = %run.invocation_id, "timer run: no longer leading; not sent");
                    return None;
                }
                if node == me {
                    if let Some(outcome) = self.run_timer_here(run.clone(), trace.clone()).await {
                        return Some(with_wait(outcome, started));
                    }
                    continue;
                }
                let request = Request::post(path.as_str())
                    .header(HOP_TIMER, "1")
                    .header(hyper::header::CONTENT_TYPE, "application/json")
                    .body(());
                let Ok(request) = request else {
                    return Some(failed(
                        format!("function name `{}` is not a path", run.timer.function),
                        started,
                    ));
                };
                let (mut parts, ()) = request.into_parts();
                trace.attach(&mut parts.extensions);
                let hop = inner.hop.send(me, &app, node, &addr, &parts, &body).await;
                inner.hop.count(&hop);
                match hop {
                    Hop::Answered(resp) if resp.status() == StatusCode::OK => {
                        match resp.into_body().collect().await {
                            Ok(b) => match serde_json::from_slice::<TimerOutcome>(&b.to_bytes()) {
                                Ok(outcome) => return Some(with_wait(outcome, started)),
                                Err(e) => last_error = format!("node {node} answered: {e}"),
                            },
                            Err(e) => {
                                inner.hop.mark_unhealthy(node);
                                last_error = format!("node {node}: the answer broke off: {e}");
                            }
                        }
                    }
                    Hop::Answered(resp) => {
                        last_error = format!("node {node} answered {}", resp.status());
                    }
                    Hop::Undelivered => last_error = format!("node {node} has no Ready instance"),
                    Hop::Refused | Hop::Broken(_) => {
                        // Lost with the worker, or never sent: the next worker runs it,
                        // with the same id.
                        inner.hop.mark_unhealthy(node);
                        last_error = format!("node {node} did not answer");
                    }
                }
                tracing::debug!(timer = %run.timer, "timer run: {last_error}; trying the next worker");
            }
            if Instant::now() >= deadline {
                if last_error.is_empty() {
                    last_error = "no worker runs the app".into();
                }
                return Some(failed(
                    format!(
                        "no instance of app `{app}` took the run within {:?} ({last_error})",
                        inner.config.cold_start_timeout
                    ),
                    started,
                ));
            }
            tokio::select! {
                _ = local => {}
                _ = view.changed() => {}
                _ = tokio::time::sleep(Duration::from_millis(200)) => {}
            }
        }
    }
}

impl TimerDispatcher for Gateway {
    fn dispatch(
        &self,
        run: TimerDispatch,
        leading: StillLeading,
    ) -> BoxFuture<'static, Option<TimerOutcome>> {
        Box::pin(self.clone().send_timer_run(run, leading))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn peer(addr: &str, up: bool) -> Peer {
        Peer {
            http_addr: addr.into(),
            up,
            draining: false,
        }
    }

    #[test]
    fn every_node_orders_a_runs_workers_alike_and_skips_down_and_unplaced_ones() {
        let placements = BTreeMap::from([(1, 1), (2, 1), (3, 1), (4, 0)]);
        let workers = BTreeMap::from([
            (1, peer("a:1", true)),
            (2, peer("b:1", false)),
            (3, peer("c:1", true)),
            (4, peer("d:1", true)),
        ]);
        let order = candidates(&placements, &workers, "run-1");
        let ids: Vec<NodeId> = order.iter().map(|(id, _)| *id).collect();
        assert_eq!(ids.len(), 2, "{ids:?}");
        assert!(ids.contains(&1) && ids.contains(&3));
        assert_eq!(order, candidates(&placements, &workers, "run-1"));
        // Different runs spread over the workers.
        let firsts: std::collections::HashSet<NodeId> = (0..32)
            .map(|i| candidates(&placements, &workers, &format!("run-{i}"))[0].0)
            .collect();
        assert_eq!(firsts.len(), 2);
    }

    #[tokio::test]
    async fn a_worker_starts_one_run_per_invocation_id() {
        let runs = TimerRuns::default();
        let mut started = 0;
        let rx = runs.join_or_start("a", |tx| {
            started += 1;
            tokio::spawn(async move {
                let _ = tx.send(Some(TimerOutcome {
                    succeeded: true,
                    error: String::new(),
                    duration_ms: 1,
                }));
            });
        });
        let mut again = runs.join_or_start("a", |_| started += 1);
        assert_eq!(started, 1);
        let outcome = again.wait_for(Option::is_some).await.unwrap().clone();
        assert!(outcome.unwrap().succeeded);
        drop(rx);
        runs.finished("a");
        // Finished: a later dispatch of the same id gets the outcome, not a new run.
        let mut late = runs.join_or_start("a", |_| started += 1);
        assert_eq!(started, 1);
        assert!(late.wait_for(Option::is_some).await.is_ok());
    }
}
