//! The supervisor: starts one worker per slot, restarts the ones that exit (with backoff when
//! they keep failing), logs what they print, and stops them all on SIGTERM, SIGINT or SIGQUIT.
//!
//! One event loop on one thread, joined by signals ([`signals`]), readiness notifications and
//! timers (restarts, readiness deadlines); later inputs (a control socket) join the same
//! `select!`, on one thread: PR_SET_PDEATHSIG fires when the *thread* that forked exits, so the
//! forking thread must live as long as the pool. The only other thread writes the log
//! ([`crate::telemetry`]); it starts after the handled signals are blocked, so it never takes one,
//! and a forked child makes only async-signal-safe calls before exec ([`spawn`]).

pub mod backoff;
pub mod output;
pub mod parking;
pub mod signals;
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
        signal::{SigHandler, Signal, kill, killpg},
        wait::{WaitPidFlag, WaitStatus, waitpid},
    },
    unistd::Pid,
};
use socket2::Socket;
use tokio::{
    task::JoinSet,
    time::{Instant, sleep_until},
};
use tracing::{error, info, warn};

use self::{
    backoff::{Backoff, RestartPolicy},
    output::WorkerPipes,
    parking::{Parking, ParkingError},
    signals::{Received, SignalAction, Signals},
    spawn::{Handoff, SpawnError, WorkerProgram},
};
use crate::{
    cli::{RunArgs, SteeringMode},
    cpus,
    listener::{self, ListenError, Sharing},
    notify::{Notification, NotifySocket},
    steering::{Policy, ProgramError, SocketId, Steering, enable_run_stats},
    telemetry,
};

/// The name workers see in `LISTEN_FDNAMES`.
const FD_NAME: &str = "cluster";
/// How long the supervisor waits for workers to be reaped after it sent them SIGKILL. A process
/// in uninterruptible sleep can outlast any SIGKILL; the supervisor then exits without it.
const REAP_AFTER_KILL: Duration = Duration::from_secs(5);

/// Why the supervisor could not start or run.
#[derive(Debug, thiserror::Error)]
pub enum SupervisorError {
    #[error(transparent)]
    Listen(#[from] ListenError),
    #[error(transparent)]
    Steering(#[from] ProgramError),
    #[error(transparent)]
    Spawn(#[from] SpawnError),
    #[error(transparent)]
    Parking(#[from] ParkingError),
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
    /// Capture each worker's stdout and stderr and log them line by line (not
    /// `--log-passthrough`).
    pub capture_output: bool,
    /// Measure the programs' cost (`--bpf-stats`).
    pub bpf_stats: bool,
}

/// How the pool ended, when it was asked to stop.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Stopped {
    /// Workers that had to be killed: they outlived `--shutdown-timeout` after SIGTERM, or a
    /// second stop signal cut the stop short.
    pub killed: Vec<Pid>,
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
pub fn run(args: RunArgs) -> Result<Stopped, SupervisorError> {
    // Writes to a closed pipe fail with EPIPE instead of killing the supervisor. Rust's runtime
    // already ignores SIGPIPE; this states it where it matters. Workers get the default back.
    // SIGXFSZ likewise turns a log file past `ulimit -f` into EFBIG: a dropped line.
    for ignored in [Signal::SIGPIPE, Signal::SIGXFSZ] {
        // SAFETY: SIG_IGN installs no handler code.
        unsafe { nix::sys::signal::signal(ignored, SigHandler::SigIgn) }.map_err(|e| {
            SupervisorError::Os {
                op: "ignoring SIGPIPE and SIGXFSZ",
                source: e.into(),
            }
        })?;
    }
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
    spawn::raise_file_limit().map_err(|source| SupervisorError::Os {
        op: "raising the open-file limit (RLIMIT_NOFILE)",
        source,
    })?;
    let slots = args.workers.resolve(cpus::usable());
    let addr = listener::reserve(listener::resolve(&args.listen)?)?;
    let steering = Steering::new(args.steering, slots, args.sticky_prefix)?;
    let options = Options {
        addr,
        slots,
        backlog: args.backlog,
        mode: args.steering,
        shutdown_timeout: Duration::from_secs(args.shutdown_timeout),
        program,
        readiness,
        capture_output: !args.log_passthrough,
        bpf_stats: args.bpf_stats,
    };
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|source| SupervisorError::Os {
            op: "starting the event loop",
            source,
        })?;
    runtime.block_on(async {
        // `main` already blocked the handled signals; from here they are read, none lost.
        let signals = Signals::new().map_err(|source| SupervisorError::Os {
            op: "setting up signal handling (signalfd)",
            source,
        })?;
        Supervisor::new(options, steering)?.run(signals).await
    })
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
        socket_id: Option<SocketId>,
        ready_by: Option<Instant>,
        started: Instant,
    },
    /// A worker serves; `socket_id` names its socket's counters where a program counts.
    Running {
        pid: Pid,
        started: Instant,
        socket_id: Option<SocketId>,
    },
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

    /// The phase as `status` shows it.
    fn phase(&self) -> &'static str {
        match self {
            Self::Idle { .. } => "restarting",
            Self::Starting { .. } => "starting",
            Self::Running { .. } => "serving",
            Self::Stopped => "stopped",
        }
    }

    /// The id of the current worker's socket, where a program counts its connections.
    fn socket_id(&self) -> Option<SocketId> {
        match self {
            Self::Starting { socket_id, .. } | Self::Running { socket_id, .. } => *socket_id,
            Self::Idle { .. } | Self::Stopped => None,
        }
    }

    /// When the current worker was started.
    fn started(&self) -> Option<Instant> {
        match self {
            Self::Starting { started, .. } | Self::Running { started, .. } => Some(*started),
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
    /// Workers started in this slot; all but the first were restarts.
    starts: u32,
}

#[derive(Debug)]
struct Supervisor {
    options: Options,
    steering: Steering,
    /// The one socket of `--steering shared`; the supervisor keeps it for restarts.
    shared: Option<Socket>,
    /// With a program: the socket that keeps the group alive between workers ([`parking`]).
    parking: Option<Parking>,
    notify: NotifySocket,
    slots: Vec<Slot>,
    policy: RestartPolicy,
    announced_ready: bool,
    /// The tasks logging the workers' output.
    output: JoinSet<()>,
    /// Keeps the kernel's BPF run-time stats on while the supervisor runs (`--bpf-stats`).
    run_stats: Option<std::os::fd::OwnedFd>,
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
        // The floor that selects nothing leaves every connection to the kernel's hash, which
        // would park some on the parking socket for good.
        let parking = match steering.program() {
            Some(program) if program.policy() != Policy::FloorEmpty => {
                Some(Parking::open(options.addr, options.backlog, program)?)
            }
            _ => None,
        };
        let notify = NotifySocket::bind().map_err(|source| SupervisorError::Os {
            op: "binding the readiness socket (NOTIFY_SOCKET)",
            source,
        })?;
        let run_stats = match (options.bpf_stats, steering.program()) {
            (false, _) => None,
            (true, Some(_)) => Some(enable_run_stats()?),
            (true, None) => {
                warn!(steering = %options.mode, "--bpf-stats measures the steering program, and this mode has none");
                None
            }
        };
        let now = Instant::now();
        let slots = (0..options.slots)
            .map(|_| Slot {
                state: SlotState::Idle { start_at: now },
                backoff: Backoff::default(),
                starts: 0,
            })
            .collect();
        Ok(Self {
            options,
            steering,
            shared,
            parking,
            notify,
            slots,
            policy: RestartPolicy::default(),
            announced_ready: false,
            output: JoinSet::new(),
            run_stats,
        })
    }

    async fn run(mut self, signals: Signals) -> Result<Stopped, SupervisorError> {
        if let Err(err) = self.start_initial_workers() {
            self.stop_workers(&signals).await;
            return Err(err);
        }
        let failure = loop {
            self.announce_ready();
            let next_deadline = self.next_deadline();
            tokio::select! {
                received = signals.recv() => match received {
                    Ok(received) if self.signalled(received) => break None,
                    Ok(_) => {}
                    Err(source) => break Some(SupervisorError::Os { op: "reading signals (signalfd)", source }),
                },
                notification = self.notify.recv() => match notification {
                    Ok(notification) => self.notified(&notification),
                    Err(err) => warn!(error = %err, "readiness notification dropped"),
                },
                () = sleep_until(next_deadline.unwrap_or_else(Instant::now)), if next_deadline.is_some() => {}
            }
            self.start_due_workers();
            self.kill_workers_not_ready_in_time();
        };
        let stopped = self.stop_workers(&signals).await;
        output::drain(&mut self.output).await;
        self.log_counters();
        match failure {
            Some(err) => Err(err),
            None => Ok(stopped),
        }
    }

    /// Acts on a signal; returns whether it asks the pool to stop.
    fn signalled(&mut self, received: Received) -> bool {
        match signals::action(received.signal) {
            Some(SignalAction::Reap) => self.reap(),
            Some(SignalAction::Stop) => {
                info!(signal = %received.name(), sender = received.sender, "stopping workers");
                return true;
            }
            Some(SignalAction::Status) => self.log_status(),
            other => log_ignored(received, other),
        }
        false
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
        let (own_socket, socket_id) = match &self.shared {
            Some(_) => (None, None),
            None => {
                let socket =
                    listener::open(self.options.addr, self.options.backlog, Sharing::ReusePort)?;
                let id = self.steering.socket_listening(slot, socket.as_fd())?;
                (Some(socket), id)
            }
        };
        let notify_socket = self.notify.env_value();
        let pipes = if self.options.capture_output {
            Some(WorkerPipes::new().map_err(|source| SupervisorError::Os {
                op: "creating the pipes for a worker's output",
                source,
            })?)
        } else {
            None
        };
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
            output: pipes.as_ref().map(WorkerPipes::child_ends),
        };
        let pid = spawn::spawn(&self.options.program, &handoff)?;
        info!(slot, pid = pid.as_raw(), "worker started");
        if let Some(pipes) = pipes {
            pipes.forward(slot, pid, &mut self.output);
        }
        let now = Instant::now();
        let ready_by = match self.options.readiness {
            Readiness::Started => None,
            Readiness::Notified { timeout } => Some(now + timeout),
        };
        let entry = &mut self.slots[slot as usize];
        entry.starts += 1;
        entry.state = SlotState::Starting {
            pid,
            socket: own_socket,
            socket_id,
            ready_by,
            started: now,
        };
        if self.options.readiness == Readiness::Started {
            self.worker_ready(slot);
        }
        Ok(())
    }

    /// A notification arrived: if it is `READY=1` from a starting worker, or from a process in
    /// its process group (`sh -c 'systemd-notify --ready; …'`), that worker serves.
    fn notified(&mut self, notification: &Notification) {
        if !notification.ready {
            return;
        }
        let from = |worker: Pid| {
            notification.pid == worker.as_raw() || notification.group == Some(worker.as_raw())
        };
        let starting = (0u32..)
            .zip(&self.slots)
            .find_map(|(slot, s)| match s.state {
                SlotState::Starting { pid, .. } if from(pid) => Some(slot),
                _ => None,
            });
        if let Some(slot) = starting {
            self.worker_ready(slot);
        }
    }

    /// Puts a starting worker's socket into the selection and closes our copy of it.
    fn worker_ready(&mut self, slot: u32) {
        let entry = &mut self.slots[slot as usize];
        let SlotState::Starting {
            pid,
            socket,
            socket_id,
            ..
        } = &mut entry.state
        else {
            return;
        };
        let (pid, own_socket, socket_id) = (*pid, socket.take(), *socket_id);
        if let Some(listener) = worker_socket(own_socket.as_ref(), self.shared.as_ref())
            && let Err(err) = self.steering.worker_serving(slot, listener, socket_id)
        {
            error!(slot, pid = pid.as_raw(), error = %err, "worker runs but could not be added to the selection");
        }
        drop(own_socket);
        if let Some(parking) = &mut self.parking {
            parking.someone_serving(self.options.addr, self.options.backlog);
        }
        if self.options.readiness != Readiness::Started {
            info!(slot, pid = pid.as_raw(), "worker ready");
        }
        entry.state = SlotState::Running {
            pid,
            started: Instant::now(),
            socket_id,
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
        // Forget the output tasks of workers whose pipes have closed.
        while self.output.try_join_next().is_some() {}
    }

    fn worker_exited(&mut self, pid: Pid, status: WaitStatus) {
        let Some(slot) = self.slot_of(pid) else {
            // A child whose exec failed is reported by `spawn` and reaped here.
            return;
        };
        if let Err(err) = self.steering.worker_gone(slot) {
            error!(slot, error = %err, "could not take the slot out of the selection");
        }
        if let Some(parking) = &mut self.parking
            && self.steering.program().is_some_and(|p| p.serving() == 0)
        {
            parking.no_one_serving();
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
    /// shutdown timeout, or at once on a second stop signal. Returns when every worker has been
    /// reaped (or could not be, [`REAP_AFTER_KILL`] after its SIGKILL), with the workers killed.
    async fn stop_workers(&mut self, signals: &Signals) -> Stopped {
        for slot in &mut self.slots {
            if matches!(slot.state, SlotState::Idle { .. }) {
                slot.state = SlotState::Stopped;
            }
        }
        for pid in self.worker_pids() {
            signal_group(pid, Signal::SIGTERM);
        }
        let mut stopped = Stopped::default();
        let mut deadline = Instant::now() + self.options.shutdown_timeout;
        while !self.worker_pids().is_empty() {
            tokio::select! {
                received = signals.recv() => match received {
                    Ok(received) => match signals::action(received.signal) {
                        Some(SignalAction::Reap) => self.reap_stopping(),
                        Some(SignalAction::Stop) if stopped.killed.is_empty() => {
                            warn!(signal = %received.name(), sender = received.sender,
                                  "second stop signal; killing the workers still running");
                            // signalfd hands out the lowest signal first: a SIGCHLD for workers
                            // that already exited may still be pending behind this SIGINT.
                            self.reap_stopping();
                            stopped.killed = self.kill_remaining();
                            deadline = Instant::now() + REAP_AFTER_KILL;
                        }
                        Some(SignalAction::Status) => self.log_status(),
                        other => log_ignored(received, other),
                    },
                    Err(err) => {
                        error!(error = %err, "reading signals failed while stopping; killing the workers still running");
                        stopped.killed = self.kill_remaining();
                        break;
                    }
                },
                () = sleep_until(deadline) => {
                    if !stopped.killed.is_empty() {
                        let left: Vec<i32> = self.worker_pids().iter().map(|p| p.as_raw()).collect();
                        error!(pids = ?left, "workers still not reaped after SIGKILL; exiting without them");
                        break;
                    }
                    self.reap_stopping();
                    if self.worker_pids().is_empty() {
                        break;
                    }
                    warn!(timeout_s = self.options.shutdown_timeout.as_secs(),
                          "workers did not exit in time after SIGTERM; killing them");
                    stopped.killed = self.kill_remaining();
                    deadline = Instant::now() + REAP_AFTER_KILL;
                }
            }
        }
        if stopped.killed.is_empty() {
            info!("all workers stopped");
        } else {
            let pids: Vec<i32> = stopped.killed.iter().map(|p| p.as_raw()).collect();
            warn!(killed = ?pids, "all workers stopped; some had to be killed");
        }
        stopped
    }

    /// SIGKILL to every worker still there, each named in the log; returns their pids.
    fn kill_remaining(&self) -> Vec<Pid> {
        let mut killed = Vec::new();
        for (slot, entry) in (0u32..).zip(&self.slots) {
            if let Some(pid) = entry.state.pid() {
                warn!(
                    slot,
                    pid = pid.as_raw(),
                    "worker did not stop in time; killing it"
                );
                signal_group(pid, Signal::SIGKILL);
                killed.push(pid);
            }
        }
        killed
    }

    /// Reaps during shutdown: no restarts.
    fn reap_stopping(&mut self) {
        for (pid, status) in exited_children() {
            if let Some(slot) = self.slot_of(pid) {
                info!(slot, pid = pid.as_raw(), status = %ExitDescription(status), "worker exited");
            }
            self.forget(pid);
        }
    }

    fn forget(&mut self, pid: Pid) {
        if let Some(slot) = self.slot_of(pid) {
            let _ = self.steering.worker_gone(slot);
            self.slots[slot as usize].state = SlotState::Stopped;
        }
    }

    /// Logs one line per slot (SIGUSR1): its worker's pid, phase, uptime and restarts, the
    /// connections the program steered to the slot, and, of the worker's own socket, the
    /// connections open now and established since it started; then one line for the pool.
    fn log_status(&self) {
        let program = self.steering.program();
        for (slot, entry) in (0u32..).zip(&self.slots) {
            let steered = program
                .and_then(|p| p.slot_counters(slot).ok())
                .map(|c| c.connections + c.migrated);
            let socket = program
                .zip(entry.state.socket_id())
                .and_then(|(p, id)| p.socket_counters(id).ok());
            info!(
                slot,
                pid = entry.state.pid().map(Pid::as_raw),
                phase = %entry.state.phase(),
                uptime_s = entry.state.started().map(|t| t.elapsed().as_secs()),
                restarts = entry.starts.saturating_sub(1),
                steered,
                open = socket.map(|c| c.open),
                connections = socket.map(|c| c.connections),
                "worker status"
            );
        }
        let serving = self
            .slots
            .iter()
            .filter(|s| matches!(s.state, SlotState::Running { .. }))
            .count();
        info!(addr = %self.options.addr, workers = self.options.slots, serving,
              steering = %self.options.mode, dropped_log_lines = telemetry::dropped_lines(),
              "pool status");
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
                    connections = c.connections,
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
                not_a_connection = e.not_a_connection,
                "steering events"
            ),
            Err(err) => warn!(error = %err, "could not read steering events"),
        }
        if self.run_stats.is_some() {
            match program.costs() {
                Ok(costs) => {
                    for cost in costs {
                        let ns_per_run = u64::try_from(cost.run_time.as_nanos())
                            .unwrap_or(u64::MAX)
                            .checked_div(cost.runs)
                            .unwrap_or(0);
                        info!(
                            program = cost.program,
                            runs = cost.runs,
                            ns_per_run,
                            "program cost"
                        );
                    }
                }
                Err(err) => warn!(error = %err, "could not read the programs' stats"),
            }
        }
    }
}

/// Logs a signal that changes nothing.
fn log_ignored(received: Received, action: Option<SignalAction>) {
    let (signal, sender) = (received.name(), received.sender);
    match action {
        Some(SignalAction::NotYetAvailable(what)) => {
            warn!(%signal, sender, "{what} is not available yet; signal ignored");
        }
        _ => info!(%signal, sender, "signal ignored"),
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
