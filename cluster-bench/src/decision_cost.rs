//! Decision cost: what each in-kernel mode's program costs per decision, from the kernel's own
//! run stats (`cluster run --bpf-stats`, read through `status --json`), beside two floors
//! measured in the same rounds: a program that decides nothing (`floor-empty`) and one that
//! makes a single `bpf_sk_select_reuseport` call (`floor-select`). The pools serve the light
//! handler to clients that open a new connection per request, so each request is one decision.
//! Absolute nanoseconds move about 2× between machines; the ratios to the floors much less.
//!
//! The stats cost two clock reads per program run, so these pools are apart from the throughput
//! runs, which load no stats.

use std::fmt;

use anyhow::{Context as _, Result, bail};
use cluster::control::protocol::ProgramStats;
use serde::Serialize;

use crate::{
    matrix::{Mode, Pattern, Scenario},
    run::Runner,
    stats::Spread,
};

/// The connection counter's program name, as `status --json` gives it.
const COUNTER: &str = "count_connections";

/// What is measured: a floor, or an in-kernel mode.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum CostMode {
    /// A program that returns without selecting: the kernel hashes.
    FloorEmpty,
    /// A program that makes one `bpf_sk_select_reuseport` call and nothing else.
    FloorSelect,
    RoundRobin,
    Sticky,
    LeastConn,
}

impl CostMode {
    /// The floors, then the in-kernel modes among `modes`, in that order.
    #[must_use]
    pub fn plan(modes: &[Mode]) -> Vec<Self> {
        let kernel: Vec<Self> = modes
            .iter()
            .filter_map(|mode| match mode {
                Mode::RoundRobin => Some(Self::RoundRobin),
                Mode::Sticky => Some(Self::Sticky),
                Mode::LeastConn => Some(Self::LeastConn),
                Mode::Single | Mode::Shared | Mode::Hash => None,
            })
            .collect();
        if kernel.is_empty() {
            return kernel;
        }
        [Self::FloorEmpty, Self::FloorSelect]
            .into_iter()
            .chain(kernel)
            .collect()
    }

    /// The `--steering` value.
    #[must_use]
    pub fn steering(self) -> &'static str {
        match self {
            Self::FloorEmpty => "floor-empty",
            Self::FloorSelect => "floor-select",
            Self::RoundRobin => "round-robin",
            Self::Sticky => "sticky",
            Self::LeastConn => "least-conn",
        }
    }

    fn spread_sources(self) -> Option<u32> {
        Mode::Sticky
            .spread_sources()
            .filter(|_| self == Self::Sticky)
    }
}

impl fmt::Display for CostMode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.steering())
    }
}

/// One pool's measurement.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct CostRun {
    pub round: usize,
    /// Runs of the selector during the load.
    pub decisions: u64,
    pub ns_per_decision: f64,
    /// Runs of the connection counter during the load (every TCP state change on the host).
    pub counter_runs: u64,
    pub counter_ns_per_run: f64,
    pub requests_per_second: f64,
}

/// One mode at one pool size, over the rounds.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct CostResult {
    pub mode: CostMode,
    pub workers: u32,
    pub ns_per_decision: Spread,
    /// The median over `floor-select`'s median at the same pool size.
    pub versus_select: Option<f64>,
    pub runs: Vec<CostRun>,
}

impl Runner<'_> {
    /// Measures `mode` with `workers` workers once.
    pub fn decision_cost(&self, mode: CostMode, workers: u32, round: usize) -> Result<CostRun> {
        let what = format!("cost {mode} ×{workers} (round {round})");
        self.progress.start_run(&what);
        let pool = self
            .pool_with(mode.steering(), workers, &["--bpf-stats"])
            .with_context(|| format!("a {mode} pool of {workers} with --bpf-stats"))?;
        let mut config = self.load_config(
            pool.addr,
            &Scenario::Light.mix(&self.iterations),
            Pattern::PerRequest,
        )?;
        config.spread_sources = mode.spread_sources();
        let before = pool.status()?.programs;
        let report = self
            .runtime
            .block_on(async { self.follow(&what, cluster_load::start(config)?).await })?;
        let after = pool.status()?.programs;
        pool.stop()?;
        self.progress.run_done();
        // The selector is the program that is not the counter.
        let program = |programs: &[ProgramStats], counter: bool| {
            programs
                .iter()
                .find(|p| (p.program == COUNTER) == counter)
                .cloned()
                .unwrap_or_default()
        };
        let (decisions, decision_ns) = since(&program(&after, false), &program(&before, false));
        let (counter_runs, counter_ns) = since(&program(&after, true), &program(&before, true));
        if decisions == 0 {
            bail!(
                "the kernel counted no run of the {mode} program: were its stats on? (status said {after:?})"
            );
        }
        Ok(CostRun {
            round,
            decisions,
            ns_per_decision: per_run(decision_ns, decisions),
            counter_runs,
            counter_ns_per_run: per_run(counter_ns, counter_runs),
            requests_per_second: report.requests_per_second,
        })
    }
}

/// Runs and run time between the readings `earlier` and `now`.
fn since(now: &ProgramStats, earlier: &ProgramStats) -> (u64, u64) {
    (
        now.runs.saturating_sub(earlier.runs),
        now.run_time_ns.saturating_sub(earlier.run_time_ns),
    )
}

#[expect(clippy::cast_precision_loss, reason = "counts far below 2^52")]
fn per_run(nanoseconds: u64, runs: u64) -> f64 {
    if runs == 0 {
        0.0
    } else {
        nanoseconds as f64 / runs as f64
    }
}

/// Folds the runs of each mode and pool size into results, floor-select ratios included.
#[must_use]
pub fn summarize(runs: Vec<(CostMode, u32, CostRun)>) -> Vec<CostResult> {
    let mut results: Vec<CostResult> = Vec::new();
    for (mode, workers, run) in runs {
        match results
            .iter_mut()
            .find(|r| r.mode == mode && r.workers == workers)
        {
            Some(result) => result.runs.push(run),
            None => results.push(CostResult {
                mode,
                workers,
                ns_per_decision: Spread::default(),
                versus_select: None,
                runs: vec![run],
            }),
        }
    }
    for result in &mut results {
        result.ns_per_decision =
            Spread::of(result.runs.iter().map(|r| r.ns_per_decision)).unwrap_or_default();
    }
    let select: Vec<(u32, f64)> = results
        .iter()
        .filter(|r| r.mode == CostMode::FloorSelect)
        .map(|r| (r.workers, r.ns_per_decision.median))
        .collect();
    for result in &mut results {
        result.versus_select = select
            .iter()
            .find(|(workers, _)| *workers == result.workers)
            .filter(|(_, floor)| *floor > 0.0)
            .map(|(_, floor)| result.ns_per_decision.median / floor);
    }
    results.sort_by_key(|r| (r.workers, r.mode));
    results
}

#[cfg(test)]
mod tests {
    use super::*;

    fn run(ns: f64) -> CostRun {
        CostRun {
            round: 1,
            decisions: 100,
            ns_per_decision: ns,
            counter_runs: 1000,
            counter_ns_per_run: 50.0,
            requests_per_second: 1.0,
        }
    }

    #[test]
    fn floors_come_first_and_only_with_an_in_kernel_mode() {
        assert_eq!(
            CostMode::plan(&[Mode::Shared, Mode::LeastConn, Mode::RoundRobin]),
            [
                CostMode::FloorEmpty,
                CostMode::FloorSelect,
                CostMode::LeastConn,
                CostMode::RoundRobin
            ]
        );
        assert!(CostMode::plan(&[Mode::Shared, Mode::Hash, Mode::Single]).is_empty());
    }

    #[test]
    fn ratios_are_to_floor_select_at_the_same_pool_size() {
        let results = summarize(vec![
            (CostMode::FloorSelect, 2, run(200.0)),
            (CostMode::RoundRobin, 2, run(300.0)),
            (CostMode::RoundRobin, 2, run(260.0)),
            (CostMode::RoundRobin, 2, run(280.0)),
            (CostMode::FloorSelect, 64, run(250.0)),
            (CostMode::RoundRobin, 64, run(500.0)),
        ]);
        let find = |mode, workers| {
            results
                .iter()
                .find(|r| r.mode == mode && r.workers == workers)
                .unwrap()
        };
        let two = find(CostMode::RoundRobin, 2);
        assert_eq!(two.ns_per_decision.median, 280.0);
        assert_eq!(two.versus_select, Some(1.4));
        assert_eq!(find(CostMode::RoundRobin, 64).versus_select, Some(2.0));
        assert_eq!(find(CostMode::FloorSelect, 2).versus_select, Some(1.0));
    }
}
