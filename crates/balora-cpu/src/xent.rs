//! The summed, weighted next-token cross-entropy on burn-flex, forward and backward in one pass
//! over the logits each:
//!
//! ```text
//! forward    L   = Σᵢ wᵢ·(lseᵢ − ℓᵢ,ₜᵢ)           lseᵢ = log Σⱼ exp ℓᵢⱼ   (max-shifted)
//! backward   ∂L/∂ℓᵢⱼ = g·wᵢ·(exp(ℓᵢⱼ − lseᵢ) − [j = tᵢ])
//! ```
//!
//! burn composes `log_softmax` from six element-wise ops, each a pass over the `[rows, vocab]`
//! logits (6.3 M values for SmolLM2 at batch 4 × seq 32) forward and again backward, on one
//! thread; here the rows are spread over the cores and each is read once per direction, with
//! the vectorised `exp` of `crate::math` where the CPU has AVX2 + FMA.

use burn::backend::autodiff::checkpoint::base::Checkpointer;
use burn::backend::autodiff::checkpoint::strategy::NoCheckpointing;
use burn::backend::autodiff::grads::Gradients;
use burn::backend::autodiff::ops::{Backward, Ops, OpsKind};
use burn::backend::flex::FlexTensor;
use burn::backend::{Autodiff, Flex};
use burn::tensor::backend::Backend;
use burn::tensor::{DType, Shape, Tensor, TensorData, TensorPrimitive};
use rayon::prelude::*;
use std::sync::Arc;

use crate::linear::{cast, same};
use crate::math::{Closed, Libm, Normal};

type Ad = Autodiff<Flex>;

/// `Σᵢ weights[i]·(−log softmax(logits[i])[targets[i]])` as a `[1]` tensor, for `logits`
/// `[rows, vocab]`, or `Err(logits)` when the fast path does not apply (not burn-flex, not f32,
/// or targets/weights that do not fit the logits — the caller's generic code reports those).
#[allow(clippy::result_large_err)]
pub fn token_nll_sum<B: Backend>(
    logits: Tensor<B, 2>,
    targets: &[usize],
    weights: &[f32],
) -> Result<Tensor<B, 1>, Tensor<B, 2>> {
    let [rows, vocab] = logits.dims();
    if targets.len() != rows || weights.len() != rows || targets.iter().any(|&t| t >= vocab) {
        return Err(logits);
    }
    match cast::<B, Ad, 2>(logits) {
        Ok(l) => {
            let p = l.clone().into_primitive().tensor();
            if p.primitive.dtype() != DType::F32 {
                return Err(same::<Ad, B, 2>(l));
            }
            let x = p.primitive.to_contiguous();
            let (loss, lse) = forward(&x, targets, weights);
            let out = match XentBackward
                .prepare::<NoCheckpointing>([p.node.clone()])
                .compute_bound()
                .stateful()
            {
                OpsKind::Tracked(prep) => prep.finish(
                    Arc::new(State {
                        logits: x,
                        lse,
                        targets: targets.to_vec(),
                        weights: weights.to_vec(),
                    }),
                    loss,
                ),
                OpsKind::UnTracked(prep) => prep.finish(loss),
            };
            let t: Tensor<Ad, 1> = Tensor::from_primitive(TensorPrimitive::Float(out));
            Ok(same::<Ad, B, 1>(t))
        }
        Err(l) => {
            let l = cast::<B, Flex, 2>(l)?;
            let p: FlexTensor = l.clone().into_primitive().tensor();
            if p.dtype() != DType::F32 {
                return Err(same::<Flex, B, 2>(l));
            }
            let (loss, _) = forward(&p.to_contiguous(), targets, weights);
            let t: Tensor<Flex, 1> = Tensor::from_primitive(TensorPrimitive::Float(loss));
            Ok(same::<Flex, B, 1>(t))
        }
    }
}

/// What the backward needs: the logits, each row's log-sum-exp, targets and weights.
#[derive(Debug)]
struct State {
    logits: FlexTensor,
    lse: Vec<f32>,
    targets: Vec<usize>,
    weights: Vec<f32>,
}

#[derive(Debug)]
struct XentBackward;

impl Backward<Flex, 1> for XentBackward {
    type State = Arc<State>;

    fn backward(self, ops: Ops<Self::State, 1>, grads: &mut Gradients, _: &mut Checkpointer) {
        let g = grads.consume::<Flex>(&ops.node).to_contiguous();
        let g = g.storage::<f32>()[0];
        let [Some(parent)] = &ops.parents else {
            return;
        };
        let st = &ops.state;
        let s = st.logits.layout().shape();
        let (rows, vocab) = (s[0], s[1]);
        let logits: &[f32] = st.logits.storage();
        let mut d = vec![0f32; rows * vocab];
        d.par_chunks_mut(vocab).enumerate().for_each(|(i, out)| {
            let w = st.weights[i];
            if w == 0.0 {
                return;
            }
            let (row, lse, gw) = (&logits[i * vocab..(i + 1) * vocab], st.lse[i], g * w);
            scaled_exp(row, lse, gw, out);
            out[st.targets[i]] -= gw;
        });
        let d = FlexTensor::from_data(TensorData::new(d, Shape::new([rows, vocab])));
        grads.register::<Flex>(parent.id, d);
    }
}

/// `(loss [1], lse per row)` of contiguous f32 `logits`.
fn forward(logits: &FlexTensor, targets: &[usize], weights: &[f32]) -> (FlexTensor, Vec<f32>) {
    let s = logits.layout().shape();
    let vocab = s[1];
    let x: &[f32] = logits.storage();
    let lse: Vec<f32> = x
        .par_chunks(vocab)
        .map(|row| {
            let m = row.iter().copied().fold(f32::NEG_INFINITY, f32::max);
            m + sum_exp(row, m).ln()
        })
        .collect();
    let loss: f64 = (0..lse.len())
        .filter(|&i| weights[i] != 0.0)
        .map(|i| weights[i] as f64 * (lse[i] - x[i * vocab + targets[i]]) as f64)
        .sum();
    let t = FlexTensor::from_data(TensorData::new(vec![loss as f32], Shape::new([1])));
    (t, lse)
}

/// Lanes of the vectorised reductions (one AVX-512 register; two AVX2 ones).
const LANES: usize = 16;

/// `Σⱼ exp(row[j] − m)`, in `LANES` partial sums so that the loop vectorises.
fn sum_exp(row: &[f32], m: f32) -> f32 {
    #[inline(always)]
    fn body<N: Normal>(row: &[f32], m: f32) -> f32 {
        let mut acc = [0f32; LANES];
        let chunks = row.chunks_exact(LANES);
        let tail: f32 = chunks.remainder().iter().map(|&l| N::exp(l - m)).sum();
        for c in chunks {
            for (a, &l) in acc.iter_mut().zip(c) {
                *a += N::exp(l - m);
            }
        }
        acc.iter().sum::<f32>() + tail
    }
    #[cfg(target_arch = "x86_64")]
    {
        #[target_feature(enable = "avx2,fma")]
        unsafe fn avx2(row: &[f32], m: f32) -> f32 {
            body::<Closed>(row, m)
        }
        if std::arch::is_x86_feature_detected!("avx2") && std::arch::is_x86_feature_detected!("fma")
        {
            // SAFETY: the features were just detected.
            return unsafe { avx2(row, m) };
        }
    }
    body::<Libm>(row, m)
}

/// `out[j] = s · exp(row[j] − shift)`.
fn scaled_exp(row: &[f32], shift: f32, s: f32, out: &mut [f32]) {
    #[inline(always)]
    fn body<N: Normal>(row: &[f32], shift: f32, s: f32, out: &mut [f32]) {
        for (o, &l) in out.iter_mut().zip(row) {
            *o = s * N::exp(l - shift);
        }
    }
    #[cfg(target_arch = "x86_64")]
    {
        #[target_feature(enable = "avx2,fma")]
        unsafe fn avx2(row: &[f32], shift: f32, s: f32, out: &mut [f32]) {
            body::<Closed>(row, shift, s, out)
        }
        if std::arch::is_x86_feature_detected!("avx2") && std::arch::is_x86_feature_detected!("fma")
        {
            // SAFETY: the features were just detected.
            return unsafe { avx2(row, shift, s, out) };
        }
    }
    body::<Libm>(row, shift, s, out)
}
