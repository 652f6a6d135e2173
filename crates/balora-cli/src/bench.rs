//! `balora bench`: one workload of the side-by-side benchmark against PyTorch + PEFT.
//!
//! `cargo xtask bench-torch` runs this and `tools/bench/torch_reference.py` on the same
//! workloads, alternating, and prints the table (docs/benchmarks.md). Each call prints one JSON
//! line: tokens/s, seconds per step, first/last loss, peak resident memory.
//!
//! Workloads (the reference script defines them identically):
//! * `lm-train` — SmolLM2-135M-Instruct (the GGUF asset, dequantised to f32), LoRA r = 8,
//!   α = 16 on `q_proj`/`v_proj`, AdamW lr 3e-3 (constant, no weight decay), gradient clipping
//!   at norm 1, batch 4 × seq 32 of consecutive Moby Dick windows; `lm-train-long`: seq 256.
//! * `cls-train` — all-MiniLM-L6-v2, masked-mean pooling + linear head (2 classes, trained),
//!   LoRA r = 8 on `query`/`value`, AdamW lr 1e-3, batch 16 × seq 64 of consecutive Moby Dick
//!   windows (the MiniLM tokenizer without truncation), label = window index mod 2.
//! * `decode` — SmolLM2, greedy, `--new-tokens` tokens after a fixed prompt, with the KV cache,
//!   prompt processing included; tokens/s of the median run.
//!
//! Model loading and `--warmup` steps are not timed.

use crate::backend::BackendKind;
use anyhow::{Context, Result};
use balora_config::{ScheduleName, TrainerSection};
use balora_data::{Dataset, Example};
use balora_models::generate::{generate, GenerateOptions};
use balora_models::surgery::attach;
use balora_models::{BertForSequenceClassification, Pooling};
use balora_models::{LoraConfig, ModuleSelector};
use balora_optim::RegistryBackend;
use balora_train::{train, Objective, RunOptions, TrainStepper};
use burn::module::AutodiffModule;
use burn::tensor::backend::AutodiffBackend;
use serde_json::{json, Value};
use std::path::PathBuf;
use std::time::Instant;

/// A benchmark workload.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Workload {
    /// SmolLM2 LoRA training, batch 4 × seq 32.
    LmTrain,
    /// SmolLM2 LoRA training, batch 4 × seq 256.
    LmTrainLong,
    /// MiniLM classification training, batch 16 × seq 64.
    ClsTrain,
    /// Greedy decoding with a KV cache.
    Decode,
}

/// Arguments of `balora bench`.
#[derive(clap::Args, Debug)]
pub struct Args {
    /// The workload.
    #[arg(long)]
    workload: Workload,
    /// Compute backend.
    #[arg(long, default_value = "flex")]
    backend: BackendKind,
    /// Timed steps (decode: timed generations).
    #[arg(long, default_value_t = 10)]
    steps: u64,
    /// Untimed steps (generations) first.
    #[arg(long, default_value_t = 2)]
    warmup: u64,
    /// Batch size (default per workload).
    #[arg(long)]
    batch: Option<usize>,
    /// Sequence length (default per workload).
    #[arg(long)]
    seq: Option<usize>,
    /// New tokens per generation (decode).
    #[arg(long, default_value_t = 64)]
    new_tokens: usize,
    /// Prompt (decode).
    #[arg(long, default_value = "The capital of France is")]
    prompt: String,
    /// Manifold of the training workloads: `unconstrained` (LoRA) or `balanced` (BaLoRA).
    #[arg(long, default_value = "unconstrained")]
    manifold: String,
}

/// Runs one workload and prints its JSON line.
pub fn run(a: Args) -> Result<()> {
    let assets = balora_assets::find(&balora_assets::default_cache_dir());
    let missing = |e: balora_assets::AssetError| {
        anyhow::anyhow!("{e}\nthe benchmark needs the pinned assets: run `cargo xtask assets`")
    };
    let (batch, seq) = match a.workload {
        Workload::LmTrain => (4, 32),
        Workload::LmTrainLong => (4, 256),
        Workload::ClsTrain => (16, 64),
        Workload::Decode => (1, 0),
    };
    let (batch, seq) = (a.batch.unwrap_or(batch), a.seq.unwrap_or(seq));
    let mut out = match a.workload {
        Workload::Decode => {
            let gguf = assets.smollm2_gguf().map_err(missing)?;
            crate::backend::dispatch!(a.backend, |B, device| decode::<
                <B as AutodiffBackend>::InnerBackend,
            >(
                &a, gguf.clone(), &device
            ))??
        }
        Workload::LmTrain | Workload::LmTrainLong | Workload::ClsTrain => {
            let text = assets.moby_dick_text().map_err(missing)?;
            let model = if a.workload == Workload::ClsTrain {
                assets.minilm_dir().map_err(missing)?
            } else {
                assets.smollm2_gguf().map_err(missing)?
            };
            crate::backend::dispatch!(a.backend, |B, device| train_bench::<B>(
                &a, batch, seq, &model, &text, &device
            ))??
        }
    };
    out["impl"] = json!("balora");
    out["backend"] = json!(a.backend.to_string());
    out["workload"] =
        json!(clap::ValueEnum::to_possible_value(&a.workload).map(|v| v.get_name().to_string()));
    out["batch"] = json!(batch);
    out["seq"] = json!(seq);
    out["peak_rss_mib"] = json!(peak_rss_mib());
    out["threads"] = json!(rayon_threads());
    println!("{out}");
    Ok(())
}

/// Consecutive non-overlapping windows of `seq` ids of the first 200 000 characters of `text`.
fn windows(tok: &tokenizers::Tokenizer, text: &str, seq: usize) -> Result<Vec<Vec<u32>>> {
    let cut: String = text.chars().take(200_000).collect();
    let mut tok = tok.clone();
    tok.with_truncation(None)
        .map_err(|e| anyhow::anyhow!("tokenizer: {e}"))?
        .with_padding(None);
    let ids = tok
        .encode(cut.as_str(), false)
        .map_err(|e| anyhow::anyhow!("tokenizing the text: {e}"))?
        .get_ids()
        .to_vec();
    let w: Vec<Vec<u32>> = ids.chunks_exact(seq.max(1)).map(<[u32]>::to_vec).collect();
    anyhow::ensure!(!w.is_empty(), "the text has fewer than {seq} tokens");
    Ok(w)
}

fn trainer(steps: u64, batch: usize, lr: f64) -> TrainerSection {
    TrainerSection {
        steps,
        batch_size: batch,
        lr,
        schedule: ScheduleName::Constant,
        warmup_steps: 0,
        max_grad_norm: 1.0,
        eval_every: 0,
        progress: false,
        ..TrainerSection::default()
    }
}

/// Warm-up run, then the timed run; `(tokens/s, s/step, first loss, last loss)`.
fn timed<B, M>(
    a: &Args,
    model: M,
    data: &Dataset,
    batch: usize,
    lr: f64,
    objective: &Objective<B, M>,
    device: &B::Device,
) -> Result<Value>
where
    B: AutodiffBackend,
    B::InnerBackend: RegistryBackend,
    M: AutodiffModule<B>,
{
    let stepper = || {
        TrainStepper::<B>::from_names(
            "adamw",
            &Default::default(),
            &a.manifold,
            &Default::default(),
        )
    };
    let run = |model: M, steps: u64| {
        train(
            model,
            &mut stepper()?,
            data,
            &trainer(steps, batch, lr),
            &RunOptions::default(),
            objective,
            device,
        )
        .map_err(anyhow::Error::from)
    };
    let model = if a.warmup > 0 {
        run(model, a.warmup)?.model
    } else {
        model
    };
    let o = run(model, a.steps.max(1))?;
    let losses: Vec<f64> = o
        .history
        .iter()
        .filter(|r| r.kind == "train")
        .map(|r| r.loss)
        .collect();
    Ok(json!({
        "steps": a.steps.max(1),
        "tokens_per_s": o.tokens as f64 / o.train_s.max(1e-9),
        "seconds_per_step": o.train_s / a.steps.max(1) as f64,
        "loss_first": losses.first(),
        "loss_last": losses.last(),
        "manifold": a.manifold,
    }))
}

fn train_bench<B: AutodiffBackend>(
    a: &Args,
    batch: usize,
    seq: usize,
    model_path: &std::path::Path,
    text_path: &std::path::Path,
    device: &B::Device,
) -> Result<Value>
where
    B::InnerBackend: RegistryBackend,
{
    let text = std::fs::read_to_string(text_path)
        .with_context(|| format!("reading {}", text_path.display()))?;
    B::seed(device, 0);
    if a.workload == Workload::ClsTrain {
        let (bert, _cfg, tok) = balora_models::load::load_bert_hf_dir::<B>(model_path, device)?;
        let train: Vec<Example> = windows(&tok, &text, seq)?
            .into_iter()
            .enumerate()
            .map(|(i, ids)| Example::class(ids, i % 2))
            .collect();
        let data = Dataset {
            train,
            valid: vec![],
            classes: vec!["0".into(), "1".into()],
            pad_id: 0,
        };
        let model = BertForSequenceClassification::new(bert, 2, Pooling::Mean, device);
        let mut spec = LoraConfig::new(
            8,
            16.0,
            ModuleSelector::List(vec!["query".into(), "value".into()]),
        )?;
        spec.modules_to_save = vec!["classifier".into()];
        let (model, _) = attach(model, &spec, device)?;
        timed(
            a,
            model,
            &data,
            batch,
            1e-3,
            &Objective::classifier(),
            device,
        )
    } else {
        let lm = balora_models::load::load_causal_lm::<B>(model_path, device)
            .with_context(|| format!("loading {}", model_path.display()))?;
        let train: Vec<Example> = windows(&lm.tokenizer, &text, seq)?
            .into_iter()
            .map(|ids| {
                let n = ids.len();
                Example::lm(ids, vec![true; n])
            })
            .collect();
        let data = Dataset {
            train,
            valid: vec![],
            classes: vec![],
            pad_id: 0,
        };
        let spec = LoraConfig::new(
            8,
            16.0,
            ModuleSelector::List(vec!["q_proj".into(), "v_proj".into()]),
        )?;
        let (model, _) = attach(lm.model, &spec, device)?;
        timed(a, model, &data, batch, 3e-3, &Objective::causal(), device)
    }
}

fn decode<B: burn::tensor::backend::Backend>(
    a: &Args,
    gguf: PathBuf,
    device: &B::Device,
) -> Result<Value> {
    let lm = balora_models::load::load_causal_lm::<B>(&gguf, device)
        .with_context(|| format!("loading {}", gguf.display()))?;
    let prompt = lm
        .tokenizer
        .encode(a.prompt.as_str(), false)
        .map_err(|e| anyhow::anyhow!("tokenizing the prompt: {e}"))?
        .get_ids()
        .to_vec();
    let opts = GenerateOptions {
        max_tokens: a.new_tokens,
        ..GenerateOptions::default()
    };
    for _ in 0..a.warmup {
        generate(&lm.model, &prompt, &opts, |_| {});
    }
    let mut secs = Vec::new();
    let mut ids = Vec::new();
    for _ in 0..a.steps.max(1) {
        let t = Instant::now();
        ids = generate(&lm.model, &prompt, &opts, |_| {});
        secs.push(t.elapsed().as_secs_f64());
    }
    secs.sort_by(f64::total_cmp);
    let median = secs[secs.len() / 2];
    Ok(json!({
        "steps": secs.len(),
        "new_tokens": ids.len(),
        "tokens_per_s": ids.len() as f64 / median.max(1e-9),
        "seconds_per_generation": median,
        "token_ids": ids,
    }))
}

/// Peak resident set size of this process (`VmHWM`), MiB; 0 where /proc is missing.
pub fn peak_rss_mib() -> f64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmHWM:"))
                .and_then(|l| l.split_whitespace().nth(1)?.parse::<f64>().ok())
        })
        .map_or(0.0, |kib| kib / 1024.0)
}

fn rayon_threads() -> usize {
    std::thread::available_parallelism().map_or(1, |n| n.get())
}
