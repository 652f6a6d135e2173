//! The built-in optimizers (adamw, sgd, sign), built by name from the registry, against the
//! update rules written out element by element in f64 here (not calling `balora_optim::rules`).
//! Moment transport is checked against the math in `transport_math.rs`.

use balora_optim::rules::AdamWParams;
use balora_optim::testkit::{matrix, rand_mat, step_host, tensor, RefAdamW};
use balora_optim::{build_optimizer, AdapterOptimizer, OptionValue, Options};
use burn::backend::NdArray;
use nalgebra::DMatrix;

type B = NdArray;
const R: usize = 3;
const N_IN: usize = 5;
const N_OUT: usize = 4;

/// Relative max-abs error, f32 tolerance.
fn assert_close(got: &DMatrix<f64>, want: &DMatrix<f64>, what: &str) {
    let scale = want.amax().max(1e-3);
    let err = (got - want).amax() / scale;
    assert!(
        err < 2e-5,
        "{what}: relative error {err:e}\n got {got}\nwant {want}"
    );
}

/// Gradients of step t (independent of the parameters: the rules are what is tested).
fn grads(t: usize) -> (DMatrix<f64>, DMatrix<f64>) {
    (
        rand_mat(R, N_IN, 100 + t as u64),
        rand_mat(N_OUT, R, 200 + t as u64),
    )
}

fn run(
    opt: &mut dyn AdapterOptimizer<B>,
    lr: f64,
    steps: usize,
) -> Vec<(DMatrix<f64>, DMatrix<f64>)> {
    let (mut a, mut b) = (
        tensor(&rand_mat(R, N_IN, 1)),
        tensor(&rand_mat(N_OUT, R, 2)),
    );
    let mut out = Vec::new();
    for t in 0..steps {
        let (ga, gb) = grads(t);
        let (na, nb) = step_host(opt, ("layer.q", lr), (a, b), (&ga, &gb), None);
        out.push((matrix(na.clone()), matrix(nb.clone())));
        (a, b) = (na, nb);
    }
    out
}

fn hp(beta1: f64, beta2: f64, eps: f64, weight_decay: f64) -> AdamWParams {
    AdamWParams {
        beta1,
        beta2,
        eps,
        weight_decay,
    }
}

fn adamw_opts() -> Options {
    Options::default()
        .with("beta1", OptionValue::Float(0.8))
        .with("beta2", OptionValue::Float(0.95))
        .with("eps", OptionValue::Float(1e-6))
        .with("weight_decay", OptionValue::Float(0.1))
}

#[test]
fn transport_option_spellings_and_errors() {
    use balora_optim::TransportMode;
    for (value, want) in [
        (OptionValue::Bool(false), TransportMode::Off),
        (OptionValue::Bool(true), TransportMode::Diagonal),
        (OptionValue::Str("off".into()), TransportMode::Off),
        (OptionValue::Str("first".into()), TransportMode::First),
        (OptionValue::Str("signed".into()), TransportMode::Signed),
        (OptionValue::Str("diagonal".into()), TransportMode::Diagonal),
    ] {
        let opts = Options::default().with("transport", value.clone());
        assert_eq!(
            TransportMode::from_options(&opts).unwrap(),
            want,
            "{value:?}"
        );
        let opt = build_optimizer::<B>("adamw", &opts).unwrap();
        assert_eq!(opt.moment_transport(), Some(want), "{value:?}");
    }
    assert_eq!(
        TransportMode::from_options(&Options::default()).unwrap(),
        TransportMode::Off
    );
    for bad in [OptionValue::Str("both!".into()), OptionValue::Int(1)] {
        let opts = Options::default().with("transport", bad);
        let err = build_optimizer::<B>("adamw", &opts)
            .err()
            .expect("must fail")
            .to_string();
        assert!(
            err.contains("transport") && err.contains("diagonal"),
            "{err}"
        );
    }
    // Stateless optimizers and SGD without momentum have nothing to transport.
    let sign = build_optimizer::<B>("sign", &Options::default()).unwrap();
    assert_eq!(sign.moment_transport(), None);
    let sgd = build_optimizer::<B>("sgd", &Options::default()).unwrap();
    assert_eq!(sgd.moment_transport(), None);
    let sgd = build_optimizer::<B>(
        "sgd",
        &Options::default().with("momentum", OptionValue::Float(0.9)),
    )
    .unwrap();
    assert_eq!(sgd.moment_transport(), Some(TransportMode::Off));
}

#[test]
fn signed_permutations_are_recognised_within_tolerance_only() {
    use balora_optim::signed_permutation;
    let s = DMatrix::from_row_slice(3, 3, &[0.0, -1.0, 0.0, 0.0, 0.0, 1.0, 1.0, 0.0, 0.0]);
    let noisy = &s + rand_mat(3, 3, 9) * 1e-7;
    assert_eq!(signed_permutation(&noisy, 1e-6), Some(s.clone()));
    assert_eq!(signed_permutation(&noisy, 1e-8), None, "noise above tol");
    // Two ±1 in one column (not invertible), a scaled permutation, a rotation, NaN.
    let twice = DMatrix::from_row_slice(2, 2, &[1.0, 0.0, -1.0, 0.0]);
    assert_eq!(signed_permutation(&twice, 1e-6), None);
    assert_eq!(signed_permutation(&(&s * 2.0), 1e-6), None);
    let (c, sn) = (0.6f64, 0.8f64);
    let rot = DMatrix::from_row_slice(2, 2, &[c, -sn, sn, c]);
    assert_eq!(signed_permutation(&rot, 1e-6), None);
    let nan = DMatrix::from_row_slice(1, 1, &[f64::NAN]);
    assert_eq!(signed_permutation(&nan, 1e-6), None);
}

#[test]
fn adamw_one_and_five_steps_match_closed_form() {
    let lr = 0.05;
    for steps in [1, 5] {
        let mut opt = build_optimizer::<B>("adamw", &adamw_opts()).unwrap();
        let got = run(opt.as_mut(), lr, steps);
        let (mut a, mut b) = (rand_mat(R, N_IN, 1), rand_mat(N_OUT, R, 2));
        let mut ra = RefAdamW::new((R, N_IN), hp(0.8, 0.95, 1e-6, 0.1));
        let mut rb = RefAdamW::new((N_OUT, R), hp(0.8, 0.95, 1e-6, 0.1));
        for (t, (ga_got, gb_got)) in got.iter().enumerate() {
            let (ga, gb) = grads(t);
            a = ra.step(&a, &ga, lr);
            b = rb.step(&b, &gb, lr);
            assert_close(ga_got, &a, &format!("adamw A after {} steps", t + 1));
            assert_close(gb_got, &b, &format!("adamw B after {} steps", t + 1));
        }
    }
}

#[test]
fn sgd_momentum_matches_closed_form() {
    let (lr, mu, wd) = (0.1, 0.9, 0.01);
    let opts = Options::default()
        .with("momentum", OptionValue::Float(mu))
        .with("weight_decay", OptionValue::Float(wd));
    for steps in [1, 4] {
        let mut opt = build_optimizer::<B>("sgd", &opts).unwrap();
        let got = run(opt.as_mut(), lr, steps);
        let (mut a, mut b) = (rand_mat(R, N_IN, 1), rand_mat(N_OUT, R, 2));
        let (mut ma, mut mb) = (
            DMatrix::<f64>::zeros(R, N_IN),
            DMatrix::<f64>::zeros(N_OUT, R),
        );
        for (t, (a_got, b_got)) in got.iter().enumerate() {
            let (ga, gb) = grads(t);
            for i in 0..a.len() {
                ma[i] = mu * ma[i] + ga[i];
                a[i] = a[i] * (1.0 - lr * wd) - lr * ma[i];
            }
            for i in 0..b.len() {
                mb[i] = mu * mb[i] + gb[i];
                b[i] = b[i] * (1.0 - lr * wd) - lr * mb[i];
            }
            assert_close(a_got, &a, &format!("sgd A after {} steps", t + 1));
            assert_close(b_got, &b, &format!("sgd B after {} steps", t + 1));
        }
    }
}

#[test]
fn sign_descent_matches_closed_form() {
    let (lr, eps) = (0.03, 1e-3);
    let opts = Options::default().with("eps", OptionValue::Float(eps));
    let mut opt = build_optimizer::<B>("sign", &opts).unwrap();
    let got = run(opt.as_mut(), lr, 3);
    let (mut a, mut b) = (rand_mat(R, N_IN, 1), rand_mat(N_OUT, R, 2));
    for (t, (a_got, b_got)) in got.iter().enumerate() {
        let (ga, gb) = grads(t);
        a.zip_apply(&ga, |x, g| *x -= lr * g / (g.abs() + eps));
        b.zip_apply(&gb, |x, g| *x -= lr * g / (g.abs() + eps));
        assert_close(a_got, &a, &format!("sign A after {} steps", t + 1));
        assert_close(b_got, &b, &format!("sign B after {} steps", t + 1));
    }
}

#[test]
fn unknown_optimizer_lists_registered_names() {
    let err = build_optimizer::<B>("adamx", &Options::default())
        .err()
        .expect("unknown name must fail")
        .to_string();
    for name in ["adamx", "adamw", "sgd", "sign"] {
        assert!(err.contains(name), "`{err}` should mention `{name}`");
    }
}

#[test]
fn unknown_option_key_is_rejected_with_allowed_keys() {
    let opts = Options::default().with("beta3", OptionValue::Float(0.5));
    let err = build_optimizer::<B>("adamw", &opts)
        .err()
        .expect("must fail")
        .to_string();
    assert!(err.contains("beta3") && err.contains("beta2"), "{err}");
}
