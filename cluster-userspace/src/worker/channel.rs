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
        let (read, writer) = UnixStream::from_std(std_stream)?.into_split();
        Ok(Some(Self {
            reader: BufReader::new(read),
            writer,
        }))
    }

    /// The next thing the supervisor says; `None` once it closed the channel. Lines that are
    /// not JSON, or of an unknown type, are skipped.
    pub async fn recv(&mut self) -> io::Result<Option<Incoming>> {
        loop {
            let mut line = String::new();
            if self.reader.read_line(&mut line).await? == 0 {
                return Ok(None);
            }
            if let Some(incoming) = parse(&line) {
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
