//! Reading `adapter_config.json` as PEFT writes it, forward-compatibly.
//!
//! PEFT ≥ 0.19 writes every `LoraConfig` field, defaults included, and each release adds a few.
//! The fields are sorted into three groups, from `peft/config.py` (`PeftConfig`) and
//! `peft/tuners/lora/config.py` (`LoraConfig`) of PEFT 0.21.2:
//!
//! * [`USED`]: what balora reads (rank, α, targets, patterns, rsLoRA, dropout, ...);
//! * [`INERT`]: fields that do not change what the saved weights compute (metadata, runtime
//!   options, options that only matter together with a feature listed below);
//! * [`FEATURES`]: LoRA variants balora does not implement. Their PEFT default is accepted; any
//!   other value is an error naming the field, the value and the feature, since loading such an
//!   adapter as plain LoRA would silently compute something else.
//!
//! A field in none of the groups (written by a newer PEFT) is accepted with a `tracing` warning
//! naming it: new PEFT fields so far have all defaulted to "feature off".

use crate::ModelError;
use balora_adapter::LoraConfig;
use serde_json::{Map, Value};

/// Fields balora reads (a `null` value means "PEFT's default").
pub const USED: &[&str] = &[
    "r",
    "lora_alpha",
    "target_modules",
    "exclude_modules",
    "layers_to_transform",
    "rank_pattern",
    "alpha_pattern",
    "modules_to_save",
    "use_rslora",
    "lora_dropout",
    "init_lora_weights",
];

/// Fields that carry no meaning for the saved weights (any value accepted).
pub const INERT: &[&str] = &[
    // PeftConfigMixin / PeftConfig
    "task_type",
    "peft_type",
    "auto_mapping",
    "peft_version",
    "base_model_name_or_path",
    "revision",
    "inference_mode",
    // LoraConfig: megatron_core only names the module used with megatron_config; layers_pattern
    // only helps PEFT find the layer index for layers_to_transform (balora knows it); runtime_config
    // holds ephemeral_gpu_offload; qalora_group_size only matters with use_qalora; eva_config only
    // configures the data-driven EVA *initialisation* (the saved factors are plain LoRA);
    // ensure_weight_tying only affects how tied embeddings are wrapped for training.
    "megatron_core",
    "layers_pattern",
    "runtime_config",
    "qalora_group_size",
    "eva_config",
    "ensure_weight_tying",
    // fan_in_fan_out says whether the base weights are stored `[in, out]` (HF `Conv1D`, GPT-2).
    // PEFT decides it by the module's type, whatever the file says (`_create_new_module` in
    // peft/tuners/lora/layer.py: `Conv1D` → True, `nn.Linear` → False, with a warning), and the
    // factors are `lora_A` `[r, in]`, `lora_B` `[out, r]` either way: it does not change what
    // they compute. [`crate::peft::load_adapter`] compares it with the model's layers and warns
    // on a mismatch as PEFT does; balora writes the value PEFT would.
    "fan_in_fan_out",
];

/// What a feature field's default looks like.
#[derive(Debug, Clone, Copy)]
enum Default_ {
    /// `false` (or `null`).
    False,
    /// `null`.
    Null,
    /// `null` or `{}`.
    NullOrEmptyMap,
    /// `null` or `[]`.
    NullOrEmptyList,
    /// `null` or `"none"`.
    NoneStr,
}

impl Default_ {
    fn holds(self, v: &Value) -> bool {
        match self {
            Self::False => matches!(v, Value::Null | Value::Bool(false)),
            Self::Null => v.is_null(),
            Self::NullOrEmptyMap => v.is_null() || v.as_object().is_some_and(Map::is_empty),
            Self::NullOrEmptyList => v.is_null() || v.as_array().is_some_and(Vec::is_empty),
            Self::NoneStr => v.is_null() || v == "none",
        }
    }
}

/// LoRA features balora does not implement: (field, default, what the feature is).
const FEATURES: &[(&str, Default_, &str)] = &[
    ("use_dora", Default_::False, "DoRA (weight-decomposed LoRA)"),
    ("bias", Default_::NoneStr, "trained base-layer biases"),
    ("lora_bias", Default_::False, "a bias on lora_B"),
    ("use_qalora", Default_::False, "QALoRA"),
    ("loftq_config", Default_::NullOrEmptyMap, "LoftQ"),
    ("corda_config", Default_::Null, "CorDA"),
    ("lora_ga_config", Default_::Null, "LoRA-GA"),
    ("velora_config", Default_::Null, "VeLoRA"),
    ("monteclora_config", Default_::Null, "MonteCLoRA"),
    (
        "use_bdlora",
        Default_::Null,
        "block-diagonal LoRA (BD-LoRA)",
    ),
    ("kasa_config", Default_::Null, "KaSA"),
    ("arrow_config", Default_::Null, "Arrow routing"),
    (
        "alora_invocation_tokens",
        Default_::Null,
        "activated LoRA (aLoRA)",
    ),
    (
        "trainable_token_indices",
        Default_::Null,
        "trainable token embeddings",
    ),
    (
        "target_parameters",
        Default_::NullOrEmptyList,
        "LoRA on raw parameters (e.g. MoE experts)",
    ),
    ("layer_replication", Default_::Null, "layer replication"),
    (
        "megatron_config",
        Default_::Null,
        "Megatron parallel layers",
    ),
];

/// `init_lora_weights` values whose saved factors only make sense on a base model PEFT changed
/// at initialisation (PiSSA, OLoRA, CorDA, LoftQ, LoRA-GA), or that select a LoRA variant (MiCA).
/// `true`, `false`, `"gaussian"`, `"eva"` and `"orthogonal"` leave the base alone and are read.
fn unsupported_init(v: &Value) -> Option<&'static str> {
    let s = v.as_str()?;
    if s == "pissa" || s.starts_with("pissa_niter_") {
        Some("PiSSA changes the base weights")
    } else {
        match s {
            "olora" => Some("OLoRA changes the base weights"),
            "corda" => Some("CorDA changes the base weights"),
            "loftq" => Some("LoftQ changes (quantises) the base weights"),
            "lora_ga" => Some("LoRA-GA changes the base weights"),
            "mica" => Some("MiCA is a LoRA variant"),
            _ => None,
        }
    }
}

/// A JSON value for a message, cut to 120 characters (a hostile file may hold huge values).
fn short(v: &Value) -> String {
    let s = v.to_string();
    match s.char_indices().nth(120) {
        Some((i, _)) => format!("{}…", &s[..i]),
        None => s,
    }
}

/// Parses `adapter_config.json` text (`origin` names the file in errors).
///
/// Accepts every field PEFT 0.21 writes; rejects a non-default value of a feature balora does
/// not implement (DoRA, LoftQ, BD-LoRA, KaSA, ...), naming the field and value; warns on fields
/// it does not know.
pub fn parse_config(text: &str, origin: &str) -> Result<LoraConfig, ModelError> {
    let err = |m: String| ModelError::Adapter {
        file: origin.to_string(),
        message: m,
    };
    let v: Value = serde_json::from_str(text).map_err(|e| err(format!("invalid JSON: {e}")))?;
    let obj = v
        .as_object()
        .ok_or_else(|| err("expected a JSON object".into()))?;
    if let Some(t) = obj.get("peft_type") {
        if !t.is_null() && t != "LORA" {
            return Err(err(format!(
                "peft_type {t} is not supported (only \"LORA\")"
            )));
        }
    }
    let mut used = Map::new();
    for (k, val) in obj {
        if USED.contains(&k.as_str()) {
            if !val.is_null() {
                used.insert(k.clone(), val.clone());
            }
        } else if INERT.contains(&k.as_str()) {
        } else if let Some((_, default, what)) = FEATURES.iter().find(|(n, _, _)| n == k) {
            if !default.holds(val) {
                return Err(err(format!(
                    "field `{k}` = {} asks for {what}, which balora does not implement \
                     (only PEFT's default is accepted)",
                    short(val)
                )));
            }
        } else {
            tracing::warn!(
                file = origin,
                field = k.as_str(),
                "unknown adapter_config.json field `{k}` = {} ignored (written by a newer PEFT?)",
                short(val)
            );
        }
    }
    if let Some(why) = used.get("init_lora_weights").and_then(unsupported_init) {
        return Err(err(format!(
            "field `init_lora_weights` = {} is not supported: {why}; convert the adapter to plain \
             LoRA with PEFT (`path_initial_model_for_weight_conversion` in save_pretrained) first",
            short(&used["init_lora_weights"])
        )));
    }
    // Initialisations that leave the base untouched produce plain LoRA factors: once saved,
    // the adapter is read like one initialised the default way (the init only matters for
    // fresh adapters, which a loaded file does not create).
    if let Some(v) = used.get_mut("init_lora_weights") {
        if matches!(v, Value::Bool(false)) || v == "eva" || v == "orthogonal" {
            *v = Value::Bool(true);
        }
    }
    for req in ["r", "lora_alpha", "target_modules"] {
        if !used.contains_key(req) {
            return Err(err(format!("missing field `{req}`")));
        }
    }
    super::wire::from_peft(text, used, origin)
}
