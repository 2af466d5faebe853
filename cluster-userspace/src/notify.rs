//! Readiness notifications, the sd_notify(3) protocol: workers send `READY=1` (newline-separated
//! `KEY=VALUE` lines) as a datagram to the socket named by `NOTIFY_SOCKET`. The supervisor's
//! socket lives in the abstract namespace (`@cluster-<pid>-notify`), so there is no file to
//! clean up, and SO_PASSCRED makes the kernel attach the sender's real pid to each message.
//!
//! Standard clients work: `systemd-notify --ready` follows `READY=1` with `BARRIER=1`, which
//! carries a pipe descriptor and waits until the receiver closes it (systemd's answer to a
//! barrier). The receive buffer has room for credentials plus the most descriptors one message
//! can carry, and every received descriptor is closed at once, which answers the barrier.
//!
//! Both ends are here: [`NotifySocket`] receives in the supervisor, [`notify_ready`] sends from
//! the demo worker. The sd-notify crate is not used for sending because its 0.5 release connects
//! to `NOTIFY_SOCKET` as a file path only, without the `@` abstract form systemd defines.

use std::{
    ffi::OsStr,
    io::{self, IoSliceMut},
    os::{
        fd::{AsRawFd, FromRawFd as _, OwnedFd, RawFd},
        linux::net::SocketAddrExt as _,
        unix::{
            ffi::OsStrExt as _,
            net::{SocketAddr, UnixDatagram as StdDatagram},
        },
    },
};

use nix::{
    sys::socket::{
        ControlMessageOwned, MsgFlags, UnixCredentials, recvmsg, setsockopt, sockopt::PassCred,
    },
    unistd::{Pid, getpgid},
};
use tokio::{io::Interest, net::UnixDatagram};

/// The variable naming the socket.
pub const NOTIFY_SOCKET: &str = "NOTIFY_SOCKET";

/// Most descriptors one `SCM_RIGHTS` message can carry (`SCM_MAX_FD` in include/net/scm.h).
const SCM_MAX_FD: usize = 253;

/// One datagram from a worker.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Notification {
    /// The sender's pid, as the kernel saw it.
    pub pid: i32,
    /// The sender's process group when the message was read, if it still existed. A worker is
    /// the leader of its own group, so this matches a worker's pid for anything it started,
    /// such as `systemd-notify` run by a non-root worker, which can only send its own pid.
    pub group: Option<i32>,
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

/// Reads one datagram. Descriptors it carries are closed before anything else; a datagram or
/// control data that did not fit is an error naming the sender.
fn receive(socket: &UnixDatagram) -> io::Result<Option<Notification>> {
    // sd_notify messages are at most 4096 bytes (systemd's NOTIFY_BUFFER_MAX).
    let mut buf = [0u8; 4096];
    let mut cmsg = nix::cmsg_space!(UnixCredentials, [RawFd; SCM_MAX_FD]);
    let mut iov = [IoSliceMut::new(&mut buf)];
    let message = recvmsg::<()>(
        socket.as_raw_fd(),
        &mut iov,
        Some(&mut cmsg),
        MsgFlags::MSG_DONTWAIT | MsgFlags::MSG_CMSG_CLOEXEC,
    )?;
    let (bytes, flags) = (message.bytes, message.flags);
    let mut pid = None;
    for control in message.cmsgs()? {
        match control {
            ControlMessageOwned::ScmCredentials(creds) => pid = Some(creds.pid()),
            ControlMessageOwned::ScmRights(fds) => {
                for fd in fds {
                    // SAFETY: the kernel just installed this descriptor for us; nothing else
                    // knows it. Dropping it closes it, which also answers a BARRIER=1.
                    drop(unsafe { OwnedFd::from_raw_fd(fd) });
                }
            }
            _ => {}
        }
    }
    if flags.intersects(MsgFlags::MSG_TRUNC | MsgFlags::MSG_CTRUNC) {
        let sender = pid.map_or_else(|| "an unknown sender".to_owned(), |p| format!("pid {p}"));
        return Err(io::Error::other(format!(
            "a notification from {sender} did not fit the receive buffer (MSG_TRUNC or MSG_CTRUNC) and was dropped"
        )));
    }
    let text = &buf[..bytes];
    Ok(pid.map(|pid| Notification {
        pid,
        group: getpgid(Some(Pid::from_raw(pid))).ok().map(Pid::as_raw),
        ready: says_ready(text),
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
                    group: Some(nix::unistd::getpgrp().as_raw()),
                    ready: true
                }
            );
        });
    }

    fn runtime() -> tokio::runtime::Runtime {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap()
    }

    fn test_socket(tag: &str) -> NotifySocket {
        NotifySocket::bind_named(format!("cluster-test-{}-{tag}", std::process::id())).unwrap()
    }

    /// What `systemd-notify --ready` does after READY=1: send the write end of a pipe with
    /// `BARRIER=1` and wait until the receiver has closed it.
    #[test]
    fn a_barrier_is_answered_by_closing_its_descriptor() {
        use std::os::fd::AsFd as _;

        use nix::sys::socket::{ControlMessage, sendmsg};
        runtime().block_on(async {
            let socket = test_socket("barrier");
            let (read_end, write_end) = nix::unistd::pipe2(nix::fcntl::OFlag::O_NONBLOCK).unwrap();
            let client = StdDatagram::unbound().unwrap();
            let target =
                SocketAddr::from_abstract_name(&socket.env_value().as_bytes()[1..]).unwrap();
            client.connect_addr(&target).unwrap();
            let fds = [write_end.as_raw_fd()];
            sendmsg::<()>(
                client.as_raw_fd(),
                &[io::IoSlice::new(b"BARRIER=1\n")],
                &[ControlMessage::ScmRights(&fds)],
                MsgFlags::empty(),
                None,
            )
            .unwrap();
            drop(write_end);
            let got = socket.recv().await.unwrap();
            assert!(!got.ready);
            // Every write end is closed now: the client's poll for POLLHUP returns.
            let mut byte = [0u8; 1];
            assert_eq!(nix::unistd::read(read_end.as_fd(), &mut byte), Ok(0));
        });
    }

    #[test]
    fn a_truncated_notification_names_its_sender() {
        runtime().block_on(async {
            let socket = test_socket("trunc");
            send(socket.env_value().as_bytes(), &[b'x'; 5000]).unwrap();
            let err = socket.recv().await.unwrap_err();
            let own = std::process::id();
            assert!(err.to_string().contains(&format!("pid {own}")), "{err}");
            send(socket.env_value().as_bytes(), b"READY=1").unwrap();
            assert!(socket.recv().await.unwrap().ready, "the socket still works");
        });
    }
}
