//! Hyper-parameters of a Llama-family model, from a Hugging Face `config.json` or GGUF metadata,
//! checked before anything is allocated from them.

use super::family::{hf_rope, Family, HF_MODEL_TYPES};
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
    /// What the family changes in the decoder (Qwen3, Gemma 2/3, Phi-3); default: plain Llama.
    pub family: Family,
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
            family: Family::default(),
        }
    }

    /// From a Hugging Face `config.json` value (`origin` names the file in errors).
    pub fn from_hf_json(v: &Value, origin: &str) -> Result<Self, ModelError> {
        let arch = v
            .get("model_type")
            .and_then(Value::as_str)
            .unwrap_or("llama");
        if arch == "gemma3" {
            return Err(ModelError::config(
                origin,
                "model_type",
                "`gemma3` is the multimodal Gemma 3 config; balora loads the text model \
                 (`gemma3_text`, Gemma3ForCausalLM)",
            ));
        }
        if !HF_MODEL_TYPES.contains(&arch) {
            return Err(ModelError::config(
                origin,
                "model_type",
                format!(
                    "`{arch}` is not a supported decoder ({})",
                    HF_MODEL_TYPES.join(", ")
                ),
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
        let rope = hf_rope(v, arch, origin)?;
        let layers = u("num_hidden_layers")?;
        let family = Family::from_hf_json(arch, v, layers, head_dim, &rope, origin)?;
        let cfg = Self {
            vocab_size: u("vocab_size")?,
            hidden_size: hidden,
            intermediate_size: u("intermediate_size")?,
            num_layers: layers,
            num_heads: heads,
            num_kv_heads: kv,
            head_dim,
            rms_norm_eps: f("rms_norm_eps", 1e-6),
            rope_theta: rope.theta,
            rope_llama3_scaling: rope.llama3,
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
            family,
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
        if !matches!(arch, "llama" | "mistral" | "qwen2" | "qwen3" | "phi3") {
            return Err(ModelError::config(
                origin,
                "general.architecture",
                format!(
                    "`{arch}` is not a GGUF architecture balora reads \
                     (llama, mistral, qwen2, qwen3, phi3)"
                ),
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
        // Qwen3's head_dim is not hidden / heads: llama.cpp writes it as the key length. Phi-3's
        // `rope.dimension_count` is its rotary part of a head (partial_rotary_factor).
        let rope_dims = num(&format!("{arch}.rope.dimension_count")).map(|x| x as usize);
        let head_dim = num(&format!("{arch}.attention.key_length"))
            .map(|x| x as usize)
            .or(if arch == "phi3" { None } else { rope_dims })
            .unwrap_or(hidden / heads.max(1));
        let layers = req("block_count")? as usize;
        let window = num(&format!("{arch}.attention.sliding_window")).map(|x| x as usize);
        let family = Family {
            qk_norm: arch == "qwen3",
            fused_proj: arch == "phi3",
            rotary_dim: rope_dims.filter(|&r| arch == "phi3" && r != head_dim),
            // Phi-3's window applies to every layer (llama.cpp and transformers alike).
            sliding_window: window.filter(|_| arch == "phi3"),
            sliding_layers: match window {
                Some(_) if arch == "phi3" => vec![true; layers],
                _ => Vec::new(),
            },
            ..Family::default()
        };
        family.check(layers, head_dim, origin)?;
        let cfg = Self {
            vocab_size: vocab,
            hidden_size: hidden,
            intermediate_size: req("feed_forward_length")? as usize,
            num_layers: layers,
            num_heads: heads,
            num_kv_heads: kv,
            head_dim,
            rms_norm_eps: req("attention.layer_norm_rms_epsilon")?,
            rope_theta: num(&format!("{arch}.rope.freq_base")).unwrap_or(10000.0),
            rope_llama3_scaling: None,
            max_position: num(&format!("{arch}.context_length")).unwrap_or(4096.0) as usize,
            tie_word_embeddings: tied,
            qkv_bias: arch == "qwen2",
            family,
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
