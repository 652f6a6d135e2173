//! The Llama family (Llama 2/3, Mistral, Qwen2, SmolLM2): RMSNorm, RoPE (Hugging Face
//! rotate-half), grouped-query attention, SwiGLU MLP, tied or untied head, causal + padding
//! masks, KV cache. Weights are always in Hugging Face layout: a GGUF's q/k rows are
//! un-permuted as the file is read ([`balora_formats::LlamaHfView`]).

use crate::weights::{frozen, load_embedding, load_lora_linear, load_rms, Weights};
use crate::{CausalLm, ModelError};
use balora_adapter::LoraLinear;
use burn::module::Module;
use burn::nn::{Embedding, RmsNorm};
use burn::tensor::activation::{silu, softmax};
use burn::tensor::{backend::Backend, Bool, Int, Tensor, TensorData};
use serde_json::Value;

/// Hyper-parameters of a Llama-family model.
#[derive(Debug, Clone, PartialEq)]
pub struct LlamaConfig {
    /// Vocabulary size.
    pub vocab_size: usize,
    /// Model width d.
    pub hidden_size: usize,
    /// SwiGLU inner width.
    pub intermediate_size: usize,
    /// Number of decoder layers.
    pub num_layers: usize,
    /// Query heads.
    pub num_heads: usize,
    /// Key/value heads (GQA).
    pub num_kv_heads: usize,
    /// Head dimension.
    pub head_dim: usize,
    /// RMSNorm ε.
    pub rms_norm_eps: f64,
    /// RoPE base θ.
    pub rope_theta: f64,
    /// Llama-3 style RoPE frequency scaling `(factor, low_freq_factor, high_freq_factor, original_max_position)`.
    pub rope_llama3_scaling: Option<(f64, f64, f64, f64)>,
    /// Maximum sequence length.
    pub max_position: usize,
    /// LM head shares the embedding matrix.
    pub tie_word_embeddings: bool,
    /// q/k/v projections have biases (Qwen2).
    pub qkv_bias: bool,
}

impl LlamaConfig {
    /// A tiny config for tests.
    pub fn tiny(vocab: usize) -> Self {
        Self {
            vocab_size: vocab,
            hidden_size: 32,
            intermediate_size: 64,
            num_layers: 2,
            num_heads: 4,
            num_kv_heads: 2,
            head_dim: 8,
            rms_norm_eps: 1e-5,
            rope_theta: 10000.0,
            rope_llama3_scaling: None,
            max_position: 128,
            tie_word_embeddings: true,
            qkv_bias: false,
        }
    }

    /// From a Hugging Face `config.json` value (`origin` names the file in errors).
    pub fn from_hf_json(v: &Value, origin: &str) -> Result<Self, ModelError> {
        let arch = v
            .get("model_type")
            .and_then(Value::as_str)
            .unwrap_or("llama");
        if !matches!(arch, "llama" | "mistral" | "qwen2") {
            return Err(ModelError::config(
                origin,
                "model_type",
                format!("`{arch}` is not a Llama-family model (llama, mistral, qwen2)"),
            ));
        }
        let u = |k: &str| -> Result<usize, ModelError> {
            v.get(k)
                .and_then(Value::as_u64)
                .map(|x| x as usize)
                .ok_or_else(|| ModelError::config(origin, k, "missing or not an integer"))
        };
        let f = |k: &str, d: f64| v.get(k).and_then(Value::as_f64).unwrap_or(d);
        let hidden = u("hidden_size")?;
        let heads = u("num_attention_heads")?;
        let kv = v
            .get("num_key_value_heads")
            .and_then(Value::as_u64)
            .map(|x| x as usize)
            .unwrap_or(heads);
        let head_dim = v
            .get("head_dim")
            .and_then(Value::as_u64)
            .map(|x| x as usize)
            .unwrap_or(hidden / heads.max(1));
        // transformers ≥ 5 writes RoPE settings under `rope_parameters` (`rope_theta`,
        // `rope_type` and the scaling fields); older files use top-level `rope_theta` and
        // `rope_scaling`. Both are read; the top-level keys win where both exist.
        let rope_params = v.get("rope_parameters").filter(|p| p.is_object());
        let rope_theta = v
            .get("rope_theta")
            .and_then(Value::as_f64)
            .or_else(|| rope_params.and_then(|p| p.get("rope_theta")?.as_f64()))
            .unwrap_or(10000.0);
        let scaled_params = rope_params.filter(|p| {
            !matches!(
                p.get("rope_type").and_then(Value::as_str),
                None | Some("default")
            )
        });
        let scaling = match v
            .get("rope_scaling")
            .filter(|s| !s.is_null())
            .or(scaled_params)
        {
            None | Some(Value::Null) => None,
            Some(s) => {
                let ty = s
                    .get("rope_type")
                    .or_else(|| s.get("type"))
                    .and_then(Value::as_str)
                    .unwrap_or("");
                if ty != "llama3" {
                    return Err(ModelError::config(
                        origin,
                        "rope_scaling",
                        format!("rope scaling type `{ty}` is not supported (only `llama3`)"),
                    ));
                }
                let g = |k: &str| {
                    s.get(k).and_then(Value::as_f64).ok_or_else(|| {
                        ModelError::config(origin, &format!("rope_scaling.{k}"), "missing")
                    })
                };
                Some((
                    g("factor")?,
                    g("low_freq_factor")?,
                    g("high_freq_factor")?,
                    g("original_max_position_embeddings")?,
                ))
            }
        };
        let cfg = Self {
            vocab_size: u("vocab_size")?,
            hidden_size: hidden,
            intermediate_size: u("intermediate_size")?,
            num_layers: u("num_hidden_layers")?,
            num_heads: heads,
            num_kv_heads: kv,
            head_dim,
            rms_norm_eps: f("rms_norm_eps", 1e-6),
            rope_theta,
            rope_llama3_scaling: scaling,
            max_position: v
                .get("max_position_embeddings")
                .and_then(Value::as_u64)
                .unwrap_or(4096) as usize,
            tie_word_embeddings: v
                .get("tie_word_embeddings")
                .and_then(Value::as_bool)
                .unwrap_or(false),
            qkv_bias: arch == "qwen2"
                || v.get("attention_bias").and_then(Value::as_bool) == Some(true),
        };
        cfg.validate(origin, &|k| k.to_string())?;
        Ok(cfg)
    }

    /// From GGUF metadata. `num(key)` returns a numeric metadata value; `arch` is
    /// `general.architecture`; `vocab` and `tied` come from the tensor index
    /// (`token_embd.weight` rows, absence of `output.weight`).
    pub fn from_gguf(
        num: &dyn Fn(&str) -> Option<f64>,
        arch: &str,
        vocab: usize,
        tied: bool,
        origin: &str,
    ) -> Result<Self, ModelError> {
        if !matches!(arch, "llama" | "mistral" | "qwen2") {
            return Err(ModelError::config(
                origin,
                "general.architecture",
                format!("`{arch}` is not a Llama-family model (llama, mistral, qwen2)"),
            ));
        }
        let req = |k: &str| -> Result<f64, ModelError> {
            let key = format!("{arch}.{k}");
            num(&key).ok_or_else(|| ModelError::config(origin, &key, "missing"))
        };
        let hidden = req("embedding_length")? as usize;
        let heads = req("attention.head_count")? as usize;
        let kv = num(&format!("{arch}.attention.head_count_kv"))
            .map(|x| x as usize)
            .unwrap_or(heads);
        let head_dim = num(&format!("{arch}.rope.dimension_count"))
            .map(|x| x as usize)
            .unwrap_or(hidden / heads.max(1));
        let cfg = Self {
            vocab_size: vocab,
            hidden_size: hidden,
            intermediate_size: req("feed_forward_length")? as usize,
            num_layers: req("block_count")? as usize,
            num_heads: heads,
            num_kv_heads: kv,
            head_dim,
            rms_norm_eps: req("attention.layer_norm_rms_epsilon")?,
            rope_theta: num(&format!("{arch}.rope.freq_base")).unwrap_or(10000.0),
            rope_llama3_scaling: None,
            max_position: num(&format!("{arch}.context_length")).unwrap_or(4096.0) as usize,
            tie_word_embeddings: tied,
            qkv_bias: arch == "qwen2",
        };
        cfg.validate(origin, &|k| crate::validate::gguf_key(arch, k))?;
        Ok(cfg)
    }

    /// Checks every setting on its own and against the others, before anything is allocated
    /// from them ([`crate::validate::check_llama_config`]). `key` maps a Hugging Face field name
    /// to the name in the file (`llama.block_count` for `num_hidden_layers` in a GGUF).
    fn validate(&self, origin: &str, key: &dyn Fn(&str) -> String) -> Result<(), ModelError> {
        crate::validate::check_llama_config(self, origin, key)
    }

    /// Inverse RoPE frequencies (`head_dim/2` values), with Llama-3 scaling if configured.
    pub fn inv_freq(&self) -> Vec<f64> {
        let half = self.head_dim / 2;
        (0..half)
            .map(|i| {
                let f = 1.0 / self.rope_theta.powf(2.0 * i as f64 / self.head_dim as f64);
                match self.rope_llama3_scaling {
                    None => f,
                    Some((factor, low, high, orig)) => {
                        let wavelen = 2.0 * std::f64::consts::PI / f;
                        let low_wl = orig / low;
                        let high_wl = orig / high;
                        if wavelen < high_wl {
                            f
                        } else if wavelen > low_wl {
                            f / factor
                        } else {
                            let s = (orig / wavelen - low) / (high - low);
                            (1.0 - s) * f / factor + s * f
                        }
                    }
                }
            })
            .collect()
    }
}

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

/// Per-layer key/value cache for incremental decoding.
#[derive(Debug, Clone)]
pub struct KvCache<B: Backend> {
    layers: Vec<Option<(Tensor<B, 4>, Tensor<B, 4>)>>,
    len: usize,
}

impl<B: Backend> KvCache<B> {
    /// An empty cache for `layers` layers.
    pub fn new(layers: usize) -> Self {
        Self {
            layers: vec![None; layers],
            len: 0,
        }
    }
    /// Number of cached positions.
    pub fn len(&self) -> usize {
        self.len
    }
    /// Whether nothing is cached.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }
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
        let (hd, half) = (cfg.head_dim, cfg.head_dim / 2);
        let inv = cfg.inv_freq();
        let n = cfg.max_position.max(1);
        // Dimension `j` of a head belongs to pair `j % half` (rotate-half), and
        // `(x·R)[j] = sign(j)·x[partner(j)]`.
        let pair = |j: usize| j % half;
        let partner = |j: usize| -> (usize, f32) {
            if j < half {
                (j + half, -1.0)
            } else {
                (j - half, 1.0)
            }
        };
        let mut cos = Vec::with_capacity(n * hd);
        let mut sin = Vec::with_capacity(n * hd);
        for p in 0..n {
            for j in 0..hd {
                let a = p as f64 * inv[pair(j)];
                cos.push(a.cos() as f32);
                sin.push(a.sin() as f32);
            }
        }
        let mut rot = vec![0f32; hd * hd];
        for j in 0..hd {
            let (from, sign) = partner(j);
            rot[from * hd + j] = sign;
        }
        Self {
            model,
            lm_head,
            rope_cos: Tensor::from_data(TensorData::new(cos, [n, hd]), device),
            rope_sin: Tensor::from_data(TensorData::new(sin, [n, hd]), device),
            rope_rot: Tensor::from_data(TensorData::new(rot, [hd, hd]), device),
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

    /// The RoPE tables `(cos, sin)` for `[batch, seq, heads, head_dim]` inputs at positions
    /// `offset..offset + seq`, materialised at full size once per forward: element-wise ops
    /// between same-shaped contiguous tensors are the fast case on every backend (a broadcast
    /// operand is a strided read on CPU backends, in each of the 60 uses and their backwards).
    fn rope_tables(&self, b: usize, s: usize, heads: usize, offset: usize) -> [Tensor<B, 4>; 2] {
        let hd = self.head_dim;
        [&self.rope_cos, &self.rope_sin].map(|t| {
            t.clone()
                .narrow(0, offset, s)
                .reshape([1, s, 1, hd])
                .repeat_dim(0, b)
                .repeat_dim(2, heads)
        })
    }

    /// RoPE of `x` `[batch, seq, heads, head_dim]` with tables from [`Self::rope_tables`]:
    /// `x ⊙ cos + (x·R) ⊙ sin`.
    fn rope(&self, x: Tensor<B, 4>, [cos, sin]: &[Tensor<B, 4>; 2]) -> Tensor<B, 4> {
        let [b, s, h, hd] = x.dims();
        let rotated = x
            .clone()
            .reshape([b * s * h, hd])
            .matmul(self.rope_rot.clone())
            .reshape([b, s, h, hd]);
        x * cos.clone() + rotated * sin.clone()
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
        let (nh, nkv, hd) = (self.num_heads, self.num_kv_heads, self.head_dim);
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
        // Full-size once per forward, reused by every layer (see `rope_tables`).
        let bias = bias.repeat_dim(1, nh);
        let bias = if bias.dims()[0] == 1 {
            bias.repeat_dim(0, b)
        } else {
            bias
        };
        let rope_q = self.rope_tables(b, s, nh, offset);
        let rope_k = self.rope_tables(b, s, nkv, offset);
        let mut x = self.model.embed_tokens.forward(input_ids);
        let scale = 1.0 / (hd as f64).sqrt();
        for (li, layer) in self.model.layers.iter().enumerate() {
            let h = layer.input_layernorm.forward(x.clone());
            let at = &layer.self_attn;
            // RoPE on the projections' own [b, s, heads, hd] layout (contiguous), then heads first.
            let q = self
                .rope(
                    at.q_proj.forward(h.clone()).reshape([b, s, nh, hd]),
                    &rope_q,
                )
                .swap_dims(1, 2);
            let mut k = self
                .rope(
                    at.k_proj.forward(h.clone()).reshape([b, s, nkv, hd]),
                    &rope_k,
                )
                .swap_dims(1, 2);
            let mut v = at
                .v_proj
                .forward(h)
                .reshape([b, s, nkv, hd])
                .swap_dims(1, 2);
            if let Some(c) = cache.as_deref_mut() {
                if let Some((pk, pv)) = c.layers[li].take() {
                    k = Tensor::cat(vec![pk, k], 2);
                    v = Tensor::cat(vec![pv, v], 2);
                }
                c.layers[li] = Some((k.clone(), v.clone()));
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
            let scores = q.matmul(k.swap_dims(2, 3)).mul_scalar(scale) + bias.clone();
            let probs = softmax(scores, 3);
            let o = probs.matmul(v).swap_dims(1, 2).reshape([b, s, nh * hd]);
            x = x + at.o_proj.forward(o);
            let h = layer.post_attention_layernorm.forward(x.clone());
            let m = &layer.mlp;
            let (gate, up) = (m.gate_proj.forward(h.clone()), m.up_proj.forward(h));
            let a = match balora_cpu::swiglu(gate, up) {
                Ok(a) => a,
                Err((gate, up)) => silu(gate) * up,
            };
            x = x + m.down_proj.forward(a);
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

/// Maps a GGUF tensor name of the Llama family to its Hugging Face name (the one table of the
/// project: [`balora_formats::llama_gguf_to_hf`]).
pub fn gguf_to_hf_name(name: &str) -> Option<String> {
    balora_formats::llama_gguf_to_hf(name)
}

/// The inverse of [`gguf_to_hf_name`] ([`balora_formats::llama_hf_to_gguf`]).
pub fn hf_to_gguf_name(name: &str) -> Option<String> {
    balora_formats::llama_hf_to_gguf(name)
}
