//! Listening sockets: checking that the address is free, and creating each worker's
//! SO_REUSEPORT socket (or the one shared socket), close-on-exec, bound and listening.

use std::{io, net::SocketAddr};

use socket2::{Domain, Protocol, Socket, Type};

/// Why a listening socket could not be set up.
#[derive(Debug, thiserror::Error)]
pub enum ListenError {
    #[error(
        "address {addr} is already in use by another socket; stop the program holding it or choose another --listen port"
    )]
    InUse { addr: SocketAddr },
    #[error(
        "cannot listen on {addr}: no local interface has that address; use an address of this host (127.0.0.1, ::1, 0.0.0.0, ...)"
    )]
    NotLocal { addr: SocketAddr },
    #[error(
        "cannot listen on {addr}: permission denied; ports below 1024 need root or CAP_NET_BIND_SERVICE"
    )]
    Denied { addr: SocketAddr },
    #[error("{op} for {addr} failed: {source}")]
    Io {
        op: &'static str,
        addr: SocketAddr,
        #[source]
        source: io::Error,
    },
}

/// Whether sockets on the address join one SO_REUSEPORT group or stand alone.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Sharing {
    /// One socket per worker, all in one reuseport group.
    ReusePort,
    /// One socket for everybody; a second program cannot bind the port.
    Exclusive,
}

/// Checks that no socket holds `addr` and returns the address to use, with port 0 replaced by a
/// free port.
///
/// A probe socket *without* SO_REUSEPORT is bound: it fails with EADDRINUSE when any socket
/// holds the port, also one with SO_REUSEPORT, whose group we would otherwise silently join
/// (same uid, see `inet_reuseport_add_sock` in net/ipv4/inet_hashtables.c). SO_REUSEADDR lets it
/// ignore connections of an earlier run still in TIME_WAIT.
pub fn reserve(addr: SocketAddr) -> Result<SocketAddr, ListenError> {
    let probe = new_socket(addr)?;
    probe
        .set_reuse_address(true)
        .map_err(|e| io_error("setsockopt(SO_REUSEADDR)", addr, e))?;
    probe.bind(&addr.into()).map_err(|e| bind_error(addr, e))?;
    let bound = probe
        .local_addr()
        .map_err(|e| io_error("getsockname", addr, e))?;
    bound
        .as_socket()
        .ok_or_else(|| io_error("getsockname", addr, io::Error::other("not an inet address")))
}

/// Creates a socket bound to `addr` and listening with `backlog`. SO_REUSEPORT must be set before
/// bind(2) for the socket to join the group. The socket stays blocking (what a program started
/// the systemd way expects); the demo worker makes its end non-blocking itself.
pub fn open(addr: SocketAddr, backlog: u32, sharing: Sharing) -> Result<Socket, ListenError> {
    let socket = new_socket(addr)?;
    socket
        .set_reuse_address(true)
        .map_err(|e| io_error("setsockopt(SO_REUSEADDR)", addr, e))?;
    if sharing == Sharing::ReusePort {
        socket
            .set_reuse_port(true)
            .map_err(|e| io_error("setsockopt(SO_REUSEPORT)", addr, e))?;
    }
    socket.bind(&addr.into()).map_err(|e| bind_error(addr, e))?;
    let backlog = i32::try_from(backlog).unwrap_or(i32::MAX);
    socket
        .listen(backlog)
        .map_err(|e| io_error("listen", addr, e))?;
    Ok(socket)
}

/// A TCP socket of the address's family; socket2 creates it close-on-exec.
fn new_socket(addr: SocketAddr) -> Result<Socket, ListenError> {
    Socket::new(Domain::for_address(addr), Type::STREAM, Some(Protocol::TCP))
        .map_err(|e| io_error("socket", addr, e))
}

fn bind_error(addr: SocketAddr, err: io::Error) -> ListenError {
    match err.raw_os_error() {
        Some(libc::EADDRINUSE) => ListenError::InUse { addr },
        Some(libc::EADDRNOTAVAIL) => ListenError::NotLocal { addr },
        Some(libc::EACCES | libc::EPERM) => ListenError::Denied { addr },
        _ => io_error("bind", addr, err),
    }
}

fn io_error(op: &'static str, addr: SocketAddr, source: io::Error) -> ListenError {
    ListenError::Io { op, addr, source }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn port_zero_is_resolved_and_then_reusable() {
        let addr = reserve("127.0.0.1:0".parse().unwrap()).unwrap();
        assert_ne!(addr.port(), 0);
        let a = open(addr, 16, Sharing::ReusePort).unwrap();
        let b = open(addr, 16, Sharing::ReusePort).unwrap();
        assert!(matches!(reserve(addr), Err(ListenError::InUse { .. })));
        drop((a, b));
    }

    #[test]
    fn exclusive_socket_blocks_the_port() {
        let addr = reserve("127.0.0.1:0".parse().unwrap()).unwrap();
        let _held = open(addr, 16, Sharing::Exclusive).unwrap();
        assert!(matches!(
            open(addr, 16, Sharing::ReusePort),
            Err(ListenError::InUse { .. })
        ));
    }

    #[test]
    fn foreign_address_is_named() {
        // 192.0.2.0/24 is TEST-NET-1: never assigned to a host.
        let err = reserve("192.0.2.1:0".parse().unwrap()).unwrap_err();
        assert!(matches!(err, ListenError::NotLocal { .. }), "{err}");
    }
}
