//! Adapter manifolds: what happens to a LoRA pair (A, B) after an optimizer step.
//!
//! A LoRA adapter is the product `s·B·A` with `A ∈ ℝ^{r×in}`, `B ∈ ℝ^{out×r}`. Any invertible
//! `P ∈ ℝ^{r×r}` gives the same product with `(P⁻¹A, BP)`: the factors live on a gauge orbit.
//! A [`Manifold`] picks a point on that orbit after each step by returning a [`GaugeTransform`]
//! `A ← Q·A`, `B ← B·P` with `P·Q = I`, computed on the host in f64 from the two r×r Gram
//! matrices `AAᵀ` and `BᵀB` alone ([`PairGrams`]). The device side (forming the Grams of every
//! adapter of a model in one transfer, applying the transforms) lives in `balora-adapter`; this
//! crate has no tensor-library dependency, so the same math serves every burn backend.
//!
//! Shipped manifolds: [`Unconstrained`] (plain LoRA: nothing happens) and
//! [`balanced::Balanced`] (BaLoRA: `BᵀB = AAᵀ`). More can be registered from any crate with
//! [`register_manifold!`]; look them up with [`build_manifold`]. The registry is the generic
//! [`Registry`] (shared with the optimizers of `balora-optim`), which refuses a name registered
//! by two crates.
//!
//! ```
//! use balora_manifold::{build_manifold, Options, PairGrams};
//! use nalgebra::DMatrix;
//!
//! let manifold = build_manifold("balanced", &Options::default()).unwrap();
//! // A = [[1, 0], [0, 2]], B = [[3, 0], [0, 1]] → AAᵀ = diag(1, 4), BᵀB = diag(9, 1).
//! let grams = PairGrams::new(DMatrix::from_diagonal_element(2, 2, 0.0) + DMatrix::from_diagonal(&nalgebra::DVector::from_vec(vec![1.0, 4.0])),
//!                            DMatrix::from_diagonal(&nalgebra::DVector::from_vec(vec![9.0, 1.0]))).unwrap();
//! let step = manifold.refactor(&grams).unwrap().expect("balanced manifold re-factors");
//! let (ga, gb) = step.transform.apply_to_grams(&grams);
//! assert!((&ga - &gb).norm() < 1e-12); // balanced: B'ᵀB' = A'A'ᵀ
//! ```

pub mod balanced;
pub mod diagnostics;
pub mod linalg;
mod options;
pub mod registry;

pub use diagnostics::{diagnose, PairDiagnostics};
pub use options::{OptionDoc, OptionValue, Options, OptionsError, Schedule};
#[doc(hidden)]
pub use registry::{
    build_manifold, manifold_entries, Kind, ManifoldPlugin, Manifolds, PluginEntry, Registry,
    RegistryError,
};

pub use nalgebra::DMatrix;

/// Errors of the manifold layer.
#[derive(Debug, thiserror::Error)]
pub enum ManifoldError {
    /// Unknown manifold name.
    #[error("unknown manifold `{name}`; registered manifolds: {known}")]
    Unknown {
        /// The requested name.
        name: String,
        /// Comma-separated registered names.
        known: String,
    },
    /// Invalid option value.
    #[error(transparent)]
    Options(#[from] OptionsError),
    /// The registry is inconsistent (a name registered by two crates).
    #[error(transparent)]
    Registry(RegistryError),
    /// Gram matrices that are not r×r, not symmetric, or not finite.
    #[error("invalid Gram matrices: {0}")]
    BadGrams(String),
}

/// The two r×r Gram matrices of one adapter pair, in f64: `aat = A·Aᵀ`, `btb = Bᵀ·B`.
#[derive(Debug, Clone, PartialEq)]
pub struct PairGrams {
    /// `A·Aᵀ` (r×r).
    pub aat: DMatrix<f64>,
    /// `Bᵀ·B` (r×r).
    pub btb: DMatrix<f64>,
}

impl PairGrams {
    /// Grams as measured: symmetrised when finite, kept as they are otherwise (the hook rejects
    /// non-finite Grams with the adapter's name before any decision).
    pub fn measured(aat: DMatrix<f64>, btb: DMatrix<f64>) -> Self {
        Self::new(aat.clone(), btb.clone()).unwrap_or(Self { aat, btb })
    }

    /// Checks shapes and finiteness and symmetrises both matrices.
    pub fn new(aat: DMatrix<f64>, btb: DMatrix<f64>) -> Result<Self, ManifoldError> {
        let r = aat.nrows();
        if aat.ncols() != r || btb.nrows() != r || btb.ncols() != r {
            return Err(ManifoldError::BadGrams(format!(
                "expected two r×r matrices, got AAᵀ {}×{} and BᵀB {}×{}",
                aat.nrows(),
                aat.ncols(),
                btb.nrows(),
                btb.ncols()
            )));
        }
        if aat.iter().chain(btb.iter()).any(|v| !v.is_finite()) {
            return Err(ManifoldError::BadGrams(
                "non-finite entry (NaN or inf) in an adapter factor".into(),
            ));
        }
        let sym = |m: DMatrix<f64>| (&m + m.transpose()) * 0.5;
        Ok(Self {
            aat: sym(aat),
            btb: sym(btb),
        })
    }

    /// The adapter rank r.
    pub fn rank(&self) -> usize {
        self.aat.nrows()
    }

    /// Grams of dense factors (host helper for tests, `balora inspect` and small problems).
    pub fn from_factors(a: &DMatrix<f64>, b: &DMatrix<f64>) -> Result<Self, ManifoldError> {
        if a.nrows() != b.ncols() {
            return Err(ManifoldError::BadGrams(format!(
                "A is {}×{} and B is {}×{}: A's rows must equal B's columns",
                a.nrows(),
                a.ncols(),
                b.nrows(),
                b.ncols()
            )));
        }
        Self::new(a * a.transpose(), b.transpose() * b)
    }
}

/// A change of gauge `A ← q·A`, `B ← B·p` with `p·q = I`, so `B·A` is unchanged.
///
/// Gradients transform as `∇A ← pᵀ·∇A` and `∇B ← ∇B·qᵀ`; optimizers use this to carry their
/// first moments into the new coordinates.
#[derive(Debug, Clone, PartialEq)]
pub struct GaugeTransform {
    /// Right factor for B (r×r).
    pub p: DMatrix<f64>,
    /// Left factor for A (r×r), the inverse of `p`.
    pub q: DMatrix<f64>,
}

impl GaugeTransform {
    /// The identity transform of size r.
    pub fn identity(r: usize) -> Self {
        Self {
            p: DMatrix::identity(r, r),
            q: DMatrix::identity(r, r),
        }
    }

    /// Grams after the transform: `(q·AAᵀ·qᵀ, pᵀ·BᵀB·p)`.
    pub fn apply_to_grams(&self, g: &PairGrams) -> (DMatrix<f64>, DMatrix<f64>) {
        (
            &self.q * &g.aat * self.q.transpose(),
            self.p.transpose() * &g.btb * &self.p,
        )
    }

    /// Applies the transform to dense factors (host helper).
    pub fn apply(&self, a: &DMatrix<f64>, b: &DMatrix<f64>) -> (DMatrix<f64>, DMatrix<f64>) {
        (&self.q * a, b * &self.p)
    }
}

/// One re-factorisation decided by a manifold.
#[derive(Debug, Clone, PartialEq)]
pub struct Refactor {
    /// The gauge change to apply.
    pub transform: GaugeTransform,
    /// Numerical rank of the part that was re-factored (≤ r).
    pub active_rank: usize,
}

impl Refactor {
    /// Whether only part of the rank could be re-factored (rank-deficient pair).
    pub fn is_rank_deficient(&self) -> bool {
        self.active_rank < self.transform.p.nrows()
    }
}

/// What happens to adapter factors after an optimizer step.
///
/// Implementations are pure host math on the r×r Grams; the caller applies the returned
/// transform to the device tensors of every adapter in one batch.
pub trait Manifold: Send + Sync + std::fmt::Debug {
    /// Registered name (for logs and reports).
    fn name(&self) -> &str;

    /// Whether the hook runs after optimizer step `step` (1-based: the first step is 1).
    fn applies_at(&self, step: u64) -> bool;

    /// The gauge transform for one adapter, or `None` to leave it unchanged.
    ///
    /// A pair whose product is zero (e.g. the initial `B = 0`) must be left unchanged.
    fn refactor(&self, grams: &PairGrams) -> Result<Option<Refactor>, ManifoldError>;
}

/// Plain LoRA: the factors are left as the optimizer made them.
#[derive(Debug, Clone, Default)]
pub struct Unconstrained;

impl Manifold for Unconstrained {
    fn name(&self) -> &str {
        "unconstrained"
    }
    fn applies_at(&self, _step: u64) -> bool {
        false
    }
    fn refactor(&self, _grams: &PairGrams) -> Result<Option<Refactor>, ManifoldError> {
        Ok(None)
    }
}

crate::register_manifold! {
    name: "unconstrained",
    description: "plain LoRA: factors are left as the optimizer made them",
    options: &[],
    build: |opts| {
        opts.reject_unknown("manifold.unconstrained", &[])?;
        Ok(Box::new(Unconstrained))
    },
}

/// Re-exported so plugin crates register without naming `inventory` themselves.
pub use inventory;
