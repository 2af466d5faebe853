//! Logging: one tracing subscriber for the supervisor and the demo workers, filtered by
//! `RUST_LOG` (default `info`), written to stderr as text or JSON. Also receives the `log`
//! records aya emits.
//!
//! Writing the log never stops or stalls the process. Lines go through a bounded queue to a
//! writer thread (tracing-appender's lossy `non_blocking`): when stderr's reader stalls, the
//! queue fills and further lines are dropped; when the reader has gone (`cluster run | head`, a
//! log shipper that restarts), a write fails with EPIPE and the line is dropped. Both are
//! counted ([`dropped_lines`]) instead of freezing or ending the supervisor and with it the whole
//! pool.

use std::{
    io::{self, IsTerminal as _, Write},
    sync::{
        OnceLock,
        atomic::{AtomicU64, Ordering},
    },
};

use tracing_appender::non_blocking::{ErrorCounter, NonBlockingBuilder, WorkerGuard};
use tracing_subscriber::EnvFilter;

use crate::cli::LogFormat;

/// Crates whose debug output is their own internals (aya logs every BTF fix-up and relocation).
/// A bare `RUST_LOG=debug` means this project's debug output; these stay at `warn` unless
/// `RUST_LOG` names them (`RUST_LOG=debug,aya=debug`).
const QUIET_CRATES: [&str; 3] = ["aya", "aya_obj", "aya_log"];

/// Log lines whose write to stderr failed since the process started.
static FAILED_WRITES: AtomicU64 = AtomicU64::new(0);
/// Lines dropped because the queue to the writer thread was full.
static QUEUE_DROPS: OnceLock<ErrorCounter> = OnceLock::new();
/// Lines the queue holds before it drops; at about 200 bytes a line, some megabytes.
const QUEUED_LINES: usize = 16_384;

/// How the log looks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Style {
    pub format: LogFormat,
    /// Whether each line starts with a timestamp. A demo worker whose output the supervisor
    /// captures leaves it out: the supervisor's line carries one.
    pub timestamps: bool,
}

/// Installs the subscriber and starts the writer thread. Call once, first thing in `main`, and
/// keep the guard until the end: dropping it writes out what is still queued. In the supervisor,
/// block the signals it handles before this, so the writer thread is born with them blocked.
pub fn init(style: Style) -> WorkerGuard {
    let requested = std::env::var("RUST_LOG").ok();
    let (filter, bad_filter) = match EnvFilter::try_new(filter_directives(requested.as_deref())) {
        Ok(filter) => (filter, None),
        Err(err) => (
            EnvFilter::new(filter_directives(None)),
            requested.map(|value| (value, err)),
        ),
    };
    let (writer, guard) = NonBlockingBuilder::default()
        .lossy(true)
        .buffered_lines_limit(QUEUED_LINES)
        .thread_name("cluster-log")
        .finish(LogWriter);
    let _ = QUEUE_DROPS.set(writer.error_counter());
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(writer)
        .log_internal_errors(false);
    match (style.format, style.timestamps) {
        (LogFormat::Json, _) => builder.json().init(),
        (LogFormat::Text, true) => builder.with_ansi(io::stderr().is_terminal()).init(),
        (LogFormat::Text, false) => builder
            .without_time()
            .with_target(false)
            .with_ansi(false)
            .init(),
    }
    if let Some((value, err)) = bad_filter {
        tracing::warn!(rust_log = %value, error = %err, "ignoring invalid RUST_LOG, logging at info");
    }
    guard
}

/// The filter for a `RUST_LOG` value: the value itself (default `info`), plus `warn` for each of
/// [`QUIET_CRATES`] it does not name.
fn filter_directives(rust_log: Option<&str>) -> String {
    let mut directives = rust_log
        .filter(|v| !v.trim().is_empty())
        .unwrap_or("info")
        .to_owned();
    for krate in QUIET_CRATES {
        let named = directives.split(',').any(|d| {
            d.split('=').next().is_some_and(|target| {
                target.trim() == krate || target.trim().starts_with(&format!("{krate}::"))
            })
        });
        if !named {
            directives.push_str(&format!(",{krate}=warn"));
        }
    }
    directives
}

/// How many log lines were dropped since the start: the queue was full (stderr's reader
/// stalled) or the write failed (stderr closed).
#[must_use]
pub fn dropped_lines() -> u64 {
    let queued = QUEUE_DROPS
        .get()
        .map_or(0, |c| u64::try_from(c.dropped_lines()).unwrap_or(u64::MAX));
    FAILED_WRITES.load(Ordering::Relaxed).saturating_add(queued)
}

/// stderr, with every write error swallowed and counted. The writer thread writes one event per
/// `write_all`, so one error is one dropped line.
#[derive(Debug, Clone, Copy)]
struct LogWriter;

impl Write for LogWriter {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.write_all(buf)?;
        Ok(buf.len())
    }

    fn write_all(&mut self, buf: &[u8]) -> io::Result<()> {
        if io::stderr().lock().write_all(buf).is_err() {
            FAILED_WRITES.fetch_add(1, Ordering::Relaxed);
        }
        Ok(())
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

/// Writes `line` to stderr for a person to read, ignoring a closed stderr: the last words of a
/// process (its exit error) must not turn into a panic.
pub fn print_error(line: &str) {
    let _ = writeln!(io::stderr().lock(), "{line}");
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bare_levels_keep_aya_quiet() {
        assert_eq!(
            filter_directives(Some("debug")),
            "debug,aya=warn,aya_obj=warn,aya_log=warn"
        );
        assert_eq!(
            filter_directives(None),
            "info,aya=warn,aya_obj=warn,aya_log=warn"
        );
        assert_eq!(
            filter_directives(Some("  ")),
            "info,aya=warn,aya_obj=warn,aya_log=warn"
        );
    }

    #[test]
    fn named_crates_are_left_as_asked() {
        assert_eq!(
            filter_directives(Some("debug,aya=debug")),
            "debug,aya=debug,aya_obj=warn,aya_log=warn"
        );
        assert_eq!(
            filter_directives(Some("aya_obj::relocation=trace")),
            "aya_obj::relocation=trace,aya=warn,aya_log=warn"
        );
        assert!(EnvFilter::try_new(filter_directives(Some("info,cluster=debug"))).is_ok());
    }
}
