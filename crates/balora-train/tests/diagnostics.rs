//! Adapter diagnostics against hand-built pairs: a balanced pair from a known SVD has gap 0 and
//! κ = 2σ₁/σᵣ; a B = 0 pair has gap 1 and infinite κ; relative steps of a known change.

use balora_adapter::LoraAdapter;
use balora_train::diagnostics::{pair_gap_kappa, snapshot, stats};
use burn::backend::NdArray;
use burn::tensor::{Tensor, TensorData};
use nalgebra::DMatrix;

#[test]
fn balanced_pair_has_zero_gap_and_kappa_two_sigma1_over_sigmar() {
    // BA = U Σ Vᵀ with orthonormal U (5×2), V (4×2), Σ = diag(9, 1): A = Σ^½Vᵀ, B = UΣ^½.
    let u = DMatrix::from_row_slice(5, 2, &[0.6, 0.0, 0.8, 0.0, 0.0, 1.0, 0.0, 0.0, 0.0, 0.0]);
    let v = DMatrix::from_row_slice(4, 2, &[0.0, 1.0, 1.0, 0.0, 0.0, 0.0, 0.0, 0.0]);
    let s = DMatrix::from_diagonal(&nalgebra::DVector::from_vec(vec![3.0, 1.0]));
    let a = &s * v.transpose();
    let b = &u * &s;
    let (gap, kappa) = pair_gap_kappa(&a, &b);
    assert!(gap < 1e-15, "{gap}");
    assert!((kappa - 2.0 * 9.0 / 1.0).abs() < 1e-12, "{kappa}");
    // Unbalanced by P = diag(4, 1): A' = P⁻¹A, B' = BP; Grams diag(9/16, 1) and diag(144, 1):
    // κ = (144 + 1) / (9/16).
    let p = DMatrix::from_diagonal(&nalgebra::DVector::from_vec(vec![4.0, 1.0]));
    let a2 = p.clone().try_inverse().unwrap() * &a;
    let b2 = &b * &p;
    let (gap2, kappa2) = pair_gap_kappa(&a2, &b2);
    assert!((kappa2 - 145.0 / (9.0 / 16.0)).abs() < 1e-9, "{kappa2}");
    let d = (144.0_f64 - 9.0 / 16.0).abs();
    let expect = d / ((144.0f64.powi(2) + 1.0).sqrt() + ((9.0f64 / 16.0).powi(2) + 1.0).sqrt());
    assert!((gap2 - expect).abs() < 1e-12, "{gap2} vs {expect}");
}

#[test]
fn zero_b_has_gap_one_and_no_kappa_and_steps_are_relative_changes() {
    type B = NdArray;
    let dev = Default::default();
    let a = Tensor::<B, 2>::from_data(TensorData::new(vec![1.0f32, 0.0, 0.0, 2.0], [2, 2]), &dev);
    let zero = LoraAdapter::<B>::from_tensors(a.clone(), Tensor::zeros([3, 2], &dev), 1.0, 0.0);
    let s0 = snapshot(&zero);
    let st = stats(None, &s0);
    assert_eq!(st.balance_gap, Some(1.0));
    assert_eq!(st.log10_kappa, None);
    assert_eq!(st.b_over_a, Some(0.0));
    assert_eq!((st.step_a, st.step_b), (None, None));
    // A moves by 0.5 in one entry (‖A‖ = √5), B from 0 (relative step undefined).
    let a2 = Tensor::<B, 2>::from_data(TensorData::new(vec![1.5f32, 0.0, 0.0, 2.0], [2, 2]), &dev);
    let b2 = Tensor::<B, 2>::ones([3, 2], &dev);
    let moved = LoraAdapter::<B>::from_tensors(a2, b2, 1.0, 0.0);
    let st = stats(Some(&s0), &snapshot(&moved));
    assert!((st.step_a.unwrap() - 0.5 / 5f64.sqrt()).abs() < 1e-7);
    assert_eq!(st.step_b, None);
    // ‖B‖ = √6, ‖A‖ = √(1.5² + 2²) = 2.5.
    assert!((st.b_over_a.unwrap() - 6f64.sqrt() / 2.5).abs() < 1e-6);
}
