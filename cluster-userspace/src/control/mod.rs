//! The control socket: a Unix stream socket on which the supervisor takes one JSON request per
//! connection (`cluster status`, `reload`, `stop`, `scale`, `drain`, `broadcast`, `send`) and
//! answers with one JSON line.
//!
//! - [`protocol`]: the requests and answers.
//! - [`paths`]: where the socket lives, and finding a running supervisor's.
//! - [`server`]: the supervisor's side.
//! - [`address_lock`]: one pool per address.
//! - [`client`]: the subcommands' side.

pub mod address_lock;
pub mod client;
pub mod paths;
pub mod protocol;
pub mod server;

use std::{io, path::PathBuf};

/// Why a control operation failed.
#[derive(Debug, thiserror::Error)]
pub enum ControlError {
    #[error(
        "no cluster supervisor is running: found no control socket in {dir}; start one with `cluster run`, or name its socket with --control PATH"
    )]
    NoneRunning { dir: PathBuf },
    #[error(
        "several cluster supervisors are running ({found}); choose one with --pid PID or --control PATH"
    )]
    Several { found: String },
    #[error("no supervisor listens on {path} (it exited?); check --control or --pid")]
    NotListening { path: PathBuf },
    #[error(
        "permission denied on the control socket {path}: run as the supervisor's user or as root"
    )]
    Denied { path: PathBuf },
    #[error(
        "another supervisor already listens on the control socket {path}; give this one its own with --control PATH"
    )]
    InUse { path: PathBuf },
    #[error("{op} {path} failed: {source}")]
    Io {
        op: &'static str,
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("the supervisor's answer could not be read: {0}")]
    BadAnswer(String),
    #[error("{0}")]
    Refused(String),
}
