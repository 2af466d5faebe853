//! Lifecycle scenarios: the pool is disturbed while the load runs (3 rolling reloads through
//! `cluster reload`, a random worker SIGKILLed every second, a worker stopped with SIGSTOP, or
//! the pool scaled up by 2 and back through `cluster scale`), and each run reports failed
//! requests against the total, what was done to the pool when, and the load's time series.

use std::{
    thread,
    time::{Duration, Instant},
};

use anyhow::Result;
use clap::ValueEnum;
use cluster_load::{Live, Timeline};
use serde::Serialize;

use crate::{
    held::HeldCounter,
    kills::{self, Kill, KillAccount},
    matrix::{Mode, Pattern},
    pool::Pool,
    stuck,
};

/// Reloads in the reload scenario.
pub(crate) const RELOADS: u32 = 3;
/// Time between two kills in the kill scenario.
const KILL_EVERY: Duration = Duration::from_secs(1);
/// Slots the scale scenario adds, and then removes.
pub(crate) const SCALE_BY: u32 = 2;
/// How often the scale scenario looks whether the pool has its new size.
const SCALE_POLL: Duration = Duration::from_millis(100);
/// Buckets of a run's time series: 250 ms each in a 10 s run.
const TIMELINE_BUCKETS: u32 = 40;

/// What happens to the pool during the run.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, ValueEnum, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Lifecycle {
    /// 3 rolling reloads, evenly spread over the run.
    Reload,
    /// A random serving worker SIGKILLed every second (stopped first, while what it holds is
    /// counted).
    Kill,
    /// A worker the load reaches stopped with SIGSTOP at a tenth of the run, continued at its
    /// end; the pool's health check at its defaults (`--stall-after 1 --hang-timeout 30`).
    Stuck,
    /// The same with the health check off (`--stall-after 3600 --hang-timeout 0`).
    StuckHealthOff,
    /// `cluster scale N+2` at a third of the run, `cluster scale N` at two thirds.
    Scale,
}

impl Lifecycle {
    pub const ALL: [Self; 5] = [
        Self::Reload,
        Self::Kill,
        Self::Stuck,
        Self::StuckHealthOff,
        Self::Scale,
    ];

    #[must_use]
    pub fn name(self) -> &'static str {
        match self {
            Self::Reload => "reload",
            Self::Kill => "kill",
            Self::Stuck => "stuck",
            Self::StuckHealthOff => "stuck-health-off",
            Self::Scale => "scale",
        }
    }

    /// `cluster run` options the scenario's pool gets besides the bench's own. The stuck
    /// scenario writes out the health defaults because the bench otherwise runs `hash` with
    /// the check off (`--hang-timeout 0`, the pure OS baseline).
    #[must_use]
    pub fn pool_options(self) -> &'static [&'static str] {
        match self {
            Self::Stuck => &["--stall-after", "1", "--hang-timeout", "30"],
            Self::StuckHealthOff => &["--stall-after", "3600", "--hang-timeout", "0"],
            Self::Reload | Self::Kill | Self::Scale => &[],
        }
    }

    /// How long one request may take. 2 s with a stopped worker, as in the README's health
    /// experiment: a client caught on the stopped worker gives up and connects again during the
    /// run, so whether the steering avoids the worker shows in the failures. With the default
    /// 10 s every client would soon wait on the stopped worker until the end of a 10 s run.
    #[must_use]
    pub fn request_timeout(self) -> Duration {
        match self {
            Self::Stuck | Self::StuckHealthOff => stuck::REQUEST_TIMEOUT,
            Self::Reload | Self::Kill | Self::Scale => cluster_load::DEFAULT_TIMEOUT,
        }
    }
}

/// One lifecycle run.
#[derive(Debug, Clone, Serialize)]
pub struct LifecycleRun {
    pub scenario: Lifecycle,
    pub mode: Mode,
    pub pattern: Pattern,
    /// `cluster run` options besides the bench's own.
    pub pool_options: Vec<String>,
    /// The generator's request timeout.
    pub timeout_seconds: f64,
    /// Disturbances made: reloads completed, workers killed or stopped, scale commands.
    pub disturbances: u32,
    pub requests: u64,
    pub failed: u64,
    pub errors: cluster_load::ErrorCounts,
    /// In the kill scenario, the failures against what the killed workers held.
    pub kill: Option<KillAccount>,
    /// What the bench did to the pool and what it saw, in the load's time.
    pub events: Vec<Event>,
    /// The load in time buckets.
    pub timeline: Timeline,
}

/// Something done to the pool, or seen of it, during a run.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Event {
    /// `reload`, `SIGKILL`, `SIGSTOP`, `stalled`, `killed as hung`, `scale to N`.
    pub what: String,
    /// Seconds since the load started.
    pub at_seconds: f64,
    /// When it was over, for one that takes time: a reload until every slot was replaced, a
    /// stop until SIGCONT, a scale until the pool had its new size.
    pub until_seconds: Option<f64>,
}

/// The disturbances made in a run.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Disturbed {
    pub made: u32,
    pub events: Vec<Event>,
    /// The workers killed in the kill scenario.
    pub kills: Vec<Kill>,
}

/// The load's time: when it started and how long it sends requests.
#[derive(Debug, Clone, Copy)]
pub struct Clock {
    pub started: Instant,
    pub duration: Duration,
}

impl Clock {
    /// Seconds since the load started, to the millisecond.
    #[must_use]
    pub fn now(&self) -> f64 {
        (self.started.elapsed().as_secs_f64() * 1000.0).round() / 1000.0
    }

    /// Sleeps until `offset` after the load started.
    pub fn sleep_until(&self, offset: Duration) {
        let at = self.started + offset;
        if let Some(wait) = at.checked_duration_since(Instant::now()) {
            thread::sleep(wait);
        }
    }

    /// Whether the load has stopped sending.
    #[must_use]
    pub fn over(&self) -> bool {
        self.started.elapsed() >= self.duration
    }
}

impl Event {
    /// `what`, now.
    #[must_use]
    pub fn now(what: impl Into<String>, clock: &Clock) -> Self {
        Self {
            what: what.into(),
            at_seconds: clock.now(),
            until_seconds: None,
        }
    }
}

/// The bucket width of a run's time series.
#[must_use]
pub fn timeline_bucket(duration: Duration) -> Duration {
    let micros = duration.as_micros().div_ceil(u128::from(TIMELINE_BUCKETS));
    Duration::from_micros(u64::try_from(micros).unwrap_or(u64::MAX).max(1000))
}

/// Disturbs `pool`, running in `mode`, as `scenario` says while the load of `clock` runs
/// (`live` names the workers it reaches). Runs on a thread of its own beside the load.
pub fn disturb(
    pool: &Pool,
    scenario: Lifecycle,
    mode: Mode,
    clock: Clock,
    live: &Live,
) -> Result<Disturbed> {
    let duration = clock.duration;
    let mut done = Disturbed::default();
    match scenario {
        Lifecycle::Reload => {
            let gap = duration / (RELOADS + 1);
            for n in 1..=RELOADS {
                clock.sleep_until(gap * n);
                let mut event = Event::now("reload", &clock);
                pool.control(&["reload"])?;
                event.until_seconds = Some(clock.now());
                done.events.push(event);
                done.made += 1;
            }
        }
        Lifecycle::Kill => {
            let mut counter = HeldCounter::open(pool.addr.port(), !mode.shares_one_listener())?;
            let mut next = KILL_EVERY;
            while next + KILL_EVERY / 2 < duration {
                clock.sleep_until(next);
                next += KILL_EVERY;
                if let Some(kill) = kills::kill_one(pool, &clock, &mut counter)? {
                    done.events.push(Event::now("SIGKILL", &clock));
                    done.kills.push(kill);
                    done.made += 1;
                }
            }
        }
        Lifecycle::Stuck | Lifecycle::StuckHealthOff => {
            done.events = stuck::stop_one(pool, clock, live)?;
            done.made = 1;
        }
        Lifecycle::Scale => {
            let (size, larger) = (pool.workers, pool.workers + SCALE_BY);
            for (size, at) in [(larger, duration / 3), (size, duration * 2 / 3)] {
                clock.sleep_until(at);
                let mut event = Event::now(format!("scale to {size}"), &clock);
                pool.control(&["scale", &size.to_string()])?;
                done.made += 1;
                // Until every slot serves and the removed workers have drained and gone,
                // looked at until the next step is due (or, after the last, the run's end).
                let until = if size == larger {
                    duration * 2 / 3
                } else {
                    duration
                };
                while clock.started.elapsed() < until {
                    let status = pool.status()?;
                    if status.serving == size && status.rows.len() == size as usize {
                        event.until_seconds = Some(clock.now());
                        break;
                    }
                    thread::sleep(SCALE_POLL);
                }
                done.events.push(event);
            }
        }
    }
    Ok(done)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_run_has_forty_buckets_of_at_least_a_millisecond() {
        assert_eq!(
            timeline_bucket(Duration::from_secs(10)),
            Duration::from_millis(250)
        );
        assert_eq!(
            timeline_bucket(Duration::from_secs(1)),
            Duration::from_millis(25)
        );
        assert_eq!(
            timeline_bucket(Duration::from_millis(10)),
            Duration::from_millis(1)
        );
    }

    #[test]
    fn only_the_stuck_scenarios_change_the_pool_and_the_timeout() {
        assert_eq!(Lifecycle::Reload.pool_options(), [] as [&str; 0]);
        assert!(Lifecycle::Stuck.pool_options().contains(&"--hang-timeout"));
        assert!(
            Lifecycle::StuckHealthOff
                .pool_options()
                .ends_with(&["--hang-timeout", "0"])
        );
        assert_eq!(Lifecycle::Stuck.request_timeout(), Duration::from_secs(2));
        assert_eq!(Lifecycle::Scale.request_timeout(), Duration::from_secs(10));
    }
}
