//! `train_20_steps`: 20 training steps of the synthetic problem against an f64 run and the ndarray run.

use super::Ctx;
use crate::reference::{self as r, Gen, OptRef, RefManifold};
use balora_manifold::{OptionValue, Options};
use balora_optim::RegistryBackend;
use balora_train::synthetic::{run_once, MethodSpec, OptimizerSpec, Problem};
use burn::backend::ndarray::NdArrayDevice;
use burn::backend::{Autodiff, NdArray};
use burn::tensor::backend::AutodiffBackend;

/// 20 steps of the synthetic problem (20×20 layer, rank 4, the real `run_once` with its
/// `TrainStepper`) for three (manifold, optimizer) pairs — LoRA + sign descent (the paper's
/// optimizer), BaLoRA-closest + AdamW, BaLoRA-canonical + plain gradient descent — against an
/// f64 run of the same math and against the ndarray run.
///
/// Well-posedness: the canonical gauge is only defined up to the signs (and, at close singular
/// values, rotations) of the SVD, so it is paired with plain gradient descent, which commutes with
/// orthogonal gauge changes (the loss trajectory does not depend on that choice); sign descent and
/// Adam are element-wise and would follow whatever basis rounding picks. Sign descent and Adam (±1
/// at its first step) are sign-like: the problem (seed 48) is chosen so that in the f64 run every
/// nonzero gradient entry stays ≥ 1e-4 of the largest, about 40× the relative rounding error of a
/// depth-20 f32 gradient, so no entry can change sign through rounding.
///
/// Tolerance: `|L_k − L_k^ref| ≤ 100·matmul_bound(20)·L₀` (≈ 2.4e-4·L₀ in f32): each step's
/// gradients carry relative error ≈ 20u, the losses fall monotonically (no error amplification
/// beyond the projections' κ² ≈ 10), so 20 steps accumulate ≲ 20·10·20u ≈ 2.4e-4.
pub(super) fn train_20_steps<B: AutodiffBackend>(ctx: &Ctx<B>) -> Result<String, String>
where
    B::InnerBackend: RegistryBackend,
{
    let mut gen = Gen::new(48);
    let (dim, rank, steps) = (20usize, 4usize, 20usize);
    let problem = Problem {
        w0: gen.normal(dim, dim, 1.0),
        target: gen.normal(dim, dim, 1.0),
        a0: gen.normal(rank, dim, 1.0),
        optimal_loss: 0.0,
    };
    let runs: [(&str, &str, &str, f64); 3] = [
        ("unconstrained", "", "sign", 0.05),
        ("balanced", "closest", "adamw", 0.05),
        ("balanced", "canonical", "sgd", 0.01),
    ];
    let tol = 100.0 * ctx.precision.matmul_bound(dim, 1);
    let mut worst = 0.0f64;
    let mut drops = Vec::new();
    for (manifold, gauge, opt_name, lr) in runs {
        let label = format!(
            "{manifold}{}{gauge} + {opt_name}",
            if gauge.is_empty() { "" } else { ":" }
        );
        let method = MethodSpec {
            label: label.clone(),
            manifold: manifold.into(),
            options: if gauge.is_empty() {
                Options::default()
            } else {
                Options::default().with("gauge", OptionValue::Str(gauge.into()))
            },
        };
        let (opts, opt_ref) = match opt_name {
            "adamw" => (
                Options::default(),
                OptRef::AdamW {
                    beta1: 0.9,
                    beta2: 0.999,
                    eps: 1e-8,
                    wd: 0.0,
                },
            ),
            "sgd" => (Options::default(), OptRef::Sgd { mu: 0.0, wd: 0.0 }),
            _ => (Options::default(), OptRef::Sign { eps: 1e-8 }),
        };
        let optimizer = OptimizerSpec {
            label: opt_name.into(),
            name: opt_name.into(),
            options: opts,
        };
        let ref_manifold = match gauge {
            "closest" => RefManifold::Closest,
            "canonical" => RefManifold::Canonical,
            _ => RefManifold::None,
        };
        let (ref_losses, min_grad) = r::train_synthetic(
            &problem.w0,
            &problem.target,
            &problem.a0,
            &opt_ref,
            ref_manifold,
            lr,
            steps,
        );
        if opt_name != "sgd" && min_grad < 1e-4 {
            return Err(format!(
                "{label}: the reference run has a gradient entry at {min_grad:.1e} of the largest \
                 (sign-ambiguous); pick another seed for this check"
            ));
        }
        let got = run_once::<B>(&problem, &method, &optimizer, lr, steps, &ctx.device)
            .map_err(|e| format!("{label}: {e}"))?;
        let on_ndarray = run_once::<Autodiff<NdArray>>(
            &problem,
            &method,
            &optimizer,
            lr,
            steps,
            &NdArrayDevice::default(),
        )
        .map_err(|e| format!("{label} (ndarray): {e}"))?;
        if got.len() != steps + 1 {
            return Err(format!(
                "{label}: {} losses, expected {}",
                got.len(),
                steps + 1
            ));
        }
        let l0 = ref_losses[0];
        for (k, ((g, rf), nd)) in got.iter().zip(&ref_losses).zip(&on_ndarray).enumerate() {
            for (what, other) in [("f64 reference", rf), ("ndarray run", nd)] {
                let e = (g - other).abs() / l0;
                if !e.is_finite() || e > tol {
                    return Err(format!(
                        "{label}: loss after {k} steps is {g:.6e}, the {what} has {other:.6e} \
                         (difference {e:.2e}·L₀ > {tol:.1e}·L₀)"
                    ));
                }
                worst = worst.max(e / tol);
            }
        }
        drops.push(format!("{:.0}%", 100.0 * (1.0 - ref_losses[steps] / l0)));
    }
    Ok(format!(
        "3 runs (loss falls by {}); worst deviation {worst:.3} of its tolerance",
        drops.join("/")
    ))
}
