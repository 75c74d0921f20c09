//! `InstanceActor`: owns one running instance (one handler process or container).
//!
//! Lifecycle: start through the runtime → probe `GET /` every 25 ms (one probe per
//! message, so the mailbox stays responsive) → Ready: hand an [`Endpoint`] to the
//! app supervisor → on exit, failed start, or recycle: the actor *fails* and the app
//! supervisor applies the restart policy. `Drain` is the planned stop: wait for the
//! requests in flight, then stop the instance (grace, then kill) and end normally.
//! `post_stop` always stops the instance, so an actor never leaks a process.

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use ractor::{Actor, ActorProcessingErr, ActorRef};
use tokio::time::Instant;

use crate::app_supervisor::AppMsg;
use crate::log_ring::LogRing;
use crate::readiness::{probe, NotReady, PROBE_INTERVAL};
use crate::routing::Endpoint;
use crate::runtime::{ExitInfo, InstanceRuntime, InstanceSpec, Started};

/// Stop reason of an instance replaced on purpose (e.g. after `functionTimeout`).
pub const RECYCLED: &str = "recycled: ";

/// Output lines kept per instance for invocation records.
const LOG_RING_LINES: usize = 4096;

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
}

pub enum InstanceMsg {
    Probe,
    Exited(ExitInfo),
    /// Replace this instance (the gateway saw `functionTimeout` pass).
    Recycle(String),
    /// Planned stop: finish in-flight requests, then stop.
    Drain,
    DrainTick,
}

pub struct InstanceState {
    args: InstanceArgs,
    started: Started,
    ring: Arc<LogRing>,
    exited_at: Arc<std::sync::OnceLock<(Instant, ExitInfo)>>,
    started_at: Instant,
    endpoint: Option<Arc<Endpoint>>,
    drain_deadline: Option<Instant>,
    idle_once: bool,
    stopped: bool,
}

#[derive(Debug, thiserror::Error)]
pub enum InstanceFailure {
    #[error(transparent)]
    NotReady(#[from] NotReady),
    #[error("the handler {0}")]
    Exited(ExitInfo),
}

/// Lines of output quoted in a failure report.
const TAIL_LINES: usize = 5;

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
    async fn stop_instance(&mut self) -> ExitInfo {
        self.stopped = true;
        self.started.control.stop(self.args.stop_grace).await
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
        let mut started = args.runtime.start(&args.spec).await?;
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
            app = %args.spec.app,
            instance = %args.spec.instance_id,
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
        myself.send_message(InstanceMsg::Probe)?;
        Ok(InstanceState {
            args,
            started,
            ring,
            exited_at,
            started_at: Instant::now(),
            endpoint: None,
            drain_deadline: None,
            idle_once: false,
            stopped: false,
        })
    }

    async fn handle(
        &self,
        myself: ActorRef<InstanceMsg>,
        msg: InstanceMsg,
        state: &mut InstanceState,
    ) -> Result<(), ActorProcessingErr> {
        match msg {
            InstanceMsg::Probe => {
                if state.endpoint.is_some() || state.drain_deadline.is_some() {
                    return Ok(());
                }
                if probe(state.started.endpoint).await {
                    let me = myself.clone();
                    let ring = state.ring.clone();
                    let endpoint = Arc::new(Endpoint::new(
                        state.started.endpoint,
                        state.args.spec.instance_id.clone(),
                        state.started.pid,
                        ring,
                        state.exited_at.clone(),
                        Box::new(move |reason| {
                            let _ = me.send_message(InstanceMsg::Recycle(reason));
                        }),
                    ));
                    tracing::info!(
                        instance = %state.args.spec.instance_id,
                        after_ms = state.started_at.elapsed().as_millis() as u64,
                        "instance ready"
                    );
                    state.endpoint = Some(endpoint.clone());
                    state.args.parent.send_message(AppMsg::InstanceReady {
                        slot: state.args.slot,
                        generation: state.args.generation,
                        endpoint,
                    })?;
                } else if state.started_at.elapsed() >= state.args.startup_timeout {
                    state.stop_instance().await;
                    let failure =
                        InstanceFailure::NotReady(NotReady::Timeout(state.args.startup_timeout));
                    let mut report = with_output_tail(failure, &state.ring).await;
                    if let Some(hint) = state.started.not_ready_hint {
                        report.push_str(&format!(" ({hint})"));
                    }
                    return Err(report.into());
                } else {
                    myself.send_after(PROBE_INTERVAL, || InstanceMsg::Probe);
                }
            }
            InstanceMsg::Exited(info) => {
                if state.stopped {
                    return Ok(());
                }
                state.stopped = true;
                let failure = if state.endpoint.is_none() {
                    InstanceFailure::NotReady(NotReady::Exited(info))
                } else {
                    InstanceFailure::Exited(info)
                };
                return Err(with_output_tail(failure, &state.ring).await.into());
            }
            InstanceMsg::Recycle(reason) => {
                if state.stopped || state.drain_deadline.is_some() {
                    return Ok(());
                }
                tracing::warn!(instance = %state.args.spec.instance_id, %reason, "recycling instance");
                state.stop_instance().await;
                // A planned replacement, not a failure: it does not count toward
                // the crash-loop limit.
                myself.stop(Some(format!("{RECYCLED}{reason}")));
            }
            InstanceMsg::Drain => {
                if state.drain_deadline.is_none() {
                    state.drain_deadline = Some(Instant::now() + state.args.drain_timeout);
                    myself.send_message(InstanceMsg::DrainTick)?;
                }
            }
            InstanceMsg::DrainTick => {
                let busy = state
                    .endpoint
                    .as_ref()
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
                    myself.send_after(Duration::from_millis(10), || InstanceMsg::DrainTick);
                    return Ok(());
                }
                let info = state.stop_instance().await;
                tracing::info!(instance = %state.args.spec.instance_id, %info, "instance stopped");
                myself.stop(Some("drained".into()));
            }
        }
        Ok(())
    }

    async fn post_stop(
        &self,
        _myself: ActorRef<InstanceMsg>,
        state: &mut InstanceState,
    ) -> Result<(), ActorProcessingErr> {
        if !state.stopped {
            state.stop_instance().await;
        }
        Ok(())
    }
}
