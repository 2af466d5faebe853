//! What the bench measured, as `bench.json` holds it (its shape is documented in the README,
//! "Bench"): the system and settings, every run, and each case's medians over the rounds.

use cluster_load::{ErrorCounts, LatencySummary, Share};
use serde::Serialize;

use crate::{
    cpu::Placement,
    decision_cost::CostResult,
    lifecycle::LifecycleRun,
    matrix::{Case, Iterations, Mode, Pattern, Scenario},
    peer::Peer,
    stats::Spread,
    targets::Target,
};

/// Version of the JSON shape; raised when a field changes meaning or goes away.
pub const SCHEMA: u32 = 2;

/// The whole bench.
#[derive(Debug, Clone, Serialize)]
pub struct Bench {
    pub schema: u32,
    /// The command line that ran the bench, as given.
    pub command: Vec<String>,
    /// Unix time the bench started at.
    pub started_unix: u64,
    pub system: System,
    pub placement: Placement,
    pub settings: Settings,
    pub calibration: Option<Calibration>,
    pub cases: Vec<CaseResult>,
    pub lifecycle: Vec<LifecycleRun>,
    /// Each in-kernel mode's cost per decision beside the floors, per pool size.
    pub decision_cost: Vec<CostResult>,
    /// The Node peer: the same Node app under Node's cluster and under this pool.
    pub peer: Peer,
    pub targets: Vec<Target>,
}

/// The machine and the software measured.
#[derive(Debug, Clone, Serialize)]
pub struct System {
    /// `uname -r`.
    pub kernel: String,
    pub cpu_model: String,
    /// CPUs online.
    pub cpus: usize,
    /// `cluster --version`.
    pub cluster_version: String,
    pub bench_version: String,
    /// `net.ipv4.tcp_migrate_req` of the bench's network namespace: whether a closing socket's
    /// queue migrates under `hash` (`None` if unreadable).
    pub tcp_migrate_req: Option<bool>,
}

impl System {
    /// `net.ipv4.tcp_migrate_req` as the sysctl shows it: `0`, `1`, or `unknown`.
    #[must_use]
    pub fn tcp_migrate_req_value(&self) -> &'static str {
        match self.tcp_migrate_req {
            Some(true) => "1",
            Some(false) => "0",
            None => "unknown",
        }
    }
}

/// What every run shared.
#[derive(Debug, Clone, Serialize)]
pub struct Settings {
    pub duration_seconds: f64,
    pub workers: u32,
    pub concurrency: usize,
    pub rounds: usize,
    pub modes: Vec<Mode>,
    pub patterns: Vec<Pattern>,
    pub scenarios: Vec<Scenario>,
    pub iterations: Iterations,
    /// Source addresses the clients spread over in `sticky`.
    pub sticky_sources: u32,
    /// Pool sizes of the decision cost.
    pub cost_workers: Vec<u32>,
}

/// What the uniform handler's loop costs on this machine: sequential requests to one worker.
#[derive(Debug, Clone, Copy, Serialize)]
pub struct Calibration {
    pub iterations: u64,
    /// Median latency of one `/work` request, less that of `GET /`.
    pub loop_ms: f64,
    /// Nanoseconds per iteration.
    pub ns_per_iteration: f64,
}

/// One case over its rounds.
#[derive(Debug, Clone, Serialize)]
pub struct CaseResult {
    #[serde(flatten)]
    pub case: Case,
    /// Workers in the pool.
    pub workers: u32,
    pub runs: Vec<Run>,
    pub summary: Summary,
}

/// One run.
#[derive(Debug, Clone, Serialize)]
pub struct Run {
    pub round: usize,
    pub elapsed_seconds: f64,
    pub requests: u64,
    pub ok: u64,
    pub failed: u64,
    pub requests_per_second: f64,
    pub latency: LatencySummary,
    pub errors: ErrorCounts,
    /// Answers per `x-worker-slot`, every slot listed.
    pub by_slot: Share,
    pub cpu: CpuSeconds,
}

/// CPU seconds used during a run.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize)]
pub struct CpuSeconds {
    pub workers: f64,
    pub supervisor: f64,
    pub generator: f64,
}

/// Medians with min–max over the rounds. Latencies in milliseconds.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Summary {
    pub requests_per_second: Spread,
    pub p50_ms: Spread,
    pub p90_ms: Spread,
    pub p99_ms: Spread,
    pub p999_ms: Spread,
    /// Failed requests per run.
    pub failed: Spread,
    /// Share max/min per run (`null` where a slot answered nothing).
    pub share_max_over_min: Option<Spread>,
    /// Share coefficient of variation per run.
    pub share_cv: Option<Spread>,
    pub cpu_workers_seconds: Spread,
    pub cpu_supervisor_seconds: Spread,
    pub cpu_generator_seconds: Spread,
}

impl Summary {
    /// The summary of `runs`.
    #[must_use]
    #[expect(
        clippy::cast_precision_loss,
        reason = "counts and microseconds far below 2^52"
    )]
    pub fn of(runs: &[Run]) -> Self {
        let spread =
            |field: &dyn Fn(&Run) -> f64| Spread::of(runs.iter().map(field)).unwrap_or_default();
        let ms = |us: u64| us as f64 / 1000.0;
        let share_spread = |field: &dyn Fn(&Share) -> Option<f64>| {
            runs.iter()
                .map(|r| field(&r.by_slot))
                .collect::<Option<Vec<f64>>>()
                .and_then(Spread::of)
        };
        Self {
            requests_per_second: spread(&|r| r.requests_per_second),
            p50_ms: spread(&|r| ms(r.latency.p50_us)),
            p90_ms: spread(&|r| ms(r.latency.p90_us)),
            p99_ms: spread(&|r| ms(r.latency.p99_us)),
            p999_ms: spread(&|r| ms(r.latency.p999_us)),
            failed: spread(&|r| r.failed as f64),
            share_max_over_min: share_spread(&|s| s.max_over_min),
            share_cv: share_spread(&|s| s.cv),
            cpu_workers_seconds: spread(&|r| r.cpu.workers),
            cpu_supervisor_seconds: spread(&|r| r.cpu.supervisor),
            cpu_generator_seconds: spread(&|r| r.cpu.generator),
        }
    }
}

impl Bench {
    /// The cases of each handler and pattern that ran, named, in report order.
    #[must_use]
    pub fn groups(&self) -> Vec<(String, Vec<&CaseResult>)> {
        by_handler_and_pattern(&self.cases, |c| (c.case.scenario, c.case.pattern))
            .into_iter()
            .map(|(scenario, pattern, cases)| (format!("{scenario} handler, {pattern}"), cases))
            .collect()
    }

    /// The result of `case`, if it ran.
    #[must_use]
    pub fn case(&self, scenario: Scenario, pattern: Pattern, mode: Mode) -> Option<&CaseResult> {
        let wanted = Case {
            scenario,
            pattern,
            mode,
        };
        self.cases.iter().find(|c| c.case == wanted)
    }
}

/// `items` grouped by their handler and pattern (`key`), in report order; groups with no item
/// are left out.
pub fn by_handler_and_pattern<T>(
    items: &[T],
    key: impl Fn(&T) -> (Scenario, Pattern),
) -> Vec<(Scenario, Pattern, Vec<&T>)> {
    let mut groups = Vec::new();
    for scenario in Scenario::ALL {
        for pattern in Pattern::ALL {
            let group: Vec<&T> = items
                .iter()
                .filter(|item| key(item) == (scenario, pattern))
                .collect();
            if !group.is_empty() {
                groups.push((scenario, pattern, group));
            }
        }
    }
    groups
}
