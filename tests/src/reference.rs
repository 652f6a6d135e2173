//! f64 host references, written here from the math and NOT calling the code under test
//! (no `balora_manifold` gauge code, no `balora_optim` rules): plain nalgebra products,
//! nalgebra's SVD of the dense product `B·A`, and the optimizer updates in closed form.

use nalgebra::{DMatrix, DVector};
use rand::{rngs::StdRng, Rng, SeedableRng};
use rand_distr::StandardNormal;

/// A dense f64 matrix.
pub type M = DMatrix<f64>;

/// A seeded generator of test inputs.
pub struct Gen(StdRng);

impl Gen {
    /// Seeded generator.
    pub fn new(seed: u64) -> Self {
        Self(StdRng::seed_from_u64(seed))
    }
    /// `N(0, σ²)` entries, rounded to f32 so host and device see the same numbers.
    pub fn normal(&mut self, r: usize, c: usize, sigma: f64) -> M {
        M::from_fn(r, c, |_, _| {
            let z: f64 = self.0.sample(StandardNormal);
            f32_round(z * sigma)
        })
    }
    /// Entries uniform in `±[lo, hi]` (never near zero), rounded to f32.
    pub fn away_from_zero(&mut self, r: usize, c: usize, lo: f64, hi: f64) -> M {
        M::from_fn(r, c, |_, _| {
            let mag = self.0.random_range(lo..hi);
            let sign = if self.0.random_bool(0.5) { 1.0 } else { -1.0 };
            f32_round(sign * mag)
        })
    }
    /// A random n×k matrix with orthonormal columns (QR of a Gaussian matrix).
    pub fn orthonormal(&mut self, n: usize, k: usize) -> M {
        let g = M::from_fn(n, k, |_, _| self.0.sample(StandardNormal));
        g.qr().q().columns(0, k).into_owned()
    }
}

/// Rounds to the nearest f32 (inputs are exactly representable on every backend).
pub fn f32_round(v: f64) -> f64 {
    v as f32 as f64
}

/// Element-wise absolute value.
pub fn abs(m: &M) -> M {
    m.map(f64::abs)
}

/// `y = x·W + 1·bᵀ + s·(x·Aᵀ)·Bᵀ` with burn's layout `W [in, out]`, and the same expression on
/// absolute values (the scale that floating-point error bounds are proportional to).
pub fn lora_forward(x: &M, w: &M, bias: Option<&[f64]>, a: &M, b: &M, s: f64) -> (M, M) {
    let mut y = x * w + (x * a.transpose()) * b.transpose() * s;
    let mut scale = abs(x) * abs(w) + (abs(x) * abs(a).transpose()) * abs(b).transpose() * s.abs();
    if let Some(bias) = bias {
        for mut row in y.row_iter_mut() {
            for (v, bj) in row.iter_mut().zip(bias) {
                *v += bj;
            }
        }
        for mut row in scale.row_iter_mut() {
            for (v, bj) in row.iter_mut().zip(bias) {
                *v += bj.abs();
            }
        }
    }
    (y, scale)
}

/// Gradients of `L = Σ y ⊙ G` w.r.t. A and B (`∂L/∂y = G`), with their absolute-value scales:
/// `∂L/∂B = s·Gᵀ·(x·Aᵀ)`, `∂L/∂A = s·(G·B)ᵀ·x`.
pub fn lora_grads(x: &M, a: &M, b: &M, g: &M, s: f64) -> ((M, M), (M, M)) {
    let gb = g.transpose() * (x * a.transpose()) * s;
    let gb_scale = abs(g).transpose() * (abs(x) * abs(a).transpose()) * s.abs();
    let ga = (g * b).transpose() * x * s;
    let ga_scale = (abs(g) * abs(b)).transpose() * abs(x) * s.abs();
    ((ga, ga_scale), (gb, gb_scale))
}

/// Singular triplets of `m` sorted by decreasing singular value, truncated to `k`.
pub fn svd_top(m: &M, k: usize) -> (M, DVector<f64>, M) {
    let svd = m.clone().svd(true, true);
    let (u, vt) = (svd.u.expect("u"), svd.v_t.expect("v_t"));
    let mut idx: Vec<usize> = (0..svd.singular_values.len()).collect();
    idx.sort_by(|&i, &j| svd.singular_values[j].total_cmp(&svd.singular_values[i]));
    let idx = &idx[..k];
    let u_k = M::from_fn(m.nrows(), k, |r, c| u[(r, idx[c])]);
    let vt_k = M::from_fn(k, m.ncols(), |r, c| vt[(idx[r], c)]);
    let s_k = DVector::from_fn(k, |i, _| svd.singular_values[idx[i]]);
    (u_k, s_k, vt_k)
}

/// The balanced pair in SVD coordinates of the product `B·A` (rank k):
/// `A₀ = Σ^{1/2}Vᵀ`, `B₀ = UΣ^{1/2}` — the canonical gauge, up to the sign of each row/column.
pub fn balanced_canonical(a: &M, b: &M, k: usize) -> (M, M) {
    let (u, s, vt) = svd_top(&(b * a), k);
    let sq = DMatrix::from_diagonal(&s.map(f64::sqrt));
    (&sq * vt, u * sq)
}

/// The balanced pair with the same product nearest to `(A, B)` in Frobenius norm: among
/// `(Oᵀ A₀, B₀ O)`, `O` orthogonal, maximise `tr(Oᵀ(B₀ᵀB + A₀Aᵀ))` (orthogonal Procrustes).
pub fn balanced_closest(a: &M, b: &M) -> (M, M) {
    let k = a.nrows();
    let (a0, b0) = balanced_canonical(a, b, k);
    let m = b0.transpose() * b + &a0 * a.transpose();
    let svd = m.svd(true, true);
    let o = svd.u.expect("u") * svd.v_t.expect("v_t");
    (o.transpose() * a0, b0 * o)
}

/// Relative Frobenius distance `‖x − y‖/‖y‖` (absolute when `y = 0`).
pub fn rel(x: &M, y: &M) -> f64 {
    let d = (x - y).norm();
    let n = y.norm();
    if n > 0.0 {
        d / n
    } else {
        d
    }
}

/// The canonical gauge's rows are defined up to sign: flip row i of `a` and column i of `b`
/// together so that they agree with `(a_ref, b_ref)`.
pub fn align_signs(a: &M, b: &M, a_ref: &M, b_ref: &M) -> (M, M) {
    let (mut a, mut b) = (a.clone(), b.clone());
    for i in 0..a.nrows() {
        if a.row(i).dot(&a_ref.row(i)) + b.column(i).dot(&b_ref.column(i)) < 0.0 {
            a.row_mut(i).neg_mut();
            b.column_mut(i).neg_mut();
        }
    }
    (a, b)
}

/// An optimizer's update, element-wise in f64, with the state it carries between steps.
#[derive(Debug, Clone)]
pub enum OptRef {
    /// AdamW: `m ← β₁m + (1−β₁)g`, `v ← β₂v + (1−β₂)g²`, bias-corrected, decoupled decay λ.
    AdamW {
        /// β₁.
        beta1: f64,
        /// β₂.
        beta2: f64,
        /// ε.
        eps: f64,
        /// λ.
        wd: f64,
    },
    /// SGD with momentum μ (`m ← μm + g`) and decoupled decay λ.
    Sgd {
        /// μ.
        mu: f64,
        /// λ.
        wd: f64,
    },
    /// Sign descent `θ ← θ − η·g/(|g| + ε)`.
    Sign {
        /// ε.
        eps: f64,
    },
}

/// Per-tensor optimizer state of [`OptRef`].
#[derive(Debug, Clone, Default)]
pub struct OptState {
    t: i32,
    m: Vec<f64>,
    v: Vec<f64>,
}

impl OptRef {
    /// One update of `theta` (in place) with gradient `g`; returns, per element, the magnitude
    /// scale of the computation (`|θ| + η·|direction|`) for error bounds.
    pub fn step(&self, st: &mut OptState, lr: f64, theta: &mut [f64], g: &[f64]) -> Vec<f64> {
        let n = theta.len();
        if st.m.len() != n {
            st.m = vec![0.0; n];
            st.v = vec![0.0; n];
        }
        st.t += 1;
        let mut scale = vec![0.0; n];
        for i in 0..n {
            let (dir, decay) = match *self {
                OptRef::AdamW {
                    beta1,
                    beta2,
                    eps,
                    wd,
                } => {
                    st.m[i] = beta1 * st.m[i] + (1.0 - beta1) * g[i];
                    st.v[i] = beta2 * st.v[i] + (1.0 - beta2) * g[i] * g[i];
                    let mh = st.m[i] / (1.0 - beta1.powi(st.t));
                    let vh = st.v[i] / (1.0 - beta2.powi(st.t));
                    (mh / (vh.sqrt() + eps), 1.0 - lr * wd)
                }
                OptRef::Sgd { mu, wd } => {
                    let d = if mu != 0.0 {
                        st.m[i] = mu * st.m[i] + g[i];
                        st.m[i]
                    } else {
                        g[i]
                    };
                    (d, 1.0 - lr * wd)
                }
                OptRef::Sign { eps } => (g[i] / (g[i].abs() + eps), 1.0),
            };
            scale[i] = theta[i].abs() + lr * dir.abs();
            theta[i] = theta[i] * decay - lr * dir;
        }
        scale
    }
}

/// Row-major values of a matrix.
pub fn row_major(m: &M) -> Vec<f64> {
    m.transpose().iter().copied().collect()
}

/// A matrix from row-major values.
pub fn from_row_major(r: usize, c: usize, v: &[f64]) -> M {
    M::from_row_slice(r, c, v)
}

/// Which manifold a reference training run projects onto after each step.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RefManifold {
    /// Plain LoRA.
    None,
    /// Balanced, closest gauge.
    Closest,
    /// Balanced, canonical gauge.
    Canonical,
}

/// The synthetic problem `½‖W0 + B·A − T‖²` trained in f64: loss after each of `steps` steps
/// (`steps + 1` values) and the smallest |gradient entry| relative to the largest seen (how far
/// the run stays from the sign ambiguity of sign-like optimizers).
pub fn train_synthetic(
    w0: &M,
    t: &M,
    a0: &M,
    opt: &OptRef,
    manifold: RefManifold,
    lr: f64,
    steps: usize,
) -> (Vec<f64>, f64) {
    let (d_out, r) = (w0.nrows(), a0.nrows());
    let mut a = a0.clone();
    let mut b = M::zeros(d_out, r);
    let (mut sa, mut sb) = (OptState::default(), OptState::default());
    let mut losses = Vec::new();
    let mut min_rel_grad = f64::INFINITY;
    for k in 0..=steps {
        let res = w0 + &b * &a - t;
        losses.push(0.5 * res.norm_squared());
        if k == steps {
            break;
        }
        let ga = b.transpose() * &res;
        let gb = &res * a.transpose();
        // Entries that are exactly zero stay zero on every backend (B = 0 at step 0).
        let gmax = ga.amax().max(gb.amax());
        for v in ga.iter().chain(gb.iter()) {
            if *v != 0.0 {
                min_rel_grad = min_rel_grad.min(v.abs() / gmax);
            }
        }
        let mut av = row_major(&a);
        let mut bv = row_major(&b);
        opt.step(&mut sa, lr, &mut av, &row_major(&ga));
        opt.step(&mut sb, lr, &mut bv, &row_major(&gb));
        a = from_row_major(a.nrows(), a.ncols(), &av);
        b = from_row_major(b.nrows(), b.ncols(), &bv);
        match manifold {
            RefManifold::None => {}
            RefManifold::Closest => (a, b) = balanced_closest(&a, &b),
            RefManifold::Canonical => (a, b) = balanced_canonical(&a, &b, r),
        }
    }
    (losses, min_rel_grad)
}
