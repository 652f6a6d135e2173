//! `adapter_fwd_bwd`: a LoRA layer's forward pass and its adapter gradients.

use super::support::{adapter_of, dev, host, lora_layer, within};
use super::Ctx;
use crate::reference::{self as r, Gen};
use burn::tensor::backend::AutodiffBackend;

/// Forward `x·W + b + s·(x·Aᵀ)·Bᵀ` and the gradients of `L = Σ y ⊙ G` w.r.t. A and B, on four
/// shapes (3-D input, r = 1, wide, tall). Tolerance: the matmul bound (see [`Precision`](crate::Precision)) with
/// depth `in + r` (+3 for the bias add and the two scalings) for the forward, `out`/`in` plus the
/// batch for the gradients; two matmul stages each.
pub(super) fn adapter_fwd_bwd<B: AutodiffBackend>(ctx: &Ctx<B>) -> Result<String, String> {
    let p = ctx.precision;
    let d = &ctx.device;
    let mut gen = Gen::new(11);
    // (batch, in, out, r, bias, scale, label); scales are exact in f32.
    let shapes = [
        (
            6usize,
            8usize,
            6usize,
            3usize,
            true,
            2.0,
            "8→6 r=3, 3-D input",
        ),
        (4, 7, 5, 1, false, 1.5, "7→5 r=1"),
        (3, 32, 4, 2, true, 0.5, "wide 32→4 r=2"),
        (3, 4, 32, 2, false, 4.0, "tall 4→32 r=2"),
    ];
    let mut worst = 0.0f64;
    for (i, &(n, din, dout, rank, has_bias, s, label)) in shapes.iter().enumerate() {
        let w = gen.normal(din, dout, 1.0 / (din as f64).sqrt());
        let bias: Option<Vec<f64>> =
            has_bias.then(|| gen.normal(1, dout, 0.5).iter().copied().collect());
        let a = gen.normal(rank, din, 1.0);
        let b = gen.normal(dout, rank, 1.0);
        let x = gen.normal(n, din, 1.0);
        let g = gen.normal(n, dout, 1.0);
        let layer = lora_layer::<B>(&w, bias.as_deref(), &a, &b, s, d);
        let xt = dev::<B>(&x, d);
        let y = if i == 0 {
            layer
                .forward(xt.reshape([2, n / 2, din]))
                .reshape([n, dout])
        } else {
            layer.forward(xt)
        };
        let loss = (y.clone() * dev::<B>(&g, d)).sum();
        let grads = loss.backward();
        let ad = adapter_of(&layer)?;
        let ga = ad
            .lora_a
            .val()
            .grad(&grads)
            .ok_or(format!("{label}: no gradient for lora_a"))?;
        let gb = ad
            .lora_b
            .val()
            .grad(&grads)
            .ok_or(format!("{label}: no gradient for lora_b"))?;
        if layer.base.weight.val().grad(&grads).is_some() {
            return Err(format!(
                "{label}: the frozen base weight received a gradient"
            ));
        }
        let (y_ref, y_scale) = r::lora_forward(&x, &w, bias.as_deref(), &a, &b, s);
        let ((ga_ref, ga_scale), (gb_ref, gb_scale)) = r::lora_grads(&x, &a, &b, &g, s);
        worst = worst.max(within(
            &format!("{label}: forward"),
            &host(y),
            &y_ref,
            &y_scale,
            p.matmul_bound(din + rank + 3, 2),
        )?);
        worst = worst.max(within(
            &format!("{label}: ∂L/∂A"),
            &host(ga),
            &ga_ref,
            &ga_scale,
            p.matmul_bound(dout + n + 3, 2),
        )?);
        worst = worst.max(within(
            &format!("{label}: ∂L/∂B"),
            &host(gb),
            &gb_ref,
            &gb_scale,
            p.matmul_bound(din + n + 3, 2),
        )?);
    }
    Ok(format!("4 shapes; worst error {worst:.3} of its bound"))
}
