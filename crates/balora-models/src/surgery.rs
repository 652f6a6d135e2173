//! Attaching adapters like PEFT: target selection, per-module rank/alpha, modules to save,
//! trainable-parameter summary, merge/unmerge.

use crate::host::{AdapterHost, LinearInfo};
use crate::ModelError;
use balora_adapter::{AdapterInit, LoraConfig, LoraLinear};
use burn::module::Module;
use burn::tensor::backend::Backend;
use regex::Regex;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

/// PEFT's `target_modules` / `exclude_modules`: a list of names (exact or `.`-suffix match),
/// or one regex (full match). `"all-linear"` selects every linear layer except the output head.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum ModuleSelector {
    /// Names matched exactly or as a dotted suffix (`q_proj` matches `model.layers.0.self_attn.q_proj`).
    List(Vec<String>),
    /// A regex that must match the whole module path (or `"all-linear"`).
    Regex(String),
}

impl ModuleSelector {
    fn is_all_linear(&self) -> bool {
        match self {
            Self::List(v) => v.len() == 1 && v[0] == "all-linear",
            Self::Regex(s) => s == "all-linear",
        }
    }
}

/// PEFT's `layers_to_transform`: one index or a list.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum LayerSelector {
    /// One layer.
    One(usize),
    /// Several layers.
    Many(Vec<usize>),
}

impl LayerSelector {
    fn contains(&self, l: usize) -> bool {
        match self {
            Self::One(x) => *x == l,
            Self::Many(v) => v.contains(&l),
        }
    }
}

/// What to adapt and how: the subset of PEFT's `LoraConfig` that balora supports, with PEFT's
/// field names (this struct is also the `adapter_config.json` schema, see [`crate::peft`]).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct AdapterSpec {
    /// Default rank.
    pub r: usize,
    /// Default α.
    pub lora_alpha: f64,
    /// Which linear layers get adapters.
    pub target_modules: ModuleSelector,
    /// Layers never adapted even if targeted.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub exclude_modules: Option<ModuleSelector>,
    /// Only these layer indices.
    #[serde(default)]
    pub layers_to_transform: Option<LayerSelector>,
    /// Per-module rank overrides: regex key (matched against the path's dotted suffix) → r.
    #[serde(default)]
    pub rank_pattern: BTreeMap<String, usize>,
    /// Per-module α overrides.
    #[serde(default)]
    pub alpha_pattern: BTreeMap<String, f64>,
    /// Layers trained in full (and saved whole) instead of adapted.
    #[serde(default)]
    pub modules_to_save: Option<Vec<String>>,
    /// rsLoRA scaling α/√r.
    #[serde(default)]
    pub use_rslora: bool,
    /// Dropout on the adapter input.
    #[serde(default)]
    pub lora_dropout: f64,
    /// Initialisation of A (`true`/`"kaiming"` or `"gaussian"`).
    #[serde(default = "default_init")]
    pub init_lora_weights: serde_json::Value,
}

fn default_init() -> serde_json::Value {
    serde_json::Value::Bool(true)
}

impl AdapterSpec {
    /// Rank `r`, α, and the given targets; everything else PEFT's defaults.
    pub fn new(r: usize, lora_alpha: f64, target_modules: ModuleSelector) -> Self {
        Self {
            r,
            lora_alpha,
            target_modules,
            exclude_modules: None,
            layers_to_transform: None,
            rank_pattern: BTreeMap::new(),
            alpha_pattern: BTreeMap::new(),
            modules_to_save: None,
            use_rslora: false,
            lora_dropout: 0.0,
            init_lora_weights: default_init(),
        }
    }

    fn init(&self) -> Result<AdapterInit, ModelError> {
        match &self.init_lora_weights {
            serde_json::Value::Bool(true) => Ok(AdapterInit::Kaiming),
            serde_json::Value::String(s) if s == "gaussian" => Ok(AdapterInit::Gaussian),
            other => Err(ModelError::Targets(format!(
                "init_lora_weights = {other} is not supported (use true or \"gaussian\")"
            ))),
        }
    }
}

fn matches_list(path: &str, names: &[String]) -> bool {
    names
        .iter()
        .any(|n| path == n || path.ends_with(&format!(".{n}")))
}

fn full_regex(re: &str) -> Result<Regex, ModelError> {
    Regex::new(&format!("^(?:{re})$"))
        .map_err(|e| ModelError::Targets(format!("bad regex `{re}`: {e}")))
}

fn selector_matches(sel: &ModuleSelector, path: &str) -> Result<bool, ModelError> {
    Ok(match sel {
        ModuleSelector::List(v) => matches_list(path, v),
        ModuleSelector::Regex(r) => full_regex(r)?.is_match(path),
    })
}

/// PEFT's pattern lookup: the first key `k` with `^(.*\.)?k$` matching the path.
pub(crate) fn pattern_lookup<'a, V>(
    map: &'a BTreeMap<String, V>,
    path: &str,
) -> Result<Option<&'a V>, ModelError> {
    for (k, v) in map {
        let re = Regex::new(&format!(r"^(?:.*\.)?(?:{k})$"))
            .map_err(|e| ModelError::Targets(format!("bad pattern key `{k}`: {e}")))?;
        if re.is_match(path) {
            return Ok(Some(v));
        }
    }
    Ok(None)
}

/// Whether `info` is targeted by `spec` (ignores `modules_to_save`).
pub fn is_targeted(spec: &AdapterSpec, info: &LinearInfo) -> Result<bool, ModelError> {
    let hit = if spec.target_modules.is_all_linear() {
        !info.is_head
    } else {
        selector_matches(&spec.target_modules, &info.path)?
    };
    if !hit {
        return Ok(false);
    }
    if let Some(ex) = &spec.exclude_modules {
        if selector_matches(ex, &info.path)? {
            return Ok(false);
        }
    }
    if let Some(ls) = &spec.layers_to_transform {
        match info.layer {
            Some(l) if ls.contains(l) => {}
            _ => return Ok(false),
        }
    }
    Ok(true)
}

/// Rank, α and scale of the adapter `spec` gives the module at `path`.
pub fn module_hparams(spec: &AdapterSpec, path: &str) -> Result<(usize, f64, f64), ModelError> {
    let r = *pattern_lookup(&spec.rank_pattern, path)?.unwrap_or(&spec.r);
    let alpha = *pattern_lookup(&spec.alpha_pattern, path)?.unwrap_or(&spec.lora_alpha);
    if r == 0 {
        return Err(ModelError::Targets(format!("rank 0 for `{path}`")));
    }
    let scale = if spec.use_rslora {
        alpha / (r as f64).sqrt()
    } else {
        alpha / r as f64
    };
    Ok((r, alpha, scale))
}

/// Parameter counts after surgery.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct TrainableSummary {
    /// Adapter + modules-to-save parameters.
    pub trainable: usize,
    /// All parameters (base + adapters).
    pub total: usize,
    /// Number of adapted layers.
    pub adapters: usize,
}

impl std::fmt::Display for TrainableSummary {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let pct = 100.0 * self.trainable as f64 / self.total.max(1) as f64;
        write!(
            f,
            "trainable params: {} || all params: {} || trainable%: {pct:.4} ({} adapted layers)",
            self.trainable, self.total, self.adapters
        )
    }
}

/// Attaches fresh adapters to every targeted linear layer and unfreezes `modules_to_save`.
/// Errors if nothing is targeted or a `modules_to_save` entry matches no linear layer.
pub fn attach<B: Backend, M: AdapterHost<B>>(
    model: M,
    spec: &AdapterSpec,
    device: &B::Device,
) -> Result<(M, TrainableSummary), ModelError> {
    let init = spec.init()?;
    crate::validate::check_adapter_ranks(&model, spec)?;
    let save = spec.modules_to_save.clone().unwrap_or_default();
    let infos: Vec<LinearInfo> = model.linears().into_iter().map(|(i, _)| i).collect();
    let mut plan: Vec<Option<LoraConfig>> = Vec::with_capacity(infos.len());
    let mut saved_hits = vec![false; save.len()];
    for info in &infos {
        for (k, s) in save.iter().enumerate() {
            if matches_list(&info.path, std::slice::from_ref(s)) {
                saved_hits[k] = true;
            }
        }
        if matches_list(&info.path, &save) {
            plan.push(None);
            continue;
        }
        if is_targeted(spec, info)? {
            let (r, alpha, _) = module_hparams(spec, &info.path)?;
            plan.push(Some(LoraConfig {
                r,
                alpha,
                rslora: spec.use_rslora,
                dropout: spec.lora_dropout,
                init,
                init_std: None,
            }));
        } else {
            plan.push(None);
        }
    }
    if let Some(k) = saved_hits.iter().position(|h| !h) {
        return Err(ModelError::Targets(format!(
            "modules_to_save entry `{}` matches no linear layer of the model",
            save[k]
        )));
    }
    if plan.iter().all(Option::is_none) && save.is_empty() {
        return Err(ModelError::Targets(format!(
            "target_modules {:?} matched no linear layer (module names look like `{}`)",
            spec.target_modules,
            infos.first().map(|i| i.path.as_str()).unwrap_or("")
        )));
    }
    let mut idx = 0;
    let model = model.map_linears(&mut |info, l| {
        let p = plan[idx].take();
        idx += 1;
        if matches_list(&info.path, &save) {
            return unfreeze(l);
        }
        match p {
            Some(cfg) => l.with_adapter(&cfg, device),
            None => l,
        }
    });
    let summary = summary(&model, &save);
    Ok((model, summary))
}

/// Makes a linear layer's base weights trainable (PEFT's `modules_to_save`).
pub fn unfreeze<B: Backend>(mut l: LoraLinear<B>) -> LoraLinear<B> {
    l.base.weight = l.base.weight.set_require_grad(true);
    l.base.bias = l.base.bias.map(|b| b.set_require_grad(true));
    l
}

/// Trainable-parameter summary; `modules_to_save` lists fully trained modules.
pub fn summary<B: Backend, M: AdapterHost<B>>(
    model: &M,
    modules_to_save: &[String],
) -> TrainableSummary {
    let mut s = TrainableSummary {
        total: model.num_params(),
        ..Default::default()
    };
    for (info, l) in model.linears() {
        if let Some(a) = &l.adapter {
            s.adapters += 1;
            s.trainable += a.lora_a.shape().num_elements() + a.lora_b.shape().num_elements();
        }
        if matches_list(&info.path, modules_to_save) {
            s.trainable += l.base.num_params();
        }
    }
    s
}

/// Merges every adapter into its base weight.
pub fn merge_all<B: Backend, M: AdapterHost<B>>(model: M) -> M {
    model.map_linears(&mut |_, l| l.merge())
}

/// Undoes [`merge_all`].
pub fn unmerge_all<B: Backend, M: AdapterHost<B>>(model: M) -> M {
    model.map_linears(&mut |_, l| l.unmerge())
}
