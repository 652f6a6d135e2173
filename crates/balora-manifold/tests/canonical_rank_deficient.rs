//! Regression: the canonical gauge on a rank-deficient pair must keep `P·Q = I` and the product.
//! (It used to take the wrong half of the complement split: a shape panic when `r − k ≠ k`, and
//! a silently wrong transform when `r − k = k`.)

use balora_manifold::balanced::{balance, Gauge, DEFAULT_RANK_TOL};
use balora_manifold::PairGrams;
use nalgebra::DMatrix;

/// A (r×n) and B (m×r) with `rank(BA) = k`: B's last r−k columns are zero.
fn pair(r: usize, k: usize, n: usize, m: usize) -> (DMatrix<f64>, DMatrix<f64>) {
    // Deterministic pseudo-random entries in [-1, 1) (generic, so full rank where not zeroed).
    let mut state = 0x2545_f491_4f6c_dd1d_u64 ^ (r * 31 + k) as u64;
    let mut next = move || {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        (state >> 11) as f64 / (1u64 << 52) as f64 - 1.0
    };
    let a = DMatrix::from_fn(r, n, |_, _| next());
    let b = DMatrix::from_fn(m, r, |_, j| if j < k { next() } else { 0.0 });
    (a, b)
}

#[test]
fn canonical_keeps_product_when_rank_deficient() {
    for (r, k) in [(4, 1), (4, 2), (4, 3), (3, 1)] {
        let (a, b) = pair(r, k, 9, 7);
        let grams = PairGrams::from_factors(&a, &b).unwrap();
        let rf = balance(&grams, Gauge::Canonical, DEFAULT_RANK_TOL);
        assert_eq!(rf.active_rank, k, "r={r} k={k}");
        let pq = &rf.transform.p * &rf.transform.q;
        assert!(
            (pq - DMatrix::identity(r, r)).norm() < 1e-9,
            "P·Q ≠ I (r={r} k={k})"
        );
        let (a2, b2) = rf.transform.apply(&a, &b);
        let err = (&b2 * &a2 - &b * &a).norm() / (&b * &a).norm();
        assert!(err < 1e-9, "product changed by {err:e} (r={r} k={k})");
        // The active block is balanced: B'ᵀB' and A'A'ᵀ agree on the first k coordinates.
        let ga = &a2 * a2.transpose();
        let gb = b2.transpose() * &b2;
        let diff = (ga.view((0, 0), (k, k)) - gb.view((0, 0), (k, k))).norm();
        assert!(
            diff < 1e-8 * ga.norm(),
            "active block not balanced (r={r} k={k}): {diff:e}"
        );
    }
}
