//! The Node peer: one Node app, with the same load, under Node's own `cluster` module
//! (scheduling in user space) and under this pool as a COMMAND (the OS's shared queue, and the
//! in-kernel modes); what bench.json's `peer` holds.

pub mod node;
pub mod plan;
pub mod plot;
pub mod report;
pub mod run;
pub mod targets;

use std::{fmt, path::PathBuf};

use clap::ValueEnum;
use serde::{Serialize, Serializer};

use crate::{
    matrix::{Iterations, Mode, Pattern, Scenario},
    results::{Calibration, Run, Summary, by_handler_and_pattern},
};

/// Loop lengths of the Node app's handlers: the seeds' `1e7`, and a mix with the matrix's shape
/// (95% light, 5% 100× dearer) whose light requests cost about what the demo worker's do.
pub const NODE_ITERATIONS: Iterations = Iterations {
    uniform: 10_000_000,
    mixed_light: 250_000,
    mixed_heavy: 25_000_000,
};

/// The pool's modes that run the Node app, when `--modes` has them: the OS's shared queue and
/// the in-kernel modes the targets name.
pub const POOL_MODES: [Mode; 3] = [Mode::Shared, Mode::RoundRobin, Mode::LeastConn];

/// `--peer`: whether the bench runs the Node peer.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum PeerChoice {
    /// Node's cluster and the Node app under this pool, when `node` is on PATH.
    Node,
    /// No peer.
    None,
}

/// Whether the peer ran.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Status {
    Ran,
    /// `node` is not on PATH.
    SkippedNoNode,
    /// `--peer none`.
    SkippedPeerNone,
    /// `--cost-only`: only the decision cost ran.
    SkippedCostOnly,
}

impl Status {
    /// Why the peer was skipped, in words; `None` when it ran.
    #[must_use]
    pub fn skipped_because(self) -> Option<&'static str> {
        match self {
            Self::Ran => None,
            Self::SkippedNoNode => Some("`node` is not on PATH"),
            Self::SkippedPeerNone => Some("`--peer none`"),
            Self::SkippedCostOnly => Some("`--cost-only`"),
        }
    }
}

/// What serves the Node app.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Server {
    /// Node's `cluster` module: its primary accepts every connection and hands it round.
    NodeCluster,
    /// This pool in a mode, the app as its COMMAND.
    Pool(Mode),
}

impl Server {
    #[must_use]
    pub fn name(self) -> &'static str {
        match self {
            Self::NodeCluster => "node-cluster",
            Self::Pool(mode) => mode.name(),
        }
    }

    /// Where the worker for a connection is chosen.
    #[must_use]
    pub fn scheduling(self) -> &'static str {
        match self {
            Self::NodeCluster => "user space",
            Self::Pool(mode) if mode.in_kernel() => "in kernel",
            Self::Pool(_) => "OS",
        }
    }
}

impl fmt::Display for Server {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl Serialize for Server {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(self.name())
    }
}

/// One cell of the peer's matrix: a handler and a pattern, served by one server.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
pub struct Cell {
    pub scenario: Scenario,
    pub pattern: Pattern,
    pub server: Server,
}

/// One cell over its rounds.
#[derive(Debug, Clone, Serialize)]
pub struct PeerCase {
    #[serde(flatten)]
    pub cell: Cell,
    pub workers: u32,
    pub runs: Vec<Run>,
    pub summary: Summary,
}

/// The peer in bench.json.
#[derive(Debug, Clone, Serialize)]
pub struct Peer {
    pub status: Status,
    /// Why it was skipped, in words (`null` when it ran).
    pub skipped_because: Option<&'static str>,
    /// `node --version`.
    pub node_version: Option<String>,
    /// The app, written beside the report.
    pub app: Option<PathBuf>,
    /// Node's cluster first, then the pool's modes, as they ran in each round.
    pub servers: Vec<Server>,
    pub iterations: Iterations,
    /// What the seeds' loop costs one Node worker (as the matrix's `calibration`).
    pub calibration: Option<Calibration>,
    pub cases: Vec<PeerCase>,
}

impl Peer {
    /// A peer that did not run.
    #[must_use]
    pub fn skipped(status: Status) -> Self {
        Self {
            status,
            skipped_because: status.skipped_because(),
            node_version: None,
            app: None,
            servers: Vec::new(),
            iterations: NODE_ITERATIONS,
            calibration: None,
            cases: Vec::new(),
        }
    }

    /// The result of `cell`, if it ran.
    #[must_use]
    pub fn case(&self, scenario: Scenario, pattern: Pattern, server: Server) -> Option<&PeerCase> {
        let wanted = Cell {
            scenario,
            pattern,
            server,
        };
        self.cases.iter().find(|c| c.cell == wanted)
    }

    /// The cases of each handler and pattern that ran, in report order.
    #[must_use]
    pub fn groups(&self) -> Vec<(Scenario, Pattern, Vec<&PeerCase>)> {
        by_handler_and_pattern(&self.cases, |c| (c.cell.scenario, c.cell.pattern))
    }
}

/// The Node app's handler for a matrix handler, in words.
#[must_use]
pub fn handler_name(scenario: Scenario) -> &'static str {
    match scenario {
        Scenario::Light => "no loop",
        Scenario::Uniform => "the seeds' loop",
        Scenario::Mixed => "mixed cost",
    }
}
