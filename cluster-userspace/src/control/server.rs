//! The supervisor's side of the control socket: accepts connections, refuses peers of another
//! uid than the supervisor's (except root, by SO_PEERCRED), reads one bounded request line with
//! a timeout, and hands it to the event loop as a [`Pending`] request, whose answer it writes
//! back. Every connection is its own task, so a slow or silent client never holds up the loop;
//! at most [`MAX_CONNECTIONS`] are served at once, and each gets [`IO_TIMEOUT`] to send its
//! request and to take its answer, so a flood of idle clients costs bounded memory.

use std::{
    fs, io,
    os::unix::fs::PermissionsExt as _,
    path::{Path, PathBuf},
    sync::Arc,
    time::Duration,
};

use tokio::{
    io::{AsyncBufReadExt as _, AsyncReadExt as _, AsyncWriteExt as _, BufReader},
    net::{UnixListener, UnixStream},
    sync::{OwnedSemaphorePermit, Semaphore, mpsc, oneshot},
    time::timeout,
};
use tracing::{debug, warn};

use super::{
    ControlError,
    protocol::{Answer, MAX_REQUEST, Request},
};

/// How long a client gets to send its request line, and to read its answer.
pub const IO_TIMEOUT: Duration = Duration::from_secs(10);
/// Connections served at once; one more is closed at once, with a warning.
pub const MAX_CONNECTIONS: usize = 64;

/// A request waiting for the event loop's answer.
#[derive(Debug)]
pub struct Pending {
    pub request: Request,
    /// The client's pid, for the log.
    pub peer_pid: Option<i32>,
    reply: oneshot::Sender<Answer>,
}

impl Pending {
    /// Sends the answer (dropped if the client is gone).
    pub fn answer(self, answer: Answer) {
        let _ = self.reply.send(answer);
    }
}

/// The listening control socket; its file is removed when dropped.
#[derive(Debug)]
pub struct ControlServer {
    listener: UnixListener,
    path: PathBuf,
    uid: u32,
    sender: mpsc::Sender<Pending>,
    receiver: mpsc::Receiver<Pending>,
    /// One permit per connection being served.
    permits: Arc<Semaphore>,
}

impl ControlServer {
    /// Listens on `path` with mode 0600. A socket file left by a supervisor that died is
    /// replaced; one that a live supervisor listens on is an error.
    pub fn bind(path: &Path) -> Result<Self, ControlError> {
        if let Ok(meta) = fs::symlink_metadata(path) {
            if !std::os::unix::fs::FileTypeExt::is_socket(&meta.file_type()) {
                return Err(ControlError::Io {
                    op: "using the control socket path",
                    path: path.to_owned(),
                    source: io::Error::other(
                        "a file that is not a socket is there; choose another --control PATH",
                    ),
                });
            }
            match std::os::unix::net::UnixStream::connect(path) {
                Ok(_) => {
                    return Err(ControlError::InUse {
                        path: path.to_owned(),
                    });
                }
                Err(err) if err.kind() == io::ErrorKind::ConnectionRefused => {
                    let _ = fs::remove_file(path);
                }
                Err(source) => {
                    return Err(ControlError::Io {
                        op: "checking the old control socket",
                        path: path.to_owned(),
                        source,
                    });
                }
            }
        }
        let io_error = |op| {
            move |source| ControlError::Io {
                op,
                path: path.to_owned(),
                source,
            }
        };
        let listener = UnixListener::bind(path).map_err(io_error("binding the control socket"))?;
        fs::set_permissions(path, fs::Permissions::from_mode(0o600))
            .map_err(io_error("setting the mode of the control socket"))?;
        let (sender, receiver) = mpsc::channel(16);
        Ok(Self {
            listener,
            path: path.to_owned(),
            uid: nix::unistd::Uid::effective().as_raw(),
            sender,
            receiver,
            permits: Arc::new(Semaphore::new(MAX_CONNECTIONS)),
        })
    }

    /// Where the socket is.
    #[must_use]
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The next request. Accepts connections meanwhile, each served by its own task.
    /// Cancel-safe: both accepting and receiving are.
    pub async fn recv(&mut self) -> Pending {
        loop {
            tokio::select! {
                accepted = self.listener.accept() => match accepted {
                    Ok((stream, _)) => match Arc::clone(&self.permits).try_acquire_owned() {
                        Ok(permit) => {
                            tokio::spawn(serve(stream, self.uid, self.sender.clone(), permit));
                        }
                        Err(_) => warn!(
                            limit = MAX_CONNECTIONS,
                            "control connection closed: too many served at once"
                        ),
                    },
                    Err(err) => {
                        warn!(error = %err, "accepting on the control socket failed");
                        tokio::time::sleep(Duration::from_millis(10)).await;
                    }
                },
                Some(pending) = self.receiver.recv() => return pending,
            }
        }
    }
}

impl Drop for ControlServer {
    fn drop(&mut self) {
        let _ = fs::remove_file(&self.path);
    }
}

/// Serves one connection: checks the peer, reads the request, waits for the answer, writes it.
/// `_permit` counts it among the connections served until it ends.
async fn serve(
    stream: UnixStream,
    own_uid: u32,
    requests: mpsc::Sender<Pending>,
    _permit: OwnedSemaphorePermit,
) {
    let peer = stream.peer_cred().ok();
    let peer_pid = peer.and_then(|c| c.pid());
    let (read, mut write) = stream.into_split();
    let answer = match peer.map(|c| c.uid()) {
        Some(uid) if uid == own_uid || uid == 0 => match read_request(read).await {
            Ok(request) => {
                let (reply, answer) = oneshot::channel();
                let pending = Pending {
                    request,
                    peer_pid,
                    reply,
                };
                if requests.send(pending).await.is_err() {
                    return;
                }
                answer
                    .await
                    .unwrap_or_else(|_| Answer::error("the supervisor is shutting down"))
            }
            Err(reason) => {
                debug!(peer_pid, reason = %reason, "bad control request");
                Answer::error(reason)
            }
        },
        Some(uid) => {
            warn!(peer_pid, uid, "control connection refused: another user");
            Answer::error(format!(
                "refused: uid {uid} is neither the supervisor's ({own_uid}) nor root"
            ))
        }
        None => Answer::error("refused: the peer's credentials could not be read"),
    };
    let mut line = serde_json::to_string(&answer).unwrap_or_else(|_| "{\"ok\":false}".to_owned());
    line.push('\n');
    if timeout(IO_TIMEOUT, write.write_all(line.as_bytes()))
        .await
        .is_err()
    {
        debug!(peer_pid, "control client did not take its answer in time");
    }
}

/// Reads one request line: at most [`MAX_REQUEST`] bytes, within [`IO_TIMEOUT`].
async fn read_request(read: tokio::net::unix::OwnedReadHalf) -> Result<Request, String> {
    let limit = u64::try_from(MAX_REQUEST).unwrap_or(u64::MAX);
    let mut reader = BufReader::new(read).take(limit);
    let mut line = String::new();
    match timeout(IO_TIMEOUT, reader.read_line(&mut line)).await {
        Err(_) => {
            return Err(format!("no request line within {}s", IO_TIMEOUT.as_secs()));
        }
        Ok(Err(err)) => return Err(format!("malformed request: {err}")),
        Ok(Ok(_)) => {}
    }
    if !line.ends_with('\n') && line.len() >= MAX_REQUEST {
        return Err(format!("request longer than {MAX_REQUEST} bytes"));
    }
    parse(&line)
}

/// Parses a request line.
fn parse(line: &str) -> Result<Request, String> {
    if line.trim().is_empty() {
        return Err(
            "empty request: send one JSON object such as {\"command\":\"status\"}".to_owned(),
        );
    }
    serde_json::from_str(line.trim()).map_err(|err| format!("malformed request: {err}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn requests_parse_and_bad_ones_say_why() {
        assert_eq!(parse("{\"command\":\"status\"}\n"), Ok(Request::Status));
        assert_eq!(
            parse("{\"command\":\"scale\",\"workers\":3}"),
            Ok(Request::Scale { workers: 3 })
        );
        assert_eq!(
            parse("{\"command\":\"send\",\"slot\":1,\"message\":{\"a\":1}}"),
            Ok(Request::Send {
                slot: 1,
                message: serde_json::json!({"a": 1})
            })
        );
        for bad in [
            "",
            "nonsense",
            "{\"command\":\"explode\"}",
            "{\"command\":\"scale\"}",
            "{\"command\":\"scale\",\"workers\":-1}",
        ] {
            let err = parse(bad).unwrap_err();
            assert!(!err.contains('\n'), "{err}");
            assert!(
                err.starts_with("malformed request") || err.starts_with("empty request"),
                "{bad}: {err}"
            );
        }
    }
}
