//! The fine-tuning loop on a tiny random-weight model: loss decreases, masking, exact resume,
//! atomic checkpoints.

use balora_adapter::LoraConfig;
use balora_config::{ScheduleName, TrainerSection};
use balora_data::{Batch, Dataset, Example, IGNORE_INDEX};
use balora_manifold::{OptionValue, Options};
use balora_train::checkpoint::{list_checkpoints, Checkpoint, TrainerState};
use balora_train::loss::token_nll_sum;
use balora_train::tiny::{TinyLm, TinyLmConfig};
use balora_train::{evaluate, train, Objective, RunOptions, TrainStepper};
use burn::backend::{Autodiff, NdArray};
use burn::tensor::backend::Backend;
use burn::tensor::{Tensor, TensorData};

type B = Autodiff<NdArray>;

/// ndarray's RNG (init, dropout) is process-global: tests that train run one at a time.
static SERIAL: std::sync::Mutex<()> = std::sync::Mutex::new(());

fn serial() -> std::sync::MutexGuard<'static, ()> {
    SERIAL.lock().unwrap_or_else(|e| e.into_inner())
}

/// Sequences following `x_{t+1} = (3·x_t + 1) mod 64`: learnable from the previous token.
fn dataset(n: usize, seq: usize) -> Dataset {
    let ex = |start: u32| {
        let mut ids = vec![start % 64];
        for _ in 1..seq {
            let last = *ids.last().unwrap();
            ids.push((3 * last + 1) % 64);
        }
        Example::lm(ids, vec![true; seq])
    };
    Dataset {
        train: (0..n as u32).map(|i| ex(i * 7)).collect(),
        valid: (0..8u32).map(|i| ex(i * 7 + 3)).collect(),
        classes: Vec::new(),
        pad_id: 0,
    }
}

fn model(seed: u64, dropout: f64) -> TinyLm<B> {
    let dev = Default::default();
    B::seed(&dev, seed);
    let lora = LoraConfig {
        r: 4,
        alpha: 8.0,
        dropout,
        ..Default::default()
    }
    .resolve("q_proj")
    .unwrap();
    TinyLm::new(
        TinyLmConfig::default(),
        &lora,
        &["q_proj", "v_proj", "up_proj", "down_proj"],
        &dev,
    )
}

fn stepper(manifold: &str) -> TrainStepper<B> {
    let mut opt = Options::default();
    opt.0.insert("transport".into(), OptionValue::Bool(true));
    opt.0
        .insert("weight_decay".into(), OptionValue::Float(0.01));
    TrainStepper::<B>::from_names("adamw", &opt, manifold, &Options::default()).unwrap()
}

fn cfg(steps: u64) -> TrainerSection {
    TrainerSection {
        steps,
        batch_size: 4,
        grad_accum: 2,
        lr: 1e-2,
        schedule: ScheduleName::Cosine,
        warmup_steps: 2,
        min_lr_ratio: 0.1,
        max_grad_norm: 1.0,
        eval_every: 5,
        eval_batches: 0,
        seed: 3,
        checkpoint_every: 0,
        keep_checkpoints: 2,
        resume: false,
        progress: false,
        ..TrainerSection::default()
    }
}

#[test]
fn training_a_tiny_model_lowers_the_eval_loss() {
    let _g = serial();
    let dev = Default::default();
    let data = dataset(32, 16);
    let obj = Objective::<B, TinyLm<B>>::causal();
    for manifold in ["unconstrained", "balanced"] {
        let m = model(1, 0.0);
        let (before, _) = evaluate(&m, &obj, &data.valid, 0, 4, 0, &dev);
        let mut st = stepper(manifold);
        let out = train(
            m,
            &mut st,
            &data,
            &cfg(30),
            &RunOptions::default(),
            &obj,
            &dev,
        )
        .unwrap();
        let after = out.final_eval().unwrap().loss;
        // Random init: loss ≈ ln 64 = 4.16. A rank-4 adapter learns much of the map.
        assert!(
            (before - 64f64.ln()).abs() < 0.5,
            "{manifold}: initial loss {before}"
        );
        assert!(
            after < before - 0.5,
            "{manifold}: eval loss {before} -> {after}"
        );
        assert_eq!(out.history.iter().filter(|r| r.kind == "train").count(), 30);
        assert_eq!(out.history.iter().filter(|r| r.kind == "eval").count(), 7); // step 0, 5, …, 30
        assert_eq!(out.history[0].step, 0);
        assert!((out.history[0].loss - before).abs() < 1e-9);
    }
}

/// Masked tokens contribute nothing: the loss equals an independent f64 log-softmax
/// computation over the unmasked positions only.
#[test]
fn masked_labels_contribute_no_loss() {
    let dev = Default::default();
    let (b, s, v) = (2usize, 5usize, 7usize);
    let logits: Vec<f32> = (0..b * s * v)
        .map(|i| ((i * 37 % 23) as f32 - 11.0) / 4.0)
        .collect();
    let ex0 = Example::lm(vec![1, 2, 3, 4, 5], vec![false, false, false, true, true]);
    let ex1 = Example::lm(vec![6, 0, 2], vec![true, true, true]);
    let batch = Batch::collate(&[&ex0, &ex1], 0);
    let t = Tensor::<NdArray, 3>::from_data(TensorData::new(logits.clone(), [b, s, v]), &dev);
    let got = token_nll_sum(t, &batch, &dev);
    // Independent reference: positions predicted and their targets, written out by hand.
    // Row 0 trains tokens 3 (=4) and 4 (=5), predicted from logits at 2 and 3.
    // Row 1 trains tokens 1 (=0) and 2 (=2), predicted from logits at 0 and 1; rest is padding.
    let pairs = [(0usize, 2usize, 4usize), (0, 3, 5), (1, 0, 0), (1, 1, 2)];
    let nll = |row: usize, pos: usize, target: usize| -> f64 {
        let z: Vec<f64> = (0..v)
            .map(|k| logits[(row * s + pos) * v + k] as f64)
            .collect();
        let m = z.iter().cloned().fold(f64::MIN, f64::max);
        let lse = m + z.iter().map(|x| (x - m).exp()).sum::<f64>().ln();
        lse - z[target]
    };
    let want: f64 = pairs.iter().map(|&(r, p, t)| nll(r, p, t)).sum();
    assert_eq!(got.count, 4);
    let got_v = got.sum.into_scalar() as f64;
    assert!((got_v - want).abs() < 1e-4, "{got_v} vs {want}");
    // Changing the logits at masked positions does not change the loss.
    let mut other = logits.clone();
    for k in 0..v {
        other[v + k] += 5.0; // row 0, position 1 (predicts a masked token)
        other[(s + 4) * v + k] -= 3.0; // row 1, position 4 (padding)
    }
    let t2 = Tensor::<NdArray, 3>::from_data(TensorData::new(other, [b, s, v]), &dev);
    let again = token_nll_sum(t2, &batch, &dev).sum.into_scalar() as f64;
    assert!((again - got_v).abs() < 1e-6);
    assert_eq!(batch.labels[1], IGNORE_INDEX);
}

fn train_losses(out: &[balora_train::MetricRecord], kind: &str) -> Vec<(u64, f64)> {
    out.iter()
        .filter(|r| r.kind == kind)
        .map(|r| (r.step, r.loss))
        .collect()
}

/// An interrupted and resumed run reproduces the uninterrupted run's losses exactly (CPU),
/// with dropout, gradient accumulation, clipping, BaLoRA and moment transport all active.
#[test]
fn resume_continues_exactly() {
    let _g = serial();
    let dev = Default::default();
    let data = dataset(24, 12);
    let obj = Objective::<B, TinyLm<B>>::causal();
    let steps = 10;
    let dir_a = tempfile::tempdir().unwrap();
    let dir_b = tempfile::tempdir().unwrap();
    let opts = |d: &std::path::Path, stop: Option<u64>| RunOptions {
        out_dir: Some(d.to_path_buf()),
        method: "balora".into(),
        stop_after: stop,
        ..Default::default()
    };
    let full = train(
        model(5, 0.1),
        &mut stepper("balanced"),
        &data,
        &cfg(steps),
        &opts(dir_a.path(), None),
        &obj,
        &dev,
    )
    .unwrap();
    // First process: stops after step 6 (checkpoint written).
    let first = train(
        model(5, 0.1),
        &mut stepper("balanced"),
        &data,
        &cfg(steps),
        &opts(dir_b.path(), Some(6)),
        &obj,
        &dev,
    )
    .unwrap();
    assert_eq!(
        first.history.iter().filter(|r| r.kind == "train").count(),
        6
    );
    // Second process: a fresh model and optimizer, resumed from the checkpoint.
    let mut c = cfg(steps);
    c.resume = true;
    let second = train(
        model(5, 0.1),
        &mut stepper("balanced"),
        &data,
        &c,
        &opts(dir_b.path(), None),
        &obj,
        &dev,
    )
    .unwrap();
    assert_eq!(second.resumed_from, 6);
    let mut resumed = train_losses(&first.history, "train");
    resumed.extend(train_losses(&second.history, "train"));
    assert_eq!(
        resumed,
        train_losses(&full.history, "train"),
        "train losses differ"
    );
    let mut ev = train_losses(&first.history, "eval");
    ev.extend(train_losses(&second.history, "eval"));
    assert_eq!(ev, train_losses(&full.history, "eval"));
    // The metrics file of the resumed run equals the uninterrupted one's, step by step.
    let read = |d: &std::path::Path| -> Vec<(String, u64, f64)> {
        std::fs::read_to_string(d.join("metrics.jsonl"))
            .unwrap()
            .lines()
            .map(|l| {
                let r: balora_train::MetricRecord = serde_json::from_str(l).unwrap();
                (r.kind, r.step, r.loss)
            })
            .collect()
    };
    assert_eq!(read(dir_a.path()), read(dir_b.path()));
    // Resuming with another method is refused.
    let mut other = opts(dir_b.path(), None);
    other.method = "lora".into();
    let err = train(
        model(5, 0.1),
        &mut stepper("unconstrained"),
        &data,
        &c,
        &other,
        &obj,
        &dev,
    )
    .unwrap_err();
    assert!(err.to_string().contains("balora"), "{err}");
}

#[test]
fn failed_checkpoint_write_leaves_the_previous_one_loadable() {
    let root = tempfile::tempdir().unwrap();
    let ck = |step: u64, v: f32| Checkpoint {
        state: TrainerState {
            step,
            loader: balora_data::LoaderState {
                epoch: 0,
                pos: step as usize,
            },
            seed: 1,
            lr_peak: 1e-3,
            warmup: 0,
            total_steps: 10,
            last_lr: 1e-3,
            tokens: 10 * step,
            elapsed_s: 1.0,
            method: "m".into(),
        },
        params: vec![("l.lora_a".into(), TensorData::new(vec![v; 6], [2, 3]))],
        optimizer: vec![("l.lora_a/m".into(), TensorData::new(vec![v * 2.0; 6], [6]))],
    };
    ck(2, 1.5).save(root.path(), 3).unwrap();
    for fail_after in 0..3 {
        let err = ck(4, 9.0).save_with_fault(root.path(), 3, Some(fail_after));
        assert!(err.is_err());
        let latest = Checkpoint::latest(root.path()).unwrap().unwrap();
        assert_eq!(latest.state.step, 2);
        assert_eq!(latest.params[0].1.to_vec::<f32>().unwrap(), vec![1.5; 6]);
        assert_eq!(latest.optimizer[0].1.to_vec::<f32>().unwrap(), vec![3.0; 6]);
    }
    // A later successful write replaces the leftovers; keep-last-N prunes old ones.
    for s in [4, 6, 8, 10] {
        ck(s, s as f32).save(root.path(), 3).unwrap();
    }
    let steps: Vec<u64> = list_checkpoints(root.path())
        .iter()
        .map(|(s, _)| *s)
        .collect();
    assert_eq!(steps, vec![6, 8, 10]);
    assert_eq!(
        Checkpoint::latest(root.path())
            .unwrap()
            .unwrap()
            .state
            .loader
            .pos,
        10
    );
}
