//! [`GptNeoXConfig`]: GPT-NeoX settings from `config.json` (transformers ≥ 5's
//! `rope_parameters` or the older `rotary_pct` / `rotary_emb_base` of Pythia's files), checked
//! before anything is allocated from them.

use super::{cfg_bool, cfg_f64, cfg_usize, gelu_kind};
use crate::ModelError;
use serde_json::Value;

/// Hyper-parameters of a GPT-NeoX model (`config.json` names in the field docs).
#[derive(Debug, Clone, PartialEq)]
pub struct GptNeoXConfig {
    /// `vocab_size`.
    pub vocab_size: usize,
    /// `hidden_size`.
    pub hidden_size: usize,
    /// `num_hidden_layers`.
    pub num_layers: usize,
    /// `num_attention_heads`.
    pub num_heads: usize,
    /// `intermediate_size`.
    pub intermediate_size: usize,
    /// `max_position_embeddings`: rows of the rotary tables.
    pub max_position: usize,
    /// `layer_norm_eps`.
    pub layer_norm_eps: f64,
    /// `rope_parameters.partial_rotary_factor` (older files: `rotary_pct`; default 0.25).
    pub rotary_pct: f64,
    /// `rope_parameters.rope_theta` (older files: `rotary_emb_base`; default 10000).
    pub rope_theta: f64,
    /// `use_parallel_residual` (default true).
    pub parallel_residual: bool,
    /// `hidden_act` is a tanh-approximated GELU; `false`: exact GELU (`gelu`, Pythia's).
    pub gelu_tanh: bool,
    /// `attention_bias`: the attention projections have biases (default true).
    pub attention_bias: bool,
    /// `tie_word_embeddings` (default false).
    pub tie_word_embeddings: bool,
}

impl GptNeoXConfig {
    /// From a Hugging Face `config.json` value (`origin` names the file in errors).
    pub fn from_hf_json(v: &Value, origin: &str) -> Result<Self, ModelError> {
        let mt = v
            .get("model_type")
            .and_then(Value::as_str)
            .unwrap_or("gpt_neox");
        if mt != "gpt_neox" {
            return Err(ModelError::config(
                origin,
                "model_type",
                format!("`{mt}` is not GPT-NeoX (`gpt_neox`)"),
            ));
        }
        let rope = v.get("rope_parameters").filter(|r| r.is_object());
        if let Some(t) = rope
            .and_then(|r| r.get("rope_type"))
            .and_then(Value::as_str)
        {
            if t != "default" {
                return Err(ModelError::config(
                    origin,
                    "rope_parameters.rope_type",
                    format!("`{t}` is not supported (only `default`)"),
                ));
            }
        }
        if v.get("rope_scaling").is_some_and(|x| !x.is_null()) {
            return Err(ModelError::config(
                origin,
                "rope_scaling",
                "RoPE scaling is not supported",
            ));
        }
        // transformers ≥ 5 writes rope_parameters; Pythia's files have rotary_pct/_emb_base.
        let rope_f = |k: &str, old: &str, d: f64| match rope.filter(|r| r.get(k).is_some()) {
            Some(r) => cfg_f64(r, k, d, origin),
            None => cfg_f64(v, old, d, origin),
        };
        let act = v
            .get("hidden_act")
            .and_then(Value::as_str)
            .unwrap_or("gelu");
        let cfg = Self {
            vocab_size: cfg_usize(v, &["vocab_size"], origin)?,
            hidden_size: cfg_usize(v, &["hidden_size"], origin)?,
            num_layers: cfg_usize(v, &["num_hidden_layers"], origin)?,
            num_heads: cfg_usize(v, &["num_attention_heads"], origin)?,
            intermediate_size: cfg_usize(v, &["intermediate_size"], origin)?,
            max_position: cfg_usize(v, &["max_position_embeddings"], origin)?,
            layer_norm_eps: cfg_f64(v, "layer_norm_eps", 1e-5, origin)?,
            rotary_pct: rope_f("partial_rotary_factor", "rotary_pct", 0.25)?,
            rope_theta: rope_f("rope_theta", "rotary_emb_base", 10000.0)?,
            parallel_residual: cfg_bool(v, "use_parallel_residual", true, origin)?,
            gelu_tanh: gelu_kind(act, "hidden_act", origin)?,
            attention_bias: cfg_bool(v, "attention_bias", true, origin)?,
            tie_word_embeddings: cfg_bool(v, "tie_word_embeddings", false, origin)?,
        };
        cfg.validate(origin)?;
        Ok(cfg)
    }

    /// Head dimension.
    pub fn head_dim(&self) -> usize {
        self.hidden_size / self.num_heads
    }

    /// Rotary dimensions of each head: `⌊head_dim · rotary_pct⌋` (as transformers computes it).
    pub fn rotary_ndims(&self) -> usize {
        (self.head_dim() as f64 * self.rotary_pct) as usize
    }

    fn validate(&self, origin: &str) -> Result<(), ModelError> {
        use crate::validate::{check_positive_finite, check_size, MAX_DIM, MAX_LAYERS};
        use crate::validate::{MAX_HEAD_DIM, ROPE_TABLE_BUDGET};
        check_size(origin, "vocab_size", self.vocab_size, MAX_DIM)?;
        check_size(origin, "hidden_size", self.hidden_size, MAX_DIM)?;
        check_size(origin, "num_hidden_layers", self.num_layers, MAX_LAYERS)?;
        check_size(origin, "num_attention_heads", self.num_heads, MAX_DIM)?;
        check_size(origin, "intermediate_size", self.intermediate_size, MAX_DIM)?;
        check_size(
            origin,
            "max_position_embeddings",
            self.max_position,
            MAX_DIM,
        )?;
        check_positive_finite(origin, "layer_norm_eps", self.layer_norm_eps)?;
        check_positive_finite(origin, "rope_theta", self.rope_theta)?;
        if !self.hidden_size.is_multiple_of(self.num_heads) {
            return Err(ModelError::config(
                origin,
                "num_attention_heads",
                format!(
                    "{} does not divide hidden_size = {}",
                    self.num_heads, self.hidden_size
                ),
            ));
        }
        check_size(
            origin,
            "hidden_size / num_attention_heads",
            self.head_dim(),
            MAX_HEAD_DIM,
        )?;
        if !(0.0..=1.0).contains(&self.rotary_pct) || !self.rotary_ndims().is_multiple_of(2) {
            return Err(ModelError::config(
                origin,
                "partial_rotary_factor",
                format!(
                    "{} must be in [0, 1] and give an even number of rotary dimensions \
                     (head_dim {} × {} = {})",
                    self.rotary_pct,
                    self.head_dim(),
                    self.rotary_pct,
                    self.rotary_ndims()
                ),
            ));
        }
        if self.max_position.saturating_mul(self.rotary_ndims()) > ROPE_TABLE_BUDGET {
            return Err(ModelError::config(
                origin,
                "max_position_embeddings",
                format!(
                    "{} positions × {} rotary dimensions exceed the table budget of {ROPE_TABLE_BUDGET} values",
                    self.max_position,
                    self.rotary_ndims()
                ),
            ));
        }
        Ok(())
    }
}
