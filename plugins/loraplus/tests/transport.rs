//! LoRA+'s moment transport checked against the math (as `balora-optim`'s `transport_math.rs`
//! does for AdamW): gradients of a smooth loss of the product by burn's autodiff in f64 at a pair
//! and at the pair the real balanced manifold re-factors it into; the optimizer holds
//! `m = ∇f`, `v = ∇f²` at the old point (one step with β₁ = β₂ = 0, lr = 0), is told through
//! `on_refactor`, and must then hold `∇f` (and, for signed permutations, `∇f²`) at the new point.
//! The loss, gradients and re-factoring are `balora_optim::testkit`'s.

use balora_manifold::DMatrix;
use balora_optim::testkit::{
    buffer_errors, fill_moments, rand_mat, refactor, scrambled_canonical, zero_beta_adamw, Problem,
    F64 as F,
};
use balora_optim::{signed_permutation, AdapterOptimizer, TransportMode};
use balora_plugin_loraplus::LoraPlus;

fn holding(
    mode: TransportMode,
    key: &str,
    pair: (&DMatrix<f64>, &DMatrix<f64>),
    grads: (&DMatrix<f64>, &DMatrix<f64>),
) -> LoraPlus<F> {
    let opt = LoraPlus::<F>::new(zero_beta_adamw(), 16.0, mode);
    fill_moments(opt, key, pair, grads)
}

#[test]
fn first_moment_follows_the_gradient_for_both_gauges() {
    let (n_out, n_in, r) = (6, 5, 3);
    let prob = Problem::new(n_out, n_in, 41);
    let (a, b) = (rand_mat(r, n_in, 42) * 1.4, rand_mat(n_out, r, 43) * 0.3);
    let (ga, gb) = prob.grads(&a, &b);
    for gauge in ["canonical", "closest"] {
        let (a1, b1, t, key) = refactor(&a, &b, gauge);
        let (ga1, gb1) = prob.grads(&a1, &b1);
        for (mode, follows) in [
            (TransportMode::Off, false),
            (TransportMode::First, true),
            (TransportMode::Diagonal, true),
        ] {
            let mut opt = holding(mode, &key, (&a, &b), (&ga, &gb));
            opt.on_refactor(&key, &t);
            let (ea, eb) = buffer_errors(&opt, &key, "m", (&ga1, &gb1));
            if follows {
                assert!(ea < 1e-10 && eb < 1e-10, "{gauge} {mode:?}: {ea:e} {eb:e}");
            } else {
                assert!(ea > 1e-2, "{gauge}: stale m too close ({ea:e})");
            }
        }
    }
}

#[test]
fn second_moment_follows_a_signed_permutation_exactly() {
    let (n_out, n_in) = (5, 6);
    let prob = Problem::new(n_out, n_in, 51);
    let s = DMatrix::from_row_slice(3, 3, &[0.0, 0.0, 1.0, -1.0, 0.0, 0.0, 0.0, -1.0, 0.0]);
    let (a, b) = scrambled_canonical(n_out, n_in, 52, &s);
    let (ga, gb) = prob.grads(&a, &b);
    let (a1, b1, t, key) = refactor(&a, &b, "canonical");
    assert!(signed_permutation(&t.p, 1e-9).is_some(), "{}", t.p);
    let (ga1, gb1) = prob.grads(&a1, &b1);
    let (va1, vb1) = (ga1.component_mul(&ga1), gb1.component_mul(&gb1));
    for (mode, exact) in [
        (TransportMode::Signed, true),
        (TransportMode::Diagonal, true),
        (TransportMode::First, false),
    ] {
        let mut opt = holding(mode, &key, (&a, &b), (&ga, &gb));
        opt.on_refactor(&key, &t);
        let (ea, eb) = buffer_errors(&opt, &key, "v", (&va1, &vb1));
        if exact {
            assert!(ea < 1e-10 && eb < 1e-10, "{mode:?}: {ea:e} {eb:e}");
        } else {
            assert!(ea > 1e-2, "kept v too close ({ea:e})");
        }
    }
}
