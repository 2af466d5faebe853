//! The command line: `cluster run` and its options, parsed and validated by clap.

use std::{ffi::OsString, fmt, net::SocketAddr, num::NonZeroU32};

use clap::{Args, Parser, Subcommand, ValueEnum};
use cluster_common::MAX_SLOTS;

/// Runs a pool of worker processes behind one address; an eBPF program in the kernel picks the
/// worker for every new connection.
#[derive(Debug, Parser)]
#[command(name = "cluster", version, about, propagate_version = true)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Start a pool of workers, each with its own listening socket, and supervise them.
    Run(RunArgs),
    /// The built-in demo HTTP server; `cluster run` starts one per slot when no COMMAND is given.
    #[command(hide = true)]
    Worker,
}

#[derive(Debug, Args)]
pub struct RunArgs {
    /// Number of workers: a positive number, or `max` for the CPUs this process may use
    /// (CPU affinity and cgroup CPU quota, not the host's core count).
    #[arg(long, value_name = "N|max", default_value = "max", value_parser = parse_worker_count)]
    pub workers: WorkerCount,

    /// Address to listen on, IPv4 or IPv6 (`[::1]:8080`); port 0 picks a free port.
    #[arg(long, value_name = "ADDR:PORT", default_value = "127.0.0.1:8080")]
    pub listen: SocketAddr,

    /// How new connections are spread over the workers.
    #[arg(long, value_enum, default_value_t = SteeringMode::RoundRobin)]
    pub steering: SteeringMode,

    /// Length of each listening socket's accept queue (listen(2) backlog).
    #[arg(long, value_name = "N", default_value_t = 1024,
          value_parser = clap::value_parser!(u32).range(1..=65535))]
    pub backlog: u32,

    /// Seconds a worker gets to exit after SIGTERM, on shutdown, before it is killed.
    #[arg(long, value_name = "SECONDS", default_value_t = 10,
          value_parser = clap::value_parser!(u64).range(1..=3600))]
    pub shutdown_timeout: u64,

    /// With a COMMAND: count a worker as serving only once it sends `READY=1` to
    /// `$NOTIFY_SOCKET` (sd_notify(3)), like PM2's `wait_ready`; without this flag, once it has
    /// started. The demo worker always reports readiness.
    #[arg(long, requires = "command")]
    pub wait_ready: bool,

    /// Seconds a worker gets to report readiness before it is killed and started again.
    #[arg(long, value_name = "SECONDS", default_value_t = 30,
          value_parser = clap::value_parser!(u64).range(1..=3600))]
    pub ready_timeout: u64,

    /// Program each worker runs instead of the demo server. It gets its listening socket the
    /// systemd way (fd 3, LISTEN_FDS=1, LISTEN_PID, LISTEN_FDNAMES) and its slot number in
    /// CLUSTER_WORKER_ID.
    #[arg(last = true, value_name = "COMMAND")]
    pub command: Vec<OsString>,
}

/// `--workers`: how many worker slots to run.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WorkerCount {
    /// As many as the CPUs this process may use.
    Max,
    /// Exactly this many.
    Exactly(NonZeroU32),
}

impl WorkerCount {
    /// The slot count: `Max` becomes `usable_cpus`, both capped at [`MAX_SLOTS`].
    #[must_use]
    pub fn resolve(self, usable_cpus: u32) -> u32 {
        match self {
            Self::Max => usable_cpus.clamp(1, MAX_SLOTS),
            Self::Exactly(n) => n.get(),
        }
    }
}

/// Parses `--workers`: `max`, or a whole number from 1 to [`MAX_SLOTS`].
pub fn parse_worker_count(value: &str) -> Result<WorkerCount, String> {
    if value.eq_ignore_ascii_case("max") {
        return Ok(WorkerCount::Max);
    }
    let n: u64 = value
        .parse()
        .map_err(|_| "expected a whole number of workers, or `max`".to_owned())?;
    match u32::try_from(n).ok().and_then(NonZeroU32::new) {
        None if n == 0 => Err("the pool needs at least 1 worker".to_owned()),
        Some(n) if n.get() <= MAX_SLOTS => Ok(WorkerCount::Exactly(n)),
        _ => Err(format!("at most {MAX_SLOTS} workers are supported")),
    }
}

/// `--steering`: who picks the worker for a new connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum SteeringMode {
    /// The eBPF program: strict rotation over the serving workers.
    RoundRobin,
    /// The eBPF program: by client source address, stable while the workers are unchanged.
    Sticky,
    /// Plain SO_REUSEPORT, no program: the kernel's own 4-tuple hash.
    Hash,
    /// One listening socket shared by all workers: the OS wakes whichever worker accepts.
    Shared,
}

impl fmt::Display for SteeringMode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::RoundRobin => "round-robin",
            Self::Sticky => "sticky",
            Self::Hash => "hash",
            Self::Shared => "shared",
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn run_args(args: &[&str]) -> Result<RunArgs, clap::Error> {
        let argv = ["cluster", "run"].iter().chain(args);
        Cli::try_parse_from(argv).map(|cli| match cli.command {
            Command::Run(run) => run,
            Command::Worker => panic!("parsed as worker"),
        })
    }

    #[test]
    fn defaults() {
        let args = run_args(&[]).unwrap();
        assert_eq!(args.workers, WorkerCount::Max);
        assert_eq!(args.listen, "127.0.0.1:8080".parse().unwrap());
        assert_eq!(args.steering, SteeringMode::RoundRobin);
        assert!(args.command.is_empty());
    }

    #[test]
    fn worker_counts() {
        assert_eq!(parse_worker_count("MAX"), Ok(WorkerCount::Max));
        assert_eq!(
            parse_worker_count("4"),
            Ok(WorkerCount::Exactly(NonZeroU32::new(4).unwrap()))
        );
        assert!(parse_worker_count("0").unwrap_err().contains("at least 1"));
        assert!(
            parse_worker_count("abc")
                .unwrap_err()
                .contains("whole number")
        );
        assert!(
            parse_worker_count("-3")
                .unwrap_err()
                .contains("whole number")
        );
        assert!(
            parse_worker_count("99999999999")
                .unwrap_err()
                .contains("at most")
        );
        assert!(parse_worker_count("1025").unwrap_err().contains("at most"));
        assert_eq!(WorkerCount::Max.resolve(3), 3);
        assert_eq!(WorkerCount::Max.resolve(5000), MAX_SLOTS);
    }

    #[test]
    fn listen_and_command() {
        let args = run_args(&[
            "--listen",
            "[::1]:0",
            "--steering",
            "sticky",
            "--",
            "python3",
            "-V",
        ])
        .unwrap();
        assert_eq!(args.listen, "[::1]:0".parse().unwrap());
        assert_eq!(args.steering, SteeringMode::Sticky);
        assert_eq!(
            args.command,
            vec![OsString::from("python3"), OsString::from("-V")]
        );
        assert!(run_args(&["--listen", "localhost"]).is_err());
        assert!(run_args(&["--steering", "random"]).is_err());
        assert!(run_args(&["--backlog", "0"]).is_err());
        assert!(
            run_args(&["--wait-ready"]).is_err(),
            "--wait-ready needs a COMMAND"
        );
        assert!(
            run_args(&["--wait-ready", "--", "true"])
                .unwrap()
                .wait_ready
        );
    }

    #[test]
    fn modes_print_as_typed() {
        for mode in SteeringMode::value_variants() {
            let typed = mode.to_possible_value().unwrap();
            assert_eq!(typed.get_name(), mode.to_string());
        }
    }
}
