//! What a worker reports about its instances (shown by `strom app show` and
//! `strom cluster status`).

use serde::{Deserialize, Serialize};

use crate::ids::{AppName, VersionId};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum InstanceState {
    /// Starting, or waiting for the readiness probe.
    Starting,
    /// Answering requests.
    Ready,
    /// No longer receiving new requests; finishing in-flight ones, then stopping.
    Draining,
    /// Failed; a restart is scheduled under the restart policy.
    Restarting,
    /// More than `max_restarts` failures within the period; retried at the capped backoff.
    CrashLooping,
}

impl InstanceState {
    pub fn as_str(&self) -> &'static str {
        match self {
            InstanceState::Starting => "Starting",
            InstanceState::Ready => "Ready",
            InstanceState::Draining => "Draining",
            InstanceState::Restarting => "Restarting",
            InstanceState::CrashLooping => "CrashLooping",
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct InstanceStatus {
    pub app: AppName,
    pub version: VersionId,
    /// Slot number within the app version (0..instances).
    pub slot: u32,
    /// Id of the current process/container (changes on restart).
    pub instance_id: String,
    pub state: InstanceState,
    /// Failures of this slot so far (each followed by a restart).
    pub restarts: u64,
    pub pid: Option<u32>,
    /// Why the last start or run failed.
    pub last_error: Option<String>,
    /// Whether this version currently receives this node's traffic for the app.
    pub serving: bool,
}

impl InstanceStatus {
    /// Why the instance fails, while it is failing (restarting or crash-looping).
    pub fn failure(&self) -> Option<&str> {
        match self.state {
            InstanceState::Restarting | InstanceState::CrashLooping => self.last_error.as_deref(),
            _ => None,
        }
    }
}

/// One function's RabbitMQ trigger on one worker, as its heartbeat reports it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TriggerStatus {
    pub app: AppName,
    pub function: String,
    pub queue: String,
    /// Consumers the worker runs for it (one per Ready instance).
    pub consumers: u32,
    /// Of those, consuming now (connected, `basic.consume` answered).
    pub consuming: u32,
    /// Messages delivered to them and not yet acknowledged.
    pub in_flight: u32,
    /// Why the others do not consume (never a password).
    pub error: Option<String>,
}
