//! Small f64 helpers on r×r symmetric matrices (nalgebra does the factorizations).
//!
//! Public so that manifold plugins reuse the same eigenvalue ordering, clamping and rank
//! thresholds as [`balanced`](crate::balanced) instead of copying them.

use nalgebra::{DMatrix, DVector, SymmetricEigen};

/// Eigen-decomposition of a symmetric PSD matrix, eigenvalues sorted descending and clamped ≥ 0.
pub fn sym_eig_desc(m: &DMatrix<f64>) -> (DVector<f64>, DMatrix<f64>) {
    let n = m.nrows();
    if n == 0 {
        return (DVector::zeros(0), DMatrix::zeros(0, 0));
    }
    let eig = SymmetricEigen::new((m + m.transpose()) * 0.5);
    let mut idx: Vec<usize> = (0..n).collect();
    idx.sort_by(|&i, &j| eig.eigenvalues[j].total_cmp(&eig.eigenvalues[i]));
    let vals = DVector::from_iterator(n, idx.iter().map(|&i| eig.eigenvalues[i].max(0.0)));
    let mut vecs = DMatrix::zeros(n, n);
    for (c, &i) in idx.iter().enumerate() {
        vecs.set_column(c, &eig.eigenvectors.column(i));
    }
    (vals, vecs)
}

/// Splits the eigenvectors of a PSD matrix into (active, null) by `λ > tol·λ_max`.
pub fn split_range(m: &DMatrix<f64>, rel_tol: f64) -> (DMatrix<f64>, DMatrix<f64>) {
    let n = m.nrows();
    let (vals, vecs) = sym_eig_desc(m);
    let lmax = if n == 0 { 0.0 } else { vals[0] };
    let k = if lmax <= 0.0 {
        0
    } else {
        vals.iter().take_while(|&&v| v > rel_tol * lmax).count()
    };
    (
        vecs.columns(0, k).into_owned(),
        vecs.columns(k, n - k).into_owned(),
    )
}

/// `(S, S⁻¹)` with `S = M^{1/2}` for a symmetric positive-definite M.
pub fn sqrt_and_inv_sqrt(m: &DMatrix<f64>) -> (DMatrix<f64>, DMatrix<f64>) {
    let (vals, vecs) = sym_eig_desc(m);
    let s = vals.map(f64::sqrt);
    let s_inv = s.map(|v| 1.0 / v);
    (
        &vecs * DMatrix::from_diagonal(&s) * vecs.transpose(),
        &vecs * DMatrix::from_diagonal(&s_inv) * vecs.transpose(),
    )
}

/// Thin SVD `M = U·diag(σ)·Vᵀ` of a square matrix, σ descending.
pub fn svd_desc(m: &DMatrix<f64>) -> (DMatrix<f64>, DVector<f64>, DMatrix<f64>) {
    let svd = m.clone().svd(true, true);
    let (u, vt) = (
        svd.u.expect("svd was asked for U"),
        svd.v_t.expect("svd was asked for Vᵀ"),
    );
    let n = svd.singular_values.len();
    let mut idx: Vec<usize> = (0..n).collect();
    idx.sort_by(|&i, &j| svd.singular_values[j].total_cmp(&svd.singular_values[i]));
    let sig = DVector::from_iterator(n, idx.iter().map(|&i| svd.singular_values[i]));
    let mut us = DMatrix::zeros(u.nrows(), n);
    let mut vts = DMatrix::zeros(n, vt.ncols());
    for (c, &i) in idx.iter().enumerate() {
        us.set_column(c, &u.column(i));
        vts.set_row(c, &vt.row(i));
    }
    (us, sig, vts)
}
