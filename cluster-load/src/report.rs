//! A run's result: the figures (serialized as `--json` prints them) and the human table.

use std::{io, net::SocketAddr};

use serde::Serialize;

use crate::{
    config::ConnectionMode,
    errors::{ErrorClass, ErrorCounts},
    mix::PathMix,
    stats::{LatencySummary, Share},
    timeline::Timeline,
};

/// Everything a run measured, and the settings it ran with.
#[derive(Debug, Clone, Serialize)]
pub struct Report {
    pub url: String,
    pub addr: SocketAddr,
    pub paths: PathMix,
    pub mode: ConnectionMode,
    pub concurrency: usize,
    pub duration_seconds: f64,
    /// Requests per second scheduled (open loop), `None` for closed loop.
    pub rate: Option<f64>,
    pub spread_sources: Option<u32>,
    pub timeout_seconds: f64,
    /// From the start until the last request ended.
    pub elapsed_seconds: f64,
    /// Requests that ended: `ok + failed`.
    pub requests: u64,
    /// Requests answered whole with a 2xx status.
    pub ok: u64,
    /// Requests that failed, all classes (see `errors`).
    pub failed: u64,
    /// `ok / elapsed_seconds`.
    pub requests_per_second: f64,
    /// Connections opened.
    pub connections: u64,
    /// Latency of the successful requests, connecting included: in closed loop from sending; in
    /// open loop from the time the request was scheduled if every client was busy then, so
    /// that queueing behind slow answers counts (no coordinated omission).
    pub latency: LatencySummary,
    pub errors: ErrorCounts,
    /// The first few distinct failures, described.
    pub failure_samples: Vec<String>,
    /// Successful answers per `x-worker-slot` value.
    pub by_slot: Share,
    /// Successful answers per `x-worker-pid` value.
    pub by_pid: Share,
    /// Requests that failed without an answer on a kept-alive connection, that is one a
    /// worker had answered on before, by the time they were sent (absent when none did).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub kept_alive_failures: Vec<KeptAliveFailure>,
    /// The requests in time buckets, when the config asked for them (absent otherwise).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub timeline: Option<Timeline>,
}

/// A request that failed without an answer on a kept-alive connection.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct KeptAliveFailure {
    /// The `x-worker-pid` of the connection's earlier answers: the worker that held it.
    pub pid: u64,
    /// When the request was sent, in seconds since the run started.
    pub sent_seconds: f64,
}

impl Report {
    /// Writes the human table.
    ///
    /// # Errors
    ///
    /// A failed write.
    pub fn write_table(&self, out: &mut impl io::Write) -> io::Result<()> {
        let paths: Vec<String> = self
            .paths
            .entries()
            .map(|(weight, path)| format!("{weight}:{path}"))
            .collect();
        let paths = if paths.len() == 1 {
            String::new()
        } else {
            format!(" (mix {})", paths.join(","))
        };
        writeln!(out, "target      {}{paths}", self.url)?;
        let mode = match self.mode {
            ConnectionMode::PerRequest => "a new connection per request",
            ConnectionMode::KeepAlive => "kept-alive connections",
        };
        let pace = self.rate.map_or_else(
            || "closed loop".to_owned(),
            |r| format!("open loop at {r} req/s"),
        );
        let sources = self
            .spread_sources
            .map_or_else(String::new, |n| format!(", {n} source addresses"));
        writeln!(
            out,
            "load        {} clients, {mode}, {pace}, {} s, timeout {} s{sources}",
            self.concurrency, self.duration_seconds, self.timeout_seconds
        )?;
        writeln!(
            out,
            "requests    {} in {:.2} s: {:.1} ok/s ({} ok, {} failed, {} connections)",
            self.requests,
            self.elapsed_seconds,
            self.requests_per_second,
            self.ok,
            self.failed,
            self.connections
        )?;
        let l = &self.latency;
        writeln!(
            out,
            "latency     p50 {}  p90 {}  p99 {}  p99.9 {}  max {}  (mean {}, min {})",
            ms(l.p50_us),
            ms(l.p90_us),
            ms(l.p99_us),
            ms(l.p999_us),
            ms(l.max_us),
            ms_f(l.mean_us),
            ms(l.min_us),
        )?;
        let classes: Vec<String> = ErrorClass::ALL
            .iter()
            .map(|c| format!("{} {}", c.name(), self.errors.count(*c)))
            .collect();
        writeln!(out, "errors      {}", classes.join("  "))?;
        if !self.errors.statuses.is_empty() {
            let statuses: Vec<String> = self
                .errors
                .statuses
                .iter()
                .map(|(status, n)| format!("{status}: {n}"))
                .collect();
            writeln!(out, "            statuses {}", statuses.join(", "))?;
        }
        if self.mode == ConnectionMode::KeepAlive {
            writeln!(
                out,
                "            idle connections closed by the server: {}",
                self.errors.idle_closed
            )?;
        }
        for sample in &self.failure_samples {
            writeln!(out, "            e.g. {sample}")?;
        }
        write_share(out, "x-worker-slot", &self.by_slot, self.ok)?;
        write_share(out, "x-worker-pid", &self.by_pid, self.ok)?;
        match &self.timeline {
            Some(timeline) => write_timeline(out, timeline),
            None => Ok(()),
        }
    }
}

fn write_timeline(out: &mut impl io::Write, timeline: &Timeline) -> io::Result<()> {
    writeln!(
        out,
        "timeline    every {} s, by the time each request was sent",
        timeline.bucket_seconds
    )?;
    writeln!(
        out,
        "  {:>8} {:>9} {:>7} {:>10} {:>10} {:>10}",
        "from s", "ok", "failed", "p50", "p99", "max"
    )?;
    for i in 0..timeline.len() {
        writeln!(
            out,
            "  {:>8.2} {:>9} {:>7} {:>10} {:>10} {:>10}",
            timeline.start_seconds(i),
            timeline.ok[i],
            timeline.failed[i],
            ms(timeline.p50_us[i]),
            ms(timeline.p99_us[i]),
            ms(timeline.max_us[i]),
        )?;
    }
    Ok(())
}

fn write_share(out: &mut impl io::Write, header: &str, share: &Share, ok: u64) -> io::Result<()> {
    writeln!(out, "{header:<13} requests  share")?;
    for (value, count) in &share.counts {
        writeln!(out, "  {value:<11} {count:<9} {}", percent(*count, ok))?;
    }
    if share.without_header > 0 {
        writeln!(
            out,
            "  {:<11} {:<9} {}",
            "(none)",
            share.without_header,
            percent(share.without_header, ok)
        )?;
    }
    let ratio = share
        .max_over_min
        .map_or_else(|| "-".to_owned(), |r| format!("{r:.3}"));
    let cv = share
        .cv
        .map_or_else(|| "-".to_owned(), |cv| format!("{cv:.4}"));
    writeln!(
        out,
        "  max {}  min {}  max/min {ratio}  CV {cv}",
        share.max, share.min
    )
}

#[expect(
    clippy::cast_precision_loss,
    reason = "request counts stay far below 2^52"
)]
fn percent(count: u64, of: u64) -> String {
    if of == 0 {
        return "-".to_owned();
    }
    format!("{:.1}%", count as f64 * 100.0 / of as f64)
}

#[expect(
    clippy::cast_precision_loss,
    reason = "microseconds of a latency stay far below 2^52"
)]
fn ms(micros: u64) -> String {
    ms_f(micros as f64)
}

fn ms_f(micros: f64) -> String {
    format!("{:.2} ms", micros / 1000.0)
}
