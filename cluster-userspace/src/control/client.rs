//! The subcommands' side of the control socket: one request, one answer.

use std::{
    io::{self, BufRead as _, BufReader, Write as _},
    os::unix::net::UnixStream,
    path::Path,
};

use super::{
    ControlError,
    protocol::{Answer, Request},
};

/// Sends `request` to the supervisor at `path` and returns its answer; a refusal (`ok: false`)
/// is an error carrying the supervisor's reason.
pub fn call(path: &Path, request: &Request) -> Result<Answer, ControlError> {
    let mut stream = UnixStream::connect(path).map_err(|source| match source.kind() {
        io::ErrorKind::NotFound | io::ErrorKind::ConnectionRefused => ControlError::NotListening {
            path: path.to_owned(),
        },
        io::ErrorKind::PermissionDenied => ControlError::Denied {
            path: path.to_owned(),
        },
        _ => ControlError::Io {
            op: "connecting to the control socket",
            path: path.to_owned(),
            source,
        },
    })?;
    let io_error = |op| {
        move |source| ControlError::Io {
            op,
            path: path.to_owned(),
            source,
        }
    };
    let mut line =
        serde_json::to_string(request).map_err(|e| ControlError::BadAnswer(e.to_string()))?;
    line.push('\n');
    // A supervisor that refuses the peer answers before reading the request and closes, so the
    // write may fail with EPIPE while its answer waits to be read.
    let sent = stream.write_all(line.as_bytes());
    let mut answer = String::new();
    let read = BufReader::new(stream).read_line(&mut answer);
    if answer.is_empty() {
        // A supervisor that closes without reading the request makes the write fail with EPIPE
        // or the read with a reset: both mean it closed without answering.
        let closed = |e: &io::Error| {
            matches!(
                e.kind(),
                io::ErrorKind::ConnectionReset | io::ErrorKind::BrokenPipe
            )
        };
        sent.or_else(|e| if closed(&e) { Ok(()) } else { Err(e) })
            .map_err(io_error("sending to the control socket"))?;
        read.or_else(|e| if closed(&e) { Ok(0) } else { Err(e) })
            .map_err(io_error("reading from the control socket"))?;
        return Err(ControlError::BadAnswer(
            "the supervisor closed the connection without answering: it exited, or serves too many control connections at once (try again)".to_owned(),
        ));
    }
    let answer: Answer =
        serde_json::from_str(&answer).map_err(|e| ControlError::BadAnswer(e.to_string()))?;
    if answer.ok {
        Ok(answer)
    } else {
        Err(ControlError::Refused(
            answer.error.unwrap_or_else(|| "refused".to_owned()),
        ))
    }
}
