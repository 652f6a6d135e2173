//! Outputs of the synthetic experiment: stdout tables, `summary.json`, `curves.csv`, `gap.svg`,
//! `problems.json`.

use crate::synthetic::{quantile, CellResult, Problem, SeedResult, SyntheticConfig};
use balora_formats::atomic::write_atomic;
use nalgebra::DMatrix;
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

/// One (method, optimizer) cell across seeds: every seed's median gap at `step`, and that median
/// divided by the baseline's (the first method with the same optimizer) on the same seed.
#[derive(Debug, Clone, PartialEq)]
pub struct AcrossSeeds {
    /// Method label.
    pub method: String,
    /// Optimizer label.
    pub optimizer: String,
    /// Per seed: the median gap over trajectories at `step` (NaN if every trajectory diverged).
    pub medians: Vec<f64>,
    /// Per seed: `medians[i]` over the baseline cell's median on the same seed.
    pub ratios: Vec<f64>,
}

impl AcrossSeeds {
    /// (min, median, max) of the per-seed medians.
    pub fn spread(&self) -> (f64, f64, f64) {
        spread(&self.medians)
    }
    /// (min, median, max) of the per-seed ratios to the baseline.
    pub fn ratio_spread(&self) -> (f64, f64, f64) {
        spread(&self.ratios)
    }
}

fn spread(v: &[f64]) -> (f64, f64, f64) {
    let mut s: Vec<f64> = v.iter().copied().filter(|x| x.is_finite()).collect();
    s.sort_by(f64::total_cmp);
    match (s.first(), s.last()) {
        (Some(&lo), Some(&hi)) => (lo, quantile(&s, 0.5), hi),
        _ => (f64::NAN, f64::NAN, f64::NAN),
    }
}

/// The per-seed medians at `step` of every cell, in the cells' order.
pub fn across_seeds(results: &[SeedResult], step: usize) -> Vec<AcrossSeeds> {
    let Some(first) = results.first() else {
        return Vec::new();
    };
    let median_at = |c: &CellResult| c.quartiles().get(step).map_or(f64::NAN, |q| q.1);
    first
        .cells
        .iter()
        .map(|cell| {
            let mut medians = Vec::new();
            let mut ratios = Vec::new();
            for r in results {
                let find = |m: &str| {
                    r.cells
                        .iter()
                        .find(|c| c.method == m && c.optimizer == cell.optimizer)
                };
                let base = first.cells.iter().find(|c| c.optimizer == cell.optimizer);
                let mine = find(&cell.method).map_or(f64::NAN, median_at);
                let base = base
                    .and_then(|b| find(&b.method))
                    .map_or(f64::NAN, median_at);
                medians.push(mine);
                ratios.push(mine / base);
            }
            AcrossSeeds {
                method: cell.method.clone(),
                optimizer: cell.optimizer.clone(),
                medians,
                ratios,
            }
        })
        .collect()
}

/// The across-seeds table printed on stdout: per seed the median gap at the last step (and its
/// ratio to the first method with the same optimizer), then the median and range over seeds.
pub fn seeds_table(results: &[SeedResult], steps: usize) -> String {
    let mut out = String::new();
    let seeds: Vec<String> = results.iter().map(|r| format!("seed {}", r.seed)).collect();
    let _ = write!(
        out,
        "gap@{steps} (median over trajectories; ×first method)\n{:<18} {:<8}",
        "method", "optim"
    );
    for s in &seeds {
        let _ = write!(out, " {s:>18}");
    }
    let _ = writeln!(
        out,
        " {:>28} {:>22}",
        "median [min, max] of seeds", "ratio med [min, max]"
    );
    for a in across_seeds(results, steps) {
        let _ = write!(out, "{:<18} {:<8}", a.method, a.optimizer);
        for (m, r) in a.medians.iter().zip(&a.ratios) {
            let _ = write!(out, " {:>18}", format!("{m:.3e} (×{r:.2})"));
        }
        let (lo, med, hi) = a.spread();
        let (rlo, rmed, rhi) = a.ratio_spread();
        let _ = writeln!(
            out,
            " {:>28} {:>22}",
            format!("{med:.3e} [{lo:.2e}, {hi:.2e}]"),
            format!("{rmed:.2} [{rlo:.2}, {rhi:.2}]")
        );
    }
    out
}

fn cell_json(c: &CellResult) -> serde_json::Value {
    let q = c.quartiles();
    let at = |f: fn(&(f64, f64, f64)) -> f64| -> serde_json::Map<String, serde_json::Value> {
        REPORT_STEPS
            .iter()
            .filter_map(|&s| q.get(s).map(|v| (s.to_string(), json!(f(v)))))
            .collect()
    };
    json!({
        "method": c.method,
        "optimizer": c.optimizer,
        "median_gap": at(|v| v.1),
        "q1_gap": at(|v| v.0),
        "q3_gap": at(|v| v.2),
        "chosen_lr": c.chosen_lr,
        "final_gap": c.gaps.iter().map(|g| g.last().copied()).collect::<Vec<_>>(),
    })
}

fn rows(m: &DMatrix<f64>) -> Vec<Vec<f64>> {
    m.row_iter().map(|r| r.iter().copied().collect()).collect()
}

fn problem_json(p: &Problem) -> serde_json::Value {
    json!({ "w0": rows(&p.w0), "target": rows(&p.target), "a0": rows(&p.a0), "optimal_loss": p.optimal_loss })
}

/// Writes `summary.json`, `curves.csv`, `gap.svg` (the first seed) and `problems.json` (every
/// seed's matrices, row-major, for independent re-implementations) into `dir`; returns the paths.
pub fn write_outputs(
    results: &[SeedResult],
    cfg: &SyntheticConfig,
    backend: &str,
    seconds: f64,
    dir: &Path,
) -> std::io::Result<Vec<PathBuf>> {
    std::fs::create_dir_all(dir)?;
    let across: Vec<serde_json::Value> = across_seeds(results, cfg.steps)
        .iter()
        .map(|a| {
            let (lo, med, hi) = a.spread();
            let (rlo, rmed, rhi) = a.ratio_spread();
            json!({
                "method": a.method, "optimizer": a.optimizer, "step": cfg.steps,
                "per_seed_median_gap": a.medians, "median": med, "min": lo, "max": hi,
                "per_seed_ratio": a.ratios, "ratio_median": rmed, "ratio_min": rlo, "ratio_max": rhi,
            })
        })
        .collect();
    let summary = json!({
        "experiment": "synthetic",
        "backend": backend,
        "seconds": seconds,
        "seeds": results.iter().map(|r| r.seed).collect::<Vec<_>>(),
        "protocol": cfg.protocol,
        "config": cfg,
        "per_seed": results.iter().map(|r| json!({
            "seed": r.seed,
            "cells": r.cells.iter().map(cell_json).collect::<Vec<_>>(),
        })).collect::<Vec<_>>(),
        "across_seeds": across,
    });
    let summary_path = dir.join("summary.json");
    write_atomic(
        &summary_path,
        serde_json::to_string_pretty(&summary)?.as_bytes(),
    )?;

    let mut csv = String::from("seed,method,optimizer,step,q1,median,q3\n");
    for r in results {
        for c in &r.cells {
            for (k, (q1, m, q3)) in c.quartiles().iter().enumerate() {
                let _ = writeln!(
                    csv,
                    "{},{},{},{k},{q1:e},{m:e},{q3:e}",
                    r.seed, c.method, c.optimizer
                );
            }
        }
    }
    let csv_path = dir.join("curves.csv");
    write_atomic(&csv_path, csv.as_bytes())?;

    let problems = json!(results
        .iter()
        .map(|r| json!({
            "seed": r.seed,
            "protocol": cfg.protocol,
            "trajectories": r.problems.iter().map(problem_json).collect::<Vec<_>>(),
        }))
        .collect::<Vec<_>>());
    let problems_path = dir.join("problems.json");
    write_atomic(&problems_path, serde_json::to_string(&problems)?.as_bytes())?;

    let svg_path = dir.join("gap.svg");
    let (seed, cells) = results
        .first()
        .map_or((cfg.seed, &[][..]), |r| (r.seed, &r.cells[..]));
    plot(cells, cfg, seed, &svg_path).map_err(|e| std::io::Error::other(e.to_string()))?;
    Ok(vec![summary_path, csv_path, problems_path, svg_path])
}

fn plot(
    cells: &[CellResult],
    cfg: &SyntheticConfig,
    seed: u64,
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
                format!(
                    "{}×{}, r={}, seed {seed}, optimizer: {opt}",
                    cfg.dim, cfg.dim, cfg.rank
                ),
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
