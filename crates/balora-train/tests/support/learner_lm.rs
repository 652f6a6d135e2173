//! The tiny causal LM of `balora_train::tiny` as a burn-train model (`TrainStep` and
//! `InferenceStep`), its data and its loss: shared by `examples/learner.rs` and
//! `tests/learner.rs` (included with `#[path]`, so one definition serves both).

use balora_adapter::LoraConfig;
use balora_data::{Batch, Example};
use balora_train::loss::causal_lm_loss;
use balora_train::tiny::{TinyLm, TinyLmConfig};
use burn::backend::NdArray;
use burn::data::dataloader::batcher::Batcher;
use burn::module::Module;
use burn::tensor::backend::{AutodiffBackend, Backend};
use burn::tensor::{ElementConversion, Tensor};
use burn_train::metric::{Adaptor, LossInput, MetricDefinition, NumericEntry};
use burn_train::renderer::{
    EvaluationName, EvaluationProgress, MetricState, MetricsRenderer, MetricsRendererEvaluation,
    MetricsRendererTraining, ProgressType, TrainingProgress,
};
use burn_train::{InferenceStep, ItemLazy, TrainOutput, TrainStep};
use std::sync::{Arc, Mutex};

/// What each training step saw: its batch's token ids and its loss (as the model computed it,
/// before the optimizer step).
#[derive(Clone, Default)]
pub struct StepLog(pub Arc<Mutex<Vec<Step>>>);

/// One training step: its batch's token ids and its loss.
pub type Step = (Vec<i64>, f32);

/// Short: burn-train prints the model (and so this log) in its summary.
impl std::fmt::Debug for StepLog {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "StepLog({} steps)", self.0.lock().unwrap().len())
    }
}

impl StepLog {
    fn push(&self, ids: Vec<i64>, loss: f32) {
        self.0.lock().unwrap().push((ids, loss));
    }

    /// The steps logged so far.
    pub fn steps(&self) -> Vec<Step> {
        self.0.lock().unwrap().clone()
    }
}

/// [`TinyLm`] with a step log, for burn-train's `Learner`.
#[derive(Module, Debug)]
pub struct LearnerLm<B: Backend> {
    /// The model.
    pub lm: TinyLm<B>,
    #[module(skip)]
    log: StepLog,
}

impl<B: Backend> LearnerLm<B> {
    /// The tiny LM (vocabulary 64, hidden 32, one block) with random frozen weights drawn after
    /// seeding the backend with `seed`, and rank-4 adapters on q, v, up and down.
    pub fn new(seed: u64, log: StepLog, device: &B::Device) -> Self {
        B::seed(device, seed);
        let lora = LoraConfig {
            r: 4,
            alpha: 8.0,
            ..Default::default()
        }
        .resolve("q_proj")
        .expect("a valid LoRA config");
        let targets = ["q_proj", "v_proj", "up_proj", "down_proj"];
        let lm = TinyLm::new(TinyLmConfig::default(), &lora, &targets, device);
        Self { lm, log }
    }

    /// Mean next-token cross-entropy of `batch` (balora's loss: summed NLL over the target
    /// tokens, divided by their count).
    pub fn loss(&self, batch: &Batch) -> Tensor<B, 1> {
        let device = self.devices().into_iter().next().unwrap_or_default();
        let l = causal_lm_loss(&self.lm, batch, &device);
        l.sum.div_scalar(l.count as f64)
    }
}

/// A step's output: its loss.
pub struct LmOutput<B: Backend> {
    /// Mean loss, shape `[1]`.
    pub loss: Tensor<B, 1>,
}

impl<B: Backend> ItemLazy for LmOutput<B> {
    type ItemSync = LmOutput<NdArray>;

    fn sync(self) -> LmOutput<NdArray> {
        LmOutput {
            loss: Tensor::from_data(self.loss.into_data(), &Default::default()),
        }
    }
}

impl Adaptor<LossInput<NdArray>> for LmOutput<NdArray> {
    fn adapt(&self) -> LossInput<NdArray> {
        LossInput::new(self.loss.clone())
    }
}

impl<B: AutodiffBackend> TrainStep for LearnerLm<B> {
    type Input = Batch;
    type Output = LmOutput<B>;

    fn step(&self, batch: Batch) -> TrainOutput<LmOutput<B>> {
        let loss = self.loss(&batch);
        let value = loss.clone().into_scalar().elem::<f32>();
        self.log.push(batch.input_ids.clone(), value);
        let grads = loss.backward();
        TrainOutput::new(self, grads, LmOutput { loss })
    }
}

impl<B: Backend> InferenceStep for LearnerLm<B> {
    type Input = Batch;
    type Output = LmOutput<B>;

    fn step(&self, batch: Batch) -> LmOutput<B> {
        LmOutput {
            loss: self.loss(&batch),
        }
    }
}

/// Pads examples into a host [`Batch`] (padding id 0).
#[derive(Debug, Clone, Copy)]
pub struct LmBatcher;

impl<B: Backend> Batcher<B, Example, Batch> for LmBatcher {
    fn batch(&self, items: Vec<Example>, _device: &B::Device) -> Batch {
        let refs: Vec<&Example> = items.iter().collect();
        Batch::collate(&refs, 0)
    }
}

/// `n` sequences of `seq` tokens following `x_{t+1} = (3·x_t + 1) mod 64` from start `i·7 + offset`:
/// learnable from the previous token.
pub fn sequences(n: usize, seq: usize, offset: u32) -> Vec<Example> {
    (0..n as u32)
        .map(|i| {
            let mut ids = vec![(i * 7 + offset) % 64];
            for _ in 1..seq {
                let last = *ids.last().unwrap();
                ids.push((3 * last + 1) % 64);
            }
            Example::lm(ids, vec![true; seq])
        })
        .collect()
}

/// A burn-train renderer that prints one line per epoch and split: the mean of the numeric
/// metric values it was given (here the loss), instead of the plain renderer's line per batch.
#[derive(Debug, Default)]
pub struct EpochRenderer {
    train: (f64, usize),
    valid: (f64, usize),
}

fn add(acc: &mut (f64, usize), state: MetricState) {
    let v = match state {
        MetricState::Numeric(_, NumericEntry::Value(v)) => v,
        MetricState::Numeric(
            _,
            NumericEntry::Aggregated {
                aggregated_value, ..
            },
        ) => aggregated_value,
        MetricState::Generic(_) => return,
    };
    *acc = (acc.0 + v, acc.1 + 1);
}

fn epoch_line(split: &str, acc: &mut (f64, usize), item: &TrainingProgress) {
    let done = item
        .progress
        .as_ref()
        .is_some_and(|p| p.items_processed >= p.items_total);
    if done && acc.1 > 0 {
        let g = &item.global_progress;
        let mean = acc.0 / acc.1 as f64;
        println!(
            "epoch {}/{} {split}: mean loss {mean:.4} over {} batches",
            g.items_processed, g.items_total, acc.1
        );
        *acc = (0.0, 0);
    }
}

impl MetricsRendererTraining for EpochRenderer {
    fn update_train(&mut self, state: MetricState) {
        add(&mut self.train, state);
    }

    fn update_valid(&mut self, state: MetricState) {
        add(&mut self.valid, state);
    }

    fn render_train(&mut self, item: TrainingProgress, _: Vec<ProgressType>) {
        epoch_line("train", &mut self.train, &item);
    }

    fn render_valid(&mut self, item: TrainingProgress, _: Vec<ProgressType>) {
        epoch_line("valid", &mut self.valid, &item);
    }
}

impl MetricsRendererEvaluation for EpochRenderer {
    fn update_test(&mut self, _: EvaluationName, _: MetricState) {}

    fn render_test(&mut self, _: EvaluationProgress, _: Vec<ProgressType>) {}
}

impl MetricsRenderer for EpochRenderer {
    fn manual_close(&mut self) {}

    fn register_metric(&mut self, _: MetricDefinition) {}
}
