//! Moment transport checked against the math, not against the transport formulas.
//!
//! For a smooth loss of the product only, `f(A, B) = ½‖(W0 + s·B·A)·X − Y‖² + c·Σ tanh²((W0 + s·B·A)·X)`,
//! the gradients are computed by burn's autodiff on an f64 backend at a pair `(A, B)` and at the
//! pair `(A', B')` the real balanced manifold (through the real hook, `apply_manifold`) turns it
//! into. The optimizer is handed `m = ∇f(A, B)` (and `v = ∇f(A, B)²`) by one AdamW step with
//! `β₁ = β₂ = 0` and `lr = 0`, told about the re-factorisation through its public `on_refactor`,
//! and its exported state must then be the autodiff gradient *at the new point* (and, when the
//! transform is a signed permutation, its element-wise square). Nothing here applies `Pᵀ·m` or
//! `(P∘P)ᵀ·v` itself. The loss, the gradients and the re-factoring are `balora_optim::testkit`'s
//! (shared with the optimizer plugins' transport tests).

use balora_manifold::DMatrix;
use balora_optim::rules::AdamWParams;
use balora_optim::testkit::{
    buffer_errors, fill_moments, matrix, pair_step, rand_mat, refactor, rel_err,
    scrambled_canonical, zero_beta_adamw, Problem, F64 as F,
};
use balora_optim::{signed_permutation, AdamW, AdapterOptimizer, TransportMode};

/// AdamW whose `m` is the gradient and `v` its square (β₁ = β₂ = 0, one step with lr = 0).
fn adamw_holding(
    mode: TransportMode,
    key: &str,
    pair: (&DMatrix<f64>, &DMatrix<f64>),
    grads: (&DMatrix<f64>, &DMatrix<f64>),
) -> AdamW<F> {
    let opt = AdamW::<F>::new(zero_beta_adamw(), mode);
    fill_moments(opt, key, pair, grads)
}

/// A canonical balanced pair with its gauge scrambled by a signed permutation: re-factoring it
/// with the canonical gauge undoes a signed permutation.
fn scrambled(n_out: usize, n_in: usize, seed: u64) -> (DMatrix<f64>, DMatrix<f64>) {
    // Rows of A cycled and two signs flipped (a signed 3-cycle S, S⁻¹ = Sᵀ ≠ S).
    let s = DMatrix::from_row_slice(3, 3, &[0.0, -1.0, 0.0, 0.0, 0.0, 1.0, -1.0, 0.0, 0.0]);
    scrambled_canonical(n_out, n_in, seed, &s)
}

#[test]
fn transported_first_moment_is_the_gradient_at_the_new_point() {
    // Unbalanced random pairs of several shapes; both gauges (general P, not permutations).
    for (seed, (n_out, n_in, r)) in [(1u64, (6, 5, 3)), (2, (4, 7, 2)), (3, (5, 5, 4))] {
        let prob = Problem::new(n_out, n_in, 100 + seed);
        let a = rand_mat(r, n_in, seed) * 1.5;
        let b = rand_mat(n_out, r, seed + 50) * 0.4;
        let (ga, gb) = prob.grads(&a, &b);
        for gauge in ["canonical", "closest"] {
            let (a1, b1, t, key) = refactor(&a, &b, gauge);
            assert!(
                rel_err(&(&b1 * &a1), &(&b * &a)) < 1e-12,
                "the manifold keeps BA"
            );
            assert!(
                signed_permutation(&t.p, 1e-3).is_none(),
                "{gauge}: an unbalanced pair needs a general transform"
            );
            let (ga1, gb1) = prob.grads(&a1, &b1);
            for mode in [
                TransportMode::First,
                TransportMode::Signed,
                TransportMode::Diagonal,
            ] {
                let mut opt = adamw_holding(mode, &key, (&a, &b), (&ga, &gb));
                opt.on_refactor(&key, &t);
                let (ea, eb) = buffer_errors(&opt, &key, "m", (&ga1, &gb1));
                assert!(
                    ea < 1e-10 && eb < 1e-10,
                    "{gauge} {mode:?} shape {n_out}×{r}×{n_in}: m vs ∇f at the new point: {ea:e} {eb:e}"
                );
            }
            // Without transport the stale moment is measurably wrong (the check can fail).
            let mut off = adamw_holding(TransportMode::Off, &key, (&a, &b), (&ga, &gb));
            off.on_refactor(&key, &t);
            let stale = buffer_errors(&off, &key, "m", (&ga1, &gb1)).0;
            assert!(
                stale > 1e-2,
                "{gauge}: untransported m too close: {stale:e}"
            );
        }
    }
}

#[test]
fn signed_permutation_transport_of_v_is_the_squared_gradient_at_the_new_point() {
    let (n_out, n_in) = (6, 5);
    let prob = Problem::new(n_out, n_in, 7);
    let (a, b) = scrambled(n_out, n_in, 11);
    let (ga, gb) = prob.grads(&a, &b);
    let (a1, b1, t, key) = refactor(&a, &b, "canonical");
    let s = signed_permutation(&t.p, 1e-9)
        .expect("canonical re-factoring of a scrambled canonical pair is a signed permutation");
    assert!(
        (0..3).all(|i| s[(i, i)] == 0.0),
        "the permutation moves every row: {s}"
    );
    let (ga1, gb1) = prob.grads(&a1, &b1);
    let (va1, vb1) = (ga1.component_mul(&ga1), gb1.component_mul(&gb1));
    for mode in [TransportMode::Signed, TransportMode::Diagonal] {
        let mut opt = adamw_holding(mode, &key, (&a, &b), (&ga, &gb));
        opt.on_refactor(&key, &t);
        let (ea, eb) = buffer_errors(&opt, &key, "v", (&va1, &vb1));
        assert!(
            ea < 1e-10 && eb < 1e-10,
            "{mode:?}: v vs (∇f)² at the new point: {ea:e} {eb:e}"
        );
        let (ma_err, _) = buffer_errors(&opt, &key, "m", (&ga1, &gb1));
        assert!(ma_err < 1e-10, "{mode:?}: m");
    }
    // Keeping v (first moments only) leaves it in the old row order: wrong.
    let mut first = adamw_holding(TransportMode::First, &key, (&a, &b), (&ga, &gb));
    first.on_refactor(&key, &t);
    let kept = buffer_errors(&first, &key, "v", (&va1, &vb1)).0;
    assert!(
        kept > 1e-2,
        "v kept in old coordinates is too close: {kept:e}"
    );
}

/// AdamW steps on `f` from `(a, b)` with the optimizer `opt`; returns the final pair.
fn adamw_steps(
    opt: &mut AdamW<F>,
    prob: &Problem,
    key: &str,
    (mut a, mut b): (DMatrix<f64>, DMatrix<f64>),
    lrs: &[f64],
) -> (DMatrix<f64>, DMatrix<f64>) {
    for &lr in lrs {
        let (ga, gb) = prob.grads(&a, &b);
        let (na, nb) = opt.step_pair(key, lr, pair_step((&a, &b), (&ga, &gb)));
        (a, b) = (matrix(na), matrix(nb));
    }
    (a, b)
}

#[test]
fn full_transport_makes_adamw_equivariant_under_signed_permutations() {
    // AdamW is element-wise, so it commutes with a signed permutation of the coordinates once
    // both moments are permuted: optimising, re-factoring by a signed permutation and optimising
    // on must land where optimising throughout and re-factoring at the end lands.
    let (n_out, n_in) = (6, 5);
    let prob = Problem::new(n_out, n_in, 21);
    let (a, b) = scrambled(n_out, n_in, 23);
    let hp = AdamWParams {
        beta1: 0.8,
        beta2: 0.9,
        eps: 1e-8,
        weight_decay: 0.05,
    };
    // Step 1 with lr = 0 fills the moments at the scrambled point, which the manifold then
    // re-factors by a signed permutation; then four real steps.
    let (a1, b1, t, key) = refactor(&a, &b, "canonical");
    assert!(signed_permutation(&t.p, 1e-9).is_some());
    let lrs = [0.03, 0.02, 0.03, 0.01];
    let mut reference = AdamW::<F>::new(hp, TransportMode::Off);
    let (ra, rb) = adamw_steps(&mut reference, &prob, &key, (a.clone(), b.clone()), &[0.0]);
    let (ra, rb) = adamw_steps(&mut reference, &prob, &key, (ra, rb), &lrs);
    let (want_a, want_b) = t.apply(&ra, &rb);
    for (mode, exact) in [
        (TransportMode::Diagonal, true),
        (TransportMode::Signed, true),
        (TransportMode::First, false),
    ] {
        let mut opt = AdamW::<F>::new(hp, mode);
        adamw_steps(&mut opt, &prob, &key, (a.clone(), b.clone()), &[0.0]);
        opt.on_refactor(&key, &t);
        let (ga, gb) = adamw_steps(&mut opt, &prob, &key, (a1.clone(), b1.clone()), &lrs);
        let err = rel_err(&ga, &want_a).max(rel_err(&gb, &want_b));
        if exact {
            assert!(err < 1e-10, "{mode:?}: trajectories differ by {err:e}");
        } else {
            assert!(
                err > 1e-4,
                "{mode:?}: a stale v should change the trajectory ({err:e})"
            );
        }
    }
}

#[test]
fn diagonal_rule_is_the_expected_square_for_independent_coordinates() {
    // The premise of the diagonal rule: if the gradient's coordinates are independent with zero
    // mean, E[(Pᵀg)²] = (P∘P)ᵀ·E[g²]. Feed AdamW many such gradients (β₂ close to 1, so v is a
    // long average), transport v by a general P from the closest gauge, and compare with the same
    // average of the squares of the gradients mapped into the new coordinates, accumulated here.
    let (n_out, n_in, r) = (4, 3, 3);
    let (a, b) = (rand_mat(r, n_in, 31) * 1.3, rand_mat(n_out, r, 32) * 0.5);
    let (_, _, t, key) = refactor(&a, &b, "closest");
    let beta2: f64 = 0.999;
    let hp = AdamWParams {
        beta1: 0.0,
        beta2,
        ..AdamWParams::default()
    };
    let mut diag = AdamW::<F>::new(hp, TransportMode::Diagonal);
    let mut keep = AdamW::<F>::new(hp, TransportMode::Signed);
    let (mut va, mut vb) = (DMatrix::zeros(r, n_in), DMatrix::zeros(n_out, r));
    let spread_a = rand_mat(r, n_in, 33).map(|x| 0.5 + x.abs());
    let spread_b = rand_mat(n_out, r, 34).map(|x| 0.5 + x.abs());
    let steps = 8000u64;
    for k in 0..steps {
        let ga = rand_mat(r, n_in, 1000 + k).component_mul(&spread_a);
        let gb = rand_mat(n_out, r, 90_000 + k).component_mul(&spread_b);
        for opt in [&mut diag, &mut keep] {
            opt.step_pair(&key, 0.0, pair_step((&a, &b), (&ga, &gb)));
        }
        let (na, nb) = (t.p.transpose() * &ga, &gb * t.q.transpose());
        va = va * beta2 + na.component_mul(&na) * (1.0 - beta2);
        vb = vb * beta2 + nb.component_mul(&nb) * (1.0 - beta2);
    }
    for opt in [&mut diag, &mut keep] {
        opt.on_refactor(&key, &t);
    }
    let got = |opt: &AdamW<F>| {
        let (ea, eb) = buffer_errors(opt, &key, "v", (&va, &vb));
        ea.max(eb)
    };
    let (e_diag, e_keep) = (got(&diag), got(&keep));
    assert!(
        e_diag < 0.1 && e_keep > 2.0 * e_diag,
        "diagonal rule error {e_diag:.3}, kept v error {e_keep:.3}"
    );
}
