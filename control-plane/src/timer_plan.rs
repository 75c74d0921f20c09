//! What the leader does about timers now: a pure function of the replicated state,
//! the time and a source of invocation ids. The timer service (leader only) runs
//! it, proposes the commands, and dispatches the runs; this file decides, without
//! clocks or sockets.
//!
//! - a timer function of an app's active version, not disabled
//!   (`AzureWebJobs.<name>.Disabled`), whose schedule resolves against the app's
//!   settings, gets [`timers::due`]'s answer: its first `ScheduleTimer`, a
//!   `FireTimer` for a due tick (with a new invocation id), a `ScheduleTimer` that
//!   skips a missed tick (no monitor) or follows a changed schedule;
//! - a disabled timer does nothing (re-enabled, its missed ticks collapse into one
//!   past-due run, as Azure's listener does when it starts again);
//! - a `runOnStartup` timer that has not run since its app's active version was
//!   deployed runs once now (not past due): its next tick is moved to now
//!   (`ScheduleTimer`), then fired; the tick after it is the schedule's. "Since the
//!   deploy" compares ticks with the version's `deployed_at_ms` only, so leaders
//!   with skewed clocks cannot run it twice;
//! - every recorded run that this leader is not dispatching yet is to be dispatched,
//!   with its recorded invocation id: at a new term, all of them.

use std::collections::HashSet;

use chrono::{DateTime, Utc};
use strom_proto::command::{Command, TimerFire, TimerId};
use strom_proto::manifest::{is_function_disabled, Trigger};
use strom_proto::timers::{due, Due, TimerSpec};
use strom_proto::version::Feature;

use crate::cluster_state::ClusterState;
use crate::timer_records::{Attempt, TimerRecord};

/// One thing to do.
#[derive(Debug, Clone, PartialEq)]
pub enum TimerAction {
    /// Propose this timer command.
    Propose(Command),
    /// The timer cannot be scheduled: why (logged, shown by the status commands).
    Invalid { timer: TimerId, reason: String },
}

/// The plan for `now`: what to propose, and when to look again at the latest
/// (`None`: no timer is waiting for a time).
#[derive(Debug, Default, PartialEq)]
pub struct Plan {
    pub actions: Vec<TimerAction>,
    pub wake_at_ms: Option<i64>,
}

fn at(ms: i64) -> DateTime<Utc> {
    DateTime::from_timestamp_millis(ms).unwrap_or_default()
}

/// What every timer of the cluster needs at `now_ms`.
pub fn plan(state: &ClusterState, now_ms: i64, mut new_id: impl FnMut() -> String) -> Plan {
    let mut out = Plan::default();
    if !state.allows(Feature::Timers) {
        return out;
    }
    let mut wake = |t: i64| {
        out.wake_at_ms = Some(out.wake_at_ms.map_or(t, |w| w.min(t)));
    };
    let mut actions = Vec::new();
    for app in state.apps.values() {
        for f in &app.active().manifest.functions {
            let Trigger::Timer(trigger) = &f.trigger else {
                continue;
            };
            if is_function_disabled(&app.settings, &f.name) {
                continue;
            }
            let timer = TimerId {
                app: app.name.clone(),
                function: f.name.clone(),
            };
            let spec = match TimerSpec::resolve(trigger, &app.settings) {
                Ok(spec) => spec,
                Err(reason) => {
                    actions.push(TimerAction::Invalid { timer, reason });
                    continue;
                }
            };
            let record = state.timers.get(&timer);
            let status = record.map(TimerRecord::status);
            let running = record.is_some_and(|r| r.running.is_some());
            let deployed_ms = app.active().deployed_at_ms;
            if spec.run_on_startup && !running && startup_due(record, deployed_ms) {
                let startup = now_ms.max(deployed_ms);
                match record {
                    Some(r) if r.next_ms >= deployed_ms && r.next_ms <= now_ms => {
                        let Some(next) = spec.next_after(at(now_ms)) else {
                            continue;
                        };
                        actions.push(TimerAction::Propose(Command::FireTimer(Box::new(
                            TimerFire {
                                timer: timer.clone(),
                                tick_ms: r.next_ms,
                                invocation_id: new_id(),
                                past_due: false,
                                next_ms: next.timestamp_millis().max(r.next_ms + 1),
                                schedule: spec.describe(),
                                at_ms: now_ms,
                            },
                        ))));
                        wake(next.timestamp_millis());
                    }
                    _ => {
                        actions.push(TimerAction::Propose(Command::ScheduleTimer {
                            timer: timer.clone(),
                            replaces_ms: record.map(|r| r.next_ms),
                            next_ms: startup,
                            schedule: spec.describe(),
                            at_ms: now_ms,
                        }));
                        wake(startup);
                    }
                }
                continue;
            }
            let schedule = |next: DateTime<Utc>| Command::ScheduleTimer {
                timer: timer.clone(),
                replaces_ms: record.map(|r| r.next_ms),
                next_ms: next.timestamp_millis(),
                schedule: spec.describe(),
                at_ms: now_ms,
            };
            match due(&spec, status.as_ref(), running, at(now_ms)) {
                None => actions.push(TimerAction::Invalid {
                    timer: timer.clone(),
                    reason: format!("schedule `{}` has no next tick", spec.describe()),
                }),
                Some(Due::Schedule { next }) | Some(Due::Skip { next }) => {
                    actions.push(TimerAction::Propose(schedule(next)));
                    wake(next.timestamp_millis());
                }
                Some(Due::Wait { at }) => wake(at.timestamp_millis()),
                // It waits for its run; the run's completion is the next event.
                Some(Due::Busy) => {}
                Some(Due::Run {
                    tick,
                    past_due,
                    next,
                }) => {
                    actions.push(TimerAction::Propose(Command::FireTimer(Box::new(
                        TimerFire {
                            timer: timer.clone(),
                            tick_ms: tick.timestamp_millis(),
                            invocation_id: new_id(),
                            past_due,
                            next_ms: next.timestamp_millis(),
                            schedule: spec.describe(),
                            at_ms: now_ms,
                        },
                    ))));
                    wake(next.timestamp_millis());
                }
            }
        }
    }
    // Retries waiting for their time.
    for retry in state.timer_retries.values() {
        if retry.retry_at_ms > now_ms {
            wake(retry.retry_at_ms);
        }
    }
    out.actions = actions;
    out
}

/// Whether a `runOnStartup` timer has yet to run for the version deployed at
/// `deployed_ms`: it has not fired a tick since.
fn startup_due(record: Option<&TimerRecord>, deployed_ms: i64) -> bool {
    record
        .and_then(|r| r.last_ms)
        .is_none_or(|last| last < deployed_ms)
}

/// The recorded runs this leader must dispatch (again) at `now_ms`: each run's
/// current attempt whose invocation id it is not dispatching already and whose
/// retry time (if a retry) has come. Each keeps its id, so a handler sees one id
/// per attempt however many leaders sent it.
pub fn to_dispatch<'a>(
    state: &'a ClusterState,
    dispatching: &HashSet<String>,
    now_ms: i64,
) -> Vec<(&'a TimerId, Attempt)> {
    state
        .timer_attempts()
        .filter(|(_, a)| !dispatching.contains(a.invocation_id()) && a.due_ms() <= now_ms)
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::timer_records::tests::with_timer_app;
    use std::sync::Arc;
    use strom_proto::command::{CommandResult, TimerOutcome};

    fn ids() -> impl FnMut() -> String {
        let mut n = 0;
        move || {
            n += 1;
            format!("id-{n}")
        }
    }

    /// Apply every proposal; return them.
    fn step(state: &mut ClusterState, now_ms: i64, new_id: &mut impl FnMut() -> String) -> Plan {
        let p = plan(state, now_ms, &mut *new_id);
        for a in &p.actions {
            if let TimerAction::Propose(c) = a {
                assert_eq!(state.apply(c), CommandResult::Applied, "{c:?}");
            }
        }
        p
    }

    #[test]
    fn a_timer_is_scheduled_fired_once_and_dispatched_again_by_a_new_leader() {
        // `*/2 * * * * *`: every 2 s.
        let mut s = with_timer_app();
        let mut new_id = ids();
        let p = step(&mut s, 1_000, &mut new_id);
        assert!(matches!(
            p.actions.as_slice(),
            [TimerAction::Propose(Command::ScheduleTimer {
                next_ms: 2_000,
                replaces_ms: None,
                ..
            })]
        ));
        assert_eq!(p.wake_at_ms, Some(2_000));
        // Not yet due: only the wake-up.
        let p = step(&mut s, 1_500, &mut new_id);
        assert!(p.actions.is_empty());
        assert_eq!(p.wake_at_ms, Some(2_000));
        // Due: one fire, with a new id.
        let p = step(&mut s, 2_010, &mut new_id);
        let [TimerAction::Propose(Command::FireTimer(fire))] = p.actions.as_slice() else {
            panic!("{p:?}")
        };
        assert_eq!(
            (fire.tick_ms, fire.next_ms, fire.invocation_id.as_str()),
            (2_000, 4_000, "id-1")
        );
        assert!(!fire.past_due);
        // While it runs, the next tick waits; the run is to be dispatched, once per leader.
        let p = step(&mut s, 4_500, &mut new_id);
        assert!(p.actions.is_empty(), "{p:?}");
        let runs = to_dispatch(&s, &HashSet::new(), 4_500);
        assert_eq!(runs.len(), 1);
        assert_eq!(runs[0].1.invocation_id(), "id-1");
        let dispatching: HashSet<String> = ["id-1".to_string()].into();
        assert!(to_dispatch(&s, &dispatching, 4_500).is_empty());
        // Completed late: the waiting tick runs now, past due only if beyond the grace.
        let timer = runs[0].0.clone();
        s.apply(&Command::CompleteTimer {
            timer,
            invocation_id: "id-1".into(),
            outcome: TimerOutcome {
                succeeded: true,
                error: String::new(),
                duration_ms: 2_500,
            },
            at_ms: 4_500,
        });
        let p = step(&mut s, 4_600, &mut new_id);
        let [TimerAction::Propose(Command::FireTimer(fire))] = p.actions.as_slice() else {
            panic!("{p:?}")
        };
        assert_eq!(
            (fire.tick_ms, fire.next_ms, fire.invocation_id.as_str()),
            (4_000, 6_000, "id-2")
        );
    }

    #[test]
    fn a_run_on_startup_timer_runs_once_per_deploy_and_keeps_its_schedule() {
        use crate::cluster_state::tests::{deploy, manifest};
        let mut s = initialized_at_protocol_6();
        let startup = r#"{"bindings":[{"type":"timerTrigger","direction":"in","name":"t","schedule":"0 0 3 * * *","runOnStartup":true}]}"#;
        let three_am = 1_800_068_400_000; // 2027-01-16T03:00:00Z
        let m = manifest("api", &[("nightly", startup)]);
        s.apply(&deploy("batch", 1, m.clone(), 1_800_000_000_000));
        let mut new_id = ids();
        // Deployed: its next tick moves to now, then runs (not past due).
        let p = step(&mut s, 1_800_000_000_500, &mut new_id);
        assert!(
            matches!(
                p.actions.as_slice(),
                [TimerAction::Propose(Command::ScheduleTimer {
                    next_ms: 1_800_000_000_500,
                    ..
                })]
            ),
            "{p:?}"
        );
        let p = step(&mut s, 1_800_000_000_510, &mut new_id);
        let [TimerAction::Propose(Command::FireTimer(fire))] = p.actions.as_slice() else {
            panic!("{p:?}")
        };
        assert_eq!((fire.tick_ms, fire.past_due), (1_800_000_000_500, false));
        assert_eq!(fire.next_ms, three_am, "the schedule goes on");
        let timer = fire.timer.clone();
        complete(&mut s, &timer, "id-1", 1_800_000_001_000);
        // Once per deploy: nothing more until 03:00, even with a clock behind.
        for now in [1_800_000_002_000, 1_799_999_000_000] {
            let p = step(&mut s, now, &mut new_id);
            assert!(p.actions.is_empty(), "{p:?}");
        }
        // A new version runs it again; a settings change does not.
        s.apply(&Command::SetAppSettings {
            app: timer.app.clone(),
            set: [("X".to_string(), "1".to_string())].into(),
            remove: vec![],
            at_ms: 1_800_000_003_000,
        });
        assert!(step(&mut s, 1_800_000_003_100, &mut new_id)
            .actions
            .is_empty());
        let mut m2 = m;
        m2.functions[0].name = "nightly".into();
        m2.host.function_timeout_ms = Some(60_000);
        s.apply(&deploy("batch", 2, m2, 1_800_000_004_000));
        let p = step(&mut s, 1_800_000_004_100, &mut new_id);
        assert!(
            matches!(
                p.actions.as_slice(),
                [TimerAction::Propose(Command::ScheduleTimer { .. })]
            ),
            "{p:?}"
        );
        let p = step(&mut s, 1_800_000_004_200, &mut new_id);
        assert!(
            matches!(p.actions.as_slice(), [TimerAction::Propose(Command::FireTimer(f))] if f.tick_ms == 1_800_000_004_100),
            "{p:?}"
        );
    }

    fn initialized_at_protocol_6() -> ClusterState {
        let mut s = crate::cluster_state::tests::initialized();
        s.apply(&Command::SetClusterProtocol {
            protocol: Feature::Timers.since(),
            at_ms: 1,
        });
        s
    }

    fn complete(s: &mut ClusterState, timer: &TimerId, id: &str, at_ms: i64) {
        let r = s.apply(&Command::CompleteTimer {
            timer: timer.clone(),
            invocation_id: id.into(),
            outcome: TimerOutcome {
                succeeded: true,
                error: String::new(),
                duration_ms: 1,
            },
            at_ms,
        });
        assert_eq!(r, CommandResult::Applied);
    }

    #[test]
    fn disabled_and_unresolvable_timers_do_not_fire() {
        let mut s = with_timer_app();
        let mut new_id = ids();
        let app = s.apps.keys().next().unwrap().clone();
        Arc::make_mut(s.apps.get_mut(&app).unwrap())
            .settings
            .insert("AzureWebJobs.tick.Disabled".into(), "true".into());
        assert_eq!(step(&mut s, 1_000, &mut new_id), Plan::default());
        let settings = &mut Arc::make_mut(s.apps.get_mut(&app).unwrap()).settings;
        settings.clear();
        settings.insert("WEBSITE_TIME_ZONE".into(), "Nowhere/Land".into());
        let p = plan(&s, 1_000, &mut new_id);
        assert!(
            matches!(&p.actions[..], [TimerAction::Invalid { reason, .. }] if reason.contains("Nowhere/Land")),
            "{p:?}"
        );
        // Before the cluster speaks protocol 6, nothing is planned.
        s.protocol = 5;
        Arc::make_mut(s.apps.get_mut(&app).unwrap())
            .settings
            .clear();
        assert_eq!(plan(&s, 1_000, &mut new_id), Plan::default());
    }
}
