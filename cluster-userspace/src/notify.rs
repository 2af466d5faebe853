//! Readiness notifications, the sd_notify(3) protocol: workers send `READY=1` (newline-separated
//! `KEY=VALUE` lines) as a datagram to the socket named by `NOTIFY_SOCKET`. The supervisor's
//! socket is a file in its private runtime directory (mode 0700, beside the control socket), so
//! no other user can send to it, pre-bind its name or flood it (an abstract name would be
//! visible to all in /proc/net/unix and open to all). SO_PASSCRED makes the kernel attach the
//! sender's real pid to each message.
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
    io,
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
    sys::socket::{setsockopt, sockopt::PassCred},
    unistd::{Pid, getpgid},
};
use tokio::{io::Interest, net::UnixDatagram};

/// The variable naming the socket.
pub const NOTIFY_SOCKET: &str = "NOTIFY_SOCKET";

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
    env_value: String,
    /// The socket's file, removed on drop.
    path: Option<std::path::PathBuf>,
}

impl NotifySocket {
    /// Binds a socket file at `path` (a stale one is replaced). Needs a tokio runtime.
    pub fn bind(path: &std::path::Path) -> io::Result<Self> {
        let _ = std::fs::remove_file(path);
        let mut socket = Self::bind_at(&SocketAddr::from_pathname(path)?)?;
        socket.env_value = path.display().to_string();
        socket.path = Some(path.to_owned());
        Ok(socket)
    }

    /// Binds the abstract name `@name` (for tests).
    #[cfg(test)]
    fn bind_named(name: String) -> io::Result<Self> {
        let mut socket = Self::bind_at(&SocketAddr::from_abstract_name(name.as_bytes())?)?;
        socket.env_value = format!("@{name}");
        Ok(socket)
    }

    fn bind_at(address: &SocketAddr) -> io::Result<Self> {
        let socket = StdDatagram::bind_addr(address)?;
        setsockopt(&socket, PassCred, &true)?;
        socket.set_nonblocking(true)?;
        Ok(Self {
            socket: UnixDatagram::from_std(socket)?,
            env_value: String::new(),
            path: None,
        })
    }

    /// The value of `NOTIFY_SOCKET` for workers.
    #[must_use]
    pub fn env_value(&self) -> String {
        self.env_value.clone()
    }

    /// Waits for the next datagram. Datagrams without credentials are skipped.
    pub async fn recv(&self) -> Result<Notification, NotifyError> {
        // sd_notify messages are at most 4096 bytes (systemd's NOTIFY_BUFFER_MAX).
        let mut buf = [0u8; 4096];
        loop {
            let datagram = self
                .socket
                .async_io(Interest::READABLE, || receive(&self.socket, &mut buf))
                .await?;
            if datagram.truncated {
                return Err(NotifyError::Truncated {
                    sender: datagram.pid,
                });
            }
            if let Some(pid) = datagram.pid {
                return Ok(Notification {
                    pid,
                    group: getpgid(Some(Pid::from_raw(pid))).ok().map(Pid::as_raw),
                    ready: says_ready(&buf[..datagram.len]),
                });
            }
        }
    }
}

/// Why a notification could not be read.
#[derive(Debug, thiserror::Error)]
pub enum NotifyError {
    #[error("reading a readiness notification failed: {0}")]
    Io(#[from] io::Error),
    #[error(
        "a readiness notification from {} did not fit the receive buffer (MSG_TRUNC or MSG_CTRUNC) and was dropped; descriptors it carried were closed",
        sender.map_or_else(|| "an unknown sender".to_owned(), |pid| format!("pid {pid}"))
    )]
    Truncated { sender: Option<i32> },
}

/// One datagram as read: the sender's pid (from its credentials), its text length, and whether
/// the kernel had to cut data or control messages.
struct Datagram {
    pid: Option<i32>,
    len: usize,
    truncated: bool,
}

/// Reads one datagram into `buf`. Control messages are walked with the CMSG macros rather than
/// nix's iterator, which gives up on the whole buffer when the kernel set MSG_CTRUNC: the
/// kernel writes only whole messages (and, for SCM_RIGHTS, the descriptors that fit), so the
/// walk is safe, and every descriptor received is closed here, which also answers a
/// `BARRIER=1`.
fn receive(socket: &UnixDatagram, buf: &mut [u8]) -> io::Result<Datagram> {
    // Room for credentials and the most descriptors one message can carry, aligned for cmsghdr.
    let mut control = [0u64; 160];
    let mut iov = libc::iovec {
        iov_base: buf.as_mut_ptr().cast(),
        iov_len: buf.len(),
    };
    // SAFETY: a zeroed msghdr is valid; the fields set below point at live buffers.
    let mut header: libc::msghdr = unsafe { std::mem::zeroed() };
    header.msg_iov = &raw mut iov;
    header.msg_iovlen = 1;
    header.msg_control = control.as_mut_ptr().cast();
    header.msg_controllen = std::mem::size_of_val(&control);
    // SAFETY: recvmsg writes within the buffers `header` describes.
    let len = unsafe {
        libc::recvmsg(
            socket.as_raw_fd(),
            &raw mut header,
            libc::MSG_DONTWAIT | libc::MSG_CMSG_CLOEXEC,
        )
    };
    let len = usize::try_from(len).map_err(|_| io::Error::last_os_error())?;
    let mut pid = None;
    // SAFETY: the CMSG macros walk the control data the kernel wrote, within msg_controllen.
    unsafe {
        let mut cmsg = libc::CMSG_FIRSTHDR(&raw const header);
        while !cmsg.is_null() {
            let data = libc::CMSG_DATA(cmsg);
            let payload = (*cmsg).cmsg_len as usize - libc::CMSG_LEN(0) as usize;
            match ((*cmsg).cmsg_level, (*cmsg).cmsg_type) {
                (libc::SOL_SOCKET, libc::SCM_CREDENTIALS)
                    if payload >= std::mem::size_of::<libc::ucred>() =>
                {
                    pid = Some(std::ptr::read_unaligned(data.cast::<libc::ucred>()).pid);
                }
                (libc::SOL_SOCKET, libc::SCM_RIGHTS) => {
                    for i in 0..payload / std::mem::size_of::<RawFd>() {
                        let fd = std::ptr::read_unaligned(data.cast::<RawFd>().add(i));
                        // The kernel just installed it for us; nothing else knows it.
                        drop(OwnedFd::from_raw_fd(fd));
                    }
                }
                _ => {}
            }
            cmsg = libc::CMSG_NXTHDR(&raw const header, cmsg);
        }
    }
    Ok(Datagram {
        pid,
        len,
        truncated: header.msg_flags & (libc::MSG_TRUNC | libc::MSG_CTRUNC) != 0,
    })
}

/// Whether a notification carries `READY=1` on one of its lines.
#[must_use]
pub fn says_ready(message: &[u8]) -> bool {
    message
        .split(|b| *b == b'\n')
        .any(|line| line == b"READY=1")
}

/// How long [`notify_ready`] retries while the supervisor's receive queue is full.
const NOTIFY_PATIENCE: std::time::Duration = std::time::Duration::from_secs(10);
/// The pause between two tries.
const NOTIFY_RETRY: std::time::Duration = std::time::Duration::from_millis(10);

/// Sends `READY=1` to `NOTIFY_SOCKET`, if it is set. A datagram socket's receive queue holds
/// `net.unix.max_dgram_qlen` messages (10 by default), so when many workers start at once some
/// find it full (EAGAIN): they try again every 10 ms, for up to 10 s, without blocking their
/// loop.
pub async fn notify_ready() -> io::Result<()> {
    let Some(target) = std::env::var_os(NOTIFY_SOCKET) else {
        return Ok(());
    };
    let deadline = tokio::time::Instant::now() + NOTIFY_PATIENCE;
    loop {
        match send(target.as_bytes(), b"READY=1\n") {
            Err(err)
                if err.kind() == io::ErrorKind::WouldBlock
                    && tokio::time::Instant::now() < deadline =>
            {
                tokio::time::sleep(NOTIFY_RETRY).await;
            }
            result => return result,
        }
    }
}

/// Sends one notification to `target`: `@name` is an abstract socket, anything else a path.
fn send(target: &[u8], message: &[u8]) -> io::Result<()> {
    let address = match target.strip_prefix(b"@") {
        Some(name) => SocketAddr::from_abstract_name(name)?,
        None => SocketAddr::from_pathname(OsStr::from_bytes(target))?,
    };
    // Never wait: a full receive queue fails the send instead of stalling the worker's loop.
    let socket = StdDatagram::unbound()?;
    socket.set_nonblocking(true)?;
    socket.send_to_addr(message, &address)?;
    Ok(())
}

impl Drop for NotifySocket {
    fn drop(&mut self) {
        if let Some(path) = &self.path {
            let _ = std::fs::remove_file(path);
        }
    }
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

        use nix::sys::socket::{ControlMessage, MsgFlags, sendmsg};
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
