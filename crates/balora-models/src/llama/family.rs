//! What the families built on the Llama-style decoder change in it (Qwen3, Gemma 2, Gemma 3 text,
//! Phi-3), as flags on the one decoder, read from a Hugging Face `config.json`; and the RoPE
//! settings of every family (`rope_theta`, `rope_scaling` / `rope_parameters`, Gemma 3's local
//! base, Phi-3's partial rotary factor).

use crate::validate::check_positive_finite;
use crate::ModelError;
use serde_json::Value;

/// The `model_type`s of `config.json` the decoder reads.
pub const HF_MODEL_TYPES: [&str; 7] = [
    "llama",
    "mistral",
    "qwen2",
    "qwen3",
    "gemma2",
    "gemma3_text",
    "phi3",
];

/// How a family departs from plain Llama; `Default` is plain Llama (Mistral, Qwen2, SmolLM2).
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Family {
    /// Per-head RMSNorm on q and k before RoPE (`q_norm`, `k_norm`: Qwen3, Gemma 3).
    pub qk_norm: bool,
    /// Gemma: every RMSNorm scales by `1 + w` (the file holds `w`; the model keeps `1 + w`).
    pub norm_plus_one: bool,
    /// Gemma: embeddings are multiplied by √hidden_size.
    pub embed_scale: bool,
    /// Gemma: the MLP activation is tanh-approximated GELU (`gelu_pytorch_tanh`), not SiLU.
    pub gelu_tanh: bool,
    /// Gemma 2/3: `post_attention_layernorm` normalises the attention output, and
    /// `pre_feedforward_layernorm` / `post_feedforward_layernorm` wrap the MLP.
    pub sandwich_norms: bool,
    /// Phi-3: fused `qkv_proj` (rows q, k, v) and `gate_up_proj` (rows gate, up).
    pub fused_proj: bool,
    /// Gemma 2: attention scores become `c·tanh(scores / c)` before the mask.
    pub attn_softcap: Option<f64>,
    /// Gemma 2: logits become `c·tanh(logits / c)`.
    pub final_softcap: Option<f64>,
    /// Gemma: scores are scaled by `query_pre_attn_scalar^-½` instead of `head_dim^-½`.
    pub query_pre_attn_scalar: Option<f64>,
    /// Keys a sliding layer sees: those less than this many positions back.
    pub sliding_window: Option<usize>,
    /// Per layer, whether it attends within the sliding window (empty: no layer does).
    pub sliding_layers: Vec<bool>,
    /// Gemma 3: RoPE base of the sliding layers (`rope_local_base_freq`).
    pub rope_local_theta: Option<f64>,
    /// Linear RoPE scaling (positions ÷ factor) of the global layers (Gemma 3).
    pub rope_linear_factor: Option<f64>,
    /// The leading dimensions of each head RoPE rotates (Phi-3's `partial_rotary_factor`);
    /// `None`: all of them.
    pub rotary_dim: Option<usize>,
}

/// Llama-3 RoPE scaling `(factor, low_freq_factor, high_freq_factor, original_max_position)`.
type Llama3 = (f64, f64, f64, f64);

/// RoPE settings read from `config.json`.
pub(super) struct HfRope {
    pub theta: f64,
    pub llama3: Option<Llama3>,
    pub linear: Option<f64>,
    pub local_theta: Option<f64>,
    pub partial_factor: Option<f64>,
}

fn obj(v: Option<&Value>) -> Option<&Value> {
    v.filter(|p| p.is_object())
}

/// One RoPE scaling object (`rope_scaling`, or `rope_parameters` when its type is not
/// `default`): Llama-3 scaling or linear; anything else is refused naming `field`.
fn scaling(
    s: &Value,
    field: &str,
    origin: &str,
) -> Result<(Option<Llama3>, Option<f64>), ModelError> {
    let ty = s
        .get("rope_type")
        .or_else(|| s.get("type"))
        .and_then(Value::as_str)
        .unwrap_or("");
    let g = |k: &str| {
        s.get(k)
            .and_then(Value::as_f64)
            .ok_or_else(|| ModelError::config(origin, &format!("{field}.{k}"), "missing"))
    };
    match ty {
        "default" => Ok((None, None)),
        "llama3" => Ok((
            Some((
                g("factor")?,
                g("low_freq_factor")?,
                g("high_freq_factor")?,
                g("original_max_position_embeddings")?,
            )),
            None,
        )),
        "linear" => Ok((None, Some(g("factor")?))),
        _ => Err(ModelError::config(
            origin,
            &format!("{field}.rope_type"),
            format!(
                "rope scaling type `{ty}` is not supported (only `default`, `llama3`, `linear`)"
            ),
        )),
    }
}

/// The RoPE settings of `config.json`. transformers ≥ 5 writes them under `rope_parameters`
/// (Gemma 3: one object per layer type, `full_attention` and `sliding_attention`); older files
/// use top-level `rope_theta`, `rope_scaling`, `rope_local_base_freq`, `partial_rotary_factor`.
/// Both are read; top-level keys win where both exist.
pub(super) fn hf_rope(v: &Value, arch: &str, origin: &str) -> Result<HfRope, ModelError> {
    let params = obj(v.get("rope_parameters"));
    let per_type = params.is_some_and(|p| p.get("full_attention").is_some());
    let (global, local, gfield) = if per_type {
        let p = params.unwrap_or(&Value::Null);
        (
            obj(p.get("full_attention")),
            obj(p.get("sliding_attention")),
            "rope_parameters.full_attention",
        )
    } else {
        (params, None, "rope_parameters")
    };
    let top = |k: &str| v.get(k).and_then(Value::as_f64);
    let default_theta = if arch == "gemma3_text" { 1e6 } else { 1e4 };
    let theta = top("rope_theta")
        .or_else(|| global.and_then(|p| p.get("rope_theta")?.as_f64()))
        .unwrap_or(default_theta);
    let (llama3, linear) = match v.get("rope_scaling").filter(|s| !s.is_null()) {
        Some(s) => scaling(s, "rope_scaling", origin)?,
        None => match global {
            Some(p) => scaling(p, gfield, origin)?,
            None => (None, None),
        },
    };
    if let Some(l) = local {
        scaling(l, "rope_parameters.sliding_attention", origin)?
            .0
            .map_or(Ok(()), |_| {
                Err(ModelError::config(
                    origin,
                    "rope_parameters.sliding_attention.rope_type",
                    "the sliding layers' RoPE must be `default`",
                ))
            })?;
    }
    let local_theta = (arch == "gemma3_text").then(|| {
        top("rope_local_base_freq")
            .or_else(|| local.and_then(|p| p.get("rope_theta")?.as_f64()))
            .unwrap_or(1e4)
    });
    let partial_factor =
        top("partial_rotary_factor").or_else(|| global?.get("partial_rotary_factor")?.as_f64());
    Ok(HfRope {
        theta,
        llama3,
        linear,
        local_theta,
        partial_factor,
    })
}

impl Family {
    /// The flags of `arch` (a `model_type` of [`HF_MODEL_TYPES`]) from `config.json` `v`.
    /// `layers` and `head_dim` are the config's; `rope` supplies the RoPE extras.
    pub(super) fn from_hf_json(
        arch: &str,
        v: &Value,
        layers: usize,
        head_dim: usize,
        rope: &HfRope,
        origin: &str,
    ) -> Result<Self, ModelError> {
        let gemma = matches!(arch, "gemma2" | "gemma3_text");
        let f = |k: &str| v.get(k).and_then(Value::as_f64);
        if gemma {
            let act = v
                .get("hidden_activation")
                .or_else(|| v.get("hidden_act"))
                .and_then(Value::as_str)
                .unwrap_or("gelu_pytorch_tanh");
            if !matches!(act, "gelu_pytorch_tanh" | "gelu_tanh") {
                return Err(ModelError::config(
                    origin,
                    "hidden_activation",
                    format!("`{act}` is not supported (only `gelu_pytorch_tanh`)"),
                ));
            }
            if v.get("use_bidirectional_attention")
                .and_then(Value::as_bool)
                == Some(true)
            {
                return Err(ModelError::config(
                    origin,
                    "use_bidirectional_attention",
                    "bidirectional (embedding) Gemma models are not supported",
                ));
            }
        }
        let window = v
            .get("sliding_window")
            .and_then(Value::as_u64)
            .map(|w| w as usize);
        let sliding_layers = match (window, v.get("layer_types").and_then(Value::as_array)) {
            (None, _) => Vec::new(),
            (Some(_), Some(types)) => {
                let mut out = Vec::with_capacity(types.len());
                for (i, t) in types.iter().enumerate() {
                    out.push(match t.as_str() {
                        Some("sliding_attention") => true,
                        Some("full_attention") => false,
                        _ => {
                            return Err(ModelError::config(
                                origin,
                                &format!("layer_types[{i}]"),
                                format!(
                                    "{t} is neither \"sliding_attention\" nor \"full_attention\""
                                ),
                            ))
                        }
                    });
                }
                out
            }
            // Files without `layer_types`, as their transformers classes derive it.
            (Some(_), None) => (0..layers)
                .map(|i| match arch {
                    "mistral" | "phi3" => true,
                    "gemma2" => (i + 1) % 2 != 0,
                    "gemma3_text" => {
                        let p = v
                            .get("sliding_window_pattern")
                            .and_then(Value::as_u64)
                            .unwrap_or(6) as usize;
                        (i + 1) % p.max(1) != 0
                    }
                    "qwen2" | "qwen3" => {
                        v.get("use_sliding_window").and_then(Value::as_bool) == Some(true)
                            && i >= v
                                .get("max_window_layers")
                                .and_then(Value::as_u64)
                                .unwrap_or(0) as usize
                    }
                    _ => false,
                })
                .collect(),
        };
        let sliding_layers = if sliding_layers.iter().any(|&s| s) {
            sliding_layers
        } else {
            Vec::new()
        };
        let rotary_dim = match rope.partial_factor {
            None => None,
            Some(p) if (p - 1.0).abs() < f64::EPSILON => None,
            // `int(head_dim * partial_rotary_factor)`, as transformers computes it.
            Some(p) => Some((head_dim as f64 * p) as usize),
        };
        let fam = Self {
            qk_norm: matches!(arch, "qwen3" | "gemma3_text"),
            norm_plus_one: gemma,
            embed_scale: gemma,
            gelu_tanh: gemma,
            sandwich_norms: gemma,
            fused_proj: arch == "phi3",
            attn_softcap: if gemma {
                f("attn_logit_softcapping")
            } else {
                None
            },
            final_softcap: if gemma {
                f("final_logit_softcapping")
            } else {
                None
            },
            query_pre_attn_scalar: if gemma {
                f("query_pre_attn_scalar")
            } else {
                None
            },
            sliding_window: (!sliding_layers.is_empty()).then_some(window).flatten(),
            sliding_layers,
            rope_local_theta: rope.local_theta,
            rope_linear_factor: rope.linear,
            rotary_dim,
        };
        fam.check(layers, head_dim, origin)?;
        Ok(fam)
    }

    /// Checks the flags against the config (`layers`, `head_dim`), naming the `config.json`
    /// field of a bad value.
    pub(super) fn check(
        &self,
        layers: usize,
        head_dim: usize,
        origin: &str,
    ) -> Result<(), ModelError> {
        for (field, x) in [
            ("attn_logit_softcapping", self.attn_softcap),
            ("final_logit_softcapping", self.final_softcap),
            ("query_pre_attn_scalar", self.query_pre_attn_scalar),
            ("rope_local_base_freq", self.rope_local_theta),
            ("rope_scaling.factor", self.rope_linear_factor),
        ] {
            if let Some(x) = x {
                check_positive_finite(origin, field, x)?;
            }
        }
        if !self.sliding_layers.is_empty() && self.sliding_layers.len() != layers {
            return Err(ModelError::config(
                origin,
                "layer_types",
                format!(
                    "{} entries for {layers} layers (num_hidden_layers)",
                    self.sliding_layers.len()
                ),
            ));
        }
        if self.sliding_window == Some(0) {
            return Err(ModelError::config(origin, "sliding_window", "must be ≥ 1"));
        }
        if let Some(r) = self.rotary_dim {
            if r == 0 || r % 2 == 1 || r > head_dim {
                return Err(ModelError::config(
                    origin,
                    "partial_rotary_factor",
                    format!("gives {r} rotary dimensions of head_dim {head_dim}: must be even and in 2..={head_dim}"),
                ));
            }
        }
        Ok(())
    }

    /// Whether layer `l` attends within the sliding window.
    pub fn is_sliding(&self, l: usize) -> bool {
        self.sliding_window.is_some() && self.sliding_layers.get(l).copied().unwrap_or(false)
    }
}
