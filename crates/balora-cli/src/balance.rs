//! `balora balance IN OUT`: re-factor a PEFT adapter onto the balanced manifold (BᵀB = AAᵀ)
//! keeping every product B·A, so a plain-LoRA adapter can continue training with BaLoRA.

use anyhow::{Context, Result};
use balora_manifold::balanced::Gauge;
use balora_models::balance::balance_adapter;
use std::path::PathBuf;

/// Which balanced point to pick.
#[derive(Debug, Clone, Copy, clap::ValueEnum)]
pub enum GaugeArg {
    /// Nearest balanced pair (orthogonal Procrustes).
    Closest,
    /// SVD coordinates of B·A (the paper's Algorithm 1).
    Canonical,
}

/// Arguments of `balora balance`.
#[derive(clap::Args, Debug)]
pub struct Args {
    /// Input adapter folder.
    input: PathBuf,
    /// Output adapter folder.
    output: PathBuf,
    /// Gauge.
    #[arg(long, value_enum, default_value = "closest")]
    gauge: GaugeArg,
}

/// Runs the command.
pub fn run(a: Args) -> Result<()> {
    let gauge = match a.gauge {
        GaugeArg::Closest => Gauge::Closest,
        GaugeArg::Canonical => Gauge::Canonical,
    };
    let rows = balance_adapter(&a.input, &a.output, gauge)
        .with_context(|| format!("balancing {}", a.input.display()))?;
    println!(
        "{:<70} {:>4} {:>6} {:>12} {:>12} {:>10}",
        "module", "r", "active", "imbal.before", "imbal.after", "Δproduct"
    );
    for r in &rows {
        println!(
            "{:<70} {:>4} {:>6} {:>12.3e} {:>12.3e} {:>10.1e}",
            r.module.trim_start_matches("base_model.model."),
            r.rank,
            r.active_rank,
            r.imbalance_before,
            r.imbalance_after,
            r.product_rel_change
        );
    }
    let deficient = rows.iter().filter(|r| r.active_rank < r.rank).count();
    println!(
        "balanced {} adapters ({deficient} rank-deficient) → {}",
        rows.len(),
        a.output.display()
    );
    Ok(())
}
