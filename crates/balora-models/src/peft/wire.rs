//! PEFT's `adapter_config.json` spelling of [`LoraConfig`]: the (de)serialisation adapter
//! between PEFT's field names and balora's one adapter configuration.
//!
//! | PEFT                  | `LoraConfig` / TOML `[adapter]`                    |
//! |-----------------------|----------------------------------------------------|
//! | `r`                   | `r`                                                |
//! | `lora_alpha`          | `alpha`                                            |
//! | `use_rslora`          | `rslora`                                           |
//! | `lora_dropout`        | `dropout`                                          |
//! | `target_modules`      | `targets`                                          |
//! | `exclude_modules`     | `exclude` (`null` ↔ empty)                         |
//! | `layers_to_transform` | `layers_to_transform` (`null` ↔ empty; one int ok) |
//! | `rank_pattern`        | `rank_pattern` (the file's key order is kept)      |
//! | `alpha_pattern`       | `alpha_pattern`                                    |
//! | `modules_to_save`     | `modules_to_save` (`null` ↔ empty)                 |
//! | `init_lora_weights`   | `init`: `true` ↔ kaiming, `"gaussian"` ↔ gaussian  |
//!
//! `init_std` and `init_scale` have no PEFT field (PEFT's gaussian σ is always 1/r); they are not
//! written.

use balora_adapter::{
    deserialize_ordered_map, AdapterInit, AsMap, LoraConfig, ModuleSelector, Patterns,
};
use serde::{Deserialize, Serialize};
use serde_json::Value;

use super::AdapterMeta;
use crate::ModelError;

/// PEFT's `layers_to_transform`: one index or a list.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum LayerSelector {
    /// One layer.
    One(usize),
    /// Several layers.
    Many(Vec<usize>),
}

fn default_init() -> Value {
    Value::Bool(true)
}

/// The fields balora reads, with PEFT's names.
#[derive(Deserialize)]
struct PeftFields {
    r: usize,
    lora_alpha: f64,
    target_modules: ModuleSelector,
    #[serde(default)]
    exclude_modules: Option<ModuleSelector>,
    #[serde(default)]
    layers_to_transform: Option<LayerSelector>,
    #[serde(default)]
    modules_to_save: Option<Vec<String>>,
    #[serde(default)]
    use_rslora: bool,
    #[serde(default)]
    lora_dropout: f64,
    #[serde(default = "default_init")]
    init_lora_weights: Value,
}

/// The two pattern maps read straight from the text, so their key order is the file's (a
/// `serde_json::Value` would sort them).
#[derive(Deserialize)]
struct OrderedPatterns {
    #[serde(default, deserialize_with = "deserialize_ordered_map")]
    rank_pattern: Patterns<usize>,
    #[serde(default, deserialize_with = "deserialize_ordered_map")]
    alpha_pattern: Patterns<f64>,
}

/// The PEFT name of a `LoraConfig` field name in a message (`adapter.r` → `r`).
fn peft_field(field: &str) -> String {
    let f = field.strip_prefix("adapter.").unwrap_or(field);
    let (head, rest) = f.split_at(f.find(['.', ' ']).unwrap_or(f.len()));
    let head = match head {
        "alpha" => "lora_alpha",
        "rslora" => "use_rslora",
        "dropout" => "lora_dropout",
        "targets" => "target_modules",
        "exclude" => "exclude_modules",
        "init" | "init_std" | "init_scale" => "init_lora_weights",
        h => h,
    };
    format!("{head}{rest}")
}

/// Builds the [`LoraConfig`] from `used` (the accepted, non-null fields of the file) and the
/// file's `text` (for the order of the pattern keys), and checks it: errors name `origin` and
/// the PEFT field (`r` = 0, a bad pattern regex, ...).
pub(crate) fn from_peft(
    text: &str,
    used: serde_json::Map<String, Value>,
    origin: &str,
) -> Result<LoraConfig, ModelError> {
    let err = |m: String| ModelError::Adapter {
        file: origin.to_string(),
        message: m,
    };
    let f: PeftFields =
        serde_json::from_value(Value::Object(used)).map_err(|e| err(format!("bad field: {e}")))?;
    let p: OrderedPatterns =
        serde_json::from_str(text).map_err(|e| err(format!("bad field: {e}")))?;
    let init = match &f.init_lora_weights {
        Value::Bool(true) => AdapterInit::Kaiming,
        Value::String(s) if s.eq_ignore_ascii_case("gaussian") => AdapterInit::Gaussian,
        other => {
            return Err(err(format!(
                "field `init_lora_weights` = {other} is not supported (balora reads true or \"gaussian\")"
            )))
        }
    };
    let cfg = LoraConfig {
        r: f.r,
        alpha: f.lora_alpha,
        rslora: f.use_rslora,
        dropout: f.lora_dropout,
        targets: f.target_modules,
        exclude: f.exclude_modules.unwrap_or_default(),
        layers_to_transform: match f.layers_to_transform {
            None => Vec::new(),
            Some(LayerSelector::One(l)) => vec![l],
            Some(LayerSelector::Many(v)) => v,
        },
        rank_pattern: p.rank_pattern,
        alpha_pattern: p.alpha_pattern,
        modules_to_save: f.modules_to_save.unwrap_or_default(),
        init,
        init_std: None,
        init_scale: 1.0,
    };
    cfg.validate().map_err(|e| {
        err(format!(
            "field `{}`: {}",
            peft_field(&e.field),
            e.message.replace("adapter.", "")
        ))
    })?;
    Ok(cfg)
}

/// `adapter_config.json` as PEFT writes it; pattern maps keep their order.
#[derive(Serialize)]
struct PeftOut<'a> {
    peft_type: &'static str,
    task_type: &'a Option<String>,
    base_model_name_or_path: &'a Option<String>,
    revision: Option<()>,
    inference_mode: bool,
    r: usize,
    lora_alpha: f64,
    lora_dropout: f64,
    target_modules: Value,
    exclude_modules: Option<&'a ModuleSelector>,
    layers_to_transform: Option<&'a Vec<usize>>,
    layers_pattern: Option<()>,
    rank_pattern: AsMap<'a, usize>,
    alpha_pattern: AsMap<'a, f64>,
    modules_to_save: Option<&'a Vec<String>>,
    use_rslora: bool,
    use_dora: bool,
    fan_in_fan_out: bool,
    bias: &'static str,
    init_lora_weights: Value,
}

/// The `adapter_config.json` text for `cfg` (`targets` = the resolved target names when the
/// config says `"all-linear"`, as PEFT writes them; `fan_in_fan_out`: the adapted layers are
/// HF `Conv1D` layers, as PEFT records it).
pub(crate) fn to_peft(
    cfg: &LoraConfig,
    targets: Value,
    fan_in_fan_out: bool,
    meta: &AdapterMeta,
) -> String {
    let out = PeftOut {
        peft_type: "LORA",
        task_type: &meta.task_type,
        base_model_name_or_path: &meta.base_model_name_or_path,
        revision: None,
        inference_mode: true,
        r: cfg.r,
        lora_alpha: cfg.alpha,
        lora_dropout: cfg.dropout,
        target_modules: targets,
        exclude_modules: (!cfg.exclude.is_empty()).then_some(&cfg.exclude),
        layers_to_transform: (!cfg.layers_to_transform.is_empty())
            .then_some(&cfg.layers_to_transform),
        layers_pattern: None,
        rank_pattern: AsMap(&cfg.rank_pattern),
        alpha_pattern: AsMap(&cfg.alpha_pattern),
        modules_to_save: (!cfg.modules_to_save.is_empty()).then_some(&cfg.modules_to_save),
        use_rslora: cfg.rslora,
        use_dora: false,
        fan_in_fan_out,
        bias: "none",
        init_lora_weights: match cfg.init {
            AdapterInit::Kaiming => Value::Bool(true),
            AdapterInit::Gaussian => Value::String("gaussian".into()),
        },
    };
    serde_json::to_string_pretty(&out).unwrap_or_default()
}
