//! The `cluster` binary: parses the command line and runs the supervisor or the demo worker.
//!
//! Exit status: 0 when the pool stopped cleanly, 1 on an error (one line on stderr), 2 for a bad
//! command line (clap's), 3 when the pool stopped but some workers had to be killed, 4 when the
//! COMMAND cannot start (a slot gave up before any worker ran stably; one line on stderr).

use std::process::ExitCode;

use clap::{Parser as _, error::ErrorKind};
use cluster::{
    cli::{Cli, Command, LogFormat},
    commands, handoff,
    supervisor::{self, SupervisorError},
    telemetry::{self, Style},
    worker,
};

/// The pool stopped, but at least one worker outlived `--shutdown-timeout` or a second stop
/// signal, and was killed.
const EXIT_WORKERS_KILLED: u8 = 3;
/// A slot gave up after `--max-restarts` unstable starts, and no worker of the pool ever ran
/// stably: the COMMAND cannot start.
const EXIT_CANNOT_START: u8 = 4;

fn main() -> ExitCode {
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        Err(err)
            if err.use_stderr()
                && err.kind() != ErrorKind::DisplayHelpOnMissingArgumentOrSubcommand =>
        {
            telemetry::print_error(&one_line(&err.render().to_string()));
            return ExitCode::from(2);
        }
        Err(err) => err.exit(),
    };
    if let Command::Run(_) = cli.command
        && let Err(err) = supervisor::signals::block()
    {
        telemetry::print_error(&format!(
            "error: blocking signals (sigprocmask) failed: {err}"
        ));
        return ExitCode::FAILURE;
    }
    let style = match &cli.command {
        Command::Run(args) => Style {
            format: args.log_format,
            timestamps: true,
        },
        Command::Worker => Style {
            format: LogFormat::Text,
            timestamps: std::env::var_os(handoff::OUTPUT_CAPTURED).is_none(),
        },
        _ => Style {
            format: LogFormat::Text,
            timestamps: false,
        },
    };
    let log = telemetry::init(style);
    let result: anyhow::Result<ExitCode> = match cli.command {
        Command::Run(args) => supervisor::run(args)
            .map(|stopped| match stopped.killed.is_empty() {
                true => ExitCode::SUCCESS,
                false => ExitCode::from(EXIT_WORKERS_KILLED),
            })
            .map_err(Into::into),
        Command::Worker => worker::run()
            .map(|()| ExitCode::SUCCESS)
            .map_err(Into::into),
        control => commands::run(control).map(|()| ExitCode::SUCCESS),
    };
    // Write out the queued log before the last word, so it comes last.
    drop(log);
    result.unwrap_or_else(|err| {
        // The one line a person reads. Every error's message already names its cause, so the
        // source chain (`{:#}`) would only repeat it.
        telemetry::print_error(&format!("error: {err}"));
        match err.downcast_ref::<SupervisorError>() {
            Some(SupervisorError::CannotStart(_)) => ExitCode::from(EXIT_CANNOT_START),
            _ => ExitCode::FAILURE,
        }
    })
}

/// clap's error as one line: its `error:` line, its tip if it has one, and where the options
/// are listed, instead of the usage block that follows it.
fn one_line(rendered: &str) -> String {
    let mut lines = rendered.lines().map(str::trim).filter(|l| !l.is_empty());
    let first = lines.next().unwrap_or("error: bad command line");
    let tip = lines.find(|l| l.starts_with("tip:"));
    match tip {
        Some(tip) => format!("{first}; {tip} (`cluster --help` lists the commands and options)"),
        None => format!("{first} (`cluster --help` lists the commands and options)"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_bad_command_line_is_one_line_naming_the_help() {
        let err = Cli::try_parse_from(["cluster", "statsu"]).unwrap_err();
        let line = one_line(&err.render().to_string());
        assert!(!line.contains('\n'), "{line}");
        assert!(
            line.starts_with("error: unrecognized subcommand 'statsu'"),
            "{line}"
        );
        assert!(
            line.contains("tip: a similar subcommand exists: 'status'"),
            "{line}"
        );
        assert!(
            line.ends_with("(`cluster --help` lists the commands and options)"),
            "{line}"
        );
        let err = Cli::try_parse_from(["cluster", "scale", "0"]).unwrap_err();
        let line = one_line(&err.render().to_string());
        assert!(!line.contains('\n'), "{line}");
        assert!(line.contains("0 is not in 1..=1024"), "{line}");
    }
}
