//! The command line of `cluster-load`, parsed and checked by clap, turned into a [`Config`].

use std::time::Duration;

use clap::Parser;
use cluster_load::{Config, ConfigError, ConnectionMode, PathMix, Target, parse_concurrency};

/// Sends HTTP/1.1 load to a URL for a fixed time and reports requests per second, latency
/// percentiles, failed requests by class, and how the answers were shared among workers (the
/// `x-worker-slot` and `x-worker-pid` headers).
#[derive(Debug, Parser)]
#[command(name = "cluster-load", version)]
pub struct Cli {
    /// What to load: http://HOST[:PORT][/PATH]
    #[arg(value_name = "URL", value_parser = Target::parse)]
    pub target: Target,
    /// Clients, each with at most one request in flight
    #[arg(short, long, value_name = "C", default_value_t = 8, value_parser = parse_concurrency)]
    pub concurrency: usize,
    /// Seconds to send requests for; requests in flight at the end are awaited
    #[arg(short, long, value_name = "S", default_value = "10", value_parser = parse_seconds)]
    pub duration: Duration,
    /// Requests per second, sent at fixed intervals whatever the answers do (open loop); a
    /// request due while every client is busy counts its latency from when it was due
    #[arg(long, value_name = "R", value_parser = parse_rate)]
    pub rate: Option<f64>,
    /// Keep connections open across requests (default: a new connection per request, sent
    /// with `Connection: close`)
    #[arg(short = 'k', long)]
    pub keep_alive: bool,
    /// Bind each connection to one of N source addresses, 127.0.0.1, 127.0.0.2, … in turn, so
    /// that sticky steering sees N clients (loopback IPv4 targets only)
    #[arg(long, value_name = "N")]
    pub spread_sources: Option<u32>,
    /// Seconds one request may take, connecting included, before it counts as timed out
    #[arg(long, value_name = "S", default_value = "10", value_parser = parse_seconds)]
    pub timeout: Duration,
    /// Also report the run in time buckets this many seconds wide, by the time each request was
    /// sent: ok, failed, p50/p99/max latency per bucket (at most 1000 buckets)
    #[arg(long, value_name = "S", value_parser = parse_seconds)]
    pub timeline: Option<Duration>,
    /// The path requested instead of the URL's, e.g. /work?iterations=100000
    #[arg(long, value_name = "PATH", value_parser = PathMix::single)]
    pub path: Option<PathMix>,
    /// Paths with weights, one picked at random per request, e.g.
    /// 95:/work?iterations=100000,5:/work?iterations=50000000
    #[arg(long, value_name = "W:PATH,…", value_parser = PathMix::parse, conflicts_with = "path")]
    pub mix: Option<PathMix>,
    /// The pool's worker count: slots 0 to N-1 that answered nothing count as 0 in the
    /// x-worker-slot share (by default only the slots seen count)
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u64).range(1..=65536))]
    pub workers: Option<u64>,
    /// Print the result as one JSON object instead of the table
    #[arg(long)]
    pub json: bool,
    /// No progress display (there is none either when stdout is not a terminal)
    #[arg(short, long)]
    pub quiet: bool,
    /// Threads that run the clients. One leaves the other cores to the server
    #[arg(long, value_name = "N", default_value_t = 1,
          value_parser = clap::value_parser!(u16).range(1..=256))]
    pub threads: u16,
}

impl Cli {
    /// The run these options describe, checked.
    pub fn config(&self) -> Result<Config, ConfigError> {
        let mut config = Config::new(self.target.clone());
        if let Some(paths) = self.mix.as_ref().or(self.path.as_ref()) {
            config.paths = paths.clone();
        }
        config.concurrency = self.concurrency;
        config.duration = self.duration;
        config.rate = self.rate;
        config.mode = if self.keep_alive {
            ConnectionMode::KeepAlive
        } else {
            ConnectionMode::PerRequest
        };
        config.spread_sources = self.spread_sources;
        config.timeout = self.timeout;
        config.timeline = self.timeline;
        config.validate()?;
        Ok(config)
    }
}

/// A positive number of seconds, decimals allowed (`0.5`), at most a day.
fn parse_seconds(value: &str) -> Result<Duration, String> {
    value
        .parse::<f64>()
        .ok()
        .filter(|s| *s > 0.0 && *s <= 86_400.0)
        .map(Duration::from_secs_f64)
        .ok_or_else(|| {
            "use a positive number of seconds, at most 86400 (e.g. 10 or 0.5)".to_owned()
        })
}

fn parse_rate(value: &str) -> Result<f64, String> {
    value
        .parse::<f64>()
        .ok()
        .filter(|r| r.is_finite() && *r > 0.0)
        .ok_or_else(|| "use a positive number of requests per second (e.g. 500)".to_owned())
}

#[cfg(test)]
mod tests {
    use clap::{CommandFactory as _, error::ErrorKind};

    use super::*;

    fn parse(args: &[&str]) -> Result<Cli, clap::Error> {
        Cli::try_parse_from(std::iter::once("cluster-load").chain(args.iter().copied()))
    }

    #[test]
    fn the_command_line_is_consistent() {
        Cli::command().debug_assert();
    }

    #[test]
    fn options_become_a_config() {
        let cli = parse(&[
            "http://127.0.0.1:18097/",
            "-c",
            "4",
            "-d",
            "0.5",
            "--rate",
            "200",
            "-k",
            "--spread-sources",
            "64",
            "--mix",
            "9:/a,1:/b",
            "--timeline",
            "0.05",
        ])
        .unwrap();
        let config = cli.config().unwrap();
        assert_eq!(config.concurrency, 4);
        assert_eq!(config.duration, Duration::from_millis(500));
        assert_eq!(config.rate, Some(200.0));
        assert_eq!(config.mode, ConnectionMode::KeepAlive);
        assert_eq!(config.spread_sources, Some(64));
        assert_eq!(config.paths, PathMix::parse("9:/a,1:/b").unwrap());
        assert_eq!(config.timeline, Some(Duration::from_millis(50)));

        let plain = parse(&["http://127.0.0.1:18097/work?iterations=5"]).unwrap();
        let config = plain.config().unwrap();
        assert_eq!(config.paths, PathMix::single("/work?iterations=5").unwrap());
        assert_eq!(config.mode, ConnectionMode::PerRequest);
        assert_eq!(config.timeline, None);
    }

    #[test]
    fn bad_input_is_a_usage_error() {
        for args in [
            &["ftp://127.0.0.1/"][..],
            &["127.0.0.1:18097"],
            &["http://127.0.0.1:18097/", "-c", "0"],
            &["http://127.0.0.1:18097/", "-d", "0"],
            &["http://127.0.0.1:18097/", "--rate", "-5"],
            &["http://127.0.0.1:18097/", "--mix", "1/a"],
            &["http://127.0.0.1:18097/", "--path", "a"],
            &["http://127.0.0.1:18097/", "--path", "/a", "--mix", "1:/b"],
            &["http://127.0.0.1:18097/", "--timeline", "0"],
        ] {
            let err = parse(args).unwrap_err();
            assert_eq!(err.exit_code(), 2, "{args:?}");
            assert_ne!(err.kind(), ErrorKind::DisplayHelp, "{args:?}");
        }
        let too_fine = parse(&["http://127.0.0.1:18097/", "--timeline", "0.001"]).unwrap();
        assert!(matches!(
            too_fine.config(),
            Err(ConfigError::TimelineBuckets { .. })
        ));
        let far = parse(&["http://192.0.2.1/", "--spread-sources", "4"]).unwrap();
        assert!(matches!(
            far.config(),
            Err(ConfigError::SpreadNeedsLoopback(_))
        ));
    }
}
