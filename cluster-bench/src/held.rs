//! What one worker holds of the load at one instant: its open TCP connections on the pool's
//! port, and the connections waiting in its own listening socket's accept queue.
//!
//! Its sockets are copied out of it with `pidfd_getfd(2)` and asked for their family, type,
//! local port and whether they listen; the copies are closed before the worker is killed, so
//! its sockets still close with it. A listener's queue comes from the kernel's sock_diag, as
//! the supervisor reads it. Both answer in microseconds however many sockets wait in TIME-WAIT.
//! Listing the connections instead (`/proc/net/tcp`, or a sock_diag dump of established
//! sockets: `inet_diag_dump_icsk` in
//! <https://github.com/torvalds/linux/blob/v6.18/net/ipv4/inet_diag.c> filters on the port
//! only for listeners) walks the kernel's whole connection table, which took 20 ms to over a
//! second after a few runs of a new connection per request, while the stopped worker kept its
//! share of new connections. Connections still in SYN-RECV are request sockets with no file
//! (`inet_reqsk_alloc` in net/ipv4/tcp_input.c) and are not counted; on loopback they last one
//! round trip.

use std::{fs, os::fd::OwnedFd, path::Path};

use anyhow::{Context as _, Result};
use cluster::supervisor::accept_queues::AcceptQueues;
use rustix::{
    net::{AddressFamily, SocketType, getsockname, sockopt},
    process::{PidfdGetfdFlags, pidfd_getfd},
};
use serde::Serialize;

/// A worker's share of the load at one instant.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct Held {
    /// Connections it had accepted and not closed: each one has a request in flight or waits
    /// idle for the client's next.
    pub connections: u64,
    /// Connections waiting in its own listening socket's accept queue, each with a request in
    /// flight (0 when the listener is shared with the pool, whose queue outlives the worker).
    pub queued: u64,
}

/// Counts what workers hold on one port. Owns the runtime that drives the sock_diag socket,
/// since it runs on a thread beside the bench's own runtime.
#[derive(Debug)]
pub struct HeldCounter {
    runtime: tokio::runtime::Runtime,
    queues: AcceptQueues,
    port: u16,
    /// Whether a worker's listener is its own, so that its queue dies with it.
    own_listener: bool,
}

impl HeldCounter {
    /// A counter for local port `port`, counting a worker's listener's queue only when
    /// `own_listener`.
    pub fn open(port: u16, own_listener: bool) -> Result<Self> {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_io()
            .build()
            .context("starting a runtime for sock_diag")?;
        let queues = {
            let _inside = runtime.enter();
            AcceptQueues::open(port)?
        };
        Ok(Self {
            runtime,
            queues,
            port,
            own_listener,
        })
    }

    /// What process `pid`, also named by `pidfd`, holds now.
    pub fn held_by(&mut self, pidfd: &OwnedFd, pid: i32) -> Result<Held> {
        let sockets = self.sockets_of(pidfd, pid)?;
        let mut held = Held::default();
        let mut listeners = Vec::new();
        for (inode, socket) in &sockets {
            if !self.on_the_port(socket) {
                continue;
            }
            if sockopt::socket_acceptconn(socket).unwrap_or(false) {
                listeners.push(*inode);
            } else {
                held.connections += 1;
            }
        }
        if self.own_listener && !listeners.is_empty() {
            let lengths = self
                .runtime
                .block_on(self.queues.read())
                .with_context(|| format!("reading the accept queues on port {}", self.port))?;
            held.queued = listeners
                .iter()
                .filter_map(|inode| lengths.get(inode))
                .map(|n| u64::from(*n))
                .sum();
        }
        Ok(held)
    }

    /// Copies of the sockets process `pid` (`pidfd`) has open, with their inodes.
    fn sockets_of(&self, pidfd: &OwnedFd, pid: i32) -> Result<Vec<(u32, OwnedFd)>> {
        let fds = Path::new("/proc").join(pid.to_string()).join("fd");
        let entries = fs::read_dir(&fds).with_context(|| format!("listing {}", fds.display()))?;
        let mut sockets = Vec::new();
        for entry in entries.filter_map(Result::ok) {
            let Some(fd) = entry.file_name().to_str().and_then(|n| n.parse().ok()) else {
                continue;
            };
            let Some(inode) = fs::read_link(entry.path())
                .ok()
                .and_then(|target| socket_inode(target.to_str()?))
            else {
                continue;
            };
            match pidfd_getfd(pidfd, fd, PidfdGetfdFlags::empty()) {
                Ok(copy) => sockets.push((inode, copy)),
                // A descriptor closed since the listing is simply not there.
                Err(rustix::io::Errno::BADF) => {}
                Err(err) => {
                    return Err(err).with_context(|| format!("copying fd {fd} out of {pid}"));
                }
            }
        }
        Ok(sockets)
    }

    /// Whether `socket` is a TCP socket bound to the port.
    fn on_the_port(&self, socket: &OwnedFd) -> bool {
        let inet = matches!(
            sockopt::socket_domain(socket),
            Ok(AddressFamily::INET | AddressFamily::INET6)
        );
        inet && sockopt::socket_type(socket) == Ok(SocketType::STREAM)
            && getsockname(socket)
                .ok()
                .and_then(|addr| std::net::SocketAddr::try_from(addr).ok())
                .is_some_and(|addr| addr.port() == self.port)
    }
}

/// The inode of a `socket:[INODE]` link target.
fn socket_inode(target: &str) -> Option<u32> {
    target
        .strip_prefix("socket:[")?
        .strip_suffix(']')?
        .parse()
        .ok()
}

#[cfg(test)]
mod tests {
    use std::{
        io::Read as _,
        net::{TcpListener, TcpStream},
        thread,
        time::Duration,
    };

    use super::*;

    #[test]
    fn reads_socket_links() {
        assert_eq!(socket_inode("socket:[12345]"), Some(12345));
        assert_eq!(socket_inode("pipe:[12345]"), None);
        assert_eq!(socket_inode("/dev/null"), None);
    }

    /// This process listening and connected to itself: two accepted connections, one queued;
    /// its clients' ends and a Unix socket pair are not on the port.
    #[test]
    fn counts_accepted_connections_and_the_accept_queue() {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        let clients: Vec<TcpStream> = (0..3)
            .map(|_| TcpStream::connect(("127.0.0.1", port)).unwrap())
            .collect();
        let accepted: Vec<TcpStream> = (0..2).map(|_| listener.accept().unwrap().0).collect();
        let _unix = std::os::unix::net::UnixStream::pair().unwrap();
        let pid = i32::try_from(std::process::id()).unwrap();
        let mut counter = HeldCounter::open(port, true).unwrap();
        let process = rustix::process::Pid::from_raw(pid).unwrap();
        let pidfd =
            rustix::process::pidfd_open(process, rustix::process::PidfdFlags::empty()).unwrap();
        // The third handshake completes in the kernel; wait until it is queued.
        let mut held = Held::default();
        for _ in 0..100 {
            held = counter.held_by(&pidfd, pid).unwrap();
            if held.queued == 1 {
                break;
            }
            thread::sleep(Duration::from_millis(10));
        }
        assert_eq!(
            held,
            Held {
                connections: 2,
                queued: 1
            }
        );
        assert_eq!(
            HeldCounter::open(port, false)
                .unwrap()
                .held_by(&pidfd, pid)
                .unwrap()
                .queued,
            0
        );
        // A connection the client closed is still held until the server closes it.
        let mut clients = clients;
        drop(clients.remove(0));
        let mut first = &accepted[0];
        let mut byte = [0; 1];
        assert_eq!(first.read(&mut byte).unwrap(), 0);
        assert_eq!(counter.held_by(&pidfd, pid).unwrap().connections, 2);
        drop(accepted);
        assert_eq!(counter.held_by(&pidfd, pid).unwrap().connections, 0);
    }
}
