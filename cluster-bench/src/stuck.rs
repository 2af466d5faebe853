//! The stuck-worker scenario's disturbance: a worker the load reaches stopped with SIGSTOP at a
//! tenth of the run, watched through `cluster status --json` (stalled, or killed as hung), and
//! continued with SIGCONT when the load stops sending, if it is still alive.

use std::{os::fd::OwnedFd, thread, time::Duration};

use anyhow::{Context as _, Result};
use cluster_load::Live;
use rustix::process::{Signal, pidfd_send_signal};

use crate::{
    kills::open_worker,
    lifecycle::{Clock, Event},
    pool::Pool,
};

/// The generator's request timeout in the stuck scenarios (see `Lifecycle::request_timeout`).
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(2);
/// The event of a stopped worker the supervisor killed as hung.
pub const HUNG: &str = "killed as hung";
/// The share of the run before the worker is stopped.
const STOP_AT: u32 = 10;
/// How often the stopped worker's row is looked at. The supervisor's health check runs every
/// 0.25 s too, so a stall shows at most about this late.
const WATCH_EVERY: Duration = Duration::from_millis(250);

/// A stopped worker (its pidfd), continued when dropped (also when the bench fails halfway).
#[derive(Debug)]
struct Stopped(OwnedFd);

impl Drop for Stopped {
    fn drop(&mut self) {
        // ESRCH: it was killed as hung meanwhile; the pidfd never names another process.
        let _ = pidfd_send_signal(&self.0, Signal::CONT);
    }
}

/// Stops a worker the load reaches, watches it, and continues it at the end of the load;
/// returns what happened.
pub fn stop_one(pool: &Pool, clock: Clock, live: &Live) -> Result<Vec<Event>> {
    clock.sleep_until(clock.duration / STOP_AT);
    let victim = victim(pool, live)?;
    let pidfd = open_worker(pool, victim)
        .with_context(|| format!("worker {victim} is gone or not the pool's"))?;
    pidfd_send_signal(&pidfd, Signal::STOP).with_context(|| format!("stopping worker {victim}"))?;
    let stopped = Stopped(pidfd);
    let mut stop = Event::now("SIGSTOP", &clock);
    let mut events = Vec::new();
    let mut stalled = false;
    while !clock.over() {
        thread::sleep(WATCH_EVERY.min(clock.duration.saturating_sub(clock.started.elapsed())));
        // A status that fails now and then (the supervisor busy past the control timeout)
        // only misses one look.
        let Ok(status) = pool.status() else { continue };
        match status.rows.iter().find(|r| r.pid == Some(victim)) {
            None => {
                events.push(Event::now(HUNG, &clock));
                break;
            }
            Some(row) if row.phase == "stalled" && !stalled => {
                stalled = true;
                events.push(Event::now("stalled", &clock));
            }
            Some(_) => {}
        }
    }
    clock.sleep_until(clock.duration);
    drop(stopped);
    let end = events
        .iter()
        .find(|e| e.what == HUNG)
        .map_or_else(|| clock.now(), |e| e.at_seconds);
    stop.until_seconds = Some(end);
    events.insert(0, stop);
    Ok(events)
}

/// The worker that answered the load last, if it still serves; else a random serving one.
fn victim(pool: &Pool, live: &Live) -> Result<i32> {
    let serving = pool.serving_pids()?;
    let reached = live
        .last_pid()
        .and_then(|pid| i32::try_from(pid).ok())
        .filter(|pid| serving.contains(pid));
    match reached {
        Some(pid) => Ok(pid),
        None if serving.is_empty() => anyhow::bail!("no worker serves: none to stop"),
        None => Ok(serving[fastrand::usize(..serving.len())]),
    }
}
