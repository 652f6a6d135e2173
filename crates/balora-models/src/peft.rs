//! PEFT-compatible adapter files: `adapter_model.safetensors` + `adapter_config.json`, with
//! PEFT's key names (`base_model.model.<module>.lora_A.weight` `[r, in]`, `lora_B.weight`
//! `[out, r]`) and config fields. Every model is in Hugging Face layout (a GGUF's q/k rows are
//! un-permuted at load), so the factors are written and read as they are. On GPT-2's `Conv1D`
//! layers (PEFT's `fan_in_fan_out=True`) the factors have the same shapes and meaning (PEFT
//! merges `W += transpose(B·A)·scale` into the `[in, out]` weight, which is burn's layout);
//! only a `modules_to_save` weight is written and read `[in, out]` there.

use crate::linears::AdapterHost;
use crate::surgery::{layer_adapter, unfreeze};
use crate::weights::{to_vec, Weights};
use crate::ModelError;
use balora_adapter::{LoraAdapter, LoraLinear};
use balora_adapter::{LoraConfig, ModuleSelector};
use burn::tensor::{backend::Backend, Tensor, TensorData};
use serde_json::json;
use std::collections::BTreeSet;
use std::path::Path;

mod config;
mod wire;
pub use config::{parse_config, INERT, USED};
pub use wire::LayerSelector;

/// File names inside an adapter directory.
pub const ADAPTER_WEIGHTS: &str = "adapter_model.safetensors";
/// Config file name.
pub const ADAPTER_CONFIG: &str = "adapter_config.json";

/// Extra fields written into `adapter_config.json`.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct AdapterMeta {
    /// PEFT `task_type` (`CAUSAL_LM`, `SEQ_CLS`, `FEATURE_EXTRACTION`).
    pub task_type: Option<String>,
    /// Base model name or path.
    pub base_model_name_or_path: Option<String>,
}

/// The PEFT key prefix of a module.
pub fn peft_prefix(path: &str) -> String {
    format!("base_model.model.{path}")
}

fn adapter_err(file: &Path, m: String) -> ModelError {
    ModelError::Adapter {
        file: file.display().to_string(),
        message: m,
    }
}

/// The suffix names of the adapted modules (PEFT writes the resolved set for `"all-linear"`).
fn resolved_targets<B: Backend, M: AdapterHost<B>>(model: &M) -> Vec<String> {
    let set: BTreeSet<String> = model
        .linears()
        .into_iter()
        .filter(|(_, l)| l.adapter.is_some())
        .map(|(i, _)| i.path.rsplit('.').next().unwrap_or(&i.path).to_string())
        .collect();
    set.into_iter().collect()
}

/// The `adapter_config.json` text PEFT would write for `spec` (pattern keys in their order).
pub fn config_json<B: Backend, M: AdapterHost<B>>(
    model: &M,
    spec: &LoraConfig,
    meta: &AdapterMeta,
) -> String {
    let targets = match &spec.targets {
        ModuleSelector::Regex(r) if r != "all-linear" => json!(r),
        ModuleSelector::List(v) if !(v.len() == 1 && v[0] == "all-linear") => json!(v),
        _ => json!(resolved_targets(model)),
    };
    wire::to_peft(spec, targets, adapts_conv1d(model), meta)
}

/// Whether an adapted layer is a Hugging Face `Conv1D` (GPT-2): PEFT then records
/// `fan_in_fan_out: true`.
fn adapts_conv1d<B: Backend, M: AdapterHost<B>>(model: &M) -> bool {
    model
        .linears()
        .iter()
        .any(|(i, l)| l.adapter.is_some() && i.fan_in_fan_out)
}

/// A base weight as a file holds it: `[out, in]` (`nn.Linear`), or `[in, out]` for a
/// `Conv1D` (`fan_in_fan_out`), which is burn's own layout.
fn base_weight_out<B: Backend>(fan_in_fan_out: bool, l: &LoraLinear<B>) -> (Vec<usize>, Vec<f32>) {
    let (din, dout) = l.dims();
    if fan_in_fan_out {
        (vec![din, dout], to_vec(l.base.weight.val()))
    } else {
        (vec![dout, din], to_vec(l.base_weight().transpose()))
    }
}

/// All tensors of the adapter file, in PEFT names and HF layout.
pub fn adapter_tensors<B: Backend, M: AdapterHost<B>>(
    model: &M,
    spec: &LoraConfig,
) -> Vec<(String, Vec<usize>, Vec<f32>)> {
    let save = spec.modules_to_save.clone();
    let mut out = Vec::new();
    for (info, l) in model.linears() {
        let pre = peft_prefix(&info.path);
        if let Some(a) = &l.adapter {
            let [r, din] = a.lora_a.dims();
            let [dout, _] = a.lora_b.dims();
            let b = to_vec(a.lora_b.val());
            out.push((
                format!("{pre}.lora_A.weight"),
                vec![r, din],
                to_vec(a.lora_a.val()),
            ));
            out.push((format!("{pre}.lora_B.weight"), vec![dout, r], b));
        }
        if save
            .iter()
            .any(|s| info.path == *s || info.path.ends_with(&format!(".{s}")))
        {
            let (shape, w) = base_weight_out(info.fan_in_fan_out, l);
            out.push((format!("{pre}.weight"), shape, w));
            let dout = l.dims().1;
            if let Some(bias) = &l.base.bias {
                out.push((format!("{pre}.bias"), vec![dout], to_vec(bias.val())));
            }
        }
    }
    out
}

/// Saves the model's adapters as a PEFT adapter directory (both files written atomically).
pub fn save_adapter<B: Backend, M: AdapterHost<B>>(
    model: &M,
    spec: &LoraConfig,
    meta: &AdapterMeta,
    dir: &Path,
) -> Result<(), ModelError> {
    let tensors = adapter_tensors(model, spec);
    if tensors.is_empty() {
        return Err(adapter_err(dir, "the model has no adapters to save".into()));
    }
    let wpath = dir.join(ADAPTER_WEIGHTS);
    balora_formats::write_safetensors(&wpath, &tensors, balora_formats::PT_FORMAT)
        .map_err(|e| ModelError::format(&wpath, e))?;
    let cfg = config_json(model, spec, meta);
    Ok(balora_formats::atomic::write_atomic(
        &dir.join(ADAPTER_CONFIG),
        cfg.as_bytes(),
    )?)
}

/// Reads an adapter directory: the parsed config and the raw tensors.
pub fn read_adapter(dir: &Path) -> Result<(LoraConfig, crate::MemWeights), ModelError> {
    let cpath = dir.join(ADAPTER_CONFIG);
    let text = std::fs::read_to_string(&cpath).map_err(|e| ModelError::io(&cpath, e))?;
    let spec = parse_config(&text, &cpath.display().to_string())?;
    let wpath = dir.join(ADAPTER_WEIGHTS);
    let w = crate::MemWeights::read_safetensors(&wpath)?;
    // Shapes, ranks and finiteness before anything computes with the pairs.
    crate::validate::check_adapter_pairs(&w)?;
    Ok((spec, w))
}

fn tensor2<B: Backend>(data: Vec<f32>, shape: [usize; 2], dev: &B::Device) -> Tensor<B, 2> {
    Tensor::from_data(TensorData::new(data, shape), dev)
}

/// Attaches the adapters of a PEFT adapter directory to `model` (replacing any present).
/// Every key of the file must belong to a module of the model; shapes are checked.
pub fn load_adapter<B: Backend, M: AdapterHost<B>>(
    model: M,
    dir: &Path,
    device: &B::Device,
) -> Result<(M, LoraConfig), ModelError> {
    let (spec, w) = read_adapter(dir)?;
    let model = apply_adapter_tensors(model, &spec, &w, device)?;
    warn_fan_in_fan_out(&model, &dir.join(ADAPTER_CONFIG));
    Ok((model, spec))
}

/// PEFT overrides a config's `fan_in_fan_out` by each module's type (`Conv1D` → true,
/// `nn.Linear` → false) with a warning; so does balora (the factors mean the same either way).
fn warn_fan_in_fan_out<B: Backend, M: AdapterHost<B>>(model: &M, cpath: &Path) {
    let Some(said) = std::fs::read_to_string(cpath)
        .ok()
        .and_then(|t| serde_json::from_str::<serde_json::Value>(&t).ok())
        .and_then(|v| v.get("fan_in_fan_out").and_then(serde_json::Value::as_bool))
    else {
        return;
    };
    let adapted: Vec<bool> = model
        .linears()
        .iter()
        .filter(|(_, l)| l.adapter.is_some())
        .map(|(i, _)| i.fan_in_fan_out)
        .collect();
    if adapted.iter().any(|&c| c != said) {
        tracing::warn!(
            file = %cpath.display(),
            "fan_in_fan_out is {said} but the adapted layers are {}: set by the layer type, as PEFT does",
            if said { "nn.Linear layers ([out, in] weights)" } else { "Conv1D layers ([in, out] weights)" }
        );
    }
}

/// Attaches adapters from PEFT-named tensors `w` according to `spec`.
pub fn apply_adapter_tensors<B: Backend, M: AdapterHost<B>>(
    mut model: M,
    spec: &LoraConfig,
    w: &crate::MemWeights,
    device: &B::Device,
) -> Result<M, ModelError> {
    let file = std::path::PathBuf::from(w.origin());
    let mut consumed: BTreeSet<String> = BTreeSet::new();
    let save = spec.modules_to_save.clone();
    for (info, l) in model.linears_mut() {
        let pre = peft_prefix(&info.path);
        let (din, dout) = l.dims();
        let ka = format!("{pre}.lora_A.weight");
        let kb = format!("{pre}.lora_B.weight");
        if w.contains(&ka) || w.contains(&kb) {
            let (sa, a) = w.fetch(&ka)?;
            let (sb, b) = w.fetch(&kb)?;
            if sa.len() != 2 || sa[1] != din {
                return Err(ModelError::Shape {
                    file: w.origin(),
                    tensor: ka,
                    expected: vec![sa.first().copied().unwrap_or(0), din],
                    actual: sa,
                });
            }
            let r = sa[0];
            if sb != [dout, r] {
                return Err(ModelError::Shape {
                    file: w.origin(),
                    tensor: kb,
                    expected: vec![dout, r],
                    actual: sb,
                });
            }
            let layer = layer_adapter(spec, &info.path)?;
            let (r_cfg, scale) = (layer.r(), layer.scale());
            if r_cfg != r {
                return Err(adapter_err(
                    &file,
                    format!(
                        "`{ka}` has rank {r} but the config gives rank {r_cfg} for `{}`",
                        info.path
                    ),
                ));
            }
            // A file may hold adapters for modules its config does not target; PEFT loads
            // them anyway, and so do we.
            *l = attach_factors(
                l.clone(),
                tensor2(a, [r, din], device),
                tensor2(b, [dout, r], device),
                scale,
                spec.dropout,
            );
            consumed.insert(ka);
            consumed.insert(kb);
        }
        let kw = format!("{pre}.weight");
        if w.contains(&kw) {
            if !save
                .iter()
                .any(|s| info.path == *s || info.path.ends_with(&format!(".{s}")))
            {
                return Err(adapter_err(
                    &file,
                    format!(
                        "`{kw}` is present but `{}` is not in modules_to_save",
                        info.path
                    ),
                ));
            }
            let mut base = l.base.clone();
            base.weight = crate::weights::frozen(if info.fan_in_fan_out {
                let data = crate::weights::fetch_checked(w, &kw, &[din, dout])?;
                tensor2::<B>(data, [din, dout], device)
            } else {
                let data = crate::weights::fetch_checked(w, &kw, &[dout, din])?;
                tensor2::<B>(data, [dout, din], device).transpose()
            });
            consumed.insert(kw);
            let kbias = format!("{pre}.bias");
            if w.contains(&kbias) {
                let bd = crate::weights::fetch_checked(w, &kbias, &[dout])?;
                base.bias = Some(crate::weights::frozen(Tensor::from_data(
                    TensorData::new(bd, [dout]),
                    device,
                )));
                consumed.insert(kbias);
            }
            let mut nl = l.clone();
            nl.base = base;
            *l = unfreeze(nl);
        }
    }
    if let Some(extra) = w.tensors.keys().find(|k| !consumed.contains(*k)) {
        return Err(adapter_err(&file, format!("tensor `{extra}` matches no adapted module of this model (expected keys like `base_model.model.<module>.lora_A.weight`)")));
    }
    if consumed.is_empty() {
        return Err(adapter_err(
            &file,
            "the file holds no adapter tensors".into(),
        ));
    }
    Ok(model)
}

fn attach_factors<B: Backend>(
    mut l: LoraLinear<B>,
    a: Tensor<B, 2>,
    b: Tensor<B, 2>,
    scale: f64,
    dropout: f64,
) -> LoraLinear<B> {
    l.adapter = Some(LoraAdapter::from_tensors(a, b, scale, dropout));
    l
}
