//! The pool's decisions as a pure state machine: which workers each slot has and in which phase,
//! and what every input does (a start coming due, `READY=1`, an exit, a reload, a scale, a stop,
//! a deadline). It forks, signals and writes maps only through [`Effects`], so unit tests drive
//! every transition without root, processes or a kernel.
//!
//! A worker's exec may fail after it was started ([`Pool::exec_failed`]): it exits at once, and
//! its exit counts as a start that never became ready, described by the exec's error.
//!
//! A starting worker serves once it is ready: at its `READY=1` (the built-in worker, and a
//! COMMAND with `--wait-ready`), or once it has shown that it accepts from its own socket
//! ([`Readiness::Accepts`]). A reload's replacement
//! also has to stay up `--min-uptime` first, unless it reports `READY=1`.
//!
//! A slot is a place in the selection (an index of the program's socket array); a worker is one
//! process serving it. A slot has at most one serving worker and at most one starting one (its
//! first, a restart, or a reload's replacement); workers it replaced drain beside them. A slot
//! whose workers keep failing to start gives up ([`GaveUp`]) and stays failed until a reload.

use std::{
    collections::{BTreeMap, VecDeque},
    fmt,
    time::{Duration, Instant},
};

use nix::{
    sys::{signal::Signal, wait::WaitStatus},
    unistd::Pid,
};
use tracing::{error, info, warn};

use super::{
    Readiness, SupervisorError,
    backoff::{Backoff, Next, RestartPolicy},
};

/// How often a draining COMMAND worker's socket is checked for connections left.
pub const DRAIN_POLL: Duration = Duration::from_millis(100);
/// The most slots a pool can have (the program's socket array).
pub const MAX_SLOTS: u32 = cluster_common::MAX_SLOTS;

/// What the state machine asks of the world. The supervisor implements it with fork, signals and
/// map writes; unit tests with a recording fake.
pub trait Effects {
    /// Opens a socket for `slot` and starts a worker on it. The socket listens, but nothing is
    /// steered to it before [`Effects::serve`].
    fn start(&mut self, slot: u32) -> Result<Pid, SupervisorError>;
    /// `pid`'s socket becomes `slot`'s in the selection, replacing the one there in place.
    /// Returns whether it did: a map write can fail, and then the slot keeps what it had.
    fn serve(&mut self, slot: u32, pid: Pid) -> bool;
    /// `slot` has no serving socket any more: steer nothing to it.
    fn unserve(&mut self, slot: u32);
    /// Starts checking that `pid`, starting in `slot`, accepts from its socket; the supervisor
    /// reports it with [`Pool::accepted`].
    fn probe(&mut self, slot: u32, pid: Pid);
    /// `slot` joins the sticky table (its first worker serves).
    fn slot_added(&mut self, slot: u32);
    /// `slot` leaves the sticky table (scaled away).
    fn slot_removed(&mut self, slot: u32);
    /// Tells `pid` on its message channel that it drains.
    fn tell_draining(&mut self, pid: Pid);
    /// Sends `signal` to `pid`'s process group.
    fn signal(&mut self, pid: Pid, signal: Signal);
    /// Whether `pid`'s socket has nothing queued and no connection open.
    fn drained(&self, pid: Pid) -> bool;
    /// `pid` was reaped: release whatever was held for it.
    fn forget(&mut self, pid: Pid);
}

/// How a worker learns that it drains.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DrainStyle {
    /// The built-in worker: SIGTERM at once; it accepts what is queued, answers the next request
    /// on each connection with `Connection: close`, and exits.
    SignalAtOnce,
    /// A COMMAND, which may exit at once on SIGTERM: SIGTERM only once its socket has nothing
    /// queued and no connection open.
    WhenDrained,
}

/// The pool's fixed rules.
#[derive(Debug, Clone, Copy)]
pub struct PoolConfig {
    pub readiness: Readiness,
    pub restart: RestartPolicy,
    pub drain: DrainStyle,
    pub drain_timeout: Duration,
    pub shutdown_timeout: Duration,
    /// Slots replaced at once in a reload.
    pub reload_batch: u32,
}

/// A worker's phase, as `status` shows it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Phase {
    Starting,
    Serving,
    Draining,
    Stopping,
    /// A slot without a worker that gave up after too many unstable starts.
    Failed,
}

impl fmt::Display for Phase {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::Starting => "starting",
            Self::Serving => "serving",
            Self::Draining => "draining",
            Self::Stopping => "stopping",
            Self::Failed => "failed",
        })
    }
}

/// Why a request to the pool was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PoolError {
    #[error(
        "a reload is already running ({done} of {total} slots replaced); try again when it ends"
    )]
    ReloadRunning { done: u32, total: u32 },
    #[error("the pool is shutting down")]
    ShuttingDown,
    #[error("no slot {slot}: the pool has slots 0 to {last}")]
    UnknownSlot { slot: u32, last: u32 },
    #[error("cannot scale to {0} workers: use 1 to {MAX_SLOTS}")]
    BadScale(u32),
}

/// How a reload ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReloadOutcome {
    /// Slots whose worker was replaced.
    pub replaced: u32,
    /// Why it stopped early, if it did; the slots not yet replaced keep their old workers.
    pub failure: Option<String>,
}

/// A slot gave up: its last `unstable_starts` starts in a row were unstable, and it starts no
/// more worker until a reload.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GaveUp {
    pub slot: u32,
    /// The last worker, if it was forked at all.
    pub pid: Option<Pid>,
    /// Whether the last worker ran its program: forked, and its exec succeeded.
    pub started: bool,
    /// How the last start ended: its exit status, or why it could not be started.
    pub last: String,
    pub unstable_starts: u32,
    /// No worker of the pool ever had a stable start: the command cannot start, and the pool
    /// stops.
    pub pool_fails: bool,
    /// Slots serving after it gave up, of `slots`.
    pub serving: u32,
    pub slots: u32,
}

/// One row of `status`: a worker, or a slot that has none right now.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StatusRow {
    pub slot: u32,
    pub pid: Option<Pid>,
    /// `None` for a slot waiting to restart its worker; `Failed` for one that gave up.
    pub phase: Option<Phase>,
    pub started: Option<Instant>,
    /// Workers started in this slot after one exited (reload replacements are not restarts).
    pub restarts: u32,
}

#[derive(Debug)]
enum State {
    /// Started; not in the selection. `ready_at` makes it serve by itself (a COMMAND without
    /// `--wait-ready`), once it is no longer `probing` (waiting to be seen accepting its probe);
    /// `ready_by` is the deadline for `READY=1` or the probe, cleared once it was killed for
    /// missing it.
    Starting {
        ready_at: Option<Instant>,
        ready_by: Option<Instant>,
        probing: bool,
    },
    Serving {
        since: Instant,
    },
    /// Out of the selection, finishing its work. SIGTERM once its socket drained, or at
    /// `term_by` (`None` once sent); SIGKILL at `kill_at`.
    Draining {
        term_by: Option<Instant>,
        kill_at: Instant,
    },
    /// SIGKILL sent; waiting to reap it.
    Killed,
}

#[derive(Debug)]
struct Worker {
    slot: u32,
    started: Instant,
    state: State,
    /// Why its exec failed, if it did: it then exits without having run its program.
    exec_failure: Option<String>,
}

impl Worker {
    fn phase(&self) -> Phase {
        match self.state {
            State::Starting { .. } => Phase::Starting,
            State::Serving { .. } => Phase::Serving,
            State::Draining { .. } => Phase::Draining,
            State::Killed => Phase::Stopping,
        }
    }
}

#[derive(Debug, Default)]
struct Slot {
    serving: Option<Pid>,
    starting: Option<Pid>,
    restart_at: Option<Instant>,
    backoff: Backoff,
    /// Workers started in the slot after one exited (not reload replacements).
    restarts: u32,
    started_once: bool,
    /// Gave up after too many unstable starts: no worker, no restart.
    failed: bool,
    /// In the sticky table.
    member: bool,
}

#[derive(Debug, Default)]
struct Reload {
    pending: VecDeque<u32>,
    /// Slot → its replacement, started and not yet serving.
    in_flight: BTreeMap<u32, Pid>,
    total: u32,
    replaced: u32,
    failure: Option<String>,
}

#[derive(Debug)]
struct Shutdown {
    /// Set by a second stop: every worker was sent SIGKILL, and the pool ends at this instant
    /// even if one cannot be reaped.
    give_up_at: Option<Instant>,
}

/// The pool: its slots, its workers, and whatever reload or shutdown is under way.
#[derive(Debug)]
pub struct Pool {
    config: PoolConfig,
    slots: Vec<Slot>,
    workers: BTreeMap<Pid, Worker>,
    reload: Option<Reload>,
    outcomes: Vec<ReloadOutcome>,
    shutdown: Option<Shutdown>,
    /// Workers killed after a stop was asked for.
    killed: Vec<Pid>,
    announced_ready: bool,
    /// Slots that gave up since the last call to [`Pool::take_gave_up`].
    gave_up: Vec<GaveUp>,
    /// A worker of the pool had a stable start: it stayed up `min_uptime` after it was ready.
    stable_once: bool,
}

/// How long a worker killed with SIGKILL gets to be reaped before a stopping pool gives up on
/// it: a process in uninterruptible sleep can outlast any SIGKILL.
pub const REAP_AFTER_KILL: Duration = Duration::from_secs(5);

impl Pool {
    /// A pool of `slots` slots, each due to start its first worker at `now`; they are all in the
    /// sticky table from the start.
    #[must_use]
    pub fn new(config: PoolConfig, slots: u32, now: Instant) -> Self {
        let slots = (0..slots)
            .map(|_| Slot {
                restart_at: Some(now),
                member: true,
                ..Slot::default()
            })
            .collect();
        Self {
            config,
            slots,
            workers: BTreeMap::new(),
            reload: None,
            outcomes: Vec::new(),
            shutdown: None,
            killed: Vec::new(),
            announced_ready: false,
            gave_up: Vec::new(),
            stable_once: false,
        }
    }

    /// Starts every slot's first worker. A failure to open the socket or steer it is fatal and
    /// returned; a worker that cannot be started is retried with backoff like a crash.
    pub fn start_all(
        &mut self,
        fx: &mut impl Effects,
        now: Instant,
    ) -> Result<(), SupervisorError> {
        for slot in 0..self.slot_count() {
            if self.shutdown.is_some() {
                // A slot gave up at its first start (`--max-restarts 1`): the pool stops.
                break;
            }
            match self.start(fx, slot, now) {
                Ok(()) => {}
                Err(err @ (SupervisorError::Listen(_) | SupervisorError::Steering(_))) => {
                    return Err(err);
                }
                Err(err) => self.retry_later(fx, slot, &err, now),
            }
        }
        Ok(())
    }

    /// How many slots the pool has.
    #[must_use]
    pub fn slot_count(&self) -> u32 {
        u32::try_from(self.slots.len()).unwrap_or(u32::MAX)
    }

    /// Whether a stop was asked for.
    #[must_use]
    pub fn stopping(&self) -> bool {
        self.shutdown.is_some()
    }

    /// Whether the pool has ended: stopping, and every worker reaped (or given up on).
    #[must_use]
    pub fn finished(&self, now: Instant) -> bool {
        self.shutdown
            .as_ref()
            .is_some_and(|s| self.workers.is_empty() || s.give_up_at.is_some_and(|at| at <= now))
    }

    /// The workers killed after a stop was asked for.
    #[must_use]
    pub fn killed(&self) -> &[Pid] {
        &self.killed
    }

    /// Pids of every worker still there.
    #[must_use]
    pub fn pids(&self) -> Vec<Pid> {
        self.workers.keys().copied().collect()
    }

    /// Reloads that ended since the last call.
    pub fn take_outcomes(&mut self) -> Vec<ReloadOutcome> {
        std::mem::take(&mut self.outcomes)
    }

    /// Slots that gave up since the last call.
    pub fn take_gave_up(&mut self) -> Vec<GaveUp> {
        std::mem::take(&mut self.gave_up)
    }

    /// Whether every slot serves, the first time it happens (the pool's "ready" moment). A slot
    /// that gave up (`failed`) does not serve: a pool with one never reports ready, until a
    /// reload brings the slot back and it serves; ready means that every slot asked for serves.
    pub fn newly_all_serving(&mut self) -> bool {
        if self.announced_ready || self.slots.iter().any(|s| s.serving.is_none()) {
            return false;
        }
        self.announced_ready = true;
        true
    }

    /// The next instant something is due: a start, a readiness deadline, a drain check or kill.
    #[must_use]
    pub fn next_deadline(&self, now: Instant) -> Option<Instant> {
        let slots = self.slots.iter().filter_map(|s| s.restart_at);
        let workers = self.workers.values().filter_map(|w| match w.state {
            State::Starting {
                ready_at,
                ready_by,
                probing,
            } => match (ready_at.filter(|_| !probing), ready_by) {
                (Some(a), Some(b)) => Some(a.min(b)),
                (a, b) => a.or(b),
            },
            State::Draining {
                term_by: Some(term_by),
                ..
            } => Some(term_by.min(now + DRAIN_POLL)),
            State::Draining { kill_at, .. } => Some(kill_at),
            State::Serving { .. } | State::Killed => None,
        });
        let give_up = self.shutdown.as_ref().and_then(|s| s.give_up_at);
        slots.chain(workers).chain(give_up).min()
    }

    /// Does whatever is due at `now`: starts, readiness by uptime, readiness deadlines, drains.
    pub fn tick(&mut self, fx: &mut impl Effects, now: Instant) {
        for slot in 0..self.slot_count() {
            let entry = &mut self.slots[slot as usize];
            if entry.restart_at.is_some_and(|at| at <= now) {
                entry.restart_at = None;
                if let Err(err) = self.start(fx, slot, now) {
                    self.retry_later(fx, slot, &err, now);
                }
            }
        }
        let pids: Vec<Pid> = self.workers.keys().copied().collect();
        for pid in pids {
            let Some(worker) = self.workers.get_mut(&pid) else {
                continue;
            };
            let slot = worker.slot;
            match &mut worker.state {
                State::Starting {
                    ready_at,
                    probing: false,
                    ..
                } if ready_at.is_some_and(|at| at <= now) => {
                    self.serve(fx, pid, now);
                }
                State::Starting {
                    ready_by, probing, ..
                } if ready_by.is_some_and(|at| at <= now) => {
                    *ready_by = None;
                    if *probing {
                        warn!(
                            slot,
                            pid = pid.as_raw(),
                            "worker did not accept a connection in time; killing it"
                        );
                    } else {
                        warn!(
                            slot,
                            pid = pid.as_raw(),
                            "worker did not report READY=1 in time; killing it"
                        );
                    }
                    fx.signal(pid, Signal::SIGKILL);
                }
                // SIGTERM is due before the kill (`term_by` is half of `kill_at`'s time), so this
                // arm comes first while it is pending.
                State::Draining {
                    term_by: term_by @ Some(_),
                    ..
                } => {
                    let drained = fx.drained(pid);
                    if !drained && term_by.is_some_and(|at| at > now) {
                        continue;
                    }
                    if !drained {
                        warn!(
                            slot,
                            pid = pid.as_raw(),
                            "worker still has connections open after half its drain time; sending SIGTERM"
                        );
                    } else {
                        info!(
                            slot,
                            pid = pid.as_raw(),
                            "worker's socket is drained; sending SIGTERM"
                        );
                    }
                    *term_by = None;
                    fx.signal(pid, Signal::SIGTERM);
                }
                State::Draining { kill_at, .. } if *kill_at <= now => {
                    worker.state = State::Killed;
                    if let Some(shutdown) = &mut self.shutdown {
                        self.killed.push(pid);
                        shutdown.give_up_at.get_or_insert(now + REAP_AFTER_KILL);
                        warn!(
                            slot,
                            pid = pid.as_raw(),
                            "worker did not stop in time; killing it"
                        );
                    } else {
                        warn!(
                            slot,
                            pid = pid.as_raw(),
                            timeout_s = self.config.drain_timeout.as_secs(),
                            "worker did not finish draining in time; killing it"
                        );
                    }
                    fx.signal(pid, Signal::SIGKILL);
                }
                _ => {}
            }
        }
        self.advance_reload(fx, now);
    }

    /// `READY=1` from `pid`, or from a process in the process group `group`: that starting
    /// worker serves. Ignored from anyone else, from a worker already killed for being late, and
    /// unless the pool waits for `READY=1`.
    pub fn notified_ready(
        &mut self,
        fx: &mut impl Effects,
        pid: i32,
        group: Option<i32>,
        now: Instant,
    ) {
        if !matches!(self.config.readiness, Readiness::Notified { .. }) {
            return;
        }
        let from = |worker: Pid| pid == worker.as_raw() || group == Some(worker.as_raw());
        let ready = self
            .workers
            .iter()
            .find_map(|(&worker_pid, w)| match w.state {
                State::Starting {
                    ready_by: Some(_), ..
                } if from(worker_pid) => Some(worker_pid),
                _ => None,
            });
        if let Some(worker) = ready {
            self.serve(fx, worker, now);
            self.advance_reload(fx, now);
        }
    }

    /// The starting worker `pid` accepted its probe: it serves now, or once a replacement's
    /// minimum uptime has passed. Ignored for any other worker.
    pub fn accepted(&mut self, fx: &mut impl Effects, pid: Pid, now: Instant) {
        let Some(Worker {
            state:
                State::Starting {
                    ready_at,
                    ready_by,
                    probing,
                },
            ..
        }) = self.workers.get_mut(&pid)
        else {
            return;
        };
        if !*probing || ready_by.is_none() {
            // Not probed, or already killed for being late.
            return;
        }
        *probing = false;
        *ready_by = None;
        if ready_at.is_none_or(|at| at <= now) {
            self.serve(fx, pid, now);
            self.advance_reload(fx, now);
        }
    }

    /// `pid`'s exec failed, for `reason`: it exits without having run its program (the child
    /// exits right after it reports the error). Its exit is then told by `reason` rather than by
    /// its exit status, and counts like any start that never became ready.
    pub fn exec_failed(&mut self, pid: Pid, reason: String) {
        if let Some(worker) = self.workers.get_mut(&pid) {
            worker.exec_failure = Some(reason);
        }
    }

    /// `pid` exited with `status`: take it out, restart its slot if it left the slot without a
    /// worker, and fail the reload if it was a replacement that never served.
    pub fn exited(&mut self, fx: &mut impl Effects, pid: Pid, status: WaitStatus, now: Instant) {
        let Some(worker) = self.workers.remove(&pid) else {
            return;
        };
        fx.forget(pid);
        let slot = worker.slot;
        let exit = match worker.exec_failure {
            Some(reason) => ExitDescription::NotStarted(reason),
            None => ExitDescription::Status(status),
        };
        let stopping = self.shutdown.is_some();
        let Some(entry) = self.slots.get_mut(slot as usize) else {
            info!(slot, pid = pid.as_raw(), status = %exit, "worker of a removed slot exited");
            return;
        };
        let uptime = match worker.state {
            State::Starting { .. } => {
                if entry.starting == Some(pid) {
                    entry.starting = None;
                }
                if let Some(reload) = &mut self.reload
                    && reload.in_flight.get(&slot) == Some(&pid)
                {
                    reload.in_flight.remove(&slot);
                    let reason = if exit.started() {
                        format!(
                            "the replacement for slot {slot} (pid {pid}) exited before it was ready: {exit}"
                        )
                    } else {
                        format!(
                            "could not start the replacement for slot {slot} (pid {pid}): {exit}"
                        )
                    };
                    error!(slot, pid = pid.as_raw(), status = %exit, "replacement exited before it was ready; the old worker keeps serving");
                    reload.failure.get_or_insert(reason);
                    reload.pending.clear();
                }
                Duration::ZERO
            }
            State::Serving { since } => {
                if entry.serving == Some(pid) {
                    entry.serving = None;
                    fx.unserve(slot);
                }
                let uptime = now.saturating_duration_since(since);
                self.stable_once |= uptime >= self.config.restart.min_uptime;
                uptime
            }
            State::Draining { .. } | State::Killed => {
                info!(slot, pid = pid.as_raw(), status = %exit, "worker exited");
                self.advance_reload(fx, now);
                return;
            }
        };
        if stopping {
            info!(slot, pid = pid.as_raw(), status = %exit, "worker exited");
            return;
        }
        if entry.serving.is_some() || entry.starting.is_some() {
            // Its replacement serves or is starting: nothing to restart.
            warn!(slot, pid = pid.as_raw(), status = %exit, "worker exited");
            self.advance_reload(fx, now);
            return;
        }
        match entry.backoff.on_exit(uptime, &self.config.restart) {
            Next::RestartAfter(delay) if delay.is_zero() => {
                warn!(slot, pid = pid.as_raw(), status = %exit, uptime_ms = uptime.as_millis(),
                      "worker exited; restarting");
                entry.restart_at = Some(now);
            }
            Next::RestartAfter(delay) if !exit.started() => {
                error!(slot, pid = pid.as_raw(), status = %exit,
                       unstable_starts = entry.backoff.unstable_starts(),
                       max_restarts = self.config.restart.max_restarts,
                       delay_ms = delay.as_millis(),
                       "could not start worker; restarting with backoff");
                entry.restart_at = Some(now + delay);
            }
            Next::RestartAfter(delay) => {
                warn!(slot, pid = pid.as_raw(), status = %exit, uptime_ms = uptime.as_millis(),
                      unstable_starts = entry.backoff.unstable_starts(),
                      max_restarts = self.config.restart.max_restarts,
                      delay_ms = delay.as_millis(),
                      "worker keeps exiting right after start; restarting with backoff");
                entry.restart_at = Some(now + delay);
            }
            Next::GiveUp => {
                let started = exit.started();
                self.give_up(fx, slot, Some(pid), started, exit.to_string(), now);
            }
        }
        self.advance_reload(fx, now);
    }

    /// Replaces the workers of `slots` (every slot when `None`), `reload_batch` at a time: each
    /// replacement starts on a new socket, and once it is ready its socket takes the slot's place
    /// in the selection and the old worker drains. A slot among them that gave up starts afresh
    /// (a fixed deploy gets its chance), outside the reload's count.
    pub fn reload(
        &mut self,
        fx: &mut impl Effects,
        slots: Option<u32>,
        now: Instant,
    ) -> Result<u32, PoolError> {
        if self.shutdown.is_some() {
            return Err(PoolError::ShuttingDown);
        }
        if let Some(reload) = &self.reload {
            return Err(PoolError::ReloadRunning {
                done: reload.replaced,
                total: reload.total,
            });
        }
        let pending: VecDeque<u32> = match slots {
            Some(slot) => {
                self.check_slot(slot)?;
                VecDeque::from([slot])
            }
            None => (0..self.slot_count()).collect(),
        };
        for &slot in &pending {
            self.revive(slot, now);
        }
        let total = u32::try_from(pending.len()).unwrap_or(u32::MAX);
        info!(
            slots = total,
            batch = self.config.reload_batch,
            "reload started"
        );
        self.reload = Some(Reload {
            pending,
            total,
            ..Reload::default()
        });
        self.advance_reload(fx, now);
        Ok(total)
    }

    /// Grows or shrinks the pool to `slots` slots. New slots start at once and join the
    /// selection (and the sticky table) when ready; removed ones (the highest) leave both at
    /// once and their workers drain.
    pub fn scale(
        &mut self,
        fx: &mut impl Effects,
        slots: u32,
        now: Instant,
    ) -> Result<(), PoolError> {
        if self.shutdown.is_some() {
            return Err(PoolError::ShuttingDown);
        }
        if slots == 0 || slots > MAX_SLOTS {
            return Err(PoolError::BadScale(slots));
        }
        let from = self.slot_count();
        info!(from, to = slots, "scaling");
        while self.slot_count() < slots {
            self.slots.push(Slot {
                restart_at: Some(now),
                ..Slot::default()
            });
        }
        while self.slot_count() > slots {
            let slot = self.slot_count() - 1;
            let entry = self.slots.pop().unwrap_or_default();
            if entry.member {
                fx.slot_removed(slot);
            }
            if let Some(pid) = entry.serving {
                fx.unserve(slot);
                self.drain(fx, pid, now, self.config.drain_timeout);
            }
            if let Some(pid) = entry.starting {
                self.drain(fx, pid, now, self.config.drain_timeout);
            }
            if let Some(reload) = &mut self.reload {
                reload.pending.retain(|&s| s != slot);
                reload.in_flight.remove(&slot);
            }
        }
        self.tick(fx, now);
        Ok(())
    }

    /// Stops the pool: no more starts or reloads; every worker drains, and is killed if it is
    /// still there after the shutdown timeout. A second stop kills them all at once.
    pub fn stop(&mut self, fx: &mut impl Effects, now: Instant) {
        if self.shutdown.is_some() {
            self.kill_all(fx, now);
            return;
        }
        let deadline = now + self.config.shutdown_timeout;
        // A worker killed at its drain timeout before the stop may never be reaped: give up on
        // it once every other worker had its chance.
        let killed_before = self
            .workers
            .values()
            .any(|w| matches!(w.state, State::Killed));
        self.shutdown = Some(Shutdown {
            give_up_at: killed_before.then(|| deadline + REAP_AFTER_KILL),
        });
        if let Some(mut reload) = self.reload.take() {
            reload
                .failure
                .get_or_insert_with(|| "the pool is shutting down".to_owned());
            self.finish_reload(reload);
        }
        for entry in &mut self.slots {
            entry.restart_at = None;
        }
        let halfway = now + self.config.shutdown_timeout / 2;
        for worker in self.workers.values_mut() {
            if let State::Draining { term_by, kill_at } = &mut worker.state {
                *kill_at = (*kill_at).min(deadline);
                *term_by = term_by.map(|t| t.min(halfway));
            }
        }
        let pids: Vec<Pid> = self.workers.keys().copied().collect();
        for pid in pids {
            if let Some(State::Starting { .. } | State::Serving { .. }) =
                self.workers.get(&pid).map(|w| &w.state)
            {
                self.drain(fx, pid, now, self.config.shutdown_timeout);
            }
        }
    }

    /// The status rows: each worker, and each slot waiting to restart.
    #[must_use]
    pub fn status(&self) -> Vec<StatusRow> {
        let mut rows: Vec<StatusRow> = self
            .workers
            .iter()
            .map(|(&pid, w)| StatusRow {
                slot: w.slot,
                pid: Some(pid),
                phase: Some(w.phase()),
                started: Some(w.started),
                restarts: self.slots.get(w.slot as usize).map_or(0, |s| s.restarts),
            })
            .collect();
        for (slot, entry) in (0u32..).zip(&self.slots) {
            if entry.serving.is_none() && entry.starting.is_none() {
                rows.push(StatusRow {
                    slot,
                    pid: None,
                    phase: entry.failed.then_some(Phase::Failed),
                    started: None,
                    restarts: entry.restarts,
                });
            }
        }
        rows.sort_by_key(|r| (r.slot, r.started));
        rows
    }

    /// The workers starting or serving, with their slots: those that take messages.
    #[must_use]
    pub fn live_workers(&self) -> Vec<(u32, Pid)> {
        self.workers
            .iter()
            .filter(|(_, w)| matches!(w.state, State::Starting { .. } | State::Serving { .. }))
            .map(|(&pid, w)| (w.slot, pid))
            .collect()
    }

    /// The pid serving `slot`, if any.
    #[must_use]
    pub fn serving(&self, slot: u32) -> Option<Pid> {
        self.slots.get(slot as usize).and_then(|s| s.serving)
    }

    /// Whether a reload is under way.
    #[must_use]
    pub fn reloading(&self) -> bool {
        self.reload.is_some()
    }

    fn check_slot(&self, slot: u32) -> Result<(), PoolError> {
        if slot < self.slot_count() {
            Ok(())
        } else {
            Err(PoolError::UnknownSlot {
                slot,
                last: self.slot_count().saturating_sub(1),
            })
        }
    }

    fn start(
        &mut self,
        fx: &mut impl Effects,
        slot: u32,
        now: Instant,
    ) -> Result<(), SupervisorError> {
        let pid = fx.start(slot)?;
        let entry = &mut self.slots[slot as usize];
        let replacing = entry.serving.is_some();
        if entry.started_once && !replacing {
            entry.restarts += 1;
        }
        entry.started_once = true;
        entry.restart_at = None;
        entry.starting = Some(pid);
        info!(slot, pid = pid.as_raw(), "worker started");
        // A replacement must prove it does not crash at once before it takes over.
        let uptime_met = if replacing {
            now + self.config.restart.min_uptime
        } else {
            now
        };
        let (ready_at, ready_by, probing) = match self.config.readiness {
            #[cfg(test)]
            Readiness::Started => (Some(uptime_met), None, false),
            Readiness::Accepts { timeout } => (Some(uptime_met), Some(now + timeout), true),
            Readiness::Notified { timeout } => (None, Some(now + timeout), false),
        };
        self.workers.insert(
            pid,
            Worker {
                slot,
                started: now,
                state: State::Starting {
                    ready_at,
                    ready_by,
                    probing,
                },
                exec_failure: None,
            },
        );
        if probing {
            fx.probe(slot, pid);
        } else if ready_at.is_some_and(|at| at <= now) {
            self.serve(fx, pid, now);
        }
        Ok(())
    }

    /// Schedules another start of a slot whose worker could not be started (an unstable start),
    /// or gives the slot up. Only slots without a serving worker get here: a replacement's
    /// failed start fails its reload instead ([`Pool::advance_reload`]).
    fn retry_later(
        &mut self,
        fx: &mut impl Effects,
        slot: u32,
        err: &SupervisorError,
        now: Instant,
    ) {
        let entry = &mut self.slots[slot as usize];
        match entry.backoff.on_exit(Duration::ZERO, &self.config.restart) {
            Next::RestartAfter(delay) => {
                error!(slot, error = %err, unstable_starts = entry.backoff.unstable_starts(),
                       delay_ms = delay.as_millis(), "could not start worker; retrying with backoff");
                entry.restart_at = Some(now + delay);
            }
            Next::GiveUp => self.give_up(fx, slot, None, false, err.to_string(), now),
        }
    }

    /// `slot` had too many unstable starts in a row: it starts no more workers. If no worker of
    /// the pool ever had a stable start, the command cannot start and the pool stops.
    fn give_up(
        &mut self,
        fx: &mut impl Effects,
        slot: u32,
        pid: Option<Pid>,
        started: bool,
        last: String,
        now: Instant,
    ) {
        let entry = &mut self.slots[slot as usize];
        entry.failed = true;
        entry.restart_at = None;
        let unstable_starts = entry.backoff.unstable_starts();
        let min_uptime = self.config.restart.min_uptime;
        let stable_now = self.workers.values().any(|w| {
            matches!(w.state, State::Serving { since } if now.saturating_duration_since(since) >= min_uptime)
        });
        let pool_fails = !(self.stable_once || stable_now);
        let serving = self.slots.iter().filter(|s| s.serving.is_some()).count();
        self.gave_up.push(GaveUp {
            slot,
            pid,
            started,
            last,
            unstable_starts,
            pool_fails,
            serving: u32::try_from(serving).unwrap_or(u32::MAX),
            slots: self.slot_count(),
        });
        if pool_fails {
            self.stop(fx, now);
        }
    }

    /// A slot that gave up starts afresh, with a new count of unstable starts.
    fn revive(&mut self, slot: u32, now: Instant) {
        let Some(entry) = self.slots.get_mut(slot as usize) else {
            return;
        };
        if entry.failed {
            entry.failed = false;
            entry.backoff = Backoff::default();
            entry.restart_at = Some(now);
            info!(slot, "slot had given up; starting it afresh");
        }
    }

    /// A starting worker is ready: its socket takes the slot's place in the selection, and the
    /// worker it replaces (if any) drains.
    fn serve(&mut self, fx: &mut impl Effects, pid: Pid, now: Instant) {
        let Some(worker) = self.workers.get_mut(&pid) else {
            return;
        };
        let slot = worker.slot;
        if !fx.serve(slot, pid) {
            // Its socket is not in the selection, so it cannot replace anyone: it ends as a
            // start that never became ready (a reload fails, the old worker serves on, and the
            // slot restarts it like any failed start).
            worker.state = State::Starting {
                ready_at: None,
                ready_by: None,
                probing: false,
            };
            error!(
                slot,
                pid = pid.as_raw(),
                "worker is ready, but its socket could not join the selection; killing it"
            );
            fx.signal(pid, Signal::SIGKILL);
            return;
        }
        worker.state = State::Serving { since: now };
        let Some(entry) = self.slots.get_mut(slot as usize) else {
            return;
        };
        entry.starting = None;
        if !entry.member {
            entry.member = true;
            fx.slot_added(slot);
        }
        let replaced = entry.serving.replace(pid);
        if let Some(reload) = &mut self.reload
            && reload.in_flight.get(&slot) == Some(&pid)
        {
            reload.in_flight.remove(&slot);
            reload.replaced += 1;
        }
        match replaced {
            Some(old) => {
                info!(
                    slot,
                    pid = pid.as_raw(),
                    old_pid = old.as_raw(),
                    "worker ready; replacing the old one, which drains"
                );
                self.drain(fx, old, now, self.config.drain_timeout);
            }
            None => info!(slot, pid = pid.as_raw(), "worker ready"),
        }
    }

    /// Takes `pid` out of service: it drains for at most `timeout`. A worker that knows how to
    /// drain (or that never served) gets SIGTERM at once; a COMMAND once its socket has nothing
    /// queued or open, or at half the timeout. SIGKILL at the timeout.
    fn drain(&mut self, fx: &mut impl Effects, pid: Pid, now: Instant, timeout: Duration) {
        let Some(worker) = self.workers.get_mut(&pid) else {
            return;
        };
        if let State::Serving { since } = worker.state {
            self.stable_once |=
                now.saturating_duration_since(since) >= self.config.restart.min_uptime;
        }
        let at_once = matches!(worker.state, State::Starting { .. })
            || self.config.drain == DrainStyle::SignalAtOnce
            || fx.drained(pid);
        worker.state = State::Draining {
            term_by: (!at_once).then(|| now + timeout / 2),
            kill_at: now + timeout,
        };
        fx.tell_draining(pid);
        if at_once {
            fx.signal(pid, Signal::SIGTERM);
        }
    }

    /// Starts the next replacements of the running reload, or ends it.
    fn advance_reload(&mut self, fx: &mut impl Effects, now: Instant) {
        let Some(mut reload) = self.reload.take() else {
            return;
        };
        while reload.failure.is_none()
            && u32::try_from(reload.in_flight.len()).unwrap_or(u32::MAX)
                < self.config.reload_batch.max(1)
            && let Some(slot) = reload.pending.pop_front()
        {
            let Some(entry) = self.slots.get(slot as usize) else {
                continue;
            };
            // A slot without a serving worker is already restarting with the new code.
            if entry.serving.is_none() || entry.starting.is_some() {
                continue;
            }
            match self.start(fx, slot, now) {
                Ok(()) => {
                    if let Some(pid) = self.slots[slot as usize].starting {
                        reload.in_flight.insert(slot, pid);
                    } else {
                        reload.replaced += 1;
                    }
                }
                Err(err) => {
                    error!(slot, error = %err, "could not start the replacement; the old worker keeps serving");
                    reload.failure = Some(format!(
                        "could not start the replacement for slot {slot}: {err}"
                    ));
                }
            }
        }
        if reload.in_flight.is_empty() && (reload.pending.is_empty() || reload.failure.is_some()) {
            self.finish_reload(reload);
        } else {
            self.reload = Some(reload);
        }
    }

    fn finish_reload(&mut self, reload: Reload) {
        match &reload.failure {
            None => info!(replaced = reload.replaced, "reload finished"),
            Some(reason) => error!(replaced = reload.replaced, reason = %reason, "reload failed"),
        }
        self.outcomes.push(ReloadOutcome {
            replaced: reload.replaced,
            failure: reload.failure,
        });
    }

    /// A second stop: SIGKILL to every worker still there.
    fn kill_all(&mut self, fx: &mut impl Effects, now: Instant) {
        for (&pid, worker) in &mut self.workers {
            if !matches!(worker.state, State::Killed) {
                warn!(
                    slot = worker.slot,
                    pid = pid.as_raw(),
                    "worker did not stop in time; killing it"
                );
                worker.state = State::Killed;
                fx.signal(pid, Signal::SIGKILL);
                self.killed.push(pid);
            }
        }
        if let Some(shutdown) = &mut self.shutdown {
            shutdown.give_up_at = Some(now + REAP_AFTER_KILL);
        }
    }
}

/// How a worker ended, as a person reads it: `exit code 1`, `killed by SIGKILL`, or why its exec
/// failed.
#[derive(Debug)]
pub enum ExitDescription {
    Status(WaitStatus),
    /// Its exec failed, for this reason: it never ran its program.
    NotStarted(String),
}

impl ExitDescription {
    /// Whether the worker ran its program.
    #[must_use]
    pub fn started(&self) -> bool {
        matches!(self, Self::Status(_))
    }
}

impl fmt::Display for ExitDescription {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Status(WaitStatus::Exited(_, code)) => write!(f, "exit code {code}"),
            Self::Status(WaitStatus::Signaled(_, signal, _)) => write!(f, "killed by {signal}"),
            Self::Status(other) => write!(f, "{other:?}"),
            Self::NotStarted(reason) => f.write_str(reason),
        }
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeSet;

    use super::*;

    #[derive(Debug, Clone, Copy, PartialEq, Eq)]
    enum Call {
        Start(u32, Pid),
        Serve(u32, Pid),
        Unserve(u32),
        Probe(u32, Pid),
        Added(u32),
        Removed(u32),
        Signal(Pid, Signal),
        Forget(Pid),
    }

    /// Records every effect; pids count up from 100.
    #[derive(Debug, Default)]
    struct Fake {
        calls: Vec<Call>,
        last_pid: i32,
        drained: BTreeSet<Pid>,
        fail_starts: bool,
        fail_serves: bool,
    }

    impl Fake {
        fn take(&mut self) -> Vec<Call> {
            std::mem::take(&mut self.calls)
        }
    }

    impl Effects for Fake {
        fn start(&mut self, slot: u32) -> Result<Pid, SupervisorError> {
            if self.fail_starts {
                return Err(SupervisorError::Os {
                    op: "fork",
                    source: std::io::Error::from_raw_os_error(libc::EAGAIN),
                });
            }
            self.last_pid += 1;
            let pid = Pid::from_raw(100 + self.last_pid);
            self.calls.push(Call::Start(slot, pid));
            Ok(pid)
        }
        fn serve(&mut self, slot: u32, pid: Pid) -> bool {
            self.calls.push(Call::Serve(slot, pid));
            !self.fail_serves
        }
        fn unserve(&mut self, slot: u32) {
            self.calls.push(Call::Unserve(slot));
        }
        fn probe(&mut self, slot: u32, pid: Pid) {
            self.calls.push(Call::Probe(slot, pid));
        }
        fn slot_added(&mut self, slot: u32) {
            self.calls.push(Call::Added(slot));
        }
        fn slot_removed(&mut self, slot: u32) {
            self.calls.push(Call::Removed(slot));
        }
        fn tell_draining(&mut self, _pid: Pid) {}
        fn signal(&mut self, pid: Pid, signal: Signal) {
            self.calls.push(Call::Signal(pid, signal));
        }
        fn drained(&self, pid: Pid) -> bool {
            self.drained.contains(&pid)
        }
        fn forget(&mut self, pid: Pid) {
            self.calls.push(Call::Forget(pid));
        }
    }

    const READY_TIMEOUT: Duration = Duration::from_secs(30);
    const DRAIN: Duration = Duration::from_secs(20);
    const SHUTDOWN: Duration = Duration::from_secs(10);

    fn config(readiness: Readiness, drain: DrainStyle) -> PoolConfig {
        PoolConfig {
            readiness,
            restart: RestartPolicy::default(),
            drain,
            drain_timeout: DRAIN,
            shutdown_timeout: SHUTDOWN,
            reload_batch: 1,
        }
    }

    fn notified() -> Readiness {
        Readiness::Notified {
            timeout: READY_TIMEOUT,
        }
    }

    fn pid(n: i32) -> Pid {
        Pid::from_raw(100 + n)
    }

    fn exit(n: i32, code: i32) -> WaitStatus {
        WaitStatus::Exited(pid(n), code)
    }

    /// A pool of `slots` built-in workers, all started and ready; the calls so far are dropped.
    fn serving_pool(slots: u32, t0: Instant) -> (Pool, Fake) {
        let mut fx = Fake::default();
        let mut pool = Pool::new(config(notified(), DrainStyle::SignalAtOnce), slots, t0);
        pool.start_all(&mut fx, t0).unwrap();
        for n in 1..=i32::try_from(slots).unwrap() {
            pool.notified_ready(&mut fx, pid(n).as_raw(), None, t0);
        }
        assert!(pool.newly_all_serving());
        fx.take();
        (pool, fx)
    }

    fn phases(pool: &Pool) -> Vec<(u32, Option<i32>, Option<Phase>)> {
        pool.status()
            .iter()
            .map(|r| (r.slot, r.pid.map(Pid::as_raw), r.phase))
            .collect()
    }

    #[test]
    fn a_notified_worker_serves_only_once_ready() {
        let t0 = Instant::now();
        let mut fx = Fake::default();
        let mut pool = Pool::new(config(notified(), DrainStyle::SignalAtOnce), 2, t0);
        pool.start_all(&mut fx, t0).unwrap();
        assert_eq!(fx.take(), [Call::Start(0, pid(1)), Call::Start(1, pid(2))]);
        assert!(!pool.newly_all_serving());
        assert_eq!(pool.next_deadline(t0), Some(t0 + READY_TIMEOUT));
        pool.notified_ready(&mut fx, pid(2).as_raw(), None, t0);
        assert_eq!(fx.take(), [Call::Serve(1, pid(2))]);
        // READY=1 from a process in the worker's group counts; from a stranger, not.
        pool.notified_ready(&mut fx, 999, None, t0);
        assert!(fx.take().is_empty());
        pool.notified_ready(&mut fx, 555, Some(pid(1).as_raw()), t0);
        assert_eq!(fx.take(), [Call::Serve(0, pid(1))]);
        assert!(pool.newly_all_serving());
        assert!(!pool.newly_all_serving(), "announced once");
        assert_eq!(pool.next_deadline(t0), None);
    }

    #[test]
    fn a_started_worker_serves_at_once() {
        let t0 = Instant::now();
        let mut fx = Fake::default();
        let mut pool = Pool::new(config(Readiness::Started, DrainStyle::WhenDrained), 1, t0);
        pool.start_all(&mut fx, t0).unwrap();
        assert_eq!(fx.take(), [Call::Start(0, pid(1)), Call::Serve(0, pid(1))]);
    }

    #[test]
    fn a_replacement_whose_socket_cannot_join_the_selection_fails_the_reload() {
        let t0 = Instant::now();
        let mut fx = Fake::default();
        let mut pool = Pool::new(config(notified(), DrainStyle::SignalAtOnce), 1, t0);
        pool.start_all(&mut fx, t0).unwrap();
        pool.notified_ready(&mut fx, pid(1).as_raw(), None, t0);
        fx.take();
        assert_eq!(pool.reload(&mut fx, None, t0), Ok(1));
        assert_eq!(fx.take(), [Call::Start(0, pid(2))]);
        fx.fail_serves = true;
        pool.notified_ready(&mut fx, pid(2).as_raw(), None, t0);
        assert_eq!(
            fx.take(),
            [
                Call::Serve(0, pid(2)),
                Call::Signal(pid(2), Signal::SIGKILL)
            ],
            "the old worker is not drained"
        );
        assert_eq!(pool.serving(0), Some(pid(1)));
        pool.exited(
            &mut fx,
            pid(2),
            WaitStatus::Signaled(pid(2), Signal::SIGKILL, false),
            t0,
        );
        let outcome = pool.take_outcomes();
        assert_eq!(outcome.len(), 1, "{outcome:?}");
        assert!(outcome[0].failure.is_some(), "{outcome:?}");
        assert_eq!(pool.serving(0), Some(pid(1)), "the old worker serves on");
    }

    /// A one-slot pool whose worker misses its readiness deadline: it is killed, a report of
    /// readiness that comes after (`too_late`) changes nothing, and it exits. Returns the pool,
    /// its effects and the moment of the kill.
    fn killed_at_the_ready_timeout(
        readiness: Readiness,
        drain: DrainStyle,
        too_late: impl FnOnce(&mut Pool, &mut Fake, Instant),
    ) -> (Pool, Fake, Instant) {
        let t0 = Instant::now();
        let mut fx = Fake::default();
        let mut pool = Pool::new(config(readiness, drain), 1, t0);
        pool.start_all(&mut fx, t0).unwrap();
        fx.take();
        let late = t0 + READY_TIMEOUT;
        pool.tick(&mut fx, late);
        assert_eq!(fx.take(), [Call::Signal(pid(1), Signal::SIGKILL)]);
        too_late(&mut pool, &mut fx, late);
        assert!(fx.take().is_empty(), "a report after the kill is ignored");
        pool.exited(
            &mut fx,
            pid(1),
            WaitStatus::Signaled(pid(1), Signal::SIGKILL, false),
            late,
        );
        assert_eq!(fx.take(), [Call::Forget(pid(1))]);
        (pool, fx, late)
    }

    #[test]
    fn a_late_worker_is_killed_restarted_with_backoff_and_its_ready_ignored() {
        let (mut pool, mut fx, late) =
            killed_at_the_ready_timeout(notified(), DrainStyle::SignalAtOnce, |pool, fx, late| {
                pool.notified_ready(fx, pid(1).as_raw(), None, late)
            });
        let first_delay = RestartPolicy::default().first_delay;
        assert_eq!(pool.next_deadline(late), Some(late + first_delay));
        pool.tick(&mut fx, late + first_delay);
        assert_eq!(fx.take(), [Call::Start(0, pid(2))]);
        assert_eq!(pool.status()[0].restarts, 1);
    }

    #[test]
    fn a_crashed_worker_leaves_the_selection_and_restarts() {
        let t0 = Instant::now();
        let (mut pool, mut fx) = serving_pool(2, t0);
        let later = t0 + Duration::from_secs(60);
        pool.exited(&mut fx, pid(1), exit(1, 1), later);
        assert_eq!(fx.take(), [Call::Forget(pid(1)), Call::Unserve(0)]);
        assert_eq!(phases(&pool)[0], (0, None, None));
        // It ran a minute, so the restart is immediate.
        pool.tick(&mut fx, later);
        assert_eq!(fx.take(), [Call::Start(0, pid(3))]);
        // An exit of an unknown pid changes nothing.
        pool.exited(&mut fx, pid(50), exit(50, 0), later);
        assert!(fx.take().is_empty());
    }

    #[test]
    fn a_start_that_fails_is_retried_with_backoff() {
        let t0 = Instant::now();
        let mut fx = Fake {
            fail_starts: true,
            ..Fake::default()
        };
        let mut pool = Pool::new(config(notified(), DrainStyle::SignalAtOnce), 1, t0);
        pool.start_all(&mut fx, t0).unwrap();
        let first_delay = RestartPolicy::default().first_delay;
        assert_eq!(pool.next_deadline(t0), Some(t0 + first_delay));
        fx.fail_starts = false;
        pool.tick(&mut fx, t0 + first_delay);
        assert_eq!(fx.take(), [Call::Start(0, pid(1))]);
    }

    #[test]
    fn a_reload_swaps_each_slot_then_drains_the_old_worker() {
        let t0 = Instant::now();
        let (mut pool, mut fx) = serving_pool(2, t0);
        assert_eq!(pool.reload(&mut fx, None, t0), Ok(2));
        assert_eq!(fx.take(), [Call::Start(0, pid(3))], "one slot at a time");
        assert_eq!(
            pool.reload(&mut fx, None, t0),
            Err(PoolError::ReloadRunning { done: 0, total: 2 })
        );
        // The old worker serves until its replacement is ready.
        assert_eq!(pool.serving(0), Some(pid(1)));
        pool.notified_ready(&mut fx, pid(3).as_raw(), None, t0);
        assert_eq!(
            fx.take(),
            [
                Call::Serve(0, pid(3)),
                Call::Signal(pid(1), Signal::SIGTERM),
                Call::Start(1, pid(4)),
            ]
        );
        // The old worker's exit does not touch the slot it left.
        pool.exited(&mut fx, pid(1), exit(1, 0), t0);
        assert_eq!(fx.take(), [Call::Forget(pid(1))]);
        pool.notified_ready(&mut fx, pid(4).as_raw(), None, t0);
        assert_eq!(
            fx.take(),
            [
                Call::Serve(1, pid(4)),
                Call::Signal(pid(2), Signal::SIGTERM)
            ]
        );
        assert_eq!(
            pool.take_outcomes(),
            [ReloadOutcome {
                replaced: 2,
                failure: None
            }]
        );
        assert_eq!(
            phases(&pool),
            [
                (0, Some(103), Some(Phase::Serving)),
                (1, Some(102), Some(Phase::Draining)),
                (1, Some(104), Some(Phase::Serving)),
            ]
        );
        // A worker that does not finish draining is killed at the drain timeout.
        pool.tick(&mut fx, t0 + DRAIN);
        assert_eq!(fx.take(), [Call::Signal(pid(2), Signal::SIGKILL)]);
        assert!(
            pool.killed().is_empty(),
            "a drain kill is not a shutdown kill"
        );
    }

    #[test]
    fn a_reload_batch_replaces_several_slots_at_once() {
        let t0 = Instant::now();
        let mut fx = Fake::default();
        let mut cfg = config(notified(), DrainStyle::SignalAtOnce);
        cfg.reload_batch = 2;
        let mut pool = Pool::new(cfg, 3, t0);
        pool.start_all(&mut fx, t0).unwrap();
        for n in 1..=3 {
            pool.notified_ready(&mut fx, pid(n).as_raw(), None, t0);
        }
        fx.take();
        pool.reload(&mut fx, None, t0).unwrap();
        assert_eq!(fx.take(), [Call::Start(0, pid(4)), Call::Start(1, pid(5))]);
    }

    #[test]
    fn a_replacement_that_fails_stops_the_reload_and_the_old_worker_keeps_serving() {
        let t0 = Instant::now();
        let (mut pool, mut fx) = serving_pool(2, t0);
        pool.reload(&mut fx, None, t0).unwrap();
        fx.take();
        pool.exited(&mut fx, pid(3), exit(3, 1), t0);
        assert_eq!(fx.take(), [Call::Forget(pid(3))], "no restart, no signal");
        let outcome = pool.take_outcomes();
        assert_eq!(outcome.len(), 1);
        assert_eq!(outcome[0].replaced, 0);
        assert!(outcome[0].failure.as_deref().unwrap().contains("slot 0"));
        assert_eq!(pool.serving(0), Some(pid(1)));
        assert!(!pool.reloading());
        // A replacement killed for being late fails it the same way.
        pool.reload(&mut fx, Some(1), t0).unwrap();
        assert_eq!(fx.take(), [Call::Start(1, pid(4))]);
        pool.tick(&mut fx, t0 + READY_TIMEOUT);
        assert_eq!(fx.take(), [Call::Signal(pid(4), Signal::SIGKILL)]);
        pool.exited(
            &mut fx,
            pid(4),
            WaitStatus::Signaled(pid(4), Signal::SIGKILL, false),
            t0 + READY_TIMEOUT,
        );
        assert!(pool.take_outcomes()[0].failure.is_some());
        assert_eq!(pool.serving(1), Some(pid(2)));
    }

    #[test]
    fn a_replacement_that_cannot_be_started_fails_the_reload() {
        let t0 = Instant::now();
        let (mut pool, mut fx) = serving_pool(2, t0);
        fx.fail_starts = true;
        assert_eq!(pool.reload(&mut fx, None, t0), Ok(2));
        let outcome = pool.take_outcomes();
        assert_eq!(outcome.len(), 1);
        assert!(outcome[0].failure.as_deref().unwrap().contains("slot 0"));
        assert!(fx.take().is_empty(), "no signal, nothing restarted");
        assert_eq!(
            (pool.serving(0), pool.serving(1)),
            (Some(pid(1)), Some(pid(2)))
        );
        assert_eq!(pool.next_deadline(t0), None);
    }

    #[test]
    fn reload_refusals() {
        let t0 = Instant::now();
        let (mut pool, mut fx) = serving_pool(2, t0);
        assert_eq!(
            pool.reload(&mut fx, Some(2), t0),
            Err(PoolError::UnknownSlot { slot: 2, last: 1 })
        );
        pool.stop(&mut fx, t0);
        assert_eq!(pool.reload(&mut fx, None, t0), Err(PoolError::ShuttingDown));
        assert_eq!(pool.scale(&mut fx, 3, t0), Err(PoolError::ShuttingDown));
    }

    #[test]
    fn a_command_replacement_must_stay_up_before_it_takes_over() {
        let t0 = Instant::now();
        let mut fx = Fake::default();
        let mut pool = Pool::new(config(Readiness::Started, DrainStyle::WhenDrained), 1, t0);
        pool.start_all(&mut fx, t0).unwrap();
        fx.take();
        pool.reload(&mut fx, None, t0).unwrap();
        assert_eq!(fx.take(), [Call::Start(0, pid(2))]);
        let min_uptime = RestartPolicy::default().min_uptime;
        assert_eq!(pool.next_deadline(t0), Some(t0 + min_uptime));
        let t1 = t0 + min_uptime;
        pool.tick(&mut fx, t1);
        // The old COMMAND has connections open: no SIGTERM yet.
        assert_eq!(fx.take(), [Call::Serve(0, pid(2))]);
        assert_eq!(pool.next_deadline(t1), Some(t1 + DRAIN_POLL));
        fx.drained.insert(pid(1));
        pool.tick(&mut fx, t1 + DRAIN_POLL);
        assert_eq!(fx.take(), [Call::Signal(pid(1), Signal::SIGTERM)]);
    }

    fn probed() -> Readiness {
        Readiness::Accepts {
            timeout: READY_TIMEOUT,
        }
    }

    #[test]
    fn a_probed_command_serves_only_once_it_accepted_and_the_pool_is_ready_then() {
        let t0 = Instant::now();
        let mut fx = Fake::default();
        let mut pool = Pool::new(config(probed(), DrainStyle::WhenDrained), 2, t0);
        pool.start_all(&mut fx, t0).unwrap();
        assert_eq!(
            fx.take(),
            [
                Call::Start(0, pid(1)),
                Call::Probe(0, pid(1)),
                Call::Start(1, pid(2)),
                Call::Probe(1, pid(2)),
            ]
        );
        // Nothing is due but the probe's deadline; time alone serves nobody.
        assert_eq!(pool.next_deadline(t0), Some(t0 + READY_TIMEOUT));
        let t1 = t0 + Duration::from_secs(3);
        pool.tick(&mut fx, t1);
        assert!(fx.take().is_empty());
        assert!(!pool.newly_all_serving());
        // READY=1 means nothing without --wait-ready.
        pool.notified_ready(&mut fx, pid(1).as_raw(), None, t1);
        assert!(fx.take().is_empty());
        pool.accepted(&mut fx, pid(1), t1);
        assert_eq!(fx.take(), [Call::Serve(0, pid(1))]);
        assert!(!pool.newly_all_serving(), "slot 1 does not serve yet");
        pool.accepted(&mut fx, pid(2), t1);
        assert_eq!(fx.take(), [Call::Serve(1, pid(2))]);
        assert!(pool.newly_all_serving());
        // A second report changes nothing.
        pool.accepted(&mut fx, pid(2), t1);
        assert!(fx.take().is_empty());
        assert_eq!(pool.next_deadline(t1), None);
    }

    #[test]
    fn a_probed_command_that_never_accepts_is_killed_at_its_timeout_and_restarted() {
        // Accepting after the kill is too late.
        let (mut pool, mut fx, late) =
            killed_at_the_ready_timeout(probed(), DrainStyle::WhenDrained, |pool, fx, late| {
                pool.accepted(fx, pid(1), late);
            });
        let restart = pool.next_deadline(late).expect("a restart");
        pool.tick(&mut fx, restart);
        assert_eq!(fx.take(), [Call::Start(0, pid(2)), Call::Probe(0, pid(2))]);
        assert!(!pool.newly_all_serving());
    }

    #[test]
    fn a_probed_command_that_dies_at_start_never_makes_the_pool_ready_and_it_stops() {
        let t0 = Instant::now();
        let mut fx = Fake::default();
        let mut pool = pool_giving_up(probed(), 1, 3, &mut fx, t0);
        let mut now = t0;
        let mut worker = pid(1);
        for _ in 0..10 {
            now += Duration::from_millis(10);
            pool.exited(&mut fx, worker, WaitStatus::Exited(worker, 1), now);
            assert!(!pool.newly_all_serving());
            if pool.stopping() {
                break;
            }
            now = pool.next_deadline(now).expect("a restart is due");
            pool.tick(&mut fx, now);
            let calls = fx.take();
            assert!(
                !calls.iter().any(|c| matches!(c, Call::Serve(..))),
                "a worker that never accepted serves: {calls:?}"
            );
            worker = calls
                .iter()
                .rev()
                .find_map(|c| match c {
                    Call::Start(_, pid) => Some(*pid),
                    _ => None,
                })
                .expect("restarted");
        }
        assert!(pool.stopping(), "the pool did not give up");
        let gave_up = pool.take_gave_up();
        assert!(gave_up.iter().any(|g| g.pool_fails), "{gave_up:?}");
        assert!(!pool.newly_all_serving());
    }

    #[test]
    fn a_probed_replacement_that_accepted_still_stays_up_min_uptime_before_it_takes_over() {
        let t0 = Instant::now();
        let mut fx = Fake::default();
        let mut pool = Pool::new(config(probed(), DrainStyle::WhenDrained), 1, t0);
        pool.start_all(&mut fx, t0).unwrap();
        pool.accepted(&mut fx, pid(1), t0);
        assert!(pool.newly_all_serving());
        fx.take();
        pool.reload(&mut fx, None, t0).unwrap();
        assert_eq!(fx.take(), [Call::Start(0, pid(2)), Call::Probe(0, pid(2))]);
        let min_uptime = RestartPolicy::default().min_uptime;
        // Not accepted yet: min_uptime alone does not make it serve.
        pool.tick(&mut fx, t0 + min_uptime);
        assert!(fx.take().is_empty());
        assert!(pool.reloading());
        // Accepted early: it waits for min_uptime.
        let early = t0 + min_uptime / 2;
        let mut pool2 = Pool::new(config(probed(), DrainStyle::WhenDrained), 1, t0);
        let mut fx2 = Fake::default();
        pool2.start_all(&mut fx2, t0).unwrap();
        pool2.accepted(&mut fx2, pid(1), t0);
        pool2.reload(&mut fx2, None, t0).unwrap();
        fx2.take();
        pool2.accepted(&mut fx2, pid(2), early);
        assert!(fx2.take().is_empty());
        assert_eq!(pool2.next_deadline(early), Some(t0 + min_uptime));
        fx2.drained.insert(pid(1));
        pool2.tick(&mut fx2, t0 + min_uptime);
        assert_eq!(
            fx2.take(),
            [
                Call::Serve(0, pid(2)),
                Call::Signal(pid(1), Signal::SIGTERM)
            ]
        );
        assert!(!pool2.reloading());
        // The first pool's replacement accepts late: it serves at once.
        let late = t0 + 2 * min_uptime;
        fx.drained.insert(pid(1));
        pool.accepted(&mut fx, pid(2), late);
        assert_eq!(
            fx.take(),
            [
                Call::Serve(0, pid(2)),
                Call::Signal(pid(1), Signal::SIGTERM)
            ]
        );
    }

    #[test]
    fn a_pool_with_a_failed_slot_is_not_ready_until_a_reload_brings_it_back() {
        let t0 = Instant::now();
        let mut fx = Fake::default();
        let mut pool = pool_giving_up(probed(), 2, 1, &mut fx, t0);
        // Slot 1 serves for good; slot 0's command dies at once and gives up.
        let stable = t0 + Duration::from_secs(60);
        pool.accepted(&mut fx, pid(2), t0);
        pool.tick(&mut fx, stable);
        pool.exited(&mut fx, pid(1), exit(1, 1), stable);
        assert!(!pool.stopping());
        assert!(
            pool.status()
                .iter()
                .any(|r| r.slot == 0 && r.phase == Some(Phase::Failed))
        );
        assert!(!pool.newly_all_serving());
        fx.take();
        pool.reload(&mut fx, Some(0), stable).unwrap();
        pool.tick(&mut fx, stable);
        let revived = fx
            .take()
            .into_iter()
            .find_map(|c| match c {
                Call::Start(0, pid) => Some(pid),
                _ => None,
            })
            .expect("slot 0 starts afresh");
        pool.accepted(&mut fx, revived, stable);
        assert!(pool.newly_all_serving());
    }

    #[test]
    fn a_command_that_never_drains_gets_sigterm_halfway_and_sigkill_at_the_timeout() {
        let t0 = Instant::now();
        let mut fx = Fake::default();
        let mut pool = Pool::new(config(Readiness::Started, DrainStyle::WhenDrained), 1, t0);
        pool.start_all(&mut fx, t0).unwrap();
        pool.reload(&mut fx, None, t0).unwrap();
        let t1 = t0 + RestartPolicy::default().min_uptime;
        pool.tick(&mut fx, t1);
        fx.take();
        pool.tick(&mut fx, t1 + DRAIN / 2);
        assert_eq!(fx.take(), [Call::Signal(pid(1), Signal::SIGTERM)]);
        assert_eq!(pool.next_deadline(t1 + DRAIN / 2), Some(t1 + DRAIN));
        pool.tick(&mut fx, t1 + DRAIN);
        assert_eq!(fx.take(), [Call::Signal(pid(1), Signal::SIGKILL)]);
        assert_eq!(phases(&pool)[0], (0, Some(101), Some(Phase::Stopping)));
    }

    #[test]
    fn a_crashed_command_replacement_fails_the_reload() {
        let t0 = Instant::now();
        let mut fx = Fake::default();
        let mut pool = Pool::new(config(Readiness::Started, DrainStyle::WhenDrained), 1, t0);
        pool.start_all(&mut fx, t0).unwrap();
        pool.reload(&mut fx, None, t0).unwrap();
        fx.take();
        pool.exited(&mut fx, pid(2), exit(2, 1), t0 + Duration::from_millis(10));
        assert!(pool.take_outcomes()[0].failure.is_some());
        assert_eq!(pool.serving(0), Some(pid(1)));
    }

    #[test]
    fn scaling_up_joins_when_ready_and_scaling_down_drains() {
        let t0 = Instant::now();
        let (mut pool, mut fx) = serving_pool(2, t0);
        pool.scale(&mut fx, 3, t0).unwrap();
        assert_eq!(fx.take(), [Call::Start(2, pid(3))]);
        pool.notified_ready(&mut fx, pid(3).as_raw(), None, t0);
        assert_eq!(fx.take(), [Call::Serve(2, pid(3)), Call::Added(2)]);
        pool.scale(&mut fx, 1, t0).unwrap();
        assert_eq!(
            fx.take(),
            [
                Call::Removed(2),
                Call::Unserve(2),
                Call::Signal(pid(3), Signal::SIGTERM),
                Call::Removed(1),
                Call::Unserve(1),
                Call::Signal(pid(2), Signal::SIGTERM),
            ]
        );
        assert_eq!(pool.slot_count(), 1);
        // Their exits restart nothing.
        pool.exited(&mut fx, pid(3), exit(3, 0), t0);
        pool.exited(&mut fx, pid(2), exit(2, 0), t0);
        assert_eq!(fx.take(), [Call::Forget(pid(3)), Call::Forget(pid(2))]);
        assert_eq!(pool.next_deadline(t0), None);
        assert_eq!(pool.scale(&mut fx, 0, t0), Err(PoolError::BadScale(0)));
        assert_eq!(
            pool.scale(&mut fx, MAX_SLOTS + 1, t0),
            Err(PoolError::BadScale(MAX_SLOTS + 1))
        );
    }

    #[test]
    fn scaling_down_mid_reload_drops_the_removed_slots_from_it() {
        let t0 = Instant::now();
        let (mut pool, mut fx) = serving_pool(2, t0);
        pool.reload(&mut fx, None, t0).unwrap();
        pool.scale(&mut fx, 1, t0).unwrap();
        pool.notified_ready(&mut fx, pid(3).as_raw(), None, t0);
        assert!(!pool.reloading());
        assert_eq!(pool.take_outcomes()[0].replaced, 1);
    }

    #[test]
    fn a_stop_drains_everyone_and_ends_when_all_are_reaped() {
        let t0 = Instant::now();
        let (mut pool, mut fx) = serving_pool(2, t0);
        pool.reload(&mut fx, None, t0).unwrap();
        fx.take();
        pool.stop(&mut fx, t0);
        assert_eq!(
            fx.take(),
            [
                Call::Signal(pid(1), Signal::SIGTERM),
                Call::Signal(pid(2), Signal::SIGTERM),
                Call::Signal(pid(3), Signal::SIGTERM),
            ]
        );
        assert_eq!(
            pool.take_outcomes()[0].failure.as_deref(),
            Some("the pool is shutting down")
        );
        for n in 1..=3 {
            assert!(!pool.finished(t0));
            pool.exited(&mut fx, pid(n), exit(n, 0), t0);
        }
        assert!(pool.finished(t0));
        assert!(pool.killed().is_empty());
        assert_eq!(pool.next_deadline(t0), None, "nothing restarts");
    }

    #[test]
    fn a_stop_kills_who_outlives_the_timeout_and_a_second_stop_kills_at_once() {
        let t0 = Instant::now();
        let (mut pool, mut fx) = serving_pool(2, t0);
        pool.stop(&mut fx, t0);
        fx.take();
        pool.exited(&mut fx, pid(2), exit(2, 0), t0);
        pool.tick(&mut fx, t0 + SHUTDOWN);
        assert_eq!(
            fx.take(),
            [Call::Forget(pid(2)), Call::Signal(pid(1), Signal::SIGKILL)]
        );
        assert_eq!(pool.killed(), [pid(1)]);
        // Unreapable: the pool gives up on it after REAP_AFTER_KILL.
        assert!(!pool.finished(t0 + SHUTDOWN));
        assert!(pool.finished(t0 + SHUTDOWN + REAP_AFTER_KILL));

        let (mut pool, mut fx) = serving_pool(2, t0);
        pool.stop(&mut fx, t0);
        pool.stop(&mut fx, t0);
        assert_eq!(pool.killed(), [pid(1), pid(2)]);
        assert!(fx.take().ends_with(&[
            Call::Signal(pid(1), Signal::SIGKILL),
            Call::Signal(pid(2), Signal::SIGKILL)
        ]));
        pool.exited(
            &mut fx,
            pid(1),
            WaitStatus::Signaled(pid(1), Signal::SIGKILL, false),
            t0,
        );
        pool.exited(
            &mut fx,
            pid(2),
            WaitStatus::Signaled(pid(2), Signal::SIGKILL, false),
            t0,
        );
        assert!(pool.finished(t0));
    }

    #[test]
    fn a_stop_gives_up_on_a_worker_killed_before_it_that_cannot_be_reaped() {
        let t0 = Instant::now();
        let (mut pool, mut fx) = serving_pool(1, t0);
        pool.reload(&mut fx, None, t0).unwrap();
        pool.notified_ready(&mut fx, pid(2).as_raw(), None, t0);
        pool.tick(&mut fx, t0 + DRAIN);
        assert!(
            fx.take()
                .ends_with(&[Call::Signal(pid(1), Signal::SIGKILL)])
        );
        pool.stop(&mut fx, t0 + DRAIN);
        pool.exited(&mut fx, pid(2), exit(2, 0), t0 + DRAIN);
        assert!(!pool.finished(t0 + DRAIN));
        assert!(pool.finished(t0 + DRAIN + SHUTDOWN + REAP_AFTER_KILL));
    }

    #[test]
    fn a_command_stopping_gets_sigterm_once_drained() {
        let t0 = Instant::now();
        let mut fx = Fake::default();
        let mut pool = Pool::new(config(Readiness::Started, DrainStyle::WhenDrained), 1, t0);
        pool.start_all(&mut fx, t0).unwrap();
        fx.take();
        pool.stop(&mut fx, t0);
        assert!(fx.take().is_empty());
        pool.tick(&mut fx, t0 + SHUTDOWN / 2);
        assert_eq!(fx.take(), [Call::Signal(pid(1), Signal::SIGTERM)]);
    }

    /// A pool of `slots` workers whose slots give up after `max_restarts`, started on `fx`:
    /// built-in workers with `notified()`, COMMANDs with `Readiness::Started`.
    fn pool_giving_up(
        readiness: Readiness,
        slots: u32,
        max_restarts: u32,
        fx: &mut Fake,
        t0: Instant,
    ) -> Pool {
        let drain = match readiness {
            Readiness::Started | Readiness::Accepts { .. } => DrainStyle::WhenDrained,
            Readiness::Notified { .. } => DrainStyle::SignalAtOnce,
        };
        let mut cfg = config(readiness, drain);
        cfg.restart.max_restarts = max_restarts;
        let mut pool = Pool::new(cfg, slots, t0);
        pool.start_all(fx, t0).unwrap();
        pool
    }

    /// A pool of `slots` COMMAND workers without readiness, giving up after `max_restarts`;
    /// the calls so far are dropped.
    fn command_pool(slots: u32, max_restarts: u32, t0: Instant) -> (Pool, Fake) {
        let mut fx = Fake::default();
        let pool = pool_giving_up(Readiness::Started, slots, max_restarts, &mut fx, t0);
        fx.take();
        (pool, fx)
    }

    /// Makes `slot`'s worker `pid` exit right after it started, and starts the next one when
    /// its backoff is over; returns the instant of that start, or `None` if the slot gave up.
    fn crash_at_once(
        pool: &mut Pool,
        fx: &mut Fake,
        slot: u32,
        pid: Pid,
        now: Instant,
    ) -> Option<Instant> {
        pool.exited(fx, pid, WaitStatus::Exited(pid, 3), now);
        let failed = pool
            .status()
            .iter()
            .any(|r| r.slot == slot && r.phase == Some(Phase::Failed));
        if failed {
            return None;
        }
        let at = pool.next_deadline(now).expect("a restart is due");
        pool.tick(fx, at);
        Some(at)
    }

    #[test]
    fn unstable_starts_are_counted_and_the_slot_gives_up_after_max_restarts() {
        let t0 = Instant::now();
        let (mut pool, mut fx) = command_pool(2, 5, t0);
        // Slot 1 serves on for good.
        let mut now = t0;
        let mut slot0 = pid(1);
        for start in 1..=5 {
            now += Duration::from_millis(50);
            match crash_at_once(&mut pool, &mut fx, 0, slot0, now) {
                Some(at) => {
                    assert!(start < 5, "gave up too late");
                    now = at;
                    let Some(Call::Start(0, next)) =
                        fx.take().into_iter().find(|c| matches!(c, Call::Start(..)))
                    else {
                        panic!("slot 0 was not restarted");
                    };
                    slot0 = next;
                }
                None => assert_eq!(start, 5, "gave up too early"),
            }
        }
        assert_eq!(
            pool.take_gave_up(),
            [GaveUp {
                slot: 0,
                pid: Some(slot0),
                started: true,
                last: "exit code 3".to_owned(),
                unstable_starts: 5,
                // Slot 1's worker has served for more than the minimum uptime.
                pool_fails: false,
                serving: 1,
                slots: 2,
            }]
        );
        assert_eq!(
            phases(&pool),
            [
                (0, None, Some(Phase::Failed)),
                (1, Some(102), Some(Phase::Serving))
            ]
        );
        assert_eq!(
            pool.next_deadline(now),
            None,
            "a failed slot restarts no more"
        );
        assert!(!pool.stopping(), "the pool serves on with slot 1");
        assert!(pool.take_gave_up().is_empty(), "reported once");
    }

    #[test]
    fn a_stable_run_resets_the_count_of_unstable_starts() {
        let t0 = Instant::now();
        let (mut pool, mut fx) = command_pool(1, 2, t0);
        let now = crash_at_once(&mut pool, &mut fx, 0, pid(1), t0).unwrap();
        assert_eq!(fx.take().last(), Some(&Call::Serve(0, pid(2))));
        // Up for the minimum uptime: its crash is restarted at once and counts from zero.
        let later = now + RestartPolicy::default().min_uptime;
        pool.exited(&mut fx, pid(2), exit(2, 1), later);
        assert_eq!(pool.next_deadline(later), Some(later));
        pool.tick(&mut fx, later);
        let now = crash_at_once(&mut pool, &mut fx, 0, pid(3), later)
            .expect("one unstable start in a row");
        assert_eq!(now, later + RestartPolicy::default().first_delay);
        assert!(
            crash_at_once(&mut pool, &mut fx, 0, pid(4), now).is_none(),
            "two in a row"
        );
        let gave_up = pool.take_gave_up();
        assert_eq!(gave_up[0].unstable_starts, 2);
        assert!(!gave_up[0].pool_fails, "pid 2 ran stably");
    }

    #[test]
    fn a_pool_whose_workers_never_started_stably_stops_when_a_slot_gives_up() {
        let t0 = Instant::now();
        let mut fx = Fake::default();
        let mut pool = pool_giving_up(notified(), 2, 2, &mut fx, t0);
        // Slot 1's worker is ready, but for less than the minimum uptime.
        pool.notified_ready(&mut fx, pid(2).as_raw(), None, t0);
        fx.take();
        let now = crash_at_once(&mut pool, &mut fx, 0, pid(1), t0).unwrap();
        fx.take();
        assert!(crash_at_once(&mut pool, &mut fx, 0, pid(3), now).is_none());
        let gave_up = pool.take_gave_up();
        assert_eq!(gave_up.len(), 1);
        assert!(gave_up[0].pool_fails, "{gave_up:?}");
        assert!(pool.stopping());
        assert_eq!(
            fx.take(),
            [Call::Forget(pid(3)), Call::Signal(pid(2), Signal::SIGTERM)]
        );
        pool.exited(&mut fx, pid(2), exit(2, 0), now);
        assert!(pool.finished(now));
        assert!(
            pool.take_gave_up().is_empty(),
            "a stop gives up nothing more"
        );
    }

    #[test]
    fn a_worker_killed_at_its_ready_timeout_had_an_unstable_start() {
        let t0 = Instant::now();
        let mut fx = Fake::default();
        let mut pool = pool_giving_up(notified(), 1, 1, &mut fx, t0);
        pool.tick(&mut fx, t0 + READY_TIMEOUT);
        let killed = WaitStatus::Signaled(pid(1), Signal::SIGKILL, false);
        pool.exited(&mut fx, pid(1), killed, t0 + READY_TIMEOUT);
        let gave_up = pool.take_gave_up();
        assert_eq!(gave_up[0].last, "killed by SIGKILL");
        assert!(gave_up[0].pool_fails);
    }

    #[test]
    fn a_slot_that_cannot_be_started_gives_up_too() {
        let t0 = Instant::now();
        let mut fx = Fake {
            fail_starts: true,
            ..Fake::default()
        };
        let mut pool = pool_giving_up(notified(), 2, 2, &mut fx, t0);
        let retry = t0 + RestartPolicy::default().first_delay;
        assert_eq!(pool.next_deadline(t0), Some(retry));
        pool.tick(&mut fx, retry);
        let gave_up = pool.take_gave_up();
        assert_eq!(
            gave_up.len(),
            1,
            "slot 0 gives up, and the pool stops: {gave_up:?}"
        );
        assert_eq!((gave_up[0].slot, gave_up[0].pid), (0, None));
        assert!(
            gave_up[0].last.contains("fork failed"),
            "{}",
            gave_up[0].last
        );
        assert!(gave_up[0].pool_fails);
        assert!(pool.finished(retry));

        // With one attempt, the first start gives up, and no other slot is started.
        let mut pool = pool_giving_up(notified(), 2, 1, &mut fx, t0);
        assert_eq!(pool.take_gave_up().len(), 1);
        assert!(pool.finished(t0));
    }

    const EXEC_ERROR: &str = "exec of `/srv/app` failed: Exec format error (os error 8)";

    /// `pid`'s exec failed (its pipe said so) and it exited with status 127, as the child does.
    fn exec_fails(pool: &mut Pool, fx: &mut Fake, pid: Pid, now: Instant) {
        pool.exec_failed(pid, EXEC_ERROR.to_owned());
        pool.exited(fx, pid, WaitStatus::Exited(pid, 127), now);
    }

    #[test]
    fn a_failed_exec_is_an_unstable_start_told_by_its_error() {
        let t0 = Instant::now();
        let mut fx = Fake::default();
        let readiness = Readiness::Accepts {
            timeout: READY_TIMEOUT,
        };
        let mut pool = pool_giving_up(readiness, 1, 2, &mut fx, t0);
        assert_eq!(fx.take(), [Call::Start(0, pid(1)), Call::Probe(0, pid(1))]);
        exec_fails(&mut pool, &mut fx, pid(1), t0);
        assert_eq!(fx.take(), [Call::Forget(pid(1))]);
        let retry = t0 + RestartPolicy::default().first_delay;
        assert_eq!(
            pool.next_deadline(t0),
            Some(retry),
            "restarted with backoff"
        );
        pool.tick(&mut fx, retry);
        assert_eq!(fx.take(), [Call::Start(0, pid(2)), Call::Probe(0, pid(2))]);
        exec_fails(&mut pool, &mut fx, pid(2), retry);
        let gave_up = pool.take_gave_up();
        assert_eq!(
            gave_up,
            [GaveUp {
                slot: 0,
                pid: Some(pid(2)),
                started: false,
                last: EXEC_ERROR.to_owned(),
                unstable_starts: 2,
                pool_fails: true,
                serving: 0,
                slots: 1,
            }]
        );
        assert!(pool.finished(retry));
    }

    #[test]
    fn an_exec_failure_reported_for_another_worker_is_ignored() {
        let t0 = Instant::now();
        let mut fx = Fake::default();
        let mut pool = pool_giving_up(notified(), 1, 1, &mut fx, t0);
        pool.exec_failed(pid(7), EXEC_ERROR.to_owned());
        pool.exited(&mut fx, pid(1), exit(1, 2), t0);
        let gave_up = pool.take_gave_up();
        assert_eq!(
            (gave_up[0].started, gave_up[0].last.as_str()),
            (true, "exit code 2")
        );
    }

    #[test]
    fn a_replacement_whose_exec_fails_fails_the_reload_with_its_error() {
        let t0 = Instant::now();
        let (mut pool, mut fx) = serving_pool(2, t0);
        assert_eq!(pool.reload(&mut fx, None, t0), Ok(2));
        assert_eq!(fx.take(), [Call::Start(0, pid(3))]);
        exec_fails(&mut pool, &mut fx, pid(3), t0);
        let outcome = pool.take_outcomes();
        assert_eq!(
            outcome,
            [ReloadOutcome {
                replaced: 0,
                failure: Some(format!(
                    "could not start the replacement for slot 0 (pid {}): {EXEC_ERROR}",
                    pid(3)
                )),
            }]
        );
        assert_eq!(fx.take(), [Call::Forget(pid(3))], "slot 1 is not replaced");
        assert_eq!(pool.serving(0), Some(pid(1)), "the old worker serves on");
        assert!(pool.take_gave_up().is_empty());
        assert_eq!(pool.next_deadline(t0), None, "nothing restarts");
    }

    #[test]
    fn a_reload_starts_a_failed_slot_afresh_and_a_drain_too() {
        let t0 = Instant::now();
        let (mut pool, mut fx) = command_pool(2, 1, t0);
        let later = give_up_after_a_stable_run(&mut pool, &mut fx, 0, t0);
        assert_eq!(pool.status()[0].phase, Some(Phase::Failed));
        assert_eq!(pool.reload(&mut fx, None, later), Ok(2));
        // Slot 1 is replaced as usual; slot 0 starts afresh.
        assert_eq!(fx.take(), [Call::Start(1, pid(4))]);
        assert_eq!(pool.next_deadline(later), Some(later));
        pool.tick(&mut fx, later);
        assert_eq!(fx.take(), [Call::Start(0, pid(5)), Call::Serve(0, pid(5))]);
        assert_eq!(pool.serving(0), Some(pid(5)));
        // It fails again at once, while slot 1's replacement serves: a drain of the slot starts
        // it afresh as well.
        pool.exited(
            &mut fx,
            pid(5),
            exit(5, 3),
            later + Duration::from_millis(10),
        );
        assert_eq!(pool.take_gave_up().len(), 1);
        let ready = later + RestartPolicy::default().min_uptime;
        pool.tick(&mut fx, ready);
        let outcome = pool.take_outcomes();
        assert_eq!(outcome[0].replaced, 1, "{outcome:?}");
        fx.take();
        assert_eq!(pool.reload(&mut fx, Some(0), ready), Ok(1));
        assert_eq!(
            pool.take_outcomes()[0].replaced,
            0,
            "nothing to replace in slot 0"
        );
        pool.tick(&mut fx, ready);
        assert_eq!(fx.take(), [Call::Start(0, pid(6)), Call::Serve(0, pid(6))]);
        assert_eq!(pool.status()[0].restarts, 3);
    }

    /// `slot`'s first worker runs a minute and crashes; its restart crashes at once, and the
    /// slot gives up (`max_restarts` 1). Returns the instant, with the calls so far dropped.
    fn give_up_after_a_stable_run(
        pool: &mut Pool,
        fx: &mut Fake,
        slot: u32,
        t0: Instant,
    ) -> Instant {
        let later = t0 + Duration::from_secs(60);
        let first = pool.serving(slot).unwrap();
        pool.exited(fx, first, WaitStatus::Exited(first, 1), later);
        pool.tick(fx, later);
        let second = pool.serving(slot).unwrap();
        pool.exited(fx, second, WaitStatus::Exited(second, 3), later);
        let gave_up = pool.take_gave_up();
        assert_eq!((gave_up[0].slot, gave_up[0].pool_fails), (slot, false));
        fx.take();
        later
    }

    #[test]
    fn a_failed_replacement_does_not_count_toward_giving_up() {
        let t0 = Instant::now();
        let mut fx = Fake::default();
        let mut pool = pool_giving_up(notified(), 1, 1, &mut fx, t0);
        pool.notified_ready(&mut fx, pid(1).as_raw(), None, t0);
        for n in 2..=4 {
            pool.reload(&mut fx, None, t0).unwrap();
            pool.exited(&mut fx, pid(n), exit(n, 3), t0);
            assert!(pool.take_outcomes()[0].failure.is_some());
        }
        assert!(pool.take_gave_up().is_empty());
        assert_eq!(pool.serving(0), Some(pid(1)));
    }

    #[test]
    fn scaling_down_removes_a_failed_slot_and_scaling_up_starts_fresh_ones() {
        let t0 = Instant::now();
        let (mut pool, mut fx) = command_pool(2, 1, t0);
        let later = give_up_after_a_stable_run(&mut pool, &mut fx, 1, t0);
        pool.scale(&mut fx, 1, later).unwrap();
        assert_eq!(fx.take(), [Call::Removed(1)]);
        pool.scale(&mut fx, 2, later).unwrap();
        assert_eq!(
            fx.take(),
            [
                Call::Start(1, pid(4)),
                Call::Serve(1, pid(4)),
                Call::Added(1)
            ]
        );
    }

    #[test]
    fn exits_during_a_stop_give_nothing_up() {
        let t0 = Instant::now();
        let (mut pool, mut fx) = command_pool(2, 1, t0);
        pool.stop(&mut fx, t0);
        pool.exited(&mut fx, pid(1), exit(1, 3), t0);
        pool.exited(&mut fx, pid(2), exit(2, 3), t0);
        assert!(pool.take_gave_up().is_empty());
        assert!(pool.finished(t0));
    }

    #[test]
    fn exit_descriptions_read_plainly() {
        assert_eq!(
            ExitDescription::Status(exit(1, 3)).to_string(),
            "exit code 3"
        );
        assert_eq!(
            ExitDescription::Status(WaitStatus::Signaled(pid(1), Signal::SIGKILL, false))
                .to_string(),
            "killed by SIGKILL"
        );
    }
}
