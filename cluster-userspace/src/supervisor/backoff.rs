//! Restart pacing: a worker that dies soon after it started is restarted after an exponentially
//! growing delay (capped), so a crash loop cannot spin the CPU; one that ran a while is restarted
//! at once.

use std::time::Duration;

/// When restarts are immediate and how they slow down.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RestartPolicy {
    /// A worker that exits before this uptime counts as failing to start.
    pub min_uptime: Duration,
    /// Delay after the first quick failure; doubles with each further one.
    pub first_delay: Duration,
    /// Longest delay.
    pub max_delay: Duration,
}

impl Default for RestartPolicy {
    /// Comparable to PM2's `exp_backoff_restart_delay` (100 ms, capped at 15 s) with a 1 s
    /// minimum uptime.
    fn default() -> Self {
        Self {
            min_uptime: Duration::from_secs(1),
            first_delay: Duration::from_millis(100),
            max_delay: Duration::from_secs(15),
        }
    }
}

/// One slot's run of quick failures.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Backoff {
    quick_failures: u32,
}

impl Backoff {
    /// Records an exit after `uptime` (or a failure to start at all, `Duration::ZERO`) and
    /// returns how long to wait before starting the slot again.
    pub fn on_exit(&mut self, uptime: Duration, policy: &RestartPolicy) -> Duration {
        if uptime >= policy.min_uptime {
            self.quick_failures = 0;
            return Duration::ZERO;
        }
        self.quick_failures = self.quick_failures.saturating_add(1);
        let doublings = self.quick_failures.saturating_sub(1).min(31);
        policy
            .first_delay
            .saturating_mul(1u32 << doublings)
            .min(policy.max_delay)
    }

    /// Quick failures in a row so far.
    #[must_use]
    pub fn quick_failures(&self) -> u32 {
        self.quick_failures
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn doubles_then_caps_then_resets() {
        let policy = RestartPolicy::default();
        let mut backoff = Backoff::default();
        let quick = Duration::from_millis(50);
        let delays: Vec<u128> = (0..10)
            .map(|_| backoff.on_exit(quick, &policy).as_millis())
            .collect();
        assert_eq!(
            delays,
            [100, 200, 400, 800, 1600, 3200, 6400, 12800, 15000, 15000]
        );
        assert_eq!(backoff.quick_failures(), 10);
        assert_eq!(
            backoff.on_exit(Duration::from_secs(5), &policy),
            Duration::ZERO
        );
        assert_eq!(backoff.quick_failures(), 0);
        assert_eq!(backoff.on_exit(quick, &policy).as_millis(), 100);
    }

    #[test]
    fn never_overflows() {
        let policy = RestartPolicy::default();
        let mut backoff = Backoff {
            quick_failures: u32::MAX - 1,
        };
        for _ in 0..3 {
            assert_eq!(backoff.on_exit(Duration::ZERO, &policy), policy.max_delay);
        }
    }
}
