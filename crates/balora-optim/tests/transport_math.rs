//! Moment transport checked against the math, not against the transport formulas.
//!
//! For a smooth loss of the product only, `f(A, B) = ½‖(W0 + s·B·A)·X − Y‖² + c·Σ tanh²((W0 + s·B·A)·X)`,
//! the gradients are computed by burn's autodiff on an f64 backend at a pair `(A, B)` and at the
//! pair `(A', B')` the real balanced manifold (through the real hook, `apply_manifold`) turns it
//! into. The optimizer is handed `m = ∇f(A, B)` (and `v = ∇f(A, B)²`) by one AdamW step with
//! `β₁ = β₂ = 0` and `lr = 0`, told about the re-factorisation through its public `on_refactor`,
//! and its exported state must then be the autodiff gradient *at the new point* (and, when the
//! transform is a signed permutation, its element-wise square). Nothing here applies `Pᵀ·m` or
//! `(P∘P)ᵀ·v` itself.

use balora_adapter::{apply_manifold, LoraAdapter};
use balora_manifold::{build_manifold, DMatrix, GaugeTransform, OptionValue, Options};
use balora_optim::rules::AdamWParams;
use balora_optim::{signed_permutation, AdamW, AdapterOptimizer, PairStep, TransportMode};
use burn::backend::Autodiff;
use burn::tensor::{Tensor, TensorData};
use burn_ndarray::NdArray;

type F = NdArray<f64>;
type AD = Autodiff<F>;
const SCALE: f64 = 0.7;

/// Deterministic pseudo-random matrix with entries in [-1, 1).
fn rand_mat(rows: usize, cols: usize, seed: u64) -> DMatrix<f64> {
    let mut s = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    DMatrix::from_fn(rows, cols, |_, _| {
        s ^= s << 13;
        s ^= s >> 7;
        s ^= s << 17;
        (s >> 11) as f64 / (1u64 << 52) as f64 - 1.0
    })
}

fn tensor<Bk: burn::tensor::backend::Backend>(m: &DMatrix<f64>) -> Tensor<Bk, 2> {
    let rows: Vec<f64> = m.transpose().iter().copied().collect();
    Tensor::from_data(
        TensorData::new(rows, [m.nrows(), m.ncols()]),
        &Default::default(),
    )
}

fn matrix<Bk: burn::tensor::backend::Backend>(t: Tensor<Bk, 2>) -> DMatrix<f64> {
    let [r, c] = t.dims();
    let v: Vec<f64> = t.into_data().iter::<f64>().collect();
    DMatrix::from_row_slice(r, c, &v)
}

fn rel_err(got: &DMatrix<f64>, want: &DMatrix<f64>) -> f64 {
    (got - want).amax() / want.amax().max(1e-300)
}

/// The fixed parts of the loss: `W0` (out×in), `X` (in×k), `Y` (out×k).
struct Problem {
    w0: DMatrix<f64>,
    x: DMatrix<f64>,
    y: DMatrix<f64>,
}

impl Problem {
    fn new(n_out: usize, n_in: usize, seed: u64) -> Self {
        Self {
            w0: rand_mat(n_out, n_in, seed),
            x: rand_mat(n_in, 7, seed + 1),
            y: rand_mat(n_out, 7, seed + 2),
        }
    }

    /// `(∇A f, ∇B f)` at `(A, B)` by autodiff.
    fn grads(&self, a: &DMatrix<f64>, b: &DMatrix<f64>) -> (DMatrix<f64>, DMatrix<f64>) {
        let ta = tensor::<AD>(a).require_grad();
        let tb = tensor::<AD>(b).require_grad();
        let w = tensor::<AD>(&self.w0) + tb.clone().matmul(ta.clone()).mul_scalar(SCALE);
        let z = w.matmul(tensor::<AD>(&self.x));
        let loss = (z.clone() - tensor::<AD>(&self.y))
            .powi_scalar(2)
            .sum()
            .mul_scalar(0.5)
            + z.tanh().powi_scalar(2).sum().mul_scalar(0.3);
        let g = loss.backward();
        (
            matrix(ta.grad(&g).expect("A is a leaf")),
            matrix(tb.grad(&g).expect("B is a leaf")),
        )
    }
}

/// The real hook with the balanced manifold of `gauge` on one adapter: `(A', B', transform, key)`.
fn refactor(
    a: &DMatrix<f64>,
    b: &DMatrix<f64>,
    gauge: &str,
) -> (DMatrix<f64>, DMatrix<f64>, GaugeTransform, String) {
    let manifold = build_manifold(
        "balanced",
        &Options::default().with("gauge", OptionValue::Str(gauge.into())),
    )
    .unwrap();
    let adapter = LoraAdapter::<F>::from_tensors(tensor(a), tensor(b), SCALE, 0.0);
    let (adapter, report) = apply_manifold(adapter, manifold.as_ref(), 1).unwrap();
    assert_eq!(
        report.refactored, 1,
        "{gauge}: the pair must be re-factored"
    );
    let (key, t) = report.transforms.into_iter().next().unwrap();
    (
        matrix(adapter.lora_a.val()),
        matrix(adapter.lora_b.val()),
        t,
        key,
    )
}

/// AdamW whose `m` is the gradient and `v` its square (β₁ = β₂ = 0, one step with lr = 0).
fn adamw_holding(
    mode: TransportMode,
    key: &str,
    (a, b): (&DMatrix<f64>, &DMatrix<f64>),
    (ga, gb): (&DMatrix<f64>, &DMatrix<f64>),
) -> AdamW<F> {
    let hp = AdamWParams {
        beta1: 0.0,
        beta2: 0.0,
        ..AdamWParams::default()
    };
    let mut opt = AdamW::<F>::new(hp, mode);
    opt.step_pair(
        key,
        0.0,
        PairStep {
            a: tensor(a),
            b: tensor(b),
            grad_a: tensor(ga),
            grad_b: tensor(gb),
            grams: None,
        },
    );
    opt
}

/// Exported buffer `name` (`m` or `v`) of factor `which` (`lora_a`/`lora_b`) as an r×c matrix.
fn buffer(
    opt: &dyn AdapterOptimizer<F>,
    key: &str,
    which: &str,
    name: &str,
    shape: (usize, usize),
) -> DMatrix<f64> {
    let want = format!("{key}.{which}/{name}");
    let data = opt
        .state()
        .into_iter()
        .find(|(k, _)| *k == want)
        .unwrap_or_else(|| panic!("no state entry `{want}`"))
        .1;
    DMatrix::from_row_slice(shape.0, shape.1, &data.iter::<f64>().collect::<Vec<_>>())
}

/// A canonical balanced pair with its gauge scrambled by a signed permutation: re-factoring it
/// with the canonical gauge undoes a signed permutation.
fn scrambled_canonical(n_out: usize, n_in: usize, seed: u64) -> (DMatrix<f64>, DMatrix<f64>) {
    let (a0, b0, _, _) = refactor(
        &rand_mat(3, n_in, seed),
        &rand_mat(n_out, 3, seed + 1),
        "canonical",
    );
    // Rows of A cycled and two signs flipped (a signed 3-cycle S, S⁻¹ = Sᵀ ≠ S).
    let s = DMatrix::from_row_slice(3, 3, &[0.0, -1.0, 0.0, 0.0, 0.0, 1.0, -1.0, 0.0, 0.0]);
    (&s * a0, b0 * s.transpose())
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
                let ma = buffer(&opt, &key, "lora_a", "m", (r, n_in));
                let mb = buffer(&opt, &key, "lora_b", "m", (n_out, r));
                let (ea, eb) = (rel_err(&ma, &ga1), rel_err(&mb, &gb1));
                assert!(
                    ea < 1e-10 && eb < 1e-10,
                    "{gauge} {mode:?} shape {n_out}×{r}×{n_in}: m vs ∇f at the new point: {ea:e} {eb:e}"
                );
            }
            // Without transport the stale moment is measurably wrong (the check can fail).
            let mut off = adamw_holding(TransportMode::Off, &key, (&a, &b), (&ga, &gb));
            off.on_refactor(&key, &t);
            let stale = rel_err(&buffer(&off, &key, "lora_a", "m", (r, n_in)), &ga1);
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
    let (a, b) = scrambled_canonical(n_out, n_in, 11);
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
        let va = buffer(&opt, &key, "lora_a", "v", (3, n_in));
        let vb = buffer(&opt, &key, "lora_b", "v", (n_out, 3));
        let (ea, eb) = (rel_err(&va, &va1), rel_err(&vb, &vb1));
        assert!(
            ea < 1e-10 && eb < 1e-10,
            "{mode:?}: v vs (∇f)² at the new point: {ea:e} {eb:e}"
        );
        let ma = buffer(&opt, &key, "lora_a", "m", (3, n_in));
        assert!(rel_err(&ma, &ga1) < 1e-10, "{mode:?}: m");
    }
    // Keeping v (first moments only) leaves it in the old row order: wrong.
    let mut first = adamw_holding(TransportMode::First, &key, (&a, &b), (&ga, &gb));
    first.on_refactor(&key, &t);
    let kept = rel_err(&buffer(&first, &key, "lora_a", "v", (3, n_in)), &va1);
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
        let (na, nb) = opt.step_pair(
            key,
            lr,
            PairStep {
                a: tensor(&a),
                b: tensor(&b),
                grad_a: tensor(&ga),
                grad_b: tensor(&gb),
                grams: None,
            },
        );
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
    let (a, b) = scrambled_canonical(n_out, n_in, 23);
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
            opt.step_pair(
                &key,
                0.0,
                PairStep {
                    a: tensor(&a),
                    b: tensor(&b),
                    grad_a: tensor(&ga),
                    grad_b: tensor(&gb),
                    grams: None,
                },
            );
        }
        let (na, nb) = (t.p.transpose() * &ga, &gb * t.q.transpose());
        va = va * beta2 + na.component_mul(&na) * (1.0 - beta2);
        vb = vb * beta2 + nb.component_mul(&nb) * (1.0 - beta2);
    }
    for opt in [&mut diag, &mut keep] {
        opt.on_refactor(&key, &t);
    }
    let got = |opt: &AdamW<F>| {
        rel_err(&buffer(opt, &key, "lora_a", "v", (r, n_in)), &va)
            .max(rel_err(&buffer(opt, &key, "lora_b", "v", (n_out, r)), &vb))
    };
    let (e_diag, e_keep) = (got(&diag), got(&keep));
    assert!(
        e_diag < 0.1 && e_keep > 2.0 * e_diag,
        "diagonal rule error {e_diag:.3}, kept v error {e_keep:.3}"
    );
}
