//! The `cluster` binary: parses the command line and runs the supervisor or the demo worker;
//! any error ends it with one line on stderr and exit status 1.

use std::process::ExitCode;

use clap::Parser as _;
use cluster::{
    cli::{Cli, Command},
    supervisor, telemetry, worker,
};

fn main() -> ExitCode {
    let cli = Cli::parse();
    telemetry::init();
    let result: anyhow::Result<()> = match cli.command {
        Command::Run(args) => supervisor::run(args).map_err(Into::into),
        Command::Worker => worker::run().map_err(Into::into),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            // The one line a person reads. Every error's message already names its cause, so
            // the source chain (`{:#}`) would only repeat it.
            eprintln!("error: {err}");
            ExitCode::FAILURE
        }
    }
}
