//! balora's optimizer + manifold hook behind burn's `Optimizer` trait ([`BurnOptimizer`]):
//! burn-train's `Learner` trains bit for bit like balora's own [`TrainStepper`] loop, and the
//! optimizer record resumes bit-exactly (through burn's recorders and through the `Learner`'s
//! own checkpoints).

#[path = "support/learner_lm.rs"]
mod support;

use balora_data::{Batch, Example};
use balora_manifold::{OptionValue, Options};
use balora_train::checkpoint::trainable_params;
use balora_train::{BurnOptimizer, TrainStepper};
use burn::backend::{Autodiff, NdArray};
use burn::data::dataloader::DataLoaderBuilder;
use burn::data::dataset::InMemDataset;
use burn::lr_scheduler::cosine::{CosineAnnealingLrScheduler, CosineAnnealingLrSchedulerConfig};
use burn::lr_scheduler::LrScheduler;
use burn::module::AutodiffModule;
use burn::optim::{GradientsParams, MultiGradientsParams, Optimizer};
use burn::prelude::DeviceOps;
use burn::record::{
    BinBytesRecorder, FullPrecisionSettings, HalfPrecisionSettings, NamedMpkFileRecorder, Recorder,
};
use burn::tensor::TensorData;
use burn_train::checkpoint::KeepLastNCheckpoints;
use burn_train::metric::LossMetric;
use burn_train::{Learner, SupervisedTraining};
use support::{LearnerLm, LmBatcher, Step, StepLog};

/// Trainable parameters by path.
type Params = Vec<(String, TensorData)>;

type B = Autodiff<NdArray>;
type Inner = NdArray;

/// ndarray's RNG (model init) is process-global: tests that build models run one at a time.
static SERIAL: std::sync::Mutex<()> = std::sync::Mutex::new(());

const BATCH: usize = 4;
const TRAIN: usize = 24; // 6 steps per epoch
/// The lr schedule's length: 3 epochs (shorter runs take its first steps).
const SCHEDULE: usize = 3 * TRAIN / BATCH;

fn adamw() -> Options {
    let mut o = Options::default();
    o.0.insert("transport".into(), OptionValue::Bool(true));
    o.0.insert("weight_decay".into(), OptionValue::Float(0.01));
    o
}

fn optimizer() -> BurnOptimizer<B> {
    BurnOptimizer::from_names("adamw", &adamw(), "balanced", &Options::default()).unwrap()
}

/// Cosine from 3e-2 to 3e-3 over all steps: a schedule that changes the lr every step.
fn scheduler(steps: usize) -> CosineAnnealingLrScheduler {
    CosineAnnealingLrSchedulerConfig::new(3e-2, steps)
        .with_min_lr(3e-3)
        .init()
        .unwrap()
}

fn train_data() -> Vec<Example> {
    support::sequences(TRAIN, 12, 0)
}

/// burn-train's `Learner` with a [`BurnOptimizer`], `epochs` epochs over the train data in
/// order; with `checkpoints`, burn-train saves every epoch there (full precision) and, with
/// `resume_from`, starts after that epoch's checkpoint. Returns the trained adapters.
fn learner_run(
    epochs: usize,
    log: &StepLog,
    checkpoints: Option<&std::path::Path>,
    resume_from: Option<usize>,
) -> Params {
    let dev = Default::default();
    let model = LearnerLm::<B>::new(1, log.clone(), &dev);
    let train = DataLoaderBuilder::new(LmBatcher)
        .batch_size(BATCH)
        .build(InMemDataset::new(train_data()));
    let valid = DataLoaderBuilder::<Inner, _, _>::new(LmBatcher)
        .batch_size(BATCH)
        .build(InMemDataset::new(support::sequences(8, 12, 3)));
    let dir = tempfile::tempdir().unwrap();
    let mut training = SupervisedTraining::new(checkpoints.unwrap_or(dir.path()), train, valid)
        .metric_train_numeric(LossMetric::<NdArray>::new())
        .with_application_logger(None)
        .renderer(support::EpochRenderer::default())
        .num_epochs(epochs);
    if checkpoints.is_some() {
        training = training
            .with_file_checkpointer(NamedMpkFileRecorder::<FullPrecisionSettings>::new())
            .with_checkpointing_strategy(KeepLastNCheckpoints::new(10));
    }
    if let Some(epoch) = resume_from {
        training = training.checkpoint(epoch);
    }
    let result = training.launch(Learner::new(model, optimizer(), scheduler(SCHEDULE)));
    trainable_params(&result.model.lm)
}

/// balora's own loop: the same batches in the same order, the same lr per step, the same loss,
/// and [`TrainStepper::step`]. Returns what each step saw and the trained adapters.
fn stepper_run(epochs: usize) -> (Vec<Step>, Params) {
    let dev = Default::default();
    let log = StepLog::default();
    let mut model = LearnerLm::<B>::new(1, log.clone(), &dev);
    let mut stepper =
        TrainStepper::<B>::from_names("adamw", &adamw(), "balanced", &Options::default()).unwrap();
    let mut sched = scheduler(SCHEDULE);
    let data = train_data();
    let mut seen = Vec::new();
    for _ in 0..epochs {
        for chunk in data.chunks(BATCH) {
            let batch = Batch::collate(&chunk.iter().collect::<Vec<_>>(), 0);
            let lr = sched.step();
            let loss = model.loss(&batch);
            seen.push((batch.input_ids.clone(), loss.clone().into_scalar()));
            let grads = GradientsParams::from_grads(loss.backward(), &model);
            model = stepper.step(lr, model, grads).unwrap().0;
        }
    }
    (seen, trainable_params(&model.valid().lm))
}

fn assert_bit_equal(what: &str, a: &[(String, TensorData)], b: &[(String, TensorData)]) {
    assert_eq!(a.len(), b.len(), "{what}: parameter count");
    assert!(!a.is_empty(), "{what}: no trainable parameters");
    for ((na, ta), (nb, tb)) in a.iter().zip(b) {
        assert_eq!(na, nb, "{what}: parameter order");
        assert_eq!(ta.shape, tb.shape, "{what}: {na} shape");
        let (va, vb) = (ta.to_vec::<f32>().unwrap(), tb.to_vec::<f32>().unwrap());
        let diff = va
            .iter()
            .zip(&vb)
            .filter(|(x, y)| x.to_bits() != y.to_bits());
        assert_eq!(diff.count(), 0, "{what}: {na} differs");
    }
}

fn mean(xs: &[Step]) -> f64 {
    xs.iter().map(|(_, l)| f64::from(*l)).sum::<f64>() / xs.len() as f64
}

/// The `Learner` takes the same steps as balora's loop: same batches, losses equal bit for bit
/// at every step, adapters equal bit for bit at the end. Both run the same f32 operations in
/// the same order on one CPU backend, so nothing short of bit equality is expected.
#[test]
fn learner_trains_bit_for_bit_like_the_train_stepper() {
    let _g = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let epochs = 2;
    let log = StepLog::default();
    let learner = learner_run(epochs, &log, None, None);
    let (seen, reference) = stepper_run(epochs);
    let steps = log.steps();
    assert_eq!(steps.len(), epochs * TRAIN / BATCH, "Learner steps");
    assert_eq!(steps.len(), seen.len());
    for (i, ((ids_l, loss_l), (ids_s, loss_s))) in steps.iter().zip(&seen).enumerate() {
        assert_eq!(ids_l, ids_s, "step {i}: the Learner saw another batch");
        assert_eq!(
            loss_l.to_bits(),
            loss_s.to_bits(),
            "step {i}: loss {loss_l} (Learner) vs {loss_s} (TrainStepper)"
        );
    }
    assert_bit_equal("Learner vs TrainStepper", &learner, &reference);
    // It trained: the second epoch's loss is well below the first's (random init: ln 64 = 4.16).
    let (first, second) = steps.split_at(TRAIN / BATCH);
    assert!(
        mean(second) < mean(first) - 0.3,
        "loss {} -> {}",
        mean(first),
        mean(second)
    );
}

fn batches() -> Vec<Batch> {
    train_data()
        .chunks(BATCH)
        .map(|c| Batch::collate(&c.iter().collect::<Vec<_>>(), 0))
        .collect()
}

/// `steps` steps of `optim` from `model` over `batches` (cycled from `start`), lr 1e-2.
fn run(
    optim: &mut BurnOptimizer<B>,
    mut model: LearnerLm<B>,
    start: usize,
    steps: usize,
) -> LearnerLm<B> {
    let data = batches();
    for i in start..start + steps {
        let loss = model.loss(&data[i % data.len()]);
        let grads = GradientsParams::from_grads(loss.backward(), &model);
        model = Optimizer::step(optim, 1e-2, model, grads);
    }
    model
}

/// Step 4 times, save the record through burn's recorders (half precision settings: the state
/// is kept at its own dtype anyway), load it into a fresh optimizer, step 4 more: the adapters
/// equal those of 8 uninterrupted steps bit for bit. Without the record they do not.
#[test]
fn the_record_resumes_bit_exactly() {
    let _g = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let dev = Default::default();
    let model = LearnerLm::<B>::new(2, StepLog::default(), &dev);
    let mut straight = optimizer();
    let uninterrupted = run(&mut straight, model.clone(), 0, 8);

    let mut first = optimizer();
    let half = run(&mut first, model, 0, 4);
    let record = Optimizer::<LearnerLm<B>, B>::to_record(&first);
    assert_eq!(record.step, 4);
    assert!(!record.state.is_empty(), "AdamW keeps moments");
    let recorder = BinBytesRecorder::<HalfPrecisionSettings>::default();
    let bytes = Recorder::<B>::record(&recorder, record.clone(), ()).unwrap();
    let loaded: balora_train::BurnOptimizerRecord =
        Recorder::<B>::load(&recorder, bytes, &dev).unwrap();
    assert_eq!(
        loaded, record,
        "the record survives burn's recorder unchanged"
    );

    let mut resumed = Optimizer::<LearnerLm<B>, B>::load_record(optimizer(), loaded);
    assert_eq!(resumed.steps(), 4);
    let resumed_model = run(&mut resumed, half.clone(), 4, 4);
    assert_eq!(resumed.steps(), 8);
    let expect = trainable_params(&uninterrupted);
    assert_bit_equal("resumed", &trainable_params(&resumed_model), &expect);

    // A clone is a deep copy: stepping it leaves the original's state alone.
    let mut clone = resumed.clone();
    run(&mut clone, resumed_model, 8, 1);
    assert_eq!((clone.steps(), resumed.steps()), (9, 8));

    // The state matters: a fresh optimizer from the same point ends elsewhere.
    let fresh = run(&mut optimizer(), half, 4, 4);
    let same = trainable_params(&fresh)
        .iter()
        .zip(&expect)
        .all(|((_, a), (_, b))| a.to_vec::<f32>().unwrap() == b.to_vec::<f32>().unwrap());
    assert!(
        !same,
        "restarting the optimizer changed nothing: the test could not fail"
    );
}

/// A record of another method (here AdamW + BaLoRA into an SGD stepper built with
/// `BurnOptimizer::new`) is refused with both names.
#[test]
fn a_record_of_another_method_is_refused() {
    let _g = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let record = Optimizer::<LearnerLm<B>, B>::to_record(&optimizer());
    let no = Options::default();
    let sgd = BurnOptimizer::<B>::new(move || {
        TrainStepper::from_names_quiet("sgd", &no, "unconstrained", &no)
    })
    .unwrap();
    assert!(sgd.method().starts_with("sgd + "), "{}", sgd.method());
    let err = sgd.try_load_record(record).err().unwrap().to_string();
    assert!(
        err.contains("adamw + balanced") && err.contains("into `sgd + "),
        "{err}"
    );
}

#[test]
fn the_learner_resumes_from_its_checkpoint_bit_exactly() {
    let _g = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let dir = tempfile::tempdir().unwrap();
    let straight = StepLog::default();
    let uninterrupted = learner_run(3, &straight, None, None);
    learner_run(2, &StepLog::default(), Some(dir.path()), None);
    let resumed_log = StepLog::default();
    let resumed = learner_run(3, &resumed_log, Some(dir.path()), Some(2));
    let (resumed_steps, all) = (resumed_log.steps(), straight.steps());
    assert_eq!(
        resumed_steps.len(),
        TRAIN / BATCH,
        "one epoch after the resume"
    );
    let third: Vec<u32> = all[2 * TRAIN / BATCH..]
        .iter()
        .map(|s| s.1.to_bits())
        .collect();
    let again: Vec<u32> = resumed_steps.iter().map(|s| s.1.to_bits()).collect();
    assert_eq!(again, third, "epoch 3's losses");
    assert_bit_equal("Learner resumed", &resumed, &uninterrupted);
}

/// burn's multi-device entry point on one device: the gradients pass through
/// `MultiGradientsParams` and the step is the same, bit for bit.
#[test]
fn step_multi_on_one_device_is_step() {
    let _g = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let dev: burn::tensor::Device<B> = Default::default();
    let model = LearnerLm::<B>::new(3, StepLog::default(), &dev);
    let (mut single, mut multi) = (optimizer(), optimizer());
    let (mut a, mut b) = (model.clone(), model);
    for batch in batches().iter().take(3) {
        let loss = a.loss(batch);
        let grads = GradientsParams::from_grads(loss.backward(), &a);
        a = Optimizer::step(&mut single, 1e-2, a, grads);
        let loss = b.loss(batch);
        let grads = GradientsParams::from_grads(loss.backward(), &b);
        let grads = MultiGradientsParams {
            grads: vec![(grads, dev.to_id())],
        };
        b = Optimizer::step_multi(&mut multi, 1e-2, b, grads);
    }
    assert_eq!(multi.steps(), 3);
    assert_bit_equal("step_multi", &trainable_params(&b), &trainable_params(&a));
}

/// A diverged step (NaN gradients → non-finite factors) is the hook's error from `try_step`, and
/// a panic naming the optimizer and the step from burn's `step`.
#[test]
fn a_diverged_step_is_an_error_or_a_clear_panic() {
    let _g = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let dev = Default::default();
    let model = LearnerLm::<B>::new(4, StepLog::default(), &dev);
    let batch = &batches()[0];
    let nan_grads = |m: &LearnerLm<B>| {
        GradientsParams::from_grads(m.loss(batch).mul_scalar(f32::NAN).backward(), m)
    };
    let err = optimizer()
        .try_step(1e-2, model.clone(), nan_grads(&model))
        .expect_err("NaN factors are refused")
        .to_string();
    assert!(err.contains("manifold hook at step 1"), "{err}");

    let mut optim = optimizer();
    let grads = nan_grads(&model);
    let panic = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        Optimizer::step(&mut optim, 1e-2, model, grads)
    }))
    .expect_err("burn's step panics");
    let message = panic.downcast_ref::<String>().cloned().unwrap_or_default();
    assert!(
        message.contains("balora optimizer `adamw + balanced")
            && message.contains("manifold hook at step 1"),
        "{message}"
    );
}
