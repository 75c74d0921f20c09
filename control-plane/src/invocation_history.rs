//! The last hour of this node's invocations, per minute: counts, errors and a
//! duration histogram, for the portal's charts (issue 19) without an external
//! Prometheus. The Prometheus recorder keeps only totals, not their history.
//!
//! Fed by the gateway's recorder task (off the request path), one lock per record.
//! In memory only: a restarted node starts an empty hour.

use std::collections::VecDeque;
use std::sync::{LazyLock, Mutex};

/// Minutes kept.
pub const MINUTES: usize = 60;
const MINUTE_MS: i64 = 60_000;
/// Duration buckets: bucket `i` holds durations below `FIRST_US · 2^(i/2)`, the
/// last one everything longer (100 µs … ~1 h at half-octave steps).
const BUCKETS: usize = 52;
const FIRST_US: f64 = 100.0;

#[derive(Clone)]
struct Minute {
    /// Unix ms of the minute's start.
    start_ms: i64,
    invocations: u64,
    errors: u64,
    durations: [u32; BUCKETS],
}

/// One minute of the chart.
#[derive(Debug, Clone, PartialEq)]
pub struct Point {
    pub start_ms: i64,
    pub invocations: u64,
    pub errors: u64,
    /// Upper bounds of the bucket holding the quantile (None without invocations).
    pub p50_ms: Option<f64>,
    pub p99_ms: Option<f64>,
}

/// A per-minute ring of the last [`MINUTES`] minutes.
#[derive(Default)]
pub struct History {
    minutes: Mutex<VecDeque<Minute>>,
}

fn bucket_of(duration_us: u64) -> usize {
    // Integer arithmetic only (one call per invocation): with l = ⌊log₂(d/100)⌋,
    // the bucket is 2l + 1, or 2l + 2 from the half octave d ≥ 100·2^(l+½) on,
    // that is d² ≥ 10⁴·2^(2l+1).
    let whole = duration_us / FIRST_US as u64;
    if whole == 0 {
        return 0;
    }
    let l = whole.ilog2() as usize;
    if 2 * l + 1 >= BUCKETS - 1 {
        return BUCKETS - 1;
    }
    let half = u128::from(duration_us).pow(2) >= 10_000u128 << (2 * l + 1);
    (2 * l + 1 + usize::from(half)).min(BUCKETS - 1)
}

fn bucket_upper_ms(bucket: usize) -> f64 {
    FIRST_US * 2f64.powf(bucket as f64 / 2.0) / 1000.0
}

impl History {
    /// Count one invocation that ended at `now_ms`.
    pub fn record(&self, now_ms: i64, failed: bool, duration_us: u64) {
        let start_ms = now_ms - now_ms.rem_euclid(MINUTE_MS);
        let mut minutes = self.minutes.lock().expect("invocation history");
        if minutes.back().is_none_or(|m| m.start_ms < start_ms) {
            minutes.push_back(Minute {
                start_ms,
                invocations: 0,
                errors: 0,
                durations: [0; BUCKETS],
            });
            while minutes.len() > MINUTES {
                minutes.pop_front();
            }
        }
        // A record that arrives late for an earlier minute counts in that one.
        let Some(m) = minutes.iter_mut().rev().find(|m| m.start_ms <= start_ms) else {
            return;
        };
        m.invocations += 1;
        m.errors += u64::from(failed);
        m.durations[bucket_of(duration_us)] += 1;
    }

    /// The [`MINUTES`] minutes up to the one holding `now_ms`, oldest first, with
    /// zeros where nothing ran.
    pub fn last_hour(&self, now_ms: i64) -> Vec<Point> {
        let current = now_ms - now_ms.rem_euclid(MINUTE_MS);
        let minutes = self.minutes.lock().expect("invocation history");
        (0..MINUTES as i64)
            .rev()
            .map(|ago| {
                let start_ms = current - ago * MINUTE_MS;
                match minutes.iter().find(|m| m.start_ms == start_ms) {
                    Some(m) => Point {
                        start_ms,
                        invocations: m.invocations,
                        errors: m.errors,
                        p50_ms: quantile(&m.durations, m.invocations, 0.5),
                        p99_ms: quantile(&m.durations, m.invocations, 0.99),
                    },
                    None => Point {
                        start_ms,
                        invocations: 0,
                        errors: 0,
                        p50_ms: None,
                        p99_ms: None,
                    },
                }
            })
            .collect()
    }
}

fn quantile(buckets: &[u32; BUCKETS], total: u64, q: f64) -> Option<f64> {
    if total == 0 {
        return None;
    }
    let rank = ((total as f64) * q).ceil().max(1.0) as u64;
    let mut seen = 0u64;
    for (i, n) in buckets.iter().enumerate() {
        seen += u64::from(*n);
        if seen >= rank {
            return Some(bucket_upper_ms(i));
        }
    }
    Some(bucket_upper_ms(BUCKETS - 1))
}

static HISTORY: LazyLock<History> = LazyLock::new(History::default);

/// The process's history (one per node).
pub fn global() -> &'static History {
    &HISTORY
}

#[cfg(test)]
mod tests {
    use super::*;

    const T0: i64 = 1_800_000_000_000; // a minute boundary

    #[test]
    fn counts_land_in_their_minute_and_the_hour_has_sixty_points() {
        let h = History::default();
        h.record(T0 + 1_000, false, 2_000);
        h.record(T0 + 59_000, true, 2_000);
        h.record(T0 + MINUTE_MS + 5, false, 50_000);
        let hour = h.last_hour(T0 + MINUTE_MS + 10);
        assert_eq!(hour.len(), MINUTES);
        let (prev, last) = (&hour[MINUTES - 2], &hour[MINUTES - 1]);
        assert_eq!((prev.start_ms, prev.invocations, prev.errors), (T0, 2, 1));
        assert_eq!((last.invocations, last.errors), (1, 0));
        assert!(hour[..MINUTES - 2]
            .iter()
            .all(|p| p.invocations == 0 && p.p50_ms.is_none()));
    }

    #[test]
    fn quantiles_are_the_upper_bound_of_their_bucket() {
        let h = History::default();
        for _ in 0..98 {
            h.record(T0, false, 1_000); // 1 ms
        }
        h.record(T0, false, 400_000); // 400 ms
        h.record(T0, false, 400_000);
        let p = &h.last_hour(T0)[MINUTES - 1];
        let (p50, p99) = (p.p50_ms.unwrap(), p.p99_ms.unwrap());
        assert!((1.0..1.5).contains(&p50), "p50 {p50}");
        assert!((400.0..570.0).contains(&p99), "p99 {p99}");
    }

    #[test]
    fn buckets_are_half_octaves_from_100_us() {
        // Bucket i holds durations below 100 µs · 2^(i/2).
        for d in [
            0u64,
            1,
            99,
            100,
            141,
            142,
            199,
            200,
            1_000,
            123_456,
            9_999_999,
            u64::MAX / 2,
        ] {
            let b = bucket_of(d);
            let below = bucket_upper_ms(b) * 1000.0;
            assert!(
                (d as f64) < below || b == BUCKETS - 1,
                "{d} µs in bucket {b} (< {below})"
            );
            if b > 0 && b < BUCKETS - 1 {
                assert!(
                    (d as f64) >= bucket_upper_ms(b - 1) * 1000.0,
                    "{d} µs above bucket {b}"
                );
            }
        }
        assert_eq!(
            (
                bucket_of(99),
                bucket_of(100),
                bucket_of(141),
                bucket_of(142)
            ),
            (0, 1, 1, 2)
        );
    }

    #[test]
    fn an_hour_later_old_minutes_are_gone() {
        let h = History::default();
        h.record(T0, true, 10);
        let later = T0 + (MINUTES as i64) * MINUTE_MS;
        h.record(later, false, 10);
        let hour = h.last_hour(later);
        assert_eq!(hour.iter().map(|p| p.errors).sum::<u64>(), 0);
        assert_eq!(hour.iter().map(|p| p.invocations).sum::<u64>(), 1);
    }
}
