//! The supervisor: starts one worker per slot, restarts the ones that exit (with backoff when
//! they keep failing), and stops them all on SIGINT/SIGTERM.
//!
//! One event loop on one thread, joined by signals, readiness notifications and timers (restarts,
//! readiness deadlines); later inputs (a control socket, reload requests) join the same
//! `select!`. Single-threaded on purpose: fork is only
//! safe in a process without other threads, and PR_SET_PDEATHSIG fires when the *thread* that
//! forked exits.

pub mod backoff;
pub mod spawn;

use std::{
    fmt, io,
    net::SocketAddr,
    os::fd::{AsFd, BorrowedFd},
    time::Duration,
};

use nix::{
    errno::Errno,
    sys::{
        signal::{Signal, kill, killpg},
        wait::{WaitPidFlag, WaitStatus, waitpid},
    },
    unistd::Pid,
};
use socket2::Socket;
use tokio::{
    signal::unix::{SignalKind, signal},
    time::{Instant, sleep_until},
};
use tracing::{error, info, warn};

use self::{
    backoff::{Backoff, RestartPolicy},
    spawn::{Handoff, SpawnError, WorkerProgram},
};
use crate::{
    cli::{RunArgs, SteeringMode},
    cpus,
    listener::{self, ListenError, Sharing},
    notify::{Notification, NotifySocket},
    steering::{ProgramError, Steering},
};

/// The name workers see in `LISTEN_FDNAMES`.
const FD_NAME: &str = "cluster";

/// Why the supervisor could not start or run.
#[derive(Debug, thiserror::Error)]
pub enum SupervisorError {
    #[error(transparent)]
    Listen(#[from] ListenError),
    #[error(transparent)]
    Steering(#[from] ProgramError),
    #[error(transparent)]
    Spawn(#[from] SpawnError),
    #[error("{op} failed: {source}")]
    Os {
        op: &'static str,
        #[source]
        source: io::Error,
    },
}

/// Everything `cluster run` was asked for, resolved and validated.
#[derive(Debug)]
pub struct Options {
    /// The bound address (port 0 already replaced).
    pub addr: SocketAddr,
    pub slots: u32,
    pub backlog: u32,
    pub mode: SteeringMode,
    pub shutdown_timeout: Duration,
    pub program: WorkerProgram,
    pub readiness: Readiness,
}

/// When a started worker counts as serving, and its socket joins the selection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Readiness {
    /// As soon as it has exec'd (its socket is already listening, so connections queue).
    Started,
    /// When it sends `READY=1` to `NOTIFY_SOCKET`; killed and restarted if that takes longer
    /// than the timeout.
    Notified { timeout: Duration },
}

/// `cluster run`: validates the options, sets up the steering, and supervises until stopped.
pub fn run(args: RunArgs) -> Result<(), SupervisorError> {
    let notified = Readiness::Notified {
        timeout: Duration::from_secs(args.ready_timeout),
    };
    let (program, readiness) = if args.command.is_empty() {
        (WorkerProgram::demo()?, notified)
    } else {
        let readiness = if args.wait_ready {
            notified
        } else {
            Readiness::Started
        };
        (WorkerProgram::command(&args.command)?, readiness)
    };
    let slots = args.workers.resolve(cpus::usable());
    let addr = listener::reserve(args.listen)?;
    let steering = Steering::new(args.steering, slots)?;
    let options = Options {
        addr,
        slots,
        backlog: args.backlog,
        mode: args.steering,
        shutdown_timeout: Duration::from_secs(args.shutdown_timeout),
        program,
        readiness,
    };
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|source| SupervisorError::Os {
            op: "starting the event loop",
            source,
        })?;
    runtime.block_on(async { Supervisor::new(options, steering)?.run().await })
}

/// What one slot is doing.
#[derive(Debug)]
enum SlotState {
    /// No worker; start one at this instant.
    Idle { start_at: Instant },
    /// A worker runs but has not reported ready. The supervisor holds its socket until then,
    /// to put it into the selection; `ready_by` is cleared once the worker was killed for
    /// missing it.
    Starting {
        pid: Pid,
        socket: Option<Socket>,
        ready_by: Option<Instant>,
    },
    /// A worker serves.
    Running { pid: Pid, started: Instant },
    /// Shutting down: no worker, none to start.
    Stopped,
}

impl SlotState {
    fn pid(&self) -> Option<Pid> {
        match self {
            Self::Starting { pid, .. } | Self::Running { pid, .. } => Some(*pid),
            Self::Idle { .. } | Self::Stopped => None,
        }
    }

    /// The next instant this slot needs attention at: a start, or a readiness deadline.
    fn deadline(&self) -> Option<Instant> {
        match self {
            Self::Idle { start_at } => Some(*start_at),
            Self::Starting { ready_by, .. } => *ready_by,
            Self::Running { .. } | Self::Stopped => None,
        }
    }
}

#[derive(Debug)]
struct Slot {
    state: SlotState,
    backoff: Backoff,
}

#[derive(Debug)]
struct Supervisor {
    options: Options,
    steering: Steering,
    /// The one socket of `--steering shared`; the supervisor keeps it for restarts.
    shared: Option<Socket>,
    notify: NotifySocket,
    slots: Vec<Slot>,
    policy: RestartPolicy,
    announced_ready: bool,
}

impl Supervisor {
    fn new(options: Options, steering: Steering) -> Result<Self, SupervisorError> {
        let shared = match steering.sharing() {
            Sharing::Exclusive => Some(listener::open(
                options.addr,
                options.backlog,
                Sharing::Exclusive,
            )?),
            Sharing::ReusePort => None,
        };
        let notify = NotifySocket::bind().map_err(|source| SupervisorError::Os {
            op: "binding the readiness socket (NOTIFY_SOCKET)",
            source,
        })?;
        let now = Instant::now();
        let slots = (0..options.slots)
            .map(|_| Slot {
                state: SlotState::Idle { start_at: now },
                backoff: Backoff::default(),
            })
            .collect();
        Ok(Self {
            options,
            steering,
            shared,
            notify,
            slots,
            policy: RestartPolicy::default(),
            announced_ready: false,
        })
    }

    async fn run(mut self) -> Result<(), SupervisorError> {
        let signal_stream = |kind: SignalKind, name: &'static str| {
            signal(kind).map_err(|source| SupervisorError::Os { op: name, source })
        };
        // SIGCHLD first: a worker that dies at once must not go unnoticed.
        let mut sigchld = signal_stream(SignalKind::child(), "handling SIGCHLD")?;
        let mut sigterm = signal_stream(SignalKind::terminate(), "handling SIGTERM")?;
        let mut sigint = signal_stream(SignalKind::interrupt(), "handling SIGINT")?;

        if let Err(err) = self.start_initial_workers() {
            self.stop_workers(&mut sigchld).await;
            return Err(err);
        }
        loop {
            self.announce_ready();
            let next_deadline = self.next_deadline();
            tokio::select! {
                _ = sigchld.recv() => self.reap(),
                notification = self.notify.recv() => match notification {
                    Ok(notification) => self.notified(&notification),
                    Err(err) => warn!(error = %err, "reading a readiness notification failed"),
                },
                _ = sigterm.recv() => {
                    info!("SIGTERM received; stopping workers");
                    break;
                }
                _ = sigint.recv() => {
                    info!("SIGINT received; stopping workers");
                    break;
                }
                () = sleep_until(next_deadline.unwrap_or_else(Instant::now)), if next_deadline.is_some() => {}
            }
            self.start_due_workers();
            self.kill_workers_not_ready_in_time();
        }
        self.stop_workers(&mut sigchld).await;
        self.log_counters();
        Ok(())
    }

    /// Starts every slot. A socket or attach failure here is fatal (the address or the program
    /// does not work at all); a worker that fails to exec is retried with backoff like a crash.
    fn start_initial_workers(&mut self) -> Result<(), SupervisorError> {
        for slot in 0..self.options.slots {
            match self.start_worker(slot) {
                Ok(()) => {}
                Err(err @ (SupervisorError::Listen(_) | SupervisorError::Steering(_))) => {
                    return Err(err);
                }
                Err(err) => self.schedule_retry(slot, &err),
            }
        }
        Ok(())
    }

    fn start_due_workers(&mut self) {
        let now = Instant::now();
        for slot in 0..self.options.slots {
            let due = matches!(self.slots[slot as usize].state,
                SlotState::Idle { start_at } if start_at <= now);
            if due && let Err(err) = self.start_worker(slot) {
                self.schedule_retry(slot, &err);
            }
        }
    }

    /// Opens the slot's socket (or takes the shared one) and starts the worker on it. The socket
    /// joins the selection when the worker is ready; until then the supervisor holds it. Once it
    /// is in, our copy is closed: from then on only the worker holds it, so when the worker dies
    /// the socket closes and leaves the group.
    fn start_worker(&mut self, slot: u32) -> Result<(), SupervisorError> {
        let own_socket = match &self.shared {
            Some(_) => None,
            None => {
                let socket =
                    listener::open(self.options.addr, self.options.backlog, Sharing::ReusePort)?;
                self.steering.socket_listening(socket.as_fd())?;
                Some(socket)
            }
        };
        let notify_socket = self.notify.env_value();
        let listener =
            worker_socket(own_socket.as_ref(), self.shared.as_ref()).ok_or_else(|| {
                SupervisorError::Os {
                    op: "choosing the worker socket",
                    source: io::Error::other("neither an own nor a shared socket"),
                }
            })?;
        let handoff = Handoff {
            slot,
            listener,
            fd_name: FD_NAME,
            notify_socket: &notify_socket,
        };
        let pid = spawn::spawn(&self.options.program, &handoff)?;
        info!(slot, pid = pid.as_raw(), "worker started");
        let ready_by = match self.options.readiness {
            Readiness::Started => None,
            Readiness::Notified { timeout } => Some(Instant::now() + timeout),
        };
        self.slots[slot as usize].state = SlotState::Starting {
            pid,
            socket: own_socket,
            ready_by,
        };
        if self.options.readiness == Readiness::Started {
            self.worker_ready(slot);
        }
        Ok(())
    }

    /// A notification arrived: if it is `READY=1` from a starting worker, that worker serves.
    fn notified(&mut self, notification: &Notification) {
        if !notification.ready {
            return;
        }
        let pid = Pid::from_raw(notification.pid);
        let starting = (0u32..)
            .zip(&self.slots)
            .find_map(|(slot, s)| match s.state {
                SlotState::Starting { pid: p, .. } if p == pid => Some(slot),
                _ => None,
            });
        if let Some(slot) = starting {
            self.worker_ready(slot);
        }
    }

    /// Puts a starting worker's socket into the selection and closes our copy of it.
    fn worker_ready(&mut self, slot: u32) {
        let entry = &mut self.slots[slot as usize];
        let SlotState::Starting { pid, socket, .. } = &mut entry.state else {
            return;
        };
        let (pid, own_socket) = (*pid, socket.take());
        if let Some(listener) = worker_socket(own_socket.as_ref(), self.shared.as_ref())
            && let Err(err) = self.steering.worker_serving(slot, listener)
        {
            error!(slot, pid = pid.as_raw(), error = %err, "worker runs but could not be added to the selection");
        }
        drop(own_socket);
        if self.options.readiness != Readiness::Started {
            info!(slot, pid = pid.as_raw(), "worker ready");
        }
        entry.state = SlotState::Running {
            pid,
            started: Instant::now(),
        };
    }

    /// Kills starting workers whose readiness deadline passed; their exit is handled (with
    /// backoff) when they are reaped.
    fn kill_workers_not_ready_in_time(&mut self) {
        let now = Instant::now();
        for (slot, entry) in (0u32..).zip(&mut self.slots) {
            if let SlotState::Starting { pid, ready_by, .. } = &mut entry.state
                && ready_by.is_some_and(|deadline| deadline <= now)
            {
                *ready_by = None;
                warn!(
                    slot,
                    pid = pid.as_raw(),
                    "worker did not report READY=1 in time; killing it"
                );
                signal_group(*pid, Signal::SIGKILL);
            }
        }
    }

    fn schedule_retry(&mut self, slot: u32, err: &SupervisorError) {
        let entry = &mut self.slots[slot as usize];
        let delay = entry.backoff.on_exit(Duration::ZERO, &self.policy);
        error!(slot, error = %err, failures = entry.backoff.quick_failures(),
               delay_ms = delay.as_millis(), "could not start worker; retrying with backoff");
        entry.state = SlotState::Idle {
            start_at: Instant::now() + delay,
        };
    }

    /// The earliest instant a slot needs attention at: a start or a readiness deadline.
    fn next_deadline(&self) -> Option<Instant> {
        self.slots.iter().filter_map(|s| s.state.deadline()).min()
    }

    fn announce_ready(&mut self) {
        let all_running = self
            .slots
            .iter()
            .all(|s| matches!(s.state, SlotState::Running { .. }));
        if all_running && !self.announced_ready {
            self.announced_ready = true;
            let migrate = self.steering.program().is_some_and(|p| p.migrates());
            info!(addr = %self.options.addr, workers = self.options.slots,
                  steering = %self.options.mode, migrate, "ready");
        }
    }

    /// Collects every exited child and schedules its slot's restart.
    fn reap(&mut self) {
        for (pid, status) in exited_children() {
            self.worker_exited(pid, status);
        }
    }

    fn worker_exited(&mut self, pid: Pid, status: WaitStatus) {
        let Some(slot) = self.slot_of(pid) else {
            // A child whose exec failed is reported by `spawn` and reaped here.
            return;
        };
        if let Err(err) = self.steering.worker_gone(slot) {
            error!(slot, error = %err, "could not take the slot out of the selection");
        }
        let entry = &mut self.slots[slot as usize];
        // A worker that never got ready failed to start, however long it took.
        let uptime = match entry.state {
            SlotState::Running { started, .. } => started.elapsed(),
            _ => Duration::ZERO,
        };
        let delay = entry.backoff.on_exit(uptime, &self.policy);
        let exit = ExitDescription(status);
        if delay.is_zero() {
            warn!(slot, pid = pid.as_raw(), status = %exit, uptime_ms = uptime.as_millis(),
                  "worker exited; restarting");
        } else {
            warn!(slot, pid = pid.as_raw(), status = %exit, uptime_ms = uptime.as_millis(),
                  failures = entry.backoff.quick_failures(), delay_ms = delay.as_millis(),
                  "worker keeps exiting right after start; restarting with backoff");
        }
        // Replacing a Starting state closes the socket we held for it.
        entry.state = SlotState::Idle {
            start_at: Instant::now() + delay,
        };
    }

    fn slot_of(&self, pid: Pid) -> Option<u32> {
        (0u32..)
            .zip(&self.slots)
            .find_map(|(slot, s)| (s.state.pid() == Some(pid)).then_some(slot))
    }

    fn worker_pids(&self) -> Vec<Pid> {
        self.slots.iter().filter_map(|s| s.state.pid()).collect()
    }

    /// SIGTERM to every worker's process group, then SIGKILL to those still there after the
    /// shutdown timeout. Returns when every worker has been reaped.
    async fn stop_workers(&mut self, sigchld: &mut tokio::signal::unix::Signal) {
        for slot in &mut self.slots {
            if matches!(slot.state, SlotState::Idle { .. }) {
                slot.state = SlotState::Stopped;
            }
        }
        for pid in self.worker_pids() {
            signal_group(pid, Signal::SIGTERM);
        }
        let deadline = Instant::now() + self.options.shutdown_timeout;
        while !self.worker_pids().is_empty() && Instant::now() < deadline {
            tokio::select! {
                _ = sigchld.recv() => self.reap_stopping(),
                () = sleep_until(deadline) => {}
            }
        }
        let stragglers = self.worker_pids();
        if !stragglers.is_empty() {
            warn!(
                count = stragglers.len(),
                timeout_s = self.options.shutdown_timeout.as_secs(),
                "workers did not exit after SIGTERM; killing them"
            );
            for pid in &stragglers {
                signal_group(*pid, Signal::SIGKILL);
            }
            for pid in stragglers {
                let _ = waitpid(pid, None);
                self.forget(pid);
            }
        }
        info!("all workers stopped");
    }

    /// Reaps during shutdown: no restarts.
    fn reap_stopping(&mut self) {
        for (pid, _) in exited_children() {
            self.forget(pid);
        }
    }

    fn forget(&mut self, pid: Pid) {
        if let Some(slot) = self.slot_of(pid) {
            let _ = self.steering.worker_gone(slot);
            self.slots[slot as usize].state = SlotState::Stopped;
        }
    }

    /// Logs the program's per-slot and fallback counters (the final tally of a run).
    fn log_counters(&self) {
        let Some(program) = self.steering.program() else {
            return;
        };
        for slot in 0..self.options.slots {
            match program.slot_counters(slot) {
                Ok(c) => info!(
                    slot,
                    selected = c.selected,
                    migrated = c.migrated,
                    "steering stats"
                ),
                Err(err) => warn!(slot, error = %err, "could not read steering stats"),
            }
        }
        match program.event_counters() {
            Ok(e) => info!(
                probed = e.probed,
                last_resort = e.last_resort,
                addr_unreadable = e.addr_unreadable,
                sticky_moved = e.sticky_moved,
                "steering events"
            ),
            Err(err) => warn!(error = %err, "could not read steering events"),
        }
    }
}

/// The socket a worker serves on: its own, or the pool's shared one.
fn worker_socket<'a>(
    own: Option<&'a Socket>,
    shared: Option<&'a Socket>,
) -> Option<BorrowedFd<'a>> {
    own.or(shared).map(AsFd::as_fd)
}

/// Every child that exited and was not yet reaped: waitpid(WNOHANG) until none is left.
fn exited_children() -> Vec<(Pid, WaitStatus)> {
    let mut exited = Vec::new();
    loop {
        match waitpid(None::<Pid>, Some(WaitPidFlag::WNOHANG)) {
            Ok(WaitStatus::StillAlive) | Err(Errno::ECHILD) => return exited,
            Ok(status) => exited.extend(status.pid().map(|pid| (pid, status))),
            Err(Errno::EINTR) => {}
            Err(err) => {
                error!(error = %err, "waitpid failed");
                return exited;
            }
        }
    }
}

/// Signals a worker and whatever it started (its process group); just the worker if the group
/// is not there yet.
fn signal_group(pid: Pid, signal: Signal) {
    if killpg(pid, signal).is_err() {
        let _ = kill(pid, signal);
    }
}

/// A wait status as a person reads it: `exit code 1`, `killed by SIGKILL`.
struct ExitDescription(WaitStatus);

impl fmt::Display for ExitDescription {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.0 {
            WaitStatus::Exited(_, code) => write!(f, "exit code {code}"),
            WaitStatus::Signaled(_, signal, _) => write!(f, "killed by {signal}"),
            other => write!(f, "{other:?}"),
        }
    }
}
