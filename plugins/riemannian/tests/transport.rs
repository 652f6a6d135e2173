//! The Riemannian plugin's moment transport checked against the math: its buffers average the
//! *preconditioned* gradients `(BᵀB)⁻¹∇A`, `∇B(AAᵀ)⁻¹`, so after a re-factorisation they must
//! equal those at the new point. The gradients of a smooth loss of the product come from burn's
//! autodiff in f64, the re-factored pair from the real balanced manifold through the real hook,
//! the r×r inverses from nalgebra's general inverse (the plugin uses Cholesky), with δ = 1e-12 in
//! the plugin (δ > 0 breaks the equivariance only at O(δ)). The optimizer is filled through a step
//! with lr = 0 (β₁ = β₂ = 0, or SGD momentum on its first step), told through `on_refactor`, and
//! its exported state compared; nothing here applies `Q·m` or `(Q∘Q)·v` itself. The loss,
//! gradients and re-factoring are `balora_optim::testkit`'s.

use balora_manifold::DMatrix;
use balora_optim::rules::SgdParams;
use balora_optim::testkit::{
    buffer_errors, fill_moments, rand_mat, refactor, scrambled_canonical, zero_beta_adamw, Problem,
    F64 as F,
};
use balora_optim::{signed_permutation, AdapterOptimizer, TransportMode};
use balora_plugin_riemannian::{BaseRule, Riemannian};

/// `((BᵀB)⁻¹∇A, ∇B(AAᵀ)⁻¹)`.
fn preconditioned(
    (a, b): (&DMatrix<f64>, &DMatrix<f64>),
    (ga, gb): (&DMatrix<f64>, &DMatrix<f64>),
) -> (DMatrix<f64>, DMatrix<f64>) {
    let inv = |m: DMatrix<f64>| m.try_inverse().expect("full-rank Gram");
    (inv(b.transpose() * b) * ga, gb * inv(a * a.transpose()))
}

fn adamw_base() -> BaseRule {
    BaseRule::AdamW(zero_beta_adamw())
}

fn holding(
    base: BaseRule,
    mode: TransportMode,
    key: &str,
    pair: (&DMatrix<f64>, &DMatrix<f64>),
    grads: (&DMatrix<f64>, &DMatrix<f64>),
) -> Riemannian<F> {
    let opt = Riemannian::<F>::new(base, 1e-12, mode);
    fill_moments(opt, key, pair, grads)
}

#[test]
fn first_moment_is_the_preconditioned_gradient_at_the_new_point() {
    let (n_out, n_in, r) = (6, 5, 3);
    let prob = Problem::new(n_out, n_in, 61);
    let (a, b) = (rand_mat(r, n_in, 62) * 1.2, rand_mat(n_out, r, 63) * 0.6);
    let (ga, gb) = prob.grads(&a, &b);
    let bases = [
        adamw_base(),
        BaseRule::Sgd(SgdParams {
            momentum: 0.9,
            weight_decay: 0.0,
        }),
    ];
    for gauge in ["canonical", "closest"] {
        let (a1, b1, t, key) = refactor(&a, &b, gauge);
        let (ga1, gb1) = prob.grads(&a1, &b1);
        let (pa1, pb1) = preconditioned((&a1, &b1), (&ga1, &gb1));
        for base in bases {
            for (mode, follows) in [
                (TransportMode::Off, false),
                (TransportMode::First, true),
                (TransportMode::Diagonal, true),
            ] {
                let mut opt = holding(base, mode, &key, (&a, &b), (&ga, &gb));
                opt.on_refactor(&key, &t);
                let (ea, eb) = buffer_errors(&opt, &key, "m", (&pa1, &pb1));
                if follows {
                    assert!(
                        ea < 1e-8 && eb < 1e-8,
                        "{gauge} {base:?} {mode:?}: {ea:e} {eb:e}"
                    );
                } else {
                    assert!(ea > 1e-2, "{gauge} {base:?}: stale m too close ({ea:e})");
                }
            }
        }
    }
}

#[test]
fn adamw_second_moment_follows_a_signed_permutation_exactly() {
    let (n_out, n_in) = (5, 6);
    let prob = Problem::new(n_out, n_in, 71);
    let s = DMatrix::from_row_slice(3, 3, &[0.0, 1.0, 0.0, 0.0, 0.0, -1.0, -1.0, 0.0, 0.0]);
    let (a, b) = scrambled_canonical(n_out, n_in, 72, &s);
    let (ga, gb) = prob.grads(&a, &b);
    let (a1, b1, t, key) = refactor(&a, &b, "canonical");
    assert!(signed_permutation(&t.p, 1e-9).is_some(), "{}", t.p);
    let (ga1, gb1) = prob.grads(&a1, &b1);
    let (pa1, pb1) = preconditioned((&a1, &b1), (&ga1, &gb1));
    let (va1, vb1) = (pa1.component_mul(&pa1), pb1.component_mul(&pb1));
    for (mode, exact) in [
        (TransportMode::Signed, true),
        (TransportMode::Diagonal, true),
        (TransportMode::First, false),
    ] {
        let mut opt = holding(adamw_base(), mode, &key, (&a, &b), (&ga, &gb));
        opt.on_refactor(&key, &t);
        let (ea, eb) = buffer_errors(&opt, &key, "v", (&va1, &vb1));
        if exact {
            assert!(ea < 1e-8 && eb < 1e-8, "{mode:?}: {ea:e} {eb:e}");
        } else {
            assert!(ea > 1e-2, "kept v too close ({ea:e})");
        }
    }
}
