//! Every signal the supervisor handles, and what each one means ([`action`]). They all arrive on
//! one signalfd, read by the event loop like any other input, so a signal can never interrupt the
//! supervisor halfway through a decision, and one that has no handler cannot end the pool.
//!
//! The handled signals are blocked on the supervisor's thread (signalfd(2) needs that); a worker
//! starts with an empty mask and default dispositions ([`super::spawn`]). Signals not handled
//! here keep their default action: the faults (SIGSEGV, SIGBUS, SIGFPE, SIGILL, SIGABRT, SIGTRAP,
//! SIGSYS, SIGXCPU), the job-control signals (SIGTSTP, SIGCONT, SIGSTOP), SIGURG (ignored by
//! default) and SIGKILL. SIGPIPE and SIGXFSZ are ignored (their disposition is SIG_IGN), so a
//! closed pipe or a full log file is a write error, not death.

use std::io;

use nix::sys::{
    signal::{SigSet, SigmaskHow, Signal, pthread_sigmask},
    signalfd::{SfdFlags, SignalFd},
};
use tokio::io::{Interest, unix::AsyncFd};

/// What the supervisor does on a signal.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SignalAction {
    /// SIGCHLD: collect exited workers.
    Reap,
    /// SIGTERM, SIGINT, SIGQUIT: stop the pool gracefully; a second one during the stop kills
    /// the workers still running.
    Stop,
    /// SIGUSR1: log one status line per worker.
    Status,
    /// SIGHUP and SIGUSR2: replace every worker, one slot (or `--reload-batch`) at a time.
    Reload,
    /// SIGTTIN (+1) and SIGTTOU (-1): scale the pool by one slot.
    Scale(i32),
    /// Logged and ignored: SIGWINCH, SIGALRM, SIGVTALRM, SIGPROF, SIGIO, SIGPWR, SIGSTKFLT and
    /// the real-time signals. Their default action would end the supervisor and every worker.
    Ignore,
}

/// The action for `signal` (a signal number), or `None` when the signal keeps its default action.
#[must_use]
pub fn action(signal: i32) -> Option<SignalAction> {
    use SignalAction::{Ignore, Reap, Reload, Scale, Status, Stop};
    if (libc::SIGRTMIN()..=libc::SIGRTMAX()).contains(&signal) {
        return Some(Ignore);
    }
    Some(match Signal::try_from(signal).ok()? {
        Signal::SIGCHLD => Reap,
        Signal::SIGTERM | Signal::SIGINT | Signal::SIGQUIT => Stop,
        Signal::SIGUSR1 => Status,
        Signal::SIGHUP | Signal::SIGUSR2 => Reload,
        Signal::SIGTTIN => Scale(1),
        Signal::SIGTTOU => Scale(-1),
        Signal::SIGWINCH
        | Signal::SIGALRM
        | Signal::SIGVTALRM
        | Signal::SIGPROF
        | Signal::SIGIO
        | Signal::SIGPWR
        | Signal::SIGSTKFLT => Ignore,
        _ => return None,
    })
}

/// Blocks every handled signal on the calling thread; threads it starts afterwards inherit the
/// mask. Call first thing in the supervisor: a handled signal that arrives before the signalfd
/// exists then waits for it instead of taking its default action (ending the pool), and no
/// thread (the log writer's) is left to take one with its default action.
pub fn block() -> io::Result<()> {
    pthread_sigmask(SigmaskHow::SIG_BLOCK, Some(&handled()), None)?;
    Ok(())
}

/// The set of every signal [`action`] handles.
fn handled() -> SigSet {
    let mut raw = *SigSet::empty().as_ref();
    // nix's `Signal` has no real-time signals, so the set is built by number. glibc keeps the
    // first two real-time signals for itself (SIGRTMIN() is 34); those are not ours to block.
    for signal in (1..=libc::SIGRTMAX()).filter(|s| action(*s).is_some()) {
        // SAFETY: `raw` is a valid sigset_t; sigaddset only sets a bit in it.
        unsafe { libc::sigaddset(&raw mut raw, signal) };
    }
    // SAFETY: built from an initialised set with sigaddset only.
    unsafe { SigSet::from_sigset_t_unchecked(raw) }
}

/// One signal, as the kernel delivered it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Received {
    pub signal: i32,
    /// Who sent it (0 for the kernel).
    pub sender: i32,
}

impl Received {
    /// The signal's name (`SIGTERM`, `SIGRTMIN+3`).
    #[must_use]
    pub fn name(&self) -> String {
        signal_name(self.signal)
    }
}

/// `SIGTERM`, `SIGRTMIN+3`, or the number.
#[must_use]
pub fn signal_name(signal: i32) -> String {
    match Signal::try_from(signal) {
        Ok(known) => known.as_str().to_owned(),
        Err(_) if signal == libc::SIGRTMIN() => "SIGRTMIN".to_owned(),
        Err(_) if signal > libc::SIGRTMIN() => format!("SIGRTMIN+{}", signal - libc::SIGRTMIN()),
        Err(_) => format!("signal {signal}"),
    }
}

/// The supervisor's signal input.
#[derive(Debug)]
pub struct Signals {
    fd: AsyncFd<SignalFd>,
}

impl Signals {
    /// Opens a signalfd for every handled signal, blocking them on this thread (see [`block`]).
    /// Call on the event loop's thread, inside the runtime, before any worker starts.
    pub fn new() -> io::Result<Self> {
        block()?;
        let set = handled();
        let fd = SignalFd::with_flags(&set, SfdFlags::SFD_NONBLOCK | SfdFlags::SFD_CLOEXEC)?;
        // SAFETY: the SignalFd owns its descriptor and keeps it open, unchanged, for as long as
        // the AsyncFd that owns the SignalFd.
        let fd = unsafe { AsyncFd::register_with_interest(fd, Interest::READABLE) }?;
        Ok(Self { fd })
    }

    /// The next signal.
    pub async fn recv(&self) -> io::Result<Received> {
        loop {
            let mut ready = self.fd.readable().await?;
            match ready.get_inner().read_signal()? {
                Some(info) => {
                    return Ok(Received {
                        signal: i32::try_from(info.ssi_signo).unwrap_or(0),
                        sender: i32::try_from(info.ssi_pid).unwrap_or(0),
                    });
                }
                None => ready.clear_ready(),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_signal_table() {
        use SignalAction::*;
        let expect = [
            (libc::SIGCHLD, Some(Reap)),
            (libc::SIGTERM, Some(Stop)),
            (libc::SIGINT, Some(Stop)),
            (libc::SIGQUIT, Some(Stop)),
            (libc::SIGUSR1, Some(Status)),
            (libc::SIGHUP, Some(Reload)),
            (libc::SIGUSR2, Some(Reload)),
            (libc::SIGTTIN, Some(Scale(1))),
            (libc::SIGTTOU, Some(Scale(-1))),
            (libc::SIGWINCH, Some(Ignore)),
            (libc::SIGALRM, Some(Ignore)),
            (libc::SIGVTALRM, Some(Ignore)),
            (libc::SIGPROF, Some(Ignore)),
            (libc::SIGIO, Some(Ignore)),
            (libc::SIGPWR, Some(Ignore)),
            (libc::SIGRTMIN(), Some(Ignore)),
            (libc::SIGRTMAX(), Some(Ignore)),
            (libc::SIGPIPE, None),
            (libc::SIGSEGV, None),
            (libc::SIGBUS, None),
            (libc::SIGFPE, None),
            (libc::SIGABRT, None),
            (libc::SIGTSTP, None),
            (libc::SIGCONT, None),
            (libc::SIGKILL, None),
            (libc::SIGSTOP, None),
        ];
        for (signal, action_expected) in expect {
            assert_eq!(action(signal), action_expected, "{}", signal_name(signal));
        }
    }

    #[test]
    fn names() {
        assert_eq!(signal_name(libc::SIGTERM), "SIGTERM");
        assert_eq!(signal_name(libc::SIGRTMIN()), "SIGRTMIN");
        assert_eq!(signal_name(libc::SIGRTMIN() + 3), "SIGRTMIN+3");
    }

    #[test]
    fn every_real_time_signal_is_in_the_set() {
        let set = handled();
        assert!(set.contains(Signal::SIGUSR1));
        assert!(!set.contains(Signal::SIGSEGV));
        assert!(!set.contains(Signal::SIGPIPE));
        for signal in libc::SIGRTMIN()..=libc::SIGRTMAX() {
            // SAFETY: `set` is a valid sigset_t.
            let member = unsafe { libc::sigismember(set.as_ref(), signal) };
            assert_eq!(member, 1, "{}", signal_name(signal));
        }
    }
}
