//! `balora merge`: base model + PEFT adapter → one safetensors file of merged weights in
//! Hugging Face names and layout.

use anyhow::{bail, Context, Result};
use balora_models::export::{bert_hf_tensors, llama_hf_tensors};
use balora_models::load::{load_bert_hf_dir, load_causal_lm};
use balora_models::peft::load_adapter;
use balora_models::st::write_safetensors;
use balora_models::{merge_all, AdapterHost};
use std::path::PathBuf;

/// Arguments of `balora merge`.
#[derive(clap::Args, Debug)]
pub struct Args {
    /// Base model: `.gguf` file or Hugging Face folder (default: the SmolLM2 asset).
    #[arg(long)]
    base: Option<PathBuf>,
    /// PEFT adapter folder.
    #[arg(long)]
    adapter: PathBuf,
    /// Output `.safetensors` file.
    #[arg(long)]
    out: PathBuf,
}

fn is_bert(dir: &std::path::Path) -> bool {
    std::fs::read_to_string(dir.join("config.json"))
        .ok()
        .and_then(|t| serde_json::from_str::<serde_json::Value>(&t).ok())
        .and_then(|v| {
            v.get("model_type")
                .and_then(|m| m.as_str())
                .map(|m| m == "bert")
        })
        .unwrap_or(false)
}

/// Runs the command.
pub fn run(a: Args) -> Result<()> {
    let base = crate::generate::default_model(a.base.as_deref())?;
    let device = Default::default();
    type B = burn::backend::NdArray;
    let (tensors, adapted) = if base.is_dir() && is_bert(&base) {
        let (m, _, _) = load_bert_hf_dir::<B>(&base, &device)
            .with_context(|| format!("loading {}", base.display()))?;
        let (m, _) = load_adapter(m, &a.adapter, &device)
            .with_context(|| format!("loading adapter {}", a.adapter.display()))?;
        let n = m
            .linears()
            .iter()
            .filter(|(_, l)| l.adapter.is_some())
            .count();
        (bert_hf_tensors(&merge_all(m), ""), n)
    } else {
        let lm = load_causal_lm::<B>(&base, &device)
            .with_context(|| format!("loading {}", base.display()))?;
        let (m, _) = load_adapter(lm.model, &a.adapter, &device)
            .with_context(|| format!("loading adapter {}", a.adapter.display()))?;
        let n = m
            .linears()
            .iter()
            .filter(|(_, l)| l.adapter.is_some())
            .count();
        (llama_hf_tensors(&merge_all(m)), n)
    };
    if adapted == 0 {
        bail!("{}: no adapter matched the base model", a.adapter.display());
    }
    write_safetensors(&a.out, &tensors).with_context(|| format!("writing {}", a.out.display()))?;
    println!(
        "merged {adapted} adapters into {} tensors → {}",
        tensors.len(),
        a.out.display()
    );
    Ok(())
}
