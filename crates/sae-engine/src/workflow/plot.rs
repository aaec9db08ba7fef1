//! SVG plots (plotters, SVG backend): top deltas per fine-tune, delta against base
//! frequency, monitoring trajectories, activation histograms. Drawn to a temporary
//! file and renamed when complete.

use std::ops::Range;
use std::path::Path;

use plotters::coord::ranged1d::{DefaultFormatting, KeyPointHint};
use plotters::coord::types::RangedCoordf64;
use plotters::coord::Shift;
use plotters::prelude::*;
use plotters::style::text_anchor::{HPos, Pos, VPos};

use crate::error::{Error, Result};

use super::diff::DiffReport;
use super::monitor::{Alarm, MonitorReport};
use super::top_examples::Histogram;

const W: u32 = 960;
const H: u32 = 540;
/// Scatter points drawn at most (the latents with the largest |delta|); an SVG of
/// millions of circles helps nobody.
const MAX_POINTS: usize = 20_000;
/// Latents top_deltas.svg draws at most (and delta_vs_freq.svg highlights): beyond
/// this the bars and their labels stop being readable; the CSV has every latent.
pub const MAX_PLOTTED_LATENTS: usize = 50;

const MARGIN: u32 = 10;
/// Room right of the plot so a label centred on the last tick is not cut off.
const MARGIN_RIGHT: u32 = 30;
const X_LABEL_AREA: u32 = 45;
const Y_LABEL_AREA: u32 = 75;
/// plotters font sizes; the SVG's `font-size` is this / 1.24.
const TICK_FONT: f64 = 14.0;
const LEGEND_FONT: f64 = 14.0;
const POINT_LABEL_FONT: f64 = 13.0;
/// Width of one character in em, on the generous side of common sans-serif fonts
/// (DejaVu Sans digits are 0.64 em): the layout must not rely on narrow glyphs.
const CHAR_EM: f64 = 0.65;

// Solid colours only: ImageMagick ignores SVG `opacity`, so a translucent grid or
// point is drawn opaque there and the picture differs from rsvg's.
const GRID: RGBColor = RGBColor(0xd9, 0xd9, 0xd9);
const GRID_LIGHT: RGBColor = RGBColor(0xf0, 0xf0, 0xf0);
const POINT: RGBColor = RGBColor(0x9e, 0xb9, 0xe3);
const HIGHLIGHT: RGBColor = RGBColor(0xd6, 0x27, 0x28);
const HIST_BAR: RGBColor = RGBColor(0x46, 0x82, 0xb4);

fn plot_err(path: &Path, e: impl std::fmt::Display) -> Error {
    Error::format(path, format!("cannot draw plot: {e}"))
}

/// Estimated pixel width of `text` drawn at plotters font size `size`.
fn text_px(size: f64, text: &str) -> f64 {
    text.chars().count() as f64 * CHAR_EM * size / 1.24
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

/// Ticks at plotters' round values over `r`, labelled with the digits their spacing needs.
fn nice_ticks(r: &Range<f64>) -> Vec<(f64, String)> {
    let points = RangedCoordf64::from(r.clone()).key_points(8usize);
    let step = points
        .windows(2)
        .map(|w| w[1] - w[0])
        .fold(f64::INFINITY, f64::min);
    let digits = if step.is_finite() && step > 0.0 {
        (-step.log10().floor()).clamp(0.0, 8.0) as usize
    } else {
        3
    };
    points
        .into_iter()
        .map(|v| (v, format!("{v:.digits$}")))
        .collect()
}

/// How a legend entry is drawn.
#[derive(Clone, Copy)]
enum Swatch {
    Bar(RGBColor),
    Dot(RGBColor),
    Line(RGBColor),
    Dashed(RGBColor),
}

const LEGEND_PAD: i32 = 8;
const LEGEND_ROW: i32 = 20;
const LEGEND_SWATCH: i32 = 18;
const LEGEND_GAP: i32 = 6;
/// Distance of the legend box from the plot's top-right corner, and of the data below it.
const LEGEND_INSET: i32 = 6;

/// Pixel size of the legend box for `entries` (0 x 0 without entries).
fn legend_size(entries: &[(String, Swatch)]) -> (i32, i32) {
    if entries.is_empty() {
        return (0, 0);
    }
    let text = entries
        .iter()
        .map(|(t, _)| text_px(LEGEND_FONT, t))
        .fold(0.0, f64::max)
        .ceil() as i32;
    (
        2 * LEGEND_PAD + LEGEND_SWATCH + LEGEND_GAP + text,
        2 * LEGEND_PAD + LEGEND_ROW * entries.len() as i32,
    )
}

/// Draws the legend in the top-right corner of the plotting area `area`.
fn draw_legend(
    area: &DrawingArea<SVGBackend, Shift>,
    entries: &[(String, Swatch)],
) -> std::result::Result<(), String> {
    if entries.is_empty() {
        return Ok(());
    }
    let (w, h) = legend_size(entries);
    let x0 = area.dim_in_pixel().0 as i32 - w - LEGEND_INSET;
    let y0 = LEGEND_INSET;
    let corners = [(x0, y0), (x0 + w, y0 + h)];
    area.draw(&Rectangle::new(corners, WHITE.filled()))
        .map_err(|e| e.to_string())?;
    area.draw(&Rectangle::new(corners, BLACK.stroke_width(1)))
        .map_err(|e| e.to_string())?;
    let font = ("sans-serif", LEGEND_FONT)
        .into_font()
        .color(&BLACK)
        .pos(Pos::new(HPos::Left, VPos::Center));
    for (i, (text, swatch)) in entries.iter().enumerate() {
        let cy = y0 + LEGEND_PAD + LEGEND_ROW * i as i32 + LEGEND_ROW / 2;
        let sx = x0 + LEGEND_PAD;
        let r = match swatch {
            Swatch::Bar(c) => area.draw(&Rectangle::new(
                [(sx, cy - 6), (sx + LEGEND_SWATCH, cy + 6)],
                c.filled(),
            )),
            Swatch::Dot(c) => area.draw(&Circle::new((sx + LEGEND_SWATCH / 2, cy), 4, c.filled())),
            Swatch::Line(c) => area.draw(&PathElement::new(
                vec![(sx, cy), (sx + LEGEND_SWATCH, cy)],
                c.stroke_width(2),
            )),
            Swatch::Dashed(c) => [(0, 6), (10, 16)].iter().try_for_each(|(a, b)| {
                area.draw(&PathElement::new(
                    vec![(sx + a, cy), (sx + b, cy)],
                    c.stroke_width(1),
                ))
            }),
        };
        r.map_err(|e| e.to_string())?;
        area.draw(&Text::new(
            text.clone(),
            (sx + LEGEND_SWATCH + LEGEND_GAP, cy),
            font.clone(),
        ))
        .map_err(|e| e.to_string())?;
    }
    Ok(())
}

/// `y` extended upwards so that `need_px` pixels at the top of a `plot_px`-high plot
/// hold no data (the legend goes there).
fn with_headroom(y: Range<f64>, need_px: f64, plot_px: f64) -> Range<f64> {
    if need_px <= 0.0 || plot_px <= 0.0 {
        return y;
    }
    let f = (need_px / plot_px).min(0.6);
    let hi = (y.end - f * y.start) / (1.0 - f);
    y.start..hi
}

/// What a chart shows: canvas width, caption, axes with their ticks, legend entries.
struct Spec<'s> {
    caption: String,
    width: u32,
    x: Range<f64>,
    /// Tick positions on x and their labels (a label for each, nothing between).
    x_ticks: Vec<(f64, String)>,
    x_desc: &'s str,
    y: Range<f64>,
    y_desc: &'s str,
    /// Vertical grid lines at the x ticks (not for bars: a line through each group).
    x_grid: bool,
    /// Boxed in the top-right corner, in room kept free of data.
    legend: Vec<(String, Swatch)>,
}

/// An f64 axis with given ticks and no light grid lines (plotters' own `WithKeyPoints`
/// over f64 cannot take a label formatter).
struct TickedAxis {
    inner: RangedCoordf64,
    ticks: Vec<f64>,
}

impl Ranged for TickedAxis {
    // Labels always come from the chart's formatter, never from this default.
    type FormatOption = DefaultFormatting;
    type ValueType = f64;
    fn map(&self, value: &f64, limit: (i32, i32)) -> i32 {
        self.inner.map(value, limit)
    }
    fn key_points<Hint: KeyPointHint>(&self, hint: Hint) -> Vec<f64> {
        if hint.weight().allow_light_points() {
            Vec::new()
        } else {
            self.ticks.clone()
        }
    }
    fn range(&self) -> Range<f64> {
        self.inner.range()
    }
}

type Chart<'a, 'b> = ChartContext<'a, SVGBackend<'b>, Cartesian2d<TickedAxis, RangedCoordf64>>;

/// Draws one chart to `path` (atomically): a white canvas, the caption, the grid in
/// solid light grey, the axes with `spec`'s ticks, what `body` adds, the legend.
fn draw_chart(
    path: &Path,
    spec: Spec,
    body: impl FnOnce(&mut Chart) -> std::result::Result<(), String>,
) -> Result<()> {
    let mut svg = String::new();
    let drawn = (|| -> std::result::Result<(), String> {
        let root = SVGBackend::with_string(&mut svg, (spec.width, H)).into_drawing_area();
        root.fill(&WHITE).map_err(|e| e.to_string())?;
        let area = root
            .titled(&spec.caption, ("sans-serif", 20))
            .map_err(|e| e.to_string())?;
        let plot_px = area.dim_in_pixel().1 as f64 - (2 * MARGIN + X_LABEL_AREA) as f64;
        let need = legend_size(&spec.legend).1 + 2 * LEGEND_INSET;
        let y = with_headroom(
            spec.y,
            need as f64 * f64::from(!spec.legend.is_empty()),
            plot_px,
        );
        let ticks: Vec<f64> = spec.x_ticks.iter().map(|t| t.0).collect();
        let mut chart = ChartBuilder::on(&area)
            .margin(MARGIN)
            .margin_right(MARGIN_RIGHT)
            .x_label_area_size(X_LABEL_AREA)
            .y_label_area_size(Y_LABEL_AREA)
            .build_cartesian_2d(
                TickedAxis {
                    inner: spec.x.into(),
                    ticks,
                },
                y,
            )
            .map_err(|e| e.to_string())?;
        let label_of = |v: &f64| {
            spec.x_ticks
                .iter()
                .find(|(t, _)| (t - v).abs() <= 1e-9 * t.abs().max(1.0))
                .map(|t| t.1.clone())
                .unwrap_or_default()
        };
        let mut mesh = chart.configure_mesh();
        if !spec.x_grid {
            mesh.disable_x_mesh();
        }
        mesh.bold_line_style(GRID)
            .light_line_style(GRID_LIGHT)
            .axis_style(BLACK)
            .x_desc(spec.x_desc)
            .y_desc(spec.y_desc)
            .x_label_style(("sans-serif", TICK_FONT))
            .y_label_style(("sans-serif", TICK_FONT))
            .x_label_formatter(&label_of)
            .y_labels(8)
            .draw()
            .map_err(|e| e.to_string())?;
        body(&mut chart)?;
        draw_legend(&chart.plotting_area().strip_coord_spec(), &spec.legend)?;
        root.present().map_err(|e| e.to_string())
    })();
    drawn.map_err(|e| plot_err(path, e))?;
    crate::io::atomic::write_bytes(path, portable_svg(&svg).as_bytes())
}

/// plotters' SVG rewritten so that ImageMagick's own renderer draws what rsvg draws:
/// ImageMagick ignores `opacity` (every colour here is opaque, yet the backend writes
/// `opacity="1"` on each element), a text's `dy` shift, and the centre of a
/// `rotate(a, cx, cy)`, and it outlines text that names no stroke. So the shift is
/// folded into `y`, a rotation about a point becomes a translation to it followed by
/// the rotation, and text gets `stroke="none"`.
fn portable_svg(svg: &str) -> String {
    let mut out = String::with_capacity(svg.len());
    let mut rest = svg;
    while let Some(i) = rest.find("<text ") {
        let Some(len) = rest[i..].find('>') else {
            break;
        };
        out.push_str(&rest[..i]);
        out.push_str(&portable_text_tag(&rest[i + "<text ".len()..i + len]));
        rest = &rest[i + len..];
    }
    out.push_str(rest);
    out.replace(" opacity=\"1\"", "")
}

/// `name="value"` pairs of a tag's attribute text, in order.
fn parse_attrs(tag: &str) -> Vec<(String, String)> {
    let mut attrs = Vec::new();
    let mut rest = tag;
    while let Some(eq) = rest.find("=\"") {
        let name = rest[..eq].trim().to_string();
        let value_start = eq + 2;
        let Some(len) = rest[value_start..].find('"') else {
            break;
        };
        attrs.push((name, rest[value_start..value_start + len].to_string()));
        rest = &rest[value_start + len + 1..];
    }
    attrs
}

/// A length in user units: plain, `em` (x font size) or `ex` (taken as half an em).
fn length_px(v: &str, font_size: f64) -> f64 {
    let num = |s: &str| s.trim().parse::<f64>().unwrap_or(0.0);
    if let Some(n) = v.strip_suffix("em") {
        num(n) * font_size
    } else if let Some(n) = v.strip_suffix("ex") {
        num(n) * font_size * 0.5
    } else {
        num(v.trim_end_matches("px"))
    }
}

/// One `<text ...` opening tag (without its `>`) without `dy` or a rotation centre.
fn portable_text_tag(tag: &str) -> String {
    let mut attrs = parse_attrs(tag);
    let get = |attrs: &[(String, String)], k: &str| {
        attrs.iter().find(|(n, _)| n == k).map(|(_, v)| v.clone())
    };
    let num = |attrs: &[(String, String)], k: &str| {
        get(attrs, k)
            .and_then(|v| v.parse::<f64>().ok())
            .unwrap_or(0.0)
    };
    let font_size = num(&attrs, "font-size");
    let shift = get(&attrs, "dy").map_or(0.0, |d| length_px(&d, font_size));
    attrs.retain(|(n, _)| n != "dy");
    let (mut x, mut y) = (num(&attrs, "x"), num(&attrs, "y"));
    if let Some(t) = get(&attrs, "transform") {
        let inner = t
            .trim()
            .strip_prefix("rotate(")
            .and_then(|r| r.strip_suffix(')'));
        let parts: Vec<f64> = inner
            .map(|r| r.split(',').filter_map(|p| p.trim().parse().ok()).collect())
            .unwrap_or_default();
        if let [angle, cx, cy] = parts[..] {
            // Text at (x, y) rotated about (cx, cy) = text at (x - cx, y - cy) rotated
            // about the origin, then moved to (cx, cy).
            (x, y) = (x - cx, y - cy);
            let v = format!("translate({cx} {cy}) rotate({angle})");
            attrs
                .iter_mut()
                .filter(|(n, _)| n == "transform")
                .for_each(|a| a.1 = v.clone());
        }
    }
    y += shift;
    // ImageMagick outlines text in black unless told otherwise.
    if get(&attrs, "stroke").is_none() {
        attrs.push(("stroke".into(), "none".into()));
    }
    // Hundredths of a pixel: no float noise in the file.
    let round = |v: f64| (v * 100.0).round() / 100.0;
    for (n, v) in attrs.iter_mut() {
        match n.as_str() {
            "x" => *v = format!("{}", round(x)),
            "y" => *v = format!("{}", round(y)),
            _ => {}
        }
    }
    let mut s = String::from("<text");
    for (n, v) in &attrs {
        s.push_str(&format!(" {n}=\"{v}\""));
    }
    s
}

/// How many of `n` top latents the plots show.
pub fn plotted_latents(n: usize) -> usize {
    n.min(MAX_PLOTTED_LATENTS)
}

/// The sentence the report carries when the plots show fewer latents than the top list.
pub fn cap_note(n: usize) -> Option<String> {
    (n > MAX_PLOTTED_LATENTS).then(|| {
        format!(
            "top_deltas.svg and delta_vs_freq.svg show the first {MAX_PLOTTED_LATENTS} of the {n} \
             top latents (a plot keeps at most {MAX_PLOTTED_LATENTS} readable); diff.csv lists all {n}."
        )
    })
}

/// Grouped bars: for each latent of the diff's top list (at most
/// [`MAX_PLOTTED_LATENTS`]), each fine-tune's delta; the latent id under its group.
pub fn top_deltas(path: &Path, r: &DiffReport) -> Result<()> {
    let n = r.latents.len();
    let lat = &r.latents[..plotted_latents(n)];
    let m = r.tuned.len().max(1);
    let (lo, hi) = finite_range(
        lat.iter()
            .flat_map(|l| l.deltas.iter().cloned())
            .chain([0.0]),
    );
    let names: Vec<String> = lat.iter().map(|l| l.latent.to_string()).collect();
    // Each latent gets a slot wide enough for its label and its bars (>= 4 px each).
    let label_px = names
        .iter()
        .map(|s| text_px(TICK_FONT, s))
        .fold(0.0, f64::max);
    let slot = (label_px + 10.0).max(5.0 * m as f64).max(24.0);
    let fixed = (Y_LABEL_AREA + MARGIN + MARGIN_RIGHT) as f64;
    let width = W.max((fixed + slot * lat.len() as f64).ceil() as u32);
    let caption = if lat.len() < n {
        format!(
            "Top {} of {n} latents by {} (plot capped at {MAX_PLOTTED_LATENTS}; all in diff.csv)",
            lat.len(),
            r.order
        )
    } else {
        format!("Top {n} latents by {}: delta per fine-tune", r.order)
    };
    let legend = r
        .tuned
        .iter()
        .enumerate()
        .map(|(j, t)| (t.clone(), Swatch::Bar(series_color(j))))
        .collect();
    let spec = Spec {
        caption,
        width,
        x: 0.0..lat.len().max(1) as f64,
        x_ticks: names
            .iter()
            .enumerate()
            .map(|(i, s)| (i as f64 + 0.5, s.clone()))
            .collect(),
        x_desc: "latent",
        y: lo..hi,
        y_desc: "mean activation change",
        x_grid: false,
        legend,
    };
    draw_chart(path, spec, |chart| {
        let w = 0.8 / m as f64;
        for j in 0..r.tuned.len() {
            let color = series_color(j);
            chart
                .draw_series(lat.iter().enumerate().map(|(i, l)| {
                    let x0 = i as f64 + 0.1 + j as f64 * w;
                    let d = l.deltas.get(j).cloned().unwrap_or(0.0);
                    Rectangle::new(
                        [(x0, 0.0f64.min(d)), (x0 + w, 0.0f64.max(d))],
                        color.filled(),
                    )
                }))
                .map_err(|e| e.to_string())?;
        }
        Ok(())
    })
}

/// The colour of fine-tune (or trajectory) `j`.
fn series_color(j: usize) -> RGBColor {
    let c = Palette99::pick(j).to_rgba();
    RGBColor(c.0, c.1, c.2)
}

/// Scatter of every latent's average delta against its base firing frequency (the
/// `MAX_POINTS` largest |delta|); the plotted top-list latents in red, labelled by id.
pub fn delta_vs_freq(path: &Path, r: &DiffReport) -> Result<()> {
    let mut idx: Vec<usize> = (0..r.all_delta.len()).collect();
    if idx.len() > MAX_POINTS {
        idx.select_nth_unstable_by(MAX_POINTS - 1, |a, b| {
            r.all_delta[*b].abs().total_cmp(&r.all_delta[*a].abs())
        });
        idx.truncate(MAX_POINTS);
    }
    let top: Vec<usize> = r.latents[..plotted_latents(r.latents.len())]
        .iter()
        .map(|l| l.latent)
        .filter(|l| *l < r.all_delta.len())
        .collect();
    // The axes hold every drawn point: the highlighted ones need not be among the
    // largest |delta| (a z-score ranking).
    let shown = || idx.iter().chain(&top);
    let (ylo, yhi) = finite_range(shown().map(|i| r.all_delta[*i]));
    let (xlo, xhi) = finite_range(shown().map(|i| r.all_base_freq[*i]).chain([0.0]));
    let legend = vec![
        ("other latents".to_string(), Swatch::Dot(POINT)),
        (
            format!("top {} by {} (labelled with latent id)", top.len(), r.order),
            Swatch::Dot(HIGHLIGHT),
        ),
    ];
    let spec = Spec {
        caption: "Average delta against base firing frequency".into(),
        width: W,
        x: xlo..xhi,
        x_ticks: nice_ticks(&(xlo..xhi)),
        x_desc: "base firing frequency",
        y: ylo..yhi,
        y_desc: "average delta",
        x_grid: true,
        legend: legend.clone(),
    };
    draw_chart(path, spec, |chart| {
        chart
            .draw_series(
                idx.iter().filter(|i| !top.contains(i)).map(|i| {
                    Circle::new((r.all_base_freq[*i], r.all_delta[*i]), 2, POINT.filled())
                }),
            )
            .map_err(|e| e.to_string())?;
        chart
            .draw_series(top.iter().map(|i| {
                Circle::new(
                    (r.all_base_freq[*i], r.all_delta[*i]),
                    4,
                    HIGHLIGHT.filled(),
                )
            }))
            .map_err(|e| e.to_string())?;
        let area = chart.plotting_area();
        let origin = area.get_base_pixel();
        let (w, h) = area.dim_in_pixel();
        let points: Vec<(i32, i32)> = top
            .iter()
            .map(|i| {
                let p = chart.backend_coord(&(r.all_base_freq[*i], r.all_delta[*i]));
                (p.0 - origin.0, p.1 - origin.1)
            })
            .collect();
        let texts: Vec<String> = top.iter().map(|i| i.to_string()).collect();
        let (lw, lh) = legend_size(&legend);
        let legend_box = (
            w as i32 - lw - 2 * LEGEND_INSET,
            0,
            w as i32,
            lh + 2 * LEGEND_INSET,
        );
        let plain = area.strip_coord_spec();
        for ((p, text), l) in points.iter().zip(&texts).zip(place_labels(
            &points,
            &texts,
            (w as i32, h as i32),
            legend_box,
        )) {
            if l.moved {
                let from = (p.0 + if l.right { 4 } else { -4 }, p.1);
                // The line stops just short of the text.
                let to = (l.x + if l.right { -3 } else { 3 }, l.y);
                plain
                    .draw(&PathElement::new(vec![from, to], HIGHLIGHT.stroke_width(1)))
                    .map_err(|e| e.to_string())?;
            }
            let font = ("sans-serif", POINT_LABEL_FONT)
                .into_font()
                .color(&HIGHLIGHT)
                .pos(Pos::new(
                    if l.right { HPos::Left } else { HPos::Right },
                    VPos::Center,
                ));
            plain
                .draw(&Text::new(text.clone(), (l.x, l.y), font))
                .map_err(|e| e.to_string())?;
        }
        Ok(())
    })
}

/// Where a point's label goes: its anchor in plotting-area pixels, whether the text
/// extends right of the anchor (else left), and whether it left the point's own row (then a
/// leader line joins them).
struct Placed {
    x: i32,
    y: i32,
    right: bool,
    moved: bool,
}

type Box4 = (i32, i32, i32, i32);

fn overlap(a: Box4, b: Box4) -> bool {
    a.0 < b.2 && b.0 < a.2 && a.1 < b.3 && b.1 < a.3
}

/// Places one label per point inside the `w` x `h` plot, overlapping no other label,
/// no highlighted point and not `keep_clear` (the legend):
/// 1. beside its point, in rank order (right of it; left in the right fifth);
/// 2. the rest in a column right of the crowd (else left of it), ordered as their
///    points are from top to bottom so that the leader lines do not cross;
/// 3. what still has no place: moved up or down a line at a time near its point,
///    stepping out as it goes (beside its point when nothing is free).
fn place_labels(
    points: &[(i32, i32)],
    texts: &[String],
    (w, h): (i32, i32),
    keep_clear: Box4,
) -> Vec<Placed> {
    let line = (POINT_LABEL_FONT / 1.24).ceil() as i32 + 3;
    let widths: Vec<i32> = texts
        .iter()
        .map(|t| text_px(POINT_LABEL_FONT, t).ceil() as i32)
        .collect();
    let label_box = |x: i32, y: i32, right: bool, tw: i32| {
        let (x0, x1) = if right { (x, x + tw) } else { (x - tw, x) };
        (x0, y - line / 2, x1, y + line / 2)
    };
    let mut taken: Vec<Box4> = std::iter::once(keep_clear)
        .chain(points.iter().map(|&(x, y)| (x - 4, y - 4, x + 4, y + 4)))
        .collect();
    let free = |b: Box4, taken: &[Box4]| {
        b.0 >= 0 && b.1 >= 0 && b.2 <= w && b.3 <= h && !taken.iter().any(|t| overlap(*t, b))
    };
    let sides = |px: i32| {
        if px < w * 4 / 5 {
            [true, false]
        } else {
            [false, true]
        }
    };
    let mut placed: Vec<Option<Placed>> = (0..points.len()).map(|_| None).collect();

    for (i, &(px, py)) in points.iter().enumerate() {
        for right in sides(px) {
            let x = if right { px + 7 } else { px - 7 };
            let b = label_box(x, py, right, widths[i]);
            if free(b, &taken) {
                taken.push(b);
                placed[i] = Some(Placed {
                    x,
                    y: py,
                    right,
                    moved: false,
                });
                break;
            }
        }
    }

    for right in [true, false] {
        let rest: Vec<usize> = (0..points.len()).filter(|i| placed[*i].is_none()).collect();
        if rest.is_empty() {
            break;
        }
        // As many as the plot's height holds, best ranked first, then top to bottom.
        let mut col: Vec<usize> = rest.into_iter().take((h / line).max(0) as usize).collect();
        col.sort_by_key(|i| points[*i].1);
        let mut ys: Vec<i32> = Vec::with_capacity(col.len());
        for i in &col {
            let y = ys
                .last()
                .map_or(points[*i].1, |p| (p + line).max(points[*i].1));
            ys.push(y.max(line / 2));
        }
        // Centred on its points, inside the plot.
        let mean = |v: &mut dyn Iterator<Item = i32>| {
            let (sum, n) = v.fold((0i64, 0i64), |(s, n), y| (s + y as i64, n + 1));
            (sum / n.max(1)) as i32
        };
        let centre = mean(&mut col.iter().map(|i| points[*i].1)) - mean(&mut ys.iter().cloned());
        let lo = line / 2 - ys[0];
        let hi = h - line / 2 - ys[ys.len() - 1];
        let shift = if lo > hi { lo } else { centre.clamp(lo, hi) };
        ys.iter_mut().for_each(|y| *y += shift);
        let (top, bottom) = (ys[0] - line / 2, ys[ys.len() - 1] + line / 2);
        let tw = col.iter().map(|i| widths[*i]).max().unwrap_or(0);
        // Beside every label and point already in those rows (the legend aside: a
        // label in its rows is simply not placed there), and beside its own points.
        let rows: Vec<&Box4> = taken[1..]
            .iter()
            .filter(|b| b.1 < bottom && b.3 > top)
            .collect();
        let own = col.iter().map(|i| points[*i].0);
        let x = if right {
            rows.iter().map(|b| b.2).chain(own).max().unwrap_or(0) + 16
        } else {
            rows.iter().map(|b| b.0).chain(own).min().unwrap_or(w) - 16
        };
        if right && x + tw > w || !right && x < tw {
            continue;
        }
        for (i, y) in col.iter().zip(&ys) {
            let b = label_box(x, *y, right, widths[*i]);
            if free(b, &taken) {
                taken.push(b);
                placed[*i] = Some(Placed {
                    x,
                    y: *y,
                    right,
                    moved: true,
                });
            }
        }
    }

    for (i, &(px, py)) in points.iter().enumerate() {
        if placed[i].is_some() {
            continue;
        }
        // A label k lines away also steps 4 px further out per line, so that the leader
        // lines of one point's stack pass beside its nearer labels, not through them.
        let spot = |right: bool, k: i32| {
            let out = 7 + 4 * k.abs();
            let (x, y) = (if right { px + out } else { px - out }, py + k * line);
            (x, y, label_box(x, y, right, widths[i]))
        };
        let choice = (1..=12)
            .flat_map(|step| [-step, step])
            .flat_map(|k| sides(px).map(|right| (right, k)))
            .map(|(right, k)| (right, spot(right, k)))
            .find(|(_, (_, _, b))| free(*b, &taken));
        let (right, (x, y, b), moved) = match choice {
            Some((right, s)) => (right, s, true),
            None => (sides(px)[0], spot(sides(px)[0], 0), false),
        };
        taken.push(b);
        placed[i] = Some(Placed { x, y, right, moved });
    }
    placed.into_iter().flatten().collect()
}

/// One line per monitored latent: delta over checkpoints, with its threshold dashed.
pub fn trajectories(path: &Path, r: &MonitorReport) -> Result<()> {
    let n = r.checkpoints.len().max(1);
    let (lo, hi) = finite_range(
        r.trajectories
            .iter()
            .flat_map(|t| t.deltas.iter().cloned())
            .chain(r.trajectories.iter().filter_map(|t| match t.alarm {
                Alarm::Delta { value, .. } => Some(value),
                _ => None,
            }))
            .chain([0.0]),
    );
    // Checkpoint k sits in the middle of slot k; a name longer than its slot is
    // shortened so that neighbours do not overlap and the last is not cut off.
    let slot_px = (W - Y_LABEL_AREA - MARGIN - MARGIN_RIGHT) as f64 / n as f64;
    let max_chars = ((slot_px - 6.0) / text_px(TICK_FONT, "0")).floor().max(1.0) as usize;
    let x_ticks = r
        .checkpoints
        .iter()
        .enumerate()
        .map(|(k, name)| (k as f64, shorten(name, max_chars)))
        .collect();
    let mut legend: Vec<(String, Swatch)> = r
        .trajectories
        .iter()
        .enumerate()
        .map(|(j, t)| {
            (
                format!("latent {}", t.latent),
                Swatch::Line(series_color(j)),
            )
        })
        .collect();
    if r.trajectories
        .iter()
        .any(|t| matches!(t.alarm, Alarm::Delta { .. }))
    {
        legend.push(("alarm threshold".into(), Swatch::Dashed(BLACK)));
    }
    let spec = Spec {
        caption: "Latent change from the base over checkpoints".into(),
        width: W,
        x: -0.5..n as f64 - 0.5,
        x_ticks,
        x_desc: "checkpoint",
        y: lo..hi,
        y_desc: "delta vs base",
        x_grid: true,
        legend,
    };
    draw_chart(path, spec, |chart| {
        for (j, t) in r.trajectories.iter().enumerate() {
            let color = series_color(j);
            chart
                .draw_series(LineSeries::new(
                    t.deltas.iter().enumerate().map(|(k, d)| (k as f64, *d)),
                    color.stroke_width(2),
                ))
                .map_err(|e| e.to_string())?;
            if let Alarm::Delta { value, .. } = t.alarm {
                chart
                    .draw_series(DashedLineSeries::new(
                        [(-0.5, value), (n as f64 - 0.5, value)],
                        6,
                        4,
                        color.stroke_width(1),
                    ))
                    .map_err(|e| e.to_string())?;
            }
        }
        Ok(())
    })
}

/// `s` cut to `max` characters, the last of them an ellipsis.
fn shorten(s: &str, max: usize) -> String {
    if s.chars().count() <= max {
        return s.to_string();
    }
    let mut t: String = s.chars().take(max.saturating_sub(1)).collect();
    t.push('\u{2026}');
    t
}

/// Histogram of a latent's positive activations.
pub fn histogram(path: &Path, latent: usize, h: &Histogram) -> Result<()> {
    let top = h.counts.iter().cloned().max().unwrap_or(0).max(1) as f64;
    let xmax = h.edges.last().cloned().unwrap_or(1.0).max(1e-12);
    let spec = Spec {
        caption: format!("Latent {latent}: positive activations"),
        width: W,
        x: 0.0..xmax,
        x_ticks: nice_ticks(&(0.0..xmax)),
        x_desc: "activation",
        y: 0.0..top * 1.05,
        y_desc: "tokens",
        x_grid: true,
        legend: Vec::new(),
    };
    draw_chart(path, spec, |chart| {
        chart
            .draw_series(h.counts.iter().enumerate().map(|(i, c)| {
                Rectangle::new(
                    [(h.edges[i], 0.0), (h.edges[i + 1], *c as f64)],
                    HIST_BAR.filled(),
                )
            }))
            .map_err(|e| e.to_string())?;
        Ok(())
    })
}

/// Histogram of crosscoder latents' relative decoder norm (tuned / (base + tuned)), one
/// colour per class. `bins[c][i]` counts class `c` (`classes[c]` names it) in bin i of
/// `[i / n, (i + 1) / n)`; classes are stacked in the order given.
pub fn relative_norm_histogram(
    path: &Path,
    caption: &str,
    classes: &[String],
    bins: &[Vec<u64>],
) -> Result<()> {
    const COLORS: [RGBColor; 4] = [
        RGBColor(0x2c, 0xa0, 0x2c),
        RGBColor(0xff, 0x7f, 0x0e),
        RGBColor(0x1f, 0x77, 0xb4),
        RGBColor(0x9e, 0x9e, 0x9e),
    ];
    let n = bins.first().map_or(0, Vec::len).max(1);
    let totals: Vec<u64> = (0..n)
        .map(|i| bins.iter().map(|b| b.get(i).copied().unwrap_or(0)).sum())
        .collect();
    let top = totals.iter().copied().max().unwrap_or(0).max(1) as f64;
    let spec = Spec {
        caption: caption.to_string(),
        width: W,
        x: 0.0..1.0,
        x_ticks: nice_ticks(&(0.0..1.0)),
        x_desc: "relative decoder norm |d_tuned| / (|d_base| + |d_tuned|)",
        y: 0.0..top * 1.05,
        y_desc: "latents",
        x_grid: true,
        legend: classes
            .iter()
            .enumerate()
            .map(|(c, name)| (name.clone(), Swatch::Bar(COLORS[c % COLORS.len()])))
            .collect(),
    };
    draw_chart(path, spec, |chart| {
        let mut base = vec![0u64; n];
        for (c, counts) in bins.iter().enumerate() {
            let color = COLORS[c % COLORS.len()];
            chart
                .draw_series(
                    counts
                        .iter()
                        .enumerate()
                        .filter(|(_, k)| **k > 0)
                        .map(|(i, k)| {
                            let (x0, x1) = (i as f64 / n as f64, (i + 1) as f64 / n as f64);
                            let y0 = base[i] as f64;
                            Rectangle::new([(x0, y0), (x1, y0 + *k as f64)], color.filled())
                        }),
                )
                .map_err(|e| e.to_string())?;
            for (b, k) in base.iter_mut().zip(counts) {
                *b += k;
            }
        }
        Ok(())
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::stats::LatentStats;
    use crate::workflow::diff::{self, DiffOptions};
    use crate::workflow::monitor;
    use crate::workflow::pairing::paired_for_tests as paired;

    /// One SVG element: tag, attributes, and the text of a `<text>`.
    struct El {
        tag: String,
        attrs: Vec<(String, String)>,
        text: String,
    }

    impl El {
        fn get(&self, k: &str) -> Option<&str> {
            self.attrs
                .iter()
                .find(|(n, _)| n == k)
                .map(|(_, v)| v.as_str())
        }
        fn num(&self, k: &str) -> f64 {
            self.get(k)
                .unwrap_or_else(|| panic!("<{}> without {k}", self.tag))
                .parse()
                .unwrap()
        }
        /// x0, y0, x1, y1 of a rect.
        fn rect(&self) -> (f64, f64, f64, f64) {
            let (x, y) = (self.num("x"), self.num("y"));
            (x, y, x + self.num("width"), y + self.num("height"))
        }
    }

    fn elements(svg: &str) -> Vec<El> {
        let mut v = Vec::new();
        let mut rest = svg;
        while let Some(i) = rest.find('<') {
            rest = &rest[i + 1..];
            if rest.starts_with(['/', '?', '!']) {
                continue;
            }
            let end = rest.find('>').unwrap();
            let head = rest[..end].trim_end_matches('/');
            let (tag, attrs) = head.split_once(' ').unwrap_or((head, ""));
            let text = if tag == "text" {
                let close = rest.find("</text>").unwrap();
                rest[end + 1..close]
                    .trim()
                    .replace("&lt;", "<")
                    .replace("&gt;", ">")
                    .replace("&quot;", "\"")
                    .replace("&apos;", "'")
                    .replace("&amp;", "&")
            } else {
                String::new()
            };
            v.push(El {
                tag: tag.to_string(),
                attrs: parse_attrs(attrs),
                text,
            });
            rest = &rest[end + 1..];
        }
        v
    }

    /// A text's extent on the canvas: its width estimated as 0.6 x font size per
    /// character, from 0.8 em above the baseline to 0.25 em below, with its transform.
    fn text_box(e: &El) -> (f64, f64, f64, f64) {
        let fs = e.num("font-size");
        let w = 0.6 * fs * e.text.chars().count() as f64;
        let (x, y) = (e.num("x"), e.num("y"));
        let (x0, x1) = match e.get("text-anchor") {
            Some("middle") => (x - w / 2.0, x + w / 2.0),
            Some("end") => (x - w, x),
            _ => (x, x + w),
        };
        let (y0, y1) = (y - 0.8 * fs, y + 0.25 * fs);
        let (mut tx, mut ty, mut angle) = (0.0, 0.0, 0.0f64);
        if let Some(t) = e.get("transform") {
            let nums: Vec<f64> = t
                .split(|c: char| !(c.is_ascii_digit() || c == '.' || c == '-'))
                .filter_map(|p| p.parse().ok())
                .collect();
            assert!(
                t.starts_with("translate(") && nums.len() == 3,
                "ImageMagick draws only translate(x y) rotate(a): {t}"
            );
            (tx, ty, angle) = (nums[0], nums[1], nums[2].to_radians());
        }
        let (c, s) = (angle.cos(), angle.sin());
        let pts = [(x0, y0), (x1, y0), (x0, y1), (x1, y1)]
            .map(|(px, py)| (tx + px * c - py * s, ty + px * s + py * c));
        let xs = pts.map(|p| p.0);
        let ys = pts.map(|p| p.1);
        (
            xs.iter().cloned().fold(f64::INFINITY, f64::min),
            ys.iter().cloned().fold(f64::INFINITY, f64::min),
            xs.iter().cloned().fold(f64::NEG_INFINITY, f64::max),
            ys.iter().cloned().fold(f64::NEG_INFINITY, f64::max),
        )
    }

    /// Reads a plot and checks what every plot must satisfy: no `opacity` and no text
    /// shift (`dy`) that ImageMagick would ignore, every text inside the canvas.
    fn read_plot(path: &Path) -> Vec<El> {
        let svg = std::fs::read_to_string(path).unwrap();
        assert!(
            !svg.contains("opacity"),
            "{}: opacity attribute",
            path.display()
        );
        let els = elements(&svg);
        let canvas = els.iter().find(|e| e.tag == "svg").unwrap();
        let (w, h) = (canvas.num("width"), canvas.num("height"));
        for t in els.iter().filter(|e| e.tag == "text") {
            assert!(t.get("dy").is_none(), "dy on {:?}", t.text);
            let (x0, y0, x1, y1) = text_box(t);
            assert!(
                x0 >= 0.0 && y0 >= 0.0 && x1 <= w && y1 <= h,
                "{}: text {:?} at ({x0:.0}, {y0:.0})-({x1:.0}, {y1:.0}) leaves the {w}x{h} canvas",
                path.display(),
                t.text
            );
        }
        els
    }

    fn stats(n: usize, mean: impl Fn(usize) -> f64) -> LatentStats {
        let mut s = LatentStats::new("fp", n);
        s.n_tokens = 1000;
        for i in 0..n {
            let m = mean(i);
            s.sum[i] = m * 1000.0;
            s.sum_sq[i] = (m * m + 0.01) * 1000.0;
            s.n_active[i] = ((i * 13) % 1000) as u64;
        }
        s
    }

    /// A diff of `n` latents over `m` fine-tunes, `top` latents in the top list.
    fn report(n: usize, m: usize, top: usize) -> DiffReport {
        let base = stats(n, |i| (i % 7) as f64 * 0.01);
        let tuned: Vec<LatentStats> = (0..m)
            .map(|j| {
                stats(n, |i| {
                    (i % 7) as f64 * 0.01 + ((i * 37 + j * 11) % 101) as f64 / 100.0 - 0.3
                })
            })
            .collect();
        let named: Vec<(String, &LatentStats)> = tuned
            .iter()
            .enumerate()
            .map(|(j, s)| (format!("fine-tune-{j}"), s))
            .collect();
        let opts = DiffOptions {
            top,
            bottom: 5,
            ..Default::default()
        };
        diff::diff("base", &base, &named, &paired(), &opts).unwrap()
    }

    fn legend_box(els: &[El]) -> (f64, f64, f64, f64) {
        let boxes: Vec<_> = els
            .iter()
            .filter(|e| e.tag == "rect" && e.get("stroke") == Some("#000000"))
            .collect();
        assert_eq!(boxes.len(), 1, "one legend box");
        boxes[0].rect()
    }

    fn overlaps(a: (f64, f64, f64, f64), b: (f64, f64, f64, f64)) -> bool {
        a.0 < b.2 && b.0 < a.2 && a.1 < b.3 && b.1 < a.3
    }

    fn hex(c: RGBColor) -> String {
        format!("#{:02X}{:02X}{:02X}", c.0, c.1, c.2)
    }

    #[test]
    fn top_deltas_draws_top_bars_each_labelled_under_its_own_group() {
        let dir = tempfile::tempdir().unwrap();
        // (latents in the SAE, fine-tunes, --top): short and six-digit ids, over the cap.
        for (n, m, top) in [(400, 1, 7), (400, 3, 20), (150_000, 2, 35), (400, 4, 80)] {
            let r = report(n, m, top);
            let path = dir.path().join(format!("top_{n}_{m}_{top}.svg"));
            top_deltas(&path, &r).unwrap();
            let els = read_plot(&path);
            let shown = top.min(MAX_PLOTTED_LATENTS);
            let legend = legend_box(&els);
            let colours: Vec<String> = (0..m).map(|j| hex(series_color(j))).collect();
            let mut bars: Vec<(f64, f64, f64, f64)> = els
                .iter()
                .filter(|e| e.tag == "rect")
                .filter(|e| colours.iter().any(|c| e.get("fill") == Some(c)))
                .map(El::rect)
                .filter(|b| !overlaps(*b, legend))
                .collect();
            assert_eq!(bars.len(), shown * m, "bars for top {top} x {m} fine-tunes");
            bars.sort_by(|a, b| a.0.total_cmp(&b.0));
            let mut labels: Vec<&El> = els
                .iter()
                .filter(|e| e.tag == "text" && e.get("text-anchor") == Some("middle"))
                .filter(|e| e.text.parse::<usize>().is_ok())
                .collect();
            assert_eq!(labels.len(), shown, "one label per latent");
            labels.sort_by(|a, b| a.num("x").total_cmp(&b.num("x")));
            for (i, (group, label)) in bars.chunks(m).zip(&labels).enumerate() {
                assert_eq!(label.text, r.latents[i].latent.to_string());
                let (lo, hi) = (group[0].0, group[m - 1].2);
                let x = label.num("x");
                assert!(
                    lo <= x && x <= hi,
                    "label {} at {x} outside its bars {lo}..{hi}",
                    label.text
                );
                // Under the bars: below the lowest bar bottom of the whole plot.
                let bottom = bars.iter().map(|b| b.3).fold(0.0, f64::max);
                assert!(
                    text_box(label).1 >= bottom - 0.5,
                    "label {} not under the bars",
                    label.text
                );
            }
            let caption = els.iter().find(|e| e.tag == "text").unwrap();
            assert_eq!(
                caption.text.contains("capped"),
                top > MAX_PLOTTED_LATENTS,
                "{}",
                caption.text
            );
            assert_eq!(cap_note(top).is_some(), top > MAX_PLOTTED_LATENTS);
        }
    }

    #[test]
    fn delta_vs_freq_labels_its_highlighted_points_and_explains_them() {
        let dir = tempfile::tempdir().unwrap();
        // The first 30 latents of a 1-fine-tune diff crowd near one another.
        for (k, r) in [
            report(3000, 1, 30),
            report(3000, 1, 50),
            report(3000, 2, 12),
        ]
        .iter()
        .enumerate()
        {
            let path = dir.path().join(format!("scatter{k}.svg"));
            delta_vs_freq(&path, r).unwrap();
            check_scatter(&path, r);
        }
    }

    fn check_scatter(path: &Path, r: &DiffReport) {
        let n = r.latents.len();
        let els = read_plot(path);
        let legend = legend_box(&els);
        let red = hex(HIGHLIGHT);
        let points: Vec<&El> = els
            .iter()
            .filter(|e| e.tag == "circle" && e.get("fill") == Some(&red))
            .filter(|e| {
                let (x, y) = (e.num("cx"), e.num("cy"));
                !overlaps((x, y, x, y), legend)
            })
            .collect();
        assert_eq!(points.len(), n);
        let labels: Vec<&El> = els
            .iter()
            .filter(|e| e.tag == "text" && e.get("fill") == Some(&red))
            .collect();
        assert_eq!(labels.len(), n);
        let leaders: Vec<Vec<f64>> = els
            .iter()
            .filter(|e| e.tag == "polyline" && e.get("stroke") == Some(&red))
            .map(|e| {
                e.get("points")
                    .unwrap()
                    .split([' ', ','])
                    .filter_map(|v| v.parse().ok())
                    .collect()
            })
            .collect();
        let near =
            |a: (f64, f64), b: (f64, f64), d: f64| (a.0 - b.0).abs() <= d && (a.1 - b.1).abs() <= d;
        for l in &r.latents {
            let label = labels
                .iter()
                .find(|t| t.text == l.latent.to_string())
                .unwrap_or_else(|| panic!("latent {} has no label", l.latent));
            let at = (label.num("x"), label.num("y"));
            // Beside one of the points, or joined to one by a leader line.
            let beside = points
                .iter()
                .any(|p| near((p.num("cx"), p.num("cy")), at, 9.0));
            let joined = leaders.iter().any(|v| {
                near((v[2], v[3]), at, 6.0)
                    && points
                        .iter()
                        .any(|p| near((p.num("cx"), p.num("cy")), (v[0], v[1]), 6.0))
            });
            assert!(
                beside || joined,
                "label {} is far from every point",
                label.text
            );
        }
        for (i, a) in labels.iter().enumerate() {
            for b in &labels[i + 1..] {
                assert!(
                    !overlaps(text_box(a), text_box(b)),
                    "labels {} and {} overlap",
                    a.text,
                    b.text
                );
            }
        }
        let legend_text: Vec<&str> = els
            .iter()
            .filter(|e| e.tag == "text")
            .map(|e| e.text.as_str())
            .collect();
        let want = format!("top {n} by avg-delta");
        assert!(
            legend_text.iter().any(|t| t.starts_with(&want)),
            "{legend_text:?}"
        );
        for c in els.iter().filter(|e| e.tag == "circle") {
            let (x, y, r) = (c.num("cx"), c.num("cy"), c.num("r"));
            let inside = overlaps((x - r, y - r, x + r, y + r), legend);
            let swatch = x > legend.0 && x < legend.2 && y > legend.1 && y < legend.3;
            assert!(!inside || swatch, "a point at ({x}, {y}) under the legend");
        }
    }

    #[test]
    fn trajectories_label_every_checkpoint_inside_the_canvas() {
        let dir = tempfile::tempdir().unwrap();
        let n = 50;
        let base = stats(n, |_| 0.1);
        let cks: Vec<LatentStats> = (0..12)
            .map(|k| stats(n, |i| 0.1 + (i as f64 * 0.01) * k as f64))
            .collect();
        let named: Vec<(String, &LatentStats)> = cks
            .iter()
            .enumerate()
            .map(|(k, s)| (format!("checkpoint-step-{:06}", (k + 1) * 100), s))
            .collect();
        let alarms = [monitor::Alarm::delta(0.5)];
        let r = monitor::monitor("base", &base, &named, &[3, 17, 42], &alarms, &paired()).unwrap();
        let path = dir.path().join("traj.svg");
        trajectories(&path, &r).unwrap();
        let els = read_plot(&path);
        let labels = els
            .iter()
            .filter(|e| e.tag == "text" && e.text.starts_with("check") && e.text != "checkpoint")
            .count();
        assert_eq!(labels, 12);
        // A short name is kept whole, the last one included.
        let r2 = monitor::monitor("base", &base, &named[..3], &[3], &alarms, &paired()).unwrap();
        trajectories(&path, &r2).unwrap();
        let els = read_plot(&path);
        assert!(els.iter().any(|e| e.text == "checkpoint-step-000300"));
    }

    #[test]
    fn histogram_is_portable_too() {
        let dir = tempfile::tempdir().unwrap();
        let h = Histogram {
            edges: (0..=20).map(|i| i as f64 * 0.173).collect(),
            counts: (0..20).map(|i| (i * 37 % 11) as u64).collect(),
            zeros: 5,
        };
        let path = dir.path().join("hist.svg");
        histogram(&path, 123_456, &h).unwrap();
        read_plot(&path);
    }

    #[test]
    fn portable_text_folds_the_shift_and_the_rotation_centre() {
        let t = portable_text_tag(
            r#"x="40" y="100" dy="0.76em" text-anchor="middle" font-size="10" opacity="1" transform="rotate(270, 40, 100)""#,
        );
        assert_eq!(
            t,
            r#"<text x="0" y="7.6" text-anchor="middle" font-size="10" opacity="1" transform="translate(40 100) rotate(270)" stroke="none""#
        );
        let svg = portable_svg(
            r#"<svg><text x="1" y="2" dy="-0.5ex" font-size="10" opacity="1">a</text></svg>"#,
        );
        assert_eq!(
            svg,
            r#"<svg><text x="1" y="-0.5" font-size="10" stroke="none">a</text></svg>"#
        );
    }
}
