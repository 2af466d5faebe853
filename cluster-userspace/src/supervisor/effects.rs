//! The pool's effects on the system ([`Effects`]): opening worker sockets and starting workers
//! on them, writing the steering maps, signalling process groups, and reading whether a socket
//! has drained. Holds what the supervisor keeps per worker: its socket until it serves, the
//! socket's id for its counters (until the worker is gone), and its exec-status pipe until it
//! has exec'd.

use std::{
    collections::BTreeMap,
    io,
    net::SocketAddr,
    os::fd::{AsFd, BorrowedFd},
    time::Instant,
};

use nix::{
    sys::signal::{Signal, kill, killpg},
    unistd::Pid,
};
use socket2::Socket;
use tokio::task::JoinSet;
use tracing::{debug, error, warn};

use super::{
    SupervisorError,
    channel::{self, WorkerChannel},
    exec_status::ExecStatuses,
    output::{StderrTail, WorkerPipes},
    parking::Parking,
    pool::Effects,
    probe::{self, Probes},
    spawn::{self, Handoff, WorkerProgram},
    waiting,
};
use crate::{
    listener::{self, Sharing},
    notify::NotifySocket,
    steering::{SocketCounters, SocketId, Steering},
};

/// The name workers see in `LISTEN_FDNAMES`.
const FD_NAME: &str = "cluster";

/// What the supervisor holds for one worker.
#[derive(Debug)]
struct Held {
    /// Its socket, until it serves; then only the worker holds it, so that it closes (and leaves
    /// the group) when the worker exits.
    socket: Option<Socket>,
    /// Its socket's counters, where a program counts.
    socket_id: Option<SocketId>,
    /// Its own socket's inode, which names it in sock_diag (none under `shared`).
    inode: Option<u32>,
}

/// The system side of the pool.
#[derive(Debug)]
pub struct SystemEffects {
    addr: SocketAddr,
    backlog: u32,
    program: WorkerProgram,
    /// Capture each worker's stdout and stderr (not `--log-passthrough`).
    capture_output: bool,
    pub steering: Steering,
    /// The one socket of `--steering shared`, kept for every worker started later.
    shared: Option<Socket>,
    /// Its inode, which names it in /proc.
    shared_inode: Option<u64>,
    /// With a program: the socket that keeps the group alive between workers ([`super::parking`]).
    parking: Option<Parking>,
    /// `NOTIFY_SOCKET` for workers.
    notify_env: String,
    /// The tasks logging the workers' output and carrying their messages.
    pub output: JoinSet<()>,
    /// Whether each worker started lately has exec'd.
    pub exec: ExecStatuses,
    held: BTreeMap<Pid, Held>,
    /// The last lines of each worker's stderr, where it is captured.
    stderr_tails: BTreeMap<Pid, StderrTail>,
    channels: BTreeMap<Pid, WorkerChannel>,
    /// The last `cluster broadcast`, given to every worker started afterwards too.
    last_broadcast: Option<String>,
    /// Readiness probes of starting workers.
    probes: Probes,
    /// Workers that accepted their probe and do not serve yet (a COMMAND waits out
    /// `--min-uptime`), by slot: the program steers their probe's port until the worker serves,
    /// or, if it exits first, until it is forgotten.
    probed: BTreeMap<Pid, u32>,
    /// When /proc may next be looked at for workers waiting on their socket.
    next_proc_look: Option<Instant>,
}

impl SystemEffects {
    /// Opens what the steering needs before any worker: the shared socket, or the parking one.
    pub fn new(
        addr: SocketAddr,
        backlog: u32,
        program: WorkerProgram,
        capture_output: bool,
        steering: Steering,
        notify: &NotifySocket,
    ) -> Result<Self, SupervisorError> {
        let shared = match steering.sharing() {
            Sharing::Exclusive => Some(listener::open(addr, backlog, Sharing::Exclusive)?),
            Sharing::ReusePort => None,
        };
        let shared_inode = shared
            .as_ref()
            .and_then(|socket| nix::sys::stat::fstat(socket).ok())
            .map(|stat| stat.st_ino);
        // The floor that selects nothing leaves every connection to the kernel's hash, which
        // would park some on the parking socket for good.
        let parking = match steering.program() {
            Some(p) if p.policy() != crate::steering::Policy::FloorEmpty => {
                Some(Parking::open(addr, backlog, p)?)
            }
            _ => None,
        };
        Ok(Self {
            addr,
            backlog,
            program,
            capture_output,
            steering,
            shared,
            shared_inode,
            parking,
            notify_env: notify.env_value(),
            output: JoinSet::new(),
            exec: ExecStatuses::default(),
            held: BTreeMap::new(),
            stderr_tails: BTreeMap::new(),
            channels: BTreeMap::new(),
            last_broadcast: None,
            probes: Probes::new(addr),
            probed: BTreeMap::new(),
            next_proc_look: None,
        })
    }

    /// Whether a readiness probe is pending: [`Self::accepting`] should be called every
    /// [`probe::PROBE_POLL`].
    #[must_use]
    pub fn probing(&self) -> bool {
        self.probes.any()
    }

    /// Advances the readiness probes: starts the ones due, notes the connects that ended, and
    /// returns the workers seen accepting their probe (each once).
    pub fn accepting(&mut self, now: Instant) -> Vec<Pid> {
        if self.steering.prober().is_none() {
            return self.seen_waiting(now);
        }
        for connected in self.probes.take_connected() {
            if let Err(err) = connected.result {
                warn!(pid = connected.pid.as_raw(), error = %err, "readiness probe could not connect; trying again");
                self.end_probe(connected.pid);
                self.probes.failed(connected.pid, now);
            }
        }
        for (pid, slot) in self.probes.due(now) {
            if let Err(err) = self.start_probe(pid, slot) {
                warn!(slot, pid = pid.as_raw(), error = %err, "could not start a readiness probe; trying again");
                self.probes.failed(pid, now);
            }
        }
        let accepting: Vec<Pid> = self
            .probes
            .connected()
            .into_iter()
            .filter(|&pid| self.accepted_probe(pid))
            .collect();
        for &pid in &accepting {
            if let Some((slot, true)) = self.probes.forget(pid) {
                self.probed.insert(pid, slot);
            }
        }
        accepting
    }

    /// Where no program can steer a probe (`hash`, `shared`, the cost floors): the workers seen
    /// in /proc waiting to accept from their socket ([`waiting`]), looked at once per
    /// [`probe::PROBE_POLL`]. Each is reported once.
    fn seen_waiting(&mut self, now: Instant) -> Vec<Pid> {
        if self.next_proc_look.is_some_and(|at| now < at) {
            return Vec::new();
        }
        self.next_proc_look = Some(now + probe::PROBE_POLL);
        let workers: Vec<(Pid, u64)> = self
            .probes
            .workers()
            .into_iter()
            .filter_map(|pid| {
                let own = self.held.get(&pid).and_then(|h| h.inode).map(u64::from);
                Some((pid, own.or(self.shared_inode)?))
            })
            .collect();
        let mut ready = Vec::new();
        for (pid, seen) in waiting::waiting(&workers) {
            match seen {
                waiting::Seen::Waiting => ready.push(pid),
                waiting::Seen::NotYet => {}
                waiting::Seen::Unreadable => {
                    warn!(
                        pid = pid.as_raw(),
                        "cannot read the worker's /proc files (ptrace access) to see it wait on its socket; counting it ready as started (--wait-ready tells the truth here)"
                    );
                    ready.push(pid);
                }
            }
        }
        for pid in &ready {
            self.probes.forget(*pid);
        }
        ready
    }

    /// Steers a new probe's port to `pid`'s starting socket and connects it.
    fn start_probe(&mut self, pid: Pid, slot: u32) -> Result<(), String> {
        let held = self.held.get(&pid).ok_or("the worker is gone")?;
        let (Some(socket), Some(id)) = (&held.socket, held.socket_id) else {
            return Err("the worker has no starting socket".into());
        };
        let program = self.steering.prober().ok_or("no program steers probes")?;
        let (client, port) = self.probes.open().map_err(|e| e.to_string())?;
        program
            .probe_begin(slot, socket.as_fd(), id, port)
            .map_err(|e| e.to_string())?;
        self.probes.connect(pid, client, port);
        Ok(())
    }

    /// Whether `pid` accepted its probe: its socket saw the probe established, and has nothing
    /// left in its accept queue (nothing else is steered to a starting socket).
    fn accepted_probe(&self, pid: Pid) -> bool {
        let Some(Held {
            socket: Some(socket),
            ..
        }) = self.held.get(&pid)
        else {
            return false;
        };
        self.socket_counters(pid).is_some_and(|c| c.probes > 0)
            && probe::accept_queue(socket.as_fd()).is_ok_and(|queued| queued == 0)
    }

    /// Stops steering `pid`'s probe port, if it has one.
    fn end_probe(&mut self, pid: Pid) {
        let Some(held) = self.held.get(&pid) else {
            return;
        };
        let Some(slot) = self.probes.slot_of(pid) else {
            return;
        };
        let socket = held.socket.as_ref().map(AsFd::as_fd).zip(held.socket_id);
        if let Some(program) = self.steering.prober()
            && let Err(err) = program.probe_end(slot, socket)
        {
            error!(slot, pid = pid.as_raw(), error = %err, "could not end a readiness probe");
        }
    }

    /// The counters of `pid`'s socket, where a program counts.
    #[must_use]
    pub fn socket_counters(&self, pid: Pid) -> Option<SocketCounters> {
        let id = self.held.get(&pid)?.socket_id?;
        self.steering.counter()?.socket_counters(id).ok()
    }

    /// `pid`'s own socket: its inode and its counters, where a program counts.
    #[must_use]
    pub fn socket_of(&self, pid: Pid) -> Option<(u32, SocketCounters)> {
        Some((self.held.get(&pid)?.inode?, self.socket_counters(pid)?))
    }

    /// Holds `slot` out of the selection (its worker stopped accepting) or lets it back.
    pub fn hold(&mut self, slot: u32, held: bool) {
        if let Err(err) = self.steering.hold(slot, held) {
            error!(slot, held, error = %err, "could not change whether the slot is selected");
        }
    }

    /// Sends `message` to each of `pids`; returns how many it was queued for. A broadcast is
    /// also kept for the workers started later.
    pub fn send_message(
        &mut self,
        pids: &[Pid],
        message: &serde_json::Value,
        broadcast: bool,
    ) -> u32 {
        let line = channel::custom(message);
        if broadcast {
            self.last_broadcast = Some(line.clone());
        }
        let delivered = pids
            .iter()
            .filter_map(|pid| self.channels.get(pid))
            .filter(|channel| channel.send(line.clone()))
            .count();
        u32::try_from(delivered).unwrap_or(u32::MAX)
    }

    /// The last lines `pid` wrote to stderr, while it is known (until [`Effects::forget`]).
    #[must_use]
    pub fn stderr_tail(&self, pid: Pid) -> Option<StderrTail> {
        self.stderr_tails.get(&pid).cloned()
    }

    fn worker_socket<'a>(&'a self, own: Option<&'a Socket>) -> Option<BorrowedFd<'a>> {
        own.or(self.shared.as_ref()).map(AsFd::as_fd)
    }

    /// Starts a worker for `slot` on `own_socket` (tagged `socket_id`), or on the shared socket.
    fn start_on(
        &mut self,
        slot: u32,
        own_socket: Option<Socket>,
        socket_id: Option<SocketId>,
        inode: Option<u32>,
    ) -> Result<Pid, SupervisorError> {
        let pipes = if self.capture_output {
            Some(WorkerPipes::new().map_err(|source| SupervisorError::Os {
                op: "creating the pipes for a worker's output",
                source,
            })?)
        } else {
            None
        };
        let (channel_ours, channel_theirs) =
            channel::pair().map_err(|source| SupervisorError::Os {
                op: "creating a worker's message channel (socketpair)",
                source,
            })?;
        let listener =
            self.worker_socket(own_socket.as_ref())
                .ok_or_else(|| SupervisorError::Os {
                    op: "choosing the worker socket",
                    source: io::Error::other("neither an own nor a shared socket"),
                })?;
        let handoff = Handoff {
            slot,
            listener,
            fd_name: FD_NAME,
            notify_socket: &self.notify_env,
            output: pipes.as_ref().map(WorkerPipes::child_ends),
            channel: Some(channel_theirs.as_fd()),
        };
        let forked = spawn::spawn(&self.program, &handoff)?;
        let pid = forked.pid;
        drop(channel_theirs);
        if let Err(err) = self.exec.watch(pid, forked.exec_status) {
            warn!(slot, pid = pid.as_raw(), error = %err,
                  "cannot watch whether the worker's exec succeeds; a failed exec shows only as its exit");
        }
        if let Some(pipes) = pipes {
            let tail = pipes.forward(slot, pid, &mut self.output);
            self.stderr_tails.insert(pid, tail);
        }
        match WorkerChannel::start(channel_ours, slot, pid, &mut self.output) {
            Ok(channel) => {
                if let Some(line) = &self.last_broadcast {
                    channel.send(line.clone());
                }
                self.channels.insert(pid, channel);
            }
            Err(err) => {
                error!(slot, pid = pid.as_raw(), error = %err, "could not open the worker's message channel")
            }
        }
        self.held.insert(
            pid,
            Held {
                socket: own_socket,
                socket_id,
                inode,
            },
        );
        Ok(pid)
    }
}

impl Effects for SystemEffects {
    fn start(&mut self, slot: u32) -> Result<Pid, SupervisorError> {
        let (own_socket, socket_id, inode) = match &self.shared {
            Some(_) => (None, None, None),
            None => {
                let socket = listener::open(self.addr, self.backlog, Sharing::ReusePort)?;
                let id = self.steering.socket_listening(slot, socket.as_fd())?;
                let inode = nix::sys::stat::fstat(&socket)
                    .ok()
                    .and_then(|stat| u32::try_from(stat.st_ino).ok());
                (Some(socket), id, inode)
            }
        };
        let started = self.start_on(slot, own_socket, socket_id, inode);
        if started.is_err()
            && let Some(id) = socket_id
        {
            // The socket closed with the failed start.
            self.steering.socket_closed(id);
        }
        started
    }

    fn serve(&mut self, slot: u32, pid: Pid) -> bool {
        let Some(held) = self.held.get_mut(&pid) else {
            return false;
        };
        let (own_socket, socket_id) = (held.socket.take(), held.socket_id);
        // The program ends the slot's probe itself before the socket takes the slot.
        self.probes.forget(pid);
        self.probed.remove(&pid);
        if let Some(listener) = own_socket.as_ref().or(self.shared.as_ref())
            && let Err(err) = self.steering.serve(slot, listener.as_fd(), socket_id)
        {
            error!(slot, pid = pid.as_raw(), error = %err, "could not add the worker's socket to the selection");
            return false;
        }
        drop(own_socket);
        if let Some(parking) = &mut self.parking {
            parking.someone_serving(self.addr, self.backlog);
        }
        true
    }

    fn unserve(&mut self, slot: u32) {
        if let Err(err) = self.steering.unserve(slot) {
            error!(slot, error = %err, "could not take the slot out of the selection");
        }
        if let Some(parking) = &mut self.parking
            && self.steering.program().is_some_and(|p| p.serving() == 0)
        {
            parking.no_one_serving();
        }
    }

    fn slot_added(&mut self, slot: u32) {
        if let Err(err) = self.steering.sticky_member(slot, true) {
            error!(slot, error = %err, "could not add the slot to the sticky table");
        }
    }

    fn slot_removed(&mut self, slot: u32) {
        if let Err(err) = self.steering.sticky_member(slot, false) {
            error!(slot, error = %err, "could not remove the slot from the sticky table");
        }
    }

    fn tell_draining(&mut self, pid: Pid) {
        if let Some(channel) = self.channels.get(&pid) {
            channel.send(channel::DRAIN.to_owned());
        }
    }

    fn signal(&mut self, pid: Pid, signal: Signal) {
        signal_group(pid, signal);
    }

    fn drained(&self, pid: Pid) -> bool {
        // Without a program the socket is never taken out of the selection (under `hash` it
        // takes its share until it closes), so waiting for it to empty is pointless: drained.
        self.steering.program().is_none() || self.socket_counters(pid).is_none_or(|c| c.open <= 0)
    }

    fn probe(&mut self, slot: u32, pid: Pid) {
        self.probes.want(pid, slot);
    }

    fn forget(&mut self, pid: Pid) {
        // Whatever the worker started and left behind (`sh -c 'server'` leaves `server`) would
        // keep holding its socket, and with it the port: end its whole process group. The
        // group id cannot have been reused while a member is left (pids are not reused as
        // group ids that exist).
        if killpg(pid, Signal::SIGKILL).is_ok() {
            tracing::warn!(
                pid = pid.as_raw(),
                "worker exited and left processes in its group; killed them"
            );
        }
        self.channels.remove(&pid);
        self.stderr_tails.remove(&pid);
        if let Some(held) = self.held.remove(&pid) {
            if held.socket.is_some() {
                debug!(
                    pid = pid.as_raw(),
                    "closed the socket of a worker that never served"
                );
            }
            // Reaped, its group killed: its socket closes with them. (A process that left the
            // group could keep it open; ids are dealt in turn, so its id comes back only after
            // every other one.)
            if let Some(id) = held.socket_id {
                self.steering.socket_closed(id);
            }
        }
        // Only now, with the socket closed: a probe still queued on it was reset rather than
        // migrated, because its port was still known to the program.
        let pending = self.probes.forget(pid).filter(|&(_, steered)| steered);
        if let Some(slot) = pending.map(|(slot, _)| slot).or(self.probed.remove(&pid))
            && let Some(program) = self.steering.prober()
            && let Err(err) = program.probe_end(slot, None)
        {
            error!(slot, pid = pid.as_raw(), error = %err, "could not end a readiness probe");
        }
    }
}

/// Signals a worker and whatever it started (its process group); just the worker if the group
/// is not there yet.
pub fn signal_group(pid: Pid, signal: Signal) {
    if killpg(pid, signal).is_err() {
        let _ = kill(pid, signal);
    }
}
