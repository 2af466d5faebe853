//! `cargo xtask cost`: what each steering program costs per decision, read from the kernel's own
//! BPF stats (`cluster run --bpf-stats`), beside two floors measured in the same run: a program
//! that decides nothing, and one that makes a single `bpf_sk_select_reuseport` call. Modes are
//! interleaved and repeated, so drift hits them alike; absolute nanoseconds move between
//! machines, the ratios to the floors much less.

use std::{
    collections::BTreeMap,
    ffi::OsString,
    io::{BufRead as _, BufReader, Read as _, Write as _},
    net::{SocketAddr, TcpListener, TcpStream},
    path::Path,
    process::{Child, Command, Stdio},
    sync::{
        Arc,
        atomic::{AtomicBool, AtomicU64, Ordering},
        mpsc,
    },
    thread,
    time::{Duration, Instant},
};

use anyhow::{Context as _, Result, bail};

/// Every mode measured, floors first.
const MODES: [&str; 5] = [
    "floor-empty",
    "floor-select",
    "round-robin",
    "sticky",
    "least-conn",
];
/// The floor the real modes are compared with.
const SELECT_FLOOR: &str = "floor-select";

/// `cargo xtask cost` options.
#[derive(Debug, Clone, Copy)]
pub struct Options {
    workers: u32,
    seconds: u64,
    clients: usize,
    rounds: usize,
}

impl Options {
    /// Parses `[--workers N] [--seconds S] [--clients C] [--rounds R]`.
    pub fn parse(args: &[OsString]) -> Result<Self> {
        let mut options = Self {
            workers: 2,
            seconds: 5,
            clients: 8,
            rounds: 3,
        };
        let mut args = args.iter().map(|a| a.to_string_lossy().into_owned());
        while let Some(flag) = args.next() {
            let value = args
                .next()
                .with_context(|| format!("{flag} needs a value"))?;
            let number = || -> Result<u64> {
                value
                    .parse::<u64>()
                    .ok()
                    .filter(|n| *n > 0)
                    .with_context(|| format!("{flag} takes a positive whole number, not {value:?}"))
            };
            match flag.as_str() {
                "--workers" => options.workers = u32::try_from(number()?)?,
                "--seconds" => options.seconds = number()?,
                "--clients" => options.clients = usize::try_from(number()?)?,
                "--rounds" => options.rounds = usize::try_from(number()?)?,
                other => bail!(
                    "unknown option {other}: use --workers N, --seconds S, --clients C, --rounds R"
                ),
            }
        }
        Ok(options)
    }
}

/// One mode's run: the kernel's stats of its two programs.
#[derive(Debug, Clone, Copy, Default)]
struct Sample {
    decisions: u64,
    ns_per_decision: u64,
    counter_runs: u64,
    ns_per_count: u64,
    requests: u64,
}

/// Measures every mode `rounds` times with `binary` and prints a table to stdout.
pub fn run(binary: &Path, options: Options) -> Result<()> {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        bail!("measuring the programs loads them and needs root: run `sudo -E cargo xtask cost`");
    }
    let mut samples: BTreeMap<&str, Vec<Sample>> = BTreeMap::new();
    for round in 1..=options.rounds {
        for mode in MODES {
            let sample = measure(binary, mode, options)
                .with_context(|| format!("measuring {mode}, round {round}"))?;
            eprintln!(
                "cost: round {round}/{}: {mode}: {} ns per decision over {} decisions",
                options.rounds, sample.ns_per_decision, sample.decisions
            );
            samples.entry(mode).or_default().push(sample);
        }
    }
    let floor = median(&samples[SELECT_FLOOR], |s| s.ns_per_decision);
    let mut out = std::io::stdout().lock();
    writeln!(
        out,
        "\n{} workers, {} clients, a new connection per request, {} s per run, {} rounds (median, min–max):\n",
        options.workers, options.clients, options.seconds, options.rounds
    )?;
    writeln!(
        out,
        "| mode | ns per decision | × floor-select | requests/s | counter ns per run |"
    )?;
    writeln!(out, "|---|---|---|---|---|")?;
    for mode in MODES {
        let runs = &samples[mode];
        let ns = median(runs, |s| s.ns_per_decision);
        let (low, high) = range(runs, |s| s.ns_per_decision);
        #[expect(clippy::cast_precision_loss, reason = "nanoseconds, far below 2^52")]
        let ratio = ns as f64 / floor.max(1) as f64;
        let rate = median(runs, |s| s.requests) / options.seconds;
        let count = median(runs, |s| s.ns_per_count);
        writeln!(
            out,
            "| {mode} | {ns} ({low}–{high}) | {ratio:.2} | {rate} | {count} |"
        )?;
    }
    Ok(())
}

fn median(samples: &[Sample], field: impl Fn(&Sample) -> u64) -> u64 {
    let mut values: Vec<u64> = samples.iter().map(field).collect();
    values.sort_unstable();
    values.get(values.len() / 2).copied().unwrap_or(0)
}

fn range(samples: &[Sample], field: impl Fn(&Sample) -> u64) -> (u64, u64) {
    let values: Vec<u64> = samples.iter().map(field).collect();
    (
        values.iter().copied().min().unwrap_or(0),
        values.iter().copied().max().unwrap_or(0),
    )
}

/// One pool in `mode` under `options.clients` looping clients for `options.seconds`.
fn measure(binary: &Path, mode: &str, options: Options) -> Result<Sample> {
    let addr = free_port()?;
    let mut child = Command::new(binary)
        .args(["run", "--listen", &addr.to_string(), "--steering", mode])
        .args(["--workers", &options.workers.to_string()])
        .args(["--bpf-stats", "--log-format", "json"])
        .env("RUST_LOG", "info")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .with_context(|| format!("starting {}", binary.display()))?;
    let result = load_and_stop(&mut child, addr, options);
    if result.is_err() {
        let _ = child.kill();
        let _ = child.wait();
    }
    result
}

fn load_and_stop(child: &mut Child, addr: SocketAddr, options: Options) -> Result<Sample> {
    let stderr = child.stderr.take().context("no stderr")?;
    let (ready_tx, ready_rx) = mpsc::channel();
    let reader = thread::spawn(move || {
        let mut lines = Vec::new();
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            if line.contains(r#""message":"ready""#) {
                let _ = ready_tx.send(());
            }
            lines.push(line);
        }
        lines
    });
    ready_rx
        .recv_timeout(Duration::from_secs(60))
        .context("the pool did not report ready within 60 s")?;
    let requests = load(addr, options);
    let pid = i32::try_from(child.id())?;
    // SAFETY: kill(2) on the child we started.
    unsafe { libc::kill(pid, libc::SIGTERM) };
    let status = child.wait()?;
    let lines = reader
        .join()
        .map_err(|_| anyhow::anyhow!("log reader panicked"))?;
    if !status.success() {
        bail!("the pool exited with {status}:\n{}", lines.join("\n"));
    }
    let mut sample = Sample {
        requests,
        ..Sample::default()
    };
    for line in &lines {
        let Ok(event) = serde_json::from_str::<serde_json::Value>(line) else {
            continue;
        };
        let fields = &event["fields"];
        if fields["message"] != "program cost" {
            continue;
        }
        let runs = fields["runs"].as_u64().unwrap_or(0);
        let ns = fields["ns_per_run"].as_u64().unwrap_or(0);
        if fields["program"] == "count_connections" {
            (sample.counter_runs, sample.ns_per_count) = (runs, ns);
        } else {
            (sample.decisions, sample.ns_per_decision) = (runs, ns);
        }
    }
    if sample.decisions == 0 {
        bail!(
            "no `program cost` line in the pool's log:\n{}",
            lines.join("\n")
        );
    }
    Ok(sample)
}

/// Requests on a new connection each, from `clients` threads for `seconds`; returns how many
/// were answered.
fn load(addr: SocketAddr, options: Options) -> u64 {
    let stop = Arc::new(AtomicBool::new(false));
    let answered = Arc::new(AtomicU64::new(0));
    let clients: Vec<_> = (0..options.clients)
        .map(|_| {
            let (stop, answered) = (Arc::clone(&stop), Arc::clone(&answered));
            thread::spawn(move || {
                while !stop.load(Ordering::Relaxed) {
                    if request(addr).is_ok() {
                        answered.fetch_add(1, Ordering::Relaxed);
                    }
                }
            })
        })
        .collect();
    let deadline = Instant::now() + Duration::from_secs(options.seconds);
    while Instant::now() < deadline {
        thread::sleep(Duration::from_millis(100));
    }
    stop.store(true, Ordering::Relaxed);
    for client in clients {
        let _ = client.join();
    }
    answered.load(Ordering::Relaxed)
}

fn request(addr: SocketAddr) -> std::io::Result<()> {
    let mut stream = TcpStream::connect_timeout(&addr, Duration::from_secs(5))?;
    stream.set_read_timeout(Some(Duration::from_secs(5)))?;
    stream.write_all(b"GET / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")?;
    let mut reply = Vec::new();
    stream.read_to_end(&mut reply)?;
    Ok(())
}

fn free_port() -> Result<SocketAddr> {
    let probe = TcpListener::bind("127.0.0.1:0").context("binding a probe socket")?;
    Ok(probe.local_addr()?)
}
