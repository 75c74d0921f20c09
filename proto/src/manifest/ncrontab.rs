//! Schedules of `timerTrigger`: NCRONTAB, `{second} {minute} {hour} {day} {month}
//! {day-of-week}` or five fields without seconds, and .NET TimeSpans (`hh:mm:ss`, a
//! constant interval, as Azure allows on dedicated plans).
//!
//! We check the NCRONTAB grammar ourselves (numbers, `*`, ranges, steps, lists, month and
//! day names; day-of-week 0–6 with 0 = Sunday) and then hand a normalised numeric pattern
//! to `croner` for evaluation. croner accepts more (`L`, `W`, `#`, `?`, `@daily`, a year
//! field, 7 = Sunday); NCRONTAB does not, so neither do we. Like NCrontab, a schedule that
//! restricts both day-of-month and day-of-week needs both to match.

use std::fmt;

use serde::{Deserialize, Serialize};

use super::timespan::parse_timespan_ms;

/// A validated schedule: an NCRONTAB expression or a constant interval.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Schedule {
    text: String,
    has_seconds: bool,
    /// A TimeSpan schedule: this many milliseconds between ticks.
    interval_ms: Option<u64>,
}

/// The longest TimeSpan schedule: a year.
const MAX_INTERVAL_MS: u64 = 365 * 86_400_000;

const FIELDS: [(&str, u32, u32); 6] = [
    ("second", 0, 59),
    ("minute", 0, 59),
    ("hour", 0, 23),
    ("day", 1, 31),
    ("month", 1, 12),
    ("day-of-week", 0, 6),
];

const MONTHS: [&str; 12] = [
    "january",
    "february",
    "march",
    "april",
    "may",
    "june",
    "july",
    "august",
    "september",
    "october",
    "november",
    "december",
];
const DAYS: [&str; 7] = [
    "sunday",
    "monday",
    "tuesday",
    "wednesday",
    "thursday",
    "friday",
    "saturday",
];

impl Schedule {
    /// Parses and validates; the error quotes the expression and names the bad field.
    pub fn parse(text: &str) -> Result<Schedule, String> {
        let trimmed = text.trim();
        if is_timespan_like(trimmed) {
            return match parse_timespan_ms(trimmed) {
                Some(0) => Err(format!(
                    "schedule `{text}`: the interval must be longer than zero"
                )),
                Some(ms) if ms > MAX_INTERVAL_MS => Err(format!(
                    "schedule `{text}`: the interval must be at most 365 days"
                )),
                Some(ms) => Ok(Schedule {
                    text: trimmed.to_string(),
                    has_seconds: true,
                    interval_ms: Some(ms),
                }),
                None => Err(format!(
                    "schedule `{text}`: not a TimeSpan `hh:mm:ss` (or `d.hh:mm:ss`)"
                )),
            };
        }
        let (normalized, has_seconds) =
            normalize(text).map_err(|e| format!("schedule `{text}`: {e}"))?;
        let cron = build_cron(&normalized).map_err(|e| format!("schedule `{text}`: {e}"))?;
        // A pattern no date matches (`0 0 0 30 2 *`) would never run. Day-of-month
        // and day-of-week both restricted may take decades to meet: look 40 years on.
        let from = chrono::DateTime::<chrono::Utc>::from_timestamp(946_684_800, 0)
            .expect("2000-01-01 is a valid time");
        match cron.find_next_occurrence(&from, false) {
            Ok(next) if (next - from).num_days() <= 40 * 366 => {}
            _ => {
                return Err(format!(
                    "schedule `{text}`: no date matches it, so it would never run"
                ))
            }
        }
        Ok(Schedule {
            text: trimmed.to_string(),
            has_seconds,
            interval_ms: None,
        })
    }

    /// A TimeSpan schedule's interval.
    pub fn interval(&self) -> Option<std::time::Duration> {
        self.interval_ms.map(std::time::Duration::from_millis)
    }

    /// The expression as written (trimmed).
    pub fn text(&self) -> &str {
        &self.text
    }

    /// Whether the expression has a seconds field (6 fields) rather than 5.
    pub fn has_seconds(&self) -> bool {
        self.has_seconds
    }

    /// The evaluator for next occurrences (UTC unless the caller converts). Fails for
    /// a TimeSpan schedule, and for a `Schedule` deserialised from text that never
    /// went through [`Schedule::parse`].
    pub fn cron(&self) -> Result<croner::Cron, String> {
        if self.interval_ms.is_some() {
            return Err(format!("`{}` is an interval, not NCRONTAB", self.text));
        }
        let (normalized, _) = normalize(&self.text)?;
        build_cron(&normalized)
    }
}

impl fmt::Display for Schedule {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.text)
    }
}

fn build_cron(six_fields: &str) -> Result<croner::Cron, String> {
    croner::parser::CronParser::builder()
        .seconds(croner::parser::Seconds::Required)
        .year(croner::parser::Year::Disallowed)
        .dom_and_dow(true)
        .build()
        .parse(six_fields)
        .map_err(|e| e.to_string())
}

/// Returns the 6-field numeric form and whether seconds were given.
fn normalize(text: &str) -> Result<(String, bool), String> {
    let trimmed = text.trim();
    let mut fields: Vec<&str> = trimmed.split_whitespace().collect();
    let has_seconds = match fields.len() {
        6 => true,
        5 => {
            fields.insert(0, "0");
            false
        }
        n => {
            return Err(format!(
            "expected 6 fields `{{second}} {{minute}} {{hour}} {{day}} {{month}} {{day-of-week}}` \
                 (or 5 without seconds), found {n}"
        ))
        }
    };
    let mut out = Vec::with_capacity(6);
    for (field, (name, lo, hi)) in fields.iter().zip(FIELDS) {
        out.push(
            normalize_field(field, name, lo, hi)
                .map_err(|e| format!("{name} field `{field}`: {e}"))?,
        );
    }
    Ok((out.join(" "), has_seconds))
}

fn is_timespan_like(s: &str) -> bool {
    s.contains(':')
        && s.bytes()
            .all(|b| b.is_ascii_digit() || b == b':' || b == b'.')
}

fn normalize_field(field: &str, name: &str, lo: u32, hi: u32) -> Result<String, String> {
    let mut items = Vec::new();
    for item in field.split(',') {
        if item.is_empty() {
            return Err("empty list item".into());
        }
        let (range, step) = match item.split_once('/') {
            Some((r, s)) => {
                let step: u32 = s
                    .parse()
                    .map_err(|_| format!("step `{s}` is not a number"))?;
                if step == 0 || step > hi {
                    return Err(format!("step `{s}` must be between 1 and {hi}"));
                }
                (r, Some(step))
            }
            None => (item, None),
        };
        let range_text = if range == "*" {
            "*".to_string()
        } else if let Some((a, b)) = range.split_once('-') {
            let (a, b) = (value(a, name, lo, hi)?, value(b, name, lo, hi)?);
            if a > b {
                return Err(format!("range `{range}` goes backwards"));
            }
            format!("{a}-{b}")
        } else {
            let v = value(range, name, lo, hi)?;
            match step {
                Some(_) => format!("{v}-{hi}"),
                None => v.to_string(),
            }
        };
        items.push(match step {
            Some(s) => format!("{range_text}/{s}"),
            None => range_text,
        });
    }
    Ok(items.join(","))
}

fn value(text: &str, field: &str, lo: u32, hi: u32) -> Result<u32, String> {
    if let Ok(n) = text.parse::<u32>() {
        if text.starts_with('+') || !(lo..=hi).contains(&n) {
            let hint = if field == "day-of-week" {
                " (0 = Sunday)"
            } else {
                ""
            };
            return Err(format!("`{text}` is out of range {lo}-{hi}{hint}"));
        }
        return Ok(n);
    }
    let names: &[&str] = match field {
        "month" => &MONTHS,
        "day-of-week" => &DAYS,
        _ => &[],
    };
    let lower = text.to_ascii_lowercase();
    if lower.len() >= 3 {
        if let Some(i) = names.iter().position(|n| n.starts_with(&lower)) {
            return Ok(i as u32 + lo);
        }
    }
    Err(format!("`{text}` is not a valid {field} value"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accepts_ncrontab() {
        for (ok, secs) in [
            ("0 */5 * * * *", true),
            ("*/5 * * * *", false),
            ("0 30 9 * * 1-5", true),
            ("0 0 0 * * Sun", true),
            ("0 0 0 1 Jan,Jul Monday", true),
            ("5,10 0-30/10 * * * *", true),
        ] {
            let s = Schedule::parse(ok).unwrap_or_else(|e| panic!("{e}"));
            assert_eq!(s.has_seconds(), secs, "{ok}");
            assert_eq!(s.text(), ok);
            assert!(s.cron().is_ok());
            assert_eq!(s.interval(), None);
        }
        // Rare but real: Feb 29 (every 4 years), Feb 29 on a Monday (decades apart).
        for rare in ["0 0 0 29 2 *", "0 0 0 29 2 1"] {
            Schedule::parse(rare).unwrap_or_else(|e| panic!("{e}"));
        }
    }

    #[test]
    fn accepts_timespans_as_constant_intervals() {
        let s = Schedule::parse("00:05:00").unwrap();
        assert_eq!(s.interval(), Some(std::time::Duration::from_secs(300)));
        assert!(s.cron().is_err());
        let s = Schedule::parse("1.00:00:00").unwrap();
        assert_eq!(s.interval(), Some(std::time::Duration::from_secs(86_400)));
    }

    #[test]
    fn refuses_with_useful_messages() {
        for (bad, needle) in [
            (
                "61 * * * * *",
                "second field `61`: `61` is out of range 0-59",
            ),
            ("* * *", "found 3"),
            (
                "0 0 0 * * 8",
                "day-of-week field `8`: `8` is out of range 0-6 (0 = Sunday)",
            ),
            ("0 0 0 * * 7", "out of range 0-6"),
            ("abc", "found 1"),
            ("00:00:00", "longer than zero"),
            ("25:00:00", "not a TimeSpan"),
            ("400.00:00:00", "at most 365 days"),
            ("0 0 0 30 2 *", "would never run"),
            ("0 0 0 31 4,6,9,11 *", "would never run"),
            ("0 0 0 L * *", "`L` is not a valid day value"),
            ("0 0 0 * * 1#2", "is not a valid day-of-week value"),
            ("0 0 0 ? * *", "not a valid day value"),
            ("0 0 */0 * * *", "step `0`"),
            ("0 0 5-2 * * *", "goes backwards"),
            ("@daily", "found 1"),
        ] {
            let err = Schedule::parse(bad).expect_err(bad);
            assert!(err.contains(&format!("`{bad}`")), "{err}");
            assert!(err.contains(needle), "{bad}: {err}");
        }
    }
}
