//! What went wrong with a request, in classes (refused, reset, timeout, bad status, truncated,
//! other), and the counts per class a run reports.

use std::{collections::BTreeMap, error::Error as StdError, fmt, io};

use serde::{Deserialize, Serialize};

/// Why a request failed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ErrorClass {
    /// The connection was refused (no listener: RST in answer to the SYN).
    Refused,
    /// The connection was reset (RST) while the request was in flight.
    Reset,
    /// No whole answer within the timeout.
    Timeout,
    /// A whole answer with a status other than 2xx.
    BadStatus,
    /// The connection was closed (FIN) before a whole answer was read: no answer, part of the
    /// head, or a body shorter than announced.
    Truncated,
    /// Anything else: a source address that cannot be bound, an answer that is not HTTP.
    Other,
}

/// A failed request: its class and what happened, in words.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Failure {
    pub class: ErrorClass,
    pub detail: String,
}

impl Failure {
    /// A failure of `doing` with an I/O error.
    pub(crate) fn io(doing: &str, err: &io::Error) -> Self {
        Self {
            class: class_of_io(err),
            detail: format!("{doing}: {err}"),
        }
    }

    /// A failure of `doing` reported by hyper.
    pub(crate) fn hyper(doing: &str, err: &hyper::Error) -> Self {
        Self {
            class: class_of_hyper(err),
            detail: format!("{doing}: {}", Chain(err)),
        }
    }
}

/// The class of an I/O error.
fn class_of_io(err: &io::Error) -> ErrorClass {
    match err.kind() {
        io::ErrorKind::ConnectionRefused => ErrorClass::Refused,
        // EPIPE: the peer reset the connection before (or while) the request was written.
        io::ErrorKind::ConnectionReset
        | io::ErrorKind::ConnectionAborted
        | io::ErrorKind::BrokenPipe => ErrorClass::Reset,
        io::ErrorKind::UnexpectedEof => ErrorClass::Truncated,
        io::ErrorKind::TimedOut => ErrorClass::Timeout,
        _ => ErrorClass::Other,
    }
}

/// The class of a hyper error: that of the I/O error under it if there is one (hyper reports a
/// body cut short as `UnexpectedEof`), else a connection closed before the answer's head was
/// whole is truncated.
fn class_of_hyper(err: &hyper::Error) -> ErrorClass {
    let mut source: Option<&(dyn StdError + 'static)> = err.source();
    while let Some(cause) = source {
        if let Some(io) = cause.downcast_ref::<io::Error>() {
            return class_of_io(io);
        }
        source = cause.source();
    }
    if err.is_incomplete_message() {
        ErrorClass::Truncated
    } else if err.is_timeout() {
        ErrorClass::Timeout
    } else {
        ErrorClass::Other
    }
}

/// An error with its causes, `outer: inner: innermost`.
struct Chain<'a>(&'a dyn StdError);

impl fmt::Display for Chain<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.0)?;
        let mut source = self.0.source();
        while let Some(cause) = source {
            write!(f, ": {cause}")?;
            source = cause.source();
        }
        Ok(())
    }
}

/// Failed requests by class, and the kept-alive connections the server closed while idle.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ErrorCounts {
    pub refused: u64,
    pub reset: u64,
    pub timeout: u64,
    pub bad_status: u64,
    pub truncated: u64,
    pub other: u64,
    /// Kept-alive connections found closed by the server when the next request was about to
    /// be sent on them: no request was in flight, and the request went out on a new connection.
    /// Not a failed request, so not in [`ErrorCounts::failed`].
    pub idle_closed: u64,
    /// The statuses of the bad-status answers.
    pub statuses: BTreeMap<u16, u64>,
}

impl ErrorCounts {
    pub(crate) fn add(&mut self, class: ErrorClass) {
        *self.count_mut(class) += 1;
    }

    pub(crate) fn add_bad_status(&mut self, status: u16) {
        self.add(ErrorClass::BadStatus);
        *self.statuses.entry(status).or_insert(0) += 1;
    }

    /// The count of one class.
    #[must_use]
    pub fn count(&self, class: ErrorClass) -> u64 {
        match class {
            ErrorClass::Refused => self.refused,
            ErrorClass::Reset => self.reset,
            ErrorClass::Timeout => self.timeout,
            ErrorClass::BadStatus => self.bad_status,
            ErrorClass::Truncated => self.truncated,
            ErrorClass::Other => self.other,
        }
    }

    fn count_mut(&mut self, class: ErrorClass) -> &mut u64 {
        match class {
            ErrorClass::Refused => &mut self.refused,
            ErrorClass::Reset => &mut self.reset,
            ErrorClass::Timeout => &mut self.timeout,
            ErrorClass::BadStatus => &mut self.bad_status,
            ErrorClass::Truncated => &mut self.truncated,
            ErrorClass::Other => &mut self.other,
        }
    }

    /// Failed requests, all classes.
    #[must_use]
    pub fn failed(&self) -> u64 {
        ErrorClass::ALL.iter().map(|c| self.count(*c)).sum()
    }

    pub(crate) fn merge(&mut self, other: &Self) {
        for class in ErrorClass::ALL {
            *self.count_mut(class) += other.count(class);
        }
        self.idle_closed += other.idle_closed;
        for (status, n) in &other.statuses {
            *self.statuses.entry(*status).or_insert(0) += n;
        }
    }
}

impl ErrorClass {
    /// Every class, in report order.
    pub const ALL: [Self; 6] = [
        Self::Refused,
        Self::Reset,
        Self::Timeout,
        Self::BadStatus,
        Self::Truncated,
        Self::Other,
    ];

    /// The class's name in reports.
    #[must_use]
    pub fn name(self) -> &'static str {
        match self {
            Self::Refused => "refused",
            Self::Reset => "reset",
            Self::Timeout => "timeout",
            Self::BadStatus => "bad status",
            Self::Truncated => "truncated",
            Self::Other => "other",
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn io_errors_map_to_their_class() {
        let of = |kind| class_of_io(&io::Error::from(kind));
        assert_eq!(of(io::ErrorKind::ConnectionRefused), ErrorClass::Refused);
        assert_eq!(of(io::ErrorKind::ConnectionReset), ErrorClass::Reset);
        assert_eq!(of(io::ErrorKind::BrokenPipe), ErrorClass::Reset);
        assert_eq!(of(io::ErrorKind::UnexpectedEof), ErrorClass::Truncated);
        assert_eq!(of(io::ErrorKind::TimedOut), ErrorClass::Timeout);
        assert_eq!(of(io::ErrorKind::AddrNotAvailable), ErrorClass::Other);
    }

    #[test]
    fn counts_add_up_and_merge() {
        let mut counts = ErrorCounts::default();
        counts.add(ErrorClass::Reset);
        counts.add_bad_status(503);
        counts.add_bad_status(503);
        counts.idle_closed = 4;
        let mut total = ErrorCounts::default();
        total.merge(&counts);
        total.merge(&counts);
        assert_eq!(total.reset, 2);
        assert_eq!(total.bad_status, 4);
        assert_eq!(total.statuses, BTreeMap::from([(503, 4)]));
        assert_eq!(total.idle_closed, 8);
        assert_eq!(
            total.failed(),
            6,
            "idle-closed connections are not failed requests"
        );
    }
}
