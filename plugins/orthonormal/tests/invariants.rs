//! Invariants of the orthonormal manifold plugin, checked against an independent reference:
//! the thin SVD `A = U·Σ·Vᵀ` gives `(AAᵀ)^{-1/2}·A = U·Vᵀ` and `B·(AAᵀ)^{1/2} = B·U·Σ·Uᵀ`.

extern crate balora_plugin_orthonormal;

use balora_adapter::{apply_manifold, LoraAdapter, LoraLinear};
use balora_manifold::{build_manifold, manifold_entries, OptionValue, Options, PairGrams};
use balora_optim::testkit::rand_mat;
use burn::backend::NdArray;
use burn::tensor::{Tensor, TensorData};
use nalgebra::DMatrix;

fn manifold() -> Box<dyn balora_manifold::Manifold> {
    build_manifold("orthonormal", &Options::default()).expect("plugin registered")
}

#[test]
fn full_rank_matches_svd_reference() {
    let (r, n_in, n_out) = (4, 9, 7);
    let a = rand_mat(r, n_in, 1) * 3.0;
    let b = rand_mat(n_out, r, 2);
    let rf = manifold()
        .refactor(&PairGrams::from_factors(&a, &b).unwrap())
        .unwrap()
        .unwrap();
    assert_eq!(rf.active_rank, r);
    let (a2, b2) = rf.transform.apply(&a, &b);
    // Reference from the SVD of A (r×n, r ≤ n): U r×r, Vᵀ r×n.
    let svd = a.clone().svd(true, true);
    let (u, vt) = (svd.u.unwrap(), svd.v_t.unwrap());
    let a_ref = &u * &vt;
    let b_ref = &b * &u * DMatrix::from_diagonal(&svd.singular_values) * u.transpose();
    assert!((&a2 - &a_ref).amax() < 1e-10, "A' ≠ U·Vᵀ");
    assert!((&b2 - &b_ref).amax() < 1e-10, "B' ≠ B·UΣUᵀ");
    assert!((&a2 * a2.transpose() - DMatrix::identity(r, r)).amax() < 1e-12);
    assert!((&b2 * &a2 - &b * &a).amax() < 1e-10 * (&b * &a).amax());
    let pq = &rf.transform.p * &rf.transform.q;
    assert!((pq - DMatrix::identity(r, r)).amax() < 1e-10);
}

#[test]
fn rank_deficient_a_keeps_product_and_null_directions() {
    // A has rank 2 < r = 4 (its last two rows are combinations of the first two).
    let (r, n_in, n_out) = (4, 8, 6);
    let base = rand_mat(2, n_in, 3);
    let mix = DMatrix::from_row_slice(r, 2, &[1.0, 0.0, 0.0, 1.0, 0.5, -2.0, 1.5, 0.25]);
    let a = &mix * &base;
    let b = rand_mat(n_out, r, 4);
    let rf = manifold()
        .refactor(&PairGrams::from_factors(&a, &b).unwrap())
        .unwrap()
        .unwrap();
    assert_eq!(rf.active_rank, 2);
    assert!(rf.is_rank_deficient());
    let (a2, b2) = rf.transform.apply(&a, &b);
    assert!(
        (&b2 * &a2 - &b * &a).amax() < 1e-10 * (&b * &a).amax(),
        "product changed"
    );
    let pq = &rf.transform.p * &rf.transform.q;
    assert!((pq - DMatrix::identity(r, r)).amax() < 1e-9, "P·Q ≠ I");
    // A'A'ᵀ is the orthogonal projector onto A's row-space directions in gauge space:
    // idempotent, rank 2, and it fixes the columns of `mix` (which span that space).
    let g = &a2 * a2.transpose();
    assert!((&g * &g - &g).amax() < 1e-9, "A'A'ᵀ not a projector");
    assert!(
        (g.trace() - 2.0).abs() < 1e-9,
        "projector rank {}",
        g.trace()
    );
    assert!((&g * &mix - &mix).amax() < 1e-9);
    // The null direction of AAᵀ is left alone: B's component along it is unchanged.
    let null = {
        let eig = (&a * a.transpose()).symmetric_eigen();
        let i = eig.eigenvalues.imin();
        eig.eigenvectors.column(i).into_owned()
    };
    assert!((&b2 * &null - &b * &null).amax() < 1e-9);
}

#[test]
fn zero_b_is_left_unchanged() {
    let a = rand_mat(3, 5, 5);
    let b = DMatrix::zeros(4, 3);
    let rf = manifold()
        .refactor(&PairGrams::from_factors(&a, &b).unwrap())
        .unwrap()
        .unwrap();
    assert_eq!(rf.active_rank, 0);
    assert_eq!(rf.transform.p, DMatrix::identity(3, 3));
}

#[test]
fn registered_found_by_name_and_options_checked() {
    assert!(manifold_entries().any(|e| e.name == "orthonormal"));
    let err = build_manifold("orthogonal", &Options::default())
        .err()
        .unwrap()
        .to_string();
    assert!(
        err.contains("orthonormal") && err.contains("balanced"),
        "{err}"
    );
    let bad = Options::default().with("gauge", OptionValue::Str("closest".into()));
    assert!(build_manifold("orthonormal", &bad).is_err());
    let bad = Options::default().with("every", OptionValue::Int(0));
    assert!(build_manifold("orthonormal", &bad).is_err());
    let every3 = Options::default().with("every", OptionValue::Int(3));
    let m = build_manifold("orthonormal", &every3).unwrap();
    assert_eq!(
        (1..=7).filter(|&s| m.applies_at(s)).collect::<Vec<_>>(),
        [1, 4, 7]
    );
}

#[test]
fn through_the_hook_on_a_burn_model() {
    // The device side: f32 LoraLinear, Grams fetched by the hook, transforms applied there.
    type B = NdArray;
    let dev = Default::default();
    let (r, d_in, d_out) = (3, 10, 8);
    let t = |m: &DMatrix<f64>| -> Tensor<B, 2> {
        let v: Vec<f32> = m.transpose().iter().map(|&x| x as f32).collect();
        Tensor::from_data(TensorData::new(v, [m.nrows(), m.ncols()]), &dev)
    };
    let back = |x: Tensor<B, 2>| -> DMatrix<f64> {
        let [rows, cols] = x.dims();
        DMatrix::from_row_slice(rows, cols, &x.into_data().iter::<f64>().collect::<Vec<_>>())
    };
    let (a, b) = (rand_mat(r, d_in, 6) * 2.0, rand_mat(d_out, r, 7));
    let mut layer = LoraLinear::<B>::new(d_in, d_out, false, &dev);
    layer.adapter = Some(LoraAdapter::from_tensors(t(&a), t(&b), 1.0, 0.0));
    let (layer, report) = apply_manifold(layer, manifold().as_ref(), 1).unwrap();
    assert_eq!((report.adapters, report.refactored), (1, 1));
    let ad = layer.adapter.unwrap();
    let (a2, b2) = (back(ad.lora_a.val()), back(ad.lora_b.val()));
    assert!((&a2 * a2.transpose() - DMatrix::identity(r, r)).amax() < 1e-5);
    assert!((&b2 * &a2 - &b * &a).amax() < 1e-5 * (&b * &a).amax().max(1.0));
}
