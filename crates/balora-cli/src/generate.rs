//! `balora generate`: prompt → text with a Llama-family model (GGUF or HF folder), optional
//! PEFT adapter, greedy or sampled, optional ChatML chat template.

use anyhow::{Context, Result};
use balora_models::generate::{
    chatml_prompt, check_options, check_prompt, try_generate, GenerateOptions,
};
use balora_models::load::load_causal_lm;
use balora_models::peft::{apply_adapter_tensors, read_adapter};
use balora_models::validate::check_adapter_pairs;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::Instant;

/// Arguments of `balora generate`.
#[derive(clap::Args, Debug)]
pub struct Args {
    /// The prompt.
    #[arg(long)]
    prompt: String,
    /// Model: a `.gguf` file or a Hugging Face folder (default: the SmolLM2 asset).
    #[arg(long)]
    model: Option<PathBuf>,
    /// PEFT adapter folder (`adapter_model.safetensors` + `adapter_config.json`).
    #[arg(long)]
    adapter: Option<PathBuf>,
    /// Maximum new tokens.
    #[arg(long, default_value_t = 64)]
    max_tokens: usize,
    /// Sampling temperature (0 = greedy).
    #[arg(long, default_value_t = 0.0)]
    temperature: f64,
    /// Nucleus sampling mass.
    #[arg(long, default_value_t = 1.0)]
    top_p: f64,
    /// Sampling seed.
    #[arg(long, default_value_t = 0)]
    seed: u64,
    /// Wrap the prompt in the ChatML chat template (SmolLM2-Instruct).
    #[arg(long)]
    chat: bool,
    /// Compute backend.
    #[arg(long, default_value = "flex")]
    backend: crate::backend::BackendKind,
}

/// The model to use: `--model`, else the fetched SmolLM2 asset.
pub fn default_model(model: Option<&Path>) -> Result<PathBuf> {
    if let Some(m) = model {
        return Ok(m.to_path_buf());
    }
    balora_assets::find(&balora_assets::default_cache_dir())
        .smollm2_gguf()
        .map_err(|e| anyhow::anyhow!("{e}\nno --model given and the SmolLM2 asset is missing: run `cargo xtask assets` (or `balora assets`)"))
}

/// Runs the command.
pub fn run(a: Args) -> Result<()> {
    check_options(&GenerateOptions {
        temperature: a.temperature,
        top_p: a.top_p,
        ..GenerateOptions::default()
    })
    .map_err(|e| anyhow::anyhow!("--temperature / --top-p: {e}"))?;
    if a.prompt.is_empty() {
        anyhow::bail!("--prompt is empty: give some text to continue");
    }
    let path = default_model(a.model.as_deref())?;
    let kind = balora_models::load::model_kind(&path)?;
    if kind != balora_models::load::ModelKind::Llama {
        anyhow::bail!(
            "{}: a {} model; `balora generate` runs Llama-style models only (`balora train` and `balora merge` take this one)",
            path.display(),
            kind.name()
        );
    }
    crate::backend::dispatch!(a.backend, |B, device| run_on::<
        <B as burn::tensor::backend::AutodiffBackend>::InnerBackend,
    >(&a, &path, &device))?
}

fn run_on<B: burn::tensor::backend::Backend>(
    a: &Args,
    path: &Path,
    device: &B::Device,
) -> Result<()> {
    let t0 = Instant::now();
    let mut lm =
        load_causal_lm::<B>(path, device).with_context(|| format!("loading {}", path.display()))?;
    if let Some(dir) = &a.adapter {
        let (spec, w) =
            read_adapter(dir).with_context(|| format!("loading adapter {}", dir.display()))?;
        // Shapes and finite values before anything runs (a NaN adapter would print nothing).
        check_adapter_pairs(&w).with_context(|| format!("loading adapter {}", dir.display()))?;
        let m = apply_adapter_tensors(lm.model, &spec, &w, device)
            .with_context(|| format!("loading adapter {}", dir.display()))?;
        tracing::info!("adapter {} (r = {}) attached", dir.display(), spec.r);
        lm.model = m;
    }
    tracing::info!(
        "loaded {} in {:.1}s",
        path.display(),
        t0.elapsed().as_secs_f64()
    );
    let text = if a.chat {
        chatml_prompt(&a.prompt)
    } else {
        a.prompt.clone()
    };
    let enc = lm
        .tokenizer
        .encode(text.as_str(), false)
        .map_err(|e| anyhow::anyhow!("tokenizing the prompt: {e}"))?;
    let ids = enc.get_ids().to_vec();
    check_prompt(&lm.model, &ids)
        .map_err(|e| anyhow::anyhow!("{}: --prompt: {e}", path.display()))?;
    let mut stop = lm.eos_ids.clone();
    if let Some(id) = lm.tokenizer.token_to_id("<|im_end|>") {
        stop.push(id);
    }
    let opts = GenerateOptions {
        max_tokens: a.max_tokens,
        temperature: a.temperature,
        top_p: a.top_p,
        seed: a.seed,
        stop_ids: stop,
    };
    let mut out_ids: Vec<u32> = Vec::new();
    let mut printed = 0usize;
    let mut stdout = std::io::stdout();
    if !a.chat {
        print!("{}", a.prompt);
    }
    let t1 = Instant::now();
    let tok = &lm.tokenizer;
    let new = try_generate(&lm.model, &ids, &opts, |id| {
        out_ids.push(id);
        if let Ok(s) = tok.decode(&out_ids, true) {
            // Print only complete characters (a token may end inside a UTF-8 sequence).
            if !s.ends_with('\u{FFFD}') && s.len() > printed {
                let _ = write!(stdout, "{}", &s[printed..]);
                let _ = stdout.flush();
                printed = s.len();
            }
        }
    })
    .map_err(|e| anyhow::anyhow!("{}: {e}", path.display()))?;
    let secs = t1.elapsed().as_secs_f64();
    if let Ok(s) = tok.decode(&new, true) {
        if s.len() > printed {
            print!("{}", &s[printed..]);
        }
    }
    println!();
    tracing::info!(
        "{} prompt tokens, {} new tokens in {secs:.2}s ({:.1} tokens/s)",
        ids.len(),
        new.len(),
        new.len() as f64 / secs.max(1e-9)
    );
    Ok(())
}
