//! The opt-in time series of a run ([`Config::timeline`](crate::Config::timeline)): its requests
//! in fixed-width buckets by the time each was sent, each bucket with its successful and failed
//! requests and the latency of the successful ones (an HDR histogram per bucket), so that what
//! happened to the server during the run shows when it happened.

use std::{
    sync::{Mutex, PoisonError},
    time::Duration,
};

use hdrhistogram::Histogram;
use serde::{Deserialize, Serialize};

use crate::stats;

/// Most buckets a run may have: each holds a histogram of about 26 KiB.
pub const MAX_TIMELINE_BUCKETS: u64 = 1000;
/// Significant digits of a bucket's histogram: within 1%, enough to draw, at about a seventh of
/// the size of the whole run's 3-digit histogram.
const SIGNIFICANT_DIGITS: u8 = 2;

/// A run's requests bucketed by the time each was sent (in open loop, the time it was due,
/// whether or not a client was free then): bucket `i` holds those sent from `i × bucket_seconds` to
/// `(i + 1) × bucket_seconds` after the start. Every list has one value per bucket, so the
/// JSON stays small; latencies are those of the bucket's successful requests, 0 where it had
/// none.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Timeline {
    pub bucket_seconds: f64,
    /// Requests answered whole with a 2xx status.
    pub ok: Vec<u64>,
    /// Requests that failed, all classes.
    pub failed: Vec<u64>,
    pub p50_us: Vec<u64>,
    pub p99_us: Vec<u64>,
    pub max_us: Vec<u64>,
}

impl Timeline {
    /// Buckets in the series.
    #[must_use]
    pub fn len(&self) -> usize {
        self.ok.len()
    }

    /// Whether the series has no bucket.
    #[must_use]
    pub fn is_empty(&self) -> bool {
        self.ok.is_empty()
    }

    /// Seconds from the start of the run to the start of bucket `index`.
    #[must_use]
    #[expect(clippy::cast_precision_loss, reason = "bucket indexes stay below 1000")]
    pub fn start_seconds(&self, index: usize) -> f64 {
        index as f64 * self.bucket_seconds
    }
}

/// Buckets a run of `duration` has with buckets of `bucket` (the last one may be shorter).
pub(crate) fn bucket_count(duration: Duration, bucket: Duration) -> u64 {
    let (duration, bucket) = (duration.as_nanos(), bucket.as_nanos().max(1));
    u64::try_from(duration.div_ceil(bucket).max(1)).unwrap_or(u64::MAX)
}

/// Records the timeline while the run goes on. Clients share it: one bucket histogram per
/// client would cost clients × buckets histograms. The lock is held for one record only.
#[derive(Debug)]
pub(crate) struct Recorder {
    bucket: Duration,
    buckets: Mutex<Vec<Bucket>>,
}

#[derive(Debug)]
struct Bucket {
    latency: Histogram<u64>,
    failed: u64,
}

impl Recorder {
    /// A recorder for a run of `duration` in buckets of `bucket`; the caller has checked that
    /// they are at most [`MAX_TIMELINE_BUCKETS`].
    pub(crate) fn new(bucket: Duration, duration: Duration) -> Self {
        let count = usize::try_from(bucket_count(duration, bucket)).unwrap_or(usize::MAX);
        let buckets = (0..count)
            .map(|_| Bucket {
                latency: stats::latency_histogram_with(SIGNIFICANT_DIGITS),
                failed: 0,
            })
            .collect();
        Self {
            bucket,
            buckets: Mutex::new(buckets),
        }
    }

    /// Counts a request sent `sent` after the start: its latency if it succeeded, `None` if it
    /// failed. A request sent after the last bucket counts in the last one.
    pub(crate) fn record(&self, sent: Duration, latency: Option<Duration>) {
        let index = sent.as_nanos() / self.bucket.as_nanos().max(1);
        let mut buckets = self.buckets.lock().unwrap_or_else(PoisonError::into_inner);
        let last = buckets.len().saturating_sub(1);
        let Some(bucket) = buckets.get_mut(usize::try_from(index).unwrap_or(last).min(last)) else {
            return;
        };
        match latency {
            Some(latency) => stats::record_latency(&mut bucket.latency, latency),
            None => bucket.failed += 1,
        }
    }

    /// The series so far.
    pub(crate) fn timeline(&self) -> Timeline {
        let buckets = self.buckets.lock().unwrap_or_else(PoisonError::into_inner);
        let quantile = |h: &Histogram<u64>, q: f64| {
            if h.is_empty() {
                0
            } else {
                h.value_at_quantile(q)
            }
        };
        Timeline {
            bucket_seconds: self.bucket.as_secs_f64(),
            ok: buckets.iter().map(|b| b.latency.len()).collect(),
            failed: buckets.iter().map(|b| b.failed).collect(),
            p50_us: buckets.iter().map(|b| quantile(&b.latency, 0.5)).collect(),
            p99_us: buckets.iter().map(|b| quantile(&b.latency, 0.99)).collect(),
            max_us: buckets.iter().map(|b| b.latency.max()).collect(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ms(ms: u64) -> Duration {
        Duration::from_millis(ms)
    }

    /// Within the histogram's precision (1%) of `expected`.
    fn near(value: u64, expected: u64) -> bool {
        value.abs_diff(expected) * 100 <= expected
    }

    #[test]
    fn requests_count_in_the_bucket_of_their_sending() {
        let recorder = Recorder::new(ms(100), ms(250));
        // Bucket 0: 1 ms to 100 ms, 100 of them; bucket 1: two failures; bucket 2 (the
        // short last one): one success, and one sent after the end, counted there too.
        for n in 1..=100 {
            recorder.record(ms(n - 1), Some(ms(n)));
        }
        recorder.record(ms(100), None);
        recorder.record(ms(199), None);
        recorder.record(ms(200), Some(ms(7)));
        recorder.record(ms(400), Some(ms(9)));
        let timeline = recorder.timeline();
        assert_eq!(timeline.len(), 3);
        assert!((timeline.bucket_seconds - 0.1).abs() < 1e-12);
        assert!((timeline.start_seconds(2) - 0.2).abs() < 1e-12);
        assert_eq!(timeline.ok, [100, 0, 2]);
        assert_eq!(timeline.failed, [0, 2, 0]);
        assert!(near(timeline.p50_us[0], 50_000), "{timeline:?}");
        assert!(near(timeline.p99_us[0], 99_000), "{timeline:?}");
        assert!(near(timeline.max_us[0], 100_000), "{timeline:?}");
        // No success in bucket 1: its latencies are 0.
        assert_eq!(
            (timeline.p50_us[1], timeline.p99_us[1], timeline.max_us[1]),
            (0, 0, 0)
        );
        assert!(near(timeline.max_us[2], 9_000), "{timeline:?}");
    }

    #[test]
    fn the_bucket_count_covers_the_whole_run() {
        assert_eq!(bucket_count(ms(1000), ms(250)), 4);
        assert_eq!(bucket_count(ms(1001), ms(250)), 5);
        assert_eq!(bucket_count(ms(100), ms(250)), 1);
        assert_eq!(bucket_count(Duration::from_secs(10), ms(10)), 1000);
    }

    #[test]
    fn the_series_serializes_as_one_list_per_figure() {
        let recorder = Recorder::new(ms(500), Duration::from_secs(1));
        recorder.record(ms(0), Some(ms(2)));
        let json = serde_json::to_value(recorder.timeline()).unwrap();
        assert_eq!(json["ok"], serde_json::json!([1, 0]));
        assert_eq!(json["failed"], serde_json::json!([0, 0]));
        assert_eq!(json["bucket_seconds"], 0.5);
        for field in ["p50_us", "p99_us", "max_us"] {
            assert_eq!(json[field].as_array().unwrap().len(), 2, "{field}: {json}");
        }
    }
}
