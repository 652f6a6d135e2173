//! `balora train`: a fine-tuning job from a config (default: SmolLM2-135M + BaLoRA on Moby Dick).

use anyhow::{bail, Context, Result};
use balora_config::{JobConfig, ModelFamily};
use balora_data::{load_dataset, Dataset, Encoder, ModelLimits};
use balora_models::peft::{save_adapter, AdapterMeta};
use balora_models::surgery::attach;
use balora_models::{
    BertForSequenceClassification, Gpt2LmHeadModel, GptNeoXForCausalLm, LlamaForCausalLm, Pooling,
};
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

impl Resolved {
    /// Everything a run of `cfg` reads — model, data, the config file it came from (if any),
    /// tokenizer and validation data (if set) — for [`crate::run_dir::open`] to keep the run
    /// folder off them.
    pub fn inputs<'a>(
        &'a self,
        cfg: &'a JobConfig,
        config_file: Option<&'a Path>,
    ) -> Vec<crate::run_dir::Input<'a>> {
        let mut inputs = vec![
            crate::run_dir::Input {
                what: "model",
                path: &self.model_path,
            },
            crate::run_dir::Input {
                what: "data",
                path: &self.data_path,
            },
        ];
        if let Some(c) = config_file {
            inputs.push(crate::run_dir::Input {
                what: "config file",
                path: c,
            });
        }
        for (what, p) in [
            ("tokenizer", &cfg.model.tokenizer),
            ("validation data", &cfg.data.validation_path),
        ] {
            if let Some(p) = p {
                inputs.push(crate::run_dir::Input { what, path: p });
            }
        }
        inputs
    }
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
        // A folder of YAML dialogues / a CSV: balora-data reads them as records (data::assets).
        (None, Some("chatterbot")) => paths.chatterbot_dir()?,
        (None, Some("rotten-tomatoes")) => paths.rotten_tomatoes_csv()?,
        (None, Some(other)) => bail!(
            "data.asset `{other}` is not a dataset; allowed: moby-dick (text), chatterbot (prompt/completion), rotten-tomatoes (classification), or set data.path"
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
    /// Causal LM (Llama-style).
    Llama(LlamaForCausalLm<B>),
    /// Causal LM (GPT-2).
    Gpt2(Gpt2LmHeadModel<B>),
    /// Causal LM (GPT-NeoX / Pythia).
    NeoX(GptNeoXForCausalLm<B>),
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
        ModelFamily::Llama => crate::causal::load::<B>(cfg, &res.model_path, device)?,
        ModelFamily::Bert => {
            crate::causal::check_not_causal(&res.model_path)?;
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
                Some(tok),
                limits,
            )
        }
        ModelFamily::Tiny => bail!(
            "model.family = \"tiny\" is for tests and `cargo bench -p balora-train`; use llama or bert"
        ),
    };
    let tokenizer = match (&cfg.model.tokenizer, tokenizer) {
        (Some(p), _) => tokenizers::Tokenizer::from_file(p)
            .map_err(|e| anyhow::anyhow!("{}: {e}", p.display()))?,
        (None, Some(t)) => t,
        (None, None) => bail!(
            "{}: the model folder has no tokenizer.json: set model.tokenizer to a tokenizer.json",
            res.model_path.display()
        ),
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

/// How [`run_method`] may end early or resume.
#[derive(Default, Clone, Copy)]
pub struct MethodOpts {
    /// Stop (with a checkpoint) after this step.
    pub stop_after: Option<u64>,
    /// Stop (with a checkpoint) when set (the SIGINT/SIGTERM flag).
    pub stop: Option<&'static std::sync::atomic::AtomicBool>,
    /// Resume although the checkpoint's schedule or method differs.
    pub allow_config_change: bool,
}

/// Writes the PEFT adapter of `model` into `dir` as one atomic folder swap: built next to it,
/// `fsync`ed, then exchanged with the old folder, so `adapter_config.json` and the weights always
/// belong together (a crash leaves the old pair or the new pair).
fn save_adapter_atomic<B: AutodiffBackend, M: balora_models::AdapterHost<B>>(
    model: &M,
    spec: &balora_config::LoraConfig,
    meta: &AdapterMeta,
    dir: &Path,
) -> Result<()> {
    use balora_formats::atomic::{replace_dir, staging_dir};
    let stage = staging_dir(dir)?;
    let r = save_adapter(model, spec, meta, &stage)
        .map_err(anyhow::Error::from)
        .and_then(|_| replace_dir(&stage, dir).map_err(anyhow::Error::from));
    if r.is_err() {
        let _ = std::fs::remove_dir_all(&stage);
    }
    r.with_context(|| format!("writing the adapter into {}", dir.display()))
}

/// Attaches adapters to `base` and trains per `cfg`; writes the PEFT adapter into `out/adapter`
/// (not when the run was interrupted).
pub fn run_method<B: AutodiffBackend>(
    cfg: &JobConfig,
    base: &Base<B>,
    data: &Dataset,
    out: &Path,
    mopts: MethodOpts,
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
        stop_after: mopts.stop_after,
        stop: mopts.stop,
        allow_config_change: mopts.allow_config_change,
        collective: Some(balora_collective::world()?),
        on_mismatch: crate::ranks::on_mismatch(backend_of(cfg.backend)),
    };
    let fit = Fit {
        cfg,
        spec: &spec,
        data,
        opts: &opts,
        adapter_dir: out.join("adapter"),
        // In a data-parallel job rank 0 alone writes the adapter.
        writer: balora_collective::world()?.rank() == 0,
        device,
    };
    B::seed(device, cfg.trainer.seed);
    match base {
        Base::Llama(m) => fit.run(m.clone(), &mut stepper, &Objective::causal(), "CAUSAL_LM"),
        Base::Gpt2(m) => fit.run(m.clone(), &mut stepper, &Objective::causal(), "CAUSAL_LM"),
        Base::NeoX(m) => fit.run(m.clone(), &mut stepper, &Objective::causal(), "CAUSAL_LM"),
        Base::Bert(m) => fit.run(m.clone(), &mut stepper, &Objective::classifier(), "SEQ_CLS"),
    }
}

/// What [`run_method`] trains with, whatever the model family.
struct Fit<'a, B: AutodiffBackend> {
    cfg: &'a JobConfig,
    spec: &'a balora_config::LoraConfig,
    data: &'a Dataset,
    opts: &'a RunOptions,
    adapter_dir: PathBuf,
    writer: bool,
    device: &'a B::Device,
}

impl<B: AutodiffBackend> Fit<'_, B> {
    /// Attaches the adapters to `base`, trains it for `objective` and, unless the run was
    /// interrupted, writes the PEFT adapter (PEFT `task_type` `task`) when this process writes.
    fn run<M>(
        &self,
        base: M,
        stepper: &mut TrainStepper<B>,
        objective: &Objective<B, M>,
        task: &str,
    ) -> Result<TrainOutcome<()>>
    where
        M: balora_models::AdapterHost<B> + burn::module::AutodiffModule<B>,
    {
        let (model, s) = attach(base, self.spec, self.device)?;
        tracing::info!("{s}");
        let cfg = self.cfg;
        let o = train(
            model,
            stepper,
            self.data,
            &cfg.trainer,
            self.opts,
            objective,
            self.device,
        )?;
        if o.interrupted.is_none() && self.writer {
            let meta = AdapterMeta {
                task_type: Some(task.into()),
                base_model_name_or_path: cfg
                    .model
                    .path
                    .as_ref()
                    .map(|p| p.display().to_string())
                    .or_else(|| cfg.model.asset.clone()),
            };
            save_adapter_atomic(&o.model, self.spec, &meta, &self.adapter_dir)?;
        }
        Ok(strip(o))
    }
}

fn strip<M>(o: TrainOutcome<M>) -> TrainOutcome<()> {
    TrainOutcome {
        model: (),
        history: o.history,
        resumed_from: o.resumed_from,
        train_s: o.train_s,
        hook_s: o.hook_s,
        tokens: o.tokens,
        interrupted: o.interrupted,
    }
}

/// Arguments of `balora train`.
#[derive(clap::Args, Debug, Clone)]
pub struct TrainArgs {
    /// The job (config file, --set overrides, output folder).
    #[command(flatten)]
    pub job: crate::config_cmd::JobArgs,
    /// Replace a previous run in the output folder (sets `output.overwrite`).
    #[arg(long)]
    pub overwrite: bool,
    /// With `trainer.resume = true`: continue although the config differs from the stored one.
    #[arg(long)]
    pub allow_config_change: bool,
}

/// A run stopped by SIGINT/SIGTERM after writing a checkpoint (exit status 128 + signal).
#[derive(Debug)]
pub struct Interrupted {
    /// Exit status.
    pub code: i32,
    /// What happened and how to resume.
    pub message: String,
}

impl std::fmt::Display for Interrupted {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.message)
    }
}

impl std::error::Error for Interrupted {}

/// The command line to continue an interrupted run.
fn resume_command() -> String {
    let mut args: Vec<String> = std::env::args().collect();
    if let Some(first) = args.first_mut() {
        *first = "balora".into();
    }
    args.retain(|a| a != "--overwrite");
    if !args.iter().any(|a| a == "trainer.resume=true") {
        args.extend(["--set".into(), "trainer.resume=true".into()]);
    }
    args.iter()
        .map(|a| {
            if a.chars()
                .any(|c| c.is_whitespace() || "\"'$`*?[]{}()<>|;&".contains(c))
            {
                format!("'{}'", a.replace('\'', "'\\''"))
            } else {
                a.clone()
            }
        })
        .collect::<Vec<_>>()
        .join(" ")
}

/// The job config of `balora train`: file < env < --set, then `--out` and `--overwrite`.
pub fn job_config(a: &TrainArgs) -> Result<JobConfig> {
    let mut cfg = JobConfig::load(a.job.config.as_deref(), &a.job.sets)?;
    if let Some(out) = &a.job.out {
        cfg.output.dir = out.clone();
    }
    if a.overwrite {
        cfg.output.overwrite = true;
    }
    cfg.validate()?;
    Ok(cfg)
}

/// `balora train`.
pub fn run(a: TrainArgs) -> Result<()> {
    let cfg = job_config(&a)?;
    crate::ranks::check_devices(&cfg)?;
    let out = cfg.output.dir.clone();
    let backend = backend_of(cfg.backend);
    let start = Instant::now();
    let res = resolve(&cfg)?;
    let inputs = res.inputs(&cfg, a.job.config.as_deref());
    // Data-parallel (mpiexec/srun): rank 0 owns the run folder, the others wait until it is set up.
    let world = balora_collective::init_world(crate::ranks::use_nccl(&cfg, backend)?)?;
    let run_dir = (world.rank() == 0)
        .then(|| crate::run_dir::open(&out, &cfg, &inputs, a.allow_config_change))
        .transpose()?;
    world.barrier()?;
    crate::signals::install();
    let mopts = MethodOpts {
        stop_after: None,
        stop: Some(&crate::signals::STOP),
        allow_config_change: a.allow_config_change,
    };
    let outcome = crate::backend::dispatch!(backend, |B, device| {
        let device = crate::ranks::rank_device::<B>(backend, device, &cfg, &*world)?;
        let (base, data) = load_base::<B>(&cfg, &res, &device)?;
        run_method::<B>(&cfg, &base, &data, &out, mopts, &device)?
    })?;
    balora_collective::finalize();
    if let Some(step) = outcome.interrupted {
        let (name, code) = crate::signals::received().unwrap_or(("a stop request", 130));
        let ck = balora_train::checkpoint::checkpoint_dir(&out.join("checkpoints"), step);
        drop(run_dir);
        return Err(Interrupted {
            code,
            message: format!(
                "interrupted by {name} after step {step}/{}: checkpoint {}\nresume with: {}",
                cfg.trainer.steps,
                ck.display(),
                resume_command()
            ),
        }
        .into());
    }
    if world.rank() != 0 {
        return Ok(());
    }
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
    drop(run_dir);
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
