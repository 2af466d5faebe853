//! What a run does (target, paths, concurrency, duration, rate, connection pattern, source
//! addresses, timeout, an optional time series), and the errors that say which part of it is
//! wrong and how to fix it.

use std::{net::SocketAddr, time::Duration};

use serde::{Deserialize, Serialize};

use crate::{
    mix::PathMix,
    sources::SourceSpread,
    target::Target,
    timeline::{MAX_TIMELINE_BUCKETS, bucket_count},
};

/// How long one request may take unless the config says otherwise.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(10);

/// Most concurrent clients a run may have.
pub const MAX_CONCURRENCY: usize = 100_000;

/// Parses a client count given on a command line: 1 to [`MAX_CONCURRENCY`].
///
/// # Errors
///
/// What to give instead, for anything else.
pub fn parse_concurrency(value: &str) -> Result<usize, String> {
    value
        .parse::<usize>()
        .ok()
        .filter(|c| (1..=MAX_CONCURRENCY).contains(c))
        .ok_or_else(|| format!("use a whole number from 1 to {MAX_CONCURRENCY}"))
}

/// How a client uses connections.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum ConnectionMode {
    /// One request per connection, sent with `Connection: close` (like `ab` without `-k`).
    PerRequest,
    /// Requests follow each other on one connection until the server closes it.
    KeepAlive,
}

/// One run's settings. [`Config::new`] gives the defaults; the fields are public so that a
/// caller (the bench) sets what it needs, and [`crate::start`] checks them.
#[derive(Debug, Clone)]
pub struct Config {
    pub target: Target,
    /// The paths requested, one picked at random per request.
    pub paths: PathMix,
    /// Clients, each with at most one request in flight.
    pub concurrency: usize,
    /// How long requests are started for. Requests in flight at the end are awaited.
    pub duration: Duration,
    /// Requests per second, scheduled at fixed intervals (open loop). `None`: each client sends
    /// its next request as soon as the last one ended (closed loop).
    pub rate: Option<f64>,
    pub mode: ConnectionMode,
    /// Bind each connection to one of this many source addresses in 127.0.0.0/8, in turn.
    pub spread_sources: Option<u32>,
    /// How long one request may take, connecting included, before it counts as timed out.
    pub timeout: Duration,
    /// Record a [`crate::Timeline`] with buckets this wide (at most
    /// [`MAX_TIMELINE_BUCKETS`] in the run). `None`: no time series.
    pub timeline: Option<Duration>,
}

impl Config {
    /// The defaults: the target's own path, 8 clients, 10 s, closed loop, a new connection per
    /// request, one source address, a 10 s timeout, no time series.
    #[must_use]
    pub fn new(target: Target) -> Self {
        let paths = PathMix::single_uri(&target.path);
        Self {
            target,
            paths,
            concurrency: 8,
            duration: Duration::from_secs(10),
            rate: None,
            mode: ConnectionMode::PerRequest,
            spread_sources: None,
            timeout: DEFAULT_TIMEOUT,
            timeline: None,
        }
    }

    /// Checks every setting.
    ///
    /// # Errors
    ///
    /// The first setting that is out of range, naming the fix.
    pub fn validate(&self) -> Result<(), ConfigError> {
        if !(1..=MAX_CONCURRENCY).contains(&self.concurrency) {
            return Err(ConfigError::Concurrency(self.concurrency));
        }
        if self.duration.is_zero() {
            return Err(ConfigError::Duration);
        }
        if self.timeout.is_zero() {
            return Err(ConfigError::Timeout);
        }
        if let Some(rate) = self.rate
            && !(rate.is_finite() && rate > 0.0)
        {
            return Err(ConfigError::Rate(rate));
        }
        if let Some(bucket) = self.timeline {
            if bucket.is_zero() {
                return Err(ConfigError::TimelineBucket);
            }
            let buckets = bucket_count(self.duration, bucket);
            if buckets > MAX_TIMELINE_BUCKETS {
                return Err(ConfigError::TimelineBuckets {
                    bucket: bucket.as_secs_f64(),
                    duration: self.duration.as_secs_f64(),
                    buckets,
                });
            }
        }
        self.source_spread()?;
        Ok(())
    }

    /// The checked source spread, if any.
    pub(crate) fn source_spread(&self) -> Result<Option<SourceSpread>, ConfigError> {
        self.spread_sources
            .map(|count| SourceSpread::new(count, self.target.addr))
            .transpose()
    }
}

/// A setting that cannot be used. Each message names the fix.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("{url:?} is not a URL ({reason}): use http://HOST:PORT/PATH")]
    BadUrl { url: String, reason: String },
    #[error("{url:?} has no scheme: write it as http://{url}")]
    NoScheme { url: String },
    #[error("{url:?} uses {scheme}://, which is not supported: use an http:// URL")]
    Scheme { url: String, scheme: String },
    #[error("cannot resolve host {host:?}: {source}; use an IP address or a name that resolves")]
    Resolve {
        host: String,
        source: std::io::Error,
    },
    #[error("{0:?} is not a path: a path starts with / (e.g. /work?iterations=100000)")]
    BadPath(String),
    #[error(
        "bad --mix {spec:?}: {reason}; use WEIGHT:PATH,WEIGHT:PATH with whole-number weights \
         (e.g. 95:/work?iterations=100000,5:/work?iterations=50000000)"
    )]
    BadMix { spec: String, reason: String },
    #[error("concurrency {0} is out of range: use 1 to {MAX_CONCURRENCY}")]
    Concurrency(usize),
    #[error("the duration is zero: use a positive number of seconds")]
    Duration,
    #[error("the timeout is zero: use a positive number of seconds")]
    Timeout,
    #[error("the timeline bucket is zero: use a positive number of seconds (e.g. 0.25)")]
    TimelineBucket,
    #[error(
        "a timeline of {bucket} s buckets over {duration} s has {buckets} buckets, more than \
         {MAX_TIMELINE_BUCKETS}: use buckets of at least {min} s",
        min = duration / MAX_TIMELINE_BUCKETS as f64
    )]
    TimelineBuckets {
        bucket: f64,
        duration: f64,
        buckets: u64,
    },
    #[error("rate {0} is not a positive number of requests per second")]
    Rate(f64),
    #[error(
        "--spread-sources {0} is out of range: use 1 to {max}",
        max = crate::sources::MAX_SPREAD
    )]
    SpreadCount(u32),
    #[error(
        "--spread-sources binds clients to 127.0.0.0/8, which only reaches a loopback IPv4 \
         target, not {0}: target 127.0.0.1 (or another 127.x.y.z) or drop --spread-sources"
    )]
    SpreadNeedsLoopback(SocketAddr),
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config() -> Config {
        Config::new(Target::from_addr("127.0.0.1:18099".parse().unwrap()))
    }

    #[test]
    fn defaults_are_valid() {
        config().validate().unwrap();
    }

    #[test]
    fn out_of_range_settings_are_refused() {
        let mut zero = config();
        zero.concurrency = 0;
        assert!(matches!(zero.validate(), Err(ConfigError::Concurrency(0))));
        let mut no_time = config();
        no_time.duration = Duration::ZERO;
        assert!(matches!(no_time.validate(), Err(ConfigError::Duration)));
        let mut no_timeout = config();
        no_timeout.timeout = Duration::ZERO;
        assert!(matches!(no_timeout.validate(), Err(ConfigError::Timeout)));
        let mut flat_timeline = config();
        flat_timeline.timeline = Some(Duration::ZERO);
        assert!(matches!(
            flat_timeline.validate(),
            Err(ConfigError::TimelineBucket)
        ));
        let mut fine_timeline = config();
        fine_timeline.timeline = Some(Duration::from_millis(10));
        fine_timeline.validate().unwrap();
        fine_timeline.timeline = Some(Duration::from_millis(9));
        let err = fine_timeline.validate().unwrap_err();
        assert!(
            matches!(err, ConfigError::TimelineBuckets { buckets: 1112, .. }),
            "{err}"
        );
        assert!(err.to_string().contains("at least 0.01 s"), "{err}");
        for rate in [0.0, -1.0, f64::NAN, f64::INFINITY] {
            let mut bad = config();
            bad.rate = Some(rate);
            assert!(
                matches!(bad.validate(), Err(ConfigError::Rate(_))),
                "{rate}"
            );
        }
    }

    #[test]
    fn spread_sources_needs_a_loopback_ipv4_target() {
        let mut spread = config();
        spread.spread_sources = Some(16);
        spread.validate().unwrap();
        for addr in ["10.0.0.1:80", "[::1]:80"] {
            let mut far = Config::new(Target::from_addr(addr.parse().unwrap()));
            far.spread_sources = Some(16);
            let err = far.validate().unwrap_err();
            assert!(
                matches!(err, ConfigError::SpreadNeedsLoopback(_)),
                "{addr}: {err}"
            );
        }
        spread.spread_sources = Some(0);
        assert!(matches!(
            spread.validate(),
            Err(ConfigError::SpreadCount(0))
        ));
    }
}
