//! Hyper-parameters of a Llama-family model, from a Hugging Face `config.json` or GGUF metadata,
//! checked before anything is allocated from them.

use crate::ModelError;
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
}
