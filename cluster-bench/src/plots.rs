//! The SVG plots (plotters): requests per second, latency percentiles and the per-worker share
//! of every mode, one panel per handler and pattern.

use std::path::Path;

use anyhow::{Context as _, Result, anyhow};
use plotters::{
    coord::{
        ranged1d::{SegmentValue, SegmentedCoord},
        types::{RangedCoordf64, RangedCoordusize},
    },
    prelude::*,
};

use crate::{
    report::PLOTS,
    results::{Bench, CaseResult, Summary},
    stats::Spread,
};

/// Width of a plot, and height of one panel.
const WIDTH: u32 = 900;
const PANEL_HEIGHT: u32 = 260;
/// The percentiles drawn, with their colours.
const PERCENTILES: [(&str, RGBColor); 4] = [
    ("p50", RGBColor(31, 119, 180)),
    ("p90", RGBColor(255, 127, 14)),
    ("p99", RGBColor(44, 160, 44)),
    ("p99.9", RGBColor(214, 39, 40)),
];

/// Writes every plot of `PLOTS` into `dir`.
pub fn write(bench: &Bench, dir: &Path) -> Result<()> {
    let groups = bench.groups();
    for (file, title) in PLOTS {
        let path = dir.join(file);
        draw(&path, title, &groups, file).with_context(|| format!("drawing {}", path.display()))?;
    }
    Ok(())
}

fn draw(path: &Path, title: &str, groups: &[(String, Vec<&CaseResult>)], kind: &str) -> Result<()> {
    panels(path, title, groups.len(), |area, i| {
        let (name, cases) = &groups[i];
        let labels = mode_labels(cases);
        let values = |value: fn(&Summary) -> Option<Spread>| -> Vec<Option<Spread>> {
            cases.iter().map(|c| value(&c.summary)).collect()
        };
        match kind {
            "throughput.svg" => bars(
                area,
                name,
                &labels,
                &values(|s| Some(s.requests_per_second)),
                "req/s",
            ),
            "share.svg" => bars(
                area,
                name,
                &labels,
                &values(|s| s.share_max_over_min),
                "max/min",
            ),
            _ => percentiles(area, name, cases),
        }
    })
}

/// Writes an SVG at `path` titled `title` with `count` panels one above the other, each drawn by
/// `draw_panel` (given its area and its index).
pub(crate) fn panels(
    path: &Path,
    title: &str,
    count: usize,
    mut draw_panel: impl FnMut(&Area<'_>, usize) -> Result<()>,
) -> Result<()> {
    let height = u32::try_from(count.max(1))?;
    let root = SVGBackend::new(path, (WIDTH, 40 + PANEL_HEIGHT * height)).into_drawing_area();
    root.fill(&WHITE).map_err(plot_error)?;
    let root = root.titled(title, ("sans-serif", 22)).map_err(plot_error)?;
    for (i, area) in root
        .split_evenly((count.max(1), 1))
        .iter()
        .enumerate()
        .take(count)
    {
        draw_panel(area, i)?;
    }
    root.present().map_err(plot_error)
}

pub(crate) type Area<'a> = DrawingArea<SVGBackend<'a>, plotters::coord::Shift>;

fn mode_labels(cases: &[&CaseResult]) -> Vec<String> {
    cases
        .iter()
        .map(|c| c.case.mode.name().to_owned())
        .collect()
}

/// One bar per label at its median, with a min–max whisker.
pub(crate) fn bars(
    area: &Area<'_>,
    name: &str,
    labels: &[String],
    values: &[Option<Spread>],
    unit: &str,
) -> Result<()> {
    let top = values.iter().flatten().map(|s| s.max).fold(0.0, f64::max);
    let mut chart = panel(area, name, labels, top, unit)?;
    let bar = RGBColor(31, 119, 180);
    chart
        .draw_series(values.iter().enumerate().filter_map(|(i, v)| {
            let v = (*v)?;
            let mut rect = Rectangle::new(
                [
                    (SegmentValue::Exact(i), 0.0),
                    (SegmentValue::Exact(i + 1), v.median),
                ],
                bar.mix(0.7).filled(),
            );
            rect.set_margin(0, 0, 20, 20);
            Some(rect)
        }))
        .map_err(plot_error)?;
    chart
        .draw_series(values.iter().enumerate().filter_map(|(i, v)| {
            let v = (*v)?;
            Some(PathElement::new(
                vec![
                    (SegmentValue::CenterOf(i), v.min),
                    (SegmentValue::CenterOf(i), v.max),
                ],
                BLACK.stroke_width(2),
            ))
        }))
        .map_err(plot_error)?;
    Ok(())
}

/// One line per percentile across the modes, medians in milliseconds.
fn percentiles(area: &Area<'_>, name: &str, cases: &[&CaseResult]) -> Result<()> {
    let series: Vec<Vec<f64>> = PERCENTILES
        .iter()
        .map(|(p, _)| {
            cases
                .iter()
                .map(|c| {
                    let s = &c.summary;
                    match *p {
                        "p50" => s.p50_ms.median,
                        "p90" => s.p90_ms.median,
                        "p99" => s.p99_ms.median,
                        _ => s.p999_ms.median,
                    }
                })
                .collect()
        })
        .collect();
    let top = series.iter().flatten().copied().fold(0.0, f64::max);
    let mut chart = panel(area, name, &mode_labels(cases), top, "ms")?;
    for ((label, colour), values) in PERCENTILES.iter().zip(&series) {
        let points: Vec<(SegmentValue<usize>, f64)> = values
            .iter()
            .enumerate()
            .map(|(i, v)| (SegmentValue::CenterOf(i), *v))
            .collect();
        chart
            .draw_series(LineSeries::new(points.clone(), colour.stroke_width(2)))
            .map_err(plot_error)?
            .label(*label)
            .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 16, y)], *colour));
        chart
            .draw_series(
                points
                    .into_iter()
                    .map(|p| Circle::new(p, 3, colour.filled())),
            )
            .map_err(plot_error)?;
    }
    legend(&mut chart)
}

/// The legend of the labelled series, in the upper right corner.
pub(crate) fn legend<'a, 'b: 'a, CT: CoordTranslate>(
    chart: &mut ChartContext<'a, SVGBackend<'b>, CT>,
) -> Result<()> {
    chart
        .configure_series_labels()
        .background_style(WHITE.mix(0.8))
        .border_style(BLACK)
        .position(SeriesLabelPosition::UpperRight)
        .draw()
        .map_err(plot_error)
}

/// One panel: `labels` along x, 0 to a little over `top` along y.
fn panel<'a, 'b>(
    area: &'a Area<'b>,
    name: &str,
    labels: &[String],
    top: f64,
    unit: &str,
) -> Result<
    ChartContext<'a, SVGBackend<'b>, Cartesian2d<SegmentedCoord<RangedCoordusize>, RangedCoordf64>>,
> {
    let mut chart = ChartBuilder::on(area)
        .caption(name, ("sans-serif", 16))
        .margin(8)
        .x_label_area_size(28)
        .y_label_area_size(70)
        .build_cartesian_2d(
            (0..labels.len()).into_segmented(),
            0.0..(top * 1.1).max(1e-9),
        )
        .map_err(plot_error)?;
    chart
        .configure_mesh()
        .disable_x_mesh()
        .y_desc(unit)
        .x_label_formatter(&|x| segment_label(x, labels))
        .draw()
        .map_err(plot_error)?;
    Ok(chart)
}

fn segment_label(x: &SegmentValue<usize>, labels: &[String]) -> String {
    match x {
        SegmentValue::CenterOf(i) | SegmentValue::Exact(i) => {
            labels.get(*i).cloned().unwrap_or_default()
        }
        SegmentValue::Last => String::new(),
    }
}

pub(crate) fn plot_error(err: impl std::error::Error + Send + Sync) -> anyhow::Error {
    anyhow!("{err}")
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::report::tests::sample;

    #[test]
    fn writes_every_plot_as_svg() {
        let dir = std::env::temp_dir().join(format!("cluster-bench-plots-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        write(&sample(), &dir).unwrap();
        for (file, title) in PLOTS {
            let svg = std::fs::read_to_string(dir.join(file)).unwrap();
            assert!(svg.starts_with("<svg"), "{file}: {svg:.80}");
            assert!(svg.trim_end().ends_with("</svg>"), "{file}");
            assert!(svg.contains(title), "{file}");
            assert!(svg.contains("round-robin"), "{file}");
        }
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
