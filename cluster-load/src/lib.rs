//! `cluster-load`: the project's HTTP/1.1 load generator, as a library (the bench drives it) and
//! as the `cluster-load` binary (`cargo xtask load URL …`).
//!
//! A run has a fixed number of clients, each with at most one request in flight, for a fixed
//! duration; requests go back to back (closed loop) or at a fixed rate (open loop, latency
//! counted from each request's scheduled time, so queueing is not hidden). Clients open a new
//! connection per request or keep connections alive, optionally from many source addresses in
//! 127.0.0.0/8. The [`Report`] has requests per second, latency percentiles (HDR histogram),
//! failed requests by [`ErrorClass`], kept-alive connections the server closed while idle, and
//! how the answers were shared among the `x-worker-slot` and `x-worker-pid` header values, and,
//! when [`Config::timeline`] asks for it, a [`Timeline`]: the requests in time buckets with
//! their failures and latency percentiles.
//!
//! ```no_run
//! use cluster_load::{Config, ConnectionMode, Target};
//!
//! # async fn bench() -> Result<(), cluster_load::LoadError> {
//! let mut config = Config::new(Target::parse("http://127.0.0.1:8080/")?);
//! config.mode = ConnectionMode::KeepAlive;
//! let running = cluster_load::start(config)?;
//! // Act during the run, e.g. once `running.live().ok()` passes a count.
//! let report = running.finish().await?;
//! println!("{} ok/s, p99 {} µs", report.requests_per_second, report.latency.p99_us);
//! # Ok(())
//! # }
//! ```

mod client;
mod config;
mod engine;
mod errors;
mod mix;
mod report;
mod sources;
mod stats;
mod target;
mod timeline;

pub use config::{
    Config, ConfigError, ConnectionMode, DEFAULT_TIMEOUT, MAX_CONCURRENCY, parse_concurrency,
};
pub use engine::{Live, LoadError, Running, run, start};
pub use errors::{ErrorClass, ErrorCounts};
pub use mix::PathMix;
pub use report::{KeptAliveFailure, Report};
pub use sources::{MAX_SPREAD, SourceSpread};
pub use stats::{LatencySummary, Share, latency_histogram};
pub use target::Target;
pub use timeline::{MAX_TIMELINE_BUCKETS, Timeline};
