//! Balanced-manifold properties checked against an independent f64 reference: dense SVD of the
//! product `BA` (never formed by the code under test, which works from the r×r Grams only).

use balora_manifold::balanced::{balance, Balanced, Gauge, DEFAULT_RANK_TOL};
use balora_manifold::{diagnose, Manifold, PairGrams};
use nalgebra::{DMatrix, DVector};
use rand::{rngs::StdRng, SeedableRng};
use rand_distr::{Distribution, StandardNormal};

fn gauss(rng: &mut StdRng, r: usize, c: usize) -> DMatrix<f64> {
    DMatrix::from_fn(r, c, |_, _| StandardNormal.sample(rng))
}

fn project(
    a: &DMatrix<f64>,
    b: &DMatrix<f64>,
    gauge: Gauge,
) -> (DMatrix<f64>, DMatrix<f64>, usize) {
    let g = PairGrams::from_factors(a, b).unwrap();
    let rf = balance(&g, gauge, DEFAULT_RANK_TOL);
    let (a2, b2) = rf.transform.apply(a, b);
    (a2, b2, rf.active_rank)
}

fn rel(x: &DMatrix<f64>, y: &DMatrix<f64>) -> f64 {
    (x - y).norm() / y.norm().max(1e-300)
}

fn gap(a: &DMatrix<f64>, b: &DMatrix<f64>) -> f64 {
    let (ga, gb) = (a * a.transpose(), b.transpose() * b);
    (&gb - &ga).norm() / (gb.norm() + ga.norm())
}

/// Reference: singular values of BA from a dense SVD, descending.
fn ref_sv(a: &DMatrix<f64>, b: &DMatrix<f64>) -> Vec<f64> {
    let mut s: Vec<f64> = (b * a).singular_values().iter().copied().collect();
    s.sort_by(|x, y| y.total_cmp(x));
    s
}

/// Reference closest balanced point: dense SVD of BA gives one balanced pair
/// (Σ^{1/2}Vᵀ, UΣ^{1/2}); orthogonal Procrustes on the dense factors picks the nearest rotation.
fn ref_closest(a: &DMatrix<f64>, b: &DMatrix<f64>) -> (DMatrix<f64>, DMatrix<f64>) {
    let r = a.nrows();
    let svd = (b * a).svd(true, true);
    let (u, vt, s) = (svd.u.unwrap(), svd.v_t.unwrap(), svd.singular_values);
    let mut idx: Vec<usize> = (0..s.len()).collect();
    idx.sort_by(|&i, &j| s[j].total_cmp(&s[i]));
    let idx = &idx[..r];
    let sq = DMatrix::from_diagonal(&DVector::from_iterator(r, idx.iter().map(|&i| s[i].sqrt())));
    let a0 = &sq * DMatrix::from_fn(r, a.ncols(), |i, j| vt[(idx[i], j)]);
    let b0 = DMatrix::from_fn(b.nrows(), r, |i, j| u[(i, idx[j])]) * &sq;
    let m = b0.transpose() * b + &a0 * a.transpose();
    let msvd = m.svd(true, true);
    let o = msvd.u.unwrap() * msvd.v_t.unwrap();
    (o.transpose() * a0, b0 * o)
}

const SHAPES: [(usize, usize, usize); 5] = [
    (20, 20, 4),
    (64, 16, 8),
    (7, 50, 3),
    (30, 30, 1),
    (12, 9, 8),
];

#[test]
fn product_preserved_and_balanced_both_gauges() {
    let mut rng = StdRng::seed_from_u64(1);
    for &(n_in, n_out, r) in &SHAPES {
        let a = gauss(&mut rng, r, n_in);
        let b = gauss(&mut rng, n_out, r) * 0.3;
        for gauge in [Gauge::Closest, Gauge::Canonical] {
            let (a2, b2, k) = project(&a, &b, gauge);
            assert_eq!(k, r, "{gauge:?} {n_in}x{n_out} r={r}");
            assert!(
                rel(&(&b2 * &a2), &(&b * &a)) < 1e-10,
                "{gauge:?} product changed"
            );
            assert!(gap(&a2, &b2) < 1e-10, "{gauge:?} gap {}", gap(&a2, &b2));
            // Balanced Grams equal diag-free Σ: their eigenvalues are the singular values of BA.
            let mut ev: Vec<f64> = (&a2 * a2.transpose())
                .symmetric_eigenvalues()
                .iter()
                .copied()
                .collect();
            ev.sort_by(|x, y| y.total_cmp(x));
            for (e, s) in ev.iter().zip(ref_sv(&a, &b)) {
                assert!((e - s).abs() < 1e-9 * s.max(1.0), "eig {e} vs σ {s}");
            }
        }
    }
}

#[test]
fn canonical_matches_svd_of_product() {
    // The canonical gauge returns A' = Σ^{1/2}Vᵀ: rows are scaled right singular vectors of BA
    // (up to sign), in descending order.
    let mut rng = StdRng::seed_from_u64(2);
    let (a, b) = (gauss(&mut rng, 4, 20), gauss(&mut rng, 20, 4));
    let (a2, _, _) = project(&a, &b, Gauge::Canonical);
    let sv = ref_sv(&a, &b);
    let vt = (&b * &a).svd(false, true).v_t.unwrap();
    let svs = (&b * &a).singular_values();
    for (i, s) in sv.iter().take(4).enumerate() {
        let j = (0..svs.len())
            .find(|&j| (svs[j] - s).abs() < 1e-9 * s)
            .unwrap();
        let row = a2.row(i) / s.sqrt();
        let d = (row.clone() - vt.row(j))
            .norm()
            .min((row + vt.row(j)).norm());
        assert!(d < 1e-8, "row {i} differs from ±v_{j}: {d}");
    }
}

#[test]
fn closest_matches_dense_procrustes_reference_and_moves_less_than_canonical() {
    let mut rng = StdRng::seed_from_u64(3);
    for &(n_in, n_out, r) in &SHAPES {
        let a = gauss(&mut rng, r, n_in);
        let b = gauss(&mut rng, n_out, r) * 0.1;
        let (ac, bc, _) = project(&a, &b, Gauge::Closest);
        let (ar, br) = ref_closest(&a, &b);
        assert!(
            rel(&ac, &ar) < 1e-8 && rel(&bc, &br) < 1e-8,
            "closest ≠ reference for {n_in}x{n_out} r={r}"
        );
        let (an, bn, _) = project(&a, &b, Gauge::Canonical);
        let moved =
            |x: &DMatrix<f64>, y: &DMatrix<f64>| (x - &a).norm_squared() + (y - &b).norm_squared();
        assert!(moved(&ac, &bc) <= moved(&an, &bn) + 1e-9);
    }
}

#[test]
fn projection_is_idempotent() {
    let mut rng = StdRng::seed_from_u64(4);
    let (a, b) = (gauss(&mut rng, 6, 32), gauss(&mut rng, 24, 6));
    let (a1, b1, _) = project(&a, &b, Gauge::Closest);
    let (a2, b2, _) = project(&a1, &b1, Gauge::Closest);
    assert!(rel(&a2, &a1) < 1e-9 && rel(&b2, &b1) < 1e-9);
    // Canonical is idempotent up to the SVD's sign choice per row/column pair.
    let (c1, d1, _) = project(&a, &b, Gauge::Canonical);
    let (c2, d2, _) = project(&c1, &d1, Gauge::Canonical);
    for i in 0..6 {
        let s = if (c2.row(i) - c1.row(i)).norm() < (c2.row(i) + c1.row(i)).norm() {
            1.0
        } else {
            -1.0
        };
        assert!((c2.row(i) * s - c1.row(i)).norm() < 1e-8 * c1.row(i).norm());
        assert!((d2.column(i) * s - d1.column(i)).norm() < 1e-8 * d1.column(i).norm());
    }
}

#[test]
fn closest_is_continuous_where_canonical_jumps() {
    // BA with two nearly tied singular values: its singular vectors are ill-determined, so the
    // canonical gauge can rotate by O(1) under a tiny perturbation; the closest gauge cannot.
    let mut rng = StdRng::seed_from_u64(5);
    let q1 = gauss(&mut rng, 10, 2).qr().q();
    let q2 = gauss(&mut rng, 12, 2).qr().q();
    let b = q1 * DMatrix::from_diagonal(&DVector::from_vec(vec![1.0, 1.0 + 1e-10]));
    let a = DMatrix::from_diagonal(&DVector::from_vec(vec![2.0, 0.5])) * q2.transpose();
    let mut worst_closest = 0.0f64;
    let mut worst_canonical = 0.0f64;
    let (ac, bc, _) = project(&a, &b, Gauge::Closest);
    let (an, bn, _) = project(&a, &b, Gauge::Canonical);
    for _ in 0..20 {
        let eps = 1e-7;
        let pa = &a + gauss(&mut rng, 2, 12) * eps;
        let pb = &b + gauss(&mut rng, 10, 2) * eps;
        let (ac2, bc2, _) = project(&pa, &pb, Gauge::Closest);
        let (an2, bn2, _) = project(&pa, &pb, Gauge::Canonical);
        worst_closest = worst_closest.max((&ac2 - &ac).norm() + (&bc2 - &bc).norm());
        worst_canonical = worst_canonical.max((&an2 - &an).norm() + (&bn2 - &bn).norm());
    }
    assert!(
        worst_closest < 1e-5,
        "closest moved {worst_closest} for a 1e-7 perturbation"
    );
    assert!(
        worst_canonical > 1e-2,
        "canonical expected to jump here, moved only {worst_canonical}"
    );
}

#[test]
fn zero_pair_is_left_alone() {
    let mut rng = StdRng::seed_from_u64(6);
    let a = gauss(&mut rng, 4, 20);
    let b = DMatrix::zeros(20, 4);
    for gauge in [Gauge::Closest, Gauge::Canonical] {
        let (a2, b2, k) = project(&a, &b, gauge);
        assert_eq!(k, 0);
        assert_eq!(
            a2, a,
            "projecting B = 0 must not touch A (it would kill the pair)"
        );
        assert_eq!(b2, b);
    }
}

#[test]
fn rank_deficient_pairs_keep_product_and_null_directions() {
    let mut rng = StdRng::seed_from_u64(7);
    // rank(B) = 2 < r = 4: two gauge directions where B is zero but A is not.
    let a = gauss(&mut rng, 4, 16);
    let b = gauss(&mut rng, 12, 2) * gauss(&mut rng, 2, 4);
    for gauge in [Gauge::Closest, Gauge::Canonical] {
        let (a2, b2, k) = project(&a, &b, gauge);
        assert_eq!(k, 2, "{gauge:?}");
        assert!(a2.iter().chain(b2.iter()).all(|v| v.is_finite()));
        let e = rel(&(&b2 * &a2), &(&b * &a));
        assert!(e < 1e-10, "{gauge:?}: product error {e}");
        // A's component along ker(B) is kept (not zeroed), so B still gets gradient there.
        let ker = (b.transpose() * &b).symmetric_eigen();
        let mut cols: Vec<usize> = (0..4).collect();
        cols.sort_by(|&i, &j| ker.eigenvalues[i].total_cmp(&ker.eigenvalues[j]));
        let z = DMatrix::from_fn(4, 2, |i, j| ker.eigenvectors[(i, cols[j])]);
        let kept_before = (z.transpose() * &a).norm();
        let ker2 = (b2.transpose() * &b2).symmetric_eigen();
        let mut c2: Vec<usize> = (0..4).collect();
        c2.sort_by(|&i, &j| ker2.eigenvalues[i].total_cmp(&ker2.eigenvalues[j]));
        let z2 = DMatrix::from_fn(4, 2, |i, j| ker2.eigenvectors[(i, c2[j])]);
        let kept_after = (z2.transpose() * &a2).norm();
        assert!(
            kept_after > 0.5 * kept_before,
            "{gauge:?}: null-direction mass {kept_before} → {kept_after}"
        );
    }
    // rank(A) = 1 < r = 3.
    let a = gauss(&mut rng, 3, 1) * gauss(&mut rng, 1, 9);
    let b = gauss(&mut rng, 8, 3);
    let (a2, b2, k) = project(&a, &b, Gauge::Closest);
    assert_eq!(k, 1);
    assert!(rel(&(&b2 * &a2), &(&b * &a)) < 1e-10);
    // r close to min(in, out), r = 1.
    for &(n_in, n_out, r) in &[(5, 4, 4), (4, 4, 4), (9, 3, 3), (8, 8, 1)] {
        let (a, b) = (gauss(&mut rng, r, n_in), gauss(&mut rng, n_out, r));
        for gauge in [Gauge::Closest, Gauge::Canonical] {
            let (a2, b2, _) = project(&a, &b, gauge);
            assert!(
                rel(&(&b2 * &a2), &(&b * &a)) < 1e-9,
                "{n_in}x{n_out} r={r} {gauge:?}"
            );
            assert!(a2.iter().chain(b2.iter()).all(|v| v.is_finite()));
        }
    }
}

#[test]
fn diagnostics_match_dense_reference() {
    let mut rng = StdRng::seed_from_u64(8);
    let (a, b) = (gauss(&mut rng, 5, 30), gauss(&mut rng, 25, 5));
    let d = diagnose(&PairGrams::from_factors(&a, &b).unwrap());
    let sv = ref_sv(&a, &b);
    for (x, y) in d.singular_values.iter().zip(&sv) {
        assert!((x - y).abs() < 1e-9 * y.max(1.0));
    }
    assert!((d.balanced_condition - 2.0 * sv[0] / sv[4]).abs() < 1e-8 * d.balanced_condition);
    assert!((d.balance_gap - gap(&a, &b)).abs() < 1e-12);
    let (a2, b2, _) = project(&a, &b, Gauge::Closest);
    assert!(diagnose(&PairGrams::from_factors(&a2, &b2).unwrap()).balance_gap < 1e-12);
}

#[test]
fn schedule_and_options() {
    let opts = balora_manifold::Options::default()
        .with("every", balora_manifold::OptionValue::Int(3))
        .with("start_step", balora_manifold::OptionValue::Int(2));
    let m = Balanced::from_options(&opts).unwrap();
    let fired: Vec<u64> = (1..=10).filter(|&s| m.applies_at(s)).collect();
    assert_eq!(fired, vec![2, 5, 8]);
    let bad = balora_manifold::Options::default()
        .with("gauge", balora_manifold::OptionValue::Str("nearest".into()));
    let err = balora_manifold::build_manifold("balanced", &bad)
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("gauge") && err.contains("closest | canonical"),
        "{err}"
    );
    let err = balora_manifold::build_manifold("balancd", &Default::default())
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("balanced") && err.contains("unconstrained"),
        "{err}"
    );
}
