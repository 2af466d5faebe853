//! The command line: `cluster run` and its options, parsed and validated by clap.

use std::{ffi::OsString, fmt, net::SocketAddr, num::NonZeroU32, path::PathBuf, time::Duration};

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
    // `display_name`: `--version` prints `cluster 0.1.0`, not clap's `cluster-run 0.1.0`.
    // `allow_negative_numbers`: `--workers -1` is a value (PM2's `-i -1`), while `--` still
    // starts the COMMAND; `allow_hyphen_values` would swallow the `--`.
    #[command(display_name = "cluster", allow_negative_numbers = true)]
    Run(RunArgs),
    /// The built-in demo HTTP server; `cluster run` starts one per slot when no COMMAND is given.
    #[command(hide = true, display_name = "cluster")]
    Worker,
    /// Show the running pool: a row per worker (`--json` for scripts, `--watch` to follow).
    Status(StatusArgs),
    /// Replace every worker, one slot at a time, without losing a connection. Exits non-zero if
    /// a replacement fails (the old workers keep serving).
    Reload(Target),
    /// Stop the pool gracefully: every worker drains, then the supervisor exits.
    Stop(Target),
    /// Grow or shrink the pool to N workers; removed workers drain.
    Scale(ScaleArgs),
    /// Replace one slot's worker, as a reload does.
    Drain(SlotArgs),
    /// Send a JSON message to every worker.
    Broadcast(BroadcastArgs),
    /// Send a JSON message to one slot's worker.
    Send(SendArgs),
}

/// Which running supervisor a subcommand talks to: without either option, the only one running.
#[derive(Debug, Clone, Args)]
pub struct Target {
    /// The supervisor's control socket (what `cluster run --control` was given).
    #[arg(long, value_name = "PATH", conflicts_with = "pid")]
    pub control: Option<PathBuf>,
    /// The supervisor's pid, for a supervisor with the default control socket.
    #[arg(long, value_name = "PID")]
    pub pid: Option<i32>,
}

#[derive(Debug, Args)]
pub struct StatusArgs {
    /// Print the status as one JSON object.
    #[arg(long)]
    pub json: bool,
    /// Redraw the table every second until interrupted.
    #[arg(long, conflicts_with = "json")]
    pub watch: bool,
    #[command(flatten)]
    pub target: Target,
}

#[derive(Debug, Args)]
pub struct ScaleArgs {
    /// The number of workers wanted.
    #[arg(value_name = "N", value_parser = clap::value_parser!(u32).range(1..=i64::from(MAX_SLOTS)))]
    pub workers: u32,
    #[command(flatten)]
    pub target: Target,
}

#[derive(Debug, Args)]
pub struct SlotArgs {
    /// The slot whose worker is replaced.
    #[arg(value_name = "SLOT")]
    pub slot: u32,
    #[command(flatten)]
    pub target: Target,
}

#[derive(Debug, Args)]
pub struct BroadcastArgs {
    /// The message: any JSON value.
    #[arg(value_name = "JSON", value_parser = parse_json)]
    pub message: serde_json::Value,
    #[command(flatten)]
    pub target: Target,
}

#[derive(Debug, Args)]
pub struct SendArgs {
    /// The slot whose worker gets the message.
    #[arg(value_name = "SLOT")]
    pub slot: u32,
    /// The message: any JSON value.
    #[arg(value_name = "JSON", value_parser = parse_json)]
    pub message: serde_json::Value,
    #[command(flatten)]
    pub target: Target,
}

/// Parses a size: bytes, or a number with `K`, `M`, `G` (powers of 1024; `KiB`, `MB` and the
/// like are read the same way).
pub fn parse_size(value: &str) -> Result<u64, String> {
    let trimmed = value.trim();
    let split = trimmed
        .find(|c: char| !c.is_ascii_digit())
        .unwrap_or(trimmed.len());
    let (digits, unit) = trimmed.split_at(split);
    let number: u64 = digits
        .parse()
        .map_err(|_| format!("expected a size such as 512M or 2G, got {value:?}"))?;
    let shift = match unit
        .trim()
        .to_ascii_uppercase()
        .trim_end_matches(['B', 'I'])
    {
        "" => 0,
        "K" => 10,
        "M" => 20,
        "G" => 30,
        "T" => 40,
        _ => return Err(format!("unknown size unit in {value:?}: use K, M or G")),
    };
    match number.checked_mul(1 << shift) {
        Some(0) | None => Err(format!("{value:?} is not a usable memory limit")),
        Some(bytes) => Ok(bytes),
    }
}

/// Parses a message argument as JSON.
fn parse_json(value: &str) -> Result<serde_json::Value, String> {
    serde_json::from_str(value)
        .map_err(|err| format!("not JSON ({err}); quote strings: '\"text\"'"))
}

#[derive(Debug, Args)]
pub struct RunArgs {
    /// Number of workers: a positive number; `max` for the CPUs this process may use (CPU
    /// affinity and cgroup CPU quota, not the host's core count); `-N` for all of those but N,
    /// at least 1 (PM2's `-i -1`).
    #[arg(long, value_name = "N|max|-N", default_value = "max", value_parser = parse_worker_count)]
    pub workers: WorkerCount,

    /// Where to listen: `HOST:PORT` (`127.0.0.1:8080`, `[::1]:8080`, `localhost:8080`), or
    /// `PORT` / `:PORT` for every interface (IPv6 and IPv4). Port 0 picks a free port.
    #[arg(long, value_name = "ADDR:PORT|PORT", default_value = "127.0.0.1:8080",
          value_parser = parse_listen)]
    pub listen: ListenSpec,

    /// How new connections are spread over the workers.
    #[arg(long, value_enum, default_value_t = SteeringMode::RoundRobin)]
    pub steering: SteeringMode,

    /// With `--steering sticky`: how many leading bits of a client's IPv4 and IPv6 address
    /// choose its worker. The default keeps each IPv4 address, and each IPv6 /64 (a client whose
    /// privacy address rotates stays put; one /64 lands on one worker).
    #[arg(long, value_name = "V4BITS,V6BITS", default_value = "32,64",
          value_parser = parse_sticky_prefix)]
    pub sticky_prefix: StickyPrefix,

    /// Length of each listening socket's accept queue (listen(2) backlog).
    #[arg(long, value_name = "N", default_value_t = 1024,
          value_parser = clap::value_parser!(u32).range(1..=65535))]
    pub backlog: u32,

    /// Seconds a worker gets to exit after SIGTERM, on shutdown, before it is killed.
    #[arg(long, value_name = "SECONDS", default_value_t = 10,
          value_parser = clap::value_parser!(u64).range(1..=3600))]
    pub shutdown_timeout: u64,

    /// Seconds a replaced or removed worker gets to drain (finish what it accepted) before it
    /// is killed.
    #[arg(long, value_name = "SECONDS", default_value_t = 30,
          value_parser = clap::value_parser!(u64).range(1..=3600))]
    pub drain_timeout: u64,

    /// Slots replaced at once by a reload (SIGHUP, SIGUSR2).
    #[arg(long, value_name = "K", default_value_t = 1,
          value_parser = clap::value_parser!(u32).range(1..=i64::from(MAX_SLOTS)))]
    pub reload_batch: u32,

    /// With a COMMAND: count a worker as serving only once it sends `READY=1` to
    /// `$NOTIFY_SOCKET` (sd_notify(3)), like PM2's `wait_ready`, for an app that must load before
    /// it serves. Without this flag, once it has accepted a probe connection from its socket
    /// (round-robin, sticky, least-conn), or once /proc shows it waiting to accept from its
    /// socket (hash, shared). The demo worker always reports readiness.
    #[arg(long, requires = "command")]
    pub wait_ready: bool,

    /// Seconds a worker gets to report readiness (or accept its probe) before it is killed and
    /// started again.
    #[arg(long, value_name = "SECONDS", default_value_t = 30,
          value_parser = clap::value_parser!(u64).range(1..=3600))]
    pub ready_timeout: u64,

    /// Seconds a worker may leave connections waiting in its accept queue without accepting
    /// any, before it counts as stalled and gets no new connection until it accepts again
    /// (decimals allowed, at least 0.25). Needs the program (round-robin, sticky, least-conn) to
    /// skip it; see the README's "Worker health".
    #[arg(long, value_name = "SECONDS", default_value = "1", value_parser = parse_stall_after)]
    pub stall_after: Duration,

    /// Seconds a worker may stay stalled before it is killed (SIGKILL) and replaced; what was
    /// queued on it is migrated to the others. 0: never.
    #[arg(long, value_name = "SECONDS", default_value_t = 30,
          value_parser = clap::value_parser!(u64).range(0..=86400))]
    pub hang_timeout: u64,
    /// Seconds a worker must stay up after it is ready for its start to count as stable. A
    /// worker that exits before it is ready, or sooner after, had an unstable start.
    #[arg(long, value_name = "SECONDS", default_value_t = 1,
          value_parser = clap::value_parser!(u64).range(1..=3600))]
    pub min_uptime: u64,

    /// Unstable starts in a row after which a slot gives up (PM2's `max_restarts`). If no worker
    /// of the pool ever started stably, the supervisor then exits with status 4; otherwise the
    /// pool serves with the other slots, and a reload starts the failed one afresh.
    #[arg(long, value_name = "N", default_value_t = 9,
          value_parser = clap::value_parser!(u32).range(1..))]
    pub max_restarts: u32,

    /// Replace a worker whose resident memory stays above SIZE (two checks in a row, 5 s
    /// apart) by the rolling-reload path: `512M`, `2G`, or bytes.
    #[arg(long, value_name = "SIZE", value_parser = parse_size)]
    pub max_memory: Option<u64>,

    /// Path of the control socket that `cluster status`, `reload`, `stop` and the other
    /// subcommands talk to. Default: `PID.sock` in `$XDG_RUNTIME_DIR/cluster`, or in
    /// `/run/cluster` for root.
    #[arg(long, value_name = "PATH")]
    pub control: Option<PathBuf>,

    /// Let workers write to the supervisor's stdout and stderr directly, instead of capturing
    /// their output and logging it line by line with their slot and pid.
    #[arg(long)]
    pub log_passthrough: bool,

    /// Measure what the steering programs cost: turn on the kernel's BPF run-time stats for this
    /// run and log each program's runs and nanoseconds per run at exit (`program cost`).
    #[arg(long)]
    pub bpf_stats: bool,

    /// How the log is written to stderr: `text` for people, `json` (one object per line) for
    /// log shippers.
    #[arg(long, value_enum, default_value_t = LogFormat::Text)]
    pub log_format: LogFormat,

    /// Program each worker runs instead of the demo server. It gets its listening socket the
    /// systemd way (fd 3, LISTEN_FDS=1, LISTEN_PID, LISTEN_FDNAMES) and its slot number in
    /// CLUSTER_WORKER_ID.
    #[arg(last = true, value_name = "COMMAND")]
    pub command: Vec<OsString>,
}

/// Parses `--stall-after`: seconds, decimals allowed, from 0.25 (the check interval) to 3600.
pub fn parse_stall_after(value: &str) -> Result<Duration, String> {
    let seconds: f64 = value
        .trim()
        .parse()
        .map_err(|_| format!("`{value}` is not a number of seconds (like 1 or 0.5)"))?;
    if !(0.25..=3600.0).contains(&seconds) {
        return Err(format!(
            "{value} s is out of range: use 0.25 to 3600 (accept queues are read every 0.25 s)"
        ));
    }
    Ok(Duration::from_secs_f64(seconds))
}

/// `--workers`: how many worker slots to run.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WorkerCount {
    /// As many as the CPUs this process may use.
    Max,
    /// That many fewer than the CPUs this process may use, at least 1.
    AllBut(NonZeroU32),
    /// Exactly this many.
    Exactly(NonZeroU32),
}

impl WorkerCount {
    /// The slot count for `usable_cpus` usable CPUs, from 1 to [`MAX_SLOTS`].
    #[must_use]
    pub fn resolve(self, usable_cpus: u32) -> u32 {
        match self {
            Self::Max => usable_cpus.clamp(1, MAX_SLOTS),
            Self::AllBut(n) => usable_cpus.saturating_sub(n.get()).clamp(1, MAX_SLOTS),
            Self::Exactly(n) => n.get(),
        }
    }
}

/// Parses `--workers`: `max`, `-N`, or a whole number from 1 to [`MAX_SLOTS`].
pub fn parse_worker_count(value: &str) -> Result<WorkerCount, String> {
    if value.eq_ignore_ascii_case("max") {
        return Ok(WorkerCount::Max);
    }
    let (all_but, digits) = match value.strip_prefix('-') {
        Some(digits) => (true, digits),
        None => (false, value),
    };
    let n: u64 = digits.parse().map_err(|_| {
        "expected a whole number of workers, `max`, or `-N` for all CPUs but N".to_owned()
    })?;
    let n = match u32::try_from(n).ok().and_then(NonZeroU32::new) {
        None if n == 0 => return Err("the pool needs at least 1 worker".to_owned()),
        Some(n) if n.get() <= MAX_SLOTS => n,
        _ if all_but => return Err(format!("-N leaves N CPUs out, at most {MAX_SLOTS}")),
        _ => return Err(format!("at most {MAX_SLOTS} workers are supported")),
    };
    Ok(if all_but {
        WorkerCount::AllBut(n)
    } else {
        WorkerCount::Exactly(n)
    })
}

/// `--listen` as typed; resolved to one address when the pool starts
/// ([`crate::listener::resolve`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ListenSpec {
    /// An IP address and port.
    Addr(SocketAddr),
    /// `PORT` or `:PORT`: every interface, as Node's `listen(PORT)` and Go's `:PORT`.
    AnyInterface { port: u16 },
    /// A host name, resolved at start.
    Host { host: String, port: u16 },
}

impl fmt::Display for ListenSpec {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Addr(addr) => write!(f, "{addr}"),
            Self::AnyInterface { port } => write!(f, ":{port}"),
            Self::Host { host, port } => write!(f, "{host}:{port}"),
        }
    }
}

/// Parses `--listen`: `IP:PORT`, `[IPv6]:PORT`, `HOST:PORT`, `PORT` or `:PORT`.
pub fn parse_listen(value: &str) -> Result<ListenSpec, String> {
    if let Ok(addr) = value.parse::<SocketAddr>() {
        return Ok(ListenSpec::Addr(addr));
    }
    let port = |text: &str| -> Result<u16, String> {
        text.parse()
            .map_err(|_| format!("`{text}` is not a port number (0 to 65535)"))
    };
    let digits_only = |text: &str| !text.is_empty() && text.bytes().all(|b| b.is_ascii_digit());
    let bare = value.strip_prefix(':').unwrap_or(value);
    if digits_only(bare) {
        return Ok(ListenSpec::AnyInterface { port: port(bare)? });
    }
    let usage = "expected HOST:PORT, [IPv6]:PORT, PORT or :PORT";
    if value.starts_with('[') {
        return Err(format!(
            "{usage}; an IPv6 address in brackets needs a port after them, as in [::1]:8080"
        ));
    }
    let (host, port_text) = value.rsplit_once(':').ok_or(usage)?;
    if host.contains(':') {
        return Err(format!(
            "{usage}; write an IPv6 address in brackets, as in [::1]:8080"
        ));
    }
    // Host names as /etc/hosts and container runtimes write them, underscores included.
    if host.is_empty()
        || !host
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"-._".contains(&b))
    {
        return Err(format!("`{host}` is not a host name; {usage}"));
    }
    Ok(ListenSpec::Host {
        host: host.to_owned(),
        port: port(port_text)?,
    })
}

/// `--sticky-prefix`: prefix lengths in bits.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct StickyPrefix {
    pub v4: u32,
    pub v6: u32,
}

/// Parses `--sticky-prefix V4BITS,V6BITS`.
pub fn parse_sticky_prefix(value: &str) -> Result<StickyPrefix, String> {
    let usage = "expected V4BITS,V6BITS, as in 32,64 (0 to 32 and 0 to 128)";
    let (v4, v6) = value.split_once(',').ok_or(usage)?;
    let bits = |text: &str, max: u32| match text.trim().parse::<u32>() {
        Ok(n) if n <= max => Ok(n),
        _ => Err(usage.to_owned()),
    };
    Ok(StickyPrefix {
        v4: bits(v4, 32)?,
        v6: bits(v6, 128)?,
    })
}

/// `--log-format`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum LogFormat {
    /// One line per event, for people.
    Text,
    /// One JSON object per line, for log shippers.
    Json,
}

/// `--steering`: who picks the worker for a new connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum SteeringMode {
    /// The eBPF program: strict rotation over the serving workers.
    RoundRobin,
    /// The eBPF program: by client source address, stable while the workers are unchanged.
    Sticky,
    /// The eBPF program: to the worker with fewer open connections, of two candidates (exact with
    /// two workers), so a busy worker gets new connections last.
    LeastConn,
    /// Plain SO_REUSEPORT, no program: the kernel's own 4-tuple hash.
    Hash,
    /// One listening socket shared by all workers: the OS wakes whichever worker accepts.
    Shared,
    /// For measuring only: a program that decides nothing (the kernel hashes).
    #[value(hide = true)]
    FloorEmpty,
    /// For measuring only: a program that makes one selection call, always the first worker.
    #[value(hide = true)]
    FloorSelect,
}

impl fmt::Display for SteeringMode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::RoundRobin => "round-robin",
            Self::Sticky => "sticky",
            Self::LeastConn => "least-conn",
            Self::Hash => "hash",
            Self::Shared => "shared",
            Self::FloorEmpty => "floor-empty",
            Self::FloorSelect => "floor-select",
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
            other => panic!("parsed as {other:?}"),
        })
    }

    #[test]
    fn sizes() {
        assert_eq!(parse_size("512M"), Ok(512 << 20));
        assert_eq!(parse_size("2G"), Ok(2 << 30));
        assert_eq!(parse_size("64KiB"), Ok(64 << 10));
        assert_eq!(parse_size("1mb"), Ok(1 << 20));
        assert_eq!(parse_size("4096"), Ok(4096));
        for bad in ["", "M", "12Q", "0", "-5M", "99999999999999999G"] {
            assert!(parse_size(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn stall_after_takes_decimal_seconds_in_range() {
        assert_eq!(parse_stall_after("1"), Ok(Duration::from_secs(1)));
        assert_eq!(parse_stall_after("0.5"), Ok(Duration::from_millis(500)));
        for bad in ["", "0", "0.1", "-1", "1s", "nan", "3601"] {
            assert!(parse_stall_after(bad).is_err(), "{bad}");
        }
        let args = run_args(&[]).expect("defaults parse");
        assert_eq!(args.stall_after, Duration::from_secs(1));
        assert_eq!(args.hang_timeout, 30);
    }

    #[test]
    fn control_subcommands() {
        let parse = |args: &[&str]| Cli::try_parse_from(["cluster"].iter().chain(args));
        assert!(matches!(
            parse(&["scale", "3", "--pid", "9"]).unwrap().command,
            Command::Scale(ScaleArgs {
                workers: 3,
                target: Target {
                    pid: Some(9),
                    control: None
                }
            })
        ));
        assert!(parse(&["scale", "0"]).is_err());
        assert!(parse(&["reload", "--pid", "1", "--control", "/x"]).is_err());
        assert!(parse(&["send", "1", "not json"]).is_err());
        assert!(matches!(
            parse(&["broadcast", "{\"users\":3}"]).unwrap().command,
            Command::Broadcast(_)
        ));
        assert!(parse(&["explode"]).is_err());
    }

    #[test]
    fn defaults() {
        let args = run_args(&[]).unwrap();
        assert_eq!(args.workers, WorkerCount::Max);
        assert_eq!(
            args.listen,
            ListenSpec::Addr("127.0.0.1:8080".parse().unwrap())
        );
        assert_eq!(args.steering, SteeringMode::RoundRobin);
        assert_eq!(args.log_format, LogFormat::Text);
        assert!(!args.log_passthrough);
        assert!(args.command.is_empty());
        assert_eq!((args.min_uptime, args.max_restarts), (1, 9));
    }

    #[test]
    fn crash_loop_limits() {
        let args = run_args(&["--min-uptime", "5", "--max-restarts", "3"]).unwrap();
        assert_eq!((args.min_uptime, args.max_restarts), (5, 3));
        for bad in [
            &["--min-uptime", "0"][..],
            &["--min-uptime", "1.5"],
            &["--max-restarts", "0"],
            &["--max-restarts", "-1"],
        ] {
            assert!(run_args(bad).is_err(), "{bad:?}");
        }
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
        assert!(parse_worker_count("-x").unwrap_err().contains("`-N`"));
        assert!(parse_worker_count("-0").unwrap_err().contains("at least 1"));
        assert!(
            parse_worker_count("-2000")
                .unwrap_err()
                .contains("-N leaves N CPUs out")
        );
        assert!(
            parse_worker_count("99999999999")
                .unwrap_err()
                .contains("at most")
        );
        assert!(parse_worker_count("1025").unwrap_err().contains("at most"));
        assert_eq!(WorkerCount::Max.resolve(3), 3);
        assert_eq!(WorkerCount::Max.resolve(5000), MAX_SLOTS);
        let all_but = |n| WorkerCount::AllBut(NonZeroU32::new(n).unwrap());
        assert_eq!(parse_worker_count("-1"), Ok(all_but(1)));
        assert_eq!(all_but(1).resolve(8), 7);
        assert_eq!(all_but(1).resolve(1), 1, "at least one worker");
        assert_eq!(all_but(3).resolve(2), 1);
    }

    #[test]
    fn negative_workers_and_a_command_parse_together() {
        let args = run_args(&["--workers", "-1", "--", "python3", "-1"]).unwrap();
        assert_eq!(
            args.workers,
            WorkerCount::AllBut(NonZeroU32::new(1).unwrap())
        );
        assert_eq!(args.command, vec![OsString::from("python3"), "-1".into()]);
        let args = run_args(&["--workers=-2"]).unwrap();
        assert_eq!(
            args.workers,
            WorkerCount::AllBut(NonZeroU32::new(2).unwrap())
        );
    }

    #[test]
    fn listen_forms() {
        let any = |port| Ok(ListenSpec::AnyInterface { port });
        assert_eq!(parse_listen("8080"), any(8080));
        assert_eq!(parse_listen(":8080"), any(8080));
        assert_eq!(parse_listen("0"), any(0));
        assert_eq!(
            parse_listen("localhost:8080"),
            Ok(ListenSpec::Host {
                host: "localhost".into(),
                port: 8080
            })
        );
        assert_eq!(
            parse_listen("[::]:80"),
            Ok(ListenSpec::Addr("[::]:80".parse().unwrap()))
        );
        assert!(parse_listen("::1:80").unwrap_err().contains("brackets"));
        assert!(parse_listen("[::1]").unwrap_err().contains("needs a port"));
        assert!(
            parse_listen("my_host:80").is_ok(),
            "underscores, as in /etc/hosts"
        );
        assert!(parse_listen("70000").unwrap_err().contains("port number"));
        assert!(parse_listen("localhost").unwrap_err().contains("HOST:PORT"));
        assert!(parse_listen("a b:80").unwrap_err().contains("host name"));
        assert!(parse_listen(":").unwrap_err().contains("host name"));
        assert_eq!(
            parse_listen("localhost:8080").unwrap().to_string(),
            "localhost:8080"
        );
        assert_eq!(parse_listen("8080").unwrap().to_string(), ":8080");
    }

    #[test]
    fn sticky_prefixes() {
        assert_eq!(
            run_args(&[]).unwrap().sticky_prefix,
            StickyPrefix { v4: 32, v6: 64 }
        );
        assert_eq!(
            parse_sticky_prefix("24,48"),
            Ok(StickyPrefix { v4: 24, v6: 48 })
        );
        for bad in ["33,64", "32,129", "32", "a,b", "-1,64"] {
            assert!(
                parse_sticky_prefix(bad)
                    .unwrap_err()
                    .contains("V4BITS,V6BITS"),
                "{bad}"
            );
        }
    }

    #[test]
    fn version_names_the_program() {
        let err = Cli::try_parse_from(["cluster", "run", "--version"]).unwrap_err();
        assert_eq!(
            err.to_string(),
            format!("cluster {}\n", env!("CARGO_PKG_VERSION"))
        );
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
        assert_eq!(args.listen, ListenSpec::Addr("[::1]:0".parse().unwrap()));
        assert_eq!(args.steering, SteeringMode::Sticky);
        assert_eq!(
            args.command,
            vec![OsString::from("python3"), OsString::from("-V")]
        );
        assert!(run_args(&["--listen", "localhost"]).is_err());
        assert!(run_args(&["--log-format", "xml"]).is_err());
        assert_eq!(
            run_args(&["--log-format", "json", "--log-passthrough"])
                .unwrap()
                .log_format,
            LogFormat::Json
        );
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
