//! Outputs of the synthetic experiment: stdout table, `summary.json`, `curves.csv`, `gap.svg`.

use crate::synthetic::{CellResult, SyntheticConfig};
use plotters::prelude::*;
use serde_json::json;
use std::fmt::Write as _;
use std::path::{Path, PathBuf};

/// Steps at which the summary reports the median gap.
pub const REPORT_STEPS: [usize; 4] = [10, 25, 50, 100];

/// The table printed on stdout.
pub fn table(cells: &[CellResult], steps: usize) -> String {
    let cols: Vec<usize> = REPORT_STEPS
        .iter()
        .copied()
        .filter(|&s| s <= steps)
        .collect();
    let mut out = String::new();
    let _ = write!(out, "{:<18} {:<8}", "method", "optim");
    for s in &cols {
        let _ = write!(out, " {:>22}", format!("gap@{s} med [q1,q3]"));
    }
    let _ = writeln!(out, "  {:>10}", "median lr");
    for c in cells {
        let q = c.quartiles();
        let _ = write!(out, "{:<18} {:<8}", c.method, c.optimizer);
        for &s in &cols {
            match q.get(s) {
                Some((q1, m, q3)) => {
                    let _ = write!(out, " {:>22}", format!("{m:.2e} [{q1:.1e},{q3:.1e}]"));
                }
                None => {
                    let _ = write!(out, " {:>22}", "diverged");
                }
            }
        }
        let mut lrs: Vec<f64> = c.chosen_lr.iter().flatten().copied().collect();
        lrs.sort_by(f64::total_cmp);
        let _ = writeln!(out, "  {:>10.4}", crate::synthetic::quantile(&lrs, 0.5));
    }
    out
}

/// Writes `summary.json`, `curves.csv` and `gap.svg` into `dir`; returns their paths.
pub fn write_outputs(
    cells: &[CellResult],
    cfg: &SyntheticConfig,
    backend: &str,
    seconds: f64,
    dir: &Path,
) -> std::io::Result<Vec<PathBuf>> {
    std::fs::create_dir_all(dir)?;
    let summary = json!({
        "experiment": "synthetic",
        "backend": backend,
        "seconds": seconds,
        "seed": cfg.seed,
        "config": cfg,
        "cells": cells.iter().map(|c| {
            let q = c.quartiles();
            let at = |f: fn(&(f64, f64, f64)) -> f64| -> serde_json::Map<String, serde_json::Value> {
                REPORT_STEPS.iter().filter_map(|&s| q.get(s).map(|v| (s.to_string(), json!(f(v))))).collect()
            };
            json!({
                "method": c.method,
                "optimizer": c.optimizer,
                "median_gap": at(|v| v.1),
                "q1_gap": at(|v| v.0),
                "q3_gap": at(|v| v.2),
                "chosen_lr": c.chosen_lr,
            })
        }).collect::<Vec<_>>(),
    });
    let summary_path = dir.join("summary.json");
    write_atomic(
        &summary_path,
        serde_json::to_string_pretty(&summary)?.as_bytes(),
    )?;

    let mut csv = String::from("method,optimizer,step,q1,median,q3\n");
    for c in cells {
        for (k, (q1, m, q3)) in c.quartiles().iter().enumerate() {
            let _ = writeln!(csv, "{},{},{k},{q1:e},{m:e},{q3:e}", c.method, c.optimizer);
        }
    }
    let csv_path = dir.join("curves.csv");
    write_atomic(&csv_path, csv.as_bytes())?;

    let svg_path = dir.join("gap.svg");
    plot(cells, cfg, &svg_path).map_err(|e| std::io::Error::other(e.to_string()))?;
    Ok(vec![summary_path, csv_path, svg_path])
}

/// Writes `path` atomically and durably (temporary file, `fsync`, rename, folder `fsync`):
/// [`balora_formats::atomic::write_atomic`]. The error names the path.
pub fn write_atomic(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    Ok(balora_formats::atomic::write_atomic(path, bytes)?)
}

fn plot(
    cells: &[CellResult],
    cfg: &SyntheticConfig,
    path: &Path,
) -> Result<(), Box<dyn std::error::Error>> {
    let optims: Vec<&str> = cfg.optimizers.iter().map(|o| o.label.as_str()).collect();
    let root = SVGBackend::new(path, (560 * optims.len().max(1) as u32, 420)).into_drawing_area();
    root.fill(&WHITE)?;
    let panels = root.split_evenly((1, optims.len().max(1)));
    let palette = [
        RGBColor(31, 119, 180),
        RGBColor(214, 39, 40),
        RGBColor(44, 160, 44),
        RGBColor(148, 103, 189),
        RGBColor(255, 127, 14),
    ];
    for (panel, opt) in panels.iter().zip(&optims) {
        let mine: Vec<&CellResult> = cells.iter().filter(|c| c.optimizer == *opt).collect();
        let floor = 1e-8;
        let (mut lo, mut hi) = (f64::INFINITY, 0.0f64);
        for c in &mine {
            for (q1, _, q3) in c.quartiles() {
                lo = lo.min(q1.max(floor));
                hi = hi.max(q3.max(floor));
            }
        }
        if !lo.is_finite() || hi <= lo {
            (lo, hi) = (floor, 1.0);
        }
        let mut chart = ChartBuilder::on(panel)
            .caption(
                format!("{}×{}, r={}, optimizer: {opt}", cfg.dim, cfg.dim, cfg.rank),
                ("sans-serif", 18),
            )
            .margin(12)
            .x_label_area_size(36)
            .y_label_area_size(60)
            .build_cartesian_2d(0f64..cfg.steps as f64, (lo * 0.5..hi * 2.0).log_scale())?;
        chart
            .configure_mesh()
            .x_desc("step")
            .x_label_formatter(&|v| format!("{v:.0}"))
            .y_desc("loss − optimal rank-r loss")
            .y_label_formatter(&|v| format!("{v:.0e}"))
            .draw()?;
        for (i, c) in mine.iter().enumerate() {
            let color = palette[i % palette.len()];
            let q = c.quartiles();
            let mut band: Vec<(f64, f64)> = q
                .iter()
                .enumerate()
                .map(|(k, v)| (k as f64, v.2.max(floor)))
                .collect();
            band.extend(
                q.iter()
                    .enumerate()
                    .rev()
                    .map(|(k, v)| (k as f64, v.0.max(floor))),
            );
            chart.draw_series(std::iter::once(Polygon::new(
                band,
                color.mix(0.18).filled(),
            )))?;
            chart
                .draw_series(LineSeries::new(
                    q.iter()
                        .enumerate()
                        .map(|(k, v)| (k as f64, v.1.max(floor))),
                    color.stroke_width(2),
                ))?
                .label(c.method.clone())
                .legend(move |(x, y)| {
                    PathElement::new(vec![(x, y), (x + 18, y)], color.stroke_width(2))
                });
        }
        chart
            .configure_series_labels()
            .background_style(WHITE.mix(0.85))
            .border_style(BLACK)
            .draw()?;
    }
    root.present()?;
    Ok(())
}
