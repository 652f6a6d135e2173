//! `merge_unmerge`: merging an adapter into its base weight and back.

use super::support::{adapter_of, dev, host, lora_layer, within, I};
use super::Ctx;
use crate::reference::{self as r, Gen};
use burn::tensor::backend::AutodiffBackend;

/// Merging adds `s·B·A` into the base weight (`W ← W + s·(B·A)ᵀ` in burn's layout), after which
/// forward skips the adapter; unmerging restores W. Checked against f64 with the matmul bound
/// (forward: depth in + r, two stages; merged weight: depth r, plus the add).
pub(super) fn merge_unmerge<B: AutodiffBackend>(ctx: &Ctx<B>) -> Result<String, String> {
    let p = ctx.precision;
    let d = &ctx.device;
    let mut gen = Gen::new(53);
    let (n, din, dout, rank, s) = (4, 9, 7, 3, 2.0);
    let w = gen.normal(din, dout, 0.5);
    let bias: Vec<f64> = gen.normal(1, dout, 0.5).iter().copied().collect();
    let a = gen.normal(rank, din, 1.0);
    let b = gen.normal(dout, rank, 1.0);
    let x = gen.normal(n, din, 1.0);
    let layer = lora_layer::<I<B>>(&w, Some(&bias), &a, &b, s, d);
    let (y_ref, y_scale) = r::lora_forward(&x, &w, Some(&bias), &a, &b, s);
    let fwd_bound = p.matmul_bound(din + rank + 3, 2);
    let xt = dev::<I<B>>(&x, d);
    let mut worst = within(
        "unmerged forward",
        &host(layer.forward(xt.clone())),
        &y_ref,
        &y_scale,
        fwd_bound,
    )?;
    let merged = layer.clone().merge();
    if !adapter_of(&merged)?.merged {
        return Err("merge() did not mark the adapter as merged".into());
    }
    let w_merged_ref = &w + (&b * &a).transpose() * s;
    let w_scale = w.map(f64::abs) + (r::abs(&b) * r::abs(&a)).transpose() * s;
    let wm = host(merged.base.weight.val());
    worst = worst.max(within(
        "merged weight",
        &wm,
        &w_merged_ref,
        &w_scale,
        p.matmul_bound(rank + 2, 1),
    )?);
    worst = worst.max(within(
        "merged forward",
        &host(merged.forward(xt.clone())),
        &y_ref,
        &y_scale,
        fwd_bound,
    )?);
    let twice = merged.clone().merge();
    if host(twice.base.weight.val()) != wm {
        return Err("merging twice changed the weight (merge must be idempotent)".into());
    }
    let unmerged = merged.unmerge();
    if adapter_of(&unmerged)?.merged {
        return Err("unmerge() left the adapter marked as merged".into());
    }
    // W + Δ − Δ: two roundings of magnitude ≤ |W| + |Δ|.
    worst = worst.max(within(
        "unmerged weight",
        &host(unmerged.base.weight.val()),
        &w,
        &w_scale,
        p.matmul_bound(rank + 4, 2),
    )?);
    worst = worst.max(within(
        "forward after unmerge",
        &host(unmerged.forward(xt)),
        &y_ref,
        &y_scale,
        p.matmul_bound(din + rank + 5, 2),
    )?);
    Ok(format!("worst error {worst:.3} of its bound"))
}
