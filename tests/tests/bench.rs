//! `cargo xtask bench --quick` as a user runs it: two modes against the real pool, and its
//! outputs are whole: bench-report.md with its sections, bench.json with the shape the README
//! documents, and SVG plots that parse as XML. No figure is asserted: speed is never tested.

use std::{
    fs,
    path::{Path, PathBuf},
    process::Command,
};

use cluster_tests::{bench_binary, cluster_binary, require_root, run_captured};
use serde_json::Value;

/// A fresh output directory, removed when dropped.
struct OutDir(PathBuf);

impl OutDir {
    fn new() -> Self {
        let dir = std::env::temp_dir().join(format!("cluster-bench-test-{}", std::process::id()));
        let _ = fs::remove_dir_all(&dir);
        Self(dir)
    }
}

impl Drop for OutDir {
    fn drop(&mut self) {
        let _ = fs::remove_dir_all(&self.0);
    }
}

/// `path` (keys joined by `.`) in `json`, or a panic naming it.
fn at<'a>(json: &'a Value, path: &str) -> &'a Value {
    path.split('.').fold(json, |value, key| {
        let next = match key.parse::<usize>() {
            Ok(index) => value.get(index),
            Err(_) => value.get(key),
        };
        next.unwrap_or_else(|| panic!("bench.json has no {path} (stopped at {key}): {json:#}"))
    })
}

fn assert_well_formed_svg(path: &Path) {
    let svg = fs::read_to_string(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    assert!(svg.starts_with("<svg"), "{}: {svg:.100}", path.display());
    // A real XML parser, so an unclosed element or a bad escape fails.
    let mut parse = Command::new("python3");
    parse
        .args([
            "-c",
            "import sys, xml.dom.minidom; xml.dom.minidom.parse(sys.argv[1])",
        ])
        .arg(path);
    let parsed = run_captured(parse);
    assert!(
        parsed.status.success(),
        "{} is not XML: {}",
        path.display(),
        parsed.stderr
    );
}

#[test]
fn a_quick_bench_writes_its_report_json_and_plots() {
    require_root();
    let out = OutDir::new();
    let mut bench = Command::new(bench_binary());
    bench
        .arg("--cluster")
        .arg(cluster_binary())
        .args([
            "--quick",
            "--duration",
            "1",
            "--concurrency",
            "4",
            "--quiet",
            "--out",
        ])
        .arg(&out.0);
    let run = run_captured(bench);
    assert!(
        run.status.success(),
        "the bench failed: {}\n{}",
        run.stdout,
        run.stderr
    );
    assert!(run.stdout.contains("placement: "), "{}", run.stdout);

    let json: Value =
        serde_json::from_str(&fs::read_to_string(out.0.join("bench.json")).unwrap()).unwrap();
    assert_eq!(at(&json, "schema"), 1);
    for path in [
        "command.0",
        "started_unix",
        "system.kernel",
        "system.cpu_model",
        "system.cpus",
        "system.cluster_version",
        "system.bench_version",
        "placement.pinned",
        "placement.description",
        "placement.generator_cpus",
        "placement.pool_cpus",
        "settings.duration_seconds",
        "settings.workers",
        "settings.concurrency",
        "settings.rounds",
        "settings.iterations.uniform",
        "calibration.loop_ms",
        "calibration.ns_per_iteration",
    ] {
        at(&json, path);
    }
    let cases = at(&json, "cases").as_array().unwrap();
    let modes: Vec<&str> = cases
        .iter()
        .map(|c| at(c, "mode").as_str().unwrap())
        .collect();
    assert_eq!(modes, ["shared", "round-robin"], "--quick runs two modes");
    for case in cases {
        assert_eq!(at(case, "scenario"), "light");
        assert_eq!(at(case, "pattern"), "per-request");
        assert_eq!(at(case, "workers"), 2);
        let runs = at(case, "runs").as_array().unwrap();
        assert_eq!(runs.len(), 1, "--quick runs one round");
        let run = &runs[0];
        for path in [
            "requests_per_second",
            "latency.p50_us",
            "latency.p90_us",
            "latency.p99_us",
            "latency.p999_us",
            "errors.refused",
            "errors.reset",
            "errors.timeout",
            "errors.bad_status",
            "errors.truncated",
            "errors.idle_closed",
            "by_slot.counts",
            "by_slot.max_over_min",
            "by_slot.cv",
            "cpu.workers",
            "cpu.supervisor",
            "cpu.generator",
        ] {
            at(run, path);
        }
        // Every slot is listed in the share, answered or not.
        assert_eq!(at(run, "by_slot.counts").as_object().unwrap().len(), 2);
        assert!(at(run, "ok").as_u64().unwrap() > 0, "{run:#}");
        for path in [
            "requests_per_second.median",
            "requests_per_second.min",
            "requests_per_second.max",
            "p99_ms.median",
            "failed.median",
            "cpu_workers_seconds.median",
        ] {
            at(at(case, "summary"), path);
        }
    }
    assert!(
        at(&json, "lifecycle").as_array().unwrap().is_empty(),
        "--quick runs no lifecycle scenario"
    );
    // The decision cost: the floors and the in-kernel mode asked for, at --workers, with the
    // kernel's run stats read (decisions counted), whatever they cost.
    assert_eq!(at(&json, "settings.cost_workers"), &serde_json::json!([2]));
    let costs = at(&json, "decision_cost").as_array().unwrap();
    let cost_modes: Vec<&str> = costs
        .iter()
        .map(|c| at(c, "mode").as_str().unwrap())
        .collect();
    assert_eq!(cost_modes, ["floor-empty", "floor-select", "round-robin"]);
    for cost in costs {
        assert_eq!(at(cost, "workers"), 2);
        at(cost, "ns_per_decision.median");
        assert!(at(cost, "versus_select").is_f64(), "{cost}");
        let run = at(cost, "runs.0");
        assert!(at(run, "decisions").as_u64().unwrap() > 0, "{cost}");
        assert!(at(run, "counter_runs").as_u64().unwrap() > 0, "{cost}");
        at(run, "ns_per_decision");
        at(run, "counter_ns_per_run");
    }
    for target in at(&json, "targets").as_array().unwrap() {
        assert!(
            ["met", "missed", "not-measured"].contains(&at(target, "verdict").as_str().unwrap()),
            "{target}"
        );
        at(target, "wanted");
        at(target, "measured");
    }

    let report = fs::read_to_string(out.0.join("bench-report.md")).unwrap();
    for section in [
        "# Bench report",
        "- placement: ",
        "## Targets",
        "## light handler, per-request",
        "## Decision cost",
        "| 2 | round-robin |",
        "| shared | 2 |",
        "| round-robin | 2 |",
        "## Plots",
    ] {
        assert!(report.contains(section), "no {section:?} in:\n{report}");
    }
    for svg in ["throughput.svg", "latency.svg", "share.svg"] {
        assert!(report.contains(&format!("]({svg})")), "{report}");
        assert_well_formed_svg(&out.0.join(svg));
    }
}
