//! The subcommands that talk to a running supervisor over its control socket: `status`,
//! `reload`, `stop`, `scale`, `drain`, `broadcast` and `send`. Each prints its result on
//! stdout and fails with the supervisor's one-line reason.

use std::{
    io::{self, Write as _},
    thread,
    time::Duration,
};

use crate::{
    cli::{Command, Target},
    control::{
        ControlError, client, paths,
        protocol::{Answer, PoolStatus, Request},
    },
};

/// Runs a control subcommand (anything but `run` and `worker`).
pub fn run(command: Command) -> anyhow::Result<()> {
    let (target, request) = match command {
        Command::Status(args) => return status(&args.target, args.json, args.watch),
        Command::Reload(target) => (target, Request::Reload),
        Command::Stop(target) => (target, Request::Stop),
        Command::Scale(args) => (
            args.target,
            Request::Scale {
                workers: args.workers,
            },
        ),
        Command::Drain(args) => (args.target, Request::Drain { slot: args.slot }),
        Command::Broadcast(args) => (
            args.target,
            Request::Broadcast {
                message: args.message,
            },
        ),
        Command::Send(args) => (
            args.target,
            Request::Send {
                slot: args.slot,
                message: args.message,
            },
        ),
        Command::Run(_) | Command::Worker => anyhow::bail!("not a control subcommand"),
    };
    let answer = call(&target, &request)?;
    let summary = match (&request, answer.replaced, answer.delivered) {
        (Request::Reload | Request::Drain { .. }, Some(n), _) => format!("replaced {n} worker(s)"),
        (Request::Broadcast { .. } | Request::Send { .. }, _, Some(n)) => {
            format!("delivered to {n} worker(s)")
        }
        (Request::Stop, ..) => "stopping".to_owned(),
        _ => "ok".to_owned(),
    };
    writeln!(io::stdout(), "{summary}")?;
    Ok(())
}

fn call(target: &Target, request: &Request) -> Result<Answer, ControlError> {
    let path = paths::find(target.control.as_deref(), target.pid)?;
    client::call(&path, request)
}

/// `cluster status`: the table, `--json`, or the table redrawn every second (`--watch`).
fn status(target: &Target, json: bool, watch: bool) -> anyhow::Result<()> {
    loop {
        let answer = call(target, &Request::Status)?;
        let status = answer
            .status
            .ok_or_else(|| ControlError::BadAnswer("no status in the answer".to_owned()))?;
        let mut out = io::stdout().lock();
        if json {
            writeln!(out, "{}", serde_json::to_string(&status)?)?;
            return Ok(());
        }
        if watch {
            // Clear the screen and go home, as `watch(1)` does.
            write!(out, "\x1b[2J\x1b[H")?;
        }
        write!(out, "{}", table(&status))?;
        out.flush()?;
        if !watch {
            return Ok(());
        }
        drop(out);
        thread::sleep(Duration::from_secs(1));
    }
}

/// The status as a table for people.
#[must_use]
pub fn table(status: &PoolStatus) -> String {
    let dash = || "-".to_owned();
    let opt = |v: Option<String>| v.unwrap_or_else(dash);
    let mut text = format!(
        "supervisor {}  {}  steering {}  {} of {} slots serving{}\n",
        status.supervisor_pid,
        status.addr,
        status.steering,
        status.serving,
        status.workers,
        if status.reloading {
            "  (reloading)"
        } else {
            ""
        }
    );
    text.push_str(&format!(
        "{:>4} {:>8} {:<10} {:>8} {:>8} {:>6} {:>6} {:>10} {:>10} {:>9} {:>9}\n",
        "SLOT",
        "PID",
        "PHASE",
        "UPTIME",
        "RESTARTS",
        "OPEN",
        "QUEUED",
        "CONNS",
        "STEERED",
        "MIGRATED",
        "RSS"
    ));
    for row in &status.rows {
        text.push_str(&format!(
            "{:>4} {:>8} {:<10} {:>8} {:>8} {:>6} {:>6} {:>10} {:>10} {:>9} {:>9}\n",
            row.slot,
            opt(row.pid.map(|p| p.to_string())),
            row.phase,
            opt(row.uptime_s.map(|s| format!("{s}s"))),
            row.restarts,
            opt(row.open.map(|n| n.to_string())),
            opt(row.queued.map(|n| n.to_string())),
            opt(row.connections.map(|n| n.to_string())),
            opt(row.steered.map(|n| n.to_string())),
            opt(row.migrated.map(|n| n.to_string())),
            opt(row
                .rss_bytes
                .map(|b| format!("{:.1}M", b as f64 / 1_048_576.0))),
        ));
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::control::protocol::WorkerRow;

    #[test]
    fn the_table_has_a_row_per_worker_and_dashes_for_unknowns() {
        let status = PoolStatus {
            supervisor_pid: 7,
            addr: "127.0.0.1:8080".to_owned(),
            steering: "round-robin".to_owned(),
            workers: 2,
            serving: 1,
            reloading: false,
            rows: vec![
                WorkerRow {
                    slot: 0,
                    pid: Some(42),
                    phase: "serving".to_owned(),
                    uptime_s: Some(5),
                    open: Some(3),
                    queued: Some(1),
                    connections: Some(10),
                    steered: Some(12),
                    migrated: Some(0),
                    rss_bytes: Some(3 * 1_048_576),
                    ..WorkerRow::default()
                },
                WorkerRow {
                    slot: 1,
                    phase: "restarting".to_owned(),
                    restarts: 2,
                    ..WorkerRow::default()
                },
            ],
            programs: Vec::new(),
            reloads: crate::control::protocol::Reloads::default(),
        };
        let text = table(&status);
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines.len(), 4, "{text}");
        assert!(lines[0].contains("1 of 2 slots serving"), "{text}");
        assert_eq!(
            lines[2].split_whitespace().collect::<Vec<_>>(),
            [
                "0", "42", "serving", "5s", "0", "3", "1", "10", "12", "0", "3.0M"
            ]
        );
        assert_eq!(
            lines[3].split_whitespace().collect::<Vec<_>>(),
            [
                "1",
                "-",
                "restarting",
                "-",
                "2",
                "-",
                "-",
                "-",
                "-",
                "-",
                "-"
            ]
        );
    }
}
