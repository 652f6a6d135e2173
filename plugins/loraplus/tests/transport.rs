//! LoRA+'s moment transport checked against the math (as `balora-optim`'s `transport_math.rs`
//! does for AdamW): gradients of a smooth loss of the product by burn's autodiff in f64 at a pair
//! and at the pair the real balanced manifold re-factors it into; the optimizer holds
//! `m = ∇f`, `v = ∇f²` at the old point (one step with β₁ = β₂ = 0, lr = 0), is told through
//! `on_refactor`, and must then hold `∇f` (and, for signed permutations, `∇f²`) at the new point.
//! The loss, gradients and re-factoring are `balora_optim::testkit`'s.

use balora_manifold::DMatrix;
use balora_optim::rules::AdamWParams;
use balora_optim::testkit::{
    buffer, fill_moments, rand_mat, refactor, rel_err, scrambled_canonical, Problem, F64 as F,
};
use balora_optim::{signed_permutation, AdapterOptimizer, TransportMode};
use balora_plugin_loraplus::LoraPlus;

fn holding(
    mode: TransportMode,
    key: &str,
    (a, b): (&DMatrix<f64>, &DMatrix<f64>),
    (ga, gb): (&DMatrix<f64>, &DMatrix<f64>),
) -> LoraPlus<F> {
    let hp = AdamWParams {
        beta1: 0.0,
        beta2: 0.0,
        ..AdamWParams::default()
    };
    fill_moments(LoraPlus::<F>::new(hp, 16.0, mode), key, (a, b), (ga, gb))
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
            let ea = rel_err(&buffer(&opt, &key, "lora_a", "m", (r, n_in)), &ga1);
            let eb = rel_err(&buffer(&opt, &key, "lora_b", "m", (n_out, r)), &gb1);
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
    for (mode, exact) in [
        (TransportMode::Signed, true),
        (TransportMode::Diagonal, true),
        (TransportMode::First, false),
    ] {
        let mut opt = holding(mode, &key, (&a, &b), (&ga, &gb));
        opt.on_refactor(&key, &t);
        let ea = rel_err(
            &buffer(&opt, &key, "lora_a", "v", (3, n_in)),
            &ga1.component_mul(&ga1),
        );
        let eb = rel_err(
            &buffer(&opt, &key, "lora_b", "v", (n_out, 3)),
            &gb1.component_mul(&gb1),
        );
        if exact {
            assert!(ea < 1e-10 && eb < 1e-10, "{mode:?}: {ea:e} {eb:e}");
        } else {
            assert!(ea > 1e-2, "kept v too close ({ea:e})");
        }
    }
}
