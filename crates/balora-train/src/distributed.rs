//! Data-parallel training over a [`Collective`] (MPI ranks), bit-exact to gradient accumulation.
//!
//! A step of a job of `W` ranks with `trainer.grad_accum = g` is the step of one process with
//! `grad_accum = g·W`: every rank draws the same `g·W` micro-batches from its (identical) loader
//! and computes those with global index `j ≡ rank (mod W)`; the loss denominator is the loss-token
//! count of all `g·W` micro-batches; the gradients are summed over ranks in the order one process
//! accumulates them (`((g₀ + g₁) + g₂) + …`), so every rank ends the step with the single
//! process's gradients, bit for bit. Clipping, the optimizer and the manifold hook then run
//! unchanged on every rank, which therefore hold identical adapters and optimizer states (checked
//! by a periodic fingerprint; see [`Mismatch`] for what a difference does). Gradients are flattened in module-path order ([`GradLayout`]),
//! never in `ParamId` order: ids are random per process.
//!
//! The sum of two terms is commutative in IEEE arithmetic, so with `g·W = 2` one all-reduce of the
//! gradients is exact. Otherwise each rank puts its micro-batches' gradients into their slots of a
//! `g·W`-slot buffer (`-0.0`, the exact additive identity, elsewhere), one all-reduce fills every
//! slot on every rank, and each rank folds the slots in order: exact for any `W` and `g`, at
//! `g·W/2` times the traffic of a plain all-reduce (adapters are small; see docs/distributed.md).

use crate::checkpoint::Checkpoint;
use crate::loss::BatchLoss;
use crate::runstate::Resumed;
use crate::trainer::{evaluate, Device, Objective};
use crate::TrainError;
use balora_adapter::collect_params;
use balora_collective::{Collective, CollectiveError};
use balora_config::TrainerSection;
use balora_data::{Batch, Dataset, Example, Loader};
use burn::module::{AutodiffModule, Module, ParamId};
use burn::optim::{GradientsAccumulator, GradientsParams};
use burn::tensor::backend::{AutodiffBackend, Backend};
use burn::tensor::{ElementConversion, Tensor, TensorData};
use std::path::{Path, PathBuf};
use std::sync::Arc;

mod fingerprint;
pub(crate) use fingerprint::check_fingerprint;
pub use fingerprint::{fingerprint, Mismatch, ON_MISMATCH_ENV, PERTURB_ENV};

/// The adapters and optimizer states of all ranks are compared every this many steps (and at the
/// end of a run); on a difference, [`Mismatch`] says what happens.
pub const FINGERPRINT_EVERY: u64 = 10;

/// Test hook: `BALORA_FUZZ_FAULT_EXIT=<rank>:<step>` makes that rank exit with status 1 at the start of
/// that step, in the middle of the job (to test that the launcher then ends the job).
pub const FAULT_ENV: &str = "BALORA_FUZZ_FAULT_EXIT";

impl From<CollectiveError> for TrainError {
    fn from(e: CollectiveError) -> Self {
        TrainError::Data(format!("distributed: {e}"))
    }
}

/// The trainable parameters of a module (adapter factors, `modules_to_save`) in module-path
/// order: the layout of the flat gradient buffer that ranks reduce.
pub struct GradLayout<D> {
    entries: Vec<Entry<D>>,
    len: usize,
}

struct Entry<D> {
    path: String,
    id: ParamId,
    shape: Vec<usize>,
    offset: usize,
    device: D,
}

impl<D: Clone> GradLayout<D> {
    /// The layout of `module`'s trainable parameters, sorted by module path.
    pub fn new<B: Backend<Device = D>, M: Module<B>>(module: &M) -> Self {
        let t = collect_params(module);
        let mut raw: Vec<(String, ParamId, Vec<usize>, D)> = Vec::new();
        for p in &t.pairs {
            let dev = p.a.device();
            raw.push((
                format!("{}.lora_a", p.key),
                p.a_id,
                p.a.dims().to_vec(),
                dev.clone(),
            ));
            raw.push((
                format!("{}.lora_b", p.key),
                p.b_id,
                p.b.dims().to_vec(),
                dev,
            ));
        }
        for s in t.singles.iter().filter(|s| s.trainable) {
            raw.push((s.path.clone(), s.id, s.shape.clone(), s.value.device()));
        }
        raw.sort_by(|a, b| a.0.cmp(&b.0));
        let mut len = 0;
        let entries = raw
            .into_iter()
            .map(|(path, id, shape, device)| {
                let offset = len;
                len += shape.iter().product::<usize>();
                Entry {
                    path,
                    id,
                    shape,
                    offset,
                    device,
                }
            })
            .collect();
        Self { entries, len }
    }

    /// The parameters' module paths, in buffer order.
    pub fn paths(&self) -> Vec<&str> {
        self.entries.iter().map(|e| e.path.as_str()).collect()
    }

    /// Number of gradient elements (the flags follow them in a flat buffer).
    pub fn values_len(&self) -> usize {
        self.len
    }

    /// Length of a flat buffer: every element, then one presence flag per parameter.
    pub fn buffer_len(&self) -> usize {
        self.len + self.entries.len()
    }

    /// The gradients in `grads` as one flat buffer (`-0.0` and flag `0` for a parameter
    /// without a gradient, flag `1` otherwise).
    pub fn flatten<B: Backend<Device = D>>(&self, grads: &GradientsParams) -> Vec<f32> {
        let mut buf = vec![-0.0f32; self.buffer_len()];
        for (k, e) in self.entries.iter().enumerate() {
            let data = match e.shape.len() {
                1 => grads.get::<B, 1>(e.id).map(Tensor::into_data),
                2 => grads.get::<B, 2>(e.id).map(Tensor::into_data),
                3 => grads.get::<B, 3>(e.id).map(Tensor::into_data),
                4 => grads.get::<B, 4>(e.id).map(Tensor::into_data),
                _ => None,
            };
            if let Some(d) = data {
                let v = d.convert::<f32>().to_vec::<f32>().unwrap_or_default();
                let n: usize = e.shape.iter().product();
                buf[e.offset..e.offset + n].copy_from_slice(&v[..n]);
                buf[self.len + k] = 1.0;
            }
        }
        buf
    }

    /// Gradients from a flat buffer: each flagged parameter gets its values (others none).
    pub fn unflatten<B: Backend<Device = D>>(&self, buf: &[f32]) -> GradientsParams {
        let mut grads = GradientsParams::new();
        for (k, e) in self.entries.iter().enumerate() {
            if buf[self.len + k] <= 0.0 {
                continue;
            }
            let n: usize = e.shape.iter().product();
            let data = TensorData::new(buf[e.offset..e.offset + n].to_vec(), e.shape.clone());
            match e.shape.len() {
                1 => grads.register(e.id, Tensor::<B, 1>::from_data(data, &e.device)),
                2 => grads.register(e.id, Tensor::<B, 2>::from_data(data, &e.device)),
                3 => grads.register(e.id, Tensor::<B, 3>::from_data(data, &e.device)),
                4 => grads.register(e.id, Tensor::<B, 4>::from_data(data, &e.device)),
                _ => {}
            }
        }
        grads
    }

    /// Folds `slots` flat buffers in order as gradient accumulation does: per parameter, the
    /// first present slot, plus each later present slot (f32 additions, left to right).
    pub fn fold(&self, slots: &[f32]) -> Vec<f32> {
        let w = self.buffer_len();
        let mut out = vec![-0.0f32; w];
        for slot in slots.chunks_exact(w) {
            for (k, e) in self.entries.iter().enumerate() {
                if slot[self.len + k] <= 0.0 {
                    continue;
                }
                let n: usize = e.shape.iter().product();
                let first = out[self.len + k] <= 0.0;
                out[self.len + k] = 1.0;
                let (dst, src) = (
                    &mut out[e.offset..e.offset + n],
                    &slot[e.offset..e.offset + n],
                );
                if first {
                    dst.copy_from_slice(src);
                } else {
                    dst.iter_mut().zip(src).for_each(|(d, s)| *d += *s);
                }
            }
        }
        out
    }
}

/// The collective of a run when it has more than one rank.
pub(crate) fn multi(c: &Option<Arc<dyn Collective>>) -> Option<&dyn Collective> {
    c.as_deref().filter(|c| c.world_size() > 1)
}

/// What the micro-batches of one step produced (on every rank: the world's values).
pub(crate) struct StepGrads {
    pub(crate) grads: GradientsParams,
    /// Sum of the micro-batches' losses, each divided by the global loss-token count.
    pub(crate) loss_sum: f64,
    /// Non-padding tokens of all the step's micro-batches.
    pub(crate) real_tokens: usize,
}

/// Draws the step's micro-batches, runs forward and backward on this rank's share and returns
/// the world's gradients (see the module docs). Dropout is seeded per global micro-batch `j`
/// from `(seed, step, j)`, so a micro-batch sees the same masks on whichever rank it runs.
#[allow(clippy::too_many_arguments)]
pub(crate) fn step_grads<B: AutodiffBackend, M: AutodiffModule<B>>(
    model: &M,
    objective: &Objective<B, M>,
    data: &Dataset,
    loader: &mut Loader,
    cfg: &TrainerSection,
    step: u64,
    dist: Option<&dyn Collective>,
    device: &Device<B>,
) -> Result<StepGrads, TrainError> {
    let (rank, world) = dist.map_or((0, 1), |c| (c.rank(), c.world_size()));
    fault_hook(rank, step);
    let n = cfg.grad_accum * world;
    let mine: Vec<(usize, Batch)> = (0..n)
        .filter_map(|j| {
            let idx = loader.next_indices();
            (j % world == rank).then(|| {
                let rows: Vec<&Example> = idx.iter().map(|&i| &data.train[i]).collect();
                (j, Batch::collate(&rows, data.pad_id))
            })
        })
        .collect();
    let mut counts = [
        mine.iter().map(|(_, b)| b.loss_tokens()).sum::<usize>() as f64,
        mine.iter().map(|(_, b)| b.real_tokens()).sum::<usize>() as f64,
    ];
    if let Some(c) = dist {
        c.all_reduce_sum_f64(&mut counts)?;
    }
    let denom = counts[0].max(1.0);
    let base_seed = cfg.seed.wrapping_mul(0x2545_F491_4F6C_DD1D) ^ step;
    let mut losses = vec![-0.0f64; n];
    let mut run = |j: usize, mb: &Batch| {
        B::seed(
            device,
            base_seed ^ (j as u64).wrapping_mul(0x9E37_79B9_7F4A_7C15),
        );
        let out = (objective.train)(model, mb, device);
        let loss = out.sum.div_scalar(denom);
        losses[j] = loss.clone().into_scalar().elem::<f64>();
        GradientsParams::from_grads(loss.backward(), model)
    };
    let grads = match dist {
        None if mine.len() == 1 => run(mine[0].0, &mine[0].1),
        None => {
            let mut acc = GradientsAccumulator::<M>::new();
            for (j, mb) in &mine {
                acc.accumulate(model, run(*j, mb));
            }
            acc.grads()
        }
        Some(c) => {
            let layout = GradLayout::new(model);
            let w = layout.buffer_len();
            let locals: Vec<(usize, Vec<f32>)> = mine
                .iter()
                .map(|(j, mb)| (*j, layout.flatten::<B::InnerBackend>(&run(*j, mb))))
                .collect();
            let summed = if n == 2 {
                let mut buf = locals
                    .into_iter()
                    .next()
                    .map(|(_, b)| b)
                    .unwrap_or_default();
                c.all_reduce_sum_f32(&mut buf)?;
                buf
            } else {
                let mut slots = vec![-0.0f32; n * w];
                for (j, b) in locals {
                    slots[j * w..(j + 1) * w].copy_from_slice(&b);
                }
                c.all_reduce_sum_f32(&mut slots)?;
                layout.fold(&slots)
            };
            layout.unflatten::<B::InnerBackend>(&summed)
        }
    };
    if let Some(c) = dist {
        c.all_reduce_sum_f64(&mut losses)?;
    }
    // In micro-batch order from 0.0, as one process adds them up.
    let loss_sum = losses.iter().fold(0.0, |s, l| s + l);
    Ok(StepGrads {
        grads,
        loss_sum,
        real_tokens: counts[1] as usize,
    })
}

fn fault_hook(rank: usize, step: u64) {
    if let Ok(v) = std::env::var(FAULT_ENV) {
        if v == format!("{rank}:{step}") {
            eprintln!("{FAULT_ENV}={v}: rank {rank} exits with status 1 at step {step}");
            std::process::exit(1);
        }
    }
}

/// [`evaluate`] sharded over the ranks: batch `i` runs on rank `i mod W`; the per-batch sums are
/// gathered and added in batch order, so the result equals one process's to the bit.
#[allow(clippy::too_many_arguments)]
pub(crate) fn evaluate_world<B: AutodiffBackend, M: AutodiffModule<B>>(
    dist: Option<&dyn Collective>,
    model: &M,
    objective: &Objective<B, M>,
    examples: &[Example],
    pad_id: u32,
    batch_size: usize,
    max_batches: usize,
    device: &Device<B>,
) -> Result<(f64, Option<f64>), TrainError> {
    let Some(c) = dist else {
        return Ok(evaluate(
            model,
            objective,
            examples,
            pad_id,
            batch_size,
            max_batches,
            device,
        ));
    };
    let (rank, world) = (c.rank(), c.world_size());
    let chunks: Vec<&[Example]> = examples.chunks(batch_size.max(1)).collect();
    let nb = if max_batches > 0 {
        chunks.len().min(max_batches)
    } else {
        chunks.len()
    };
    let inner = model.valid();
    // Per batch: loss sum, token count, correct predictions, rows.
    let mut slots = vec![-0.0f64; 4 * nb];
    for i in (rank..nb).step_by(world) {
        let batch = Batch::collate(&chunks[i].iter().collect::<Vec<_>>(), pad_id);
        let out: BatchLoss<B::InnerBackend> = (objective.valid)(&inner, &batch, device);
        slots[4 * i] = out.sum.into_scalar().elem::<f64>();
        slots[4 * i + 1] = out.count as f64;
        if let Some(pred) = out.predictions {
            let p: Vec<i64> = pred
                .into_data()
                .convert::<i64>()
                .to_vec()
                .unwrap_or_default();
            slots[4 * i + 2] = p.iter().zip(&batch.labels).filter(|(a, b)| a == b).count() as f64;
            slots[4 * i + 3] = batch.batch as f64;
        }
    }
    c.all_reduce_sum_f64(&mut slots)?;
    let (mut sum, mut count, mut correct, mut rows) = (0.0, 0usize, 0usize, 0usize);
    for s in slots.chunks_exact(4) {
        sum += s[0];
        count += s[1] as usize;
        correct += s[2] as usize;
        rows += s[3] as usize;
    }
    let acc = (objective.classification && rows > 0).then(|| correct as f64 / rows as f64);
    Ok((sum / count.max(1) as f64, acc))
}

/// Where the ranks resume: rank 0 prepares the run folder (see `runstate::prepare`) and
/// broadcasts the checkpoint folder it chose; the others load that same checkpoint.
pub(crate) fn resume_point(
    c: &dyn Collective,
    root: &Path,
    cfg: &TrainerSection,
    method: &str,
    allow_change: bool,
) -> Result<Option<Resumed>, TrainError> {
    if c.rank() == 0 {
        let r = crate::runstate::prepare(root, cfg, method, allow_change)?;
        let mut bytes = r
            .as_ref()
            .map(|r| r.dir.to_string_lossy().into_owned().into_bytes())
            .unwrap_or_default();
        c.broadcast_bytes(0, &mut bytes)?;
        return Ok(r);
    }
    let mut bytes = Vec::new();
    c.broadcast_bytes(0, &mut bytes)?;
    if bytes.is_empty() {
        return Ok(None);
    }
    let dir = PathBuf::from(String::from_utf8_lossy(&bytes).into_owned());
    let checkpoint = Checkpoint::load(&dir)?;
    Ok(Some(Resumed { checkpoint, dir }))
}

/// Whether any rank has `local` set (every rank gets the same answer, e.g. on a stop request).
pub(crate) fn any(dist: Option<&dyn Collective>, local: bool) -> Result<bool, TrainError> {
    let Some(c) = dist else { return Ok(local) };
    let mut v = [if local { 1.0 } else { 0.0 }];
    c.all_reduce_sum_f64(&mut v)?;
    Ok(v[0] > 0.0)
}

/// On an error in a job of several ranks: reports it and aborts the whole job (`MPI_Abort`), so
/// that no rank waits forever in a collective for this one.
pub(crate) fn abort_on_error<T>(
    dist: Option<&dyn Collective>,
    r: Result<T, TrainError>,
) -> Result<T, TrainError> {
    match (dist, r) {
        (Some(c), Err(e)) => {
            eprintln!(
                "balora: rank {} of {}: error: {e}; aborting the job",
                c.rank(),
                c.world_size()
            );
            // MPI_Abort makes the launcher kill every rank at once, and Hydra drops what it had
            // not forwarded yet: give it a moment to pass this message (and the peers' ones) on.
            std::thread::sleep(std::time::Duration::from_millis(500));
            c.abort(1)
        }
        (_, r) => r,
    }
}
