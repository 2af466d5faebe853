//! The peer in the human outputs: a section of bench-report.md that sets Node's cluster (user
//! space), `shared` (the OS) and the in-kernel modes side by side, or says the peer was
//! skipped; and its block of the terminal table.

use std::fmt::Write as _;

use super::{Peer, Server, handler_name, plot};
use crate::{
    matrix::Scenario,
    report::{SUMMARY_HEADER, SUMMARY_RULE, summary_cells, terminal_header, terminal_row},
    results::Bench,
};

/// The section of bench-report.md.
#[must_use]
pub fn markdown(bench: &Bench) -> String {
    let peer = &bench.peer;
    let mut out =
        String::from("\n## Node peer: user-space, OS and in-kernel scheduling side by side\n\n");
    if let Some(why) = peer.status.skipped_because() {
        let _ = writeln!(out, "Skipped: {why}.");
        return out;
    }
    let _ = writeln!(
        out,
        "One Node app with the same load, under Node's `cluster` module (user space: its \
         primary accepts every connection and hands it to a worker that has acknowledged its \
         previous one) and under this pool as a COMMAND (`cluster run … -- node server.js \
         fd3`, serving on the socket it is given): `shared` (the OS: one accept queue) and \
         the in-kernel modes. Rounds interleaved with the matrix's. For Node's cluster, \
         the supervisor column is its primary.\n"
    );
    let _ = writeln!(
        out,
        "- node {}; the app: [node/server.js](node/server.js), {} workers everywhere",
        peer.node_version.as_deref().unwrap_or("?"),
        bench.settings.workers
    );
    let it = &peer.iterations;
    let seeds_loop = peer.calibration.map_or_else(String::new, |c| {
        format!(
            ", measured at {:.2} ms per request in one Node worker, {:.2} ns per iteration",
            c.loop_ms, c.ns_per_iteration
        )
    });
    let _ = writeln!(
        out,
        "- handlers: {} (`GET /`); {} (`/work?iterations={}`{seeds_loop}); {} (95% \
         `iterations={}`, 5% `iterations={}`)",
        handler_name(Scenario::Light),
        handler_name(Scenario::Uniform),
        it.uniform,
        handler_name(Scenario::Mixed),
        it.mixed_light,
        it.mixed_heavy
    );
    for (scenario, pattern, cases) in peer.groups() {
        let _ = writeln!(
            out,
            "\n### Node app, {} handler, {pattern}\n\n\
             | scheduling | server | {SUMMARY_HEADER} req/s × Node's cluster |\n\
             |---|---|{SUMMARY_RULE}---|",
            handler_name(scenario)
        );
        let node = peer.case(scenario, pattern, Server::NodeCluster);
        for c in cases {
            let against_node = node.map_or_else(
                || "-".to_owned(),
                |n| {
                    format!(
                        "{:.2}×",
                        c.summary.requests_per_second.median / n.summary.requests_per_second.median
                    )
                },
            );
            let _ = writeln!(
                out,
                "| {} | {} | {} {against_node} |",
                c.cell.server.scheduling(),
                c.cell.server,
                summary_cells(c.workers, &c.summary)
            );
        }
    }
    let _ = writeln!(out, "\n![{}]({})", plot::TITLE, plot::FILE);
    out
}

/// The peer's block of the terminal table.
#[must_use]
pub fn terminal(bench: &Bench) -> String {
    let peer: &Peer = &bench.peer;
    if let Some(why) = peer.status.skipped_because() {
        return format!("node peer: skipped ({why})\n");
    }
    let mut out = String::from("node app, under Node's cluster and this pool:\n");
    terminal_header(&mut out, "server");
    for c in &peer.cases {
        terminal_row(
            &mut out,
            [
                c.cell.scenario.name(),
                c.cell.pattern.name(),
                c.cell.server.name(),
            ],
            &c.summary,
        );
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{
        matrix::{Mode, Pattern},
        peer::{Cell, PeerCase, Status},
        report::tests::sample,
        results::Summary,
    };

    #[test]
    fn a_skipped_peer_says_why_in_the_report_and_the_table() {
        let mut bench = sample();
        assert!(markdown(&bench).contains("Skipped: `node` is not on PATH."));
        bench.peer = Peer::skipped(Status::SkippedPeerNone);
        assert_eq!(terminal(&bench), "node peer: skipped (`--peer none`)\n");
    }

    #[test]
    fn a_peer_that_ran_sets_the_servers_side_by_side() {
        let mut bench = sample();
        let run = bench.cases[0].runs[0].clone();
        let case = |server, rps| {
            let mut run = run.clone();
            run.requests_per_second = rps;
            PeerCase {
                cell: Cell {
                    scenario: Scenario::Mixed,
                    pattern: Pattern::PerRequest,
                    server,
                },
                workers: 2,
                summary: Summary::of(std::slice::from_ref(&run)),
                runs: vec![run],
            }
        };
        bench.peer = Peer {
            node_version: Some("v20.0.0".to_owned()),
            cases: vec![
                case(Server::NodeCluster, 500.0),
                case(Server::Pool(Mode::Shared), 510.0),
                case(Server::Pool(Mode::LeastConn), 550.0),
            ],
            ..Peer::skipped(Status::Ran)
        };
        let report = markdown(&bench);
        assert!(
            report.contains("### Node app, mixed cost handler, per-request"),
            "{report}"
        );
        assert!(
            report.contains("| user space | node-cluster | 2 | 500 |"),
            "{report}"
        );
        assert!(report.contains("| OS | shared | 2 | 510 |"), "{report}");
        assert!(
            report.contains("| in kernel | least-conn | 2 | 550 |"),
            "{report}"
        );
        assert!(report.contains("| 1.10× |"), "{report}");
        assert!(report.contains("](node-peer.svg)"), "{report}");
        let table = terminal(&bench);
        assert!(
            table.contains("mixed    per-request  node-cluster"),
            "{table}"
        );
    }
}
