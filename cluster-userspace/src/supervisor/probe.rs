//! Readiness probes: how the supervisor learns that a starting COMMAND worker accepts from its
//! own socket. It connects to the pool's address from a port of its own; the program steers that
//! connection to the worker's starting socket (which is not in the selection yet) by its source
//! port, and counts it apart from the worker's clients. The probe closes at once, so the worker
//! reads end-of-file from it. The worker has accepted it when the socket's counters show the
//! probe established and its accept queue is empty again.
//!
//! Why a probe where the program can steer one, rather than watching the process as
//! [`super::waiting`] does under `hash` and `shared`: the probe shows the accept itself, whatever
//! the server waits in (io_uring included), and needs no ptrace access to the worker. Why
//! counters and the queue rather than the connect: the kernel completes the handshake before any accept
//! (net/ipv4/tcp_minisocks.c `tcp_check_req` queues the child), so a finished connect says
//! nothing about the worker.

use std::{
    collections::BTreeMap,
    io,
    net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr},
    os::fd::{AsRawFd, BorrowedFd},
    time::{Duration, Instant},
};

use nix::unistd::Pid;
use tokio::{net::TcpSocket, task::JoinSet};

/// How often pending probes are checked.
pub const PROBE_POLL: Duration = Duration::from_millis(100);
/// How long a probe whose connect failed waits before the next one.
pub const RETRY_AFTER: Duration = Duration::from_secs(1);
/// How long a probe's connect may take.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

/// One worker's probe.
#[derive(Debug)]
struct Pending {
    slot: u32,
    /// The source port of the probe under way; `None` between a failure and the next try.
    port: Option<u16>,
    connected: bool,
    retry_at: Option<Instant>,
}

/// What came of a probe's connect.
#[derive(Debug)]
pub struct Connected {
    pub pid: Pid,
    pub port: u16,
    pub result: io::Result<()>,
}

/// The probes under way, by worker.
#[derive(Debug)]
pub struct Probes {
    target: SocketAddr,
    pending: BTreeMap<Pid, Pending>,
    connects: JoinSet<Connected>,
}

impl Probes {
    /// Probes that connect to `addr`: itself, or the loopback address of its family when it is
    /// the unspecified one.
    #[must_use]
    pub fn new(addr: SocketAddr) -> Self {
        let ip = match addr.ip() {
            IpAddr::V4(ip) if ip.is_unspecified() => IpAddr::V4(Ipv4Addr::LOCALHOST),
            IpAddr::V6(ip) if ip.is_unspecified() => IpAddr::V6(Ipv6Addr::LOCALHOST),
            ip => ip,
        };
        Self {
            target: SocketAddr::new(ip, addr.port()),
            pending: BTreeMap::new(),
            connects: JoinSet::new(),
        }
    }

    /// Whether any probe is pending.
    #[must_use]
    pub fn any(&self) -> bool {
        !self.pending.is_empty()
    }

    /// The workers whose readiness is pending.
    #[must_use]
    pub fn workers(&self) -> Vec<Pid> {
        self.pending.keys().copied().collect()
    }

    /// `pid` of `slot` is to be probed.
    pub fn want(&mut self, pid: Pid, slot: u32) {
        self.pending.insert(
            pid,
            Pending {
                slot,
                port: None,
                connected: false,
                retry_at: None,
            },
        );
    }

    /// The slot of `pid`'s probe, if it has one in the kernel now.
    #[must_use]
    pub fn slot_of(&self, pid: Pid) -> Option<u32> {
        self.pending
            .get(&pid)
            .filter(|p| p.port.is_some())
            .map(|p| p.slot)
    }

    /// The slot of `pid`'s probe, and whether one is in the kernel now (its port is steered).
    pub fn forget(&mut self, pid: Pid) -> Option<(u32, bool)> {
        self.pending
            .remove(&pid)
            .map(|p| (p.slot, p.port.is_some()))
    }

    /// Opens a probe socket on a port of its own: the port, and the connect to start with
    /// [`Self::connect`] once the program steers that port. Binding does not block.
    pub fn open(&mut self) -> io::Result<(TcpSocket, u16)> {
        let (socket, any) = match self.target {
            SocketAddr::V4(_) => (TcpSocket::new_v4()?, IpAddr::V4(Ipv4Addr::UNSPECIFIED)),
            SocketAddr::V6(_) => (TcpSocket::new_v6()?, IpAddr::V6(Ipv6Addr::UNSPECIFIED)),
        };
        socket.bind(SocketAddr::new(any, 0))?;
        let port = socket.local_addr()?.port();
        Ok((socket, port))
    }

    /// Connects `socket` (from [`Self::open`]) for `pid`'s probe, on a task of its own; the
    /// connection is closed as soon as it is made.
    pub fn connect(&mut self, pid: Pid, socket: TcpSocket, port: u16) {
        if let Some(pending) = self.pending.get_mut(&pid) {
            pending.port = Some(port);
            pending.connected = false;
            pending.retry_at = None;
        }
        let target = self.target;
        self.connects.spawn(async move {
            let result = match tokio::time::timeout(CONNECT_TIMEOUT, socket.connect(target)).await {
                Ok(Ok(_stream)) => Ok(()),
                Ok(Err(err)) => Err(err),
                Err(_) => Err(io::Error::from(io::ErrorKind::TimedOut)),
            };
            Connected { pid, port, result }
        });
    }

    /// A probe could not be started or connected: try again after [`RETRY_AFTER`].
    pub fn failed(&mut self, pid: Pid, now: Instant) {
        if let Some(pending) = self.pending.get_mut(&pid) {
            pending.port = None;
            pending.connected = false;
            pending.retry_at = Some(now + RETRY_AFTER);
        }
    }

    /// Connects that ended since the last call, for probes still pending with that port.
    pub fn take_connected(&mut self) -> Vec<Connected> {
        let mut ended = Vec::new();
        while let Some(joined) = self.connects.try_join_next() {
            let Ok(connected) = joined else { continue };
            let Some(pending) = self.pending.get_mut(&connected.pid) else {
                continue;
            };
            if pending.port != Some(connected.port) {
                continue;
            }
            if connected.result.is_ok() {
                pending.connected = true;
            }
            ended.push(connected);
        }
        ended
    }

    /// Workers whose probe should be (re)started now, with their slots.
    #[must_use]
    pub fn due(&self, now: Instant) -> Vec<(Pid, u32)> {
        self.pending
            .iter()
            .filter(|(_, p)| p.port.is_none() && p.retry_at.is_none_or(|at| at <= now))
            .map(|(&pid, p)| (pid, p.slot))
            .collect()
    }

    /// Workers whose probe connected, waiting to be seen accepted.
    #[must_use]
    pub fn connected(&self) -> Vec<Pid> {
        self.pending
            .iter()
            .filter(|(_, p)| p.connected)
            .map(|(&pid, _)| pid)
            .collect()
    }
}

/// The accept-queue length of a listening TCP socket: `tcpi_unacked` of `TCP_INFO` holds
/// `sk_ack_backlog` for a listener (net/ipv4/tcp.c `tcp_get_info`). Does not block.
pub fn accept_queue(socket: BorrowedFd<'_>) -> io::Result<u32> {
    // SAFETY: all-zero is a valid tcp_info (plain integers).
    let mut info: libc::tcp_info = unsafe { std::mem::zeroed() };
    let mut len = libc::socklen_t::try_from(std::mem::size_of::<libc::tcp_info>())
        .map_err(io::Error::other)?;
    // SAFETY: the kernel writes at most `len` bytes into `info`, which is that long.
    let rc = unsafe {
        libc::getsockopt(
            socket.as_raw_fd(),
            libc::IPPROTO_TCP,
            libc::TCP_INFO,
            (&raw mut info).cast(),
            &raw mut len,
        )
    };
    if rc != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(info.tcpi_unacked)
}

#[cfg(test)]
mod tests {
    use std::net::{TcpListener, TcpStream};
    use std::os::fd::AsFd as _;

    use super::*;

    #[test]
    fn the_accept_queue_counts_connections_not_yet_accepted() {
        let listener = TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).expect("bind");
        let addr = listener.local_addr().expect("address");
        assert_eq!(accept_queue(listener.as_fd()).unwrap(), 0);
        let _clients: Vec<TcpStream> = (0..2)
            .map(|_| TcpStream::connect(addr).expect("connect"))
            .collect();
        assert_eq!(accept_queue(listener.as_fd()).unwrap(), 2);
        let _accepted = listener.accept().expect("accept");
        assert_eq!(accept_queue(listener.as_fd()).unwrap(), 1);
    }

    #[test]
    fn probes_go_to_loopback_for_an_unspecified_address() {
        let probes = Probes::new("0.0.0.0:8080".parse().unwrap());
        assert_eq!(probes.target, "127.0.0.1:8080".parse().unwrap());
        let probes = Probes::new("[::]:80".parse().unwrap());
        assert_eq!(probes.target, "[::1]:80".parse().unwrap());
        let probes = Probes::new("10.0.0.1:80".parse().unwrap());
        assert_eq!(probes.target, "10.0.0.1:80".parse().unwrap());
    }
}
