//! Worker output: each worker's stdout and stderr are pipes the supervisor reads, and every line
//! is logged as an event with the worker's `slot`, `pid` and `stream`, so the pool's log says
//! which worker said what (what `pm2 logs` shows), in text or JSON like the rest of the log.
//!
//! Reading never blocks or starves the event loop: each pipe is read by its own task on the
//! supervisor's runtime, without blocking, and a task that always finds data still yields its
//! turn. A line longer than [`MAX_LINE`] bytes is cut there, with a marker. The last lines of
//! each worker's stderr are also kept ([`StderrTail`]), for the report of a slot that gives up.

use std::{
    collections::VecDeque,
    fmt, io,
    os::fd::{AsFd as _, BorrowedFd, OwnedFd},
    sync::{Arc, Mutex},
    time::Duration,
};

use nix::{fcntl::OFlag, unistd::Pid};
use tokio::{net::unix::pipe, sync::watch, task::JoinSet};
use tracing::{info, warn};

/// Longest line logged whole; the rest of a longer line is dropped.
pub const MAX_LINE: usize = 16 * 1024;
/// Lines of each worker's stderr kept in its [`StderrTail`].
pub const TAIL_LINES: usize = 10;
/// Longest line kept in a [`StderrTail`], in bytes; the rest is cut.
const TAIL_LINE_BYTES: usize = 1024;
/// How long the supervisor waits at exit for output the workers wrote just before they exited.
const DRAIN_AT_EXIT: Duration = Duration::from_millis(500);

/// Which of a worker's streams a line came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stream {
    Stdout,
    Stderr,
}

impl fmt::Display for Stream {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::Stdout => "stdout",
            Self::Stderr => "stderr",
        })
    }
}

/// The two pipes of one worker being started.
#[derive(Debug)]
pub struct WorkerPipes {
    stdout: (OwnedFd, OwnedFd),
    stderr: (OwnedFd, OwnedFd),
}

impl WorkerPipes {
    /// Two close-on-exec pipes; the child's ends become its fd 1 and 2 (dup2 clears the flag).
    pub fn new() -> io::Result<Self> {
        let pipe = || nix::unistd::pipe2(OFlag::O_CLOEXEC).map_err(io::Error::from);
        Ok(Self {
            stdout: pipe()?,
            stderr: pipe()?,
        })
    }

    /// The write ends, for the child's stdout and stderr.
    #[must_use]
    pub fn child_ends(&self) -> (BorrowedFd<'_>, BorrowedFd<'_>) {
        (self.stdout.1.as_fd(), self.stderr.1.as_fd())
    }

    /// Closes our copies of the write ends (so a pipe ends when the worker and whatever it
    /// started have closed theirs) and starts a reader task for each stream. Returns the tail
    /// of the worker's stderr, which its reader keeps up to date.
    pub fn forward(self, slot: u32, pid: Pid, tasks: &mut JoinSet<()>) -> StderrTail {
        let (tail, keeper) = StderrTail::new();
        let source = |stream| Source { slot, pid, stream };
        tasks.spawn(forward(self.stdout.0, source(Stream::Stdout), None));
        tasks.spawn(forward(self.stderr.0, source(Stream::Stderr), Some(keeper)));
        tail
    }
}

/// The last [`TAIL_LINES`] lines one worker wrote to stderr, each cut at 1 KiB, and whether its
/// stderr has ended. A worker's exit is often reaped before its reader has read the last lines
/// it wrote: [`StderrTail::ended`] waits for them.
#[derive(Debug, Clone)]
pub struct StderrTail {
    lines: Arc<Mutex<VecDeque<String>>>,
    /// Closed when the reader is done: every process holding the pipe closed it.
    reader: watch::Receiver<()>,
}

/// The reader's side of a [`StderrTail`]; dropping it marks the stream ended.
#[derive(Debug)]
struct TailKeeper {
    lines: Arc<Mutex<VecDeque<String>>>,
    _done: watch::Sender<()>,
}

impl StderrTail {
    fn new() -> (Self, TailKeeper) {
        let lines = Arc::new(Mutex::new(VecDeque::with_capacity(TAIL_LINES)));
        let (done, reader) = watch::channel(());
        let keeper = TailKeeper {
            lines: Arc::clone(&lines),
            _done: done,
        };
        (Self { lines, reader }, keeper)
    }

    /// Waits, at most `timeout`, until the worker's stderr has ended and every line it wrote
    /// was read. Returns whether it ended.
    pub async fn ended(&self, timeout: Duration) -> bool {
        let mut reader = self.reader.clone();
        // Nothing is ever sent: `changed` returns only once the reader dropped its sender.
        let closed = async { while reader.changed().await.is_ok() {} };
        tokio::time::timeout(timeout, closed).await.is_ok()
    }

    /// The lines kept, oldest first.
    #[must_use]
    pub fn lines(&self) -> Vec<String> {
        self.lines
            .lock()
            .map(|lines| lines.iter().cloned().collect())
            .unwrap_or_default()
    }
}

impl TailKeeper {
    fn push(&self, line: &[u8]) {
        let mut text = String::from_utf8_lossy(line).into_owned();
        if text.len() > TAIL_LINE_BYTES {
            let mut end = TAIL_LINE_BYTES;
            while !text.is_char_boundary(end) {
                end -= 1;
            }
            text.truncate(end);
            text.push_str(" [cut]");
        }
        if let Ok(mut lines) = self.lines.lock() {
            if lines.len() == TAIL_LINES {
                lines.pop_front();
            }
            lines.push_back(text);
        }
    }
}

/// Waits (briefly) for the reader tasks to log what the workers wrote before they exited.
pub async fn drain(tasks: &mut JoinSet<()>) {
    let all = async { while tasks.join_next().await.is_some() {} };
    let _ = tokio::time::timeout(DRAIN_AT_EXIT, all).await;
}

/// Where a line came from.
#[derive(Debug, Clone, Copy)]
struct Source {
    slot: u32,
    pid: Pid,
    stream: Stream,
}

impl Source {
    fn log(self, line: &[u8], cut: bool) {
        let text = String::from_utf8_lossy(line);
        let (slot, pid, stream) = (self.slot, self.pid.as_raw(), self.stream);
        if cut {
            info!(target: "worker", slot, pid, %stream, cut, "{text} [line cut at 16 KiB]");
        } else {
            info!(target: "worker", slot, pid, %stream, "{text}");
        }
    }
}

async fn forward(read: OwnedFd, source: Source, tail: Option<TailKeeper>) {
    let pipe = match pipe::Receiver::from_owned_fd(read) {
        Ok(pipe) => pipe,
        Err(err) => {
            warn!(slot = source.slot, pid = source.pid.as_raw(), stream = %source.stream,
                  error = %err, "cannot read the worker's output; it is discarded");
            return;
        }
    };
    let mut buf = vec![0u8; 8192];
    let mut lines = LineSplitter::default();
    let mut emit = |line: &[u8], cut: bool| {
        source.log(line, cut);
        if let Some(tail) = &tail {
            tail.push(line);
        }
    };
    loop {
        if pipe.readable().await.is_err() {
            break;
        }
        match pipe.try_read(&mut buf) {
            Ok(0) => break,
            Ok(n) => {
                lines.push(&buf[..n], &mut emit);
                // `readable()` is ready at once while the pipe has data, and a worker that
                // never stops printing would keep it so: yield to the event loop (signals,
                // timers) at the runtime's usual pace.
                tokio::task::consume_budget().await;
            }
            Err(err) if err.kind() == io::ErrorKind::WouldBlock => {}
            Err(err) => {
                warn!(slot = source.slot, pid = source.pid.as_raw(), stream = %source.stream,
                      error = %err, "reading the worker's output failed");
                break;
            }
        }
    }
    lines.finish(&mut emit);
}

/// Splits a byte stream into lines (without their `\n` or `\r\n`) of at most [`MAX_LINE`]
/// bytes. A longer line is passed on cut (`cut = true`) as soon as it is known to be too long,
/// and the rest of it, up to its newline, is dropped.
#[derive(Debug, Default)]
pub struct LineSplitter {
    line: Vec<u8>,
    /// The current line was already passed on cut; drop bytes until its newline.
    cut: bool,
}

impl LineSplitter {
    /// Takes the next bytes of the stream; calls `emit(line, cut)` for each line they end.
    pub fn push(&mut self, mut data: &[u8], emit: &mut impl FnMut(&[u8], bool)) {
        while !data.is_empty() {
            let end = data.iter().position(|b| *b == b'\n');
            let (part, rest) = match end {
                Some(end) => (&data[..end], &data[end + 1..]),
                None => (data, &[][..]),
            };
            self.take(part, emit);
            if end.is_some() {
                if !self.cut {
                    let line = self.line.strip_suffix(b"\r").unwrap_or(&self.line);
                    emit(line, false);
                }
                self.line.clear();
                self.cut = false;
            }
            data = rest;
        }
    }

    /// The stream ended: passes on a last line that had no newline.
    pub fn finish(&mut self, emit: &mut impl FnMut(&[u8], bool)) {
        if !self.cut && !self.line.is_empty() {
            emit(&self.line, false);
        }
        self.line.clear();
        self.cut = false;
    }

    fn take(&mut self, part: &[u8], emit: &mut impl FnMut(&[u8], bool)) {
        if self.cut {
            return;
        }
        let room = MAX_LINE - self.line.len();
        if part.len() <= room {
            self.line.extend_from_slice(part);
        } else {
            self.line.extend_from_slice(&part[..room]);
            emit(&self.line, true);
            self.line.clear();
            self.cut = true;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn split(chunks: &[&[u8]]) -> Vec<(String, bool)> {
        let mut out = Vec::new();
        let mut splitter = LineSplitter::default();
        let mut emit = |line: &[u8], cut: bool| {
            out.push((String::from_utf8_lossy(line).into_owned(), cut));
        };
        for chunk in chunks {
            splitter.push(chunk, &mut emit);
        }
        splitter.finish(&mut emit);
        out
    }

    #[test]
    fn lines_across_chunks() {
        assert_eq!(
            split(&[b"one\ntw", b"o\r\n", b"\nthree"]),
            vec![
                ("one".into(), false),
                ("two".into(), false),
                (String::new(), false),
                ("three".into(), false)
            ]
        );
        assert!(split(&[b""]).is_empty());
    }

    #[test]
    fn long_lines_are_cut_once_and_the_rest_dropped() {
        let exact = vec![b'a'; MAX_LINE];
        let long = vec![b'b'; MAX_LINE * 3 + 5];
        let mut stream = exact.clone();
        stream.push(b'\n');
        stream.extend_from_slice(&long);
        stream.extend_from_slice(b"\nafter\n");
        // Fed in odd chunk sizes, as a pipe delivers it.
        let chunks: Vec<&[u8]> = stream.chunks(7000).collect();
        let lines = split(&chunks);
        assert_eq!(
            lines.len(),
            3,
            "{:?}",
            lines.iter().map(|l| l.0.len()).collect::<Vec<_>>()
        );
        assert_eq!(lines[0], (String::from_utf8(exact).unwrap(), false));
        assert_eq!(lines[1].0.len(), MAX_LINE);
        assert!(lines[1].1, "the long line is marked as cut");
        assert_eq!(lines[2], ("after".into(), false));
    }

    #[test]
    fn the_tail_keeps_the_last_lines_cut_short_and_ends_with_its_reader() {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_time()
            .build()
            .unwrap();
        let (tail, keeper) = StderrTail::new();
        for n in 0..15 {
            keeper.push(format!("line {n}").as_bytes());
        }
        keeper.push(&vec![b'x'; TAIL_LINE_BYTES + 10]);
        let lines = tail.lines();
        assert_eq!(lines.len(), TAIL_LINES);
        assert_eq!(lines[0], "line 6");
        assert_eq!(
            lines[TAIL_LINES - 1].len(),
            TAIL_LINE_BYTES + " [cut]".len()
        );
        runtime.block_on(async {
            assert!(!tail.ended(Duration::from_millis(10)).await);
            drop(keeper);
            assert!(tail.ended(Duration::from_secs(5)).await);
        });
    }

    #[test]
    fn a_long_last_line_without_newline_is_cut_too() {
        let lines = split(&[&vec![b'x'; MAX_LINE + 1]]);
        assert_eq!(lines.len(), 1);
        assert!(lines[0].1);
    }
}
