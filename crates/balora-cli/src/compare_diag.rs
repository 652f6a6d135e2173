//! The adapter-diagnostics section of the `balora compare` report: balance gap, condition
//! number κ, ‖B‖/‖A‖ and the relative step of each factor over training (recorded with every
//! evaluation, see `balora_train::diagnostics`), for each method at its best learning rate.

use crate::compare_report::{CellRecord, GridMeta};
use anyhow::Result;
use balora_train::plot::{line_plot, Series};
use balora_train::MetricRecord;
use std::fmt::Write as _;
use std::path::Path;

type Getter = fn(&MetricRecord) -> Option<f64>;

const METRICS: [(&str, &str, Getter); 5] = [
    (
        "gap",
        "balance gap ‖BᵀB−AAᵀ‖/(‖BᵀB‖+‖AAᵀ‖)",
        |r| r.balance_gap,
    ),
    (
        "kappa",
        "log10 κ = log10((λmax+μmax)/min(λmin,μmin))",
        |r| r.log10_kappa,
    ),
    ("ratio", "‖B‖/‖A‖", |r| r.b_over_a),
    ("step-a", "relative step of A, ‖ΔA‖/‖A‖", |r| {
        r.step_a
    }),
    ("step-b", "relative step of B, ‖ΔB‖/‖B‖", |r| {
        r.step_b
    }),
];

/// Mean over cells of `f` at each eval step present in every cell.
fn mean_curve(cells: &[&CellRecord], f: Getter) -> Vec<(f64, f64)> {
    let Some(first) = cells.first() else {
        return Vec::new();
    };
    first
        .history
        .iter()
        .filter(|r| r.kind == "eval")
        .filter_map(|r0| {
            let v: Vec<f64> = cells
                .iter()
                .filter_map(|c| {
                    c.history
                        .iter()
                        .find(|r| r.kind == "eval" && r.step == r0.step)
                        .and_then(f)
                })
                .collect();
            (v.len() == cells.len() && !v.is_empty())
                .then(|| (r0.step as f64, v.iter().sum::<f64>() / v.len() as f64))
        })
        .collect()
}

/// Appends the section to `md` and writes `<stem>-diag-<metric>.svg` into `dir`.
pub fn section<'a>(
    md: &mut String,
    dir: &Path,
    stem: &str,
    meta: &GridMeta<'_>,
    inits: &[f64],
    best: &dyn Fn(&str, f64) -> Option<Vec<&'a CellRecord>>,
) -> Result<()> {
    let _ = writeln!(
        md,
        "## Adapter diagnostics (each method at its best lr; medians over adapters, means over seeds)\n"
    );
    let _ = writeln!(
        md,
        "Balance gap 0 = balanced, 1 = one factor zero; κ is the condition number of the local \
         Hessian of the adapter (2σ₁/σᵣ when balanced, the smallest possible); the relative steps \
         are how far each factor moved in the step before the evaluation (optimizer step plus \
         projection).\n"
    );
    let _ = writeln!(
        md,
        "| {} | method | eval step | balance gap | log10 κ | ‖B‖/‖A‖ | ‖ΔA‖/‖A‖ | ‖ΔB‖/‖B‖ |",
        meta.init_axis
    );
    let _ = writeln!(md, "|---|---|---|---|---|---|---|---|");
    let mut per_metric: Vec<Vec<Series>> = vec![Vec::new(); METRICS.len()];
    for &init in inits {
        for m in &meta.methods {
            let Some(cells) = best(m, init).filter(|c| c.iter().all(|c| c.diverged.is_none()))
            else {
                continue;
            };
            let curves: Vec<Vec<(f64, f64)>> = METRICS
                .iter()
                .map(|(_, _, f)| mean_curve(&cells, *f))
                .collect();
            // The first evaluation after training started, and the last.
            let steps: Vec<f64> = curves[0].iter().map(|p| p.0).filter(|&s| s > 0.0).collect();
            let mut picks: Vec<f64> = [steps.first(), steps.last()]
                .into_iter()
                .flatten()
                .copied()
                .collect();
            picks.dedup();
            for s in picks {
                let _ = write!(md, "| {init:e} | {m} | {s} |");
                for c in &curves {
                    match c.iter().find(|p| p.0 == s) {
                        Some(p) => {
                            let _ = write!(md, " {:.3e} |", p.1);
                        }
                        None => md.push_str(" — |"),
                    }
                }
                md.push('\n');
            }
            for (i, c) in curves.into_iter().enumerate() {
                per_metric[i].push(Series {
                    label: format!("{m} @ {init:e}"),
                    points: c,
                    thin: false,
                });
            }
        }
    }
    md.push('\n');
    for ((key, desc, _), series) in METRICS.iter().zip(per_metric) {
        let p = dir.join(format!("{stem}-diag-{key}.svg"));
        line_plot(&p, desc, "step", key, &series)
            .map_err(|e| anyhow::anyhow!("{}: {e}", p.display()))?;
        let name = p.file_name().and_then(|s| s.to_str()).unwrap_or_default();
        let _ = write!(md, "![{desc}]({name}) ");
    }
    md.push_str("\n\n");
    Ok(())
}
