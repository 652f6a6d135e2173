//! `projection:<gauge>`: the balanced projection of the manifold hook against an SVD reference.

use super::support::{adapter_of, host, lora_layer, rel_within};
use super::Ctx;
use crate::reference::{self as r, Gen, M};
use balora_adapter::{apply_manifold, LoraLinear};
use balora_manifold::{build_manifold, OptionValue, Options};
use burn::module::Module;
use burn::tensor::backend::{AutodiffBackend, Backend};

#[derive(Module, Debug)]
struct Stack<B: Backend> {
    layers: Vec<LoraLinear<B>>,
}

/// A factor pair with prescribed product `U·diag(σ)·Vᵀ` in an unbalanced gauge:
/// `A = G·Σ^{1/2}Vᵀ`, `B = UΣ^{1/2}G⁻¹` with `G` of condition number 3.
fn unbalanced_pair(gen: &mut Gen, din: usize, dout: usize, sigma: &[f64]) -> (M, M) {
    let k = sigma.len();
    let u = gen.orthonormal(dout, k);
    let v = gen.orthonormal(din, k);
    let q1 = gen.orthonormal(k, k);
    let q2 = gen.orthonormal(k, k);
    let diag: Vec<f64> = (0..k)
        .map(|i| {
            if k == 1 {
                2.5
            } else {
                0.6 + 1.2 * i as f64 / (k - 1) as f64
            }
        })
        .collect();
    let g = &q1 * M::from_diagonal(&nalgebra::DVector::from_vec(diag.clone())) * &q2;
    let g_inv = q2.transpose()
        * M::from_diagonal(&nalgebra::DVector::from_vec(
            diag.iter().map(|x| 1.0 / x).collect(),
        ))
        * q1.transpose();
    let sq = M::from_diagonal(&nalgebra::DVector::from_iterator(
        k,
        sigma.iter().map(|s| s.sqrt()),
    ));
    let a = (g * &sq * v.transpose()).map(r::f32_round);
    let b = (u * sq * g_inv).map(r::f32_round);
    (a, b)
}

/// The balanced projection (`apply_manifold` with the `balanced` manifold, one batched call for
/// five adapters) against an SVD-of-`B·A` reference: full rank (r = 4 and r = 1), two
/// rank-deficient pairs (B with a zero column; A with a zero row: rank 2 of 3) and a zero product.
///
/// Checked: the product `B'A'` is preserved; full-rank pairs equal the reference balanced pair
/// (canonical: up to the sign of each row); the balance gap `‖B'ᵀB' − A'A'ᵀ‖/‖BA‖` vanishes on
/// the balanced part; null directions are left exactly as they were; a zero product is untouched.
///
/// Tolerance (relative Frobenius): `100·(depth·u + 2u_in)`, depth = max(in, out): the Grams are
/// formed on the device with relative error ≤ depth·u (+ TF32 input rounding), the balanced factors
/// depend on the Grams with a Lipschitz constant of order κ² ≲ 25 for these inputs (σ ∈ [0.7, 3],
/// gauge condition 3), and the f32 transforms add a few u; ×100 leaves a margin of about 4.
pub(super) fn projection<B: AutodiffBackend>(ctx: &Ctx<B>, gauge: &str) -> Result<String, String> {
    let d = &ctx.device;
    let canonical = gauge == "canonical";
    let mut gen = Gen::new(if canonical { 31 } else { 37 });
    // Case 0: full rank r = 4 (12 → 10).
    let (a0, b0) = unbalanced_pair(&mut gen, 12, 10, &[3.0, 2.0, 1.2, 0.7]);
    // Case 1: r = 1 (5 → 8).
    let (a1, b1) = unbalanced_pair(&mut gen, 5, 8, &[1.5]);
    // Case 2: r = 3, B's last column zero (9 → 7): rank 2.
    let (a2k, b2k) = unbalanced_pair(&mut gen, 9, 7, &[2.0, 0.9]);
    let a2 = M::from_fn(3, 9, |i, j| if i < 2 { a2k[(i, j)] } else { 0.0 });
    let mut a2 = a2;
    a2.row_mut(2).copy_from(&gen.normal(1, 9, 1.0));
    let b2 = M::from_fn(7, 3, |i, j| if j < 2 { b2k[(i, j)] } else { 0.0 });
    // Case 3: r = 3, A's last row zero (7 → 9): rank 2.
    let (a3k, b3k) = unbalanced_pair(&mut gen, 7, 9, &[1.7, 0.8]);
    let a3 = M::from_fn(3, 7, |i, j| if i < 2 { a3k[(i, j)] } else { 0.0 });
    let mut b3 = M::from_fn(9, 3, |i, j| if j < 2 { b3k[(i, j)] } else { 0.0 });
    b3.column_mut(2).copy_from(&gen.normal(9, 1, 1.0));
    // Case 4: zero product (B = 0).
    let a4 = gen.normal(2, 6, 1.0);
    let b4 = M::zeros(5, 2);
    let pairs = [(a0, b0), (a1, b1), (a2, b2), (a3, b3), (a4, b4)];
    let layers = pairs
        .iter()
        .map(|(a, b)| {
            let w = M::zeros(a.ncols(), b.nrows());
            lora_layer::<B>(&w, None, a, b, 1.0, d)
        })
        .collect();
    let manifold = build_manifold(
        "balanced",
        &Options::default().with("gauge", OptionValue::Str(gauge.into())),
    )
    .map_err(|e| e.to_string())?;
    let (stack, report) =
        apply_manifold(Stack::<B> { layers }, manifold.as_ref(), 1).map_err(|e| e.to_string())?;
    if (report.adapters, report.rank_deficient, report.zero_product) != (5, 2, 1) {
        return Err(format!(
            "hook report: {} adapters, {} rank-deficient, {} zero-product; expected 5, 2, 1",
            report.adapters, report.rank_deficient, report.zero_product
        ));
    }
    let mut worst = 0.0f64;
    for (i, ((a, b), layer)) in pairs.iter().zip(&stack.layers).enumerate() {
        let ad = adapter_of(layer)?;
        let (na, nb) = (host(ad.lora_a.val()), host(ad.lora_b.val()));
        let tol = 100.0 * ctx.precision.matmul_bound(a.ncols().max(b.nrows()), 1) / 2.0;
        let case = format!("pair {i}");
        if i == 4 {
            if na != *a || nb != *b {
                return Err(format!("{case}: a zero-product pair was changed"));
            }
            continue;
        }
        let prod = b * a;
        worst = worst.max(rel_within(
            &format!("{case}: product B'A'"),
            &(&nb * &na),
            &prod,
            tol,
        )?);
        // The balanced part: the first k rows of A / columns of B (k = r for full rank).
        let k = if i >= 2 { 2 } else { a.nrows() };
        let (ak, bk) = (a.rows(0, k).into_owned(), b.columns(0, k).into_owned());
        let (mut ra, mut rb) = if canonical {
            r::balanced_canonical(&ak, &bk, k)
        } else {
            r::balanced_closest(&ak, &bk)
        };
        let (mut ga, mut gb) = (na.rows(0, k).into_owned(), nb.columns(0, k).into_owned());
        if canonical {
            (ga, gb) = r::align_signs(&ga, &gb, &ra, &rb);
        }
        let scale = prod.norm();
        worst = worst.max(rel_within(&format!("{case}: balanced A'"), &ga, &ra, tol)?);
        worst = worst.max(rel_within(&format!("{case}: balanced B'"), &gb, &rb, tol)?);
        let gap = (gb.transpose() * &gb - &ga * ga.transpose()).norm() / scale;
        if gap > tol {
            return Err(format!(
                "{case}: balance gap ‖B'ᵀB' − A'A'ᵀ‖/‖BA‖ = {gap:.2e} exceeds {tol:.1e}"
            ));
        }
        worst = worst.max(gap / tol);
        if k < a.nrows() {
            // The null direction: A's row and B's column kept as they were (canonical: up to sign).
            (ra, rb) = (a.rows(k, 1).into_owned(), b.columns(k, 1).into_owned());
            let (mut ga, mut gb) = (na.rows(k, 1).into_owned(), nb.columns(k, 1).into_owned());
            if canonical {
                (ga, gb) = r::align_signs(&ga, &gb, &ra, &rb);
            }
            let e = ((&ga - &ra).norm() + (&gb - &rb).norm()) / (a.norm() + b.norm());
            if e > tol {
                return Err(format!(
                    "{case}: the null direction moved by {e:.2e} (relative), tolerance {tol:.1e}"
                ));
            }
            worst = worst.max(e / tol);
        }
    }
    Ok(format!(
        "5 pairs (full rank, r=1, 2 rank-deficient, zero); worst error {worst:.3} of its tolerance"
    ))
}
