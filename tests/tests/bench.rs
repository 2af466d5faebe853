//! `cargo xtask bench --quick` as a user runs it: two modes against the real pool, the Node
//! peer beside them (Node's cluster and the Node app under the pool), the stuck-worker and scale
//! lifecycle scenarios, and its outputs are whole: bench-report.md with its sections, bench.json
//! with the shape the README documents (the lifecycle runs' events and time series included),
//! and SVG plots, the latency traces among them, that parse as XML. Without `node` on PATH the
//! peer is skipped, and bench.json says so. No figure is asserted: speed is never tested.

use std::{fs, path::Path, process::Command};

use cluster_tests::{ScratchDir, bench_binary, cluster_binary, require_root, run_captured};
use serde_json::Value;

/// Asserts that `text` (named `what` in the message) contains every one of `needles`.
fn assert_contains_all(text: &str, what: &str, needles: &[&str]) {
    for needle in needles {
        assert!(
            text.contains(needle),
            "no {needle:?} in the {what}:\n{text}"
        );
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

/// Runs `cluster-bench --quick --duration SECONDS --concurrency 4 --quiet --out OUT ARGS` with
/// `path` as PATH (`None`: this process's), asserts that it succeeded, and returns its stdout and
/// bench.json.
fn quick_bench(
    out: &ScratchDir,
    seconds: &str,
    args: &[&str],
    path: Option<&std::ffi::OsStr>,
) -> (String, Value) {
    let mut bench = Command::new(bench_binary());
    bench
        .arg("--cluster")
        .arg(cluster_binary())
        .args([
            "--quick",
            "--duration",
            seconds,
            "--concurrency",
            "4",
            "--quiet",
            "--out",
        ])
        .arg(out.path())
        .args(args);
    if let Some(path) = path {
        bench.env("PATH", path);
    }
    let run = run_captured(bench);
    assert!(
        run.status.success(),
        "the bench failed: {}\n{}",
        run.stdout,
        run.stderr
    );
    let json =
        serde_json::from_str(&fs::read_to_string(out.path().join("bench.json")).unwrap()).unwrap();
    (run.stdout, json)
}

/// Whether `node` is on PATH (the bench's peer needs it; `cargo xtask test` installs it).
fn node_on_path() -> bool {
    Command::new("node")
        .arg("--version")
        .output()
        .is_ok_and(|o| o.status.success())
}

#[test]
fn a_quick_bench_writes_its_report_json_and_plots() {
    require_root();
    assert!(
        node_on_path(),
        "this test runs the bench's Node peer and needs `node` on PATH: install nodejs (as root \
         `cargo xtask test` does with apt-get)"
    );
    let out = ScratchDir::new("bench-test");
    let (stdout, json) = quick_bench(&out, "1", &["--lifecycle", "stuck,scale"], None);
    assert!(stdout.contains("placement: "), "{stdout}");
    assert_eq!(at(&json, "schema"), 2);
    for path in [
        "command.0",
        "started_unix",
        "system.kernel",
        "system.cpu_model",
        "system.cpus",
        "system.cluster_version",
        "system.bench_version",
        "system.tcp_migrate_req",
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
    check_lifecycle(&json);
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

    let report = fs::read_to_string(out.path().join("bench-report.md")).unwrap();
    assert_contains_all(
        &report,
        "report",
        &[
            "# Bench report",
            "- placement: ",
            "## Targets",
            "## light handler, per-request",
            "## Decision cost",
            "| 2 | round-robin |",
            "| shared | 2 |",
            "| round-robin | 2 |",
            "## Plots",
            "## Lifecycle scenarios",
            "| stuck | per-request | shared |",
            "| scale | per-request | round-robin |",
            "**stuck**: ",
            "**scale**: ",
        ],
    );
    assert_contains_all(
        &stdout,
        "stdout",
        &[
            "stuck             per-request  shared",
            "scale             per-request  round-robin",
        ],
    );
    for svg in [
        "throughput.svg",
        "latency.svg",
        "share.svg",
        "node-peer.svg",
        "trace-stuck.svg",
        "trace-scale.svg",
    ] {
        assert!(report.contains(&format!("]({svg})")), "{report}");
        assert_well_formed_svg(&out.path().join(svg));
    }
    assert_node_peer_ran(&json, &report, &out);
}

/// The peer ran the Node app under Node's cluster and under the pool's two quick modes, every
/// worker answered with its slot, and the report sets them side by side.
fn assert_node_peer_ran(json: &Value, report: &str, out: &ScratchDir) {
    let peer = at(json, "peer");
    assert_eq!(at(peer, "status"), "ran", "{peer:#}");
    assert!(at(peer, "skipped_because").is_null(), "{peer:#}");
    assert!(at(peer, "node_version").as_str().unwrap().starts_with('v'));
    let app = Path::new(at(peer, "app").as_str().unwrap());
    assert_eq!(
        app,
        out.path().join("node/server.js").canonicalize().unwrap()
    );
    for path in [
        "iterations.uniform",
        "iterations.mixed_light",
        "iterations.mixed_heavy",
        "calibration.loop_ms",
        "calibration.ns_per_iteration",
    ] {
        at(peer, path);
    }
    let servers = ["node-cluster", "shared", "round-robin"];
    assert_eq!(at(peer, "servers"), &serde_json::json!(servers));
    let cases = at(peer, "cases").as_array().unwrap();
    let ran: Vec<&str> = cases
        .iter()
        .map(|c| at(c, "server").as_str().unwrap())
        .collect();
    assert_eq!(ran, servers, "{peer:#}");
    for case in cases {
        assert_eq!(at(case, "scenario"), "light");
        assert_eq!(at(case, "pattern"), "per-request");
        assert_eq!(at(case, "workers"), 2);
        let run = at(case, "runs.0");
        assert!(at(run, "ok").as_u64().unwrap() > 0, "{case:#}");
        assert_eq!(at(run, "failed"), 0, "{case:#}");
        // Both Node workers answered, each with its own x-worker-slot.
        let counts = at(run, "by_slot.counts").as_object().unwrap();
        assert_eq!(counts.len(), 2, "{case:#}");
        assert!(counts.values().all(|n| n.as_u64().unwrap() > 0), "{case:#}");
        assert_eq!(at(run, "by_slot.without_header"), 0, "{case:#}");
        at(case, "summary.requests_per_second.median");
        at(case, "runs.0.cpu.supervisor");
    }
    let targets = at(json, "targets").as_array().unwrap();
    assert!(
        targets.iter().any(|t| {
            at(t, "wanted")
                .as_str()
                .unwrap()
                .contains("under Node's cluster")
                && at(t, "verdict") != "not-measured"
        }),
        "the no-loop target against Node's cluster is measured: {targets:#?}"
    );
    assert_contains_all(
        report,
        "report",
        &[
            "## Node peer: user-space, OS and in-kernel scheduling side by side",
            "### Node app, no loop handler, per-request",
            "| user space | node-cluster | 2 |",
            "| OS | shared | 2 |",
            "| in kernel | round-robin | 2 |",
        ],
    );
}

/// Without `node` on PATH the bench still runs, and bench.json and the report say the peer was
/// skipped. `shared` alone, without the decision cost, needs no root.
#[test]
fn without_node_the_peer_is_skipped_and_said_so() {
    let path = std::env::var_os("PATH").unwrap_or_default();
    let without_node =
        std::env::join_paths(std::env::split_paths(&path).filter(|dir| !dir.join("node").exists()))
            .unwrap();
    let out = ScratchDir::new("bench-no-node");
    let (_, json) = quick_bench(
        &out,
        "1",
        &["--modes", "shared", "--no-cost"],
        Some(&without_node),
    );
    let peer = at(&json, "peer");
    assert_eq!(at(peer, "status"), "skipped-no-node", "{peer:#}");
    assert!(at(peer, "cases").as_array().unwrap().is_empty());
    assert!(at(peer, "skipped_because").is_string(), "{peer:#}");
    let node_targets: Vec<&Value> = at(&json, "targets")
        .as_array()
        .unwrap()
        .iter()
        .filter(|t| at(t, "wanted").as_str().unwrap().contains("Node's cluster"))
        .collect();
    assert_eq!(node_targets.len(), 1, "{node_targets:#?}");
    assert_eq!(at(node_targets[0], "verdict"), "not-measured");
    assert!(!out.path().join("node-peer.svg").exists());
    assert!(
        !out.path().join("node").exists(),
        "no app is written when skipped"
    );
    let report = fs::read_to_string(out.path().join("bench-report.md")).unwrap();
    assert!(
        report.contains("## Node peer: user-space, OS and in-kernel scheduling side by side"),
        "{report}"
    );
}

/// The lifecycle runs asked for, one per scenario and mode, with their documented fields, what
/// was done to the pool, and a time series with a value per bucket.
fn check_lifecycle(json: &Value) {
    let runs = at(json, "lifecycle").as_array().unwrap();
    let ran: Vec<(&str, &str)> = runs
        .iter()
        .map(|r| {
            (
                at(r, "scenario").as_str().unwrap(),
                at(r, "mode").as_str().unwrap(),
            )
        })
        .collect();
    assert_eq!(
        ran,
        [
            ("stuck", "shared"),
            ("stuck", "round-robin"),
            ("scale", "shared"),
            ("scale", "round-robin")
        ]
    );
    for run in runs {
        for path in [
            "pattern",
            "pool_options",
            "timeout_seconds",
            "disturbances",
            "requests",
            "failed",
            "errors.idle_closed",
            "errors.timeout",
            "errors.reset",
            "events",
            "timeline.bucket_seconds",
        ] {
            at(run, path);
        }
        assert!(at(run, "requests").as_u64().unwrap() > 0, "{run:#}");
        assert!(
            at(run, "kill").is_null(),
            "only the kill scenario counts: {run:#}"
        );
        let timeline = at(run, "timeline");
        let buckets = at(timeline, "ok").as_array().unwrap().len();
        assert_eq!(buckets, 40, "a run is recorded in 40 buckets: {timeline:#}");
        for list in ["failed", "p50_us", "p99_us", "max_us"] {
            assert_eq!(
                at(timeline, list).as_array().unwrap().len(),
                buckets,
                "{list}"
            );
        }
        let events: Vec<&str> = at(run, "events")
            .as_array()
            .unwrap()
            .iter()
            .map(|e| {
                at(e, "at_seconds").as_f64().unwrap();
                at(e, "until_seconds");
                at(e, "what").as_str().unwrap()
            })
            .collect();
        if at(run, "scenario") == "stuck" {
            assert_eq!(at(run, "disturbances"), 1, "{run:#}");
            assert_eq!(events.first(), Some(&"SIGSTOP"), "{run:#}");
            assert_eq!(at(run, "timeout_seconds"), 2.0, "{run:#}");
            assert_eq!(at(run, "pool_options.3"), "30", "{run:#}");
        } else {
            assert_eq!(at(run, "disturbances"), 2, "{run:#}");
            assert_eq!(events, ["scale to 4", "scale to 2"], "{run:#}");
        }
    }
}

/// The kill and reload scenarios, kept alive under round-robin, 4 clients over 2 workers: the
/// killed worker is counted holding exactly its 2 connections (the rotation is exact), each of
/// them either fails its request or is found closed before the next one is sent, and the
/// failures are judged against that count. The reloads fail nothing.
#[test]
fn the_kill_scenario_counts_what_the_killed_worker_held() {
    require_root();
    let out = ScratchDir::new("bench-kill");
    let (stdout, json) = quick_bench(
        &out,
        "2",
        &[
            "--modes",
            "round-robin",
            "--patterns",
            "keep-alive",
            "--lifecycle",
            "reload,kill",
            "--no-cost",
            "--peer",
            "none",
        ],
        None,
    );
    let runs = at(&json, "lifecycle").as_array().unwrap();
    let scenarios: Vec<&str> = runs
        .iter()
        .map(|r| at(r, "scenario").as_str().unwrap())
        .collect();
    assert_eq!(scenarios, ["reload", "kill"]);
    let (reload, kill) = (&runs[0], &runs[1]);
    assert_eq!(at(reload, "disturbances"), 3, "{reload:#}");
    assert_eq!(at(reload, "failed"), 0, "{reload:#}");
    assert_eq!(at(kill, "disturbances"), 1, "one kill in 2 s: {kill:#}");
    let account = at(kill, "kill");
    assert_eq!(at(account, "kills.0.held.connections"), 2, "{kill:#}");
    assert_eq!(at(account, "kills.0.held.queued"), 0, "{kill:#}");
    assert!(at(account, "kills.0.pid").as_i64().unwrap() > 1, "{kill:#}");
    assert!(
        at(account, "kills.0.at_seconds").as_f64().unwrap() >= 1.0,
        "{kill:#}"
    );
    assert_eq!(at(account, "held"), 2, "{kill:#}");
    assert_eq!(at(account, "queued"), 0, "{kill:#}");
    assert_eq!(at(account, "bound"), 2, "{kill:#}");
    let failed = at(kill, "failed").as_u64().unwrap();
    let idle_closed = at(kill, "errors.idle_closed").as_u64().unwrap();
    assert_eq!(failed + idle_closed, 2, "{kill:#}");
    assert_eq!(
        at(account, "failed_in_flight").as_u64().unwrap()
            + at(account, "failed_idle").as_u64().unwrap(),
        failed,
        "{kill:#}"
    );
    let verdicts: Vec<(&str, &str)> = at(&json, "targets")
        .as_array()
        .unwrap()
        .iter()
        .filter(|t| {
            let wanted = at(t, "wanted").as_str().unwrap();
            wanted.contains("killed") || wanted.contains("reloads")
        })
        .map(|t| {
            (
                at(t, "wanted").as_str().unwrap(),
                at(t, "verdict").as_str().unwrap(),
            )
        })
        .collect();
    assert_eq!(
        verdicts,
        [
            (
                "3 rolling reloads: 0 failed, round-robin, keep-alive",
                "met"
            ),
            (
                "1 worker killed: failed ≤ connections held + queued at the kills, round-robin, \
                 keep-alive",
                "met"
            )
        ],
        "{stdout}"
    );
    let report = fs::read_to_string(out.path().join("bench-report.md")).unwrap();
    assert_contains_all(
        &report,
        "report",
        &[
            "### Killed workers: failures against what they held",
            "| keep-alive | round-robin | 1.",
            "`net.ipv4.tcp_migrate_req`: ",
        ],
    );
    assert_well_formed_svg(&out.path().join("trace-kill.svg"));
}
