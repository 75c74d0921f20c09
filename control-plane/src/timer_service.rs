//! The seam between the leader's timer duties and the data plane: what a run is
//! sent with ([`TimerDispatch`], built by [`dispatch_for`] from the replicated
//! record, a pure function), and who sends it ([`TimerDispatcher`], the node's
//! gateway, which hands it to a Ready instance of the app here or over the hop).
//!
//! The leader's term task ([`crate::leader_duties`]) runs [`crate::timer_plan`]
//! every round, commits its proposals (`FireTimer` before any dispatch), sends every
//! recorded run it is not sending yet, and commits `CompleteTimer` with the outcome.

use std::sync::{Arc, OnceLock};

use futures::future::BoxFuture;
use serde::{Deserialize, Serialize};
use strom_proto::command::{TimerId, TimerOutcome};
use strom_proto::timers::{self, ScheduleStatus};

use crate::cluster_state::ClusterState;
use crate::timer_records::TimerRun;

/// One run of a timer function, as the handler gets it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TimerDispatch {
    pub timer: TimerId,
    /// The tick's invocation id: the same for every dispatch of this run.
    pub invocation_id: String,
    /// The trigger binding's name (`Data.{binding}`).
    pub binding: String,
    /// Azure's timer value (`Schedule`, `ScheduleStatus`, `IsPastDue`).
    pub value: serde_json::Value,
    /// The tick's scheduled time (Unix ms), for the lateness the record shows.
    pub tick_ms: i64,
}

/// Sends a run to an instance of its app and waits for its outcome. The gateway
/// implements it; it never gives up while the future is polled except with an
/// outcome (a failed run is an outcome).
pub trait TimerDispatcher: Send + Sync {
    fn dispatch(&self, run: TimerDispatch) -> BoxFuture<'static, TimerOutcome>;
}

/// Where the node's dispatcher is set once its gateway exists. Cheap to clone.
#[derive(Clone, Default)]
pub struct DispatcherSlot(Arc<OnceLock<Arc<dyn TimerDispatcher>>>);

impl DispatcherSlot {
    pub fn set(&self, dispatcher: Arc<dyn TimerDispatcher>) {
        let _ = self.0.set(dispatcher);
    }

    pub fn get(&self) -> Option<Arc<dyn TimerDispatcher>> {
        self.0.get().cloned()
    }
}

/// What `run` of `timer` is sent with: Azure's value as its listener builds it —
/// the status before this run (`Last`: the previous run's tick, `Next`: this
/// tick) in the app's time zone, and `IsPastDue`. `None`: the timer is no longer
/// a timer of its app's active version (its record goes with the next apply).
pub fn dispatch_for(
    state: &ClusterState,
    timer: &TimerId,
    run: &TimerRun,
) -> Option<TimerDispatch> {
    let trigger = state.timer_trigger(timer)?;
    let app = state.apps.get(&timer.app)?;
    let record = state.timers.get(timer)?;
    let zone = timers::time_zone(&app.settings).unwrap_or(chrono_tz::Tz::UTC);
    let at = |ms: i64| chrono::DateTime::from_timestamp_millis(ms).unwrap_or_default();
    // `useMonitor: false`: Azure keeps no status, and sends none.
    let status = (trigger.use_monitor != Some(false)).then(|| ScheduleStatus {
        last: record.last_outcome.as_ref().map(|o| at(o.tick_ms)),
        next: at(run.tick_ms),
        last_updated: at(run.fired_at_ms),
        schedule: record.schedule.clone(),
    });
    Some(TimerDispatch {
        timer: timer.clone(),
        invocation_id: run.invocation_id.clone(),
        binding: trigger.binding_name.clone(),
        value: timers::timer_info(zone, status.as_ref(), run.past_due),
        tick_ms: run.tick_ms,
    })
}

/// A run of `timer` now, outside its schedule (an admin invoke): a new id,
/// `IsPastDue` false, the status as it is. Not a tick: the record is untouched.
pub fn manual_dispatch(
    state: &ClusterState,
    timer: &TimerId,
    invocation_id: String,
    now_ms: i64,
) -> Option<TimerDispatch> {
    let trigger = state.timer_trigger(timer)?;
    let app = state.apps.get(&timer.app)?;
    let zone = timers::time_zone(&app.settings).unwrap_or(chrono_tz::Tz::UTC);
    let status = state
        .timers
        .get(timer)
        .filter(|_| trigger.use_monitor != Some(false))
        .map(|r| r.status());
    Some(TimerDispatch {
        timer: timer.clone(),
        invocation_id,
        binding: trigger.binding_name.clone(),
        value: timers::timer_info(zone, status.as_ref(), false),
        tick_ms: now_ms,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::timer_records::tests::with_timer_app;
    use strom_proto::command::{Command, CommandResult, TimerFire};

    #[test]
    fn a_run_is_sent_with_azures_timer_value_in_the_apps_zone() {
        let mut s = with_timer_app();
        let timer = TimerId {
            app: strom_proto::ids::AppName::parse("batch").unwrap(),
            function: "tick".into(),
        };
        let fire = |tick_ms: i64, id: &str, past_due: bool| {
            Command::FireTimer(Box::new(TimerFire {
                timer: timer.clone(),
                tick_ms,
                invocation_id: id.into(),
                past_due,
                next_ms: tick_ms + 2_000,
                schedule: "*/2 * * * * * (UTC)".into(),
                at_ms: tick_ms + 5,
            }))
        };
        assert_eq!(
            s.apply(&fire(1_800_000_000_000, "a", false)),
            CommandResult::Applied
        );
        let (_, run) = s.timer_runs().next().unwrap();
        let d = dispatch_for(&s, &timer, &run.clone()).unwrap();
        assert_eq!(d.invocation_id, "a");
        assert_eq!(d.binding, "t");
        assert_eq!(d.value["IsPastDue"], false);
        assert_eq!(d.value["ScheduleStatus"]["Last"], "0001-01-01T00:00:00");
        assert_eq!(
            d.value["ScheduleStatus"]["Next"],
            "2027-01-15T08:00:00.000+00:00"
        );
        s.apply(&Command::CompleteTimer {
            timer: timer.clone(),
            invocation_id: "a".into(),
            outcome: TimerOutcome {
                succeeded: true,
                error: String::new(),
                duration_ms: 3,
            },
            at_ms: 1_800_000_000_100,
        });
        // The next run names the previous tick as Last, in the app's zone.
        s.apps
            .values_mut()
            .next()
            .unwrap()
            .settings
            .insert("WEBSITE_TIME_ZONE".into(), "W. Europe Standard Time".into());
        assert_eq!(
            s.apply(&fire(1_800_000_002_000, "b", true)),
            CommandResult::Applied
        );
        let (_, run) = s.timer_runs().next().unwrap();
        let d = dispatch_for(&s, &timer, &run.clone()).unwrap();
        assert_eq!(d.value["IsPastDue"], true);
        assert_eq!(
            d.value["ScheduleStatus"]["Last"],
            "2027-01-15T09:00:00.000+01:00"
        );
        assert_eq!(
            d.value["ScheduleStatus"]["Next"],
            "2027-01-15T09:00:02.000+01:00"
        );
        // An admin invoke: a new id, never past due, the record untouched.
        let before = s.timers.clone();
        let m = manual_dispatch(&s, &timer, "manual".into(), 1_800_000_002_500).unwrap();
        assert_eq!(m.invocation_id, "manual");
        assert_eq!(m.value["IsPastDue"], false);
        assert_eq!(s.timers, before);
        let other = TimerId {
            app: timer.app.clone(),
            function: "api".into(),
        };
        assert!(manual_dispatch(&s, &other, "x".into(), 0).is_none());
    }
}
