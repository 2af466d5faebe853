//! Readiness notifications, the sd_notify(3) protocol: workers send `READY=1` (newline-separated
//! `KEY=VALUE` lines) as a datagram to the socket named by `NOTIFY_SOCKET`. The supervisor's
//! socket lives in the abstract namespace (`@cluster-<pid>-notify`), so there is no file to
//! clean up, and SO_PASSCRED makes the kernel attach the sender's real pid to each message.
//!
//! Both ends are here: [`NotifySocket`] receives in the supervisor, [`notify_ready`] sends from
//! the demo worker. The sd-notify crate is not used for sending because its 0.5 release connects
//! to `NOTIFY_SOCKET` as a file path only, without the `@` abstract form systemd defines.

use std::{
    ffi::OsStr,
    io::{self, IoSliceMut},
    os::{
        fd::AsRawFd,
        linux::net::SocketAddrExt as _,
        unix::{
            ffi::OsStrExt as _,
            net::{SocketAddr, UnixDatagram as StdDatagram},
        },
    },
};

use nix::sys::socket::{
    ControlMessageOwned, MsgFlags, UnixCredentials, recvmsg, setsockopt, sockopt::PassCred,
};
use tokio::{io::Interest, net::UnixDatagram};

/// The variable naming the socket.
pub const NOTIFY_SOCKET: &str = "NOTIFY_SOCKET";

/// One datagram from a worker.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Notification {
    /// The sender's pid, as the kernel saw it.
    pub pid: i32,
    /// Whether it said `READY=1`.
    pub ready: bool,
}

/// The supervisor's receiving socket.
#[derive(Debug)]
pub struct NotifySocket {
    socket: UnixDatagram,
    name: String,
}

impl NotifySocket {
    /// Binds `@cluster-<pid>-notify`. Needs a tokio runtime.
    pub fn bind() -> io::Result<Self> {
        Self::bind_named(format!("cluster-{}-notify", std::process::id()))
    }

    fn bind_named(name: String) -> io::Result<Self> {
        let socket = StdDatagram::bind_addr(&SocketAddr::from_abstract_name(name.as_bytes())?)?;
        setsockopt(&socket, PassCred, &true)?;
        socket.set_nonblocking(true)?;
        Ok(Self {
            socket: UnixDatagram::from_std(socket)?,
            name,
        })
    }

    /// The value of `NOTIFY_SOCKET` for workers.
    #[must_use]
    pub fn env_value(&self) -> String {
        format!("@{}", self.name)
    }

    /// Waits for the next datagram. Datagrams without credentials are skipped.
    pub async fn recv(&self) -> io::Result<Notification> {
        loop {
            let received = self
                .socket
                .async_io(Interest::READABLE, || receive(&self.socket))
                .await?;
            if let Some(notification) = received {
                return Ok(notification);
            }
        }
    }
}

fn receive(socket: &UnixDatagram) -> io::Result<Option<Notification>> {
    let mut buf = [0u8; 4096];
    let mut cmsg = nix::cmsg_space!(UnixCredentials);
    let mut iov = [IoSliceMut::new(&mut buf)];
    let message = recvmsg::<()>(
        socket.as_raw_fd(),
        &mut iov,
        Some(&mut cmsg),
        MsgFlags::MSG_DONTWAIT | MsgFlags::MSG_CMSG_CLOEXEC,
    )?;
    let pid = message.cmsgs()?.find_map(|c| match c {
        ControlMessageOwned::ScmCredentials(creds) => Some(creds.pid()),
        _ => None,
    });
    let len = message.bytes;
    Ok(pid.map(|pid| Notification {
        pid,
        ready: says_ready(&buf[..len]),
    }))
}

/// Whether a notification carries `READY=1` on one of its lines.
#[must_use]
pub fn says_ready(message: &[u8]) -> bool {
    message
        .split(|b| *b == b'\n')
        .any(|line| line == b"READY=1")
}

/// Sends `READY=1` to `NOTIFY_SOCKET`, if it is set.
pub fn notify_ready() -> io::Result<()> {
    match std::env::var_os(NOTIFY_SOCKET) {
        Some(target) => send(target.as_bytes(), b"READY=1\n"),
        None => Ok(()),
    }
}

/// Sends one notification to `target`: `@name` is an abstract socket, anything else a path.
fn send(target: &[u8], message: &[u8]) -> io::Result<()> {
    let address = match target.strip_prefix(b"@") {
        Some(name) => SocketAddr::from_abstract_name(name)?,
        None => SocketAddr::from_pathname(OsStr::from_bytes(target))?,
    };
    StdDatagram::unbound()?.send_to_addr(message, &address)?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ready_is_a_whole_line() {
        assert!(says_ready(b"READY=1"));
        assert!(says_ready(b"STATUS=warming up\nREADY=1\n"));
        assert!(!says_ready(b"READY=0\n"));
        assert!(!says_ready(b"NOTREADY=1\n"));
    }

    #[test]
    fn a_notification_carries_the_senders_pid() {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        runtime.block_on(async {
            let name = format!("cluster-test-{}-notify", std::process::id());
            let socket = NotifySocket::bind_named(name).unwrap();
            send(socket.env_value().as_bytes(), b"STATUS=up\nREADY=1\n").unwrap();
            let got = socket.recv().await.unwrap();
            let own = i32::try_from(std::process::id()).unwrap();
            assert_eq!(
                got,
                Notification {
                    pid: own,
                    ready: true
                }
            );
        });
    }
}
