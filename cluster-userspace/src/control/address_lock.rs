//! One pool per address. `listener::reserve` checks that no socket holds the address, but it
//! must release its probe before the pool binds its SO_REUSEPORT sockets, and in that gap a
//! second pool of the same user could pass the same check and then join the first pool's
//! reuseport group: both would log `ready`, and whichever attached its program last would take
//! every connection. Each supervisor therefore holds an exclusive lock (flock(2)) on a file named
//! after its network namespace and address, in its private runtime directory, for as long as it
//! runs.

use std::{
    fs::File,
    net::SocketAddr,
    path::{Path, PathBuf},
};

use nix::fcntl::{Flock, FlockArg};

use super::{ControlError, paths};

/// The held lock; released (and its file removed) when dropped.
#[derive(Debug)]
pub struct AddressLock {
    _lock: Flock<File>,
    path: PathBuf,
}

/// Why the lock was not taken.
#[derive(Debug, thiserror::Error)]
pub enum LockError {
    #[error(
        "address {addr} is already in use by another cluster supervisor (lock {path}); stop it or choose another --listen port"
    )]
    Taken { addr: SocketAddr, path: PathBuf },
    #[error(transparent)]
    Other(#[from] ControlError),
}

impl AddressLock {
    /// Takes the lock for `addr` in this network namespace.
    pub fn take(addr: SocketAddr) -> Result<Self, LockError> {
        let dir = paths::runtime_dir();
        paths::ensure_private_dir(&dir)?;
        let path = dir.join(file_name(&network_namespace(), addr));
        let io_error = |op, source| ControlError::Io {
            op,
            path: path.clone(),
            source,
        };
        let file = File::options()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&path)
            .map_err(|e| io_error("opening the address lock", e))?;
        match Flock::lock(file, FlockArg::LockExclusiveNonblock) {
            Ok(lock) => Ok(Self { _lock: lock, path }),
            Err((_, nix::errno::Errno::EWOULDBLOCK)) => Err(LockError::Taken { addr, path }),
            Err((_, errno)) => Err(io_error("locking the address (flock)", errno.into()).into()),
        }
    }

    /// The lock file.
    #[must_use]
    pub fn path(&self) -> &Path {
        &self.path
    }
}

impl Drop for AddressLock {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.path);
    }
}

/// This process's network namespace, as `/proc/self/ns/net` names it (`net:[4026531840]`).
fn network_namespace() -> String {
    std::fs::read_link("/proc/self/ns/net")
        .map(|p| p.to_string_lossy().into_owned())
        .unwrap_or_default()
}

/// `<namespace inode>-<ip>-<port>.lock`, with only characters safe in a file name.
fn file_name(namespace: &str, addr: SocketAddr) -> String {
    let inode: String = namespace.chars().filter(char::is_ascii_digit).collect();
    let ip: String = addr
        .ip()
        .to_string()
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '.' {
                c
            } else {
                '_'
            }
        })
        .collect();
    format!("{inode}-{ip}-{}.lock", addr.port())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn file_names_are_plain() {
        assert_eq!(
            file_name("net:[4026531840]", "127.0.0.1:8080".parse().unwrap()),
            "4026531840-127.0.0.1-8080.lock"
        );
        assert_eq!(
            file_name("net:[1]", "[::1]:80".parse().unwrap()),
            "1-__1-80.lock"
        );
    }
}
