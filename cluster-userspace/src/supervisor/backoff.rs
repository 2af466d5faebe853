//! Restart pacing: a start is unstable when its worker exits before it is ready, or within the
//! minimum uptime of being ready. Unstable starts in a row are restarted after an exponentially
//! growing delay (capped), so a crash loop cannot spin the CPU, and after `max_restarts` of them
//! the slot gives up. A worker that ran a while is restarted at once and starts a new count.

use std::time::Duration;

/// When restarts are immediate, how they slow down, and when they stop.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RestartPolicy {
    /// A worker that exits before it has been ready this long had an unstable start
    /// (`--min-uptime`).
    pub min_uptime: Duration,
    /// Delay after the first unstable start; doubles with each further one.
    pub first_delay: Duration,
    /// Longest delay.
    pub max_delay: Duration,
    /// Unstable starts in a row after which the slot gives up (`--max-restarts`).
    pub max_restarts: u32,
}

impl Default for RestartPolicy {
    /// Comparable to PM2's `exp_backoff_restart_delay` (100 ms, capped at 15 s) with a 1 s
    /// minimum uptime; giving up after 9 unstable starts takes about 25 s.
    fn default() -> Self {
        Self {
            min_uptime: Duration::from_secs(1),
            first_delay: Duration::from_millis(100),
            max_delay: Duration::from_secs(15),
            max_restarts: 9,
        }
    }
}

/// What follows the end of a start.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Next {
    /// Start the slot again after this delay.
    RestartAfter(Duration),
    /// The slot had `max_restarts` unstable starts in a row: start it no more.
    GiveUp,
}

/// One slot's run of unstable starts.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Backoff {
    unstable_starts: u32,
}

impl Backoff {
    /// Records a worker's exit after it was ready for `uptime` (`Duration::ZERO` for one that
    /// never was ready, or could not be started at all) and says what follows.
    pub fn on_exit(&mut self, uptime: Duration, policy: &RestartPolicy) -> Next {
        if uptime >= policy.min_uptime {
            self.unstable_starts = 0;
            return Next::RestartAfter(Duration::ZERO);
        }
        self.unstable_starts = self.unstable_starts.saturating_add(1);
        if self.unstable_starts >= policy.max_restarts {
            return Next::GiveUp;
        }
        let doublings = self.unstable_starts.saturating_sub(1).min(31);
        Next::RestartAfter(
            policy
                .first_delay
                .saturating_mul(1u32 << doublings)
                .min(policy.max_delay),
        )
    }

    /// Unstable starts in a row so far.
    #[must_use]
    pub fn unstable_starts(&self) -> u32 {
        self.unstable_starts
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn never_give_up() -> RestartPolicy {
        RestartPolicy {
            max_restarts: u32::MAX,
            ..RestartPolicy::default()
        }
    }

    fn delay_ms(next: Next) -> u128 {
        match next {
            Next::RestartAfter(delay) => delay.as_millis(),
            Next::GiveUp => panic!("gave up"),
        }
    }

    #[test]
    fn doubles_then_caps_then_resets() {
        let policy = never_give_up();
        let mut backoff = Backoff::default();
        let quick = Duration::from_millis(50);
        let delays: Vec<u128> = (0..10)
            .map(|_| delay_ms(backoff.on_exit(quick, &policy)))
            .collect();
        assert_eq!(
            delays,
            [100, 200, 400, 800, 1600, 3200, 6400, 12800, 15000, 15000]
        );
        assert_eq!(backoff.unstable_starts(), 10);
        assert_eq!(
            backoff.on_exit(Duration::from_secs(5), &policy),
            Next::RestartAfter(Duration::ZERO)
        );
        assert_eq!(backoff.unstable_starts(), 0);
        assert_eq!(delay_ms(backoff.on_exit(quick, &policy)), 100);
    }

    #[test]
    fn gives_up_at_the_nth_unstable_start_in_a_row() {
        let policy = RestartPolicy::default();
        let mut backoff = Backoff::default();
        let delays: Vec<u128> = (1..policy.max_restarts)
            .map(|_| delay_ms(backoff.on_exit(Duration::ZERO, &policy)))
            .collect();
        // The default gives up about 25 s after the first start.
        assert_eq!(delays.iter().sum::<u128>(), 25_500);
        assert_eq!(backoff.on_exit(Duration::ZERO, &policy), Next::GiveUp);
        assert_eq!(backoff.unstable_starts(), policy.max_restarts);

        // A stable run in between starts the count again.
        let mut backoff = Backoff::default();
        for _ in 1..policy.max_restarts {
            delay_ms(backoff.on_exit(Duration::ZERO, &policy));
        }
        assert_eq!(
            backoff.on_exit(policy.min_uptime, &policy),
            Next::RestartAfter(Duration::ZERO)
        );
        for _ in 1..policy.max_restarts {
            delay_ms(backoff.on_exit(Duration::ZERO, &policy));
        }
        assert_eq!(backoff.on_exit(Duration::ZERO, &policy), Next::GiveUp);
    }

    #[test]
    fn never_overflows() {
        let policy = never_give_up();
        let mut backoff = Backoff {
            unstable_starts: u32::MAX - 3,
        };
        for _ in 0..2 {
            assert_eq!(
                backoff.on_exit(Duration::ZERO, &policy),
                Next::RestartAfter(policy.max_delay)
            );
        }
        assert_eq!(backoff.on_exit(Duration::ZERO, &policy), Next::GiveUp);
        assert_eq!(backoff.on_exit(Duration::ZERO, &policy), Next::GiveUp);
    }
}
