//! `InstanceActor`: owns one running instance (one handler process or container).
//!
//! Lifecycle: the start runs in a task that reports back (`StartDone`), so the
//! actor answers `Drain` while a slow start (a container) is under way, and its
//! supervisor starts many instances at once → probe readiness every 1 ms for the
//! first 10 ms, then at doubling intervals up to 25 ms (one probe per message, so the
//! mailbox stays responsive) → Ready: hand an
//! [`Endpoint`] to the app supervisor → on exit, failed start or recycle: the
//! actor stops with a [`StopReason`] and the app supervisor decides. `Drain` is
//! the planned stop: a start under way is abandoned (the runtime removes what it
//! made), requests in flight finish, then the instance is stopped (grace, then
//! kill). `post_stop` always stops the instance, so an actor never leaks one.

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use ractor::{Actor, ActorProcessingErr, ActorRef};
use tokio::time::Instant;

use crate::app_supervisor::AppMsg;
use crate::log_ring::LogRing;
use crate::readiness::{probe_delay, NotReady};
use crate::routing::Endpoint;
use crate::runtime::{ExitInfo, InstanceRuntime, InstanceSpec, RuntimeError, Started};
use crate::stop_reason::{ReasonSlot, StopReason};

/// Output lines kept per instance for invocation records.
const LOG_RING_LINES: usize = 4096;
/// Lines of output quoted in a failure report.
const TAIL_LINES: usize = 5;
/// How often a drain looks at the requests still in flight.
const DRAIN_TICK: Duration = Duration::from_millis(10);

pub struct InstanceActor;

pub struct InstanceArgs {
    pub spec: InstanceSpec,
    pub runtime: Arc<dyn InstanceRuntime>,
    pub slot: u32,
    pub generation: u64,
    pub parent: ActorRef<AppMsg>,
    pub startup_timeout: Duration,
    pub stop_grace: Duration,
    pub drain_timeout: Duration,
    /// Where this actor says why it stopped.
    pub reason: ReasonSlot,
}

pub enum InstanceMsg {
    /// The start task is done: its result waits in the start's channel.
    StartDone,
    Probe,
    Exited(ExitInfo),
    /// Replace this instance (the gateway saw `functionTimeout` pass).
    Recycle(String),
    /// Planned stop: finish in-flight requests, then stop.
    Drain,
    DrainTick,
}

/// An instance the runtime has started.
struct Running {
    started: Started,
    ring: Arc<LogRing>,
    exited_at: Arc<std::sync::OnceLock<(Instant, ExitInfo)>>,
    endpoint: Option<Arc<Endpoint>>,
    stopped: bool,
}

struct Starting {
    task: tokio::task::JoinHandle<()>,
    result: tokio::sync::oneshot::Receiver<Result<Started, RuntimeError>>,
}

impl Starting {
    /// Abandon the start; an instance it started anyway is stopped.
    async fn abandon(mut self, grace: Duration) {
        self.task.abort();
        let _ = (&mut self.task).await;
        if let Ok(Ok(mut started)) = self.result.try_recv() {
            started.control.stop(grace).await;
        }
    }
}

pub struct InstanceState {
    args: InstanceArgs,
    /// The start task while it runs, and where it leaves its result (read on
    /// `StartDone`, or by `post_stop` so that no started instance is lost).
    starting: Option<Starting>,
    running: Option<Running>,
    started_at: Instant,
    /// Readiness probes that found nothing answering yet.
    probes_failed: u32,
    drain_deadline: Option<Instant>,
    idle_once: bool,
}

#[derive(Debug, thiserror::Error)]
pub enum InstanceFailure {
    #[error(transparent)]
    NotReady(#[from] NotReady),
    #[error("the handler {0}")]
    Exited(ExitInfo),
}

/// The failure, with the last lines the handler wrote (stderr first), so that
/// `strom app show` says *why* a handler died (an import error, a bad port…).
async fn with_output_tail(failure: InstanceFailure, ring: &LogRing) -> String {
    // Output still in the pipe arrives just after the exit is noticed.
    tokio::time::sleep(Duration::from_millis(50)).await;
    let end = ring.next_seq();
    let lines = ring.range(end.saturating_sub(200), end);
    let stderr: Vec<_> = lines
        .iter()
        .filter(|l| l.stream == crate::runtime::LogStream::Stderr)
        .collect();
    let pick: Vec<&str> = if stderr.is_empty() {
        lines.iter().map(|l| l.text.as_str()).collect()
    } else {
        stderr.iter().map(|l| l.text.as_str()).collect()
    };
    let tail = &pick[pick.len().saturating_sub(TAIL_LINES)..];
    if tail.is_empty() {
        failure.to_string()
    } else {
        format!("{failure}; last output: {}", tail.join(" | "))
    }
}

impl InstanceState {
    /// Stop the instance if it runs (once); how it ended.
    async fn stop_instance(&mut self) -> Option<ExitInfo> {
        let grace = self.args.stop_grace;
        let running = self.running.as_mut().filter(|r| !r.stopped)?;
        running.stopped = true;
        if let Some(endpoint) = &running.endpoint {
            endpoint.close_connections();
        }
        Some(running.started.control.stop(grace).await)
    }

    /// Stop the actor, saying why.
    fn finish(&self, myself: &ActorRef<InstanceMsg>, reason: StopReason) {
        let _ = self.args.reason.set(reason);
        myself.stop(None);
    }

    /// Take over a started instance: collect its output, watch for its exit, and
    /// begin probing.
    fn run(&mut self, myself: &ActorRef<InstanceMsg>, mut started: Started) {
        // Every output line from the start on: invocation records read it, and a
        // failure report quotes its tail.
        let ring = Arc::new(LogRing::new(LOG_RING_LINES));
        let mut lines = started
            .lines
            .take()
            .unwrap_or_else(|| started.logs.subscribe());
        let sink = ring.clone();
        tokio::spawn(async move {
            loop {
                match lines.recv().await {
                    Ok(line) => sink.push(line),
                    Err(tokio::sync::broadcast::error::RecvError::Lagged(_)) => {}
                    Err(tokio::sync::broadcast::error::RecvError::Closed) => break,
                }
            }
        });
        tracing::info!(
            app = %self.args.spec.app,
            instance = %self.args.spec.instance_id,
            pid = ?started.pid,
            endpoint = %started.endpoint,
            "instance started"
        );
        let mut exited = started.exited.clone();
        let me = myself.clone();
        let exited_at = Arc::new(std::sync::OnceLock::new());
        let mark = exited_at.clone();
        tokio::spawn(async move {
            if let Ok(v) = exited.wait_for(|e| e.is_some()).await {
                if let Some(info) = v.clone() {
                    let _ = mark.set((Instant::now(), info.clone()));
                    let _ = me.send_message(InstanceMsg::Exited(info));
                }
            }
        });
        self.running = Some(Running {
            started,
            ring,
            exited_at,
            endpoint: None,
            stopped: false,
        });
        let _ = myself.send_message(InstanceMsg::Probe);
    }

    async fn probe(&mut self, myself: &ActorRef<InstanceMsg>) -> Result<(), ActorProcessingErr> {
        let Some(running) = self.running.as_ref() else {
            return Ok(());
        };
        if running.endpoint.is_some() || running.stopped || self.drain_deadline.is_some() {
            return Ok(());
        }
        let addr = running.started.endpoint;
        if self.args.runtime.ready(addr).await {
            let running = self.running.as_mut().expect("checked above");
            let me = myself.clone();
            let endpoint = Arc::new(Endpoint::new(
                addr,
                self.args.spec.instance_id.clone(),
                running.started.pid,
                running.ring.clone(),
                running.exited_at.clone(),
                Box::new(move |reason| {
                    let _ = me.send_message(InstanceMsg::Recycle(reason));
                }),
            ));
            let after = self.started_at.elapsed();
            tracing::info!(
                instance = %self.args.spec.instance_id,
                after_ms = after.as_millis() as u64,
                "instance ready"
            );
            metrics::histogram!("strom_instance_cold_start_seconds", "app" => self.args.spec.app.to_string())
                .record(after.as_secs_f64());
            running.endpoint = Some(endpoint.clone());
            self.args.parent.send_message(AppMsg::InstanceReady {
                slot: self.args.slot,
                generation: self.args.generation,
                endpoint,
            })?;
        } else if self.started_at.elapsed() >= self.args.startup_timeout {
            self.stop_instance().await;
            let running = self.running.as_ref().expect("checked above");
            let failure = InstanceFailure::NotReady(NotReady::Timeout(self.args.startup_timeout));
            let mut report = with_output_tail(failure, &running.ring).await;
            if let Some(hint) = running.started.not_ready_hint {
                report.push_str(&format!(" ({hint})"));
            }
            self.finish(myself, StopReason::Failed(report));
        } else {
            myself.send_after(probe_delay(self.probes_failed), || InstanceMsg::Probe);
            self.probes_failed += 1;
        }
        Ok(())
    }
}

impl Actor for InstanceActor {
    type Msg = InstanceMsg;
    type State = InstanceState;
    type Arguments = InstanceArgs;

    async fn pre_start(
        &self,
        myself: ActorRef<InstanceMsg>,
        args: InstanceArgs,
    ) -> Result<InstanceState, ActorProcessingErr> {
        let runtime = args.runtime.clone();
        let spec = args.spec.clone();
        let me = myself.clone();
        let (tx, result) = tokio::sync::oneshot::channel();
        // No await between the start's end and the result being handed over: an
        // abort either cancels the start (which cleans up) or finds it done.
        let task = tokio::spawn(async move {
            let _ = tx.send(runtime.start(&spec).await);
            let _ = me.send_message(InstanceMsg::StartDone);
        });
        Ok(InstanceState {
            args,
            starting: Some(Starting { task, result }),
            running: None,
            started_at: Instant::now(),
            probes_failed: 0,
            drain_deadline: None,
            idle_once: false,
        })
    }

    async fn handle(
        &self,
        myself: ActorRef<InstanceMsg>,
        msg: InstanceMsg,
        state: &mut InstanceState,
    ) -> Result<(), ActorProcessingErr> {
        match msg {
            InstanceMsg::StartDone => {
                let Some(mut starting) = state.starting.take() else {
                    return Ok(());
                };
                let result = starting.result.try_recv().unwrap_or_else(|_| {
                    Err(RuntimeError::Other(
                        "the start task ended without a result".into(),
                    ))
                });
                match result {
                    Ok(started) => {
                        state.run(&myself, started);
                        if state.drain_deadline.is_some() {
                            // Drained while starting: it never served.
                            state.stop_instance().await;
                            state.finish(&myself, StopReason::Drained);
                        }
                    }
                    Err(e) if state.drain_deadline.is_some() => {
                        tracing::debug!(instance = %state.args.spec.instance_id, "start failed while draining: {e}");
                        state.finish(&myself, StopReason::Drained);
                    }
                    Err(e) => state.finish(&myself, StopReason::Failed(e.to_string())),
                }
            }
            InstanceMsg::Probe => state.probe(&myself).await?,
            InstanceMsg::Exited(info) => {
                let Some(running) = state.running.as_mut() else {
                    return Ok(());
                };
                if running.stopped {
                    return Ok(());
                }
                running.stopped = true;
                let failure = if running.endpoint.is_none() {
                    InstanceFailure::NotReady(NotReady::Exited(info))
                } else {
                    InstanceFailure::Exited(info)
                };
                let report = with_output_tail(failure, &running.ring).await;
                state.finish(&myself, StopReason::Failed(report));
            }
            InstanceMsg::Recycle(reason) => {
                let live = state.running.as_ref().is_some_and(|r| !r.stopped);
                if !live || state.drain_deadline.is_some() {
                    return Ok(());
                }
                tracing::warn!(instance = %state.args.spec.instance_id, %reason, "recycling instance");
                state.stop_instance().await;
                // A planned replacement, not a failure: it does not count toward
                // the crash-loop limit.
                state.finish(&myself, StopReason::Recycled(reason));
            }
            InstanceMsg::Drain => {
                if state.drain_deadline.is_some() {
                    return Ok(());
                }
                state.drain_deadline = Some(Instant::now() + state.args.drain_timeout);
                if let Some(starting) = state.starting.take() {
                    // A start under way is abandoned: a start dropped midway
                    // removes what it made; one that finished is stopped.
                    tracing::info!(instance = %state.args.spec.instance_id, "drained while starting");
                    starting.abandon(state.args.stop_grace).await;
                    state.finish(&myself, StopReason::Drained);
                    return Ok(());
                }
                myself.send_message(InstanceMsg::DrainTick)?;
            }
            InstanceMsg::DrainTick => {
                let busy = state
                    .running
                    .as_ref()
                    .and_then(|r| r.endpoint.as_ref())
                    .map(|e| e.outstanding.load(Ordering::Acquire))
                    .unwrap_or(0);
                let deadline = state.drain_deadline.expect("set by Drain");
                // Idle on two ticks in a row: a request that picked this endpoint
                // from the previous routing snapshot has registered itself by then.
                let idle_twice = busy == 0 && std::mem::replace(&mut state.idle_once, true);
                if busy > 0 {
                    state.idle_once = false;
                }
                if !idle_twice && Instant::now() < deadline {
                    myself.send_after(DRAIN_TICK, || InstanceMsg::DrainTick);
                    return Ok(());
                }
                if let Some(info) = state.stop_instance().await {
                    tracing::info!(instance = %state.args.spec.instance_id, %info, "instance stopped");
                }
                state.finish(&myself, StopReason::Drained);
            }
        }
        Ok(())
    }

    async fn post_stop(
        &self,
        _myself: ActorRef<InstanceMsg>,
        state: &mut InstanceState,
    ) -> Result<(), ActorProcessingErr> {
        if let Some(starting) = state.starting.take() {
            starting.abandon(state.args.stop_grace).await;
        }
        state.stop_instance().await;
        Ok(())
    }
}
