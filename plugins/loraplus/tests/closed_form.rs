//! LoRA+ against AdamW written out element by element in f64 with B's learning rate λ·η.
//! Also: the plugin crate registers itself and is found by name.

extern crate balora_plugin_loraplus;

use balora_optim::rules::AdamWParams;
use balora_optim::testkit::{matrix, rand_mat, step_host, tensor, RefAdamW};
use balora_optim::{build_optimizer, optimizer_entries, OptionValue, Options};
use burn::backend::NdArray;

type B = NdArray;

fn check(ratio: Option<f64>, steps: usize) {
    let (r, n_in, n_out) = (2, 6, 5);
    let lr = 1e-3;
    let hp = AdamWParams {
        beta2: 0.99,
        weight_decay: 0.05,
        ..AdamWParams::default()
    };
    let mut opts = Options::default()
        .with("beta2", OptionValue::Float(hp.beta2))
        .with("weight_decay", OptionValue::Float(hp.weight_decay));
    if let Some(l) = ratio {
        opts = opts.with("ratio", OptionValue::Float(l));
    }
    let lambda = ratio.unwrap_or(16.0);
    let mut opt = build_optimizer::<B>("loraplus", &opts).unwrap();
    let (mut a, mut b) = (rand_mat(r, n_in, 1), rand_mat(n_out, r, 2));
    let (mut ta, mut tb) = (tensor(&a), tensor(&b));
    let (mut ref_a, mut ref_b) = (RefAdamW::new((r, n_in), hp), RefAdamW::new((n_out, r), hp));
    for t in 0..steps {
        let (ga, gb) = (
            rand_mat(r, n_in, 10 + t as u64),
            rand_mat(n_out, r, 50 + t as u64),
        );
        (ta, tb) = step_host(
            opt.as_mut(),
            ("blocks.0.mlp", lr),
            (ta, tb),
            (&ga, &gb),
            None,
        );
        a = ref_a.step(&a, &ga, lr);
        b = ref_b.step(&b, &gb, lambda * lr);
        for (got, want, name) in [(matrix(ta.clone()), &a, "A"), (matrix(tb.clone()), &b, "B")] {
            let err = (&got - want).amax() / want.amax();
            assert!(
                err < 2e-6,
                "{name} after {} steps (λ={lambda}): rel err {err:e}",
                t + 1
            );
        }
    }
}

#[test]
fn one_step_default_ratio_16() {
    check(None, 1);
}

#[test]
fn several_steps_custom_ratio() {
    check(Some(4.0), 6);
}

#[test]
fn b_moves_ratio_times_further_on_first_step() {
    // First AdamW step is ±lr per element (|g| ≫ ε), so |ΔB| / |ΔA| = λ exactly.
    let opts = Options::default().with("ratio", OptionValue::Int(8));
    let mut opt = build_optimizer::<B>("loraplus", &opts).unwrap();
    let (a, b) = (rand_mat(2, 3, 3), rand_mat(3, 2, 4));
    let (na, nb) = step_host(
        opt.as_mut(),
        ("k", 0.01),
        (tensor(&a), tensor(&b)),
        (&rand_mat(2, 3, 5), &rand_mat(3, 2, 6)),
        None,
    );
    let da = (matrix(na) - a).abs();
    let db = (matrix(nb) - b).abs();
    assert!(da.iter().all(|v| (v - 0.01).abs() < 1e-6), "{da}");
    assert!(db.iter().all(|v| (v - 0.08).abs() < 1e-6), "{db}");
}

#[test]
fn registered_and_found_by_name_and_options_validated() {
    let entry = optimizer_entries()
        .find(|e| e.name == "loraplus")
        .expect("the plugin crate registers `loraplus`");
    assert!(entry.options.iter().any(|o| o.key == "ratio"));
    let bad = Options::default().with("ratio", OptionValue::Float(-1.0));
    assert!(build_optimizer::<B>("loraplus", &bad).is_err());
    let unknown = Options::default().with("lambda", OptionValue::Float(2.0));
    let err = build_optimizer::<B>("loraplus", &unknown)
        .err()
        .unwrap()
        .to_string();
    assert!(err.contains("lambda") && err.contains("ratio"), "{err}");
    let err = build_optimizer::<B>("lora+", &Options::default())
        .err()
        .unwrap()
        .to_string();
    assert!(err.contains("loraplus") && err.contains("adamw"), "{err}");
}
