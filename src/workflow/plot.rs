//! SVG plots (plotters, SVG backend): top deltas per fine-tune, delta against base
//! frequency, monitoring trajectories, activation histograms. Drawn to a temporary
//! file and renamed when complete.

use std::ops::Range;
use std::path::Path;

use plotters::coord::types::RangedCoordf64;
use plotters::prelude::*;

use crate::error::{Error, Result};

use super::diff::DiffReport;
use super::monitor::MonitorReport;
use super::top_examples::Histogram;

const W: u32 = 960;
const H: u32 = 540;
/// Scatter points drawn at most (the latents with the largest |delta|); an SVG of
/// millions of circles helps nobody.
const MAX_POINTS: usize = 20_000;

fn plot_err(path: &Path, e: impl std::fmt::Display) -> Error {
    Error::format(path, format!("cannot draw plot: {e}"))
}

fn finite_range(values: impl Iterator<Item = f64>) -> (f64, f64) {
    let (mut lo, mut hi) = (f64::INFINITY, f64::NEG_INFINITY);
    for v in values.filter(|v| v.is_finite()) {
        lo = lo.min(v);
        hi = hi.max(v);
    }
    if !lo.is_finite() {
        return (0.0, 1.0);
    }
    if hi - lo < 1e-12 {
        return (lo - 0.5, hi + 0.5);
    }
    let pad = (hi - lo) * 0.05;
    (lo - pad, hi + pad)
}

type Chart<'a, 'b> = ChartContext<'a, SVGBackend<'b>, Cartesian2d<RangedCoordf64, RangedCoordf64>>;

/// Draws one W x H SVG chart to `path` (atomically): a white canvas, `caption`, f64 axes
/// over `x` and `y`; `body` adds the mesh and series, and with `legend` the series
/// labels are boxed in the corner.
fn draw_chart(
    path: &Path,
    caption: &str,
    (x, y): (Range<f64>, Range<f64>),
    legend: bool,
    body: impl FnOnce(&mut Chart) -> std::result::Result<(), String>,
) -> Result<()> {
    let f = |tmp: &Path| -> std::result::Result<(), String> {
        let root = SVGBackend::new(tmp, (W, H)).into_drawing_area();
        root.fill(&WHITE).map_err(|e| e.to_string())?;
        let mut chart = ChartBuilder::on(&root)
            .caption(caption, ("sans-serif", 20))
            .margin(10)
            .x_label_area_size(40)
            .y_label_area_size(70)
            .build_cartesian_2d(x, y)
            .map_err(|e| e.to_string())?;
        body(&mut chart)?;
        if legend {
            chart
                .configure_series_labels()
                .background_style(WHITE.mix(0.8))
                .border_style(BLACK)
                .draw()
                .map_err(|e| e.to_string())?;
        }
        root.present().map_err(|e| e.to_string())
    };
    crate::io::atomic::write_with(path, |tmp| f(tmp).map_err(|e| plot_err(path, e)))
}

/// Grouped bars: for the top `n` latents of the diff, each fine-tune's delta.
pub fn top_deltas(path: &Path, r: &DiffReport, n: usize) -> Result<()> {
    let lat: Vec<_> = r.latents.iter().take(n.max(1)).collect();
    let m = r.tuned.len().max(1);
    let (lo, hi) = finite_range(
        lat.iter()
            .flat_map(|l| l.deltas.iter().cloned())
            .chain([0.0]),
    );
    draw_chart(
        path,
        "Top latents by average delta: delta per fine-tune",
        (0f64..lat.len() as f64, lo..hi),
        true,
        |chart| {
            let names: Vec<String> = lat.iter().map(|l| l.latent.to_string()).collect();
            chart
                .configure_mesh()
                .x_desc("latent")
                .y_desc("mean activation change")
                .x_labels(lat.len().min(30))
                .x_label_formatter(&|x| names.get(*x as usize).cloned().unwrap_or_default())
                .draw()
                .map_err(|e| e.to_string())?;
            let w = 0.8 / m as f64;
            for (j, name) in r.tuned.iter().enumerate() {
                let color = Palette99::pick(j).to_rgba();
                chart
                    .draw_series(lat.iter().enumerate().map(|(i, l)| {
                        let x0 = i as f64 + 0.1 + j as f64 * w;
                        let d = l.deltas.get(j).cloned().unwrap_or(0.0);
                        Rectangle::new(
                            [(x0, 0.0f64.min(d)), (x0 + w, 0.0f64.max(d))],
                            color.filled(),
                        )
                    }))
                    .map_err(|e| e.to_string())?
                    .label(name.clone())
                    .legend(move |(x, y)| {
                        Rectangle::new([(x, y - 5), (x + 10, y + 5)], color.filled())
                    });
            }
            Ok(())
        },
    )
}

/// Scatter of every latent's average delta against its base firing frequency (the
/// `MAX_POINTS` largest |delta|), top-list latents highlighted.
pub fn delta_vs_freq(path: &Path, r: &DiffReport) -> Result<()> {
    let mut idx: Vec<usize> = (0..r.all_delta.len()).collect();
    if idx.len() > MAX_POINTS {
        idx.select_nth_unstable_by(MAX_POINTS - 1, |a, b| {
            r.all_delta[*b].abs().total_cmp(&r.all_delta[*a].abs())
        });
        idx.truncate(MAX_POINTS);
    }
    let (ylo, yhi) = finite_range(idx.iter().map(|i| r.all_delta[*i]));
    let (xlo, xhi) = finite_range(idx.iter().map(|i| r.all_base_freq[*i]).chain([0.0]));
    let top: Vec<usize> = r.latents.iter().map(|l| l.latent).collect();
    draw_chart(
        path,
        "Average delta against base firing frequency",
        (xlo..xhi, ylo..yhi),
        false,
        |chart| {
            chart
                .configure_mesh()
                .x_desc("base firing frequency")
                .y_desc("average delta")
                .draw()
                .map_err(|e| e.to_string())?;
            chart
                .draw_series(idx.iter().filter(|i| !top.contains(i)).map(|i| {
                    Circle::new(
                        (r.all_base_freq[*i], r.all_delta[*i]),
                        2,
                        BLUE.mix(0.4).filled(),
                    )
                }))
                .map_err(|e| e.to_string())?;
            chart
                .draw_series(
                    top.iter().map(|i| {
                        Circle::new((r.all_base_freq[*i], r.all_delta[*i]), 4, RED.filled())
                    }),
                )
                .map_err(|e| e.to_string())?;
            Ok(())
        },
    )
}

/// One line per monitored latent: delta over checkpoints, with its threshold dashed.
pub fn trajectories(path: &Path, r: &MonitorReport) -> Result<()> {
    let n = r.checkpoints.len();
    let (lo, hi) = finite_range(
        r.trajectories
            .iter()
            .flat_map(|t| t.deltas.iter().cloned())
            .chain(r.trajectories.iter().filter_map(|t| match t.alarm {
                super::monitor::Alarm::Delta { value, .. } => Some(value),
                _ => None,
            }))
            .chain([0.0]),
    );
    draw_chart(
        path,
        "Latent change from the base over checkpoints",
        (0f64..(n.max(2) - 1) as f64, lo..hi),
        true,
        |chart| {
            let names = r.checkpoints.clone();
            chart
                .configure_mesh()
                .x_desc("checkpoint")
                .y_desc("delta vs base")
                .x_labels(n.min(20))
                .x_label_formatter(&|x| names.get(x.round() as usize).cloned().unwrap_or_default())
                .draw()
                .map_err(|e| e.to_string())?;
            for (j, t) in r.trajectories.iter().enumerate() {
                let color = Palette99::pick(j).to_rgba();
                chart
                    .draw_series(LineSeries::new(
                        t.deltas.iter().enumerate().map(|(k, d)| (k as f64, *d)),
                        color.stroke_width(2),
                    ))
                    .map_err(|e| e.to_string())?
                    .label(format!("latent {}", t.latent))
                    .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 15, y)], color));
                if let super::monitor::Alarm::Delta { value, .. } = t.alarm {
                    chart
                        .draw_series(DashedLineSeries::new(
                            [(0.0, value), ((n.max(2) - 1) as f64, value)],
                            6,
                            4,
                            color.stroke_width(1),
                        ))
                        .map_err(|e| e.to_string())?;
                }
            }
            Ok(())
        },
    )
}

/// Histogram of a latent's positive activations.
pub fn histogram(path: &Path, latent: usize, h: &Histogram) -> Result<()> {
    let top = h.counts.iter().cloned().max().unwrap_or(0).max(1) as f64;
    let xmax = h.edges.last().cloned().unwrap_or(1.0).max(1e-12);
    draw_chart(
        path,
        &format!("Latent {latent}: positive activations"),
        (0f64..xmax, 0f64..top * 1.05),
        false,
        |chart| {
            chart
                .configure_mesh()
                .x_desc("activation")
                .y_desc("tokens")
                .draw()
                .map_err(|e| e.to_string())?;
            chart
                .draw_series(h.counts.iter().enumerate().map(|(i, c)| {
                    Rectangle::new(
                        [(h.edges[i], 0.0), (h.edges[i + 1], *c as f64)],
                        BLUE.mix(0.6).filled(),
                    )
                }))
                .map_err(|e| e.to_string())?;
            Ok(())
        },
    )
}
