//! `AppSupervisor(app, version)`: keeps N instances of one app version running.
//!
//! One-for-one supervision: a failed instance is replaced under the
//! [`RestartPolicy`](crate::restart_policy) (immediate, then exponential backoff;
//! CrashLooping reported, never given up). It reports its instances' states and
//! Ready endpoints to the node supervisor after every change. `Drain` stops every
//! instance gracefully and then the supervisor itself. In memory only.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use ractor::{Actor, ActorId, ActorProcessingErr, ActorRef, SupervisionEvent};
use rand::Rng;
use strom_proto::instances::{InstanceState, InstanceStatus};
use tokio::time::Instant;

use crate::instance_actor::{InstanceActor, InstanceArgs, InstanceMsg};
use crate::node_supervisor::{DeployKey, NodeMsg};
use crate::rescale::{kept_len, rescale, SlotFacts};
use crate::restart_policy::{RestartPolicy, RestartTracker};
use crate::routing::Endpoint;
use crate::runtime::{InstanceRuntime, InstanceSpec};
use crate::stop_reason::{ReasonSlot, StopReason};

/// Timings of instance lifecycles (worker configuration).
#[derive(Debug, Clone)]
pub struct Lifecycle {
    pub startup_timeout: Duration,
    pub stop_grace: Duration,
    pub drain_timeout: Duration,
    pub restart: RestartPolicy,
}

impl Default for Lifecycle {
    fn default() -> Self {
        Lifecycle {
            startup_timeout: Duration::from_secs(60),
            stop_grace: Duration::from_secs(10),
            drain_timeout: Duration::from_secs(30),
            restart: RestartPolicy::default(),
        }
    }
}

pub struct AppSupervisor;

pub struct AppArgs {
    pub key: DeployKey,
    /// Template; `instance_id` is filled per start.
    pub spec: InstanceSpec,
    pub instances: u32,
    pub runtime: Arc<dyn InstanceRuntime>,
    pub lifecycle: Lifecycle,
    pub parent: ActorRef<NodeMsg>,
}

pub enum AppMsg {
    InstanceReady {
        slot: u32,
        generation: u64,
        endpoint: Arc<Endpoint>,
    },
    Restart {
        slot: u32,
        generation: u64,
    },
    SetScale(u32),
    /// Stop every instance gracefully, then stop.
    Drain,
}

struct Slot {
    actor: Option<ActorRef<InstanceMsg>>,
    /// Where the current instance says why it stopped.
    reason: ReasonSlot,
    generation: u64,
    tracker: RestartTracker,
    endpoint: Option<Arc<Endpoint>>,
    state: InstanceState,
    instance_id: String,
    pid: Option<u32>,
    last_error: Option<String>,
    /// Planned replacements (not failures).
    recycles: u64,
    retired: bool,
}

pub struct AppState {
    args: AppArgs,
    slots: Vec<Slot>,
    by_actor: HashMap<ActorId, (u32, u64)>,
    draining: bool,
}

impl AppState {
    fn report(&self) {
        let statuses = self
            .slots
            .iter()
            .enumerate()
            .map(|(i, s)| InstanceStatus {
                app: self.args.spec.app.clone(),
                version: self.args.spec.version.clone(),
                slot: i as u32,
                instance_id: s.instance_id.clone(),
                state: if self.draining || s.retired {
                    InstanceState::Draining
                } else {
                    s.state
                },
                restarts: s.tracker.total_failures() + s.recycles,
                pid: s.pid,
                last_error: s.last_error.clone(),
                serving: false,
            })
            .collect();
        let endpoints = if self.draining {
            Vec::new()
        } else {
            self.slots
                .iter()
                .filter(|s| !s.retired)
                .filter_map(|s| s.endpoint.clone())
                .collect()
        };
        let wanted = self.slots.iter().filter(|s| !s.retired).count() as u32;
        let _ = self.args.parent.send_message(NodeMsg::AppReport {
            key: self.args.key.clone(),
            statuses,
            endpoints,
            wanted,
        });
    }

    async fn start_slot(&mut self, myself: &ActorRef<AppMsg>, slot: u32) {
        let s = &mut self.slots[slot as usize];
        s.generation += 1;
        let generation = s.generation;
        let mut spec = self.args.spec.clone();
        spec.instance_id = format!(
            "{}-{}-{}-{}",
            spec.app,
            spec.version.short(),
            slot,
            &uuid::Uuid::new_v4().simple().to_string()[..8]
        );
        s.instance_id = spec.instance_id.clone();
        metrics::counter!("strom_instance_starts_total", "app" => spec.app.to_string())
            .increment(1);
        s.state = if s.state == InstanceState::CrashLooping {
            InstanceState::CrashLooping
        } else {
            InstanceState::Starting
        };
        s.endpoint = None;
        s.pid = None;
        s.reason = ReasonSlot::default();
        let args = InstanceArgs {
            reason: s.reason.clone(),
            spec,
            runtime: self.args.runtime.clone(),
            slot,
            generation,
            parent: myself.clone(),
            startup_timeout: self.args.lifecycle.startup_timeout,
            stop_grace: self.args.lifecycle.stop_grace,
            drain_timeout: self.args.lifecycle.drain_timeout,
        };
        match Actor::spawn_linked(None, InstanceActor, args, myself.get_cell()).await {
            Ok((actor, _)) => {
                self.by_actor.insert(actor.get_id(), (slot, generation));
                self.slots[slot as usize].actor = Some(actor);
            }
            Err(e) => {
                let message = match e {
                    ractor::SpawnErr::StartupFailed(inner) => inner.to_string(),
                    other => other.to_string(),
                };
                self.on_failure(myself, slot, message);
            }
        }
    }

    fn on_failure(&mut self, myself: &ActorRef<AppMsg>, slot: u32, error: String) {
        let s = &mut self.slots[slot as usize];
        s.actor = None;
        s.endpoint = None;
        s.last_error = Some(error.clone());
        if self.draining || s.retired {
            return;
        }
        let decision = s
            .tracker
            .on_failure(Instant::now(), rand::rng().random::<f64>());
        let app = self.args.spec.app.to_string();
        metrics::counter!("strom_instance_restarts_total", "app" => app.clone()).increment(1);
        if decision.crash_looping && s.state != InstanceState::CrashLooping {
            metrics::counter!("strom_instance_crash_loops_total", "app" => app).increment(1);
        }
        s.state = if decision.crash_looping {
            InstanceState::CrashLooping
        } else {
            InstanceState::Restarting
        };
        tracing::warn!(
            app = %self.args.spec.app,
            version = self.args.spec.version.short(),
            slot,
            %error,
            delay_ms = decision.delay.as_millis() as u64,
            crash_looping = decision.crash_looping,
            "instance failed; restarting"
        );
        let generation = s.generation;
        if decision.delay.is_zero() {
            let _ = myself.send_message(AppMsg::Restart { slot, generation });
        } else {
            myself.send_after(decision.delay, move || AppMsg::Restart { slot, generation });
        }
    }

    fn facts(&self) -> Vec<SlotFacts> {
        self.slots
            .iter()
            .map(|s| SlotFacts {
                retired: s.retired,
                running: s.actor.is_some(),
            })
            .collect()
    }

    fn finish_if_drained(&mut self, myself: &ActorRef<AppMsg>) {
        self.slots.truncate(kept_len(&self.facts()));
        if self.draining && self.slots.iter().all(|s| s.actor.is_none()) {
            myself.stop(Some("drained".into()));
        }
    }
}

fn new_slot(policy: &RestartPolicy) -> Slot {
    Slot {
        actor: None,
        reason: ReasonSlot::default(),
        generation: 0,
        tracker: RestartTracker::new(policy.clone()),
        endpoint: None,
        state: InstanceState::Starting,
        instance_id: String::new(),
        pid: None,
        last_error: None,
        recycles: 0,
        retired: false,
    }
}

impl Actor for AppSupervisor {
    type Msg = AppMsg;
    type State = AppState;
    type Arguments = AppArgs;

    async fn pre_start(
        &self,
        myself: ActorRef<AppMsg>,
        args: AppArgs,
    ) -> Result<AppState, ActorProcessingErr> {
        let n = args.instances;
        let slots = (0..n).map(|_| new_slot(&args.lifecycle.restart)).collect();
        for slot in 0..n {
            myself.send_message(AppMsg::Restart {
                slot,
                generation: 0,
            })?;
        }
        Ok(AppState {
            args,
            slots,
            by_actor: HashMap::new(),
            draining: false,
        })
    }

    async fn handle(
        &self,
        myself: ActorRef<AppMsg>,
        msg: AppMsg,
        state: &mut AppState,
    ) -> Result<(), ActorProcessingErr> {
        match msg {
            AppMsg::InstanceReady {
                slot,
                generation,
                endpoint,
            } => {
                if let Some(s) = state.slots.get_mut(slot as usize) {
                    if s.generation == generation && s.actor.is_some() {
                        s.pid = endpoint.pid;
                        s.endpoint = Some(endpoint);
                        s.state = InstanceState::Ready;
                    }
                }
            }
            AppMsg::Restart { slot, generation } => {
                let Some(s) = state.slots.get(slot as usize) else {
                    return Ok(());
                };
                if state.draining || s.retired || s.actor.is_some() || s.generation != generation {
                    return Ok(());
                }
                state.start_slot(&myself, slot).await;
            }
            AppMsg::SetScale(n) => {
                let plan = rescale(&state.facts(), n);
                for i in &plan.revive {
                    state.slots[*i as usize].retired = false;
                }
                for _ in 0..plan.add {
                    state.slots.push(new_slot(&state.args.lifecycle.restart));
                }
                for slot in plan.start {
                    let generation = state.slots[slot as usize].generation;
                    myself.send_message(AppMsg::Restart { slot, generation })?;
                }
                if !plan.retire.is_empty() {
                    for i in plan.retire {
                        let s = &mut state.slots[i as usize];
                        s.retired = true;
                        s.endpoint = None;
                        if let Some(a) = &s.actor {
                            let _ = a.send_message(InstanceMsg::Drain);
                        }
                    }
                    state.finish_if_drained(&myself);
                }
            }
            AppMsg::Drain => {
                state.draining = true;
                for s in &state.slots {
                    if let Some(a) = &s.actor {
                        let _ = a.send_message(InstanceMsg::Drain);
                    }
                }
                state.finish_if_drained(&myself);
            }
        }
        state.report();
        Ok(())
    }

    async fn handle_supervisor_evt(
        &self,
        myself: ActorRef<AppMsg>,
        event: SupervisionEvent,
        state: &mut AppState,
    ) -> Result<(), ActorProcessingErr> {
        let (cell, failure) = match event {
            SupervisionEvent::ActorFailed(cell, err) => (cell, Some(err.to_string())),
            SupervisionEvent::ActorTerminated(cell, _, _) => (cell, None),
            _ => return Ok(()),
        };
        let Some((slot, generation)) = state.by_actor.remove(&cell.get_id()) else {
            return Ok(());
        };
        let Some(s) = state.slots.get_mut(slot as usize) else {
            return Ok(());
        };
        if s.generation != generation {
            return Ok(());
        }
        let reason = match failure {
            Some(e) => StopReason::Failed(e),
            None => StopReason::of(&s.reason, || "the instance stopped".into()),
        };
        s.actor = None;
        s.endpoint = None;
        match reason {
            _ if state.draining || s.retired => state.finish_if_drained(&myself),
            StopReason::Drained => state.finish_if_drained(&myself),
            StopReason::Recycled(why) => {
                s.recycles += 1;
                s.last_error = Some(format!("recycled: {why}"));
                s.state = InstanceState::Restarting;
                myself.send_message(AppMsg::Restart { slot, generation })?;
            }
            StopReason::Failed(error) => state.on_failure(&myself, slot, error),
        }
        state.report();
        Ok(())
    }

    async fn post_stop(
        &self,
        myself: ActorRef<AppMsg>,
        state: &mut AppState,
    ) -> Result<(), ActorProcessingErr> {
        let _ = state.args.parent.send_message(NodeMsg::AppStopped {
            key: state.args.key.clone(),
            actor: myself.get_id(),
        });
        Ok(())
    }
}
