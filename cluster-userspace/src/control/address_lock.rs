//! One pool per address. `listener::reserve` checks that no socket holds the address, but it
//! must release its probe before the pool binds its SO_REUSEPORT sockets, and in that gap a
//! second pool of the same user could pass the same check and then join the first pool's
//! reuseport group: both would log `ready`, and whichever attached its program last would take
//! every connection. Each supervisor therefore holds an exclusive lock (flock(2)) on a file named
//! after its network namespace and address, for as long as it runs. The directory depends on
//! the user alone (`/run/cluster` for root, whatever `XDG_RUNTIME_DIR` says, so `sudo -E` finds
//! the same locks as `sudo`): reuseport groups only join sockets of one uid, so that is the
//! scope that matters.

use std::{
    fs::File,
    net::SocketAddr,
    os::unix::fs::MetadataExt as _,
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
        let dir = lock_dir();
        paths::ensure_private_dir(&dir)?;
        let path = dir.join(file_name(&network_namespace(), addr));
        let io_error = |op, source| ControlError::Io {
            op,
            path: path.clone(),
            source,
        };
        // A holder removes the file as it lets go. A file opened just before that removal and
        // locked just after is no longer the one at `path`, and another process may lock a new
        // file there: the lock counts only if `path` still names the locked file; otherwise try
        // again with the file that is there now.
        for _ in 0..8 {
            let file = File::options()
                .create(true)
                .truncate(false)
                .write(true)
                .open(&path)
                .map_err(|e| io_error("opening the address lock", e))?;
            let lock = match Flock::lock(file, FlockArg::LockExclusiveNonblock) {
                Ok(lock) => lock,
                Err((_, nix::errno::Errno::EWOULDBLOCK)) => {
                    return Err(LockError::Taken { addr, path });
                }
                Err((_, errno)) => {
                    return Err(io_error("locking the address (flock)", errno.into()).into());
                }
            };
            let locked = lock
                .metadata()
                .map_err(|e| io_error("reading the address lock", e))?;
            if std::fs::metadata(&path).is_ok_and(|now| now.ino() == locked.ino()) {
                return Ok(Self { _lock: lock, path });
            }
        }
        Err(io_error(
            "locking the address (flock)",
            std::io::Error::other("the lock file kept being replaced; try again"),
        )
        .into())
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

/// Where the address locks are: `/run/cluster` for root, the runtime directory for other users.
fn lock_dir() -> PathBuf {
    if nix::unistd::Uid::effective().is_root() {
        PathBuf::from("/run/cluster")
    } else {
        paths::runtime_dir()
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
