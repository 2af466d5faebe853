//! The command line of `cluster-bench` (`cargo xtask bench`), and the plan it stands for.

use std::path::PathBuf;

use clap::Parser;

use crate::{
    lifecycle::Lifecycle,
    matrix::{Mode, Pattern, Scenario},
    peer::PeerChoice,
};

/// Runs the demo pool under each steering mode, one worker as the baseline, with the project's
/// load generator, and writes bench-report.md, bench.json and SVG plots.
#[derive(Debug, Parser)]
#[command(name = "cluster-bench", version)]
pub struct Cli {
    /// The `cluster` binary to bench (`cargo xtask bench` passes its release build).
    #[arg(long, value_name = "PATH")]
    pub cluster: PathBuf,
    /// Seconds of load per run [default: 10; 2 with --quick].
    #[arg(long, value_name = "S")]
    pub duration: Option<f64>,
    /// Workers in the pool (the `single` mode has one).
    #[arg(long, value_name = "N", default_value_t = 2, value_parser = clap::value_parser!(u32).range(1..=1024))]
    pub workers: u32,
    /// Concurrent clients.
    #[arg(long, value_name = "C", default_value_t = 32, value_parser = cluster_load::parse_concurrency)]
    pub concurrency: usize,
    /// Modes, interleaved in each round [default: all; shared,round-robin with --quick].
    #[arg(long, value_name = "MODE,…", value_delimiter = ',')]
    pub modes: Option<Vec<Mode>>,
    /// Client patterns [default: both; per-request with --quick].
    #[arg(long, value_name = "PATTERN,…", value_delimiter = ',')]
    pub patterns: Option<Vec<Pattern>>,
    /// Handlers [default: all; light with --quick].
    #[arg(long, value_name = "SCENARIO,…", value_delimiter = ',')]
    pub scenarios: Option<Vec<Scenario>>,
    /// Lifecycle scenarios, one run per mode and pattern, light handler [default: all; none
    /// with --quick].
    #[arg(long, value_name = "SCENARIO,…", value_delimiter = ',')]
    pub lifecycle: Option<Vec<Lifecycle>>,
    /// Pool sizes at which each in-kernel mode's decision cost is measured, beside the floor
    /// programs [default: --workers and 64; --workers with --quick].
    #[arg(long, value_name = "N,…", value_delimiter = ',', value_parser = clap::value_parser!(u32).range(1..=1024))]
    pub cost_workers: Option<Vec<u32>>,
    /// Skip the decision cost.
    #[arg(long, conflicts_with_all = ["cost_workers", "cost_only"])]
    pub no_cost: bool,
    /// Measure the decision cost only: no throughput runs, no lifecycle scenario.
    #[arg(long)]
    pub cost_only: bool,
    /// Rounds of every mode [default: 3; 1 with --quick].
    #[arg(long, value_name = "R", value_parser = clap::value_parser!(u32).range(1..=1000))]
    pub rounds: Option<u32>,
    /// Directory for bench-report.md, bench.json and the plots (created if missing).
    #[arg(long, value_name = "DIR", default_value = "target/bench")]
    pub out: PathBuf,
    /// A few seconds: 1 round, 2 modes, 1 pattern, the light handler (options given still win).
    #[arg(long)]
    pub quick: bool,
    /// `node`: also run a Node app under Node's cluster and under this pool (in `shared`,
    /// `round-robin` and `least-conn`, those of --modes), when `node` is on PATH; `none`: not.
    #[arg(long, value_enum, value_name = "PEER", default_value_t = PeerChoice::Node)]
    pub peer: PeerChoice,
    /// Put the load generator and the pool on separate CPUs when there are workers + 1.
    #[arg(long)]
    pub pin: bool,
    /// No progress display.
    #[arg(long, short)]
    pub quiet: bool,
}

/// What to run, defaults filled in.
#[derive(Debug, Clone, PartialEq)]
pub struct Plan {
    pub duration: f64,
    pub modes: Vec<Mode>,
    pub patterns: Vec<Pattern>,
    pub scenarios: Vec<Scenario>,
    pub lifecycle: Vec<Lifecycle>,
    /// Pool sizes for the decision cost (empty: not measured).
    pub cost_workers: Vec<u32>,
    /// No throughput run and no lifecycle scenario: the decision cost alone.
    pub cost_only: bool,
    pub rounds: usize,
}

impl Cli {
    /// The plan, or a one-line reason the options cannot run.
    pub fn plan(&self) -> Result<Plan, String> {
        let quick = self.quick;
        let duration = self.duration.unwrap_or(if quick { 2.0 } else { 10.0 });
        if !(duration.is_finite() && duration > 0.0) {
            return Err(format!(
                "--duration {duration} is not a positive number of seconds"
            ));
        }
        let plan = Plan {
            duration,
            modes: pick(
                quick,
                self.modes.as_ref(),
                vec![Mode::Shared, Mode::RoundRobin],
                &Mode::ALL,
            ),
            patterns: pick(
                quick,
                self.patterns.as_ref(),
                vec![Pattern::PerRequest],
                &Pattern::ALL,
            ),
            scenarios: pick(
                quick,
                self.scenarios.as_ref(),
                vec![Scenario::Light],
                &Scenario::ALL,
            ),
            lifecycle: pick(quick, self.lifecycle.as_ref(), Vec::new(), &Lifecycle::ALL),
            cost_only: self.cost_only,
            cost_workers: if self.no_cost {
                Vec::new()
            } else {
                pick(
                    quick,
                    self.cost_workers.as_ref(),
                    vec![self.workers],
                    &[self.workers, 64],
                )
            },
            rounds: self
                .rounds
                .map_or(if quick { 1 } else { 3 }, |r| r as usize),
        };
        if plan.modes.is_empty() || plan.patterns.is_empty() || plan.scenarios.is_empty() {
            return Err("--modes, --patterns and --scenarios each need at least one value".into());
        }
        Ok(plan)
    }
}

/// The values given, else the quick or the full default, without repeats.
fn pick<T: Copy + PartialEq>(
    quick: bool,
    given: Option<&Vec<T>>,
    quick_default: Vec<T>,
    all: &[T],
) -> Vec<T> {
    let mut list = given
        .cloned()
        .unwrap_or_else(|| if quick { quick_default } else { all.to_vec() });
    // Repeats anywhere in the list, not only next to each other (`shared,hash,shared`).
    let mut kept = Vec::with_capacity(list.len());
    list.retain(|item| {
        let new = !kept.contains(item);
        if new {
            kept.push(*item);
        }
        new
    });
    list
}

#[cfg(test)]
mod tests {
    use super::*;

    fn plan(args: &[&str]) -> Result<Plan, String> {
        Cli::try_parse_from(["cluster-bench", "--cluster", "c"].iter().chain(args))
            .map_err(|e| e.to_string())?
            .plan()
    }

    #[test]
    fn quick_is_small_and_explicit_options_win() {
        let quick = plan(&["--quick"]).unwrap();
        assert_eq!(quick.modes, [Mode::Shared, Mode::RoundRobin]);
        assert_eq!((quick.rounds, quick.duration), (1, 2.0));
        assert_eq!(quick.patterns, [Pattern::PerRequest]);
        assert!(quick.lifecycle.is_empty());
        assert_eq!(quick.cost_workers, [2]);
        assert_eq!(plan(&[]).unwrap().cost_workers, [2, 64]);
        assert_eq!(
            plan(&["--workers", "64"]).unwrap().cost_workers,
            [64],
            "no size twice"
        );
        assert!(plan(&["--no-cost"]).unwrap().cost_workers.is_empty());
        assert!(plan(&["--no-cost", "--cost-only"]).is_err());
        let full = plan(&[]).unwrap();
        assert_eq!(
            (full.modes.len(), full.rounds, full.scenarios.len()),
            (6, 3, 3)
        );
        assert_eq!(full.lifecycle, Lifecycle::ALL);
        let lifecycle = plan(&["--quick", "--lifecycle", "stuck,scale"]).unwrap();
        assert_eq!(lifecycle.lifecycle, [Lifecycle::Stuck, Lifecycle::Scale]);
        let chosen = plan(&["--quick", "--modes", "hash,least-conn", "--rounds", "2"]).unwrap();
        assert_eq!(chosen.modes, [Mode::Hash, Mode::LeastConn]);
        assert_eq!(chosen.rounds, 2);
    }

    #[test]
    fn bad_values_are_refused() {
        assert!(plan(&["--duration", "0"]).is_err());
        assert!(plan(&["--modes", "fastest"]).is_err());
        assert!(plan(&["--rounds", "0"]).is_err());
        assert!(plan(&["--concurrency", "0"]).is_err());
    }

    #[test]
    fn repeated_modes_run_once_each_round() {
        let plan = plan(&["--modes", "shared,hash,shared,hash"]).unwrap();
        assert_eq!(plan.modes, [Mode::Shared, Mode::Hash]);
    }
}
