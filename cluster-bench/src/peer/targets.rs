//! The targets against Node's cluster: the seeds' app under this pool at least as fast
//! as under Node's cluster (1.6× with no loop and a new connection per request, where Node's
//! primary accepts every connection), and least-conn at parity on the mixed handler.

use super::{Peer, Server};
use crate::{
    matrix::{Mode, Pattern, Scenario},
    results::Bench,
    targets::{Target, parity},
};

/// The in-kernel modes held to the throughput targets against Node's cluster.
const IN_KERNEL: [Mode; 2] = [Mode::RoundRobin, Mode::LeastConn];

/// Adds the peer's targets to `targets`, or one saying why they were not measured.
pub fn evaluate(bench: &Bench, targets: &mut Vec<Target>) {
    let peer = &bench.peer;
    let before = targets.len();
    if let Some(why) = peer.status.skipped_because() {
        targets.push(Target::not_measured(
            "the Node app under this pool against Node's cluster".to_owned(),
            &format!("the Node peer was skipped: {why}"),
        ));
        return;
    }
    for pattern in Pattern::ALL {
        seeds_app(peer, pattern, targets);
        mixed(peer, pattern, targets);
    }
    if targets.len() == before {
        targets.push(Target::not_measured(
            "the Node app under this pool against Node's cluster".to_owned(),
            "needs round-robin or least-conn in --modes, beside Node's cluster",
        ));
    }
}

/// The seeds' app (its 1e7 loop, and no loop) under each in-kernel mode against Node's cluster.
fn seeds_app(peer: &Peer, pattern: Pattern, targets: &mut Vec<Target>) {
    for (scenario, at_least) in [(Scenario::Uniform, 1.0), (Scenario::Light, 1.6)] {
        // Kept alive, Node's primary hands each connection over once, so its cost per request
        // is gone: the no-loop target is for a new connection per request.
        if scenario == Scenario::Light && pattern == Pattern::KeepAlive {
            continue;
        }
        let Some(node) = peer.case(scenario, pattern, Server::NodeCluster) else {
            continue;
        };
        for mode in IN_KERNEL {
            let Some(ours) = peer.case(scenario, pattern, Server::Pool(mode)) else {
                continue;
            };
            let ratio =
                ours.summary.requests_per_second.median / node.summary.requests_per_second.median;
            targets.push(Target::check(
                format!(
                    "the seeds' app under this pool ({mode}) ≥ {at_least:.1} × under Node's \
                     cluster req/s, {}, {pattern}",
                    super::handler_name(scenario)
                ),
                format!("{ratio:.2}×"),
                ratio >= at_least,
            ));
        }
    }
}

/// least-conn on the Node app's mixed handler against Node's cluster and against `shared`.
fn mixed(peer: &Peer, pattern: Pattern, targets: &mut Vec<Target>) {
    let Some(least) = peer.case(Scenario::Mixed, pattern, Server::Pool(Mode::LeastConn)) else {
        return;
    };
    for (name, server) in [
        ("Node's cluster", Server::NodeCluster),
        ("shared", Server::Pool(Mode::Shared)),
    ] {
        if let Some(theirs) = peer.case(Scenario::Mixed, pattern, server) {
            parity(
                targets,
                ("least-conn", &least.summary),
                (name, &theirs.summary),
                &format!("Node app, mixed handler, {pattern}"),
            );
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{
        peer::{PeerCase, Status},
        report::tests::sample,
        results::Summary,
        stats::Spread,
        targets::Verdict,
    };

    fn case(scenario: Scenario, pattern: Pattern, server: Server, rps: f64, p99: f64) -> PeerCase {
        PeerCase {
            cell: crate::peer::Cell {
                scenario,
                pattern,
                server,
            },
            workers: 2,
            runs: Vec::new(),
            summary: Summary {
                requests_per_second: Spread::of([rps]).unwrap(),
                p99_ms: Spread::of([p99]).unwrap(),
                ..Summary::default()
            },
        }
    }

    fn evaluated(peer: Peer) -> Vec<Target> {
        let mut bench = sample();
        bench.peer = peer;
        let mut targets = Vec::new();
        evaluate(&bench, &mut targets);
        targets
    }

    #[test]
    fn a_skipped_peer_is_one_target_not_measured_saying_why() {
        let targets = evaluated(Peer::skipped(Status::SkippedNoNode));
        assert_eq!(targets.len(), 1);
        assert_eq!(targets[0].verdict, Verdict::NotMeasured);
        assert!(targets[0].measured.contains("not on PATH"), "{targets:?}");
    }

    #[test]
    fn the_seeds_app_and_the_mixed_parity_against_node() {
        let (per, kept) = (Pattern::PerRequest, Pattern::KeepAlive);
        let node = Server::NodeCluster;
        let least = Server::Pool(Mode::LeastConn);
        let mut peer = Peer::skipped(Status::Ran);
        peer.cases = vec![
            case(Scenario::Light, per, node, 1000.0, 5.0),
            case(Scenario::Light, per, least, 1700.0, 5.0),
            case(Scenario::Light, kept, node, 1000.0, 5.0),
            case(Scenario::Light, kept, least, 1000.0, 5.0),
            case(Scenario::Uniform, per, node, 200.0, 50.0),
            case(Scenario::Uniform, per, least, 190.0, 50.0),
            case(Scenario::Mixed, per, node, 500.0, 100.0),
            case(Scenario::Mixed, per, least, 480.0, 115.0),
        ];
        let targets = evaluated(peer);
        let verdicts: Vec<(&str, Verdict)> = targets
            .iter()
            .map(|t| (t.measured.as_str(), t.verdict))
            .collect();
        assert_eq!(
            verdicts,
            [
                ("0.95×", Verdict::Missed),
                ("1.70×", Verdict::Met),
                ("0.96×", Verdict::Met),
                ("1.15× (115.0 ms against 100.0 ms)", Verdict::Missed),
            ],
            "{targets:#?}"
        );
        assert!(
            targets[1]
                .wanted
                .contains("(least-conn) ≥ 1.6 × under Node's cluster req/s, no loop, per-request"),
            "{targets:#?}"
        );
        assert!(
            targets[2]
                .wanted
                .contains("least-conn ≥ 0.95 × Node's cluster req/s, Node app, mixed"),
            "{targets:#?}"
        );
    }
}
