//! The lifecycle scenarios in the human outputs: their section of bench-report.md (every run,
//! the stuck worker with the health check on and off side by side, what the README says of each
//! scenario, the time-series plots) and their lines of the terminal table.

use std::fmt::Write as _;

use cluster_load::{ErrorClass, ErrorCounts};

use crate::{
    kills::KillAccount,
    lifecycle::{Event, Lifecycle, LifecycleRun, RELOADS, SCALE_BY},
    results::Bench,
    stuck::HUNG,
    traces,
};

/// The lifecycle section of bench-report.md; empty when no scenario ran.
#[must_use]
pub fn markdown(bench: &Bench) -> String {
    let mut out = String::new();
    if bench.lifecycle.is_empty() {
        return out;
    }
    let _ = writeln!(
        out,
        "\n## Lifecycle scenarios (light handler, one run each)\n\n\
         Times are seconds since the load started; a range runs until the step was over. \
         The load is recorded in {} buckets of {} s, by the time each request was sent.\n\n\
         | scenario | pattern | mode | done (s) | failed / total | errors | idle closed |\n\
         |---|---|---|---|---|---|---|",
        bench.lifecycle[0].timeline.len(),
        bench.lifecycle[0].timeline.bucket_seconds
    );
    for run in &bench.lifecycle {
        let _ = writeln!(
            out,
            "| {} | {} | {} | {} | {} / {} | {} | {} |",
            run.scenario.name(),
            run.pattern,
            run.mode,
            events(&run.events),
            run.failed,
            run.requests,
            errors(&run.errors),
            run.errors.idle_closed
        );
    }
    killed(bench, &mut out);
    stuck_on_and_off(bench, &mut out);
    let ran = |scenario| bench.lifecycle.iter().find(|r| r.scenario == scenario);
    for scenario in Lifecycle::ALL {
        if let Some(run) = ran(scenario) {
            let _ = writeln!(out, "\n{}", what_to_expect(run, bench));
        }
    }
    let _ = writeln!(out);
    for (file, title) in traces::files(bench) {
        let _ = writeln!(out, "![{title}]({file})\n");
    }
    out
}

/// The terminal table's lifecycle lines; empty when no scenario ran.
#[must_use]
pub fn terminal(bench: &Bench) -> String {
    let mut out = String::new();
    if bench.lifecycle.is_empty() {
        return out;
    }
    let _ = writeln!(
        out,
        "{:<17} {:<12} {:<12} {:>20}  errors",
        "lifecycle", "pattern", "mode", "failed / total"
    );
    for run in &bench.lifecycle {
        let _ = writeln!(
            out,
            "{:<17} {:<12} {:<12} {:>20}  {}",
            run.scenario.name(),
            run.pattern.name(),
            run.mode.name(),
            format!("{} / {}", run.failed, run.requests),
            errors(&run.errors)
        );
    }
    out
}

/// The kill runs' failures against what the killed workers held, where any ran.
fn killed(bench: &Bench, out: &mut String) {
    let runs: Vec<(&LifecycleRun, &KillAccount)> = bench
        .lifecycle
        .iter()
        .filter_map(|run| Some((run, run.kill.as_ref()?)))
        .collect();
    if runs.is_empty() {
        return;
    }
    let _ = writeln!(
        out,
        "\n### Killed workers: failures against what they held\n\n\
         | pattern | mode | kills at (s): connections held + queued | bound | failed | in flight \
         | sent on an idle held connection | idle closed, sent again |\n\
         |---|---|---|---|---|---|---|---|"
    );
    for (run, account) in runs {
        let kills: Vec<String> = account
            .kills
            .iter()
            .map(|k| {
                format!(
                    "{:.2}: {} + {}",
                    k.at_seconds, k.held.connections, k.held.queued
                )
            })
            .collect();
        let _ = writeln!(
            out,
            "| {} | {} | {} | {} | {} | {} | {} | {} |",
            run.pattern,
            run.mode,
            if kills.is_empty() {
                "none".to_owned()
            } else {
                kills.join("; ")
            },
            account.bound,
            run.failed,
            account.failed_in_flight,
            account.failed_idle,
            run.errors.idle_closed
        );
    }
}

/// The stuck scenario with the health check on and off, side by side, where both ran.
fn stuck_on_and_off(bench: &Bench, out: &mut String) {
    let pairs: Vec<(&LifecycleRun, &LifecycleRun)> = bench
        .lifecycle
        .iter()
        .filter(|r| r.scenario == Lifecycle::Stuck)
        .filter_map(|on| {
            let off = bench.lifecycle.iter().find(|r| {
                r.scenario == Lifecycle::StuckHealthOff
                    && (r.mode, r.pattern) == (on.mode, on.pattern)
            })?;
            Some((on, off))
        })
        .collect();
    let Some((on, off)) = pairs.first() else {
        return;
    };
    let _ = writeln!(
        out,
        "\n### Stuck worker: health check on and off\n\n\
         | pattern | mode | failed, health on (`{}`) | failed, health off (`{}`) |\n\
         |---|---|---|---|",
        on.pool_options.join(" "),
        off.pool_options.join(" ")
    );
    for (on, off) in pairs {
        let _ = writeln!(
            out,
            "| {} | {} | {} of {} ({}) | {} of {} ({}) |",
            on.pattern,
            on.mode,
            on.failed,
            on.requests,
            errors(&on.errors),
            off.failed,
            off.requests,
            errors(&off.errors)
        );
    }
}

/// What the README says of `run`'s scenario, and what the bench did, in plain words.
fn what_to_expect(run: &LifecycleRun, bench: &Bench) -> String {
    let timeout = run.timeout_seconds;
    let workers = bench.settings.workers;
    match run.scenario {
        Lifecycle::Reload => format!(
            "**reload**: {RELOADS} rolling reloads (`cluster reload`), evenly spread. The README \
             (Reloads) promises nothing lost under round-robin, sticky, least-conn and shared; \
             under hash connections queued on a closing socket are reset unless \
             `net.ipv4.tcp_migrate_req=1`, though the built-in worker accepts its queue before \
             it closes (see the targets). Request timeout {timeout} s."
        ),
        Lifecycle::Kill => format!(
            "**kill**: a random serving worker SIGKILLed every second. Just before, the bench \
             stops it (SIGSTOP), counts the connections it holds on the pool's port (its \
             sockets copied out with `pidfd_getfd`) and, where the worker has a listening socket \
             of its own (not under shared), the connections queued on it (sock_diag), so the \
             count cannot move before the kill. Each held \
             connection has a request in flight or waits idle for the client's next one; a \
             queued one has its request in flight (the program modes migrate it to a live \
             worker). The target is failed ≤ held + queued, summed over the kills. A request \
             sent on a kept-alive connection after its worker was stopped was not in flight at \
             the kill, and is counted apart (sent on an idle held connection); one that found \
             its connection closed before it was sent went out on a new connection and did not \
             fail (idle closed). Under `hash` a closing socket's queue is reset unless \
             `net.ipv4.tcp_migrate_req=1` ({} in this run): then a client that connects again at \
             once can reach the killed worker's listener before it has left the group, and is \
             reset as well, beyond the bound (with the sysctl at 1, three runs by hand of `hash` \
             kept alive failed exactly the 13, 13 and 14 connections held). Request timeout \
             {timeout} s.",
            bench.system.tcp_migrate_req_value()
        ),
        Lifecycle::Stuck => format!(
            "**stuck**: the worker that had answered the load last (else a random serving one) \
             was stopped with SIGSTOP at \
             a tenth of the run and continued with SIGCONT when the load stopped sending; \
             its pools ran with `{}` (the defaults). The request timeout was {timeout} s, as in the \
             README's health experiment, so a client caught on the stopped worker fails and \
             connects again during the run (10 s in the other scenarios). The README (Worker \
             health) says: under round-robin, sticky and least-conn a worker that leaves \
             connections queued and accepts none for `--stall-after` leaves the selection; \
             `hash` cannot skip it and keeps its share until it is killed as hung after \
             `--hang-timeout`; under `shared` the OS routes around it. What the worker had \
             accepted, or what was steered to it before it counted as stalled, waits for it \
             and fails at the timeout. The README states no count: figures only, no target. {}",
            run.pool_options.join(" "),
            hang_kills(bench)
        ),
        Lifecycle::StuckHealthOff => format!(
            "**stuck-health-off**: the same with the check off (`{}`), the README's \"before\".",
            run.pool_options.join(" ")
        ),
        Lifecycle::Scale => format!(
            "**scale**: `cluster scale {}` at a third of the run, `cluster scale {workers}` at \
             two thirds. The README (Scaling) says an added slot joins the selection once its \
             worker is ready, and a removed one (the highest) leaves it at once and drains as in \
             a reload, what is still queued migrating to the others; tested with no failed \
             request. The targets ask 0 failed of round-robin, sticky and least-conn, whose \
             program makes that selection; shared and hash are reported. Request timeout \
             {timeout} s.",
            workers + SCALE_BY
        ),
    }
}

/// Which stuck runs saw their worker killed as hung, in words.
fn hang_kills(bench: &Bench) -> String {
    let killed: Vec<String> = bench
        .lifecycle
        .iter()
        .filter(|r| r.scenario == Lifecycle::Stuck)
        .filter(|r| r.events.iter().any(|e| e.what == HUNG))
        .map(|r| format!("{} {}", r.mode, r.pattern))
        .collect();
    if killed.is_empty() {
        "No stopped worker was killed as hung: the hang timeout outlasted the run, so under \
         `hash` the stopped worker kept its share to the end."
            .to_owned()
    } else {
        format!("Killed as hung during the run: {}.", killed.join(", "))
    }
}

/// `events` in a few words: `reload 2.50–2.61, 5.00–5.08`.
fn events(events: &[Event]) -> String {
    let mut parts: Vec<(String, Vec<String>)> = Vec::new();
    for event in events {
        let when = match event.until_seconds {
            Some(until) => format!("{:.2}–{until:.2}", event.at_seconds),
            None => format!("{:.2}", event.at_seconds),
        };
        match parts.last_mut() {
            Some((what, times)) if *what == event.what => times.push(when),
            _ => parts.push((event.what.clone(), vec![when])),
        }
    }
    if parts.is_empty() {
        return "nothing".to_owned();
    }
    parts
        .iter()
        .map(|(what, times)| format!("{what} {}", times.join(", ")))
        .collect::<Vec<_>>()
        .join("; ")
}

/// The classes that failed, with their counts: `timeout 32, reset 2`, or `-`.
fn errors(errors: &ErrorCounts) -> String {
    let classes: Vec<String> = ErrorClass::ALL
        .iter()
        .filter(|c| errors.count(**c) > 0)
        .map(|c| format!("{} {}", c.name(), errors.count(*c)))
        .collect();
    if classes.is_empty() {
        "-".to_owned()
    } else {
        classes.join(", ")
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use cluster_load::{KeptAliveFailure, Timeline};

    use super::*;
    use crate::{
        held::Held,
        kills::Kill,
        matrix::{Mode, Pattern},
        report::tests::sample,
        targets::Verdict,
    };

    fn run(scenario: Lifecycle, failed: u64, timeouts: u64, events: Vec<Event>) -> LifecycleRun {
        let errors = ErrorCounts {
            timeout: timeouts,
            reset: failed - timeouts,
            ..ErrorCounts::default()
        };
        LifecycleRun {
            scenario,
            mode: Mode::RoundRobin,
            pattern: Pattern::PerRequest,
            pool_options: scenario
                .pool_options()
                .iter()
                .map(|o| (*o).to_owned())
                .collect(),
            timeout_seconds: scenario.request_timeout().as_secs_f64(),
            disturbances: 1,
            requests: 1000,
            failed,
            errors,
            kill: None,
            events,
            timeline: Timeline {
                bucket_seconds: 0.25,
                ok: vec![100; 4],
                failed: vec![0, failed, 0, 0],
                p50_us: vec![900; 4],
                p99_us: vec![2000, 0, 2100, 1900],
                max_us: vec![3000, 0, 9_000_000, 2500],
            },
        }
    }

    fn event(what: &str, at_seconds: f64, until_seconds: Option<f64>) -> Event {
        Event {
            what: what.to_owned(),
            at_seconds,
            until_seconds,
        }
    }

    /// A kill run: two kills holding 16 + 1 and 32 + 0, 40 failed, 2 of them sent on an idle
    /// held connection, 3 idle connections found closed.
    fn kill_run() -> LifecycleRun {
        let kills = vec![
            Kill {
                pid: 10,
                at_seconds: 1.004,
                held: Held {
                    connections: 16,
                    queued: 1,
                },
            },
            Kill {
                pid: 11,
                at_seconds: 2.0,
                held: Held {
                    connections: 32,
                    queued: 0,
                },
            },
        ];
        let kept_alive = [
            KeptAliveFailure {
                pid: 10,
                sent_seconds: 1.1,
            },
            KeptAliveFailure {
                pid: 11,
                sent_seconds: 2.01,
            },
        ];
        let mut run = run(
            Lifecycle::Kill,
            40,
            0,
            vec![event("SIGKILL", 1.004, None), event("SIGKILL", 2.0, None)],
        );
        run.pattern = Pattern::KeepAlive;
        run.disturbances = 2;
        run.errors.idle_closed = 3;
        run.kill = Some(KillAccount::of(kills, run.failed, &kept_alive));
        run
    }

    /// The sample bench with a kill run, a stuck run (health on and off) and a scale run.
    pub(crate) fn with_lifecycle() -> Bench {
        let mut bench = sample();
        bench.lifecycle = vec![
            kill_run(),
            run(
                Lifecycle::Stuck,
                3,
                2,
                vec![
                    event("SIGSTOP", 0.1, Some(1.0)),
                    event("stalled", 0.6, None),
                ],
            ),
            run(
                Lifecycle::StuckHealthOff,
                40,
                40,
                vec![event("SIGSTOP", 0.1, Some(1.0))],
            ),
            run(
                Lifecycle::Scale,
                0,
                0,
                vec![
                    event("scale to 4", 0.33, Some(0.5)),
                    event("scale to 2", 0.67, None),
                ],
            ),
        ];
        bench
    }

    #[test]
    fn the_report_has_every_run_and_the_stuck_worker_side_by_side() {
        let report = markdown(&with_lifecycle());
        for line in [
            "| stuck | per-request | round-robin | SIGSTOP 0.10–1.00; stalled 0.60 | 3 / 1000 | \
             reset 1, timeout 2 | 0 |",
            "| scale | per-request | round-robin | scale to 4 0.33–0.50; scale to 2 0.67 | \
             0 / 1000 | - | 0 |",
            "| per-request | round-robin | 3 of 1000 (reset 1, timeout 2) | 40 of 1000 \
             (timeout 40) |",
            "failed, health off (`--stall-after 3600 --hang-timeout 0`)",
            "**scale**: `cluster scale 4` at a third of the run, `cluster scale 2`",
            "The request timeout was 2 s",
            "4 buckets of 0.25 s",
            "No stopped worker was killed as hung",
            "| kill | keep-alive | round-robin | SIGKILL 1.00, 2.00 | 40 / 1000 | reset 40 | 3 |",
            "| keep-alive | round-robin | 1.00: 16 + 1; 2.00: 32 + 0 | 49 | 40 | 38 | 2 | 3 |",
            "counted apart (sent on an idle held connection)",
            "![Latency and failures over time: a stuck worker (SIGSTOP)](trace-stuck.svg)",
            "](trace-scale.svg)",
        ] {
            assert!(report.contains(line), "no {line:?} in:\n{report}");
        }
        assert!(!report.contains("**reload**"), "{report}");
        assert!(markdown(&sample()).is_empty());
    }

    #[test]
    fn kills_and_scaling_a_program_mode_are_judged_a_stuck_worker_is_not() {
        let mut bench = with_lifecycle();
        let targets = crate::targets::evaluate(&bench);
        let lifecycle: Vec<(&str, &str, Verdict)> = targets
            .iter()
            .filter(|t| {
                ["scale", "stuck", "kill"]
                    .iter()
                    .any(|w| t.wanted.contains(w))
            })
            .map(|t| (t.wanted.as_str(), t.measured.as_str(), t.verdict))
            .collect();
        assert_eq!(
            lifecycle,
            [
                (
                    "2 workers killed: failed ≤ connections held + queued at the kills, \
                     round-robin, keep-alive",
                    "40 failed ≤ 49 (48 held + 1 queued); 38 in flight, 2 sent on an idle \
                     held connection",
                    Verdict::Met
                ),
                (
                    "scale to 4 and back: 0 failed, round-robin, per-request",
                    "0 failed of 1000",
                    Verdict::Met
                )
            ]
        );
        bench.lifecycle[0].failed = 50;
        let targets = crate::targets::evaluate(&bench);
        let kill = targets
            .iter()
            .find(|t| t.wanted.contains("killed"))
            .unwrap();
        assert_eq!(kill.verdict, Verdict::Missed, "{kill:?}");
    }

    #[test]
    fn the_terminal_has_a_line_per_run() {
        let table = terminal(&with_lifecycle());
        assert!(
            table.contains(
                "stuck-health-off  per-request  round-robin             40 / 1000  timeout 40"
            ),
            "{table}"
        );
        assert_eq!(table.lines().count(), 5, "{table}");
        assert!(terminal(&sample()).is_empty());
    }
}
