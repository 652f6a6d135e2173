//! Training throughput (tokens/s) of LoRA and BaLoRA in the same process, printed as a ratio.
//!
//! `cargo bench -p balora-train --bench throughput` — the tiny random-weight model always; the
//! default model (SmolLM2-135M) too when its asset is present (`balora assets --only smollm2`).
//! Env: `BALORA_BENCH_STEPS` (default 6 for SmolLM2, 40 for tiny), `BALORA_BENCH_SEQ` (64).

use balora_adapter::LoraConfig;
use balora_adapter::ModuleSelector;
use balora_config::{ScheduleName, TrainerSection};
use balora_data::{Dataset, Example};
use balora_manifold::Options;
use balora_models::surgery::attach;
use balora_models::CausalLm;
use balora_train::tiny::{TinyLm, TinyLmConfig};
use balora_train::{train, Objective, RunOptions, TrainStepper};
use burn::backend::{Autodiff, NdArray};
use burn::module::AutodiffModule;
use burn::tensor::backend::Backend;

type B = Autodiff<NdArray>;

fn data(vocab: u32, seq: usize, n: usize) -> Dataset {
    let ex = |i: u32| {
        let ids: Vec<u32> = (0..seq as u32)
            .map(|t| (i * 31 + t * 7 + 1) % vocab)
            .collect();
        Example::lm(ids, vec![true; seq])
    };
    Dataset {
        train: (0..n as u32).map(ex).collect(),
        valid: vec![],
        classes: vec![],
        pad_id: 0,
    }
}

fn cfg(steps: u64) -> TrainerSection {
    TrainerSection {
        steps,
        batch_size: 4,
        lr: 1e-3,
        schedule: ScheduleName::Constant,
        warmup_steps: 0,
        eval_every: 0,
        progress: false,
        ..TrainerSection::default()
    }
}

/// (tokens/s, hook share) of one method.
fn measure<M>(model: M, manifold: &str, d: &Dataset, steps: u64) -> (f64, f64)
where
    M: AutodiffModule<B> + CausalLm<B>,
    M::InnerModule: CausalLm<NdArray>,
{
    let dev = Default::default();
    let mut st =
        TrainStepper::<B>::from_names("adamw", &Options::default(), manifold, &Options::default())
            .unwrap();
    // One warm-up step outside the measurement.
    let warm = train(
        model,
        &mut st,
        d,
        &cfg(1),
        &RunOptions::default(),
        &Objective::causal(),
        &dev,
    )
    .unwrap();
    let mut st =
        TrainStepper::<B>::from_names("adamw", &Options::default(), manifold, &Options::default())
            .unwrap();
    let o = train(
        warm.model,
        &mut st,
        d,
        &cfg(steps),
        &RunOptions::default(),
        &Objective::causal(),
        &dev,
    )
    .unwrap();
    (o.tokens as f64 / o.train_s, o.hook_s / o.train_s)
}

fn report<M>(name: &str, make: impl Fn() -> M, d: &Dataset, steps: u64)
where
    M: AutodiffModule<B> + CausalLm<B>,
    M::InnerModule: CausalLm<NdArray>,
{
    let (lora, _) = measure(make(), "unconstrained", d, steps);
    let (balora, share) = measure(make(), "balanced", d, steps);
    println!(
        "{name:<28} LoRA {lora:>9.0} tok/s   BaLoRA {balora:>9.0} tok/s   ratio BaLoRA/LoRA {:.3}   (hook {:.2}% of BaLoRA step time, {steps} steps)",
        balora / lora,
        100.0 * share
    );
}

fn main() {
    let dev: burn::tensor::Device<B> = Default::default();
    let seq: usize = std::env::var("BALORA_BENCH_SEQ")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(64);
    let steps_env = std::env::var("BALORA_BENCH_STEPS")
        .ok()
        .and_then(|s| s.parse::<u64>().ok());
    let tiny = TinyLmConfig {
        vocab: 256,
        hidden: 128,
        mlp: 256,
        layers: 2,
    };
    let lora = LoraConfig {
        r: 8,
        alpha: 16.0,
        ..Default::default()
    }
    .resolve("q_proj")
    .expect("valid adapter config");
    report(
        "tiny (2×128, r=8)",
        || {
            B::seed(&dev, 0);
            TinyLm::<B>::new(tiny, &lora, &["q_proj", "v_proj"], &dev)
        },
        &data(256, seq, 64),
        steps_env.unwrap_or(40),
    );
    let cache = balora_assets::default_cache_dir();
    match balora_assets::find(&cache).smollm2_gguf() {
        Ok(path) => {
            let base = balora_models::load::load_causal_lm::<B>(&path, &dev).expect("loading SmolLM2");
            let spec = LoraConfig::new(8, 16.0, ModuleSelector::List(vec!["q_proj".into(), "v_proj".into()])).expect("valid adapter config");
            let vocab = base.model.vocab_size() as u32;
            report(
                "SmolLM2-135M (q,v r=8)",
                || {
                    B::seed(&dev, 0);
                    attach(base.model.clone(), &spec, &dev).expect("attach").0
                },
                &data(vocab, seq, 16),
                steps_env.unwrap_or(6),
            );
        }
        Err(e) => println!("SmolLM2-135M: skipped ({e}); fetch it with `cargo xtask assets` / `balora assets --only smollm2`"),
    }
}
