//! The one description of a model's structure, from its config: which linears, norms and
//! embedding each layer has and their names and shapes. Loading and random initialisation
//! both build through it ([`Parts`]).

use super::layers::{LlamaAttention, LlamaLayer, LlamaMlp};
use super::model::LlamaModel;
use super::LlamaConfig;
use crate::weights::{
    fetch_checked, frozen, load_embedding, load_lora_linear, load_rms, tensor1, Weights,
};
use crate::ModelError;
use balora_adapter::LoraLinear;
use burn::nn::{Embedding, RmsNorm, RmsNormConfig};
use burn::tensor::{backend::Backend, Distribution, Tensor};

/// Where the parts of a model come from, by Hugging Face name.
pub(super) trait Parts<B: Backend> {
    /// A linear layer `d_in → d_out` (`name` without `.weight`).
    fn linear(
        &mut self,
        name: &str,
        d_in: usize,
        d_out: usize,
        bias: bool,
    ) -> Result<LoraLinear<B>, ModelError>;
    /// An RMSNorm of width `d` (`name` with `.weight`).
    fn norm(&mut self, name: &str, d: usize) -> Result<RmsNorm<B>, ModelError>;
    /// The `[n, d]` embedding.
    fn embedding(&mut self, name: &str, n: usize, d: usize) -> Result<Embedding<B>, ModelError>;
}

/// Parts read from [`Weights`] in Hugging Face layout. Gemma's norms hold `w` for a scale of
/// `1 + w`: the model keeps `1 + w` (the sum PyTorch forms in f32 at every call).
pub(super) struct Loaded<'a, B: Backend> {
    pub w: &'a dyn Weights,
    pub cfg: &'a LlamaConfig,
    pub device: &'a B::Device,
}

impl<B: Backend> Parts<B> for Loaded<'_, B> {
    fn linear(
        &mut self,
        name: &str,
        d_in: usize,
        d_out: usize,
        bias: bool,
    ) -> Result<LoraLinear<B>, ModelError> {
        load_lora_linear::<B>(self.w, name, bias, d_in, d_out, self.device)
    }
    fn norm(&mut self, name: &str, d: usize) -> Result<RmsNorm<B>, ModelError> {
        let eps = self.cfg.rms_norm_eps;
        if !self.cfg.family.norm_plus_one {
            return load_rms(self.w, name, d, eps, self.device);
        }
        let mut data = fetch_checked(self.w, name, &[d])?;
        data.iter_mut().for_each(|x| *x += 1.0);
        let mut n = RmsNormConfig::new(d).with_epsilon(eps).init(self.device);
        n.gamma = frozen(tensor1::<B>(data, d, self.device));
        Ok(n)
    }
    fn embedding(&mut self, name: &str, n: usize, d: usize) -> Result<Embedding<B>, ModelError> {
        load_embedding(self.w, name, n, d, self.device)
    }
}

/// Random parts (tests, experiments): norms uniform in [0.5, 1.5], N(0, 1) embeddings.
pub(super) struct Random<'a, B: Backend> {
    pub cfg: &'a LlamaConfig,
    pub device: &'a B::Device,
}

impl<B: Backend> Parts<B> for Random<'_, B> {
    fn linear(
        &mut self,
        _: &str,
        d_in: usize,
        d_out: usize,
        bias: bool,
    ) -> Result<LoraLinear<B>, ModelError> {
        Ok(LoraLinear::new(d_in, d_out, bias, self.device))
    }
    fn norm(&mut self, _: &str, d: usize) -> Result<RmsNorm<B>, ModelError> {
        let mut n = RmsNormConfig::new(d)
            .with_epsilon(self.cfg.rms_norm_eps)
            .init(self.device);
        n.gamma = frozen(Tensor::random(
            [d],
            Distribution::Uniform(0.5, 1.5),
            self.device,
        ));
        Ok(n)
    }
    fn embedding(&mut self, _: &str, n: usize, d: usize) -> Result<Embedding<B>, ModelError> {
        Ok(Embedding {
            weight: frozen(Tensor::random(
                [n, d],
                Distribution::Normal(0.0, 1.0),
                self.device,
            )),
        })
    }
}

/// The decoder stack and the untied head (`None` when tied) of `cfg`, from `parts`.
pub(super) fn build<B: Backend>(
    cfg: &LlamaConfig,
    parts: &mut dyn Parts<B>,
) -> Result<(LlamaModel<B>, Option<LoraLinear<B>>), ModelError> {
    let (d, hd, ff) = (cfg.hidden_size, cfg.head_dim, cfg.intermediate_size);
    let (q_out, kv_out) = (cfg.num_heads * hd, cfg.num_kv_heads * hd);
    let fam = &cfg.family;
    let mut layers = Vec::with_capacity(cfg.num_layers);
    for l in 0..cfg.num_layers {
        let p = format!("model.layers.{l}");
        let b = cfg.qkv_bias;
        let self_attn = if fam.fused_proj {
            LlamaAttention {
                q_proj: parts.linear(
                    &format!("{p}.self_attn.qkv_proj"),
                    d,
                    q_out + 2 * kv_out,
                    b,
                )?,
                k_proj: None,
                v_proj: None,
                o_proj: parts.linear(&format!("{p}.self_attn.o_proj"), q_out, d, false)?,
                q_norm: None,
                k_norm: None,
            }
        } else {
            LlamaAttention {
                q_proj: parts.linear(&format!("{p}.self_attn.q_proj"), d, q_out, b)?,
                k_proj: Some(parts.linear(&format!("{p}.self_attn.k_proj"), d, kv_out, b)?),
                v_proj: Some(parts.linear(&format!("{p}.self_attn.v_proj"), d, kv_out, b)?),
                o_proj: parts.linear(&format!("{p}.self_attn.o_proj"), q_out, d, false)?,
                q_norm: None,
                k_norm: None,
            }
        };
        let self_attn = if fam.qk_norm {
            LlamaAttention {
                q_norm: Some(parts.norm(&format!("{p}.self_attn.q_norm.weight"), hd)?),
                k_norm: Some(parts.norm(&format!("{p}.self_attn.k_norm.weight"), hd)?),
                ..self_attn
            }
        } else {
            self_attn
        };
        let mlp = if fam.fused_proj {
            LlamaMlp {
                gate_proj: parts.linear(&format!("{p}.mlp.gate_up_proj"), d, 2 * ff, false)?,
                up_proj: None,
                down_proj: parts.linear(&format!("{p}.mlp.down_proj"), ff, d, false)?,
                gelu_tanh: fam.gelu_tanh,
            }
        } else {
            LlamaMlp {
                gate_proj: parts.linear(&format!("{p}.mlp.gate_proj"), d, ff, false)?,
                up_proj: Some(parts.linear(&format!("{p}.mlp.up_proj"), d, ff, false)?),
                down_proj: parts.linear(&format!("{p}.mlp.down_proj"), ff, d, false)?,
                gelu_tanh: fam.gelu_tanh,
            }
        };
        let mut sandwich = |n: &str| -> Result<Option<RmsNorm<B>>, ModelError> {
            match fam.sandwich_norms {
                true => Ok(Some(parts.norm(&format!("{p}.{n}.weight"), d)?)),
                false => Ok(None),
            }
        };
        let (pre_ff, post_ff) = (
            sandwich("pre_feedforward_layernorm")?,
            sandwich("post_feedforward_layernorm")?,
        );
        layers.push(LlamaLayer {
            self_attn,
            mlp,
            input_layernorm: parts.norm(&format!("{p}.input_layernorm.weight"), d)?,
            post_attention_layernorm: parts
                .norm(&format!("{p}.post_attention_layernorm.weight"), d)?,
            pre_feedforward_layernorm: pre_ff,
            post_feedforward_layernorm: post_ff,
            sliding: fam.is_sliding(l),
        });
    }
    // Embedding, head, final norm: the order `random` has always drawn them in.
    let embed_tokens = parts.embedding("model.embed_tokens.weight", cfg.vocab_size, d)?;
    let lm_head = if cfg.tie_word_embeddings {
        None
    } else {
        Some(parts.linear("lm_head", d, cfg.vocab_size, false)?)
    };
    let model = LlamaModel {
        embed_tokens,
        layers,
        norm: parts.norm("model.norm.weight", d)?,
    };
    Ok((model, lm_head))
}
