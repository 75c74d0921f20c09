//! A runtime of pretend instances, for testing the supervisor tree in virtual time
//! (`#[tokio::test(start_paused = true)]`): no processes, no sockets, no clocks
//! but tokio's. It implements the same [`InstanceRuntime`] trait as the process
//! and Docker runtimes (which the conformance suite tests for real), so the actor
//! tree above it runs unchanged.
//!
//! Each app version behaves as told ([`Behaviour`]); tests crash instances, see
//! which are running, and count starts and stops.

use std::collections::BTreeMap;
use std::net::{Ipv4Addr, SocketAddr};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use strom_proto::ids::{AppName, VersionId};
use tokio::sync::{broadcast, watch};

use super::{ExitInfo, InstanceControl, InstanceRuntime, InstanceSpec, RuntimeError, Started};

/// How instances of one app version behave.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub enum Behaviour {
    /// Start at once, Ready at the first probe, run until stopped or crashed.
    #[default]
    Healthy,
    /// Start, then exit at once with this code.
    ExitAtOnce(i32),
    /// Start, never answer the probe.
    NeverReady,
    /// Take this long to start (a slow image pull, a big container).
    SlowStart(Duration),
    /// Fail to start with this error.
    FailStart(String),
}

/// One pretend instance.
#[derive(Debug, Clone)]
pub struct FakeInstance {
    pub app: AppName,
    pub version: VersionId,
    pub instance_id: String,
    pub endpoint: SocketAddr,
    pub stopped: bool,
}

#[derive(Default)]
struct State {
    behaviours: BTreeMap<(AppName, VersionId), Behaviour>,
    instances: Vec<(FakeInstance, watch::Sender<Option<ExitInfo>>, bool)>,
    next_port: u16,
    starts: usize,
}

/// Cheap to clone; every clone shares the same pretend world.
#[derive(Clone, Default)]
pub struct FakeRuntime {
    state: Arc<Mutex<State>>,
}

impl FakeRuntime {
    pub fn new() -> FakeRuntime {
        FakeRuntime::default()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().expect("fake runtime lock")
    }

    /// Make instances of `app` at `version` started from now on behave so.
    pub fn behave(&self, app: &AppName, version: &VersionId, behaviour: Behaviour) {
        self.lock()
            .behaviours
            .insert((app.clone(), version.clone()), behaviour);
    }

    /// Instances started and not yet ended.
    pub fn running(&self) -> Vec<FakeInstance> {
        self.lock()
            .instances
            .iter()
            .filter(|(i, exit, _)| !i.stopped && exit.borrow().is_none())
            .map(|(i, _, _)| i.clone())
            .collect()
    }

    /// Every instance ever started.
    pub fn all(&self) -> Vec<FakeInstance> {
        self.lock()
            .instances
            .iter()
            .map(|(i, _, _)| i.clone())
            .collect()
    }

    /// How many starts were asked for (failed ones included).
    pub fn starts(&self) -> usize {
        self.lock().starts
    }

    /// End a running instance as a crash would.
    pub fn crash(&self, instance_id: &str, how: ExitInfo) {
        let state = self.lock();
        if let Some((_, exit, _)) = state
            .instances
            .iter()
            .find(|(i, _, _)| i.instance_id == instance_id)
        {
            exit.send_replace(Some(how));
        }
    }

    fn behaviour(&self, spec: &InstanceSpec) -> Behaviour {
        self.lock()
            .behaviours
            .get(&(spec.app.clone(), spec.version.clone()))
            .cloned()
            .unwrap_or_default()
    }
}

#[async_trait::async_trait]
impl InstanceRuntime for FakeRuntime {
    fn name(&self) -> &'static str {
        "fake"
    }

    async fn start(&self, spec: &InstanceSpec) -> Result<Started, RuntimeError> {
        self.lock().starts += 1;
        let behaviour = self.behaviour(spec);
        match &behaviour {
            Behaviour::FailStart(e) => return Err(RuntimeError::Other(e.clone())),
            Behaviour::SlowStart(d) => tokio::time::sleep(*d).await,
            _ => {}
        }
        let (exit_tx, exited) = watch::channel(None);
        let (logs, lines) = broadcast::channel(16);
        let endpoint = {
            let mut state = self.lock();
            state.next_port += 1;
            let endpoint = SocketAddr::from((Ipv4Addr::LOCALHOST, 40_000 + state.next_port));
            let ready = behaviour != Behaviour::NeverReady;
            state.instances.push((
                FakeInstance {
                    app: spec.app.clone(),
                    version: spec.version.clone(),
                    instance_id: spec.instance_id.clone(),
                    endpoint,
                    stopped: false,
                },
                exit_tx.clone(),
                ready,
            ));
            endpoint
        };
        if let Behaviour::ExitAtOnce(code) = behaviour {
            exit_tx.send_replace(Some(ExitInfo::Code(code)));
        }
        Ok(Started {
            endpoint,
            pid: None,
            logs,
            lines: Some(lines),
            exited,
            control: Box::new(FakeControl {
                runtime: self.clone(),
                instance_id: spec.instance_id.clone(),
                exit: exit_tx,
            }),
            not_ready_hint: None,
        })
    }

    async fn ready(&self, endpoint: SocketAddr) -> bool {
        self.lock()
            .instances
            .iter()
            .any(|(i, exit, ready)| i.endpoint == endpoint && *ready && exit.borrow().is_none())
    }
}

struct FakeControl {
    runtime: FakeRuntime,
    instance_id: String,
    exit: watch::Sender<Option<ExitInfo>>,
}

#[async_trait::async_trait]
impl InstanceControl for FakeControl {
    async fn stop(&mut self, _grace: Duration) -> ExitInfo {
        let mut state = self.runtime.lock();
        if let Some((i, _, _)) = state
            .instances
            .iter_mut()
            .find(|(i, _, _)| i.instance_id == self.instance_id)
        {
            i.stopped = true;
        }
        let how = self.exit.borrow().clone().unwrap_or(ExitInfo::Signal(15));
        self.exit.send_replace(Some(how.clone()));
        how
    }
}
