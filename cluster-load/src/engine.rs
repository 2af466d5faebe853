//! Runs the load: one task per client, each with at most one request in flight, sending until
//! the duration ends, either back to back (closed loop) or at fixed scheduled times (open loop),
//! and adding up what every client saw into a [`Report`].

use std::{
    collections::BTreeMap,
    sync::{
        Arc,
        atomic::{AtomicU64, Ordering},
    },
    time::{Duration, Instant},
};

use hdrhistogram::Histogram;
use hyper::header::HeaderValue;
use tokio::task::JoinHandle;

use crate::{
    client::{Answer, Connection, GetRequest, SendError, get},
    config::{Config, ConfigError, ConnectionMode},
    errors::{ErrorClass, ErrorCounts, Failure},
    report::{KeptAliveFailure, Report},
    sources::SourceSpread,
    stats::{self, LatencySummary, Share, latency_histogram},
    timeline::{Recorder, Timeline},
};

/// Distinct failure descriptions kept for the report.
const FAILURE_SAMPLES: usize = 10;

/// Why a run could not be made.
#[derive(Debug, thiserror::Error)]
pub enum LoadError {
    #[error(transparent)]
    Config(#[from] ConfigError),
    #[error("cluster-load must run inside a tokio runtime: start it from one (#[tokio::main])")]
    NoRuntime,
    #[error("a load client task failed: {0}")]
    Client(#[from] tokio::task::JoinError),
}

/// Counters that move while the run goes on, for a progress display or a caller that acts
/// during the run (the bench stops a worker after so many answers).
#[derive(Debug, Default)]
pub struct Live {
    ok: AtomicU64,
    failed: AtomicU64,
    /// The `x-worker-pid` of the latest successful answer that had one; 0 before any.
    last_pid: AtomicU64,
}

impl Live {
    /// Successful (2xx) requests so far.
    #[must_use]
    pub fn ok(&self) -> u64 {
        self.ok.load(Ordering::Relaxed)
    }

    /// Failed requests so far.
    #[must_use]
    pub fn failed(&self) -> u64 {
        self.failed.load(Ordering::Relaxed)
    }

    /// The `x-worker-pid` of the latest successful answer that had one: a worker the load
    /// reaches.
    #[must_use]
    pub fn last_pid(&self) -> Option<u64> {
        Some(self.last_pid.load(Ordering::Relaxed)).filter(|pid| *pid != 0)
    }
}

/// A run under way; [`Running::finish`] waits for its end.
#[derive(Debug)]
pub struct Running {
    plan: Arc<Plan>,
    clients: Vec<JoinHandle<Tally>>,
}

/// Checks `config` and starts its clients on the current tokio runtime.
///
/// # Errors
///
/// A setting that cannot be used, or no runtime.
pub fn start(config: Config) -> Result<Running, LoadError> {
    config.validate()?;
    let runtime = tokio::runtime::Handle::try_current().map_err(|_| LoadError::NoRuntime)?;
    let host = HeaderValue::from_str(&config.target.host).map_err(|err| ConfigError::BadUrl {
        url: config.target.url(),
        reason: format!("its host cannot be a Host header: {err}"),
    })?;
    let spread = config.source_spread()?;
    let started = Instant::now();
    let schedule = Schedule {
        start: started,
        end: started + config.duration,
        period: config.rate.map(|rate| 1.0 / rate),
        issued: AtomicU64::new(0),
    };
    let plan = Arc::new(Plan {
        host,
        spread,
        schedule,
        opened: AtomicU64::new(0),
        live: Arc::new(Live::default()),
        started,
        timeline: config
            .timeline
            .map(|bucket| Recorder::new(bucket, config.duration)),
        config,
    });
    let clients = (0..plan.config.concurrency)
        .map(|_| runtime.spawn(Arc::clone(&plan).client()))
        .collect();
    Ok(Running { plan, clients })
}

/// Runs `config` to its end.
///
/// # Errors
///
/// As [`start`] and [`Running::finish`].
pub async fn run(config: Config) -> Result<Report, LoadError> {
    start(config)?.finish().await
}

impl Running {
    /// The counters of the run so far.
    #[must_use]
    pub fn live(&self) -> Arc<Live> {
        Arc::clone(&self.plan.live)
    }

    /// When the run started.
    #[must_use]
    pub fn started(&self) -> Instant {
        self.plan.started
    }

    /// Waits until the duration has passed and every request in flight has ended (each takes at
    /// most the timeout), and reports.
    ///
    /// # Errors
    ///
    /// A client task that panicked.
    pub async fn finish(self) -> Result<Report, LoadError> {
        let mut total = Tally::default();
        for client in self.clients {
            total.merge(client.await?);
        }
        let timeline = self.plan.timeline.as_ref().map(Recorder::timeline);
        Ok(total.into_report(&self.plan.config, self.plan.started.elapsed(), timeline))
    }
}

/// What every client shares.
#[derive(Debug)]
struct Plan {
    config: Config,
    host: HeaderValue,
    spread: Option<SourceSpread>,
    schedule: Schedule,
    /// Connections opened by all clients: picks each one's source address in turn.
    opened: AtomicU64,
    live: Arc<Live>,
    started: Instant,
    /// The time series, if the config asks for one.
    timeline: Option<Recorder>,
}

/// When requests are due.
#[derive(Debug)]
struct Schedule {
    start: Instant,
    end: Instant,
    /// Seconds between two requests in open loop; `None` in closed loop.
    period: Option<f64>,
    /// Requests handed out so far in open loop.
    issued: AtomicU64,
}

impl Schedule {
    /// When the next request is due: now in closed loop, its slot on the fixed grid in open
    /// loop (however late a client comes to take it). `None` once the run is over.
    #[expect(
        clippy::cast_precision_loss,
        reason = "request numbers stay far below 2^52"
    )]
    fn next(&self) -> Option<Instant> {
        let due = match self.period {
            None => Instant::now(),
            Some(period) => {
                let n = self.issued.fetch_add(1, Ordering::Relaxed);
                let offset = Duration::try_from_secs_f64(n as f64 * period).ok()?;
                self.start.checked_add(offset)?
            }
        };
        (due < self.end).then_some(due)
    }
}

impl Plan {
    /// One client: requests until the schedule ends.
    async fn client(self: Arc<Self>) -> Tally {
        let mut tally = Tally::default();
        let mut rng = fastrand::Rng::new();
        let mut connection = None;
        let keep_alive = self.config.mode == ConnectionMode::KeepAlive;
        while let Some(due) = self.schedule.next() {
            // Latency counts from when the request was due if the client was still busy then
            // (the wait for a free client is queueing the server caused), else from when the
            // client woke to send it: tokio's timer fires up to a millisecond late, and that lag
            // is the generator's own.
            let origin = if due > Instant::now() {
                tokio::time::sleep_until(due.into()).await;
                Instant::now()
            } else {
                due
            };
            let uri = self.config.paths.pick(&mut rng).clone();
            let request = get(uri, &self.host, keep_alive);
            let sent = self.started.elapsed();
            let mut kept_by = None;
            let exchange = self.exchange(&mut connection, request, &mut tally, &mut kept_by);
            let outcome = match tokio::time::timeout(self.config.timeout, exchange).await {
                Ok(outcome) => outcome,
                Err(_) => {
                    // The request's connection was dropped (closed) with the exchange.
                    Err(Failure {
                        class: ErrorClass::Timeout,
                        detail: format!(
                            "no whole answer within {} s",
                            self.config.timeout.as_secs_f64()
                        ),
                    })
                }
            };
            let latency = origin.elapsed();
            let pid = outcome.as_ref().ok().and_then(|answer| answer.pid);
            if let (Err(_), Some(pid)) = (&outcome, kept_by) {
                tally.kept_alive_failures.push(KeptAliveFailure {
                    pid,
                    sent_seconds: sent.as_secs_f64(),
                });
            }
            let ok = tally.count(outcome, latency);
            if let Some(timeline) = &self.timeline {
                // Bucketed by when it was due (in closed loop, when it was sent), so that the
                // timer's lag cannot move a request into the next bucket.
                timeline.record(
                    due.saturating_duration_since(self.started),
                    ok.then_some(latency),
                );
            }
            let counter = if ok { &self.live.ok } else { &self.live.failed };
            counter.fetch_add(1, Ordering::Relaxed);
            if let (true, Some(pid)) = (ok, pid) {
                self.live.last_pid.store(pid, Ordering::Relaxed);
            }
        }
        tally
    }

    /// Sends `request` on the client's connection, opening one if it has none. A kept-alive
    /// connection found closed by the server before the request was sent counts as closed
    /// while idle, and the request goes out on a new connection. `kept_by` is set to the
    /// worker holding the kept-alive connection the request goes out on (`None` on a new one);
    /// it stays set if the exchange is dropped at the timeout.
    async fn exchange(
        &self,
        slot: &mut Option<Connection>,
        mut request: GetRequest,
        tally: &mut Tally,
        kept_by: &mut Option<u64>,
    ) -> Result<Answer, Failure> {
        loop {
            *kept_by = None;
            let mut connection = match slot.take() {
                Some(connection) => connection,
                None => {
                    let n = self.opened.fetch_add(1, Ordering::Relaxed);
                    let source = self.spread.map(|spread| spread.address(n));
                    let connection = Connection::open(self.config.target.addr, source).await?;
                    tally.connections += 1;
                    connection
                }
            };
            *kept_by = connection.kept_by();
            match connection.send(request).await {
                Ok(answer) => {
                    if answer.reusable && self.config.mode == ConnectionMode::KeepAlive {
                        *slot = Some(connection);
                    } else {
                        connection.release();
                    }
                    return Ok(answer);
                }
                Err(SendError::Unsent(unsent, _)) if connection.answered > 0 => {
                    tally.errors.idle_closed += 1;
                    request = *unsent;
                }
                Err(SendError::Unsent(_, failure) | SendError::Failed(failure)) => {
                    return Err(failure);
                }
            }
        }
    }
}

/// What one client saw (and, merged, all of them).
#[derive(Debug)]
struct Tally {
    latency: Histogram<u64>,
    ok: u64,
    errors: ErrorCounts,
    failure_samples: Vec<String>,
    slots: BTreeMap<u64, u64>,
    pids: BTreeMap<u64, u64>,
    without_slot: u64,
    without_pid: u64,
    connections: u64,
    kept_alive_failures: Vec<KeptAliveFailure>,
}

impl Default for Tally {
    fn default() -> Self {
        Self {
            latency: latency_histogram(),
            ok: 0,
            errors: ErrorCounts::default(),
            failure_samples: Vec::new(),
            slots: BTreeMap::new(),
            pids: BTreeMap::new(),
            without_slot: 0,
            without_pid: 0,
            connections: 0,
            kept_alive_failures: Vec::new(),
        }
    }
}

impl Tally {
    /// Counts one request's outcome; returns whether it succeeded.
    fn count(&mut self, outcome: Result<Answer, Failure>, latency: Duration) -> bool {
        match outcome {
            Ok(answer) if (200..300).contains(&answer.status) => {
                self.ok += 1;
                stats::record_latency(&mut self.latency, latency);
                count_header(&mut self.slots, &mut self.without_slot, answer.slot);
                count_header(&mut self.pids, &mut self.without_pid, answer.pid);
                true
            }
            Ok(answer) => {
                self.errors.add_bad_status(answer.status);
                self.sample(format!("answered with status {}", answer.status));
                false
            }
            Err(failure) => {
                self.errors.add(failure.class);
                self.sample(failure.detail);
                false
            }
        }
    }

    fn sample(&mut self, detail: String) {
        if self.failure_samples.len() < FAILURE_SAMPLES && !self.failure_samples.contains(&detail) {
            self.failure_samples.push(detail);
        }
    }

    fn merge(&mut self, other: Self) {
        // Both histograms have the same bounds, so adding cannot fail.
        self.latency.add(&other.latency).unwrap_or(());
        self.ok += other.ok;
        self.errors.merge(&other.errors);
        for detail in other.failure_samples {
            self.sample(detail);
        }
        for (slot, n) in other.slots {
            *self.slots.entry(slot).or_insert(0) += n;
        }
        for (pid, n) in other.pids {
            *self.pids.entry(pid).or_insert(0) += n;
        }
        self.without_slot += other.without_slot;
        self.without_pid += other.without_pid;
        self.connections += other.connections;
        self.kept_alive_failures.extend(other.kept_alive_failures);
    }

    fn into_report(self, config: &Config, elapsed: Duration, timeline: Option<Timeline>) -> Report {
        let failed = self.errors.failed();
        let seconds = elapsed.as_secs_f64();
        #[expect(
            clippy::cast_precision_loss,
            reason = "request counts stay far below 2^52"
        )]
        let requests_per_second = if seconds > 0.0 {
            self.ok as f64 / seconds
        } else {
            0.0
        };
        Report {
            url: config.target.url(),
            addr: config.target.addr,
            paths: config.paths.clone(),
            mode: config.mode,
            concurrency: config.concurrency,
            duration_seconds: config.duration.as_secs_f64(),
            rate: config.rate,
            spread_sources: config.spread_sources,
            timeout_seconds: config.timeout.as_secs_f64(),
            elapsed_seconds: seconds,
            requests: self.ok + failed,
            ok: self.ok,
            failed,
            requests_per_second,
            connections: self.connections,
            latency: LatencySummary::of(&self.latency),
            errors: self.errors,
            failure_samples: self.failure_samples,
            by_slot: Share::of(self.slots, self.without_slot),
            by_pid: Share::of(self.pids, self.without_pid),
            kept_alive_failures: sorted_by_time(self.kept_alive_failures),
            timeline,
        }
    }
}

fn sorted_by_time(mut failures: Vec<KeptAliveFailure>) -> Vec<KeptAliveFailure> {
    failures.sort_by(|a, b| a.sent_seconds.total_cmp(&b.sent_seconds));
    failures
}

fn count_header(counts: &mut BTreeMap<u64, u64>, without: &mut u64, value: Option<u64>) {
    match value {
        Some(value) => *counts.entry(value).or_insert(0) += 1,
        None => *without += 1,
    }
}
