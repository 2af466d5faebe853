//! `cluster-bench` (`cargo xtask bench`): runs the demo pool under every steering mode, one
//! worker as the baseline, with the project's load generator; modes interleaved and repeated,
//! medians with min–max; writes bench-report.md, bench.json and SVG plots, and prints a table.
//!
//! Exit status: 0 when every run completed (whatever the targets say), 1 when a run could not
//! be made or the outputs not written, 2 for a bad command line.

mod cli;
mod cpu;
mod decision_cost;
mod held;
mod kills;
mod lifecycle;
mod lifecycle_report;
mod matrix;
mod peer;
mod plots;
mod pool;
mod progress;
mod report;
mod results;
mod run;
mod stats;
mod stuck;
mod system;
mod targets;
mod traces;

use std::{
    collections::BTreeMap,
    fs,
    io::{IsTerminal as _, Write as _},
    path::Path,
    process::ExitCode,
    time::{Duration, SystemTime, UNIX_EPOCH},
};

use anyhow::{Context as _, Result, bail};
use clap::{CommandFactory as _, Parser as _, error::ErrorKind};
use cli::{Cli, Plan};
use cpu::Placement;
use matrix::{Case, Iterations, STICKY_SOURCES, schedule};
use peer::{
    plan::{Job, PeerPlan},
    run::PeerRunner,
};
use progress::Progress;
use results::{Bench, CaseResult, Run, SCHEMA, Settings, Summary};
use run::Runner;

fn main() -> ExitCode {
    let cli = Cli::parse();
    let plan = match cli.plan() {
        Ok(plan) => plan,
        Err(err) => Cli::command().error(ErrorKind::ValueValidation, err).exit(),
    };
    match bench(&cli, &plan) {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("cluster-bench: error: {err:#}");
            ExitCode::FAILURE
        }
    }
}

fn bench(cli: &Cli, plan: &Plan) -> Result<()> {
    if plan.modes.iter().any(|m| m.in_kernel()) && !nix::unistd::geteuid().is_root() {
        bail!(
            "the in-kernel modes load the eBPF program and need root: run `sudo -E cargo xtask \
             bench`, or pick --modes single,shared,hash"
        );
    }
    if !cli.cluster.is_file() {
        bail!(
            "{} is not a file: pass the cluster binary with --cluster (cargo xtask bench builds it)",
            cli.cluster.display()
        );
    }
    fs::create_dir_all(&cli.out)
        .with_context(|| format!("creating the output directory {}", cli.out.display()))?;
    let system = system::describe(&cli.cluster);
    let cpus = cpu::usable_cpus().context("reading this process's CPU affinity")?;
    let placement = Placement::plan(cpus, cli.workers, cli.pin);
    if placement.pinned {
        cpu::pin_self(&placement.generator_cpus)
            .context("pinning the load generator to its CPUs")?;
    }
    // One thread runs the generator's clients, leaving the other CPUs to the pool.
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("starting the tokio runtime")?;
    let steps = if plan.cost_only {
        Vec::new()
    } else {
        schedule(&plan.scenarios, &plan.patterns, &plan.modes, plan.rounds)
    };
    let peer_plan = PeerPlan::new(cli.peer, plan.cost_only, &plan.modes, &cli.out)?;
    let jobs = peer::plan::interleave(steps, &peer_plan.servers);
    let peer_calibrations = usize::from(peer_plan.app.is_some());
    let lifecycle = if plan.cost_only {
        &[][..]
    } else {
        &plan.lifecycle[..]
    };
    let disturbed: Vec<_> = lifecycle
        .iter()
        .flat_map(|l| plan.patterns.iter().map(move |p| (*l, *p)))
        .flat_map(|(l, p)| {
            plan.modes
                .iter()
                .filter(|m| **m != matrix::Mode::Single)
                .map(move |m| (l, p, *m))
        })
        .collect();
    let cost_modes = decision_cost::CostMode::plan(&plan.modes);
    if plan.cost_only && (cost_modes.is_empty() || plan.cost_workers.is_empty()) {
        bail!(
            "--cost-only measures the in-kernel modes: give --modes with round-robin, sticky or \
             least-conn"
        );
    }
    let cost_steps: Vec<(usize, u32, decision_cost::CostMode)> = (1..=plan.rounds)
        .flat_map(|round| plan.cost_workers.iter().map(move |w| (round, *w)))
        .flat_map(|(round, workers)| cost_modes.iter().map(move |m| (round, workers, *m)))
        .collect();
    let progress = Progress::new(
        jobs.len()
            + disturbed.len()
            + cost_steps.len()
            + usize::from(!plan.cost_only)
            + peer_calibrations,
        !cli.quiet && std::io::stderr().is_terminal(),
    );
    let iterations = Iterations::default();
    let runner = Runner {
        binary: &cli.cluster,
        runtime: &runtime,
        placement: &placement,
        progress: &progress,
        workers: cli.workers,
        concurrency: cli.concurrency,
        duration: Duration::from_secs_f64(plan.duration),
        iterations,
    };
    progress.note(&format!("bench: {}", placement.description));
    let calibration = if plan.cost_only {
        None
    } else {
        let calibration = runner.calibrate().context("calibrating the /work loop")?;
        progress.run_done();
        Some(calibration)
    };
    let peer_runner = peer_plan.app.as_deref().map(|app| PeerRunner {
        runner: &runner,
        app,
    });
    let peer_calibration = peer_runner
        .as_ref()
        .map(PeerRunner::calibrate)
        .transpose()
        .context("calibrating the Node app's loop")?;
    let mut runs: BTreeMap<Case, Vec<Run>> = BTreeMap::new();
    let mut peer_runs: BTreeMap<peer::Cell, Vec<Run>> = BTreeMap::new();
    for job in jobs {
        let step = match (job, &peer_runner) {
            (Job::Matrix(step), _) => step,
            (Job::Peer(step), Some(peer_runner)) => {
                let run = peer_runner.run(step).with_context(|| {
                    format!(
                        "the Node app, {} handler, {}, {}, round {}",
                        step.cell.scenario, step.cell.pattern, step.cell.server, step.round
                    )
                })?;
                peer_runs.entry(step.cell).or_default().push(run);
                continue;
            }
            (Job::Peer(_), None) => continue,
        };
        let run = runner.run(step).with_context(|| {
            format!(
                "{} handler, {}, {}, round {}",
                step.case.scenario, step.case.pattern, step.case.mode, step.round
            )
        })?;
        progress.note_run(
            &format!(
                "{} {} {} round {}",
                step.case.scenario, step.case.pattern, step.case.mode, step.round
            ),
            &run,
        );
        runs.entry(step.case).or_default().push(run);
    }
    let mut lifecycle_runs = Vec::new();
    for (scenario, pattern, mode) in disturbed {
        let run = runner
            .lifecycle(scenario, mode, pattern)
            .with_context(|| format!("the {} scenario, {pattern}, {mode}", scenario.name()))?;
        progress.note(&format!(
            "bench: {} {pattern} {mode}: {} failed of {} ({} disturbances)",
            scenario.name(),
            run.failed,
            run.requests,
            run.disturbances
        ));
        lifecycle_runs.push(run);
    }
    let mut cost_runs = Vec::new();
    for (round, workers, mode) in cost_steps {
        let run = runner
            .decision_cost(mode, workers, round)
            .with_context(|| {
                format!("the decision cost of {mode}, {workers} workers, round {round}")
            })?;
        progress.note(&format!(
            "bench: cost {mode} {workers} workers round {round}: {:.0} ns per decision",
            run.ns_per_decision
        ));
        cost_runs.push((mode, workers, run));
    }
    progress.finish();

    let mut cases: Vec<CaseResult> = runs
        .into_iter()
        .map(|(case, runs)| CaseResult {
            case,
            workers: case.mode.workers(cli.workers),
            summary: Summary::of(&runs),
            runs,
        })
        .collect();
    // Report order: handler, pattern, then the modes in the order asked for.
    cases.sort_by_key(|c| {
        let mode_rank = plan.modes.iter().position(|m| *m == c.case.mode);
        (c.case.scenario, c.case.pattern, mode_rank)
    });
    let mut bench = Bench {
        schema: SCHEMA,
        command: std::env::args().collect(),
        started_unix: SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_secs()),
        system,
        placement,
        settings: Settings {
            duration_seconds: plan.duration,
            workers: cli.workers,
            concurrency: cli.concurrency,
            rounds: plan.rounds,
            modes: plan.modes.clone(),
            patterns: plan.patterns.clone(),
            scenarios: plan.scenarios.clone(),
            iterations,
            sticky_sources: STICKY_SOURCES,
            cost_workers: plan.cost_workers.clone(),
        },
        calibration,
        cases,
        lifecycle: lifecycle_runs,
        decision_cost: decision_cost::summarize(cost_runs),
        peer: peer_plan.results(peer_runs, peer_calibration, cli.workers),
        targets: Vec::new(),
    };
    bench.targets = targets::evaluate(&bench);
    write_outputs(&bench, &cli.out)?;
    let mut out = std::io::stdout().lock();
    write!(out, "{}", report::terminal(&bench)).context("writing the table")?;
    writeln!(out, "report: {}", cli.out.join("bench-report.md").display())
        .context("writing the table")?;
    Ok(())
}

fn write_outputs(bench: &Bench, dir: &Path) -> Result<()> {
    let json = serde_json::to_string_pretty(bench).context("serializing bench.json")?;
    let write = |name: &str, text: &str| {
        let path = dir.join(name);
        fs::write(&path, text).with_context(|| format!("writing {}", path.display()))
    };
    write("bench.json", &(json + "\n"))?;
    write("bench-report.md", &report::markdown(bench))?;
    plots::write(bench, dir)?;
    peer::plot::write(&bench.peer, dir)?;
    traces::write(bench, dir)
}
