//! The names of the socket hand-off between the supervisor and a worker: the systemd protocol of
//! sd_listen_fds(3) plus the worker's slot. Both ends ([`crate::supervisor::spawn`] and the demo
//! worker) take them from here.

use std::os::fd::RawFd;

/// The fd a worker finds its listening socket on (`SD_LISTEN_FDS_START`).
pub const LISTEN_FD: RawFd = 3;
/// How many sockets were passed (always 1).
pub const LISTEN_FDS: &str = "LISTEN_FDS";
/// The pid the sockets are meant for: the worker's own.
pub const LISTEN_PID: &str = "LISTEN_PID";
/// The socket's name.
pub const LISTEN_FDNAMES: &str = "LISTEN_FDNAMES";
/// The worker's slot number.
pub const WORKER_ID: &str = "CLUSTER_WORKER_ID";
/// The fd a worker finds its message channel to the supervisor on (see [`CHANNEL`]).
pub const CHANNEL_FD: RawFd = 4;
/// Names [`CHANNEL_FD`]: a Unix stream socket carrying newline-delimited JSON both ways.
pub const CHANNEL: &str = "CLUSTER_CHANNEL_FD";
/// Set (to `1`) when the supervisor captures the worker's stdout and stderr and logs each line
/// with a timestamp of its own; the demo worker then leaves timestamps out of its lines.
pub const OUTPUT_CAPTURED: &str = "CLUSTER_OUTPUT_CAPTURED";
