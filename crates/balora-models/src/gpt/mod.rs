//! GPT-style decoders with LayerNorm and fused projections, in the same surgery / PEFT / merge
//! machinery as the Llama family:
//!
//! * [`gpt2`]: GPT-2 (`GPT2LMHeadModel`): learned absolute positions, pre-LN blocks, fused
//!   `c_attn`, gelu_new, tied head. Its projections are Hugging Face `Conv1D` layers, whose
//!   weight is stored `[in, out]` (PEFT's `fan_in_fan_out=True`).
//! * [`neox`]: GPT-NeoX / Pythia (`GPTNeoXForCausalLM`): fused `query_key_value` laid out
//!   per head `[heads, 3, head_dim]`, partial rotary embedding, parallel or serial residual.
//!
//! This module holds what both share: config readers, the causal + padding mask, the
//! attention core, the activation, and the tied head.

pub mod gpt2;
pub mod neox;
mod neox_config;

use crate::export::NamedTensor;
use crate::weights::to_vec;
use crate::ModelError;
use burn::nn::{Embedding, LayerNorm};
use burn::tensor::activation::{gelu, gelu_approximate, softmax};
use burn::tensor::{backend::Backend, Bool, Tensor, TensorData};
use serde_json::Value;

/// A required non-negative integer field of `config.json` (the first of `keys` present).
pub(crate) fn cfg_usize(v: &Value, keys: &[&str], origin: &str) -> Result<usize, ModelError> {
    for k in keys {
        if let Some(x) = v.get(*k).filter(|x| !x.is_null()) {
            return x.as_u64().map(|x| x as usize).ok_or_else(|| {
                ModelError::config(origin, k, format!("{x} is not a non-negative integer"))
            });
        }
    }
    Err(ModelError::config(origin, keys[0], "missing"))
}

/// An optional number field of `config.json` (`default` when absent or `null`).
pub(crate) fn cfg_f64(v: &Value, key: &str, default: f64, origin: &str) -> Result<f64, ModelError> {
    match v.get(key).filter(|x| !x.is_null()) {
        None => Ok(default),
        Some(x) => x
            .as_f64()
            .ok_or_else(|| ModelError::config(origin, key, format!("{x} is not a number"))),
    }
}

/// An optional boolean field of `config.json` (`default` when absent or `null`).
pub(crate) fn cfg_bool(
    v: &Value,
    key: &str,
    default: bool,
    origin: &str,
) -> Result<bool, ModelError> {
    match v.get(key).filter(|x| !x.is_null()) {
        None => Ok(default),
        Some(x) => x
            .as_bool()
            .ok_or_else(|| ModelError::config(origin, key, format!("{x} is not true or false"))),
    }
}

/// Whether the activation named `act` (field `field`) is the tanh approximation of GELU
/// (`gelu_new`, `gelu_fast`, `gelu_pytorch_tanh`: `true`) or exact GELU (`gelu`: `false`).
pub(crate) fn gelu_kind(act: &str, field: &str, origin: &str) -> Result<bool, ModelError> {
    match act {
        "gelu_new" | "gelu_fast" | "gelu_pytorch_tanh" => Ok(true),
        "gelu" => Ok(false),
        other => Err(ModelError::config(
            origin,
            field,
            format!("`{other}` is not supported (gelu, gelu_new, gelu_fast, gelu_pytorch_tanh)"),
        )),
    }
}

/// GELU: the tanh approximation (`0.5·x·(1 + tanh(√(2/π)·(x + 0.044715·x³)))`, GPT-2's
/// gelu_new) when `tanh`, else exact (erf), on the CPU fast path when there is one.
pub(crate) fn act<B: Backend, const D: usize>(x: Tensor<B, D>, tanh: bool) -> Tensor<B, D> {
    if tanh {
        gelu_approximate(x)
    } else {
        match balora_cpu::gelu(x) {
            Ok(y) => y,
            Err(x) => gelu(x),
        }
    }
}

/// The additive attention mask `[b, heads, s, s]`: −10⁹ above the diagonal (causal) and on
/// padded keys (`mask` `[b, s]` false), 0 elsewhere; materialised at full size once per forward
/// (a broadcast operand is a strided read on CPU backends).
pub(crate) fn causal_bias<B: Backend>(
    b: usize,
    s: usize,
    heads: usize,
    mask: Option<Tensor<B, 2, Bool>>,
    device: &B::Device,
) -> Tensor<B, 4> {
    let causal: Vec<f32> = (0..s * s)
        .map(|k| if k % s > k / s { -1e9 } else { 0.0 })
        .collect();
    let mut bias =
        Tensor::<B, 2>::from_data(TensorData::new(causal, [s, s]), device).reshape([1, 1, s, s]);
    if let Some(m) = mask {
        let pad = (m.float().neg() + 1.0)
            .mul_scalar(-1e9)
            .reshape([b, 1, 1, s]);
        bias = bias + pad;
    }
    let bias = bias.repeat_dim(1, heads);
    if bias.dims()[0] == 1 && b > 1 {
        bias.repeat_dim(0, b)
    } else {
        bias
    }
}

/// Scaled dot-product attention: `softmax(q·kᵀ·scale + bias)·v` for `q`, `k`, `v`
/// `[b, heads, s, head_dim]`, returned as `[b, s, heads·head_dim]` (heads concatenated).
pub(crate) fn attend<B: Backend>(
    q: Tensor<B, 4>,
    k: Tensor<B, 4>,
    v: Tensor<B, 4>,
    bias: &Tensor<B, 4>,
    scale: f64,
) -> Tensor<B, 3> {
    let [b, h, s, hd] = q.dims();
    let scores = q.matmul(k.swap_dims(2, 3)).mul_scalar(scale) + bias.clone();
    softmax(scores, 3)
        .matmul(v)
        .swap_dims(1, 2)
        .reshape([b, s, h * hd])
}

/// `[b, s, heads·head_dim]` → `[b, heads, s, head_dim]`.
pub(crate) fn heads<B: Backend>(x: Tensor<B, 3>, heads: usize) -> Tensor<B, 4> {
    let [b, s, d] = x.dims();
    x.reshape([b, s, heads, d / heads]).swap_dims(1, 2)
}

/// A contiguous `[d, vocab]` copy of an embedding matrix, for a head tied to it (the embedding
/// is frozen; the copy saves a transposed read per forward).
pub(crate) fn tied_copy<B: Backend>(e: &Embedding<B>) -> Tensor<B, 2> {
    let w = e.weight.val();
    let [v, d] = w.dims();
    let data = crate::weights::to_vec(w.clone());
    let mut t = vec![0f32; data.len()];
    for i in 0..v {
        for j in 0..d {
            t[j * v + i] = data[i * d + j];
        }
    }
    Tensor::from_data(TensorData::new(t, [d, v]), &w.device())
}

/// Logits of a head tied to `e`, whose `[d, vocab]` copy is `copy`, for `h` `[rows, d]`.
pub(crate) fn tied_logits<B: Backend>(
    h: Tensor<B, 2>,
    copy: &Tensor<B, 2>,
    e: &Embedding<B>,
) -> Tensor<B, 2> {
    match balora_cpu::frozen_linear(h, copy, &e.weight.val()) {
        Ok(y) => y,
        Err(h) => burn::tensor::module::linear(h, copy.clone(), None),
    }
}

/// Appends a LayerNorm's `{prefix}.weight` and `{prefix}.bias` (Hugging Face names) to `out`.
pub(crate) fn push_layer_norm<B: Backend>(
    out: &mut Vec<NamedTensor>,
    prefix: &str,
    n: &LayerNorm<B>,
) {
    out.push((
        format!("{prefix}.weight"),
        n.gamma.dims().to_vec(),
        to_vec(n.gamma.val()),
    ));
    if let Some(b) = &n.beta {
        out.push((format!("{prefix}.bias"), b.dims().to_vec(), to_vec(b.val())));
    }
}
