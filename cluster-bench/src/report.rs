//! The human outputs: `bench-report.md` (summary, targets, a table per handler and pattern)
//! and the terminal table printed at the end.

use std::fmt::Write as _;

use crate::{
    lifecycle_report, peer,
    results::{Bench, Summary},
    stats::Spread,
    targets::Verdict,
};

/// The plots the report embeds, written beside it by `plots`.
pub const PLOTS: [(&str, &str); 3] = [
    ("throughput.svg", "Requests per second per mode"),
    ("latency.svg", "Latency percentiles per mode"),
    ("share.svg", "Per-worker share (max/min) per mode"),
];

/// `bench-report.md`.
#[must_use]
pub fn markdown(bench: &Bench) -> String {
    let mut out = String::new();
    let s = &bench.settings;
    let sys = &bench.system;
    let _ = writeln!(out, "# Bench report\n");
    let _ = writeln!(out, "`{}`\n", bench.command.join(" "));
    let _ = writeln!(
        out,
        "- machine: {} × {}, Linux {}; `cluster --version`: {}; `net.ipv4.tcp_migrate_req`: {}",
        sys.cpus,
        sys.cpu_model,
        sys.kernel,
        sys.cluster_version,
        sys.tcp_migrate_req_value()
    );
    let _ = writeln!(out, "- placement: {}", bench.placement.description);
    let _ = writeln!(
        out,
        "- load: {} clients, {} s per run, {} workers (`single`: 1), {} round(s), modes \
         interleaved; figures are medians (min–max) over the rounds",
        s.concurrency, s.duration_seconds, s.workers, s.rounds
    );
    if let Some(c) = &bench.calibration {
        let _ = writeln!(
            out,
            "- uniform handler: `/work?iterations={}`, measured at {:.2} ms per request \
             ({:.2} ns per iteration); mixed: 95% `iterations={}`, 5% `iterations={}`",
            c.iterations,
            c.loop_ms,
            c.ns_per_iteration,
            s.iterations.mixed_light,
            s.iterations.mixed_heavy
        );
    }
    let count = |v: Verdict| bench.targets.iter().filter(|t| t.verdict == v).count();
    let _ = writeln!(
        out,
        "\n## Targets\n\n{} met, {} missed, {} not measured.\n",
        count(Verdict::Met),
        count(Verdict::Missed),
        count(Verdict::NotMeasured)
    );
    let _ = writeln!(out, "| target | measured | verdict |\n|---|---|---|");
    for t in &bench.targets {
        let _ = writeln!(
            out,
            "| {} | {} | {} |",
            t.wanted,
            t.measured,
            t.verdict.name()
        );
    }
    for (name, cases) in bench.groups() {
        let _ = writeln!(out, "\n## {name}\n");
        let _ = writeln!(out, "| mode | {SUMMARY_HEADER}\n|---|{SUMMARY_RULE}");
        for c in cases {
            let _ = writeln!(
                out,
                "| {} | {}",
                c.case.mode,
                summary_cells(c.workers, &c.summary)
            );
        }
    }
    out.push_str(&lifecycle_report::markdown(bench));
    if !bench.decision_cost.is_empty() {
        let _ = writeln!(
            out,
            "\n## Decision cost (light handler, a new connection per request, `--bpf-stats`)\n\n\
             The kernel's own run time of each program per run, beside a program that decides \
             nothing (`floor-empty`) and one that only calls `bpf_sk_select_reuseport` \
             (`floor-select`), in the same rounds. The counter runs at every TCP state change \
             of the host (about ten per connection, clients included).\n\n\
             | workers | program | ns per decision | × floor-select | counter ns per run |\n\
             |---|---|---|---|---|"
        );
        for c in &bench.decision_cost {
            let counter = Spread::of(c.runs.iter().map(|r| r.counter_ns_per_run));
            let _ = writeln!(
                out,
                "| {} | {} | {} | {} | {} |",
                c.workers,
                c.mode,
                c.ns_per_decision.show(0),
                c.versus_select
                    .map_or_else(|| "-".to_owned(), |r| format!("{r:.2}")),
                optional(counter.as_ref(), 0)
            );
        }
    }
    out.push_str(&peer::report::markdown(bench));
    let _ = writeln!(out, "\n## Plots\n");
    for (file, title) in PLOTS {
        let _ = writeln!(out, "![{title}]({file})\n");
    }
    out
}

/// The table printed at the end.
#[must_use]
pub fn terminal(bench: &Bench) -> String {
    let mut out = String::new();
    let _ = writeln!(out, "placement: {}", bench.placement.description);
    if !bench.cases.is_empty() {
        terminal_header(&mut out, "mode");
    }
    for c in &bench.cases {
        terminal_row(
            &mut out,
            [
                c.case.scenario.name(),
                c.case.pattern.name(),
                c.case.mode.name(),
            ],
            &c.summary,
        );
    }
    out.push_str(&lifecycle_report::terminal(bench));
    for c in &bench.decision_cost {
        let _ = writeln!(
            out,
            "cost {:>4} workers {:<13} {:>18} ns per decision {}",
            c.workers,
            c.mode.steering(),
            c.ns_per_decision.show(0),
            c.versus_select
                .map_or_else(String::new, |r| format!("({r:.2}× floor-select)"))
        );
    }
    out.push_str(&peer::report::terminal(bench));
    for t in bench
        .targets
        .iter()
        .filter(|t| t.verdict != Verdict::NotMeasured)
    {
        let _ = writeln!(
            out,
            "target {}: {} ({})",
            t.verdict.name(),
            t.wanted,
            t.measured
        );
    }
    out
}

/// The columns of a case's medians in the markdown tables, after its name.
pub(crate) const SUMMARY_HEADER: &str = "workers | req/s | p50 ms | p90 ms | p99 ms | p99.9 ms | \
     failed | share max/min | share CV | CPU s workers | supervisor | generator |";
/// Their rule line.
pub(crate) const SUMMARY_RULE: &str = "---|---|---|---|---|---|---|---|---|---|---|---|";

/// A case's cells under [`SUMMARY_HEADER`].
pub(crate) fn summary_cells(workers: u32, m: &Summary) -> String {
    format!(
        "{} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} |",
        workers,
        m.requests_per_second.show(0),
        m.p50_ms.show(2),
        m.p90_ms.show(2),
        m.p99_ms.show(2),
        m.p999_ms.show(2),
        m.failed.show(0),
        optional(m.share_max_over_min.as_ref(), 3),
        optional(m.share_cv.as_ref(), 3),
        m.cpu_workers_seconds.show(2),
        m.cpu_supervisor_seconds.show(2),
        m.cpu_generator_seconds.show(2),
    )
}

/// The terminal table's header, its third column named `name`.
pub(crate) fn terminal_header(out: &mut String, name: &str) {
    let _ = writeln!(
        out,
        "{:<8} {:<12} {:<12} {:>22} {:>20} {:>8} {:>8}",
        "handler", "pattern", name, "req/s", "p99 ms", "failed", "max/min"
    );
}

/// One line of the terminal table: handler, pattern and mode (or server), then the medians.
pub(crate) fn terminal_row(out: &mut String, names: [&str; 3], m: &Summary) {
    let _ = writeln!(
        out,
        "{:<8} {:<12} {:<12} {:>22} {:>20} {:>8} {:>8}",
        names[0],
        names[1],
        names[2],
        m.requests_per_second.show(0),
        m.p99_ms.show(2),
        m.failed.show(0),
        m.share_max_over_min
            .map_or_else(|| "-".to_owned(), |r| format!("{:.3}", r.median)),
    );
}

fn optional(spread: Option<&Spread>, decimals: usize) -> String {
    spread.map_or_else(|| "-".to_owned(), |s| s.show(decimals))
}

#[cfg(test)]
pub(crate) mod tests {
    use cluster_load::{ErrorCounts, LatencySummary, Share};

    use super::*;
    use crate::{
        cpu::Placement,
        decision_cost::{CostMode, CostRun},
        matrix::{Case, Iterations, Mode, Pattern, Scenario},
        peer::{Peer, Status},
        results::{Calibration, CaseResult, CpuSeconds, Run, SCHEMA, Settings, Summary, System},
        targets,
    };

    fn run(round: usize, rps: f64, slots: [u64; 2]) -> Run {
        Run {
            round,
            elapsed_seconds: 1.0,
            requests: slots[0] + slots[1],
            ok: slots[0] + slots[1],
            failed: 0,
            requests_per_second: rps,
            latency: LatencySummary {
                count: 10,
                p50_us: 1000,
                p90_us: 2000,
                p99_us: 3000,
                p999_us: 4000,
                ..LatencySummary::default()
            },
            errors: ErrorCounts::default(),
            by_slot: Share::of([(0, slots[0]), (1, slots[1])].into(), 0),
            cpu: CpuSeconds {
                workers: 1.0,
                supervisor: 0.01,
                generator: 0.5,
            },
        }
    }

    /// A bench of two modes, light handler, new connection per request, two rounds each.
    pub(crate) fn sample() -> Bench {
        let case = |mode, runs: Vec<Run>| CaseResult {
            case: Case {
                scenario: Scenario::Light,
                pattern: Pattern::PerRequest,
                mode,
            },
            workers: 2,
            summary: Summary::of(&runs),
            runs,
        };
        let mut bench = Bench {
            schema: SCHEMA,
            command: vec!["cluster-bench".to_owned(), "--quick".to_owned()],
            started_unix: 0,
            system: System {
                kernel: "6.18.0".to_owned(),
                cpu_model: "Test CPU".to_owned(),
                cpus: 2,
                cluster_version: "cluster 0.1.0".to_owned(),
                bench_version: "0.1.0".to_owned(),
                tcp_migrate_req: Some(false),
            },
            placement: Placement::plan(vec![0, 1], 2, true),
            settings: Settings {
                duration_seconds: 1.0,
                workers: 2,
                concurrency: 8,
                rounds: 2,
                modes: vec![Mode::Hash, Mode::RoundRobin],
                patterns: vec![Pattern::PerRequest],
                scenarios: vec![Scenario::Light],
                iterations: Iterations::default(),
                sticky_sources: 256,
                cost_workers: vec![2],
            },
            calibration: Some(Calibration {
                iterations: 16_000_000,
                loop_ms: 6.0,
                ns_per_iteration: 0.375,
            }),
            lifecycle: Vec::new(),
            decision_cost: crate::decision_cost::summarize(vec![
                (CostMode::FloorSelect, 2, cost_run(200.0)),
                (CostMode::RoundRobin, 2, cost_run(250.0)),
            ]),
            cases: vec![
                case(
                    Mode::Hash,
                    vec![run(1, 1000.0, [600, 400]), run(2, 1200.0, [500, 500])],
                ),
                case(
                    Mode::RoundRobin,
                    vec![run(1, 990.0, [500, 500]), run(2, 1010.0, [501, 500])],
                ),
            ],
            peer: Peer::skipped(Status::SkippedNoNode),
            targets: Vec::new(),
        };
        bench.targets = targets::evaluate(&bench);
        bench
    }

    fn cost_run(ns_per_decision: f64) -> CostRun {
        CostRun {
            round: 1,
            decisions: 1000,
            ns_per_decision,
            counter_runs: 10_000,
            counter_ns_per_run: 90.0,
            requests_per_second: 5000.0,
        }
    }

    #[test]
    fn the_report_states_placement_medians_and_targets() {
        let report = markdown(&sample());
        assert!(
            report.contains("placement: not pinned (--pin needs 3 CPUs"),
            "{report}"
        );
        assert!(report.contains("## light handler, per-request"), "{report}");
        // hash: median of 1000 and 1200 with its range; share 1.5 and 1.0.
        assert!(
            report.contains("| hash | 2 | 1100 (1000–1200) | 1.00 | 2.00 | 3.00 | 4.00 | 0 | 1.250 (1.000–1.500) |"),
            "{report}"
        );
        assert!(
            report.contains(
                "| round-robin ≥ 0.97 × hash req/s, light handler, per-request | 0.91× | MISSED |"
            ),
            "{report}"
        );
        assert!(
            report.contains("| round-robin share max/min ≤ 1.02 (new connection per request), light handler | 1.001 | met |"),
            "{report}"
        );
        assert!(
            report.contains("| 2 | round-robin | 250 | 1.25 | 90 |"),
            "{report}"
        );
        assert!(
            report.contains(
                "| round-robin decision cost within 1.3 × the select-only program, 2 workers | 1.25× (250 ns; floor-select 200 ns) | met |"
            ),
            "{report}"
        );
        assert!(
            report.contains("2 met, 1 missed, 3 not measured."),
            "{report}"
        );
        for (file, _) in PLOTS {
            assert!(report.contains(&format!("]({file})")), "{report}");
        }
    }

    #[test]
    fn the_terminal_table_has_a_line_per_case() {
        let table = terminal(&sample());
        assert!(
            table.contains("light    per-request  round-robin"),
            "{table}"
        );
        assert!(
            table.contains("target MISSED: round-robin ≥ 0.97 × hash"),
            "{table}"
        );
        assert!(!table.contains("not measured"), "{table}");
    }
}
