//! GPT-NeoX / Pythia (`GPTNeoXForCausalLM`): LayerNorm pre-norms, fused `query_key_value`
//! whose output is laid out per head `[heads, 3, head_dim]` (q, k, v of head h are the three
//! consecutive `head_dim` blocks at `3·h·head_dim`), partial rotary embedding (rotate-half on
//! the first `rotary_ndims = ⌊head_dim·rotary_pct⌋` dimensions of each head), parallel
//! (`x + attn(ln₁(x)) + mlp(ln₂(x))`) or serial residual, GELU MLP
//! (`dense_h_to_4h` → `dense_4h_to_h`), untied `embed_out`.
//!
//! The projections are ordinary `nn.Linear` layers (`[out, in]` in files), so PEFT's adapters
//! on them (`query_key_value`, `dense`, `dense_h_to_4h`, `dense_4h_to_h`) are plain LoRA; the
//! fused `query_key_value` carries one adapter over its whole `3·d` output, as in PEFT.

pub use super::neox_config::GptNeoXConfig;
use super::{act, attend, causal_bias};
use crate::export::NamedTensor;
use crate::linears::{AdapterHost, LinearInfo};
use crate::weights::{load_embedding, load_layer_norm, load_lora_linear, to_vec, Weights};
use crate::{CausalLm, ModelError};
use balora_adapter::LoraLinear;
use burn::module::Module;
use burn::nn::{Embedding, LayerNorm};
use burn::tensor::{backend::Backend, Bool, Int, Tensor, TensorData};

/// Attention (HF `attention.`).
#[derive(Module, Debug)]
pub struct NeoXAttention<B: Backend> {
    /// Fused q, k, v `[d → 3d]`, output per head `[q | k | v]`.
    pub query_key_value: LoraLinear<B>,
    /// Output projection.
    pub dense: LoraLinear<B>,
}

/// MLP (HF `mlp.`).
#[derive(Module, Debug)]
pub struct NeoXMlp<B: Backend> {
    /// Up projection.
    pub dense_h_to_4h: LoraLinear<B>,
    /// Down projection.
    pub dense_4h_to_h: LoraLinear<B>,
}

/// One layer (HF `gpt_neox.layers.N.`).
#[derive(Module, Debug)]
pub struct NeoXLayer<B: Backend> {
    /// LayerNorm before attention.
    pub input_layernorm: LayerNorm<B>,
    /// LayerNorm before the MLP.
    pub post_attention_layernorm: LayerNorm<B>,
    /// Attention.
    pub attention: NeoXAttention<B>,
    /// MLP.
    pub mlp: NeoXMlp<B>,
}

/// The decoder stack (HF `gpt_neox.`).
#[derive(Module, Debug)]
pub struct NeoXModel<B: Backend> {
    /// Token embedding.
    pub embed_in: Embedding<B>,
    /// Layers.
    pub layers: Vec<NeoXLayer<B>>,
    /// Final LayerNorm.
    pub final_layer_norm: LayerNorm<B>,
}

/// GPT-NeoX with its LM head. PEFT module paths: `gpt_neox.layers.0.attention.query_key_value`,
/// ..., `embed_out`.
#[derive(Module, Debug)]
pub struct GptNeoXForCausalLm<B: Backend> {
    /// Decoder.
    pub gpt_neox: NeoXModel<B>,
    /// Untied head (`None`: tied to `gpt_neox.embed_in`).
    pub embed_out: Option<LoraLinear<B>>,
    /// Tied head: a contiguous `[d, vocab]` copy of `embed_in`.
    pub tied_head: Option<Tensor<B, 2>>,
    /// `[max_position, rotary_ndims]` cos table (rotate-half: dimension i pairs with
    /// i + rotary_ndims/2, both at the pair's angle).
    pub rope_cos: Tensor<B, 2>,
    /// `[max_position, rotary_ndims]` sin table.
    pub rope_sin: Tensor<B, 2>,
    /// Attention heads.
    pub num_heads: usize,
    /// Parallel residual.
    pub parallel_residual: bool,
    /// Tanh-approximated GELU.
    pub gelu_tanh: bool,
}

/// The rotary tables `[n, rot]` (cos, sin) at `inv_freq_i = θ^(−2i/rot)`, `i < rot/2`.
fn rope_tables<B: Backend>(cfg: &GptNeoXConfig, dev: &B::Device) -> [Tensor<B, 2>; 2] {
    let (n, rot) = (cfg.max_position, cfg.rotary_ndims());
    let half = rot / 2;
    let mut cos = Vec::with_capacity(n * rot);
    let mut sin = Vec::with_capacity(n * rot);
    for p in 0..n {
        for j in 0..rot {
            let i = j % half.max(1);
            let f = 1.0 / cfg.rope_theta.powf(2.0 * i as f64 / rot as f64);
            let a = p as f64 * f;
            cos.push(a.cos() as f32);
            sin.push(a.sin() as f32);
        }
    }
    [cos, sin].map(|t| Tensor::from_data(TensorData::new(t, [n, rot]), dev))
}

/// Rotate-half RoPE on the first `rot` dimensions of `x` `[b, h, s, hd]`; `cs` are the tables
/// narrowed to the `s` positions and expanded to `[b, h, s, rot]`.
fn rope<B: Backend>(x: Tensor<B, 4>, cs: &[Tensor<B, 4>; 2]) -> Tensor<B, 4> {
    let hd = x.dims()[3];
    let rot = cs[0].dims()[3];
    if rot == 0 {
        return x;
    }
    let half = rot / 2;
    let xr = x.clone().narrow(3, 0, rot);
    let x1 = xr.clone().narrow(3, 0, half);
    let x2 = xr.clone().narrow(3, half, half);
    let rotated = Tensor::cat(vec![x2.neg(), x1], 3);
    let y = xr * cs[0].clone() + rotated * cs[1].clone();
    if rot == hd {
        y
    } else {
        Tensor::cat(vec![y, x.narrow(3, rot, hd - rot)], 3)
    }
}

impl<B: Backend> GptNeoXForCausalLm<B> {
    /// Loads Hugging Face names (`gpt_neox.layers.0.attention.query_key_value.weight`, ...,
    /// `embed_out.weight`).
    pub fn load(cfg: &GptNeoXConfig, w: &dyn Weights, dev: &B::Device) -> Result<Self, ModelError> {
        let (d, eps, ff) = (cfg.hidden_size, cfg.layer_norm_eps, cfg.intermediate_size);
        let mut layers = Vec::with_capacity(cfg.num_layers);
        for l in 0..cfg.num_layers {
            let p = format!("gpt_neox.layers.{l}");
            let lin = |n: &str, i, o, bias| {
                load_lora_linear::<B>(w, &format!("{p}.{n}"), bias, i, o, dev)
            };
            let ln = |n: &str| load_layer_norm::<B>(w, &format!("{p}.{n}"), d, eps, dev);
            let ab = cfg.attention_bias;
            layers.push(NeoXLayer {
                input_layernorm: ln("input_layernorm")?,
                post_attention_layernorm: ln("post_attention_layernorm")?,
                attention: NeoXAttention {
                    query_key_value: lin("attention.query_key_value", d, 3 * d, ab)?,
                    dense: lin("attention.dense", d, d, ab)?,
                },
                mlp: NeoXMlp {
                    dense_h_to_4h: lin("mlp.dense_h_to_4h", d, ff, true)?,
                    dense_4h_to_h: lin("mlp.dense_4h_to_h", ff, d, true)?,
                },
            });
        }
        let gpt_neox = NeoXModel {
            embed_in: load_embedding(w, "gpt_neox.embed_in.weight", cfg.vocab_size, d, dev)?,
            layers,
            final_layer_norm: load_layer_norm(w, "gpt_neox.final_layer_norm", d, eps, dev)?,
        };
        let embed_out = if cfg.tie_word_embeddings {
            None
        } else {
            Some(load_lora_linear::<B>(
                w,
                "embed_out",
                false,
                d,
                cfg.vocab_size,
                dev,
            )?)
        };
        let tied_head = embed_out
            .is_none()
            .then(|| super::tied_copy(&gpt_neox.embed_in));
        let [rope_cos, rope_sin] = rope_tables::<B>(cfg, dev);
        Ok(Self {
            gpt_neox,
            embed_out,
            tied_head,
            rope_cos,
            rope_sin,
            num_heads: cfg.num_heads,
            parallel_residual: cfg.parallel_residual,
            gelu_tanh: cfg.gelu_tanh,
        })
    }

    /// Hidden states after the final LayerNorm, `[batch, seq, d]`; `attention_mask` as in
    /// [`CausalLm::forward_logits`]. `seq` must not exceed `max_position_embeddings`.
    pub fn forward_hidden(
        &self,
        input_ids: Tensor<B, 2, Int>,
        attention_mask: Option<Tensor<B, 2, Bool>>,
    ) -> Tensor<B, 3> {
        let [b, s] = input_ids.dims();
        let dev = input_ids.device();
        let nh = self.num_heads;
        let bias = causal_bias::<B>(b, s, nh, attention_mask, &dev);
        let rot = self.rope_cos.dims()[1];
        let cs = [&self.rope_cos, &self.rope_sin].map(|t| {
            t.clone()
                .narrow(0, 0, s)
                .reshape([1, 1, s, rot])
                .expand([b, nh, s, rot])
        });
        let mut x = self.gpt_neox.embed_in.forward(input_ids);
        let d = x.dims()[2];
        let hd = d / nh;
        let scale = 1.0 / (hd as f64).sqrt();
        for l in &self.gpt_neox.layers {
            let h = l.input_layernorm.forward(x.clone());
            // [b, s, 3d] → [b, h, s, 3·hd]: each head's q | k | v are consecutive.
            let qkv = l
                .attention
                .query_key_value
                .forward(h)
                .reshape([b, s, nh, 3 * hd])
                .swap_dims(1, 2);
            let part = |k: usize| qkv.clone().narrow(3, k * hd, hd);
            let ctx = attend(
                rope(part(0), &cs),
                rope(part(1), &cs),
                part(2),
                &bias,
                scale,
            );
            let a = l.attention.dense.forward(ctx);
            let mlp = |y: Tensor<B, 3>| {
                let m = &l.mlp;
                m.dense_4h_to_h
                    .forward(act(m.dense_h_to_4h.forward(y), self.gelu_tanh))
            };
            x = if self.parallel_residual {
                let m = mlp(l.post_attention_layernorm.forward(x.clone()));
                x + a + m
            } else {
                let y = x + a;
                y.clone() + mlp(l.post_attention_layernorm.forward(y))
            };
        }
        self.gpt_neox.final_layer_norm.forward(x)
    }

    /// Logits for hidden states `[.., d]`.
    pub fn head<const D: usize>(&self, h: Tensor<B, D>) -> Tensor<B, D> {
        let e = &self.gpt_neox.embed_in;
        balora_adapter::over_rows(h, |h| match (&self.embed_out, &self.tied_head) {
            (Some(l), _) => l.forward(h),
            (None, Some(c)) => super::tied_logits(h, c, e),
            (None, None) => burn::tensor::module::linear(h, e.weight.val().transpose(), None),
        })
    }

    /// Every weight in Hugging Face `GPTNeoXForCausalLM` names and layout. Adapters are not
    /// included: merge first.
    pub fn hf_tensors(&self) -> Vec<NamedTensor> {
        let m = &self.gpt_neox;
        let mut out: Vec<NamedTensor> = vec![(
            "gpt_neox.embed_in.weight".into(),
            m.embed_in.weight.dims().to_vec(),
            to_vec(m.embed_in.weight.val()),
        )];
        let ln = super::push_layer_norm::<B>;
        for (i, l) in m.layers.iter().enumerate() {
            let p = format!("gpt_neox.layers.{i}");
            ln(
                &mut out,
                &format!("{p}.input_layernorm"),
                &l.input_layernorm,
            );
            ln(
                &mut out,
                &format!("{p}.post_attention_layernorm"),
                &l.post_attention_layernorm,
            );
        }
        ln(&mut out, "gpt_neox.final_layer_norm", &m.final_layer_norm);
        for (info, l) in self.linears() {
            let (din, dout) = l.dims();
            let w = to_vec(l.base.weight.val().transpose());
            out.push((format!("{}.weight", info.path), vec![dout, din], w));
            if let Some(b) = &l.base.bias {
                out.push((format!("{}.bias", info.path), vec![dout], to_vec(b.val())));
            }
        }
        out
    }
}

impl<B: Backend> CausalLm<B> for GptNeoXForCausalLm<B> {
    fn forward_logits(
        &self,
        input_ids: Tensor<B, 2, Int>,
        attention_mask: Option<Tensor<B, 2, Bool>>,
    ) -> Tensor<B, 3> {
        self.head(self.forward_hidden(input_ids, attention_mask))
    }

    fn vocab_size(&self) -> usize {
        self.gpt_neox.embed_in.weight.dims()[0]
    }
}

const NAMES: [&str; 4] = [
    "attention.query_key_value",
    "attention.dense",
    "mlp.dense_h_to_4h",
    "mlp.dense_4h_to_h",
];

fn infos(layers: usize, untied: bool) -> Vec<LinearInfo> {
    let mut v: Vec<LinearInfo> = (0..layers)
        .flat_map(|i| {
            NAMES
                .iter()
                .map(move |n| LinearInfo::new(format!("gpt_neox.layers.{i}.{n}"), Some(i)))
        })
        .collect();
    if untied {
        v.push(LinearInfo {
            is_head: true,
            ..LinearInfo::new("embed_out".into(), None)
        });
    }
    v
}

impl<B: Backend> AdapterHost<B> for GptNeoXForCausalLm<B> {
    fn linears(&self) -> Vec<(LinearInfo, &LoraLinear<B>)> {
        let mut refs: Vec<&LoraLinear<B>> = Vec::new();
        for l in &self.gpt_neox.layers {
            let (a, m) = (&l.attention, &l.mlp);
            refs.extend([
                &a.query_key_value,
                &a.dense,
                &m.dense_h_to_4h,
                &m.dense_4h_to_h,
            ]);
        }
        refs.extend(self.embed_out.as_ref());
        let n = self.gpt_neox.layers.len();
        infos(n, self.embed_out.is_some())
            .into_iter()
            .zip(refs)
            .collect()
    }

    fn linears_mut(&mut self) -> Vec<(LinearInfo, &mut LoraLinear<B>)> {
        let n = self.gpt_neox.layers.len();
        let untied = self.embed_out.is_some();
        let mut refs: Vec<&mut LoraLinear<B>> = Vec::new();
        for l in &mut self.gpt_neox.layers {
            let (a, m) = (&mut l.attention, &mut l.mlp);
            refs.extend([
                &mut a.query_key_value,
                &mut a.dense,
                &mut m.dense_h_to_4h,
                &mut m.dense_4h_to_h,
            ]);
        }
        refs.extend(self.embed_out.as_mut());
        infos(n, untied).into_iter().zip(refs).collect()
    }
}
