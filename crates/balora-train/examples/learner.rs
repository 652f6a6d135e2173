//! Fine-tunes balora's tiny causal LM with burn-train's `Learner` and BaLoRA: AdamW (with
//! moment transport) then the balanced manifold hook after every step, through
//! [`BurnOptimizer`], burn's `Optimizer` trait over balora's `TrainStepper`.
//!
//! ```text
//! cargo run -p balora-train --example learner
//! ```
//!
//! Runs in seconds on the CPU (ndarray backend): 3 epochs of 6 batches, a cosine lr schedule,
//! burn-train's checkpoints (model, optimizer, scheduler) in a temporary folder, then the
//! validation loss before and after, and how balanced the adapters are (`‖AAᵀ − BᵀB‖ / ‖AAᵀ‖`,
//! 0 for a balanced pair).

#[path = "../tests/support/learner_lm.rs"]
mod support;

use balora_adapter::collect_params;
use balora_data::Batch;
use balora_manifold::{OptionValue, Options};
use balora_train::BurnOptimizer;
use burn::backend::{Autodiff, NdArray};
use burn::data::dataloader::DataLoaderBuilder;
use burn::data::dataset::InMemDataset;
use burn::lr_scheduler::cosine::CosineAnnealingLrSchedulerConfig;
use burn::record::{FullPrecisionSettings, NamedMpkFileRecorder};
use burn::tensor::backend::Backend;
use burn::tensor::ElementConversion;
use burn_train::checkpoint::KeepLastNCheckpoints;
use burn_train::metric::LossMetric;
use burn_train::{Learner, SupervisedTraining};
use support::{LearnerLm, LmBatcher, StepLog};

type B = Autodiff<NdArray>;

/// Mean validation loss.
fn valid_loss<Bk: Backend>(model: &LearnerLm<Bk>, valid: &[balora_data::Example]) -> f64 {
    let losses: Vec<f64> = valid
        .chunks(4)
        .map(|c| {
            let batch = Batch::collate(&c.iter().collect::<Vec<_>>(), 0);
            model.loss(&batch).into_scalar().elem::<f64>()
        })
        .collect();
    losses.iter().sum::<f64>() / losses.len() as f64
}

/// Largest `‖AAᵀ − BᵀB‖_F / ‖AAᵀ‖_F` over the adapters, in f64.
fn imbalance<Bk: Backend>(model: &LearnerLm<Bk>) -> f64 {
    let gram = |m: &[f64], rows: usize, cols: usize, by_rows: bool| -> Vec<f64> {
        let r = if by_rows { rows } else { cols };
        let mut g = vec![0.0; r * r];
        for i in 0..r {
            for j in 0..r {
                g[i * r + j] = if by_rows {
                    (0..cols).map(|k| m[i * cols + k] * m[j * cols + k]).sum()
                } else {
                    (0..rows).map(|k| m[k * cols + i] * m[k * cols + j]).sum()
                };
            }
        }
        g
    };
    let table = collect_params(model);
    let host = |t: &burn::tensor::Tensor<Bk, 2>| -> (Vec<f64>, [usize; 2]) {
        let d = t.to_data().convert::<f64>();
        (d.to_vec().unwrap(), t.dims())
    };
    let mut worst = 0f64;
    for p in &table.pairs {
        let ((a, [r, i]), (b, [o, _])) = (host(&p.a), host(&p.b));
        let (aa, bb) = (gram(&a, r, i, true), gram(&b, o, r, false));
        let diff: f64 = aa.iter().zip(&bb).map(|(x, y)| (x - y).powi(2)).sum();
        let norm: f64 = aa.iter().map(|x| x * x).sum();
        worst = worst.max((diff / norm).sqrt());
    }
    worst
}

fn main() {
    let dev = Default::default();
    let (train, valid) = (support::sequences(24, 12, 0), support::sequences(8, 12, 3));
    let log = StepLog::default();
    let model = LearnerLm::<B>::new(1, log.clone(), &dev);
    let (before, imbalance_before) = (valid_loss(&model, &valid), imbalance(&model));

    let mut adamw = Options::default();
    adamw.0.insert("transport".into(), OptionValue::Bool(true));
    adamw
        .0
        .insert("weight_decay".into(), OptionValue::Float(0.01));
    let optim = BurnOptimizer::<B>::from_names("adamw", &adamw, "balanced", &Options::default())
        .expect("adamw and balanced are built in");
    let epochs = 3;
    let scheduler = CosineAnnealingLrSchedulerConfig::new(3e-2, epochs * train.len() / 4)
        .with_min_lr(3e-3)
        .init()
        .expect("a valid schedule");

    let dir = tempfile::tempdir().expect("a temporary folder");
    let loader_train = DataLoaderBuilder::new(LmBatcher)
        .batch_size(4)
        .shuffle(7)
        .build(InMemDataset::new(train));
    let loader_valid = DataLoaderBuilder::<NdArray, _, _>::new(LmBatcher)
        .batch_size(4)
        .build(InMemDataset::new(valid.clone()));
    let result = SupervisedTraining::new(dir.path(), loader_train, loader_valid)
        .metric_train_numeric(LossMetric::<NdArray>::new())
        .metric_valid_numeric(LossMetric::<NdArray>::new())
        .with_file_checkpointer(NamedMpkFileRecorder::<FullPrecisionSettings>::new())
        .with_checkpointing_strategy(KeepLastNCheckpoints::new(1))
        .with_application_logger(None)
        .renderer(support::EpochRenderer::default())
        .num_epochs(epochs)
        .summary()
        .launch(Learner::new(model, optim, scheduler));

    let after = valid_loss(&result.model, &valid);
    let steps = log.steps();
    let loss_at = |i: usize| steps.get(i).map_or(f32::NAN, |s| s.1);
    println!(
        "{} optimizer steps; training loss {:.4} at the first, {:.4} at the last",
        steps.len(),
        loss_at(0),
        loss_at(steps.len().wrapping_sub(1))
    );
    println!("validation loss: {before:.4} before, {after:.4} after {epochs} epochs");
    println!(
        "adapter imbalance max ‖AAᵀ − BᵀB‖/‖AAᵀ‖: {imbalance_before:.2e} at init (B = 0), \
         {:.2e} after training (BaLoRA re-balances after every step)",
        imbalance(&result.model)
    );
    let ckpt = dir.path().join("checkpoint");
    let mut files: Vec<String> = std::fs::read_dir(&ckpt)
        .map(|d| {
            d.filter_map(|e| Some(e.ok()?.file_name().to_string_lossy().into_owned()))
                .collect()
        })
        .unwrap_or_default();
    files.sort();
    println!("burn-train checkpoint files: {}", files.join(", "));
}
