//! What the bench runs: the steering modes, client patterns and handlers, and the order of the
//! runs (modes interleaved within each round, so drift hits them alike).

use std::fmt;

use clap::ValueEnum;
use cluster_load::ConnectionMode;
use serde::Serialize;

/// Source addresses the clients spread over in `sticky`, so it sees many clients.
pub const STICKY_SOURCES: u32 = 256;

/// How the pool steers connections.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, ValueEnum, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Mode {
    /// One worker: the baseline.
    Single,
    /// One shared accept queue: the OS picks the worker.
    Shared,
    /// SO_REUSEPORT's own hash over the connection's addresses.
    Hash,
    RoundRobin,
    /// The client address decides (clients spread over 127.0.0.0/8).
    Sticky,
    LeastConn,
}

impl Mode {
    pub const ALL: [Self; 6] = [
        Self::Single,
        Self::Shared,
        Self::Hash,
        Self::RoundRobin,
        Self::Sticky,
        Self::LeastConn,
    ];

    /// The name used on the command line and in reports.
    #[must_use]
    pub fn name(self) -> &'static str {
        match self {
            Self::Single => "single",
            Self::Shared => "shared",
            Self::Hash => "hash",
            Self::RoundRobin => "round-robin",
            Self::Sticky => "sticky",
            Self::LeastConn => "least-conn",
        }
    }

    /// `cluster run --steering` for this mode (the single worker shares its one queue).
    #[must_use]
    pub fn steering(self) -> &'static str {
        match self {
            Self::Single => "shared",
            other => other.name(),
        }
    }

    /// Workers in the pool, given the bench's worker count.
    #[must_use]
    pub fn workers(self, workers: u32) -> u32 {
        if self == Self::Single { 1 } else { workers }
    }

    /// Whether the eBPF program decides (these modes need root).
    #[must_use]
    pub fn in_kernel(self) -> bool {
        matches!(self, Self::RoundRobin | Self::Sticky | Self::LeastConn)
    }

    /// Whether every worker accepts from one listening socket, whose queue outlives any of
    /// them.
    #[must_use]
    pub fn shares_one_listener(self) -> bool {
        matches!(self, Self::Single | Self::Shared)
    }

    /// Source addresses the clients spread over, if any.
    #[must_use]
    pub fn spread_sources(self) -> Option<u32> {
        (self == Self::Sticky).then_some(STICKY_SOURCES)
    }
}

impl fmt::Display for Mode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// How the clients use connections.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, ValueEnum, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Pattern {
    /// A new connection per request (like `ab` without `-k`).
    PerRequest,
    KeepAlive,
}

impl Pattern {
    pub const ALL: [Self; 2] = [Self::PerRequest, Self::KeepAlive];

    #[must_use]
    pub fn name(self) -> &'static str {
        match self {
            Self::PerRequest => "per-request",
            Self::KeepAlive => "keep-alive",
        }
    }

    #[must_use]
    pub fn connection_mode(self) -> ConnectionMode {
        match self {
            Self::PerRequest => ConnectionMode::PerRequest,
            Self::KeepAlive => ConnectionMode::KeepAlive,
        }
    }
}

impl fmt::Display for Pattern {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// What the requests cost the workers.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, ValueEnum, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Scenario {
    /// `GET /`: no work.
    Light,
    /// Every request runs the same CPU-bound loop (`/work`).
    Uniform,
    /// 95% of the requests are light loops, 5% cost about 100× as much.
    Mixed,
}

impl Scenario {
    pub const ALL: [Self; 3] = [Self::Light, Self::Uniform, Self::Mixed];

    #[must_use]
    pub fn name(self) -> &'static str {
        match self {
            Self::Light => "light",
            Self::Uniform => "uniform",
            Self::Mixed => "mixed",
        }
    }

    /// The weighted paths requested, as `cluster-load --mix` takes them.
    #[must_use]
    pub fn mix(self, iterations: &Iterations) -> String {
        match self {
            Self::Light => "1:/".to_owned(),
            Self::Uniform => format!("1:/work?iterations={}", iterations.uniform),
            Self::Mixed => format!(
                "95:/work?iterations={},5:/work?iterations={}",
                iterations.mixed_light, iterations.mixed_heavy
            ),
        }
    }
}

impl fmt::Display for Scenario {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// Loop lengths of the CPU-bound handlers.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct Iterations {
    /// The uniform handler. The seeds' `for (let i=0; i<1e7; i++);` takes about 6 ms in Node
    /// on this machine kind once optimised; the demo worker's loop costs about 0.37 ns per
    /// iteration here, so 16e6 iterations take about as long. The bench measures and reports
    /// what it actually costs (`calibration`).
    pub uniform: u64,
    /// The common requests of the mixed handler.
    pub mixed_light: u64,
    /// The rare ones: 100× the common ones.
    pub mixed_heavy: u64,
}

impl Default for Iterations {
    fn default() -> Self {
        Self {
            uniform: 16_000_000,
            mixed_light: 300_000,
            mixed_heavy: 30_000_000,
        }
    }
}

/// One cell of the matrix.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
pub struct Case {
    pub scenario: Scenario,
    pub pattern: Pattern,
    pub mode: Mode,
}

/// One run: a case in a round.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Step {
    pub case: Case,
    /// From 1.
    pub round: usize,
}

/// Every run in order: for each scenario and pattern, `rounds` rounds, each running every mode
/// once (A B C A B C …).
#[must_use]
pub fn schedule(
    scenarios: &[Scenario],
    patterns: &[Pattern],
    modes: &[Mode],
    rounds: usize,
) -> Vec<Step> {
    let mut steps = Vec::new();
    for &scenario in scenarios {
        for &pattern in patterns {
            for round in 1..=rounds {
                for &mode in modes {
                    steps.push(Step {
                        case: Case {
                            scenario,
                            pattern,
                            mode,
                        },
                        round,
                    });
                }
            }
        }
    }
    steps
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn modes_are_interleaved_within_each_round() {
        let steps = schedule(
            &[Scenario::Light],
            &[Pattern::PerRequest],
            &[Mode::Shared, Mode::RoundRobin],
            2,
        );
        let order: Vec<(Mode, usize)> = steps.iter().map(|s| (s.case.mode, s.round)).collect();
        assert_eq!(
            order,
            [
                (Mode::Shared, 1),
                (Mode::RoundRobin, 1),
                (Mode::Shared, 2),
                (Mode::RoundRobin, 2)
            ]
        );
    }

    #[test]
    fn the_mixed_handler_has_rare_requests_a_hundred_times_dearer() {
        let iterations = Iterations::default();
        assert_eq!(iterations.mixed_heavy, 100 * iterations.mixed_light);
        assert_eq!(
            Scenario::Mixed.mix(&iterations),
            "95:/work?iterations=300000,5:/work?iterations=30000000"
        );
        assert_eq!(Mode::Single.workers(4), 1);
        assert_eq!(Mode::Single.steering(), "shared");
    }
}
