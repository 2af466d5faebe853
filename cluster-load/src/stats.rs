//! The figures a run reports: latency percentiles from the HDR histogram, and how evenly the
//! answers were shared among workers (max, min, max/min, coefficient of variation).

use std::collections::BTreeMap;

use hdrhistogram::Histogram;
use serde::{Deserialize, Serialize};

/// Largest latency recorded exactly enough: one hour, in microseconds. Longer ones are recorded
/// as this.
const HIGHEST_MICROS: u64 = 3_600_000_000;
/// Significant decimal digits kept: a recorded value is within 0.1% of the real one.
const SIGNIFICANT_DIGITS: u8 = 3;

/// A latency histogram in microseconds, 1 µs to one hour at 3 significant digits.
#[must_use]
pub fn latency_histogram() -> Histogram<u64> {
    latency_histogram_with(SIGNIFICANT_DIGITS)
}

/// A latency histogram in microseconds, 1 µs to one hour, at `digits` significant digits.
pub(crate) fn latency_histogram_with(digits: u8) -> Histogram<u64> {
    Histogram::new_with_bounds(1, HIGHEST_MICROS, digits)
        .expect("constant histogram bounds are valid")
}

/// Records `latency` in `histogram` in whole microseconds (at least 1; past an hour as an hour).
pub(crate) fn record_latency(histogram: &mut Histogram<u64>, latency: std::time::Duration) {
    let micros = u64::try_from(latency.as_micros()).unwrap_or(u64::MAX);
    histogram.saturating_record(micros.max(1));
}

/// Latency percentiles of the successful requests, in microseconds.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct LatencySummary {
    /// Latencies recorded.
    pub count: u64,
    pub min_us: u64,
    pub mean_us: f64,
    pub p50_us: u64,
    pub p90_us: u64,
    pub p99_us: u64,
    pub p999_us: u64,
    pub max_us: u64,
}

impl LatencySummary {
    /// The summary of a histogram (all zero for an empty one).
    #[must_use]
    pub fn of(histogram: &Histogram<u64>) -> Self {
        if histogram.is_empty() {
            return Self::default();
        }
        Self {
            count: histogram.len(),
            min_us: histogram.min(),
            mean_us: histogram.mean(),
            p50_us: histogram.value_at_quantile(0.5),
            p90_us: histogram.value_at_quantile(0.9),
            p99_us: histogram.value_at_quantile(0.99),
            p999_us: histogram.value_at_quantile(0.999),
            max_us: histogram.max(),
        }
    }
}

/// How the answers were shared among the values of one header (`x-worker-slot`,
/// `x-worker-pid`).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Share {
    /// Answers per header value. Only values seen are here, unless [`Share::with_values`]
    /// added the ones expected.
    pub counts: BTreeMap<u64, u64>,
    /// Successful answers without the header (or with a value that is not a number).
    pub without_header: u64,
    /// The largest count (0 if none).
    pub max: u64,
    /// The smallest count (0 if none).
    pub min: u64,
    /// `max / min`; `None` when there are no counts or `min` is 0.
    pub max_over_min: Option<f64>,
    /// Coefficient of variation of the counts: their (population) standard deviation over their
    /// mean; 0 is a perfectly even share. `None` when there are no counts.
    pub cv: Option<f64>,
}

impl Share {
    /// The share statistics of `counts`.
    #[must_use]
    #[expect(
        clippy::cast_precision_loss,
        reason = "counts of requests are far below 2^52, where f64 is exact"
    )]
    pub fn of(counts: BTreeMap<u64, u64>, without_header: u64) -> Self {
        let max = counts.values().copied().max().unwrap_or(0);
        let min = counts.values().copied().min().unwrap_or(0);
        let (max_over_min, cv) = if counts.is_empty() {
            (None, None)
        } else {
            let n = counts.len() as f64;
            let mean = counts.values().map(|c| *c as f64).sum::<f64>() / n;
            let variance = counts
                .values()
                .map(|c| (*c as f64 - mean).powi(2))
                .sum::<f64>()
                / n;
            let cv = if mean > 0.0 {
                variance.sqrt() / mean
            } else {
                0.0
            };
            ((min > 0).then(|| max as f64 / min as f64), Some(cv))
        };
        Self {
            counts,
            without_header,
            max,
            min,
            max_over_min,
            cv,
        }
    }

    /// The share with every value of `expected` that got no answer counted as 0, so that
    /// `min`, `max_over_min` and `cv` show a worker that was never reached.
    #[must_use]
    pub fn with_values(self, expected: impl IntoIterator<Item = u64>) -> Self {
        let mut counts = self.counts;
        for value in expected {
            counts.entry(value).or_insert(0);
        }
        Self::of(counts, self.without_header)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Within the histogram's precision (0.1%) of `expected`.
    fn near(value: u64, expected: u64) -> bool {
        value.abs_diff(expected) * 1000 <= expected
    }

    #[test]
    fn percentiles_of_a_known_spread() {
        let mut histogram = latency_histogram();
        // 1 ms, 2 ms, … 1000 ms.
        for ms in 1..=1000 {
            histogram.record(ms * 1000).unwrap();
        }
        let summary = LatencySummary::of(&histogram);
        assert_eq!(summary.count, 1000);
        assert!(near(summary.min_us, 1_000), "{summary:?}");
        assert!(near(summary.p50_us, 500_000), "{summary:?}");
        assert!(near(summary.p90_us, 900_000), "{summary:?}");
        assert!(near(summary.p99_us, 990_000), "{summary:?}");
        assert!(near(summary.p999_us, 999_000), "{summary:?}");
        assert!(near(summary.max_us, 1_000_000), "{summary:?}");
        assert!((summary.mean_us - 500_500.0).abs() < 500.0, "{summary:?}");
    }

    #[test]
    fn a_tail_shows_in_the_high_percentiles_only() {
        let mut histogram = latency_histogram();
        histogram.record_n(100, 990).unwrap();
        histogram.record_n(50_000, 10).unwrap();
        let summary = LatencySummary::of(&histogram);
        assert!(near(summary.p50_us, 100), "{summary:?}");
        assert!(near(summary.p90_us, 100), "{summary:?}");
        assert!(near(summary.p99_us, 100), "{summary:?}");
        assert!(near(summary.p999_us, 50_000), "{summary:?}");
    }

    #[test]
    fn empty_histogram_gives_zeros() {
        assert_eq!(
            LatencySummary::of(&latency_histogram()),
            LatencySummary::default()
        );
    }

    #[test]
    fn share_of_uneven_counts() {
        let share = Share::of(BTreeMap::from([(0, 300), (1, 100)]), 2);
        assert_eq!((share.max, share.min, share.without_header), (300, 100, 2));
        assert_eq!(share.max_over_min, Some(3.0));
        // Mean 200, deviations ±100: standard deviation 100, CV 0.5.
        assert!((share.cv.unwrap() - 0.5).abs() < 1e-12, "{share:?}");
    }

    #[test]
    fn share_of_even_counts_and_of_an_idle_worker() {
        let even = Share::of(BTreeMap::from([(0, 50), (1, 50), (2, 50)]), 0);
        assert_eq!(even.max_over_min, Some(1.0));
        assert_eq!(even.cv, Some(0.0));

        let idle = Share::of(BTreeMap::from([(0, 10), (1, 0)]), 0);
        assert_eq!((idle.max, idle.min), (10, 0));
        assert_eq!(idle.max_over_min, None);
        assert!((idle.cv.unwrap() - 1.0).abs() < 1e-12, "{idle:?}");

        let reached_one = Share::of(BTreeMap::from([(1, 10)]), 0);
        assert_eq!(reached_one.cv, Some(0.0));
        let expected_two = reached_one.with_values(0..2);
        assert_eq!(expected_two.counts, BTreeMap::from([(0, 0), (1, 10)]));
        assert_eq!((expected_two.min, expected_two.max_over_min), (0, None));
        assert!(
            (expected_two.cv.unwrap() - 1.0).abs() < 1e-12,
            "{expected_two:?}"
        );

        let none = Share::of(BTreeMap::new(), 5);
        assert_eq!(
            (none.max, none.min, none.max_over_min, none.cv),
            (0, 0, None, None)
        );
    }
}
