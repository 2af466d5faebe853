//! Logging: one tracing subscriber for the supervisor and the demo workers, filtered by
//! `RUST_LOG` (default `info`), written to stderr. Also receives the `log` records aya emits.

use std::io::IsTerminal as _;

use tracing_subscriber::EnvFilter;

/// Installs the subscriber. Call once, first thing in `main`.
pub fn init() {
    let (filter, bad_filter) = match EnvFilter::try_from_default_env() {
        Ok(filter) => (filter, None),
        Err(err) => (
            EnvFilter::new("info"),
            std::env::var("RUST_LOG").ok().map(|v| (v, err)),
        ),
    };
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal())
        .init();
    if let Some((value, err)) = bad_filter {
        tracing::warn!(rust_log = %value, error = %err, "ignoring invalid RUST_LOG, logging at info");
    }
}
