//! How many instances an app with queue triggers should run (issue 23): a pure
//! function of the queues' recent depth, the current scale and the app's limits.
//! The leader samples the depths (a passive queue declare: no management plugin)
//! and proposes the scale it returns; placement stays the scheduler's.
//!
//! - **Demand** of a sample: its waiting messages plus those being handled, divided
//!   by the target per instance (`STROM_TARGET_QUEUE_LENGTH`, default
//!   [`DEFAULT_TARGET_QUEUE_LENGTH`]), rounded up; at least one instance while any
//!   message waits or is being handled.
//! - **Up at once**: when the newest sample's demand is above the current scale, the
//!   scale follows it (a message on an empty app starts an instance on the next
//!   sample).
//! - **Down after a cool-down**: the scale falls only to the highest demand of the
//!   whole cool-down window ([`DEFAULT_SCALE_DOWN_COOLDOWN`]), and only once the
//!   samples cover that window; so a dip between two bursts does not stop
//!   instances that the next burst needs, and a steady but noisy depth does not
//!   make the scale flap.
//! - **Limits**: never below the minimum (0 with `STROM_SCALE_TO_ZERO=true`, else
//!   the app's `scale`) nor above the maximum (`STROM_MAX_SCALE`).

use std::time::Duration;

/// Messages per instance when the app does not set `STROM_TARGET_QUEUE_LENGTH`
/// (KEDA's RabbitMQ scaler uses the same default).
pub const DEFAULT_TARGET_QUEUE_LENGTH: u64 = 20;

/// How long demand must stay below the current scale before it falls.
pub const DEFAULT_SCALE_DOWN_COOLDOWN: Duration = Duration::from_secs(60);

/// One app's queue-driven scale limits.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// 0 for a scale-to-zero app, else its `scale`.
    pub min: u32,
    /// `STROM_MAX_SCALE` (at least `min`).
    pub max: u32,
    /// Messages per instance (at least 1).
    pub target: u64,
    pub cooldown: Duration,
}

/// The depth of an app's trigger queues at one moment, summed over its queues.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Sample {
    pub at_ms: u64,
    /// Messages waiting in the queues (the passive declare's message count).
    pub ready: u64,
    /// Messages delivered to the app's consumers and not yet acknowledged.
    pub in_flight: u64,
}

/// Instances this sample asks for, before limits.
pub fn demand(sample: &Sample, target: u64) -> u64 {
    let messages = sample.ready.saturating_add(sample.in_flight);
    messages.div_ceil(target.max(1))
}

fn clamp(n: u64, limits: &Limits) -> u32 {
    let max = limits.max.max(limits.min);
    (n.min(u64::from(max)) as u32).max(limits.min)
}

/// The scale to run now, given the samples (oldest first; the newest is now) and
/// the current scale.
pub fn decide(history: &[Sample], current: u32, limits: &Limits) -> u32 {
    let Some(newest) = history.last() else {
        return clamp(u64::from(current), limits);
    };
    let now = demand(newest, limits.target);
    if clamp(now, limits) > current {
        return clamp(now, limits);
    }
    // Down only once the samples cover the whole cool-down window, and only to the
    // highest demand in it.
    let cooldown = limits.cooldown.as_millis() as u64;
    let window_start = newest.at_ms.saturating_sub(cooldown);
    let covered = history
        .first()
        .is_some_and(|s| newest.at_ms.saturating_sub(s.at_ms) >= cooldown);
    if !covered {
        return clamp(u64::from(current), limits);
    }
    let peak = history
        .iter()
        .filter(|s| s.at_ms >= window_start)
        .map(|s| demand(s, limits.target))
        .max()
        .unwrap_or(now);
    clamp(peak.min(u64::from(current)), limits)
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::rngs::StdRng;
    use rand::{Rng, SeedableRng};

    const SECOND: u64 = 1000;

    fn limits(min: u32, max: u32) -> Limits {
        Limits {
            min,
            max,
            target: 10,
            cooldown: Duration::from_secs(60),
        }
    }

    fn sample(at_s: u64, ready: u64) -> Sample {
        Sample {
            at_ms: at_s * SECOND,
            ready,
            in_flight: 0,
        }
    }

    /// Run `depths` (one sample a second) through `decide`, as the leader would:
    /// the history is the last `keep` seconds; returns the scale after each sample.
    fn run(depths: &[(u64, u64)], limits: &Limits, start: u32) -> Vec<u32> {
        let mut history: Vec<Sample> = Vec::new();
        let mut scale = start;
        let mut out = Vec::new();
        for (i, (ready, in_flight)) in depths.iter().enumerate() {
            history.push(Sample {
                at_ms: i as u64 * SECOND,
                ready: *ready,
                in_flight: *in_flight,
            });
            // The leader keeps a little more than the window.
            let keep_from =
                (i as u64 * SECOND).saturating_sub(limits.cooldown.as_millis() as u64 + 5 * SECOND);
            history.retain(|s| s.at_ms >= keep_from);
            scale = decide(&history, scale, limits);
            out.push(scale);
        }
        out
    }

    #[test]
    fn one_message_wakes_an_app_at_zero_at_once() {
        let l = limits(0, 5);
        assert_eq!(decide(&[sample(0, 0)], 0, &l), 0);
        assert_eq!(decide(&[sample(0, 0), sample(1, 1)], 0, &l), 1);
        // Being handled counts too: no scale-down under a running message.
        let busy = Sample {
            at_ms: 100 * SECOND,
            ready: 0,
            in_flight: 1,
        };
        assert_eq!(decide(&[sample(0, 0), busy], 1, &l), 1);
    }

    #[test]
    fn demand_is_the_target_per_instance_rounded_up_within_the_limits() {
        let l = limits(1, 4);
        assert_eq!(decide(&[sample(0, 0)], 1, &l), 1, "never below the minimum");
        assert_eq!(decide(&[sample(0, 11)], 1, &l), 2);
        assert_eq!(decide(&[sample(0, 40)], 1, &l), 4);
        assert_eq!(
            decide(&[sample(0, 10_000)], 1, &l),
            4,
            "never above the max"
        );
        // A maximum below the minimum: the minimum wins.
        assert_eq!(decide(&[sample(0, 10_000)], 1, &limits(3, 1)), 3);
        // No history yet: the current scale, within the limits.
        assert_eq!(decide(&[], 9, &l), 4);
    }

    #[test]
    fn it_falls_only_after_the_cool_down_and_only_to_the_windows_peak() {
        let l = limits(0, 10);
        // 50 waiting, then an empty queue.
        let mut depths = vec![(50, 0)];
        depths.extend(std::iter::repeat_n((0, 0), 90));
        let scales = run(&depths, &l, 0);
        assert_eq!(scales[0], 5);
        // Nothing falls while the burst is within the window (60 s).
        assert!(scales[..60].iter().all(|s| *s == 5), "{scales:?}");
        // Then straight to the window's peak: zero.
        assert_eq!(scales[61], 0, "{scales:?}");
    }

    #[test]
    fn a_fresh_history_does_not_scale_down() {
        // A new leader knows 10 s of depths: too little to drop instances.
        let l = limits(0, 10);
        let history: Vec<Sample> = (0..10).map(|s| sample(s, 0)).collect();
        assert_eq!(decide(&history, 3, &l), 3);
    }

    /// Long seeded histories: bursts, silences and noise. Whatever the depths:
    /// within the limits; at least one instance whenever messages wait; never
    /// below any demand of the last cool-down window; up at once to the newest
    /// demand; and a steady noisy load does not make the scale flap.
    #[test]
    fn long_seeded_histories_keep_the_rules() {
        for seed in 0..40u64 {
            let mut rng = StdRng::seed_from_u64(seed);
            let l = Limits {
                min: rng.random_range(0..2),
                max: rng.random_range(2..12),
                target: rng.random_range(1..30),
                cooldown: Duration::from_secs(rng.random_range(10..90)),
            };
            let mut depths = Vec::new();
            while depths.len() < 3_000 {
                let len = rng.random_range(5..200);
                let level = match rng.random_range(0..4) {
                    0 => 0,
                    1 => rng.random_range(1..5),
                    2 => rng.random_range(5..100),
                    _ => rng.random_range(100..2_000),
                };
                for _ in 0..len {
                    let noise = rng.random_range(0..=level / 5 + 1);
                    depths.push((level + noise, rng.random_range(0..3)));
                }
            }
            let scales = run(&depths, &l, l.min);
            let window = l.cooldown.as_secs() as usize;
            for (i, scale) in scales.iter().enumerate() {
                let ctx = || format!("seed {seed}, second {i}, limits {l:?}");
                assert!(*scale >= l.min && *scale <= l.max.max(l.min), "{}", ctx());
                let (ready, in_flight) = depths[i];
                if ready + in_flight > 0 {
                    assert!(*scale >= 1, "messages wait with no instance: {}", ctx());
                }
                let newest = clamp(demand(&sample(0, ready + in_flight), l.target), &l);
                assert!(*scale >= newest, "not up at once: {}", ctx());
                let from = i.saturating_sub(window);
                let peak = depths[from..=i]
                    .iter()
                    .map(|(r, f)| clamp(demand(&sample(0, r + f), l.target), &l))
                    .max()
                    .unwrap();
                assert!(
                    *scale >= peak,
                    "fell below a demand of its cool-down window: {}",
                    ctx()
                );
            }
            // No flapping: after a step up, no step down within the cool-down.
            let mut last_up = None;
            for i in 1..scales.len() {
                if scales[i] > scales[i - 1] {
                    last_up = Some(i);
                }
                if scales[i] < scales[i - 1] {
                    if let Some(up) = last_up {
                        assert!(
                            i - up > window,
                            "seed {seed}: up at {up}, down at {i}, cool-down {window} s"
                        );
                    }
                }
            }
        }
    }

    #[test]
    fn a_steady_noisy_queue_settles() {
        // 95..=105 messages, target 10: demand 10 or 11, never below 10 for long.
        let mut rng = StdRng::seed_from_u64(7);
        let l = limits(0, 20);
        let depths: Vec<(u64, u64)> = (0..600).map(|_| (rng.random_range(95..=105), 0)).collect();
        let scales = run(&depths, &l, 0);
        let changes = scales.windows(2).filter(|w| w[0] != w[1]).count();
        assert!(changes <= 2, "{changes} changes: {:?}", &scales[..80]);
        assert!(scales[60..].iter().all(|s| *s == 11), "held at the peak");
    }
}
