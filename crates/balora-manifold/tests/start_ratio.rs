//! The scale-aware start (`start_ratio`): an adapter is projected only once
//! `tr(BᵀB) ≥ start_ratio·tr(AAᵀ)`; the traces here are set by hand.

use balora_manifold::balanced::Balanced;
use balora_manifold::{build_manifold, Manifold, OptionValue, Options, PairGrams};
use nalgebra::DMatrix;

/// Grams with `tr(AAᵀ) = 4` and `tr(BᵀB) = 4·ratio` (diagonal, r = 2).
fn grams(ratio: f64) -> PairGrams {
    let aat = DMatrix::from_diagonal(&nalgebra::DVector::from_vec(vec![3.0, 1.0]));
    let btb = DMatrix::from_diagonal(&nalgebra::DVector::from_vec(vec![2.0 * ratio, 2.0 * ratio]));
    PairGrams::new(aat, btb).unwrap()
}

#[test]
fn projects_only_once_b_carries_the_given_share_of_a() {
    let m = Balanced {
        start_ratio: 0.1,
        ..Default::default()
    };
    assert!(m.refactor(&grams(0.05)).unwrap().is_none());
    assert!(m.refactor(&grams(0.0999)).unwrap().is_none());
    assert!(m.refactor(&grams(0.1)).unwrap().is_some());
    assert!(m.refactor(&grams(2.0)).unwrap().is_some());
    // Default (0): always, even for a tiny B.
    let always = Balanced::default();
    assert!(always.refactor(&grams(1e-9)).unwrap().is_some());
}

#[test]
fn start_ratio_is_an_option_in_0_1() {
    let ok = Options::default().with("start_ratio", OptionValue::Float(0.25));
    assert!(build_manifold("balanced", &ok).is_ok());
    for bad in [-0.1, 1.0, f64::NAN] {
        let o = Options::default().with("start_ratio", OptionValue::Float(bad));
        let Err(e) = build_manifold("balanced", &o) else {
            panic!("start_ratio {bad} accepted");
        };
        let e = e.to_string();
        assert!(e.contains("start_ratio"), "{e}");
    }
}
