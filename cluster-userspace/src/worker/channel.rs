//! The worker's end of the message channel to the supervisor, for Rust worker code: fd 4 as
//! `CLUSTER_CHANNEL_FD` names it, one JSON value per line both ways (the protocol is in the
//! README, for workers in any language).

use std::{
    io,
    os::fd::{FromRawFd as _, OwnedFd},
};

use tokio::{
    io::{AsyncBufReadExt as _, AsyncWriteExt as _, BufReader},
    net::{
        UnixStream,
        unix::{OwnedReadHalf, OwnedWriteHalf},
    },
};

use crate::handoff;

/// What the supervisor says.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Incoming {
    /// Stop taking work: finish what was accepted, then exit.
    Drain,
    /// A `cluster broadcast` or `cluster send` message.
    Message(serde_json::Value),
}

/// The channel, open.
#[derive(Debug)]
pub struct Channel {
    reader: BufReader<OwnedReadHalf>,
    writer: OwnedWriteHalf,
    /// The line read so far: kept across calls, so a [`Channel::recv`] cancelled halfway (a
    /// `select!` branch that lost) loses nothing.
    partial: Vec<u8>,
}

impl Channel {
    /// Takes the channel the supervisor handed over, if `CLUSTER_CHANNEL_FD` names one. Call
    /// once, inside a tokio runtime.
    pub fn take() -> io::Result<Option<Self>> {
        let Some(fd) = std::env::var(handoff::CHANNEL)
            .ok()
            .and_then(|v| v.parse::<i32>().ok())
        else {
            return Ok(None);
        };
        // SAFETY: the supervisor passed this fd for us alone; it is not used elsewhere.
        let owned = unsafe { OwnedFd::from_raw_fd(fd) };
        let std_stream = std::os::unix::net::UnixStream::from(owned);
        std_stream.set_nonblocking(true)?;
        Ok(Some(Self::new(UnixStream::from_std(std_stream)?)))
    }

    fn new(stream: UnixStream) -> Self {
        let (read, writer) = stream.into_split();
        Self {
            reader: BufReader::new(read),
            writer,
            partial: Vec::new(),
        }
    }

    /// The next thing the supervisor says; `None` once it closed the channel. Lines that are
    /// not JSON, or of an unknown type, are skipped. Cancel-safe: `read_until` appends what it
    /// read to `partial` before it can be cancelled, and the next call goes on from there.
    pub async fn recv(&mut self) -> io::Result<Option<Incoming>> {
        loop {
            if self.reader.read_until(b'\n', &mut self.partial).await? == 0 {
                return Ok(None);
            }
            if !self.partial.ends_with(b"\n") {
                // The channel closed in the middle of a line: what came is all there is.
                self.partial.clear();
                return Ok(None);
            }
            let line = std::mem::take(&mut self.partial);
            if let Some(incoming) = parse(&String::from_utf8_lossy(&line)) {
                return Ok(Some(incoming));
            }
        }
    }

    /// Sends `message` to the supervisor, which logs it.
    pub async fn send(&mut self, message: &serde_json::Value) -> io::Result<()> {
        let mut line = message.to_string();
        line.push('\n');
        self.writer.write_all(line.as_bytes()).await
    }
}

fn parse(line: &str) -> Option<Incoming> {
    let value: serde_json::Value = serde_json::from_str(line.trim()).ok()?;
    match value.get("type")?.as_str()? {
        "drain" => Some(Incoming::Drain),
        "message" => Some(Incoming::Message(value.get("message")?.clone())),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_cancelled_recv_loses_nothing() {
        let (ours, theirs) = UnixStream::pair().expect("socketpair");
        let mut channel = Channel::new(theirs);
        let (_, mut supervisor) = ours.into_split();
        supervisor
            .write_all(b"{\"type\":\"message\",")
            .await
            .expect("write");
        let cancelled =
            tokio::time::timeout(std::time::Duration::from_millis(50), channel.recv()).await;
        assert!(cancelled.is_err(), "a half line is no message");
        supervisor
            .write_all(b"\"message\":7}\n{\"type\":\"drain\"}\n")
            .await
            .expect("write");
        assert_eq!(
            channel.recv().await.expect("recv"),
            Some(Incoming::Message(serde_json::json!(7)))
        );
        assert_eq!(channel.recv().await.expect("recv"), Some(Incoming::Drain));
        drop(supervisor);
        assert_eq!(channel.recv().await.expect("recv"), None);
    }

    #[test]
    fn lines_parse() {
        assert_eq!(parse("{\"type\":\"drain\"}\n"), Some(Incoming::Drain));
        assert_eq!(
            parse("{\"type\":\"message\",\"message\":{\"users\":3}}"),
            Some(Incoming::Message(serde_json::json!({"users": 3})))
        );
        assert_eq!(parse("{\"type\":\"later\"}"), None);
        assert_eq!(parse("garbage"), None);
    }
}
