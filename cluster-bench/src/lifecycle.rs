//! Lifecycle scenarios: the pool is disturbed while the load runs (3 rolling reloads through
//! `cluster reload`, or a random worker SIGKILLed every second), and each run reports failed
//! requests against the total.

use std::{
    thread,
    time::{Duration, Instant},
};

use anyhow::Result;
use clap::ValueEnum;
use nix::{
    sys::signal::{Signal, kill},
    unistd::Pid,
};
use serde::Serialize;

use crate::{
    matrix::{Mode, Pattern},
    pool::Pool,
};

/// Reloads in the reload scenario.
const RELOADS: u32 = 3;
/// Time between two kills in the kill scenario.
const KILL_EVERY: Duration = Duration::from_secs(1);

/// What happens to the pool during the run.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, ValueEnum, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Lifecycle {
    /// 3 rolling reloads, evenly spread over the run.
    Reload,
    /// A random serving worker SIGKILLed every second.
    Kill,
}

impl Lifecycle {
    #[must_use]
    pub fn name(self) -> &'static str {
        match self {
            Self::Reload => "reload",
            Self::Kill => "kill",
        }
    }
}

/// One lifecycle run.
#[derive(Debug, Clone, Serialize)]
pub struct LifecycleRun {
    pub scenario: Lifecycle,
    pub mode: Mode,
    pub pattern: Pattern,
    /// Disturbances made: reloads completed, or workers killed.
    pub disturbances: u32,
    pub requests: u64,
    pub failed: u64,
    /// Kept-alive connections the server closed while idle (not failed requests).
    pub idle_closed: u64,
    pub errors: cluster_load::ErrorCounts,
}

/// Disturbs `pool` as `scenario` says until `duration` has passed since now; returns how many
/// disturbances were made. Runs on a thread of its own beside the load.
pub fn disturb(pool: &Pool, scenario: Lifecycle, duration: Duration) -> Result<u32> {
    let start = Instant::now();
    let mut made = 0;
    match scenario {
        Lifecycle::Reload => {
            let gap = duration / (RELOADS + 1);
            for n in 1..=RELOADS {
                sleep_until(start + gap * n);
                pool.control(&["reload"])?;
                made += 1;
            }
        }
        Lifecycle::Kill => {
            let mut next = start + KILL_EVERY;
            while next + KILL_EVERY / 2 < start + duration {
                sleep_until(next);
                next += KILL_EVERY;
                let pids = pool.serving_pids()?;
                if pids.is_empty() {
                    continue;
                }
                let victim = pids[fastrand::usize(..pids.len())];
                if kill(Pid::from_raw(victim), Signal::SIGKILL).is_ok() {
                    made += 1;
                }
            }
        }
    }
    Ok(made)
}

fn sleep_until(at: Instant) {
    if let Some(wait) = at.checked_duration_since(Instant::now()) {
        thread::sleep(wait);
    }
}
