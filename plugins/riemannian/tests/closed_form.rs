//! Riemannian-preconditioned SGD/AdamW against the rule written out in f64 here: the r×r
//! preconditioners inverted with nalgebra's general `try_inverse` (the plugin uses Cholesky),
//! the updates element by element. Through the optimizer alone (given gradients) and through
//! the `OptimizerDriver` on a real `LoraLinear` (autodiff gradients, batched Grams). Moment
//! transport is checked against the math in `transport.rs`.

extern crate balora_plugin_riemannian;

use balora_adapter::{LoraAdapter, LoraLinear};
use balora_optim::rules::AdamWParams;
use balora_optim::testkit::{matrix, rand_mat, rel_err, step_host, tensor, RefAdamW};
use balora_optim::{build_optimizer, OptimizerDriver, OptionValue, Options};
use burn::backend::{Autodiff, NdArray};
use burn::module::Param;
use burn::nn::Linear;
use burn::optim::GradientsParams;
use burn::tensor::Tensor;
use nalgebra::DMatrix;

type B = NdArray;

/// `(A + δI)⁻¹` by Gauss–Jordan (nalgebra's LU-based general inverse).
fn damped_inv(m: &DMatrix<f64>, delta: f64) -> DMatrix<f64> {
    (m + DMatrix::identity(m.nrows(), m.ncols()) * delta)
        .try_inverse()
        .expect("damped Gram is invertible")
}

/// Preconditioned gradients of the Zhang–Pilanci rule.
fn precondition(
    a: &DMatrix<f64>,
    b: &DMatrix<f64>,
    ga: &DMatrix<f64>,
    gb: &DMatrix<f64>,
    delta: f64,
) -> (DMatrix<f64>, DMatrix<f64>) {
    (
        damped_inv(&(b.transpose() * b), delta) * ga,
        gb * damped_inv(&(a * a.transpose()), delta),
    )
}

#[test]
fn sgd_momentum_base_matches_closed_form() {
    let (r, n_in, n_out) = (3, 7, 5);
    let (lr, mu, delta) = (0.05, 0.5, 1e-2);
    let opts = Options::default()
        .with("base", OptionValue::Str("sgd".into()))
        .with("momentum", OptionValue::Float(mu))
        .with("delta", OptionValue::Float(delta));
    for steps in [1, 4] {
        let mut opt = build_optimizer::<B>("riemannian", &opts).unwrap();
        assert!(opt.wants_grams());
        let (mut a, mut b) = (rand_mat(r, n_in, 1), rand_mat(n_out, r, 2));
        let (mut ta, mut tb) = (tensor::<B>(&a), tensor::<B>(&b));
        let (mut ma, mut mb) = (
            DMatrix::<f64>::zeros(r, n_in),
            DMatrix::<f64>::zeros(n_out, r),
        );
        for t in 0..steps {
            let (ga, gb) = (
                rand_mat(r, n_in, 10 + t as u64),
                rand_mat(n_out, r, 30 + t as u64),
            );
            // grams: None exercises the plugin's own device-side Gram path.
            (ta, tb) = step_host(opt.as_mut(), ("l", lr), (ta, tb), (&ga, &gb), None);
            let (pa, pb) = precondition(&a, &b, &ga, &gb, delta);
            ma = ma * mu + pa;
            mb = mb * mu + pb;
            a -= &ma * lr;
            b -= &mb * lr;
            let (ea, eb) = (
                rel_err(&matrix(ta.clone()), &a),
                rel_err(&matrix(tb.clone()), &b),
            );
            assert!(
                ea < 1e-5 && eb < 1e-5,
                "step {}: errors {ea:e} {eb:e}",
                t + 1
            );
        }
    }
}

#[test]
fn adamw_base_matches_closed_form() {
    let (r, n_in, n_out) = (2, 6, 4);
    let (lr, delta) = (0.01, 1e-3);
    let hp = AdamWParams {
        weight_decay: 0.02,
        ..AdamWParams::default()
    };
    let opts = Options::default()
        .with("delta", OptionValue::Float(delta))
        .with("weight_decay", OptionValue::Float(hp.weight_decay));
    let mut opt = build_optimizer::<B>("riemannian", &opts).unwrap();
    let (mut a, mut b) = (rand_mat(r, n_in, 3), rand_mat(n_out, r, 4));
    let (mut ta, mut tb) = (tensor::<B>(&a), tensor::<B>(&b));
    let (mut ref_a, mut ref_b) = (RefAdamW::new((r, n_in), hp), RefAdamW::new((n_out, r), hp));
    for t in 1..=5 {
        let (ga, gb) = (rand_mat(r, n_in, 60 + t), rand_mat(n_out, r, 90 + t));
        let grams = balora_optim::PairGrams::new(&a * a.transpose(), b.transpose() * &b).unwrap();
        (ta, tb) = step_host(opt.as_mut(), ("l", lr), (ta, tb), (&ga, &gb), Some(grams));
        let (pa, pb) = precondition(&a, &b, &ga, &gb, delta);
        a = ref_a.step(&a, &pa, lr);
        b = ref_b.step(&b, &pb, lr);
        let (ea, eb) = (
            rel_err(&matrix(ta.clone()), &a),
            rel_err(&matrix(tb.clone()), &b),
        );
        assert!(ea < 1e-5 && eb < 1e-5, "step {t}: errors {ea:e} {eb:e}");
    }
}

#[test]
fn through_the_driver_with_autodiff_gradients_and_batched_grams() {
    // ½‖W0 + B·A − T‖² through a real LoraLinear fed the identity (output (W0 + BA)ᵀ), so
    // ∇A = Bᵀ·R and ∇B = R·Aᵀ with R = W0 + BA − T, computed here in f64.
    type AD = Autodiff<NdArray>;
    let (d, r) = (6, 2);
    let (lr, delta) = (0.05, 1e-2);
    let w0 = rand_mat(d, d, 7);
    let target = rand_mat(d, d, 8);
    let (mut a, mut b) = (rand_mat(r, d, 9), rand_mat(d, r, 10) * 0.5);
    let dev = Default::default();
    let mut model = LoraLinear::from_base(Linear {
        weight: Param::from_tensor(tensor::<AD>(&w0.transpose())),
        bias: None,
    });
    model.adapter = Some(LoraAdapter::from_tensors(tensor(&a), tensor(&b), 1.0, 0.0));
    let opts = Options::default()
        .with("base", OptionValue::Str("sgd".into()))
        .with("delta", OptionValue::Float(delta));
    let mut driver =
        OptimizerDriver::<AD>::new(build_optimizer::<NdArray>("riemannian", &opts).unwrap());
    let eye = Tensor::<AD, 2>::eye(d, &dev);
    let target_t = tensor::<AD>(&target.transpose());
    for step in 1..=3 {
        let loss = (model.forward(eye.clone()) - target_t.clone())
            .powi_scalar(2)
            .sum()
            .mul_scalar(0.5);
        let grads = GradientsParams::from_grads(loss.backward(), &model);
        model = driver.step(lr, model, grads);
        let res = &w0 + &b * &a - &target;
        let (ga, gb) = (b.transpose() * &res, &res * a.transpose());
        let (pa, pb) = precondition(&a, &b, &ga, &gb, delta);
        a -= pa * lr;
        b -= pb * lr;
        let ad = model.adapter.as_ref().unwrap();
        let (ea, eb) = (
            rel_err(&matrix(ad.lora_a.val().inner()), &a),
            rel_err(&matrix(ad.lora_b.val().inner()), &b),
        );
        assert!(ea < 1e-4 && eb < 1e-4, "step {step}: errors {ea:e} {eb:e}");
    }
}

#[test]
fn registered_options_validated() {
    let bad = Options::default().with("delta", OptionValue::Float(0.0));
    assert!(build_optimizer::<B>("riemannian", &bad).is_err());
    let bad = Options::default().with("base", OptionValue::Str("lion".into()));
    let err = build_optimizer::<B>("riemannian", &bad)
        .err()
        .unwrap()
        .to_string();
    assert!(err.contains("sgd") && err.contains("adamw"), "{err}");
    // beta1 belongs to the AdamW base only.
    let bad = Options::default()
        .with("base", OptionValue::Str("sgd".into()))
        .with("beta1", OptionValue::Float(0.9));
    assert!(build_optimizer::<B>("riemannian", &bad).is_err());
}
