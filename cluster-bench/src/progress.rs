//! The live display while the bench runs: runs done of the total, and the current run's mode,
//! pattern, handler and requests per second.

use std::{
    sync::Arc,
    time::{Duration, Instant},
};

use cluster_load::Live;
use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};

use crate::results::Run;

/// How often the live rate is redrawn.
const TICK: Duration = Duration::from_millis(500);

/// The bench's progress bar (hidden when stderr is not a terminal).
#[derive(Debug, Clone)]
pub struct Progress {
    bar: ProgressBar,
}

impl Progress {
    #[must_use]
    pub fn new(runs: usize, visible: bool) -> Self {
        let bar = ProgressBar::with_draw_target(
            Some(u64::try_from(runs).unwrap_or(u64::MAX)),
            if visible {
                ProgressDrawTarget::stderr()
            } else {
                ProgressDrawTarget::hidden()
            },
        );
        bar.set_style(
            ProgressStyle::with_template("{elapsed:>4} [{bar:20}] {pos}/{len} {msg}")
                .unwrap_or_else(|_| ProgressStyle::default_bar())
                .progress_chars("=> "),
        );
        Self { bar }
    }

    /// Says what runs now.
    pub fn start_run(&self, what: &str) {
        self.bar.set_message(format!("{what}: starting the pool"));
    }

    /// Updates the live rate of the run `what` until the task is dropped or aborted.
    pub async fn follow(self, what: String, live: Arc<Live>) {
        let mut ticks = tokio::time::interval(TICK);
        let (mut last_ok, mut last_at) = (live.ok(), Instant::now());
        loop {
            ticks.tick().await;
            let (ok, now) = (live.ok(), Instant::now());
            #[expect(
                clippy::cast_precision_loss,
                reason = "request counts stay far below 2^52"
            )]
            let rate = (ok - last_ok) as f64 / now.duration_since(last_at).as_secs_f64().max(1e-3);
            (last_ok, last_at) = (ok, now);
            self.bar
                .set_message(format!("{what}: {rate:.0} req/s, {} failed", live.failed()));
        }
    }

    /// Counts one run done.
    pub fn run_done(&self) {
        self.bar.inc(1);
    }

    /// Prints a line above the bar.
    pub fn note(&self, line: &str) {
        self.bar.suspend(|| eprintln!("{line}"));
    }

    /// Prints the figures of the run `what` above the bar.
    pub fn note_run(&self, what: &str, run: &Run) {
        #[expect(clippy::cast_precision_loss, reason = "microseconds far below 2^52")]
        let p99_ms = run.latency.p99_us as f64 / 1000.0;
        self.note(&format!(
            "bench: {what}: {:.0} req/s, p99 {p99_ms:.2} ms, {} failed",
            run.requests_per_second, run.failed
        ));
    }

    pub fn finish(&self) {
        self.bar.finish_and_clear();
    }
}
