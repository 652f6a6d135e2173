//! `balora train`: a fine-tuning job from a config (default: SmolLM2-135M + BaLoRA on Moby Dick).

use anyhow::{bail, Context, Result};
use balora_config::{JobConfig, ModelFamily};
use balora_data::{load_dataset, Dataset, Encoder, ModelLimits};
use balora_models::peft::{save_adapter, AdapterMeta};
use balora_models::surgery::{attach, summary};
use balora_models::{BertForSequenceClassification, LlamaForCausalLm, Pooling};
use balora_optim::RegistryBackend;
use balora_train::{train, Objective, RunOptions, TrainOutcome, TrainStepper};
use burn::tensor::backend::AutodiffBackend;
use std::path::{Path, PathBuf};
use std::time::Instant;

/// Model + data resolved from the config (assets fetched on first use).
pub struct Resolved {
    /// Model file or folder.
    pub model_path: PathBuf,
    /// Data file.
    pub data_path: PathBuf,
}

/// Fetches the pinned assets the job names (with progress) and returns the paths.
pub fn resolve(cfg: &JobConfig) -> Result<Resolved> {
    let mut names: Vec<&str> = Vec::new();
    if cfg.model.path.is_none() {
        if let Some(a) = &cfg.model.asset {
            names.push(a);
        }
    }
    if cfg.data.path.is_none() {
        if let Some(a) = &cfg.data.asset {
            names.push(a);
        }
    }
    let cache = balora_assets::default_cache_dir();
    let paths = if names.is_empty() {
        balora_assets::find(&cache)
    } else {
        balora_assets::fetch(&names, &cache, true)
            .with_context(|| format!("fetching assets {names:?} into {}", cache.display()))?
    };
    let model_path = match (&cfg.model.path, cfg.model.asset.as_deref()) {
        (Some(p), _) => p.clone(),
        (None, Some("smollm2")) => paths.smollm2_gguf()?,
        (None, Some("minilm")) => paths.minilm_dir()?,
        (None, Some(other)) => {
            bail!("model.asset `{other}` is not a model; allowed: smollm2, minilm")
        }
        (None, None) => bail!("set model.path or model.asset"),
    };
    let data_path = match (&cfg.data.path, cfg.data.asset.as_deref()) {
        (Some(p), _) => p.clone(),
        (None, Some("moby-dick")) => paths.moby_dick_text()?,
        (None, Some(other)) => bail!(
            "data.asset `{other}` is not a text corpus; allowed: moby-dick (or set data.path)"
        ),
        (None, None) => bail!("set data.path or data.asset"),
    };
    Ok(Resolved {
        model_path,
        data_path,
    })
}

/// The adapter configuration of the job: the `[adapter]` section is the one
/// [`balora_adapter::LoraConfig`] that the surgery applies (every family alike) and that
/// `adapter_config.json` is written from.
pub fn adapter_spec(cfg: &JobConfig) -> balora_config::LoraConfig {
    cfg.adapter.clone()
}

/// A base model (adapters not yet attached) with its dataset.
#[allow(clippy::large_enum_variant)] // one value per run
pub enum Base<B: AutodiffBackend> {
    /// Causal LM.
    Llama(LlamaForCausalLm<B>),
    /// Classifier.
    Bert(BertForSequenceClassification<B>),
}

/// Loads the model and the tokenized dataset.
pub fn load_base<B: AutodiffBackend>(
    cfg: &JobConfig,
    res: &Resolved,
    device: &B::Device,
) -> Result<(Base<B>, Dataset)> {
    let t0 = Instant::now();
    let (base, tokenizer, limits) = match cfg.model.family {
        ModelFamily::Llama => {
            let lm = balora_models::load::load_causal_lm::<B>(&res.model_path, device)
                .with_context(|| format!("loading {}", res.model_path.display()))?;
            let limits = ModelLimits {
                vocab_size: lm.config.vocab_size,
                context: lm.config.max_position,
                num_labels: None,
            };
            (Base::Llama(lm.model), lm.tokenizer, limits)
        }
        ModelFamily::Bert => {
            let (bert, c, tok) =
                balora_models::load::load_bert_hf_dir::<B>(&res.model_path, device)?;
            let classes = cfg.model.num_labels.unwrap_or(2);
            let limits = ModelLimits {
                vocab_size: c.vocab_size,
                context: c.max_position,
                num_labels: Some(classes),
            };
            B::seed(device, cfg.trainer.seed);
            (
                Base::Bert(BertForSequenceClassification::new(bert, classes, Pooling::Cls, device)),
                tok,
                limits,
            )
        }
        ModelFamily::Tiny => bail!(
            "model.family = \"tiny\" is for tests and `cargo bench -p balora-train`; use llama or bert"
        ),
    };
    let tokenizer = match &cfg.model.tokenizer {
        Some(p) => tokenizers::Tokenizer::from_file(p)
            .map_err(|e| anyhow::anyhow!("{}: {e}", p.display()))?,
        None => tokenizer,
    };
    let encoder = Encoder::new(tokenizer);
    let data = load_dataset(&cfg.data, &res.data_path, &encoder, cfg.trainer.seed)?;
    data.check_fits(&res.data_path, cfg.data.seq_len, limits)?;
    tracing::info!(
        "loaded {} and {} ({} train / {} validation sequences) in {:.1}s",
        res.model_path.display(),
        res.data_path.display(),
        data.train.len(),
        data.valid.len(),
        t0.elapsed().as_secs_f64()
    );
    Ok((base, data))
}

/// The label of a method: `<manifold>` or `<manifold>+<optimizer>`.
pub fn method_label(cfg: &JobConfig) -> String {
    let m = match cfg.manifold.name.as_str() {
        "unconstrained" => "lora".to_string(),
        "balanced" => "balora".to_string(),
        other => other.to_string(),
    };
    format!("{m}-{}", cfg.optimizer.name)
}

/// Attaches adapters to `base` and trains per `cfg`; writes the PEFT adapter into `out/adapter`.
pub fn run_method<B: AutodiffBackend>(
    cfg: &JobConfig,
    base: &Base<B>,
    data: &Dataset,
    out: &Path,
    stop_after: Option<u64>,
    device: &B::Device,
) -> Result<TrainOutcome<()>>
where
    B::InnerBackend: RegistryBackend,
{
    let spec = adapter_spec(cfg);
    let mut stepper = TrainStepper::<B>::from_names(
        &cfg.optimizer.name,
        &cfg.optimizer.options,
        &cfg.manifold.name,
        &cfg.manifold.options,
    )?;
    let opts = RunOptions {
        out_dir: Some(out.to_path_buf()),
        method: method_label(cfg),
        stop_after,
    };
    B::seed(device, cfg.trainer.seed);
    let meta = |task: &str| AdapterMeta {
        task_type: Some(task.into()),
        base_model_name_or_path: cfg
            .model
            .path
            .as_ref()
            .map(|p| p.display().to_string())
            .or_else(|| cfg.model.asset.clone()),
    };
    let adapter_dir = out.join("adapter");
    let outcome = match base {
        Base::Llama(m) => {
            let (model, s) = attach(m.clone(), &spec, device)?;
            tracing::info!("{s}");
            let o = train(
                model,
                &mut stepper,
                data,
                &cfg.trainer,
                &opts,
                &Objective::causal(),
                device,
            )?;
            std::fs::create_dir_all(&adapter_dir)?;
            save_adapter(&o.model, &spec, &meta("CAUSAL_LM"), &adapter_dir)?;
            strip(o)
        }
        Base::Bert(m) => {
            let (model, s) = attach(m.clone(), &spec, device)?;
            let _ = summary(&model, &cfg.adapter.modules_to_save);
            tracing::info!("{s}");
            let o = train(
                model,
                &mut stepper,
                data,
                &cfg.trainer,
                &opts,
                &Objective::classifier(),
                device,
            )?;
            std::fs::create_dir_all(&adapter_dir)?;
            save_adapter(&o.model, &spec, &meta("SEQ_CLS"), &adapter_dir)?;
            strip(o)
        }
    };
    Ok(outcome)
}

fn strip<M>(o: TrainOutcome<M>) -> TrainOutcome<()> {
    TrainOutcome {
        model: (),
        history: o.history,
        resumed_from: o.resumed_from,
        train_s: o.train_s,
        hook_s: o.hook_s,
        tokens: o.tokens,
    }
}

/// `balora train`.
pub fn run(config: Option<&Path>, sets: &[String], out: Option<PathBuf>) -> Result<()> {
    let cfg = JobConfig::load(config, sets)?;
    check_devices(&cfg)?;
    let out = out.unwrap_or_else(|| cfg.output.dir.clone());
    let backend = backend_of(cfg.backend);
    let start = Instant::now();
    let res = resolve(&cfg)?;
    std::fs::create_dir_all(&out).with_context(|| format!("creating {}", out.display()))?;
    balora_train::report::write_atomic(&out.join("config.toml"), cfg.to_toml().as_bytes())?;
    let outcome = crate::backend::dispatch!(backend, |B, device| {
        let (base, data) = load_base::<B>(&cfg, &res, &device)?;
        run_method::<B>(&cfg, &base, &data, &out, None, &device)?
    })?;
    let wall = start.elapsed().as_secs_f64();
    let plot = out.join("loss.svg");
    balora_train::plot::loss_plot(
        &plot,
        &format!("{} on {}", method_label(&cfg), res.data_path.display()),
        &outcome.history,
    )
    .map_err(|e| anyhow::anyhow!("writing {}: {e}", plot.display()))?;
    let evals: Vec<&balora_train::MetricRecord> = outcome
        .history
        .iter()
        .filter(|r| r.kind == "eval")
        .collect();
    println!(
        "trained {} steps in {:.1}s ({:.1}s wall incl. loading; {:.0} tokens/s; manifold hook {:.2}% of step time)",
        outcome.history.iter().filter(|r| r.kind == "train").count(),
        outcome.train_s,
        wall,
        outcome.tokens as f64 / outcome.train_s.max(1e-9),
        100.0 * outcome.hook_s / outcome.train_s.max(1e-9)
    );
    if let (Some(first), Some(last)) = (evals.first(), evals.last()) {
        println!(
            "eval loss: {:.4} (step {}) -> {:.4} (step {})",
            first.loss, first.step, last.loss, last.step
        );
    }
    println!("adapter (PEFT): {}", out.join("adapter").display());
    println!("metrics:        {}", out.join("metrics.jsonl").display());
    println!("loss plot:      {}", plot.display());
    println!("checkpoints:    {}", out.join("checkpoints").display());
    Ok(())
}

/// The CLI backend of a config's `backend`.
pub fn backend_of(b: balora_config::BackendName) -> crate::backend::BackendKind {
    use crate::backend::BackendKind as K;
    match b {
        balora_config::BackendName::Flex => K::Flex,
        balora_config::BackendName::Ndarray => K::Ndarray,
        balora_config::BackendName::Wgpu => K::Wgpu,
        balora_config::BackendName::Cuda => K::Cuda,
        balora_config::BackendName::Tch => K::Tch,
    }
}

/// `trainer.devices`: one device per run for now (see docs/trainer.md, "Past one device").
pub fn check_devices(cfg: &JobConfig) -> Result<()> {
    if cfg.trainer.devices.len() > 1 {
        bail!(
            "trainer.devices = {:?}: data-parallel training is not wired in yet. burn-train 0.21's \
             MultiDevice strategy needs a burn `Optimizer` wrapping the adapter optimizer + manifold, \
             and its DDP strategy needs a `DistributedBackend` (CubeCL backends: cuda/wgpu), which \
             the CPU backends (flex, ndarray) are not (it also has only one device). Use one device.",
            cfg.trainer.devices
        );
    }
    Ok(())
}
