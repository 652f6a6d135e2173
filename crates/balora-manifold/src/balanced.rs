//! BaLoRA: the balanced manifold `BᵀB = AAᵀ` (Castin, Nadjahi, Ablin, Peyré, ICML 2026).
//!
//! All math below uses only the Grams `G_A = AAᵀ`, `G_B = BᵀB` (r×r, f64) and returns a gauge
//! transform `A' = Q·A`, `B' = B·P`, `P·Q = I`.
//!
//! **Canonical gauge** (the paper's Algorithm 1). Polar factors `A = S_A R_A`, `B = R_B S_B` with
//! `S_A = G_A^{1/2}`, `S_B = G_B^{1/2}`; SVD of the core `S_B S_A = U Σ Vᵀ`; then
//! `A' = Σ^{1/2} Vᵀ R_A = (Σ^{1/2} Vᵀ S_A⁻¹)·A` and `B' = R_B U Σ^{1/2} = B·(S_B⁻¹ U Σ^{1/2})`.
//! The result has `B'ᵀB' = A'A'ᵀ = Σ`, the singular values of `BA`, and its rows are the scaled
//! right singular vectors of `BA` — with the SVD's arbitrary signs, which flip from step to step.
//!
//! **Closest gauge** (default). Balanced pairs with the same product are `(Oᵀ A₀, B₀ O)`,
//! `O ∈ O(r)`. The one nearest to the current `(A, B)` in Frobenius norm maximises
//! `tr(Oᵀ M)`, `M = B₀ᵀ B + A₀ Aᵀ = P₀ᵀ G_B + Q₀ G_A`; with `M = U_M Σ_M V_Mᵀ`, `O = U_M V_Mᵀ`
//! (orthogonal Procrustes). It is continuous in (A, B) and does not flip signs.
//!
//! **Rank deficiency.** Directions of the gauge space where `G_B` (then `G_A`) has eigenvalues
//! `≤ rank_tol·λ_max` are split off and left exactly as they are (`P = Q = I` there), the rest
//! (rank k) is balanced. So `P·Q = I` always holds, the product is preserved, and a direction in
//! which B is zero but A is not keeps its A-row (and so a nonzero gradient for B).
//!
//! **Scale-aware start** (`start_ratio = ρ`, default 0: off). Right after a `B = 0` init the
//! product is tiny, and balancing it shrinks both factors to `√σ(BA)`: Adam's per-coordinate steps
//! (≈ lr each) then move a product of that small scale slowly. With ρ > 0 an adapter is projected
//! only once `tr(BᵀB) ≥ ρ·tr(AAᵀ)`, i.e. once B carries a fraction ρ of A's energy. A projection
//! makes the two traces equal, so for ρ < 1 an adapter stays on once started; the rule needs no
//! state (it is decided from the Grams at every step).

use crate::linalg::{split_range, sqrt_and_inv_sqrt, svd_desc};
use crate::{
    GaugeTransform, Manifold, ManifoldError, OptionDoc, Options, OptionsError, PairGrams, Refactor,
    Schedule,
};
use nalgebra::DMatrix;

/// Which balanced point of the gauge orbit to pick.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Gauge {
    /// Nearest balanced pair to the current one (orthogonal Procrustes). Default.
    Closest,
    /// The paper's Algorithm 1: SVD coordinates of `BA`.
    Canonical,
}

/// Default relative eigenvalue threshold below which a gauge direction counts as null.
/// Grams of f32 factors carry relative errors near 1e-7, so smaller eigenvalues are noise.
pub const DEFAULT_RANK_TOL: f64 = 1e-7;

/// Balanced re-factorisation of one pair: the transform and the rank that was balanced.
pub fn balance(grams: &PairGrams, gauge: Gauge, rank_tol: f64) -> Refactor {
    let r = grams.rank();
    // Gauge directions where B is (numerically) nonzero, then among those where A is.
    let (zb_active, _zb_null) = split_range(&grams.btb, rank_tol);
    let ga_in_b = zb_active.transpose() * &grams.aat * &zb_active;
    let (y_active, _y_null) = split_range(&ga_in_b, rank_tol);
    let w = &zb_active * &y_active; // r×k orthonormal basis of the balanced subspace
    let k = w.ncols();
    if k == 0 {
        // Zero product (e.g. B = 0 at init): nothing to balance; projecting would kill the pair.
        return Refactor {
            transform: GaugeTransform::identity(r),
            active_rank: 0,
        };
    }
    let ga = w.transpose() * &grams.aat * &w;
    let gb = w.transpose() * &grams.btb * &w;
    let (s_a, s_a_inv) = sqrt_and_inv_sqrt(&ga);
    let (s_b, s_b_inv) = sqrt_and_inv_sqrt(&gb);
    let (u, sigma, vt) = svd_desc(&(&s_b * &s_a));
    let sqrt_sigma = DMatrix::from_diagonal(&sigma.map(f64::sqrt));
    let inv_sqrt_sigma = DMatrix::from_diagonal(&sigma.map(|s| 1.0 / s.sqrt()));
    // Canonical balanced pair in the k-dim coordinates: A₀ = Q₀·A_k, B₀ = B_k·P₀.
    let mut p_k = &s_b_inv * &u * &sqrt_sigma;
    let mut q_k = &sqrt_sigma * &vt * &s_a_inv;
    // Q₀ = P₀⁻¹ exactly in exact arithmetic; recompute as Σ^{-1/2} Uᵀ S_B so P·Q = I to f64 precision
    // even when Σ spreads widely (Vᵀ S_A⁻¹ = Σ⁻¹ Uᵀ S_B since S_B S_A = U Σ Vᵀ).
    if sigma.iter().all(|&s| s > 0.0) {
        q_k = &inv_sqrt_sigma * u.transpose() * &s_b;
    }
    let complement = DMatrix::identity(r, r) - &w * w.transpose();
    let (p, q) = match gauge {
        Gauge::Canonical => {
            // Balanced rows first (SVD order), untouched null directions after them.
            let null = complement_basis(&w);
            let mut p = DMatrix::zeros(r, r);
            let mut q = DMatrix::zeros(r, r);
            p.columns_mut(0, k).copy_from(&(&w * &p_k));
            q.rows_mut(0, k).copy_from(&(&q_k * w.transpose()));
            if r > k {
                p.columns_mut(k, r - k).copy_from(&null);
                q.rows_mut(k, r - k).copy_from(&null.transpose());
            }
            (p, q)
        }
        Gauge::Closest => {
            let m = p_k.transpose() * &gb + &q_k * &ga;
            let (um, _, vmt) = svd_desc(&m);
            let o = um * vmt;
            p_k *= &o;
            q_k = o.transpose() * q_k;
            (
                &w * &p_k * w.transpose() + &complement,
                &w * &q_k * w.transpose() + &complement,
            )
        }
    };
    Refactor {
        transform: GaugeTransform { p, q },
        active_rank: k,
    }
}

/// An orthonormal basis of the orthogonal complement of the orthonormal columns of `w` (r×(r−k)):
/// the eigenvectors of the projector `I − WWᵀ` with eigenvalue 1.
fn complement_basis(w: &DMatrix<f64>) -> DMatrix<f64> {
    let r = w.nrows();
    let proj = DMatrix::identity(r, r) - w * w.transpose();
    split_range(&proj, 0.5).0
}

/// The `rank_tol` option of manifolds that leave null gauge directions alone (`balanced`,
/// `orthonormal`): a relative eigenvalue in (0, 1), default [`DEFAULT_RANK_TOL`].
pub fn rank_tol_option(opts: &Options) -> Result<f64, OptionsError> {
    opts.f64_where("rank_tol", DEFAULT_RANK_TOL, "in (0, 1)", |v| {
        v > 0.0 && v < 1.0
    })
}

/// The BaLoRA manifold: balance every adapter after the optimizer step.
#[derive(Debug, Clone)]
pub struct Balanced {
    /// Gauge choice.
    pub gauge: Gauge,
    /// Project after every `every` steps.
    pub every: u64,
    /// First step (1-based) after which projections run.
    pub start_step: u64,
    /// Relative eigenvalue threshold for rank deficiency.
    pub rank_tol: f64,
    /// Scale-aware start: project an adapter only when `tr(BᵀB) ≥ start_ratio·tr(AAᵀ)`
    /// (0: always).
    pub start_ratio: f64,
}

impl Default for Balanced {
    fn default() -> Self {
        Self {
            gauge: Gauge::Closest,
            every: 1,
            start_step: 1,
            rank_tol: DEFAULT_RANK_TOL,
            start_ratio: 0.0,
        }
    }
}

impl Balanced {
    /// From config options (`gauge`, `every`, `start_step`, `rank_tol`, `start_ratio`).
    pub fn from_options(opts: &Options) -> Result<Self, ManifoldError> {
        opts.reject_unknown(
            "manifold.balanced",
            &["gauge", "every", "start_step", "rank_tol", "start_ratio"],
        )?;
        let gauge = match opts.choice_or("gauge", "closest", &["closest", "canonical"])? {
            "canonical" => Gauge::Canonical,
            _ => Gauge::Closest,
        };
        let Schedule { every, start_step } = Schedule::from_options(opts)?;
        let rank_tol = rank_tol_option(opts)?;
        let start_ratio =
            opts.f64_where("start_ratio", 0.0, "in [0, 1)", |v| (0.0..1.0).contains(&v))?;
        Ok(Self {
            gauge,
            every,
            start_step,
            rank_tol,
            start_ratio,
        })
    }
}

impl Manifold for Balanced {
    fn name(&self) -> &str {
        match self.gauge {
            Gauge::Closest => "balanced(closest)",
            Gauge::Canonical => "balanced(canonical)",
        }
    }
    fn applies_at(&self, step: u64) -> bool {
        let (every, start_step) = (self.every, self.start_step);
        Schedule { every, start_step }.applies_at(step)
    }
    fn refactor(&self, grams: &PairGrams) -> Result<Option<Refactor>, ManifoldError> {
        if self.start_ratio > 0.0 && grams.btb.trace() < self.start_ratio * grams.aat.trace() {
            return Ok(None);
        }
        Ok(Some(balance(grams, self.gauge, self.rank_tol)))
    }
}

crate::register_manifold! {
        name: "balanced",
        description: "BaLoRA: re-factor each pair onto BᵀB = AAᵀ after the optimizer step, BA unchanged",
        options: &[
            OptionDoc { key: "gauge", default: "closest", help: "closest (Procrustes, no sign flips) | canonical (paper's Algorithm 1)" },
            OptionDoc { key: "every", default: "1", help: "project after every k-th optimizer step" },
            OptionDoc { key: "start_step", default: "1", help: "first step (1-based) after which to project" },
            OptionDoc { key: "rank_tol", default: "1e-7", help: "relative Gram eigenvalue below which a direction is null (left unchanged)" },
            OptionDoc { key: "start_ratio", default: "0", help: "scale-aware start: project an adapter only once tr(BᵀB) ≥ start_ratio·tr(AAᵀ)" },
        ],
        build: |opts| Ok(Box::new(Balanced::from_options(opts)?)),
}
