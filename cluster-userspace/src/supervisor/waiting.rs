//! Whether a starting worker waits on its listening socket, seen from /proc: the readiness check
//! where no program can steer a probe to one socket (`--steering hash`, `shared`).
//!
//! A thread of the worker's process group that is blocked in `accept`/`accept4` on the socket,
//! in `poll`/`ppoll` or `select`/`pselect6` with the socket among the descriptors it waits to
//! read, or in `epoll_wait`/`epoll_pwait`/`epoll_pwait2` on an epoll set that holds the socket
//! (its `tfd:` lines in /proc/PID/fdinfo name each target's inode), is waiting to accept.
//! /proc/PID/task/TID/syscall gives the call and its arguments of a blocked thread
//! (fs/proc/base.c `proc_pid_syscall`), and /proc/PID/mem the `pollfd` array or `fd_set` the
//! call reads. The socket is matched by inode, since servers often duplicate the inherited fd.
//! A server that waits in io_uring shows none of this: `--wait-ready` is its way.

use std::{
    collections::{BTreeMap, BTreeSet},
    fs,
    os::unix::fs::FileExt as _,
    path::Path,
};

use nix::unistd::Pid;

/// What /proc shows of a worker's group.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Seen {
    /// A process of the group waits to accept from the socket.
    Waiting,
    /// None does yet.
    NotYet,
    /// The worker's /proc files cannot be read: they need ptrace access to it, which a
    /// supervisor without CAP_SYS_PTRACE lacks for a worker that changed its uid or made itself
    /// non-dumpable, or under Yama `ptrace_scope` 3.
    Unreadable,
}

/// For each `(group, inode)`: whether a process of the worker's process group `group` waits to
/// accept from the socket with inode `inode`. One pass over /proc finds the groups' members.
/// Reads only /proc, which never waits for I/O.
#[must_use]
pub fn waiting(workers: &[(Pid, u64)]) -> Vec<(Pid, Seen)> {
    let mut members: BTreeMap<i32, Vec<i32>> = workers
        .iter()
        .map(|&(group, _)| (group.as_raw(), Vec::new()))
        .collect();
    for pid in fs::read_dir("/proc")
        .into_iter()
        .flatten()
        .filter_map(Result::ok)
        .filter_map(|entry| entry.file_name().to_str()?.parse::<i32>().ok())
    {
        if let Some(group) = process_group(pid).and_then(|g| members.get_mut(&g)) {
            group.push(pid);
        }
    }
    workers
        .iter()
        .map(|&(group, inode)| {
            let pids = members.get(&group.as_raw()).map_or(&[][..], Vec::as_slice);
            (group, seen(group, inode, pids))
        })
        .collect()
}

/// What /proc shows of the group `group`, whose processes are `pids`.
fn seen(group: Pid, inode: u64, pids: &[i32]) -> Seen {
    for &pid in pids {
        match SocketFds::of(pid, inode) {
            Ok(fds) if !fds.is_empty() && process_waits_on(pid, &fds, inode) => {
                return Seen::Waiting;
            }
            Err(err)
                if pid == group.as_raw() && err.kind() == std::io::ErrorKind::PermissionDenied =>
            {
                return Seen::Unreadable;
            }
            _ => {}
        }
    }
    Seen::NotYet
}

/// The process group of `pid`, from /proc/PID/stat (the fifth field; the command name before
/// it may hold spaces and parentheses, so fields are counted after its last `)`).
fn process_group(pid: i32) -> Option<i32> {
    let stat = fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let after_name = &stat[stat.rfind(')')? + 1..];
    after_name.split_whitespace().nth(2)?.parse().ok()
}

fn process_waits_on(pid: i32, fds: &SocketFds, inode: u64) -> bool {
    let Ok(tasks) = fs::read_dir(format!("/proc/{pid}/task")) else {
        return false;
    };
    tasks.filter_map(Result::ok).any(|task| {
        fs::read_to_string(task.path().join("syscall"))
            .ok()
            .and_then(|line| Blocked::parse(&line))
            .is_some_and(|blocked| blocked.waits_on(pid, fds, inode))
    })
}

/// The descriptors of a process that refer to the socket.
struct SocketFds(BTreeSet<u64>);

impl SocketFds {
    /// Fails as reading /proc/PID/fd does (EACCES without ptrace access to `pid`).
    fn of(pid: i32, inode: u64) -> std::io::Result<Self> {
        let target = format!("socket:[{inode}]");
        let fds = fs::read_dir(format!("/proc/{pid}/fd"))?
            .filter_map(Result::ok)
            .filter(|fd| fs::read_link(fd.path()).is_ok_and(|link| link.as_os_str() == &*target))
            .filter_map(|fd| fd.file_name().to_str()?.parse().ok())
            .collect();
        Ok(Self(fds))
    }

    fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    fn contains(&self, fd: u64) -> bool {
        self.0.contains(&fd)
    }
}

/// A thread blocked in a system call: its number and first arguments.
#[derive(Debug, PartialEq, Eq)]
struct Blocked {
    call: i64,
    args: [u64; 3],
}

impl Blocked {
    /// Parses a /proc/…/syscall line: `NR ARG1 … ARG6 SP PC`, the arguments in hex; `running`
    /// or a negative number when the thread is not in a call.
    fn parse(line: &str) -> Option<Self> {
        let mut words = line.split_whitespace();
        let call: i64 = words.next()?.parse().ok()?;
        if call < 0 {
            return None;
        }
        let mut arg = || u64::from_str_radix(words.next()?.trim_start_matches("0x"), 16).ok();
        Some(Self {
            call,
            args: [arg()?, arg()?, arg()?],
        })
    }

    fn waits_on(&self, pid: i32, fds: &SocketFds, inode: u64) -> bool {
        let [first, second, _] = self.args;
        match self.call {
            libc::SYS_accept4 => fds.contains(first),
            libc::SYS_ppoll => polls(pid, first, second, fds),
            libc::SYS_pselect6 => selects(pid, first, second, fds),
            libc::SYS_epoll_pwait | libc::SYS_epoll_pwait2 => epoll_holds(pid, first, inode),
            #[cfg(target_arch = "x86_64")]
            libc::SYS_accept => fds.contains(first),
            #[cfg(target_arch = "x86_64")]
            libc::SYS_poll => polls(pid, first, second, fds),
            #[cfg(target_arch = "x86_64")]
            libc::SYS_select => selects(pid, first, second, fds),
            #[cfg(target_arch = "x86_64")]
            libc::SYS_epoll_wait => epoll_holds(pid, first, inode),
            _ => false,
        }
    }
}

/// Whether the `nfds` `struct pollfd` at `address` in `pid`'s memory include a readable wait
/// on one of `fds`.
fn polls(pid: i32, address: u64, nfds: u64, fds: &SocketFds) -> bool {
    const POLLIN: u16 = 0x1;
    let Some(bytes) = read_memory(pid, address, nfds.min(4096) * 8) else {
        return false;
    };
    bytes.chunks_exact(8).any(|entry| {
        let fd = i32::from_ne_bytes([entry[0], entry[1], entry[2], entry[3]]);
        let events = u16::from_ne_bytes([entry[4], entry[5]]);
        u64::try_from(fd).is_ok_and(|fd| fds.contains(fd)) && events & POLLIN != 0
    })
}

/// Whether the read `fd_set` at `address` (of `nfds` descriptors) holds one of `fds`.
fn selects(pid: i32, nfds: u64, address: u64, fds: &SocketFds) -> bool {
    if address == 0 {
        return false;
    }
    let Some(bits) = read_memory(pid, address, nfds.min(65536).div_ceil(8)) else {
        return false;
    };
    fds.0.iter().filter(|&&fd| fd < nfds).any(|&fd| {
        usize::try_from(fd / 8)
            .ok()
            .and_then(|i| bits.get(i))
            .is_some_and(|byte| byte & (1 << (fd % 8)) != 0)
    })
}

/// Whether the epoll set `epfd` of `pid` holds the socket: its fdinfo lists each target as
/// `tfd: N events: … ino:HEX` (fs/eventpoll.c `ep_show_fdinfo`).
fn epoll_holds(pid: i32, epfd: u64, inode: u64) -> bool {
    let Ok(info) = fs::read_to_string(format!("/proc/{pid}/fdinfo/{epfd}")) else {
        return false;
    };
    info.lines()
        .filter(|line| line.starts_with("tfd:"))
        .filter_map(|line| line.split_whitespace().find_map(|w| w.strip_prefix("ino:")))
        .any(|hex| u64::from_str_radix(hex, 16) == Ok(inode))
}

/// `length` bytes at `address` in `pid`'s memory (needs ptrace access: the supervisor is the
/// workers' ancestor, or root).
fn read_memory(pid: i32, address: u64, length: u64) -> Option<Vec<u8>> {
    let file = fs::File::open(Path::new("/proc").join(pid.to_string()).join("mem")).ok()?;
    let mut bytes = vec![0; usize::try_from(length).ok()?];
    file.read_exact_at(&mut bytes, address).ok()?;
    Some(bytes)
}

#[cfg(test)]
mod tests {
    use std::{
        net::{Ipv4Addr, TcpListener},
        os::{fd::AsRawFd as _, unix::fs::MetadataExt as _},
        thread,
        time::{Duration, Instant},
    };

    use super::*;

    #[test]
    fn syscall_lines_parse() {
        assert_eq!(
            Blocked::parse("43 0x3 0x7ffd1 0x7ffd2 0x0 0x0 0x0 0x7ffd0 0x7f00"),
            Some(Blocked {
                call: 43,
                args: [3, 0x7ffd1, 0x7ffd2]
            })
        );
        assert_eq!(Blocked::parse("running"), None);
        assert_eq!(Blocked::parse("-1 0x7ffd0 0x7f00"), None);
    }

    /// A thread of this test blocked in accept on a listener is seen waiting on it; before it
    /// blocks, nothing is.
    #[test]
    fn a_thread_blocked_in_accept_waits_on_its_socket() {
        let listener = TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).expect("bind");
        let inode = fs::metadata(format!("/proc/self/fd/{}", listener.as_raw_fd()))
            .expect("stat")
            .ino();
        let group = nix::unistd::getpgrp();
        let seen = || waiting(&[(group, inode)])[0].1;
        assert_eq!(seen(), Seen::NotYet, "nothing accepts yet");
        let addr = listener.local_addr().expect("address");
        let acceptor = thread::spawn(move || listener.accept().map(|_| ()));
        let deadline = Instant::now() + Duration::from_secs(30);
        while seen() != Seen::Waiting {
            assert!(
                Instant::now() < deadline,
                "the blocked accept was never seen"
            );
            thread::sleep(Duration::from_millis(10));
        }
        std::net::TcpStream::connect(addr).expect("connect");
        acceptor.join().expect("thread").expect("accept");
    }
}
