//! Line plots (SVG) of loss curves.

use plotters::coord::types::RangedCoordf64;
use plotters::prelude::*;
use std::ops::Range;
use std::path::Path;

const PALETTE: [RGBColor; 8] = [
    RGBColor(31, 119, 180),
    RGBColor(214, 39, 40),
    RGBColor(44, 160, 44),
    RGBColor(148, 103, 189),
    RGBColor(255, 127, 14),
    RGBColor(140, 86, 75),
    RGBColor(227, 119, 194),
    RGBColor(127, 127, 127),
];

type PlotResult = Result<(), Box<dyn std::error::Error>>;
type Chart<'a, 'b> = ChartContext<'a, SVGBackend<'b>, Cartesian2d<RangedCoordf64, RangedCoordf64>>;

/// The x range and the (5 % padded) y range of the finite points; a unit box when there are none.
fn bounds(points: impl Iterator<Item = (f64, f64)>) -> (Range<f64>, Range<f64>) {
    let (mut x0, mut x1, mut y0, mut y1) = (
        f64::INFINITY,
        f64::NEG_INFINITY,
        f64::INFINITY,
        f64::NEG_INFINITY,
    );
    for (x, y) in points.filter(|(x, y)| x.is_finite() && y.is_finite()) {
        x0 = x0.min(x);
        x1 = x1.max(x);
        y0 = y0.min(y);
        y1 = y1.max(y);
    }
    if !x0.is_finite() {
        (x0, x1, y0, y1) = (0.0, 1.0, 0.0, 1.0);
    }
    if x1 <= x0 {
        x1 = x0 + 1.0;
    }
    let pad = ((y1 - y0) * 0.05).max(1e-6);
    (x0..x1, (y0 - pad)..(y1 + pad))
}

/// A 720×440 SVG chart at `path` with title, axes and mesh over `frame`; `draw` adds the series,
/// then the legend is drawn.
fn framed(
    path: &Path,
    title: &str,
    x_desc: &str,
    y_desc: &str,
    frame: (Range<f64>, Range<f64>),
    draw: impl FnOnce(&mut Chart<'_, '_>) -> PlotResult,
) -> PlotResult {
    let root = SVGBackend::new(path, (720, 440)).into_drawing_area();
    root.fill(&WHITE)?;
    let mut chart = ChartBuilder::on(&root)
        .caption(title, ("sans-serif", 18))
        .margin(12)
        .x_label_area_size(36)
        .y_label_area_size(56)
        .build_cartesian_2d(frame.0, frame.1)?;
    chart
        .configure_mesh()
        .x_desc(x_desc)
        .y_desc(y_desc)
        .draw()?;
    draw(&mut chart)?;
    chart
        .configure_series_labels()
        .background_style(WHITE.mix(0.85))
        .border_style(BLACK)
        .draw()?;
    root.present()?;
    Ok(())
}

/// One curve.
#[derive(Debug, Clone)]
pub struct Series {
    /// Legend label.
    pub label: String,
    /// Points `(x, y)`.
    pub points: Vec<(f64, f64)>,
    /// Dashed (thin) instead of solid.
    pub thin: bool,
}

/// Draws `series` into an SVG at `path`.
pub fn line_plot(
    path: &Path,
    title: &str,
    x_desc: &str,
    y_desc: &str,
    series: &[Series],
) -> Result<(), Box<dyn std::error::Error>> {
    let frame = bounds(series.iter().flat_map(|s| s.points.iter().copied()));
    framed(path, title, x_desc, y_desc, frame, |chart| {
        for (i, s) in series.iter().enumerate() {
            let color = PALETTE[i % PALETTE.len()];
            let style = if s.thin {
                color.mix(0.45).stroke_width(1)
            } else {
                color.stroke_width(2)
            };
            chart
                .draw_series(LineSeries::new(s.points.iter().copied(), style))?
                .label(s.label.clone())
                .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 18, y)], style));
        }
        Ok(())
    })
}

/// The loss plot of one run: training loss (thin) and evaluation loss vs step.
pub fn loss_plot(
    path: &Path,
    title: &str,
    history: &[crate::MetricRecord],
) -> Result<(), Box<dyn std::error::Error>> {
    let of = |kind: &str| -> Vec<(f64, f64)> {
        history
            .iter()
            .filter(|r| r.kind == kind)
            .map(|r| (r.step as f64, r.loss))
            .collect()
    };
    line_plot(
        path,
        title,
        "step",
        "loss (nats/token)",
        &[
            Series {
                label: "train".into(),
                points: of("train"),
                thin: true,
            },
            Series {
                label: "eval".into(),
                points: of("eval"),
                thin: false,
            },
        ],
    )
}

/// One panel of a [`heat_map`]: `values[y][x]` (`None`: no value, drawn grey with "—").
#[derive(Debug, Clone)]
pub struct HeatPanel {
    /// Panel title.
    pub title: String,
    /// Rows (y) of columns (x).
    pub values: Vec<Vec<Option<f64>>>,
}

/// A colour from dark blue (low) to yellow (high), `t` in [0, 1].
fn ramp(t: f64) -> RGBColor {
    let stops = [
        (68.0, 1.0, 84.0),
        (59.0, 82.0, 139.0),
        (33.0, 145.0, 140.0),
        (94.0, 201.0, 98.0),
        (253.0, 231.0, 37.0),
    ];
    let t = t.clamp(0.0, 1.0) * (stops.len() - 1) as f64;
    let i = (t.floor() as usize).min(stops.len() - 2);
    let f = t - i as f64;
    let (a, b) = (stops[i], stops[i + 1]);
    let mix = |x: f64, y: f64| (x + (y - x) * f).round() as u8;
    RGBColor(mix(a.0, b.0), mix(a.1, b.1), mix(a.2, b.2))
}

/// Heat maps side by side on one colour scale (low = dark), each cell labelled with its value:
/// `x_labels` along x, `y_labels` along y, one panel per entry of `panels`.
pub fn heat_map(
    path: &Path,
    title: &str,
    x_desc: &str,
    y_desc: &str,
    x_labels: &[String],
    y_labels: &[String],
    panels: &[HeatPanel],
) -> Result<(), Box<dyn std::error::Error>> {
    let vals: Vec<f64> = panels
        .iter()
        .flat_map(|p| p.values.iter().flatten().flatten().copied())
        .filter(|v| v.is_finite())
        .collect();
    let lo = vals.iter().copied().fold(f64::INFINITY, f64::min);
    let hi = vals.iter().copied().fold(f64::NEG_INFINITY, f64::max);
    let span = if hi > lo { hi - lo } else { 1.0 };
    let (nx, ny) = (x_labels.len().max(1), y_labels.len().max(1));
    let width = 120 + 360 * panels.len().max(1) as u32;
    let root = SVGBackend::new(path, (width, 120 + 60 * ny as u32)).into_drawing_area();
    root.fill(&WHITE)?;
    let root = root.titled(title, ("sans-serif", 18))?;
    let areas = root.split_evenly((1, panels.len().max(1)));
    for (area, panel) in areas.iter().zip(panels) {
        let mut chart = ChartBuilder::on(area)
            .caption(&panel.title, ("sans-serif", 15))
            .margin(8)
            .x_label_area_size(40)
            .y_label_area_size(64)
            .build_cartesian_2d(0.0..nx as f64, 0.0..ny as f64)?;
        let xl = |v: &f64| {
            let i = v.floor() as usize;
            if (v - i as f64 - 0.5).abs() < 1e-6 {
                x_labels.get(i).cloned().unwrap_or_default()
            } else {
                String::new()
            }
        };
        let yl = |v: &f64| {
            let i = v.floor() as usize;
            if (v - i as f64 - 0.5).abs() < 1e-6 {
                y_labels.get(i).cloned().unwrap_or_default()
            } else {
                String::new()
            }
        };
        chart
            .configure_mesh()
            .disable_mesh()
            .x_labels(2 * nx + 1)
            .y_labels(2 * ny + 1)
            .x_label_formatter(&xl)
            .y_label_formatter(&yl)
            .x_desc(x_desc)
            .y_desc(y_desc)
            .draw()?;
        for (y, row) in panel.values.iter().enumerate() {
            for (x, v) in row.iter().enumerate() {
                let (x, y) = (x as f64, y as f64);
                let (fill, text) = match v {
                    Some(v) if v.is_finite() => (ramp((v - lo) / span), format!("{v:.3}")),
                    _ => (RGBColor(200, 200, 200), "—".to_string()),
                };
                chart.draw_series(std::iter::once(Rectangle::new(
                    [(x, y), (x + 1.0, y + 1.0)],
                    fill.filled(),
                )))?;
                let light = matches!(v, Some(v) if v.is_finite() && (v - lo) / span < 0.6);
                let color = if light { WHITE } else { BLACK };
                chart.draw_series(std::iter::once(Text::new(
                    text,
                    (x + 0.3, y + 0.6),
                    ("sans-serif", 13).into_font().color(&color),
                )))?;
            }
        }
    }
    root.present()?;
    Ok(())
}

/// A curve with a shaded band: points `(x, y, low, high)`.
#[derive(Debug, Clone)]
pub struct Band {
    /// Legend label.
    pub label: String,
    /// `(x, y, low, high)`.
    pub points: Vec<(f64, f64, f64, f64)>,
}

/// Draws each band's `y` as a line over its shaded `[low, high]` range into an SVG at `path`.
pub fn band_plot(
    path: &Path,
    title: &str,
    x_desc: &str,
    y_desc: &str,
    bands: &[Band],
) -> Result<(), Box<dyn std::error::Error>> {
    let frame = bounds(
        bands
            .iter()
            .flat_map(|b| b.points.iter().flat_map(|p| [(p.0, p.2), (p.0, p.3)])),
    );
    framed(path, title, x_desc, y_desc, frame, |chart| {
        for (i, b) in bands.iter().enumerate() {
            let color = PALETTE[i % PALETTE.len()];
            let mut poly: Vec<(f64, f64)> = b.points.iter().map(|p| (p.0, p.3)).collect();
            poly.extend(b.points.iter().rev().map(|p| (p.0, p.2)));
            chart.draw_series(std::iter::once(Polygon::new(
                poly,
                color.mix(0.18).filled(),
            )))?;
            let style = color.stroke_width(2);
            chart
                .draw_series(LineSeries::new(b.points.iter().map(|p| (p.0, p.1)), style))?
                .label(b.label.clone())
                .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 18, y)], style));
        }
        Ok(())
    })
}
