//! Replicated timer records (protocol 6): per timer function, its schedule status
//! and the run going on, if any. The leader commits `FireTimer` before it dispatches
//! a tick and `CompleteTimer` when the handler has answered; the state machine is
//! what guarantees that a timer never runs twice at once and never runs one tick
//! twice, whichever leader proposes (two leaders of different terms cannot both
//! get a fire of the same timer committed while a run is recorded).

// Rejections are rare business outcomes, returned by value on purpose.
#![allow(clippy::result_large_err)]

use serde::{Deserialize, Serialize};
use strom_proto::command::{Command, Rejection, TimerFire, TimerId, TimerOutcome};
use strom_proto::manifest::{TimerTrigger, Trigger};
use strom_proto::version::Feature;

use crate::cluster_state::ClusterState;

/// One timer function's record.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TimerRecord {
    /// The tick of the last run (its scheduled time, Unix ms).
    pub last_ms: Option<i64>,
    /// The next tick due (Unix ms).
    pub next_ms: i64,
    /// When the record last changed (Azure's `ScheduleStatus.LastUpdated`).
    pub updated_ms: i64,
    /// What `next_ms` was computed from (`timers::TimerSpec::describe`).
    pub schedule: String,
    /// The run going on: dispatched (again, by a new leader) until completed.
    pub running: Option<TimerRun>,
    /// How the last finished run ended.
    pub last_outcome: Option<FinishedRun>,
}

impl TimerRecord {
    /// The record as the schedule side reads it (Azure's `ScheduleStatus`).
    pub fn status(&self) -> strom_proto::timers::ScheduleStatus {
        let at = |ms: i64| chrono::DateTime::from_timestamp_millis(ms).unwrap_or_default();
        strom_proto::timers::ScheduleStatus {
            last: self.last_ms.map(at),
            next: at(self.next_ms),
            last_updated: at(self.updated_ms),
            schedule: self.schedule.clone(),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TimerRun {
    pub tick_ms: i64,
    pub invocation_id: String,
    pub past_due: bool,
    pub fired_at_ms: i64,
}

/// A run being retried (protocol 7): its next attempt. The run stays recorded
/// in its timer's record until an attempt succeeds or the policy gives up.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TimerRetryState {
    /// 1 = the first retry.
    pub attempt: u32,
    /// The attempt's own invocation id (the same on every dispatch of it).
    pub invocation_id: String,
    /// Not before this time (Unix ms).
    pub retry_at_ms: i64,
    /// Why the previous attempt failed (`RetryContext.Exception`).
    pub error: String,
}

/// The attempt of a recorded run to send now or later: the run, and its retry
/// (none for the first attempt).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Attempt {
    pub run: TimerRun,
    pub retry: Option<TimerRetryState>,
}

impl Attempt {
    /// This attempt's invocation id.
    pub fn invocation_id(&self) -> &str {
        match &self.retry {
            Some(r) => &r.invocation_id,
            None => &self.run.invocation_id,
        }
    }

    /// 0 for the first attempt.
    pub fn number(&self) -> u32 {
        self.retry.as_ref().map_or(0, |r| r.attempt)
    }

    /// When it may be sent (Unix ms).
    pub fn due_ms(&self) -> i64 {
        self.retry.as_ref().map_or(i64::MIN, |r| r.retry_at_ms)
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FinishedRun {
    pub tick_ms: i64,
    pub invocation_id: String,
    pub outcome: TimerOutcome,
    pub finished_at_ms: i64,
}

impl ClusterState {
    /// The timer trigger of `timer` in its app's active version.
    pub fn timer_trigger(&self, timer: &TimerId) -> Option<&TimerTrigger> {
        match &self.timer_function(timer)?.trigger {
            Trigger::Timer(t) => Some(t),
            _ => None,
        }
    }

    /// The function of `timer` in its app's active version.
    pub fn timer_function(
        &self,
        timer: &TimerId,
    ) -> Option<&strom_proto::manifest::FunctionManifest> {
        self.apps
            .get(&timer.app)?
            .active()
            .manifest
            .functions
            .iter()
            .find(|f| f.name == timer.function)
    }

    fn timer_exists(&self, timer: &TimerId) -> Result<(), Rejection> {
        if !self.apps.contains_key(&timer.app) {
            return Err(Rejection::AppNotFound {
                app: timer.app.clone(),
            });
        }
        match self.timer_trigger(timer) {
            Some(_) => Ok(()),
            None => Err(Rejection::FunctionNotFound {
                app: timer.app.clone(),
                function: timer.function.clone(),
            }),
        }
    }

    fn busy(timer: &TimerId, record: &TimerRecord) -> Result<(), Rejection> {
        match &record.running {
            Some(run) => Err(Rejection::TimerBusy {
                timer: timer.clone(),
                invocation_id: run.invocation_id.clone(),
            }),
            None => Ok(()),
        }
    }

    /// The current attempt's invocation id of `timer`'s recorded run.
    fn current_attempt_id(&self, timer: &TimerId) -> Option<&str> {
        let run = self.timers.get(timer)?.running.as_ref()?;
        Some(match self.timer_retries.get(timer) {
            Some(r) => &r.invocation_id,
            None => &run.invocation_id,
        })
    }

    /// `ScheduleTimer`, `FireTimer`, `CompleteTimer` and `RetryTimer`.
    pub(crate) fn apply_timer(&mut self, command: &Command) -> Result<bool, Rejection> {
        // Proposed only once every node reads them; refused alike everywhere before.
        if !self.allows(Feature::Timers) {
            return Err(Rejection::NotYetEnabled {
                what: "timers".into(),
                needs: Feature::Timers.since(),
                speaks: self.protocol(),
            });
        }
        match command {
            Command::ScheduleTimer {
                timer,
                replaces_ms,
                next_ms,
                schedule,
                at_ms,
            } => {
                self.timer_exists(timer)?;
                let actual = self.timers.get(timer).map(|r| r.next_ms);
                if actual != *replaces_ms {
                    return Err(Rejection::TimerMoved {
                        timer: timer.clone(),
                        expected: *replaces_ms,
                        actual,
                    });
                }
                match self.timers.get_mut(timer) {
                    Some(record) => {
                        Self::busy(timer, record)?;
                        if record.next_ms == *next_ms && &record.schedule == schedule {
                            return Ok(false);
                        }
                        record.next_ms = *next_ms;
                        record.schedule = schedule.clone();
                        record.updated_ms = *at_ms;
                    }
                    None => {
                        self.timers.insert(
                            timer.clone(),
                            TimerRecord {
                                last_ms: None,
                                next_ms: *next_ms,
                                updated_ms: *at_ms,
                                schedule: schedule.clone(),
                                running: None,
                                last_outcome: None,
                            },
                        );
                    }
                }
                Ok(true)
            }
            Command::FireTimer(fire) => self.fire(fire),
            Command::CompleteTimer {
                timer,
                invocation_id,
                outcome,
                at_ms,
            } => {
                // Only the current attempt completes the run (an older attempt's
                // late answer changes nothing).
                if self.current_attempt_id(timer) != Some(invocation_id.as_str()) {
                    return Err(Rejection::TimerRunNotFound {
                        timer: timer.clone(),
                        invocation_id: invocation_id.clone(),
                    });
                }
                self.timer_retries.remove(timer);
                let record = self.timers.get_mut(timer).expect("a recorded run");
                let run = record.running.take().expect("a recorded run");
                record.updated_ms = *at_ms;
                record.last_outcome = Some(FinishedRun {
                    tick_ms: run.tick_ms,
                    invocation_id: invocation_id.clone(),
                    outcome: outcome.clone(),
                    finished_at_ms: *at_ms,
                });
                Ok(true)
            }
            Command::RetryTimer(retry) => {
                if !self.allows(Feature::TimerRuns) {
                    return Err(Rejection::NotYetEnabled {
                        what: "timer retries".into(),
                        needs: Feature::TimerRuns.since(),
                        speaks: self.protocol(),
                    });
                }
                let timer = &retry.timer;
                if self.current_attempt_id(timer) != Some(retry.failed_invocation_id.as_str()) {
                    return Err(Rejection::TimerRunNotFound {
                        timer: timer.clone(),
                        invocation_id: retry.failed_invocation_id.clone(),
                    });
                }
                self.timer_retries.insert(
                    timer.clone(),
                    TimerRetryState {
                        attempt: retry.attempt,
                        invocation_id: retry.invocation_id.clone(),
                        retry_at_ms: retry.retry_at_ms,
                        error: retry.error.clone(),
                    },
                );
                if let Some(record) = self.timers.get_mut(timer) {
                    record.updated_ms = retry.at_ms;
                }
                Ok(true)
            }
            _ => unreachable!("apply_timer is given timer commands only"),
        }
    }

    fn fire(&mut self, fire: &TimerFire) -> Result<bool, Rejection> {
        let timer = &fire.timer;
        self.timer_exists(timer)?;
        if fire.next_ms <= fire.tick_ms {
            return Err(Rejection::TimerNextNotAfter {
                timer: timer.clone(),
                tick_ms: fire.tick_ms,
                next_ms: fire.next_ms,
            });
        }
        let record = self
            .timers
            .entry(timer.clone())
            .or_insert_with(|| TimerRecord {
                last_ms: None,
                next_ms: fire.tick_ms,
                updated_ms: fire.at_ms,
                schedule: fire.schedule.clone(),
                running: None,
                last_outcome: None,
            });
        Self::busy(timer, record)?;
        // Decided from the record as it is: its next tick, after its last one.
        if record.next_ms != fire.tick_ms || record.last_ms.is_some_and(|l| l >= fire.tick_ms) {
            return Err(Rejection::TimerMoved {
                timer: timer.clone(),
                expected: Some(fire.tick_ms),
                actual: Some(record.next_ms),
            });
        }
        record.last_ms = Some(fire.tick_ms);
        record.next_ms = fire.next_ms;
        record.schedule = fire.schedule.clone();
        record.updated_ms = fire.at_ms;
        record.running = Some(TimerRun {
            tick_ms: fire.tick_ms,
            invocation_id: fire.invocation_id.clone(),
            past_due: fire.past_due,
            fired_at_ms: fire.at_ms,
        });
        Ok(true)
    }

    /// Records of functions that are no longer timers of their app's active
    /// version (a deploy or rollback without them, a deleted app) go.
    pub(crate) fn prune_timers(&mut self) {
        let keep: Vec<TimerId> = self
            .timers
            .keys()
            .filter(|t| self.timer_trigger(t).is_some())
            .cloned()
            .collect();
        self.timers.retain(|t, _| keep.contains(t));
        self.timer_retries.retain(|t, _| keep.contains(t));
    }

    /// The runs a new leader must dispatch again, each with its invocation id.
    pub fn timer_runs(&self) -> impl Iterator<Item = (&TimerId, &TimerRun)> {
        self.timers
            .iter()
            .filter_map(|(t, r)| r.running.as_ref().map(|run| (t, run)))
    }

    /// Each recorded run's current attempt.
    pub fn timer_attempts(&self) -> impl Iterator<Item = (&TimerId, Attempt)> {
        self.timer_runs().map(|(t, run)| {
            (
                t,
                Attempt {
                    run: run.clone(),
                    retry: self.timer_retries.get(t).cloned(),
                },
            )
        })
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::cluster_state::tests::{deploy, initialized, manifest};
    use strom_proto::command::CommandResult;
    use strom_proto::ids::AppName;

    pub(crate) const TIMER: &str = r#"{"bindings":[{"type":"timerTrigger","direction":"in","name":"t","schedule":"*/2 * * * * *"}]}"#;

    fn timer() -> TimerId {
        TimerId {
            app: AppName::parse("batch").unwrap(),
            function: "tick".into(),
        }
    }

    fn fire(tick_ms: i64, id: &str) -> Command {
        Command::FireTimer(Box::new(TimerFire {
            timer: timer(),
            tick_ms,
            invocation_id: id.into(),
            past_due: false,
            next_ms: tick_ms + 2000,
            schedule: "*/2 * * * * * (UTC)".into(),
            at_ms: tick_ms,
        }))
    }

    fn complete(id: &str) -> Command {
        Command::CompleteTimer {
            timer: timer(),
            invocation_id: id.into(),
            outcome: TimerOutcome {
                succeeded: true,
                error: String::new(),
                duration_ms: 5,
            },
            at_ms: 1,
        }
    }

    pub(crate) fn a_retry() -> (TimerId, TimerRetryState) {
        (
            timer(),
            TimerRetryState {
                attempt: 1,
                invocation_id: "r1".into(),
                retry_at_ms: 5000,
                error: "exit 1".into(),
            },
        )
    }

    fn retry(failed: &str, attempt: u32, id: &str) -> Command {
        Command::RetryTimer(Box::new(strom_proto::command::TimerRetry {
            timer: timer(),
            failed_invocation_id: failed.into(),
            error: format!("{failed} failed"),
            attempt,
            invocation_id: id.into(),
            retry_at_ms: 9000 + attempt as i64,
            at_ms: 3000,
        }))
    }

    #[test]
    fn a_retried_run_keeps_the_timer_busy_and_only_its_current_attempt_moves_it() {
        let mut s = with_timer_app();
        s.protocol = 6;
        assert_eq!(s.apply(&fire(2000, "a")), CommandResult::Applied);
        // Before protocol 7: refused alike on every build.
        assert!(matches!(
            s.apply(&retry("a", 1, "b")),
            CommandResult::Rejected(Rejection::NotYetEnabled { needs: 7, .. })
        ));
        s.protocol = 7;
        assert_eq!(s.apply(&retry("a", 1, "b")), CommandResult::Applied);
        // The first attempt's late answer, or a retry of it, moves nothing.
        for stale in [complete("a"), retry("a", 1, "c")] {
            assert!(matches!(
                s.apply(&stale),
                CommandResult::Rejected(Rejection::TimerRunNotFound { .. })
            ));
        }
        // The timer waits for the run (no next tick fires meanwhile).
        assert!(matches!(
            s.apply(&fire(4000, "x")),
            CommandResult::Rejected(Rejection::TimerBusy { .. })
        ));
        let attempts: Vec<Attempt> = s.timer_attempts().map(|(_, a)| a).collect();
        assert_eq!(attempts.len(), 1);
        assert_eq!(
            (
                attempts[0].invocation_id(),
                attempts[0].number(),
                attempts[0].due_ms()
            ),
            ("b", 1, 9001)
        );
        assert_eq!(attempts[0].retry.as_ref().unwrap().error, "a failed");
        assert_eq!(s.apply(&retry("b", 2, "c")), CommandResult::Applied);
        assert_eq!(s.apply(&complete("c")), CommandResult::Applied);
        assert!(s.timer_retries.is_empty());
        let record = &s.timers[&timer()];
        assert!(record.running.is_none());
        assert_eq!(record.last_outcome.as_ref().unwrap().invocation_id, "c");
        assert_eq!(s.apply(&fire(4000, "x")), CommandResult::Applied);
    }

    pub(crate) fn with_timer_app() -> ClusterState {
        let mut s = initialized();
        s.apply(&Command::SetClusterProtocol {
            protocol: Feature::Timers.since(),
            at_ms: 1,
        });
        let r = s.apply(&deploy("batch", 1, manifest("api", &[("tick", TIMER)]), 1));
        assert_eq!(r, CommandResult::Applied);
        s
    }

    #[test]
    fn timer_commands_wait_for_the_protocol() {
        let mut s = initialized();
        s.apply(&deploy("batch", 1, manifest("api", &[("tick", TIMER)]), 1));
        assert!(matches!(
            s.apply(&fire(2000, "a")),
            CommandResult::Rejected(Rejection::NotYetEnabled { needs: 6, .. })
        ));
        let mut s = with_timer_app();
        let mut bad = fire(2000, "a");
        if let Command::FireTimer(f) = &mut bad {
            f.next_ms = 2000;
        }
        assert!(matches!(
            s.apply(&bad),
            CommandResult::Rejected(Rejection::TimerNextNotAfter { .. })
        ));
    }

    #[test]
    fn one_run_at_a_time_and_each_tick_once() {
        let mut s = with_timer_app();
        assert_eq!(s.apply(&fire(2000, "a")), CommandResult::Applied);
        // A second fire while it runs, from this or another leader: refused.
        assert!(matches!(
            s.apply(&fire(4000, "b")),
            CommandResult::Rejected(Rejection::TimerBusy { .. })
        ));
        assert_eq!(s.timer_runs().count(), 1);
        // Only the recorded run completes it.
        assert!(matches!(
            s.apply(&complete("b")),
            CommandResult::Rejected(Rejection::TimerRunNotFound { .. })
        ));
        assert_eq!(s.apply(&complete("a")), CommandResult::Applied);
        assert!(matches!(
            s.apply(&complete("a")),
            CommandResult::Rejected(Rejection::TimerRunNotFound { .. })
        ));
        // The same tick again (a leader that did not see the first): refused.
        assert!(matches!(
            s.apply(&fire(2000, "c")),
            CommandResult::Rejected(Rejection::TimerMoved { .. })
        ));
        // A tick that is not the next one (skipping 4000): refused.
        assert!(matches!(
            s.apply(&fire(6000, "c")),
            CommandResult::Rejected(Rejection::TimerMoved { .. })
        ));
        assert_eq!(s.apply(&fire(4000, "d")), CommandResult::Applied);
        let record = &s.timers[&timer()];
        assert_eq!(
            (
                record.last_ms,
                record.next_ms,
                record.last_outcome.as_ref().map(|o| o.tick_ms)
            ),
            (Some(4000), 6000, Some(2000))
        );
    }

    #[test]
    fn records_follow_the_active_version_and_the_app() {
        let mut s = with_timer_app();
        let schedule = |replaces_ms, next_ms| Command::ScheduleTimer {
            timer: timer(),
            replaces_ms,
            next_ms,
            schedule: "*/2 * * * * * (UTC)".into(),
            at_ms: 1,
        };
        assert_eq!(s.apply(&schedule(None, 2000)), CommandResult::Applied);
        assert_eq!(
            s.apply(&schedule(Some(2000), 2000)),
            CommandResult::Unchanged
        );
        // Decided from a view without the record (an older leader): refused.
        assert!(matches!(
            s.apply(&schedule(None, 4000)),
            CommandResult::Rejected(Rejection::TimerMoved { .. })
        ));
        let missing = TimerId {
            function: "nope".into(),
            ..timer()
        };
        assert!(matches!(
            s.apply(&Command::ScheduleTimer {
                timer: missing,
                replaces_ms: None,
                next_ms: 1,
                schedule: String::new(),
                at_ms: 1
            }),
            CommandResult::Rejected(Rejection::FunctionNotFound { .. })
        ));
        assert_eq!(s.apply(&fire(2000, "a")), CommandResult::Applied);
        // A version without the timer drops its record; the app's deletion too.
        let http = crate::cluster_state::tests::http("x", "");
        s.apply(&deploy("batch", 2, manifest("api", &[("x", &http)]), 2));
        assert!(s.timers.is_empty());
        s.apply(&Command::ActivateVersion {
            app: timer().app,
            version: crate::cluster_state::tests::version(1),
            at_ms: 3,
        });
        // Back with no record: a first fire starts it again.
        assert_eq!(s.apply(&fire(8000, "b")), CommandResult::Applied);
        s.apply(&Command::DeleteApp {
            app: timer().app,
            at_ms: 4,
        });
        assert!(s.timers.is_empty());
    }

    /// A seeded model of the tick protocol over many random histories: leaders
    /// that decide from stale views, leader changes that re-dispatch recorded runs,
    /// crashes between fire and dispatch, duplicate completions, outages. The log
    /// applies what they propose; the rules hold whatever the interleaving.
    #[test]
    fn the_tick_rules_hold_over_a_thousand_seeded_histories() {
        use rand::{Rng, SeedableRng};
        use strom_proto::timers::{due, Due, TimerSpec};

        let spec = TimerSpec::resolve(
            &TimerTrigger {
                binding_name: "t".into(),
                schedule: "00:00:02".into(),
                run_on_startup: false,
                use_monitor: Some(true),
            },
            &Default::default(),
        )
        .unwrap();
        let to_dt = |ms: i64| chrono::DateTime::from_timestamp_millis(ms).unwrap();
        let mut retried = 0;
        for seed in 0..1000u64 {
            let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
            let mut log = with_timer_app();
            // Protocol 7: failed attempts are retried (at most twice here).
            log.protocol = Feature::TimerRuns.since();
            // Retry attempts: (tick, attempt id).
            let mut attempts: Vec<(i64, String)> = Vec::new();
            // Views leaders decide from: the newest, or one some steps old.
            let mut history: Vec<ClusterState> = vec![log.clone()];
            let mut now: i64 = 1_000_000;
            let mut next_id = 0u32;
            // Dispatches seen by the handler: (tick, invocation id).
            let mut dispatched: Vec<(i64, String)> = Vec::new();
            let mut fires: Vec<TimerFire> = Vec::new();
            for _ in 0..200 {
                now += match rng.random_range(0..20) {
                    0 => 30_000, // an outage
                    _ => rng.random_range(0..3000),
                };
                let stale = rng.random_range(0..4).min(history.len() - 1);
                let view = history[history.len() - 1 - stale].clone();
                let record = view.timers.get(&timer());
                let status = record.map(TimerRecord::status);
                let running = record.is_some_and(|r| r.running.is_some());
                let proposal = match due(&spec, status.as_ref(), running, to_dt(now)) {
                    Some(Due::Schedule { next }) | Some(Due::Skip { next }) => {
                        Some(Command::ScheduleTimer {
                            timer: timer(),
                            replaces_ms: record.map(|r| r.next_ms),
                            next_ms: next.timestamp_millis(),
                            schedule: spec.describe(),
                            at_ms: now,
                        })
                    }
                    Some(Due::Run {
                        tick,
                        past_due,
                        next,
                    }) => {
                        next_id += 1;
                        Some(Command::FireTimer(Box::new(TimerFire {
                            timer: timer(),
                            tick_ms: tick.timestamp_millis(),
                            invocation_id: format!("id-{next_id}"),
                            past_due,
                            next_ms: next.timestamp_millis(),
                            schedule: spec.describe(),
                            at_ms: now,
                        })))
                    }
                    _ => None,
                };
                if let Some(command) = proposal {
                    if log.apply(&command) == CommandResult::Applied {
                        if let Command::FireTimer(f) = &command {
                            fires.push((**f).clone());
                            // A crash between fire and dispatch: nothing sent yet.
                            if rng.random_range(0..5) > 0 {
                                dispatched.push((f.tick_ms, f.invocation_id.clone()));
                            }
                        }
                    }
                }
                // A leader change (or a worker lost): every recorded run's current
                // attempt is dispatched again, with its id.
                if rng.random_range(0..10) == 0 {
                    for (_, a) in log.timer_attempts() {
                        if a.retry.is_some() {
                            attempts.push((a.run.tick_ms, a.invocation_id().to_string()));
                        } else {
                            dispatched.push((a.run.tick_ms, a.run.invocation_id.clone()));
                        }
                    }
                }
                // The handler answers: a failure is retried while the policy allows
                // (a stale leader may retry or complete an older attempt: refused);
                // sometimes twice (a duplicate completion).
                if rng.random_range(0..3) == 0 {
                    // The newest view, or the one before (a leader a step behind).
                    let view = &history[history.len() - 1 - stale.min(1)];
                    let current = view.timer_attempts().next().map(|(_, a)| a);
                    if let Some(a) = current {
                        let id = a.invocation_id().to_string();
                        if rng.random_range(0..3) == 0 && a.number() < 2 {
                            next_id += 1;
                            let retry =
                                Command::RetryTimer(Box::new(strom_proto::command::TimerRetry {
                                    timer: timer(),
                                    failed_invocation_id: id,
                                    error: "failed".into(),
                                    attempt: a.number() + 1,
                                    invocation_id: format!("id-{next_id}"),
                                    retry_at_ms: now + 500,
                                    at_ms: now,
                                }));
                            if log.apply(&retry) == CommandResult::Applied {
                                attempts.push((a.run.tick_ms, format!("id-{next_id}")));
                            }
                        } else {
                            for _ in 0..rng.random_range(1..3) {
                                log.apply(&complete(&id));
                            }
                        }
                    }
                }
                // Rule: a retry is of the run recorded, and the run stays recorded.
                for t in log.timer_retries.keys() {
                    assert!(
                        log.timers.get(t).is_some_and(|r| r.running.is_some()),
                        "seed {seed}: a retry without its run"
                    );
                }
                history.push(log.clone());
                // Rule: at most one run recorded, ever.
                assert!(log.timer_runs().count() <= 1, "seed {seed}");
            }
            // Each tick ran at most once; ticks follow one another with none lost
            // (a fire's tick is the previous fire's next, missed ones collapsed).
            for pair in fires.windows(2) {
                assert!(pair[1].tick_ms > pair[0].tick_ms, "seed {seed}");
                assert_eq!(
                    pair[1].tick_ms, pair[0].next_ms,
                    "seed {seed}: a tick was lost"
                );
                if pair[1].tick_ms + 2000 <= pair[1].at_ms {
                    assert!(
                        pair[1].past_due,
                        "seed {seed}: missed ticks collapse past due"
                    );
                }
            }
            // Every dispatch of a tick carries the id it was fired with; a retry
            // attempt's id belongs to one tick only, and is never a fire's.
            for (tick, id) in &dispatched {
                let fire = fires.iter().find(|f| f.tick_ms == *tick).unwrap();
                assert_eq!(&fire.invocation_id, id, "seed {seed}");
            }
            for (tick, id) in &attempts {
                assert!(fires.iter().any(|f| f.tick_ms == *tick), "seed {seed}");
                assert!(fires.iter().all(|f| &f.invocation_id != id), "seed {seed}");
                assert!(
                    attempts.iter().all(|(t, i)| i != id || t == tick),
                    "seed {seed}: an attempt id of two ticks"
                );
            }
            assert!(fires.len() > 5, "seed {seed}: the model ran ticks");
            retried += usize::from(!attempts.is_empty());
        }
        assert!(retried > 100, "retries happened in {retried} histories");
    }
}
