//! Listening sockets: resolving `--listen` to one address, checking that the address is free,
//! and creating each worker's SO_REUSEPORT socket (or the one shared socket), close-on-exec,
//! bound and listening.

use std::{
    io,
    net::{Ipv4Addr, Ipv6Addr, SocketAddr, ToSocketAddrs as _},
};

use socket2::{Domain, Protocol, Socket, Type};

use crate::cli::ListenSpec;

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
    #[error(
        "cannot resolve `{host}` for --listen: {reason}; use an IP address, or a name this host resolves (see /etc/hosts)"
    )]
    Resolve { host: String, reason: String },
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

/// The one address `spec` names. `PORT` alone means every interface: `[::]` (IPv6 and, as
/// IPv4-mapped addresses, IPv4), or `0.0.0.0` where the kernel has no IPv6. A host name with
/// several addresses binds the first IPv4 one (`localhost` binds 127.0.0.1), else the first;
/// the choice is logged.
pub fn resolve(spec: &ListenSpec) -> Result<SocketAddr, ListenError> {
    match spec {
        ListenSpec::Addr(addr) => Ok(*addr),
        ListenSpec::AnyInterface { port } if ipv6_available() => {
            Ok(SocketAddr::new(Ipv6Addr::UNSPECIFIED.into(), *port))
        }
        ListenSpec::AnyInterface { port } => {
            Ok(SocketAddr::new(Ipv4Addr::UNSPECIFIED.into(), *port))
        }
        ListenSpec::Host { host, port } => {
            let resolve_error = |reason: String| ListenError::Resolve {
                host: host.clone(),
                reason,
            };
            let mut found: Vec<SocketAddr> = (host.as_str(), *port)
                .to_socket_addrs()
                .map_err(|e| resolve_error(e.to_string()))?
                .collect();
            found.dedup();
            let chosen =
                preferred(&found).ok_or_else(|| resolve_error("it has no address".into()))?;
            if found.len() > 1 {
                let all: Vec<String> = found.iter().map(ToString::to_string).collect();
                tracing::info!(host = %host, addresses = %all.join(" "), addr = %chosen,
                               "--listen names several addresses; binding one");
            }
            Ok(chosen)
        }
    }
}

/// The address a name with these addresses binds: the first IPv4 one, else the first.
fn preferred(addresses: &[SocketAddr]) -> Option<SocketAddr> {
    addresses
        .iter()
        .find(|a| a.is_ipv4())
        .or_else(|| addresses.first())
        .copied()
}

/// Whether the kernel has IPv6 at all (booted without `ipv6.disable=1`).
fn ipv6_available() -> bool {
    match Socket::new(Domain::IPV6, Type::STREAM, None) {
        Ok(_) => true,
        Err(err) => err.raw_os_error() != Some(libc::EAFNOSUPPORT),
    }
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

/// A TCP socket of the address's family; socket2 creates it close-on-exec. An IPv6 socket is
/// dual-stack (IPV6_V6ONLY off) whatever `net.ipv6.bindv6only` says, so `[::]` also takes IPv4
/// clients, and every socket of the pool has the same setting (a reuseport group only admits
/// sockets that agree on it: `inet_reuseport_add_sock` in net/ipv4/inet_hashtables.c).
fn new_socket(addr: SocketAddr) -> Result<Socket, ListenError> {
    let socket = Socket::new(Domain::for_address(addr), Type::STREAM, Some(Protocol::TCP))
        .map_err(|e| io_error("socket", addr, e))?;
    if addr.is_ipv6() {
        socket
            .set_only_v6(false)
            .map_err(|e| io_error("setsockopt(IPV6_V6ONLY)", addr, e))?;
    }
    Ok(socket)
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
    fn listen_forms_resolve() {
        let any = resolve(&ListenSpec::AnyInterface { port: 8080 }).unwrap();
        assert!(any.ip().is_unspecified() && any.port() == 8080, "{any}");
        let localhost = ListenSpec::Host {
            host: "localhost".into(),
            port: 80,
        };
        assert_eq!(
            resolve(&localhost).unwrap(),
            "127.0.0.1:80".parse().unwrap()
        );
        let nowhere = ListenSpec::Host {
            host: "no-such-host.invalid".into(),
            port: 80,
        };
        let err = resolve(&nowhere).unwrap_err();
        assert!(
            err.to_string()
                .contains("cannot resolve `no-such-host.invalid`"),
            "{err}"
        );
    }

    #[test]
    fn a_name_with_several_addresses_binds_ipv4_first() {
        let v6: SocketAddr = "[::1]:80".parse().unwrap();
        let v4: SocketAddr = "127.0.0.1:80".parse().unwrap();
        assert_eq!(preferred(&[v6, v4]), Some(v4));
        assert_eq!(preferred(&[v6]), Some(v6));
        assert_eq!(preferred(&[]), None);
    }

    #[test]
    fn dual_stack_takes_ipv4_clients() {
        let addr = reserve("[::]:0".parse().unwrap()).unwrap();
        let _listener = open(addr, 16, Sharing::ReusePort).unwrap();
        let v4 = SocketAddr::new(Ipv4Addr::LOCALHOST.into(), addr.port());
        std::net::TcpStream::connect(v4).expect("an IPv4 client reaches [::]");
        assert!(
            matches!(reserve(v4), Err(ListenError::InUse { .. })),
            "the IPv4 port is taken too"
        );
    }

    #[test]
    fn foreign_address_is_named() {
        // 192.0.2.0/24 is TEST-NET-1: never assigned to a host.
        let err = reserve("192.0.2.1:0".parse().unwrap()).unwrap_err();
        assert!(matches!(err, ListenError::NotLocal { .. }), "{err}");
    }
}
