//! The fine-tuning loop: micro-batches → accumulated gradients → clipping → [`TrainStepper`]
//! (optimizer step, then the manifold hook) → metrics, evaluation, checkpoints.

use crate::checkpoint::{
    checkpoint_dir, load_trainable_params, trainable_params, Checkpoint, TrainerState,
};
use crate::diagnostics::Snapshot;
use crate::distributed as dist;
use crate::grads::clip_grad_norm;
use crate::loss::BatchLoss;
use crate::runstate::{MetricsFile, Progress};
use crate::schedule::LrSchedule;
use crate::{TrainError, TrainStepper};
use balora_config::TrainerSection;
use balora_data::{Batch, Dataset, Example, Loader};
use balora_models::{CausalLm, SequenceClassifier};
use burn::module::AutodiffModule;
use burn::tensor::backend::AutodiffBackend;
use serde::{Deserialize, Serialize};
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Instant;

/// Device of backend `B`.
pub type Device<B> = burn::tensor::Device<B>;

/// The evaluation loss function of an [`Objective`] (inner backend, inner module).
pub type ValidLossFn<B, M> = fn(
    &<M as AutodiffModule<B>>::InnerModule,
    &Batch,
    &Device<<B as AutodiffBackend>::InnerBackend>,
) -> BatchLoss<<B as AutodiffBackend>::InnerBackend>;

/// How to compute a batch's loss, for training (autodiff) and evaluation (inner backend).
pub struct Objective<B: AutodiffBackend, M: AutodiffModule<B>> {
    /// Training loss.
    pub train: fn(&M, &Batch, &Device<B>) -> BatchLoss<B>,
    /// Evaluation loss on the inner model (no graph, no dropout).
    pub valid: ValidLossFn<B, M>,
    /// Whether evaluation reports accuracy.
    pub classification: bool,
}

impl<B: AutodiffBackend, M: AutodiffModule<B> + CausalLm<B>> Objective<B, M>
where
    M::InnerModule: CausalLm<B::InnerBackend>,
{
    /// Next-token cross-entropy on unmasked labels.
    pub fn causal() -> Self {
        Self {
            train: crate::loss::causal_lm_loss::<B, M>,
            valid: crate::loss::causal_lm_loss::<B::InnerBackend, M::InnerModule>,
            classification: false,
        }
    }
}

impl<B: AutodiffBackend, M: AutodiffModule<B> + SequenceClassifier<B>> Objective<B, M>
where
    M::InnerModule: SequenceClassifier<B::InnerBackend>,
{
    /// Cross-entropy over classes; evaluation adds accuracy.
    pub fn classifier() -> Self {
        Self {
            train: crate::loss::classification_loss::<B, M>,
            valid: crate::loss::classification_loss::<B::InnerBackend, M::InnerModule>,
            classification: true,
        }
    }
}

/// One line of `metrics.jsonl`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct MetricRecord {
    /// `train` or `eval`.
    pub kind: String,
    /// Optimizer step.
    pub step: u64,
    /// Mean loss (per token, or per row for classification).
    pub loss: f64,
    /// Learning rate (train).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub lr: Option<f64>,
    /// exp(loss) (eval, causal LM).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub perplexity: Option<f64>,
    /// Accuracy (eval, classification).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub accuracy: Option<f64>,
    /// Global gradient norm before clipping (train).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub grad_norm: Option<f64>,
    /// Seconds of this step (train).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub step_s: Option<f64>,
    /// Seconds of the manifold hook in this step (train).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub hook_s: Option<f64>,
    /// Adapters balanced only on their active rank at this step (train, when the manifold ran).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rank_deficient: Option<usize>,
    /// Adapters left unbalanced because `B·A = 0` at this step (train, when the manifold ran).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub zero_product: Option<usize>,
    /// Median balance gap of the adapters (eval; see [`crate::diagnostics`]).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub balance_gap: Option<f64>,
    /// Median log10 of the adapters' condition number κ (eval).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub log10_kappa: Option<f64>,
    /// Median relative change of A in the step before this evaluation (eval).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub step_a: Option<f64>,
    /// Median relative change of B in the step before this evaluation (eval).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub step_b: Option<f64>,
    /// Median ‖B‖/‖A‖ of the adapters (eval).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub b_over_a: Option<f64>,
    /// Tokens trained on so far.
    pub tokens: u64,
    /// Training seconds so far (evaluation excluded).
    pub elapsed_s: f64,
}

/// Options of one [`train`] call besides the config section.
#[derive(Debug, Clone, Default)]
pub struct RunOptions {
    /// Run directory: `metrics.jsonl` and `checkpoints/` go here (none: nothing is written).
    pub out_dir: Option<PathBuf>,
    /// Method label stored in checkpoints (resume refuses another method).
    pub method: String,
    /// Stop (with a checkpoint) after this step although the schedule runs to `steps`
    /// (an interruption; used by tests and time budgets).
    pub stop_after: Option<u64>,
    /// Checked between steps: once set (e.g. by a SIGINT/SIGTERM handler), the run writes a
    /// checkpoint of the last finished step and returns with [`TrainOutcome::interrupted`].
    pub stop: Option<&'static AtomicBool>,
    /// Resume although the checkpoint's method, steps, lr, warmup or seed differ from this run's.
    pub allow_config_change: bool,
    /// The ranks of a data-parallel job (none, or one rank: a plain run); rank 0 alone writes
    /// metrics and checkpoints. See [`crate::distributed`] and docs/distributed.md.
    pub collective: Option<std::sync::Arc<dyn balora_collective::Collective>>,
    /// What a data-parallel run does when the ranks' fingerprints differ (an error by default;
    /// rank 0's state re-sent with a warning on GPU backends).
    pub on_mismatch: dist::Mismatch,
}

/// What a run produced.
#[derive(Debug)]
pub struct TrainOutcome<M> {
    /// The trained model.
    pub model: M,
    /// All metric records of this process (train and eval), in order.
    pub history: Vec<MetricRecord>,
    /// Step the run started from (0, or the resumed checkpoint's step).
    pub resumed_from: u64,
    /// Training seconds (evaluation excluded).
    pub train_s: f64,
    /// Seconds spent in the manifold hook.
    pub hook_s: f64,
    /// Tokens trained on.
    pub tokens: u64,
    /// Set when [`RunOptions::stop`] ended the run early: the step of the checkpoint written.
    pub interrupted: Option<u64>,
}

impl<M> TrainOutcome<M> {
    /// The last evaluation record.
    pub fn final_eval(&self) -> Option<&MetricRecord> {
        self.history.iter().rev().find(|r| r.kind == "eval")
    }
}

/// The mean evaluation loss (and accuracy) of `model` on `examples`.
pub fn evaluate<B: AutodiffBackend, M: AutodiffModule<B>>(
    model: &M,
    objective: &Objective<B, M>,
    examples: &[Example],
    pad_id: u32,
    batch_size: usize,
    max_batches: usize,
    device: &Device<B>,
) -> (f64, Option<f64>) {
    let inner = model.valid();
    let mut sum = 0.0;
    let mut count = 0usize;
    let mut correct = 0usize;
    let mut rows = 0usize;
    for (i, chunk) in examples.chunks(batch_size.max(1)).enumerate() {
        if max_batches > 0 && i >= max_batches {
            break;
        }
        let batch = Batch::collate(&chunk.iter().collect::<Vec<_>>(), pad_id);
        let out = (objective.valid)(&inner, &batch, device);
        sum += out.sum.into_scalar().elem::<f64>();
        count += out.count;
        if let Some(pred) = out.predictions {
            let p: Vec<i64> = pred
                .into_data()
                .convert::<i64>()
                .to_vec()
                .unwrap_or_default();
            correct += p.iter().zip(&batch.labels).filter(|(a, b)| a == b).count();
            rows += batch.batch;
        }
    }
    let acc = (objective.classification && rows > 0).then(|| correct as f64 / rows as f64);
    (sum / count.max(1) as f64, acc)
}

use burn::tensor::ElementConversion;

/// Trains `model` with `stepper` on `data` per `cfg`: gradient accumulation, global-norm
/// clipping, the lr schedule, evaluation every `eval_every` steps and at the end, metrics,
/// checkpoints every `checkpoint_every` steps, at the end and when [`RunOptions::stop`] is set,
/// and resume from the newest intact checkpoint when `cfg.resume` (continuing exactly: same data
/// order, dropout seeds, optimizer state and schedule). With an output folder, a fresh run refuses
/// existing checkpoints, and `cfg.resume` without an intact checkpoint, or with another method,
/// steps, lr, warmup or seed (unless [`RunOptions::allow_config_change`]), is an error.
/// With a [`RunOptions::collective`] of several ranks, an error on any rank aborts the job.
pub fn train<B, M>(
    model: M,
    stepper: &mut TrainStepper<B>,
    data: &Dataset,
    cfg: &TrainerSection,
    opts: &RunOptions,
    objective: &Objective<B, M>,
    device: &Device<B>,
) -> Result<TrainOutcome<M>, TrainError>
where
    B: AutodiffBackend,
    M: AutodiffModule<B>,
{
    let r = run(model, stepper, data, cfg, opts, objective, device);
    dist::abort_on_error(dist::multi(&opts.collective), r)
}

fn run<B: AutodiffBackend, M: AutodiffModule<B>>(
    mut model: M,
    stepper: &mut TrainStepper<B>,
    data: &Dataset,
    cfg: &TrainerSection,
    opts: &RunOptions,
    objective: &Objective<B, M>,
    device: &Device<B>,
) -> Result<TrainOutcome<M>, TrainError> {
    let d = dist::multi(&opts.collective);
    let writer = d.is_none_or(|c| c.rank() == 0);
    if data.train.is_empty() {
        return Err(TrainError::Data("the training set is empty".into()));
    }
    let schedule = LrSchedule {
        kind: cfg.schedule,
        peak: cfg.lr,
        warmup: cfg.warmup_steps,
        total: cfg.steps,
        min_ratio: cfg.min_lr_ratio,
    };
    let mut loader = Loader::new(data.train.len(), cfg.batch_size, cfg.seed);
    let ckpt_root = opts.out_dir.as_ref().map(|d| d.join("checkpoints"));
    let mut start = 0u64;
    let mut tokens = 0u64;
    let mut elapsed0 = 0.0;
    if cfg.resume && ckpt_root.is_none() {
        return Err(TrainError::Data(
            "trainer.resume = true needs a run folder (RunOptions::out_dir)".into(),
        ));
    }
    if let Some(root) = &ckpt_root {
        let prepared = match d {
            Some(c) => dist::resume_point(c, root, cfg, &opts.method, opts.allow_config_change)?,
            None => crate::runstate::prepare(root, cfg, &opts.method, opts.allow_config_change)?,
        };
        if let Some(r) = prepared {
            let ck = r.checkpoint;
            model = load_trainable_params(model, &ck.params, &r.dir)?;
            stepper
                .driver_mut()
                .inner
                .load_state(ck.optimizer, device)?;
            stepper.set_steps(ck.state.step);
            loader.restore(ck.state.loader);
            start = ck.state.step;
            tokens = ck.state.tokens;
            elapsed0 = ck.state.elapsed_s;
            tracing::info!(step = start, "resumed from {}", r.dir.display());
        }
    }
    let out_dir = opts.out_dir.as_deref().filter(|_| writer);
    let mut metrics = MetricsFile::open(out_dir, cfg.resume.then_some(start))?;
    let end = opts.stop_after.map_or(cfg.steps, |s| s.min(cfg.steps));
    let mut progress = Progress::new(cfg.steps, start, cfg.progress && writer);
    let pb = progress.bar.clone();
    let mut interrupted = None;
    let mut history = Vec::new();
    let mut train_s = 0.0;
    let mut hook_s = 0.0;
    let mut last_lr = 0.0;
    let clock = Instant::now();
    let save = |model: &M,
                stepper: &mut TrainStepper<B>,
                step: u64,
                loader: &Loader,
                tokens: u64,
                elapsed: f64,
                lr: f64|
     -> Result<(), TrainError> {
        if let Some(root) = ckpt_root.as_ref().filter(|_| writer) {
            let ck = Checkpoint {
                state: TrainerState {
                    step,
                    loader: loader.state(),
                    seed: cfg.seed,
                    lr_peak: cfg.lr,
                    warmup: cfg.warmup_steps,
                    total_steps: cfg.steps,
                    last_lr: lr,
                    tokens,
                    elapsed_s: elapsed,
                    method: opts.method.clone(),
                },
                params: trainable_params(model),
                optimizer: stepper.driver_mut().inner.state(),
            };
            let dir = ck.save(root, cfg.keep_checkpoints)?;
            tracing::debug!("checkpoint {}", dir.display());
        }
        Ok(())
    };
    let eval_now = |model: &M,
                    step: u64,
                    tokens: u64,
                    elapsed: f64,
                    before: Option<&Snapshot>|
     -> Result<Option<MetricRecord>, TrainError> {
        if data.valid.is_empty() {
            return Ok(None);
        }
        let diag = crate::diagnostics::stats(before, &crate::diagnostics::snapshot(model));
        let (loss, acc) = dist::evaluate_world(
            d,
            model,
            objective,
            &data.valid,
            data.pad_id,
            cfg.batch_size,
            cfg.eval_batches,
            device,
        )?;
        pb.suspend(|| match acc {
            Some(a) => tracing::info!(step, "eval loss {loss:.4}  accuracy {a:.3}"),
            None => tracing::info!(step, "eval loss {loss:.4}  perplexity {:.2}", loss.exp()),
        });
        Ok(Some(MetricRecord {
            kind: "eval".into(),
            step,
            loss,
            lr: None,
            perplexity: (!objective.classification).then(|| loss.exp()),
            accuracy: acc,
            grad_norm: None,
            step_s: None,
            hook_s: None,
            rank_deficient: None,
            zero_product: None,
            balance_gap: diag.balance_gap,
            log10_kappa: diag.log10_kappa,
            step_a: diag.step_a,
            step_b: diag.step_b,
            b_over_a: diag.b_over_a,
            tokens,
            elapsed_s: elapsed,
        }))
    };
    let eval_at = |step: u64| {
        (cfg.eval_every > 0 && step.is_multiple_of(cfg.eval_every)) || step == cfg.steps
    };
    if start == 0 && cfg.eval_every > 0 {
        if let Some(rec) = eval_now(&model, 0, 0, 0.0, None)? {
            metrics.write(&rec);
            history.push(rec);
        }
    }
    for step in start + 1..=end {
        if dist::any(d, opts.stop.is_some_and(|f| f.load(Ordering::SeqCst)))? {
            let done = step - 1;
            let have = ckpt_root.as_ref().is_some_and(|r| {
                checkpoint_dir(r, done)
                    .join(crate::checkpoint::MANIFEST)
                    .exists()
            });
            if !have {
                save(
                    &model,
                    stepper,
                    done,
                    &loader,
                    tokens,
                    elapsed0 + train_s,
                    last_lr,
                )?;
            }
            interrupted = Some(done);
            break;
        }
        let t0 = Instant::now();
        let lr = schedule.lr(step);
        last_lr = lr;
        // Dropout masks depend only on (seed, step, micro-batch): resumable without saving
        // backend RNG state, and the same on whichever rank a micro-batch runs.
        let sg = dist::step_grads(&model, objective, data, &mut loader, cfg, step, d, device)?;
        let (mut grads, loss_sum) = (sg.grads, sg.loss_sum);
        if !loss_sum.is_finite() {
            return Err(TrainError::Data(format!(
                "non-finite training loss at step {step} (lr {lr:.3e}); lower trainer.lr"
            )));
        }
        let grad_norm = clip_grad_norm(&model, &mut grads, cfg.max_grad_norm);
        // Factors before the step, for the step sizes recorded with the evaluation (host copy,
        // outside the step's timing).
        let before = (eval_at(step) && !data.valid.is_empty()).then(|| {
            let t = Instant::now();
            let s = crate::diagnostics::snapshot(&model);
            (s, t.elapsed())
        });
        let t0 = before.as_ref().map_or(t0, |(_, d)| t0 + *d);
        let before = before.map(|(s, _)| s);
        let (m, report) = stepper.step(lr, model, grads)?;
        model = m;
        let step_s = t0.elapsed().as_secs_f64();
        train_s += step_s;
        hook_s += report.hook_s;
        tokens += sg.real_tokens as u64;
        let rec = MetricRecord {
            kind: "train".into(),
            step,
            loss: loss_sum,
            lr: Some(lr),
            perplexity: None,
            accuracy: None,
            grad_norm: Some(grad_norm),
            step_s: Some(step_s),
            hook_s: Some(report.hook_s),
            rank_deficient: report.rank_deficient(),
            zero_product: report.zero_product(),
            balance_gap: None,
            log10_kappa: None,
            step_a: None,
            step_b: None,
            b_over_a: None,
            tokens,
            elapsed_s: elapsed0 + train_s,
        };
        metrics.write(&rec);
        history.push(rec);
        progress.step(
            step,
            format!(
                "loss {loss_sum:.4}  lr {lr:.2e}  {:.0} tok/s",
                tokens as f64 / (elapsed0 + train_s).max(1e-9)
            ),
            train_s,
            step - start,
        );
        let last = step == cfg.steps;
        if eval_at(step) {
            if let Some(rec) = eval_now(&model, step, tokens, elapsed0 + train_s, before.as_ref())?
            {
                metrics.write(&rec);
                history.push(rec);
            }
        }
        if let Some(c) = d.filter(|_| step % dist::FINGERPRINT_EVERY == 0 || step == end) {
            dist::check_fingerprint(c, &mut model, stepper, step, opts.on_mismatch, device)?;
        }
        if (cfg.checkpoint_every > 0 && step % cfg.checkpoint_every == 0)
            || last
            || Some(step) == opts.stop_after
        {
            save(
                &model,
                stepper,
                step,
                &loader,
                tokens,
                elapsed0 + train_s,
                lr,
            )?;
        }
    }
    pb.finish_and_clear();
    tracing::debug!(
        wall = clock.elapsed().as_secs_f64(),
        train_s,
        hook_s,
        last_lr,
        "training finished"
    );
    Ok(TrainOutcome {
        model,
        history,
        resumed_from: start,
        train_s,
        hook_s,
        tokens,
        interrupted,
    })
}
