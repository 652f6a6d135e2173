//! Adapter diagnostics recorded with every evaluation: how balanced the pairs are, how well
//! conditioned, and how far each factor moved in the step before the evaluation.
//!
//! Per adapter, with `G_A = AAᵀ` (eigenvalues μ) and `G_B = BᵀB` (eigenvalues λ), all in f64:
//!
//! - **balance gap** `‖G_B − G_A‖_F / (‖G_B‖_F + ‖G_A‖_F)`: 0 on the balanced manifold, 1 when
//!   one factor is zero (LoRA's `B = 0` start);
//! - **κ** `= (λ_max + μ_max) / min(λ_min, μ_min)`: the condition number of the nonzero Hessian
//!   spectrum `{λᵢ + μⱼ} ∪ {λᵢ} ∪ {μⱼ}` of `½‖BA − T‖²` at a zero-residual point (the math notes);
//!   `2σ₁/σᵣ` on the balanced manifold, the smallest over all factorizations; infinite when a
//!   factor is rank-deficient (recorded as absent);
//! - **relative step** `‖X_t − X_{t−1}‖_F / ‖X_{t−1}‖_F` for `X = A, B`: the optimizer step plus
//!   the projection, i.e. how far each factor really moved;
//! - **factor ratio** `‖B‖_F / ‖A‖_F`.
//!
//! Each record holds the median over adapters.

use balora_adapter::collect_pairs;
use burn::module::Module;
use burn::tensor::backend::Backend;
use nalgebra::DMatrix;

/// The factors of every adapter, on the host (f32, row-major), in module-path order.
#[derive(Debug, Clone, Default)]
pub struct Snapshot {
    pairs: Vec<(String, Factor, Factor)>,
}

#[derive(Debug, Clone)]
struct Factor {
    rows: usize,
    cols: usize,
    data: Vec<f32>,
}

impl Factor {
    fn of<B: Backend>(t: &burn::tensor::Tensor<B, 2>) -> Option<Self> {
        let [rows, cols] = t.dims();
        let data = t.clone().into_data().convert::<f32>().to_vec().ok()?;
        Some(Self { rows, cols, data })
    }
    fn norm(&self) -> f64 {
        self.data
            .iter()
            .map(|&x| f64::from(x) * f64::from(x))
            .sum::<f64>()
            .sqrt()
    }
    fn dist(&self, other: &Factor) -> f64 {
        self.data
            .iter()
            .zip(&other.data)
            .map(|(&x, &y)| (f64::from(x) - f64::from(y)).powi(2))
            .sum::<f64>()
            .sqrt()
    }
    fn matrix(&self) -> DMatrix<f64> {
        DMatrix::from_row_iterator(
            self.rows,
            self.cols,
            self.data.iter().map(|&x| f64::from(x)),
        )
    }
}

/// Copies every adapter's factors of `module` to the host.
pub fn snapshot<B: Backend, M: Module<B>>(module: &M) -> Snapshot {
    let pairs = collect_pairs(module)
        .into_iter()
        .filter_map(|p| Some((p.key, Factor::of(&p.a)?, Factor::of(&p.b)?)))
        .collect();
    Snapshot { pairs }
}

/// Medians over adapters (see the module doc); `None` where undefined.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct AdapterStats {
    /// Balance gap.
    pub balance_gap: Option<f64>,
    /// log10 κ (adapters with infinite κ count as +∞ in the median).
    pub log10_kappa: Option<f64>,
    /// Relative step of A.
    pub step_a: Option<f64>,
    /// Relative step of B (undefined while B was zero before the step).
    pub step_b: Option<f64>,
    /// ‖B‖ / ‖A‖.
    pub b_over_a: Option<f64>,
}

fn median(mut v: Vec<f64>) -> Option<f64> {
    v.retain(|x| !x.is_nan());
    if v.is_empty() {
        return None;
    }
    v.sort_by(f64::total_cmp);
    let n = v.len();
    let m = if n % 2 == 1 {
        v[n / 2]
    } else {
        0.5 * (v[n / 2 - 1] + v[n / 2])
    };
    m.is_finite().then_some(m)
}

/// Balance gap and κ of one pair from its factors (A `r×in`, B `out×r`).
pub fn pair_gap_kappa(a: &DMatrix<f64>, b: &DMatrix<f64>) -> (f64, f64) {
    let ga = a * a.transpose();
    let gb = b.transpose() * b;
    let denom = gb.norm() + ga.norm();
    let gap = if denom > 0.0 {
        (&gb - &ga).norm() / denom
    } else {
        f64::NAN
    };
    let mu = ga.symmetric_eigen().eigenvalues;
    let la = gb.symmetric_eigen().eigenvalues;
    let lo = mu.min().min(la.min());
    let kappa = if lo > 0.0 {
        (la.max() + mu.max()) / lo
    } else {
        f64::INFINITY
    };
    (gap, kappa)
}

/// The statistics of `after`, with the relative steps measured from `before` when given (same
/// adapters in the same order; otherwise the steps are absent).
pub fn stats(before: Option<&Snapshot>, after: &Snapshot) -> AdapterStats {
    if after.pairs.is_empty() {
        return AdapterStats::default();
    }
    let (mut gaps, mut kappas, mut ratios) = (Vec::new(), Vec::new(), Vec::new());
    for (_, a, b) in &after.pairs {
        let (gap, kappa) = pair_gap_kappa(&a.matrix(), &b.matrix());
        gaps.push(gap);
        kappas.push(kappa.log10());
        ratios.push(b.norm() / a.norm());
    }
    let (mut sa, mut sb) = (Vec::new(), Vec::new());
    if let Some(prev) = before.filter(|p| {
        p.pairs.len() == after.pairs.len()
            && p.pairs.iter().zip(&after.pairs).all(|(x, y)| {
                x.0 == y.0 && x.1.data.len() == y.1.data.len() && x.2.data.len() == y.2.data.len()
            })
    }) {
        for ((_, a0, b0), (_, a1, b1)) in prev.pairs.iter().zip(&after.pairs) {
            sa.push(a1.dist(a0) / a0.norm());
            sb.push(b1.dist(b0) / b0.norm());
        }
    }
    AdapterStats {
        balance_gap: median(gaps),
        log10_kappa: median(kappas),
        step_a: median(sa),
        step_b: median(sb),
        b_over_a: median(ratios),
    }
}
