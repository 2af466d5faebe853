//! What the peer runs and when: Node found (or why not), the app written out, the servers, and
//! the peer's runs interleaved with the matrix's, each round of a handler and pattern followed
//! by the same round on every peer server, so drift hits them alike.

use std::{collections::BTreeMap, path::PathBuf};

use anyhow::Result;

use super::{Cell, NODE_ITERATIONS, POOL_MODES, Peer, PeerCase, PeerChoice, Server, Status, node};
use crate::{
    matrix::{Mode, Step},
    results::{Calibration, Run, Summary},
};

/// The peer as planned before any run.
#[derive(Debug, Clone)]
pub struct PeerPlan {
    pub status: Status,
    pub node_version: Option<String>,
    /// The app's path (`None` when skipped).
    pub app: Option<PathBuf>,
    /// Empty when skipped.
    pub servers: Vec<Server>,
}

impl PeerPlan {
    /// Plans the peer for `--peer choice` beside the matrix's `modes` (none with `--cost-only`):
    /// finds `node` and writes the app into `out`.
    ///
    /// # Errors
    ///
    /// `node` is on PATH but does not run, or the app cannot be written.
    pub fn new(
        choice: PeerChoice,
        cost_only: bool,
        modes: &[Mode],
        out: &std::path::Path,
    ) -> Result<Self> {
        let skipped = |status| Self {
            status,
            node_version: None,
            app: None,
            servers: Vec::new(),
        };
        if choice == PeerChoice::None {
            return Ok(skipped(Status::SkippedPeerNone));
        }
        if cost_only {
            return Ok(skipped(Status::SkippedCostOnly));
        }
        let Some(version) = node::version()? else {
            return Ok(skipped(Status::SkippedNoNode));
        };
        Ok(Self {
            status: Status::Ran,
            node_version: Some(version),
            app: Some(node::write_app(out)?),
            servers: servers(modes),
        })
    }

    /// The peer's results from its runs, by cell.
    #[must_use]
    pub fn results(
        self,
        runs: BTreeMap<Cell, Vec<Run>>,
        calibration: Option<Calibration>,
        workers: u32,
    ) -> Peer {
        let mut cases: Vec<PeerCase> = runs
            .into_iter()
            .map(|(cell, runs)| PeerCase {
                cell,
                workers,
                summary: Summary::of(&runs),
                runs,
            })
            .collect();
        // Report order: handler, pattern, then the servers as they ran.
        cases.sort_by_key(|c| {
            let rank = self.servers.iter().position(|s| *s == c.cell.server);
            (c.cell.scenario, c.cell.pattern, rank)
        });
        Peer {
            cases,
            calibration,
            node_version: self.node_version,
            app: self.app,
            servers: self.servers,
            ..Peer::skipped(self.status)
        }
    }
}

/// Node's cluster, then the pool's modes among `modes` that run the app, in the order asked.
fn servers(modes: &[Mode]) -> Vec<Server> {
    std::iter::once(Server::NodeCluster)
        .chain(
            modes
                .iter()
                .filter(|m| POOL_MODES.contains(m))
                .map(|m| Server::Pool(*m)),
        )
        .collect()
}

/// One run of the bench: a matrix step, or a peer run.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Job {
    Matrix(Step),
    Peer(PeerStep),
}

/// One peer run: a cell in a round.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PeerStep {
    pub cell: Cell,
    /// From 1.
    pub round: usize,
}

/// The matrix's `steps` (in `matrix::schedule` order) with, after the last step of each round
/// of a handler and pattern, that round on every one of `servers`.
#[must_use]
pub fn interleave(steps: Vec<Step>, servers: &[Server]) -> Vec<Job> {
    let mut jobs = Vec::with_capacity(steps.len() * 2);
    let mut steps = steps.into_iter().peekable();
    while let Some(step) = steps.next() {
        jobs.push(Job::Matrix(step));
        let key = |s: &Step| (s.case.scenario, s.case.pattern, s.round);
        if steps.peek().is_some_and(|next| key(next) == key(&step)) {
            continue;
        }
        jobs.extend(servers.iter().map(|server| {
            Job::Peer(PeerStep {
                cell: Cell {
                    scenario: step.case.scenario,
                    pattern: step.case.pattern,
                    server: *server,
                },
                round: step.round,
            })
        }));
    }
    jobs
}

/// The Node app's load for `cell`, as `cluster-load --mix` takes it.
#[must_use]
pub fn mix(cell: Cell) -> String {
    cell.scenario.mix(&NODE_ITERATIONS)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::matrix::{Pattern, Scenario, schedule};

    #[test]
    fn each_round_is_followed_by_the_same_round_on_every_peer_server() {
        let steps = schedule(
            &[Scenario::Light, Scenario::Mixed],
            &[Pattern::PerRequest],
            &[Mode::Hash, Mode::RoundRobin],
            2,
        );
        let servers = servers(&[Mode::Hash, Mode::RoundRobin]);
        assert_eq!(
            servers,
            [Server::NodeCluster, Server::Pool(Mode::RoundRobin)]
        );
        let order: Vec<String> = interleave(steps, &servers)
            .iter()
            .map(|job| match job {
                Job::Matrix(s) => format!("{} {} {}", s.case.scenario, s.case.mode, s.round),
                Job::Peer(p) => format!("{} node:{} {}", p.cell.scenario, p.cell.server, p.round),
            })
            .collect();
        assert_eq!(
            order,
            [
                "light hash 1",
                "light round-robin 1",
                "light node:node-cluster 1",
                "light node:round-robin 1",
                "light hash 2",
                "light round-robin 2",
                "light node:node-cluster 2",
                "light node:round-robin 2",
                "mixed hash 1",
                "mixed round-robin 1",
                "mixed node:node-cluster 1",
                "mixed node:round-robin 1",
                "mixed hash 2",
                "mixed round-robin 2",
                "mixed node:node-cluster 2",
                "mixed node:round-robin 2",
            ]
        );
    }

    #[test]
    fn a_skipped_peer_adds_no_run() {
        let steps = schedule(
            &[Scenario::Light],
            &[Pattern::KeepAlive],
            &[Mode::Shared],
            3,
        );
        assert_eq!(
            interleave(steps.clone(), &[]),
            steps.into_iter().map(Job::Matrix).collect::<Vec<_>>()
        );
    }

    #[test]
    fn the_node_mix_has_the_matrix_shape_with_the_seeds_loop() {
        let cell = |scenario| Cell {
            scenario,
            pattern: Pattern::PerRequest,
            server: Server::NodeCluster,
        };
        assert_eq!(mix(cell(Scenario::Uniform)), "1:/work?iterations=10000000");
        assert_eq!(
            mix(cell(Scenario::Mixed)),
            "95:/work?iterations=250000,5:/work?iterations=25000000"
        );
        assert_eq!(
            NODE_ITERATIONS.mixed_heavy,
            100 * NODE_ITERATIONS.mixed_light
        );
    }
}
