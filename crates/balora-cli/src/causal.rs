//! The causal LMs of `model.family = "llama"` (the causal-LM family): a Llama-style decoder (a
//! `.gguf` file or a Hugging Face folder), or a GPT-2 / GPT-NeoX Hugging Face folder, told apart
//! by the folder's `config.json` ([`model_kind`]). Every one trains through the same generic
//! path ([`crate::train::run_method`]) and writes the same PEFT adapter.

use crate::train::Base;
use anyhow::{bail, Context, Result};
use balora_adapter::BaseDtype;
use balora_config::JobConfig;
use balora_data::ModelLimits;
use balora_formats::load_tokenizer_json;
use balora_models::load::{
    load_causal_lm_as, load_gpt2_hf_dir, load_gpt_neox_hf_dir, model_kind, ModelKind,
};
use burn::tensor::backend::AutodiffBackend;
use std::path::Path;
use tokenizers::Tokenizer;

/// Loads the causal LM at `path` with its tokenizer (`None`: a GPT folder without
/// `tokenizer.json`, for `model.tokenizer` to supply) and what the data must fit.
pub fn load<B: AutodiffBackend>(
    cfg: &JobConfig,
    path: &Path,
    device: &B::Device,
) -> Result<(Base<B>, Option<Tokenizer>, ModelLimits)> {
    let kind = model_kind(path)?;
    let dtype = cfg.model.base_dtype()?;
    let limits = |vocab_size, context| ModelLimits {
        vocab_size,
        context,
        num_labels: None,
    };
    let loading = || format!("loading {}", path.display());
    if kind == ModelKind::Bert {
        bail!(
            "{}: config.json says a BERT model (model_type `bert`): set model.family = \"bert\" (a classifier, data.format = \"classification\")",
            path.display()
        );
    }
    if kind != ModelKind::Llama && dtype != BaseDtype::F32 {
        bail!(
            "model.dtype = \"{}\": a quantized base is implemented for Llama-style models only, and {} is {}: use \"f32\"",
            dtype.name(),
            path.display(),
            kind.name()
        );
    }
    let (base, limits) = match kind {
        ModelKind::Gpt2 => {
            let (m, c) = load_gpt2_hf_dir::<B>(path, device).with_context(loading)?;
            (Base::Gpt2(m), limits(c.vocab_size, c.max_position))
        }
        ModelKind::GptNeoX => {
            let (m, c) = load_gpt_neox_hf_dir::<B>(path, device).with_context(loading)?;
            (Base::NeoX(m), limits(c.vocab_size, c.max_position))
        }
        ModelKind::Llama | ModelKind::Bert => {
            let lm = load_causal_lm_as::<B>(path, dtype, device).with_context(loading)?;
            let l = limits(lm.config.vocab_size, lm.config.max_position);
            return Ok((Base::Llama(lm.model), Some(lm.tokenizer), l));
        }
    };
    // The GPT loaders read weights only: the folder's tokenizer, when it has one.
    let tpath = path.join("tokenizer.json");
    let tokenizer = if tpath.is_file() {
        Some(load_tokenizer_json(&tpath)?)
    } else {
        None
    };
    Ok((base, tokenizer, limits))
}

/// `model.family = "bert"` on a GPT folder: an error that names the family to use.
pub fn check_not_causal(path: &Path) -> Result<()> {
    let kind = model_kind(path)?;
    if matches!(kind, ModelKind::Gpt2 | ModelKind::GptNeoX) {
        bail!(
            "{}: config.json says a {} causal LM, not BERT: set model.family = \"llama\" (the causal-LM family, which reads GPT-2 and GPT-NeoX folders too)",
            path.display(),
            kind.name()
        );
    }
    Ok(())
}
