//! Attaching adapters like PEFT: target selection, per-module rank/alpha, modules to save,
//! trainable-parameter summary, merge/unmerge. The request is a [`LoraConfig`] (the one
//! adapter configuration, also the TOML `[adapter]` section and, via [`crate::peft`], PEFT's
//! `adapter_config.json`); each layer's values come from [`LoraConfig::resolve`].

use crate::linears::{AdapterHost, LinearInfo};
use crate::ModelError;
use balora_adapter::{name_matches, LayerLora, LoraConfig, LoraConfigError, LoraLinear};
use burn::module::Module;
use burn::tensor::backend::Backend;

fn config_err(e: LoraConfigError) -> ModelError {
    ModelError::Targets(e.to_string())
}

/// Whether `info` gets an adapter under `cfg` ([`LoraConfig::selects`]; ignores `modules_to_save`).
pub fn is_targeted(cfg: &LoraConfig, info: &LinearInfo) -> Result<bool, ModelError> {
    cfg.selects(&info.path, info.layer, info.is_head)
        .map_err(config_err)
}

/// The adapter `cfg` gives the module at `path` ([`LoraConfig::resolve`]: rank and α after
/// `rank_pattern` / `alpha_pattern`, scale, dropout, initialisation).
pub fn layer_adapter(cfg: &LoraConfig, path: &str) -> Result<LayerLora, ModelError> {
    cfg.resolve(path).map_err(config_err)
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
    spec: &LoraConfig,
    device: &B::Device,
) -> Result<(M, TrainableSummary), ModelError> {
    spec.validate().map_err(config_err)?;
    crate::validate::check_adapter_ranks(&model, spec)?;
    let save = spec.modules_to_save.clone();
    if let Some((i, _)) = model
        .linears()
        .into_iter()
        .find(|(i, l)| l.quant.is_some() && name_matches(&i.path, &save))
    {
        return Err(ModelError::Targets(format!(
            "modules_to_save: `{}` is held as quantization blocks (model.dtype); a fully trained layer needs model.dtype = \"f32\"",
            i.path
        )));
    }
    let infos: Vec<LinearInfo> = model.linears().into_iter().map(|(i, _)| i).collect();
    let mut plan: Vec<Option<LayerLora>> = Vec::with_capacity(infos.len());
    let mut saved_hits = vec![false; save.len()];
    for info in &infos {
        for (k, s) in save.iter().enumerate() {
            if name_matches(&info.path, std::slice::from_ref(s)) {
                saved_hits[k] = true;
            }
        }
        if name_matches(&info.path, &save) {
            plan.push(None);
            continue;
        }
        if is_targeted(spec, info)? {
            // Rank, α, scale and the initialisation of A (init_std, or 1/r of this layer's
            // rank) come from the one resolution function, for every model family alike.
            plan.push(Some(layer_adapter(spec, &info.path)?));
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
    // As PEFT: targets that match nothing are an error even when modules_to_save matched
    // (otherwise only the saved modules would train, silently).
    if plan.iter().all(Option::is_none) {
        let examples: Vec<&str> = infos.iter().take(8).map(|i| i.path.as_str()).collect();
        return Err(ModelError::Targets(format!(
            "adapter.targets {} matched no linear layer (module names look like `{}`)",
            spec.targets,
            examples.join("`, `")
        )));
    }
    let mut idx = 0;
    let model = model.map_linears(&mut |info, l| {
        let p = plan[idx].take();
        idx += 1;
        if name_matches(&info.path, &save) {
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
        // A base held as blocks is outside the module's parameters.
        s.total += l.quant.as_ref().map_or(0, |q| q.rows() * q.cols());
        if let Some(a) = &l.adapter {
            s.adapters += 1;
            s.trainable += a.lora_a.shape().num_elements() + a.lora_b.shape().num_elements();
        }
        if name_matches(&info.path, modules_to_save) {
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
