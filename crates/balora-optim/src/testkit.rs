//! Test harness for moment transport, for balora's own optimizers and for third-party plugins.
//!
//! Enabled by the non-default cargo feature `testkit` (it turns on the `ndarray` backend); a
//! plugin enables it in its dev-dependencies:
//!
//! ```toml
//! [dev-dependencies]
//! balora-optim = { workspace = true, features = ["testkit"] }
//! ```
//!
//! **What it checks.** An optimizer that keeps per-factor moments must carry them across a
//! re-factorisation `(A, B) → (Q·A, B·P)` ([`AdapterOptimizer::on_refactor`]) so that they mean
//! the same thing at the new point. For a buffer that averages gradients, that is: after
//! `on_refactor`, it must hold the gradient *at the re-factored pair*. This module gives
//!
//! * a smooth loss of the product only, [`Problem`]:
//!   `f(A, B) = ½‖(W0 + s·B·A)·X − Y‖² + 0.3·Σ tanh²((W0 + s·B·A)·X)` with `s =` [`SCALE`],
//!   and its gradients [`Problem::grads`] by burn's autodiff on an f64 backend ([`AD`]);
//! * the re-factored pair and its transform from the *real* manifold through the real hook
//!   ([`refactor`], i.e. `balora_adapter::apply_manifold` with the balanced manifold);
//! * a way to make an optimizer hold `m = ∇f` and `v = ∇f²` at the old point ([`fill_moments`]:
//!   one step with `lr = 0`; configure β₁ = β₂ = 0, e.g. [`zero_beta_adamw`]), and to read its
//!   exported state back ([`buffer`], [`buffer_errors`]).
//!
//! **Why the reference is independent.** The expected buffers are the autodiff gradients of `f`
//! evaluated at the pair the manifold returned — computed from the loss, not from the transport
//! formulas. Nothing here applies `Pᵀ·m` or `(P∘P)ᵀ·v`; an optimizer that transports wrongly
//! (or not at all) lands measurably away from the reference (the tests also check that the
//! untransported state is wrong, so the comparison can fail).
//!
//! ```
//! use balora_optim::testkit::{
//!     buffer_errors, fill_moments, rand_mat, refactor, zero_beta_adamw, Problem, F64,
//! };
//! use balora_optim::{AdamW, AdapterOptimizer, TransportMode};
//!
//! let (n_out, n_in, r) = (6, 5, 3);
//! let prob = Problem::new(n_out, n_in, 1);
//! let (a, b) = (rand_mat(r, n_in, 2) * 1.5, rand_mat(n_out, r, 3) * 0.4);
//! let (ga, gb) = prob.grads(&a, &b);
//! let (a1, b1, t, key) = refactor(&a, &b, "closest");
//! let (ga1, gb1) = prob.grads(&a1, &b1);
//! let mut opt = fill_moments(
//!     AdamW::<F64>::new(zero_beta_adamw(), TransportMode::First),
//!     &key,
//!     (&a, &b),
//!     (&ga, &gb),
//! );
//! opt.on_refactor(&key, &t);
//! let (err_a, err_b) = buffer_errors(&opt, &key, "m", (&ga1, &gb1));
//! assert!(err_a < 1e-10 && err_b < 1e-10, "{err_a:e} {err_b:e}");
//! // Without transport, m is stale: the comparison can fail.
//! let mut off = fill_moments(
//!     AdamW::<F64>::new(zero_beta_adamw(), TransportMode::Off),
//!     &key,
//!     (&a, &b),
//!     (&ga, &gb),
//! );
//! off.on_refactor(&key, &t);
//! assert!(buffer_errors(&off, &key, "m", (&ga1, &gb1)).0 > 1e-2);
//! ```

use crate::rules::AdamWParams;
use crate::{AdapterOptimizer, PairStep};
use balora_adapter::{apply_manifold, LoraAdapter};
use balora_manifold::{build_manifold, DMatrix, GaugeTransform, OptionValue, Options, PairGrams};
use burn::backend::Autodiff;
use burn::tensor::{backend::Backend, Tensor, TensorData};

/// The f64 CPU backend the harness runs optimizers on.
pub type F64 = burn_ndarray::NdArray<f64>;
/// Its autodiff wrapper, for the reference gradients.
pub type AD = Autodiff<F64>;
/// LoRA scale `s` of the adapter in [`Problem`] and [`refactor`].
pub const SCALE: f64 = 0.7;

/// Deterministic pseudo-random matrix with entries in [-1, 1) (xorshift; same seed, same matrix).
pub fn rand_mat(rows: usize, cols: usize, seed: u64) -> DMatrix<f64> {
    let mut s = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    DMatrix::from_fn(rows, cols, |_, _| {
        s ^= s << 13;
        s ^= s >> 7;
        s ^= s << 17;
        (s >> 11) as f64 / (1u64 << 52) as f64 - 1.0
    })
}

/// `m` as a tensor of backend `B` (rounded to its float type, e.g. f32).
pub fn tensor<B: Backend>(m: &DMatrix<f64>) -> Tensor<B, 2> {
    let rows: Vec<f64> = m.transpose().iter().copied().collect();
    Tensor::from_data(
        TensorData::new(rows, [m.nrows(), m.ncols()]),
        &Default::default(),
    )
}

/// A 2-d tensor as an f64 matrix.
pub fn matrix<B: Backend>(t: Tensor<B, 2>) -> DMatrix<f64> {
    let [r, c] = t.dims();
    let v: Vec<f64> = t.into_data().iter::<f64>().collect();
    DMatrix::from_row_slice(r, c, &v)
}

/// Relative max-abs error `‖got − want‖∞ / ‖want‖∞`.
pub fn rel_err(got: &DMatrix<f64>, want: &DMatrix<f64>) -> f64 {
    (got - want).amax() / want.amax().max(1e-300)
}

/// The fixed parts of the loss: `W0` (out×in), `X` (in×k), `Y` (out×k).
#[derive(Debug, Clone)]
pub struct Problem {
    /// Frozen base weight, out×in.
    pub w0: DMatrix<f64>,
    /// Inputs, in×7.
    pub x: DMatrix<f64>,
    /// Targets, out×7.
    pub y: DMatrix<f64>,
}

impl Problem {
    /// A random problem for adapters of shape out×r×in.
    pub fn new(n_out: usize, n_in: usize, seed: u64) -> Self {
        Self {
            w0: rand_mat(n_out, n_in, seed),
            x: rand_mat(n_in, 7, seed + 1),
            y: rand_mat(n_out, 7, seed + 2),
        }
    }

    /// `(∇A f, ∇B f)` at `(A, B)` by autodiff in f64.
    pub fn grads(&self, a: &DMatrix<f64>, b: &DMatrix<f64>) -> (DMatrix<f64>, DMatrix<f64>) {
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

/// The real hook with the balanced manifold of `gauge` (`canonical`/`closest`) on one adapter:
/// `(A', B', transform, adapter key)`. Panics unless the pair was re-factored.
pub fn refactor(
    a: &DMatrix<f64>,
    b: &DMatrix<f64>,
    gauge: &str,
) -> (DMatrix<f64>, DMatrix<f64>, GaugeTransform, String) {
    let manifold = build_manifold(
        "balanced",
        &Options::default().with("gauge", OptionValue::Str(gauge.into())),
    )
    .unwrap();
    let adapter = LoraAdapter::<F64>::from_tensors(tensor(a), tensor(b), SCALE, 0.0);
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

/// A canonical balanced pair (from `rand_mat` seeds `seed`, `seed + 1`, rank 3) with its gauge
/// scrambled by the 3×3 signed permutation `s`: `(S·A, B·Sᵀ)`. Re-factoring it with the canonical
/// gauge undoes a signed permutation.
pub fn scrambled_canonical(
    n_out: usize,
    n_in: usize,
    seed: u64,
    s: &DMatrix<f64>,
) -> (DMatrix<f64>, DMatrix<f64>) {
    let (a0, b0, _, _) = refactor(
        &rand_mat(3, n_in, seed),
        &rand_mat(n_out, 3, seed + 1),
        "canonical",
    );
    (s * a0, b0 * s.transpose())
}

/// The step input for `(A, B)` with gradients `(∇A, ∇B)`, no Grams.
pub fn pair_step<B: Backend>(
    (a, b): (&DMatrix<f64>, &DMatrix<f64>),
    (ga, gb): (&DMatrix<f64>, &DMatrix<f64>),
) -> PairStep<B> {
    PairStep {
        a: tensor(a),
        b: tensor(b),
        grad_a: tensor(ga),
        grad_b: tensor(gb),
        grams: None,
    }
}

/// One `step_pair` of `opt` for adapter `key` on the device factors `(a, b)` with host gradients
/// `(∇A, ∇B)` (uploaded) and optional Grams: the new device factors.
pub fn step_host<B: Backend, O: AdapterOptimizer<B> + ?Sized>(
    opt: &mut O,
    (key, lr): (&str, f64),
    (a, b): (Tensor<B, 2>, Tensor<B, 2>),
    (ga, gb): (&DMatrix<f64>, &DMatrix<f64>),
    grams: Option<PairGrams>,
) -> (Tensor<B, 2>, Tensor<B, 2>) {
    let step = PairStep {
        a,
        b,
        grad_a: tensor(ga),
        grad_b: tensor(gb),
        grams,
    };
    opt.step_pair(key, lr, step)
}

/// AdamW hyper-parameters with β₁ = β₂ = 0 (the rest default): after one step, `m = ∇` and
/// `v = ∇²` element-wise, which is what [`fill_moments`] needs.
pub fn zero_beta_adamw() -> AdamWParams {
    AdamWParams {
        beta1: 0.0,
        beta2: 0.0,
        ..AdamWParams::default()
    }
}

/// `opt` after one step with `lr = 0` on adapter `key` at `(A, B)` with gradients `(∇A, ∇B)`:
/// with β₁ = β₂ = 0 (or SGD momentum on its first step) its buffers hold the gradients.
pub fn fill_moments<O: AdapterOptimizer<F64>>(
    mut opt: O,
    key: &str,
    pair: (&DMatrix<f64>, &DMatrix<f64>),
    grads: (&DMatrix<f64>, &DMatrix<f64>),
) -> O {
    opt.step_pair(key, 0.0, pair_step(pair, grads));
    opt
}

/// Exported buffer `name` (`m` or `v`) of factor `which` (`lora_a`/`lora_b`) of adapter `key`, as
/// a `shape.0 × shape.1` matrix. Panics, naming the entry, if the optimizer does not export it.
pub fn buffer(
    opt: &dyn AdapterOptimizer<F64>,
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

/// [`rel_err`] of the exported buffers `name` of both factors of adapter `key` against
/// `(want_a, want_b)` (whose shapes the buffers are read with): `(error of A's, error of B's)`.
pub fn buffer_errors(
    opt: &dyn AdapterOptimizer<F64>,
    key: &str,
    name: &str,
    (want_a, want_b): (&DMatrix<f64>, &DMatrix<f64>),
) -> (f64, f64) {
    let got =
        |which, want: &DMatrix<f64>| rel_err(&buffer(opt, key, which, name, want.shape()), want);
    (got("lora_a", want_a), got("lora_b", want_b))
}

/// AdamW written out element by element in f64 (bias correction, decoupled weight decay): the
/// closed-form reference the optimizer tests compare against, independent of [`crate::rules`].
#[derive(Debug, Clone)]
pub struct RefAdamW {
    hp: AdamWParams,
    m: DMatrix<f64>,
    v: DMatrix<f64>,
    t: i32,
}

impl RefAdamW {
    /// Zero moments for a parameter of `shape` (rows, cols).
    pub fn new(shape: (usize, usize), hp: AdamWParams) -> Self {
        Self {
            hp,
            m: DMatrix::zeros(shape.0, shape.1),
            v: DMatrix::zeros(shape.0, shape.1),
            t: 0,
        }
    }

    /// `theta` after one step with gradient `g` and learning rate `lr`.
    pub fn step(&mut self, theta: &DMatrix<f64>, g: &DMatrix<f64>, lr: f64) -> DMatrix<f64> {
        let AdamWParams {
            beta1: b1,
            beta2: b2,
            eps,
            weight_decay: wd,
        } = self.hp;
        self.t += 1;
        let mut out = theta.clone();
        for i in 0..theta.len() {
            self.m[i] = b1 * self.m[i] + (1.0 - b1) * g[i];
            self.v[i] = b2 * self.v[i] + (1.0 - b2) * g[i] * g[i];
            let mhat = self.m[i] / (1.0 - b1.powi(self.t));
            let vhat = self.v[i] / (1.0 - b2.powi(self.t));
            out[i] = theta[i] * (1.0 - lr * wd) - lr * mhat / (vhat.sqrt() + eps);
        }
        out
    }
}
