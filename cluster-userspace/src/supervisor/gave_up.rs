//! Reports of slots that gave up ([`GaveUp`]): once the last worker's stderr has been read to
//! its end (or a short wait passed), an error line names the slot, the command, how its last
//! start ended and the last lines it wrote to stderr. When no worker of the pool ever started
//! stably, the same facts make the supervisor's final error ([`CannotStart`]).

use std::{fmt, time::Duration};

use nix::unistd::Pid;
use tracing::error;

use super::{output::StderrTail, pool::GaveUp};

/// How long a report waits for the last worker's stderr to end. The exit is often reaped before
/// the reader has read the last lines the worker wrote; and a process that left the worker's
/// group could keep the pipe open for ever.
const STDERR_WAIT: Duration = Duration::from_secs(1);

/// A slot that gave up, with what its last worker wrote to stderr.
#[derive(Debug, Clone)]
pub struct Report {
    pub gave_up: GaveUp,
    /// The command every worker runs, quoted as a shell would need it, on one line.
    pub command: String,
    /// The last lines of the last worker's stderr; `None` when it is not captured.
    pub stderr: Option<Vec<String>>,
}

impl Report {
    /// Waits (briefly) for the end of `tail`, the last worker's stderr, then logs the report.
    pub async fn collect(gave_up: GaveUp, command: String, tail: Option<StderrTail>) -> Self {
        let stderr = match tail {
            Some(tail) => {
                tail.ended(STDERR_WAIT).await;
                Some(tail.lines().iter().map(|line| one_line(line)).collect())
            }
            None => None,
        };
        let report = Self {
            gave_up,
            command: one_line(&command),
            stderr,
        };
        report.log();
        report
    }

    fn log(&self) {
        let g = &self.gave_up;
        let stderr = self.stderr_text();
        if g.pool_fails {
            error!(slot = g.slot, pid = g.pid.map(Pid::as_raw), command = %self.command,
                   status = %g.last, unstable_starts = g.unstable_starts, stderr = %stderr,
                   "slot gave up, and no worker ever started stably: the command cannot start; stopping");
        } else {
            error!(slot = g.slot, pid = g.pid.map(Pid::as_raw), command = %self.command,
                   status = %g.last, unstable_starts = g.unstable_starts, stderr = %stderr,
                   serving = g.serving, slots = g.slots,
                   "slot gave up; pool serves with {} of {} slots", g.serving, g.slots);
        }
    }

    /// The stderr lines on one line.
    fn stderr_text(&self) -> String {
        match (&self.stderr, self.gave_up.started) {
            (_, false) => "none (the worker was not started)".to_owned(),
            (None, true) => "not captured (--log-passthrough)".to_owned(),
            (Some(lines), true) if lines.is_empty() => "empty".to_owned(),
            (Some(lines), true) => lines.join(" | "),
        }
    }
}

/// `text` with its control characters escaped (`\n`, `\u{1b}`), so that it stays on one line
/// and cannot move a terminal's cursor.
fn one_line(text: &str) -> String {
    text.chars()
        .map(|c| {
            if c.is_control() {
                c.escape_default().to_string()
            } else {
                c.to_string()
            }
        })
        .collect()
}

/// No worker of the pool ever started stably, and a slot gave up: the supervisor's final error.
#[derive(Debug, thiserror::Error)]
pub struct CannotStart(pub Report);

impl fmt::Display for CannotStart {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let Report {
            gave_up: g,
            command,
            ..
        } = &self.0;
        write!(
            f,
            "the command `{command}` cannot start: slot {} gave up after {} unstable starts in a \
             row, and no worker ever stayed up past --min-uptime; ",
            g.slot, g.unstable_starts
        )?;
        if g.started {
            write!(
                f,
                "the last one ended with {}, stderr: {}",
                g.last,
                self.0.stderr_text()
            )?;
        } else {
            write!(f, "the last one could not be started: {}", g.last)?;
        }
        write!(
            f,
            ". Run the command by hand to see why it fails; --max-restarts N allows more attempts"
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn report(pid: Option<i32>, stderr: Option<Vec<&str>>) -> Report {
        Report {
            gave_up: GaveUp {
                slot: 1,
                pid: pid.map(Pid::from_raw),
                started: pid.is_some(),
                last: "exit code 3".to_owned(),
                unstable_starts: 9,
                pool_fails: true,
                serving: 0,
                slots: 2,
            },
            command: "sh -c 'echo boom >&2; exit 3'".to_owned(),
            stderr: stderr.map(|lines| lines.into_iter().map(str::to_owned).collect()),
        }
    }

    #[test]
    fn control_characters_are_escaped() {
        assert_eq!(one_line("a\nb\u{1b}[31mc\td é"), "a\\nb\\u{1b}[31mc\\td é");
    }

    #[test]
    fn the_final_error_names_slot_command_status_stderr_and_the_fix() {
        let text = CannotStart(report(Some(42), Some(vec!["boom", "second"]))).to_string();
        for part in [
            "`sh -c 'echo boom >&2; exit 3'` cannot start",
            "slot 1 gave up after 9 unstable starts",
            "ended with exit code 3",
            "stderr: boom | second",
            "Run the command by hand",
            "--max-restarts N",
        ] {
            assert!(text.contains(part), "{part:?} not in {text}");
        }
        assert!(!text.contains('\n'), "one line: {text}");
        let passthrough = CannotStart(report(Some(42), None)).to_string();
        assert!(
            passthrough.contains("stderr: not captured"),
            "{passthrough}"
        );
        let unstarted = CannotStart(report(None, None)).to_string();
        assert!(
            unstarted.contains("could not be started: exit code 3"),
            "{unstarted}"
        );
        // Forked, but its exec failed: nothing it wrote is worth showing.
        let mut exec_failed = report(Some(42), Some(vec![]));
        exec_failed.gave_up.started = false;
        exec_failed.gave_up.last = "exec of `/srv/app` failed: Exec format error".to_owned();
        assert_eq!(
            exec_failed.stderr_text(),
            "none (the worker was not started)"
        );
        let text = CannotStart(exec_failed).to_string();
        assert!(
            text.contains("the last one could not be started: exec of `/srv/app` failed"),
            "{text}"
        );
    }
}
