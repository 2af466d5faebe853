//! The kill scenario's disturbance and its accounting: a random serving worker is stopped, what
//! it holds of the load is counted, and it is SIGKILLed; after the run its failures are set
//! against what the killed workers held, and those of requests sent on a kept-alive connection
//! whose worker was already stopped (idle at the kill, not in flight) are told apart.

use std::{
    fs,
    os::fd::OwnedFd,
    thread,
    time::{Duration, Instant},
};

use anyhow::{Context as _, Result, bail};
use cluster_load::KeptAliveFailure;
use rustix::process::{Pid, PidfdFlags, Signal, pidfd_open, pidfd_send_signal};
use serde::Serialize;

use crate::{
    cpu::stat_fields,
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

/// How long the picked worker's threads get to stop.
const STOP_WAIT: Duration = Duration::from_millis(100);

/// Stops a random serving worker of `pool`, counts what it holds with `counter` once every
/// thread of it has stopped, and SIGKILLs it. The stop keeps the count from moving between the
/// reading and the kill. The worker is signalled through [`open_worker`]'s pidfd. `None` when
/// no worker serves, or the one picked was gone.
pub fn kill_one(pool: &Pool, clock: &Clock, counter: &mut HeldCounter) -> Result<Option<Kill>> {
    let pids = pool.serving_pids()?;
    if pids.is_empty() {
        return Ok(None);
    }
    let pid = pids[fastrand::usize(..pids.len())];
    let Some(pidfd) = open_worker(pool, pid) else {
        return Ok(None);
    };
    if pidfd_send_signal(&pidfd, Signal::STOP).is_err() {
        return Ok(None);
    }
    let at_seconds = clock.started.elapsed().as_secs_f64();
    let held = match wait_stopped(pid) {
        Ok(true) => counter.held_by(&pidfd, pid),
        // It exited on its own: no kill to count.
        Ok(false) => return Ok(None),
        Err(err) => Err(err),
    };
    // Killed whether or not the reading worked, so no worker is left stopped; a stopped
    // process still dies of SIGKILL.
    pidfd_send_signal(&pidfd, Signal::KILL).with_context(|| format!("killing worker {pid}"))?;
    let held = held.with_context(|| format!("counting what worker {pid} held"))?;
    Ok(Some(Kill {
        pid,
        at_seconds,
        held,
    }))
}

/// A pidfd for worker `pid` of `pool`, so that a pid reused since `cluster status` named it is
/// never signalled: the parent is checked after the pidfd is open, which names this process
/// for good. `None` if it is gone or not the pool's.
pub fn open_worker(pool: &Pool, pid: i32) -> Option<OwnedFd> {
    let pidfd = pidfd_open(Pid::from_raw(pid)?, PidfdFlags::empty()).ok()?;
    (parent_of(pid) == Some(pool.pid())).then_some(pidfd)
}

/// The parent pid of `pid`: the field after the state in `/proc/PID/stat`.
fn parent_of(pid: i32) -> Option<i32> {
    let stat = fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    stat_fields(&stat)?.nth(1)?.parse().ok()
}

/// Waits until every thread of `pid` is stopped (`T` in `/proc/PID/task/TID/stat`): SIGSTOP
/// returns at once, and a thread still in the middle of `accept4` finishes that call first.
/// `false` if the process ended meanwhile (no task left, or only dead ones).
fn wait_stopped(pid: i32) -> Result<bool> {
    let tasks = format!("/proc/{pid}/task");
    let deadline = Instant::now() + STOP_WAIT;
    loop {
        let Ok(entries) = fs::read_dir(&tasks) else {
            return Ok(false);
        };
        let states: Vec<String> = entries
            .filter_map(Result::ok)
            .filter_map(|task| {
                let stat = fs::read_to_string(task.path().join("stat")).ok()?;
                Some(stat_fields(&stat)?.next()?.to_owned())
            })
            .collect();
        if states
            .iter()
            .all(|state| ["Z", "X"].contains(&state.as_str()))
        {
            return Ok(false);
        }
        if states
            .iter()
            .all(|state| ["T", "t", "Z", "X"].contains(&state.as_str()))
        {
            return Ok(true);
        }
        if Instant::now() > deadline {
            bail!(
                "worker {pid} was not stopped within {} ms of SIGSTOP",
                STOP_WAIT.as_millis()
            );
        }
        thread::sleep(Duration::from_micros(100));
    }
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
    fn reads_the_parent_and_waits_for_a_stop() {
        let own = i32::try_from(std::process::id()).unwrap();
        let parent = i32::try_from(std::os::unix::process::parent_id()).unwrap();
        assert_eq!(parent_of(own), Some(parent));
        let mut child = std::process::Command::new("sleep")
            .arg("30")
            .spawn()
            .unwrap();
        let pid = i32::try_from(child.id()).unwrap();
        assert_eq!(parent_of(pid), Some(own));
        let pidfd = pidfd_open(Pid::from_raw(pid).unwrap(), PidfdFlags::empty()).unwrap();
        pidfd_send_signal(&pidfd, Signal::STOP).unwrap();
        assert!(wait_stopped(pid).unwrap(), "stopped");
        pidfd_send_signal(&pidfd, Signal::KILL).unwrap();
        child.wait().unwrap();
        assert!(!wait_stopped(pid).unwrap(), "gone");
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
