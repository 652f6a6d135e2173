//! The built-in optimizers (adamw, sgd, sign), built by name from the registry, against the
//! update rules written out element by element in f64 here (not calling `balora_optim::rules`).

use balora_optim::{
    build_optimizer, AdapterOptimizer, GaugeTransform, OptionValue, Options, PairStep,
};
use burn::backend::NdArray;
use burn::tensor::{Tensor, TensorData};
use nalgebra::DMatrix;

type B = NdArray;
const R: usize = 3;
const N_IN: usize = 5;
const N_OUT: usize = 4;

/// Deterministic pseudo-random matrix with entries in [-1, 1).
fn rand_mat(rows: usize, cols: usize, seed: u64) -> DMatrix<f64> {
    let mut s = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    DMatrix::from_fn(rows, cols, |_, _| {
        s ^= s << 13;
        s ^= s >> 7;
        s ^= s << 17;
        (s >> 11) as f64 / (1u64 << 52) as f64 - 1.0
    })
}

fn tensor(m: &DMatrix<f64>) -> Tensor<B, 2> {
    let rows: Vec<f32> = m.transpose().iter().map(|&v| v as f32).collect();
    Tensor::from_data(
        TensorData::new(rows, [m.nrows(), m.ncols()]),
        &Default::default(),
    )
}

fn matrix(t: Tensor<B, 2>) -> DMatrix<f64> {
    let [r, c] = t.dims();
    let v: Vec<f64> = t.into_data().iter::<f64>().collect();
    DMatrix::from_row_slice(r, c, &v)
}

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
        let (na, nb) = opt.step_pair(
            "layer.q",
            lr,
            PairStep {
                a,
                b,
                grad_a: tensor(&ga),
                grad_b: tensor(&gb),
                grams: None,
            },
        );
        out.push((matrix(na.clone()), matrix(nb.clone())));
        (a, b) = (na, nb);
    }
    out
}

/// Element-wise AdamW in f64.
struct RefAdamW {
    b1: f64,
    b2: f64,
    eps: f64,
    wd: f64,
    m: DMatrix<f64>,
    v: DMatrix<f64>,
    t: i32,
}

impl RefAdamW {
    fn new(shape: (usize, usize), b1: f64, b2: f64, eps: f64, wd: f64) -> Self {
        Self {
            b1,
            b2,
            eps,
            wd,
            m: DMatrix::zeros(shape.0, shape.1),
            v: DMatrix::zeros(shape.0, shape.1),
            t: 0,
        }
    }
    fn step(&mut self, theta: &DMatrix<f64>, g: &DMatrix<f64>, lr: f64) -> DMatrix<f64> {
        self.t += 1;
        let mut out = theta.clone();
        for i in 0..theta.len() {
            self.m[i] = self.b1 * self.m[i] + (1.0 - self.b1) * g[i];
            self.v[i] = self.b2 * self.v[i] + (1.0 - self.b2) * g[i] * g[i];
            let mhat = self.m[i] / (1.0 - self.b1.powi(self.t));
            let vhat = self.v[i] / (1.0 - self.b2.powi(self.t));
            out[i] = theta[i] * (1.0 - lr * self.wd) - lr * mhat / (vhat.sqrt() + self.eps);
        }
        out
    }
}

fn adamw_opts(transport: bool) -> Options {
    Options::default()
        .with("beta1", OptionValue::Float(0.8))
        .with("beta2", OptionValue::Float(0.95))
        .with("eps", OptionValue::Float(1e-6))
        .with("weight_decay", OptionValue::Float(0.1))
        .with("transport", OptionValue::Bool(transport))
}

#[test]
fn adamw_one_and_five_steps_match_closed_form() {
    let lr = 0.05;
    for steps in [1, 5] {
        let mut opt = build_optimizer::<B>("adamw", &adamw_opts(false)).unwrap();
        let got = run(opt.as_mut(), lr, steps);
        let (mut a, mut b) = (rand_mat(R, N_IN, 1), rand_mat(N_OUT, R, 2));
        let mut ra = RefAdamW::new((R, N_IN), 0.8, 0.95, 1e-6, 0.1);
        let mut rb = RefAdamW::new((N_OUT, R), 0.8, 0.95, 1e-6, 0.1);
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
fn adamw_transport_carries_first_moments_exactly() {
    // Two steps, a re-factorisation (A, B) → (Q·A, B·P), two more steps.
    let lr = 0.02;
    let p = DMatrix::from_row_slice(R, R, &[1.5, 0.2, 0.0, -0.3, 0.8, 0.1, 0.05, 0.0, 1.2]);
    let q = p.clone().try_inverse().unwrap();
    let transform = GaugeTransform {
        p: p.clone(),
        q: q.clone(),
    };
    for transport in [false, true] {
        let mut opt = build_optimizer::<B>("adamw", &adamw_opts(transport)).unwrap();
        let (mut a, mut b) = (rand_mat(R, N_IN, 1), rand_mat(N_OUT, R, 2));
        let mut ra = RefAdamW::new((R, N_IN), 0.8, 0.95, 1e-6, 0.1);
        let mut rb = RefAdamW::new((N_OUT, R), 0.8, 0.95, 1e-6, 0.1);
        let (mut ta, mut tb) = (tensor(&a), tensor(&b));
        for t in 0..4 {
            if t == 2 {
                a = &q * &a;
                b = &b * &p;
                (ta, tb) = (tensor(&a), tensor(&b));
                opt.on_refactor("layer.q", &transform);
                if transport {
                    ra.m = p.transpose() * &ra.m;
                    rb.m = &rb.m * q.transpose();
                }
            }
            let (ga, gb) = grads(t);
            let (na, nb) = opt.step_pair(
                "layer.q",
                lr,
                PairStep {
                    a: ta,
                    b: tb,
                    grad_a: tensor(&ga),
                    grad_b: tensor(&gb),
                    grams: None,
                },
            );
            a = ra.step(&a, &ga, lr);
            b = rb.step(&b, &gb, lr);
            assert_close(
                &matrix(na.clone()),
                &a,
                &format!("A step {t} transport={transport}"),
            );
            assert_close(
                &matrix(nb.clone()),
                &b,
                &format!("B step {t} transport={transport}"),
            );
            (ta, tb) = (na, nb);
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
