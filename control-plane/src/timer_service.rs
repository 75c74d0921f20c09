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
use strom_proto::command::{Command, TimerId, TimerOutcome, TimerRetry};
use strom_proto::timers::{self, ScheduleStatus};
use strom_proto::version::Feature;

use crate::cluster_state::ClusterState;
use crate::timer_records::Attempt;

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
    /// Azure's `Metadata.RetryContext` (`RetryCount`, `MaxRetryCount`,
    /// `Exception`) when the function has a retry policy.
    #[serde(default)]
    pub retry_context: Option<serde_json::Value>,
    /// A tick of its schedule (false: an admin invoke, `strom fn invoke`).
    #[serde(default = "scheduled")]
    pub scheduled: bool,
}

fn scheduled() -> bool {
    true
}

/// Whether the sender may still send a run: the leader that fired it still leads
/// (confirmed with a quorum). Asked before every attempt to reach an instance, so
/// a deposed leader that has not heard of its successor yet sends nothing more.
pub type StillLeading = Arc<dyn Fn() -> BoxFuture<'static, bool> + Send + Sync>;

/// Sends a run to an instance of its app and waits for its outcome. The gateway
/// implements it; it gives up only with an outcome (a failed run is an outcome),
/// or with `None` once `leading` says no (nothing ran on its behalf since).
pub trait TimerDispatcher: Send + Sync {
    fn dispatch(
        &self,
        run: TimerDispatch,
        leading: StillLeading,
    ) -> BoxFuture<'static, Option<TimerOutcome>>;
}

/// For runs no leader fenced (an admin invoke): always.
pub fn always() -> StillLeading {
    Arc::new(|| Box::pin(async { true }))
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

/// What `attempt` of a run of `timer` is sent with: Azure's value as its
/// listener builds it — the status before this run (`Last`: the previous run's
/// tick, `Next`: this tick) in the app's time zone, and `IsPastDue` — and the
/// `RetryContext`. `None`: the timer is no longer a timer of its app's active
/// version (its record goes with the next apply).
pub fn dispatch_for(
    state: &ClusterState,
    timer: &TimerId,
    attempt: &Attempt,
) -> Option<TimerDispatch> {
    let run = &attempt.run;
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
        invocation_id: attempt.invocation_id().to_string(),
        binding: trigger.binding_name.clone(),
        value: timers::timer_info(zone, status.as_ref(), run.past_due),
        tick_ms: run.tick_ms,
        retry_context: retry_context(state, timer, attempt),
        scheduled: true,
    })
}

/// Azure's `RetryContext` for `attempt`, when the function has a retry policy:
/// `RetryCount` (0 on the first attempt), `MaxRetryCount`, and `Exception` (why
/// the previous attempt failed, `{"Message": …}`; null on the first).
fn retry_context(
    state: &ClusterState,
    timer: &TimerId,
    attempt: &Attempt,
) -> Option<serde_json::Value> {
    let policy = state.timer_function(timer)?.retry.as_ref()?;
    let exception = attempt
        .retry
        .as_ref()
        .map(|r| serde_json::json!({"Message": r.error}));
    Some(serde_json::json!({
        "RetryCount": attempt.number(),
        "MaxRetryCount": policy.max_retry_count,
        "Exception": exception,
    }))
}

/// What to commit when the attempt `invocation_id` of `timer`'s run ended with
/// `outcome`: `CompleteTimer`, or — when it failed, the cluster speaks protocol 7
/// and the function's retry policy allows another attempt — `RetryTimer` with the
/// next attempt's id and time. A function timeout is a failure like any other.
pub fn outcome_command(
    state: &ClusterState,
    timer: &TimerId,
    invocation_id: &str,
    outcome: TimerOutcome,
    now_ms: i64,
    new_id: impl FnOnce() -> String,
) -> Command {
    let retry = (!outcome.succeeded && state.allows(Feature::TimerRuns))
        .then(|| {
            let (_, attempt) = state
                .timer_attempts()
                .find(|(t, a)| *t == timer && a.invocation_id() == invocation_id)?;
            let policy = state.timer_function(timer)?.retry.as_ref()?;
            let next = attempt.number() + 1;
            let delay = policy.delay_before(next)?;
            Some(Command::RetryTimer(Box::new(TimerRetry {
                timer: timer.clone(),
                failed_invocation_id: invocation_id.to_string(),
                error: outcome.error.clone(),
                attempt: next,
                invocation_id: new_id(),
                retry_at_ms: now_ms.saturating_add(delay as i64),
                at_ms: now_ms,
            })))
        })
        .flatten();
    retry.unwrap_or_else(|| Command::CompleteTimer {
        timer: timer.clone(),
        invocation_id: invocation_id.to_string(),
        outcome,
        at_ms: now_ms,
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
        retry_context: retry_context(
            state,
            timer,
            &Attempt {
                run: crate::timer_records::TimerRun {
                    tick_ms: now_ms,
                    invocation_id: String::new(),
                    past_due: false,
                    fired_at_ms: now_ms,
                },
                retry: None,
            },
        ),
        scheduled: false,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::timer_records::tests::with_timer_app;
    use strom_proto::command::{Command, CommandResult, TimerFire};

    #[test]
    fn a_failed_attempt_is_retried_by_the_policy_then_completed() {
        use crate::cluster_state::tests::{deploy, manifest};
        let mut s = with_timer_app();
        s.protocol = 7;
        let retrying = r#"{"bindings":[{"type":"timerTrigger","direction":"in","name":"t","schedule":"0 0 3 * * *"}],
            "retry":{"strategy":"fixedDelay","maxRetryCount":1,"delayInterval":"00:00:05"}}"#;
        s.apply(&deploy(
            "batch",
            2,
            manifest("api", &[("tick", retrying)]),
            10,
        ));
        let timer = TimerId {
            app: strom_proto::ids::AppName::parse("batch").unwrap(),
            function: "tick".into(),
        };
        let fire = Command::FireTimer(Box::new(TimerFire {
            timer: timer.clone(),
            tick_ms: 1_000,
            invocation_id: "a".into(),
            past_due: false,
            next_ms: 90_000_000,
            schedule: "0 0 3 * * * (UTC)".into(),
            at_ms: 1_000,
        }));
        assert_eq!(s.apply(&fire), CommandResult::Applied);
        let failed = TimerOutcome {
            succeeded: false,
            error: "exit 1".into(),
            duration_ms: 4,
        };
        // The first attempt gets a RetryContext with RetryCount 0.
        let (_, first) = s.timer_attempts().next().unwrap();
        let d = dispatch_for(&s, &timer, &first).unwrap();
        assert_eq!(
            d.retry_context.unwrap(),
            serde_json::json!({"RetryCount": 0, "MaxRetryCount": 1, "Exception": null})
        );
        // It failed: one retry, 5 s later, with its own id.
        let c = outcome_command(&s, &timer, "a", failed.clone(), 2_000, || "b".into());
        let Command::RetryTimer(r) = &c else {
            panic!("{c:?}")
        };
        assert_eq!(
            (r.attempt, r.retry_at_ms, r.invocation_id.as_str()),
            (1, 7_000, "b")
        );
        assert_eq!(s.apply(&c), CommandResult::Applied);
        let (_, retry) = s.timer_attempts().next().unwrap();
        let d = dispatch_for(&s, &timer, &retry).unwrap();
        assert_eq!(d.invocation_id, "b");
        assert_eq!(
            d.retry_context.unwrap(),
            serde_json::json!({"RetryCount": 1, "MaxRetryCount": 1, "Exception": {"Message": "exit 1"}})
        );
        // Not sent before its time.
        assert!(crate::timer_plan::to_dispatch(&s, &Default::default(), 6_999).is_empty());
        assert_eq!(
            crate::timer_plan::to_dispatch(&s, &Default::default(), 7_000).len(),
            1
        );
        // The retry failed too: the policy is spent, the run completes as failed.
        let c = outcome_command(&s, &timer, "b", failed.clone(), 8_000, || "c".into());
        assert!(
            matches!(&c, Command::CompleteTimer { invocation_id, outcome, .. } if invocation_id == "b" && !outcome.succeeded),
            "{c:?}"
        );
        assert_eq!(s.apply(&c), CommandResult::Applied);
        // Below protocol 7 a failure completes at once.
        s.protocol = 6;
        let mut fire2 = fire;
        if let Command::FireTimer(f) = &mut fire2 {
            (f.tick_ms, f.invocation_id, f.next_ms) = (90_000_000, "d".into(), 180_000_000);
        }
        assert_eq!(s.apply(&fire2), CommandResult::Applied);
        let c = outcome_command(&s, &timer, "d", failed, 9_000, || "e".into());
        assert!(matches!(c, Command::CompleteTimer { .. }), "{c:?}");
    }

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
        let (_, attempt) = s.timer_attempts().next().unwrap();
        let d = dispatch_for(&s, &timer, &attempt).unwrap();
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
        std::sync::Arc::make_mut(s.apps.values_mut().next().unwrap())
            .settings
            .insert("WEBSITE_TIME_ZONE".into(), "W. Europe Standard Time".into());
        assert_eq!(
            s.apply(&fire(1_800_000_002_000, "b", true)),
            CommandResult::Applied
        );
        let (_, attempt) = s.timer_attempts().next().unwrap();
        let d = dispatch_for(&s, &timer, &attempt).unwrap();
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
