//! Per-adapter diagnostics from the Grams: balance gap, singular values of BA, and the
//! condition number `2σ₁/σ_r` of the Hessian at a balanced minimiser.

use crate::linalg::{sqrt_and_inv_sqrt, svd_desc};
use crate::PairGrams;
use serde::Serialize;

/// Diagnostics of one adapter pair.
#[derive(Debug, Clone, Serialize)]
pub struct PairDiagnostics {
    /// `‖BᵀB − AAᵀ‖_F / (‖BᵀB‖_F + ‖AAᵀ‖_F)` (0 when both are zero).
    pub balance_gap: f64,
    /// Singular values of `B·A` (unscaled), descending, r of them.
    pub singular_values: Vec<f64>,
    /// `2σ₁/σ_r` (infinite when `σ_r = 0`).
    pub balanced_condition: f64,
}

/// Diagnostics of a pair from its Grams. `σ(BA) = σ(S_B·S_A)` with `S = G^{1/2}`.
pub fn diagnose(grams: &PairGrams) -> PairDiagnostics {
    let denom = grams.btb.norm() + grams.aat.norm();
    let balance_gap = if denom > 0.0 {
        (&grams.btb - &grams.aat).norm() / denom
    } else {
        0.0
    };
    let (s_a, _) = sqrt_and_inv_sqrt(&grams.aat);
    let (s_b, _) = sqrt_and_inv_sqrt(&grams.btb);
    let (_, sigma, _) = svd_desc(&(s_b * s_a));
    let singular_values: Vec<f64> = sigma.iter().copied().collect();
    let balanced_condition = match (singular_values.first(), singular_values.last()) {
        (Some(&s1), Some(&sr)) if sr > 0.0 => 2.0 * s1 / sr,
        _ => f64::INFINITY,
    };
    PairDiagnostics {
        balance_gap,
        singular_values,
        balanced_condition,
    }
}
