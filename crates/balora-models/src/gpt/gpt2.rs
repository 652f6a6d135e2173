//! GPT-2 (`GPT2LMHeadModel`): token + learned absolute position embeddings, pre-LN blocks
//! (`ln_1` → fused `c_attn` → `c_proj`; `ln_2` → `c_fc` → gelu_new → `c_proj`), `ln_f`, head
//! tied to `wte` (or an untied `lm_head`).
//!
//! GPT-2's projections are Hugging Face `Conv1D` layers: `y = x·W + b` with `W` stored
//! `[in, out]`, which is burn's own `Linear` layout, so the weights are read and written as they
//! are (no transpose) and [`LinearInfo::fan_in_fan_out`] is set: PEFT adapters on them carry
//! `fan_in_fan_out=True` and merge as `W += (B·A)ᵀ·scale`, which is what a merge into a burn
//! `[in, out]` weight computes anyway.

use super::{act, attend, causal_bias, cfg_bool, cfg_f64, cfg_usize, gelu_kind, heads};
use crate::export::NamedTensor;
use crate::linears::{AdapterHost, LinearInfo};
use crate::weights::{
    fetch_checked, frozen, load_embedding, load_layer_norm, load_lora_linear, tensor1, tensor2,
    to_vec, Weights,
};
use crate::{CausalLm, ModelError};
use balora_adapter::LoraLinear;
use burn::module::Module;
use burn::nn::{Embedding, LayerNorm, Linear};
use burn::tensor::{backend::Backend, Bool, Int, Tensor};
use serde_json::Value;

/// Hyper-parameters of a GPT-2 model (`config.json` names in the field docs).
#[derive(Debug, Clone, PartialEq)]
pub struct Gpt2Config {
    /// `vocab_size`.
    pub vocab_size: usize,
    /// `n_embd`: width d.
    pub hidden_size: usize,
    /// `n_layer`.
    pub num_layers: usize,
    /// `n_head`.
    pub num_heads: usize,
    /// `n_inner` (`null`: 4·d).
    pub inner_size: usize,
    /// `n_positions`: rows of the position embedding.
    pub max_position: usize,
    /// `layer_norm_epsilon`.
    pub layer_norm_eps: f64,
    /// `activation_function` is a tanh-approximated GELU (`gelu_new`); `false`: exact GELU.
    pub gelu_tanh: bool,
    /// `scale_attn_weights`: scores divided by √head_dim.
    pub scale_attn_weights: bool,
    /// `scale_attn_by_inverse_layer_idx`: scores of layer i further divided by i + 1.
    pub scale_by_inverse_layer: bool,
    /// `tie_word_embeddings`.
    pub tie_word_embeddings: bool,
}

impl Gpt2Config {
    /// From a Hugging Face `config.json` value (`origin` names the file in errors).
    pub fn from_hf_json(v: &Value, origin: &str) -> Result<Self, ModelError> {
        let mt = v
            .get("model_type")
            .and_then(Value::as_str)
            .unwrap_or("gpt2");
        if mt != "gpt2" {
            return Err(ModelError::config(
                origin,
                "model_type",
                format!("`{mt}` is not GPT-2 (`gpt2`)"),
            ));
        }
        if cfg_bool(v, "add_cross_attention", false, origin)? {
            return Err(ModelError::config(
                origin,
                "add_cross_attention",
                "cross-attention (encoder-decoder GPT-2) is not supported",
            ));
        }
        let d = cfg_usize(v, &["n_embd", "hidden_size"], origin)?;
        let act = v
            .get("activation_function")
            .and_then(Value::as_str)
            .unwrap_or("gelu_new");
        let inner = match v.get("n_inner").filter(|x| !x.is_null()) {
            None => d.saturating_mul(4),
            Some(_) => cfg_usize(v, &["n_inner"], origin)?,
        };
        let cfg = Self {
            vocab_size: cfg_usize(v, &["vocab_size"], origin)?,
            hidden_size: d,
            num_layers: cfg_usize(v, &["n_layer", "num_hidden_layers"], origin)?,
            num_heads: cfg_usize(v, &["n_head", "num_attention_heads"], origin)?,
            inner_size: inner,
            max_position: cfg_usize(v, &["n_positions", "max_position_embeddings"], origin)?,
            layer_norm_eps: cfg_f64(v, "layer_norm_epsilon", 1e-5, origin)?,
            gelu_tanh: gelu_kind(act, "activation_function", origin)?,
            scale_attn_weights: cfg_bool(v, "scale_attn_weights", true, origin)?,
            scale_by_inverse_layer: cfg_bool(v, "scale_attn_by_inverse_layer_idx", false, origin)?,
            tie_word_embeddings: cfg_bool(v, "tie_word_embeddings", true, origin)?,
        };
        cfg.validate(origin)?;
        Ok(cfg)
    }

    /// Every setting on its own and against the others, before anything is allocated.
    fn validate(&self, origin: &str) -> Result<(), ModelError> {
        use crate::validate::{check_positive_finite, check_size, MAX_DIM, MAX_LAYERS};
        check_size(origin, "vocab_size", self.vocab_size, MAX_DIM)?;
        check_size(origin, "n_embd", self.hidden_size, MAX_DIM)?;
        check_size(origin, "n_layer", self.num_layers, MAX_LAYERS)?;
        check_size(origin, "n_head", self.num_heads, MAX_DIM)?;
        check_size(origin, "n_inner", self.inner_size, MAX_DIM)?;
        check_size(origin, "n_positions", self.max_position, MAX_DIM)?;
        check_positive_finite(origin, "layer_norm_epsilon", self.layer_norm_eps)?;
        if !self.hidden_size.is_multiple_of(self.num_heads) {
            return Err(ModelError::config(
                origin,
                "n_head",
                format!(
                    "{} does not divide n_embd = {}",
                    self.num_heads, self.hidden_size
                ),
            ));
        }
        Ok(())
    }
}

/// Attention (HF `attn.`): fused `c_attn` `[d → 3d]` (q | k | v) and `c_proj`.
#[derive(Module, Debug)]
pub struct Gpt2Attention<B: Backend> {
    /// Fused q, k, v projection.
    pub c_attn: LoraLinear<B>,
    /// Output projection.
    pub c_proj: LoraLinear<B>,
}

/// MLP (HF `mlp.`): `c_fc` `[d → inner]`, gelu, `c_proj` `[inner → d]`.
#[derive(Module, Debug)]
pub struct Gpt2Mlp<B: Backend> {
    /// Up projection.
    pub c_fc: LoraLinear<B>,
    /// Down projection.
    pub c_proj: LoraLinear<B>,
}

/// One block (HF `transformer.h.N.`).
#[derive(Module, Debug)]
pub struct Gpt2Block<B: Backend> {
    /// Pre-attention LayerNorm.
    pub ln_1: LayerNorm<B>,
    /// Attention.
    pub attn: Gpt2Attention<B>,
    /// Pre-MLP LayerNorm.
    pub ln_2: LayerNorm<B>,
    /// MLP.
    pub mlp: Gpt2Mlp<B>,
}

/// The decoder stack (HF `transformer.`).
#[derive(Module, Debug)]
pub struct Gpt2Model<B: Backend> {
    /// Token embedding.
    pub wte: Embedding<B>,
    /// Learned absolute position embedding.
    pub wpe: Embedding<B>,
    /// Blocks.
    pub h: Vec<Gpt2Block<B>>,
    /// Final LayerNorm.
    pub ln_f: LayerNorm<B>,
}

/// GPT-2 with its LM head. PEFT module paths: `transformer.h.0.attn.c_attn`, ...
#[derive(Module, Debug)]
pub struct Gpt2LmHeadModel<B: Backend> {
    /// Decoder.
    pub transformer: Gpt2Model<B>,
    /// Untied head (`None`: tied to `transformer.wte`).
    pub lm_head: Option<LoraLinear<B>>,
    /// Tied head: a contiguous `[d, vocab]` copy of `wte`.
    pub tied_head: Option<Tensor<B, 2>>,
    /// Attention heads.
    pub num_heads: usize,
    /// gelu_new (`true`) or exact GELU.
    pub gelu_tanh: bool,
    /// Scores divided by √head_dim.
    pub scale_attn_weights: bool,
    /// Scores of layer i further divided by i + 1.
    pub scale_by_inverse_layer: bool,
}

/// A frozen [`LoraLinear`] from a Hugging Face `Conv1D` (`{prefix}.weight` `[in, out]`, which is
/// burn's layout: read as is, and `{prefix}.bias` `[out]`).
fn load_conv1d<B: Backend>(
    w: &dyn Weights,
    prefix: &str,
    d_in: usize,
    d_out: usize,
    dev: &B::Device,
) -> Result<LoraLinear<B>, ModelError> {
    let wd = fetch_checked(w, &format!("{prefix}.weight"), &[d_in, d_out])?;
    let bd = fetch_checked(w, &format!("{prefix}.bias"), &[d_out])?;
    Ok(LoraLinear::from_base(Linear {
        weight: frozen(tensor2::<B>(wd, [d_in, d_out], dev)),
        bias: Some(frozen(tensor1::<B>(bd, d_out, dev))),
    }))
}

impl<B: Backend> Gpt2LmHeadModel<B> {
    /// Loads Hugging Face names (`transformer.h.0.attn.c_attn.weight`, ...; checkpoints of a
    /// bare `GPT2Model`, without the `transformer.` prefix, are read too).
    pub fn load(cfg: &Gpt2Config, w: &dyn Weights, dev: &B::Device) -> Result<Self, ModelError> {
        let pre = if w.contains("transformer.wte.weight") || !w.contains("wte.weight") {
            "transformer."
        } else {
            ""
        };
        let (d, eps) = (cfg.hidden_size, cfg.layer_norm_eps);
        let mut h = Vec::with_capacity(cfg.num_layers);
        for l in 0..cfg.num_layers {
            let p = format!("{pre}h.{l}");
            let conv = |n: &str, i, o| load_conv1d::<B>(w, &format!("{p}.{n}"), i, o, dev);
            let ln = |n: &str| load_layer_norm::<B>(w, &format!("{p}.{n}"), d, eps, dev);
            h.push(Gpt2Block {
                ln_1: ln("ln_1")?,
                attn: Gpt2Attention {
                    c_attn: conv("attn.c_attn", d, 3 * d)?,
                    c_proj: conv("attn.c_proj", d, d)?,
                },
                ln_2: ln("ln_2")?,
                mlp: Gpt2Mlp {
                    c_fc: conv("mlp.c_fc", d, cfg.inner_size)?,
                    c_proj: conv("mlp.c_proj", cfg.inner_size, d)?,
                },
            });
        }
        let transformer = Gpt2Model {
            wte: load_embedding(w, &format!("{pre}wte.weight"), cfg.vocab_size, d, dev)?,
            wpe: load_embedding(w, &format!("{pre}wpe.weight"), cfg.max_position, d, dev)?,
            h,
            ln_f: load_layer_norm(w, &format!("{pre}ln_f"), d, eps, dev)?,
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
                dev,
            )?)
        };
        let tied_head = lm_head
            .is_none()
            .then(|| super::tied_copy(&transformer.wte));
        Ok(Self {
            transformer,
            lm_head,
            tied_head,
            num_heads: cfg.num_heads,
            gelu_tanh: cfg.gelu_tanh,
            scale_attn_weights: cfg.scale_attn_weights,
            scale_by_inverse_layer: cfg.scale_by_inverse_layer,
        })
    }

    /// Hidden states after `ln_f`, `[batch, seq, d]`; `attention_mask` as in
    /// [`CausalLm::forward_logits`]. Positions beyond `n_positions` have no embedding: callers
    /// keep sequences within it (the embedding lookup would fail).
    pub fn forward_hidden(
        &self,
        input_ids: Tensor<B, 2, Int>,
        attention_mask: Option<Tensor<B, 2, Bool>>,
    ) -> Tensor<B, 3> {
        let [b, s] = input_ids.dims();
        let dev = input_ids.device();
        let t = &self.transformer;
        let pos = Tensor::<B, 1, Int>::arange(0..s as i64, &dev)
            .reshape([1, s])
            .expand([b, s]);
        let mut x = t.wte.forward(input_ids) + t.wpe.forward(pos);
        let nh = self.num_heads;
        let hd = x.dims()[2] / nh;
        let bias = causal_bias::<B>(b, s, nh, attention_mask, &dev);
        for (i, blk) in t.h.iter().enumerate() {
            let mut scale = if self.scale_attn_weights {
                1.0 / (hd as f64).sqrt()
            } else {
                1.0
            };
            if self.scale_by_inverse_layer {
                scale /= (i + 1) as f64;
            }
            let qkv = blk.attn.c_attn.forward(blk.ln_1.forward(x.clone()));
            let d = qkv.dims()[2] / 3;
            let part = |k: usize| heads(qkv.clone().narrow(2, k * d, d), nh);
            let ctx = attend(part(0), part(1), part(2), &bias, scale);
            x = x + blk.attn.c_proj.forward(ctx);
            let inner = act(
                blk.mlp.c_fc.forward(blk.ln_2.forward(x.clone())),
                self.gelu_tanh,
            );
            x = x + blk.mlp.c_proj.forward(inner);
        }
        t.ln_f.forward(x)
    }

    /// Logits for hidden states `[.., d]`.
    pub fn head<const D: usize>(&self, h: Tensor<B, D>) -> Tensor<B, D> {
        balora_adapter::over_rows(h, |h| match (&self.lm_head, &self.tied_head) {
            (Some(l), _) => l.forward(h),
            (None, Some(c)) => super::tied_logits(h, c, &self.transformer.wte),
            (None, None) => {
                burn::tensor::module::linear(h, self.transformer.wte.weight.val().transpose(), None)
            }
        })
    }

    /// Every weight in Hugging Face `GPT2LMHeadModel` names and layout (`Conv1D` weights
    /// `[in, out]`; `lm_head.weight` only when untied). Adapters are not included: merge first.
    pub fn hf_tensors(&self) -> Vec<NamedTensor> {
        let mut out = Vec::new();
        let t = &self.transformer;
        let emb = |out: &mut Vec<NamedTensor>, n: &str, e: &Embedding<B>| {
            out.push((n.into(), e.weight.dims().to_vec(), to_vec(e.weight.val())));
        };
        emb(&mut out, "transformer.wte.weight", &t.wte);
        emb(&mut out, "transformer.wpe.weight", &t.wpe);
        let ln = super::push_layer_norm::<B>;
        for (i, blk) in t.h.iter().enumerate() {
            ln(&mut out, &format!("transformer.h.{i}.ln_1"), &blk.ln_1);
            ln(&mut out, &format!("transformer.h.{i}.ln_2"), &blk.ln_2);
        }
        ln(&mut out, "transformer.ln_f", &t.ln_f);
        for (info, l) in self.linears() {
            let w = l.base.weight.val();
            let (din, dout) = l.dims();
            let (shape, data) = if info.fan_in_fan_out {
                (vec![din, dout], to_vec(w))
            } else {
                (vec![dout, din], to_vec(w.transpose()))
            };
            out.push((format!("{}.weight", info.path), shape, data));
            if let Some(b) = &l.base.bias {
                out.push((format!("{}.bias", info.path), vec![dout], to_vec(b.val())));
            }
        }
        out
    }
}

impl<B: Backend> CausalLm<B> for Gpt2LmHeadModel<B> {
    fn forward_logits(
        &self,
        input_ids: Tensor<B, 2, Int>,
        attention_mask: Option<Tensor<B, 2, Bool>>,
    ) -> Tensor<B, 3> {
        self.head(self.forward_hidden(input_ids, attention_mask))
    }

    fn vocab_size(&self) -> usize {
        self.transformer.wte.weight.dims()[0]
    }
}

const NAMES: [&str; 4] = ["attn.c_attn", "attn.c_proj", "mlp.c_fc", "mlp.c_proj"];

fn infos(layers: usize, untied: bool) -> Vec<LinearInfo> {
    let mut v: Vec<LinearInfo> = (0..layers)
        .flat_map(|i| {
            NAMES.iter().map(move |n| LinearInfo {
                fan_in_fan_out: true,
                ..LinearInfo::new(format!("transformer.h.{i}.{n}"), Some(i))
            })
        })
        .collect();
    if untied {
        v.push(LinearInfo {
            is_head: true,
            ..LinearInfo::new("lm_head".into(), None)
        });
    }
    v
}

impl<B: Backend> AdapterHost<B> for Gpt2LmHeadModel<B> {
    fn linears(&self) -> Vec<(LinearInfo, &LoraLinear<B>)> {
        let mut refs: Vec<&LoraLinear<B>> = Vec::new();
        for b in &self.transformer.h {
            refs.extend([&b.attn.c_attn, &b.attn.c_proj, &b.mlp.c_fc, &b.mlp.c_proj]);
        }
        refs.extend(self.lm_head.as_ref());
        let n = self.transformer.h.len();
        infos(n, self.lm_head.is_some())
            .into_iter()
            .zip(refs)
            .collect()
    }

    fn linears_mut(&mut self) -> Vec<(LinearInfo, &mut LoraLinear<B>)> {
        let n = self.transformer.h.len();
        let untied = self.lm_head.is_some();
        let mut refs: Vec<&mut LoraLinear<B>> = Vec::new();
        for b in &mut self.transformer.h {
            let (a, m) = (&mut b.attn, &mut b.mlp);
            refs.extend([&mut a.c_attn, &mut a.c_proj, &mut m.c_fc, &mut m.c_proj]);
        }
        refs.extend(self.lm_head.as_mut());
        infos(n, untied).into_iter().zip(refs).collect()
    }
}
