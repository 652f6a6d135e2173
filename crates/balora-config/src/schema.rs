//! The schema: serde types with `deny_unknown_fields`.

use crate::ConfigError;
use balora_adapter::LoraConfig;
use balora_manifold::Options;
use serde::{Deserialize, Serialize};
use std::path::PathBuf;

/// Top-level sections (the env provider only reads `BALORA_<SECTION>…`).
pub const SECTIONS: &[&str] = &[
    "backend",
    "model",
    "adapter",
    "manifold",
    "optimizer",
    "data",
    "trainer",
    "output",
];

/// A whole fine-tuning job.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct JobConfig {
    /// Compute backend.
    pub backend: BackendName,
    /// The base model.
    pub model: ModelSection,
    /// LoRA adapters.
    pub adapter: AdapterSection,
    /// The manifold applied after each optimizer step (`unconstrained` = plain LoRA).
    pub manifold: PluginSection,
    /// The optimizer.
    pub optimizer: PluginSection,
    /// Training data.
    pub data: DataSection,
    /// The training loop.
    pub trainer: TrainerSection,
    /// Where results go.
    pub output: OutputSection,
}

impl Default for JobConfig {
    fn default() -> Self {
        Self {
            backend: BackendName::Flex,
            model: ModelSection::default(),
            adapter: AdapterSection::default(),
            manifold: PluginSection {
                name: "balanced".into(),
                options: Options::default(),
            },
            optimizer: PluginSection {
                name: "adamw".into(),
                options: Options::default(),
            },
            data: DataSection::default(),
            trainer: TrainerSection::default(),
            output: OutputSection::default(),
        }
    }
}

/// A compute backend by name.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum BackendName {
    /// CPU, pure Rust (burn-flex): the default.
    Flex,
    /// CPU, pure Rust (burn-ndarray).
    Ndarray,
    /// wgpu.
    Wgpu,
    /// CUDA.
    Cuda,
    /// LibTorch.
    Tch,
}

/// Model family.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ModelFamily {
    /// A causal LM: Llama-style decoders (SmolLM2, Llama, Mistral, Qwen2/3, Gemma 2/3, Phi-3) from
    /// GGUF or a Hugging Face folder, and GPT-2 / GPT-NeoX folders (told apart by `config.json`).
    Llama,
    /// BERT sequence classifier.
    Bert,
    /// A tiny random-weight causal LM (tests, benchmarks); needs no assets.
    Tiny,
}

/// How the frozen base's linear weights are held in memory (`model.dtype`); adapters are always
/// f32. The quantized kinds need `backend = "flex"` and the llama family
/// ([`ModelSection::base_dtype`] says what is accepted; `balora_adapter::BaseDtype` what each does).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
#[allow(non_camel_case_types)]
pub enum Dtype {
    /// 32-bit floats (the default).
    F32,
    /// 16-bit floats (not implemented: an error).
    F16,
    /// bfloat16 (not implemented: an error).
    Bf16,
    /// `Q8_0` blocks (a GGUF's `Q8_0` tensors kept as they are, others quantized at load).
    Q8_0,
    /// `Q4_0` blocks (as `q8_0`).
    Q4_0,
    /// A GGUF file's own `Q8_0` / `Q4_0` / `Q4_1` blocks, no requantization (GGUF files only).
    File,
}

/// `[model]`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ModelSection {
    /// Family.
    pub family: ModelFamily,
    /// A pinned asset name (fetched on first use through balora-assets), e.g. `smollm2`.
    pub asset: Option<String>,
    /// A local model file or directory (overrides `asset`).
    pub path: Option<PathBuf>,
    /// A tokenizer file (`tokenizer.json`); default: the one shipped with the model.
    pub tokenizer: Option<PathBuf>,
    /// Weights' dtype.
    pub dtype: Dtype,
    /// Number of classes (classification families).
    pub num_labels: Option<usize>,
}

impl ModelSection {
    /// The storage `dtype` asks for, or an error naming `model.dtype` and its value when it is
    /// not implemented (`f16`, `bf16`) or not for this family (quantized: llama only).
    pub fn base_dtype(&self) -> Result<balora_adapter::BaseDtype, ConfigError> {
        use balora_adapter::BaseDtype as D;
        let d = match self.dtype {
            Dtype::F32 => return Ok(D::F32),
            Dtype::F16 | Dtype::Bf16 => {
                let v = if self.dtype == Dtype::F16 {
                    "f16"
                } else {
                    "bf16"
                };
                return Err(bad(
                    "model.dtype",
                    format!("\"{v}\": a half-precision base is not implemented; use \"f32\", or a quantized base: \"q8_0\", \"q4_0\", \"file\""),
                ));
            }
            Dtype::Q8_0 => D::Q8_0,
            Dtype::Q4_0 => D::Q4_0,
            Dtype::File => D::File,
        };
        if self.family != ModelFamily::Llama {
            return Err(bad(
                "model.dtype",
                format!("\"{}\": a quantized base is implemented for model.family = \"llama\" only; use \"f32\"", d.name()),
            ));
        }
        Ok(d)
    }
}

impl Default for ModelSection {
    fn default() -> Self {
        Self {
            family: ModelFamily::Llama,
            asset: Some("smollm2".into()),
            path: None,
            tokenizer: None,
            dtype: Dtype::F32,
            num_labels: None,
        }
    }
}

/// `[adapter]`: the adapter configuration, [`balora_adapter::LoraConfig`] (its module doc has
/// the keys, the pattern rules and the initialisation rule).
pub type AdapterSection = LoraConfig;

/// `[manifold]` / `[optimizer]`: a registered plugin name plus its options (validated by the
/// plugin, which rejects unknown keys and lists the allowed ones).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PluginSection {
    /// Registered name (`balora plugins` lists them).
    pub name: String,
    /// The plugin's options.
    #[serde(flatten)]
    pub options: Options,
}

/// Data file format.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum DataFormat {
    /// By extension: `.jsonl` → `jsonl`, else `text`.
    Auto,
    /// Plain text, chunked into `seq_len` token windows.
    Text,
    /// JSONL: `{"text"}`, `{"prompt","completion"}` or `{"messages":[…]}` per line.
    Jsonl,
    /// JSONL `{"text","label"}` for classification.
    Classification,
}

/// Chat template for `{"messages"}` / `{"prompt","completion"}` lines.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ChatTemplateName {
    /// `<|im_start|>role\ncontent<|im_end|>\n` (SmolLM2).
    Chatml,
    /// Prompt and completion concatenated as they are.
    Plain,
}

/// `[data]`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct DataSection {
    /// A dataset fetched through balora-assets: `moby-dick` (text), `chatterbot` (chat pairs,
    /// prompt masked), `rotten-tomatoes` (sentiment classification).
    pub asset: Option<String>,
    /// A local data file (overrides `asset`).
    pub path: Option<PathBuf>,
    /// A separate validation file (else `validation_fraction` of the training data).
    pub validation_path: Option<PathBuf>,
    /// Format.
    pub format: DataFormat,
    /// Tokens per sequence (text chunks; longer JSONL examples are truncated).
    pub seq_len: usize,
    /// Fraction of examples held out for validation.
    pub validation_fraction: f64,
    /// Use at most this many characters of a text corpus (0 = all).
    pub max_chars: usize,
    /// Use at most this many examples (0 = all).
    pub max_examples: usize,
    /// Chat template.
    pub chat_template: ChatTemplateName,
    /// Loss only on completion/assistant tokens.
    pub mask_prompt: bool,
    /// Largest tolerated fraction of malformed JSONL lines, skipped with a warning naming
    /// file:line (0 = the first malformed line is an error; above the fraction the load fails).
    pub max_bad_fraction: f64,
}

impl Default for DataSection {
    fn default() -> Self {
        Self {
            asset: Some("moby-dick".into()),
            path: None,
            validation_path: None,
            format: DataFormat::Auto,
            seq_len: 32,
            validation_fraction: 0.05,
            max_chars: 200_000,
            max_examples: 0,
            chat_template: ChatTemplateName::Chatml,
            mask_prompt: true,
            max_bad_fraction: 0.0,
        }
    }
}

/// Learning-rate schedule.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ScheduleName {
    /// `lr` throughout (after warmup).
    Constant,
    /// Linear decay to 0 (after warmup).
    Linear,
    /// Linear warmup, then cosine decay to `min_lr_ratio·lr`.
    Cosine,
}

/// How the ranks of a data-parallel job (`mpiexec -n N balora train`) sum their gradients
/// (`trainer.collective`; docs/distributed.md). Other communication is always MPI.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum CollectiveName {
    /// NCCL with the `cuda` backend, MPI otherwise.
    #[default]
    Auto,
    /// MPI on the host (every backend; GPU gradients are copied to the host).
    Mpi,
    /// NCCL on each rank's CUDA device (the `cuda` backend; a binary built with `--features nccl`).
    Nccl,
}

/// `[trainer]`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct TrainerSection {
    /// Optimizer steps.
    pub steps: u64,
    /// Sequences per micro-batch.
    pub batch_size: usize,
    /// Micro-batches per optimizer step.
    pub grad_accum: usize,
    /// Peak learning rate.
    pub lr: f64,
    /// Schedule.
    pub schedule: ScheduleName,
    /// Warmup steps.
    pub warmup_steps: u64,
    /// Final lr as a fraction of `lr` (cosine).
    pub min_lr_ratio: f64,
    /// Clip the global gradient norm to this (0 = off).
    pub max_grad_norm: f64,
    /// Evaluate every N steps (and at the end; 0 = only at the end).
    pub eval_every: u64,
    /// Validation batches per evaluation (0 = the whole validation set).
    pub eval_batches: usize,
    /// Seed for initialisation, shuffling and dropout.
    pub seed: u64,
    /// The device of this process (`cpu`, `cuda:N`, `wgpu:N`): one entry. With the cuda or wgpu
    /// backend the index picks the GPU; in a data-parallel job the rank's local rank picks it
    /// instead (local rank modulo the visible devices, docs/distributed.md).
    pub devices: Vec<String>,
    /// How the ranks of a data-parallel job sum gradients: `auto`, `mpi` or `nccl`.
    pub collective: CollectiveName,
    /// Write a checkpoint every N steps (default 20; 0 = only at the end). A checkpoint is also
    /// written at the end and when SIGINT/SIGTERM stops the run.
    pub checkpoint_every: u64,
    /// Keep the last N checkpoints.
    pub keep_checkpoints: usize,
    /// Resume from the newest intact checkpoint in the output dir (an error if there is none,
    /// or if the stored run config differs in method, model, adapter, data or schedule).
    pub resume: bool,
    /// Show step progress on stderr: a bar on a terminal, else a log line every 10 steps or
    /// 5 seconds.
    pub progress: bool,
}

impl Default for TrainerSection {
    fn default() -> Self {
        Self {
            steps: 36,
            batch_size: 4,
            grad_accum: 1,
            lr: 3e-3,
            schedule: ScheduleName::Cosine,
            warmup_steps: 3,
            min_lr_ratio: 0.1,
            max_grad_norm: 1.0,
            eval_every: 12,
            eval_batches: 2,
            seed: 0,
            devices: vec!["cpu".into()],
            collective: CollectiveName::Auto,
            checkpoint_every: 20,
            keep_checkpoints: 2,
            resume: false,
            progress: true,
        }
    }
}

/// `[output]`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct OutputSection {
    /// Run directory (metrics, checkpoints, adapter, plots). It must be empty or absent unless
    /// `overwrite` or `trainer.resume`, and must not contain the run's inputs.
    pub dir: PathBuf,
    /// Replace a previous run in `dir` (its config, metrics, plot, adapter and checkpoints are
    /// removed first; other files are left alone). `balora train --overwrite` sets it.
    pub overwrite: bool,
}

impl Default for OutputSection {
    fn default() -> Self {
        Self {
            dir: PathBuf::from("runs/train"),
            overwrite: false,
        }
    }
}

fn bad(key: &str, message: impl Into<String>) -> ConfigError {
    ConfigError::BadValue {
        key: key.into(),
        message: message.into(),
    }
}

impl JobConfig {
    /// Range checks the schema cannot express.
    pub fn validate(&self) -> Result<(), ConfigError> {
        self.model.base_dtype()?;
        self.adapter.validate().map_err(|e| ConfigError::BadValue {
            key: e.field,
            message: e.message,
        })?;
        let d = &self.data;
        if d.seq_len < 2 {
            return Err(bad("data.seq_len", "must be ≥ 2"));
        }
        if !(0.0..1.0).contains(&d.validation_fraction) {
            return Err(bad(
                "data.validation_fraction",
                format!("must be in [0, 1), got {}", d.validation_fraction),
            ));
        }
        if !(0.0..=1.0).contains(&d.max_bad_fraction) {
            return Err(bad("data.max_bad_fraction", "must be in [0, 1]"));
        }
        if d.asset.is_none() && d.path.is_none() {
            return Err(bad("data.path", "set `data.path` or `data.asset`"));
        }
        let t = &self.trainer;
        if t.steps == 0 {
            return Err(bad("trainer.steps", "must be ≥ 1"));
        }
        if t.batch_size == 0 || t.grad_accum == 0 {
            return Err(bad(
                "trainer.batch_size",
                "batch_size and grad_accum must be ≥ 1",
            ));
        }
        if !(t.lr.is_finite() && t.lr > 0.0) {
            return Err(bad(
                "trainer.lr",
                format!("must be > 0 and finite, got {}", t.lr),
            ));
        }
        if !(0.0..=1.0).contains(&t.min_lr_ratio) {
            return Err(bad("trainer.min_lr_ratio", "must be in [0, 1]"));
        }
        if t.max_grad_norm < 0.0 {
            return Err(bad("trainer.max_grad_norm", "must be ≥ 0 (0 = off)"));
        }
        if t.devices.is_empty() {
            return Err(bad(
                "trainer.devices",
                "list at least one device, e.g. [\"cpu\"]",
            ));
        }
        for dev in &t.devices {
            parse_device(dev).map_err(|m| bad("trainer.devices", m))?;
        }
        if t.keep_checkpoints == 0 {
            return Err(bad("trainer.keep_checkpoints", "must be ≥ 1"));
        }
        if t.resume && self.output.overwrite {
            return Err(bad(
                "output.overwrite",
                "cannot be combined with trainer.resume = true (overwrite deletes the checkpoints to resume from)",
            ));
        }
        if self.model.family == ModelFamily::Bert && self.data.format != DataFormat::Classification
        {
            return Err(bad(
                "data.format",
                "the bert family trains a classifier: set data.format = \"classification\"",
            ));
        }
        Ok(())
    }
}

/// A device name: `cpu`, `cpu:N`, `cuda:N`, `wgpu:N`.
pub fn parse_device(s: &str) -> Result<(String, usize), String> {
    let (kind, idx) = match s.split_once(':') {
        Some((k, i)) => (
            k,
            i.parse::<usize>()
                .map_err(|_| format!("device `{s}`: index `{i}` is not a number"))?,
        ),
        None => (s, 0),
    };
    match kind {
        "cpu" | "cuda" | "wgpu" => Ok((kind.to_string(), idx)),
        _ => Err(format!(
            "unknown device `{s}`; allowed: cpu, cpu:N, cuda:N, wgpu:N"
        )),
    }
}
