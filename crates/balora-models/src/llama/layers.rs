//! The decoder layer: grouped-query attention with RoPE, SwiGLU MLP, pre-norms.

use super::rope;
use balora_adapter::LoraLinear;
use burn::module::Module;
use burn::nn::RmsNorm;
use burn::tensor::activation::{silu, softmax};
use burn::tensor::{backend::Backend, Tensor};

/// Attention block (PEFT module names `q_proj`, `k_proj`, `v_proj`, `o_proj`).
#[derive(Module, Debug)]
pub struct LlamaAttention<B: Backend> {
    /// Query projection.
    pub q_proj: LoraLinear<B>,
    /// Key projection.
    pub k_proj: LoraLinear<B>,
    /// Value projection.
    pub v_proj: LoraLinear<B>,
    /// Output projection.
    pub o_proj: LoraLinear<B>,
}

/// SwiGLU MLP (`gate_proj`, `up_proj`, `down_proj`).
#[derive(Module, Debug)]
pub struct LlamaMlp<B: Backend> {
    /// Gate projection.
    pub gate_proj: LoraLinear<B>,
    /// Up projection.
    pub up_proj: LoraLinear<B>,
    /// Down projection.
    pub down_proj: LoraLinear<B>,
}

/// One decoder layer.
#[derive(Module, Debug)]
pub struct LlamaLayer<B: Backend> {
    /// Attention.
    pub self_attn: LlamaAttention<B>,
    /// MLP.
    pub mlp: LlamaMlp<B>,
    /// Pre-attention RMSNorm.
    pub input_layernorm: RmsNorm<B>,
    /// Pre-MLP RMSNorm.
    pub post_attention_layernorm: RmsNorm<B>,
}

/// What every layer of one forward pass shares, built once per forward.
pub(super) struct Pass<B: Backend> {
    /// Batch, new positions, key positions (cached + new).
    pub b: usize,
    pub s: usize,
    pub t: usize,
    /// Query heads, key/value heads, head dimension.
    pub nh: usize,
    pub nkv: usize,
    pub hd: usize,
    /// Full-size RoPE tables for q and k ([`rope::expand`]) and the rotation `R`.
    pub rope_q: [Tensor<B, 4>; 2],
    pub rope_k: [Tensor<B, 4>; 2],
    pub rot: Tensor<B, 2>,
    /// Additive attention mask `[b, nh, s, t]` (causal + padding).
    pub bias: Tensor<B, 4>,
}

/// One layer's cached keys and values `[b, nkv, positions, hd]`.
pub(super) type KvSlot<B> = Option<(Tensor<B, 4>, Tensor<B, 4>)>;

impl<B: Backend> LlamaAttention<B> {
    /// Attention of `h` `[b, s, d]`; with a cache slot, the keys and values are appended to it.
    pub(super) fn forward(
        &self,
        h: Tensor<B, 3>,
        p: &Pass<B>,
        cache: Option<&mut KvSlot<B>>,
    ) -> Tensor<B, 3> {
        let (b, s, t, nh, nkv, hd) = (p.b, p.s, p.t, p.nh, p.nkv, p.hd);
        // RoPE on the projections' own [b, s, heads, hd] layout (contiguous), then heads first.
        let q = rope::apply(
            self.q_proj.forward(h.clone()).reshape([b, s, nh, hd]),
            &p.rot,
            &p.rope_q,
        )
        .swap_dims(1, 2);
        let mut k = rope::apply(
            self.k_proj.forward(h.clone()).reshape([b, s, nkv, hd]),
            &p.rot,
            &p.rope_k,
        )
        .swap_dims(1, 2);
        let mut v = self
            .v_proj
            .forward(h)
            .reshape([b, s, nkv, hd])
            .swap_dims(1, 2);
        if let Some(slot) = cache {
            if let Some((pk, pv)) = slot.take() {
                k = Tensor::cat(vec![pk, k], 2);
                v = Tensor::cat(vec![pv, v], 2);
            }
            *slot = Some((k.clone(), v.clone()));
        }
        let g = nh / nkv;
        let (k, v) = if g > 1 {
            let rep = |z: Tensor<B, 4>| -> Tensor<B, 4> {
                z.unsqueeze_dim::<5>(2)
                    .expand([b, nkv, g, t, hd])
                    .reshape([b, nh, t, hd])
            };
            (rep(k), rep(v))
        } else {
            (k, v)
        };
        let scale = 1.0 / (hd as f64).sqrt();
        let scores = q.matmul(k.swap_dims(2, 3)).mul_scalar(scale) + p.bias.clone();
        let probs = softmax(scores, 3);
        let o = probs.matmul(v).swap_dims(1, 2).reshape([b, s, nh * hd]);
        self.o_proj.forward(o)
    }
}

impl<B: Backend> LlamaMlp<B> {
    /// `down(silu(gate(h)) ⊙ up(h))`, fused on the CPU fast path.
    pub(super) fn forward(&self, h: Tensor<B, 3>) -> Tensor<B, 3> {
        let (gate, up) = (self.gate_proj.forward(h.clone()), self.up_proj.forward(h));
        let a = match balora_cpu::swiglu(gate, up) {
            Ok(a) => a,
            Err((gate, up)) => silu(gate) * up,
        };
        self.down_proj.forward(a)
    }
}

impl<B: Backend> LlamaLayer<B> {
    /// `x + attn(norm(x))`, then `+ mlp(norm(·))`.
    pub(super) fn forward(
        &self,
        x: Tensor<B, 3>,
        p: &Pass<B>,
        cache: Option<&mut KvSlot<B>>,
    ) -> Tensor<B, 3> {
        let h = self.input_layernorm.forward(x.clone());
        let x = x + self.self_attn.forward(h, p, cache);
        let h = self.post_attention_layernorm.forward(x.clone());
        x + self.mlp.forward(h)
    }
}
