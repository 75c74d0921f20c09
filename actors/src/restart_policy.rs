//! The restart policy of an app's instances: a pure decision over plain data.
//!
//! OTP semantics, one-for-one: when an instance fails, only that instance is
//! restarted. The first restart after a quiet period is immediate; further ones back
//! off exponentially (100 ms doubling to 30 s, with jitter so that many instances
//! don't restart in lockstep). More than `max_restarts` failures within `period`
//! marks the app *CrashLooping* on this worker: it is reported and retried at the
//! capped backoff — never given up silently.
//!
//! Nothing here is durable: a worker restart forgets the history (the next failure
//! restarts immediately again).

use std::collections::VecDeque;
use std::time::Duration;

use tokio::time::Instant;

#[derive(Debug, Clone, PartialEq)]
pub struct RestartPolicy {
    pub max_restarts: u32,
    pub period: Duration,
    pub initial_backoff: Duration,
    pub max_backoff: Duration,
    /// Fraction of the delay randomized, in `0.0..=1.0` (0.2 = ±20 %).
    pub jitter: f64,
}

impl Default for RestartPolicy {
    fn default() -> Self {
        RestartPolicy {
            max_restarts: 5,
            period: Duration::from_secs(60),
            initial_backoff: Duration::from_millis(100),
            max_backoff: Duration::from_secs(30),
            jitter: 0.2,
        }
    }
}

/// What to do about one failure.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct RestartDecision {
    /// Start the replacement after this delay (zero: at once).
    pub delay: Duration,
    /// More than `max_restarts` failures happened within `period`.
    pub crash_looping: bool,
    /// Failures within the current period, this one included.
    pub failures_in_period: usize,
}

/// The failure history of one instance slot.
#[derive(Debug, Clone)]
pub struct RestartTracker {
    policy: RestartPolicy,
    failures: VecDeque<Instant>,
    /// Consecutive failures since the slot last ran a whole quiet period.
    streak: u32,
    total: u64,
}

impl RestartTracker {
    pub fn new(policy: RestartPolicy) -> Self {
        RestartTracker {
            policy,
            failures: VecDeque::new(),
            streak: 0,
            total: 0,
        }
    }

    fn forget_old(&mut self, now: Instant) {
        while let Some(first) = self.failures.front() {
            if now.duration_since(*first) >= self.policy.period {
                self.failures.pop_front();
            } else {
                break;
            }
        }
    }

    /// Record a failure at `now`. `jitter_sample` is a uniform random number in
    /// `0.0..1.0` supplied by the caller (so this function stays deterministic).
    pub fn on_failure(&mut self, now: Instant, jitter_sample: f64) -> RestartDecision {
        self.forget_old(now);
        if self.failures.is_empty() {
            self.streak = 0;
        }
        self.failures.push_back(now);
        self.total += 1;
        let crash_looping = self.failures.len() > self.policy.max_restarts as usize;
        let base = if crash_looping {
            self.policy.max_backoff
        } else if self.streak == 0 {
            Duration::ZERO
        } else {
            let factor = 2u32.saturating_pow(self.streak - 1);
            self.policy
                .initial_backoff
                .saturating_mul(factor)
                .min(self.policy.max_backoff)
        };
        self.streak = self.streak.saturating_add(1);
        let j = self.policy.jitter.clamp(0.0, 1.0);
        let scale = 1.0 - j + 2.0 * j * jitter_sample.clamp(0.0, 1.0);
        let delay = base.mul_f64(scale).min(self.policy.max_backoff);
        RestartDecision {
            delay,
            crash_looping,
            failures_in_period: self.failures.len(),
        }
    }

    /// Whether the slot is crash-looping as of `now` (clears once the failures
    /// in the last `period` are back within `max_restarts`).
    pub fn crash_looping(&mut self, now: Instant) -> bool {
        self.forget_old(now);
        self.failures.len() > self.policy.max_restarts as usize
    }

    /// Every failure ever recorded (the restart count shown to operators).
    pub fn total_failures(&self) -> u64 {
        self.total
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn no_jitter() -> RestartPolicy {
        RestartPolicy {
            jitter: 0.0,
            ..RestartPolicy::default()
        }
    }

    #[tokio::test(start_paused = true)]
    async fn first_restart_is_immediate_then_backoff_doubles() {
        let mut t = RestartTracker::new(no_jitter());
        let mut delays = Vec::new();
        for _ in 0..5 {
            let d = t.on_failure(Instant::now(), 0.5);
            assert!(!d.crash_looping);
            delays.push(d.delay);
            tokio::time::advance(d.delay).await;
        }
        let ms: Vec<u128> = delays.iter().map(|d| d.as_millis()).collect();
        assert_eq!(ms, [0, 100, 200, 400, 800]);
    }

    #[tokio::test(start_paused = true)]
    async fn more_than_max_restarts_in_period_is_crash_looping_at_the_capped_backoff() {
        let mut t = RestartTracker::new(no_jitter());
        for _ in 0..5 {
            let d = t.on_failure(Instant::now(), 0.5);
            tokio::time::advance(d.delay).await;
        }
        let sixth = t.on_failure(Instant::now(), 0.5);
        assert!(sixth.crash_looping);
        assert_eq!(sixth.delay, Duration::from_secs(30));
        assert_eq!(sixth.failures_in_period, 6);
        // It keeps retrying, at the cap, while failures continue.
        tokio::time::advance(sixth.delay).await;
        let seventh = t.on_failure(Instant::now(), 0.5);
        assert!(seventh.crash_looping);
        assert_eq!(seventh.delay, Duration::from_secs(30));
        assert_eq!(t.total_failures(), 7);
    }

    #[tokio::test(start_paused = true)]
    async fn a_quiet_period_clears_crash_looping_and_resets_the_backoff() {
        let mut t = RestartTracker::new(no_jitter());
        for _ in 0..5 {
            let d = t.on_failure(Instant::now(), 0.5);
            tokio::time::advance(d.delay).await;
        }
        assert!(t.on_failure(Instant::now(), 0.5).crash_looping);
        assert!(t.crash_looping(Instant::now()));
        tokio::time::advance(Duration::from_secs(61)).await;
        assert!(!t.crash_looping(Instant::now()));
        let d = t.on_failure(Instant::now(), 0.5);
        assert_eq!(
            d.delay,
            Duration::ZERO,
            "first failure after a quiet period restarts at once"
        );
        assert!(!d.crash_looping);
    }

    #[tokio::test(start_paused = true)]
    async fn backoff_is_capped_and_jitter_stays_within_bounds() {
        let policy = RestartPolicy {
            max_restarts: 100,
            period: Duration::from_secs(3600),
            ..RestartPolicy::default()
        };
        let mut t = RestartTracker::new(policy);
        let mut last = Duration::ZERO;
        for i in 0..20 {
            let sample = (i as f64 * 0.37) % 1.0;
            let d = t.on_failure(Instant::now(), sample);
            assert!(d.delay <= Duration::from_secs(30), "{:?}", d.delay);
            last = d.delay;
            tokio::time::advance(d.delay).await;
        }
        // Deep into the streak the base is the cap; jitter only lowers it (clamped above).
        assert!(last >= Duration::from_secs(24), "{last:?}");
        let mut t = RestartTracker::new(RestartPolicy::default());
        t.on_failure(Instant::now(), 0.0);
        let low = t.on_failure(Instant::now(), 0.0).delay;
        let mut t = RestartTracker::new(RestartPolicy::default());
        t.on_failure(Instant::now(), 0.0);
        let high = t.on_failure(Instant::now(), 0.999).delay;
        assert_eq!(low, Duration::from_millis(80));
        assert!(high > Duration::from_millis(119) && high <= Duration::from_millis(120));
    }
}
