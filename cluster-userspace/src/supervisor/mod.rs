//! The supervisor: starts one worker per slot, restarts the ones that exit (with backoff when
//! they keep failing, until their slot gives up), logs what they print, and stops them all on
//! SIGTERM, SIGINT or SIGQUIT.
//!
//! One event loop on one thread, where every input meets: signals ([`signals`]), readiness
//! notifications, the workers' exec statuses ([`exec_status`]), control requests (`requests`),
//! accept-queue readings and memory checks (`checks`), and timers (restarts, readiness
//! deadlines). One thread, because PR_SET_PDEATHSIG fires when the *thread* that forked exits,
//! so the forking thread must live as long as the pool. The
//! only other thread writes the log ([`crate::telemetry`]); it starts after the handled signals
//! are blocked, so it never takes one, and a forked child makes only async-signal-safe calls
//! before exec ([`spawn`]).

pub mod accept_queues;
pub mod backoff;
pub mod channel;
mod checks;
pub mod effects;
pub mod exec_status;
pub mod gave_up;
pub mod health;
pub mod memory;
pub mod output;
pub mod parking;
pub mod pool;
pub mod probe;
mod requests;
pub mod signals;
pub mod spawn;
pub mod status;
pub mod waiting;

use checks::{log_guarantee, next_reading, watch_queues};

use std::{io, net::SocketAddr, path::PathBuf, time::Duration};

use nix::{
    errno::Errno,
    sys::{
        signal::{SigHandler, Signal},
        wait::{WaitPidFlag, WaitStatus, waitpid},
    },
    unistd::Pid,
};
use tokio::{
    sync::mpsc,
    task::JoinSet,
    time::{Instant, sleep_until},
};
use tracing::{error, info, warn};

use self::{
    accept_queues::{AcceptQueues, QueueLengths},
    backoff::RestartPolicy,
    effects::SystemEffects,
    exec_status::ExecOutcome,
    gave_up::{CannotStart, Report},
    health::{Health, HealthConfig, Reading, Verdict},
    output::StderrTail,
    parking::ParkingError,
    pool::{DRAIN_POLL, DrainStyle, Effects as _, Pool, PoolConfig},
    signals::{Received, SignalAction, Signals},
    spawn::{SpawnError, WorkerProgram},
};
use crate::{
    cli::{RunArgs, SteeringMode},
    control::{
        ControlError,
        address_lock::{AddressLock, LockError},
        paths,
        protocol::{Answer, ReloadEnd, Reloads, Request},
        server::{ControlServer, Pending},
    },
    cpus,
    listener::{self, ListenError},
    notify::NotifySocket,
    steering::{ProgramError, Steering, enable_run_stats},
};

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
    #[error(transparent)]
    Control(#[from] ControlError),
    #[error(transparent)]
    AddressLock(#[from] LockError),
    #[error(transparent)]
    CannotStart(#[from] Box<CannotStart>),
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
    /// How long a replaced or removed worker may drain before it is killed.
    pub drain_timeout: Duration,
    /// Slots replaced at once in a reload.
    pub reload_batch: u32,
    pub program: WorkerProgram,
    pub drain: DrainStyle,
    pub readiness: Readiness,
    /// Restart pacing and when a slot gives up (`--min-uptime`, `--max-restarts`).
    pub restart: RestartPolicy,
    /// Capture each worker's stdout and stderr and log them line by line (not
    /// `--log-passthrough`).
    pub capture_output: bool,
    /// Measure the programs' cost (`--bpf-stats`).
    pub bpf_stats: bool,
    /// The control socket's path (`--control`); `None` for the default one.
    pub control: Option<PathBuf>,
    /// `--max-memory`, in bytes.
    pub max_memory: Option<u64>,
    /// `--stall-after`, `--hang-timeout`.
    pub health: HealthConfig,
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
    /// As soon as it has exec'd. No pool runs this way any more; the state machine's tests use it
    /// to keep COMMAND scenarios short where readiness is not what they test.
    #[cfg(test)]
    Started,
    /// When it has shown that it accepts from its socket: a COMMAND without `--wait-ready`. It
    /// accepts a probe connection the program steers to it ([`probe`]), or, where no program
    /// steers (`hash`, `shared`, the cost floors), /proc shows it waiting on the socket
    /// ([`waiting`]). Killed and restarted if that takes longer than the timeout.
    Accepts { timeout: Duration },
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
    let (program, drain) = if args.command.is_empty() {
        (WorkerProgram::demo()?, DrainStyle::SignalAtOnce)
    } else {
        (
            WorkerProgram::command(&args.command)?,
            DrainStyle::WhenDrained,
        )
    };
    spawn::raise_file_limit().map_err(|source| SupervisorError::Os {
        op: "raising the open-file limit (RLIMIT_NOFILE)",
        source,
    })?;
    let slots = args.workers.resolve(cpus::usable());
    let (addr, address_lock) = reserve_alone(listener::resolve(&args.listen)?)?;
    let steering = Steering::new(
        args.steering,
        slots,
        args.sticky_prefix,
        args.hang_timeout > 0,
    )?;
    // A COMMAND shows that it accepts: by a probe the program steers to its socket, or where no
    // program steers (hash, shared) by waiting on its socket, as /proc shows.
    let readiness = if args.command.is_empty() || args.wait_ready {
        notified
    } else {
        Readiness::Accepts {
            timeout: Duration::from_secs(args.ready_timeout),
        }
    };
    let options = Options {
        addr,
        slots,
        backlog: args.backlog,
        mode: args.steering,
        shutdown_timeout: Duration::from_secs(args.shutdown_timeout),
        drain_timeout: Duration::from_secs(args.drain_timeout),
        reload_batch: args.reload_batch,
        program,
        drain,
        readiness,
        restart: RestartPolicy {
            min_uptime: Duration::from_secs(args.min_uptime),
            max_restarts: args.max_restarts,
            ..RestartPolicy::default()
        },
        capture_output: !args.log_passthrough,
        bpf_stats: args.bpf_stats,
        control: args.control,
        max_memory: args.max_memory,
        health: HealthConfig {
            stall_after: args.stall_after,
            hang_timeout: (args.hang_timeout > 0).then(|| Duration::from_secs(args.hang_timeout)),
        },
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
        let supervisor = Supervisor::new(options, steering)?;
        let stopped = supervisor.run(signals).await;
        drop(address_lock);
        stopped
    })
}

/// Reserves `requested` ([`listener::reserve`]) and takes its [`AddressLock`], so that no other
/// pool joins this one's reuseport group. With port 0, a port another pool just took is given
/// up for a new one.
fn reserve_alone(requested: SocketAddr) -> Result<(SocketAddr, AddressLock), SupervisorError> {
    let mut tries = 8;
    loop {
        let addr = listener::reserve(requested)?;
        match AddressLock::take(addr) {
            Ok(lock) => return Ok((addr, lock)),
            Err(LockError::Taken { .. }) if requested.port() == 0 && tries > 1 => tries -= 1,
            Err(err) => return Err(err.into()),
        }
    }
}

/// The event loop's state: the pool's decisions, their effects, and the inputs.
struct Supervisor {
    options: Options,
    pool: Pool,
    fx: SystemEffects,
    notify: NotifySocket,
    control: ControlServer,
    /// Control requests waiting for the running reload to end.
    reload_waiters: Vec<Pending>,
    /// How the reloads ended, for `status`.
    reloads: Reloads,
    /// `--max-memory`.
    memory: Option<memory::MemoryLimit>,
    /// Keeps the kernel's BPF run-time stats on while the supervisor runs (`--bpf-stats`).
    run_stats: Option<std::os::fd::OwnedFd>,
    /// Whether the serving workers accept.
    health: Health,
    /// Accept-queue readings, where stalls can be seen ([`Self::watch_queues`]).
    queue_readings: Option<mpsc::Receiver<QueueLengths>>,
    /// Reports of slots that gave up, each waiting for its last worker's stderr.
    gave_up: JoinSet<Report>,
}

impl Supervisor {
    fn new(options: Options, steering: Steering) -> Result<Self, SupervisorError> {
        let runtime_dir = paths::runtime_dir();
        paths::ensure_private_dir(&runtime_dir)?;
        let notify_path = runtime_dir.join(format!("{}.notify", nix::unistd::getpid()));
        let notify = NotifySocket::bind(&notify_path).map_err(|source| SupervisorError::Os {
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
        let fx = SystemEffects::new(
            options.addr,
            options.backlog,
            options.program.clone(),
            options.capture_output,
            steering,
            &notify,
        )?;
        let config = PoolConfig {
            readiness: options.readiness,
            restart: options.restart,
            drain: options.drain,
            drain_timeout: options.drain_timeout,
            shutdown_timeout: options.shutdown_timeout,
            reload_batch: options.reload_batch,
        };
        let control_path = match &options.control {
            Some(path) => path.clone(),
            None => paths::socket_of(nix::unistd::getpid()),
        };
        let control = ControlServer::bind(&control_path)?;
        let pool = Pool::new(config, options.slots, std::time::Instant::now());
        log_guarantee(&options, &fx);
        let queue_readings = watch_queues(&options, &fx);
        Ok(Self {
            health: Health::new(options.health),
            queue_readings,
            memory: options.max_memory.map(memory::MemoryLimit::new),
            options,
            pool,
            fx,
            notify,
            control,
            reload_waiters: Vec::new(),
            reloads: Reloads::default(),
            run_stats,
            gave_up: JoinSet::new(),
        })
    }

    async fn run(mut self, signals: Signals) -> Result<Stopped, SupervisorError> {
        let mut failure = None;
        if let Err(err) = self.pool.start_all(&mut self.fx, std::time::Instant::now()) {
            self.pool.stop(&mut self.fx, std::time::Instant::now());
            failure = Some(err);
        }
        let mut signals_ok = true;
        let mut memory_checks = tokio::time::interval(memory::CHECK_EVERY);
        memory_checks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            let now = std::time::Instant::now();
            if self.fx.probing() {
                for pid in self.fx.accepting(now) {
                    self.pool.accepted(&mut self.fx, pid, now);
                }
            }
            self.pool.tick(&mut self.fx, now);
            self.report_gave_up(None);
            // A reload may end inside `tick` (a COMMAND replacement's minimum uptime).
            self.answer_reload_waiters();
            if self.pool.finished(now) {
                break;
            }
            if self.pool.newly_all_serving() {
                let migrate = self.fx.steering.program().is_some_and(|p| p.migrates());
                info!(addr = %self.options.addr, workers = self.pool.slot_count(),
                      steering = %self.options.mode, migrate,
                      control = %self.control.path().display(), "ready");
            }
            // Without signals (signalfd failed) a stopping pool polls for exits; readiness
            // probes are polled too.
            let poll = [
                (!signals_ok).then(|| now + DRAIN_POLL),
                self.fx.probing().then(|| now + probe::PROBE_POLL),
            ]
            .into_iter()
            .flatten()
            .min();
            let next = self.pool.next_deadline(now).into_iter().chain(poll).min();
            tokio::select! {
                received = signals.recv(), if signals_ok => match received {
                    Ok(received) => self.signalled(received),
                    Err(source) => {
                        signals_ok = false;
                        failure.get_or_insert(SupervisorError::Os { op: "reading signals (signalfd)", source });
                        self.pool.stop(&mut self.fx, std::time::Instant::now());
                    }
                },
                notification = self.notify.recv() => match notification {
                    Ok(n) if n.ready => self.pool.notified_ready(&mut self.fx, n.pid, n.group, std::time::Instant::now()),
                    Ok(_) => {}
                    Err(err) => warn!(error = %err, "readiness notification dropped"),
                },
                pending = self.control.recv() => self.control_request(pending),
                (pid, outcome) = self.fx.exec.next() => self.exec_reported(pid, outcome),
                _ = memory_checks.tick(), if self.memory.is_some() => self.check_memory(),
                lengths = next_reading(&mut self.queue_readings) => match lengths {
                    Some(lengths) => self.check_health(&lengths),
                    None => self.queue_readings = None,
                },
                () = sleep_until(next.map_or_else(Instant::now, Instant::from_std)), if next.is_some() => {}
            }
            // The top of the loop answers reload waiters and reports slots that gave up.
            if !signals_ok {
                self.reap();
            }
        }
        let stopped = Stopped {
            killed: self.pool.killed().to_vec(),
        };
        let left = self.pool.pids();
        if !left.is_empty() {
            let pids: Vec<i32> = left.iter().map(|p| p.as_raw()).collect();
            error!(pids = ?pids, "workers still not reaped after SIGKILL; exiting without them");
        }
        if stopped.killed.is_empty() {
            info!("all workers stopped");
        } else {
            let pids: Vec<i32> = stopped.killed.iter().map(|p| p.as_raw()).collect();
            warn!(killed = ?pids, "all workers stopped; some had to be killed");
        }
        let mut cannot_start = None;
        while let Some(report) = self.gave_up.join_next().await {
            match report {
                Ok(report) if report.gave_up.pool_fails => {
                    cannot_start.get_or_insert(report);
                }
                Ok(_) => {}
                Err(err) => warn!(error = %err, "a report of a slot that gave up was lost"),
            }
        }
        output::drain(&mut self.fx.output).await;
        self.log_counters();
        match (failure, cannot_start) {
            (Some(err), _) => Err(err),
            (None, Some(report)) => Err(Box::new(CannotStart(report)).into()),
            (None, None) => Ok(stopped),
        }
    }

    /// Acts on a signal.
    fn signalled(&mut self, received: Received) {
        let now = std::time::Instant::now();
        match signals::action(received.signal) {
            Some(SignalAction::Reap) => self.reap(),
            Some(SignalAction::Stop) => {
                if self.pool.stopping() {
                    warn!(signal = %received.name(), sender = received.sender,
                          "second stop signal; killing the workers still running");
                    // signalfd hands out the lowest signal first: a SIGCHLD for workers that
                    // already exited may still be pending behind this SIGINT.
                    self.reap();
                } else {
                    info!(signal = %received.name(), sender = received.sender, "stopping workers");
                }
                self.pool.stop(&mut self.fx, now);
            }
            Some(SignalAction::Reload) => {
                info!(signal = %received.name(), sender = received.sender, "reload requested");
                if let Err(err) = self.pool.reload(&mut self.fx, None, now) {
                    warn!(error = %err, "reload refused");
                }
            }
            Some(SignalAction::Scale(step)) => {
                let target = self.pool.slot_count().saturating_add_signed(step);
                info!(signal = %received.name(), sender = received.sender, to = target, "scale requested");
                if let Err(err) = self.pool.scale(&mut self.fx, target, now) {
                    warn!(error = %err, "scale refused");
                }
            }
            Some(SignalAction::Status) => self.log_status(),
            Some(SignalAction::Ignore) | None => {
                info!(signal = %received.name(), sender = received.sender, "signal ignored");
            }
        }
    }

    fn status(&self) -> crate::control::protocol::PoolStatus {
        status::snapshot(
            &self.pool,
            &self.fx,
            &self.health,
            &self.options.addr.to_string(),
            &self.options.mode.to_string(),
            self.run_stats.is_some(),
            self.reloads.clone(),
        )
    }

    /// Acts on what `pid`'s exec-status pipe said: a failed exec tells the pool why the worker
    /// is about to exit.
    fn exec_reported(&mut self, pid: Pid, outcome: io::Result<ExecOutcome>) {
        match outcome {
            Ok(ExecOutcome::Ran) => {}
            Ok(ExecOutcome::Failed(errno)) => {
                let err = self.options.program.exec_error(errno);
                self.pool.exec_failed(pid, err.to_string());
            }
            Err(err) => {
                warn!(pid = pid.as_raw(), error = %err, "could not read whether the worker's exec succeeded");
            }
        }
    }

    /// Collects every exited child.
    fn reap(&mut self) {
        for (pid, status) in exited_children() {
            // Its exec error, if it had one, was written before it exited: read it now if the
            // loop has not yet.
            if let Some(outcome) = self.fx.exec.settle(pid) {
                self.exec_reported(pid, outcome);
            }
            // Taken before the pool forgets the worker: its slot may give up on this exit.
            let tail = self.fx.stderr_tail(pid).map(|tail| (pid, tail));
            self.pool
                .exited(&mut self.fx, pid, status, std::time::Instant::now());
            self.report_gave_up(tail);
        }
        // Forget the output tasks of workers whose pipes have closed.
        while self.fx.output.try_join_next().is_some() {}
    }

    /// Starts a report for each slot that gave up; `exited` is the worker that just exited, and
    /// the tail of its stderr. A report waits for the end of that stderr on its own task, so the
    /// event loop goes on meanwhile.
    fn report_gave_up(&mut self, exited: Option<(Pid, StderrTail)>) {
        for gave_up in self.pool.take_gave_up() {
            let tail = exited
                .as_ref()
                .filter(|(pid, _)| gave_up.pid == Some(*pid))
                .map(|(_, tail)| tail.clone());
            let command = self.options.program.command_line();
            self.gave_up.spawn(Report::collect(gave_up, command, tail));
        }
    }

    /// Logs the pool's status (SIGUSR1).
    fn log_status(&self) {
        status::log(&self.status());
    }

    /// Logs the program's per-slot and fallback counters (the final tally of a run).
    fn log_counters(&self) {
        let Some(program) = self.fx.steering.program() else {
            return;
        };
        for slot in 0..self.pool.slot_count() {
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
                move_unrecorded = e.move_unrecorded,
                "steering events"
            ),
            Err(err) => warn!(error = %err, "could not read steering events"),
        }
        if self.run_stats.is_some() {
            for cost in status::program_stats(&self.fx) {
                info!(
                    program = cost.program,
                    runs = cost.runs,
                    ns_per_run = cost.run_time_ns.checked_div(cost.runs).unwrap_or(0),
                    "program cost"
                );
            }
        }
    }
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
