//! The `cluster-load` binary: parses the command line, runs the load with a progress display,
//! and writes the result to stdout as a table or as JSON (`--json`).
//!
//! Exit status: 0 when the run completed (whatever its requests did), 1 when it could not run
//! or its result could not be written, 2 for a bad command line.

mod cli;
mod progress;

use std::{
    io::{self, IsTerminal as _, Write as _},
    process::ExitCode,
};

use anyhow::Context as _;
use clap::{CommandFactory as _, Parser as _, error::ErrorKind};
use cli::Cli;
use cluster_load::{Config, Report};
use progress::Progress;

fn main() -> ExitCode {
    let cli = Cli::parse();
    let config = match cli.config() {
        Ok(config) => config,
        Err(err) => Cli::command().error(ErrorKind::ValueValidation, err).exit(),
    };
    let show_progress = !cli.quiet && io::stdout().is_terminal();
    let result = run(config, usize::from(cli.threads), show_progress).and_then(|mut report| {
        if let Some(workers) = cli.workers {
            report.by_slot = std::mem::take(&mut report.by_slot).with_values(0..workers);
        }
        write(&report, cli.json)
    });
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("cluster-load: error: {err:#}");
            ExitCode::FAILURE
        }
    }
}

fn run(config: Config, threads: usize, show_progress: bool) -> anyhow::Result<Report> {
    let runtime = if threads == 1 {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
    } else {
        tokio::runtime::Builder::new_multi_thread()
            .worker_threads(threads)
            .enable_all()
            .build()
    }
    .context("starting the tokio runtime")?;
    let duration = config.duration;
    runtime.block_on(async move {
        let running = cluster_load::start(config)?;
        let progress =
            show_progress.then(|| Progress::start(running.live(), running.started(), duration));
        let report = running.finish().await;
        if let Some(progress) = progress {
            progress.finish();
        }
        Ok(report?)
    })
}

fn write(report: &Report, json: bool) -> anyhow::Result<()> {
    let mut out = io::stdout().lock();
    if json {
        serde_json::to_writer_pretty(&mut out, report).context("writing the JSON result")?;
        writeln!(out).context("writing the JSON result")?;
    } else {
        report
            .write_table(&mut out)
            .context("writing the result table")?;
    }
    out.flush().context("writing the result")
}
