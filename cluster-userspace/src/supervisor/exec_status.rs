//! Whether each forked worker got as far as running its program, learnt without blocking the
//! event loop. [`spawn`](super::spawn::spawn) returns right after fork with the read end of a
//! close-on-exec pipe whose only write end the child holds: a successful execve closes it (end
//! of file here), and a child whose exec (or a step before it) failed writes the errno first and
//! exits. The pipes are watched by the event loop ([`ExecStatuses::next`]), and the pipe of a
//! worker that was reaped first is read at once ([`ExecStatuses::settle`]): its errno, if it
//! wrote one, is in the pipe before its exit can be seen.

use std::{
    collections::BTreeMap,
    io,
    os::fd::{AsFd, OwnedFd},
    task::{Context, Poll},
};

use nix::unistd::Pid;
use tokio::io::{Interest, unix::AsyncFd};

/// What a worker's exec-status pipe said.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ExecOutcome {
    /// End of file: the exec succeeded (or the child died before it without saying why).
    Ran,
    /// The errno of the step that failed; the child exits with status 127.
    Failed(i32),
}

/// The exec-status pipes of the workers not yet known to have exec'd.
#[derive(Debug, Default)]
pub struct ExecStatuses {
    pending: BTreeMap<Pid, AsyncFd<OwnedFd>>,
}

impl ExecStatuses {
    /// Watches `pid`'s pipe (non-blocking). Needs the tokio runtime.
    pub fn watch(&mut self, pid: Pid, pipe: OwnedFd) -> io::Result<()> {
        // SAFETY: the OwnedFd keeps its descriptor open, unchanged, for as long as the AsyncFd
        // that owns it.
        let pipe = unsafe { AsyncFd::register_with_interest(pipe, Interest::READABLE) }?;
        self.pending.insert(pid, pipe);
        Ok(())
    }

    /// The next worker whose pipe spoke, and what it said; never, while none is pending.
    pub async fn next(&mut self) -> (Pid, io::Result<ExecOutcome>) {
        let (pid, outcome) = std::future::poll_fn(|cx| self.poll_next(cx)).await;
        self.pending.remove(&pid);
        (pid, outcome)
    }

    fn poll_next(&self, cx: &mut Context<'_>) -> Poll<(Pid, io::Result<ExecOutcome>)> {
        for (&pid, pipe) in &self.pending {
            loop {
                let mut ready = match pipe.poll_read_ready(cx) {
                    Poll::Pending => break,
                    Poll::Ready(Err(err)) => return Poll::Ready((pid, Err(err))),
                    Poll::Ready(Ok(ready)) => ready,
                };
                // A spurious wake-up reads nothing (WouldBlock): the readiness is cleared and
                // polled again, which registers for the next one.
                if let Ok(outcome) = ready.try_io(|pipe| read(pipe.get_ref())) {
                    return Poll::Ready((pid, outcome));
                }
            }
        }
        Poll::Pending
    }

    /// What `pid`'s pipe says now, read at once, and stop watching it: for a worker that was
    /// just reaped, whose pipe the event loop may not have read yet. `None` if it is not
    /// watched (already read) or says nothing yet.
    pub fn settle(&mut self, pid: Pid) -> Option<io::Result<ExecOutcome>> {
        let pipe = self.pending.remove(&pid)?;
        match read(pipe.get_ref()) {
            Err(err) if err.kind() == io::ErrorKind::WouldBlock => None,
            outcome => Some(outcome),
        }
    }
}

/// Reads an exec-status pipe without waiting: `WouldBlock` while the child has neither exec'd
/// nor failed.
fn read(pipe: impl AsFd) -> io::Result<ExecOutcome> {
    let mut errno = [0u8; 4];
    loop {
        // The child writes its 4 bytes at once, and a pipe write of up to PIPE_BUF bytes is
        // atomic (pipe(7)): they are read whole or not at all.
        return match nix::unistd::read(&pipe, &mut errno) {
            Ok(0) => Ok(ExecOutcome::Ran),
            Ok(4) => Ok(ExecOutcome::Failed(i32::from_ne_bytes(errno))),
            Ok(n) => Err(io::Error::other(format!(
                "the exec-status pipe held {n} bytes, not 4"
            ))),
            Err(nix::errno::Errno::EINTR) => continue,
            Err(errno) => Err(errno.into()),
        };
    }
}

#[cfg(test)]
mod tests {
    use nix::fcntl::OFlag;

    use super::*;

    fn pipe() -> (OwnedFd, OwnedFd) {
        nix::unistd::pipe2(OFlag::O_CLOEXEC | OFlag::O_NONBLOCK).unwrap()
    }

    #[test]
    fn a_pipe_reads_as_pending_ran_or_failed() {
        let (r, w) = pipe();
        let pending = read(&r).unwrap_err();
        assert_eq!(pending.kind(), io::ErrorKind::WouldBlock);
        drop(w);
        assert_eq!(read(&r).unwrap(), ExecOutcome::Ran);
        let (r, w) = pipe();
        nix::unistd::write(&w, &libc::ENOEXEC.to_ne_bytes()).unwrap();
        drop(w);
        assert_eq!(read(&r).unwrap(), ExecOutcome::Failed(libc::ENOEXEC));
    }

    #[test]
    fn the_loop_hears_each_pipe_once_and_a_reaped_worker_is_read_at_once() {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        runtime.block_on(async {
            let mut statuses = ExecStatuses::default();
            let (ran, ran_end) = pipe();
            let (failed, failed_end) = pipe();
            let (reaped, reaped_end) = pipe();
            let (silent, _silent_end) = pipe();
            for (pid, pipe) in [(1, ran), (2, failed), (3, reaped), (4, silent)] {
                statuses.watch(Pid::from_raw(pid), pipe).unwrap();
            }
            drop(ran_end);
            nix::unistd::write(&failed_end, &libc::ENOENT.to_ne_bytes()).unwrap();
            drop(failed_end);
            let mut heard = BTreeMap::new();
            for _ in 0..2 {
                let (pid, outcome) = statuses.next().await;
                heard.insert(pid.as_raw(), outcome.unwrap());
            }
            assert_eq!(
                heard,
                BTreeMap::from([
                    (1, ExecOutcome::Ran),
                    (2, ExecOutcome::Failed(libc::ENOENT))
                ])
            );
            nix::unistd::write(&reaped_end, &libc::EACCES.to_ne_bytes()).unwrap();
            drop(reaped_end);
            assert_eq!(
                statuses.settle(Pid::from_raw(3)).unwrap().unwrap(),
                ExecOutcome::Failed(libc::EACCES)
            );
            assert!(statuses.settle(Pid::from_raw(3)).is_none(), "read once");
            assert!(statuses.settle(Pid::from_raw(4)).is_none(), "nothing yet");
            let idle = tokio::time::timeout(std::time::Duration::from_millis(50), statuses.next());
            assert!(idle.await.is_err(), "nothing more to hear");
        });
    }
}
