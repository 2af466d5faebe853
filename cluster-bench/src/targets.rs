//! The targets, checked against the medians of one bench: met, missed, or not measured
//! (and why). Targets are reported, never asserted.

use serde::Serialize;

use crate::{
    decision_cost::CostMode,
    lifecycle::{Lifecycle, SCALE_BY},
    matrix::{Mode, Pattern, Scenario},
    peer,
    results::{Bench, CaseResult, Summary},
};

/// One target and how the bench did against it.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Target {
    /// What is wanted, in words.
    pub wanted: String,
    /// What was measured, in words (empty when not measured).
    pub measured: String,
    pub verdict: Verdict,
}

/// Whether a target was met.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Verdict {
    Met,
    Missed,
    /// The bench did not run what the target needs (see `measured` for why).
    NotMeasured,
}

impl Verdict {
    #[must_use]
    pub fn name(self) -> &'static str {
        match self {
            Self::Met => "met",
            Self::Missed => "MISSED",
            Self::NotMeasured => "not measured",
        }
    }
}

impl Target {
    pub(crate) fn check(wanted: String, measured: String, met: bool) -> Self {
        Self {
            wanted,
            measured,
            verdict: if met { Verdict::Met } else { Verdict::Missed },
        }
    }

    pub(crate) fn not_measured(wanted: String, why: &str) -> Self {
        Self {
            wanted,
            measured: why.to_owned(),
            verdict: Verdict::NotMeasured,
        }
    }
}

/// Every target, from the cases of `bench`.
#[must_use]
pub fn evaluate(bench: &Bench) -> Vec<Target> {
    let mut targets = Vec::new();
    round_robin_share(bench, &mut targets);
    in_kernel_against_hash(bench, &mut targets);
    least_conn_on_mixed(bench, &mut targets);
    workers_scale(bench, &mut targets);
    lifecycle(bench, &mut targets);
    peer::targets::evaluate(bench, &mut targets);
    decision_cost(bench, &mut targets);
    targets
}

/// Round-robin within 1.3 × and least-conn within 2 × the select-only program, per pool size.
fn decision_cost(bench: &Bench, targets: &mut Vec<Target>) {
    for (mode, limit) in [(CostMode::RoundRobin, 1.3), (CostMode::LeastConn, 2.0)] {
        let wanted = format!("{mode} decision cost within {limit} × the select-only program");
        let measured: Vec<_> = bench
            .decision_cost
            .iter()
            .filter(|c| c.mode == mode)
            .collect();
        if measured.is_empty() {
            targets.push(Target::not_measured(
                wanted,
                "no decision cost of this mode was measured (--no-cost, or the mode not in --modes)",
            ));
            continue;
        }
        for c in measured {
            let wanted = format!("{wanted}, {} workers", c.workers);
            match c.versus_select {
                Some(ratio) => targets.push(Target::check(
                    wanted,
                    format!(
                        "{ratio:.2}× ({} ns; floor-select {:.0} ns)",
                        c.ns_per_decision.show(0),
                        c.ns_per_decision.median / ratio
                    ),
                    ratio <= limit,
                )),
                None => targets.push(Target::not_measured(wanted, "floor-select did not run")),
            }
        }
    }
}

fn rps(case: &CaseResult) -> f64 {
    case.summary.requests_per_second.median
}

fn round_robin_share(bench: &Bench, targets: &mut Vec<Target>) {
    let wanted = "round-robin share max/min ≤ 1.02 (new connection per request)";
    let case = Scenario::ALL
        .iter()
        .find_map(|s| bench.case(*s, Pattern::PerRequest, Mode::RoundRobin));
    let Some(case) = case else {
        targets.push(Target::not_measured(
            wanted.to_owned(),
            "round-robin with a new connection per request did not run",
        ));
        return;
    };
    let wanted = format!("{wanted}, {} handler", case.case.scenario);
    match case.summary.share_max_over_min {
        Some(ratio) => targets.push(Target::check(
            wanted,
            format!("{:.3}", ratio.median),
            ratio.median <= 1.02,
        )),
        None => targets.push(Target::check(
            wanted,
            "a worker answered nothing".to_owned(),
            false,
        )),
    }
}

fn in_kernel_against_hash(bench: &Bench, targets: &mut Vec<Target>) {
    for pattern in Pattern::ALL {
        for mode in [Mode::RoundRobin, Mode::Sticky, Mode::LeastConn] {
            let wanted = format!("{mode} ≥ 0.97 × hash req/s, light handler, {pattern}");
            let (Some(case), Some(hash)) = (
                bench.case(Scenario::Light, pattern, mode),
                bench.case(Scenario::Light, pattern, Mode::Hash),
            ) else {
                if bench.case(Scenario::Light, pattern, mode).is_some() {
                    targets.push(Target::not_measured(wanted, "hash did not run"));
                }
                continue;
            };
            let ratio = rps(case) / rps(hash);
            targets.push(Target::check(wanted, format!("{ratio:.2}×"), ratio >= 0.97));
        }
    }
}

fn least_conn_on_mixed(bench: &Bench, targets: &mut Vec<Target>) {
    for pattern in Pattern::ALL {
        let (Some(least), Some(shared)) = (
            bench.case(Scenario::Mixed, pattern, Mode::LeastConn),
            bench.case(Scenario::Mixed, pattern, Mode::Shared),
        ) else {
            continue;
        };
        parity(
            targets,
            ("least-conn", &least.summary),
            ("shared", &shared.summary),
            &format!("mixed handler, {pattern}"),
        );
    }
}

/// The parity targets of `ours` against `theirs` (a name and its medians) under `context`:
/// throughput ≥ 0.95×, p99 ≤ 1.1×.
pub(crate) fn parity(
    targets: &mut Vec<Target>,
    (ours, our_summary): (&str, &Summary),
    (theirs, their_summary): (&str, &Summary),
    context: &str,
) {
    let ratio = our_summary.requests_per_second.median / their_summary.requests_per_second.median;
    targets.push(Target::check(
        format!("{ours} ≥ 0.95 × {theirs} req/s, {context}"),
        format!("{ratio:.2}×"),
        ratio >= 0.95,
    ));
    let p99 = our_summary.p99_ms.median / their_summary.p99_ms.median;
    targets.push(Target::check(
        format!("{ours} p99 ≤ 1.1 × {theirs}, {context}"),
        format!(
            "{p99:.2}× ({:.1} ms against {:.1} ms)",
            our_summary.p99_ms.median, their_summary.p99_ms.median
        ),
        p99 <= 1.1,
    ));
}

fn workers_scale(bench: &Bench, targets: &mut Vec<Target>) {
    let workers = bench.settings.workers;
    if workers != 2 {
        return;
    }
    for pattern in Pattern::ALL {
        let Some(single) = bench.case(Scenario::Uniform, pattern, Mode::Single) else {
            continue;
        };
        for mode in Mode::ALL.into_iter().filter(|m| *m != Mode::Single) {
            let Some(case) = bench.case(Scenario::Uniform, pattern, mode) else {
                continue;
            };
            let ratio = rps(case) / rps(single);
            targets.push(Target::check(
                format!("uniform handler: 2 workers ({mode}) ≥ 1.8 × one worker, {pattern}"),
                format!("{ratio:.2}×"),
                ratio >= 1.8,
            ));
        }
    }
}

fn lifecycle(bench: &Bench, targets: &mut Vec<Target>) {
    if bench.lifecycle.is_empty() {
        targets.push(Target::not_measured(
            "reload scenario: 0 failed; kill scenario: failed ≤ connections held + queued at the \
             kills"
                .to_owned(),
            "no lifecycle scenario ran (--lifecycle)",
        ));
    }
    for run in &bench.lifecycle {
        let (pattern, mode) = (run.pattern, run.mode);
        match run.scenario {
            Lifecycle::Reload => targets.push(Target::check(
                format!(
                    "{} rolling reloads: 0 failed, {mode}, {pattern}",
                    run.disturbances
                ),
                format!("{} failed of {}", run.failed, run.requests),
                run.failed == 0,
            )),
            // Failures against what the killed workers held when they were stopped for the
            // kill: connections (each in flight or idle between requests) and queued ones.
            Lifecycle::Kill => {
                let workers = if run.disturbances == 1 {
                    "worker"
                } else {
                    "workers"
                };
                let wanted = format!(
                    "{} {workers} killed: failed ≤ connections held + queued at the kills, \
                     {mode}, {pattern}",
                    run.disturbances
                );
                targets.push(match &run.kill {
                    Some(account) => Target::check(
                        wanted,
                        format!(
                            "{} failed ≤ {} ({} held + {} queued); {} in flight, {} sent on an \
                             idle held connection",
                            run.failed,
                            account.bound,
                            account.held,
                            account.queued,
                            account.failed_in_flight,
                            account.failed_idle
                        ),
                        run.failed <= account.bound,
                    ),
                    None => Target::not_measured(wanted, "the run counted nothing at its kills"),
                });
            }
            // The README (Scaling) has added slots join the program's selection once ready and
            // removed ones leave it at once and drain, tested with no failed request.
            Lifecycle::Scale if mode.in_kernel() => targets.push(Target::check(
                format!(
                    "scale to {} and back: 0 failed, {mode}, {pattern}",
                    bench.settings.workers + SCALE_BY
                ),
                format!("{} failed of {}", run.failed, run.requests),
                run.failed == 0,
            )),
            // The README states no figure for these: reported, not judged.
            Lifecycle::Stuck | Lifecycle::StuckHealthOff | Lifecycle::Scale => {}
        }
    }
}
