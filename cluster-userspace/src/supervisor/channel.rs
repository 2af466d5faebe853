//! The message channel between the supervisor and each worker: a Unix stream socketpair whose
//! other end the worker gets as fd 4 (`CLUSTER_CHANNEL_FD`), carrying one JSON value per line
//! both ways.
//!
//! To the worker: `{"type":"drain"}` when it is taken out of service, and
//! `{"type":"message","message":…}` for `cluster broadcast` and `cluster send`. From the worker:
//! any JSON value per line, logged as a `worker message`. Writes go through a bounded queue and
//! a task per worker, so a worker that does not read never holds up the supervisor; lines that
//! do not fit are dropped and reported as not delivered.

use std::{io, os::fd::OwnedFd};

use nix::unistd::Pid;
use tokio::{
    io::{AsyncBufReadExt as _, AsyncReadExt as _, AsyncWriteExt as _, BufReader},
    net::UnixStream,
    sync::mpsc,
    task::JoinSet,
};
use tracing::{info, warn};

/// The longest line taken from a worker; the rest of a longer line is skipped.
const MAX_LINE: usize = 64 * 1024;
/// Lines queued for one worker before further ones are dropped.
const QUEUE: usize = 64;

/// The drain notice.
pub const DRAIN: &str = r#"{"type":"drain"}"#;

/// The supervisor's end of one worker's channel.
#[derive(Debug)]
pub struct WorkerChannel {
    outbox: mpsc::Sender<String>,
}

/// A socketpair: the supervisor's end and the worker's (close-on-exec; `spawn` moves it to fd 4).
pub fn pair() -> io::Result<(std::os::unix::net::UnixStream, OwnedFd)> {
    let (ours, theirs) = std::os::unix::net::UnixStream::pair()?;
    Ok((ours, theirs.into()))
}

impl WorkerChannel {
    /// Starts reading and writing `ours` for the worker `pid` of `slot`.
    pub fn start(
        ours: std::os::unix::net::UnixStream,
        slot: u32,
        pid: Pid,
        tasks: &mut JoinSet<()>,
    ) -> io::Result<Self> {
        ours.set_nonblocking(true)?;
        let stream = UnixStream::from_std(ours)?;
        let (read, mut write) = stream.into_split();
        let (outbox, mut queued) = mpsc::channel::<String>(QUEUE);
        tasks.spawn(async move {
            while let Some(mut line) = queued.recv().await {
                line.push('\n');
                if write.write_all(line.as_bytes()).await.is_err() {
                    break;
                }
            }
        });
        tasks.spawn(read_messages(read, slot, pid));
        Ok(Self { outbox })
    }

    /// Queues `line` (one JSON value, no newline); returns whether it was queued.
    pub fn send(&self, line: String) -> bool {
        self.outbox.try_send(line).is_ok()
    }
}

/// `{"type":"message","message":…}` for a custom message.
#[must_use]
pub fn custom(message: &serde_json::Value) -> String {
    serde_json::json!({ "type": "message", "message": message }).to_string()
}

/// Discards the rest of a line without holding it: buffer by buffer up to the newline. Returns
/// false at the end of the stream or on an error.
async fn skip_line(reader: &mut BufReader<tokio::net::unix::OwnedReadHalf>) -> bool {
    loop {
        let (found, used) = match reader.fill_buf().await {
            Ok([]) | Err(_) => return false,
            Ok(buffer) => match buffer.iter().position(|&b| b == b'\n') {
                Some(at) => (true, at + 1),
                None => (false, buffer.len()),
            },
        };
        reader.consume(used);
        if found {
            return true;
        }
    }
}

/// Logs each line the worker writes, until it closes its end.
async fn read_messages(read: tokio::net::unix::OwnedReadHalf, slot: u32, pid: Pid) {
    let mut reader = BufReader::new(read);
    loop {
        let mut line = Vec::new();
        let limit = u64::try_from(MAX_LINE).unwrap_or(u64::MAX);
        match (&mut reader).take(limit).read_until(b'\n', &mut line).await {
            Ok(0) | Err(_) => return,
            Ok(_) => {}
        }
        if line.last() != Some(&b'\n') {
            warn!(
                slot,
                pid = pid.as_raw(),
                "worker message longer than 64 KiB; skipped"
            );
            if !skip_line(&mut reader).await {
                return;
            }
            continue;
        }
        match serde_json::from_slice::<serde_json::Value>(&line) {
            Ok(message) => {
                info!(target: "worker", slot, pid = pid.as_raw(), json = %message, "worker message");
            }
            Err(err) => {
                warn!(slot, pid = pid.as_raw(), error = %err, "worker message is not JSON; skipped");
            }
        }
    }
}
