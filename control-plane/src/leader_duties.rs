//! The leader's duties, owned by one task per term.
//!
//! [`run_leader_duties`] runs on every management node and watches Raft: when
//! this node becomes leader it starts a **term task** and publishes a
//! [`TermHandle`] to it; when it stops leading (or the term changes) it cancels
//! that task, waits for it, and withdraws the handle. The term task alone owns
//! what only a leader knows — worker leases ([`Leases`]) and the members' builds —
//! and receives heartbeats and questions over a channel. Nothing is shared behind
//! a lock, and a new term starts from nothing.
//!
//! Each round (every 200 ms, and at once after the applied state changes,
//! coalesced to 10 ms) the term task:
//! - marks Down the Up workers whose lease ran out (`SetWorkerLiveness`);
//! - asks every member its build and protocol (every 3 s, in a side task) and
//!   raises the cluster protocol once every member **and every Up worker** speaks
//!   a newer one (the version gate);
//! - forgets each app's versions beyond the retention count (`retention::plan`);
//! - runs the timer plan (`timer_plan::plan`): commits each due tick
//!   (`FireTimer`) before it is sent, sends every recorded run it is not sending
//!   yet through the node's [`TimerDispatcher`] (at a new term: all of them, with
//!   their recorded invocation ids), commits `CompleteTimer` with each outcome,
//!   and wakes for the earliest next tick;
//! - runs the scheduler (`scheduler::plan`) when the state or the Ready counts
//!   changed (at least every second), committing its changes as one `Place`.
//!
//! A heartbeat from a worker the state has Down commits `SetWorkerLiveness` Up.
//! In memory only.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::Arc;
use std::time::Duration;

use strom_proto::command::{Command, CommandResult, TimerId, TimerOutcome};
use strom_proto::ids::{AppName, NodeId};
use strom_proto::instances::{InstanceStatus, TriggerStatus};
use strom_proto::internal_v1::worker_service_client::WorkerServiceClient;
use strom_proto::internal_v1::NodeInfoRequest;
use strom_proto::version::{self, Feature, NodeVersion};
use tokio::sync::{mpsc, oneshot, watch};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use crate::leases::{Lease, Leases};
use crate::management::{now_ms, ManagementNode};
use crate::membership::cluster_of;
use crate::timer_service::{
    dispatch_for, outcome_command, DispatcherSlot, StillLeading, TimerDispatch, TimerDispatcher,
};
use crate::{queue_scale, retention, scheduler, timer_plan};

/// How often the leader looks at leases and runs the scheduler.
const DUTY_TICK: Duration = Duration::from_millis(200);
/// How often the leader asks members for their build and protocol.
const VERSION_REFRESH: Duration = Duration::from_secs(3);
/// Least time between two rounds woken by state changes.
const MIN_ROUND_GAP: Duration = Duration::from_millis(10);
/// The scheduler runs at least this often, changed or not.
const PLAN_EVERY: Duration = Duration::from_secs(1);
/// Messages waiting for the term task.
const MAILBOX: usize = 4096;
/// How long a timer dispatch waits for this node's leadership to be confirmed.
const LEADING_CHECK: Duration = Duration::from_secs(2);
/// How often the leader reads its apps' RabbitMQ trigger queues (a message on
/// an app at zero starts an instance within about this long, plus a round).
const QUEUE_READ_EVERY: Duration = Duration::from_millis(500);

/// Where the current term's handle is published. Cheap to clone.
#[derive(Clone)]
pub struct LeaderDuties {
    current: Arc<watch::Sender<Option<TermHandle>>>,
    /// Who sends timer runs to instances: the node's gateway, once it exists.
    pub timers: DispatcherSlot,
}

impl Default for LeaderDuties {
    fn default() -> Self {
        LeaderDuties {
            current: Arc::new(watch::channel(None).0),
            timers: DispatcherSlot::default(),
        }
    }
}

impl LeaderDuties {
    /// The running term's handle, if this node leads.
    pub fn term(&self) -> Option<TermHandle> {
        self.current.borrow().clone()
    }
}

/// A cheap handle to the term task.
#[derive(Clone)]
pub struct TermHandle {
    pub term: u64,
    tx: mpsc::Sender<DutyMsg>,
}

/// The term ended while a message was on its way.
#[derive(Debug, thiserror::Error)]
#[error("this node's leadership term ended")]
pub struct TermEnded;

/// What one worker said, for the leader's live view.
#[derive(Debug, Clone)]
pub struct HeardWorker {
    pub node: NodeId,
    pub since_heartbeat: Duration,
    pub build: String,
    pub protocol: u32,
    pub instances: Vec<InstanceStatus>,
    pub triggers: Vec<TriggerStatus>,
}

/// What the leader knows from outside the log.
#[derive(Debug, Clone, Default)]
pub struct LiveSnapshot {
    pub workers: Vec<HeardWorker>,
    /// Members' builds and protocols, as last answered.
    pub members: BTreeMap<NodeId, NodeVersion>,
    /// The RabbitMQ trigger queues as last read, with the scale of apps that
    /// scale on their depth.
    pub queues: Vec<QueueView>,
}

/// One trigger queue as the leader last read it.
#[derive(Debug, Clone)]
pub struct QueueView {
    pub app: AppName,
    pub queue: String,
    pub read: queue_scale::Read,
    /// The app's scale on queue depth (apps that scale so).
    pub scale: Option<u32>,
}

enum DutyMsg {
    /// A heartbeat or a registration renewed a lease.
    Renew { node: NodeId, lease: Lease },
    /// How long since `node` was last heard of this term.
    Silence {
        node: NodeId,
        reply: oneshot::Sender<Option<Duration>>,
    },
    Live {
        reply: oneshot::Sender<LiveSnapshot>,
    },
    /// This round's answers of the members (from the side task).
    MemberVersions(BTreeMap<NodeId, Option<NodeVersion>>),
    /// This round's reads of the trigger queues (from the side task).
    QueueDepths(Vec<(AppName, String, queue_scale::Read)>),
    /// A timer run this term sent has ended (`None`: this node no longer leads;
    /// the next leader sends it again).
    TimerDone {
        timer: TimerId,
        invocation_id: String,
        outcome: Option<TimerOutcome>,
    },
}

impl TermHandle {
    async fn send(&self, msg: DutyMsg) -> Result<(), TermEnded> {
        self.tx.send(msg).await.map_err(|_| TermEnded)
    }

    /// A heartbeat (or registration) from `node`, received now.
    pub async fn renew(
        &self,
        node: NodeId,
        build: String,
        protocol: u32,
        instances: Vec<InstanceStatus>,
        triggers: Vec<TriggerStatus>,
    ) -> Result<(), TermEnded> {
        let lease = Lease {
            last: Instant::now(),
            build,
            protocol,
            instances,
            triggers,
        };
        self.send(DutyMsg::Renew { node, lease }).await
    }

    /// Time since `node` last heartbeated this term (`None`: not yet).
    pub async fn silence(&self, node: NodeId) -> Result<Option<Duration>, TermEnded> {
        let (reply, rx) = oneshot::channel();
        self.send(DutyMsg::Silence { node, reply }).await?;
        rx.await.map_err(|_| TermEnded)
    }

    pub async fn live(&self) -> Result<LiveSnapshot, TermEnded> {
        let (reply, rx) = oneshot::channel();
        self.send(DutyMsg::Live { reply }).await?;
        rx.await.map_err(|_| TermEnded)
    }
}

/// Start and stop the term task with this node's leadership, until `cancel`.
pub async fn run_leader_duties(node: ManagementNode, cancel: CancellationToken) {
    let me = node.config.node_id;
    let mut metrics = node.raft.metrics();
    let mut running: Option<(u64, CancellationToken, tokio::task::JoinHandle<()>)> = None;
    loop {
        let (leading, term) = {
            let m = metrics.borrow_and_update();
            (
                m.current_leader == Some(me) && m.state == openraft::ServerState::Leader,
                m.current_term,
            )
        };
        let keep = matches!(&running, Some((t, ..)) if leading && *t == term);
        if !keep {
            if let Some((t, stop, task)) = running.take() {
                node.duties.current.send_replace(None);
                stop.cancel();
                let _ = task.await;
                tracing::info!(term = t, "leader duties stopped");
            }
            if leading {
                let stop = cancel.child_token();
                let (tx, rx) = mpsc::channel(MAILBOX);
                let task =
                    tokio::spawn(Term::new(node.clone(), term, tx.clone(), rx, stop.clone()).run());
                node.duties
                    .current
                    .send_replace(Some(TermHandle { term, tx }));
                tracing::info!(term, "leader duties started");
                running = Some((term, stop, task));
            }
        }
        tokio::select! {
            _ = cancel.cancelled() => break,
            changed = metrics.changed() => if changed.is_err() { break },
        }
    }
    node.duties.current.send_replace(None);
    if let Some((_, stop, task)) = running {
        stop.cancel();
        let _ = task.await;
    }
}

/// The term task's state: everything only the leader knows.
struct Term {
    node: ManagementNode,
    /// The Raft term this task leads.
    term: u64,
    /// For the side task that asks members their versions.
    tx: mpsc::Sender<DutyMsg>,
    rx: mpsc::Receiver<DutyMsg>,
    cancel: CancellationToken,
    leases: Leases,
    /// Each member's last known build and protocol (for display).
    members: BTreeMap<NodeId, NodeVersion>,
    last_versions: Option<Instant>,
    asking_versions: bool,
    last_plan: Option<((u64, u64), Instant)>,
    /// Timer runs this term is sending (by invocation id).
    dispatching: HashSet<String>,
    /// When the earliest timer is due next.
    timer_wake: Option<Instant>,
    /// Timers that cannot be scheduled, and why (each reason logged once).
    invalid_timers: HashMap<TimerId, String>,
    /// Queue depths and the scale of apps that scale on them.
    scaler: queue_scale::QueueScaler,
    /// Reads queue depths (a connection per broker, kept over the term).
    depth_probe: Arc<strom_messaging::DepthProbe>,
    reading_queues: bool,
    last_queue_read: Option<Instant>,
    /// The queues whose depth this term has put in the gauge, and the error of
    /// each queue whose last read failed (logged once per new error).
    queue_gauges: HashSet<(AppName, String)>,
    depth_errors: HashMap<(AppName, String), String>,
    /// The term's start: samples are timed from it (a monotonic clock).
    started: Instant,
}

fn queue_gauge(app: &AppName, queue: &str, ready: u64) {
    metrics::gauge!("strom_rabbitmq_queue_ready", "app" => app.to_string(), "queue" => queue.to_string())
        .set(ready as f64);
}

/// A term that ends leaves no depth behind: only the leader reports queue
/// depths, every other node 0, so a sum across nodes is the depth.
impl Drop for Term {
    fn drop(&mut self) {
        for (app, queue) in &self.queue_gauges {
            queue_gauge(app, queue, 0);
        }
    }
}

impl Term {
    fn new(
        node: ManagementNode,
        term: u64,
        tx: mpsc::Sender<DutyMsg>,
        rx: mpsc::Receiver<DutyMsg>,
        cancel: CancellationToken,
    ) -> Term {
        Term {
            node,
            term,
            tx,
            rx,
            cancel,
            leases: Leases::new(Instant::now()),
            members: BTreeMap::new(),
            last_versions: None,
            asking_versions: false,
            last_plan: None,
            dispatching: HashSet::new(),
            timer_wake: None,
            invalid_timers: HashMap::new(),
            scaler: queue_scale::QueueScaler::default(),
            depth_probe: Arc::new(strom_messaging::DepthProbe::default()),
            reading_queues: false,
            last_queue_read: None,
            queue_gauges: HashSet::new(),
            depth_errors: HashMap::new(),
            started: Instant::now(),
        }
    }

    async fn run(mut self) {
        // A change to the state (a scale, a deploy, a worker) wakes a round at once,
        // so a placement follows its cause within milliseconds; bursts are coalesced.
        let mut state = self.node.state.clone();
        let mut state_open = true;
        let mut next_round = Instant::now();
        loop {
            tokio::select! {
                _ = self.cancel.cancelled() => return,
                msg = self.rx.recv() => match msg {
                    Some(msg) => { self.handle(msg).await; continue; }
                    None => return,
                },
                _ = tokio::time::sleep_until(next_round) => {}
                changed = state.changed(), if state_open => {
                    state_open = changed.is_ok();
                    next_round = next_round.min(Instant::now() + MIN_ROUND_GAP);
                    continue;
                }
            }
            self.round().await;
            next_round = Instant::now() + DUTY_TICK;
            if let Some(wake) = self.timer_wake {
                next_round = next_round.min(wake);
            }
        }
    }

    async fn handle(&mut self, msg: DutyMsg) {
        match msg {
            DutyMsg::Renew { node, lease } => {
                self.leases.renew(node, lease);
                let down = self
                    .node
                    .read_local()
                    .state
                    .workers
                    .get(&node)
                    .is_some_and(|w| !w.up);
                if down {
                    tracing::info!(node, "worker heartbeats resumed: Up");
                    self.commit(
                        Command::SetWorkerLiveness {
                            node,
                            up: true,
                            at_ms: now_ms(),
                        },
                        "marking a worker Up",
                    )
                    .await;
                }
            }
            DutyMsg::Silence { node, reply } => {
                let heard = self.leases.get(node).map(|l| l.last.elapsed());
                let _ = reply.send(heard);
            }
            DutyMsg::Live { reply } => {
                let now = Instant::now();
                let mut workers: Vec<HeardWorker> = self
                    .leases
                    .iter()
                    .map(|(id, l)| HeardWorker {
                        node: *id,
                        since_heartbeat: now.saturating_duration_since(l.last),
                        build: l.build.clone(),
                        protocol: l.protocol,
                        instances: l.instances.clone(),
                        triggers: l.triggers.clone(),
                    })
                    .collect();
                workers.sort_by_key(|w| w.node);
                let view = self.node.read_local();
                let scales = self.scaler.scales(&view.state);
                let queues = self
                    .scaler
                    .reads()
                    .iter()
                    .map(|((app, queue), read)| QueueView {
                        app: app.clone(),
                        queue: queue.clone(),
                        read: read.clone(),
                        scale: scales.get(app).copied(),
                    })
                    .collect();
                let _ = reply.send(LiveSnapshot {
                    workers,
                    members: self.members.clone(),
                    queues,
                });
            }
            DutyMsg::MemberVersions(answers) => {
                self.asking_versions = false;
                self.gate(answers).await;
            }
            DutyMsg::QueueDepths(reads) => {
                self.reading_queues = false;
                self.queue_depths_seen(&reads);
                let view = self.node.read_local();
                let at_ms = self.started.elapsed().as_millis() as u64;
                let leases = &self.leases;
                self.scaler
                    .observe(&view.state, reads, |app| leases.in_flight(app), at_ms);
            }
            DutyMsg::TimerDone {
                timer,
                invocation_id,
                outcome,
            } => {
                // Committed or not, the next round sends it again if it is still
                // recorded as running (the worker answers a run it has finished
                // with its outcome, without running it again).
                self.dispatching.remove(&invocation_id);
                let Some(outcome) = outcome else {
                    return;
                };
                if !outcome.succeeded {
                    tracing::warn!(%timer, %invocation_id, "timer run failed: {}", outcome.error);
                }
                metrics::counter!("strom_timer_runs_total", "app" => timer.app.to_string(), "function" => timer.function.clone(),
                    "outcome" => if outcome.succeeded { "succeeded" } else { "failed" })
                .increment(1);
                let view = self.node.read_local();
                let command = outcome_command(
                    &view.state,
                    &timer,
                    &invocation_id,
                    outcome,
                    now_ms(),
                    strom_proto::ids::new_invocation_id,
                );
                if let Command::RetryTimer(r) = &command {
                    tracing::info!(%timer, attempt = r.attempt, retry_at_ms = r.retry_at_ms, "timer run: retrying");
                    metrics::counter!("strom_timer_retries_total", "app" => timer.app.to_string(), "function" => timer.function.clone())
                        .increment(1);
                }
                self.commit(command, "recording a timer run's outcome")
                    .await;
            }
        }
    }

    /// Commit one of the leader's own writes; a failure is logged (the next round
    /// tries again).
    async fn commit(&self, command: Command, what: &str) -> bool {
        match self.node.propose_local_within(command).await {
            Ok(_) => true,
            Err(e) => {
                tracing::warn!("{what}: {e}");
                false
            }
        }
    }

    async fn round(&mut self) {
        let now = Instant::now();
        let view = self.node.read_local();

        // Leases: a worker Up in the state whose lease ran out goes Down.
        let up = view
            .state
            .workers
            .iter()
            .filter(|(_, w)| w.up)
            .map(|(id, _)| *id);
        let lease = self.node.config.worker_lease;
        for id in self.leases.expired(up, now, lease) {
            tracing::warn!(
                node = id,
                "worker lease expired ({lease:?} without a heartbeat): Down"
            );
            self.leases.remove(id);
            self.commit(
                Command::SetWorkerLiveness {
                    node: id,
                    up: false,
                    at_ms: now_ms(),
                },
                &format!("marking worker {id} Down"),
            )
            .await;
        }

        // Version gate: ask the members what they speak, in a side task.
        if !self.asking_versions
            && self
                .last_versions
                .is_none_or(|t| now.duration_since(t) >= VERSION_REFRESH)
        {
            self.last_versions = Some(now);
            self.asking_versions = true;
            let node = self.node.clone();
            let tx = self.tx.clone();
            let cancel = self.cancel.clone();
            tokio::spawn(async move {
                tokio::select! {
                    _ = cancel.cancelled() => {}
                    answers = ask_member_versions(&node) => {
                        let _ = tx.send(DutyMsg::MemberVersions(answers)).await;
                    }
                }
            });
        }

        // Retention: each app keeps its newest versions.
        if view.state.allows(Feature::VersionRetention) {
            for (app, versions) in retention::plan(&view.state, self.node.config.keep_versions) {
                tracing::info!(%app, count = versions.len(), "forgetting versions beyond the retention count");
                self.commit(
                    Command::ForgetVersions {
                        app,
                        versions,
                        at_ms: now_ms(),
                    },
                    "forgetting old versions",
                )
                .await;
            }
        }

        self.timers().await;
        self.read_queues(now);

        // Scheduler: one round whenever the state or the Ready counts changed, and
        // at least every second.
        let view = self.node.read_local();
        if !view.state.allows(Feature::Workers) {
            return;
        }
        let mut live = self.leases.ready_view(&view.state);
        live.queue_scale = self.scaler.scales(&view.state);
        let fingerprint = (view.applied_index(), live_fingerprint(&live));
        let due = match self.last_plan {
            Some((p, at)) => p != fingerprint || now.duration_since(at) >= PLAN_EVERY,
            None => true,
        };
        if !due {
            return;
        }
        self.last_plan = Some((fingerprint, now));
        let changes = scheduler::plan(&view.state, &live);
        if changes.is_empty() {
            return;
        }
        tracing::info!(changes = changes.len(), "scheduler: placing");
        let placed = changes.len() as u64;
        if self
            .commit(
                Command::Place {
                    changes,
                    at_ms: now_ms(),
                },
                "scheduler: committing placements",
            )
            .await
        {
            metrics::counter!("strom_scheduler_placements_total").increment(placed);
        }
    }

    /// Reads the apps' trigger queues in a side task (every
    /// [`QUEUE_READ_EVERY`], one read at a time), for queue-depth scaling and
    /// for `strom fn list`.
    fn read_queues(&mut self, now: Instant) {
        if self.reading_queues
            || self
                .last_queue_read
                .is_some_and(|t| now.duration_since(t) < QUEUE_READ_EVERY)
        {
            return;
        }
        self.last_queue_read = Some(now);
        let probes = queue_scale::probes(&self.node.read_local().state);
        if probes.is_empty() && self.scaler.reads().is_empty() {
            return;
        }
        self.reading_queues = true;
        let probe = self.depth_probe.clone();
        let tx = self.tx.clone();
        let cancel = self.cancel.clone();
        tokio::spawn(async move {
            let brokers: Vec<_> = probes
                .iter()
                .filter_map(|p| p.broker.as_ref().ok().cloned())
                .collect();
            probe.retain(&brokers).await;
            let reads = futures::future::join_all(probes.into_iter().map(|p| {
                let probe = probe.clone();
                async move {
                    let read = match &p.broker {
                        Ok((broker, ca)) => probe
                            .ready(broker, ca.as_deref(), &p.queue)
                            .await
                            .map_err(|e| e.to_string()),
                        Err(e) => Err(e.clone()),
                    };
                    (p.app, p.queue, read)
                }
            }));
            tokio::select! {
                _ = cancel.cancelled() => {}
                reads = reads => {
                    let _ = tx.send(DutyMsg::QueueDepths(reads)).await;
                }
            }
        });
    }

    /// The depth gauge and the log: a queue's depth as read, 0 for a queue no
    /// longer read; a failed read logged when its error is new, and its recovery.
    fn queue_depths_seen(&mut self, reads: &[(AppName, String, queue_scale::Read)]) {
        let read_now: HashSet<(AppName, String)> = reads
            .iter()
            .map(|(app, queue, _)| (app.clone(), queue.clone()))
            .collect();
        for (app, queue) in self.queue_gauges.difference(&read_now) {
            queue_gauge(app, queue, 0);
        }
        self.queue_gauges.retain(|k| read_now.contains(k));
        self.depth_errors.retain(|k, _| read_now.contains(k));
        for (app, queue, read) in reads {
            let key = (app.clone(), queue.clone());
            match read {
                Ok(ready) => {
                    queue_gauge(app, queue, *ready);
                    self.queue_gauges.insert(key.clone());
                    if self.depth_errors.remove(&key).is_some() {
                        tracing::info!(%app, %queue, ready, "queue depth readable again");
                    }
                }
                Err(e) => {
                    if self.depth_errors.get(&key) != Some(e) {
                        tracing::warn!(%app, %queue, "cannot read the queue's depth (its scale holds): {e}");
                        self.depth_errors.insert(key, e.clone());
                    }
                }
            }
        }
    }

    /// Timers: commit what the plan proposes (each due tick before it is sent),
    /// then send every recorded run this term is not sending yet.
    async fn timers(&mut self) {
        self.timer_wake = None;
        let Some(dispatcher) = self.node.duties.timers.get() else {
            return;
        };
        let view = self.node.read_local();
        // Once every node can run what another node's leader sends it.
        if !view.state.allows(Feature::TimerRuns) {
            return;
        }
        let now = now_ms();
        let plan = timer_plan::plan(&view.state, now, strom_proto::ids::new_invocation_id);
        self.timer_wake = plan
            .wake_at_ms
            .map(|at| Instant::now() + Duration::from_millis(at.saturating_sub(now).max(0) as u64));
        for action in plan.actions {
            match action {
                timer_plan::TimerAction::Propose(command) => {
                    match self.node.propose_local_within(command).await {
                        Ok((_, CommandResult::Rejected(why))) => {
                            tracing::debug!("timer command refused: {why}");
                        }
                        Ok(_) => {}
                        Err(e) => tracing::warn!("committing a timer command: {e}"),
                    }
                }
                timer_plan::TimerAction::Invalid { timer, reason } => {
                    if self.invalid_timers.get(&timer) != Some(&reason) {
                        tracing::warn!(%timer, "timer not scheduled: {reason}");
                        self.invalid_timers.insert(timer, reason);
                    }
                }
            }
        }
        let view = self.node.read_local();
        for (timer, attempt) in timer_plan::to_dispatch(&view.state, &self.dispatching, now_ms()) {
            let Some(dispatch) = dispatch_for(&view.state, timer, &attempt) else {
                continue;
            };
            tracing::info!(%timer, invocation_id = attempt.invocation_id(), attempt = attempt.number(), tick_ms = attempt.run.tick_ms, past_due = attempt.run.past_due, "timer run: sending");
            if attempt.number() == 0 && dispatch.scheduled {
                let late = (now_ms() - attempt.run.tick_ms).max(0) as f64 / 1000.0;
                metrics::histogram!("strom_timer_lateness_seconds", "app" => timer.app.to_string(), "function" => timer.function.clone())
                    .record(late);
            }
            self.dispatching.insert(attempt.invocation_id().to_string());
            self.send_run(&dispatcher, timer.clone(), dispatch);
        }
    }

    /// Send one run in a task of this term; its outcome comes back as a message.
    fn send_run(&self, dispatcher: &Arc<dyn TimerDispatcher>, timer: TimerId, run: TimerDispatch) {
        let invocation_id = run.invocation_id.clone();
        let node = self.node.clone();
        let term = self.term;
        let leading: StillLeading = Arc::new(move || {
            let node = node.clone();
            Box::pin(async move {
                let confirmed = tokio::time::timeout(LEADING_CHECK, node.read_index_local()).await;
                matches!(confirmed, Ok(Ok(_))) && node.raft.metrics().borrow().current_term == term
            })
        });
        let sent = dispatcher.dispatch(run, leading);
        let tx = self.tx.clone();
        let cancel = self.cancel.clone();
        tokio::spawn(async move {
            tokio::select! {
                // The next leader sends it again, with the same id.
                _ = cancel.cancelled() => {}
                outcome = sent => {
                    let _ = tx.send(DutyMsg::TimerDone { timer, invocation_id, outcome }).await;
                }
            }
        });
    }

    /// Raise the cluster protocol once every member (this round's answers) and
    /// every Up worker (this term's heartbeats) speaks a newer one.
    async fn gate(&mut self, answers: BTreeMap<NodeId, Option<NodeVersion>>) {
        let mut answered = BTreeMap::new();
        for (id, v) in &answers {
            if let Some(v) = v {
                self.members.insert(*id, v.clone());
                answered.insert(*id, v.clone());
            }
        }
        self.members.retain(|id, _| answers.contains_key(id));
        let view = self.node.read_local();
        let up_workers = view
            .state
            .workers
            .iter()
            .filter(|(_, w)| w.up)
            .map(|(id, _)| *id);
        let cluster = version::cluster_protocol_with_workers(
            answers.keys().copied(),
            &answered,
            self.leases.protocols(up_workers).into_values(),
        );
        if cluster > view.state.protocol() {
            tracing::info!(
                protocol = cluster,
                "every management member and worker speaks protocol {cluster}: switching the cluster to it"
            );
            self.commit(
                Command::SetClusterProtocol {
                    protocol: cluster,
                    at_ms: now_ms(),
                },
                "raising the cluster protocol",
            )
            .await;
        }
    }
}

fn live_fingerprint(live: &scheduler::LiveView) -> u64 {
    use std::hash::{Hash, Hasher};
    let mut entries: Vec<_> = live.ready.iter().collect();
    entries.sort();
    let mut scales: Vec<_> = live.queue_scale.iter().collect();
    scales.sort();
    let mut h = std::collections::hash_map::DefaultHasher::new();
    entries.hash(&mut h);
    scales.hash(&mut h);
    h.finish()
}

/// Ask every management member for its build and protocol (`None`: no answer;
/// such a member counts as the oldest protocol for the gate).
async fn ask_member_versions(node: &ManagementNode) -> BTreeMap<NodeId, Option<NodeVersion>> {
    let metrics = node.raft.metrics().borrow().clone();
    let cluster = cluster_of(node);
    let me = node.config.node_id;
    let peers: Vec<(NodeId, String)> = metrics
        .membership_config
        .membership()
        .nodes()
        .map(|(id, n)| (*id, n.addr.clone()))
        .collect();
    let asks = peers.into_iter().map(|(id, addr)| {
        let cluster = cluster.clone();
        async move {
            if id == me {
                return (
                    id,
                    Some(NodeVersion {
                        build: version::BUILD.to_string(),
                        protocol: version::PROTOCOL,
                    }),
                );
            }
            let call = async {
                let mut client = WorkerServiceClient::new(node.peers.get(&addr).ok()?);
                let mut request = tonic::Request::new(NodeInfoRequest {
                    cluster_id: cluster,
                });
                request.set_timeout(Duration::from_secs(1));
                match client.node_info(request).await {
                    Ok(r) => {
                        let r = r.into_inner();
                        Some(NodeVersion {
                            build: r.build,
                            protocol: r.protocol,
                        })
                    }
                    // A build from before the gate has no NodeInfo.
                    Err(s) if s.code() == tonic::Code::Unimplemented => Some(NodeVersion {
                        build: "unknown (before 0.2)".into(),
                        protocol: version::OLDEST_PROTOCOL,
                    }),
                    Err(_) => None,
                }
            };
            (
                id,
                tokio::time::timeout(Duration::from_secs(1), call)
                    .await
                    .ok()
                    .flatten(),
            )
        }
    });
    futures::future::join_all(asks).await.into_iter().collect()
}
