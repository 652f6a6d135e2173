//! The report of `balora compare`, built from the cells' `cell.json` files alone (so a rerun that
//! only skips finished cells writes the same report).
//!
//! Cells with the same method, learning rate and init form a *group* over seeds. A group's score
//! is the mean over seeds of each seed's best eval loss (+∞ if any seed diverged); a method's
//! best learning rate at an init is the one with the lowest score. Written beside the report
//! (`<stem>` = the report's file stem): `<stem>-summary.json` (every number of the loss tables,
//! no timings), `<stem>-heat.svg`, and per init `<stem>-init<v>-step.svg` / `-time.svg`, and
//! `<stem>-diag-<metric>.svg` for the adapter diagnostics.

use anyhow::Result;
use balora_config::JobConfig;
use balora_train::plot::{band_plot, heat_map, Band, HeatPanel};
use balora_train::MetricRecord;
use serde::{Deserialize, Serialize};
use std::fmt::Write as _;
use std::path::Path;

/// Name of a finished cell's record in its folder.
pub const CELL_FILE: &str = "cell.json";

/// One finished cell (`cell.json`).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct CellRecord {
    /// Method label.
    pub method: String,
    /// Peak learning rate.
    pub lr: f64,
    /// Init scale (or σ).
    pub init: f64,
    /// Seed.
    pub seed: u64,
    /// The cell's full config (TOML): a rerun skips the cell only if it is unchanged.
    pub config: String,
    /// Every metric record of the run.
    pub history: Vec<MetricRecord>,
    /// Training seconds.
    pub train_s: f64,
    /// Seconds in the manifold hook.
    pub hook_s: f64,
    /// Optimizer steps taken.
    pub steps: usize,
    /// Why the run stopped early (non-finite loss), if it did.
    pub diverged: Option<String>,
}

impl CellRecord {
    fn evals(&self) -> impl Iterator<Item = &MetricRecord> {
        self.history.iter().filter(|r| r.kind == "eval")
    }
    /// Best eval loss (+∞ when diverged or never evaluated).
    pub fn best(&self) -> f64 {
        if self.diverged.is_some() {
            return f64::INFINITY;
        }
        self.evals().map(|r| r.loss).fold(f64::INFINITY, f64::min)
    }
    fn last(&self) -> f64 {
        if self.diverged.is_some() {
            return f64::INFINITY;
        }
        self.evals().last().map_or(f64::INFINITY, |r| r.loss)
    }
}

/// What the report says about the grid besides the cells.
pub struct GridMeta<'a> {
    /// The base job.
    pub cfg: &'a JobConfig,
    /// Method labels in order (the first is the baseline).
    pub methods: Vec<String>,
    /// `init scale` or `init std`.
    pub init_axis: &'static str,
    /// α = this × scale², if set.
    pub alpha_per_scale2: Option<f64>,
    /// The command line.
    pub command: String,
    /// Wall seconds of this invocation.
    pub wall_s: f64,
}

struct Group<'a> {
    method: &'a str,
    lr: f64,
    init: f64,
    cells: Vec<&'a CellRecord>,
}

fn mean_sd(v: &[f64]) -> (f64, f64) {
    let n = v.len() as f64;
    let m = v.iter().sum::<f64>() / n;
    let sd = if v.len() > 1 {
        (v.iter().map(|x| (x - m).powi(2)).sum::<f64>() / (n - 1.0)).sqrt()
    } else {
        0.0
    };
    (m, sd)
}

fn fmt_ms(v: &[f64]) -> String {
    if v.iter().any(|x| !x.is_finite()) {
        let d = v.iter().filter(|x| !x.is_finite()).count();
        return format!("diverged ({d}/{})", v.len());
    }
    let (m, sd) = mean_sd(v);
    if v.len() > 1 {
        format!("{m:.4} ± {sd:.4}")
    } else {
        format!("{m:.4}")
    }
}

impl Group<'_> {
    fn bests(&self) -> Vec<f64> {
        self.cells.iter().map(|c| c.best()).collect()
    }
    fn finals(&self) -> Vec<f64> {
        self.cells.iter().map(|c| c.last()).collect()
    }
    fn score(&self) -> f64 {
        let b = self.bests();
        if b.iter().any(|x| !x.is_finite()) {
            f64::INFINITY
        } else {
            mean_sd(&b).0
        }
    }
    /// Per eval step: (step, mean elapsed s, mean, min, max of `f`) over the seeds that have it.
    fn curve(&self, f: impl Fn(&MetricRecord) -> Option<f64>) -> Vec<(f64, f64, f64, f64, f64)> {
        let mut steps: Vec<u64> = self
            .cells
            .iter()
            .flat_map(|c| c.evals().map(|r| r.step))
            .collect();
        steps.sort_unstable();
        steps.dedup();
        steps
            .into_iter()
            .filter_map(|s| {
                let recs: Vec<&MetricRecord> = self
                    .cells
                    .iter()
                    .filter(|c| c.diverged.is_none())
                    .filter_map(|c| c.evals().find(|r| r.step == s))
                    .collect();
                let v: Vec<f64> = recs.iter().filter_map(|r| f(r)).collect();
                if v.is_empty() {
                    return None;
                }
                let t = recs.iter().map(|r| r.elapsed_s).sum::<f64>() / recs.len() as f64;
                let mn = v.iter().copied().fold(f64::INFINITY, f64::min);
                let mx = v.iter().copied().fold(f64::NEG_INFINITY, f64::max);
                Some((s as f64, t, mean_sd(&v).0, mn, mx))
            })
            .collect()
    }
}

fn groups<'a>(cells: &'a [CellRecord]) -> Vec<Group<'a>> {
    let mut out: Vec<Group<'a>> = Vec::new();
    for c in cells {
        match out
            .iter_mut()
            .find(|g| g.method == c.method && g.lr == c.lr && g.init == c.init)
        {
            Some(g) => g.cells.push(c),
            None => out.push(Group {
                method: &c.method,
                lr: c.lr,
                init: c.init,
                cells: vec![c],
            }),
        }
    }
    out
}

fn sorted_unique(v: impl Iterator<Item = f64>) -> Vec<f64> {
    let mut v: Vec<f64> = v.collect();
    v.sort_by(f64::total_cmp);
    v.dedup();
    v
}

fn svg_name(p: &Path) -> String {
    p.file_name()
        .and_then(|s| s.to_str())
        .unwrap_or_default()
        .to_string()
}

/// Writes the report (markdown), its plots and `<stem>-summary.json`; returns the markdown.
pub fn write(path: &Path, meta: &GridMeta<'_>, cells: &[CellRecord]) -> Result<String> {
    let dir = path.parent().unwrap_or(Path::new("."));
    std::fs::create_dir_all(dir)?;
    let stem = path
        .file_stem()
        .and_then(|s| s.to_str())
        .unwrap_or("report");
    let gs = groups(cells);
    let inits = sorted_unique(cells.iter().map(|c| c.init));
    let lrs = sorted_unique(cells.iter().map(|c| c.lr));
    let seeds = {
        let mut s: Vec<u64> = cells.iter().map(|c| c.seed).collect();
        s.sort_unstable();
        s.dedup();
        s
    };
    let base = meta.methods.first().map(String::as_str).unwrap_or("");
    // The best group per (method, init).
    let best = |m: &str, init: f64| -> Option<&Group<'_>> {
        gs.iter()
            .filter(|g| g.method == m && g.init == init)
            .min_by(|a, b| a.score().total_cmp(&b.score()))
    };
    let cfg = meta.cfg;
    let mut md = String::new();
    let model = cfg
        .model
        .asset
        .clone()
        .or(cfg.model.path.as_ref().map(|p| p.display().to_string()))
        .unwrap_or_default();
    let data = cfg
        .data
        .asset
        .clone()
        .or(cfg.data.path.as_ref().map(|p| p.display().to_string()))
        .unwrap_or_default();
    let _ = writeln!(md, "# {} on {model} / {data}\n", meta.methods.join(" vs "));
    let alpha = match meta.alpha_per_scale2 {
        Some(c) => format!("α = {c}·scale²"),
        None => format!("α = {}", cfg.adapter.alpha),
    };
    let _ = writeln!(
        md,
        "seq_len {}, batch {}×{}, {} steps, schedule {:?} (warmup {}), optimizer `{}` (weight decay as configured), r = {}, {alpha}, targets {}; grid: {} methods × {} lrs × {} {}s × {} seeds = {} cells, on `{:?}`.\n",
        cfg.data.seq_len, cfg.trainer.batch_size, cfg.trainer.grad_accum, cfg.trainer.steps,
        cfg.trainer.schedule, cfg.trainer.warmup_steps, cfg.optimizer.name, cfg.adapter.r,
        cfg.adapter.targets, meta.methods.len(), lrs.len(), inits.len(), meta.init_axis,
        seeds.len(), cells.len(), cfg.backend
    );
    let _ = writeln!(md, "Command: `{}`\n", meta.command);
    let _ = writeln!(
        md,
        "Each number is the mean ± sample standard deviation over seeds {seeds:?} of each seed's best eval loss; a method's lr at an {} is the one with the lowest mean (\"diverged\": a seed's loss became non-finite).\n",
        meta.init_axis
    );
    // Best per (method, init).
    let _ = writeln!(md, "## Best eval loss per method and {}\n", meta.init_axis);
    let mut head = format!("| {} |", meta.init_axis);
    let mut rule = "|---|".to_string();
    for m in &meta.methods {
        let _ = write!(head, " {m} | {m} lr |");
        rule.push_str("---|---|");
    }
    let _ = writeln!(md, "{head}\n{rule}");
    for &init in &inits {
        let _ = write!(md, "| {init:e} |");
        for m in &meta.methods {
            match best(m, init) {
                Some(g) => {
                    let _ = write!(md, " {} | {:e} |", fmt_ms(&g.bests()), g.lr);
                }
                None => md.push_str(" — | — |"),
            }
        }
        md.push('\n');
    }
    // Heat map: lr × init per method.
    let heat = dir.join(format!("{stem}-heat.svg"));
    let panels: Vec<HeatPanel> = meta
        .methods
        .iter()
        .map(|m| HeatPanel {
            title: m.clone(),
            values: inits
                .iter()
                .map(|&i| {
                    lrs.iter()
                        .map(|&lr| {
                            gs.iter()
                                .find(|g| g.method == m && g.lr == lr && g.init == i)
                                .map(Group::score)
                                .filter(|s| s.is_finite())
                        })
                        .collect()
                })
                .collect(),
        })
        .collect();
    heat_map(
        &heat,
        "best eval loss (mean over seeds); grey: diverged",
        "learning rate",
        meta.init_axis,
        &lrs.iter().map(|l| format!("{l:e}")).collect::<Vec<_>>(),
        &inits.iter().map(|i| format!("{i:e}")).collect::<Vec<_>>(),
        &panels,
    )
    .map_err(|e| anyhow::anyhow!("{}: {e}", heat.display()))?;
    let _ = writeln!(
        md,
        "\n![best eval loss, lr × {}]({})\n",
        meta.init_axis,
        svg_name(&heat)
    );
    // Steps to reach the baseline's best, per init.
    let _ = writeln!(
        md,
        "## Steps to reach {base}'s best (mean curves at each method's best lr)\n"
    );
    let _ = writeln!(
        md,
        "| {} | {base}'s best (mean curve) | {} |",
        meta.init_axis,
        meta.methods
            .iter()
            .map(|m| format!("{m}: step"))
            .collect::<Vec<_>>()
            .join(" | ")
    );
    let _ = writeln!(md, "|---|---|{}", "---|".repeat(meta.methods.len()));
    let mut reach_json = Vec::new();
    for &init in &inits {
        let target = best(base, init)
            .map(|g| {
                g.curve(|r| Some(r.loss))
                    .iter()
                    .map(|p| p.2)
                    .fold(f64::INFINITY, f64::min)
            })
            .unwrap_or(f64::INFINITY);
        let _ = write!(md, "| {init:e} | {target:.4} |");
        for m in &meta.methods {
            let step = best(m, init)
                .filter(|g| g.score().is_finite())
                .and_then(|g| {
                    g.curve(|r| Some(r.loss))
                        .into_iter()
                        .find(|p| p.2 <= target + 1e-12)
                })
                .map(|p| p.0 as u64);
            let _ = write!(
                md,
                " {} |",
                step.map_or("not reached".into(), |s| s.to_string())
            );
            reach_json.push(
                serde_json::json!({"init": init, "method": m, "target": target, "step": step}),
            );
        }
        md.push('\n');
    }
    // Curves per init.
    md.push_str("\n## Eval loss over training (each method at its best lr; line: mean over seeds, band: min to max)\n\n");
    for &init in &inits {
        for time in [false, true] {
            let bands: Vec<Band> = meta
                .methods
                .iter()
                .filter_map(|m| best(m, init).filter(|g| g.score().is_finite()))
                .map(|g| Band {
                    label: format!("{} (lr {:e})", g.method, g.lr),
                    points: g
                        .curve(|r| Some(r.loss))
                        .iter()
                        .map(|p| (if time { p.1 } else { p.0 }, p.2, p.3, p.4))
                        .collect(),
                })
                .collect();
            let kind = if time { "time" } else { "step" };
            let p = dir.join(format!("{stem}-init{init:e}-{kind}.svg"));
            let xd = if time {
                "training seconds (mean over seeds)"
            } else {
                "step"
            };
            band_plot(
                &p,
                &format!("eval loss, {} {init:e}", meta.init_axis),
                xd,
                "eval loss",
                &bands,
            )
            .map_err(|e| anyhow::anyhow!("{}: {e}", p.display()))?;
            let _ = write!(
                md,
                "![eval loss vs {kind}, {} {init:e}]({}) ",
                meta.init_axis,
                svg_name(&p)
            );
        }
        md.push('\n');
    }
    md.push('\n');
    crate::compare_diag::section(&mut md, dir, stem, meta, &inits, &|m, i| {
        best(m, i).map(|g| g.cells.clone())
    })?;
    // Every group.
    let _ = writeln!(md, "## All grid cells (over seeds)\n");
    let _ = writeln!(
        md,
        "| method | lr | {} | best eval | final eval |",
        meta.init_axis
    );
    let _ = writeln!(md, "|---|---|---|---|---|");
    let mut groups_json = Vec::new();
    for g in &gs {
        let _ = writeln!(
            md,
            "| {} | {:e} | {:e} | {} | {} |",
            g.method,
            g.lr,
            g.init,
            fmt_ms(&g.bests()),
            fmt_ms(&g.finals())
        );
        let fin = |v: Vec<f64>| {
            v.into_iter()
                .map(|x| x.is_finite().then_some(x))
                .collect::<Vec<_>>()
        };
        groups_json.push(serde_json::json!({
            "method": g.method, "lr": g.lr, "init": g.init,
            "seeds": g.cells.iter().map(|c| c.seed).collect::<Vec<_>>(),
            "best": fin(g.bests()), "final": fin(g.finals()),
            "diverged": g.cells.iter().filter(|c| c.diverged.is_some()).count(),
        }));
    }
    // Timing (differs from run to run; not in the summary).
    let _ = writeln!(md, "\n## Timing\n\n{} cells; this invocation took {:.0} s (cells finished by an earlier invocation are not rerun).\n", cells.len(), meta.wall_s);
    let _ = writeln!(
        md,
        "| method | lr | {} | s/step (mean over seeds) | hook share |",
        meta.init_axis
    );
    let _ = writeln!(md, "|---|---|---|---|---|");
    for g in &gs {
        let steps: usize = g.cells.iter().map(|c| c.steps).sum();
        let train: f64 = g.cells.iter().map(|c| c.train_s).sum();
        let hook: f64 = g.cells.iter().map(|c| c.hook_s).sum();
        let _ = writeln!(
            md,
            "| {} | {:e} | {:e} | {:.3} | {:.2}% |",
            g.method,
            g.lr,
            g.init,
            train / steps.max(1) as f64,
            100.0 * hook / train.max(1e-12)
        );
    }
    let _ = writeln!(md, "\nThe hook time is the manifold step (Gram transfer, f64 r×r gauge, two thin matmuls) plus the optimizer-moment transport, measured with the host clock around `TrainStepper`'s hook (exact on the synchronous CPU backends).");
    let summary = serde_json::json!({
        "methods": meta.methods, "init_axis": meta.init_axis, "lrs": lrs, "inits": inits,
        "seeds": seeds, "groups": groups_json, "reach": reach_json,
    });
    balora_formats::atomic::write_atomic(
        &dir.join(format!("{stem}-summary.json")),
        serde_json::to_string_pretty(&summary)?.as_bytes(),
    )?;
    balora_formats::atomic::write_atomic(path, md.as_bytes())?;
    Ok(md)
}
