//! The latency-over-time traces of the lifecycle scenarios (plotters): one SVG per scenario
//! that ran, one panel per run, with the p50, p99 and max latency of every time bucket (log
//! scale), its failed requests (bars, right axis), and what was done to the pool marked when it
//! was done.

use std::{iter, path::Path};

use anyhow::{Context as _, Result};
use cluster_load::Timeline;
use plotters::prelude::*;

use crate::{
    lifecycle::{Lifecycle, LifecycleRun, RELOADS, SCALE_BY},
    plots::{self, Area, legend, plot_error},
    results::Bench,
};

/// The latency lines, with their colours.
const LINES: [(&str, RGBColor); 3] = [
    ("p50", RGBColor(31, 119, 180)),
    ("p99", RGBColor(255, 127, 14)),
    ("max", RGBColor(150, 150, 150)),
];
const FAILED: RGBColor = RGBColor(214, 39, 40);
const EVENT: RGBColor = RGBColor(80, 80, 80);

/// The trace of every scenario that ran in `bench`: its file name and title.
#[must_use]
pub fn files(bench: &Bench) -> Vec<(String, String)> {
    ran(bench).into_iter().map(file).collect()
}

/// Writes the trace of every scenario that ran into `dir`.
pub fn write(bench: &Bench, dir: &Path) -> Result<()> {
    for scenario in ran(bench) {
        let (name, title) = file(scenario);
        let runs: Vec<&LifecycleRun> = bench
            .lifecycle
            .iter()
            .filter(|r| r.scenario == scenario)
            .collect();
        let path = dir.join(name);
        draw(&path, &title, &runs).with_context(|| format!("drawing {}", path.display()))?;
    }
    Ok(())
}

fn ran(bench: &Bench) -> Vec<Lifecycle> {
    Lifecycle::ALL
        .into_iter()
        .filter(|s| bench.lifecycle.iter().any(|r| r.scenario == *s))
        .collect()
}

fn file(scenario: Lifecycle) -> (String, String) {
    let what = match scenario {
        Lifecycle::Reload => format!("{RELOADS} rolling reloads"),
        Lifecycle::Kill => "a worker SIGKILLed every second".to_owned(),
        Lifecycle::Stuck => "a stuck worker (SIGSTOP)".to_owned(),
        Lifecycle::StuckHealthOff => "a stuck worker (SIGSTOP), health check off".to_owned(),
        Lifecycle::Scale => format!("scaled up by {SCALE_BY} and back"),
    };
    (
        format!("trace-{}.svg", scenario.name()),
        format!("Latency and failures over time: {what}"),
    )
}

fn draw(path: &Path, title: &str, runs: &[&LifecycleRun]) -> Result<()> {
    plots::panels(path, title, runs.len(), |area, i| panel(area, runs[i]))
}

/// One run: latency lines on a log scale, failed bars on the right axis, events as bands (what
/// lasted) and lines (where it began) with their names.
#[expect(
    clippy::cast_precision_loss,
    reason = "microseconds and counts far below 2^52"
)]
fn panel(area: &Area<'_>, run: &LifecycleRun) -> Result<()> {
    let timeline = &run.timeline;
    let end = run
        .events
        .iter()
        .map(|e| e.until_seconds.unwrap_or(e.at_seconds))
        .fold(timeline.start_seconds(timeline.len()), f64::max)
        .max(1e-3);
    let latencies = || {
        [&timeline.p50_us, &timeline.p99_us, &timeline.max_us]
            .into_iter()
            .flatten()
            .filter(|us| **us > 0)
            .map(|us| *us as f64 / 1000.0)
    };
    let (low, high) = match (latencies().reduce(f64::min), latencies().reduce(f64::max)) {
        (Some(low), Some(high)) => (low / 2.0, high * 2.0),
        _ => (0.1, 10.0),
    };
    // Whole numbers of failures on the right axis, at least 0 to 5.
    let most_failed = (timeline.failed.iter().copied().max().unwrap_or(0) as f64 * 1.2)
        .ceil()
        .max(5.0);
    let caption = format!(
        "{}, {}: {} failed of {}",
        run.pattern, run.mode, run.failed, run.requests
    );
    let mut chart = ChartBuilder::on(area)
        .caption(caption, ("sans-serif", 15))
        .margin(8)
        .x_label_area_size(32)
        .y_label_area_size(60)
        .right_y_label_area_size(50)
        .build_cartesian_2d(0.0..end, (low..high).log_scale())
        .map_err(plot_error)?
        .set_secondary_coord(0.0..end, 0.0..most_failed);
    chart
        .configure_mesh()
        .x_desc("seconds since the load started")
        .y_desc("latency ms")
        .y_labels(4)
        .max_light_lines(1)
        .y_label_formatter(&|ms| short_ms(*ms))
        .draw()
        .map_err(plot_error)?;
    chart
        .configure_secondary_axes()
        .y_desc("failed")
        .y_labels(6)
        .y_label_formatter(&|n| format!("{n:.0}"))
        .draw()
        .map_err(plot_error)?;
    for event in &run.events {
        let at = event.at_seconds;
        if let Some(until) = event.until_seconds {
            chart
                .draw_series(iter::once(Rectangle::new(
                    [(at, low), (until, high)],
                    EVENT.mix(0.1).filled(),
                )))
                .map_err(plot_error)?;
        }
        chart
            .draw_series(iter::once(PathElement::new(
                vec![(at, low), (at, high)],
                EVENT.stroke_width(1),
            )))
            .map_err(plot_error)?;
        chart
            .draw_series(iter::once(Text::new(
                event.what.clone(),
                (at, high),
                ("sans-serif", 11).into_font().color(&EVENT),
            )))
            .map_err(plot_error)?;
    }
    chart
        .draw_secondary_series(
            (0..timeline.len())
                .filter(|i| timeline.failed[*i] > 0)
                .map(|i| {
                    Rectangle::new(
                        [
                            (timeline.start_seconds(i), 0.0),
                            (timeline.start_seconds(i + 1), timeline.failed[i] as f64),
                        ],
                        FAILED.mix(0.6).filled(),
                    )
                }),
        )
        .map_err(plot_error)?;
    // The bars are on the right axis, whose series have no legend: an empty series on the
    // left one names them.
    chart
        .draw_series(iter::empty::<PathElement<(f64, f64)>>())
        .map_err(plot_error)?
        .label("failed (right axis)")
        .legend(|(x, y)| Rectangle::new([(x, y - 4), (x + 16, y + 4)], FAILED.mix(0.6).filled()));
    for ((label, colour), values) in
        LINES
            .iter()
            .zip([&timeline.p50_us, &timeline.p99_us, &timeline.max_us])
    {
        for (n, segment) in segments(timeline, values).into_iter().enumerate() {
            // A bucket alone between gaps makes no line: a dot shows it.
            if let [point] = segment.as_slice() {
                chart
                    .draw_series(iter::once(Circle::new(*point, 2, colour.filled())))
                    .map_err(plot_error)?;
            }
            let series = chart
                .draw_series(LineSeries::new(segment, colour.stroke_width(2)))
                .map_err(plot_error)?;
            if n == 0 {
                series
                    .label(*label)
                    .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 16, y)], *colour));
            }
        }
    }
    legend(&mut chart)
}

/// The points of `values` (µs, one per bucket) at the buckets' middles in milliseconds, split
/// where a bucket had no successful request, so a line does not bridge the gap.
#[expect(clippy::cast_precision_loss, reason = "microseconds far below 2^52")]
fn segments(timeline: &Timeline, values: &[u64]) -> Vec<Vec<(f64, f64)>> {
    let middle = timeline.bucket_seconds / 2.0;
    let mut segments = vec![Vec::new()];
    for (i, us) in values.iter().enumerate() {
        if *us == 0 {
            segments.push(Vec::new());
        } else if let Some(segment) = segments.last_mut() {
            segment.push((timeline.start_seconds(i) + middle, *us as f64 / 1000.0));
        }
    }
    segments.retain(|s| !s.is_empty());
    segments
}

/// A latency axis label: `0.25`, `4`, `1200`.
fn short_ms(ms: f64) -> String {
    if ms >= 10.0 {
        format!("{ms:.0}")
    } else if ms >= 1.0 {
        format!("{ms:.1}")
    } else {
        format!("{ms:.2}")
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::lifecycle_report::tests::with_lifecycle;

    #[test]
    fn a_gap_splits_a_line() {
        let timeline = Timeline {
            bucket_seconds: 0.5,
            p99_us: vec![1000, 0, 2000, 3000],
            ..Timeline::default()
        };
        assert_eq!(
            segments(&timeline, &timeline.p99_us),
            [vec![(0.25, 1.0)], vec![(1.25, 2.0), (1.75, 3.0)]]
        );
    }

    #[test]
    fn writes_a_trace_per_scenario_that_ran() {
        let bench = with_lifecycle();
        let dir = std::env::temp_dir().join(format!("cluster-bench-traces-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        write(&bench, &dir).unwrap();
        let files = files(&bench);
        let names: Vec<&str> = files.iter().map(|(f, _)| f.as_str()).collect();
        assert_eq!(
            names,
            [
                "trace-kill.svg",
                "trace-stuck.svg",
                "trace-stuck-health-off.svg",
                "trace-scale.svg"
            ]
        );
        for (file, title) in &files {
            let svg = std::fs::read_to_string(dir.join(file)).unwrap();
            assert!(svg.starts_with("<svg"), "{file}: {svg:.80}");
            assert!(svg.trim_end().ends_with("</svg>"), "{file}");
            assert!(svg.contains(title.as_str()), "{file}");
            assert!(
                ["SIGKILL", "SIGSTOP", "scale to 4"]
                    .iter()
                    .any(|what| svg.contains(what)),
                "{file}"
            );
        }
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
