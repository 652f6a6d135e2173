//! The adapter module and the device side of the manifold hook on burn-ndarray (f32), checked
//! against f64 host references written here.

use balora_adapter::{
    apply_manifold, apply_manifold_autodiff, apply_manifold_with, collect_params, pair_grams,
    HookPath, LoraAdapter, LoraConfig, LoraLinear,
};
use balora_manifold::balanced::{Balanced, Gauge};
use balora_manifold::{Manifold, Unconstrained};
use burn::backend::{Autodiff, NdArray};
use burn::module::{Module, Param};
use burn::nn::Linear;
use burn::tensor::{backend::Backend, Tensor, TensorData};
use nalgebra::DMatrix;
use rand::{rngs::StdRng, Rng, SeedableRng};

type Nd = NdArray;

fn rand_mat(rng: &mut StdRng, r: usize, c: usize, scale: f64) -> DMatrix<f64> {
    DMatrix::from_fn(r, c, |_, _| (rng.random::<f64>() * 2.0 - 1.0) * scale)
}

fn to_t<Bk: Backend>(m: &DMatrix<f64>) -> Tensor<Bk, 2> {
    let v: Vec<f32> = m.transpose().iter().map(|&x| x as f32).collect();
    Tensor::from_data(
        TensorData::new(v, [m.nrows(), m.ncols()]),
        &Default::default(),
    )
}

fn to_m<Bk: Backend>(t: Tensor<Bk, 2>) -> DMatrix<f64> {
    let [r, c] = t.dims();
    let v: Vec<f64> = t.into_data().iter::<f64>().collect();
    DMatrix::from_row_slice(r, c, &v)
}

/// A layer with given W0 ([out, in]), bias, A, B and scale.
fn layer<Bk: Backend>(
    w0: &DMatrix<f64>,
    bias: Option<&DMatrix<f64>>,
    a: &DMatrix<f64>,
    b: &DMatrix<f64>,
    s: f64,
) -> LoraLinear<Bk> {
    let base = Linear {
        weight: Param::from_tensor(to_t::<Bk>(&w0.transpose())),
        bias: bias.map(|b| Param::from_tensor(to_t::<Bk>(b).reshape([b.ncols()]))),
    };
    let mut l = LoraLinear::from_base(base);
    l.adapter = Some(LoraAdapter::from_tensors(to_t(a), to_t(b), s, 0.0));
    l
}

#[test]
fn forward_matches_f64_reference() {
    let mut rng = StdRng::seed_from_u64(10);
    for &(n_in, n_out, r) in &[(16, 8, 4), (5, 40, 1), (33, 7, 7)] {
        let (w0, bias) = (
            rand_mat(&mut rng, n_out, n_in, 1.0),
            rand_mat(&mut rng, 1, n_out, 1.0),
        );
        let (a, b) = (
            rand_mat(&mut rng, r, n_in, 1.0),
            rand_mat(&mut rng, n_out, r, 1.0),
        );
        let x = rand_mat(&mut rng, 6, n_in, 1.0);
        let s = 2.0 / r as f64;
        let l = layer::<Nd>(&w0, Some(&bias), &a, &b, s);
        let y = to_m(l.forward(to_t::<Nd>(&x)));
        let ones = DMatrix::from_element(6, 1, 1.0);
        let want = &x * w0.transpose() + ones * &bias + (&x * a.transpose() * b.transpose()) * s;
        assert!(
            (&y - &want).amax() < 1e-4 * want.amax().max(1.0),
            "{n_in}x{n_out} r={r}"
        );
        // Merged forward equals unmerged; unmerge restores W0.
        let merged = l.clone().merge();
        let ym = to_m(merged.forward(to_t::<Nd>(&x)));
        assert!((&ym - &want).amax() < 1e-4 * want.amax().max(1.0));
        let back = merged.unmerge();
        let w_back = to_m(back.base.weight.val()).transpose();
        assert!((&w_back - &w0).amax() < 1e-5);
    }
}

#[test]
fn only_adapter_factors_are_trainable() {
    let dev = Default::default();
    let l = LoraLinear::<Autodiff<Nd>>::new(8, 6, true, &dev).with_adapter(
        &LoraConfig {
            r: 3,
            ..Default::default()
        }
        .resolve("fc")
        .unwrap(),
        &dev,
    );
    let x = Tensor::<Autodiff<Nd>, 2>::ones([2, 8], &dev);
    let grads = l.forward(x).sum().backward();
    assert!(l.base.weight.val().grad(&grads).is_none());
    let ad = l.adapter.as_ref().unwrap();
    assert!(ad.lora_a.val().grad(&grads).is_some() && ad.lora_b.val().grad(&grads).is_some());
    let zero: f32 = ad.lora_b.val().abs().sum().into_scalar();
    assert_eq!(zero, 0.0, "B starts at zero");
    let t = collect_params(&l);
    assert_eq!(t.pairs.len(), 1);
    assert_eq!(t.pairs[0].key, "adapter");
}

#[derive(Module, Debug)]
struct TwoLayers<B: Backend> {
    first: LoraLinear<B>,
    blocks: Vec<LoraLinear<B>>,
}

#[test]
fn hook_preserves_products_and_balances_in_f32() {
    let mut rng = StdRng::seed_from_u64(11);
    let mk = |rng: &mut StdRng, n_in, n_out, r| {
        let w0 = rand_mat(rng, n_out, n_in, 1.0);
        layer::<Nd>(
            &w0,
            None,
            &rand_mat(rng, r, n_in, 1.0),
            &rand_mat(rng, n_out, r, 0.05),
            1.0,
        )
    };
    // The last adapter is wider than the host path's GEMM block (512) on both sides, with
    // partial blocks, so the blocked Grams and updates are covered.
    let model = TwoLayers {
        first: mk(&mut rng, 24, 16, 4),
        blocks: vec![mk(&mut rng, 16, 40, 8), mk(&mut rng, 1300, 1100, 6)],
    };
    let products = |m: &TwoLayers<Nd>| -> Vec<DMatrix<f64>> {
        std::iter::once(&m.first)
            .chain(&m.blocks)
            .map(|l| {
                let ad = l.adapter.as_ref().unwrap();
                to_m(ad.lora_b.val()) * to_m(ad.lora_a.val())
            })
            .collect()
    };
    let before = products(&model);
    let paths = [HookPath::Auto, HookPath::TensorOps];
    for (gauge, path) in [Gauge::Closest, Gauge::Canonical]
        .into_iter()
        .flat_map(|g| paths.map(|p| (g, p)))
    {
        let manifold = Balanced {
            gauge,
            ..Default::default()
        };
        let (out, report) = apply_manifold_with(model.clone(), &manifold, 1, path).unwrap();
        assert_eq!(
            (report.adapters, report.refactored, report.rank_deficient),
            (3, 3, 0)
        );
        for (p, q) in products(&out).iter().zip(&before) {
            assert!(
                (p - q).norm() / q.norm() < 1e-5,
                "{gauge:?} {path:?}: product changed by {}",
                (p - q).norm() / q.norm()
            );
        }
        for (key, g) in pair_grams(&out) {
            let d = balora_manifold::diagnose(&g);
            assert!(
                d.balance_gap < 1e-5,
                "{gauge:?} {path:?} {key}: gap {}",
                d.balance_gap
            );
        }
        let keys: Vec<String> = report.transforms.iter().map(|(k, _)| k.clone()).collect();
        assert_eq!(
            keys,
            ["first.adapter", "blocks.0.adapter", "blocks.1.adapter"]
        );
    }
    // Plain LoRA leaves everything untouched.
    let (same, report) = apply_manifold(model.clone(), &Unconstrained, 1).unwrap();
    assert_eq!(report.refactored, 0);
    assert_eq!(products(&same), before);
}

#[test]
fn hook_counts_zero_and_rank_deficient_pairs_without_nan() {
    let mut rng = StdRng::seed_from_u64(12);
    let w0 = rand_mat(&mut rng, 10, 12, 1.0);
    let a = rand_mat(&mut rng, 4, 12, 1.0);
    let zero = layer::<Nd>(&w0, None, &a, &DMatrix::zeros(10, 4), 1.0);
    let low = rand_mat(&mut rng, 10, 1, 1.0) * rand_mat(&mut rng, 1, 4, 1.0);
    let deficient = layer::<Nd>(&w0, None, &a, &low, 1.0);
    let model = TwoLayers {
        first: zero,
        blocks: vec![deficient],
    };
    let a_stored = to_m(model.first.adapter.as_ref().unwrap().lora_a.val());
    let manifold = Balanced::default();
    assert!(manifold.applies_at(1));
    for path in [HookPath::Auto, HookPath::TensorOps] {
        let (out, report) = apply_manifold_with(model.clone(), &manifold, 1, path).unwrap();
        assert_eq!(
            (
                report.zero_product,
                report.rank_deficient,
                report.refactored
            ),
            (1, 1, 1)
        );
        let ad = out.first.adapter.as_ref().unwrap();
        assert_eq!(to_m(ad.lora_a.val()), a_stored, "zero pair untouched");
        let ad = out.blocks[0].adapter.as_ref().unwrap();
        let p = to_m(ad.lora_b.val()) * to_m(ad.lora_a.val());
        let want = &low * &a;
        assert!(p.iter().all(|v| v.is_finite()));
        assert!((&p - &want).norm() / want.norm() < 1e-5);
    }
}

/// The trainer's entry point: projection on the inner backend, factors back in the autodiff
/// module — still trainable, base still frozen, product kept, pair balanced.
#[test]
fn autodiff_hook_keeps_factors_trainable() {
    type Ad = Autodiff<Nd>;
    let mut rng = StdRng::seed_from_u64(13);
    let (w0, a, b) = (
        rand_mat(&mut rng, 20, 30, 1.0),
        rand_mat(&mut rng, 5, 30, 1.0),
        rand_mat(&mut rng, 20, 5, 0.1),
    );
    let l = layer::<Ad>(&w0, None, &a, &b, 1.0);
    let l = LoraLinear {
        base: Linear {
            weight: l.base.weight.map(|w| w.set_require_grad(false)),
            bias: None,
        },
        ..l
    };
    let (out, report) = apply_manifold_autodiff(l, &Balanced::default(), 1).unwrap();
    assert_eq!(report.refactored, 1);
    let ad = out.adapter.as_ref().unwrap();
    let (na, nb) = (to_m(ad.lora_a.val()), to_m(ad.lora_b.val()));
    let want = &b * &a;
    assert!((&nb * &na - &want).norm() / want.norm() < 1e-5);
    let gap = (nb.transpose() * &nb - &na * na.transpose()).norm()
        / ((nb.transpose() * &nb).norm() + (&na * na.transpose()).norm());
    assert!(gap < 1e-5, "balance gap {gap}");
    let x = Tensor::<Ad, 2>::ones([2, 30], &Default::default());
    let grads = out.forward(x).sum().backward();
    assert!(ad.lora_a.val().grad(&grads).is_some() && ad.lora_b.val().grad(&grads).is_some());
    assert!(out.base.weight.val().grad(&grads).is_none());
}
