//! The Riemannian plugin's moment transport checked against the math: its buffers average the
//! *preconditioned* gradients `(BᵀB)⁻¹∇A`, `∇B(AAᵀ)⁻¹`, so after a re-factorisation they must
//! equal those at the new point. The gradients of a smooth loss of the product come from burn's
//! autodiff in f64, the re-factored pair from the real balanced manifold through the real hook,
//! the r×r inverses from nalgebra's general inverse (the plugin uses Cholesky), with δ = 1e-12 in
//! the plugin (δ > 0 breaks the equivariance only at O(δ)). The optimizer is filled through a step
//! with lr = 0 (β₁ = β₂ = 0, or SGD momentum on its first step), told through `on_refactor`, and
//! its exported state compared; nothing here applies `Q·m` or `(Q∘Q)·v` itself.

use balora_adapter::{apply_manifold, LoraAdapter};
use balora_manifold::{build_manifold, DMatrix, GaugeTransform, OptionValue, Options};
use balora_optim::rules::AdamWParams;
use balora_optim::{signed_permutation, AdapterOptimizer, PairStep, TransportMode};
use balora_plugin_riemannian::{BaseRule, Riemannian};
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

/// `((BᵀB)⁻¹∇A, ∇B(AAᵀ)⁻¹)`.
fn preconditioned(
    (a, b): (&DMatrix<f64>, &DMatrix<f64>),
    (ga, gb): (&DMatrix<f64>, &DMatrix<f64>),
) -> (DMatrix<f64>, DMatrix<f64>) {
    let inv = |m: DMatrix<f64>| m.try_inverse().expect("full-rank Gram");
    (inv(b.transpose() * b) * ga, gb * inv(a * a.transpose()))
}

fn adamw_base() -> BaseRule {
    BaseRule::AdamW(AdamWParams {
        beta1: 0.0,
        beta2: 0.0,
        ..AdamWParams::default()
    })
}

fn holding(
    base: BaseRule,
    mode: TransportMode,
    key: &str,
    (a, b): (&DMatrix<f64>, &DMatrix<f64>),
    (ga, gb): (&DMatrix<f64>, &DMatrix<f64>),
) -> Riemannian<F> {
    let mut opt = Riemannian::<F>::new(base, 1e-12, mode);
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

#[test]
fn first_moment_is_the_preconditioned_gradient_at_the_new_point() {
    let (n_out, n_in, r) = (6, 5, 3);
    let prob = Problem::new(n_out, n_in, 61);
    let (a, b) = (rand_mat(r, n_in, 62) * 1.2, rand_mat(n_out, r, 63) * 0.6);
    let (ga, gb) = prob.grads(&a, &b);
    let bases = [
        adamw_base(),
        BaseRule::Sgd {
            momentum: 0.9,
            weight_decay: 0.0,
        },
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
                let ea = rel_err(&buffer(&opt, &key, "lora_a", "m", (r, n_in)), &pa1);
                let eb = rel_err(&buffer(&opt, &key, "lora_b", "m", (n_out, r)), &pb1);
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
    let (a0, b0, _, _) = refactor(&rand_mat(3, n_in, 72), &rand_mat(n_out, 3, 73), "canonical");
    let s = DMatrix::from_row_slice(3, 3, &[0.0, 1.0, 0.0, 0.0, 0.0, -1.0, -1.0, 0.0, 0.0]);
    let (a, b) = (&s * a0, b0 * s.transpose());
    let (ga, gb) = prob.grads(&a, &b);
    let (a1, b1, t, key) = refactor(&a, &b, "canonical");
    assert!(signed_permutation(&t.p, 1e-9).is_some(), "{}", t.p);
    let (ga1, gb1) = prob.grads(&a1, &b1);
    let (pa1, pb1) = preconditioned((&a1, &b1), (&ga1, &gb1));
    for (mode, exact) in [
        (TransportMode::Signed, true),
        (TransportMode::Diagonal, true),
        (TransportMode::First, false),
    ] {
        let mut opt = holding(adamw_base(), mode, &key, (&a, &b), (&ga, &gb));
        opt.on_refactor(&key, &t);
        let ea = rel_err(
            &buffer(&opt, &key, "lora_a", "v", (3, n_in)),
            &pa1.component_mul(&pa1),
        );
        let eb = rel_err(
            &buffer(&opt, &key, "lora_b", "v", (n_out, 3)),
            &pb1.component_mul(&pb1),
        );
        if exact {
            assert!(ea < 1e-8 && eb < 1e-8, "{mode:?}: {ea:e} {eb:e}");
        } else {
            assert!(ea > 1e-2, "kept v too close ({ea:e})");
        }
    }
}
