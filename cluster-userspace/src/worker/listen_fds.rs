//! Taking over the listening socket passed the systemd way (sd_listen_fds(3)): fd 3, with
//! `LISTEN_FDS` and `LISTEN_PID` naming this process.
//!
//! Not `sd_notify::listen_fds`: it answers every failed check with an empty set, and a worker
//! started wrongly must say which check failed.

use std::{
    env, io,
    net::TcpListener,
    os::fd::{BorrowedFd, FromRawFd, OwnedFd},
};

use crate::handoff::{LISTEN_FD, LISTEN_FDNAMES, LISTEN_FDS, LISTEN_PID};

/// Why no listening socket could be taken over.
#[derive(Debug, thiserror::Error)]
pub enum ListenFdsError {
    #[error(
        "no listening socket was passed (LISTEN_FDS is not set): `cluster worker` is started by `cluster run`"
    )]
    NotPassed,
    #[error("LISTEN_PID={found} names another process (this is {own}); the socket is not ours")]
    OtherProcess { found: String, own: u32 },
    #[error("LISTEN_FDS={0:?} is not a positive number")]
    BadCount(String),
    #[error("fd 3 is not a listening TCP socket: {0}")]
    NotASocket(#[source] io::Error),
}

/// Takes fd 3 as a TCP listener and removes the variables, so a child we start does not take it
/// too (as `sd_listen_fds(1)` does).
pub fn take_listener() -> Result<TcpListener, ListenFdsError> {
    let count = env::var(LISTEN_FDS).map_err(|_| ListenFdsError::NotPassed)?;
    let pid = env::var(LISTEN_PID).map_err(|_| ListenFdsError::NotPassed)?;
    let own = std::process::id();
    if pid.parse::<u32>().ok() != Some(own) {
        return Err(ListenFdsError::OtherProcess { found: pid, own });
    }
    match count.parse::<u32>() {
        Ok(n) if n >= 1 => {}
        _ => return Err(ListenFdsError::BadCount(count)),
    }
    // SAFETY: for Rust 2024 `remove_var` is unsafe because another thread could read the
    // environment; the worker calls this before it starts any thread.
    unsafe {
        for key in [LISTEN_FDS, LISTEN_PID, LISTEN_FDNAMES] {
            env::remove_var(key);
        }
    }
    // SAFETY: fd 3 stays open for this borrow; it is owned only further down.
    let first_fd = unsafe { BorrowedFd::borrow_raw(LISTEN_FD) };
    let socket = socket2::SockRef::from(&first_fd);
    let accepting = socket.is_listener().map_err(ListenFdsError::NotASocket)?;
    if !accepting {
        return Err(ListenFdsError::NotASocket(io::Error::other(
            "not listening",
        )));
    }
    // SAFETY: LISTEN_FDS/LISTEN_PID hand fd 3 to this process, and we checked it is a listening
    // socket; nothing else in the process owns it.
    let fd = unsafe { OwnedFd::from_raw_fd(LISTEN_FD) };
    let listener = TcpListener::from(fd);
    listener
        .set_nonblocking(true)
        .map_err(ListenFdsError::NotASocket)?;
    Ok(listener)
}
