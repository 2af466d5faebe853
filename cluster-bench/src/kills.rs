//! The kill scenario's disturbance and its accounting: a random serving worker is stopped, what
//! it holds of the load is counted, and it is SIGKILLed; after the run its failures are set
//! against what the killed workers held, and those of requests sent on a kept-alive connection
//! whose worker was already stopped (idle at the kill, not in flight) are told apart.

use anyhow::{Context as _, Result};
use cluster_load::KeptAliveFailure;
use nix::{
    sys::signal::{Signal, kill},
    unistd::Pid,
};
use serde::Serialize;

use crate::{
    held::{Held, HeldCounter},
    lifecycle::Clock,
    pool::Pool,
};

/// One killed worker.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct Kill {
    pub pid: i32,
    /// When it was stopped to be counted, in seconds since the load started (unrounded: a
    /// failure is placed before or after it).
    pub at_seconds: f64,
    /// What it held then.
    pub held: Held,
}

/// The kill scenario's failures against what the killed workers held.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct KillAccount {
    pub kills: Vec<Kill>,
    /// Connections the killed workers held (in flight or idle), summed over the kills.
    pub held: u64,
    /// Connections waiting in their own accept queues, summed over the kills.
    pub queued: u64,
    /// `held + queued`: the target's bound on the failures.
    pub bound: u64,
    /// Failed requests sent on a kept-alive connection after its worker was stopped for the
    /// kill: the connection was held idle, the request was not in flight at the kill.
    pub failed_idle: u64,
    /// The other failed requests: in flight at a kill, or failed for another reason.
    pub failed_in_flight: u64,
}

/// Stops a random serving worker of `pool`, counts what it holds with `counter`, and SIGKILLs
/// it. The stop keeps the count from moving between the reading and the kill. `None` when no
/// worker serves, or the one picked was gone.
pub fn kill_one(pool: &Pool, clock: &Clock, counter: &mut HeldCounter) -> Result<Option<Kill>> {
    let pids = pool.serving_pids()?;
    if pids.is_empty() {
        return Ok(None);
    }
    let pid = pids[fastrand::usize(..pids.len())];
    let victim = Pid::from_raw(pid);
    if kill(victim, Signal::SIGSTOP).is_err() {
        return Ok(None);
    }
    let at_seconds = clock.started.elapsed().as_secs_f64();
    let held = counter.held_by(pid);
    // Killed whether or not the reading worked, so no worker is left stopped; a stopped
    // process still dies of SIGKILL.
    kill(victim, Signal::SIGKILL).with_context(|| format!("killing worker {pid}"))?;
    let held = held.with_context(|| format!("counting what worker {pid} held"))?;
    Ok(Some(Kill {
        pid,
        at_seconds,
        held,
    }))
}

impl KillAccount {
    /// `failed` requests of a run with `kills`, of which `kept_alive` failed on kept-alive
    /// connections.
    #[must_use]
    pub fn of(kills: Vec<Kill>, failed: u64, kept_alive: &[KeptAliveFailure]) -> Self {
        let held = kills.iter().map(|k| k.held.connections).sum();
        let queued = kills.iter().map(|k| k.held.queued).sum();
        let sent_after_its_kill = |failure: &&KeptAliveFailure| {
            kills.iter().any(|kill| {
                u64::try_from(kill.pid) == Ok(failure.pid)
                    && failure.sent_seconds >= kill.at_seconds
            })
        };
        let failed_idle = kept_alive.iter().filter(sent_after_its_kill).count() as u64;
        Self {
            kills,
            held,
            queued,
            bound: held + queued,
            failed_idle,
            failed_in_flight: failed.saturating_sub(failed_idle),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn kill_at(pid: i32, at_seconds: f64, connections: u64, queued: u64) -> Kill {
        Kill {
            pid,
            at_seconds,
            held: Held {
                connections,
                queued,
            },
        }
    }

    fn failure(pid: u64, sent_seconds: f64) -> KeptAliveFailure {
        KeptAliveFailure { pid, sent_seconds }
    }

    #[test]
    fn failures_are_set_against_what_the_killed_workers_held() {
        let kills = vec![kill_at(10, 1.0, 16, 1), kill_at(11, 2.0, 32, 0)];
        let kept_alive = [
            // In flight on worker 10 when it was stopped.
            failure(10, 0.999),
            // Sent on worker 10's connections after it was stopped: idle at the kill.
            failure(10, 1.0),
            failure(10, 1.5),
            // Worker 11's, in flight at its kill though sent after the first one.
            failure(11, 1.7),
            // A worker never killed here.
            failure(12, 2.5),
        ];
        let account = KillAccount::of(kills.clone(), 9, &kept_alive);
        assert_eq!(
            account,
            KillAccount {
                kills,
                held: 48,
                queued: 1,
                bound: 49,
                failed_idle: 2,
                failed_in_flight: 7,
            }
        );
    }

    #[test]
    fn no_kill_no_bound() {
        let account = KillAccount::of(Vec::new(), 3, &[failure(1, 0.5)]);
        assert_eq!(
            (account.bound, account.failed_idle, account.failed_in_flight),
            (0, 0, 3)
        );
    }
}
