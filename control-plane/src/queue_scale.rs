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
//!
//! Which apps scale so ([`limits_of`]): those whose active version has an enabled
//! `rabbitMQTrigger` and that set `STROM_SCALE_TO_ZERO=true` or
//! `STROM_MAX_SCALE`. Without `STROM_MAX_SCALE`, a scale-to-zero app runs 0 or
//! its `scale` (1 by default).

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::time::Duration;

use strom_proto::ids::AppName;
use strom_proto::manifest::rabbitmq::{AmqpEndpoint, RabbitMqTrigger, CA_SETTING};
use strom_proto::manifest::{is_function_disabled, Trigger};

use crate::cluster_state::{AppState, ClusterState};
use crate::scheduler::{app_requirements, desired, eligible_workers, Requirements};

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

/// The enabled RabbitMQ triggers of the app's active version: (function, trigger).
pub fn triggers_of(app: &AppState) -> Vec<(&str, &RabbitMqTrigger)> {
    app.active()
        .manifest
        .functions
        .iter()
        .filter(|f| !is_function_disabled(&app.settings, &f.name))
        .filter_map(|f| match &f.trigger {
            Trigger::RabbitMq(t) => Some((f.name.as_str(), t)),
            _ => None,
        })
        .collect()
}

/// The limits of an app that scales on its queues' depth, or `None` for an app
/// that does not (no enabled RabbitMQ trigger, or neither
/// `STROM_SCALE_TO_ZERO=true` nor `STROM_MAX_SCALE`). `eligible`: the workers
/// it may run on (its default scale depends on them).
pub fn limits_of(app: &AppState, req: &Requirements, eligible: usize) -> Option<Limits> {
    if !(req.scale_to_zero || req.max_scale.is_some()) || triggers_of(app).is_empty() {
        return None;
    }
    let min = if req.scale_to_zero {
        0
    } else {
        desired(app, eligible)
    };
    let max = req
        .max_scale
        .unwrap_or_else(|| app.scale.unwrap_or(1).max(1))
        .max(min);
    Some(Limits {
        min,
        max,
        target: req.target_queue_length.max(1),
        cooldown: Duration::from_millis(req.scale_down_cooldown_ms),
    })
}

/// One queue the leader reads: where its broker is (or why that is unknown).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Probe {
    pub app: AppName,
    pub queue: String,
    /// The broker and the app's CA (`STROM_RABBITMQ_CA`), or why the app's
    /// settings do not name one.
    pub broker: Result<(AmqpEndpoint, Option<String>), String>,
}

/// A queue's ready count as read, or why it could not be.
pub type Read = Result<u64, String>;

/// The trigger queues of every app whose active version has enabled RabbitMQ
/// triggers (each queue of an app once).
pub fn probes(state: &ClusterState) -> Vec<Probe> {
    let mut out: Vec<Probe> = Vec::new();
    for (name, app) in &state.apps {
        for (_, trigger) in triggers_of(app) {
            if out
                .iter()
                .any(|p| &p.app == name && p.queue == trigger.queue_name)
            {
                continue;
            }
            let ca = app.settings.get(CA_SETTING).cloned();
            out.push(Probe {
                app: name.clone(),
                queue: trigger.queue_name.clone(),
                broker: trigger
                    .connection
                    .resolve(&app.settings)
                    .map(|e| (e, ca))
                    .map_err(|(field, why)| format!("{field}: {why}")),
            });
        }
    }
    out
}

/// The leader's queue-depth scaling over a term: the reads, each app's recent
/// samples and the scale it decided. Starts empty at each term: a new leader
/// keeps the scale it finds until its samples cover a cool-down window.
#[derive(Debug, Default)]
pub struct QueueScaler {
    history: HashMap<AppName, VecDeque<Sample>>,
    decided: HashMap<AppName, u32>,
    reads: BTreeMap<(AppName, String), Read>,
}

fn placed(state: &ClusterState, app: &AppName) -> u32 {
    state.placements.get(app).map_or(0, |p| p.values().sum())
}

/// The limits of `app` in `state` if it scales on queue depth.
fn limits_in(state: &ClusterState, app: &AppState) -> Option<Limits> {
    let req = app_requirements(&app.settings).ok()?;
    // Most apps do not scale on queues: they cost the leader's round (every
    // 200 ms) one settings parse, not a pass over the workers.
    if !(req.scale_to_zero || req.max_scale.is_some()) {
        return None;
    }
    limits_of(app, &req, eligible_workers(state, &req))
}

impl QueueScaler {
    /// Takes one round of reads (`at_ms` on a monotonic clock) and decides the
    /// scale of each app that scales on queue depth. `in_flight`: messages the
    /// app's consumers hold, as the workers reported. An app with a failed read
    /// gets no sample: its scale holds while the leader cannot see its queues.
    pub fn observe(
        &mut self,
        state: &ClusterState,
        reads: Vec<(AppName, String, Read)>,
        in_flight: impl Fn(&AppName) -> u64,
        at_ms: u64,
    ) {
        self.reads = reads
            .into_iter()
            .map(|(app, queue, read)| ((app, queue), read))
            .collect();
        let mut scaled = Vec::new();
        for (name, app) in &state.apps {
            let Some(limits) = limits_in(state, app) else {
                continue;
            };
            scaled.push(name.clone());
            let mine: Vec<&Read> = self
                .reads
                .iter()
                .filter(|((a, _), _)| a == name)
                .map(|(_, r)| r)
                .collect();
            if mine.is_empty() || mine.iter().any(|r| r.is_err()) {
                continue;
            }
            let ready = mine.iter().map(|r| *r.as_ref().expect("checked")).sum();
            let history = self.history.entry(name.clone()).or_default();
            history.push_back(Sample {
                at_ms,
                ready,
                in_flight: in_flight(name),
            });
            // A little more than the window, so the window is known covered.
            let keep_from =
                at_ms.saturating_sub(limits.cooldown.as_millis() as u64 + HISTORY_MARGIN_MS);
            while history.front().is_some_and(|s| s.at_ms < keep_from) {
                history.pop_front();
            }
            let current = self
                .decided
                .get(name)
                .copied()
                .unwrap_or_else(|| placed(state, name));
            let samples: Vec<Sample> = history.iter().copied().collect();
            let next = decide(&samples, current, &limits);
            if next != current {
                tracing::info!(app = %name, from = current, to = next, ready, in_flight = in_flight(name), "queue depth: scaling");
            }
            self.decided.insert(name.clone(), next);
        }
        self.history.retain(|a, _| scaled.contains(a));
        self.decided.retain(|a, _| scaled.contains(a));
    }

    /// The scale of every app that scales on queue depth: as decided, or (none
    /// decided yet this term) its placed instances within its limits.
    pub fn scales(&self, state: &ClusterState) -> HashMap<AppName, u32> {
        state
            .apps
            .iter()
            .filter_map(|(name, app)| {
                let limits = limits_in(state, app)?;
                let n = self
                    .decided
                    .get(name)
                    .copied()
                    .unwrap_or_else(|| clamp(u64::from(placed(state, name)), &limits));
                Some((name.clone(), n))
            })
            .collect()
    }

    /// The last read of each queue.
    pub fn reads(&self) -> &BTreeMap<(AppName, String), Read> {
        &self.reads
    }
}

/// History kept beyond the cool-down window.
const HISTORY_MARGIN_MS: u64 = 5_000;

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
