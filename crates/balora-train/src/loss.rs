//! Losses of a batch: next-token cross-entropy with masked labels, and classification.

use balora_data::{Batch, IGNORE_INDEX};
use balora_models::{CausalLm, SequenceClassifier};
use burn::tensor::activation::log_softmax;
use burn::tensor::{backend::Backend, Bool, Int, Tensor, TensorData};

/// A batch's summed loss and what it was summed over.
#[derive(Debug, Clone)]
pub struct BatchLoss<B: Backend> {
    /// Sum of per-token (per-row) negative log-likelihoods, shape `[1]`.
    pub sum: Tensor<B, 1>,
    /// Number of loss terms in `sum`.
    pub count: usize,
    /// Classification: argmax predictions per row `[batch]`.
    pub predictions: Option<Tensor<B, 1, Int>>,
}

/// `(input_ids, attention_mask)` of a host batch on `device`.
pub fn batch_inputs<B: Backend>(
    batch: &Batch,
    device: &B::Device,
) -> (Tensor<B, 2, Int>, Tensor<B, 2, Bool>) {
    let ids = Tensor::<B, 2, Int>::from_data(
        TensorData::new(batch.input_ids.clone(), [batch.batch, batch.seq]),
        device,
    );
    let mask = Tensor::<B, 2, Bool>::from_data(
        TensorData::new(batch.attention_mask.clone(), [batch.batch, batch.seq]),
        device,
    );
    (ids, mask)
}

/// Summed next-token cross-entropy over positions whose label is not [`IGNORE_INDEX`]:
/// the logits at `t − 1` predict `labels[t]`.
pub fn causal_lm_loss<B: Backend, M: CausalLm<B>>(
    model: &M,
    batch: &Batch,
    device: &B::Device,
) -> BatchLoss<B> {
    let (ids, mask) = batch_inputs::<B>(batch, device);
    let logits = model.forward_logits(ids, Some(mask));
    token_nll_sum(logits, batch, device)
}

/// The masked summed NLL of `logits` `[b, s, v]` against the batch's shifted labels.
pub fn token_nll_sum<B: Backend>(
    logits: Tensor<B, 3>,
    batch: &Batch,
    device: &B::Device,
) -> BatchLoss<B> {
    let (b, s) = (batch.batch, batch.seq);
    let [_, _, v] = logits.dims();
    let mut targets = Vec::with_capacity(b * (s - 1));
    let mut weights = Vec::with_capacity(b * (s - 1));
    for row in 0..b {
        for t in 1..s {
            let l = batch.labels[row * s + t];
            let keep = l != IGNORE_INDEX;
            targets.push(if keep { l } else { 0 });
            weights.push(if keep { 1.0f32 } else { 0.0 });
        }
    }
    let count = weights.iter().filter(|&&w| w > 0.0).count();
    // burn-flex: one fused pass over the whole contiguous logits (the last position weighted 0)
    // instead of log_softmax on a strided slice; other backends take the generic ops below.
    let logits = {
        let mut all_t = Vec::with_capacity(b * s);
        let mut all_w = Vec::with_capacity(b * s);
        for row in 0..b {
            let r = row * (s - 1);
            all_t.extend(targets[r..r + s - 1].iter().map(|&t| t.max(0) as usize));
            all_w.extend_from_slice(&weights[r..r + s - 1]);
            all_t.push(0);
            all_w.push(0.0);
        }
        match balora_cpu::token_nll_sum(logits.reshape([b * s, v]), &all_t, &all_w) {
            Ok(sum) => {
                return BatchLoss {
                    sum,
                    count,
                    predictions: None,
                }
            }
            Err(l) => l.reshape([b, s, v]),
        }
    };
    let logp = log_softmax(logits.slice([0..b, 0..s - 1, 0..v]), 2);
    let idx = Tensor::<B, 3, Int>::from_data(TensorData::new(targets, [b, s - 1, 1]), device);
    let w = Tensor::<B, 3>::from_data(TensorData::new(weights, [b, s - 1, 1]), device);
    let picked = logp.gather(2, idx);
    BatchLoss {
        sum: picked.mul(w).sum().neg(),
        count,
        predictions: None,
    }
}

/// Summed cross-entropy over rows of a classification batch, with argmax predictions.
pub fn classification_loss<B: Backend, M: SequenceClassifier<B>>(
    model: &M,
    batch: &Batch,
    device: &B::Device,
) -> BatchLoss<B> {
    let (ids, mask) = batch_inputs::<B>(batch, device);
    let logits = model.forward_classes(ids, Some(mask));
    let b = batch.batch;
    let idx = Tensor::<B, 2, Int>::from_data(TensorData::new(batch.labels.clone(), [b, 1]), device);
    let predictions = logits.clone().argmax(1).reshape([b]);
    let picked = log_softmax(logits, 1).gather(1, idx);
    BatchLoss {
        sum: picked.sum().neg(),
        count: b,
        predictions: Some(predictions),
    }
}
