//! Why an instance actor stopped, as a value its supervisor reads (not a string
//! prefix in ractor's stop reason).
//!
//! The instance writes its reason into a slot shared with its supervisor before
//! it stops; the supervisor reads the slot when the termination event arrives.
//! An actor that failed (an error from a handler) or stopped without writing a
//! reason is a failure.

use std::sync::{Arc, OnceLock};

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StopReason {
    /// A planned stop: it drained and stopped (scale-down, a new version, shutdown).
    Drained,
    /// A planned replacement (e.g. after `functionTimeout`): restarted at once,
    /// not counted toward the crash-loop limit.
    Recycled(String),
    /// It failed (the handler exited, never became ready, could not start).
    Failed(String),
}

/// Shared between an instance and its supervisor; written once.
pub type ReasonSlot = Arc<OnceLock<StopReason>>;

impl StopReason {
    /// What a supervisor concludes from a termination: the reason the instance
    /// gave, else a failure described by `fallback`.
    pub fn of(slot: &ReasonSlot, fallback: impl FnOnce() -> String) -> StopReason {
        slot.get()
            .cloned()
            .unwrap_or_else(|| StopReason::Failed(fallback()))
    }
}
