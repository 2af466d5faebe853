//! The live display while a run goes on: elapsed time against the duration, and the requests
//! per second of the last half second.

use std::{
    sync::Arc,
    time::{Duration, Instant},
};

use cluster_load::Live;
use indicatif::{ProgressBar, ProgressStyle};
use tokio::task::JoinHandle;

/// How often the display is redrawn.
const TICK: Duration = Duration::from_millis(500);

/// A progress bar kept up to date by a task of its own.
#[derive(Debug)]
pub struct Progress {
    bar: ProgressBar,
    updater: JoinHandle<()>,
}

impl Progress {
    /// Shows the progress of a run of `duration` that started at `started`.
    pub fn start(live: Arc<Live>, started: Instant, duration: Duration) -> Self {
        let total = u64::try_from(duration.as_millis()).unwrap_or(u64::MAX);
        let bar = ProgressBar::new(total);
        bar.set_style(
            ProgressStyle::with_template("{elapsed:>4} [{bar:30}] {msg}")
                .unwrap_or_else(|_| ProgressStyle::default_bar())
                .progress_chars("=> "),
        );
        let updater = tokio::spawn(update(bar.clone(), live, started));
        Self { bar, updater }
    }

    /// Removes the display.
    pub fn finish(self) {
        self.updater.abort();
        self.bar.finish_and_clear();
    }
}

#[expect(
    clippy::cast_precision_loss,
    reason = "request counts stay far below 2^52"
)]
async fn update(bar: ProgressBar, live: Arc<Live>, started: Instant) {
    let mut ticks = tokio::time::interval(TICK);
    let (mut last_ok, mut last_at) = (0, Instant::now());
    loop {
        ticks.tick().await;
        let (ok, now) = (live.ok(), Instant::now());
        let rate = (ok - last_ok) as f64 / now.duration_since(last_at).as_secs_f64().max(1e-3);
        (last_ok, last_at) = (ok, now);
        bar.set_position(u64::try_from(started.elapsed().as_millis()).unwrap_or(u64::MAX));
        bar.set_message(format!(
            "{rate:.0} req/s, {ok} ok, {} failed",
            live.failed()
        ));
    }
}
