//! The Llama-family causal LM: decoder stack, head (tied or untied), loading, and the forward
//! pass with causal + padding masks and an optional KV cache.

use super::build::{build, Loaded, Random};
use super::layers::{softcap, LlamaLayer, Pass, RopePair};
use super::{rope, Family, KvCache, LlamaConfig};
use crate::weights::Weights;
use crate::{CausalLm, ModelError};
use balora_adapter::LoraLinear;
use burn::module::Module;
use burn::nn::{Embedding, RmsNorm};
use burn::tensor::{backend::Backend, Bool, Int, Tensor, TensorData};

/// Decoder stack (HF `model.`).
#[derive(Module, Debug)]
pub struct LlamaModel<B: Backend> {
    /// Token embedding.
    pub embed_tokens: Embedding<B>,
    /// Decoder layers.
    pub layers: Vec<LlamaLayer<B>>,
    /// Final RMSNorm.
    pub norm: RmsNorm<B>,
}

/// A Llama-family causal LM. Module paths follow Hugging Face (`model.layers.0.self_attn.q_proj`).
#[derive(Module, Debug)]
pub struct LlamaForCausalLm<B: Backend> {
    /// Decoder.
    pub model: LlamaModel<B>,
    /// Untied head (`None`: tied to `model.embed_tokens`).
    pub lm_head: Option<LoraLinear<B>>,
    /// `[max_position, head_dim]` RoPE cos table, each pair's angle at both of its dimensions
    /// (dimension `i` pairs with `i + head_dim/2`).
    pub rope_cos: Tensor<B, 2>,
    /// `[max_position, head_dim]` RoPE sin table, laid out like `rope_cos`.
    pub rope_sin: Tensor<B, 2>,
    /// `[head_dim, head_dim]` signed permutation `R` with `(x·R)` = each pair rotated by 90°, so
    /// that `rope(x) = x ⊙ cos + (x·R) ⊙ sin`: three contiguous ops instead of slicing the halves.
    pub rope_rot: Tensor<B, 2>,
    /// Query heads.
    pub num_heads: usize,
    /// Key/value heads.
    pub num_kv_heads: usize,
    /// Head dimension.
    pub head_dim: usize,
    /// Tied head: a contiguous `[d, vocab]` copy of the embedding matrix (speed; the embedding
    /// is frozen).
    pub tied_head: Option<Tensor<B, 2>>,
    /// RoPE cos/sin tables of the sliding layers when their base differs (Gemma 3).
    pub rope_cos_local: Option<Tensor<B, 2>>,
    /// See `rope_cos_local`.
    pub rope_sin_local: Option<Tensor<B, 2>>,
    /// What the family changes in the decoder (embedding scale, soft-caps, sliding window,
    /// Gemma's `1 + w` norms, ...).
    #[module(skip)]
    pub family: Family,
}

impl<B: Backend> LlamaForCausalLm<B> {
    /// A randomly initialised model (tests, experiments).
    pub fn random(cfg: &LlamaConfig, device: &B::Device) -> Self {
        let (model, lm_head) =
            build(cfg, &mut Random { cfg, device }).expect("random parts cannot fail");
        Self::assemble(cfg, model, lm_head, device)
    }

    fn assemble(
        cfg: &LlamaConfig,
        model: LlamaModel<B>,
        lm_head: Option<LoraLinear<B>>,
        device: &B::Device,
    ) -> Self {
        let tied_head = lm_head.is_none().then(|| {
            let w = model.embed_tokens.weight.val();
            let [v, d] = w.dims();
            let data = crate::weights::to_vec(w);
            let mut t = vec![0f32; data.len()];
            for i in 0..v {
                for j in 0..d {
                    t[j * v + i] = data[i * d + j];
                }
            }
            Tensor::from_data(TensorData::new(t, [d, v]), device)
        });
        let [rope_cos, rope_sin] = rope::tables(cfg, &cfg.inv_freq(), device);
        let local = cfg
            .inv_freq_local()
            .map(|inv| rope::tables::<B>(cfg, &inv, device));
        let (rope_cos_local, rope_sin_local) = match local {
            Some([c, s]) => (Some(c), Some(s)),
            None => (None, None),
        };
        Self {
            model,
            lm_head,
            rope_cos,
            rope_sin,
            rope_rot: rope::rotation(cfg, device),
            num_heads: cfg.num_heads,
            num_kv_heads: cfg.num_kv_heads,
            head_dim: cfg.head_dim,
            tied_head,
            rope_cos_local,
            rope_sin_local,
            family: cfg.family.clone(),
        }
    }

    /// Loads weights named like Hugging Face (`model.layers.0.self_attn.q_proj.weight`), from
    /// any [`Weights`] source in Hugging Face layout (a GGUF through
    /// [`crate::load::load_llama_gguf`], which un-permutes its q/k rows).
    pub fn load(
        cfg: &LlamaConfig,
        w: &dyn Weights,
        device: &B::Device,
    ) -> Result<Self, ModelError> {
        let (model, lm_head) = build(cfg, &mut Loaded { w, cfg, device })?;
        Ok(Self::assemble(cfg, model, lm_head, device))
    }

    /// Number of decoder layers.
    pub fn num_layers(&self) -> usize {
        self.model.layers.len()
    }

    /// Hidden states after the final norm, `[batch, seq, d]`. With a cache, positions start at
    /// `cache.len()` and the cache is extended.
    pub fn forward_hidden(
        &self,
        input_ids: Tensor<B, 2, Int>,
        attention_mask: Option<Tensor<B, 2, Bool>>,
        mut cache: Option<&mut KvCache<B>>,
    ) -> Tensor<B, 3> {
        let [b, s] = input_ids.dims();
        let device = input_ids.device();
        let offset = cache.as_ref().map(|c| c.len).unwrap_or(0);
        let t = offset + s;
        let (nh, nkv) = (self.num_heads, self.num_kv_heads);
        // Key padding, additive `[b, 1, 1, t]`: the mask covers the whole (cached + new) key
        // range or only the new tokens.
        let pad = attention_mask.map(|m| {
            let [mb, mt] = m.dims();
            let m = if mt == t || offset == 0 {
                m.float()
            } else {
                Tensor::cat(vec![Tensor::ones([mb, offset], &device), m.float()], 1)
            };
            (m.neg() + 1.0).mul_scalar(-1e9).reshape([mb, 1, 1, t])
        });
        // Full-size once per forward, reused by every layer (see `rope::expand`).
        let full = |window| {
            let bias = causal_bias::<B>(s, offset, window, &device);
            let bias = match &pad {
                Some(p) => bias + p.clone(),
                None => bias,
            };
            let bias = bias.repeat_dim(1, nh);
            if bias.dims()[0] == 1 {
                bias.repeat_dim(0, b)
            } else {
                bias
            }
        };
        let f = &self.family;
        let bias_local = f.sliding_window.map(|w| full(Some(w)));
        let rot = self.rope_rot.clone();
        let pair = |cos: &Tensor<B, 2>, sin: &Tensor<B, 2>| RopePair {
            q: rope::expand([cos, sin], b, s, nh, offset),
            k: rope::expand([cos, sin], b, s, nkv, offset),
        };
        let rope_local = match (&self.rope_cos_local, &self.rope_sin_local) {
            (Some(c), Some(sn)) => Some(pair(c, sn)),
            _ => None,
        };
        let pass = Pass {
            b,
            s,
            t,
            nh,
            nkv,
            hd: self.head_dim,
            rope: pair(&self.rope_cos, &self.rope_sin),
            rope_local,
            rot,
            bias: full(None),
            bias_local,
            scale: 1.0
                / f.query_pre_attn_scalar
                    .unwrap_or(self.head_dim as f64)
                    .sqrt(),
            softcap: f.attn_softcap,
        };
        let x = self.model.embed_tokens.forward(input_ids);
        // Gemma: × √d, rounded to f32 first as PyTorch does.
        let mut x = match f.embed_scale {
            true => x.mul_scalar((self.model.embed_tokens.weight.dims()[1] as f64).sqrt() as f32),
            false => x,
        };
        for (li, layer) in self.model.layers.iter().enumerate() {
            let slot = cache.as_deref_mut().map(|c| &mut c.layers[li]);
            x = layer.forward(x, &pass, slot);
        }
        if let Some(c) = cache {
            c.len = t;
        }
        self.model.norm.forward(x)
    }

    /// Logits for hidden states `[.., d]`.
    pub fn head<const D: usize>(&self, h: Tensor<B, D>) -> Tensor<B, D> {
        balora_adapter::over_rows(h, |h| self.head_rows(h))
    }

    fn head_rows(&self, h: Tensor<B, 2>) -> Tensor<B, 2> {
        let logits = self.head_linear(h);
        match self.family.final_softcap {
            Some(c) => softcap(logits, c),
            None => logits,
        }
    }

    fn head_linear(&self, h: Tensor<B, 2>) -> Tensor<B, 2> {
        match (&self.lm_head, &self.tied_head) {
            (Some(l), _) => l.forward(h),
            // Tied: the frozen `[d, vocab]` copy forward; the CPU path's backward reads the
            // embedding itself, which is that copy's row-major transpose.
            (None, Some(t)) => {
                let e = self.model.embed_tokens.weight.val();
                match balora_cpu::frozen_linear(h, t, &e) {
                    Ok(y) => y,
                    Err(h) => burn::tensor::module::linear(h, t.clone(), None),
                }
            }
            (None, None) => burn::tensor::module::linear(
                h,
                self.model.embed_tokens.weight.val().transpose(),
                None,
            ),
        }
    }

    /// Next-token logits `[batch, vocab]` of the last position, extending `cache`.
    pub fn forward_step(
        &self,
        input_ids: Tensor<B, 2, Int>,
        cache: &mut KvCache<B>,
    ) -> Tensor<B, 2> {
        let h = self.forward_hidden(input_ids, None, Some(cache));
        let [b, s, d] = h.dims();
        self.head(h.narrow(1, s - 1, 1).reshape([b, d]))
    }
}

/// The additive causal mask `[1, 1, s, t]` of `s` new positions after `offset` cached ones:
/// `-1e9` where key `j` is after query `i`, or with a `window`, `window` or more positions
/// before it (transformers' `kv_idx > q_idx - sliding_window`).
fn causal_bias<B: Backend>(
    s: usize,
    offset: usize,
    window: Option<usize>,
    device: &B::Device,
) -> Tensor<B, 4> {
    let t = offset + s;
    let mut m = Vec::with_capacity(s * t);
    for i in 0..s {
        let q = offset + i;
        for j in 0..t {
            let hidden = j > q || window.is_some_and(|w| q - j >= w);
            m.push(if hidden { -1e9f32 } else { 0.0 });
        }
    }
    Tensor::<B, 2>::from_data(TensorData::new(m, [s, t]), device).reshape([1, 1, s, t])
}

impl<B: Backend> CausalLm<B> for LlamaForCausalLm<B> {
    fn forward_logits(
        &self,
        input_ids: Tensor<B, 2, Int>,
        attention_mask: Option<Tensor<B, 2, Bool>>,
    ) -> Tensor<B, 3> {
        self.head(self.forward_hidden(input_ids, attention_mask, None))
    }

    fn vocab_size(&self) -> usize {
        self.model.embed_tokens.weight.dims()[0]
    }
}
