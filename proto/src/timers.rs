//! Timers in time: when a timer function's next tick is, in its app's time zone,
//! and what is due now. Pure: no clocks, no IO — every function takes `now`.
//!
//! - **Time zone**: UTC, unless the app setting `WEBSITE_TIME_ZONE` (or `TZ`) names
//!   one: an IANA name (`Europe/Berlin`) or a Windows name (`W. Europe Standard
//!   Time`, mapped by CLDR's `windowsZones` table to its world-wide default).
//! - **NCRONTAB in a zone with DST**: the pattern is matched against the wall
//!   clock. A wall-clock time the clock skips (spring forward) runs once, as far
//!   after the jump as it was into the gap (02:30 → 03:30 new time), and never twice
//!   when that instant is also an occurrence of its own; a wall-clock time that
//!   happens twice (fall back) runs once, the first time.
//! - **TimeSpan schedules** (`hh:mm:ss`): the next tick is one interval after the
//!   time the previous run was started (as Azure's constant schedule does).
//! - **What is due** ([`due`]): a timer runs at most once at a time (a tick due
//!   while the previous run goes on waits for it); ticks missed during an outage
//!   collapse into one run with `IsPastDue`; with `useMonitor: false`, missed ticks
//!   are skipped instead.

use std::collections::BTreeMap;
use std::str::FromStr;
use std::time::Duration;

use chrono::{DateTime, LocalResult, NaiveDateTime, TimeZone, Utc};
use chrono_tz::Tz;

use crate::manifest::function_json::TimerTrigger;
use crate::manifest::Schedule;

/// The app settings that name a timer's time zone, first found wins.
pub const TIME_ZONE_SETTINGS: [&str; 2] = ["WEBSITE_TIME_ZONE", "TZ"];

/// A tick this late (or later) runs with `IsPastDue`, as does one whose following
/// occurrence has also passed; a leader election's delay stays below it.
pub const PAST_DUE_GRACE: Duration = Duration::from_secs(15);

/// The time zone the app's settings name (UTC when none does).
pub fn time_zone(settings: &BTreeMap<String, String>) -> Result<Tz, String> {
    for key in TIME_ZONE_SETTINGS {
        let value = settings
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(key))
            .map(|(_, v)| v.trim());
        match value {
            None | Some("") => continue,
            Some(name) => return zone_named(name).map_err(|e| format!("app setting {key}: {e}")),
        }
    }
    Ok(Tz::UTC)
}

/// An IANA zone name, or a Windows one.
pub fn zone_named(name: &str) -> Result<Tz, String> {
    if let Ok(tz) = Tz::from_str(name) {
        return Ok(tz);
    }
    if let Some(iana) = localzone::win_zone_to_iana(name, None) {
        if let Ok(tz) = Tz::from_str(iana) {
            return Ok(tz);
        }
    }
    Err(format!(
        "`{name}` is not a time zone: give an IANA name (`Europe/Berlin`) or a Windows \
         name (`W. Europe Standard Time`)"
    ))
}

/// A timer function's schedule, resolved against its app's settings.
#[derive(Debug, Clone, PartialEq)]
pub struct TimerSpec {
    pub schedule: Schedule,
    pub zone: Tz,
    /// Keep the schedule status and catch up on missed ticks (one past-due run).
    pub use_monitor: bool,
    pub run_on_startup: bool,
}

impl TimerSpec {
    /// Resolve `%Setting%` schedules, the time zone and `useMonitor`'s default
    /// (on, unless the schedule runs more often than once a minute, as in Azure).
    pub fn resolve(
        trigger: &TimerTrigger,
        settings: &BTreeMap<String, String>,
    ) -> Result<TimerSpec, String> {
        let written = trigger.schedule.trim();
        let text = match written.strip_prefix('%').and_then(|s| s.strip_suffix('%')) {
            Some(name) => settings
                .iter()
                .find(|(k, _)| k.eq_ignore_ascii_case(name))
                .map(|(_, v)| v.clone())
                .ok_or_else(|| {
                    format!("`{written}` names the app setting `{name}`, which is not set")
                })?,
            None => written.to_string(),
        };
        let schedule = Schedule::parse(&text)?;
        let zone = time_zone(settings)?;
        let mut spec = TimerSpec {
            schedule,
            zone,
            use_monitor: true,
            run_on_startup: trigger.run_on_startup,
        };
        spec.use_monitor = trigger.use_monitor.unwrap_or_else(|| !spec.sub_minute());
        Ok(spec)
    }

    /// What the ticks are computed from (schedule and zone): when it changes (a
    /// deploy, a `%Setting%` or zone setting), the next tick is computed again.
    pub fn describe(&self) -> String {
        format!("{} ({})", self.schedule.text(), self.zone.name())
    }

    /// Whether ticks come more often than once a minute.
    fn sub_minute(&self) -> bool {
        if let Some(i) = self.schedule.interval() {
            return i < Duration::from_secs(60);
        }
        // Any two consecutive occurrences within a day apart by less than a minute.
        let start = Utc.with_ymd_and_hms(2026, 1, 5, 0, 0, 0).unwrap();
        let mut prev = match self.next_after(start) {
            Some(t) => t,
            None => return false,
        };
        for _ in 0..120 {
            let Some(next) = self.next_after(prev) else {
                return false;
            };
            if next - prev < chrono::Duration::seconds(60) {
                return true;
            }
            if next - start > chrono::Duration::days(1) {
                return false;
            }
            prev = next;
        }
        false
    }

    /// The first tick strictly after `after`.
    pub fn next_after(&self, after: DateTime<Utc>) -> Option<DateTime<Utc>> {
        if let Some(interval) = self.schedule.interval() {
            return after.checked_add_signed(chrono::Duration::from_std(interval).ok()?);
        }
        let cron = self.schedule.cron().ok()?;
        // Walk the wall clock: occurrences of the pattern in local time, each mapped
        // to the instant it means; the first one past `after` is the answer.
        let local_after = after.with_timezone(&self.zone).naive_local();
        let mut cursor = wall(local_after);
        for _ in 0..10_000 {
            let next = cron.find_next_occurrence(&cursor, false).ok()?;
            if let Some(instant) = instant_of(self.zone, next.naive_utc()) {
                if instant > after {
                    return Some(instant);
                }
            }
            cursor = next;
        }
        None
    }
}

/// A wall-clock time carried as a UTC value, so the cron matcher sees its fields.
fn wall(local: NaiveDateTime) -> DateTime<Utc> {
    Utc.from_utc_datetime(&local)
}

/// The instant a wall-clock time means in `zone`: the first of two in a repeated
/// hour; for a skipped one, as far past the jump as the time was into the gap.
fn instant_of(zone: Tz, local: NaiveDateTime) -> Option<DateTime<Utc>> {
    match zone.from_local_datetime(&local) {
        LocalResult::Single(t) => Some(t.with_timezone(&Utc)),
        LocalResult::Ambiguous(first, _) => Some(first.with_timezone(&Utc)),
        LocalResult::None => {
            // In a gap: read it with the offset in force just before the gap.
            let before = zone
                .from_local_datetime(&(local - chrono::Duration::hours(3)))
                .earliest()?;
            let offset = chrono::Offset::fix(before.offset()).local_minus_utc();
            let utc = local - chrono::Duration::seconds(offset as i64);
            Some(Utc.from_utc_datetime(&utc))
        }
    }
}

/// A timer's schedule status, as Azure's monitor keeps it (`ScheduleStatus`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ScheduleStatus {
    /// The tick of the last run (its scheduled time).
    pub last: Option<DateTime<Utc>>,
    /// The next tick due.
    pub next: DateTime<Utc>,
    pub last_updated: DateTime<Utc>,
    /// The [`TimerSpec::describe`] `next` was computed from.
    pub schedule: String,
}

/// The trigger value a timer function receives (`Data.{binding}`), in Azure's
/// shape (`TimerInfo`): the schedule status in the timer's zone, and `IsPastDue`.
pub fn timer_info(zone: Tz, status: Option<&ScheduleStatus>, past_due: bool) -> serde_json::Value {
    let at = |t: DateTime<Utc>| {
        t.with_timezone(&zone)
            .to_rfc3339_opts(chrono::SecondsFormat::Millis, false)
    };
    let status = status.map(|s| {
        serde_json::json!({
            "Last": s.last.map(at).unwrap_or_else(|| "0001-01-01T00:00:00".into()),
            "Next": at(s.next),
            "LastUpdated": at(s.last_updated),
        })
    });
    serde_json::json!({
        "Schedule": {"AdjustForDST": true},
        "ScheduleStatus": status,
        "IsPastDue": past_due,
    })
}

/// What a timer needs now.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Due {
    /// Not scheduled yet, or its schedule changed since: its next tick is `next`.
    Schedule { next: DateTime<Utc> },
    /// Nothing before `at`.
    Wait { at: DateTime<Utc> },
    /// Its tick is due, but the previous run still goes on: it waits for it.
    Busy,
    /// Run the tick scheduled at `tick` now; afterwards the next tick is `next`.
    Run {
        tick: DateTime<Utc>,
        past_due: bool,
        next: DateTime<Utc>,
    },
    /// `useMonitor: false` and the tick was missed: skip it, the next is `next`.
    Skip { next: DateTime<Utc> },
}

/// What `spec`'s timer needs at `now`, given its status and whether a run of it
/// is going on anywhere.
pub fn due(
    spec: &TimerSpec,
    status: Option<&ScheduleStatus>,
    running: bool,
    now: DateTime<Utc>,
) -> Option<Due> {
    let Some(status) = status else {
        return spec.next_after(now).map(|next| Due::Schedule { next });
    };
    if status.schedule != spec.describe() && !running {
        return spec.next_after(now).map(|next| Due::Schedule { next });
    }
    if now < status.next {
        return Some(Due::Wait { at: status.next });
    }
    if running {
        return Some(Due::Busy);
    }
    let tick = status.next;
    let following = spec.next_after(tick);
    let late = now - tick >= chrono::Duration::from_std(PAST_DUE_GRACE).ok()?;
    let missed_more = following.is_some_and(|f| f <= now);
    let past_due = late || missed_more;
    let next = spec.next_after(now)?;
    if past_due && !spec.use_monitor {
        return Some(Due::Skip { next });
    }
    Some(Due::Run {
        tick,
        past_due,
        next,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(schedule: &str, zone: &str) -> TimerSpec {
        let mut settings = BTreeMap::new();
        if !zone.is_empty() {
            settings.insert("WEBSITE_TIME_ZONE".to_string(), zone.to_string());
        }
        TimerSpec::resolve(
            &TimerTrigger {
                binding_name: "timer".into(),
                schedule: schedule.into(),
                run_on_startup: false,
                use_monitor: None,
            },
            &settings,
        )
        .unwrap_or_else(|e| panic!("{e}"))
    }

    fn utc(s: &str) -> DateTime<Utc> {
        DateTime::parse_from_rfc3339(s).unwrap().with_timezone(&Utc)
    }

    /// The ticks of `s` after `from`, `n` of them, as RFC 3339 UTC.
    fn ticks(s: &TimerSpec, from: &str, n: usize) -> Vec<String> {
        let mut t = utc(from);
        (0..n)
            .map(|_| {
                t = s.next_after(t).unwrap();
                t.to_rfc3339()
            })
            .collect()
    }

    #[test]
    fn utc_by_default_and_zones_by_iana_or_windows_name() {
        assert_eq!(time_zone(&BTreeMap::new()).unwrap(), Tz::UTC);
        for (key, name, want) in [
            ("WEBSITE_TIME_ZONE", "Europe/Berlin", Tz::Europe__Berlin),
            (
                "WEBSITE_TIME_ZONE",
                "W. Europe Standard Time",
                Tz::Europe__Berlin,
            ),
            (
                "website_time_zone",
                "Eastern Standard Time",
                Tz::America__New_York,
            ),
            ("TZ", "Asia/Tokyo", Tz::Asia__Tokyo),
        ] {
            let settings = BTreeMap::from([(key.to_string(), name.to_string())]);
            assert_eq!(time_zone(&settings).unwrap(), want, "{name}");
        }
        let bad = BTreeMap::from([("WEBSITE_TIME_ZONE".into(), "Mars/Olympus".into())]);
        let e = time_zone(&bad).unwrap_err();
        assert!(
            e.contains("WEBSITE_TIME_ZONE") && e.contains("`Mars/Olympus`"),
            "{e}"
        );
    }

    #[test]
    fn a_daily_schedule_follows_the_wall_clock_of_its_zone() {
        let s = spec("0 30 9 * * *", "W. Europe Standard Time");
        // 09:30 in Berlin: 08:30 UTC in winter, 07:30 UTC in summer.
        assert_eq!(
            ticks(&s, "2026-03-27T12:00:00Z", 3),
            [
                "2026-03-28T08:30:00+00:00",
                "2026-03-29T07:30:00+00:00",
                "2026-03-30T07:30:00+00:00"
            ]
        );
    }

    #[test]
    fn a_skipped_hour_runs_once_after_the_jump_and_never_twice() {
        // New York springs forward on 2026-03-08: 02:00 EST → 03:00 EDT.
        let daily = spec("0 30 2 * * *", "America/New_York");
        assert_eq!(
            ticks(&daily, "2026-03-07T12:00:00Z", 3),
            [
                "2026-03-08T07:30:00+00:00", // 02:30 does not exist: 03:30 EDT
                "2026-03-09T06:30:00+00:00", // 02:30 EDT
                "2026-03-10T06:30:00+00:00"
            ]
        );
        // Hourly: 02:00 maps onto 03:00 EDT, which is also an occurrence: once.
        let hourly = spec("0 0 * * * *", "America/New_York");
        assert_eq!(
            ticks(&hourly, "2026-03-08T05:30:00Z", 3),
            [
                "2026-03-08T06:00:00+00:00", // 01:00 EST
                "2026-03-08T07:00:00+00:00", // 03:00 EDT (02:00 skipped)
                "2026-03-08T08:00:00+00:00"  // 04:00 EDT
            ]
        );
    }

    #[test]
    fn a_repeated_hour_runs_once() {
        // New York falls back on 2026-11-01: 02:00 EDT → 01:00 EST.
        let daily = spec("0 30 1 * * *", "America/New_York");
        assert_eq!(
            ticks(&daily, "2026-10-31T12:00:00Z", 2),
            [
                "2026-11-01T05:30:00+00:00", // 01:30 EDT, the first 01:30
                "2026-11-02T06:30:00+00:00"  // not 06:30 on the 1st (01:30 EST)
            ]
        );
        let hourly = spec("0 0 * * * *", "America/New_York");
        assert_eq!(
            ticks(&hourly, "2026-11-01T04:30:00Z", 3),
            [
                "2026-11-01T05:00:00+00:00", // 01:00 EDT
                "2026-11-01T07:00:00+00:00", // 02:00 EST (01:00 EST is a repeat)
                "2026-11-01T08:00:00+00:00"
            ]
        );
    }

    #[test]
    fn timespans_tick_every_interval_and_settings_resolve() {
        let s = spec("00:00:30", "");
        assert_eq!(
            ticks(&s, "2026-01-01T00:00:00Z", 2),
            ["2026-01-01T00:00:30+00:00", "2026-01-01T00:01:00+00:00"]
        );
        assert!(!s.use_monitor, "sub-minute schedules keep no status");
        assert!(spec("0 */5 * * * *", "").use_monitor);
        assert!(!spec("*/10 * * * * *", "").use_monitor);
        let trigger = TimerTrigger {
            binding_name: "t".into(),
            schedule: "%NIGHTLY%".into(),
            run_on_startup: true,
            use_monitor: Some(false),
        };
        let settings = BTreeMap::from([("nightly".to_string(), "0 0 2 * * *".to_string())]);
        let s = TimerSpec::resolve(&trigger, &settings).unwrap();
        assert_eq!(s.schedule.text(), "0 0 2 * * *");
        assert!(s.run_on_startup && !s.use_monitor);
        let e = TimerSpec::resolve(&trigger, &BTreeMap::new()).unwrap_err();
        assert!(e.contains("`NIGHTLY`"), "{e}");
    }

    #[test]
    fn the_timer_value_has_azures_shape_in_the_timers_zone() {
        let status = ScheduleStatus {
            last: Some(utc("2026-07-01T07:30:00Z")),
            next: utc("2026-07-02T07:30:00Z"),
            last_updated: utc("2026-07-01T07:30:01Z"),
            schedule: String::new(),
        };
        let v = timer_info(Tz::Europe__Berlin, Some(&status), true);
        assert_eq!(
            v,
            serde_json::json!({
                "Schedule": {"AdjustForDST": true},
                "ScheduleStatus": {
                    "Last": "2026-07-01T09:30:00.000+02:00",
                    "Next": "2026-07-02T09:30:00.000+02:00",
                    "LastUpdated": "2026-07-01T09:30:01.000+02:00"
                },
                "IsPastDue": true
            })
        );
        let first = timer_info(Tz::UTC, None, false);
        assert_eq!(first["ScheduleStatus"], serde_json::Value::Null);
        assert_eq!(first["IsPastDue"], false);
    }

    #[test]
    fn due_ticks_wait_for_a_running_one_and_missed_ones_collapse() {
        let s = spec("0 */5 * * * *", "");
        let now = utc("2026-01-01T10:02:00Z");
        assert_eq!(
            due(&s, None, false, now),
            Some(Due::Schedule {
                next: utc("2026-01-01T10:05:00Z")
            })
        );
        let status = ScheduleStatus {
            last: None,
            next: utc("2026-01-01T10:05:00Z"),
            last_updated: now,
            schedule: s.describe(),
        };
        assert_eq!(
            due(&s, Some(&status), false, now),
            Some(Due::Wait { at: status.next })
        );
        // On time (within the grace): a normal run.
        let on_time = utc("2026-01-01T10:05:01Z");
        assert_eq!(
            due(&s, Some(&status), false, on_time),
            Some(Due::Run {
                tick: status.next,
                past_due: false,
                next: utc("2026-01-01T10:10:00Z")
            })
        );
        assert_eq!(due(&s, Some(&status), true, on_time), Some(Due::Busy));
        // An hour of outage: one run, past due, and the schedule goes on from now.
        let after_outage = utc("2026-01-01T11:07:00Z");
        assert_eq!(
            due(&s, Some(&status), false, after_outage),
            Some(Due::Run {
                tick: status.next,
                past_due: true,
                next: utc("2026-01-01T11:10:00Z")
            })
        );
        // A changed schedule (or zone) is computed again from now, once no run goes on.
        let hourly = spec("0 0 * * * *", "Europe/Berlin");
        assert_eq!(
            due(&hourly, Some(&status), false, now),
            Some(Due::Schedule {
                next: utc("2026-01-01T11:00:00Z")
            })
        );
        assert_eq!(due(&hourly, Some(&status), true, on_time), Some(Due::Busy));
        // Without the monitor, missed ticks are skipped.
        let mut unmonitored = s.clone();
        unmonitored.use_monitor = false;
        assert_eq!(
            due(&unmonitored, Some(&status), false, after_outage),
            Some(Due::Skip {
                next: utc("2026-01-01T11:10:00Z")
            })
        );
    }
}
