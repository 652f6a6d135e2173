//! The Llama-family causal LM: decoder stack, head (tied or untied), loading, and the forward
//! pass with causal + padding masks and an optional KV cache.

use super::layers::{LlamaAttention, LlamaLayer, LlamaMlp, Pass};
use super::{rope, KvCache, LlamaConfig};
use crate::weights::{frozen, load_embedding, load_lora_linear, load_rms, Weights};
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
}

impl<B: Backend> LlamaForCausalLm<B> {
    /// A randomly initialised model (tests, experiments).
    pub fn random(cfg: &LlamaConfig, device: &B::Device) -> Self {
        use burn::tensor::Distribution;
        let (d, hd) = (cfg.hidden_size, cfg.head_dim);
        let lin = |i: usize, o: usize, bias: bool| LoraLinear::new(i, o, bias, device);
        let rms = |d: usize| {
            let mut n = burn::nn::RmsNormConfig::new(d)
                .with_epsilon(cfg.rms_norm_eps)
                .init(device);
            n.gamma = frozen(Tensor::random([d], Distribution::Uniform(0.5, 1.5), device));
            n
        };
        let layers = (0..cfg.num_layers)
            .map(|_| LlamaLayer {
                self_attn: LlamaAttention {
                    q_proj: lin(d, cfg.num_heads * hd, cfg.qkv_bias),
                    k_proj: lin(d, cfg.num_kv_heads * hd, cfg.qkv_bias),
                    v_proj: lin(d, cfg.num_kv_heads * hd, cfg.qkv_bias),
                    o_proj: lin(cfg.num_heads * hd, d, false),
                },
                mlp: LlamaMlp {
                    gate_proj: lin(d, cfg.intermediate_size, false),
                    up_proj: lin(d, cfg.intermediate_size, false),
                    down_proj: lin(cfg.intermediate_size, d, false),
                },
                input_layernorm: rms(d),
                post_attention_layernorm: rms(d),
            })
            .collect();
        let embed = Embedding {
            weight: frozen(Tensor::random(
                [cfg.vocab_size, d],
                Distribution::Normal(0.0, 1.0),
                device,
            )),
        };
        let lm_head = (!cfg.tie_word_embeddings).then(|| lin(d, cfg.vocab_size, false));
        Self::assemble(
            cfg,
            LlamaModel {
                embed_tokens: embed,
                layers,
                norm: rms(d),
            },
            lm_head,
            device,
        )
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
        let [rope_cos, rope_sin, rope_rot] = rope::tables(cfg, device);
        Self {
            model,
            lm_head,
            rope_cos,
            rope_sin,
            rope_rot,
            num_heads: cfg.num_heads,
            num_kv_heads: cfg.num_kv_heads,
            head_dim: cfg.head_dim,
            tied_head,
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
        let (d, hd) = (cfg.hidden_size, cfg.head_dim);
        let mut layers = Vec::with_capacity(cfg.num_layers);
        for l in 0..cfg.num_layers {
            let p = format!("model.layers.{l}");
            let lin = |name: &str, i: usize, o: usize, bias: bool| {
                load_lora_linear::<B>(w, &format!("{p}.{name}"), bias, i, o, device)
            };
            layers.push(LlamaLayer {
                self_attn: LlamaAttention {
                    q_proj: lin("self_attn.q_proj", d, cfg.num_heads * hd, cfg.qkv_bias)?,
                    k_proj: lin("self_attn.k_proj", d, cfg.num_kv_heads * hd, cfg.qkv_bias)?,
                    v_proj: lin("self_attn.v_proj", d, cfg.num_kv_heads * hd, cfg.qkv_bias)?,
                    o_proj: lin("self_attn.o_proj", cfg.num_heads * hd, d, false)?,
                },
                mlp: LlamaMlp {
                    gate_proj: lin("mlp.gate_proj", d, cfg.intermediate_size, false)?,
                    up_proj: lin("mlp.up_proj", d, cfg.intermediate_size, false)?,
                    down_proj: lin("mlp.down_proj", cfg.intermediate_size, d, false)?,
                },
                input_layernorm: load_rms(
                    w,
                    &format!("{p}.input_layernorm.weight"),
                    d,
                    cfg.rms_norm_eps,
                    device,
                )?,
                post_attention_layernorm: load_rms(
                    w,
                    &format!("{p}.post_attention_layernorm.weight"),
                    d,
                    cfg.rms_norm_eps,
                    device,
                )?,
            });
        }
        let model = LlamaModel {
            embed_tokens: load_embedding(
                w,
                "model.embed_tokens.weight",
                cfg.vocab_size,
                d,
                device,
            )?,
            layers,
            norm: load_rms(w, "model.norm.weight", d, cfg.rms_norm_eps, device)?,
        };
        let lm_head = if cfg.tie_word_embeddings {
            None
        } else {
            Some(load_lora_linear::<B>(
                w,
                "lm_head",
                false,
                d,
                cfg.vocab_size,
                device,
            )?)
        };
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
        // Additive mask [b or 1, 1, s, t]: causal, plus key padding.
        let mut causal = Vec::with_capacity(s * t);
        for i in 0..s {
            for j in 0..t {
                causal.push(if j > offset + i { -1e9f32 } else { 0.0 });
            }
        }
        let mut bias: Tensor<B, 4> =
            Tensor::<B, 2>::from_data(TensorData::new(causal, [s, t]), &device)
                .reshape([1, 1, s, t]);
        if let Some(m) = attention_mask {
            let [mb, mt] = m.dims();
            // The mask covers the whole (cached + new) key range or only the new tokens.
            let m = if mt == t || offset == 0 {
                m.float()
            } else {
                Tensor::cat(vec![Tensor::ones([mb, offset], &device), m.float()], 1)
            };
            let pad = (m.neg() + 1.0).mul_scalar(-1e9).reshape([mb, 1, 1, t]);
            bias = bias + pad;
        }
        // Full-size once per forward, reused by every layer (see `rope::expand`).
        let bias = bias.repeat_dim(1, nh);
        let bias = if bias.dims()[0] == 1 {
            bias.repeat_dim(0, b)
        } else {
            bias
        };
        let tables = [&self.rope_cos, &self.rope_sin];
        let pass = Pass {
            b,
            s,
            t,
            nh,
            nkv,
            hd: self.head_dim,
            rope_q: rope::expand(tables, b, s, nh, offset),
            rope_k: rope::expand(tables, b, s, nkv, offset),
            rot: self.rope_rot.clone(),
            bias,
        };
        let mut x = self.model.embed_tokens.forward(input_ids);
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
