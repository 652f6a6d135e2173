//! An example manifold plugin: keep A's rows orthonormal and put all the scale in B.
//!
//! After each optimizer step the pair `(A, B)` is re-factored to `(Q·A, B·P)` with
//!
//! ```text
//! Q = (AAᵀ)^{-1/2},   P = (AAᵀ)^{1/2},   so  A'A'ᵀ = I  and  B'A' = BA,
//! ```
//!
//! the same gauge OLoRA starts from (orthonormal A). It needs only the Gram `AAᵀ`, so like every
//! [`Manifold`] it runs on the host in f64 from the r×r Grams the hook fetched for all adapters at
//! once, and works unchanged on every burn backend.
//!
//! **Rank deficiency** is handled like [`balora_manifold::balanced`], with the same helpers
//! ([`balora_manifold::linalg::split_range`], [`balora_manifold::linalg::sqrt_and_inv_sqrt`]):
//! gauge directions where `AAᵀ` has eigenvalues `≤ rank_tol·λ_max` are left exactly as they are
//! (`P = Q = I` there), the active part (rank k) is orthonormalised, so `P·Q = I` and `B·A` are
//! preserved and `A'A'ᵀ` is the orthogonal projector onto A's row directions. A pair with `B = 0`
//! (zero product, e.g. at initialisation) is left unchanged, as the [`Manifold`] contract asks.
//!
//! ```
//! extern crate balora_plugin_orthonormal;
//! use balora_manifold::{build_manifold, DMatrix, Options, PairGrams};
//!
//! let m = build_manifold("orthonormal", &Options::default()).unwrap();
//! let a = DMatrix::from_row_slice(2, 3, &[2.0, 0.0, 0.0, 0.0, 0.5, 0.0]);
//! let b = DMatrix::from_row_slice(2, 2, &[1.0, 1.0, 0.0, 1.0]);
//! let rf = m.refactor(&PairGrams::from_factors(&a, &b).unwrap()).unwrap().unwrap();
//! let (a2, b2) = rf.transform.apply(&a, &b);
//! assert!((&a2 * a2.transpose() - DMatrix::identity(2, 2)).norm() < 1e-12);
//! assert!((&b2 * &a2 - &b * &a).norm() < 1e-12);
//! ```

use balora_manifold::balanced::{rank_tol_option, DEFAULT_RANK_TOL};
use balora_manifold::linalg::{split_range, sqrt_and_inv_sqrt};
use balora_manifold::{
    DMatrix, GaugeTransform, Manifold, ManifoldError, OptionDoc, Options, PairGrams, Refactor,
    Schedule,
};

/// The transform that orthonormalises A's rows (on A's active range), or the identity with
/// `active_rank = 0` when B or A is numerically zero.
pub fn orthonormalize(grams: &PairGrams, rank_tol: f64) -> Refactor {
    let r = grams.rank();
    let identity = Refactor {
        transform: GaugeTransform::identity(r),
        active_rank: 0,
    };
    // Zero product through B = 0: leave the pair alone (contract of `Manifold::refactor`).
    if split_range(&grams.btb, rank_tol).0.ncols() == 0 {
        return identity;
    }
    let (w, _null) = split_range(&grams.aat, rank_tol); // r×k basis of A's row directions
    let k = w.ncols();
    if k == 0 {
        return identity;
    }
    let (s, s_inv) = sqrt_and_inv_sqrt(&(w.transpose() * &grams.aat * &w));
    let complement = DMatrix::identity(r, r) - &w * w.transpose();
    Refactor {
        transform: GaugeTransform {
            p: &w * s * w.transpose() + &complement,
            q: &w * s_inv * w.transpose() + complement,
        },
        active_rank: k,
    }
}

/// The manifold `{(A, B) : AAᵀ = I}` (on A's active range).
#[derive(Debug, Clone)]
pub struct Orthonormal {
    /// Re-factor after every `every` steps.
    pub every: u64,
    /// First step (1-based) after which to re-factor.
    pub start_step: u64,
    /// Relative eigenvalue threshold below which a direction of `AAᵀ` is null.
    pub rank_tol: f64,
}

impl Default for Orthonormal {
    fn default() -> Self {
        Self {
            every: 1,
            start_step: 1,
            rank_tol: DEFAULT_RANK_TOL,
        }
    }
}

impl Orthonormal {
    /// From config options (`every`, `start_step`, `rank_tol`); unknown keys are rejected.
    pub fn from_options(opts: &Options) -> Result<Self, ManifoldError> {
        opts.reject_unknown("manifold.orthonormal", &["every", "start_step", "rank_tol"])?;
        let schedule = Schedule::from_options(opts)?;
        Ok(Self {
            every: schedule.every,
            start_step: schedule.start_step,
            rank_tol: rank_tol_option(opts)?,
        })
    }
}

impl Manifold for Orthonormal {
    fn name(&self) -> &str {
        "orthonormal"
    }
    fn applies_at(&self, step: u64) -> bool {
        let (every, start_step) = (self.every, self.start_step);
        Schedule { every, start_step }.applies_at(step)
    }
    fn refactor(&self, grams: &PairGrams) -> Result<Option<Refactor>, ManifoldError> {
        Ok(Some(orthonormalize(grams, self.rank_tol)))
    }
}

balora_manifold::register_manifold! {
    name: "orthonormal",
    description: "A's rows orthonormal, all scale in B (OLoRA-like gauge), BA unchanged",
    options: &[
        OptionDoc { key: "every", default: "1", help: "re-factor after every k-th optimizer step" },
        OptionDoc { key: "start_step", default: "1", help: "first step (1-based) after which to re-factor" },
        OptionDoc { key: "rank_tol", default: "1e-7", help: "relative eigenvalue of AAᵀ below which a direction is null (left unchanged)" },
    ],
    build: |opts| Ok(Box::new(Orthonormal::from_options(opts)?)),
}
