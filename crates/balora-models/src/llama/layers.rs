//! The decoder layer: grouped-query attention with RoPE (optional q/k norms, soft-cap, sliding
//! window, fused qkv), gated MLP (SiLU or tanh-GELU, optionally fused), pre-norms or sandwich norms.

use super::rope;
use balora_adapter::LoraLinear;
use burn::module::Module;
use burn::nn::RmsNorm;
use burn::tensor::activation::{gelu_approximate, silu, softmax};
use burn::tensor::{backend::Backend, Tensor};

/// Attention block (PEFT module names `q_proj`, `k_proj`, `v_proj`, `o_proj`; Phi-3's fused
/// `qkv_proj`).
#[derive(Module, Debug)]
pub struct LlamaAttention<B: Backend> {
    /// Query projection; with fused projections (Phi-3) the fused `qkv_proj`, rows q, k, v
    /// (named `qkv_proj` by [`crate::AdapterHost::linears`]).
    pub q_proj: LoraLinear<B>,
    /// Key projection (`None` with fused projections).
    pub k_proj: Option<LoraLinear<B>>,
    /// Value projection (`None` with fused projections).
    pub v_proj: Option<LoraLinear<B>>,
    /// Output projection.
    pub o_proj: LoraLinear<B>,
    /// Per-head RMSNorm of the queries before RoPE (Qwen3, Gemma 3).
    pub q_norm: Option<RmsNorm<B>>,
    /// Per-head RMSNorm of the keys before RoPE (Qwen3, Gemma 3).
    pub k_norm: Option<RmsNorm<B>>,
}

/// Gated MLP `down(act(gate) ⊙ up)` (`gate_proj`, `up_proj`, `down_proj`; Phi-3's fused
/// `gate_up_proj`), SiLU or tanh-GELU (Gemma).
#[derive(Module, Debug)]
pub struct LlamaMlp<B: Backend> {
    /// Gate projection; with fused projections (Phi-3) the fused `gate_up_proj`, rows gate,
    /// up (named `gate_up_proj` by [`crate::AdapterHost::linears`]).
    pub gate_proj: LoraLinear<B>,
    /// Up projection (`None` with fused projections).
    pub up_proj: Option<LoraLinear<B>>,
    /// Down projection.
    pub down_proj: LoraLinear<B>,
    /// The activation is tanh-approximated GELU (Gemma), not SiLU.
    pub gelu_tanh: bool,
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
    /// Pre-MLP RMSNorm; with sandwich norms (Gemma 2/3) the norm of the attention output.
    pub post_attention_layernorm: RmsNorm<B>,
    /// Pre-MLP RMSNorm of the sandwich (Gemma 2/3).
    pub pre_feedforward_layernorm: Option<RmsNorm<B>>,
    /// Norm of the MLP output (Gemma 2/3).
    pub post_feedforward_layernorm: Option<RmsNorm<B>>,
    /// Attends within the sliding window (with the sliding layers' RoPE tables).
    pub sliding: bool,
}

/// RoPE tables for q and k, full size ([`rope::expand`]).
pub(super) struct RopePair<B: Backend> {
    pub q: [Tensor<B, 4>; 2],
    pub k: [Tensor<B, 4>; 2],
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
    /// RoPE tables of the global layers, of the sliding ones if they differ (Gemma 3), and the
    /// rotation `R`.
    pub rope: RopePair<B>,
    pub rope_local: Option<RopePair<B>>,
    pub rot: Tensor<B, 2>,
    /// Additive attention masks `[b, nh, s, t]`: causal + padding, and for sliding layers
    /// also the window.
    pub bias: Tensor<B, 4>,
    pub bias_local: Option<Tensor<B, 4>>,
    /// Score scale and soft-cap.
    pub scale: f64,
    pub softcap: Option<f64>,
}

/// One layer's cached keys and values `[b, nkv, positions, hd]`.
pub(super) type KvSlot<B> = Option<(Tensor<B, 4>, Tensor<B, 4>)>;

/// `c·tanh(x / c)`.
pub(super) fn softcap<B: Backend, const D: usize>(x: Tensor<B, D>, c: f64) -> Tensor<B, D> {
    x.div_scalar(c).tanh().mul_scalar(c)
}

impl<B: Backend> LlamaAttention<B> {
    /// Attention of `h` `[b, s, d]` (`sliding`: the layer's window mask and RoPE); with a
    /// cache slot, the keys and values are appended to it.
    pub(super) fn forward(
        &self,
        h: Tensor<B, 3>,
        p: &Pass<B>,
        sliding: bool,
        cache: Option<&mut KvSlot<B>>,
    ) -> Tensor<B, 3> {
        let (b, s, t, nh, nkv, hd) = (p.b, p.s, p.t, p.nh, p.nkv, p.hd);
        let (q, k, v) = match (&self.k_proj, &self.v_proj) {
            (Some(kp), Some(vp)) => (
                self.q_proj.forward(h.clone()),
                kp.forward(h.clone()),
                vp.forward(h),
            ),
            _ => {
                let qkv = self.q_proj.forward(h);
                let (nq, nk) = (nh * hd, nkv * hd);
                (
                    qkv.clone().narrow(2, 0, nq),
                    qkv.clone().narrow(2, nq, nk),
                    qkv.narrow(2, nq + nk, nk),
                )
            }
        };
        let norm = |n: &Option<RmsNorm<B>>, x: Tensor<B, 4>| match n {
            Some(n) => n.forward(x),
            None => x,
        };
        let (rope_t, bias) = match (sliding, &p.rope_local, &p.bias_local) {
            (true, local, Some(bl)) => (local.as_ref().unwrap_or(&p.rope), bl),
            _ => (&p.rope, &p.bias),
        };
        // RoPE on the projections' own [b, s, heads, hd] layout (contiguous), then heads first.
        let q = rope::apply(
            norm(&self.q_norm, q.reshape([b, s, nh, hd])),
            &p.rot,
            &rope_t.q,
        )
        .swap_dims(1, 2);
        let mut k = rope::apply(
            norm(&self.k_norm, k.reshape([b, s, nkv, hd])),
            &p.rot,
            &rope_t.k,
        )
        .swap_dims(1, 2);
        let mut v = v.reshape([b, s, nkv, hd]).swap_dims(1, 2);
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
        let scores = q.matmul(k.swap_dims(2, 3)).mul_scalar(p.scale);
        let scores = match p.softcap {
            Some(c) => softcap(scores, c),
            None => scores,
        };
        let probs = softmax(scores + bias.clone(), 3);
        let o = probs.matmul(v).swap_dims(1, 2).reshape([b, s, nh * hd]);
        self.o_proj.forward(o)
    }
}

impl<B: Backend> LlamaMlp<B> {
    /// `down(act(gate(h)) ⊙ up(h))`; SwiGLU fused on the CPU fast path.
    pub(super) fn forward(&self, h: Tensor<B, 3>) -> Tensor<B, 3> {
        let (gate, up) = match &self.up_proj {
            Some(u) => (self.gate_proj.forward(h.clone()), u.forward(h)),
            None => {
                let gu = self.gate_proj.forward(h);
                let ff = gu.dims()[2] / 2;
                (gu.clone().narrow(2, 0, ff), gu.narrow(2, ff, ff))
            }
        };
        let a = if self.gelu_tanh {
            gelu_approximate(gate) * up
        } else {
            match balora_cpu::swiglu(gate, up) {
                Ok(a) => a,
                Err((gate, up)) => silu(gate) * up,
            }
        };
        self.down_proj.forward(a)
    }
}

impl<B: Backend> LlamaLayer<B> {
    /// `x + attn(norm(x))`, then `+ mlp(norm(·))`; with sandwich norms
    /// `x + post(attn(norm(x)))`, then `+ post_ff(mlp(pre_ff(·)))`.
    pub(super) fn forward(
        &self,
        x: Tensor<B, 3>,
        p: &Pass<B>,
        cache: Option<&mut KvSlot<B>>,
    ) -> Tensor<B, 3> {
        let h = self.input_layernorm.forward(x.clone());
        let a = self.self_attn.forward(h, p, self.sliding, cache);
        match (
            &self.pre_feedforward_layernorm,
            &self.post_feedforward_layernorm,
        ) {
            (Some(pre), Some(post)) => {
                let x = x + self.post_attention_layernorm.forward(a);
                let h = pre.forward(x.clone());
                x + post.forward(self.mlp.forward(h))
            }
            _ => {
                let x = x + a;
                let h = self.post_attention_layernorm.forward(x.clone());
                x + self.mlp.forward(h)
            }
        }
    }
}
